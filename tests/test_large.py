"""Large values: out-of-band pickle buffers, one-copy reads, zero-copy snapshots (docs/large-values.md).

Guarantees checked:

- arrays, bytes, bytearray and memoryview values round-trip; outside a
  zero-copy snapshot every read is an independent copy, writeable where the
  original was; their large buffers are stored out of band (section tag 2),
  64-byte aligned in the map; small buffers and protocol 4 stores stay in band;
- inside ``snapshot(zero_copy=True)`` large buffers are read-only views into
  the map (no copy), still valid after the snapshot and even the shelf are
  closed, and while another process grows the map; growth in this process
  while one lives waits, then raises `StoreError`, and never unmaps it;
- a damaged byte inside an out-of-band buffer raises `CorruptError` and is
  reported by ``verify()``; records of the earlier formats still read.
"""

from __future__ import annotations

import gc
import multiprocessing
import os
import pickle
import zlib
from pathlib import Path
from typing import Any

import lmdb
import pytest
from _harness import fork_call, run_processes
from _stored import section_tags
from _tasks import TINY_MAP, grow_writer

import objstore
from objstore._storage._environment import REGISTRY

np = pytest.importorskip("numpy")
SPAWN = multiprocessing.get_context("spawn")
MIB = 1 << 20


def array(seed: int = 1, n: int = MIB // 8) -> Any:
    return np.arange(n, dtype=np.float64) * seed + 0.5


def raw_record(path: Path, key: str) -> bytes:
    env = lmdb.open(str(path), readonly=True, lock=False, max_dbs=4)
    try:
        with env.begin() as txn:
            record = txn.get(key.encode())
            assert record is not None
            return bytes(record)
    finally:
        env.close()


# ------------------------------------------------------------------ copies


def test_arrays_round_trip_as_independent_writeable_copies(shelf: objstore.Shelf) -> None:
    a = array()
    shelf["a"] = a
    first, second = shelf["a"], shelf.get("a")
    assert first.dtype == a.dtype and first.shape == a.shape and (first == a).all()
    assert first.flags.writeable and second.flags.writeable
    first[0] = -1.0
    assert second[0] == a[0] and shelf["a"][0] == a[0]
    assert not np.shares_memory(first, second)


def test_other_shapes_and_containers(shelf: objstore.Shelf) -> None:
    fortran = np.asfortranarray(array().reshape(256, 512))
    readonly = array(3)
    readonly.flags.writeable = False
    shelf["f"] = fortran
    shelf["d"] = {"x": array(2), "y": [array(4)[::2]], "n": 1}
    shelf["r"] = readonly
    got = shelf["f"]
    assert got.flags.f_contiguous and (got == fortran).all()
    d = shelf["d"]
    assert (d["x"] == array(2)).all() and (d["y"][0] == array(4)[::2]).all() and d["n"] == 1
    assert not shelf["r"].flags.writeable and (shelf["r"] == readonly).all()
    assert shelf.verify() == []


@pytest.mark.parametrize(
    "value",
    [b"\x07" * MIB, bytearray(b"\x08" * MIB), memoryview(b"\x09" * MIB), memoryview(bytearray(MIB))],
    ids=["bytes", "bytearray", "memoryview", "writable-memoryview"],
)
def test_bytes_like_values(shelf: objstore.Shelf, path: Path, value: Any) -> None:
    shelf["v"] = value
    got = shelf["v"]
    assert type(got) is type(value) and bytes(got) == bytes(value)
    if isinstance(value, memoryview):
        assert got.readonly == value.readonly
    shelf.close()
    assert 2 in section_tags(raw_record(path, "v"))


def test_large_buffers_go_out_of_band_small_ones_stay(shelf: objstore.Shelf, path: Path) -> None:
    shelf["big"] = array()
    shelf["small"] = np.arange(100.0)
    shelf["list"] = list(range(50_000))
    shelf.close()
    assert section_tags(raw_record(path, "big")) == [2]
    assert raw_record(path, "small")[-5] == 1
    assert raw_record(path, "list")[-5] == 1


def test_protocol_4_keeps_buffers_in_band(path: Path) -> None:
    with objstore.open(path, protocol=4) as db:
        db["a"] = array()
        assert (db["a"] == array()).all() and db["a"].flags.writeable
    assert raw_record(path, "a")[-5] == 1


def test_long_keys_and_custom_unpickler(path: Path) -> None:
    class Strict(objstore.Unpickler):
        def find_class(self, module: str, name: str) -> Any:
            assert module.startswith("numpy"), (module, name)
            return super().find_class(module, name)

    key = "k" * 600
    with objstore.open(path) as db:
        db[key] = array(5)
        db.update({"u": array(6)})
        assert (db[key] == array(5)).all()
        assert dict(db.items()).keys() == {key, "u"}
        assert db.verify() == []
    with objstore.open(path, unpickler=Strict) as db:
        assert (db["u"] == array(6)).all() and (db[key] == array(5)).all()


def test_previous_formats_still_read(path: Path) -> None:
    with objstore.open(path) as db:
        db["seed"] = 1
    # An in-band kind 1 record of a large array, as earlier versions wrote it (docs/format.md).
    body = pickle.dumps(array(7), 5) + b"\x01"
    env = lmdb.open(str(path), max_dbs=4)
    with env.begin(write=True) as txn:
        txn.put(b"old", body + zlib.crc32(body).to_bytes(4, "little"))
    env.close()
    with objstore.open(path) as db:
        assert (db["old"] == array(7)).all() and db["old"].flags.writeable
        assert db.verify() == []


# --------------------------------------------------------------- damage


def test_damage_in_an_out_of_band_buffer_is_detected(path: Path) -> None:
    value = array(9)
    with objstore.open(path) as db:
        db["big"] = value
        db["small"] = 1
    data = path / "data.mdb"
    content = bytearray(data.read_bytes())
    at = content.find(value.tobytes())
    assert at >= 0
    content[at + MIB // 2] ^= 0x5A
    data.write_bytes(bytes(content))
    with objstore.open(path, "r") as db:
        with pytest.raises(objstore.CorruptError) as caught:
            db["big"]
        assert caught.value.key == "big"
        with pytest.raises(objstore.CorruptError):
            dict(db.items())
        assert db["small"] == 1
        assert db.verify() == ["big"]


def test_damage_outside_the_buffers_is_detected(path: Path) -> None:
    value = array(10)
    with objstore.open(path) as db:
        db["big"] = value
    record = raw_record(path, "big")
    data = path / "data.mdb"
    content = bytearray(data.read_bytes())
    at = content.find(record[-40:])
    assert at >= 0
    content[at + 8] ^= 0x01  # in the table of buffers
    data.write_bytes(bytes(content))
    with objstore.open(path, "r") as db:
        with pytest.raises(objstore.CorruptError):
            db["big"]
        with db.snapshot(zero_copy=True) as snap, pytest.raises(objstore.CorruptError):
            snap["big"]


# ------------------------------------------------------------ zero copy


def test_zero_copy_views_are_read_only_aligned_and_shared(shelf: objstore.Shelf) -> None:
    shelf["a"] = array()
    shelf["b"] = bytearray(b"\x01" * MIB)
    shelf["s"] = {"small": 1}
    with shelf.snapshot(zero_copy=True) as snap:
        first, second = snap["a"], snap["a"]
        assert (first == array()).all() and not first.flags.writeable
        assert first.ctypes.data == second.ctypes.data  # both view the map: nothing was copied
        assert first.ctypes.data % 64 == 0
        with pytest.raises(ValueError):
            first[0] = 1.0
        view = snap["b"]
        assert isinstance(view, memoryview) and view.readonly and bytes(view[:2]) == b"\x01\x01"
        assert snap["s"] == {"small": 1}
        items = dict(snap.items())
        assert not items["a"].flags.writeable and (items["a"] == array()).all()
    copy = shelf["a"]
    assert copy.flags.writeable and not np.shares_memory(copy, first)


def test_view_outlives_its_snapshot_and_its_shelf(path: Path) -> None:
    with objstore.open(path) as db:
        db["a"] = array(2)
        with db.snapshot(zero_copy=True) as snap:
            kept = snap["a"]
        db["a"] = array(3)  # the pages the view shows must not be reused
        db["filler"] = array(4)
        assert (kept == array(2)).all()
        with pytest.raises(objstore.ClosedError):
            snap["a"]
    assert (kept == array(2)).all()  # the shelf is closed; its map stays until the view goes
    assert os.path.realpath(path) in REGISTRY.envs
    del kept
    gc.collect()
    assert os.path.realpath(path) not in REGISTRY.envs  # closed with the last view
    with objstore.open(path) as db:  # and then the store closes and reopens as usual
        assert (db["a"] == array(3)).all()


def test_view_survives_another_process_growing_the_map(path: Path) -> None:
    with objstore.open(path, map_size=TINY_MAP) as db:
        db["a"] = array(5)
        with db.snapshot(zero_copy=True) as snap:
            kept = snap["a"]
        before = db.info()["map_size"]
        grown = run_processes(SPAWN, [(grow_writer, (str(path), 300))], together=False)[0]
        assert grown > before
        assert (kept == array(5)).all()
        del kept
        gc.collect()
        assert (db["a"] == array(5)).all() and len(db) == 301


def test_growth_here_waits_for_views_then_raises(path: Path) -> None:
    with objstore.open(path, map_size=TINY_MAP, timeout=0.5) as db:
        db["a"] = array(6)
        with db.snapshot(zero_copy=True) as snap:
            kept = snap["a"]
        with pytest.raises(objstore.StoreError, match="zero-copy"):
            for i in range(64):
                db[f"more{i}"] = array(i)
        assert (kept == array(6)).all()
        del kept
        gc.collect()
        db["after"] = array(7)
        assert (db["after"] == array(7)).all()


def test_one_copy_reads_while_another_thread_grows_the_map(path: Path) -> None:
    import threading
    import time

    errors: list[BaseException] = []
    done = threading.Event()
    with objstore.open(path, map_size=TINY_MAP) as db:
        db["a"] = array(8)
        before = db.info()["map_size"]

        def read() -> None:
            try:
                while not done.is_set():
                    assert (db["a"] == array(8)).all()
            except BaseException as exc:  # reported below
                errors.append(exc)

        reader = threading.Thread(target=read)
        reader.start()
        try:
            deadline = time.monotonic() + 20
            i = 0
            while db.info()["map_size"] < before * 16 and time.monotonic() < deadline:
                db[f"w{i}"] = array(i, n=MIB // 64)
                i += 1
        finally:
            done.set()
            reader.join(20)
        assert not reader.is_alive() and errors == []
        assert db.info()["map_size"] >= before * 16


def test_a_forked_child_drops_an_inherited_view_without_harm(path: Path) -> None:
    with objstore.open(path) as db:
        db["a"] = array(11)
        with db.snapshot(zero_copy=True) as snap:
            kept = snap["a"]

        def child(view: Any = kept) -> float:
            total = float(view.sum())  # the inherited mapping still shows the snapshot
            with objstore.open(path) as mine:
                mine["a"] = array(12)
            return total

        assert fork_call(child) == float(array(11).sum())
        for i in range(4):  # writes that would reuse the snapshot's pages if the child had freed them
            db["a"] = array(13 + i)
        assert (kept == array(11)).all()
        del kept, child
        gc.collect()
        assert (db["a"] == array(16)).all()


# ------------------------------------- snapshots, transactions, iteration


def reads(db: objstore.Shelf) -> dict[str, Any]:
    """Every way to read the large value "a" beside "b": by key and by iteration, in each mapping."""
    found: dict[str, Any] = {}
    with db.snapshot() as snap:
        found["snapshot"] = snap["a"]
        found["snapshot.get"] = snap.get("a")
        found["snapshot.items"] = dict(snap.items())["a"]
        found["snapshot.values"] = list(snap.values())[0]
        found["snapshot.iteritems"] = dict(snap.iteritems(reverse=True))["a"]
        found["snapshot.itervalues"] = next(snap.itervalues(prefix="a"))
    with db.transaction() as txn:
        found["transaction"] = txn["a"]
        found["transaction.items"] = dict(txn.items())["a"]
        found["transaction.itervalues"] = next(txn.itervalues(start="a", stop="b"))
    found["items"] = dict(db.items())["a"]
    found["values"] = list(db.values())[0]
    found["iteritems"] = dict(db.iteritems(reverse=True))["a"]
    found["itervalues"] = next(db.itervalues(prefix="a"))
    return found


@pytest.mark.parametrize("warm", [False, True], ids=["first-read", "after-a-read"])
def test_every_read_is_an_independent_writeable_copy(path: Path, warm: bool) -> None:
    with objstore.open(path) as db:
        db["a"] = array(14)
        db["b"] = {"small": 1}
        db["k" * 600] = array(15)  # a long key: its record holds the key, and is copied whole
        if warm:  # the shelf has met a large record: it reads in place from now on
            assert (db["a"] == array(14)).all()
        found = reads(db)
        for way, value in found.items():
            assert (value == array(14)).all() and value.flags.writeable, way
            value[0] = -1.0
        assert all(not np.shares_memory(x, y) for x in found.values() for y in found.values() if x is not y)
        assert (db["a"] == array(14)).all()
        with db.snapshot() as snap:
            assert (snap["a"] == array(14)).all() and snap["b"] == {"small": 1}
            assert (dict(snap.items())["k" * 600] == array(15)).all()
        assert db.verify() == []


def peak_ratio(read: Any, size: int) -> float:
    """The peak of memory traced while `read()` runs, as a multiple of `size`; the value is checked."""
    import tracemalloc

    gc.collect()
    tracemalloc.start()
    try:
        value = read()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert value.nbytes == size and value[0] == 0.5 and value[-1] == size // 8 - 0.5
    return peak / size


def test_large_reads_copy_once(path: Path) -> None:
    size = 64 * MIB
    with objstore.open(path) as db:
        db["a"] = array(1, n=size // 8)
        db["b"] = 1
        db["a"]  # the shelf reads in place from its first large record on

        def in_snapshot() -> Any:
            with db.snapshot() as snap:
                return snap["a"]

        def iterated_in_snapshot() -> Any:
            with db.snapshot() as snap:
                return next(iter(snap.values()))

        def iterated() -> Any:
            return dict(db.items())["a"]

        def in_transaction() -> Any:
            with db.transaction() as txn:
                return txn["a"]

        def iterated_in_transaction() -> Any:
            with db.transaction() as txn:
                return next(iter(txn.values()))

        # NumPy and Python report their allocations to tracemalloc: one copy
        # is 1x the array, a copy of the record first would make it 2x.
        for read in (in_snapshot, iterated_in_snapshot, iterated, in_transaction, iterated_in_transaction):
            assert peak_ratio(read, size) < 1.5, read.__name__


def test_reads_in_snapshots_and_iteration_while_another_thread_grows_the_map(path: Path) -> None:
    import threading
    import time

    errors: list[BaseException] = []
    done = threading.Event()
    rounds = [0]
    with objstore.open(path, map_size=TINY_MAP, timeout=0.2) as db:
        db["a"] = array(8)
        assert (db["a"] == array(8)).all()  # reads in place from now on
        before = db.info()["map_size"]

        def read() -> None:
            try:
                while not done.is_set():
                    try:
                        with db.snapshot() as snap:
                            assert (snap["a"] == array(8)).all()
                            for key, value in snap.items():
                                assert (
                                    value == (array(8) if key == "a" else array(int(key[1:]), n=MIB // 64))
                                ).all()
                    except objstore.TransactionError:
                        pass  # the snapshot ended as the map grew: a new one is opened
                    for key, value in db.items():
                        assert (value == (array(8) if key == "a" else array(int(key[1:]), n=MIB // 64))).all()
                    rounds[0] += 1
            except BaseException as exc:  # reported below
                errors.append(exc)

        reader = threading.Thread(target=read)
        reader.start()
        try:
            deadline = time.monotonic() + 30
            i = 0
            while db.info()["map_size"] < before * 16 and time.monotonic() < deadline:
                db[f"w{i}"] = array(i, n=MIB // 64)
                i += 1
        finally:
            done.set()
            reader.join(30)
        assert not reader.is_alive() and errors == []
        assert db.info()["map_size"] >= before * 16 and rounds[0] > 0


class Rewriter:
    """Holds an array; unpickling it overwrites and deletes keys of `Rewriter.shelf` (in its transaction)."""

    shelf: Any = None

    def __init__(self, data: Any) -> None:
        self.data = data

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        for i in range(8):  # frees and reuses the pages of records written in this transaction
            Rewriter.shelf["r"] = array(20 + i)
            Rewriter.shelf[f"x{i}"] = array(30 + i, n=MIB // 16)
            del Rewriter.shelf[f"x{i}"]


def test_unpickling_may_write_in_the_transaction_it_reads_in(shelf: objstore.Shelf) -> None:
    shelf["warm"] = array()
    assert (shelf["warm"] == array()).all()  # reads in place from now on
    try:
        with shelf.transaction() as txn:
            Rewriter.shelf = txn
            txn["r"] = Rewriter(array(17))  # in pages this transaction wrote
            got = txn["r"]
            assert (got.data == array(17)).all() and (txn["r"] == array(27)).all()
            txn["r"] = Rewriter(array(18))
            got = dict(txn.items())["r"]
            assert (got.data == array(18)).all() and (txn["r"] == array(27)).all()
        assert (shelf["r"] == array(27)).all()
    finally:
        Rewriter.shelf = None


def test_a_snapshot_read_in_place_sees_one_version(shelf: objstore.Shelf) -> None:
    shelf["a"] = array(19)
    assert (shelf["a"] == array(19)).all()  # snapshots are read in place from now on
    shelf.update({f"s{i:04d}": i for i in range(3000)})  # long batches: read by copy
    with shelf.snapshot() as snap:
        shelf["a"] = array(20)
        shelf.update({f"s{i:04d}": -i for i in range(3000)})
        shelf["t"] = 1
        assert (snap["a"] == array(19)).all() and snap["s0005"] == 5 and "t" not in snap
        seen = dict(snap.items())
        assert (seen.pop("a") == array(19)).all()
        assert seen == {f"s{i:04d}": i for i in range(3000)}
    assert (shelf["a"] == array(20)).all() and shelf["s0005"] == -5
