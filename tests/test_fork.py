"""``os.fork()`` with open shelves.

Guarantees checked here, with real forks of the test process (and, where a
normal interpreter exit of the child matters, of a subprocess):

- a `Shelf` opened before ``fork()`` keeps working in the parent and in the
  child, at the same time;
- the child never disturbs the parent: a snapshot the parent holds across the
  child's reads, writes, closing and exit still reads the original values.
  Touching inherited LMDB handles in a child fails *silently* (the parent's
  snapshot returns other values), so every test here compares values;
- the read transaction the parent's environment caches for its next read
  stays the parent's when a child exits normally;
- a snapshot or transaction inherited from the parent raises a clear
  `objstore.TransactionError` in the child, instead of hanging or writing
  into the parent's transaction;
- fork while another thread of the parent holds a transaction or a snapshot.
"""

from __future__ import annotations

import json
import os
import pickle
import select
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from _harness import Forked, fork_call

import objstore

TASKS = Path(__file__).with_name("_tasks.py")

# Python 3.12+ warns when a process with other threads forks. The tests that
# fork while a thread holds a transaction or snapshot do so on purpose.
FORK_WITH_THREADS = pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")

ORIGINAL = {f"v{i:03d}": ("original", i) for i in range(200)}


@pytest.fixture
def filled(shelf: objstore.Shelf) -> objstore.Shelf:
    shelf.update(ORIGINAL)
    return shelf


def wrong_values(snap: objstore.Snapshot) -> list[str]:
    """The keys of a snapshot that no longer read as ORIGINAL (and the missing ones)."""
    seen = dict(snap.items())
    wrong = [k for k, v in ORIGINAL.items() if seen.get(k) != v]
    wrong += [k for k in seen if k not in ORIGINAL]
    wrong += [k for k, v in ORIGINAL.items() if snap.get(k) != v and k not in wrong]
    return wrong


# ------------------------------------------------------------ both sides


@pytest.mark.timeout(60)
def test_shelf_opened_before_fork_works_in_parent_and_child(filled: objstore.Shelf) -> None:
    db = filled
    times = 200

    def child() -> dict[str, Any]:
        seen = db["v010"]
        for _ in range(times):
            db.modify("count", lambda n: n + 1, default=0)
        with db.transaction() as txn:
            txn["from_child"] = "child"
        with db.snapshot() as snap:
            keys = sum(1 for _ in snap)
        return {"seen": seen, "keys": keys, "len": len(db)}

    running = Forked(child)
    # The parent keeps working while the child does.
    for _ in range(times):
        db.modify("count", lambda n: n + 1, default=0)
    db["from_parent"] = "parent"
    report = running.result(timeout=30)
    assert report["seen"] == ("original", 10)
    assert report["keys"] >= len(ORIGINAL) + 1
    assert db["count"] == 2 * times
    assert db["from_child"] == "child"
    # A second child sees what the first child and the parent wrote.
    assert fork_call(lambda: (db["from_child"], db["from_parent"], db["count"])) == (
        "child",
        "parent",
        2 * times,
    )
    db["after"] = 1
    assert db["after"] == 1


@pytest.mark.timeout(60)
def test_grandchild_of_a_fork_can_use_the_shelf(filled: objstore.Shelf) -> None:
    db = filled

    def grandchild() -> Any:
        db["grandchild"] = "yes"
        return db["v001"]

    def child() -> Any:
        db["child"] = "yes"
        return fork_call(grandchild)

    with db.snapshot() as snap:
        assert fork_call(child) == ("original", 1)
        assert wrong_values(snap) == []
    assert db["child"] == db["grandchild"] == "yes"


# ------------------------------------------------- the parent's snapshot


def _child_reads(db: objstore.Shelf, snap: objstore.Snapshot) -> Any:
    return sum(1 for _ in db.items())


def _child_writes(db: objstore.Shelf, snap: objstore.Snapshot | None) -> Any:
    db.update({k: ("child", i) for i, k in enumerate(ORIGINAL)})
    for i in range(20):
        with db.transaction() as txn:
            txn[f"v{i:03d}"] = ("child txn", i)
    del db["v199"]
    db.clear()
    db.update({f"new{i}": i for i in range(300)})
    return len(db)


def _child_closes_shelf(db: objstore.Shelf, snap: objstore.Snapshot) -> Any:
    db["closing"] = True
    db.close()
    return "closed"


def _child_closes_inherited_snapshot(db: objstore.Shelf, snap: objstore.Snapshot) -> Any:
    snap.close()
    db["after snapshot close"] = True
    return "closed"


def _child_drops_everything(db: objstore.Shelf, snap: objstore.Snapshot) -> Any:
    import gc

    del db, snap
    gc.collect()
    return "dropped"


def _child_opens_own_snapshot(db: objstore.Shelf, snap: objstore.Snapshot) -> Any:
    with db.snapshot() as own:
        before = own["v000"]
        db["v000"] = ("child", 0)
        assert own["v000"] == before
    return before


