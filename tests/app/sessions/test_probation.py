"""
The session store as a segmented LRU: a session used by one request only is
on probation, a later request presenting its cookie protects it, and making
sessions evicts probation sessions before any protected one.

In memory: the store through its site on a L{Clock}, requests built by hand
or fetched with L{StubTreq}.
"""

from __future__ import annotations

import re
from dataclasses import replace

import pytest
from treq.testing import StubTreq
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactor, StringTransport
from twisted.python.failure import Failure

from app.config import Config
from app.http.request import Request
from app.http.site import Site
from app.sessions.store import COOKIE_NAME, Session, existing_session
from app.site import build_site
from app.testing import stub_treq
from tests.conftest import success_result_of

BASE = "http://example.invalid"
TIMEOUT = 10.0
#: A step that is exact in binary floating point, so clock sums stay exact.
EPSILON = 0.25


@pytest.fixture
def clock() -> Clock:
    return Clock()


def _site(clock: Clock, max_sessions: int = 3) -> Site:
    """
    The demo site holding at most C{max_sessions} sessions, which end
    L{TIMEOUT} seconds after their last use; its timers on C{clock}.
    """
    config = replace(Config(), max_sessions=max_sessions, session_timeout=TIMEOUT)
    return build_site(config, MemoryReactor(), clock)


def _request(site: Site, session: Session | None = None) -> Request:
    """
    A request to C{site} that presents the cookie of C{session}, if given.
    """
    channel = site.buildProtocol(None)
    channel.makeConnection(StringTransport())
    request = Request(channel)
    request.site = site
    if session is not None:
        cookie = COOKIE_NAME + b"=" + session.uid
        request.requestHeaders.setRawHeaders(b"cookie", [cookie])
    return request


def _revisit(site: Site, session: Session) -> None:
    """
    A later request presenting the cookie of C{session} uses it, then its
    connection closes (so that no timer of the connection is left).
    """
    request = _request(site, session)
    assert request.getSession() is session
    request.channel.connectionLost(Failure(ConnectionDone()))


def _ended(sessions: list[Session]) -> list[bytes]:
    """
    The uids of C{sessions} in the order they expire, from now on.
    """
    ended: list[bytes] = []
    for session in sessions:
        session.notifyOnExpire(lambda uid=session.uid: ended.append(uid))
    return ended


def _uid(client: StubTreq) -> str:
    # StubTreq sets its methods at run time.
    response = success_result_of(client.get(BASE + "/session"))  # type: ignore[attr-defined]
    assert response.code == 200
    found = re.search(r"<code>([^<]*)</code>", success_result_of(response.text()))
    assert found is not None
    return found.group(1)


# -- probation and promotion --------------------------------------------------


def test_a_new_session_is_on_probation(clock: Clock) -> None:
    site = _site(clock)
    session: Session = _request(site).getSession()
    assert site.held_sessions.holds(session)
    assert not site.held_sessions.is_protected(session)


def test_a_later_request_with_its_cookie_protects_a_session(clock: Clock) -> None:
    site = _site(clock)
    session: Session = _request(site).getSession()
    _revisit(site, session)
    assert site.held_sessions.is_protected(session)


def test_lookups_within_the_request_that_made_it_do_not_protect(
    clock: Clock,
) -> None:
    site = _site(clock)
    request = _request(site)
    session: Session = request.getSession()
    session.touch()
    assert request.getSession() is session
    assert existing_session(request) is session
    assert not site.held_sessions.is_protected(session)


def test_finding_a_session_without_using_it_does_not_protect(
    clock: Clock,
) -> None:
    site = _site(clock)
    session = site.makeSession()
    assert site.getSession(session.uid) is session
    assert existing_session(_request(site, session)) is session
    assert not site.held_sessions.is_protected(session)


def test_a_request_that_looked_first_then_uses_the_session_protects_it(
    clock: Clock,
) -> None:
    site = _site(clock)
    session = site.makeSession()
    request = _request(site, session)
    assert existing_session(request) is session
    assert request.getSession() is session
    assert site.held_sessions.is_protected(session)


