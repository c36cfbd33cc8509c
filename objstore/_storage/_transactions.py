"""Transactions the caller holds open: snapshots (read) and write transactions with replay.

This module owns `ReadTxn` and `WriteTxn` over one environment, which they
see only through `Host` (what a transaction needs of its environment), and
the bookkeeping that lets a write transaction survive map growth: the log of
its changes and their replay. It must never grow the map or reopen the store
itself (it asks its host), nor abort a transaction in a thread other than its
own.
"""

from __future__ import annotations

import contextlib
import os
import threading
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import TYPE_CHECKING, Any, Protocol

import lmdb

from .._errors import ConflictError, TransactionError
from ._common import _ATTEMPTS, BATCH_ITEMS, Chunk, T, Value, _batch, _contains, _count, _put_new
from ._errors import (
    CLOSED_UNDER_TXN,
    STORE_CLOSED_MEANWHILE,
    TXN_CLOSED,
    BackendError,
    MapFull,
    closed,
    is_transient,
    translate,
)
from ._views import (
    _VIEWING,
    LARGE_BATCH,
    PIN_MIN,
    TAKE_MIN,
    _copied,
    _KeysAsBytes,
    _load_batch,
    _Pin,
    pinned_view,
)

if TYPE_CHECKING:
    from ._common import Txn


class Host(Protocol):
    """What a transaction needs of its environment (``_environment._Environment``)."""

    path: str
    closed: bool
    writable: bool
    lmdb_env: lmdb.Environment | None
    data: Any
    writers: dict[int, WriteTxn]
    _resizing: bool

    def register(self, txn: ReadTxn) -> None: ...
    def unregister(self, txn: ReadTxn) -> None: ...
    def recover(self, exc: BaseException, attempt: int, action: str) -> None: ...
    def wait_for_fork(self) -> None: ...
    def wait_out_resize(self) -> None: ...
    def needs_room(self) -> bool: ...
    def grow(self) -> None: ...
    def empty(self, txn: Txn) -> None: ...
    def writer_done(self) -> None: ...


