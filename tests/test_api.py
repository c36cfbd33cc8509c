"""The public surface of objstore and the life cycle of a shelf.

Covers: ``objstore.__all__`` and docstrings, ``py.typed``, the path types
``open()`` accepts, the flags r/w/c/n, option validation (protocol and the
others), ``repr``, the context manager, ``close()`` and use after close
(including views and iterators made before it), and pickling a ``Shelf``.
"""

from __future__ import annotations

import importlib.resources
import os
import pickle
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import objstore


def listing(root: Path) -> dict[str, bytes | None]:
    """Every file and directory under `root` with its bytes (None for directories)."""
    out: dict[str, bytes | None] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames:
            out[os.path.relpath(os.path.join(dirpath, name), root)] = None
        for name in filenames:
            full = os.path.join(dirpath, name)
            out[os.path.relpath(full, root)] = Path(full).read_bytes()
    return out


class ProtocolSeen:
    """Pickles as the protocol it was pickled with: stored, it reads back as that number."""

    def __reduce_ex__(self, protocol: int) -> tuple[Any, ...]:
        return (int, (protocol,))


class RecordingPickler(objstore.Pickler):
    """A module-level pickler subclass, so a shelf using it can itself be pickled."""


class RecordingUnpickler(objstore.Unpickler):
    """A module-level unpickler subclass, so a shelf using it can itself be pickled."""


class TestPublicNames:
    def test_all_is_sorted(self) -> None:
        assert objstore.__all__ == sorted(objstore.__all__)

    def test_all_is_exactly_the_public_names(self) -> None:
        public = {name for name in vars(objstore) if not name.startswith("_")}
        assert set(objstore.__all__) == public
        assert len(objstore.__all__) == len(set(objstore.__all__))

    def test_star_import_gives_all(self) -> None:
        namespace: dict[str, Any] = {}
        exec("from objstore import *", namespace)
        namespace.pop("__builtins__")
        assert sorted(namespace) == objstore.__all__

    @pytest.mark.parametrize("name", objstore.__all__)
    def test_name_exists_and_has_its_own_docstring(self, name: str) -> None:
        obj = getattr(objstore, name)
        doc = vars(obj).get("__doc__") if isinstance(obj, type) else obj.__doc__
        assert doc and doc.strip(), f"objstore.{name} has no docstring of its own"

    def test_version(self) -> None:
        assert isinstance(objstore.__version__, str)
        assert objstore.__version__.count(".") >= 1

    def test_module_docstring(self) -> None:
        assert objstore.__doc__ and objstore.__doc__.strip()

    def test_expected_entry_points(self) -> None:
        for name in (
            "open",
            "Shelf",
            "Snapshot",
            "Transaction",
            "Pickler",
            "Unpickler",
            "dumps",
            "loads",
            "Error",
        ):
            assert name in objstore.__all__


class TestPackaging:
    def test_py_typed_ships_in_the_package(self) -> None:
        marker = importlib.resources.files("objstore") / "py.typed"
        assert marker.is_file()

    def test_py_typed_is_declared_as_package_data(self) -> None:
        tomllib = pytest.importorskip("tomllib" if sys.version_info >= (3, 11) else "tomli")
        pyproject = Path(__file__).resolve().parents[1] / "pyproject.toml"
        if not pyproject.is_file():
            pytest.skip("not running from a source checkout")
        config = tomllib.loads(pyproject.read_text())
        assert "py.typed" in config["tool"]["setuptools"]["package-data"]["objstore"]


