"""
The HTTP layer: the server's own HTTP/1.1 channel on llhttp, and the Site and
Request that keep twisted.web's API above it.

twisted.web's C{HTTPChannel} parses requests line by line in Python, lets
folded header lines, requests without C{Host} and odd transfer codings
through, parses every form body before routing, and keeps answering
pipelined requests into memory for a client that reads nothing.  This
channel hands the bytes to llhttp (through C{httptools}) and adds:

  - RFC 9112's rules, each a 400 page and a close: C{Host} missing (in
    HTTP/1.1), repeated or malformed; folded lines, control characters,
    whitespace before a colon, C{Content-Length} beside
    C{Transfer-Encoding}, two lengths, bad chunks.  A transfer coding other
    than chunked is 501, as is C{CONNECT} and a method llhttp does not know.
  - Absolute-form targets served as their path, their authority standing in
    for C{Host}; C{OPTIONS *} answered here; HTTP/1.0 keep-alive.
  - Back-pressure: while a response is being produced, or while the
    transport holds more than 64 KiB of unsent output, nothing more is
    parsed and at most L{READ_AHEAD} bytes are read ahead (so a client that
    hangs up is still noticed); then the connection is not read at all.
  - The limits of the site: 414 for a long request line, 431 for a large or
    long header block, 413 for a body past C{max_body} (before
    C{100 Continue}, and before reading it), each a page before the close,
    after which what the client still sends is read and dropped for a short
    while so that it gets to read the answer.
  - Timers: a request head must arrive whole within the idle timeout of its
    first byte (408); a body must keep arriving (408); a connection idle
    between requests is closed; a response the client stops reading is cut
    off after the idle timeout.
  - Form bodies are parsed when a handler first reads C{request.args}, by a
    linear parser (L{app._forms}), never before routing.
"""

from __future__ import annotations

import io
import re
import tempfile
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from time import time
from typing import IO, Any
from urllib.parse import unquote_to_bytes

from httptools import (
    HttpParserCallbackError,
    HttpParserError,
    HttpParserInvalidMethodError,
    HttpParserUpgrade,
    HttpRequestParser,
)
from twisted.application.service import MultiService
from twisted.internet._producer_helpers import _PullToPush
from twisted.internet.defer import Deferred, gatherResults, maybeDeferred
from twisted.internet.interfaces import (
    IAddress,
    IDelayedCall,
    IListeningPort,
    IPushProducer,
    IReactorTime,
    ISSLTransport,
    ITCPTransport,
)
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import http, server
from twisted.web.http_headers import Headers
from twisted.web.resource import IResource
from werkzeug.exceptions import BadRequest, HTTPException, RequestEntityTooLarge
from zope.interface import implementer

from app._forms import FormError, form_fields
from app._pages import HTML_TYPE, error_page, reason
from app._sessions import Session, SessionStore, SessionSweep, new_uid, request_session
from app._twisted_internals import sender

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
#: Bytes read but not parsed while a response is produced, before the
#: connection is no longer read.
READ_AHEAD = 64 * 1024
#: A body of known length up to this size is kept in memory.
MEMORY_BODY = 100_000
#: What C{OPTIONS *} answers the server takes.
ALLOWED_METHODS = b"GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"

log = Logger()


