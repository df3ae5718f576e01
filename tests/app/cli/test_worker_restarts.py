"""
--workers N: a worker that dies young is restarted after a growing delay, and
sockets passed by systemd's socket activation are handed to the workers.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import pytest_twisted
import treq
from twisted.internet.defer import Deferred
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.task import Clock
from twisted.logger import LogEvent, formatEvent
from twisted.python.failure import Failure

from app.cli.workers import Supervisor
from tests.app.cli.test_workers import _children
from tests.conftest import eventually, listening_url, success_result_of
from tests.paths import ROOT


@dataclass(frozen=True)
class _Process:
    pid: int


class _Processes:
    """
    Starts no process: keeps the protocol of each worker a supervisor starts.
    """

    def __init__(self) -> None:
        self.started: list[ProcessProtocol] = []

    def spawnProcess(
        self, protocol: ProcessProtocol, *args: Any, **kwargs: Any
    ) -> _Process:
        self.started.append(protocol)
        return _Process(pid=1000 + len(self.started))

    def end_latest(self, reason: BaseException) -> None:
        self.started[-1].processEnded(Failure(reason))


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def processes() -> _Processes:
    return _Processes()


@pytest.fixture
def supervisor(clock: Clock, processes: _Processes) -> Iterator[Supervisor]:
    supervisor = Supervisor(processes, ["python"], [], 1, clock=clock)
    supervisor.start()
    yield supervisor


def _dies_at_once() -> ProcessTerminated:
    return ProcessTerminated(exitCode=2)


def _restart_lines(events: list[LogEvent]) -> list[str]:
    messages = [formatEvent(event) for event in events]
    return [message for message in messages if "restarting" in message]


def _restarted_after(clock: Clock, processes: _Processes) -> float:
    """
    The seconds until the supervisor starts another worker, to a quarter of a
    second (a step that adds up exactly).
    """
    before = len(processes.started)
    waited = 0.0
    while len(processes.started) == before:
        assert waited < 60, "no restart within 60 s"
        clock.advance(0.25)
        waited += 0.25
    return waited


@pytest.mark.usefixtures("supervisor")
def test_a_worker_that_dies_at_once_is_restarted_after_a_growing_delay(
    clock: Clock, processes: _Processes
) -> None:
    delays = []
    for _ in range(7):
        processes.end_latest(_dies_at_once())
        delays.append(_restarted_after(clock, processes))
    assert delays == [1, 2, 4, 8, 16, 30, 30]


@pytest.mark.usefixtures("supervisor")
def test_the_log_names_the_exit_status_and_the_delay(
    clock: Clock, processes: _Processes, captured_log: list[LogEvent]
) -> None:
    processes.end_latest(_dies_at_once())
    clock.advance(1)
    processes.end_latest(_dies_at_once())
    assert _restart_lines(captured_log) == [
        "worker 0 exited with status 2 after 0.0 s; restarting in 1 s",
        "worker 0 exited with status 2 after 0.0 s; restarting in 2 s",
    ]


@pytest.mark.usefixtures("supervisor")
def test_the_log_names_the_signal_that_killed_a_worker(
    processes: _Processes, captured_log: list[LogEvent]
) -> None:
    processes.end_latest(ProcessTerminated(signal=signal.SIGKILL))
    assert _restart_lines(captured_log) == [
        "worker 0 was killed by SIGKILL after 0.0 s; restarting in 1 s"
    ]


@pytest.mark.usefixtures("supervisor")
def test_a_worker_that_lived_six_seconds_is_restarted_at_once(
    clock: Clock, processes: _Processes, captured_log: list[LogEvent]
) -> None:
    clock.advance(6)
    processes.end_latest(ProcessDone(0))
    assert len(processes.started) == 2
    assert _restart_lines(captured_log) == [
        "worker 0 exited with status 0 after 6.0 s; restarting now"
    ]


@pytest.mark.usefixtures("supervisor")
def test_a_worker_that_lived_six_seconds_resets_the_delay(
    clock: Clock, processes: _Processes
) -> None:
    for _ in range(3):
        processes.end_latest(_dies_at_once())
        _restarted_after(clock, processes)
    clock.advance(6)
    processes.end_latest(_dies_at_once())
    processes.end_latest(_dies_at_once())
    assert _restarted_after(clock, processes) == 1


def test_each_worker_has_a_delay_of_its_own(
    clock: Clock, processes: _Processes
) -> None:
    Supervisor(processes, ["python"], [], 2, clock=clock).start()
    first, second = processes.started
    for _ in range(2):
        first.processEnded(Failure(_dies_at_once()))
        _restarted_after(clock, processes)
        first = processes.started[-1]
    second.processEnded(Failure(_dies_at_once()))
    assert _restarted_after(clock, processes) == 1


def test_stopping_cancels_a_pending_restart(
    clock: Clock, processes: _Processes, supervisor: Supervisor
) -> None:
    processes.end_latest(_dies_at_once())
    success_result_of(Deferred.fromCoroutine(supervisor.stop()))
    assert clock.getDelayedCalls() == []
    clock.advance(60)
    assert len(processes.started) == 1


# Twisted's systemd parser reads LISTEN_FDS only beside LISTEN_FDNAMES (as
# systemd 227 and later set it), and only in the process LISTEN_PID names:
# this runs in the child, puts the socket on descriptor 3, and becomes
# the server, keeping its process id.
_ACTIVATE = """
import os, sys
fd = int(sys.argv[1])
if fd != 3:
    os.dup2(fd, 3)
    os.close(fd)
os.environ.update(LISTEN_FDS="1", LISTEN_FDNAMES="http", LISTEN_PID=str(os.getpid()))
os.execv(sys.argv[2], sys.argv[2:])
"""


def _socket_activated(
    spawn: list[subprocess.Popen[str]],
    listening: socket.socket,
    *argv: str,
) -> subprocess.Popen[str]:
    fd = listening.fileno()
    process = subprocess.Popen(
        [sys.executable, "-c", _ACTIVATE, str(fd), sys.executable, "-m", "app", *argv],
        cwd=ROOT,
        env=dict(os.environ, PYTHONUNBUFFERED="1"),
        pass_fds=[fd],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    spawn.append(process)
    return process


@pytest_twisted.ensureDeferred
async def test_workers_serve_a_socket_passed_by_systemd(
    spawn: list[subprocess.Popen[str]],
) -> None:
    listening = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listening.bind(("127.0.0.1", 0))
    listening.listen(50)
    port = listening.getsockname()[1]
    with listening:
        process = _socket_activated(
            spawn,
            listening,
            "--workers",
            "2",
            "--listen",
            "systemd:domain=INET:index=0",
            "--no-demo",
        )
    # A server that never says it listens is killed, ending the wait below.
    deadline = threading.Timer(30, process.kill)
    deadline.start()
    try:
        url = listening_url(process)
    finally:
        deadline.cancel()
    assert url == f"http://127.0.0.1:{port}/"
    await eventually(
        lambda: len(_children(process.pid)) == 2, "two workers", timeout=15
    )
    workers = _children(process.pid)
    for _ in range(10):
        response = await treq.get(url + "health", persistent=False)
        assert response.code == 200
    assert _children(process.pid) == workers

    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=30) == 0
    assert process.stdout is not None and process.stderr is not None
    log = process.stdout.read()
    assert log.count("restarting") == 0, log
    assert "error" not in process.stderr.read()
