"""
Session records in SQLite: one file shared by the workers of one host.

  - WAL mode, so readers never wait for the writer, and C{synchronous=NORMAL}
    (a power cut may lose the last moments of sessions, never corrupt the
    file).
  - The records a reactor turn's requests save are written together, in
    one transaction, once the turn's events are handled; the requests'
    answers wait for it.  Each transaction takes the file's write lock and
    its locks cost more than the rows: under load, one per turn instead of
    one per request, and the workers seldom find the lock taken.  Changes
    of one session in one turn make one write, of the last: no answer goes
    out before the commit, so no one could see the others.
  - A writer that finds another process writing retries at once, yielding
    the processor in between, for up to L{BUSY_SECONDS}: the other's write
    takes microseconds.  SQLite's own busy handler would sleep a whole
    millisecond first, holding the reactor for it.
  - Reads are synchronous: a few microseconds on a local file, and the
    reactor is held no longer than a page render would hold it.  A process
    keeps the records it read or wrote last, each with the random stamp
    its row holds; every write puts a new stamp in the row and in a slot
    of a small table that the file's processes share in memory
    (L{Stamps}).  A kept record whose stamp is its slot's is the row's
    record: it is used without reading the row.  The slot is written
    before the transaction commits, under the write lock, so slots follow
    the order of commits; a reader that sees the new stamp before the
    commit reads the old row and its old stamp, and keeps nothing that the
    slot vouches for.
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

import mmap
import os
import random
import sqlite3
import struct
import time
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from app.sessions.backend import Immediate, Later, Loaded, StoreUnavailable

T = TypeVar("T")

log = Logger()

#: How long a writer waits for other processes' writes, in seconds.
BUSY_SECONDS = 5.0
#: Retries that only yield the processor before each waits 100 µs.
BUSY_SPINS = 100
#: Slots of the shared stamp table (8 bytes each).
STAMP_SLOTS = 1 << 16
#: Records a process keeps, at most; past it, it forgets them all.
KEPT_RECORDS = 4096

_SCHEMA = """
CREATE TABLE IF NOT EXISTS sessions (
    uid BLOB PRIMARY KEY,
    record BLOB NOT NULL,
    expires REAL NOT NULL,
    promoted INTEGER NOT NULL DEFAULT 0,
    stamp INTEGER NOT NULL DEFAULT 0
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

#: The sessions in the file, from the tally the triggers keep (one row, not
#: the table).
_COUNT = "SELECT n FROM tally WHERE name = 'sessions'"


class Stamps:
    """
    The stamp of the last write to each slot's sessions, in a file that the
    processes using one SQLite file map into memory (C{PATH-stamps}).  A
    session's slot is a hash of its uid; sessions sharing a slot only make
    each other's kept records be read again.
    """

    _slot = struct.Struct("=q")

    def __init__(self, path: Path) -> None:
        size = STAMP_SLOTS * self._slot.size
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            if os.fstat(descriptor).st_size < size:
                os.ftruncate(descriptor, size)
            self._map = mmap.mmap(descriptor, size)
        finally:
            os.close(descriptor)
        #: The stamp at a slot's offset (L{slot}), as a one-item tuple.
        self.at: Callable[[int], tuple[int]] = partial(
            self._slot.unpack_from, self._map
        )

    def slot(self, uid: bytes) -> int:
        """
        The offset of C{uid}'s slot.
        """
        return (zlib.crc32(uid) % STAMP_SLOTS) * 8

    def set(self, uid: bytes, stamp: int) -> None:
        self._slot.pack_into(self._map, self.slot(uid), stamp)

    def close(self) -> None:
        self._map.close()


@dataclass(slots=True)
class _Write:
    """
    A write waiting for the end of the reactor's turn: a record (C{None}
    for a deletion), its deadline (C{None}: the one it has), and whom to
    tell how it went.
    """

    uid: bytes
    record: bytes | None
    stamp: int
    expires: float | None
    new: bool
    thens: list[Callable[[StoreUnavailable | None], object]]
    #: Whether a change found its row (another process may have ended it).
    found: bool = True

    def absorb(self, later: _Write) -> bool:
        """
        Take in C{later}, a write of the same session, if both change a
        record that is there: the row only ever shows the last, since no
        answer goes out before the transaction commits.
        """
        if self.record is None or self.new or later.record is None or later.new:
            return False
        self.record = later.record
        self.stamp = later.stamp
        if later.expires is not None:
            self.expires = later.expires
        self.thens += later.thens
        return True


class SQLiteBackend:
    """
    Session records and nonce claims in the SQLite file at C{path}.

    @param limit: the most sessions kept at once.
    @param clock: whose turns the writes are gathered over.
    """

    keeps_deadlines = False

    def __init__(self, path: Path, limit: int, clock: IReactorTime) -> None:
        self.immediate: Immediate | None = self
        # Saves answer later (at the end of the turn); loads at once, so
        # nothing is fetched before a request is routed.
        self.later: Later = self
        self.path = path
        self.limit = limit
        self._clock = clock
        #: uid -> (stamp, record, offset of its stamp's slot) for the
        #: records this process read or wrote.
        self._kept: dict[bytes, tuple[int, Loaded, int]] = {}
        self._writes: list[_Write] = []
        #: The last of the gathered writes of each session.
        self._last_writes: dict[bytes, _Write] = {}
        self._writing: IDelayedCall | None = None
        try:
            self._db = sqlite3.connect(
                path, isolation_level=None, check_same_thread=False
            )
            self._db.execute("PRAGMA busy_timeout = 0")
            db = self._db
            _retrying(lambda: db.execute("PRAGMA journal_mode = WAL"))
            db.execute("PRAGMA synchronous = NORMAL")
            _retrying(lambda: db.executescript(f"BEGIN IMMEDIATE;{_SCHEMA}COMMIT;"))
            columns = {row[1] for row in db.execute("PRAGMA table_info(sessions)")}
            if "stamp" not in columns:
                # A file from a release that kept no stamps.
                _retrying(
                    lambda: db.execute(
                        "ALTER TABLE sessions"
                        " ADD COLUMN stamp INTEGER NOT NULL DEFAULT 0"
                    )
                )
            self._stamps = Stamps(Path(f"{path}-stamps"))
        except (sqlite3.Error, OSError) as error:
            raise StoreUnavailable(f"cannot open {str(path)!r}: {error}") from None

    def _run(self, sql: str, *parameters: Any) -> sqlite3.Cursor:
        execute = self._db.execute
        try:
            return _retrying(lambda: execute(sql, parameters))
        except sqlite3.Error as error:
            raise StoreUnavailable(f"SQLite {str(self.path)!r}: {error}") from None

    def _keep(self, uid: bytes, stamp: int, loaded: Loaded) -> None:
        kept = self._kept
        if len(kept) >= KEPT_RECORDS and uid not in kept:
            kept.clear()
        kept[uid] = (stamp, loaded, self._stamps.slot(uid))

    # What the shared store calls on a request's path.

    def load_now(self, uid: bytes, now: float) -> Loaded | None:
        kept = self._kept.get(uid)
        if kept is not None:
            stamp, loaded, slot = kept
            expires = loaded.expires
            assert expires is not None
            if expires > now and stamp == self._stamps.at(slot)[0]:
                return loaded
        row = self._run(
            "SELECT record, expires, promoted, stamp FROM sessions"
            " WHERE uid = ? AND expires > ?",
            uid,
            now,
        ).fetchone()
        if row is None:
            self._kept.pop(uid, None)
            return None
        loaded = Loaded(row[0], row[1], bool(row[2]))
        self._keep(uid, row[3], loaded)
        return loaded

    def load_then(
        self,
        uid: bytes,
        now: float,
        then: Callable[[Loaded | StoreUnavailable | None], object],
    ) -> None:
        try:
            found = self.load_now(uid, now)
        except StoreUnavailable as error:
            then(error)
            return
        then(found)

    def save_then(
        self,
        uid: bytes,
        record: bytes,
        now: float,
        timeout: float | None,
        new: bool,
        then: Callable[[StoreUnavailable | None], object],
    ) -> None:
        expires = None if timeout is None else now + timeout
        self._write(_Write(uid, record, _stamp(), expires, new, [then]))

    def flush(self) -> None:
        writing = self._writing
        if writing is not None:
            writing.cancel()
            self._commit()

    def touch_now(self, uid: bytes, now: float, timeout: float) -> None:
        # The stamp stays: a kept record with an earlier deadline is read
        # again once that passes.
        self._run(
            "UPDATE sessions SET expires = ?, promoted = 1 WHERE uid = ?",
            now + timeout,
            uid,
        )
        kept = self._kept.get(uid)
        if kept is not None:
            stamp, loaded, slot = kept
            self._kept[uid] = (stamp, Loaded(loaded.record, now + timeout, True), slot)

    def _write(self, write: _Write) -> None:
        last = self._last_writes.get(write.uid)
        if last is not None and last.absorb(write):
            return
        self._writes.append(write)
        self._last_writes[write.uid] = write
        if self._writing is None:
            self._writing = self._clock.callLater(0, self._commit)

    def _commit(self) -> None:
        """
        Make the writes gathered over the turn, in one transaction.
        """
        self._writing = None
        writes, self._writes = self._writes, []
        self._last_writes.clear()
        db = self._db
        try:
            _retrying(lambda: db.execute("BEGIN IMMEDIATE"))
            try:
                for write in writes:
                    self._apply(write)
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        except Exception as error:
            if not isinstance(error, sqlite3.Error):
                log.failure("Writing sessions to {path} failed", path=str(self.path))
            failure = StoreUnavailable(f"SQLite {str(self.path)!r}: {error}")
            for write in writes:
                self._kept.pop(write.uid, None)
                _tell(write.thens, failure)
            return
        for write in writes:
            self._kept_after(write)
            _tell(write.thens, None)

    def _apply(self, write: _Write) -> None:
        """
        Make C{write}, in the transaction under way: its row, and the stamp
        of its slot (before the commit, see the module's docstring).
        """
        execute = self._db.execute
        uid = write.uid
        if write.record is None:
            execute("DELETE FROM sessions WHERE uid = ?", (uid,))
        elif write.new:
            self._make_room()
            execute(
                "INSERT OR REPLACE INTO sessions (uid, record, expires, stamp)"
                " VALUES (?, ?, ?, ?)",
                (uid, write.record, write.expires or 0.0, write.stamp),
            )
        else:
            # Without a new deadline, the row only (no index entry moves).
            changed = (
                execute(
                    "UPDATE sessions SET record = ?, stamp = ? WHERE uid = ?",
                    (write.record, write.stamp, uid),
                )
                if write.expires is None
                else execute(
                    "UPDATE sessions SET record = ?, expires = ?, promoted = 1,"
                    " stamp = ? WHERE uid = ?",
                    (write.record, write.expires, write.stamp, uid),
                )
            )
            write.found = bool(changed.rowcount)
        self._stamps.set(uid, write.stamp)

    def _kept_after(self, write: _Write) -> None:
        """
        Keep what C{write}, committed, left in its row.
        """
        uid = write.uid
        if write.record is None or not write.found:
            self._kept.pop(uid, None)
            return
        expires = write.expires
        promoted = not write.new
        if expires is None:
            kept = self._kept.get(uid)
            if kept is None:
                return
            expires = kept[1].expires
        self._keep(uid, write.stamp, Loaded(write.record, expires, promoted))

    def _make_room(self) -> None:
        """
        Evict sessions until one more fits under the limit.
        """
        execute = self._db.execute
        count = execute(_COUNT).fetchone()
        excess = (count[0] if count else 0) - self.limit + 1
        if excess > 0:
            evicted = execute(
                "DELETE FROM sessions WHERE uid IN (SELECT uid FROM sessions"
                " ORDER BY promoted, expires LIMIT ?) RETURNING uid",
                (excess,),
            ).fetchall()
            for (uid,) in evicted:
                self._stamps.set(uid, _stamp())
                self._kept.pop(uid, None)

    # The Backend interface.

    def load(self, uid: bytes, now: float) -> Deferred[Loaded | None]:
        try:
            return succeed(self.load_now(uid, now))
        except StoreUnavailable:
            return fail()

    def save(
        self, uid: bytes, record: bytes, now: float, timeout: float | None, new: bool
    ) -> Deferred[None]:
        saved: Deferred[None] = Deferred()
        self.save_then(uid, record, now, timeout, new, _firing(saved))
        return saved

    def touch(self, uid: bytes, now: float, timeout: float) -> Deferred[None]:
        try:
            self.touch_now(uid, now, timeout)
        except StoreUnavailable:
            return fail()
        return succeed(None)

    def delete(self, uid: bytes) -> Deferred[None]:
        deleted: Deferred[None] = Deferred()
        self._write(_Write(uid, None, _stamp(), None, False, [_firing(deleted)]))
        return deleted

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
        # Expired rows need no new stamp: a kept record past its deadline is
        # read again.
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

    def count(self) -> int | None:
        try:
            row = self._run(_COUNT).fetchone()
        except StoreUnavailable:
            return None
        return int(row[0]) if row else 0

    def close(self) -> None:
        if self._writing is not None and self._writing.active():
            self._writing.cancel()
            self._commit()
        # Nothing kept is vouched for any more: every load reads the (now
        # closed) file, and fails.
        self._kept.clear()
        self._db.close()
        self._stamps.close()


def _stamp() -> int:
    """
    A stamp for a write: random, and never 0 (a slot no one wrote).
    """
    return random.getrandbits(63) + 1


def _tell(
    thens: list[Callable[[StoreUnavailable | None], object]],
    error: StoreUnavailable | None,
) -> None:
    for then in thens:
        try:
            then(error)
        except Exception:
            log.failure("Answering a request after its session was written failed")


def _firing(deferred: Deferred[None]) -> Callable[[StoreUnavailable | None], None]:
    def fire(error: StoreUnavailable | None) -> None:
        if error is None:
            deferred.callback(None)
        else:
            deferred.errback(error)

    return fire


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
