"""
The reverse proxy mounted at C{/proxy/}.

A request below the mount goes to the upstream through a bare Twisted
L{Agent} over one persistent L{HTTPConnectionPool}, and the upstream's answer
streams back as it arrives:

  - The upstream path is its base path joined with the rest of the raw
    request path by plain concatenation (never C{urljoin}: C{/proxy//x/}
    asks the upstream for C{BASE/x/}, on the upstream), the query string
    passed verbatim, percent-encoding untouched.  A path with a C{.} or
    C{..} segment (percent-encoded or not) is refused, so no request
    reaches above the base path.
  - No cookie jar, no redirect following, no content decoding; the body is
    never held whole: a client that reads slowly pauses the upstream
    connection.
  - Hop-by-hop headers are dropped both ways; C{X-Forwarded-For} gets the
    client appended, C{X-Forwarded-Proto} and C{X-Forwarded-Host} are set.
  - The upstream's C{Location} and C{Content-Location} under its own origin
    and base path are rewritten back under the mount.
  - An unreachable upstream is 502; an upstream silent for
    L{UPSTREAM_TIMEOUT} seconds is 504, or, once the answer has begun, the
    client's connection is closed.  So is it when the upstream breaks off
    mid-body.  A client that goes away cancels the upstream request.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote_to_bytes, urlsplit

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import (
    IAddress,
    IDelayedCall,
    IPushProducer,
    IReactorTime,
)
from twisted.internet.protocol import Protocol
from twisted.internet.task import Cooperator
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web._newclient import HTTP11ClientProtocol
from twisted.web.client import (
    URI,
    Agent,
    FileBodyProducer,
    HTTPConnectionPool,
    ResponseDone,
    _HTTP11ClientFactory,
)
from twisted.web.http import NO_BODY_CODES, PotentialDataLoss
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH, IBodyProducer, IRequest, IResponse
from twisted.web.resource import IResource
from twisted.web.server import NOT_DONE_YET, Request
from zope.interface import implementer

from app.http.pages import render_error

__all__ = ["UPSTREAM_TIMEOUT", "ReverseProxy", "Upstream"]

log = Logger()

#: Seconds the upstream may stay silent (before its answer, or between two
#: pieces of its body) before the proxy gives up on it.
UPSTREAM_TIMEOUT = 30.0

#: Idle connections kept open to the upstream.
POOL_SIZE = 10

#: Hop-by-hop headers (RFC 9110 section 7.6.1 and the legacy ones), dropped
#: both ways together with those a Connection header names and every Proxy-*.
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"te",
        b"trailer",
        b"trailers",
        b"transfer-encoding",
        b"upgrade",
    }
)

#: Request headers that the proxy sets itself instead of passing them on.
_SET_BY_PROXY = frozenset(
    {
        b"host",
        b"content-length",
        b"expect",
        b"x-forwarded-for",
        b"x-forwarded-proto",
        b"x-forwarded-host",
    }
)

_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
#: What a request target may hold on its way upstream: visible ASCII, no '#'.
_TARGET = re.compile(rb"[!-\"$-~]*")
_REASON = re.compile(rb"[\t -~]*")


@dataclass(frozen=True)
class Upstream:
    """
    Where the proxy sends requests: an origin and a base path.

    @ivar url_prefix: C{scheme://netloc} as given, to which paths are added.
    @ivar base_path: the upstream path that the mount stands for; it ends
        with C{/}.
    @ivar origins: lower-cased prefixes (C{scheme://host:port}, and without
        the port when it is the scheme's default; the same as network-path
        references) under which a C{Location} points at the upstream.
    """

    url_prefix: bytes
    base_path: bytes
    origins: tuple[bytes, ...]

    @classmethod
    def from_url(cls, url: str) -> Upstream:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {url!r}")
        default_port = 443 if parts.scheme == "https" else 80
        port = parts.port or default_port
        host = parts.netloc.rpartition("@")[2].lower()
        if parts.port is not None:
            host = host.rpartition(":")[0]
        hosts = [f"{host}:{port}"] + ([host] if port == default_port else [])
        origins = [f"{parts.scheme}://{h}" for h in hosts] + [f"//{h}" for h in hosts]
        base_path = parts.path if parts.path.endswith("/") else parts.path + "/"
        return cls(
            url_prefix=f"{parts.scheme}://{parts.netloc}".encode("ascii"),
            base_path=base_path.encode("ascii"),
            origins=tuple(origin.encode("ascii") for origin in origins),
        )

    def target(self, rest: bytes, query: bytes | None) -> bytes:
        """
        The upstream request target for C{rest} (the raw path below the
        mount) and C{query} (verbatim; C{None} when the request had no C{?}).
        """
        target = self.base_path + rest
        if query is not None:
            target += b"?" + query
        return target

    def rewrite_location(self, value: bytes, mount: bytes) -> bytes:
        """
        C{value} (a C{Location} or C{Content-Location}) moved under C{mount}
        (the raw path of the mount, ending in C{/}) when it points at the
        upstream's base path, by absolute URL or by path; else unchanged.
        """
        lowered = value.lower()
        for origin in self.origins:
            if lowered.startswith(origin):
                rest = value[len(origin) :]
                if rest[:1] in (b"", b"?", b"#"):
                    rest = b"/" + rest
                if rest.startswith(b"/"):
                    return self._under_mount(rest, mount) or value
        if value.startswith(b"/") and not value.startswith((b"//", b"/\\")):
            return self._under_mount(value, mount) or value
        return value

    def _under_mount(self, path: bytes, mount: bytes) -> bytes | None:
        if path.startswith(self.base_path):
            return mount + path[len(self.base_path) :]
        bare = self.base_path[:-1]
        if (
            bare
            and path.startswith(bare)
            and path[len(bare) : len(bare) + 1]
            in (
                b"",
                b"?",
                b"#",
            )
        ):
            return mount[:-1] + path[len(bare) :]
        return None


def _dot_segment(rest: bytes) -> bool:
    """
    Whether C{rest} has a C{.} or C{..} segment, as the upstream may see it
    once it decodes C{%2e} and C{%2f} (or treats C{\\} as C{/}).
    """
    decoded = unquote_to_bytes(rest).replace(b"\\", b"/")
    return any(segment in (b".", b"..") for segment in decoded.split(b"/"))


def _named_by_connection(headers: Headers) -> frozenset[bytes]:
    """
    The lower-cased names that C{headers}' C{Connection} header lists.
    """
    names: set[bytes] = set()
    for value in headers.getRawHeaders(b"connection", []):
        names.update(token.strip().lower() for token in value.split(b","))
    return frozenset(names)


def _hop_by_hop(name: bytes, named: frozenset[bytes]) -> bool:
    lowered = name.lower()
    return lowered in HOP_BY_HOP or lowered in named or lowered.startswith(b"proxy-")


def _client_host(address: IAddress) -> bytes:
    host = getattr(address, "host", None)
    return host.encode("ascii", "replace") if isinstance(host, str) else b"unknown"


class _ClientProtocol(HTTP11ClientProtocol):
    """
    Twisted's HTTP/1.1 client, handing back the upstream's C{Connection}
    header: Agent files it under the parser's connection headers and leaves
    it out of C{Response.headers}, so the headers it names (which a proxy
    must drop) could not be known.
    """

    def request(self, request: Any) -> Deferred[IResponse]:
        answer = super().request(request)
        parser = self._parser
        if parser is None:
            return answer

        def restore_connection_header(response: IResponse) -> IResponse:
            # connHeaders is read now, not earlier: a 1xx answer replaces it.
            for value in parser.connHeaders.getRawHeaders(b"connection", []):
                response.headers.addRawHeader(b"connection", value)
            return response

        return answer.addCallback(restore_connection_header)


class _ClientFactory(_HTTP11ClientFactory):
    # One "Starting factory" log line per upstream connection is noise.
    noisy = False

    def buildProtocol(self, addr: IAddress | None) -> _ClientProtocol:
        return _ClientProtocol(self._quiescentCallback)


class _UpstreamAgent(Agent):
    """
    An Agent that sends the request target exactly as given.
    """

    def send(
        self,
        method: bytes,
        origin: URI,
        target: bytes,
        headers: Headers,
        body: IBodyProducer | None,
    ) -> Deferred[IResponse]:
        # Agent.request parses its URL again and rebuilds the target from the
        # parts, which normalises it (an empty query "?" is dropped); this is
        # what it does next, with our target.
        key = (origin.scheme, origin.host, origin.port)
        endpoint = self._getEndpoint(origin)
        return self._requestWithEndpoint(
            key, endpoint, method, origin, headers, body, target
        )


class _UpstreamPool(HTTPConnectionPool):
    """
    A persistent pool whose connections speak L{_ClientProtocol}.
    """

    # HTTPConnectionPool builds its connections with this factory class.
    _factory = _ClientFactory
    maxPersistentPerHost = POOL_SIZE


@implementer(IResource)
class ReverseProxy:
    """
    The C{/proxy/} resource: each request is one L{_Exchange} with the
    upstream.

    @param reactor: makes the outgoing connections and feeds request bodies.
    @param clock: times the upstream's silences.
    """

    isLeaf = True

    def __init__(self, upstream: Upstream, reactor: Any, clock: IReactorTime) -> None:
        self.upstream = upstream
        self.clock = clock
        self.pool = _UpstreamPool(reactor, persistent=True)
        self.agent = _UpstreamAgent(reactor, pool=self.pool)
        self.origin = URI.fromBytes(upstream.url_prefix + b"/")
        self.cooperator = Cooperator(
            scheduler=lambda work: reactor.callLater(0, work), started=True
        )
        self.exchanges: set[_Exchange] = set()

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
        if not _TARGET.fullmatch(rest + (query or b"")):
            return render_error(request, 400, "The request target is not valid.")
        if _dot_segment(rest):
            return render_error(request, 404)
        assert isinstance(request, Request)
        exchange = _Exchange(self, request, mount)
        exchange.start(
            self.upstream.target(rest, query),
            self.request_headers(request),
            self._body(request),
        )
        return NOT_DONE_YET

    # -- the upstream request ------------------------------------------

    def request_headers(self, request: IRequest) -> Headers:
        incoming: Headers = request.requestHeaders
        named = _named_by_connection(incoming)
        headers = Headers()
        for name, values in incoming.getAllRawHeaders():
            lowered = name.lower()
            if lowered in _SET_BY_PROXY or _hop_by_hop(lowered, named):
                continue
            headers.setRawHeaders(name, values)
        forwarded = incoming.getRawHeaders(b"x-forwarded-for", [])
        client = _client_host(request.getClientAddress())
        headers.setRawHeaders(b"x-forwarded-for", [b", ".join([*forwarded, client])])
        proto = b"https" if request.isSecure() else b"http"
        headers.setRawHeaders(b"x-forwarded-proto", [proto])
        host = request.getHeader(b"host")
        if host:
            headers.setRawHeaders(b"x-forwarded-host", [host])
        return headers

    def _body(self, request: IRequest) -> IBodyProducer | None:
        incoming: Headers = request.requestHeaders
        has_body = incoming.hasHeader(b"content-length") or incoming.hasHeader(
            b"transfer-encoding"
        )
        if not has_body or request.content is None:
            return None
        # The body is already here, bounded by --max-body.
        producer: IBodyProducer = FileBodyProducer(
            request.content, cooperator=self.cooperator
        )
        return producer

    # -- the upstream answer --------------------------------------------

    def response_headers(self, response: IResponse, mount: bytes) -> Headers:
        """
        The headers of C{response} that the client gets.
        """
        named = _named_by_connection(response.headers)
        headers = Headers()
        for name, values in response.headers.getAllRawHeaders():
            lowered = name.lower()
            if _hop_by_hop(lowered, named) or not _TOKEN.fullmatch(name):
                continue
            if lowered in (b"location", b"content-location"):
                values = [self.upstream.rewrite_location(v, mount) for v in values]
            values = [value for value in values if b"\x00" not in value]
            if values:
                headers.setRawHeaders(name, values)
        return headers

    # -- stopping ---------------------------------------------------------

    def stop(self) -> Deferred[None]:
        """
        Abandon every exchange in flight and close the idle connections.
        """
        for exchange in list(self.exchanges):
            exchange.abandon()
        self.cooperator.stop()
        closed: Deferred[None] = self.pool.closeCachedConnections()
        return closed


@implementer(IPushProducer)
class _Exchange:
    """
    One request through the proxy, from the upstream request to the end of
    the client's response.  It is also the producer registered on the
    client's request, so that a client that reads slowly pauses the upstream.
    """

    def __init__(self, proxy: ReverseProxy, request: Request, mount: bytes) -> None:
        self._proxy = proxy
        self._request = request
        self._mount = mount
        self._timer: IDelayedCall | None = None
        self._pending: Deferred[IResponse] | None = None
        self._body: IPushProducer | None = None
        self._paused = False
        self._over = False
        self._client_gone = False
        self._timed_out = False

    def _uri(self) -> str:
        return bytes(self._request.uri).decode("latin-1")

    # -- from request to answer -----------------------------------------

    def start(
        self, target: bytes, headers: Headers, body: IBodyProducer | None
    ) -> None:
        method = bytes(self._request.method)
        try:
            pending = self._proxy.agent.send(
                method, self._proxy.origin, target, headers, body
            )
        except ValueError:
            self._request.write(render_error(self._request, 400))
            self._request.finish()
            return
        self._proxy.exchanges.add(self)
        self._request.notifyFinish().addErrback(self._client_went_away)
        self._pending = pending
        self._watch()
        pending.addCallbacks(self._answered, self._failed)

    def _answered(self, response: IResponse) -> None:
        self._pending = None
        self._cancel_timer()
        if self._over:
            response.deliverBody(_Discard())
            return
        request = self._request
        code = response.code
        if not 200 <= code <= 599:
            log.warn(
                "Upstream answered {uri} with status {code}", uri=self._uri(), code=code
            )
            response.deliverBody(_Discard())
            self._answer_error(502, "The upstream server answered with nonsense.")
            return
        phrase = response.phrase if _REASON.fullmatch(response.phrase) else b""
        request.setResponseCode(code, phrase or None)
        # twisted.web gives a response without Content-Type one of its own.
        request.defaultContentType = None
        for name, values in self._proxy.response_headers(
            response, self._mount
        ).getAllRawHeaders():
            request.responseHeaders.setRawHeaders(name, values)
        if (
            response.length is not UNKNOWN_LENGTH
            and request.method != b"HEAD"
            and code not in NO_BODY_CODES
        ):
            request.setHeader(b"content-length", b"%d" % (response.length,))
        self._watch()
        response.deliverBody(_Relay(self))

    def _failed(self, failure: Failure) -> None:
        self._pending = None
        self._cancel_timer()
        if self._over or self._client_gone:
            self._end()
            return
        if self._timed_out:
            self._answer_error(504)
            return
        log.warn(
            "Proxy request for {uri} failed: {error}",
            uri=self._uri(),
            error=_describe(failure),
        )
        self._answer_error(502)

    def _answer_error(self, code: int, detail: str | None = None) -> None:
        self._end()
        if self._client_gone:
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
        if self._over:
            return
        self._watch()
        self._request.write(data)

    def body_ended(self, reason: Failure) -> None:
        self._cancel_timer()
        if self._over:
            return
        self._end()
        if self._client_gone:
            return
        request = self._request
        if self._body is not None:
            request.unregisterProducer()
        if reason.check(ResponseDone, PotentialDataLoss):
            request.finish()
            return
        if self._timed_out:
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
        self._paused = True
        self._cancel_timer()
        if self._body is not None:
            self._body.pauseProducing()

    def resumeProducing(self) -> None:
        self._paused = False
        if self._body is not None and not self._over:
            self._body.resumeProducing()
            self._watch()

    def stopProducing(self) -> None:
        self._client_went_away(None)

    # -- giving up ----------------------------------------------------------

    def _client_went_away(self, reason: Failure | None) -> None:
        if self._client_gone:
            return
        self._client_gone = True
        if not self._over:
            log.info(
                "Proxy request for {uri} cancelled: client went away", uri=self._uri()
            )
        self._stop_upstream()

    def abandon(self) -> None:
        """
        Stop the upstream's part now (the server is stopping) and close the
        client's connection if it is still open.
        """
        if not self._client_gone:
            self._request.loseConnection()
        self._client_went_away(None)

    def _silent(self) -> None:
        self._timer = None
        self._timed_out = True
        log.warn(
            "Upstream silent for {seconds} s answering {uri}",
            seconds=UPSTREAM_TIMEOUT,
            uri=self._uri(),
        )
        self._stop_upstream()

    def _stop_upstream(self) -> None:
        self._cancel_timer()
        if self._pending is not None:
            self._pending.cancel()
        elif self._body is not None and not self._over:
            self._body.stopProducing()
        if self._client_gone:
            self._end()

    def _end(self) -> None:
        self._over = True
        self._cancel_timer()
        self._proxy.exchanges.discard(self)

    # -- the silence timer ------------------------------------------------

    def _watch(self) -> None:
        self._cancel_timer()
        if not self._paused and not self._over:
            self._timer = self._proxy.clock.callLater(UPSTREAM_TIMEOUT, self._silent)

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
    Passes an upstream body to its L{_Exchange} as it arrives.
    """

    def __init__(self, exchange: _Exchange) -> None:
        self._exchange = exchange

    def connectionMade(self) -> None:
        assert self.transport is not None
        self._exchange.body_started(self.transport)  # type: ignore[arg-type]

    def dataReceived(self, data: bytes) -> None:
        self._exchange.body_received(data)

    def connectionLost(self, reason: Failure = _DONE) -> None:
        self._exchange.body_ended(reason)


class _Discard(Protocol):
    """
    Drops a body nobody will read, closing its connection.
    """

    def connectionMade(self) -> None:
        if self.transport is not None:
            self.transport.stopProducing()  # type: ignore[attr-defined]


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
