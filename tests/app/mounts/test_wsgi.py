"""
WSGI at /wsgi/, another prefix or /: real applications on the site's thread
pool, through a live server.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
import werkzeug
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import UNIXClientEndpoint, connectProtocol
from twisted.internet.interfaces import IReactorFromThreads, IReactorUNIX
from twisted.internet.task import Clock
from twisted.logger import LogEvent
from twisted.web.client import ResponseFailed

from app.cli.options import config_from_args
from app.config import Config
from app.mounts.wsgi import WSGIThreadPool
from app.site import build_site
from app.testing import LiveServer
from tests.conftest import eventually, failures
from tests.paths import ROOT
from tests.rawhttp import RawClient, connect, exchange, parse_response

StartResponse = Callable[..., Any]


def echo_app(environ: dict[str, Any], start_response: StartResponse) -> list[bytes]:
    """
    Answers with its environ (the strings) and the body it read, as JSON.
    """
    length = int(environ.get("CONTENT_LENGTH") or 0)
    body = environ["wsgi.input"].read(length)
    shown = {k: v for k, v in environ.items() if isinstance(v, str)}
    shown["wsgi.multithread"] = environ["wsgi.multithread"]
    answer = json.dumps({"environ": shown, "body": body.decode("latin-1")}).encode()
    start_response(
        "200 OK",
        [("Content-Type", "application/json"), ("Content-Length", str(len(answer)))],
    )
    return [answer]


def fails_before_start(environ: dict[str, Any], start_response: StartResponse) -> Any:
    raise RuntimeError("kaboom before start_response")


def fails_after_start(environ: dict[str, Any], start_response: StartResponse) -> Any:
    start_response("200 OK", [("Content-Type", "text/plain"), ("X-Lost", "yes")])

    def body() -> Iterator[bytes]:
        yield b""
        raise RuntimeError("kaboom after start_response")

    return body()


def fails_mid_body(environ: dict[str, Any], start_response: StartResponse) -> Any:
    start_response("200 OK", [("Content-Type", "text/plain")])

    def body() -> Iterator[bytes]:
        yield b"partial"
        raise RuntimeError("kaboom mid-body")

    return body()


def bad_status(environ: dict[str, Any], start_response: StartResponse) -> Any:
    start_response("OK", [("Content-Type", "text/plain")])
    return [b"never sent"]


def bad_header(environ: dict[str, Any], start_response: StartResponse) -> Any:
    start_response("200 OK", [("X-Evil", "a\r\nSet-Cookie: x=1")])
    return [b"never sent"]


def hop_by_hop(environ: dict[str, Any], start_response: StartResponse) -> Any:
    start_response("200 OK", [("Transfer-Encoding", "chunked")])
    return [b"never sent"]


def long_body(environ: dict[str, Any], start_response: StartResponse) -> Any:
    start_response("200 OK", [("Content-Length", "3")])
    return [b"abc", b"smuggled"]


def short_body(environ: dict[str, Any], start_response: StartResponse) -> Any:
    start_response("200 OK", [("Content-Length", "10")])
    return [b"abc"]


def never_starts(environ: dict[str, Any], start_response: StartResponse) -> Any:
    return []


def writes_before_start(environ: dict[str, Any], start_response: StartResponse) -> Any:
    return [b"no status yet"]


def two_lengths(environ: dict[str, Any], start_response: StartResponse) -> Any:
    start_response("200 OK", [("Content-Length", "3"), ("Content-Length", "11")])
    return [b"abc", b"smuggled"]


class Closing:
    """
    An iterable that fails, and remembers whether it was closed.
    """

    closed = False

    def __init__(self, environ: dict[str, Any], start_response: StartResponse):
        start_response("200 OK", [("Content-Type", "text/plain")])

    def __iter__(self) -> Iterator[bytes]:
        raise RuntimeError("kaboom in iteration")

    def close(self) -> None:
        Closing.closed = True


def _config(application: Any, *args: str) -> Config:
    return dataclasses.replace(
        config_from_args(["--no-demo", *args]), wsgi_app=application
    )


@pytest_twisted.async_yield_fixture
async def echo() -> AsyncIterator[LiveServer]:
    live = await LiveServer.start(_config(echo_app))
    try:
        yield live
    finally:
        await live.stop()


async def _environ(response: Any) -> dict[str, Any]:
    assert response.code == 200
    result: dict[str, Any] = json.loads(await response.text())
    return result


# -- the environ ------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_script_name_and_path_info(echo: LiveServer) -> None:
    environ = (await _environ(await echo.get("/wsgi/a/b")))["environ"]
    assert environ["SCRIPT_NAME"] == "/wsgi"
    assert environ["PATH_INFO"] == "/a/b"


@pytest_twisted.ensureDeferred
async def test_path_info_of_the_mount_itself_is_a_slash(echo: LiveServer) -> None:
    environ = (await _environ(await echo.get("/wsgi/")))["environ"]
    assert environ["SCRIPT_NAME"] == "/wsgi"
    assert environ["PATH_INFO"] == "/"


# -- where it is mounted ----------------------------------------------------

ECHO = "tests.app.mounts.test_wsgi:echo_app"


@werkzeug.Request.application
def framework_app(request: werkzeug.Request) -> werkzeug.Response:
    """
    A werkzeug application: the URLs it makes for itself come from the
    environ the server gives it.
    """
    return werkzeug.Response(
        json.dumps({"url": request.url, "root": request.script_root}),
        content_type="application/json",
    )


@pytest_twisted.async_yield_fixture
async def at_root() -> AsyncIterator[LiveServer]:
    """
    The demo, tests.example_routes, and echo_app at / behind them.
    """
    live = await LiveServer.start(
        ["--wsgi", f"/={ECHO}", "--routes", "tests.example_routes"]
    )
    try:
        yield live
    finally:
        await live.stop()


@pytest.mark.parametrize(
    ("prefix", "path", "script_name", "path_info"),
    [
        ("app", "/app/a/b", "/app", "/a/b"),
        ("/app/", "/app/", "/app", "/"),
        ("app/v1", "/app/v1/x%20y", "/app/v1", "/x y"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_mounted_at_a_prefix(
    prefix: str, path: str, script_name: str, path_info: str
) -> None:
    live = await LiveServer.start(["--no-demo", "--wsgi", f"{prefix}={ECHO}"])
    try:
        environ = (await _environ(await live.get(path)))["environ"]
        assert (environ["SCRIPT_NAME"], environ["PATH_INFO"]) == (
            script_name,
            path_info,
        )
        assert (await live.get("/wsgi/a")).code == 404
    finally:
        await live.stop()


@pytest_twisted.ensureDeferred
async def test_a_prefix_without_its_slash_redirects() -> None:
    live = await LiveServer.start(["--no-demo", "--wsgi", f"app={ECHO}"])
    try:
        response = await live.get("/app?a=1", allow_redirects=False)
        assert response.code == 301
        assert response.headers.getRawHeaders("location") == ["/app/?a=1"]
    finally:
        await live.stop()


@pytest.mark.parametrize(
    ("path", "path_info"),
    [("/a/b", "/a/b"), ("/wsgi/x", "/wsgi/x"), ("/clock/", "/clock/")],
)
@pytest_twisted.ensureDeferred
async def test_at_root_it_takes_every_path_no_route_takes(
    at_root: LiveServer, path: str, path_info: str
) -> None:
    environ = (await _environ(await at_root.get(path)))["environ"]
    assert (environ["SCRIPT_NAME"], environ["PATH_INFO"]) == ("", path_info)


@pytest.mark.parametrize(
    ("path", "code", "text"),
    [
        ("/health", 200, "ok"),
        ("/", 200, "Twisted Web in 60 seconds"),
        ("/calendar/2026", 200, "2026"),
        ("/hello", 200, "Hello from a route module"),
        ("/static/", 200, "<html"),
        ("/cgi-bin/hello.py", 200, "<form"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_at_root_every_route_still_wins(
    at_root: LiveServer, path: str, code: int, text: str
) -> None:
    response = await at_root.get(path)
    assert response.code == code
    assert text in await response.text()


@pytest_twisted.ensureDeferred
async def test_at_root_a_route_with_the_wrong_method_is_still_405(
    at_root: LiveServer,
) -> None:
    response = await at_root.post("/health", data=b"")
    assert response.code == 405


@pytest_twisted.ensureDeferred
async def test_at_root_without_the_demo_it_serves_the_index_too() -> None:
    live = await LiveServer.start(["--no-demo", "--wsgi", f"/={ECHO}"])
    try:
        environ = (await _environ(await live.get("/")))["environ"]
        assert (environ["SCRIPT_NAME"], environ["PATH_INFO"]) == ("", "/")
        assert await (await live.get("/health")).text() == "ok"
    finally:
        await live.stop()


@pytest.mark.parametrize(
    ("prefix", "path", "root"), [("app", "/app/x?q=1", "/app"), ("/", "/x?q=1", "")]
)
@pytest_twisted.ensureDeferred
async def test_a_framework_app_builds_its_own_urls(
    prefix: str, path: str, root: str
) -> None:
    live = await LiveServer.start(
        ["--no-demo", "--wsgi", f"{prefix}=tests.app.mounts.test_wsgi:framework_app"]
    )
    try:
        response = await live.get(path)
        assert response.code == 200
        assert json.loads(await response.text()) == {
            "url": live.url(path),
            "root": root,
        }
    finally:
        await live.stop()


@pytest_twisted.ensureDeferred
async def test_path_info_is_decoded_as_latin_1(echo: LiveServer) -> None:
    environ = (await _environ(await echo.get("/wsgi/caf%C3%A9%20x")))["environ"]
    assert environ["PATH_INFO"] == "/café x".encode().decode("latin-1")


@pytest_twisted.ensureDeferred
async def test_query_string_is_verbatim(echo: LiveServer) -> None:
    environ = (await _environ(await echo.get("/wsgi/q?a=1&b=%20+c;d")))["environ"]
    assert environ["QUERY_STRING"] == "a=1&b=%20+c;d"


@pytest_twisted.ensureDeferred
async def test_post_body_is_the_input(echo: LiveServer) -> None:
    response = await echo.post(
        "/wsgi/form", data=b"x=1&y=2", headers={"Content-Type": "text/plain"}
    )
    result = await _environ(response)
    assert result["body"] == "x=1&y=2"
    assert result["environ"]["CONTENT_LENGTH"] == "7"
    assert result["environ"]["CONTENT_TYPE"] == "text/plain"
    assert result["environ"]["REQUEST_METHOD"] == "POST"


@pytest_twisted.ensureDeferred
async def test_chunked_body_has_its_length(echo: LiveServer) -> None:
    data = await exchange(
        reactor,
        echo.port_number,
        b"POST /wsgi/ HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
        b"Connection: close\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
    )
    status, _, body = parse_response(data)
    assert status == 200
    result = json.loads(body)
    assert result["body"] == "hello world"
    assert result["environ"]["CONTENT_LENGTH"] == "11"


@pytest_twisted.ensureDeferred
async def test_request_headers_reach_the_application(echo: LiveServer) -> None:
    data = await exchange(
        reactor,
        echo.port_number,
        b"GET /wsgi/ HTTP/1.1\r\nHost: example.org:8000\r\nAuthorization: Basic x\r\n"
        b"Proxy: http://evil:1/\r\nX_Forwarded_For: 6.6.6.6\r\nCookie: a=1\r\n"
        b"Cookie: b=2\r\nConnection: close\r\n\r\n",
    )
    status, _, body = parse_response(data)
    assert status == 200
    environ = json.loads(body)["environ"]
    assert environ["HTTP_AUTHORIZATION"] == "Basic x"
    assert environ["HTTP_COOKIE"] == "a=1; b=2"
    assert environ["SERVER_NAME"] == "example.org"
    assert environ["SERVER_PORT"] == str(echo.port_number)
    assert "HTTP_PROXY" not in environ
    assert "HTTP_X_FORWARDED_FOR" not in environ


@pytest_twisted.ensureDeferred
async def test_wsgi_keys(echo: LiveServer) -> None:
    environ = (await _environ(await echo.get("/wsgi/")))["environ"]
    assert environ["wsgi.url_scheme"] == "http"
    assert environ["wsgi.multithread"] is True
    assert environ["SERVER_PROTOCOL"] == "HTTP/1.1"
    assert environ["REMOTE_ADDR"] == "127.0.0.1"


@pytest_twisted.ensureDeferred
async def test_application_named_by_module_and_callable() -> None:
    config = Config(wsgi="tests.app.mounts.test_wsgi:echo_app")
    live = await LiveServer.start(config)
    try:
        environ = (await _environ(await live.get("/wsgi/named")))["environ"]
        assert environ["PATH_INFO"] == "/named"
    finally:
        await live.stop()


@pytest_twisted.ensureDeferred
async def test_served_over_a_unix_socket(tmp_path: Path) -> None:
    site = build_site(_config(echo_app), reactor)
    path = str(tmp_path / "s.sock")
    # Twisted annotates a bare Factory, which no factory of a protocol matches.
    port = IReactorUNIX(reactor).listenUNIX(path, site)  # type: ignore[arg-type]
    site.service.startService()
    try:
        client = await connectProtocol(UNIXClientEndpoint(reactor, path), RawClient())
        client.send(b"GET /wsgi/u HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
        status, _, body = parse_response(await client.closed)
        assert status == 200
        environ = json.loads(body)["environ"]
        assert environ["PATH_INFO"] == "/u"
        assert environ["SERVER_NAME"] == "h"
        assert environ["SERVER_PORT"] == "80"
    finally:
        await site.shutdown([port], grace=1.0)


@pytest_twisted.ensureDeferred
async def test_demo_application(server: LiveServer) -> None:
    response = await server.get("/wsgi/some/where")
    assert response.code == 200
    assert response.headers.getRawHeaders("content-type") == [
        "text/plain; charset=utf-8"
    ]
    text = await response.text()
    assert "SCRIPT_NAME: /wsgi\n" in text
    assert "PATH_INFO: /some/where\n" in text


@pytest_twisted.ensureDeferred
async def test_without_an_application_there_is_no_wsgi() -> None:
    live = await LiveServer.start(["--no-demo"])
    try:
        response = await live.get("/wsgi/")
        assert response.code == 404
    finally:
        await live.stop()


# -- failures -------------------------------------------------------------


@pytest.mark.parametrize(
    ("application", "message"),
    [
        (fails_before_start, "kaboom before start_response"),
        (fails_after_start, "kaboom after start_response"),
        (bad_status, "not a status line"),
        (bad_header, "cannot be sent"),
        (hop_by_hop, "hop-by-hop"),
        (never_starts, "start_response"),
        (writes_before_start, "start_response"),
        (two_lengths, "Content-Length"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_failing_application_is_500_page_logged_once(
    application: Any, message: str, captured_log: list[LogEvent]
) -> None:
    live = await LiveServer.start(_config(application))
    try:
        response = await live.get("/wsgi/")
        body = await response.text()
        assert response.code == 500
        assert response.headers.getRawHeaders("content-type") == [
            "text/html; charset=utf-8"
        ]
        assert response.headers.getRawHeaders("x-lost") is None
        assert "500 Internal Server Error" in body
        assert "kaboom" not in body and "Traceback" not in body
        [logged] = failures(captured_log)
        assert message in logged["log_failure"].getErrorMessage()
        again = await live.get("/health")
        assert again.code == 200
    finally:
        await live.stop()


@pytest_twisted.ensureDeferred
async def test_failure_page_shows_traceback_only_when_asked() -> None:
    live = await LiveServer.start(_config(fails_before_start, "--display-tracebacks"))
    try:
        response = await live.get("/wsgi/")
        assert response.code == 500
        assert "kaboom before start_response" in await response.text()
    finally:
        await live.stop()


@pytest_twisted.ensureDeferred
async def test_failure_mid_body_closes_the_connection(
    captured_log: list[LogEvent],
) -> None:
    live = await LiveServer.start(_config(fails_mid_body))
    try:
        response = await live.get("/wsgi/")
        assert response.code == 200
        with pytest.raises(ResponseFailed):
            await response.content()
        assert len(failures(captured_log)) == 1
    finally:
        await live.stop()


@pytest.mark.parametrize("application", [long_body, short_body])
@pytest_twisted.ensureDeferred
async def test_body_not_matching_content_length_closes_the_connection(
    application: Any,
) -> None:
    live = await LiveServer.start(_config(application))
    try:
        data = await exchange(
            reactor,
            live.port_number,
            b"GET /wsgi/ HTTP/1.1\r\nHost: x\r\n\r\n"
            b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n",
        )
        assert b"smuggled" not in data
        assert data.count(b"HTTP/1.1 ") == 1
    finally:
        await live.stop()


@pytest_twisted.ensureDeferred
async def test_iterable_is_closed_when_iterating_fails() -> None:
    Closing.closed = False
    live = await LiveServer.start(_config(Closing))
    try:
        response = await live.get("/wsgi/")
        assert response.code == 500
        await response.content()
        assert Closing.closed
    finally:
        await live.stop()


# -- threads and shutdown ------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_hanging_application_does_not_hold_the_shutdown() -> None:
    release = threading.Event()
    entered: Deferred[None] = Deferred()

    def hang(environ: dict[str, Any], start_response: StartResponse) -> Any:
        IReactorFromThreads(reactor).callFromThread(entered.callback, None)
        release.wait(30)
        start_response("200 OK", [])
        return [b"too late"]

    clock = Clock()
    live = await LiveServer.start(_config(hang), clock=clock)
    try:
        outcome: list[Any] = []
        live.get("/wsgi/").addBoth(outcome.append)
        await entered
        stopped: list[None] = []
        live.site.shutdown([live.port], grace=10.0).addCallback(stopped.append)
        # Once the port has stopped listening, the grace period starts.
        await eventually(
            lambda: any(c.getTime() == 10.0 for c in clock.getDelayedCalls()),
            "the grace period to start",
        )
        clock.advance(9.9)
        assert stopped == []
        clock.advance(0.1)  # the grace is over: the request is cut off
        await eventually(lambda: stopped and outcome, "the shutdown")
        assert isinstance(outcome[0].value, ResponseFailed)
        pools = [s.pool for s in live.site.service if hasattr(s, "pool")]
        assert [pool.started for pool in pools] == [False]
        busy = [t for pool in pools for t in pool.threads if t.is_alive()]
        assert busy and all(thread.daemon for thread in busy)
    finally:
        release.set()


def test_pool_threads_are_daemons() -> None:
    pool = WSGIThreadPool(minthreads=1, maxthreads=1)
    pool.start()
    try:
        assert pool.threads and all(thread.daemon for thread in pool.threads)
    finally:
        pool.stop()


#: A server with an application that never returns, stopped with a grace of
#: 0.2 s: the process must exit although the application's thread never ends.
DRIVER = """
import threading
from twisted.internet import reactor
from twisted.internet.defer import ensureDeferred
from app.config import Config
from app.testing import LiveServer

