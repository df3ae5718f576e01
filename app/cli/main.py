"""
The command line: parse, build the site, listen, run, stop gracefully.
"""

from __future__ import annotations

import gc
import os
import resource
import signal
import sys
import time
from collections.abc import Sequence
from dataclasses import replace
from typing import IO, Any

from prometheus_client import CollectorRegistry
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IListeningPort, IStreamServerEndpoint
from twisted.logger import Logger

from app.cli.endpoints import (
    bind_problem,
    check_endpoint,
    parse_problem,
    with_unix_mode,
)
from app.cli.log import start_logging
from app.cli.metrics import WorkerMetrics, metrics_endpoint
from app.cli.options import config_from_args
from app.cli.passwd import passwd_main
from app.cli.private import PrivateDirectory
from app.cli.workers import (
    InheritedSocket,
    Supervisor,
    activated_endpoint,
    adopt,
    bind_for_workers,
    first_worker,
    say_ready,
    split_worker_option,
    watch_parent,
    worker_arguments,
)
from app.compat.twisted import answer_busy_when_out_of_descriptors
from app.config import Config, ConfigError
from app.http.access_log import access_log_of, reopen_on_sighup
from app.http.channel import closing_response
from app.http.metrics import MetricsSite
from app.http.pages import RETRY_AFTER
from app.http.site import Site
from app.site import build_site

PROG = "python -m app"
#: Young-generation thresholds of the cyclic garbage collector (CPython's
#: default is 700, 10, 10).  Each full collection walks every live object,
#: the session store included: with the default, a server holding 100 000
#: sessions stalls 30-80 ms several times a second under load (p99 43 ms on
#: /session, 28 ms on /health, measured); with these, p99 stays under 5 ms.
GC_THRESHOLDS = (10_000, 10, 10)

log = Logger()


def listening_url(endpoint: str, port: IListeningPort) -> str:
    """
    The URL a client uses to reach C{port}, bound from C{endpoint}.
    """
    address = port.getHost()
    host = getattr(address, "host", None)
    if host is None:
        name = getattr(address, "name", "?")
        if isinstance(name, bytes):
            name = name.decode("utf-8", "replace")
        return f"unix:{name}"
    scheme = "https" if endpoint.split(":", 1)[0] in ("ssl", "tls") else "http"
    if ":" in host:
        host = f"[{host}]"
    return f"{scheme}://{host}:{getattr(address, 'port', 0)}/"


def parse_endpoints(
    reactor: Any, config: Config, inherited: list[InheritedSocket] | None = None
) -> list[IStreamServerEndpoint]:
    """
    Turn every C{--listen} string into an endpoint, or raise L{ConfigError}.
    In a worker, a socket systemd passed to the parent is the descriptor
    handed down, not a string to parse again.
    """
    endpoints = []
    for index, description in enumerate(config.listen):
        activated = (
            None if inherited is None else activated_endpoint(reactor, inherited[index])
        )
        if activated is not None:
            endpoints.append(activated)
            continue
        check_endpoint(description)
        try:
            endpoints.append(
                serverFromString(reactor, with_unix_mode(with_backlog(description)))
            )
        except Exception as error:  # twisted raises many kinds for bad strings
            raise parse_problem(description, error) from None
    return endpoints


#: The listen backlog where an endpoint string names none (twisted's is 50:
#: a burst of connections waits for SYN retries).
BACKLOG = 511
#: Descriptors kept for what is not a connection: files, scripts, logs.
SPARE_DESCRIPTORS = 64
_BACKLOG_TYPES = ("tcp:", "tcp6:", "ssl:", "unix:")


def with_backlog(description: str) -> str:
    """
    C{description} with C{backlog=511} where it is a TCP, TLS or UNIX
    endpoint that names no backlog of its own.
    """
    if description.startswith(_BACKLOG_TYPES) and ":backlog=" not in description:
        return f"{description}:backlog={BACKLOG}"
    return description


