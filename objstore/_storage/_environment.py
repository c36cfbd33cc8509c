"""The one LMDB environment of a path in a process: opening, recovery, map growth, fork."""

from __future__ import annotations

import ctypes
import errno
import gc
import json
import os
import sys
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from typing import TYPE_CHECKING, Any

import lmdb

from .. import _lock
from .._errors import (
    ClosedError,
    CorruptError,
    NotAStoreError,
    StoreError,
    StoreNotFoundError,
    TransactionError,
    UnsupportedFormatError,
)
from ._common import (
    _ATTEMPTS,
    DURABILITY,
    FORMAT_VERSION,
    MAX_DBS,
    MAX_MAP_SIZE,
    MAX_READERS,
    META_KEY,
    Options,
    T,
    _is_transient,
    affordable_map_size,
    translate,
)
from ._transactions import ReadTxn, WriteTxn

if TYPE_CHECKING:
    from ._common import Txn


class _Registry:
    """The environments of this process by path, and the lock that guards them."""

    def __init__(self) -> None:
        self.envs: dict[str, _Environment] = {}
        self.lock = threading.RLock()


REGISTRY = _Registry()
_kept_forever: list[object] = []
_FORK_WAIT = 1.0  # seconds fork() waits for other threads' write transactions to end
# Seconds closing waits for other threads to leave the storage code: at
# interpreter exit briefly (see `closing_at_exit`), else up to the timeout.
_EXIT_WAIT = 1.0
_exiting = False


def closing_at_exit() -> None:
    """Make closes from now on wait only briefly for other threads (the interpreter is exiting)."""
    global _exiting
    _exiting = True


