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

Without ``pickler=``/``unpickler=`` (or a serializer), a codec pickles and
loads through whatever classes ``objstore.Pickler`` and ``objstore.Unpickler``
are at the moment of each call, as ``shelve`` does with its module's
``Pickler``/``Unpickler`` up to Python 3.14: code may swap them (dill's
Pickler, an Unpickler that renames classes) on shelves already open. The check
is one attribute read per value; with the stock classes the fast paths stay.

Signed records
--------------
Every record of a signed store (`SignedCodec`; the key comes from `_sign`)
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

Unpickling runs code named by the data. Only open stores whose writers you
trust, or restrict what can be loaded with an `Unpickler` whose
``find_class`` allows only the classes you expect (``open(..., allow=...)``
does so: see `_restrict` and docs/security.md).
"""

from __future__ import annotations

import hmac
import io
import pickle
import struct
import sys
from collections.abc import Callable, Sequence
from itertools import count
from operator import itemgetter
from types import SimpleNamespace
from typing import Any

from . import _buffers
from ._compress import DEFAULT_COMPRESS_ABOVE, compressor, decompress
from ._errors import CorruptError, ForbiddenGlobalError, SignatureError, UnsupportedFormatError
from ._refs import RefFound, dump_with_refs, load_with_refs, resolver
from ._sign import MAC_SIZE, Signer

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
    "Codec",
    "Pickler",
    "SignedCodec",
    "Unpickler",
    "dumps",
    "crc32",
    "loads",
    "add_key_note",
    "bad_record",
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
# The sections of a record `Codec.take` takes apart (a long key's record stays whole: its key is read there).
_TAKEN_SECTIONS = _KNOWN_SECTIONS - {SECTION_KEY}
_section_end = struct.Struct("<IB").pack  # payload length, tag
_SECTION_END = 5
_KIND_BYTE = bytes([KIND_PICKLE])
_trailer = struct.Struct("<BI").pack  # kind, CRC-32
LARGE = 1 << 16  # values at least this big (by sys.getsizeof) are pickled into a buffer
Record = bytes | memoryview  # what encode returns; LMDB takes either
TRAILER_SIZE = 5
_kind_of = itemgetter(-TRAILER_SIZE)  # a record's kind byte
CRC_RESIDUE = 0x2144DF1C
# A compressed record's extra bytes: codec id, section length and tag, section count.
_COMPRESSION_OVERHEAD = 1 + _SECTION_END + 1
# The package (objstore), whose Pickler/Unpickler attributes a codec opened
# without classes follows. Read from sys.modules, not imported: it is the
# layer above, and its attributes are read at call time only.
_package = sys.modules[__name__.rpartition(".")[0]]


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
    if isinstance(exc, ForbiddenGlobalError) and exc.key is None:
        exc.key = key  # its message names the key itself
        return
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

    `pickler`/`unpickler` None (the default) follow ``objstore.Pickler`` and
    ``objstore.Unpickler`` at each call. `serializer`/`deserializer` (given
    together, instead of the classes) replace pickling, as in shelve 3.15.
    `compression` (None, ``"zlib"`` or ``"zstd"``) compresses bodies longer
    than `compress_above` bytes when that makes the record smaller.
    """

    __slots__ = (
        "_compress_above",
        "_compressor",
        "_fast_load",
        "_load_body",
        "_picklers",
        "_serializer",
        "_spot",
        "_stock",
        "_unpicklers",
        "compress_above",
        "compression",
        "decode",
        "deserializer",
        "load",
        "pickler",
        "protocol",
        "serializer",
        "unpickler",
    )

    def __init__(
        self,
        protocol: int | None = None,
        pickler: type[pickle.Pickler] | None = None,
        unpickler: type[pickle.Unpickler] | None = None,
        *,
        serializer: Callable[[Any, int], Any] | None = None,
        deserializer: Callable[[bytes], Any] | None = None,
        compression: str | None = None,
        compress_above: int = DEFAULT_COMPRESS_ABOVE,
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
        if pickler is not None and not (isinstance(pickler, type) and issubclass(pickler, pickle.Pickler)):
            raise TypeError("pickler must be a subclass of pickle.Pickler")
        if unpickler is not None and not (
            isinstance(unpickler, type) and issubclass(unpickler, pickle.Unpickler)
        ):
            raise TypeError("unpickler must be a subclass of pickle.Unpickler")
        _check_serializer(serializer, deserializer, pickler, unpickler)
        self.protocol = protocol
        self.pickler = pickler
        self.unpickler = unpickler
        self.serializer = self._serializer = serializer
        self.deserializer = deserializer
        self.compression = compression
        self.compress_above = compress_above
        self._compressor = compressor(compression, compress_above)
        # Off: no pickle is that long, so the write paths' one comparison never compresses.
        self._compress_above = sys.maxsize if self._compressor is None else compress_above
        # Where the class of the moment is read, at each call: the package
        # (objstore.Pickler/.Unpickler) for a class not given, else a namespace holding it.
        self._picklers: Any = _package if pickler is None else SimpleNamespace(Pickler=pickler)
        self._unpicklers: Any = _package if unpickler is None else SimpleNamespace(Unpickler=unpickler)
        self.load: Callable[[bytes], Any]
        if deserializer is not None:
            # No pickling: no class is looked up, and decode's fast path always applies.
            self._picklers = SimpleNamespace(Pickler=None)
            self._unpicklers = SimpleNamespace(Unpickler=None)
            self._stock: Any = None
            self._fast_load: Callable[[bytes], Any] = _sliced(deserializer)
            self.load = self._fast_load
            self._load_body: Callable[[Any], Any] = deserializer
        else:
            # decode's fast path loads with _fast_load while _unpicklers.Unpickler is _stock.
            self._stock = Unpickler if unpickler is None else unpickler
            self._fast_load = pickle.loads if self._stock is Unpickler else self._load_with_class
            self.load = self._load_following if unpickler is None else self._fast_load
            self._load_body = self.load  # a pickle stream, with its trailer or not
        # Notices a large buffer inside a value pickled in band (a dict of arrays, an array
        # view), to write it out of band instead: protocol 5 only, never with a serializer,
        # and not with compression (which asked for large values to be compressed, in band).
        out_of_band = protocol >= 5 and serializer is None and self._compressor is None
        self._spot = _buffers.spot if out_of_band else None
        # decode(record, key): the value held in `record`, checked first. A closure,
        # not a method: it is called once per read and iterated value.
        self.decode: Callable[[bytes, str], Any] = Codec.decoder(self, None)  # a subclass sets its own

    def decoder(self, mapping: Any) -> Callable[[bytes, str], Any]:
        """`decode` for the reads of `mapping`: the references its values hold read through it.

        The fast path is `decode`'s own; only a record holding references
        (which is never of kind 1) uses the binding, made once per mapping.
        """
        bound = None if mapping is None else resolver(mapping)
        return _decoder(self._fast_load, self._decode_checked, self._unpicklers, self._stock, bound)

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
        if not plain:
            return None
        # The classes are checked once per batch, not per record.
        return self._fast_load if self._unpicklers.Unpickler is self._stock else self.load

    def _load_with_class(self, record: bytes) -> Any:
        return self._unpicklers.Unpickler(io.BytesIO(record)).load()

    def _load_following(self, record: bytes) -> Any:
        """Load `record` through ``objstore.Unpickler`` as it is now (pickle's C loads for the stock one)."""
        unpickler = _package.Unpickler
        if unpickler is Unpickler:
            return pickle.loads(record)
        return unpickler(io.BytesIO(record)).load()

    def _load_buffers(self, record: Any, buffers: Any) -> Any:
        """Load `record` whose out-of-band buffers are `buffers`."""
        unpickler = self._unpicklers.Unpickler  # the class of the moment, as every load
        if unpickler is Unpickler:
            return pickle.loads(record, buffers=buffers)
        return unpickler(io.BytesIO(record), buffers=buffers).load()

    def encode(self, value: Any, key: str, keep_key: bool = False, large: bool = False) -> Record:
        """Return the record for `value`; pickling errors carry a note naming `key`.

        With `keep_key`, the record also holds the whole of `key` (a kind 2
        record with a `SECTION_KEY` section), for keys the storage cannot keep.
        """
        if keep_key:
            return _keep_key(self.encode(value, key), key)
        try:
            if self._picklers.Pickler is Pickler and not large and _shallow_size(value) < LARGE:
                payload = pickle.dumps(value, self.protocol, buffer_callback=self._spot)
                if self._compressor is None or len(payload) <= self._compress_above:
                    return payload + _trailer(KIND_PICKLE, crc32(_KIND_BYTE, crc32(payload)))
                return self._plain_or_compressed(payload)
            return self._encode_in_buffer(value)
        except RefFound:
            pass  # the value holds a reference: pickled again below, with references
        except _buffers.Large:
            return self.encode(value, key, large=True)
        except TypeError as exc:
            if type(value) is memoryview and self._spot is not None and not getattr(exc, "__notes__", None):
                return self._encode_in_buffer(value)  # a large memoryview goes out of band
            _add_note(exc, f"while pickling the value for key {key!r}; nothing was stored")
            raise
        except Exception as exc:
            _add_note(exc, f"while pickling the value for key {key!r}; nothing was stored")
            raise
        return self._encode_with_refs(value, key)

    def _encode_with_refs(self, value: Any, key: str) -> bytes:
        """The record of `value`, which holds references: its `SECTION_REFS` lists the keys named."""
        try:
            stream, keys = dump_with_refs(self._picklers.Pickler, value, self.protocol)
        except Exception as exc:
            _add_note(exc, f"while pickling the value for key {key!r}; nothing was stored")
            raise
        payload = b"".join(len(whole).to_bytes(4, "little") + whole for whole in map(str.encode, keys))
        return _add_section(self._plain_or_compressed(stream), SECTION_REFS, payload)

    def _encode_in_buffer(self, value: Any) -> Record:
        """The record of `value`, pickled into a buffer that the trailer is then appended to.

        For large values this is several times faster than ``pickle.dumps``,
        which grows and copies its own output buffer, and the record is never
        copied again: LMDB is handed a view of the buffer. (A compressed record
        is the compressor's output instead.)
        """
        if self._spot is not None:
            # Large buffers out of band (`_buffers`): not copied through the stream.
            buffer, oob = _buffers.dump(value, self._picklers.Pickler, self.protocol)
            if oob:
                return memoryview(_buffers.frame(buffer, oob, crc32))
        else:
            buffer = io.BytesIO()
            if self._serializer is not None:
                buffer.write(self._serializer(value, self.protocol))
            else:
                self._picklers.Pickler(buffer, self.protocol).dump(value)
        if buffer.tell() > self._compress_above:
            with buffer.getbuffer() as body:
                compressed = self._compressed(body)
            if compressed is not None:
                return compressed
        buffer.write(_KIND_BYTE)
        with buffer.getbuffer() as body:
            crc = crc32(body)
        buffer.write(crc.to_bytes(4, "little"))
        return buffer.getbuffer()

    def _compressed(self, body: Any) -> bytes | None:
        """The kind 2 record of `body` (bytes-like) compressed; None if that is no smaller."""
        assert self._compressor is not None
        codec_id, compress = self._compressor
        packed = compress(body)
        if len(packed) + _COMPRESSION_OVERHEAD >= len(body):
            return None  # incompressible: stored as it is
        head = b"".join(
            (packed, bytes((codec_id,)), _section_end(1, SECTION_COMPRESSION), bytes((1, KIND_SECTIONS)))
        )
        crc: int = crc32(head)
        return head + crc.to_bytes(4, "little")

    def _plain_or_compressed(self, payload: bytes) -> Record:
        """The record of the pickle `payload`, compressed if it is long enough and that saves space."""
        if len(payload) > self._compress_above:
            compressed = self._compressed(payload)
            if compressed is not None:
                return compressed
        return payload + _trailer(KIND_PICKLE, crc32(_KIND_BYTE, crc32(payload)))

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
        if self._picklers.Pickler is not Pickler:
            return [self.encode(value, key) for value, key in zip(values, keys, strict=True)]
        dumps, protocol, kind, trailer, spot = pickle.dumps, self.protocol, _KIND_BYTE, _trailer, self._spot
        # Comprehensions, not a loop: this is most of a bulk write's own cost.
        taken = count()  # how many values the comprehension took, to name the one that failed
        try:
            payloads = [
                dumps(value, protocol, buffer_callback=spot) for value, _ in zip(values, taken, strict=False)
            ]
        except (RefFound, _buffers.Large):  # references, or large buffers out of band: value by value
            # Codec.encode, not self.encode: these are unsigned records, whatever the subclass.
            return [Codec.encode(self, value, key) for value, key in zip(values, keys, strict=True)]
        except Exception as exc:
            key = keys[next(taken) - 1]
            _add_note(exc, f"while pickling the value for key {key!r}; nothing was stored")
            raise
        if self._compressor is not None:
            return [self._plain_or_compressed(payload) for payload in payloads]
        return [payload + trailer(KIND_PICKLE, crc32(kind, crc32(payload))) for payload in payloads]

    def intact(self, record: bytes, key: str) -> bool:
        """Whether `record`, stored under `key`, passes every check `decode` makes before loading."""
        return is_intact(record)

    def _decode_checked(self, record: bytes, key: str, mapping: Any = None) -> Any:
        """`decode` for every record its fast path leaves: other kinds, and damage (raised).

        The references a record holds are bound to `mapping` (a weak reference,
        see `decoder`); without one, such a record fails to load as pickle's
        loads does (no ``persistent_load``).
        """
        taken: Any = record
        if type(taken) is _buffers.Taken:  # taken out of the storage by `take`: checked already
            try:
                return self._load_buffers(taken.stream, taken.buffers)
            except Exception as exc:
                add_key_note(exc, key)
                raise
        layout = _buffers.locate(record, crc32, CRC_RESIDUE)
        if layout is not None:
            return self._decode_buffers(record, key, layout, False)
        if not is_intact(record):
            raise bad_record(record, key)
        # Every kind starts with the pickle stream, and pickle stops at its
        # STOP opcode: the record is loaded in place, sections and all. A
        # compressed body, or a serializer's bytes, is sliced out first.
        load: Callable[[Any], Any] = self.load
        data: Any = record
        holds_refs = False
        if record[-TRAILER_SIZE] == KIND_SECTIONS:
            body, sections = _body(record)
            codec = sections.get(SECTION_COMPRESSION)
            if codec is not None:
                data, load = decompress(codec, body, key), self._load_body
            elif self._serializer is not None:
                data, load = bytes(body), self._load_body
            holds_refs = SECTION_REFS in sections and self._serializer is None
        try:
            if holds_refs and mapping is not None:
                return load_with_refs(self._unpicklers.Unpickler, data, mapping)
            return load(data)
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

    def take(self, record: Any) -> Any:
        """`record`, a view into the storage valid only during the call, copied out for `decode`.

        A record with out-of-band buffers (and no key section) is taken as
        its checked buffers, each copied once, and its pickle stream, which
        `decode` loads later; any other record is copied whole. Runs no code
        of the data, so the view is never read while such code runs.
        """
        return _buffers.take(record, crc32, CRC_RESIDUE, _TAKEN_SECTIONS)

    def view_decoder(self, mapping: Any) -> Callable[[Any, str], Any]:
        """`decoder(mapping)` for a zero-copy snapshot: out-of-band buffers come back as read-only views.

        A record passed to it must stay valid as long as those views live (the
        storage's pinned views do). Those buffers are not checked; the rest of
        the record is.
        """
        decode = self.decoder(mapping)

        def decode_view(record: Any, key: str) -> Any:
            layout = _buffers.locate(record, crc32, CRC_RESIDUE)
            if layout is not None:
                return self._decode_buffers(record, key, layout, True)
            return decode(record, key)

        return decode_view


_MAC_END = _section_end(MAC_SIZE, SECTION_MAC)  # the MAC section's length and tag
_MAC_TAIL = _SECTION_END + 1 + TRAILER_SIZE  # from the end of the MAC to the end of the record
_MAC_START = _MAC_TAIL + MAC_SIZE  # from the start of the MAC to the end of the record
_SIGNED_TAIL = _MAC_END + bytes((1, KIND_SECTIONS))  # after the MAC of a record with no other section
_SIGNED_ONLY = frozenset({SECTION_KEY, SECTION_MAC})  # the sections a signed record loads in place with
_KEY_MARK = b"\xff"  # between a MAC message's record bytes and its key: UTF-8 never holds it
_SIGNED_HEAD = _SIGNED_TAIL + _KEY_MARK


class SignedCodec(Codec):
    """The codec of a signed store: its records carry a MAC, and only records whose MAC matches load.

    Chosen when the shelf is opened, so unsigned stores keep `Codec`'s paths
    untouched. Every write path goes through `encode` or `encode_many`, which
    sign; `decode` checks the MAC of every record before loading it (see
    "Signed records" in the module docstring).
    """

    __slots__ = ("_signed_load", "signer")

    def __init__(self, signer: Signer, protocol: int | None = None, *args: Any, **options: Any) -> None:
        super().__init__(protocol, *args, **options)
        self.signer = signer
        # In band only: a signature covers the whole record, buffers included, which a
        # view handed out unchecked (zero-copy) would skip.
        self._spot = None
        # What the fast path loads a record with: in place, or (a serializer's bytes) its body.
        self._signed_load = self._fast_load if self._serializer is None else self._load_signed_body
        self.decode = self.decoder(None)

    def decoder(self, mapping: Any) -> Callable[[bytes, str], Any]:
        """`decode` for the reads of `mapping`, as `Codec.decoder`, with every MAC checked."""
        bound = None if mapping is None else resolver(mapping)
        return _signed_decoder(
            self._signed_load, self.signer, self._decode_checked, self._unpicklers, self._stock, bound
        )

    def take(self, record: Any) -> Any:
        """`record` copied whole: a signed record is loaded only after its MAC is checked."""
        return bytes(record)

    def view_decoder(self, mapping: Any) -> Callable[[Any, str], Any]:
        """`decoder(mapping)`: a signed store's values are never views, as every byte is checked."""
        return self.decoder(mapping)

    def _load_signed_body(self, record: bytes) -> Any:
        return self._load_body(bytes(_body(record)[0]))

    def batch_loader(self, records: Sequence[bytes]) -> Callable[[bytes], Any] | None:
        """None: every record of a signed store goes through `decode`, which checks its MAC."""
        return None

    def encode(self, value: Any, key: str, keep_key: bool = False, large: bool = False) -> Record:
        """Return the signed record for `value` under `key` (holding the whole key if `keep_key`)."""
        return _signed(super().encode(value, key, large=large), key, keep_key, self.signer)

    def encode_many(
        self, values: Sequence[Any], keys: Sequence[str], keep_keys: Sequence[int] = ()
    ) -> list[Record]:
        """Return the signed records of `values` under `keys`, as `Codec.encode_many`."""
        keep, signer = frozenset(keep_keys), self.signer
        if self._picklers.Pickler is not Pickler:  # Codec._encode_many would call this class's encode
            return [self.encode(v, k, i in keep) for i, (v, k) in enumerate(zip(values, keys, strict=True))]
        records = self._encode_many(values, keys)
        return [_signed(r, k, i in keep, signer) for i, (r, k) in enumerate(zip(records, keys, strict=True))]

    def intact(self, record: bytes, key: str) -> bool:
        """Whether the MAC of `record` matches `key` and its bytes, and its sections are all known.

        As in `decode`, the CRC is not consulted: a matching MAC proves every
        byte it covers intact, and only the CRC is outside it.
        """
        if not self._mac_matches(record, key):
            return False
        sections = _sections(record)
        return sections is not None and sections.keys() <= _KNOWN_SECTIONS

    def _mac_matches(self, record: bytes, key: str) -> bool:
        if len(record) < _MAC_START or record[-_MAC_TAIL : -_MAC_TAIL + _SECTION_END] != _MAC_END:
            return False
        try:
            whole = str.encode(key)
        except UnicodeEncodeError:  # a key read from damaged bytes: no record can be signed for it
            return False
        tail = bytes(record[-_MAC_TAIL : -TRAILER_SIZE + 1])  # bytes: the record may be a view
        mac = _record_mac(self.signer, whole, tail, record[:-_MAC_START])
        return hmac.compare_digest(mac, record[-_MAC_START:-_MAC_TAIL])

    def _decode_checked(self, record: bytes, key: str, mapping: Any = None) -> Any:
        """`decode` for records off its fast path: long keys, other sections, and refusals (raised)."""
        if self._mac_matches(record, key):
            sections = _sections(record)
            if sections is None or not sections.keys() <= _SIGNED_ONLY or self._serializer is not None:
                # Other features' sections, or a serializer's bytes to slice out: the plain
                # path reads them (or says it cannot).
                return super()._decode_checked(record, key, mapping)
            try:
                return self.load(record)
            except Exception as exc:
                add_key_note(exc, key)
                raise
        if len(record) <= TRAILER_SIZE or crc32(record) != CRC_RESIDUE:
            raise bad_record(record, key)  # damaged
        if (
            len(record) < _MAC_START
            or record[-TRAILER_SIZE] != KIND_SECTIONS
            or record[-_MAC_TAIL + _SECTION_END - 1] != SECTION_MAC
        ):
            raise SignatureError(
                f"the value of key {key!r} holds no signature, so it was not written with this "
                "store's secret (but by objstore without secret=, an older objstore, or another "
                "program); it was not loaded: delete it, or overwrite it through a shelf opened "
                "with the secret",
                key,
            )
        raise SignatureError(
            f"the signature of the value of key {key!r} does not match: the record was written "
            "with another secret, moved here from another key or store, or altered; it was not "
            "loaded: delete it, or overwrite it through a shelf opened with the secret",
            key,
        )


def _record_mac(signer: Signer, key: bytes, tail: bytes, *before: Record) -> bytes:
    """The MAC of a record: `before` are its bytes before the MAC, `tail` those after it but the CRC.

    The message is `before`, `tail`, ``0xff`` and the key's UTF-8 `key` (see
    the module docstring); `_signed_decoder` writes this out for speed.
    """
    return signer.mac(*before, tail + _KEY_MARK + key)


def _signed(record: Record, key: str, keep_key: bool, signer: Signer) -> Record:
    """`record` made a signed record: kind 2, its sections, a key section if `keep_key`, then its MAC.

    The MAC is always the last section: other features' sections, already in
    `record` (of kind 2), stay before it, and are read once it matched.
    """
    whole = str.encode(key)
    count = 1 + keep_key
    if record[-TRAILER_SIZE] == KIND_SECTIONS:
        count += record[-TRAILER_SIZE - 1]
        body = record[: -TRAILER_SIZE - 1]
    else:
        body = record[:-TRAILER_SIZE]
    sections = whole + _section_end(len(whole), SECTION_KEY) if keep_key else b""
    tail = _MAC_END + bytes((count, KIND_SECTIONS))
    parts = (body, sections, _record_mac(signer, whole, tail, body, sections), tail)
    if len(body) < LARGE:
        signed = b"".join(parts)
        crc: int = crc32(signed)  # typed here: without isal installed, mypy sees crc32 as Any
        return signed + crc.to_bytes(4, "little")
    # A large value is copied once, into a buffer LMDB is handed a view of (as in encode).
    buffer = io.BytesIO()
    for part in parts:
        buffer.write(part)
    with buffer.getbuffer() as written:
        crc = crc32(written)
    buffer.write(crc.to_bytes(4, "little"))
    return buffer.getbuffer()


def _signed_decoder(
    load: Callable[[bytes], Any],
    signer: Signer,
    checked: Callable[[bytes, str, Any], Any],
    unpicklers: Any,
    stock: Any,
    mapping: Any,
) -> Callable[[bytes, str], Any]:
    """The `SignedCodec.decode` of a codec that loads with `load`: one call per read.

    A record of a short key with a MAC only (nearly every record) is loaded
    in place once its MAC matches; no CRC is computed, as a matching MAC
    proves the bytes it covers intact. Any other record goes to `checked`,
    which loads a long key's record or raises the error that says what is
    wrong. Everything is bound as a default, so it reads only local variables.
    `load` is used while ``unpicklers.Unpickler is stock``, as in `_decoder`.
    `mapping` is passed on to `checked`: what the references of a record bind to.
    """

    def decode(
        record: bytes,
        key: str,
        keyed: Any = signer.keyed,
        tail: bytes = _SIGNED_TAIL,
        head: bytes = _SIGNED_HEAD,
        encode: Callable[[str], bytes] = str.encode,
        equal: Callable[[bytes, bytes], bool] = hmac.compare_digest,
        load: Callable[[bytes], Any] = load,
        checked: Callable[[bytes, str, Any], Any] = checked,
        unpicklers: Any = unpicklers,
        stock: Any = stock,
        mapping: Any = mapping,
        mac_end: int = -_MAC_TAIL,
        crc_at: int = 1 - TRAILER_SIZE,
        mac_at: int = -_MAC_START,
    ) -> Any:
        if record[mac_end:crc_at] == tail:  # the MAC's length and tag, the section count, the kind
            try:
                whole = encode(key)
            except UnicodeEncodeError:  # a key read from damaged bytes: checked names them
                return checked(record, key, mapping)
            state = keyed.copy()  # _record_mac, written out
            state.update(record[:mac_at])
            state.update(head + whole)
            if equal(state.digest(), record[mac_at:mac_end]) and unpicklers.Unpickler is stock:
                try:
                    return load(record)
                except Exception as exc:
                    add_key_note(exc, key)
                    raise
        return checked(record, key, mapping)

    return decode


def _decoder(
    load: Callable[[bytes], Any],
    checked: Callable[[bytes, str, Any], Any],
    unpicklers: Any,
    stock: Any,
    mapping: Any,
) -> Callable[[bytes, str], Any]:
    """The `Codec.decode` of a codec that loads with `load`: one call per read.

    An intact kind 1 record (nearly every record) is checked with one CRC call
    and loaded in place; any other record goes to `checked`, which loads
    another kind or raises the error that says what is wrong. Everything the
    fast path needs is bound as a default, so it reads only local variables.
    `load` is used while ``unpicklers.Unpickler is stock`` (always, for a
    codec given its class); otherwise `checked` loads with the class of the moment.
    `mapping` is passed on to `checked`: what the references of a record bind to.
    """

    def decode(
        record: bytes,
        key: str,
        crc32: Callable[[bytes], int] = crc32,
        residue: int = CRC_RESIDUE,
        kind_at: int = -TRAILER_SIZE,
        kind: int = KIND_PICKLE,
        load: Callable[[bytes], Any] = load,
        checked: Callable[[bytes, str, Any], Any] = checked,
        unpicklers: Any = unpicklers,
        stock: Any = stock,
        mapping: Any = mapping,
    ) -> Any:
        try:
            # The kind first: a record with large out-of-band buffers must not pay a CRC-32 over them.
            if record[kind_at] == kind and crc32(record) == residue and unpicklers.Unpickler is stock:
                return load(record)
        except IndexError:  # four bytes or fewer can pass the CRC but hold no trailer
            pass
        except Exception as exc:
            add_key_note(exc, key)  # on the first error: loading again would rerun its side effects
            raise
        return checked(record, key, mapping)

    return decode


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


def _sliced(deserializer: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    """A loader of kind 1 records for `deserializer`: it gets the bytes before the trailer."""

    def load(record: bytes, deserializer: Callable[[bytes], Any] = deserializer) -> Any:
        return deserializer(bytes(record[:-TRAILER_SIZE]))  # bytes: the record may be a view of the map

    return load


def _check_serializer(serializer: Any, deserializer: Any, pickler: Any, unpickler: Any) -> None:
    """Refuse a half serializer pair, or one given with pickler classes (TypeError)."""
    if (serializer is None) != (deserializer is None):
        raise TypeError(
            "serializer and deserializer must be given together (as in shelve): "
            "deserializer(serializer(obj, protocol)) must return an equal object"
        )
    if serializer is None:
        return
    if pickler is not None or unpickler is not None:
        raise TypeError(
            "give either serializer=/deserializer= or pickler=/unpickler=, not both: "
            "a serializer replaces pickling"
        )
    if not (callable(serializer) and callable(deserializer)):
        raise TypeError("serializer and deserializer must be callables")


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
