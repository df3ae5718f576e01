"""
Routes marked as never using their session (app.sessions.sessionless): a
store that fetches sessions before routing fetches none for them, and a
marked route that asks for its session anyway is a 500 that says why.
"""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactor, StringTransport
from twisted.logger import LogEvent, formatEvent

from app.cli.options import config_from_args
from app.http.request import Request
from app.sessions import SessionlessRoute, sessionless
from app.sessions.store import is_sessionless
from app.site import build_site
from app.testing import stub_treq
from tests.conftest import failures, success_result_of

BASE = "http://example.invalid"
ROUTES = ["--routes", "tests.sessionless_routes"]


def _site(*args: str) -> Any:
    return build_site(config_from_args([*ROUTES, *args]), MemoryReactor(), Clock())


def _get(site: Any, path: str) -> tuple[int, str, list[str] | None]:
    response = success_result_of(stub_treq(site).get(BASE + path))  # type: ignore[attr-defined]
    text = success_result_of(response.text())
    return response.code, text, response.headers.getRawHeaders("set-cookie")


def _routed(site: Any, path: bytes, method: bytes = b"GET") -> bool:
    """
    What the site's router says of C{path} before routing it.
    """
    channel = site.buildProtocol(None)
    channel.makeConnection(StringTransport())
    request = Request(channel)
    request.method, request.path = method, path
    taken: bool = site.takes_no_session(request)
    return taken


def test_marked_routes_are_known_before_routing() -> None:
    site = _site()
    for path in (b"/quiet", b"/quiet-above", b"/quiet/x", b"/health", b"/"):
        assert _routed(site, path), path
    for path in (b"/talkative", b"/counter", b"/session", b"/missing", b"/quiet/"):
        assert not _routed(site, path), path
    # A route takes the methods it takes: /quiet all, /health only GET (a
    # POST is a 405 page, which may use a session as any error page may).
    assert _routed(site, b"/quiet", b"POST")
    assert not _routed(site, b"/health", b"POST")
    # A path spelled with escapes is not plain at once: its session is
    # fetched as for any other route.
    assert not _routed(site, b"/quiet/%78")


def test_a_marked_route_is_served_without_a_session() -> None:
    site = _site()
    assert _get(site, "/quiet") == (200, "quiet", None)
    assert _get(site, "/quiet/x") == (200, "quiet x", None)
    assert _get(site, "/quiet-above") == (200, "quiet above", None)
    assert len(site.held_sessions) == 0


@pytest.mark.parametrize("path", ["/greedy", "/forgetful"])
def test_a_marked_route_that_asks_for_its_session_is_a_500_naming_it(
    path: str, captured_log: list[LogEvent]
) -> None:
    code, text, cookies = _get(_site(), path)
    assert code == 500
    assert cookies is None
    assert "Traceback" not in text and "sessionless" not in text
    [event] = failures(captured_log)
    assert event["log_failure"].check(SessionlessRoute)
    assert f"the route {path} is marked sessionless" in str(event["log_failure"].value)
    assert formatEvent(event)


def test_the_mark_is_found_through_wrappers() -> None:
    def route(request: object) -> str:
        return ""

    assert not is_sessionless(route)
    assert sessionless(route) is route
    assert is_sessionless(route)

    class Routes:
        @sessionless
        def page(self, request: object) -> str:
            return ""

    assert is_sessionless(Routes().page)
    assert not is_sessionless(None)
