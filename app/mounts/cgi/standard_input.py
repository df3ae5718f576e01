"""
The request body, written to a CGI script's standard input.

twcgi reads the whole body into memory and writes it to the script at
once.  Here it goes a chunk at a time, as fast as the script reads it.
"""

from __future__ import annotations

from typing import IO, Any

from twisted.internet.interfaces import IPullProducer
from zope.interface import implementer

#: How much of the request body is written to a script at a time.
STDIN_CHUNK = 64 * 1024


@implementer(IPullProducer)
class StandardInput:
    """
    Writes the request body to a script's standard input a chunk at a time,
    as fast as the script reads it, then closes it.
    """

    def __init__(self, body: IO[bytes] | None, process: Any) -> None:
        self._body = body
        self._process = process
        self._closed = False

    def start(self) -> None:
        if self._body is None:
            self.stop()
            return
        self._body.seek(0)
        self._process.registerProducer(self, False)

    def resumeProducing(self) -> None:
        chunk = b""
        if self._body is not None:
            try:
                chunk = self._body.read(STDIN_CHUNK)
            except ValueError:  # the request's body is closed: it is over
                chunk = b""
        if chunk:
            self._process.write(chunk)
        else:
            self.stop()

    def stopProducing(self) -> None:
        # The pipe is gone: the script exited or closed its standard input.
        self._body = None

    def stop(self) -> None:
        """
        Write no more and close the script's standard input.
        """
        if self._closed:
            return
        self._closed = True
        self._body = None
        self._process.unregisterProducer()
        self._process.closeStdin()
