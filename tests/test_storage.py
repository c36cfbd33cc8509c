"""The contract of the `Storage` protocol, on bytes only: what any backend must do.

No shelf and no pickle here: keys and records are plain bytes, and every test
uses only the protocol's methods (and those of the transactions it yields),
so another backend runs the same tests by adding itself to `BACKENDS` and to
`_open`. Guarantees checked:

- get/contains/put/delete/put_new on single keys, any bytes-like record;
- count and batches never show the metadata record, whatever the bounds
  (lo, hi, after, limit, reverse) around it, with keys just below and above
  it; batches come in byte order, and bounds select a key prefix;
- put_many writes chunks whose records are made by a function, clear keeps
  the metadata (settings survive a reopen);
- write transactions commit on normal exit and roll back on an exception,
  nest as savepoints, see their own writes, and single operations of the
  same thread join them while other threads do not see them;
- a snapshot (`read()`) sees a frozen view while other writes commit;
- a transaction writing more than the store's initial size holds all of it;
- a closed store raises `ClosedError`, a read-only one `ReadOnlyError`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from objstore import ClosedError, ReadOnlyError
from objstore._storage import MAX_KEY_SIZE, Chunk, Options, Storage, Value, open_store
from objstore._storage._common import META_KEY

BACKENDS = ["lmdb"]
SETTINGS = {"contract": "bytes", "version": 3}
SMALL = 64 * 1024  # bytes: a store this size must grow to hold what the growth tests write
DEADLINE = 30.0

# Keys around the metadata record, which sorts between b"\x00\xff" and b"\x01".
AROUND_META = [
    b"\x00",
    b"\x00\x00",
    b"\x00\xff",
    b"\x00\xffobjstor",
    b"\x00\xffobjstord",
    b"\x00\xffobjstore\x00",
    b"\x00\xffobjstorf",
    b"\x00\xff\xff",
    b"\x01",
    b"a",
    b"\xff",
]


def _check(path: str, settings: dict[str, Any]) -> None:
    if settings.get("contract") != "bytes":
        raise AssertionError(f"unexpected settings {settings}")


def _open(backend: str, path: Path, flag: str, map_size: int | None) -> Storage:
    if backend == "lmdb":
        options = Options() if map_size is None else Options(map_size=map_size)
        return open_store(str(path), flag, options, dict(SETTINGS), _check)
    raise AssertionError(f"unknown backend {backend!r}")  # pragma: no cover


Opener = Callable[..., Storage]


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def open_storage(backend: str, path: Path) -> Iterator[Opener]:
    """Open the test's store: ``open_storage(flag="c", map_size=None)``; all closed after the test."""
    opened: list[Storage] = []

    def opener(flag: str = "c", map_size: int | None = None) -> Storage:
        storage = _open(backend, path, flag, map_size)
        opened.append(storage)
        return storage

    yield opener
    for storage in reversed(opened):
        storage.close()


@pytest.fixture
def storage(open_storage: Opener) -> Storage:
    """An open, empty, writable store."""
    return open_storage()


def put_all(storage: Storage, keys: Sequence[bytes]) -> None:
    for key in keys:
        storage.put(key, b"v" + key)


def walk(
    storage: Any,
    lo: bytes | None = None,
    hi: bytes | None = None,
    reverse: bool = False,
    values: bool = False,
    limit: int = 1024,
) -> list[Any]:
    """Everything `batch` gives for the bounds, batch after batch, each continuing after the last."""
    out: list[Any] = []
    after = None
    while True:
        batch = storage.batch(lo, hi, reverse, values, after, limit)
        assert len(batch) <= limit
        if not batch:
            return out
        if values:
            out.extend((bytes(k), bytes(v)) for k, v in batch)
        else:
            out.extend(map(bytes, batch))
        after = batch[-1][0] if values else batch[-1]


def expected(keys: Sequence[bytes], lo: bytes | None, hi: bytes | None, reverse: bool) -> list[bytes]:
    selected = sorted(k for k in keys if (lo is None or k >= lo) and (hi is None or k < hi))
    return selected[::-1] if reverse else selected


# ---------------------------------------------------------------- single keys


