"""The serializer: objstore's Pickler/Unpickler/dumps/loads and the value record format.

- CPython's own pickle suites (``test.pickletester``) run against
  ``objstore.Pickler``/``Unpickler``/``dumps``/``loads``, wired the way CPython's
  ``Lib/test/test_pickle.py`` wires them for the C pickler.
- ``objstore.dumps`` makes exactly pickle's bytes, for every protocol.
- The record format (pickle stream, kind byte, CRC-32 that leaves the fixed
  residue) round-trips; any single damaged byte is refused with `CorruptError`
  naming the key; an unknown kind with a valid CRC gives `UnsupportedFormatError`.
  These use the codec directly (objstore._serialize), not a store.
- Through a store: custom Pickler/Unpickler subclasses are really used, and a
  value that fails to pickle leaves the store exactly as it was.
"""

from __future__ import annotations

import collections
import datetime
import decimal
import fractions
import io
import pickle
import unittest
import zlib
from pathlib import Path
from typing import Any

import pytest

import objstore
from objstore import _serialize

pickletester = pytest.importorskip("test.pickletester", reason="this Python has no test package")


CRC_RESIDUE = 0x2144DF1C
PROTOCOLS = range(pickle.HIGHEST_PROTOCOL + 1)


# ----------------------------------------------------------- CPython's suites


class TestPickleSuiteWithDumpsLoads(
    pickletester.AbstractPickleTests, pickletester.AbstractUnpickleTests, unittest.TestCase
):
    """pickle's tests through ``objstore.dumps``/``objstore.loads`` (like CPython's InMemoryPickleTests)."""

    pickler = objstore.Pickler
    unpickler = objstore.Unpickler
    # The C unpickler reports a bad stack and truncated data as UnpicklingError only.
    bad_stack_errors = (pickle.UnpicklingError,)
    truncated_errors = (pickle.UnpicklingError,)

    def dumps(self, arg: Any, protocol: int | None = None, **kwargs: Any) -> bytes:
        return objstore.dumps(arg, protocol, **kwargs)

    def loads(self, buf: bytes, **kwargs: Any) -> Any:
        return objstore.loads(buf, **kwargs)


class TestPickleSuiteWithClasses(pickletester.AbstractPickleTests, unittest.TestCase):
    """pickle's tests through the classes and a file (like CPython's CPicklerTests)."""

    pickler = objstore.Pickler
    unpickler = objstore.Unpickler

    def dumps(self, arg: Any, proto: int | None = None, **kwargs: Any) -> bytes:
        buffer = io.BytesIO()
        self.pickler(buffer, proto, **kwargs).dump(arg)
        return buffer.getvalue()

    def loads(self, buf: bytes, **kwargs: Any) -> Any:
        return self.unpickler(io.BytesIO(buf), **kwargs).load()


class TestUnpickleSuiteWithClass(pickletester.AbstractUnpickleTests, unittest.TestCase):
    """pickle's unpickling tests through ``objstore.Unpickler`` (like CPython's CUnpicklerTests)."""

    unpickler = objstore.Unpickler
    bad_stack_errors = (pickle.UnpicklingError,)
    truncated_errors = (pickle.UnpicklingError,)

    def loads(self, buf: bytes, **kwargs: Any) -> Any:
        return self.unpickler(io.BytesIO(buf), **kwargs).load()


class TestPicklerUnpicklerObjects(pickletester.AbstractPicklerUnpicklerObjectTests, unittest.TestCase):
    pickler_class = objstore.Pickler
    unpickler_class = objstore.Unpickler


class TestReducerOverrideHook(pickletester.AbstractHookTests, unittest.TestCase):
    class CustomPickler(objstore.Pickler, pickletester.AbstractCustomPicklerClass):
        pass

    pickler_class = CustomPickler


class TestDispatchTable(pickletester.AbstractDispatchTableTests, unittest.TestCase):
    pickler_class = objstore.Pickler

    def get_dispatch_table(self) -> dict[Any, Any]:
        return dict(pickle.dispatch_table)


