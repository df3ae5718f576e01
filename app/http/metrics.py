"""
The site's Prometheus metrics, and the small site that serves them.

Per request, the cost is one clock reading when it is routed and, once it
is answered, a dictionary lookup and two increments of prometheus-client's
values (L{SiteMetrics.request_done}).  The gauges (open connections, live
sessions, queue depths) cost nothing per request: a custom collector reads
the live objects when a scrape asks.

With several worker processes (prometheus-client's multiprocess mode,
C{PROMETHEUS_MULTIPROC_DIR} set), a scrape reads the workers' files rather
than their objects: there each worker copies the same readings into
gauges of mode C{livesum} once every L{SAMPLE_SECONDS}, and the parent sums
the live workers' (but for the sessions of a shared store, which every
worker counts alike: C{livemax}).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, Final

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from twisted.application.internet import TimerService
from twisted.internet.interfaces import IReactorTime
from twisted.web import server
from twisted.web.iweb import IRequest
from twisted.web.resource import Resource

from app.http.channel import Refusal
from app.http.pages import render_error

if TYPE_CHECKING:
    from app.http.site import Site

#: prometheus-client's switch to its multiprocess mode.
MULTIPROCESS_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"
#: How often a worker of several copies its gauges into its files.
SAMPLE_SECONDS = 1.0
#: The route of a request no route matched (404, 405, a redirect).
UNMATCHED = "unmatched"
#: The methods counted by name; any other is counted as C{other}.
_METHODS = frozenset(
    ["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE"]
)

QueueDepth = Callable[[], int]


def route_of(request: IRequest) -> str:
    """
    The template of the route that answered C{request} (C{/calendar/<int:year>},
    C{/static/} for everything below a mount), or L{UNMATCHED}.
    """
    route: str = getattr(request, "route", UNMATCHED)
    return route


class SiteMetrics:
    """
    The metrics of one site, in a registry of their own.

    @ivar registry: what the metrics endpoint of a single process serves.
    @ivar busy_routes: the routes of the mounts that answer 503 when their
        queue is full, with the reason a 503 of theirs is counted under.
    """

    def __init__(self, site: Site, *, multiprocess: bool | None = None) -> None:
        if multiprocess is None:
            multiprocess = bool(os.environ.get(MULTIPROCESS_VARIABLE))
        self._site = site
        self._clock: IReactorTime = site.reactor
        self._queues: dict[str, QueueDepth] = {}
        self.busy_routes: dict[str, str] = {}
        self.registry = CollectorRegistry()
        self._requests = Counter(
            "http_requests",
            "Requests answered, by route template, method and status.",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self._latency = Histogram(
            "http_request_duration_seconds",
            "Time from routing a request to the end of its response, by route.",
            ["route"],
            registry=self.registry,
        )
        self._refused = Counter(
            "http_refused_requests",
            "Requests refused: by the channel (reason: the status code), or "
            "with 503 by a mount whose queue is full (reason: QUEUE_busy).",
            ["reason"],
            registry=self.registry,
        )
        #: The counter and histogram children by (route, method, status).
        self._children: dict[tuple[str, bytes, int], tuple[Any, Any]] = {}
        self._gauges = _LiveGauges(site, self._queues)
        self.service: TimerService | None = None
        if multiprocess:
            self.service = _sampled_gauges(self._gauges, self.registry)
            self.service.clock = self._clock
        else:
            self.registry.register(self._gauges)

    def add_queue(self, name: str, depth: QueueDepth, route: str | None = None) -> None:
        """
        Report C{depth()} as the depth of queue C{name}; a 503 answered on
        C{route} is a refusal for want of room in it.
        """
        self._queues[name] = depth
        if route is not None:
            self.busy_routes[route] = f"{name}_busy"

    def request_started(self, request: IRequest) -> None:
        request.metrics_started = self._clock.seconds()  # type: ignore[attr-defined]

    def request_done(self, request: server.Request) -> None:
        route = route_of(request)
        key = (route, request.method, request.code)
        children = self._children.get(key)
        if children is None:
            method = request.method.decode("latin-1")
            children = self._children[key] = (
                self._requests.labels(
                    route, method if method in _METHODS else "other", str(request.code)
                ),
                self._latency.labels(route),
            )
        counted, timed = children
        counted.inc()
        started: float | None = getattr(request, "metrics_started", None)
        if started is not None:
            timed.observe(self._clock.seconds() - started)
        if request.code == 503 and route in self.busy_routes:
            self._refused.labels(self.busy_routes[route]).inc()

    def request_refused(self, refusal: Refusal) -> None:
        self._refused.labels(str(refusal.code)).inc()

    def text(self) -> bytes:
        """
        The metrics of this process, in Prometheus's text format.
        """
        return generate_latest(self.registry)


class _LiveGauges(Collector):
    """
    The gauges read from the live objects when a scrape asks.
    """

    def __init__(self, site: Site, queues: dict[str, QueueDepth]) -> None:
        self._site = site
        self._queues = queues

    def readings(self) -> tuple[int, int | None, dict[str, int]]:
        return (
            len(self._site.channels),
            self._site.sessions.live_count(),
            {name: depth() for name, depth in self._queues.items()},
        )

    def sessions_counted_together(self) -> bool:
        """
        Whether every process reads the same count of sessions (a shared
        store's engine), rather than its own.
        """
        return self._site.sessions.counted_together

    def collect(self) -> Iterator[Metric]:
        connections, sessions, queues = self.readings()
        yield GaugeMetricFamily("http_open_connections", _CONNECTIONS, connections)
        if sessions is not None:
            yield GaugeMetricFamily("http_live_sessions", _SESSIONS, sessions)
        family = GaugeMetricFamily("http_queue_depth", _QUEUES, labels=["queue"])
        for name, depth in queues.items():
            family.add_metric([name], depth)
        yield family


_CONNECTIONS = "Connections open."
_SESSIONS = (
    "Sessions live: in this process's memory, or in a SQLite store's file"
    " (expired ones not yet swept among them); not reported with Redis."
)
_QUEUES = "Requests waiting: bcrypt checks, CGI scripts, WSGI calls."


def _sampled_gauges(gauges: _LiveGauges, registry: CollectorRegistry) -> TimerService:
    """
    A service that copies C{gauges}' readings into multiprocess gauges.
    """
    # Summed over the workers alive; the parent drops those that end.
    mode: Final = "livesum"
    connections = Gauge(
        "http_open_connections",
        _CONNECTIONS,
        registry=registry,
        multiprocess_mode=mode,
    )
    sessions: list[Gauge] = []
    queues = Gauge(
        "http_queue_depth",
        _QUEUES,
        ["queue"],
        registry=registry,
        multiprocess_mode=mode,
    )

    def sample() -> None:
        open_, live, depths = gauges.readings()
        connections.set(open_)
        if live is not None:
            if not sessions:
                # Made at the first sample, once the site has its store: the
                # engine of a shared one gives every worker the same count.
                sessions.append(
                    Gauge(
                        "http_live_sessions",
                        _SESSIONS,
                        registry=registry,
                        multiprocess_mode=(
                            "livemax" if gauges.sessions_counted_together() else mode
                        ),
                    )
                )
            sessions[0].set(live)
        for name, depth in depths.items():
            queues.labels(name).set(depth)

    return TimerService(SAMPLE_SECONDS, sample)


class _MetricsPage(Resource):
    """
    The metrics of C{registry}, in the text format the scraper accepts.
    """

    isLeaf = True

    def __init__(self, registry: CollectorRegistry) -> None:
        super().__init__()
        self._registry = registry

    def render_GET(self, request: IRequest) -> bytes:
        accept = request.getHeader(b"accept")
        encode, content_type = choose_encoder(
            accept.decode("latin-1") if accept else ""
        )
        request.setHeader(b"content-type", content_type.encode("ascii"))
        request.setHeader(b"cache-control", b"no-store")
        text: bytes = encode(self._registry)
        return text


class _NotFound(Resource):
    """
    The root of the metrics site: 404 for everything but C{/metrics}.
    """

    def getChild(self, path: bytes, request: IRequest) -> Resource:
        return self

    def render(self, request: IRequest) -> bytes:
        return render_error(request, 404)


class MetricsSite(server.Site):
    """
    twisted.web's Site serving C{registry} at C{/metrics} (and nothing else),
    without an access log.
    """

    noisy = False
    displayTracebacks = False

    def __init__(self, registry: CollectorRegistry, reactor: IReactorTime) -> None:
        root = _NotFound()
        root.putChild(b"metrics", _MetricsPage(registry))
        super().__init__(root, reactor=reactor)

    def log(self, request: server.Request) -> None:  # type: ignore[override]
        pass
