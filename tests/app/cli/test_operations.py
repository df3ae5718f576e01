"""
Operating the server: --version and --help, the server log's level and
quiet start and stop, the JSON access log, the graceful stop's grace, and
one clear line for every endpoint mistake.
"""

from __future__ import annotations

import errno
import importlib.metadata
import io
import json
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from twisted.internet.error import CannotListenError
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactor
from twisted.logger import Logger, LogLevel

from app.cli.endpoints import bind_problem, with_unix_mode
from app.cli.log import make_observer
from app.cli.main import main, parse_endpoints
from app.cli.options import build_parser, config_from_args, version
from app.config import Config, ConfigError
from app.http.access_log import LogEntry, access_log_of, json_line
from app.site import build_site
from app.testing import stub_treq
from tests.conftest import start_app, success_result_of
from tests.paths import ROOT

#: What twisted's own messages would put in the log; none may appear.
_INTERNALS = ("invalid literal", "Errno", ".lock", "Traceback", "Error:")


# -- --version and --help ------------------------------------------------------


def test_version_is_the_installed_package_version() -> None:
    assert version() == importlib.metadata.version("app")


def test_version_falls_back_to_pyproject(monkeypatch: pytest.MonkeyPatch) -> None:
    def missing(name: str) -> str:
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "version", missing)
    text = (ROOT / "pyproject.toml").read_text()
    assert f'version = "{version()}"' in text


def test_help_names_the_passwd_command_the_environment_and_examples() -> None:
    text = build_parser().format_help()
    assert "python -m app passwd [--digest] [--realm NAME] FILE USER" in text
    assert "APP_DIGEST_KEY" in text
    examples = text[text.index("examples:") :]
    assert "--htpasswd app/demo/users.htpasswd" in examples
    assert examples.count("--listen") >= 3
    assert "ssl:8443:privateKey=" in examples
    assert "--workers 4 --listen unix:" in examples


@pytest.mark.parametrize("option", ["--grace", "--log-level", "--access-log-format"])
def test_each_new_option_is_in_the_help(option: str) -> None:
    assert option in build_parser().format_help()


# -- the options and their defaults ------------------------------------------------


def test_the_new_options_default_to_the_config() -> None:
    config = config_from_args(["--no-demo"])
    assert (config.grace, config.log_level, config.access_log_format) == (
        Config.grace,
        Config.log_level,
        Config.access_log_format,
    )
    assert (Config.grace, Config.log_level, Config.access_log_format) == (
        10.0,
        "info",
        "combined",
    )


def test_the_new_options_are_read() -> None:
    config = config_from_args(
        [
            "--no-demo",
            "--grace",
            "2.5",
            "--log-level",
            "debug",
            "--access-log-format",
            "json",
        ]
    )
    assert (config.grace, config.log_level, config.access_log_format) == (
        2.5,
        "debug",
        "json",
    )


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("--grace", "soon"),
        ("--grace", "-1"),
        ("--grace", "inf"),
        ("--log-level", "loud"),
        ("--access-log-format", "xml"),
    ],
)
def test_a_bad_value_is_one_line_and_exit_2(option: str, value: str) -> None:
    stdout, stderr = io.StringIO(), io.StringIO()
    status = main(["--no-demo", option, value], MemoryReactor(), stdout, stderr)
    assert status == 2
    # argparse writes to the process's standard error, which pytest captures.
    assert stdout.getvalue() == ""


