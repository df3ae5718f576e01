"""
Sessions: the cookie, sliding expiry on the site's clock, the bound on their
number, adapters stored in them, and their endings.

The pages are fetched in memory, through the demo site on a L{Clock}; only
the cookie over TLS takes a live server.
"""

from __future__ import annotations

import datetime
import gc
import math
import re
import tracemalloc
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from hypothesis import example, given
from hypothesis import strategies as st
from treq.client import HTTPClient
from treq.testing import StubTreq
from twisted.internet import reactor
from twisted.internet import ssl as tls
from twisted.internet.interfaces import IReactorSSL
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactor, StringTransport
from twisted.logger import LogEvent, formatEvent
from twisted.web import server
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.http_headers import Headers
from twisted.web.iweb import IPolicyForHTTPS
from zope.interface import implementer
from zope.interface.verify import verifyObject

from app.cli.options import config_from_args
from app.http.pages import HOME_LINK, page
from app.http.request import Request
from app.http.site import Site
from app.sessions.store import (
    COOKIE_NAME,
    MAX_SWEEP_DELAY,
    SECURE_COOKIE_NAME,
    Session,
    cookie_uids,
)
from app.site import build_site
from app.testing import stub_treq
from routes.sessions import Counter, ICounter, register_counter, session_page
from tests.conftest import content_of, fetch, port_number, text_of
from tests.rawhttp import parse_response

TIMEOUT = 60.0
#: A step that is exact in binary floating point, so clock sums stay exact.
EPSILON = 0.25


def _cookies(response: Any) -> list[bytes]:
    return list(response.headers.getRawHeaders(b"set-cookie", []))


def _uid_in(body: str) -> str:
    found = re.search(r"<code>([^<]*)</code>", body)
    assert found is not None
    return found.group(1)


def _expiry_lines(events: list[LogEvent]) -> list[str]:
    return [
        text
        for text in (formatEvent(event) for event in events)
        if "session expired" in text
    ]


def _uid(client: StubTreq) -> str:
    response = fetch(client, "GET", "/session")
    assert response.code == 200
    return _uid_in(text_of(response))


def _visit(client: StubTreq, path: str) -> str:
    response = fetch(client, "GET", path)
    assert response.code == 200
    return text_of(response)


def _exchange(site: Site, data: bytes) -> bytes:
    """
    What C{site} answers to the bytes C{data}, over a connection in memory:
    for requests that no client library sends.
    """
    channel = site.buildProtocol(None)
    transport = StringTransport()
    channel.makeConnection(transport)
    channel.dataReceived(data)
    answer: bytes = transport.value()
    return answer


def _demo(clock: Clock, *args: str) -> Site:
    """
    The demo site with the options C{args}: its timers on C{clock}, and a
    reactor that opens nothing.
    """
    return build_site(config_from_args(list(args)), MemoryReactor(), clock)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def site(clock: Clock) -> Site:
    return _demo(clock)


@pytest.fixture
def client(site: Site) -> StubTreq:
    return stub_treq(site)


@pytest.fixture
def timed(clock: Clock) -> Site:
    """
    The demo site with sessions that end L{TIMEOUT} seconds after their last
    use.
    """
    return _demo(clock, "--session-timeout", str(TIMEOUT))


def _site(clock: Clock, *args: str) -> Site:
    return build_site(config_from_args(["--no-demo", *args]), reactor, clock)


# -- the pages ------------------------------------------------------------------


def test_session_page_shows_the_uid_of_the_cookie(site: Site, client: StubTreq) -> None:
    response = fetch(client, "GET", "/session")
    assert response.code == 200
    assert response.headers.getRawHeaders(b"content-type") == [
        b"text/html; charset=utf-8"
    ]
    [cookie] = _cookies(response)
    value = cookie.split(b";")[0].partition(b"=")[2].decode()
    assert _uid_in(text_of(response)) == value
    assert list(site.held_sessions) == [value.encode()]


