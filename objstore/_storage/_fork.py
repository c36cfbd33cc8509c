"""fork(): what a process does with its environments around ``os.fork()``.

This module owns fork handling, as `ForkHandling` (a part of
``_environment._Environment``) and the at-fork hooks it installs (`watch`):

- before the fork, other threads' write transactions get a moment to end and
  new ones wait (`ForkHandling.before_fork`), so that a child rarely inherits
  one;
- in the child, every inherited LMDB object is dropped without being called
  (`ForkHandling.forget`): ``close()`` or ``abort()`` on the parent's handles in
  a child silently corrupts the parent's open snapshot. Some must never even
  be freed, and are kept alive forever (`keep_forever`): the environment,
  whose cached read transaction is the parent's (freeing it frees the
  parent's reader slot), and write transactions of threads that do not exist
  in the child (py-lmdb hangs);
- the child reopens its own environment on first use (`ForkHandling.reopen`).
  py-lmdb refuses a second environment on files an object of this process
  still has open, as the kept environment does, so the child passes that
  guard (`open_past_inherited`).

What this relies on in py-lmdb, verified on `VERIFIED_LMDB` (the canary in
``tests/test_fork_canary.py`` fails, saying what changed, when any of it does):

- the guard identifies an environment by ``lmdb._envid.env_keys(path,
  subdir)``, looked up on every open, and refuses with an ``lmdb.Error`` whose
  text says "already open" (``_errors.is_already_open``);
- transactions of py-lmdb dropped in a child do not end the parent's
  transactions or reader slots (their destructors check the process id), and
  an environment kept alive in a child leaves its cached read transaction to
  the parent, also when the child exits normally;
- ``ctypes.pythonapi.Py_IncRef`` exists (CPython), for `keep_forever`.

It must never call anything on an LMDB object inherited from the parent, nor
decide how an environment is opened (it only chooses the opener).
"""

from __future__ import annotations

import ctypes
import gc
import os
import threading
import time
import weakref
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

import lmdb

from .. import _lock
from .._errors import TransactionError
from ._errors import STORE_CLOSED, BackendError, closed, is_already_open
from ._transactions import ReadTxn, WriteTxn

VERIFIED_LMDB = ((3, 0), (3, 1))  # py-lmdb versions [from, to) the bypass was verified on
ENV_KEYS_MODULE, ENV_KEYS_FUNCTION = "lmdb._envid", "env_keys"  # what `open_past_inherited` replaces
_FORK_WAIT = 1.0  # seconds fork() waits for other threads' write transactions to end
_kept_forever: list[object] = []

Opener = Callable[[str, dict[str, Any]], lmdb.Environment]


