"""The value record format: its layout, its integrity check and its sections.

This module is the one place that knows how a record is laid out; the codecs
(`_serialize.Codec`, `_signed.SignedCodec`) build and read records with what
it defines, and tools read records without loading them (`is_intact`,
`record_key`, `pickle_of`). It knows nothing of keys on disk, the storage or
pickling itself, and never loads a value.

Value record, format 1
----------------------
A record is the pickle stream followed by a five-byte trailer::

    +----------------------+--------------------+--------+--------------------------+
    | pickle stream        | sections (kind 2)  | kind   | CRC-32, little-endian    |
    | (any protocol 0-5)   |                    | 1 byte | 4 bytes                  |
    +----------------------+--------------------+--------+--------------------------+

- ``kind`` says how the bytes before it are to be read. Kind 1 is a single
  pickle stream and nothing else. Kind 2 is a pickle stream followed by
  *sections*, read from the end: the byte before ``kind`` is their number,
  and each section, last first, ends with its tag (1 byte) preceded by the
  length of its payload (4 bytes, little-endian) preceded by the payload::

      pickle | payload, length, tag | ... | payload, length, tag | count | 2 | CRC

  Tag 1 (`SECTION_KEY`) holds the whole key in UTF-8, kept for keys too long
  to be LMDB keys themselves. Tag 3 (`SECTION_COMPRESSION`) holds one byte,
  the id of the codec (`_compress`) that compressed the pickle stream: the
  compressed bytes take the stream's place, and are decompressed, then
  loaded. Tag 4 (`SECTION_MAC`) holds the 32-byte MAC of a record of a signed
  store (see "Signed records" below). Tag 5 (`SECTION_REFS`) marks a pickle
  stream that holds references (`_refs`: persistent ids
  ``("objstore.ref", key)``); its payload lists the keys referenced, each as
  its length (4 bytes, little-endian) and its UTF-8, in the order first met;
  only such a record is loaded with a ``persistent_load``. Later features
  (out-of-band buffers) add their own tags, so any of them can
  be combined in one record. A reader refuses a kind or a tag it does not
  know with `UnsupportedFormatError` instead of guessing.
- The CRC-32 (zlib's polynomial) covers everything before it, kind included.
  Because the CRC is stored little-endian at the very end, the CRC-32 of a
  whole intact record is the fixed residue ``0x2144DF1C``: verifying a record
  is one CRC call, with no slicing. The CRC is computed by ISA-L when the
  optional ``isal`` package is installed (the same CRC-32, 4 to 10 times
  faster), else by ``zlib``.
- The pickle stream comes first so it can be unpickled in place: pickle stops
  at its STOP opcode and ignores the sections and the trailer.
- A codec with a ``serializer``/``deserializer`` pair (shelve's, Python 3.15)
  puts the serializer's bytes where the pickle stream would be, unmarked (as
  shelve does): they are sliced out of the record and handed to the
  deserializer exactly as the serializer made them.

Signed records
--------------
Every record of a signed store (`_signed.SignedCodec`; the key comes from `_sign`)
is of kind 2 and its last section, the one nearest the trailer, is its MAC
(tag 4, 32 bytes)::

    pickle | [key section] | MAC (32) | 32 (4) | 4 | count | 2 | CRC

The MAC is keyed BLAKE2b-256 (`_sign.Signer`) over, in this order: every
byte of the record before the MAC (the pickle and any earlier section), the
record's seven bytes between the MAC and the CRC (the MAC's length and tag,
the section count, the kind), the byte ``0xff`` and the key's UTF-8. UTF-8
never holds ``0xff``, so the key is what follows the last ``0xff``: no two
(record, key) pairs have the same message. The MAC covers the key the record
is stored under (a record moved to another key is refused), every section and
the kind; only the CRC is outside it. The message is two pieces, the first a
slice of the record, hashed from a copy of the keyed BLAKE2b state.

Reading checks the MAC first, and nothing reads the pickle or another section
of a record whose MAC does not match: `SignatureError`, or `CorruptError`
when the CRC says the record is damaged. A matching MAC proves every byte it
covers intact, so the CRC is not checked then (a record whose CRC bytes alone
are damaged is read). Other sections of a signed record are read after its
MAC matched.
"""

