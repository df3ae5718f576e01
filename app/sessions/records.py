"""
Session records: what a shared store keeps of a session, sealed.

A record is a session's adapters (what C{getComponent} made and kept, by
interface name) pickled, behind an HMAC-SHA256 tag over the session's uid
and the pickle, under the server's secret.  The tag is checked before
anything is unpickled, so a record that was forged, tampered with, or moved
to another uid is no session at all: the store's contents are never trusted
further than the secret.  A process remembers the records it last sealed
and opened for each uid: the very same bytes again (the usual case: the
next request of a session) are not checked twice.
"""

from __future__ import annotations

import hashlib
import hmac
import pickle
from typing import Any

#: Bytes of the tag in front of each record.
TAG_BYTES = 32
#: SHA-256's block size, which HMAC pads its key to.
_BLOCK = 64
#: Records whose tag a sealer remembers having checked or made, at most.
VOUCHED_RECORDS = 4096


class UnpicklableAdapter(Exception):
    """
    An adapter of a session cannot be pickled, so the session cannot be
    kept in a shared store.
    """

    def __init__(self, adapter: object, error: Exception) -> None:
        kind = type(adapter)
        self.kind = f"{kind.__module__}.{kind.__qualname__}"
        super().__init__(
            f"the session adapter {self.kind} cannot be pickled: "
            f"{type(error).__name__}: {error}"
        )


class Sealer:
    """
    Seals and opens the records of one server's sessions.

    @param key: the server's secret (at least 16 bytes).
    """

    def __init__(self, key: bytes) -> None:
        # HMAC (RFC 2104) with its two keyed hash states made once: each tag
        # then copies them, about a third of what hmac.digest costs a call
        # (its key schedule is redone every time), for a record sealed or
        # opened on every request that uses a session.
        if len(key) > _BLOCK:
            key = hashlib.sha256(key).digest()
        key = key.ljust(_BLOCK, b"\0")
        self._inner = hashlib.sha256(bytes(byte ^ 0x36 for byte in key))
        self._outer = hashlib.sha256(bytes(byte ^ 0x5C for byte in key))
        #: The records last sealed and last opened for each uid: the same
        #: bytes again carry a tag already checked.  (Two: requests of one
        #: session that overlap open the record one wrote before them while
        #: sealing the next.)
        self._vouched: dict[bytes, tuple[bytes, bytes]] = {}

    def _vouch(self, uid: bytes, record: bytes, sealed: bool) -> None:
        vouched = self._vouched
        known = vouched.get(uid)
        if known is None:
            if len(vouched) >= VOUCHED_RECORDS:
                vouched.clear()
            vouched[uid] = (record, record)
        elif sealed:
            vouched[uid] = (record, known[1])
        else:
            vouched[uid] = (known[0], record)

    def _vouched_for(self, uid: bytes, record: bytes) -> bool:
        known = self._vouched.get(uid)
        return known is not None and (
            hmac.compare_digest(known[0], record)
            or hmac.compare_digest(known[1], record)
        )

    def _tag(self, uid: bytes, payload: bytes) -> bytes:
        inner = self._inner.copy()
        inner.update(b"%d:%s:%s" % (len(uid), uid, payload))
        outer = self._outer.copy()
        outer.update(inner.digest())
        return outer.digest()

    def seal(self, uid: bytes, adapters: dict[str, Any]) -> bytes:
        """
        The record of the session C{uid} holding C{adapters}.

        @raise UnpicklableAdapter: naming the first adapter that cannot be
            pickled.
        """
        return self.seal_payload(uid, payload_of(adapters))

    def seal_payload(self, uid: bytes, payload: bytes) -> bytes:
        """
        The record of the session C{uid} whose pickled adapters are
        C{payload} (L{payload_of}).
        """
        record = self._tag(uid, payload) + payload
        self._vouch(uid, record, sealed=True)
        return record

    def open(self, uid: bytes, record: bytes) -> dict[str, Any] | None:
        """
        The adapters in C{record} if it is a record this server sealed for
        C{uid}, else L{None}.
        """
        tag, payload = record[:TAG_BYTES], record[TAG_BYTES:]
        if not self._vouched_for(uid, record):
            if len(tag) != TAG_BYTES or not hmac.compare_digest(
                tag, self._tag(uid, payload)
            ):
                return None
            self._vouch(uid, record, sealed=False)
        try:
            # Unpickled only once the tag proved this server sealed it.
            adapters = pickle.loads(payload)  # noqa: S301
        except Exception:
            # Sealed by this server, yet unreadable: an adapter's class was
            # renamed or removed since.  Such a session starts afresh.
            return None
        return adapters if isinstance(adapters, dict) else None


def payload_of(adapters: dict[str, Any]) -> bytes:
    """
    C{adapters} pickled, as a record holds them after its tag.

    @raise UnpicklableAdapter: naming the first adapter that cannot be
        pickled.
    """
    try:
        return pickle.dumps(adapters, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as error:
        raise UnpicklableAdapter(_unpicklable(adapters), error) from None


def _unpicklable(adapters: dict[str, Any]) -> object:
    """
    The first of C{adapters} that cannot be pickled on its own (or the
    dictionary, if each can).
    """
    for adapter in adapters.values():
        try:
            pickle.dumps(adapter, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception:
            return adapter
    return adapters
