"""
CGI under load (SPEC section 12): at most --cgi-max scripts at once, a
bounded queue in front of them, process groups, and running out of file
descriptors.  Real scripts, real processes; the server's timers on a Clock.
"""

from __future__ import annotations

import errno
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.task import Clock
from twisted.logger import LogEvent, formatEvent

from app.compat.twisted import spawn_process_group
from app.http.request import Request
from app.mounts.cgi import MAX_WAITING
from app.testing import LiveServer
from tests.app.mounts.test_cgi import cgi_args
from tests.conftest import eventually, failures, process_gone, stop_on_clock
from tests.rawhttp import RawClient, connect, parse_response

#: Where the CGI mount finds the function that starts a script.
SPAWN = "app.mounts.cgi.resource.spawn_process_group"

SCRIPTS = {
    # Runs until the test creates "go", then answers.
    "gate.py": (
        "import os, time\n"
        "with open('runs.log', 'a') as log:\n"
        "    log.write('start gate\\n')\n"
        "open('gate.tmp', 'w').write(str(os.getpid()))\n"
        "os.replace('gate.tmp', 'gate.pid')\n"
        "while not os.path.exists('go'):\n"
        "    time.sleep(0.01)\n"
        "with open('runs.log', 'a') as log:\n"
        "    log.write('end gate\\n')\n"
        "print('Content-Type: text/plain')\n"
        "print()\n"
        "print('gate', end='')\n"
    ),
    "quick.sh": (
        'echo "quick $QUERY_STRING" >> runs.log\n'
        "printf 'Content-Type: text/plain\\n\\nquick'\n"
    ),
    # Forks a child that sleeps, and sleeps itself.
    "family.py": (
        "import os, time\n"
        "child = os.fork()\n"
        "if child == 0:\n"
        "    time.sleep(60)\n"
        "    os._exit(0)\n"
        "open('family.tmp', 'w').write(f'{os.getpid()} {child}')\n"
        "os.replace('family.tmp', 'family.pids')\n"
        "time.sleep(60)\n"
    ),
}


@pytest.fixture
def cgi_dir(tmp_path: Path) -> Path:
    scripts = tmp_path / "cgi-bin"
    scripts.mkdir()
    for name, text in SCRIPTS.items():
        (scripts / name).write_text(text)
    return scripts


@pytest_twisted.async_yield_fixture
async def one_at_a_time(cgi_dir: Path) -> AsyncIterator[tuple[LiveServer, Clock]]:
    """
    A server that runs one script at a time, its scripts' timeout 5 s on a
    Clock.
    """
    clock = Clock()
    live = await LiveServer.start(
        cgi_args(cgi_dir, "--cgi-max", "1", "--cgi-timeout", "5"), clock=clock
    )
    try:
        yield live, clock
    finally:
        await stop_on_clock(live)


