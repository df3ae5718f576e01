"""
The reverse proxy chapter: C{/proxy/} and everything below it go to the
upstream named by C{--proxy}.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from twisted.application.service import IServiceCollection
from twisted.internet.interfaces import IReactorTime
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource
from werkzeug.routing import BaseConverter, PathConverter, Rule

from app._proxy import ProxyService, ReverseProxy, Upstream
from app._router import new_app


class _AnyRest(PathConverter):
    """
    The rest of a path, even one that starts with C{/}: werkzeug's C{path}
    converter does not match C{/x} (its regex is C{[^/].*?}), so
    C{/proxy//x} would find no route.
    """

    regex = ".+"
    part_isolating = False


class _RestRule(Rule):
    """
    A rule that knows the C{anyrest} converter by itself, so that it keeps
    it when the router copies it into a map of its own.
    """

    def get_converter(
        self,
        variable_name: str,
        converter_name: str,
        args: tuple[Any, ...],
        kwargs: Mapping[str, Any],
    ) -> BaseConverter:
        if converter_name == "anyrest":
            return _AnyRest(self.map, *args, **kwargs)
        return super().get_converter(variable_name, converter_name, args, kwargs)


class ProxyRoutes:
    """
    C{/proxy/}: a branch route answered by one L{ReverseProxy}, built once.

    @param services: where the proxy's service (which closes its upstream
        connections at shutdown) is added.
    """

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

    @app.route("/proxy/", branch=True)
    def proxy_branch(self, request: IRequest) -> IResource:
        return self.proxy

    # The branch below /proxy/, for rests that start with a slash too.
    app.url_map.add(
        _RestRule(
            "/proxy/<anyrest:__rest__>",
            endpoint="proxy_branch_branch",
            merge_slashes=False,
        )
    )
