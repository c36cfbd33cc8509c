"""Keys: any length, impossible keys on lookups, str subclasses, damaged keys on disk."""

from __future__ import annotations

import hashlib
import pickle
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import objstore
from objstore import _keys

PREFIX = 494  # leading bytes of a long key kept in its LMDB key (docs/format.md)


def stored_order(key: str) -> bytes:
    """Where a key sorts, as docs/format.md says: its UTF-8, or for long keys prefix + 0xfe + hash."""
    raw = key.encode()
    if len(raw) <= 511:
        return raw
    return raw[:PREFIX] + b"\xfe" + hashlib.blake2b(raw, digest_size=16).digest()


def random_keys(rng: random.Random, n: int) -> list[str]:
    """Keys of 1..3000 bytes, many sharing long prefixes so that they meet around byte 494."""
    stems = ["".join(rng.choice("abé😀") for _ in range(rng.randint(480, 520))) for _ in range(4)]
    keys = set()
    while len(keys) < n:
        if rng.random() < 0.5:
            stem = rng.choice(stems)[: rng.randint(1, 520)]
        else:
            stem = ""
        tail = "".join(rng.choice("xyzé€😀") for _ in range(rng.randint(0 if stem else 1, 2500)))
        key = stem + tail
        if len(key.encode()) > 3000:
            key = key.encode()[:3000].decode(errors="ignore")
        if key:
            keys.add(key)
    return sorted(keys)


def expected(
    model: dict[str, Any], prefix: str | None = None, start: str | None = None, stop: str | None = None
) -> list[str]:
    keys = [
        k
        for k in model
        if (prefix is None or k.startswith(prefix))
        and (start is None or k >= start)
        and (stop is None or k < stop)
    ]
    return sorted(keys, key=stored_order)


def test_random_keys_against_a_dict(path: Path) -> None:
    rng = random.Random(7)
    keys = random_keys(rng, 1000)
    model = {key: i for i, key in enumerate(keys)}
    with objstore.open(path, durability="off") as db:
        half = len(keys) // 2
        db.update({k: model[k] for k in keys[:half]})
        for k in keys[half:]:
            db[k] = model[k]
        for db_view in (db,):
            assert len(db_view) == len(model)
            assert list(db_view) == expected(model)
            assert list(db_view.iterkeys(reverse=True)) == expected(model)[::-1]
            assert dict(db_view.items()) == model
            assert [k for k, _ in db_view.iteritems()] == expected(model)
        # Keys that differ within their first 494 bytes sort exactly.
        order = list(db)
        for a, b in zip(order, order[1:], strict=False):
            if a.encode()[:PREFIX] != b.encode()[:PREFIX]:
                assert a < b
        for k in rng.sample(keys, 200):
            assert db[k] == model[k] and k in db and db.get(k) == model[k]
            assert k + "q" not in db
        for _ in range(30):
            a, b = rng.sample(keys, 2)
            prefix = a[: rng.choice([1, 5, 300, 493, 494, 495, 600, len(a)])]
            start, stop = sorted((a, b))
            for bounds in (
                {"prefix": prefix},
                {"start": start},
                {"stop": stop},
                {"start": start, "stop": stop},
                {"prefix": prefix, "start": start},
            ):
                want = expected(model, **bounds)
                assert list(db.iterkeys(**bounds)) == want, bounds
                assert list(db.iterkeys(**bounds, reverse=True)) == want[::-1], bounds
                assert [k for k, _ in db.iteritems(**bounds)] == want, bounds
            want = expected(model, prefix)
            assert db.first(prefix) == (want[0], model[want[0]])
            assert db.last(prefix) == (want[-1], model[want[-1]])
        assert db.verify() == []
        with db.snapshot() as snap:
            assert list(snap) == expected(model)
        for k in rng.sample(keys, 100):
            assert db.pop(k) == model.pop(k)
        for _ in range(20):
            k, v = db.popitem()
            assert expected(model)[0] == k and model.pop(k) == v
    with objstore.open(path, "r") as db:
        assert list(db) == expected(model)
        assert dict(db.items()) == model


LONG = "L" * 600


