"""
The hostile streams of `make soak` (SPEC §12, README "Limits"): clients that
send little and cost much, each run in threads of its own beside the mixed
load, each with the answers the rules allow it.

  - idle flood: a few hundred connections opened and held, sending nothing,
    past --max-connections; a fresh connection meanwhile waits in the
    kernel's backlog until they close (the cap was reached).
  - slow bodies: POST /echo sending a byte every 1.5 s: 408.
  - CGI flood: more concurrent /cgi-bin/ requests than --cgi-max + 64:
    200, or 503 with Retry-After.
  - wrong passwords: Basic with wrong passwords from 127.0.0.2 and
    127.0.0.3 against /private/: 401, or 503 with Retry-After; meanwhile a
    correct login from 127.0.0.1 (a user not checked before) is timed.
  - sessions: cookieless GET /session back to back, while a few clients
    keep their cookies and check that GET /counter keeps counting.
  - endless upstream: /proxy/ to an upstream that answers with an endless
    header block: 502.

Plain sockets and threads: every socket has a timeout, every loop a stop
event and a deadline, and every connection is closed at the end.
"""

from __future__ import annotations

import base64
import re
import select
import socket
import socketserver
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

HOST = "127.0.0.1"
#: The addresses the wrong passwords come from.
WRONG_PASSWORD_SOURCES = ("127.0.0.2", "127.0.0.3")
#: Seconds any one answer may take before the request counts as hung.
TIMEOUT = 30.0
#: Answers the rules allow a refused request: the server's busy page.
BUSY = "503+Retry-After"
#: The largest answer read in full; the rest is skipped.
MAX_BODY = 1 << 20

Address = tuple[str, int]


# -- the client ---------------------------------------------------------------


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def outcome(self) -> str:
        if self.status == 503 and "retry-after" in self.headers:
            return BUSY
        return str(self.status)

    @property
    def closes(self) -> bool:
        return self.headers.get("connection", "").lower() == "close"


class Client:
    """
    One HTTP/1.1 connection, from C{source} when given.
    """

    def __init__(
        self, address: Address, source: str | None = None, timeout: float = TIMEOUT
    ) -> None:
        self.socket = socket.create_connection(
            address, timeout=timeout, source_address=(source, 0) if source else None
        )
        self.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._reader = self.socket.makefile("rb")

    def request(self, data: bytes) -> Answer:
        self.socket.sendall(data)
        return self.read_answer()

    def read_answer(self) -> Answer:
        while True:
            line = self._reader.readline(65536)
            if not line:
                raise ConnectionError("closed without an answer")
            status = int(line.split()[1])
            headers: dict[str, str] = {}
            while (line := self._reader.readline(65536)) not in (b"\r\n", b"\n", b""):
                name, _, value = line.decode("latin-1").partition(":")
                headers[name.strip().lower()] = value.strip()
            if status >= 200:
                break
        if status in (204, 304):
            return Answer(status, headers, b"")
        if "chunked" in headers.get("transfer-encoding", "").lower():
            body = b""
            while size := int(self._reader.readline(1024).split(b";")[0], 16):
                body += self._reader.read(size + 2)[:-2][: MAX_BODY - len(body)]
            while self._reader.readline(65536) not in (b"\r\n", b"\n", b""):
                pass
        elif "content-length" in headers:
            body = self._reader.read(int(headers["content-length"]))
        else:
            body = self._reader.read(MAX_BODY)
        return Answer(status, headers, body)

    def close(self) -> None:
        self._reader.close()
        self.socket.close()