from __future__ import annotations

import struct
from operator import itemgetter
from typing import Any

from . import _buffers
from ._compress import decompress
from ._errors import CorruptError, UnsupportedFormatError

try:  # the same CRC-32 as zlib's, computed with SIMD instructions
    from isal.isal_zlib import crc32

    CRC_IMPLEMENTATION = "isal"
except ImportError:  # pragma: no cover - exercised in a subprocess by the tests
    from zlib import crc32

    CRC_IMPLEMENTATION = "zlib"

__all__ = [
    "CRC_IMPLEMENTATION",
    "CRC_RESIDUE",
    "KIND_PICKLE",
    "KIND_SECTIONS",
    "SECTION_COMPRESSION",
    "SECTION_KEY",
    "SECTION_MAC",
    "SECTION_REFS",
    "TRAILER_SIZE",
    "Record",
    "bad_record",
    "crc32",
    "is_intact",
    "pickle_of",
    "record_key",
]

KIND_PICKLE = 1
KIND_SECTIONS = 2
SECTION_KEY = 1
SECTION_COMPRESSION = 3
SECTION_MAC = 4
SECTION_REFS = 5
_KNOWN_SECTIONS = frozenset(
    {SECTION_KEY, _buffers.SECTION_BUFFERS, SECTION_COMPRESSION, SECTION_MAC, SECTION_REFS}
)
_section_end = struct.Struct("<IB").pack  # payload length, tag
_SECTION_END = 5
_KIND_BYTE = bytes([KIND_PICKLE])
_trailer = struct.Struct("<BI").pack  # kind, CRC-32
Record = bytes | memoryview  # what encode returns; LMDB takes either
TRAILER_SIZE = 5
_kind_of = itemgetter(-TRAILER_SIZE)  # a record's kind byte
CRC_RESIDUE = 0x2144DF1C


def _keep_key(record: Record, key: str) -> bytes:
    """`record` made a kind 2 record with a `SECTION_KEY` section holding `key`."""
    if record[-TRAILER_SIZE] == KIND_SECTIONS and _buffers.locate(record, crc32, CRC_RESIDUE) is not None:
        # Out-of-band buffers: their CRC leaves the buffers out (see `_buffers`).
        return _buffers.add_section(record, SECTION_KEY, str.encode(key), crc32, CRC_RESIDUE)
    return _add_section(record, SECTION_KEY, str.encode(key))


def _add_section(record: Record, tag: int, payload: bytes) -> bytes:
    """`record` (of kind 1 or 2) made a kind 2 record with one more section, `payload` under `tag`."""
    if record[-TRAILER_SIZE] == KIND_SECTIONS:
        head, count = record[: -TRAILER_SIZE - 1], record[-TRAILER_SIZE - 1]
    else:
        head, count = record[:-TRAILER_SIZE], 0
    body = b"".join((head, payload, _section_end(len(payload), tag), bytes((count + 1, KIND_SECTIONS))))
    crc: int = crc32(body)  # typed here: without isal installed, mypy sees crc32 as Any
    return body + crc.to_bytes(4, "little")


def _body(record: bytes) -> tuple[memoryview, dict[int, bytes]]:
    """A kind 2 record's body (the bytes before its sections, as a view) and its sections, by tag."""
    sections = _sections(record) or {}
    end = len(record) - TRAILER_SIZE - 1 - sum(len(p) + _SECTION_END for p in sections.values())
    return memoryview(record)[:end], sections


