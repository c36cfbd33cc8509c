"""Shelf: a persistent, dict-like mapping of ``str`` keys to picklable values.

    with objstore.open("state") as db:      # a directory; created if missing
        db["config"] = {"retries": 3}       # pickled and committed durably
        config = db["config"]               # unpickled: a new copy each time

The trap, as in ``shelve``: a value read from the shelf is a *copy*, so
``db["list"].append(1)`` changes nothing on disk. Store it back
(``x = db["list"]; x.append(1); db["list"] = x``), or, better, change it in
place atomically, across threads and processes::

    with db.edit("list") as x:              # one write transaction
        x.append(1)
    db.modify("counter", lambda n: n + 1, default=0)

``writeback=True`` works as in ``shelve`` (accessed entries are cached and
written back by ``sync()``/``close()``), but writes back in one transaction
and only the entries whose pickle changed.

Keys are encoded as UTF-8 and kept in sorted (code point) order, which the
range methods (``iterkeys``, ``iteritems``, ``first``, ``last``) expose. Keys
of any length are accepted: one longer than LMDB's 511-byte limit is stored
under its first 494 bytes, a marker and a hash, its record keeping the whole
key (docs/format.md says where such keys sort). Only writes refuse a key that
cannot be one (empty, not valid Unicode); lookups answer "absent".
"""

from __future__ import annotations

import atexit
import functools
import os
import sys
import threading
import warnings
import weakref
from collections.abc import (
    Callable,
    ItemsView,
    Iterable,
    Iterator,
    KeysView,
    Mapping,
    MutableMapping,
    Sequence,
    ValuesView,
)
from contextlib import AbstractContextManager, contextmanager
from functools import partial
from hashlib import blake2b
from itertools import chain
from operator import itemgetter
from typing import Any, NoReturn, TypeVar

from ._errors import ClosedError, ConflictError, CorruptError, ReadOnlyError, UnsupportedFormatError
from ._serialize import (
    CRC_IMPLEMENTATION,
    CRC_RESIDUE,
    KIND_PICKLE,
    TRAILER_SIZE,
    Codec,
    Pickler,
    Record,
    Unpickler,
    _add_note,
    add_key_note,
    crc32,
    is_intact,
    record_key,
)
from ._storage import (
    BATCH_BYTES,
    BATCH_ITEMS,
    DEFAULT_MAP_SIZE,
    MAX_KEY_SIZE,
    Chunk,
    Options,
    ReadTxn,
    Storage,
    closing_at_exit,
    open_store,
)

__all__ = ["Shelf", "Snapshot", "Transaction", "open"]

VALUE_FORMAT = 1
KEY_ENCODING = "utf-8"
_MISSING: Any = object()
_CHUNK = 4096  # pairs pickled at a time by a bulk write
_MODIFY_ATTEMPTS = 16
_V = TypeVar("_V")

# ------------------------------------------------------------------- keys


# Keys of at most MAX_KEY_SIZE bytes of UTF-8 are their own LMDB key. A longer
# key is stored under its first _LONG_PREFIX bytes, the marker 0xfe (never in
# UTF-8, and below the 0xff of prefix bounds) and a hash of the whole key; its
# record keeps the whole key (see docs/format.md).
_DIGEST_SIZE = 16
_LONG_PREFIX = MAX_KEY_SIZE - 1 - _DIGEST_SIZE  # 494: a stored long key is MAX_KEY_SIZE bytes
_MARKER = 0xFE
_MARKER_BYTE = bytes((_MARKER,))


def _digest(encoded: bytes) -> bytes:
    """The hash of a whole long key, part of its LMDB key."""
    return blake2b(encoded, digest_size=_DIGEST_SIZE).digest()


def _long_form(encoded: bytes) -> bytes:
    """The LMDB key of the key whose UTF-8 is `encoded`, longer than MAX_KEY_SIZE bytes."""
    return encoded[:_LONG_PREFIX] + _MARKER_BYTE + _digest(encoded)


def _is_long_form(raw: bytes) -> bool:
    """Whether the LMDB key `raw` stands for a long key (whose record holds the whole key)."""
    return len(raw) == MAX_KEY_SIZE and raw[_LONG_PREFIX] == _MARKER


def _utf8(key: object) -> bytes:
    """The UTF-8 of a key to store, or the error that says why it cannot be one."""
    if not isinstance(key, str):
        raise TypeError(f"objstore keys must be str, not {type(key).__name__}")
    try:
        # str.encode, never the key's own encode(): a str subclass must not choose its bytes.
        encoded = str.encode(key)
    except UnicodeEncodeError as exc:
        raise ValueError(
            f"key {key!r} cannot be encoded as UTF-8 ({exc.reason}); objstore keys must be valid text"
        ) from None
    if not encoded:
        raise ValueError("the empty string cannot be a key: objstore keys are at least one character")
    return encoded


def encode_key(key: str) -> bytes:
    """Return the LMDB key under which `key` is stored, or raise the error that says why it cannot be one."""
    if type(key) is str:  # the common case, without a second frame (the write hot path)
        try:
            encoded = key.encode()  # an exact str: its encode is str.encode
        except UnicodeEncodeError:
            encoded = b""
        if 0 < len(encoded) <= MAX_KEY_SIZE:
            return encoded
    encoded = _utf8(key)
    return encoded if len(encoded) <= MAX_KEY_SIZE else _long_form(encoded)


def lookup_key(key: object) -> bytes | None:
    """The UTF-8 of `key` to look it up; None if no stored key can be it; `TypeError` if not a str."""
    if not isinstance(key, str):
        raise TypeError(f"objstore keys must be str, not {type(key).__name__}")
    try:
        return str.encode(key) or None
    except UnicodeEncodeError:
        return None  # a lone surrogate: never stored, so absent


