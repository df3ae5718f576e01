"""
The Redis connection's replies, parsed by hiredis, reach what awaits each, in
order: an error reply, a lost connection or a failing receiver stays theirs.
"""

from __future__ import annotations

from collections import deque
from typing import Any

import txredisapi
from twisted.internet.testing import StringTransport
from twisted.logger import LogEvent, formatEvent
from twisted.python.failure import Failure

from app.sessions.redis import _Protocol


def _logged_in() -> tuple[_Protocol, StringTransport, list[Any]]:
    protocol = _Protocol(charset=None, convertNumbers=False)
    transport = StringTransport()
    protocol.makeConnection(transport)
    protocol.awaited = deque()
    return protocol, transport, []


def test_replies_reach_their_commands_in_order() -> None:
    protocol, _, replies = _logged_in()
    assert protocol.awaited is not None
    for _ in range(3):
        protocol.awaited.append(replies.append)
    # Split anywhere: a reply is handed over once it is whole.
    for piece in (b"$5\r\nhel", b"lo\r\n-ERR wrong\r\n$", b"-1\r\n"):
        protocol.dataReceived(piece)
    assert replies[0] == b"hello"
    assert isinstance(replies[1], txredisapi.ResponseError)
    assert replies[2] is None
    assert protocol.waiting() == 0


def test_a_receiver_that_fails_keeps_the_others_served(
    captured_log: list[LogEvent],
) -> None:
    protocol, transport, replies = _logged_in()
    assert protocol.awaited is not None

    def failing(reply: Any) -> None:
        raise RuntimeError("a bug")

    protocol.awaited.extend([failing, replies.append])
    protocol.dataReceived(b"+OK\r\n+OK\r\n")
    assert replies == [b"OK"]
    assert not transport.disconnecting
    assert any(
        "Handling a reply from Redis failed" in formatEvent(event)
        for event in captured_log
    )


def test_a_lost_connection_fails_what_waits() -> None:
    protocol, _, replies = _logged_in()
    assert protocol.awaited is not None
    protocol.awaited.extend([replies.append, replies.append])
    protocol.connectionLost(Failure(ConnectionError("gone")))
    assert [type(reply) for reply in replies] == [txredisapi.ConnectionError] * 2
    assert protocol.waiting() == 0


def test_what_is_not_a_reply_drops_the_connection(
    captured_log: list[LogEvent],
) -> None:
    protocol, transport, replies = _logged_in()
    assert protocol.awaited is not None
    protocol.awaited.append(replies.append)
    protocol.dataReceived(b"?garbage\r\n")
    assert replies == []
    assert transport.disconnecting or transport.disconnected
    assert any("not a reply" in formatEvent(event) for event in captured_log)


def test_a_reply_no_command_awaits_drops_the_connection() -> None:
    protocol, transport, _ = _logged_in()
    protocol.dataReceived(b"+OK\r\n")
    assert transport.disconnecting or transport.disconnected
