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
    restarts its timer on every byte, so a slow sender is never closed), and
    a response the client stops reading is cut off after the idle timeout
    (twisted.web keeps no timer while it writes one).
  - A C{Transfer-Encoding} other than chunked, or raw bytes 0x7F and above
    in the request target, are 400: both pass twisted.web's own checks.
  - The site knows its open connections, so it can stop gracefully.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from time import time
from typing import Any
from urllib.parse import unquote_to_bytes

from twisted.application.service import MultiService
from twisted.internet.defer import Deferred, gatherResults, maybeDeferred
from twisted.internet.interfaces import (
    IAddress,
    IDelayedCall,
    IListeningPort,
    IReactorTime,
)
from twisted.logger import Logger
from twisted.protocols import basic
from twisted.python.failure import Failure
from twisted.web import http, server
from twisted.web.http_headers import Headers
from twisted.web.iweb import INonQueuedRequestFactory
from twisted.web.resource import IResource

from app._pages import HTML_TYPE, error_page, reason
from app._sessions import Session, SessionStore, SessionSweep, new_uid, request_session

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
    _cookies: dict[bytes, bytes]
    _cookies_parsed = False

    def __init__(self, channel: http.HTTPChannel, *args: Any, **kwargs: Any) -> None:
        super().__init__(channel, *args, **kwargs)
        self._cookies_parsed = False

    # twisted.web parses the Cookie headers of every request as its head
    # arrives; here they are parsed when received_cookies is first read.

    @property
    def received_cookies(self) -> dict[bytes, bytes]:
        if not self._cookies_parsed:
            self._cookies_parsed = True
            server.Request.parseCookies(self)
        return self._cookies

    @received_cookies.setter
    def received_cookies(self, cookies: dict[bytes, bytes]) -> None:
        self._cookies = cookies
        self._cookies_parsed = True

    def parseCookies(self) -> None:
        pass

    def handleContentChunk(self, data: bytes) -> None:
        channel = self.channel
        if channel.refused:
            return
        self._body_length += len(data)
        if self._body_length > channel.site.max_body:
            channel.refuse(413)
            return
        super().handleContentChunk(data)

    def process(self) -> None:
        # twisted.web's, less the Server and Date headers it sets here only
        # for them to be replaced: the channel writes the server's own
        # (Channel.writeHeaders).  The root resource is the router, never an
        # encoding resource, so there is no encoder to look for either.
        site = self.site = self.channel.site
        path = self.path
        if path == b"*":
            super().process()
            return
        segments = path[1:].split(b"/")
        self.prepath = []
        self.postpath = (
            [unquote_to_bytes(segment) for segment in segments]
            if b"%" in path
            else segments
        )
        try:
            self.render(site.getResourceFor(self))
        except BaseException:
            self.processingFailed(Failure())

    def getSession(
        self, sessionInterface: Any = None, forceNotSecure: bool = False
    ) -> Any:
        # twisted.web's touches a session found by its cookie only on the
        # second lookup within a request, and its cookie lacks HttpOnly and
        # SameSite: see app._sessions.
        return request_session(self, sessionInterface, forceNotSecure)


@dataclass(frozen=True)
class Refusal:
    """
    A request the channel answered itself, for the access log: what had
    arrived of it (C{None} where nothing had) and the answer.
    """

    client: IAddress
    request_line: bytes | None
    headers: Headers | None
    code: int
    length: int


