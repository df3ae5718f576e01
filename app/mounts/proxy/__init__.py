"""
The reverse proxy mounted at C{/proxy/}.

Its parts, each with one job: L{app.mounts.proxy.policy} (what goes each way
and where), L{app.mounts.proxy.client} (the connections to the upstream),
L{app.mounts.proxy.exchange} (one request's exchange and its stages) and
L{app.mounts.proxy.resource} (the resource and the service that stops it).
"""

from app.mounts.proxy.exchange import UPSTREAM_TIMEOUT, Stage
from app.mounts.proxy.policy import Upstream
from app.mounts.proxy.resource import ProxyService, ReverseProxy

__all__ = ["UPSTREAM_TIMEOUT", "ProxyService", "ReverseProxy", "Stage", "Upstream"]
