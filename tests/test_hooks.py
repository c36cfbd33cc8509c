"""The module-level Pickler/Unpickler hooks, as ``shelve`` has them up to Python 3.14.

A shelf opened without ``pickler=``/``unpickler=`` pickles and loads through
whatever ``objstore.Pickler``/``objstore.Unpickler`` are at each call, on
shelves already open: every read path (lookups, iteration in batches,
snapshots, long keys, compressed records) and every write path (single, bulk,
large values). A shelf opened with classes keeps them.
"""

from __future__ import annotations

import pickle
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import objstore


class Old:
    """A class stored under its old name, then renamed (to `New`) by an Unpickler."""

    def __init__(self, n: int) -> None:
        self.n = n


class New(Old):
    pass


class Opaque:
    """Cannot be pickled, except by a Pickler that knows it."""

    def __reduce__(self) -> Any:
        raise TypeError("Opaque cannot be pickled")


class RenamingUnpickler(objstore.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == (__name__, "Old"):
            return New
        return super().find_class(module, name)


class OpaquePickler(objstore.Pickler):
    def reducer_override(self, obj: Any) -> Any:
        if isinstance(obj, Opaque):
            return str, ("an Opaque",)
        return NotImplemented


LONG_KEY = "long" * 200
BIG = "x" * 100_000  # pickled into a buffer (objstore._serialize.LARGE), compressed with compress_above


@pytest.fixture(params=[None, "zlib"])
def db(request: pytest.FixtureRequest, path: Path) -> Iterator[objstore.Shelf]:
    with objstore.open(path, compression=request.param, compress_above=0) as shelf:
        yield shelf


def test_unpickler_swapped_on_an_open_shelf(db: objstore.Shelf, monkeypatch: pytest.MonkeyPatch) -> None:
    db.update({"a": Old(1), "b": [Old(2)], LONG_KEY: Old(3), "big": (Old(4), BIG)})
    assert type(db["a"]) is Old
    with db.snapshot() as snap:
        monkeypatch.setattr(objstore, "Unpickler", RenamingUnpickler)
        assert type(db["a"]) is New and db["a"].n == 1
        assert type(db.get("b")[0]) is New
        assert type(db[LONG_KEY]) is New
        assert type(db["big"][0]) is New
        assert {k: type(v[0] if isinstance(v, list | tuple) else v) for k, v in db.items()} == dict.fromkeys(
            ("a", "b", "big", LONG_KEY), New
        )
        assert type(snap["a"]) is New
        assert [type(v) for v in db.itervalues(prefix="a")] == [New]
        monkeypatch.undo()
        assert type(db["a"]) is Old
        assert type(snap["a"]) is Old
        assert {type(v) for v in db.values() if isinstance(v, Old)} == {Old}


def test_pickler_swapped_on_an_open_shelf(db: objstore.Shelf, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(TypeError, match="Opaque"):
        db["k"] = Opaque()
    monkeypatch.setattr(objstore, "Pickler", OpaquePickler)
    db["k"] = Opaque()
    db.update({"bulk": [Opaque()], LONG_KEY: Opaque()})
    db["big"] = (Opaque(), BIG)
    db.modify("counter", lambda n: n + 1, default=0)
    monkeypatch.undo()
    assert db["k"] == db[LONG_KEY] == "an Opaque"
    assert db["bulk"] == ["an Opaque"]
    assert db["big"] == ("an Opaque", BIG)
    assert db["counter"] == 1
    with pytest.raises(TypeError, match="Opaque"):
        db["k"] = Opaque()
    assert db["k"] == "an Opaque"


def test_stock_classes_write_the_same_bytes(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    class Plain(objstore.Pickler):
        pass

    value = {"a": [1, 2.5, "three"], "b": None}
    with objstore.open(path) as db:
        db["stock"] = value
        monkeypatch.setattr(objstore, "Pickler", Plain)  # used through its constructor
        db["swapped"] = value
        monkeypatch.undo()
    import lmdb

    env = lmdb.open(str(path), readonly=True, lock=False, max_dbs=4)
    with env.begin() as txn:
        assert txn.get(b"stock") == txn.get(b"swapped")
    env.close()


def test_classes_given_at_open_are_kept(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with objstore.open(path) as db:
        db["a"] = Old(1)
    with objstore.open(path, unpickler=objstore.Unpickler, pickler=objstore.Pickler) as db:
        monkeypatch.setattr(objstore, "Unpickler", RenamingUnpickler)
        monkeypatch.setattr(objstore, "Pickler", OpaquePickler)
        assert type(db["a"]) is Old
        assert [type(v) for v in db.values()] == [Old]
        with pytest.raises(TypeError, match="Opaque"):
            db["b"] = Opaque()


def test_pickled_shelf_follows_too(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with objstore.open(path) as db:
        db["a"] = Old(1)
        with pickle.loads(pickle.dumps(db)) as copy:
            monkeypatch.setattr(objstore, "Unpickler", RenamingUnpickler)
            assert type(copy["a"]) is New


def test_each_class_not_given_follows(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with objstore.open(path, pickler=objstore.Pickler) as db:
        db["a"] = Old(1)
        monkeypatch.setattr(objstore, "Unpickler", RenamingUnpickler)
        monkeypatch.setattr(objstore, "Pickler", OpaquePickler)
        assert type(db["a"]) is New  # the unpickler was not given: it follows
        with pytest.raises(TypeError, match="Opaque"):
            db["b"] = Opaque()  # the pickler was: it stays
