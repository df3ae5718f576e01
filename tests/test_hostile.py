"""
Hostile input against the HTTP layer and the router: never a 500, a hang,
a traceback in the log or a crash.
"""

from __future__ import annotations

import re

import pytest
import pytest_twisted
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet import reactor
from twisted.logger import LogEvent

from app.cli.main import parse_endpoints
from app.cli.options import config_from_args
from app.config import ConfigError
from app.testing import LiveServer
from tests.conftest import failures
from tests.rawhttp import exchange, parse_response


@pytest_twisted.ensureDeferred
async def test_pipelined_requests_are_answered_in_order(server: LiveServer) -> None:
    data = await exchange(
        reactor,
        server.port_number,
        b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"
        b"GET /pay HTTP/1.1\r\nHost: x\r\n\r\n"
        b"GET /calendar/1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    statuses = [int(code) for code in re.findall(rb"HTTP/1\.1 (\d{3}) ", data)]
    assert statuses == [200, 402, 200]


@pytest_twisted.ensureDeferred
async def test_http_1_0_without_host(server: LiveServer) -> None:
    data = await exchange(reactor, server.port_number, b"GET /health HTTP/1.0\r\n\r\n")
    status, _, body = parse_response(data)
    assert status == 200
    assert body == b"ok"


@pytest.mark.parametrize(
    "target",
    [
        b"/health?" + b"q" * 8000,
        b"/health?%00%ff%fe%0d%0a=%0d%0a",
        b"/form?the-field=%ff",
        b"/calendar/%ff%fe",
        b"/%ff",
        b"/static/%ff/%00",
        b"/%2e%2e/%2e%2e/etc/passwd",
        b"/clock?" + b"&" * 5000,
        b"/health#fragment",
        b"*",
        b"http://example.invalid/health",
    ],
)
@pytest.mark.parametrize("method", [b"GET", b"HEAD"])
@pytest_twisted.ensureDeferred
async def test_odd_targets_never_fail(
    server: LiveServer, captured_log: list[LogEvent], target: bytes, method: bytes
) -> None:
    data = await exchange(
        reactor,
        server.port_number,
        method
        + b" "
        + target
        + b" HTTP/1.1\r\nHost: \xff\xfe\r\nConnection: close\r\n\r\n",
    )
    status = parse_response(data)[0]
    assert status < 500
    assert failures(captured_log) == []


@pytest_twisted.ensureDeferred
async def test_binary_header_values_never_fail(
    server: LiveServer, captured_log: list[LogEvent]
) -> None:
    data = await exchange(
        reactor,
        server.port_number,
        b"GET /clock HTTP/1.1\r\nHost: x\r\nUser-Agent: \x80\x9f\xff\xfe\r\n"
        b"Cookie: \xff=\xfe; ;;=\r\nReferer: \xe9[31m\r\nConnection: close\r\n\r\n",
    )
    assert parse_response(data)[0] == 200
    assert failures(captured_log) == []


@pytest.mark.parametrize(
    "headers",
    [
        b"X-Forwarded-For: \x80\xff, \xfe:\xff, [::1\r\n",
        b"X-Forwarded-For: " + b"10.0.0.1, " * 1500 + b"\r\n",
        b'X-Forwarded-Proto: \xff\r\nForwarded: for="\\\r\n',
        b'Forwarded: for="[::1]:99999";proto=h\xfftps, for=\r\n',
        b"Forwarded: " + b";" * 4000 + b"\r\n",
    ],
)
@pytest_twisted.ensureDeferred
async def test_garbage_forwarding_headers_from_a_trusted_proxy_never_fail(
    captured_log: list[LogEvent], headers: bytes
) -> None:
    live = await LiveServer.start(["--trusted-proxy", "127.0.0.1"])
    try:
        data = await exchange(
            reactor,
            live.port_number,
            b"GET /session HTTP/1.1\r\nHost: x\r\n"
            + headers
            + b"Connection: close\r\n\r\n",
        )
    finally:
        await live.stop()
    assert parse_response(data)[0] == 200
    assert failures(captured_log) == []


_option_text = st.text(
    alphabet=st.characters(blacklist_categories=["Cs"], blacklist_characters="\x00"),
    max_size=40,
)


@settings(suppress_health_check=[HealthCheck.too_slow], max_examples=150)
@given(
    value=_option_text,
    option=st.sampled_from(
        [
            "--mount",
            "--cgi-interpreter",
            "--proxy",
            "--realm",
            "--max-body",
            "--idle-timeout",
            "--trusted-proxy",
        ]
    ),
)
def test_option_values_are_accepted_or_a_config_error(option: str, value: str) -> None:
    try:
        config_from_args(["--no-demo", option, value])
    except (ConfigError, SystemExit):
        pass


@settings(suppress_health_check=[HealthCheck.too_slow], max_examples=150)
@given(value=_option_text)
def test_any_listen_value_is_an_endpoint_or_a_config_error(value: str) -> None:
    try:
        parse_endpoints(reactor, config_from_args(["--no-demo", "--listen", value]))
    except (ConfigError, SystemExit):
        pass


@settings(
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    max_examples=150,
)
@given(content=st.binary(max_size=400))
def test_password_files_parse_or_name_a_line(
    tmp_path_factory: pytest.TempPathFactory, content: bytes
) -> None:
    from auth import parse_htdigest, parse_htpasswd
    from auth._errors import PasswordFileError

    path = tmp_path_factory.mktemp("files") / "users"
    path.write_bytes(content)
    for parse in (parse_htpasswd, lambda p: parse_htdigest(p, "app")):
        try:
            users = parse(path)
        except PasswordFileError as error:
            assert error.args
        else:
            assert all(isinstance(name, str) and name for name in users)


@settings(suppress_health_check=[HealthCheck.too_slow], max_examples=60)
@given(
    lines=st.lists(
        st.tuples(
            st.text(alphabet="abcxyz.:/\\ #\t", min_size=0, max_size=8),
            st.sampled_from(["app", "other", ""]),
            st.text(alphabet="0123456789abcdefABCDEF:", min_size=0, max_size=40),
        ),
        max_size=6,
    )
)
def test_htdigest_lines_of_the_right_shape_parse_or_name_a_line(
    tmp_path_factory: pytest.TempPathFactory, lines: list[tuple[str, str, str]]
) -> None:
    from auth import parse_htdigest
    from auth._errors import PasswordFileError

    path = tmp_path_factory.mktemp("files") / "users.htdigest"
    path.write_text("\n".join(":".join(parts) for parts in lines) + "\n")
    try:
        users = parse_htdigest(path, "app")
    except PasswordFileError:
        return
    for name, user in users.items():
        assert "/" not in name and not name.startswith(".")
        assert len(user.md5) == 32


@pytest_twisted.ensureDeferred
async def test_a_client_leaving_mid_upload_is_no_error(
    server: LiveServer, captured_log: list[LogEvent]
) -> None:
    from tests.rawhttp import connect

    client = await connect(reactor, server.port_number)
    client.send(
        b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 500000\r\n\r\n"
        + b"u" * 1000
    )
    client.close()
    await client.closed
    data = await exchange(
        reactor,
        server.port_number,
        b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    assert parse_response(data)[0] == 200
    assert failures(captured_log) == []
