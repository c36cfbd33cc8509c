"""Writeback: the strategy a shelf opened with ``writeback=True`` holds.

`Writeback` keeps the entries the shelf has read or written (key -> the
object and the record it was loaded from or stored as) and writes back, on
``sync()``/``close()``, in one transaction, those whose pickle changed. Keys
only read are never written back, so a writeback shelf does not undo other
processes' writes to them.

The shelf's methods hand themselves to the strategy (``writeback.getitem(self,
key)``), which does the caching around the mapping's plain operations, so any
subclass of `Shelf` gets writeback and ``type(db)`` stays the class
instantiated. While its thread holds a transaction on the store, the shelf
reads and writes through that transaction like a plain shelf: the strategy
neither uses nor fills the cache then, and drops the cached entries of the
keys written. A transaction opened through the shelf drops, when it ends, the
entries of every key written in it (`forget_written`).

It must never pickle everything at once: bulk writes and the write-back pickle
a chunk at a time as they write. It knows no record format and no key rule
(through `_serialize` and `_keys` only), and no mapping class: it sees the
shelf through the `ReadHost`/`WriteHost` protocols.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from itertools import chain
from typing import Any, Protocol

from ._keys import long_positions, stored_key, stored_keys
from ._records import Record
from ._serialize import Codec
from ._storage import Chunk, Storage

__all__ = ["CHUNK", "ReadHost", "WriteHost", "Writeback"]

CHUNK = 4096  # values pickled at a time by a bulk write (plain or writeback) or a write-back
_MISSING: Any = object()


class ReadHost(Protocol):
    """What the strategy uses of a mapping to read through it."""

    _source: Any
    _decode: Callable[[bytes, str], Any]

    def _lookup(self, key: str) -> bytes | None: ...


class WriteHost(ReadHost, Protocol):
    """What the strategy uses of a mapping to write through it: its plain operations."""

    _codec: Codec

    def _check_writable(self) -> None: ...
    def _encode(self, key: str, value: Any) -> tuple[bytes, Record]: ...
    def _put_record(self, key: str, stored: bytes, record: Record) -> None: ...
    def _delete(self, key: str) -> None: ...
    def _pop(self, key: str, default: Any) -> Any: ...
    def _popitem(self) -> tuple[str, Any]: ...
    def _update(self, keys: list[str], values: list[Any], kept: list[Sequence[Record]] | None) -> None: ...
    def _clear(self) -> None: ...


class Writeback:
    """The writeback cache of one shelf, and the methods of the shelf that consult it.

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

    @staticmethod
    def _caching(mapping: ReadHost) -> bool:
        return not mapping._source.in_transaction()

    # -- reads

    def value(self, mapping: ReadHost, key: str, record: bytes) -> Any:
        """The cached object of `key`, else the value in `record`, then cached."""
        if not self._caching(mapping):
            return mapping._decode(record, key)
        with self.lock:
            cached = self.entries.get(key)
            if cached is not None:
                return cached[0]
            value = mapping._decode(record, key)
            self.entries[key] = (value, record)
            return value

    def decoder(self, mapping: ReadHost) -> Callable[[bytes, str], Any]:
        """`value` as a ``decode(record, key)`` function, for iteration."""
        return lambda record, key: self.value(mapping, key, record)

    def _cached(self, mapping: ReadHost, key: str) -> tuple[Any, Record] | None:
        if isinstance(key, str) and self._caching(mapping):
            return self.entries.get(key)
        return None

    def getitem(self, mapping: ReadHost, key: str) -> Any:
        cached = self._cached(mapping, key)
        if cached is not None:
            return cached[0]
        record = mapping._lookup(key)
        if record is None:
            raise KeyError(key)
        return self.value(mapping, key, record)

    def get(self, mapping: ReadHost, key: str, default: Any) -> Any:
        cached = self._cached(mapping, key)
        if cached is not None:
            return cached[0]
        record = mapping._lookup(key)
        if record is None:
            return default
        return self.value(mapping, key, record)

    # -- writes

    def setitem(self, mapping: WriteHost, key: str, value: Any) -> None:
        caching = self._caching(mapping)
        if not caching:
            self.forget([key])
        mapping._check_writable()
        stored, record = mapping._encode(key, value)
        if not caching:
            mapping._put_record(key, stored, record)
            return
        with self.lock:
            mapping._put_record(key, stored, record)
            self.entries[key] = (value, record)

    def delitem(self, mapping: WriteHost, key: str) -> None:
        if not self._caching(mapping):
            self.forget([key])
            mapping._delete(key)
            return
        with self.lock:
            self.entries.pop(key, None)
            mapping._delete(key)

    def pop(self, mapping: WriteHost, key: str, default: Any) -> Any:
        if not self._caching(mapping):
            self.forget([key])
            return mapping._pop(key, default)
        with self.lock:
            cached = self.entries.pop(key, None) if isinstance(key, str) else None
            value = mapping._pop(key, default)
            return cached[0] if cached is not None and value is not default else value

    def popitem(self, mapping: WriteHost) -> tuple[str, Any]:
        if not self._caching(mapping):
            key, value = mapping._popitem()
            self.forget([key])
            return key, value
        with self.lock:
            key, value = mapping._popitem()
            cached = self.entries.pop(key, None)
            return key, (value if cached is None else cached[0])

    def update(self, mapping: WriteHost, keys: list[str], values: list[Any]) -> None:
        """Store and cache every pair; the plain update's chunks, each pickled as it is written."""
        if not self._caching(mapping):
            self.forget(keys)
            mapping._update(keys, values, None)
            return
        kept: list[Sequence[Record]] = []
        with self.lock:
            mapping._update(keys, values, kept)
            for key, value, record in zip(keys, values, chain.from_iterable(kept), strict=True):
                self.entries[key] = (value, record)

    def clear(self, mapping: WriteHost) -> None:
        if not self._caching(mapping):
            self.entries.clear()
            mapping._clear()
            return
        with self.lock:
            self.entries.clear()
            mapping._clear()

    # -- the cache itself

    def forget(self, keys: Iterable[str]) -> None:
        entries = self.entries
        for key in keys:
            entries.pop(key, None)

    def forget_written(self, written: list[bytes | None]) -> None:
        """Drop the entries of the keys a transaction wrote (stored form; None: it emptied the store)."""
        if None in written:
            self.entries.clear()
        else:
            # Compared in stored form: a long key is stored under its hashed form.
            stored = set(written)
            self.forget([key for key in self.entries if stored_key(key) in stored])

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
    for i in range(0, len(items), CHUNK):
        part = items[i : i + CHUNK]
        keys = [key for key, _ in part]
        stored = stored_keys(keys)
        records = codec.encode_many([value for _, (value, _) in part], keys, long_positions(stored))
        changed = [j for j, (new, (_, (_, old))) in enumerate(zip(records, part, strict=True)) if new != old]
        if changed:
            new_records = [records[j] for j in changed]
            # A cached long key was read or stored through this shelf, so its
            # stored form was already checked to be its own.
            yield [stored[j] for j in changed], lambda records=new_records: records  # type: ignore[misc]
