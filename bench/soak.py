"""
`make soak`: a long mixed load over every area of the site, with hostile
requests alongside, then a graceful stop under load.

  1. Start the demo server (the demo's users and homes plus a few users for
     timing logins, /proxy/ to a small upstream of the soak's own) with
     modest limits: --max-connections 256, --cgi-max 8, --idle-timeout 10.
  2. For SECONDS (60), wrk keeps 50 connections busy with a mix of pages
     that answer 2xx or 3xx (CGI, /private/ and /wsgi/ on connections of
     their own, which may also be refused with 503 and Retry-After), while
     a second client sends hostile requests (traversal, bad ranges, broken
     framing, bad credentials, huge headers, garbage) and checks that each
     gets a 4xx answer (or 503 with Retry-After for a password check) or a
     clean close, never another 5xx or a hang.  Beside them run the hostile
     streams of bench/soak_streams.py, each checked against the answers
     the rules allow it (SPEC §12): idle connections past the cap, slow
     bodies (408), a CGI flood (200 or 503), wrong passwords from
     127.0.0.2 and 127.0.0.3 (401 or 503) while correct logins from
     127.0.0.1 are timed, cookieless /session requests while clients with
     cookies check that /counter keeps counting, and an upstream with an
     endless header block (502).  /health is timed throughout.
  3. The server's resident set is read after warm-up (the same load and
     streams, shorter) and at the end; its log must hold no traceback.
  4. Twenty clients keep requesting /delayed?seconds=0.3; the server gets
     SIGTERM; every request must either complete or never have been
     accepted (connection refused), and the server must exit 0.

It prints what it saw and exits non-zero if any check failed.

    python bench/soak.py [--seconds 60] [--connections 50]
"""

from __future__ import annotations

import argparse
import base64
import os
import re
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import bcrypt
import soak_streams as streams
from run import LISTENING, ROOT, ensure_tools, rss_kib
from soak_streams import BUSY, Tally, Window

DEMO = ROOT / "app" / "demo"
AUTH = "Basic " + base64.b64encode(b"alice:wonderland").decode()

#: The load mix: (method, path, headers, body); every answer is 2xx or 3xx.
MIX: list[tuple[str, str, dict[str, str], str]] = [
    ("GET", "/", {}, ""),
    ("GET", "/health", {}, ""),
    ("GET", "/clock", {}, ""),
    ("GET", "/calendar/2026", {}, ""),
    ("GET", "/form", {}, ""),
    (
        "POST",
        "/form",
        {"Content-Type": "application/x-www-form-urlencoded"},
        "the-field=soak",
    ),
    ("PUT", "/echo", {"Content-Type": "text/plain"}, "soak body"),
    ("GET", "/delayed?seconds=0", {}, ""),
    ("GET", "/static/", {}, ""),
    ("GET", "/static/style.css", {}, ""),
    ("GET", "/static/dot.png", {"Range": "bytes=0-9"}, ""),
    ("GET", "/static", {}, ""),
    ("GET", "/wsgi/soak/path", {}, ""),
    ("GET", "/session", {}, ""),
    ("GET", "/counter", {}, ""),
    ("GET", "/private/", {"Authorization": AUTH}, ""),
    ("GET", "/proxy/style.css", {}, ""),
    ("GET", "/cgi-bin/env.py/soak?x=1", {}, ""),
]

#: Paths of the mix the rules let the server refuse under load with 503 and
#: Retry-After (CGI slots, password checks, WSGI threads): wrk sends them
#: on connections of their own, whose answers are counted by status.
GUARDED = ("/cgi-bin/", "/private/", "/wsgi/")

#: The server's limits in the soak: small enough for the streams to reach.
MAX_CONNECTIONS = 256
CGI_MAX = 8
IDLE_TIMEOUT = 10.0
#: Idle connections opened by the idle flood: past MAX_CONNECTIONS.
IDLE_CONNECTIONS = 300
#: Users whose first login is timed (each login a real bcrypt check).
LOGIN_USERS = 24

