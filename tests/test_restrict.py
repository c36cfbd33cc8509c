"""Restricted loading: ``open(allow=, aliases=)``, `RestrictedUnpickler`, ``errors=``, the globals scan.

Covers: malicious values (written by an unrestricted shelf, or planted as raw
pickles with plain lmdb, as an attacker who can write the files would) are
refused in restricted mode on every read path and their payload never runs
(a marker file stays absent; without restriction the same payload does run);
the safe set round-trips at every protocol; user classes allowed by class, by
module and by dotted name, and what a module-wide allow does not let through;
the error's types, message and attributes; a user ``unpickler=`` combined with
``allow=``; aliases for a renamed class and a moved module (real modules on
``sys.path``); ``errors="skip"``/``"keep"`` with bad records among good ones;
`Shelf.iterglobals` (no loading) and ``check --unsafe-globals`` in a subprocess.
"""

from __future__ import annotations

import collections
import datetime
import decimal
import fractions
import functools
import importlib
import io
import operator
import os
import pickle
import subprocess
import sys
import textwrap
import uuid
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import lmdb
import pytest

import objstore

# ---------------------------------------------------------------- helpers


def plant(store: Path, key: str, stream: bytes) -> None:
    """Store the pickle `stream` under `key` as a valid record, with plain lmdb (store closed)."""
    body = stream + b"\x01"
    record = body + zlib.crc32(body).to_bytes(4, "little")
    env = lmdb.open(str(store), max_dbs=4)
    try:
        with env.begin(write=True) as txn:
            txn.put(key.encode(), record)
    finally:
        env.close()


def _short(text: str) -> bytes:
    data = text.encode()
    return b"\x8c" + bytes([len(data)]) + data  # SHORT_BINUNICODE


def stack_global_call(module: str, name: str, arg: str) -> bytes:
    """A protocol 4 pickle of ``module.name(arg)``, its global named by STACK_GLOBAL."""
    return b"\x80\x04" + _short(module) + _short(name) + b"\x93" + _short(arg) + b"\x85R."


def global_call(module: str, name: str, arg: str) -> bytes:
    """A protocol 0 pickle of ``module.name(arg)``, its global named by GLOBAL."""
    return f"c{module}\n{name}\n(V{arg}\ntR.".encode()


def inst_call(module: str, name: str, arg: str) -> bytes:
    """A protocol 0 pickle of ``module.name(arg)`` made by the INST opcode."""
    return f"(V{arg}\ni{module}\n{name}\n.".encode()


class Payload:
    """A value whose unpickling calls `function` with `args`: what an attacker stores."""

    def __init__(self, function: Callable[..., Any], *args: Any) -> None:
        self.function, self.args = function, args

    def __reduce__(self) -> tuple[Any, ...]:
        return (self.function, self.args)


def payloads(marker: Path) -> dict[str, Any]:
    """Values that each create `marker` when loaded, each through a different global."""
    touch = f"open({str(marker)!r}, 'w').close()"
    return {
        "os.system": Payload(os.system, f"touch {marker}"),
        "eval": Payload(eval, touch),
        "exec": Payload(exec, touch),
        "subprocess": Payload(subprocess.run, ["touch", str(marker)]),
        "partial": Payload(functools.partial(os.system, f"touch {marker}")),
        "methodcaller": Payload(operator.methodcaller("touch"), marker),
        "nested in a safe list": [1, {"inner": Payload(os.system, f"touch {marker}")}],
    }


