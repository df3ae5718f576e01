"""
Fixtures shared by the whole suite: a live demo server and raw sockets.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator

import bcrypt
import pytest
import pytest_twisted
from hypothesis import settings
from twisted.logger import LogEvent, globalLogPublisher

from app.testing import LiveServer

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


@pytest.fixture
def captured_log() -> Iterator[list[LogEvent]]:
    """
    Every event logged during the test, through the global log publisher.
    """
    events: list[LogEvent] = []
    globalLogPublisher.addObserver(events.append)
    try:
        yield events
    finally:
        globalLogPublisher.removeObserver(events.append)


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
            channel.transport.abortConnection()
    await live.stop()


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