#: Hostile requests: raw bytes, and the status range that is acceptable
#: (None: the server may also just close the connection).
HOSTILE: list[bytes] = [
    b"GET /static/../../etc/passwd HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /static/%2e%2e/%2e%2e/etc/passwd HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /static/..%2f..%2fetc/passwd HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /static/.hidden HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /static/dot.png HTTP/1.1\r\nHost: x\r\nRange: bytes=-1000000\r\n\r\n",
    b"GET /static/dot.png HTTP/1.1\r\nHost: x\r\nRange: bytes="
    + b",".join([b"0-0"] * 2000)
    + b"\r\n\r\n",
    b"GET /static/dot.png HTTP/1.1\r\nHost: x\r\nRange: bytes=9999-99999\r\n\r\n",
    b"GET /private/ HTTP/1.1\r\nHost: x\r\nAuthorization: Basic !!!\r\n\r\n",
    b"GET /private/ HTTP/1.1\r\nHost: x\r\nAuthorization: Digest nonce=\r\n\r\n",
    b"GET /private/ HTTP/1.1\r\nHost: x\r\nAuthorization: Basic "
    + base64.b64encode(b"alice:" + b"x" * 5000)
    + b"\r\n\r\n",
    b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
    b"Content-Length: 6\r\n\r\nhello",
    b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
    b"Content-Length: 3\r\n\r\n0\r\n\r\n",
    b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999\r\n\r\n",
    b"GET /" + b"a" * 20000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * 30000 + b"\r\n\r\n",
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03garbage\r\n\r\n",
    b"GET /calendar/99999999999999999999 HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /delayed?seconds=nan HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /cgi-bin/../../../bin/sh HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /proxy/%2e%2e/%2e%2e/ HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /session HTTP/1.1\r\nHost: x\r\nCookie: app_session="
    + b"\xff" * 300
    + b"\r\n\r\n",
    b"GET /%ff%fe HTTP/1.1\r\nHost: \xff\r\n\r\n",
]


#: Long enough for the mix to fill --max-sessions (1000) at ~1 000 req/s.
#: Long enough for the mix to fill --max-sessions (1000) at ~1 000 req/s.
WARM_UP_SECONDS = 15

SLOW_REQUEST = (
    b"GET /delayed?seconds=0.3 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
)

#: Server log lines worth showing: a traceback or an error.
SUSPECT = re.compile(r"Traceback|Unhandled|CRITICAL|\bError\b|\b500\b")


@dataclass
class Findings:
    problems: list[str] = field(default_factory=list)
    hostile_sent: int = 0
    hostile_busy: int = 0

    def fail(self, text: str) -> None:
        self.problems.append(text)
        print("PROBLEM:", text, flush=True)


class ServerLog:
    """
    The server's log, drained from its pipe: the last lines, and every
    suspect one (up to a bound).
    """

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.lines = 0
        self.last: deque[str] = deque(maxlen=50)
        self.suspect: list[str] = []
        self.tracebacks = 0
        self._process = process
        self._thread = threading.Thread(target=self._drain, daemon=True)
        self._thread.start()

    def _drain(self) -> None:
        assert self._process.stdout is not None
        for line in self._process.stdout:
            self.lines += 1
            self.last.append(line.rstrip())
            if "Traceback" in line:
                self.tracebacks += 1
            if SUSPECT.search(line) and len(self.suspect) < 40:
                self.suspect.append(line.rstrip())


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def make_fixtures(tmp: Path) -> tuple[dict[str, Path], list[tuple[str, str]]]:
    """
    The demo's users and homes, plus LOGIN_USERS users of their own (same
    bcrypt cost as the demo's) whose first login is timed.
    """
    homes = tmp / "homes"
    shutil.copytree(DEMO / "homes", homes)
    users = [(f"soaklogin{n}", secrets.token_urlsafe(12)) for n in range(LOGIN_USERS)]
    lines = (DEMO / "users.htpasswd").read_text().splitlines()
    for name, password in users:
        hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=10)).decode()
        lines.append(f"{name}:{hashed}")
        public = homes / name / "public_html"
        public.mkdir(parents=True)
        (public / "index.html").write_text(f"<p>{name}</p>\n")
    htpasswd = tmp / "users.htpasswd"
    htpasswd.write_text("\n".join(lines) + "\n")
    os.chmod(htpasswd, 0o600)
    return {"htpasswd": htpasswd, "homes": homes}, users