class ReadTxn:
    """A read transaction held open by the caller: one consistent snapshot of the store."""

    readonly = True
    # A transaction on the same snapshot that copies records (`InPlaceReadTxn`).
    _copying: Txn | None = None
    # Whether records are read in place: views into the map, read only inside
    # `load` and `_load_batch` (`InPlaceReadTxn`, `InPlaceWriteTxn`).
    in_place = False

    def __init__(self, environment: Host, zero_copy: bool = False) -> None:
        self._environment = environment
        # A zero-copy snapshot: its large records are views into the map that
        # keep this transaction (and the map) alive while they live (`_Pin`).
        self.zero_copy = zero_copy
        self._pin: weakref.ref[_Pin] | None = None
        self.path = environment.path
        self.thread = threading.get_ident()
        self.pid = os.getpid()
        self.expired = False
        # Set first when the transaction ends, so that an interrupt in the rest
        # of the bookkeeping leaves it recognisably over (see _Environment.writer_of).
        self._done = False
        self._txn: Txn | None = None
        self._db = environment.data

    def _begin(self) -> None:
        env = self._environment
        for attempt in range(_ATTEMPTS + 1):
            env.register(self)
            try:
                buffers = self.zero_copy or self.in_place
                self._txn = env.lmdb_env.begin(buffers=buffers)  # type: ignore[union-attr, call-overload]
                self._db = env.data
                return
            except Exception as exc:
                env.unregister(self)
                env.recover(exc, attempt, "open a snapshot")
            except BaseException:
                self.end()
                raise

    def forget(self) -> None:
        self._txn = None

    def end(self) -> None:
        """End the transaction; the mapping over it is closed from now on."""
        self._done = True
        # Dropping the reference, not abort(): another thread may be inside
        # LMDB with this transaction (a shelf's close() ends its snapshots),
        # and aborting it under that thread crashes. The lmdb object aborts
        # itself, freeing its reader slot, when the last reference goes, which
        # without such a thread is here and now.
        self._txn = None
        if not self.pinned:  # else the last view's pin unregisters it
            self._environment.unregister(self)

    @property
    def pinned(self) -> bool:
        """Whether views into the map read by this (zero-copy) transaction are alive."""
        return self._pin is not None and self._pin() is not None

    def _pinned(self, view: Any) -> Any:
        """`view` (into the map) as a read-only view that keeps this transaction alive; small ones copied."""
        if view is None or len(view) < PIN_MIN:
            return None if view is None else bytes(view)
        pin = None if self._pin is None else self._pin()
        if pin is None:
            pin = _Pin(self)
            self._pin = weakref.ref(pin)
        return pinned_view(view, pin)

    def _live(self) -> Txn:
        txn = self._txn
        if txn is None:
            if self.pid != os.getpid():
                raise TransactionError("this transaction was opened in the parent process before fork()")
            raise closed(TXN_CLOSED)
        if self._environment.closed:
            raise closed(CLOSED_UNDER_TXN)
        if self.expired:
            raise TransactionError(
                "this snapshot ended because the store's map had to grow while it was open (the "
                "growth waited for it up to the timeout, or was made by this same thread); open a "
                "new snapshot"
            )
        return txn

    def _error(self, exc: BaseException, action: str) -> BaseException:
        """The exception to raise for `exc`, raised by this transaction's lmdb object."""
        if self._environment.closed:
            return closed(CLOSED_UNDER_TXN, action)
        return translate(exc, self._environment.path, action)

    def _call(self, fn: Callable[[Txn], T], action: str) -> T:
        txn = self._live()
        try:
            return fn(txn)
        except BackendError as exc:
            if not self._environment.closed and (self.expired or is_transient(exc)):
                self.expired = True
                self._live()  # raises the TransactionError that explains it
            raise self._error(exc, action) from exc

    def get(self, key: bytes) -> bytes | None:
        if self.zero_copy:
            return self._call(lambda txn: self._pinned(txn.get(key, db=self._db)), "read")  # type: ignore[no-any-return]
        return self._call(lambda txn: txn.get(key, db=self._db), "read")

    def load(self, key: bytes, use: Callable[[Any, str], T], name: str, absent: T) -> T:
        record = self.get(key)
        return absent if record is None else use(record, name)

    def contains(self, key: bytes) -> bool:
        return self._call(lambda txn: _contains(txn, self._db, key), "read")

    def count(self) -> int:
        return self._call(lambda txn: _count(txn, self._db), "count keys")

    def batch(
        self,
        lo: bytes | None,
        hi: bytes | None,
        reverse: bool,
        values: bool,
        after: bytes | None,
        limit: int = BATCH_ITEMS,
        take: Callable[[Any], Any] | None = None,
    ) -> list[Any]:
        copying = self._copying
        if copying is not None and (take is None or limit > LARGE_BATCH):
            # Small records: a view costs more than a copy, so they are read by copy.
            return self._call(
                lambda txn: _batch(copying, self._db, lo, hi, reverse, values, after, limit), "iterate"
            )
        if self.in_place:
            env = self._environment
            while True:
                found = self._call(
                    lambda txn: _load_batch(
                        env if self.readonly else None,
                        lambda: _batch(txn, self._db, lo, hi, reverse, values, after, limit, True),
                        values,
                        take,
                    ),
                    "iterate",
                )
                if found is not None:
                    return found
                env.wait_out_resize()
        if not self.zero_copy:
            return self._call(
                lambda txn: _batch(txn, self._db, lo, hi, reverse, values, after, limit), "iterate"
            )
        keys_as_bytes: Any = _KeysAsBytes  # stands in for the transaction _batch takes
        batch = self._call(
            lambda txn: _batch(keys_as_bytes(txn), self._db, lo, hi, reverse, values, after, limit), "iterate"
        )
        return [(key, self._pinned(record)) for key, record in batch] if values else batch


