"""
The socket a peer of `make bench` serves on: 127.0.0.1 at a port the kernel
picks, announced on standard output with the line the server under test logs,
so that bench/run.py finds every server the same way.
"""

from __future__ import annotations

import socket


def listening_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    # Listening before the event loop starts: a connection made meanwhile
    # waits in the backlog instead of being refused.
    sock.listen(128)
    host, port = sock.getsockname()
    print(f"listening on http://{host}:{port}/", flush=True)
    return sock
