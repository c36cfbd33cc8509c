"""Crashes: real ``SIGKILL`` of processes using the store.

Guarantees checked here:

- a writer killed at a random moment of a stream of transactions leaves a
  store that a fresh process opens cleanly, in which every key carries the
  generation of one committed transaction (no part of an uncommitted one),
  that generation is at least the last one the writer acknowledged (no
  acknowledged commit is lost), and where a new write succeeds at once (the
  killed writer's lock is recovered);
- the same while the map grows (a tiny initial map) and while the store is
  being created (it then opens cleanly with ``"c"``);
- reader slots left by killed readers are reclaimed: they neither pin old
  pages forever (the data file stops growing) nor keep other processes from
  opening the store and taking snapshots, even when they filled the reader
  table.

The killed processes run ``_tasks.py`` as a script, so nothing of pytest is
in them. The default run does a bounded number of rounds; ``--stress`` runs
the long versions.
"""

from __future__ import annotations

import json
import os
import random
import select
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

import objstore

TASKS = Path(__file__).with_name("_tasks.py")
KEYS = 20


def start(*args: Any) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(TASKS), *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_line(proc: subprocess.Popen[str], timeout: float = 20.0) -> str:
    """The next line the process prints; fails if none comes within `timeout` seconds."""
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    if not ready:
        proc.kill()
        proc.communicate(timeout=10)
        raise AssertionError(f"the process printed nothing within {timeout} s")
    line = proc.stdout.readline()
    if not line:
        _, err = proc.communicate(timeout=10)
        raise AssertionError(f"the process ended early: {err[-2000:]}")
    return line.strip()


def kill(proc: subprocess.Popen[str], may_have_finished: bool = False) -> tuple[str, str]:
    """SIGKILL the process; return what it printed."""
    os.kill(proc.pid, signal.SIGKILL)
    out, err = proc.communicate(timeout=20)
    expected = (-signal.SIGKILL, 0) if may_have_finished else (-signal.SIGKILL,)
    assert proc.returncode in expected, (proc.returncode, err[-2000:])
    return out, err


