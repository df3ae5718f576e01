"""
The hashing pool shared fairly between client addresses: a few waiting
places each, taken in turn; the Basic credentials that carry the address
there; and, on a live server, wrong passwords flooding from two addresses
while a third one logs in.
"""

from __future__ import annotations

import base64
import threading
from collections.abc import Iterator
from typing import Any

import bcrypt
import pytest
import pytest_twisted
from twisted.cred.credentials import IUsernamePassword, UsernamePassword
from twisted.internet import reactor
from twisted.internet.address import IPv4Address, UNIXAddress
from twisted.internet.defer import Deferred, DeferredList, ensureDeferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.interfaces import IReactorFromThreads
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactor, StringTransport
from twisted.web.test.requesthelper import DummyRequest
from zope.interface.verify import verifyObject

from app.cli.options import config_from_args
from app.http.request import Request
from app.site import build_site
from app.testing import LiveServer
from auth import (
    BasicCredentialFactory,
    BasicCredentials,
    BcryptChecker,
    HashPool,
    HashPoolBusy,
    IClientCredentials,
    VerifiedCache,
    parse_htpasswd,
)
from tests.conftest import eventually
from tests.paths import TESTS
from tests.rawhttp import RawClient, parse_response

DATA = TESTS / "data" / "auth"
USERS = parse_htpasswd(DATA / "users.htpasswd")

FLOODER, OTHER_FLOODER, NEWCOMER = "127.0.0.2", "127.0.0.3", "127.0.0.1"


class _HeldPool:
    """
    A started pool of one thread, held by a job until C{release} is set, so
    that whatever the test runs next waits in the queue.
    """

    def __init__(self, queue_size: int = 64, per_client: int = 4) -> None:
        self.pool = HashPool(
            IReactorFromThreads(reactor),
            threads=1,
            queue_size=queue_size,
            per_client=per_client,
        )
        self.release = threading.Event()
        self.ran: list[str] = []
        self.pool.startService()
        started = threading.Event()

        def hold() -> None:
            started.set()
            self.release.wait(10)

        self.held = self.pool.run(hold)
        assert started.wait(10)

    def record(self, client: str) -> Deferred[None]:
        """
        Queue a job from C{client} that notes, when it runs, whose it was.
        """
        return self.pool.run(self.ran.append, client, client=client)

    def close(self) -> None:
        self.release.set()
        self.pool.stopService()


@pytest.fixture
def held() -> Iterator[_HeldPool]:
    pool = _HeldPool()
    try:
        yield pool
    finally:
        pool.close()


def _swallow(deferreds: list[Deferred[Any]]) -> None:
    # Checks the stop cancels fail; nothing of interest.
    for deferred in deferreds:
        deferred.addErrback(lambda _: None)


# -- places per address -------------------------------------------------------


def test_a_fifth_waiting_check_from_one_address_is_refused_another_accepted(
    held: _HeldPool,
) -> None:
    queued = [held.record(FLOODER) for _ in range(4)]
    with pytest.raises(HashPoolBusy):
        held.record(FLOODER)
    queued.append(held.record(OTHER_FLOODER))
    _swallow(queued)


def test_the_whole_queue_stays_bounded_across_addresses() -> None:
    held = _HeldPool(queue_size=6, per_client=4)
    try:
        queued = [held.record(FLOODER) for _ in range(4)]
        queued += [held.record(OTHER_FLOODER) for _ in range(2)]
        with pytest.raises(HashPoolBusy):
            held.record(NEWCOMER)
        _swallow(queued)
    finally:
        held.close()


def test_checks_with_no_address_share_one_set_of_places(held: _HeldPool) -> None:
    queued = [held.pool.run(lambda: None) for _ in range(4)]
    with pytest.raises(HashPoolBusy):
        held.pool.run(lambda: None)
    _swallow(queued)


@pytest_twisted.ensureDeferred
async def test_an_address_gets_its_places_back_once_its_checks_ran(
    held: _HeldPool,
) -> None:
    queued = [held.record(FLOODER) for _ in range(4)]
    held.release.set()
    await DeferredList(queued, fireOnOneErrback=True)
    again = [held.record(FLOODER) for _ in range(4)]
    await DeferredList(again, fireOnOneErrback=True)
    assert held.ran == [FLOODER] * 8


# -- turns --------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_checks_are_taken_from_each_address_in_turn(held: _HeldPool) -> None:
    queued = [held.record(FLOODER) for _ in range(4)]
    queued += [held.record(OTHER_FLOODER) for _ in range(4)]
    queued.append(held.record(NEWCOMER))
    held.release.set()
    await DeferredList(queued, fireOnOneErrback=True)
    assert (
        held.ran
        == [FLOODER, OTHER_FLOODER, NEWCOMER]
        + [
            FLOODER,
            OTHER_FLOODER,
        ]
        * 3
    )


# -- the client's address, from the request to the pool ------------------------


def _request_from(address: Any) -> Request:
    request = DummyRequest([b""])
    request.client = address
    # Twisted's DummyRequest stands in for a request without declaring it.
    return request  # type: ignore[return-value]


def test_basic_credentials_carry_the_peer_host() -> None:
    credentials = BasicCredentialFactory("app").decode(
        base64.b64encode(b"alice:wonderland"),
        _request_from(IPv4Address("TCP", FLOODER, 40000)),
    )
    assert verifyObject(IUsernamePassword, credentials)
    assert verifyObject(IClientCredentials, credentials)
    assert credentials.client == FLOODER