class InPlaceReadTxn(ReadTxn):
    """A snapshot that reads records in place: a large value is copied once, not twice.

    A view costs more than a copy for a small record, so a store begins
    these only once it has met a large record (see `Store.load`), and its
    batches of small records are read by copy, from a second transaction on
    the same snapshot (same id), when it could begin one.
    """

    in_place = True

    def _begin(self) -> None:
        super()._begin()
        txn = self._txn
        try:
            copying = self._environment.lmdb_env.begin()  # type: ignore[union-attr]
        except Exception:  # growth, a resize: batches are read in place instead
            return
        if txn is not None and copying.id() == txn.id():
            self._copying = copying

    def forget(self) -> None:
        self._copying = None
        super().forget()

    def end(self) -> None:
        self._copying = None
        super().end()

    def get(self, key: bytes) -> bytes | None:
        return self.load(key, _copied, "", None)

    def load(self, key: bytes, use: Callable[[Any, str], T], name: str, absent: T) -> T:
        """``use(record, name)``, as `Storage.load`: `record` is a view valid during the call.

        The snapshot's pages cannot change under the view (a read transaction
        keeps them), and map growth in this process waits for this frame while
        `record` is a view (`MapGrowth._threads_viewing`): it is bound to one
        before a resize under way is looked for.
        """
        env = self._environment
        record: Any
        while True:
            record = _VIEWING
            if not env._resizing:
                break
            del record  # not viewing: the resize may pass this thread
            env.wait_out_resize()
        record = self._call(lambda txn: txn.get(key, db=self._db), "read")
        if record is None:
            return absent
        try:
            return use(record, name)
        except BaseException:
            # The traceback keeps this frame: make its view unusable, not a pointer into a map that may move.
            with contextlib.suppress(BufferError):
                record.release()
            raise