def test_session_page_is_the_page_of_its_uid(client: StubTreq) -> None:
    uid = _uid(client)
    again = fetch(client, "GET", "/session")
    assert _cookies(again) == []
    assert content_of(again) == session_page(uid)
    assert session_page(uid) == page(
        "Session",
        f"<h1>Session</h1>\n<p>Your session id is <code>{uid}</code>.</p>\n"
        '<form method="POST" action="/session/expire">'
        '<input type="submit" value="Expire it"></form>\n'
        f"{HOME_LINK}",
    )


def test_session_page_escapes_a_uid_that_is_not_plain(
    site: Site, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(site, "make_uid", lambda: b"<odd&uid>")
    raw = _exchange(site, b"GET /session HTTP/1.1\r\nHost: x\r\n\r\n")
    status, _, body = parse_response(raw)
    assert status == 200
    assert body == session_page("&lt;odd&amp;uid&gt;")


def test_cookie_flags_over_http(client: StubTreq) -> None:
    response = fetch(client, "GET", "/session")
    content_of(response)
    [cookie] = _cookies(response)
    name_value, *attributes = [part.strip() for part in cookie.split(b";")]
    assert name_value.startswith(COOKIE_NAME + b"=")
    assert sorted(attributes) == [b"HttpOnly", b"Path=/", b"SameSite=Lax"]
    assert b"secure" not in cookie.lower()


def test_cookie_value_is_256_random_bits_in_hex(site: Site) -> None:
    values = set()
    for _ in range(5):
        response = fetch(stub_treq(site), "GET", "/session")
        content_of(response)
        [cookie] = _cookies(response)
        value = cookie.split(b";")[0].partition(b"=")[2]
        assert re.fullmatch(b"[0-9a-f]{64}", value)
        values.add(value)
    assert len(values) == 5


def test_a_client_keeps_its_session_and_gets_one_cookie(
    site: Site, client: StubTreq
) -> None:
    uid = _uid(client)
    second = fetch(client, "GET", "/session")
    assert _uid_in(text_of(second)) == uid
    assert _cookies(second) == []
    assert len(site.held_sessions) == 1


def test_counter_counts_per_session_and_restarts_after_expiry(
    site: Site, client: StubTreq
) -> None:
    for visit in (1, 2, 3):
        assert f"Visit #{visit} for you!" in _visit(client, "/counter")
    response = fetch(client, "POST", "/session/expire")
    assert response.code == 200
    assert "Your session has expired." in text_of(response)
    assert len(site.held_sessions) == 0
    assert "Visit #1 for you!" in _visit(client, "/counter")
    assert "Visit #2 for you!" in _visit(client, "/counter")


def test_head_of_the_counter_does_not_count(client: StubTreq) -> None:
    assert "Visit #1 for you!" in _visit(client, "/counter")
    head = fetch(client, "HEAD", "/counter")
    assert head.code == 200
    content_of(head)
    assert "Visit #2 for you!" in _visit(client, "/counter")


def test_expire_tells_the_browser_to_drop_the_cookie(client: StubTreq) -> None:
    _uid(client)
    response = fetch(client, "GET", "/session/expire")
    content_of(response)
    [cookie] = _cookies(response)
    assert cookie.startswith(COOKIE_NAME + b"=;")
    assert b"Max-Age=0" in cookie
    assert b"HttpOnly" in cookie


def test_two_clients_do_not_share_a_session(site: Site) -> None:
    alice, bob = stub_treq(site), stub_treq(site)
    assert "Visit #1 " in _visit(alice, "/counter")
    assert "Visit #2 " in _visit(alice, "/counter")
    assert "Visit #1 " in _visit(bob, "/counter")
    assert "Visit #3 " in _visit(alice, "/counter")
    assert _uid(alice) != _uid(bob)
    assert len(site.held_sessions) == 2


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_expire_without_a_session_makes_none(
    site: Site, client: StubTreq, method: str
) -> None:
    response = fetch(client, method, "/session/expire")
    assert response.code == 200
    assert "nothing to expire" in text_of(response)
    assert _cookies(response) == []
    assert len(site.held_sessions) == 0


@pytest.mark.parametrize("path", ["/", "/clock", "/health", "/pay", "/nowhere"])
def test_pages_that_use_no_session_make_none(
    site: Site, client: StubTreq, path: str
) -> None:
    response = fetch(client, "GET", path)
    content_of(response)
    assert _cookies(response) == []
    assert len(site.held_sessions) == 0


@pytest.mark.parametrize(
    "cookie",
    [
        b"app_session=" + b"0" * 64,
        b"app_session=" + b"A" * 64,
        b"app_session=" + b"f" * 63,
        b"app_session=",
        b"app_session",
        b"app_session=" + b"x" * 8000,
        b"app_session=\xff\xfe\xc3\xa9\x80",
        b'app_session="' + b"0" * 64 + b'"',
        b"; ;;==;app_session==;=",
        b"; ".join([b"app_session=%d" % n for n in range(500)]),
        b"__Host-app_session=" + b"0" * 64,
    ],
)
def test_a_forged_or_garbage_cookie_gets_a_fresh_session(
    site: Site, cookie: bytes
) -> None:
    raw = _exchange(
        site,
        b"GET /session HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
        b"Cookie: " + cookie + b"\r\n\r\n",
    )
    status, headers, body = parse_response(raw)
    assert status == 200
    value = headers[b"set-cookie"].split(b";")[0].partition(b"=")[2]
    assert re.fullmatch(b"[0-9a-f]{64}", value)
    assert value not in cookie
    assert value.decode() in body.decode()
    assert list(site.held_sessions) == [value]


def test_the_live_one_among_several_same_name_cookies_is_used(
    site: Site, client: StubTreq
) -> None:
    uid = _uid(client).encode()
    raw = _exchange(
        site,
        b"GET /counter HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
        b"Cookie: app_session=junk; app_session=" + b"1" * 64 + b"\r\n"
        b"Cookie: app_session=" + uid + b"\r\n\r\n",
    )
    status, headers, body = parse_response(raw)
    assert status == 200
    assert b"set-cookie" not in headers
    assert b"Visit #1 for you!" in body
    assert list(site.held_sessions) == [uid]


# -- TLS -------------------------------------------------------------------------


def _self_signed(directory: Path) -> tls.PrivateCertificate:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, hashes.SHA256())
    )
    pem = certificate.public_bytes(serialization.Encoding.PEM) + key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    (directory / "server.pem").write_bytes(pem)
    loaded: tls.PrivateCertificate = tls.PrivateCertificate.loadPEM(pem)
    return loaded


