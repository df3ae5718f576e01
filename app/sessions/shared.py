"""
Sessions shared by many processes: twisted.web's L{Session} API over
records kept in SQLite or Redis (L{app.sessions.backend}).

  - A request's session is loaded when the request first asks for it
    (C{getSession()}): by its cookie, from the engine.  With Redis, whose
    answers come later, the record named by a request's cookie is fetched
    before the request is routed (L{SharedStore.prefetch}), so that
    C{getSession()} stays synchronous as handlers expect.
  - A process serves the requests of one session with one L{SharedSession}
    object, as the memory store does, while the engine holds the record
    that object was loaded from or last saved as; once another process
    changed the record, the next request makes the object anew from it.
    Requests of one session that overlap in a process see each other's
    changes.
  - Its adapters are saved, sealed (L{app.sessions.records}), once the
    handler has produced its answer and before the answer is written, and
    only if they changed: the client's next request, on any process or
    host, sees them.  The saves of a reactor's turn are made at its end,
    one per session, of what all of its requests in the turn left.  A
    session used but unchanged has its time to live slid instead (SQLite
    only writes that when a second has passed); a request that used it
    unchanged while a save of it is under way, whose changes it may have
    shown, waits for that save.
  - C{expire()} deletes the record; the answer waits for the deletion.
  - C{notifyOnExpire} callbacks stay in the process that registered them,
    which asks the engine every L{WATCH_INTERVAL} seconds whether their
    sessions still live, and runs those of ended ones once.
  - An engine that cannot be reached makes C{getSession()} raise a 503 with
    C{Retry-After} (pages that do not use sessions are untouched), and the
    log says so once per outage, and once when it is back.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any, Protocol

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import server
from twisted.web.http_headers import Headers
from werkzeug.exceptions import ServiceUnavailable

from app.compat.twisted import adapters_of, keep_session, kept_session, set_adapters
from app.sessions.backend import (
    Backend,
    Loaded,
    StoreUnavailable,
    handing,
)
from app.sessions.records import TAG_BYTES, Sealer, payload_of
from app.sessions.sqlite import SQLiteBackend
from app.sessions.store import (
    COOKIE_NAME,
    SECURE_COOKIE_NAME,
    cookie_name,
    cookie_uids,
    ending_cookie,
    new_cookie,
    new_uid,
)

log = Logger()

#: Seconds between two checks of whether watched sessions still live.
WATCH_INTERVAL = 2.0
#: Checks between two sweeps of expired records (where the engine needs it).
SWEEP_EVERY = 15
#: What C{Retry-After} says while the engine cannot be reached.
RETRY_AFTER = b"5"
#: A session used but unchanged has its deadline written again only when
#: it would move by more than this (seconds).
TOUCH_SLACK = 1.0
#: Sessions a process keeps for their next requests, at most (past it, it
#: forgets them all).
LIVE_SESSIONS = 4096
#: Uids a request's cookies may name that are looked up, at most.
MAX_LOOKUPS = 4
#: What a session's save writes: a new record, a changed one, or only a
#: later deadline.
_NEW, _CHANGED, _SLID = "new", "changed", "slid"


class Request(Protocol):
    """
    What the shared store asks of a request (L{app.http.request.Request}).
    """

    @property
    def requestHeaders(self) -> Headers: ...

    @property
    def cookies(self) -> list[bytes]: ...

    #: The records its cookies name, fetched before it was routed.
    session_records: dict[bytes, Loaded | StoreUnavailable | None] | None
    #: Whether a session was used since it was last saved: it is saved
    #: before the answer is written, and again when the answer finishes if
    #: it was used after that.
    session_pending: bool

    def isSecure(self) -> bool: ...

    def setHeader(self, name: bytes, value: bytes) -> None: ...


class SessionsUnavailable(ServiceUnavailable):
    """
    The page needs the session store, which cannot be reached now.
    """

    description = "Sessions cannot be reached just now; try again shortly."


class SharedSession(server.Session):
    """
    A session whose state lives in a shared store.  The record in the engine
    lasts as the session does; this object serves the requests of it that
    a process handles while the engine holds what it holds (as the memory
    store's sessions serve all of them), and is made again from the record
    once another process changed it.

    @ivar loaded: the record it was loaded from or last saved as (a save
        may be under way), or L{None} if it is new and unsaved.
    @ivar held: the record the engine is known to hold of it: the one it was
        loaded from, or the last one saved.
    @ivar saves: its saves under way.
    @ivar ended: whether C{expire()} was called.
    """

    def __init__(
        self,
        store: SharedStore,
        uid: bytes,
        loaded: Loaded | None = None,
        adapters: dict[str, Any] | None = None,
    ) -> None:
        self.store = store
        self.loaded = loaded
        self.held = None if loaded is None else loaded.record
        self.saves = 0
        #: What waits for the saves under way: requests that used the
        #: session unchanged, since what they showed is not saved yet.
        self.waiting: list[Callable[[Exception | None], object]] = []
        #: The first error of the saves under way.
        self.failed: Exception | None = None
        #: What waits for its save at the end of this turn of the reactor.
        self.settling: list[Callable[[Exception | None], object]] = []
        self.ended = False
        #: The deletion that C{expire()} started, until it is done.
        self.ending: Deferred[None] | None = None
        super().__init__(store.site, uid, reactor=store.clock)
        if adapters:
            set_adapters(self, adapters)
        self.expireCallbacks = store.callbacks.get(uid, self.expireCallbacks)

    @property
    def sessionTimeout(self) -> float:  # type: ignore[override]
        return self.store.timeout

    def startCheckingExpiration(self) -> None:
        # The engine keeps the deadline; the store watches for its end.
        pass

    def notifyOnExpire(self, callback: Callable[[], object]) -> None:
        """
        Run C{callback} once, in this process, when the session ends here
        or anywhere else.
        """
        self.expireCallbacks.append(callback)
        self.store.callbacks[self.uid] = self.expireCallbacks

    def expire(self) -> None:
        """
        End the session everywhere, and run this process's expiry callbacks
        of it now.
        """
        if not self.ended:
            self.ended = True
            self.ending = self.store.end(self)


class SharedStore:
    """
    The sessions of a site, kept by C{backend} and sealed by C{sealer}.

    @ivar callbacks: the expiry callbacks registered in this process, by the
        uid of their session.
    """

    def __init__(
        self,
        site: Any,
        backend: Backend,
        sealer: Sealer,
        clock: IReactorTime,
        timeout: float,
    ) -> None:
        self.site = site
        self.backend = backend
        self.sealer = sealer
        self.clock = clock
        self.timeout = timeout
        self.prefetches = backend.immediate is None
        self.callbacks: dict[bytes, list[Callable[[], object]]] = {}
        self.available = True
        #: Uids of new sessions whose first save is under way.
        self._unsaved: set[bytes] = set()
        #: The session object last loaded or made for each uid, by uid: the
        #: next request of it reuses it while the engine holds the very
        #: record it was loaded from or last saved as.
        self._live: dict[bytes, SharedSession] = {}
        #: The sessions to save at the end of this turn of the reactor.
        self._settling: list[SharedSession] = []
        self._settle_call: IDelayedCall | None = None
        self._checks = 0

    #: Every process that shares the engine reads the same count.
    counted_together = True

    def live_count(self) -> int | None:
        """
        The sessions the engine holds, if it can count them cheaply (SQLite
        can, Redis cannot).
        """
        return self.backend.count()

    # -- the engine's health ----------------------------------------------

    def _failed(self, error: BaseException) -> None:
        if self.available:
            self.available = False
            log.warn(
                "The session store cannot be reached; pages that use sessions"
                " answer 503 until it can: {error}",
                error=error,
            )

    def _answered(self) -> None:
        if not self.available:
            self.available = True
            log.info("The session store can be reached again")

    def _watch_outcome(self, deferred: Deferred[Any]) -> Deferred[Any]:
        return deferred.addCallbacks(self._answered_with, self._failed_with)

    def _answered_with(self, result: object) -> object:
        self._answered()
        return result

    def _failed_with(self, failure: Failure) -> Failure:
        self._failed(_error(failure))
        return failure

    def _unavailable(self, request: Request, error: BaseException) -> Exception:
        self._failed(error)
        request.setHeader(b"retry-after", RETRY_AFTER)
        return SessionsUnavailable()

    # -- requests -----------------------------------------------------------

    def prefetch(self, request: Request, then: Callable[[], object]) -> bool:
        """
        Fetch the records that C{request}'s session cookies name, before it
        is routed, and call C{then} once they are in; C{False} (and C{then}
        is not called) when it names none.
        """
        headers = request.requestHeaders.getRawHeaders(b"cookie")
        if headers is None:
            return False
        uids = session_uids(headers)[:MAX_LOOKUPS]
        if not uids:
            return False
        later = self.backend.later
        records: dict[bytes, Loaded | StoreUnavailable | None] = {}
        request.session_records = records
        now = self.clock.seconds()
        left = len(uids)

        def fetched(uid: bytes, found: Loaded | StoreUnavailable | None) -> None:
            nonlocal left
            if isinstance(found, StoreUnavailable):
                self._failed(found)
            elif not self.available:
                self._answered()
            records[uid] = found
            left -= 1
            if not left:
                then()

        for uid in uids:
            later.load_then(uid, now, partial(fetched, uid))
        return True

    def _found(
        self, request: Request, secure: bool, ended: object = None
    ) -> SharedSession | None:
        """
        The session that C{request}'s cookie names, if it is live, its
        record was sealed for it by this server, and it is not the session
        that C{ended} during this request.
        """
        headers = request.requestHeaders.getRawHeaders(b"cookie")
        if headers is None:
            return None
        gone = ended.uid if isinstance(ended, SharedSession) else None
        # Fetched before routing (Redis), else looked up now (SQLite).
        records = request.session_records
        immediate = self.backend.immediate
        now = self.clock.seconds()
        for uid in cookie_uids(headers, cookie_name(secure))[:MAX_LOOKUPS]:
            if uid == gone:
                continue
            loaded: Loaded | StoreUnavailable | None
            if records is not None:
                loaded = records.get(uid)
                if isinstance(loaded, StoreUnavailable):
                    raise self._unavailable(request, loaded)
            elif immediate is not None:
                try:
                    loaded = immediate.load_now(uid, now)
                except StoreUnavailable as error:
                    raise self._unavailable(request, error) from None
                if not self.available:
                    self._answered()
            else:
                loaded = None  # past MAX_LOOKUPS: not fetched
            if loaded is None:
                continue
            # The object of it this process serves, if the engine holds
            # what that holds (with its saves under way).
            live = self._live.get(uid)
            if live is not None and not live.ended:
                held = live.held
                if held is loaded.record or held == loaded.record:
                    if not live.saves:
                        live.loaded = loaded
                    return live
            adapters = self.sealer.open(uid, loaded.record)
            if adapters is not None:
                return self._hold(SharedSession(self, uid, loaded, adapters))
        return None

    def _hold(self, session: SharedSession) -> SharedSession:
        """
        Keep C{session} for the next requests of it in this process.
        """
        live = self._live
        if len(live) >= LIVE_SESSIONS and session.uid not in live:
            live.clear()
        live[session.uid] = session
        return session

    def _forget(self, session: SharedSession) -> None:
        """
        Serve no more requests with C{session}: the next makes its session
        anew from the engine's record.
        """
        if self._live.get(session.uid) is session:
            del self._live[session.uid]

    def session_for(
        self, request: Request, interface: Any = None, force_not_secure: bool = False
    ) -> Any:
        """
        C{request.getSession()}: the session its cookie names, or a new one
        with its cookie set; adapted to C{interface} when one is given.

        @raise SessionsUnavailable: when the engine cannot be reached.
        """
        secure = not force_not_secure and request.isSecure()
        kept = session = kept_session(request, secure)
        if not isinstance(session, SharedSession) or session.ended:
            session = self._found(request, secure, kept)
            if session is None:
                session = self._hold(SharedSession(self, new_uid()))
                request.cookies.append(new_cookie(secure, session.uid))
            keep_session(request, secure, session)
        else:
            session.touch()
        request.session_pending = True
        if interface is not None:
            return session.getComponent(interface)
        return session

    def forget(self, request: Request, force_not_secure: bool = False) -> bool:
        """
        Expire C{request}'s session, if it has one, and tell the browser to
        drop its cookie.  Returns whether there was a session.
        """
        secure = not force_not_secure and request.isSecure()
        kept = session = kept_session(request, secure)
        if not isinstance(session, SharedSession) or session.ended:
            session = self._found(request, secure, kept)
            if session is None:
                return False
            keep_session(request, secure, session)
            request.session_pending = True
        session.expire()
        request.cookies.append(ending_cookie(secure))
        return True

    def settle(
        self, request: Request, then: Callable[[Exception | None], object]
    ) -> bool:
        """
        Save the sessions C{request} used, before its answer is written:
        C{False} when that is done (or nothing was to do), else C{True},
        and C{then} is called, later, with L{None} or what to answer
        instead (L{SessionsUnavailable}, an
        L{app.sessions.records.UnpicklableAdapter}, or the error the save
        failed with).

        @raise SessionsUnavailable: when the engine could not be reached to
            end a session.
        """
        first = kept_session(request, False)
        second = kept_session(request, True)
        if not isinstance(first, SharedSession):
            first, second = second, None
        if (
            isinstance(first, SharedSession)
            and not isinstance(second, SharedSession)
            and not first.ended
        ):
            # The usual case: one session, whose save is made at the end of
            # the turn (never at once), so no tally is needed.
            self._save(first, partial(self._settled, request, then))
            return True
        saves = _Saves()
        for session in (first, second):
            if isinstance(session, SharedSession):
                saves.started += 1
                self._save(session, saves.done)
        if saves.finished < saves.started:
            saves.then = lambda error: then(self._outcome(request, error))
            return True
        outcome = self._outcome(request, saves.error)
        if outcome is not None:
            raise outcome
        return False

    def _settled(
        self,
        request: Request,
        then: Callable[[Exception | None], object],
        error: Exception | None,
    ) -> None:
        """
        The one session of C{request} is saved (or failed to be with
        C{error}): tell C{then}, as L{settle} says.
        """
        if error is None and self.available:
            then(None)
        else:
            then(self._outcome(request, error))

    def _outcome(self, request: Request, error: Exception | None) -> Exception | None:
        """
        What a request whose sessions were saved, or failed to be with
        C{error}, answers instead of its own answer (L{None}: its own).
        """
        if isinstance(error, StoreUnavailable):
            return self._unavailable(request, error)
        if error is None and not self.available:
            self._answered()
        return error

    def _save(
        self, session: SharedSession, done: Callable[[Exception | None], object]
    ) -> None:
        """
        Save C{session} at the end of the reactor's turn if it changed by
        then, or slide its deadline; C{done} is called, later, when that is
        done or has failed.  The requests of one session in one turn make
        one save, of what they all left.
        """
        if session.ended:
            assert session.ending is not None
            session.ending.addBoth(handing, done)
            return
        session.settling.append(done)
        if len(session.settling) == 1:
            self._settling.append(session)
            if self._settle_call is None:
                self._settle_call = self.clock.callLater(0, self._settle_turn)

    def _settle_turn(self) -> None:
        """
        Save the sessions that the turn's requests used, then write what
        the engine gathered.
        """
        self._settle_call = None
        sessions, self._settling = self._settling, []
        for session in sessions:
            dones, session.settling = session.settling, []
            done = partial(_answer_all, dones)
            try:
                self._write(session, done)
            except Exception as error:
                # StoreUnavailable, UnpicklableAdapter, or a fault: each
                # request that waits is answered for it, and the session's
                # state, not saved, is not served again.
                self._forget(session)
                done(error)
        self.backend.later.flush()

    def _write(
        self, session: SharedSession, done: Callable[[Exception | None], object]
    ) -> None:
        """
        Save C{session} if it changed, or slide its deadline; C{done} is
        called, at once or later, when that is done or has failed.

        @raise StoreUnavailable: from an engine that answers at once.
        @raise UnpicklableAdapter: when an adapter cannot be pickled.
        """
        if session.ended:
            assert session.ending is not None
            session.ending.addBoth(handing, done)
            return
        now = self.clock.seconds()
        uid = session.uid
        payload = payload_of(adapters_of(session))
        loaded = session.loaded
        # Sealed only when it changed: the tag costs as much as the pickle.
        if loaded is not None and loaded.record[TAG_BYTES:] == payload:
            record = loaded.record
        else:
            record = self.sealer.seal_payload(uid, payload)
        backend = self.backend
        deadline = None if backend.keeps_deadlines else now + self.timeout
        timeout: float | None = self.timeout
        if loaded is None:
            kind = _NEW
        elif loaded.expires is None:
            if record == loaded.record:
                # The engine keeps the deadline: slide it, without waiting.
                touching = self._watch_outcome(backend.touch(uid, now, self.timeout))
                touching.addErrback(lambda failure: None)
                self._unchanged(session, done)
                return
            kind = _CHANGED
        else:
            fresh = (
                loaded.promoted and loaded.expires >= now + self.timeout - TOUCH_SLACK
            )
            if record == loaded.record:
                if fresh:
                    self._unchanged(session, done)
                    return
                kind = _SLID
            else:
                kind = _CHANGED
                if fresh:
                    # Changed within a second of the last slide: the row only.
                    timeout, deadline = None, loaded.expires
        # What the session's next save compares with.
        session.loaded = Loaded(record, deadline)
        if kind is _SLID:
            immediate = backend.immediate
            if immediate is None:
                backend.touch(uid, now, self.timeout).addBoth(
                    handing, partial(self._unchanged, session, done)
                )
            else:
                immediate.touch_now(uid, now, self.timeout)
                self._unchanged(session, done)
            return
        new = kind is _NEW
        if new:
            self._unsaved.add(uid)
        session.saves += 1

        def saved(error: StoreUnavailable | None) -> None:
            if new:
                self._unsaved.discard(uid)
            self._saved(session, record, error)
            done(error)

        backend.later.save_then(uid, record, now, timeout, new, saved)

    def _unchanged(
        self,
        session: SharedSession,
        done: Callable[[Exception | None], object],
        error: Exception | None = None,
    ) -> None:
        """
        C{session} was used unchanged: C{done} once its saves under way (which
        hold what the request saw) are done.
        """
        if error is None and session.saves:
            session.waiting.append(done)
        else:
            done(error)

    def _saved(
        self, session: SharedSession, record: bytes, error: Exception | None
    ) -> None:
        """
        A save of C{session}, of C{record}, is done (or failed with C{error}).
        """
        session.saves -= 1
        if error is None:
            session.held = record
        else:
            session.failed = session.failed or error
            # Its state holds what was not saved: the next request reads
            # the engine's.
            self._forget(session)
        if session.saves:
            return
        failed, session.failed = session.failed, None
        waiting, session.waiting = session.waiting, []
        _answer_all(waiting, failed)

    # -- endings ------------------------------------------------------------

    def end(self, session: SharedSession) -> Deferred[None]:
        """
        Delete C{session}'s record and run this process's callbacks of it;
        return the deletion, which the request's answer waits for.
        """
        self._forget(session)
        deleting = self._watch_outcome(self.backend.delete(session.uid))
        callbacks = self.callbacks.pop(session.uid, session.expireCallbacks)
        _run(callbacks)
        session.expireCallbacks = []
        return deleting

    def check(self) -> Deferred[None] | None:
        """
        Run the callbacks of watched sessions that ended elsewhere (and,
        now and then, sweep expired records).
        """
        now = self.clock.seconds()
        self._checks += 1
        if self._checks % SWEEP_EVERY == 0:
            self._watch_outcome(self.backend.sweep(now)).addErrback(lambda _: None)
        uids = [uid for uid in self.callbacks if uid not in self._unsaved]
        if not uids:
            return None
        alive = self._watch_outcome(self.backend.alive(uids, now))

        def run_ended(live: set[bytes]) -> None:
            for uid in uids:
                if uid not in live and uid not in self._unsaved:
                    callbacks = self.callbacks.pop(uid, None)
                    if callbacks is not None:
                        _run(callbacks)

        return alive.addCallbacks(run_ended, lambda _: None)

    def close(self) -> None:
        settling = self._settle_call
        if settling is not None and settling.active():
            settling.cancel()
            self._settle_turn()
        self.backend.close()


class _Saves:
    """
    The saves of one request's sessions: how many started and finished, the
    first error, and what to call when the last finishes after L{settle}
    returned.
    """

    def __init__(self) -> None:
        self.started = 0
        self.finished = 0
        self.error: Exception | None = None
        self.then: Callable[[Exception | None], object] | None = None

    def done(self, error: Exception | None) -> None:
        if error is not None and self.error is None:
            self.error = error
        self.finished += 1
        if self.finished == self.started and self.then is not None:
            self.then(self.error)


def _answer_all(
    dones: list[Callable[[Exception | None], object]], error: Exception | None
) -> None:
    """
    Tell each of C{dones} that the save they wait for is done (C{error}:
    failed).
    """
    for done in dones:
        try:
            done(error)
        except Exception:
            log.failure("Answering a request that used a session failed")


def _error(failure: Failure) -> BaseException:
    error = failure.value
    assert error is not None
    return error


def _run(callbacks: list[Callable[[], object]]) -> None:
    pending = list(callbacks)
    del callbacks[:]
    for callback in pending:
        try:
            callback()
        except Exception:
            log.failure("An expiry callback of a session failed")


class SessionWatch(Service):
    """
    Checks, while the site runs, whether the sessions this process watches
    have ended (L{SharedStore.check}).
    """

    def __init__(self, store: SharedStore, interval: float = WATCH_INTERVAL) -> None:
        self.store = store
        self._loop = LoopingCall(store.check)
        self._loop.clock = store.clock
        self._interval = interval

    def startService(self) -> None:
        super().startService()
        self._loop.start(self._interval, now=False).addErrback(
            lambda failure: log.failure("Watching sessions failed", failure)
        )

    def stopService(self) -> None:
        super().stopService()
        if self._loop.running:
            self._loop.stop()
        self.store.close()


def open_backend(spec: str, limit: int, clock: IReactorTime) -> Backend:
    """
    The engine that C{--sessions} names: C{sqlite:PATH}, C{redis://…} or
    C{redis+unix://…}.

    @raise ValueError: when C{spec} names none.
    @raise StoreUnavailable: when a SQLite file cannot be opened.
    """
    if spec.startswith("sqlite:"):
        return SQLiteBackend(Path(spec.removeprefix("sqlite:")), limit, clock)
    if spec.startswith(("redis://", "redis+unix://")):
        # txredisapi installs the global reactor when it is imported: it is
        # imported only for a Redis store.
        from app.sessions.locations import parse_redis_url
        from app.sessions.redis import RedisBackend

        return RedisBackend(parse_redis_url(spec))
    raise ValueError(f"unknown session store {spec!r}")


def session_uids(headers: Sequence[bytes]) -> list[bytes]:
    """
    The session uids a request's C{Cookie} headers name, both cookies.
    """
    return cookie_uids(headers, COOKIE_NAME) + cookie_uids(headers, SECURE_COOKIE_NAME)