class TestPathTypes:
    @pytest.mark.parametrize(
        "convert",
        [str, os.fsencode, Path, lambda p: p],
        ids=["str", "bytes", "Path", "PathLike"],
    )
    def test_accepted(self, path: Path, convert: Callable[[Path], Any]) -> None:
        with objstore.open(convert(path)) as db:
            db["k"] = "v"
            assert db.path == os.path.realpath(path)
        with objstore.open(str(path), "r") as db:
            assert db["k"] == "v"

    def test_custom_pathlike(self, path: Path) -> None:
        class Where:
            def __fspath__(self) -> str:
                return str(path)

        with objstore.open(Where()) as db:
            db["k"] = 1
        assert (path / "data.mdb").is_file()

    def test_store_is_a_directory(self, path: Path) -> None:
        objstore.open(path).close()
        assert path.is_dir()
        assert (path / "data.mdb").is_file()

    def test_relative_path(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.chdir(tmp_path)
        with objstore.open("relative") as db:
            db["k"] = 1
            assert db.path == str(tmp_path.resolve() / "relative")

    @pytest.mark.parametrize("bad", [1, None, 3.5, ["x"]])
    def test_other_types_refused(self, bad: Any) -> None:
        with pytest.raises(TypeError):
            objstore.open(bad)


class TestFlags:
    @pytest.mark.parametrize("flag", ["r", "w"])
    def test_missing_store(self, path: Path, flag: str) -> None:
        with pytest.raises(objstore.StoreNotFoundError) as info:
            objstore.open(path, flag)
        assert isinstance(info.value, FileNotFoundError)
        assert isinstance(info.value, objstore.Error)
        assert info.value.filename == str(path)
        assert not path.exists()

    @pytest.mark.parametrize("flag", ["r", "w"])
    def test_empty_directory_is_no_store(self, path: Path, flag: str) -> None:
        path.mkdir()
        with pytest.raises(objstore.StoreNotFoundError):
            objstore.open(path, flag)
        assert list(path.iterdir()) == []

    @pytest.mark.parametrize("flag", ["", "x", "rw", "C", "cn", "r+", "wb", None, 1])
    def test_bad_flag(self, path: Path, flag: Any) -> None:
        with pytest.raises(ValueError, match="flag"):
            objstore.open(path, flag)
        assert not path.exists()

    def test_bad_flag_on_existing_store_changes_nothing(self, path: Path) -> None:
        with objstore.open(path) as db:
            db["k"] = 1
        with pytest.raises(ValueError):
            objstore.open(path, "N")
        with objstore.open(path, "r") as db:
            assert dict(db) == {"k": 1}

    def test_c_creates_then_keeps(self, path: Path) -> None:
        with objstore.open(path, "c") as db:
            assert len(db) == 0
            db["k"] = 1
        with objstore.open(path, "c") as db:
            assert dict(db) == {"k": 1}

    def test_c_in_an_empty_directory(self, path: Path) -> None:
        path.mkdir()
        with objstore.open(path, "c") as db:
            db["k"] = 1
        with objstore.open(path, "r") as db:
            assert db["k"] == 1

    def test_default_flag_is_c(self, path: Path) -> None:
        with objstore.open(path) as db:
            db["k"] = 1
        with objstore.open(path) as db:
            assert db["k"] == 1

    def test_w_reads_and_writes_existing(self, path: Path) -> None:
        objstore.open(path).close()
        with objstore.open(path, "w") as db:
            db["k"] = 1
        with objstore.open(path, "w") as db:
            assert db["k"] == 1

    def test_n_creates_missing(self, path: Path) -> None:
        with objstore.open(path, "n") as db:
            db["k"] = 1
        with objstore.open(path, "r") as db:
            assert dict(db) == {"k": 1}

    def test_n_empties_existing(self, path: Path) -> None:
        with objstore.open(path) as db:
            db.update({f"k{i}": i for i in range(100)})
        with objstore.open(path, "n") as db:
            assert len(db) == 0
            assert list(db) == []
            db["new"] = 1
        with objstore.open(path, "r") as db:
            assert dict(db) == {"new": 1}

    def test_n_empties_in_place(self, path: Path) -> None:
        with objstore.open(path) as db:
            db["k"] = 1
        before = {name: os.stat(path / name).st_ino for name in os.listdir(path)}
        objstore.open(path, "n").close()
        after = {name: os.stat(path / name).st_ino for name in os.listdir(path)}
        assert after == before, "flag 'n' must not delete or recreate the store's files"

    def test_n_while_open_elsewhere_in_this_process(self, path: Path) -> None:
        with objstore.open(path) as first:
            first["k"] = 1
            with objstore.open(path, "n") as second:
                assert len(second) == 0
                # Same store, emptied in place: the shelf opened earlier sees it too.
                assert len(first) == 0
                second["after"] = 2
                assert first["after"] == 2

    def test_n_keeps_store_settings(self, path: Path) -> None:
        with objstore.open(path) as db:
            created = db.info()["settings"]
        with objstore.open(path, "n") as db:
            assert db.info()["settings"] == created


class TestReadOnly:
    @pytest.fixture
    def ro(self, path: Path) -> Any:
        with objstore.open(path) as db:
            db.update({"a": 1, "b": [2]})
        db = objstore.open(path, "r")
        yield db
        db.close()

    WRITES: dict[str, Callable[[objstore.Shelf], Any]] = {
        "setitem": lambda db: db.__setitem__("c", 3),
        "overwrite": lambda db: db.__setitem__("a", 3),
        "delitem": lambda db: db.__delitem__("a"),
        "pop": lambda db: db.pop("a"),
        "popitem": lambda db: db.popitem(),
        "setdefault-new": lambda db: db.setdefault("c", 3),
        "update": lambda db: db.update({"c": 3}),
        "clear": lambda db: db.clear(),
        "modify": lambda db: db.modify("a", lambda v: v + 1),
        "transaction": lambda db: db.transaction().__enter__(),
        "edit": lambda db: db.edit("b").__enter__(),
    }

    @pytest.mark.parametrize("write", list(WRITES), ids=list(WRITES))
    def test_writes_refused(self, ro: objstore.Shelf, write: str) -> None:
        with pytest.raises(objstore.ReadOnlyError) as info:
            self.WRITES[write](ro)
        assert isinstance(info.value, OSError)
        assert dict(ro) == {"a": 1, "b": [2]}

    def test_reads_work(self, ro: objstore.Shelf) -> None:
        assert ro["a"] == 1
        assert ro.get("b") == [2]
        assert "a" in ro
        assert len(ro) == 2
        assert list(ro.items()) == [("a", 1), ("b", [2])]
        assert ro.first() == ("a", 1)
        with ro.snapshot() as snap:
            assert dict(snap) == {"a": 1, "b": [2]}
        assert ro.verify() == []

    def test_message_says_what_to_do(self, ro: objstore.Shelf) -> None:
        with pytest.raises(objstore.ReadOnlyError, match="read-only"):
            ro["c"] = 3

    def test_read_only_shelf_beside_writable_one(self, path: Path) -> None:
        with objstore.open(path) as rw, objstore.open(path, "r") as ro:
            rw["k"] = 1
            assert ro["k"] == 1
            with pytest.raises(objstore.ReadOnlyError):
                ro["k"] = 2
            assert rw["k"] == 1

    def test_sync_and_close_of_read_only_shelf(self, ro: objstore.Shelf) -> None:
        ro.sync()
        ro.close()
        assert ro.closed


class TestProtocol:
    @pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
    def test_writes_use_the_protocol(self, path: Path, protocol: int) -> None:
        with objstore.open(path, protocol=protocol) as db:
            db["p"] = ProtocolSeen()
            assert db["p"] == protocol

    @pytest.mark.parametrize("protocol", [None, -1, -5])
    def test_default_and_negative_mean_highest(self, path: Path, protocol: int | None) -> None:
        with objstore.open(path, protocol=protocol) as db:
            db["p"] = ProtocolSeen()
            assert db["p"] == pickle.HIGHEST_PROTOCOL

    def test_default_is_highest(self, path: Path) -> None:
        with objstore.open(path) as db:
            db["p"] = ProtocolSeen()
            assert db["p"] == pickle.HIGHEST_PROTOCOL

    def test_too_high(self, path: Path) -> None:
        with pytest.raises(ValueError, match=str(pickle.HIGHEST_PROTOCOL)):
            objstore.open(path, protocol=pickle.HIGHEST_PROTOCOL + 1)
        assert not path.exists()

    @pytest.mark.parametrize("protocol", ["2", 2.0, True, b"2"])
    def test_not_an_int(self, path: Path, protocol: Any) -> None:
        with pytest.raises(TypeError, match="protocol"):
            objstore.open(path, protocol=protocol)
        assert not path.exists()

    def test_shelves_of_one_store_may_differ(self, path: Path) -> None:
        with objstore.open(path, protocol=0) as old, objstore.open(path, protocol=5) as new:
            old["a"] = ProtocolSeen()
            new["b"] = ProtocolSeen()
            assert (new["a"], old["b"]) == (0, 5)


class TestOptions:
    @pytest.mark.parametrize(
        "options",
        [
            {"durability": "fast"},
            {"durability": None},
            {"lock": "none"},
            {"map_size": 0},
            {"map_size": 1024},
            {"map_size": "1G"},
            {"timeout": -1},
        ],
        ids=repr,
    )
    def test_bad_value(self, path: Path, options: dict[str, Any]) -> None:
        with pytest.raises(ValueError):
            objstore.open(path, **options)
        assert not path.exists()

    @pytest.mark.parametrize(
        "option, bad",
        [
            # None is the default: follow objstore.Pickler/Unpickler (tests/test_hooks.py)
            *[(option, bad) for option in ("pickler", "unpickler") for bad in (object, "pickle")],
            ("pickler", pickle.Unpickler),
            ("unpickler", pickle.Pickler),
        ],
    )
    def test_bad_serializer_class(self, path: Path, option: str, bad: Any) -> None:
        with pytest.raises(TypeError, match=option):
            objstore.open(path, **{option: bad})
        assert not path.exists()

    def test_unknown_keyword(self, path: Path) -> None:
        with pytest.raises(TypeError):
            objstore.open(path, durabilty="off")  # type: ignore[call-arg]

    def test_open_takes_shelve_arguments_and_forwards_the_options(self, path: Path) -> None:
        import inspect

        opened = inspect.signature(objstore.open).parameters
        constructed = inspect.signature(objstore.Shelf.__init__).parameters
        positional = [name for name, p in constructed.items() if p.kind is p.POSITIONAL_OR_KEYWORD]
        assert positional == ["self", "path", "flag", "protocol", "writeback"]
        assert list(opened) == [*positional[1:], "options"]
        assert opened["options"].kind is inspect.Parameter.VAR_KEYWORD
        keyword_only = {name for name, p in constructed.items() if p.kind is p.KEYWORD_ONLY}
        assert keyword_only == {
            "durability",
            "lock",
            "timeout",
            "map_size",
            "pickler",
            "unpickler",
            "allow",
            "aliases",
            "allow_network_fs",
            "mode",
            "serializer",
            "deserializer",
            "compression",
            "compress_above",
            "secret",
        }
        with objstore.open(path, durability="off", lock="exclusive", timeout=1, map_size=1 << 20) as db:
            assert db.info()["durability"] == "off" and db.info()["exclusive"]

    def test_shelf_constructor_opens_like_open(self, path: Path) -> None:
        with objstore.Shelf(path) as db:
            db["k"] = 1
        with objstore.Shelf(path, "r") as db:
            assert db["k"] == 1

    def test_durability_must_agree_within_a_process(self, path: Path) -> None:
        with objstore.open(path, durability="full"):
            with pytest.raises(ValueError, match="durability"):
                objstore.open(path, durability="off")


class TestRepr:
    def test_open(self, path: Path) -> None:
        with objstore.open(path) as db:
            text = repr(db)
        assert text.startswith("<objstore.Shelf")
        assert repr(os.path.realpath(path)) in text
        assert "'c'" in text
        assert "closed" not in text

    def test_flag_and_writeback(self, path: Path) -> None:
        objstore.open(path).close()
        with objstore.open(path, "r") as db:
            assert "'r'" in repr(db)
            assert "writeback=True" not in repr(db)
        with objstore.open(path, "w", writeback=True) as db:
            assert "'w'" in repr(db)
            assert "writeback=True" in repr(db)

    def test_closed(self, path: Path) -> None:
        db = objstore.open(path)
        db.close()
        assert "closed" in repr(db)
        assert repr(os.path.realpath(path)) in repr(db)

    def test_snapshot_and_transaction(self, shelf: objstore.Shelf) -> None:
        with shelf.snapshot() as snap:
            assert "open" in repr(snap)
        assert "closed" in repr(snap)
        with shelf.transaction() as txn:
            assert "open" in repr(txn)
        assert "closed" in repr(txn)


class TestContextManager:
    def test_returns_the_shelf_and_closes_it(self, path: Path) -> None:
        db = objstore.open(path)
        with db as entered:
            assert entered is db
            db["k"] = 1
        assert db.closed
        with objstore.open(path, "r") as again:
            assert again["k"] == 1

    def test_closes_on_exception_and_propagates(self, path: Path) -> None:
        class Boom(Exception):
            pass

        with pytest.raises(Boom):
            with objstore.open(path) as db:
                db["k"] = 1
                raise Boom
        assert db.closed
        # A plain write is committed when it returns; leaving by an exception does not undo it.
        with objstore.open(path, "r") as again:
            assert again["k"] == 1

    def test_closed_property(self, path: Path) -> None:
        db = objstore.open(path)
        assert db.closed is False
        db.close()
        assert db.closed is True


def _operations() -> dict[str, Callable[[objstore.Shelf], Any]]:
    return {
        "getitem": lambda db: db["a"],
        "getitem-missing": lambda db: db["zzz"],
        "setitem": lambda db: db.__setitem__("b", 2),
        "delitem": lambda db: db.__delitem__("a"),
        "get": lambda db: db.get("a"),
        "contains": lambda db: "a" in db,
        "len": len,
        "bool": bool,
        "iter": lambda db: next(iter(db)),
        "keys": lambda db: list(db.keys()),
        "values": lambda db: list(db.values()),
        "items": lambda db: list(db.items()),
        "eq": lambda db: db == {"a": 1},
        "pop": lambda db: db.pop("a"),
        "pop-default": lambda db: db.pop("zzz", None),
        "popitem": lambda db: db.popitem(),
        "setdefault": lambda db: db.setdefault("a", 0),
        "update": lambda db: db.update({"b": 2}),
        "clear": lambda db: db.clear(),
        "iterkeys": lambda db: list(db.iterkeys()),
        "iteritems": lambda db: list(db.iteritems(prefix="a")),
        "itervalues": lambda db: list(db.itervalues(reverse=True)),
        "first": lambda db: db.first(),
        "last": lambda db: db.last(),
        "transaction": lambda db: db.transaction().__enter__(),
        "snapshot": lambda db: db.snapshot(),
        "modify": lambda db: db.modify("a", lambda v: v + 1),
        "edit": lambda db: db.edit("a").__enter__(),
        "sync": lambda db: db.sync(),
        "info": lambda db: db.info(),
        "verify": lambda db: db.verify(),
        "pickle": pickle.dumps,
    }


OPERATIONS = _operations()


class TestClose:
    def test_idempotent(self, path: Path) -> None:
        db = objstore.open(path)
        db["k"] = 1
        db.close()
        db.close()
        assert db.closed
        with objstore.open(path, "r") as again:
            assert again["k"] == 1

    def test_exit_after_close(self, path: Path) -> None:
        with objstore.open(path) as db:
            db.close()
        assert db.closed

    @pytest.mark.parametrize("writeback", [False, True], ids=["plain", "writeback"])
    @pytest.mark.parametrize("operation", list(OPERATIONS))
    def test_every_operation_after_close(self, path: Path, operation: str, writeback: bool) -> None:
        db = objstore.open(path, writeback=writeback)
        db["a"] = 1
        if writeback:
            db["a"]  # now cached: the cache must not outlive close()
        db.close()
        with pytest.raises(objstore.ClosedError) as info:
            OPERATIONS[operation](db)
        assert isinstance(info.value, ValueError)

    def test_views_made_before_close(self, shelf: objstore.Shelf) -> None:
        shelf.update({"a": 1, "b": 2})
        keys, values, items = shelf.keys(), shelf.values(), shelf.items()
        shelf.close()
        for view in (keys, values, items):
            with pytest.raises(objstore.ClosedError):
                list(view)
            with pytest.raises(objstore.ClosedError):
                len(view)
        with pytest.raises(objstore.ClosedError):
            "a" in keys  # noqa: B015 - evaluated for the error it raises
        with pytest.raises(objstore.ClosedError):
            ("a", 1) in items  # noqa: B015 - evaluated for the error it raises

    @pytest.mark.parametrize(
        "make",
        [
            lambda db: iter(db),
            lambda db: iter(db.keys()),
            lambda db: iter(db.values()),
            lambda db: iter(db.items()),
            lambda db: db.iterkeys(reverse=True),
            lambda db: db.iteritems(prefix="k"),
            lambda db: db.itervalues(start="k1"),
        ],
        ids=["iter", "keys", "values", "items", "iterkeys", "iteritems", "itervalues"],
    )
    @pytest.mark.parametrize("started", [False, True], ids=["unstarted", "started"])
    def test_iterators_made_before_close(
        self, shelf: objstore.Shelf, make: Callable[[objstore.Shelf], Any], started: bool
    ) -> None:
        shelf.update({f"k{i}": i for i in range(10)})
        iterator = make(shelf)
        if started:
            next(iterator)
        shelf.close()
        with pytest.raises(objstore.ClosedError):
            next(iterator)

    def test_snapshot_made_before_close(self, shelf: objstore.Shelf) -> None:
        shelf["a"] = 1
        snap = shelf.snapshot()
        assert snap["a"] == 1
        shelf.close()
        with pytest.raises(objstore.ClosedError):
            snap["a"]
        with pytest.raises(objstore.ClosedError):
            len(snap)
        snap.close()  # still idempotent

    def test_close_of_one_shelf_leaves_others_open(self, path: Path) -> None:
        first = objstore.open(path)
        second = objstore.open(path)
        first["k"] = 1
        first.close()
        assert second["k"] == 1
        second["j"] = 2
        second.close()
        with objstore.open(path, "r") as db:
            assert dict(db) == {"j": 2, "k": 1}

    def test_reopen_after_close(self, path: Path) -> None:
        for i in range(3):
            with objstore.open(path) as db:
                db[f"k{i}"] = i
        with objstore.open(path, "r") as db:
            assert dict(db) == {"k0": 0, "k1": 1, "k2": 2}

    def test_unclosed_shelf_is_flushed_at_exit(self, path: Path) -> None:
        import subprocess

        code = (
            "import sys, objstore\n"
            "db = objstore.open(sys.argv[1], writeback=True, durability='off')\n"
            "db['cached'] = []\n"
            "db['cached'].append(1)\n"
            "keep = db  # never closed: interpreter exit must write back and flush\n"
        )
        done = subprocess.run(
            [sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, done.stderr
        assert done.stderr == ""
        with objstore.open(path, "r") as db:
            assert db["cached"] == [1]


class TestPicklingShelf:
    def test_round_trip(self, path: Path) -> None:
        with objstore.open(path, protocol=2) as db:
            db["k"] = 1
            copy = pickle.loads(pickle.dumps(db))
            try:
                assert copy is not db
                assert isinstance(copy, objstore.Shelf)
                assert not copy.closed
                assert copy.path == db.path
                assert dict(copy) == {"k": 1}
                copy["written-by-copy"] = 2
                assert db["written-by-copy"] == 2
                copy["p"] = ProtocolSeen()
                assert db["p"] == 2
                assert repr(copy) == repr(db)
            finally:
                copy.close()
            assert not db.closed
            assert db["k"] == 1

    @pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
    def test_every_pickle_protocol(self, shelf: objstore.Shelf, protocol: int) -> None:
        shelf["k"] = "v"
        with pickle.loads(pickle.dumps(shelf, protocol)) as copy:
            assert copy["k"] == "v"

    def test_read_only_stays_read_only(self, path: Path) -> None:
        objstore.open(path).close()
        with objstore.open(path, "r") as db, pickle.loads(pickle.dumps(db)) as copy:
            with pytest.raises(objstore.ReadOnlyError):
                copy["k"] = 1

    def test_flag_n_does_not_empty_again(self, path: Path) -> None:
        with objstore.open(path, "n") as db:
            db["k"] = 1
            with pickle.loads(pickle.dumps(db)) as copy:
                assert dict(copy) == {"k": 1}
            assert dict(db) == {"k": 1}

    def test_writeback_and_options_travel(self, path: Path) -> None:
        with objstore.open(
            path,
            writeback=True,
            durability="normal",
            pickler=RecordingPickler,
            unpickler=RecordingUnpickler,
        ) as db:
            with pickle.loads(pickle.dumps(db)) as copy:
                assert "writeback=True" in repr(copy)
                assert copy.info()["durability"] == "normal"
                copy["list"] = []
                copy["list"].append(1)  # cached, as in shelve
                assert copy["list"] == [1]
                pickled = pickle.dumps(copy)
                assert b"RecordingPickler" in pickled and b"RecordingUnpickler" in pickled
            assert db["list"] == [1]

    def test_closed_shelf_cannot_be_pickled(self, path: Path) -> None:
        db = objstore.open(path)
        db.close()
        with pytest.raises(objstore.ClosedError):
            pickle.dumps(db)
