"""The task bodies the concurrency tests run in other processes, and the crash tests' script.

Everything here is importable by name, so `multiprocessing` can run it under
the spawn and forkserver start methods (through the harnesses of
``_harness.py``), and this file is also a script that `subprocess` runs for
the crash tests (``python _tasks.py COMMAND ARGS``), where a real ``SIGKILL``
must hit a process that has nothing of pytest in it.
"""

from __future__ import annotations

import json
import os
import random
import sys
import time
from typing import Any

from _harness import payload, wait_pid

import objstore


def count_with_modify(path: str, key: str, times: int) -> int:
    with objstore.open(path) as db:
        for _ in range(times):
            db.modify(key, lambda n: n + 1, default=0)
    return os.getpid()


def count_with_transaction(path: str, key: str, times: int) -> int:
    with objstore.open(path) as db:
        for _ in range(times):
            with db.transaction() as txn:
                value = txn.get(key, 0)
                txn[key] = value + 1
    return os.getpid()


def count_with_edit(path: str, key: str, times: int) -> int:
    with objstore.open(path) as db:
        for _ in range(times):
            with db.edit(key, default=[]) as items:
                items.append(os.getpid())
    return os.getpid()


def open_with_flag(path: str, flag: str, rounds: int, name: str) -> int:
    """Open and close the store `rounds` times with `flag`, reading and (if allowed) writing each time."""
    for i in range(rounds):
        with objstore.open(path, flag) as db:
            assert db["seed"] == "present", db.get("seed")
            if flag == "r":
                try:
                    db["nope"] = 1
                except objstore.ReadOnlyError:
                    pass
                else:
                    raise AssertionError("a read-only shelf accepted a write")
            else:
                db[f"{name}-{i}"] = (name, i)
    return rounds


def create_and_write(path: str, name: str) -> str:
    with objstore.open(path, "c") as db:
        db[name] = os.getpid()
        return str(db.info()["settings"]["created_by"])


# Invariants: "a" == "b" always; the slots s0..s9 always sum to TOTAL.
SLOTS = 10
TOTAL = 1000


def seed_invariants(db: objstore.Shelf) -> None:
    with db.transaction() as txn:
        txn["a"] = txn["b"] = 0
        for i in range(SLOTS):
            txn[f"s{i}"] = TOTAL // SLOTS


def invariant_writer(path: str, seconds: float, seed: int) -> int:
    """Keep changing the invariant keys, each change in one transaction; return the number of commits."""
    rng = random.Random(seed)
    commits = 0
    deadline = time.monotonic() + seconds
    with objstore.open(path) as db:
        while time.monotonic() < deadline:
            kind = commits % 3
            if kind == 0:
                with db.transaction() as txn:
                    value = txn["a"] + 1
                    txn["a"] = value
                    src, dst = rng.sample(range(SLOTS), 2)
                    amount = rng.randint(0, txn[f"s{src}"])
                    txn[f"s{src}"] = txn[f"s{src}"] - amount
                    txn[f"s{dst}"] = txn[f"s{dst}"] + amount
                    txn["b"] = value
            elif kind == 1:
                value = db["a"] + 1  # a blind write: update() is one transaction
                db.update({"a": value, "b": value})
            else:
                with db.transaction() as txn:
                    values = [txn[f"s{i}"] for i in range(SLOTS)]
                    rng.shuffle(values)
                    for i, v in enumerate(values):
                        txn[f"s{i}"] = v
            commits += 1
    return commits


def invariant_reader(path: str, seconds: float, how: str) -> dict[str, Any]:
    """Check the invariants through `how` ("snapshot" or "transaction") until the time is up."""
    checks = 0
    violations: list[str] = []
    seen: set[int] = set()
    deadline = time.monotonic() + seconds
    with objstore.open(path, "r" if how == "snapshot" else "w") as db:
        while time.monotonic() < deadline:
            if how == "snapshot":
                with db.snapshot() as snap:
                    a = snap["a"]
                    slots = [snap[f"s{i}"] for i in range(SLOTS)]
                    b = snap["b"]
                    iterated = {k: v for k, v in snap.items() if k.startswith("s")}
            else:
                with db.transaction() as txn:
                    a = txn["a"]
                    slots = [txn[f"s{i}"] for i in range(SLOTS)]
                    b = txn["b"]
                    iterated = {k: v for k, v in txn.items() if k.startswith("s")}
            checks += 1
            seen.add(a)
            if a != b:
                violations.append(f"a={a} b={b}")
            if sum(slots) != TOTAL or sum(iterated.values()) != TOTAL:
                violations.append(f"slots sum to {sum(slots)} / {sum(iterated.values())}")
    return {
        "checks": checks,
        "violations": violations[:10],
        "violation_count": len(violations),
        "distinct": len(seen),
    }


