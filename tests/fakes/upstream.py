"""
Fake upstream servers for the reverse proxy's tests: one that answers by the
last segment of the path and records what it gets, and one that answers a
request head with fixed bytes, however badly they speak HTTP.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Callable
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IPushProducer, ITCPTransport
from twisted.internet.protocol import Protocol
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request
from zope.interface import implementer

__all__ = ["LARGE", "PIECE", "CannedUpstream", "UpstreamServer", "pattern"]

LARGE = 5 * 1024 * 1024
PIECE = 64 * 1024


def pattern(size: int) -> bytes:
    return bytes(range(256)) * (size // 256)


@implementer(IPushProducer)
class _Firehose:
    """
    Writes C{total} bytes to a request as fast as its connection takes them.
    """

    def __init__(self, request: Request, total: int) -> None:
        self.request = request
        self.left = total
        self.sent = 0
        self.paused = False
        self.finished = False

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        while not self.paused and self.left and not self.finished:
            size = min(PIECE, self.left)
            self.left -= size
            self.sent += size
            self.request.write(b"z" * size)
        if not self.left and not self.finished:
            self.finished = True
            self.request.unregisterProducer()
            self.request.finish()

    def stopProducing(self) -> None:
        self.finished = True


class UpstreamServer(Resource):
    """
    The server behind the proxy: answers by the last segment of the path and
    records every request it gets.
    """

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[bytes] = []
        self.arrived: list[Deferred[Request]] = []
        self.gone: list[Deferred[None]] = []
        self.release: Deferred[None] = Deferred()
        self.large_done = False
        self.firehose: _Firehose | None = None
        self.port = 0

    def next_arrival(self) -> Deferred[Request]:
        arrival: Deferred[Request] = Deferred()
        self.arrived.append(arrival)
        return arrival

    def next_gone(self) -> Deferred[None]:
        gone: Deferred[None] = Deferred()
        self.gone.append(gone)
        return gone

    def render(self, request: Request) -> bytes | int:
        self.seen.append(request.uri)
        for arrival in self.arrived:
            arrival.callback(request)
        self.arrived = []

        def went_away(reason: Any) -> None:
            for gone in self.gone:
                gone.callback(None)
            self.gone = []

        request.notifyFinish().addErrback(went_away)
        name = request.path.rsplit(b"/", 1)[-1].decode()
        handler: Callable[[Request], bytes | int] = getattr(
            self, "answer_" + name.replace("-", "_"), self.answer_echo
        )
        return handler(request)

    def answer_echo(self, request: Request) -> bytes:
        request.setHeader(b"content-type", b"application/json")
        assert request.content is not None
        return json.dumps(
            {
                "method": request.method.decode(),
                "uri": request.uri.decode("latin-1"),
                "headers": {
                    name.decode().lower(): [v.decode("latin-1") for v in values]
                    for name, values in request.requestHeaders.getAllRawHeaders()
                },
                "body": request.content.read().decode("latin-1"),
            }
        ).encode()

    def answer_cookie(self, request: Request) -> bytes:
        request.responseHeaders.setRawHeaders(
            b"set-cookie", [b"flavour=oat; Path=/", b"size=big; HttpOnly"]
        )
        return b"cookies set"

    def answer_redirect(self, request: Request) -> bytes:
        request.setResponseCode(302)
        request.setHeader(
            b"location", b"http://127.0.0.1:%d/base/target?x=1" % (self.port,)
        )
        request.setHeader(
            b"content-location", b"http://127.0.0.1:%d/base/here" % (self.port,)
        )
        return b"moved"

    def answer_redirect_path(self, request: Request) -> bytes:
        request.setResponseCode(301)
        request.setHeader(b"location", b"/base/elsewhere/")
        return b"moved"

    def answer_redirect_away(self, request: Request) -> bytes:
        request.setResponseCode(302)
        request.setHeader(b"location", b"http://other.example/base/x")
        return b"moved"

    def answer_gzip(self, request: Request) -> bytes:
        body = gzip.compress(b"hello " * 1000, mtime=0)
        request.setHeader(b"content-encoding", b"gzip")
        request.setHeader(b"content-type", b"text/plain")
        request.setHeader(b"content-length", b"%d" % (len(body),))
        return body

    def answer_hop(self, request: Request) -> bytes:
        headers = request.responseHeaders
        headers.setRawHeaders(b"connection", [b"X-Custom-Hop, Keep-Alive"])
        headers.setRawHeaders(b"x-custom-hop", [b"secret"])
        headers.setRawHeaders(b"keep-alive", [b"timeout=5"])
        headers.setRawHeaders(b"upgrade", [b"h2c"])
        headers.setRawHeaders(b"trailer", [b"X-Checksum"])
        headers.setRawHeaders(b"te", [b"trailers"])
        headers.setRawHeaders(b"proxy-authenticate", [b"Basic realm=up"])
        headers.setRawHeaders(b"proxy-anything", [b"1"])
        headers.setRawHeaders(b"x-end-to-end", [b"kept"])
        return b"hop"

    def answer_404(self, request: Request) -> bytes:
        request.setResponseCode(404)
        return b"upstream has no such thing"

    def answer_500(self, request: Request) -> bytes:
        request.setResponseCode(500)
        return b"upstream broke"

    def answer_299(self, request: Request) -> bytes:
        request.setResponseCode(299, b"Fine Thanks")
        return b"odd"

    def answer_600(self, request: Request) -> bytes:
        request.setResponseCode(600)
        return b"nonsense"

    def answer_injected(self, request: Request) -> bytes:
        request.setResponseCode(200, b"OK\rX-Injected: 1")
        return b"sneaky"

    def answer_not_modified(self, request: Request) -> bytes:
        request.setResponseCode(304)
        request.setHeader(b"etag", b'"v1"')
        return b""

    def answer_stall(self, request: Request) -> int:
        return NOT_DONE_YET

    def answer_stall_body(self, request: Request) -> int:
        request.setHeader(b"content-length", b"1000")
        request.write(b"a" * 100)
        return NOT_DONE_YET

    def answer_reset(self, request: Request) -> int:
        request.setHeader(b"content-length", b"1000")
        request.write(b"r" * 100)
        transport = ITCPTransport(request.channel.transport)
        reactor.callLater(0.05, transport.abortConnection)
        return NOT_DONE_YET

    def answer_large(self, request: Request) -> int:
        body = pattern(LARGE)
        # Bytes, not text: relayed as they are, with their length.
        request.setHeader(b"content-type", b"application/octet-stream")
        request.setHeader(b"content-length", b"%d" % (LARGE,))
        request.write(body[:PIECE])

        def rest(_: object) -> None:
            request.write(body[PIECE:])
            request.finish()
            self.large_done = True

        self.release.addCallback(rest)
        return NOT_DONE_YET

    def answer_firehose(self, request: Request) -> int:
        self.firehose = _Firehose(request, 64 * 1024 * 1024)
        request.registerProducer(self.firehose, True)
        self.firehose.resumeProducing()
        return NOT_DONE_YET


class CannedUpstream(Protocol):
    """
    Answers the first request head with fixed bytes, then closes.
    """

    def __init__(self, answer: bytes) -> None:
        self.answer = answer
        self.received = b""

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        if b"\r\n\r\n" in self.received and self.transport is not None:
            self.transport.write(self.answer)
            self.transport.loseConnection()
