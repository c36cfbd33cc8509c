"""Behaviour of every public Shelf method, on real stores in temporary directories.

Organised by behaviour: the dict face (get, setdefault, pop, popitem, update,
clear, views, ``in``, ``len``, sorted iteration, ``==``), transactions,
snapshots, ``modify``/``edit``, ordered access (prefix and range scans,
first/last), writeback, the key rules, ``verify()``, ``info()``, the
durability modes, automatic map growth, and iteration that never holds a read
transaction across the caller's code.
"""

from __future__ import annotations

import os
import pickle
import random
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import objstore

BATCH = 1024  # the iteration batch size documented in objstore._storage


@pytest.fixture
def filled(shelf: objstore.Shelf) -> objstore.Shelf:
    """A shelf holding a, b, c."""
    shelf.update({"a": 1, "b": [2], "c": {"three": 3}})
    return shelf


def reopen(shelf: objstore.Shelf, **options: Any) -> objstore.Shelf:
    """Close `shelf` and open its store again."""
    shelf.close()
    return objstore.open(shelf.path, **options)


# ---------------------------------------------------------------- dict face


class TestGetItem:
    def test_returns_a_copy(self, shelf: objstore.Shelf) -> None:
        value = [1, 2]
        shelf["k"] = value
        value.append(3)
        first = shelf["k"]
        assert first == [1, 2]
        first.append(4)
        assert shelf["k"] == [1, 2], "a read returns a copy; changing it changes nothing on disk"
        assert shelf["k"] is not shelf["k"]

    def test_missing(self, filled: objstore.Shelf) -> None:
        with pytest.raises(KeyError) as info:
            filled["zzz"]
        assert info.value.args == ("zzz",)

    def test_overwrite(self, shelf: objstore.Shelf) -> None:
        shelf["k"] = 1
        shelf["k"] = "two"
        assert shelf["k"] == "two"
        assert len(shelf) == 1

    def test_values_of_every_kind(self, shelf: objstore.Shelf) -> None:
        values = [None, 0, "", b"", [], {}, set(), 10**100, "x" * 100_000, b"\x00" * 3_000_000]
        for i, value in enumerate(values):
            shelf[f"k{i}"] = value
        for i, value in enumerate(values):
            assert shelf[f"k{i}"] == value

    def test_persists(self, shelf: objstore.Shelf) -> None:
        shelf["k"] = {"a": [1, 2]}
        with reopen(shelf) as again:
            assert again["k"] == {"a": [1, 2]}


class TestGet:
    def test_present(self, filled: objstore.Shelf) -> None:
        assert filled.get("b") == [2]
        assert filled.get("b", "default") == [2]

    def test_absent(self, filled: objstore.Shelf) -> None:
        assert filled.get("zzz") is None
        default = object()
        assert filled.get("zzz", default) is default

    def test_stored_none_is_not_absent(self, shelf: objstore.Shelf) -> None:
        shelf["none"] = None
        assert shelf.get("none", "default") is None


class TestDelete:
    def test_delete(self, filled: objstore.Shelf) -> None:
        del filled["a"]
        assert "a" not in filled
        assert len(filled) == 2
        with reopen(filled) as again:
            assert "a" not in again

    def test_missing(self, filled: objstore.Shelf) -> None:
        with pytest.raises(KeyError):
            del filled["zzz"]
        assert len(filled) == 3


class TestContains:
    def test_contains(self, filled: objstore.Shelf) -> None:
        assert "a" in filled
        assert "zzz" not in filled
        del filled["a"]
        assert "a" not in filled


class TestLen:
    def test_counts(self, shelf: objstore.Shelf) -> None:
        assert len(shelf) == 0
        shelf.update({f"k{i}": i for i in range(2500)})
        assert len(shelf) == 2500
        shelf["k0"] = "overwritten"
        assert len(shelf) == 2500
        del shelf["k1"]
        assert len(shelf) == 2499

    def test_bool(self, shelf: objstore.Shelf) -> None:
        assert not shelf
        shelf["k"] = 0
        assert shelf


class TestSetdefault:
    def test_absent_stores_default(self, shelf: objstore.Shelf) -> None:
        assert shelf.setdefault("k", [1]) == [1]
        assert shelf["k"] == [1]

    def test_present_keeps_value(self, filled: objstore.Shelf) -> None:
        assert filled.setdefault("a", 100) == 1
        assert filled["a"] == 1

    def test_present_key_does_not_need_a_picklable_default(self, filled: objstore.Shelf) -> None:
        # As dict.setdefault: when the key is present, the default is not used at all.
        assert filled.setdefault("a", lambda: None) == 1
        assert filled["a"] == 1

    def test_default_default_is_none(self, shelf: objstore.Shelf) -> None:
        assert shelf.setdefault("k") is None
        assert "k" in shelf
        assert shelf["k"] is None


class TestPop:
    def test_present(self, filled: objstore.Shelf) -> None:
        assert filled.pop("b") == [2]
        assert "b" not in filled
        assert filled.pop("b", "gone") == "gone"

    def test_absent(self, filled: objstore.Shelf) -> None:
        with pytest.raises(KeyError):
            filled.pop("zzz")
        assert filled.pop("zzz", None) is None
        assert len(filled) == 3

    def test_persists(self, filled: objstore.Shelf) -> None:
        filled.pop("a")
        with reopen(filled) as again:
            assert dict(again) == {"b": [2], "c": {"three": 3}}


class TestPopitem:
    def test_lowest_key_first(self, shelf: objstore.Shelf) -> None:
        shelf.update({"m": 1, "b": 2, "z": 3, "é": 4})
        assert shelf.popitem() == ("b", 2)
        assert shelf.popitem() == ("m", 1)
        assert shelf.popitem() == ("z", 3)
        assert shelf.popitem() == ("é", 4)
        with pytest.raises(KeyError):
            shelf.popitem()

    def test_empty(self, shelf: objstore.Shelf) -> None:
        with pytest.raises(KeyError):
            shelf.popitem()