class Request(server.Request):
    """
    twisted.web's request, made by L{Channel}: form bodies are parsed when
    C{args} is first read, cookies when C{received_cookies} is.
    """

    channel: Channel  # type: ignore[assignment]
    site: Site
    defaultContentType = HTML_TYPE
    #: The user name that HTTP authentication accepted, for the access log.
    remote_user: str | None = None
    _cookies: dict[bytes, bytes]
    _cookies_parsed = False
    _args: dict[bytes, list[bytes]]
    #: The Content-Type of a form body not parsed yet.
    _form_type: bytes | None = None

    def __init__(self, channel: Channel, *args: Any, **kwargs: Any) -> None:
        # What twisted.web's http.Request and server.Request constructors
        # set, in one step: one is made for every request.  (A test compares
        # the two, should a Twisted release set more.)
        self.notifications: list[Deferred[None]] = []
        self.channel = channel
        self.client = channel.getPeer()
        self.host = channel.getHost()
        self.requestHeaders = Headers()
        self._cookies = {}
        self._cookies_parsed = False
        self.responseHeaders = Headers()
        self.cookies: list[bytes] = []
        self.transport = channel.transport
        self.queued = False
        self._parsePOSTFormSubmission = False
        self._adapterCache: dict[str, Any] = {}
        self._args = {}

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

    # twisted.web parses a form body into args before the request is even
    # routed, with the email package's parser; here it is parsed, by a
    # linear parser, when a handler first asks for args.

    @property
    def args(self) -> dict[bytes, list[bytes]]:
        form_type = self._form_type
        if form_type is not None:
            self._form_type = None
            content = self.content
            assert content is not None
            try:
                fields = form_fields(form_type, content)
            except FormError as error:
                self._args = {}
                if error.code == 413:
                    raise RequestEntityTooLarge(str(error)) from None
                raise BadRequest(str(error)) from None
            # As in twisted.web, a field replaces a query argument of its name.
            self._args.update(fields)
        return self._args

    @args.setter
    def args(self, value: dict[bytes, list[bytes]]) -> None:
        self._form_type = None
        self._args = value

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        # As twisted.web's, less the form parsing (see args).
        self.method, self.uri, self.clientproto = command, path, version
        path, question, query = path.partition(b"?")
        self.path = path
        self._args = http.parse_qs(query, 1) if question else {}
        if command == b"POST":
            content_type = self.requestHeaders.getRawHeaders(b"content-type")
            if content_type and _FORM_TYPE.match(content_type[0]):
                self._form_type = content_type[0]
        self.process()

    def process(self) -> None:
        # twisted.web's, less the Server and Date headers it sets here only
        # for them to be replaced: the channel writes the server's own
        # (Channel.writeHeaders).  The root resource is the router, never an
        # encoding resource, so there is no encoder to look for either.
        site = self.site = self.channel.site
        path = self.path
        if path == b"*":
            # OPTIONS * (the channel refuses any other method with *).
            self.setHeader(b"allow", ALLOWED_METHODS)
            self.setHeader(b"content-length", b"0")
            self.write(b"")
            self.finish()
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

    def processingFailed(self, reason: Failure) -> Failure:
        # A malformed form body found by a resource that is not a route.
        error = reason.value
        if isinstance(error, HTTPException) and error.code is not None:
            if not self.startedWriting:
                body = error_page(error.code)
                self.setResponseCode(error.code)
                self.setHeader(b"content-type", HTML_TYPE)
                self.setHeader(b"content-length", b"%d" % (len(body),))
                self.write(body)
                self.finish()
                return reason
        return super().processingFailed(reason)  # type: ignore[no-any-return]

    def getSession(
        self, sessionInterface: Any = None, forceNotSecure: bool = False
    ) -> Any:
        # twisted.web's touches a session found by its cookie only on the
        # second lookup within a request, and its cookie lacks HttpOnly and
        # SameSite: see app._sessions.
        return request_session(self, sessionInterface, forceNotSecure)


#: Media types whose bodies become form fields.
_FORM_TYPE = re.compile(
    rb"\s*(application/x-www-form-urlencoded|multipart/form-data)\s*(;|$)", re.I
)


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


class _Refuse(Exception):
    """
    Raised inside the parser's callbacks: answer C{code} and close.
    """

    def __init__(self, code: int, detail: str | None = None) -> None:
        super().__init__(code)
        self.code = code
        self.detail = detail


class _Message:
    """
    One request as it is parsed: its head, and its body as it arrives.
    """

    __slots__ = (
        "began",
        "body_length",
        "body_seen",
        "chunks",
        "content",
        "continue_wanted",
        "framing",
        "head_bytes",
        "headers",
        "headers_done",
        "keep_alive",
        "method",
        "raw",
        "upgrade_body",
        "url",
        "version",
    )

    def __init__(self, first_chunk: bytes | None, began: int) -> None:
        #: Which of the connection's reads the head began in.
        self.began = began
        self.url = b""
        self.method = b""
        self.version = b""
        #: Each header line's name and value, as they arrive.
        self.raw: list[tuple[bytes, bytes]] = []
        #: The values of each header, by its name in canonical spelling,
        #: once the head is whole.
        self.headers: dict[bytes, list[bytes]] = {}
        self.head_bytes = 0
        self.headers_done = False
        self.keep_alive = True
        self.content: IO[bytes] | None = None
        self.body_length = 0
        #: Whether body bytes arrived in the data being parsed, and how many
        #: bytes arrived since any did.
        self.body_seen = False
        self.framing = 0
        self.continue_wanted = False
        #: The body's length where llhttp skips it (see Channel._upgraded).
        self.upgrade_body: int | None = None
        #: The data the head arrived in, from the head's first byte when
        #: that is known (for the access log of a refused request).
        self.chunks: list[bytes] | None = None if first_chunk is None else [first_chunk]

    def request_line(self) -> bytes | None:
        """
        The request line as sent, where it arrived whole.
        """
        if self.chunks is not None:
            head = b"".join(self.chunks).lstrip(b"\r\n")
            line, newline, _ = head.partition(b"\n")
            if newline and len(line) <= MAX_REQUEST_LINE + 1:
                return line.removesuffix(b"\r")
            return None
        if self.version:
            return b"%s %s HTTP/%s" % (self.method, self.url, self.version)
        return None

    def header_object(self) -> Headers:
        if self.headers_done:
            return headers_of(self.headers)
        headers = Headers()
        for name, value in self.raw:
            headers.addRawHeader(name, value.rstrip(b" \t"))
        return headers


