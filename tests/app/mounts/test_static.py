"""
Static files (SPEC §4): containment, types, validators, ranges, directories
and mounts, over HTTP to sites serving real files: in memory through
L{StubTreq}, and on a live server where a test needs a real connection (a
client that stops reading or leaves, descriptors of a finished connection,
targets that a client library would re-encode, answers compared byte for
byte).
"""

from __future__ import annotations

import gc
import itertools
import os
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from hypothesis import given
from hypothesis import strategies as st
from treq.testing import StubTreq
from twisted.internet.defer import maybeDeferred
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactor
from twisted.web import http
from twisted.web.resource import Resource

from app.cli.options import config_from_args
from app.config import DEMO_STATIC, ConfigError
from app.http.site import Site
from app.mounts.static import (
    MAX_RANGES,
    TYPES,
    StaticDirectory,
    byte_ranges,
    content_type,
    is_text,
)
from app.site import build_site
from app.testing import LiveServer, stub_treq
from tests.conftest import (
    eventually,
    failures,
    listen,
    memory_client,
    port_number,
    success_result_of,
)
from tests.rawhttp import connect, exchange, parse_response

TEN = b"0123456789"
SECRET = b"TOP SECRET"
NOT_FOUND_TEXT = b"There is nothing at this address."
BASE = "http://example.invalid"
#: A fixed time for files whose validators the tests compare.
MTIME = 1_700_000_000


def _make_tree(base: Path) -> Path:
    """
    A served directory with every kind of file the tests ask for, and a
    secret outside it.
    """
    outside = base / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_bytes(SECRET)
    root = base / "root"
    root.mkdir()
    (root / "ten.txt").write_bytes(TEN)
    os.utime(root / "ten.txt", (MTIME, MTIME))
    (root / "hundred.txt").write_bytes(bytes(range(100)))
    (root / "empty.txt").write_bytes(b"")
    (root / "page.html").write_bytes(b"<p>hi</p>")
    (root / "data.json").write_bytes(b"{}")
    (root / "picture.svg").write_bytes(b"<svg/>")
    (root / "app.js").write_bytes(b"1;")
    (root / "blob.unknownext").write_bytes(b"?")
    (root / "noextension").write_bytes(b"?")
    (root / "package.deb").write_bytes(b"?")
    (root / "sub").mkdir()
    (root / "sub" / "index.html").write_bytes(b"<p>sub index</p>")
    (root / "sub" / ".hidden").write_bytes(SECRET)
    (root / "sub" / ".well-known").mkdir()
    (root / "sub" / ".well-known" / "x.txt").write_bytes(SECRET)
    (root / "listless").mkdir()
    (root / "listless" / "file.txt").write_bytes(b"x")
    (root / ".secret").write_bytes(SECRET)
    (root / ".git").mkdir()
    (root / ".git" / "config").write_bytes(SECRET)
    (root / ".well-known").mkdir()
    (root / ".well-known" / "x.txt").write_bytes(b"well known")
    (root / "inner-link.txt").symlink_to(root / "ten.txt")
    (root / "escape-link.txt").symlink_to(outside / "secret.txt")
    (root / "escape-dir").symlink_to(outside)
    (root / "dot-link.txt").symlink_to(root / ".secret")
    (root / "relative-escape.txt").symlink_to("../outside/secret.txt")
    os.mkfifo(root / "fifo.txt")
    return root


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    return _make_tree(tmp_path)


def _arguments(tree: Path) -> list[str]:
    """
    C{tree} at /static/ and at /docs/, and no demo.
    """
    return ["--no-demo", "--static", str(tree), "--mount", f"docs={tree}"]


def _client(argv: list[str]) -> StubTreq:
    """
    An in-memory client of the site that C{argv} describes.
    """
    return stub_treq(build_site(config_from_args(argv), MemoryReactor(), Clock()))


@pytest.fixture
def client(tree: Path) -> StubTreq:
    """
    A client, in memory, of a site with C{tree} at /static/ and at /docs/.
    """
    return _client(_arguments(tree))


@pytest_twisted.async_yield_fixture
async def files(tree: Path) -> AsyncIterator[LiveServer]:
    """
    A live server with C{tree} at /static/ and at /docs/, and no demo.
    """
    live = await LiveServer.start(_arguments(tree))
    try:
        yield live
    finally:
        await live.stop()


async def _raw(
    live: LiveServer,
    target: bytes,
    headers: bytes = b"",
    method: bytes = b"GET",
) -> tuple[int, dict[bytes, bytes], bytes]:
    """
    One request with exactly this target and these header lines.
    """
    return parse_response(await _sent(live, method, target, headers))


async def _sent(
    live: LiveServer, method: bytes, target: bytes, headers: bytes
) -> bytes:
    """
    The bytes answering one request with exactly this target and these
    header lines.
    """
    return await exchange(
        live.reactor,
        live.port_number,
        method + b" " + target + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
        b"" + headers + b"\r\n",
        timeout=5,
    )


def _request(
    client: StubTreq,
    method: str,
    target: bytes,
    headers: dict[str, bytes] | None = None,
    **kwargs: Any,
) -> Any:
    """
    The response to one request for C{target}, which the site has answered
    by the time the client is flushed.
    """
    # StubTreq sets its methods at run time.
    pending = client.request(  # type: ignore[attr-defined]
        method,
        BASE + target.decode("ascii"),
        headers={name: [value] for name, value in (headers or {}).items()},
        allow_redirects=False,
        **kwargs,
    )
    client.flush()
    return success_result_of(pending)


