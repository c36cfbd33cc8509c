"""What every part of the storage shares: settings and limits, `Options`, primitives on an lmdb transaction.

It imports nothing of the storage package: every other module may use it.
It must never hold state, nor translate errors (``_errors`` does).
"""

from __future__ import annotations

import sys
from bisect import bisect_left
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import islice
from operator import itemgetter
from typing import TYPE_CHECKING, Any, TypeVar

T = TypeVar("T")
Value = bytes | memoryview  # a value to store: LMDB copies any contiguous buffer
# A run of keys and a function that returns their records. The records are
# made when the chunk is written, and made again if the transaction has to be
# replayed, so a bulk write keeps only one chunk of records in memory.
Chunk = tuple[Sequence[bytes], Callable[[], Sequence[Value]]]
if TYPE_CHECKING:
    from typing import TypeAlias

    import lmdb

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
# py-lmdb caches one ended read transaction per environment (reset, keeping
# its reader slot) and renews it for the next read: a single read is 15-25%
# faster. The cached one belongs to the parent across fork: a child keeps the
# inherited environment forever (_fork.ForkHandling.forget), because freeing
# it, even at the child's normal exit, frees the slot under the parent.
MAX_SPARE_TXNS = 1
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
    views: bool = False,
) -> list[Any]:
    """The next `limit` keys (or (key, record) pairs) of [lo, hi), after `after`, in order.

    Built by LMDB's cursor iterator, ``islice`` and ``bisect``, all in C: a
    batch costs about as much as the bare cursor walk. One item more than
    `limit` is read, so that leaving the metadata record out still fills it.
    `views`: `txn` gives views (``buffers=True``), and its keys are copied
    into bytes (its records stay views), in C too.
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
        if views:
            batch = _keys_copied(batch, values)
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
    if views:
        batch = _keys_copied(batch, values)
    batch.reverse()  # ascending, to bisect
    _drop_meta(batch, values)
    if lo is not None and batch:
        del batch[: bisect_left(batch, (lo,) if values else lo)]
    del batch[: max(0, len(batch) - limit)]
    batch.reverse()
    return batch


def _keys_copied(batch: list[Any], values: bool) -> list[Any]:
    """`batch` (views) with its keys copied into bytes, its records left views."""
    if not values:
        return list(map(bytes, batch))
    return list(zip(map(bytes, map(itemgetter(0), batch)), map(itemgetter(1), batch), strict=True))


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
