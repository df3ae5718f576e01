"""
Fixtures shared by the whole suite: a live demo server and raw sockets, an
in-memory client of a site, and the one way a test waits on the reactor for
something to happen.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import bcrypt
import pytest
import pytest_twisted
import treq
from hypothesis import settings
from treq.testing import StubTreq
from twisted.internet import reactor
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IListeningPort, IReactorTime, ITCPTransport
from twisted.internet.protocol import Protocol, ServerFactory
from twisted.internet.task import deferLater
from twisted.internet.testing import MemoryReactor
from twisted.logger import ILogObserver, LogEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.http_headers import Headers
from zope.interface import provider

from app.compat.treq import undecoded_agent
from app.config import Config
from app.site import build_site
from app.testing import LiveServer, stub_treq
from tests.paths import ROOT

_T = TypeVar("_T")

settings.register_profile("ci", derandomize=True, deadline=None, max_examples=200)
settings.register_profile("dev", deadline=None, max_examples=100)
settings.load_profile("ci" if os.environ.get("CI") else "dev")


@pytest_twisted.async_yield_fixture
async def server() -> AsyncIterator[LiveServer]:
    """
    The demo site, as C{python -m app} serves it, on 127.0.0.1 port 0.
    """
    live = await LiveServer.start([])
    try:
        yield live
    finally:
        await live.stop()


def memory_client(clock: IReactorTime) -> StubTreq:
    """
    A client of the demo site, in memory: its timers run on C{clock}, and its
    reactor opens nothing.
    """
    return stub_treq(build_site(Config(), MemoryReactor(), clock))


def success_result_of(deferred: Deferred[_T]) -> _T:
    """
    The result of a L{Deferred} that has already fired, as
    L{SynchronousTestCase.successResultOf} gives it: fail if it has not
    fired, or failed.
    """
    return SynchronousTestCase().successResultOf(deferred)


#: The origin in-memory requests are addressed to.
MEMORY_ORIGIN = "http://example.invalid"


def fetch(client: StubTreq, method: str, path: str, **kwargs: Any) -> Any:
    """
    The response to a request that the site answers at once, in memory.
    """
    # StubTreq sets its methods at run time.
    pending = client.request(method, MEMORY_ORIGIN + path, **kwargs)  # type: ignore[attr-defined]
    return success_result_of(pending)


def fetch_undecoded(
    client: StubTreq, path: str, method: bytes = b"GET", **headers: str
) -> tuple[Any, bytes]:
    """
    The response to a request with C{headers} (C{accept_encoding="gzip"}
    for C{Accept-Encoding}), in memory, and its body as sent: treq's own
    client would ask for gzip and decode it.
    """
    raw = Headers({name.replace("_", "-"): [value] for name, value in headers.items()})
    pending = undecoded_agent(client).request(
        method, (MEMORY_ORIGIN + path).encode(), raw
    )
    client.flush()
    response = success_result_of(pending)
    body = treq.content(response)
    client.flush()
    return response, success_result_of(body)


def process_gone(pid: int) -> bool:
    """
    Whether process C{pid} is gone, or a zombie (killed, not yet reaped).
    """
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state in ("Z", "X")


def text_of(response: Any) -> str:
    """
    The body of a response fetched in memory, as text.
    """
    text: str = success_result_of(response.text())
    return text


def content_of(response: Any) -> bytes:
    """
    The body of a response fetched in memory.
    """
    content: bytes = success_result_of(response.content())
    return content


def header_of(response: Any, name: bytes) -> bytes | None:
    """
    Every value of header C{name} in C{response}, joined by commas, or
    C{None}.
    """
    values = response.headers.getRawHeaders(name)
    return None if values is None else b",".join(values)


def length_of(response: Any) -> int | None:
    """
    The Content-Length of C{response} (which twisted's client keeps apart
    from its headers), or C{None}.
    """
    length = response.length
    return length if isinstance(length, int) else None


@pytest.fixture
def captured_log() -> Iterator[list[LogEvent]]:
    """
    Every event logged during the test, through the global log publisher.
    """
    events: list[LogEvent] = []

    @provider(ILogObserver)
    def observe(event: LogEvent) -> None:
        events.append(event)

    globalLogPublisher.addObserver(observe)
    try:
        yield events
    finally:
        globalLogPublisher.removeObserver(observe)


def failures(events: list[LogEvent]) -> list[LogEvent]:
    """
    The events that carry a failure (a traceback).
    """
    return [event for event in events if "log_failure" in event]


async def stop_on_clock(live: LiveServer) -> None:
    """
    Stop a server whose site runs on a test's L{Clock}: a graceful stop waits
    for open connections on that clock, which nothing advances once a test
    has failed midway, so cut them first.
    """
    for channel in list(live.site.channels):
        if channel.transport is not None:
            ITCPTransport(channel.transport).abortConnection()
    await live.stop()


async def eventually(
    condition: Callable[[], _T | None], what: str, timeout: float = 10.0
) -> _T:
    """
    Let the reactor run until C{condition} returns something true, and return
    that; fail naming C{what} after C{timeout} seconds. For what real I/O,
    threads or processes do: a test's own timers it advances on its clock.
    """
    deadline = reactor.seconds() + timeout
    while not (value := condition()):
        if reactor.seconds() >= deadline:
            raise AssertionError(f"still waiting for {what} after {timeout} s")
        await deferLater(reactor, 0.01, lambda: None)
    return value


def listen(factory: ServerFactory[Any]) -> IListeningPort:
    """
    C{factory} listening on 127.0.0.1, on a port the system chooses.
    """
    return reactor.listenTCP(0, factory, interface="127.0.0.1")


def reads(protocol: Protocol) -> bytearray:
    """
    The bytes C{protocol} is handed from now on, as it is handed them: what
    the server side of a connection has read, to wait for.
    """
    read = bytearray()
    received = protocol.dataReceived

    def record(data: bytes) -> None:
        read.extend(data)
        received(data)

    protocol.dataReceived = record  # type: ignore[method-assign]
    return read


def port_number(port: IListeningPort) -> int:
    """
    The TCP port C{port} listens on.
    """
    address = port.getHost()
    assert isinstance(address, IPv4Address)
    return address.port


@pytest.fixture
def hash_calls(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """
    The hashes bcrypt is asked to check a password against, in order.
    """
    calls: list[bytes] = []
    real = bcrypt.checkpw

    def counting(password: bytes, hashed: bytes) -> bool:
        calls.append(hashed)
        return real(password, hashed)

    monkeypatch.setattr(bcrypt, "checkpw", counting)
    return calls


# -- the server as a process of its own ----------------------------------------

#: What the server logs for every endpoint it listens on.
LISTENING = re.compile(r"listening on (https?://[^/\s]+/)")


#: Seconds a process a test started may take to stop when asked.
STOP_TIMEOUT = 3.0


@pytest.fixture
def spawn() -> Iterator[list[subprocess.Popen[str]]]:
    """
    The processes a test starts with L{start_app}, stopped after it: asked
    to stop (a parent of workers then removes its private directories),
    killed if they have not within L{STOP_TIMEOUT} seconds.
    """
    processes: list[subprocess.Popen[str]] = []
    yield processes
    for process in processes:
        if process.poll() is None:
            process.terminate()
    for process in processes:
        try:
            process.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


#: The server's command (pyproject.toml's [project.scripts]), installed
#: beside the Python that runs the tests.
COMMAND = str(Path(sys.executable).parent / "klein-server")


def start_app(
    spawn: list[subprocess.Popen[str]],
    *argv: str,
    prelude: str | None = None,
    program: str | None = None,
    cwd: Path = ROOT,
) -> subprocess.Popen[str]:
    """
    C{python -m app ARGV} as a process of its own, its output piped, run in
    C{cwd}; with C{prelude}, Python code run in that process before the
    server starts; with C{program} (L{COMMAND}), that instead of
    C{python -m app}.
    """
    start = [sys.executable, "-m", "app"] if program is None else [program]
    command = [*start, *argv]
    if prelude is not None:
        command = [
            sys.executable,
            "-c",
            f"{prelude}; import runpy, sys; sys.argv = ['app', *sys.argv[1:]];"
            " runpy.run_module('app', run_name='__main__')",
            *argv,
        ]
    process = subprocess.Popen(
        command,
        cwd=cwd,
        env=dict(os.environ, PYTHONUNBUFFERED="1"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    spawn.append(process)
    return process


def listening_url(process: subprocess.Popen[str], seen: list[str] | None = None) -> str:
    """
    The URL of the next endpoint C{process} says it listens on; the lines
    read meanwhile go into C{seen}.
    """
    assert process.stdout is not None
    for line in process.stdout:
        if seen is not None:
            seen.append(line)
        found = LISTENING.search(line)
        if found:
            return found.group(1)
    assert process.stderr is not None
    raise AssertionError(f"no listening line; stderr: {process.stderr.read()}")


def serving_port(process: subprocess.Popen[str]) -> int:
    """
    The port of the next endpoint C{process} says it listens on; what it
    logs after that is drained (L{drain}).
    """
    port = urlsplit(listening_url(process)).port
    assert port is not None
    drain(process, [])
    return port


def resident_kib(pid: int) -> int:
    """
    The resident memory of process C{pid}, in KiB.
    """
    status = Path(f"/proc/{pid}/status").read_text()
    found = re.search(r"VmRSS:\s+(\d+) kB", status)
    assert found is not None
    return int(found.group(1))


def drain(process: subprocess.Popen[str], into: list[str]) -> None:
    """
    Read the rest of what C{process} logs into C{into}, in a thread, so that
    neither of its pipes ever fills while a test keeps it busy.
    """
    for stream in (process.stdout, process.stderr):
        if stream is not None:
            threading.Thread(target=into.extend, args=(stream,), daemon=True).start()
