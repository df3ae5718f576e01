"""
The access log (Combined Log Format, escaping, refusals, SIGHUP) and the
server log (text and JSON lines).
"""

from __future__ import annotations

import calendar
import dataclasses
import http.client
import io
import json
import os
import re
import select
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from hypothesis import given
from hypothesis import strategies as st
from klein import Klein
from treq.testing import StubTreq
from twisted.internet import reactor
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactor
from twisted.logger import ILogObserver, LogEvent, Logger, LogLevel
from twisted.python.failure import Failure
from twisted.web.http_headers import Headers
from twisted.web.iweb import IRequest
from zope.interface import provider

from app.cli.log import json_observer, make_observer, text_observer
from app.cli.options import config_from_args
from app.config import Config, ConfigError
from app.http.access_log import (
    AccessLog,
    LogEntry,
    access_log_of,
    combined_line,
    escape_field,
    log_time,
    reopen_on_sighup,
)
from app.http.channel import Refusal
from app.http.limits import MAX_HEADER_COUNT, MAX_REQUEST_LINE
from app.http.pages import error_page
from app.site import build_site
from app.testing import LiveServer, stub_treq
from tests.conftest import eventually, reads, stop_on_clock, success_result_of
from tests.paths import ROOT
from tests.rawhttp import connect, exchange

LISTEN = "--listen=tcp:0:interface=127.0.0.1"
BASE = "http://example.invalid"
#: 25 Nov 2026, 09:10:00 UTC.
WHEN = calendar.timegm((2026, 11, 25, 9, 10, 0))
STAMP = "[25/Nov/2026:09:10:00 +0000]"

_QUOTED = r'"((?:[^"\\]|\\.)*)"'
COMBINED = re.compile(
    r"(\S+) - (\S+) \[(\d\d/[A-Z][a-z]{2}/\d{4}:\d\d:\d\d:\d\d \+0000)\] "
    rf"{_QUOTED} (\d{{3}}) (\d+|-) {_QUOTED} {_QUOTED}"
)
ISO_UTC = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")

_UNESCAPES = {b"b": b"\b", b"t": b"\t", b"n": b"\n", b"v": b"\v", b"r": b"\r"}


def _unescape(field: str) -> bytes:
    def one(match: re.Match[bytes]) -> bytes:
        code = match.group(1)
        if code.startswith(b"x"):
            return bytes([int(code[1:], 16)])
        return _UNESCAPES.get(code, code)

    return re.sub(rb"\\(x[0-9a-f]{2}|.)", one, field.encode("ascii"))


def _lines(path: Path) -> list[str]:
    text = path.read_bytes().decode("ascii")
    assert text.endswith("\n") or text == ""
    return text.splitlines()


def _fields(line: str) -> tuple[str, ...]:
    match = COMBINED.fullmatch(line)
    assert match is not None, line
    return match.groups()


# -- the line format ---------------------------------------------------------


def test_log_time_is_utc_with_english_months() -> None:
    assert log_time(WHEN) == STAMP
    assert log_time(calendar.timegm((2027, 1, 5, 3, 4, 5))) == (
        "[05/Jan/2027:03:04:05 +0000]"
    )


def test_escape_field_escapes_as_apache_does() -> None:
    assert escape_field(b'a"b\\c') == 'a\\"b\\\\c'
    assert escape_field(b"\n\r\t\b\v") == "\\n\\r\\t\\b\\v"
    assert escape_field(b"\x00\x1b\x7f\x80\xff") == "\\x00\\x1b\\x7f\\x80\\xff"
    assert escape_field("é") == "\\xc3\\xa9"
    assert escape_field(b"plain text ~!") == "plain text ~!"