class WriteTxn(ReadTxn):
    """A write transaction of one thread; nested ones are savepoints inside their parent.

    Every change is also kept in a log, so that when the map fills up the
    transaction can be rolled back, the map grown and the changes replayed,
    all without the caller noticing. `blind` transactions (whose writes do not
    depend on what they read) may always be replayed; others only if no other
    process committed in between, else `ConflictError`.
    """

    readonly = False

    def __init__(
        self,
        environment: Host,
        parent: WriteTxn | None,
        blind: bool,
        take: Callable[[Any], Any] | None = None,
    ) -> None:
        super().__init__(environment)
        self.parent = parent
        self.blind = blind
        # What an `InPlaceWriteTxn` hands a large record to, as a view, to copy it
        # out (a codec's `take`); savepoints keep their parent's.
        self.take: Callable[[Any], Any] | None = take if parent is None else parent.take
        # Changes made at this level, in order, as (keys, records) runs; a record
        # None deletes its key, a key None empties the store.
        self._log: list[tuple[Sequence[bytes | None], Callable[[], Sequence[Value | None]]]] = []
        self._id = 0

    # -- lifecycle

    def _begin(self) -> None:
        try:
            self._begin_levels()
        except BaseException:
            self._finish()  # also when interrupted: never leave a half-begun transaction behind
            raise

    def _begin_levels(self) -> None:
        env = self._environment
        if self.parent is None:
            env.wait_for_fork()
            for attempt in range(_ATTEMPTS + 1):
                env.register(self)
                try:
                    txn = env.lmdb_env.begin(write=True, buffers=self.in_place)  # type: ignore[union-attr, call-overload]
                except Exception as exc:
                    env.unregister(self)
                    env.recover(exc, attempt, "begin a transaction")
                    continue
                self._txn = txn
                if env.closed:
                    self._finish()
                    raise closed(STORE_CLOSED_MEANWHILE, "begin a transaction")
                # A transaction cannot simply be rerun, so make room now, while
                # this process holds LMDB's writer lock and no other can fill
                # the map before the caller's writes: then only a transaction
                # writing half the map itself can run out of room.
                if not (env.writable and env.needs_room()):
                    break
                self._txn = None
                txn.abort()
                env.unregister(self)
                env.grow()
            self._id = txn.id()
        else:
            try:
                self._txn = env.lmdb_env.begin(write=True, parent=self.parent._txn, buffers=self.in_place)  # type: ignore[union-attr, call-overload]
            except BackendError as exc:
                raise self._error(exc, "begin a savepoint") from exc
        self._db = env.data
        env.writers[self.thread] = self

    def commit(self) -> None:
        """Commit; whatever happens (an error, a KeyboardInterrupt), the transaction is over after.

        An interrupt can land after LMDB committed and before this returns: the
        commit then happened, and the caller sees only the interrupt.
        """
        self._check_thread()  # before the try: another thread must not end this transaction
        try:
            # LMDB can need pages at commit time too: the commit then aborted
            # the transaction, which is replayed and committed again.
            self._write(lambda txn: txn.commit(), "commit the transaction")
            if self.parent is not None:
                self.parent._log.extend(self._log)
        finally:
            # A statement first, not a call: an interrupt is taken at a call's
            # start, and after the commit this must happen whatever comes.
            self._done = True
            self._finish()

    def abort(self) -> None:
        self._done = True
        self._finish()

    def _finish(self) -> None:
        """End the transaction and do the bookkeeping; idempotent.

        If an interrupt cuts this short, `_done` already says the transaction
        is over, and `_Environment.writer_of` completes the bookkeeping.
        """
        self._done = True
        txn, self._txn = self._txn, None
        env = self._environment
        if txn is not None and self.pid == os.getpid() and env.lmdb_env is not None:
            # Explicitly, here, in its own thread: freed later (a frame kept by a
            # traceback, collected by another thread) it would be aborted by a
            # thread that does not own LMDB's writer lock, which then stays locked.
            try:
                txn.abort()  # after a commit, this does nothing
            except BackendError:
                pass  # already ended by a failed commit or a resize
        self._log = []
        writers = env.writers
        if self.parent is None:
            if writers.get(self.thread) is self:
                del writers[self.thread]
            env.unregister(self)
            env.writer_done()
        elif writers.get(self.thread) is self:
            writers[self.thread] = self.parent

    def end(self) -> None:
        self.abort()

    def written(self) -> list[bytes | None]:
        """The keys written so far at this level (committed savepoints included); None for a clear()."""
        return [key for keys, _ in self._log for key in keys]

    def _call(self, fn: Callable[[Txn], T], action: str) -> T:
        self._check_thread()
        return super()._call(fn, action)

    def _check_thread(self) -> None:
        if threading.get_ident() != self.thread:
            raise TransactionError(
                "a transaction can only be used by the thread that opened it (LMDB write "
                "transactions belong to their thread)"
            )

    # -- map growth

    def _stack(self) -> list[WriteTxn]:
        stack = [self]
        parent = self.parent
        while parent is not None:
            stack.append(parent)
            parent = parent.parent
        return stack[::-1]

    def _replay(self) -> Txn:
        """Roll back, grow the map, begin again and replay every level's log; return our txn."""
        env = self._environment
        stack = self._stack()
        root = stack[0]
        if root._txn is not None:
            try:
                root._txn.abort()
            except BackendError:
                pass  # a failed commit already ended it
        for level in stack:
            level._txn = None
        env.writers.pop(self.thread, None)
        env.unregister(root)
        try:
            env.grow()
        except BaseException:
            for level in stack:
                level._finish()
            raise
        old_id = root._id
        root._txn = None
        root._begin()
        if root._id != old_id and not root.blind:
            for level in reversed(stack):
                level.abort()
            raise ConflictError(
                "the transaction ran out of map space and another process committed while the store "
                "was grown; it was rolled back: run it again"
            )
        for level in stack:
            if level is not root:
                level._txn = env.lmdb_env.begin(write=True, parent=level.parent._txn, buffers=level.in_place)  # type: ignore[union-attr, call-overload]
            txn = level._txn
            assert txn is not None
            for keys, make_records in level._log:
                for key, record in zip(keys, make_records(), strict=True):
                    if key is None:
                        env.empty(txn)
                    elif record is None:
                        txn.delete(key)
                    else:
                        txn.put(key, record)
        env.writers[self.thread] = self
        return self._txn  # type: ignore[return-value]

    def _write(self, fn: Callable[[Txn], T], action: str) -> T:
        self._check_thread()
        txn = self._live()
        for attempt in range(_ATTEMPTS + 1):
            try:
                return fn(txn)
            except MapFull as exc:
                if attempt >= _ATTEMPTS:
                    raise self._error(exc, action) from exc
                txn = self._replay()
            except BackendError as exc:
                raise self._error(exc, action) from exc
        raise AssertionError("unreachable")  # pragma: no cover

    # -- writes

    def put(self, key: bytes, value: Value) -> None:
        self._write(lambda txn: txn.put(key, value), "store a value")
        self._log.append(((key,), lambda: (value,)))

    def delete(self, key: bytes) -> bool:
        deleted = self._write(lambda txn: txn.delete(key), "delete a key")
        if deleted:
            self._log.append(((key,), lambda: (None,)))
        return bool(deleted)

    def put_new(self, key: bytes, value: Value) -> bytes | None:
        existing = self._write(lambda txn: _put_new(txn, self._db, key, value), "store a value")
        if existing is not None and self.in_place:
            existing = bytes(existing)  # a view: copied before anything can write
        if existing is None:
            self._log.append(((key,), lambda: (value,)))
        return existing

    def put_many(self, chunks: Iterable[Chunk]) -> None:
        self._check_thread()
        txn = self._live()
        for keys, make_records in chunks:
            records = make_records()
            while True:
                put = txn.put
                try:
                    # Two parallel sequences, not a list of pairs: zip reuses its
                    # tuple, so a bulk write allocates no container per pair.
                    for key, record in zip(keys, records, strict=True):
                        put(key, record)
                except MapFull:
                    # The replay restores everything before this chunk; then the
                    # whole chunk is written again.
                    txn = self._replay()
                    continue
                except BackendError as exc:
                    raise self._error(exc, "store values") from exc
                self._log.append((keys, make_records))
                break

    def clear(self) -> None:
        self._write(self._environment.empty, "empty the store")
        self._log.append(((None,), lambda: (None,)))

    def write(self, take: Callable[[Any], Any] | None = None) -> AbstractContextManager[WriteTxn]:
        """Context manager: a savepoint inside this transaction (which reads as it does: `take` unused)."""
        self._check_thread()
        self._live()
        return _transaction(self._environment, self, blind=False)