@implementer(IPushProducer)
class Channel(Protocol):
    """
    An HTTP/1.1 server connection, as described in this module.
    """

    def __init__(self, site: Site) -> None:
        self.site = site
        #: twisted.web's requests log themselves through their channel's factory.
        self.factory = site
        self.requestFactory: Callable[[Channel], Request] = site.requestFactory
        self._clock = site.reactor
        self.timeOut: float | None = site.timeOut
        #: The request whose response is being produced (one at most).
        self.requests: list[Request] = []
        #: Requests parsed whole, waiting their turn.
        self._queue: deque[_Message] = deque()
        #: The request being parsed.
        self._message: _Message | None = None
        self._parser = HttpRequestParser(self)
        #: Data read while a response is produced, parsed once it is done.
        self._unparsed: list[bytes] = []
        self._unparsed_size = 0
        #: The data being parsed, how many reads were parsed, and whether a
        #: request ended earlier in the data being parsed.
        self._chunk = b""
        self._reads = 0
        self._ended_in_chunk = False
        #: Bytes of a head that arrived after the read it began in.
        self._head_overflow = 0
        #: Whether the connection stays open after the response under way.
        self.persistent = True
        #: Nothing more is parsed: a request said it is the last, or one
        #: was refused.
        self._no_more = False
        self.refused = False
        #: A refusal to send once the answers before it are written.
        self._refusal_due: tuple[int, str | None, Refusal] | None = None
        self._closed = False
        #: Closing: nothing more is started.
        self._closing = False
        self._reading = True
        self._write_blocked = False
        self._producer: IPushProducer | None = None
        self._producer_streaming = True
        # Timers: one delayed call, pushed back lazily to self._deadline.
        self._timer: IDelayedCall | None = None
        self._deadline: float | None = None
        self._deadline_action: Callable[[], None] | None = None
        self._drain_timer: IDelayedCall | None = None
        self._drained = 0
        #: What the guard of /private/ remembers of this connection's last
        #: login (auth._guard), so that a client repeating its Authorization
        #: header on the same connection is not checked again each time.
        self.remembered_login: Any = None
        self._peer: IAddress | None = None
        self._host: IAddress | None = None
        self._secure: bool | None = None

    # -- the connection -------------------------------------------------------

    def connectionMade(self) -> None:
        # A TCP, UNIX or TLS transport: a producer's consumer too.
        transport: Any = self.transport
        if ITCPTransport.providedBy(transport):
            transport.setTcpNoDelay(True)
        transport.registerProducer(self, True)
        self._registered = True
        self._write = sender(transport)
        self.site.channels.add(self)
        self._idle()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._closed = self._closing = True
        self._cancel_timers()
        for request in self.requests:
            request.connectionLost(reason)
        for message in self._queue:
            if message.content is not None:
                message.content.close()
        self._queue.clear()
        self.site.channel_closed(self)

    def isSecure(self) -> bool:
        # A connection does not change from plain to TLS or back.
        secure = self._secure
        if secure is None:
            secure = self._secure = ISSLTransport.providedBy(self.transport)
        return secure

    def getPeer(self) -> IAddress:
        peer = self._peer
        if peer is None:
            assert self.transport is not None
            peer = self._peer = self.transport.getPeer()
        return peer

    def getHost(self) -> IAddress:
        host = self._host
        if host is None:
            assert self.transport is not None
            host = self._host = self.transport.getHost()
        return host

    def loseConnection(self) -> None:
        self.persistent = False
        self._closing = self._no_more = True
        transport: Any = self.transport
        if transport is not None:
            self._flush()
            self._unregister()
            transport.loseConnection()

    def shutdown(self) -> None:
        """
        Close now if no response is under way; otherwise let it finish and
        close.
        """
        self.persistent = False
        self._no_more = True
        if not self.requests and self.transport is not None:
            self.loseConnection()

    # -- reading --------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        if self.refused or self._refusal_due is not None:
            self._drain(data)
            return
        if self.requests or self._unparsed or self._queue:
            # A response is under way (or waits for the client to read the
            # ones before): nothing more is parsed until it is done, and
            # little more is read.
            self._unparsed.append(data)
            self._unparsed_size += len(data)
            if self._unparsed_size > READ_AHEAD:
                self._pause_reading()
            return
        self._parse(data)
        self._next()

    def _parse(self, data: bytes) -> None:
        while data and not self._no_more:
            self._chunk = data
            self._reads += 1
            self._ended_in_chunk = False
            try:
                self._parser.feed_data(data)
            except HttpParserUpgrade as upgrade:
                # What follows the head of a request asking to upgrade.
                data = data[upgrade.args[0] :]
                self._upgraded()
                continue
            except HttpParserError as error:
                self._parse_failed(error)
                return
            message = self._message
            if message is None:
                return
            if not message.headers_done:
                self._head_incomplete(message, data)
                return
            if message.body_seen:
                message.body_seen = False
                message.framing = 0
            else:
                # llhttp holds an unfinished trailer line where no callback
                # sees it yet, and skips chunk extensions: bounded too.
                message.framing += len(data)
                if message.framing > MAX_HEADER_BYTES:
                    self.refuse(431)
                    return
            if self.timeOut:
                # A body must keep arriving.
                self._set_deadline(self._clock.seconds() + self.timeOut, self._too_slow)
            return

    def _head_incomplete(self, message: _Message, data: bytes) -> None:
        """
        A head began and did not arrive whole: it must within the idle
        timeout of its first byte, and within the limits of its size.
        """
        if message.began == self._reads:
            if self.timeOut:
                self._set_deadline(self._clock.seconds() + self.timeOut, self._too_slow)
            return
        if message.chunks is not None:
            message.chunks.append(data)
        # llhttp holds an unfinished line where no callback sees it yet.
        self._head_overflow += len(data)
        if self._head_overflow > MAX_HEADER_BYTES:
            # A header line that never ends (a request line that never
            # ends is 414 in on_url).
            self.refuse(431)

    def _parse_failed(self, error: HttpParserError) -> None:
        cause = error.__context__
        if isinstance(error, HttpParserCallbackError) and isinstance(cause, _Refuse):
            self.refuse(cause.code, cause.detail)
        elif isinstance(error, HttpParserInvalidMethodError) and _looks_like_a_method(
            self._message
        ):
            self.refuse(501)
        else:
            self.refuse(400)

    def _upgraded(self) -> None:
        """
        llhttp stopped after the head of a request that asks to switch
        protocols, which this server never does: parse on as HTTP/1.1.
        """
        message = self._message
        if message is not None and message.upgrade_body is not None:
            # llhttp skipped the body: a fresh parser reads it, framed by a
            # head made up for it.
            length, message.upgrade_body = message.upgrade_body, None
            self._parser = HttpRequestParser(self)
            self._parser.feed_data(
                b"PUT / HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % (length,)
            )
            # The made-up head made a message of its own: the body is ours.
            self._message = message
            if self.timeOut:
                self._set_deadline(self._clock.seconds() + self.timeOut, self._too_slow)

    # -- llhttp's callbacks ---------------------------------------------------

    def on_message_begin(self) -> None:
        self._message = _Message(
            None if self._ended_in_chunk else self._chunk, self._reads
        )
        self._head_overflow = 0

    def on_url(self, piece: bytes) -> None:
        message = self._message
        assert message is not None
        url = message.url = message.url + piece
        if len(url) > MAX_REQUEST_LINE - 30:
            method = self._parser.get_method()
            if len(method) + len(url) + 10 > MAX_REQUEST_LINE:
                raise _Refuse(414)

    def on_header(self, name: bytes, value: bytes) -> None:
        message = self._message
        assert message is not None
        raw = message.raw
        raw.append((name, value))
        if len(raw) > MAX_HEADER_COUNT:
            raise _Refuse(431)

    def on_headers_complete(self) -> None:
        message = self._message
        assert message is not None
        parser = self._parser
        message.method = method = parser.get_method()
        message.version = version = parser.get_http_version().encode("ascii")
        headers = message.headers
        size = len(message.url)
        for name, value in message.raw:
            size += len(name) + len(value) + 4
            name = _CANONICAL.get(name) or canonical_name(name)
            values = headers.get(name)
            if values is None:
                headers[name] = [value.rstrip(b" \t")]
            else:
                values.append(value.rstrip(b" \t"))
        message.headers_done = True
        # Trailer fields of a chunked body go on to be counted, and dropped.
        message.raw = []
        message.head_bytes = size
        if size > MAX_HEADER_BYTES:
            raise _Refuse(431)
        if version != b"1.1" and version != b"1.0":
            raise _Refuse(505)
        if method == b"CONNECT":
            raise _Refuse(501, "This server is not a proxy for tunnels.")
        hosts = headers.get(b"Host")
        host = hosts[0] if hosts else None
        connection = _tokens(headers[b"Connection"]) if b"Connection" in headers else ()
        lengths = headers.get(b"Content-Length")
        length = int(lengths[0]) if lengths else None
        codings = (
            _tokens(headers[b"Transfer-Encoding"])
            if b"Transfer-Encoding" in headers
            else ()
        )
        expect = headers.get(b"Expect")
        upgrade = b"Upgrade" in headers
        if hosts is not None and len(hosts) > 1:
            raise _Refuse(400)
        if hosts is None and version == b"1.1":
            raise _Refuse(400)
        if message.url[:1] != b"/":
            host = self._other_form(message, host)
        if host is not None and _HOST.fullmatch(host) is None:
            raise _Refuse(400)
        if codings:
            if any(coding != b"chunked" for coding in codings):
                raise _Refuse(501, "This server does not know that transfer coding.")
            if len(codings) > 1:
                raise _Refuse(400)
        if length is not None and length > self.site.max_body:
            raise _Refuse(413)
        if version == b"1.1":
            message.keep_alive = b"close" not in connection
        else:
            message.keep_alive = (
                b"keep-alive" in connection and b"close" not in connection
            )
        if upgrade and b"upgrade" in connection and (length or codings):
            # llhttp skips the body of a request that asks to upgrade, and
            # would take it for the next request (see _upgraded).
            if codings:
                raise _Refuse(400)
            message.upgrade_body = length
        if length is None and not codings:
            message.content = io.BytesIO()
            return
        message.content = (
            io.BytesIO()
            if length is not None and length <= MEMORY_BODY
            else tempfile.SpooledTemporaryFile(MEMORY_BODY)
        )
        if (
            expect is not None
            and expect[0].lower() == b"100-continue"
            and version == b"1.1"
            and length != 0
        ):
            if self.requests or self._queue:
                message.continue_wanted = True
            else:
                self._continue(message)

    def _other_form(self, message: _Message, host: bytes | None) -> bytes | None:
        """
        Take an absolute-form or asterisk-form target; return the C{Host}
        the request stands for (RFC 9112 §3.2.2).
        """
        url = message.url
        if url == b"*":
            if message.method != b"OPTIONS":
                raise _Refuse(400)
            return host
        found = _ABSOLUTE.fullmatch(url)
        if found is None:
            raise _Refuse(400)
        authority, path = found.group(1), found.group(2) or b"/"
        message.url = path if path[:1] == b"/" else b"/" + path
        message.headers[b"Host"] = [authority]
        return authority

    def on_body(self, piece: bytes) -> None:
        message = self._message
        assert message is not None and message.content is not None
        length = message.body_length = message.body_length + len(piece)
        if length > self.site.max_body:
            raise _Refuse(413)
        message.content.write(piece)
        message.body_seen = True

    def on_message_complete(self) -> None:
        message = self._message
        assert message is not None
        if message.upgrade_body is not None:
            # Its body is still to come (see _upgraded).
            return
        if message.raw:
            trailers = sum(len(name) + len(value) + 4 for name, value in message.raw)
            if message.head_bytes + trailers > MAX_HEADER_BYTES:
                raise _Refuse(431)
        self._message = None
        self._ended_in_chunk = True
        if self._no_more:
            # Parsed in the same read as a request that closes the connection.
            return
        self._queue.append(message)
        if not message.keep_alive:
            self._no_more = True

    def _continue(self, message: _Message) -> None:
        message.continue_wanted = False
        self._send([b"HTTP/1.1 100 Continue\r\n\r\n"])

    # -- dispatching ----------------------------------------------------------

    def _next(self) -> None:
        """
        Start the next request, or parse what waits, or go idle.  (A request
        answered at once calls this again from within: the loop goes on.)
        """
        if self._in_next:
            return
        self._in_next = True
        self._out = []
        try:
            self._next_request()
        finally:
            self._in_next = False
            self._flush()

    _in_next = False

    def _next_request(self) -> None:
        while (
            not self.requests
            and not self._closing
            and not self.refused
            and not self._write_blocked
        ):
            if self._queue:
                self._dispatch(self._queue.popleft())
                if self._queue:
                    # Pipelined: the transport says when it holds enough.
                    self._hand_over()
                continue
            if self._refusal_due is not None:
                self._send_refusal(*self._refusal_due)
                return
            if self._unparsed:
                data = b"".join(self._unparsed)
                self._unparsed = []
                self._unparsed_size = 0
                self._parse(data)
                continue
            message = self._message
            if message is not None and message.continue_wanted:
                self._continue(message)
            if not self.persistent:
                self.loseConnection()
                return
            if not self._reading:
                self._resume_reading()
            return

    def _dispatch(self, message: _Message) -> None:
        request = self.requestFactory(self)
        request.requestHeaders = message.header_object()
        content = request.content = message.content
        if content is not None:
            content.seek(0)
        self.requests.append(request)
        self._set_deadline(None, None)
        self.persistent = message.keep_alive and not self.site.stopping
        request.requestReceived(message.method, message.url, b"HTTP/" + message.version)

    def requestDone(self, request: Request) -> None:
        """
        Called by a request once its response is finished.
        """
        self.requests.remove(request)
        if self._closed:
            return
        if not self.persistent:
            self.loseConnection()
            return
        self._idle()
        self._next()

    # -- writing --------------------------------------------------------------

    def writeHeaders(
        self, version: bytes, code: bytes, reason: bytes, headers: Headers
    ) -> None:
        # As twisted.web writes them, with ours set over whatever a CGI
        # script, WSGI app or upstream sent, written once per response; the
        # Date is the response's own where it has one.  (Headers keeps names
        # in one canonical spelling.)
        sequence = [b"%s %s %s\r\n" % (version, code, reason)]
        dated = framed = False
        for name, values in headers.getAllRawHeaders():
            if name in _OWN_HEADERS:
                if name == b"Connection" and b"close" in _tokens(list(values)):
                    self.persistent = False
                continue
            if name == b"Date":
                dated = True
            elif name == b"Content-Length":
                framed = True
            for value in values:
                sequence.append(name + b": " + value + b"\r\n")
        if not dated:
            sequence.insert(1, b"Date: " + http_date() + b"\r\n")
        if self.site.stopping:
            self.persistent = False
        if version == b"HTTP/1.0" and self.persistent:
            # An HTTP/1.0 client that asked to keep the connection: kept
            # where the response says where it ends.
            if (
                framed
                or code in _NO_BODY_CODES
                or (self.requests and self.requests[0].method == b"HEAD")
            ):
                sequence.append(b"Connection: keep-alive\r\n")
            else:
                self.persistent = False
        if not self.persistent:
            sequence.append(b"Connection: close\r\n")
        sequence.append(_OWN_HEADER_LINES)
        self._send(sequence)

    def write(self, data: bytes) -> None:
        self._send([data])

    def writeSequence(self, data: Iterable[bytes]) -> None:
        self._send(list(data))

    def _send(self, data: list[bytes]) -> None:
        """
        Write C{data}; while requests are answered at once, gather what they
        write and hand it to the transport in one go (L{_next}).
        """
        out = self._out
        if out is None:
            if self.transport is not None:
                self._write(data[0] if len(data) == 1 else b"".join(data))
            return
        out.extend(data)
        size = self._out_size = self._out_size + sum(map(len, data))
        if size > READ_AHEAD:
            # A large answer: the transport must get to say it holds enough.
            self._hand_over()

    #: Writes to the transport (see app._twisted_internals).
    _write: Callable[[bytes], None]

    #: What the answers given at once have written so far, and its size.
    _out: list[bytes] | None = None
    _out_size = 0

    def _flush(self) -> None:
        out, self._out = self._out, None
        self._out_size = 0
        if out and self.transport is not None:
            self._write(b"".join(out))

    def _hand_over(self) -> None:
        """
        Hand what was gathered so far to the transport, and gather on.
        """
        out = self._out
        if out and self.transport is not None:
            self._out = []
            self._out_size = 0
            self._write(b"".join(out))

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        if self._producer is not None:
            raise RuntimeError(
                f"Cannot register producer {producer!r}: "
                f"{self._producer!r} was never unregistered."
            )
        if not streaming:
            producer = _PullToPush(producer, self)
        self._producer = producer
        self._producer_streaming = streaming
        if not streaming:
            producer.startStreaming()
        elif self._write_blocked:
            # The transport is full already: the producer waits for it.
            producer.pauseProducing()

    def unregisterProducer(self) -> None:
        producer = self._producer
        if producer is None:
            return
        if not self._producer_streaming:
            producer.stopStreaming()  # type: ignore[attr-defined]
        self._producer = None

    @property
    def write_blocked(self) -> bool:
        """
        Whether the transport holds more output than it wants to.
        """
        return self._write_blocked

    # The transport's producer interface: it pauses this channel when its
    # buffer is full (the client is not reading).

    def pauseProducing(self) -> None:
        self._write_blocked = True
        if self._producer is not None:
            self._producer.pauseProducing()
        self._pause_reading()
        if self.timeOut:
            self._set_deadline(
                self._clock.seconds() + self.timeOut, self._client_not_reading
            )

    def resumeProducing(self) -> None:
        self._write_blocked = False
        if self._deadline_action == self._client_not_reading:
            if self.requests:
                self._set_deadline(None, None)
            else:
                self._idle()
        if self._producer is not None:
            self._producer.resumeProducing()
        if not self.requests and not self.refused:
            # Answer what waits, then read on.
            self._next()

    def stopProducing(self) -> None:
        if self._producer is not None:
            self._producer.stopProducing()

    def _unregister(self) -> None:
        """
        No longer the transport's producer (as it closes).
        """
        if self._registered:
            self._registered = False
            transport: Any = self.transport
            transport.unregisterProducer()

    _registered = False

    def _pause_reading(self) -> None:
        if self._reading and self.transport is not None:
            self._reading = False
            self.transport.pauseProducing()  # type: ignore[attr-defined]

    def _resume_reading(self) -> None:
        if not self._reading and self.transport is not None and not self._closed:
            self._reading = True
            self.transport.resumeProducing()  # type: ignore[attr-defined]

    # -- timers ---------------------------------------------------------------

    @property
    def waiting_for(self) -> str | None:
        """
        What the connection's timer waits for: C{"request"} (the next one,
        idle between requests), C{"rest"} (of a request begun), C{"reader"}
        (a client to read its response), or C{None}.
        """
        action = self._deadline_action
        if action is None:
            return None
        return {
            self._timed_out: "request",
            self._too_slow: "rest",
            self._client_not_reading: "reader",
        }[action]

    def _idle(self) -> None:
        """
        Between requests: closed after the idle timeout (or, while the
        client does not read what it was sent, as L{_client_not_reading}).
        """
        if self.timeOut and not self._write_blocked:
            self._set_deadline(self._clock.seconds() + self.timeOut, self._timed_out)

    def _set_deadline(
        self, deadline: float | None, action: Callable[[], None] | None
    ) -> None:
        self._deadline = deadline
        self._deadline_action = action
        if deadline is None:
            return
        timer = self._timer
        if timer is None:
            self._timer = self._clock.callLater(
                deadline - self._clock.seconds(), self._timer_ran
            )
        elif timer.getTime() > deadline:
            timer.reset(deadline - self._clock.seconds())

    def _timer_ran(self) -> None:
        self._timer = None
        deadline, action = self._deadline, self._deadline_action
        if deadline is None or action is None or self._closed:
            return
        now = self._clock.seconds()
        if now < deadline:
            self._timer = self._clock.callLater(deadline - now, self._timer_ran)
            return
        self._deadline = self._deadline_action = None
        action()

    def _cancel_timers(self) -> None:
        for timer in (self._timer, self._drain_timer):
            if timer is not None and timer.active():
                timer.cancel()
        self._timer = self._drain_timer = None
        self._deadline = self._deadline_action = None

    def _timed_out(self) -> None:
        if self.transport is None:
            return
        if self._message is not None:
            self._too_slow()
            return
        # Idle: close, and abort should the client not take what is unsent.
        self.loseConnection()
        self._drain_timer = self._clock.callLater(DRAIN_SECONDS, self._abort)

    def _too_slow(self) -> None:
        self.refuse(408)

    def _client_not_reading(self) -> None:
        if self.transport is not None:
            log.info(
                "Closing connection from {peer}: the response went unread",
                peer=_peer(self.transport),
            )
            self._abort()

    def _abort(self) -> None:
        self._drain_timer = None
        if self.transport is not None and not self._closed:
            self.transport.abortConnection()  # type: ignore[attr-defined]

    # -- refusing -------------------------------------------------------------

    def refuse(self, code: int, detail: str | None = None) -> None:
        """
        Answer C{code} with the site's error page and close the connection,
        reading and discarding what the client still sends for a short while
        so that it reads the answer instead of a reset.  Answers still due
        to earlier requests on this connection are written first.
        """
        if self.refused or self._refusal_due is not None:
            return
        self._no_more = True
        self._unparsed = []
        self._set_deadline(None, None)
        message = self._message
        if message is not None and message.raw and not message.version:
            # The request line is whole: llhttp still holds its parts.
            message.method = self._parser.get_method()
            message.version = self._parser.get_http_version().encode("ascii")
        request_line = None if message is None else message.request_line()
        refusal = Refusal(
            client=self.getPeer(),
            request_line=request_line,
            headers=None
            if message is None or request_line is None
            else message.header_object(),
            code=code,
            length=0,
        )
        if self.requests or self._queue:
            self._refusal_due = (code, detail, refusal)
        else:
            self._send_refusal(code, detail, refusal)

    def _send_refusal(self, code: int, detail: str | None, refusal: Refusal) -> None:
        self._refusal_due = None
        self.refused = True
        self.persistent = False
        transport: Any = self.transport
        if transport is None or self._closed:
            return
        self._resume_reading()
        body = error_page(code, detail)
        head = b"HTTP/1.1 %d %s\r\n" % (code, reason(code).encode("ascii"))
        headers = [
            (b"Server", SERVER_NAME),
            (b"Date", http_date()),
            (b"Content-Type", HTML_TYPE),
            (b"Content-Length", b"%d" % (len(body),)),
            (b"X-Content-Type-Options", b"nosniff"),
            (b"Connection", b"close"),
        ]
        self._send(
            [
                head,
                *(name + b": " + value + b"\r\n" for name, value in headers),
                b"\r\n",
                body,
            ]
        )
        self._flush()
        log.info(
            "Refused request from {peer}: {code} {reason}",
            peer=_peer(transport),
            code=code,
            reason=reason(code),
        )
        self.site.log_refusal(replace(refusal, length=len(body)))
        self._unregister()
        half_close = getattr(transport, "loseWriteConnection", None)
        if half_close is None:
            transport.loseConnection()
            return
        half_close()
        self._drain_timer = self._clock.callLater(DRAIN_SECONDS, self._abort)

    def _drain(self, data: bytes) -> None:
        self._drained += len(data)
        if self._drained > DRAIN_BYTES:
            self._abort()


