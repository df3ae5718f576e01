"""
Asynchronous and Deferred responses, and interrupted responses.

C{/delayed} answers after a delay, written as a coroutine; C{/delayed/fail}
fails after a delay, written with Deferred callbacks.  Both wait on the
site's clock, so tests drive them with L{twisted.internet.task.Clock}.  When
the client goes away the router cancels the handler's Deferred: the timer is
cancelled with it and the log gets one info line, not an error.
"""

from __future__ import annotations

import re
from typing import NoReturn

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from werkzeug.exceptions import BadRequest, InternalServerError

from app.http.access_log import escape_field
from app.http.router import new_app

#: The longest delay a client may ask for, in seconds.
MAX_DELAY = 30.0
DEFAULT_DELAY = 1.0

#: A plain decimal number: no sign, exponent, nan, inf or spaces.
_DECIMAL = re.compile(rb"[0-9]+(?:\.[0-9]*)?|\.[0-9]+")

log = Logger()


class DelayedFailure(Exception):
    """
    The failure C{/delayed/fail} is made of.
    """


class AsynchronousRoutes:
    """
    C{/delayed} and C{/delayed/fail}.
    """

    app = new_app()

    def __init__(self, clock: IReactorTime) -> None:
        self._clock = clock

    @app.route("/delayed", methods=["GET"])
    async def delayed(self, request: IRequest) -> bytes:
        seconds = delay_from(request)
        try:
            await deferLater(self._clock, seconds)
        except CancelledError:
            log_cancelled(request)
            raise
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        request.setHeader(b"cache-control", b"no-store")
        return b"Sorry to keep you waiting."

    @app.route("/delayed/fail", methods=["GET"])
    def delayed_fail(self, request: IRequest) -> Deferred[bytes]:
        seconds = delay_from(request)

        def fail() -> NoReturn:
            raise DelayedFailure(f"failed on purpose after {seconds:g} seconds")

        def failed(failure: Failure) -> Failure:
            if failure.check(CancelledError):
                log_cancelled(request)
                return failure
            # Logged here, once: the router answers an HTTPException with its
            # page and logs nothing more.
            log.failure("Rendering delayed response failed", failure, uri=_uri(request))
            raise InternalServerError()

        waiting: Deferred[bytes] = deferLater(self._clock, seconds, fail)
        return waiting.addErrback(failed)


def delay_from(request: IRequest) -> float:
    """
    The C{seconds} query argument: a decimal from 0 to L{MAX_DELAY}, or
    L{DEFAULT_DELAY} when absent.

    @raise BadRequest: for anything else, a repeated argument included.
    """
    values = (request.args or {}).get(b"seconds")
    if values is None:
        return DEFAULT_DELAY
    if len(values) != 1 or not _DECIMAL.fullmatch(values[0]):
        raise BadRequest()
    seconds = float(values[0])
    if not 0 <= seconds <= MAX_DELAY:
        raise BadRequest()
    return seconds


def log_cancelled(request: IRequest) -> None:
    """
    Record, at info level and without a traceback, that a client went away
    before its delayed response was ready.
    """
    peer = request.getClientAddress()
    host = getattr(peer, "host", None)
    where = f"{host}:{getattr(peer, 'port', '')}" if host is not None else "-"
    log.info(
        "Delayed response cancelled: client went away ({uri} from {peer})",
        uri=_uri(request),
        peer=where,
    )


def _uri(request: IRequest) -> str:
    return escape_field(bytes(request.uri))
