"""The write side of the dict face: `_Writer`, `Transaction`, and bulk writes.

A `_Writer` is a `_Reader` that is also a ``MutableMapping``, over a store or a
write transaction (the write methods of the `Storage` protocol). It owns every
write: single ones, bulk ones pickled a chunk at a time as they are written,
atomic read-modify-write (`transaction`, `modify`, `edit`), and `Transaction`,
the mapping bound to one write transaction.

Each write method of the dict face is the writeback strategy's when the shelf
has one, else the plain operation (``_encode``/``_put_record``, ``_delete``,
``_pop``, ``_popitem``, ``_update``, ``_clear``), which the strategy calls in
turn. It must never know the record format or the key rules (``codec`` and
`_keys` apply them), nor use the storage beyond the `Storage` protocol.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, MutableMapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from functools import partial
from typing import Any, NoReturn, TypeVar

from ._errors import ConflictError, ReadOnlyError
from ._keys import LongKey, check_slot, long_positions, own_record, stored_key, stored_keys
from ._reader import TRANSACTION_CLOSED, _Closed, _Reader
from ._records import Record
from ._serialize import Codec
from ._storage import Chunk
from ._writeback import CHUNK

__all__ = ["Transaction", "pairs"]

_MISSING: Any = object()
_MODIFY_ATTEMPTS = 16
_V = TypeVar("_V")


def _chunks(
    stored: list[bytes], keys: list[str], values: list[Any], codec: Codec, long: list[int]
) -> Iterator[Chunk]:
    """The pairs of a bulk write as chunks for `Storage.put_many`, pickled one chunk at a time.

    `long` lists the positions of the long keys, whose records keep the whole key.
    """
    for i in range(0, len(keys), CHUNK):
        part = slice(i, i + CHUNK)
        keep = [j - i for j in long if i <= j < i + CHUNK]
        yield stored[part], partial(codec.encode_many, values[part], keys[part], keep)


def _keeping(chunks: Iterable[Chunk], kept: list[Sequence[Record]]) -> Iterator[Chunk]:
    """`chunks`, each pickled as it is written and its records kept in `kept` (for a cache)."""
    for part, make_records in chunks:
        records = make_records()
        kept.append(records)
        yield part, lambda records=records: records  # type: ignore[misc]


def pairs(other: Any, kwds: dict[str, Any]) -> tuple[list[Any], list[Any]]:
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


class _Writer(_Reader, MutableMapping[str, Any]):
    """The write side of the dict face, over a store or a write transaction."""

    def _owns_transactions(self) -> bool:
        """Whether a transaction this mapping opens is a whole transaction, not a savepoint."""
        return False

    def _check_writable(self) -> None:
        if self._source.readonly:
            raise ReadOnlyError(
                f"cannot write: the store {self._source.path!r} was opened read-only (flag 'r')"
            )

    def __setitem__(self, key: str, value: Any) -> None:
        if self._writeback is not None:
            self._writeback.setitem(self, key, value)
            return
        if self._source.readonly:
            self._check_writable()
        stored = stored_key(key)
        if type(stored) is LongKey:
            self._put_record(key, stored, self._codec.encode(value, key, keep_key=True))
            return
        self._source.put(stored, self._codec.encode(value, key))

    def _encode(self, key: str, value: Any) -> tuple[bytes, Record]:
        """The stored key of `key` and the record of `value` under it."""
        stored = stored_key(key)
        return stored, self._codec.encode(value, key, keep_key=type(stored) is LongKey)

    def _put_record(self, key: str, stored: bytes, record: Record) -> None:
        """Store `record` under `stored`; for a long key, unless another key's record holds its place."""
        if type(stored) is not LongKey:
            self._source.put(stored, record)
            return
        with self._source.write() as txn:
            check_slot(txn.get, stored, key)
            txn.put(stored, record)

    def __delitem__(self, key: str) -> None:
        if self._writeback is not None:
            self._writeback.delitem(self, key)
        else:
            self._delete(key)

    def _delete(self, key: str) -> None:
        self._check_writable()
        try:
            stored = stored_key(key)
        except ValueError:
            raise KeyError(key) from None
        if type(stored) is not LongKey:
            if not self._source.delete(stored):
                raise KeyError(key)
            return
        with self._source.write() as txn:
            if own_record(txn.get(stored), stored) is None:
                raise KeyError(key)
            txn.delete(stored)

    def pop(self, key: str, default: Any = _MISSING) -> Any:
        """Remove `key` and return its value, atomically; `default` (or `KeyError`) if absent."""
        if self._writeback is not None:
            return self._writeback.pop(self, key, default)
        return self._pop(key, default)

    def _pop(self, key: str, default: Any) -> Any:
        try:
            stored: bytes | None = stored_key(key)
        except ValueError:
            stored = None
        if stored is None or (self._source.readonly and key not in self):
            if default is _MISSING:
                raise KeyError(key)
            return default  # nothing to remove: fine on a read-only store, as in shelve
        self._check_writable()
        with self._source.write() as txn:
            record = txn.get(stored)
            if type(stored) is LongKey:
                record = own_record(record, stored)
            if record is None:
                if default is _MISSING:
                    raise KeyError(key)
                return default
            # Loaded inside the transaction: if it cannot be loaded, nothing is removed.
            value = self._decode(record, key)
            txn.delete(stored)
        return value

    def popitem(self) -> tuple[str, Any]:
        """Remove and return the (key, value) pair with the lowest key, atomically; `KeyError` if empty."""
        if self._writeback is not None:
            return self._writeback.popitem(self)
        return self._popitem()

    def _popitem(self) -> tuple[str, Any]:
        self._check_writable()
        with self._source.write() as txn:
            batch = txn.batch(None, None, False, True, None, 1)
            if not batch:
                raise KeyError("popitem(): the store is empty")
            raw_key, record = batch[0]
            try:
                key = raw_key.decode()
            except UnicodeDecodeError:
                key = self._key_of(raw_key, record)
            value = self._decode(record, key)
            txn.delete(raw_key)
        return key, value

    def setdefault(self, key: str, default: Any = None) -> Any:
        """Return the value of `key`, first storing `default` under it if absent (atomically)."""
        stored = stored_key(key)
        if type(stored) is LongKey:
            self._check_writable()
            with self._source.write() as txn:
                record = own_record(txn.get(stored), stored)
                if record is None:
                    check_slot(txn.get, stored, key)
                    txn.put(stored, self._codec.encode(default, key, keep_key=True))
                    return default
            return self._value(key, record)
        record = self._get(stored)
        if record is None:
            self._check_writable()
            # put_new stores only if the key is still absent, and says what is there if not.
            record = self._source.put_new(stored, self._codec.encode(default, key))
            if record is None:
                return default
        return self._value(key, record)

    def update(self, other: Any = (), /, **kwds: Any) -> None:
        """Store every pair of `other` (a mapping or pairs) and `kwds`, in one transaction.

        If a key is invalid or a value fails to pickle, nothing is stored.
        Values are pickled a few thousand at a time as they are written, so
        memory does not grow with the size of the update.
        """
        keys, values = pairs(other, kwds)
        if not keys:
            return
        if self._writeback is not None:
            self._writeback.update(self, keys, values)
        else:
            self._update(keys, values, None)

    def _update(self, keys: list[str], values: list[Any], kept: list[Sequence[Record]] | None) -> None:
        """Store `values` under `keys`, pickled chunk by chunk; keep their records in `kept` if given."""
        self._check_writable()
        stored = stored_keys(keys)
        long = long_positions(stored)
        chunks = _chunks(stored, keys, values, self._codec, long)
        if not long:
            self._source.put_many(chunks if kept is None else _keeping(chunks, kept))
            return
        with self._source.write() as txn:
            for i in long:
                check_slot(txn.get, stored[i], keys[i])  # type: ignore[arg-type]
            txn.put_many(chunks if kept is None else _keeping(chunks, kept))

    def clear(self) -> None:
        """Remove every key, in one transaction."""
        if self._writeback is not None:
            self._writeback.clear(self)
        else:
            self._clear()

    def _clear(self) -> None:
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
        writeback = self._writeback
        written: list[bytes | None] = []
        try:
            self._check_writable()
            # The codec's `take`: reads inside copy a large value's buffers once.
            with self._source.write(self._codec.take) as txn:
                mapping = Transaction(txn, self._codec)
                try:
                    yield mapping
                finally:
                    mapping._bind(_Closed(TRANSACTION_CLOSED))
                    if writeback is not None:
                        written = txn.written()
        finally:
            # After the commit (or rollback): dropped earlier, an entry could be
            # cached again from the store's old value by another thread.
            if writeback is not None:
                writeback.forget_written(written)

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
        stored = stored_key(key)
        long = type(stored) is LongKey
        with self.transaction() as txn:
            source = txn._source
            record = txn._lookup(key)
            if record is None:
                if default is _MISSING:
                    raise KeyError(key)
                if long:
                    check_slot(source.get, stored, key)  # type: ignore[arg-type]
                value = default
            else:
                value = self._value(key, record)
            yield value
            new = self._codec.encode(value, key, keep_key=long)
            if new != record:
                source.put(stored, new)


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
