"""Opening a store: what is at the path, the network filesystem check, the per-process registry."""

from __future__ import annotations

import errno
import os
import stat
import threading
from collections.abc import Callable
from typing import Any

import lmdb

from .. import _lock
from .._errors import NotAStoreError, ReadOnlyError, StoreError, StoreNotFoundError
from ._common import LOCK_FILE_SIZE, MAX_DBS, META_KEY, Options
from ._environment import REGISTRY, _check_size, _Environment, _read_meta
from ._errors import BackendError, disk_full, is_not_lmdb_file, translate
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
    except BackendError as exc:
        if is_not_lmdb_file(exc):
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
    except BackendError as exc:
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


def _os_error(exc: OSError, path: str, action: str, writing: bool) -> StoreError:
    """The objstore error for an `OSError` raised on the store's files while doing `action`."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return disk_full(path, action, exc)
    if exc.errno in _lock.UNWRITABLE:
        if writing:
            return ReadOnlyError(
                f"cannot {action}: {path!r} is not writable by this process ({exc}); check the "
                "permissions (and whether the filesystem is mounted read-only), or open it with flag 'r'"
            )
        return ReadOnlyError(
            f"cannot {action}: this user may not write the files of {path!r} ({exc}). Even reading "
            "needs write access to LMDB's lock file lock.mdb (its reader table) and to objstore.openers; "
            "ask the store's owner for group access (see mode= in docs/api.md)"
        )
    return StoreError(f"cannot {action} on {path!r}: {exc}")


def _directory_mode(mode: int) -> int:
    """The directory bits for file bits `mode`: search (x) wherever `mode` grants read."""
    return mode | ((mode & 0o444) >> 2)


def _lock_file_identity(st: os.stat_result) -> str:
    return f"lock.mdb {st.st_dev} {st.st_ino}"


def _prepare_lock_file(path: str, openers: _lock.OpenersLock | None, flag: str, mode: int) -> bool:
    """Make LMDB's ``lock.mdb`` safe to map, and refuse one deleted or replaced under live openers.

    Runs before this process opens the environment (opening and closing
    ``lock.mdb`` later would drop LMDB's fcntl locks). A lone opener creates
    the file if missing and allocates its full size for real, so that LMDB
    never touches a sparse page on a full filesystem (SIGBUS); it records the
    file's identity for the openers that come while it is open. Others only
    check it: recreating ``lock.mdb`` while processes use the old one would
    give two reader tables and two writer mutexes.

    Returns whether LMDB will read without locks (a read-only filesystem).
    """
    lock_path = os.path.join(path, "lock.mdb")
    alone = openers is None or openers.alone
    cloexec = getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(lock_path, os.O_RDWR | cloexec | (os.O_CREAT if alone else 0), mode)
    except FileNotFoundError:
        raise _split(path, "was deleted") from None
    except OSError as exc:
        if exc.errno == errno.EROFS and flag == "r":
            _check_nobody_writes(path, openers)
            return True  # LMDB reads without locks here
        raise _os_error(exc, path, "open the store", writing=flag != "r") from exc
    try:
        st = os.fstat(fd)
        identity = _lock_file_identity(st)
        if not alone:
            recorded = openers.recorded() if openers is not None else ""
            if recorded and recorded != identity:
                raise _split(path, "was replaced (deleted and created again)")
            return False
        size = max(st.st_size, LOCK_FILE_SIZE)
        if st.st_blocks * 512 < size and hasattr(os, "posix_fallocate"):
            try:
                os.posix_fallocate(fd, 0, size)
            except OSError as exc:
                if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                    raise disk_full(path, "open the store", exc) from exc
                if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
                    raise _os_error(exc, path, "open the store", writing=flag != "r") from exc
        if openers is not None:
            openers.record(identity)
        return False
    finally:
        os.close(fd)


def _split(path: str, what: str) -> StoreError:
    pids = [pid for pid in _lock.holders(os.path.join(path, _lock.OPENERS_LOCK)) if pid != os.getpid()]
    who = f" (process {', '.join(map(str, pids))})" if pids else ""
    return StoreError(
        f"cannot open {path!r}: its LMDB lock file lock.mdb {what} while other processes{who} have the "
        "store open. Opening it now would give two reader tables and two writer locks, and writers "
        "would no longer exclude each other. Close every process using the store, then open it again; "
        "never delete lock.mdb while the store is in use"
    )


def _check_nobody_writes(path: str, openers: _lock.OpenersLock | None) -> None:
    """Refuse lock-free reading (read-only filesystem) while other processes have the store open."""
    pids = {pid for pid in _lock.holders(os.path.join(path, "lock.mdb")) if pid != os.getpid()}
    if openers is not None and not openers.alone:
        pids.update(pid for pid in _lock.holders(openers.path) if pid != os.getpid())
        pids.add(-1)
    if pids:
        known = sorted(pid for pid in pids if pid > 0)
        who = f" (process {', '.join(map(str, known))})" if known else ""
        raise StoreError(
            f"cannot open {path!r}: it is on a read-only filesystem, where LMDB reads without locks, "
            f"and other processes{who} have it open, maybe writing; lock-free reads would see torn "
            "data. Read it through a writable mount of the same filesystem, or only when nobody "
            "uses the store (lock-free reading is safe only for a store nobody writes)"
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
        try:
            os.makedirs(path, _directory_mode(options.mode), exist_ok=True)
            _lock.create(os.path.join(path, _lock.MAINTENANCE_LOCK), options.mode)
        except OSError as exc:
            raise _os_error(exc, path, "create the store", writing=True) from exc
    check_filesystem(path, filesystem_type(path), options)
    environment = _Environment(path, options, writable=flag != "r")
    try:
        reading = flag == "r" and not options.exclusive
        openers = _lock.OpenersLock(path, options.exclusive, options.timeout, options.mode, reading)
        environment.openers = openers
    except StoreError:
        raise
    except OSError as exc:
        if exc.errno not in _lock.UNWRITABLE or flag != "r" or options.exclusive:
            raise _os_error(exc, path, "open the store", writing=flag != "r") from exc
        # A read-only filesystem where no objstore process ever opened the store.
    try:
        lock_free = _prepare_lock_file(path, environment.openers, flag, options.mode)
        if lock_free and environment.openers is not None:
            # Other lock-free readers must not see this one as an opener that may write.
            environment.openers.close()
            environment.openers = None
        if environment.openers is not None:
            environment.openers.share(options.timeout)
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
    if not path:
        raise ValueError("the path of a store must not be empty; pass a directory, e.g. 'data/store'")
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
            _check_not_open_elsewhere(real)
            environment = _open_environment(real, flag, options, settings, check)
            REGISTRY.envs[real] = environment
        else:
            _check_compatible(environment, flag, options)
            check(real, environment.settings)  # this opener's own settings (a signed store's secret)
            if flag == "n":
                joined = environment.writers.get(threading.get_ident())
                if joined is not None:
                    joined.clear()  # inside this thread's transaction: its rollback undoes it
                else:
                    environment.run(environment.empty, True, "empty the store")
        environment.handles += 1
    return Store(environment, readonly=flag == "r")


def _check_not_open_elsewhere(path: str) -> None:
    """Refuse a store this process has open under another path (a bind mount, a hard-linked directory).

    Opening its ``lock.mdb`` again, even only to check it, would drop this
    process's LMDB locks on it when closed.
    """
    try:
        st = os.stat(path)
    except OSError:
        return
    for other in REGISTRY.envs:
        try:
            same = os.path.samestat(st, os.stat(other))
        except OSError:
            continue
        if same:
            raise StoreError(
                f"{path!r} is the store {other!r}, which this process already has open under that "
                "path; open it through one path only"
            )


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