@pytest.mark.parametrize(
    ("option", "value"),
    [("--grace", "soon"), ("--log-level", "loud"), ("--access-log-format", "xml")],
)
def test_a_bad_value_names_its_option(
    option: str, value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        config_from_args(["--no-demo", option, value])
    assert exit_.value.code == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1
    assert option in lines[0] and repr(value) in lines[0]


# -- the server log ----------------------------------------------------------------


def _log(level: str, namespace: str = "app.test") -> tuple[Logger, io.StringIO]:
    stream = io.StringIO()
    return Logger(namespace=namespace, observer=make_observer("text", stream, level)), (
        stream
    )


def test_log_level_warn_leaves_out_info() -> None:
    log, stream = _log("warn")
    log.info("said at info")
    log.warn("said at warn")
    assert "said at info" not in stream.getvalue()
    assert "[app.test#warn] said at warn" in stream.getvalue()


def test_log_level_error_leaves_out_warn() -> None:
    log, stream = _log("error")
    log.warn("said at warn")
    log.error("said at error")
    assert stream.getvalue().count("\n") == 1
    assert "said at error" in stream.getvalue()


def test_log_level_debug_shows_debug() -> None:
    log, stream = _log("debug")
    log.debug("said at debug")
    assert "[app.test#debug] said at debug" in stream.getvalue()


def test_the_default_log_level_leaves_out_debug() -> None:
    log, stream = _log(Config.log_level)
    log.debug("said at debug")
    log.info("said at info")
    assert stream.getvalue().count("\n") == 1


def _legacy(text: str, **more: object) -> dict[str, object]:
    return {
        "log_namespace": "log_legacy",
        "log_level": LogLevel.info,
        "log_format": "{log_text}",
        "log_text": text,
        "log_time": 0.0,
        "system": "-",
        "isError": 0,
        **more,
    }


@pytest.mark.parametrize(
    "text", ["Site starting on 8080", "(TCP Port 8080 Closed)", "Factory starting"]
)
def test_twisted_legacy_messages_are_left_out(text: str) -> None:
    stream = io.StringIO()
    make_observer("text", stream)(_legacy(text))
    assert stream.getvalue() == ""


def test_a_legacy_error_is_kept_under_the_twisted_namespace() -> None:
    stream = io.StringIO()
    event = _legacy("it broke", isError=1, log_level=LogLevel.critical)
    make_observer("json", stream)(event)
    record = json.loads(stream.getvalue())
    assert (record["namespace"], record["text"]) == ("twisted", "it broke")


@pytest.mark.parametrize("level", ["debug", "info"])
def test_main_loop_terminated_is_left_out(level: str) -> None:
    log, stream = _log(level, namespace="twisted.internet.base")
    log.info("Main loop terminated.")
    log.error("the reactor failed")
    assert "Main loop terminated" not in stream.getvalue()
    assert "the reactor failed" in stream.getvalue()


# -- the JSON access log -------------------------------------------------------------


def test_a_json_line_names_every_combined_log_format_field() -> None:
    from twisted.internet.address import IPv4Address
    from twisted.web.http_headers import Headers

    line = json_line(
        LogEntry(
            client=IPv4Address("TCP", "192.0.2.1", 1234),
            user="alice",
            seconds=0.25,
            request_line=b"GET /a?b HTTP/1.1",
            status=200,
            length=12,
            headers=Headers({b"referer": [b"http://x/"], b"user-agent": [b"t/1"]}),
            duration=0.0125,
        )
    )
    assert line.endswith("\n") and line.count("\n") == 1
    assert json.loads(line) == {
        "client": "192.0.2.1",
        "user": "alice",
        "time": "1970-01-01T00:00:00.250Z",
        "request": "GET /a?b HTTP/1.1",
        "method": "GET",
        "target": "/a?b",
        "protocol": "HTTP/1.1",
        "status": 200,
        "length": 12,
        "referer": "http://x/",
        "user_agent": "t/1",
        "duration_ms": 12.5,
    }


def test_a_json_line_cannot_be_split_by_what_a_client_sends() -> None:
    line = json_line(
        LogEntry(
            client=None,
            user=None,
            seconds=0,
            request_line=b'GET /"\n\xff HTTP/1.1',
            status=400,
            length=0,
            headers=None,
            duration=None,
        )
    )
    assert line.count("\n") == 1
    record = json.loads(line)
    assert record["request"] == 'GET /"\n\\xff HTTP/1.1'
    assert (record["method"], record["target"]) == ("GET", '/"\n\\xff')
    assert (record["client"], record["referer"], record["duration_ms"]) == (
        None,
        None,
        None,
    )


def test_a_refused_request_without_a_request_line_has_none_of_its_parts() -> None:
    line = json_line(
        LogEntry(
            client=None,
            user=None,
            seconds=0,
            request_line=None,
            status=408,
            length=0,
            headers=None,
            duration=None,
        )
    )
    record = json.loads(line)
    assert [record[name] for name in ("request", "method", "target", "protocol")] == [
        None
    ] * 4
    assert record["status"] == 408


@pytest.fixture
def json_log(tmp_path: Path) -> Iterator[tuple[Path, Clock, object]]:
    path = tmp_path / "access.log"
    clock = Clock()
    clock.advance(1_000_000)
    config = config_from_args(
        ["--access-log", str(path), "--access-log-format", "json"]
    )
    site = build_site(config, MemoryReactor(), clock)
    try:
        yield path, clock, stub_treq(site)
    finally:
        access_log = access_log_of(site)
        assert access_log is not None
        access_log.stopService()


def test_duration_ms_is_the_time_from_arrival_to_the_line_on_the_site_clock(
    json_log: tuple[Path, Clock, object],
) -> None:
    path, clock, client = json_log
    pending = client.get("http://example.test/delayed?seconds=1.5")  # type: ignore[attr-defined]
    clock.advance(1.5)
    client.flush()  # type: ignore[attr-defined]
    response = success_result_of(pending)
    success_result_of(response.content())
    record = json.loads(path.read_text())
    assert (record["target"], record["status"]) == ("/delayed?seconds=1.5", 200)
    assert record["duration_ms"] == 1500.0


def test_an_answer_at_once_takes_no_time_on_the_site_clock(
    json_log: tuple[Path, Clock, object],
) -> None:
    path, _, client = json_log
    pending = client.get("http://example.test/health")  # type: ignore[attr-defined]
    success_result_of(success_result_of(pending).content())
    record = json.loads(path.read_text())
    assert (record["method"], record["status"], record["length"]) == ("GET", 200, 2)
    assert record["duration_ms"] == 0.0


# -- --listen mistakes and endpoints that cannot be bound ----------------------------


@pytest.mark.parametrize(
    ("description", "says"),
    [
        ("unix:/nonexistent/dir/s.sock", "directory '/nonexistent/dir' does not exist"),
        ("tcp:abc", "port 'abc' is not a whole number from 0 to 65535"),
        ("tcp:99999", "port '99999' is not a whole number from 0 to 65535"),
        ("bogus:1", "unknown endpoint type 'bogus'"),
        ("ssl:8443", "needs privateKey=FILE"),
        (
            "ssl:8443:privateKey=/nonexistent.pem",
            "'/nonexistent.pem' is not a readable",
        ),
        ("tcp:0:backlog=many", "backlog 'many' is not a whole number"),
        ("tcp:0:colour=blue", "a tcp endpoint has no option 'colour'"),
        ("unix:/tmp/s.sock:mode=rw", "mode 'rw' is not an octal file mode"),
        ("unix:", "needs a socket path"),
        ("tcp:", "needs a port number"),
    ],
)
def test_an_endpoint_mistake_is_one_clear_line_naming_listen(
    description: str, says: str
) -> None:
    config = config_from_args(["--no-demo", "--listen", description])
    with pytest.raises(ConfigError) as raised:
        parse_endpoints(MemoryReactor(), config)
    assert raised.value.option == "--listen"
    assert says in raised.value.message
    assert not any(internal in str(raised.value) for internal in _INTERNALS)


def test_an_endpoint_mistake_exits_2_with_one_line() -> None:
    stdout, stderr = io.StringIO(), io.StringIO()
    status = main(["--no-demo", "--listen", "tcp:abc"], MemoryReactor(), stdout, stderr)
    assert status == 2
    assert stderr.getvalue() == (
        "python -m app: error: --listen: 'tcp:abc': "
        "port 'abc' is not a whole number from 0 to 65535\n"
    )


@pytest.mark.parametrize(
    ("error", "says"),
    [
        (
            CannotListenError(
                "127.0.0.1", 8080, OSError(errno.EADDRINUSE, "Address already in use")
            ),
            "address already in use",
        ),
        (
            CannotListenError(
                "", 80, PermissionError(errno.EACCES, "Permission denied")
            ),
            "permission denied",
        ),
        (PermissionError(errno.EACCES, "Permission denied"), "permission denied"),
        (
            CannotListenError(None, b"/run/s.sock", "Cannot acquire lock"),
            "another process is listening on it",
        ),
    ],
)
def test_an_endpoint_that_cannot_be_bound_is_one_clear_line(
    error: Exception, says: str
) -> None:
    line = bind_problem("tcp:8080", error)
    assert line == f"cannot listen on tcp:8080: {says}"
    assert not any(internal in line for internal in _INTERNALS)


@pytest.mark.parametrize(
    ("description", "expected"),
    [
        ("unix:/run/app.sock", "unix:/run/app.sock:mode=660"),
        ("unix:/run/app.sock:mode=600", "unix:/run/app.sock:mode=600"),
        ("tcp:8080", "tcp:8080"),
    ],
)
def test_unix_sockets_are_mode_660_unless_given(
    description: str, expected: str
) -> None:
    assert with_unix_mode(description) == expected


# -- real processes ------------------------------------------------------------------


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "app", *argv],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