def _content(client: StubTreq, response: Any) -> bytes:
    """
    The body of C{response}, with the file producer pumped to its end.
    """
    pending = response.content()
    client.flush()
    content: bytes = success_result_of(pending)
    return content


def _get(client: StubTreq, path: str, **headers: str) -> Any:
    return _request(
        client,
        "GET",
        path.encode("ascii"),
        {k.replace("_", "-"): v.encode("utf-8") for k, v in headers.items()},
    )


def _answer(
    client: StubTreq,
    target: bytes,
    headers: dict[str, bytes] | None = None,
    method: str = "GET",
    **kwargs: Any,
) -> tuple[int, dict[bytes, bytes], bytes]:
    """
    One request in memory, answered as L{_raw} gives it: the status, each
    header's last value under its lower-case name, and the body.
    """
    response = _request(client, method, target, headers, **kwargs)
    body = _content(client, response)
    return (
        response.code,
        {
            name.lower(): values[-1]
            for name, values in response.headers.getAllRawHeaders()
        },
        body,
    )


def _header(response: Any, name: str) -> bytes | None:
    values = response.headers.getRawHeaders(name.encode("ascii"))
    return None if values is None else values[-1]


# -- containment ---------------------------------------------------------------

TRAVERSALS = [
    b"/static/../outside/secret.txt",
    b"/static/%2e%2e/outside/secret.txt",
    b"/static/%2E%2E/outside/secret.txt",
    b"/static/.%2e/outside/secret.txt",
    b"/static/%252e%252e/outside/secret.txt",
    b"/static/..%2foutside%2fsecret.txt",
    b"/static/%2e%2e%2foutside%2fsecret.txt",
    b"/static/sub/../../outside/secret.txt",
    b"/static/sub/%2e%2e/%2e%2e/outside/secret.txt",
    b"/static/..%5coutside%5csecret.txt",
    b"/static/%5c..%5coutside%5csecret.txt",
    b"/static/..\\outside\\secret.txt",
    b"/static/..",
    b"/static/%2e%2e/",
    b"/static/.",
    b"/static/./ten.txt",
    b"/static//etc/passwd",
    b"/static/sub//index.html",
    b"/static/%2fetc%2fpasswd",
    b"/static/%2f%2fevil.example/",
    b"/static/ten.txt%00.html",
    b"/static/ten.txt%00",
    b"/static/escape-link.txt",
    b"/static/relative-escape.txt",
    b"/static/escape-dir/secret.txt",
    b"/static/escape-dir/",
    b"/static/.secret",
    b"/static/%2esecret",
    b"/static/.git/config",
    b"/static/.git/",
    b"/static/sub/.hidden",
    b"/static/dot-link.txt",
    b"/static/sub/.well-known/x.txt",
    b"/static/.well-known/../.secret",
    b"/static/fifo.txt",
    b"/static/ten.txt/",
    b"/static/nothing-here.txt",
    b"/docs/../outside/secret.txt",
    b"/docs/%2e%2e/outside/secret.txt",
    b"/docs/escape-link.txt",
    b"/docs/.secret",
]


#: A target that a client library would percent-encode before sending: only
#: raw bytes on a real connection put it in front of the server as it is.
BACKSLASHES = b"/static/..\\outside\\secret.txt"


def _refused_with_the_not_found_page(
    answer: tuple[int, dict[bytes, bytes], bytes],
) -> None:
    code, headers, body = answer
    assert code == 404
    assert headers[b"content-type"] == b"text/html; charset=utf-8"
    assert NOT_FOUND_TEXT in body
    assert SECRET not in body


@pytest.mark.parametrize(
    "target",
    [t for t in TRAVERSALS if t != BACKSLASHES],
    ids=lambda t: t.decode("latin-1"),
)
def test_refused_paths_are_404(client: StubTreq, target: bytes) -> None:
    _refused_with_the_not_found_page(_answer(client, target))


@pytest_twisted.ensureDeferred
async def test_refused_path_with_raw_backslashes_is_404(files: LiveServer) -> None:
    _refused_with_the_not_found_page(await _raw(files, BACKSLASHES))


def test_paths_that_are_not_utf8_are_refused(client: StubTreq) -> None:
    code, _, body = _answer(client, b"/static/%c0%ae%c0%ae/outside/secret.txt")
    assert code in (400, 404)
    assert SECRET not in body


@pytest_twisted.ensureDeferred
async def test_raw_paths_that_are_not_utf8_are_refused(files: LiveServer) -> None:
    # A client library would send this byte encoded as UTF-8.
    code, _, body = await _raw(files, b"/static/\xff")
    assert code in (400, 404)
    assert SECRET not in body


def test_well_known_is_the_one_dot_directory_served(client: StubTreq) -> None:
    code, headers, body = _answer(client, b"/static/.well-known/x.txt")
    assert (code, body) == (200, b"well known")
    assert headers[b"content-type"] == b"text/plain; charset=utf-8"


def test_symlink_inside_the_root_is_served(client: StubTreq) -> None:
    response = _get(client, "/static/inner-link.txt")
    assert response.code == 200
    assert _content(client, response) == TEN


def test_a_fifo_neither_hangs_nor_is_served(client: StubTreq) -> None:
    started = time.monotonic()
    code, _, _ = _answer(client, b"/static/fifo.txt")
    assert code == 404
    assert time.monotonic() - started < 1


