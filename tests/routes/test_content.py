"""
The content chapters' pages, over HTTP to a live demo server.
"""

from __future__ import annotations

import calendar
import re
import time

import pytest
import pytest_twisted

from app.testing import LiveServer
from routes.content import DEMO_PAGES


@pytest_twisted.ensureDeferred
async def test_index_links_every_demo(server: LiveServer) -> None:
    response = await server.get("/")
    assert response.code == 200
    assert response.headers.getRawHeaders(b"content-type") == [
        b"text/html; charset=utf-8"
    ]
    body = await response.text()
    links = set(re.findall(r'href="([^"]+)"', body))
    assert {path.replace("&", "&amp;") for path, _ in DEMO_PAGES} <= links


@pytest_twisted.ensureDeferred
async def test_health(server: LiveServer) -> None:
    response = await server.get("/health")
    assert response.code == 200
    assert await response.text() == "ok"


@pytest_twisted.ensureDeferred
async def test_every_answer_carries_nosniff_and_an_unversioned_server(
    server: LiveServer,
) -> None:
    for path in ("/", "/health", "/nowhere", "/pay"):
        response = await server.get(path)
        await response.content()
        assert response.headers.getRawHeaders(b"x-content-type-options") == [b"nosniff"]
        assert response.headers.getRawHeaders(b"server") == [b"app"]


@pytest_twisted.ensureDeferred
async def test_clock_shows_the_server_time(server: LiveServer) -> None:
    before = time.time()
    response = await server.get("/clock")
    body = await response.text()
    assert response.code == 200
    shown = re.search(r"The time is ([^<]+)\.", body)
    assert shown is not None
    # ctime has one-second resolution.
    assert shown.group(1) in {time.ctime(before), time.ctime(before + 1)}


@pytest_twisted.ensureDeferred
async def test_calendar(server: LiveServer) -> None:
    response = await server.get("/calendar/2026")
    assert response.code == 200
    assert response.headers.getRawHeaders(b"content-type") == [
        b"text/plain; charset=utf-8"
    ]
    assert await response.text() == calendar.calendar(2026)


@pytest.mark.parametrize("year", ["1", "9999"])
@pytest_twisted.ensureDeferred
async def test_calendar_bounds_served(server: LiveServer, year: str) -> None:
    response = await server.get(f"/calendar/{year}")
    assert response.code == 200
    assert await response.text() == calendar.calendar(int(year))


@pytest.mark.parametrize(
    "year", ["0", "10000", "abc", "-1", "99999999999999999999999", "2026.5", ""]
)
@pytest_twisted.ensureDeferred
async def test_calendar_out_of_range_is_an_html_404(
    server: LiveServer, year: str
) -> None:
    response = await server.get(f"/calendar/{year}")
    body = await response.text()
    assert response.code == 404
    assert response.headers.getRawHeaders(b"content-type")[0].startswith(b"text/html")
    assert "404 Not Found" in body
    assert "Traceback" not in body


@pytest_twisted.ensureDeferred
async def test_pay_is_402(server: LiveServer) -> None:
    response = await server.get("/pay")
    assert response.code == 402
    assert "Please pay." in await response.text()


@pytest_twisted.ensureDeferred
async def test_form_page_posts_the_field(server: LiveServer) -> None:
    response = await server.get("/form")
    body = await response.text()
    assert response.code == 200
    assert 'method="POST"' in body
    assert 'name="the-field"' in body


@pytest_twisted.ensureDeferred
async def test_form_post_urlencoded_is_escaped(server: LiveServer) -> None:
    response = await server.post(
        "/form", data={"the-field": "<script>alert('x')</script> & more"}
    )
    body = await response.text()
    assert response.code == 200
    assert (
        "You submitted: &lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; more"
        in body
    )
    assert "<script>" not in body


@pytest_twisted.ensureDeferred
async def test_form_post_multipart(server: LiveServer) -> None:
    response = await server.post(
        "/form", files={"the-field": ("f.txt", "text/plain", b"h\xc3\xa9llo <b>")}
    )
    body = await response.text()
    assert response.code == 200
    assert "You submitted: héllo &lt;b&gt;" in body


@pytest.mark.parametrize(
    "data",
    [b"", b"other=1", b"the-field=%FF%FE"],
    ids=["empty", "missing", "not-utf8"],
)
@pytest_twisted.ensureDeferred
async def test_form_post_without_a_usable_field_is_400(
    server: LiveServer, data: bytes
) -> None:
    response = await server.post(
        "/form",
        data=data,
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    assert response.code == 400
    assert "400 Bad Request" in await response.text()


@pytest.mark.parametrize("method", ["PUT", "POST", "PATCH"])
@pytest_twisted.ensureDeferred
async def test_echo_returns_the_body_and_its_type(
    server: LiveServer, method: str
) -> None:
    payload = bytes(range(256)) * 4
    response = await server.request(
        method, "/echo", data=payload, headers={"content-type": "application/x-demo"}
    )
    assert response.code == 200
    assert response.headers.getRawHeaders(b"content-type") == [b"application/x-demo"]
    assert await response.content() == payload


@pytest_twisted.ensureDeferred
async def test_echo_never_runs_as_a_page(server: LiveServer) -> None:
    response = await server.post(
        "/echo", data=b"<script>1</script>", headers={"content-type": "text/html"}
    )
    await response.content()
    assert response.headers.getRawHeaders(b"content-security-policy") == [b"sandbox"]


@pytest_twisted.ensureDeferred
async def test_echo_refuses_get_with_allow(server: LiveServer) -> None:
    response = await server.get("/echo")
    assert response.code == 405
    allowed = response.headers.getRawHeaders(b"allow")[0].decode().split(", ")
    assert sorted(allowed) == ["PATCH", "POST", "PUT"]
    assert "405 Method Not Allowed" in await response.text()


@pytest_twisted.ensureDeferred
async def test_head_has_the_get_length_and_no_body(server: LiveServer) -> None:
    get = await server.get("/calendar/2026")
    head = await server.head("/calendar/2026")
    assert head.code == 200
    assert await head.content() == b""
    assert head.headers.getRawHeaders(b"content-length") == [
        str(len(await get.content())).encode()
    ]


@pytest_twisted.ensureDeferred
async def test_two_servers_side_by_side() -> None:
    first = await LiveServer.start([])
    second = await LiveServer.start(["--no-demo"])
    try:
        assert (await first.get("/pay")).code == 402
        assert (await second.get("/pay")).code == 404
        assert (await second.get("/health")).code == 200
    finally:
        await first.stop()
        await second.stop()