def get(path: str, headers: dict[str, str] | None = None) -> bytes:
    lines = [f"GET {path} HTTP/1.1", "Host: soak"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def basic(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


# -- bookkeeping --------------------------------------------------------------


@dataclass
class Tally:
    """
    What one stream got: outcomes counted, and those the rules do not allow.
    """

    name: str
    expected: frozenset[str]
    counts: dict[str, int] = field(default_factory=dict)
    unexpected: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, outcome: str, what: str = "") -> None:
        with self._lock:
            self.counts[outcome] = self.counts.get(outcome, 0) + 1
            if outcome not in self.expected and len(self.unexpected) < 20:
                self.unexpected.append(f"{what}: {outcome}" if what else outcome)

    def line(self) -> str:
        counts = ", ".join(f"{k} x{v}" for k, v in sorted(self.counts.items()))
        text = f"{self.name}: {counts or 'nothing'}"
        if self.notes:
            text += "; " + "; ".join(self.notes)
        return text


def failure(error: BaseException) -> str:
    if isinstance(error, TimeoutError):
        return "no answer (timeout)"
    if isinstance(error, ConnectionError) and str(error) == "closed without an answer":
        return "closed without an answer"
    return type(error).__name__


@dataclass(frozen=True)
class Window:
    """
    When a stream runs: seconds from the start of the phase.
    """

    start: float
    end: float


class Stream:
    """
    Threads that run C{work} from C{window.start} to C{window.end} of the
    phase, or until stopped.
    """

    name = ""

    def __init__(self, address: Address, window: Window, tally: Tally) -> None:
        self.address = address
        self.window = window
        self.tally = tally
        self.stopping = threading.Event()
        self.threads: list[threading.Thread] = []
        self.begun = 0.0

    def start(self, begun: float, threads: int) -> None:
        self.begun = begun
        for index in range(threads):
            thread = threading.Thread(target=self._run, args=(index,), daemon=True)
            thread.start()
            self.threads.append(thread)

    def _run(self, index: int) -> None:
        delay = self.begun + self.window.start - time.monotonic()
        if delay > 0 and self.stopping.wait(delay):
            return
        self.work(index)

    def on(self) -> bool:
        return (
            not self.stopping.is_set()
            and time.monotonic() < self.begun + self.window.end
        )

    def work(self, index: int) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        self.stopping.set()
        for thread in self.threads:
            thread.join(TIMEOUT + 5)

    def pause(self, seconds: float) -> None:
        self.stopping.wait(seconds)


class RequestLoop(Stream):
    """
    Send C{request(index)} over and over on a keep-alive connection
    (a new one when the server closes it), tallying each answer.
    """

    source: str | None = None
    #: Seconds to wait after a refusal, so that the flood is of requests the
    #: server holds, not of 503 answers alone.
    after_refusal = 0.05
    #: Seconds to wait after any answer.
    after_answer = 0.0

    def request(self, index: int) -> bytes:
        raise NotImplementedError

    def source_of(self, index: int) -> str | None:
        return self.source

    def check(self, answer: Answer) -> None:
        pass

    def work(self, index: int) -> None:
        client: Client | None = None
        try:
            while self.on():
                data = self.request(index)
                what = data.split(b"\r\n", 1)[0].decode("latin-1")
                try:
                    if client is None:
                        client = Client(self.address, self.source_of(index))
                    answer = client.request(data)
                except (OSError, ValueError) as error:
                    self.tally.add(failure(error), what)
                    if client is not None:
                        client.close()
                        client = None
                    self.pause(0.2)
                    continue
                self.tally.add(answer.outcome, what)
                self.check(answer)
                if answer.closes:
                    client.close()
                    client = None
                if answer.outcome == BUSY:
                    self.pause(self.after_refusal)
                elif self.after_answer:
                    self.pause(self.after_answer)
        finally:
            if client is not None:
                client.close()


# -- /health while the floods are on ------------------------------------------


class HealthProbe(Stream):
    """
    GET /health every 50 ms on a keep-alive connection opened before the
    floods, timing each answer.
    """

    name = "health probe"

    def __init__(self, address: Address, window: Window, tally: Tally) -> None:
        super().__init__(address, window, tally)
        #: (sent, seconds) from the start of the phase.
        self.samples: list[tuple[float, float]] = []

    def work(self, index: int) -> None:
        client: Client | None = None
        try:
            while self.on():
                sent = time.monotonic()
                try:
                    if client is None:
                        client = Client(self.address)
                    answer = client.request(get("/health"))
                except (OSError, ValueError) as error:
                    self.tally.add(failure(error), "GET /health")
                    if client is not None:
                        client.close()
                        client = None
                    continue
                self.tally.add(answer.outcome, "GET /health")
                self.samples.append((sent - self.begun, time.monotonic() - sent))
                self.pause(0.05)
        finally:
            if client is not None:
                client.close()

    def median_ms(self, window: Window) -> tuple[float, int]:
        taken = [s for t, s in self.samples if window.start <= t < window.end]
        if not taken:
            return float("nan"), 0
        return statistics.median(taken) * 1000, len(taken)


# -- idle flood ---------------------------------------------------------------


class IdleFlood(Stream):
    """
    Open C{count} connections, send nothing, hold them for the window, then
    close them.  A fresh connection sends GET /health a second in; while the
    server holds --max-connections it is not accepted, so it is answered
    only once the idle ones close.
    """

    name = "idle connections"

    def __init__(
        self, address: Address, window: Window, tally: Tally, count: int
    ) -> None:
        super().__init__(address, window, tally)
        self.count = count
        #: How long the fresh connection's /health took, and after the idle
        #: connections closed how long.
        self.fresh_wait: float | None = None
        self.released: float | None = None

    def work(self, index: int) -> None:
        sockets: list[socket.socket] = []
        fresh = threading.Thread(target=self._fresh, daemon=True)
        try:
            for _ in range(self.count):
                if not self.on():
                    break
                try:
                    sockets.append(socket.create_connection(self.address, timeout=5))
                    self.tally.add("opened")
                except OSError as error:
                    self.tally.add(f"connect failed ({type(error).__name__})")
            fresh.start()
            open_sockets = list(sockets)
            while self.on() and open_sockets:
                left = self.begun + self.window.end - time.monotonic()
                readable, _, _ = select.select(open_sockets, [], [], min(left, 0.5))
                for sock in readable:
                    try:
                        data = sock.recv(1024)
                    except OSError:
                        data = b""
                    self.tally.add("closed by the server" if not data else "got data")
                    open_sockets.remove(sock)
            for _ in open_sockets:
                self.tally.add("held to the end")
        finally:
            for sock in sockets:
                sock.close()
            self.released = time.monotonic()
            fresh.join(TIMEOUT + 5)

    def _fresh(self) -> None:
        if self.stopping.wait(1.0):
            return
        sent = time.monotonic()
        try:
            client = Client(self.address)
        except OSError as error:
            self.tally.add(f"fresh connection: {failure(error)}")
            return
        try:
            answer = client.request(get("/health"))
            self.fresh_wait = time.monotonic() - sent
            self.tally.add(f"fresh connection {answer.outcome}")
        except (OSError, ValueError) as error:
            self.tally.add(f"fresh connection: {failure(error)}")
        finally:
            client.close()


# -- slow bodies --------------------------------------------------------------


class SlowBodies(Stream):
    """
    POST /echo announcing 1000 bytes and sending one every 1.5 s, until the
    server answers (408 under the minimum rate).
    """

    name = "slow bodies"
    interval = 1.5

    def __init__(
        self, address: Address, window: Window, tally: Tally, idle_timeout: float
    ) -> None:
        super().__init__(address, window, tally)
        self.idle_timeout = idle_timeout
        self.cut_after: list[float] = []

    def work(self, index: int) -> None:
        head = (
            b"POST /echo HTTP/1.1\r\nHost: soak\r\nContent-Type: text/plain\r\n"
            b"Content-Length: 1000\r\n\r\n"
        )
        # Staggered, so that the bytes do not all arrive at once.
        self.pause(index * self.interval / 4)
        while self.on():
            try:
                client = Client(self.address)
            except OSError as error:
                self.tally.add(failure(error), "POST /echo (slow)")
                self.pause(1.0)
                continue
            try:
                self._one(client, head)
            finally:
                client.close()

    def _one(self, client: Client, head: bytes) -> None:
        started = time.monotonic()
        # Bounded: the rules cut it off after --idle-timeout and a second.
        deadline = started + self.idle_timeout + 20
        try:
            client.socket.sendall(head)
            while time.monotonic() < deadline and not self.stopping.is_set():
                readable, _, _ = select.select([client.socket], [], [], self.interval)
                if readable:
                    answer = client.read_answer()
                    self.tally.add(answer.outcome, "POST /echo (slow)")
                    self.cut_after.append(time.monotonic() - started)
                    return
                try:
                    client.socket.sendall(b"x")
                except OSError:
                    answer = client.read_answer()
                    self.tally.add(answer.outcome, "POST /echo (slow)")
                    self.cut_after.append(time.monotonic() - started)
                    return
        except (OSError, ValueError) as error:
            self.tally.add(failure(error), "POST /echo (slow)")
            return
        if not self.stopping.is_set():
            self.tally.add("never cut off", "POST /echo (slow)")


# -- CGI flood ----------------------------------------------------------------


class CgiFlood(RequestLoop):
    name = "CGI flood"

    def request(self, index: int) -> bytes:
        return get(f"/cgi-bin/hello.py?flood={index}")


# -- wrong passwords ----------------------------------------------------------


class WrongPasswords(RequestLoop):
    name = "wrong passwords"

    def __init__(self, address: Address, window: Window, tally: Tally) -> None:
        super().__init__(address, window, tally)
        self.sent = 0

    def source_of(self, index: int) -> str | None:
        return WRONG_PASSWORD_SOURCES[index % len(WRONG_PASSWORD_SOURCES)]

    def request(self, index: int) -> bytes:
        self.sent += 1
        return get("/private/", basic("bob", f"wrong-{index}-{self.sent}"))


class LoginProbe(Stream):
    """
    Every 1.5 s, a correct Basic login from 127.0.0.1 by a user not checked
    before (so that it is a bcrypt check, not the cache), timed.
    """

    name = "correct logins from 127.0.0.1"

    def __init__(
        self,
        address: Address,
        window: Window,
        tally: Tally,
        users: Callable[[], tuple[str, str] | None],
    ) -> None:
        super().__init__(address, window, tally)
        self.users = users
        self.latencies: list[float] = []

    def work(self, index: int) -> None:
        # The flood gets going first.
        self.pause(1.0)
        while self.on():
            user = self.users()
            if user is None:
                return
            sent = time.monotonic()
            try:
                client = Client(self.address, HOST)
            except OSError as error:
                self.tally.add(failure(error), "GET /private/ (correct)")
                continue
            try:
                answer = client.request(get("/private/", basic(*user)))
                self.tally.add(answer.outcome, "GET /private/ (correct)")
                if answer.status == 200:
                    self.latencies.append(time.monotonic() - sent)
            except (OSError, ValueError) as error:
                self.tally.add(failure(error), "GET /private/ (correct)")
            finally:
                client.close()
            self.pause(1.5)


# -- sessions -----------------------------------------------------------------


class CookielessFlood(RequestLoop):
    name = "cookieless /session"
    after_refusal = 0.0

    def request(self, index: int) -> bytes:
        return get("/session")


VISIT = re.compile(rb"Visit #(\d+)")


class Established(Stream):
    """
    Clients that keep their session cookie: GET /counter every 0.3 s must
    count 1, 2, 3 … with no restart.
    """

    name = "established sessions"

    def __init__(self, address: Address, window: Window, tally: Tally) -> None:
        super().__init__(address, window, tally)
        self.visits: dict[int, int] = {}
        self.restarts: list[str] = []

    def work(self, index: int) -> None:
        cookie: str | None = None
        expected = 1
        client: Client | None = None
        try:
            while self.on():
                headers = {"Cookie": cookie} if cookie else {}
                try:
                    if client is None:
                        client = Client(self.address)
                    answer = client.request(get("/counter", headers))
                except (OSError, ValueError) as error:
                    self.tally.add(failure(error), "GET /counter (with a cookie)")
                    if client is not None:
                        client.close()
                        client = None
                    self.pause(0.3)
                    continue
                self.tally.add(answer.outcome, "GET /counter (with a cookie)")
                found = VISIT.search(answer.body)
                if answer.status == 200 and found:
                    visit = int(found.group(1))
                    if visit != expected:
                        self.restarts.append(
                            f"client {index}: visit #{visit} where #{expected} was due"
                        )
                    expected = visit + 1
                    self.visits[index] = visit
                given = answer.headers.get("set-cookie")
                if given:
                    if cookie is not None:
                        self.restarts.append(f"client {index}: a new cookie")
                    cookie = given.split(";", 1)[0]
                if answer.closes:
                    client.close()
                    client = None
                self.pause(0.3)
        finally:
            if client is not None:
                client.close()


# -- endless upstream ---------------------------------------------------------


class EndlessUpstream:
    """
    A small upstream for --proxy: GET /endless answers with a header block
    that never ends (until the server hangs up, a million lines, or 20 s);
    any other path a small page.  Keep-alive, one thread a connection.
    """

    LINES = 1_000_000
    SECONDS = 20.0

    def __init__(self) -> None:
        self.lines_sent: list[int] = []
        upstream = self

        class Handler(socketserver.StreamRequestHandler):
            timeout = 30

            def handle(self) -> None:
                try:
                    self._serve()
                except (OSError, ValueError):
                    pass  # the server hung up, as it may

            def _serve(self) -> None:
                for _ in range(10_000):
                    line = self.rfile.readline(65536)
                    if not line:
                        return
                    path = line.split()[1] if len(line.split()) > 1 else b"/"
                    length = 0
                    while (header := self.rfile.readline(65536)) not in (
                        b"\r\n",
                        b"\n",
                        b"",
                    ):
                        name, _, value = header.partition(b":")
                        if name.strip().lower() == b"content-length":
                            length = int(value)
                    if length:
                        self.rfile.read(length)
                    if path.endswith(b"/endless"):
                        upstream.endless(self.connection)
                        return
                    body = b"body { color: black; }\n"
                    self.wfile.write(
                        b"HTTP/1.1 200 OK\r\nContent-Type: text/css\r\n"
                        b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
                    )
                    self.wfile.flush()

        class Server(socketserver.ThreadingTCPServer):
            daemon_threads = True
            allow_reuse_address = True
            request_queue_size = 128

        self.server = Server((HOST, 0), Handler)
        self.port = int(self.server.server_address[1])
        self.thread = threading.Thread(
            target=self.server.serve_forever, args=(0.2,), daemon=True
        )

    def endless(self, connection: socket.socket) -> None:
        sent = 0
        deadline = time.monotonic() + self.SECONDS
        try:
            connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n")
            while sent < self.LINES and time.monotonic() < deadline:
                connection.sendall(
                    b"".join(
                        b"X-Endless-%d: %s\r\n" % (sent + n, b"e" * 24)
                        for n in range(100)
                    )
                )
                sent += 100
        except OSError:
            pass
        self.lines_sent.append(sent)

    def __enter__(self) -> EndlessUpstream:
        self.thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(10)


class EndlessHeaders(RequestLoop):
    name = "endless upstream header block"
    after_answer = 0.05

    def request(self, index: int) -> bytes:
        return get("/proxy/endless")
