"""
How many connections the site takes: at --max-connections it stops
accepting, and starts again when one closes.
"""

from __future__ import annotations

import socket
from typing import cast

import pytest_twisted
from twisted.internet import reactor
from twisted.internet.interfaces import IListeningPort
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.web.resource import Resource

from app.http.site import Site
from app.testing import LiveServer
from tests.conftest import eventually, listen, port_number
from tests.rawhttp import connect, parse_response


class Port:
    """
    A listening port that remembers being paused and resumed.
    """

    connected = True

    def __init__(self) -> None:
        self.reading = True
        self.calls: list[str] = []

    def stopReading(self) -> None:
        self.reading = False
        self.calls.append("stop")

    def startReading(self) -> None:
        self.reading = True
        self.calls.append("start")


def test_the_ports_stop_accepting_at_the_limit_and_start_below_it() -> None:
    site = Site(
        Resource(), reactor=Clock(), max_body=10, idle_timeout=30, max_connections=2
    )
    ports = [Port(), Port()]
    # What pausing asks of a port: stopReading and startReading.
    site.ports.extend(cast(list[IListeningPort], ports))
    channels = []
    for _ in range(2):
        channel = site.buildProtocol(None)
        channel.makeConnection(StringTransport())
        channels.append(channel)
    assert [port.calls for port in ports] == [["stop"], ["stop"]]
    channels[0].connectionLost()
    assert [port.reading for port in ports] == [True, True]
    channel = site.buildProtocol(None)
    channel.makeConnection(StringTransport())
    assert [port.calls for port in ports] == [["stop", "start", "stop"]] * 2


def test_a_stopping_site_does_not_start_accepting_again() -> None:
    site = Site(
        Resource(), reactor=Clock(), max_body=10, idle_timeout=30, max_connections=1
    )
    port = Port()
    site.ports.append(cast(IListeningPort, port))
    channel = site.buildProtocol(None)
    channel.makeConnection(StringTransport())
    site.stopping = True
    channel.connectionLost()
    assert port.calls == ["stop"]


@pytest_twisted.ensureDeferred
async def test_a_client_past_the_limit_waits_and_is_served_when_one_leaves() -> None:
    live = await LiveServer.start(["--no-demo", "--max-connections", "2"])
    try:
        first = await connect(reactor, live.port_number)
        second = await connect(reactor, live.port_number)
        await eventually(lambda: len(live.site.channels) == 2, "two connections")
        # The kernel completes the handshake from its backlog; the server
        # takes the connection only once one of the two leaves.
        third = await connect(reactor, live.port_number)
        third.send(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert len(live.site.channels) == 2
        first.close()
        data = await third.closed
        assert parse_response(data)[0] == 200
        second.close()
        await second.closed
    finally:
        await live.stop()


@pytest_twisted.ensureDeferred
async def test_a_batch_of_waiting_clients_is_not_taken_past_the_limit() -> None:
    site = Site(
        Resource(), reactor=reactor, max_body=10, idle_timeout=30, max_connections=2
    )
    port = listen(site)
    site.ports.append(port)
    # All six wait in the backlog before the reactor turns: Twisted would
    # take them in one batch.
    clients = [
        socket.create_connection(("127.0.0.1", port_number(port))) for _ in range(6)
    ]
    try:
        await eventually(lambda: len(site.channels) >= 2, "two connections taken")
        assert len(site.channels) == 2
        clients[0].close()
        await eventually(lambda: len(site.channels) >= 2 and clients, "one more")
    finally:
        for client in clients:
            client.close()
        await site.shutdown([port], grace=1)