def test_empty_store(storage: Storage) -> None:
    assert storage.count() == 0
    assert storage.batch(None, None, False, False, None) == []
    assert storage.batch(None, None, True, True, None) == []
    assert storage.get(b"missing") is None
    assert not storage.contains(b"missing")
    assert not storage.readonly
    assert storage.settings["contract"] == "bytes" and storage.settings["version"] == 3


def test_put_get_contains_delete(storage: Storage) -> None:
    storage.put(b"k", b"one")
    assert storage.get(b"k") == b"one"
    assert storage.contains(b"k")
    storage.put(b"k", b"two")  # overwrites
    assert storage.get(b"k") == b"two"
    assert storage.count() == 1
    assert storage.delete(b"k") is True
    assert storage.delete(b"k") is False
    assert storage.get(b"k") is None and not storage.contains(b"k")
    assert storage.count() == 0


@pytest.mark.parametrize("value", [b"", b"\x00" * 3, bytes(range(256)) * 64, memoryview(b"view")])
def test_records_are_stored_byte_for_byte(storage: Storage, value: Value) -> None:
    storage.put(b"k", value)
    assert storage.get(b"k") == bytes(value)
    assert storage.batch(None, None, False, True, None) == [(b"k", bytes(value))]


def test_longest_key(storage: Storage) -> None:
    key = b"k" * MAX_KEY_SIZE
    storage.put(key, b"long")
    assert storage.get(key) == b"long"
    assert walk(storage) == [key]


def test_put_new(storage: Storage) -> None:
    assert storage.put_new(b"k", b"first") is None
    assert storage.put_new(b"k", b"second") == b"first"
    assert storage.get(b"k") == b"first"
    assert storage.count() == 1


def test_sync_and_info(storage: Storage) -> None:
    storage.put(b"k", b"v")
    storage.sync()
    info = storage.info()
    assert isinstance(info, dict) and info["entries"] == 1


# ------------------------------------------------- order, bounds and metadata


def test_batches_in_byte_order(storage: Storage) -> None:
    keys = [bytes([b]) for b in range(1, 256)] + [b"a\x00", b"a\xff", b"ab", b"b" * 300]
    put_all(storage, keys[::-1])
    assert walk(storage) == sorted(keys)
    assert walk(storage, reverse=True) == sorted(keys, reverse=True)
    assert walk(storage, values=True, limit=7) == [(k, b"v" + k) for k in sorted(keys)]


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("limit", [1, 2, 3, 1024])
def test_metadata_never_shows_whatever_the_bounds(storage: Storage, reverse: bool, limit: int) -> None:
    put_all(storage, AROUND_META)
    assert storage.count() == len(AROUND_META)
    bounds: list[bytes | None] = [None, META_KEY, *AROUND_META]
    for lo in bounds:
        for hi in bounds:
            want = expected(AROUND_META, lo, hi, reverse)
            assert walk(storage, lo, hi, reverse, limit=limit) == want, (lo, hi)
            pairs = walk(storage, lo, hi, reverse, values=True, limit=limit)
            assert pairs == [(k, b"v" + k) for k in want], (lo, hi)


@pytest.mark.parametrize("reverse", [False, True])
def test_metadata_never_shows_after_a_key_next_to_it(storage: Storage, reverse: bool) -> None:
    put_all(storage, AROUND_META)
    for after in [META_KEY, *AROUND_META]:
        for limit in (1, 2, 1024):
            batch = storage.batch(None, None, reverse, False, after, limit)
            ordered = expected(AROUND_META, None, None, reverse)
            rest = [k for k in ordered if (k < after if reverse else k > after)]
            assert batch == rest[:limit], (after, limit)


def test_metadata_alone_is_an_empty_store(storage: Storage) -> None:
    for reverse in (False, True):
        for after in (None, b"\x00", META_KEY, b"\x01"):
            assert storage.batch(None, None, reverse, False, after, 1) == []
            assert storage.batch(b"\x00", b"\x01", reverse, True, after, 1) == []


