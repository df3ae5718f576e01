"""
Sessions shared through a SQLite file: two sites opening the same file stand
for two workers (or hosts).  Pages are fetched in memory, on a L{Clock},
which the file's deadlines are read on too, and which is turned once after
each request: the sessions a turn's requests changed are written at its end,
and their answers wait for that.
"""

from __future__ import annotations

import re
import sqlite3
from dataclasses import replace
from pathlib import Path
from typing import Any
from weakref import WeakKeyDictionary

import pytest
from treq.testing import StubTreq
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactor, StringTransport
from twisted.logger import LogEvent, formatEvent
from twisted.python.components import registerAdapter
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Session
from zope.interface import Attribute, Interface, implementer

from app.cli.options import config_from_args
from app.http.router import new_app
from app.http.site import Site
from app.sessions.backend import StoreUnavailable
from app.sessions.records import Sealer
from app.sessions.shared import RETRY_AFTER, WATCH_INTERVAL, SharedStore
from app.site import build_site
from app.testing import stub_treq
from routes.sessions import ICounter
from tests.conftest import MEMORY_ORIGIN, header_of, success_result_of, text_of
from tests.paths import TESTS

SECRET = bytes(range(32))
TIMEOUT = 60.0


class Pair:
    """
    Two sites sharing one SQLite file, each with a client, on one clock.
    """

    def __init__(self, path: Path, clock: Clock, *args: str) -> None:
        self.clock = clock
        self.path = path
        self.sites = [_site(path, clock, *args) for _ in range(2)]
        self.clients = [_client(site, clock) for site in self.sites]
        for site in self.sites:
            site.service.startService()

    def stop(self) -> None:
        for site in self.sites:
            site.service.stopService()


#: The clock of each client's site.
_clocks: WeakKeyDictionary[StubTreq, Clock] = WeakKeyDictionary()


def _client(site: Site, clock: Clock) -> StubTreq:
    client = stub_treq(site)
    _clocks[client] = clock
    return client


def fetch(client: StubTreq, method: str, path: str, **kwargs: Any) -> Any:
    """
    The response to a request, once the clock of the client's site has
    turned: the request's session is written then.
    """
    # StubTreq sets its methods at run time.
    pending = client.request(method, MEMORY_ORIGIN + path, **kwargs)  # type: ignore[attr-defined]
    _clocks[client].advance(0)
    client.flush()
    return success_result_of(pending)


def _site(path: Path, clock: Clock, *args: str) -> Site:
    config = config_from_args(
        ["--sessions", f"sqlite:{path}", "--session-timeout", str(TIMEOUT), *args]
    )
    config = replace(config, secret_key=SECRET)
    return build_site(config, MemoryReactor(), clock)


@pytest.fixture
def pair(tmp_path: Path) -> Any:
    shared = Pair(tmp_path / "sessions.sqlite3", Clock())
    yield shared
    shared.stop()


def _clients_with(tmp_path: Path, routes: Any) -> list[StubTreq]:
    """
    Clients of two sites sharing a SQLite file in C{tmp_path}, each serving
    C{routes} too, on one clock.
    """
    path = tmp_path / "s.sqlite3"
    clock = Clock()
    clients = []
    for _ in range(2):
        config = config_from_args(["--sessions", f"sqlite:{path}"])
        config = replace(config, route_apps=(routes,), secret_key=SECRET)
        clients.append(_client(build_site(config, MemoryReactor(), clock), clock))
    return clients


def _cookie(response: Any) -> str:
    cookie = header_of(response, b"set-cookie")
    assert cookie is not None
    found = re.match(rb"app_session=([0-9a-f]{64});", cookie)
    assert found is not None
    return found.group(1).decode()


def _visits(client: StubTreq, uid: str, path: str = "/counter") -> int:
    response = fetch(client, "GET", path, headers={"Cookie": f"app_session={uid}"})
    assert response.code == 200
    found = re.search(r"Visit #(\d+)", text_of(response))
    assert found is not None
    return int(found.group(1))


def _rows(path: Path) -> int:
    with sqlite3.connect(path) as db:
        count: int = db.execute("SELECT COUNT(*) FROM sessions").fetchone()[0]
    return count


