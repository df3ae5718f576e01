"""
The hostile cases of `make bench`: what a client that means harm costs the
server, measured from outside over loopback and reported as figures beside
their goals (SPEC §11).  Nothing here passes or fails.

  - 1 MiB form body: how long a 1 MiB POST to /form holds the reactor, for
    six shapes of body.  A probe connection sends GET /health back to back
    while another connection uploads the body and reads the answer; the
    figure is the worst /health latency seen from the start of the upload
    to 100 ms after its answer, less the median /health latency before it.
    A fresh server for each shape.
  - one-byte-chunk flood: four connections send POST /echo bodies of
    one-byte chunks as fast as they can; the figures are the median and 99th
    percentile /health latency of the probe meanwhile.
  - pipelining without reading: four connections each send 800 KiB of
    pipelined GETs for a 64 KiB file and read nothing; the figure is how much
    the server's resident set grew meanwhile.

Each measurement takes a way to start a fresh server (L{Serve}) and the
seconds it should run.  Plain sockets and threads only: every socket has a
timeout, every loop a deadline, and every connection is closed at the end.
"""

from __future__ import annotations

import math
import re
import select
import socket
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MIB = 1024 * 1024
#: How long any one request may take before the connection is given up.
TIMEOUT = 30.0
#: How long the probe measures an idle server, before the hostile traffic.
IDLE_SECONDS = 0.5
#: How long after the answer to an upload the probe still counts: what the
#: server does once it has answered (freeing the fields) holds it too.
TAIL_SECONDS = 0.1
HEALTH = b"GET /health HTTP/1.1\r\nHost: bench\r\n\r\n"
BOUNDARY = b"bench-a8Yh3kQ0"
CONNECTIONS = 4
#: One-byte chunks in each body of the flood (six bytes each on the wire).
FLOOD_CHUNKS = 65_536
FLOOD_BLOCK = b"1\r\nx\r\n" * 8192
PIPELINED_BYTES = 800 * 1024
#: Growth of the resident set past which the pipelining case stops early.
MEMORY_CAP_KIB = 2 * 1024 * 1024
STATIC_FILE = "64k.bin"

Address = tuple[str, int]


@dataclass(frozen=True)
class Server:
    """
    A server started for one measurement: where it listens, and its process.
    """

    address: Address
    pid: int


#: Starts a fresh server and stops it when the block ends.
Serve = Callable[[], AbstractContextManager[Server]]


@dataclass(frozen=True)
class Figure:
    """
    One line of the hostile part of the report.
    """

    label: str
    value: float
    unit: str
    goal: str
    #: Context printed after the goal: what else was seen.
    note: str = ""
    details: dict[str, Any] = field(default_factory=dict)


# -- the client -----------------------------------------------------------


class Connection:
    """
    One HTTP/1.1 connection over a plain socket: requests go out as bytes,
    and answers are read with just enough parsing to find where they end.
    """

    def __init__(self, address: Address, timeout: float = TIMEOUT) -> None:
        self.socket = socket.create_connection(address, timeout=timeout)
        self.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._reader = self.socket.makefile("rb")

    def request(self, data: bytes) -> tuple[int, int]:
        """
        Send C{data} and read one answer: its status and body length.
        """
        self.socket.sendall(data)
        return self.read_response()

    def read_response(self) -> tuple[int, int]:
        status_line = self._reader.readline()
        if not status_line:
            raise ConnectionError("closed by the server")
        status = int(status_line.split()[1])
        length: int | None = None
        chunked = False
        while (line := self._reader.readline()) not in (b"\r\n", b"\n", b""):
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"transfer-encoding":
                chunked = b"chunked" in value.lower()
        if status < 200:
            return self.read_response()
        if chunked:
            return status, self._read_chunked()
        if length is not None:
            return status, len(self._reader.read(length))
        return status, len(self._reader.read())

    def _read_chunked(self) -> int:
        total = 0
        while size := int(self._reader.readline().split(b";")[0], 16):
            total += len(self._reader.read(size + 2)) - 2
        while self._reader.readline() not in (b"\r\n", b"\n", b""):
            pass
        return total

    def close(self) -> None:
        self._reader.close()
        self.socket.close()

    def abort(self) -> None:
        """
        Unblock whatever another thread is doing with this connection.
        """
        try:
            self.socket.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