@pytest.mark.parametrize(
    ("lo", "hi", "want"),
    [
        (b"ab", b"ac", [b"ab", b"ab\x00", b"abc", b"ab\xff"]),
        (b"a", b"b", [b"a", b"ab", b"ab\x00", b"abc", b"ab\xff", b"a\xff", b"a\xff\xff"]),
        (b"a\xff", b"b", [b"a\xff", b"a\xff\xff"]),
        (b"\xff", None, [b"\xff", b"\xff\x00"]),
        (None, b"a", [b"\x00"]),
        (b"abd", b"abz", []),
    ],
)
def test_prefix_bounds(storage: Storage, lo: bytes | None, hi: bytes | None, want: list[bytes]) -> None:
    keys = [b"\x00", b"a", b"ab", b"ab\x00", b"abc", b"ab\xff", b"a\xff", b"a\xff\xff", b"b"]
    keys += [b"\xff", b"\xff\x00"]
    put_all(storage, keys)
    assert walk(storage, lo, hi, limit=2) == want
    assert walk(storage, lo, hi, reverse=True, limit=2) == want[::-1]


# ------------------------------------------------------------ bulk and clear


def record(key: bytes) -> bytes:
    return b"r" + key


def chunks_of(
    keys: Sequence[bytes], size: int, calls: list[int], make_record: Callable[[bytes], bytes] = record
) -> Iterator[Chunk]:
    """`keys` in chunks of `size`; `calls` counts the calls of each chunk's function making its records."""
    for n, start in enumerate(range(0, len(keys), size)):
        part = list(keys[start : start + size])
        calls.append(0)

        def make(part: list[bytes] = part, n: int = n) -> list[Value]:
            calls[n] += 1
            return [make_record(key) for key in part]

        yield part, make


def test_put_many(storage: Storage) -> None:
    storage.put(b"k0005", b"old")
    keys = [b"k%04d" % i for i in range(2500)]
    calls: list[int] = []
    storage.put_many(chunks_of(keys, 1000, calls))
    assert calls and all(n >= 1 for n in calls)
    assert storage.count() == len(keys)
    assert storage.get(b"k0005") == b"rk0005"
    assert walk(storage, values=True) == [(k, b"r" + k) for k in keys]


def test_put_many_of_nothing(storage: Storage) -> None:
    storage.put_many([])
    storage.put_many([([], list)])
    assert storage.count() == 0


def test_clear_keeps_the_metadata(storage: Storage, open_storage: Opener) -> None:
    put_all(storage, AROUND_META)
    storage.clear()
    assert storage.count() == 0
    assert walk(storage) == [] and walk(storage, reverse=True) == []
    storage.put(b"after", b"clear")
    assert walk(storage) == [b"after"]
    storage.close()
    reopened = open_storage()
    assert reopened.settings["contract"] == "bytes"
    assert walk(reopened, values=True) == [(b"after", b"clear")]


def test_data_survives_reopening(storage: Storage, open_storage: Opener) -> None:
    put_all(storage, [b"a", b"b"])
    storage.close()
    reader = open_storage("r")
    assert reader.readonly
    assert walk(reader, values=True) == [(b"a", b"va"), (b"b", b"vb")]


# ------------------------------------------------------ write transactions


def test_transaction_commits_on_normal_exit(storage: Storage) -> None:
    storage.put(b"gone", b"x")
    with storage.write() as txn:
        txn.put(b"a", b"1")
        assert txn.put_new(b"a", b"2") == b"1"
        assert txn.delete(b"gone")
        txn.put_many([([b"b", b"c"], lambda: [b"2", b"3"])])
        # It reads its own writes.
        assert txn.get(b"a") == b"1" and txn.contains(b"b") and not txn.contains(b"gone")
        assert txn.count() == 3
        assert walk(txn, values=True) == [(b"a", b"1"), (b"b", b"2"), (b"c", b"3")]
    assert walk(storage, values=True) == [(b"a", b"1"), (b"b", b"2"), (b"c", b"3")]
    assert not storage.in_transaction()


class Boom(Exception):
    pass


def test_transaction_rolls_back_on_an_exception(storage: Storage) -> None:
    storage.put(b"kept", b"x")
    with pytest.raises(Boom):
        with storage.write() as txn:
            txn.put(b"a", b"1")
            txn.delete(b"kept")
            txn.clear()
            txn.put_many([([b"b"], lambda: [b"2"])])
            raise Boom
    assert walk(storage, values=True) == [(b"kept", b"x")]
    assert not storage.in_transaction()


