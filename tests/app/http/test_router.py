"""
Dispatch: redirects, error pages, user route modules, handler failures, the
router's remembered matches.  Requests go through the real site in memory, on
a test's clock; nothing listens.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest
from treq.testing import StubTreq
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactor
from twisted.logger import LogEvent, formatEvent

from app.cli.options import config_from_args
from app.site import build_site
from app.testing import stub_treq
from tests.conftest import content_of, failures, fetch, text_of


def _client(args: Sequence[str]) -> StubTreq:
    """
    A client, in memory, of the site that C{args} configure.
    """
    return stub_treq(build_site(config_from_args(list(args)), MemoryReactor(), Clock()))


@pytest.fixture
def routed() -> StubTreq:
    """
    The demo plus the example route module.
    """
    return _client(["--routes", "tests.example_routes"])


def _no_redirects(client: StubTreq, method: str, path: str) -> Any:
    return fetch(client, method, path, allow_redirects=False)


def test_module_route_is_served(routed: StubTreq) -> None:
    response = fetch(routed, "GET", "/hello")
    assert response.code == 200
    assert text_of(response) == "Hello from a route module"


def test_builtin_route_wins_a_clash(routed: StubTreq) -> None:
    body = text_of(fetch(routed, "GET", "/clock"))
    assert "The time is" in body
    assert "module" not in body


def test_coroutine_route(routed: StubTreq) -> None:
    response = fetch(routed, "GET", "/later")
    assert response.code == 200
    assert text_of(response) == "answered later"


def test_converter_route(routed: StubTreq) -> None:
    response = fetch(routed, "DELETE", "/items/7")
    assert text_of(response) == "item 7"


@pytest.mark.parametrize("path", ["/boom", "/later/boom"])
def test_failing_handler_is_a_500_page_and_one_logged_traceback(
    routed: StubTreq, captured_log: list[LogEvent], path: str
) -> None:
    response = fetch(routed, "GET", path)
    body = text_of(response)
    assert response.code == 500
    assert "500 Internal Server Error" in body
    assert "Traceback" not in body
    assert "deliberate" not in body
    logged = failures(captured_log)
    assert len(logged) == 1
    assert "deliberate" in logged[0]["log_failure"].getTraceback()
    assert path in formatEvent(logged[0])


def test_display_tracebacks_shows_the_escaped_traceback() -> None:
    client = _client(["--routes", "tests.example_routes", "--display-tracebacks"])
    response = fetch(client, "GET", "/boom")
    body = text_of(response)
    assert response.code == 500
    assert "Traceback" in body
    assert "RuntimeError: deliberate failure" in body


@pytest.mark.parametrize(
    ("method", "path", "code", "location"),
    [
        ("GET", "/dir", 301, b"/dir/"),
        ("GET", "/dir?a=1&b=%20", 301, b"/dir/?a=1&b=%20"),
        ("HEAD", "/dir?x", 301, b"/dir/?x"),
        ("POST", "/dir?a=1", 308, b"/dir/?a=1"),
        ("GET", "/health/", 301, b"/health"),
        ("GET", "/health/?probe=1", 301, b"/health?probe=1"),
        ("POST", "/echo/?q", 308, b"/echo?q"),
        ("GET", "/calendar/2026/", 301, b"/calendar/2026"),
    ],
)
def test_trailing_slash_redirects_keep_the_query(
    routed: StubTreq, method: str, path: str, code: int, location: bytes
) -> None:
    response = _no_redirects(routed, method, path)
    content_of(response)
    assert response.code == code
    assert response.headers.getRawHeaders(b"location") == [location]


@pytest.mark.parametrize(
    "path", ["//health", "//evil.example/", "/\\evil.example/", "///health/"]
)
def test_double_slashes_are_not_merged_or_redirected_off_site(
    routed: StubTreq, path: str
) -> None:
    response = _no_redirects(routed, "GET", path)
    content_of(response)
    assert response.code == 404
    assert response.headers.getRawHeaders(b"location") is None


@pytest.mark.parametrize("path", ["/nowhere", "/calendar", "/hello/there", "/%ff"])
def test_unknown_paths_are_html_404(routed: StubTreq, path: str) -> None:
    response = fetch(routed, "GET", path)
    body = text_of(response)
    assert response.code in (400, 404)
    assert response.headers.getRawHeaders(b"content-type") == [
        b"text/html; charset=utf-8"
    ]
    assert "<h1>" in body


@pytest.mark.parametrize("method", ["DELETE", "PROPFIND", "OPTIONS", "TRACE"])
def test_unknown_or_unsupported_methods_are_405_never_500(
    routed: StubTreq, method: str
) -> None:
    response = fetch(routed, method, "/pay")
    content_of(response)
    assert response.code == 405
    assert b"GET" in response.headers.getRawHeaders(b"allow")[0]


def test_no_demo_keeps_health_and_module_index() -> None:
    client = _client(["--no-demo", "--routes", "tests.example_routes"])
    assert fetch(client, "GET", "/health").code == 200
    assert fetch(client, "GET", "/pay").code == 404
    assert text_of(fetch(client, "GET", "/clock")) == "the module's clock"


def test_exact_routes_match_what_werkzeug_matches() -> None:
    from app.cli.options import config_from_args
    from app.site import build_site

    site = build_site(
        config_from_args(["--routes", "tests.example_routes", "--proxy", "http://h/"]),
        reactor=None,
    )
    router = site.resource
    checked = 0
    for layer in router._layers:
        for (path, method), found in layer.exact.items():
            rule, _ = layer.adapter.match(path, method, return_rule=True)
            assert rule.endpoint.partition(":")[2] == found.endpoint
            assert layer.apps[rule.endpoint] is found.app
            # The direct call is the route's own function, bound as Klein binds it.
            executor = found.app.endpoints[found.endpoint]
            assert found.direct is not None
            assert getattr(found.direct, "func", found.direct) is executor.__wrapped__
            assert getattr(found.direct, "args", (found.app._instance,)) == (
                found.app._instance,
            )
            checked += 1
    assert checked > 20


def _router(args: list[str]):  # type: ignore[no-untyped-def]
    from app.cli.options import config_from_args
    from app.site import build_site

    return build_site(config_from_args(args), reactor=None).resource


def test_fast_routes_are_what_matching_finds() -> None:
    from app.http.router import _Found

    router = _router(["--routes", "tests.example_routes", "--proxy", "http://h/"])
    assert (b"/health", b"GET") in router._fast
    assert (b"/health", b"HEAD") in router._fast
    for (path, method), fast in router._fast.items():
        found = router._match_uncached(path.decode(), method.decode())
        assert isinstance(found, _Found)
        assert found.direct is fast.function
        handler = found.app.endpoints[found.endpoint]
        # The router sets segment_count on each endpoint as it reads them.
        assert handler.segment_count == fast.segment_count  # type: ignore[attr-defined]
    # A module's exact route is left out where a built-in variable route
    # matches its path first.
    assert (b"/calendar/1999", b"GET") not in router._fast


def test_a_builtin_variable_route_wins_over_a_module_exact_route(
    routed: StubTreq,
) -> None:
    for _ in range(2):
        body = text_of(fetch(routed, "GET", "/calendar/1999"))
        assert "1999" in body
        assert "module" not in body


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/calendar/2026"),
        ("GET", "/calendar/2026/"),
        ("GET", "/calendar/x"),
        ("DELETE", "/items/7"),
        ("POST", "/items/7"),
        ("GET", "/dir"),
        ("GET", "/no/such/path"),
        ("GET", "/static/a/b"),
        ("GET", "/proxy//evil"),
        ("HEAD", "/health/"),
    ],
)
def test_remembered_matches_are_what_matching_finds(method: str, path: str) -> None:
    router = _router(["--routes", "tests.example_routes", "--proxy", "http://h/"])
    assert router._matched is not None
    first = router._match(path, method)
    assert (path, method) in router._matched
    assert router._match(path, method) is first
    assert first == router._match_uncached(path, method)


def test_remembered_matches_are_bounded() -> None:
    from app.http.router import MATCH_CACHE

    router = _router([])
    for number in range(MATCH_CACHE + 10):
        router._match(f"/calendar/{number}", "GET")
    assert len(router._matched) == MATCH_CACHE
    assert ("/calendar/0", "GET") not in router._matched
    assert (f"/calendar/{MATCH_CACHE + 9}", "GET") in router._matched


def test_a_custom_converter_is_asked_for_every_request() -> None:
    from klein import Klein
    from werkzeug.routing import BaseConverter

    from app.http.router import Router

    asked: list[str] = []

    class Even(BaseConverter):
        def to_python(self, value: str) -> int:
            asked.append(value)
            if int(value) % 2:
                from werkzeug.routing import ValidationError

                raise ValidationError()
            return int(value)

    app = Klein()
    app.url_map.converters["even"] = Even

    @app.route("/even/<even:number>")
    def even(request: object, number: int) -> str:
        return f"{number} is even"

    router = Router([app])
    assert router._matched is None
    client = StubTreq(router)
    for _ in range(2):
        response = fetch(client, "GET", "/even/4")
        assert text_of(response) == "4 is even"
    response = fetch(client, "GET", "/even/5")
    assert response.code == 404
    content_of(response)
    assert asked == ["4", "4", "5"]


@pytest.mark.parametrize("path", ["/b/", "/b/x", "/b/x/y/", "/b//z"])
def test_branch_routes_see_the_segments_klein_gives_them(path: str) -> None:
    from klein import Klein
    from klein.interfaces import IKleinRequest

    from app.http.router import Router

    app = Klein()

    @app.route("/b/", branch=True)
    def branch(request: object) -> str:
        return repr(IKleinRequest(request).branch_segments)

    ours = text_of(fetch(StubTreq(Router([app])), "GET", path))
    klein = text_of(fetch(StubTreq(app.resource()), "GET", path))
    if path != "/b//z":  # Klein merges the two slashes; the router does not.
        assert ours == klein
    else:
        assert ours == repr(["", "z"])
    assert ours.startswith("[")
