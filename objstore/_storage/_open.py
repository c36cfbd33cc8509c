"""Opening a store: what is at the path, the network filesystem check, the per-process registry."""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable
from typing import Any

import lmdb

from .. import _lock
from .._errors import NotAStoreError, ReadOnlyError, StoreError, StoreNotFoundError
from ._common import MAX_DBS, META_KEY, Options, translate
from ._environment import REGISTRY, _check_size, _Environment, _read_meta
from ._store import Store

_OWN_FILES = frozenset({"data.mdb", "lock.mdb", _lock.MAINTENANCE_LOCK, _lock.OPENERS_LOCK})
# Filesystem types on which LMDB's locks and shared memory map are not
# coherent between processes (LMDB's documentation: never use remote filesystems).
NETWORK_FILESYSTEMS = frozenset(
    {
        "nfs", "nfs4", "cifs", "smb3", "smbfs", "ncpfs", "afs", "9p", "ceph", "glusterfs", "lustre",
        "gpfs", "ocfs2", "gfs2", "davfs", "fuse.sshfs", "fuse.glusterfs", "fuse.cephfs", "fuse.s3fs",
        "fuse.gcsfuse", "fuse.rclone", "fuse.juicefs", "fuse.davfs2",
    }
)  # fmt: skip
_filesystem_types: dict[int, str] = {}


