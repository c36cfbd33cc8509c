"""The file locks of a store: what LMDB's own locks do not cover.

LMDB serialises writers and gives readers snapshots, across processes. Two
things it does not do are done here, each with its own file inside the store
directory (never LMDB's ``data.mdb`` or ``lock.mdb``: opening and closing those
from a process that has the environment open drops LMDB's own locks):

``objstore.lock``, the maintenance lock (a ``filelock.FileLock``)
    Held for milliseconds around what must not interleave between processes:
    creating and initialising a store, and growing its map. Exclusive; waits
    up to the store's timeout.

``objstore.openers``, the openers lock (``fcntl.flock``)
    Held for as long as a process has the store open: shared by ordinary
    openers, exclusive with ``lock="exclusive"``, so an exclusive opener is the
    only process using the store. filelock has no shared mode, hence flock.
    The lock is released by closing its descriptor, never by ``LOCK_UN``: a
    forked child shares the descriptor's lock, and ``LOCK_UN`` from either
    process would release it for both.

    An opener that finds nobody else holding it (`OpenersLock.alone`) may
    create LMDB's ``lock.mdb``, and records the identity (device, inode) of
    that ``lock.mdb`` in this file; later openers compare, so a ``lock.mdb``
    deleted or replaced while the store is open is detected instead of
    silently splitting the openers into two groups that no longer exclude
    each other.

Lock files are never deleted (waiters must share one inode). A process that
may not write them (a read-only filesystem, or another user's store opened
with flag ``"r"``) opens the openers lock read-only: ``flock`` works there.
"""

from __future__ import annotations

import errno
import os
import signal
import threading
import time
from collections.abc import Callable
from contextlib import suppress
from typing import Any

import filelock

from ._errors import LockTimeoutError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows has no flock
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "MAINTENANCE_LOCK", "OPENERS_LOCK", "OpenersLock", "create", "holders", "maintenance", "reset_after_fork"
]  # fmt: skip

MAINTENANCE_LOCK = "objstore.lock"
_LONE_OPENER_GRACE = 0.5  # seconds: far longer than a lone opener's exclusive moment
OPENERS_LOCK = "objstore.openers"

# Errors that mean "cannot create or open a lock file here", which for a
# read-only open means "nobody can write this store": proceed without locks.
UNWRITABLE = frozenset({errno.EROFS, errno.EACCES, errno.EPERM})

# One FileLock per lock file per process: two instances on one path block
# each other even in one thread, and an instance inherited across fork refuses
# to acquire, so the child starts a fresh table.
_maintenance_locks: dict[str, filelock.FileLock] = {}
_table_lock = threading.Lock()


def reset_after_fork() -> None:
    """Forget every lock instance inherited from the parent (run in a forked child)."""
    global _table_lock
    _maintenance_locks.clear()
    _table_lock = threading.Lock()


def holders(path: str) -> tuple[int, ...]:
    """Return the ids of processes holding a lock on the file at `path`, where the platform tells."""
    try:
        st = os.stat(path)
        with open("/proc/locks", encoding="ascii") as table:
            lines = table.read().splitlines()
    except OSError:
        return ()
    wanted = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    pids = []
    for line in lines:
        fields = line.split()
        # "1: FLOCK  ADVISORY  WRITE 4242 fd:01:1311 0 EOF"; waiting locks carry "->".
        if "->" in fields:
            continue
        if len(fields) >= 6 and fields[5] == wanted and fields[4].isdigit():
            pids.append(int(fields[4]))
    return tuple(sorted(set(pids)))


def _timeout_error(what: str, path: str, timeout: float | None) -> LockTimeoutError:
    pids = holders(path)
    held_by = f"held by process {', '.join(map(str, pids))}" if pids else "holder unknown"
    return LockTimeoutError(
        f"timed out after {timeout} s waiting for the {what} lock {path!r} ({held_by}); "
        "wait for that process to finish or pass a longer timeout=",
        path,
        pids,
    )


