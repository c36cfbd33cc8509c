"""References between keys: `objstore.Ref`, made by ``ref(key)``, stored as the key's name.

Covers: lazy resolution (a reference reads the key's current value), equality
and hashing by key, dangling references (`KeyError` naming the key), cycles,
resolution through the transaction or snapshot that loaded a reference (and
`ClosedError` after it ends), other processes, references in containers, in
long-key records and in bulk writes, writeback shelves, the user's own
persistent ids composed with references, and what happens to a `Ref` outside
a store (plain ``pickle``, ``objstore.dumps``/``loads``, ``copy``). The record
of a value with references is checked against docs/format.md (section tag 5),
through the codec alone.
"""

from __future__ import annotations

import copy
import dataclasses
import gc
import pickle
import subprocess
import sys
import textwrap
import threading
import weakref
import zlib
from pathlib import Path
from typing import Any

import pytest

import objstore
from objstore import _records, _serialize

# ------------------------------------------------------------- the basics


class TestResolution:
    def test_a_reference_reads_the_current_value(self, shelf: objstore.Shelf) -> None:
        shelf["teams/1"] = {"name": "core"}
        shelf["users/1"] = {"name": "ada", "team": shelf.ref("teams/1")}
        team = shelf["users/1"]["team"]
        assert team() == {"name": "core"}
        shelf["teams/1"] = {"name": "renamed"}
        assert team() == {"name": "renamed"}  # lazy: read when called, not when loaded
        assert shelf["users/1"]["team"]() == {"name": "renamed"}

    def test_stored_as_the_name_not_a_copy(self, shelf: objstore.Shelf) -> None:
        shelf["big"] = b"x" * 100_000
        shelf["holder"] = [shelf.ref("big")] * 10
        record = shelf._source.get(b"holder")
        assert len(record) < 200  # ten names, not ten copies of 100 kB

    def test_key_equality_and_hash(self, path: Path, tmp_path: Path) -> None:
        with objstore.open(path) as db, objstore.open(tmp_path / "other") as other:
            a, again, elsewhere, b = db.ref("a"), db.ref("a"), other.ref("a"), db.ref("b")
            assert a.key == "a" and repr(a) == "<objstore.Ref 'a'>"
            assert a == again == elsewhere and a != b
            assert hash(a) == hash(again) == hash(elsewhere)
            assert len({a, again, elsewhere, b}) == 2
            assert a != "a" and "a" != a
            db["refs"] = {a: 1, b: 2}  # usable as dict keys, stored and loaded as such
            assert db["refs"] == {a: 1, b: 2}

    def test_dangling_reference_raises_key_error_naming_the_key(self, shelf: objstore.Shelf) -> None:
        shelf["holder"] = shelf.ref("missing/7")
        ref = shelf["holder"]
        with pytest.raises(KeyError) as caught:
            ref()
        assert caught.value.args == ("missing/7",)
        shelf["missing/7"] = "now here"
        assert ref() == "now here"
        del shelf["missing/7"]
        with pytest.raises(KeyError, match="missing/7"):
            ref()

    def test_cycles_store_and_load_without_recursing(self, shelf: objstore.Shelf) -> None:
        shelf["a"] = {"name": "a", "next": shelf.ref("b")}
        shelf["b"] = {"name": "b", "next": shelf.ref("a")}
        shelf["self"] = {"me": shelf.ref("self")}
        node = shelf["a"]
        for _ in range(1000):  # walking the cycle reads one key per step
            node = node["next"]()
        assert node["name"] == "a"
        assert shelf["self"]["me"]()["me"]()["me"].key == "self"

    def test_one_ref_object_per_key_in_a_value(self, shelf: objstore.Shelf) -> None:
        shelf["pair"] = (shelf.ref("x"), shelf.ref("x"), shelf.ref("y"))
        first, second, third = shelf["pair"]
        assert first is second and first is not third

    def test_ref_applies_the_key_rules(self, shelf: objstore.Shelf) -> None:
        with pytest.raises(TypeError):
            shelf.ref(b"bytes")  # type: ignore[arg-type]
        with pytest.raises(ValueError):
            shelf.ref("")
        with pytest.raises(ValueError):
            shelf.ref("\ud800")

    def test_references_in_containers_and_objects(self, shelf: objstore.Shelf) -> None:
        shelf["t"] = "target"
        value = Holder(
            refs=[shelf.ref("t")],
            nested={"deep": [({shelf.ref("t")}, frozenset({shelf.ref("t")}))]},
        )
        shelf["holder"] = value
        loaded = shelf["holder"]
        assert loaded == value
        assert loaded.refs[0]() == "target"
        ((a_set, a_frozenset),) = loaded.nested["deep"]
        assert next(iter(a_set))() == next(iter(a_frozenset))() == "target"

    def test_iteration_and_views_resolve(self, shelf: objstore.Shelf) -> None:
        shelf.update({f"n/{i}": {"i": i, "next": shelf.ref(f"n/{(i + 1) % 50}")} for i in range(50)})
        shelf["plain"] = 1
        assert [value["next"]()["i"] for value in shelf.itervalues("n/")] == [
            (int(key[2:]) + 1) % 50 for key in shelf.iterkeys("n/")
        ]
        assert shelf.first("n/")[1]["next"].key == "n/1"
        assert sum(1 for _, v in shelf.items() if isinstance(v, dict)) == 50

    def test_modify_edit_pop_keep_references(self, shelf: objstore.Shelf) -> None:
        shelf["t"] = 1
        shelf["list"] = [shelf.ref("t")]
        shelf.modify("list", lambda refs: [*refs, shelf.ref("list")])
        with shelf.edit("list") as refs:
            refs.append(shelf.ref("t"))
        assert [r.key for r in shelf["list"]] == ["t", "list", "t"]
        popped = shelf.pop("list")
        assert popped[0]() == 1 and popped[2] is popped[0]

    def test_plain_values_stay_kind_1(self, shelf: objstore.Shelf) -> None:
        shelf["plain"] = {"a": [1, 2]}
        shelf["refs"] = {"a": [shelf.ref("plain")]}
        assert shelf._source.get(b"plain")[-5] == 1
        assert shelf._source.get(b"refs")[-5] == 2
        assert shelf.verify() == []