class TestPersistentIds(pickletester.AbstractPersistentPicklerTests, unittest.TestCase):
    pickler = objstore.Pickler
    unpickler = objstore.Unpickler

    def dumps(self, arg: Any, proto: int | None = None) -> bytes:
        test = self

        class PersPickler(self.pickler):  # type: ignore[name-defined, misc]
            def persistent_id(self, obj: Any) -> Any:
                return test.persistent_id(obj)

        buffer = io.BytesIO()
        PersPickler(buffer, proto).dump(arg)
        return buffer.getvalue()

    def loads(self, buf: bytes, **kwargs: Any) -> Any:
        test = self

        class PersUnpickler(self.unpickler):  # type: ignore[name-defined, misc]
            def persistent_load(self, pid: Any) -> Any:
                return test.persistent_load(pid)

        return PersUnpickler(io.BytesIO(buf), **kwargs).load()


# --------------------------------------------------------- drop-in for pickle

SAMPLES: list[Any] = [
    None,
    True,
    0,
    -(2**70),
    3.5,
    "text é €",
    b"\x00\xff" * 40,
    bytearray(b"abc"),
    [1, [2, [3]]],
    (1, "two", 3.0),
    {"a": {"b": [1, 2]}, "c": frozenset({1, 2})},
    {1, 2, 3},
    decimal.Decimal("1.10"),
    fractions.Fraction(1, 3),
    datetime.datetime(2024, 5, 6, 7, 8, 9),
    collections.OrderedDict(a=1, b=2),
    list(range(2000)),
    "x" * 100_000,
]


class TestDropIn:
    def test_subclasses_of_picklers_c_classes(self) -> None:
        c_pickle = pytest.importorskip("_pickle")
        assert issubclass(objstore.Pickler, pickle.Pickler)
        assert issubclass(objstore.Unpickler, pickle.Unpickler)
        assert issubclass(objstore.Pickler, c_pickle.Pickler)
        assert issubclass(objstore.Unpickler, c_pickle.Unpickler)

    @pytest.mark.parametrize("protocol", PROTOCOLS)
    def test_dumps_makes_picklers_bytes(self, protocol: int) -> None:
        for sample in SAMPLES:
            assert objstore.dumps(sample, protocol) == pickle.dumps(sample, protocol), sample

    def test_dumps_default_protocol(self) -> None:
        for sample in SAMPLES:
            assert objstore.dumps(sample) == pickle.dumps(sample)

    @pytest.mark.parametrize("protocol", PROTOCOLS)
    def test_loads_reads_picklers_bytes(self, protocol: int) -> None:
        for sample in SAMPLES:
            assert objstore.loads(pickle.dumps(sample, protocol)) == sample

    @pytest.mark.parametrize("protocol", PROTOCOLS)
    def test_classes_make_picklers_bytes(self, protocol: int) -> None:
        for sample in SAMPLES:
            ours, theirs = io.BytesIO(), io.BytesIO()
            objstore.Pickler(ours, protocol).dump(sample)
            pickle.Pickler(theirs, protocol).dump(sample)
            assert ours.getvalue() == theirs.getvalue()
            assert objstore.Unpickler(io.BytesIO(ours.getvalue())).load() == sample

    def test_same_constructor_arguments(self) -> None:
        buffers: list[pickle.PickleBuffer] = []
        buffer = io.BytesIO()
        objstore.Pickler(buffer, 5, fix_imports=False, buffer_callback=buffers.append).dump(
            pickle.PickleBuffer(b"out of band")
        )
        assert len(buffers) == 1
        loaded = objstore.Unpickler(
            io.BytesIO(buffer.getvalue()),
            fix_imports=False,
            encoding="latin1",
            errors="strict",
            buffers=buffers,
        ).load()
        assert bytes(loaded) == b"out of band"

    def test_dumps_loads_keywords(self) -> None:
        buffers: list[pickle.PickleBuffer] = []
        data = objstore.dumps(pickle.PickleBuffer(b"abc"), 5, buffer_callback=buffers.append)
        assert bytes(objstore.loads(data, buffers=buffers)) == b"abc"
        # A Python 2 str pickle, decoded as pickle.loads would.
        assert objstore.loads(b"U\x04caf\xe9q\x00.", encoding="latin1") == "café"


