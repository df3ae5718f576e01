"""
A route module written for stock Klein, using what SPEC §14 lists: error
handlers, url_for, a subroute, a converter of its own, a branch route
returning a resource, an element, a Plating page, a klein.Response, and
Deferreds and coroutines of them.  Served with --routes tests.klein_routes,
and compared with the same app under app.resource().
"""

from typing import Any

from klein import Klein, Plating, Response
from klein.interfaces import IKleinRequest
from twisted.internet.defer import Deferred, succeed
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from twisted.web.resource import Resource
from twisted.web.static import Data
from twisted.web.template import Element, Tag, XMLString, renderer, slot, tags
from werkzeug.exceptions import MethodNotAllowed, NotFound
from werkzeug.routing import BaseConverter, ValidationError

app = Klein()


class Upper(BaseConverter):
    """
    A path segment of capital letters, given to the route in lower case.
    """

    regex = "[A-Z]+"

    def to_python(self, value: str) -> str:
        if value == "NONE":
            raise ValidationError()
        return value.lower()

    def to_url(self, value: Any) -> str:
        return str(value).upper()


app.url_map.converters["upper"] = Upper


class Refused(Exception):
    """
    Raised by a route; its handler answers 409.
    """


@app.handle_errors(NotFound)
def not_found(request: IRequest, failure: Failure) -> str:
    request.setResponseCode(404)
    return "the module's own not-found page"


@app.handle_errors(MethodNotAllowed)
def not_allowed(request: IRequest, failure: Failure) -> bytes:
    request.setResponseCode(405)
    return b"the module's own not-allowed page"


@app.handle_errors(Refused)
def refused(request: IRequest, failure: Failure) -> Deferred[bytes]:
    request.setResponseCode(409)
    request.setHeader(b"x-refused", str(failure.value).encode())
    return succeed(b"refused: " + str(failure.value).encode())


@app.route("/k/refuse")
def refuse(request: IRequest) -> str:
    raise Refused("by the route")


@app.route("/k/refuse-later")
async def refuse_later(request: IRequest) -> str:
    await succeed(None)
    raise Refused("later")


@app.route("/k/only-get", methods=["GET"])
def only_get(request: IRequest) -> str:
    return "got"


@app.route("/k/links/<int:number>")
def links(request: IRequest, number: int) -> str:
    klein = IKleinRequest(request)
    return " ".join(
        [
            klein.url_for("links", {"number": number + 1}),
            klein.url_for("shout", {"word": "abc"}),
            klein.url_for("links", {"number": 0}, force_external=True),
        ]
    )


@app.route("/k/shout/<upper:word>")
def shout(request: IRequest, word: str) -> str:
    return f"{word}!"


with app.subroute("/k/sub") as sub:

    @sub.route("/inner/<name>")
    def inner(request: IRequest, name: str) -> str:
        return f"inner {name}, " + IKleinRequest(request).url_for(
            "inner", {"name": "x"}
        )


@app.route("/k/tree/", branch=True)
def tree(request: IRequest) -> Resource:
    resource = Resource()
    resource.putChild(b"leaf", Data(b"a leaf", "text/plain"))
    return resource


class Greeting(Element):
    loader = XMLString(
        '<p xmlns:t="http://twistedmatrix.com/ns/twisted.web.template/0.1"'
        ' t:render="name" />'
    )

    def __init__(self, name: str) -> None:
        self._name = name

    @renderer
    def name(self, request: IRequest, tag: Tag) -> Tag:
        return tag("Hello, ", self._name)


@app.route("/k/element/<name>")
def element(request: IRequest, name: str) -> Greeting:
    return Greeting(name)


# Klein's type of a route's result (KleinRenderable) leaves out its own Response.
@app.route("/k/response")  # type: ignore[type-var]
def response(request: IRequest) -> Response:
    return Response(code=201, headers={"x-made": "here"}, body="made")


@app.route("/k/deferred-element")
def deferred_element(request: IRequest) -> Deferred[Greeting]:
    return succeed(Greeting("later"))


page = Plating(
    tags=tags.html(
        tags.head(tags.title(slot("title"))), tags.body(slot(Plating.CONTENT))
    ),
    defaults={"title": "a plated page"},
)


@page.routed(
    app.route("/k/plated/<int:count>"),
    tags.ul(tags.li(slot("item"), render="items:list")),
)
def plated(request: IRequest, count: int) -> dict[str, Any]:
    return {"items": list(range(count)), "title": f"{count} items"}
