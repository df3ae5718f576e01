"""
The reverse proxy chapter: C{/proxy/} and everything below it go to the
upstream named by C{--proxy}.
"""

from __future__ import annotations

from typing import Any

from twisted.application.service import IServiceCollection
from twisted.internet.interfaces import IReactorTime
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource

from app.http.router import new_app
from app.mounts.proxy import ProxyService, ReverseProxy, Upstream


class ProxyRoutes:
    """
    C{/proxy/}: a branch route answered by one L{ReverseProxy}, built once.

    @param services: where the proxy's service (which closes its upstream
        connections at shutdown) is added.
    """

    #: Where it is served.
    PATH = "/proxy/"
    app = new_app()

    def __init__(
        self,
        upstream_url: str,
        reactor: Any,
        clock: IReactorTime,
        services: IServiceCollection,
    ) -> None:
        self.proxy = ReverseProxy(Upstream.from_url(upstream_url), reactor, clock)
        ProxyService(self.proxy).setServiceParent(services)

    @app.route(PATH, branch=True)
    def proxy_branch(self, request: IRequest) -> IResource:
        return self.proxy
