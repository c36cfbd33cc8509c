"""Pickler, Unpickler and the codec that turns values into records and back.

`Pickler` and `Unpickler` are subclasses of pickle's C classes with the same
constructor signatures and the same default behaviour, so code written for
``pickle.Pickler``/``pickle.Unpickler`` works with them. They are the place to
customise serialisation (``reducer_override``, ``dispatch_table``,
``persistent_id``/``persistent_load``, ``find_class``): pass your subclasses to
`objstore.open` as ``pickler=``/``unpickler=``.

`Codec` turns a store's values into records and records into values, with
the features each record may carry (out-of-band buffers, compression,
references, a serializer's bytes); the record layout itself is `_records`'s,
and signed stores use `_signed.SignedCodec`. It knows nothing of LMDB or of
keys on disk: the storage layer only ever sees the bytes made here.

Without ``pickler=``/``unpickler=`` (or a serializer), a codec pickles and
loads through whatever classes ``objstore.Pickler`` and ``objstore.Unpickler``
are at the moment of each call, as ``shelve`` does with its module's
``Pickler``/``Unpickler`` up to Python 3.14: code may swap them (dill's
Pickler, an Unpickler that renames classes) on shelves already open. The check
is one attribute read per value; with the stock classes the fast paths stay.

Unpickling runs code named by the data. Only open stores whose writers you
trust, or restrict what can be loaded with an `Unpickler` whose
``find_class`` allows only the classes you expect (``open(..., allow=...)``
does so: see `_restrict` and docs/security.md).
"""

from __future__ import annotations

import io
import pickle
import sys
from collections.abc import Callable, Sequence
from itertools import count
from types import SimpleNamespace
from typing import Any

from . import _buffers
from ._compress import DEFAULT_COMPRESS_ABOVE, compressor, decompress
from ._errors import ForbiddenGlobalError
from ._records import (
    _KIND_BYTE,
    _KNOWN_SECTIONS,
    _SECTION_END,
    CRC_RESIDUE,
    KIND_PICKLE,
    KIND_SECTIONS,
    SECTION_COMPRESSION,
    SECTION_KEY,
    SECTION_REFS,
    TRAILER_SIZE,
    Record,
    _add_section,
    _body,
    _damaged,
    _keep_key,
    _kind_of,
    _section_end,
    _trailer,
    bad_record,
    crc32,
    is_intact,
)
from ._refs import RefFound, dump_with_refs, load_with_refs, resolver

__all__ = [
    "LARGE",
    "Codec",
    "Pickler",
    "Unpickler",
    "add_key_note",
    "dumps",
    "loads",
]

# The sections of a record `Codec.take` takes apart (a long key's record stays whole: its key is read there).
_TAKEN_SECTIONS = _KNOWN_SECTIONS - {SECTION_KEY}
LARGE = 1 << 16  # values at least this big (by sys.getsizeof) are pickled into a buffer
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
            buffer = _buffers.Sink()
            if self._serializer is not None:
                buffer.write(self._serializer(value, self.protocol))
            else:
                self._picklers.Pickler(buffer, self.protocol).dump(value)
        if len(buffer) > self._compress_above:
            compressed = self._compressed(buffer)
            if compressed is not None:
                return compressed
        buffer += _KIND_BYTE
        buffer += crc32(buffer).to_bytes(4, "little")
        return memoryview(buffer)

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
