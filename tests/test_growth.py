"""Map growth under concurrency.

Every store here starts with a 64 KiB map, so the data written grows it many
times over. Guarantees checked:

- while one process grows the map, other processes (writers, a ``"r"``
  reader, snapshot readers) keep working, and no error reaches any of them;
- growth while another thread of the same process holds a snapshot or is
  iterating: the snapshot keeps reading its values, nobody sees an error;
- growth in the middle of a large `Shelf.transaction` (with savepoints,
  deletes, a rolled-back savepoint and `clear`) and of `Shelf.update`: the
  writes made before the growth are replayed, and the contents afterwards are
  exactly what was written;
- when another process commits while a growing transaction waits for the
  map, a blind `update` is still replayed, and a `transaction` is rolled back
  whole with `objstore.ConflictError` (never half-applied).
"""

from __future__ import annotations

import multiprocessing
import pickle
import random
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import filelock
import pytest
from _harness import Remote, payload, run_processes
from _tasks import TINY_MAP, grow_counter, grow_reader, grow_writer, open_repeatedly

import objstore

SPAWN = multiprocessing.get_context("spawn")
DEADLINE = 30.0


class Unpicklable:
    def __reduce__(self) -> Any:
        raise pickle.PicklingError("this object refuses to be pickled")


def tiny(path: Path, **kwargs: Any) -> objstore.Shelf:
    return objstore.open(path, map_size=TINY_MAP, **kwargs)


def check_payloads(db: objstore.Shelf | objstore.Snapshot, prefix: str) -> int:
    n = 0
    for key, value in db.iteritems(prefix):
        assert value == payload(key, len(value)), f"{key} damaged"
        n += 1
    return n


# ------------------------------------------------------- across processes


@pytest.mark.timeout(60)
def test_growth_while_other_processes_read_and_write(path: Path) -> None:
    """Every process opens the store first; then one grows the map many times while the others work."""
    with tiny(path) as db:
        db["counter"] = 0
        assert db.info()["map_size"] == TINY_MAP
    values, times, seconds = 300, 150, 3.0
    barrier = SPAWN.Barrier(5)
    tasks: list[tuple[Callable[..., Any], tuple[Any, ...]]] = [
        (grow_writer, (str(path), values, barrier)),
        (grow_counter, (str(path), times, barrier)),
        (grow_counter, (str(path), times, barrier)),
        (grow_reader, (str(path), seconds, "w", barrier)),
        (grow_reader, (str(path), seconds, "r", barrier)),
    ]
    map_size, pid1, pid2, checks_w, checks_r = run_processes(SPAWN, tasks, timeout=50, together=False)
    assert map_size >= 16 * TINY_MAP, "the map did not grow much: the test tested little"
    assert checks_w > 0 and checks_r > 0
    with tiny(path, flag="r") as db:
        assert check_payloads(db, "g") == values
        assert db["counter"] == 2 * times
        for pid in (pid1, pid2):
            assert [db[f"c{pid}-{i:04d}"] for i in range(times)] == list(range(times))
        assert db.verify() == []


@pytest.mark.timeout(60)
def test_opening_while_another_process_grows_the_map(path: Path) -> None:
    """Processes that open (with each flag) while another process grows the map open without error."""
    with tiny(path) as db:
        db["counter"] = 0
    tasks: list[tuple[Callable[..., Any], tuple[Any, ...]]] = [
        (grow_writer, (str(path), 300)),
        (open_repeatedly, (str(path), 2.0, "w")),
        (open_repeatedly, (str(path), 2.0, "c")),
        (open_repeatedly, (str(path), 2.0, "r")),
    ]
    map_size, *opens = run_processes(SPAWN, tasks, timeout=50)
    assert map_size >= 16 * TINY_MAP
    assert all(n > 0 for n in opens)
    with tiny(path, flag="r") as db:
        assert check_payloads(db, "g") == 300


# ---------------------------------------------------- inside one process