def _expired_lines(events: list[LogEvent]) -> list[str]:
    return [text for text in map(formatEvent, events) if "session expired" in text]


def test_a_session_and_its_adapters_follow_the_client_between_processes(
    pair: Pair,
) -> None:
    first, second = pair.clients
    response = fetch(first, "GET", "/counter")
    uid = _cookie(response)
    assert [_visits(client, uid) for client in (second, first, second, first)] == [
        2,
        3,
        4,
        5,
    ]
    assert _rows(pair.path) == 1
    # Each process counts the file's sessions, none of its own.
    assert [site.sessions.live_count() for site in pair.sites] == [1, 1]
    assert [len(site.held_sessions) for site in pair.sites] == [0, 0]


def test_a_page_that_uses_no_session_stores_none(pair: Pair) -> None:
    response = fetch(pair.clients[0], "GET", "/health")
    assert response.code == 200
    assert header_of(response, b"set-cookie") is None
    assert _rows(pair.path) == 0


def test_an_unchanged_session_is_not_written_again(pair: Pair) -> None:
    first, second = pair.clients
    uid = _cookie(fetch(first, "GET", "/session"))
    _visits_session = fetch(
        second, "GET", "/session", headers={"Cookie": f"app_session={uid}"}
    )
    assert uid in text_of(_visits_session)
    before = _record(pair.path, uid)
    fetch(first, "GET", "/session", headers={"Cookie": f"app_session={uid}"})
    assert _record(pair.path, uid) == before


def _record(path: Path, uid: str) -> tuple[bytes, float]:
    with sqlite3.connect(path) as db:
        row = db.execute(
            "SELECT record, expires FROM sessions WHERE uid = ?", (uid.encode(),)
        ).fetchone()
    assert row is not None
    return row[0], row[1]


def test_expiry_slides_with_use_in_any_process(pair: Pair) -> None:
    first, second = pair.clients
    uid = _cookie(fetch(first, "GET", "/counter"))
    for client in (second, first, second):
        pair.clock.advance(TIMEOUT - 5)
        _visits(client, uid)
    assert _visits(first, uid) == 5
    pair.clock.advance(TIMEOUT)
    response = fetch(
        second, "GET", "/counter", headers={"Cookie": f"app_session={uid}"}
    )
    assert "Visit #1 " in text_of(response)
    assert _cookie(response) != uid


def test_expire_in_one_process_is_seen_by_the_other(pair: Pair) -> None:
    first, second = pair.clients
    uid = _cookie(fetch(first, "GET", "/counter"))
    ended = fetch(
        second, "POST", "/session/expire", headers={"Cookie": f"app_session={uid}"}
    )
    assert "Your session has expired" in text_of(ended)
    assert b"Max-Age=0" in (header_of(ended, b"set-cookie") or b"")
    response = fetch(first, "GET", "/counter", headers={"Cookie": f"app_session={uid}"})
    assert "Visit #1 " in text_of(response)
    assert _cookie(response) != uid


def test_an_expiry_callback_runs_once_in_the_process_that_registered_it(
    pair: Pair, captured_log: list[LogEvent]
) -> None:
    first, second = pair.clients
    uid = _cookie(fetch(first, "GET", "/session/logme"))
    # The other process sees the mark and registers nothing more.
    fetch(second, "GET", "/session/logme", headers={"Cookie": f"app_session={uid}"})
    fetch(second, "POST", "/session/expire", headers={"Cookie": f"app_session={uid}"})
    assert _expired_lines(captured_log) == []
    pair.clock.advance(WATCH_INTERVAL)
    assert len(_expired_lines(captured_log)) == 1
    assert uid in _expired_lines(captured_log)[0]
    pair.clock.advance(10 * WATCH_INTERVAL)
    assert len(_expired_lines(captured_log)) == 1


