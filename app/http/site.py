"""
The server's Site: twisted.web's, with the server's own channel, an
optional access log, the services its mounts run, the session store, and a
graceful stop.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from twisted.application.service import MultiService
from twisted.internet.defer import Deferred, gatherResults, maybeDeferred
from twisted.internet.interfaces import IListeningPort, IReactorTime
from twisted.logger import Logger
from twisted.web import server
from twisted.web.resource import IResource, getChildForRequest

from app.compat.twisted import pause_accepting, resume_accepting, watch_accepts
from app.config import Config
from app.http.channel import Channel, Refusal
from app.http.forwarding import TrustedProxies
from app.http.request import ForwardedRequest, Request
from app.sessions import Session, SessionStore, SessionSweep, new_uid
from app.sessions.backend import Backend
from app.sessions.records import Sealer
from app.sessions.shared import SessionWatch, SharedStore
from app.sessions.store import Sessions

if TYPE_CHECKING:
    from app.http.metrics import SiteMetrics

log = Logger()


class Site(server.Site):
    """
    The server's Site: twisted.web's, with the channel above, an optional
    access log, the services its mounts run, and a graceful stop.
    """

    requestFactory = Request
    #: The requests of connections from a trusted proxy.
    forwardedRequestFactory = ForwardedRequest
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
        session_timeout: float = Config.session_timeout,
        max_sessions: int = Config.max_sessions,
        max_connections: int = Config.max_connections,
        trusted_proxies: tuple[str, ...] = Config.trusted_proxies,
    ) -> None:
        super().__init__(resource, timeout=idle_timeout, reactor=reactor)
        self.max_body = max_body
        self.displayTracebacks = display_tracebacks
        self.channels: set[Channel] = set()
        #: Past this many open connections, the ports stop accepting.
        self.max_connections = max_connections
        #: The ports this site is served on, paused and resumed by the above.
        self.ports: list[IListeningPort] = []
        self._accepting = True
        watch_accepts()
        self.stopping = False
        #: Started by whoever starts the server, stopped after the last request.
        self.service = MultiService()
        self._clock = reactor
        self._session_timeout = session_timeout
        #: The live sessions, least recently used first (held here until
        #: share_sessions is called).
        self.held_sessions = SessionStore(reactor, session_timeout, max_sessions)
        self.sessions: Sessions = self.held_sessions  # type: ignore[assignment]
        self._sweep = SessionSweep(self.held_sessions)
        self._sweep.setServiceParent(self.service)
        #: Called with every finished request (the access log), when set.
        self.access_log: Callable[[server.Request], None] | None = None
        #: Called with every request the channel refuses itself, when set.
        self.refusal_log: Callable[[Refusal], None] | None = None
        #: Told of every request routed, answered and refused, when set.
        self.metrics: SiteMetrics | None = None
        self._all_closed: list[Deferred[None]] = []
        #: The peers whose forwarding headers are believed, if any.
        self.trusted_proxies = (
            TrustedProxies(trusted_proxies) if trusted_proxies else None
        )
        #: Where the mounts that never use a session are served (a static
        #: directory, CGI, a WSGI application, the proxy, the guarded
        #: homes): a store that answers later fetches no record for these
        #: paths, a browser's requests for its page's files among them.
        self.sessionless_paths: tuple[bytes, ...] = ()
        #: Whether the route that will take a request is marked as never
        #: using its session (the router's answer, once it has one).
        self.takes_no_session: Callable[[Any], bool] = _not_known_sessionless

    sessionFactory = Session

    def share_sessions(self, backend: Backend, secret: bytes) -> None:
        """
        Keep sessions in C{backend}, shared with every process that opens
        it, their records sealed under C{secret}, instead of in this process.
        """
        shared = SharedStore(
            self, backend, Sealer(secret), self._clock, self._session_timeout
        )
        self.sessions = shared
        self._sweep.disownServiceParent()
        SessionWatch(shared).setServiceParent(self.service)

    def make_uid(self) -> bytes:
        """
        A fresh session uid (twisted.web's Site makes one with its private
        C{_mkuid}, which only its own makeSession calls).
        """
        return new_uid()

    def makeSession(self) -> Session:
        # As twisted.web's, without the timer per session: the store sweeps.
        uid = self.make_uid()
        session = self.held_sessions[uid] = self.sessionFactory(self, uid)
        return session

    def getSession(self, uid: bytes) -> Session:
        return self.held_sessions[uid]

    def buildProtocol(self, addr: Any) -> Channel:  # type: ignore[override]
        return Channel(self)

    def startFactory(self) -> None:
        # HTTPFactory starts a once-a-second timer for its own log and opens
        # twisted's legacy log as the access log; we keep neither.
        pass

    def stopFactory(self) -> None:
        pass

    def getResourceFor(self, request: server.Request) -> IResource:
        # As twisted.web's, which copies the request's empty prepath for
        # sitepath and walks from the root: the root is the router, a leaf.
        if self.metrics is not None:
            self.metrics.request_started(request)
        request.site = self
        request.sitepath = []  # type: ignore[attr-defined]  # twisted.web's, undeclared
        root: IResource = self.resource
        if root.isLeaf:
            return root
        resource: IResource = getChildForRequest(root, request)
        return resource

    def log(self, request: server.Request) -> None:  # type: ignore[override]
        if self.access_log is not None:
            self.access_log(request)
        if self.metrics is not None:
            self.metrics.request_done(request)

    def log_refusal(self, refusal: Refusal) -> None:
        if self.refusal_log is not None:
            self.refusal_log(refusal)
        if self.metrics is not None:
            self.metrics.request_refused(refusal)

    def channel_opened(self, channel: Channel) -> None:
        self.channels.add(channel)
        if self._accepting and len(self.channels) >= self.max_connections:
            # The kernel's backlog holds the next clients until one leaves.
            self._accepting = False
            for port in self.ports:
                pause_accepting(port)
            log.warn(
                "{count} connections open: not accepting more until one closes",
                count=len(self.channels),
            )

    def channel_closed(self, channel: Channel) -> None:
        self.channels.discard(channel)
        if (
            not self._accepting
            and not self.stopping
            and len(self.channels) < self.max_connections
        ):
            self._accepting = True
            for port in self.ports:
                resume_accepting(port)
        if not self.channels:
            waiting, self._all_closed = self._all_closed, []
            for waiter in waiting:
                waiter.callback(None)

    def shutdown(
        self, ports: Iterable[IListeningPort], grace: float = Config.grace
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


def _not_known_sessionless(request: object) -> bool:
    # Until the site has its router: every route may use its session.
    return False
