"""
`make bench`: requests per second and latency of the server, as ratios to a
plain twisted.web server measured in the same run.

Each case starts a fresh server on 127.0.0.1, warms it up, runs wrk with the
same settings as every other case, and stops it.  The table goes to standard
output and, with the raw figures, to bench-results.json.

    python bench/run.py [--seconds 5] [--connections 50] [--only NAME]
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import math
import os
import platform
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import bcrypt

ROOT = Path(__file__).resolve().parent.parent
LISTENING = re.compile(r"listening on (http://[^/\s]+)/")
USER, PASSWORD = "bench", "bench-password"
#: The most Digest requests a second the benchmark has nonce counts for.
DIGEST_RATE = 40_000


@dataclass
class Case:
    name: str
    path: str
    args: list[str] = field(default_factory=list)
    plain: bool = False
    headers: dict[str, str] = field(default_factory=dict)
    #: Called with the base URL once the server is up; returns extra headers.
    prepare: Callable[[str], dict[str, str]] | None = None
    #: Called with the base URL, a scratch directory and the seconds wrk will
    #: run; returns a wrk Lua script (for per-request headers).
    script: Callable[[str, Path, float], Path] | None = None
    #: The case this one's ratio is also reported against.
    versus: str | None = None


@dataclass
class Result:
    name: str
    requests_per_second: float
    p50_ms: float
    p99_ms: float
    errors: int
    ratio_to_plain: float = 0.0
    versus: str | None = None
    ratio_to_versus: float | None = None


def make_fixtures(tmp: Path) -> dict[str, Path]:
    static = tmp / "static"
    static.mkdir()
    (static / "4k.bin").write_bytes(os.urandom(4096))
    (static / "1m.bin").write_bytes(os.urandom(1024 * 1024))
    homes = tmp / "homes"
    public = homes / USER / "public_html"
    public.mkdir(parents=True)
    shutil.copy(static / "4k.bin", public / "4k.bin")
    hashed = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=10)).decode()
    htpasswd = tmp / "users.htpasswd"
    htpasswd.write_text(f"{USER}:{hashed}\n")
    ha1 = hashlib.md5(f"{USER}:app:{PASSWORD}".encode()).hexdigest()
    htdigest = tmp / "users.htdigest"
    htdigest.write_text(f"{USER}:app:{ha1}\n")
    return {
        "static": static,
        "homes": homes,
        "htpasswd": htpasswd,
        "htdigest": htdigest,
    }


def session_cookie(base: str) -> dict[str, str]:
    with urllib.request.urlopen(base + "/session") as response:
        cookie = response.headers["Set-Cookie"].split(";", 1)[0]
    return {"Cookie": cookie}


def digest_script(base: str, tmp: Path, seconds: float) -> Path:
    """
    A wrk script sending a fresh nonce count with every request (each
    (nonce, nc) pair is accepted once), precomputed from one challenge: as
    many as C{seconds} of requests at up to L{DIGEST_RATE} a second.
    """
    uri = "/private/4k.bin"
    try:
        urllib.request.urlopen(base + uri)
    except urllib.error.HTTPError as error:
        challenges = error.headers.get_all("WWW-Authenticate") or []
    challenge = next(c for c in challenges if c.startswith("Digest") and "MD5" in c)
    fields = dict(re.findall(r'(\w+)="?([^",]+)"?', challenge))
    realm, nonce = fields["realm"], fields["nonce"]
    algorithm = fields.get("algorithm", "MD5")
    opaque = fields.get("opaque")
    ha1 = hashlib.md5(f"{USER}:{realm}:{PASSWORD}".encode()).hexdigest()
    ha2 = hashlib.md5(f"GET:{uri}".encode()).hexdigest()
    cnonce = secrets.token_hex(8)
    lines = []
    for count in range(1, math.ceil(max(seconds, 1.0) * DIGEST_RATE) + 1):
        nc = f"{count:08x}"
        answer = hashlib.md5(
            f"{ha1}:{nonce}:{nc}:{cnonce}:auth:{ha2}".encode()
        ).hexdigest()
        header = (
            f'Digest username="{USER}", realm="{realm}", nonce="{nonce}", '
            f'uri="{uri}", algorithm={algorithm}, qop=auth, nc={nc}, '
            f'cnonce="{cnonce}", response="{answer}"'
        )
        if opaque:
            header += f', opaque="{opaque}"'
        lines.append(header)
    listing = tmp / f"digest-{nonce[:16]}.txt"
    listing.write_text("\n".join(lines) + "\n")
    script = tmp / "digest.lua"
    script.write_text(
        "local headers = {}\n"
        f'for line in io.lines("{listing}") do headers[#headers + 1] = line end\n'
        # wrk builds one request at start-up that it never sends: let that
        # one take the last header, so that the counts sent start at 1.
        "local i = -1\n"
        "request = function()\n"
        "  i = i % #headers + 1\n"
        f'  return wrk.format("GET", "{uri}", {{["Authorization"] = headers[i]}})\n'
        "end\n"
    )
    return script


def cases(fixtures: dict[str, Path]) -> list[Case]:
    static = ["--static", str(fixtures["static"])]
    basic = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    guarded = ["--homes", str(fixtures["homes"])]
    return [
        Case("plain twisted.web hello", "/", plain=True),
        Case("/health", "/health"),
        Case("/calendar/2026", "/calendar/2026", versus="/health"),
        Case("/static/ 4 KiB", "/static/4k.bin", static),
        Case("/static/ 1 MiB", "/static/1m.bin", static),
        Case(
            "/private/ Basic (bcrypt)",
            "/private/4k.bin",
            ["--htpasswd", str(fixtures["htpasswd"]), *guarded],
            headers={"Authorization": f"Basic {basic}"},
            versus="/static/ 4 KiB",
        ),
        Case(
            "/private/ Digest",
            "/private/4k.bin",
            ["--htdigest", str(fixtures["htdigest"]), *guarded],
            script=digest_script,
            versus="/static/ 4 KiB",
        ),
        Case(
            "/session with a cookie",
            "/session",
            prepare=session_cookie,
            versus="/health",
        ),
        Case("/session without a cookie", "/session", versus="/health"),
        Case("/wsgi/", "/wsgi/"),
        Case("/health --workers 2", "/health", ["--workers", "2"], versus="/health"),
    ]


def start(case: Case) -> tuple[subprocess.Popen[str], str]:
    if case.plain:
        return start_server([str(ROOT / "bench" / "plain_server.py")])
    return start_server(
        ["-m", "app", "--listen", "tcp:0:interface=127.0.0.1", *case.args]
    )


def start_server(arguments: list[str]) -> tuple[subprocess.Popen[str], str]:
    """
    Run Python with C{arguments}; return the process and the URL of the
    first C{listening on} line it logs.
    """
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
        found = LISTENING.search(line)
        if found:
            # Keep draining the log so the server never blocks on a full pipe.
            threading.Thread(target=process.stdout.read, daemon=True).start()
            return process, found.group(1)
    raise SystemExit(f"{' '.join(arguments)}: the server did not start")


def stop(process: subprocess.Popen[str]) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _ms(text: str) -> float:
    found = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    assert found is not None, text
    number, unit = found.groups()
    return float(number) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[unit]


def wrk(
    url: str,
    seconds: float,
    connections: int,
    headers: dict[str, str],
    script: Path | None,
) -> Result:
    duration = f"-d{max(1, round(seconds))}s"
    command = ["wrk", "-t1", f"-c{connections}", duration, "--latency"]
    for name, value in headers.items():
        command += ["-H", f"{name}: {value}"]
    if script is not None:
        command += ["-s", str(script)]
    output = subprocess.run(
        [*command, url], capture_output=True, text=True, check=True
    ).stdout
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))  # type: ignore[union-attr]
    p50 = _ms(re.search(r"^\s*50%\s+(\S+)", output, re.M).group(1))  # type: ignore[union-attr]
    p99 = _ms(re.search(r"^\s*99%\s+(\S+)", output, re.M).group(1))  # type: ignore[union-attr]
    errors = 0
    found = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    if found:
        errors += int(found.group(1))
    found = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    if found:
        errors += sum(int(n) for n in found.groups())
    return Result("", rate, p50, p99, errors)


def rss_kib(pid: int) -> int:
    """
    The resident set of process C{pid}, in KiB.
    """
    status = Path(f"/proc/{pid}/status").read_text()
    found = re.search(r"VmRSS:\s+(\d+) kB", status)
    return int(found.group(1)) if found else 0


def _requests(output: str) -> int:
    found = re.search(r"(\d+) requests in", output)
    return int(found.group(1)) if found else 0


def flat_memory(rate: float, options: argparse.Namespace) -> dict[str, Any]:
    """
    The resident set of a /health server after about 50 000 requests and
    after about 50 000 more: a server that keeps nothing per request stays
    flat.
    """
    seconds = max(1, math.ceil(50_000 / max(rate, 1.0)))
    process, base = start(Case("/health", "/health"))
    command = ["wrk", "-t1", f"-c{options.connections}", f"-d{seconds}s"]
    try:
        first = _requests(
            subprocess.run(
                [*command, base + "/health"], capture_output=True, text=True
            ).stdout
        )
        after_first = rss_kib(process.pid)
        second = _requests(
            subprocess.run(
                [*command, base + "/health"], capture_output=True, text=True
            ).stdout
        )
        after_second = rss_kib(process.pid)
    finally:
        stop(process)
    return {
        "first_requests": first,
        "after_first_kib": after_first,
        "second_requests": second,
        "after_second_kib": after_second,
        "growth": (after_second - after_first) / after_first if after_first else 0.0,
    }


def ensure_wrk() -> None:
    if shutil.which("wrk"):
        return
    print("installing wrk (Debian package)...", flush=True)
    subprocess.run(["apt-get", "update", "-qq"], check=True)
    subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], check=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--only", action="append", default=[])
    parser.add_argument("--json", default=str(ROOT / "bench-results.json"))
    options = parser.parse_args()
    ensure_wrk()

    results: dict[str, Result] = {}
    with tempfile.TemporaryDirectory() as directory:
        tmp = Path(directory)
        fixtures = make_fixtures(tmp)
        for case in cases(fixtures):
            if (
                options.only
                and not case.plain
                and not any(o in case.name for o in options.only)
            ):
                continue
            process, base = start(case)
            try:
                headers = dict(case.headers)
                if case.prepare is not None:
                    headers.update(case.prepare(base))
                url = base + case.path
                # A fresh script each run: a nonce count is good only once.
                make = case.script
                script = make(base, tmp, options.warmup) if make else None
                wrk(url, options.warmup, options.connections, headers, script)
                script = make(base, tmp, options.seconds) if make else None
                result = wrk(url, options.seconds, options.connections, headers, script)
            finally:
                stop(process)
            result.name = case.name
            result.versus = case.versus
            results[case.name] = result
            print(f"  {case.name}: {result.requests_per_second:.0f} req/s", flush=True)

    memory = None
    if "/health" in results:
        memory = flat_memory(results["/health"].requests_per_second, options)

    plain = next(iter(results.values())).requests_per_second
    for result in results.values():
        result.ratio_to_plain = result.requests_per_second / plain
        if result.versus in results:
            result.ratio_to_versus = (
                result.requests_per_second / results[result.versus].requests_per_second
            )

    print()
    columns = ("req/s", "p50 ms", "p99 ms", "errors", "x plain")
    print(f"{'case':28} " + " ".join(f"{c:>8}" for c in columns) + "  vs")
    for r in results.values():
        versus = (
            f"{r.ratio_to_versus:.2f}x {r.versus}"
            if r.ratio_to_versus is not None
            else ""
        )
        print(
            f"{r.name:28} {r.requests_per_second:8.0f} {r.p50_ms:8.2f} {r.p99_ms:8.2f} "
            f"{r.errors:8d} {r.ratio_to_plain:8.2f}  {versus}"
        )
    if memory is not None:
        print(
            f"\nmemory, /health: RSS {memory['after_first_kib']} KiB after "
            f"{memory['first_requests']} requests, {memory['after_second_kib']} KiB "
            f"after {memory['second_requests']} more ({memory['growth']:+.1%})"
        )
    report = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": (
            f"{platform.machine()}, {os.cpu_count()} cores, "
            f"Python {platform.python_version()}"
        ),
        "settings": {
            "threads": 1,
            "connections": options.connections,
            "seconds": options.seconds,
        },
        "results": [vars(r) for r in results.values()],
        "memory": memory,
    }
    Path(options.json).write_text(json.dumps(report, indent=2) + "\n")
    print(f"\n{report['machine']}; {report['date']}; written to {options.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
