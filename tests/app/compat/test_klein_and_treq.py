"""
What app.compat.klein and app.compat.treq rely on in Klein and treq,
checked against the real objects so that a release that moves one fails
here, by name.  (Twisted's are in tests/app/compat/test_twisted.py.)
"""

from __future__ import annotations

from typing import Any, cast

import klein._app
from klein import Klein, Response
from treq.testing import StubTreq
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgent, IRequest
from twisted.web.resource import Resource
from twisted.web.server import Site
from twisted.web.static import Data
from twisted.web.test.requesthelper import DummyRequest

from app.compat.klein import apply_response, bound_endpoint
from app.compat.treq import serve_through, undecoded_agent


class Shelf:
    app = Klein()

    @app.route("/")
    def index(self, request: Any) -> str:
        return f"index of {self.name}"

    def __init__(self, name: str) -> None:
        self.name = name


plain = Klein()


@plain.route("/")
def plain_index(request: Any) -> str:
    return "plain index"


def _route_function(app: Klein, endpoint: str) -> Any:
    function = getattr(app.endpoints[endpoint], "__wrapped__", None)
    assert function is not None, f"Klein's endpoint {endpoint} no longer wraps"
    return function


def test_a_route_of_an_instance_is_bound_to_it() -> None:
    shelf = Shelf("books")
    app = shelf.app
    assert hasattr(app, "_instance"), "Klein._instance is gone"
    function = _route_function(app, "index")
    request = DummyRequest([b""])
    assert bound_endpoint(app, function)(request) == "index of books"
    assert hasattr(klein._app, "_call"), "klein._app._call is gone"
    assert klein._app._call(app._instance, function, request) == "index of books"


def test_a_route_of_no_instance_is_called_as_it_is() -> None:
    function = _route_function(plain, "plain_index")
    assert bound_endpoint(plain, function) is function
    assert bound_endpoint(plain, function)(DummyRequest([b""])) == "plain index"


def test_a_bindable_route_of_no_instance_is_given_none() -> None:
    from klein import _decorators

    assert hasattr(_decorators, "bindable"), "klein._decorators.bindable is gone"
    seen: list[object] = []

    @_decorators.bindable
    def route(instance: object, request: Any) -> str:
        seen.append(instance)
        return "bound"

    assert getattr(route, "__klein_bound__", False), (
        "bindable no longer marks __klein_bound__"
    )
    assert bound_endpoint(plain, route)(DummyRequest([b""])) == "bound"
    assert seen == [None]


def test_a_klein_response_is_applied_to_the_request() -> None:
    assert hasattr(Response, "_applyToRequest"), "Response._applyToRequest is gone"
    request = DummyRequest([b""])
    body = apply_response(
        # DummyRequest does not declare IRequest, though it has what is used.
        Response(code=201, headers={"X-Made": "yes"}, body="made"),
        cast(IRequest, request),
    )
    assert body == "made"
    assert request.responseCode == 201
    assert request.responseHeaders.getRawHeaders(b"x-made") == [b"yes"]


def test_a_stub_client_serves_through_the_site_given() -> None:
    client = StubTreq(Data(b"stub", "text/plain"))
    assert hasattr(client, "_agent"), "StubTreq._agent is gone"
    assert hasattr(client._agent, "_serverFactory"), (
        "RequestTraversalAgent._serverFactory is gone"
    )
    ours = Resource()
    ours.putChild(b"", Data(b"ours", "text/plain"))
    serve_through(client, Site(ours))
    # StubTreq sets its request methods at run time.
    response = client.get("http://example.invalid/")  # type: ignore[attr-defined]
    client.flush()
    body = client.content(response.result)  # type: ignore[attr-defined]
    client.flush()
    assert body.result == b"ours"


