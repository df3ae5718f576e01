"""
Sessions: twisted.web's L{Session} API, kept in a bounded store that
expires idle sessions with one timer.

  - Each session is a L{twisted.web.server.Session} (C{uid}, C{touch()},
    C{expire()}, C{notifyOnExpire()}, adapters through C{getComponent}).
  - Expiry slides: every C{request.getSession()} touches the session, and a
    session ends C{timeout} seconds after its last touch, on the site's clock.
  - The store holds at most C{limit} sessions, in two segments (a segmented
    LRU): a new session is on probation; a later request that presents its
    cookie moves it to the protected segment.  Making a session when the
    store is full expires the least recently used probation session, and a
    protected one only when no probation session remains, so a flood of
    cookieless requests cannot end the sessions of returning clients.
    Evicted sessions expire as any other (their expiry callbacks run).
  - Each segment is an C{OrderedDict} in order of last use, which is also
    the order of its deadlines, so one timer set for the older of the two
    heads serves every session, and both a sweep and an eviction cost only
    what they expire.  twisted.web gives every session a C{callLater} of its
    own instead (slow and large at 100 000 sessions).
  - The cookie is C{HttpOnly}, C{SameSite=Lax}, C{Path=/}, and C{Secure}
    over TLS; its value is 256 bits from the OS's random source.  A cookie
    the store does not know (garbage, forged, expired) gets a fresh session.
  - A request's session is found and touched with one reading of the
    clock and one pass over its C{Cookie} headers: C{/session} is meant to
    cost little more than C{/health}.
"""

from __future__ import annotations

import heapq
import re
import secrets
from collections import OrderedDict
from collections.abc import Callable, Iterator, MutableMapping, Sequence
from typing import Any, Protocol, TypeVar

from twisted.application.service import Service
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.web import server
from twisted.web.http_headers import Headers

from app.compat.twisted import keep_session, kept_session, session_clock


class Sessions(Protocol):
    """
    What requests ask of a site's sessions, held here (L{SessionStore}) or
    shared with other processes (L{app.sessions.shared.SharedStore}).
    """

    #: Whether the records a request's cookies name are fetched before the
    #: request is routed.
    prefetches: bool

    def session_for(
        self, request: Any, interface: Any = None, force_not_secure: bool = False
    ) -> Any: ...

    def forget(self, request: Any, force_not_secure: bool = False) -> bool: ...

    def prefetch(self, request: Any, then: Callable[[], object]) -> bool: ...

    def settle(
        self, request: Any, then: Callable[[Exception | None], object]
    ) -> bool: ...

    #: Whether L{live_count} is the count of every process that shares the
    #: store (an engine's), rather than of this process's sessions alone.
    counted_together: bool

    def live_count(self) -> int | None:
        """
        The sessions live, as far as the store can tell cheaply; L{None}
        when it cannot.
        """


class Site(Protocol):
    """
    What the store asks of the site it serves (L{app.http.site.Site}).
    """

    @property
    def held_sessions(self) -> SessionStore: ...

    def makeSession(self) -> Session: ...


class Request(Protocol):
    """
    What the store asks of a request (L{app.http.request.Request}).
    """

    @property
    def site(self) -> Site: ...

    @property
    def requestHeaders(self) -> Headers: ...

    @property
    def cookies(self) -> list[bytes]: ...

    def isSecure(self) -> bool: ...


log = Logger()

#: The session cookie of plain HTTP requests.
COOKIE_NAME = b"app_session"
#: The session cookie of requests over TLS.  A separate name, as twisted.web
#: keeps (TWISTED_SESSION / TWISTED_SECURE_SESSION), so that a session made
#: over TLS is never found from a plain HTTP request; the C{__Host-} prefix
#: makes browsers accept it only with C{Secure}, C{Path=/} and no C{Domain}.
SECURE_COOKIE_NAME = b"__Host-app_session"
#: Random bytes in a session's uid (shown as twice as many hex digits).
UID_BYTES = 32
_UID = re.compile(b"[0-9a-f]{%d}" % (2 * UID_BYTES,))
#: Longest wait of the sweep timer: the platform's timers overflow on a
#: delay of years, which a long --session-timeout would otherwise ask for.
MAX_SWEEP_DELAY = 3600.0


