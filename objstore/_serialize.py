"""Pickler, Unpickler and the value record format.

This module turns objects into value records and back. It knows nothing of
LMDB or of keys on disk: the storage layer only ever sees the bytes made here.

`Pickler` and `Unpickler` are subclasses of pickle's C classes with the same
constructor signatures and the same default behaviour, so code written for
``pickle.Pickler``/``pickle.Unpickler`` works with them. They are the place to
customise serialisation (``reducer_override``, ``dispatch_table``,
``persistent_id``/``persistent_load``, ``find_class``): pass your subclasses to
`objstore.open` as ``pickler=``/``unpickler=``.

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
  to be LMDB keys themselves. Later features (out-of-band buffers,
  compression, signatures, references) add their own tags, so any of them can
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

Unpickling runs code named by the data. Only open stores whose writers you
trust, or restrict what can be loaded with an `Unpickler` whose
``find_class`` allows only the classes you expect.
"""

from __future__ import annotations

import io
import pickle
import struct
import sys
from collections.abc import Callable, Sequence
from itertools import count
from operator import itemgetter
from typing import Any

from . import _buffers
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
    "SECTION_KEY",
    "TRAILER_SIZE",
    "Codec",
    "Pickler",
    "Unpickler",
    "dumps",
    "crc32",
    "loads",
    "add_key_note",
    "bad_record",
    "is_intact",
    "record_key",
]

KIND_PICKLE = 1
KIND_SECTIONS = 2
SECTION_KEY = 1
_KNOWN_SECTIONS = frozenset({SECTION_KEY, _buffers.SECTION_BUFFERS})
_section_end = struct.Struct("<IB").pack  # payload length, tag
_SECTION_END = 5
_KIND_BYTE = bytes([KIND_PICKLE])
_trailer = struct.Struct("<BI").pack  # kind, CRC-32
LARGE = 1 << 16  # values at least this big (by sys.getsizeof) are pickled into a buffer
Record = bytes | memoryview  # what encode returns; LMDB takes either
TRAILER_SIZE = 5
_kind_of = itemgetter(-TRAILER_SIZE)  # a record's kind byte
CRC_RESIDUE = 0x2144DF1C


class Pickler(pickle.Pickler):
    """A ``pickle.Pickler`` (the C implementation) that objstore serialises through.

    Same signature and behaviour as ``pickle.Pickler``; subclass it to add
    reducers (``reducer_override``, ``dispatch_table``) or persistent ids, and
    pass the subclass to `objstore.open` as ``pickler=``.
    """


class Unpickler(pickle.Unpickler):
    """A ``pickle.Unpickler`` (the C implementation) that objstore loads through.

    Same signature and behaviour as ``pickle.Unpickler``; subclass it to
    restrict ``find_class`` or resolve persistent ids, and pass the subclass to
    `objstore.open` as ``unpickler=``.
    """


def dumps(
    obj: Any,
    protocol: int | None = None,
    *,
    fix_imports: bool = True,
    buffer_callback: Callable[[pickle.PickleBuffer], Any] | None = None,
) -> bytes:
    """Return the pickle of `obj` made by `Pickler`, like ``pickle.dumps``."""
    buffer = io.BytesIO()
    Pickler(buffer, protocol, fix_imports=fix_imports, buffer_callback=buffer_callback).dump(obj)
    return buffer.getvalue()


def loads(
    data: Any,
    /,
    *,
    fix_imports: bool = True,
    encoding: str = "ASCII",
    errors: str = "strict",
    buffers: Any = (),
) -> Any:
    """Return the object pickled in `data`, loaded by `Unpickler`, like ``pickle.loads``."""
    unpickler = Unpickler(
        io.BytesIO(data), fix_imports=fix_imports, encoding=encoding, errors=errors, buffers=buffers
    )
    return unpickler.load()


def _shallow_size(value: Any) -> int:
    """`sys.getsizeof`, which counts the data of bytes, strings and NumPy arrays; 0 if it fails."""
    try:
        return sys.getsizeof(value)
    except Exception:
        return 0


def add_key_note(exc: BaseException, key: str) -> None:
    """Name `key` in a note on `exc`, an error raised while unpickling its value."""
    _add_note(exc, f"while unpickling the value of key {key!r}")


def _add_note(exc: BaseException, note: str) -> None:
    # BaseException.add_note is new in 3.11; on 3.10 the note is kept where
    # 3.11+ tracebacks would show it.
    if hasattr(exc, "add_note"):
        exc.add_note(note)
    else:  # pragma: no cover - Python 3.10
        exc.__notes__ = [*getattr(exc, "__notes__", []), note]