CHILD_WORK = {
    "nothing": lambda db, snap: None,
    "reads": _child_reads,
    "writes": _child_writes,
    "closes the shelf": _child_closes_shelf,
    "closes the inherited snapshot": _child_closes_inherited_snapshot,
    "drops everything": _child_drops_everything,
    "opens its own snapshot": _child_opens_own_snapshot,
}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("work", list(CHILD_WORK))
def test_parent_snapshot_survives_the_childs_work(filled: objstore.Shelf, work: str) -> None:
    db = filled
    with db.snapshot() as snap:
        before = wrong_values(snap)
        fork_call(lambda: CHILD_WORK[work](db, snap), timeout=30)
        # The child has exited; the parent's snapshot must read exactly what it read before.
        assert before == []
        assert wrong_values(snap) == []
        assert len(snap) == len(ORIGINAL)
        # A second child after the first: same again.
        fork_call(lambda: _child_writes(db, snap), timeout=30)
        assert wrong_values(snap) == []
    # And the parent's shelf itself sees the children's commits.
    assert len(db) == 300
    assert db["new5"] == 5


@pytest.mark.timeout(60)
@pytest.mark.parametrize("how", ["nothing", "use", "close"])
def test_parent_snapshot_survives_a_child_that_exits_normally(path: Path, how: str) -> None:
    """The child leaves through a normal interpreter exit (atexit, finalisers), outside pytest."""
    result = subprocess.run(
        [sys.executable, str(TASKS), "fork-with-snapshot", str(path), how],
        capture_output=True,
        text=True,
        timeout=45,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.splitlines()[-1])
    assert report["status"] == 0
    assert report["keys"] == 200
    assert report["wrong"] == 0, f"{report['wrong']} of 200 values in the parent's snapshot changed"
    if how == "nothing":
        assert report["now"] == ["original", 0]
    else:
        assert report["now"] == ["child", 0]
        assert report["count"] == 50


CACHED_READ_THEN_FORK = """
import json, os, sys
import objstore
from _harness import wait_pid

db = objstore.open(sys.argv[1])
db.update({f"v{i:03d}": i for i in range(200)})
assert db["v000"] == 0  # a read: its ended transaction is cached for the next one
pid = os.fork()
if pid == 0:
    db["v000"] = "child"
    sys.exit(0)  # a normal exit: atexit and finalisers run
status = wait_pid(pid, 20)
reads = [db[f"v{i:03d}"] for i in range(1, 200)]
with db.snapshot() as snap:
    keys = len(snap)
print(json.dumps({"status": status, "reads": reads == list(range(1, 200)), "keys": keys, "now": db["v000"]}))
db.close()
"""


@pytest.mark.timeout(60)
def test_parent_reads_after_a_child_exits_normally(path: Path) -> None:
    """The read transaction the parent's environment caches for its next read stays the parent's."""
    result = subprocess.run(
        [sys.executable, "-c", CACHED_READ_THEN_FORK, str(path)],
        capture_output=True,
        text=True,
        timeout=45,
        cwd=TASKS.parent,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.splitlines()[-1])
    assert report == {"status": 0, "reads": True, "keys": 200, "now": "child"}


# -------------------------------------------- inherited transaction objects


@pytest.mark.timeout(60)
def test_inherited_snapshot_raises_transaction_error_in_child(filled: objstore.Shelf) -> None:
    db = filled

    def child(snap: objstore.Snapshot) -> dict[str, str]:
        errors = {}
        uses: dict[str, Callable[[], Any]] = {
            "getitem": lambda: snap["v000"],
            "get": lambda: snap.get("v000"),
            "contains": lambda: "v000" in snap,
            "len": lambda: len(snap),
            "iterate": lambda: list(snap),
            "first": lambda: snap.first(),
        }
        for name, use in uses.items():
            try:
                use()
            except objstore.TransactionError as exc:
                errors[name] = str(exc)
            except BaseException as exc:
                errors[name] = f"wrong error {type(exc).__name__}: {exc}"
            else:
                errors[name] = "no error"
        # The shelf itself still works in the child, and a new snapshot too.
        with db.snapshot() as own:
            errors["own snapshot"] = repr(own["v000"])
        db["child"] = "ok"
        return errors

    with db.snapshot() as snap:
        errors = fork_call(lambda: child(snap))
        assert wrong_values(snap) == []
    for name in ("getitem", "get", "contains", "len", "iterate", "first"):
        assert "fork" in errors[name], (name, errors[name])
    assert errors["own snapshot"] == repr(("original", 0))
    assert db["child"] == "ok"


