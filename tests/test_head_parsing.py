"""
A request head that arrives whole is parsed in one pass by the channel; any
other is parsed line by line by twisted.web.  Both must answer every head
byte for byte the same.
"""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import reactor
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from app._config import Config
from app._http import Channel
from app._site import build_site

_DATE = re.compile(rb"\r\nDate: [^\r]*")


def _answer(chunks: list[bytes]) -> tuple[bytes, bool]:
    """
    What a fresh connection answers to C{chunks} sent one after another, with
    the Date left out, and whether the one-pass parser took the head.
    """
    site = build_site(Config(demo=True), reactor, Clock())
    channel = site.buildProtocol(None)
    transport = StringTransport()
    channel.makeConnection(transport)
    taken: list[bool] = []
    whole_head = channel._whole_head

    def spy(data: bytes) -> bool:
        taken.append(whole_head(data))
        return taken[-1]

    channel._whole_head = spy  # type: ignore[method-assign]
    for chunk in chunks:
        channel.dataReceived(chunk)
    return _DATE.sub(b"", transport.value()), any(taken)


def _both_ways(head: bytes) -> tuple[bytes, bytes, bool]:
    whole, taken = _answer([head])
    # A first packet without the blank line: twisted.web parses it all.
    split, split_taken = _answer([head[:1], head[1:]])
    assert not split_taken
    return whole, split, taken


HEADS = [
    b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /health HTTP/1.0\r\n\r\n",
    b"HEAD /health HTTP/1.1\r\nHost: x\r\n\r\n",
    b"get /health HTTP/1.1\r\nHost: x\r\n\r\n",
    b"G@T /health HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /health HTTP/2.0\r\nHost: x\r\n\r\n",
    b"GET /health HTTP/1.1 extra\r\nHost: x\r\n\r\n",
    b"GET  /health HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /health\r\nHost: x\r\n\r\n",
    b"GET * HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /calendar/2026?x=1&y=%41 HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /cal%65ndar/2026 HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /\xc3\xa9 HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /\x7f HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /a\tb HTTP/1.1\r\nHost: x\r\n\r\n",
    b"\r\nGET /health HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /health HTTP/1.1\r\nHost : x\r\n\r\n",
    b"GET /health HTTP/1.1\r\nHost: x\r\n continued\r\n\r\n",
    b"GET /health HTTP/1.1\r\nNo colon\r\n\r\n",
    b"GET /health HTTP/1.1\r\n: empty name\r\n\r\n",
    b"GET /health HTTP/1.1\r\nX-A: a\x00b\r\n\r\n",
    b"GET /health HTTP/1.1\r\nX-A: a\nb\r\n\r\n",
    b"GET /health HTTP/1.1\r\nX-A: a\rb\r\n\r\n",
    b"GET /health HTTP/1.1\r\nX-A:\r\nX-A:   two  \r\n\r\n",
    b"GET /health HTTP/1.1\r\nX-\xe9: a\r\n\r\n",
    b"GET /health HTTP/1.1\r\nX-A: caf\xc3\xa9\r\n\r\n",
    b"GET /health HTTP/1.1\r\nConnection: close\r\n\r\n",
    b"GET /health HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
    b"GET /health HTTP/1.1\r\nContent-Length: x\r\n\r\n",
    b"GET /health HTTP/1.1\r\ncontent-length: 0\r\ncontent-length: 1\r\n\r\n",
    b"GET /health HTTP/1.1\r\nTransfer-Encoding: identity\r\n\r\n",
    b"GET /health HTTP/1.1\r\nExpect: 100-continue\r\n\r\n",
    b"GET /health HTTP/1.1\r\nCookie: app_session=x; a=b\r\n\r\n",
    b"GET /pay HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /nowhere HTTP/1.1\r\nHost: x\r\n\r\n",
    b"DELETE /health HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /health/ HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET //health HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /health HTTP/1.1\r\n" + b"X-N: 1\r\n" * 100 + b"\r\n",
    b"GET /health HTTP/1.1\r\n" + b"X-N: 1\r\n" * 101 + b"\r\n",
    b"GET /" + b"a" * 8200 + b" HTTP/1.1\r\n\r\n",
    b"GET /health HTTP/1.1\r\nX-Big: " + b"b" * 16400 + b"\r\n\r\n",
    b"GET /health HTTP/1.1\r\n" + (b"X-M: " + b"m" * 1000 + b"\r\n") * 17 + b"\r\n",
    # Two pipelined requests, and a request with a body: not one whole head.
    b"GET /health HTTP/1.1\r\n\r\nGET /pay HTTP/1.1\r\n\r\n",
    b"POST /echo HTTP/1.1\r\nContent-Length: 2\r\n\r\nhi",
]


