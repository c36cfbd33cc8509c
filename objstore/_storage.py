"""LMDB storage: the only module that imports ``lmdb``.

Bytes in, bytes out. This module owns opening and creating stores (flags, what
is at the path, the metadata record, damage checks), the per-process registry
of environments, transactions, fork handling, map growth and the translation
of every ``lmdb`` exception into an objstore one.

It must never:

- see an unpickled object (keys arrive encoded, values are opaque records);
- call anything on an LMDB object inherited across ``fork()``: in a child,
  ``close()`` or ``abort()`` on the parent's handles silently corrupts the
  parent's open snapshot, so the child drops them unclosed and reopens;
- hold a read transaction while caller code runs (except inside a snapshot
  the caller opened): every single operation and every iteration batch uses
  its own short transaction and copies the bytes out;
- open a second environment on a path this process already has open (py-lmdb
  refuses), delete or recreate a store's files, or touch ``lock.mdb``;
- let an ``lmdb`` exception escape.

On disk a store is a directory::

    data.mdb          LMDB data file: keys, values and the metadata record
    lock.mdb          LMDB reader table and writer mutex
    objstore.lock     maintenance lock (create, initialise, grow)
    objstore.openers  lock held by every process that has the store open

Concurrency model, in short: LMDB gives many concurrent readers and one
writer at a time across processes. Within a process, a write transaction
belongs to its thread; operations a thread makes while it holds one join it.
Growing the map needs no open transaction in the process, so long-lived
transactions (snapshots, user transactions) register themselves and a grower
waits for them; single operations are short and simply retried.
"""

from __future__ import annotations

import ctypes
import errno
import gc
import json
import os
import stat
import sys
import threading
import time
import weakref
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from itertools import islice
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import lmdb

from . import _lock
from ._errors import (
    ClosedError,
    ConflictError,
    CorruptError,
    NotAStoreError,
    ReadOnlyError,
    StoreError,
    StoreNotFoundError,
    TransactionError,
    UnsupportedFormatError,
)

__all__ = [
    "BATCH_BYTES",
    "BATCH_ITEMS",
    "DURABILITY",
    "Chunk",
    "MAX_KEY_SIZE",
    "Options",
    "ReadTxn",
    "Store",
    "Storage",
    "WriteTxn",
    "open_store",
]

T = TypeVar("T")
Value = bytes | memoryview  # a value to store: LMDB copies any contiguous buffer
# A run of keys and a function that returns their records. The records are
# made when the chunk is written, and made again if the transaction has to be
# replayed, so a bulk write keeps only one chunk of records in memory.
Chunk = tuple[Sequence[bytes], Callable[[], Sequence[Value]]]
if TYPE_CHECKING:
    from typing import TypeAlias

    Txn: TypeAlias = "lmdb.Transaction[bytes]"

FORMAT_VERSION = 1
MAX_KEY_SIZE = 511  # LMDB 0.9 format, which objstore always creates
# Keys and values live in LMDB's main database, whose handle needs no write
# transaction to open (a named database's does, so opening would wait for
# every writer). The metadata record lives beside them under a key no user key
# can equal, because UTF-8 never contains the byte 0xff. It sorts before nearly
# every user key: keys appended in order then fill LMDB's pages (an insert
# before a last key would split them half full).
META_KEY = b"\x00\xffobjstore"
MAX_DBS = 4  # room for later named databases; every opener must pass the same
MAX_READERS = 1024
DEFAULT_MAP_SIZE = 1 << 30 if sys.maxsize > 2**32 else 1 << 26
MAX_MAP_SIZE = 1 << 46 if sys.maxsize > 2**32 else 3 << 29
BATCH_ITEMS = 1024
BATCH_BYTES = 4 << 20
_ATTEMPTS = 64  # retries of one operation through growth, resizes and reader cleanup

# LMDB flags of each durability level; see docs/durability.md.
DURABILITY = {
    "full": {"sync": True, "metasync": True},
    "normal": {"sync": True, "metasync": False},
    "off": {"sync": False, "metasync": False},
}
_OWN_FILES = frozenset({"data.mdb", "lock.mdb", _lock.MAINTENANCE_LOCK, _lock.OPENERS_LOCK})
# Filesystem types on which LMDB's locks and shared memory map are not
# coherent between processes (LMDB's documentation: never use remote filesystems).
NETWORK_FILESYSTEMS = frozenset(
    {
        "nfs", "nfs4", "cifs", "smb3", "smbfs", "ncpfs", "afs", "9p", "ceph", "glusterfs", "lustre",
        "gpfs", "ocfs2", "gfs2", "davfs", "fuse.sshfs", "fuse.glusterfs", "fuse.cephfs", "fuse.s3fs",
        "fuse.gcsfuse", "fuse.rclone", "fuse.juicefs", "fuse.davfs2",
    }
)  # fmt: skip
_filesystem_types: dict[int, str] = {}