class Codec:
    """Turns values into records and records into values, for one store.

    With the stock `Pickler`/`Unpickler` the codec calls pickle's C
    ``dumps``/``loads`` directly: the stock classes add no hooks, so the bytes
    are identical, and it saves building two objects per value (about 0.5 µs,
    a third of a small read). Any other class is used through its constructor.
    """

    __slots__ = ("_spot", "_stock_pickler", "decode", "load", "pickler", "protocol", "unpickler")

    def __init__(
        self,
        protocol: int | None = None,
        pickler: type[pickle.Pickler] = Pickler,
        unpickler: type[pickle.Unpickler] = Unpickler,
    ) -> None:
        if protocol is None:
            protocol = pickle.HIGHEST_PROTOCOL
        if not isinstance(protocol, int) or isinstance(protocol, bool):
            raise TypeError(f"protocol must be an int or None, not {type(protocol).__name__}")
        if protocol < 0:
            protocol = pickle.HIGHEST_PROTOCOL
        if protocol > pickle.HIGHEST_PROTOCOL:
            raise ValueError(
                f"pickle protocol must be <= {pickle.HIGHEST_PROTOCOL} on this Python, not {protocol}"
            )
        if not (isinstance(pickler, type) and issubclass(pickler, pickle.Pickler)):
            raise TypeError("pickler must be a subclass of pickle.Pickler")
        if not (isinstance(unpickler, type) and issubclass(unpickler, pickle.Unpickler)):
            raise TypeError("unpickler must be a subclass of pickle.Unpickler")
        self.protocol = protocol
        self.pickler = pickler
        self.unpickler = unpickler
        self._stock_pickler = pickler is Pickler
        # Notices a large buffer inside a value pickled in band (a dict of arrays, an array view).
        self._spot = _buffers.spot if protocol >= 5 else None
        self.load: Callable[[bytes], Any] = pickle.loads if unpickler is Unpickler else self._load_with_class
        # decode(record, key): the value held in `record`, checked first. A closure,
        # not a method: it is called once per read and iterated value.
        self.decode: Callable[[bytes, str], Any] = _decoder(self.load, self._decode_checked)

    def batch_loader(self, records: Sequence[bytes]) -> Callable[[bytes], Any] | None:
        """The function that loads each of `records` if all are intact kind 1 records, else None.

        Iteration's fast path: one pass in C over a whole batch (its CRCs, then
        its kind bytes) instead of a check in a Python frame per record. With
        None, each record goes through `decode`, which says what is wrong.
        """
        try:
            # Kinds first: a record with large out-of-band buffers must not pay a CRC-32 over them.
            plain = set(map(_kind_of, records)) == {KIND_PICKLE} and set(map(crc32, records)) == {CRC_RESIDUE}
        except IndexError:  # a record of four bytes or fewer: decode says it is damaged
            return None
        return self.load if plain else None

    def _load_with_class(self, record: bytes) -> Any:
        return self.unpickler(io.BytesIO(record)).load()

    def _load_buffers(self, record: Any, buffers: Any) -> Any:
        """Load `record` whose out-of-band buffers are `buffers`."""
        if self.unpickler is Unpickler:
            return pickle.loads(record, buffers=buffers)
        return self.unpickler(io.BytesIO(record), buffers=buffers).load()

    def encode(self, value: Any, key: str, keep_key: bool = False, large: bool = False) -> Record:
        """Return the record for `value`; pickling errors carry a note naming `key`.

        With `keep_key`, the record also holds the whole of `key` (a kind 2
        record with a `SECTION_KEY` section), for keys the storage cannot keep.
        """
        if keep_key:
            return _keep_key(self.encode(value, key), key)
        try:
            if self._stock_pickler and not large and _shallow_size(value) < LARGE:
                payload = pickle.dumps(value, self.protocol, buffer_callback=self._spot)
                return payload + _trailer(KIND_PICKLE, crc32(_KIND_BYTE, crc32(payload)))
            return self._encode_in_buffer(value)
        except _buffers.Large:
            return self.encode(value, key, large=True)
        except TypeError as exc:
            if type(value) is memoryview and not getattr(exc, "__notes__", None):
                return self._encode_in_buffer(value)  # a large memoryview goes out of band
            _add_note(exc, f"while pickling the value for key {key!r}; nothing was stored")
            raise
        except Exception as exc:
            _add_note(exc, f"while pickling the value for key {key!r}; nothing was stored")
            raise

    def _encode_in_buffer(self, value: Any) -> memoryview:
        """The record of `value`, pickled into a buffer that the trailer is then appended to.

        For large values this is several times faster than ``pickle.dumps``,
        which grows and copies its own output buffer, and the record is never
        copied again: LMDB is handed a view of the buffer.
        """
        if self.protocol >= 5:
            # Large buffers out of band (`_buffers`): not copied through the stream.
            buffer, oob = _buffers.dump(value, self.pickler, self.protocol)
            if oob:
                return memoryview(_buffers.frame(buffer, oob, crc32))
        else:
            buffer = io.BytesIO()
            self.pickler(buffer, self.protocol).dump(value)
        buffer.write(_KIND_BYTE)
        with buffer.getbuffer() as body:
            crc = crc32(body)
        buffer.write(crc.to_bytes(4, "little"))
        return buffer.getbuffer()

    def encode_many(
        self, values: Sequence[Any], keys: Sequence[str], keep_keys: Sequence[int] = ()
    ) -> list[Record]:
        """Return the records of `values` (named by `keys` in errors).

        The records at the positions `keep_keys` hold their whole key, as with
        ``encode(..., keep_key=True)``.
        """
        records = self._encode_many(values, keys)
        for i in keep_keys:
            records[i] = _keep_key(records[i], keys[i])
        return records

    def _encode_many(self, values: Sequence[Any], keys: Sequence[str]) -> list[Record]:
        if not self._stock_pickler:
            return [self.encode(value, key) for value, key in zip(values, keys, strict=True)]
        dumps, protocol, kind, trailer, spot = pickle.dumps, self.protocol, _KIND_BYTE, _trailer, self._spot
        # Comprehensions, not a loop: this is most of a bulk write's own cost.
        taken = count()  # how many values the comprehension took, to name the one that failed
        try:
            payloads = [
                dumps(value, protocol, buffer_callback=spot) for value, _ in zip(values, taken, strict=False)
            ]
        except _buffers.Large:  # large buffers go out of band: value by value
            return [self.encode(value, key) for value, key in zip(values, keys, strict=True)]
        except Exception as exc:
            key = keys[next(taken) - 1]
            _add_note(exc, f"while pickling the value for key {key!r}; nothing was stored")
            raise
        return [payload + trailer(KIND_PICKLE, crc32(kind, crc32(payload))) for payload in payloads]

    def _decode_checked(self, record: bytes, key: str) -> Any:
        """`decode` for every record its fast path leaves: other kinds, and damage (raised)."""
        layout = _buffers.locate(record, crc32, CRC_RESIDUE)
        if layout is not None:
            return self._decode_buffers(record, key, layout, False)
        if not is_intact(record):
            raise bad_record(record, key)
        # Every kind starts with the pickle stream, and pickle stops at its
        # STOP opcode: the record is loaded in place, sections and all.
        try:
            return self.load(record)
        except Exception as exc:
            add_key_note(exc, key)
            raise

    def _decode_buffers(self, record: Any, key: str, layout: _buffers.Layout, zero_copy: bool) -> Any:
        """The value of `record`, which holds out-of-band buffers (`layout`), checked."""
        if not layout.sections.keys() <= _KNOWN_SECTIONS:
            raise bad_record(record, key)
        try:
            intact, value = _buffers.load(record, layout, self._load_buffers, zero_copy)
        except Exception as exc:
            add_key_note(exc, key)
            raise
        if not intact:
            raise _damaged(record, key)
        return value

    def decode_view(self, record: Any, key: str) -> Any:
        """`decode` inside a zero-copy snapshot: out-of-band buffers come back as read-only views of `record`.

        `record` must stay valid as long as those views live (the storage's
        pinned views do). Those buffers are not checked; the rest of the record is.
        """
        layout = _buffers.locate(record, crc32, CRC_RESIDUE)
        if layout is not None:
            return self._decode_buffers(record, key, layout, True)
        return self.decode(record, key)


