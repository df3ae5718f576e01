"""
Static files and gzip (SPEC §15): a C{FILE.gz} beside a file served in its
place, files compressed on their way out, and their freshness; in memory,
through the agent under a L{StubTreq}, which sends C{Accept-Encoding} only
when a test does and hands back the bytes sent.
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path
from typing import Any

import pytest
from treq.testing import StubTreq
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactor

from app.cli.options import config_from_args
from app.http.compression import Compressor
from app.site import build_site
from app.testing import stub_treq
from tests.conftest import fetch_undecoded, header_of, length_of

MTIME = 1_700_000_000
TEXT = b"".join(b"line %d of a page long enough to compress\n" % n for n in range(100))
#: What the FILE.gz beside a file holds: not the file's own bytes, so that a
#: test tells which of the two was sent.
PRECOMPRESSED = b"precompressed " + TEXT
#: A text file of 1 MiB, which streams in many pieces.
MEBIBYTE = (TEXT * 300)[: 1 << 20]


def _write(path: Path, content: bytes, mtime: int = MTIME) -> None:
    path.write_bytes(content)
    os.utime(path, (mtime, mtime))


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    root.mkdir()
    _write(root / "page.html", TEXT)
    _write(root / "page.html.gz", gzip.compress(PRECOMPRESSED), MTIME + 1)
    _write(root / "same-age.css", TEXT)
    _write(root / "same-age.css.gz", gzip.compress(PRECOMPRESSED))
    _write(root / "stale.css", TEXT)
    _write(root / "stale.css.gz", gzip.compress(PRECOMPRESSED), MTIME - 1)
    _write(root / "plain.txt", TEXT)
    _write(root / "small.txt", TEXT[:100])
    _write(root / "big.txt", MEBIBYTE)
    _write(root / "picture.png", TEXT)
    _write(root / "archive.tar.gz", gzip.compress(TEXT))
    _write(root / "folder.txt", TEXT)
    (root / "folder.txt.gz").mkdir()
    (root / "sub").mkdir()
    _write(root / "sub" / "index.html", TEXT)
    _write(root / "sub" / "index.html.gz", gzip.compress(PRECOMPRESSED), MTIME + 1)
    (root / "link.html").symlink_to("page.html")
    return root


@pytest.fixture
def client(tree: Path) -> StubTreq:
    argv = ["--no-demo", "--static", str(tree)]
    return stub_treq(build_site(config_from_args(argv), MemoryReactor(), Clock()))


def _fetch(
    client: StubTreq, path: str, method: bytes = b"GET", **headers: str
) -> tuple[Any, bytes]:
    """
    A file below C{/static/}, its body as sent (see L{fetch_undecoded}).
    """
    return fetch_undecoded(client, "/static/" + path, method, **headers)


# -- FILE.gz beside FILE -----------------------------------------------------


def test_a_fresher_gz_is_served_to_a_client_that_accepts_gzip(
    client: StubTreq,
) -> None:
    response, body = _fetch(client, "page.html", accept_encoding="gzip")
    assert response.code == 200
    assert header_of(response, b"content-encoding") == b"gzip"
    assert header_of(response, b"content-type") == b"text/html; charset=utf-8"
    assert gzip.decompress(body) == PRECOMPRESSED
    assert length_of(response) == len(body)
    assert header_of(response, b"vary") == b"Accept-Encoding"


def test_a_gz_as_old_as_its_file_is_served(client: StubTreq) -> None:
    _, body = _fetch(client, "same-age.css", accept_encoding="gzip")
    assert gzip.decompress(body) == PRECOMPRESSED


def test_a_served_gz_has_its_own_weak_etag(client: StubTreq) -> None:
    gzipped, _ = _fetch(client, "page.html", accept_encoding="gzip")
    plain, _ = _fetch(client, "page.html")
    gzipped_etag = header_of(gzipped, b"etag")
    plain_etag = header_of(plain, b"etag")
    assert gzipped_etag is not None and gzipped_etag.startswith(b'W/"')
    assert plain_etag is not None and plain_etag.startswith(b'"')
    assert gzipped_etag != b"W/" + plain_etag


def test_the_weak_etag_of_a_served_gz_revalidates(client: StubTreq) -> None:
    first, _ = _fetch(client, "page.html", accept_encoding="gzip")
    etag = header_of(first, b"etag")
    assert etag is not None
    response, body = _fetch(
        client, "page.html", accept_encoding="gzip", if_none_match=etag.decode()
    )
    assert response.code == 304
    assert body == b""
    assert header_of(response, b"etag") == etag
    assert header_of(response, b"vary") == b"Accept-Encoding"
    assert header_of(response, b"cache-control") == b"no-cache"


def test_a_client_without_gzip_gets_the_file_with_vary(client: StubTreq) -> None:
    response, body = _fetch(client, "page.html", accept_encoding="identity")
    assert header_of(response, b"content-encoding") is None
    assert body == TEXT
    assert header_of(response, b"vary") == b"Accept-Encoding"


def test_a_gz_older_than_its_file_is_ignored(client: StubTreq) -> None:
    response, body = _fetch(client, "stale.css", accept_encoding="gzip")
    assert header_of(response, b"content-encoding") == b"gzip"
    # The file itself, compressed on its way out.
    assert gzip.decompress(body) == TEXT


def test_a_gz_that_is_not_a_regular_file_is_ignored(client: StubTreq) -> None:
    _, body = _fetch(client, "folder.txt", accept_encoding="gzip")
    assert gzip.decompress(body) == TEXT


def test_a_directory_index_has_its_gz_served(client: StubTreq) -> None:
    _, body = _fetch(client, "sub/", accept_encoding="gzip")
    assert gzip.decompress(body) == PRECOMPRESSED


def test_a_file_found_through_a_symlink_has_its_gz_served(client: StubTreq) -> None:
    _, body = _fetch(client, "link.html", accept_encoding="gzip")
    assert gzip.decompress(body) == PRECOMPRESSED


def test_a_range_is_served_from_the_file_itself(client: StubTreq) -> None:
    response, body = _fetch(
        client, "page.html", accept_encoding="gzip", range="bytes=0-9"
    )
    assert response.code == 206
    assert header_of(response, b"content-encoding") is None
    assert body == TEXT[:10]
    assert header_of(response, b"vary") == b"Accept-Encoding"


def test_a_head_gets_the_file_s_head(client: StubTreq) -> None:
    response, body = _fetch(client, "page.html", b"HEAD", accept_encoding="gzip")
    assert response.code == 200
    assert header_of(response, b"content-encoding") is None
    assert header_of(response, b"vary") == b"Accept-Encoding"
    etag = header_of(response, b"etag")
    assert etag is not None and etag.startswith(b'"')
    assert body == b""


def test_a_gz_asked_for_by_name_is_served_as_itself(client: StubTreq) -> None:
    response, body = _fetch(client, "archive.tar.gz", accept_encoding="gzip")
    assert header_of(response, b"content-encoding") is None
    assert header_of(response, b"content-type") == b"application/gzip"
    assert gzip.decompress(body) == TEXT


# -- compressed on the way out -----------------------------------------------


def test_a_text_file_without_gz_is_compressed_with_a_weak_etag(
    client: StubTreq,
) -> None:
    plain, _ = _fetch(client, "plain.txt")
    response, body = _fetch(client, "plain.txt", accept_encoding="gzip")
    assert header_of(response, b"content-encoding") == b"gzip"
    assert gzip.decompress(body) == TEXT
    assert length_of(response) == len(body)
    assert header_of(response, b"etag") == b"W/" + (header_of(plain, b"etag") or b"")


def test_a_304_for_a_compressed_file_has_its_weak_etag_and_vary(
    client: StubTreq,
) -> None:
    first, _ = _fetch(client, "plain.txt", accept_encoding="gzip")
    etag = header_of(first, b"etag")
    assert etag is not None
    response, _ = _fetch(
        client, "plain.txt", accept_encoding="gzip", if_none_match=etag.decode()
    )
    assert response.code == 304
    assert header_of(response, b"etag") == etag
    assert header_of(response, b"vary") == b"Accept-Encoding"


def test_a_small_file_is_sent_as_it_is(client: StubTreq) -> None:
    response, body = _fetch(client, "small.txt", accept_encoding="gzip")
    assert header_of(response, b"content-encoding") is None
    assert header_of(response, b"vary") is None
    assert body == TEXT[:100]


def test_an_image_is_sent_as_it_is(client: StubTreq) -> None:
    response, body = _fetch(client, "picture.png", accept_encoding="gzip")
    assert header_of(response, b"content-encoding") is None
    assert body == TEXT


def test_a_mebibyte_file_is_compressed_as_it_streams(
    client: StubTreq, monkeypatch: pytest.MonkeyPatch
) -> None:
    pieces: list[int] = []
    compress = Compressor.compress

    def counted(self: Compressor, data: bytes) -> bytes:
        pieces.append(len(data))
        return compress(self, data)

    monkeypatch.setattr(Compressor, "compress", counted)
    response, body = _fetch(client, "big.txt", accept_encoding="gzip")
    assert header_of(response, b"content-encoding") == b"gzip"
    assert length_of(response) is None
    assert gzip.decompress(body) == MEBIBYTE
    assert len(pieces) >= 16
    assert max(pieces) <= 64 * 1024


# -- freshness ---------------------------------------------------------------


@pytest.mark.parametrize("accept_encoding", ["gzip", "identity"])
@pytest.mark.parametrize("path", ["page.html", "plain.txt", "picture.png"])
def test_a_file_is_kept_only_with_validation(
    client: StubTreq, path: str, accept_encoding: str
) -> None:
    response, _ = _fetch(client, path, accept_encoding=accept_encoding)
    assert response.code == 200
    assert header_of(response, b"cache-control") == b"no-cache"
    assert header_of(response, b"last-modified") is not None


def test_a_missing_file_is_not_stored(client: StubTreq) -> None:
    response, _ = _fetch(client, "nothing.txt")
    assert response.code == 404
    assert header_of(response, b"cache-control") == b"no-store"


def test_a_directory_redirect_says_how_long_it_may_be_kept(client: StubTreq) -> None:
    response, _ = _fetch(client, "sub")
    assert response.code == 301
    assert header_of(response, b"cache-control") == b"max-age=300"
