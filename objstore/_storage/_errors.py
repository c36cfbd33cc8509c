"""The one seam between ``lmdb``'s exceptions and objstore's.

This module owns everything about backend errors:

- which ``lmdb`` exception classes exist for the rest of the storage: other
  modules catch `BackendError` (any ``lmdb`` exception) and the two that
  steer control flow, `MapFull` (grow the map and replay) and `MapResized`
  (adopt the size another process grew the map to), and name no ``lmdb``
  class themselves;
- `translate`: the objstore exception (from ``objstore._errors``) a caller
  sees for an ``lmdb`` exception, with what to do about it;
- `remedy`: what an operation does to make another attempt possible, and
  `is_transient`, what a concurrent map resize in this process does to a
  transaction;
- every look at an exception's message text: py-lmdb raises one class for
  several causes, so telling some of them apart needs its text. That text is
  py-lmdb's or the OS's, never objstore's: objstore's own errors are told
  apart by their types;
- the messages of the closed state, each defined once.

It must never decide anything beyond an exception's meaning (retry loops,
growth and reopening belong to their modules), nor let an ``lmdb`` exception
through `translate`.
"""

from __future__ import annotations

import enum

import lmdb

from .._errors import (
    ClosedError,
    CorruptError,
    ReadOnlyError,
    StoreError,
    UnsupportedFormatError,
)
from ._common import MAX_READERS

BackendError = lmdb.Error  # the base class of everything the backend raises
MapFull = lmdb.MapFullError  # the transaction needs more map: it is dead; grow and replay it
MapResized = lmdb.MapResizedError  # another process grew the map: adopt its size, then begin again

# The closed state. Messages that name an action read "cannot <action>: <message>".
STORE_CLOSED = "the store was closed"
STORE_CLOSED_MEANWHILE = "the store was closed meanwhile"
TXN_CLOSED = "the transaction or snapshot is closed"
CLOSED_UNDER_TXN = "the store was closed while this transaction or snapshot was open"


def closed(message: str, action: str | None = None) -> ClosedError:
    """The `ClosedError` with one of the closed-state messages, for `action` if given."""
    return ClosedError(message if action is None else f"cannot {action}: {message}")


class Remedy(enum.Enum):
    """What makes another attempt possible after a backend error (see `remedy`)."""

    ADOPT_SIZE = "adopt the map size another process set"
    GROW = "grow the map"
    CHECK_READERS = "free the reader slots of dead processes"
    WAIT = "wait a moment: a resize in this process is ending the transaction"
    NONE = "nothing: report it"


def remedy(exc: BaseException) -> Remedy:
    """What to do before trying again an operation that raised the backend error `exc`."""
    if isinstance(exc, lmdb.MapResizedError):
        return Remedy.ADOPT_SIZE
    if isinstance(exc, lmdb.MapFullError):
        return Remedy.GROW
    if isinstance(exc, lmdb.ReadersFullError):
        return Remedy.CHECK_READERS
    if is_transient(exc):
        return Remedy.WAIT
    return Remedy.NONE


def is_transient(exc: BaseException) -> bool:
    """Whether `exc` is what a concurrent map resize in this process does to a transaction."""
    if isinstance(exc, lmdb.InvalidParameterError):
        return True
    return isinstance(exc, lmdb.Error) and "closed/deleted/dropped" in str(exc)


def is_already_open(exc: BaseException) -> bool:
    """Whether `exc` is py-lmdb refusing a second environment on files this process has open."""
    # py-lmdb raises its base class for this, so only the text tells it apart.
    return type(exc) is lmdb.Error and "already open" in str(exc)


def is_not_lmdb_file(exc: BaseException) -> bool:
    """Whether `exc`, raised opening a data file, says the file is not LMDB's (or not this LMDB's)."""
    return isinstance(exc, (lmdb.InvalidError, lmdb.VersionMismatchError))


def translate(exc: BaseException, path: str, action: str) -> BaseException:
    """Return the objstore exception for an ``lmdb`` exception raised while doing `action`."""
    text = str(exc)
    if isinstance(exc, lmdb.ReadonlyError):
        return ReadOnlyError(
            f"cannot {action}: the store {path!r} is not writable by this process ({exc}); "
            "check its permissions, or open it with flag 'r' to read it"
        )
    if "Permission denied" in text:
        return ReadOnlyError(
            f"cannot {action}: this user may not write the files of {path!r} ({exc}). Even reading "
            "needs write access to LMDB's lock file lock.mdb (its reader table); ask the store's owner "
            "for group access (see mode= in docs/api.md)"
        )
    if isinstance(exc, lmdb.ReadersFullError):
        return StoreError(
            f"cannot {action}: all {MAX_READERS} reader slots of {path!r} are in use (the limit). Each "
            "open snapshot and each read in progress holds one, in every process: close your snapshots "
            "(use them in with-blocks) and end processes that hold many"
        )
    if isinstance(exc, lmdb.BadValsizeError):
        return ValueError(f"cannot {action}: key or value size is outside LMDB's limits ({exc})")
    if isinstance(exc, (lmdb.CorruptedError, lmdb.PageNotFoundError, lmdb.PanicError, lmdb.InvalidError)):
        return CorruptError(
            f"cannot {action}: the data file of {path!r} is damaged ({exc}); restore it from a backup"
        )
    if isinstance(exc, lmdb.VersionMismatchError):
        return UnsupportedFormatError(
            f"cannot {action}: {path!r} was written by another LMDB version ({exc})"
        )
    if isinstance(exc, lmdb.LockError):
        return StoreError(
            f"cannot {action}: LMDB's lock file of {path!r} cannot be used ({exc}); this happens on "
            "network filesystems and between containers that do not share a PID namespace"
        )
    if "No space" in text or "Disk quota" in text:
        return disk_full(path, action, exc)
    if isinstance(exc, lmdb.DiskError) or "Input/output error" in text:
        return StoreError(
            f"cannot {action}: writing {path!r} failed ({exc}); the disk may be full. Nothing of the "
            "failed transaction was stored"
        )
    return StoreError(f"cannot {action} on {path!r}: {exc}")


def disk_full(path: str, action: str, exc: BaseException) -> StoreError:
    """The error for a write that failed because the filesystem of `path` is full."""
    return StoreError(
        f"cannot {action}: the disk holding {path!r} is full ({exc}). Free some space and try again; "
        "nothing of the failed operation was stored"
    )
