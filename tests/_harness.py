"""The harnesses the concurrency tests run their code with, in other processes and forked children.

Everything here is importable by name, so `multiprocessing` can run it under
the spawn and forkserver start methods. The code those processes run (the
task bodies and the script the crash tests start) is in ``_tasks.py``.

Three kinds of helpers:

- `run_processes`: start one process per task, let them begin together at a
  barrier, and collect each task's return value or traceback, with a deadline.
- `Remote`: a shelf held open in another process and driven step by step from
  the test, for scenarios that need a precise interleaving ("the other process
  has the store open while this one does X").
- `Forked` and `fork_call`: run a function in an ``os.fork()`` child of the
  calling process and get its result back, with a deadline; the child never
  returns into pytest.

`payload` (a value checkable from its key) is shared by the remote operations
and the tasks.
"""

from __future__ import annotations

import os
import pickle
import queue as queue_module
import select
import signal
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


# ---------------------------------------------------------------- data


def payload(key: str, size: int) -> bytes:
    """A value whose content can be checked from its key alone."""
    seed = key.encode() + b"|"
    return (seed * (size // len(seed) + 1))[:size]


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


def _signal(marker: str | None) -> None:
    """Create the file `marker` (if given): tells the test that this process got there."""
    if marker is not None:
        with open(marker, "w"):
            pass


def _op_big_transaction(
    db: objstore.Shelf, _: Any, prefix: str, count: int, size: int, started: str | None = None
) -> int:
    """Write `count` values of `size` bytes in one transaction; create `started` once it has begun."""
    with db.transaction() as txn:
        base = txn.get("base", 0)
        _signal(started)
        for i in range(count):
            txn[f"{prefix}{i:05d}"] = payload(f"{prefix}{i:05d}", size)
        txn["base"] = base + 1
    return count


class _SignalWhenPickled:
    """Bytes that create the file `marker` when pickled, and unpickle as the plain bytes."""

    def __init__(self, data: bytes, marker: str) -> None:
        self.data = data
        self.marker = marker

    def __reduce__(self) -> tuple[type[bytes], tuple[bytes]]:
        _signal(self.marker)
        return bytes, (self.data,)


def _op_big_update(
    db: objstore.Shelf, _: Any, prefix: str, count: int, size: int, started: str | None = None
) -> int:
    """Write `count` values of `size` bytes with one update(); create `started` once it has begun.

    update() pickles its values chunk by chunk inside its write transaction,
    so the first value's pickling says that the transaction has begun.
    """
    values: dict[str, Any] = {f"{prefix}{i:05d}": payload(f"{prefix}{i:05d}", size) for i in range(count)}
    if started is not None:
        first = f"{prefix}{0:05d}"
        values[first] = _SignalWhenPickled(values[first], started)
    db.update(values)
    return count


def _op_hold_transaction(db: objstore.Shelf, _: Any, marker: str, seconds: float) -> bool:
    """Hold a write transaction (with an uncommitted write) until `marker` is removed or time is up."""
    deadline = time.monotonic() + seconds
    with db.transaction() as txn:
        txn["held"] = "uncommitted"
        _signal(marker)
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
