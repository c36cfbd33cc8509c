"""The one LMDB environment of a path in a process, and the registry of them.

This module owns `_Environment`, shared by every handle on its path in this
process: opening LMDB and reading (or writing) the metadata record, the
retries every operation makes (`_Environment.recover`, `_Environment.run`),
the write transactions of each thread, and closing once no other thread is
inside. Map growth (``_growth.MapGrowth``) and fork handling
(``_fork.ForkHandling``) are parts of it, each in its own module. `REGISTRY`
maps real paths to environments.

It must never free an LMDB object another thread may be using (closing waits
for them, or keeps the object forever), nor end another thread's write
transaction.
"""

from __future__ import annotations

import errno
import json
import os
import sys
import threading
import time
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import lmdb

from .. import _lock
from .._errors import (
    SHELF_CLOSED,
    CorruptError,
    NotAStoreError,
    StoreError,
    StoreNotFoundError,
    UnsupportedFormatError,
)
from ._common import (
    _ATTEMPTS,
    DURABILITY,
    FORMAT_VERSION,
    MAX_DBS,
    MAX_READERS,
    MAX_SPARE_TXNS,
    META_KEY,
    Options,
    T,
)
from ._errors import BackendError, MapResized, Remedy, closed, remedy, translate
from ._fork import ForkHandling, Opener, keep_forever, watch
from ._growth import MapGrowth, affordable_map_size
from ._transactions import ReadTxn, WriteTxn

if TYPE_CHECKING:
    from ._common import Txn


class _Registry:
    """The environments of this process by path, and the lock that guards them."""

    def __init__(self) -> None:
        self.envs: dict[str, _Environment] = {}
        self.lock = threading.RLock()


REGISTRY = _Registry()
# Seconds closing waits for other threads to leave the storage code: at
# interpreter exit briefly (see `closing_at_exit`), else up to the timeout.
_EXIT_WAIT = 1.0
_exiting = False


def closing_at_exit() -> None:
    """Make closes from now on wait only briefly for other threads (the interpreter is exiting)."""
    global _exiting
    _exiting = True


def _plain_open(path: str, kwargs: dict[str, Any]) -> lmdb.Environment:
    return lmdb.open(path, **kwargs)


