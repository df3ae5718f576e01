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
    # The metrics count what a process holds: a shared session is the file's.
    assert [len(site.sessions) for site in pair.sites] == [0, 0]


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

    path = tmp_path / "s.sqlite3"
    clock = Clock()
    clients = []
    for _ in range(2):
        config = config_from_args(["--sessions", f"sqlite:{path}"])
        config = replace(config, route_apps=(Routes().app,), secret_key=SECRET)
        clients.append(_client(build_site(config, MemoryReactor(), clock), clock))
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


def test_a_mount_below_which_a_session_page_lies_still_fetches_sessions(
    tmp_path: Path,
) -> None:
    # Only a Config made in Python can name a mount after a built-in page.
    config = replace(
        config_from_args([]), mounts=(("session", tmp_path), ("notes", tmp_path))
    )
    site = build_site(config, MemoryReactor(), Clock())
    assert b"/notes/" in site.sessionless_paths
    assert b"/session/" not in site.sessionless_paths