@implementer(IPolicyForHTTPS)
class _TrustOnly:
    """
    Trust one self-signed certificate, named C{localhost}, for any address.
    """

    def __init__(self, certificate: tls.Certificate) -> None:
        self.certificate = certificate

    def creatorForNetloc(self, hostname: bytes, port: int) -> Any:
        return tls.optionsForClientTLS("localhost", trustRoot=self.certificate)


@pytest_twisted.ensureDeferred
async def test_cookie_is_secure_over_tls(tmp_path: Path) -> None:
    certificate = _self_signed(tmp_path)
    site = build_site(config_from_args([]), reactor)
    # Started, so that shutdown stops the store's sweep on the global reactor.
    site.service.startService()
    port = IReactorSSL(reactor).listenSSL(
        0, site, certificate.options(), interface="127.0.0.1"
    )
    pool = HTTPConnectionPool(reactor, persistent=False)
    client = HTTPClient(
        Agent(reactor, contextFactory=_TrustOnly(certificate), pool=pool)
    )
    try:
        url = f"https://127.0.0.1:{port_number(port)}"
        response = await client.get(url + "/counter")
        assert "Visit #1 for you!" in await response.text()
        [cookie] = _cookies(response)
        name_value, *attributes = [part.strip() for part in cookie.split(b";")]
        name, _, value = name_value.partition(b"=")
        assert name == SECURE_COOKIE_NAME
        assert sorted(attributes) == [
            b"HttpOnly",
            b"Path=/",
            b"SameSite=Lax",
            b"Secure",
        ]
        # The TLS cookie is the one that names the session over TLS.
        again = await client.get(
            url + "/counter", headers=Headers({b"cookie": [name_value]})
        )
        assert "Visit #2 for you!" in await again.text()
        plain = await client.get(
            url + "/counter", headers=Headers({b"cookie": [COOKIE_NAME + b"=" + value]})
        )
        assert "Visit #1 for you!" in await plain.text()
    finally:
        await pool.closeCachedConnections()
        await site.shutdown([port])


