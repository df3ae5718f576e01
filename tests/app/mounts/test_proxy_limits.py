"""
What the reverse proxy refuses: an upstream response head too large or too
long, the client's forwarding claims, and a Location that would lead out of
the mount.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import threading
import time
from collections.abc import AsyncIterator, Iterator

import pytest
import pytest_twisted
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet import reactor
from twisted.internet.defer import maybeDeferred
from twisted.internet.protocol import ServerFactory
from twisted.logger import LogEvent, formatEvent
from twisted.web.server import Site

from app.mounts.proxy import Upstream
from app.mounts.proxy.client import MAX_HEAD_BYTES, MAX_HEAD_LINES
from app.mounts.proxy.policy import remove_dot_segments
from app.testing import LiveServer
from tests.conftest import (
    failures,
    listen,
    port_number,
    resident_kib,
    serving_port,
    start_app,
)
from tests.fakes.upstream import CannedUpstream, UpstreamServer
from tests.rawhttp import blocking_get, exchange, parse_response

PATIENCE = 10.0
MIB = 1024 * 1024


async def _get(live: LiveServer, target: bytes, headers: bytes = b"") -> bytes:
    return await exchange(
        reactor,
        live.port_number,
        b"GET " + target + b" HTTP/1.1\r\nHost: front.example\r\n"
        b"Connection: close\r\n" + headers + b"\r\n",
    )


class _Canned:
    """
    An upstream on 127.0.0.1 answering every request with C{answer}, which
    may be set once its port is known.
    """

    def __init__(self) -> None:
        self.answer = b""
        self.factory = ServerFactory.forProtocol(lambda: CannedUpstream(self.answer))
        self.port = listen(self.factory)  # type: ignore[arg-type]  # forProtocol is typed as Factory
        self.origin = b"http://127.0.0.1:%d" % (port_number(self.port),)


@pytest_twisted.async_yield_fixture
async def canned() -> AsyncIterator[tuple[_Canned, LiveServer]]:
    upstream = _Canned()
    url = upstream.origin.decode() + "/base/"
    live = await LiveServer.start(["--no-demo", "--proxy", url])
    try:
        yield upstream, live
    finally:
        await live.stop()
        await maybeDeferred(upstream.port.stopListening)


def _answer(header_lines: list[bytes], status: bytes = b"200 OK") -> bytes:
    head = b"HTTP/1.1 " + status + b"\r\n" + b"".join(header_lines)
    return head + b"Content-Length: 2\r\n\r\nok"


def _lines(count: int) -> list[bytes]:
    return [b"X-Line-%d: v\r\n" % (number,) for number in range(count)]


# -- the upstream's response head ----------------------------------------------


@pytest_twisted.ensureDeferred
async def test_a_head_of_the_most_lines_passes(
    canned: tuple[_Canned, LiveServer],
) -> None:
    upstream, live = canned
    upstream.answer = _answer(_lines(MAX_HEAD_LINES - 1))  # and Content-Length
    status, headers, body = parse_response(await _get(live, b"/proxy/x"))
    assert (status, body) == (200, b"ok")
    assert headers[b"x-line-0"] == b"v"


@pytest_twisted.ensureDeferred
async def test_a_head_of_101_lines_is_502(
    canned: tuple[_Canned, LiveServer], captured_log: list[LogEvent]
) -> None:
    upstream, live = canned
    upstream.answer = _answer(_lines(MAX_HEAD_LINES))  # and Content-Length
    status, _, body = parse_response(await _get(live, b"/proxy/x"))
    assert status == 502
    assert b"502 Bad Gateway" in body
    assert failures(captured_log) == []
    assert any(
        "response head over 100 lines" in formatEvent(event) for event in captured_log
    )


@pytest_twisted.ensureDeferred
async def test_a_65_kib_header_is_502(canned: tuple[_Canned, LiveServer]) -> None:
    upstream, live = canned
    upstream.answer = _answer([b"X-Big: " + b"a" * (65 * 1024) + b"\r\n"])
    status, _, body = parse_response(await _get(live, b"/proxy/x"))
    assert status == 502
    assert b"502 Bad Gateway" in body


@pytest_twisted.ensureDeferred
async def test_many_headers_over_64_kib_together_are_502(
    canned: tuple[_Canned, LiveServer],
) -> None:
    upstream, live = canned
    upstream.answer = _answer(
        [b"X-Part-%d: %s\r\n" % (n, b"b" * 1000) for n in range(70)]
    )
    status, _, _ = parse_response(await _get(live, b"/proxy/x"))
    assert status == 502


def _head_of(size: int) -> bytes:
    """
    A 200 answer whose head (status line to empty line) is C{size} bytes.
    """
    start = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Fill: "
    end = b"\r\n\r\n"
    return start + b"f" * (size - len(start) - len(end)) + end + b"ok"


@pytest_twisted.ensureDeferred
async def test_a_head_of_exactly_64_kib_passes(
    canned: tuple[_Canned, LiveServer],
) -> None:
    upstream, live = canned
    upstream.answer = _head_of(MAX_HEAD_BYTES)
    status, _, body = parse_response(await _get(live, b"/proxy/x"))
    assert (status, body) == (200, b"ok")


@pytest_twisted.ensureDeferred
async def test_a_head_one_byte_over_64_kib_is_502(
    canned: tuple[_Canned, LiveServer],
) -> None:
    upstream, live = canned
    upstream.answer = _head_of(MAX_HEAD_BYTES + 1)
    status, _, _ = parse_response(await _get(live, b"/proxy/x"))
    assert status == 502


@pytest_twisted.ensureDeferred
async def test_an_interim_head_is_counted_apart(
    canned: tuple[_Canned, LiveServer],
) -> None:
    upstream, live = canned
    interim = b"HTTP/1.1 103 Early Hints\r\n" + b"".join(_lines(80)) + b"\r\n"
    upstream.answer = interim + _answer(_lines(80))
    status, _, body = parse_response(await _get(live, b"/proxy/x"))
    assert (status, body) == (200, b"ok")


class _EndlessHead(threading.Thread):
    """
    An upstream on a raw socket that answers the first request with a status
    line and then header lines, up to C{lines} of them, for as long as its
    peer takes them.

    @ivar sent: bytes of header lines written.
    @ivar closed: whether the peer closed the connection before all were
        written.
    """

    def __init__(self, lines: int) -> None:
        super().__init__(daemon=True)
        self.lines = lines
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.listener.getsockname()[1]
        self.sent = 0
        self.closed = False

    def run(self) -> None:
        connection, _ = self.listener.accept()
        with connection:
            connection.settimeout(PATIENCE)
            received = b""
            while b"\r\n\r\n" not in received:
                received += connection.recv(65536)
            batch = b"".join(b"X-Line-%07d: v\r\n" % (n,) for n in range(1000))
            try:
                connection.sendall(b"HTTP/1.1 200 OK\r\n")
                for _ in range(self.lines // 1000):
                    connection.sendall(batch)
                    self.sent += len(batch)
            except TimeoutError:
                return
            except OSError:
                self.closed = True

    def stop(self) -> None:
        self.listener.close()
        self.join(PATIENCE)


@pytest.fixture
def endless_head() -> Iterator[tuple[_EndlessHead, int, int]]:
    """
    An upstream sending a million header lines, and C{python -m app} proxying
    to it: the upstream, the server's process id and its port.
    """
    upstream = _EndlessHead(lines=1_000_000)
    upstream.start()
    started: list[subprocess.Popen[str]] = []
    process = start_app(
        started,
        "--no-demo",
        "--proxy",
        f"http://127.0.0.1:{upstream.port}/",
        "--listen",
        "tcp:0:interface=127.0.0.1",
    )
    try:
        port = serving_port(process)
        yield upstream, process.pid, port
    finally:
        process.kill()
        process.wait()
        upstream.stop()


def test_an_endless_head_is_502_closed_and_not_kept(
    endless_head: tuple[_EndlessHead, int, int],
) -> None:
    # Measured on the live server's process: its resident set stays flat
    # while the upstream offers a million header lines (about 20 MiB).
    upstream, pid, port = endless_head
    assert b"200 OK" in blocking_get(port, b"/health", timeout=PATIENCE)
    before = resident_kib(pid)
    status, _, body = parse_response(blocking_get(port, b"/proxy/x", timeout=PATIENCE))
    assert status == 502
    assert b"502 Bad Gateway" in body
    upstream.join(PATIENCE)
    assert not upstream.is_alive()
    assert upstream.closed, "the server did not close the upstream connection"
    peak = before
    for _ in range(3):
        time.sleep(0.1)
        peak = max(peak, resident_kib(pid))
    assert (peak - before) * 1024 < 8 * MIB


# -- what the client may not claim ---------------------------------------------


@pytest_twisted.async_yield_fixture
async def echo() -> AsyncIterator[LiveServer]:
    resource = UpstreamServer()
    port = listen(Site(resource))
    url = f"http://127.0.0.1:{port_number(port)}/base/"
    live = await LiveServer.start(["--no-demo", "--proxy", url])
    try:
        yield live
    finally:
        await live.stop()
        await maybeDeferred(port.stopListening)


@pytest_twisted.ensureDeferred
async def test_forwarding_claims_of_the_client_do_not_go_upstream(
    echo: LiveServer,
) -> None:
    data = await _get(
        echo,
        b"/proxy/echo",
        b"Forwarded: for=6.6.6.6\r\n"
        b"X-Real-IP: 6.6.6.6\r\n"
        b"X_Forwarded_For: 6.6.6.6\r\n"
        b"Client_IP: 6.6.6.6\r\n"
        b"X-Kept: yes\r\n"
        b"Accept-Language: fr\r\n",
    )
    status, _, body = parse_response(data)
    assert status == 200
    seen = json.loads(body)["headers"]
    for name in ("forwarded", "x-real-ip", "x_forwarded_for", "client_ip"):
        assert name not in seen
    assert not any("_" in name for name in seen)
    assert seen["x-kept"] == ["yes"]
    assert seen["accept-language"] == ["fr"]
    assert seen["x-forwarded-for"] == ["127.0.0.1"]


# -- Location never leads out of the mount -------------------------------------


async def _location(canned: tuple[_Canned, LiveServer], value: bytes) -> bytes | None:
    upstream, live = canned
    upstream.answer = (
        b"HTTP/1.1 302 Found\r\nLocation: "
        + value.replace(b"UP", upstream.origin)
        + b"\r\nContent-Length: 0\r\n\r\n"
    )
    status, headers, _ = parse_response(await _get(live, b"/proxy/x"))
    assert status == 302
    return headers.get(b"location")


@pytest.mark.parametrize(
    ("location", "sent"),
    [
        (b"/base/./x", b"/proxy/x"),
        (b"/base/a/../b?q=/../#f", b"/proxy/b?q=/../#f"),
        (b"UP/base/a/./../b", b"/proxy/b"),
        (b"UP/base/%2E%2e/base/c", b"/proxy/c"),
        # Resolved outside the base path: a path is not rewritten...
        (b"/base/../admin", b"/base/../admin"),
        (b"/../../etc", b"/../../etc"),
        # ...and a URL at the upstream's origin is dropped.
        (b"UP/a/b/../../../c", None),
        (b"UP/base/../admin", None),
        (b"UP/base/%2e%2e/admin", None),
        (b"UP/base/..\\admin", None),
    ],
)
@pytest_twisted.ensureDeferred
async def test_location_is_resolved_before_it_is_moved(
    canned: tuple[_Canned, LiveServer], location: bytes, sent: bytes | None
) -> None:
    assert await _location(canned, location) == sent


@pytest.mark.parametrize(
    ("location", "rewritten"),
    [
        (b"/base/../admin", b"/base/../admin"),
        (b"/base/./x", b"/proxy/x"),
        (b"/base/.", b"/proxy/"),
        (b"/base/x/..", b"/proxy/"),
        (b"/base/..", b"/base/.."),
        (b"/base/x/../..", b"/base/x/../.."),
        (b"/base/.%2E/admin", b"/base/.%2E/admin"),
        (b"/base\\..\\admin", b"/base\\..\\admin"),
        (b"/base/\\evil.example/", b"/proxy//evil.example/"),
        (b"/base/.\t./admin", b"/base/.\t./admin"),
        (b"/../../etc", b"/../../etc"),
        (b"/base/../base/x", b"/proxy/x"),
        (b"/base/a/../../base", b"/proxy"),
        (b"http://up.example:8080/a/b/../../../c", None),
        (b"http://up.example:8080/other", None),
        (b"//up.example:8080/base/../x", None),
        (b"http://up.example:8080\\base\\x", b"/proxy/x"),
        (b"http://up.example:8080/base/a/../b#../..", b"/proxy/b#../.."),
        (b"http://other.example/base/../x", b"http://other.example/base/../x"),
        (b"../../etc", b"../../etc"),
    ],
)
def test_rewrite_location_resolves_dot_segments(
    location: bytes, rewritten: bytes | None
) -> None:
    upstream = Upstream.from_url("http://up.example:8080/base/")
    assert upstream.rewrite_location(location, b"/proxy/") == rewritten


@pytest.mark.parametrize(
    ("path", "resolved"),
    [
        (b"/a/b/c/./../../g", b"/a/g"),
        (b"/a/b/../../../c", b"/c"),
        (b"/..", b"/"),
        (b"/.", b"/"),
        (b"/", b"/"),
        (b"/a/.", b"/a/"),
        (b"/a/..", b"/"),
        (b"/a//b/../c", b"/a//c"),
        (b"/a/%2E%2e/b", b"/b"),
        (b"/a\\..\\b", b"/b"),
        (b"/a/.../b", b"/a/.../b"),
    ],
)
def test_remove_dot_segments(path: bytes, resolved: bytes) -> None:
    assert remove_dot_segments(path) == resolved


_PIECES = st.sampled_from(
    [b"/", b".", b"..", b"%2e", b"%2E", b"\\", b"base", b"a", b"?", b"#", b"\t"]
)


@given(
    prefix=st.sampled_from([b"", b"http://up.example:8080", b"//up.example:8080"]),
    pieces=st.lists(_PIECES, max_size=12),
)
def test_a_rewritten_location_stays_in_the_mount(
    prefix: bytes, pieces: list[bytes]
) -> None:
    upstream = Upstream.from_url("http://up.example:8080/base/")
    location = prefix + b"/" + b"".join(pieces)
    rewritten = upstream.rewrite_location(location, b"/proxy/")
    if rewritten is None or rewritten == location:
        assert not rewritten or not rewritten.startswith(b"/proxy")
        return
    path = re.split(rb"[?#]", rewritten, maxsplit=1)[0]
    assert path == b"/proxy" or path.startswith(b"/proxy/")
    assert remove_dot_segments(path) == path
