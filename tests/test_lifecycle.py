"""Closing, interrupts and map growth under concurrency: crashes, hangs and stale state.

Each scenario runs in a subprocess with a deadline, so that a segfault or a
hang is a clean failure of one test. Guarantees checked:

- closing a shelf while another thread reads a snapshot, iterates, writes or
  holds a transaction never crashes: the other thread finishes or gets
  `objstore.ClosedError`; interpreter exit while a daemon thread iterates a
  snapshot keeps the program's exit status;
- a Ctrl-C (a real SIGINT) while map growth waits for another thread's
  snapshot costs only the interrupted call;
- a thread that holds a snapshot and starts a write while another thread's
  growth waits for that snapshot deadlocks neither of them (``timeout=None``);
- Ctrl-C at any moment of commits, growth and close leaves every public
  operation working afterwards, and no ``lmdb`` exception ever escapes;
- two threads closing one shelf release the shared environment once.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

import objstore

DEADLINE = 60.0
ROOT = Path(__file__).resolve().parent.parent


def run_script(script: str, *args: str, timeout: float = DEADLINE) -> subprocess.CompletedProcess[str]:
    """Run `script` in a fresh interpreter; a hang fails the test instead of blocking it."""
    try:
        return subprocess.run(
            [sys.executable, "-c", textwrap.dedent(script), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=ROOT,
            env={**os.environ, "PYTHONFAULTHANDLER": "1"},
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"the script hung for {timeout} s; its output: {exc.stdout!r} {exc.stderr!r}")


def check_ok(result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode == 0, f"exit status {result.returncode}\n{result.stdout}\n{result.stderr}"
    assert result.stdout.strip().endswith("ok"), result.stdout + result.stderr


# ------------------------------------------------------------- closing


def test_close_while_another_thread_reads_a_snapshot(path: Path) -> None:
    result = run_script(
        """
        import sys, threading
        import objstore

        for trial in range(15):
            db = objstore.open(sys.argv[1] + str(trial))
            db.update((f"k{i:05}", "x" * 100) for i in range(3000))
            started, errors = threading.Event(), []

            def read():
                try:
                    with db.snapshot() as snap:
                        while True:
                            for key, value in snap.items():
                                started.set()
                except objstore.ClosedError:
                    pass
                except BaseException as exc:
                    errors.append(exc)
                finally:
                    started.set()

            thread = threading.Thread(target=read)
            thread.start()
            assert started.wait(30)
            db.close()
            thread.join(30)
            assert not thread.is_alive() and not errors, errors
        print("ok")
        """,
        str(path),
    )
    check_ok(result)


def test_exit_while_a_daemon_thread_iterates_a_snapshot(path: Path) -> None:
    with objstore.open(path) as db:
        db.update((f"k{i:05}", "x" * 100) for i in range(3000))
    script = """
        import os, sys, threading
        import objstore

        db = objstore.open(sys.argv[1], durability=sys.argv[2])
        db["last"] = "written"
        started = threading.Event()

        def read():
            try:
                while True:
                    with db.snapshot() as snap:
                        for key in snap:
                            started.set()
            except objstore.ClosedError:
                pass

        threading.Thread(target=read, daemon=True).start()
        started.wait(30)
        sys.exit(3)
        """
    for trial in range(10):
        durability = ("full", "normal", "off")[trial % 3]
        result = run_script(script, str(path), durability)
        assert result.returncode == 3, f"trial {trial}: exit status {result.returncode}\n{result.stderr}"
    with objstore.open(path, "r") as db:
        assert db["last"] == "written"


def test_close_while_other_threads_use_the_shelf(path: Path) -> None:
    """Threads in get/put/iteration/transaction/snapshot on a shelf another thread closes."""
    check_ok(
        run_script(CLOSE_UNDER_USE, str(path), "3.0", timeout=120),
    )


@pytest.mark.stress
@pytest.mark.timeout(400)
def test_close_while_other_threads_use_the_shelf_stress(path: Path) -> None:
    check_ok(run_script(CLOSE_UNDER_USE, str(path), "60", timeout=300))


CLOSE_UNDER_USE = """
    import random, sys, threading, time
    import objstore

    base, seconds = sys.argv[1], float(sys.argv[2])
    end = time.monotonic() + seconds
    errors, rounds = [], 0

    def use(db, kind, ready):
        ready.wait(30)
        try:
            while True:
                if kind == "get":
                    db.get("k1")
                elif kind == "put":
                    db[f"p{random.randrange(100)}"] = "v" * random.randrange(1000)
                elif kind == "iterate":
                    for _ in db.items():
                        pass
                elif kind == "transaction":
                    with db.transaction() as txn:
                        txn["t"] = txn.get("t", 0) + 1
                        for i in range(20):
                            txn[f"q{i}"] = i
                elif kind == "snapshot":
                    with db.snapshot() as snap:
                        for _ in snap.items():
                            pass
                elif kind == "modify":
                    db.modify("n", lambda n: n + 1, default=0)
        except objstore.ClosedError:
            pass
        except BaseException as exc:
            errors.append(repr(exc))

    while time.monotonic() < end or rounds < 3:
        path = f"{base}{rounds % 3}"
        db = objstore.open(path, timeout=20)
        other = objstore.open(path, timeout=20)  # a second shelf on the store stays usable
        db.update((f"k{i}", "x" * 50) for i in range(300))
        ready = threading.Event()
        kinds = ["get", "put", "iterate", "transaction", "snapshot", "modify"]
        threads = [threading.Thread(target=use, args=(db, kind, ready)) for kind in kinds]
        for t in threads:
            t.start()
        ready.set()
        time.sleep(random.random() * 0.02)
        if rounds % 2:
            other.close()
            other = None
        db.close()
        for t in threads:
            t.join(60)
            assert not t.is_alive(), "a thread hung after close"
        assert not errors, errors
        if other is not None:
            other["after"] = 1
            assert other["after"] == 1
            other.close()
        with objstore.open(path, timeout=20) as db:
            assert db["k1"] == "x" * 50
            db["reopened"] = True
        rounds += 1
    print(rounds, "ok")
    """


def test_two_threads_closing_one_shelf_release_once(path: Path) -> None:
    for _ in range(20):
        # durability "off": close() flushes, which leaves the other thread time to close too.
        db = objstore.open(path, durability="off")
        other = objstore.open(path, durability="off")
        try:
            barrier = threading.Barrier(2)
            errors: list[BaseException] = []

            def close(
                db: objstore.Shelf = db,
                barrier: threading.Barrier = barrier,
                errors: list[BaseException] = errors,
            ) -> None:
                try:
                    barrier.wait(10)
                    db.close()
                except BaseException as exc:
                    errors.append(exc)

            threads = [threading.Thread(target=close) for _ in range(2)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(30)
            assert not errors, errors
            other["k"] = "still open"
            assert other["k"] == "still open"
        finally:
            other.close()
            db.close()


def test_the_store_handle_releases_once(path: Path) -> None:
    """The storage handle itself is idempotent, whoever calls close() on it, however often."""
    db = objstore.open(path)
    other = objstore.open(path)
    try:
        store = db._source
        db.close()
        store.close()
        store.close()
        other["k"] = 1
        assert other["k"] == 1
    finally:
        other.close()


# --------------------------------------------------------- interrupts

# Grows the map (a 64 KiB one) with a 200 KiB value while another thread holds
# a snapshot; sends this process a real SIGINT as soon as the growth waits.
INTERRUPTED_GROWTH = """
    import os, signal, sys, threading, time
    import objstore

    db = objstore.open(sys.argv[1], map_size=1 << 16, timeout=None)
    db["a"] = 1
    holding, release = threading.Event(), threading.Event()

    def hold():
        with db.snapshot() as snap:
            snap["a"]
            holding.set()
            release.wait(60)

    holder = threading.Thread(target=hold)
    holder.start()
    assert holding.wait(30)
    environment = db._source._environment

    def interrupt():
        deadline = time.monotonic() + 30
        while not environment._resizing and time.monotonic() < deadline:
            time.sleep(0.001)
        os.kill(os.getpid(), signal.SIGINT)

    threading.Thread(target=interrupt, daemon=True).start()
    try:
        db["big"] = b"x" * 200_000
        print("growth did not wait")
    except KeyboardInterrupt:
        print("interrupted")
    release.set()
    holder.join(30)
    with db.snapshot() as snap:
        assert snap["a"] == 1
    with db.transaction() as txn:
        txn["b"] = 2
    db.update({"c": 3})
    db.modify("n", lambda n: n + 1, default=0)
    db["big"] = b"y" * 200_000
    db.clear()
    assert len(db) == 0
    db.close()
    print("ok")
    """


def test_interrupted_growth_costs_only_the_interrupted_call(path: Path) -> None:
    result = run_script(INTERRUPTED_GROWTH, str(path))
    check_ok(result)
    assert "interrupted" in result.stdout


def test_snapshot_holder_writing_while_growth_waits_for_it(path: Path) -> None:
    """Thread B holds a snapshot and writes while thread A's growth waits for B's snapshot."""
    result = run_script(
        """
        import sys, threading, time
        import objstore

        db = objstore.open(sys.argv[1], map_size=1 << 16, timeout=None)
        db["a"] = 1
        holding, errors = threading.Event(), []
        environment = db._source._environment

        def hold_and_write():
            try:
                with db.snapshot() as snap:
                    snap["a"]
                    holding.set()
                    while not environment._resizing:
                        time.sleep(0.001)
                    db["from b"] = 2  # waits for the growth that waits for this snapshot
                    with db.transaction() as txn:
                        txn["from b txn"] = 3
                    try:
                        snap["a"]
                    except objstore.TransactionError:
                        pass  # ended by the growth, as the docs say
            except BaseException as exc:
                errors.append(exc)

        b = threading.Thread(target=hold_and_write)
        b.start()
        assert holding.wait(30)
        db["big"] = b"x" * 200_000  # thread A: must grow the map
        b.join(30)
        assert not errors, errors
        assert db["from b"] == 2 and db["from b txn"] == 3 and len(db["big"]) == 200_000
        db.close()
        print("ok")
        """,
        str(path),
    )
    check_ok(result)


# SIGINTs at random short intervals while a thread commits transactions, grows
# the map and opens and closes shelves; after each interrupt every public
# operation must work, and no exception may come from lmdb.
RANDOM_INTERRUPTS = """
    import os, random, signal, sys, threading, time
    import objstore

    base, seconds = sys.argv[1], float(sys.argv[2])
    end = time.monotonic() + seconds
    stop = threading.Event()
    interrupts = escaped = 0
    leaks = []

    def fire():
        while not stop.is_set():
            time.sleep(random.uniform(0.0002, 0.004))
            os.kill(os.getpid(), signal.SIGINT)

    def check_exception(exc):
        if type(exc).__module__.startswith("lmdb"):
            leaks.append(repr(exc))

    def work(db, i):
        kind = i % 5
        if kind == 0:
            with db.transaction() as txn:
                txn[f"t{i % 50}"] = i
                with db.transaction() as inner:
                    inner["inner"] = i
        elif kind == 1:
            db[f"s{i % 50}"] = "v" * (i % 3000)
        elif kind == 2:
            db.update((f"u{j}", b"x" * 2000) for j in range(40))  # grows the small map
        elif kind == 3:
            with db.snapshot() as snap:
                len(snap)
        else:
            db.modify("n", lambda n: n + 1, default=0)

    def every_operation(db):
        db["check"] = 1
        assert db["check"] == 1
        assert "check" in db and db.get("check") == 1
        del db["check"]
        with db.transaction() as txn:
            txn["check"] = 2
        with db.snapshot() as snap:
            assert snap["check"] == 2
        db.update({"check": 3})
        assert db.modify("check", lambda n: n + 1) == 4
        list(db.items())
        db.sync()

    def on_sigint(signum, frame):
        # Raise only while armed, and disarm: the test's own bookkeeping
        # (counting, looping) is never interrupted, objstore's code always may be.
        if armed[0]:
            armed[0] = False
            raise KeyboardInterrupt

    armed = [False]
    signal.signal(signal.SIGINT, on_sigint)
    threading.Thread(target=fire, daemon=True).start()
    i = 0
    db = None
    path = f"{base}0"
    while time.monotonic() < end:
        try:
            armed[0] = True
            if db is None or db.closed:
                db = objstore.open(path, map_size=1 << 16, timeout=20)
            work(db, i)
            if i % 97 == 96:
                db.clear()
            if i % 13 == 12:
                db.close()
            armed[0] = False
        except KeyboardInterrupt:
            interrupts += 1
        except Exception as exc:
            check_exception(exc)
            raise
        i += 1
    stop.set()
    if db is None or db.closed:
        db = objstore.open(path, map_size=1 << 16, timeout=20)
    try:
        every_operation(db)
        other = objstore.open(path, timeout=20)
        every_operation(other)
        other.close()
        db.close()
        with objstore.open(path, timeout=20) as db:
            every_operation(db)
    except BaseException as exc:
        check_exception(exc)
        raise
    assert not leaks, leaks
    print(i, "operations", interrupts, "interrupts ok")
    """


def test_interrupts_at_random_moments_leave_everything_working(path: Path) -> None:
    result = run_script(RANDOM_INTERRUPTS, str(path), "4", timeout=120)
    check_ok(result)


@pytest.mark.stress
@pytest.mark.timeout(400)
def test_interrupts_at_random_moments_stress(path: Path) -> None:
    for round in range(10):
        result = run_script(RANDOM_INTERRUPTS, f"{path}{round}", "30", timeout=300)
        check_ok(result)


# ---------------------------------------------------------- map reserve


@pytest.mark.skipif(sys.maxsize <= 2**32, reason="the large reserve is for 64-bit address spaces")
def test_the_map_is_reserved_far_ahead_and_costs_no_disk(path: Path) -> None:
    with objstore.open(path, map_size=1 << 16) as db:  # a store whose recorded map is tiny
        db["a"] = "x" * 1000
    for flag in ("r", "w"):
        with objstore.open(path, flag) as db:
            assert db.info()["map_size"] >= 1 << 36
            assert db["a"] == "x" * 1000
    data = (path / "data.mdb").stat()
    assert data.st_size < 1 << 20 and data.st_blocks * 512 < 1 << 20


def test_another_process_growing_the_map_leaves_snapshots_alone(path: Path) -> None:
    """A process whose map the data does not outgrow never waits, and its snapshot lives on."""
    with objstore.open(path, map_size=1 << 16) as db:
        db["a"] = 1
    writer = """
        import sys
        import objstore
        with objstore.open(sys.argv[1], map_size=1 << 16) as db:
            for i in range(64):
                db.update((f"w{i}-{j}", b"x" * 4000) for j in range(32))  # 8 MiB in all
            assert db.info()["map_size"] >= 8 << 20
        print("ok")
        """
    # timeout=1: if this process had to remap, the snapshot would be ended after 1 s.
    with objstore.open(path, "r", timeout=1) as db, db.snapshot() as snap:
        grower = subprocess.Popen([sys.executable, "-c", textwrap.dedent(writer), str(path)], cwd=ROOT)
        try:
            while grower.poll() is None:
                assert db["a"] == 1
                assert snap["a"] == 1
            assert grower.wait(DEADLINE) == 0
        finally:
            if grower.poll() is None:
                grower.kill()
                grower.wait()
        assert len(db) > 2000 and snap["a"] == 1 and len(snap) == 1