# ------------------------------------------------------------- record format


def codec(protocol: int | None = None) -> _serialize.Codec:
    """The codec a store with default settings uses."""
    return _serialize.Codec(protocol)


def make_record(payload: bytes, kind: int) -> bytes:
    """A record laid out as docs/format.md says, with a valid CRC."""
    body = payload + bytes([kind])
    return body + zlib.crc32(body).to_bytes(4, "little")


class TestRecordFormat:
    @pytest.mark.parametrize("protocol", PROTOCOLS)
    def test_layout(self, protocol: int) -> None:
        for sample in SAMPLES:
            record = codec(protocol).encode(sample, "k")
            assert record[:-5] == pickle.dumps(sample, protocol)
            assert record[-5] == 1, "kind 1: one pickle stream"
            assert record[-4:] == zlib.crc32(record[:-4]).to_bytes(4, "little")
            assert zlib.crc32(record) == CRC_RESIDUE
            assert record == make_record(pickle.dumps(sample, protocol), 1)

    @pytest.mark.parametrize("protocol", PROTOCOLS)
    def test_round_trip(self, protocol: int) -> None:
        for sample in SAMPLES:
            assert codec(protocol).decode(codec(protocol).encode(sample, "k"), "k") == sample

    def test_any_codec_reads_any_protocol(self) -> None:
        for protocol in PROTOCOLS:
            assert codec(2).decode(codec(protocol).encode(SAMPLES[10], "k"), "k") == SAMPLES[10]

    def test_pickle_stream_comes_first(self) -> None:
        record = codec().encode({"a": 1}, "k")
        assert pickle.loads(record) == {"a": 1}

    def test_every_single_flipped_byte_is_refused(self) -> None:
        record = codec().encode({"name": "value", "n": [1, 2, 3]}, "the key")
        for index in range(len(record)):
            for mask in (0x01, 0x80, 0xFF):
                damaged = bytearray(record)
                damaged[index] ^= mask
                with pytest.raises(objstore.CorruptError) as info:
                    codec().decode(bytes(damaged), "the key")
                assert info.value.key == "the key"
                assert "'the key'" in str(info.value)

    def test_truncated_records_are_refused(self) -> None:
        record = codec().encode("value", "k")
        for length in range(len(record)):
            with pytest.raises(objstore.CorruptError) as info:
                codec().decode(record[:length], "k")
            assert info.value.key == "k"

    def test_extra_bytes_are_refused(self) -> None:
        record = codec().encode("value", "k")
        with pytest.raises(objstore.CorruptError):
            codec().decode(record + b"\x00", "k")

    @pytest.mark.parametrize("kind", [0, 3, 127, 255])
    def test_unknown_kind_with_valid_crc(self, kind: int) -> None:
        record = make_record(pickle.dumps("value"), kind)
        assert zlib.crc32(record) == CRC_RESIDUE
        with pytest.raises(objstore.UnsupportedFormatError) as info:
            codec().decode(record, "the key")
        assert "'the key'" in str(info.value)
        assert not isinstance(info.value, objstore.CorruptError)

    def test_kind_1_with_a_later_section_is_not_guessed(self) -> None:
        # A future kind may add sections after the pickle; kind 1 with valid CRC reads the pickle only.
        record = make_record(pickle.dumps("value"), 1)
        assert codec().decode(record, "k") == "value"

    def test_error_on_unpickling_names_the_key(self) -> None:
        record = make_record(b"\x80\x05cno_such_module\nThing\n)\x81.", 1)
        with pytest.raises(ModuleNotFoundError) as info:
            codec().decode(record, "the key")
        assert any("'the key'" in note for note in info.value.__notes__)

    def test_error_on_pickling_names_the_key(self) -> None:
        with pytest.raises(Exception) as info:
            codec().encode(lambda: None, "the key")
        assert any("'the key'" in note for note in info.value.__notes__)