@dataclass(frozen=True)
class Options:
    """How a store is opened; every shelf of one path in one process must agree on `durability`."""

    durability: str = "full"
    map_size: int = DEFAULT_MAP_SIZE
    exclusive: bool = False
    timeout: float | None = 10.0
    allow_network_fs: bool = False

    def __post_init__(self) -> None:
        if self.durability not in DURABILITY:
            raise ValueError(f"durability must be one of {sorted(DURABILITY)}, not {self.durability!r}")
        if not isinstance(self.map_size, int) or not 4096 <= self.map_size <= MAX_MAP_SIZE:
            raise ValueError(f"map_size must be an int from 4096 to {MAX_MAP_SIZE}, not {self.map_size!r}")
        if self.timeout is not None and not self.timeout >= 0:
            raise ValueError(f"timeout must be None or >= 0, not {self.timeout!r}")


class Storage(Protocol):
    """What a shelf needs from a storage backend: bytes keys to bytes records.

    Every read method also exists on the transactions `read()` and `write()`
    yield, and every write method on the transactions `write()` yields, so a
    mapping can be built over any of the three.
    """

    path: str
    readonly: bool
    settings: dict[str, Any]

    def get(self, key: bytes) -> bytes | None: ...
    def contains(self, key: bytes) -> bool: ...
    def count(self) -> int: ...
    def batch(
        self,
        lo: bytes | None,
        hi: bytes | None,
        reverse: bool,
        values: bool,
        after: bytes | None,
        limit: int = ...,
    ) -> list[Any]: ...
    def put(self, key: bytes, value: Value) -> None: ...
    def delete(self, key: bytes) -> bool: ...
    def put_new(self, key: bytes, value: Value) -> bytes | None: ...
    def put_many(self, chunks: Iterable[Chunk]) -> None: ...
    def clear(self) -> None: ...
    def in_transaction(self) -> bool: ...
    def read(self) -> ReadTxn: ...
    def write(self) -> AbstractContextManager[WriteTxn]: ...
    def sync(self) -> None: ...
    def close(self) -> None: ...
    def info(self) -> dict[str, Any]: ...


# ---------------------------------------------------------------- primitives
# Operations on an open lmdb transaction, shared by single operations (each
# in its own transaction) and by explicit transactions.


def _count(txn: Txn, db: Any) -> int:
    return int(txn.stat(db)["entries"]) - 1  # the metadata record


def _contains(txn: Txn, db: Any, key: bytes) -> bool:
    # A cursor lookup copies nothing, unlike get(), which matters for large values.
    return bool(txn.cursor(db).set_key(key))


def _batch(
    txn: Txn,
    db: Any,
    lo: bytes | None,
    hi: bytes | None,
    reverse: bool,
    values: bool,
    after: bytes | None,
    limit: int,
) -> list[Any]:
    """The next `limit` keys (or (key, record) pairs) of [lo, hi), after `after`, in order.

    Built by LMDB's cursor iterator, ``islice`` and ``bisect``, all in C: a
    batch costs about as much as the bare cursor walk. One item more than
    `limit` is read, so that leaving the metadata record out still fills it.
    """
    cursor = txn.cursor(db)
    if not reverse:
        start = after if after is not None else lo
        positioned = cursor.first() if start is None else cursor.set_range(start)
        if positioned and after is not None and cursor.key() == after:
            positioned = cursor.next()
        if not positioned:
            return []
        walk = cursor.iternext(values=True) if values else cursor.iternext(values=False)
        batch: list[Any] = list(islice(walk, limit + 1))
        _drop_meta(batch, values)
        if hi is not None and batch:
            # Keys sort before (key, record) pairs starting with them: bisect by (hi,).
            del batch[bisect_left(batch, (hi,) if values else hi) :]
        del batch[limit:]
        return batch
    bound = after if after is not None else hi
    # Start at the last key strictly below `bound`.
    positioned = cursor.last() if bound is None or not cursor.set_range(bound) else cursor.prev()
    if not positioned:
        return []
    walk = cursor.iterprev(values=True) if values else cursor.iterprev(values=False)
    batch = list(islice(walk, limit + 1))
    batch.reverse()  # ascending, to bisect
    _drop_meta(batch, values)
    if lo is not None and batch:
        del batch[: bisect_left(batch, (lo,) if values else lo)]
    del batch[: max(0, len(batch) - limit)]
    batch.reverse()
    return batch


def _drop_meta(batch: list[Any], values: bool) -> None:
    """Remove the metadata record from an ascending `batch`, if it is there."""
    i = bisect_left(batch, (META_KEY,) if values else META_KEY)
    if i < len(batch) and (batch[i][0] if values else batch[i]) == META_KEY:
        del batch[i]


def _put_new(txn: Txn, db: Any, key: bytes, value: Value) -> bytes | None:
    existing = txn.get(key, db=db)
    if existing is None:
        txn.put(key, value, db=db)
    return existing


# ------------------------------------------------------------ error mapping


