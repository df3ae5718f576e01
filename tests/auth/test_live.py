"""
The guarded subtree on a live server: challenges, Basic and Digest logins,
homes, hostile headers, and a full hashing pool.
"""

from __future__ import annotations

import base64
import io
import os
import re
import shutil
import subprocess
import sys
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import bcrypt
import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.interfaces import IReactorFromThreads
from twisted.internet.task import Clock
from twisted.logger import LogEvent

from app.cli.passwd import passwd_main
from app.testing import LiveServer
from auth import Guard
from tests.auth.test_digest import challenge_fields, digest_authorization
from tests.conftest import eventually, failures
from tests.paths import ROOT, TESTS
from tests.rawhttp import RawClient, exchange, parse_response

DATA = TESTS / "data" / "auth"
HTPASSWD = str(DATA / "users.htpasswd")
HTDIGEST = str(DATA / "users.htdigest")


def basic(user: bytes | str, password: bytes | str) -> bytes:
    if isinstance(user, str):
        user = user.encode()
    if isinstance(password, str):
        password = password.encode()
    return b"Basic " + base64.b64encode(user + b":" + password)


@pytest.fixture
def homes(tmp_path: Path) -> Path:
    """
    The test homes, plus links in alice's home that lead out of it.
    """
    root = tmp_path / "homes"
    shutil.copytree(DATA / "homes", root)
    (tmp_path / "secret.txt").write_text("outside every home\n")
    public = root / "alice" / "public_html"
    (public / "to-bob").symlink_to(root / "bob" / "public_html")
    (public / "outside.txt").symlink_to(tmp_path / "secret.txt")
    (public / "etc").symlink_to("/etc")
    return root


@pytest.fixture
def clock() -> Clock:
    clock = Clock()
    clock.advance(1_800_000_000)
    return clock


async def _start(*argv: str, clock: Clock | None = None) -> LiveServer:
    return await LiveServer.start(["--no-demo", *argv], clock=clock)


@pytest_twisted.async_yield_fixture
async def guarded(homes: Path, clock: Clock) -> AsyncIterator[LiveServer]:
    """
    Both password files (Apache's), the homes, a clock the test drives.
    """
    live = await _start(
        "--htpasswd",
        HTPASSWD,
        "--htdigest",
        HTDIGEST,
        "--homes",
        str(homes),
        clock=clock,
    )
    try:
        yield live
    finally:
        await live.stop()


async def _get(
    server: LiveServer, path: str, authorization: bytes | str | None = None
) -> tuple[int, Any, str]:
    headers = {} if authorization is None else {"Authorization": authorization}
    response = await server.get(path, headers=headers, allow_redirects=False)
    return response.code, response.headers, await response.text()


async def _digest_login(
    server: LiveServer,
    path: str,
    user: str,
    password: str,
    *,
    which: int = 0,
    **options: Any,
) -> tuple[int, Any, str]:
    _, headers, _ = await _get(server, path)
    challenges = [
        c for c in headers.getRawHeaders("www-authenticate") if c.startswith("Digest")
    ]
    authorization = digest_authorization(
        challenges[which], "GET", path, user, password, **options
    )
    return await _get(server, path, authorization)


# -- when /private/ is there ------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_private_is_404_without_password_files() -> None:
    server = await LiveServer.start([])
    try:
        code, _, body = await _get(server, "/private/")
        assert code == 404 and "404 Not Found" in body
    finally:
        await server.stop()


@pytest_twisted.ensureDeferred
async def test_basic_only_challenge() -> None:
    server = await _start("--htpasswd", HTPASSWD)
    try:
        code, headers, _ = await _get(server, "/private/")
        assert code == 401
        assert headers.getRawHeaders("www-authenticate") == [
            'Basic realm="app", charset="UTF-8"'
        ]
    finally:
        await server.stop()


@pytest_twisted.ensureDeferred
async def test_digest_only_offers_md5_when_a_user_lacks_sha256() -> None:
    server = await _start("--htdigest", HTDIGEST, "--realm", "app")
    try:
        code, headers, _ = await _get(server, "/private/")
        assert code == 401
        (challenge,) = headers.getRawHeaders("www-authenticate")
        fields = challenge_fields(challenge)
        assert (fields["realm"], fields["algorithm"], fields["qop"]) == (
            "app",
            "MD5",
            "auth",
        )
    finally:
        await server.stop()