@given(st.binary(max_size=200), st.binary(max_size=200), st.text(max_size=50))
def test_no_field_can_forge_a_line(agent: bytes, target: bytes, user: str) -> None:
    headers = Headers({b"user-agent": [agent], b"referer": [target]})
    line = combined_line(
        LogEntry(
            client=IPv4Address("TCP", "192.0.2.1", 1234),
            user=user,
            seconds=WHEN,
            request_line=b"GET " + target + b" HTTP/1.1",
            status=200,
            length=5,
            headers=headers,
        )
    )
    assert line.endswith("\n")
    line = line[:-1]
    assert line.isascii() and line.isprintable()
    fields = _fields(line)
    assert fields[0] == "192.0.2.1"
    assert _unescape(fields[3]) == b"GET " + target + b" HTTP/1.1"
    # Headers turns CR and LF into spaces; the log shows what it holds.
    (referer,) = headers.getRawHeaders(b"referer", ())
    (user_agent,) = headers.getRawHeaders(b"user-agent", ())
    assert _unescape(fields[6]) == referer
    assert _unescape(fields[7]) == user_agent
    if user:
        assert _unescape(fields[1]) == user.encode("utf-8", "surrogateescape")


@pytest.mark.parametrize(
    ("client", "host"),
    [
        (IPv6Address("TCP", "::1", 80), "::1"),
        (UNIXAddress(b"/run/app.sock"), "-"),
        (None, "-"),
    ],
)
def test_the_host_is_unquoted_or_a_dash(client: object, host: str) -> None:
    line = combined_line(
        LogEntry(
            client=client,  # type: ignore[arg-type]
            user=None,
            seconds=WHEN,
            request_line=None,
            status=400,
            length=0,
            headers=None,
        )
    )
    assert line == f'{host} - - {STAMP} "-" 400 - "-" "-"\n'


# -- the real site, in memory -------------------------------------------------


@pytest.fixture
def log_path(tmp_path: Path) -> Path:
    return tmp_path / "access.log"


@pytest.fixture
def clock() -> Clock:
    clock = Clock()
    clock.advance(WHEN)
    return clock


@contextmanager
def _memory_client(config: Config, clock: Clock) -> Iterator[StubTreq]:
    """
    A client, in memory, of the site that C{config} describes, with an access
    log that is closed afterwards.
    """
    site = build_site(config, MemoryReactor(), clock)
    try:
        yield stub_treq(site)
    finally:
        access_log = access_log_of(site)
        assert access_log is not None
        access_log.stopService()


@pytest.fixture
def client(log_path: Path, clock: Clock) -> Iterator[StubTreq]:
    config = config_from_args(["--access-log", str(log_path)])
    with _memory_client(config, clock) as memory_client:
        yield memory_client


def _fetch(client: StubTreq, method: str, path: str, **kwargs: Any) -> None:
    """
    Make a request that the site answers at once, and read the answer.
    """
    # StubTreq sets its methods at run time.
    pending = client.request(method, BASE + path, **kwargs)  # type: ignore[attr-defined]
    success_result_of(success_result_of(pending).content())


def test_each_finished_request_is_one_combined_log_format_line(
    client: StubTreq, log_path: Path
) -> None:
    _fetch(
        client,
        "GET",
        "/health",
        headers={"referer": "http://example.test/", "user-agent": "t/1"},
    )
    for path in ("/nowhere", "/pay"):
        _fetch(client, "GET", path)
    _fetch(client, "HEAD", "/health")
    _fetch(client, "POST", "/echo", data=b"abc")
    lines = _lines(log_path)
    assert lines[0] == (
        f'127.0.0.1 - - {STAMP} "GET /health HTTP/1.1" 200 2 '
        '"http://example.test/" "t/1"'
    )
    statuses = [(_fields(line)[3], _fields(line)[4:6]) for line in lines]
    assert statuses == [
        ("GET /health HTTP/1.1", ("200", "2")),
        ("GET /nowhere HTTP/1.1", ("404", str(len(error_page(404))))),
        ("GET /pay HTTP/1.1", ("402", statuses[2][1][1])),
        ("HEAD /health HTTP/1.1", ("200", "-")),
        ("POST /echo HTTP/1.1", ("200", "3")),
    ]


_whoami = Klein()