def translate(exc: BaseException, path: str, action: str) -> BaseException:
    """Return the objstore exception for an ``lmdb`` exception raised while doing `action`."""
    if isinstance(exc, lmdb.ReadonlyError):
        return ReadOnlyError(
            f"cannot {action}: the store {path!r} is not writable by this process ({exc}); "
            "check its permissions or open it with flag 'r'"
        )
    if isinstance(exc, lmdb.BadValsizeError):
        return ValueError(f"cannot {action}: key or value size is outside LMDB's limits ({exc})")
    if isinstance(exc, (lmdb.CorruptedError, lmdb.PageNotFoundError, lmdb.PanicError, lmdb.InvalidError)):
        return CorruptError(
            f"cannot {action}: the data file of {path!r} is damaged ({exc}); restore it from a backup"
        )
    if isinstance(exc, lmdb.VersionMismatchError):
        return UnsupportedFormatError(
            f"cannot {action}: {path!r} was written by another LMDB version ({exc})"
        )
    if isinstance(exc, lmdb.LockError):
        return StoreError(
            f"cannot {action}: LMDB's lock file of {path!r} cannot be used ({exc}); this happens on "
            "network filesystems and between containers that do not share a PID namespace"
        )
    if isinstance(exc, lmdb.DiskError) or "Input/output error" in str(exc) or "No space" in str(exc):
        return StoreError(
            f"cannot {action}: writing {path!r} failed ({exc}); the disk may be full. Nothing of the "
            "failed transaction was stored"
        )
    return StoreError(f"cannot {action} on {path!r}: {exc}")


def _is_transient(exc: BaseException) -> bool:
    """Whether `exc` is what a concurrent map resize in this process does to a transaction."""
    if isinstance(exc, lmdb.InvalidParameterError):
        return True
    return isinstance(exc, lmdb.Error) and "closed/deleted/dropped" in str(exc)


# ------------------------------------------------------------- environment

_registry: dict[str, _Environment] = {}
_registry_lock = threading.RLock()
_kept_forever: list[object] = []
_FORK_WAIT = 1.0  # seconds fork() waits for other threads' write transactions to end


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
            # Adopt the stored map size of an existing store: a smaller value
            # would silently shrink the map to the used size.
            "map_size": self.options.map_size if create else 0,
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
            if self.writable and env.info()["map_size"] < self.options.map_size:
                env.set_mapsize(self.options.map_size)
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
            self.data = env.open_db()
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
        env = self.lmdb_env
        assert env is not None
        for _ in range(_ATTEMPTS):
            try:
                with env.begin(write=write, db=self.data) as txn:
                    return fn(txn)
            except lmdb.MapResizedError:
                env.set_mapsize(0)  # another process grew the map since we opened it
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
        # Registered before they begin, so a transaction being begun counts too.
        return any(
            isinstance(t, WriteTxn) and t.thread != me and t._txn is not None for t in self._long_lived
        ) or any(thread != me for thread in self.writers)

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

    def reopen(self) -> None:
        """Reopen after fork, in the child, on first use."""
        with _registry_lock:
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

    def recover(self, exc: BaseException, attempt: int, action: str) -> None:
        """Make another attempt possible after `exc`, or raise what the caller should see."""
        if self.closed:
            raise ClosedError(f"cannot {action}: the shelf is closed") from None
        if self.lmdb_env is None or self.pid != os.getpid():
            self.reopen()
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

    def ensure_headroom(self) -> None:
        """Before a transaction that cannot simply be rerun: grow while growing is cheap, and
        reclaim the reader slots of dead processes (at most once a second), which pin pages."""
        env = self.lmdb_env
        if env is None or not self.writable:
            return
        now = time.monotonic()
        if now - self._readers_checked > 1.0:
            self._readers_checked = now
            env.reader_check()
        if self.used_bytes() * 2 > env.info()["map_size"]:
            self.grow()

    def grow(self) -> None:
        """Double the map (at least); other processes adopt the new size by themselves."""
        env = self.lmdb_env
        assert env is not None
        seen = env.info()["map_size"]
        with self._resize_lock:
            if env.info()["map_size"] > seen:
                return  # another thread of this process grew it meanwhile
            env.reader_check()  # slots of dead readers pin pages that could be reused instead
            target = max(2 * seen, 2 * self.used_bytes())
            if target > MAX_MAP_SIZE:
                raise StoreError(f"the store {self.path!r} cannot grow beyond {MAX_MAP_SIZE} bytes of map")
            self._set_mapsize(target, coordinate=True)

    def resize(self, size: int) -> None:
        """Adopt a map size another process set (size 0), waiting for this process's transactions."""
        with self._resize_lock:
            self._set_mapsize(size, coordinate=False)

    def _set_mapsize(self, size: int, coordinate: bool) -> None:
        """Set the map size once no other thread's transaction is open (or the timeout passed).

        set_mapsize invalidates every transaction of the process: long-lived ones
        are waited for (new ones wait meanwhile), short single operations just
        retry. With `coordinate`, the maintenance lock makes growth one process
        at a time; it is taken only after the wait, so other processes never
        wait for this process's transactions.
        """
        env = self.lmdb_env
        assert env is not None
        me = threading.get_ident()
        timeout = self.options.timeout
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._guard:
            self._resizing = True
            while any(t.thread != me for t in self._long_lived):
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    break  # they will find themselves expired
                self._guard.wait(0.05 if left is None else min(left, 0.05))
        try:
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
            with self._guard:
                self._resizing = False
                self._guard.notify_all()

    def register(self, txn: ReadTxn) -> None:
        with self._guard:
            while self._resizing:
                self._guard.wait()
            self._long_lived.add(txn)

    def unregister(self, txn: ReadTxn) -> None:
        with self._guard:
            self._long_lived.discard(txn)
            self._guard.notify_all()

    # -- closing

    def release(self) -> None:
        """Drop one handle; close the environment with the last one."""
        with _registry_lock:
            self.handles -= 1
            if self.handles > 0:
                return
            self.closed = True
            if _registry.get(self.path) is self:
                del _registry[self.path]
            env, self.lmdb_env = self.lmdb_env, None
            self.data = None
            try:
                if env is not None and self.pid == os.getpid():
                    try:
                        if self.writable and self.options.durability != "full":
                            env.sync(True)
                    finally:
                        env.close()
            finally:
                if self.openers is not None:
                    self.openers.close()


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