def _sections(record: bytes) -> dict[int, bytes] | None:
    """The sections of a kind 2 record, by tag; None if they do not fit in the record."""
    end = len(record) - TRAILER_SIZE - 1  # the section count
    if end < 0:
        return None
    found: dict[int, bytes] = {}
    for _ in range(record[end]):
        if end < _SECTION_END:
            return None
        tag = record[end - 1]
        start = end - _SECTION_END - int.from_bytes(record[end - _SECTION_END : end - 1], "little")
        if start < 0 or tag in found:
            return None
        found[tag] = bytes(record[start : end - _SECTION_END])
        end = start
    return found


def is_intact(record: bytes) -> bool:
    """Whether `record` passes its CRC and is of a kind (with sections) this version reads."""
    # Out-of-band buffers first: their record's CRC-32 leaves them out (and a
    # CRC-32 of them would cost ten times their own check).
    layout = _buffers.locate(record, crc32, CRC_RESIDUE)
    if layout is not None:
        return layout.sections.keys() <= _KNOWN_SECTIONS and _buffers.intact_buffers(record, layout)
    # One CRC call over the whole record, no slicing (see the module docstring).
    try:
        if crc32(record) != CRC_RESIDUE:
            return False
        kind = record[-TRAILER_SIZE]
    except IndexError:  # four bytes or fewer can pass the CRC but hold no trailer
        return False
    if kind == KIND_PICKLE:
        return True
    if kind != KIND_SECTIONS:
        return False
    sections = _sections(record)
    return sections is not None and sections.keys() <= _KNOWN_SECTIONS


def pickle_of(record: bytes) -> bytes:
    """The pickle stream of an intact `record`, for tools that read it without loading it.

    Readers of pickle opcodes (``pickletools.genops``) stop at its STOP
    opcode, so an uncompressed record is its own pickle stream; a compressed
    one is decompressed (`CorruptError` or `UnsupportedFormatError` if it
    cannot be).
    """
    if record[-TRAILER_SIZE] == KIND_SECTIONS:
        body, sections = _body(record)
        codec = sections.get(SECTION_COMPRESSION)
        if codec is not None:
            return decompress(codec, body, "?")
    return record


def record_key(record: bytes) -> bytes | None:
    """The whole key (UTF-8) that `record` holds; None if it holds none or fails its check."""
    if len(record) <= TRAILER_SIZE or record[-TRAILER_SIZE] != KIND_SECTIONS or not is_intact(record):
        return None
    layout = _buffers.locate(record, crc32, CRC_RESIDUE)
    if layout is not None:
        span = layout.sections.get(SECTION_KEY)
        return None if span is None else bytes(record[span[0] : span[1]])
    sections = _sections(record)
    return None if sections is None else sections.get(SECTION_KEY)


def bad_record(record: bytes, key: str) -> Exception:
    """Return the error for a record that failed its check: damaged, or of an unknown kind."""
    layout = _buffers.locate(record, crc32, CRC_RESIDUE)
    if layout is not None and not layout.sections.keys() <= _KNOWN_SECTIONS:
        return UnsupportedFormatError(
            f"the value of key {key!r} is a record of sections {sorted(layout.sections)}, written by a "
            "newer objstore; upgrade objstore to read it"
        )
    if layout is None and len(record) > TRAILER_SIZE and crc32(record) == CRC_RESIDUE:
        kind = record[-TRAILER_SIZE]
        sections = _sections(record) if kind == KIND_SECTIONS else {}
        if kind != KIND_SECTIONS or sections is not None:
            unknown = f"kind {kind}" if kind != KIND_SECTIONS else f"sections {sorted(sections or ())}"
            return UnsupportedFormatError(
                f"the value of key {key!r} is a record of {unknown}, written by a newer objstore; "
                "upgrade objstore to read it"
            )
    return _damaged(record, key, "CRC-32" if layout is None else "CRC-32 and XXH3")


def _damaged(record: Any, key: str, checks: str = "CRC-32 and XXH3") -> CorruptError:
    return CorruptError(
        f"the value of key {key!r} is damaged ({len(record)} bytes failed their {checks} check); "
        "other keys are unaffected: delete or overwrite this key, or restore it from a backup",
        key,
    )
