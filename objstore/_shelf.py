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
and only the entries whose pickle changed (the `Writeback` strategy, in
`_writeback`).

Keys are encoded as UTF-8 and kept in sorted (code point) order, which the
range methods (``iterkeys``, ``iteritems``, ``first``, ``last``) expose. Keys
of any length are accepted (`_keys` says how long ones are stored). Only
writes refuse a key that cannot be one (empty, not valid Unicode); lookups
answer "absent".

This module owns `Shelf` and `open`: opening a store with this version's
settings, the lifecycle (close, the finaliser, pickling a shelf, the exit hook
that closes every open shelf) and the shelf's snapshots. The dict face itself
is `_reader` and `_writer`'s. It must never use the storage beyond the
`Storage` protocol and `open_store`.
"""

from __future__ import annotations

import atexit
import os
import sys
import warnings
import weakref
from collections.abc import Callable, Mapping
from typing import Any

from ._compress import DEFAULT_COMPRESS_ABOVE
from ._errors import SHELF_CLOSED, ClosedError, UnsupportedFormatError
from ._keys import KEY_ENCODING
from ._reader import CLOSED_SHELF_PICKLED, Snapshot, _Closed
from ._records import CRC_IMPLEMENTATION
from ._restrict import Allowlist, restricted
from ._serialize import Codec, Pickler, Unpickler, _add_note
from ._sign import SIGNED_VALUE_FORMAT, Signer, secret_bytes, signed_settings, store_signer
from ._signed import SignedCodec
from ._storage import DEFAULT_MAP_SIZE, Options, closing_at_exit, open_store
from ._version import __version__
from ._writeback import Writeback
from ._writer import Transaction, _Writer

__all__ = ["Shelf", "Snapshot", "Transaction", "open"]

VALUE_FORMAT = 1

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
        Without them, whatever ``objstore.Pickler``/``objstore.Unpickler``
        are at each read and write (as ``shelve`` up to Python 3.14).
    serializer, deserializer
        Functions replacing pickling, as in ``shelve`` (Python 3.15):
        ``serializer(obj, protocol)`` returns bytes, ``deserializer(data)``
        the object. Given together; not with `pickler`/`unpickler`.
    compression
        ``None`` (default), ``"zlib"`` or ``"zstd"`` (``objstore[zstd]``):
        compress values whose pickle is longer than `compress_above` bytes
        (default 2048), when that makes them smaller. Each record says how
        it is stored, so any setting reads every record.
    allow
        Restrict what values may import: ``None`` (default) allows anything
        (pickle's own behaviour); otherwise only the safe set of data types
        plus the classes, functions, modules and dotted names given (``()``:
        the safe set alone). A value naming anything else raises
        `ForbiddenGlobalError` before any of it runs. See docs/security.md.
    aliases
        Old names to new names (``{"old.mod.Name": "new.mod.Name",
        "old.mod": "new.mod"}``) for classes and modules moved since the
        values were written; applied before ``allow`` checks the new name.
    allow_network_fs
        Open a store on a network filesystem (NFS, SMB, ...) anyway. LMDB's
        locking is not coherent there: only safe when one process on one
        host ever opens the store.
    mode
        Permission bits of the files a new store creates (default ``0o666``,
        filtered by the umask, as in ``dbm.open``); the directory gets them
        plus search where they grant read. ``0o660`` shares it with a group.
    secret
        Bytes (or a str, taken as UTF-8) of at least 16 bytes: a new store is
        created *signed* with it, and a signed store opens only with it.
        Every value of a signed store is signed, and a value whose signature
        does not match is refused before it is unpickled (`SignatureError`).
        Never stored in the store; a pickled shelf carries it.
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
        pickler: type[Pickler] | type[Any] | None = None,
        unpickler: type[Unpickler] | type[Any] | None = None,
        allow: Any = None,
        aliases: Mapping[str, str] | None = None,
        allow_network_fs: bool = False,
        mode: int = 0o666,
        serializer: Callable[[Any, int], Any] | None = None,
        deserializer: Callable[[bytes], Any] | None = None,
        compression: str | None = None,
        compress_above: int = DEFAULT_COMPRESS_ABOVE,
        secret: bytes | str | None = None,
    ) -> None:
        if lock not in ("shared", "exclusive"):
            raise ValueError(f"lock must be 'shared' or 'exclusive', not {lock!r}")
        if deserializer is not None and (allow is not None or aliases):
            raise TypeError("allow= and aliases= restrict unpickling, which a deserializer replaces")
        # Normalised now, so that a bad entry is refused before the store is touched.
        allowlist = None if allow is None else Allowlist.of(allow)
        loader = restricted(unpickler, allowlist, aliases)
        aliases = dict(aliases) if aliases else None  # checked by restricted()
        coding: dict[str, Any] = {
            "serializer": serializer,
            "deserializer": deserializer,
            "compression": compression,
            "compress_above": compress_above,
        }
        codec = Codec(protocol, pickler, loader, **coding)
        secret_key = None if secret is None else secret_bytes(secret)
        signers: list[Signer | None] = []

        def check(path: str, settings: dict[str, Any]) -> None:
            _check_settings(path, settings)
            signers.append(store_signer(path, settings, secret_key))  # before "n" empties the store

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
            {
                "key_encoding": KEY_ENCODING,
                "value_format": VALUE_FORMAT,
                "created_by": _created_by(),
                **({} if secret_key is None else signed_settings(secret_key)),
            },
            check,
        )
        signer = signers[-1]
        if signer is not None:
            codec = SignedCodec(signer, protocol, pickler, loader, **coding)
        self._secret = secret_key
        super().__init__(store, codec)
        self._flag = flag
        self._options = options
        self._loading = {"unpickler": unpickler, "allow": allowlist, "aliases": aliases}
        self._path = store.path
        self._snapshots: weakref.WeakValueDictionary[int, Snapshot] = weakref.WeakValueDictionary()
        if writeback:
            # A strategy the dict face hands itself to, not another class: any
            # subclass gets writeback, and its overrides reach the cache
            # through super(), as every other method.
            self._writeback = Writeback()
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

    def snapshot(self, zero_copy: bool = False) -> Snapshot:
        """Return a read-only, consistent view of the whole store; use it in a ``with`` block.

        ::

            with db.snapshot() as snap:
                total = sum(snap[k]["amount"] for k in snap)

        With ``zero_copy=True``, large out-of-band buffers (NumPy arrays,
        bytearrays, memoryviews) are returned as read-only views into the
        store's memory map, not copied and not checked; each view keeps the
        snapshot's pages alive until it is released, even after the snapshot
        is closed (see docs/large-values.md).
        """
        snap = Snapshot(self._source.read(zero_copy), self._codec, zero_copy)
        self._snapshots[id(snap)] = snap
        return snap

    def sync(self) -> None:
        """Write back the writeback cache and flush committed data to disk, whatever the durability."""
        self._write_back()
        self._source.sync()

    def _write_back(self) -> None:
        writeback = self._writeback
        if writeback is None:
            return
        try:
            writeback.write_back(self._source, self._codec)
        except Exception as exc:
            if not self.closed:
                count = len(writeback.entries)
                _add_note(
                    exc,
                    f"writing back the writeback cache failed: its {count} "
                    f"entr{'y' if count == 1 else 'ies'} are kept and the shelf is still open; "
                    "fix the cause (e.g. free disk space), then call sync() or close() again",
                )
            raise

    def info(self) -> dict[str, Any]:
        """Facts about the store: settings it was created with, entries, sizes, readers."""
        return {**self._source.info(), "crc32": CRC_IMPLEMENTATION}

    def close(self) -> None:
        """Write back the cache, flush and release the store. Idempotent; later use raises `ClosedError`."""
        source = self._source
        if isinstance(source, _Closed):
            return
        self._write_back()  # if this raises, the shelf stays open, its cache intact
        try:
            self.sync()
        finally:
            self._bind(_Closed(SHELF_CLOSED))
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
        if self._writeback is not None:
            self._writeback.entries.clear()
        try:
            Shelf.close(self)
        except Exception:
            pass

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"flag={self._flag!r}"
        extra = ", writeback=True" if self._writeback is not None else ""
        return f"<objstore.Shelf path={self._path!r} {state}{extra}>"

    def __reduce__(self) -> tuple[Any, ...]:
        # A shelf travels as its path and options; the receiver opens its own
        # handles. "n" must not empty the store again, so it reopens as "c".
        if self.closed:
            raise ClosedError(CLOSED_SHELF_PICKLED)
        options = self._options
        kwargs: dict[str, Any] = {
            "durability": options.durability,
            "lock": "exclusive" if options.exclusive else "shared",
            "timeout": options.timeout,
            "map_size": options.map_size,
            "pickler": self._codec.pickler,
            **self._loading,
            "allow_network_fs": options.allow_network_fs,
            "mode": options.mode,
            "serializer": self._codec.serializer,
            "deserializer": self._codec.deserializer,
            "compression": self._codec.compression,
            "compress_above": self._codec.compress_above,
        }
        if self._secret is not None:
            kwargs["secret"] = self._secret  # so the pickle of a signed shelf holds its secret
        flag = "c" if self._flag == "n" else self._flag
        return (_reopen, (self._path, flag, self._codec.protocol, self._writeback is not None, kwargs))


def _reopen(path: str, flag: str, protocol: int, writeback: bool, kwargs: dict[str, Any]) -> Shelf:
    return Shelf(path, flag, protocol, writeback, **kwargs)


def _created_by() -> str:
    return f"objstore {__version__}"


def _check_settings(path: str, settings: dict[str, Any]) -> None:
    """Refuse a store whose keys or records this version cannot read (before "n" empties it)."""
    value_format = settings.get("value_format", VALUE_FORMAT)
    known = SIGNED_VALUE_FORMAT if "signature" in settings else VALUE_FORMAT
    if settings.get("key_encoding", KEY_ENCODING) != KEY_ENCODING or not (
        isinstance(value_format, int) and value_format <= known
    ):
        raise UnsupportedFormatError(
            f"{path!r} was created with settings this objstore does not understand ({settings}); "
            "upgrade objstore to open it"
        )


def _report_not_closed(shelf: Shelf, exc: BaseException) -> None:
    """Say on stderr that `shelf` could not be closed where nobody can be told otherwise (exit, finaliser)."""
    lost = len(shelf._writeback.entries) if shelf._writeback is not None else 0
    what = f"; {lost} cached entr{'y was' if lost == 1 else 'ies were'} not written back" if lost else ""
    try:
        print(
            f"objstore: could not close the shelf at {shelf.path!r}{what}: {type(exc).__name__}: {exc}",
            file=sys.stderr,
        )
    except Exception:
        pass  # no stderr left to write to


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
    ``allow``, ``aliases``, ``allow_network_fs``, ``mode``, ``serializer``,
    ``deserializer``, ``compression``, ``compress_above`` and ``secret``.
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
