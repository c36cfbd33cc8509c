"""One store shared by many threads of one process.

Guarantees checked here, with real threads:

- one `Shelf` may be used by many threads at once: counters through
  `Shelf.modify` lose no increment, readers see consistent snapshots while
  others write, iteration while others write neither fails nor skips keys;
- a write made by a thread that holds an open transaction on the same store
  (through the same shelf or another shelf on the path) joins that
  transaction: no deadlock, and it is rolled back with it; a write from
  another thread waits for the transaction and is not part of it;
- a `Transaction` used from another thread raises `objstore.TransactionError`;
- several shelves on one path in one process share one environment.

Every thread is joined with a deadline, so a deadlock fails the test instead
of hanging it.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import objstore

DEADLINE = 30.0


class Boom(Exception):
    """Raised inside a transaction to roll it back."""


def run_threads(targets: list[Callable[[], Any]], timeout: float = DEADLINE) -> list[Any]:
    """Run each target in its own thread, starting together; return results, re-raise the first error."""
    results: list[Any] = [None] * len(targets)
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(targets))

    def run(i: int, target: Callable[[], Any]) -> None:
        try:
            barrier.wait(10)
            results[i] = target()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i, t), daemon=True) for i, t in enumerate(targets)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + timeout
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    alive = sum(thread.is_alive() for thread in threads)
    assert alive == 0, f"{alive} threads still running after {timeout} s (deadlock?)"
    if errors:
        raise errors[0]
    return results


def in_thread(fn: Callable[[], Any], timeout: float = DEADLINE) -> Any:
    """Run `fn` in a fresh thread; fail (instead of hanging) if it does not finish in time."""
    return run_threads([fn], timeout)[0]


# ------------------------------------------------------- shared shelf


@pytest.mark.timeout(60)
@pytest.mark.parametrize("how", ["modify", "transaction", "edit"])
def test_counter_shared_by_threads(shelf: objstore.Shelf, how: str) -> None:
    threads, times = 8, 150

    def count() -> None:
        for _ in range(times):
            if how == "modify":
                shelf.modify("n", lambda n: n + 1, default=0)
            elif how == "transaction":
                with shelf.transaction() as txn:
                    txn["n"] = txn.get("n", 0) + 1
            else:
                with shelf.edit("n", default=[]) as items:
                    items.append(1)

    run_threads([count] * threads)
    value = shelf["n"]
    assert (len(value) if how == "edit" else value) == threads * times


@pytest.mark.timeout(60)
def test_mixed_reads_and_writes_keep_invariants(shelf: objstore.Shelf) -> None:
    """Writers move amounts between keys in transactions; snapshot readers always see the same total."""
    slots, total, seconds = 8, 800, 1.5
    shelf.update({f"s{i}": total // slots for i in range(slots)})
    shelf.update(a=0, b=0)
    stop = time.monotonic() + seconds

    def writer(seed: int) -> int:
        rng = random.Random(seed)
        commits = 0
        while time.monotonic() < stop:
            with shelf.transaction() as txn:
                src, dst = rng.sample(range(slots), 2)
                amount = rng.randint(0, txn[f"s{src}"])
                txn[f"s{src}"] -= amount
                txn[f"s{dst}"] += amount
                value = txn["a"] + 1
                txn["a"] = value
                txn["b"] = value
            shelf[f"plain{seed}"] = commits  # plain writes in between
            commits += 1
        return commits

    def reader() -> tuple[int, list[str]]:
        checks, bad = 0, []
        while time.monotonic() < stop:
            with shelf.snapshot() as snap:
                amounts = [snap[f"s{i}"] for i in range(slots)]
                if sum(amounts) != total or snap["a"] != snap["b"]:
                    bad.append(f"{amounts} a={snap['a']} b={snap['b']}")
                if sum(v for k, v in snap.items() if k.startswith("s")) != total:
                    bad.append("iteration inside the snapshot saw another total")
            shelf.get("a")  # plain reads too
            checks += 1
        return checks, bad

    results = run_threads([lambda: writer(1), lambda: writer(2), reader, reader])
    assert results[0] > 10 and results[1] > 10
    for checks, bad in results[2:]:
        assert bad == []
        assert checks > 10
    assert sum(shelf[f"s{i}"] for i in range(slots)) == total


@pytest.mark.timeout(60)
def test_iteration_while_other_threads_write(shelf: objstore.Shelf) -> None:
    """Iterating (many batches) while others insert and delete never fails and never skips a stable key."""
    stable = {f"k{i:05d}": i for i in range(0, 6000, 2)}
    shelf.update(stable)
    stop = time.monotonic() + 1.5

    def churn(seed: int) -> int:
        rng = random.Random(seed)
        n = 0
        while time.monotonic() < stop:
            key = f"k{rng.randrange(1, 6000, 2):05d}"  # odd keys come and go
            if rng.random() < 0.5:
                shelf[key] = -1
            else:
                shelf.pop(key, None)
            n += 1
        return n

    def iterate() -> int:
        rounds = 0
        while time.monotonic() < stop:
            keys = list(shelf)
            assert keys == sorted(keys)
            missing = set(stable) - set(keys)
            assert not missing, f"{len(missing)} stable keys skipped, e.g. {sorted(missing)[:3]}"
            for key, value in shelf.iteritems(start="k02000", stop="k02100"):
                assert value == (stable[key] if key in stable else -1)
            rounds += 1
        return rounds

    results = run_threads([lambda: churn(1), lambda: churn(2), iterate, iterate])
    assert results[2] >= 1 and results[3] >= 1


# ------------------------------------------------- nested writes, joining


def _edit(db: objstore.Shelf) -> None:
    with db.edit("lst", default=[]) as items:
        items.append(1)


def _nested_transaction(db: objstore.Shelf) -> None:
    with db.transaction() as inner:
        inner["t"] = 1


# Every key a nested write below may touch.
KEYS = ("old", "x", "n", "lst", "u1", "u2", "d", "t")

NESTED_WRITES: dict[str, Callable[[objstore.Shelf], Any]] = {
    "setitem": lambda db: db.__setitem__("x", 1),
    "delitem": lambda db: db.__delitem__("old"),
    "modify": lambda db: db.modify("n", lambda n: n + 1, default=0),
    "edit": _edit,
    "update": lambda db: db.update({"u1": 1, "u2": 2}),
    "pop": lambda db: db.pop("old"),
    "setdefault": lambda db: db.setdefault("d", 1),
    "clear": lambda db: db.clear(),
    "nested transaction": _nested_transaction,
}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("write", list(NESTED_WRITES))
@pytest.mark.parametrize("through", ["same shelf", "another shelf on the path", "writeback shelf"])
def test_write_inside_own_transaction_joins_it(path: Path, write: str, through: str) -> None:
    """A write by the thread holding a transaction joins it: no deadlock; rolled back or committed with it."""
    with objstore.open(path) as db:
        db["old"] = "old"
        other = db if through == "same shelf" else objstore.open(path, writeback=through == "writeback shelf")
        try:

            def roll_back() -> dict[str, Any]:
                with pytest.raises(Boom):
                    with db.transaction() as txn:
                        NESTED_WRITES[write](other)
                        inside = dict(txn.items())
                        assert dict(other.items()) == inside  # the write is visible through both
                        raise Boom
                return inside

            inside = in_thread(roll_back)
            assert inside != {"old": "old"}, "the nested write changed nothing inside the transaction"
            assert dict(db.items()) == {"old": "old"}, "the nested write survived the rollback"
            assert dict(other.items()) == {"old": "old"}
            # Single reads through the other shelf (a writeback shelf's cache included) agree.
            assert {k: other.get(k) for k in KEYS} == {k: db.get(k) for k in KEYS}

            def commit() -> dict[str, Any]:
                with db.transaction() as txn:
                    NESTED_WRITES[write](other)
                    return dict(txn.items())

            committed = in_thread(commit)
            assert dict(db.items()) == committed
            assert {k: other.get(k) for k in KEYS} == {k: db.get(k) for k in KEYS}
        finally:
            if other is not db:
                other.close()
        assert dict(db.items()) == committed, "closing the other shelf changed the store"


@pytest.mark.timeout(60)
def test_write_from_another_thread_waits_and_is_not_rolled_back(shelf: objstore.Shelf) -> None:
    entered, done = threading.Event(), threading.Event()

    def other_thread() -> None:
        entered.wait(10)
        shelf["b"] = "from the other thread"  # waits for the transaction
        done.set()

    def transaction() -> bool:
        with pytest.raises(Boom):
            with shelf.transaction() as txn:
                txn["a"] = "rolled back"
                entered.set()
                time.sleep(0.3)
                waited = not done.is_set()
                assert "b" not in txn
                raise Boom
        return waited

    waited, _ = run_threads([transaction, other_thread])
    assert waited, "the other thread's write did not wait for the transaction"
    assert dict(shelf.items()) == {"b": "from the other thread"}


@pytest.mark.timeout(60)
def test_transaction_used_from_another_thread_raises(shelf: objstore.Shelf) -> None:
    shelf["a"] = 1
    uses: dict[str, Callable[[objstore.Transaction], Any]] = {
        "getitem": lambda t: t["a"],
        "get": lambda t: t.get("a"),
        "contains": lambda t: "a" in t,
        "len": lambda t: len(t),
        "iterate": lambda t: list(t),
        "items": lambda t: list(t.items()),
        "first": lambda t: t.first(),
        "setitem": lambda t: t.__setitem__("b", 2),
        "delitem": lambda t: t.__delitem__("a"),
        "pop": lambda t: t.pop("a"),
        "update": lambda t: t.update(c=3),
        "setdefault": lambda t: t.setdefault("d", 4),
        "modify": lambda t: t.modify("a", lambda v: v + 1),
        "clear": lambda t: t.clear(),
    }
    outcome: dict[str, str] = {}
    with shelf.transaction() as txn:
        txn["inside"] = True

        def misuse() -> None:
            for name, use in uses.items():
                try:
                    use(txn)
                except objstore.TransactionError:
                    outcome[name] = "TransactionError"
                except BaseException as exc:
                    outcome[name] = f"{type(exc).__name__}: {exc}"
                else:
                    outcome[name] = "no error"

        in_thread(misuse)
        # The owner can still use it.
        assert txn["a"] == 1
    not_raised = {name: result for name, result in outcome.items() if result != "TransactionError"}
    assert not_raised == {}
    assert dict(shelf.items()) == {"a": 1, "inside": True}


# ------------------------------------------------- shelves on one path


@pytest.mark.timeout(60)
def test_shelves_on_one_path_share_one_environment(path: Path) -> None:
    first = objstore.open(path)
    second = objstore.open(path)
    third = objstore.open(str(path) + "/", flag="r")  # the same store, spelled differently
    try:
        # White-box: one environment object behind all three handles.
        environments = {id(db._source._environment) for db in (first, second, third)}
        assert len(environments) == 1
        # Behaviour: a transaction of one shelf is joined by the others' writes in the same thread.
        with pytest.raises(Boom):
            with first.transaction():
                second["x"] = 1
                assert third["x"] == 1
                raise Boom
        assert "x" not in second
        # A snapshot through one is isolated from writes through another.
        second["y"] = "before"
        with third.snapshot() as snap:
            second["y"] = "after"
            assert snap["y"] == "before"

        # Threads using different shelves on the path share one writer lock without deadlock.
        def count(db: objstore.Shelf) -> None:
            for _ in range(100):
                db.modify("n", lambda n: n + 1, default=0)

        run_threads([lambda: count(first), lambda: count(second)])
        assert third["n"] == 200
        # Closing one leaves the others working.
        first.close()
        second["z"] = "still works"
        assert third["z"] == "still works"
    finally:
        for db in (first, second, third):
            db.close()
    # Once all are closed, the store is no longer open in this process: an exclusive open succeeds.
    with objstore.open(path, lock="exclusive", timeout=1) as db:
        assert db["z"] == "still works"