servers = []

def hang(environ, start_response):
    reactor.callFromThread(entered)
    threading.Event().wait()

def entered():
    print("entered", flush=True)
    live = servers[0]
    live.site.shutdown([live.port], grace=0.2).addBoth(lambda _: reactor.stop())

def started(live):
    servers.append(live)
    live.get("/wsgi/").addErrback(lambda failure: None)

config = Config(wsgi=None, wsgi_app=hang)
reactor.callWhenRunning(
    lambda: ensureDeferred(LiveServer.start(config)).addCallback(started)
)
reactor.run()
print("reactor stopped", flush=True)
"""


def test_hanging_application_does_not_delay_the_exit() -> None:
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-c", DRIVER],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=20,
    )
    elapsed = time.monotonic() - started
    assert result.returncode == 0, result.stderr
    assert "entered" in result.stdout
    assert "reactor stopped" in result.stdout
    assert elapsed < 10


# -- a client that does not read ---------------------------------------------

FIREHOSE_PIECE = b"x" * (64 * 1024)
FIREHOSE_TOTAL = 64 << 20


class Firehose:
    """
    Writes C{FIREHOSE_TOTAL} bytes, counting them as it goes.
    """

    written = 0
    finished = False
    closed = False

    def __init__(self, environ: dict[str, Any], start_response: StartResponse):
        start_response("200 OK", [("Content-Type", "application/octet-stream")])

    def __iter__(self) -> Iterator[bytes]:
        while Firehose.written < FIREHOSE_TOTAL:
            Firehose.written += len(FIREHOSE_PIECE)
            yield FIREHOSE_PIECE
        Firehose.finished = True

    def close(self) -> None:
        Firehose.closed = True


@pytest_twisted.ensureDeferred
async def test_a_client_that_does_not_read_holds_the_application_back() -> None:
    Firehose.written, Firehose.finished, Firehose.closed = 0, False, False
    live = await LiveServer.start(_config(Firehose))
    try:
        client = await connect(reactor, live.port_number)
        client.pause_reading()
        client.send(b"GET /wsgi/ HTTP/1.1\r\nHost: x\r\n\r\n")
        await eventually(lambda: Firehose.written > 0, "the application to write")
        # A full send buffer pauses the channel, and the channel its producer:
        # from then on the application is held where it is.
        await eventually(
            lambda: any(c.waiting_for == "reader" for c in live.site.channels),
            "the server to fill its send buffer",
        )
        assert not Firehose.finished
        assert Firehose.written < FIREHOSE_TOTAL // 2
        client.close()
        await client.closed
        # The client left: the application's thread is let go.
        await eventually(lambda: Firehose.closed, "the application to be closed")
    finally:
        await live.stop()