def new_uid() -> bytes:
    """
    A fresh session id: L{UID_BYTES} bytes from the OS's random source, in hex.
    """
    return secrets.token_hex(UID_BYTES).encode("ascii")


class Session(server.Session):
    """
    A twisted.web session kept by a L{SessionStore}.

    Its timeout is the store's: C{sessionTimeout} reads it.  No timer of its
    own is started; the store's sweep expires it.
    """

    site: Site

    @property
    def sessionTimeout(self) -> float:  # type: ignore[override]
        return self.site.held_sessions.timeout

    def startCheckingExpiration(self) -> None:
        # The store's sweep watches every session it holds.
        pass

    def touch(self) -> None:
        """
        Mark the session used now: its idle time starts again, and it becomes
        the most recently used.  A session already past its deadline expires
        instead (an expired session is never brought back).
        """
        self.site.held_sessions.use(self, session_clock(self).seconds())

    def expire(self) -> None:
        """
        End the session: drop it from the store and run its expiry callbacks
        once each.  Expiring it again does nothing.
        """
        self.site.held_sessions.discard(self)
        callbacks, self.expireCallbacks = self.expireCallbacks, []
        for callback in callbacks:
            try:
                callback()
            except Exception:
                log.failure("An expiry callback of a session failed")


class SessionStore(MutableMapping[bytes, Session]):
    """
    The live sessions of a site, by uid, least recently used first.

    A session is stored on probation, and moves to the protected segment
    when it is used with C{promote} (by a later request than the one that
    made it).  Storing one more than C{limit} evicts the least recently used
    probation session, or the least recently used protected one when no
    session is on probation.

    Looking up a session that has passed its deadline expires it and raises
    L{KeyError}, so a stale session is never returned even before the sweep
    has run.

    @ivar timeout: idle seconds after which a session expires.
    @ivar limit: the most sessions held at once.
    @ivar clock: the clock that deadlines are read on (the site's).
    """

    def __init__(self, clock: IReactorTime, timeout: float, limit: int) -> None:
        self.timeout = timeout
        self.limit = limit
        self.clock = clock
        #: Sessions used by one request only, least recently used first.
        self._probation: OrderedDict[bytes, Session] = OrderedDict()
        #: Sessions used by later requests too, least recently used first.
        self._protected: OrderedDict[bytes, Session] = OrderedDict()
        self._sweep_call: IDelayedCall | None = None
        self._paused = False

    # -- the mapping ------------------------------------------------------

    def __getitem__(self, uid: bytes) -> Session:
        session = self.live(uid, self.clock.seconds())
        if session is None:
            raise KeyError(uid)
        return session

    def __setitem__(self, uid: bytes, session: Session) -> None:
        probation, protected = self._probation, self._protected
        if protected.pop(uid, None) is None:
            probation.pop(uid, None)
        while len(probation) + len(protected) >= self.limit:
            _, evicted = (probation or protected).popitem(last=False)
            evicted.expire()
        probation[uid] = session
        self._schedule()

    def __delitem__(self, uid: bytes) -> None:
        if self._protected.pop(uid, None) is None:
            del self._probation[uid]
        if not (self._probation or self._protected):
            self._cancel()

    def __iter__(self) -> Iterator[bytes]:
        # Each segment is in order of last use: merge them by it.
        merged = heapq.merge(
            self._probation.items(), self._protected.items(), key=_last_use
        )
        return (uid for uid, _ in merged)

    def __len__(self) -> int:
        return len(self._probation) + len(self._protected)

    counted_together = False

    def live_count(self) -> int:
        return len(self)

    # -- what sessions and requests tell the store ---------------------------

    def holds(self, session: Session) -> bool:
        uid = session.uid
        return (
            self._protected.get(uid) is session or self._probation.get(uid) is session
        )

    def is_protected(self, session: Session) -> bool:
        """
        Whether C{session} is held in the protected segment (it has been used
        by more than one request).
        """
        return self._protected.get(session.uid) is session

    def is_stale(self, session: Session, now: float) -> bool:
        deadline: float = session.lastModified + self.timeout
        return now >= deadline

    def live(self, uid: bytes, now: float) -> Session | None:
        """
        The session called C{uid} if it is live at C{now}, or L{None}.  One
        found past its deadline expires (the sweep may not have run yet).
        """
        session = self._protected.get(uid)
        if session is None:
            session = self._probation.get(uid)
        if session is not None and now >= session.lastModified + self.timeout:
            session.expire()
            return None
        return session

    def use(self, session: Session, now: float, promote: bool = False) -> bool:
        """
        Mark C{session} used at C{now}: its deadline becomes C{now} plus the
        timeout, and it becomes the most recently used of its segment; with
        C{promote}, a session on probation moves to the protected segment.
        A held session already past its deadline expires instead.  Returns
        whether the store holds C{session} afterwards.
        """
        uid = session.uid
        segment = self._protected
        held = segment.get(uid) is session
        if not held:
            segment = self._probation
            held = segment.get(uid) is session
        if held and now >= session.lastModified + self.timeout:
            session.expire()
            return False
        session.lastModified = now
        if held:
            if promote and segment is self._probation:
                del segment[uid]
                self._protected[uid] = session
            else:
                segment.move_to_end(uid)
        return held

    def discard(self, session: Session) -> None:
        if self.holds(session):
            del self[session.uid]

    # -- what requests ask (as a shared store answers them too) --------------

    #: Nothing is fetched before a request is routed.
    prefetches = False

    def session_for(
        self, request: Request, interface: Any = None, force_not_secure: bool = False
    ) -> Any:
        return request_session(request, interface, force_not_secure)

    def forget(self, request: Request, force_not_secure: bool = False) -> bool:
        return _forget_held_session(request, force_not_secure)

    def prefetch(self, request: Request, then: Callable[[], object]) -> bool:
        return False

    def settle(
        self, request: Request, then: Callable[[Exception | None], object]
    ) -> bool:
        # A held session is saved as it changes.
        return False

    # -- the sweep ----------------------------------------------------------

    def pause(self) -> None:
        """
        Stop the sweep timer (the site is stopping).  Lookups still refuse
        stale sessions.
        """
        self._paused = True
        self._cancel()

    def resume(self) -> None:
        self._paused = False
        self._schedule()

    def _oldest(self) -> Session | None:
        """
        The session with the earliest deadline: the older of the heads of
        the two segments.
        """
        oldest: Session | None = None
        for segment in (self._probation, self._protected):
            if segment:
                head = next(iter(segment.values()))
                if oldest is None or head.lastModified < oldest.lastModified:
                    oldest = head
        return oldest

    def _schedule(self) -> None:
        if self._paused or self._sweep_call is not None:
            return
        oldest = self._oldest()
        if oldest is None:
            return
        delay = oldest.lastModified + self.timeout - self.clock.seconds()
        delay = min(max(0.0, delay), MAX_SWEEP_DELAY)
        self._sweep_call = self.clock.callLater(delay, self._sweep)

    def _sweep(self) -> None:
        self._sweep_call = None
        now = self.clock.seconds()
        while (oldest := self._oldest()) is not None:
            if not self.is_stale(oldest, now):
                break
            oldest.expire()
            if self.holds(oldest):
                # Only a misbehaving subclass keeps itself: do not spin on it.
                del self[oldest.uid]
        self._schedule()

    def _cancel(self) -> None:
        if self._sweep_call is not None:
            if self._sweep_call.active():
                self._sweep_call.cancel()
            self._sweep_call = None