@pytest.mark.timeout(60)
@pytest.mark.parametrize("holder", ["snapshot", "iteration"])
def test_growth_while_another_thread_reads(path: Path, holder: str) -> None:
    """One thread grows the map many times while another holds snapshots or iterates."""
    with tiny(path) as db:
        fixed = {f"f{i:03d}": payload(f"f{i:03d}", 500) for i in range(50)}
        db.update(fixed)
        done = threading.Event()
        errors: list[BaseException] = []
        rounds = [0]

        def read() -> None:
            try:
                while not done.is_set():
                    if holder == "snapshot":
                        with db.snapshot() as snap:
                            first = dict(snap.items())
                            time.sleep(0.02)  # held while the other thread writes and grows
                            assert dict(snap.items()) == first
                            assert all(first[k] == v for k, v in fixed.items())
                    else:
                        seen = {k: v for k, v in db.items() if k.startswith("f")}
                        assert seen == fixed
                        check_payloads(db, "g")
                    rounds[0] += 1
            except BaseException as exc:
                errors.append(exc)

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        try:
            rng = random.Random(3)
            for i in range(400):
                key = f"g{i:05d}"
                db[key] = payload(key, rng.randint(1024, 8192))
                if i % 50 == 0:
                    db.update({f"u{i}-{j}": payload(f"u{i}-{j}", 4096) for j in range(20)})
        finally:
            done.set()
            reader.join(DEADLINE)
        assert not reader.is_alive(), "the reading thread hung"
        assert errors == []
        assert rounds[0] > 0
        assert db.info()["map_size"] >= 32 * TINY_MAP
        assert check_payloads(db, "g") == 400


@pytest.mark.timeout(60)
def test_growth_in_the_middle_of_a_large_transaction(path: Path) -> None:
    rng = random.Random(5)
    with tiny(path) as db:
        db.update({f"pre{i}": i for i in range(10)})
        model: dict[str, Any] = dict(db.items())
        assert db.info()["map_size"] == TINY_MAP
        with db.transaction() as txn:
            for i in range(600):
                key = f"k{i:04d}"
                txn[key] = model[key] = payload(key, rng.randint(100, 6000))
                if i % 7 == 0:
                    victim = f"k{rng.randrange(i + 1):04d}"
                    if victim in model:
                        del txn[victim]
                        del model[victim]
                if i % 100 == 50:
                    # A savepoint that commits, and one rolled back, both across growth.
                    with txn.transaction() as inner:
                        for j in range(30):
                            inner[f"inner{i}-{j}"] = model[f"inner{i}-{j}"] = payload(f"inner{i}-{j}", 3000)
                    try:
                        with txn.transaction() as inner:
                            for j in range(30):
                                inner[f"gone{i}-{j}"] = payload(f"gone{i}-{j}", 3000)
                            raise KeyError("roll back the savepoint")
                    except KeyError:
                        pass
                # Reads inside the transaction see its own writes, before and after growth.
                if i % 60 == 0 and model:
                    probe = rng.choice(sorted(model))
                    assert txn[probe] == model[probe]
            assert len(txn) == len(model)
        assert db.info()["map_size"] >= 16 * TINY_MAP, "the transaction did not grow the map"
        assert dict(db.items()) == model

    with tiny(path, flag="r") as db:  # and after reopening
        assert dict(db.items()) == model


@pytest.mark.timeout(60)
def test_growth_after_clear_inside_a_transaction(path: Path) -> None:
    with tiny(path) as db:
        db.update({f"old{i}": i for i in range(20)})
        with db.transaction() as txn:
            txn.clear()
            for i in range(300):
                txn[f"new{i:03d}"] = payload(f"new{i:03d}", 4000)
        assert db.info()["map_size"] > TINY_MAP
        assert sorted(db) == [f"new{i:03d}" for i in range(300)]
        assert check_payloads(db, "new") == 300


@pytest.mark.timeout(60)
def test_growth_in_the_middle_of_update(path: Path) -> None:
    with tiny(path, writeback=False) as db:
        big = {f"u{i:05d}": payload(f"u{i:05d}", 1000 + (i * 37) % 5000) for i in range(1500)}
        db.update(big)
        assert db.info()["map_size"] >= 32 * TINY_MAP
        assert dict(db.items()) == big
        # A failing pickle half-way leaves nothing, even after the map grew for the first half.
        before = db.info()["map_size"]
        pairs: list[tuple[str, Any]] = [(f"v{i:05d}", payload(f"v{i:05d}", 5000)) for i in range(1500)]
        pairs.append(("bad", Unpicklable()))
        with pytest.raises(pickle.PicklingError):
            db.update(pairs)
        assert not any(k.startswith("v") for k in db), "update() stored part of its pairs"
        assert "bad" not in db
        assert db.info()["map_size"] >= before