@_whoami.route("/whoami")
def whoami(request: IRequest) -> str:
    # What the authentication code sets on a login.
    request.remote_user = 'al ice"\x1b\n'  # type: ignore[attr-defined]
    return "you"


def test_the_remote_user_is_logged_escaped(log_path: Path, clock: Clock) -> None:
    config = config_from_args(["--no-demo", "--access-log", str(log_path)])
    config = dataclasses.replace(config, route_apps=(_whoami,))
    with _memory_client(config, clock) as client:
        _fetch(client, "GET", "/whoami")
        _fetch(client, "GET", "/health")
    first, second = (_fields(line) for line in _lines(log_path))
    assert first[1] == r"al\x20ice\"\x1b\n"
    assert second[1] == "-"


def test_dash_logs_to_standard_output(
    capsys: pytest.CaptureFixture[str], clock: Clock
) -> None:
    with _memory_client(config_from_args(["--access-log", "-"]), clock) as client:
        _fetch(client, "GET", "/health")
    (line,) = capsys.readouterr().out.splitlines()
    assert _fields(line)[3:5] == ("GET /health HTTP/1.1", "200")


@pytest.mark.parametrize(
    ("trusted", "logged_host"),
    [("127.0.0.1", "192.0.2.7"), ("10.0.0.0/8", "127.0.0.1")],
)
def test_behind_a_trusted_proxy_the_line_names_the_forwarded_client(
    log_path: Path, clock: Clock, trusted: str, logged_host: str
) -> None:
    config = config_from_args(
        ["--access-log", str(log_path), "--trusted-proxy", trusted]
    )
    with _memory_client(config, clock) as client:
        _fetch(
            client, "GET", "/health", headers={"x-forwarded-for": "6.6.6.6, 192.0.2.7"}
        )
    (line,) = _lines(log_path)
    assert _fields(line)[0] == logged_host


# -- raw bytes, on a live socket ----------------------------------------------
# Requests no client library sends (refused, or arriving in pieces), over a
# real connection whose peer address the line shows.


@pytest_twisted.async_yield_fixture
async def logged(log_path: Path, clock: Clock) -> AsyncIterator[LiveServer]:
    live = await LiveServer.start(["--access-log", str(log_path)], clock=clock)
    try:
        yield live
    finally:
        await stop_on_clock(live)


@pytest_twisted.ensureDeferred
async def test_client_supplied_fields_are_escaped(
    logged: LiveServer, log_path: Path
) -> None:
    await exchange(
        reactor,
        logged.port_number,
        b'GET /health?a="b"\\c HTTP/1.1\r\nHost: x\r\n'
        b'User-Agent: evil" 200 0 "-" "x\\\xff\tend\r\n'
        b'Referer: "quoted" \\ \xfe\r\n'
        b"Connection: close\r\n\r\n",
    )
    assert _lines(log_path) == [
        f"127.0.0.1 - - {STAMP} "
        r'"GET /health?a=\"b\"\\c HTTP/1.1" 200 2 '
        r'"\"quoted\" \\ \xfe" "evil\" 200 0 \"-\" \"x\\\xff\tend"'
    ]


@pytest.mark.parametrize(
    ("header", "agent"),
    [
        (b"User-Agent: a\rb\r\n", None),  # a bare CR: refused
        (b"User-Agent: a\x00b\r\n", None),  # NUL: refused
        (b"User-Agent: a\r\n\tb\r\n", None),  # a folded line: refused
        (b"User-Agent: a\x7fb\r\n", None),  # DEL: refused
    ],
)
@pytest_twisted.ensureDeferred
async def test_no_header_can_carry_a_line_break_into_the_log(
    logged: LiveServer, log_path: Path, header: bytes, agent: str | None
) -> None:
    await exchange(
        reactor,
        logged.port_number,
        b"GET /health HTTP/1.1\r\nHost: x\r\n" + header + b"Connection: close\r\n\r\n",
    )
    (line,) = _lines(log_path)
    fields = _fields(line)
    assert fields[3] == "GET /health HTTP/1.1"
    if agent is None:
        assert fields[4:] == ("400", str(len(error_page(400))), "-", "-")
    else:
        assert fields[4] == "200"
        assert fields[7] == agent


