"""The read side of the dict face: `_Reader`, its views, `Snapshot`, and the closed stand-in.

A `_Reader` is a read-only ``Mapping`` of ``str`` keys to values over any
source of records that has the read methods of the `Storage` protocol (a
store, a snapshot's read transaction, a write transaction): it turns keys into
stored keys through `_keys`, and records into values through the codec's
``decode``. It owns the reading hot paths (``__getitem__``, ``get``,
``__contains__``, iteration in batches, ordered access) and the closed state
(`_Closed` and the messages of closed snapshots and transactions, defined
once here; a closed shelf's, which its storage says too, is `_errors`').

It must never know the record format (only ``codec.decode``, ``codec.intact``,
`record_key` and `record_globals` read records) nor the key rules (only
`_keys` applies them), nor use anything of the storage but the methods of the
`Storage` protocol.
A writeback shelf's reads go to its `Writeback` strategy, which caches values.
Each mapping decodes with its own ``codec.decoder(self)``, so the references
(`Ref`) in the values it reads read through it; ``ref(key)`` makes one.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, ItemsView, Iterator, KeysView, Mapping, ValuesView
from operator import itemgetter
from typing import Any, NoReturn

from ._errors import ClosedError, CorruptError
from ._keys import LongKey, bounds, is_utf8, key_of, own_record, stored_key, undecodable_key
from ._records import is_intact
from ._refs import Ref, resolver
from ._restrict import Unreadable, record_globals
from ._serialize import Codec, add_key_note
from ._storage import BATCH_BYTES, BATCH_ITEMS, ReadTransaction, Source
from ._writeback import Writeback

__all__ = [
    "CLOSED_SHELF_PICKLED",
    "SNAPSHOT_CLOSED",
    "TRANSACTION_CLOSED",
    "Snapshot",
]

# What a closed snapshot or transaction says when used, and a closed shelf when pickled: defined once.
SNAPSHOT_CLOSED = "the snapshot is closed"
TRANSACTION_CLOSED = "the transaction is closed"
CLOSED_SHELF_PICKLED = "a closed shelf cannot be pickled"
_ABSENT: Any = object()  # what a read of an absent key returns (None is a value)


class _Closed:
    """Stands in for the storage of a closed mapping: every use raises `ClosedError` with `message`."""

    def __init__(self, message: str) -> None:
        self._message = message

    def __getattr__(self, name: str) -> NoReturn:
        raise ClosedError(self._message)

    def closed_get(self, key: bytes = b"", *args: object) -> NoReturn:
        """Stands in for the bound `get` and `load` of the hot paths."""
        raise ClosedError(self._message)


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


# --------------------------------------------------------------- mapping


class _Reader(Mapping[str, Any]):
    """The read side of the dict face, over any storage source (store, snapshot, transaction)."""

    _source: Any
    _codec: Codec
    # The writeback strategy of a shelf opened with writeback=True; None otherwise.
    _writeback: Writeback | None = None

    def __init__(self, source: Source, codec: Codec) -> None:
        self._writeback = None  # an instance attribute: the hot paths read it fastest
        self._bind(source)
        self._codec = codec
        self._decode = codec.decoder(self)

    def _bind(self, source: Source | _Closed) -> None:
        self._source = source
        self._get: Callable[[bytes], bytes | None]
        self._load: Callable[..., Any]
        if isinstance(source, _Closed):
            self._get = source.closed_get
            self._load = source.closed_get
            # Empty the batches that running iterators are walking, so their
            # next step reads the next batch and meets the closed source.
            for batch in list(self._live_batches.values()):
                batch.clear()
        else:
            self._get = source.get
            # The record is decoded inside the storage's read, from a view into
            # the map: a large value is copied once, not twice.
            self._load = source.load
            self._live_batches: dict[int, list[Any]] = {}

    def _value(self, key: str, record: bytes) -> Any:
        """The value of `key` held in `record` (under writeback: the cached object, if any)."""
        if self._writeback is None:
            return self._decode(record, key)
        return self._writeback.value(self, key, record)

    def __getitem__(self, key: str) -> Any:
        # The hot path: _lookup written out, which saves a frame.
        if self._writeback is not None:
            return self._writeback.getitem(self, key)
        try:
            stored = stored_key(key)
        except ValueError:  # cannot be a key, so is in no store
            raise KeyError(key) from None
        if type(stored) is LongKey:
            record = own_record(self._get(stored), stored)
            if record is None:
                raise KeyError(key)
            return self._decode(record, key)
        value: Any = self._load(stored, self._decode, key, _ABSENT)
        if value is _ABSENT:
            raise KeyError(key)
        return value

    def ref(self, key: str) -> Ref:
        """A reference to `key`, to store inside values: it is kept as the key's name, not a copy.

        Calling it (``ref()``) reads the key's current value through this
        mapping; `KeyError` if the key is absent then. A key that cannot be
        one raises as a write would (`TypeError`, `ValueError`).
        """
        if isinstance(self._source, _Closed):
            self._source.closed_get()  # raises ClosedError, as every other use
        stored_key(key)  # the key rules, as a write applies them
        return Ref(key, resolver(self))

    def _lookup(self, key: str) -> bytes | None:
        """The record of `key`; None if absent or if `key` cannot be a key (empty, not UTF-8)."""
        try:
            stored = stored_key(key)
        except ValueError:
            return None
        record = self._get(stored)
        return own_record(record, stored) if type(stored) is LongKey else record

    def get(self, key: str, default: Any = None) -> Any:
        """Return the value of `key`, or `default` if it is not in the store."""
        if self._writeback is not None:
            return self._writeback.get(self, key, default)
        try:
            stored = stored_key(key)
        except ValueError:
            return default
        if type(stored) is LongKey:
            record = own_record(self._get(stored), stored)
            return default if record is None else self._decode(record, key)
        value: Any = self._load(stored, self._decode, key, _ABSENT)
        return default if value is _ABSENT else value

    def __contains__(self, key: object) -> bool:
        try:
            stored = stored_key(key)
        except ValueError:
            return False
        if type(stored) is LongKey:
            return self._lookup(key) is not None  # type: ignore[arg-type]
        return bool(self._source.contains(stored))

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
        self,
        lo: bytes | None,
        hi: bytes | None,
        reverse: bool,
        values: bool,
        take: Callable[[Any], Any] | None = None,
    ) -> Iterator[list[Any]]:
        """Batches of keys (or of (key, record) pairs) of [lo, hi), in order.

        Each batch is read in its own short transaction and the next resumes
        after its last key: no transaction stays open while the caller's loop
        runs. Batches of records are sized to hold about BATCH_BYTES. With
        `take` (the codec's), the storage may hand it large records to copy out.
        """
        after = None
        limit = BATCH_ITEMS if not values else 16
        live, token = self._live_batches, object()
        try:
            while True:
                batch = self._source.batch(lo, hi, reverse, values, after, limit, take)
                live[id(token)] = batch
                # Read before the caller resumes: another thread's close() empties the batch.
                full = len(batch) >= limit
                try:
                    if full and values:
                        size = sum(map(len, map(itemgetter(1), batch)))
                        limit = max(1, min(BATCH_ITEMS, BATCH_BYTES * len(batch) // max(size, 1)))
                        after = batch[-1][0]
                    elif full:
                        after = batch[-1]
                except IndexError:  # emptied meanwhile by another thread's close()
                    full = False
                if batch:
                    yield batch
                if isinstance(self._source, _Closed):
                    self._source.closed_get()  # closed while iterating: raises ClosedError
                if not full:
                    return
        finally:
            live.pop(id(token), None)

    def _key_of(self, raw: bytes, record: bytes | None) -> str | None:
        """The key stored as `raw`, which is not UTF-8 (see `key_of`)."""
        return key_of(raw, record, self._get, self._source.path)

    def _keys(self, batch: list[bytes], check: Callable[[str], bool] | None) -> Iterator[str]:
        """The keys of a batch of stored keys that are not all UTF-8, or that must pass `check`."""
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
        lo, hi, check = bounds(prefix, start, stop)
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
        lo, hi, check = bounds(prefix, start, stop)
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
                    if not is_utf8(raw):
                        break
                yield from self._keys(batch[done:], None)

    def iteritems(
        self,
        prefix: str | None = None,
        *,
        start: str | None = None,
        stop: str | None = None,
        reverse: bool = False,
        errors: str = "raise",
    ) -> Iterator[tuple[str, Any]]:
        """Iterate over (key, value) pairs in key order; the bounds are those of `iterkeys`.

        `errors` says what a value that cannot be loaded does: ``"raise"``
        (default) raises its error, which names the key; ``"skip"`` leaves the
        pair out; ``"keep"`` yields an `Unreadable` in its place. Only errors
        of loading a value are skipped or kept (damage, a record of a newer
        format, any error unpickling it), never those of the store.
        """
        if errors != "raise":
            yield from self._tolerant_items(prefix, start, stop, reverse, errors)
            return
        lo, hi, check = bounds(prefix, start, stop)
        writeback = self._writeback
        decode = self._decode if writeback is None else writeback.decoder(self)
        batch_loader = self._codec.batch_loader if writeback is None else None
        # Large records taken out of the storage with one copy of their buffers
        # (not under writeback, which keeps the records it read).
        take = self._codec.take if writeback is None else None
        first, second = itemgetter(0), itemgetter(1)
        for batch in self._batches(lo, hi, reverse, values=True, take=take):
            if check is None:
                try:
                    keys = list(map(bytes.decode, map(first, batch)))
                except UnicodeDecodeError:
                    pass  # a long key (or damage): pair by pair below
                else:
                    # Loops in C; each value is still loaded only when its pair is
                    # taken, and a batch emptied by close() ends the map (so zip is not strict).
                    load = None if batch_loader is None else batch_loader(list(map(second, batch)))
                    if load is None:
                        yield from zip(keys, map(decode, map(second, batch), keys), strict=False)
                        continue
                    taken = iter(keys)
                    try:
                        yield from zip(taken, map(load, map(second, batch)), strict=False)
                    except Exception as exc:
                        # zip took the failing value's key before loading it.
                        add_key_note(exc, keys[len(keys) - sum(1 for _ in taken) - 1])
                        raise
                    continue
            for raw_key, record in batch:
                try:
                    key = raw_key.decode()
                except UnicodeDecodeError:
                    # A taken record holds no key (`Codec.take`): the key reads it again.
                    kept = record if isinstance(record, (bytes, memoryview)) else None
                    key = self._key_of(raw_key, kept)  # type: ignore[arg-type]
                if check is not None and not check(key):
                    continue
                yield key, decode(record, key)

    def itervalues(
        self,
        prefix: str | None = None,
        *,
        start: str | None = None,
        stop: str | None = None,
        reverse: bool = False,
        errors: str = "raise",
    ) -> Iterator[Any]:
        """Iterate over values in key order; the bounds and `errors` are those of `iteritems`."""
        items = self.iteritems(prefix, start=start, stop=stop, reverse=reverse, errors=errors)
        return map(itemgetter(1), items)

    def _tolerant_items(
        self, prefix: str | None, start: str | None, stop: str | None, reverse: bool, errors: str
    ) -> Iterator[tuple[str, Any]]:
        """`iteritems` with ``errors="skip"`` or ``"keep"``: each value loaded on its own."""
        if errors not in ("skip", "keep"):
            raise ValueError(f"errors must be 'raise', 'skip' or 'keep', not {errors!r}")
        keep = errors == "keep"
        for key, record in self._records(prefix, start, stop, reverse):
            try:
                value = self._value(key, record)
            except Exception as exc:  # any error of this one value: the others still load
                if keep:
                    yield key, Unreadable(key, exc, record)
                continue
            yield key, value

    def iterglobals(
        self,
        prefix: str | None = None,
        *,
        start: str | None = None,
        stop: str | None = None,
        reverse: bool = False,
    ) -> Iterator[tuple[str, list[tuple[str, str]]]]:
        """Iterate over (key, globals) pairs: the (module, qualname) each value would import.

        Reads the pickle opcodes of every intact record without loading
        anything (damaged records are left out: `verify` lists them). The
        bounds are those of `iterkeys`. See docs/security.md.
        """
        for key, record in self._records(prefix, start, stop, reverse):
            if is_intact(record):
                yield key, record_globals(record)

    def verify(self) -> list[str]:
        """Check the integrity of every entry; return the keys whose records are damaged.

        In a signed store, also the keys whose records' signatures do not match.

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
                if not self._codec.intact(record, key):
                    damaged.append(key)
        return damaged

    def _end(self, prefix: str | None, last: bool) -> tuple[str, Any]:
        lo, hi, check = bounds(prefix, None, None)
        found: tuple[str | None, bytes] | None
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
        return found[0], self._value(*found)  # type: ignore[return-value, arg-type]

    def first(self, prefix: str | None = None) -> tuple[str, Any]:
        """Return the (key, value) pair with the lowest key (starting with `prefix`); `KeyError` if none."""
        return self._end(prefix, last=False)

    def last(self, prefix: str | None = None) -> tuple[str, Any]:
        """Return the (key, value) pair with the highest key (starting with `prefix`); `KeyError` if none."""
        return self._end(prefix, last=True)


class Snapshot(_Reader):
    """A read-only mapping over one read transaction: a consistent view of the whole store.

    Made by `Shelf.snapshot`. Every read sees the store as it was when the
    snapshot began, whatever other threads and processes commit meanwhile.
    Close it (or leave its ``with`` block) promptly: while it is open, LMDB
    cannot reuse the pages it sees, and the data file grows.
    """

    def __init__(self, txn: ReadTransaction, codec: Codec, zero_copy: bool = False) -> None:
        super().__init__(txn, codec)
        self._txn: ReadTransaction | None = txn
        self.zero_copy = zero_copy
        if zero_copy:  # large buffers come back as read-only views that keep the transaction alive
            self._decode = codec.view_decoder(self)

    def close(self) -> None:
        """End the snapshot; later use raises `ClosedError`. Idempotent."""
        txn, self._txn = self._txn, None
        self._bind(_Closed(SNAPSHOT_CLOSED))
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
