"""
Asynchronous and Deferred responses, and interrupted ones, on a clock the
tests drive: in memory, and over a socket where a client connects and goes
away.
"""

from __future__ import annotations

import gc
import inspect
import io
from typing import Any

import pytest
import pytest_twisted
from treq.testing import StubTreq
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.logger import LogEvent, LogLevel, eventAsText, formatEvent

from app.cli.log import text_observer
from app.http.pages import error_page
from app.testing import LiveServer
from routes.asynchronous import AsynchronousRoutes, DelayedFailure
from tests.conftest import (
    eventually,
    failures,
    memory_client,
    stop_on_clock,
    success_result_of,
)
from tests.rawhttp import connect

BASE = "http://example.invalid"
#: A step below a delay that binary floating point represents exactly.
EPSILON = 2.0**-10
CANCELLED = "Delayed response cancelled: client went away"


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def client(clock: Clock) -> StubTreq:
    return memory_client(clock)


def _advance(client: StubTreq, clock: Clock, seconds: float) -> None:
    clock.advance(seconds)
    client.flush()


def _get_later(client: StubTreq, path: str) -> tuple[Deferred[Any], list[bool]]:
    """
    Start a GET; the list becomes non-empty once the response has arrived
    (C{Deferred.called} is already true while treq waits on an inner one).
    """
    arrived: list[bool] = []

    def note(result: Any) -> Any:
        arrived.append(True)
        return result

    # StubTreq sets its methods at run time.
    pending = client.get(BASE + path).addBoth(note)  # type: ignore[attr-defined]
    client.flush()
    return pending, arrived


def _timers_before(clock: Clock, seconds: float) -> list[Any]:
    # The connection's idle timer (60 s) is on the same clock.
    return [call for call in clock.getDelayedCalls() if call.getTime() <= seconds]


@pytest.mark.parametrize(
    ("query", "seconds"),
    [
        ("?seconds=2.5", 2.5),
        ("?seconds=30", 30.0),
        ("?seconds=.5", 0.5),
        ("?seconds=0007.", 7.0),
        ("", 1.0),
        # twisted.web's request.args drops a name without "=": the default.
        ("?seconds", 1.0),
        ("?other=5", 1.0),
    ],
)
def test_delayed_answers_after_exactly_the_requested_seconds(
    client: StubTreq, clock: Clock, query: str, seconds: float
) -> None:
    pending, arrived = _get_later(client, f"/delayed{query}")
    _advance(client, clock, seconds - EPSILON)
    assert not arrived
    _advance(client, clock, EPSILON)
    assert arrived
    response = success_result_of(pending)
    assert response.code == 200
    assert response.headers.getRawHeaders(b"content-type") == [
        b"text/plain; charset=utf-8"
    ]
    assert success_result_of(response.content()) == b"Sorry to keep you waiting."


def test_delayed_zero_seconds_answers_without_time_passing(
    client: StubTreq, clock: Clock
) -> None:
    pending, arrived = _get_later(client, "/delayed?seconds=0")
    assert not arrived, "even no delay waits for the clock to run"
    _advance(client, clock, 0)
    assert arrived
    response = success_result_of(pending)
    assert response.code == 200
    assert clock.seconds() == 0


@pytest.mark.parametrize(
    "query",
    [
        "seconds=-1",
        "seconds=31",
        "seconds=30.001",
        "seconds=abc",
        "seconds=nan",
        "seconds=inf",
        "seconds=-inf",
        "seconds=",
        "seconds=1e1",
        "seconds=%2B1",
        "seconds=%201",
        "seconds=1%20",
        "seconds=0x1",
        "seconds=1,5",
        "seconds=1..5",
        "seconds=.",
        "seconds=%D9%A1",  # ARABIC-INDIC DIGIT ONE: float() would take it
        "seconds=%00",
        "seconds=" + "9" * 5000,
        "seconds=1&seconds=2",
        "seconds=1&seconds=1",
    ],
)
def test_delayed_refuses_other_delays_with_the_400_page(
    client: StubTreq, clock: Clock, query: str
) -> None:
    pending, arrived = _get_later(client, f"/delayed?{query}")
    assert arrived, "a bad delay is answered at once"
    response = success_result_of(pending)
    assert response.code == 400
    assert success_result_of(response.content()) == error_page(400)
    assert _timers_before(clock, 31) == []