# -- expiry on the site's clock -----------------------------------------------------


def test_a_session_survives_requests_closer_than_the_timeout(
    timed: Site, clock: Clock
) -> None:
    client = stub_treq(timed)
    uid = _uid(client)
    for _ in range(10):
        clock.advance(TIMEOUT - EPSILON)
        assert _uid(client) == uid
    assert clock.seconds() > 9 * TIMEOUT


def test_a_session_ends_exactly_one_timeout_after_the_last_request(
    timed: Site, clock: Clock
) -> None:
    client = stub_treq(timed)
    uid = _uid(client)
    clock.advance(TIMEOUT / 2)
    assert _uid(client) == uid
    clock.advance(TIMEOUT - EPSILON)
    assert list(timed.held_sessions) == [uid.encode()]
    clock.advance(EPSILON)
    assert len(timed.held_sessions) == 0
    assert _uid(client) != uid


def test_logme_logs_the_expiry_once_exactly_at_the_end(
    timed: Site, clock: Clock, captured_log: list[LogEvent]
) -> None:
    client = stub_treq(timed)
    uid = _uid(client)
    for _ in range(3):
        _visit(client, "/session/logme")
    [session] = timed.held_sessions.values()
    assert len(session.expireCallbacks) == 1
    clock.advance(TIMEOUT - EPSILON)
    assert _expiry_lines(captured_log) == []
    clock.advance(EPSILON)
    [line] = _expiry_lines(captured_log)
    assert uid in line
    assert [e["log_level"].name for e in captured_log if "uid" in e] == ["info"]
    clock.advance(10 * TIMEOUT)
    assert len(_expiry_lines(captured_log)) == 1


def test_the_logme_callback_keeps_only_the_uid(site: Site, client: StubTreq) -> None:
    uid = _uid(client)
    _visit(client, "/session/logme")
    [session] = site.held_sessions.values()
    [callback] = session.expireCallbacks
    kept = [ref for ref in gc.get_referents(callback) if ref is not type(callback)]
    assert kept == [uid]


def test_logme_then_expire_page_logs_once(
    client: StubTreq, captured_log: list[LogEvent]
) -> None:
    uid = _uid(client)
    _visit(client, "/session/logme")
    _visit(client, "/session/expire")
    _visit(client, "/session/expire")
    [line] = _expiry_lines(captured_log)
    assert uid in line


def test_past_max_sessions_the_least_recently_used_expires(
    clock: Clock, captured_log: list[LogEvent]
) -> None:
    site = _demo(clock, "--max-sessions", "3")
    first, second, third, fourth = (stub_treq(site) for _ in range(4))
    uids = {}
    for name, client in (("first", first), ("second", second), ("third", third)):
        _visit(client, "/session/logme")
        uids[name] = _uid(client)
    # The first is used again, so the second is now the least recent.
    assert _uid(first) == uids["first"]
    uids["fourth"] = _uid(fourth)
    assert len(site.held_sessions) == 3
    [line] = _expiry_lines(captured_log)
    assert uids["second"] in line
    assert set(site.held_sessions) == {
        uids[name].encode() for name in ("first", "third", "fourth")
    }
    assert _uid(first) == uids["first"]
    assert _uid(second) != uids["second"]


# -- the store ------------------------------------------------------------------------


def test_one_sweep_timer_and_none_without_sessions(clock: Clock) -> None:
    site = _site(clock, "--session-timeout", "10")
    assert clock.getDelayedCalls() == []
    sessions = [site.makeSession() for _ in range(1000)]
    assert len(clock.getDelayedCalls()) == 1
    for session in sessions:
        session.expire()
    assert len(site.held_sessions) == 0
    assert clock.getDelayedCalls() == []


def test_the_sweep_expires_each_session_at_its_own_deadline(clock: Clock) -> None:
    site = _site(clock, "--session-timeout", "10")
    early = site.makeSession()
    clock.advance(3)
    late = site.makeSession()
    ended: list[str] = []
    early.notifyOnExpire(lambda: ended.append("early"))
    late.notifyOnExpire(lambda: ended.append("late"))
    clock.advance(7 - EPSILON)
    assert ended == []
    clock.advance(EPSILON)
    assert ended == ["early"]
    clock.advance(3 - EPSILON)
    assert ended == ["early"]
    clock.advance(EPSILON)
    assert ended == ["early", "late"]
    assert clock.getDelayedCalls() == []


