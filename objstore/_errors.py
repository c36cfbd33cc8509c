"""The exception tree of objstore.

Every exception objstore raises on its own account derives from `Error`, and
each also derives from the builtin exception a ``shelve`` or ``dbm`` user would
already catch, so existing ``except`` clauses keep working::

    Error(Exception)
    ├── ClosedError(Error, ValueError)            shelf, transaction or snapshot used after close
    ├── TransactionError(Error, RuntimeError)     a transaction or snapshot used where it cannot be
    │   └── ConflictError                         a transaction could not be resumed after map growth
    ├── ForbiddenGlobalError(Error, pickle.UnpicklingError)  a restricted load met a global not allowed
    └── StoreError(Error, OSError)                the store cannot be opened or used
        ├── StoreNotFoundError(FileNotFoundError) flag "r"/"w" and no store at the path
        ├── NotAStoreError                        the path holds something that is not an objstore store
        ├── UnsupportedFormatError                written by a newer objstore
        ├── CorruptError                          damaged data file or damaged value record
        ├── SignatureError                        signed store: a value or the secret fails its check
        ├── ReadOnlyError                         write through a read-only shelf or store
        └── LockTimeoutError(TimeoutError)        a file lock was not acquired in time

Programmer errors use plain builtins: `KeyError` for a missing key, `TypeError`
for a key that is not a ``str``, `ValueError` for a bad flag, protocol or key
length. Pickling errors stay pickle's own, with a note naming the key. No
exception of the ``lmdb`` package ever reaches a caller: the storage layer
translates them, keeping the original as ``__cause__``.
"""

from __future__ import annotations

import pickle

__all__ = [
    "SHELF_CLOSED",
    "ClosedError",
    "ConflictError",
    "CorruptError",
    "Error",
    "ForbiddenGlobalError",
    "LockTimeoutError",
    "NotAStoreError",
    "ReadOnlyError",
    "SignatureError",
    "StoreError",
    "StoreNotFoundError",
    "TransactionError",
    "UnsupportedFormatError",
]

# What a closed shelf says when used: the shelf and its storage both say it, so it is defined here.
SHELF_CLOSED = "the shelf is closed"


class Error(Exception):
    """Base class of every exception objstore raises on its own account."""


class ClosedError(Error, ValueError):
    """The shelf, transaction or snapshot was used after it was closed.

    A `ValueError`, like operations on a closed ``shelve.Shelf`` or file.
    """


class TransactionError(Error, RuntimeError):
    """A transaction or snapshot was used where it cannot be.

    Raised when a transaction is used from a thread other than the one that
    opened it (LMDB write transactions belong to their thread), or when a
    snapshot was invalidated because this thread had to grow the store while
    the snapshot was open.
    """


class ConflictError(TransactionError):
    """A transaction had to be rolled back and could not be resumed.

    When a transaction runs out of map space, objstore rolls it back, grows the
    map and replays the transaction's writes. If another process committed in
    that moment, the reads the transaction already made may be stale, so it is
    rolled back instead and this error is raised: run the transaction again.
    """


class ForbiddenGlobalError(Error, pickle.UnpicklingError):
    """A restricted load met a global (a class or function named by the pickle) it does not allow.

    Raised by `RestrictedUnpickler.find_class` (shelves opened with ``allow=``)
    before the global is imported or anything of it runs. `name` is the
    global, as ``"module.qualname"`` after any alias; `key` is the key whose
    value was being read (None outside a shelf). An
    ``pickle.UnpicklingError``, as any other refusal of a ``find_class``.
    """

    def __init__(self, name: str, key: str | None = None) -> None:
        super().__init__(name)
        self.name = name
        self.key = key

    def __str__(self) -> str:
        # Built when shown, not when raised: the codec learns the key only after
        # the unpickler raised (see add_key_note in _serialize).
        where = "a pickle" if self.key is None else f"the value of key {self.key!r}"
        return (
            f"{where} names the global {self.name!r}, which this load does not allow, so it was "
            f"not loaded and nothing of it ran; if you trust it, add {self.name!r} to allow= "
            "(see docs/security.md)"
        )

    def __reduce__(self) -> tuple[type[ForbiddenGlobalError], tuple[str, str | None], dict[str, object]]:
        return (type(self), (self.name, self.key), self.__dict__)


class StoreError(Error, OSError):
    """The store cannot be opened or used.

    An `OSError`, like ``dbm.error``, so ``except OSError`` written for
    ``shelve`` keeps working.
    """


class StoreNotFoundError(StoreError, FileNotFoundError):
    """Flag ``"r"`` or ``"w"`` was given and no store exists at the path."""


class NotAStoreError(StoreError):
    """The path holds a file, a directory or an LMDB environment that is not an objstore store.

    Nothing at the path is modified.
    """


class UnsupportedFormatError(StoreError):
    """The store, or one of its records, was written by a newer objstore.

    Upgrade objstore to read it. Nothing is modified.
    """


class CorruptError(StoreError):
    """The data file or a value record is damaged.

    For a damaged record, `key` names the key whose value failed its integrity
    check; the other keys remain readable.
    """

    def __init__(self, message: str, key: str | None = None) -> None:
        super().__init__(message)
        self.key = key

    def __reduce__(self) -> tuple[type[CorruptError], tuple[str, str | None], dict[str, object]]:
        return (type(self), (str(self), self.key), self.__dict__)


class SignatureError(StoreError):
    """A signed store refused a value, or the secret it was opened with.

    Raised when a value record of a signed store holds no signature, or one
    that does not match its key and bytes under the store's secret: it was
    not written by a holder of the secret, was moved from another key, or was
    altered. Nothing was unpickled; `key` names the key. Also raised at open
    (with `key` None) for a wrong secret, a signed store opened without one,
    or an unsigned store opened with one.
    """

    def __init__(self, message: str, key: str | None = None) -> None:
        super().__init__(message)
        self.key = key

    def __reduce__(self) -> tuple[type[SignatureError], tuple[str, str | None], dict[str, object]]:
        return (type(self), (str(self), self.key), self.__dict__)


class ReadOnlyError(StoreError):
    """A write through a shelf opened with flag ``"r"``, or to a store this process cannot write."""


class LockTimeoutError(StoreError, TimeoutError):
    """A file lock of the store was not acquired within the timeout.

    `lock_file` names the lock and `holders` lists the ids of the processes
    known to hold it (empty when the platform cannot tell).
    """

    def __init__(self, message: str, lock_file: str = "", holders: tuple[int, ...] = ()) -> None:
        super().__init__(message)
        self.lock_file = lock_file
        self.holders = holders

    def __reduce__(
        self,
    ) -> tuple[type[LockTimeoutError], tuple[str, str, tuple[int, ...]], dict[str, object]]:
        return (type(self), (str(self), self.lock_file, self.holders), self.__dict__)
