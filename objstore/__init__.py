"""objstore: a shelve-style persistent object store on LMDB.

Values are pickled by objstore's `Pickler`/`Unpickler` and kept under ``str``
keys in an LMDB environment, behind `Shelf`, a dict-like mapping that many
threads and processes can use at once::

    import objstore

    with objstore.open("state") as db:
        db["config"] = {"retries": 3}
        with db.edit("seen", default=set()) as seen:
            seen.add("alice")

See ``docs/`` for the API, concurrency model, on-disk format and durability.
"""

from ._errors import (
    ClosedError,
    ConflictError,
    CorruptError,
    Error,
    ForbiddenGlobalError,
    LockTimeoutError,
    NotAStoreError,
    ReadOnlyError,
    SignatureError,
    StoreError,
    StoreNotFoundError,
    TransactionError,
    UnsupportedFormatError,
)
from ._refs import Ref
from ._restrict import Allowlist, RestrictedUnpickler, Unreadable
from ._serialize import Pickler, Unpickler, dumps, loads
from ._shelf import Shelf, Snapshot, Transaction, open
from ._version import __version__ as __version__

__all__ = [
    "Allowlist",
    "ClosedError",
    "ConflictError",
    "CorruptError",
    "Error",
    "ForbiddenGlobalError",
    "LockTimeoutError",
    "NotAStoreError",
    "Pickler",
    "ReadOnlyError",
    "Ref",
    "RestrictedUnpickler",
    "Shelf",
    "SignatureError",
    "Snapshot",
    "StoreError",
    "StoreNotFoundError",
    "Transaction",
    "TransactionError",
    "Unpickler",
    "Unreadable",
    "UnsupportedFormatError",
    "dumps",
    "loads",
    "open",
]