@given(
    st.floats(min_value=0, max_value=2e9),
    st.floats(min_value=1e-3, max_value=1e7),
)
def test_the_sweep_fires_when_the_clock_reads_the_deadline(
    start: float, timeout: float
) -> None:
    clock = Clock()
    clock.rightNow = start
    site = _site(clock, "--session-timeout", repr(timeout))
    site.makeSession()
    deadline = start + min(timeout, MAX_SWEEP_DELAY)
    clock.rightNow = math.nextafter(deadline, 0.0)
    clock.advance(0)
    assert len(site.held_sessions) == 1
    clock.rightNow = deadline
    clock.advance(0)
    assert len(site.held_sessions) == (1 if timeout > MAX_SWEEP_DELAY else 0)


def test_touch_slides_the_deadline_and_reorders(clock: Clock) -> None:
    site = _site(clock, "--session-timeout", "10")
    first, second = site.makeSession(), site.makeSession()
    clock.advance(6)
    first.touch()
    assert list(site.held_sessions) == [second.uid, first.uid]
    clock.advance(4)
    assert list(site.held_sessions) == [first.uid]
    clock.advance(6 - EPSILON)
    assert site.getSession(first.uid) is first
    clock.advance(EPSILON)
    with pytest.raises(KeyError):
        site.getSession(first.uid)


def test_a_stale_session_is_never_returned_before_the_sweep(clock: Clock) -> None:
    site = _site(clock, "--session-timeout", "10")
    session = site.makeSession()
    ended: list[bool] = []
    session.notifyOnExpire(lambda: ended.append(True))
    clock.rightNow = 10.0  # the time has come, the sweep has not run yet
    with pytest.raises(KeyError):
        site.getSession(session.uid)
    assert ended == [True]
    clock.advance(0)
    assert ended == [True]
    assert clock.getDelayedCalls() == []


def test_eviction_runs_the_callbacks_of_the_least_recently_used(
    clock: Clock,
) -> None:
    site = _site(clock, "--max-sessions", "2")
    ended: list[bytes] = []
    first, second = site.makeSession(), site.makeSession()
    for session in (first, second):
        session.notifyOnExpire(lambda uid=session.uid: ended.append(uid))
    first.touch()
    third = site.makeSession()
    assert ended == [second.uid]
    assert list(site.held_sessions) == [first.uid, third.uid]


def test_expiring_twice_runs_callbacks_once(clock: Clock) -> None:
    site = _site(clock)
    session = site.makeSession()
    ended: list[bool] = []
    session.notifyOnExpire(lambda: ended.append(True))
    session.expire()
    session.expire()
    assert ended == [True]


def test_a_failing_callback_is_logged_and_the_others_still_run(
    clock: Clock, captured_log: list[LogEvent]
) -> None:
    site = _site(clock, "--session-timeout", "10")
    session = site.makeSession()
    ended: list[bool] = []
    session.notifyOnExpire(lambda: 1 / 0)
    session.notifyOnExpire(lambda: ended.append(True))
    clock.advance(10)
    assert ended == [True]
    [failure] = [e for e in captured_log if "log_failure" in e]
    assert failure["log_failure"].check(ZeroDivisionError)


def test_the_sweep_stops_and_resumes_with_the_site(clock: Clock) -> None:
    site = _site(clock, "--session-timeout", "10")
    site.service.startService()
    session = site.makeSession()
    assert len(clock.getDelayedCalls()) == 1
    site.service.stopService()
    assert clock.getDelayedCalls() == []
    site.service.startService()
    clock.advance(10)
    assert len(site.held_sessions) == 0
    assert session.uid not in site.held_sessions
    site.service.stopService()


def test_a_long_timeout_does_not_overflow_the_timer(clock: Clock) -> None:
    site = _site(clock, "--session-timeout", "1e12")
    site.makeSession()
    [call] = clock.getDelayedCalls()
    assert call.getTime() <= 3600
    clock.advance(3600)
    assert len(site.held_sessions) == 1
    assert len(clock.getDelayedCalls()) == 1