def _classify(path: str, flag: str) -> bool:
    """Return whether a store (a data file) exists at `path`; refuse what is not a store."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        if flag in "rw":
            raise StoreNotFoundError(
                errno.ENOENT, "no objstore store here; open it with flag 'c' to create one", path
            ) from None
        return False
    if not stat.S_ISDIR(st.st_mode):
        raise NotAStoreError(
            f"{path!r} is a file, not an objstore store (a store is a directory); "
            "pass the path of a store directory or of one to create"
        )
    try:
        data_size = os.stat(os.path.join(path, "data.mdb")).st_size
    except FileNotFoundError:
        data_size = 0
    if data_size > 0:  # an empty data.mdb is a creation interrupted before LMDB wrote it
        if not os.path.exists(os.path.join(path, _lock.OPENERS_LOCK)):
            # No objstore process ever opened it: make sure it is ours before
            # creating any file beside it.
            _peek(path, os.path.exists(os.path.join(path, "lock.mdb")))
        return True
    names = set(os.listdir(path))
    if flag in "rw":
        raise StoreNotFoundError(
            errno.ENOENT, "no objstore store in this directory; open it with flag 'c' to create one", path
        )
    if names - _OWN_FILES:
        raise NotAStoreError(
            f"{path!r} is a directory holding other files and no objstore store; "
            "refusing to create a store in it"
        )
    return False


def _peek(path: str, lock: bool) -> None:
    """Check, writing nothing, that a data file no objstore process has opened belongs to a store."""
    try:
        env = lmdb.open(path, readonly=True, lock=lock, create=False, max_dbs=MAX_DBS, map_size=0)
    except lmdb.Error as exc:
        if isinstance(exc, (lmdb.InvalidError, lmdb.VersionMismatchError)):
            raise NotAStoreError(f"{path!r} holds a data.mdb that is not an LMDB file ({exc})") from exc
        raise translate(exc, path, "open the store") from exc
    try:
        _check_size(env, path)
        with env.begin() as txn:
            raw = txn.get(META_KEY)
            if raw is None and txn.stat(env.open_db())["entries"]:
                raise NotAStoreError(
                    f"{path!r} is an LMDB environment that objstore did not create; refusing to modify it"
                )
        if raw is not None:
            _read_meta(raw, path)
    except lmdb.Error as exc:
        raise translate(exc, path, "open the store") from exc
    finally:
        env.close()


def filesystem_type(path: str) -> str:
    """The type of the filesystem holding `path` (Linux), or "" when the platform does not tell."""
    device = os.stat(path).st_dev
    if device not in _filesystem_types:
        wanted = f"{os.major(device)}:{os.minor(device)}"
        kind = ""
        try:
            with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as table:
                for line in table:
                    # "36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw"
                    fields, _, rest = line.partition(" - ")
                    if fields.split()[2:3] == [wanted]:
                        kind = rest.split()[0] if rest.split() else ""
        except OSError:
            pass
        _filesystem_types[device] = kind
    return _filesystem_types[device]


def check_filesystem(path: str, kind: str, options: Options) -> None:
    """Refuse a store on a filesystem of type `kind` where LMDB is unsafe, unless allowed."""
    if kind in NETWORK_FILESYSTEMS and not options.allow_network_fs:
        raise StoreError(
            f"{path!r} is on a network filesystem ({kind}): LMDB's locks and memory map are not "
            "coherent there, so concurrent use can corrupt the store. Put the store on a local disk, "
            "or pass allow_network_fs=True if only one process on one host will ever open it"
        )


def _open_environment(
    path: str,
    flag: str,
    options: Options,
    settings: dict[str, Any],
    check: Callable[[str, dict[str, Any]], None],
) -> _Environment:
    exists = _classify(path, flag)
    if not exists:
        os.makedirs(path, exist_ok=True)
    check_filesystem(path, filesystem_type(path), options)
    environment = _Environment(path, options, writable=flag != "r")
    try:
        environment.openers = _lock.OpenersLock(path, options.exclusive, options.timeout)
    except StoreError:
        raise
    except OSError as exc:
        if exc.errno not in _lock.UNWRITABLE:
            raise
        if flag != "r" or options.exclusive:
            raise ReadOnlyError(
                f"cannot open {path!r} for writing: its lock file cannot be created ({exc}); "
                "check the permissions, or open it with flag 'r'"
            ) from exc
    try:
        if exists:
            environment.open_lmdb(create=False)
        else:
            # Serialise creation so a racing opener never sees a half-made store.
            with _lock.maintenance(path, options.timeout):
                data_file = os.path.join(path, "data.mdb")
                created_meanwhile = os.path.exists(data_file) and os.path.getsize(data_file) > 0
                environment.open_lmdb(create=not created_meanwhile)
                environment.open_databases(flag, settings, check)
                return environment
        environment.open_databases(flag, settings, check)
        if flag != "r" and "format" not in environment.settings:  # pragma: no cover - defensive
            raise NotAStoreError(f"{path!r} is not an objstore store")
        return environment
    except BaseException:
        if environment.lmdb_env is not None:
            environment.lmdb_env.close()
        if environment.openers is not None:
            environment.openers.close()
        raise


def open_store(
    path: str,
    flag: str,
    options: Options,
    settings: dict[str, Any],
    check: Callable[[str, dict[str, Any]], None],
) -> Store:
    """Open (or create) the store at `path` and return a new handle on it.

    `settings` are recorded in the metadata of a newly created store; the
    settings of an existing store are in the handle's ``settings``, and are
    passed to `check` (which raises to refuse them) before anything is written.
    """
    if flag not in ("r", "w", "c", "n"):
        raise ValueError(f"flag must be one of 'r', 'w', 'c' or 'n', not {flag!r}")
    real = os.path.realpath(path)
    with REGISTRY.lock:
        environment = REGISTRY.envs.get(real)
        if environment is not None and environment.closed:
            # Closed while another thread's write transaction was open, which
            # closes it when it ends: the environment is still open, use it again.
            environment.closed = False
        if environment is not None and (environment.lmdb_env is None or environment.pid != os.getpid()):
            environment.reopen()  # inherited across fork: reopen it, do not open a second one
        if environment is None:
            environment = _open_environment(real, flag, options, settings, check)
            REGISTRY.envs[real] = environment
        else:
            _check_compatible(environment, flag, options)
            if flag == "n":
                environment.run(environment.empty, True, "empty the store")
        environment.handles += 1
    return Store(environment, readonly=flag == "r")


def _check_compatible(environment: _Environment, flag: str, options: Options) -> None:
    current = environment.options
    if flag != "r" and not environment.writable:
        raise ReadOnlyError(
            f"{environment.path!r} is already open read-only (flag 'r') in this process; close those "
            "shelves before opening it for writing"
        )
    if options.durability != current.durability:
        raise ValueError(
            f"{environment.path!r} is already open in this process with durability="
            f"{current.durability!r}; every shelf of a store in one process shares its durability"
        )
    if options.exclusive and not current.exclusive:
        raise ValueError(
            f"{environment.path!r} is already open in this process without lock='exclusive'; "
            "close those shelves before opening it exclusively"
        )