class Channel(http.HTTPChannel):
    """
    An HTTP/1.1 connection with the limits described in this module.
    """

    site: Site
    MAX_LENGTH = MAX_HEADER_BYTES
    totalHeadersSize = MAX_HEADER_BYTES
    maxHeaders = MAX_HEADER_COUNT

    refused = False
    #: The request line of the request being received, for the access log.
    _request_line: bytes | None = None
    #: When the request head being received must be complete.
    _head_deadline: float | None = None
    _stall_timer: IDelayedCall | None = None
    _drain_timer: IDelayedCall | None = None
    _drained = 0
    #: Set while twisted.web hands a request over (see setTimeout).
    _keep_idle_timer = False
    #: What the guard of /private/ remembers of this connection's last
    #: login (auth._guard), so that a client repeating its Authorization
    #: header on the same connection is not checked again each time.
    remembered_login: Any = None
    _peer: IAddress | None = None
    #: twisted.web's own: whether the next line is a request line (1, or
    #: 2 once a stray blank line before it was skipped).
    _HTTPChannel__first_line: int
    _secure: bool | None = None
    _host: IAddress | None = None

    def connectionMade(self) -> None:
        super().connectionMade()
        self.site.channels.add(self)

    def isSecure(self) -> bool:
        # twisted.web asks zope.interface about the transport on every call;
        # a connection does not change from plain to TLS or back.
        secure = self._secure
        if secure is None:
            secure = self._secure = bool(super().isSecure())
        return secure

    def getPeer(self) -> IAddress:
        # Asked for by every request (twisted.web makes a new address object
        # each time); a connection's two ends never change.
        peer = self._peer
        if peer is None:
            peer = self._peer = super().getPeer()
        return peer

    def getHost(self) -> IAddress:
        host = self._host
        if host is None:
            host = self._host = super().getHost()
        return host

    def connectionLost(self, reason: Failure) -> None:  # type: ignore[override]
        self._cancel_stall_timer()
        if self._drain_timer is not None and self._drain_timer.active():
            self._drain_timer.cancel()
        super().connectionLost(reason)
        self.site.channel_closed(self)

    # -- reading ----------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        if self.refused:
            self._drain(data)
            return
        deadline = self._head_deadline
        if deadline is not None and self.site.reactor.seconds() >= deadline:
            # twisted.web restarts its idle timer on every byte, so a head
            # sent a byte at a time would never time out.  (A client that
            # stops sending altogether meets the idle timer instead.)
            self.refuse(408)
            return
        if deadline is None and data[-4:] == b"\r\n\r\n" and self._whole_head(data):
            return
        super().dataReceived(data)
        if (
            deadline is None
            and self.line_mode
            and (self._buffer or not self._HTTPChannel__first_line)
            and self.timeOut
            and not self.refused
        ):
            # A request head has begun and did not arrive whole: it must
            # be complete within the idle timeout from now.  (A head that
            # arrives whole, the usual case, costs no clock reading.)
            self._head_deadline = self.site.reactor.seconds() + self.timeOut

    def _whole_head(self, data: bytes) -> bool:
        """
        Take C{data} as a request if it is one whole head without a body and
        with nothing after it, which a client between requests usually sends:
        the request line and headers are parsed in one pass, with
        twisted.web's rules.  Anything else, or anything these rules refuse,
        is left untouched (C{False}) for twisted.web's line-by-line parser,
        which answers it as it always does.
        """
        if (
            not self.line_mode
            or self._buffer
            or self._busyReceiving
            or self.requests
            or not self.persistent
            or self._HTTPChannel__first_line != 1
            or len(data) > self.totalHeadersSize
            or data.find(b"\r\n\r\n") != len(data) - 4
        ):
            return False
        lines = data[:-4].split(b"\r\n")
        request_line = lines[0]
        parts = request_line.split(b" ")
        if (
            len(parts) != 3
            or len(request_line) > MAX_REQUEST_LINE
            or len(lines) > self.maxHeaders
            or _NOT_PRINTABLE.search(request_line) is not None
            or _TOKEN.fullmatch(parts[0]) is None
            or not parts[1]
            or parts[2] not in _VERSIONS
        ):
            return False
        headers = Headers()
        for line in lines[1:]:
            name, colon, value = line.partition(b":")
            value = value.strip(b" \t")
            if (
                not colon
                or name.lower() in _BODY_HEADERS
                or len(value.translate(None, b"\x00\r\n")) != len(value)
            ):
                return False
            try:
                headers.addRawHeader(name, value)
            except ValueError:  # InvalidHeaderName: not a token
                return False

        # As twisted.web's lineReceived, headerReceived, allHeadersReceived
        # and LineReceiver.dataReceived would leave things.
        self.resetTimeout()
        factory = self.requestFactory
        if INonQueuedRequestFactory.providedBy(factory):
            request = factory(self)
        else:
            request = factory(self, len(self.requests))
        request.requestHeaders = headers
        self.requests.append(request)
        self._HTTPChannel__first_line = 0
        self._command, self._path, self._version = parts
        self._request_line = request_line
        self._receivedHeaderCount = len(lines) - 1
        self._receivedHeaderSize = len(data) - 2 * len(lines) - 2
        self._busyReceiving = True
        try:
            self.allHeadersReceived()
            if not self.refused:
                self.allContentReceived()
        finally:
            self._busyReceiving = False
        if self._buffer and not self.refused:
            # What arrived while the request was handled (twisted.web hands
            # it back through dataReceived when it is done).
            basic.LineReceiver.dataReceived(self, b"")
        return True

    def rawDataReceived(self, data: bytes) -> None:
        if self.refused:
            self._drain(data)
            return
        super().rawDataReceived(data)

    def lineReceived(self, line: bytes) -> None:
        if self.refused:
            return
        if line and self._HTTPChannel__first_line:
            # The request line.
            if len(line) > MAX_REQUEST_LINE:
                self._request_line = None
                self.refuse(414)
                return
            self._request_line = line
            if _NOT_PRINTABLE.search(line) is not None:
                # twisted.web lets bytes 0x7F and above through in the target.
                self.refuse(400)
                return
        super().lineReceived(line)

    def lineLengthExceeded(self, line: bytes) -> None:
        first_line = self._HTTPChannel__first_line
        if first_line:
            self._request_line = None
        self.refuse(414 if first_line else 431)

    def allHeadersReceived(self) -> None:
        self._head_deadline = None
        if self.length is not None and self.length > self.site.max_body:
            # twisted.web would now send "100 Continue" by itself: refuse first.
            self.refuse(413)
            return
        super().allHeadersReceived()

    def _maybeChooseTransferDecoder(self, header: bytes, data: bytes) -> bool:
        if header == b"Transfer-Encoding" and data.lower() != b"chunked":
            # twisted.web takes "identity" as no encoding and frames the body
            # by Content-Length; a proxy in front may not: a smuggling risk.
            self.refuse(400)
            return False
        return bool(super()._maybeChooseTransferDecoder(header, data))

    def allContentReceived(self) -> None:
        if self.refused:
            return
        self._request_line = None
        self._keep_idle_timer = True
        try:
            super().allContentReceived()
        finally:
            self._keep_idle_timer = False

    def _respondToBadRequestAndDisconnect(self) -> None:
        # twisted.web's answer to everything it finds wrong with a head; the
        # limits on its size and number of lines have their own codes.
        if self._receivedHeaderSize > self.totalHeadersSize:
            self.refuse(414 if self._HTTPChannel__first_line else 431)
        elif self._receivedHeaderCount > self.maxHeaders:
            self.refuse(431)
        else:
            self.refuse(400)

    # -- the idle timer ---------------------------------------------------

    def setTimeout(self, period: float | None) -> float | None:
        if period is None and self._keep_idle_timer:
            # twisted.web switches the idle timer off while it handles a
            # request and makes a new one afterwards: two timer operations
            # per request.  Keep the timer instead; it is only pushed back
            # when the request is done, and ignored should it run out before.
            self._keep_idle_timer = False
            previous, self.timeOut = self.timeOut, None
            return previous
        return super().setTimeout(period)  # type: ignore[no-any-return]

    def timeoutConnection(self) -> None:
        if self.timeOut is None:
            # The kept timer ran out while a request was being handled.
            return
        super().timeoutConnection()

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
        self._head_deadline = None
        self.persistent = False
        self.setTimeout(None)
        # Whatever else has arrived is drained, not parsed.
        self.setRawMode()
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
            (b"Date", http_date()),
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
        self.site.log_refusal(self._refusal(code, len(body)))
        half_close = getattr(transport, "loseWriteConnection", None)
        if half_close is None:
            transport.loseConnection()
            return
        half_close()
        self._drain_timer = self.callLater(DRAIN_SECONDS, transport.loseConnection)

    def _refusal(self, code: int, length: int) -> Refusal:
        assert self.transport is not None
        # twisted.web clears __first_line once it has made the request object
        # for the request line; before that it has no headers to show.
        started = not self._HTTPChannel__first_line
        return Refusal(
            client=self.transport.getPeer(),
            request_line=self._request_line,
            headers=self.requests[-1].requestHeaders
            if started and self._request_line is not None and self.requests
            else None,
            code=code,
            length=length,
        )

    def _drain(self, data: bytes) -> None:
        self._drained += len(data)
        if self._drained > DRAIN_BYTES and self.transport is not None:
            self.transport.abortConnection()  # type: ignore[attr-defined]

    # -- writing ----------------------------------------------------------

    def writeHeaders(
        self, version: bytes, code: bytes, reason: bytes, headers: Any
    ) -> None:
        if self.site.stopping:
            self.persistent = False
            headers.setRawHeaders(b"Connection", [b"close"])
        if not isinstance(headers, Headers):
            super().writeHeaders(version, code, reason, headers)
            return
        # As twisted.web writes them, with ours set over whatever a CGI
        # script, WSGI app or upstream sent, written once per response; the
        # Date is the response's own where it has one.  (Headers keeps names
        # in one canonical spelling.)
        sequence = [b"%s %s %s\r\n" % (version, code, reason)]
        dated = False
        for name, values in headers.getAllRawHeaders():
            if name in _OWN_HEADERS:
                continue
            if name == b"Date":
                dated = True
            for value in values:
                sequence.append(name + b": " + value + b"\r\n")
        if not dated:
            sequence.insert(1, b"Date: " + http_date() + b"\r\n")
        sequence.append(_OWN_HEADER_LINES)
        if self.transport is not None:
            self.transport.writeSequence(sequence)

    def pauseProducing(self) -> None:
        # The transport's buffer is full: the client is not reading.
        # twisted.web keeps its idle timer off while a response is written,
        # so a client that never reads would hold the connection forever.
        super().pauseProducing()
        idle_timeout = self.site.timeOut  # self.timeOut is None mid-request
        if self._stall_timer is None and idle_timeout:
            self._stall_timer = self.callLater(idle_timeout, self._client_not_reading)

    def resumeProducing(self) -> None:
        super().resumeProducing()
        self._cancel_stall_timer()

    def _cancel_stall_timer(self) -> None:
        if self._stall_timer is not None:
            if self._stall_timer.active():
                self._stall_timer.cancel()
            self._stall_timer = None

    def _client_not_reading(self) -> None:
        self._stall_timer = None
        if self.transport is not None:
            log.info(
                "Closing connection from {peer}: the response went unread",
                peer=_peer(self.transport),
            )
            self.transport.abortConnection()  # type: ignore[attr-defined]

    def shutdown(self) -> None:
        """
        Close now if idle; otherwise let the request in flight finish and close.
        """
        self.persistent = False
        if not self.requests and self.transport is not None:
            self.transport.loseConnection()