def pool_task(db: objstore.Shelf, i: int) -> tuple[int, Any]:
    """Use a shelf that arrived pickled: read, write a key of our own, bump a shared counter."""
    seed = db["seed"]
    db[f"task{i:03d}"] = (os.getpid(), i)
    db.modify("count", lambda n: n + 1, default=0)
    return os.getpid(), seed


# Map growth under concurrency: every process passes the same tiny map size.
TINY_MAP = 64 * 1024


def grow_writer(path: str, count: int, barrier: Any = None) -> int:
    """Write `count` values of 2-16 KiB (singly and in update() batches), growing the map many times.

    Opens the store first, then waits at `barrier` (if given) before writing.
    """
    rng = random.Random(7)
    with objstore.open(path, map_size=TINY_MAP) as db:
        if barrier is not None:
            barrier.wait(30)
        i = 0
        while i < count:
            if i % 3 == 0:
                batch = {
                    f"g{j:05d}": payload(f"g{j:05d}", rng.randint(2048, 16384))
                    for j in range(i, min(i + 10, count))
                }
                db.update(batch)
                i += len(batch)
            else:
                key = f"g{i:05d}"
                db[key] = payload(key, rng.randint(2048, 16384))
                i += 1
        return int(db.info()["map_size"])


def _check_grown(db: objstore.Shelf | objstore.Snapshot, key: str) -> None:
    value = db[key]
    expected = payload(key, len(value))
    if value != expected:
        raise AssertionError(f"{key}: value damaged ({value[:40]!r}...)")


def grow_reader(path: str, seconds: float, flag: str, barrier: Any = None) -> int:
    """Read (plain gets, snapshots, iteration) what the grower writes, checking every value."""
    checks = 0
    with objstore.open(path, flag, map_size=TINY_MAP) as db:
        if barrier is not None:
            barrier.wait(30)
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            keys = list(db.keys())
            for key in keys[-20:]:
                if key.startswith("g"):
                    _check_grown(db, key)
            with db.snapshot() as snap:
                for key in snap:
                    if key.startswith("g"):
                        _check_grown(snap, key)
            checks += 1
    return checks


def grow_counter(path: str, times: int, barrier: Any = None) -> int:
    """Increment a counter with modify() and write small keys while the map grows."""
    with objstore.open(path, map_size=TINY_MAP) as db:
        if barrier is not None:
            barrier.wait(30)
        for i in range(times):
            db.modify("counter", lambda n: n + 1, default=0)
            db[f"c{os.getpid()}-{i:04d}"] = i
    return os.getpid()


def open_repeatedly(path: str, seconds: float, flag: str) -> int:
    """Open, read and close the store again and again (while another process grows it)."""
    opens = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with objstore.open(path, flag, map_size=TINY_MAP) as db:
            db.get("counter")
            len(db)
        opens += 1
    return opens


# ------------------------------------------------- subprocess commands
# Run as ``python _tasks.py COMMAND ARGS``; each prints what the test needs.


def crash_writer(path: str, keys: int, durability: str, map_size: int, growing: bool, seed: int) -> None:
    """Commit generation after generation until killed; print each acknowledged generation.

    Every transaction rewrites all `keys` keys with the new generation (and a
    payload of random size, growing with the generation if `growing`), plus
    ``__gen__``. The generation is printed only after the commit returned.
    """
    rng = random.Random(seed)
    db = objstore.open(path, "c", durability=durability, map_size=map_size)
    gen = db.get("__gen__", 0)
    print("ready", gen, flush=True)
    while True:
        gen += 1
        with db.transaction() as txn:
            for i in range(keys):
                top = 64 + gen * 64 if growing else 4096
                size = rng.randint(1, min(top, 48 * 1024))
                txn[f"k{i:03d}"] = (gen, rng.randbytes(size))
            txn["__gen__"] = gen
        print(gen, flush=True)


