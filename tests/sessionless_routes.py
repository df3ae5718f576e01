"""
A route module whose routes never use their session, marked so:
--routes tests.sessionless_routes.
"""

from klein import Klein
from twisted.web.iweb import IRequest

from app.sessions import forget_session, sessionless

app = Klein()


@app.route("/quiet")
@sessionless
def quiet(request: IRequest) -> str:
    return "quiet"


@sessionless
@app.route("/quiet-above")
def quiet_above(request: IRequest) -> str:
    return "quiet above"


@app.route("/quiet/<name>")
@sessionless
def quiet_named(request: IRequest, name: str) -> str:
    return f"quiet {name}"


@app.route("/greedy")
@sessionless
def greedy(request: IRequest) -> str:
    # Marked wrongly: it asks for its session.
    request.getSession()
    return "unreachable"


@app.route("/forgetful")
@sessionless
def forgetful(request: IRequest) -> str:
    forget_session(request)
    return "unreachable"


@app.route("/talkative")
def talkative(request: IRequest) -> str:
    # Not marked: it may use its session.
    return "talkative"
