"""
Protocol limits of the HTTP layer, with exact bytes over a raw socket.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import maybeDeferred
from twisted.internet.interfaces import IListeningPort
from twisted.internet.task import Clock
from twisted.logger import LogEvent

from app.config import Config
from app.http.limits import MAX_HEADER_COUNT, MAX_REQUEST_LINE
from app.http.site import Site
from app.site import build_site
from app.testing import LiveServer, stub_treq
from tests.conftest import eventually, listen, port_number, reads
from tests.rawhttp import connect, exchange, parse_response


@pytest_twisted.ensureDeferred
async def test_a_body_over_max_body_is_413(server: LiveServer) -> None:
    response = await server.post(
        "/echo", data=b"x" * (2 * 1024 * 1024), headers={"content-type": "a/b"}
    )
    assert response.code == 413
    assert "413" in await response.text()


@pytest_twisted.ensureDeferred
async def test_a_body_at_max_body_is_accepted() -> None:
    live = await LiveServer.start(["--max-body", "1000"])
    try:
        response = await live.post("/echo", data=b"y" * 1000)
        assert response.code == 200
        assert await response.content() == b"y" * 1000
        response = await live.post("/echo", data=b"y" * 1001)
        assert response.code == 413
        await response.content()
    finally:
        await live.stop()


@pytest_twisted.ensureDeferred
async def test_413_comes_instead_of_100_continue(server: LiveServer) -> None:
    client = await connect(reactor, server.port_number)
    client.send(
        b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5000000\r\n"
        b"Expect: 100-continue\r\n\r\n"
    )
    data = await client.closed
    status, headers, body = parse_response(data)
    assert status == 413
    assert b"100 Continue" not in data
    assert headers[b"connection"] == b"close"
    assert int(headers[b"content-length"]) == len(body)


@pytest_twisted.ensureDeferred
async def test_413_reaches_a_client_that_keeps_sending(server: LiveServer) -> None:
    client = await connect(reactor, server.port_number)
    client.send(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 3000000\r\n\r\n")
    for _ in range(30):
        client.send(b"z" * 65536)
    data = await client.closed
    assert parse_response(data)[0] == 413


@pytest_twisted.ensureDeferred
async def test_a_chunked_body_over_max_body_is_413() -> None:
    live = await LiveServer.start(["--max-body", "100"])
    try:
        chunk = b"40\r\n" + b"c" * 64 + b"\r\n"
        data = await exchange(
            reactor,
            live.port_number,
            b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
            + chunk * 3
            + b"0\r\n\r\n",
        )
        assert parse_response(data)[0] == 413
        assert b"HTTP/1.1 200" not in data
    finally:
        await live.stop()


@pytest_twisted.ensureDeferred
async def test_a_small_chunked_body_is_echoed(server: LiveServer) -> None:
    data = await exchange(
        reactor,
        server.port_number,
        b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
        b"Connection: close\r\nContent-Type: text/plain\r\n\r\n"
        b"5\r\nhello\r\n0\r\n\r\n",
    )
    status, _headers, body = parse_response(data)
    assert status == 200
    assert body == b"hello"


@pytest_twisted.ensureDeferred
async def test_an_overlong_request_line_is_414(server: LiveServer) -> None:
    path = b"/" + b"a" * MAX_REQUEST_LINE
    data = await exchange(
        reactor, server.port_number, b"GET " + path + b" HTTP/1.1\r\n\r\n"
    )
    status, headers, _ = parse_response(data)
    assert status == 414
    assert headers[b"x-content-type-options"] == b"nosniff"


@pytest_twisted.ensureDeferred
async def test_a_request_line_that_never_ends_is_414(server: LiveServer) -> None:
    data = await exchange(reactor, server.port_number, b"GET /" + b"a" * 40000)
    assert parse_response(data)[0] == 414


@pytest_twisted.ensureDeferred
async def test_a_huge_header_is_431(server: LiveServer) -> None:
    data = await exchange(
        reactor,
        server.port_number,
        b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * 20000 + b"\r\n\r\n",
    )
    assert parse_response(data)[0] == 431


@pytest_twisted.ensureDeferred
async def test_too_many_headers_is_431(server: LiveServer) -> None:
    headers = b"".join(b"X-H%d: v\r\n" % i for i in range(MAX_HEADER_COUNT + 1))
    data = await exchange(
        reactor,
        server.port_number,
        b"GET / HTTP/1.1\r\nHost: x\r\n" + headers + b"\r\n",
    )
    assert parse_response(data)[0] == 431


@pytest_twisted.ensureDeferred
async def test_many_small_headers_within_limits_are_fine(server: LiveServer) -> None:
    headers = b"".join(b"X-H%d: v\r\n" % i for i in range(MAX_HEADER_COUNT - 2))
    data = await exchange(
        reactor,
        server.port_number,
        b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n" + headers + b"\r\n",
    )
    assert parse_response(data)[0] == 200


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GARBAGE\r\n\r\n",
        b"GET / HTTP/9.9\r\n\r\n",
        b"GET / HTTP/1.1\r\nNo colon here\r\n\r\n",
        b"POST /echo HTTP/1.1\r\nContent-Length: -5\r\n\r\n",
        b"POST /echo HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
        b"POST /echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    ],
    ids=["garbage", "version", "header", "negative", "two-lengths", "bad-chunk"],
)
@pytest_twisted.ensureDeferred
async def test_malformed_requests_are_a_400_page(
    server: LiveServer, request_bytes: bytes
) -> None:
    data = await exchange(reactor, server.port_number, request_bytes)
    status, _headers, body = parse_response(data)
    assert status == 400
    assert b"400 Bad Request" in body


@pytest_twisted.ensureDeferred
async def test_a_request_head_that_trickles_in_is_cut_off() -> None:
    clock = Clock()
    site = build_site(Config(demo=False, idle_timeout=5), reactor, clock)
    port = listen(site)
    try:
        client = await connect(reactor, port_number(port))
        client.send(b"GET /health HTTP/1.1\r\n")
        for _ in range(9):
            # A byte a second keeps twisted's own idle timer from ever firing.
            await _settle()
            client.send(b"X")
            clock.advance(1)
        data = await client.closed
        assert parse_response(data)[0] == 408
    finally:
        await maybeDeferred(port.stopListening)


async def _settle() -> None:
    from twisted.internet.task import deferLater

    await deferLater(reactor, 0.01, lambda: None)


@pytest_twisted.ensureDeferred
async def test_stub_treq_serves_the_same_site() -> None:
    site = build_site(Config(demo=True), reactor, Clock())
    client = stub_treq(site)
    # StubTreq sets its methods at run time.
    response = await client.get("http://example.invalid/pay")  # type: ignore[attr-defined]
    assert response.code == 402
    assert response.headers.getRawHeaders(b"server") == [b"app"]
    assert "Please pay." in await response.text()


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: identity\r\n"
        b"Content-Length: 5\r\n\r\nhello",
        b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
        b"Content-Length: 5\r\n\r\n0\r\n\r\n",
        b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"GET /\xc3\xa9 HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /\x7f HTTP/1.1\r\nHost: x\r\n\r\n",
    ],
    ids=["te-identity", "te-then-cl", "cl-then-te", "utf8-target", "del"],
)
@pytest_twisted.ensureDeferred
async def test_ambiguous_framing_and_raw_bytes_in_the_target_are_400(
    server: LiveServer, request_bytes: bytes
) -> None:
    data = await exchange(reactor, server.port_number, request_bytes)
    assert parse_response(data)[0] == 400
    assert data.count(b"HTTP/1.1 ") == 1


@pytest_twisted.ensureDeferred
async def test_a_client_that_never_reads_its_response_is_closed() -> None:
    clock = Clock()
    config = Config(max_body=64 * 1024 * 1024, idle_timeout=30)
    site = build_site(config, reactor, clock)
    port = listen(site)
    try:
        client = await connect(reactor, port_number(port))
        client.pause_reading()  # never read
        body = b"r" * (32 * 1024 * 1024)
        client.send(
            b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body)
            + body
        )
        await eventually(
            lambda: any(channel.waiting_for == "reader" for channel in site.channels),
            "the server to fill its send buffer",
        )
        clock.advance(29)
        assert site.channels
        clock.advance(1)
        client.resume_reading()
        await client.closed
        assert not site.channels
    finally:
        await maybeDeferred(port.stopListening)


@pytest_twisted.ensureDeferred
async def test_nosniff_is_set_over_what_a_mount_sends(tmp_path: Path) -> None:
    script = tmp_path / "sniff.py"
    script.write_text(
        "print('Content-Type: text/html')\n"
        "print('X-Content-Type-Options: sniff')\n"
        "print('Server: Apache/2.4.1')\n"
        "print()\n"
        "print('<p>hi</p>')\n"
    )
    live = await LiveServer.start(["--no-demo", "--cgi-dir", str(tmp_path)])
    try:
        response = await live.get("/cgi-bin/sniff.py")
        await response.content()
    finally:
        await live.stop()
    assert response.code == 200
    assert response.headers.getRawHeaders(b"x-content-type-options") == [b"nosniff"]
    assert response.headers.getRawHeaders(b"server") == [b"app"]


@pytest_twisted.ensureDeferred
async def test_head_to_an_error_resource_logs_no_warning(
    captured_log: list[LogEvent], tmp_path: Path
) -> None:
    live = await LiveServer.start(["--no-demo", "--cgi-dir", str(tmp_path)])
    try:
        response = await live.head("/cgi-bin/missing.py")
        assert await response.content() == b""
    finally:
        await live.stop()
    assert response.code == 404
    (length,) = response.headers.getRawHeaders(b"content-length")
    assert int(length) > 0
    from twisted.logger import formatEvent

    assert not [e for e in captured_log if "HEAD request" in formatEvent(e)]


async def _clock_site(
    idle_timeout: float, demo: bool = False
) -> tuple[Clock, Site, IListeningPort]:
    clock = Clock()
    site = build_site(Config(demo=demo, idle_timeout=idle_timeout), reactor, clock)
    return clock, site, listen(site)


def _idle_and_open(site: Site) -> bool:
    """
    Whether the one connection to C{site} still waits for a next request:
    its idle timeout closes it from the clock, within C{Clock.advance}.
    """
    (channel,) = site.channels
    return channel.persistent and channel.waiting_for == "request"


@pytest_twisted.ensureDeferred
async def test_a_request_line_that_trickles_in_is_cut_off() -> None:
    clock, site, port = await _clock_site(idle_timeout=5)
    try:
        client = await connect(reactor, port_number(port))
        (channel,) = await eventually(lambda: list(site.channels), "the connection")
        read = reads(channel)
        for sent, byte in enumerate(b"GET /health HTT", start=1):
            # Never a whole line: the head deadline starts with its first byte.
            client.send(bytes([byte]))

            def arrived(sent: int = sent) -> bool:
                return len(read) == sent

            await eventually(arrived, "the server to read the byte")
            clock.advance(1)
            if channel.refused:
                break
        data = await client.closed
        assert parse_response(data)[0] == 408
        # Refused the moment the deadline set by the first byte passed.
        assert clock.seconds() == 5
    finally:
        await maybeDeferred(port.stopListening)


@pytest_twisted.ensureDeferred
async def test_a_keep_alive_connection_closes_after_the_idle_timeout() -> None:
    clock, site, port = await _clock_site(idle_timeout=5)
    try:
        client = await connect(reactor, port_number(port))
        for _ in range(3):
            # Each request pushes the idle deadline back.
            count = client.received.count(b"HTTP/1.1 200")
            client.send(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")

            def answered(count: int = count) -> bool:
                return client.received.count(b"HTTP/1.1 200") > count

            await eventually(answered, "a response")
            clock.advance(4)
        clock.advance(0.9)
        assert _idle_and_open(site)
        assert not client.closed.called
        clock.advance(0.1)
        data = await client.closed
        assert data.count(b"HTTP/1.1 200") == 3
        await eventually(lambda: not site.channels, "the server's side to close")
        assert clock.getDelayedCalls() == []
    finally:
        await maybeDeferred(port.stopListening)


@pytest_twisted.ensureDeferred
async def test_a_request_slower_than_the_idle_timeout_is_answered() -> None:
    clock, site, port = await _clock_site(idle_timeout=5, demo=True)
    try:
        client = await connect(reactor, port_number(port))
        client.send(b"GET /delayed?seconds=8 HTTP/1.1\r\nHost: x\r\n\r\n")
        await eventually(
            lambda: any(channel.requests for channel in site.channels),
            "the request to start",
        )
        for _ in range(8):
            clock.advance(1)
            await _settle()
        await eventually(lambda: b"HTTP/1.1 200" in client.received, "the response")
        # Idle from now on: closed one idle timeout after the response.
        clock.advance(4.9)
        assert _idle_and_open(site)
        assert not client.closed.called
        clock.advance(0.1)
        await client.closed
    finally:
        await maybeDeferred(port.stopListening)


@pytest_twisted.ensureDeferred
async def test_every_response_has_one_date_its_own_where_it_sets_one() -> None:
    live = await LiveServer.start(["--routes", "tests.example_routes"])
    try:
        for path, own in [(b"/health", None), (b"/dated", b"Thu, 01 Jan 2015")]:
            data = await exchange(
                reactor,
                live.port_number,
                b"GET %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" % path,
            )
            head = data.split(b"\r\n\r\n", 1)[0].split(b"\r\n")
            dates = [line for line in head if line.lower().startswith(b"date:")]
            assert len(dates) == 1
            if own is not None:
                assert own in dates[0]
            else:
                assert head[1] == dates[0]
                assert dates[0].endswith(b" GMT")
    finally:
        await live.stop()


@pytest.mark.parametrize(
    "cookie_headers",
    [
        [],
        [b"a=1"],
        [b"a=1; b=2;c=3"],
        [b"a=1", b"a=2; d = 4"],
        [b"noequals; a=x=y; ;"],
    ],
)
@pytest_twisted.ensureDeferred
async def test_cookies_are_parsed_as_twisted_parses_them(
    cookie_headers: list[bytes],
) -> None:
    from twisted.web.server import Request as TwistedRequest
    from twisted.web.test.requesthelper import DummyChannel

    expected = TwistedRequest(DummyChannel())
    for header in cookie_headers:
        expected.requestHeaders.addRawHeader(b"cookie", header)
    expected.parseCookies()
    want = f"{sorted(expected.received_cookies.items())!r} " + repr(
        expected.getCookie(b"a")
    )

    live = await LiveServer.start(["--routes", "tests.example_routes"])
    try:
        data = await exchange(
            reactor,
            live.port_number,
            b"GET /cookies HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
            + b"".join(b"Cookie: " + header + b"\r\n" for header in cookie_headers)
            + b"\r\n",
        )
        assert parse_response(data)[2].decode() == want
    finally:
        await live.stop()