def test_clear_inside_a_transaction(storage: Storage) -> None:
    put_all(storage, AROUND_META)
    with storage.write() as txn:
        txn.clear()
        assert txn.count() == 0 and walk(txn) == [] and walk(txn, reverse=True) == []
        txn.put(b"\x00\xff", b"new")
        assert walk(txn) == [b"\x00\xff"]
    assert walk(storage) == [b"\x00\xff"] and storage.count() == 1


def test_savepoints(storage: Storage) -> None:
    with storage.write() as outer:
        outer.put(b"outer", b"1")
        with outer.write() as inner:
            inner.put(b"inner", b"2")
            assert inner.get(b"outer") == b"1"
        with pytest.raises(Boom):
            with outer.write() as failed:
                failed.put(b"failed", b"3")
                failed.delete(b"outer")
                raise Boom
        assert outer.get(b"outer") == b"1" and outer.get(b"failed") is None
        # A write() on the store inside a transaction is a savepoint too.
        with pytest.raises(Boom):
            with storage.write() as nested:
                nested.put(b"nested", b"4")
                raise Boom
        with storage.write() as nested:
            nested.put(b"joined", b"5")
        assert walk(outer) == [b"inner", b"joined", b"outer"]
    assert walk(storage, values=True) == [(b"inner", b"2"), (b"joined", b"5"), (b"outer", b"1")]


def test_rolling_back_the_outer_transaction_undoes_committed_savepoints(storage: Storage) -> None:
    with pytest.raises(Boom):
        with storage.write() as outer:
            with outer.write() as inner:
                inner.put(b"inner", b"2")
            raise Boom
    assert storage.count() == 0


def test_operations_of_the_same_thread_join_the_transaction(storage: Storage) -> None:
    storage.put(b"old", b"0")
    with pytest.raises(Boom):
        with storage.write():
            assert storage.in_transaction()
            storage.put(b"a", b"1")
            assert storage.put_new(b"a", b"x") == b"1"
            assert storage.delete(b"old")
            storage.put_many([([b"b"], lambda: [b"2"])])
            assert storage.get(b"a") == b"1" and storage.contains(b"b")
            assert storage.count() == 2 and walk(storage) == [b"a", b"b"]
            raise Boom  # everything above was part of the transaction
    assert not storage.in_transaction()
    assert walk(storage, values=True) == [(b"old", b"0")]


def run_in_thread(fn: Callable[[], Any]) -> Any:
    result: list[Any] = []
    errors: list[BaseException] = []

    def target() -> None:
        try:
            result.append(fn())
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    thread = threading.Thread(target=target)
    thread.start()
    thread.join(DEADLINE)
    assert not thread.is_alive(), "the other thread did not finish"
    if errors:
        raise errors[0]
    return result[0]


def test_other_threads_do_not_see_an_open_transaction(storage: Storage) -> None:
    storage.put(b"old", b"0")
    with storage.write() as txn:
        txn.put(b"new", b"1")
        txn.delete(b"old")
        seen = run_in_thread(lambda: (storage.in_transaction(), walk(storage), storage.get(b"new")))
        assert seen == (False, [b"old"], None)
    assert run_in_thread(lambda: walk(storage)) == [b"new"]


# ------------------------------------------------------------------ snapshots


def test_snapshot_sees_a_frozen_view(storage: Storage) -> None:
    put_all(storage, [b"a", b"b"])
    snapshot = storage.read()
    try:
        storage.put(b"a", b"changed")
        storage.delete(b"b")
        storage.put(b"c", b"new")
        with storage.write() as txn:
            txn.put(b"d", b"in a transaction")
        assert snapshot.get(b"a") == b"va" and snapshot.contains(b"b") and not snapshot.contains(b"c")
        assert snapshot.count() == 2
        assert walk(snapshot, values=True) == [(b"a", b"va"), (b"b", b"vb")]
        assert walk(snapshot, reverse=True, limit=1) == [b"b", b"a"]
        assert walk(storage) == [b"a", b"c", b"d"]
    finally:
        snapshot.end()
    with pytest.raises(ClosedError):
        snapshot.get(b"a")


def test_snapshot_of_another_thread_ignores_a_transaction(storage: Storage) -> None:
    storage.put(b"a", b"1")
    with storage.write() as txn:
        txn.put(b"a", b"2")

        def read_snapshot() -> list[Any]:
            snapshot = storage.read()
            try:
                return walk(snapshot, values=True)
            finally:
                snapshot.end()

        assert run_in_thread(read_snapshot) == [(b"a", b"1")]