class TestUpdate:
    def test_mapping(self, shelf: objstore.Shelf) -> None:
        shelf.update({"a": 1, "b": 2})
        assert dict(shelf) == {"a": 1, "b": 2}

    def test_pairs_and_keywords(self, shelf: objstore.Shelf) -> None:
        shelf.update([("a", 1), ("b", 2)], c=3, a=10)
        assert dict(shelf) == {"a": 10, "b": 2, "c": 3}

    def test_generator(self, shelf: objstore.Shelf) -> None:
        shelf.update((f"k{i}", i) for i in range(100))
        assert len(shelf) == 100

    def test_object_with_keys(self, shelf: objstore.Shelf) -> None:
        class KeysOnly:
            def keys(self) -> list[str]:
                return ["x", "y"]

            def __getitem__(self, key: str) -> str:
                return key * 2

        shelf.update(KeysOnly())
        assert dict(shelf) == {"x": "xx", "y": "yy"}

    def test_other_shelf(self, path: Path, tmp_path: Path) -> None:
        with objstore.open(path) as source, objstore.open(tmp_path / "other") as target:
            source.update({"a": 1, "b": 2})
            target.update(source)
            assert target == source

    def test_overwrites(self, filled: objstore.Shelf) -> None:
        filled.update(a="new")
        assert filled["a"] == "new"

    def test_all_or_nothing_on_bad_key(self, filled: objstore.Shelf) -> None:
        with pytest.raises(TypeError):
            filled.update([("x", 1), ("a", "changed"), (2, "bad key"), ("y", 3)])
        assert dict(filled) == {"a": 1, "b": [2], "c": {"three": 3}}

    def test_all_or_nothing_when_the_source_fails(self, filled: objstore.Shelf) -> None:
        def source() -> Iterator[tuple[str, int]]:
            yield "x", 1
            raise RuntimeError("source broke")

        with pytest.raises(RuntimeError):
            filled.update(source())
        assert "x" not in filled

    def test_empty(self, filled: objstore.Shelf) -> None:
        filled.update()
        filled.update({})
        assert len(filled) == 3


class TestClear:
    def test_clear(self, shelf: objstore.Shelf) -> None:
        shelf.update({f"k{i}": i for i in range(3000)})
        shelf.clear()
        assert len(shelf) == 0
        assert list(shelf) == []
        shelf["after"] = 1
        with reopen(shelf) as again:
            assert dict(again) == {"after": 1}

    def test_clear_empty(self, shelf: objstore.Shelf) -> None:
        shelf.clear()
        assert len(shelf) == 0


class TestViews:
    def test_keys(self, filled: objstore.Shelf) -> None:
        keys = filled.keys()
        assert list(keys) == ["a", "b", "c"]
        assert len(keys) == 3
        assert "a" in keys and "zzz" not in keys
        assert keys & {"a", "x"} == {"a"}
        assert keys | {"x"} == {"a", "b", "c", "x"}
        assert keys == {"a", "b", "c"}

    def test_values(self, filled: objstore.Shelf) -> None:
        values = filled.values()
        assert list(values) == [1, [2], {"three": 3}]
        assert len(values) == 3
        assert [2] in values
        assert 99 not in values

    def test_items(self, filled: objstore.Shelf) -> None:
        items = filled.items()
        assert list(items) == [("a", 1), ("b", [2]), ("c", {"three": 3})]
        assert len(items) == 3
        assert ("b", [2]) in items
        assert ("b", [3]) not in items
        assert ("zzz", 1) not in items

    def test_views_are_live(self, shelf: objstore.Shelf) -> None:
        keys, values, items = shelf.keys(), shelf.values(), shelf.items()
        shelf["k"] = "v"
        assert list(keys) == ["k"]
        assert list(values) == ["v"]
        assert list(items) == [("k", "v")]


class TestIterationOrder:
    def test_sorted_by_code_point(self, shelf: objstore.Shelf) -> None:
        keys = ["b", "a", "é", "Z", "€", "😀", "a\x00", "ab", "中", "\U0010ffff", "\ue000", "\ud7ff", "0"]
        shelf.update({key: key for key in keys})
        assert list(shelf) == sorted(keys)
        assert list(shelf.values()) == sorted(keys)
        assert [k for k, _ in shelf.items()] == sorted(keys)

    def test_many_keys_across_batches(self, shelf: objstore.Shelf) -> None:
        rng = random.Random(7)
        keys = {f"{rng.random():.12f}" for _ in range(3 * BATCH + 17)}
        shelf.update({key: len(key) for key in keys})
        assert list(shelf) == sorted(keys)
        assert list(shelf.items()) == [(key, len(key)) for key in sorted(keys)]

    def test_dict_of_a_shelf(self, filled: objstore.Shelf) -> None:
        assert dict(filled) == {"a": 1, "b": [2], "c": {"three": 3}}


class TestEquality:
    def test_with_dict(self, filled: objstore.Shelf) -> None:
        assert filled == {"c": {"three": 3}, "b": [2], "a": 1}
        assert filled != {"a": 1, "b": [2]}
        assert filled != {"a": 1, "b": [2], "c": {"three": 4}}
        assert filled != [("a", 1)]

    def test_with_another_shelf(self, filled: objstore.Shelf, tmp_path: Path) -> None:
        with objstore.open(tmp_path / "other") as other:
            other.update(dict(filled))
            assert filled == other
            other["a"] = 2
            assert filled != other

    def test_empty(self, shelf: objstore.Shelf) -> None:
        assert shelf == {}


# ------------------------------------------------------------ transactions