@pytest.mark.parametrize("head", HEADS)
def test_a_whole_head_is_answered_as_the_line_parser_answers_it(head: bytes) -> None:
    whole, split, _ = _both_ways(head)
    assert whole == split
    assert whole.startswith(b"HTTP/1.")


def test_the_one_pass_parser_takes_plain_heads_and_leaves_the_rest() -> None:
    taken = {head: _both_ways(head)[2] for head in HEADS}
    assert taken[HEADS[0]]
    assert taken[b"GET /health HTTP/1.1\r\nCookie: app_session=x; a=b\r\n\r\n"]
    assert taken[b"GET /health HTTP/1.1\r\nX-A: caf\xc3\xa9\r\n\r\n"]
    assert not taken[b"GET /health HTTP/1.1\r\nContent-Length: 0\r\n\r\n"]
    assert not taken[b"GET /health HTTP/1.1\r\nHost: x\r\n continued\r\n\r\n"]
    assert not taken[b"GET /health HTTP/1.1\r\n" + b"X-N: 1\r\n" * 101 + b"\r\n"]
    assert not taken[HEADS[-2]]
    assert sum(taken.values()) > 15


def test_a_connection_takes_one_whole_head_after_another() -> None:
    site = build_site(Config(demo=True), reactor, Clock())
    channel: Channel = site.buildProtocol(None)
    transport = StringTransport()
    channel.makeConnection(transport)
    for path in (b"/health", b"/pay", b"/health"):
        channel.dataReceived(b"GET %s HTTP/1.1\r\nHost: x\r\n\r\n" % path)
    answers = transport.value().split(b"HTTP/1.1 ")[1:]
    assert [answer[:3] for answer in answers] == [b"200", b"402", b"200"]
    assert not transport.disconnecting


_NAME = st.sampled_from(
    [b"Host", b"X-A", b"cookie", b"Accept", b"X A", b"X:A", b"", b"\xff", b"Range"]
)
_VALUE = st.binary(max_size=12).filter(lambda v: b"\r\n" not in v)


@settings(max_examples=150, deadline=None)
@given(
    method=st.sampled_from([b"GET", b"HEAD", b"POST", b"get", b"G T", b""]),
    target=st.sampled_from([b"/health", b"/pay", b"/x?a=%zz", b"", b"/\x80", b"*"]),
    version=st.sampled_from([b"HTTP/1.1", b"HTTP/1.0", b"HTTP/1.2", b"http/1.1"]),
    headers=st.lists(st.tuples(_NAME, st.sampled_from([b":", b": ", b""]), _VALUE)),
)
def test_any_head_is_answered_the_same_both_ways(
    method: bytes,
    target: bytes,
    version: bytes,
    headers: list[tuple[bytes, bytes, bytes]],
) -> None:
    head = b"%s %s %s\r\n" % (method, target, version)
    head += b"".join(name + colon + value + b"\r\n" for name, colon, value in headers)
    head += b"\r\n"
    whole, split, _ = _both_ways(head)
    assert whole == split
