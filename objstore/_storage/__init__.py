"""LMDB storage: the only package that imports ``lmdb``.

Bytes in, bytes out. This package owns opening and creating stores (flags,
what is at the path, the metadata record, damage checks), the per-process
registry of environments, transactions, fork handling, map growth and the
translation of every ``lmdb`` exception into an objstore one.

It must never:

- see an unpickled object (keys arrive encoded, values are opaque records);
- call anything on an LMDB object inherited across ``fork()``: in a child,
  ``close()`` or ``abort()`` on the parent's handles silently corrupts the
  parent's open snapshot, so the child drops them unclosed and reopens;
- hold a read transaction while caller code runs (except inside a snapshot
  the caller opened): every single operation and every iteration batch uses
  its own short transaction and copies the bytes out;
- open a second environment on a path this process already has open (py-lmdb
  refuses), delete or recreate a store's files, or open ``lock.mdb`` while this
  process has the environment open (closing it would drop LMDB's fcntl locks;
  before opening, ``_open`` allocates it and checks its identity);
- let an ``lmdb`` exception escape.

On disk a store is a directory::

    data.mdb          LMDB data file: keys, values and the metadata record
    lock.mdb          LMDB reader table and writer mutex (allocated in full)
    objstore.lock     maintenance lock (create, initialise, grow)
    objstore.openers  lock held by every process that has the store open;
                      holds the identity of the lock.mdb in use

Concurrency model, in short: LMDB gives many concurrent readers and one
writer at a time across processes. Within a process, a write transaction
belongs to its thread; operations a thread makes while it holds one join it.
Growing the map needs no open transaction in the process, so long-lived
transactions (snapshots, user transactions) register themselves and a grower
waits for them; single operations are short and simply retried.
Closing frees LMDB objects only once no other thread is inside them (read
from the threads' stacks, so the hot paths pay nothing) and leaves other
threads' write transactions to end in their own thread; every piece of
bookkeeping after a commit or an abort is ordered so that a
``KeyboardInterrupt`` at any point leaves state that is over or repaired.

Modules, each importing only those listed after it (``tests/test_storage_layers.py``
checks it):

- ``_open``: opening and creating stores: what is at the path, the network
  filesystem check, ``lock.mdb``, the registry lookup; `open_store`;
- ``_store``: `Store`, the handle a shelf holds: single operations, each in
  its own short transaction or joining this thread's write transaction;
- ``_interface``: the protocols of a backend (`Storage`, its transactions), all
  a shelf may use;
- ``_environment``: the one environment per path per process and `REGISTRY`:
  opening LMDB, the metadata record, retries, writers, closing;
- ``_fork``: fork handling (hold writers off, forget, reopen past py-lmdb's
  guard, keep-alive, the at-fork hooks), a part of the environment;
- ``_growth``: map growth and the long-lived transactions a resize waits
  for, a part of the environment;
- ``_transactions``: snapshots and write transactions with replay;
- ``_views``: views into the map: batches read in place, the pinned views of
  zero-copy snapshots;
- ``_errors``: the seam for backend errors: translation into objstore's
  exceptions, what to do about each, every look at message text, the
  closed-state messages;
- ``_common``: settings, limits, `Options`, primitives on an lmdb transaction.
"""

from ._common import (
    BATCH_BYTES,
    BATCH_ITEMS,
    DEFAULT_MAP_SIZE,
    DURABILITY,
    MAX_KEY_SIZE,
    Chunk,
    Options,
    Value,
)
from ._environment import closing_at_exit
from ._interface import ReadTransaction, Source, Storage, Writable, WriteTransaction
from ._open import filesystem_type, open_store
from ._store import Store

__all__ = [
    "BATCH_BYTES",
    "BATCH_ITEMS",
    "Chunk",
    "DEFAULT_MAP_SIZE",
    "DURABILITY",
    "MAX_KEY_SIZE",
    "Options",
    "ReadTransaction",
    "Source",
    "Storage",
    "Store",
    "Value",
    "Writable",
    "WriteTransaction",
    "closing_at_exit",
    "filesystem_type",
    "open_store",
]
