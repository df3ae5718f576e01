"""
The HTTP/1.1 channel end to end, over real sockets: back-pressure on a
client that pipelines and reads nothing, bodies left unparsed until a
handler asks, form limits, one-byte chunks, smuggling shapes, RFC 9112's
host and target rules, HTTP/1.0 keep-alive and C{100 Continue}.

Servers run on a L{Clock} that nothing advances, so no timer of theirs
decides an outcome here; the resident-set test runs C{python -m app} as a
process of its own, whose memory is the thing measured.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import select
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import connectionDone
from twisted.internet.task import Clock
from twisted.logger import LogEvent
from twisted.python.failure import Failure

from app.cli.options import config_from_args
from app.http.forms import form_fields
from app.testing import LiveServer
from tests.conftest import (
    failures,
    resident_kib,
    serving_port,
    start_app,
    stop_on_clock,
)
from tests.paths import ROOT
from tests.rawhttp import RawClient, blocking_get, exchange, parse_response

DEMO = ROOT / "app" / "demo"

#: Large enough for the 1 MiB bodies below, with room to spare.
MAX_BODY = 2 * 1024 * 1024
#: How long a test waits for the server before it fails rather than hangs.
PATIENCE = 10.0
MIB = 1024 * 1024


# -- responses on a connection -----------------------------------------------


@dataclasses.dataclass(frozen=True)
class Response:
    version: bytes
    status: int
    headers: dict[bytes, bytes]
    body: bytes


def responses(data: bytes, *, closed: bool = True) -> list[Response]:
    """
    Every whole response in C{data}, interim ones included, in order.  A
    response without a length runs to the close, so it is whole only once
    the connection is C{closed}.
    """
    found = []
    while data:
        head, blank, rest = data.partition(b"\r\n\r\n")
        if not blank:
            break
        status, headers, _ = parse_response(head + blank)
        length = (
            0
            if 100 <= status < 200
            else int(headers[b"content-length"])
            if b"content-length" in headers
            else None
        )
        if length is None:
            if not closed:
                break
            length = len(rest)
        if len(rest) < length:
            break
        version = head.split(b" ", 1)[0]
        found.append(Response(version, status, headers, rest[:length]))
        data = rest[length:]
    return found


def statuses(data: bytes) -> list[int]:
    return [response.status for response in responses(data)]


class Client(RawClient):
    """
    A raw client whose test can wait for the server: for a number of
    responses, or for the server to close.
    """

    def __init__(self) -> None:
        super().__init__()
        self._waiting: list[tuple[Callable[[], bool], Deferred[bytes]]] = []

    def dataReceived(self, data: bytes) -> None:
        super().dataReceived(data)
        self._wake()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        super().connectionLost(reason)
        self._wake()

    def responses_arrived(self, count: int) -> Deferred[bytes]:
        """
        What has arrived, once C{count} whole responses have (or the
        connection is closed).
        """
        return self._until(
            lambda: len(responses(bytes(self.received), closed=False)) >= count
        )

    def server_closed(self) -> Deferred[bytes]:
        """
        Everything received, once the server has closed the connection.
        """
        return self._until(lambda: False)

    def _until(self, enough: Callable[[], bool]) -> Deferred[bytes]:
        arrived: Deferred[bytes] = Deferred()
        self._waiting.append((enough, arrived))
        self._wake()
        return arrived.addTimeout(PATIENCE, reactor)

    def _wake(self) -> None:
        for entry in list(self._waiting):
            enough, arrived = entry
            if arrived.called:
                self._waiting.remove(entry)
            elif self.closed.called or enough():
                self._waiting.remove(entry)
                arrived.callback(bytes(self.received))


async def open_client(live: LiveServer) -> Client:
    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", live.port_number)
    client = Client()
    await connectProtocol(endpoint, client)
    return client


async def exchange_to_close(live: LiveServer, data: bytes) -> bytes:
    """
    Send C{data} and return all the server sends until it closes (failing
    the test if it does not).
    """
    client = await open_client(live)
    client.send(data)
    return await client.server_closed()


# -- the servers ---------------------------------------------------------------


def host_application(
    environ: dict[str, Any], start_response: Callable[..., Any]
) -> Iterable[bytes]:
    """
    A WSGI application that names the host it was asked for.
    """
    body = (
        f"SERVER_NAME: {environ['SERVER_NAME']}\n"
        f"HTTP_HOST: {environ.get('HTTP_HOST', '')}\n"
        f"PATH_INFO: {environ['PATH_INFO']}\n"
    ).encode()
    start_response(
        "200 OK",
        [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))],
    )
    return [body]


@pytest_twisted.async_yield_fixture
async def live() -> AsyncIterator[LiveServer]:
    """
    The demo site on a clock nothing advances, taking bodies up to
    L{MAX_BODY}, with the guarded C{/private/} and L{host_application} at
    C{/wsgi/}.
    """
    config = config_from_args(
        [
            "--max-body",
            str(MAX_BODY),
            "--htpasswd",
            str(DEMO / "users.htpasswd"),
            "--homes",
            str(DEMO / "homes"),
        ]
    )
    server = await LiveServer.start(
        dataclasses.replace(config, wsgi_app=host_application), clock=Clock()
    )
    try:
        yield server
    finally:
        await stop_on_clock(server)


# -- pipelining without reading ------------------------------------------------

PIPELINED_BYTES = 800 * 1024
CONNECTIONS = 4
#: How long the pipelining clients keep offering requests the server may
#: have stopped taking.
SENDING_SECONDS = 3.0


def one_response(port: int, target: bytes) -> Response:
    (response,) = responses(blocking_get(port, target, timeout=PATIENCE))
    return response


@pytest.fixture
def process_server(tmp_path: Path) -> Iterator[tuple[int, int]]:
    """
    C{python -m app} serving a 64 KiB file at C{/static/64k.bin}: its process
    id and port.
    """
    static = tmp_path / "static"
    static.mkdir()
    (static / "64k.bin").write_bytes(os.urandom(65536))
    started: list[subprocess.Popen[str]] = []
    process = start_app(
        started,
        "--no-demo",
        "--static",
        str(static),
        "--listen",
        "tcp:0:interface=127.0.0.1",
    )
    try:
        port = serving_port(process)
        yield process.pid, port
    finally:
        process.kill()
        process.wait()


def test_pipelining_without_reading_keeps_the_resident_set_bounded(
    process_server: tuple[int, int],
) -> None:
    pid, port = process_server
    assert one_response(port, b"/static/64k.bin").status == 200
    before = resident_kib(pid)
    request = b"GET /static/64k.bin HTTP/1.1\r\nHost: x\r\n\r\n"
    pipeline = request * (PIPELINED_BYTES // len(request))
    sockets = [
        socket.create_connection(("127.0.0.1", port)) for _ in range(CONNECTIONS)
    ]
    try:
        sent = dict.fromkeys(sockets, 0)
        for sock in sockets:
            sock.setblocking(False)
        deadline = time.monotonic() + SENDING_SECONDS
        while (left := deadline - time.monotonic()) > 0:
            unsent = [sock for sock in sockets if sent[sock] < len(pipeline)]
            if not unsent:
                break
            _, writable, _ = select.select([], unsent, [], min(left, 0.1))
            for sock in writable:
                try:
                    sent[sock] += sock.send(pipeline[sent[sock] :])
                except BlockingIOError:
                    pass
        assert all(sent.values())
        health = one_response(port, b"/health")
        assert (health.status, health.body) == (200, b"ok")
        peak = before
        for _ in range(5):
            time.sleep(0.2)
            peak = max(peak, resident_kib(pid))
        assert (peak - before) * 1024 < 32 * MIB
    finally:
        for sock in sockets:
            sock.close()


# -- bodies are parsed when a handler asks -------------------------------------


@pytest.fixture
def form_parses(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """
    The Content-Type of every form body the channel's requests parse.
    """
    parsed: list[bytes] = []

    def counting(content_type: bytes, body: Any) -> dict[bytes, list[bytes]]:
        parsed.append(content_type)
        return form_fields(content_type, body)

    monkeypatch.setattr("app.http.request.form_fields", counting)
    return parsed


def post(target: bytes, content_type: bytes, body: bytes) -> bytes:
    return (
        b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Type: %s\r\n"
        b"Content-Length: %d\r\nConnection: close\r\n\r\n%s"
        % (target, content_type, len(body), body)
    )


def multipart(parts: Iterable[bytes], boundary: bytes = b"b0undary") -> bytes:
    """
    A C{multipart/form-data} body of C{parts} (each its head and content).
    """
    return (
        b"".join(b"--" + boundary + b"\r\n" + part + b"\r\n" for part in parts)
        + b"--"
        + boundary
        + b"--\r\n"
    )


def field(name: bytes, value: bytes) -> bytes:
    return b'Content-Disposition: form-data; name="%s"\r\n\r\n%s' % (name, value)


MULTIPART = b"multipart/form-data; boundary=b0undary"
URLENCODED = b"application/x-www-form-urlencoded"
LARGE_FORMS = {
    "urlencoded": (URLENCODED, b"the-field=" + b"u" * (MIB - 10)),
    "multipart": (MULTIPART, multipart([field(b"the-field", b"m" * MIB)])),
}


@pytest.mark.parametrize("form", LARGE_FORMS)
@pytest.mark.parametrize(
    ("target", "status"),
    [(b"/nowhere", 404), (b"/health", 405), (b"/private/", 401)],
)
@pytest_twisted.ensureDeferred
async def test_a_refused_post_parses_no_body(
    live: LiveServer, form_parses: list[bytes], form: str, target: bytes, status: int
) -> None:
    content_type, body = LARGE_FORMS[form]
    data = await exchange_to_close(live, post(target, content_type, body))
    assert statuses(data) == [status]
    assert form_parses == []


@pytest_twisted.ensureDeferred
async def test_a_handler_reading_args_parses_the_body_once(
    live: LiveServer, form_parses: list[bytes]
) -> None:
    data = await exchange_to_close(live, post(b"/form", URLENCODED, b"the-field=hello"))
    (response,) = responses(data)
    assert response.status == 200
    assert b"You submitted: hello" in response.body
    assert form_parses == [URLENCODED]


# -- form limits -----------------------------------------------------------------


def urlencoded_fields(count: int) -> bytes:
    return b"&".join([b"the-field=v"] + [b"f%d=%d" % (i, i) for i in range(count - 1)])


@pytest.mark.parametrize(("count", "status"), [(1000, 200), (1001, 413)])
@pytest_twisted.ensureDeferred
async def test_a_form_takes_at_most_1000_fields(
    live: LiveServer, count: int, status: int
) -> None:
    data = await exchange_to_close(
        live, post(b"/form", URLENCODED, urlencoded_fields(count))
    )
    assert statuses(data) == [status]


def nested_multipart(depth: int) -> bytes:
    """
    A form field, then a part that is C{multipart/mixed}, whose first part is
    C{multipart/mixed} in turn, C{depth} levels down.
    """
    inner = field(b"deepest", b"v")
    for level in range(depth, 0, -1):
        boundary = b"level%d" % level
        inner = (
            b'Content-Disposition: form-data; name="n%d"\r\n'
            b"Content-Type: multipart/mixed; boundary=%s\r\n\r\n%s"
            % (level, boundary, multipart([inner], boundary))
        )
    return multipart([field(b"the-field", b"v"), inner])


@pytest.mark.parametrize("depth", [1, 3000])
@pytest_twisted.ensureDeferred
async def test_a_nested_multipart_is_400(
    live: LiveServer, captured_log: list[LogEvent], depth: int
) -> None:
    data = await exchange_to_close(
        live, post(b"/form", MULTIPART, nested_multipart(depth))
    )
    assert statuses(data) == [400]
    assert failures(captured_log) == []


@pytest_twisted.ensureDeferred
async def test_a_multipart_body_without_its_closing_delimiter_is_400(
    live: LiveServer, captured_log: list[LogEvent]
) -> None:
    unclosed = b"--b0undary\r\n" + field(b"the-field", b"v") + b"\r\n"
    data = await exchange_to_close(live, post(b"/form", MULTIPART, unclosed))
    assert statuses(data) == [400]
    assert failures(captured_log) == []


# -- one-byte chunks -------------------------------------------------------------

ONE_BYTE_CHUNKS = 3000


def one_byte_chunked_post() -> tuple[bytes, bytes]:
    """
    A chunked POST to /echo of one-byte chunks, some with extensions, and a
    trailer field; and the body it carries.
    """
    # Every byte value, CR, LF, "0" and ";" among them.
    body = bytes(index % 256 for index in range(ONE_BYTE_CHUNKS))
    chunks = []
    for index, byte in enumerate(body):
        extension = (
            b';name="quoted;value"'
            if index % 7 == 0
            else b";flag"
            if index % 11 == 0
            else b""
        )
        chunks.append(b"1" + extension + b"\r\n" + bytes([byte]) + b"\r\n")
    request = (
        b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
        b"Connection: close\r\n\r\n"
        + b"".join(chunks)
        + b"0\r\nX-Checksum: none\r\n\r\n"
    )
    return request, body


def awkward_pieces(request: bytes) -> list[bytes]:
    """
    C{request} cut inside its head's end, inside chunk sizes, extensions
    and line ends, inside the trailer and inside the last line end.
    """
    body_start = request.index(b"\r\n\r\n") + 4
    cuts = [
        body_start - 1,
        body_start + 1,
        body_start + 2,
        request.index(b'"quoted', body_start + 10) + 3,
        request.index(b"\r\n", body_start + 100) + 1,
        request.index(b";flag") + 2,
        len(request) - 14,
        len(request) - 1,
    ]
    ends = [0, *sorted(cuts), len(request)]
    return [request[start:end] for start, end in itertools.pairwise(ends)]


@pytest.mark.parametrize("split", [False, True], ids=["whole", "split"])
@pytest_twisted.ensureDeferred
async def test_one_byte_chunks_are_decoded(live: LiveServer, split: bool) -> None:
    request, body = one_byte_chunked_post()
    pieces = awkward_pieces(request) if split else [request]
    assert b"".join(pieces) == request
    data = await exchange(reactor, live.port_number, pieces, pause=0.01)
    (response,) = responses(data)
    assert response.status == 200
    assert len(response.body) == ONE_BYTE_CHUNKS
    assert response.body == body


# -- request smuggling -------------------------------------------------------------

#: A request that, taken from another's body, would be answered 402.
PAY = b"GET /pay HTTP/1.1\r\nHost: x\r\n\r\n"


@pytest.mark.parametrize(
    ("head", "body", "status"),
    [
        (b"Foo: bar\r\n Content-Length: %d\r\n" % len(PAY), PAY, 400),
        (
            b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n",
            b"0\r\n\r\n" + PAY,
            400,
        ),
        (
            b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
            b"0\r\n\r\n" + PAY,
            400,
        ),
        (b"Transfer-Encoding: chunked, gzip\r\n", b"0\r\n\r\n" + PAY, 400),
        (b"Transfer-Encoding: gzip\r\n", b"0\r\n\r\n" + PAY, 501),
        (b"Transfer-Encoding: gzip, chunked\r\n", b"0\r\n\r\n" + PAY, 501),
    ],
    ids=[
        "obs-fold",
        "length-and-chunked",
        "chunked-twice",
        "chunked-then-gzip",
        "gzip",
        "gzip-then-chunked",
    ],
)
@pytest_twisted.ensureDeferred
async def test_ambiguous_framing_is_refused_with_one_response(
    live: LiveServer, head: bytes, body: bytes, status: int
) -> None:
    data = await exchange_to_close(
        live, b"POST /echo HTTP/1.1\r\nHost: x\r\n" + head + b"\r\n" + body
    )
    assert statuses(data) == [status]
    assert b"HTTP/1.1 402" not in data


CLOSING_HEALTH = b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"


@pytest_twisted.ensureDeferred
async def test_the_body_of_a_request_asking_to_upgrade_is_its_body(
    live: LiveServer,
) -> None:
    data = await exchange_to_close(
        live,
        b"POST /echo HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n"
        b"Content-Length: %d\r\n\r\n%s%s" % (len(PAY), PAY, CLOSING_HEALTH),
    )
    assert statuses(data) == [200, 200]
    echo, health = responses(data)
    assert (echo.status, echo.body) == (200, PAY)
    assert (health.status, health.body) == (200, b"ok")


@pytest_twisted.ensureDeferred
async def test_a_websocket_upgrade_is_answered_as_plain_http(
    live: LiveServer,
) -> None:
    data = await exchange_to_close(
        live,
        b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\n"
        b"Upgrade: websocket\r\n\r\n" + CLOSING_HEALTH,
    )
    assert statuses(data) == [200, 200]
    assert [response.body for response in responses(data)] == [b"ok", b"ok"]


# -- hosts and targets -------------------------------------------------------------


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"GET /health HTTP/1.1\r\n\r\n", 400),
        (b"GET /health HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n", 400),
        (b"GET /health HTTP/1.1\r\nHost: a b\r\n\r\n", 400),
        (b"GET /health HTTP/1.0\r\n\r\n", 200),
        (
            b"GET http://example.com:8080/health HTTP/1.1\r\nHost: other\r\n"
            b"Connection: close\r\n\r\n",
            200,
        ),
        (b"GET * HTTP/1.1\r\nHost: x\r\n\r\n", 400),
        (b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n", 501),
        (b"FROB / HTTP/1.1\r\nHost: x\r\n\r\n", 501),
    ],
    ids=[
        "no-host",
        "two-hosts",
        "host-with-a-space",
        "http-1.0-without-host",
        "absolute-form",
        "get-asterisk",
        "connect",
        "unknown-method",
    ],
)
@pytest_twisted.ensureDeferred
async def test_host_and_target_rules(
    live: LiveServer, request_bytes: bytes, status: int
) -> None:
    data = await exchange_to_close(live, request_bytes)
    assert statuses(data) == [status]


@pytest_twisted.ensureDeferred
async def test_an_absolute_form_authority_stands_in_for_host(
    live: LiveServer,
) -> None:
    data = await exchange_to_close(
        live,
        b"GET http://example.com:8080/wsgi/where?q HTTP/1.1\r\nHost: other\r\n"
        b"Connection: close\r\n\r\n",
    )
    (response,) = responses(data)
    assert response.status == 200
    assert response.body.splitlines() == [
        b"SERVER_NAME: example.com",
        b"HTTP_HOST: example.com:8080",
        b"PATH_INFO: /where",
    ]


@pytest_twisted.ensureDeferred
async def test_options_asterisk_names_the_methods_taken(live: LiveServer) -> None:
    data = await exchange_to_close(
        live, b"OPTIONS * HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    (response,) = responses(data)
    assert response.status == 200
    allowed = {method.strip() for method in response.headers[b"allow"].split(b",")}
    assert {b"GET", b"HEAD", b"POST", b"OPTIONS"} <= allowed


# -- HTTP/1.0 keep-alive -----------------------------------------------------------

KEEP_ALIVE_1_0 = b"GET /health HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"


@pytest_twisted.ensureDeferred
async def test_http_1_0_keep_alive_keeps_the_connection(live: LiveServer) -> None:
    client = await open_client(live)
    # The third answer shows that the connection outlived the second.
    for count in (1, 2, 3):
        client.send(KEEP_ALIVE_1_0)
        data = await client.responses_arrived(count)
        assert not client.closed.called
    answers = responses(data)
    assert [(r.version, r.status, r.body) for r in answers] == [
        (b"HTTP/1.0", 200, b"ok")
    ] * 3
    assert [r.headers[b"connection"] for r in answers] == [b"keep-alive"] * 3
    client.close()
    await client.closed


@pytest_twisted.ensureDeferred
async def test_http_1_0_without_keep_alive_gets_one_response_and_a_close(
    live: LiveServer,
) -> None:
    data = await exchange_to_close(
        live, b"GET /health HTTP/1.0\r\n\r\nGET /health HTTP/1.0\r\n\r\n"
    )
    (response,) = responses(data)
    assert (response.status, response.body) == (200, b"ok")
    assert response.headers[b"connection"] == b"close"


# -- 100 Continue ----------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_100_continue_comes_before_the_body_is_sent(live: LiveServer) -> None:
    client = await open_client(live)
    client.send(
        b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
        b"Expect: 100-continue\r\nConnection: close\r\n\r\n"
    )
    assert await client.responses_arrived(1) == b"HTTP/1.1 100 Continue\r\n\r\n"
    client.send(b"hello")
    data = await client.server_closed()
    interim, final = responses(data)
    assert interim.status == 100
    assert (final.status, final.body) == (200, b"hello")


@pytest_twisted.ensureDeferred
async def test_a_length_over_max_body_gets_413_and_no_100(live: LiveServer) -> None:
    data = await exchange_to_close(
        live,
        b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n"
        b"Expect: 100-continue\r\n\r\n" % (MAX_BODY + 1),
    )
    assert statuses(data) == [413]
    assert b"100 Continue" not in data
