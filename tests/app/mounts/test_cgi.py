"""
CGI at /cgi-bin/: real scripts, run by the real interpreter, through a live
server (SPEC section 6).
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, cast

import pytest
import pytest_twisted
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet import reactor
from twisted.internet.task import Clock
from twisted.logger import LogEvent, formatEvent
from twisted.web.client import ResponseFailed
from twisted.web.iweb import IRequest
from twisted.web.test.requesthelper import DummyRequest

from app.mounts.cgi import (
    MAX_STDERR_BYTES,
    BadHead,
    CGIProcess,
    parse_head,
    split_head,
)
from app.testing import LiveServer
from tests.conftest import eventually, process_gone
from tests.rawhttp import connect, exchange, parse_response

#: What a script may find in its environment (RFC 3875 section 4.1, + PATH).
CGI_VARIABLES = {
    "AUTH_TYPE",
    "CONTENT_LENGTH",
    "CONTENT_TYPE",
    "GATEWAY_INTERFACE",
    "PATH_INFO",
    "PATH_TRANSLATED",
    "QUERY_STRING",
    "REMOTE_ADDR",
    "REMOTE_HOST",
    "REMOTE_USER",
    "REQUEST_METHOD",
    "SCRIPT_NAME",
    "SERVER_NAME",
    "SERVER_PORT",
    "SERVER_PROTOCOL",
    "SERVER_SOFTWARE",
    "PATH",
}

# The environment as exec'd, read from /proc: Python itself adds LC_CTYPE to
# os.environ at start-up when no locale is set (PEP 538).
ENV_SCRIPT = """
import json, sys
raw = open("/proc/self/environ", "rb").read()
env = dict(
    item.decode("utf-8", "surrogateescape").split("=", 1)
    for item in raw.split(b"\\0") if item
)
body = sys.stdin.buffer.read()
print("Content-Type: application/json")
print()
print(json.dumps({"env": env, "argv": sys.argv[1:], "stdin": body.decode("latin-1")}))
"""

SCRIPTS = {
    "env.py": ENV_SCRIPT,
    "sub/inner.py": ENV_SCRIPT,
    "crash.py": (
        "import sys\nsys.stderr.write('boom: the script broke\\n')\nsys.exit(1)\n"
    ),
    "garbage.py": "print('this is not a header')\nprint()\nprint('body')\n",
    "unfinished.py": "print('Content-Type: text/plain')\n",
    "nothing.py": "",
    "created.py": (
        "print('Status: 201 Created')\n"
        "print('Content-Type: text/plain')\n"
        "print('Location: /somewhere')\n"
        "print()\n"
        "print('made', end='')\n"
    ),
    "moved.py": "print('Location: /elsewhere')\nprint()\n",
    "late-failure.py": (
        "import sys\n"
        "print('Content-Type: text/plain')\n"
        "print()\n"
        "print('partial', end='')\n"
        "sys.stdout.flush()\n"
        "sys.stderr.write('late trouble')\n"
        "sys.exit(3)\n"
    ),
    "lying-length.py": (
        "print('Content-Type: text/plain')\n"
        "print('Content-Length: 3')\n"
        "print()\n"
        "print('more than three bytes', end='')\n"
    ),
    "big.py": (
        "import sys\n"
        "sys.stdout.write('Content-Type: application/octet-stream\\n\\n')\n"
        "sys.stdout.flush()\n"
        "for _ in range(64):\n"
        "    sys.stdout.write('0123456789abcdef' * 1024)\n"
    ),
    "noisy.py": ("import sys\nsys.stderr.write('x' * 300_000 + 'END')\nsys.exit(1)\n"),
    "sleep.py": (
        "import os, time\n"
        "open('sleep.pid', 'w').write(str(os.getpid()))\n"
        "time.sleep(60)\n"
    ),
    "stall.py": (
        "import os, sys, time\n"
        "sys.stdout.write('Content-Type: text/plain\\n\\nfirst part')\n"
        "sys.stdout.flush()\n"
        "open('stall.pid', 'w').write(str(os.getpid()))\n"
        "time.sleep(60)\n"
    ),
    "hello.sh": (
        "printf 'Content-Type: text/plain\\n\\n'\necho \"shell: $QUERY_STRING\"\n"
    ),
    "data.txt": "just data, not a script\n",
    ".hidden.py": "print('Content-Type: text/plain')\nprint()\nprint('hidden')\n",
}

EXECUTABLE = "#!/bin/sh\nprintf 'Content-Type: text/plain\\n\\nran directly'\n"


@pytest.fixture
def cgi_dir(tmp_path: Path) -> Path:
    """
    A directory of test scripts, with a file and a symlink outside it.
    """
    scripts = tmp_path / "cgi-bin"
    for name, text in SCRIPTS.items():
        path = scripts / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    direct = scripts / "direct"
    direct.write_text(EXECUTABLE)
    direct.chmod(direct.stat().st_mode | stat.S_IXUSR)
    outside = tmp_path / "outside.py"
    outside.write_text("print('Content-Type: text/plain')\nprint()\nprint('out')\n")
    (scripts / "link.py").symlink_to(outside)
    (scripts / "inside-link.py").symlink_to(scripts / "env.py")
    return scripts


def cgi_args(cgi_dir: Path, *more: str) -> list[str]:
    """
    The options serving the CGI scripts of C{cgi_dir} alone, and C{more}.
    """
    return [
        "--no-demo",
        "--cgi-dir",
        str(cgi_dir),
        "--cgi-interpreter",
        ".sh=/bin/sh",
        *more,
    ]


@pytest_twisted.async_yield_fixture
async def cgi(cgi_dir: Path) -> AsyncIterator[LiveServer]:
    live = await LiveServer.start(cgi_args(cgi_dir))
    try:
        yield live
    finally:
        await live.stop()


async def _environment(response: Any) -> dict[str, Any]:
    assert response.code == 200
    result: dict[str, Any] = json.loads(await response.text())
    return result


def _texts(events: list[LogEvent]) -> list[str]:
    return [formatEvent(event) for event in events]


def _pid_from(path: Path) -> int | None:
    try:
        return int(path.read_text())
    except (OSError, ValueError):
        return None


# -- the environment ----------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_path_info_is_the_path_after_the_script(cgi: LiveServer) -> None:
    env = (await _environment(await cgi.get("/cgi-bin/env.py/a/b")))["env"]
    assert env["PATH_INFO"] == "/a/b"
    assert env["SCRIPT_NAME"] == "/cgi-bin/env.py"


@pytest_twisted.ensureDeferred
async def test_no_path_info_without_a_path_after_the_script(cgi: LiveServer) -> None:
    env = (await _environment(await cgi.get("/cgi-bin/env.py")))["env"]
    assert "PATH_INFO" not in env
    assert env["SCRIPT_NAME"] == "/cgi-bin/env.py"


@pytest_twisted.ensureDeferred
async def test_script_in_a_subdirectory(cgi: LiveServer) -> None:
    env = (await _environment(await cgi.get("/cgi-bin/sub/inner.py/x")))["env"]
    assert env["SCRIPT_NAME"] == "/cgi-bin/sub/inner.py"
    assert env["PATH_INFO"] == "/x"


@pytest_twisted.ensureDeferred
async def test_query_string_is_verbatim(cgi: LiveServer) -> None:
    env = (await _environment(await cgi.get("/cgi-bin/env.py?a=1&b=%20x+y;c")))["env"]
    assert env["QUERY_STRING"] == "a=1&b=%20x+y;c"


@pytest_twisted.ensureDeferred
async def test_query_without_equals_is_not_command_line_arguments(
    cgi: LiveServer,
) -> None:
    result = await _environment(await cgi.get("/cgi-bin/env.py?foo+bar%20baz"))
    assert result["env"]["QUERY_STRING"] == "foo+bar%20baz"
    assert result["argv"] == []


@pytest_twisted.ensureDeferred
async def test_post_body_arrives_on_standard_input(cgi: LiveServer) -> None:
    response = await cgi.post(
        "/cgi-bin/env.py",
        data=b"the-field=value&other=2",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    result = await _environment(response)
    assert result["stdin"] == "the-field=value&other=2"
    assert result["env"]["REQUEST_METHOD"] == "POST"
    assert result["env"]["CONTENT_LENGTH"] == "23"
    assert result["env"]["CONTENT_TYPE"] == "application/x-www-form-urlencoded"


@pytest_twisted.ensureDeferred
async def test_large_body_arrives_whole(cgi: LiveServer) -> None:
    body = bytes(range(256)) * 2048  # 512 KiB, more than a pipe holds
    response = await cgi.post("/cgi-bin/env.py", data=body)
    result = await _environment(response)
    assert result["stdin"].encode("latin-1") == body


@pytest_twisted.ensureDeferred
async def test_proxy_header_does_not_reach_the_script(cgi: LiveServer) -> None:
    response = await cgi.get("/cgi-bin/env.py", headers={"Proxy": "http://evil:1/"})
    env = (await _environment(response))["env"]
    assert "HTTP_PROXY" not in env


@pytest_twisted.ensureDeferred
async def test_authorization_is_hidden_and_cookie_passed(cgi: LiveServer) -> None:
    response = await cgi.get(
        "/cgi-bin/env.py",
        headers={"Authorization": "Basic dTpw", "Cookie": "a=1", "X-Custom": "yes"},
    )
    env = (await _environment(response))["env"]
    assert "HTTP_AUTHORIZATION" not in env
    assert env["HTTP_COOKIE"] == "a=1"
    assert env["HTTP_X_CUSTOM"] == "yes"


@pytest_twisted.ensureDeferred
async def test_header_with_underscore_cannot_pose_as_dashed_one(
    cgi: LiveServer,
) -> None:
    data = await exchange(
        reactor,
        cgi.port_number,
        b"GET /cgi-bin/env.py HTTP/1.1\r\nHost: x\r\nX_Forwarded_For: 6.6.6.6\r\n"
        b"Connection: close\r\n\r\n",
    )
    status, _, body = parse_response(data)
    assert status == 200
    env = json.loads(_unchunk(body))["env"]
    assert "HTTP_X_FORWARDED_FOR" not in env


@pytest_twisted.ensureDeferred
async def test_only_cgi_variables_and_path_reach_the_script(
    cgi: LiveServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("APP_TEST_SECRET", "must-not-leak")
    env = (await _environment(await cgi.get("/cgi-bin/env.py/p?q=1")))["env"]
    assert "APP_TEST_SECRET" not in env
    assert "must-not-leak" not in json.dumps(env)
    others = {name for name in env if not name.startswith("HTTP_")}
    assert others <= CGI_VARIABLES
    assert env["PATH"] == os.environ["PATH"]
    assert env["GATEWAY_INTERFACE"] == "CGI/1.1"
    assert env["SERVER_SOFTWARE"] == "app"
    assert env["SERVER_PROTOCOL"] == "HTTP/1.1"
    assert env["SERVER_PORT"] == str(cgi.port_number)
    assert env["REMOTE_ADDR"] == "127.0.0.1"


# -- what is not a script -------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_missing_script_is_404(cgi: LiveServer) -> None:
    response = await cgi.get("/cgi-bin/no-such-script.py")
    assert response.code == 404
    assert "404 Not Found" in await response.text()


@pytest.mark.parametrize(
    "target",
    [
        b"/cgi-bin/../outside.py",
        b"/cgi-bin/%2e%2e/outside.py",
        b"/cgi-bin/sub/..%2fenv.py",
        b"/cgi-bin/%2e%2e%2foutside.py",
        b"/cgi-bin/sub%2f..%2f..%2foutside.py",
        b"/cgi-bin/..%5coutside.py",
        b"/cgi-bin/env.py%00",
        b"/cgi-bin/env.py/a%00b",
        b"/cgi-bin/link.py",
        b"/cgi-bin/.hidden.py",
        b"/cgi-bin/%2ehidden.py",
        b"/cgi-bin/data.txt",
        b"/cgi-bin/",
        b"/cgi-bin/sub/",
        b"/cgi-bin//env.py",
    ],
)
@pytest_twisted.ensureDeferred
async def test_path_that_is_not_a_script_is_404(cgi: LiveServer, target: bytes) -> None:
    data = await exchange(
        reactor,
        cgi.port_number,
        b"GET " + target + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    status, headers, body = parse_response(data)
    assert status == 404
    assert headers[b"content-type"] == b"text/html; charset=utf-8"
    assert b"Traceback" not in body


@pytest_twisted.ensureDeferred
async def test_symlink_inside_the_directory_is_served(cgi: LiveServer) -> None:
    env = (await _environment(await cgi.get("/cgi-bin/inside-link.py")))["env"]
    assert env["SCRIPT_NAME"] == "/cgi-bin/inside-link.py"


@pytest_twisted.ensureDeferred
async def test_without_cgi_dir_there_is_no_cgi_bin() -> None:
    live = await LiveServer.start(["--no-demo"])
    try:
        response = await live.get("/cgi-bin/env.py")
        assert response.code == 404
    finally:
        await live.stop()


# -- how a script answers ---------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_crashing_script_is_500_with_its_stderr_logged(
    cgi: LiveServer, captured_log: list[LogEvent]
) -> None:
    response = await cgi.get("/cgi-bin/crash.py")
    body = await response.text()
    assert response.code == 500
    assert "500 Internal Server Error" in body
    assert "boom" not in body and "Traceback" not in body
    logged = [text for text in _texts(captured_log) if "crash.py" in text]
    assert len(logged) == 1
    assert "boom: the script broke" in logged[0]
    assert "exit status 1" in logged[0]


@pytest.mark.parametrize(
    "script", ["garbage.py", "nothing.py", "unfinished.py", "noisy.py"]
)
@pytest_twisted.ensureDeferred
async def test_script_without_a_valid_header_block_is_500(
    cgi: LiveServer, script: str
) -> None:
    response = await cgi.get(f"/cgi-bin/{script}")
    body = await response.text()
    assert response.code == 500
    assert response.headers.getRawHeaders("content-type") == [
        "text/html; charset=utf-8"
    ]
    assert "this is not a header" not in body


@pytest_twisted.ensureDeferred
async def test_stderr_kept_for_the_log_is_bounded(
    cgi: LiveServer, captured_log: list[LogEvent]
) -> None:
    response = await cgi.get("/cgi-bin/noisy.py")
    await response.content()
    [event] = [e for e in captured_log if e.get("script", "").endswith("noisy.py")]
    stderr = event["stderr"]
    assert stderr.endswith("xEND")
    assert len(stderr) < MAX_STDERR_BYTES + 100
    assert "bytes dropped" in stderr


@pytest_twisted.ensureDeferred
async def test_status_header_stands(cgi: LiveServer) -> None:
    response = await cgi.get("/cgi-bin/created.py")
    assert response.code == 201
    assert response.phrase == b"Created"
    assert response.headers.getRawHeaders("location") == ["/somewhere"]
    assert await response.text() == "made"


@pytest_twisted.ensureDeferred
async def test_location_alone_is_a_redirect(cgi: LiveServer) -> None:
    response = await cgi.get("/cgi-bin/moved.py", allow_redirects=False)
    assert response.code == 302
    assert response.headers.getRawHeaders("location") == ["/elsewhere"]


@pytest_twisted.ensureDeferred
async def test_failure_after_the_headers_keeps_their_status(
    cgi: LiveServer, captured_log: list[LogEvent]
) -> None:
    response = await cgi.get("/cgi-bin/late-failure.py")
    assert response.code == 200
    assert await response.text() == "partial"
    logged = [text for text in _texts(captured_log) if "late-failure.py" in text]
    assert len(logged) == 1
    assert "late trouble" in logged[0] and "exit status 3" in logged[0]


@pytest_twisted.ensureDeferred
async def test_scripts_content_length_is_not_trusted(cgi: LiveServer) -> None:
    response = await cgi.get("/cgi-bin/lying-length.py")
    assert await response.text() == "more than three bytes"
    assert response.headers.getRawHeaders("content-length") is None


@pytest_twisted.ensureDeferred
async def test_large_output_is_streamed_whole(cgi: LiveServer) -> None:
    response = await cgi.get("/cgi-bin/big.py")
    body = await response.content()
    assert body == b"0123456789abcdef" * 1024 * 64


@pytest_twisted.ensureDeferred
async def test_head_request_gets_headers_only(cgi: LiveServer) -> None:
    response = await cgi.head("/cgi-bin/created.py")
    assert response.code == 201
    assert await response.content() == b""


# -- how a script is run ------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_interpreter_runs_scripts_of_its_extension(cgi: LiveServer) -> None:
    response = await cgi.get("/cgi-bin/hello.sh?x=1")
    assert response.code == 200
    assert await response.text() == "shell: x=1\n"


@pytest_twisted.ensureDeferred
async def test_executable_without_interpreter_runs_directly(cgi: LiveServer) -> None:
    response = await cgi.get("/cgi-bin/direct")
    assert response.code == 200
    assert await response.text() == "ran directly"


@pytest_twisted.ensureDeferred
async def test_script_without_interpreter_or_exec_bit_is_404(cgi_dir: Path) -> None:
    live = await LiveServer.start(["--no-demo", "--cgi-dir", str(cgi_dir)])
    try:
        response = await live.get("/cgi-bin/hello.sh")
        assert response.code == 404
    finally:
        await live.stop()


# -- time and disconnects ---------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_script_without_headers_in_time_is_killed_with_504(
    cgi_dir: Path, captured_log: list[LogEvent]
) -> None:
    clock = Clock()
    live = await LiveServer.start(cgi_args(cgi_dir, "--cgi-timeout", "5"), clock=clock)
    try:
        answers: list[Any] = []
        live.get("/cgi-bin/sleep.py").addBoth(answers.append)
        pid = await eventually(lambda: _pid_from(cgi_dir / "sleep.pid"), "the script")
        clock.advance(4.9)
        # Only the clock or the script could answer, and either would have
        # started the response before advance() returned.
        (request,) = [r for channel in live.site.channels for r in channel.requests]
        assert not request.startedWriting and not request.finished
        assert answers == [] and not process_gone(pid)
        clock.advance(0.1)
        response = await eventually(lambda: answers and answers[0], "the answer")
        assert response.code == 504
        assert "504 Gateway Timeout" in await response.text()
        await eventually(lambda: process_gone(pid), "the script to die")
    finally:
        await live.stop()
    logged = [text for text in _texts(captured_log) if "sleep.py" in text]
    assert any("no header block within 5 seconds" in text for text in logged)


@pytest_twisted.ensureDeferred
async def test_script_stalling_after_its_headers_is_killed_and_cut_off(
    cgi_dir: Path,
) -> None:
    clock = Clock()
    live = await LiveServer.start(cgi_args(cgi_dir, "--cgi-timeout", "5"), clock=clock)
    try:
        response = await live.get("/cgi-bin/stall.py")
        assert response.code == 200
        pid = await eventually(lambda: _pid_from(cgi_dir / "stall.pid"), "the script")
        body = response.content()
        clock.advance(5)
        with pytest.raises(ResponseFailed):
            await body
        await eventually(lambda: process_gone(pid), "the script to die")
    finally:
        await live.stop()


class _ScriptPipes:
    """
    The process transport of a script, recording what is done to it.
    """

    def __init__(self) -> None:
        self.paused = False
        self.killed = False

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False

    def signalProcess(self, signal: str) -> None:
        self.killed = True

    def loseConnection(self) -> None:
        pass


def test_a_client_that_does_not_read_is_not_the_scripts_silence() -> None:
    clock = Clock()
    request = DummyRequest([b""])
    cut_off: list[bool] = []
    request.loseConnection = lambda: cut_off.append(True)  # type: ignore[attr-defined]
    # Twisted's DummyRequest stands in for an IRequest without declaring it.
    process = CGIProcess(cast(IRequest, request), "slow-reader.py", 5, clock)
    pipes = _ScriptPipes()
    process.transport = pipes  # type: ignore[assignment]
    process.outReceived(b"Content-Type: text/plain\r\n\r\nfirst")
    process.pauseProducing()
    clock.advance(60)
    assert pipes.paused and not pipes.killed and not cut_off
    process.resumeProducing()
    clock.advance(4.9)
    assert not pipes.killed
    clock.advance(0.1)
    assert pipes.killed and cut_off


@pytest_twisted.ensureDeferred
async def test_client_going_away_kills_the_script(
    cgi: LiveServer, cgi_dir: Path
) -> None:
    client = await connect(reactor, cgi.port_number)
    client.send(b"GET /cgi-bin/sleep.py HTTP/1.1\r\nHost: x\r\n\r\n")
    pid = await eventually(lambda: _pid_from(cgi_dir / "sleep.pid"), "the script")
    client.close()
    await client.closed
    await eventually(lambda: process_gone(pid), "the script to die")


@pytest_twisted.ensureDeferred
async def test_shutdown_past_its_grace_kills_the_script(cgi_dir: Path) -> None:
    clock = Clock()
    live = await LiveServer.start(cgi_args(cgi_dir), clock=clock)
    live.get("/cgi-bin/sleep.py").addErrback(lambda failure: None)
    pid = await eventually(lambda: _pid_from(cgi_dir / "sleep.pid"), "the script")
    stopped: list[None] = []
    live.site.shutdown([live.port], grace=10.0).addCallback(stopped.append)
    # Once the port has stopped listening, the grace period starts.
    await eventually(
        lambda: any(c.getTime() == 10.0 for c in clock.getDelayedCalls()), "grace"
    )
    clock.advance(10)
    await eventually(lambda: stopped, "the shutdown")
    await eventually(lambda: process_gone(pid), "the script to die")


# -- the demo scripts -----------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_demo_env_script_prints_its_environment(server: LiveServer) -> None:
    response = await server.get("/cgi-bin/env.py/demo?x=1")
    text = await response.text()
    assert response.code == 200
    assert response.headers.getRawHeaders("content-type") == [
        "text/plain; charset=utf-8"
    ]
    assert "SCRIPT_NAME=/cgi-bin/env.py\n" in text
    assert "PATH_INFO=/demo\n" in text
    assert "QUERY_STRING=x=1\n" in text
    names = {line.partition("=")[0] for line in text.splitlines()}
    assert {name for name in names if not name.startswith("HTTP_")} <= CGI_VARIABLES


@pytest_twisted.ensureDeferred
async def test_demo_hello_script_echoes_the_form(server: LiveServer) -> None:
    form = await server.get("/cgi-bin/hello.py")
    assert 'action="/cgi-bin/hello.py"' in await form.text()
    response = await server.post("/cgi-bin/hello.py", data={"name": "<Ada>"})
    assert response.code == 200
    assert "Hello, &lt;Ada&gt;!" in await response.text()


# -- the header block, as parsed ------------------------------------------------


def test_header_block_with_crlf_and_lf_lines() -> None:
    head = parse_head(b"Content-Type: text/plain\r\nX-A:1\nSet-Cookie: a=b\r\n")
    assert head.code == 200
    assert head.headers == (
        (b"Content-Type", b"text/plain"),
        (b"X-A", b"1"),
        (b"Set-Cookie", b"a=b"),
    )


def test_server_owned_headers_are_dropped() -> None:
    head = parse_head(
        b"Content-Type: a/b\nServer: evil\nContent-Length: 3\n"
        b"Transfer-Encoding: chunked\nConnection: keep-alive\n"
    )
    assert head.headers == ((b"Content-Type", b"a/b"),)


@pytest.mark.parametrize(
    "block",
    [
        b"",
        b"X-Only: 1\n",
        b"not a header\n",
        b"Content-Type text/plain\n",
        b"Bad Name: x\n",
        b"Content-Type: a\x00b\n",
        b"Content-Type: a\rb\n",
        b" folded: line\n",
        b"Status: 99 Low\n",
        b"Status: 600 High\n",
        b"Status: abc\n",
        b"Status: 200 OK\nStatus: 201 Created\n",
        b"Content-Type: a/b\nContent-Type: c/d\n",
    ],
)
def test_invalid_header_blocks(block: bytes) -> None:
    with pytest.raises(BadHead):
        parse_head(block)


def test_split_head_finds_the_first_blank_line() -> None:
    assert split_head(b"A: 1\r\n\r\nbody\n\nmore") == (
        b"A: 1\r\n",
        b"body\n\nmore",
        6,
    )
    assert split_head(b"A: 1\nB: 2\n") is None
    assert split_head(b"\nbody") == (b"", b"body", 0)


@given(st.binary(max_size=300))
def test_any_output_is_parsed_or_refused(output: bytes) -> None:
    found = split_head(output)
    if found is None:
        return
    block, rest, _ = found
    assert output.startswith(block) and output.endswith(rest)
    try:
        head = parse_head(block)
    except BadHead:
        return
    assert 200 <= head.code <= 599
    for _name, value in head.headers:
        assert b"\n" not in value and b"\r" not in value and b"\0" not in value


@given(st.binary(max_size=200), st.integers(min_value=1, max_value=50))
def test_output_in_pieces_splits_as_in_one(output: bytes, size: int) -> None:
    from app.mounts.cgi import resume_offset

    buffer, scan, found = b"", 0, None
    for start in range(0, len(output), size):
        buffer += output[start : start + size]
        found = split_head(buffer, scan)
        if found is not None:
            break
        scan = resume_offset(buffer)
    whole = split_head(output)
    if found is None:
        assert whole is None
    else:
        assert whole is not None and whole[0] == found[0]


def _unchunk(body: bytes) -> bytes:
    out = b""
    while body:
        size_line, _, body = body.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            break
        out, body = out + body[:size], body[size + 2 :]
    return out