@pytest.mark.parametrize("writeback", [False, True])
def test_every_operation_on_long_keys(path: Path, writeback: bool) -> None:
    a, b = LONG + "a", LONG + "b" + "é" * 2000
    with objstore.open(path, writeback=writeback) as db:
        db[a] = 1
        assert db[a] == 1 and a in db and LONG not in db and db.get(LONG, 0) == 0
        assert db.setdefault(b, [1]) == [1] and db.setdefault(b, 5) == [1]
        db.update({a: 2, "short": 3})
        assert db.modify(a, lambda v: v + 1) == 3
        with db.edit(b) as value:
            value.append(2)
        with db.edit(LONG + "c", default=[]) as value:
            value.append(0)
        with db.transaction() as txn:
            txn[LONG + "d"] = "d"
            assert txn[LONG + "d"] == "d" and txn.get(a) == 3
            del txn[LONG + "c"]
        db.sync()
        assert dict(db.items()) == {a: 3, b: [1, 2], LONG + "d": "d", "short": 3}
        assert db.pop(LONG + "d") == "d" and db.pop(LONG + "d", None) is None
        with pytest.raises(KeyError):
            del db[LONG + "d"]
        first = min([a, b, "short"], key=stored_order)
        popped = db.popitem()
        assert popped[0] == first
        rest = {a: 3, b: [1, 2], "short": 3}
        del rest[first]
    with objstore.open(path) as db:
        assert dict(db) == rest