def test_an_expiry_callback_runs_when_the_session_times_out(
    pair: Pair, captured_log: list[LogEvent]
) -> None:
    uid = _cookie(fetch(pair.clients[0], "GET", "/session/logme"))
    pair.clock.advance(TIMEOUT - WATCH_INTERVAL)
    _visits(pair.clients[1], uid)  # used elsewhere: the deadline moves
    pair.clock.advance(TIMEOUT - WATCH_INTERVAL)
    assert _expired_lines(captured_log) == []
    pair.clock.advance(3 * WATCH_INTERVAL)
    assert len(_expired_lines(captured_log)) == 1


def test_expire_in_the_registering_process_runs_its_callbacks_at_once(
    pair: Pair, captured_log: list[LogEvent]
) -> None:
    client = pair.clients[0]
    uid = _cookie(fetch(client, "GET", "/session/logme"))
    fetch(client, "POST", "/session/expire", headers={"Cookie": f"app_session={uid}"})
    assert len(_expired_lines(captured_log)) == 1
    pair.clock.advance(3 * WATCH_INTERVAL)
    assert len(_expired_lines(captured_log)) == 1


def test_a_tampered_record_is_no_session(pair: Pair) -> None:
    first, second = pair.clients
    uid = _cookie(fetch(first, "GET", "/counter"))
    record, _ = _record(pair.path, uid)
    with sqlite3.connect(pair.path) as db:
        db.execute(
            "UPDATE sessions SET record = ? WHERE uid = ?",
            (record.replace(b"K\x01", b"K\x63"), uid.encode()),
        )
    response = fetch(
        second, "GET", "/counter", headers={"Cookie": f"app_session={uid}"}
    )
    assert "Visit #1 " in text_of(response)
    assert _cookie(response) != uid


def test_a_record_forged_with_another_secret_is_no_session(pair: Pair) -> None:
    uid = "f" * 64
    forged = Sealer(b"not the server's secret, 32 B..").seal(uid.encode(), {})
    with sqlite3.connect(pair.path) as db:
        db.execute(
            "INSERT INTO sessions (uid, record, expires) VALUES (?, ?, ?)",
            (uid.encode(), forged, 1e12),
        )
    response = fetch(
        pair.clients[0], "GET", "/session", headers={"Cookie": f"app_session={uid}"}
    )
    assert uid not in text_of(response)
    assert _cookie(response) != uid


def test_max_sessions_evicts_sessions_used_once_first(tmp_path: Path) -> None:
    clock = Clock()
    shared = Pair(tmp_path / "s.sqlite3", clock, "--max-sessions", "3")
    try:
        first, second = shared.clients
        kept = _cookie(fetch(first, "GET", "/counter"))
        clock.advance(1)
        _visits(second, kept)  # used by a second request: protected
        for _ in range(5):
            clock.advance(1)
            fetch(_client(shared.sites[1], clock), "GET", "/session")
        assert _rows(shared.path) == 3
        assert _visits(first, kept) == 3
    finally:
        shared.stop()


class INotes(Interface):
    lock = Attribute("Something that cannot be pickled.")


@implementer(INotes)
class Notes:
    def __init__(self, session: Session) -> None:
        import threading

        self.lock = threading.Lock()


def test_an_adapter_that_cannot_be_pickled_is_a_500_naming_its_class(
    tmp_path: Path, captured_log: list[LogEvent]
) -> None:
    registerAdapter(Notes, Session, INotes)

    class Routes:
        app = new_app()

        @app.route("/notes")
        def notes(self, request: Any) -> bytes:
            INotes(request.getSession())
            return b"noted"

    clock = Clock()
    config = config_from_args(["--sessions", f"sqlite:{tmp_path / 's.sqlite3'}"])
    config = replace(config, route_apps=(Routes().app,))
    client = _client(build_site(config, MemoryReactor(), clock), clock)
    response = fetch(client, "GET", "/notes")
    assert response.code == 500
    assert "noted" not in text_of(response)
    assert header_of(response, b"set-cookie") is None
    lines = [formatEvent(event) for event in captured_log]
    assert any("Notes" in line and "cannot be pickled" in line for line in lines)
    # A session that took one on one page goes on, without it, on the next.
    uid = _cookie(fetch(client, "GET", "/counter"))
    noted = fetch(client, "GET", "/notes", headers={"Cookie": f"app_session={uid}"})
    assert noted.code == 500
    assert _visits(client, uid) == 2


