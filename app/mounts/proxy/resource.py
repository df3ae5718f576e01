"""
The C{/proxy/} resource and the service that stops it.

Twisted's L{twisted.web.proxy.ReverseProxyResource} builds a child resource
for every path segment and joins them back; this one is a leaf that reads the
raw path once, refuses what must not go upstream (C{CONNECT}, a target that
is not visible ASCII, a C{.} or C{..} segment) and hands the rest to one
L{Exchange} per request.
"""

from __future__ import annotations

from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.web.http_headers import Headers
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource
from twisted.web.server import NOT_DONE_YET, Request
from zope.interface import implementer

from app.http.pages import render_error
from app.mounts.proxy.client import UpstreamClient
from app.mounts.proxy.exchange import Exchange
from app.mounts.proxy.policy import (
    Upstream,
    dot_segment,
    request_headers,
    valid_target,
)

__all__ = ["ProxyService", "ReverseProxy"]


@implementer(IResource)
class ReverseProxy:
    """
    The C{/proxy/} resource: each request is one L{Exchange} with the
    upstream.

    @param reactor: makes the outgoing connections and feeds request bodies.
    @param clock: times the upstream's silences.
    """

    isLeaf = True

    def __init__(self, upstream: Upstream, reactor: Any, clock: IReactorTime) -> None:
        self.upstream = upstream
        self.clock = clock
        self.client = UpstreamClient(upstream.url_prefix, reactor)
        self.exchanges: set[Exchange] = set()

    # -- IResource --------------------------------------------------------

    def getChildWithDefault(self, name: bytes, request: IRequest) -> IResource:
        return self

    def putChild(self, path: bytes, child: IResource) -> None:
        raise NotImplementedError("the proxy has no children")

    def render(self, request: IRequest) -> bytes | int:
        if request.method == b"CONNECT":
            return render_error(request, 501)
        segments = bytes(request.path).split(b"/")
        depth = 1 + len(request.prepath or [])
        mount = b"/".join(segments[:depth]) + b"/"
        rest = b"/".join(segments[depth:])
        uri = bytes(request.uri)
        query = uri.partition(b"?")[2] if b"?" in uri else None
        if not valid_target(rest, query):
            return render_error(request, 400, "The request target is not valid.")
        if dot_segment(rest):
            return render_error(request, 404)
        assert isinstance(request, Request)
        exchange = Exchange(
            request,
            mount,
            client=self.client,
            upstream=self.upstream,
            clock=self.clock,
            in_flight=self.exchanges,
        )
        exchange.start(
            self.upstream.target(rest, query),
            self.request_headers(request),
            self.client.body(request),
        )
        return NOT_DONE_YET

    def request_headers(self, request: IRequest) -> Headers:
        """
        The headers of C{request} that go upstream (see L{request_headers}).
        """
        return request_headers(request)

    # -- stopping ---------------------------------------------------------

    def stop(self) -> Deferred[None]:
        """
        Abandon every exchange in flight and close the idle connections.
        """
        for exchange in list(self.exchanges):
            exchange.abandon()
        return self.client.close()


class ProxyService(Service):
    """
    Closes the proxy's upstream connections when the server stops.
    """

    def __init__(self, proxy: ReverseProxy) -> None:
        self._proxy = proxy

    def stopService(self) -> Deferred[None]:
        super().stopService()
        stopped: Deferred[None] = self._proxy.stop()
        return stopped