def raw_payloads(marker: Path) -> dict[str, bytes]:
    """Pickles written by hand, as no Pickler would write them, that create `marker`."""
    command = f"touch {marker}"
    return {
        "GLOBAL": global_call("os", "system", command),
        "GLOBAL, Python 2 name": global_call("__builtin__", "eval", f"__import__('os').system({command!r})"),
        "INST": inst_call("os", "system", command),
        "STACK_GLOBAL": stack_global_call("posix", "system", command),
        "STACK_GLOBAL, memoized names": (
            b"\x80\x04" + _short("posix") + b"\x94" + _short("system") + b"\x94"
            b"\x68\x00\x68\x01\x93" + _short(command) + b"\x85R."
        ),
        "getattr chain": (  # getattr(__import__("os"), "system")(command)
            b"\x80\x04"
            + _short("builtins")
            + _short("getattr")
            + b"\x93"
            + _short("builtins")
            + _short("__import__")
            + b"\x93"
            + _short("os")
            + b"\x85R"
            + _short("system")
            + b"\x86R"
            + _short(command)
            + b"\x85R."
        ),
    }


@pytest.fixture
def marker(tmp_path: Path) -> Iterator[Path]:
    """A file the payloads create: its absence shows that none ran."""
    where = tmp_path / "payload-ran"
    yield where


@pytest.fixture
def usermod(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The name of a real module, written in `tmp_path` and importable, with classes to allow."""
    name = f"restrict_user_{uuid.uuid4().hex[:8]}"
    (tmp_path / "mods").mkdir()
    (tmp_path / "mods" / f"{name}.py").write_text(
        textwrap.dedent(
            """
            import os
            from os import system


            class Thing:
                def __init__(self, n=0):
                    self.n = n

                def __eq__(self, other):
                    return type(other) is type(self) and other.n == self.n

                class Inner:
                    def __eq__(self, other):
                        return type(other) is type(self)


            def make(n):
                return Thing(n)
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path / "mods"))
    importlib.invalidate_caches()
    yield name
    sys.modules.pop(name, None)


SAFE_VALUES: list[Any] = [
    None,
    True,
    1,
    2**100,
    1.5,
    complex(1, 2),
    "text",
    b"bytes",
    bytearray(b"array"),
    (1, 2),
    [1, [2]],
    {"a": 1},
    {1, 2},
    frozenset({3}),
    range(1, 10, 2),
    slice(1, 5),
    datetime.date(2024, 2, 29),
    datetime.datetime(2024, 2, 29, 12, 30, tzinfo=datetime.timezone(datetime.timedelta(hours=2))),
    datetime.time(1, 2, 3),
    datetime.timedelta(days=3),
    decimal.Decimal("3.14"),
    fractions.Fraction(1, 3),
    uuid.UUID("12345678-1234-5678-1234-567812345678"),
    collections.OrderedDict(a=1, b=2),
    collections.deque([1, 2], maxlen=5),
    collections.defaultdict(list, {"x": [1]}),
    collections.Counter("abracadabra"),
    collections.ChainMap({"a": 1}, {"b": 2}),
]


# ------------------------------------------------------------- refusing