class InPlaceWriteTxn(WriteTxn):
    """A write transaction that reads records in place, for a store that has met a large record.

    Its views show its own pages, which its writes change or free: each is
    copied (a large record by `take`, one copy of its buffers) before any
    code of the data runs. No other thread can remap the map meanwhile:
    LMDB refuses while a write transaction is open.
    """

    in_place = True

    def get(self, key: bytes) -> bytes | None:
        record = self._call(lambda txn: txn.get(key, db=self._db), "read")
        # Copied at once: nothing can run in between that writes, and while this
        # transaction is open no other thread can remap the map (LMDB refuses).
        return None if record is None else bytes(record)

    def load(self, key: bytes, use: Callable[[Any, str], T], name: str, absent: T) -> T:
        """``use(record, name)``, as `Storage.load`; a large record is first copied out by `take`.

        `use` runs after the view is gone: it may write in this transaction.
        """
        record = self._call(lambda txn: txn.get(key, db=self._db), "read")
        if record is None:
            return absent
        take = self.take
        copied = bytes(record) if len(record) < TAKE_MIN or take is None else take(record)
        del record
        return use(copied, name)


@contextmanager
def _transaction(
    environment: Host,
    parent: WriteTxn | None,
    blind: bool,
    take: Callable[[Any], Any] | None = None,
    in_place: bool = False,
) -> Iterator[WriteTxn]:
    """Commit on normal exit, roll back (and re-raise) on an exception.

    `in_place` with `take`: an `InPlaceWriteTxn` (savepoints read as their parent does).
    """
    in_place = parent.in_place if parent is not None else in_place and take is not None
    txn = (InPlaceWriteTxn if in_place else WriteTxn)(environment, parent, blind, take)
    try:
        txn._begin()
        yield txn
    except BaseException:
        txn.abort()
        raise
    txn.commit()
