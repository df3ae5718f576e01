"""
C{--metrics ENDPOINT}: where Prometheus scrapes the server.

One process serves its site's own registry there.  With C{--workers}, the
parent serves instead: it makes a private directory for
prometheus-client's multiprocess mode, hands it to the workers in
C{PROMETHEUS_MULTIPROC_DIR}, reads the workers' files when scraped, drops
the gauges of a worker that ended, and removes the directory at exit
(L{app.cli.private}).
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IStreamServerEndpoint

from app.cli.endpoints import check_endpoint, parse_problem, with_unix_mode
from app.cli.private import PrivateDirectory
from app.config import Config, ConfigError
from app.http.metrics import MULTIPROCESS_VARIABLE

OPTION = "--metrics"


def metrics_endpoint(reactor: Any, config: Config) -> IStreamServerEndpoint | None:
    """
    The endpoint C{--metrics} names, checked as C{--listen}'s are, or
    C{None} without the option; raise L{ConfigError} naming C{--metrics}.
    """
    description = config.metrics
    if description is None:
        return None
    try:
        check_endpoint(description)
        endpoint: IStreamServerEndpoint = serverFromString(
            reactor, with_unix_mode(description)
        )
    except ConfigError as error:
        raise ConfigError(OPTION, error.message) from None
    except Exception as error:  # twisted raises many kinds for bad strings
        raise ConfigError(OPTION, parse_problem(description, error).message) from None
    return endpoint


class WorkerMetrics:
    """
    The parent's side of the workers' metrics: their private directory, and
    a registry that reads it.
    """

    def __init__(self) -> None:
        self.directory = PrivateDirectory("app-metrics-")
        self.registry = CollectorRegistry()
        MultiProcessCollector(self.registry, path=self.directory.path)

    def environment(self) -> dict[str, str]:
        """
        What a worker's environment needs to write its metrics here.
        """
        return {MULTIPROCESS_VARIABLE: self.directory.path}

    def worker_ended(self, pid: int) -> None:
        """
        Drop the live gauges of worker C{pid}; its counts stay.
        """
        mark_process_dead(pid, self.directory.path)

    def remove(self) -> None:
        self.directory.remove()
