"""
`make bench`: requests per second and latency of the server, as ratios to a
plain twisted.web server measured in the same run, and what hostile clients
cost it.

Each wrk case starts a fresh server on 127.0.0.1, warms it up, runs wrk with
the same settings as every other case, and stops it.  Two peers are measured
the same way, from the bench's own environment (.venv-bench/, made by `make
bench` from bench/requirements.txt, never the project's dependencies), and
/health is reported as a ratio to each: an aiohttp hello (one process,
default settings) and a Starlette hello on uvicorn (one worker, httptools
and uvloop, access log off).  The peers are scripts in bench/peers/.

The hostile cases (bench/hostile.py) are figures printed beside their goals,
never pass or fail; each runs for --seconds, on loopback, and stops by
itself:

  - 1 MiB form body: how long the reactor is held by a 1 MiB POST to /form,
    for three urlencoded shapes (one field, all '&', 'a=1&' repeated) and
    three multipart ones (one part, many tiny parts, one part of '\r\n--'
    repeated), with --max-body 2097152.  A probe connection sends GET
    /health back to back while another uploads the body; the figure is the
    worst /health latency from the start of the upload to 100 ms after its
    answer, less the median before it.
  - one-byte-chunk flood: four connections send POST /echo with chunked
    bodies of one-byte chunks as fast as they can while the probe runs; the
    figures are the probe's median and 99th-percentile latency.
  - pipelining without reading: four connections each send 800 KiB of
    pipelined GETs for a 64 KiB file and never read; the figure is the growth
    of the server's resident set (VmRSS) over the run.

The tables go to standard output and, with the raw figures, to
bench-results.json.  --only NAME (repeatable) runs the cases whose names
contain NAME, with the baselines they are compared with.

    python bench/run.py [--seconds 5] [--connections 50] [--only NAME]
"""

from __future__ import annotations

import argparse
import base64
import functools
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
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import bcrypt
import hostile
from hostile import rss_kib

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from tests.engines import RedisServer  # noqa: E402

LISTENING = re.compile(r"listening on (http://[^/\s]+)/")
PEERS = ROOT / "bench" / "peers"
PEER_PACKAGES = ("aiohttp", "starlette", "uvicorn", "httptools", "uvloop")
USER, PASSWORD = "bench", "bench-password"
#: The most Digest requests a second the benchmark has nonce counts for.
DIGEST_RATE = 40_000


@dataclass
class Case:
    name: str
    path: str
    args: list[str] = field(default_factory=list)
    #: The plain twisted.web baseline (bench/plain_server.py).
    plain: bool = False
    #: A peer: this script of bench/peers/, run in the bench's environment.
    peer: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    #: Called with the base URL once the server is up; returns extra headers.
    prepare: Callable[[str], dict[str, str]] | None = None
    #: Called with the base URL, a scratch directory and the seconds wrk will
    #: run; returns a wrk Lua script (for per-request headers).
    script: Callable[[str, Path, float], Path] | None = None
    #: The cases this one's ratio is also reported against.
    versus: tuple[str, ...] = ()


@dataclass
class Result:
    name: str
    requests_per_second: float
    p50_ms: float
    p99_ms: float
    errors: int
    ratio_to_plain: float = 0.0
    #: This case's requests per second over each of its versus cases'.
    ratio_to_versus: dict[str, float] = field(default_factory=dict)
    #: The processor time of the server's processes (its workers included,
    #: Redis not) per request, in microseconds: a figure that wrk's and the
    #: machine's other tenants' share of the cores moves less than the rate.
    cpu_us: float = 0.0


@dataclass(frozen=True)
class HostileCase:
    name: str
    #: What the figures say.
    about: str
    #: Called with a way to start a fresh server and the seconds to run.
    measure: Callable[[hostile.Serve, float], list[hostile.Figure]]
    args: list[str] = field(default_factory=list)


def make_fixtures(tmp: Path) -> dict[str, Path]:
    static = tmp / "static"
    static.mkdir()
    (static / "4k.bin").write_bytes(os.urandom(4096))
    (static / hostile.STATIC_FILE).write_bytes(os.urandom(65536))
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
        "redis": tmp,
    }


def session_cookie(base: str, page: str = "/session") -> dict[str, str]:
    with urllib.request.urlopen(base + page) as response:
        cookie = response.headers["Set-Cookie"].split(";", 1)[0]
    return {"Cookie": cookie}