def _until_listening(process: subprocess.Popen[str]) -> list[str]:
    assert process.stdout is not None
    lines = []
    for line in process.stdout:
        lines.append(line)
        if "listening on" in line:
            return lines
    assert process.stderr is not None
    raise AssertionError(f"no listening line: {lines}; {process.stderr.read()}")


def _stop(process: subprocess.Popen[str]) -> tuple[int, str, str]:
    process.send_signal(signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=30)
    return process.returncode, stdout, stderr


def test_version_prints_app_and_the_version() -> None:
    result = _run("--version")
    assert (result.returncode, result.stdout) == (0, f"app {version()}\n")


def test_help_ends_with_the_examples() -> None:
    result = _run("--help")
    assert result.returncode == 0
    assert "python -m app passwd" in result.stdout
    last = result.stdout.rstrip().splitlines()[-1]
    assert "--access-log" in last


def test_a_start_and_a_stop_log_no_twisted_chatter(
    spawn: list[subprocess.Popen[str]],
) -> None:
    process = start_app(spawn, "--no-demo", "--listen", "tcp:0:interface=127.0.0.1")
    before = _until_listening(process)
    status, after, stderr = _stop(process)
    log = "".join(before) + after
    assert status == 0
    assert stderr == ""
    lines = log.splitlines()
    assert len(lines) == 2, log
    assert "[app.cli.main#info] listening on http://127.0.0.1:" in lines[0]
    assert "[app.cli.main#info] SIGTERM: stopping gracefully" in lines[1]
    for chatter in ("log_legacy", "starting on", "Closed", "Main loop terminated"):
        assert chatter not in log


