"""
A route module written for stock Klein (tests/klein_routes.py) answers under
--routes as under its own app.resource(): the same status, headers and body
byte for byte, but for what SPEC §3 and §14 list (the server's own headers,
and text/html's charset where a route names no type).  Klein's own tests run
against the router in klein_suite/.
"""

from __future__ import annotations

from typing import Any

import pytest
from klein import Klein
from treq.testing import StubTreq
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactor
from twisted.logger import LogEvent, formatEvent

from app.cli.options import config_from_args
from app.cli.workers import first_worker
from app.config import Config
from app.site import build_site
from app.testing import stub_treq
from tests import klein_routes
from tests.conftest import content_of, fetch, fetch_undecoded

#: Headers the server sets on every answer (SPEC §3: Server, nosniff; the
#: freshness of a dynamic answer; SPEC §15: Vary on a compressible one), or
#: that depend on how the body was framed; compared by neither side.
_SERVER_HEADERS = {
    b"vary",
    b"date",
    b"server",
    b"x-content-type-options",
    b"cache-control",
    b"content-length",
    b"transfer-encoding",
}


def _routed() -> StubTreq:
    config = config_from_args(["--no-demo", "--routes", "tests.klein_routes"])
    return stub_treq(build_site(config, MemoryReactor(), Clock()))


def _answer(
    client: StubTreq, method: str, path: str
) -> tuple[int, dict[bytes, Any], bytes]:
    response, body = fetch_undecoded(client, path, method.encode())
    headers = {
        name.lower(): values
        for name, values in response.headers.getAllRawHeaders()
        if name.lower() not in _SERVER_HEADERS
    }
    if headers.get(b"content-type") == [b"text/html; charset=utf-8"]:
        # SPEC §14: the server's default type names its charset.
        headers[b"content-type"] = [b"text/html"]
    return response.code, headers, body


@pytest.mark.parametrize(
    ("method", "path", "code"),
    [
        ("GET", "/k/refuse", 409),
        ("GET", "/k/refuse-later", 409),
        ("POST", "/k/only-get", 405),
        ("GET", "/k/nowhere", 404),
        ("GET", "/k/shout/NONE", 404),
        ("GET", "/k/shout/ABC", 200),
        ("GET", "/k/links/1", 200),
        ("GET", "/k/sub/inner/bob", 200),
        ("GET", "/k/tree/leaf", 200),
        ("GET", "/k/tree/nothing", 404),
        ("GET", "/k/element/bob", 200),
        ("GET", "/k/deferred-element", 200),
        ("GET", "/k/response", 201),
        ("GET", "/k/plated/3", 200),
        ("GET", "/k/plated/2?json=1", 200),
    ],
)
def test_a_klein_module_answers_as_under_app_resource(
    method: str, path: str, code: int
) -> None:
    ours = _answer(_routed(), method, path)
    klein = _answer(StubTreq(klein_routes.app.resource()), method, path)
    assert ours == klein
    assert ours[0] == code
    assert b"An error occurred" not in ours[2]


def test_a_module_route_a_builtin_one_shadows_is_one_warning_naming_both(
    captured_log: list[LogEvent],
) -> None:
    config = config_from_args(["--routes", "tests.example_routes"])
    build_site(config, MemoryReactor(), Clock())
    warnings = [
        formatEvent(event)
        for event in captured_log
        if "is not served" in formatEvent(event)
    ]
    assert sorted(warnings) == [
        "Route /calendar/1999 (tests.example_routes.calendar_1999) is not served:"
        " /calendar/<int:year> (routes.content.ContentRoutes.calendar_page)"
        " answers it",
        "Route /clock (tests.example_routes.clock) is not served:"
        " /clock (routes.content.ContentRoutes.clock) answers it",
    ]


@pytest.mark.parametrize(
    ("number", "warned"), [(None, True), ("0", True), ("1", False)]
)
def test_of_several_workers_only_the_first_warns(
    captured_log: list[LogEvent],
    monkeypatch: pytest.MonkeyPatch,
    number: str | None,
    warned: bool,
) -> None:
    if number is not None:
        monkeypatch.setenv("APP_WORKER_NUMBER", number)
    config = config_from_args(["--routes", "tests.example_routes"])
    build_site(config, MemoryReactor(), Clock(), warn_shadowed=first_worker())
    warnings = [e for e in captured_log if "is not served" in formatEvent(e)]
    assert len(warnings) == (2 if warned else 0)


def test_modules_that_shadow_nothing_log_no_warning(
    captured_log: list[LogEvent],
) -> None:
    _routed()
    assert not [
        event for event in captured_log if "is not served" in formatEvent(event)
    ]


def test_a_module_s_not_found_handler_takes_paths_no_route_takes() -> None:
    config = config_from_args(["--routes", "tests.klein_routes"])
    client = stub_treq(build_site(config, MemoryReactor(), Clock()))
    unknown = fetch(client, "GET", "/nowhere")
    assert (unknown.code, content_of(unknown)) == (
        404,
        b"the module's own not-found page",
    )
    # A built-in route's own NotFound is the built-in route's answer.
    builtin = fetch(client, "GET", "/calendar/0")
    assert builtin.code == 404
    assert b"There is nothing at this address." in content_of(builtin)


def test_a_route_added_after_the_start_is_served() -> None:
    app = Klein()
    client = stub_treq(build_site(Config(route_apps=(app,)), MemoryReactor(), Clock()))
    assert fetch_undecoded(client, "/added")[0].code == 404

    @app.route("/added")
    def added(request: object) -> str:
        return "added later"

    response, body = fetch_undecoded(client, "/added")
    assert (response.code, body) == (200, b"added later")


def test_a_module_route_a_builtin_path_redirects_or_refuses_is_a_warning(
    captured_log: list[LogEvent],
) -> None:
    app = Klein()

    @app.route("/pay", methods=["POST"])
    def pay(request: object) -> str:
        return "paid"

    @app.route("/cgi-bin")
    def scripts(request: object) -> str:
        return "no scripts"

    build_site(Config(route_apps=(app,)), MemoryReactor(), Clock())
    warnings = [
        formatEvent(event)
        for event in captured_log
        if "is not served" in formatEvent(event)
    ]
    module = __name__
    assert sorted(warnings) == [
        f"Route /cgi-bin ({module}.{scripts.__qualname__}) is not served:"
        " /cgi-bin/ (routes.gateways.CGIRoutes.cgi_bin) answers it",
        f"Route /pay ({module}.{pay.__qualname__}) is not served:"
        " /pay (routes.content.ContentRoutes.pay) answers it",
    ]