def counter_cookie(base: str) -> dict[str, str]:
    return session_cookie(base, "/counter")


def cookie_of_each_worker(base: str, workers: int = 2) -> dict[str, str]:
    """
    A C{Cookie} header naming one session made by each of C{workers}
    workers that keep their sessions in memory: a worker takes the first it
    knows, so each counts its own visitor and none makes a session a request.
    """
    cookies = [counter_cookie(base)["Cookie"]]
    # The server says it listens once a worker does; the others may take
    # a few seconds more to start.
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if len(cookies) == workers:
            return {"Cookie": "; ".join(cookies)}
        time.sleep(0.01)
        # A connection of its own, which either worker may take: one that
        # knows none of the sessions makes one.
        asking = urllib.request.Request(
            base + "/counter", headers={"Cookie": "; ".join(cookies)}
        )
        with urllib.request.urlopen(asking) as response:
            made = response.headers["Set-Cookie"]
        if made:
            cookies.append(made.split(";", 1)[0])
    raise RuntimeError(f"fewer than {workers} workers made a session")


#: Visitors of the many-visitor /counter cases.
VISITORS = 200


def visitors_script(base: str, tmp: Path, seconds: float) -> Path:
    """
    A wrk script whose requests take turns among L{VISITORS} sessions, each
    made first by a visit of its own: many visitors rather than one on
    every connection (whose concurrent changes a store may merge).
    """
    cookies = [counter_cookie(base)["Cookie"] for _ in range(VISITORS)]
    return rotating_script(tmp, "visitors", "/counter", "Cookie", cookies)


def rotating_script(
    tmp: Path, name: str, uri: str, header: str, values: list[str], start: int = 0
) -> Path:
    """
    A wrk script whose requests for C{uri} send C{values} in turn as
    C{header}, from the one after C{start} (wrk's start-up request, built
    and never sent, takes one too).
    """
    listing = tmp / f"{name}.txt"
    listing.write_text("\n".join(values) + "\n")
    script = tmp / f"{name}.lua"
    script.write_text(
        "local values = {}\n"
        f'for line in io.lines("{listing}") do values[#values + 1] = line end\n'
        f"local i = {start}\n"
        "request = function()\n"
        "  i = i % #values + 1\n"
        f'  return wrk.format("GET", "{uri}", {{["{header}"] = values[i]}})\n'
        "end\n"
    )
    return script


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
    # wrk builds one request at start-up that it never sends: let that one
    # take the last header, so that the counts sent start at 1.
    return rotating_script(
        tmp, f"digest-{nonce[:16]}", uri, "Authorization", lines, start=-1
    )