def _decoder(
    load: Callable[[bytes], Any], checked: Callable[[bytes, str], Any]
) -> Callable[[bytes, str], Any]:
    """The `Codec.decode` of a codec that loads with `load`: one call per read.

    An intact kind 1 record (nearly every record) is checked with one CRC call
    and loaded in place; any other record goes to `checked`, which loads
    another kind or raises the error that says what is wrong. Everything the
    fast path needs is bound as a default, so it reads only local variables.
    """

    def decode(
        record: bytes,
        key: str,
        crc32: Callable[[bytes], int] = crc32,
        residue: int = CRC_RESIDUE,
        kind_at: int = -TRAILER_SIZE,
        kind: int = KIND_PICKLE,
        load: Callable[[bytes], Any] = load,
        checked: Callable[[bytes, str], Any] = checked,
    ) -> Any:
        try:
            if record[kind_at] == kind and crc32(record) == residue:
                return load(record)
        except IndexError:  # four bytes or fewer can pass the CRC but hold no trailer
            pass
        except Exception as exc:
            add_key_note(exc, key)  # on the first error: loading again would rerun its side effects
            raise
        return checked(record, key)

    return decode


def _keep_key(record: Record, key: str) -> bytes:
    """`record` (of kind 1) made a kind 2 record with a `SECTION_KEY` section holding `key`."""
    whole = str.encode(key)
    if record[-TRAILER_SIZE] == KIND_SECTIONS:  # out-of-band buffers: one more section
        return _buffers.add_section(record, SECTION_KEY, whole, crc32, CRC_RESIDUE)
    body = b"".join(
        (record[:-TRAILER_SIZE], whole, _section_end(len(whole), SECTION_KEY), bytes((1, KIND_SECTIONS)))
    )
    crc: int = crc32(body)  # typed here: without isal installed, mypy sees crc32 as Any
    return body + crc.to_bytes(4, "little")


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