# ------------------------------------------------ custom classes through a store


class Point:
    def __init__(self, x: int, y: int) -> None:
        self.x, self.y = x, y


class Secret:
    """A class the restricted unpickler below refuses to load."""

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret)


class PointsAsTuples(objstore.Pickler):
    """Stores every Point as a tagged tuple."""

    def reducer_override(self, obj: Any) -> Any:
        if isinstance(obj, Point):
            return tuple, (("point", obj.x, obj.y),)
        return NotImplemented


class AllowList(objstore.Unpickler):
    """Loads only the classes listed in `allowed`."""

    allowed = {("builtins", "set"), ("builtins", "frozenset"), ("collections", "OrderedDict")}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self.allowed:
            raise pickle.UnpicklingError(f"{module}.{name} is not allowed")
        return super().find_class(module, name)


class TracingPickler(pickle.Pickler):
    """pickle's own class (not objstore's) is accepted too; counts its dumps."""

    dumps = 0

    def dump(self, obj: Any) -> None:
        type(self).dumps += 1
        super().dump(obj)


class TestCustomClassesInAStore:
    def test_reducer_override_is_used(self, path: Path) -> None:
        with objstore.open(path, pickler=PointsAsTuples) as db:
            db["p"] = Point(1, 2)
            db.update({"q": Point(3, 4)})
            with db.transaction() as txn:
                txn["r"] = Point(5, 6)
            assert db["p"] == ("point", 1, 2)
            assert db["q"] == ("point", 3, 4)
            assert db["r"] == ("point", 5, 6)
            db["plain"] = [1, 2]
            assert db["plain"] == [1, 2]

    def test_pickle_pickler_subclass_accepted(self, path: Path) -> None:
        TracingPickler.dumps = 0
        with objstore.open(path, pickler=TracingPickler) as db:
            db["a"] = 1
            db.setdefault("b", 2)
        assert TracingPickler.dumps == 2

    def test_find_class_allow_list_refuses(self, path: Path) -> None:
        with objstore.open(path) as db:
            db["allowed"] = {1, 2}
            db["refused"] = Secret()
        with objstore.open(path, unpickler=AllowList) as db:
            assert db["allowed"] == {1, 2}
            with pytest.raises(pickle.UnpicklingError, match="Secret is not allowed") as info:
                db["refused"]
            assert any("'refused'" in note for note in info.value.__notes__)
            with pytest.raises(pickle.UnpicklingError):
                db.get("refused")
            with pytest.raises(pickle.UnpicklingError):
                dict(db.items())
            with db.snapshot() as snap:
                with pytest.raises(pickle.UnpicklingError):
                    snap["refused"]
            with pytest.raises(pickle.UnpicklingError):
                db.pop("refused")
            assert "refused" in db, "a value that cannot be loaded must not be popped"
        with objstore.open(path) as db:
            assert db["refused"] == Secret()

    def test_pickle_unpickler_subclass_accepted(self, path: Path) -> None:
        class Restricted(pickle.Unpickler):
            def find_class(self, module: str, name: str) -> Any:
                raise pickle.UnpicklingError("nothing allowed")

        with objstore.open(path, unpickler=Restricted) as db:
            db["plain"] = [1, "a"]
            db["obj"] = Secret()
            assert db["plain"] == [1, "a"]
            with pytest.raises(pickle.UnpicklingError):
                db["obj"]


# -------------------------------------------------- values that fail to pickle


class Unpicklable:
    def __reduce__(self) -> Any:
        raise pickle.PicklingError("this object refuses to be pickled")


