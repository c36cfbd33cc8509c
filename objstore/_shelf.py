"""Shelf: a persistent, dict-like mapping of ``str`` keys to picklable values.

    with objstore.open("state") as db:      # a directory; created if missing
        db["config"] = {"retries": 3}       # pickled and committed durably
        config = db["config"]               # unpickled: a new copy each time

The trap, as in ``shelve``: a value read from the shelf is a *copy*, so
``db["list"].append(1)`` changes nothing on disk. Store it back
(``x = db["list"]; x.append(1); db["list"] = x``), or, better, change it in
place atomically, across threads and processes::

    with db.edit("list") as x:              # one write transaction
        x.append(1)
    db.modify("counter", lambda n: n + 1, default=0)

``writeback=True`` works as in ``shelve`` (accessed entries are cached and
written back by ``sync()``/``close()``), but writes back in one transaction
and only the entries whose pickle changed.

Keys are encoded as UTF-8 and kept in sorted (code point) order, which the
range methods (``iterkeys``, ``iteritems``, ``first``, ``last``) expose.
"""

from __future__ import annotations

import atexit
import functools
import os
import sys
import threading
import warnings
import weakref
from collections.abc import (
    Callable,
    ItemsView,
    Iterable,
    Iterator,
    KeysView,
    Mapping,
    MutableMapping,
    Sequence,
    ValuesView,
)
from contextlib import AbstractContextManager, contextmanager
from functools import partial
from itertools import chain
from operator import itemgetter
from typing import Any, NoReturn, TypeVar

from ._errors import ClosedError, ConflictError, ReadOnlyError, UnsupportedFormatError
from ._serialize import (
    CRC_IMPLEMENTATION,
    CRC_RESIDUE,
    KIND_PICKLE,
    TRAILER_SIZE,
    Codec,
    Pickler,
    Record,
    Unpickler,
    _add_note,
    crc32,
    is_intact,
)
from ._storage import (
    BATCH_BYTES,
    BATCH_ITEMS,
    DEFAULT_MAP_SIZE,
    MAX_KEY_SIZE,
    Chunk,
    Options,
    ReadTxn,
    Storage,
    open_store,
)

__all__ = ["Shelf", "Snapshot", "Transaction", "open"]

VALUE_FORMAT = 1
KEY_ENCODING = "utf-8"
_MISSING: Any = object()
_CHUNK = 4096  # pairs pickled at a time by a bulk write
_MODIFY_ATTEMPTS = 16
_V = TypeVar("_V")

# ------------------------------------------------------------------- keys


def encode_key(key: str) -> bytes:
    """Return the stored form of `key`, or raise the error that says why it cannot be one."""
    if not isinstance(key, str):
        raise TypeError(f"objstore keys must be str, not {type(key).__name__}")
    try:
        encoded = key.encode()
    except UnicodeEncodeError as exc:
        raise ValueError(
            f"key {key!r} cannot be encoded as UTF-8 ({exc.reason}); objstore keys must be valid text"
        ) from None
    if not encoded:
        raise ValueError("the empty string cannot be a key: LMDB keys are 1 to 511 bytes")
    if len(encoded) > MAX_KEY_SIZE:
        raise ValueError(
            f"key is {len(encoded)} bytes in UTF-8; objstore keys are limited to {MAX_KEY_SIZE} bytes "
            "(LMDB's key size limit): shorten it, or hash it and keep the full key in the value"
        )
    return encoded


def _chunks(encoded: list[bytes], keys: list[str], values: list[Any], codec: Codec) -> Iterator[Chunk]:
    """The pairs of a bulk write as chunks for `Storage.put_many`, pickled one chunk at a time."""
    for i in range(0, len(keys), _CHUNK):
        part = slice(i, i + _CHUNK)
        yield encoded[part], partial(codec.encode_many, values[part], keys[part])


def encode_keys(keys: list[str]) -> list[bytes]:
    """`encode_key` over a list, with the checks made once for the whole list."""
    try:
        encoded = [key.encode() for key in keys]
    except (AttributeError, UnicodeEncodeError):
        encoded = []
    if len(encoded) != len(keys) or (
        keys
        and (
            set(map(type, keys)) != {str}
            or min(map(len, encoded)) == 0
            or max(map(len, encoded)) > MAX_KEY_SIZE
        )
    ):
        return [encode_key(key) for key in keys]  # raises for the first bad key
    return encoded


def _bound(value: str | None, name: str) -> bytes | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise TypeError(f"{name} must be str or None, not {type(value).__name__}")
    return value.encode()


def _bounds(prefix: str | None, start: str | None, stop: str | None) -> tuple[bytes | None, bytes | None]:
    """The byte range [lo, hi) of keys that start with `prefix` and lie in [start, stop)."""
    lo = _bound(start, "start")
    hi = _bound(stop, "stop")
    p = _bound(prefix, "prefix")
    if p:
        # No UTF-8 byte is 0xff, so exactly the keys starting with p lie in [p, p + b"\xff").
        lo = p if lo is None else max(lo, p)
        end = p + b"\xff"
        hi = end if hi is None else min(hi, end)
    return lo, hi