def _chunks(
    encoded: list[bytes], keys: list[str], values: list[Any], codec: Codec, long: list[int]
) -> Iterator[Chunk]:
    """The pairs of a bulk write as chunks for `Storage.put_many`, pickled one chunk at a time.

    `long` lists the positions of the long keys, whose records keep the whole key.
    """
    for i in range(0, len(keys), _CHUNK):
        part = slice(i, i + _CHUNK)
        keep = [j - i for j in long if i <= j < i + _CHUNK]
        yield encoded[part], partial(codec.encode_many, values[part], keys[part], keep)


def encode_keys(keys: list[str]) -> list[bytes]:
    """`encode_key` over a list, with the checks made once for the whole list."""
    try:
        encoded = list(map(str.encode, keys))
    except (TypeError, UnicodeEncodeError):
        encoded = []
    if len(encoded) != len(keys) or (
        keys and (min(map(len, encoded)) == 0 or max(map(len, encoded)) > MAX_KEY_SIZE)
    ):
        return [encode_key(key) for key in keys]  # raises for the first bad key
    return encoded


def _long_positions(encoded: list[bytes]) -> list[int]:
    """The positions of the long keys in a list made by `encode_keys`."""
    if not encoded or max(map(len, encoded)) < MAX_KEY_SIZE:
        return []
    return [i for i, raw in enumerate(encoded) if _is_long_form(raw)]


def _is_utf8(raw: bytes) -> bool:
    try:
        raw.decode()
    except UnicodeDecodeError:
        return False
    return True


def undecodable_key(raw: bytes) -> str:
    """How an entry whose key cannot be read is named: its stored bytes, with lone surrogates.

    No real key contains a lone surrogate, so the name cannot be mistaken for
    one (and a lookup of it answers "absent").
    """
    return raw.decode("utf-8", "surrogateescape")


def _own_record(record: bytes | None, encoded: bytes, key: str) -> bytes | None:
    """`record`, found under the LMDB key of the long key `encoded`, if it is that key's.

    An intact record holding another key (their hashes collide) is not this
    key's: None. A damaged record is returned, for decoding to report it.
    """
    if record is None or record_key(record) == encoded or not is_intact(record):
        return record
    return None


def _bound(value: str | None, name: str) -> bytes | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise TypeError(f"{name} must be str or None, not {type(value).__name__}")
    # surrogatepass keeps code point order for bounds that are not valid text.
    return str.encode(value, "utf-8", "surrogatepass")


def _bounds(
    prefix: str | None, start: str | None, stop: str | None
) -> tuple[bytes | None, bytes | None, Callable[[str], bool] | None]:
    """The LMDB key range [lo, hi) of keys that start with `prefix` and lie in [`start`, `stop`).

    The range is exact for bounds of at most _LONG_PREFIX bytes of UTF-8.
    Longer bounds cut into the first bytes of long keys, which is all their
    LMDB keys keep of them: the range is then widened to every key sharing the
    bound's first _LONG_PREFIX bytes, and the third item is the test the keys
    found must pass (else None).
    """
    lo = _bound(start, "start")
    hi = _bound(stop, "stop")
    p = _bound(prefix, "prefix")
    exact = True
    if lo is not None and len(lo) > _LONG_PREFIX:
        lo, exact = lo[:_LONG_PREFIX], False
    if hi is not None and len(hi) > _LONG_PREFIX:
        hi, exact = hi[:_LONG_PREFIX] + b"\xff", False
    if p:
        if len(p) > _LONG_PREFIX:
            p, exact = p[:_LONG_PREFIX], False
        # No UTF-8 byte is 0xff, nor is the long key marker 0xfe: exactly the
        # LMDB keys starting with p lie in [p, p + b"\xff").
        lo = p if lo is None else max(lo, p)
        end = p + b"\xff"
        hi = end if hi is None else min(hi, end)
    if exact:
        return lo, hi, None

    def within(key: str) -> bool:
        return (
            (prefix is None or key.startswith(prefix))
            and (start is None or key >= start)
            and (stop is None or key < stop)
        )

    return lo, hi, within


def _check_slot(txn: Any, stored: bytes, key: str) -> None:
    """Refuse to store the long `key` under `stored` if another key's intact record is there."""
    existing = txn.get(stored)
    if existing is not None and is_intact(existing) and record_key(existing) != str.encode(key):
        raise ValueError(
            f"cannot store key {key[:60]!r}... ({len(str.encode(key))} bytes): its hash collides with "
            "that of another long key in the store; nothing was stored. Change the key (e.g. add a "
            "suffix)"
        )


class _Closed:
    """Stands in for the storage of a closed mapping: every use raises `ClosedError`."""

    def __init__(self, what: str) -> None:
        self._what = what

    def __getattr__(self, name: str) -> NoReturn:
        raise ClosedError(f"the {self._what} is closed")

    def closed_get(self, key: bytes = b"") -> NoReturn:
        """Stands in for the bound `get` of the hot path."""
        raise ClosedError(f"the {self._what} is closed")


# ----------------------------------------------------------------- views


class _KeysView(KeysView[str]):
    __slots__ = ()


class _ValuesView(ValuesView[Any]):
    __slots__ = ()

    def __iter__(self) -> Iterator[Any]:
        return self._mapping.itervalues()  # type: ignore[attr-defined, no-any-return]


class _ItemsView(ItemsView[str, Any]):
    __slots__ = ()

    def __iter__(self) -> Iterator[tuple[str, Any]]:
        return self._mapping.iteritems()  # type: ignore[attr-defined, no-any-return]


# --------------------------------------------------------------- mappings