def _poll(attempt: Callable[[], bool], timeout: float | None) -> bool:
    """Call `attempt` until it succeeds (True) or `timeout` seconds have passed (False; None: never).

    Both locks wait this way, by quick non-blocking attempts with a growing pause.
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    pause = 0.001
    while not attempt():
        if deadline is not None and time.monotonic() >= deadline:
            return False
        time.sleep(pause)
        pause = min(pause * 2, 0.05)
    return True


def create(path: str, mode: int) -> None:
    """Create the lock file `path` with `mode` (filtered by the umask) unless it exists.

    A new store's lock files are made this way, with the same bits as its data
    file: filelock would make them 0o666 (or chmod them, ignoring the umask).
    """
    os.close(os.open(path, os.O_RDONLY | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), mode))


# The signals whose Python handlers are held back: Ctrl-C and those programs commonly
# handle by raising. Not every valid signal: asking for a handler costs about 1 us each.
_HELD_SIGNALS = tuple(
    getattr(signal, name)
    for name in ("SIGINT", "SIGTERM", "SIGHUP", "SIGQUIT", "SIGALRM", "SIGUSR1", "SIGUSR2")
    if hasattr(signal, name)
)


class _signals_held:  # lower case: used like a function, `with _signals_held():`
    """Hold back Python signal handlers (Ctrl-C's KeyboardInterrupt) for a few lines.

    filelock cannot survive an exception that lands between its flock and its
    own bookkeeping: filelock 4.1 (the last release for Python 3.10) then
    leaks a descriptor that holds the lock, and every later acquisition of the
    process times out on its own lock. The signals held back are those of
    `_HELD_SIGNALS`. Handlers run only in the main thread, so only there is
    anything held back; a signal that arrives meanwhile is handled, by its
    own handler, on the way out.
    """

    __slots__ = ("_pending", "_previous")

    def __enter__(self) -> None:
        self._previous: dict[int, Any] = {}
        self._pending: list[tuple[int, Any]] = []
        if threading.current_thread() is not threading.main_thread():
            return
        for signum in _HELD_SIGNALS:
            handler = signal.getsignal(signum)
            if callable(handler):
                self._previous[signum] = signal.signal(signum, self._hold)

    def _hold(self, signum: int, frame: Any) -> None:
        self._pending.append((signum, frame))

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        for signum, frame in self._pending:
            self._previous[signum](signum, frame)


class maintenance:  # lower case: used like a function, `with maintenance(path, timeout):`
    """Hold the maintenance lock of the store in `directory` for a ``with`` block.

    A class, not a generator: a KeyboardInterrupt between taking the lock and
    entering the block must not leave it held (a generator's cleanup would wait
    for its garbage collection, and every later growth of the process would
    time out). What was taken is read from the lock's own level count. Each
    call into filelock runs with signal handlers held back (`_signals_held`),
    so waiting is a loop of quick attempts (`_poll`): Ctrl-C still interrupts
    the wait.
    """

    __slots__ = ("_level", "_lock", "_path", "_timeout")

    def __init__(self, directory: str, timeout: float | None) -> None:
        self._path = os.path.join(directory, MAINTENANCE_LOCK)
        self._timeout = timeout
        with _table_lock:
            lock = _maintenance_locks.get(self._path)
            if lock is None:
                lock = _maintenance_locks[self._path] = filelock.FileLock(self._path)
        self._lock = lock
        self._level = 0

    def __enter__(self) -> None:
        self._level = self._lock.lock_counter
        try:
            taken = _poll(self._attempt, self._timeout)
        except BaseException:
            self._release()  # interrupted after the lock was taken
            raise
        if not taken:
            raise _timeout_error("maintenance", self._path, self._timeout)

    def _attempt(self) -> bool:
        with _signals_held():
            try:
                self._lock.acquire(blocking=False)
            except filelock.Timeout:
                return False
        return True

    def __exit__(self, *exc: object) -> None:
        self._release()

    def _release(self) -> None:
        with _signals_held():
            for _ in range(self._lock.lock_counter - self._level):
                self._lock.release()


class OpenersLock:
    """The lock a process holds on a store for as long as it has it open.

    `alone` says whether no other process held it when it was taken; such an
    opener holds it exclusively until `share` (see `_open`), so that what it
    does first cannot interleave with another opener's checks.
    """

    __slots__ = ("alone", "exclusive", "fd", "path", "writable")

    def __init__(
        self, directory: str, exclusive: bool, timeout: float | None, mode: int = 0o666, reading: bool = False
    ) -> None:
        self.path = os.path.join(directory, OPENERS_LOCK)
        self.exclusive = exclusive
        self.alone = False
        cloexec = getattr(os, "O_CLOEXEC", 0)
        try:
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | cloexec, mode)
            self.writable = True
        except OSError as exc:
            # A reader that may not write the file still takes the lock (flock
            # needs no write access), so it counts as an opener.
            if not reading or exc.errno not in UNWRITABLE or not os.path.exists(self.path):
                raise
            self.fd = os.open(self.path, os.O_RDONLY | cloexec)
            self.writable = False
        try:
            self._acquire(timeout)
        except BaseException:
            os.close(self.fd)
            raise

    def _acquire(self, timeout: float | None) -> None:
        if fcntl is None:  # pragma: no cover - Windows
            if self.exclusive:
                raise NotImplementedError("lock='exclusive' needs fcntl.flock (POSIX)")
            self.alone = True  # unknown: no check of lock.mdb's identity
            return
        # First try to be alone (exclusive); an ordinary opener that is not
        # alone settles for the shared lock.
        if self._try(fcntl.LOCK_EX):
            self.alone = True
            return
        if self.exclusive:
            self._wait(fcntl.LOCK_EX, timeout)
        else:
            # A lone opener holds the lock exclusively for a moment (see _open):
            # even timeout=0 waits that long rather than failing.
            self._wait(fcntl.LOCK_SH, timeout, grace=_LONE_OPENER_GRACE)
        self.alone = self.exclusive

    def _wait(self, mode: int, timeout: float | None, grace: float = 0.0) -> None:
        if not _poll(lambda: self._try(mode), None if timeout is None else max(timeout, grace)):
            what = "openers" if self.exclusive else "openers (held exclusively by another process)"
            raise _timeout_error(what, self.path, timeout)

    def _try(self, mode: int) -> bool:
        try:
            fcntl.flock(self.fd, mode | fcntl.LOCK_NB)
            return True
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise
            return False

    def share(self, timeout: float | None) -> None:
        """Turn the exclusive lock of a lone ordinary opener into the shared lock openers hold."""
        if fcntl is not None and self.alone and not self.exclusive:
            # Not atomic (flock converts by unlocking first): a waiting exclusive opener may go first.
            self._wait(fcntl.LOCK_SH, timeout)

    def recorded(self) -> str:
        """The identity of ``lock.mdb`` recorded by the last lone opener ("" if none)."""
        try:
            return os.pread(self.fd, 200, 0).decode("ascii", "replace").strip()
        except OSError:
            return ""

    def record(self, identity: str) -> None:
        """Record the identity of ``lock.mdb`` (only a lone opener does)."""
        if not self.writable or self.recorded() == identity:
            return
        try:
            data = f"{identity}\n".encode("ascii")
            os.pwrite(self.fd, data, 0)
            os.ftruncate(self.fd, len(data))
        except OSError:
            # A full disk: record nothing rather than a stale identity, which
            # would make later openers refuse a store that is fine.
            with suppress(OSError):
                os.ftruncate(self.fd, 0)

    def close(self) -> None:
        """Release the lock by closing its descriptor (see the module docstring)."""
        if self.fd >= 0:
            fd, self.fd = self.fd, -1
            os.close(fd)