def within_descriptor_limit(config: Config) -> Config:
    """
    Raise the soft limit on open files to the hard one, and keep
    C{--max-connections} below it, so that accepting a connection never
    runs out of descriptors that files and scripts need.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = hard if hard != resource.RLIM_INFINITY else 1 << 20
    if soft != resource.RLIM_INFINITY and soft < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
            soft = wanted
        except (ValueError, OSError):
            pass
    usable = soft - SPARE_DESCRIPTORS if soft != resource.RLIM_INFINITY else 1 << 20
    if config.max_connections <= usable:
        return config
    log.warn(
        "--max-connections {wanted} is more than {usable} open files allow; "
        "using {usable}",
        wanted=config.max_connections,
        usable=max(usable, 1),
    )
    return replace(config, max_connections=max(usable, 1))


def main(
    argv: Sequence[str],
    reactor: Any,
    stdout: IO[str] = sys.stdout,
    stderr: IO[str] = sys.stderr,
    prog: str = PROG,
) -> int:
    """
    Run C{python -m app ARGV} (or C{PROG ARGV}) on C{reactor}; return the
    exit status.
    """
    if list(argv[:1]) == ["passwd"]:
        return passwd_main(argv[1:], stderr=stderr, prog=f"{prog} passwd")
    argv, inherited = split_worker_option(argv)
    try:
        config = config_from_args(argv, prog)
        endpoints = parse_endpoints(reactor, config, inherited)
        metrics = metrics_endpoint(reactor, config)
    except ConfigError as error:
        stderr.write(f"{prog}: error: {error}\n")
        return 2
    except SystemExit as exit_:  # argparse: usage errors and --help
        return int(exit_.code or 0)

    start_logging(config.log_format, stdout, config.log_level)
    tune_garbage_collector()
    config = within_descriptor_limit(config)
    if config.workers > 1 and inherited is None:
        return supervise(reactor, config, argv, endpoints, stderr, metrics, prog)
    # Every worker builds the same site: the first says what it finds.
    site = build_site(config, reactor, warn_shadowed=first_worker())
    reopen_on_sighup(reactor, access_log_of(site))
    if inherited is not None:
        metrics = None  # the parent serves the workers' metrics
    return serve(reactor, site, config, endpoints, stderr, inherited, metrics, prog)


def serve(
    reactor: Any,
    site: Site,
    config: Config,
    endpoints: list[IStreamServerEndpoint],
    stderr: IO[str],
    inherited: list[InheritedSocket] | None = None,
    metrics: IStreamServerEndpoint | None = None,
    prog: str = PROG,
) -> int:
    """
    Listen on C{endpoints} (or, in a worker, adopt the sockets the parent
    bound), and on C{metrics} for the site's metrics, and run until a
    signal stops the reactor.
    """
    status = [0]
    ports: list[IListeningPort] = site.ports
    metrics_ports: list[IListeningPort] = []
    answer_busy_when_out_of_descriptors(
        lambda: closing_response(503, retry_after=RETRY_AFTER), time.monotonic
    )

    async def start() -> None:
        for index, (description, endpoint) in enumerate(
            zip(config.listen, endpoints, strict=True)
        ):
            try:
                if inherited is None:
                    port = await endpoint.listen(site)
                else:
                    port = adopt(reactor, inherited[index], endpoint, site)
            except Exception as error:
                status[0] = cannot_listen(reactor, stderr, description, error, prog)
                return
            ports.append(port)
            if inherited is None:
                log.info("listening on {url}", url=listening_url(description, port))
        if metrics is not None and site.metrics is not None:
            metrics_port = await listen_for_metrics(
                reactor, metrics, config, site.metrics.registry, stderr, prog
            )
            if metrics_port is None:
                status[0] = 1
                return
            metrics_ports.append(metrics_port)
        site.service.startService()
        if inherited is not None:
            say_ready()
            watch_parent(reactor)

    def stop() -> Deferred[None]:
        for port in metrics_ports:
            port.stopListening()
        return site.shutdown(ports, config.grace)

    reactor.addSystemEventTrigger("before", "shutdown", stop)
    reactor.callWhenRunning(install_stop_signals, reactor)
    reactor.callWhenRunning(lambda: Deferred.fromCoroutine(start()))
    reactor.run()
    return status[0]


def install_stop_signals(reactor: Any) -> None:
    """
    SIGINT and SIGTERM start a graceful stop; a second one while stopping is
    noted and ignored (twisted's own handler would log a traceback for it).
    """
    stopping: list[int] = []

    def stop(number: int, frame: object) -> None:
        name = signal.Signals(number).name
        if stopping:
            reactor.callFromThread(log.info, "{signal}: already stopping", signal=name)
            return
        stopping.append(number)
        reactor.callFromThread(log.info, "{signal}: stopping gracefully", signal=name)
        reactor.callFromThread(reactor.stop)

    for number in (signal.SIGINT, signal.SIGTERM):
        signal.signal(number, stop)


def cannot_listen(
    reactor: Any,
    stderr: IO[str],
    description: str,
    error: Exception,
    prog: str = PROG,
) -> int:
    """
    Say which endpoint could not be bound, stop, and return exit status 1.
    """
    stderr.write(f"{prog}: error: {bind_problem(description, error)}\n")
    stderr.flush()
    reactor.stop()
    return 1


async def listen_for_metrics(
    reactor: Any,
    endpoint: IStreamServerEndpoint,
    config: Config,
    registry: CollectorRegistry,
    stderr: IO[str],
    prog: str = PROG,
) -> IListeningPort | None:
    """
    Serve C{registry} at C{/metrics} on C{endpoint} (C{config.metrics}); on
    failure, say why, stop, and return C{None}.
    """
    assert config.metrics is not None
    try:
        port: IListeningPort = await endpoint.listen(MetricsSite(registry, reactor))
    except Exception as error:
        cannot_listen(reactor, stderr, config.metrics, error, prog)
        return None
    log.info("metrics listening on {url}", url=listening_url(config.metrics, port))
    return port


def tune_garbage_collector() -> None:
    """
    Collect young objects less often, so that full collections are rare.
    """
    gc.set_threshold(*GC_THRESHOLDS)


#: Where the workers' private session file goes when it can.
SHARED_MEMORY = "/dev/shm"  # noqa: S108 (mkdtemp makes a private directory in it)


def said_swept(directory: PrivateDirectory) -> None:
    """
    Log the directories that killed parents left and C{directory}'s making
    removed.
    """
    for path in directory.swept:
        log.info("removed {path}, left by a server that was killed", path=path)


def supervise(
    reactor: Any,
    config: Config,
    argv: list[str],
    endpoints: list[IStreamServerEndpoint],
    stderr: IO[str],
    metrics: IStreamServerEndpoint | None = None,
    prog: str = PROG,
) -> int:
    """
    Bind every endpoint, then run C{config.workers} workers on the sockets
    until a signal stops the reactor; serve the workers' metrics on
    C{metrics}.
    """
    status = [0]
    ports: list[IListeningPort] = []
    supervisors: list[Supervisor] = []
    private = None
    if config.sessions is None:
        # The workers share their sessions in a SQLite file of their own,
        # removed when the server stops: in memory (tmpfs) where there is
        # one, as nothing in it outlives the server.
        shared_memory = SHARED_MEMORY if os.access(SHARED_MEMORY, os.W_OK) else None
        private = PrivateDirectory("app-sessions-", shared_memory)
        argv = [*argv, "--sessions", f"sqlite:{private.path}/sessions.sqlite3"]
        said_swept(private)
    shared = None if metrics is None else WorkerMetrics()
    if shared is not None:
        said_swept(shared.directory)
    metrics_ports: list[IListeningPort] = []

    async def start() -> None:
        inherited = []
        for description, endpoint in zip(config.listen, endpoints, strict=True):
            try:
                port, socket_ = await bind_for_workers(endpoint, description)
            except Exception as error:
                status[0] = cannot_listen(reactor, stderr, description, error, prog)
                return
            ports.append(port)
            inherited.append(socket_)
        supervisor = Supervisor(
            reactor,
            worker_arguments(argv, inherited),
            inherited,
            config.workers,
            environment=None if shared is None else shared.environment(),
            worker_ended=None if shared is None else shared.worker_ended,
        )
        supervisors.append(supervisor)
        supervisor.start()
        # Said once a worker listens: a client that reads it can connect.
        await supervisor.ready
        for description, port in zip(config.listen, ports, strict=True):
            log.info("listening on {url}", url=listening_url(description, port))
        if metrics is not None and shared is not None:
            metrics_port = await listen_for_metrics(
                reactor, metrics, config, shared.registry, stderr, prog
            )
            if metrics_port is None:
                status[0] = 1
                return
            metrics_ports.append(metrics_port)

    async def stop() -> None:
        for port in metrics_ports:
            await maybeDeferred(port.stopListening)
        for supervisor in supervisors:
            await supervisor.stop()
        for port in ports:
            await maybeDeferred(port.stopListening)

    def reopen_logs(number: int, frame: object) -> None:
        for supervisor in supervisors:
            reactor.callFromThread(supervisor.signal_all, signal.SIGHUP)

    signal.signal(signal.SIGHUP, reopen_logs)
    reactor.addSystemEventTrigger(
        "before", "shutdown", lambda: Deferred.fromCoroutine(stop())
    )
    reactor.callWhenRunning(install_stop_signals, reactor)
    reactor.callWhenRunning(lambda: Deferred.fromCoroutine(start()))
    reactor.run()
    if shared is not None:
        shared.remove()
    if private is not None:
        private.remove()
    return status[0]
