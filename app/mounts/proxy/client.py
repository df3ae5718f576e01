"""
The proxy's side of the upstream connection: a bare Twisted L{Agent} over one
persistent L{HTTPConnectionPool}.

Twisted's L{twisted.web.proxy.ReverseProxyResource} opens a new connection
for every request (and asks for C{Connection: close}); L{Agent.request}
normalises the request target.  Here:

  - Connections to the upstream are kept, L{POOL_SIZE} of them at most.
  - The request target goes exactly as given (an empty query C{?} stays).
  - The upstream's C{Connection} header stays in the response headers, so
    that the headers it names can be dropped.
  - A response head over L{MAX_HEAD_BYTES} or with more than
    L{MAX_HEAD_LINES} header lines fails the request and closes the
    connection, no more of it held than that (Twisted's parser keeps every
    header line it is sent).
  - No cookie jar, no redirect following, no content decoding.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.protocol import Protocol
from twisted.internet.task import Cooperator
from twisted.web.client import URI, Agent, FileBodyProducer, HTTPConnectionPool
from twisted.web.http_headers import Headers
from twisted.web.iweb import IBodyProducer, IRequest, IResponse

from app.compat.twisted import (
    HTTPClientProtocol,
    build_connections_with,
    limit_response_head,
    request_with_target,
    response_parser,
)

__all__ = [
    "MAX_HEAD_BYTES",
    "MAX_HEAD_LINES",
    "POOL_SIZE",
    "UpstreamClient",
    "discard",
]

#: Idle connections kept open to the upstream.
POOL_SIZE = 10

#: The most an upstream's response head may take: bytes (status line and
#: line ends included) and header lines.
MAX_HEAD_BYTES = 64 * 1024
MAX_HEAD_LINES = 100


class _ClientProtocol(HTTPClientProtocol):
    """
    Twisted's HTTP/1.1 client, with the response head bounded, handing back
    the upstream's C{Connection} header: Agent files it under the parser's
    connection headers and leaves it out of C{Response.headers}, so the
    headers it names (which a proxy must drop) could not be known.
    """

    def request(self, request: Any) -> Deferred[IResponse]:
        answer = super().request(request)
        parser = response_parser(self)
        if parser is None:
            return answer
        limit_response_head(parser, MAX_HEAD_BYTES, MAX_HEAD_LINES)

        def restore_connection_header(response: IResponse) -> IResponse:
            # connHeaders is read now, not earlier: a 1xx answer replaces it.
            for value in parser.connHeaders.getRawHeaders(b"connection", []):
                response.headers.addRawHeader(b"connection", value)
            return response

        return answer.addCallback(restore_connection_header)


class UpstreamClient:
    """
    Sends requests to one upstream origin over kept connections.

    @param url_prefix: C{scheme://netloc} of the upstream.
    @param reactor: makes the outgoing connections and feeds request bodies.
    """

    def __init__(self, url_prefix: bytes, reactor: Any) -> None:
        self._pool = HTTPConnectionPool(reactor, persistent=True)
        self._pool.maxPersistentPerHost = POOL_SIZE
        build_connections_with(self._pool, _ClientProtocol)
        self._agent = Agent(reactor, pool=self._pool)
        self._origin = URI.fromBytes(url_prefix + b"/")
        self._cooperator = Cooperator(
            scheduler=lambda work: reactor.callLater(0, work), started=True
        )

    def send(
        self,
        method: bytes,
        target: bytes,
        headers: Headers,
        body: IBodyProducer | None,
    ) -> Deferred[IResponse]:
        """
        Send C{method} for C{target}, as given, to the upstream.

        @raise ValueError: when Twisted refuses the method, target or headers.
        """
        return request_with_target(
            self._agent, method, self._origin, target, headers, body
        )

    def body(self, request: IRequest) -> IBodyProducer | None:
        """
        The body of the client's C{request}, to go upstream; C{None} when it
        has none.
        """
        incoming: Headers = request.requestHeaders
        has_body = incoming.hasHeader(b"content-length") or incoming.hasHeader(
            b"transfer-encoding"
        )
        if not has_body or request.content is None:
            return None
        # The body is already here, bounded by --max-body.
        producer: IBodyProducer = FileBodyProducer(
            request.content, cooperator=self._cooperator
        )
        return producer

    def close(self) -> Deferred[None]:
        """
        Stop feeding request bodies and close the idle connections.
        """
        self._cooperator.stop()
        closed: Deferred[None] = self._pool.closeCachedConnections()
        return closed


class _Discard(Protocol):
    """
    Drops a body nobody will read, closing its connection.
    """

    def connectionMade(self) -> None:
        if self.transport is not None:
            self.transport.stopProducing()  # type: ignore[attr-defined]


def discard(response: IResponse) -> None:
    """
    Drop C{response}'s body unread, closing its connection.
    """
    response.deliverBody(_Discard())
