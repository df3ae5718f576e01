"""
The reverse proxy at /proxy/, against a real upstream server on 127.0.0.1.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import AsyncIterator, Callable
from typing import Any, cast

import pytest
import pytest_twisted
import treq
from twisted.internet import reactor
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.protocol import ServerFactory
from twisted.internet.task import Clock, deferLater
from twisted.logger import LogEvent, formatEvent
from twisted.web.iweb import IRequest
from twisted.web.resource import Resource
from twisted.web.server import Site
from twisted.web.test.requesthelper import DummyRequest

from app.cli.options import config_from_args
from app.config import ConfigError
from app.mounts.proxy import UPSTREAM_TIMEOUT, ReverseProxy, Upstream
from app.testing import LiveServer
from tests.conftest import failures, listen, port_number
from tests.fakes.upstream import (
    LARGE,
    PIECE,
    CannedUpstream,
    UpstreamServer,
    pattern,
)
from tests.rawhttp import RawClient, connect, exchange, parse_response


@pytest_twisted.async_yield_fixture
async def upstream() -> AsyncIterator[UpstreamServer]:
    resource = UpstreamServer()
    port = listen(Site(resource))
    resource.port = port_number(port)
    try:
        yield resource
    finally:
        if not resource.release.called:
            resource.release.callback(None)
        await maybeDeferred(port.stopListening)


async def _start(upstream: UpstreamServer, clock: Clock | None = None) -> LiveServer:
    url = f"http://127.0.0.1:{upstream.port}/base/"
    return await LiveServer.start(["--no-demo", "--proxy", url], clock=clock)


@pytest_twisted.async_yield_fixture
async def proxy(upstream: UpstreamServer) -> AsyncIterator[LiveServer]:
    live = await _start(upstream)
    try:
        yield live
    finally:
        await live.stop()


async def _raw(live: LiveServer, target: bytes, headers: bytes = b"") -> bytes:
    return await exchange(
        reactor,
        live.port_number,
        b"GET " + target + b" HTTP/1.1\r\nHost: front.example\r\n"
        b"Connection: close\r\n" + headers + b"\r\n",
    )


async def _echo(live: LiveServer, target: bytes, headers: bytes = b"") -> Any:
    status, response_headers, body = parse_response(await _raw(live, target, headers))
    assert status == 200
    return json.loads(_body(response_headers, body))


def _body(headers: dict[bytes, bytes], body: bytes) -> bytes:
    if headers.get(b"transfer-encoding") == b"chunked":
        return _dechunk(body)
    assert int(headers[b"content-length"]) == len(body)
    return body


def _dechunk(body: bytes) -> bytes:
    out = b""
    while body:
        size_line, _, body = body.partition(b"\r\n")
        size = int(size_line, 16)
        if not size:
            break
        out, body = out + body[:size], body[size + 2 :]
    return out


def _header_lines(data: bytes) -> list[tuple[bytes, bytes]]:
    head = data.partition(b"\r\n\r\n")[0]
    lines = []
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        lines.append((name.strip().lower(), value.strip()))
    return lines


async def _until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    waited = 0.0
    while not condition():
        assert waited < timeout, "condition not met in time"
        await deferLater(reactor, 0.01, lambda: None)
        waited += 0.01


async def _stop(live: LiveServer, clock: Clock) -> None:
    """
    Stop a server whose site runs on C{clock}, moving the clock past the
    grace period if a request is still in flight.
    """
    stopped = Deferred.fromCoroutine(live.stop())
    for _ in range(500):
        if stopped.called:
            break
        clock.advance(1)
        await deferLater(reactor, 0.01, lambda: None)
    await stopped


async def _within(deferred: Deferred[Any], seconds: float = 5.0) -> Any:
    deferred.addTimeout(seconds, reactor)
    return await deferred


# -- without --proxy --------------------------------------------------------


@pytest.mark.parametrize("path", ["/proxy/", "/proxy/anything?x=1"])
@pytest_twisted.ensureDeferred
async def test_without_proxy_option_proxy_is_404(server: LiveServer, path: str) -> None:
    response = await server.get(path)
    assert response.code == 404
    assert "There is nothing at this address." in await response.text()


@pytest.mark.parametrize(
    "url",
    [
        "ftp://up.example/",
        "up.example:8080",
        "http://",
        "http://up.example:99999/",
        "http://up.example/?q=1",
        "http://up.example/#f",
        "http://user:secret@up.example/",
        "http://up.example/caf\u00e9/",
        "http://up.example/a b/",
    ],
)
def test_a_bad_proxy_url_is_a_bad_option_value(url: str) -> None:
    with pytest.raises(ConfigError) as raised:
        config_from_args(["--proxy", url])
    assert raised.value.option == "--proxy"


def test_a_proxy_url_is_kept() -> None:
    url = "https://up.example:8443/base/"
    assert config_from_args(["--proxy", url]).proxy == url


# -- paths and queries ------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_mount_root_goes_to_the_base_path(proxy: LiveServer) -> None:
    answer = await _echo(proxy, b"/proxy/")
    assert answer["uri"] == "/base/"


@pytest_twisted.ensureDeferred
async def test_path_is_joined_to_the_base_path(proxy: LiveServer) -> None:
    answer = await _echo(proxy, b"/proxy/a/b/c.txt")
    assert answer["uri"] == "/base/a/b/c.txt"


@pytest_twisted.ensureDeferred
async def test_double_slash_stays_on_the_upstream(
    proxy: LiveServer, upstream: UpstreamServer
) -> None:
    answer = await _echo(proxy, b"/proxy//evil.example/x")
    assert answer["uri"] == "/base//evil.example/x"
    assert answer["headers"]["host"] == [f"127.0.0.1:{upstream.port}"]


@pytest_twisted.ensureDeferred
async def test_query_is_passed_verbatim(proxy: LiveServer) -> None:
    answer = await _echo(proxy, b"/proxy/q?b=2&a=1&a=%20x&&=;&c")
    assert answer["uri"] == "/base/q?b=2&a=1&a=%20x&&=;&c"


@pytest_twisted.ensureDeferred
async def test_an_empty_query_is_kept(proxy: LiveServer) -> None:
    answer = await _echo(proxy, b"/proxy/q?")
    assert answer["uri"] == "/base/q?"


@pytest_twisted.ensureDeferred
async def test_percent_encoding_passes_unchanged(proxy: LiveServer) -> None:
    answer = await _echo(proxy, b"/proxy/a%2Fb%20c/%C3%A9%3F?k=%26")
    assert answer["uri"] == "/base/a%2Fb%20c/%C3%A9%3F?k=%26"


@pytest.mark.parametrize(
    "target",
    [
        b"/proxy/../secret",
        b"/proxy/a/../../secret",
        b"/proxy/%2e%2e/secret",
        b"/proxy/%2E./secret",
        b"/proxy/a/..%2f..%2fsecret",
        b"/proxy/a/..%5c..%5csecret",
        b"/proxy/./x",
    ],
)
@pytest_twisted.ensureDeferred
async def test_dot_segments_never_reach_the_upstream(
    proxy: LiveServer, upstream: UpstreamServer, target: bytes
) -> None:
    status, _, body = parse_response(await _raw(proxy, target))
    assert status == 404
    assert b"There is nothing at this address." in body
    assert upstream.seen == []


@pytest.mark.parametrize(
    "target", [b"/proxy/a\x80b", b"/proxy/a#frag", b"/proxy/x?q=\xff"]
)
@pytest_twisted.ensureDeferred
async def test_a_target_that_is_not_plain_ascii_is_400(
    proxy: LiveServer, upstream: UpstreamServer, target: bytes
) -> None:
    status, _, _ = parse_response(await _raw(proxy, target))
    assert status == 400
    assert upstream.seen == []


@pytest_twisted.ensureDeferred
async def test_mount_without_slash_redirects(proxy: LiveServer) -> None:
    response = await proxy.get("/proxy?a=1", allow_redirects=False)
    assert response.code == 301
    assert response.headers.getRawHeaders(b"location") == [b"/proxy/?a=1"]


# -- methods and bodies ------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_post_body_reaches_the_upstream(proxy: LiveServer) -> None:
    response = await proxy.post(
        "/proxy/form", data=b"the-field=value&x=%00", headers={"content-type": "a/b"}
    )
    answer = await response.json()
    assert answer["method"] == "POST"
    assert answer["body"] == "the-field=value&x=%00"
    assert answer["headers"]["content-length"] == ["21"]
    assert answer["headers"]["content-type"] == ["a/b"]


@pytest_twisted.ensureDeferred
async def test_chunked_request_body_goes_upstream_with_a_length(
    proxy: LiveServer,
) -> None:
    data = await exchange(
        reactor,
        proxy.port_number,
        b"PUT /proxy/up HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
    )
    status, headers, body = parse_response(data)
    answer = json.loads(_body(headers, body))
    assert status == 200
    assert answer["method"] == "PUT"
    assert answer["body"] == "hello world"
    assert answer["headers"]["content-length"] == ["11"]
    assert "transfer-encoding" not in answer["headers"]


@pytest_twisted.ensureDeferred
async def test_a_get_sends_no_body(proxy: LiveServer) -> None:
    answer = await _echo(proxy, b"/proxy/x")
    assert answer["method"] == "GET"
    assert "content-length" not in answer["headers"]


@pytest_twisted.ensureDeferred
async def test_head_gets_the_upstream_length_and_no_body(
    proxy: LiveServer, upstream: UpstreamServer
) -> None:
    upstream.release.callback(None)
    response = await proxy.head("/proxy/large")
    assert response.code == 200
    assert response.headers.getRawHeaders(b"content-length") == [b"%d" % (LARGE,)]
    assert await response.content() == b""


@pytest_twisted.ensureDeferred
async def test_connect_is_not_proxied(
    proxy: LiveServer, upstream: UpstreamServer
) -> None:
    response = await proxy.request("CONNECT", "/proxy/x")
    assert response.code == 501
    await response.content()
    assert upstream.seen == []


# -- status and headers of the answer ----------------------------------------


@pytest.mark.parametrize(
    ("name", "code", "body"),
    [("404", 404, b"upstream has no such thing"), ("500", 500, b"upstream broke")],
)
@pytest_twisted.ensureDeferred
async def test_upstream_errors_pass_as_they_are(
    proxy: LiveServer, name: str, code: int, body: bytes
) -> None:
    response = await proxy.get(f"/proxy/{name}")
    assert response.code == code
    assert await response.content() == body


@pytest_twisted.ensureDeferred
async def test_status_and_reason_pass(proxy: LiveServer) -> None:
    status_line = (await _raw(proxy, b"/proxy/299")).partition(b"\r\n")[0]
    assert status_line == b"HTTP/1.1 299 Fine Thanks"


@pytest_twisted.ensureDeferred
async def test_a_reason_with_a_cr_is_replaced(proxy: LiveServer) -> None:
    data = await _raw(proxy, b"/proxy/injected")
    assert data.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"X-Injected" not in data


@pytest_twisted.ensureDeferred
async def test_a_status_out_of_range_is_502(proxy: LiveServer) -> None:
    response = await proxy.get("/proxy/600")
    assert response.code == 502
    assert "upstream" in await response.text()


@pytest_twisted.ensureDeferred
async def test_not_modified_passes_without_a_body(proxy: LiveServer) -> None:
    data = await _raw(proxy, b"/proxy/not-modified")
    status, headers, body = parse_response(data)
    assert status == 304
    assert headers[b"etag"] == b'"v1"'
    assert body == b""


@pytest_twisted.ensureDeferred
async def test_set_cookie_passes(proxy: LiveServer) -> None:
    response = await proxy.get("/proxy/cookie")
    assert response.headers.getRawHeaders(b"set-cookie") == [
        b"flavour=oat; Path=/",
        b"size=big; HttpOnly",
    ]
    assert await response.content() == b"cookies set"


@pytest_twisted.ensureDeferred
async def test_clients_share_no_cookie_jar(proxy: LiveServer) -> None:
    first = await proxy.get("/proxy/cookie")
    await first.content()
    # The first client's own jar sends the cookie back...
    mine = await (await proxy.get("/proxy/echo")).json()
    assert "cookie" in mine["headers"]
    # ...but the proxy keeps none: another client's request carries none.
    other = proxy.new_client()
    response = await other.get(proxy.url("/proxy/echo"))
    theirs = await response.json()
    assert "cookie" not in theirs["headers"]


@pytest_twisted.ensureDeferred
async def test_redirect_is_not_followed_and_location_is_rewritten(
    proxy: LiveServer, upstream: UpstreamServer
) -> None:
    response = await proxy.get("/proxy/redirect", allow_redirects=False)
    assert response.code == 302
    assert response.headers.getRawHeaders(b"location") == [b"/proxy/target?x=1"]
    assert response.headers.getRawHeaders(b"content-location") == [b"/proxy/here"]
    assert await response.content() == b"moved"
    assert upstream.seen == [b"/base/redirect"]


@pytest_twisted.ensureDeferred
async def test_upstream_relative_location_is_rewritten(proxy: LiveServer) -> None:
    response = await proxy.get("/proxy/redirect-path", allow_redirects=False)
    assert response.code == 301
    assert response.headers.getRawHeaders(b"location") == [b"/proxy/elsewhere/"]
    await response.content()


@pytest_twisted.ensureDeferred
async def test_foreign_location_is_left_alone(proxy: LiveServer) -> None:
    response = await proxy.get("/proxy/redirect-away", allow_redirects=False)
    assert response.headers.getRawHeaders(b"location") == [
        b"http://other.example/base/x"
    ]
    await response.content()


@pytest_twisted.ensureDeferred
async def test_gzip_passes_untouched(proxy: LiveServer) -> None:
    expected = gzip.compress(b"hello " * 1000, mtime=0)
    # Raw bytes: treq's client would decode gzip itself.
    data = await _raw(proxy, b"/proxy/gzip", b"Accept-Encoding: gzip\r\n")
    status, headers, body = parse_response(data)
    assert status == 200
    assert headers[b"content-encoding"] == b"gzip"
    assert headers[b"content-length"] == b"%d" % (len(expected),)
    assert body == expected


@pytest_twisted.ensureDeferred
async def test_accept_encoding_reaches_the_upstream(proxy: LiveServer) -> None:
    answer = await _echo(proxy, b"/proxy/x", b"Accept-Encoding: gzip, br\r\n")
    assert answer["headers"]["accept-encoding"] == ["gzip, br"]


# -- hop-by-hop and forwarding headers -----------------------------------------


@pytest_twisted.ensureDeferred
async def test_hop_by_hop_request_headers_are_dropped(proxy: LiveServer) -> None:
    answer = await _echo(
        proxy,
        b"/proxy/x",
        b"X-Drop-Me: 1\r\nX-Also: 2\r\nConnection: x-drop-me, x-also\r\n"
        b"Keep-Alive: 300\r\nTE: trailers\r\nTrailer: X-Sum\r\n"
        b"Upgrade: websocket\r\nProxy-Authorization: Basic eDp5\r\n"
        b"Proxy-Connection: keep-alive\r\nProxy-Whatever: 1\r\n"
        b"X-Keep: kept\r\nAuthorization: Basic dTpw\r\n",
    )
    headers = answer["headers"]
    for name in (
        "x-drop-me",
        "x-also",
        "connection",
        "keep-alive",
        "te",
        "trailer",
        "upgrade",
        "proxy-authorization",
        "proxy-connection",
        "proxy-whatever",
    ):
        assert name not in headers, name
    assert headers["x-keep"] == ["kept"]
    assert headers["authorization"] == ["Basic dTpw"]


@pytest_twisted.ensureDeferred
async def test_hop_by_hop_response_headers_are_dropped(proxy: LiveServer) -> None:
    data = await _raw(proxy, b"/proxy/hop")
    lines = _header_lines(data)
    names = {name for name, _ in lines}
    for name in (
        b"x-custom-hop",
        b"keep-alive",
        b"upgrade",
        b"trailer",
        b"te",
        b"proxy-authenticate",
        b"proxy-anything",
    ):
        assert name not in names, name
    # Only the proxy's own Connection header, never the upstream's.
    assert [value for name, value in lines if name == b"connection"] == [b"close"]
    assert (b"x-end-to-end", b"kept") in lines


@pytest_twisted.ensureDeferred
async def test_forwarded_headers_are_set(
    proxy: LiveServer, upstream: UpstreamServer
) -> None:
    answer = await _echo(proxy, b"/proxy/x")
    headers = answer["headers"]
    assert headers["x-forwarded-for"] == ["127.0.0.1"]
    assert headers["x-forwarded-proto"] == ["http"]
    assert headers["x-forwarded-host"] == ["front.example"]
    assert headers["host"] == [f"127.0.0.1:{upstream.port}"]


@pytest_twisted.ensureDeferred
async def test_a_client_is_appended_to_its_own_list_and_its_scheme_and_host_replaced(
    proxy: LiveServer,
) -> None:
    answer = await _echo(
        proxy,
        b"/proxy/x",
        b"X-Forwarded-For: 10.0.0.1, 10.0.0.2\r\nX-Forwarded-For: 10.0.0.3\r\n"
        b"X-Forwarded-Proto: https\r\nX-Forwarded-Host: forged.example\r\n",
    )
    headers = answer["headers"]
    # Appended to what the client sent: an upstream reads the right-most.
    assert headers["x-forwarded-for"] == ["10.0.0.1, 10.0.0.2, 10.0.0.3, 127.0.0.1"]
    assert headers["x-forwarded-proto"] == ["http"]
    assert headers["x-forwarded-host"] == ["front.example"]


@pytest_twisted.ensureDeferred
async def test_a_trusted_proxys_forwarding_values_go_on(
    upstream: UpstreamServer,
) -> None:
    url = f"http://127.0.0.1:{upstream.port}/base/"
    live = await LiveServer.start(
        ["--no-demo", "--proxy", url, "--trusted-proxy", "127.0.0.1"]
    )
    try:
        answer = await _echo(
            live,
            b"/proxy/x",
            b"X-Forwarded-For: 10.0.0.1, junk\r\nX-Forwarded-For: 10.0.0.3\r\n"
            b"X-Forwarded-Proto: https\r\nX-Forwarded-Host: public.example\r\n",
        )
    finally:
        await live.stop()
    headers = answer["headers"]
    # The chain the trusted peer vouches for, then the peer itself.
    assert headers["x-forwarded-for"] == ["10.0.0.1, unknown, 10.0.0.3, 127.0.0.1"]
    assert headers["x-forwarded-proto"] == ["https"]
    assert headers["x-forwarded-host"] == ["public.example"]


def test_forwarded_proto_is_https_over_tls() -> None:
    proxy = ReverseProxy(Upstream.from_url("http://up.example/"), reactor, Clock())
    dummy = DummyRequest([b"x"])
    dummy.isSecure = lambda: True  # type: ignore[attr-defined]
    dummy.requestHeaders.setRawHeaders(b"x-forwarded-proto", [b"http"])
    # DummyRequest does not declare IRequest, though it has what is asked here.
    headers = proxy.request_headers(cast(IRequest, dummy))
    assert headers.getRawHeaders(b"x-forwarded-proto") == [b"https"]


# -- Location rewriting, exactly ------------------------------------------------


@pytest.mark.parametrize(
    ("location", "rewritten"),
    [
        (b"http://up.example:8080/base/a?b#c", b"/proxy/a?b#c"),
        (b"HTTP://UP.EXAMPLE:8080/base/", b"/proxy/"),
        (b"//up.example:8080/base/a", b"/proxy/a"),
        (b"/base/a/b", b"/proxy/a/b"),
        (b"/base", b"/proxy"),
        (b"/base?x", b"/proxy?x"),
        (b"http://up.example:8080/base", b"/proxy"),
        (b"/basement", b"/basement"),
        (b"/other/a", b"/other/a"),
        (b"relative/a", b"relative/a"),
        (b"http://up.example:80/base/a", b"http://up.example:80/base/a"),
        (b"http://up.example:80800/base/a", b"http://up.example:80800/base/a"),
        (b"https://up.example:8080/base/a", b"https://up.example:8080/base/a"),
        (b"http://evil.example/base/a", b"http://evil.example/base/a"),
        (b"http://user@up.example:8080/base/a", b"http://user@up.example:8080/base/a"),
        (b"//evil.example/base/a", b"//evil.example/base/a"),
        (b"/\\evil.example/base/a", b"/\\evil.example/base/a"),
    ],
)
def test_rewrite_location(location: bytes, rewritten: bytes) -> None:
    upstream = Upstream.from_url("http://up.example:8080/base/")
    assert upstream.rewrite_location(location, b"/proxy/") == rewritten


@pytest.mark.parametrize(
    ("url", "location", "rewritten"),
    [
        ("http://up.example/", b"http://up.example/x", b"/proxy/x"),
        ("http://up.example/", b"http://up.example:80/x", b"/proxy/x"),
        ("http://up.example/", b"http://up.example", b"/proxy/"),
        ("http://up.example/", b"/x", b"/proxy/x"),
        ("https://up.example", b"https://up.example:443/x", b"/proxy/x"),
        ("https://up.example", b"http://up.example/x", b"http://up.example/x"),
        ("http://up.example/base", b"/base/x", b"/proxy/x"),
    ],
)
def test_rewrite_location_default_ports_and_bases(
    url: str, location: bytes, rewritten: bytes
) -> None:
    upstream = Upstream.from_url(url)
    assert upstream.rewrite_location(location, b"/proxy/") == rewritten


def test_upstream_target_is_plain_concatenation() -> None:
    upstream = Upstream.from_url("http://up.example:8080/base/")
    assert upstream.target(b"/evil.example/", None) == b"/base//evil.example/"
    assert upstream.target(b"", b"") == b"/base/?"
    assert Upstream.from_url("http://up.example").target(b"x", b"a=1") == b"/x?a=1"
    assert Upstream.from_url("http://up.example/b").target(b"x", None) == b"/b/x"


# -- an upstream that speaks badly ---------------------------------------------


async def _through_canned(answer: bytes) -> bytes:
    factory = ServerFactory.forProtocol(lambda: CannedUpstream(answer))
    port = listen(factory)  # type: ignore[arg-type]  # forProtocol is typed as Factory
    url = f"http://127.0.0.1:{port_number(port)}/"
    live = await LiveServer.start(["--no-demo", "--proxy", url])
    try:
        return await _raw(live, b"/proxy/x")
    finally:
        await live.stop()
        await maybeDeferred(port.stopListening)


@pytest.mark.parametrize(
    "answer",
    [
        b"NOT HTTP AT ALL\r\n\r\n",
        b"HTTP/1.1 2OO OK\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello",
        b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nBad Name: x\r\nContent-Length: 2\r\n\r\nok",
        b"",
    ],
)
@pytest_twisted.ensureDeferred
async def test_an_answer_that_is_not_http_is_502(answer: bytes) -> None:
    status, _, body = parse_response(await _through_canned(answer))
    assert status == 502
    assert b"502 Bad Gateway" in body


@pytest_twisted.ensureDeferred
async def test_an_upstream_content_length_beside_chunked_is_not_passed() -> None:
    data = await _through_canned(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 100\r\n"
        b"\r\n5\r\nhello\r\n0\r\n\r\n"
    )
    status, headers, body = parse_response(data)
    assert status == 200
    assert b"content-length" not in headers
    assert _body(headers, body) == b"hello"


@pytest_twisted.ensureDeferred
async def test_upstream_header_values_with_nul_are_dropped() -> None:
    data = await _through_canned(
        b"HTTP/1.1 200 OK\r\nX-Nul: a\x00b\r\nX-Ok: y\r\nContent-Length: 2\r\n\r\nok"
    )
    lines = _header_lines(data)
    assert (b"x-ok", b"y") in lines
    assert not any(name == b"x-nul" for name, _ in lines)
    assert data.endswith(b"\r\n\r\nok")


@pytest_twisted.ensureDeferred
async def test_no_content_type_is_invented() -> None:
    data = await _through_canned(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    assert b"content-type" not in dict(_header_lines(data))


@pytest_twisted.ensureDeferred
async def test_a_missing_reason_gets_the_standard_one() -> None:
    data = await _through_canned(b"HTTP/1.1 200\r\nContent-Length: 2\r\n\r\nok")
    assert data.startswith(b"HTTP/1.1 200 OK\r\n")


@pytest_twisted.ensureDeferred
async def test_a_body_read_until_close_is_passed_whole() -> None:
    data = await _through_canned(b"HTTP/1.0 200 OK\r\n\r\nbody until close")
    status, headers, body = parse_response(data)
    assert status == 200
    assert _body(headers, body) == b"body until close"


# -- failures and timeouts -----------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_unreachable_upstream_is_502(captured_log: list[LogEvent]) -> None:
    closed = listen(Site(Resource()))
    port = port_number(closed)
    await maybeDeferred(closed.stopListening)
    live = await LiveServer.start(["--no-demo", "--proxy", f"http://127.0.0.1:{port}/"])
    try:
        response = await live.get("/proxy/x")
        assert response.code == 502
        assert "could not be reached" in await response.text()
        assert failures(captured_log) == []
        assert any("failed" in formatEvent(event) for event in captured_log)
    finally:
        await live.stop()


@pytest_twisted.ensureDeferred
async def test_silent_upstream_is_504(upstream: UpstreamServer) -> None:
    clock = Clock()
    live = await _start(upstream, clock)
    try:
        arrived = upstream.next_arrival()
        gone = upstream.next_gone()
        answers: list[Any] = []
        live.get("/proxy/stall").addBoth(answers.append)
        await _within(arrived)
        clock.advance(UPSTREAM_TIMEOUT - 1)
        await deferLater(reactor, 0.05, lambda: None)
        assert answers == []
        clock.advance(1)
        await _until(lambda: bool(answers))
        response = answers[0]
        assert response.code == 504
        assert "did not answer in time" in await response.text()
        # The upstream request was given up, not left hanging.
        await _within(gone)
    finally:
        await _stop(live, clock)


@pytest_twisted.ensureDeferred
async def test_upstream_silent_mid_body_closes_the_connection(
    upstream: UpstreamServer,
) -> None:
    clock = Clock()
    live = await _start(upstream, clock)
    try:
        client = await connect(reactor, live.port_number)
        client.send(b"GET /proxy/stall-body HTTP/1.1\r\nHost: x\r\n\r\n")
        await _until(lambda: client.received.endswith(b"a" * 100))
        clock.advance(UPSTREAM_TIMEOUT - 1)
        assert not client.closed.called
        clock.advance(1)
        data = await _within(client.closed)
        status, headers, body = parse_response(data)
        assert status == 200
        assert headers[b"content-length"] == b"1000"
        assert body == b"a" * 100
    finally:
        await _stop(live, clock)


@pytest_twisted.ensureDeferred
async def test_a_steady_body_is_not_timed_out(upstream: UpstreamServer) -> None:
    clock = Clock()
    live = await _start(upstream, clock)
    try:
        clock.advance(UPSTREAM_TIMEOUT - 1)
        response = await live.get("/proxy/x")
        clock.advance(UPSTREAM_TIMEOUT - 1)
        assert response.code == 200
        assert (await response.json())["uri"] == "/base/x"
    finally:
        await _stop(live, clock)


@pytest_twisted.ensureDeferred
async def test_upstream_reset_mid_body_closes_the_client_connection(
    proxy: LiveServer, captured_log: list[LogEvent]
) -> None:
    client = await connect(reactor, proxy.port_number)
    client.send(b"GET /proxy/reset HTTP/1.1\r\nHost: x\r\n\r\n")
    data = await _within(client.closed)
    status, headers, body = parse_response(data)
    assert status == 200
    assert headers[b"content-length"] == b"1000"
    assert body == b"r" * 100
    assert any("broke off" in formatEvent(event) for event in captured_log)
    assert failures(captured_log) == []
    # The next request is fine.
    answer = await _echo(proxy, b"/proxy/after")
    assert answer["uri"] == "/base/after"


@pytest_twisted.ensureDeferred
async def test_client_going_away_cancels_the_upstream_request(
    proxy: LiveServer, upstream: UpstreamServer, captured_log: list[LogEvent]
) -> None:
    arrived = upstream.next_arrival()
    gone = upstream.next_gone()
    client = await connect(reactor, proxy.port_number)
    client.send(b"GET /proxy/stall HTTP/1.1\r\nHost: x\r\n\r\n")
    await _within(arrived)
    client.close()
    await _within(gone)
    await _until(lambda: not proxy_exchanges(proxy))
    assert failures(captured_log) == []


@pytest_twisted.ensureDeferred
async def test_client_going_away_mid_body_closes_the_upstream(
    proxy: LiveServer, upstream: UpstreamServer
) -> None:
    gone = upstream.next_gone()
    client = await connect(reactor, proxy.port_number)
    client.send(b"GET /proxy/stall-body HTTP/1.1\r\nHost: x\r\n\r\n")
    await _until(lambda: client.received.endswith(b"a" * 100))
    client.close()
    await _within(gone)


def proxy_exchanges(live: LiveServer) -> set[Any]:
    for service in live.site.service:
        proxy = getattr(service, "_proxy", None)
        if isinstance(proxy, ReverseProxy):
            return proxy.exchanges
    raise AssertionError("no proxy service")


@pytest_twisted.ensureDeferred
async def test_stopping_does_not_wait_for_the_upstream(
    upstream: UpstreamServer,
) -> None:
    clock = Clock()
    live = await _start(upstream, clock)
    arrived = upstream.next_arrival()
    gone = upstream.next_gone()
    answer = live.get("/proxy/stall")
    answer.addErrback(lambda _: None)
    await _within(arrived)
    stopped = live.site.shutdown([live.port], grace=10.0)
    while not stopped.called:
        assert clock.seconds() < 10.0 + 1, "the stop waited past the grace period"
        await deferLater(reactor, 0.01, lambda: None)
        clock.advance(0.5)
    await _within(gone)
    assert proxy_exchanges(live) == set()
    await live.stop()


# -- streaming -----------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_large_body_streams_before_the_upstream_finishes(
    proxy: LiveServer, upstream: UpstreamServer
) -> None:
    response = await proxy.get("/proxy/large")
    assert response.code == 200
    assert response.length == LARGE
    received: list[bytes] = []
    done = treq.collect(response, received.append)
    await _until(lambda: sum(map(len, received)) >= PIECE)
    assert not upstream.large_done
    upstream.release.callback(None)
    await _within(done)
    assert upstream.large_done
    assert b"".join(received) == pattern(LARGE)


@pytest_twisted.ensureDeferred
async def test_a_client_that_does_not_read_pauses_the_upstream(
    proxy: LiveServer, upstream: UpstreamServer
) -> None:
    client: RawClient = await connect(reactor, proxy.port_number)
    assert client.transport is not None
    client.transport.pauseProducing()  # type: ignore[attr-defined]
    client.send(b"GET /proxy/firehose HTTP/1.1\r\nHost: x\r\n\r\n")
    await _until(lambda: upstream.firehose is not None)
    firehose = upstream.firehose
    assert firehose is not None

    async def settled() -> int:
        # The upstream is paused and stays paused.
        while True:
            await _until(lambda: firehose.paused)
            sent = firehose.sent
            await deferLater(reactor, 0.3, lambda: None)
            if firehose.paused and firehose.sent == sent:
                return sent

    sent = await settled()
    assert sent < 32 * 1024 * 1024
    assert not firehose.finished
    client.close()
