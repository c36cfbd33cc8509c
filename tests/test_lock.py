"""The store's file locks (`objstore._lock`) between real processes.

Each test drives a child process that takes a lock, says so on its stdout,
and releases it when told on its stdin: every step is a handshake over the
pipes, with a deadline. Guarantees checked:

- the maintenance lock held by another process keeps this one out, and the
  timeout raises `LockTimeoutError` naming the lock file and the holder's pid;
- the openers lock: shared openers coexist, an exclusive one excludes every
  other opener (and waits for shared ones), with the same errors;
- `holders` reports the pids of the processes really holding a lock;
- lock files are never deleted: the same inode from first use to last.
"""

from __future__ import annotations

import os
import select
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from objstore import LockTimeoutError, _lock

DEADLINE = 20.0
SHORT = 0.2  # seconds: the timeout of an acquisition that must fail

HOLDER = r"""
import sys
from objstore import _lock

kind, directory, timeout = sys.argv[1], sys.argv[2], float(sys.argv[3])
try:
    if kind == "maintenance":
        held = _lock.maintenance(directory, timeout)
        held.__enter__()
        release = lambda: held.__exit__(None, None, None)
    else:
        lock = _lock.OpenersLock(directory, kind == "exclusive", timeout)
        if kind == "shared":
            lock.share(timeout)
        release = lock.close
except _lock.LockTimeoutError as exc:
    print("timeout", *exc.holders, flush=True)
    sys.exit(0)
print("held", flush=True)
if sys.stdin.readline() == "release\n":
    release()
    print("released", flush=True)
sys.stdin.readline()  # EOF: the test is done with us
"""


class Holder:
    """A child process holding one lock of the store in `directory` until `release`."""

    def __init__(self, kind: str, directory: Path, timeout: float = DEADLINE, expect: str = "held") -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-c", HOLDER, kind, str(directory), str(timeout)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.pid = self.process.pid
        self.first = self.expect(expect)

    def expect(self, start: str) -> str:
        """Wait for the child's next line, which must begin with `start`; return it."""
        stdout = self.process.stdout
        assert stdout is not None
        ready, _, _ = select.select([stdout], [], [], DEADLINE)
        assert ready, f"the lock holder said nothing within {DEADLINE} s (expected {start!r})"
        line = stdout.readline()
        assert line.split()[:1] == [start], line
        return line

    def release(self) -> None:
        stdin = self.process.stdin
        assert stdin is not None
        stdin.write("release\n")
        stdin.flush()
        self.expect("released")

    def close(self) -> None:
        for stream in (self.process.stdin, self.process.stdout):
            if stream is not None:
                stream.close()
        try:
            assert self.process.wait(DEADLINE) == 0
        finally:
            if self.process.poll() is None:  # pragma: no cover - only on a failure
                self.process.kill()
                self.process.wait(DEADLINE)


@pytest.fixture
def directory(tmp_path: Path) -> Path:
    return tmp_path


@pytest.fixture
def holders(directory: Path) -> Iterator[list[Holder]]:
    """Start holders with ``holders.append(Holder(kind, directory))``; all stopped after the test."""
    started: list[Holder] = []
    yield started
    for holder in started:
        holder.close()


needs_proc_locks = pytest.mark.skipif(not os.path.exists("/proc/locks"), reason="needs /proc/locks")


def check_timeout(error: LockTimeoutError, lock_file: Path, pids: tuple[int, ...]) -> None:
    assert error.lock_file == str(lock_file)
    assert str(lock_file) in str(error)
    if os.path.exists("/proc/locks"):
        assert error.holders == pids
        for pid in pids:
            assert str(pid) in str(error)


# -------------------------------------------------------------- maintenance


def test_maintenance_lock_excludes_another_process(directory: Path, holders: list[Holder]) -> None:
    holder = Holder("maintenance", directory)
    holders.append(holder)
    with pytest.raises(LockTimeoutError) as info:
        with _lock.maintenance(str(directory), SHORT):
            pytest.fail("acquired the maintenance lock another process holds")  # pragma: no cover
    check_timeout(info.value, directory / _lock.MAINTENANCE_LOCK, (holder.pid,))
    holder.release()
    with _lock.maintenance(str(directory), DEADLINE):
        pass
    # And it keeps the other process out in turn.
    with _lock.maintenance(str(directory), DEADLINE):
        refused = Holder("maintenance", directory, SHORT, expect="timeout")
        holders.append(refused)
        if os.path.exists("/proc/locks"):
            assert refused.first.split()[1:] == [str(os.getpid())]


def test_maintenance_lock_timeout_zero_fails_at_once(directory: Path, holders: list[Holder]) -> None:
    holders.append(Holder("maintenance", directory))
    with pytest.raises(LockTimeoutError) as info:
        with _lock.maintenance(str(directory), 0):
            pass  # pragma: no cover
    check_timeout(info.value, directory / _lock.MAINTENANCE_LOCK, (holders[0].pid,))


# ------------------------------------------------------------------ openers