class ForkHandling:
    """The fork side of an environment: hold writers off, forget, reopen."""

    if TYPE_CHECKING:  # provided by the environment
        path: str
        pid: int
        closed: bool
        writable: bool
        lmdb_env: lmdb.Environment | None
        data: Any
        writers: dict[int, WriteTxn]
        _long_lived: weakref.WeakSet[ReadTxn]
        _guard: threading.Condition
        _fork_pending: bool

        def _other_writers(self, me: int) -> bool: ...
        def open_lmdb(self, create: bool, opener: Opener = ...) -> None: ...
        def open_databases(self, flag: str, settings: dict[str, Any], check: Callable[..., None]) -> None: ...
        def _fresh_coordination(self) -> None: ...

    def before_fork(self) -> None:
        """Let other threads' write transactions finish (briefly) and hold new ones off.

        A forked child must never free the write transaction of a thread that
        does not exist in it (py-lmdb hangs), and py-lmdb refuses a second
        environment on the files while it lives. A child that inherits one
        anyway keeps it forever and opens its own environment past that guard
        (see `open_past_inherited`); fork() first gives short transactions
        the chance to end, so that this is rarely needed.
        """
        me = threading.get_ident()
        deadline = time.monotonic() + _FORK_WAIT
        with self._guard:
            self._fork_pending = True
            while self._other_writers(me) and time.monotonic() < deadline:
                self._guard.wait(0.01)

    def after_fork_in_parent(self) -> None:
        with self._guard:
            self._fork_pending = False
            self._guard.notify_all()

    def wait_for_fork(self) -> None:
        """Before a new write transaction: wait while another thread is forking."""
        if self._fork_pending:
            with self._guard:
                while self._fork_pending:
                    self._guard.wait(0.05)

    def forget(self) -> None:
        """Drop the LMDB objects inherited from the parent, without calling them (fork child)."""
        me = threading.get_ident()
        # Never freed, not even at exit: freeing it would end, in the shared
        # reader table, the read transaction py-lmdb caches in it for the
        # parent's next read (see MAX_SPARE_TXNS).
        keep_forever(self.lmdb_env)
        if self._other_writers(me):
            # Write transactions of threads that do not exist here: never free them.
            for txn in self._long_lived:
                if isinstance(txn, WriteTxn) and txn.thread != me:
                    level: WriteTxn | None = txn
                    while level is not None:
                        keep_forever(level._txn)
                        level = level.parent
        own = self.writers.get(me)
        while own is not None:
            own.forget()
            own = own.parent
        self.lmdb_env = self.data = None
        self.writers = {}
        for txn in list(self._long_lived):
            if txn.thread == me or not isinstance(txn, WriteTxn):
                txn.forget()
        self._fresh_coordination()

    def reopen(self) -> None:
        """Reopen after fork, in the child, on first use."""
        registry = _watched()
        with registry.lock:
            if self.lmdb_env is not None and self.pid == os.getpid():
                return
            if self.closed:
                raise closed(STORE_CLOSED)
            gc.collect()
            self.open_lmdb(create=False, opener=self._open_in_child)
            self.open_databases("w" if self.writable else "r", {}, lambda path, settings: None)

    def _open_in_child(self, path: str, kwargs: dict[str, Any]) -> lmdb.Environment:
        """Open this child's own environment, past the inherited one (kept alive, never used)."""
        try:
            return open_past_inherited(path, kwargs)
        except BackendError as exc:
            if is_already_open(exc):
                raise TransactionError(
                    f"cannot reopen {path!r} in this forked process: an LMDB object of the parent is "
                    "still alive here and this py-lmdb refuses a second environment; use the 'spawn' "
                    "or 'forkserver' start method"
                ) from exc
            raise


def keep_forever(obj: object) -> None:
    """Make sure `obj` is never freed, not even when the interpreter exits (see `ForkHandling`)."""
    if obj is not None:
        _kept_forever.append(obj)
        try:
            ctypes.pythonapi.Py_IncRef(ctypes.py_object(obj))
        except (AttributeError, OSError):  # pragma: no cover - not CPython
            pass


def open_past_inherited(path: str, kwargs: dict[str, Any]) -> lmdb.Environment:
    """Open an environment while inherited, never-to-be-used handles on its files live (fork child).

    py-lmdb refuses a second environment on one set of files in one process,
    because closing either would drop LMDB's fcntl locks for both. The handles
    this child inherited are kept forever (`keep_forever`): never used,
    closed or freed, and holding no fcntl lock here (those are not inherited).
    So the guard is safely passed, for this one open, by giving py-lmdb's file
    identity function a key of its own. If py-lmdb stops looking that function
    up, the guard refuses as before, and the caller reports it.
    """
    from lmdb import _envid

    original = getattr(_envid, ENV_KEYS_FUNCTION)
    setattr(_envid, ENV_KEYS_FUNCTION, lambda *args: (("objstore fork child", os.getpid(), path),))
    try:
        return lmdb.open(path, **kwargs)
    finally:
        setattr(_envid, ENV_KEYS_FUNCTION, original)


# ------------------------------------------------------------- at-fork hooks


class Registry(Protocol):
    """What the hooks need of the process's registry of environments (``_environment.REGISTRY``)."""

    lock: Any  # a threading.RLock; a child gets a fresh one

    @property
    def envs(self) -> Mapping[str, ForkHandling]: ...


_registry: list[Registry] = []


def watch(registry: Registry) -> None:
    """Handle fork for the environments of `registry` (the one registry, once, at import)."""
    _registry.append(registry)
    if hasattr(os, "register_at_fork"):
        os.register_at_fork(
            before=_before_fork, after_in_parent=_after_fork_in_parent, after_in_child=_after_fork_in_child
        )


def _watched() -> Registry:
    return _registry[0]


def _before_fork() -> None:
    for environment in list(_watched().envs.values()):
        if environment.pid == os.getpid() and environment.lmdb_env is not None:
            environment.before_fork()


def _after_fork_in_parent() -> None:
    for environment in list(_watched().envs.values()):
        environment.after_fork_in_parent()


def _after_fork_in_child() -> None:
    registry = _watched()
    registry.lock = threading.RLock()
    for environment in registry.envs.values():
        environment.forget()
    _lock.reset_after_fork()
    gc.collect()
