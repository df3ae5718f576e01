"""
The HTTP layer: a Site, channel and request that keep twisted.web's API and
add what a public server needs.

  - Every response names the server without a version and carries
    C{X-Content-Type-Options: nosniff}.
  - A body larger than C{max_body} is answered 413 as soon as its length is
    known (before twisted.web would send C{100 Continue}) or, for a chunked
    body, as soon as it grows past the limit; the rest is read and discarded
    for a short while so the client gets to read the answer.
  - A request line past the limit gets 414, a header block past it 431, a
    malformed request 400: each a real response before the close, where
    twisted.web drops the connection or sends a bare status line.
  - A request head must arrive whole within the idle timeout (twisted.web
    restarts its timer on every byte, so a slow sender is never closed).
  - The site knows its open connections, so it can stop gracefully.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from twisted.application.service import MultiService
from twisted.internet.defer import Deferred, gatherResults, maybeDeferred
from twisted.internet.interfaces import IDelayedCall, IListeningPort, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import http, server
from twisted.web.resource import IResource

from app._pages import HTML_TYPE, error_page, reason

SERVER_NAME = b"app"

#: Longest request line accepted (Apache's LimitRequestLine).
MAX_REQUEST_LINE = 8190
#: Largest header block accepted, request line included.
MAX_HEADER_BYTES = 16384
#: Most header lines accepted (Apache's LimitRequestFields).
MAX_HEADER_COUNT = 100
#: How long, and how many bytes, a refused request's body is read and dropped.
DRAIN_SECONDS = 2.0
DRAIN_BYTES = 16 * 1024 * 1024

log = Logger()


class Request(server.Request):
    """
    A request whose chunked body is bounded by the site's C{max_body}.
    """

    channel: Channel
    site: Site
    defaultContentType = HTML_TYPE
    #: The user name that HTTP authentication accepted, for the access log.
    remote_user: str | None = None
    _body_length = 0

    def handleContentChunk(self, data: bytes) -> None:
        channel = self.channel
        if channel.refused:
            return
        self._body_length += len(data)
        if self._body_length > channel.site.max_body:
            channel.refuse(413)
            return
        super().handleContentChunk(data)


class Channel(http.HTTPChannel):
    """
    An HTTP/1.1 connection with the limits described in this module.
    """

    site: Site
    MAX_LENGTH = MAX_HEADER_BYTES
    totalHeadersSize = MAX_HEADER_BYTES
    maxHeaders = MAX_HEADER_COUNT

    refused = False
    _head_timer: IDelayedCall | None = None
    _drain_timer: IDelayedCall | None = None
    _drained = 0

    def connectionMade(self) -> None:
        super().connectionMade()
        self.site.channels.add(self)

    def connectionLost(self, reason: Failure) -> None:  # type: ignore[override]
        self._cancel_head_timer()
        if self._drain_timer is not None and self._drain_timer.active():
            self._drain_timer.cancel()
        super().connectionLost(reason)
        self.site.channel_closed(self)

    # -- reading ----------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        if self.refused:
            self._drain(data)
            return
        super().dataReceived(data)

    def rawDataReceived(self, data: bytes) -> None:
        if self.refused:
            self._drain(data)
            return
        super().rawDataReceived(data)

    def lineReceived(self, line: bytes) -> None:
        if self.refused:
            return
        first_line = self._HTTPChannel__first_line  # type: ignore[attr-defined]
        if first_line and line:
            if len(line) > MAX_REQUEST_LINE:
                self.refuse(414)
                return
            if self._head_timer is None and self.timeOut:
                self._head_timer = self.callLater(self.timeOut, self._head_too_slow)
        if self._receivedHeaderSize + len(line) > self.totalHeadersSize:
            self.refuse(414 if first_line else 431)
            return
        super().lineReceived(line)

    def lineLengthExceeded(self, line: bytes) -> None:
        first_line = self._HTTPChannel__first_line  # type: ignore[attr-defined]
        self.refuse(414 if first_line else 431)

    def headerReceived(self, line: bytes) -> bool:
        if self._receivedHeaderCount >= self.maxHeaders:
            self.refuse(431)
            return False
        return bool(super().headerReceived(line))

    def allHeadersReceived(self) -> None:
        self._cancel_head_timer()
        if self.length is not None and self.length > self.site.max_body:
            # twisted.web would now send "100 Continue" by itself: refuse first.
            self.refuse(413)
            return
        super().allHeadersReceived()

    def allContentReceived(self) -> None:
        if self.refused:
            return
        super().allContentReceived()

    def _respondToBadRequestAndDisconnect(self) -> None:
        self.refuse(400)

    def _head_too_slow(self) -> None:
        self._head_timer = None
        self.refuse(408)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            if self._head_timer.active():
                self._head_timer.cancel()
            self._head_timer = None

    # -- refusing ---------------------------------------------------------

    def refuse(self, code: int) -> None:
        """
        Answer C{code} with the site's error page and close the connection,
        reading and discarding what the client still sends for a short while
        so that it reads the answer instead of a reset.
        """
        if self.refused:
            return
        self.refused = True
        self._cancel_head_timer()
        self.persistent = False
        self.setTimeout(None)
        transport = self.transport
        if transport is None:
            return
        if self._handlingRequest or (self.requests and self.requests[0].startedWriting):
            # A response is already under way on this connection: no second one.
            transport.loseConnection()
            return
        body = error_page(code)
        head = b"HTTP/1.1 %d %s\r\n" % (code, reason(code).encode("ascii"))
        headers = [
            (b"Server", SERVER_NAME),
            (b"Date", http.datetimeToString()),
            (b"Content-Type", HTML_TYPE),
            (b"Content-Length", b"%d" % (len(body),)),
            (b"X-Content-Type-Options", b"nosniff"),
            (b"Connection", b"close"),
        ]
        transport.writeSequence(
            [
                head,
                *(name + b": " + value + b"\r\n" for name, value in headers),
                b"\r\n",
                body,
            ]
        )
        log.info(
            "Refused request from {peer}: {code} {reason}",
            peer=_peer(transport),
            code=code,
            reason=reason(code),
        )
        half_close = getattr(transport, "loseWriteConnection", None)
        if half_close is None:
            transport.loseConnection()
            return
        half_close()
        self._drain_timer = self.callLater(DRAIN_SECONDS, transport.loseConnection)

    def _drain(self, data: bytes) -> None:
        self._drained += len(data)
        if self._drained > DRAIN_BYTES and self.transport is not None:
            self.transport.abortConnection()  # type: ignore[attr-defined]

    # -- writing ----------------------------------------------------------

    def writeHeaders(
        self, version: bytes, code: bytes, reason: bytes, headers: Any
    ) -> None:
        headers.setRawHeaders(b"Server", [SERVER_NAME])
        if not headers.hasHeader(b"X-Content-Type-Options"):
            headers.setRawHeaders(b"X-Content-Type-Options", [b"nosniff"])
        if self.site.stopping:
            self.persistent = False
            headers.setRawHeaders(b"Connection", [b"close"])
        super().writeHeaders(version, code, reason, headers)

    def shutdown(self) -> None:
        """
        Close now if idle; otherwise let the request in flight finish and close.
        """
        self.persistent = False
        if not self.requests and self.transport is not None:
            self.transport.loseConnection()


def _peer(transport: Any) -> str:
    peer = transport.getPeer()
    host = getattr(peer, "host", None)
    return f"{host}:{peer.port}" if host is not None else str(peer)


class Site(server.Site):
    """
    The server's Site: twisted.web's, with the channel above, an optional
    access log, the services its mounts run, and a graceful stop.
    """

    requestFactory = Request
    displayTracebacks = False

    def __init__(
        self,
        resource: IResource,
        *,
        reactor: IReactorTime,
        max_body: int,
        idle_timeout: float,
        display_tracebacks: bool = False,
    ) -> None:
        super().__init__(resource, timeout=idle_timeout, reactor=reactor)
        self.max_body = max_body
        self.displayTracebacks = display_tracebacks
        self.channels: set[Channel] = set()
        self.stopping = False
        #: Started by whoever starts the server, stopped after the last request.
        self.service = MultiService()
        #: Called with every finished request (the access log), when set.
        self.access_log: Callable[[server.Request], None] | None = None
        self._all_closed: list[Deferred[None]] = []

    def buildProtocol(self, addr: Any) -> Channel:  # type: ignore[override]
        channel = Channel()
        channel.factory = self
        channel.site = self
        channel.requestFactory = self.requestFactory
        # Timeouts run on this site's clock, as HTTPFactory.buildProtocol does.
        channel.callLater = self.reactor.callLater  # type: ignore[method-assign, assignment]
        channel.timeOut = self.timeOut  # type: ignore[assignment]
        return channel

    def startFactory(self) -> None:
        # HTTPFactory starts a once-a-second timer for its own log and opens
        # twisted's legacy log as the access log; we keep neither.
        pass

    def stopFactory(self) -> None:
        pass

    def log(self, request: server.Request) -> None:  # type: ignore[override]
        if self.access_log is not None:
            self.access_log(request)

    def channel_closed(self, channel: Channel) -> None:
        self.channels.discard(channel)
        if not self.channels:
            waiting, self._all_closed = self._all_closed, []
            for waiter in waiting:
                waiter.callback(None)

    def shutdown(
        self, ports: Iterable[IListeningPort], grace: float = 10.0
    ) -> Deferred[None]:
        """
        Stop listening, close idle connections, let requests in flight finish
        with C{Connection: close} for up to C{grace} seconds, abort what is
        left, then stop the site's services.
        """
        self.stopping = True

        async def stop() -> None:
            await gatherResults([maybeDeferred(port.stopListening) for port in ports])
            for channel in list(self.channels):
                channel.shutdown()
            if self.channels:
                closed: Deferred[None] = Deferred()
                self._all_closed.append(closed)
                closed.addTimeout(grace, self.reactor)
                try:
                    await closed
                except Exception:
                    for channel in list(self.channels):
                        if channel.transport is not None:
                            channel.transport.abortConnection()  # type: ignore[attr-defined]
            if self.service.running:
                await maybeDeferred(self.service.stopService)

        return Deferred.fromCoroutine(stop())
