"""
WSGI under load: a bounded line of requests waiting for a thread, through a
live server whose application holds its one thread until the test lets go.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest_twisted
from twisted.internet import reactor
from twisted.internet.task import Clock
from twisted.logger import LogEvent, LogLevel

from app.cli.options import config_from_args
from app.mounts.wsgi import WSGIThreadPool
from app.testing import LiveServer
from tests.conftest import eventually, stop_on_clock
from tests.rawhttp import RawClient, connect, parse_response

StartResponse = Callable[..., Any]

REQUEST = b"GET /wsgi/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"

#: With one thread: the request it runs, and the eight that may wait.
ACCEPTED = 1 + 8


class HeldApplication:
    """
    Answers C{ok}, once C{release} is set; counts the calls it has entered.
    """

    def __init__(self) -> None:
        self.release = threading.Event()
        self.entered = 0
        self._lock = threading.Lock()

    def __call__(
        self, environ: dict[str, Any], start_response: StartResponse
    ) -> list[bytes]:
        with self._lock:
            self.entered += 1
        self.release.wait(30)
        start_response(
            "200 OK", [("Content-Type", "text/plain"), ("Content-Length", "2")]
        )
        return [b"ok"]


@dataclasses.dataclass
class HeldServer:
    live: LiveServer
    application: HeldApplication
    pool: WSGIThreadPool

    async def request(self) -> RawClient:
        client = await connect(reactor, self.live.port_number)
        client.send(REQUEST)
        return client

    async def fill(self) -> list[RawClient]:
        """
        One request running and as many waiting as may wait.
        """
        running = await self.request()
        await eventually(lambda: self.application.entered == 1, "the first call")
        waiting = [await self.request() for _ in range(ACCEPTED - 1)]
        await eventually(lambda: self.pool.waiting == ACCEPTED - 1, "the line to fill")
        return [running, *waiting]


async def _start(clock: Clock | None = None) -> HeldServer:
    application = HeldApplication()
    config = dataclasses.replace(
        config_from_args(["--no-demo", "--wsgi-threads", "1"]), wsgi_app=application
    )
    live = await LiveServer.start(config, clock=clock)
    [pool] = [s.pool for s in live.site.service if hasattr(s, "pool")]
    assert isinstance(pool, WSGIThreadPool)
    return HeldServer(live, application, pool)


@pytest_twisted.async_yield_fixture
async def held() -> AsyncIterator[HeldServer]:
    server = await _start()
    try:
        yield server
    finally:
        server.application.release.set()
        await server.live.stop()


def _refusals(events: list[LogEvent]) -> list[LogEvent]:
    return [
        event
        for event in events
        if event.get("log_level") == LogLevel.warn
        and "refused with 503" in event.get("log_format", "")
    ]


def test_eight_calls_a_thread_may_wait() -> None:
    assert WSGIThreadPool(minthreads=0, maxthreads=3).max_waiting == 24


@pytest_twisted.ensureDeferred
async def test_past_the_line_is_503_with_retry_after_at_once(
    held: HeldServer,
) -> None:
    await held.fill()
    refused = await held.request()
    status, headers, body = parse_response(await refused.closed)
    assert status == 503
    assert headers[b"retry-after"] == b"1"
    assert headers[b"content-type"] == b"text/html; charset=utf-8"
    assert b"503 Service Unavailable" in body
    # Answered while the application still holds its thread.
    assert held.application.entered == 1
    assert held.pool.waiting == ACCEPTED - 1


@pytest_twisted.ensureDeferred
async def test_every_accepted_request_is_answered_once_released(
    held: HeldServer,
) -> None:
    clients = await held.fill()
    held.application.release.set()
    for client in clients:
        status, _, body = parse_response(await client.closed)
        assert (status, body) == (200, b"ok")
    assert held.application.entered == ACCEPTED
    assert held.pool.waiting == 0


@pytest_twisted.ensureDeferred
async def test_a_waiting_client_that_goes_away_frees_its_place(
    held: HeldServer,
) -> None:
    running, gone, *waiting = await held.fill()
    gone.close()
    await gone.closed
    await eventually(lambda: held.pool.waiting == ACCEPTED - 2, "the place to be freed")
    newcomer = await held.request()
    await eventually(lambda: held.pool.waiting == ACCEPTED - 1, "the newcomer to wait")
    held.application.release.set()
    for client in [running, *waiting, newcomer]:
        status, _, _ = parse_response(await client.closed)
        assert status == 200
    # The request whose client left was never run.
    assert held.application.entered == ACCEPTED


@pytest_twisted.ensureDeferred
async def test_refusals_are_logged_at_most_once_a_second(
    captured_log: list[LogEvent],
) -> None:
    clock = Clock()
    server = await _start(clock)
    try:
        await server.fill()
        for _ in range(3):
            refused = await server.request()
            assert parse_response(await refused.closed)[0] == 503
        [first] = _refusals(captured_log)
        assert first["refused"] == 1
        clock.advance(1)
        refused = await server.request()
        assert parse_response(await refused.closed)[0] == 503
        [_, second] = _refusals(captured_log)
        # The two refused since the first line, and this one.
        assert second["refused"] == 3
    finally:
        server.application.release.set()
        await stop_on_clock(server.live)