def _last_use(item: tuple[bytes, Session]) -> float:
    last_use: float = item[1].lastModified
    return last_use


class SessionSweep(Service):
    """
    Runs a store's sweep while the site runs (as part of C{site.service}).
    """

    def __init__(self, store: SessionStore) -> None:
        self.store = store

    def startService(self) -> None:
        super().startService()
        self.store.resume()

    def stopService(self) -> None:
        super().stopService()
        self.store.pause()


# -- requests -----------------------------------------------------------------


def _uid_cookie(name: bytes) -> re.Pattern[bytes]:
    # The values of the name=value pairs of a Cookie header (split at ";",
    # then at the first "=", each part stripped) that are well-formed uids,
    # in one pass: \s in a bytes pattern is exactly what bytes.strip()
    # removes, and the lookahead leaves the ";" to the next pair.
    key = re.escape(name)
    return re.compile(rb"(?:^|;)\s*%s\s*=\s*(%s)\s*(?=;|\Z)" % (key, _UID.pattern))


def cookie_uids(headers: Sequence[bytes], name: bytes) -> list[bytes]:
    """
    The values of the cookies called C{name} in C{headers} that have the
    form of a session uid, in order (a browser sends the most specific
    first).
    """
    pattern = _UID_COOKIES.get(name) or _uid_cookie(name)
    uids: list[bytes] = []
    for header in headers:
        uids += pattern.findall(header)
    return uids


