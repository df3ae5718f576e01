"""
Where the server reaches into Klein's private parts: the router calls a
route's function directly, as Klein's executor would, applies a
L{klein.Response} to the request itself, reads an app's error handlers,
and gives each request the
L{IKleinRequest} Klein's executor would give it, with the map adapter bound
only when a route asks for it.  It also learns of rules added to an app's
map later, by wrapping the map's C{add}.  tests/app/compat/test_klein_and_treq.py
fails, saying what moved, when a Klein, werkzeug or Twisted release changes
one of them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from typing import Any
from weakref import WeakSet, ref

from klein import Klein, Response
from klein._app import KleinRequest
from klein.interfaces import IKleinRequest
from twisted.python.reflect import qual
from twisted.web.iweb import IRequest
from werkzeug.routing import Map, MapAdapter, RuleFactory

from app.compat.twisted import public_port

#: One of an app's C{@handle_errors} handlers: the exception types it
#: takes, and the function Klein calls with the request and the failure.
ErrorHandler = tuple[Sequence[type[BaseException]], Callable[..., Any]]


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


def error_handlers(app: Klein) -> Sequence[ErrorHandler]:
    """
    C{app}'s C{@handle_errors} handlers in the order Klein tries them
    (C{Klein._error_handlers}).
    """
    handlers: Sequence[ErrorHandler] = app._error_handlers
    return handlers


class MapWatch:
    """
    Learns when a rule is added to any of some werkzeug maps: each map's
    C{add} (which every rule of a Klein route, subroutes included, goes
    through) is wrapped, once per map, to mark the watches of that map
    C{stale}.  Reading the mark is all a request pays.
    """

    def __init__(self, maps: Sequence[Map]) -> None:
        self.stale = False
        for url_map in maps:
            _watches_of(url_map).add(self)


def _watches_of(url_map: Map) -> WeakSet[MapWatch]:
    watches: WeakSet[MapWatch] | None = url_map.__dict__.get(_WATCHES)
    if watches is None:
        watches = WeakSet()
        setattr(url_map, _WATCHES, watches)
        add = url_map.add

        def add_and_tell(rulefactory: RuleFactory) -> None:
            add(rulefactory)
            for watch in list(watches):
                watch.stale = True

        url_map.add = add_and_tell  # type: ignore[method-assign]
    return watches


#: The attribute of a map that holds its watches.
_WATCHES = "_router_watches"


#: The key under which a request keeps its IKleinRequest
#: (C{Componentized._adapterCache}, keyed by the interface's qualified name).
_KLEIN_REQUEST = qual(IKleinRequest)


class RoutedKleinRequest(KleinRequest):
    """
    The L{IKleinRequest} of a request the router gives to a route of C{app}:
    Klein's, whose C{mapper} (what C{url_for} builds with) is C{app}'s map
    bound as Klein's executor binds it, but only when first read.

    @param script: the path segments dispatched before the router's own.
    @param path: the path segments the router dispatched.
    """

    def __init__(
        self,
        request: IRequest,
        app: Klein,
        script: Sequence[bytes],
        path: Sequence[bytes],
    ) -> None:
        self.branch_segments = [""]
        self._request = ref(request)
        self._app = app
        self._script = script
        self._path = path
        self._mapper: MapAdapter | None = None

    def route_to(
        self, app: Klein, script: Sequence[bytes], path: Sequence[bytes]
    ) -> None:
        """
        Let C{mapper} be C{app}'s: a router below the first one dispatches
        the same request again, as a Klein resource below another does.
        """
        self._app = app
        self._script = script
        self._path = path
        self._mapper = None

    @property
    def mapper(self) -> MapAdapter:
        if self._mapper is None:
            request = self._request()
            assert request is not None, "the request is gone"
            self._mapper = bind_map(
                self._app.url_map, request, self._script, self._path
            )
        return self._mapper

    @mapper.setter
    def mapper(self, value: MapAdapter) -> None:
        self._mapper = value


def bind_map(
    url_map: Map, request: IRequest, script: Sequence[bytes], path: Sequence[bytes]
) -> MapAdapter:
    """
    C{url_map} bound to C{request} as Klein's executor binds it
    (C{klein._resource.extractURLparts}): the host with its port unless that
    is the scheme's default, the script name and path info as text.
    """
    secure = bool(request.isSecure())
    port = public_port(request)
    server_name = request.getRequestHostname()
    if b":" in server_name:  # an IPv6 address, which twisted.web unbrackets
        server_name = b"[%s]" % (server_name,)
    if port != (443 if secure else 80):
        server_name = b"%s:%d" % (server_name, port)
    return url_map.bind(
        server_name.decode("utf-8", "replace"),
        _joined(script),
        path_info=_joined(path),
        default_method=request.method.decode("latin-1"),
        url_scheme="https" if secure else "http",
    )


def _joined(segments: Sequence[bytes]) -> str:
    if not segments:
        return ""
    text = b"/".join(segments).decode("utf-8", "replace")
    return text if text.startswith("/") else "/" + text


def route_klein_request(
    request: Any, app: Klein, script: Sequence[bytes], path: Sequence[bytes]
) -> None:
    """
    Give C{request} the L{IKleinRequest} of a route of C{app} (see
    L{RoutedKleinRequest}), or point the one it has at C{app}.
    """
    cache: dict[str, Any] | None = getattr(request, "_adapterCache", None)
    if cache is None:
        return  # not a Componentized request: it has no IKleinRequest
    existing = cache.get(_KLEIN_REQUEST)
    if existing is None:
        cache[_KLEIN_REQUEST] = RoutedKleinRequest(request, app, script, path)
    elif isinstance(existing, RoutedKleinRequest):
        existing.route_to(app, script, path)
    else:
        existing.mapper = bind_map(app.url_map, request, script, path)


def klein_request_of(request: Any) -> KleinRequest:
    """
    The L{IKleinRequest} of one of the server's requests, made when a route
    first asks for it: for a request the router gave to a route, C{app}'s
    map bound as L{route_klein_request} would bind it, from what the router
    noted in C{request.klein_route} (the app, the C{prepath} list and how
    many segments of it came before the route, the C{postpath} list).
    """
    route = getattr(request, "klein_route", None)
    if route is None:
        return KleinRequest(request)
    app, prepath, count, postpath = route
    return RoutedKleinRequest(request, app, prepath[:count], postpath)


def has_klein_request(request: Any) -> bool:
    """
    Whether C{request} already has its L{IKleinRequest}.
    """
    return _KLEIN_REQUEST in request._adapterCache