class TestRefused:
    @pytest.mark.parametrize("name", list(payloads(Path("m"))))
    def test_written_by_an_unrestricted_shelf(self, path: Path, marker: Path, name: str) -> None:
        with objstore.open(path) as db:
            db["evil"] = payloads(marker)[name]
            db["good"] = {"fine": 1}
        with objstore.open(path, "r", allow=()) as db:
            with pytest.raises(objstore.ForbiddenGlobalError) as info:
                db["evil"]
            assert info.value.key == "evil"
            assert "'evil'" in str(info.value)
            assert db["good"] == {"fine": 1}
        assert not marker.exists()

    @pytest.mark.parametrize("name", list(raw_payloads(Path("m"))))
    def test_planted_raw(self, path: Path, marker: Path, name: str) -> None:
        objstore.open(path).close()
        plant(path, "evil", raw_payloads(marker)[name])
        with objstore.open(path, "r", allow=()) as db:
            with pytest.raises(objstore.ForbiddenGlobalError):
                db["evil"]
        assert not marker.exists()

    def test_the_payloads_do_run_unrestricted(self, path: Path, marker: Path) -> None:
        """Without allow= the same values run their payload: the tests above can fail."""
        for name, value in payloads(marker).items():
            with objstore.open(path) as db:
                db[name] = value
                db[name]
            assert marker.exists(), name
            marker.unlink()
        for name, stream in raw_payloads(marker).items():
            plant(path, name, stream)
            with objstore.open(path, "r") as db:
                db[name]
            assert marker.exists(), name
            marker.unlink()

    READS: dict[str, Callable[[Any], Any]] = {
        "getitem": lambda db: db["evil"],
        "get": lambda db: db.get("evil"),
        "items": lambda db: list(db.items()),
        "values": lambda db: list(db.values()),
        "iteritems": lambda db: list(db.iteritems(prefix="e")),
        "first": lambda db: db.first(),
        "pop": lambda db: db.pop("evil"),
        "modify": lambda db: db.modify("evil", lambda v: v),
    }

    @pytest.mark.parametrize("read", list(READS))
    @pytest.mark.parametrize("where", ["shelf", "writeback", "snapshot", "transaction"])
    def test_every_read_path(self, path: Path, marker: Path, read: str, where: str) -> None:
        with objstore.open(path) as db:
            db["evil"] = Payload(os.system, f"touch {marker}")
        with objstore.open(path, allow=(), writeback=where == "writeback") as db:
            with pytest.raises(objstore.ForbiddenGlobalError) as info:
                if where == "snapshot" and read not in ("pop", "modify"):
                    with db.snapshot() as snap:
                        self.READS[read](snap)
                elif where == "transaction":
                    with db.transaction() as txn:
                        self.READS[read](txn)
                else:
                    self.READS[read](db)
            assert info.value.key == "evil"
            assert "evil" in db  # nothing was removed
        assert not marker.exists()

    def test_error_types_message_and_pickling(self, path: Path) -> None:
        with objstore.open(path) as db:
            db["k"] = Payload(os.system, "true")
        with objstore.open(path, "r", allow=[datetime.date]) as db:
            with pytest.raises(pickle.UnpicklingError) as info:
                db["k"]
        error = info.value
        assert isinstance(error, objstore.Error) and isinstance(error, objstore.ForbiddenGlobalError)
        assert (error.name, error.key) == (f"{os.system.__module__}.system", "k")
        message = str(error)
        assert "'k'" in message and error.name in message and "allow=" in message
        copy = pickle.loads(pickle.dumps(error))
        assert (copy.name, copy.key, str(copy)) == (error.name, error.key, message)

    def test_refused_before_the_module_is_imported(self, path: Path) -> None:
        objstore.open(path).close()
        plant(path, "k", stack_global_call("objstore_no_such_module_xyz", "run", "x"))
        with objstore.open(path, "r", allow=()) as db, pytest.raises(objstore.ForbiddenGlobalError):
            db["k"]
        assert "objstore_no_such_module_xyz" not in sys.modules

    def test_python2_names_load_as_pickle_loads_them(self, path: Path) -> None:
        import dbm

        objstore.open(path).close()
        # Protocols 0-2: mapped once, by pickle (whichdb.whichdb is dbm.whichdb, not dbm.ndbm's).
        plant(path, "mapped", b"cwhichdb\nwhichdb\n.")
        # Protocol 3+: pickle does not map, so there is no module __builtin__.
        plant(path, "unmapped", b"\x80\x03c__builtin__\nset\n.")
        with objstore.open(path, "r", allow=["dbm.whichdb"]) as db:
            assert db["mapped"] is dbm.whichdb
            with pytest.raises(ModuleNotFoundError):
                db["unmapped"]
        with objstore.open(path, "r", allow=()) as db, pytest.raises(objstore.ForbiddenGlobalError):
            db["mapped"]

    def test_no_restriction_keeps_the_fast_path(self, path: Path) -> None:
        with objstore.open(path) as db:
            assert db._codec._fast_load is pickle.loads
        with objstore.open(path, allow=()) as db:
            assert db._codec._fast_load is not pickle.loads


# ------------------------------------------------------------- allowing