def _classify(path: str, flag: str) -> bool:
    """Return whether a store (a data file) exists at `path`; refuse what is not a store."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        if flag in "rw":
            raise StoreNotFoundError(
                errno.ENOENT, "no objstore store here; open it with flag 'c' to create one", path
            ) from None
        return False
    if not stat.S_ISDIR(st.st_mode):
        raise NotAStoreError(
            f"{path!r} is a file, not an objstore store (a store is a directory); "
            "pass the path of a store directory or of one to create"
        )
    try:
        data_size = os.stat(os.path.join(path, "data.mdb")).st_size
    except FileNotFoundError:
        data_size = 0
    if data_size > 0:  # an empty data.mdb is a creation interrupted before LMDB wrote it
        if not os.path.exists(os.path.join(path, _lock.OPENERS_LOCK)):
            # No objstore process ever opened it: make sure it is ours before
            # creating any file beside it.
            _peek(path, os.path.exists(os.path.join(path, "lock.mdb")))
        return True
    names = set(os.listdir(path))
    if flag in "rw":
        raise StoreNotFoundError(
            errno.ENOENT, "no objstore store in this directory; open it with flag 'c' to create one", path
        )
    if names - _OWN_FILES:
        raise NotAStoreError(
            f"{path!r} is a directory holding other files and no objstore store; "
            "refusing to create a store in it"
        )
    return False


def _peek(path: str, lock: bool) -> None:
    """Check, writing nothing, that a data file no objstore process has opened belongs to a store."""
    try:
        env = lmdb.open(path, readonly=True, lock=lock, create=False, max_dbs=MAX_DBS, map_size=0)
    except lmdb.Error as exc:
        if isinstance(exc, (lmdb.InvalidError, lmdb.VersionMismatchError)):
            raise NotAStoreError(f"{path!r} holds a data.mdb that is not an LMDB file ({exc})") from exc
        raise translate(exc, path, "open the store") from exc
    try:
        _check_size(env, path)
        with env.begin() as txn:
            raw = txn.get(META_KEY)
            if raw is None and txn.stat(env.open_db())["entries"]:
                raise NotAStoreError(
                    f"{path!r} is an LMDB environment that objstore did not create; refusing to modify it"
                )
        if raw is not None:
            _read_meta(raw, path)
    except lmdb.Error as exc:
        raise translate(exc, path, "open the store") from exc
    finally:
        env.close()


def filesystem_type(path: str) -> str:
    """The type of the filesystem holding `path` (Linux), or "" when the platform does not tell."""
    device = os.stat(path).st_dev
    if device not in _filesystem_types:
        wanted = f"{os.major(device)}:{os.minor(device)}"
        kind = ""
        try:
            with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as table:
                for line in table:
                    # "36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw"
                    fields, _, rest = line.partition(" - ")
                    if fields.split()[2:3] == [wanted]:
                        kind = rest.split()[0] if rest.split() else ""
        except OSError:
            pass
        _filesystem_types[device] = kind
    return _filesystem_types[device]


def _check_filesystem(path: str, options: Options) -> None:
    kind = filesystem_type(path)
    if kind in NETWORK_FILESYSTEMS and not options.allow_network_fs:
        raise StoreError(
            f"{path!r} is on a network filesystem ({kind}): LMDB's locks and memory map are not "
            "coherent there, so concurrent use can corrupt the store. Put the store on a local disk, "
            "or pass allow_network_fs=True if only one process on one host will ever open it"
        )


def _open_environment(
    path: str,
    flag: str,
    options: Options,
    settings: dict[str, Any],
    check: Callable[[str, dict[str, Any]], None],
) -> _Environment:
    exists = _classify(path, flag)
    if not exists:
        os.makedirs(path, exist_ok=True)
    _check_filesystem(path, options)
    environment = _Environment(path, options, writable=flag != "r")
    try:
        environment.openers = _lock.OpenersLock(path, options.exclusive, options.timeout)
    except StoreError:
        raise
    except OSError as exc:
        if exc.errno not in _lock.UNWRITABLE:
            raise
        if flag != "r" or options.exclusive:
            raise ReadOnlyError(
                f"cannot open {path!r} for writing: its lock file cannot be created ({exc}); "
                "check the permissions, or open it with flag 'r'"
            ) from exc
    try:
        if exists:
            environment.open_lmdb(create=False)
        else:
            # Serialise creation so a racing opener never sees a half-made store.
            with _lock.maintenance(path, options.timeout):
                data_file = os.path.join(path, "data.mdb")
                created_meanwhile = os.path.exists(data_file) and os.path.getsize(data_file) > 0
                environment.open_lmdb(create=not created_meanwhile)
                environment.open_databases(flag, settings, check)
                return environment
        environment.open_databases(flag, settings, check)
        if flag != "r" and "format" not in environment.settings:  # pragma: no cover - defensive
            raise NotAStoreError(f"{path!r} is not an objstore store")
        return environment
    except BaseException:
        if environment.lmdb_env is not None:
            environment.lmdb_env.close()
        if environment.openers is not None:
            environment.openers.close()
        raise


def open_store(
    path: str,
    flag: str,
    options: Options,
    settings: dict[str, Any],
    check: Callable[[str, dict[str, Any]], None],
) -> Store:
    """Open (or create) the store at `path` and return a new handle on it.

    `settings` are recorded in the metadata of a newly created store; the
    settings of an existing store are in the handle's ``settings``, and are
    passed to `check` (which raises to refuse them) before anything is written.
    """
    if flag not in ("r", "w", "c", "n"):
        raise ValueError(f"flag must be one of 'r', 'w', 'c' or 'n', not {flag!r}")
    real = os.path.realpath(path)
    with _registry_lock:
        environment = _registry.get(real)
        if environment is not None and (environment.lmdb_env is None or environment.pid != os.getpid()):
            environment.reopen()  # inherited across fork: reopen it, do not open a second one
        if environment is None:
            environment = _open_environment(real, flag, options, settings, check)
            _registry[real] = environment
        else:
            _check_compatible(environment, flag, options)
            if flag == "n":
                environment.run(environment.empty, True, "empty the store")
        environment.handles += 1
    return Store(environment, readonly=flag == "r")


def _check_compatible(environment: _Environment, flag: str, options: Options) -> None:
    current = environment.options
    if flag != "r" and not environment.writable:
        raise ReadOnlyError(
            f"{environment.path!r} is already open read-only (flag 'r') in this process; close those "
            "shelves before opening it for writing"
        )
    if options.durability != current.durability:
        raise ValueError(
            f"{environment.path!r} is already open in this process with durability="
            f"{current.durability!r}; every shelf of a store in one process shares its durability"
        )
    if options.exclusive and not current.exclusive:
        raise ValueError(
            f"{environment.path!r} is already open in this process without lock='exclusive'; "
            "close those shelves before opening it exclusively"
        )


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
    for environment in list(_registry.values()):
        if environment.pid == os.getpid() and environment.lmdb_env is not None:
            environment.before_fork()


def _after_fork_in_parent() -> None:
    for environment in list(_registry.values()):
        environment.after_fork_in_parent()


def _after_fork_in_child() -> None:
    global _registry_lock
    _registry_lock = threading.RLock()
    for environment in _registry.values():
        environment.forget()
    _lock.reset_after_fork()
    gc.collect()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(
        before=_before_fork, after_in_parent=_after_fork_in_parent, after_in_child=_after_fork_in_child
    )


# ------------------------------------------------------------ transactions


class ReadTxn:
    """A read transaction held open by the caller: one consistent snapshot of the store."""

    readonly = True

    def __init__(self, environment: _Environment) -> None:
        self._environment = environment
        self.path = environment.path
        self.thread = threading.get_ident()
        self.pid = os.getpid()
        self.expired = False
        self._txn: Txn | None = None
        self._db = environment.data

    def _begin(self) -> None:
        env = self._environment
        for attempt in range(_ATTEMPTS + 1):
            env.register(self)
            try:
                self._txn = env.lmdb_env.begin(db=env.data)  # type: ignore[union-attr]
                self._db = env.data
                return
            except Exception as exc:
                env.unregister(self)
                env.recover(exc, attempt, "open a snapshot")

    def forget(self) -> None:
        self._txn = None

    def end(self) -> None:
        """End the transaction; the mapping over it is closed from now on."""
        txn, self._txn = self._txn, None
        env = self._environment
        if txn is not None and self.pid == os.getpid():
            try:
                txn.abort()
            except lmdb.Error:
                pass  # already invalidated by a resize
        env.unregister(self)

    def _live(self) -> Txn:
        txn = self._txn
        if txn is None:
            if self.pid != os.getpid():
                raise TransactionError("this transaction was opened in the parent process before fork()")
            raise ClosedError("the transaction or snapshot is closed")
        if self.expired:
            raise TransactionError(
                "this snapshot ended because the store's map had to grow while it was open (the "
                "growth waited for it up to the timeout, or was made by this same thread); open a "
                "new snapshot"
            )
        return txn

    def _error(self, exc: lmdb.Error, action: str) -> BaseException:
        """The exception to raise for `exc`, raised by this transaction's lmdb object."""
        if self._environment.closed:
            return ClosedError(
                f"cannot {action}: the store was closed while this transaction or snapshot was open"
            )
        return translate(exc, self._environment.path, action)

    def _call(self, fn: Callable[[Txn], T], action: str) -> T:
        txn = self._live()
        try:
            return fn(txn)
        except lmdb.Error as exc:
            if not self._environment.closed and (self.expired or _is_transient(exc)):
                self.expired = True
                self._live()  # raises the TransactionError that explains it
            raise self._error(exc, action) from exc

    def get(self, key: bytes) -> bytes | None:
        return self._call(lambda txn: txn.get(key, db=self._db), "read")

    def contains(self, key: bytes) -> bool:
        return self._call(lambda txn: _contains(txn, self._db, key), "read")

    def count(self) -> int:
        return self._call(lambda txn: _count(txn, self._db), "count keys")

    def batch(
        self,
        lo: bytes | None,
        hi: bytes | None,
        reverse: bool,
        values: bool,
        after: bytes | None,
        limit: int = BATCH_ITEMS,
    ) -> list[Any]:
        return self._call(lambda txn: _batch(txn, self._db, lo, hi, reverse, values, after, limit), "iterate")


