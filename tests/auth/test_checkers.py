"""
The bcrypt checker: same work for unknown users, 72 bytes, the pool, the
cache of verified credentials.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
import pytest_twisted
from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import UsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.internet import reactor
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IReactorFromThreads
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from zope.interface.verify import verifyObject

from auth import (
    BcryptChecker,
    DigestChecker,
    HashPool,
    HashPoolBusy,
    IImmediateChecker,
    VerifiedCache,
    parse_htpasswd,
)
from tests.paths import TESTS

DATA = TESTS / "data" / "auth"
USERS = parse_htpasswd(DATA / "users.htpasswd")
LONG_PASSWORD = b"x" * 72 + b"TAIL-IGNORED"


@pytest.fixture
def pool() -> Iterator[HashPool]:
    hashing = HashPool(IReactorFromThreads(reactor))
    hashing.startService()
    yield hashing
    hashing.stopService()


def _checker(pool: HashPool, clock: Clock | None = None) -> BcryptChecker:
    return BcryptChecker(USERS, pool, VerifiedCache(clock or Clock()))


async def _outcome(checker: BcryptChecker, user: bytes, password: bytes) -> object:
    try:
        return await checker.requestAvatarId(UsernamePassword(user, password))
    except UnauthorizedLogin:
        return "refused"


def test_checkers_provide_interface(pool: HashPool) -> None:
    assert verifyObject(ICredentialsChecker, _checker(pool))
    assert verifyObject(ICredentialsChecker, DigestChecker({}))


@pytest_twisted.ensureDeferred
async def test_right_password_is_accepted(pool: HashPool) -> None:
    assert await _outcome(_checker(pool), b"alice", b"wonderland") == b"alice"


@pytest_twisted.ensureDeferred
async def test_wrong_password_costs_one_bcrypt(
    pool: HashPool, hash_calls: list[bytes]
) -> None:
    assert await _outcome(_checker(pool), b"alice", b"wrong") == "refused"
    assert hash_calls == [USERS["alice"]]


@pytest_twisted.ensureDeferred
async def test_unknown_user_costs_one_bcrypt_of_the_same_cost(
    pool: HashPool, hash_calls: list[bytes]
) -> None:
    assert await _outcome(_checker(pool), b"mallory", b"wrong") == "refused"
    assert len(hash_calls) == 1
    assert hash_calls[0] not in USERS.values()
    assert hash_calls[0][4:7] == USERS["alice"][4:7] == b"04$"


@pytest_twisted.ensureDeferred
async def test_unknown_user_consults_the_cache_as_a_known_one_does(
    pool: HashPool, monkeypatch: pytest.MonkeyPatch
) -> None:
    lookups: list[bytes] = []
    real = VerifiedCache.verified

    def counting(cache: VerifiedCache, user: str, hashed: bytes, pw: bytes) -> bool:
        lookups.append(hashed)
        return real(cache, user, hashed, pw)

    monkeypatch.setattr(VerifiedCache, "verified", counting)
    checker = _checker(pool)
    assert await _outcome(checker, b"alice", b"wrong") == "refused"
    assert await _outcome(checker, b"mallory", b"wrong") == "refused"
    assert len(lookups) == 2 and lookups[1] not in USERS.values()


@pytest_twisted.ensureDeferred
async def test_not_plain_user_name_is_refused_before_hashing(
    pool: HashPool, hash_calls: list[bytes]
) -> None:
    assert await _outcome(_checker(pool), b"../alice", b"wonderland") == "refused"
    assert await _outcome(_checker(pool), b"\xff", b"wonderland") == "refused"
    assert hash_calls == []


@pytest_twisted.ensureDeferred
async def test_only_first_72_bytes_of_a_password_count(pool: HashPool) -> None:
    checker = _checker(pool)
    assert await _outcome(checker, b"long", LONG_PASSWORD) == b"long"
    assert await _outcome(checker, b"long", b"x" * 72) == b"long"
    assert await _outcome(checker, b"long", b"x" * 72 + b"other") == b"long"
    assert await _outcome(checker, b"long", b"x" * 71) == "refused"


@pytest_twisted.ensureDeferred
async def test_1000_byte_password_is_refused_not_an_error(pool: HashPool) -> None:
    assert await _outcome(_checker(pool), b"alice", b"p" * 1000) == "refused"


@pytest_twisted.ensureDeferred
async def test_verified_credentials_are_cached(
    pool: HashPool, hash_calls: list[bytes]
) -> None:
    checker = _checker(pool)
    for _ in range(3):
        assert await _outcome(checker, b"alice", b"wonderland") == b"alice"
    assert len(hash_calls) == 1


@pytest_twisted.ensureDeferred
async def test_cache_does_not_accept_another_password(
    pool: HashPool, hash_calls: list[bytes]
) -> None:
    checker = _checker(pool)
    assert await _outcome(checker, b"alice", b"wonderland") == b"alice"
    assert await _outcome(checker, b"alice", b"wonderland!") == "refused"
    assert len(hash_calls) == 2


@pytest_twisted.ensureDeferred
async def test_cache_entries_expire_on_the_clock(
    pool: HashPool, hash_calls: list[bytes]
) -> None:
    clock = Clock()
    checker = _checker(pool, clock)
    assert await _outcome(checker, b"alice", b"wonderland") == b"alice"
    clock.advance(60)
    assert await _outcome(checker, b"alice", b"wonderland") == b"alice"
    assert len(hash_calls) == 2


def test_cache_is_keyed_by_the_stored_hash() -> None:
    cache = VerifiedCache(Clock())
    cache.remember("alice", b"$2y$04$old", b"pw")
    assert cache.verified("alice", b"$2y$04$old", b"pw")
    assert not cache.verified("alice", b"$2y$04$new", b"pw")
    assert not cache.verified("bob", b"$2y$04$old", b"pw")


def test_cache_is_bounded() -> None:
    cache = VerifiedCache(Clock(), max_entries=3)
    for index in range(10):
        cache.remember("alice", b"h", b"%d" % index)
    assert len(cache) == 3
    assert cache.verified("alice", b"h", b"9")
    assert not cache.verified("alice", b"h", b"0")


# -- answering at once -----------------------------------------------------------


def _stopped_checker(
    cache: VerifiedCache, users: dict[str, bytes] | None = None
) -> BcryptChecker:
    """
    A checker whose pool is not running: whatever needs bcrypt raises
    L{HashPoolBusy} instead of being accepted.
    """
    return BcryptChecker(
        USERS if users is None else users, HashPool(IReactorFromThreads(reactor)), cache
    )


def test_checkers_provide_immediate_interface() -> None:
    assert verifyObject(IImmediateChecker, _stopped_checker(VerifiedCache(Clock())))
    assert verifyObject(IImmediateChecker, DigestChecker({}))


def test_check_answers_cached_credentials_at_once() -> None:
    cache = VerifiedCache(Clock())
    cache.remember("alice", USERS["alice"], b"wonderland")
    found = _stopped_checker(cache).check(UsernamePassword(b"alice", b"wonderland"))
    assert found == b"alice"


@pytest.mark.parametrize(
    ("user", "password"),
    [(b"alice", b"wonderland!"), (b"alice", b"wonderlan"), (b"bob", b"wonderland")],
)
def test_check_sends_other_credentials_to_bcrypt(user: bytes, password: bytes) -> None:
    cache = VerifiedCache(Clock())
    cache.remember("alice", USERS["alice"], b"wonderland")
    with pytest.raises(HashPoolBusy):
        _stopped_checker(cache).check(UsernamePassword(user, password))


def test_check_sends_expired_credentials_to_bcrypt() -> None:
    clock = Clock()
    cache = VerifiedCache(clock)
    cache.remember("alice", USERS["alice"], b"wonderland")
    checker = _stopped_checker(cache)
    clock.advance(59)
    assert checker.check(UsernamePassword(b"alice", b"wonderland")) == b"alice"
    clock.advance(1)
    with pytest.raises(HashPoolBusy):
        checker.check(UsernamePassword(b"alice", b"wonderland"))


def test_check_sends_credentials_of_a_changed_file_to_bcrypt() -> None:
    cache = VerifiedCache(Clock())
    cache.remember("alice", USERS["alice"], b"wonderland")
    # The same cache, the password file now giving alice another hash.
    changed = _stopped_checker(cache, {**USERS, "alice": USERS["bob"]})
    with pytest.raises(HashPoolBusy):
        changed.check(UsernamePassword(b"alice", b"wonderland"))


def test_check_refuses_a_name_that_is_not_plain_at_once() -> None:
    checker = _stopped_checker(VerifiedCache(Clock()))
    with pytest.raises(UnauthorizedLogin):
        checker.check(UsernamePassword(b"../alice", b"wonderland"))


def test_request_avatar_id_of_a_full_pool_fails_as_check_raises() -> None:
    checker = _stopped_checker(VerifiedCache(Clock()))
    failure = checker.requestAvatarId(UsernamePassword(b"alice", b"wonderland"))
    failed: list[Failure] = []
    failure.addErrback(failed.append)
    assert len(failed) == 1 and failed[0].check(HashPoolBusy)


# -- the pool -------------------------------------------------------------------


def _blocking_job(pool: HashPool, release: threading.Event) -> Deferred[bool]:
    """
    Occupy one of C{pool}'s threads until C{release} is set.
    """
    started = threading.Event()

    def block() -> bool:
        started.set()
        return release.wait(10)

    job = pool.run(block)
    assert started.wait(10)
    return job


def test_pool_refuses_past_its_queue() -> None:
    release = threading.Event()
    hashing = HashPool(IReactorFromThreads(reactor), threads=1, queue_size=2)
    hashing.startService()
    try:
        _blocking_job(hashing, release)
        hashing.run(lambda: None)
        hashing.run(lambda: None)
        with pytest.raises(HashPoolBusy):
            hashing.run(lambda: None)
    finally:
        release.set()
        hashing.stopService()


def test_pool_not_running_is_busy() -> None:
    with pytest.raises(HashPoolBusy):
        HashPool(IReactorFromThreads(reactor)).run(lambda: None)


def test_pool_stop_fails_waiting_jobs_without_joining() -> None:
    release = threading.Event()
    hashing = HashPool(IReactorFromThreads(reactor), threads=1, queue_size=5)
    hashing.startService()
    busy = _blocking_job(hashing, release)
    waiting: Deferred[object] = hashing.run(lambda: "never")
    failures: list[Failure] = []
    waiting.addErrback(failures.append)
    hashing.stopService()  # returns while its thread is still busy
    try:
        assert not busy.called
        assert len(failures) == 1 and failures[0].check(CancelledError)
    finally:
        release.set()
