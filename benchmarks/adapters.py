"""One adapter per system under test, all with the same small interface.

An adapter opens a store under its own directory and exposes the operations
the workloads time. The per-operation callables (`get`, `set`, `delete`) are
bound when the store is opened and are, wherever the system allows, the
system's own bound methods (``Shelf.__getitem__``...), so the harness adds no
call layer to a system that the floor does not also pay.

The floor is the straightforward raw code a user would write with ``lmdb`` and
``pickle`` and objstore's own LMDB settings: one short read transaction per
get, one write transaction per single write, one for a bulk write.
"""

from __future__ import annotations

import importlib
import os
import pickle
import shelve
import sys
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import lmdb

import objstore

# objstore's LMDB settings (objstore/_storage/): keys in the main database,
# max_dbs=4, max_readers=1024, lib_version=0 at creation. The floor keeps
# max_spare_txns=0, what naive code gets: objstore reuses one read transaction
# (max_spare_txns=1, made fork-safe), which is part of what it is measured on.
FLOOR_MAP_SIZE = 1 << 30  # objstore's default initial map size on 64-bit
MODES_SECRET = b"benchmark secret, 32 bytes long!"
LMDB_DURABILITY = {
    "full": {"sync": True, "metasync": True},
    "normal": {"sync": True, "metasync": False},
    "off": {"sync": False, "metasync": False},
}


class Adapter:
    """A system under test: open/close a store in `root`, and the operations workloads time.

    Subclasses set the class attributes that describe the system and, in
    `open`, bind `get`, `set` and `delete`:

    - ``get(key)`` returns the value, or raises `KeyError`;
    - ``set(key, value)`` stores one value in its own transaction (committed on return);
    - ``delete(key)`` removes one key in its own transaction, or raises `KeyError`.
    """

    family = ""
    #: What a returned write means for durability, in words.
    durability = ""
    #: Whether a commit waits for the disk (fsync or equivalent).
    fsync = False
    #: Whether several processes may write the store at once.
    multi_writer = True
    #: Whether the system can open a store read-only (readers then use it).
    readonly_open = True
    #: Fraction of a workload's operation count this system runs (slow systems run fewer).
    op_scale = 1.0
    #: Fraction of the record count of read-side stores (dbm.dumb gets a smaller N).
    store_scale = 1.0

    get: Callable[[str], Any]
    set: Callable[[str, Any], None]
    delete: Callable[[str], None]

    def __init__(self, name: str, root: str) -> None:
        self.name = name
        self.root = root

    @property
    def floor(self) -> str:
        """The floor this system's figures are divided by: the one with the same durability class."""
        return "floor" if self.fsync else "floor-off"

    def open(self, create: bool = False, readonly: bool = False) -> None:
        """Open the store (creating it if `create`); read-only if asked and supported."""
        raise NotImplementedError

    def close(self) -> None:
        """Close the store, flushing what the system flushes on close."""
        raise NotImplementedError

    def set_many(self, items: Mapping[str, Any]) -> None:
        """Store every pair of `items` in one transaction (or the system's nearest equivalent)."""
        raise NotImplementedError

    def items(self) -> Iterator[tuple[str, Any]]:
        """Iterate over every (key, value) pair of the store."""
        raise NotImplementedError

    def reopen(self, readonly: bool = False) -> None:
        """Close and open again, so reads come from the store rather than a cache."""
        self.close()
        self.open(readonly=readonly)


# --------------------------------------------------------------- the floor


