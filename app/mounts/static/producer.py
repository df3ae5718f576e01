"""
Streaming a static file's body to the client.

C{twisted.web.static.File} streams through a pull producer, asked for
each chunk.  Here the body is a list of pieces (literal bytes, or a span of
the file) whose lengths the headers already promised; a small one is
written at once, a larger one streams in L{CHUNK_SIZE} pieces through a
push producer that the connection pauses when the client reads slowly, and
a file that shrinks under it closes the connection rather than send less
than promised.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Sequence
from typing import BinaryIO, cast

from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.server import Request
from zope.interface import implementer

__all__ = ["CHUNK_SIZE", "Pieces", "send_pieces"]

#: Bytes read from a file and written at a time.
CHUNK_SIZE = 64 * 1024

#: What is to be sent of a file: literal bytes, or C{(offset, length)} of it.
Pieces = list[bytes | tuple[int, int]]

log = Logger()


def send_pieces(request: Request, descriptor: int, pieces: Pieces) -> None:
    """
    Write C{pieces} of the file open as C{descriptor} as the body of the
    answer to C{request} and finish it, closing C{descriptor} or handing it
    to the producer that streams the file.
    """
    if not pieces:
        os.close(descriptor)
        request.write(b"")
        request.finish()
        return
    if len(pieces) == 1:
        offset, size = cast(tuple[int, int], pieces[0])
        if size <= CHUNK_SIZE:
            # Small enough for one write: no producer to set up.
            try:
                data = os.pread(descriptor, size, offset)
            except OSError:
                data = b""
            if len(data) == size:
                os.close(descriptor)
                request.write(data)
                request.finish()
                return
            # The file changed under us: the producer knows how to give up.
    file = os.fdopen(descriptor, "rb", buffering=0)
    _FileProducer(request, file, pieces).start()


@implementer(IPushProducer)
class _FileProducer:
    """
    Write C{pieces} (literal bytes, or C{(offset, length)} of the file) to
    the request, as fast as the connection takes them, then finish it.
    """

    def __init__(
        self,
        request: Request,
        file: BinaryIO,
        pieces: Sequence[bytes | tuple[int, int]],
    ) -> None:
        self._request = request
        self._file = file
        self._pieces = deque(pieces)
        self._paused = False
        self._producing = False
        self._done = False

    def start(self) -> None:
        self._request.registerProducer(self, True)
        self._request.notifyFinish().addErrback(self._client_gone)
        self._produce()

    def pauseProducing(self) -> None:
        self._paused = True

    def resumeProducing(self) -> None:
        self._paused = False
        self._produce()

    def stopProducing(self) -> None:
        self._stop()

    def _client_gone(self, reason: Failure) -> None:
        self._stop()

    def _stop(self) -> None:
        if not self._done:
            self._done = True
            self._file.close()

    def _produce(self) -> None:
        if self._producing:
            # Called back from inside a write: the running loop goes on.
            return
        self._producing = True
        try:
            while not self._paused and not self._done:
                chunk = self._next_chunk()
                if chunk is None:
                    return
                self._request.write(chunk)
        finally:
            self._producing = False

    def _next_chunk(self) -> bytes | None:
        """
        The next bytes to write, or C{None} once the response is over.
        """
        if not self._pieces:
            self._stop()
            self._request.unregisterProducer()
            self._request.finish()
            return None
        piece = self._pieces[0]
        if isinstance(piece, bytes):
            self._pieces.popleft()
            return piece
        offset, length = piece
        try:
            self._file.seek(offset)
            chunk = self._file.read(min(length, CHUNK_SIZE))
        except OSError:
            log.failure("Reading a static file failed", Failure())
            chunk = b""
        if not chunk:
            # The file shrank or failed under us: the promised length cannot
            # be sent, so the connection must close.
            self._stop()
            self._request.unregisterProducer()
            self._request.loseConnection()
            return None
        if len(chunk) == length:
            self._pieces.popleft()
        else:
            self._pieces[0] = (offset + len(chunk), length - len(chunk))
        return chunk
