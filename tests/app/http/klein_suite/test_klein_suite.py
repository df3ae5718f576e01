"""
Klein's own tests of routing and rendering (C{klein.test.test_app},
C{test_resource}, C{test_plating}, as the installed Klein ships them), run
against the server's router: C{conftest.py} here makes C{KleinResource(app)}
and C{app.resource()} build a L{app.http.router.Router} that serves C{app}
as a C{--routes} module, and lists the tests that meet a SPEC §3 rule
instead of Klein's behaviour.
"""

from __future__ import annotations

from types import ModuleType
from unittest import TestCase

from klein.test import test_app, test_plating, test_resource

from tests.app.http.klein_suite.conftest import DIFFERENCES

#: The modules whose test cases run here.
SUITE: tuple[ModuleType, ...] = (test_app, test_resource, test_plating)


def _test_cases(module: ModuleType) -> dict[str, type[TestCase]]:
    """
    The test case classes that C{module} defines (not those it imports).
    """
    return {
        name: value
        for name, value in vars(module).items()
        if isinstance(value, type)
        and issubclass(value, TestCase)
        and value.__module__ == module.__name__
    }


def _collect() -> dict[str, type[TestCase]]:
    cases: dict[str, type[TestCase]] = {}
    for module in SUITE:
        found = _test_cases(module)
        assert found, f"{module.__name__} defines no test cases"
        assert not cases.keys() & found.keys(), "two suites share a class name"
        cases.update(found)
    return cases


globals().update(_collect())


def test_every_listed_difference_is_a_test_of_the_suite() -> None:
    cases = _collect()
    for name in DIFFERENCES:
        case, _, method = name.partition(".")
        assert callable(getattr(cases[case], method, None)), name
    assert len(DIFFERENCES) == 3