class Floor(Adapter):
    """Raw ``lmdb`` + ``pickle`` with objstore's LMDB settings: the physical floor."""

    family = "floor"

    def __init__(self, name: str, root: str, level: str = "full") -> None:
        super().__init__(name, root)
        self.level = level
        self.fsync = level != "off"
        self.durability = {
            "full": "fsync per commit (LMDB sync + metasync)",
            "normal": "fsync per commit, meta page synced at the next one (LMDB nometasync)",
            "off": "no fsync (LMDB nosync); the OS writes back later",
        }[level]
        self.path = os.path.join(root, "env")
        self._env: Any = None

    @property
    def floor(self) -> str:
        return "floor" if self.level == "full" else f"floor-{self.level}"

    def open(self, create: bool = False, readonly: bool = False) -> None:
        self.open_path(self.path, create, readonly)

    def open_path(self, path: str, create: bool, readonly: bool) -> None:
        """Open the LMDB environment at `path` (also used on a store objstore made)."""
        kwargs: dict[str, Any] = {
            "subdir": True,
            "readonly": readonly,
            "create": create,
            "max_dbs": 4,
            "max_readers": 1024,
            "max_spare_txns": 0,
            "lock": True,
            "writemap": False,
            "map_async": False,
            "map_size": FLOOR_MAP_SIZE if create else 0,
            **LMDB_DURABILITY[self.level],
        }
        if create:
            kwargs["lib_version"] = 0
        env = lmdb.open(path, **kwargs)
        db = env.open_db()  # the main database, as objstore uses
        self._env, self._db = env, db
        begin = env.begin
        loads = pickle.loads
        dumps = pickle.dumps
        protocol = pickle.HIGHEST_PROTOCOL

        def get(key: str) -> Any:
            record = begin().get(key.encode())
            if record is None:
                raise KeyError(key)
            return loads(record)

        def set(key: str, value: Any) -> None:
            txn = begin(write=True)
            txn.put(key.encode(), dumps(value, protocol))
            txn.commit()

        def delete(key: str) -> None:
            txn = begin(write=True)
            found = txn.delete(key.encode())
            txn.commit()
            if not found:
                raise KeyError(key)

        self.get, self.set, self.delete = get, set, delete

    def close(self) -> None:
        if self._env is not None:
            self._env.close()
            self._env = None

    def set_many(self, items: Mapping[str, Any]) -> None:
        dumps = pickle.dumps
        protocol = pickle.HIGHEST_PROTOCOL
        with self._env.begin(write=True) as txn:
            put = txn.put
            for key, value in items.items():
                put(key.encode(), dumps(value, protocol))

    def items(self) -> Iterator[tuple[str, Any]]:
        loads = pickle.loads
        with self._env.begin() as txn:
            for key, record in txn.cursor():
                yield key.decode(), loads(record)

    def count(self) -> int:
        """The number of records (``len()``)."""
        with self._env.begin() as txn:
            return int(txn.stat(self._db)["entries"])

    def keys(self) -> Iterator[str]:
        """Iterate over the keys only."""
        with self._env.begin() as txn:
            for key in txn.cursor().iternext(keys=True, values=False):
                yield key.decode()

    def values(self) -> Iterator[Any]:
        """Iterate over the values only."""
        loads = pickle.loads
        with self._env.begin() as txn:
            for record in txn.cursor().iternext(keys=False, values=True):
                yield loads(record)

    def raw_keys(self) -> Iterator[bytes]:
        """Iterate over the stored keys, as bytes."""
        with self._env.begin() as txn:
            yield from txn.cursor().iternext(keys=True, values=False)

    def raw_items(self) -> Iterator[tuple[bytes, bytes]]:
        """Iterate over the stored (key, record) pairs, as bytes."""
        with self._env.begin() as txn:
            yield from txn.cursor()


# ------------------------------------------------------------------ objstore


class Objstore(Adapter):
    """objstore's `Shelf`, through its public API only; `options` are more arguments of `open`."""

    family = "objstore"

    def __init__(
        self, name: str, root: str, level: str = "full", options: dict[str, Any] | None = None
    ) -> None:
        super().__init__(name, root)
        self.level = level
        self.options = options or {}
        self.fsync = level != "off"
        self.durability = {
            "full": "fsync per commit (default: durability='full')",
            "normal": "durability='normal': fsync per commit, meta page synced at the next one",
            "off": "durability='off': no fsync; flushed by sync()/close()",
        }[level]
        self.path = os.path.join(root, "store")
        self.db: objstore.Shelf | None = None

    @property
    def floor(self) -> str:
        return "floor" if self.level == "full" else f"floor-{self.level}"

    def describe_options(self) -> str:
        """The extra arguments of `open`, as the page shows them (the secret elided)."""
        return "".join(f", {k}=..." if k == "secret" else f", {k}={v!r}" for k, v in self.options.items())

    def open(self, create: bool = False, readonly: bool = False) -> None:
        flag = "r" if readonly else ("c" if create else "w")
        db = objstore.open(self.path, flag, durability=self.level, **self.options)
        self.db = db
        self.get = db.__getitem__
        self.set = db.__setitem__
        self.delete = db.__delitem__

    def close(self) -> None:
        if self.db is not None:
            self.db.close()
            self.db = None

    def set_many(self, items: Mapping[str, Any]) -> None:
        assert self.db is not None
        self.db.update(items)

    def items(self) -> Iterator[tuple[str, Any]]:
        assert self.db is not None
        return iter(self.db.items())