class TestTransaction:
    def test_reads_see_own_writes(self, filled: objstore.Shelf) -> None:
        with filled.transaction() as txn:
            txn["d"] = 4
            del txn["a"]
            assert txn["d"] == 4
            assert "d" in txn and "a" not in txn
            assert len(txn) == 3
            assert list(txn) == ["b", "c", "d"]
            assert txn.get("a") is None
            assert txn.first() == ("b", [2])
            assert txn.last() == ("d", 4)

    def test_commits_on_exit(self, filled: objstore.Shelf) -> None:
        with filled.transaction() as txn:
            txn["d"] = 4
            txn.pop("a")
        assert dict(filled) == {"b": [2], "c": {"three": 3}, "d": 4}
        with reopen(filled) as again:
            assert dict(again) == {"b": [2], "c": {"three": 3}, "d": 4}

    def test_invisible_to_other_threads_until_commit(self, filled: objstore.Shelf) -> None:
        seen: list[Any] = []
        with filled.transaction() as txn:
            txn["a"] = "uncommitted"
            reader = threading.Thread(target=lambda: seen.append(filled["a"]))
            reader.start()
            reader.join(10)
        assert seen == [1]
        assert filled["a"] == "uncommitted"

    def test_rolls_back_on_exception(self, filled: objstore.Shelf) -> None:
        class Abort(Exception):
            pass

        with pytest.raises(Abort):
            with filled.transaction() as txn:
                txn["d"] = 4
                txn["a"] = "changed"
                txn.clear()
                raise Abort
        assert dict(filled) == {"a": 1, "b": [2], "c": {"three": 3}}

    def test_rolls_back_on_keyboard_interrupt(self, filled: objstore.Shelf) -> None:
        with pytest.raises(KeyboardInterrupt):
            with filled.transaction() as txn:
                txn["a"] = "changed"
                raise KeyboardInterrupt
        assert filled["a"] == 1

    def test_nested_is_a_savepoint(self, filled: objstore.Shelf) -> None:
        with filled.transaction() as outer:
            outer["outer"] = 1
            with pytest.raises(ValueError):
                with filled.transaction() as inner:
                    inner["inner"] = 2
                    del inner["a"]
                    assert "outer" in inner
                    raise ValueError
            assert "inner" not in outer
            assert "a" in outer
            with outer.transaction() as inner2:
                inner2["inner2"] = 3
            assert outer["inner2"] == 3
        assert dict(filled) == {"a": 1, "b": [2], "c": {"three": 3}, "outer": 1, "inner2": 3}

    def test_nested_commit_undone_by_outer_abort(self, filled: objstore.Shelf) -> None:
        with pytest.raises(ValueError):
            with filled.transaction():
                with filled.transaction() as inner:
                    inner["inner"] = 2
                raise ValueError
        assert "inner" not in filled

    @pytest.mark.timeout(30)
    def test_plain_operations_join_it(self, filled: objstore.Shelf) -> None:
        with pytest.raises(RuntimeError):
            with filled.transaction() as txn:
                filled["joined"] = 1
                assert txn["joined"] == 1
                assert filled["joined"] == 1
                filled.update({"x": 1, "y": 2})
                assert len(filled) == len(txn) == 6
                filled.setdefault("z", 0)
                filled.pop("a")
                del filled["b"]
                assert filled.modify("z", lambda n: n + 1) == 1
                with filled.edit("c") as value:
                    value["four"] = 4
                assert list(filled) == ["c", "joined", "x", "y", "z"]
                assert txn["c"] == {"three": 3, "four": 4}
                raise RuntimeError("roll it all back")
        assert dict(filled) == {"a": 1, "b": [2], "c": {"three": 3}}

    @pytest.mark.timeout(30)
    def test_other_shelf_of_same_store_joins_it(self, path: Path) -> None:
        with objstore.open(path) as first, objstore.open(path) as second:
            with first.transaction() as txn:
                second["k"] = 1
                assert txn["k"] == 1
            assert first["k"] == 1

    def test_closed_after_the_block(self, filled: objstore.Shelf) -> None:
        with filled.transaction() as txn:
            txn["d"] = 4
        for operation in (
            lambda: txn["a"],
            lambda: txn.__setitem__("e", 5),
            lambda: len(txn),
            lambda: list(txn),
        ):
            with pytest.raises(objstore.ClosedError):
                operation()
        assert "e" not in filled

    def test_closed_after_an_aborted_block(self, filled: objstore.Shelf) -> None:
        with pytest.raises(ValueError):
            with filled.transaction() as txn:
                raise ValueError
        with pytest.raises(objstore.ClosedError):
            txn["a"]

    def test_other_thread_cannot_use_it(self, filled: objstore.Shelf) -> None:
        errors: list[BaseException] = []

        def use(txn: objstore.Transaction) -> None:
            for operation in (lambda: txn["a"], lambda: txn.__setitem__("x", 1)):
                try:
                    operation()
                except BaseException as exc:
                    errors.append(exc)

        with filled.transaction() as txn:
            worker = threading.Thread(target=use, args=(txn,))
            worker.start()
            worker.join(10)
        assert len(errors) == 2
        assert all(isinstance(e, objstore.TransactionError) for e in errors), errors
        assert "x" not in filled

    def test_is_a_mutable_mapping(self, shelf: objstore.Shelf) -> None:
        from collections.abc import MutableMapping

        with shelf.transaction() as txn:
            assert isinstance(txn, objstore.Transaction)
            assert isinstance(txn, MutableMapping)
            txn.update(a=1, b=2)
            assert txn.setdefault("a", 0) == 1
            assert txn.popitem() == ("a", 1)
            assert dict(txn.items()) == {"b": 2}

    def test_many_writes(self, shelf: objstore.Shelf) -> None:
        with shelf.transaction() as txn:
            for i in range(5000):
                txn[f"k{i:05d}"] = i
            assert len(txn) == 5000
        assert len(shelf) == 5000
        assert shelf["k04999"] == 4999


class TestSnapshot:
    def test_unaffected_by_later_writes(self, filled: objstore.Shelf) -> None:
        with filled.snapshot() as snap:
            filled["a"] = "changed"
            filled["d"] = 4
            del filled["b"]
            filled.update({f"k{i}": i for i in range(2 * BATCH)})
            assert snap["a"] == 1
            assert "d" not in snap
            assert snap["b"] == [2]
            assert len(snap) == 3
            assert list(snap) == ["a", "b", "c"]
            assert dict(snap.items()) == {"a": 1, "b": [2], "c": {"three": 3}}
            assert snap.last() == ("c", {"three": 3})
        assert filled["a"] == "changed"

    def test_unaffected_by_clear(self, filled: objstore.Shelf) -> None:
        with filled.snapshot() as snap:
            filled.clear()
            assert len(snap) == 3

    def test_consistent_across_batches(self, shelf: objstore.Shelf) -> None:
        shelf.update({f"k{i:05d}": i for i in range(3 * BATCH)})
        with shelf.snapshot() as snap:
            seen = []
            for key in snap:
                if key == "k00000":
                    shelf.clear()
                    shelf["k99999"] = -1
                seen.append(key)
        assert seen == [f"k{i:05d}" for i in range(3 * BATCH)]

    def test_closed_after_the_block(self, filled: objstore.Shelf) -> None:
        with filled.snapshot() as snap:
            assert snap["a"] == 1
        with pytest.raises(objstore.ClosedError):
            snap["a"]
        with pytest.raises(objstore.ClosedError):
            list(snap)
        snap.close()

    def test_close_without_with(self, filled: objstore.Shelf) -> None:
        snap = filled.snapshot()
        assert snap.get("a") == 1
        snap.close()
        with pytest.raises(objstore.ClosedError):
            snap.get("a")

    def test_read_only(self, filled: objstore.Shelf) -> None:
        with filled.snapshot() as snap:
            assert isinstance(snap, objstore.Snapshot)
            with pytest.raises(TypeError):
                snap["a"] = 2  # type: ignore[index]
            assert not hasattr(snap, "pop")

    def test_many_open_at_once(self, filled: objstore.Shelf) -> None:
        snaps = []
        for i in range(20):
            snaps.append(filled.snapshot())
            filled["a"] = i + 100
        assert [s["a"] for s in snaps] == [1] + [100 + i for i in range(19)]
        for snap in snaps:
            snap.close()