def start_soaked_server(
    port: int, fixtures: dict[str, Path], upstream_port: int
) -> tuple[subprocess.Popen[str], ServerLog]:
    arguments = [
        "-m",
        "app",
        "--listen",
        f"tcp:{port}:interface=127.0.0.1",
        "--htpasswd",
        str(fixtures["htpasswd"]),
        "--htdigest",
        str(DEMO / "users.htdigest"),
        "--homes",
        str(fixtures["homes"]),
        "--proxy",
        f"http://127.0.0.1:{upstream_port}/",
        # Every /session and /counter request of the mix makes a session:
        # a small bound makes their memory level off during the warm-up.
        "--max-sessions",
        "1000",
        "--max-connections",
        str(MAX_CONNECTIONS),
        "--cgi-max",
        str(CGI_MAX),
        "--idle-timeout",
        str(IDLE_TIMEOUT),
    ]
    process = subprocess.Popen(
        [sys.executable, *arguments],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=dict(os.environ, PYTHONUNBUFFERED="1"),
    )
    assert process.stdout is not None
    for line in process.stdout:
        if LISTENING.search(line):
            return process, ServerLog(process)
    process.wait(timeout=10)
    raise SystemExit("the soaked server did not start")


def guarded(path: str) -> bool:
    return path.startswith(GUARDED)


def lua_script(
    directory: Path, name: str, mix: list[tuple[str, str, dict[str, str], str]]
) -> Path:
    """
    A wrk script sending C{mix} in turn, counting the answers by status
    (503 with Retry-After apart) and printing them at the end.
    """

    def quoted(text: str) -> str:
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'

    entries = []
    for method, path, headers, body in mix:
        header_table = ", ".join(
            f"[{quoted(k)}] = {quoted(v)}" for k, v in headers.items()
        )
        entries.append(
            f"wrk.format({quoted(method)}, {quoted(path)}, {{{header_table}}}, "
            f"{quoted(body) if body else 'nil'})"
        )
    script = directory / f"{name}.lua"
    script.write_text(
        "local requests = {}\n"
        "local threads = {}\n"
        "statuses = {}\n"
        "setup = function(thread) threads[#threads + 1] = thread end\n"
        "init = function(args)\n"
        + "".join(f"  requests[#requests + 1] = {entry}\n" for entry in entries)
        + "end\n"
        "local i = 0\n"
        "request = function()\n"
        "  i = i % #requests + 1\n"
        "  return requests[i]\n"
        "end\n"
        "response = function(status, headers, body)\n"
        "  local key = tostring(status)\n"
        "  if status == 503 then\n"
        "    for name, _ in pairs(headers) do\n"
        f'      if string.lower(name) == "retry-after" then key = "{BUSY}" end\n'
        "    end\n"
        "  end\n"
        "  statuses[key] = (statuses[key] or 0) + 1\n"
        "end\n"
        "done = function(summary, latency, requests)\n"
        "  local total = {}\n"
        "  for _, thread in ipairs(threads) do\n"
        '    for key, count in pairs(thread:get("statuses")) do\n'
        "      total[key] = (total[key] or 0) + count\n"
        "    end\n"
        "  end\n"
        '  local text = "statuses:"\n'
        "  for key, count in pairs(total) do\n"
        '    text = text .. " " .. key .. "=" .. count\n'
        "  end\n"
        "  print(text)\n"
        "end\n"
    )
    return script