def test_log_level_warn_leaves_out_the_listening_line(
    spawn: list[subprocess.Popen[str]],
) -> None:
    process = start_app(
        spawn,
        "--no-demo",
        "--log-level",
        "warn",
        "--listen",
        "tcp:0:interface=127.0.0.1",
    )
    time.sleep(2)
    status, stdout, _ = _stop(process)
    assert (status, stdout) == (0, "")


@pytest.mark.parametrize(("mode", "expected"), [(None, 0o660), ("600", 0o600)])
def test_a_unix_socket_is_mode_660_unless_the_endpoint_gives_one(
    spawn: list[subprocess.Popen[str]],
    tmp_path: Path,
    mode: str | None,
    expected: int,
) -> None:
    path = tmp_path / "app.sock"
    description = f"unix:{path}" + ("" if mode is None else f":mode={mode}")
    process = start_app(spawn, "--no-demo", "--listen", description)
    _until_listening(process)
    assert stat.S_IMODE(path.stat().st_mode) == expected
    assert _stop(process)[0] == 0
    assert not path.exists()


def test_workers_behind_a_unix_socket_stop_without_an_error(
    spawn: list[subprocess.Popen[str]], tmp_path: Path
) -> None:
    path = tmp_path / "app.sock"
    process = start_app(
        spawn, "--no-demo", "--workers", "2", "--listen", f"unix:{path}"
    )
    before = _until_listening(process)
    # The workers adopt the socket: its mode stays the parent's.
    assert stat.S_IMODE(path.stat().st_mode) == 0o660
    with socket.socket(socket.AF_UNIX) as client:
        client.settimeout(10)
        client.connect(str(path))
        client.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert client.recv(4096).startswith(b"HTTP/1.1 200 ")
    status, after, stderr = _stop(process)
    log = "".join(before) + after + stderr
    assert status == 0
    for trouble in ("#error", "#critical", "Traceback", "Unhandled", "log_legacy"):
        assert trouble not in log, log
    assert "[app.cli.main#info] SIGTERM: stopping gracefully" in log
    assert not path.exists()
    assert not Path(f"{path}.lock").exists()


def test_an_endpoint_in_use_is_one_line_and_exit_1(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        description = f"tcp:{port}:interface=127.0.0.1"
        result = _run("--no-demo", "--listen", description)
    assert result.returncode == 1
    assert result.stderr == (
        f"python -m app: error: cannot listen on {description}: "
        "address already in use\n"
    )


def test_a_listen_mistake_in_a_real_process_is_one_line_and_exit_2() -> None:
    result = _run("--no-demo", "--listen", "unix:/nonexistent/dir/s.sock")
    assert result.returncode == 2
    assert result.stderr == (
        "python -m app: error: --listen: 'unix:/nonexistent/dir/s.sock': "
        "directory '/nonexistent/dir' does not exist\n"
    )


def _slow_request(port: int, seconds: float) -> socket.socket:
    client = socket.create_connection(("127.0.0.1", port), timeout=30)
    client.sendall(
        f"GET /delayed?seconds={seconds:g} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
    )
    time.sleep(0.5)  # in flight, not merely queued
    return client


def _port_of(lines: list[str]) -> int:
    return int(lines[-1].rsplit(":", 1)[1].strip().rstrip("/"))


def test_grace_bounds_the_wait_for_requests_in_flight(
    spawn: list[subprocess.Popen[str]],
) -> None:
    process = start_app(spawn, "--grace", "1", "--listen", "tcp:0:interface=127.0.0.1")
    port = _port_of(_until_listening(process))
    with _slow_request(port, 20):
        started = time.monotonic()
        status = _stop(process)[0]
        assert time.monotonic() - started < 8  # not the default 10 s, nor 20
    assert status == 0


def test_a_request_in_flight_finishes_within_the_grace(
    spawn: list[subprocess.Popen[str]],
) -> None:
    process = start_app(spawn, "--grace", "5", "--listen", "tcp:0:interface=127.0.0.1")
    port = _port_of(_until_listening(process))
    with _slow_request(port, 1.5) as client:
        process.send_signal(signal.SIGTERM)
        answer = client.recv(4096)
        assert answer.startswith(b"HTTP/1.1 200 ")
        assert b"Connection: close" in answer
    assert process.wait(timeout=30) == 0