# ------------------------------------- another process commits meanwhile


@pytest.mark.timeout(60)
@pytest.mark.parametrize("how", ["big_update", "big_transaction"])
def test_growth_while_another_process_commits(path: Path, how: str) -> None:
    """A writer whose map fills up while another process commits: replayed if blind, else ConflictError.

    The test holds the store's maintenance lock (``objstore.lock``, which
    growing takes) so that the remote writer, having run out of map, waits
    for it after rolling back; meanwhile this process commits. The remote
    writer says (by creating a file) when its write transaction has begun, so
    this process's commit waits for LMDB's writer lock until the remote
    writer has run out of map and rolled back.
    """
    started = path.parent / "started"
    with tiny(path) as db:
        db["base"] = 0
    with Remote(SPAWN, path, map_size=TINY_MAP) as remote, tiny(path) as db:
        lock = filelock.FileLock(str(path / "objstore.lock"))
        with lock.acquire(timeout=10):
            remote.send(how, "w", 200, 4000, str(started))
            deadline = time.monotonic() + DEADLINE
            while not started.exists():
                assert time.monotonic() < deadline, "the remote writer never started"
                time.sleep(0.01)
            db["meanwhile"] = "committed by another process"
        try:
            result: Any = remote.result(timeout=30)
        except objstore.ConflictError as exc:
            result = exc
        assert db["meanwhile"] == "committed by another process"
        written = sorted(db.iterkeys("w"))
        if how == "big_update":
            assert result == 200
            assert written == [f"w{i:05d}" for i in range(200)]
            assert check_payloads(db, "w") == 200
        else:
            assert isinstance(result, objstore.ConflictError), result
            assert written == [], "a transaction that raised ConflictError left part of its writes"
            assert db["base"] == 0
            # Running it again works.
            assert remote.call(how, "w", 200, 4000) == 200
            assert check_payloads(db, "w") == 200
            assert db["base"] == 1


# ------------------------------------------------ garbage left by growth

GROW_AND_COLLECT = """
import gc, sys
import objstore
gc.disable()
gc.set_debug(gc.DEBUG_SAVEALL)
with objstore.open(sys.argv[1], map_size=64 * 1024) as db:
    db.update({f"k{i:04d}": "v" * 1000 for i in range(200)})  # grows the map
    for i in range(20):
        db[f"big{i}"] = "v" * 100_000  # large records, written through a growth
gc.collect()
ours = [
    f"{o.f_code.co_filename}:{o.f_code.co_name}"
    for o in gc.garbage
    if type(o).__name__ == "frame" and "objstore" in o.f_code.co_filename
]
print(ours)
"""


def test_growth_leaves_no_frames_in_cyclic_garbage(path: Path) -> None:
    """Growing the map leaves no reference cycle holding objstore's frames and their locals.

    Such a cycle (a scan of the threads' stacks that kept its own frame) held
    the record being written until a garbage collection; on Python 3.12.0 and
    3.12.1 collecting a record that is a view of an ``io.BytesIO`` crashed the
    process (CPython gh-111049).
    """
    done = subprocess.run(
        [sys.executable, "-c", GROW_AND_COLLECT, str(path)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]", done.stdout


IN_A_CYCLE = """
import gc
import objstore
from objstore._serialize import Codec

for value in ("v" * 100_000, bytes(1 << 17), [bytearray(1 << 17)]):
    for codec in (Codec(), Codec(compression="zlib", compress_above=1 << 30)):
        record = codec.encode(value, "k")
        cycle = [record]
        cycle.append(cycle)
        del record, cycle
        gc.collect()
print("collected")
"""


def test_records_in_a_reference_cycle_are_collected_safely() -> None:
    """A large value's record (a view of the buffer it was built in) can sit in a reference cycle.

    A view of an ``io.BytesIO``'s buffer in a cycle crashed the garbage
    collector of Python 3.12.0 and 3.12.1 (CPython gh-111049): records are
    built in a bytearray instead.
    """
    done = subprocess.run([sys.executable, "-c", IN_A_CYCLE], capture_output=True, text=True, timeout=120)
    assert (done.returncode, done.stdout.strip()) == (0, "collected"), done.stderr