# -------------------------------------------------------------------- shelve


class Shelve(Adapter):
    """Stdlib ``shelve.Shelf`` over one ``dbm`` backend, with shelve's defaults."""

    family = "shelve"
    multi_writer = False  # dbm files have no cross-process write safety (gdbm refuses a second writer)

    def __init__(self, name: str, root: str, module: str) -> None:
        super().__init__(name, root)
        self.module = importlib.import_module(module)
        self.backend = module
        self.path = os.path.join(root, "shelf")
        self.shelf: shelve.Shelf[Any] | None = None
        self.durability = DBM_DURABILITY.get(module, "no fsync (dbm writes go to the OS page cache)")
        if module == "dbm.dumb":
            self.store_scale = 0.1
            self.op_scale = 0.25
        elif module == "dbm.sqlite3":
            self.op_scale = 0.25

    def open(self, create: bool = False, readonly: bool = False) -> None:
        flag = "r" if readonly else "c"
        self.shelf = shelve.Shelf(self.module.open(self.path, flag))
        self.get = self.shelf.__getitem__
        self.set = self.shelf.__setitem__
        self.delete = self.shelf.__delitem__

    def close(self) -> None:
        if self.shelf is not None:
            self.shelf.close()
            self.shelf = None

    def set_many(self, items: Mapping[str, Any]) -> None:
        assert self.shelf is not None
        self.shelf.update(items)

    def items(self) -> Iterator[tuple[str, Any]]:
        assert self.shelf is not None
        return iter(self.shelf.items())


DBM_DURABILITY = {
    "dbm.gnu": "no fsync (gdbm without the 's' flag); no transactions",
    "dbm.ndbm": "no fsync; no transactions",
    "dbm.dumb": "no fsync; no transactions; the key index is rewritten on sync()/close()",
    "dbm.sqlite3": "SQLite's defaults (a commit per write); no multi-key transactions through shelve",
}


# ---------------------------------------------------------------- sqlitedict


class SqliteDictAdapter(Adapter):
    """``sqlitedict.SqliteDict``, by default (commit() per write) or with ``autocommit=True``."""

    family = "sqlitedict"
    op_scale = 0.1
    readonly_open = True

    def __init__(self, name: str, root: str, autocommit: bool = False) -> None:
        super().__init__(name, root)
        self.autocommit = autocommit
        self.path = os.path.join(root, "db.sqlite")
        self.durability = "no fsync: sqlitedict sets PRAGMA synchronous=OFF; " + (
            "autocommit: each write committed before it returns"
            if autocommit
            else "default: nothing is committed until commit() (close() without it loses writes); "
            "the suite calls commit() after each write"
        )
        self.dict: Any = None

    def open(self, create: bool = False, readonly: bool = False) -> None:
        from sqlitedict import SqliteDict

        flag = "r" if readonly else "c"  # sqlitedict's 'w' would empty the table
        d = SqliteDict(self.path, tablename="bench", flag=flag, autocommit=self.autocommit)
        self.dict = d
        self.get = d.__getitem__
        if self.autocommit:
            self.set = d.__setitem__
            self.delete = d.__delitem__
        else:
            commit = d.commit

            def set(key: str, value: Any) -> None:
                d[key] = value
                commit()

            def delete(key: str) -> None:
                del d[key]
                commit()

            self.set, self.delete = set, delete

    def close(self) -> None:
        if self.dict is not None:
            self.dict.close()
            self.dict = None

    def set_many(self, items: Mapping[str, Any]) -> None:
        self.dict.update(items)
        self.dict.commit()

    def items(self) -> Iterator[tuple[str, Any]]:
        return iter(self.dict.items())


# ----------------------------------------------------------------- diskcache