#: The headers every answer carries, whatever produced it.
_OWN_HEADERS = frozenset({b"Server", b"X-Content-Type-Options", b"Connection"})
_OWN_HEADER_LINES = (
    b"Server: " + SERVER_NAME + b"\r\nX-Content-Type-Options: nosniff\r\n\r\n"
)
_NO_BODY_CODES = frozenset({b"204", b"304"})

#: RFC 9112 §3.2: host [ ":" port ], the host a reg-name, IPv4 or IP literal.
_HOST = re.compile(rb"(?:\[[0-9A-Za-z:.]+\]|[A-Za-z0-9\-._~%!$&'()*+,;=]*)(?::[0-9]*)?")
#: An absolute-form target: http or https, an authority with no user, a path.
_ABSOLUTE = re.compile(rb"(?i:https?)://([^/?#@]+)([/?][^#]*)?")
#: A request line whose method is a token llhttp does not know.
_METHOD_START = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+ ")


def _tokens(values: list[bytes]) -> list[bytes]:
    """
    The comma-separated tokens of a header's values, lower-cased.
    """
    return [
        token.strip(b" \t").lower() for value in values for token in value.split(b",")
    ]


#: Header names as sent, and as twisted.web's Headers spells them.
_CANONICAL: dict[bytes, bytes] = {}
_CANONICAL_MAX = 1000


def canonical_name(name: bytes) -> bytes:
    """
    C{name} as L{Headers} spells it, remembered for the next time (up to a
    bound, so that a client sending made-up names costs no memory).
    """
    spelled = next(iter(Headers({name: [b""]}).getAllRawHeaders()))[0]
    if len(_CANONICAL) < _CANONICAL_MAX:
        _CANONICAL[name] = spelled
    return spelled


def headers_of(raw: dict[bytes, list[bytes]]) -> Headers:
    """
    A L{Headers} holding C{raw}, whose names are spelled canonically and
    whose values llhttp has checked: none holds a line break.
    """
    headers = Headers()
    # Headers() would canonicalise and clean each name and value again.
    headers._rawHeaders = raw
    return headers


def _looks_like_a_method(message: _Message | None) -> bool:
    if message is None or message.chunks is None:
        return False
    return _METHOD_START.match(message.chunks[0].lstrip(b"\r\n")) is not None


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
        return Channel(self)

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