@dataclasses.dataclass
class Holder:
    refs: list[Any]
    nested: dict[str, Any]


# ------------------------------------------- transactions and snapshots


class TestThroughTransactionsAndSnapshots:
    def test_transaction_reads_its_own_uncommitted_write(self, shelf: objstore.Shelf) -> None:
        shelf["target"] = "committed"
        shelf["holder"] = shelf.ref("target")
        with shelf.transaction() as txn:
            txn["target"] = "uncommitted"
            loaded = txn["holder"]
            made = txn.ref("target")
            assert loaded() == made() == "uncommitted"
            txn["new"] = "only in the transaction"
            assert txn.ref("new")() == "only in the transaction"
        assert shelf["holder"]() == "uncommitted"
        with pytest.raises(objstore.ClosedError, match="transaction is closed"):
            loaded()
        with pytest.raises(objstore.ClosedError):
            made()
        with pytest.raises(objstore.ClosedError):
            txn.ref("target")

    def test_rolled_back_transaction_leaves_nothing_to_resolve(self, shelf: objstore.Shelf) -> None:
        shelf["holder"] = shelf.ref("target")
        with pytest.raises(RuntimeError), shelf.transaction() as txn:
            txn["target"] = "rolled back"
            assert shelf["holder"]() == "rolled back"  # the shelf joins this thread's transaction
            raise RuntimeError
        with pytest.raises(KeyError):
            shelf["holder"]()

    def test_snapshot_keeps_its_view(self, shelf: objstore.Shelf) -> None:
        shelf["target"] = "before"
        shelf["holder"] = shelf.ref("target")
        with shelf.snapshot() as snap:
            loaded, made = snap["holder"], snap.ref("target")
            shelf["target"] = "after"
            del shelf["holder"]
            assert loaded() == made() == "before"
            assert shelf.ref("target")() == "after"
        with pytest.raises(objstore.ClosedError, match="snapshot is closed"):
            loaded()

    def test_closed_shelf(self, path: Path) -> None:
        db = objstore.open(path)
        db["t"] = 1
        db["h"] = db.ref("t")
        loaded, made = db["h"], db.ref("t")
        db.close()
        for ref in (loaded, made):
            with pytest.raises(objstore.ClosedError):
                ref()
        with pytest.raises(objstore.ClosedError):
            db.ref("t")

    def test_references_keep_no_mapping_alive(self, shelf: objstore.Shelf) -> None:
        shelf["h"] = shelf.ref("t")
        snap = shelf.snapshot()
        ref = snap["h"]
        alive = weakref.ref(snap)
        gc.disable()  # freed by reference counting alone: no cycle through its decoder or its refs
        try:
            snap.close()
            del snap
            assert alive() is None
        finally:
            gc.enable()
        with pytest.raises(objstore.ClosedError, match="is gone"):
            ref()


# ------------------------------------------------------------ elsewhere