def test_the_agent_under_a_stub_client_sends_headers_as_given() -> None:
    client = StubTreq(Data(b"stub", "text/plain"))
    agent = undecoded_agent(client)
    assert IAgent.providedBy(agent), "StubTreq._agent is no longer an agent"
    seen: list[Any] = []
    resource = Resource()

    class Echo(Resource):
        isLeaf = True

        def render_GET(self, request: IRequest) -> bytes:
            seen.append(request.requestHeaders.getRawHeaders(b"accept-encoding"))
            return b""

    resource.putChild(b"", Echo())
    serve_through(client, Site(resource))
    agent.request(b"GET", b"http://example.invalid/", Headers())
    client.flush()
    assert seen == [None]


def test_error_handlers_are_read_in_klein_s_order() -> None:
    from app.compat.klein import error_handlers

    app = Klein()
    assert hasattr(app, "_error_handlers"), "Klein._error_handlers is gone"

    @app.handle_errors(KeyError)
    def first(request: Any, failure: Any) -> str:
        return "first"

    @app.handle_errors
    def second(request: Any, failure: Any) -> str:
        return "second"

    [(first_types, _), (second_types, _)] = error_handlers(app)
    assert list(first_types) == [KeyError]
    assert list(second_types) == [Exception]


def test_a_rule_added_to_a_watched_map_is_noticed() -> None:
    from app.compat.klein import MapWatch

    app = Klein()
    watch = MapWatch([app.url_map])
    other = MapWatch([app.url_map])
    assert not watch.stale

    @app.route("/new")
    def new(request: Any) -> str:
        return "new"

    assert watch.stale and other.stale
    later = MapWatch([app.url_map])
    with app.subroute("/sub") as sub:

        @sub.route("/in")
        def inside(request: Any) -> str:
            return "inside"

    assert later.stale


def test_a_routed_request_s_mapper_is_bound_as_klein_binds_it() -> None:
    from klein.interfaces import IKleinRequest

    from app.compat.klein import RoutedKleinRequest, route_klein_request

    assert issubclass(RoutedKleinRequest, klein._app.KleinRequest)
    app = Klein()

    @app.route("/a/<int:n>")
    def page(request: Any, n: int) -> str:
        return str(n)

    from twisted.web.server import Request
    from twisted.web.test.requesthelper import DummyChannel

    request = Request(DummyChannel())
    request.method = b"GET"
    request.setHost(b"example.com", 8080)
    assert hasattr(request, "_adapterCache"), "Componentized._adapterCache is gone"
    route_klein_request(request, app, [], [b"a", b"1"])
    klein_request = IKleinRequest(request)
    assert isinstance(klein_request, RoutedKleinRequest)
    assert klein_request.url_for("page", {"n": 2}) == "/a/2"
    mapper = klein_request.mapper
    assert (mapper.server_name, mapper.script_name, mapper.path_info) == (
        "example.com:8080",
        "/",
        "/a/1",
    )
    assert klein_request.url_for("page", {"n": 3}, force_external=True) == (
        "http://example.com:8080/a/3"
    )


def test_a_request_noted_by_the_router_makes_its_klein_request_when_asked() -> None:
    from twisted.web.server import Request
    from twisted.web.test.requesthelper import DummyChannel

    from app.compat.klein import (
        RoutedKleinRequest,
        has_klein_request,
        klein_request_of,
    )

    app = Klein()

    @app.route("/b/<int:n>")
    def page(request: Any, n: int) -> str:
        return str(n)

    request = Request(DummyChannel())
    request.method = b"GET"
    request.setHost(b"example.com", 80)
    prepath = [b"mount"]
    request.klein_route = (app, prepath, 1, [b"b", b"1"])  # type: ignore[attr-defined]
    prepath.extend([b"b", b"1"])  # as the router moves the route's segments
    assert not has_klein_request(request)
    made = klein_request_of(request)
    assert isinstance(made, RoutedKleinRequest)
    assert made.url_for("page", {"n": 5}, force_external=True) == (
        "http://example.com/mount/b/5"
    )
    assert type(klein_request_of(Request(DummyChannel()))) is klein._app.KleinRequest
