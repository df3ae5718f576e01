"""
Helpers for testing a site, its routes and your own C{--routes} modules.

A live server (a real site on 127.0.0.1, port 0, with a treq client)::

    from app.testing import LiveServer

    @pytest_twisted.ensureDeferred
    async def test_hello():
        server = await LiveServer.start(["--no-demo", "--routes", "myroutes"])
        try:
            response = await server.get("/hello")
            assert response.code == 200
        finally:
            await server.stop()

Or in-memory, through treq's C{StubTreq} over the same site::

    config = Config(demo=False, routes=("myroutes",))
    client = stub_treq(build_site(config, MemoryReactor(), Clock()))
"""

from __future__ import annotations

from collections.abc import Sequence
from http.cookiejar import CookieJar
from typing import Any

from treq.client import HTTPClient
from treq.testing import StubTreq
from twisted.internet.address import IPv4Address
from twisted.internet.interfaces import IListeningPort, IReactorTime
from twisted.web.client import Agent, HTTPConnectionPool

from app.cli.main import listening_url
from app.cli.options import config_from_args
from app.compat.treq import serve_through
from app.config import Config
from app.http.site import Site
from app.site import build_site

__all__ = ["LiveServer", "stub_treq"]


def _global_reactor() -> Any:
    from twisted.internet import reactor

    return reactor


class LiveServer:
    """
    A site listening on 127.0.0.1 port 0, with a treq client pointed at it.

    @ivar site: the L{Site} being served.
    @ivar base_url: C{http://127.0.0.1:PORT} (no trailing slash).
    @ivar client: a treq L{HTTPClient} with its own connection pool and
        cookie jar.
    """

    def __init__(
        self,
        site: Site,
        port: IListeningPort,
        reactor: Any,
        pool: HTTPConnectionPool,
    ) -> None:
        self.site = site
        self.port = port
        self.reactor = reactor
        self._pool = pool
        self.base_url = listening_url("tcp", port).rstrip("/")
        self.client = self.new_client()

    @classmethod
    async def start(
        cls,
        config: Config | Sequence[str] = (),
        *,
        reactor: Any = None,
        clock: IReactorTime | None = None,
    ) -> LiveServer:
        """
        Build a site from C{config} (a L{Config}, or command-line arguments
        as C{python -m app} takes them), listen and start its services.
        """
        if reactor is None:
            reactor = _global_reactor()
        if not isinstance(config, Config):
            config = config_from_args(list(config))
        site = build_site(config, reactor, clock)
        port = reactor.listenTCP(0, site, interface="127.0.0.1")
        site.ports.append(port)
        site.service.startService()
        pool = HTTPConnectionPool(reactor, persistent=True)
        return cls(site, port, reactor, pool)

    @property
    def port_number(self) -> int:
        """
        The TCP port this server listens on.
        """
        address = self.port.getHost()
        assert isinstance(address, IPv4Address)
        return address.port

    def new_client(self) -> HTTPClient:
        """
        Another client of this server, with a cookie jar of its own.
        """
        return HTTPClient(
            Agent(self.reactor, pool=self._pool),
            cookiejar=CookieJar(),  # type: ignore[arg-type]
        )

    def url(self, path: str) -> str:
        """
        The absolute URL of C{path} (which starts with C{/}) on this server.
        """
        return self.base_url + path

    def get(self, path: str, **kwargs: Any) -> Any:
        return self.client.get(self.url(path), **kwargs)

    def head(self, path: str, **kwargs: Any) -> Any:
        return self.client.head(self.url(path), **kwargs)

    def post(self, path: str, **kwargs: Any) -> Any:
        return self.client.post(self.url(path), **kwargs)

    def put(self, path: str, **kwargs: Any) -> Any:
        return self.client.put(self.url(path), **kwargs)

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        return self.client.request(method, self.url(path), **kwargs)

    async def stop(self) -> None:
        """
        Close the client's connections, then stop the site gracefully.
        """
        await self._pool.closeCachedConnections()
        await self.site.shutdown([self.port], grace=5.0)


def stub_treq(site: Site) -> StubTreq:
    """
    A treq-like client that talks to C{site} in memory, with no socket.

    Call C{client.flush()} after advancing a clock so that asynchronous
    responses reach the client.
    """
    client = StubTreq(site.resource)
    # StubTreq wraps the resource in a plain twisted Site; serve it through
    # ours instead so that its channel, limits and headers apply.
    serve_through(client, site)
    return client