# -- methods --------------------------------------------------------------------


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH", "OPTIONS"])
def test_other_methods_are_405_with_allow(client: StubTreq, method: str) -> None:
    response = _request(client, method, b"/static/ten.txt", data=b"x")
    assert response.code == 405
    assert _header(response, "allow") == b"GET, HEAD"
    assert b"This address does not take that method." in _content(client, response)


def test_head_is_get_without_a_body(client: StubTreq) -> None:
    code, headers, body = _answer(client, b"/static/ten.txt", method="HEAD")
    assert code == 200
    assert headers[b"content-length"] == b"10"
    assert headers[b"content-type"] == b"text/plain; charset=utf-8"
    assert b"etag" in headers
    assert body == b""


def test_head_of_a_missing_file_is_404_without_a_body(
    client: StubTreq, captured_log: list[Any]
) -> None:
    code, _, body = _answer(client, b"/static/missing", method="HEAD")
    assert (code, body) == (404, b"")
    assert not [e for e in captured_log if "HEAD" in str(e.get("log_format", ""))]


# -- content types -------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("ten.txt", b"text/plain; charset=utf-8"),
        ("page.html", b"text/html; charset=utf-8"),
        ("data.json", b"application/json; charset=utf-8"),
        ("picture.svg", b"image/svg+xml; charset=utf-8"),
        ("app.js", b"text/javascript; charset=utf-8"),
        ("blob.unknownext", b"application/octet-stream"),
        ("noextension", b"application/octet-stream"),
        # In /etc/mime.types on Debian, but not in the project's table.
        ("package.deb", b"application/octet-stream"),
    ],
)
def test_content_type_comes_from_the_shipped_table(
    client: StubTreq, name: str, expected: bytes
) -> None:
    response = _get(client, f"/static/{name}")
    _content(client, response)
    assert response.code == 200
    assert _header(response, "content-type") == expected


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("a.PNG", b"image/png"),
        ("archive.tar.gz", b"application/gzip"),
        ("style.css", b"text/css; charset=utf-8"),
        ("feed.atom", b"application/atom+xml; charset=utf-8"),
        ("x.", b"application/octet-stream"),
        ("css", b"application/octet-stream"),
    ],
)
def test_content_type_by_extension(name: str, expected: bytes) -> None:
    assert content_type(name) == expected


def test_content_type_of_every_listed_extension_in_any_case() -> None:
    for extension, media_type in TYPES.items():
        charset = "; charset=utf-8" if is_text(media_type) else ""
        expected = (media_type + charset).encode("ascii")
        assert content_type("file" + extension) == expected
        assert content_type("FILE" + extension.upper()) == expected


# -- validators and conditional requests ---------------------------------------


def test_etag_is_strong_and_stable_and_last_modified_is_the_mtime(
    client: StubTreq,
) -> None:
    first = _get(client, "/static/ten.txt")
    second = _get(client, "/static/ten.txt")
    _content(client, first)
    _content(client, second)
    etag = _header(first, "etag")
    assert etag is not None
    assert re.fullmatch(rb'"[!#-~]+"', etag)
    assert _header(second, "etag") == etag
    assert _header(first, "last-modified") == http.datetimeToString(MTIME)


def test_etag_changes_with_the_file(client: StubTreq, tree: Path) -> None:
    before = _get(client, "/static/ten.txt")
    _content(client, before)
    (tree / "ten.txt").write_bytes(b"9876543210")
    os.utime(tree / "ten.txt", (MTIME + 5, MTIME + 5))
    after = _get(client, "/static/ten.txt")
    assert _content(client, after) == b"9876543210"
    assert _header(after, "etag") != _header(before, "etag")


def _etag(client: StubTreq) -> str:
    response = _get(client, "/static/ten.txt")
    _content(client, response)
    etag = _header(response, "etag")
    assert etag is not None
    return etag.decode("ascii")


@pytest.mark.parametrize(
    "template", ["{etag}", '"other", {etag}', "W/{etag}", "*", '"a",W/{etag} ,"b"']
)
def test_if_none_match_gives_304(client: StubTreq, template: str) -> None:
    etag = _etag(client)
    response = _get(client, "/static/ten.txt", if_none_match=template.format(etag=etag))
    assert response.code == 304
    assert _content(client, response) == b""
    assert _header(response, "etag") == etag.encode("ascii")


@pytest.mark.parametrize("value", ['"other"', "garbage", "W/", '""', "\u00e9"])
def test_if_none_match_without_a_match_gives_200(client: StubTreq, value: str) -> None:
    response = _get(client, "/static/ten.txt", if_none_match=value)
    assert response.code == 200
    assert _content(client, response) == TEN


@pytest.mark.parametrize("seconds", [MTIME, MTIME + 3600], ids=["same-time", "later"])
def test_if_modified_since_gives_304(client: StubTreq, seconds: int) -> None:
    date = http.datetimeToString(seconds).decode("ascii")
    response = _get(client, "/static/ten.txt", if_modified_since=date)
    assert response.code == 304
    assert _content(client, response) == b""


@pytest.mark.parametrize(
    "value",
    [
        http.datetimeToString(MTIME - 1).decode("ascii"),
        "garbage",
        "",
        "Sun, 99 Foo 1994 08:49:37 GMT",
        "Sunday, 06-Nov-94",
    ],
)
def test_if_modified_since_earlier_or_malformed_gives_200(
    client: StubTreq, value: str
) -> None:
    response = _get(client, "/static/ten.txt", if_modified_since=value)
    assert response.code == 200
    assert _content(client, response) == TEN


