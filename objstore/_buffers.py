"""Out-of-band pickle buffers (pickle protocol 5): large buffers kept beside the pickle stream.

This module owns section tag 2 (`SECTION_BUFFERS`) of kind 2 records: which
buffers go out of band, where they sit in the record, the check that covers
them, and loading a record with one copy of each buffer (or none, in a
zero-copy snapshot). It knows nothing of keys or of the storage; the CRC-32
function is handed in by the codec; `_records` owns the rest of the record format.

Layout of a record with out-of-band buffers (see ``docs/format.md``)::

    pickle | pad | buffer 0 | pad | ... | table | length | 2 | (other sections) | count | 2 | CRC-32

The tag 2 section's payload runs from the end of the pickle stream to the
end of the table. The table is, per buffer, its offset from the record's
first byte, its length and its XXH3-64 (3 × 8 bytes, little-endian),
followed by the number of buffers (4 bytes) and the check's id (1 byte,
`CHECK_XXH3`). Each buffer starts at an offset ≡ 48 (mod 64): a large LMDB
value starts 16 bytes into its page, so the buffers are 64-byte aligned in
the memory map. The record's CRC-32 covers every byte except the buffers'
own bytes (the paddings, the pickle stream, the table and every other
section included); each buffer is covered by its XXH3-64. With the CRC
stored little-endian last, the CRC-32 of the covered bytes, in order, is the
usual residue.

It must never hand out a view into a record except when asked for a
zero-copy load, and never load a buffer it has not checked except then.
"""

from __future__ import annotations

import pickle
import struct
from collections.abc import Callable, Sequence
from typing import Any

from xxhash import xxh3_64_intdigest

__all__ = [
    "ALIGN",
    "CHECK_XXH3",
    "SECTION_BUFFERS",
    "THRESHOLD",
    "Large",
    "Layout",
    "Taken",
    "add_section",
    "as_bytes",
    "dump",
    "frame",
    "intact_buffers",
    "load",
    "locate",
    "spot",
    "take",
]

SECTION_BUFFERS = 2
THRESHOLD = 1 << 16  # buffers at least this big go out of band; smaller ones stay in the stream
ALIGN = 64
_MAP_OFFSET = 16  # where LMDB puts a large value's first byte inside its page (its page header)
CHECK_XXH3 = 1
_entry = struct.Struct("<QQQ")  # offset, length, XXH3-64
_table_end = struct.Struct("<IB")  # number of buffers, check id
_section_end = struct.Struct("<IB")  # payload length, tag (as in _records)
_KIND_SECTIONS = 2
_TRAILER = 5  # kind, CRC-32
Crc = Callable[..., int]


def as_bytes(buffer: Any) -> bytes:
    """A large ``bytes`` value, given its out-of-band buffer: the buffer's own bytes object if it is one."""
    if isinstance(buffer, memoryview) and type(buffer.obj) is bytes and buffer.nbytes == len(buffer.obj):
        return buffer.obj
    return bytes(buffer)


class _TopLevel:
    """Wraps a top-level ``bytes`` or ``memoryview``, whose pickling no reducer can reach."""

    __slots__ = ("value",)

    def __init__(self, value: bytes | memoryview) -> None:
        self.value = value

    def __reduce__(self) -> tuple[Any, tuple[Any]]:
        value = self.value
        if type(value) is bytes:
            return as_bytes, (pickle.PickleBuffer(value),)
        return memoryview, (pickle.PickleBuffer(value),)


class Sink(bytearray):
    """A bytearray that pickle can write to: where every record of objstore is built.

    Not an ``io.BytesIO``: a view of a BytesIO's buffer (``getbuffer()``), once
    it is part of a reference cycle (a traceback holding the frame that writes
    the record is enough), crashes the garbage collector of Python 3.12.0 and
    3.12.1 (CPython gh-111049). A view of a bytearray is collected safely, and
    LMDB is handed it without a copy all the same.
    """

    __slots__ = ()
    write = bytearray.extend


def dump(value: Any, pickler: type[pickle.Pickler], protocol: int) -> tuple[Sink, list[memoryview]]:
    """Pickle `value` into a buffer; return it and the raw views of the buffers left out of band.

    Buffers of at least `THRESHOLD` bytes that are contiguous go out of band;
    the others stay in the stream. Top-level ``bytes`` and ``memoryview``
    values are pickled as buffers too.
    """
    oob: list[memoryview] = []

    def callback(buffer: pickle.PickleBuffer) -> bool:
        try:
            raw = buffer.raw()
        except BufferError:  # not contiguous: pickled in band
            return True
        if raw.nbytes < THRESHOLD:
            return True
        oob.append(raw)
        return False

    kind = type(value)
    if kind in (bytes, bytearray, memoryview) and memoryview(value).nbytes >= THRESHOLD:
        # pickle writes bytes and bytearray itself, never asking a reducer: as a buffer instead.
        value = pickle.PickleBuffer(value) if kind is bytearray else _TopLevel(value)
    stream = Sink()
    pickler(stream, protocol, buffer_callback=callback).dump(value)
    return stream, oob


