"""
C{--workers N}: one parent that binds, N worker processes that serve.

The parent binds every endpoint once (so port 0 means one port for all, and
the log has one C{listening on} line per endpoint, written once a worker
serves) and starts N copies of C{python -m app} with the same options.  A
TCP or TLS address is bound with C{SO_REUSEPORT} and each worker listens on
a socket of its own there, so the kernel spreads connections evenly (with
one shared socket, whichever worker wakes first takes a whole burst).  A
UNIX socket is listened on by the parent and handed down.  Each worker is a
full server.  A socket handed over by systemd (C{systemd:} endpoints, read
from C{LISTEN_FDS} once, by the parent) is handed down as a UNIX socket is.

The parent restarts a worker that dies: at once if it served for a while,
after a delay that doubles with each quick death if it dies young (a worker
that cannot start must not make the parent spin).  It forwards SIGHUP
(access log reopening) and, on SIGINT or SIGTERM, stops every worker
gracefully before it exits.  A worker whose parent goes away (its standard
input closes) stops too.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import IO, Any

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import (
    AdoptedStreamServerEndpoint,
    SSL4ServerEndpoint,
    TCP4ServerEndpoint,
    TCP6ServerEndpoint,
)
from twisted.internet.error import ConnectionDone, ProcessDone, ProcessTerminated
from twisted.internet.interfaces import (
    IDelayedCall,
    IListeningPort,
    IReactorTime,
    IReadDescriptor,
    IStreamServerEndpoint,
)
from twisted.internet.protocol import Factory, ProcessProtocol, Protocol
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from zope.interface import implementer

from app.compat.twisted import (
    adopt_unix_port,
    endpoint_address,
    endpoint_tls_context,
)
from app.config import DIGEST_KEY_VARIABLE, SECRET_KEY_VARIABLE

WORKER_OPTION = "--worker-sockets"
#: The environment variable naming the descriptor a worker says "ready" on.
READY_VARIABLE = "APP_WORKER_READY_FD"
#: The environment variable giving a worker its number (0 for the first).
NUMBER_VARIABLE = "APP_WORKER_NUMBER"
#: A worker that ends sooner than this after its start died young: it is
#: restarted after a delay, doubled with each young death up to the most.
YOUNG_SECONDS = 5.0
FIRST_RESTART_DELAY = 1.0
MOST_RESTART_DELAY = 30.0
#: The endpoint type of sockets passed by systemd's socket activation.
ACTIVATED = "systemd"
#: What socket activation tells the process it starts; not for the workers.
_ACTIVATION_VARIABLES = ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")
STOP_SECONDS = 15.0

log = Logger()


@dataclass(frozen=True)
class InheritedSocket:
    """
    A listening socket handed from the parent to a worker: an inherited
    descriptor C{fd}, or (C{fd} of -1) the address a worker binds a socket of
    its own to, with C{SO_REUSEPORT}, so that the kernel spreads connections
    evenly over the workers.
    """

    fd: int
    family: int
    endpoint: str
    host: str = ""
    port: int = 0
    backlog: int = 50


def split_worker_option(
    argv: Sequence[str],
) -> tuple[list[str], list[InheritedSocket] | None]:
    """
    Remove the parent's private option from C{argv}; return the remaining
    arguments and the sockets it names (C{None} outside a worker).
    """
    args = list(argv)
    if WORKER_OPTION not in args:
        return args, None
    index = args.index(WORKER_OPTION)
    spec = args[index + 1]
    del args[index : index + 2]
    sockets = [InheritedSocket(**entry) for entry in json.loads(spec)]
    return args, sockets


def worker_arguments(
    argv: Sequence[str], sockets: Sequence[InheritedSocket]
) -> list[str]:
    """
    The command line of a worker: the parent's own options, one worker, and
    the sockets to adopt.
    """
    args = list(argv)
    while "--workers" in args:
        index = args.index("--workers")
        del args[index : index + 2]
    args = [arg for arg in args if not arg.startswith("--workers=")]
    spec = json.dumps([vars(entry) for entry in sockets])
    # -P: the working directory is not put first on sys.path, where a user's
    # app.py would be run instead of the server (see app/__main__.py).
    return [sys.executable, "-P", "-m", "app", *args, WORKER_OPTION, spec]


def activated_endpoint(
    reactor: Any, inherited: InheritedSocket
) -> IStreamServerEndpoint | None:
    """
    In a worker, the endpoint of a socket that systemd passed to the parent:
    twisted's C{systemd:} parser finds nothing here (the parent took
    C{LISTEN_FDS}), so the endpoint is the descriptor handed down instead.
    C{None} for any other socket, whose C{--listen} string parses as usual.
    """
    if inherited.fd < 0 or inherited.endpoint.split(":", 1)[0] != ACTIVATED:
        return None
    return AdoptedStreamServerEndpoint(reactor, inherited.fd, inherited.family)


def adopt(
    reactor: Any, inherited: InheritedSocket, endpoint: IStreamServerEndpoint, site: Any
) -> IListeningPort:
    """
    Serve C{site} on a socket bound by the parent.
    """
    factory = site
    # The endpoint parsed from the same string knows the TLS settings; its
    # context factory is private to twisted's endpoint but is the only way to
    # reuse exactly what "ssl:..." configured.
    context = endpoint_tls_context(endpoint)
    if context is not None:
        factory = TLSMemoryBIOFactory(context, False, site)
    if inherited.fd >= 0:
        fd = inherited.fd
    else:
        own = _reusable_socket(inherited.family)
        own.bind((inherited.host, inherited.port))
        own.listen(inherited.backlog)
        own.setblocking(False)
        fd = own.detach()
    port: IListeningPort
    if inherited.family == socket.AF_UNIX:
        # Only the parent removes the socket file, once, when it stops.
        port = adopt_unix_port(reactor, fd, factory)
    else:
        port = reactor.adoptStreamPort(fd, inherited.family, factory)
    os.close(fd)  # the port keeps a duplicate
    return port


def _reusable_socket(family: int) -> socket.socket:
    reusable = socket.socket(family, socket.SOCK_STREAM)
    reusable.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    reusable.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    return reusable


def _reusable_address(
    endpoint: IStreamServerEndpoint,
) -> tuple[str, int, int, int] | None:
    """
    The interface, port, backlog and address family of a TCP or TLS endpoint
    (read from twisted's endpoint objects, which keep them private), or
    C{None} for any other kind or where C{SO_REUSEPORT} does not exist.
    """
    if not hasattr(socket, "SO_REUSEPORT"):
        return None
    if not isinstance(endpoint, (TCP4ServerEndpoint, SSL4ServerEndpoint)):
        return None
    interface, number, backlog = endpoint_address(endpoint)
    v6 = isinstance(endpoint, TCP6ServerEndpoint) or ":" in interface
    family = socket.AF_INET6 if v6 else socket.AF_INET
    return interface or ("::" if v6 else "0.0.0.0"), number, backlog, int(family)


@implementer(IListeningPort)
class _ReservedPort:
    """
    A TCP port the parent holds bound but not listening, so that it stays
    the workers' while they listen on it with C{SO_REUSEPORT}.
    """

    def __init__(self, reserved: socket.socket) -> None:
        self._socket = reserved

    def startListening(self) -> None:
        pass

    def stopListening(self) -> None:
        self._socket.close()

    def getHost(self) -> IPv4Address | IPv6Address:
        host, number = self._socket.getsockname()[:2]
        if self._socket.family == socket.AF_INET6:
            return IPv6Address("TCP", host, number)
        return IPv4Address("TCP", host, number)


class _Nothing(Protocol):
    pass


def _family(port: IListeningPort) -> int:
    address = port.getHost()
    kind = type(address).__name__
    if kind == "UNIXAddress":
        return int(socket.AF_UNIX)
    if kind == "IPv6Address":
        return int(socket.AF_INET6)
    return int(socket.AF_INET)


async def bind_for_workers(
    endpoint: IStreamServerEndpoint, description: str
) -> tuple[IListeningPort, InheritedSocket]:
    """
    Bind C{endpoint} in the parent without ever accepting there.

    A TCP or TLS address is bound with C{SO_REUSEPORT} and not listened on:
    each worker listens on a socket of its own there.  Other endpoints
    (UNIX sockets) are listened on here and the socket handed down; all the
    workers then accept from it.
    """
    address = _reusable_address(endpoint)
    if address is not None:
        host, number, backlog, family = address
        reserved = _reusable_socket(family)
        try:
            reserved.bind((host, number))
        except OSError:
            reserved.close()
            raise
        bound = _ReservedPort(reserved)
        actual = bound.getHost()
        return bound, InheritedSocket(
            -1, family, description, actual.host, actual.port, backlog
        )
    holder = Factory.forProtocol(_Nothing)
    holder.noisy = False  # no "Starting factory <…>" line
    port = await endpoint.listen(holder)
    # The workers accept; the parent only keeps the socket open.
    port.stopReading()  # type: ignore[attr-defined]
    fd = port.fileno()  # type: ignore[attr-defined]
    os.set_inheritable(fd, True)
    return port, InheritedSocket(fd, _family(port), description)


class _Worker(ProcessProtocol):
    def __init__(self, supervisor: Supervisor, number: int, started: float) -> None:
        self.supervisor = supervisor
        self.number = number
        self.started = started
        self.pid = 0
        self.ended: Deferred[None] = Deferred()

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        if childFD == self.supervisor.ready_fd and data:
            self.supervisor.worker_ready()

    def processEnded(self, reason: Failure) -> None:
        self.ended.callback(None)
        self.supervisor.worker_ended(self, reason)


def how_it_ended(reason: Failure) -> str:
    """
    How a worker process ended, for the log: its exit status or its signal.
    """
    ended = reason.value
    if not isinstance(ended, (ProcessDone, ProcessTerminated)):
        return str(ended)
    if ended.signal is not None:
        try:
            name = signal.Signals(ended.signal).name
        except ValueError:
            name = f"signal {ended.signal}"
        return f"was killed by {name}"
    return f"exited with status {ended.exitCode}"


class Supervisor:
    """
    Keeps N workers running until told to stop.

    Each worker's restart delay is timed on C{clock} (the reactor unless
    given): it starts at L{FIRST_RESTART_DELAY}, doubles with each death
    within L{YOUNG_SECONDS} of a start up to L{MOST_RESTART_DELAY}, and goes
    back to the first once a worker outlives L{YOUNG_SECONDS}, which is
    restarted at once.  Workers get C{environment} on top of the parent's;
    C{worker_ended} is called with the pid of each that ends.
    """

    def __init__(
        self,
        reactor: Any,
        argv: list[str],
        sockets: list[InheritedSocket],
        count: int,
        clock: IReactorTime | None = None,
        environment: Mapping[str, str] | None = None,
        worker_ended: Callable[[int], None] | None = None,
    ) -> None:
        self._reactor = reactor
        self._clock: IReactorTime = reactor if clock is None else clock
        self._argv = argv
        self._sockets = sockets
        self._count = count
        self._workers: dict[int, _Worker] = {}
        self._restart_delays: dict[int, float] = {}
        self._restarts: dict[int, IDelayedCall] = {}
        self._stopping = False
        #: Fires once the first worker serves every endpoint.
        self.ready: Deferred[None] = Deferred()
        #: The descriptor workers write "ready" to, clear of inherited ones.
        self.ready_fd = max([s.fd for s in sockets] + [2]) + 1
        # Every worker must accept the Digest nonces the others hand out, and
        # open the session records the others seal: one secret for all.
        self._environment = dict(os.environ)
        for name in _ACTIVATION_VARIABLES:
            self._environment.pop(name, None)
        self._environment.setdefault(
            SECRET_KEY_VARIABLE,
            self._environment.get(DIGEST_KEY_VARIABLE) or os.urandom(32).hex(),
        )
        self._environment[READY_VARIABLE] = str(self.ready_fd)
        self._environment.update(environment or {})
        #: Called with the pid of each worker that ends.
        self._worker_ended = worker_ended

    def start(self) -> None:
        for number in range(self._count):
            self._spawn(number)

    def _spawn(self, number: int) -> None:
        self._restarts.pop(number, None)
        if self._stopping:
            return
        worker = _Worker(self, number, self._clock.seconds())
        child_fds: dict[int, int | str] = {0: "w", 1: 1, 2: 2, self.ready_fd: "r"}
        for inherited in self._sockets:
            if inherited.fd >= 0:
                child_fds[inherited.fd] = inherited.fd
        process = self._reactor.spawnProcess(
            worker,
            self._argv[0],
            self._argv,
            env={**self._environment, NUMBER_VARIABLE: str(number)},
            childFDs=child_fds,
        )
        worker.pid = process.pid
        self._workers[number] = worker
        log.info(
            "worker {number} started (pid {pid})",
            number=number,
            pid=process.pid,
        )

    def worker_ready(self) -> None:
        if not self.ready.called:
            self.ready.callback(None)

    def worker_ended(self, worker: _Worker, reason: Failure) -> None:
        self._workers.pop(worker.number, None)
        if self._worker_ended is not None:
            self._worker_ended(worker.pid)
        if self._stopping:
            return
        lived = self._clock.seconds() - worker.started
        delay = self._restart_delay(worker.number, lived)
        log.warn(
            "worker {number} {how} after {lived} s; restarting {when}",
            number=worker.number,
            how=how_it_ended(reason),
            lived=f"{lived:.1f}",
            when=f"in {delay:g} s" if delay else "now",
        )
        if delay:
            self._restarts[worker.number] = self._clock.callLater(
                delay, self._spawn, worker.number
            )
        else:
            self._spawn(worker.number)

    def _restart_delay(self, number: int, lived: float) -> float:
        """
        How long to wait before restarting worker C{number}, which ended
        C{lived} seconds after its start, and note the delay for its next
        death.
        """
        if lived > YOUNG_SECONDS:
            self._restart_delays[number] = FIRST_RESTART_DELAY
            return 0.0
        delay = self._restart_delays.get(number, FIRST_RESTART_DELAY)
        self._restart_delays[number] = min(delay * 2, MOST_RESTART_DELAY)
        return delay

    def signal_all(self, number: int) -> None:
        for worker in list(self._workers.values()):
            if worker.transport is not None and worker.transport.pid:
                worker.transport.signalProcess(number)

    async def stop(self) -> None:
        """
        Ask every worker to stop gracefully; kill what is left after a while.
        """
        self._stopping = True
        for restart in self._restarts.values():
            restart.cancel()
        self._restarts.clear()
        waiting = [worker.ended for worker in self._workers.values()]
        self.signal_all(signal.SIGTERM)
        timer = self._clock.callLater(STOP_SECONDS, self.signal_all, signal.SIGKILL)
        for ended in waiting:
            await ended
        if timer.active():
            timer.cancel()


@implementer(IReadDescriptor)
class _ParentWatch:
    """
    A worker's standard input, a pipe from the parent: it reads end-of-file
    when the parent goes away, however it went.
    """

    def __init__(self, reactor: Any) -> None:
        self._reactor = reactor

    def fileno(self) -> int:
        return 0

    def logPrefix(self) -> str:
        return "parent-watch"

    def doRead(self) -> Failure | None:
        if os.read(0, 4096):
            return None
        return Failure(ConnectionDone())

    def connectionLost(self, reason: Failure) -> None:
        self._reactor.removeReader(self)
        if self._reactor.running:
            log.info("parent process went away; stopping")
            self._reactor.stop()


def first_worker() -> bool:
    """
    Whether this process is the first worker of a parent (or no worker at
    all): what every worker would say alike, it says alone.
    """
    return os.environ.get(NUMBER_VARIABLE, "0") == "0"


def say_ready() -> None:
    """
    Tell the parent that this worker serves every endpoint now.
    """
    fd = int(os.environ.get(READY_VARIABLE, "-1"))
    if fd < 0:
        return
    try:
        os.write(fd, b"ready\n")
        os.close(fd)
    except OSError:
        pass  # the parent went away; watch_parent stops this worker


def watch_parent(reactor: Any) -> None:
    """
    Stop this worker when its parent's end of standard input closes.
    """
    reactor.addReader(_ParentWatch(reactor))


def write_error(stderr: IO[str], message: str) -> None:
    stderr.write(message + "\n")
    stderr.flush()
