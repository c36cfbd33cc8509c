"""Many processes on one store at once.

Guarantees checked here, each with real processes (``multiprocessing`` with
the spawn, fork and forkserver start methods):

- any number of processes may open one store with ``"c"``, ``"w"`` and ``"r"``
  at the same time, and racing creators of a missing store all succeed on one
  store;
- read-modify-write through `Shelf.modify`, `Shelf.edit` and
  `Shelf.transaction` is atomic across processes: P processes doing K
  increments end at exactly P×K;
- readers never see a partial transaction: multi-key invariants hold in every
  `Shelf.snapshot` and inside every `Shelf.transaction` while other processes
  write as fast as they can;
- what a writeback cache means when another process writes the same keys;
- flag ``"n"`` empties the store in place under other openers, who see the
  empty store from their next read and whose later writes are kept;
- ``lock="exclusive"`` keeps every other process out, with a
  `objstore.LockTimeoutError` that names the lock file and the holder;
- a pickled `Shelf` works in ``multiprocessing.Pool`` and
  ``concurrent.futures.ProcessPoolExecutor`` under every start method.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import filelock
import pytest
from _harness import Remote, run_processes
from _tasks import (
    SLOTS,
    TOTAL,
    count_with_edit,
    count_with_modify,
    count_with_transaction,
    create_and_write,
    invariant_reader,
    invariant_writer,
    open_with_flag,
    pool_task,
    seed_invariants,
)

import objstore

SPAWN = multiprocessing.get_context("spawn")
FORK = multiprocessing.get_context("fork")
FORKSERVER = multiprocessing.get_context("forkserver")
CONTEXTS = {"spawn": SPAWN, "fork": FORK, "forkserver": FORKSERVER}


def make_store(path: Path, **values: Any) -> None:
    with objstore.open(path, "c") as db:
        db.update(values)


# ------------------------------------------------------------- openers


@pytest.mark.timeout(60)
def test_many_processes_open_one_store_with_every_flag(path: Path) -> None:
    make_store(path, seed="present")
    flags = ["c", "c", "w", "w", "r", "r"]
    rounds = 15
    tasks = [(open_with_flag, (str(path), flag, rounds, f"{flag}{n}")) for n, flag in enumerate(flags)]
    assert run_processes(SPAWN, tasks) == [rounds] * len(flags)
    with objstore.open(path, "r") as db:
        written = {k for k in db if k != "seed"}
    expected = {f"{flag}{n}-{i}" for n, flag in enumerate(flags) if flag != "r" for i in range(rounds)}
    assert written == expected


@pytest.mark.timeout(60)
@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_racing_creators_all_succeed_on_one_store(tmp_path: Path, method: str) -> None:
    """Processes that open a missing path with "c" at the same moment all succeed, on one store."""
    ctx = CONTEXTS[method]
    racers = 8
    for round_ in range(4 if method == "fork" else 1):
        path = tmp_path / f"round{round_}" / "store"
        tasks = [(create_and_write, (str(path), f"racer{i}")) for i in range(racers)]
        created_by = run_processes(ctx, tasks)
        assert len(set(created_by)) == 1
        with objstore.open(path, "r") as db:
            assert sorted(db) == sorted(f"racer{i}" for i in range(racers))
        assert sorted(os.listdir(path)) == ["data.mdb", "lock.mdb", "objstore.lock", "objstore.openers"]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("flag", ["r", "w", "c"])
def test_opening_and_reading_do_not_wait_for_another_processs_transaction(path: Path, flag: str) -> None:
    """Readers never block: opening a store and reading it does not wait for a writer elsewhere."""
    make_store(path, key="committed")
    marker = path.parent / "holding"
    seen: dict[str, Any] = {}

    def open_and_read() -> None:
        with objstore.open(path, flag) as db:
            seen["get"] = db.get("held")
            with db.snapshot() as snap:
                seen["snapshot"] = (snap.get("held"), snap["key"])

    with Remote(SPAWN, path) as writer:
        writer.send("hold_transaction", str(marker), 20.0)
        deadline = time.monotonic() + 20
        while not marker.exists():
            assert time.monotonic() < deadline, "the writer never began its transaction"
            time.sleep(0.01)
        reader = threading.Thread(target=open_and_read, daemon=True)
        started = time.monotonic()
        reader.start()
        reader.join(2.0)
        waited = time.monotonic() - started
        blocked = reader.is_alive()
        marker.unlink()  # let the writer commit
        assert writer.result() is True
        reader.join(20)
    assert not blocked, (
        f"opening with flag {flag!r} and reading waited {waited:.1f}s for another process's transaction"
    )
    assert seen == {"get": None, "snapshot": (None, "committed")}


# ------------------------------------------------------------ counters

COUNTERS: dict[str, Callable[[str, str, int], int]] = {
    "modify": count_with_modify,
    "transaction": count_with_transaction,
    "edit": count_with_edit,
}


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("how", "method"),
    [
        ("modify", "spawn"),
        ("modify", "fork"),
        ("transaction", "spawn"),
        ("transaction", "fork"),
        ("edit", "spawn"),
    ],
)
def test_concurrent_counter_loses_no_increment(path: Path, how: str, method: str) -> None:
    processes, times = 4, 150
    make_store(path)
    tasks = [(COUNTERS[how], (str(path), "counter", times)) for _ in range(processes)]
    pids = run_processes(CONTEXTS[method], tasks)
    with objstore.open(path, "r") as db:
        value = db["counter"]
    if how == "edit":
        # One entry per increment, and each process's own increments all present.
        assert len(value) == processes * times
        assert Counter(value) == {pid: times for pid in pids}
    else:
        assert value == processes * times


# ---------------------------------------------------------- invariants


@pytest.mark.timeout(60)
@pytest.mark.parametrize("how", ["snapshot", "transaction"])
def test_readers_never_see_a_partial_transaction(path: Path, how: str) -> None:
    """Readers in other processes check a == b and a constant sum while two processes write."""
    with objstore.open(path) as db:
        seed_invariants(db)
    seconds = 2.0
    tasks: list[tuple[Callable[..., Any], tuple[Any, ...]]] = [
        (invariant_writer, (str(path), seconds, 1)),
        (invariant_writer, (str(path), seconds, 2)),
        (invariant_reader, (str(path), seconds, how)),
        (invariant_reader, (str(path), seconds, how)),
    ]
    commits_1, commits_2, *readers = run_processes(SPAWN, tasks)
    assert commits_1 > 20 and commits_2 > 20
    for report in readers:
        assert report["violation_count"] == 0, report["violations"]
        assert report["checks"] > 20
        assert report["distinct"] > 1, "the reader never saw a write: the test did not test anything"
    with objstore.open(path, "r") as db:
        assert db["a"] == db["b"]
        assert sum(db[f"s{i}"] for i in range(SLOTS)) == TOTAL


# ----------------------------------------------------------- writeback


# How the writeback tests read a key in the writeback process: ``db[key]``
# (the shelve idiom, ``db[key].append(x)``) and ``db.get(key)``.
ACCESS = {"getitem": ("get", "append"), "get": ("read_via_get", "append_via_get")}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("access", sorted(ACCESS))
def test_writeback_across_processes(path: Path, access: str) -> None:
    """What a writeback cache means when another process writes the same keys.

    Process A has a ``writeback=True`` shelf; process B writes the same keys
    with a plain shelf while A's cache holds them. The test shows:

    - until A syncs, A keeps serving the objects in its cache: B's newer
      values are not seen by A for keys A already read;
    - keys A only read (and did not change) are never written back: A's sync
      does not undo B's write to them;
    - a key changed by both is whole-value last-writer-wins: A's sync after
      B's write replaces B's value entirely (no merge), and B's write after
      A's sync replaces A's;
    - after a sync, A reads the store afresh.
    """
    read, append = ACCESS[access]
    make_store(path, only_read=["seed"], both=["seed"], only_a=["seed"])
    with Remote(SPAWN, path, writeback=True) as a, Remote(SPAWN, path) as b:
        assert a.call(read, "only_read") == ["seed"]
        a.call(append, "both", "A")
        a.call(append, "only_a", "A")

        b.call("set", "only_read", ["B"])
        b.call("set", "both", ["B"])
        # A's cache is not refreshed behind its back.
        assert a.call(read, "only_read") == ["seed"]
        assert a.call(read, "both") == ["seed", "A"]
        # Nothing of A's cache reached the store yet.
        assert b.call("get", "both") == ["B"]
        assert b.call("get", "only_a") == ["seed"]

        a.call("sync")
        assert b.call("get", "only_read") == ["B"], "a key only read was written back"
        assert b.call("get", "both") == ["seed", "A"], "the later sync should win"
        assert b.call("get", "only_a") == ["seed", "A"]
        # After the sync, A reads afresh.
        assert a.call(read, "only_read") == ["B"]

        # Now B writes last: B's value wins.
        a.call(append, "both", "A2")
        a.call("sync")
        b.call("set", "both", ["B2"])
        assert a.call(read, "both") == ["B2"]
        a.call("close")
    with objstore.open(path, "r") as db:
        assert dict(db) == {"only_read": ["B"], "both": ["B2"], "only_a": ["seed", "A"]}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("access", sorted(ACCESS))
def test_two_writeback_shelves_last_sync_wins(path: Path, access: str) -> None:
    """Two processes with writeback caches changing one key: the later sync wins whole, no merge."""
    _, append = ACCESS[access]
    make_store(path, shared=[0])
    with Remote(SPAWN, path, writeback=True) as a, Remote(SPAWN, path, writeback=True) as b:
        a.call(append, "shared", "A")
        b.call(append, "shared", "B")
        a.call("sync")
        b.call("sync")
        assert a.call("get", "shared") == [0, "B"]
        b.call(append, "shared", "B2")
        a.call(append, "shared", "A2")
        b.call("close")
        a.call("close")
    with objstore.open(path, "r") as db:
        assert db["shared"] == [0, "B", "A2"]


# --------------------------------------------------------------- flag n


@pytest.mark.timeout(60)
def test_flag_n_empties_the_store_under_other_openers(path: Path) -> None:
    make_store(path, **{f"old{i}": i for i in range(100)})
    with Remote(SPAWN, path) as other, Remote(SPAWN, path, flag="r") as reader:
        assert other.call("len") == 100
        assert reader.call("get", "old7") == 7
        held = reader.call("snapshot")

        with objstore.open(path, "n") as db:
            assert len(db) == 0
            # The other processes see the empty store from their next read.
            assert other.call("len") == 0
            assert other.call("get_default", "old7", "gone") == "gone"
            assert reader.call("items") == {}
            # A snapshot opened before "n" still sees what it saw.
            assert reader.call("snapshot_items", held) == {f"old{i}": i for i in range(100)}
            reader.call("snapshot_close", held)

            # Their later writes are not lost, and this process sees them.
            other.call("set", "after", "other")
            assert db["after"] == "other"
            db["mine"] = "n-opener"
            assert other.call("get", "mine") == "n-opener"
            assert other.call("modify_add", "count", 5) == 5
        other.call("set", "late", "after the n-opener closed")
        other.call("close")
    with objstore.open(path, "r") as db:
        assert dict(db) == {
            "after": "other",
            "mine": "n-opener",
            "count": 5,
            "late": "after the n-opener closed",
        }


# ------------------------------------------------------------ exclusive


@pytest.mark.timeout(60)
def test_exclusive_lock_keeps_other_processes_out(path: Path) -> None:
    make_store(path, key="value")
    lock_file = str(path.resolve() / "objstore.openers")
    with Remote(SPAWN, path, lock="exclusive") as holder:
        assert holder.call("get", "key") == "value"
        for flag in ("c", "w", "r"):
            with pytest.raises(objstore.LockTimeoutError) as info:
                objstore.open(path, flag, timeout=0.3)
            message = str(info.value)
            assert lock_file in message
            assert str(holder.pid) in message
            assert info.value.lock_file == lock_file
            assert info.value.holders == (holder.pid,)
        # Another exclusive opener is kept out too.
        with pytest.raises(objstore.LockTimeoutError):
            objstore.open(path, lock="exclusive", timeout=0.3)
        holder.call("set", "key", "changed")
        holder.call("close")
        with objstore.open(path, timeout=5) as db:
            assert db["key"] == "changed"


@pytest.mark.timeout(60)
def test_exclusive_opener_waits_for_shared_openers(path: Path) -> None:
    make_store(path, key="value")
    with objstore.open(path) as db:
        with pytest.raises(objstore.LockTimeoutError) as info:
            Remote(SPAWN, path, lock="exclusive", timeout=0.3)
        assert info.value.holders == (os.getpid(),)
        assert str(os.getpid()) in str(info.value)
        # An exclusive opener waiting within its timeout gets in once the shared opener closes.
        waiter = Remote(SPAWN, path, wait=False, lock="exclusive", timeout=20)
        time.sleep(0.5)
        assert waiter.process.is_alive() and waiter.pid == 0
        db["key"] = "before close"
    with waiter:
        waiter.opened()
        assert waiter.call("get", "key") == "before close"


@pytest.mark.timeout(60)
@pytest.mark.parametrize("when", ["creating", "growing"])
def test_maintenance_lock_timeout_names_lock_and_holder(path: Path, when: str) -> None:
    """Creating or growing the store while another process holds ``objstore.lock`` times out clearly."""
    if when == "growing":
        with objstore.open(path, map_size=64 * 1024) as db:
            db["base"] = 0
    else:
        path.mkdir()
    lock_file = str(path.resolve() / "objstore.lock")
    with filelock.FileLock(lock_file).acquire(timeout=5):
        with pytest.raises(objstore.LockTimeoutError) as info:
            with Remote(SPAWN, path, map_size=64 * 1024, timeout=0.3) as remote:
                remote.call("big_update", "g", 100, 8000)
    assert info.value.lock_file == lock_file
    assert lock_file in str(info.value)
    assert info.value.holders == (os.getpid(),)
    assert str(os.getpid()) in str(info.value)
    # Once the lock is free, the same work succeeds.
    with Remote(SPAWN, path, map_size=64 * 1024, timeout=5) as remote:
        assert remote.call("big_update", "g", 100, 8000) == 100


# ---------------------------------------------------------------- pools


def _seeded(path: Path) -> objstore.Shelf:
    db = objstore.open(path)
    db["seed"] = "from the parent"
    return db


@pytest.mark.timeout(60)
@pytest.mark.parametrize("method", ["fork", "spawn", "forkserver"])
def test_pickled_shelf_in_multiprocessing_pool(path: Path, method: str) -> None:
    tasks = 24
    with _seeded(path) as db:
        pool = CONTEXTS[method].Pool(3)
        try:
            result = pool.starmap_async(pool_task, [(db, i) for i in range(tasks)])
            answers = result.get(timeout=45)
        finally:
            pool.close()
            pool.join()
        assert all(seed == "from the parent" for _, seed in answers)
        assert all(pid != os.getpid() for pid, _ in answers)
        assert db["count"] == tasks
        assert sorted(db.iterkeys("task")) == [f"task{i:03d}" for i in range(tasks)]
        assert db["seed"] == "from the parent"  # the parent's shelf still works


@pytest.mark.timeout(60)
@pytest.mark.parametrize("method", ["fork", "spawn", "forkserver"])
def test_pickled_shelf_in_process_pool_executor(path: Path, method: str) -> None:
    tasks = 24
    with _seeded(path) as db:
        with ProcessPoolExecutor(max_workers=3, mp_context=CONTEXTS[method]) as executor:
            answers = list(executor.map(pool_task, [db] * tasks, range(tasks), timeout=45))
        assert all(seed == "from the parent" for _, seed in answers)
        assert db["count"] == tasks
        assert {db[f"task{i:03d}"][1] for i in range(tasks)} == set(range(tasks))