def statuses(output: str) -> dict[str, int]:
    found = re.search(r"^statuses:(.*)$", output, re.M)
    if not found:
        return {}
    pairs = (item.rsplit("=", 1) for item in found.group(1).split())
    return {key: int(count) for key, count in pairs}


def exchange(port: int, data: bytes, timeout: float = 10.0) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as client:
        try:
            client.sendall(data)
        except OSError:
            pass  # the server may answer and close before reading it all
        received = b""
        try:
            while chunk := client.recv(65536):
                received += chunk
                if b"\r\n\r\n" in received and received.startswith(b"HTTP/1.1 "):
                    break
        except ConnectionResetError:
            pass
        return received


def hostile_stream(port: int, stop: threading.Event, findings: Findings) -> None:
    index = 0
    while not stop.is_set():
        data = HOSTILE[index % len(HOSTILE)]
        index += 1
        try:
            # Long enough to wait out the idle flood in the backlog.
            answer = exchange(port, data, timeout=streams.TIMEOUT)
        except TimeoutError:
            findings.fail(f"hostile request {index % len(HOSTILE)} hung")
            continue
        except OSError as error:
            findings.fail(f"hostile request {index % len(HOSTILE)}: {error}")
            continue
        findings.hostile_sent += 1
        if answer:
            head = answer.split(b"\r\n\r\n", 1)[0].lower()
            status = int(answer.split(b" ", 2)[1])
            # A password check may be refused while the bcrypt queue is full.
            busy = (
                status == 503
                and b"\r\nretry-after:" in head
                and data.startswith(b"GET /private/")
            )
            if busy:
                findings.hostile_busy += 1
            elif status >= 500:
                findings.fail(f"hostile request {index % len(HOSTILE)} got {status}")


def load(port: int, seconds: float, connections: int, script: Path) -> str:
    command = [
        "wrk",
        "-t1",
        f"-c{connections}",
        f"-d{max(1, round(seconds))}s",
        "--latency",
        "--timeout",
        "10s",
        "-s",
        str(script),
        f"http://127.0.0.1:{port}",
    ]
    return subprocess.run(command, capture_output=True, text=True, check=True).stdout