def _sha256_file(tmp_path: Path) -> str:
    path = tmp_path / "users.htdigest"
    for user, password in (("alice", "wonderland"), ("bob", "builder")):
        stdin = io.StringIO(password + "\n")
        assert passwd_main(["--digest", str(path), user], stdin, io.StringIO()) == 0
    return str(path)


@pytest_twisted.ensureDeferred
async def test_digest_offers_sha256_then_md5_when_every_user_has_it(
    tmp_path: Path,
) -> None:
    server = await _start("--htdigest", _sha256_file(tmp_path))
    try:
        _, headers, _ = await _get(server, "/private/")
        algorithms = [
            challenge_fields(c)["algorithm"]
            for c in headers.getRawHeaders("www-authenticate")
        ]
        assert algorithms == ["SHA-256", "MD5"]
    finally:
        await server.stop()


@pytest_twisted.ensureDeferred
async def test_both_files_offer_digest_and_basic(guarded: LiveServer) -> None:
    code, headers, _ = await _get(guarded, "/private/")
    assert code == 401
    schemes = [c.split(" ")[0] for c in headers.getRawHeaders("www-authenticate")]
    assert schemes == ["Digest", "Basic"]


@pytest_twisted.ensureDeferred
async def test_401_is_the_servers_own_page(guarded: LiveServer) -> None:
    code, headers, body = await _get(guarded, "/private/anything", basic("a", "b"))
    assert code == 401
    assert headers.getRawHeaders("content-type") == ["text/html; charset=utf-8"]
    assert headers.getRawHeaders("x-content-type-options") == ["nosniff"]
    assert "<h1>401 Unauthorized</h1>" in body


@pytest_twisted.ensureDeferred
async def test_head_401_has_no_body(guarded: LiveServer) -> None:
    response = await guarded.head("/private/")
    assert response.code == 401
    assert await response.content() == b""
    assert response.headers.getRawHeaders("www-authenticate")


# -- Basic ------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_basic_login_serves_own_home(guarded: LiveServer) -> None:
    code, _, body = await _get(guarded, "/private/", basic("alice", "wonderland"))
    assert (code, body) == (200, "<p>alice home</p>\n")
    code, _, body = await _get(
        guarded, "/private/notes.txt", basic("alice", "wonderland")
    )
    assert (code, body) == (200, "alice secret notes\n")


@pytest_twisted.ensureDeferred
async def test_a_home_swapped_for_a_link_out_after_login_serves_nothing(
    guarded: LiveServer, homes: Path, tmp_path: Path
) -> None:
    code, _, _ = await _get(guarded, "/private/notes.txt", basic("alice", "wonderland"))
    assert code == 200
    public = homes / "alice" / "public_html"
    public.rename(homes / "alice" / "old_html")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "notes.txt").write_text("not alice's\n")
    public.symlink_to(elsewhere)
    code, _, body = await _get(
        guarded, "/private/notes.txt", basic("alice", "wonderland")
    )
    assert code == 404
    assert "not alice's" not in body


@pytest_twisted.ensureDeferred
async def test_basic_scheme_is_case_insensitive(guarded: LiveServer) -> None:
    lower = b"basic " + basic("alice", "wonderland")[6:]
    code, _, _ = await _get(guarded, "/private/", lower)
    assert code == 200


@pytest_twisted.ensureDeferred
async def test_login_sets_remote_user(guarded: LiveServer) -> None:
    seen: list[Any] = []
    guarded.site.access_log = seen.append
    await _get(guarded, "/private/", basic("alice", "wonderland"))
    await _get(guarded, "/private/", basic("alice", "wrong"))
    assert [request.remote_user for request in seen] == ["alice", None]


@pytest_twisted.ensureDeferred
async def test_wrong_password_and_unknown_user_are_401(guarded: LiveServer) -> None:
    for authorization in (basic("alice", "builder"), basic("mallory", "x")):
        code, headers, _ = await _get(guarded, "/private/", authorization)
        assert code == 401 and len(headers.getRawHeaders("www-authenticate")) == 2


@pytest_twisted.ensureDeferred
async def test_only_72_bytes_of_a_password_count(guarded: LiveServer) -> None:
    code, _, body = await _get(guarded, "/private/", basic("long", "x" * 72 + "OTHER"))
    assert (code, body) == (200, "<p>long home</p>\n")


