"""
The command line: options, exit statuses, the listening line, signals.
"""

from __future__ import annotations

import io
import re
import signal
import socket
import subprocess
from pathlib import Path

import pytest
import pytest_twisted
import treq
from twisted.internet import reactor
from twisted.internet.defer import Deferred

from app.cli.main import main
from tests.conftest import listening_url, start_app
from tests.rawhttp import exchange, parse_response


def _run_main(*argv: str) -> tuple[int, str]:
    stdout, stderr = io.StringIO(), io.StringIO()
    status = main(list(argv), reactor, stdout=stdout, stderr=stderr)
    return status, stderr.getvalue()


@pytest.mark.parametrize(
    ("argv", "option"),
    [
        (["--listen", "bogus:8080"], "--listen"),
        (["--listen", "tcp:notaport"], "--listen"),
        (["--static", "/no/such/dir"], "--static"),
        (["--mount", "docs"], "--mount"),
        (["--mount", "../x=/tmp"], "--mount"),
        (["--mount", "static=/tmp"], "--mount"),
        (["--mount", "a=/tmp", "--mount", "a=/tmp"], "--mount"),
        (["--cgi-dir", "/no/such/dir"], "--cgi-dir"),
        (["--cgi-interpreter", "py=python3"], "--cgi-interpreter"),
        (["--cgi-interpreter", ".rb=/no/such/ruby"], "--cgi-interpreter"),
        (["--cgi-timeout", "0"], "--cgi-timeout"),
        (["--wsgi", "nocolon"], "--wsgi"),
        (["--wsgi", "no.such.module:app"], "--wsgi"),
        (["--wsgi", "app.demo_wsgi:missing"], "--wsgi"),
        (["--wsgi", "=app.demo_wsgi:application"], "--wsgi"),
        (["--wsgi", "../x=app.demo_wsgi:application"], "--wsgi"),
        (["--wsgi", "a b=app.demo_wsgi:application"], "--wsgi"),
        (["--wsgi", "static=app.demo_wsgi:application"], "--wsgi"),
        (["--wsgi", "cgi-bin/x=app.demo_wsgi:application"], "--wsgi"),
        (
            ["--wsgi", "docs=app.demo_wsgi:application", "--mount", "docs=/tmp"],
            "--wsgi",
        ),
        (["--wsgi-threads", "0"], "--wsgi-threads"),
        (["--proxy", "ftp://example.invalid/"], "--proxy"),
        (["--proxy", "http://host:notaport/"], "--proxy"),
        (["--trusted-proxy", "10.0.0.1/8"], "--trusted-proxy"),
        (["--trusted-proxy", "proxy.example"], "--trusted-proxy"),
        (["--htpasswd", "/no/such/file"], "--htpasswd"),
        (["--htdigest", "/no/such/file"], "--htdigest"),
        (["--realm", 'a"b'], "--realm"),
        (["--homes", "/no/such/dir"], "--homes"),
        (["--session-timeout", "-1"], "--session-timeout"),
        (["--max-sessions", "0"], "--max-sessions"),
        (["--max-body", "abc"], "--max-body"),
        (["--max-body", "-1"], "--max-body"),
        (["--idle-timeout", "nan"], "--idle-timeout"),
        (["--access-log", "/no/such/dir/access.log"], "--access-log"),
        (["--log-format", "xml"], "--log-format"),
        (["--routes", "no.such.module"], "--routes"),
        (["--routes", "os"], "--routes"),
        (["--workers", "0"], "--workers"),
        (["--sessions", "mysql://db/sessions"], "--sessions"),
        (["--sessions", "sqlite:"], "--sessions"),
        (["--sessions", "sqlite:/no/such/dir/s.db"], "--sessions"),
        (["--sessions", "sqlite:/tmp"], "--sessions"),
        (["--sessions", "redis://"], "--sessions"),
        (["--sessions", "redis://host:99999/0"], "--sessions"),
        (["--sessions", "redis://host/notanumber"], "--sessions"),
        (["--sessions", "redis+unix://relative.sock"], "--sessions"),
        (["--sessions", "redis+unix:///run/redis.sock?db=x"], "--sessions"),
        (["--no-such-option"], "--no-such-option"),
    ],
)
def test_bad_option_values_exit_2_with_one_line_naming_the_option(
    argv: list[str], option: str, capsys: pytest.CaptureFixture[str]
) -> None:
    status, err = _run_main(*argv)
    err += capsys.readouterr().err
    assert status == 2
    assert err.count("\n") == 1, err
    assert option in err
    assert "Traceback" not in err