def test_a_store_that_cannot_be_reached_is_a_503_for_session_pages_only(
    pair: Pair, captured_log: list[LogEvent]
) -> None:
    first = pair.clients[0]
    uid = _cookie(fetch(first, "GET", "/counter"))
    store = pair.sites[0].sessions
    assert isinstance(store, SharedStore)
    store.backend.close()
    for path in ("/counter", "/session", "/counter"):
        response = fetch(first, "GET", path, headers={"Cookie": f"app_session={uid}"})
        assert response.code == 503
        assert header_of(response, b"retry-after") == RETRY_AFTER
    cookieless = fetch(first, "GET", "/counter")
    assert cookieless.code == 503
    assert header_of(cookieless, b"set-cookie") is None
    assert fetch(first, "GET", "/health").code == 200
    assert (
        fetch(first, "GET", "/", headers={"Cookie": f"app_session={uid}"}).code == 200
    )
    warnings = [
        line for line in map(formatEvent, captured_log) if "cannot be reached" in line
    ]
    assert len(warnings) == 1
    # The other process still reaches the file.
    assert _visits(pair.clients[1], uid) == 2


def test_a_resource_writing_its_own_response_saves_when_it_finishes(
    tmp_path: Path,
) -> None:
    class Streaming(Resource):
        isLeaf = True

        def render_GET(self, request: Any) -> int:
            request.write(b"counting ")
            counter = ICounter(request.getSession())
            counter.value += 10
            request.write(b"%d" % (counter.value,))
            request.finish()
            return NOT_DONE_YET

    class Routes:
        app = new_app()

        @app.route("/stream")
        def stream(self, request: Any) -> Resource:
            return Streaming()

    clients = _clients_with(tmp_path, Routes().app)
    uid = _cookie(fetch(clients[0], "GET", "/counter"))
    streamed = fetch(
        clients[1], "GET", "/stream", headers={"Cookie": f"app_session={uid}"}
    )
    assert text_of(streamed) == "counting 11"
    assert _visits(clients[0], uid) == 12


def test_head_shows_the_count_without_changing_it(pair: Pair) -> None:
    first, second = pair.clients
    uid = _cookie(fetch(first, "GET", "/counter"))
    head = fetch(second, "HEAD", "/counter", headers={"Cookie": f"app_session={uid}"})
    assert head.code == 200
    assert _visits(first, uid) == 2


class Renewing:
    """
    A route that ends its session and asks for one again, in one request:
    it answers with both uids.
    """

    app = new_app()

    @app.route("/renew")
    def renew(self, request: Any) -> bytes:
        old = request.getSession()
        old.expire()
        new = request.getSession()
        answer: bytes = old.uid + b" " + new.uid
        return answer


def test_a_session_expired_during_a_request_is_not_found_again_by_it(
    tmp_path: Path,
) -> None:
    config = config_from_args(["--sessions", f"sqlite:{tmp_path / 's.sqlite3'}"])
    config = replace(config, route_apps=(Renewing().app,))
    clock = Clock()
    client = _client(build_site(config, MemoryReactor(), clock), clock)
    uid = _cookie(fetch(client, "GET", "/counter"))
    response = fetch(client, "GET", "/renew", headers={"Cookie": f"app_session={uid}"})
    old, new = text_of(response).split()
    assert old == uid
    assert new != uid
    assert new in _cookie(response)


def test_an_answer_waits_for_its_session_to_be_written(pair: Pair) -> None:
    first, second = pair.clients
    uid = _cookie(fetch(first, "GET", "/counter"))
    # Requests of one turn: their answers wait for the turn's transaction.
    pending = [
        first.get(  # type: ignore[attr-defined]
            MEMORY_ORIGIN + path, headers={"Cookie": f"app_session={uid}"}
        )
        for path in ("/counter", "/health")
    ]
    first.flush()
    answered: list[object] = []

    def note(result: object) -> object:
        answered.append(result)
        return result

    pending[0].addBoth(note)
    assert answered == []
    assert success_result_of(pending[1]).code == 200  # uses no session
    assert _rows(pair.path) == 1
    pair.clock.advance(0)
    first.flush()
    assert len(answered) == 1
    assert "Visit #2 " in text_of(success_result_of(pending[0]))
    assert _visits(second, uid) == 3