class _Environment:
    """The one LMDB environment of a path in this process, shared by every store handle on it."""

    def __init__(self, path: str, options: Options, writable: bool) -> None:
        self.path = path
        self.options = options
        self.writable = writable
        self.pid = os.getpid()
        self.lmdb_env: lmdb.Environment | None = None
        self.data: Any = None  # the main database's handle
        self.meta_record = b""
        self.settings: dict[str, Any] = {}
        # Set in a forked child when another thread of the parent still held a
        # write transaction at the fork (see before_fork): the child cannot use
        # the store.
        self.orphaned = False
        self._readers_checked = time.monotonic()
        self.handles = 0
        self.closed = False
        self.openers: _lock.OpenersLock | None = None
        # The innermost open write transaction of each thread that has one. Per
        # thread, not one slot: LMDB lets the next writer in as soon as the last
        # one committed, before that one's thread has cleaned up after itself.
        self.writers: dict[int, WriteTxn] = {}
        self._resize_lock = threading.Lock()
        self._guard = threading.Condition()
        self._resizing = False
        # Threads waiting for a resize to end: their own long-lived transactions
        # must not hold that resize up (it would wait for them as they wait for it).
        self._waiting: set[int] = set()
        self._fork_pending = False
        # Weak, so a snapshot the caller forgot to close still frees its reader slot.
        self._long_lived: weakref.WeakSet[ReadTxn] = weakref.WeakSet()

    # -- opening

    def open_lmdb(self, create: bool, past_inherited: bool = False) -> None:
        """Open the LMDB environment (creating the data file if `create`) and check it."""
        flags = DURABILITY[self.options.durability]
        kwargs: dict[str, Any] = {
            "subdir": True,
            "readonly": not self.writable,
            "create": create,
            "max_dbs": MAX_DBS,
            "max_readers": MAX_READERS,
            "max_spare_txns": 0,
            "lock": True,
            "writemap": False,
            "map_async": False,
            # py-lmdb creates the files with these bits minus x (filtered by the umask).
            "mode": self.options.mode,
            # Adopt the stored map size of an existing store: a smaller value
            # would silently shrink the map to the used size.
            "map_size": affordable_map_size(self.options.map_size) if create else 0,
            **flags,
        }
        if create:
            # Never let LMDB_DEFAULT_LIB_VERSION create a format older readers cannot open.
            kwargs["lib_version"] = 0
        for _ in range(_ATTEMPTS):
            try:
                if past_inherited:
                    env = _open_past_inherited(self.path, kwargs)
                else:
                    env = lmdb.open(self.path, **kwargs)
                break
            except lmdb.MapResizedError:
                continue  # another process grew the map while py-lmdb opened it: adopt the new size
            except lmdb.Error as exc:
                raise translate(exc, self.path, "open the store") from exc
        else:
            raise StoreError(f"cannot open {self.path!r}: its map kept growing while it was opened")
        try:
            _check_size(env, self.path)
            env.reader_check()
            # Readers too: a reader whose map the data outgrows must remap, which
            # waits for its snapshots; reserving ahead makes that rare.
            wanted = affordable_map_size(self.options.map_size)
            if env.info()["map_size"] < wanted:
                env.set_mapsize(wanted)
        except lmdb.Error as exc:
            env.close()
            raise translate(exc, self.path, "open the store") from exc
        except BaseException:
            env.close()
            raise
        self.lmdb_env = env
        self.pid = os.getpid()

    def open_databases(
        self, flag: str, settings: dict[str, Any], check: Callable[[str, dict[str, Any]], None]
    ) -> None:
        """Read (or, for a new store, write) the metadata; empty the store in place for flag 'n'.

        Reading needs no write transaction, so opening never waits for writers;
        only creating a store and flag 'n' do.
        """
        env = self.lmdb_env
        assert env is not None
        try:
            self.data = self._adopting(env.open_db)
            raw = self._fresh(False, lambda txn: txn.get(META_KEY))
            if raw is None:
                if flag == "r" or not self.writable:
                    raise _uninitialised(self.path)
                raw = self._fresh(True, lambda txn: _initialise(txn, self.data, self.path, settings))
            self.settings = _read_meta(raw, self.path)
            self.meta_record = raw
            check(self.path, self.settings)
            if flag == "n":
                self._fresh(True, self.empty)
        except lmdb.Error as exc:
            raise translate(exc, self.path, "open the store") from exc

    def _fresh(self, write: bool, fn: Callable[[Txn], T]) -> T:
        """Run `fn` in a transaction of the environment being opened (nothing else uses it yet)."""

        def run() -> T:
            with self.lmdb_env.begin(write=write, db=self.data) as txn:  # type: ignore[union-attr]
                return fn(txn)

        return self._adopting(run)

    def _adopting(self, fn: Callable[[], T]) -> T:
        """Call `fn`, adopting the map size other processes grew to meanwhile, as often as needed."""
        env = self.lmdb_env
        assert env is not None
        for _ in range(_ATTEMPTS):
            try:
                return fn()
            except lmdb.MapResizedError:
                env.set_mapsize(0)  # no transaction of this new environment is open yet
        raise StoreError(f"cannot open {self.path!r}: its map kept growing while it was opened")

    def empty(self, txn: Txn) -> None:
        """Remove every key, in `txn`, keeping the metadata."""
        txn.drop(self.data, delete=False)
        txn.put(META_KEY, self.meta_record)

    # -- fork

    def before_fork(self) -> None:
        """Let other threads' write transactions finish (briefly) and hold new ones off.

        A forked child must never free the write transaction of a thread that
        does not exist in it (py-lmdb hangs), and py-lmdb refuses a second
        environment on the files while it lives. A child that inherits one
        anyway keeps it forever and opens its own environment past that guard
        (see `_open_past_inherited`); fork() first gives short transactions
        the chance to end, so that this is rarely needed.
        """
        me = threading.get_ident()
        deadline = time.monotonic() + _FORK_WAIT
        with self._guard:
            self._fork_pending = True
            while self._other_writers(me) and time.monotonic() < deadline:
                self._guard.wait(0.01)

    def _other_writers(self, me: int) -> bool:
        """Whether a thread other than `me` holds (or is beginning) a write transaction."""
        # Registered before they begin, so a transaction being begun counts too.
        return any(
            isinstance(t, WriteTxn) and t.thread != me and t._txn is not None and not t._done
            for t in list(self._long_lived)
        ) or any(thread != me and self.writer_of(thread) is not None for thread in list(self.writers))

    def after_fork_in_parent(self) -> None:
        with self._guard:
            self._fork_pending = False
            self._guard.notify_all()

    def wait_for_fork(self) -> None:
        """Before a new write transaction: wait while another thread is forking."""
        if self._fork_pending:
            with self._guard:
                while self._fork_pending:
                    self._guard.wait(0.05)

    def forget(self) -> None:
        """Drop the LMDB objects inherited from the parent, without calling them (fork child)."""
        me = threading.get_ident()
        self.orphaned = self._other_writers(me)
        if self.orphaned:
            # Write transactions of threads that do not exist here: never free them.
            _keep_forever(self.lmdb_env)
            for txn in self._long_lived:
                if isinstance(txn, WriteTxn) and txn.thread != me:
                    level: WriteTxn | None = txn
                    while level is not None:
                        _keep_forever(level._txn)
                        level = level.parent
        own = self.writers.get(me)
        while own is not None:
            own.forget()
            own = own.parent
        self.lmdb_env = self.data = None
        self.writers = {}
        for txn in list(self._long_lived):
            if txn.thread == me or not isinstance(txn, WriteTxn):
                txn.forget()
        self._long_lived = weakref.WeakSet()
        self._resize_lock = threading.Lock()
        self._guard = threading.Condition()
        self._resizing = self._fork_pending = False
        self._waiting = set()

    def reopen(self) -> None:
        """Reopen after fork, in the child, on first use."""
        with REGISTRY.lock:
            if self.lmdb_env is not None and self.pid == os.getpid():
                return
            if self.closed:
                raise ClosedError("the store was closed")
            gc.collect()
            try:
                try:
                    self.open_lmdb(create=False, past_inherited=self.orphaned)
                except StoreError as exc:
                    if "already open" not in str(exc):
                        raise
                    # An inherited object objstore does not hold is alive: one in
                    # the frame of a thread that was mid-operation at the fork
                    # (such frames are never freed in the child).
                    self.open_lmdb(create=False, past_inherited=True)
            except StoreError as exc:
                if "already open" in str(exc):
                    raise TransactionError(
                        f"cannot reopen {self.path!r} in this forked process: an LMDB object of the "
                        "parent is still alive here and this py-lmdb refuses a second environment; "
                        "use the 'spawn' or 'forkserver' start method"
                    ) from exc
                raise
            self.open_databases("w" if self.writable else "r", {}, lambda path, settings: None)

    # -- recovery, shared by every operation

    def ensure_open(self, action: str) -> None:
        """Raise `ClosedError` if the store was closed; reopen it if this is a forked child."""
        if self.closed:
            raise ClosedError(f"cannot {action}: the shelf is closed")
        if self.lmdb_env is None or self.pid != os.getpid():
            self.reopen()

    def recover(self, exc: BaseException, attempt: int, action: str) -> None:
        """Make another attempt possible after `exc`, or raise what the caller should see."""
        if self.closed or self.lmdb_env is None or self.pid != os.getpid():
            self.ensure_open(action)
            return
        if not isinstance(exc, lmdb.Error):
            raise exc
        if attempt >= _ATTEMPTS:
            raise translate(exc, self.path, action) from exc
        if isinstance(exc, lmdb.MapResizedError):
            self.resize(0)
        elif isinstance(exc, lmdb.MapFullError):
            self.grow()
        elif isinstance(exc, lmdb.ReadersFullError) and attempt < 2:
            self.lmdb_env.reader_check()
        elif _is_transient(exc):
            time.sleep(0.0005 * attempt)
        else:
            raise translate(exc, self.path, action) from exc

    def run(self, fn: Callable[[Txn], T], write: bool, action: str) -> T:
        """Run `fn` in a fresh transaction, retrying through growth, resizes and reopening."""
        for attempt in range(_ATTEMPTS + 1):
            try:
                with self.lmdb_env.begin(write=write, db=self.data) as txn:  # type: ignore[union-attr]
                    return fn(txn)
            except Exception as exc:
                self.recover(exc, attempt, action)
        raise AssertionError("unreachable")  # pragma: no cover

    # -- map growth

    def used_bytes(self) -> int:
        env = self.lmdb_env
        assert env is not None
        return (env.info()["last_pgno"] + 1) * env.stat()["psize"]

    def needs_room(self) -> bool:
        """Whether the map is more than half full; also, at most once a second, reclaim the
        reader slots of dead processes, which pin pages that could be reused."""
        env = self.lmdb_env
        assert env is not None
        now = time.monotonic()
        if now - self._readers_checked > 1.0:
            self._readers_checked = now
            env.reader_check()
        return self.used_bytes() * 2 > env.info()["map_size"]

    def grow(self) -> None:
        """Double the map (at least); other processes adopt the new size by themselves."""
        env = self.lmdb_env
        assert env is not None
        seen = env.info()["map_size"]
        with self._resize_turn():
            if env.info()["map_size"] > seen:
                return  # another thread of this process grew it meanwhile
            env.reader_check()  # slots of dead readers pin pages that could be reused instead
            target = max(2 * seen, 2 * self.used_bytes())
            if target > MAX_MAP_SIZE:
                raise StoreError(f"the store {self.path!r} cannot grow beyond {MAX_MAP_SIZE} bytes of map")
            self._set_mapsize(target, coordinate=True)

    def resize(self, size: int) -> None:
        """Adopt a map size another process set (size 0), waiting for this process's transactions."""
        with self._resize_turn():
            self._set_mapsize(size, coordinate=False)

    @contextmanager
    def _resize_turn(self) -> Iterator[None]:
        """Hold the resize lock; while waiting for it, let the resize in progress pass this thread."""
        if not self._resize_lock.acquire(blocking=False):
            with self._waiting_for_resize():
                self._resize_lock.acquire()
        try:
            yield
        finally:
            self._resize_lock.release()

    @contextmanager
    def _waiting_for_resize(self) -> Iterator[None]:
        """Mark this thread as waiting for a resize, so that the resize does not wait for it.

        A thread that holds a snapshot and begins another transaction (or
        grows the map) while another thread's resize waits for that snapshot
        would otherwise wait forever for the resize that waits for it. Its
        snapshot is ended by the resize instead, as if it had grown the map itself.
        """
        me = threading.get_ident()
        with self._guard:
            self._waiting.add(me)
            self._guard.notify_all()
        try:
            yield
        finally:
            self._waiting.discard(me)

    def _holds_up_resize(self, txn: ReadTxn, me: int) -> bool:
        # Finished transactions may still be registered when an interrupt hit
        # their bookkeeping: they hold nothing up.
        return txn.thread != me and txn.thread not in self._waiting and not txn._done

    def _set_mapsize(self, size: int, coordinate: bool) -> None:
        """Set the map size once no other thread's transaction is open (or the timeout passed).

        set_mapsize invalidates every transaction of the process: long-lived ones
        are waited for (new ones wait meanwhile), short single operations just
        retry. With `coordinate`, the maintenance lock makes growth one process
        at a time; it is taken only after the wait, so other processes never
        wait for this process's transactions. Whatever interrupts it (a
        timeout, Ctrl-C, a close), the resize flag is cleared on the way out.
        """
        env = self.lmdb_env
        assert env is not None
        me = threading.get_ident()
        timeout = self.options.timeout
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            with self._guard:
                self._resizing = True
                while any(self._holds_up_resize(t, me) for t in self._long_lived):
                    if self.closed:
                        raise ClosedError("cannot grow the store: it was closed meanwhile")
                    left = None if deadline is None else deadline - time.monotonic()
                    if left is not None and left <= 0:
                        break  # they will find themselves expired
                    self._guard.wait(0.05 if left is None else min(left, 0.05))
            with _lock.maintenance(self.path, timeout) if coordinate else nullcontext():
                while True:
                    try:
                        env.set_mapsize(size)
                        # Whatever is still registered was invalidated by set_mapsize.
                        for txn in self._long_lived:
                            txn.expired = True
                        break
                    except lmdb.Error:
                        # A write transaction of another thread is still running.
                        if deadline is not None and time.monotonic() > deadline:
                            raise StoreError(
                                f"cannot grow the store {self.path!r}: a write transaction of another "
                                f"thread stayed open longer than the timeout ({timeout} s)"
                            ) from None
                        time.sleep(0.001)
        finally:
            # First the flag (no call before it an interrupt could land in), then the wake-up.
            self._resizing = False
            with self._guard:
                self._guard.notify_all()

    def register(self, txn: ReadTxn) -> None:
        """Count `txn` as long-lived (a resize waits for it); wait while a resize is under way."""
        with self._guard:
            if self._resizing:
                with self._waiting_for_resize():
                    while self._resizing and not self.closed:
                        self._guard.wait(0.05)
            if self.closed:
                raise ClosedError("the store was closed")
            self._long_lived.add(txn)

    def unregister(self, txn: ReadTxn) -> None:
        with self._guard:
            self._long_lived.discard(txn)
            self._guard.notify_all()

    def writer_of(self, thread: int) -> WriteTxn | None:
        """The open write transaction of `thread`, forgetting any an interrupt left behind."""
        txn = self.writers.get(thread)
        while txn is not None and (txn._done or txn._txn is None):
            # Finished, but a KeyboardInterrupt skipped the rest of its bookkeeping.
            txn = txn.parent
            if txn is None:
                self.writers.pop(thread, None)
            else:
                self.writers[thread] = txn
        return txn

    # -- closing

    def release(self) -> None:
        """Drop one handle; close the environment with the last one.

        The environment is closed only once no other thread is inside it:
        freeing LMDB objects another thread is using crashes the process. From
        the moment of the close, other threads' operations raise `ClosedError`;
        the close waits for those already inside LMDB to come out, and for
        other threads' write transactions (which only their own thread may
        end) it is left to the last of them.
        """
        with REGISTRY.lock:
            self.handles -= 1
            if self.handles > 0:
                return
            self.closed = True
            with self._guard:
                self._guard.notify_all()  # waits for resizes see the close
            self._close_when_idle()

    def _close_when_idle(self) -> None:
        """Close the LMDB environment now, or leave it to the last other thread's writer."""
        me = threading.get_ident()
        if self.lmdb_env is not None and self.pid == os.getpid() and self._other_writers(me):
            return  # WriteTxn._finish of the last one calls this again
        if REGISTRY.envs.get(self.path) is self:
            del REGISTRY.envs[self.path]
        env, self.lmdb_env = self.lmdb_env, None
        self.data = None
        try:
            if env is not None and self.pid == os.getpid():
                try:
                    if self.writable and self.options.durability != "full":
                        env.sync(True)
                finally:
                    if self._wait_until_idle(me):
                        env.close()
                    else:
                        # A thread is still inside LMDB: never free what it uses.
                        # LMDB is crash-safe; the OS releases it at exit.
                        _keep_forever(env)
        finally:
            if self.openers is not None:
                self.openers.close()
                self.openers = None

    def writer_done(self) -> None:
        """After another thread's write transaction ended: close now if a close waited for it."""
        if self.closed and self.lmdb_env is not None:
            with REGISTRY.lock:
                if self.closed and self.lmdb_env is not None and self.handles <= 0:
                    self._close_when_idle()

    def _wait_until_idle(self, me: int) -> bool:
        """Wait until no other thread runs storage code on this environment; False if one still does."""
        timeout = _EXIT_WAIT if _exiting else self.options.timeout
        deadline = None if timeout is None else time.monotonic() + timeout
        while self._threads_inside(me):
            if deadline is not None and time.monotonic() > deadline:
                return False
            time.sleep(0.001)
        return True

    def _threads_inside(self, me: int) -> bool:
        """Whether a thread other than `me` is running storage code on this environment.

        Read from the threads' stacks, not counted by each operation: this
        costs the hot paths nothing, and no interrupt can leave it wrong, as it
        could a count. A thread sees `closed` before it touches LMDB, so once
        none is inside, none will be.
        """
        from ._store import Store

        for thread, frame in sys._current_frames().items():
            if thread == me:
                continue
            f: Any = frame
            while f is not None:
                if f.f_globals.get("__name__", "").startswith(__package__ or "objstore._storage"):
                    for value in f.f_locals.values():
                        if value is self or (
                            isinstance(value, (Store, ReadTxn)) and value._environment is self
                        ):
                            return True
                f = f.f_back
        return False