@pytest_twisted.ensureDeferred
async def test_1000_byte_password_is_401(
    guarded: LiveServer, captured_log: list[LogEvent]
) -> None:
    code, _, _ = await _get(guarded, "/private/", basic("alice", "p" * 1000))
    assert code == 401
    assert failures(captured_log) == []


@pytest_twisted.ensureDeferred
async def test_file_written_by_passwd_logs_in(tmp_path: Path, homes: Path) -> None:
    path = tmp_path / "made.htpasswd"
    subprocess.run(
        [sys.executable, "-m", "app", "passwd", str(path), "bob"],
        input=b"builder2\n",
        env={**os.environ, "APP_PASSWD_BCRYPT_COST": "4"},
        check=True,
        timeout=30,
    )
    server = await _start("--htpasswd", str(path), "--homes", str(homes))
    try:
        code, _, body = await _get(server, "/private/bob.txt", basic("bob", "builder2"))
        assert (code, body) == (200, "bob only\n")
    finally:
        await server.stop()


# -- Digest -----------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_digest_md5_login_with_apache_file(guarded: LiveServer) -> None:
    code, _, body = await _digest_login(guarded, "/private/", "alice", "wonderland")
    assert (code, body) == (200, "<p>alice home</p>\n")


@pytest_twisted.ensureDeferred
@pytest.mark.parametrize("which", [0, 1])
async def test_digest_sha256_and_md5_logins(
    tmp_path: Path, homes: Path, which: int
) -> None:
    server = await _start("--htdigest", _sha256_file(tmp_path), "--homes", str(homes))
    try:
        code, _, body = await _digest_login(
            server, "/private/bob.txt", "bob", "builder", which=which
        )
        assert (code, body) == (200, "bob only\n")
    finally:
        await server.stop()


@pytest_twisted.ensureDeferred
async def test_digest_wrong_password_is_401(guarded: LiveServer) -> None:
    code, _, _ = await _digest_login(guarded, "/private/", "alice", "builder")
    assert code == 401


@pytest_twisted.ensureDeferred
async def test_digest_replayed_nonce_count_is_401(guarded: LiveServer) -> None:
    _, headers, _ = await _get(guarded, "/private/")
    challenge = headers.getRawHeaders("www-authenticate")[0]
    first = digest_authorization(challenge, "GET", "/private/", "alice", "wonderland")
    assert (await _get(guarded, "/private/", first))[0] == 200
    code, headers, _ = await _get(guarded, "/private/", first)
    assert code == 401
    assert "stale" not in headers.getRawHeaders("www-authenticate")[0]
    second = digest_authorization(
        challenge, "GET", "/private/", "alice", "wonderland", nc=2
    )
    assert (await _get(guarded, "/private/", second))[0] == 200


@pytest_twisted.ensureDeferred
async def test_digest_for_another_uri_is_401(guarded: LiveServer) -> None:
    _, headers, _ = await _get(guarded, "/private/")
    challenge = headers.getRawHeaders("www-authenticate")[0]
    other = digest_authorization(
        challenge, "GET", "/private/notes.txt", "alice", "wonderland"
    )
    assert (await _get(guarded, "/private/", other))[0] == 401


@pytest_twisted.ensureDeferred
async def test_digest_for_another_realm_is_401(guarded: LiveServer) -> None:
    code, _, _ = await _digest_login(
        guarded, "/private/", "alice", "elsewhere", realm="other"
    )
    assert code == 401


@pytest_twisted.ensureDeferred
async def test_digest_expired_nonce_is_401_stale(
    guarded: LiveServer, clock: Clock
) -> None:
    _, headers, _ = await _get(guarded, "/private/")
    challenge = headers.getRawHeaders("www-authenticate")[0]
    clock.advance(301)
    late = digest_authorization(challenge, "GET", "/private/", "alice", "wonderland")
    code, headers, _ = await _get(guarded, "/private/", late)
    assert code == 401
    fresh = headers.getRawHeaders("www-authenticate")[0]
    assert fresh.endswith(", stale=true")
    again = digest_authorization(fresh, "GET", "/private/", "alice", "wonderland")
    assert (await _get(guarded, "/private/", again))[0] == 200


# -- answered at once or through the portal -------------------------------------


def _through_the_portal(monkeypatch: pytest.MonkeyPatch) -> None:
    """
    Make the guard log every request in through its portal, with Deferreds,
    as it does for a checker that cannot answer at once.
    """
    monkeypatch.setattr(Guard, "_checker", lambda self, credentials: None)