def test_basic_credentials_of_a_peer_with_no_host_have_no_address() -> None:
    credentials = BasicCredentialFactory("app").decode(
        base64.b64encode(b"alice:wonderland"), _request_from(UNIXAddress(None))
    )
    assert credentials.client is None


def _request_through(peer: IPv4Address, *args: str) -> Request:
    """
    A request as the channel of a site configured by C{args} makes it for a
    connection from C{peer}, forwarded for 192.0.2.7.
    """
    site = build_site(config_from_args(["--no-demo", *args]), MemoryReactor(), Clock())
    channel = site.buildProtocol(peer)
    channel.makeConnection(StringTransport(peerAddress=peer))
    request = channel.requestFactory(channel)
    request.requestHeaders.setRawHeaders(b"x-forwarded-for", [b"192.0.2.7"])
    return request


@pytest.mark.parametrize(
    ("trusted", "client"), [("127.0.0.0/8", "192.0.2.7"), ("10.0.0.0/8", FLOODER)]
)
def test_basic_credentials_behind_a_trusted_proxy_carry_the_forwarded_client(
    trusted: str, client: str
) -> None:
    # So that clients behind one proxy do not share its places (SPEC §12).
    request = _request_through(
        IPv4Address("TCP", FLOODER, 40000), "--trusted-proxy", trusted
    )
    credentials = BasicCredentialFactory("app").decode(
        base64.b64encode(b"alice:wonderland"), request
    )
    assert credentials.client == client


def test_the_checker_queues_a_check_as_its_clients(held: _HeldPool) -> None:
    checker = BcryptChecker(USERS, held.pool, VerifiedCache(Clock()))

    def check(client: str) -> object:
        return checker.check(BasicCredentials(b"alice", b"wrong", client))

    queued = [check(FLOODER) for _ in range(4)]
    with pytest.raises(HashPoolBusy):
        check(FLOODER)
    queued.append(check(OTHER_FLOODER))
    # Credentials that name no client share the places of the unaddressed.
    queued.append(checker.check(UsernamePassword(b"alice", b"wrong")))
    assert all(isinstance(deferred, Deferred) for deferred in queued)
    _swallow([d for d in queued if isinstance(d, Deferred)])


# -- live ---------------------------------------------------------------------


def _basic(user: bytes, password: bytes) -> bytes:
    return b"Basic " + base64.b64encode(user + b":" + password)


async def _get_private(
    port: int, source: str, authorization: bytes
) -> tuple[int, dict[bytes, bytes]]:
    """
    The status and headers of C{GET /private/}, sent from the address
    C{source}.
    """
    endpoint = TCP4ClientEndpoint(
        reactor, "127.0.0.1", port, timeout=10, bindAddress=(source, 0)
    )
    client = RawClient()
    await connectProtocol(endpoint, client)
    client.send(
        b"GET /private/ HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: "
        + authorization
        + b"\r\nConnection: close\r\n\r\n"
    )
    status, headers, _ = parse_response(await client.closed)
    return status, headers


@pytest_twisted.ensureDeferred
async def test_wrong_passwords_from_two_addresses_leave_a_login_served(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Wrong passwords are held in bcrypt until the test lets one through.
    gate = threading.Semaphore(0)
    lock = threading.Lock()
    entered = [0]
    both_threads_held: Deferred[None] = Deferred()
    real = bcrypt.checkpw

    def held_when_wrong(password: bytes, hashed: bytes) -> bool:
        if password != b"wonderland":
            with lock:
                entered[0] += 1
                if entered[0] == 2:
                    IReactorFromThreads(reactor).callFromThread(
                        both_threads_held.callback, None
                    )
            gate.acquire(timeout=10)
        return bool(real(password, hashed))

    monkeypatch.setattr(bcrypt, "checkpw", held_when_wrong)
    server = await LiveServer.start(
        [
            "--no-demo",
            "--htpasswd",
            str(DATA / "users.htpasswd"),
            "--homes",
            str(DATA / "homes"),
        ]
    )
    port = server.port_number
    wrong = _basic(b"alice", b"wrong")

    def flood(source: str, count: int) -> list[Deferred[tuple[int, Any]]]:
        return [ensureDeferred(_get_private(port, source, wrong)) for _ in range(count)]

    answered: list[Deferred[tuple[int, Any]]] = []
    pool = server.site.service.getServiceNamed(HashPool.name)
    assert isinstance(pool, HashPool)
    try:
        try:
            # Both pool threads busy with one wrong password of each flooder.
            answered += flood(FLOODER, 1) + flood(OTHER_FLOODER, 1)
            await both_threads_held
            for source in (FLOODER, OTHER_FLOODER):
                # The first answer is the refusal of the fifth: four now wait.
                requests = flood(source, 5)
                answered += requests
                (status, headers), _ = await DeferredList(
                    requests, fireOnOneCallback=True, fireOnOneErrback=True
                )
                assert (status, headers[b"retry-after"]) == (503, b"1")
            login = ensureDeferred(
                _get_private(port, NEWCOMER, _basic(b"alice", b"wonderland"))
            )
            await eventually(lambda: pool.waiting(NEWCOMER), "the login to wait")
            # Each check let through frees a thread for the next in turn: one
            # of each flooder, then the login (first come, first served, it
            # would wait for all eight).
            gate.release(3)
            status, _ = await login
            assert status == 200
            # Served while the rest of the flood still waits.
            assert len([request for request in answered if not request.called]) >= 7
        finally:
            gate.release(100)
        codes = sorted([(await request)[0] for request in answered])
        assert codes == [401] * 10 + [503] * 2
    finally:
        await server.stop()
