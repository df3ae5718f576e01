"""
The server's time for one /counter request, in process and without sockets,
with a session store: fifty connections each send a request, the reactor
turns until every one is answered, and that again; the best of several runs.
A figure that the load generator and the machine's other tenants leave
alone, unlike wrk's.

    python bench/session_cost.py STORE     (memory, sqlite:PATH, redis://…)
"""

from __future__ import annotations

import re
import sys
import time
from collections.abc import Callable

from twisted.internet import reactor
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport

from app.cli.main import tune_garbage_collector
from app.cli.options import config_from_args
from app.site import build_site

CONNECTIONS = 50
ROUNDS = 60
RUNS = 7


def cost(store: str) -> float:
    """
    Microseconds of the server's time per /counter request with C{store}.
    """
    tune_garbage_collector()
    site = build_site(config_from_args(["--sessions", store]), reactor)
    site.service.startService()
    peer = IPv4Address("TCP", "127.0.0.1", 50000)
    pairs = []
    for _ in range(CONNECTIONS):
        channel = site.buildProtocol(peer)
        transport = StringTransport(peerAddress=peer)
        channel.makeConnection(transport)
        pairs.append((channel, transport))

    def turn_until(done: Callable[[], bool]) -> None:
        deadline = time.monotonic() + 10
        while not done():
            reactor.iterate(0)  # type: ignore[attr-defined]
            if time.monotonic() > deadline:
                raise SystemExit(f"{store}: no answer within 10 s")

    first, transport = pairs[0]
    first.dataReceived(b"GET /counter HTTP/1.1\r\nHost: bench\r\n\r\n")
    turn_until(lambda: transport.value().endswith(b"</html>\n"))
    found = re.search(rb"Set-Cookie: ([^;]+)", transport.value())
    assert found is not None, transport.value()[:200]
    request = (
        b"GET /counter HTTP/1.1\r\nHost: bench\r\nCookie: "
        + found.group(1)
        + b"\r\n\r\n"
    )
    transport.clear()

    def rounds(count: int) -> None:
        for _ in range(count):
            for channel, _ in pairs:
                channel.dataReceived(request)
            turn_until(lambda: all(t.value().endswith(b"</html>\n") for _, t in pairs))
            for _, answered in pairs:
                answered.clear()

    rounds(20)
    best = float("inf")
    for _ in range(RUNS):
        started = time.perf_counter()
        rounds(ROUNDS)
        best = min(best, (time.perf_counter() - started) / (ROUNDS * CONNECTIONS))
    site.service.stopService()
    return best * 1e6


if __name__ == "__main__":
    print(f"{cost(sys.argv[1]):.1f}")