def cases(fixtures: dict[str, Path]) -> list[Case]:
    static = ["--static", str(fixtures["static"])]
    basic = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    guarded = ["--homes", str(fixtures["homes"])]
    redis = ["--sessions", f"redis+unix://{fixtures['redis'] / 'redis.sock'}"]
    return [
        Case("plain twisted.web hello", "/", plain=True),
        Case("aiohttp hello", "/health", peer="aiohttp_hello.py"),
        Case("Starlette on uvicorn", "/health", peer="starlette_hello.py"),
        Case("/health", "/health", versus=("aiohttp hello", "Starlette on uvicorn")),
        Case("/calendar/2026", "/calendar/2026", versus=("/health",)),
        Case("/static/ 4 KiB", "/static/4k.bin", static),
        Case("/static/ 1 MiB", "/static/1m.bin", static),
        Case(
            "/private/ Basic (bcrypt)",
            "/private/4k.bin",
            ["--htpasswd", str(fixtures["htpasswd"]), *guarded],
            headers={"Authorization": f"Basic {basic}"},
            versus=("/static/ 4 KiB",),
        ),
        Case(
            "/private/ Digest",
            "/private/4k.bin",
            ["--htdigest", str(fixtures["htdigest"]), *guarded],
            script=digest_script,
            versus=("/static/ 4 KiB",),
        ),
        Case(
            "/session with a cookie",
            "/session",
            prepare=session_cookie,
            versus=("/health",),
        ),
        Case("/session without a cookie", "/session", versus=("/health",)),
        # The session stores (SPEC §13): the same visitor counting on one
        # worker in memory, two workers sharing a SQLite file, one with Redis.
        Case("/counter", "/counter", prepare=counter_cookie),
        Case(
            "/counter --workers 2 (SQLite)",
            "/counter",
            ["--workers", "2"],
            prepare=counter_cookie,
            # Against the ceiling too: the share of it that sharing leaves.
            versus=("/counter", "/counter --workers 2, memory"),
        ),
        # The ceiling of two workers here: each keeps its own sessions, so
        # nothing is shared; the visitor has one session on each.
        Case(
            "/counter --workers 2, memory",
            "/counter",
            ["--workers", "2", "--sessions", "memory"],
            prepare=cookie_of_each_worker,
            versus=("/counter",),
        ),
        Case(
            "/counter Redis",
            "/counter",
            redis,
            prepare=counter_cookie,
            versus=("/counter",),
        ),
        # The same with many visitors, each request another's.
        Case("/counter, 200 visitors", "/counter", script=visitors_script),
        Case(
            "/counter, 200 visitors, --workers 2 (SQLite)",
            "/counter",
            ["--workers", "2"],
            script=visitors_script,
            versus=("/counter, 200 visitors",),
        ),
        Case(
            "/counter, 200 visitors, Redis",
            "/counter",
            redis,
            script=visitors_script,
            versus=("/counter, 200 visitors",),
        ),
        Case(
            "/session no cookie, SQLite",
            "/session",
            ["--workers", "2"],
            versus=("/session without a cookie",),
        ),
        Case(
            "/session no cookie, Redis",
            "/session",
            redis,
            versus=("/session without a cookie",),
        ),
        Case("/wsgi/", "/wsgi/"),
        Case("/health --workers 2", "/health", ["--workers", "2"], versus=("/health",)),
    ]


def hostile_cases(fixtures: dict[str, Path]) -> list[HostileCase]:
    return [
        HostileCase(
            "1 MiB form body",
            "reactor held: worst /health latency during the upload "
            "(and 100 ms after its answer), less the idle median",
            hostile.form_body,
            ["--max-body", "2097152"],
        ),
        HostileCase(
            "one-byte-chunk flood",
            f"/health latency while {hostile.CONNECTIONS} connections send "
            "one-byte chunks",
            hostile.chunk_flood,
        ),
        HostileCase(
            "pipelining without reading",
            f"growth of the resident set while {hostile.CONNECTIONS} connections "
            "pipeline GETs for a 64 KiB file and read nothing",
            hostile.unread_pipelining,
            ["--static", str(fixtures["static"])],
        ),
    ]


def app_arguments(args: list[str]) -> list[str]:
    return ["-m", "app", "--listen", "tcp:0:interface=127.0.0.1", *args]


def start(case: Case, peer_python: Path) -> tuple[subprocess.Popen[str], str]:
    if case.plain:
        return start_server([str(ROOT / "bench" / "plain_server.py")])
    if case.peer is not None:
        return start_server([str(PEERS / case.peer)], python=str(peer_python))
    return start_server(app_arguments(case.args))


@contextmanager
def serving(args: list[str]) -> Iterator[hostile.Server]:
    """
    The server under test with C{args}, for one hostile measurement.
    """
    process, base = start_server(app_arguments(args))
    try:
        url = urlsplit(base)
        assert url.hostname is not None and url.port is not None, base
        yield hostile.Server((url.hostname, url.port), process.pid)
    finally:
        stop(process)