class _Writes(StringTransport):
    """
    A transport that keeps each write apart.
    """

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.writes.append(data)
        super().write(data)


def test_an_answer_released_after_its_save_goes_out_in_one_write(pair: Pair) -> None:
    uid = _cookie(fetch(pair.clients[0], "GET", "/counter"))
    channel = pair.sites[1].buildProtocol(None)
    transport = _Writes()
    channel.makeConnection(transport)
    channel.dataReceived(
        b"GET /counter HTTP/1.1\r\nHost: example.invalid\r\n"
        b"Cookie: app_session=" + uid.encode() + b"\r\n\r\n"
    )
    assert transport.writes == []
    pair.clock.advance(0)
    [answer] = transport.writes
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"Visit #2 " in answer


@pytest.mark.parametrize(
    ("args", "paths"),
    [
        ([], (b"/static/", b"/cgi-bin/", b"/wsgi/")),
        (
            [
                "--no-demo",
                "--static",
                str(TESTS / "data"),
                "--mount",
                f"docs={TESTS / 'data'}",
                "--wsgi",
                "api/v1=app.demo_wsgi:application",
                "--proxy",
                "http://127.0.0.1:9/",
                "--htpasswd",
                str(TESTS / "data" / "auth" / "users.htpasswd"),
                "--homes",
                str(TESTS / "data" / "auth" / "homes"),
            ],
            (b"/static/", b"/docs/", b"/api/v1/", b"/private/", b"/proxy/"),
        ),
        # A WSGI application at / takes whatever no route takes: sessions too.
        (["--no-demo", "--wsgi", "/=app.demo_wsgi:application"], ()),
    ],
)
def test_the_mounts_paths_fetch_no_session(
    args: list[str], paths: tuple[bytes, ...]
) -> None:
    site = build_site(config_from_args(args), MemoryReactor(), Clock())
    assert sorted(site.sessionless_paths) == sorted(paths)


def _pending(client: StubTreq, path: str, uid: str, method: str = "GET") -> Any:
    """
    A request sent, not yet answered: its answer waits for the clock.
    """
    pending = client.request(  # type: ignore[attr-defined]
        method, MEMORY_ORIGIN + path, headers={"Cookie": f"app_session={uid}"}
    )
    client.flush()
    return pending


def _answered(pending: Any) -> list[object]:
    answered: list[object] = []

    def note(result: object) -> object:
        answered.append(result)
        return result

    pending.addBoth(note)
    return answered


def test_requests_of_one_session_in_one_turn_each_count_and_save_once(
    pair: Pair,
) -> None:
    first, second = pair.clients
    uid = _cookie(fetch(first, "GET", "/counter"))
    later = _store(pair.sites[0]).backend.later
    saves: list[bytes] = []
    save_then = later.save_then

    def counted(uid: bytes, *args: Any) -> None:
        saves.append(uid)
        save_then(uid, *args)

    later.save_then = counted  # type: ignore[method-assign,assignment]
    pending = [_pending(first, "/counter", uid) for _ in range(3)]
    pair.clock.advance(0)
    first.flush()
    # Each saw the others' visits, as with the memory store; one write.
    visits = sorted(
        re.search(r"Visit #(\d+)", text_of(success_result_of(each))).group(1)  # type: ignore[union-attr]
        for each in pending
    )
    assert visits == ["2", "3", "4"]
    assert saves == [uid.encode()]
    assert _visits(second, uid) == 5


class Gate:
    """
    The saves of a real engine, held until the test lets them through.
    """

    def __init__(self, later: Any) -> None:
        self.later = later
        self.held: list[tuple[Any, ...]] = []

    def load_then(self, *args: Any) -> None:
        self.later.load_then(*args)

    def save_then(self, *args: Any) -> None:
        self.held.append(args)

    def flush(self) -> None:
        self.later.flush()

    def release(self, failing: Exception | None = None) -> None:
        held, self.held = self.held, []
        for *args, then in held:
            if failing is None:
                self.later.save_then(*args, then)
            else:
                then(failing)
        self.later.flush()