class _Environment(MapGrowth, ForkHandling):
    """The one LMDB environment of a path in this process, shared by every store handle on it."""

    def __init__(self, path: str, options: Options, writable: bool) -> None:
        self.path = path
        self.options = options
        self.writable = writable
        self.pid = os.getpid()
        self.lmdb_env: lmdb.Environment | None = None
        # The main database's handle, for what needs one (drop, stat). Transactions are
        # begun without ``db=``: the main database is their default, and passing it
        # costs py-lmdb's keyword parsing, a tenth of a small read.
        self.data: Any = None
        self.meta_record = b""
        self.settings: dict[str, Any] = {}
        self._readers_checked = time.monotonic()
        self.handles = 0
        self.closed = False
        self.openers: _lock.OpenersLock | None = None
        # The innermost open write transaction of each thread that has one. Per
        # thread, not one slot: LMDB lets the next writer in as soon as the last
        # one committed, before that one's thread has cleaned up after itself.
        self.writers: dict[int, WriteTxn] = {}
        self._fresh_coordination()

    def _fresh_coordination(self) -> None:
        """Start the state threads coordinate through afresh (at creation, and in a fork child)."""
        # Weak, so a snapshot the caller forgot to close still frees its reader slot.
        self._long_lived: weakref.WeakSet[ReadTxn] = weakref.WeakSet()
        self._guard = threading.Condition()
        self._resize_lock = threading.Lock()
        self._resizing = False
        # Threads waiting for a resize to end: their own long-lived transactions
        # must not hold that resize up (it would wait for them as they wait for it).
        self._waiting: set[int] = set()
        self._fork_pending = False

    # -- opening

    def open_lmdb(self, create: bool, opener: Opener = _plain_open) -> None:
        """Open the LMDB environment (creating the data file if `create`) with `opener`, and check it."""
        flags = DURABILITY[self.options.durability]
        kwargs: dict[str, Any] = {
            "subdir": True,
            "readonly": not self.writable,
            "create": create,
            "max_dbs": MAX_DBS,
            "max_readers": MAX_READERS,
            "max_spare_txns": MAX_SPARE_TXNS,
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
                env = opener(self.path, kwargs)
                break
            except MapResized:
                continue  # another process grew the map while py-lmdb opened it: adopt the new size
            except BackendError as exc:
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
        except BackendError as exc:
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
        except BackendError as exc:
            raise translate(exc, self.path, "open the store") from exc

    def _fresh(self, write: bool, fn: Callable[[Txn], T]) -> T:
        """Run `fn` in a transaction of the environment being opened (nothing else uses it yet)."""

        def run() -> T:
            with self.lmdb_env.begin(write=write) as txn:  # type: ignore[union-attr]
                return fn(txn)

        return self._adopting(run)

    def _adopting(self, fn: Callable[[], T]) -> T:
        """Call `fn`, adopting the map size other processes grew to meanwhile, as often as needed."""
        env = self.lmdb_env
        assert env is not None
        for _ in range(_ATTEMPTS):
            try:
                return fn()
            except MapResized:
                env.set_mapsize(0)  # no transaction of this new environment is open yet
        raise StoreError(f"cannot open {self.path!r}: its map kept growing while it was opened")

    def empty(self, txn: Txn) -> None:
        """Remove every key, in `txn`, keeping the metadata."""
        txn.drop(self.data, delete=False)
        txn.put(META_KEY, self.meta_record)

    # -- recovery, shared by every operation

    def ensure_open(self, action: str) -> None:
        """Raise `ClosedError` if the store was closed; reopen it if this is a forked child."""
        if self.closed:
            raise closed(SHELF_CLOSED, action)
        if self.lmdb_env is None or self.pid != os.getpid():
            self.reopen()

    def recover(self, exc: BaseException, attempt: int, action: str) -> None:
        """Make another attempt possible after `exc`, or raise what the caller should see."""
        if self.closed or self.lmdb_env is None or self.pid != os.getpid():
            self.ensure_open(action)
            return
        if not isinstance(exc, BackendError):
            raise exc
        if attempt >= _ATTEMPTS:
            raise translate(exc, self.path, action) from exc
        todo = remedy(exc)
        if todo is Remedy.ADOPT_SIZE:
            self.resize(0)
        elif todo is Remedy.GROW:
            self.grow()
        elif todo is Remedy.CHECK_READERS and attempt < 2:
            self.lmdb_env.reader_check()
        elif todo is Remedy.WAIT:
            time.sleep(0.0005 * attempt)
        else:
            raise translate(exc, self.path, action) from exc

    def run(self, fn: Callable[[Txn], T], write: bool, action: str) -> T:
        """Run `fn` in a fresh transaction, retrying through growth, resizes and reopening."""
        for attempt in range(_ATTEMPTS + 1):
            try:
                with self.lmdb_env.begin(write=write) as txn:  # type: ignore[union-attr]
                    return fn(txn)
            except Exception as exc:
                self.recover(exc, attempt, action)
        raise AssertionError("unreachable")  # pragma: no cover

    # -- write transactions

    def _other_writers(self, me: int) -> bool:
        """Whether a thread other than `me` holds (or is beginning) a write transaction."""
        # Registered before they begin, so a transaction being begun counts too.
        return any(
            isinstance(t, WriteTxn) and t.thread != me and t._txn is not None and not t._done
            for t in list(self._long_lived)
        ) or any(thread != me and self.writer_of(thread) is not None for thread in list(self.writers))

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
        if (
            self.lmdb_env is not None
            and self.pid == os.getpid()
            and any(t.pinned for t in list(self._long_lived))
        ):
            return  # views of a zero-copy snapshot point into the map: the last one's _Pin calls this again
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
                        keep_forever(env)
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
        frames: Any = sys._current_frames()
        frame: Any = None
        f: Any = None
        value: Any = None
        try:
            for thread, frame in frames.items():
                if thread == me:
                    continue
                f = frame
                while f is not None:
                    if f.f_globals.get("__name__", "").startswith(__package__ or "objstore._storage"):
                        for value in f.f_locals.values():
                            # This environment, or a store handle or transaction on it.
                            if value is self or getattr(value, "_environment", None) is self:
                                return True
                    f = f.f_back
            return False
        finally:
            # `frames` holds this very frame: left in it, this frame and every frame it was
            # called from (with their locals) become cyclic garbage.
            frames = frame = f = value = None


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


watch(REGISTRY)