@pytest.mark.timeout(60)
def test_inherited_transaction_raises_transaction_error_in_child(filled: objstore.Shelf) -> None:
    """The child cannot use the parent's open transaction; its own writes wait for the parent's commit."""
    db = filled

    def child(txn: objstore.Transaction) -> dict[str, str]:
        report = {}
        uses: dict[str, Callable[[], Any]] = {
            "setitem": lambda: txn.__setitem__("from_child_txn", 1),
            "getitem": lambda: txn["inside"],
            "get": lambda: txn.get("inside"),
            "contains": lambda: "inside" in txn,
            "len": lambda: len(txn),
            "iterate": lambda: list(txn),
            "delitem": lambda: txn.__delitem__("v000"),
        }
        for name, use in uses.items():
            try:
                use()
            except objstore.TransactionError as exc:
                report[name] = str(exc)
            except BaseException as exc:
                report[name] = f"wrong error {type(exc).__name__}: {exc}"
            else:
                report[name] = "no error"
        # A plain write is the child's own: it waits until the parent commits.
        os.write(write_end, b"w")  # the transaction's uses are done: let the parent commit
        db["from_child"] = "child"
        report["after write"] = repr(db.get("inside"))
        return report

    read_end, write_end = os.pipe()
    try:
        with db.transaction() as txn:
            txn["inside"] = "parent"
            running = Forked(lambda: child(txn))
            ready, _, _ = select.select([read_end], [], [], 20)
            assert ready, "the forked child did not try the transaction within 20 s"
        report = running.result(timeout=30)
    finally:
        os.close(read_end)
        os.close(write_end)
    for name in ("setitem", "getitem", "get", "contains", "len", "iterate", "delitem"):
        assert "fork" in report[name], (name, report[name])
    assert report["after write"] == repr("parent")
    assert db["inside"] == "parent"
    assert db["from_child"] == "child"
    assert "from_child_txn" not in db
    assert db["v000"] == ("original", 0)


@pytest.mark.timeout(60)
def test_child_reads_do_not_wait_for_the_parents_transaction(filled: objstore.Shelf) -> None:
    """A parent that forks inside a transaction and waits for its child must not deadlock.

    Readers never block: the child's reads (its first use of the inherited
    shelf included) neither wait for the parent's open transaction nor see
    its uncommitted writes.
    """
    db = filled

    def child() -> Any:
        with db.snapshot() as snap:
            in_snapshot = snap.get("inside")
        return db.get("inside"), in_snapshot, db["v003"]

    with db.transaction() as txn:
        txn["inside"] = "uncommitted"
        running = Forked(child)
        try:
            result = running.result(timeout=5)
        except TimeoutError:
            pytest.fail("the child's read waited for the parent's open transaction (a deadlock here)")
    assert result == (None, None, ("original", 3))


@pytest.mark.timeout(60)
def test_child_can_open_a_new_shelf_and_use_the_inherited_one(filled: objstore.Shelf) -> None:
    """In a fork child, a shelf opened (or unpickled) there and the inherited shelf on one path both work.

    This is what a fork ``Pool`` does when the parent had the store open and
    a task receives a pickled shelf while module code uses the inherited one.
    """
    db = filled
    blob = pickle.dumps(db)

    def open_new_first() -> Any:
        fresh = pickle.loads(blob)
        fresh["fresh"] = 1
        return fresh["v001"], db["v002"], db["fresh"]

    def use_inherited_first() -> Any:
        inherited = db["v002"]
        fresh = objstore.open(db.path)
        return inherited, fresh["v001"]

    assert fork_call(use_inherited_first) == (("original", 2), ("original", 1))
    assert fork_call(open_new_first) == (("original", 1), ("original", 2), 1)


# --------------------------------------------------------------- threads


@pytest.mark.timeout(60)
@FORK_WITH_THREADS
def test_fork_while_another_thread_holds_a_transaction(filled: objstore.Shelf) -> None:
    db = filled
    started, release = threading.Event(), threading.Event()
    errors: list[BaseException] = []

    def hold() -> None:
        try:
            with db.transaction() as txn:
                txn["thread"] = "committed"
                txn["v000"] = ("thread", 0)
                started.set()
                release.wait(20)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    read_end, write_end = os.pipe()

    def child() -> Any:
        seen = db.get("thread")
        os.write(write_end, b"r")  # read before the parent's thread commits
        db["child"] = "child"  # waits for the parent's thread to commit
        return seen, db["thread"], db["v000"]

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert started.wait(10)
        with db.snapshot() as snap:
            running = Forked(child)
            ready, _, _ = select.select([read_end], [], [], 20)
            assert ready, "the forked child did not read within 20 s"
            release.set()
            holder.join(20)
            assert not holder.is_alive()
            assert running.result(timeout=10) == (None, "committed", ("thread", 0))
            assert wrong_values(snap) == []
    finally:
        release.set()
        holder.join(20)
        os.close(read_end)
        os.close(write_end)
    assert errors == []
    assert db["thread"] == "committed" and db["child"] == "child"


@pytest.mark.timeout(60)
@FORK_WITH_THREADS
def test_fork_while_another_thread_holds_a_snapshot(filled: objstore.Shelf) -> None:
    db = filled
    opened, release = threading.Event(), threading.Event()
    results: list[list[str]] = []

    def hold() -> None:
        with db.snapshot() as snap:
            opened.set()
            release.wait(20)
            results.append(wrong_values(snap))

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert opened.wait(10)
        assert fork_call(lambda: _child_writes(db, None), timeout=30) == 300
    finally:
        release.set()
        holder.join(20)
    assert results == [[]]
    assert len(db) == 300