def test_a_reference_resolves_in_the_process_that_reads_it(tmp_path: Path) -> None:
    """Written here, read in a real subprocess (its own store handle), and back."""
    store = tmp_path / "store"
    with objstore.open(store) as db:
        db["teams/core"] = {"name": "core", "members": [db.ref("users/ada")]}
        db["users/ada"] = {"name": "ada", "team": db.ref("teams/core")}
    child = textwrap.dedent(
        """
        import sys, objstore
        with objstore.open(sys.argv[1]) as db:
            ada = db["users/ada"]
            team = ada["team"]()
            assert team["members"][0]()["name"] == "ada"
            db["teams/core"] = {**team, "name": "core (renamed in the child)"}
            db["users/bob"] = {"name": "bob", "team": ada["team"], "friend": db.ref("users/ada")}
        print(team["name"])
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", child, str(store)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == "core\n"
    with objstore.open(store, "r") as db:
        bob = db["users/bob"]
        assert bob["team"]()["name"] == "core (renamed in the child)"
        assert bob["friend"]()["team"]() == bob["team"]()


def test_a_reference_stored_into_another_store_names_a_key_there(tmp_path: Path) -> None:
    with objstore.open(tmp_path / "one") as one, objstore.open(tmp_path / "two") as two:
        one["k"], two["k"] = "in one", "in two"
        two["holder"] = one.ref("k")  # just the name
        assert two["holder"]() == "in two"


# --------------------------------------------------------- writes in bulk


class TestBulkAndLongKeys:
    def test_update_with_and_without_references(self, shelf: objstore.Shelf) -> None:
        values: dict[str, Any] = {f"plain/{i}": i for i in range(10)}
        values.update({f"ref/{i}": [shelf.ref(f"plain/{i}")] for i in range(10)})
        values["mixed"] = {"plain": 1, "ref": shelf.ref("plain/3")}
        shelf.update(values)
        assert [shelf[f"ref/{i}"][0]() for i in range(10)] == list(range(10))
        assert shelf["mixed"]["ref"]() == 3
        assert shelf["plain/9"] == 9

    def test_update_of_many_chunks(self, shelf: objstore.Shelf) -> None:
        count = 5000  # more than one chunk of the bulk write
        shelf.update(
            (f"k/{i:05}", shelf.ref(f"k/{(i + 1) % count:05}") if i % 7 == 0 else i) for i in range(count)
        )
        assert shelf["k/00000"]() == 1
        assert shelf["k/04998"]() == 4999
        assert shelf["k/00001"] == 1

    def test_failed_update_with_references_stores_nothing(self, shelf: objstore.Shelf) -> None:
        with pytest.raises(TypeError, match="while pickling the value for key 'bad'"):
            shelf.update({"good": shelf.ref("x"), "bad": [shelf.ref("x"), threading.Lock()]})
        assert len(shelf) == 0

    def test_long_keys_hold_and_are_named_by_references(self, shelf: objstore.Shelf) -> None:
        long_a, long_b = "a" * 600, "b" * 700
        shelf[long_a] = {"to": shelf.ref(long_b)}
        shelf[long_b] = {"to": shelf.ref(long_a), "short": shelf.ref("s")}
        shelf["s"] = "short"
        assert shelf[long_a]["to"]()["to"]()["to"].key == long_b
        assert shelf[long_b]["short"]() == "short"
        assert sorted(shelf) == sorted(
            [long_a, long_b, "s"]
        )  # the whole keys are read back from their records
        with shelf.transaction() as txn:
            txn.update({long_a + "!": [txn.ref(long_a)]})
        assert shelf[long_a + "!"][0]()["to"].key == long_b
        assert shelf.verify() == []


# ---------------------------------------------------------------- writeback


def test_writeback_shelf(path: Path) -> None:
    with objstore.open(path, writeback=True) as db:
        db["team"] = {"name": "core"}
        db["users"] = []
        db["users"].append({"name": "ada", "team": db.ref("team")})  # changed in the cache
        db.sync()
        db["users"].append({"name": "bob", "team": db.ref("team")})
        assert db["users"][1]["team"]() == {"name": "core"}
    with objstore.open(path, writeback=True) as db:
        users = db["users"]
        assert [u["team"]()["name"] for u in users] == ["core", "core"]
        db["team"]["name"] = "renamed"  # a cached entry: the reference reads the cached object
        assert users[0]["team"]()["name"] == "renamed"
    with objstore.open(path, "r") as db:
        assert db["users"][0]["team"]() == {"name": "renamed"}


# ---------------------------------------------- pickling, custom picklers


SENTINEL = object()


class SentinelPickler(objstore.Pickler):
    """The user's own persistent ids: SENTINEL is stored as the id "sentinel"."""

    def persistent_id(self, obj: Any) -> Any:
        return "sentinel" if obj is SENTINEL else None


class SentinelUnpickler(objstore.Unpickler):
    def persistent_load(self, pid: Any) -> Any:
        if pid == "sentinel":
            return SENTINEL
        raise pickle.UnpicklingError(f"unknown id {pid!r}")


class TestPickling:
    def test_user_persistent_ids_compose_with_references(self, path: Path) -> None:
        with objstore.open(path, pickler=SentinelPickler, unpickler=SentinelUnpickler) as db:
            db["t"] = "target"
            db["both"] = [SENTINEL, db.ref("t")]
            db["user only"] = [SENTINEL]
            both, user_only = db["both"], db["user only"]
            assert both[0] is SENTINEL and both[1]() == "target"
            assert user_only == [SENTINEL]
            assert db._source.get(b"user only")[-5] == 1  # no reference: as before

    def test_plain_pickle_of_a_reference_raises(self, shelf: objstore.Shelf) -> None:
        ref = shelf.ref("k")
        for dump in (pickle.dumps, objstore.dumps):
            with pytest.raises(pickle.PicklingError, match=r"pickle ref\.key"):
                dump({"inside": [ref]})
        assert pickle.loads(pickle.dumps(ref.key)) == "k"

    def test_copies_are_the_reference_itself(self, shelf: objstore.Shelf) -> None:
        ref = shelf.ref("k")
        assert copy.copy(ref) is ref and copy.deepcopy([ref])[0] is ref

    def test_a_record_with_references_outside_a_store(self, shelf: objstore.Shelf) -> None:
        shelf["k"] = [shelf.ref("t")]
        record = shelf._source.get(b"k")
        for load in (pickle.loads, objstore.loads):
            with pytest.raises(pickle.UnpicklingError, match="persistent"):
                load(record)

    def test_protocol_0_refuses_references(self, path: Path) -> None:
        with objstore.open(path, protocol=0) as db:
            db["plain"] = 1
            with pytest.raises(pickle.PicklingError, match="protocol 1 or higher"):
                db["k"] = db.ref("plain")
            assert "k" not in db

    @pytest.mark.parametrize("protocol", range(1, pickle.HIGHEST_PROTOCOL + 1))
    def test_every_other_protocol(self, path: Path, protocol: int) -> None:
        with objstore.open(path, protocol=protocol) as db:
            db["t"] = "é"
            db["k"] = {"r": db.ref("t"), "other": db.ref("ключ")}
            assert db["k"]["r"]() == "é"


# ------------------------------------------------- the record, per format.md


def test_record_format_of_a_value_with_references() -> None:
    """A kind 2 record whose section tag 5 lists the keys named, each once, in the order first met."""
    codec = _serialize.Codec()
    refs = [objstore.Ref(key, lambda: None) for key in ("b", "ключ", "b", "")]
    record = bytes(codec.encode({"refs": refs}, "holder"))
    assert zlib.crc32(record) == 0x2144DF1C and record[-5] == 2 and record[-6] == 1  # one section
    assert record[-7] == 5  # its tag
    length = int.from_bytes(record[-11:-7], "little")
    payload = record[-11 - length : -11]
    names, at = [], 0
    while at < len(payload):
        size = int.from_bytes(payload[at : at + 4], "little")
        names.append(payload[at + 4 : at + 4 + size].decode())
        at += 4 + size
    assert names == ["b", "ключ", ""]

    class Persistent(pickle.Unpickler):
        def persistent_load(self, pid: Any) -> Any:
            return pid

    import io

    loaded = Persistent(io.BytesIO(record)).load()  # the persistent id of a reference
    assert loaded == {"refs": [("objstore.ref", key) for key in ("b", "ключ", "b", "")]}

    long_record = bytes(codec.encode({"refs": refs}, "x" * 600, keep_key=True))
    assert long_record[-6] == 2 and _records.record_key(long_record) == b"x" * 600
    assert _records.is_intact(long_record)
    with pytest.raises(pickle.UnpicklingError):  # a codec not bound to a mapping: no persistent_load
        codec.decode(long_record, "x" * 600)


def test_damaged_record_with_references_is_corrupt(shelf: objstore.Shelf) -> None:
    codec = _serialize.Codec()
    record = bytearray(codec.encode([objstore.Ref("t", lambda: None)], "k"))
    record[3] ^= 0x5A
    with pytest.raises(objstore.CorruptError):
        shelf._decode(bytes(record), "k")
