"""
HTTP Digest (RFC 7616) with MD5 and SHA-256, C{qop=auth}, stateless nonces.

twisted's C{DigestCredentialFactory} answers 500 when its realm is C{str},
knows MD5 and SHA-1 only, and keeps its nonces in memory per factory, which
workers cannot share.  Here a nonce is its issue time and some random bytes,
signed with HMAC under a key every worker is given: any worker can check a
nonce another one issued.  Each (nonce, nonce-count) pair is accepted once,
in any order; what is remembered of the counts is bounded (L{NonceCounts}).
With a shared store, each pair is also claimed in it, so that it is accepted
once across every worker and host (L{SharedNonceCounts}).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
from collections import OrderedDict
from collections.abc import Sequence
from typing import Protocol

from twisted.cred.error import LoginFailed
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.web.iweb import IRequest
from zope.interface import implementer

from app.sessions.backend import settled
from auth._basic import quoted
from auth._errors import StaleNonce
from auth._interfaces import IChallenger, IDigestCredentials
from auth._names import is_plain_name

#: Seconds a nonce is good for; after that the challenge says C{stale=true}.
NONCE_LIFETIME = 300
#: Longest Digest response looked at; a longer one is refused unparsed.
MAX_RESPONSE = 4096
#: Nonces whose counts are remembered, and how far past the lowest count
#: not yet seen a count may be (requests sent at once on several
#: connections arrive out of order); past it the nonce is stale.
MAX_NONCES = 4096
MAX_COUNTS = 1024

ALGORITHMS = {"MD5": hashlib.md5, "SHA-256": hashlib.sha256}
_HEX_LENGTH = {"MD5": 32, "SHA-256": 64}
_REQUIRED = ("username", "realm", "nonce", "uri", "response", "qop", "nc", "cnonce")

_REQUIRED_SET = frozenset(_REQUIRED)

_TCHARS = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
# A quoted-string as (?:[^"\\]|\\.)* would spell it, unrolled: the same
# strings, matched without trying an alternative at every character.
_QUOTED = r'"[^"\\]*(?:\\.[^"\\]*)*"'
_PARAMETER = re.compile(
    rf"[ \t]*({_TCHARS})[ \t]*=[ \t]*({_TCHARS}|{_QUOTED})[ \t]*(?:,|\Z)"
)
_NONCE = re.compile(r"([0-9a-f]{16})([0-9a-f]{16})([0-9a-f]{32})")
_NONCE_COUNT = re.compile(r"[0-9A-Fa-f]{8}")
_HEX = re.compile(r"[0-9A-Fa-f]+")
_ESCAPE = re.compile(r"\\(.)")


def parse_parameters(text: str) -> dict[str, str]:
    """
    The C{name=value} pairs of a Digest response (names lower-cased, quoted
    values unquoted).

    @raise LoginFailed: for anything but a list of well-formed pairs with
        distinct names.
    """
    found: dict[str, str] = {}
    text = text.strip(" \t")
    position, end = 0, len(text)
    while position < end:
        # A match is never empty: it holds at least a name and "=".
        match = _PARAMETER.match(text, position)
        if match is None:
            raise LoginFailed("malformed Digest parameters")
        name, value = match.groups()
        name = name.lower()
        if name in found:
            raise LoginFailed(f"Digest parameter {name} given twice")
        if value[0] == '"':
            value = value[1:-1]
            if "\\" in value:
                value = _ESCAPE.sub(r"\1", value)
        found[name] = value
        position = match.end()
    return found


class _Counts:
    """
    The counts seen for one nonce: every count up to C{floor}, and those
    above it as bits of C{above} (bit 0 is C{floor + 1}): at most
    C{MAX_COUNTS} bits, about 130 bytes, however the counts arrive.
    """

    __slots__ = ("above", "floor", "issued")

    def __init__(self, issued: int) -> None:
        self.issued = issued
        self.floor = 0
        self.above = 0


class NonceCounts:
    """
    The nonce-counts seen for the nonces used lately: at most C{max_nonces}
    nonces (least recently used forgotten first); for each, every count up
    to the highest one with no gap below it, and which of the next
    C{max_counts} counts were seen.  A client counting up from 1 never runs
    out of counts.
    A forgotten nonce must not come back to be replayed, so every nonce
    issued no later than one forgotten is refused as stale.
    """

    def __init__(self, max_nonces: int = MAX_NONCES, max_counts: int = MAX_COUNTS):
        self._max_nonces = max_nonces
        self._max_counts = max_counts
        self._seen: OrderedDict[str, _Counts] = OrderedDict()
        self._horizon = -1

    def accept(self, nonce: str, issued: int, count: int) -> Deferred[None] | None:
        """
        Record C{count} for C{nonce}, issued at C{issued}.  (Answered at once:
        L{None}.)

        @raise LoginFailed: when the pair was seen before.
        @raise StaleNonce: when C{nonce} can no longer be tracked.
        """
        counts = self._seen.get(nonce)
        if counts is None:
            if issued <= self._horizon:
                raise StaleNonce("nonce forgotten")
            if len(self._seen) >= self._max_nonces:
                _, forgotten = self._seen.popitem(last=False)
                self._horizon = max(self._horizon, forgotten.issued)
                if issued <= self._horizon:
                    raise StaleNonce("nonce forgotten")
            counts = self._seen[nonce] = _Counts(issued)
        else:
            self._seen.move_to_end(nonce)
        offset = count - counts.floor - 1
        if offset < 0 or counts.above >> offset & 1:
            raise LoginFailed("nonce count replayed")
        if offset >= self._max_counts:
            raise StaleNonce("nonce count too far ahead of a missing one")
        above = counts.above | 1 << offset
        # Move the floor past the run of counts now seen from floor + 1 on.
        run = (~above & (above + 1)).bit_length() - 1
        counts.floor += run
        counts.above = above >> run
        return None

    def __len__(self) -> int:
        return len(self._seen)


class Claims(Protocol):
    """
    Keys claimed once across every process that shares the store
    (L{app.sessions.backend.Backend.claim}).
    """

    def claim(self, key: bytes, now: float, lifetime: float) -> Deferred[bool]: ...


class SharedNonceCounts(NonceCounts):
    """
    L{NonceCounts} that also claim each (nonce, nonce-count) in a store
    that every worker and host shares: the first to claim a pair accepts
    it, all others refuse it as replayed.

    @param lifetime: how long a claim is kept: at least as long as a nonce
        is good for.
    """

    def __init__(
        self, claims: Claims, clock: IReactorTime, lifetime: float, **kwargs: int
    ) -> None:
        super().__init__(**kwargs)
        self._claims = claims
        self._clock = clock
        self._lifetime = lifetime

    def accept(self, nonce: str, issued: int, count: int) -> Deferred[None] | None:
        """
        Record C{count} for C{nonce} here, then claim it in the store.

        @return: L{None} when the claim was decided at once, else a Deferred
            that fails as below when it is.
        @raise LoginFailed: when the pair was seen before, here or elsewhere.
        @raise StaleNonce: when C{nonce} can no longer be tracked.
        @raise app.sessions.backend.StoreUnavailable: when the store cannot
            be reached.
        """
        super().accept(nonce, issued, count)
        key = b"nc:%s:%08x" % (nonce.encode("ascii"), count)
        claimed = self._claims.claim(key, self._clock.seconds(), self._lifetime)
        decided = claimed.addCallback(_first_claim)
        done, _ = settled(decided)
        return None if done else decided


def _first_claim(first: bool) -> None:
    if not first:
        raise LoginFailed("nonce count replayed")


@implementer(IDigestCredentials)
class DigestCredentials:
    """
    A Digest response whose nonce is ours; the password is still to check.
    """

    def __init__(
        self,
        *,
        username: bytes,
        algorithm: str,
        method: str,
        fields: dict[str, str],
        issued: int,
        expired: bool,
        counts: NonceCounts,
    ) -> None:
        self.username = username
        self.algorithm = algorithm
        self._method = method
        self._fields = fields
        self._issued = issued
        self._expired = expired
        self._counts = counts

    def _hash(self, text: str) -> str:
        # Every part came from the header as latin-1: hash the bytes as sent.
        return ALGORITHMS[self.algorithm](text.encode("latin-1")).hexdigest()

    def check_ha1(self, ha1: str) -> bool:
        fields = self._fields
        ha2 = self._hash(f"{self._method}:{fields['uri']}")
        expected = self._hash(
            f"{ha1}:{fields['nonce']}:{fields['nc']}:{fields['cnonce']}:auth:{ha2}"
        )
        return hmac.compare_digest(expected, fields["response"].lower())

    def accept_once(self) -> Deferred[None] | None:
        if self._expired:
            raise StaleNonce("nonce expired")
        return self._counts.accept(
            self._fields["nonce"], self._issued, int(self._fields["nc"], 16)
        )


@implementer(IChallenger)
class DigestCredentialFactory:
    """
    Digest challenges and responses for C{realm}.

    @param key: the HMAC key of the nonces; every worker serving the same
        site must be given the same one.
    @param algorithms: offered in this order, from C{MD5} and C{SHA-256}.
    """

    scheme = b"digest"

    def __init__(
        self,
        realm: str,
        key: bytes,
        clock: IReactorTime,
        algorithms: Sequence[str] = ("MD5",),
        lifetime: int = NONCE_LIFETIME,
        counts: NonceCounts | None = None,
    ) -> None:
        unknown = set(algorithms) - set(ALGORITHMS)
        if unknown or not algorithms:
            raise ValueError(f"unknown Digest algorithms: {sorted(unknown)}")
        self.realm = realm
        self.algorithms = tuple(algorithms)
        # The key absorbed once; each signature copies it.
        self._mac = hmac.new(key, digestmod=hashlib.sha256)
        self._clock = clock
        self._lifetime = lifetime
        self._counts = NonceCounts() if counts is None else counts
        self._realm_quoted = quoted(realm)
        self._realm_bytes = realm.encode("utf-8")
        # The issue times of nonces whose signature was checked lately: a
        # client sends the same nonce with many requests.  Only nonces found
        # ours get in, at most MAX_NONCES, oldest out first.
        self._ours: dict[str, int] = {}

    # -- nonces -------------------------------------------------------------

    def _signature(self, issued: str, salt: str) -> str:
        mac = self._mac.copy()
        mac.update(f"{issued}:{salt}:{self.realm}".encode())
        return mac.hexdigest()[:32]

    def new_nonce(self) -> str:
        """
        A fresh nonce: issue time, random salt, signature.
        """
        issued = f"{int(self._clock.seconds()):016x}"
        salt = os.urandom(8).hex()
        return issued + salt + self._signature(issued, salt)

    def _check_nonce(self, nonce: str) -> tuple[int, bool]:
        """
        The issue time of C{nonce}, and whether it has expired.

        @raise LoginFailed: if it is not a nonce of ours.
        """
        issued_at = self._ours.get(nonce)
        if issued_at is None:
            match = _NONCE.fullmatch(nonce)
            if match is None:
                raise LoginFailed("not a nonce of this server")
            issued, salt, signature = match.groups()
            if not hmac.compare_digest(signature, self._signature(issued, salt)):
                raise LoginFailed("not a nonce of this server")
            issued_at = int(issued, 16)
            if len(self._ours) >= MAX_NONCES:
                del self._ours[next(iter(self._ours))]
            self._ours[nonce] = issued_at
        age = int(self._clock.seconds()) - issued_at
        if age < 0:
            raise LoginFailed("nonce from the future")
        return issued_at, age > self._lifetime

    # -- ICredentialFactory ---------------------------------------------------

    def getChallenge(self, request: IRequest) -> dict[str, str]:
        return {
            "realm": self.realm,
            "qop": "auth",
            "algorithm": self.algorithms[0],
            "nonce": self.new_nonce(),
        }

    def challenges(self, request: object, stale: bool) -> list[bytes]:
        nonce = self.new_nonce().encode("ascii")
        tail = b", stale=true" if stale else b""
        return [
            b'Digest realm=%s, qop="auth", algorithm=%s, nonce="%s"%s'
            % (self._realm_quoted, algorithm.encode("ascii"), nonce, tail)
            for algorithm in self.algorithms
        ]

    def decode(self, response: bytes, request: IRequest) -> DigestCredentials:
        if len(response) > MAX_RESPONSE:
            raise LoginFailed("Digest response too long")
        fields = parse_parameters(response.decode("latin-1"))
        if not _REQUIRED_SET.issubset(fields):
            missing = [name for name in _REQUIRED if name not in fields]
            raise LoginFailed(f"Digest parameters missing: {', '.join(missing)}")
        try:
            name = fields["username"].encode("latin-1").decode("utf-8")
        except UnicodeError:
            raise LoginFailed("the user name is not UTF-8") from None
        if not is_plain_name(name):
            raise LoginFailed("the user name is not a plain name")
        if fields.get("userhash", "false").lower() != "false":
            raise LoginFailed("hashed user names are not supported")
        if fields["realm"].encode("latin-1") != self._realm_bytes:
            raise LoginFailed("another realm")
        algorithm = fields.get("algorithm", "MD5").upper()
        if algorithm not in ALGORITHMS:
            raise LoginFailed("unsupported Digest algorithm")
        if fields["qop"] != "auth":
            raise LoginFailed("unsupported qop")
        if not _NONCE_COUNT.fullmatch(fields["nc"]):
            raise LoginFailed("malformed nonce count")
        if not fields["cnonce"] or len(fields["cnonce"]) > 256:
            raise LoginFailed("malformed cnonce")
        answer = fields["response"]
        if len(answer) != _HEX_LENGTH[algorithm] or not _HEX.fullmatch(answer):
            raise LoginFailed("malformed response")
        uri = bytes(request.uri).decode("latin-1")
        if fields["uri"] != uri:
            raise LoginFailed("the digest is for another URI")
        issued, expired = self._check_nonce(fields["nonce"])
        return DigestCredentials(
            username=name.encode("utf-8"),
            algorithm=algorithm,
            method=bytes(request.method).decode("latin-1"),
            fields=fields,
            issued=issued,
            expired=expired,
            counts=self._counts,
        )