def test_if_none_match_takes_precedence_over_if_modified_since(
    client: StubTreq,
) -> None:
    date = http.datetimeToString(MTIME).decode("ascii")
    response = _get(
        client, "/static/ten.txt", if_none_match='"other"', if_modified_since=date
    )
    assert response.code == 200
    assert _content(client, response) == TEN


def test_failed_if_match_and_if_unmodified_since_are_412(
    client: StubTreq,
) -> None:
    mismatch = _get(client, "/static/ten.txt", if_match='"other"')
    earlier = http.datetimeToString(MTIME - 1).decode("ascii")
    modified = _get(client, "/static/ten.txt", if_unmodified_since=earlier)
    matching = _get(client, "/static/ten.txt", if_match=_etag(client))
    assert (mismatch.code, modified.code, matching.code) == (412, 412, 200)
    assert _content(client, matching) == TEN


# -- ranges ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "part", "content_range"),
    [
        ("bytes=0-4", b"01234", b"bytes 0-4/10"),
        ("bytes=-3", b"789", b"bytes 7-9/10"),
        ("bytes=5-", b"56789", b"bytes 5-9/10"),
        ("bytes=-1000", TEN, b"bytes 0-9/10"),
        ("bytes=9-9", b"9", b"bytes 9-9/10"),
        ("bytes=3-1000", b"3456789", b"bytes 3-9/10"),
        ("bytes=0-99999999999999999999999999", TEN, b"bytes 0-9/10"),
        ("Bytes=2-3", b"23", b"bytes 2-3/10"),
        ("bytes= 2-3 ,", b"23", b"bytes 2-3/10"),
        ("bytes=100-200,2-3", b"23", b"bytes 2-3/10"),
        ("bytes=0-2," + "9" * 5000 + "-", b"012", b"bytes 0-2/10"),
    ],
)
def test_single_range_is_206_with_the_part_length(
    client: StubTreq, value: str, part: bytes, content_range: bytes
) -> None:
    response = _get(client, "/static/ten.txt", range=value)
    assert response.code == 206
    assert _content(client, response) == part
    assert _header(response, "content-range") == content_range
    assert response.length == len(part)
    assert _header(response, "content-type") == b"text/plain; charset=utf-8"


@pytest.mark.parametrize(
    "value",
    ["bytes=100-200", "bytes=10-", "bytes=-0", "bytes=99999999999999999999999-"],
)
def test_unsatisfiable_range_is_416_with_the_size(client: StubTreq, value: str) -> None:
    response = _get(client, "/static/ten.txt", range=value)
    assert response.code == 416
    assert _header(response, "content-range") == b"bytes */10"
    assert b"The requested range is not satisfiable." in _content(client, response)


def test_any_range_of_an_empty_file_is_416(client: StubTreq) -> None:
    response = _get(client, "/static/empty.txt", range="bytes=0-")
    assert response.code == 416
    assert _header(response, "content-range") == b"bytes */0"


ODD_RANGES = [
    b"bytes=5-1",
    b"garbage",
    b"bytes=",
    b"bytes=-",
    b"bytes=abc",
    b"bytes=--1",
    b"bytes=1-2-3",
    b"bytes=0x1-2",
    b"bytes = 0-4",
    b"bytes=0 - 4",
    b"items=0-4",
    b"=0-4",
    b"bytes=,,,",
    b"bytes=+1-2",
    b"bytes=\xff\xfe-1",
    b"bytes=\xd9\xa1-\xd9\xa2",
    b"bytes=0-0," * 1000 + b"0-0",
    b"bytes=0-5,3-8",
    b"bytes=0-4,4-8",
    b"bytes=-5,0-5",
    b"x" * 10000,
    bytes(range(32, 127)) * 80,
]


@pytest.mark.parametrize("value", ODD_RANGES, ids=lambda v: repr(v[:30]))
def test_malformed_or_overlapping_ranges_get_the_whole_file_quickly(
    client: StubTreq, value: bytes
) -> None:
    started = time.monotonic()
    code, headers, body = _answer(client, b"/static/ten.txt", {"range": value})
    assert time.monotonic() - started < 1
    assert (code, body) == (200, TEN)
    assert b"content-range" not in headers


def test_more_than_sixteen_ranges_get_the_whole_file(client: StubTreq) -> None:
    ranges = ",".join(f"{n}-{n}" for n in range(0, 2 * (MAX_RANGES + 1), 2))
    response = _get(client, "/static/hundred.txt", range=f"bytes={ranges}")
    assert response.code == 200
    assert _content(client, response) == bytes(range(100))


def _parts(response: Any, body: bytes) -> list[tuple[dict[bytes, bytes], bytes]]:
    content_type = _header(response, "content-type")
    assert content_type is not None
    match = re.fullmatch(
        rb"multipart/byteranges; boundary=([0-9A-Za-z'()+_,./:=?-]+)", content_type
    )
    assert match is not None
    delimiter = b"\r\n--" + match.group(1)
    pieces = body.split(delimiter)
    assert pieces[0] == b""
    assert pieces[-1] == b"--\r\n"
    parts = []
    for piece in pieces[1:-1]:
        assert piece.startswith(b"\r\n")
        head, _, data = piece[2:].partition(b"\r\n\r\n")
        headers = {}
        for line in head.split(b"\r\n"):
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip()
        parts.append((headers, data))
    return parts