def test_help_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    status, _ = _run_main("--help")
    assert status == 0
    out = capsys.readouterr().out
    for option in ("--listen", "--routes", "--max-body", "--display-tracebacks"):
        assert option in out


@pytest_twisted.ensureDeferred
async def test_serves_and_stops_on_sigterm(spawn: list[subprocess.Popen[str]]) -> None:
    process = start_app(spawn, "--listen", "tcp:0:interface=127.0.0.1")
    url = listening_url(process)
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+/", url)
    assert not url.endswith(":0/")
    response = await treq.get(url, persistent=False)
    assert response.code == 200
    assert "Twisted Web in 60 seconds" in await response.text()
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=15) == 0


@pytest_twisted.ensureDeferred
async def test_one_listening_line_per_endpoint(
    spawn: list[subprocess.Popen[str]],
) -> None:
    process = start_app(
        spawn,
        "--listen",
        "tcp:0:interface=127.0.0.1",
        "--listen",
        "tcp:0:interface=127.0.0.1",
    )
    first, second = listening_url(process), listening_url(process)
    assert first != second
    for url in (first, second):
        response = await treq.get(url + "health", persistent=False)
        assert await response.text() == "ok"
    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=15) == 0


@pytest_twisted.ensureDeferred
async def test_sigterm_lets_the_request_in_flight_finish(
    spawn: list[subprocess.Popen[str]],
) -> None:
    process = start_app(
        spawn,
        "--listen",
        "tcp:0:interface=127.0.0.1",
        "--routes",
        "tests.example_routes",
    )
    url = listening_url(process)
    port = int(url.rstrip("/").rsplit(":", 1)[1])
    # A keep-alive request: the server must close it after answering.
    pending = Deferred.fromCoroutine(
        exchange(reactor, port, b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
    )
    # Make sure the request has reached the server before the signal.
    assert (await treq.get(url + "health", persistent=False)).code == 200
    process.send_signal(signal.SIGTERM)
    status, headers, body = parse_response(await pending)
    assert status == 200
    assert body == b"finished"
    assert headers[b"connection"] == b"close"
    assert process.wait(timeout=15) == 0


def test_a_port_in_use_exits_1_naming_the_endpoint(
    spawn: list[subprocess.Popen[str]],
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        endpoint = f"tcp:{port}:interface=127.0.0.1"
        process = start_app(spawn, "--listen", endpoint)
        assert process.wait(timeout=15) == 1
        assert process.stderr is not None
        err = process.stderr.read()
    assert endpoint in err
    assert err.count("\n") == 1
    assert "Traceback" not in err


def test_a_bad_option_in_a_real_process_exits_2_without_traceback(
    spawn: list[subprocess.Popen[str]],
) -> None:
    process = start_app(spawn, "--max-body", "lots")
    assert process.wait(timeout=15) == 2
    assert process.stderr is not None
    err = process.stderr.read()
    assert "--max-body" in err
    assert "Traceback" not in err


def test_the_server_collects_young_objects_less_often() -> None:
    import gc

    from app.cli.main import GC_THRESHOLDS, tune_garbage_collector

    before = gc.get_threshold()
    try:
        tune_garbage_collector()
        assert gc.get_threshold() == GC_THRESHOLDS
        assert GC_THRESHOLDS[0] > 700
    finally:
        gc.set_threshold(*before)


def test_a_unix_endpoint_is_named_by_its_path(
    spawn: list[subprocess.Popen[str]], tmp_path: Path
) -> None:
    path = tmp_path / "app.sock"
    process = start_app(spawn, "--listen", f"unix:{path}", "--no-demo")
    assert process.stdout is not None
    for line in process.stdout:
        if "listening on" in line:
            break
    assert f"listening on unix:{path}" in line
    with socket.socket(socket.AF_UNIX) as client:
        client.connect(str(path))
        client.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        answer = b""
        while chunk := client.recv(4096):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 200") and answer.endswith(b"ok")
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=15) == 0
