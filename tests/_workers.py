"""Code that the concurrency tests run in other processes.

Everything here is importable by name, so `multiprocessing` can run it under
the spawn and forkserver start methods, and this file is also a script that
`subprocess` runs for the crash tests (``python _workers.py COMMAND ARGS``),
where a real ``SIGKILL`` must hit a process that has nothing of pytest in it.

Three kinds of helpers:

- `run_processes`: start one process per task, let them begin together at a
  barrier, and collect each task's return value or traceback, with a deadline.
- `Remote`: a shelf held open in another process and driven step by step from
  the test, for scenarios that need a precise interleaving ("the other process
  has the store open while this one does X").
- `Forked` and `fork_call`: run a function in an ``os.fork()`` child of the
  calling process and get its result back, with a deadline; the child never
  returns into pytest.
"""

from __future__ import annotations

import json
import os
import pickle
import queue as queue_module
import random
import select
import signal
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from typing import Any

import objstore

# ------------------------------------------------------------- processes


class ChildFailed(AssertionError):
    """A task run in another process raised; the message carries its traceback."""


def _report(queue: Any, index: int, barrier: Any, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
    try:
        if barrier is not None:
            barrier.wait(30)
        result = fn(*args)
    except BaseException:
        queue.put((index, False, traceback.format_exc()))
    else:
        queue.put((index, True, result))


def run_processes(
    ctx: Any,
    tasks: Sequence[tuple[Callable[..., Any], tuple[Any, ...]]],
    timeout: float = 45.0,
    together: bool = True,
) -> list[Any]:
    """Run each ``(fn, args)`` in its own process of context `ctx`; return their results in order.

    With `together`, every process waits at a barrier before calling its
    function, so they really run at the same time. Raises `ChildFailed` with
    the child's traceback if a task raised, and `TimeoutError` (after killing
    the children) if they did not all finish within `timeout` seconds.
    """
    queue = ctx.Queue()
    barrier = ctx.Barrier(len(tasks)) if together else None
    procs = [
        ctx.Process(target=_report, args=(queue, i, barrier, fn, args), daemon=True)
        for i, (fn, args) in enumerate(tasks)
    ]
    for proc in procs:
        proc.start()
    deadline = time.monotonic() + timeout
    results: dict[int, Any] = {}
    failures: list[str] = []
    try:
        while len(results) + len(failures) < len(tasks):
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(
                    f"{len(tasks) - len(results) - len(failures)} of {len(tasks)} processes did not finish "
                    f"within {timeout} s (deadlock?)"
                )
            try:
                index, ok, value = queue.get(timeout=min(left, 1.0))
            except queue_module.Empty:
                dead = [p for p in procs if p.exitcode not in (None, 0)]
                if dead and len(results) + len(failures) + len(dead) >= len(tasks):
                    # A child died without reporting (a crash, not an exception).
                    raise ChildFailed(
                        f"processes died without reporting: exit codes {[p.exitcode for p in dead]}"
                    ) from None
                continue
            if ok:
                results[index] = value
            else:
                failures.append(f"task {index} ({tasks[index][0].__name__}) raised:\n{value}")
        if failures:
            raise ChildFailed("\n".join(failures))
    finally:
        for proc in procs:
            proc.join(max(0.1, deadline - time.monotonic()))
            if proc.is_alive():
                proc.kill()
                proc.join(5)
        queue.close()
        queue.join_thread()
    return [results[i] for i in range(len(tasks))]


# --------------------------------------------------------------- remote


def _serve(conn: Any, path: str, kwargs: dict[str, Any]) -> None:
    try:
        db = objstore.open(path, **kwargs)
    except BaseException as exc:
        conn.send(("error", exc))
        return
    conn.send(("ready", os.getpid()))
    snapshots: dict[int, objstore.Snapshot] = {}
    while True:
        if not conn.poll(60):
            return  # the test is gone
        op, args = conn.recv()
        if op == "exit":
            conn.send(("ok", None))
            return
        try:
            result = _OPS[op](db, snapshots, *args)
        except BaseException as exc:
            conn.send(("raise", exc))
        else:
            conn.send(("ok", result))


def _op_snapshot(db: objstore.Shelf, snapshots: dict[int, objstore.Snapshot]) -> int:
    snap = db.snapshot()
    snapshots[id(snap)] = snap
    return id(snap)


def _op_big_transaction(db: objstore.Shelf, _: Any, prefix: str, count: int, size: int) -> int:
    with db.transaction() as txn:
        base = txn.get("base", 0)
        for i in range(count):
            txn[f"{prefix}{i:05d}"] = payload(f"{prefix}{i:05d}", size)
        txn["base"] = base + 1
    return count


def _op_big_update(db: objstore.Shelf, _: Any, prefix: str, count: int, size: int) -> int:
    db.update({f"{prefix}{i:05d}": payload(f"{prefix}{i:05d}", size) for i in range(count)})
    return count


def _op_hold_transaction(db: objstore.Shelf, _: Any, marker: str, seconds: float) -> bool:
    """Hold a write transaction (with an uncommitted write) until `marker` is removed or time is up."""
    deadline = time.monotonic() + seconds
    with db.transaction() as txn:
        txn["held"] = "uncommitted"
        with open(marker, "w"):
            pass
        while os.path.exists(marker) and time.monotonic() < deadline:
            time.sleep(0.01)
    return not os.path.exists(marker)


_OPS: dict[str, Callable[..., Any]] = {
    "hold_transaction": _op_hold_transaction,
    "get": lambda db, _, key: db[key],
    "get_default": lambda db, _, key, default: db.get(key, default),
    "set": lambda db, _, key, value: db.__setitem__(key, value),
    "delete": lambda db, _, key: db.__delitem__(key),
    "contains": lambda db, _, key: key in db,
    "len": lambda db, _: len(db),
    "items": lambda db, _: dict(db.items()),
    "append": lambda db, _, key, value: db[key].append(value),
    "append_via_get": lambda db, _, key, value: db.get(key).append(value),
    "read_via_get": lambda db, _, key: db.get(key),
    "modify_add": lambda db, _, key, n: db.modify(key, lambda v: v + n, default=0),
    "sync": lambda db, _: db.sync(),
    "close": lambda db, _: db.close(),
    "info": lambda db, _: db.info(),
    "snapshot": _op_snapshot,
    "snapshot_items": lambda db, snaps, sid: dict(snaps[sid].items()),
    "snapshot_close": lambda db, snaps, sid: snaps.pop(sid).close(),
    "big_transaction": _op_big_transaction,
    "big_update": _op_big_update,
}


class Remote:
    """A shelf opened in another process, driven one call at a time.

    ``Remote(ctx, path, flag="c", writeback=True)`` opens the store in a new
    process (keyword arguments go to `objstore.open`); `call` runs one
    operation there and returns its result or raises its exception here. If
    opening fails, the constructor raises that error. With ``wait=False`` the
    constructor returns at once and `opened` waits for the opening.
    """

    def __init__(
        self, ctx: Any, path: Any, answer_timeout: float = 30.0, wait: bool = True, **kwargs: Any
    ) -> None:
        self._timeout = answer_timeout
        self.pid = 0
        self._conn, child = ctx.Pipe()
        self.process = ctx.Process(target=_serve, args=(child, str(path), kwargs), daemon=True)
        self.process.start()
        child.close()
        if wait:
            self.opened()

    def opened(self, timeout: float | None = None) -> int:
        """Wait until the store is open in the other process; return that process's id."""
        try:
            status, value = self._recv(self._timeout if timeout is None else timeout)
        except BaseException:
            self.stop()
            raise
        if status == "error":
            self.stop()
            raise value
        self.pid = value
        return self.pid

    def _recv(self, timeout: float) -> Any:
        if not self._conn.poll(timeout):
            raise TimeoutError(f"the process serving the store did not answer within {timeout} s (deadlock?)")
        return self._conn.recv()

    def call(self, op: str, *args: Any, timeout: float | None = None) -> Any:
        self._conn.send((op, args))
        status, value = self._recv(self._timeout if timeout is None else timeout)
        if status == "raise":
            raise value
        return value

    def send(self, op: str, *args: Any) -> None:
        """Start an operation without waiting for it; collect its result with `result`."""
        self._conn.send((op, args))

    def result(self, timeout: float | None = None) -> Any:
        status, value = self._recv(self._timeout if timeout is None else timeout)
        if status == "raise":
            raise value
        return value

    def stop(self) -> None:
        """End the serving process (normally if it answers, else by killing it)."""
        if self.process.is_alive():
            try:
                self._conn.send(("exit", ()))
                self._conn.poll(5)
            except OSError:
                pass
            self.process.join(5)
            if self.process.is_alive():
                self.process.kill()
                self.process.join(5)
        self._conn.close()

    def __enter__(self) -> Remote:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# ------------------------------------------------------------------ fork


class Forked:
    """A function running in an ``os.fork()`` child of this process; `result` collects its return value.

    The child sends its (picklable) result through a pipe and leaves with
    ``os._exit``, so it never runs the parent's pytest machinery or atexit
    handlers.
    """

    def __init__(self, fn: Callable[[], Any]) -> None:
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - runs in the child
            code = 0
            try:
                os.close(read_end)
                try:
                    blob = pickle.dumps((True, fn()))
                except BaseException:
                    blob = pickle.dumps((False, traceback.format_exc()))
                    code = 1
                with os.fdopen(write_end, "wb") as out:
                    out.write(blob)
            finally:
                os._exit(code)
        os.close(write_end)
        self.pid = pid
        self._pipe = read_end

    def result(self, timeout: float = 20.0) -> Any:
        """Wait for the child; return its result, raise `ChildFailed` if it raised, `TimeoutError` if it hung.

        A child still running after `timeout` seconds is killed.
        """
        chunks = []
        deadline = time.monotonic() + timeout
        try:
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"the forked child did not finish within {timeout} s (deadlock?)")
                ready, _, _ = select.select([self._pipe], [], [], left)
                if ready:
                    chunk = os.read(self._pipe, 1 << 16)
                    if not chunk:
                        break
                    chunks.append(chunk)
        finally:
            os.close(self._pipe)
            status = wait_pid(self.pid, max(0.5, deadline - time.monotonic()))
        if not chunks:
            raise ChildFailed(f"the forked child reported nothing (wait status {status})")
        ok, value = pickle.loads(b"".join(chunks))
        if not ok:
            raise ChildFailed(f"the forked child raised:\n{value}")
        return value


def fork_call(fn: Callable[[], Any], timeout: float = 20.0) -> Any:
    """Run `fn` in an ``os.fork()`` child and return its result (see `Forked`)."""
    return Forked(fn).result(timeout)


def wait_pid(pid: int, timeout: float) -> int:
    """Reap child `pid`, killing it if it has not exited within `timeout` seconds; return its status."""
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return status
        if time.monotonic() >= deadline:
            os.kill(pid, signal.SIGKILL)
            return os.waitpid(pid, 0)[1]
        time.sleep(0.005)


# ---------------------------------------------------------- task bodies


def payload(key: str, size: int) -> bytes:
    """A value whose content can be checked from its key alone."""
    seed = key.encode() + b"|"
    return (seed * (size // len(seed) + 1))[:size]


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
# Run as ``python _workers.py COMMAND ARGS``; each prints what the test needs.


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
