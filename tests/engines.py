"""
Real engines that tests start for themselves: a Redis server on a UNIX
socket in a temporary directory (Debian's C{redis-server}, which
C{make test} installs when it is missing).
"""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import time
from pathlib import Path

#: Seconds a Redis server may take to answer its first PING.
START_TIMEOUT = 15.0


class RedisServer:
    """
    A C{redis-server} of a test's own: no TCP port, no persistence, its
    socket in C{directory}.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.socket = directory / "redis.sock"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis+unix://{self.socket}"

    def start(self) -> None:
        program = shutil.which("redis-server")
        assert program is not None, "redis-server is missing: run make test-tools"
        self.process = subprocess.Popen(
            [
                program,
                "--port", "0",
                "--unixsocket", str(self.socket),
                "--unixsocketperm", "700",
                "--save", "",
                "--appendonly", "no",
                "--dir", str(self.directory),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + START_TIMEOUT
        while not self.answers():
            assert self.process.poll() is None, "redis-server exited at start"
            assert time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.02)

    def _connection(self, timeout: float = 5.0) -> socket.socket:
        """
        A connection to the server's socket (to use in a C{with}).
        """
        client = socket.socket(socket.AF_UNIX)
        client.settimeout(timeout)
        try:
            client.connect(str(self.socket))
        except OSError:
            client.close()
            raise
        return client

    def answers(self) -> bool:
        """
        Whether the server answers a PING on its socket.
        """
        try:
            with self._connection(1.0) as client:
                client.sendall(b"PING\r\n")
                return client.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def command(self, *words: str) -> bytes:
        """
        Send one inline command; return the first line of its answer.
        """
        with self._connection() as client:
            client.sendall(" ".join(words).encode() + b"\r\n")
            return client.recv(65536).split(b"\r\n", 1)[0]

    def calls(self, command: str) -> int:
        """
        How many times the server has run C{command} (C{INFO commandstats}).
        """
        with self._connection() as client:
            client.sendall(b"INFO commandstats\r\n")
            answer = b""
            while b"\r\n" not in answer:
                answer += client.recv(65536)
            head, _, body = answer.partition(b"\r\n")
            while len(body) < int(head[1:]):  # a bulk string: $LENGTH
                body += client.recv(65536)
        pattern = rb"cmdstat_%s:calls=(\d+)" % command.lower().encode()
        found = re.search(pattern, body)
        return int(found.group(1)) if found else 0

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)
        self.process = None