def test_shared_openers_coexist_and_exclude_an_exclusive_one(directory: Path, holders: list[Holder]) -> None:
    holder = Holder("shared", directory)
    holders.append(holder)
    lock_file = directory / _lock.OPENERS_LOCK
    shared = _lock.OpenersLock(str(directory), False, SHORT)
    try:
        assert not shared.alone  # another process holds it
    finally:
        shared.close()
    with pytest.raises(LockTimeoutError) as info:
        _lock.OpenersLock(str(directory), True, SHORT)
    check_timeout(info.value, lock_file, (holder.pid,))
    # Nor does another process get it exclusively while this one shares it.
    mine = _lock.OpenersLock(str(directory), False, SHORT)
    try:
        refused = Holder("exclusive", directory, SHORT, expect="timeout")
        holders.append(refused)
        if os.path.exists("/proc/locks"):
            assert refused.first.split()[1:] == [str(p) for p in sorted((holder.pid, os.getpid()))]
    finally:
        mine.close()
    holder.release()
    exclusive = _lock.OpenersLock(str(directory), True, SHORT)
    try:
        assert exclusive.alone
    finally:
        exclusive.close()


@pytest.mark.parametrize("mine", [False, True])
def test_exclusive_opener_excludes_every_other(directory: Path, holders: list[Holder], mine: bool) -> None:
    holder = Holder("exclusive", directory)
    holders.append(holder)
    lock_file = directory / _lock.OPENERS_LOCK
    with pytest.raises(LockTimeoutError) as info:
        _lock.OpenersLock(str(directory), mine, SHORT)
    check_timeout(info.value, lock_file, (holder.pid,))
    holder.release()
    lock = _lock.OpenersLock(str(directory), mine, SHORT)
    try:
        assert lock.alone
    finally:
        lock.close()


def test_lone_opener_is_alone_until_it_shares(directory: Path, holders: list[Holder]) -> None:
    lock = _lock.OpenersLock(str(directory), False, SHORT)
    try:
        assert lock.alone
        lock.share(SHORT)
        holder = Holder("shared", directory)  # would wait for ever if the lock were still exclusive
        holders.append(holder)
        holder.release()
    finally:
        lock.close()


# ------------------------------------------------------------------ holders


@needs_proc_locks
def test_holders_reports_real_pids(directory: Path, holders: list[Holder]) -> None:
    openers = str(directory / _lock.OPENERS_LOCK)
    maintenance = str(directory / _lock.MAINTENANCE_LOCK)
    assert _lock.holders(openers) == ()  # no file yet
    first = Holder("shared", directory)
    second = Holder("shared", directory)
    holders.extend([first, second])
    assert _lock.holders(openers) == tuple(sorted((first.pid, second.pid)))
    mine = _lock.OpenersLock(str(directory), False, SHORT)
    try:
        assert _lock.holders(openers) == tuple(sorted((first.pid, second.pid, os.getpid())))
    finally:
        mine.close()
    first.release()
    assert _lock.holders(openers) == (second.pid,)
    second.release()
    assert _lock.holders(openers) == ()
    with _lock.maintenance(str(directory), SHORT):
        assert _lock.holders(maintenance) == (os.getpid(),)
    assert _lock.holders(maintenance) == ()


# ---------------------------------------------------------------- lock files


def test_lock_files_are_never_deleted(directory: Path, holders: list[Holder]) -> None:
    with _lock.maintenance(str(directory), SHORT):
        pass
    _lock.OpenersLock(str(directory), False, SHORT).close()
    names = {_lock.MAINTENANCE_LOCK, _lock.OPENERS_LOCK}
    inodes = {name: os.stat(directory / name).st_ino for name in names}
    for kind in ("maintenance", "shared", "exclusive"):
        holder = Holder(kind, directory)
        holders.append(holder)
        holder.release()
    with _lock.maintenance(str(directory), SHORT):
        pass
    lock = _lock.OpenersLock(str(directory), True, SHORT)
    lock.close()
    lock.close()  # idempotent
    assert {name: os.stat(directory / name).st_ino for name in names} == inodes
    assert set(os.listdir(directory)) == names


INTERRUPTED = r"""
import os, random, signal, sys, time
from objstore import _lock

base, seconds = sys.argv[1], float(sys.argv[2])
random.seed(int(sys.argv[3]))
signal.signal(signal.SIGALRM, signal.default_int_handler)  # the timer's signal acts as a Ctrl-C
interrupts = 0
deadline = time.monotonic() + seconds
for i in range(1_000_000):
    if time.monotonic() > deadline:
        break
    # A fresh directory, so a fresh lock instance: its first acquisitions are the slowest,
    # which widens the windows an interrupt can land in.
    directory = os.path.join(base, str(i))
    os.mkdir(directory)
    try:
        signal.setitimer(signal.ITIMER_REAL, random.uniform(0.00001, 0.0004))
        while True:
            with _lock.maintenance(directory, 5):
                pass
    except KeyboardInterrupt:
        interrupts += 1
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
    try:
        with _lock.maintenance(directory, 0.5):
            pass
    except _lock.LockTimeoutError as exc:
        print("left held after", interrupts, "interrupts:", exc, flush=True)
        sys.exit(1)
print("ok", interrupts, flush=True)
"""


def test_maintenance_lock_survives_interrupts_at_every_step(directory: Path) -> None:
    """A Ctrl-C landing anywhere in taking or releasing the maintenance lock leaves it free.

    filelock 4.1 (the last release for Python 3.10) leaks a descriptor that
    holds the lock when an exception lands between its flock and its
    bookkeeping; the process then times out on its own lock.
    """
    child = subprocess.run(
        [sys.executable, "-c", INTERRUPTED, str(directory), "4", "1"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert child.returncode == 0, child.stdout + child.stderr
    assert child.stdout.startswith("ok "), child.stdout
    assert int(child.stdout.split()[1]) > 20  # the timer really interrupted it
