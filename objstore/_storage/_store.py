"""The handle a shelf holds on a store: single operations, each in its own short transaction."""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from operator import itemgetter, methodcaller
from typing import TYPE_CHECKING, Any

import lmdb

from .._errors import ReadOnlyError
from ._common import BATCH_ITEMS, Chunk, T, Value, _batch, _contains, _count, _put_new
from ._environment import REGISTRY
from ._errors import BackendError, translate
from ._transactions import InPlaceReadTxn, ReadTxn, WriteTxn, _transaction
from ._views import LARGE_BATCH, _load_batch

if TYPE_CHECKING:
    from ._common import Txn
    from ._environment import _Environment


# Records at least this big make a handle read in place (`Store.load`): the size
# from which objstore's codec writes buffers out of band.
IN_PLACE_SIZE = 1 << 16


class Store:
    """A handle on a store: one per shelf, sharing its path's environment.

    Each operation runs in its own short transaction, or joins the write
    transaction this thread holds on the store.
    """

    __slots__ = ("_environment", "_in_place", "_released", "path", "readonly", "settings")

    def __init__(self, environment: _Environment, readonly: bool) -> None:
        self._environment = environment
        self.path = environment.path
        self.readonly = readonly
        self.settings = environment.settings
        self._released = False
        # Whether `load` reads records in place (see there): from this handle's first large record on.
        self._in_place = False

    def _joined(self) -> WriteTxn | None:
        env = self._environment
        if env.writers:
            return env.writer_of(threading.get_ident())
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
        if env.writers:
            joined = env.writer_of(threading.get_ident())
            if joined is not None:
                return joined.get(key)
        try:
            # No `with`: the temporary transaction is freed, which aborts it and
            # frees its reader slot, as soon as get() returns; that saves the
            # context manager's two calls, a seventh of a small read.
            return env.lmdb_env.begin().get(key)  # type: ignore[union-attr]
        except Exception as exc:
            env.recover(exc, 0, "read")
        # methodcaller, not a lambda: a closure would make `key` a cell, built on every call.
        record: bytes | None = self._read(methodcaller("get", key), "read")
        return record

    def load(self, key: bytes, use: Callable[[Any, str], T], name: str, absent: T) -> T:
        """``use(record, name)`` for the record of `key`, or `absent`: `get` without copying the record.

        Once this handle has met a record of `IN_PLACE_SIZE` bytes or more, the
        record is a view into LMDB's map, valid only during the call: a large
        value is copied once (by `use`), not twice. Map growth in this process
        waits for the threads inside this method holding a view (`MapGrowth`),
        and a read that begins while a resize is under way copies the record
        instead. Until then records are copied out of the map, as `get` does:
        a view costs a tenth of a small read (py-lmdb's buffer objects), which
        a store of small values never pays.
        """
        env = self._environment
        if env.writers:
            joined = env.writer_of(threading.get_ident())
            if joined is not None:
                return joined.load(key, use, name, absent)
        if not self._in_place:
            try:
                record = env.lmdb_env.begin().get(key)  # type: ignore[union-attr]
            except Exception as exc:
                env.recover(exc, 0, "read")
                return self._load_copied(key, use, name, absent)
            if record is None:
                return absent
            if len(record) >= IN_PLACE_SIZE:
                self._in_place = True  # this store holds large values: read them in place from now on
            return use(record, name)
        try:
            # Positional (db, parent, write, buffers): py-lmdb parses keywords slowly (0.3 µs).
            txn = env.lmdb_env.begin(None, None, False, True)  # type: ignore[union-attr]
            record = txn.get(key)
        except Exception as exc:
            env.recover(exc, 0, "read")
            return self._load_copied(key, use, name, absent)
        if record is None:
            return absent
        if env._resizing:  # begun as a resize is about to remap: never touch the view, copy instead
            del record, txn
            return self._load_copied(key, use, name, absent)
        try:
            return use(record, name)
        except BaseException:
            # The traceback keeps this frame: make its view unusable, not a pointer into a map that may move.
            with contextlib.suppress(BufferError):
                record.release()
            raise

    def _load_copied(self, key: bytes, use: Callable[[Any, str], T], name: str, absent: T) -> T:
        """`load` through a copy of the record, retrying through growth (a closure here, not in `load`)."""
        record = self._read(lambda txn: txn.get(key), "read")
        return absent if record is None else use(record, name)

    def put(self, key: bytes, value: Value) -> None:
        if self.readonly:
            raise _read_only(self.path, "store a value")
        env = self._environment
        if env.writers:
            joined = env.writer_of(threading.get_ident())
            if joined is not None:
                joined.put(key, value)
                return
        try:
            txn = env.lmdb_env.begin(write=True)  # type: ignore[union-attr]
            try:
                txn.put(key, value)
            except BaseException:
                txn.abort()
                raise
            txn.commit()
            return
        except Exception as exc:
            env.recover(exc, 0, "store a value")
        self._mutate(methodcaller("put", key, value), "store a value")  # no cell: see get()

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
        take: Callable[[Any], Any] | None = None,
    ) -> list[Any]:
        joined = self._joined()
        if joined is not None:
            return joined.batch(lo, hi, reverse, values, after, limit, take)
        env = self._environment
        if take is not None and self._in_place and limit <= LARGE_BATCH:
            # Read in place, as `load`: each large record handed to `take` as a view (one copy).
            try:
                txn: Any = env.lmdb_env.begin(None, None, False, True)  # type: ignore[union-attr]
                found = _load_batch(
                    env,
                    lambda: _batch(txn, env.data, lo, hi, reverse, values, after, limit, True),
                    values,
                    take,
                )
            except Exception as exc:
                env.recover(exc, 0, "iterate")
                found = None
            if found is not None:
                return found
        batch = self._read(
            lambda txn: _batch(txn, env.data, lo, hi, reverse, values, after, limit), "iterate"
        )
        # Batches of large records are short: from the first one met, read in place, as `load` does.
        if take is not None and limit < BATCH_ITEMS and batch:
            if max(map(len, map(itemgetter(1), batch))) >= IN_PLACE_SIZE:
                self._in_place = True
        return batch

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

    def read(self, zero_copy: bool = False) -> ReadTxn:
        """Begin a snapshot (`zero_copy`: see `ReadTxn`); the caller must `end()` it."""
        self._environment.ensure_open("open a snapshot")
        # In place once this handle has met a large record, as `load`.
        txn = (InPlaceReadTxn if self._in_place and not zero_copy else ReadTxn)(self._environment, zero_copy)
        txn._begin()
        return txn

    def _write_txn(
        self, blind: bool, action: str, take: Callable[[Any], Any] | None = None
    ) -> AbstractContextManager[WriteTxn]:
        if self.readonly:
            raise _read_only(self.path, action)
        self._environment.ensure_open(action)
        return _transaction(self._environment, self._joined(), blind, take, self._in_place)

    def write(self, take: Callable[[Any], Any] | None = None) -> AbstractContextManager[WriteTxn]:
        """Context manager: a write transaction (a savepoint if this thread already holds one).

        With `take` (and once this handle reads in place), its reads hand each
        large record to `take` as a view, to copy it out, as `batch` does.
        """
        return self._write_txn(blind=False, action="begin a transaction", take=take)

    # -- lifecycle

    def sync(self) -> None:
        """Flush everything committed to disk, whatever the durability."""
        env = self._environment
        if self.readonly or not env.writable or env.options.durability == "full":
            return  # in "full" mode every commit was flushed before it returned
        self._environment.ensure_open("sync")
        try:
            env.lmdb_env.sync(True)  # type: ignore[union-attr]
        except BackendError as exc:
            raise translate(exc, self.path, "sync") from exc

    def close(self) -> None:
        """Release this handle's share of the environment; idempotent, also across threads."""
        env = self._environment
        with REGISTRY.lock:
            if self._released:
                return
            self._released = True
            env.release()

    def info(self) -> dict[str, Any]:
        """Facts about the store for people: sizes, settings, readers."""
        env = self._environment
        self._environment.ensure_open("read store information")
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
            **_readers(lmdb_env),
            "reader_slots_touched": info["num_readers"],
        }


def _readers(env: lmdb.Environment) -> dict[str, int]:
    """Count the reader slots in use: by live processes' reads, and stale ones left by dead processes."""
    live = stale = 0
    # py-lmdb gives the reader table only as text: a header, then "pid thread txnid" per slot in use.
    for line in env.readers().splitlines()[1:]:
        fields = line.split()
        if not fields or not fields[0].isdigit():
            continue
        if not _alive(int(fields[0])):
            stale += 1
        elif fields[2:3] != ["-"]:  # "-": a cached, idle read transaction (see MAX_SPARE_TXNS)
            live += 1
    return {"readers_live": live, "readers_stale": stale}


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # it exists, owned by another user
    return True


def _read_only(path: str, action: str) -> ReadOnlyError:
    return ReadOnlyError(f"cannot {action}: the store {path!r} was opened read-only (flag 'r')")
