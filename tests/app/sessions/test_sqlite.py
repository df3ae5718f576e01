"""
The SQLite engine on its own: two backends on one file stand for two
processes, on one L{Clock} whose turns gather their writes.
"""

from __future__ import annotations

import sqlite3
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from twisted.internet.task import Clock

from app.sessions.backend import Loaded, StoreUnavailable
from app.sessions.sqlite import STAMP_SLOTS, SQLiteBackend

A, B, C = b"a" * 64, b"b" * 64, b"c" * 64
NOW = 1000.0
TIMEOUT = 60.0

Outcome = StoreUnavailable | None


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "sessions.sqlite3"


@pytest.fixture
def pair(path: Path, clock: Clock) -> Iterator[tuple[SQLiteBackend, SQLiteBackend]]:
    first, second = SQLiteBackend(path, 100, clock), SQLiteBackend(path, 100, clock)
    yield first, second
    first.close()
    second.close()


def _save(
    backend: SQLiteBackend,
    uid: bytes,
    record: bytes,
    *,
    new: bool = False,
    timeout: float | None = TIMEOUT,
) -> list[Outcome]:
    outcomes: list[Outcome] = []
    backend.save_then(uid, record, NOW, timeout, new, outcomes.append)
    return outcomes


def _made(backend: SQLiteBackend, clock: Clock) -> None:
    """
    Session A made with record C{one}, and written.
    """
    assert _save(backend, A, b"one", new=True) == []
    clock.advance(0)


def _row(path: Path, uid: bytes) -> tuple[bytes, float, int] | None:
    with sqlite3.connect(path) as db:
        row: tuple[bytes, float, int] | None = db.execute(
            "SELECT record, expires, promoted FROM sessions WHERE uid = ?", (uid,)
        ).fetchone()
    return row


def test_the_writes_of_a_turn_are_made_together_at_its_end(
    pair: tuple[SQLiteBackend, SQLiteBackend], path: Path, clock: Clock
) -> None:
    first, second = pair
    outcomes = [_save(first, uid, b"record " + uid, new=True) for uid in (A, B, C)]
    # Nothing is written, and no one told, until the turn ends.
    assert outcomes == [[], [], []]
    assert [_row(path, uid) for uid in (A, B, C)] == [None, None, None]
    assert second.load_now(A, NOW) is None
    clock.advance(0)
    assert outcomes == [[None], [None], [None]]
    for uid in (A, B, C):
        assert _row(path, uid) == (b"record " + uid, NOW + TIMEOUT, 0)
        assert second.load_now(uid, NOW) == Loaded(
            b"record " + uid, NOW + TIMEOUT, False
        )


def test_changes_of_one_session_in_a_turn_write_the_last(
    pair: tuple[SQLiteBackend, SQLiteBackend], path: Path, clock: Clock
) -> None:
    first, second = pair
    _made(first, clock)
    told = [_save(first, A, b"two"), _save(first, A, b"three", timeout=None)]
    clock.advance(0)
    assert told == [[None], [None]]
    # The deadline of the one that set it, the record of the last.
    assert _row(path, A) == (b"three", NOW + TIMEOUT, 1)
    assert second.load_now(A, NOW) == Loaded(b"three", NOW + TIMEOUT, True)


def test_a_deletion_between_changes_is_kept_in_order(
    pair: tuple[SQLiteBackend, SQLiteBackend], path: Path, clock: Clock
) -> None:
    first, _ = pair
    _made(first, clock)
    _save(first, A, b"two")
    deleted = first.delete(A)
    late = _save(first, A, b"three")
    clock.advance(0)
    assert deleted.called and late == [None]
    # The change after the deletion finds no row: the session stays ended.
    assert _row(path, A) is None
    assert first.load_now(A, NOW) is None


def test_a_record_kept_by_one_process_is_read_again_once_another_writes_it(
    pair: tuple[SQLiteBackend, SQLiteBackend], path: Path, clock: Clock
) -> None:
    first, second = pair
    _made(first, clock)
    assert second.load_now(A, NOW) == Loaded(b"one", NOW + TIMEOUT, False)
    # Kept: a change behind the store's back (no new stamp) is not seen ...
    with sqlite3.connect(path) as db:
        db.execute("UPDATE sessions SET record = ? WHERE uid = ?", (b"sneaked", A))
    assert second.load_now(A, NOW) == Loaded(b"one", NOW + TIMEOUT, False)
    # ... while a write through the store is, at once.
    _save(first, A, b"two")
    clock.advance(0)
    assert second.load_now(A, NOW) == Loaded(b"two", NOW + TIMEOUT, True)
    # Deleted by the other process: gone for this one too.
    first.delete(A)
    clock.advance(0)
    assert second.load_now(A, NOW) is None


def test_a_kept_record_past_its_deadline_is_read_again(
    pair: tuple[SQLiteBackend, SQLiteBackend], clock: Clock
) -> None:
    first, second = pair
    _made(first, clock)
    assert second.load_now(A, NOW) is not None
    # The other process slid it: this one's kept deadline has passed, and
    # the row is read again.
    first.touch_now(A, NOW + TIMEOUT - 1, TIMEOUT)
    later = NOW + TIMEOUT + 1
    assert second.load_now(A, later) == Loaded(b"one", NOW + 2 * TIMEOUT - 1, True)
    assert second.load_now(A, NOW + 3 * TIMEOUT) is None


def test_a_session_evicted_by_another_process_is_gone_from_this_one(
    path: Path, clock: Clock
) -> None:
    first, second = SQLiteBackend(path, 2, clock), SQLiteBackend(path, 2, clock)
    try:
        _made(first, clock)
        assert second.load_now(A, NOW) is not None
        _save(first, B, b"two", new=True)
        _save(first, C, b"three", new=True)
        clock.advance(0)
        assert second.load_now(A, NOW) is None
        assert second.load_now(C, NOW) is not None
    finally:
        first.close()
        second.close()


def test_a_turn_whose_transaction_fails_tells_each_writer(
    pair: tuple[SQLiteBackend, SQLiteBackend], path: Path, clock: Clock
) -> None:
    first, second = pair
    _made(first, clock)
    assert second.load_now(A, NOW) is not None
    told = [_save(first, A, b"two"), _save(first, B, b"new", new=True)]
    # Another connection holds the write lock for longer than a writer waits.
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr("app.sessions.sqlite.BUSY_SECONDS", 0.05)
            clock.advance(0)
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert all(isinstance(outcome, StoreUnavailable) for [outcome] in told)
    assert _row(path, A) == (b"one", NOW + TIMEOUT, 0)
    assert _row(path, B) is None
    # The next turn writes again.
    assert _save(first, A, b"three") == []
    clock.advance(0)
    assert second.load_now(A, NOW) == Loaded(b"three", NOW + TIMEOUT, True)


def test_the_stamp_table_is_private_and_sized(
    pair: tuple[SQLiteBackend, SQLiteBackend], path: Path
) -> None:
    stamps = Path(f"{path}-stamps")
    info = stamps.stat()
    assert stat.S_IMODE(info.st_mode) == 0o600
    assert info.st_size == STAMP_SLOTS * 8


def test_closing_writes_what_the_turn_gathered(path: Path, clock: Clock) -> None:
    backend = SQLiteBackend(path, 100, clock)
    told = _save(backend, A, b"one", new=True)
    backend.close()
    assert told == [None]
    assert _row(path, A) == (b"one", NOW + TIMEOUT, 0)
    assert clock.getDelayedCalls() == []