class Probe:
    """
    GET /health back to back on one keep-alive connection, in a thread of
    its own, timing every answer.
    """

    def __init__(self, address: Address) -> None:
        self._address = address
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        #: (sent, answered) for each request, in perf_counter seconds.
        self.samples: list[tuple[float, float]] = []
        #: Why the probe stopped early, if it did.
        self.failure: str | None = None

    def __enter__(self) -> Probe:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
        self.join()

    def stop(self) -> None:
        """
        Send no more requests once the one in flight is answered.
        """
        self._stopping.set()

    def join(self) -> None:
        self._thread.join(TIMEOUT + 1)

    def _run(self) -> None:
        try:
            connection = Connection(self._address)
        except OSError as error:
            self.failure = f"could not connect: {error}"
            return
        with closing(connection):
            while not self._stopping.is_set():
                sent = time.perf_counter()
                try:
                    connection.request(HEALTH)
                except (OSError, ValueError) as error:
                    # Counted as a request that took this long, at least.
                    self.samples.append((sent, time.perf_counter()))
                    self.failure = (
                        f"{type(error).__name__} after {len(self.samples)} requests"
                    )
                    return
                self.samples.append((sent, time.perf_counter()))

    def latencies_ms(
        self, start: float = -math.inf, end: float = math.inf
    ) -> list[float]:
        """
        The latencies of the requests in flight at any time between C{start}
        and C{end}.
        """
        return [
            (answered - sent) * 1000
            for sent, answered in self.samples
            if sent < end and answered > start
        ]


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


def rss_kib(pid: int) -> int:
    """
    The resident set of process C{pid}, in KiB.
    """
    status = Path(f"/proc/{pid}/status").read_text()
    found = re.search(r"VmRSS:\s+(\d+) kB", status)
    return int(found.group(1)) if found else 0


def _warm_up(address: Address, requests: list[bytes]) -> None:
    """
    Send each request once and read its answer, so that what a server loads
    on first use is loaded before anything is timed.
    """
    with closing(Connection(address)) as connection:
        for data in requests:
            connection.request(data)


# -- 1 MiB form body --------------------------------------------------------


def _post(path: bytes, content_type: bytes, body: bytes) -> bytes:
    return (
        b"POST %s HTTP/1.1\r\nHost: bench\r\nContent-Type: %s\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (path, content_type, len(body), body)
    )


URLENCODED = b"application/x-www-form-urlencoded"
MULTIPART = b"multipart/form-data; boundary=" + BOUNDARY


def _multipart(parts: list[tuple[bytes, bytes]]) -> bytes:
    return b"".join(
        b'--%s\r\nContent-Disposition: form-data; name="%s"\r\n\r\n%s\r\n'
        % (BOUNDARY, name, value)
        for name, value in parts
    ) + (b"--%s--\r\n" % BOUNDARY)


def _mebibyte(make: Callable[[bytes], bytes]) -> bytes:
    """
    C{make(padding)}, with as much padding as makes it exactly 1 MiB.
    """
    body = make(b"x" * (MIB - len(make(b""))))
    assert len(body) == MIB, len(body)
    return body