def cookie_name(secure: bool) -> bytes:
    """
    The name of the session cookie over TLS (C{secure}) or plain HTTP.
    """
    return SECURE_COOKIE_NAME if secure else COOKIE_NAME


def _cookie(secure: bool, value: bytes, *attributes: bytes) -> bytes:
    # Request.addCookie writes "SameSite=lax"; browsers take any case, but
    # the attribute is spelled Lax everywhere else, so the line is built here
    # (the name and the hex value need no quoting).
    parts = [cookie_name(secure) + b"=" + value, b"Path=/", *attributes]
    parts += [b"HttpOnly", b"SameSite=Lax"]
    if secure:
        parts.append(b"Secure")
    return b"; ".join(parts)


_UID_COOKIES = {name: _uid_cookie(name) for name in (COOKIE_NAME, SECURE_COOKIE_NAME)}
#: The cookie of a new session, plain and over TLS, split where its uid goes.
_NEW_COOKIE = {
    secure: tuple(_cookie(secure, b"\0").split(b"\0")) for secure in (False, True)
}


def new_cookie(secure: bool, uid: bytes) -> bytes:
    """
    The C{Set-Cookie} value that gives a browser the new session C{uid}.
    """
    head, tail = _NEW_COOKIE[secure]
    return head + uid + tail


def ending_cookie(secure: bool) -> bytes:
    """
    The C{Set-Cookie} value that tells a browser to drop its session cookie.
    """
    return _cookie(secure, b"", b"Max-Age=0")


def _is_secure(request: Request, force_not_secure: bool) -> bool:
    # Request.isSecure asks zope.interface whether the transport is (or
    # adapts to) ISSLTransport: ask once per lookup, and not at all if forced.
    return not force_not_secure and bool(request.isSecure())


def _kept(request: Request, store: SessionStore, secure: bool) -> Session | None:
    """
    The session that an earlier C{getSession()} of the same request found
    or made, while the store holds it.
    """
    session: Session | None = kept_session(request, secure)
    if session is not None and store.holds(session):
        return session
    return None


def _named_session(
    request: Request, store: SessionStore, secure: bool, now: float
) -> Session | None:
    """
    The first session that the cookies of C{request} name and that is live
    at C{now}.
    """
    headers = request.requestHeaders.getRawHeaders(b"cookie")
    if headers is not None:
        for uid in cookie_uids(headers, cookie_name(secure)):
            session = store.live(uid, now)
            if session is not None:
                return session
    return None