def test_sessions_keep_twisteds_api(clock: Clock) -> None:
    site = _site(clock, "--session-timeout", "30")
    session = site.makeSession()
    assert isinstance(session, server.Session)
    assert site.sessionFactory is Session
    assert session.sessionTimeout == 30
    assert session.site is site
    assert session.lastModified == clock.seconds()


def test_counter_is_the_icounter_adapter_of_a_session(clock: Clock) -> None:
    site = _site(clock)
    session = site.makeSession()
    counter = ICounter(session)
    assert isinstance(counter, Counter)
    verifyObject(ICounter, counter)
    assert ICounter(session) is counter
    assert ICounter(site.makeSession()) is not counter


def test_registering_the_counter_again_is_harmless(clock: Clock) -> None:
    register_counter()
    register_counter()
    first, second = _site(clock), _site(clock)
    ICounter(first.makeSession()).value = 5
    assert ICounter(second.makeSession()).value == 0


def test_a_thousand_sessions_cost_under_two_kib_each(clock: Clock) -> None:
    site = _site(clock)
    count = 1000
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for _ in range(count):
            ICounter(site.makeSession()).value = 1
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert len(site.held_sessions) == count
    assert (after - before) / count < 2048


# -- hostile cookie headers, in memory -------------------------------------------------


def _request(site: Site, cookie_headers: list[bytes]) -> Request:
    channel = site.buildProtocol(None)
    channel.makeConnection(StringTransport())
    request = Request(channel)
    request.site = site
    if cookie_headers:
        request.requestHeaders.setRawHeaders(b"cookie", cookie_headers)
    return request


_COOKIE_HEADERS = st.lists(
    st.one_of(
        st.binary(max_size=300),
        st.just(b"app_session=LIVE"),
        st.just(b"a=1;app_session=LIVE ; b"),
        st.just(b"app_session=LIVEx"),
        st.just(b"__Host-app_session=LIVE"),
    ),
    max_size=5,
)


@given(_COOKIE_HEADERS)
def test_any_cookie_header_gets_its_session_or_a_fresh_one(
    headers: list[bytes],
) -> None:
    clock = Clock()
    site = _site(clock)
    live = site.makeSession()
    headers = [header.replace(b"LIVE", live.uid) for header in headers]
    names_it = re.compile(rb"(?:^|;)\s*app_session=" + live.uid + rb"\s*(?:;|$)")
    request = _request(site, headers)
    session = request.getSession()
    assert session.uid in site.held_sessions
    assert (session is live) == any(names_it.search(h) for h in headers)
    if session is not live:
        [cookie] = request.cookies
        assert cookie.startswith(COOKIE_NAME + b"=" + session.uid + b";")
        assert len(site.held_sessions) == 2
    else:
        assert request.cookies == []


def cookie_values(headers: list[bytes], name: bytes) -> list[bytes]:
    """
    The values of every cookie called C{name} in C{headers}, in order, as
    the header's plain grammar gives them: the reference for cookie_uids.
    """
    values = []
    for header in headers:
        for pair in header.split(b";"):
            key, sep, value = pair.partition(b"=")
            if sep and key.strip() == name:
                values.append(value.strip())
    return values


@given(st.lists(st.binary(max_size=100), max_size=5), st.binary(max_size=20))
def test_cookie_values_finds_every_value_of_the_name(
    others: list[bytes], value: bytes
) -> None:
    value = value.replace(b";", b"").strip()
    headers = [b"; ".join(others), b"app_session=" + value]
    assert cookie_values(headers, b"app_session")[-1] == value


_HEX64 = re.compile(b"[0-9a-f]{64}")

