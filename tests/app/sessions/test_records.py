"""
Sealed session records: what a shared store keeps is opened only if this
server sealed it, for that session.
"""

from __future__ import annotations

import pickle
import threading
from collections.abc import Callable

import pytest

from app.sessions.records import (
    TAG_BYTES,
    VOUCHED_RECORDS,
    Sealer,
    UnpicklableAdapter,
)
from routes.sessions import Counter, ICounter

KEY = bytes(range(32))
UID = b"a" * 64


def _counter(value: int) -> dict[str, object]:
    counter = Counter(None)  # type: ignore[arg-type]
    counter.value = value
    return {ICounter.__module__ + ".ICounter": counter}


def _tags_computed(monkeypatch: pytest.MonkeyPatch, *sealers: Sealer) -> list[bytes]:
    """
    The uids whose tags C{sealers} compute from now on, in order.
    """
    tags: list[bytes] = []

    def counting(
        tag: Callable[[bytes, bytes], bytes],
    ) -> Callable[[bytes, bytes], bytes]:
        def counted(uid: bytes, payload: bytes) -> bytes:
            tags.append(uid)
            return tag(uid, payload)

        return counted

    for sealer in sealers:
        monkeypatch.setattr(sealer, "_tag", counting(sealer._tag))
    return tags


def test_a_sealed_record_opens_to_its_adapters() -> None:
    sealer = Sealer(KEY)
    opened = sealer.open(UID, sealer.seal(UID, _counter(7)))
    assert opened is not None
    assert opened["routes.sessions.ICounter"].value == 7


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(
            lambda record: record[:-1] + bytes([record[-1] ^ 1]), id="payload"
        ),
        pytest.param(lambda record: bytes([record[0] ^ 1]) + record[1:], id="tag"),
        pytest.param(lambda record: record[:TAG_BYTES], id="no-payload"),
        pytest.param(lambda record: record[:5], id="short"),
        pytest.param(lambda record: b"", id="empty"),
        pytest.param(
            lambda record: b"\0" * TAG_BYTES + pickle.dumps({"x": 1}), id="forged"
        ),
    ],
)
def test_a_tampered_or_forged_record_is_no_session(damage: object) -> None:
    sealer = Sealer(KEY)
    record = sealer.seal(UID, _counter(1))
    # The sealer remembers the record it sealed: that changes nothing for
    # any other bytes, before or after the genuine record is opened.
    assert sealer.open(UID, damage(record)) is None  # type: ignore[operator]
    assert sealer.open(UID, record) is not None
    assert sealer.open(UID, damage(record)) is None  # type: ignore[operator]
    assert Sealer(KEY).open(UID, damage(record)) is None  # type: ignore[operator]


def test_a_record_moved_to_another_uid_is_no_session() -> None:
    sealer = Sealer(KEY)
    record = sealer.seal(UID, _counter(1))
    assert sealer.open(b"b" * 64, record) is None


def test_a_record_sealed_under_another_secret_is_no_session() -> None:
    record = Sealer(b"other secret, 32 bytes long....").seal(UID, _counter(1))
    assert Sealer(KEY).open(UID, record) is None


def test_a_forged_pickle_is_never_unpickled(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[bytes] = []
    monkeypatch.setattr(pickle, "loads", lambda data: calls.append(data))
    hostile = b"\0" * TAG_BYTES + b"cos\nsystem\n(S'true'\ntR."
    assert Sealer(KEY).open(UID, hostile) is None
    assert calls == []


def test_a_sealed_record_whose_class_is_gone_is_no_session() -> None:
    sealer = Sealer(KEY)
    payload = pickle.dumps(_counter(1)).replace(b"Counter", b"Countr0")
    record = sealer._tag(UID, payload) + payload
    assert sealer.open(UID, record) is None


def test_an_adapter_that_cannot_be_pickled_is_named() -> None:
    class Holder:
        def __init__(self) -> None:
            self.lock = threading.Lock()

    with pytest.raises(UnpicklableAdapter) as raised:
        Sealer(KEY).seal(UID, {**_counter(1), "x.IHolder": Holder()})
    assert raised.value.kind.endswith("Holder")
    assert "Holder" in str(raised.value)


@pytest.mark.parametrize("key", [KEY, b"k" * 64, b"long key " * 20])
def test_the_tag_is_hmac_sha256_of_the_uid_and_the_payload(key: bytes) -> None:
    import hmac

    record = Sealer(key).seal(UID, _counter(3))
    payload = record[TAG_BYTES:]
    expected = hmac.digest(key, b"64:" + UID + b":" + payload, "sha256")
    assert record[:TAG_BYTES] == expected


def test_a_record_sealed_or_opened_here_is_not_checked_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sealer, other = Sealer(KEY), Sealer(KEY)
    record = sealer.seal(UID, _counter(4))
    tags = _tags_computed(monkeypatch, sealer, other)
    opened = sealer.open(UID, record)
    assert opened is not None and opened["routes.sessions.ICounter"].value == 4
    assert tags == []
    # Another process checks it once, then knows it too.
    assert other.open(UID, record) is not None
    assert other.open(UID, record) is not None
    assert tags == [UID]
    # The same bytes under another uid are checked, and refused.
    assert sealer.open(b"b" * 64, record) is None
    assert tags == [UID, b"b" * 64]


def test_a_sealer_remembers_a_bounded_number_of_records() -> None:
    sealer = Sealer(KEY)
    for number in range(VOUCHED_RECORDS + 10):
        sealer.seal(b"%064d" % number, _counter(number))
    assert 0 < len(sealer._vouched) <= VOUCHED_RECORDS


def test_the_record_last_opened_stays_known_while_the_next_is_sealed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Overlapping requests of one session: each opens the record written
    # before them while one of them seals the next.
    writer, reader = Sealer(KEY), Sealer(KEY)
    first = writer.seal(UID, _counter(1))
    assert reader.open(UID, first) is not None
    second = reader.seal(UID, _counter(2))
    tags = _tags_computed(monkeypatch, reader)
    assert reader.open(UID, first) is not None
    assert reader.open(UID, second) is not None
    assert tags == []