def existing_session(
    request: Request, force_not_secure: bool = False
) -> Session | None:
    """
    The live session that C{request} already has (by its cookie, or from an
    earlier C{getSession()} of the same request), or L{None}; never makes
    one, nor touches or promotes it (a C{getSession()} of the request does).
    """
    store = request.site.held_sessions
    secure = _is_secure(request, force_not_secure)
    session = _kept(request, store, secure)
    if session is None:
        session = _named_session(request, store, secure, store.clock.seconds())
    return session


def request_session(
    request: Request, interface: Any = None, force_not_secure: bool = False
) -> Any:
    """
    C{request.getSession()}: the request's session, touched, or a new one
    with its cookie set; adapted to C{interface} when one is given.  The
    session is kept on the request, where twisted.web's own getSession keeps
    it, for the next lookup.
    """
    store = request.site.held_sessions
    secure = not force_not_secure and request.isSecure()
    # One reading of the clock both finds the session live and restarts its
    # idle time, as Session.touch would.
    now = store.clock.seconds()
    session = _kept(request, store, secure)
    if session is None or not store.use(session, now):
        # A session found by its cookie is used by a later request than the
        # one that made it: that moves it off probation.
        session = _named_session(request, store, secure, now)
        if session is None or not store.use(session, now, promote=True):
            session = request.site.makeSession()
            request.cookies.append(new_cookie(secure, session.uid))
        keep_session(request, secure, session)
    if interface is not None:
        return session.getComponent(interface)
    return session


def forget_session(request: Any, force_not_secure: bool = False) -> bool:
    """
    Expire the request's session, if it has one, and tell the browser to
    drop its cookie.  Returns whether there was a session.

    @raise SessionlessRoute: in a route marked L{sessionless}.
    """
    refuse_if_sessionless(request)
    sessions: Sessions = request.site.sessions
    return sessions.forget(request, force_not_secure)


def _forget_held_session(request: Request, force_not_secure: bool = False) -> bool:
    session = existing_session(request, force_not_secure)
    if session is None:
        return False
    session.expire()
    secure = _is_secure(request, force_not_secure)
    request.cookies.append(ending_cookie(secure))
    return True


# -- routes that never use a session ------------------------------------------

_F = TypeVar("_F", bound=Callable[..., Any])

#: The attribute by which L{sessionless} marks a route's function.
SESSIONLESS = "app_sessionless"


class SessionlessRoute(RuntimeError):
    """
    A route marked L{sessionless} asked for the request's session.
    """


def sessionless(route: _F) -> _F:
    """
    Mark C{route}, the function of a Klein route (above or below its
    C{@route}), as one that never asks for the request's session.  A store
    that fetches a request's session before routing it (Redis) fetches none
    for such a route; with every store, C{getSession()} in it raises
    L{SessionlessRoute} (a 500 whose log names the route), so that a wrong
    mark shows wherever it runs rather than as a lost session with Redis.
    """
    setattr(route, SESSIONLESS, True)
    return route


def is_sessionless(function: object) -> bool:
    """
    Whether C{function} is marked L{sessionless}, or wraps one that is
    (Klein's route executors, C{functools.wraps}, C{partial}, a bound
    method).
    """
    for _ in range(8):
        if function is None:
            return False
        if getattr(function, SESSIONLESS, False) is True:
            return True
        function = (
            getattr(function, "__original__", None)
            or getattr(function, "__wrapped__", None)
            or getattr(function, "__func__", None)
            or getattr(function, "func", None)
        )
    return False


def refuse_if_sessionless(request: object) -> None:
    """
    @raise SessionlessRoute: if C{request} was routed to a route marked
        L{sessionless}.
    """
    if getattr(request, "session_refused", False):
        route = getattr(request, "route", "?")
        raise SessionlessRoute(
            f"the route {route} is marked sessionless, yet asked for its session"
        )
