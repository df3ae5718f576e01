"""
One resource that dispatches to the routes of several Klein apps.

Routes are written with Klein's decorators; this resource matches a request
against their werkzeug maps and calls the same endpoints Klein would, with
the rules this server promises instead of Klein's defaults:

  - Layers in priority order: the built-in routes first, then each
    C{--routes} module, so a built-in route wins a clash.
  - A missing or extra trailing slash redirects with the query string kept:
    301 for GET and HEAD, 308 otherwise (Klein answers 308 and drops the
    query for C{/dir?a=1}, and 404 for C{/health/}; klein#431 and werkzeug's
    strict-slashes redirect, which is built without the query).
  - C{//} is never merged away: C{//health} is not C{/health}.
  - Unknown paths are 404, wrong methods 405 with C{Allow}, handler errors
    500 with one logged traceback: all as the server's own HTML pages.
  - A synchronous result is answered synchronously, without Deferreds.
  - A request a route answers carries the route's template in C{route}
    (C{/calendar/<int:year>}; a branch route's prefix, C{/static/}), for
    the metrics; one no route answers carries none.

Everything else is Klein's executor (C{klein._resource.KleinResource}), for
every route: an app's C{@handle_errors} handlers get its routes' failures
and the C{NotFound} / C{MethodNotAllowed} of matching; a route's
C{IKleinRequest} has the app's map bound for C{url_for} (bound when first
used); a route may return C{str}, C{bytes}, C{None}, a L{klein.Response}, a
resource or an element (a C{Plating} page is one), or a Deferred or
coroutine of one; routes added to an app after the router was made are
served.  Klein's own tests of its executor run against this router
(tests/app/http/klein_suite/).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from html import escape
from inspect import iscoroutine
from typing import Any
from urllib.parse import quote, urlsplit

from klein import Klein
from klein import Response as KleinResponse
from klein.interfaces import IKleinRequest
from twisted.internet.defer import CancelledError, Deferred, ensureDeferred
from twisted.logger import Logger
from twisted.python.components import registerAdapter
from twisted.python.failure import Failure
from twisted.web.iweb import IRenderable
from twisted.web.resource import IResource, Resource, getChildForRequest
from twisted.web.server import NOT_DONE_YET, Request
from twisted.web.template import renderElement
from werkzeug.exceptions import HTTPException, MethodNotAllowed, NotFound
from werkzeug.routing import (
    BaseConverter,
    Map,
    MapAdapter,
    PathConverter,
    RequestRedirect,
    Rule,
)

from app.compat.klein import (
    ErrorHandler,
    MapWatch,
    apply_response,
    bound_endpoint,
    error_handlers,
    has_klein_request,
    klein_request_of,
    route_klein_request,
)
from app.compat.twisted import connection_gone
from app.http.pages import (
    HTML_TYPE,
    PATH_SAFE,
    answer,
    error_page,
    redirect,
    render_error,
)
from app.http.request import Request as ServerRequest
from app.http.request import request_uri
from app.sessions.store import is_sessionless

log = Logger()

# The server's own requests make their IKleinRequest only when a route asks.
registerAdapter(klein_request_of, ServerRequest, IKleinRequest)


def new_app() -> Klein:
    """
    A Klein app whose map keeps C{//} in paths; routes of the server are
    declared on these.
    """
    app = Klein()
    app.url_map.merge_slashes = False
    return app


class _Rest(PathConverter):
    """
    The rest of a path below a branch route, even one that starts with C{/}:
    werkzeug's C{path} converter (C{[^/].*?}) does not match C{/x}, so with
    Klein's branch rule C{/proxy//x} would find no route at all.
    """

    regex = ".+"
    part_isolating = False


#: How many (path, method) pairs the router remembers the match of.
MATCH_CACHE = 1024

#: How Klein spells the rest of a branch route, and how this router does.
_KLEIN_BRANCH = "/<path:__rest__>"
_BRANCH = "/<rest:__rest__>"


@dataclass(frozen=True)
class _Found:
    app: Klein
    endpoint: str
    arguments: dict[str, Any]
    #: For exact routes: the route's own function, ready to call with the
    #: request, skipping Klein's two wrappers (which do just this).
    direct: Callable[..., Any] | None = None
    #: The rule as written (a branch route's: its prefix).
    template: str = ""
    #: Whether the route is marked as never using its session.
    sessionless: bool = False


@dataclass(frozen=True)
class _Layer:
    adapter: MapAdapter
    apps: dict[str, Klein]
    #: What Klein's executor of each endpoint would call, by endpoint.
    direct: dict[str, Callable[..., Any]]
    #: The template of each endpoint's rule, by endpoint.
    templates: dict[str, str]
    #: Routes without variables, by (path, method): what werkzeug would
    #: match for them, found without running its matcher.
    exact: dict[tuple[str, str], _Found]
    #: The layer's apps, in order.
    members: tuple[Klein, ...]
    #: The endpoints whose routes are marked as never using their session.
    sessionless: frozenset[str] = frozenset()


@dataclass(frozen=True)
class _Fast:
    """
    An exact route as the router calls it for a request whose raw path is
    the route's text: its function, and how many path segments it takes.
    """

    function: Callable[..., Any]
    segment_count: int
    template: str
    app: Klein
    sessionless: bool = False


@dataclass(frozen=True)
class _Redirect:
    path: str


@dataclass(frozen=True)
class _NotAllowed:
    allowed: tuple[str, ...]
    #: The apps of the layer that has the path, whose error handlers get
    #: the C{MethodNotAllowed}.
    apps: tuple[Klein, ...]


_Match = _Found | _Redirect | _NotAllowed | None


def _layer(apps: Sequence[Klein]) -> _Layer:
    """
    Merge the rules of C{apps} into one map, each endpoint renamed so that
    it remembers its app.
    """
    converters: dict[str, type[BaseConverter]] = {}
    for app in apps:
        # An app's own converters (app.url_map.converters), as Klein uses them.
        converters.update(app.url_map.converters)
    converters["rest"] = _Rest
    url_map = Map(merge_slashes=False, converters=converters)
    owners: dict[str, Klein] = {}
    direct: dict[str, Callable[..., Any]] = {}
    templates: dict[str, str] = {}
    exact: dict[tuple[str, str], _Found] = {}
    quiet: set[str] = set()
    for index, app in enumerate(apps):
        for rule in app.url_map.iter_rules():
            name = f"{index}:{rule.endpoint}"
            copy = Rule(
                rule.rule.replace(_KLEIN_BRANCH, _BRANCH),
                **{**rule.get_empty_kwargs(), "endpoint": name, "merge_slashes": False},
            )
            url_map.add(copy)
            owners[name] = app
            templates[name] = _template(copy.rule)
            endpoint = str(rule.endpoint)
            marked = is_sessionless(app.endpoints.get(endpoint))
            if marked:
                quiet.add(name)
            call = _direct_call(app, endpoint)
            if call is not None and "__rest__" in copy.arguments:
                call = partial(_call_branch, call)
            if call is not None:
                direct[name] = call
            if _is_exact(copy):
                found = _Found(app, endpoint, {}, call, templates[name], marked)
                for method in copy.methods or ():
                    exact.setdefault((copy.rule, method), found)
    # Matching never looks at the host; bind once instead of per request.
    adapter = url_map.bind("localhost")
    return _Layer(
        adapter, owners, direct, templates, exact, tuple(apps), frozenset(quiet)
    )


def _handling_app(apps: Sequence[Klein], failure: Failure) -> Klein | None:
    """
    The first of C{apps} with an error handler for C{failure}, else the
    first.
    """
    for app in apps:
        if any(failure.check(*types) for types, _ in error_handlers(app)):
            return app
    return apps[0] if apps else None


def _template(rule: str) -> str:
    """
    How the metrics name the route of C{rule}: as written, a branch route by
    its prefix.
    """
    if rule.endswith(_BRANCH):
        return rule[: -len(_BRANCH)] + "/"
    return rule


def _fast_routes(layers: Sequence[_Layer]) -> dict[tuple[bytes, bytes], _Fast]:
    """
    The exact routes by raw request path and method, as L{Router._match}
    would find them: a route is left out where an earlier layer matches its
    path (a built-in variable route wins over a C{--routes} exact one).
    """
    fast: dict[tuple[bytes, bytes], _Fast] = {}
    for index, layer in enumerate(layers):
        for (path, method), found in layer.exact.items():
            if found.direct is None or "%" in path or path.startswith("//"):
                continue
            try:
                key = (path.encode("ascii"), method.encode("ascii"))
            except UnicodeEncodeError:
                continue
            if key in fast or any(
                _layer_matches(earlier, path, method) for earlier in layers[:index]
            ):
                continue
            handler = found.app.endpoints[found.endpoint]
            count: int = handler.segment_count  # type: ignore[attr-defined]
            fast[key] = _Fast(
                found.direct, count, found.template, found.app, found.sessionless
            )
    return fast


def _layer_matches(layer: _Layer, path: str, method: str) -> bool:
    """
    Whether C{layer} has an answer of its own for C{path} and C{method}.
    """
    try:
        layer.adapter.match(path, method)
    except NotFound:
        return False
    except HTTPException:
        return True
    return True


def shadowed_routes(layers: Sequence[_Layer]) -> list[str]:
    """
    One line for each route of a C{--routes} module (a layer after the
    first) that an earlier layer answers instead: a route for the same path
    (a path of its own, or the same rule), naming both routes.
    """
    lines: list[str] = []
    for index, layer in enumerate(layers[1:], start=1):
        for rule in layer.adapter.map.iter_rules():
            winner = _shadowing_rule(layers[:index], rule)
            if winner is not None:
                winning_layer, winning_rule = winner
                lines.append(
                    f"Route {_describe(layer, rule)} is not served: "
                    f"{_describe(winning_layer, winning_rule)} answers it"
                )
    return lines


def _shadowing_rule(layers: Sequence[_Layer], rule: Rule) -> tuple[_Layer, Rule] | None:
    """
    The rule of one of C{layers} that answers a request meant for C{rule}:
    for a path of its own, the rule that takes the path (or redirects it,
    or refuses the method); otherwise a rule written the same way.
    """
    methods = sorted(rule.methods or {"GET"})
    for layer in layers:
        for method in methods:
            if not rule.arguments:
                winner = _taker(layer, rule.rule, method)
                if winner is not None:
                    return layer, winner
                continue
            for other in layer.adapter.map.iter_rules():
                if other.rule == rule.rule and method in (other.methods or ()):
                    return layer, other
    return None


def _taker(layer: _Layer, path: str, method: str) -> Rule | None:
    """
    The rule of C{layer} that answers C{method} on C{path} (with a
    redirect or a 405 if need be), if any.
    """
    for _ in range(2):
        try:
            rule, _arguments = layer.adapter.match(path, method, return_rule=True)
        except RequestRedirect as redirect:
            path = urlsplit(redirect.new_url).path
            continue
        except MethodNotAllowed as error:
            method = sorted(error.valid_methods or ("GET",))[0]
            continue
        except HTTPException:
            return None
        assert isinstance(rule, Rule)
        return rule
    return None


def _describe(layer: _Layer, rule: Rule) -> str:
    """
    A rule as the shadowing warning names it: its text and the module of its
    function.
    """
    endpoint = str(rule.endpoint)
    app = layer.apps[endpoint]
    handler = app.endpoints[endpoint.partition(":")[2]]
    function = getattr(handler, "__wrapped__", handler)
    return f"{_template(rule.rule)} ({function.__module__}.{function.__qualname__})"


def _pure_converters(layer: _Layer) -> bool:
    """
    Whether every converter in C{layer}'s rules is one of werkzeug's own (or
    this module's), which match by the path alone.
    """
    return all(
        type(converter) in _PURE_CONVERTERS
        for rule in layer.adapter.map.iter_rules()
        for converter in getattr(rule, "_converters", {None: None}).values()
    )


_PURE_CONVERTERS = frozenset({*Map.default_converters.values(), _Rest})


def _direct_call(app: Klein, endpoint: str) -> Callable[..., Any] | None:
    """
    What Klein's executor for C{endpoint} would call, bound as it would bind
    it (klein._app._call); C{None} where that cannot be told.
    """
    function = getattr(app.endpoints[endpoint], "__wrapped__", None)
    if function is None:
        return None
    return bound_endpoint(app, function)


def _call_branch(
    function: Callable[..., Any], request: Request, __rest__: str = "", **arguments: Any
) -> Any:
    """
    Call a branch route's C{function} as Klein's branch executor does, with
    the rest of the path in C{IKleinRequest(request).branch_segments}.
    """
    IKleinRequest(request).branch_segments = __rest__.split("/")
    return function(request, **arguments)


def _is_exact(rule: Rule) -> bool:
    """
    Whether C{rule} matches one path only, that path being its text.
    """
    return (
        not rule.arguments
        and rule.methods is not None
        and rule.redirect_to is None
        and not rule.build_only
        and not rule.host
        and not rule.subdomain
        and "<" not in rule.rule
    )


class Router(Resource):
    """
    The root resource of the site.
    """

    isLeaf = True

    def __init__(
        self,
        builtin: Sequence[Klein],
        extra: Sequence[Klein] = (),
        *,
        display_tracebacks: bool = False,
        warn_shadowed: bool = True,
    ) -> None:
        super().__init__()
        self._builtin = tuple(builtin)
        self._extra = tuple(extra)
        self._display_tracebacks = display_tracebacks
        self._build()
        if warn_shadowed:
            for line in shadowed_routes(self._layers):
                log.warn("{line}", line=line)

    def __eq__(self, other: object) -> bool:
        # As Klein's resources compare: by what they serve.
        if not isinstance(other, Router):
            return NotImplemented
        return self._serves() == other._serves()

    def __ne__(self, other: object) -> bool:
        equal = self.__eq__(other)
        return equal if equal is NotImplemented else not equal

    __hash__ = None  # type: ignore[assignment]

    def _serves(self) -> tuple[object, ...]:
        return (self._builtin, self._extra, self._display_tracebacks)

    def _build(self) -> None:
        """
        Read the apps' rules; again whenever a rule is added to one of them.
        """
        self._watch = MapWatch([app.url_map for app in self._builtin + self._extra])
        self._layers = [_layer(self._builtin)] + [_layer([app]) for app in self._extra]
        self._fast = _fast_routes(self._layers)
        #: What matching found for recent (path, method) pairs, oldest first;
        #: only kept where every converter is one of werkzeug's own, whose
        #: answer depends on the path alone.
        self._matched: dict[tuple[str, str], _Match] | None = (
            {} if all(_pure_converters(layer) for layer in self._layers) else None
        )
        #: The apps whose error handlers a request no route takes may go
        #: to: the C{--routes} modules first.
        self._unrouted = self._extra + self._builtin

    # -- matching ---------------------------------------------------------

    def _match_once(self, path: str, method: str) -> _Match:
        for layer in self._layers:
            found = layer.exact.get((path, method))
            if found is not None:
                return found
            try:
                rule, arguments = layer.adapter.match(path, method, return_rule=True)
            except RequestRedirect as redirect:
                return _Redirect(urlsplit(redirect.new_url).path)
            except MethodNotAllowed as error:
                return _NotAllowed(tuple(error.valid_methods or ()), layer.members)
            except NotFound:
                continue
            assert isinstance(rule, Rule)
            endpoint = str(rule.endpoint)
            app = layer.apps[endpoint]
            return _Found(
                app,
                endpoint.partition(":")[2],
                dict(arguments),
                layer.direct.get(endpoint),
                layer.templates[endpoint],
                endpoint in layer.sessionless,
            )
        return None

    def _match(self, path: str, method: str) -> _Match:
        matched = self._matched
        if matched is None:
            return self._match_uncached(path, method)
        key = (path, method)
        try:
            return matched[key]
        except KeyError:
            pass
        found = matched[key] = self._match_uncached(path, method)
        if len(matched) > MATCH_CACHE:
            del matched[next(iter(matched))]
        return found

    def _match_uncached(self, path: str, method: str) -> _Match:
        found = self._match_once(path, method)
        if found is None and len(path) > 1 and path.endswith("/"):
            trimmed = path.rstrip("/") or "/"
            if self._match_once(trimmed, method) is not None:
                return _Redirect(quote(trimmed, safe=PATH_SAFE))
        return found

    def takes_no_session(self, request: Request) -> bool:
        """
        Whether the route that will take C{request} is marked as never using
        its session (so that a store which fetches sessions before routing
        need fetch none for it); C{False} where that is not plain at once.
        """
        if request.prepath:
            return False  # the path is another resource's to route
        if self._watch.stale:
            self._build()
        fast = self._fast.get((request.path, request.method))
        if fast is not None:
            return fast.sessionless
        raw: bytes = request.path or b""
        if raw[:2] == b"//" or raw[:1] != b"/" or b"%" in raw:
            return False
        try:
            match = self._match(raw.decode("utf-8"), request.method.decode("latin-1"))
        except Exception:
            return False  # matching fails again, and is answered, when routed
        return isinstance(match, _Found) and match.sessionless

    # -- rendering --------------------------------------------------------

    def render(self, request: Request) -> bytes | int:
        # The request's path is the router's to match only where it is the
        # root resource (under another resource, C{postpath} is).
        fast = (
            None if request.prepath else self._fast.get((request.path, request.method))
        )
        if fast is None:
            body = self._dispatch(request)
        else:
            request.route = fast.template  # type: ignore[attr-defined]
            if fast.sessionless:
                request.session_refused = True  # type: ignore[attr-defined]
            _route(request, fast.app, fast.segment_count)
            body = self._call(request, fast.function, {}, fast.app)
        if body is NOT_DONE_YET or request.method != b"HEAD":
            return body
        assert isinstance(body, bytes)
        return answer(request, body)

    def _dispatch(self, request: Request) -> bytes | int:
        if self._watch.stale:
            self._build()
        postpath: list[bytes] = request.postpath or []
        raw: bytes = request.path or b""
        try:
            if raw[:1] == b"/" and b"%" not in raw and not request.prepath:
                # Nothing to unquote: the path is what the segments would join to.
                path = raw.decode("utf-8")
            else:
                path = "/" + "/".join(segment.decode("utf-8") for segment in postpath)
        except UnicodeDecodeError:
            return self._error(request, 400, "The path is not valid UTF-8.")
        if path.startswith("//"):
            # werkzeug strips leading slashes before matching: //health would
            # be /health, and //host/ looks like another site to a browser.
            return self._not_found(request)
        method = request.method.decode("latin-1")
        try:
            match = self._match(path, method)
        except Exception:
            # A converter of an app that failed: that app's handlers, as the
            # failures of Klein's matching go.
            return self._unrouted_failure(request, Failure())
        if match is None:
            return self._not_found(request)
        if isinstance(match, _Redirect):
            return self._redirect(request, match.path)
        if isinstance(match, _NotAllowed):
            failure = Failure(MethodNotAllowed(valid_methods=match.allowed))
            app = _handling_app(match.apps, failure)
            assert app is not None
            _route(request, app, 0)
            return self._failed(request, failure, app, error_handlers(app))

        request.route = match.template  # type: ignore[attr-defined]
        if match.sessionless:
            request.session_refused = True  # type: ignore[attr-defined]
        app = match.app
        handler = app.endpoints[match.endpoint]
        _route(request, app, handler.segment_count)  # type: ignore[attr-defined]
        if match.direct is not None:
            return self._call(request, match.direct, match.arguments, app)
        return self._call(
            request,
            partial(app.execute_endpoint, match.endpoint),
            match.arguments,
            app,
        )

    def _not_found(self, request: Request) -> bytes | int:
        """
        The answer to a request that no route takes: the server's 404 page,
        unless an app has an error handler for it.
        """
        if not any(map(error_handlers, self._unrouted)):
            # No app handles errors: no failure to make.
            if self._unrouted:
                _route(request, self._unrouted[0], 0)
            return self._error(request, 404)
        return self._unrouted_failure(request, Failure(NotFound()))

    def _unrouted_failure(self, request: Request, failure: Failure) -> bytes | int:
        app = _handling_app(self._unrouted, failure)
        if app is None:
            return self._default_failure(request, failure)
        _route(request, app, 0)
        return self._failed(request, failure, app, error_handlers(app))

    def _call(
        self,
        request: Request,
        function: Callable[..., Any],
        arguments: dict[str, Any],
        app: Klein,
    ) -> bytes | int:
        """
        Call a route's C{function} and answer with what it returns.
        """
        try:
            result = function(request, **arguments)
        except Exception:
            return self._failed(request, Failure(), app, error_handlers(app))
        if type(result) is bytes:
            body = result
        elif type(result) is str:
            body = result.encode("utf-8")
        else:
            return self._answer(request, result, app, error_handlers(app))
        if request.finished:
            return self._answer(request, body, app, ())
        return body

    def _answer(
        self,
        request: Request,
        result: Any,
        app: Klein,
        handlers: Sequence[ErrorHandler],
    ) -> bytes | int:
        """
        Answer with C{result}, what a route of C{app} (or one of its error
        handlers) returned; a failure goes to C{handlers}.
        """
        if iscoroutine(result):
            result = ensureDeferred(result)
        if isinstance(result, Deferred):
            return self._render_later(request, result, app, handlers)
        try:
            body = self._render_result(request, result, app, handlers)
        except Exception:
            return self._failed(request, Failure(), app, handlers)
        if body is not NOT_DONE_YET and request.finished:
            # The route finished the request itself; writing the answer is
            # the mistake Klein logs.
            try:
                self._write(request, body)
            except Exception:
                log.failure("Writing a response failed", Failure())
            return NOT_DONE_YET
        return body

    def _render_later(
        self,
        request: Request,
        result: Deferred[Any],
        app: Klein,
        handlers: Sequence[ErrorHandler],
    ) -> int:
        gone: list[Failure] = []

        def client_went_away(reason: Failure) -> None:
            gone.append(reason)
            result.cancel()

        request.notifyFinish().addErrback(client_went_away)

        def over() -> bool:
            return bool(gone or request.finished or connection_gone(request))

        def write(value: Any) -> None:
            if over():
                return
            try:
                body = self._render_result(request, value, app, handlers)
            except Exception:
                body = self._failed(request, Failure(), app, handlers)
            self._write(request, body)

        def failed(failure: Failure) -> None:
            if over():
                if not failure.check(CancelledError):
                    log.failure(
                        "Rendering {uri} failed after the client went away",
                        failure,
                        uri=request_uri(request),
                    )
                return
            if request.startedWriting:
                log.failure("Rendering {uri} failed", failure, uri=request_uri(request))
                request.loseConnection()
                return
            self._write(request, self._failed(request, failure, app, handlers))

        result.addCallbacks(write, failed).addErrback(
            lambda failure: log.failure("Writing a response failed", failure)
        )
        return NOT_DONE_YET

    def _write(self, request: Request, body: bytes | int) -> None:
        """
        Write C{body}, an answer found after C{render} returned, and finish.
        """
        if body is NOT_DONE_YET:
            return
        assert isinstance(body, bytes)
        if (
            not request.startedWriting
            and request.responseHeaders.getRawHeaders(b"content-length") is None
        ):
            request.setHeader(b"content-length", b"%d" % (len(body),))
        request.write(body)
        request.finish()

    def _render_result(
        self,
        request: Request,
        result: Any,
        app: Klein,
        handlers: Sequence[ErrorHandler],
    ) -> bytes | int:
        if isinstance(result, KleinResponse):
            result = apply_response(result, request)
        if isinstance(result, bytes):
            return result
        if isinstance(result, str):
            return result.encode("utf-8")
        if result is None:
            return b""
        if IResource.providedBy(result):
            request.render(getChildForRequest(result, request))
            return NOT_DONE_YET
        if IRenderable.providedBy(result):
            renderElement(request, result)
            return NOT_DONE_YET
        if isinstance(result, Deferred) or iscoroutine(result):
            return self._answer(request, result, app, handlers)
        raise TypeError(f"a route returned {type(result).__name__}, not a response")

    # -- answers ------------------------------------------------------------

    def _error(self, request: Request, code: int, detail: str | None = None) -> bytes:
        return render_error(request, code, detail)

    def _redirect(self, request: Request, path: str) -> bytes | int:
        body = redirect(request, path)
        if body is None:
            return self._not_found(request)
        request.setHeader(b"content-length", b"%d" % (len(body),))
        return body

    def _failed(
        self,
        request: Request,
        failure: Failure,
        app: Klein,
        handlers: Sequence[ErrorHandler],
    ) -> bytes | int:
        """
        The answer to a failure of a route of C{app}: from the first of
        C{handlers} (C{@handle_errors}) that takes it, as Klein tries them,
        a handler that fails passing its own failure on to the rest; else
        the server's.
        """
        for index, (types, handler) in enumerate(handlers):
            if not failure.check(*types):
                continue
            rest = handlers[index + 1 :]
            try:
                result = app.execute_error_handler(handler, request, failure)
            except Exception:
                return self._failed(request, Failure(), app, rest)
            return self._answer(request, result, app, rest)
        return self._default_failure(request, failure)

    def _default_failure(self, request: Request, failure: Failure) -> bytes:
        """
        The server's answer to a failure no handler took: its HTTP error, or
        a logged 500.
        """
        error = failure.value
        if isinstance(error, HTTPException) and error.code is not None:
            if isinstance(error, MethodNotAllowed) and error.valid_methods:
                request.setHeader(b"allow", ", ".join(error.valid_methods).encode())
            return self._error(request, error.code)
        log.failure("Rendering {uri} failed", failure, uri=request_uri(request))
        request.setResponseCode(500)
        request.setHeader(b"content-type", HTML_TYPE)
        if self._display_tracebacks:
            trace = escape(failure.getTraceback())
            return error_page(500, extra_html=f"\n<pre>{trace}</pre>")
        return error_page(500)


def _route(request: Request, app: Klein, count: int) -> None:
    """
    Hand C{request} to a route of C{app} taking C{count} path segments, as
    Klein's executor does: the segments move from C{postpath} to
    C{prepath}, and the request's L{IKleinRequest} gets C{app}'s map.
    """
    postpath: list[bytes] = request.postpath or []
    prepath: list[bytes] = request.prepath or []
    if type(request) is ServerRequest and not has_klein_request(request):
        # Noted for klein_request_of, should the route ask.
        request.klein_route = (app, prepath, len(prepath), postpath)  # type: ignore[attr-defined]
    else:
        route_klein_request(request, app, prepath[:], postpath)
    if count:
        prepath.extend(postpath[:count])
        request.prepath = prepath
        request.postpath = postpath[count:]


def branch_segments(request: Request) -> list[str]:
    """
    The path below a branch route, as Klein splits it.
    """
    segments: list[str] = IKleinRequest(request).branch_segments
    return segments
