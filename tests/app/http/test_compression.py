"""
gzip content coding and the freshness of the server's own responses
(SPEC §15), in memory: through the agent under a L{StubTreq}, which sends
C{Accept-Encoding} only when a test does and hands back the bytes sent.
This module is also the route module (C{--routes}) that the tests ask.
"""

from __future__ import annotations

import gzip

import pytest
from klein import Klein
from treq.testing import StubTreq
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactor
from twisted.web.http_headers import Headers
from twisted.web.iweb import IRequest

from app.cli.options import config_from_args
from app.http.compression import accepts_gzip, compressible
from app.site import build_site
from app.testing import stub_treq
from tests.conftest import fetch_undecoded, header_of, length_of

app = Klein()

TEXT = b"".join(b"line %d of a text long enough to compress\n" % n for n in range(100))
STRONG_ETAG = b'"text-1"'


@app.route("/text")
def text(request: IRequest) -> bytes:
    request.setHeader(b"content-type", b"text/plain; charset=utf-8")
    request.setHeader(b"etag", STRONG_ETAG)
    return TEXT


@app.route("/json")
def json(request: IRequest) -> bytes:
    request.setHeader(b"content-type", b"application/problem+json")
    return b'{"items": [%s]}' % b", ".join(b'"item %d"' % n for n in range(200))


@app.route("/png")
def png(request: IRequest) -> bytes:
    request.setHeader(b"content-type", b"image/png")
    return TEXT


@app.route("/small")
def small(request: IRequest) -> bytes:
    request.setHeader(b"content-type", b"text/plain; charset=utf-8")
    return TEXT[:1023]


@app.route("/streamed")
async def streamed(request: IRequest) -> bytes:
    request.setHeader(b"content-type", b"text/plain; charset=utf-8")
    for piece in (b"one ", b"two ", b"three"):
        request.write(piece)
    return b""


@app.route("/encoded")
def encoded(request: IRequest) -> bytes:
    request.setHeader(b"content-type", b"text/plain; charset=utf-8")
    request.setHeader(b"content-encoding", b"br")
    return TEXT


@app.route("/varied")
def varied(request: IRequest) -> bytes:
    request.setHeader(b"content-type", b"text/html; charset=utf-8")
    request.setHeader(b"vary", b"Cookie")
    return TEXT


@app.route("/partial")
def partial(request: IRequest) -> bytes:
    request.setResponseCode(206)
    request.setHeader(b"content-type", b"text/plain; charset=utf-8")
    request.setHeader(b"content-range", b"bytes 0-%d/9999" % (len(TEXT) - 1,))
    return TEXT


@app.route("/empty")
def empty(request: IRequest) -> bytes:
    request.setResponseCode(204)
    return b""


@app.route("/cached")
def cached(request: IRequest) -> bytes:
    request.setHeader(b"cache-control", b"max-age=60")
    return b"kept a minute"


@pytest.fixture
def client() -> StubTreq:
    argv = ["--routes", __name__]
    return stub_treq(build_site(config_from_args(argv), MemoryReactor(), Clock()))


# -- what is compressed ------------------------------------------------------


def test_a_large_text_body_is_gzipped_for_a_client_that_accepts_it(
    client: StubTreq,
) -> None:
    response, body = fetch_undecoded(
        client, "/text", accept_encoding="gzip, deflate, br"
    )
    assert header_of(response, b"content-encoding") == b"gzip"
    assert gzip.decompress(body) == TEXT
    assert header_of(response, b"vary") == b"Accept-Encoding"


def test_a_body_written_whole_is_sent_with_its_compressed_length(
    client: StubTreq,
) -> None:
    response, body = fetch_undecoded(client, "/text", accept_encoding="gzip")
    assert length_of(response) == len(body)
    assert len(body) < len(TEXT)


def test_a_gzipped_body_has_a_weak_etag(client: StubTreq) -> None:
    response, _ = fetch_undecoded(client, "/text", accept_encoding="gzip")
    assert header_of(response, b"etag") == b"W/" + STRONG_ETAG


def test_a_plus_json_body_is_gzipped(client: StubTreq) -> None:
    response, body = fetch_undecoded(client, "/json", accept_encoding="gzip")
    assert header_of(response, b"content-encoding") == b"gzip"
    assert gzip.decompress(body).startswith(b'{"items": ["item 0"')


def test_a_body_of_unknown_length_is_gzipped_as_it_is_written(
    client: StubTreq,
) -> None:
    response, body = fetch_undecoded(client, "/streamed", accept_encoding="gzip")
    assert header_of(response, b"content-encoding") == b"gzip"
    assert length_of(response) is None
    assert gzip.decompress(body) == b"one two three"


def test_the_demo_index_is_gzipped(client: StubTreq) -> None:
    response, body = fetch_undecoded(client, "/", accept_encoding="gzip")
    assert header_of(response, b"content-encoding") == b"gzip"
    assert gzip.decompress(body).startswith(b"<!DOCTYPE html>")


# -- what is not -------------------------------------------------------------


def test_no_accept_encoding_gets_the_identity_body_with_vary(
    client: StubTreq,
) -> None:
    response, body = fetch_undecoded(client, "/text")
    assert header_of(response, b"content-encoding") is None
    assert body == TEXT
    assert header_of(response, b"vary") == b"Accept-Encoding"
    assert header_of(response, b"etag") == STRONG_ETAG
    assert length_of(response) == len(TEXT)


@pytest.mark.parametrize(
    "accept_encoding",
    ["identity", "br", "gzip;q=0", "*;q=0", "gzip;q=0, *", "br, gzip;q=0.5, identity"],
)
def test_an_accept_encoding_refusing_gzip_gets_the_identity_body(
    client: StubTreq, accept_encoding: str
) -> None:
    response, body = fetch_undecoded(client, "/text", accept_encoding=accept_encoding)
    assert header_of(response, b"content-encoding") is None
    assert body == TEXT
    assert header_of(response, b"vary") == b"Accept-Encoding"