_DATE = re.compile(rb"\r\nDate: [^\r]*")
_NONCE = re.compile(rb'nonce="[0-9a-f]+"')


async def _raw(
    server: LiveServer, method: str, path: str, authorization: bytes | str
) -> bytes:
    """
    The whole response to one request, less what differs between any two
    responses (the date and a fresh nonce).
    """
    if isinstance(authorization, str):
        authorization = authorization.encode("latin-1")
    request = (
        f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n".encode()
        + b"Authorization: "
        + authorization
        + b"\r\nConnection: close\r\n\r\n"
    )
    response = await exchange(reactor, server.port_number, request)
    return _NONCE.sub(b'nonce="N"', _DATE.sub(b"", response))


@pytest_twisted.ensureDeferred
@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/private/"),
        ("GET", "/private/notes.txt"),
        ("HEAD", "/private/notes.txt"),
        ("GET", "/private/missing.txt"),
        ("GET", "/private/to-bob/bob.txt"),
        ("POST", "/private/notes.txt"),
    ],
)
async def test_cached_basic_login_answers_as_the_first_and_the_portal_do(
    guarded: LiveServer,
    hash_calls: list[bytes],
    monkeypatch: pytest.MonkeyPatch,
    method: str,
    path: str,
) -> None:
    authorization = basic("alice", "wonderland")
    checked = await _raw(guarded, method, path, authorization)
    cached = await _raw(guarded, method, path, authorization)
    _through_the_portal(monkeypatch)
    portal = await _raw(guarded, method, path, authorization)
    assert cached == checked == portal
    assert len(hash_calls) == 1


@pytest_twisted.ensureDeferred
async def test_cached_basic_login_does_not_let_another_password_in(
    guarded: LiveServer, hash_calls: list[bytes]
) -> None:
    assert (await _get(guarded, "/private/", basic("alice", "wonderland")))[0] == 200
    code, _, body = await _get(guarded, "/private/", basic("alice", "wonderland!"))
    assert code == 401 and "alice home" not in body
    assert len(hash_calls) == 2


@pytest_twisted.ensureDeferred
async def test_expired_basic_login_is_checked_again(
    guarded: LiveServer, hash_calls: list[bytes], clock: Clock
) -> None:
    for _ in range(2):
        assert (await _get(guarded, "/private/", basic("alice", "x")))[0] == 401
        assert (await _get(guarded, "/private/", basic("alice", "wonderland")))[
            0
        ] == 200
        assert (await _get(guarded, "/private/", basic("alice", "wonderland")))[
            0
        ] == 200
        clock.advance(60)
    assert len(hash_calls) == 4