_SPACE = st.sampled_from([b"", b" ", b"\t", b" \x0b\x0c"])
_COOKIE_PAIR = st.one_of(
    st.tuples(
        _SPACE,
        st.sampled_from(
            [b"app_session", b"__Host-app_session", b"xapp_session", b"a b"]
        ),
        _SPACE,
        st.sampled_from([b"=", b"==", b""]),
        _SPACE,
        st.sampled_from([b"0" * 64, b"ab" * 32, b"AB" * 32, b"f" * 63, b"f" * 65]),
        st.sampled_from([b"", b"=", b"x"]),
        _SPACE,
    ).map(b"".join),
    st.binary(max_size=20),
)
_COOKIE_HEADER = st.lists(_COOKIE_PAIR, max_size=5).map(b";".join)


@given(st.lists(_COOKIE_HEADER, max_size=3))
@example([b"app_session=" + b"0" * 64 + b";app_session=" + b"ab" * 32])
@example([b" __Host-app_session = " + b"0" * 64 + b" \t;app_session=" + b"0" * 64])
def test_cookie_uids_are_the_cookie_values_that_are_uids(
    headers: list[bytes],
) -> None:
    for name in (COOKIE_NAME, SECURE_COOKIE_NAME, b"other"):
        expected = [v for v in cookie_values(headers, name) if _HEX64.fullmatch(v)]
        assert cookie_uids(headers, name) == expected


def _new_cookie(request: Request) -> tuple[bytes, bytes]:
    [cookie] = request.cookies
    name_value, _, attributes = cookie.partition(b"; ")
    name, _, value = name_value.partition(b"=")
    assert _HEX64.fullmatch(value)
    return name, attributes


def test_the_cookie_of_a_new_session_over_http(clock: Clock) -> None:
    request = _request(_site(clock), [])
    session = request.getSession()
    assert request.cookies == [
        COOKIE_NAME + b"=" + session.uid + b"; Path=/; HttpOnly; SameSite=Lax"
    ]


def test_the_cookie_of_a_new_session_over_tls(clock: Clock) -> None:
    request = _request(_site(clock), [])
    request.setHost(b"localhost", 443, ssl=True)
    request.getSession()
    assert _new_cookie(request) == (
        SECURE_COOKIE_NAME,
        b"Path=/; HttpOnly; SameSite=Lax; Secure",
    )


def test_force_not_secure_uses_the_plain_cookie_over_tls(clock: Clock) -> None:
    site = _site(clock)
    request = _request(site, [])
    request.setHost(b"localhost", 443, ssl=True)
    plain = request.getSession(forceNotSecure=True)
    assert _new_cookie(request) == (COOKIE_NAME, b"Path=/; HttpOnly; SameSite=Lax")
    again = _request(site, [COOKIE_NAME + b"=" + plain.uid])
    again.setHost(b"localhost", 443, ssl=True)
    assert again.getSession(forceNotSecure=True) is plain
    assert again.getSession() is not plain


def test_a_second_lookup_in_a_request_touches_the_same_session(
    clock: Clock,
) -> None:
    site = _site(clock, "--session-timeout", "10")
    request = _request(site, [])
    session = request.getSession()
    clock.advance(4)
    assert request.getSession() is session
    assert session.lastModified == 4
    assert len(request.cookies) == 1


def test_a_session_found_by_its_cookie_is_touched(clock: Clock) -> None:
    site = _site(clock, "--session-timeout", "10")
    first, session = site.makeSession(), site.makeSession()
    clock.advance(4)
    request = _request(site, [COOKIE_NAME + b"=" + session.uid])
    assert request.getSession() is session
    assert session.lastModified == 4
    assert list(site.held_sessions) == [first.uid, session.uid]
    assert request.cookies == []
    clock.advance(10 - EPSILON)
    assert list(site.held_sessions) == [session.uid]


def test_a_session_that_ends_within_a_request_is_replaced(clock: Clock) -> None:
    site = _site(clock, "--session-timeout", "10")
    request = _request(site, [])
    session = request.getSession()
    ended: list[bool] = []
    session.notifyOnExpire(lambda: ended.append(True))
    clock.rightNow = 10.0  # past its deadline, before the sweep has run
    fresh = request.getSession()
    assert fresh is not session
    assert ended == [True]
    assert list(site.held_sessions) == [fresh.uid]
    assert [cookie.split(b";")[0] for cookie in request.cookies] == [
        COOKIE_NAME + b"=" + session.uid,
        COOKIE_NAME + b"=" + fresh.uid,
    ]
