"""The backend protocols: what a shelf needs from a storage backend, and all it may use.

The shelf holds a `Storage` (``_store.Store`` is the LMDB one) and the
transactions it yields (`ReadTransaction`, `WriteTransaction`), and sees bytes
keys and bytes records only. A second backend implements these protocols and
passes ``tests/test_storage.py``, the contract; nothing here names LMDB.

It must never hold code: protocols only, so that it imports nothing of the
storage package and every backend can depend on it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from typing import Any, Protocol

from ._common import Chunk, T, Value

__all__ = ["ReadTransaction", "Source", "Storage", "WriteTransaction", "Writable"]


class Source(Protocol):
    """The read methods: a store, a snapshot's transaction and a write transaction all have them."""

    @property
    def path(self) -> str: ...
    def get(self, key: bytes) -> bytes | None: ...
    def contains(self, key: bytes) -> bool: ...
    def count(self) -> int: ...
    def load(self, key: bytes, use: Callable[[Any, str], T], name: str, absent: T) -> T:
        """``use(record, name)`` for `key`'s record (bytes, or a view valid in the call); else `absent`."""
        ...

    def batch(
        self,
        lo: bytes | None,
        hi: bytes | None,
        reverse: bool,
        values: bool,
        after: bytes | None,
        limit: int = ...,
        take: Callable[[Any], Any] | None = None,
    ) -> list[Any]:
        """Up to `limit` keys (or (key, record) pairs) of [lo, hi) after `after`, in byte order.

        With `take`, a backend may hand a large record to it instead of
        copying it: as a view valid only during the call, read inside the
        transaction; the pair then holds what `take` returns. `take` must not
        keep the view nor run code that uses the storage.
        """
        ...


class ReadTransaction(Source, Protocol):
    """What `Storage.read` returns: a consistent snapshot of the store, ended once."""

    def end(self) -> None: ...


class Writable(Source, Protocol):
    """The write methods: a store and a write transaction have them."""

    def put(self, key: bytes, value: Value) -> None: ...
    def delete(self, key: bytes) -> bool: ...
    def put_new(self, key: bytes, value: Value) -> bytes | None:
        """Store `value` unless `key` holds a record; return that record (None if stored)."""
        ...

    def put_many(self, chunks: Iterable[Chunk]) -> None:
        """Store every chunk's keys and records, each chunk's records made when it is written."""
        ...

    def clear(self) -> None:
        """Remove every key (the metadata stays)."""
        ...

    def write(self, take: Callable[[Any], Any] | None = None) -> AbstractContextManager[WriteTransaction]:
        """A write transaction (joined, as a savepoint, if this thread already holds one).

        With `take`, its reads (``load``, ``get``) may hand a large record to it
        instead of copying it, as `Source.batch` does; savepoints keep their
        transaction's.
        """
        ...


class WriteTransaction(Writable, Protocol):
    """What `Writable.write` yields: committed when its block ends, rolled back on an exception."""

    def written(self) -> list[bytes | None]:
        """The keys written so far (None: the store was cleared)."""
        ...


class Storage(Writable, Protocol):
    """A store: bytes keys to bytes records, each operation atomic on its own."""

    readonly: bool
    settings: dict[str, Any]

    def in_transaction(self) -> bool:
        """Whether this thread holds a write transaction on the store."""
        ...

    def read(self, zero_copy: bool = False) -> ReadTransaction:
        """A snapshot; with `zero_copy`, the large records it reads are views kept valid while they live."""
        ...

    def sync(self) -> None: ...
    def close(self) -> None: ...
    def info(self) -> dict[str, Any]: ...
