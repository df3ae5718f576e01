"""
The one place that reaches into Twisted's private parts, each use named with
what it buys; tests/test_twisted_internals.py fails, saying what moved, when
a Twisted release changes one of them.

  - L{sender}: a TCP or UNIX transport queues every write and asks the
    reactor to watch the socket for writing (an C{epoll_ctl} call), sends on
    the reactor's next turn, then stops watching (another call).  For a
    small response to a client that reads, that is most of the cost of
    answering.  As asyncio's transports do, the sender tries the socket at
    once when nothing is queued, and queues only what the socket does not
    take.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.abstract import FileDescriptor


def sender(transport: Any) -> Callable[[bytes], None]:
    """
    A function that writes to C{transport} as C{transport.write} does,
    sending at once where the transport lets it.
    """
    if not isinstance(transport, FileDescriptor):
        return transport.write  # type: ignore[no-any-return]
    write = transport.write
    write_some = transport.writeSomeData

    def send(data: bytes) -> None:
        if (
            not getattr(transport, "TLS", False)  # TLS started on it: encrypt first
            and not transport._tempDataLen
            and transport.offset == len(transport.dataBuffer)
            and transport.connected
            and not transport.disconnecting
            and not transport._writeDisconnected
        ):
            sent = write_some(data)
            if isinstance(sent, int):
                if sent == len(data):
                    return
                data = data[sent:]
            # Otherwise the connection is lost: queued, the write fails on
            # the reactor's turn and the transport closes as it always does.
        write(data)

    return send
