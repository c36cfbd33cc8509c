"""The `Storage` protocol: what a shelf needs from a storage backend, and all it may use.

The shelf holds a `Storage` (``_store.Store`` is the LMDB one) and the
transactions it yields, and sees bytes keys and bytes records only.
``tests/test_storage.py`` is the contract a backend passes. The transactions
are typed as this package's `ReadTxn` and `WriteTxn`; a second backend turns
them into protocols of their own.
"""

from __future__ import annotations

from collections.abc import Iterable
from contextlib import AbstractContextManager
from typing import Any, Protocol

from ._common import Chunk, Value
from ._transactions import ReadTxn, WriteTxn


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
