"""
How Klein's tests reach the server's router: while a test of this directory
runs, Klein's C{KleinResource} (as C{Klein.resource} and Klein's resource
tests call it) builds a L{Router} serving the app as a C{--routes} module.

L{DIFFERENCES} lists the tests that meet a SPEC §3 rule instead of stock
Klein's behaviour; each is expected to fail (strictly: one that starts to
pass must leave the list), and test_klein_suite.py checks that each names a
test of the suite.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import klein._app
import pytest
from klein import Klein
from klein.test import test_resource

from app.http.router import Router

#: Test (class.method) → the SPEC §3 rule that the router follows instead.
DIFFERENCES: dict[str, str] = {
    "KleinResourceTests.test_addSlash": (
        "SPEC §3, trailing slashes: /foo for a route /foo/ is a 301 to the"
        " path /foo/ (308 for methods other than GET and HEAD), with the query"
        " kept; Klein answers 308 to an absolute URL, without the query"
    ),
    "KleinResourceTests.test_failedDecodePathInfo": (
        "SPEC §3, the server's error pages: a path that is not UTF-8 is the"
        " server's 400 page, and nothing is logged (Klein answers with a line"
        " of text and logs a traceback)"
    ),
    "KleinResourceTests.test_handlerRaises": (
        "SPEC §3, the server's error pages: a handler that raises is the"
        " server's 500 page and one log entry with the traceback, written by"
        " the router (Klein hands it to request.processingFailed, which writes"
        " twisted.web's page)"
    ),
}


def serve_as_routes_module(app: Klein) -> Router:
    """
    What C{KleinResource(app)} is in these tests: the router serving C{app}
    as C{--routes} serves a module.
    """
    return Router((), [app])


@pytest.fixture(autouse=True)
def _klein_resource_is_the_router(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(klein._app, "KleinResource", serve_as_routes_module)
    monkeypatch.setattr(test_resource, "KleinResource", serve_as_routes_module)
    yield


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        case = getattr(item, "cls", None)
        if case is None or item.path.parent != here:
            continue
        rule = DIFFERENCES.get(f"{case.__name__}.{item.name}")
        if rule is not None:
            item.add_marker(pytest.mark.xfail(strict=True, reason=rule))
