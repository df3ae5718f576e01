"""
The one raw-socket helper: send exact bytes to a server, read what comes back.

Protocol-level tests (framing, limits, smuggling, disconnects, slow clients)
need bytes that no HTTP client library will send; this speaks TCP directly
on the test's reactor, so the server under test keeps running meanwhile.
"""

from __future__ import annotations

import socket
from collections.abc import Sequence
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.interfaces import IPushProducer, ITCPTransport
from twisted.internet.protocol import Protocol
from twisted.internet.task import deferLater
from twisted.python.failure import Failure


class RawClient(Protocol):
    """
    Collects every byte received until the server closes the connection.
    """

    def __init__(self) -> None:
        self.received = bytearray()
        self.closed: Deferred[bytes] = Deferred()
        self.reason: Failure | None = None

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.reason = reason
        self.closed.callback(bytes(self.received))

    def send(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)

    def half_close(self) -> None:
        assert self.transport is not None
        ITCPTransport(self.transport).loseWriteConnection()

    def pause_reading(self) -> None:
        """
        Read nothing more, so that the server's writes back up.
        """
        assert self.transport is not None
        IPushProducer(self.transport).pauseProducing()

    def resume_reading(self) -> None:
        assert self.transport is not None
        IPushProducer(self.transport).resumeProducing()

    def close(self) -> None:
        assert self.transport is not None
        self.transport.loseConnection()


async def connect(reactor: Any, port: int) -> RawClient:
    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port)
    client = RawClient()
    await connectProtocol(endpoint, client)
    return client


async def exchange(
    reactor: Any,
    port: int,
    pieces: Sequence[bytes] | bytes,
    *,
    pause: float = 0.0,
    timeout: float = 10.0,
) -> bytes:
    """
    Send C{pieces} (with C{pause} seconds between them) and return all the
    bytes received until the server closes, or until C{timeout}, after which
    the client closes and the bytes so far are returned.
    """
    if isinstance(pieces, bytes):
        pieces = [pieces]
    client = await connect(reactor, port)
    for index, piece in enumerate(pieces):
        if index and pause:
            await deferLater(reactor, pause, lambda: None)
        if client.closed.called:
            break
        client.send(piece)
    timer = reactor.callLater(timeout, client.close)
    received = await client.closed
    if timer.active():
        timer.cancel()
    return received


def parse_response(data: bytes) -> tuple[int, dict[bytes, bytes], bytes]:
    """
    The status, headers (lower-cased names) and body of the first response.
    """
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split(b" ")[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers[name.strip().lower()] = value.strip()
    return status, headers, body


def blocking_get(port: int, target: bytes, *, timeout: float = 10.0) -> bytes:
    """
    Every byte the server on 127.0.0.1:C{port} answers to one C{GET target}
    that asks it to close, read on a blocking socket: for a server that is a
    process of its own, with no reactor in the test.
    """
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(
            b"GET " + target + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    return data
