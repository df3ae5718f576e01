"""
The demo's own pages, in memory: one stylesheet on each, a way home from
every error page, and an index that links every page of the demo.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
from treq.testing import StubTreq
from twisted.internet.task import Clock

from app.cli.options import config_from_args
from app.config import ConfigError
from app.http.pages import STYLESHEET
from tests.conftest import memory_client, success_result_of

BASE = "http://example.invalid"
#: Every page of the demo, as the index links it (the /echo form aside).
DEMO_LINKS = (
    "/health",
    "/static/",
    "/clock",
    "/calendar/2026",
    "/pay",
    "/form",
    "/delayed?seconds=1",
    "/delayed/fail?seconds=1",
    "/wsgi/",
    "/cgi-bin/env.py",
    "/cgi-bin/hello.py",
    "/private/",
    "/session",
    "/session/expire",
    "/counter",
    "/session/logme",
    "/proxy/",
)
#: Pages the server renders itself, with what each answers.
RENDERED = {
    "/": 200,
    "/clock": 200,
    "/form": 200,
    "/pay": 402,
    "/session": 200,
    "/session/expire": 200,
    "/session/logme": 200,
    "/counter": 200,
    "/nowhere": 404,
    "/calendar/0": 404,
}
ERRORS = ["/nowhere", "/calendar/0", "/private/", "/proxy/"]


@pytest.fixture
def client() -> StubTreq:
    return memory_client(Clock())


def _page(client: StubTreq, path: str, method: str = "GET") -> tuple[int, str]:
    # StubTreq sets its methods at run time.
    pending = client.request(method, BASE + path)  # type: ignore[attr-defined]
    response: Any = success_result_of(pending)
    text: str = success_result_of(response.text())
    return response.code, text


def _links(html: str) -> set[str]:
    return {link.replace("&amp;", "&") for link in re.findall(r'href="([^"]+)"', html)}


@pytest.mark.parametrize("path", RENDERED)
def test_every_rendered_page_has_the_stylesheet(client: StubTreq, path: str) -> None:
    code, html = _page(client, path)
    assert code == RENDERED[path]
    assert f"<style>{STYLESHEET}</style>" in html


@pytest.mark.parametrize("path", ERRORS)
def test_error_pages_link_home(client: StubTreq, path: str) -> None:
    # /private/ and /proxy/ are 404 in a demo with no users and no upstream.
    code, html = _page(client, path)
    assert code == 404
    assert '<a href="/">' in html
    assert f"<style>{STYLESHEET}</style>" in html


def test_a_405_page_links_home(client: StubTreq) -> None:
    code, html = _page(client, "/echo")
    assert code == 405
    assert '<a href="/">' in html


def test_the_index_links_every_demo_page(client: StubTreq) -> None:
    code, html = _page(client, "/")
    assert code == 200
    assert set(DEMO_LINKS) <= _links(html)


def test_the_index_sends_a_body_to_echo(client: StubTreq) -> None:
    _, html = _page(client, "/")
    assert '<form method="POST" action="/echo"' in html
    assert "curl -X PUT" in html


def test_the_index_introduces_every_chapter_of_the_series(client: StubTreq) -> None:
    _, html = _page(client, "/")
    chapters = re.findall(r"<li><strong>([^<]+)</strong>: ", html)
    assert chapters[:3] == [
        "Serving static content from a directory",
        "Generating a page dynamically",
        "Static URL dispatch",
    ]
    assert "HTTP authentication with twisted.cred" in chapters
    assert len(chapters) == 20


def test_the_form_field_has_a_label(client: StubTreq) -> None:
    _, html = _page(client, "/form")
    assert '<label for="the-field">' in html
    assert '<input id="the-field" name="the-field" type="text">' in html


def test_the_counter_is_a_page(client: StubTreq) -> None:
    code, html = _page(client, "/counter")
    assert code == 200
    assert "<h1>Counter</h1>" in html
    assert "<p>Visit #1 for you!</p>" in html
    assert {"/", "/counter", "/session/expire"} <= _links(html)


# -- --proxy self: the demo's /proxy/ follows the server's own port ------------


@pytest.mark.parametrize(
    ("listen", "upstream"),
    [
        ([], "http://127.0.0.1:8080/static/"),
        (["tcp:8090:interface=127.0.0.1"], "http://127.0.0.1:8090/static/"),
        (["tcp:8090"], "http://127.0.0.1:8090/static/"),
        (["tcp:port=8091:interface=0.0.0.0"], "http://127.0.0.1:8091/static/"),
        (["tcp:8092:10.1.2.3"], "http://10.1.2.3:8092/static/"),
        (["tcp6:8093:interface=\\:\\:1"], "http://[::1]:8093/static/"),
        (["tcp6:8094"], "http://[::1]:8094/static/"),
        (
            ["unix:/tmp/app.sock", "ssl:8443:privateKey=k.pem", "tcp:8095"],
            "http://127.0.0.1:8095/static/",
        ),
    ],
)
def test_proxy_self_is_the_first_tcp_endpoints_static(
    listen: list[str], upstream: str
) -> None:
    argv = [arg for endpoint in listen for arg in ("--listen", endpoint)]
    config = config_from_args([*argv, "--proxy", "self"])
    assert config.proxy == upstream


@pytest.mark.parametrize("listen", ["tcp:0", "unix:/tmp/app.sock"])
def test_proxy_self_needs_a_fixed_tcp_port(listen: str) -> None:
    with pytest.raises(ConfigError) as raised:
        config_from_args(["--listen", listen, "--proxy", "self"])
    assert raised.value.option == "--proxy"