class Hostile:
    """
    Every hostile stream of one phase of C{seconds}, on their windows.
    """

    def __init__(self, port: int, seconds: float, users: list[tuple[str, str]]) -> None:
        address = ("127.0.0.1", port)
        self.seconds = seconds
        whole = Window(0.0, seconds)
        self.cgi_window = Window(0.10 * seconds, 0.40 * seconds)
        idle_start = 0.15 * seconds
        self.idle_window = Window(
            idle_start, idle_start + min(0.25 * seconds, IDLE_TIMEOUT - 2)
        )
        self.password_window = Window(0.50 * seconds, 0.85 * seconds)
        self.quiet_window = Window(0.0, self.cgi_window.start)
        ok = frozenset({"200"})
        self.users = users
        self.health = streams.HealthProbe(address, whole, Tally("GET /health", ok))
        self.idle = streams.IdleFlood(
            address,
            self.idle_window,
            Tally(
                "idle connections",
                frozenset({"opened", "held to the end", "fresh connection 200"}),
            ),
            IDLE_CONNECTIONS,
        )
        self.slow = streams.SlowBodies(
            address,
            whole,
            Tally("slow bodies (POST /echo, 1 byte / 1.5 s)", frozenset({"408"})),
            IDLE_TIMEOUT,
        )
        self.cgi = streams.CgiFlood(
            address,
            self.cgi_window,
            Tally("CGI flood (GET /cgi-bin/hello.py)", frozenset({"200", BUSY})),
        )
        self.wrong = streams.WrongPasswords(
            address,
            self.password_window,
            Tally(
                "wrong passwords from 127.0.0.2, 127.0.0.3 (GET /private/)",
                frozenset({"401", BUSY}),
            ),
        )
        self.login = streams.LoginProbe(
            address,
            self.password_window,
            Tally("correct logins from 127.0.0.1 (GET /private/)", ok),
            self._next_user,
        )
        self.cookieless = streams.CookielessFlood(
            address,
            Window(1.0, seconds),
            Tally("cookieless GET /session flood", ok),
        )
        self.established = streams.Established(
            address, whole, Tally("established sessions (GET /counter)", ok)
        )
        self.endless = streams.EndlessHeaders(
            address,
            whole,
            Tally(
                "endless upstream header block (GET /proxy/endless)", frozenset({"502"})
            ),
        )
        self.started: list[tuple[streams.Stream, int]] = [
            (self.health, 1),
            (self.idle, 1),
            (self.slow, 3),
            (self.cgi, CGI_MAX + 64 + 48),
            (self.wrong, 8 * len(streams.WRONG_PASSWORD_SOURCES)),
            (self.login, 1),
            (self.established, 4),
            (self.cookieless, 3),
            (self.endless, 2),
        ]
        self._lock = threading.Lock()

    def _next_user(self) -> tuple[str, str] | None:
        with self._lock:
            return self.users.pop() if self.users else None

    def start(self) -> None:
        begun = time.monotonic()
        for stream, threads in self.started:
            stream.start(begun, threads)

    def stop(self) -> None:
        for stream, _ in self.started:
            stream.stopping.set()
        for stream, _ in self.started:
            stream.stop()

    def report(self, findings: Findings, upstream: streams.EndlessUpstream) -> None:
        """
        Print what each stream got, the figures beside their goals, and fail
        what the rules do not allow.
        """
        for stream, _ in self.started:
            tally = stream.tally
            if stream is self.slow and self.slow.cut_after:
                cut = sorted(self.slow.cut_after)
                tally.notes.append(
                    f"cut off after {cut[0]:.1f} to {cut[-1]:.1f} s "
                    f"from connecting (--idle-timeout {IDLE_TIMEOUT:g}; one "
                    "opened during the idle flood first waits in the backlog)"
                )
            if stream is self.endless and upstream.lines_sent:
                sent = sorted(upstream.lines_sent)
                tally.notes.append(
                    f"upstream wrote {sent[0]} to {sent[-1]} header lines "
                    "before the server hung up"
                )
            if stream is self.idle and self.idle.fresh_wait is not None:
                tally.notes.append(
                    f"a fresh connection's /health took {self.idle.fresh_wait:.1f} s"
                )
            print(f"  {tally.line()}", flush=True)
            for text in tally.unexpected:
                findings.fail(f"{tally.name}: unexpected {text}")
        self._report_idle(findings)
        self._report_health()
        self._report_login()
        self._report_sessions(findings)

    def _report_idle(self, findings: Findings) -> None:
        counts = self.idle.tally.counts
        if counts.get("opened", 0) < IDLE_CONNECTIONS:
            findings.fail(
                f"idle flood: only {counts.get('opened', 0)} of "
                f"{IDLE_CONNECTIONS} connections opened"
            )
        wait = self.idle.fresh_wait
        # Opened a second into the window, it is answered only once the idle
        # connections close at its end, if the server stopped accepting.
        held = self.idle_window.end - self.idle_window.start - 1.0
        if wait is None:
            findings.fail("idle flood: the fresh connection got no answer")
        elif wait < held - 1.0:
            findings.fail(
                f"idle flood: a fresh connection was answered after {wait:.1f} s "
                f"with {IDLE_CONNECTIONS} idle ones open: --max-connections "
                f"{MAX_CONNECTIONS} was not reached"
            )
        else:
            print(
                f"  idle flood: --max-connections {MAX_CONNECTIONS} reached; a "
                f"fresh connection waited {wait:.1f} s in the backlog until the "
                "idle ones closed",
                flush=True,
            )

    def _report_health(self) -> None:
        for label, window in [
            ("before the floods", self.quiet_window),
            (
                "CGI flood alone",
                Window(self.cgi_window.start, self.idle_window.start),
            ),
            ("CGI flood and idle connections", self.idle_window),
            ("wrong-password flood", self.password_window),
        ]:
            median, count = self.health.median_ms(window)
            goal = "" if label == "before the floods" else "  (goal < 100 ms)"
            print(
                f"  /health median latency, {label}: {median:.1f} ms "
                f"over {count} requests{goal}",
                flush=True,
            )

    def _report_login(self) -> None:
        latencies = self.login.latencies
        if latencies:
            print(
                f"  correct Basic login from 127.0.0.1 during the wrong-password "
                f"flood: median {statistics.median(latencies):.2f} s, worst "
                f"{max(latencies):.2f} s over {len(latencies)} logins (goal < 2 s)",
                flush=True,
            )
        else:
            print("  correct Basic login: none answered 200", flush=True)

    def _report_sessions(self, findings: Findings) -> None:
        visits = self.established.visits
        restarts = self.established.restarts
        kept = not restarts and len(visits) == 4 and min(visits.values()) > 1
        print(
            f"  established sessions kept counting: {'yes' if kept else 'NO'} "
            f"(visits reached: {sorted(visits.values())})",
            flush=True,
        )
        for text in restarts[:10]:
            findings.fail(f"established session lost: {text}")
        if not kept and not restarts:
            findings.fail(f"established sessions did not count: {visits}")