@pytest.mark.parametrize(
    "accept_encoding",
    ["gzip", "GZIP;Q=0.5", "*", "x-gzip", "identity;q=0, gzip", "br;q=1, gzip;q=0.1"],
)
def test_an_accept_encoding_allowing_gzip_gets_gzip(
    client: StubTreq, accept_encoding: str
) -> None:
    response, body = fetch_undecoded(client, "/text", accept_encoding=accept_encoding)
    assert header_of(response, b"content-encoding") == b"gzip"
    assert gzip.decompress(body) == TEXT


def test_a_body_under_one_kib_is_sent_as_it_is(client: StubTreq) -> None:
    response, body = fetch_undecoded(client, "/small", accept_encoding="gzip")
    assert header_of(response, b"content-encoding") is None
    assert header_of(response, b"vary") is None
    assert body == TEXT[:1023]


def test_the_health_check_is_sent_as_it_is(client: StubTreq) -> None:
    response, body = fetch_undecoded(client, "/health", accept_encoding="gzip")
    assert header_of(response, b"content-encoding") is None
    assert body == b"ok"


def test_an_incompressible_type_is_sent_as_it_is_without_vary(
    client: StubTreq,
) -> None:
    response, body = fetch_undecoded(client, "/png", accept_encoding="gzip")
    assert header_of(response, b"content-encoding") is None
    assert header_of(response, b"vary") is None
    assert body == TEXT


def test_a_head_gets_the_identity_head_with_vary(client: StubTreq) -> None:
    response, body = fetch_undecoded(
        client, "/text", method=b"HEAD", accept_encoding="gzip"
    )
    assert header_of(response, b"content-encoding") is None
    assert header_of(response, b"vary") == b"Accept-Encoding"
    assert header_of(response, b"etag") == STRONG_ETAG
    assert body == b""


def test_a_request_with_range_gets_the_identity_body(client: StubTreq) -> None:
    response, body = fetch_undecoded(
        client, "/text", accept_encoding="gzip", range="bytes=0-9"
    )
    assert header_of(response, b"content-encoding") is None
    assert body == TEXT


def test_a_206_is_never_gzipped(client: StubTreq) -> None:
    response, body = fetch_undecoded(client, "/partial", accept_encoding="gzip")
    assert response.code == 206
    assert header_of(response, b"content-encoding") is None
    assert body == TEXT


def test_a_204_is_left_alone(client: StubTreq) -> None:
    response, body = fetch_undecoded(client, "/empty", accept_encoding="gzip")
    assert response.code == 204
    assert header_of(response, b"content-encoding") is None
    assert body == b""


def test_a_body_already_encoded_is_sent_as_it_is(client: StubTreq) -> None:
    response, body = fetch_undecoded(client, "/encoded", accept_encoding="gzip, br")
    assert header_of(response, b"content-encoding") == b"br"
    assert body == TEXT


def test_accept_encoding_joins_a_vary_already_there(client: StubTreq) -> None:
    for accept_encoding in ("gzip", "identity"):
        response, _ = fetch_undecoded(
            client, "/varied", accept_encoding=accept_encoding
        )
        assert header_of(response, b"vary") == b"Cookie, Accept-Encoding"


# -- the rules themselves ----------------------------------------------------


@pytest.mark.parametrize(
    ("value", "accepted"),
    [
        (b"gzip", True),
        (b"deflate, gzip;q=1.0, *;q=0.5", True),
        (b"*;q=0.1", True),
        (b"gzip;q=0, *;q=1", False),
        (b"gzip;q=bad", False),
        (b"gzip;q=2", False),
        (b"", False),
        (b"identity;q=1, gzip;q=0.9", False),
    ],
)
def test_accept_encoding_is_read_with_its_weights(value: bytes, accepted: bool) -> None:
    assert accepts_gzip(Headers({b"accept-encoding": [value]})) is accepted


def test_a_request_without_accept_encoding_does_not_accept_gzip() -> None:
    assert not accepts_gzip(Headers())


@pytest.mark.parametrize(
    ("content_type", "expected"),
    [
        (b"text/html; charset=utf-8", True),
        (b"TEXT/CSS", True),
        (b"application/json", True),
        (b"text/javascript", True),
        (b"application/javascript", True),
        (b"image/svg+xml", True),
        (b"application/xml", True),
        (b"application/atom+xml", True),
        (b"application/ld+json", True),
        (b"image/png", False),
        (b"application/gzip", False),
        (b"application/octet-stream", False),
    ],
)
def test_compressible_types(content_type: bytes, expected: bool) -> None:
    assert compressible(content_type) is expected


# -- freshness ---------------------------------------------------------------


def test_a_dynamic_page_is_not_stored(client: StubTreq) -> None:
    response, _ = fetch_undecoded(client, "/text")
    assert header_of(response, b"cache-control") == b"no-store"


def test_an_error_page_is_not_stored(client: StubTreq) -> None:
    response, _ = fetch_undecoded(client, "/nowhere")
    assert response.code == 404
    assert header_of(response, b"cache-control") == b"no-store"


def test_a_redirect_says_how_long_it_may_be_kept(client: StubTreq) -> None:
    response, _ = fetch_undecoded(client, "/text/")
    assert response.code == 301
    assert header_of(response, b"cache-control") == b"max-age=300"


def test_a_route_keeps_the_cache_control_it_sets(client: StubTreq) -> None:
    response, _ = fetch_undecoded(client, "/cached")
    assert header_of(response, b"cache-control") == b"max-age=60"
