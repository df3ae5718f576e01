"""
Credential checkers for the two password files.

Both compare in constant time with respect to the stored secret, and both do
the same work for an unknown user as for a wrong password: a user who is
not in the file is checked against a dummy secret of the same kind.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from collections import Counter, OrderedDict
from collections.abc import Callable, Mapping
from typing import TypeVar, cast

import bcrypt
from twisted.cred.credentials import IUsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IReactorTime
from zope.interface import implementer

from auth._htdigest import DigestUser
from auth._interfaces import IClientCredentials, IDigestCredentials, IImmediateChecker
from auth._names import is_plain_name
from auth._pool import HashPool

#: bcrypt looks at the first 72 bytes of a password, as Apache does;
#: bcrypt 5 raises ValueError for more instead of ignoring them.
BCRYPT_MAX_PASSWORD = 72
#: Verified credentials remembered at most, and for how long (seconds).
CACHE_ENTRIES = 1024
CACHE_LIFETIME = 60.0

_Credentials = TypeVar("_Credentials")

_BCRYPT_ALPHABET = "./ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"


def dummy_bcrypt_hash(cost: int) -> bytes:
    """
    A bcrypt hash of cost C{cost} that no password matches: checking a
    password against it costs what checking it against a user's hash does.
    """
    salt = bcrypt.gensalt(rounds=cost)
    digest = "".join(secrets.choice(_BCRYPT_ALPHABET) for _ in range(31))
    return salt + digest.encode("ascii")


def _bcrypt_cost(hashed: bytes) -> int:
    return int(hashed[4:6])


def check_bcrypt(password: bytes, hashed: bytes) -> bool:
    """
    Whether C{password} (at most 72 bytes) matches C{hashed}; run in the pool.
    """
    # Looked up on each call, so that a test can count the calls.
    return bool(bcrypt.checkpw(password, hashed))


class VerifiedCache:
    """
    Credentials verified lately, so that a client sending the same Basic
    credentials with every request costs one bcrypt check a minute, not one
    a request (as Apache's authn_socache does).

    Entries are keyed by an HMAC, under a key made for this process, of the
    user name, the stored hash and the password: the cache holds no password,
    and a changed hash makes old entries useless.
    """

    def __init__(
        self,
        clock: IReactorTime,
        max_entries: int = CACHE_ENTRIES,
        lifetime: float = CACHE_LIFETIME,
    ) -> None:
        self._clock = clock
        self._max_entries = max_entries
        self._lifetime = lifetime
        # HMAC-SHA256 under a key made for this process, its key already
        # absorbed: each entry copies it rather than starting over.
        self._mac = hmac.new(os.urandom(32), digestmod=hashlib.sha256)
        self._expiry: OrderedDict[bytes, float] = OrderedDict()

    def _entry(self, user: str, hashed: bytes, password: bytes) -> bytes:
        mac = self._mac.copy()
        mac.update(b"\0".join([user.encode("utf-8"), hashed, password]))
        return mac.digest()

    def verified(self, user: str, hashed: bytes, password: bytes) -> bool:
        """
        Whether these credentials were verified less than a lifetime ago.
        """
        entry = self._entry(user, hashed, password)
        expiry = self._expiry.get(entry)
        if expiry is None:
            return False
        if expiry <= self._clock.seconds():
            del self._expiry[entry]
            return False
        return True

    def expiry(self, user: str, hashed: bytes, password: bytes) -> float | None:
        """
        When the verification of these credentials ends, on the cache's
        clock, if they are verified now; else C{None}.
        """
        expiry = self._expiry.get(self._entry(user, hashed, password))
        if expiry is None or expiry <= self._clock.seconds():
            return None
        return expiry

    def still_good(self, expiry: float) -> Callable[[], bool]:
        """
        A test of whether the cache's clock is still before C{expiry}.
        """
        seconds = self._clock.seconds
        return lambda: seconds() < expiry

    def remember(self, user: str, hashed: bytes, password: bytes) -> None:
        """
        Note that these credentials were just verified.
        """
        entry = self._entry(user, hashed, password)
        self._expiry.pop(entry, None)
        while len(self._expiry) >= self._max_entries:
            self._expiry.popitem(last=False)
        self._expiry[entry] = self._clock.seconds() + self._lifetime

    def __len__(self) -> int:
        return len(self._expiry)


@implementer(IImmediateChecker)
class BcryptChecker:
    """
    Check Basic credentials against bcrypt hashes, in the hashing pool;
    credentials verified lately are accepted at once.  Credentials that
    provide L{IClientCredentials} take their place in the pool as their
    client address's; others share the places of checks with no address.
    """

    credentialInterfaces = (IUsernamePassword,)

    def __init__(
        self, users: Mapping[str, bytes], pool: HashPool, cache: VerifiedCache
    ) -> None:
        self._users = dict(users)
        self._pool = pool
        self._cache = cache
        costs = Counter(_bcrypt_cost(hashed) for hashed in self._users.values())
        cost = costs.most_common(1)[0][0] if costs else 12
        self._dummy = dummy_bcrypt_hash(cost)

    def requestAvatarId(
        self, credentials: IUsernamePassword
    ) -> Deferred[bytes | tuple[()]]:
        return _deferred(self.check, credentials)

    def check(self, credentials: IUsernamePassword) -> bytes | Deferred[bytes]:
        username: bytes = credentials.username
        try:
            name = username.decode("utf-8")
        except UnicodeDecodeError:
            raise UnauthorizedLogin() from None
        if not is_plain_name(name):
            raise UnauthorizedLogin()
        password = bytes(credentials.password)[:BCRYPT_MAX_PASSWORD]
        stored = self._users.get(name)
        # An unknown user goes the same way against the dummy, which the
        # cache never holds.
        hashed = self._dummy if stored is None else stored
        if self._cache.verified(name, hashed, password):
            return username
        checked = self._pool.run(
            check_bcrypt, password, hashed, client=_client(credentials)
        )

        def decide(matches: bool) -> bytes:
            if not matches or stored is None:
                raise UnauthorizedLogin()
            self._cache.remember(name, stored, password)
            return username

        return checked.addCallback(decide)

    def still_good(self, credentials: IUsernamePassword) -> Callable[[], bool] | None:
        name = credentials.username.decode("utf-8")
        stored = self._users.get(name)
        if stored is None:
            return None
        password = bytes(credentials.password)[:BCRYPT_MAX_PASSWORD]
        expiry = self._cache.expiry(name, stored, password)
        return None if expiry is None else self._cache.still_good(expiry)


@implementer(IImmediateChecker)
class DigestChecker:
    """
    Check Digest responses against the HA1 of an htdigest file: always at
    once, since nothing is slow to compute.
    """

    credentialInterfaces = (IDigestCredentials,)

    def __init__(self, users: Mapping[str, DigestUser]) -> None:
        self._users = dict(users)
        self._dummy = DigestUser(os.urandom(16).hex(), os.urandom(32).hex())

    def requestAvatarId(
        self, credentials: IDigestCredentials
    ) -> Deferred[bytes | tuple[()]]:
        return _deferred(self.check, credentials)

    def check(self, credentials: IDigestCredentials) -> bytes | Deferred[bytes]:
        username: bytes = credentials.username
        user = self._users.get(username.decode("utf-8"))
        known = user is not None
        if user is None:
            user = self._dummy
        secret = user.md5 if credentials.algorithm == "MD5" else user.sha256
        if secret is None:
            known, secret = False, self._dummy.sha256
        assert secret is not None
        if not credentials.check_ha1(secret) or not known:
            raise UnauthorizedLogin()
        accepted: Deferred[None] | None = credentials.accept_once()
        if accepted is not None:
            return accepted.addCallback(lambda _: username)
        return username

    def still_good(self, credentials: IDigestCredentials) -> None:
        # Every Digest answer is good once: each request is checked.
        return None


def _client(credentials: object) -> str | None:
    """
    The client address C{credentials} came from, if they say.
    """
    if not IClientCredentials.providedBy(credentials):
        return None
    client: str | None = IClientCredentials(credentials).client
    return client


def _deferred(
    check: Callable[[_Credentials], bytes | Deferred[bytes]], credentials: _Credentials
) -> Deferred[bytes | tuple[()]]:
    """
    What C{check} answers for C{credentials}, as a Deferred (the
    C{requestAvatarId} of a checker that can also answer at once).
    """
    try:
        found = check(credentials)
    except Exception:
        return fail()
    if isinstance(found, Deferred):
        return cast("Deferred[bytes | tuple[()]]", found)
    return succeed(found)