def check(path: Path, map_size: int) -> dict[str, Any]:
    """Open the store in a fresh process and report its generations (see _tasks.check_generation)."""
    result = subprocess.run(
        [sys.executable, str(TASKS), "check-generation", str(path), str(map_size)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report: dict[str, Any] = json.loads(result.stdout.splitlines()[-1])
    return report


def crash_rounds(
    path: Path, rounds: int, durability: str, map_size: int, growing: bool, seed: int
) -> list[int]:
    """Run kill -9 rounds against one store; return the generation found after each round."""
    rng = random.Random(seed)
    found = []
    for round_ in range(rounds):
        writer = start(
            "crash-writer", path, KEYS, durability, map_size, "growing" if growing else "fixed", seed + round_
        )
        if rng.random() < 0.15:
            # Sometimes before the store is even open.
            time.sleep(rng.uniform(0, 0.08))
            out, _ = kill(writer)
        else:
            assert wait_line(writer).startswith("ready")
            time.sleep(rng.uniform(0, 0.25))
            out, _ = kill(writer)
        # A line cut by the kill is not an acknowledgement: only complete lines count.
        complete = out.split("\n")[:-1]
        acked = [int(line) for line in complete if line.isdigit()]
        report = check(path, map_size)
        context = f"round {round_}: acknowledged up to {acked[-1] if acked else None}, found {report}"
        if report["gen"] is None:
            assert not acked and report["keys"] == 0, context
            found.append(0)
            continue
        assert report["gens"] == [report["gen"]], f"keys from different transactions: {context}"
        assert report["keys"] == KEYS, context
        if acked:
            assert report["gen"] >= acked[-1], f"an acknowledged transaction was lost: {context}"
            assert report["gen"] <= acked[-1] + 1, f"more than one unacknowledged transaction: {context}"
        assert report["damaged"] == [], context
        assert report["probe"], context
        assert report["write_seconds"] < 2.0, f"the next write waited for the killed writer: {context}"
        found.append(report["gen"])
    return found


@pytest.mark.timeout(60)
@pytest.mark.parametrize("durability", ["full", "off"])
def test_kill_writer_during_transactions(path: Path, durability: str) -> None:
    found = crash_rounds(path, 20, durability, 1 << 30, growing=False, seed=11)
    assert found == sorted(found), "the generation went backwards between rounds"
    assert found[-1] > 20, "the writer committed little before being killed: the test tested little"


@pytest.mark.timeout(60)
def test_kill_writer_during_map_growth(tmp_path: Path) -> None:
    """Each round kills a writer on a fresh store with a 64 KiB map that its growing values keep growing."""
    grown = 0
    rng = random.Random(13)
    for round_ in range(12):
        path = tmp_path / f"store{round_}"
        writer = start("crash-writer", path, KEYS, "full", 64 * 1024, "growing", round_)
        assert wait_line(writer).startswith("ready")
        time.sleep(rng.uniform(0.02, 0.4))
        out, _ = kill(writer)
        acked = [int(line) for line in out.split("\n")[:-1] if line.isdigit()]
        report = check(path, 64 * 1024)
        context = f"round {round_}: acknowledged up to {acked[-1] if acked else None}, found {report}"
        if acked:
            assert report["gens"] == [report["gen"]], context
            assert report["gen"] >= acked[-1], context
        assert report["damaged"] == [], context
        assert report["write_seconds"] < 2.0, context
        grown += report["map_size"] > 64 * 1024
    assert grown >= 6, f"the map grew before the kill in only {grown} of 12 rounds"


@pytest.mark.timeout(60)
def test_kill_during_store_creation(tmp_path: Path) -> None:
    """Kill a process that is creating a store (a few milliseconds of work); "c" then opens it cleanly."""
    rng = random.Random(17)
    rounds, interrupted = 30, 0
    for round_ in range(rounds):
        path = tmp_path / f"store{round_}"
        creator = start("create", path)
        assert wait_line(creator) == "imported"
        time.sleep(rng.uniform(0, 0.004))
        out, _ = kill(creator, may_have_finished=True)
        interrupted += "done" not in out
        for flag in ("r", "w"):
            try:
                with objstore.open(path, flag, timeout=5) as db:
                    dict(db.items())
            except objstore.StoreNotFoundError:
                pass  # creation did not get far enough; "c" must finish it
        with objstore.open(path, "c", timeout=5) as db:
            content = dict(db.items())
            assert content in ({}, {"created": list(range(100))}), content
            if "done" in out:
                assert content == {"created": list(range(100))}
            db["after"] = round_
        with objstore.open(path, "r") as db:
            assert db["after"] == round_
    assert interrupted >= 5, f"only {interrupted} of {rounds} creators were killed before finishing"


# ---------------------------------------------------------- reader slots


def hold_and_kill(path: Path, holders: int, snapshots: int) -> None:
    procs = [start("hold-snapshots", path, snapshots) for _ in range(holders)]
    try:
        for proc in procs:
            assert wait_line(proc) == f"ready {snapshots}"
    finally:
        for proc in procs:
            if proc.poll() is None:
                kill(proc)


@pytest.mark.timeout(60)
def test_stale_readers_do_not_pin_pages(path: Path) -> None:
    """Killed snapshot holders must not make the data file grow with every rewrite."""
    values = {f"k{i:03d}": os.urandom(8000) for i in range(40)}
    with objstore.open(path) as db:
        db.update(values)
        baseline = db.info()["file_bytes"]
    hold_and_kill(path, holders=3, snapshots=4)
    # A new opener reclaims the dead readers' slots; then rewrite everything many times.
    with objstore.open(path) as db:
        for _ in range(25):
            db.update({k: os.urandom(8000) for k in values})
        grown = db.info()["file_bytes"]
    # With no stale reader the file settles near 3x (old and new copies of the
    # pages plus LMDB's free list); pinned pages add a full copy per rewrite (~25x).
    assert grown < 6 * baseline, (
        f"the data file grew from {baseline} to {grown} bytes: stale readers pin pages"
    )


@pytest.mark.timeout(60)
def test_reader_table_filled_by_killed_processes(path: Path) -> None:
    """Killed processes that filled the whole reader table keep nobody out."""
    with objstore.open(path) as db:
        db["key"] = "value"
    # Another process has the store open all along, so LMDB never resets the table by itself.
    with objstore.open(path) as long_lived:
        for _ in range(2):
            filler = start("hold-many-snapshots", path)
            line = wait_line(filler)
            assert line.startswith("ready"), line
            assert int(line.split()[1]) > 900, line
            kill(filler)
            # The process that was open all along can take many snapshots again.
            snaps = [long_lived.snapshot() for _ in range(200)]
            assert all(s["key"] == "value" for s in snaps)
            for snap in snaps:
                snap.close()
        # A new process can open the store and take many snapshots.
        result = subprocess.run(
            [
                sys.executable,
                "-c",
                "import objstore, sys\n"
                "db = objstore.open(sys.argv[1], 'r')\n"
                "snaps = [db.snapshot() for _ in range(500)]\n"
                "print(sum(s['key'] == 'value' for s in snaps))\n",
                str(path),
            ],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert result.returncode == 0, result.stderr[-2000:]
        assert result.stdout.strip() == "500"
        long_lived["after"] = 1


@pytest.mark.timeout(60)
def test_many_killed_readers_leave_the_store_usable(path: Path) -> None:
    with objstore.open(path) as db:
        db["key"] = "value"
    with objstore.open(path) as long_lived:
        for _ in range(3):
            hold_and_kill(path, holders=4, snapshots=50)
        with objstore.open(path, "r") as same_process:
            assert same_process["key"] == "value"
        result = subprocess.run(
            [
                sys.executable,
                "-c",
                "import objstore, sys; print(objstore.open(sys.argv[1], 'w')['key'])",
                str(path),
            ],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert result.returncode == 0 and result.stdout.strip() == "value", result.stderr[-2000:]
        long_lived["key"] = "still writable"
        assert long_lived["key"] == "still writable"


# ------------------------------------------------------------- stress


@pytest.mark.stress
@pytest.mark.timeout(900)
@pytest.mark.parametrize("durability", ["full", "normal", "off"])
def test_stress_kill_writer_during_transactions(path: Path, durability: str) -> None:
    found = crash_rounds(path, 300, durability, 1 << 30, growing=False, seed=101)
    assert found == sorted(found)


@pytest.mark.stress
@pytest.mark.timeout(900)
def test_stress_kill_writer_during_growth(path: Path) -> None:
    """One store, growing values, a small initial map: many kill rounds across many growths."""
    crash_rounds(path, 200, "full", 64 * 1024, growing=True, seed=202)
