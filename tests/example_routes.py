"""
A route module as a user writes one, served with --routes tests.example_routes.
"""

import os

from klein import Klein
from twisted.internet import reactor
from twisted.internet.defer import succeed
from twisted.internet.task import deferLater
from twisted.web.iweb import IRequest

app = Klein()


@app.route("/hello")
def hello(request: IRequest) -> str:
    return "Hello from a route module"


@app.route("/clock")
def clock(request: IRequest) -> str:
    # The demo has /clock too; the built-in route wins.
    return "the module's clock"


@app.route("/boom")
def boom(request: IRequest) -> str:
    raise RuntimeError("deliberate failure")


@app.route("/later")
async def later(request: IRequest) -> str:
    return await succeed("answered later")


@app.route("/later/boom")
async def later_boom(request: IRequest) -> str:
    await succeed(None)
    raise RuntimeError("deliberate asynchronous failure")


@app.route("/dir/")
def directory(request: IRequest) -> str:
    return "a directory route"


@app.route("/items/<int:number>", methods=["GET", "DELETE"])
def item(request: IRequest, number: int) -> str:
    return f"item {number}"


@app.route("/slow")
async def slow(request: IRequest) -> str:
    await deferLater(reactor, 1.0, lambda: None)
    return "finished"


@app.route("/pid")
def pid(request: IRequest) -> str:
    return str(os.getpid())


@app.route("/calendar/1999")
def calendar_1999(request: IRequest) -> str:
    # The demo's /calendar/<int:year> matches this path first and wins.
    return "the module's calendar"


@app.route("/dated")
def dated(request: IRequest) -> str:
    request.setHeader("Date", "Thu, 01 Jan 2015 00:00:00 GMT")
    return "a response with its own date"


@app.route("/cookies")
def cookies(request: IRequest) -> str:
    found = request.received_cookies  # type: ignore[attr-defined]
    return repr(sorted(found.items())) + " " + repr(request.getCookie(b"a"))