class WriteTxn(ReadTxn):
    """A write transaction of one thread; nested ones are savepoints inside their parent.

    Every change is also kept in a log, so that when the map fills up the
    transaction can be rolled back, the map grown and the changes replayed,
    all without the caller noticing. `blind` transactions (whose writes do not
    depend on what they read) may always be replayed; others only if no other
    process committed in between, else `ConflictError`.
    """

    readonly = False

    def __init__(self, environment: _Environment, parent: WriteTxn | None, blind: bool) -> None:
        super().__init__(environment)
        self.parent = parent
        self.blind = blind
        # Changes made at this level, in order, as (keys, records) runs; a record
        # None deletes its key, a key None empties the store.
        self._log: list[tuple[Sequence[bytes | None], Callable[[], Sequence[Value | None]]]] = []
        self._id = 0
        self._done = False

    # -- lifecycle

    def _begin(self) -> None:
        env = self._environment
        if self.parent is None:
            env.wait_for_fork()
            env.ensure_headroom()
            for attempt in range(_ATTEMPTS + 1):
                env.register(self)
                try:
                    self._txn = env.lmdb_env.begin(write=True, db=env.data)  # type: ignore[union-attr]
                    break
                except Exception as exc:
                    env.unregister(self)
                    env.recover(exc, attempt, "begin a transaction")
            self._id = self._txn.id()  # type: ignore[union-attr]
        else:
            self._txn = env.lmdb_env.begin(write=True, parent=self.parent._txn, db=env.data)  # type: ignore[union-attr]
        self._db = env.data
        env.writers[self.thread] = self

    def commit(self) -> None:
        self._check_thread()
        txn = self._live()
        for attempt in range(_ATTEMPTS + 1):
            try:
                txn.commit()
                break
            except lmdb.MapFullError as exc:
                # LMDB can need pages at commit time too; the commit aborted the transaction.
                if attempt >= _ATTEMPTS:
                    self._finish()
                    raise self._error(exc, "commit the transaction") from exc
                txn = self._replay()
            except lmdb.Error as exc:
                self._finish()
                raise self._error(exc, "commit the transaction") from exc
        if self.parent is not None:
            self.parent._log.extend(self._log)
        self._finish()

    def abort(self) -> None:
        txn = self._txn
        if txn is not None and self.pid == os.getpid():
            try:
                txn.abort()
            except lmdb.Error:
                pass
        self._finish()

    def _finish(self) -> None:
        if self._done:
            return
        self._done = True
        env = self._environment
        self._txn = None
        self._log = []
        if self.parent is None:
            env.writers.pop(self.thread, None)
            env.unregister(self)
        else:
            env.writers[self.thread] = self.parent

    def end(self) -> None:
        self.abort()

    def _call(self, fn: Callable[[Txn], T], action: str) -> T:
        self._check_thread()
        return super()._call(fn, action)

    def _check_thread(self) -> None:
        if threading.get_ident() != self.thread:
            raise TransactionError(
                "a transaction can only be used by the thread that opened it (LMDB write "
                "transactions belong to their thread)"
            )

    # -- map growth

    def _stack(self) -> list[WriteTxn]:
        stack = [self]
        parent = self.parent
        while parent is not None:
            stack.append(parent)
            parent = parent.parent
        return stack[::-1]

    def _replay(self) -> Txn:
        """Roll back, grow the map, begin again and replay every level's log; return our txn."""
        env = self._environment
        stack = self._stack()
        root = stack[0]
        if root._txn is not None:
            try:
                root._txn.abort()
            except lmdb.Error:
                pass  # a failed commit already ended it
        for level in stack:
            level._txn = None
        env.writers.pop(self.thread, None)
        env.unregister(root)
        try:
            env.grow()
        except BaseException:
            for level in stack:
                level._finish()
            raise
        old_id = root._id
        root._txn = None
        root._begin()
        if root._id != old_id and not root.blind:
            for level in reversed(stack):
                level.abort()
            raise ConflictError(
                "the transaction ran out of map space and another process committed while the store "
                "was grown; it was rolled back: run it again"
            )
        for level in stack:
            if level is not root:
                level._txn = env.lmdb_env.begin(write=True, parent=level.parent._txn, db=env.data)  # type: ignore[union-attr]
            txn = level._txn
            assert txn is not None
            for keys, make_records in level._log:
                for key, record in zip(keys, make_records(), strict=True):
                    if key is None:
                        env.empty(txn)
                    elif record is None:
                        txn.delete(key)
                    else:
                        txn.put(key, record)
        env.writers[self.thread] = self
        return self._txn  # type: ignore[return-value]

    def _write(self, fn: Callable[[Txn], T], action: str) -> T:
        self._check_thread()
        txn = self._live()
        for attempt in range(_ATTEMPTS + 1):
            try:
                return fn(txn)
            except lmdb.MapFullError as exc:
                if attempt >= _ATTEMPTS:
                    raise self._error(exc, action) from exc
                txn = self._replay()
            except lmdb.Error as exc:
                raise self._error(exc, action) from exc
        raise AssertionError("unreachable")  # pragma: no cover

    # -- writes

    def put(self, key: bytes, value: Value) -> None:
        self._write(lambda txn: txn.put(key, value), "store a value")
        self._log.append(((key,), lambda: (value,)))

    def delete(self, key: bytes) -> bool:
        deleted = self._write(lambda txn: txn.delete(key), "delete a key")
        if deleted:
            self._log.append(((key,), lambda: (None,)))
        return bool(deleted)

    def put_new(self, key: bytes, value: Value) -> bytes | None:
        existing = self._write(lambda txn: _put_new(txn, self._db, key, value), "store a value")
        if existing is None:
            self._log.append(((key,), lambda: (value,)))
        return existing

    def put_many(self, chunks: Iterable[Chunk]) -> None:
        self._check_thread()
        txn = self._live()
        for keys, make_records in chunks:
            records = make_records()
            while True:
                put = txn.put
                try:
                    # Two parallel sequences, not a list of pairs: zip reuses its
                    # tuple, so a bulk write allocates no container per pair.
                    for key, record in zip(keys, records, strict=True):
                        put(key, record)
                except lmdb.MapFullError:
                    # The replay restores everything before this chunk; then the
                    # whole chunk is written again.
                    txn = self._replay()
                    continue
                except lmdb.Error as exc:
                    raise self._error(exc, "store values") from exc
                self._log.append((keys, make_records))
                break

    def clear(self) -> None:
        self._write(self._environment.empty, "empty the store")
        self._log.append(((None,), lambda: (None,)))

    def write(self) -> AbstractContextManager[WriteTxn]:
        """Context manager: a savepoint inside this transaction."""
        self._check_thread()
        self._live()
        return _transaction(self._environment, self, blind=False)