@pytest.fixture
def started(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """
    The names of the scripts started, in order, as they are started.
    """
    names: list[str] = []

    def recording(reactor: Any, protocol: Any, *command: Any) -> Any:
        names.append(Path(command[1][-1]).name)
        return spawn_process_group(reactor, protocol, *command)

    monkeypatch.setattr(SPAWN, recording)
    return names


def _in_flight(live: LiveServer) -> list[Request]:
    """
    The requests that the server has been handed and not answered yet:
    rendered, since the server renders a request as soon as it has it.
    """
    return [request for channel in live.site.channels for request in channel.requests]


async def _until_in_flight(live: LiveServer, count: int, what: str) -> None:
    await eventually(lambda: len(_in_flight(live)) == count, what)


def _runs(cgi_dir: Path) -> list[str]:
    try:
        return (cgi_dir / "runs.log").read_text().splitlines()
    except FileNotFoundError:
        return []


def _pids(path: Path) -> list[int] | None:
    try:
        return [int(word) for word in path.read_text().split()]
    except (OSError, ValueError):
        return None


async def _start_gate(live: LiveServer, cgi_dir: Path) -> list[Any]:
    """
    Request gate.py and wait for it to run; the list gets its answer.
    """
    answers: list[Any] = []
    live.get("/cgi-bin/gate.py").addBoth(answers.append)
    await eventually(lambda: _pids(cgi_dir / "gate.pid"), "gate.py to run")
    return answers


async def _queue_up(live: LiveServer, count: int) -> list[RawClient]:
    """
    C{count} requests for quick.sh (C{?n=0}, C{?n=1}, ...), each on a
    connection of its own and rendered before the next is sent.
    """
    clients = []
    for number in range(count):
        client = await connect(reactor, live.port_number)
        arrived = len(_in_flight(live)) + 1
        client.send(
            b"GET /cgi-bin/quick.sh?n=%d HTTP/1.1\r\n"
            b"Host: x\r\nConnection: close\r\n\r\n" % number
        )
        await _until_in_flight(live, arrived, f"request {number}")
        clients.append(client)
    return clients


def _texts(events: list[LogEvent]) -> list[str]:
    return [formatEvent(event) for event in events]


# -- the queue ------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_a_second_request_waits_for_the_running_script(
    one_at_a_time: tuple[LiveServer, Clock], cgi_dir: Path, started: list[str]
) -> None:
    live, _ = one_at_a_time
    first = await _start_gate(live, cgi_dir)
    second: list[Any] = []
    live.get("/cgi-bin/quick.sh?n=second").addBoth(second.append)
    await _until_in_flight(live, 2, "the second request")
    assert started == ["gate.py"] and second == []
    (cgi_dir / "go").touch()
    gate = await eventually(lambda: first and first[0], "the first answer")
    quick = await eventually(lambda: second and second[0], "the second answer")
    assert (gate.code, await gate.text()) == (200, "gate")
    assert (quick.code, await quick.text()) == (200, "quick")
    assert started == ["gate.py", "quick.sh"]
    assert _runs(cgi_dir) == ["start gate", "end gate", "quick n=second"]


@pytest_twisted.ensureDeferred
async def test_waiting_requests_run_first_come_first_served(
    one_at_a_time: tuple[LiveServer, Clock], cgi_dir: Path
) -> None:
    live, _ = one_at_a_time
    await _start_gate(live, cgi_dir)
    clients = await _queue_up(live, 5)
    (cgi_dir / "go").touch()
    for client in clients:
        assert parse_response(await client.closed)[0] == 200
    assert _runs(cgi_dir)[2:] == [f"quick n={number}" for number in range(5)]


@pytest_twisted.ensureDeferred
async def test_a_request_past_a_full_queue_is_503_with_retry_after(
    one_at_a_time: tuple[LiveServer, Clock], cgi_dir: Path, started: list[str]
) -> None:
    live, _ = one_at_a_time
    first = await _start_gate(live, cgi_dir)
    clients = await _queue_up(live, MAX_WAITING)
    assert MAX_WAITING == 64 and len(_in_flight(live)) == 65
    refused = await live.get("/cgi-bin/quick.sh?n=refused")
    assert refused.code == 503
    assert refused.headers.getRawHeaders("retry-after") == ["1"]
    assert "<h1>503 Service Unavailable</h1>" in await refused.text()
    assert not any(client.received for client in clients)
    assert started == ["gate.py"]
    # Those waiting still get their turn, and the refused one never runs.
    (cgi_dir / "go").touch()
    await eventually(lambda: first, "the first answer")
    for client in clients:
        assert parse_response(await client.closed)[0] == 200
    assert "quick n=refused" not in _runs(cgi_dir)
    assert len(_runs(cgi_dir)) == 2 + MAX_WAITING


@pytest_twisted.ensureDeferred
async def test_a_request_waiting_past_the_cgi_timeout_is_503(
    one_at_a_time: tuple[LiveServer, Clock], cgi_dir: Path
) -> None:
    live, clock = one_at_a_time
    first = await _start_gate(live, cgi_dir)
    second: list[Any] = []
    live.get("/cgi-bin/quick.sh?n=late").addBoth(second.append)
    await _until_in_flight(live, 2, "the second request")
    clock.advance(4.9)
    # Only the clock could answer it, and would have before advance() returned.
    assert all(not request.startedWriting for request in _in_flight(live))
    clock.advance(0.1)
    response = await eventually(lambda: second and second[0], "the second answer")
    assert response.code == 503
    assert response.headers.getRawHeaders("retry-after") == ["1"]
    assert "503 Service Unavailable" in await response.text()
    # The script that held the place got the same time for its headers.
    gate = await eventually(lambda: first and first[0], "the first answer")
    assert gate.code == 504
    assert "quick n=late" not in _runs(cgi_dir)