class TestModify:
    def test_present(self, filled: objstore.Shelf) -> None:
        assert filled.modify("a", lambda n: n + 1) == 2
        assert filled["a"] == 2

    def test_absent_with_default(self, shelf: objstore.Shelf) -> None:
        assert shelf.modify("n", lambda n: n + 1, default=0) == 1
        assert shelf.modify("n", lambda n: n + 1, default=0) == 2

    def test_absent_without_default(self, shelf: objstore.Shelf) -> None:
        with pytest.raises(KeyError):
            shelf.modify("n", lambda n: n + 1)
        assert "n" not in shelf

    def test_function_raises(self, filled: objstore.Shelf) -> None:
        def fail(value: Any) -> Any:
            raise ValueError("no")

        with pytest.raises(ValueError):
            filled.modify("a", fail)
        assert filled["a"] == 1

    def test_counter_from_threads(self, shelf: objstore.Shelf) -> None:
        def work() -> None:
            for _ in range(50):
                shelf.modify("n", lambda n: n + 1, default=0)

        threads = [threading.Thread(target=work) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert shelf["n"] == 200


class TestEdit:
    def test_in_place_change_is_stored(self, filled: objstore.Shelf) -> None:
        with filled.edit("b") as value:
            value.append(3)
        assert filled["b"] == [2, 3]

    def test_absent_with_default(self, shelf: objstore.Shelf) -> None:
        with shelf.edit("jobs", default=[]) as jobs:
            jobs.append("first")
        with shelf.edit("jobs", default=[]) as jobs:
            jobs.append("second")
        assert shelf["jobs"] == ["first", "second"]

    def test_absent_without_default(self, shelf: objstore.Shelf) -> None:
        with pytest.raises(KeyError):
            with shelf.edit("jobs"):
                pass
        assert "jobs" not in shelf

    def test_exception_stores_nothing(self, filled: objstore.Shelf) -> None:
        with pytest.raises(ValueError):
            with filled.edit("b") as value:
                value.append(3)
                raise ValueError
        assert filled["b"] == [2]

    def test_unchanged_absent_default_stored(self, shelf: objstore.Shelf) -> None:
        # A default is stored even when the block leaves it as it was: the key did not exist.
        with shelf.edit("k", default=[]):
            pass
        assert shelf["k"] == []


# ----------------------------------------------------------- ordered access

ALPHABET = [
    "a",
    "b",
    "c",
    "z",
    "A",
    "0",
    "\x00",
    "\x7f",
    "é",
    "ß",
    "€",
    "中",
    "\ud7ff",
    "\ue000",
    "😀",
    "\U0010ffff",
]


def random_keys(count: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    keys = set()
    while len(keys) < count:
        keys.add("".join(rng.choice(ALPHABET) for _ in range(rng.randint(1, 5))))
    return sorted(keys)


def expected_range(
    keys: list[str], prefix: str | None, start: str | None, stop: str | None, reverse: bool
) -> list[str]:
    selected = [
        key
        for key in sorted(keys)
        if (prefix is None or key.startswith(prefix))
        and (start is None or key >= start)
        and (stop is None or key < stop)
    ]
    return selected[::-1] if reverse else selected


ORDERED_KEYS = random_keys(2 * BATCH + 300, seed=1)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[objstore.Shelf]:
    """One store of random keys (non-ASCII included), shared by the ordered-access tests."""
    with objstore.open(tmp_path_factory.mktemp("ordered") / "store") as db:
        db.update({key: f"value of {key}" for key in ORDERED_KEYS})
        yield db


class TestOrderedAccess:
    KEYS = ORDERED_KEYS

    def cases(self) -> list[tuple[str | None, str | None, str | None, bool]]:
        rng = random.Random(2)
        prefixes: list[str | None] = [
            None,
            "",
            "nope",
            *ALPHABET,
            *(k[:2] for k in rng.sample(self.KEYS, 15)),
        ]
        bounds: list[str | None] = [None, *rng.sample(self.KEYS, 6), "b", "é", "\U0010ffff\U0010ffff", "\x00"]
        out = []
        for _ in range(400):
            out.append((rng.choice(prefixes), rng.choice(bounds), rng.choice(bounds), rng.random() < 0.5))
        return out

    def test_iterkeys(self, store: objstore.Shelf) -> None:
        for prefix, start, stop, reverse in self.cases():
            got = list(store.iterkeys(prefix, start=start, stop=stop, reverse=reverse))
            assert got == expected_range(self.KEYS, prefix, start, stop, reverse), (
                prefix,
                start,
                stop,
                reverse,
            )

    def test_iteritems_and_itervalues(self, store: objstore.Shelf) -> None:
        for prefix, start, stop, reverse in self.cases()[:100]:
            keys = expected_range(self.KEYS, prefix, start, stop, reverse)
            items = list(store.iteritems(prefix, start=start, stop=stop, reverse=reverse))
            assert items == [(key, f"value of {key}") for key in keys]
            values = list(store.itervalues(prefix, start=start, stop=stop, reverse=reverse))
            assert values == [f"value of {key}" for key in keys]

    def test_whole_store(self, store: objstore.Shelf) -> None:
        assert list(store.iterkeys()) == self.KEYS
        assert list(store.iterkeys(reverse=True)) == self.KEYS[::-1]
        assert list(store.iterkeys("")) == self.KEYS

    def test_first_and_last(self, store: objstore.Shelf) -> None:
        assert store.first() == (self.KEYS[0], f"value of {self.KEYS[0]}")
        assert store.last() == (self.KEYS[-1], f"value of {self.KEYS[-1]}")
        for prefix, _, _, _ in self.cases()[:80]:
            keys = expected_range(self.KEYS, prefix, None, None, False)
            if keys:
                assert store.first(prefix) == (keys[0], f"value of {keys[0]}")
                assert store.last(prefix) == (keys[-1], f"value of {keys[-1]}")
            else:
                with pytest.raises(KeyError):
                    store.first(prefix)
                with pytest.raises(KeyError):
                    store.last(prefix)

    def test_inside_a_snapshot(self, store: objstore.Shelf) -> None:
        with store.snapshot() as snap:
            for prefix, start, stop, reverse in self.cases()[:50]:
                got = list(snap.iterkeys(prefix, start=start, stop=stop, reverse=reverse))
                assert got == expected_range(self.KEYS, prefix, start, stop, reverse)

    def test_bounds_must_be_str(self, store: objstore.Shelf) -> None:
        with pytest.raises(TypeError):
            list(store.iterkeys(b"a"))  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            list(store.iterkeys(start=1))  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            list(store.iteritems(stop=object()))  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            store.first(1)  # type: ignore[arg-type]

    def test_empty_store(self, shelf: objstore.Shelf) -> None:
        assert list(shelf.iterkeys("a")) == []
        assert list(shelf.iteritems(reverse=True)) == []
        with pytest.raises(KeyError):
            shelf.first()
        with pytest.raises(KeyError):
            shelf.last()

    def test_inside_a_transaction_sees_own_writes(self, shelf: objstore.Shelf) -> None:
        shelf.update({"a1": 1, "a3": 3, "b1": 4})
        with shelf.transaction() as txn:
            txn["a2"] = 2
            del txn["a3"]
            assert list(txn.iterkeys("a")) == ["a1", "a2"]
            assert list(txn.iteritems("a", reverse=True)) == [("a2", 2), ("a1", 1)]
            assert txn.last("a") == ("a2", 2)

    def test_start_and_stop_ends(self, shelf: objstore.Shelf) -> None:
        shelf.update({k: k for k in ["a", "ab", "b", "ba", "c"]})
        assert list(shelf.iterkeys(start="ab", stop="ba")) == ["ab", "b"]
        assert list(shelf.iterkeys(start="ab", stop="ba", reverse=True)) == ["b", "ab"]
        assert list(shelf.iterkeys(start="b", stop="b")) == []
        assert list(shelf.iterkeys(start="c", stop="a")) == []
        assert list(shelf.iterkeys("b", start="a", stop="z")) == ["b", "ba"]


# ---------------------------------------------------------------- writeback


class TestWriteback:
    def test_mutations_of_cached_values_are_kept(self, path: Path) -> None:
        with objstore.open(path, writeback=True) as db:
            db["list"] = []
            db["list"].append(1)
            db["list"].append(2)
            assert db["list"] == [1, 2]
        with objstore.open(path, "r") as db:
            assert db["list"] == [1, 2]

    def test_without_writeback_mutations_are_lost(self, path: Path) -> None:
        with objstore.open(path) as db:
            db["list"] = []
            db["list"].append(1)
            assert db["list"] == []

    def test_read_values_are_cached(self, path: Path) -> None:
        with objstore.open(path) as db:
            db["d"] = {"n": 0}
        with objstore.open(path, writeback=True) as db:
            value = db["d"]
            assert db["d"] is value
            assert db.get("d") is value
            value["n"] = 1
            assert [v for k, v in db.items() if k == "d"][0] is value
        with objstore.open(path, "r") as db:
            assert db["d"] == {"n": 1}

    def test_sync_writes_back_and_empties_the_cache(self, path: Path) -> None:
        with objstore.open(path, writeback=True) as db, objstore.open(path) as plain:
            db["list"] = []
            value = db["list"]
            value.append(1)
            assert plain["list"] == []
            db.sync()
            assert plain["list"] == [1]
            assert db["list"] is not value
            value.append(2)  # no longer cached: dropped
            db.sync()
            assert plain["list"] == [1]

    def test_close_writes_back(self, path: Path) -> None:
        db = objstore.open(path, writeback=True)
        db["list"] = []
        db["list"].append("x")
        db.close()
        with objstore.open(path, "r") as again:
            assert again["list"] == ["x"]

    def test_unchanged_entries_are_not_written_back(self, path: Path) -> None:
        with objstore.open(path) as other, objstore.open(path, writeback=True) as db:
            db["k"] = "old"  # cached with the record it was stored as
            db["mine"] = []
            db["mine"].append(1)
            other["k"] = "new"  # another shelf writes meanwhile
            db.sync()
            assert other["k"] == "new", "sync overwrote an entry whose pickle had not changed"
            assert other["mine"] == [1]

    def test_entries_only_read_are_not_written_back(self, path: Path) -> None:
        with objstore.open(path) as other:
            other["k"] = "old"
            other["mine"] = []
            with objstore.open(path, writeback=True) as db:
                assert db["k"] == "old"  # read only: cached, unchanged
                db["mine"].append(1)  # read and changed: proves that reads are cached
                other["k"] = "new"  # another shelf writes meanwhile
                db.sync()
            assert other["k"] == "new", "sync overwrote a key that was only read"
            assert other["mine"] == [1]

    def test_entries_only_read_are_not_written_back_on_close(self, path: Path) -> None:
        with objstore.open(path) as other:
            other["k"] = "old"
            db = objstore.open(path, writeback=True)
            db["k"]
            other["k"] = "new"
            db.close()
            assert other["k"] == "new"

    def test_sync_is_all_or_nothing(self, path: Path) -> None:
        class Unpicklable:
            def __reduce__(self) -> Any:
                raise pickle.PicklingError("no")

        with objstore.open(path) as plain:
            db = objstore.open(path, writeback=True)
            db.update({"a": [], "b": []})
            db["a"].append(1)
            db["b"].append(Unpicklable())
            with pytest.raises(pickle.PicklingError):
                db.sync()
            assert plain["a"] == [] and plain["b"] == [], "a failed write-back must write nothing"
            db["b"].pop()
            db.sync()
            assert plain["a"] == [1] and plain["b"] == []
            db.close()

    def test_delete_of_cached_entry_is_not_undone(self, path: Path) -> None:
        with objstore.open(path, writeback=True) as db:
            db["list"] = []
            db["list"].append(1)
            del db["list"]
            db.sync()
            assert "list" not in db

    def test_pop_returns_the_cached_object(self, path: Path) -> None:
        with objstore.open(path, writeback=True) as db:
            db["list"] = []
            db["list"].append(1)
            assert db.pop("list") == [1]
            db.sync()
            assert "list" not in db

    def test_clear_drops_the_cache(self, path: Path) -> None:
        with objstore.open(path, writeback=True) as db:
            db["list"] = []
            db["list"].append(1)
            db.clear()
            db.sync()
            assert len(db) == 0

    def test_modify_and_edit_are_not_undone_by_a_stale_cache(self, path: Path) -> None:
        with objstore.open(path, writeback=True) as db:
            db["n"] = 0
            assert db["n"] == 0  # cached
            assert db.modify("n", lambda n: n + 1) == 1
            assert db["n"] == 1
            db["list"] = [0]
            with db.edit("list") as value:
                value.append(1)
            assert db["list"] == [0, 1]
            db.sync()
            assert db["n"] == 1
            assert db["list"] == [0, 1]

    def test_update_caches(self, path: Path) -> None:
        with objstore.open(path, writeback=True) as db:
            mine = [1]
            db.update({"list": mine})
            assert db["list"] is mine
            mine.append(2)
        with objstore.open(path, "r") as db:
            assert db["list"] == [1, 2]


# --------------------------------------------------------------------- keys

BAD_TYPES = [1, 1.5, b"key", None, ("a",), bytearray(b"a")]


class TestKeys:
    @pytest.mark.parametrize("key", BAD_TYPES, ids=repr)
    def test_non_str_refused_everywhere(self, filled: objstore.Shelf, key: Any) -> None:
        operations = [
            lambda: filled[key],
            lambda: filled.__setitem__(key, 1),
            lambda: filled.__delitem__(key),
            lambda: filled.get(key),
            lambda: key in filled,
            lambda: filled.pop(key),
            lambda: filled.pop(key, None),
            lambda: filled.setdefault(key, 1),
            lambda: filled.update([(key, 1)]),
            lambda: filled.modify(key, lambda v: v, default=0),
        ]
        for operation in operations:
            with pytest.raises(TypeError, match="str"):
                operation()
        assert dict(filled) == {"a": 1, "b": [2], "c": {"three": 3}}

    def test_str_subclass_accepted(self, shelf: objstore.Shelf) -> None:
        class Name(str):
            pass

        shelf[Name("k")] = 1
        assert shelf["k"] == 1
        assert shelf[Name("k")] == 1
        assert list(shelf) == ["k"]
        assert type(list(shelf)[0]) is str

    @pytest.mark.parametrize("key", ["", "a\udc80b", "\ud800"], ids=["empty", "surrogate", "lone"])
    def test_impossible_key_is_absent_on_lookups(self, filled: objstore.Shelf, key: str) -> None:
        assert key not in filled
        assert filled.get(key) is None
        assert filled.get(key, "default") == "default"
        assert filled.pop(key, "default") == "default"
        with pytest.raises(KeyError):
            filled[key]
        with pytest.raises(KeyError):
            filled.pop(key)
        with pytest.raises(KeyError):
            del filled[key]
        with filled.snapshot() as snap:
            assert key not in snap and snap.get(key, 0) == 0
        for operation in (
            lambda: filled.__setitem__(key, 1),
            lambda: filled.setdefault(key, 1),
            lambda: filled.update({key: 1}),
            lambda: filled.modify(key, lambda v: v, default=0),
        ):
            with pytest.raises(ValueError, match="empty string|UTF-8"):
                operation()
        assert dict(filled) == {"a": 1, "b": [2], "c": {"three": 3}}

    @pytest.mark.parametrize(
        "key",
        ["x" * 511, "é" * 255 + "a", "😀" * 127 + "abc", "€" * 170 + "a", "a", "\x00", "é", "😀"],
        ids=["ascii-511", "2-byte-511", "4-byte-511", "3-byte-511", "one", "nul", "e-acute", "emoji"],
    )
    def test_accepted(self, shelf: objstore.Shelf, key: str) -> None:
        assert len(key.encode()) <= 511
        shelf[key] = key
        assert shelf[key] == key
        assert key in shelf
        assert list(shelf) == [key]
        assert shelf.first() == (key, key)
        with reopen(shelf) as again:
            assert again[key] == key
            del again[key]
            assert len(again) == 0

    @pytest.mark.parametrize("key", ["\ud800", "a\udfffb", "\udc80"], ids=["high", "low-inside", "escape"])
    def test_lone_surrogates(self, shelf: objstore.Shelf, key: str) -> None:
        for operation in (lambda: shelf.__setitem__(key, 1), lambda: shelf.update({key: 1})):
            with pytest.raises(ValueError, match="UTF-8"):
                operation()
        assert key not in shelf and shelf.get(key) is None
        with pytest.raises(KeyError):
            shelf[key]
        assert len(shelf) == 0

    def test_similar_keys_are_distinct(self, shelf: objstore.Shelf) -> None:
        keys = ["e\u0301", "é", "E", "e", "e ", " e", "e\x00"]
        shelf.update({key: i for i, key in enumerate(keys)})
        assert len(shelf) == len(keys)
        assert {key: shelf[key] for key in keys} == {key: i for i, key in enumerate(keys)}


# ------------------------------------------------------------ verify, info


class TestVerify:
    def test_intact(self, shelf: objstore.Shelf) -> None:
        assert shelf.verify() == []
        shelf.update({f"k{i}": "x" * (i % 300) for i in range(2 * BATCH + 5)})
        shelf["big"] = b"y" * 2_000_000
        assert shelf.verify() == []

    def test_in_a_snapshot(self, filled: objstore.Shelf) -> None:
        with filled.snapshot() as snap:
            assert snap.verify() == []


class TestInfo:
    def test_contents(self, path: Path) -> None:
        with objstore.open(path, durability="normal") as db:
            db.update({f"k{i}": i for i in range(10)})
            info = db.info()
        assert info["path"] == os.path.realpath(path)
        assert info["entries"] == 10
        assert info["durability"] == "normal"
        assert info["exclusive"] is False
        settings = info["settings"]
        assert settings["format"] == 1
        assert settings["key_encoding"] == "utf-8"
        assert settings["value_format"] == 1
        assert settings["created_by"] == f"objstore {objstore.__version__}"
        assert 0 < info["used_bytes"] <= info["file_bytes"] <= info["map_size"]
        assert info["file_bytes"] == os.path.getsize(path / "data.mdb")
        assert info["max_readers"] >= 1
        assert info["readers_live"] >= 0 and info["readers_stale"] >= 0

    def test_is_a_fresh_dict(self, shelf: objstore.Shelf) -> None:
        info = shelf.info()
        info["entries"] = 99
        info["settings"]["format"] = 99
        assert shelf.info()["entries"] == 0
        assert shelf.info()["settings"]["format"] == 1

    def test_settings_survive_reopening(self, path: Path) -> None:
        with objstore.open(path) as db:
            created = db.info()["settings"]
        with objstore.open(path, "r") as db:
            assert db.info()["settings"] == created


# --------------------------------------------------------------- durability


class TestDurability:
    @pytest.mark.parametrize("durability", ["full", "normal", "off"])
    def test_round_trip(self, path: Path, durability: str) -> None:
        with objstore.open(path, durability=durability) as db:
            assert db.info()["durability"] == durability
            db["single"] = 1
            db.update({f"k{i}": i for i in range(100)})
            with db.transaction() as txn:
                txn["txn"] = [1, 2]
            db.sync()
            db["after-sync"] = 2
        with objstore.open(path, "r", durability=durability) as db:
            assert db["single"] == 1
            assert db["txn"] == [1, 2]
            assert db["after-sync"] == 2
            assert len(db) == 103

    @pytest.mark.parametrize("first, second", [("off", "full"), ("full", "off"), ("normal", "off")])
    def test_mode_is_per_opening(self, path: Path, first: str, second: str) -> None:
        with objstore.open(path, durability=first) as db:
            db["k"] = first
        with objstore.open(path, durability=second) as db:
            assert db["k"] == first
            assert db.info()["durability"] == second

    def test_off_survives_a_crash_of_the_process(self, path: Path) -> None:
        import subprocess
        import sys

        code = (
            "import os, sys, objstore\n"
            "db = objstore.open(sys.argv[1], durability='off')\n"
            "db['k'] = 'committed'\n"
            "os._exit(0)  # no close, no atexit: the OS still has the written pages\n"
        )
        done = subprocess.run(
            [sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, done.stderr
        with objstore.open(path, "r") as db:
            assert db["k"] == "committed"


# -------------------------------------------------------------- map growth

TINY = 64 * 1024


class TestMapGrowth:
    def test_single_puts(self, path: Path) -> None:
        with objstore.open(path, map_size=TINY) as db:
            for i in range(800):
                db[f"k{i:04d}"] = os.urandom(1000)
            assert len(db) == 800
            assert db.info()["map_size"] > TINY
            assert db.verify() == []

    def test_update(self, path: Path) -> None:
        values = {f"k{i:05d}": bytes([i % 256]) * 1500 for i in range(3000)}
        with objstore.open(path, map_size=TINY) as db:
            db.update(values)
            assert db.info()["map_size"] > TINY
        with objstore.open(path, "r") as db:
            assert dict(db) == values

    def test_big_transaction(self, path: Path) -> None:
        with objstore.open(path, map_size=TINY) as db:
            db["before"] = 0
            with db.transaction() as txn:
                for i in range(3000):
                    txn[f"k{i:05d}"] = "v" * 1500
                with txn.transaction() as inner:
                    for i in range(500):
                        inner[f"inner{i:04d}"] = "w" * 1500
                assert len(txn) == 3501
                assert txn["k00000"] == "v" * 1500
            assert len(db) == 3501
        with objstore.open(path, "r") as db:
            assert len(db) == 3501
            assert db["inner0499"] == "w" * 1500

    def test_aborted_transaction_after_growth(self, path: Path) -> None:
        with objstore.open(path, map_size=TINY) as db:
            db["before"] = 0
            with pytest.raises(RuntimeError):
                with db.transaction() as txn:
                    for i in range(2000):
                        txn[f"k{i:05d}"] = "v" * 1500
                    raise RuntimeError("abort")
            assert dict(db) == {"before": 0}

    def test_value_larger_than_the_map(self, path: Path) -> None:
        big = os.urandom(4 * 1024 * 1024)
        with objstore.open(path, map_size=TINY) as db:
            db["big"] = big
            db.setdefault("big2", big)
            assert db["big"] == big == db["big2"]
        with objstore.open(path, "r") as db:
            assert db["big"] == big

    def test_growth_with_a_snapshot_open_in_the_thread(self, path: Path) -> None:
        with objstore.open(path, map_size=TINY) as db:
            db["k"] = "old"
            with db.snapshot() as snap:
                assert snap["k"] == "old"
                for i in range(300):
                    db[f"fill{i:03d}"] = os.urandom(2000)
                assert len(db) == 301
                # The snapshot either still shows its consistent view or says it ended; never other data.
                try:
                    assert snap["k"] == "old"
                    assert len(snap) == 1
                except objstore.TransactionError:
                    pass

    def test_reopen_grown_store_with_smaller_map_size(self, path: Path) -> None:
        with objstore.open(path, map_size=TINY) as db:
            db.update({f"k{i:04d}": "v" * 1000 for i in range(2000)})
        with objstore.open(path, map_size=TINY) as db:
            assert len(db) == 2000
            db["more"] = "v" * 100_000
            assert db.verify() == []


# ----------------------------------------------- iteration and transactions


class TestIterationHoldsNoTransaction:
    def test_writes_inside_the_loop(self, path: Path) -> None:
        keys = [f"k{i:05d}" for i in range(3 * BATCH)]
        with objstore.open(path, map_size=TINY, durability="off") as db:
            db.update({key: i for i, key in enumerate(keys)})
            seen = []
            for key in db.iterkeys("k"):
                seen.append(key)
                # Enough new data to grow the map several times while iterating.
                db[f"w{key}"] = os.urandom(1000)
            assert seen == keys
            assert db.info()["map_size"] > TINY
            assert len(db) == 2 * len(keys)

    def test_items_while_writing(self, path: Path) -> None:
        keys = [f"k{i:05d}" for i in range(2 * BATCH + 10)]
        with objstore.open(path, map_size=TINY, durability="off") as db:
            db.update({key: key for key in keys})
            for key, value in db.items():
                assert value == key
                if key.startswith("k"):
                    db[key] = os.urandom(1500)
            assert db.verify() == []

    def test_later_batches_see_changes(self, shelf: objstore.Shelf) -> None:
        keys = [f"k{i:05d}" for i in range(3 * BATCH)]
        shelf.update({key: 0 for key in keys})
        seen = []
        for key in shelf:
            if key == keys[0]:
                del shelf[keys[-1]]  # beyond the first batch: not seen
                shelf["z-added"] = 1  # beyond the first batch: seen
            seen.append(key)
        assert keys[-1] not in seen
        assert seen[-1] == "z-added"
        assert seen[: len(keys) - 1] == keys[:-1]

    def test_another_thread_can_grow_the_map_while_we_iterate(self, path: Path) -> None:
        with objstore.open(path, map_size=TINY) as db:
            db.update({f"k{i:05d}": i for i in range(2 * BATCH)})
            errors: list[BaseException] = []

            def grow() -> None:
                try:
                    for i in range(200):
                        db[f"t{i:03d}"] = os.urandom(2000)
                except BaseException as exc:
                    errors.append(exc)

            count = 0
            for _key in db.iterkeys("k"):
                count += 1
                if count == 10:
                    worker = threading.Thread(target=grow)
                    worker.start()
                    worker.join(60)
            assert not errors
            assert count == 2 * BATCH
            assert len(db) == 2 * BATCH + 200


class TestKeysBesideTheMetadataRecord:
    """The store's metadata record sorts among keys starting with "\\x00": it never shows."""

    KEYS = [
        "\x00",
        "\x00\x00",
        "\x00\x01",
        "\x00\x7f",
        "\x00\x80",
        "\x00ÿ",
        "\x00\U0010ffff",
        "\x01",
        "a",
        "ÿ",
    ]

    def test_ordered_access_around_it(self, shelf: objstore.Shelf) -> None:
        shelf.update({key: i for i, key in enumerate(self.KEYS)})
        expected = sorted(self.KEYS)
        assert len(shelf) == len(expected)
        assert list(shelf) == expected
        assert list(shelf.iterkeys(reverse=True)) == expected[::-1]
        assert [k for k, _ in shelf.items()] == expected
        assert list(shelf.iterkeys("\x00")) == [k for k in expected if k.startswith("\x00")]
        assert (
            list(shelf.iterkeys("\x00", reverse=True)) == [k for k in expected if k.startswith("\x00")][::-1]
        )
        assert list(shelf.iterkeys(start="\x00\x7f", stop="\x01")) == [
            k for k in expected if "\x00\x7f" <= k < "\x01"
        ]
        assert shelf.first() == ("\x00", 0)
        assert shelf.last() == ("ÿ", self.KEYS.index("ÿ"))
        assert shelf.first("\x00\x80")[0] == "\x00\x80"

    def test_batches_around_it(self, shelf: objstore.Shelf) -> None:
        keys = [f"\x00{chr(c)}" for c in range(1, 0x300)] + [f"k{i:04d}" for i in range(2000)]
        shelf.update(dict.fromkeys(keys, 1))
        assert list(shelf) == sorted(keys)
        assert list(shelf.iterkeys(reverse=True)) == sorted(keys, reverse=True)
        assert [k for k, _ in shelf.iteritems(reverse=True)] == sorted(keys, reverse=True)

    def test_popitem_and_clear_leave_it(self, shelf: objstore.Shelf) -> None:
        shelf.update({"\x00": 1, "\x01": 2})
        assert shelf.popitem() == ("\x00", 1)
        assert shelf.popitem() == ("\x01", 2)
        with pytest.raises(KeyError):
            shelf.popitem()
        shelf["x"] = 1
        shelf.clear()
        assert len(shelf) == 0 and list(shelf) == []
        shelf["y"] = 2
        path = shelf.path
        shelf.close()
        with objstore.open(path, "r") as again:
            assert dict(again) == {"y": 2}


class TestLargeValues:
    """Values of 64 KiB and more take the buffered pickling path; they behave like any other."""

    BIG = {
        "bytes": b"\x01\x02" * (1 << 19),
        "str": "é" * (1 << 18),
        "bytearray": bytearray(range(256)) * 1024,
        "list": list(range(100_000)),
    }

    def test_round_trip_through_every_write_path(self, shelf: objstore.Shelf) -> None:
        for name, value in self.BIG.items():
            shelf[name] = value
        shelf.update({f"u-{name}": value for name, value in self.BIG.items()})
        with shelf.transaction() as txn:
            for name, value in self.BIG.items():
                txn[f"t-{name}"] = value
        for name, value in self.BIG.items():
            for key in (name, f"u-{name}", f"t-{name}"):
                assert shelf[key] == value and type(shelf[key]) is type(value)
        assert shelf.verify() == []

    def test_edit_and_setdefault(self, shelf: objstore.Shelf) -> None:
        shelf["blob"] = bytearray(1 << 17)
        with shelf.edit("blob") as blob:
            blob[0] = 7
        assert shelf["blob"][0] == 7
        assert shelf.setdefault("other", b"x" * (1 << 17)) == b"x" * (1 << 17)
        assert shelf.setdefault("other", b"y") == b"x" * (1 << 17)

    def test_writeback_writes_back_only_when_changed(self, path: Path) -> None:
        with objstore.open(path) as db:
            db["blob"] = bytearray(1 << 17)
        with objstore.open(path, writeback=True) as db:
            db["blob"][5] = 9
            assert db["blob"][5] == 9
        with objstore.open(path, "r") as db:
            assert db["blob"][5] == 9

    def test_damage_is_detected(self, path: Path, damage_record: Callable[[Path, object, int], int]) -> None:
        value = "\xab" * (1 << 17)  # a str stays in band (large bytes go out of band: tests/test_large.py)
        with objstore.open(path) as db:
            db["big"] = value
            db["small"] = 1
        damage_record(path, value, 1 << 16)
        with objstore.open(path, "r") as db:
            with pytest.raises(objstore.CorruptError) as caught:
                db["big"]
            assert caught.value.key == "big"
            assert db["small"] == 1
            assert db.verify() == ["big"]
