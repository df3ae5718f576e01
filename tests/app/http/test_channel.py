"""
The HTTP/1.1 channel in memory: exact bytes in, exact bytes out, time on a
Clock.

A differential test feeds the same valid requests to this channel and to
twisted.web's C{HTTPChannel} and compares what a resource sees of them;
the rest take each rule of the channel in turn.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.web import server
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from app.http.channel import Channel
from app.http.limits import MAX_HEADER_COUNT, READ_AHEAD
from app.http.request import Request
from app.http.site import Site

IDLE = 30.0


class Recorder(Resource):
    """
    Answers every request with what it saw of it, or holds it when asked.
    """

    isLeaf = True

    def __init__(self, hold: bool = False) -> None:
        super().__init__()
        self.hold = hold
        self.seen: list[Any] = []
        self.views: list[bytes] = []

    def render(self, request: server.Request) -> bytes | int:
        self.seen.append(request)
        self.views.append(view(request))
        if self.hold:
            return NOT_DONE_YET
        return self.views[-1]


def view(request: server.Request) -> bytes:
    """
    What a resource can see of a request, as bytes.
    """
    assert request.content is not None
    return repr(
        (
            request.method,
            request.uri,
            request.path,
            sorted(request.args.items()),
            sorted(
                (name, list(values))
                for name, values in request.requestHeaders.getAllRawHeaders()
            ),
            request.content.read(),
        )
    ).encode()


class Transport(StringTransport):
    """
    A transport that remembers being aborted.
    """

    aborted = False

    def abortConnection(self) -> None:
        self.aborted = True
        super().abortConnection()


def connected(
    resource: Resource | None = None, max_body: int = 1_000_000
) -> tuple[Channel, Transport, Clock]:
    clock = Clock()
    site = Site(
        resource if resource is not None else Recorder(),
        reactor=clock,
        max_body=max_body,
        idle_timeout=IDLE,
    )
    channel = site.buildProtocol(None)
    transport = Transport()
    channel.makeConnection(transport)
    return channel, transport, clock


def send(pieces: Sequence[bytes] | bytes, **kwargs: Any) -> tuple[bytes, Transport]:
    channel, transport, _clock = connected(**kwargs)
    for piece in [pieces] if isinstance(pieces, bytes) else pieces:
        channel.dataReceived(piece)
    return transport.value(), transport


def statuses(data: bytes) -> list[int]:
    """
    The status of each response in C{data}, walking them by their lengths.
    """
    codes = []
    while data:
        head, _, data = data.partition(b"\r\n\r\n")
        code = int(head.split(b" ", 2)[1])
        codes.append(code)
        length = re.search(rb"\r\ncontent-length: *(\d+)", head, re.I)
        if code < 200 or code in (204, 304):
            continue
        if length is not None:
            data = data[int(length.group(1)) :]
        elif re.search(rb"\r\ntransfer-encoding: *chunked", head, re.I):
            data = data.partition(
                b"\r\n0\r\n\r\n" if data[:3] != b"0\r\n" else b"0\r\n\r\n"
            )[2]
        else:
            data = b""
    return codes


def first(data: bytes) -> tuple[int, dict[bytes, bytes], bytes]:
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers[name.strip().lower()] = value.strip()
    if b"content-length" in headers:
        body = body[: int(headers[b"content-length"])]
    return int(lines[0].split(b" ")[1]), headers, body


# -- the differential test ---------------------------------------------------

_PCHAR = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~!$'()*+,:@"
_segments = st.lists(
    st.text(_PCHAR, max_size=8)
    | st.sampled_from(["%41", "%2F", "%20", "%e9", "a%25b"]),
    min_size=1,
    max_size=4,
)
_queries = st.none() | st.lists(
    st.tuples(st.text(_PCHAR + "/?", max_size=6), st.text(_PCHAR + "/?=", max_size=6)),
    max_size=4,
)
_names = st.text(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-!#$%&'*+.^_`|~",
    min_size=1,
    max_size=12,
).filter(
    lambda name: (
        name.lower()
        not in {"host", "content-length", "transfer-encoding", "connection", "expect"}
        and name.lower() not in {"upgrade", "content-type"}
    )
)
_values = st.binary(max_size=20).map(
    lambda raw: bytes(b for b in raw if b == 0x09 or 0x20 <= b <= 0x7E or b >= 0x80)
)
_form = st.lists(st.tuples(st.text(_PCHAR, max_size=5), st.text(_PCHAR, max_size=5)))


@st.composite
def requests(draw: Any) -> list[bytes]:
    method = draw(st.sampled_from([b"GET", b"POST", b"PUT", b"DELETE", b"PATCH"]))
    target = "/" + "/".join(draw(_segments))
    query = draw(_queries)
    if query is not None:
        target += "?" + "&".join(f"{k}={v}" for k, v in query)
    version = draw(st.sampled_from([b"HTTP/1.1", b"HTTP/1.0"]))
    lines = [b"Host: " + draw(st.sampled_from([b"example.com", b"127.0.0.1:8080"]))]
    for name, value in draw(st.lists(st.tuples(_names, _values), max_size=6)):
        lines.append(name.encode() + b": " + value.strip(b" \t"))
    body = b""
    if method in (b"POST", b"PUT", b"PATCH") and draw(st.booleans()):
        if draw(st.booleans()):
            lines.append(b"Content-Type: application/x-www-form-urlencoded")
            body = "&".join(f"{k}={v}" for k, v in draw(_form)).encode()
        else:
            body = draw(st.binary(max_size=200))
        if version == b"HTTP/1.1" and draw(st.booleans()):
            lines.append(b"Transfer-Encoding: chunked")
            framed = b""
            rest = body
            while rest:
                size = draw(st.integers(1, max(1, len(rest))))
                extension = draw(st.sampled_from([b"", b";a=b", b';x="y"']))
                framed += b"%x%s\r\n%s\r\n" % (size, extension, rest[:size])
                rest = rest[size:]
            body = framed + b"0\r\n\r\n"
        else:
            lines.append(b"Content-Length: %d" % len(body))
    data = b"%s %s %s\r\n" % (method, target.encode(), version)
    data += b"".join(line + b"\r\n" for line in lines) + b"\r\n" + body
    cuts = sorted(draw(st.lists(st.integers(1, len(data) - 1), max_size=3)))
    return [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]


def twisted_view(pieces: list[bytes]) -> bytes:
    """
    What the same resource answers when twisted.web's own channel parses.
    """
    site = server.Site(Recorder(), reactor=Clock())
    protocol = site.buildProtocol(None)
    transport = StringTransport()
    protocol.makeConnection(transport)
    for piece in pieces:
        protocol.dataReceived(piece)
    return first(transport.value())[2]


@settings(max_examples=300)
@given(requests())
def test_a_valid_request_looks_as_it_does_through_twisted_web(
    pieces: list[bytes],
) -> None:
    data, _transport = send(pieces)
    status, _headers, body = first(data)
    assert status == 200
    assert body == twisted_view(pieces)


@given(requests(), requests())
def test_pipelined_requests_look_as_they_do_one_at_a_time(
    one: list[bytes], two: list[bytes]
) -> None:
    alone = [first(send(pieces)[0])[2] for pieces in (one, two)]
    recorder = Recorder()
    data, _transport = send([b"".join(one) + b"".join(two)], resource=recorder)
    if b"HTTP/1.0" in b"".join(one).split(b"\r\n")[0]:
        # HTTP/1.0 without keep-alive: nothing after the first is taken.
        assert len(recorder.seen) == 1
        return
    assert statuses(data) == [200, 200]
    assert recorder.views == alone


# -- RFC 9112 refusals -------------------------------------------------------


@pytest.mark.parametrize(
    ("request_bytes", "code"),
    [
        (b"GET / HTTP/1.1\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: a/b\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: x\r\nFoo: bar\r\n Content-Length: 38\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: x\r\nFoo: a\x00b\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: x\r\nFoo: a\x07b\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: x\r\nFoo: a\x7fb\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: x\r\nFoo: a\rb\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost : x\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: x\r\nFoo\t: y\r\n\r\n", 400),
        (
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            400,
        ),
        (
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
            b"Content-Length: 6\r\n\r\nhello!",
            400,
        ),
        (
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            400,
        ),
        (
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"1;a\x01\r\nx\r\n0\r\n\r\n",
            400,
        ),
        (
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"1 \r\nx\r\n0\r\n\r\n",
            400,
        ),
        (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n", 501),
        (
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            501,
        ),
        (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: identity\r\n\r\n", 501),
        (
            b"POST / HTTP/1.1\r\nHost: x\r\n"
            b"Transfer-Encoding: chunked, chunked\r\n\r\n",
            400,
        ),
        (
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n",
            400,
        ),
        (
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
            400,
        ),
        (b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n", 501),
        (b"FROB / HTTP/1.1\r\nHost: x\r\n\r\n", 501),
        (b"get / HTTP/1.1\r\nHost: x\r\n\r\n", 501),
        (b"GARBAGE\r\n\r\n", 400),
        (b"GET / HTTP/2.0\r\nHost: x\r\n\r\n", 505),
        (b"GET / HTTP/9.9\r\nHost: x\r\n\r\n", 400),
        (b"GET / HTTP/1.1\nHost: x\n\n", 400),
        (b"GET * HTTP/1.1\r\nHost: x\r\n\r\n", 400),
        (b"GET ftp://example.com/ HTTP/1.1\r\nHost: x\r\n\r\n", 400),
        (b"GET http://user@example.com/ HTTP/1.1\r\nHost: x\r\n\r\n", 400),
        (b"GET http:/// HTTP/1.1\r\nHost: x\r\n\r\n", 400),
        (b"GET /\xc3\xa9 HTTP/1.1\r\nHost: x\r\n\r\n", 400),
        (b"GET /a b HTTP/1.1\r\nHost: x\r\n\r\n", 400),
        (
            b"POST / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            400,
        ),
    ],
)
def test_a_malformed_request_is_refused_and_closed(
    request_bytes: bytes, code: int
) -> None:
    recorder = Recorder()
    data, transport = send(
        request_bytes + b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", resource=recorder
    )
    assert statuses(data) == [code]
    assert first(data)[1][b"connection"] == b"close"
    assert recorder.seen == []
    assert transport.disconnecting


def test_a_request_line_over_the_limit_is_414_and_a_header_block_431() -> None:
    data, _ = send(b"GET /" + b"a" * 8200 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    assert statuses(data) == [414]
    data, _ = send(b"GET /" + b"a" * 9000)
    assert statuses(data) == [414]
    data, _ = send(b"GET / HTTP/1.1\r\nHost: x\r\nBig: " + b"b" * 17000 + b"\r\n\r\n")
    assert statuses(data) == [431]
    lines = b"".join(b"X-%d: v\r\n" % i for i in range(MAX_HEADER_COUNT))
    data, _ = send(b"GET / HTTP/1.1\r\nHost: x\r\n" + lines + b"\r\n")
    assert statuses(data) == [431]


@pytest.mark.parametrize(
    "start",
    [
        b"GET / HTTP/1.1\r\nHost: x\r\nBig: ",
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"1\r\nx\r\n0\r\nT: ",
    ],
    ids=["header", "trailer"],
)
def test_a_field_line_that_never_ends_is_431_however_it_arrives(start: bytes) -> None:
    channel, transport, _clock = connected()
    channel.dataReceived(start)
    for _ in range(40):
        if transport.disconnecting:
            break
        channel.dataReceived(b"b" * 1000)
    assert statuses(transport.value()) == [431]


def test_a_trailer_block_over_the_limit_is_431() -> None:
    data, _ = send(
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"1\r\nx\r\n0\r\n" + b"T: " + b"t" * 17000 + b"\r\n\r\n"
    )
    assert statuses(data) == [431]


def test_a_body_over_max_body_is_413_whether_announced_or_chunked() -> None:
    data, _ = send(
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 101\r\n\r\n", max_body=100
    )
    assert statuses(data) == [413]
    data, _ = send(
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        + b"40\r\n"
        + b"c" * 64
        + b"\r\n"
        + b"40\r\n"
        + b"c" * 64
        + b"\r\n",
        max_body=100,
    )
    assert statuses(data) == [413]


def test_answers_due_are_written_before_a_refusal() -> None:
    data, transport = send(
        b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /b HTTP/1.1\r\nHost: x\r\n\r\n"
        b"GET /c HTTP/1.1\r\n\r\n"
    )
    assert statuses(data) == [200, 200, 400]
    assert transport.disconnecting


def test_a_refusal_waits_for_the_response_under_way() -> None:
    recorder = Recorder(hold=True)
    channel, transport, _clock = connected(recorder)
    channel.dataReceived(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /b HTTP/1.1\r\n\r\n")
    assert transport.value() == b""
    (request,) = recorder.seen
    request.write(b"done")
    request.finish()
    assert statuses(transport.value()) == [200, 400]


# -- targets and versions ----------------------------------------------------


def test_an_absolute_form_target_is_its_path_and_its_authority_the_host() -> None:
    recorder = Recorder()
    data, _ = send(
        b"GET http://Example.COM:8080/a/b?q=1 HTTP/1.1\r\nHost: other\r\n\r\n",
        resource=recorder,
    )
    assert statuses(data) == [200]
    (request,) = recorder.seen
    assert request.uri == b"/a/b?q=1"
    assert request.args == {b"q": [b"1"]}
    assert request.requestHeaders.getRawHeaders(b"host") == [b"Example.COM:8080"]
    assert request.getRequestHostname() == b"Example.COM"


def test_an_absolute_form_target_without_a_path_is_the_root() -> None:
    recorder = Recorder()
    send(
        b"GET https://example.com HTTP/1.1\r\nHost: example.com\r\n\r\n",
        resource=recorder,
    )
    assert [request.uri for request in recorder.seen] == [b"/"]


def test_options_star_names_what_the_server_takes() -> None:
    recorder = Recorder()
    data, transport = send(b"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n", resource=recorder)
    status, headers, body = first(data)
    assert (status, body) == (200, b"")
    assert headers[b"allow"] == b"GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"
    assert headers[b"content-length"] == b"0"
    assert recorder.seen == []
    assert not transport.disconnecting


def test_http_1_0_keep_alive_is_kept_where_the_response_has_a_length() -> None:
    request = b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"
    data, transport = send(request * 2)
    assert statuses(data) == [200, 200]
    assert data.count(b"Connection: keep-alive\r\n") == 2
    assert not transport.disconnecting


def test_http_1_0_without_keep_alive_is_closed_and_takes_nothing_more() -> None:
    recorder = Recorder()
    data, transport = send(
        b"GET / HTTP/1.0\r\n\r\nGET / HTTP/1.0\r\n\r\n", resource=recorder
    )
    assert statuses(data) == [200]
    assert b"Connection: close\r\n" in data
    assert len(recorder.seen) == 1
    assert transport.disconnecting


class Unframed(Resource):
    isLeaf = True

    def render(self, request: server.Request) -> int:
        request.write(b"no length")
        request.finish()
        return NOT_DONE_YET


def test_http_1_0_keep_alive_closes_where_the_response_has_no_length() -> None:
    data, transport = send(
        b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", resource=Unframed()
    )
    assert first(data)[1][b"connection"] == b"close"
    assert data.endswith(b"\r\n\r\nno length")
    assert transport.disconnecting


def test_connection_close_closes_after_the_response() -> None:
    recorder = Recorder()
    data, transport = send(
        b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        resource=recorder,
    )
    assert statuses(data) == [200]
    assert first(data)[1][b"connection"] == b"close"
    assert len(recorder.seen) == 1
    assert transport.disconnecting


def test_a_request_to_upgrade_is_served_as_http_1_1_body_and_all() -> None:
    recorder = Recorder()
    smuggled = b"GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"
    data, _ = send(
        [
            b"POST /up HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n"
            b"Content-Length: %d\r\n\r\n" % len(smuggled),
            smuggled[:10],
            smuggled[10:] + b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\n"
            b"Upgrade: websocket\r\n\r\nGET /next HTTP/1.1\r\nHost: x\r\n\r\n",
        ],
        resource=recorder,
    )
    assert statuses(data) == [200, 200, 200]
    assert [request.uri for request in recorder.seen] == [b"/up", b"/ws", b"/next"]
    assert recorder.views[0].endswith(repr(smuggled).encode() + b")")


# -- 100 Continue ------------------------------------------------------------


def test_100_continue_comes_before_the_body_and_never_for_a_body_too_large() -> None:
    channel, transport, _ = connected(max_body=100)
    channel.dataReceived(
        b"POST / HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
        b"Content-Length: 2\r\n\r\n"
    )
    assert transport.value() == b"HTTP/1.1 100 Continue\r\n\r\n"
    channel.dataReceived(b"hi")
    assert statuses(transport.value()) == [100, 200]
    data, _ = send(
        b"POST / HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
        b"Content-Length: 101\r\n\r\n",
        max_body=100,
    )
    assert statuses(data) == [413]


def test_100_continue_waits_for_the_answers_before_it() -> None:
    recorder = Recorder(hold=True)
    channel, transport, _ = connected(recorder)
    channel.dataReceived(
        b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n"
        b"POST /b HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
        b"Content-Length: 2\r\n\r\n"
    )
    assert transport.value() == b""
    request = recorder.seen[0]
    request.write(b"a")
    request.finish()
    assert statuses(transport.value()) == [200, 100]
    channel.dataReceived(b"hi")
    assert [r.uri for r in recorder.seen] == [b"/a", b"/b"]


# -- back-pressure -----------------------------------------------------------


def test_nothing_is_parsed_while_a_response_is_under_way() -> None:
    recorder = Recorder(hold=True)
    channel, transport, _ = connected(recorder)
    channel.dataReceived(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n" * 3)
    assert [request.uri for request in recorder.seen] == [b"/a"]
    recorder.seen[0].finish()
    assert len(recorder.seen) == 2
    recorder.seen[1].finish()
    recorder.seen[2].finish()
    assert statuses(transport.value()) == [200, 200, 200]


def test_reading_stops_past_the_read_ahead_and_resumes_when_answered() -> None:
    recorder = Recorder(hold=True)
    channel, transport, _ = connected(recorder)
    pipelined = b"GET /b HTTP/1.1\r\nHost: x\r\n\r\n"
    channel.dataReceived(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n")
    sent = 0
    while transport.producerState == "producing":
        channel.dataReceived(pipelined * 100)
        sent += 100
        assert sent * len(pipelined) < 2 * READ_AHEAD
    assert transport.producerState == "paused"
    assert len(recorder.seen) == 1
    recorder.hold = False
    recorder.seen[0].finish()
    assert len(recorder.seen) == sent + 1
    assert transport.producerState == "producing"


def test_a_client_that_does_not_read_is_not_read_from() -> None:
    channel, transport, _ = connected()
    channel.pauseProducing()  # the transport's buffer is full
    assert transport.producerState == "paused"
    channel.resumeProducing()
    assert transport.producerState == "producing"


# -- timers ------------------------------------------------------------------


def test_a_head_must_arrive_within_the_idle_timeout_of_its_first_byte() -> None:
    channel, transport, clock = connected()
    channel.dataReceived(b"GET / HTTP/1.1\r\n")
    for _ in range(29):
        clock.advance(1)
        channel.dataReceived(b"X-A: b\r\n")
    clock.advance(0.9)
    assert transport.value() == b""
    clock.advance(0.1)
    assert statuses(transport.value()) == [408]


def test_a_body_must_keep_arriving_at_500_bytes_a_second_past_the_timeout() -> None:
    recorder = Recorder()
    channel, transport, clock = connected(recorder)
    channel.dataReceived(
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n"
    )
    # The idle timeout, then a second for every 500 bytes received.
    channel.dataReceived(b"x" * 5000)
    clock.advance(IDLE + 9.9)
    assert transport.value() == b""
    channel.dataReceived(b"x" * 1000)  # two seconds more
    clock.advance(2)
    assert transport.value() == b""
    clock.advance(0.1)
    assert statuses(transport.value()) == [408]
    assert recorder.seen == []


def test_a_body_that_keeps_its_rate_is_taken_however_long_it_takes() -> None:
    recorder = Recorder()
    channel, transport, clock = connected(recorder)
    channel.dataReceived(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 60000\r\n\r\n")
    for _ in range(60):
        clock.advance(1)
        channel.dataReceived(b"y" * 1000)
    assert statuses(transport.value()) == [200]
    assert len(recorder.seen) == 1


def test_an_idle_connection_is_closed_after_the_idle_timeout() -> None:
    channel, transport, clock = connected()
    channel.dataReceived(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    clock.advance(IDLE - 1)
    channel.dataReceived(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    clock.advance(IDLE - 0.1)
    assert not transport.disconnecting
    clock.advance(0.1)
    assert transport.disconnecting
    assert statuses(transport.value()) == [200, 200]


def test_a_response_the_client_does_not_read_is_cut_off() -> None:
    recorder = Recorder(hold=True)
    channel, transport, clock = connected(recorder)
    channel.dataReceived(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    clock.advance(IDLE * 3)  # a slow response is no reason to close
    assert not transport.disconnecting
    recorder.seen[0].write(b"x")
    channel.pauseProducing()
    assert channel.waiting_for == "reader"
    clock.advance(IDLE - 0.1)
    assert not transport.aborted
    clock.advance(0.1)
    assert transport.aborted


def test_a_closed_connection_leaves_no_timer() -> None:
    channel, _transport, clock = connected()
    channel.dataReceived(b"GET / HTTP/1.1\r\n")
    channel.connectionLost()
    assert clock.getDelayedCalls() == []


def test_a_request_is_made_as_twisted_web_makes_one() -> None:
    from twisted.web.test.requesthelper import DummyChannel

    theirs = server.Request(DummyChannel())
    channel, _, _ = connected()
    ours = Request(channel)
    # Request sets twisted.web's attributes itself, for speed: a Twisted
    # release that sets more makes this fail.  (Cookies and args are read
    # lazily, through properties.)
    assert set(vars(theirs)) - set(vars(ours)) == {"received_cookies"}
    assert ours.received_cookies == theirs.received_cookies == {}
    assert ours.args == {}


def test_many_requests_asking_to_upgrade_in_one_read_are_each_answered() -> None:
    upgrade = b"GET / HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\nUpgrade: ws\r\n\r\n"
    data, transport = send(upgrade * 2000)
    assert statuses(data) == [200] * 2000
    assert not transport.disconnecting
