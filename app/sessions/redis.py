"""
Session records in Redis, shared by every host that names the same server.

  - Through txredisapi: non-blocking, on the reactor, with a small pool of
    connections that reconnect by themselves (after 0.5 s, then backing off
    to at most L{RECONNECT_MAX_DELAY}).
  - Each record is a string key with Redis's own time to live, which slides
    when a request uses the session.  Redis expires keys itself; how many
    it keeps is bounded by its C{maxmemory} and C{maxmemory-policy}
    (C{volatile-lru} or C{volatile-ttl}: every key here has a TTL).
  - A command that gets no answer within L{COMMAND_TIMEOUT} seconds (Redis
    down, or the network) fails with L{StoreUnavailable}: requests wait that
    long at most.
  - Digest nonce counts are claimed with C{SET key 1 NX EX lifetime}: one
    command, atomic, the first claim wins on every host.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import txredisapi
from twisted.internet import reactor
from twisted.internet.defer import Deferred, fail, gatherResults
from twisted.internet.endpoints import TCP4ClientEndpoint, UNIXClientEndpoint
from twisted.python.failure import Failure

from app.sessions.backend import Loaded, StoreUnavailable, first_error
from app.sessions.locations import RedisAddress

#: Seconds a command may wait for its answer (or for a connection).
COMMAND_TIMEOUT = 2.0
#: Seconds between attempts to reconnect, at most.
RECONNECT_MAX_DELAY = 2.0
#: Connections in the pool of each process.
POOL_SIZE = 4
SESSION_PREFIX = b"app:session:"
CLAIM_PREFIX = b"app:claim:"


class RedisBackend:
    """
    Session records and nonce claims in the Redis server at C{address}.
    """

    asynchronous = True
    keeps_deadlines = True

    def __init__(self, address: RedisAddress) -> None:
        self.address = address
        if address.path is not None:
            name: Any = address.path
            handler: Any = txredisapi.UnixConnectionHandler
            endpoint: Any = UNIXClientEndpoint(
                reactor, address.path, timeout=COMMAND_TIMEOUT
            )
        else:
            assert address.host is not None
            name = (address.host, address.port)
            handler = txredisapi.ConnectionHandler
            endpoint = TCP4ClientEndpoint(
                reactor, address.host, address.port, timeout=COMMAND_TIMEOUT
            )
        factory = txredisapi.RedisFactory(
            name,
            address.db,
            POOL_SIZE,
            True,
            handler,
            None,  # values are bytes, not text
            address.password,
            COMMAND_TIMEOUT,
            False,  # nor numbers
        )
        factory.initialDelay = 0.5
        factory.maxDelay = RECONNECT_MAX_DELAY
        factory.startConnecting(endpoint)
        self._factory = factory
        self._redis: Any = factory.handler
        #: Whether the last command failed.
        self._down = False

    def _command(self, *args: Any) -> Deferred[Any]:
        if self._down and not self._factory.size:
            # Known to be down, and not reconnected yet: say so at once
            # rather than after a timeout.
            return fail(StoreUnavailable("Redis: not connected"))
        deferred: Deferred[Any] = self._redis.execute_command(*args)
        deferred.addTimeout(COMMAND_TIMEOUT, reactor)
        deferred.addCallbacks(self._up, self._failed)
        return deferred

    def _up(self, result: object) -> object:
        self._down = False
        return result

    def _failed(self, failure: Failure) -> Failure:
        self._down = True
        return _unavailable(failure)

    def load(self, uid: bytes, now: float) -> Deferred[Loaded | None]:
        found = self._command(b"GET", SESSION_PREFIX + uid)
        return found.addCallback(
            lambda record: None if record is None else Loaded(record)
        )

    def save(
        self, uid: bytes, record: bytes, now: float, timeout: float, new: bool
    ) -> Deferred[None]:
        saved = self._command(
            b"SET", SESSION_PREFIX + uid, record, b"PX", _milliseconds(timeout)
        )
        return saved.addCallback(_nothing)

    def touch(self, uid: bytes, now: float, timeout: float) -> Deferred[None]:
        touched = self._command(
            b"PEXPIRE", SESSION_PREFIX + uid, _milliseconds(timeout)
        )
        return touched.addCallback(_nothing)

    def delete(self, uid: bytes) -> Deferred[None]:
        return self._command(b"DEL", SESSION_PREFIX + uid).addCallback(_nothing)

    def alive(self, uids: Iterable[bytes], now: float) -> Deferred[set[bytes]]:
        wanted = list(uids)
        checks = [self._command(b"EXISTS", SESSION_PREFIX + uid) for uid in wanted]
        answers: Deferred[list[Any]] = gatherResults(checks, consumeErrors=True)

        def which(counts: list[Any]) -> set[bytes]:
            return {uid for uid, count in zip(wanted, counts, strict=True) if count}

        return answers.addCallbacks(which, first_error)

    def claim(self, key: bytes, now: float, lifetime: float) -> Deferred[bool]:
        claimed = self._command(
            b"SET", CLAIM_PREFIX + key, b"1", b"NX", b"PX", _milliseconds(lifetime)
        )
        return claimed.addCallback(lambda answer: answer is not None)

    def sweep(self, now: float) -> Deferred[None]:
        # Redis expires keys by itself.
        return Deferred.fromCoroutine(_none())

    def count(self) -> int:
        return 0

    def close(self) -> None:
        self._factory.disconnect()


def _loaded(record: bytes | None) -> Loaded | None:
    return None if record is None else Loaded(record)


def _milliseconds(seconds: float) -> int:
    return max(1, int(seconds * 1000))


def _nothing(_: object) -> None:
    return None


async def _none() -> None:
    return None


def _unavailable(failure: Failure) -> Failure:
    if failure.check(StoreUnavailable):
        return failure
    error = failure.value
    return Failure(StoreUnavailable(f"Redis: {type(error).__name__}: {error}"))