@pytest_twisted.ensureDeferred
async def test_digest_answers_at_once_as_the_portal_does(
    guarded: LiveServer, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = "/private/notes.txt"

    async def answers() -> list[bytes]:
        _, headers, _ = await _get(guarded, path)
        challenge = headers.getRawHeaders("www-authenticate")[0]
        right = digest_authorization(challenge, "GET", path, "alice", "wonderland")
        wrong = digest_authorization(challenge, "GET", path, "alice", "x", nc=2)
        bob = digest_authorization(challenge, "GET", path, "bob", "builder", nc=3)
        late = digest_authorization(challenge, "GET", path, "alice", "wonderland", nc=4)
        found = [await _raw(guarded, "GET", path, value) for value in (right, right)]
        found += [await _raw(guarded, "GET", path, value) for value in (wrong, bob)]
        clock.advance(301)
        found.append(await _raw(guarded, "GET", path, late))
        return found

    at_once = await answers()
    _through_the_portal(monkeypatch)
    assert await answers() == at_once
    assert [parse_response(answer)[0] for answer in at_once] == [
        200,
        401,
        401,
        404,
        401,
    ]
    assert b"stale=true" in at_once[-1] and b"stale=true" not in at_once[1]


# -- homes ------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_alice_cannot_read_bobs_home(guarded: LiveServer) -> None:
    code, _, _ = await _get(guarded, "/private/bob.txt", basic("alice", "wonderland"))
    assert code == 404
    code, _, body = await _get(guarded, "/private/bob.txt", basic("bob", "builder"))
    assert (code, body) == (200, "bob only\n")


@pytest_twisted.ensureDeferred
@pytest.mark.parametrize(
    "path",
    [
        b"/private/../bob/public_html/bob.txt",
        b"/private/%2e%2e/bob/public_html/bob.txt",
        b"/private/%2E%2E%2Fbob%2Fpublic_html%2Fbob.txt",
        b"/private/..%5cbob%5cpublic_html%5cbob.txt",
        b"/private//etc/hostname",
        b"/private/to-bob/bob.txt",
        b"/private/outside.txt",
        b"/private/etc/hostname",
        b"/private/.hidden",
        b"/private/%00",
    ],
)
async def test_traversal_out_of_a_home_is_404(guarded: LiveServer, path: bytes) -> None:
    port = guarded.port_number
    request = (
        b"GET " + path + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Authorization: " + basic("alice", "wonderland") + b"\r\n"
        b"Connection: close\r\n\r\n"
    )
    status, _, body = parse_response(await exchange(reactor, port, request))
    assert status == 404
    assert b"bob only" not in body and b"outside every home" not in body


@pytest_twisted.ensureDeferred
async def test_user_without_a_home_gets_404(tmp_path: Path, homes: Path) -> None:
    path = tmp_path / "users"
    line = (DATA / "users.htpasswd").read_text().splitlines()[0].replace("alice", "zed")
    path.write_text(line + "\n")
    server = await _start("--htpasswd", str(path), "--homes", str(homes))
    try:
        code, _, body = await _get(server, "/private/", basic("zed", "wonderland"))
        assert code == 404 and "404 Not Found" in body
    finally:
        await server.stop()


@pytest_twisted.ensureDeferred
async def test_without_homes_every_user_gets_404() -> None:
    server = await _start("--htpasswd", HTPASSWD)
    try:
        code, _, _ = await _get(server, "/private/", basic("alice", "wonderland"))
        assert code == 404
    finally:
        await server.stop()


# -- hostile headers --------------------------------------------------------------

HOSTILE = [
    b"",
    b"Basic",
    b"Basic ",
    b"Basic !!!",
    b"Basic " + base64.b64encode(b"alice"),
    b"Basic " + base64.b64encode(b"alice:wonderland")[:-2],
    b"Basic " + b"A" * 10240,
    b"Basic " + base64.b64encode(b"\xff\xfe:pw"),
    b"Basic " + base64.b64encode(b"../bob:builder"),
    b"Basic " + base64.b64encode(b"alice\x00:wonderland"),
    b"Basic " + base64.b64encode(b":wonderland"),
    b"Basic\t" + base64.b64encode(b"alice:wonderland"),
    b"Bearer abc",
    b"Negotiate",
    b"\x80\x81\xfe",
    b"Digest",
    b"Digest ",
    b'Digest username="alice"',
    b'Digest username="alice", username="bob"',
    b"Digest ,,,,",
    b"Digest garbage garbage",
    b'Digest username="alice\xff\xfe", realm="app"',
    b"Digest username=\xe9\xe8",
    b'Digest username="' + b"a" * 10240 + b'"',
    b'Digest username="..", realm="app", nonce="x", uri="/private/", '
    b'response="00", qop=auth, nc=00000001, cnonce="c"',
    b"\xc3\xa9 \xff",
]


@pytest_twisted.ensureDeferred
@pytest.mark.parametrize("value", HOSTILE)
async def test_hostile_authorization_is_401(
    guarded: LiveServer, captured_log: list[LogEvent], value: bytes
) -> None:
    port = guarded.port_number
    request = (
        b"GET /private/ HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Authorization: " + value + b"\r\nConnection: close\r\n\r\n"
    )
    status, headers, body = parse_response(await exchange(reactor, port, request))
    assert status == 401
    assert b"www-authenticate" in headers
    assert b"401 Unauthorized" in body
    assert failures(captured_log) == []


@pytest_twisted.ensureDeferred
async def test_control_characters_in_authorization_are_refused_not_500(
    guarded: LiveServer, captured_log: list[LogEvent]
) -> None:
    port = guarded.port_number
    request = (
        b"GET /private/ HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Authorization: Basic \x00\x01\x02\r\nConnection: close\r\n\r\n"
    )
    status, _, _ = parse_response(await exchange(reactor, port, request))
    assert status in (400, 401)
    assert failures(captured_log) == []


@pytest_twisted.ensureDeferred
async def test_two_authorization_headers_are_401(guarded: LiveServer) -> None:
    port = guarded.port_number
    good = basic("alice", "wonderland")
    request = (
        b"GET /private/ HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Authorization: " + good + b"\r\nAuthorization: " + good + b"\r\n"
        b"Connection: close\r\n\r\n"
    )
    status, _, _ = parse_response(await exchange(reactor, port, request))
    assert status == 401


# -- a full hashing pool -----------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_full_hashing_pool_is_503_with_retry_after(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    release = threading.Event()
    entered = [0]
    both_busy: Deferred[None] = Deferred()
    lock = threading.Lock()
    real = bcrypt.checkpw

    def blocking(password: bytes, hashed: bytes) -> bool:
        with lock:
            entered[0] += 1
            if entered[0] == 2:
                IReactorFromThreads(reactor).callFromThread(both_busy.callback, None)
        release.wait(10)
        return real(password, hashed)

    monkeypatch.setattr(bcrypt, "checkpw", blocking)
    server = await _start("--htpasswd", HTPASSWD)
    try:
        busy = [
            server.get("/private/", headers={"Authorization": basic("a", "b")})
            for _ in range(2)
        ]
        await both_busy
        # One client address holds at most 4 places in the queue: with both
        # threads held, only the 5th of its waiting checks can be answered.
        rest = [
            server.get("/private/", headers={"Authorization": basic("a", "b")})
            for _ in range(5)
        ]
        first = await DeferredList(rest, fireOnOneCallback=True, fireOnOneErrback=True)
        refused = first[0]
        assert refused.code == 503
        assert refused.headers.getRawHeaders("retry-after") == ["1"]
        assert "503" in await refused.text()
    finally:
        release.set()
    try:
        codes = []
        for pending in busy + rest:
            response = await pending
            # Read whole, so that its connection is back in the pool that
            # stop() closes.
            await response.content()
            codes.append(response.code)
        assert sorted(codes) == [401] * 6 + [503]
    finally:
        await server.stop()


# -- workers and the demo ----------------------------------------------------------


async def _two_sites_and_a_challenge(
    clock: Clock, *argv: str
) -> tuple[LiveServer, LiveServer, str]:
    """
    Two sites started with C{argv}, and the Digest challenge of the first.
    """
    first = await _start(*argv, clock=clock)
    second = await _start(*argv, clock=clock)
    _, headers, _ = await _get(first, "/private/")
    challenge: str = headers.getRawHeaders("www-authenticate")[0]
    return first, second, challenge


@pytest_twisted.ensureDeferred
async def test_sites_given_one_key_accept_each_others_nonces(
    monkeypatch: pytest.MonkeyPatch, homes: Path, clock: Clock
) -> None:
    monkeypatch.setenv("APP_DIGEST_KEY", "ab" * 32)
    first, second, challenge = await _two_sites_and_a_challenge(
        clock, "--htdigest", HTDIGEST, "--homes", str(homes)
    )
    try:
        answer = digest_authorization(
            challenge, "GET", "/private/", "alice", "wonderland"
        )
        assert (await _get(second, "/private/", answer))[0] == 200
    finally:
        await first.stop()
        await second.stop()


@pytest_twisted.ensureDeferred
async def test_sites_sharing_a_store_accept_each_digest_answer_once(
    monkeypatch: pytest.MonkeyPatch, homes: Path, clock: Clock, tmp_path: Path
) -> None:
    monkeypatch.setenv("APP_SECRET_KEY", "cd" * 32)
    store = f"sqlite:{tmp_path / 'shared.sqlite3'}"
    first, second, challenge = await _two_sites_and_a_challenge(
        clock, "--htdigest", HTDIGEST, "--homes", str(homes), "--sessions", store
    )
    try:
        answer = digest_authorization(
            challenge, "GET", "/private/", "alice", "wonderland"
        )
        assert (await _get(first, "/private/", answer))[0] == 200
        # The same (nonce, nonce-count), replayed at the other site.
        assert (await _get(second, "/private/", answer))[0] == 401
        later = digest_authorization(
            challenge, "GET", "/private/", "alice", "wonderland", nc=2
        )
        assert (await _get(second, "/private/", later))[0] == 200
        assert (await _get(first, "/private/", later))[0] == 401
    finally:
        await first.stop()
        await second.stop()


@pytest.mark.parametrize("name", ["APP_SECRET_KEY", "APP_DIGEST_KEY"])
def test_bad_secret_key_variable_is_a_bad_option_value(
    monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    from app.cli.main import main

    monkeypatch.delenv("APP_SECRET_KEY", raising=False)
    monkeypatch.setenv(name, "ab" * 15)
    stderr = io.StringIO()
    assert main(["--htdigest", HTDIGEST], reactor, io.StringIO(), stderr) == 2
    assert name in stderr.getvalue()


def test_bad_digest_key_variable_is_a_bad_option_value(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from app.cli.main import main

    monkeypatch.setenv("APP_DIGEST_KEY", "not hex")
    stderr = io.StringIO()
    assert main(["--htdigest", HTDIGEST], reactor, io.StringIO(), stderr) == 2
    assert "APP_DIGEST_KEY" in stderr.getvalue()


DEMO = ROOT / "app" / "demo"


@pytest_twisted.ensureDeferred
async def test_demo_users_log_in_to_their_homes() -> None:
    server = await _start(
        "--htpasswd", str(DEMO / "users.htpasswd"),
        "--htdigest", str(DEMO / "users.htdigest"),
        "--homes", str(DEMO / "homes"),
    )  # fmt: skip
    try:
        code, _, body = await _get(server, "/private/", basic("alice", "wonderland"))
        assert code == 200 and "alice's home" in body
        code, _, body = await _digest_login(server, "/private/", "bob", "builder")
        assert code == 200 and "bob's home" in body
    finally:
        await server.stop()


async def _keep_alive_get(
    client: RawClient, path: bytes, authorization: bytes
) -> bytes:
    """
    Send one GET on an open raw connection and return its whole response
    (its Date left out) once it has arrived.
    """
    start = len(client.received)
    client.send(
        b"GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: %s\r\n\r\n"
        % (path, authorization)
    )

    def whole_response() -> bytes | None:
        data = bytes(client.received[start:])
        head, _, body = data.partition(b"\r\n\r\n")
        length = re.search(rb"\r\nContent-Length: (\d+)", head)
        if length is not None and len(body) >= int(length.group(1)):
            return _DATE.sub(b"", data)
        return None

    return await eventually(whole_response, "a whole response")


@pytest_twisted.ensureDeferred
async def test_a_connection_repeating_its_basic_login_is_not_checked_again(
    guarded: LiveServer,
    hash_calls: list[bytes],
    clock: Clock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from auth import BcryptChecker
    from tests.rawhttp import connect

    checks: list[bytes] = []
    real_check = BcryptChecker.check

    def counting(self: BcryptChecker, credentials: Any) -> Any:
        checks.append(credentials.username)
        return real_check(self, credentials)

    monkeypatch.setattr(BcryptChecker, "check", counting)
    right, wrong = basic("alice", "wonderland"), basic("alice", "wonderland!")
    client = await connect(reactor, guarded.port_number)
    try:
        first = await _keep_alive_get(client, b"/private/notes.txt", right)
        assert first.startswith(b"HTTP/1.1 200 ")
        # The first is bcrypt-checked, the second found in the cache; from
        # then on the connection's repeated header is let in as it was.
        for _ in range(3):
            assert await _keep_alive_get(client, b"/private/notes.txt", right) == first
        assert (len(checks), len(hash_calls)) == (2, 1)
        refused = await _keep_alive_get(client, b"/private/notes.txt", wrong)
        assert refused.startswith(b"HTTP/1.1 401 ")
        assert (len(checks), len(hash_calls)) == (3, 2)
        # A refused header does not undo the login the connection made.
        assert await _keep_alive_get(client, b"/private/notes.txt", right) == first
        assert (len(checks), len(hash_calls)) == (3, 2)
        # The connection's login lasts as long as the verification it rests on.
        clock.advance(59.9)
        assert await _keep_alive_get(client, b"/private/notes.txt", right) == first
        assert (len(checks), len(hash_calls)) == (3, 2)
        clock.advance(0.1)
        assert await _keep_alive_get(client, b"/private/notes.txt", right) == first
        assert (len(checks), len(hash_calls)) == (4, 3)
        # Another user's home stays out of reach on the same connection.
        other = await _keep_alive_get(client, b"/private/notes.txt", basic("bob", "x"))
        assert other.startswith(b"HTTP/1.1 401 ")
    finally:
        client.close()