def run_phase(
    port: int,
    seconds: float,
    connections: int,
    scripts: tuple[Path, Path],
    users: list[tuple[str, str]],
    findings: Findings,
) -> tuple[str, str, Hostile]:
    """
    The mixed load on wrk's two connection sets, the hostile requests and
    the hostile streams, all for C{seconds}.
    """
    stop = threading.Event()
    hostile = threading.Thread(target=hostile_stream, args=(port, stop, findings))
    streams_ = Hostile(port, seconds, users)
    guarded_connections = max(2, connections // 6)
    outputs: dict[str, str] = {}

    def guarded_load() -> None:
        outputs["guarded"] = load(port, seconds, guarded_connections, scripts[1])

    guarded_thread = threading.Thread(target=guarded_load)
    hostile.start()
    streams_.start()
    guarded_thread.start()
    try:
        steady = load(port, seconds, connections - guarded_connections, scripts[0])
    finally:
        guarded_thread.join(timeout=seconds + 60)
        stop.set()
        streams_.stop()
        hostile.join(timeout=streams.TIMEOUT + 5)
    return steady, outputs.get("guarded", ""), streams_


def graceful_stop(
    process: subprocess.Popen[str], port: int, findings: Findings
) -> None:
    """
    SIGTERM under load: every request completes or was never accepted.
    """
    outcomes: list[str] = []
    lock = threading.Lock()
    stop_sending = threading.Event()

    def client() -> None:
        while not stop_sending.is_set():
            try:
                answer = exchange(port, SLOW_REQUEST)
            except ConnectionRefusedError:
                outcome = "refused"
            except OSError as error:
                outcome = f"error {error}"
            else:
                if answer.startswith(b"HTTP/1.1 200"):
                    outcome = "completed"
                elif answer == b"":
                    outcome = "closed without an answer"
                else:
                    outcome = "answered " + answer[:20].decode("latin-1")
            with lock:
                outcomes.append(outcome)
            if outcome == "refused":
                return

    threads = [threading.Thread(target=client) for _ in range(20)]
    for thread in threads:
        thread.start()
    time.sleep(1.0)
    process.send_signal(signal.SIGTERM)
    status = process.wait(timeout=30)
    stop_sending.set()
    for thread in threads:
        thread.join(timeout=30)
    counts: dict[str, int] = {}
    for outcome in outcomes:
        counts[outcome] = counts.get(outcome, 0) + 1
    print(f"graceful stop: exit status {status}; requests: {counts}", flush=True)
    if status != 0:
        findings.fail(f"the server exited with status {status}")
    lost = {k: v for k, v in counts.items() if k not in ("completed", "refused")}
    if lost:
        findings.fail(f"requests lost at stop: {lost}")
    if counts.get("completed", 0) == 0:
        findings.fail("no request completed during the stop")


def report_load(steady: str, guarded_output: str, findings: Findings) -> None:
    print(steady, flush=True)
    rate = re.search(r"Requests/sec:\s+([\d.]+)", steady)
    p99 = re.search(r"^\s*99%\s+(\S+)", steady, re.M)
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", steady)
    print(
        f"mixed load: {rate.group(1) if rate else '?'} req/s, "
        f"p99 {p99.group(1) if p99 else '?'}; by status: {statuses(steady)}",
        flush=True,
    )
    if non_2xx:
        findings.fail(f"{non_2xx.group(1)} unexpected statuses under load")
    guarded_statuses = statuses(guarded_output)
    guarded_rate = re.search(r"Requests/sec:\s+([\d.]+)", guarded_output)
    print(
        f"mixed load on {', '.join(GUARDED)}: "
        f"{guarded_rate.group(1) if guarded_rate else '?'} req/s; "
        f"by status: {guarded_statuses}",
        flush=True,
    )
    if not guarded_statuses:
        findings.fail("no answers counted for the guarded part of the mix")
    unexpected = {
        key: count
        for key, count in guarded_statuses.items()
        if key != BUSY and not 200 <= int(key) < 400
    }
    if unexpected:
        findings.fail(f"unexpected statuses on {', '.join(GUARDED)}: {unexpected}")
    for name, output in (("mix", steady), ("guarded mix", guarded_output)):
        socket_errors = re.search(r"Socket errors: (.*)", output)
        if socket_errors:
            findings.fail(
                f"socket errors under load ({name}): {socket_errors.group(1)}"
            )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--connections", type=int, default=50)
    options = parser.parse_args()
    ensure_tools()
    findings = Findings()
    port = free_port()
    with tempfile.TemporaryDirectory() as directory, streams.EndlessUpstream() as up:
        tmp = Path(directory)
        fixtures, users = make_fixtures(tmp)
        process, log = start_soaked_server(port, fixtures, up.port)
        try:
            mix = [entry for entry in MIX if not guarded(entry[1])]
            scripts = (
                lua_script(tmp, "mix", mix),
                lua_script(tmp, "guarded", [e for e in MIX if guarded(e[1])]),
            )
            # Warm up with everything until what is bounded has filled:
            # --max-sessions sessions, the thread pools, the queues, the
            # buffers of the largest hostile requests and of the streams.
            # Growth after that would be a leak.
            print(f"warming up for {WARM_UP_SECONDS} s...", flush=True)
            run_phase(
                port, WARM_UP_SECONDS, options.connections, scripts, users, Findings()
            )
            rss_start = rss_kib(process.pid)
            print(f"soaking for {options.seconds:g} s...", flush=True)
            steady, guarded_output, hostile = run_phase(
                port, options.seconds, options.connections, scripts, users, findings
            )
            rss_end = rss_kib(process.pid)
            report_load(steady, guarded_output, findings)
            print(
                f"hostile requests sent: {findings.hostile_sent} "
                f"({findings.hostile_busy} password checks refused with 503)",
                flush=True,
            )
            print("hostile streams:", flush=True)
            hostile.report(findings, up)
            growth = (rss_end - rss_start) / rss_start if rss_start else 0.0
            print(
                f"resident set: {rss_start} KiB after warm-up, {rss_end} KiB at "
                f"the end ({growth:+.1%})",
                flush=True,
            )
            if growth >= 0.10:
                findings.fail(f"the resident set grew {growth:.1%}")
            graceful_stop(process, port, findings)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
        print(
            f"server log: {log.lines} lines, {log.tracebacks} tracebacks",
            flush=True,
        )
        for line in log.suspect:
            print(f"  {line}", flush=True)
        if log.tracebacks:
            findings.fail(f"{log.tracebacks} tracebacks in the server log")
    if findings.problems:
        print(f"\nsoak FAILED: {len(findings.problems)} problem(s)")
        return 1
    print("\nsoak passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