def test_two_disjoint_ranges_are_multipart(client: StubTreq) -> None:
    response = _get(client, "/static/ten.txt", range="bytes=7-8, 0-1")
    body = _content(client, response)
    assert response.code == 206
    assert response.length == len(body)
    assert _header(response, "content-range") is None
    assert _parts(response, body) == [
        (
            {
                b"content-type": b"text/plain; charset=utf-8",
                b"content-range": b"bytes 7-8/10",
            },
            b"78",
        ),
        (
            {
                b"content-type": b"text/plain; charset=utf-8",
                b"content-range": b"bytes 0-1/10",
            },
            b"01",
        ),
    ]


def test_sixteen_disjoint_ranges_are_served(client: StubTreq) -> None:
    starts = range(0, 6 * MAX_RANGES, 6)
    spec = ",".join(f"{n}-{n + 2}" for n in starts)
    response = _get(client, "/static/hundred.txt", range=f"bytes={spec}")
    body = _content(client, response)
    assert response.code == 206
    parts = _parts(response, body)
    assert [data for _, data in parts] == [bytes([n, n + 1, n + 2]) for n in starts]
    assert [h[b"content-range"] for h, _ in parts] == [
        b"bytes %d-%d/100" % (n, n + 2) for n in starts
    ]


def test_head_ignores_range(client: StubTreq) -> None:
    code, headers, body = _answer(
        client, b"/static/ten.txt", {"range": b"bytes=0-4"}, method="HEAD"
    )
    assert (code, headers[b"content-length"], body) == (200, b"10", b"")


def test_if_range_with_the_current_etag_or_date_honours_range(
    client: StubTreq,
) -> None:
    date = http.datetimeToString(MTIME).decode("ascii")
    by_etag = _get(client, "/static/ten.txt", range="bytes=0-1", if_range=_etag(client))
    by_date = _get(client, "/static/ten.txt", range="bytes=0-1", if_range=date)
    assert (by_etag.code, _content(client, by_etag)) == (206, b"01")
    assert (by_date.code, _content(client, by_date)) == (206, b"01")


@pytest.mark.parametrize(
    "value",
    [
        '"stale"',
        http.datetimeToString(MTIME - 60).decode("ascii"),
        http.datetimeToString(MTIME + 60).decode("ascii"),
        "garbage",
    ],
)
def test_if_range_with_a_stale_validator_gets_the_whole_file(
    client: StubTreq, value: str
) -> None:
    response = _get(client, "/static/ten.txt", range="bytes=0-1", if_range=value)
    assert response.code == 200
    assert _content(client, response) == TEN


def test_if_range_with_a_weak_etag_gets_the_whole_file(
    client: StubTreq,
) -> None:
    weak = "W/" + _etag(client)
    response = _get(client, "/static/ten.txt", range="bytes=0-1", if_range=weak)
    assert response.code == 200
    assert _content(client, response) == TEN


@given(st.binary(max_size=200), st.integers(min_value=0, max_value=1000))
def test_byte_ranges_are_within_the_file_disjoint_and_few(
    value: bytes, size: int
) -> None:
    ranges = byte_ranges(value, size)
    if ranges is None:
        return
    assert len(ranges) <= MAX_RANGES
    for first, last in ranges:
        assert 0 <= first <= last < size
    ordered = sorted(ranges)
    assert all(b[0] > a[1] for a, b in itertools.pairwise(ordered))


@given(
    st.lists(
        st.tuples(
            st.one_of(st.none(), st.integers(0, 2000)),
            st.one_of(st.none(), st.integers(0, 2000)),
        ),
        min_size=1,
        max_size=20,
    ),
    st.integers(min_value=0, max_value=1000),
)
def test_byte_ranges_of_well_formed_headers(
    specs: list[tuple[int | None, int | None]], size: int
) -> None:
    text = ",".join(
        f"{'' if a is None else a}-{'' if b is None else b}" for a, b in specs
    )
    ranges = byte_ranges(b"bytes=" + text.encode(), size)
    if ranges:
        assert len(ranges) <= MAX_RANGES
        assert all(0 <= first <= last < size for first, last in ranges)


# -- directories ------------------------------------------------------------------


def test_directory_serves_its_index(client: StubTreq) -> None:
    response = _get(client, "/static/sub/")
    assert response.code == 200
    assert _content(client, response) == b"<p>sub index</p>"
    assert _header(response, "content-type") == b"text/html; charset=utf-8"


def test_directory_without_index_is_404_not_a_listing(client: StubTreq) -> None:
    response = _get(client, "/static/listless/")
    body = _content(client, response)
    assert response.code == 404
    assert b"file.txt" not in body


@pytest.mark.parametrize(
    ("target", "location"),
    [
        (b"/static/sub", b"/static/sub/"),
        (b"/static/sub?a=1&b=%20c", b"/static/sub/?a=1&b=%20c"),
        (b"/static/listless", b"/static/listless/"),
        (b"/static/.well-known?x", b"/static/.well-known/?x"),
        (b"/static", b"/static/"),
        (b"/static?q=1", b"/static/?q=1"),
        (b"/docs/sub?q", b"/docs/sub/?q"),
        (b"/docs", b"/docs/"),
    ],
)
@pytest.mark.parametrize(("method", "code"), [("GET", 301), ("HEAD", 301)])
def test_directory_without_its_slash_redirects_keeping_the_query(
    client: StubTreq, target: bytes, location: bytes, method: str, code: int
) -> None:
    status, headers, _ = _answer(client, target, method=method)
    assert status == code
    assert headers[b"location"] == location


