"""
--workers N: one parent binding the sockets, N worker processes serving.
"""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest_twisted
import treq
from twisted.internet import reactor

from tests.conftest import eventually, listening_url, start_app


def _children(pid: int) -> set[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return {int(child) for child in path.read_text().split()}


def _worker_number(pid: int) -> str:
    environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    [number] = [line for line in environ if line.startswith(b"APP_WORKER_NUMBER=")]
    return number.partition(b"=")[2].decode()


@pytest_twisted.ensureDeferred
async def test_workers_share_one_port_and_are_restarted(
    spawn: list[subprocess.Popen[str]],
) -> None:
    process = start_app(
        spawn,
        "--listen",
        "tcp:0:interface=127.0.0.1",
        "--workers",
        "2",
        "--no-demo",
        "--routes",
        "tests.example_routes",
    )
    url = listening_url(process)
    await eventually(
        lambda: len(_children(process.pid)) == 2, "two workers", timeout=15
    )
    workers = _children(process.pid)
    # Each knows its number: only the first says what all would say alike.
    assert sorted(_worker_number(pid) for pid in workers) == ["0", "1"]

    async def served_by() -> int:
        response = await treq.get(url + "pid", persistent=False)
        return int(await response.text())

    # The kernel spreads new connections over the workers' sockets: both
    # serve, once both listen (a worker that is up may still be starting,
    # longer on a loaded machine).
    seen: set[int] = set()
    deadline = reactor.seconds() + 15
    while seen != workers and reactor.seconds() < deadline:
        seen.add(await served_by())
    assert seen == workers

    victim = sorted(workers)[0]
    os.kill(victim, signal.SIGKILL)
    await eventually(
        lambda: len(_children(process.pid) - {victim}) == 2,
        "a worker in place of the one killed",
        timeout=15,
    )
    replacement = _children(process.pid) - workers
    assert len(replacement) == 1
    assert (await treq.get(url + "health", persistent=False)).code == 200

    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=30) == 0
    remaining = _children_alive(workers | replacement)
    assert remaining == set()
    assert process.stdout is not None
    log = process.stdout.read()
    assert log.count("listening on") == 0  # the one line was read above
    assert "restarting" in log


def _children_alive(pids: set[int]) -> set[int]:
    alive = set()
    for pid in pids:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            continue
        alive.add(pid)
    return alive


@pytest_twisted.ensureDeferred
async def test_workers_stop_when_the_parent_is_killed(
    spawn: list[subprocess.Popen[str]],
) -> None:
    # Sessions in each worker's memory: no private directory to leave (the
    # next test kills a parent that made some).
    process = start_app(
        spawn,
        "--listen",
        "tcp:0:interface=127.0.0.1",
        "--workers",
        "2",
        "--no-demo",
        "--sessions",
        "memory",
    )
    listening_url(process)
    await eventually(
        lambda: len(_children(process.pid)) == 2, "two workers", timeout=15
    )
    workers = _children(process.pid)
    process.kill()
    process.wait(timeout=10)
    await eventually(
        lambda: not _children_alive(workers), "the workers to stop", timeout=15
    )


@pytest_twisted.ensureDeferred
async def test_what_a_killed_parent_leaves_the_next_parent_removes(
    spawn: list[subprocess.Popen[str]], tmp_path: Path
) -> None:
    # The shared session file's directory (in /dev/shm, here tmp_path) and
    # the metrics' (in the temporary directory, here tmp_path too).
    prelude = (
        "import tempfile, app.cli.main;"
        f" tempfile.tempdir = {str(tmp_path)!r};"
        f" app.cli.main.SHARED_MEMORY = {str(tmp_path)!r}"
    )
    argv = (
        "--listen",
        "tcp:0:interface=127.0.0.1",
        "--metrics",
        "tcp:0:interface=127.0.0.1",
        "--workers",
        "2",
        "--no-demo",
    )
    killed = start_app(spawn, *argv, prelude=prelude)
    listening_url(killed)
    await eventually(lambda: len(_children(killed.pid)) == 2, "two workers", 15)
    workers = _children(killed.pid)
    left = sorted(path.name for path in tmp_path.iterdir())
    assert [name.rpartition("-")[0] for name in left] == ["app-metrics", "app-sessions"]
    killed.kill()
    killed.wait(timeout=10)
    await eventually(lambda: not _children_alive(workers), "the workers to stop", 15)
    assert sorted(path.name for path in tmp_path.iterdir()) == left

    process = start_app(spawn, *argv, prelude=prelude)
    log: list[str] = []
    listening_url(process, log)
    made = sorted(path.name for path in tmp_path.iterdir())
    assert len(made) == 2 and not set(made) & set(left)
    for name in left:
        assert f"removed {tmp_path / name}, left by a server that was killed" in (
            "".join(log)
        )
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=30) == 0
    assert list(tmp_path.iterdir()) == []