@contextmanager
def _transaction(environment: _Environment, parent: WriteTxn | None, blind: bool) -> Iterator[WriteTxn]:
    """Commit on normal exit, roll back (and re-raise) on an exception."""
    txn = WriteTxn(environment, parent, blind)
    txn._begin()
    try:
        yield txn
    except BaseException:
        txn.abort()
        raise
    txn.commit()


# ------------------------------------------------------------------ handle


class Store:
    """A handle on a store: one per shelf, sharing its path's environment.

    Each operation runs in its own short transaction, or joins the write
    transaction this thread holds on the store.
    """

    __slots__ = ("_environment", "path", "readonly", "settings")

    def __init__(self, environment: _Environment, readonly: bool) -> None:
        self._environment = environment
        self.path = environment.path
        self.readonly = readonly
        self.settings = environment.settings

    def _joined(self) -> WriteTxn | None:
        env = self._environment
        if env.writers:
            return env.writers.get(threading.get_ident())
        return None

    def in_transaction(self) -> bool:
        """Whether this thread holds a write transaction on the store (which its operations join)."""
        return self._joined() is not None

    def _joined_writer(self, action: str) -> WriteTxn | None:
        if self.readonly:
            raise _read_only(self.path, action)
        return self._joined()

    def _read(self, fn: Callable[[Txn], T], action: str) -> T:
        return self._environment.run(fn, False, action)

    def _mutate(self, fn: Callable[[Txn], T], action: str) -> T:
        return self._environment.run(fn, True, action)

    # -- the hot paths, written out in full

    def get(self, key: bytes) -> bytes | None:
        env = self._environment
        if env.writers and threading.get_ident() in env.writers:
            return env.writers[threading.get_ident()].get(key)
        try:
            # No `with`: the temporary transaction is freed, which aborts it and
            # frees its reader slot, as soon as get() returns; that saves the
            # context manager's two calls, a seventh of a small read.
            return env.lmdb_env.begin(db=env.data).get(key)  # type: ignore[union-attr]
        except Exception as exc:
            env.recover(exc, 0, "read")
        return self._read(lambda txn: txn.get(key), "read")

    def put(self, key: bytes, value: Value) -> None:
        if self.readonly:
            raise _read_only(self.path, "store a value")
        env = self._environment
        if env.writers and threading.get_ident() in env.writers:
            env.writers[threading.get_ident()].put(key, value)
            return
        try:
            txn = env.lmdb_env.begin(write=True, db=env.data)  # type: ignore[union-attr]
            try:
                txn.put(key, value)
            except BaseException:
                txn.abort()
                raise
            txn.commit()
            return
        except Exception as exc:
            env.recover(exc, 0, "store a value")
        self._mutate(lambda txn: txn.put(key, value), "store a value")

    # -- everything else

    def contains(self, key: bytes) -> bool:
        joined = self._joined()
        if joined is not None:
            return joined.contains(key)
        db = self._environment.data
        return self._read(lambda txn: _contains(txn, db, key), "read")

    def count(self) -> int:
        joined = self._joined()
        if joined is not None:
            return joined.count()
        db = self._environment.data
        return self._read(lambda txn: _count(txn, db), "count keys")

    def batch(
        self,
        lo: bytes | None,
        hi: bytes | None,
        reverse: bool,
        values: bool,
        after: bytes | None,
        limit: int = BATCH_ITEMS,
    ) -> list[Any]:
        joined = self._joined()
        if joined is not None:
            return joined.batch(lo, hi, reverse, values, after, limit)
        env = self._environment
        return self._read(lambda txn: _batch(txn, env.data, lo, hi, reverse, values, after, limit), "iterate")

    def delete(self, key: bytes) -> bool:
        joined = self._joined_writer("delete a key")
        if joined is not None:
            return joined.delete(key)
        return bool(self._mutate(lambda txn: txn.delete(key), "delete a key"))

    def put_new(self, key: bytes, value: Value) -> bytes | None:
        joined = self._joined_writer("store a value")
        if joined is not None:
            return joined.put_new(key, value)
        env = self._environment
        return self._mutate(lambda txn: _put_new(txn, env.data, key, value), "store a value")

    def put_many(self, chunks: Iterable[Chunk]) -> None:
        with self._write_txn(blind=True, action="store values") as txn:
            txn.put_many(chunks)

    def clear(self) -> None:
        with self._write_txn(blind=True, action="empty the store") as txn:
            txn.clear()

    # -- explicit transactions

    def read(self) -> ReadTxn:
        """Begin a snapshot; the caller must `end()` it."""
        self._environment_check("open a snapshot")
        txn = ReadTxn(self._environment)
        txn._begin()
        return txn

    def _write_txn(self, blind: bool, action: str) -> AbstractContextManager[WriteTxn]:
        if self.readonly:
            raise _read_only(self.path, action)
        self._environment_check(action)
        return _transaction(self._environment, self._joined(), blind)

    def write(self) -> AbstractContextManager[WriteTxn]:
        """Context manager: a write transaction (a savepoint if this thread already holds one)."""
        return self._write_txn(blind=False, action="begin a transaction")

    def _environment_check(self, action: str) -> None:
        env = self._environment
        if env.lmdb_env is None or env.pid != os.getpid():
            env.recover(StoreError("forked"), 0, action)

    # -- lifecycle

    def sync(self) -> None:
        """Flush everything committed to disk, whatever the durability."""
        env = self._environment
        if self.readonly or not env.writable or env.options.durability == "full":
            return  # in "full" mode every commit was flushed before it returned
        self._environment_check("sync")
        try:
            env.lmdb_env.sync(True)  # type: ignore[union-attr]
        except lmdb.Error as exc:
            raise translate(exc, self.path, "sync") from exc

    def close(self) -> None:
        self._environment.release()

    def info(self) -> dict[str, Any]:
        """Facts about the store for people: sizes, settings, readers."""
        env = self._environment
        self._environment_check("read store information")
        lmdb_env = env.lmdb_env
        assert lmdb_env is not None
        info = lmdb_env.info()
        return {
            "path": self.path,
            "settings": dict(env.settings),
            "durability": env.options.durability,
            "exclusive": env.options.exclusive,
            "entries": self.count(),
            "map_size": info["map_size"],
            "used_bytes": env.used_bytes(),
            "file_bytes": os.path.getsize(os.path.join(self.path, "data.mdb")),
            "max_readers": info["max_readers"],
            "readers_in_use": info["num_readers"],
        }


def _read_only(path: str, action: str) -> ReadOnlyError:
    return ReadOnlyError(f"cannot {action}: the store {path!r} was opened read-only (flag 'r')")