class _Closed:
    """Stands in for the storage of a closed mapping: every use raises `ClosedError`."""

    def __init__(self, what: str) -> None:
        self._what = what

    def __getattr__(self, name: str) -> NoReturn:
        raise ClosedError(f"the {self._what} is closed")

    def closed_get(self, key: bytes = b"") -> NoReturn:
        """Stands in for the bound `get` of the hot path."""
        raise ClosedError(f"the {self._what} is closed")


# ----------------------------------------------------------------- views


class _KeysView(KeysView[str]):
    __slots__ = ()


class _ValuesView(ValuesView[Any]):
    __slots__ = ()

    def __iter__(self) -> Iterator[Any]:
        return self._mapping.itervalues()  # type: ignore[attr-defined, no-any-return]


class _ItemsView(ItemsView[str, Any]):
    __slots__ = ()

    def __iter__(self) -> Iterator[tuple[str, Any]]:
        return self._mapping.iteritems()  # type: ignore[attr-defined, no-any-return]


# --------------------------------------------------------------- mappings


class _Reader(Mapping[str, Any]):
    """The read side of the dict face, over any storage source (store, snapshot, transaction)."""

    _source: Any
    _codec: Codec

    def __init__(self, source: Storage | ReadTxn, codec: Codec) -> None:
        self._bind(source)
        self._codec = codec
        self._decode = codec.decode
        self._load = codec.load

    def _bind(self, source: Storage | ReadTxn | _Closed) -> None:
        self._source = source
        self._get: Callable[[bytes], bytes | None]
        if isinstance(source, _Closed):
            self._get = source.closed_get
            # Empty the batches that running iterators are walking, so their
            # next step reads the next batch and meets the closed source.
            for batch in list(self._live_batches.values()):
                batch.clear()
        else:
            self._get = source.get
            self._live_batches: dict[int, list[Any]] = {}

    def _value(self, key: str, record: bytes) -> Any:
        return self._decode(record, key)

    def __getitem__(self, key: str) -> Any:
        # The hot path: encode_key's checks written out for the common case.
        if type(key) is str:
            try:
                encoded = key.encode()
            except UnicodeEncodeError:
                encoded = encode_key(key)
            if not 0 < len(encoded) <= MAX_KEY_SIZE:
                encoded = encode_key(key)
        else:
            encoded = encode_key(key)
        record = self._get(encoded)
        if record is None:
            raise KeyError(key)
        # Codec.decode's fast path, inlined: a frame is a tenth of a small read.
        try:
            if crc32(record) == CRC_RESIDUE and record[-TRAILER_SIZE] == KIND_PICKLE:
                return self._load(record)
        except IndexError:
            pass
        except Exception:
            return self._decode(record, key)  # load again to raise with the key named
        return self._decode(record, key)

    def get(self, key: str, default: Any = None) -> Any:
        """Return the value of `key`, or `default` if it is not in the store."""
        record = self._source.get(encode_key(key))
        if record is None:
            return default
        return self._value(key, record)

    def __contains__(self, key: object) -> bool:
        return bool(self._source.contains(encode_key(key)))  # type: ignore[arg-type]

    def __len__(self) -> int:
        return int(self._source.count())

    def __iter__(self) -> Iterator[str]:
        return self.iterkeys()

    def keys(self) -> KeysView[str]:
        """A view of the keys, in sorted order."""
        return _KeysView(self)

    def values(self) -> ValuesView[Any]:
        """A view of the values, in key order."""
        return _ValuesView(self)

    def items(self) -> ItemsView[str, Any]:
        """A view of the (key, value) pairs, in key order."""
        return _ItemsView(self)

    # -- ordered access

    def _batches(
        self, lo: bytes | None, hi: bytes | None, reverse: bool, values: bool
    ) -> Iterator[list[Any]]:
        """Batches of keys (or of (key, record) pairs) of [lo, hi), in order.

        Each batch is read in its own short transaction and the next resumes
        after its last key: no transaction stays open while the caller's loop
        runs. Batches of records are sized to hold about BATCH_BYTES.
        """
        after = None
        limit = BATCH_ITEMS if not values else 16
        live, token = self._live_batches, object()
        try:
            while True:
                batch = self._source.batch(lo, hi, reverse, values, after, limit)
                live[id(token)] = batch
                if batch:
                    yield batch
                if isinstance(self._source, _Closed):
                    self._source.closed_get()  # closed while iterating: raises ClosedError
                if len(batch) < limit:
                    return
                if values:
                    size = sum(map(len, map(itemgetter(1), batch)))
                    limit = max(1, min(BATCH_ITEMS, BATCH_BYTES * len(batch) // max(size, 1)))
                    after = batch[-1][0]
                else:
                    after = batch[-1]
        finally:
            live.pop(id(token), None)

    def _records(
        self, prefix: str | None, start: str | None, stop: str | None, reverse: bool
    ) -> Iterator[tuple[str, bytes]]:
        lo, hi = _bounds(prefix, start, stop)
        for batch in self._batches(lo, hi, reverse, values=True):
            for raw_key, record in batch:
                yield raw_key.decode(), record

    def iterkeys(
        self,
        prefix: str | None = None,
        *,
        start: str | None = None,
        stop: str | None = None,
        reverse: bool = False,
    ) -> Iterator[str]:
        """Iterate over keys in sorted order: those starting with `prefix` and in [`start`, `stop`).

        Every bound is optional. ``reverse=True`` iterates from the highest key
        down. Keys are read in batches of up to 1024, each in its own short
        transaction: changes made while iterating show from the next batch on.
        For a frozen view, iterate inside `snapshot()`.
        """
        lo, hi = _bounds(prefix, start, stop)
        for batch in self._batches(lo, hi, reverse, values=False):
            yield from map(bytes.decode, batch)

    def iteritems(
        self,
        prefix: str | None = None,
        *,
        start: str | None = None,
        stop: str | None = None,
        reverse: bool = False,
    ) -> Iterator[tuple[str, Any]]:
        """Iterate over (key, value) pairs in key order; the bounds are those of `iterkeys`."""
        lo, hi = _bounds(prefix, start, stop)
        load, decode = self._load, self._decode
        for batch in self._batches(lo, hi, reverse, values=True):
            for raw_key, record in batch:
                key = raw_key.decode()
                # Codec.decode's fast path, inlined as in __getitem__.
                try:
                    if crc32(record) == CRC_RESIDUE and record[-TRAILER_SIZE] == KIND_PICKLE:
                        value = load(record)
                    else:
                        value = decode(record, key)  # raises the error that says what is wrong
                except IndexError:
                    value = decode(record, key)
                except Exception:
                    value = decode(record, key)  # loads again, to raise with the key named
                yield key, value

    def itervalues(
        self,
        prefix: str | None = None,
        *,
        start: str | None = None,
        stop: str | None = None,
        reverse: bool = False,
    ) -> Iterator[Any]:
        """Iterate over values in key order; the bounds are those of `iterkeys`."""
        return map(itemgetter(1), self.iteritems(prefix, start=start, stop=stop, reverse=reverse))

    def verify(self) -> list[str]:
        """Check the integrity of every value record; return the keys whose records are damaged.

        Reads the whole store in batches without unpickling anything.
        """
        return [key for key, record in self._records(None, None, None, False) if not is_intact(record)]

    def _end(self, prefix: str | None, last: bool) -> tuple[str, Any]:
        lo, hi = _bounds(prefix, None, None)
        batch = self._source.batch(lo, hi, last, True, None, 1)
        if not batch:
            raise KeyError("the store is empty" if not prefix else f"no key starts with {prefix!r}")
        key = batch[0][0].decode()
        return key, self._value(key, batch[0][1])

    def first(self, prefix: str | None = None) -> tuple[str, Any]:
        """Return the (key, value) pair with the lowest key (starting with `prefix`); `KeyError` if none."""
        return self._end(prefix, last=False)

    def last(self, prefix: str | None = None) -> tuple[str, Any]:
        """Return the (key, value) pair with the highest key (starting with `prefix`); `KeyError` if none."""
        return self._end(prefix, last=True)


class _Writer(_Reader, MutableMapping[str, Any]):
    """The write side of the dict face, over a store or a write transaction."""

    # The writeback cache of a shelf opened with writeback=True; None otherwise.
    _cache: _WritebackCache | None = None

    def _owns_transactions(self) -> bool:
        """Whether a transaction this mapping opens is a whole transaction, not a savepoint."""
        return False

    def _check_writable(self) -> None:
        if self._source.readonly:
            raise ReadOnlyError(
                f"cannot write: the store {self._source.path!r} was opened read-only (flag 'r')"
            )

    def __setitem__(self, key: str, value: Any) -> None:
        if self._source.readonly:
            self._check_writable()
        self._source.put(encode_key(key), self._codec.encode(value, key))

    def __delitem__(self, key: str) -> None:
        self._check_writable()
        if not self._source.delete(encode_key(key)):
            raise KeyError(key)

    def pop(self, key: str, default: Any = _MISSING) -> Any:
        """Remove `key` and return its value, atomically; `default` (or `KeyError`) if absent."""
        encoded = encode_key(key)
        if self._source.readonly and not self._source.contains(encoded):
            if default is _MISSING:
                raise KeyError(key)
            return default  # nothing to remove: fine on a read-only store, as in shelve
        self._check_writable()
        with self._source.write() as txn:
            record = txn.get(encoded)
            if record is None:
                if default is _MISSING:
                    raise KeyError(key)
                return default
            # Loaded inside the transaction: if it cannot be loaded, nothing is removed.
            value = self._decode(record, key)
            txn.delete(encoded)
        return value

    def popitem(self) -> tuple[str, Any]:
        """Remove and return the (key, value) pair with the lowest key, atomically; `KeyError` if empty."""
        self._check_writable()
        with self._source.write() as txn:
            batch = txn.batch(None, None, False, True, None, 1)
            if not batch:
                raise KeyError("popitem(): the store is empty")
            raw_key, record = batch[0]
            key = raw_key.decode()
            value = self._decode(record, key)
            txn.delete(raw_key)
        return key, value

    def setdefault(self, key: str, default: Any = None) -> Any:
        """Return the value of `key`, first storing `default` under it if absent (atomically)."""
        encoded = encode_key(key)
        record = self._get(encoded)
        if record is None:
            self._check_writable()
            # put_new stores only if the key is still absent, and says what is there if not.
            record = self._source.put_new(encoded, self._codec.encode(default, key))
            if record is None:
                return default
        return self._value(key, record)

    def update(self, other: Any = (), /, **kwds: Any) -> None:
        """Store every pair of `other` (a mapping or pairs) and `kwds`, in one transaction.

        If a key is invalid or a value fails to pickle, nothing is stored.
        Values are pickled a few thousand at a time as they are written, so
        memory does not grow with the size of the update.
        """
        keys, values = _pairs(other, kwds)
        if not keys:
            return
        self._check_writable()
        self._source.put_many(_chunks(encode_keys(keys), keys, values, self._codec))

    def clear(self) -> None:
        """Remove every key, in one transaction."""
        self._check_writable()
        self._source.clear()

    # -- atomic read-modify-write

    def transaction(self) -> AbstractContextManager[Transaction]:
        """A mapping bound to one write transaction; use it in a ``with`` block::

            with db.transaction() as txn:
                txn["total"] = txn.get("total", 0) + 1

        Reads inside it see its own writes; normal exit commits, an exception
        rolls everything back and propagates. Other writers (threads and
        processes) wait until it ends, so read-modify-write inside it is
        atomic. Nested calls are savepoints. Plain operations on the shelf
        made by this thread while it is open join it. Nothing begins until the
        ``with`` block is entered; used any other way, the returned object
        raises an error saying so.
        """
        return _TransactionBlock(self._transaction())

    @contextmanager
    def _transaction(self) -> Iterator[Transaction]:
        cache = self._cache
        written: list[bytes | None] = []
        try:
            self._check_writable()
            with self._source.write() as txn:
                mapping = Transaction(txn, self._codec)
                try:
                    yield mapping
                finally:
                    mapping._bind(_Closed("transaction"))
                    if cache is not None:
                        written = txn.written()
        finally:
            # After the commit (or rollback): dropped earlier, an entry could be
            # cached again from the store's old value by another thread.
            if cache is not None:
                cache.forget_written(written)

    def modify(self, key: str, fn: Callable[[Any], _V], default: Any = _MISSING) -> _V:
        """Atomically replace the value of `key` by ``fn(value)`` and return the new value.

        If `key` is absent, ``fn(default)`` is stored, or `KeyError` raised when
        no default is given. ``db.modify("n", lambda n: n + 1, default=0)`` is
        a counter that never loses an increment, whatever the number of
        processes incrementing it.
        """
        for attempt in range(_MODIFY_ATTEMPTS):
            try:
                with self.transaction() as txn:
                    value = txn[key] if default is _MISSING else txn.get(key, default)
                    new = fn(value)
                    txn[key] = new
                return new
            except ConflictError:
                # Rolled back while the map grew: fn can simply be applied again,
                # unless an enclosing transaction was rolled back with it.
                if attempt == _MODIFY_ATTEMPTS - 1 or not self._owns_transactions():
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    @contextmanager
    def edit(self, key: str, default: Any = _MISSING) -> Iterator[Any]:
        """Load the value of `key` for in-place changes and store it back, in one transaction.

        ::

            with db.edit("jobs", default=[]) as jobs:
                jobs.append(job)

        The value is stored only if its pickle changed; if the block raises,
        nothing is stored. Without a default, an absent key raises `KeyError`.
        """
        encoded = encode_key(key)
        with self.transaction() as txn:
            source = txn._source
            record = source.get(encoded)
            if record is None:
                if default is _MISSING:
                    raise KeyError(key)
                value = default
            else:
                value = self._value(key, record)
            yield value
            new = self._codec.encode(value, key)
            if new != record:
                source.put(encoded, new)


class Snapshot(_Reader):
    """A read-only mapping over one read transaction: a consistent view of the whole store.

    Made by `Shelf.snapshot`. Every read sees the store as it was when the
    snapshot began, whatever other threads and processes commit meanwhile.
    Close it (or leave its ``with`` block) promptly: while it is open, LMDB
    cannot reuse the pages it sees, and the data file grows.
    """

    def __init__(self, txn: ReadTxn, codec: Codec) -> None:
        super().__init__(txn, codec)
        self._txn: ReadTxn | None = txn

    def close(self) -> None:
        """End the snapshot; later use raises `ClosedError`. Idempotent."""
        txn, self._txn = self._txn, None
        self._bind(_Closed("snapshot"))
        if txn is not None:
            txn.end()

    def __enter__(self) -> Snapshot:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        # As files do: an unclosed snapshot pins a version of the store until
        # it is collected, so say so, and end it.
        txn = self.__dict__.get("_txn")
        if txn is not None:
            try:
                message = f"unclosed objstore snapshot of {txn.path!r}"
                warnings.warn(message, ResourceWarning, stacklevel=1, source=self)
            finally:
                self.close()

    def __repr__(self) -> str:
        state = "closed" if self._txn is None else "open"
        return f"<objstore.Snapshot {state}>"


class Transaction(_Writer):
    """A mapping bound to one write transaction; made by `Shelf.transaction`.

    Only usable by the thread that opened it, and only inside its ``with``
    block; afterwards every operation raises `ClosedError`.
    """

    def __repr__(self) -> str:
        state = "closed" if isinstance(self._source, _Closed) else "open"
        return f"<objstore.Transaction {state}>"


_OUTSIDE_WITH = (
    "db.transaction() returns a context manager, not the transaction: use it in a with block: "
    "with db.transaction() as txn: txn[key] = value"
)


class _TransactionBlock(AbstractContextManager[Transaction]):
    """What `transaction()` returns: a context manager that says so when used as the mapping."""

    __slots__ = ("_block",)

    def __init__(self, block: AbstractContextManager[Transaction]) -> None:
        self._block = block

    def __enter__(self) -> Transaction:
        return self._block.__enter__()

    def __exit__(self, *exc: Any) -> bool | None:
        return self._block.__exit__(*exc)

    def _misused(self, *args: object) -> NoReturn:
        raise TypeError(_OUTSIDE_WITH)

    __getitem__ = __setitem__ = __delitem__ = __contains__ = __iter__ = __len__ = _misused

    def __bool__(self) -> bool:
        return True  # a context manager, whatever __len__ says

    def __getattr__(self, name: str) -> NoReturn:
        if name.startswith("__"):
            raise AttributeError(name)  # protocol probes (copy, pickle, ...) get the plain answer
        raise AttributeError(f"no attribute {name!r}: {_OUTSIDE_WITH}")

    def __repr__(self) -> str:
        return "<objstore transaction block: use it in a with statement>"


# ------------------------------------------------------------------ shelf

# Keyed by id(): a mapping is unhashable, so it cannot sit in a WeakSet.
_open_shelves: weakref.WeakValueDictionary[int, Shelf] = weakref.WeakValueDictionary()


class Shelf(_Writer):
    """A persistent dict of ``str`` keys to picklable values, stored in LMDB.

    A complete ``MutableMapping`` that also offers what ``shelve`` lacks:
    `transaction`, `snapshot`, `modify`, `edit` and ordered access (`iterkeys`,
    `iteritems`, `itervalues`, `first`, `last`). Open one with `objstore.open`,
    which takes the same arguments as this constructor:

    path
        A directory holding one store (created, with its parents, if missing).
    flag
        ``"r"`` read-only, ``"w"`` read-write (both: the store must exist),
        ``"c"`` read-write, creating the store if missing (the default),
        ``"n"`` read-write, always starting empty (emptied in place).
    protocol
        Pickle protocol for writes; default ``pickle.HIGHEST_PROTOCOL``.
    writeback
        Cache the entries read or written and write them back on `Shelf.sync`
        and `Shelf.close`, as ``shelve`` does.
    durability
        ``"full"`` (default): a write that returned survives a power loss.
        ``"normal"``: a power loss may lose the last transactions, never
        corrupts. ``"off"``: no flush per commit (flushed by ``sync()`` and
        ``close()``); process crashes lose nothing, a power loss may lose
        recent writes and, on filesystems that reorder writes, damage the store.
    lock
        ``"shared"`` (default), or ``"exclusive"`` to be the only process
        with the store open: other openers wait up to `timeout`.
    timeout
        Seconds to wait for the store's file locks; ``None`` waits forever.
    map_size
        Initial LMDB map size in bytes (virtual memory, not disk); the map
        grows by itself when full.
    pickler, unpickler
        Subclasses of ``pickle.Pickler``/``pickle.Unpickler`` to serialise
        through, e.g. with custom reducers or a restricted ``find_class``.
    allow_network_fs
        Open a store on a network filesystem (NFS, SMB, ...) anyway. LMDB's
        locking is not coherent there: only safe when one process on one
        host ever opens the store.
    """

    def __init__(
        self,
        path: str | bytes | os.PathLike[str] | os.PathLike[bytes],
        flag: str = "c",
        protocol: int | None = None,
        writeback: bool = False,
        *,
        durability: str = "full",
        lock: str = "shared",
        timeout: float | None = 10.0,
        map_size: int = DEFAULT_MAP_SIZE,
        pickler: type[Pickler] | type[Any] = Pickler,
        unpickler: type[Unpickler] | type[Any] = Unpickler,
        allow_network_fs: bool = False,
    ) -> None:
        if lock not in ("shared", "exclusive"):
            raise ValueError(f"lock must be 'shared' or 'exclusive', not {lock!r}")
        codec = Codec(protocol, pickler, unpickler)
        options = Options(
            durability=durability,
            map_size=map_size,
            exclusive=lock == "exclusive",
            timeout=timeout,
            allow_network_fs=allow_network_fs,
        )
        path_str = os.fsdecode(os.fspath(path))
        store = open_store(
            path_str,
            flag,
            options,
            {"key_encoding": KEY_ENCODING, "value_format": VALUE_FORMAT, "created_by": _created_by()},
            _check_settings,
        )
        super().__init__(store, codec)
        self._flag = flag
        self._writeback = bool(writeback)
        self._options = options
        self._path = store.path
        self._snapshots: weakref.WeakValueDictionary[int, Snapshot] = weakref.WeakValueDictionary()
        if self._writeback:
            self._cache = _WritebackCache()
            # Python looks special methods such as __getitem__ up on the type,
            # so the cached-entry methods come from a class mixed in right above
            # Shelf: a plain shelf's hot path stays free of any check, and a
            # subclass's own overrides still run first (and reach the cache
            # through super()).
            self.__class__ = _with_writeback(type(self))
        _open_shelves[id(self)] = self

    @property
    def path(self) -> str:
        """The absolute path of the store directory."""
        return self._path

    def _owns_transactions(self) -> bool:
        return not self._source.in_transaction()

    @property
    def closed(self) -> bool:
        """Whether `close` was called."""
        return isinstance(self._source, _Closed)

    def snapshot(self) -> Snapshot:
        """Return a read-only, consistent view of the whole store; use it in a ``with`` block.

        ::

            with db.snapshot() as snap:
                total = sum(snap[k]["amount"] for k in snap)
        """
        snap = Snapshot(self._source.read(), self._codec)
        self._snapshots[id(snap)] = snap
        return snap

    def sync(self) -> None:
        """Write back the writeback cache and flush committed data to disk, whatever the durability."""
        self._source.sync()

    def info(self) -> dict[str, Any]:
        """Facts about the store: settings it was created with, entries, sizes, readers."""
        return {**self._source.info(), "crc32": CRC_IMPLEMENTATION}

    def close(self) -> None:
        """Write back the cache, flush and release the store. Idempotent; later use raises `ClosedError`."""
        source = self._source
        if isinstance(source, _Closed):
            return
        try:
            self.sync()
        finally:
            self._bind(_Closed("shelf"))
            _open_shelves.pop(id(self), None)
            for snap in list(self._snapshots.values()):
                snap.close()
            source.close()

    def __enter__(self) -> Shelf:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        # As files do: warn that the shelf was left open, and close it (writing
        # back its cache). A finaliser cannot raise to anyone, so a failure to
        # close is reported on stderr, as at exit.
        if "_source" not in self.__dict__ or self.closed:
            return
        try:
            message = f"unclosed objstore shelf {self._path!r}"
            warnings.warn(message, ResourceWarning, stacklevel=1, source=self)
        finally:
            try:
                self.close()
            except Exception as exc:
                _report_not_closed(self, exc)
                self._abandon()

    def _abandon(self) -> None:
        """Release the store without writing anything back: nobody is left to retry."""
        try:
            Shelf.close(self)
        except Exception:
            pass

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"flag={self._flag!r}"
        extra = ", writeback=True" if self._writeback else ""
        return f"<objstore.Shelf path={self._path!r} {state}{extra}>"

    def __reduce__(self) -> tuple[Any, ...]:
        # A shelf travels as its path and options; the receiver opens its own
        # handles. "n" must not empty the store again, so it reopens as "c".
        if self.closed:
            raise ClosedError("a closed shelf cannot be pickled")
        options = self._options
        kwargs = {
            "durability": options.durability,
            "lock": "exclusive" if options.exclusive else "shared",
            "timeout": options.timeout,
            "map_size": options.map_size,
            "pickler": self._codec.pickler,
            "unpickler": self._codec.unpickler,
            "allow_network_fs": options.allow_network_fs,
        }
        flag = "c" if self._flag == "n" else self._flag
        return (_reopen, (self._path, flag, self._codec.protocol, self._writeback, kwargs))


def _reopen(path: str, flag: str, protocol: int, writeback: bool, kwargs: dict[str, Any]) -> Shelf:
    return Shelf(path, flag, protocol, writeback, **kwargs)


def _created_by() -> str:
    from . import __version__

    return f"objstore {__version__}"


def _check_settings(path: str, settings: dict[str, Any]) -> None:
    """Refuse a store whose keys or records this version cannot read (before "n" empties it)."""
    value_format = settings.get("value_format", VALUE_FORMAT)
    if settings.get("key_encoding", KEY_ENCODING) != KEY_ENCODING or not (
        isinstance(value_format, int) and value_format <= VALUE_FORMAT
    ):
        raise UnsupportedFormatError(
            f"{path!r} was created with settings this objstore does not understand ({settings}); "
            "upgrade objstore to open it"
        )


class _WritebackCache:
    """The entries a writeback shelf has read or written: key -> (object, record loaded or stored).

    `lock` makes a write and the entry it caches, or a write-back and the
    emptying of the cache, one step for other threads. A thread that holds or
    has joined a write transaction never takes it (another thread may hold it
    while waiting for that transaction's writer lock): it only drops entries,
    each drop a single dict operation.
    """

    __slots__ = ("entries", "lock")

    def __init__(self) -> None:
        self.entries: dict[str, tuple[Any, Record]] = {}
        self.lock = threading.RLock()

    def forget(self, keys: Iterable[str]) -> None:
        entries = self.entries
        for key in keys:
            entries.pop(key, None)

    def forget_written(self, written: list[bytes | None]) -> None:
        """Drop the entries of the keys a transaction wrote (stored form; None: it emptied the store)."""
        if None in written:
            self.entries.clear()
        else:
            self.forget(key.decode() for key in written if key is not None)

    def write_back(self, source: Storage, codec: Codec) -> None:
        """Store every entry whose pickle changed, in one transaction; then empty the cache.

        If anything fails (pickling, a full disk), nothing is stored and every
        entry stays cached, so the write-back can be retried.
        """
        with self.lock:
            items = list(self.entries.items())
            changed = _changed_chunks(items, codec)
            first = next(changed, None)  # nothing changed: no transaction at all
            if first is not None:
                source.put_many(chain([first], changed))
            self.entries.clear()


def _changed_chunks(items: list[tuple[str, tuple[Any, Record]]], codec: Codec) -> Iterator[Chunk]:
    """The cached entries whose pickle changed, as chunks for `Storage.put_many`, pickled chunk by chunk."""
    for i in range(0, len(items), _CHUNK):
        part = items[i : i + _CHUNK]
        keys = [key for key, _ in part]
        records = codec.encode_many([value for _, (value, _) in part], keys)
        changed = [j for j, (new, (_, (_, old))) in enumerate(zip(records, part, strict=True)) if new != old]
        if changed:
            new_records = [records[j] for j in changed]
            yield encode_keys([keys[j] for j in changed]), lambda records=new_records: records  # type: ignore[misc]


class _WritebackShelf(Shelf):
    """The methods of a shelf opened with ``writeback=True`` that consult its cache.

    Mixed in, by `_with_writeback`, right above `Shelf` in the class of every
    writeback shelf. `sync` pickles every cached object again and, in one
    transaction, stores those whose record changed. Keys only read are never
    written back, so a writeback shelf does not undo other processes' writes
    to them.

    While its thread holds a transaction on the store, the shelf reads and
    writes through that transaction like a plain shelf: it neither uses nor
    fills the cache, and drops the cached entries of the keys it writes. A
    transaction opened through the shelf drops, when it ends, the entries of
    every key written in it (see `Writer._transaction`).
    """

    _cache: _WritebackCache

    def _caching(self) -> bool:
        return not self._source.in_transaction()

    def _value(self, key: str, record: bytes) -> Any:
        if not self._caching():
            return self._decode(record, key)
        cache = self._cache
        with cache.lock:
            cached = cache.entries.get(key)
            if cached is not None:
                return cached[0]
            value = self._decode(record, key)
            cache.entries[key] = (value, record)
            return value

    def _cached(self, key: str) -> tuple[Any, Record] | None:
        if isinstance(key, str) and self._caching():
            return self._cache.entries.get(key)
        return None

    def __getitem__(self, key: str) -> Any:
        cached = self._cached(key)
        if cached is not None:
            return cached[0]
        record = self._get(encode_key(key))
        if record is None:
            raise KeyError(key)
        return self._value(key, record)

    def get(self, key: str, default: Any = None) -> Any:
        cached = self._cached(key)
        if cached is not None:
            return cached[0]
        return super().get(key, default)

    def __setitem__(self, key: str, value: Any) -> None:
        if not self._caching():
            self._cache.forget([key])
            super().__setitem__(key, value)
            return
        self._check_writable()
        encoded = encode_key(key)
        record = self._codec.encode(value, key)
        cache = self._cache
        with cache.lock:
            self._source.put(encoded, record)
            cache.entries[key] = (value, record)

    def __delitem__(self, key: str) -> None:
        if not self._caching():
            self._cache.forget([key])
            super().__delitem__(key)
            return
        with self._cache.lock:
            self._cache.entries.pop(key, None)
            super().__delitem__(key)

    def pop(self, key: str, default: Any = _MISSING) -> Any:
        if not self._caching():
            self._cache.forget([key])
            return super().pop(key, default)
        cache = self._cache
        with cache.lock:
            cached = cache.entries.pop(key, None) if isinstance(key, str) else None
            value = super().pop(key, default)
            return cached[0] if cached is not None and value is not default else value

    def popitem(self) -> tuple[str, Any]:
        if not self._caching():
            key, value = super().popitem()
            self._cache.forget([key])
            return key, value
        cache = self._cache
        with cache.lock:
            key, value = super().popitem()
            cached = cache.entries.pop(key, None)
            return key, (value if cached is None else cached[0])

    def update(self, other: Any = (), /, **kwds: Any) -> None:
        keys, values = _pairs(other, kwds)
        if not keys:
            return
        if not self._caching():
            self._cache.forget(keys)
            super().update(zip(keys, values, strict=True))
            return
        self._check_writable()
        stored: list[Sequence[Record]] = []

        def chunks() -> Iterator[Chunk]:
            # The plain update's chunks, keeping each chunk's records for the cache.
            for encoded, make_records in _chunks(encode_keys(keys), keys, values, self._codec):
                records = make_records()
                stored.append(records)
                yield encoded, lambda records=records: records  # type: ignore[misc]

        cache = self._cache
        with cache.lock:
            self._source.put_many(chunks())
            for key, value, record in zip(keys, values, chain.from_iterable(stored), strict=True):
                cache.entries[key] = (value, record)

    def iteritems(
        self,
        prefix: str | None = None,
        *,
        start: str | None = None,
        stop: str | None = None,
        reverse: bool = False,
    ) -> Iterator[tuple[str, Any]]:
        for key, record in self._records(prefix, start, stop, reverse):
            yield key, self._value(key, record)

    def clear(self) -> None:
        if not self._caching():
            self._cache.entries.clear()
            super().clear()
            return
        with self._cache.lock:
            self._cache.entries.clear()
            super().clear()

    def sync(self) -> None:
        self._write_back()
        super().sync()

    def _write_back(self) -> None:
        try:
            self._cache.write_back(self._source, self._codec)
        except Exception as exc:
            if not self.closed:
                count = len(self._cache.entries)
                _add_note(
                    exc,
                    f"writing back the writeback cache failed: its {count} "
                    f"entr{'y' if count == 1 else 'ies'} are kept and the shelf is still open; "
                    "fix the cause (e.g. free disk space), then call sync() or close() again",
                )
            raise

    def close(self) -> None:
        if not self.closed:
            self._write_back()  # if this raises, the shelf stays open, its cache intact
        super().close()

    def _abandon(self) -> None:
        self._cache.entries.clear()
        super()._abandon()


@functools.cache
def _with_writeback(cls: type[Shelf]) -> type[Shelf]:
    """`cls` with the writeback methods mixed in right above `Shelf` (made once per class)."""
    if issubclass(cls, _WritebackShelf):
        return cls
    if cls is Shelf:
        return _WritebackShelf
    namespace = {"__module__": cls.__module__, "__qualname__": cls.__qualname__, "__doc__": cls.__doc__}
    return type(cls.__name__, (cls, _WritebackShelf), namespace)


def _report_not_closed(shelf: Shelf, exc: BaseException) -> None:
    """Say on stderr that `shelf` could not be closed where nobody can be told otherwise (exit, finaliser)."""
    lost = len(shelf._cache.entries) if shelf._cache is not None else 0
    what = f"; {lost} cached entr{'y was' if lost == 1 else 'ies were'} not written back" if lost else ""
    try:
        print(
            f"objstore: could not close the shelf at {shelf.path!r}{what}: {type(exc).__name__}: {exc}",
            file=sys.stderr,
        )
    except Exception:
        pass  # no stderr left to write to


def _pairs(other: Any, kwds: dict[str, Any]) -> tuple[list[Any], list[Any]]:
    """The keys and the values of `other` (a mapping, an object with keys(), or pairs) and `kwds`."""
    if isinstance(other, dict):
        keys, values = list(other), list(other.values())
    elif isinstance(other, Mapping) or hasattr(other, "keys"):
        keys = list(other.keys())
        values = [other[key] for key in keys]
    else:
        keys, values = [], []
        for key, value in other:
            keys.append(key)
            values.append(value)
    if kwds:
        keys.extend(kwds)
        values.extend(kwds.values())
    return keys, values


def open(
    path: str | bytes | os.PathLike[str] | os.PathLike[bytes],
    flag: str = "c",
    protocol: int | None = None,
    writeback: bool = False,
    **options: Any,
) -> Shelf:
    """Open the store at `path` (a directory) as a `Shelf`, like ``shelve.open``.

    `options` are the keyword-only parameters of `Shelf`: ``durability``,
    ``lock``, ``timeout``, ``map_size``, ``pickler``, ``unpickler`` and
    ``allow_network_fs``.
    """
    return Shelf(path, flag, protocol, writeback, **options)


@atexit.register
def _close_open_shelves() -> None:
    # Write back caches and flush stores whose durability defers flushing.
    for shelf in list(_open_shelves.values()):
        try:
            shelf.close()
        except Exception as exc:
            _report_not_closed(shelf, exc)
