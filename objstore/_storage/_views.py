"""Views into LMDB's map: reading records in place, and the views a zero-copy snapshot hands out.

This module owns what makes a view of the map safe to use: `_load_batch`,
which reads a batch in place and copies every record out of it (a large one
through the codec's ``take``) before anything else runs; `pinned_view`, the
read-only view of a zero-copy snapshot, whose exporter keeps a `_Pin` alive;
and `_Pin`, which keeps the snapshot's LMDB transaction open until the last
view is gone. Map growth in this process waits for the frames that hold a
view (``_growth._VIEWING_FRAMES`` names them: keep `_load_batch`'s name and
its `record` local as they are). It must never let a view outlive the
transaction it came from, nor run caller code while holding one.
"""

from __future__ import annotations

import ctypes
import functools
from collections.abc import Callable, Iterator
from operator import itemgetter
from typing import Any

from ._common import BATCH_BYTES

__all__ = ["LARGE_BATCH", "PIN_MIN", "TAKE_MIN", "pinned_view"]


class _KeysAsBytes:
    """A ``buffers=True`` transaction (or its cursor) whose walks give keys as bytes; records stay views."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def cursor(self, db: Any = None) -> _KeysAsBytes:
        return _KeysAsBytes(self._inner.cursor(db))

    def key(self) -> bytes:
        return bytes(self._inner.key())

    def iternext(self, values: bool = True) -> Iterator[Any]:
        return self._bytes(self._inner.iternext(values=values), values)

    def iterprev(self, values: bool = True) -> Iterator[Any]:
        return self._bytes(self._inner.iterprev(values=values), values)

    @staticmethod
    def _bytes(walk: Iterator[Any], values: bool) -> Iterator[Any]:
        return ((bytes(key), record) for key, record in walk) if values else map(bytes, walk)


PIN_MIN = 1 << 16  # records at least this big are handed out as views in a zero-copy snapshot
TAKE_MIN = 1 << 16  # records at least this big are handed to a batch's `take` when read in place
# Batches of at most this many records are read in place (with `take`); the
# shelf asks for so few only when its records average `TAKE_MIN` or more
# (BATCH_BYTES / TAKE_MIN), or for the first batch of an iteration.
LARGE_BATCH = BATCH_BYTES // TAKE_MIN
# Bound to `record` in a `load` or `_load_batch` frame while it may read views
# into the map: map growth in this process waits for such frames
# (`MapGrowth._threads_viewing`), so it is bound before a resize is looked for.
_VIEWING = memoryview(b"")
_second = itemgetter(1)


def _copied(record: Any, name: str) -> bytes:
    return bytes(record)


def _load_batch(
    env: Any, walk: Callable[[], list[Any]], values: bool, take: Callable[[Any], Any] | None
) -> list[Any] | None:
    """``walk()``, a batch read in place, with every view copied; None if a resize is under way.

    Records of `TAKE_MIN` bytes or more are handed to `take` (when given)
    instead of being copied: it copies a large value's buffers once. Named
    and laid out for `MapGrowth._threads_viewing`: `record` is a view from
    before the first one is read until the last copy is made. With None,
    nothing was read: the caller waits the resize out (or reads by copy).
    `env` None: a write transaction's batch, which no resize can pass (LMDB
    refuses to remap while a write transaction is open).
    """
    record = _VIEWING
    if env is not None and env._resizing:
        return None
    batch = walk()  # keys come as bytes (`_batch` with views)
    if not values:
        return batch
    views = list(map(_second, batch))
    if take is None or not views or max(map(len, views)) < TAKE_MIN:
        records = list(map(bytes, views))
    else:
        records = [bytes(view) if len(view) < TAKE_MIN else take(view) for view in views]
    del views, record
    return list(zip(map(itemgetter(0), batch), records, strict=True))


class _Pin:
    """Kept alive by every view a zero-copy snapshot handed out: keeps its LMDB transaction open.

    While it lives, the transaction counts as a reader that map growth can
    neither wait out nor end (`MapGrowth`), and the environment is not closed.
    When the last view goes, it ends the transaction if the snapshot is over.
    """

    def __init__(self, txn: Any) -> None:
        self.txn = txn
        self.lmdb_txn = txn._txn  # a reference: the LMDB transaction ends when the last one goes

    def __del__(self) -> None:
        txn = self.txn
        txn._pin = None  # its weak reference to this pin still answers while __del__ runs
        self.lmdb_txn = None
        if txn._txn is None:  # the snapshot was closed before its last view went
            env = txn._environment
            env.unregister(txn)
            env.writer_done()  # closes the environment if a close waited for the views


class _PyBuffer(ctypes.Structure):
    _fields_ = [  # noqa: RUF012 - the C struct Py_buffer
        ("buf", ctypes.c_void_p),
        ("obj", ctypes.c_void_p),
        ("len", ctypes.c_ssize_t),
        ("itemsize", ctypes.c_ssize_t),
        ("readonly", ctypes.c_int),
        ("ndim", ctypes.c_int),
        ("format", ctypes.c_char_p),
        ("shape", ctypes.c_void_p),
        ("strides", ctypes.c_void_p),
        ("suboffsets", ctypes.c_void_p),
        ("internal", ctypes.c_void_p),
    ]


_get_buffer = ctypes.pythonapi.PyObject_GetBuffer
_get_buffer.argtypes = [ctypes.py_object, ctypes.POINTER(_PyBuffer), ctypes.c_int]
_release_buffer = ctypes.pythonapi.PyBuffer_Release
_release_buffer.argtypes = [ctypes.POINTER(_PyBuffer)]


@functools.lru_cache(maxsize=256)
def _array_type(size: int) -> Any:
    return ctypes.c_ubyte * size


def pinned_view(view: memoryview, keeper: object) -> memoryview:
    """A read-only view of the memory of `view` whose exporter holds `keeper`.

    py-lmdb's views hold no reference to their transaction; this one's
    exporter (a ctypes array over the same memory) holds `keeper`, so that
    anything made from it (slices, NumPy arrays) keeps the keeper alive.
    """
    buffer = _PyBuffer()
    if _get_buffer(view, ctypes.byref(buffer), 0) != 0:  # pragma: no cover - views always export
        raise BufferError("cannot read the address of a view")
    try:
        address, size = buffer.buf, buffer.len
    finally:
        _release_buffer(ctypes.byref(buffer))
    exporter = _array_type(size).from_address(address)
    exporter.keeper = keeper
    return memoryview(exporter).cast("B").toreadonly()