class TestAllowed:
    @pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
    def test_safe_set_round_trips(self, path: Path, protocol: int) -> None:
        with objstore.open(path, protocol=protocol) as db:
            db.update({f"v{i:02d}": value for i, value in enumerate(SAFE_VALUES)})
        with objstore.open(path, "r", allow=()) as db:
            loaded = [db[f"v{i:02d}"] for i in range(len(SAFE_VALUES))]
            assert list(db.values()) == loaded
        assert loaded == SAFE_VALUES
        assert loaded[-3].default_factory is list

    def test_numpy(self, path: Path) -> None:
        np = pytest.importorskip("numpy")
        values = [np.arange(6).reshape(2, 3), np.arange(6).reshape(2, 3).T, np.float64(1.5), np.dtype("f4")]
        for protocol in (2, 4, 5):
            with objstore.open(path, "n", protocol=protocol) as db:
                db["arrays"] = values
            with objstore.open(path, "r", allow=()) as db:
                loaded = db["arrays"]
            assert (loaded[0] == values[0]).all() and (loaded[1] == values[1]).all()
            assert loaded[2:] == values[2:]

    def test_numpy_is_not_imported_by_records_that_do_not_name_it(self, path: Path) -> None:
        with objstore.open(path) as db:
            db["k"] = SAFE_VALUES
        code = (
            "import sys, objstore\n"
            "with objstore.open(sys.argv[1], 'r', allow=()) as db:\n"
            "    db['k']\n"
            "print('numpy' in sys.modules)\n"
        )
        done = subprocess.run(
            [sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == "False"

    @pytest.mark.parametrize("how", ["class", "module", "module name", "dotted name", "single entry"])
    @pytest.mark.parametrize("protocol", [0, 2, pickle.HIGHEST_PROTOCOL])
    def test_user_class(self, path: Path, usermod: str, how: str, protocol: int) -> None:
        module = importlib.import_module(usermod)
        allow: Any = {
            "class": [module.Thing, module.Thing.Inner],
            "module": [module],
            "module name": [usermod],
            "dotted name": [f"{usermod}.Thing", f"{usermod}.Thing.Inner"],
            "single entry": module,
        }[how]
        value = [module.Thing(3), module.Thing.Inner()] if protocol >= 4 else [module.Thing(3)]
        with objstore.open(path, protocol=protocol) as db:
            db["k"] = value
        with objstore.open(path, "r", allow=allow) as db:
            assert db["k"] == value
        with objstore.open(path, "r", allow=()) as db, pytest.raises(objstore.ForbiddenGlobalError) as info:
            db["k"]
        assert info.value.name == f"{usermod}.Thing"

    @pytest.mark.parametrize(
        "name",
        ["os.system", "system", "Thing.__init__.__globals__", "Thing.__class__", "Thing.__init__"],
    )
    def test_a_whole_module_does_not_allow_what_it_imported(
        self, path: Path, usermod: str, marker: Path, name: str
    ) -> None:
        objstore.open(path).close()
        plant(path, "k", stack_global_call(usermod, name, f"touch {marker}"))
        with objstore.open(path, "r", allow=[usermod]) as db, pytest.raises(objstore.ForbiddenGlobalError):
            db["k"]
        assert not marker.exists()

    def test_function_allowed_by_name(self, path: Path, usermod: str) -> None:
        module = importlib.import_module(usermod)
        objstore.open(path).close()
        plant(path, "k", b"\x80\x04" + _short(usermod) + _short("make") + b"\x93K\x07\x85R.")
        with objstore.open(path, "r", allow=[module.make]) as db:
            assert db["k"] == module.Thing(7)

    @pytest.mark.parametrize("bad", [1, True, [3], ["", "a..b"], [".a"], ["a."]])
    def test_bad_entries_refused_before_opening(self, path: Path, bad: Any) -> None:
        with pytest.raises((TypeError, ValueError), match="allow="):
            objstore.open(path, allow=bad)
        assert not path.exists()


# ------------------------------------------------ the unpickler classes


class Strict(objstore.Unpickler):
    """A user unpickler that refuses datetime, whatever allow= says."""

    def find_class(self, module: str, name: str) -> Any:
        if module == "datetime":
            raise pickle.UnpicklingError(f"Strict refuses {module}.{name}")
        return super().find_class(module, name)


class OnlyDecimal(objstore.RestrictedUnpickler):
    """A restricted unpickler whose own allowlist adds nothing: the safe set."""

    allowlist = objstore.Allowlist()


class TestUnpicklerClasses:
    def test_user_unpickler_still_runs_with_allow(self, path: Path, marker: Path) -> None:
        with objstore.open(path) as db:
            db.update({"date": datetime.date(2024, 1, 1), "n": decimal.Decimal(1)})
            db["evil"] = Payload(os.system, f"touch {marker}")
        with objstore.open(path, "r", unpickler=Strict, allow=()) as db:
            assert db["n"] == decimal.Decimal(1)
            with pytest.raises(pickle.UnpicklingError, match="Strict refuses"):
                db["date"]
            with pytest.raises(objstore.ForbiddenGlobalError):
                db["evil"]
        assert not marker.exists()

    def test_restricted_subclass_as_unpickler(self, path: Path) -> None:
        with objstore.open(path) as db:
            db["n"] = decimal.Decimal(1)
            db["call"] = Payload(print, "x")
        with objstore.open(path, "r", unpickler=OnlyDecimal) as db:
            assert db["n"] == 1
            with pytest.raises(objstore.ForbiddenGlobalError):
                db["call"]
        with objstore.open(path, "r", unpickler=OnlyDecimal, allow=[print]) as db:
            db["call"]

    def test_standalone(self) -> None:
        data = pickle.dumps([decimal.Decimal(2), Payload(print, "x")])
        with pytest.raises(objstore.ForbiddenGlobalError) as info:
            objstore.RestrictedUnpickler(io.BytesIO(data)).load()
        assert info.value.key is None and "builtins.print" in str(info.value)
        assert objstore.RestrictedUnpickler(io.BytesIO(data), allow="builtins.print").load()[0] == 2
        assert issubclass(objstore.RestrictedUnpickler, objstore.Unpickler)

    def test_a_shelf_pickles_with_its_restriction(self, path: Path, marker: Path) -> None:
        with objstore.open(path) as db:
            db["evil"] = Payload(os.system, f"touch {marker}")
            db["d"] = datetime.date(2024, 1, 1)
        with objstore.open(path, allow=[uuid.UUID], aliases={"a.B": "c.D"}, unpickler=Strict) as db:
            with pickle.loads(pickle.dumps(db)) as copy:
                with pytest.raises(objstore.ForbiddenGlobalError):
                    copy["evil"]
                with pytest.raises(pickle.UnpicklingError, match="Strict"):
                    copy["d"]
        assert not marker.exists()


# --------------------------------------------------------------- aliases


class TestAliases:
    def test_renamed_class(self, path: Path, usermod: str, tmp_path: Path) -> None:
        module = importlib.import_module(usermod)
        with objstore.open(path) as db:
            db["k"] = module.Thing(5)
        source = tmp_path / "mods" / f"{usermod}.py"
        source.write_text(
            source.read_text().replace("class Thing", "class Renamed").replace("Thing(n)", "Renamed(n)")
        )
        sys.modules.pop(usermod)
        importlib.invalidate_caches()
        with objstore.open(path, "r") as db:
            with pytest.raises(AttributeError) as missing:
                db["k"]
            assert "'k'" in "".join(getattr(missing.value, "__notes__", []))
        renamed = {f"{usermod}.Thing": f"{usermod}.Renamed"}
        with objstore.open(path, "r", aliases=renamed) as db:
            assert db["k"].n == 5 and type(db["k"]).__name__ == "Renamed"
        with objstore.open(path, "r", aliases=renamed, allow=[f"{usermod}.Renamed"]) as db:
            assert db["k"].n == 5
        # The allowlist checks the target: allowing the old name is not enough.
        with objstore.open(path, "r", aliases=renamed, allow=[f"{usermod}.Thing"]) as db:
            with pytest.raises(objstore.ForbiddenGlobalError) as info:
                db["k"]
            assert info.value.name == f"{usermod}.Renamed"

    @pytest.mark.parametrize("protocol", [0, pickle.HIGHEST_PROTOCOL])
    def test_moved_module(self, path: Path, usermod: str, tmp_path: Path, protocol: int) -> None:
        module = importlib.import_module(usermod)
        with objstore.open(path, protocol=protocol) as db:
            db["k"] = [module.Thing(1), module.Thing(2)]
        moved = f"{usermod}_moved"
        (tmp_path / "mods" / f"{usermod}.py").rename(tmp_path / "mods" / f"{moved}.py")
        sys.modules.pop(usermod)
        importlib.invalidate_caches()
        try:
            with objstore.open(path, "r", allow=()) as db:
                with pytest.raises(objstore.ForbiddenGlobalError):
                    db["k"]
            with objstore.open(path, "r", aliases={usermod: moved}) as db:
                assert [t.n for t in db["k"]] == [1, 2]
            with objstore.open(path, "r", aliases={usermod: moved}, allow=[moved]) as db:
                assert type(db["k"][0]).__module__ == moved
            with objstore.open(path, "r", aliases={usermod: moved}, allow=()) as db:
                with pytest.raises(objstore.ForbiddenGlobalError, match=moved):
                    db["k"]
        finally:
            sys.modules.pop(moved, None)

    def test_missing_class_named_with_alias_hint(self, path: Path, usermod: str) -> None:
        module = importlib.import_module(usermod)
        with objstore.open(path) as db:
            db["k"] = module.Thing(1)
        sys.modules.pop(usermod)
        with objstore.open(path, "r", aliases={usermod: "objstore_gone_xyz"}) as db:
            with pytest.raises(ImportError) as info:
                db["k"]
        notes = "\n".join(getattr(info.value, "__notes__", []))
        assert "objstore_gone_xyz.Thing" in notes and "aliases=" in notes and "'k'" in notes

    @pytest.mark.parametrize("bad", [["old"], {"old.A": 1}, {"": "new.B"}])
    def test_bad_aliases_refused_before_opening(self, path: Path, bad: Any) -> None:
        with pytest.raises(TypeError, match="aliases="):
            objstore.open(path, aliases=bad)
        assert not path.exists()

    def test_resolve(self) -> None:
        from objstore._restrict import resolve

        aliases = {"old.Name": "new:Outer.Inner", "pkg": "newpkg", "a.B": "c.d.E"}
        assert resolve("old", "Name", aliases) == ("new", "Outer.Inner")
        assert resolve("a", "B", aliases) == ("c.d", "E")
        assert resolve("pkg.sub", "X", aliases) == ("newpkg.sub", "X")
        assert resolve("pkgother", "X", aliases) == ("pkgother", "X")
        assert resolve("__builtin__", "set", {}) == ("builtins", "set")


# ------------------------------------------------------------- errors=


class TestErrorsArgument:
    @pytest.fixture
    def mixed(self, path: Path, usermod: str, damage_record: Callable[[Path, object, int], int]) -> Path:
        """A store with good values around a forbidden one, a missing class and a damaged record."""
        module = importlib.import_module(usermod)
        damaged = "the damaged value " * 10
        with objstore.open(path) as db:
            db.update({"a": 1, "c": [2], "e": {"x": 3}, "g": "end"})
            db["b-forbidden"] = Payload(print, "x")
            db["d-missing"] = module.Thing(1)
            db["f-damaged"] = damaged
        damage_record(path, damaged, 3)
        sys.modules.pop(usermod)
        (path.parent / "mods" / f"{usermod}.py").unlink()
        importlib.invalidate_caches()
        return path

    GOOD = [("a", 1), ("c", [2]), ("e", {"x": 3}), ("g", "end")]

    @pytest.mark.parametrize("where", ["shelf", "writeback", "snapshot", "transaction"])
    def test_skip(self, mixed: Path, where: str) -> None:
        with objstore.open(mixed, allow=(), writeback=where == "writeback") as db:
            if where == "snapshot":
                with db.snapshot() as snap:
                    assert list(snap.iteritems(errors="skip")) == self.GOOD
            elif where == "transaction":
                with db.transaction() as txn:
                    assert list(txn.iteritems(errors="skip")) == self.GOOD
            else:
                assert list(db.iteritems(errors="skip")) == self.GOOD
                assert list(db.itervalues(errors="skip")) == [v for _, v in self.GOOD]

    def test_keep(self, mixed: Path) -> None:
        with objstore.open(mixed, "r", allow=()) as db:
            pairs = list(db.iteritems(errors="keep"))
            assert [key for key, _ in pairs] == ["a", "b-forbidden", "c", "d-missing", "e", "f-damaged", "g"]
            bad = {key: value for key, value in pairs if isinstance(value, objstore.Unreadable)}
            assert set(bad) == {"b-forbidden", "d-missing", "f-damaged"}
            assert isinstance(bad["b-forbidden"].error, objstore.ForbiddenGlobalError)
            assert isinstance(bad["d-missing"].error, objstore.ForbiddenGlobalError)
            assert isinstance(bad["f-damaged"].error, objstore.CorruptError)
            for key, value in bad.items():
                assert value.key == key and key in repr(value)
            with pytest.raises(objstore.ForbiddenGlobalError):  # the raw record, as stored
                objstore.RestrictedUnpickler(io.BytesIO(bad["b-forbidden"].record)).load()
            values = list(db.itervalues(errors="keep"))
            assert len(values) == 7 and values[0] == 1

    def test_keep_without_restriction(self, mixed: Path) -> None:
        with objstore.open(mixed, "r") as db:
            bad = {k: v for k, v in db.iteritems(errors="keep") if isinstance(v, objstore.Unreadable)}
        assert set(bad) == {"d-missing", "f-damaged"}
        assert isinstance(bad["d-missing"].error, ImportError)

    def test_raise_is_the_default(self, mixed: Path) -> None:
        with objstore.open(mixed, "r", allow=()) as db:
            with pytest.raises(objstore.ForbiddenGlobalError):
                list(db.iteritems())
            with pytest.raises(objstore.ForbiddenGlobalError):
                list(db.iteritems(errors="raise"))

    def test_bad_value(self, shelf: objstore.Shelf) -> None:
        with pytest.raises(ValueError, match="errors"):
            list(shelf.iteritems(errors="ignore"))

    def test_store_errors_are_never_skipped(self, mixed: Path) -> None:
        db = objstore.open(mixed, allow=())
        iterator = db.iteritems(errors="skip")
        next(iterator)
        db.close()
        with pytest.raises(objstore.ClosedError):
            list(iterator)


# ------------------------------------------------------------- the scan


class TestScan:
    def test_iterglobals_loads_nothing(self, path: Path, marker: Path) -> None:
        with objstore.open(path, protocol=4) as db:
            db["evil"] = Payload(os.system, f"touch {marker}")
            db["dates"] = [datetime.date(2024, 1, 1), datetime.time(1), datetime.date(2024, 1, 2)]
            db["plain"] = [1, "two"]
            found = dict(db.iterglobals())
        assert not marker.exists()
        assert found["evil"] == [(os.system.__module__, "system")]
        # The module name of datetime.time comes from the memo (BINGET), as the pickler wrote it.
        assert found["dates"] == [("datetime", "date"), ("datetime", "time")]
        assert found["plain"] == []

    @pytest.mark.parametrize("name", list(raw_payloads(Path("m"))))
    def test_raw_payloads_are_seen(self, path: Path, name: str) -> None:
        objstore.open(path).close()
        plant(path, "k", raw_payloads(Path("m"))[name])
        with objstore.open(path, "r") as db:
            (key, names), *_ = db.iterglobals()
        assert names and not all(objstore.Allowlist().allows(*n) for n in names)

    def test_names_it_cannot_follow_are_reported(self) -> None:
        from objstore._restrict import record_globals

        # STACK_GLOBAL over two items that are not strings pushed by the pickle.
        stream = b"\x80\x04K\x01K\x02\x93."
        assert record_globals(stream) == [("?", "?")]
        assert not objstore.Allowlist().allows("?", "?")
        assert record_globals(global_call("__builtin__", "set", "x")) == [("builtins", "set")]


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "objstore", *args], capture_output=True, text=True, timeout=120
    )