@pytest.mark.parametrize(("method", "code"), [(b"GET", 301), (b"HEAD", 301)])
@pytest_twisted.ensureDeferred
async def test_directory_without_its_slash_redirects_keeping_a_raw_query(
    files: LiveServer, method: bytes, code: int
) -> None:
    # A client library would percent-encode this query before sending it.
    status, headers, _ = await _raw(files, b'/static/sub?q="<`', method=method)
    assert status == code
    assert headers[b"location"] == b"/static/sub/?q=%22%3C%60"


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE"])
def test_directory_redirect_for_other_methods_is_308(
    client: StubTreq, method: str
) -> None:
    # An empty body, sent with its Content-Length: 0.
    status, headers, _ = _answer(client, b"/static/sub?k=v", method=method, data=b"")
    assert status == 308
    assert headers[b"location"] == b"/static/sub/?k=v"


@pytest.mark.parametrize(
    "target",
    [
        b"/static/%2f%2fevil.example",
        b"/static/%5c%5cevil.example",
        b"/static/%2fsub",
        b"//static/sub",
    ],
)
def test_no_redirect_leaves_the_host(client: StubTreq, target: bytes) -> None:
    status, headers, _ = _answer(client, target)
    location = headers.get(b"location", b"")
    assert not location.startswith((b"//", b"/\\"))
    assert status == 404


# -- mounts and the demo -----------------------------------------------------------


def test_mount_serves_its_directory(tmp_path: Path) -> None:
    first = tmp_path / "one"
    second = tmp_path / "two" / "deep"
    first.mkdir()
    second.mkdir(parents=True)
    (first / "a.txt").write_bytes(b"one")
    (second / "b.css").write_bytes(b"two")
    client = _client(
        ["--no-demo", "--mount", f"one={first}", "--mount", f"x/y={second}"]
    )
    one = _get(client, "/one/a.txt")
    two = _get(client, "/x/y/b.css")
    static = _get(client, "/static/")
    crossed = _get(client, "/one/b.css")
    assert (one.code, _content(client, one)) == (200, b"one")
    assert (two.code, _content(client, two)) == (200, b"two")
    assert _header(two, "content-type") == b"text/css; charset=utf-8"
    assert static.code == 404
    assert crossed.code == 404
    _content(client, static)
    _content(client, crossed)


def test_demo_static_index_and_everything_it_links() -> None:
    client = memory_client(Clock())
    response = _get(client, "/static/")
    body = _content(client, response).decode("utf-8")
    assert response.code == 200
    links = re.findall(r'(?:href|src)="([^"/][^"]*)"', body)
    assert {"style.css", "dot.png", ".well-known/security.txt"} <= set(links)
    types = {}
    for link in links:
        linked = _get(client, "/static/" + link)
        content = _content(client, linked)
        assert linked.code == 200, link
        assert content == (DEMO_STATIC / link).read_bytes()
        types[link] = _header(linked, "content-type")
    assert types["style.css"] == b"text/css; charset=utf-8"
    assert types["dot.png"] == b"image/png"
    assert types[".well-known/security.txt"] == b"text/plain; charset=utf-8"


def test_demo_image_is_a_png() -> None:
    assert (DEMO_STATIC / "dot.png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")


# -- streaming -----------------------------------------------------------------------


def test_a_large_file_streams_whole(client: StubTreq, tree: Path) -> None:
    data = os.urandom(1 << 20)
    (tree / "large.bin").write_bytes(data)
    response = _get(client, "/static/large.bin")
    assert response.code == 200
    assert response.length == len(data)
    assert _content(client, response) == data


def test_a_large_range_streams(client: StubTreq, tree: Path) -> None:
    data = os.urandom(1 << 20)
    (tree / "large.bin").write_bytes(data)
    response = _get(client, "/static/large.bin", range="bytes=1000-300000")
    assert response.code == 206
    assert _content(client, response) == data[1000:300001]


@pytest_twisted.ensureDeferred
async def test_a_client_leaving_mid_file_is_not_an_error(
    files: LiveServer, tree: Path, captured_log: list[Any]
) -> None:
    (tree / "large.bin").write_bytes(os.urandom(16 << 20))
    client = await connect(files.reactor, files.port_number)
    # Read nothing, so that the transfer is surely still going on below.
    client.pause_reading()
    client.send(b"GET /static/large.bin HTTP/1.1\r\nHost: x\r\n\r\n")
    await eventually(lambda: _open_files_named("large.bin"), "the file to be opened")
    assert len(_open_files_named("large.bin")) == 1
    client.close()
    await client.closed
    after = await files.get("/static/ten.txt")
    assert await after.content() == TEN
    await eventually(
        lambda: not _open_files_named("large.bin"), "the file to be closed"
    )
    assert _open_files_named("large.bin") == []
    assert failures(captured_log) == []


def _open_files_named(name: str) -> list[str]:
    """
    The files of this process called C{name} that are open.
    """
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.endswith("/" + name):
            found.append(target)
    return found


# -- as a resource of its own ---------------------------------------------------------


def test_static_directory_serves_as_a_child_resource(tree: Path) -> None:
    """
    Rendered through getChildForRequest with the rest of the path in
    postpath, as a realm's avatar is.
    """
    root = Resource()
    root.putChild(b"home", StaticDirectory(tree))
    client = stub_treq(Site(root, reactor=Clock(), max_body=1024, idle_timeout=10))
    answers = {
        target: _answer(client, target)
        for target in (
            b"/home/ten.txt",
            b"/home/sub/",
            b"/home/sub?a=b",
            b"/home/.secret",
        )
    }
    assert answers[b"/home/ten.txt"][0::2] == (200, TEN)
    assert answers[b"/home/sub/"][0::2] == (200, b"<p>sub index</p>")
    assert answers[b"/home/sub?a=b"][0] == 301
    assert answers[b"/home/sub?a=b"][1][b"location"] == b"/home/sub/?a=b"
    assert answers[b"/home/.secret"][0] == 404