def test_delayed_fail_refuses_a_bad_delay_too(client: StubTreq) -> None:
    pending, _ = _get_later(client, "/delayed/fail?seconds=31")
    response = success_result_of(pending)
    assert response.code == 400


def test_delayed_fail_is_a_500_after_the_delay_logged_once(
    client: StubTreq, clock: Clock, captured_log: list[LogEvent]
) -> None:
    pending, arrived = _get_later(client, "/delayed/fail?seconds=3")
    _advance(client, clock, 3 - EPSILON)
    assert not arrived
    assert failures(captured_log) == []
    _advance(client, clock, EPSILON)
    response = success_result_of(pending)
    assert response.code == 500
    assert success_result_of(response.content()) == error_page(500)
    logged = failures(captured_log)
    assert len(logged) == 1
    assert formatEvent(logged[0]) == "Rendering delayed response failed"
    assert logged[0]["log_failure"].check(DelayedFailure)
    assert "DelayedFailure" in logged[0]["log_failure"].getTraceback()
    assert "Traceback" in eventAsText(logged[0])


def test_both_handler_styles_stand_in_the_code() -> None:
    assert inspect.iscoroutinefunction(AsynchronousRoutes.delayed)
    assert not inspect.iscoroutinefunction(AsynchronousRoutes.delayed_fail)
    assert "addErrback" in inspect.getsource(AsynchronousRoutes.delayed_fail)


@pytest.mark.parametrize("path", ["/delayed?seconds=5", "/delayed/fail?seconds=5"])
@pytest_twisted.ensureDeferred
async def test_a_client_that_goes_away_cancels_its_delayed_response(
    captured_log: list[LogEvent], path: str
) -> None:
    clock = Clock()
    live = await LiveServer.start([], clock=clock)
    try:
        raw = await connect(reactor, live.port_number)
        raw.send(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        await eventually(lambda: _timers_before(clock, 5), "the delay to start")
        raw.close()
        await raw.closed
        await eventually(lambda: not live.site.channels, "the server to see the close")
        # The delay's timer went with the connection (so did its idle timers).
        assert clock.getDelayedCalls() == []
        before = len(captured_log)
        clock.advance(60)
        assert captured_log[before:] == []
        gc.collect()  # an unhandled failure would be logged at collection
    finally:
        await stop_on_clock(live)
    assert raw.received == b""

    cancelled = [e for e in captured_log if formatEvent(e).startswith(CANCELLED)]
    assert len(cancelled) == 1
    event = cancelled[0]
    assert event["log_level"] is LogLevel.info
    assert "log_failure" not in event
    assert path in formatEvent(event)
    assert "127.0.0.1:" in formatEvent(event)
    written = io.StringIO()
    text_observer(written)(event)
    assert written.getvalue().count("\n") == 1
    assert "Traceback" not in written.getvalue()
    assert "Failure" not in written.getvalue()

    assert failures(captured_log) == []
    assert [e for e in captured_log if e["log_level"] > LogLevel.info] == []


@pytest_twisted.ensureDeferred
async def test_a_client_that_stays_gets_its_answer_over_a_socket() -> None:
    clock = Clock()
    live = await LiveServer.start([], clock=clock)
    try:
        pending = Deferred.fromCoroutine(_get(live, "/delayed?seconds=5"))
        await eventually(lambda: _timers_before(clock, 5), "the delay to start")
        clock.advance(5)
        response = await pending
    finally:
        await stop_on_clock(live)
    assert response == b"Sorry to keep you waiting."


async def _get(live: LiveServer, path: str) -> bytes:
    response = await live.get(path)
    body: bytes = await response.content()
    return body