def start_server(
    arguments: list[str], python: str = sys.executable
) -> tuple[subprocess.Popen[str], str]:
    """
    Run C{python} with C{arguments}; return the process and the URL of the
    first C{listening on} line it logs.
    """
    process = subprocess.Popen(
        [python, *arguments],
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
    process, base = start_server(app_arguments([]))
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


def ensure_tools() -> None:
    """
    Install wrk, and Redis for the Redis session store, when missing.
    """
    missing = [name for name in ("wrk", "redis-server") if not shutil.which(name)]
    if not missing:
        return
    print(f"installing {', '.join(missing)} (Debian packages)...", flush=True)
    subprocess.run(["apt-get", "update", "-qq"], check=True)
    subprocess.run(["apt-get", "install", "-y", "-qq", *missing], check=True)


def peer_versions(python: Path) -> dict[str, str]:
    """
    The versions of the peers' packages in the bench's environment.
    """
    names = ", ".join(repr(name) for name in PEER_PACKAGES)
    program = (
        "import importlib.metadata as m, json\n"
        f"print(json.dumps({{n: m.version(n) for n in ({names},)}}))"
    )
    output = subprocess.run(
        [str(python), "-c", program], capture_output=True, text=True, check=True
    ).stdout
    versions: dict[str, str] = json.loads(output)
    return versions


def chosen(all_cases: list[Case], only: list[str], peers: bool) -> list[Case]:
    """
    The cases whose names contain one of C{only} (all of them without it),
    with the peers they are compared with, and the plain baseline.  Without
    C{peers}, no peer.
    """
    picked = [c for c in all_cases if not only or any(o in c.name for o in only)]
    compared = {name for c in picked for name in c.versus}
    measured = [
        c
        for c in all_cases
        if (c in picked or (c.peer is not None and c.name in compared))
        and (peers or c.peer is None)
    ]
    if not measured:
        return []
    return [c for c in all_cases if c.plain or c in measured]


def run_case(
    case: Case, options: argparse.Namespace, tmp: Path, peer_python: Path
) -> Result:
    process, base = start(case, peer_python)
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
        before = processor_seconds(process.pid)
        result = wrk(url, options.seconds, options.connections, headers, script)
        used = processor_seconds(process.pid) - before
    finally:
        stop(process)
    result.name = case.name
    served = result.requests_per_second * max(1, round(options.seconds))
    result.cpu_us = used * 1e6 / served if served else 0.0
    return result


def processor_seconds(pid: int) -> float:
    """
    The processor time (user and system) that process C{pid} and its
    children (a server's workers) have used so far, in seconds.
    """
    ticks = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue  # gone meanwhile
        # After the name: state, ppid, ..., utime and stime (fields 14, 15).
        if int(entry.name) == pid or int(fields[1]) == pid:
            ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def session_costs(fixtures: dict[str, Path], tmp: Path) -> dict[str, float]:
    """
    The server's time per /counter request with each session store, in
    process (bench/session_cost.py, a fresh process for each store).
    """
    stores = {
        "memory": "memory",
        "SQLite": f"sqlite:{tmp / 'cost.sqlite3'}",
        "Redis": f"redis+unix://{fixtures['redis'] / 'redis.sock'}",
    }
    costs = {}
    for name, store in stores.items():
        output = subprocess.run(
            [sys.executable, str(ROOT / "bench" / "session_cost.py"), store],
            capture_output=True,
            text=True,
            check=True,
            cwd=ROOT,
        ).stdout
        costs[name] = float(output.strip())
    return costs


def median_run(runs: list[Result]) -> Result:
    """
    The run of a case with the median rate (the lower of the two middle
    ones for an even count).
    """
    ordered = sorted(runs, key=lambda run: run.requests_per_second)
    return ordered[(len(ordered) - 1) // 2]


def add_ratios(results: dict[str, Result], all_cases: list[Case]) -> None:
    plain = next(
        (results[c.name] for c in all_cases if c.plain and c.name in results), None
    )
    for case in all_cases:
        result = results.get(case.name)
        if result is None:
            continue
        if plain is not None:
            result.ratio_to_plain = (
                result.requests_per_second / plain.requests_per_second
            )
        for name in case.versus:
            if name in results:
                result.ratio_to_versus[name] = (
                    result.requests_per_second / results[name].requests_per_second
                )


def print_results(results: dict[str, Result]) -> None:
    columns = ("req/s", "p50 ms", "p99 ms", "errors", "cpu us", "x plain")
    width = max([len("case"), *(len(r.name) for r in results.values())])
    print(f"{'case':{width}} " + " ".join(f"{c:>8}" for c in columns) + "  vs")
    for r in results.values():
        versus = ", ".join(
            f"{ratio:.2f}x {name}" for name, ratio in r.ratio_to_versus.items()
        )
        print(
            f"{r.name:{width}} {r.requests_per_second:8.0f} {r.p50_ms:8.2f} "
            f"{r.p99_ms:8.2f} {r.errors:8d} {r.cpu_us:8.1f} "
            f"{r.ratio_to_plain:8.2f}  {versus}"
        )


def print_peers(versions: dict[str, str]) -> None:
    print(
        f"\npeers, from .venv-bench/: aiohttp hello (aiohttp {versions['aiohttp']}, "
        "one process, default settings);\n"
        f"  Starlette on uvicorn (Starlette {versions['starlette']}, uvicorn "
        f"{versions['uvicorn']}: one worker, httptools {versions['httptools']}, "
        f"uvloop {versions['uvloop']},\n"
        "  access log off (--no-access-log): the server under test keeps no "
        "access log by default either)"
    )


def print_hostile(figures: dict[str, tuple[HostileCase, list[hostile.Figure]]]) -> None:
    print("\nhostile cases: figures beside their goals")
    for case, case_figures in figures.values():
        print(f"{case.name}: {case.about}")
        for f in case_figures:
            print(
                f"  {f.label:44} {f.value:8.1f} {f.unit:3}  goal {f.goal:16}  {f.note}"
            )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--only", action="append", default=[])
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="run the cases this many times over, in turn, and keep each "
        "case's median: ratios then hold against a machine whose speed drifts",
    )
    parser.add_argument("--json", default=str(ROOT / "bench-results.json"))
    parser.add_argument(
        "--peer-python",
        type=Path,
        default=ROOT / ".venv-bench" / "bin" / "python",
        help="the Python of the bench's environment, which runs the peers",
    )
    options = parser.parse_args()
    ensure_tools()
    versions = None
    if options.peer_python.exists():
        versions = peer_versions(options.peer_python)
    else:
        print(f"no {options.peer_python} (make bench makes it): peers left out")

    results: dict[str, Result] = {}
    figures: dict[str, tuple[HostileCase, list[hostile.Figure]]] = {}
    with tempfile.TemporaryDirectory() as directory:
        tmp = Path(directory)
        fixtures = make_fixtures(tmp)
        all_cases = cases(fixtures)
        redis = RedisServer(fixtures["redis"])
        redis.start()
        try:
            runs: dict[str, list[Result]] = {}
            for _ in range(max(1, options.rounds)):
                for case in chosen(all_cases, options.only, versions is not None):
                    result = run_case(case, options, tmp, options.peer_python)
                    runs.setdefault(case.name, []).append(result)
                    print(
                        f"  {case.name}: {result.requests_per_second:.0f} req/s",
                        flush=True,
                    )
            for name, case_runs in runs.items():
                results[name] = median_run(case_runs)
            costs = None
            if any("/counter" in name for name in results):
                costs = session_costs(fixtures, tmp)
        finally:
            redis.stop()
        for hostile_case in hostile_cases(fixtures):
            if options.only and not any(o in hostile_case.name for o in options.only):
                continue
            print(f"  {hostile_case.name}...", flush=True)
            serve = functools.partial(serving, hostile_case.args)
            measured = hostile_case.measure(serve, options.seconds)
            figures[hostile_case.name] = (hostile_case, measured)

    memory = None
    if "/health" in results:
        memory = flat_memory(results["/health"].requests_per_second, options)

    add_ratios(results, all_cases)
    if results:
        print()
        print_results(results)
        if versions is not None and any(
            c.peer is not None and c.name in results for c in all_cases
        ):
            print_peers(versions)
    if memory is not None:
        print(
            f"\nmemory, /health: RSS {memory['after_first_kib']} KiB after "
            f"{memory['first_requests']} requests, {memory['after_second_kib']} KiB "
            f"after {memory['second_requests']} more ({memory['growth']:+.1%})"
        )
    if costs is not None:
        print("\nserver time per /counter request, in process, without sockets:")
        for store, microseconds in costs.items():
            print(f"  {store:8} {microseconds:6.1f} us")
    if figures:
        print_hostile(figures)
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
            "rounds": options.rounds,
        },
        "peers": versions,
        "results": [vars(r) for r in results.values()],
        "memory": memory,
        "session_costs_us": costs,
        "hostile": [
            {
                "case": case.name,
                "about": case.about,
                "server_args": case.args,
                "figures": [asdict(f) for f in case_figures],
            }
            for case, case_figures in figures.values()
        ],
    }
    Path(options.json).write_text(json.dumps(report, indent=2) + "\n")
    print(f"\n{report['machine']}; {report['date']}; written to {options.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