def pickling_error() -> type[BaseException]:
    try:
        pickle.dumps(Unpicklable())
    except Exception as exc:
        return type(exc)
    raise AssertionError("Unpicklable pickled")


class TestValueThatFailsToPickle:
    @pytest.fixture
    def db(self, path: Path) -> Any:
        with objstore.open(path) as db:
            db.update({"a": 1, "b": [2]})
            yield db

    def check_error(self, info: pytest.ExceptionInfo[BaseException], key: str) -> None:
        assert type(info.value) is pickling_error()
        assert any(repr(key) in note for note in info.value.__notes__)

    def test_setitem_new_key(self, db: objstore.Shelf) -> None:
        with pytest.raises(pickle.PicklingError) as info:
            db["new"] = Unpicklable()
        self.check_error(info, "new")
        assert dict(db) == {"a": 1, "b": [2]}

    def test_setitem_existing_key(self, db: objstore.Shelf) -> None:
        with pytest.raises(pickle.PicklingError) as info:
            db["a"] = Unpicklable()
        self.check_error(info, "a")
        assert dict(db) == {"a": 1, "b": [2]}

    def test_local_function(self, db: objstore.Shelf) -> None:
        with pytest.raises((pickle.PicklingError, AttributeError)) as info:
            db["f"] = lambda: None
        assert any("'f'" in note for note in info.value.__notes__)
        assert dict(db) == {"a": 1, "b": [2]}

    def test_update_stores_nothing(self, db: objstore.Shelf) -> None:
        with pytest.raises(pickle.PicklingError) as info:
            db.update([("c", 3), ("a", 100), ("bad", Unpicklable()), ("d", 4)])
        self.check_error(info, "bad")
        assert dict(db) == {"a": 1, "b": [2]}

    def test_setdefault(self, db: objstore.Shelf) -> None:
        with pytest.raises(pickle.PicklingError):
            db.setdefault("new", Unpicklable())
        assert dict(db) == {"a": 1, "b": [2]}

    def test_modify(self, db: objstore.Shelf) -> None:
        with pytest.raises(pickle.PicklingError):
            db.modify("a", lambda _: Unpicklable())
        assert dict(db) == {"a": 1, "b": [2]}

    def test_edit(self, db: objstore.Shelf) -> None:
        with pytest.raises(pickle.PicklingError):
            with db.edit("b") as value:
                value.append(Unpicklable())
        assert dict(db) == {"a": 1, "b": [2]}

    def test_transaction_rolls_back_when_it_propagates(self, db: objstore.Shelf) -> None:
        with pytest.raises(pickle.PicklingError):
            with db.transaction() as txn:
                txn["c"] = 3
                txn["d"] = Unpicklable()
        assert dict(db) == {"a": 1, "b": [2]}

    def test_transaction_goes_on_when_caught(self, db: objstore.Shelf) -> None:
        with db.transaction() as txn:
            txn["c"] = 3
            with pytest.raises(pickle.PicklingError):
                txn["d"] = Unpicklable()
            assert "d" not in txn
        assert dict(db) == {"a": 1, "b": [2], "c": 3}

    def test_writeback_shelf(self, path: Path) -> None:
        with objstore.open(path, writeback=True) as db:
            db["a"] = 1
            with pytest.raises(pickle.PicklingError):
                db["bad"] = Unpicklable()
            assert "bad" not in db
            assert dict(db) == {"a": 1}

    def test_custom_pickler_error(self, path: Path) -> None:
        class Failing(objstore.Pickler):
            def reducer_override(self, obj: Any) -> Any:
                if isinstance(obj, Point):
                    raise ValueError("points are not welcome")
                return NotImplemented

        with objstore.open(path, pickler=Failing) as db:
            db["ok"] = 1
            with pytest.raises(ValueError, match="points are not welcome") as info:
                db["p"] = Point(0, 0)
            assert any("'p'" in note for note in info.value.__notes__)
            assert dict(db) == {"ok": 1}
