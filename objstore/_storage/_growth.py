"""Map growth: how an environment makes room, and how it waits for the transactions a resize ends.

This module owns `MapGrowth` (a part of ``_environment._Environment``): the
map-size policy (double at least, never beyond ``MAX_MAP_SIZE``, never beyond
what the address-space limit affords), growing when the map fills up or is
more than half full before a user transaction, adopting a size another
process set, and the register of long-lived transactions (snapshots, user
transactions) that a resize waits for.

``set_mapsize`` invalidates every transaction of the process, so it runs only
once no other thread's long-lived transaction is open (or the timeout has
passed: those find themselves expired). Short single operations are not
waited for: they retry. It must never resize while this thread could wait for
itself: threads that wait for a resize are not waited for by it.
"""

from __future__ import annotations

import sys
import threading
import time
import weakref
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from typing import TYPE_CHECKING, Any

import lmdb

from .. import _lock
from .._errors import StoreError
from ._common import MAX_MAP_SIZE, Options
from ._errors import STORE_CLOSED, STORE_CLOSED_MEANWHILE, BackendError, closed
from ._transactions import ReadTxn


def affordable_map_size(size: int) -> int:
    """`size`, capped so that a map this large fits under the process's address-space limit.

    A failed remap leaves LMDB's environment without a map, so the size must
    fit before it is asked for: with ``ulimit -v`` set, a map takes at most
    an eighth of it.
    """
    try:
        import resource

        limit = resource.getrlimit(resource.RLIMIT_AS)[0]
    except (ImportError, OSError, AttributeError):  # pragma: no cover - not POSIX
        return size
    if limit == resource.RLIM_INFINITY or limit <= 0:
        return size
    return max(1 << 20, min(size, limit // 8))


# The frames that read views into the map, while their local `record` is a view:
# `Store.load`, `ReadTxn.load` and `_views._load_batch`. A resize waits for them.
_VIEWING_FRAMES = frozenset({"load", "_load_batch"})


class MapGrowth:
    """The growth side of an environment: room checks, growing, adopting, long-lived transactions."""

    if TYPE_CHECKING:  # provided by the environment
        path: str
        options: Options
        closed: bool
        lmdb_env: lmdb.Environment | None
        _readers_checked: float
        _guard: threading.Condition
        _resize_lock: threading.Lock
        _resizing: bool
        _waiting: set[int]
        _long_lived: weakref.WeakSet[ReadTxn]

    def used_bytes(self) -> int:
        env = self.lmdb_env
        assert env is not None
        return (env.info()["last_pgno"] + 1) * env.stat()["psize"]

    def needs_room(self) -> bool:
        """Whether the map is more than half full; also, at most once a second, reclaim the
        reader slots of dead processes, which pin pages that could be reused."""
        env = self.lmdb_env
        assert env is not None
        now = time.monotonic()
        if now - self._readers_checked > 1.0:
            self._readers_checked = now
            env.reader_check()
        return self.used_bytes() * 2 > env.info()["map_size"]

    def grow(self) -> None:
        """Double the map (at least); other processes adopt the new size by themselves."""
        env = self.lmdb_env
        assert env is not None
        seen = env.info()["map_size"]
        with self._resize_turn():
            if env.info()["map_size"] > seen:
                return  # another thread of this process grew it meanwhile
            env.reader_check()  # slots of dead readers pin pages that could be reused instead
            target = max(2 * seen, 2 * self.used_bytes())
            if target > MAX_MAP_SIZE:
                raise StoreError(f"the store {self.path!r} cannot grow beyond {MAX_MAP_SIZE} bytes of map")
            self._set_mapsize(target, coordinate=True)

    def resize(self, size: int) -> None:
        """Adopt a map size another process set (size 0), waiting for this process's transactions."""
        with self._resize_turn():
            self._set_mapsize(size, coordinate=False)

    @contextmanager
    def _resize_turn(self) -> Iterator[None]:
        """Hold the resize lock; while waiting for it, let the resize in progress pass this thread."""
        if not self._resize_lock.acquire(blocking=False):
            with self._waiting_for_resize():
                self._resize_lock.acquire()
        try:
            yield
        finally:
            self._resize_lock.release()

    @contextmanager
    def _waiting_for_resize(self) -> Iterator[None]:
        """Mark this thread as waiting for a resize, so that the resize does not wait for it.

        A thread that holds a snapshot and begins another transaction (or
        grows the map) while another thread's resize waits for that snapshot
        would otherwise wait forever for the resize that waits for it. Its
        snapshot is ended by the resize instead, as if it had grown the map itself.
        """
        me = threading.get_ident()
        with self._guard:
            self._waiting.add(me)
            self._guard.notify_all()
        try:
            yield
        finally:
            self._waiting.discard(me)

    def _holds_up_resize(self, txn: ReadTxn, me: int) -> bool:
        # Finished transactions may still be registered when an interrupt hit
        # their bookkeeping: they hold nothing up. Views of a zero-copy snapshot
        # always do, whatever thread holds them: a remap would pull the memory from under them.
        if txn.pinned:
            return True
        return txn.thread != me and txn.thread not in self._waiting and not txn._done

    def _threads_viewing(self, me: int) -> bool:
        """Whether another thread is in a `_VIEWING_FRAMES` frame (``Store.load``...) using a view of the map.

        This thread being inside it (unpickling a value runs code that writes)
        raises `StoreError`: the remap would pull the record from under the unpickler.
        """
        frames: Any = sys._current_frames()
        frame: Any = None
        f: Any = None
        try:
            for thread, frame in frames.items():
                f = frame
                while f is not None:
                    # Only once it holds its view: before, it may be adopting a size itself.
                    if (
                        f.f_code.co_name in _VIEWING_FRAMES
                        and f.f_locals.get("env") is self
                        and isinstance(f.f_locals.get("record"), memoryview)
                    ):
                        if thread == me:
                            raise StoreError(
                                f"cannot grow the store {self.path!r} while this thread is loading "
                                "a value read from it (code run by unpickling wrote to it); "
                                "write after the read"
                            )
                        return True
                    f = f.f_back
            return False
        finally:
            # `frames` holds this very frame: left in it, this frame, the frames it was called
            # from and their locals (the record being written) become cyclic garbage.
            frames = frame = f = None

    def _set_mapsize(self, size: int, coordinate: bool) -> None:
        """Set the map size once no other thread's transaction is open (or the timeout passed).

        set_mapsize invalidates every transaction of the process: long-lived ones
        are waited for (new ones wait meanwhile), short single operations just
        retry. With `coordinate`, the maintenance lock makes growth one process
        at a time; it is taken only after the wait, so other processes never
        wait for this process's transactions. Whatever interrupts it (a
        timeout, Ctrl-C, a close), the resize flag is cleared on the way out.
        """
        env = self.lmdb_env
        assert env is not None
        me = threading.get_ident()
        timeout = self.options.timeout
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            with self._guard:
                self._resizing = True
                while any(self._holds_up_resize(t, me) for t in self._long_lived):
                    if self.closed:
                        raise closed(STORE_CLOSED_MEANWHILE, "grow the store")
                    left = None if deadline is None else deadline - time.monotonic()
                    if left is not None and left <= 0:
                        if any(t.pinned for t in self._long_lived):
                            raise StoreError(
                                f"cannot grow the store {self.path!r} (or adopt the size another process "
                                "grew it to): views read in a zero-copy snapshot are still alive; release "
                                "them (del the arrays) before writing more, or read without zero_copy"
                            )
                        break  # they will find themselves expired
                    self._guard.wait(0.05 if left is None else min(left, 0.05))
            while self._threads_viewing(me):  # short reads through views: over in microseconds
                time.sleep(0.0005)
            with _lock.maintenance(self.path, timeout) if coordinate else nullcontext():
                while True:
                    try:
                        env.set_mapsize(size)
                        # Whatever is still registered was invalidated by set_mapsize.
                        for txn in self._long_lived:
                            txn.expired = True
                        break
                    except BackendError:
                        # A write transaction of another thread is still running.
                        if deadline is not None and time.monotonic() > deadline:
                            raise StoreError(
                                f"cannot grow the store {self.path!r}: a write transaction of another "
                                f"thread stayed open longer than the timeout ({timeout} s)"
                            ) from None
                        time.sleep(0.001)
        finally:
            # First the flag (no call before it an interrupt could land in), then the wake-up.
            self._resizing = False
            with self._guard:
                self._guard.notify_all()

    def wait_out_resize(self) -> None:
        """Wait for the resize under way to end, not holding it up: this thread's transactions give way.

        For a read in place, which must not begin during a resize. Waits at
        most the store's timeout (10 s without one), then raises `StoreError`:
        a read inside code that unpickles a value read in place would wait for
        a resize that waits for the outer read.
        """
        timeout = self.options.timeout
        deadline = time.monotonic() + (10.0 if timeout is None else timeout)
        with self._guard, self._waiting_for_resize():
            while self._resizing and not self.closed:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise StoreError(
                        f"cannot read the store {self.path!r} while it grows: the growth waits for a read "
                        "made in this thread (code run by unpickling read the store); read after it"
                    )
                self._guard.wait(min(left, 0.05))

    def register(self, txn: ReadTxn) -> None:
        """Count `txn` as long-lived (a resize waits for it); wait while a resize is under way."""
        with self._guard:
            if self._resizing:
                with self._waiting_for_resize():
                    while self._resizing and not self.closed:
                        self._guard.wait(0.05)
            if self.closed:
                raise closed(STORE_CLOSED)
            self._long_lived.add(txn)

    def unregister(self, txn: ReadTxn) -> None:
        with self._guard:
            self._long_lived.discard(txn)
            self._guard.notify_all()