def form_bodies() -> Iterator[tuple[str, bytes, bytes]]:
    """
    The shapes of 1 MiB body: (label, content type, body).
    """
    yield (
        "urlencoded, one field of 1 MiB",
        URLENCODED,
        _mebibyte(lambda pad: b"the-field=" + pad),
    )
    yield "urlencoded, 1 MiB of '&'", URLENCODED, b"&" * MIB
    yield "urlencoded, 'a=1&' repeated", URLENCODED, b"a=1&" * (MIB // 4)
    yield (
        "multipart, one part of 1 MiB",
        MULTIPART,
        _mebibyte(lambda pad: _multipart([(b"the-field", pad)])),
    )
    tiny = len(_multipart([(b"f", b"x")])) - len(_multipart([]))
    count = (MIB - 256) // tiny
    yield (
        f"multipart, {count} tiny parts",
        MULTIPART,
        _mebibyte(
            lambda pad: _multipart(
                [(b"the-field", b"x" + pad)] + [(b"f", b"x")] * count
            )
        ),
    )
    yield (
        "multipart, one part of '\\r\\n--' repeated",
        MULTIPART,
        _mebibyte(
            lambda pad: _multipart(
                [(b"the-field", b"\r\n--" * ((MIB - 256) // 4) + pad)]
            )
        ),
    )


def form_body(serve: Serve, seconds: float) -> list[Figure]:
    """
    For each shape of body, on a fresh server: the worst /health latency
    while the body is uploaded and answered (and for L{TAIL_SECONDS} after),
    less the idle median.  C{seconds} does not apply: an upload takes what
    it takes.
    """
    figures = []
    warm_up = [
        HEALTH,
        _post(b"/form", URLENCODED, b"the-field=warm"),
        _post(b"/form", MULTIPART, _multipart([(b"the-field", b"warm")])),
    ]
    for label, content_type, body in form_bodies():
        request = _post(b"/form", content_type, body)
        with serve() as server:
            _warm_up(server.address, warm_up)
            uploader = Connection(server.address)
            with closing(uploader), Probe(server.address) as probe:
                time.sleep(IDLE_SECONDS)
                start = time.perf_counter()
                try:
                    status: int | str = uploader.request(request)[0]
                except (OSError, ValueError) as error:
                    status = type(error).__name__
                answered = time.perf_counter()
                time.sleep(TAIL_SECONDS)
                end = time.perf_counter()
            idle_latencies = probe.latencies_ms(end=start)
            idle = statistics.median(idle_latencies) if idle_latencies else math.nan
            worst = max(probe.latencies_ms(start, end), default=math.nan)
        upload_ms = (answered - start) * 1000
        note = f"answer {status}, upload {upload_ms:.0f} ms"
        if probe.failure:
            note += f", probe: {probe.failure}"
        figures.append(
            Figure(
                label,
                worst - idle,
                "ms",
                "< 50 ms",
                note,
                {
                    "idle_median_ms": idle,
                    "worst_ms": worst,
                    "upload_ms": upload_ms,
                    "status": status,
                    "probe_failure": probe.failure,
                },
            )
        )
    return figures


# -- one-byte-chunk flood -----------------------------------------------------


class ChunkFlooder(threading.Thread):
    """
    POST /echo, over and over on one connection, with bodies of
    L{FLOOD_CHUNKS} one-byte chunks, until stopped or the deadline.
    """

    def __init__(self, address: Address, deadline: float) -> None:
        super().__init__(daemon=True)
        self._address = address
        self._deadline = deadline
        self._stopping = threading.Event()
        self._connection: Connection | None = None
        #: Body bytes the server echoed back: one a chunk.
        self.echoed = 0
        self.answers: dict[int, int] = {}
        self.errors = 0

    def run(self) -> None:
        head = (
            b"POST /echo HTTP/1.1\r\nHost: bench\r\nTransfer-Encoding: chunked\r\n"
            b"Content-Type: application/octet-stream\r\n\r\n"
        )
        blocks = FLOOD_CHUNKS * 6 // len(FLOOD_BLOCK)
        while not self._stopping.is_set() and time.perf_counter() < self._deadline:
            try:
                self._connection = Connection(self._address)
                with closing(self._connection) as connection:
                    while not self._stopping.is_set():
                        connection.socket.sendall(head)
                        for _ in range(blocks):
                            if self._stopping.is_set():
                                return
                            connection.socket.sendall(FLOOD_BLOCK)
                        connection.socket.sendall(b"0\r\n\r\n")
                        status, length = connection.read_response()
                        self.answers[status] = self.answers.get(status, 0) + 1
                        self.echoed += length
                        if time.perf_counter() >= self._deadline:
                            return
            except (OSError, ValueError):
                if not self._stopping.is_set():
                    self.errors += 1

    def stop(self) -> None:
        self._stopping.set()
        if self._connection is not None:
            self._connection.abort()
        self.join(TIMEOUT + 1)


def chunk_flood(serve: Serve, seconds: float) -> list[Figure]:
    """
    The probe's /health latencies while L{CONNECTIONS} connections flood
    the server with one-byte chunks.
    """
    with serve() as server:
        _warm_up(server.address, [HEALTH, _post(b"/echo", b"text/plain", b"warm")])
        started = time.perf_counter()
        # A bound on the whole, should a stop not get through.
        deadline = started + IDLE_SECONDS + seconds + TIMEOUT
        flooders = [ChunkFlooder(server.address, deadline) for _ in range(CONNECTIONS)]
        for flooder in flooders:
            flooder.start()
        # The flood gets going before the probe starts.
        time.sleep(IDLE_SECONDS)
        with Probe(server.address) as probe:
            time.sleep(seconds)
            # The probe's last request is answered once the flood has stopped.
            probe.stop()
            for flooder in flooders:
                flooder.stop()
            elapsed = time.perf_counter() - started
    latencies = probe.latencies_ms()
    median = statistics.median(latencies) if latencies else math.nan
    p99 = percentile(latencies, 0.99) if latencies else math.nan
    echoed = sum(f.echoed for f in flooders)
    answers: dict[int, int] = {}
    for flooder in flooders:
        for status, count in flooder.answers.items():
            answers[status] = answers.get(status, 0) + count
    errors = sum(f.errors for f in flooders)
    note = (
        f"p99 {p99:.1f} ms over {len(latencies)} probes; "
        f"{echoed / elapsed / 1000:.0f}k chunks/s echoed"
    )
    if errors:
        note += f"; {errors} flood connections failed"
    if probe.failure:
        note += f"; probe: {probe.failure}"
    details = {
        "median_ms": median,
        "p99_ms": p99,
        "probes": len(latencies),
        "chunks_echoed": echoed,
        "answers": answers,
        "connection_errors": errors,
        "probe_failure": probe.failure,
    }
    return [
        Figure(
            f"{CONNECTIONS} connections, /health median",
            median,
            "ms",
            "median < 50 ms",
            note,
            details,
        )
    ]


# -- pipelining without reading ---------------------------------------------


def unread_pipelining(serve: Serve, seconds: float) -> list[Figure]:
    """
    The growth of the server's resident set while L{CONNECTIONS}
    connections each pipeline L{PIPELINED_BYTES} of GETs for a 64 KiB file
    and read nothing.
    """
    request = b"GET /static/%s HTTP/1.1\r\nHost: x\r\n\r\n" % STATIC_FILE.encode()
    pipeline = request * (PIPELINED_BYTES // len(request))
    with serve() as server:
        _warm_up(server.address, [HEALTH, request, request])
        before = peak = rss_kib(server.pid)
        sockets = [
            socket.create_connection(server.address, timeout=TIMEOUT)
            for _ in range(CONNECTIONS)
        ]
        sent = dict.fromkeys(sockets, 0)
        try:
            for sock in sockets:
                sock.setblocking(False)
            started = time.perf_counter()
            deadline = started + seconds
            while (left := deadline - time.perf_counter()) > 0:
                unsent = [s for s in sockets if sent[s] < len(pipeline)]
                _, writable, _ = select.select([], unsent, [], min(left, 0.1))
                for sock in writable:
                    try:
                        sent[sock] += sock.send(pipeline[sent[sock] :])
                    except BlockingIOError:
                        pass
                if not unsent:
                    time.sleep(min(left, 0.1))
                peak = max(peak, rss_kib(server.pid))
                if peak - before > MEMORY_CAP_KIB:
                    break
            after = rss_kib(server.pid)
            peak = max(peak, after)
            elapsed = time.perf_counter() - started
        finally:
            for sock in sockets:
                sock.close()
    growth = (after - before) / 1024
    note = (
        f"{before / 1024:.0f} MiB before; peak +{(peak - before) / 1024:.1f} MiB; "
        f"{sum(sent.values()) // 1024} of {CONNECTIONS * len(pipeline) // 1024} "
        "KiB of requests sent"
    )
    if elapsed < seconds:
        note += f"; stopped at +{MEMORY_CAP_KIB // 1024} MiB after {elapsed:.1f} s"
    return [
        Figure(
            f"{CONNECTIONS} connections x {PIPELINED_BYTES // 1024} KiB, RSS growth",
            growth,
            "MiB",
            "< 32 MiB",
            note,
            {
                "seconds": elapsed,
                "before_kib": before,
                "after_kib": after,
                "peak_kib": peak,
                "requests_sent_bytes": sum(sent.values()),
                "requests_offered_bytes": CONNECTIONS * len(pipeline),
            },
        )
    ]
