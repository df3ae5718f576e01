"""
Session records in SQLite: one file shared by the workers of one host.

  - WAL mode, so readers never wait for the writer, and C{synchronous=NORMAL}
    (a power cut may lose the last moments of sessions, never corrupt the
    file); a writer waits up to C{busy_timeout} for another.
  - Calls are synchronous: each is a few microseconds on a local file, and
    the reactor is held no longer than a page render would hold it.
  - The table keeps each record's deadline on the site's clock; a lookup
    refuses what has passed it, and a sweep deletes it.
  - At most C{limit} sessions: a trigger keeps the count in a one-row tally,
    so making a session never counts the table.  Past the limit, those not
    yet used by a second request go first, least recently used first, as in
    the memory store.
  - Digest nonce counts are claimed by inserting a row whose key is unique:
    the first insert wins, in whichever process.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from twisted.internet.defer import Deferred, fail, succeed

from app.sessions.backend import Loaded, StoreUnavailable

#: How long a writer waits for another process's write, in milliseconds.
BUSY_TIMEOUT_MS = 5000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS sessions (
    uid BLOB PRIMARY KEY,
    record BLOB NOT NULL,
    expires REAL NOT NULL,
    promoted INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS sessions_by_eviction ON sessions (promoted, expires);
CREATE INDEX IF NOT EXISTS sessions_by_expiry ON sessions (expires);
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
        self.path = path
        self.limit = limit
        self._count = 0
        try:
            self._db = sqlite3.connect(
                path, isolation_level=None, check_same_thread=False
            )
            self._db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            self._db.execute("PRAGMA journal_mode = WAL")
            self._db.execute("PRAGMA synchronous = NORMAL")
            self._db.executescript(f"BEGIN IMMEDIATE;{_SCHEMA}COMMIT;")
        except sqlite3.Error as error:
            raise StoreUnavailable(f"cannot open {str(path)!r}: {error}") from None

    def _run(self, sql: str, *parameters: Any) -> sqlite3.Cursor:
        try:
            return self._db.execute(sql, parameters)
        except sqlite3.Error as error:
            raise StoreUnavailable(f"SQLite {str(self.path)!r}: {error}") from None

    def load(self, uid: bytes, now: float) -> Deferred[Loaded | None]:
        try:
            row = self._run(
                "SELECT record, expires, promoted FROM sessions"
                " WHERE uid = ? AND expires > ?",
                uid,
                now,
            ).fetchone()
        except StoreUnavailable:
            return fail()
        if row is None:
            return succeed(None)
        return succeed(Loaded(row[0], row[1], bool(row[2])))

    def save(
        self, uid: bytes, record: bytes, now: float, timeout: float, new: bool
    ) -> Deferred[None]:
        try:
            if new:
                self._make_room()
                self._run(
                    "INSERT OR REPLACE INTO sessions (uid, record, expires)"
                    " VALUES (?, ?, ?)",
                    uid,
                    record,
                    now + timeout,
                )
            else:
                self._run(
                    "UPDATE sessions SET record = ?, expires = ?, promoted = 1"
                    " WHERE uid = ?",
                    record,
                    now + timeout,
                    uid,
                )
        except StoreUnavailable:
            return fail()
        return succeed(None)

    def _make_room(self) -> None:
        """
        Evict sessions until one more fits under the limit.
        """
        count = self._run("SELECT n FROM tally WHERE name = 'sessions'").fetchone()
        self._count = count[0] if count else 0
        excess = self._count - self.limit + 1
        if excess > 0:
            self._run(
                "DELETE FROM sessions WHERE uid IN (SELECT uid FROM sessions"
                " ORDER BY promoted, expires LIMIT ?)",
                excess,
            )

    def touch(self, uid: bytes, now: float, timeout: float) -> Deferred[None]:
        try:
            self._run(
                "UPDATE sessions SET expires = ?, promoted = 1 WHERE uid = ?",
                now + timeout,
                uid,
            )
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
        try:
            self._db.execute(
                "INSERT INTO claims (key, expires) VALUES (?, ?)", (key, now + lifetime)
            )
        except sqlite3.IntegrityError:
            return succeed(False)
        except sqlite3.Error as error:
            return fail(StoreUnavailable(f"SQLite {str(self.path)!r}: {error}"))
        return succeed(True)

    def sweep(self, now: float) -> Deferred[None]:
        try:
            self._run("DELETE FROM sessions WHERE expires <= ?", now)
            self._run("DELETE FROM claims WHERE expires <= ?", now)
        except StoreUnavailable:
            return fail()
        return succeed(None)

    def count(self) -> int:
        return self._count

    def close(self) -> None:
        self._db.close()