# -- eviction -----------------------------------------------------------------


def test_a_session_used_twice_survives_a_flood_of_new_sessions(
    clock: Clock,
) -> None:
    site = _site(clock)
    returning, once = stub_treq(site), stub_treq(site)
    uid = _uid(returning)
    assert _uid(returning) == uid
    once_uid = _uid(once)
    flood = [_uid(stub_treq(site)) for _ in range(100)]
    assert len(set(flood)) == 100
    assert len(site.held_sessions) == 3
    assert set(site.held_sessions) == {uid.encode(), *(u.encode() for u in flood[-2:])}
    assert _uid(once) != once_uid
    assert _uid(returning) == uid


def test_probation_sessions_go_first_least_recently_used_first(
    clock: Clock,
) -> None:
    site = _site(clock)
    protected = site.makeSession()
    _revisit(site, protected)
    clock.advance(1)
    first, second = site.makeSession(), site.makeSession()
    clock.advance(1)
    first.touch()
    ended = _ended([protected, first, second])
    third = site.makeSession()
    assert ended == [second.uid]
    fourth = site.makeSession()
    assert ended == [second.uid, first.uid]
    assert list(site.held_sessions) == [protected.uid, third.uid, fourth.uid]


def test_with_every_session_protected_the_least_recently_used_goes(
    clock: Clock,
) -> None:
    site = _site(clock)
    sessions = [site.makeSession() for _ in range(3)]
    for session in sessions:
        clock.advance(1)
        _revisit(site, session)
    clock.advance(1)
    _revisit(site, sessions[0])
    ended = _ended(sessions)
    clock.advance(1)
    newest = site.makeSession()
    assert ended == [sessions[1].uid]
    assert len(site.held_sessions) == 3
    assert list(site.held_sessions) == [sessions[2].uid, sessions[0].uid, newest.uid]


def test_eviction_runs_the_expiry_callbacks_once(clock: Clock) -> None:
    site = _site(clock, max_sessions=2)
    protected, probation = site.makeSession(), site.makeSession()
    _revisit(site, protected)
    ended = _ended([protected, probation])
    clock.advance(1)
    newer = site.makeSession()
    assert ended == [probation.uid]
    _revisit(site, newer)
    site.makeSession()
    assert ended == [probation.uid, protected.uid]
    clock.advance(10 * TIMEOUT)
    assert ended == [probation.uid, protected.uid]
    assert not site.held_sessions.holds(probation)
    assert not site.held_sessions.holds(protected)


def test_the_total_is_bounded_across_both_segments(clock: Clock) -> None:
    site = _site(clock, max_sessions=5)
    for _ in range(20):
        session = site.makeSession()
        _revisit(site, session)
        site.makeSession()
        assert len(site.held_sessions) <= 5
    assert len(site.held_sessions) == 5
    assert len(list(site.held_sessions)) == 5


# -- expiry on the clock ------------------------------------------------------


def test_a_promoted_session_left_idle_expires_on_the_clock(clock: Clock) -> None:
    site = _site(clock)
    session = site.makeSession()
    clock.advance(4)
    _revisit(site, session)
    assert site.held_sessions.is_protected(session)
    ended = _ended([session])
    clock.advance(TIMEOUT - EPSILON)
    assert ended == []
    clock.advance(EPSILON)
    assert ended == [session.uid]
    assert len(site.held_sessions) == 0
    assert clock.getDelayedCalls() == []


def test_the_sweep_expires_both_segments_at_their_own_deadlines(
    clock: Clock,
) -> None:
    site = _site(clock)
    promoted, early = site.makeSession(), site.makeSession()
    clock.advance(3)
    _revisit(site, promoted)
    clock.advance(2)
    late = site.makeSession()
    ended = _ended([promoted, early, late])
    assert list(site.held_sessions) == [early.uid, promoted.uid, late.uid]
    clock.advance(5)
    assert ended == [early.uid]
    clock.advance(3)
    assert ended == [early.uid, promoted.uid]
    clock.advance(2)
    assert ended == [early.uid, promoted.uid, late.uid]
    assert clock.getDelayedCalls() == []