def _store(site: Site) -> SharedStore:
    store = site.sessions
    assert isinstance(store, SharedStore)
    return store


def _gated_visitor(pair: Pair) -> tuple[StubTreq, str, Gate]:
    """
    The first client, the uid of a session it made, and a gate on the saves
    of its site from then on.
    """
    first = pair.clients[0]
    uid = _cookie(fetch(first, "GET", "/counter"))
    backend = _store(pair.sites[0]).backend
    gate = Gate(backend.later)
    backend.later = gate
    return first, uid, gate


def test_a_request_that_showed_a_change_under_way_waits_for_its_save(
    pair: Pair,
) -> None:
    first, uid, gated = _gated_visitor(pair)
    changing = _answered(_pending(first, "/counter", uid))
    pair.clock.advance(0)
    assert len(gated.held) == 1
    # A later turn reads the session, with the change, and changes nothing.
    reading = _answered(_pending(first, "/counter", uid, method="HEAD"))
    pair.clock.advance(0)
    first.flush()
    assert (changing, reading, len(gated.held)) == ([], [], 1)
    gated.release()
    first.flush()
    assert [response.code for response in changing + reading] == [200, 200]  # type: ignore[attr-defined]
    assert _visits(pair.clients[1], uid) == 3


def test_a_failed_save_fails_those_that_showed_it_and_is_forgotten(
    pair: Pair,
) -> None:
    first, uid, gated = _gated_visitor(pair)
    changing = _pending(first, "/counter", uid)
    pair.clock.advance(0)
    reading = _pending(first, "/counter", uid, method="HEAD")
    pair.clock.advance(0)
    gated.release(StoreUnavailable("the file is gone"))
    first.flush()
    for pending in (changing, reading):
        response = success_result_of(pending)
        assert response.code == 503
        assert header_of(response, b"retry-after") == RETRY_AFTER
    # The change that was not saved is not this process's session any more.
    visit = _pending(first, "/counter", uid)
    pair.clock.advance(0)
    gated.release()
    first.flush()
    assert "Visit #2 " in text_of(success_result_of(visit))


class Marks:
    """
    A route that answers with the identity of its session's L{ICounter}.
    """

    app = new_app()

    @app.route("/mark")
    def mark(self, request: Any) -> bytes:
        counter = ICounter(request.getSession())
        counter.value += 1
        return b"%d" % (id(counter),)


def test_a_process_serves_a_session_with_one_object_until_another_changes_it(
    tmp_path: Path,
) -> None:
    first, second = _clients_with(tmp_path, Marks().app)
    uid = _cookie(fetch(first, "GET", "/counter"))

    def mark(client: StubTreq) -> str:
        return text_of(
            fetch(client, "GET", "/mark", headers={"Cookie": f"app_session={uid}"})
        )

    kept = mark(first)
    assert mark(first) == kept
    mark(second)
    assert mark(first) != kept
    assert _visits(first, uid) == 6


def test_the_sessions_a_process_keeps_are_bounded(
    pair: Pair, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("app.sessions.shared.LIVE_SESSIONS", 3)
    site = pair.sites[0]
    uids = [
        _cookie(fetch(_client(site, pair.clock), "GET", "/counter")) for _ in range(7)
    ]
    first = pair.clients[0]
    assert 0 < len(_store(site)._live) <= 3
    assert [_visits(first, uid) for uid in uids] == [2] * 7


def test_stopping_saves_what_the_turn_used_and_answers(pair: Pair) -> None:
    first = pair.clients[0]
    uid = _cookie(fetch(first, "GET", "/counter"))
    waiting = _answered(_pending(first, "/counter", uid))
    assert waiting == []
    pair.sites.pop(0).service.stopService()
    first.flush()
    [response] = waiting
    assert "Visit #2 " in text_of(response)
    assert _visits(pair.clients[1], uid) == 3
