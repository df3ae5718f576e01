"""
What a shared session store asks of the engine that keeps its records:
SQLite (L{app.sessions.sqlite}) or Redis (L{app.sessions.redis}).

Every operation answers with a L{Deferred}.  SQLite's have fired by the
time they are returned (a local file answers in microseconds), but for its
saves and deletions, which fire at the end of the reactor's turn, when it
writes the turn's together; Redis's fire when its answer arrives, so a
request that presents a session cookie has its record fetched before it is
routed (see L{app.sessions.shared}).

The operations on a request's path have leaner forms too: L{Immediate}, a
return value (SQLite's loads), and L{Later}, a function called with the
answer (Redis's loads and saves, SQLite's saves, which it gathers over a
turn of the reactor and writes together when the store has made the turn's
saves, L{Later.flush}).  A Deferred, and the links a caller adds to it, cost
more than the command they wait for.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from twisted.internet.defer import Deferred, FirstError
from twisted.python.failure import Failure

T = TypeVar("T")


class StoreUnavailable(Exception):
    """
    The engine of a shared store could not be reached, or failed to answer.
    """


@dataclass(frozen=True, slots=True)
class Loaded:
    """
    A session record as an engine holds it.

    @ivar record: the sealed record (L{app.sessions.records}).
    @ivar expires: when it expires, on the site's clock (L{None} where the
        engine keeps the time to live itself).
    @ivar promoted: whether a later request than the one that made it has
        used it (the engine evicts sessions that were not first).
    """

    record: bytes
    expires: float | None = None
    promoted: bool = True


class Immediate(Protocol):
    """
    The operations on a request's path of an engine that answers at once:
    each returns (or raises L{StoreUnavailable}) without a Deferred.
    """

    def load_now(self, uid: bytes, now: float) -> Loaded | None: ...

    def touch_now(self, uid: bytes, now: float, timeout: float) -> None: ...


class Later(Protocol):
    """
    The operations on a request's path of an engine that answers later:
    each calls C{then}, once, with the answer or the L{StoreUnavailable} it
    failed with (never raised).  C{then} may be called before the operation
    returns, when it fails at once.
    """

    def load_then(
        self,
        uid: bytes,
        now: float,
        then: Callable[[Loaded | StoreUnavailable | None], object],
    ) -> None: ...

    def save_then(
        self,
        uid: bytes,
        record: bytes,
        now: float,
        timeout: float | None,
        new: bool,
        then: Callable[[StoreUnavailable | None], object],
    ) -> None: ...

    def flush(self) -> None:
        """
        Write now what the engine gathered to write at the end of the turn.
        """


class Backend(Protocol):
    """
    The records of sessions and the claims of Digest nonce counts, shared by
    every process that opens the same engine.
    """

    #: The engine's loads that answer at once, if it has them (if not, a
    #: request's record is fetched before the request is routed).
    immediate: Immediate | None
    #: The engine's saves (and loads) that answer later.
    later: Later
    #: Whether the engine keeps each record's deadline itself (Redis's time
    #: to live) rather than a column the store reads (C{Loaded.expires}).
    keeps_deadlines: bool

    def load(self, uid: bytes, now: float) -> Deferred[Loaded | None]:
        """
        The record of the session C{uid}, if it is live at C{now}.
        """

    def save(
        self, uid: bytes, record: bytes, now: float, timeout: float | None, new: bool
    ) -> Deferred[None]:
        """
        Keep C{record} as the session C{uid}'s, live until C{now} plus
        C{timeout} (with no C{timeout}, until the deadline it has: only an
        engine that does not keep deadlines itself is asked so); a C{new}
        session may evict the least recently used ones past the engine's
        limit.
        """

    def touch(self, uid: bytes, now: float, timeout: float) -> Deferred[None]:
        """
        Make the session C{uid} live until C{now} plus C{timeout}, and mark
        it used by a later request than the one that made it.
        """

    def delete(self, uid: bytes) -> Deferred[None]:
        """
        End the session C{uid}.
        """

    def alive(self, uids: Iterable[bytes], now: float) -> Deferred[set[bytes]]:
        """
        Which of C{uids} are sessions live at C{now}.
        """

    def claim(self, key: bytes, now: float, lifetime: float) -> Deferred[bool]:
        """
        Claim C{key} for C{lifetime} seconds: C{True} for the first claim of
        it (by any process), C{False} for every later one.
        """

    def sweep(self, now: float) -> Deferred[None]:
        """
        Drop what expired before C{now}, where the engine does not do so
        itself.
        """

    def count(self) -> int | None:
        """
        How many sessions the engine holds (those expired but not yet swept
        among them), if it can tell at once and cheaply; else L{None}.
        """

    def close(self) -> None:
        """
        Let go of the engine.
        """


def settled(deferred: Deferred[T]) -> tuple[bool, T | None]:
    """
    Whether C{deferred} has fired, and its result if so.

    @raise Exception: what it failed with, if it has.
    """
    box: list[T | Failure] = []
    deferred.addBoth(box.append)
    if not box:
        # Not yet: give the result to whoever waits next.
        deferred.addCallback(_pass_on, box)
        return False, None
    result = box[0]
    if isinstance(result, Failure):
        result.raiseException()
    return True, result


def _pass_on(_: object, box: list[T | Failure]) -> T:
    result = box[0]
    if isinstance(result, Failure):
        result.raiseException()
    return result


def handing(result: object, then: Callable[[Any], object]) -> None:
    """
    A Deferred's outcome handed to a L{Later}'s C{then}: its result, or the
    error it failed with.
    """
    if isinstance(result, Failure):
        error = result.value
        then(error if isinstance(error, Exception) else StoreUnavailable(str(error)))
    else:
        then(result)


def first_error(failure: Failure) -> Failure:
    """
    The failure of the first Deferred that failed in a C{gatherResults}.
    """
    error = failure.value
    if isinstance(error, FirstError):
        return error.subFailure
    return failure