@pytest.mark.parametrize(
    ("request_bytes", "request_line", "status", "agent"),
    [
        (
            b"GET /" + b"a" * (MAX_REQUEST_LINE + 10) + b" HTTP/1.1\r\n\r\n",
            "-",
            414,
            "-",
        ),
        (
            b"GET /health HTTP/1.1\r\nUser-Agent: many\r\n"
            + b"X-A: b\r\n" * MAX_HEADER_COUNT
            + b"\r\n",
            "GET /health HTTP/1.1",
            431,
            "many",
        ),
        (
            b"POST /echo HTTP/1.1\r\nHost: x\r\nUser-Agent: big\r\n"
            b"Content-Length: 5000000\r\n\r\n",
            "POST /echo HTTP/1.1",
            413,
            "big",
        ),
        (b"GET /\x1b HTTP/1.1\r\n\r\n", r"GET /\x1b HTTP/1.1", 400, "-"),
        (
            b'GET /"\x7f\x80\xb0\xff HTTP/1.1\r\n\r\n',
            r"GET /\"\x7f\x80\xb0\xff HTTP/1.1",
            400,
            "-",
        ),
        (b"GET / HTTP/1.1 extra\r\n\r\n", "GET / HTTP/1.1 extra", 400, "-"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_requests_the_server_refuses_get_a_line_too(
    logged: LiveServer,
    log_path: Path,
    request_bytes: bytes,
    request_line: str,
    status: int,
    agent: str,
) -> None:
    await exchange(reactor, logged.port_number, request_bytes)
    (line,) = _lines(log_path)
    assert line == (
        f'127.0.0.1 - - {STAMP} "{request_line}" {status} '
        f'{len(error_page(status))} "-" "{agent}"'
    )


@pytest_twisted.ensureDeferred
async def test_a_refusal_behind_a_trusted_proxy_names_the_forwarded_client(
    log_path: Path, clock: Clock
) -> None:
    live = await LiveServer.start(
        [
            "--access-log",
            str(log_path),
            "--trusted-proxy",
            "127.0.0.1",
            "--max-body",
            "10",
        ],
        clock=clock,
    )
    try:
        await exchange(
            reactor,
            live.port_number,
            b"POST /echo HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 192.0.2.7\r\n"
            b"Content-Length: 100\r\n\r\n",
        )
    finally:
        await stop_on_clock(live)
    (line,) = _lines(log_path)
    assert _fields(line)[0] == "192.0.2.7"
    assert _fields(line)[3:5] == ("POST /echo HTTP/1.1", "413")


@pytest_twisted.ensureDeferred
async def test_a_refusal_after_a_keep_alive_request_logs_its_own_line(
    logged: LiveServer, log_path: Path
) -> None:
    await exchange(
        reactor,
        logged.port_number,
        b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"
        + b"GET /"
        + b"a" * (MAX_REQUEST_LINE + 10)
        + b" HTTP/1.1\r\n\r\n",
    )
    first, second = (_fields(line) for line in _lines(log_path))
    assert first[3:5] == ("GET /health HTTP/1.1", "200")
    assert second[3:5] == ("-", "414")


@pytest_twisted.ensureDeferred
async def test_a_request_head_too_slow_is_logged_as_408(
    logged: LiveServer, log_path: Path, clock: Clock
) -> None:
    client = await connect(reactor, logged.port_number)
    # llhttp hands a header line over when the next one starts.
    client.send(b"GET /health HTTP/1.1\r\nUser-Agent: slow\r\nX-A: b\r\n")
    await eventually(
        lambda: any(channel.waiting_for == "rest" for channel in logged.site.channels),
        "the request head",
    )
    (channel,) = logged.site.channels
    read = reads(channel)
    clock.advance(30)
    # A byte does not push back the deadline of the whole head.
    client.send(b"X")
    await eventually(lambda: read.endswith(b"X"), "the server to read the byte")
    clock.advance(29.9)
    # The refusal would be sent from the clock, within advance().
    assert channel.waiting_for == "rest" and not channel.refused
    assert not client.closed.called
    clock.advance(0.1)
    await client.closed
    (line,) = _lines(log_path)
    assert _fields(line)[3:] == (
        "GET /health HTTP/1.1",
        "408",
        str(len(error_page(408))),
        "-",
        "slow",
    )


def test_without_the_option_there_is_no_access_log() -> None:
    site = build_site(config_from_args([]), reactor, Clock())
    assert site.access_log is None
    assert access_log_of(site) is None


def test_an_unwritable_access_log_is_a_bad_option(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as raised:
        config_from_args(["--access-log", str(tmp_path)])
    assert raised.value.option == "--access-log"


def test_a_failed_reopen_keeps_the_old_file(
    tmp_path: Path, captured_log: list[LogEvent]
) -> None:
    directory = tmp_path / "logs"
    directory.mkdir()
    access_log = AccessLog(str(directory / "access.log"), Clock())
    directory.rename(tmp_path / "moved")
    access_log.reopen()
    access_log.log_refusal(_refusal())
    assert len(_lines(tmp_path / "moved" / "access.log")) == 1
    (error,) = [e for e in captured_log if e["log_level"] is LogLevel.error]
    assert "Reopening the access log" in error["log_format"]
    access_log.stopService()
    access_log.log_refusal(_refusal())  # after the stop: dropped, no error
    assert len(_lines(tmp_path / "moved" / "access.log")) == 1
    directory.mkdir()
    access_log.reopen()  # nor is a file opened again
    assert not (directory / "access.log").exists()


def _refusal() -> Refusal:
    return Refusal(
        client=IPv4Address("TCP", "127.0.0.1", 1),
        request_line=None,
        headers=None,
        code=400,
        length=1,
    )


def test_sighup_without_an_access_log_is_ignored() -> None:
    previous = signal.getsignal(signal.SIGHUP)
    try:
        reopen_on_sighup(reactor, None)
        assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGHUP, previous)


# -- a real process --------------------------------------------------------------


class _Server:
    """
    C{python -m app} in a subprocess, its standard output read line by line.
    """

    def __init__(self, *argv: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "app", LISTEN, *argv],
            cwd=ROOT,
            env=dict(os.environ, PYTHONUNBUFFERED="1"),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        self._buffer = b""
        self.lines: list[str] = []

    def read_until(self, pattern: str, timeout: float = 15.0) -> str:
        assert self.process.stdout is not None
        found = re.compile(pattern)
        for line in self.lines:
            if found.search(line):
                return line
        fd = self.process.stdout.fileno()
        while select.select([fd], [], [], timeout)[0]:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            self._buffer += chunk
            *complete, self._buffer = self._buffer.split(b"\n")
            for raw in complete:
                line = raw.decode("utf-8")
                self.lines.append(line)
                if found.search(line):
                    return line
        raise AssertionError(f"no line matching {pattern!r} in {self.lines}")

    def port(self) -> int:
        line = self.read_until(r"listening on http://127\.0\.0\.1:\d+/")
        return int(re.findall(r"127\.0\.0\.1:(\d+)/", line)[0])

    def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=15)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        for stream in (self.process.stdout, self.process.stderr):
            if stream is not None:
                stream.close()


@pytest.fixture
def servers() -> Iterator[list[_Server]]:
    started: list[_Server] = []
    yield started
    for server in started:
        server.kill()


def _get(port: int, path: str) -> int:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=15)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        response.read()
        return response.status
    finally:
        connection.close()


def test_sighup_reopens_the_access_log(tmp_path: Path, servers: list[_Server]) -> None:
    path = tmp_path / "access.log"
    server = _Server("--access-log", str(path))
    servers.append(server)
    port = server.port()
    assert _get(port, "/health") == 200
    path.rename(tmp_path / "access.log.1")
    server.process.send_signal(signal.SIGHUP)
    server.read_until("Reopened the access log")
    assert _get(port, "/pay") == 402
    assert server.stop() == 0
    (old,) = _lines(tmp_path / "access.log.1")
    (new,) = _lines(path)
    assert _fields(old)[3] == "GET /health HTTP/1.1"
    assert _fields(new)[3] == "GET /pay HTTP/1.1"


def test_json_server_log_lines(servers: list[_Server]) -> None:
    server = _Server("--log-format", "json")
    servers.append(server)
    listening = json.loads(server.read_until("listening on"))
    assert set(listening) == {"time", "level", "namespace", "text"}
    assert ISO_UTC.fullmatch(listening["time"])
    assert listening["level"] == "info"
    assert listening["namespace"] == "app.cli.main"
    assert re.fullmatch(r"listening on http://127\.0\.0\.1:\d+/", listening["text"])
    port = server.port()
    assert _get(port, "/delayed/fail?seconds=0") == 500
    failed = json.loads(server.read_until("Rendering delayed response failed"))
    assert failed["text"] == "Rendering delayed response failed"
    assert failed["level"] == "critical"
    assert "Traceback" in failed["failure"]
    assert "DelayedFailure" in failed["failure"]
    assert server.stop() == 0
    assert server.process.stdout is not None
    rest = server.process.stdout.read().decode("utf-8").splitlines()
    for line in server.lines + rest:
        assert isinstance(json.loads(line), dict), line


# -- the observers -------------------------------------------------------------


def _emit(stream: io.StringIO, log_format: str) -> Logger:
    return Logger(namespace="app.test", observer=make_observer(log_format, stream))


def test_text_and_json_read_the_same() -> None:
    text, json_lines = io.StringIO(), io.StringIO()
    event: dict[str, object] = {}

    @provider(ILogObserver)
    def both(logged: LogEvent) -> None:
        event.update(logged)

    Logger(namespace="app.test", observer=both).info(
        "listening on {url}", url="http://127.0.0.1:8080/"
    )
    text_observer(text)(event)
    json_observer(json_lines)(event)
    record = json.loads(json_lines.getvalue())
    assert record == {
        "time": record["time"],
        "level": "info",
        "namespace": "app.test",
        "text": "listening on http://127.0.0.1:8080/",
    }
    assert text.getvalue() == (
        f"{record['time']} [app.test#info] listening on http://127.0.0.1:8080/\n"
    )


def _failure() -> Failure:
    try:
        raise ValueError("broken on purpose")
    except ValueError:
        return Failure()


def test_a_failure_carries_its_traceback_in_both_formats() -> None:
    for log_format in ("text", "json"):
        stream = io.StringIO()
        _emit(stream, log_format).failure(
            "Rendering {uri} failed", _failure(), uri="/x"
        )
        if log_format == "json":
            record = json.loads(stream.getvalue())
            assert record["text"] == "Rendering /x failed"
            assert record["level"] == "critical"
            assert "ValueError: broken on purpose" in record["failure"]
            assert record["failure"].startswith("Traceback")
        else:
            first, *trace = stream.getvalue().splitlines()
            assert first.endswith("[app.test#critical] Rendering /x failed")
            assert trace[0].startswith("Traceback")
            assert trace[-1] == "builtins.ValueError: broken on purpose"


def test_debug_events_are_left_out() -> None:
    stream = io.StringIO()
    _emit(stream, "text").debug("noise")
    assert stream.getvalue() == ""


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_an_unencodable_message_is_still_written(log_format: str) -> None:
    raw = io.BytesIO()
    stream = io.TextIOWrapper(raw, encoding="utf-8", errors="strict")
    _emit(stream, log_format).info("file {name}", name="bad\udcffname")  # type: ignore[arg-type]
    stream.flush()
    assert b"bad" in raw.getvalue()
    assert b"udcff" in raw.getvalue()
