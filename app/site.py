"""
Site assembly: one function from a L{Config} to a ready L{Site}.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from klein import Klein
from twisted.internet.interfaces import IReactorTime
from twisted.web.resource import Resource

from app.config import WSGI_PREFIX, Config, ConfigError
from app.http.access_log import install_access_log
from app.http.metrics import SiteMetrics
from app.http.router import Router
from app.http.site import Site
from app.sessions.shared import open_backend
from auth import HashPool
from routes.asynchronous import AsynchronousRoutes
from routes.content import ContentRoutes, HealthRoutes
from routes.files import FileRoutes
from routes.gateways import CGIRoutes, WSGIRoutes
from routes.private import PrivateRoutes, build_guard
from routes.proxy import ProxyRoutes
from routes.sessions import SessionRoutes

#: The route modules whose routes are fixed (their Klein app is a class
#: attribute); FileRoutes's are made from the configuration.
_FIXED_ROUTES = (
    HealthRoutes,
    ContentRoutes,
    AsynchronousRoutes,
    SessionRoutes,
    CGIRoutes,
    PrivateRoutes,
    ProxyRoutes,
)


def reserved_prefixes() -> frozenset[str]:
    """
    The first path segments that the server's own routes take (the index's
    empty one included): a C{--mount} may take none of them.
    """
    prefixes = {"", FileRoutes.STATIC, WSGI_PREFIX}
    for routes in _FIXED_ROUTES:
        for rule in routes.app.url_map.iter_rules():
            prefixes.add(rule.rule.lstrip("/").split("/", 1)[0])
    return frozenset(prefixes)


def check_mount(prefix: str) -> None:
    """
    Raise L{ConfigError} if the mount C{prefix} would take a path the
    server's own routes take.
    """
    first = prefix.strip("/").split("/", 1)[0]
    if first in reserved_prefixes():
        raise ConfigError("--mount", f"/{first}/ is served by the server itself")


def check_wsgi_prefix(prefix: str, mounts: Sequence[str]) -> None:
    """
    Raise L{ConfigError} if the WSGI application's C{prefix} is one the
    server or one of C{mounts} takes (its default, C{/wsgi/}, is its own).
    """
    first = prefix.split("/", 1)[0]
    if prefix and prefix != WSGI_PREFIX and first in reserved_prefixes():
        raise ConfigError("--wsgi", f"/{first}/ is served by the server itself")
    if any(first == mount.split("/", 1)[0] for mount in mounts):
        raise ConfigError("--wsgi", f"/{first}/ is a --mount already")


def _check_paths(config: Config) -> None:
    """
    Refuse what the command line refuses of the paths a C{config} made in
    Python serves: mounts over the server's own pages or each other, a
    WSGI prefix over either.
    """
    prefixes = [prefix for prefix, _ in config.mounts]
    for prefix in prefixes:
        check_mount(prefix)
    if len(set(prefixes)) != len(prefixes):
        raise ConfigError("--mount", "the same prefix is mounted twice")
    if config.wsgi_prefix is not None:
        check_wsgi_prefix(config.wsgi_prefix, prefixes)


def build_site(
    config: Config,
    reactor: Any,
    clock: IReactorTime | None = None,
    *,
    warn_shadowed: bool = True,
) -> Site:
    """
    Build the site that C{config} describes.

    @param reactor: the reactor that runs processes, threads and outgoing
        connections for the mounts.
    @param clock: the clock of timers, timeouts and delays; the reactor
        unless a test passes a L{twisted.internet.task.Clock}.
    @param warn_shadowed: whether to log the routes of C{--routes} modules
        that built-in routes shadow (every worker but the first is quiet).
    """
    _check_paths(config)
    clock = reactor if clock is None else clock
    site = Site(
        Resource(),
        reactor=clock,
        max_body=config.max_body,
        idle_timeout=config.idle_timeout,
        display_tracebacks=config.display_tracebacks,
        session_timeout=config.session_timeout,
        max_sessions=config.max_sessions,
        max_connections=config.max_connections,
        trusted_proxies=config.trusted_proxies,
    )
    builtin: list[Klein] = [HealthRoutes().app]
    if config.demo:
        builtin.append(ContentRoutes(clock).app)
        builtin.append(AsynchronousRoutes(clock).app)
        builtin.append(SessionRoutes().app)
    files = FileRoutes(config)
    builtin.append(files.app)
    # The mounts' paths: none of them uses a session (see Site).
    sessionless = list(files.paths)
    metrics = None if config.metrics is None else SiteMetrics(site)
    if config.cgi_root is not None:
        cgi = CGIRoutes(config, reactor, clock)
        builtin.append(cgi.app)
        sessionless.append(CGIRoutes.PATH)
        if metrics is not None:
            slots = cgi.slots
            metrics.add_queue("cgi", lambda: slots.waiting, "/cgi-bin/")
    # A WSGI application at / serves what no other route takes: it comes last.
    last: list[Klein] = []
    if config.wsgi_prefix is not None:
        wsgi = WSGIRoutes(config, reactor, clock, site.service)
        (builtin if config.wsgi_prefix else last).append(wsgi.app)
        if config.wsgi_prefix:
            sessionless.append(wsgi.path)
        if metrics is not None:
            pool = wsgi.pool
            metrics.add_queue("wsgi", lambda: pool.waiting, wsgi.path)
    secret = config.secret_key or os.urandom(32)
    backend = None
    if config.sessions not in (None, "memory"):
        backend = open_backend(config.sessions, config.max_sessions, clock)
        site.share_sessions(backend, secret)
    guard = build_guard(config, reactor, clock, site.service, secret, backend)
    if guard is not None:
        builtin.append(PrivateRoutes(guard).app)
        sessionless.append(PrivateRoutes.PATH)
        if metrics is not None and HashPool.name in site.service.namedServices:
            hashing = site.service.getServiceNamed(HashPool.name)
            metrics.add_queue("bcrypt", lambda: hashing.queued, "/private/")
    if config.proxy is not None:
        builtin.append(ProxyRoutes(config.proxy, reactor, clock, site.service).app)
        sessionless.append(ProxyRoutes.PATH)
    site.sessionless_paths = tuple(path.encode() for path in sessionless)
    router = site.resource = Router(
        builtin,
        (*config.extra_apps, *last),
        display_tracebacks=config.display_tracebacks,
        warn_shadowed=warn_shadowed,
    )
    site.takes_no_session = router.takes_no_session
    if config.access_log is not None:
        install_access_log(site, config.access_log, clock, config.access_log_format)
    if metrics is not None:
        site.metrics = metrics
        if metrics.service is not None:
            metrics.service.setServiceParent(site.service)
    return site