#: The headers every answer carries, whatever produced it.
_OWN_HEADERS = frozenset({b"Server", b"X-Content-Type-Options"})
_OWN_HEADER_LINES = (
    b"Server: " + SERVER_NAME + b"\r\nX-Content-Type-Options: nosniff\r\n\r\n"
)


class _HTTPDate:
    """
    The current time as an HTTP date, formatted once a second.
    """

    second = -1
    text = b""

    def __call__(self) -> bytes:
        now = int(time())
        if now != self.second:
            self.second, self.text = now, http.datetimeToString(now)
        return self.text


http_date = _HTTPDate()

#: Anything but printable ASCII and spaces in a request line.
_NOT_PRINTABLE = re.compile(rb"[^\x20-\x7e]")
#: A method: an RFC 9110 token.
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_VERSIONS = frozenset({b"HTTP/1.1", b"HTTP/1.0"})
#: Headers that frame a body or ask for 100 Continue: a head that has any
#: is left to twisted.web's parser.
_BODY_HEADERS = frozenset({b"content-length", b"transfer-encoding", b"expect"})


def request_uri(request: server.Request) -> str:
    """
    The request target as sent, for log messages.
    """
    return bytes(request.uri).decode("latin-1")


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
    # No "Starting factory <…Site object at 0x…>" lines: the server logs its
    # own "listening on" line instead.
    noisy = False

    def __init__(
        self,
        resource: IResource,
        *,
        reactor: IReactorTime,
        max_body: int,
        idle_timeout: float,
        display_tracebacks: bool = False,
        session_timeout: float = 900.0,
        max_sessions: int = 100_000,
    ) -> None:
        super().__init__(resource, timeout=idle_timeout, reactor=reactor)
        self.max_body = max_body
        self.displayTracebacks = display_tracebacks
        self.channels: set[Channel] = set()
        self.stopping = False
        #: Started by whoever starts the server, stopped after the last request.
        self.service = MultiService()
        #: The live sessions, least recently used first.
        self.sessions: SessionStore = SessionStore(  # type: ignore[assignment]
            reactor, session_timeout, max_sessions
        )
        SessionSweep(self.sessions).setServiceParent(self.service)
        #: Called with every finished request (the access log), when set.
        self.access_log: Callable[[server.Request], None] | None = None
        #: Called with every request the channel refuses itself, when set.
        self.refusal_log: Callable[[Refusal], None] | None = None
        self._all_closed: list[Deferred[None]] = []

    sessionFactory = Session

    def _mkuid(self) -> bytes:
        return new_uid()

    def makeSession(self) -> Session:
        # As twisted.web's, without the timer per session: the store sweeps.
        uid = self._mkuid()
        session = self.sessions[uid] = self.sessionFactory(self, uid)
        return session

    def getSession(self, uid: bytes) -> Session:
        return self.sessions[uid]

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

    def log_refusal(self, refusal: Refusal) -> None:
        if self.refusal_log is not None:
            self.refusal_log(refusal)

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
