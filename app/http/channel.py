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
    linear parser (L{app.http.forms}), never before routing.
"""

from __future__ import annotations

import io
import re
import tempfile
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from time import time
from typing import IO, TYPE_CHECKING, Any

from httptools import (
    HttpParserCallbackError,
    HttpParserError,
    HttpParserInvalidMethodError,
    HttpParserUpgrade,
    HttpRequestParser,
)
from twisted.internet.interfaces import (
    IAddress,
    IDelayedCall,
    IPushProducer,
    ISSLTransport,
    ITCPTransport,
)
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import http
from twisted.web.http_headers import Headers
from zope.interface import implementer

from app.compat.twisted import headers_of, pull_to_push, sender
from app.http.forwarding import forwarding
from app.http.limits import (
    DRAIN_BYTES,
    DRAIN_SECONDS,
    MAX_HEADER_BYTES,
    MAX_HEADER_COUNT,
    MAX_REQUEST_LINE,
    MEMORY_BODY,
    MIN_BODY_RATE,
    READ_AHEAD,
    SERVER_NAME,
)
from app.http.pages import HTML_TYPE, error_page, reason

if TYPE_CHECKING:
    from app.http.request import Request
    from app.http.site import Site

log = Logger()


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
        "body_started",
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
        #: When the body began to arrive (None: not yet).
        self.body_started: float | None = None
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

    #: Whether the peer is a trusted proxy (C{--trusted-proxy}), whose
    #: forwarding headers name the client.
    forwarded = False

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
        site = self.site
        trusted = site.trusted_proxies
        if trusted is not None and trusted.trusts(self.getPeer()):
            self.forwarded = True
            self.requestFactory = site.forwardedRequestFactory
        site.channel_opened(self)
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
            self.flush()
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
            if message.body_started is None:
                # The head ended in this read: the body's clock starts.
                message.body_started = self._clock.seconds()
            elif message.body_seen:
                message.framing = 0
            else:
                # llhttp holds an unfinished trailer line where no callback
                # sees it yet, and skips chunk extensions: bounded too.
                message.framing += len(data)
                if message.framing > MAX_HEADER_BYTES:
                    self.refuse(431)
                    return
            message.body_seen = False
            if self.timeOut:
                # A body must keep arriving: the idle timeout, and a second
                # more for every MIN_BODY_RATE bytes (Apache's MinRate).
                self._set_deadline(
                    message.body_started
                    + self.timeOut
                    + message.body_length / MIN_BODY_RATE,
                    self._too_slow,
                )
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
        if self._out is None:
            self._out = []
        try:
            self._next_request()
        finally:
            self._in_next = False
            self.flush()

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

    #: Writes to the transport (see app.compat.twisted).
    _write: Callable[[bytes], None]

    #: What the answers given at once have written so far, and its size.
    _out: list[bytes] | None = None
    _out_size = 0

    def gather(self) -> bool:
        """
        Gather what is written from now on, to hand it to the transport in
        one go at L{flush} (an answer released later, as answers given at
        once are gathered); C{False} when writes are gathered already.
        """
        if self._out is not None:
            return False
        self._out = []
        return True

    def flush(self) -> None:
        """
        Hand what was gathered to the transport.
        """
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
            producer = pull_to_push(producer, self)
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
        headers = (
            None if message is None or request_line is None else message.header_object()
        )
        client = self.getPeer()
        trusted = self.site.trusted_proxies
        if self.forwarded and headers is not None and trusted is not None:
            client = forwarding(headers, client, self.isSecure(), trusted).client
        refusal = Refusal(
            client=client,
            request_line=request_line,
            headers=headers,
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
        response = closing_response(code, detail)
        body_length = len(response) - response.index(b"\r\n\r\n") - 4
        self._send([response])
        self.flush()
        log.info(
            "Refused request from {peer}: {code} {reason}",
            peer=_peer(transport),
            code=code,
            reason=reason(code),
        )
        self.site.log_refusal(replace(refusal, length=body_length))
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


def closing_response(
    code: int, detail: str | None = None, retry_after: int | None = None
) -> bytes:
    """
    A whole response with the server's page for C{code}, that closes the
    connection: what the channel answers by itself.
    """
    body = error_page(code, detail)
    headers = [
        (b"Server", SERVER_NAME),
        (b"Date", http_date()),
        (b"Content-Type", HTML_TYPE),
        (b"Content-Length", b"%d" % (len(body),)),
        (b"X-Content-Type-Options", b"nosniff"),
        (b"Cache-Control", b"no-store"),
        (b"Connection", b"close"),
    ]
    if retry_after is not None:
        headers.append((b"Retry-After", b"%d" % (retry_after,)))
    return b"".join(
        [
            b"HTTP/1.1 %d %s\r\n" % (code, reason(code).encode("ascii")),
            *(name + b": " + value + b"\r\n" for name, value in headers),
            b"\r\n",
            body,
        ]
    )


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


def _peer(transport: Any) -> str:
    peer = transport.getPeer()
    host = getattr(peer, "host", None)
    return f"{host}:{peer.port}" if host is not None else str(peer)