class Large(Exception):
    """Raised by `spot` to stop a pickling that met a buffer worth taking out of band."""


def spot(buffer: pickle.PickleBuffer) -> bool:
    """A ``buffer_callback`` for the small-value path: raises `Large` at a large contiguous buffer."""
    try:
        size = buffer.raw().nbytes
    except BufferError:
        return True
    if size >= THRESHOLD:
        raise Large
    return True


def _padding(offset: int) -> int:
    """Bytes of padding that make `offset` land on a 64-byte boundary of LMDB's map."""
    return -(offset + _MAP_OFFSET) % ALIGN


def frame(stream: Sink, buffers: Sequence[memoryview], crc32: Crc) -> bytearray:
    """The kind 2 record of the pickle in `stream` with `buffers` out of band (one section, tag 2).

    The buffers are copied once, into the record, and hashed there, while the
    copy is still in the cache (hashing the source first would read it twice).
    """
    pickle_end = len(stream)
    parts: list[Any] = [stream]
    spans: list[tuple[int, int, int]] = []
    offset = pickle_end
    for buffer in buffers:
        pad = _padding(offset)
        parts += (bytes(pad), buffer)
        spans.append((offset + pad, buffer.nbytes, 0))
        offset += pad + buffer.nbytes
    table_size = len(spans) * _entry.size + _table_end.size
    tail = _table_end.pack(len(spans), CHECK_XXH3) + _section_end.pack(
        offset + table_size - pickle_end, SECTION_BUFFERS
    )
    parts += (bytes(len(spans) * _entry.size), tail, bytes((1, _KIND_SECTIONS)), bytes(4))
    record = bytearray().join(parts)
    parts.clear()  # releases the view of the stream
    with memoryview(record) as view:
        for i, (at, length, _) in enumerate(spans):
            _entry.pack_into(
                view, offset + i * _entry.size, at, length, xxh3_64_intdigest(view[at : at + length])
            )
        crc = _crc_around(view[:-4], spans, crc32)
    record[-4:] = crc.to_bytes(4, "little")
    return record


class Layout:
    """Where the parts of a record with out-of-band buffers are: its sections and buffers."""

    __slots__ = ("buffers", "check", "sections")

    def __init__(self, sections: dict[int, tuple[int, int]], buffers: list[tuple[int, int, int]], check: int):
        self.sections = sections  # tag -> (start, end) of its payload
        self.buffers = buffers  # (offset, length, XXH3-64), in order
        self.check = check


def _sections(record: Any) -> dict[int, tuple[int, int]] | None:
    """The sections of a kind 2 record, by tag, as (start, end) of their payloads; None if they do not fit."""
    end = len(record) - _TRAILER - 1
    if end < 0:
        return None
    found: dict[int, tuple[int, int]] = {}
    for _ in range(record[end]):
        if end < 5:
            return None
        length, tag = _section_end.unpack(record[end - 5 : end])
        start = end - 5 - length
        if start < 0 or tag in found:
            return None
        found[tag] = (start, end - 5)
        end = start
    return found


def locate(record: Any, crc32: Crc, residue: int) -> Layout | None:
    """The layout of `record` if it holds out-of-band buffers and its CRC-32 passes, else None.

    Checks the CRC-32 of every byte but the buffers' (not the buffers: their
    XXH3 is checked as they are copied, see `load`). Also None for records
    without a tag 2 section: `_records` checks those.
    """
    if len(record) <= _TRAILER or record[-_TRAILER] != _KIND_SECTIONS:
        return None
    sections = _sections(record)
    if sections is None or SECTION_BUFFERS not in sections:
        return None
    start, end = sections[SECTION_BUFFERS]
    if end - start < _table_end.size:
        return None
    count, check = _table_end.unpack(record[end - _table_end.size : end])
    table = end - _table_end.size - count * _entry.size
    if table < start:
        return None
    buffers = [_entry.unpack(record[at : at + _entry.size]) for at in range(table, end - 5, _entry.size)]
    covered = start
    for offset, length, _ in buffers:
        if offset < covered or offset + length > table:
            return None
        covered = offset + length
    if _crc_around(memoryview(record), buffers, crc32) != residue:
        return None
    return Layout(sections, buffers, check)