@pytest_twisted.ensureDeferred
async def test_a_client_leaving_the_queue_frees_its_place(
    one_at_a_time: tuple[LiveServer, Clock], cgi_dir: Path
) -> None:
    live, _ = one_at_a_time
    await _start_gate(live, cgi_dir)
    clients = await _queue_up(live, MAX_WAITING)
    leaving = clients.pop(10)
    leaving.close()
    await leaving.closed
    await _until_in_flight(live, MAX_WAITING, "it to leave")
    # Its place is free: one more request waits instead of being refused.
    (late,) = await _queue_up(live, 1)
    (cgi_dir / "go").touch()
    for client in [*clients, late]:
        assert parse_response(await client.closed)[0] == 200
    quick = [line for line in _runs(cgi_dir) if line.startswith("quick")]
    assert len(quick) == MAX_WAITING and "quick n=10" not in quick


# -- process groups ---------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_a_script_timing_out_is_killed_with_its_children(
    one_at_a_time: tuple[LiveServer, Clock], cgi_dir: Path
) -> None:
    live, clock = one_at_a_time
    answers: list[Any] = []
    live.get("/cgi-bin/family.py").addBoth(answers.append)
    script, child = await eventually(
        lambda: _pids(cgi_dir / "family.pids"), "the script and its child"
    )
    # A group of its own, which its child is in.
    assert os.getpgid(script) == script and os.getpgid(child) == script
    assert os.getpgid(script) != os.getpgid(0)
    clock.advance(5)
    response = await eventually(lambda: answers and answers[0], "the answer")
    assert response.code == 504
    await eventually(lambda: process_gone(script), "the script to die")
    await eventually(lambda: process_gone(child), "its child to die")


@pytest_twisted.ensureDeferred
async def test_a_client_going_away_kills_the_script_and_its_children(
    one_at_a_time: tuple[LiveServer, Clock], cgi_dir: Path
) -> None:
    live, _ = one_at_a_time
    client = await connect(reactor, live.port_number)
    client.send(b"GET /cgi-bin/family.py HTTP/1.1\r\nHost: x\r\n\r\n")
    script, child = await eventually(
        lambda: _pids(cgi_dir / "family.pids"), "the script and its child"
    )
    client.close()
    await client.closed
    await eventually(lambda: process_gone(script), "the script to die")
    await eventually(lambda: process_gone(child), "its child to die")


# -- out of file descriptors ------------------------------------------------------


@pytest.mark.parametrize("code", [errno.EMFILE, errno.ENFILE])
@pytest_twisted.ensureDeferred
async def test_out_of_file_descriptors_at_start_is_503(
    one_at_a_time: tuple[LiveServer, Clock],
    monkeypatch: pytest.MonkeyPatch,
    captured_log: list[LogEvent],
    code: int,
) -> None:
    # The spawn fails as it does when pipe() finds no descriptor left.
    def out_of_descriptors(*args: Any) -> None:
        raise OSError(code, os.strerror(code))

    live, clock = one_at_a_time
    monkeypatch.setattr(SPAWN, out_of_descriptors)
    response = await live.get("/cgi-bin/quick.sh")
    assert response.code == 503
    assert response.headers.getRawHeaders("retry-after") == ["1"]
    assert "503 Service Unavailable" in await response.text()
    assert failures(captured_log) == []
    (logged,) = [text for text in _texts(captured_log) if "quick.sh" in text]
    assert os.strerror(code) in logged
    # At most one line a second.
    assert (await live.get("/cgi-bin/quick.sh")).code == 503
    assert len([text for text in _texts(captured_log) if "quick.sh" in text]) == 1
    clock.advance(1)
    assert (await live.get("/cgi-bin/quick.sh")).code == 503
    assert len([text for text in _texts(captured_log) if "quick.sh" in text]) == 2
    # The place is given back: with descriptors again, the script runs.
    monkeypatch.undo()
    response = await live.get("/cgi-bin/quick.sh")
    assert (response.code, await response.text()) == (200, "quick")
