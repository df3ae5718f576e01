"""
Site assembly: one function from a L{Config} to a ready L{Site}.
"""

from __future__ import annotations

from typing import Any

from klein import Klein
from twisted.internet.interfaces import IReactorTime
from twisted.web.resource import Resource

from app._config import Config
from app._http import Site
from app._router import Router
from routes.content import ContentRoutes, HealthRoutes


def build_site(config: Config, reactor: Any, clock: IReactorTime | None = None) -> Site:
    """
    Build the site that C{config} describes.

    @param reactor: the reactor that runs processes, threads and outgoing
        connections for the mounts.
    @param clock: the clock of timers, timeouts and delays; the reactor
        unless a test passes a L{twisted.internet.task.Clock}.
    """
    clock = reactor if clock is None else clock
    site = Site(
        Resource(),
        reactor=clock,
        max_body=config.max_body,
        idle_timeout=config.idle_timeout,
        display_tracebacks=config.display_tracebacks,
    )
    builtin: list[Klein] = [HealthRoutes().app]
    if config.demo:
        builtin.append(ContentRoutes(clock).app)
    site.resource = Router(
        builtin, config.route_apps, display_tracebacks=config.display_tracebacks
    )
    return site