def test_a_hash_collision_is_absent_on_read_and_refused_on_write(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Every long key sharing its first 494 bytes now gets the same LMDB key.
    monkeypatch.setattr(_keys, "_digest", lambda encoded: b"\x00" * 16)
    a, b = LONG + "a", LONG + "b"
    with objstore.open(path) as db:
        db[a] = 1
        assert b not in db and db.get(b) is None and db.pop(b, 0) == 0
        with pytest.raises(KeyError):
            db[b]
        with pytest.raises(KeyError):
            del db[b]
        for write in (
            lambda: db.__setitem__(b, 2),
            lambda: db.update({b: 2}),
            lambda: db.setdefault(b, 2),
            lambda: db.modify(b, lambda v: v, default=0),
        ):
            with pytest.raises(ValueError, match="collides"):
                write()
        assert dict(db) == {a: 1}
        db[a] = 5  # the key that owns its LMDB key may still be rewritten
        assert db[a] == 5


def test_str_subclass_cannot_choose_its_bytes(path: Path) -> None:
    class Sneaky(str):
        def encode(self, *args: Any, **kwargs: Any) -> bytes:  # type: ignore[override]
            return b"\x00\xffobjstore"

    with objstore.open(path) as db:
        db[Sneaky("k")] = 1
        db.update({Sneaky("j"): 2})
        assert db[Sneaky("k")] == 1 and Sneaky("j") in db
    with objstore.open(path) as db:
        assert dict(db) == {"j": 2, "k": 1}


def test_non_str_lookups_raise_type_error(shelf: objstore.Shelf) -> None:
    for key in (1, b"k", None):
        with pytest.raises(TypeError, match="must be str"):
            key in shelf  # noqa: B015
        with pytest.raises(TypeError, match="must be str"):
            shelf.get(key)  # type: ignore[arg-type]


CALLS = Path()


def _count_and_fail() -> None:
    with open(CALLS, "a") as f:
        f.write("x")
    raise RuntimeError("cannot rebuild")


class Fails:
    def __reduce__(self) -> tuple[Any, ...]:
        return (_count_and_fail, ())


def test_a_failing_value_is_unpickled_once(path: Path, tmp_path: Path) -> None:
    global CALLS
    CALLS = tmp_path / "calls"
    with objstore.open(path) as db:
        db["bad"] = Fails()
        for read in (lambda: db["bad"], lambda: list(db.items()), lambda: db.get("bad")):
            CALLS.write_text("")
            with pytest.raises(RuntimeError) as info:
                read()
            assert CALLS.read_text() == "x"
            assert "while unpickling the value of key 'bad'" in " ".join(getattr(info.value, "__notes__", []))


def test_a_failing_value_amid_a_batch_is_named_by_its_key(path: Path, tmp_path: Path) -> None:
    """Iteration loads a batch of intact records at once: an error names the right key all the same."""
    global CALLS
    CALLS = tmp_path / "calls"
    CALLS.write_text("")
    with objstore.open(path) as db:
        db.update({f"k{i:02d}": i for i in range(40)})
        db["k17x"] = Fails()
        seen = []
        with pytest.raises(RuntimeError) as info:
            for key, value in db.items():
                seen.append((key, value))
        assert seen == [(f"k{i:02d}", i) for i in range(18)]
        assert "while unpickling the value of key 'k17x'" in " ".join(getattr(info.value, "__notes__", []))
        assert CALLS.read_text() == "x"


def flip_key_byte(store: Path, key: bytes) -> bytes:
    """Make one stored key invalid UTF-8 in data.mdb (every copy); return the damaged key."""
    data_file = store / "data.mdb"
    content = bytearray(data_file.read_bytes())
    damaged = key[:-1] + b"\xff"
    assert content.count(key) >= 1
    data_file.write_bytes(bytes(content.replace(key, damaged)))
    return damaged


def test_a_key_that_is_not_utf8_is_damage(path: Path) -> None:
    with objstore.open(path) as db:
        db.update({"alpha": 1, "bravo-key": 2, "charlie": 3})
    raw = flip_key_byte(path, b"bravo-key")
    with objstore.open(path) as db:
        assert db["alpha"] == 1 and db["charlie"] == 3
        for walk in (lambda: list(db), lambda: list(db.items()), lambda: list(db.values())):
            with pytest.raises(objstore.CorruptError) as info:
                walk()
            assert repr(raw) in str(info.value) and "backup" in str(info.value)
        damaged = db.verify()
        assert damaged == [raw.decode("utf-8", "surrogateescape")]
        assert damaged[0].encode("utf-8", "surrogateescape") == raw
        assert damaged[0] not in db
    result = subprocess.run(
        [sys.executable, "-m", "objstore", "check", str(path)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert repr(raw) in result.stdout


def test_records_of_long_keys_in_the_format(path: Path) -> None:
    key = "k" * 1360
    with objstore.open(path) as db:
        db[key] = {"v": 1}
        record = db._source.get(stored_order(key))
    whole = key.encode()
    body = pickle.dumps({"v": 1}, pickle.HIGHEST_PROTOCOL) + whole + len(whole).to_bytes(4, "little")
    body += b"\x01\x01\x02"
    assert record == body + __import__("zlib").crc32(body).to_bytes(4, "little")


def test_a_damaged_record_of_a_long_key_is_damage(path: Path) -> None:
    key = "k" * 1360
    with objstore.open(path) as db:
        db.update({key: "long value", "short": 1})
    # Flip the kind-2 record's pickle: the record no longer passes its CRC.
    data_file = path / "data.mdb"
    content = bytearray(data_file.read_bytes())
    where = content.find(pickle.dumps("long value", pickle.HIGHEST_PROTOCOL))
    assert where >= 0
    content[where + 3] ^= 0x5A
    data_file.write_bytes(bytes(content))
    with objstore.open(path) as db:
        assert db["short"] == 1
        with pytest.raises(objstore.CorruptError):
            db[key]
        with pytest.raises(objstore.CorruptError, match="long key"):
            list(db)
        [damaged] = db.verify()
        assert damaged.encode("utf-8", "surrogateescape") == stored_order(key)
        db[key] = "rewritten"  # overwriting the damaged entry is the remedy
        assert db[key] == "rewritten" and db.verify() == []


def test_an_unknown_section_is_refused_not_guessed() -> None:
    import zlib

    body = pickle.dumps("v") + b"xyz" + (3).to_bytes(4, "little") + b"\x09\x01\x02"
    record = body + zlib.crc32(body).to_bytes(4, "little")
    with pytest.raises(objstore.UnsupportedFormatError, match="sections"):
        objstore._serialize.Codec().decode(record, "k")
    assert not objstore._records.is_intact(record)


@pytest.mark.parametrize(
    "keys",
    [
        ["a", "b", "é", "日本"],
        ["a", LONG + "x", "b"],
        ["a", "", "b"],
        ["a", "\ud800", "b"],
        ["a", 1, "b"],
        ["a", b"b"],
        [],
    ],
)
def test_bulk_key_rules_are_the_single_key_rules(keys: list[Any]) -> None:
    """`stored_keys` (a bulk write's fast path) gives what `stored_key` gives key by key, errors included."""
    try:
        expected: list[bytes] | type[Exception] = [_keys.stored_key(key) for key in keys]
    except (TypeError, ValueError) as exc:
        expected = type(exc)
    if isinstance(expected, list):
        got = _keys.stored_keys(keys)
        assert got == expected and [type(raw) for raw in got] == [type(raw) for raw in expected]
    else:
        with pytest.raises(expected):
            _keys.stored_keys(keys)
