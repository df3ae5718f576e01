"""
The command line: parse, build the site, listen, run, stop gracefully.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Sequence
from typing import IO, Any

from twisted.internet.defer import Deferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IListeningPort, IStreamServerEndpoint
from twisted.logger import Logger

from app._config import Config, ConfigError, config_from_args
from app._http import Site
from app._logging import start_logging
from app._site import build_site

PROG = "python -m app"
GRACE_SECONDS = 10.0

log = Logger()


def listening_url(endpoint: str, port: IListeningPort) -> str:
    """
    The URL a client uses to reach C{port}, bound from C{endpoint}.
    """
    address = port.getHost()
    host = getattr(address, "host", None)
    if host is None:
        return f"unix:{getattr(address, 'name', '?')}"
    scheme = "https" if endpoint.split(":", 1)[0] in ("ssl", "tls") else "http"
    if ":" in host:
        host = f"[{host}]"
    return f"{scheme}://{host}:{getattr(address, 'port', 0)}/"


def parse_endpoints(reactor: Any, config: Config) -> list[IStreamServerEndpoint]:
    """
    Turn every C{--listen} string into an endpoint, or raise L{ConfigError}.
    """
    endpoints = []
    for description in config.listen:
        try:
            endpoints.append(serverFromString(reactor, description))
        except Exception as error:  # twisted raises many kinds for bad strings
            raise ConfigError(
                "--listen", f"{description!r}: {type(error).__name__}: {error}"
            ) from None
    return endpoints


def main(
    argv: Sequence[str],
    reactor: Any,
    stdout: IO[str] = sys.stdout,
    stderr: IO[str] = sys.stderr,
) -> int:
    """
    Run C{python -m app ARGV} on C{reactor}; return the exit status.
    """
    try:
        config = config_from_args(argv)
        endpoints = parse_endpoints(reactor, config)
    except ConfigError as error:
        stderr.write(f"{PROG}: error: {error}\n")
        return 2
    except SystemExit as exit_:  # argparse: usage errors and --help
        return int(exit_.code or 0)

    start_logging(config.log_format, stdout)
    site = build_site(config, reactor)
    return serve(reactor, site, config, endpoints, stderr)


def serve(
    reactor: Any,
    site: Site,
    config: Config,
    endpoints: list[IStreamServerEndpoint],
    stderr: IO[str],
) -> int:
    """
    Listen on C{endpoints} and run until a signal stops the reactor.
    """
    status = [0]
    ports: list[IListeningPort] = []

    async def start() -> None:
        for description, endpoint in zip(config.listen, endpoints, strict=True):
            try:
                port = await endpoint.listen(site)
            except Exception as error:
                stderr.write(
                    f"{PROG}: error: cannot listen on {description}: {error}\n"
                )
                stderr.flush()
                status[0] = 1
                reactor.stop()
                return
            ports.append(port)
            log.info("listening on {url}", url=listening_url(description, port))
        site.service.startService()

    def stop() -> Deferred[None]:
        return site.shutdown(ports, GRACE_SECONDS)

    reactor.addSystemEventTrigger("before", "shutdown", stop)
    reactor.callWhenRunning(lambda: Deferred.fromCoroutine(start()))
    reactor.run()
    return status[0]


def install_signal_defaults() -> None:
    """
    SIGTERM and SIGINT are handled by the reactor; make sure a parent that
    ignored them does not leave us deaf.
    """
    for number in (signal.SIGTERM, signal.SIGINT):
        signal.signal(number, signal.SIG_DFL)