def test_snapshot_hides_the_metadata(storage: Storage) -> None:
    put_all(storage, AROUND_META)
    snapshot = storage.read()
    try:
        assert snapshot.count() == len(AROUND_META)
        assert walk(snapshot, limit=1) == sorted(AROUND_META)
        assert walk(snapshot, b"\x00\xff", b"\x01", reverse=True, limit=1) == expected(
            AROUND_META, b"\x00\xff", b"\x01", True
        )
    finally:
        snapshot.end()


# --------------------------------------------------------- growth and replay


def big(key: bytes) -> bytes:
    return key * (2000 // len(key))


def test_transaction_larger_than_the_store(open_storage: Opener) -> None:
    storage = open_storage(map_size=SMALL)
    storage.put(b"before", b"x")
    keys = [b"t%04d" % i for i in range(300)]  # 600 KB, ten times the initial size
    with storage.write() as txn:
        for i, key in enumerate(keys):
            txn.put(key, big(key))
            if i % 50 == 0:
                txn.delete(b"before")
                with txn.write() as savepoint:
                    savepoint.put(b"s%04d" % i, big(key))
        assert txn.count() == len(keys) + 6
    assert storage.count() == len(keys) + 6
    assert storage.get(b"before") is None
    for key in keys:
        assert storage.get(key) == big(key)
    assert walk(storage, b"s", b"t") == [b"s%04d" % i for i in range(0, 300, 50)]


def test_put_many_larger_than_the_store(open_storage: Opener, backend: str) -> None:
    storage = open_storage(map_size=SMALL)
    keys = [b"m%04d" % i for i in range(600)]
    calls: list[int] = []
    storage.put_many(chunks_of(keys, 50, calls, big))
    assert storage.count() == len(keys)
    assert walk(storage, values=True, limit=100) == [(k, big(k)) for k in keys]
    if backend == "lmdb":
        assert sum(calls) > len(calls), "no chunk was made again: the map never grew"


def test_clear_then_growth_in_one_transaction(open_storage: Opener) -> None:
    storage = open_storage(map_size=SMALL)
    put_all(storage, [b"x", b"y"])
    with storage.write() as txn:
        txn.clear()
        for i in range(200):
            txn.put(b"g%04d" % i, big(b"g%04d" % i))
    assert storage.count() == 200
    assert walk(storage, None, b"h") == [b"g%04d" % i for i in range(200)]
    assert storage.get(b"x") is None


# --------------------------------------------------------------- closed state


def test_closed_store_raises_closed_error(storage: Storage) -> None:
    storage.put(b"k", b"v")
    storage.close()
    storage.close()  # idempotent
    calls: list[Callable[[], Any]] = [
        lambda: storage.get(b"k"),
        lambda: storage.contains(b"k"),
        storage.count,
        lambda: storage.batch(None, None, False, False, None),
        lambda: storage.put(b"k", b"w"),
        lambda: storage.delete(b"k"),
        lambda: storage.put_new(b"n", b"w"),
        lambda: storage.put_many([([b"n"], lambda: [b"w"])]),
        storage.clear,
        storage.read,
        lambda: storage.write().__enter__(),
    ]
    for call in calls:
        with pytest.raises(ClosedError):
            call()


def test_snapshot_of_a_closed_store_raises_closed_error(storage: Storage) -> None:
    storage.put(b"k", b"v")
    snapshot = storage.read()
    try:
        storage.close()
        with pytest.raises(ClosedError):
            snapshot.get(b"k")
        with pytest.raises(ClosedError):
            snapshot.batch(None, None, False, False, None)
    finally:
        snapshot.end()


def test_read_only_store_refuses_writes(storage: Storage, open_storage: Opener) -> None:
    storage.put(b"k", b"v")
    storage.close()
    reader = open_storage("r")
    writes: list[Callable[[], Any]] = [
        lambda: reader.put(b"k", b"w"),
        lambda: reader.delete(b"k"),
        lambda: reader.put_new(b"n", b"w"),
        lambda: reader.put_many([([b"n"], lambda: [b"w"])]),
        reader.clear,
        lambda: reader.write().__enter__(),
    ]
    for write in writes:
        with pytest.raises(ReadOnlyError):
            write()
    assert reader.get(b"k") == b"v"