def _crc_around(view: memoryview, buffers: Sequence[tuple[int, int, int]], crc32: Crc) -> int:
    """The CRC-32 of every byte of `view` but those of `buffers` (sorted (offset, length, _) triples)."""
    crc, covered = 0, 0
    for offset, length, _ in buffers:
        crc = crc32(view[covered:offset], crc)
        covered = offset + length
    return crc32(view[covered:], crc)


def add_section(record: Any, tag: int, payload: bytes, crc32: Crc, residue: int) -> bytes:
    """`record` (fresh from `frame`) with one more section, `payload` under `tag`."""
    layout = locate(record, crc32, residue)
    assert layout is not None, "add_section takes a record made by frame"
    view = memoryview(record)
    count = view[-_TRAILER - 1]
    body = b"".join(
        (
            view[: -_TRAILER - 1],
            payload,
            _section_end.pack(len(payload), tag),
            bytes((count + 1, _KIND_SECTIONS)),
        )
    )
    crc = _crc_around(memoryview(body), layout.buffers, crc32)
    return body + crc.to_bytes(4, "little")


def intact_buffers(record: Any, layout: Layout) -> bool:
    """Whether every out-of-band buffer of `record` passes its check."""
    if layout.check != CHECK_XXH3:
        return False
    view = memoryview(record)
    return all(xxh3_64_intdigest(view[o : o + n]) == h for o, n, h in layout.buffers)


def load(record: Any, layout: Layout, loads: Callable[..., Any], zero_copy: bool = False) -> tuple[bool, Any]:
    """(True, value) of `record`; (False, None) if one of its out-of-band buffers is damaged.

    Each buffer is copied into a ``bytearray`` (the one copy), then checked
    while it is still in the cache. With `zero_copy`, the buffers are views
    of `record` itself and are not checked (checking reads every byte, which
    costs a copy's time); the rest of the record was.
    """
    view = memoryview(record)
    buffers: list[Any] | None
    if zero_copy:
        buffers = [view[o : o + n].toreadonly() for o, n, _ in layout.buffers]
    else:
        buffers = _copies(view, layout)
        if buffers is None:
            return False, None
    return True, loads(view, buffers=buffers)


def _copies(view: memoryview, layout: Layout) -> list[Any] | None:
    """Each buffer of `view` copied into a ``bytearray`` and checked there; None if one is damaged."""
    if layout.check != CHECK_XXH3:
        return None
    buffers: list[Any] = []
    for offset, length, expected in layout.buffers:
        copy = bytearray(view[offset : offset + length])
        if xxh3_64_intdigest(copy) != expected:
            return None
        buffers.append(copy)
    return buffers


class Taken:
    """A record with out-of-band buffers, taken out of the storage: its pickle stream and checked copies.

    Made by `take` inside a read, loaded after it (`_serialize`), so that no
    unpickling runs while the read holds a view into the storage. It reads as
    a kind 2 record (its byte at -5, all a decoder's fast path looks at), and
    its length is that of the record's stream and buffers (what a batch weighs).
    """

    __slots__ = ("buffers", "size", "stream")

    def __init__(self, stream: bytes, buffers: list[Any]) -> None:
        self.stream = stream
        self.buffers = buffers
        self.size = len(stream) + sum(map(len, buffers))

    def __getitem__(self, index: int) -> int:
        if index != -_TRAILER:
            raise TypeError("a taken record is read only by its codec")
        return _KIND_SECTIONS

    def __len__(self) -> int:
        return self.size


def take(record: Any, crc32: Crc, residue: int, sections: frozenset[int]) -> Any:
    """`record` (a view valid only during the call) copied out of the storage, to be loaded later.

    A `Taken` if it holds out-of-band buffers, passes its checks and holds
    only `sections`: each buffer copied once (and checked), and the pickle
    stream. Any other record is copied whole (``bytes``): its decoder loads
    it, or says what is wrong with it, as usual. Runs no code of the data.
    """
    layout = locate(record, crc32, residue)
    if layout is None or not layout.sections.keys() <= sections:
        return bytes(record)
    view = memoryview(record)
    buffers = _copies(view, layout)
    if buffers is None:
        return bytes(record)  # damaged: decoding the whole record raises CorruptError
    return Taken(bytes(view[: layout.sections[SECTION_BUFFERS][0]]), buffers)
