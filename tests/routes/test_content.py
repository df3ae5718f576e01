"""
The content chapters' pages, in memory through the demo site; a live server
only where the test is about servers listening side by side.
"""

from __future__ import annotations

import calendar
import re
import time

import pytest
import pytest_twisted
from treq.testing import StubTreq
from twisted.internet.task import Clock

from app.testing import LiveServer
from routes.content import DEMO_PAGES
from tests.conftest import content_of, fetch, memory_client, text_of

#: When the test's clock says it is: a whole second, as ctime shows it.
NOW = 1_700_000_000.0


@pytest.fixture
def clock() -> Clock:
    clock = Clock()
    clock.advance(NOW)
    return clock


@pytest.fixture
def client(clock: Clock) -> StubTreq:
    return memory_client(clock)


def test_index_links_every_demo(client: StubTreq) -> None:
    response = fetch(client, "GET", "/")
    assert response.code == 200
    assert response.headers.getRawHeaders(b"content-type") == [
        b"text/html; charset=utf-8"
    ]
    links = set(re.findall(r'href="([^"]+)"', text_of(response)))
    assert {path.replace("&", "&amp;") for path, _ in DEMO_PAGES} <= links


def test_health(client: StubTreq) -> None:
    response = fetch(client, "GET", "/health")
    assert response.code == 200
    assert text_of(response) == "ok"


@pytest.mark.parametrize("path", ["/", "/health", "/nowhere", "/pay"])
def test_every_answer_carries_nosniff_and_an_unversioned_server(
    client: StubTreq, path: str
) -> None:
    response = fetch(client, "GET", path)
    content_of(response)
    assert response.headers.getRawHeaders(b"x-content-type-options") == [b"nosniff"]
    assert response.headers.getRawHeaders(b"server") == [b"app"]


def test_clock_shows_the_site_clock_time(client: StubTreq) -> None:
    response = fetch(client, "GET", "/clock")
    assert response.code == 200
    shown = re.search(r"The time is ([^<]+)\.", text_of(response))
    assert shown is not None
    assert shown.group(1) == time.ctime(NOW)


def test_calendar(client: StubTreq) -> None:
    response = fetch(client, "GET", "/calendar/2026")
    assert response.code == 200
    assert response.headers.getRawHeaders(b"content-type") == [
        b"text/plain; charset=utf-8"
    ]
    assert text_of(response) == calendar.calendar(2026)


@pytest.mark.parametrize("year", ["1", "9999"])
def test_calendar_bounds_served(client: StubTreq, year: str) -> None:
    response = fetch(client, "GET", f"/calendar/{year}")
    assert response.code == 200
    assert text_of(response) == calendar.calendar(int(year))


@pytest.mark.parametrize(
    "year", ["0", "10000", "abc", "-1", "99999999999999999999999", "2026.5", ""]
)
def test_calendar_out_of_range_is_an_html_404(client: StubTreq, year: str) -> None:
    response = fetch(client, "GET", f"/calendar/{year}")
    body = text_of(response)
    assert response.code == 404
    assert response.headers.getRawHeaders(b"content-type")[0].startswith(b"text/html")
    assert "404 Not Found" in body
    assert "Traceback" not in body


def test_pay_is_402(client: StubTreq) -> None:
    response = fetch(client, "GET", "/pay")
    assert response.code == 402
    assert "Please pay." in text_of(response)


def test_form_page_posts_the_field(client: StubTreq) -> None:
    response = fetch(client, "GET", "/form")
    body = text_of(response)
    assert response.code == 200
    assert 'method="POST"' in body
    assert 'name="the-field"' in body


def test_form_post_urlencoded_is_escaped(client: StubTreq) -> None:
    response = fetch(
        client,
        "POST",
        "/form",
        data={"the-field": "<script>alert('x')</script> & more"},
    )
    body = text_of(response)
    assert response.code == 200
    assert (
        "You submitted: &lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; more"
        in body
    )
    assert "<script>" not in body


def test_form_post_multipart(client: StubTreq) -> None:
    # StubTreq does not encode files: the form, as a browser sends it.
    body = (
        b"--b0undary\r\n"
        b'Content-Disposition: form-data; name="the-field"; filename="f.txt"\r\n'
        b"Content-Type: text/plain\r\n"
        b"\r\n"
        b"h\xc3\xa9llo <b>\r\n"
        b"--b0undary--\r\n"
    )
    response = fetch(
        client,
        "POST",
        "/form",
        data=body,
        headers={"content-type": "multipart/form-data; boundary=b0undary"},
    )
    assert response.code == 200
    assert "You submitted: héllo &lt;b&gt;" in text_of(response)


@pytest.mark.parametrize(
    "data",
    [b"", b"other=1", b"the-field=%FF%FE"],
    ids=["empty", "missing", "not-utf8"],
)
def test_form_post_without_a_usable_field_is_400(client: StubTreq, data: bytes) -> None:
    response = fetch(
        client,
        "POST",
        "/form",
        data=data,
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    assert response.code == 400
    assert "400 Bad Request" in text_of(response)


@pytest.mark.parametrize("method", ["PUT", "POST", "PATCH"])
def test_echo_returns_the_body_and_its_type(client: StubTreq, method: str) -> None:
    payload = bytes(range(256)) * 4
    response = fetch(
        client,
        method,
        "/echo",
        data=payload,
        headers={"content-type": "application/x-demo"},
    )
    assert response.code == 200
    assert response.headers.getRawHeaders(b"content-type") == [b"application/x-demo"]
    assert content_of(response) == payload


def test_echo_never_runs_as_a_page(client: StubTreq) -> None:
    response = fetch(
        client,
        "POST",
        "/echo",
        data=b"<script>1</script>",
        headers={"content-type": "text/html"},
    )
    content_of(response)
    assert response.headers.getRawHeaders(b"content-security-policy") == [b"sandbox"]


def test_echo_refuses_get_with_allow(client: StubTreq) -> None:
    response = fetch(client, "GET", "/echo")
    assert response.code == 405
    allowed = response.headers.getRawHeaders(b"allow")[0].decode().split(", ")
    assert sorted(allowed) == ["PATCH", "POST", "PUT"]
    assert "405 Method Not Allowed" in text_of(response)


def test_head_has_the_get_length_and_no_body(client: StubTreq) -> None:
    get = fetch(client, "GET", "/calendar/2026")
    head = fetch(client, "HEAD", "/calendar/2026")
    assert head.code == 200
    assert content_of(head) == b""
    assert head.headers.getRawHeaders(b"content-length") == [
        str(len(content_of(get))).encode()
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
