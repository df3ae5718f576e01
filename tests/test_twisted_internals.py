"""
What app.compat.twisted relies on in Twisted, checked against a real
connection so that a Twisted release that moves it fails here, by name.
"""

from __future__ import annotations

import pytest_twisted
from twisted.internet import reactor
from twisted.internet.abstract import FileDescriptor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import StringTransport

from app.compat.twisted import sender


class Collect(Protocol):
    def __init__(self, done: Deferred[bytes], wanted: int) -> None:
        self.received = b""
        self.done = done
        self.wanted = wanted

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        if len(self.received) >= self.wanted and not self.done.called:
            self.done.callback(self.received)


@pytest_twisted.ensureDeferred
async def test_a_tcp_transport_has_what_the_sender_reads() -> None:
    server_side: list[Protocol] = []

    class Keep(Protocol):
        def connectionMade(self) -> None:
            server_side.append(self)

    port = reactor.listenTCP(0, Factory.forProtocol(Keep), interface="127.0.0.1")
    done: Deferred[bytes] = Deferred()
    big = b"x" * (8 << 20)
    try:
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port)
        client = await connectProtocol(endpoint, Collect(done, 2 + len(big) + 3))
        while not server_side:
            await _tick()
        transport = server_side[0].transport
        assert isinstance(transport, FileDescriptor)
        for name in ("_tempDataLen", "dataBuffer", "offset", "connected"):
            assert hasattr(transport, name), f"FileDescriptor.{name} is gone"
        for name in ("disconnecting", "_writeDisconnected", "writeSomeData", "TLS"):
            assert hasattr(transport, name), f"FileDescriptor.{name} is gone"
        send = sender(transport)
        send(b"ab")
        # Sent at once: nothing is queued.
        assert transport._tempDataLen == 0
        assert transport.offset == len(transport.dataBuffer)
        # More than the socket takes: the rest is queued, in order.
        send(big)
        send(b"end")
        assert transport._tempDataLen > 0 or transport.dataBuffer
        received = await done
        assert received == b"ab" + big + b"end"
        client.transport.loseConnection()
    finally:
        await port.stopListening()


def test_any_other_transport_is_written_to_as_it_is() -> None:
    transport = StringTransport()
    send = sender(transport)
    send(b"one")
    send(b"two")
    assert transport.value() == b"onetwo"


async def _tick() -> None:
    from twisted.internet.task import deferLater

    await deferLater(reactor, 0.001, lambda: None)
