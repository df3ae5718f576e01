"""
`make soak`: a long mixed load over every area of the site, with hostile
requests alongside, then a graceful stop under load.

  1. Start the demo server (users, homes, proxy to its own /static/).
  2. For SECONDS (60), wrk keeps 50 connections busy with a mix of pages
     that all answer 2xx or 3xx, while a second client sends hostile
     requests (traversal, bad ranges, broken framing, bad credentials, huge
     headers, garbage) and checks that each gets a 4xx answer or a clean
     close, never a 5xx or a hang.
  3. The server's resident set is read after warm-up and at the end.
  4. Twenty clients keep requesting /delayed?seconds=0.3; the server gets
     SIGTERM; every request must either complete or never have been
     accepted (connection refused), and the server must exit 0.

It prints what it saw and exits non-zero if any check failed.

    python bench/soak.py [--seconds 60] [--connections 50]
"""

from __future__ import annotations

import argparse
import base64
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from run import ROOT, ensure_wrk, rss_kib, start_server

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
WARM_UP_SECONDS = 15

SLOW_REQUEST = (
    b"GET /delayed?seconds=0.3 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
)


@dataclass
class Findings:
    problems: list[str] = field(default_factory=list)
    hostile_sent: int = 0

    def fail(self, text: str) -> None:
        self.problems.append(text)
        print("PROBLEM:", text, flush=True)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def start_soaked_server(port: int) -> subprocess.Popen[str]:
    process, _ = start_server(
        [
            "-m",
            "app",
            "--listen",
            f"tcp:{port}:interface=127.0.0.1",
            "--htpasswd",
            str(DEMO / "users.htpasswd"),
            "--htdigest",
            str(DEMO / "users.htdigest"),
            "--homes",
            str(DEMO / "homes"),
            "--proxy",
            f"http://127.0.0.1:{port}/static/",
            # Every /session and /counter request of the mix makes a session:
            # a small bound makes their memory level off during the warm-up.
            "--max-sessions",
            "1000",
        ]
    )
    return process


def lua_script(directory: Path) -> Path:
    def quoted(text: str) -> str:
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'

    entries = []
    for method, path, headers, body in MIX:
        header_table = ", ".join(
            f"[{quoted(k)}] = {quoted(v)}" for k, v in headers.items()
        )
        entries.append(
            f"wrk.format({quoted(method)}, {quoted(path)}, {{{header_table}}}, "
            f"{quoted(body) if body else 'nil'})"
        )
    script = directory / "mix.lua"
    script.write_text(
        "local requests = {}\n"
        "init = function(args)\n"
        + "".join(f"  requests[#requests + 1] = {entry}\n" for entry in entries)
        + "end\n"
        "local i = 0\n"
        "request = function()\n"
        "  i = i % #requests + 1\n"
        "  return requests[i]\n"
        "end\n"
    )
    return script


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
            answer = exchange(port, data)
        except TimeoutError:
            findings.fail(f"hostile request {index % len(HOSTILE)} hung")
            continue
        except OSError as error:
            findings.fail(f"hostile request {index % len(HOSTILE)}: {error}")
            continue
        findings.hostile_sent += 1
        if answer:
            status = int(answer.split(b" ", 2)[1])
            if status >= 500:
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--connections", type=int, default=50)
    options = parser.parse_args()
    ensure_wrk()
    findings = Findings()
    port = free_port()
    process = start_soaked_server(port)
    try:
        with tempfile.TemporaryDirectory() as directory:
            script = lua_script(Path(directory))
            # Warm up with both streams until what is bounded has filled:
            # --max-sessions sessions, the thread pools, the buffers of the
            # largest hostile requests.  Growth after that would be a leak.
            warming = threading.Event()
            warm_hostile = threading.Thread(
                target=hostile_stream, args=(port, warming, Findings())
            )
            warm_hostile.start()
            load(port, WARM_UP_SECONDS, options.connections, script)
            warming.set()
            warm_hostile.join(timeout=30)
            rss_start = rss_kib(process.pid)
            stop = threading.Event()
            hostile = threading.Thread(
                target=hostile_stream, args=(port, stop, findings)
            )
            hostile.start()
            output = load(port, options.seconds, options.connections, script)
            stop.set()
            hostile.join(timeout=30)
            rss_end = rss_kib(process.pid)
        print(output, flush=True)
        rate = re.search(r"Requests/sec:\s+([\d.]+)", output)
        p99 = re.search(r"^\s*99%\s+(\S+)", output, re.M)
        non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
        socket_errors = re.search(r"Socket errors: (.*)", output)
        growth = (rss_end - rss_start) / rss_start if rss_start else 0.0
        print(
            f"mixed load: {rate.group(1) if rate else '?'} req/s, "
            f"p99 {p99.group(1) if p99 else '?'}, "
            f"unexpected statuses {non_2xx.group(1) if non_2xx else 0}, "
            f"socket errors: {socket_errors.group(1) if socket_errors else 'none'}",
            flush=True,
        )
        print(f"hostile requests sent: {findings.hostile_sent}", flush=True)
        print(
            f"resident set: {rss_start} KiB after warm-up, {rss_end} KiB at the end "
            f"({growth:+.1%})",
            flush=True,
        )
        if non_2xx:
            findings.fail(f"{non_2xx.group(1)} unexpected statuses under load")
        if socket_errors:
            findings.fail(f"socket errors under load: {socket_errors.group(1)}")
        if growth >= 0.10:
            findings.fail(f"the resident set grew {growth:.1%}")
        graceful_stop(process, port, findings)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    if findings.problems:
        print(f"\nsoak FAILED: {len(findings.problems)} problem(s)")
        return 1
    print("\nsoak passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
