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
