"""
Sessions shared for real: two server processes on 127.0.0.2 and 127.0.0.3
with one Redis server, and the workers of one server with their SQLite file.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
import treq
from twisted.internet import reactor
from twisted.internet.defer import ensureDeferred, gatherResults
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.task import deferLater
from twisted.web.client import Agent, HTTPConnectionPool

from app.cli.options import config_from_args
from app.http.metrics import MULTIPROCESS_VARIABLE
from app.testing import LiveServer
from tests.app.sessions.test_shared import Renewing
from tests.app.test_metrics import METRICS, METRICS_LISTENING, _value
from tests.auth.test_digest import digest_authorization
from tests.conftest import drain, eventually, listening_url, start_app
from tests.engines import RedisServer
from tests.paths import TESTS

SECRET = "5e" * 32
LOOPBACK = "tcp:0:interface=127.0.0.1"
HTDIGEST = str(TESTS / "data" / "auth" / "users.htdigest")


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def secret(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("APP_SECRET_KEY", SECRET)
    return SECRET


class Host:
    """
    A server process on one loopback address, and what it logs.
    """

    def __init__(self, spawn: list[subprocess.Popen[str]], address: str, *argv: str):
        self.process = start_app(spawn, "--listen", f"tcp:0:interface={address}", *argv)
        self.log: list[str] = []
        self.url = listening_url(self.process, self.log)
        drain(self.process, self.log)

    def lines(self, text: str) -> list[str]:
        return [line for line in list(self.log) if text in line]


def _client() -> Any:
    # A new connection for every request, as a balancer's clients make.
    return treq.client.HTTPClient(
        Agent(reactor, pool=HTTPConnectionPool(reactor, False))
    )


async def _get(url: str, uid: str | None = None, **kwargs: Any) -> tuple[int, str, Any]:
    headers = dict(kwargs.pop("headers", {}))
    if uid is not None:
        headers["Cookie"] = f"app_session={uid}"
    response = await _client().get(url, headers=headers, **kwargs)
    return response.code, await response.text(), response.headers


async def _post(url: str, uid: str) -> int:
    response = await _client().post(url, headers={"Cookie": f"app_session={uid}"})
    await response.content()
    code: int = response.code
    return code


def _uid(headers: Any) -> str:
    cookie = headers.getRawHeaders("set-cookie")[0]
    found = re.match(r"app_session=([0-9a-f]{64});", cookie)
    assert found is not None
    return found.group(1)


async def _visitor(host: Host) -> str:
    """
    The uid of a new session, made by a first visit to C{host}'s counter.
    """
    code, text, headers = await _get(host.url + "counter")
    assert (code, _visit(text)) == (200, 1)
    return _uid(headers)


def _visit(text: str) -> int:
    found = re.search(r"Visit #(\d+)", text)
    assert found is not None
    return int(found.group(1))


@pytest_twisted.ensureDeferred
async def test_two_hosts_share_sessions_through_redis(
    spawn: list[subprocess.Popen[str]], redis: RedisServer, secret: str
) -> None:
    argv = ("--sessions", redis.url)
    first = Host(spawn, "127.0.0.2", *argv)
    second = Host(spawn, "127.0.0.3", *argv)
    code, text, headers = await _get(first.url + "counter")
    assert (code, _visit(text)) == (200, 1)
    uid = _uid(headers)
    visits = []
    for host in (second, first, second, first, second):
        code, text, _ = await _get(host.url + "counter", uid)
        visits.append(_visit(text))
    assert visits == [2, 3, 4, 5, 6]

    # logme on one host; the other sees its mark and registers nothing.
    await _get(first.url + "session/logme", uid)
    await _get(second.url + "session/logme", uid)
    # Expired on the other host: the first logs it, once, within 5 s.
    assert await _post(second.url + "session/expire", uid) == 200
    code, text, headers = await _get(first.url + "counter", uid)
    assert _visit(text) == 1
    assert _uid(headers) != uid
    await eventually(lambda: first.lines(f"session expired: {uid}"), "the log", 6.0)
    assert len(first.lines(f"session expired: {uid}")) == 1
    assert second.lines("session expired") == []

    # kill -9 of one host loses no session: the other goes on counting.
    code, text, headers = await _get(first.url + "counter")
    uid = _uid(headers)
    await _get(second.url + "counter", uid)
    first.process.kill()
    first.process.wait()
    code, text, _ = await _get(second.url + "counter", uid)
    assert (code, _visit(text)) == (200, 3)
    replacement = Host(spawn, "127.0.0.2", *argv)
    code, text, _ = await _get(replacement.url + "counter", uid)
    assert (code, _visit(text)) == (200, 4)


@pytest_twisted.ensureDeferred
async def test_a_digest_answer_accepted_by_one_host_is_refused_by_the_other(
    spawn: list[subprocess.Popen[str]], redis: RedisServer, secret: str, tmp_path: Path
) -> None:
    homes = tmp_path / "homes"
    (homes / "alice" / "public_html").mkdir(parents=True)
    (homes / "alice" / "public_html" / "index.html").write_text("alice's home")
    argv = ("--sessions", redis.url, "--htdigest", HTDIGEST, "--homes", str(homes))
    first = Host(spawn, "127.0.0.2", *argv)
    second = Host(spawn, "127.0.0.3", *argv)
    code, _, headers = await _get(first.url + "private/")
    assert code == 401
    challenge = headers.getRawHeaders("www-authenticate")[0]
    answer = digest_authorization(challenge, "GET", "/private/", "alice", "wonderland")
    code, text, _ = await _get(
        second.url + "private/", headers={"Authorization": answer}
    )
    assert (code, text) == (200, "alice's home")
    code, _, _ = await _get(first.url + "private/", headers={"Authorization": answer})
    assert code == 401
    code, _, _ = await _get(second.url + "private/", headers={"Authorization": answer})
    assert code == 401


@pytest_twisted.ensureDeferred
async def test_redis_down_is_503_for_session_pages_then_recovers(
    spawn: list[subprocess.Popen[str]], redis: RedisServer, secret: str
) -> None:
    host = Host(spawn, "127.0.0.2", "--sessions", redis.url)
    uid = await _visitor(host)
    redis.stop()
    for _ in range(3):
        code, text, headers = await _get(host.url + "counter", uid)
        assert code == 503
        assert headers.getRawHeaders("retry-after") == ["5"]
        assert "Traceback" not in text
    code, _, _ = await _get(host.url + "health", uid)
    assert code == 200
    code, _, _ = await _get(host.url + "", uid)
    assert code == 200
    assert len(host.lines("cannot be reached")) == 1
    assert host.lines("Scheduling retry") == []

    redis.start()
    codes = await _until_served(host.url + "counter")
    assert set(codes[:-1]) <= {503}
    await eventually(lambda: host.lines("can be reached again"), "the log")
    assert len(host.lines("cannot be reached")) == 1


@pytest_twisted.ensureDeferred
async def test_workers_share_sessions_in_a_private_sqlite_file(
    spawn: list[subprocess.Popen[str]],
) -> None:
    parent = start_app(spawn, "--workers", "2", "--listen", "tcp:0:interface=127.0.0.1")
    log: list[str] = []
    url = listening_url(parent, log)
    drain(parent, log)
    workers = _children(parent.pid)
    assert len(workers) == 2
    stores = {_sessions_option(pid) for pid in workers}
    assert len(stores) == 1
    store = Path(stores.pop().removeprefix("sqlite:"))
    assert store.parent.name.startswith("app-sessions-")
    assert oct(store.parent.stat().st_mode & 0o777) == "0o700"

    _, text, headers = await _get(url + "counter")
    uid = _uid(headers)
    visits = [_visit(text)]
    for killed, worker in enumerate(workers, 1):
        for _ in range(5):
            visits.append(_visit((await _retried_get(url + "counter", uid))[1]))
        # Whichever served so far, its sessions outlive it.
        os.kill(worker, signal.SIGKILL)
        await eventually(
            lambda: len(set(_children(parent.pid)) - set(workers)) == killed,  # noqa: B023
            "a worker in its place",
        )
    visits.append(_visit((await _retried_get(url + "counter", uid))[1]))
    assert visits == list(range(1, 13))

    parent.send_signal(signal.SIGTERM)
    parent.wait(timeout=30)
    assert not store.parent.exists()


async def _scraped(log: list[str], name: str) -> float | None:
    """
    The value of metric C{name} that the server whose output is C{log}
    serves on its metrics endpoint, or L{None} if it serves none.
    """
    found = await eventually(
        lambda: next(
            (m for line in list(log) if (m := METRICS_LISTENING.search(line))), None
        ),
        "the metrics endpoint",
    )
    _, text, _ = await _get(found.group(1) + "metrics")
    return _value(text, name)


@pytest_twisted.ensureDeferred
async def test_the_workers_report_the_sessions_of_their_file_once(
    spawn: list[subprocess.Popen[str]],
) -> None:
    parent = start_app(spawn, "--workers", "2", *METRICS, "--listen", LOOPBACK)
    log: list[str] = []
    url = listening_url(parent, log)
    drain(parent, log)
    for _ in range(3):
        assert (await _get(url + "counter"))[0] == 200
    workers = _children(parent.pid)
    assert len(workers) == 2
    directory = Path(_environment(workers[0])[MULTIPROCESS_VARIABLE])

    # Each worker samples the file's count (every second, from its start);
    # the parent keeps the largest of their last samples, not their sum.
    def sampled_by_both() -> bool:
        return all((directory / f"gauge_livemax_{pid}.db").exists() for pid in workers)

    await eventually(sampled_by_both, "both workers' samples")
    scraped = [await _scraped(log, "http_live_sessions")]
    deadline = reactor.seconds() + 10
    while scraped[-1] != 3 and reactor.seconds() < deadline:
        await deferLater(reactor, 0.1, lambda: None)
        scraped.append(await _scraped(log, "http_live_sessions"))
    assert scraped[-1] == 3, scraped
    assert set(scraped) <= {0, 1, 2, 3}


@pytest_twisted.ensureDeferred
async def test_a_redis_store_reports_no_count_of_sessions(
    spawn: list[subprocess.Popen[str]], redis: RedisServer, secret: str
) -> None:
    host = Host(spawn, "127.0.0.2", "--sessions", redis.url, *METRICS)
    await _visitor(host)
    assert await _scraped(host.log, "http_open_connections") is not None
    assert await _scraped(host.log, "http_live_sessions") is None


async def _until_served(url: str) -> list[int]:
    """
    The statuses of GETs of C{url} until one is a 200: the server reconnects
    to its store by itself, within a few seconds.
    """
    codes = [(await _get(url))[0]]
    while codes[-1] != 200:
        assert len(codes) < 100, f"still {codes[-1]} after the store came back"
        await deferLater(reactor, 0.1, lambda: None)
        codes.append((await _get(url))[0])
    return codes


async def _retried_get(url: str, uid: str) -> tuple[int, str, Any]:
    # While a killed worker's replacement starts, the port may have no one
    # accepting for a moment.
    for _ in range(100):
        try:
            return await _get(url, uid)
        except ConnectionRefusedError:
            await deferLater(reactor, 0.1, lambda: None)
    raise AssertionError("no worker came back")


def _children(pid: int) -> list[int]:
    children = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(stat[1]) == pid:
                children.append(int(entry.name))
    return sorted(children)


def _environment(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(line.decode().partition("=")[::2] for line in lines if line)


def _sessions_option(pid: int) -> str:
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    return argv[argv.index(b"--sessions") + 1].decode()


@pytest_twisted.ensureDeferred
async def test_a_store_that_stops_answering_mid_save_is_a_503(
    spawn: list[subprocess.Popen[str]], redis: RedisServer, secret: str
) -> None:
    host = Host(spawn, "127.0.0.2", "--sessions", redis.url)
    assert (await _get(host.url + "counter"))[0] == 200
    assert redis.process is not None
    redis.process.send_signal(signal.SIGSTOP)
    try:
        # A new session's first save hangs: the answer, held meanwhile, is
        # replaced by a 503 when the save times out.
        code, text, headers = await _get(host.url + "counter")
        assert code == 503
        assert headers.getRawHeaders("retry-after") == ["5"]
        assert headers.getRawHeaders("set-cookie") is None
        assert "Visit #" not in text
    finally:
        redis.process.send_signal(signal.SIGCONT)
    assert set((await _until_served(host.url + "counter"))[:-1]) <= {503}


@pytest_twisted.ensureDeferred
async def test_a_session_expired_during_a_request_stays_ended_with_redis(
    redis: RedisServer,
) -> None:
    config = config_from_args(["--no-demo", "--sessions", redis.url])
    server = await LiveServer.start(replace(config, route_apps=(Renewing().app,)))
    try:
        first = await server.get("/renew")
        _, uid = (await first.text()).split()
        response = await server.get(
            "/renew", headers={"Cookie": f"app_session={uid}"}, cookies={}
        )
        old, new = (await response.text()).split()
        assert old == uid
        assert new != uid
    finally:
        await server.stop()


@pytest_twisted.ensureDeferred
async def test_requests_for_mounted_files_fetch_no_session_from_redis(
    spawn: list[subprocess.Popen[str]],
    redis: RedisServer,
    secret: str,
    tmp_path: Path,
) -> None:
    static = tmp_path / "static"
    static.mkdir()
    (static / "style.css").write_text("body { color: black }\n")
    host = Host(spawn, "127.0.0.2", "--sessions", redis.url, "--static", str(static))
    _, _, headers = await _get(host.url + "counter")
    uid = _uid(headers)
    before = redis.calls("get")
    # A browser sends its cookie with every request for the page's files.
    for _ in range(3):
        code, text, _ = await _get(host.url + "static/style.css", uid)
        assert (code, text) == (200, "body { color: black }\n")
    assert redis.calls("get") == before
    code, text, _ = await _get(host.url + "counter", uid)
    assert _visit(text) == 2
    assert redis.calls("get") == before + 1


@pytest_twisted.ensureDeferred
async def test_requests_for_sessionless_routes_fetch_no_session_from_redis(
    spawn: list[subprocess.Popen[str]], redis: RedisServer, secret: str
) -> None:
    routes = ("--routes", "tests.sessionless_routes")
    host = Host(spawn, "127.0.0.2", "--sessions", redis.url, *routes)
    _, _, headers = await _get(host.url + "counter")
    uid = _uid(headers)
    before = redis.calls("get")
    for path, answer in (("quiet", "quiet"), ("quiet/x", "quiet x"), ("health", "ok")):
        assert (await _get(host.url + path, uid))[:2] == (200, answer)
    assert redis.calls("get") == before
    # A route not marked may use its session: it is fetched.
    assert (await _get(host.url + "talkative", uid))[:2] == (200, "talkative")
    assert redis.calls("get") == before + 1
    _, text, _ = await _get(host.url + "counter", uid)
    assert _visit(text) == 2
    # A marked route that asks for its session anyway: a 500, logged.
    assert (await _get(host.url + "greedy", uid))[0] == 500
    await eventually(lambda: host.lines("/greedy is marked sessionless"), "the log")
    assert _visit((await _get(host.url + "counter", uid))[1]) == 3


@pytest_twisted.ensureDeferred
async def test_overlapping_requests_of_one_visitor_on_one_host_each_count(
    spawn: list[subprocess.Popen[str]], redis: RedisServer, secret: str
) -> None:
    host = Host(spawn, "127.0.0.2", "--sessions", redis.url)
    uid = await _visitor(host)
    # Twenty at once, each on its own connection: however their fetches,
    # turns and saves interleave, one process counts each, as in memory.
    answers = await gatherResults(
        [ensureDeferred(_get(host.url + "counter", uid)) for _ in range(20)]
    )
    assert sorted(_visit(text) for _, text, _ in answers) == list(range(2, 22))
    code, text, _ = await _get(host.url + "counter", uid)
    assert (code, _visit(text)) == (200, 22)
