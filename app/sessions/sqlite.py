"""
Session records in SQLite: one file shared by the workers of one host.

  - WAL mode, so readers never wait for the writer, and C{synchronous=NORMAL}
    (a power cut may lose the last moments of sessions, never corrupt the
    file).
  - A writer that finds another process writing retries at once, yielding
    the processor in between, for up to L{BUSY_SECONDS}: the other's write
    takes microseconds.  SQLite's own busy handler would sleep a whole
    millisecond first, holding the reactor for it.
  - Calls are synchronous: each is a few microseconds on a local file, and
    the reactor is held no longer than a page render would hold it.
  - The table keeps each record's deadline on the site's clock; a lookup
    refuses what has passed it, and a sweep deletes it.  A record that
    changes while its deadline moves by less than a second keeps the
    deadline it has, so that a busy session rewrites its row only.
  - At most C{limit} sessions: a trigger keeps the count in a one-row tally,
    so making a session never counts the table.  Past the limit, those not
    yet used by a second request go first, least recently used first, as in
    the memory store.
  - Digest nonce counts are claimed by inserting a row whose key is unique:
    the first insert wins, in whichever process.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

from twisted.internet.defer import Deferred, fail, succeed

from app.sessions.backend import Immediate, Loaded, StoreUnavailable

T = TypeVar("T")

#: How long a writer waits for other processes' writes, in seconds.
BUSY_SECONDS = 5.0
#: Retries that only yield the processor before each waits 100 µs.
BUSY_SPINS = 100

_SCHEMA = """
CREATE TABLE IF NOT EXISTS sessions (
    uid BLOB PRIMARY KEY,
    record BLOB NOT NULL,
    expires REAL NOT NULL,
    promoted INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS sessions_by_eviction ON sessions (promoted, expires);
CREATE TABLE IF NOT EXISTS tally (name TEXT PRIMARY KEY, n INTEGER NOT NULL);
INSERT OR IGNORE INTO tally VALUES ('sessions', 0);
CREATE TRIGGER IF NOT EXISTS sessions_added AFTER INSERT ON sessions
    BEGIN UPDATE tally SET n = n + 1 WHERE name = 'sessions'; END;
CREATE TRIGGER IF NOT EXISTS sessions_removed AFTER DELETE ON sessions
    BEGIN UPDATE tally SET n = n - 1 WHERE name = 'sessions'; END;
CREATE TABLE IF NOT EXISTS claims (
    key BLOB PRIMARY KEY,
    expires REAL NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS claims_by_expiry ON claims (expires);
"""


class SQLiteBackend:
    """
    Session records and nonce claims in the SQLite file at C{path}.

    @param limit: the most sessions kept at once.
    """

    asynchronous = False
    keeps_deadlines = False

    def __init__(self, path: Path, limit: int) -> None:
        self.immediate: Immediate | None = self
        self.path = path
        self.limit = limit
        try:
            self._db = sqlite3.connect(
                path, isolation_level=None, check_same_thread=False
            )
            self._db.execute("PRAGMA busy_timeout = 0")
            db = self._db
            _retrying(lambda: db.execute("PRAGMA journal_mode = WAL"))
            db.execute("PRAGMA synchronous = NORMAL")
            _retrying(lambda: db.executescript(f"BEGIN IMMEDIATE;{_SCHEMA}COMMIT;"))
        except sqlite3.Error as error:
            raise StoreUnavailable(f"cannot open {str(path)!r}: {error}") from None

    def _run(self, sql: str, *parameters: Any) -> sqlite3.Cursor:
        execute = self._db.execute
        try:
            return _retrying(lambda: execute(sql, parameters))
        except sqlite3.Error as error:
            raise StoreUnavailable(f"SQLite {str(self.path)!r}: {error}") from None

    # What the shared store calls on a request's path: at once, raising
    # StoreUnavailable, with no Deferred to make.

    def load_now(self, uid: bytes, now: float) -> Loaded | None:
        row = self._run(
            "SELECT record, expires, promoted FROM sessions"
            " WHERE uid = ? AND expires > ?",
            uid,
            now,
        ).fetchone()
        return None if row is None else Loaded(row[0], row[1], bool(row[2]))

    def save_now(
        self, uid: bytes, record: bytes, now: float, timeout: float | None, new: bool
    ) -> None:
        if new:
            self._make_room()
            self._run(
                "INSERT OR REPLACE INTO sessions (uid, record, expires)"
                " VALUES (?, ?, ?)",
                uid,
                record,
                now + (timeout or 0.0),
            )
        elif timeout is None:
            self._run("UPDATE sessions SET record = ? WHERE uid = ?", record, uid)
        else:
            self._run(
                "UPDATE sessions SET record = ?, expires = ?, promoted = 1"
                " WHERE uid = ?",
                record,
                now + timeout,
                uid,
            )

    def touch_now(self, uid: bytes, now: float, timeout: float) -> None:
        self._run(
            "UPDATE sessions SET expires = ?, promoted = 1 WHERE uid = ?",
            now + timeout,
            uid,
        )

    def _make_room(self) -> None:
        """
        Evict sessions until one more fits under the limit.
        """
        count = self._run("SELECT n FROM tally WHERE name = 'sessions'").fetchone()
        excess = (count[0] if count else 0) - self.limit + 1
        if excess > 0:
            self._run(
                "DELETE FROM sessions WHERE uid IN (SELECT uid FROM sessions"
                " ORDER BY promoted, expires LIMIT ?)",
                excess,
            )

    # The Backend interface.

    def load(self, uid: bytes, now: float) -> Deferred[Loaded | None]:
        try:
            return succeed(self.load_now(uid, now))
        except StoreUnavailable:
            return fail()

    def save(
        self, uid: bytes, record: bytes, now: float, timeout: float | None, new: bool
    ) -> Deferred[None]:
        try:
            self.save_now(uid, record, now, timeout, new)
        except StoreUnavailable:
            return fail()
        return succeed(None)

    def touch(self, uid: bytes, now: float, timeout: float) -> Deferred[None]:
        try:
            self.touch_now(uid, now, timeout)
        except StoreUnavailable:
            return fail()
        return succeed(None)

    def delete(self, uid: bytes) -> Deferred[None]:
        try:
            self._run("DELETE FROM sessions WHERE uid = ?", uid)
        except StoreUnavailable:
            return fail()
        return succeed(None)

    def alive(self, uids: Iterable[bytes], now: float) -> Deferred[set[bytes]]:
        wanted = list(uids)
        found: set[bytes] = set()
        try:
            # SQLite takes at most 32766 parameters a statement.
            for start in range(0, len(wanted), 500):
                batch = wanted[start : start + 500]
                marks = ",".join("?" * len(batch))
                rows = self._run(
                    # Only question marks are put in the statement.
                    f"SELECT uid FROM sessions WHERE uid IN ({marks})"  # noqa: S608
                    " AND expires > ?",
                    *batch,
                    now,
                )
                found.update(row[0] for row in rows)
        except StoreUnavailable:
            return fail()
        return succeed(found)

    def claim(self, key: bytes, now: float, lifetime: float) -> Deferred[bool]:
        insert = "INSERT INTO claims (key, expires) VALUES (?, ?)"
        try:
            _retrying(lambda: self._db.execute(insert, (key, now + lifetime)))
        except sqlite3.IntegrityError:
            return succeed(False)
        except sqlite3.Error as error:
            return fail(StoreUnavailable(f"SQLite {str(self.path)!r}: {error}"))
        return succeed(True)

    def sweep(self, now: float) -> Deferred[None]:
        try:
            # Each half reads the eviction index.
            for promoted in (0, 1):
                self._run(
                    "DELETE FROM sessions WHERE promoted = ? AND expires <= ?",
                    promoted,
                    now,
                )
            self._run("DELETE FROM claims WHERE expires <= ?", now)
        except StoreUnavailable:
            return fail()
        return succeed(None)

    def close(self) -> None:
        self._db.close()


def _retrying(statement: Callable[[], T]) -> T:
    """
    Run C{statement} until no other process holds the lock it needs, for up
    to L{BUSY_SECONDS}.
    """
    deadline = 0.0
    attempts = 0
    while True:
        try:
            return statement()
        except sqlite3.OperationalError as error:
            if error.sqlite_errorcode & 0xFF != sqlite3.SQLITE_BUSY:
                raise
            attempts += 1
            now = time.monotonic()
            if attempts == 1:
                deadline = now + BUSY_SECONDS
            elif now > deadline:
                raise
            if attempts < BUSY_SPINS:
                os.sched_yield()
            else:
                time.sleep(0.0001)
