"""
Where the server reaches into Klein's private parts: the router calls a
route's function directly, as Klein's executor would, and applies a
L{klein.Response} to the request itself.  tests/app/compat/test_klein_and_treq.py fails,
saying what moved, when a Klein release changes one of them.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

from klein import Klein, Response
from twisted.web.iweb import IRequest


def bound_endpoint(app: Klein, function: Callable[..., Any]) -> Callable[..., Any]:
    """
    C{function}, a route's function as Klein keeps it, bound as Klein's
    C{klein._app._call} binds it: to the instance that C{app} was read from
    (C{Klein._instance}), or to C{None} when Klein marked it bound
    (C{__klein_bound__}) with no instance; else as it is.
    """
    instance = app._instance
    if instance is not None or getattr(function, "__klein_bound__", False):
        return partial(function, instance)
    return function


def apply_response(response: Response, request: IRequest) -> Any:
    """
    Set C{response}'s code and headers on C{request} and return its body, as
    Klein does with a L{klein.Response} a route returns
    (C{Response._applyToRequest}).
    """
    return response._applyToRequest(request)