def check_generation(path: str, map_size: int) -> dict[str, Any]:
    """Open a store left by a killed crash_writer and report what a test must check."""
    started = time.monotonic()
    db = objstore.open(path, "c", map_size=map_size)
    opened = time.monotonic() - started
    info = db.info()
    with db.snapshot() as snap:
        gen = snap.get("__gen__")
        gens = sorted({snap[k][0] for k in snap if not k.startswith("__")})
        keys = sum(1 for k in snap if not k.startswith("__"))
    damaged = db.verify()
    started = time.monotonic()
    db["__probe__"] = os.getpid()
    write_seconds = time.monotonic() - started
    probe = db["__probe__"] == os.getpid()
    db.close()
    return {
        "gen": gen,
        "gens": gens,
        "keys": keys,
        "damaged": damaged,
        "open_seconds": opened,
        "write_seconds": write_seconds,
        "probe": probe,
        "map_size": info["map_size"],
    }


def hold_snapshots(path: str, count: int) -> None:
    """Open `count` snapshots, read through each, say so, and wait to be killed."""
    db = objstore.open(path, "r")
    snaps = [db.snapshot() for _ in range(count)]
    for snap in snaps:
        len(snap)
    print("ready", len(snaps), flush=True)
    time.sleep(600)


def hold_many_snapshots(path: str) -> None:
    """Take snapshots until the reader table is full, say how many, and wait to be killed."""
    db = objstore.open(path, "r")
    snaps = []
    try:
        while True:
            snaps.append(db.snapshot())
    except objstore.StoreError as exc:
        print("ready", len(snaps), type(exc).__name__, flush=True)
    time.sleep(600)


def create_store(path: str) -> None:
    """Say that imports are done, then create the store and write to it (killed at a random moment)."""
    print("imported", flush=True)
    with objstore.open(path, "c") as db:
        db["created"] = list(range(100))
    print("done", flush=True)


def fork_with_snapshot(path: str, how: str) -> dict[str, Any]:
    """Hold a snapshot, fork a child that works on the store and exits normally, then re-read the snapshot.

    `how` is what the child does before leaving through a normal interpreter
    exit (atexit handlers and finalisers run): "nothing", "use" (read and
    write through the inherited shelf, leave it open), "close" (use it, then
    close it).
    """
    db = objstore.open(path)
    db.update({f"v{i:03d}": ("original", i) for i in range(200)})
    snap = db.snapshot()
    pid = os.fork()
    if pid == 0:
        if how in ("use", "close"):
            assert db["v000"] == ("original", 0)
            db.update({f"v{i:03d}": ("child", i) for i in range(200)})
            for _ in range(50):
                db.modify("count", lambda n: n + 1, default=0)
            del db["v199"]
            if how == "close":
                db.close()
        sys.exit(0)  # a normal exit: atexit closes what is still open
    status = wait_pid(pid, 20)
    wrong = [k for k, v in snap.items() if v[0] != "original"]
    keys = len(snap)
    snap.close()
    return {
        "status": status,
        "wrong": len(wrong),
        "keys": keys,
        "now": db.get("v000"),
        "count": db.get("count"),
    }


def main(argv: list[str]) -> None:
    command, args = argv[0], argv[1:]
    if command == "crash-writer":
        crash_writer(args[0], int(args[1]), args[2], int(args[3]), args[4] == "growing", int(args[5]))
    elif command == "check-generation":
        print(json.dumps(check_generation(args[0], int(args[1]))), flush=True)
    elif command == "hold-snapshots":
        hold_snapshots(args[0], int(args[1]))
    elif command == "hold-many-snapshots":
        hold_many_snapshots(args[0])
    elif command == "create":
        create_store(args[0])
    elif command == "fork-with-snapshot":
        print(json.dumps(fork_with_snapshot(args[0], args[1])), flush=True)
    else:
        raise SystemExit(f"unknown command {command!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