class TestCheckCommand:
    def test_flags_unsafe_globals(self, path: Path, marker: Path) -> None:
        with objstore.open(path) as db:
            db["evil"] = Payload(os.system, f"touch {marker}")
            db["when"] = datetime.date(2024, 1, 1)
            db["plain"] = 1
        done = cli("check", str(path), "--unsafe-globals")
        assert done.returncode == 1, done.stderr
        system = f"{os.system.__module__}.system"
        assert f"globals of 'evil': {system} (NOT ALLOWED)" in done.stdout
        assert "globals of 'when': datetime.date\n" in done.stdout
        assert "'plain'" not in done.stdout
        assert "1 record(s) name globals outside" in done.stdout
        assert not marker.exists()
        allowed = cli("check", str(path), "--unsafe-globals", "--allow", system)
        assert allowed.returncode == 0, allowed.stdout + allowed.stderr
        assert "0 record(s)" in allowed.stdout

    def test_allow_needs_unsafe_globals(self, path: Path) -> None:
        objstore.open(path).close()
        done = cli("check", str(path), "--allow", "a.B")
        assert done.returncode == 2 and "--unsafe-globals" in done.stderr

    def test_safe_store_and_default(self, path: Path) -> None:
        with objstore.open(path) as db:
            db.update({"a": SAFE_VALUES, "evil": Payload(print, "x")})
        plain = cli("check", str(path))
        assert plain.returncode == 0 and "globals" not in plain.stdout
        with objstore.open(path) as db:
            del db["evil"]
        done = cli("check", str(path), "--unsafe-globals")
        assert done.returncode == 0, done.stdout
        assert "0 record(s)" in done.stdout