@pytest_twisted.ensureDeferred
async def test_a_request_whose_client_left_before_rendering_is_dropped(
    tree: Path, captured_log: list[Any]
) -> None:
    """
    Behind a resource that answers later (as a login does), the client may be
    gone by the time the directory renders.
    """
    from twisted.internet import reactor
    from twisted.internet.defer import Deferred
    from twisted.web.util import DeferredResource

    later: Deferred[Resource] = Deferred()
    root = Resource()
    root.putChild(b"later", DeferredResource(later))
    site = Site(root, reactor=reactor, max_body=1024, idle_timeout=10)
    port = listen(site)
    try:
        client = await connect(reactor, port_number(port))
        client.send(b"GET /later/ten.txt HTTP/1.1\r\nHost: x\r\n\r\n")
        await eventually(
            lambda: any(c.requests for c in site.channels), "the request to start"
        )
        client.close()
        await client.closed
        await eventually(lambda: not site.channels, "the server to see the close")
        later.callback(StaticDirectory(tree))
    finally:
        await maybeDeferred(port.stopListening)
    assert failures(captured_log) == []
    assert _open_files_named("ten.txt") == []


def test_static_directory_resolves_its_root(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    assert StaticDirectory(tmp_path / "link").root == (tmp_path / "real").resolve()


# -- files that change between requests ----------------------------------------------
#
# A file is opened relative to the root held open when the way there has no
# symlink; everything else is resolved.  These pin that nothing is remembered
# from one request to the next that could serve what is no longer there.


async def _exchange(
    live: LiveServer, method: bytes, target: bytes, headers: bytes
) -> bytes:
    data = await _sent(live, method, target, headers)
    return re.sub(rb"\r\nDate: [^\r]*", b"", data)


#: Requests whose answers the direct way and the resolving way must agree on.
_BOTH_WAYS = [
    *((b"GET", target, b"") for target in TRAVERSALS),
    *(
        (method, target, b"")
        for method in (b"GET", b"HEAD", b"POST")
        for target in (
            b"/static/",
            b"/static/ten.txt",
            b"/static/empty.txt",
            b"/static/sub/",
            b"/static/sub",
            b"/static/sub/index.html",
            b"/static/inner-link.txt",
            b"/static/.well-known/x.txt",
            b"/static/listless/",
            b"/static/listless/file.txt",
            b"/static/missing",
            b"/docs/hundred.txt",
        )
    ),
    *(
        (b"GET", b"/static/hundred.txt", header)
        for header in (
            b"Range: bytes=2-5\r\n",
            b"Range: bytes=-7\r\n",
            b"Range: bytes=100-\r\n",
            b"Range: bytes=x\r\n",
            b'If-None-Match: "x", *\r\n',
            b'If-Match: "x"\r\n',
            b"If-Modified-Since: Sun, 06 Nov 2094 08:49:37 GMT\r\n",
            b"If-Unmodified-Since: Sun, 06 Nov 1994 08:49:37 GMT\r\n",
            b'If-Range: "stale"\r\nRange: bytes=2-5\r\n',
        )
    ),
]


@pytest_twisted.ensureDeferred
async def test_the_direct_and_the_resolving_way_answer_the_same(
    files: LiveServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    direct = [await _exchange(files, *request) for request in _BOTH_WAYS]
    monkeypatch.setattr(StaticDirectory, "_open_directly", lambda self, postpath: None)
    resolved = [await _exchange(files, *request) for request in _BOTH_WAYS]
    for request, one, other in zip(_BOTH_WAYS, direct, resolved, strict=True):
        assert one == other, request


def test_a_file_rewritten_in_place_is_served_anew(client: StubTreq, tree: Path) -> None:
    before = _get(client, "/static/ten.txt")
    assert _content(client, before) == TEN
    (tree / "ten.txt").write_bytes(b"ABCDEFGHIJ")
    os.utime(tree / "ten.txt", (MTIME + 1, MTIME + 1))
    after = _get(client, "/static/ten.txt")
    assert _content(client, after) == b"ABCDEFGHIJ"
    assert _header(after, "etag") != _header(before, "etag")
    assert _header(after, "last-modified") == http.datetimeToString(MTIME + 1)


def _serves_nothing(client: StubTreq, *targets: bytes) -> None:
    for target in targets:
        code, _, body = _answer(client, target)
        assert code == 404
        assert SECRET not in body


def test_a_file_replaced_by_a_symlink_out_is_refused(
    client: StubTreq, tree: Path
) -> None:
    code, _, _ = _answer(client, b"/static/ten.txt")
    assert code == 200
    (tree / "ten.txt").unlink()
    (tree / "ten.txt").symlink_to(tree.parent / "outside" / "secret.txt")
    _serves_nothing(client, b"/static/ten.txt")


def test_a_file_replaced_by_a_symlink_inside_is_served(
    client: StubTreq, tree: Path
) -> None:
    code, _, _ = _answer(client, b"/static/ten.txt")
    assert code == 200
    (tree / "ten.txt").unlink()
    (tree / "ten.txt").symlink_to(tree / "hundred.txt")
    code, headers, body = _answer(client, b"/static/ten.txt")
    assert (code, body) == (200, bytes(range(100)))
    assert headers[b"etag"] == _answer(client, b"/static/hundred.txt")[1][b"etag"]


def test_a_removed_file_is_404(client: StubTreq, tree: Path) -> None:
    code, _, _ = _answer(client, b"/static/sub/index.html")
    assert code == 200
    (tree / "sub" / "index.html").unlink()
    for target in (b"/static/sub/index.html", b"/static/sub/"):
        code, _, _ = _answer(client, target)
        assert code == 404


def test_a_directory_replaced_by_a_symlink_out_is_refused(
    client: StubTreq, tree: Path
) -> None:
    code, _, _ = _answer(client, b"/static/sub/")
    assert code == 200
    (tree.parent / "outside" / "index.html").write_bytes(SECRET)
    (tree / "sub").rename(tree / "sub-before")
    (tree / "sub").symlink_to(tree.parent / "outside")
    _serves_nothing(
        client, b"/static/sub/", b"/static/sub/index.html", b"/static/sub/secret.txt"
    )


def test_a_root_replaced_by_a_symlink_serves_nothing(
    client: StubTreq, tree: Path
) -> None:
    code, _, _ = _answer(client, b"/static/ten.txt")
    assert code == 200
    elsewhere = tree.parent / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "ten.txt").write_bytes(SECRET)
    tree.rename(tree.parent / "root-before")
    tree.symlink_to(elsewhere)
    _serves_nothing(client, b"/static/ten.txt", b"/static/")


def test_a_root_replaced_by_a_directory_serves_that_directory(
    client: StubTreq, tree: Path
) -> None:
    code, _, _ = _answer(client, b"/static/ten.txt")
    assert code == 200
    tree.rename(tree.parent / "root-before")
    tree.mkdir()
    (tree / "ten.txt").write_bytes(b"new root")
    (tree / ".secret").write_bytes(SECRET)
    for _ in range(2):
        assert _answer(client, b"/static/ten.txt")[0::2] == (200, b"new root")
        assert _answer(client, b"/static/hundred.txt")[0] == 404
        assert _answer(client, b"/static/.secret")[0] == 404


def test_a_root_gone_and_back_is_served_again(client: StubTreq, tree: Path) -> None:
    code, _, _ = _answer(client, b"/static/ten.txt")
    assert code == 200
    tree.rename(tree.parent / "away")
    assert _answer(client, b"/static/ten.txt")[0] == 404
    (tree.parent / "away").rename(tree)
    assert _answer(client, b"/static/ten.txt")[0::2] == (200, TEN)


@pytest_twisted.ensureDeferred
async def test_the_root_is_open_only_while_its_directory_is_served(
    tmp_path: Path,
) -> None:
    from twisted.internet import reactor

    served = tmp_path / "held-root-for-test"
    served.mkdir()
    (served / "a.txt").write_bytes(b"a")
    root = Resource()
    root.putChild(b"home", StaticDirectory(served))
    site = Site(root, reactor=reactor, max_body=1024, idle_timeout=10)
    port = listen(site)
    try:
        data = await exchange(
            reactor,
            port_number(port),
            b"GET /home/a.txt HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
    finally:
        await maybeDeferred(port.stopListening)
    assert parse_response(data)[0::2] == (200, b"a")
    assert len(_open_files_named(served.name)) == 1
    root.delEntity(b"home")
    gc.collect()
    assert _open_files_named(served.name) == []


# -- options -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "option"),
    [
        (["--static", "/nonexistent/dir"], "--static"),
        (["--mount", "docs"], "--mount"),
        (["--mount", "docs="], "--mount"),
        (["--mount", "docs=/nonexistent/dir"], "--mount"),
        (["--mount", "static={dir}"], "--mount"),
        (["--mount", "../up={dir}"], "--mount"),
        (["--mount", ".hidden={dir}"], "--mount"),
        (["--mount", "a//b={dir}"], "--mount"),
        (["--mount", "a/..={dir}"], "--mount"),
        (["--mount", "a%2fb={dir}"], "--mount"),
        (["--mount", "docs={dir}", "--mount", "docs/={dir}"], "--mount"),
    ],
)
def test_bad_static_options_name_the_option(
    tmp_path: Path, argv: list[str], option: str
) -> None:
    with pytest.raises(ConfigError) as raised:
        config_from_args([arg.format(dir=tmp_path) for arg in argv])
    assert raised.value.option == option


def test_mount_option_gives_the_prefix_and_the_absolute_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "html").mkdir()
    monkeypatch.chdir(tmp_path)
    config = config_from_args(["--mount", "/docs/v1/=html", "--static", "html"])
    assert config.mounts == (("docs/v1", (tmp_path / "html").resolve()),)
    assert config.static_dir == (tmp_path / "html").resolve()


def test_no_demo_serves_no_static_directory_unless_asked() -> None:
    assert config_from_args(["--no-demo"]).static_root is None
    assert config_from_args([]).static_root == DEMO_STATIC


def test_nested_mounts_each_serve_their_own_directory(tmp_path: Path) -> None:
    outer = tmp_path / "outer"
    inner = tmp_path / "inner"
    (outer / "b").mkdir(parents=True)
    inner.mkdir()
    (outer / "b" / "f.txt").write_bytes(b"outer")
    (inner / "f.txt").write_bytes(b"inner")
    client = _client(["--no-demo", "--mount", f"a={outer}", "--mount", f"a/b={inner}"])
    response = _get(client, "/a/b/f.txt")
    assert _content(client, response) == b"inner"