def _check_size(env: lmdb.Environment, path: str) -> None:
    # A truncated data file opens fine and then crashes the process on read.
    expected = (env.info()["last_pgno"] + 1) * env.stat()["psize"]
    actual = os.path.getsize(os.path.join(path, "data.mdb"))
    if actual < expected:
        raise CorruptError(
            f"the data file of {path!r} is truncated: it holds {actual} bytes but its last page "
            f"ends at byte {expected}; restore the store from a backup"
        )


def _uninitialised(path: str) -> StoreError:
    return StoreNotFoundError(
        errno.ENOENT,
        "the store was never initialised (its creation was interrupted); open it with flag 'c' "
        "to finish creating it",
        path,
    )


def _initialise(txn: Txn, db: Any, path: str, settings: dict[str, Any]) -> bytes:
    """Write the metadata record of a new store in `txn` (unless a racing opener did); return it."""
    raw = txn.get(META_KEY)
    if raw is None:
        if txn.stat(db)["entries"]:
            raise NotAStoreError(
                f"{path!r} is an LMDB environment that objstore did not create; refusing to modify it"
            )
        raw = json.dumps({"format": FORMAT_VERSION, **settings}, sort_keys=True).encode()
        txn.put(META_KEY, raw)
    return raw


def _read_meta(raw: bytes | None, path: str) -> dict[str, Any]:
    if raw is None:
        raise _uninitialised(path)
    try:
        meta = json.loads(raw)
        version = meta["format"]
    except (ValueError, KeyError, TypeError):
        raise CorruptError(f"the metadata record of {path!r} is damaged; restore it from a backup") from None
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise UnsupportedFormatError(
            f"{path!r} uses store format {version!r}, newer than this objstore understands "
            f"({FORMAT_VERSION}); upgrade objstore to open it"
        )
    return dict(meta)