# ---------------------------------------------------- CPython's own suite

try:
    from test import pickletester
except ImportError:  # pragma: no cover - a Python without its test package
    pickletester = None

if pickletester is not None:
    import unittest

    class _Everything(objstore.Allowlist):
        """Allows every global by name: the checks all run, and pass."""

        def allows(self, module: str, name: str) -> bool:
            return True

        def by_module(self, module: str, name: str) -> bool:
            return False

    class _AliasesOnly(objstore.RestrictedUnpickler):
        allowlist = None
        aliases = {"old_x": "new_x"}

    class _AllowsEverything(objstore.RestrictedUnpickler):
        allowlist = _Everything()

    class TestUnpickleSuiteThroughRestrictedFindClass(pickletester.AbstractUnpickleTests, unittest.TestCase):
        """pickle's unpickling tests through `RestrictedUnpickler.find_class`, nothing refused."""

        bad_stack_errors = (pickle.UnpicklingError,)
        truncated_errors = (pickle.UnpicklingError,)
        unpickler: type[pickle.Unpickler] = _AliasesOnly

        def loads(self, buf: bytes, **kwargs: Any) -> Any:
            return self.unpickler(io.BytesIO(buf), **kwargs).load()

    class TestUnpickleSuiteThroughAllowlistChecks(TestUnpickleSuiteThroughRestrictedFindClass):
        """The same, with an allowlist that allows everything: loaded is what was checked."""

        unpickler = _AllowsEverything