class _Reader(Mapping[str, Any]):
    """The read side of the dict face, over any storage source (store, snapshot, transaction)."""

    _source: Any
    _codec: Codec

    def __init__(self, source: Storage | ReadTxn, codec: Codec) -> None:
        self._bind(source)
        self._codec = codec
        self._decode = codec.decode
        self._load = codec.load

    def _bind(self, source: Storage | ReadTxn | _Closed) -> None:
        self._source = source
        self._get: Callable[[bytes], bytes | None]
        if isinstance(source, _Closed):
            self._get = source.closed_get
            # Empty the batches that running iterators are walking, so their
            # next step reads the next batch and meets the closed source.
            for batch in list(self._live_batches.values()):
                batch.clear()
        else:
            self._get = source.get
            self._live_batches: dict[int, list[Any]] = {}

    def _value(self, key: str, record: bytes) -> Any:
        return self._decode(record, key)

    def __getitem__(self, key: str) -> Any:
        # The hot path: lookup_key's checks written out for the common case.
        if type(key) is str:
            try:
                encoded = key.encode()
            except UnicodeEncodeError:
                raise KeyError(key) from None
            if not 0 < len(encoded) <= MAX_KEY_SIZE:
                return self._getitem(key)
        else:
            return self._getitem(key)
        record = self._get(encoded)
        if record is None:
            raise KeyError(key)
        # Codec.decode's fast path, inlined: a frame is a tenth of a small read.
        try:
            if crc32(record) == CRC_RESIDUE and record[-TRAILER_SIZE] == KIND_PICKLE:
                return self._load(record)
        except IndexError:
            pass
        except Exception as exc:
            add_key_note(exc, key)  # on the first error: loading again would rerun its side effects
            raise
        return self._decode(record, key)

    def _getitem(self, key: str) -> Any:
        record = self._lookup(key)
        if record is None:
            raise KeyError(key)
        return self._value(key, record)

    def _lookup(self, key: str) -> bytes | None:
        """The record of `key`; None if absent or if `key` cannot be a key (empty, not UTF-8)."""
        encoded = lookup_key(key)
        if encoded is None:
            return None
        if len(encoded) <= MAX_KEY_SIZE:
            return self._get(encoded)
        return _own_record(self._get(_long_form(encoded)), encoded, key)

    def get(self, key: str, default: Any = None) -> Any:
        """Return the value of `key`, or `default` if it is not in the store."""
        record = self._lookup(key)
        if record is None:
            return default
        return self._value(key, record)

    def __contains__(self, key: object) -> bool:
        encoded = lookup_key(key)
        if encoded is None:
            return False
        if len(encoded) <= MAX_KEY_SIZE:
            return bool(self._source.contains(encoded))
        return self._lookup(key) is not None  # type: ignore[arg-type]

    def __len__(self) -> int:
        return int(self._source.count())

    def __iter__(self) -> Iterator[str]:
        return self.iterkeys()

    def keys(self) -> KeysView[str]:
        """A view of the keys, in sorted order."""
        return _KeysView(self)

    def values(self) -> ValuesView[Any]:
        """A view of the values, in key order."""
        return _ValuesView(self)

    def items(self) -> ItemsView[str, Any]:
        """A view of the (key, value) pairs, in key order."""
        return _ItemsView(self)

    # -- ordered access

    def _batches(
        self, lo: bytes | None, hi: bytes | None, reverse: bool, values: bool
    ) -> Iterator[list[Any]]:
        """Batches of keys (or of (key, record) pairs) of [lo, hi), in order.

        Each batch is read in its own short transaction and the next resumes
        after its last key: no transaction stays open while the caller's loop
        runs. Batches of records are sized to hold about BATCH_BYTES.
        """
        after = None
        limit = BATCH_ITEMS if not values else 16
        live, token = self._live_batches, object()
        try:
            while True:
                batch = self._source.batch(lo, hi, reverse, values, after, limit)
                live[id(token)] = batch
                # Read before the caller resumes: another thread's close() empties the batch.
                full = len(batch) >= limit
                if full and values:
                    size = sum(map(len, map(itemgetter(1), batch)))
                    limit = max(1, min(BATCH_ITEMS, BATCH_BYTES * len(batch) // max(size, 1)))
                    after = batch[-1][0]
                elif full:
                    after = batch[-1]
                if batch:
                    yield batch
                if isinstance(self._source, _Closed):
                    self._source.closed_get()  # closed while iterating: raises ClosedError
                if not full:
                    return
        finally:
            live.pop(id(token), None)

    def _key_of(self, raw: bytes, record: bytes | None) -> str | None:
        """The key stored as `raw`, which is not UTF-8: a long key, or damage (`CorruptError`).

        `record` is its record, or None to read it: then a key deleted since
        `raw` was read gives None.
        """
        if not _is_long_form(raw):
            raise CorruptError(
                f"the key stored as {raw!r} is damaged (it is not valid UTF-8); the other keys are "
                f"unaffected: `python -m objstore check {self._source.path}` lists every damaged "
                "entry. Restore the store from a backup, or copy the other keys to a new store",
                undecodable_key(raw),
            )
        if record is None:
            record = self._get(raw)
            if record is None:
                return None
        encoded = record_key(record)
        if encoded is not None and _long_form(encoded) == raw:
            try:
                return encoded.decode()
            except UnicodeDecodeError:
                pass
        raise CorruptError(
            f"the record of the long key stored as {raw!r} is damaged, and with it the key; the other "
            f"keys are unaffected: `python -m objstore check {self._source.path}` lists every damaged "
            "entry. Restore the store from a backup, or copy the other keys to a new store",
            undecodable_key(raw),
        )

    def _keys(self, batch: list[bytes], check: Callable[[str], bool] | None) -> Iterator[str]:
        """The keys of a batch of LMDB keys that are not all UTF-8, or that must pass `check`."""
        for raw in batch:
            try:
                key: str | None = raw.decode()
            except UnicodeDecodeError:
                key = self._key_of(raw, None)
                if key is None:
                    continue  # deleted since the batch was read
            if check is None or check(key):  # type: ignore[arg-type]
                yield key  # type: ignore[misc]

    def _records(
        self, prefix: str | None, start: str | None, stop: str | None, reverse: bool
    ) -> Iterator[tuple[str, bytes]]:
        lo, hi, check = _bounds(prefix, start, stop)
        for batch in self._batches(lo, hi, reverse, values=True):
            for raw_key, record in batch:
                try:
                    key = raw_key.decode()
                except UnicodeDecodeError:
                    key = self._key_of(raw_key, record)
                if check is None or check(key):
                    yield key, record

    def iterkeys(
        self,
        prefix: str | None = None,
        *,
        start: str | None = None,
        stop: str | None = None,
        reverse: bool = False,
    ) -> Iterator[str]:
        """Iterate over keys in sorted order: those starting with `prefix` and in [`start`, `stop`).

        Every bound is optional. ``reverse=True`` iterates from the highest key
        down. Keys are read in batches of up to 1024, each in its own short
        transaction, the next one when the current one runs out: a change made
        while iterating shows only if it falls after the batch in hand, so an
        iteration that fits in one batch sees none. For a frozen view, iterate
        inside `snapshot()`.
        """
        lo, hi, check = _bounds(prefix, start, stop)
        decode = bytes.decode
        for batch in self._batches(lo, hi, reverse, values=False):
            if check is not None:
                yield from self._keys(batch, check)
                continue
            try:
                yield from map(decode, batch)
            except UnicodeDecodeError:
                # A long key (or damage): map stopped at the first key that is
                # not UTF-8, and every key before it was yielded.
                done = 0
                for done, raw in enumerate(batch):  # noqa: B007
                    if not _is_utf8(raw):
                        break
                yield from self._keys(batch[done:], None)

    def iteritems(
        self,
        prefix: str | None = None,
        *,
        start: str | None = None,
        stop: str | None = None,
        reverse: bool = False,
    ) -> Iterator[tuple[str, Any]]:
        """Iterate over (key, value) pairs in key order; the bounds are those of `iterkeys`."""
        lo, hi, check = _bounds(prefix, start, stop)
        load, decode = self._load, self._decode
        for batch in self._batches(lo, hi, reverse, values=True):
            for raw_key, record in batch:
                try:
                    key = raw_key.decode()
                except UnicodeDecodeError:
                    key = self._key_of(raw_key, record)
                if check is not None and not check(key):
                    continue
                # Codec.decode's fast path, inlined as in __getitem__.
                try:
                    if crc32(record) == CRC_RESIDUE and record[-TRAILER_SIZE] == KIND_PICKLE:
                        value = load(record)
                    else:
                        value = _MISSING
                except IndexError:
                    value = _MISSING
                except Exception as exc:
                    add_key_note(exc, key)  # on the first error, as in __getitem__
                    raise
                if value is _MISSING:
                    value = decode(record, key)  # another kind, or the error that says what is wrong
                yield key, value

    def itervalues(
        self,
        prefix: str | None = None,
        *,
        start: str | None = None,
        stop: str | None = None,
        reverse: bool = False,
    ) -> Iterator[Any]:
        """Iterate over values in key order; the bounds are those of `iterkeys`."""
        return map(itemgetter(1), self.iteritems(prefix, start=start, stop=stop, reverse=reverse))

    def verify(self) -> list[str]:
        """Check the integrity of every entry; return the keys whose records are damaged.

        Reads the whole store in batches without unpickling anything. An entry
        whose key itself is damaged (its stored bytes are not UTF-8, or a long
        key's record that holds it is damaged) is reported as its stored bytes
        decoded with ``surrogateescape``: a str with lone surrogates, which no
        real key can be (``key.encode("utf-8", "surrogateescape")`` gives the bytes back).
        """
        damaged = []
        for batch in self._batches(None, None, False, values=True):
            for raw_key, record in batch:
                try:
                    key = raw_key.decode()
                except UnicodeDecodeError:
                    try:
                        key = self._key_of(raw_key, record)
                    except CorruptError:
                        damaged.append(undecodable_key(raw_key))
                        continue
                if not is_intact(record):
                    damaged.append(key)
        return damaged

    def _end(self, prefix: str | None, last: bool) -> tuple[str, Any]:
        lo, hi, check = _bounds(prefix, None, None)
        if check is None:
            batch = self._source.batch(lo, hi, last, True, None, 1)
            found = None
            if batch:
                raw, record = batch[0]
                try:
                    found = raw.decode(), record
                except UnicodeDecodeError:
                    found = self._key_of(raw, record), record
        else:
            found = next(self._records(prefix, None, None, last), None)
        if found is None:
            raise KeyError("the store is empty" if not prefix else f"no key starts with {prefix!r}")
        return found[0], self._value(*found)

    def first(self, prefix: str | None = None) -> tuple[str, Any]:
        """Return the (key, value) pair with the lowest key (starting with `prefix`); `KeyError` if none."""
        return self._end(prefix, last=False)

    def last(self, prefix: str | None = None) -> tuple[str, Any]:
        """Return the (key, value) pair with the highest key (starting with `prefix`); `KeyError` if none."""
        return self._end(prefix, last=True)


class _Writer(_Reader, MutableMapping[str, Any]):
    """The write side of the dict face, over a store or a write transaction."""

    # The writeback cache of a shelf opened with writeback=True; None otherwise.
    _cache: _WritebackCache | None = None

    def _owns_transactions(self) -> bool:
        """Whether a transaction this mapping opens is a whole transaction, not a savepoint."""
        return False

    def _check_writable(self) -> None:
        if self._source.readonly:
            raise ReadOnlyError(
                f"cannot write: the store {self._source.path!r} was opened read-only (flag 'r')"
            )

    def __setitem__(self, key: str, value: Any) -> None:
        if self._source.readonly:
            self._check_writable()
        encoded = encode_key(key)
        if len(encoded) == MAX_KEY_SIZE and _is_long_form(encoded):
            self._put_long(key, encoded, self._codec.encode(value, key, keep_key=True))
            return
        self._source.put(encoded, self._codec.encode(value, key))

    def _put_long(self, key: str, stored: bytes, record: Record) -> None:
        """Store the record of a long key, unless another key's record holds its LMDB key."""
        with self._source.write() as txn:
            _check_slot(txn, stored, key)
            txn.put(stored, record)

    def _stored(self, key: str) -> tuple[bytes, bytes] | None:
        """(UTF-8, LMDB key) of `key` to find or remove it; None if it cannot be a key."""
        encoded = lookup_key(key)
        if encoded is None:
            return None
        return encoded, (encoded if len(encoded) <= MAX_KEY_SIZE else _long_form(encoded))

    def __delitem__(self, key: str) -> None:
        self._check_writable()
        found = self._stored(key)
        if found is None:
            raise KeyError(key)
        encoded, stored = found
        if encoded is stored:
            if not self._source.delete(stored):
                raise KeyError(key)
            return
        with self._source.write() as txn:
            if _own_record(txn.get(stored), encoded, key) is None:
                raise KeyError(key)
            txn.delete(stored)

    def pop(self, key: str, default: Any = _MISSING) -> Any:
        """Remove `key` and return its value, atomically; `default` (or `KeyError`) if absent."""
        found = self._stored(key)
        if found is None or (self._source.readonly and key not in self):
            if default is _MISSING:
                raise KeyError(key)
            return default  # nothing to remove: fine on a read-only store, as in shelve
        encoded, stored = found
        self._check_writable()
        with self._source.write() as txn:
            record = txn.get(stored)
            if encoded is not stored:
                record = _own_record(record, encoded, key)
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
        encoded = encode_key(key)
        if len(encoded) == MAX_KEY_SIZE and _is_long_form(encoded):
            self._check_writable()
            with self._source.write() as txn:
                record = _own_record(txn.get(encoded), str.encode(key), key)
                if record is None:
                    _check_slot(txn, encoded, key)
                    txn.put(encoded, self._codec.encode(default, key, keep_key=True))
                    return default
            return self._value(key, record)
        record = self._get(encoded)
        if record is None:
            self._check_writable()
            # put_new stores only if the key is still absent, and says what is there if not.
            record = self._source.put_new(encoded, self._codec.encode(default, key))
            if record is None:
                return default
        return self._value(key, record)

    def update(self, other: Any = (), /, **kwds: Any) -> None:
        """Store every pair of `other` (a mapping or pairs) and `kwds`, in one transaction.

        If a key is invalid or a value fails to pickle, nothing is stored.
        Values are pickled a few thousand at a time as they are written, so
        memory does not grow with the size of the update.
        """
        keys, values = _pairs(other, kwds)
        if not keys:
            return
        self._check_writable()
        encoded = encode_keys(keys)
        self._put_many(keys, encoded, _chunks(encoded, keys, values, self._codec, _long_positions(encoded)))

    def _put_many(self, keys: list[str], encoded: list[bytes], chunks: Iterable[Chunk]) -> None:
        """Write `chunks` (of `keys`, stored as `encoded`), checking the LMDB keys of long keys first."""
        long = _long_positions(encoded)
        if not long:
            self._source.put_many(chunks)
            return
        with self._source.write() as txn:
            for i in long:
                _check_slot(txn, encoded[i], keys[i])
            txn.put_many(chunks)

    def clear(self) -> None:
        """Remove every key, in one transaction."""
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
        cache = self._cache
        written: list[bytes | None] = []
        try:
            self._check_writable()
            with self._source.write() as txn:
                mapping = Transaction(txn, self._codec)
                try:
                    yield mapping
                finally:
                    mapping._bind(_Closed("transaction"))
                    if cache is not None:
                        written = txn.written()
        finally:
            # After the commit (or rollback): dropped earlier, an entry could be
            # cached again from the store's old value by another thread.
            if cache is not None:
                cache.forget_written(written)

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
        encoded = encode_key(key)
        long = len(encoded) == MAX_KEY_SIZE and _is_long_form(encoded)
        with self.transaction() as txn:
            source = txn._source
            record = txn._lookup(key)
            if record is None:
                if default is _MISSING:
                    raise KeyError(key)
                if long:
                    _check_slot(source, encoded, key)
                value = default
            else:
                value = self._value(key, record)
            yield value
            new = self._codec.encode(value, key, keep_key=long)
            if new != record:
                source.put(encoded, new)


class Snapshot(_Reader):
    """A read-only mapping over one read transaction: a consistent view of the whole store.

    Made by `Shelf.snapshot`. Every read sees the store as it was when the
    snapshot began, whatever other threads and processes commit meanwhile.
    Close it (or leave its ``with`` block) promptly: while it is open, LMDB
    cannot reuse the pages it sees, and the data file grows.
    """

    def __init__(self, txn: ReadTxn, codec: Codec) -> None:
        super().__init__(txn, codec)
        self._txn: ReadTxn | None = txn

    def close(self) -> None:
        """End the snapshot; later use raises `ClosedError`. Idempotent."""
        txn, self._txn = self._txn, None
        self._bind(_Closed("snapshot"))
        if txn is not None:
            txn.end()

    def __enter__(self) -> Snapshot:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        # As files do: an unclosed snapshot pins a version of the store until
        # it is collected, so say so, and end it.
        txn = self.__dict__.get("_txn")
        if txn is not None:
            try:
                message = f"unclosed objstore snapshot of {txn.path!r}"
                warnings.warn(message, ResourceWarning, stacklevel=1, source=self)
            finally:
                self.close()

    def __repr__(self) -> str:
        state = "closed" if self._txn is None else "open"
        return f"<objstore.Snapshot {state}>"


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


# ------------------------------------------------------------------ shelf

# Keyed by id(): a mapping is unhashable, so it cannot sit in a WeakSet.
_open_shelves: weakref.WeakValueDictionary[int, Shelf] = weakref.WeakValueDictionary()


class Shelf(_Writer):
    """A persistent dict of ``str`` keys to picklable values, stored in LMDB.

    A complete ``MutableMapping`` that also offers what ``shelve`` lacks:
    `transaction`, `snapshot`, `modify`, `edit` and ordered access (`iterkeys`,
    `iteritems`, `itervalues`, `first`, `last`). Open one with `objstore.open`,
    which takes the same arguments as this constructor:

    path
        A directory holding one store (created, with its parents, if missing).
    flag
        ``"r"`` read-only, ``"w"`` read-write (both: the store must exist),
        ``"c"`` read-write, creating the store if missing (the default),
        ``"n"`` read-write, always starting empty (emptied in place).
    protocol
        Pickle protocol for writes; default ``pickle.HIGHEST_PROTOCOL``.
    writeback
        Cache the entries read or written and write them back on `Shelf.sync`
        and `Shelf.close`, as ``shelve`` does.
    durability
        ``"full"`` (default): a write that returned survives a power loss.
        ``"normal"``: a power loss may lose the last transactions, never
        corrupts. ``"off"``: no flush per commit (flushed by ``sync()`` and
        ``close()``); process crashes lose nothing, a power loss may lose
        recent writes and, on filesystems that reorder writes, damage the store.
    lock
        ``"shared"`` (default), or ``"exclusive"`` to be the only process
        with the store open: other openers wait up to `timeout`.
    timeout
        Seconds to wait for the store's file locks; ``None`` waits forever.
    map_size
        LMDB map size in bytes to reserve: address space, not disk (the data
        file grows only with the data). Default 64 GiB on 64-bit systems, so
        the map rarely has to grow; it grows by itself when full.
    pickler, unpickler
        Subclasses of ``pickle.Pickler``/``pickle.Unpickler`` to serialise
        through, e.g. with custom reducers or a restricted ``find_class``.
    allow_network_fs
        Open a store on a network filesystem (NFS, SMB, ...) anyway. LMDB's
        locking is not coherent there: only safe when one process on one
        host ever opens the store.
    mode
        Permission bits of the files a new store creates (default ``0o666``,
        filtered by the umask, as in ``dbm.open``); the directory gets them
        plus search where they grant read. ``0o660`` shares it with a group.
    """

    def __init__(
        self,
        path: str | bytes | os.PathLike[str] | os.PathLike[bytes],
        flag: str = "c",
        protocol: int | None = None,
        writeback: bool = False,
        *,
        durability: str = "full",
        lock: str = "shared",
        timeout: float | None = 10.0,
        map_size: int = DEFAULT_MAP_SIZE,
        pickler: type[Pickler] | type[Any] = Pickler,
        unpickler: type[Unpickler] | type[Any] = Unpickler,
        allow_network_fs: bool = False,
        mode: int = 0o666,
    ) -> None:
        if lock not in ("shared", "exclusive"):
            raise ValueError(f"lock must be 'shared' or 'exclusive', not {lock!r}")
        codec = Codec(protocol, pickler, unpickler)
        options = Options(
            durability=durability,
            map_size=map_size,
            exclusive=lock == "exclusive",
            timeout=timeout,
            allow_network_fs=allow_network_fs,
            mode=mode,
        )
        path_str = os.fsdecode(os.fspath(path))
        store = open_store(
            path_str,
            flag,
            options,
            {"key_encoding": KEY_ENCODING, "value_format": VALUE_FORMAT, "created_by": _created_by()},
            _check_settings,
        )
        super().__init__(store, codec)
        self._flag = flag
        self._writeback = bool(writeback)
        self._options = options
        self._path = store.path
        self._snapshots: weakref.WeakValueDictionary[int, Snapshot] = weakref.WeakValueDictionary()
        if self._writeback:
            self._cache = _WritebackCache()
            # Python looks special methods such as __getitem__ up on the type,
            # so the cached-entry methods come from a class mixed in right above
            # Shelf: a plain shelf's hot path stays free of any check, and a
            # subclass's own overrides still run first (and reach the cache
            # through super()).
            self.__class__ = _with_writeback(type(self))
        _open_shelves[id(self)] = self

    @property
    def path(self) -> str:
        """The absolute path of the store directory."""
        return self._path

    def _owns_transactions(self) -> bool:
        return not self._source.in_transaction()

    @property
    def closed(self) -> bool:
        """Whether `close` was called."""
        return isinstance(self._source, _Closed)

    def snapshot(self) -> Snapshot:
        """Return a read-only, consistent view of the whole store; use it in a ``with`` block.

        ::

            with db.snapshot() as snap:
                total = sum(snap[k]["amount"] for k in snap)
        """
        snap = Snapshot(self._source.read(), self._codec)
        self._snapshots[id(snap)] = snap
        return snap

    def sync(self) -> None:
        """Write back the writeback cache and flush committed data to disk, whatever the durability."""
        self._source.sync()

    def info(self) -> dict[str, Any]:
        """Facts about the store: settings it was created with, entries, sizes, readers."""
        return {**self._source.info(), "crc32": CRC_IMPLEMENTATION}

    def close(self) -> None:
        """Write back the cache, flush and release the store. Idempotent; later use raises `ClosedError`."""
        source = self._source
        if isinstance(source, _Closed):
            return
        try:
            self.sync()
        finally:
            self._bind(_Closed("shelf"))
            _open_shelves.pop(id(self), None)
            for snap in list(self._snapshots.values()):
                snap.close()
            source.close()

    def __enter__(self) -> Shelf:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        # As files do: warn that the shelf was left open, and close it (writing
        # back its cache). A finaliser cannot raise to anyone, so a failure to
        # close is reported on stderr, as at exit.
        if "_source" not in self.__dict__ or self.closed:
            return
        try:
            message = f"unclosed objstore shelf {self._path!r}"
            warnings.warn(message, ResourceWarning, stacklevel=1, source=self)
        finally:
            try:
                self.close()
            except Exception as exc:
                _report_not_closed(self, exc)
                self._abandon()

    def _abandon(self) -> None:
        """Release the store without writing anything back: nobody is left to retry."""
        try:
            Shelf.close(self)
        except Exception:
            pass

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"flag={self._flag!r}"
        extra = ", writeback=True" if self._writeback else ""
        return f"<objstore.Shelf path={self._path!r} {state}{extra}>"

    def __reduce__(self) -> tuple[Any, ...]:
        # A shelf travels as its path and options; the receiver opens its own
        # handles. "n" must not empty the store again, so it reopens as "c".
        if self.closed:
            raise ClosedError("a closed shelf cannot be pickled")
        options = self._options
        kwargs = {
            "durability": options.durability,
            "lock": "exclusive" if options.exclusive else "shared",
            "timeout": options.timeout,
            "map_size": options.map_size,
            "pickler": self._codec.pickler,
            "unpickler": self._codec.unpickler,
            "allow_network_fs": options.allow_network_fs,
            "mode": options.mode,
        }
        flag = "c" if self._flag == "n" else self._flag
        return (_reopen, (self._path, flag, self._codec.protocol, self._writeback, kwargs))


def _reopen(path: str, flag: str, protocol: int, writeback: bool, kwargs: dict[str, Any]) -> Shelf:
    return Shelf(path, flag, protocol, writeback, **kwargs)


def _created_by() -> str:
    from . import __version__

    return f"objstore {__version__}"


def _check_settings(path: str, settings: dict[str, Any]) -> None:
    """Refuse a store whose keys or records this version cannot read (before "n" empties it)."""
    value_format = settings.get("value_format", VALUE_FORMAT)
    if settings.get("key_encoding", KEY_ENCODING) != KEY_ENCODING or not (
        isinstance(value_format, int) and value_format <= VALUE_FORMAT
    ):
        raise UnsupportedFormatError(
            f"{path!r} was created with settings this objstore does not understand ({settings}); "
            "upgrade objstore to open it"
        )


class _WritebackCache:
    """The entries a writeback shelf has read or written: key -> (object, record loaded or stored).

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
            self.forget([key for key in self.entries if encode_key(key) in stored])

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
    for i in range(0, len(items), _CHUNK):
        part = items[i : i + _CHUNK]
        keys = [key for key, _ in part]
        encoded = encode_keys(keys)
        records = codec.encode_many([value for _, (value, _) in part], keys, _long_positions(encoded))
        changed = [j for j, (new, (_, (_, old))) in enumerate(zip(records, part, strict=True)) if new != old]
        if changed:
            new_records = [records[j] for j in changed]
            # A cached long key was read or stored through this shelf, so its
            # LMDB key was already checked to be its own.
            yield [encoded[j] for j in changed], lambda records=new_records: records  # type: ignore[misc]


class _WritebackShelf(Shelf):
    """The methods of a shelf opened with ``writeback=True`` that consult its cache.

    Mixed in, by `_with_writeback`, right above `Shelf` in the class of every
    writeback shelf. `sync` pickles every cached object again and, in one
    transaction, stores those whose record changed. Keys only read are never
    written back, so a writeback shelf does not undo other processes' writes
    to them.

    While its thread holds a transaction on the store, the shelf reads and
    writes through that transaction like a plain shelf: it neither uses nor
    fills the cache, and drops the cached entries of the keys it writes. A
    transaction opened through the shelf drops, when it ends, the entries of
    every key written in it (see `Writer._transaction`).
    """

    _cache: _WritebackCache

    def _caching(self) -> bool:
        return not self._source.in_transaction()

    def _value(self, key: str, record: bytes) -> Any:
        if not self._caching():
            return self._decode(record, key)
        cache = self._cache
        with cache.lock:
            cached = cache.entries.get(key)
            if cached is not None:
                return cached[0]
            value = self._decode(record, key)
            cache.entries[key] = (value, record)
            return value

    def _cached(self, key: str) -> tuple[Any, Record] | None:
        if isinstance(key, str) and self._caching():
            return self._cache.entries.get(key)
        return None

    def __getitem__(self, key: str) -> Any:
        cached = self._cached(key)
        if cached is not None:
            return cached[0]
        record = self._lookup(key)
        if record is None:
            raise KeyError(key)
        return self._value(key, record)

    def get(self, key: str, default: Any = None) -> Any:
        cached = self._cached(key)
        if cached is not None:
            return cached[0]
        return super().get(key, default)

    def __setitem__(self, key: str, value: Any) -> None:
        if not self._caching():
            self._cache.forget([key])
            super().__setitem__(key, value)
            return
        self._check_writable()
        encoded = encode_key(key)
        long = len(encoded) == MAX_KEY_SIZE and _is_long_form(encoded)
        record = self._codec.encode(value, key, keep_key=long)
        cache = self._cache
        with cache.lock:
            if long:
                self._put_long(key, encoded, record)
            else:
                self._source.put(encoded, record)
            cache.entries[key] = (value, record)

    def __delitem__(self, key: str) -> None:
        if not self._caching():
            self._cache.forget([key])
            super().__delitem__(key)
            return
        with self._cache.lock:
            self._cache.entries.pop(key, None)
            super().__delitem__(key)

    def pop(self, key: str, default: Any = _MISSING) -> Any:
        if not self._caching():
            self._cache.forget([key])
            return super().pop(key, default)
        cache = self._cache
        with cache.lock:
            cached = cache.entries.pop(key, None) if isinstance(key, str) else None
            value = super().pop(key, default)
            return cached[0] if cached is not None and value is not default else value

    def popitem(self) -> tuple[str, Any]:
        if not self._caching():
            key, value = super().popitem()
            self._cache.forget([key])
            return key, value
        cache = self._cache
        with cache.lock:
            key, value = super().popitem()
            cached = cache.entries.pop(key, None)
            return key, (value if cached is None else cached[0])

    def update(self, other: Any = (), /, **kwds: Any) -> None:
        keys, values = _pairs(other, kwds)
        if not keys:
            return
        if not self._caching():
            self._cache.forget(keys)
            super().update(zip(keys, values, strict=True))
            return
        self._check_writable()
        encoded = encode_keys(keys)
        stored: list[Sequence[Record]] = []

        def chunks() -> Iterator[Chunk]:
            # The plain update's chunks, keeping each chunk's records for the cache.
            for part, make_records in _chunks(encoded, keys, values, self._codec, _long_positions(encoded)):
                records = make_records()
                stored.append(records)
                yield part, lambda records=records: records  # type: ignore[misc]

        cache = self._cache
        with cache.lock:
            self._put_many(keys, encoded, chunks())
            for key, value, record in zip(keys, values, chain.from_iterable(stored), strict=True):
                cache.entries[key] = (value, record)

    def iteritems(
        self,
        prefix: str | None = None,
        *,
        start: str | None = None,
        stop: str | None = None,
        reverse: bool = False,
    ) -> Iterator[tuple[str, Any]]:
        for key, record in self._records(prefix, start, stop, reverse):
            yield key, self._value(key, record)

    def clear(self) -> None:
        if not self._caching():
            self._cache.entries.clear()
            super().clear()
            return
        with self._cache.lock:
            self._cache.entries.clear()
            super().clear()

    def sync(self) -> None:
        self._write_back()
        super().sync()

    def _write_back(self) -> None:
        try:
            self._cache.write_back(self._source, self._codec)
        except Exception as exc:
            if not self.closed:
                count = len(self._cache.entries)
                _add_note(
                    exc,
                    f"writing back the writeback cache failed: its {count} "
                    f"entr{'y' if count == 1 else 'ies'} are kept and the shelf is still open; "
                    "fix the cause (e.g. free disk space), then call sync() or close() again",
                )
            raise

    def close(self) -> None:
        if not self.closed:
            self._write_back()  # if this raises, the shelf stays open, its cache intact
        super().close()

    def _abandon(self) -> None:
        self._cache.entries.clear()
        super()._abandon()


@functools.cache
def _with_writeback(cls: type[Shelf]) -> type[Shelf]:
    """`cls` with the writeback methods mixed in right above `Shelf` (made once per class)."""
    if issubclass(cls, _WritebackShelf):
        return cls
    if cls is Shelf:
        return _WritebackShelf
    namespace = {"__module__": cls.__module__, "__qualname__": cls.__qualname__, "__doc__": cls.__doc__}
    return type(cls.__name__, (cls, _WritebackShelf), namespace)


def _report_not_closed(shelf: Shelf, exc: BaseException) -> None:
    """Say on stderr that `shelf` could not be closed where nobody can be told otherwise (exit, finaliser)."""
    lost = len(shelf._cache.entries) if shelf._cache is not None else 0
    what = f"; {lost} cached entr{'y was' if lost == 1 else 'ies were'} not written back" if lost else ""
    try:
        print(
            f"objstore: could not close the shelf at {shelf.path!r}{what}: {type(exc).__name__}: {exc}",
            file=sys.stderr,
        )
    except Exception:
        pass  # no stderr left to write to


def _pairs(other: Any, kwds: dict[str, Any]) -> tuple[list[Any], list[Any]]:
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


def open(
    path: str | bytes | os.PathLike[str] | os.PathLike[bytes],
    flag: str = "c",
    protocol: int | None = None,
    writeback: bool = False,
    **options: Any,
) -> Shelf:
    """Open the store at `path` (a directory) as a `Shelf`, like ``shelve.open``.

    `options` are the keyword-only parameters of `Shelf`: ``durability``,
    ``lock``, ``timeout``, ``map_size``, ``pickler``, ``unpickler``,
    ``allow_network_fs`` and ``mode``.
    """
    return Shelf(path, flag, protocol, writeback, **options)


@atexit.register
def _close_open_shelves() -> None:
    # Write back caches and flush stores whose durability defers flushing. A
    # store another (daemon) thread is still inside is flushed, not closed.
    closing_at_exit()
    for shelf in list(_open_shelves.values()):
        try:
            shelf.close()
        except Exception as exc:
            _report_not_closed(shelf, exc)