def _keep_forever(obj: object) -> None:
    """Make sure `obj` is never freed, not even when the interpreter exits (see `before_fork`)."""
    if obj is not None:
        _kept_forever.append(obj)
        try:
            ctypes.pythonapi.Py_IncRef(ctypes.py_object(obj))
        except (AttributeError, OSError):  # pragma: no cover - not CPython
            pass


def _open_past_inherited(path: str, kwargs: dict[str, Any]) -> lmdb.Environment:
    """Open an environment while inherited, never-to-be-used handles on its files live (fork child).

    py-lmdb refuses a second environment on one set of files in one process,
    because closing either would drop LMDB's fcntl locks for both. The handles
    this child inherited are kept forever (`_keep_forever`): never used,
    closed or freed, and holding no fcntl lock here (those are not inherited).
    So the guard is safely passed, for this one open, by giving py-lmdb's file
    identity function a key of its own. If py-lmdb stops looking that function
    up, the guard refuses as before, and the caller reports it.
    """
    from lmdb import _envid

    original = _envid.env_keys
    _envid.env_keys = lambda *args: (("objstore fork child", os.getpid(), path),)
    try:
        return lmdb.open(path, **kwargs)
    finally:
        _envid.env_keys = original


def _before_fork() -> None:
    for environment in list(REGISTRY.envs.values()):
        if environment.pid == os.getpid() and environment.lmdb_env is not None:
            environment.before_fork()


def _after_fork_in_parent() -> None:
    for environment in list(REGISTRY.envs.values()):
        environment.after_fork_in_parent()


def _after_fork_in_child() -> None:
    REGISTRY.lock = threading.RLock()
    for environment in REGISTRY.envs.values():
        environment.forget()
    _lock.reset_after_fork()
    gc.collect()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(
        before=_before_fork, after_in_parent=_after_fork_in_parent, after_in_child=_after_fork_in_child
    )
