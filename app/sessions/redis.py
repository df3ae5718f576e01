"""
Session records in Redis, shared by every host that names the same server.

  - Through txredisapi's Redis protocol: non-blocking, on the reactor, its
    replies parsed by hiredis.  txredisapi logs in (AUTH, SELECT); after
    that each reply goes straight to what waits for it, in the order the
    commands went.  Each process keeps one connection (commands are
    pipelined on it: Redis answers in order), which reconnects by itself
    after 0.5 s, backing off to at most L{RECONNECT_MAX_DELAY}.
    txredisapi's own pool is not used, nor its command builder or reply
    queue: its Deferred queues, a timer per command and the encoding of
    every argument in Python cost more than the command.
  - Each record is a string key with Redis's own time to live, which slides
    when a request uses the session.  Redis expires keys itself; how many
    it keeps is bounded by its C{maxmemory} and C{maxmemory-policy}
    (C{volatile-lru} or C{volatile-ttl}: every key here has a TTL).
  - A connection that answers nothing for L{COMMAND_TIMEOUT} seconds while
    commands wait (Redis down, stopped, or the network) is dropped, and its
    commands fail with L{StoreUnavailable}: one watchdog checks every
    L{WATCH_EVERY} seconds, instead of a timer per command.  While there is
    no connection, commands fail at once.
  - Digest nonce counts are claimed with C{SET key 1 NX PX lifetime}: one
    command, atomic, the first claim wins on every host.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

import txredisapi
from twisted.application.internet import ClientService, backoffPolicy
from twisted.internet import reactor
from twisted.internet.defer import Deferred, fail, gatherResults, succeed
from twisted.internet.endpoints import TCP4ClientEndpoint, UNIXClientEndpoint
from twisted.internet.protocol import Factory
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from app.sessions.backend import (
    Immediate,
    Later,
    Loaded,
    StoreUnavailable,
    first_error,
    handing,
)
from app.sessions.locations import RedisAddress

log = Logger()

#: Seconds a connection may leave waiting commands unanswered.
COMMAND_TIMEOUT = 2.0
#: Seconds between the watchdog's checks.
WATCH_EVERY = 0.25
#: Seconds between attempts to reconnect, at most.
RECONNECT_MAX_DELAY = 2.0
SESSION_PREFIX = b"app:session:"
CLAIM_PREFIX = b"app:claim:"


class _Protocol(txredisapi.RedisProtocol):  # type: ignore[misc]
    """
    txredisapi's protocol, noting when it last made progress; once logged
    in, its replies go straight to the commands that wait for them.
    """

    #: When a reply last arrived, or a command was sent with none waiting.
    progress = 0.0
    #: Once logged in: what takes each reply awaited, in the order the
    #: commands went.  txredisapi's own queue (a DeferredQueue, and a
    #: conversion of each reply) serves its login, AUTH and SELECT.
    awaited: deque[Callable[[Any], object]] | None = None

    def replyReceived(self, reply: Any) -> None:
        self.progress = reactor.seconds()
        super().replyReceived(reply)

    def dataReceived(self, data: bytes, unpause: bool = False) -> None:
        awaited = self.awaited
        if awaited is None:
            super().dataReceived(data, unpause)
            return
        reader = self._reader
        reader.feed(data)
        try:
            reply = reader.gets()
            if reply is not False:
                self.progress = reactor.seconds()
            while reply is not False:
                if not awaited:
                    raise txredisapi.InvalidData("a reply no command awaits")
                # An error reply is an exception object, not raised.
                _hand(awaited.popleft(), reply)
                reply = reader.gets()
        except txredisapi.InvalidData as error:
            log.error("Redis sent what is not a reply: {error}", error=error)
            self.transport.abortConnection()

    def connectionLost(self, why: Failure) -> None:
        super().connectionLost(why)
        awaited, self.awaited = self.awaited, None
        while awaited:
            _hand(awaited.popleft(), txredisapi.ConnectionError("Lost connection"))

    def waiting(self) -> int:
        awaited = self.awaited
        return len(self.replyQueue.waiting if awaited is None else awaited)


def _hand(take: Callable[[Any], object], reply: Any) -> None:
    """
    Give C{reply} to what awaits it: what that raises is logged, and the
    replies after it still reach theirs.
    """
    try:
        take(reply)
    except Exception:
        log.failure("Handling a reply from Redis failed")


class _Factory(Factory):
    """
    Makes the protocol, and takes what it says when it cannot log in (a
    wrong password or database).
    """

    isLazy = True

    def __init__(self, address: RedisAddress) -> None:
        self.address = address

    def buildProtocol(self, addr: Any) -> _Protocol:
        protocol = _Protocol(
            charset=None,  # values are bytes, not text
            password=self.address.password,
            dbid=self.address.db or None,
            convertNumbers=False,
        )
        protocol.factory = self
        return protocol

    def stopTrying(self) -> None:
        pass

    def connectionError(self, message: str) -> None:
        log.error("{message}", message=message)


class RedisBackend:
    """
    Session records and nonce claims in the Redis server at C{address}.
    """

    immediate: Immediate | None = None
    keeps_deadlines = True

    def __init__(self, address: RedisAddress) -> None:
        self.address = address
        if address.path is not None:
            endpoint: Any = UNIXClientEndpoint(
                reactor, address.path, timeout=COMMAND_TIMEOUT
            )
        else:
            assert address.host is not None
            endpoint = TCP4ClientEndpoint(
                reactor, address.host, address.port, timeout=COMMAND_TIMEOUT
            )
        self._protocol: _Protocol | None = None
        #: Whether the connection was lost, or could not be made: commands
        #: then fail at once until it is back.
        self._down = False
        self._service = ClientService(
            endpoint,
            _Factory(address),
            retryPolicy=backoffPolicy(initialDelay=0.5, maxDelay=RECONNECT_MAX_DELAY),
            prepareConnection=self._ready,  # type: ignore[arg-type]
        )
        self._service.startService()
        self.later: Later = self
        self._watchdog = LoopingCall(self._watch)
        self._watchdog.start(WATCH_EVERY, now=False)

    def _ready(self, protocol: _Protocol) -> Deferred[Any]:
        # Logged in and on its database: commands may go.
        ready: Deferred[Any] = protocol.whenConnected()
        ready.addCallback(self._use)
        return ready

    def _not_connected(self, failure: Failure) -> Failure:
        self._down = True
        return _unavailable(failure)

    def _use(self, protocol: _Protocol) -> _Protocol:
        protocol.awaited = deque()
        self._protocol = protocol
        self._down = False
        protocol.whenDisconnected().addCallback(self._lost)
        return protocol

    def _lost(self, protocol: _Protocol) -> None:
        if self._protocol is protocol:
            self._protocol = None
        self._down = True

    def _watch(self) -> None:
        protocol = self._protocol
        if (
            protocol is not None
            and protocol.waiting()
            and reactor.seconds() - protocol.progress > COMMAND_TIMEOUT
        ):
            # Silent with commands waiting: they fail as the connection
            # goes, and the service reconnects.
            self._protocol = None
            protocol.transport.abortConnection()

    def _command(
        self, *args: bytes, answer: Callable[[Any], Any] | None = None
    ) -> Deferred[Any]:
        """
        Send the command C{args}; its reply, read by C{answer}.

        @return: a Deferred that fails with L{StoreUnavailable} on an error
            reply, a lost connection, or none to send it on.
        """
        protocol = self._protocol
        if protocol is None:
            if self._down:
                return fail(StoreUnavailable("Redis: not connected"))
            # Not connected yet (the server is starting): wait, a while.
            connected: Deferred[Any] = self._service.whenConnected(failAfterFailures=1)
            connected.addTimeout(COMMAND_TIMEOUT, reactor)
            connected.addErrback(self._not_connected)
            return connected.addCallback(lambda _: self._command(*args, answer=answer))
        reply: Deferred[Any] = Deferred()
        self._send(protocol, args, reply.callback)
        return reply.addCallbacks(answer or _checked, _unavailable)

    def _send(
        self,
        protocol: _Protocol,
        args: tuple[bytes, ...],
        take: Callable[[Any], object],
    ) -> None:
        """
        Write the command C{args} on C{protocol}; C{take} gets its reply.
        """
        awaited = protocol.awaited
        assert awaited is not None  # logged in
        if not awaited:
            protocol.progress = reactor.seconds()
        # The command is written here, in RESP, and its reply handed over by
        # the protocol: txredisapi's execute_command encodes every argument
        # in Python and adds a Deferred and a queue of its own, more than
        # the rest of the command costs.
        protocol.transport.write(_resp(args))
        awaited.append(take)

    # The Later interface: a request's load and save, without Deferreds.

    def load_then(
        self,
        uid: bytes,
        now: float,
        then: Callable[[Loaded | StoreUnavailable | None], object],
    ) -> None:
        protocol = self._protocol
        if protocol is None:
            self.load(uid, now).addBoth(handing, then)
            return
        self._send(
            protocol, (b"GET", SESSION_PREFIX + uid), lambda reply: then(_record(reply))
        )

    def save_then(
        self,
        uid: bytes,
        record: bytes,
        now: float,
        timeout: float | None,
        new: bool,
        then: Callable[[StoreUnavailable | None], object],
    ) -> None:
        protocol = self._protocol
        if protocol is None:
            self.save(uid, record, now, timeout, new).addBoth(handing, then)
            return
        self._send(
            protocol,
            (b"SET", SESSION_PREFIX + uid, record, *_expiry(timeout)),
            lambda reply: then(_error_of(reply)),
        )

    def flush(self) -> None:
        # Each command is sent as it is made.
        pass

    def load(self, uid: bytes, now: float) -> Deferred[Loaded | None]:
        return self._command(b"GET", SESSION_PREFIX + uid, answer=_loaded)

    def save(
        self, uid: bytes, record: bytes, now: float, timeout: float | None, new: bool
    ) -> Deferred[None]:
        return self._command(
            b"SET", SESSION_PREFIX + uid, record, *_expiry(timeout), answer=_done
        )

    def touch(self, uid: bytes, now: float, timeout: float) -> Deferred[None]:
        return self._command(
            b"PEXPIRE", SESSION_PREFIX + uid, _ms(timeout), answer=_done
        )

    def delete(self, uid: bytes) -> Deferred[None]:
        return self._command(b"DEL", SESSION_PREFIX + uid, answer=_done)

    def alive(self, uids: Iterable[bytes], now: float) -> Deferred[set[bytes]]:
        wanted = list(uids)
        checks = [self._command(b"EXISTS", SESSION_PREFIX + uid) for uid in wanted]
        answers: Deferred[list[Any]] = gatherResults(checks, consumeErrors=True)

        def which(counts: list[Any]) -> set[bytes]:
            return {uid for uid, count in zip(wanted, counts, strict=True) if count}

        return answers.addCallbacks(which, first_error)

    def claim(self, key: bytes, now: float, lifetime: float) -> Deferred[bool]:
        return self._command(
            b"SET", CLAIM_PREFIX + key, b"1", b"NX", b"PX", _ms(lifetime), answer=_first
        )

    def sweep(self, now: float) -> Deferred[None]:
        # Redis expires keys by itself.
        return succeed(None)

    def count(self) -> None:
        # Redis counts the keys of a database, not those of one prefix; a
        # SCAN would read them all.
        return None

    def close(self) -> None:
        if self._watchdog.running:
            self._watchdog.stop()
        self._service.stopService()


def _loaded(reply: Any) -> Loaded | None:
    if reply is None:
        return None
    return Loaded(_checked(reply))


def _record(reply: Any) -> Loaded | StoreUnavailable | None:
    # A GET's reply, as load_then hands it on.
    if reply is None:
        return None
    if isinstance(reply, Exception):
        return _refusal(reply)
    return Loaded(reply)


def _error_of(reply: Any) -> StoreUnavailable | None:
    # A SET's reply, as save_then hands it on.
    return _refusal(reply) if isinstance(reply, Exception) else None


def _expiry(timeout: float | None) -> tuple[bytes, ...]:
    return (b"KEEPTTL",) if timeout is None else (b"PX", _ms(timeout))


def _done(reply: Any) -> None:
    _checked(reply)


def _first(reply: Any) -> bool:
    # SET … NX answers OK when it set the key, nothing when it was there.
    return _checked(reply) is not None


def _ms(seconds: float) -> bytes:
    return b"%d" % (max(1, int(seconds * 1000)),)


def _resp(args: tuple[bytes, ...]) -> bytes:
    """
    A command in RESP: an array of bulk strings.
    """
    parts = [b"*%d\r\n" % (len(args),)]
    for arg in args:
        parts.append(b"$%d\r\n%s\r\n" % (len(arg), arg))
    return b"".join(parts)


def _checked(reply: Any) -> Any:
    # An error reply, or the loss of the connection, comes as the exception
    # itself.
    if isinstance(reply, Exception):
        raise _refusal(reply)
    return reply


def _refusal(reply: Exception) -> StoreUnavailable:
    return StoreUnavailable(f"Redis: {type(reply).__name__}: {reply}")


def _unavailable(failure: Failure) -> Failure:
    if failure.check(StoreUnavailable):
        return failure
    error = failure.value
    return Failure(StoreUnavailable(f"Redis: {type(error).__name__}: {error}"))
