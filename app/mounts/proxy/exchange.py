"""
One request through the reverse proxy, from the upstream request to the end
of the client's response.

Twisted's L{twisted.web.proxy.ProxyClient} also writes the answer to the
client as it arrives, but never pauses the upstream for a slow client and
never gives up on a silent upstream.  Here:

  - A client that reads slowly pauses the upstream connection: the exchange
    is the producer registered on the client's request.
  - An unreachable upstream is 502; an upstream silent for
    L{UPSTREAM_TIMEOUT} seconds is 504, or, once the answer has begun, the
    client's connection is closed.  So is it when the upstream breaks off
    mid-body.  A client that goes away cancels the upstream request.

Where an exchange stands is one L{Stage}; each change of stage is written
where it happens.
"""

from __future__ import annotations

from enum import Enum

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IPushProducer, IReactorTime
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from twisted.web.http import NO_BODY_CODES, PotentialDataLoss
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH, IBodyProducer, IResponse
from twisted.web.server import Request
from zope.interface import implementer

from app.http.pages import render_error
from app.mounts.proxy.client import UpstreamClient, discard
from app.mounts.proxy.policy import Upstream, reason_phrase, response_headers

__all__ = ["UPSTREAM_TIMEOUT", "Exchange", "Stage"]

log = Logger()

#: Seconds the upstream may stay silent (before its answer, or between two
#: pieces of its body) before the proxy gives up on it.
UPSTREAM_TIMEOUT = 30.0


class Stage(Enum):
    """
    Where an L{Exchange} stands.

      - C{ASKING} -> C{RELAYING} when the upstream's answer begins;
        C{ASKING} or C{RELAYING} -> C{SILENT} when the upstream has been
        silent too long.
      - C{RELAYING} <-> C{HELD} and C{SILENT} <-> C{SILENT_HELD} as the
        client's connection fills and drains.
      - Any stage -> C{DONE} when the client has its answer or its
        connection was closed; any stage -> C{CLIENT_GONE} when the client
        goes away (or the server stops), which is final.
    """

    #: The request is upstream; its answer has not begun.
    ASKING = "asking"
    #: The answer's body flows to the client, the upstream's silences timed.
    RELAYING = "relaying"
    #: The client's connection is full: the upstream is paused, not timed.
    HELD = "held"
    #: The upstream was silent too long and is being stopped.
    SILENT = "silent"
    #: As C{SILENT}, and the client's connection is full.
    SILENT_HELD = "silent, held"
    #: The client has its answer, or its connection was closed.
    DONE = "done"
    #: The client went away, or the server is stopping.
    CLIENT_GONE = "client gone"


_OVER = frozenset({Stage.DONE, Stage.CLIENT_GONE})
_SILENT = frozenset({Stage.SILENT, Stage.SILENT_HELD})
_HELD = {Stage.RELAYING: Stage.HELD, Stage.SILENT: Stage.SILENT_HELD}
_RELEASED = {held: flowing for flowing, held in _HELD.items()}


