"""What every part of the storage shares: settings, the `Storage` interface, primitives, errors."""

from __future__ import annotations

import sys
from bisect import bisect_left
from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from itertools import islice
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import lmdb

from .._errors import CorruptError, ReadOnlyError, StoreError, UnsupportedFormatError

if TYPE_CHECKING:
    from ._transactions import ReadTxn, WriteTxn

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
# The size of LMDB 0.9's lock.mdb with MAX_READERS slots, found by experiment
# (tests/test_files.py checks it): a 192-byte header holding the first slot,
# then 1023 slots of one 64-byte cache line each. objstore allocates it for
# real before LMDB maps it, because touching a page of a sparse lock file on a
# full filesystem kills the process with SIGBUS.
LOCK_FILE_SIZE = 192 + (MAX_READERS - 1) * 64
# The map is address space, not disk (the data file grows only with the data,
# without writemap it stays sparse): reserve far ahead on 64-bit, so that the
# map rarely has to grow. Growing stalls every process whose map the data
# outgrows while one of its threads holds a snapshot (docs/concurrency.md).
DEFAULT_MAP_SIZE = 1 << 36 if sys.maxsize > 2**32 else 1 << 26
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


@dataclass(frozen=True)
class Options:
    """How a store is opened; every shelf of one path in one process must agree on `durability`.

    `mode` is the permission bits of the files a new store creates (filtered
    by the umask, as in ``dbm.open``); its directory gets the same bits plus
    search (x) wherever they grant read.
    """

    durability: str = "full"
    map_size: int = DEFAULT_MAP_SIZE
    exclusive: bool = False
    timeout: float | None = 10.0
    allow_network_fs: bool = False
    mode: int = 0o666

    def __post_init__(self) -> None:
        if not isinstance(self.durability, str) or self.durability not in DURABILITY:
            raise ValueError(f"durability must be one of {sorted(DURABILITY)}, not {self.durability!r}")
        if type(self.map_size) is not int or not 4096 <= self.map_size <= MAX_MAP_SIZE:
            raise ValueError(f"map_size must be an int from 4096 to {MAX_MAP_SIZE}, not {self.map_size!r}")
        timeout = self.timeout
        if timeout is not None:
            if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
                raise TypeError(f"timeout must be a number of seconds or None, not {timeout!r}")
            if not timeout >= 0:  # also refuses NaN
                raise ValueError(f"timeout must be None or >= 0, not {timeout!r}")
        if type(self.mode) is not int or not 0 <= self.mode <= 0o777:
            raise ValueError(f"mode must be an int of permission bits from 0 to 0o777, not {self.mode!r}")


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


def affordable_map_size(size: int) -> int:
    """`size`, capped so that a map this large fits under the process's address-space limit.

    A failed remap leaves LMDB's environment without a map, so the size must
    fit before it is asked for: with ``ulimit -v`` set, a map takes at most
    an eighth of it.
    """
    try:
        import resource

        limit = resource.getrlimit(resource.RLIMIT_AS)[0]
    except (ImportError, OSError, AttributeError):  # pragma: no cover - not POSIX
        return size
    if limit == resource.RLIM_INFINITY or limit <= 0:
        return size
    return max(1 << 20, min(size, limit // 8))


def translate(exc: BaseException, path: str, action: str) -> BaseException:
    """Return the objstore exception for an ``lmdb`` exception raised while doing `action`."""
    if isinstance(exc, lmdb.ReadonlyError):
        return ReadOnlyError(
            f"cannot {action}: the store {path!r} is not writable by this process ({exc}); "
            "check its permissions, or open it with flag 'r' to read it"
        )
    if "Permission denied" in str(exc):
        return ReadOnlyError(
            f"cannot {action}: this user may not write the files of {path!r} ({exc}). Even reading "
            "needs write access to LMDB's lock file lock.mdb (its reader table); ask the store's owner "
            "for group access (see mode= in docs/api.md)"
        )
    if isinstance(exc, lmdb.ReadersFullError):
        return StoreError(
            f"cannot {action}: all {MAX_READERS} reader slots of {path!r} are in use (the limit). Each "
            "open snapshot and each read in progress holds one, in every process: close your snapshots "
            "(use them in with-blocks) and end processes that hold many"
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
    if "No space" in str(exc) or "Disk quota" in str(exc):
        return disk_full(path, action, exc)
    if isinstance(exc, lmdb.DiskError) or "Input/output error" in str(exc):
        return StoreError(
            f"cannot {action}: writing {path!r} failed ({exc}); the disk may be full. Nothing of the "
            "failed transaction was stored"
        )
    return StoreError(f"cannot {action} on {path!r}: {exc}")


def disk_full(path: str, action: str, exc: BaseException) -> StoreError:
    """The error for a write that failed because the filesystem of `path` is full."""
    return StoreError(
        f"cannot {action}: the disk holding {path!r} is full ({exc}). Free some space and try again; "
        "nothing of the failed operation was stored"
    )


def _is_transient(exc: BaseException) -> bool:
    """Whether `exc` is what a concurrent map resize in this process does to a transaction."""
    if isinstance(exc, lmdb.InvalidParameterError):
        return True
    return isinstance(exc, lmdb.Error) and "closed/deleted/dropped" in str(exc)