class DiskcacheAdapter(Adapter):
    """``diskcache.Cache`` or ``diskcache.Index``, with their default settings."""

    family = "diskcache"
    op_scale = 0.25
    readonly_open = False
    durability = (
        "no fsync per write: SQLite WAL with synchronous=NORMAL (synced at checkpoints); "
        "values of 32 KiB and more go to files, not synced"
    )

    def __init__(self, name: str, root: str, kind: str = "Cache") -> None:
        super().__init__(name, root)
        self.kind = kind
        self.path = os.path.join(root, "cache")
        self.obj: Any = None
        self.cache: Any = None

    def open(self, create: bool = False, readonly: bool = False) -> None:
        import diskcache

        obj = diskcache.Index(self.path) if self.kind == "Index" else diskcache.Cache(self.path)
        self.obj = obj
        self.cache = obj.cache if self.kind == "Index" else obj
        self.get = obj.__getitem__
        self.set = obj.__setitem__
        self.delete = obj.__delitem__

    def close(self) -> None:
        if self.cache is not None:
            self.cache.close()
            self.obj = self.cache = None

    def set_many(self, items: Mapping[str, Any]) -> None:
        obj = self.obj
        with obj.transact():
            for key, value in items.items():
                obj[key] = value

    def items(self) -> Iterator[tuple[str, Any]]:
        if self.kind == "Index":
            return iter(self.obj.items())
        return self._cache_items()

    def _cache_items(self) -> Iterator[tuple[str, Any]]:
        cache = self.obj
        for key in cache:
            yield key, cache[key]


# ------------------------------------------------------------------ registry


@dataclass(frozen=True)
class System:
    """A named system: how to make its adapter under a directory."""

    name: str
    factory: Callable[..., Adapter]
    kwargs: dict[str, Any] = field(default_factory=dict)

    def make(self, root: str) -> Adapter:
        """A fresh adapter whose store lives under `root`."""
        os.makedirs(root, exist_ok=True)
        return self.factory(self.name, root, **self.kwargs)

    def describe(self) -> Adapter:
        """An adapter that is never opened: for its description (durability, floor, scales)."""
        return self.factory(self.name, "", **self.kwargs)


def dbm_backends() -> list[str]:
    """The ``dbm`` backend modules this interpreter can import, in ``dbm``'s order of preference."""
    import dbm

    names = list(getattr(dbm, "_names", ["dbm.gnu", "dbm.ndbm", "dbm.dumb"]))
    if sys.version_info >= (3, 13) and "dbm.sqlite3" not in names:  # pragma: no cover
        names.append("dbm.sqlite3")
    found = []
    for name in names:
        try:
            importlib.import_module(name)
        except ImportError:
            continue
        found.append(name)
    return found


def add_dbm_dir(directory: str) -> None:
    """Let ``dbm`` find extension modules (``_gdbm``, ``_dbm``) in `directory`, after everything else.

    For an interpreter built without them: a directory of modules built for the same
    Python minor version (e.g. the system Python's, with its gdbm package installed).
    """
    if directory not in sys.path:
        sys.path.append(directory)


def all_systems() -> dict[str, System]:
    """Every system available in this interpreter, by name, the floors first."""
    systems = [
        System("floor", Floor, {"level": "full"}),
        System("floor-normal", Floor, {"level": "normal"}),
        System("floor-off", Floor, {"level": "off"}),
        System("objstore", Objstore, {"level": "full"}),
        System("objstore-normal", Objstore, {"level": "normal"}),
        System("objstore-off", Objstore, {"level": "off"}),
        # The serializer modes of issue 9 (the "modes" workload only), all without fsync.
        System("objstore-allow", Objstore, {"level": "off", "options": {"allow": ()}}),
        System("objstore-signed", Objstore, {"level": "off", "options": {"secret": MODES_SECRET}}),
        System("objstore-zlib", Objstore, {"level": "off", "options": {"compression": "zlib"}}),
        System("objstore-ref", Objstore, {"level": "off"}),  # values hold a Ref (see workloads.Modes)
    ]
    for module in dbm_backends():
        systems.append(System("shelve-" + module.split(".")[1], Shelve, {"module": module}))
    systems += [
        System("sqlitedict", SqliteDictAdapter, {"autocommit": False}),
        System("sqlitedict-autocommit", SqliteDictAdapter, {"autocommit": True}),
        System("diskcache-cache", DiskcacheAdapter, {"kind": "Cache"}),
        System("diskcache-index", DiskcacheAdapter, {"kind": "Index"}),
    ]
    return {s.name: s for s in systems}