@implementer(IPushProducer)
class Exchange:
    """
    One request through the proxy.  It is also the producer registered on the
    client's request, so that a client that reads slowly pauses the upstream.

    @param request: the client's request.
    @param mount: the raw path of the mount, ending in C{/}.
    @param client: sends the request upstream.
    @param upstream: where the answer's locations point.
    @param clock: times the upstream's silences.
    @param in_flight: the exchanges that are not over, this one among them
        from L{start} until it is over.
    """

    def __init__(
        self,
        request: Request,
        mount: bytes,
        *,
        client: UpstreamClient,
        upstream: Upstream,
        clock: IReactorTime,
        in_flight: set[Exchange],
    ) -> None:
        self._request = request
        self._mount = mount
        self._client = client
        self._upstream = upstream
        self._clock = clock
        self._in_flight = in_flight
        self._stage = Stage.ASKING
        self._timer: IDelayedCall | None = None
        self._pending: Deferred[IResponse] | None = None
        self._body: IPushProducer | None = None

    def _uri(self) -> str:
        return bytes(self._request.uri).decode("latin-1")

    # -- from request to answer -----------------------------------------

    def start(
        self, target: bytes, headers: Headers, body: IBodyProducer | None
    ) -> None:
        method = bytes(self._request.method)
        try:
            pending = self._client.send(method, target, headers, body)
        except ValueError:
            self._stage = Stage.DONE
            self._request.write(render_error(self._request, 400))
            self._request.finish()
            return
        self._in_flight.add(self)
        self._request.notifyFinish().addErrback(self._client_went_away)
        self._pending = pending
        self._watch()
        pending.addCallbacks(self._answered, self._failed)

    def _answered(self, response: IResponse) -> None:
        self._pending = None
        self._cancel_timer()
        if self._stage in _OVER:
            discard(response)
            return
        request = self._request
        code = response.code
        if not 200 <= code <= 599:
            log.warn(
                "Upstream answered {uri} with status {code}", uri=self._uri(), code=code
            )
            discard(response)
            self._answer_error(502, "The upstream server answered with nonsense.")
            return
        request.setResponseCode(code, reason_phrase(response.phrase) or None)
        # twisted.web gives a response without Content-Type one of its own.
        request.defaultContentType = None
        for name, values in response_headers(
            self._upstream, response.headers, self._mount
        ).getAllRawHeaders():
            request.responseHeaders.setRawHeaders(name, values)
        if (
            response.length is not UNKNOWN_LENGTH
            and request.method != b"HEAD"
            and code not in NO_BODY_CODES
        ):
            request.setHeader(b"content-length", b"%d" % (response.length,))
        if self._stage is Stage.ASKING:
            self._stage = Stage.RELAYING
        self._watch()
        response.deliverBody(_Relay(self))

    def _failed(self, failure: Failure) -> None:
        self._pending = None
        self._cancel_timer()
        if self._stage in _OVER:
            self._end()
            return
        if self._stage in _SILENT:
            self._answer_error(504)
            return
        log.warn(
            "Proxy request for {uri} failed: {error}",
            uri=self._uri(),
            error=_reasons(failure),
        )
        self._answer_error(502)

    def _answer_error(self, code: int, detail: str | None = None) -> None:
        self._end()
        if self._stage is Stage.CLIENT_GONE:
            return
        self._request.write(render_error(self._request, code, detail))
        self._request.finish()

    # -- the body ---------------------------------------------------------

    def body_started(self, transport: IPushProducer) -> None:
        self._body = transport
        # The channel pauses a producer registered while the client's
        # transport is already full.
        self._request.registerProducer(self, True)

    def body_received(self, data: bytes) -> None:
        if self._stage in _OVER:
            return
        self._watch()
        self._request.write(data)

    def body_ended(self, reason: Failure) -> None:
        self._cancel_timer()
        if self._stage in _OVER:
            return
        fell_silent = self._stage in _SILENT
        self._end()
        request = self._request
        if self._body is not None:
            request.unregisterProducer()
        if reason.check(ResponseDone, PotentialDataLoss):
            request.finish()
            return
        if fell_silent:
            log.warn(
                "Upstream fell silent answering {uri}; closing the connection",
                uri=self._uri(),
            )
        else:
            log.warn(
                "Upstream broke off answering {uri}: {error}",
                uri=self._uri(),
                error=_reasons(reason),
            )
        request.loseConnection()

    # -- IPushProducer, for the client's connection ---------------------

    def pauseProducing(self) -> None:
        self._stage = _HELD.get(self._stage, self._stage)
        self._cancel_timer()
        if self._body is not None:
            self._body.pauseProducing()

    def resumeProducing(self) -> None:
        self._stage = _RELEASED.get(self._stage, self._stage)
        if self._body is not None and self._stage not in _OVER:
            self._body.resumeProducing()
            self._watch()

    def stopProducing(self) -> None:
        self._client_went_away(None)

    # -- giving up ----------------------------------------------------------

    def _client_went_away(self, reason: Failure | None) -> None:
        if self._stage is Stage.CLIENT_GONE:
            return
        upstream_busy = self._stage is not Stage.DONE
        self._stage = Stage.CLIENT_GONE
        if upstream_busy:
            log.info(
                "Proxy request for {uri} cancelled: client went away", uri=self._uri()
            )
        self._stop_upstream(body_flowing=upstream_busy)
        self._end()

    def abandon(self) -> None:
        """
        Stop the upstream's part now (the server is stopping) and close the
        client's connection if it is still open.
        """
        if self._stage is not Stage.CLIENT_GONE:
            self._request.loseConnection()
        self._client_went_away(None)

    def _silent(self) -> None:
        self._timer = None
        self._stage = Stage.SILENT
        log.warn(
            "Upstream silent for {seconds} s answering {uri}",
            seconds=UPSTREAM_TIMEOUT,
            uri=self._uri(),
        )
        self._stop_upstream(body_flowing=True)

    def _stop_upstream(self, body_flowing: bool) -> None:
        self._cancel_timer()
        if self._pending is not None:
            self._pending.cancel()
        elif self._body is not None and body_flowing:
            self._body.stopProducing()

    def _end(self) -> None:
        if self._stage is not Stage.CLIENT_GONE:
            self._stage = Stage.DONE
        self._cancel_timer()
        self._in_flight.discard(self)

    # -- the silence timer ------------------------------------------------

    def _watch(self) -> None:
        self._cancel_timer()
        if self._stage in (Stage.ASKING, Stage.RELAYING, Stage.SILENT):
            self._timer = self._clock.callLater(UPSTREAM_TIMEOUT, self._silent)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            if self._timer.active():
                self._timer.cancel()
            self._timer = None


def _reasons(reason: Failure) -> str:
    inner = getattr(reason.value, "reasons", None)
    failures = inner if inner else [reason]
    return "; ".join(_describe(f) for f in failures)


def _describe(failure: Failure) -> str:
    kind = failure.type.__name__ if failure.type is not None else "error"
    return failure.getErrorMessage() or kind


_DONE = Failure(ResponseDone())


class _Relay(Protocol):
    """
    Passes an upstream body to its L{Exchange} as it arrives.
    """

    def __init__(self, exchange: Exchange) -> None:
        self._exchange = exchange

    def connectionMade(self) -> None:
        assert self.transport is not None
        self._exchange.body_started(self.transport)  # type: ignore[arg-type]

    def dataReceived(self, data: bytes) -> None:
        self._exchange.body_received(data)

    def connectionLost(self, reason: Failure = _DONE) -> None:
        self._exchange.body_ended(reason)
