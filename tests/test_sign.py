"""Signed stores (``objstore.open(path, secret=...)``), end to end on real stores.

- every write path signs (single, bulk, transactions, modify, edit,
  setdefault, writeback, long keys): each stored record is checked raw;
- a record not signed with the secret (planted unsigned, signed under another
  secret, moved to another key, altered in any byte, truncated) is refused
  before anything unpickles it: the payloads here would create a marker
  directory if they ever ran;
- the secret is checked at open: missing, wrong, or given for an unsigned
  store, it is refused before anything is read or emptied;
- a pickled signed shelf carries its secret to other processes.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import pickle
import zlib
from pathlib import Path
from typing import Any

import lmdb
import pytest
from _stored import METADATA_KEY, raw_records

import objstore
from objstore._serialize import Codec
from objstore._sign import Signer
from objstore._signed import SignedCodec

SECRET = b"a test secret of 32 bytes, ok!!!"
OTHER = b"another secret, also long enough"
LONG = "L" * 700  # longer than LMDB's 511-byte keys: stored with its record holding the whole key


class Planted:
    """A value whose unpickling creates the directory `marker`: proof that a payload ran."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.mkdir, (self.marker,))


def put_raw(store: Path, key: bytes, record: bytes) -> None:
    """Store `record` under the LMDB key `key` of a closed store, as another program could."""
    env = lmdb.open(str(store), max_dbs=4)
    try:
        with env.begin(write=True) as txn:
            txn.put(key, record)
    finally:
        env.close()


def with_crc(body: bytes) -> bytes:
    """`body` followed by its CRC-32: what a forger that knows the format (but not the secret) writes."""
    return body + zlib.crc32(body).to_bytes(4, "little")


def unsigned_record(value: object) -> bytes:
    """A kind 1 record of `value` (docs/format.md), as an objstore without the secret writes it."""
    return with_crc(pickle.dumps(value) + b"\x01")


def assert_signed(record: bytes) -> None:
    """`record` is a signed record: kind 2, its last section a 32-byte MAC (tag 4), its CRC intact."""
    assert zlib.crc32(record) == 0x2144DF1C
    assert record[-5] == 2 and record[-7] == 4
    assert int.from_bytes(record[-11:-7], "little") == 32


@pytest.fixture
def signed(path: Path) -> Any:
    """An open, empty shelf of a new signed store, closed after the test."""
    db = objstore.open(path, secret=SECRET)
    yield db
    db.close()


# ------------------------------------------------------------ round trips


def test_round_trip_and_every_record_is_signed(path: Path) -> None:
    with objstore.open(path, secret=SECRET) as db:
        db["a"] = {"x": 1}
        db[LONG] = [1, 2, 3]
        assert db["a"] == {"x": 1} and db[LONG] == [1, 2, 3]
        assert dict(db.items()) == {"a": {"x": 1}, LONG: [1, 2, 3]}
        assert db.verify() == []
    records = raw_records(path)
    assert len(records) == 2
    for record in records.values():
        assert_signed(record)
    with objstore.open(path, "r", secret=SECRET.decode()) as db:  # a str secret is its UTF-8
        assert db["a"] == {"x": 1}


def test_the_secret_is_not_stored(path: Path) -> None:
    with objstore.open(path, secret=SECRET) as db:
        db["a"] = 1
        settings = db.info()["settings"]
    assert settings["value_format"] == 2  # what older objstores refuse (they know 1)
    assert set(settings["signature"]) == {"algorithm", "salt", "check"}
    for name in os.listdir(path):
        assert SECRET not in (path / name).read_bytes()


def test_every_write_path_signs(path: Path) -> None:
    with objstore.open(path, secret=SECRET) as db:
        db["single"] = 1
        db.update({"bulk1": 1, "bulk2": 2, LONG + "bulk": 3})
        with db.transaction() as txn:
            txn["txn"] = 1
            txn[LONG + "txn"] = 2
        db.modify("counter", lambda n: n + 1, default=0)
        db.modify(LONG + "counter", lambda n: n + 1, default=0)
        with db.edit("edited", default=[]) as items:
            items.append(1)
        db.setdefault("default", 5)
        db.setdefault(LONG + "default", 5)
    with objstore.open(path, writeback=True, secret=SECRET) as db:
        db["wb"] = [1]
        db["wb"].append(2)
        db[LONG + "wb"] = {}
        db.sync()
    records = raw_records(path)
    assert len(records) == 13
    for record in records.values():
        assert_signed(record)
    with objstore.open(path, "r", secret=SECRET) as db:
        assert db["wb"] == [1, 2] and db["edited"] == [1] and db[LONG + "counter"] == 1
        assert db.verify() == []


def test_bulk_writes_with_a_custom_pickler_are_signed_once(path: Path) -> None:
    class MyPickler(objstore.Pickler):
        pass

    with objstore.open(path, pickler=MyPickler, secret=SECRET) as db:
        db.update({"a": 1, LONG: 2})
        assert db["a"] == 1 and db[LONG] == 2
    for record in raw_records(path).values():
        assert_signed(record)
        assert record.count(b"\x04\x01\x02") + record.count(b"\x04\x02\x02") == 1  # one MAC section


def test_unsigned_stores_keep_the_plain_codec_and_records(shelf: objstore.Shelf) -> None:
    shelf["a"] = 1
    assert type(shelf._codec) is Codec
    assert shelf._codec.batch_loader([bytes(shelf._codec.encode(1, "a"))]) is not None


# ------------------------------------------------- refused before unpickling


def _plant(path: Path, key: str, record: bytes) -> None:
    with objstore.open(path, secret=SECRET) as db:
        db["good"] = "fine"
    put_raw(path, key.encode(), record)


def _assert_refused(path: Path, key: str, marker: Path) -> objstore.SignatureError:
    with objstore.open(path, secret=SECRET) as db:
        with pytest.raises(objstore.SignatureError) as info:
            db[key]
        assert info.value.key == key and repr(key) in str(info.value)
        with pytest.raises(objstore.SignatureError):
            db.get(key)
        with pytest.raises(objstore.SignatureError):
            dict(db.items())
        with pytest.raises(objstore.SignatureError):
            db.pop(key)
        with db.snapshot() as snap, pytest.raises(objstore.SignatureError):
            snap[key]
        with db.transaction() as txn, pytest.raises(objstore.SignatureError):
            txn[key]
        assert db.verify() == [key]
        assert db["good"] == "fine"
    assert not marker.exists(), "the planted payload ran"
    return info.value


def test_references_in_a_signed_store(path: Path) -> None:
    """Records holding references are signed too, and read through shelves, snapshots and transactions."""
    with objstore.open(path, secret=SECRET) as db:
        db["target"] = "value"
        db["holder"] = {"to": db.ref("target")}
        db.update({"bulk": [db.ref("target")]})
        assert db["holder"]["to"]() == "value"
        with db.snapshot() as snap:
            assert snap["bulk"][0]() == "value"
        with db.transaction() as txn:
            txn["target"] = "changed"
            assert txn["holder"]["to"]() == "changed"
    records = raw_records(path)
    for key in (b"holder", b"bulk"):
        assert_signed(records[key])
        assert records[key][-6] == 2 and records[key][-44] == 5  # two sections: references, then the MAC


def test_an_unsigned_record_is_refused_before_unpickling(path: Path, tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    assert pickle.loads(pickle.dumps(Planted(str(tmp_path / "check")))) is None  # the payload works
    assert (tmp_path / "check").exists()
    _plant(path, "evil", unsigned_record(Planted(str(marker))))
    error = _assert_refused(path, "evil", marker)
    assert "holds no signature" in str(error)


def test_a_record_signed_with_another_secret_is_refused(path: Path, tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    other = tmp_path / "other"
    with objstore.open(other, secret=OTHER) as db:
        db["evil"] = Planted(str(marker))
    _plant(path, "evil", raw_records(other)[b"evil"])
    error = _assert_refused(path, "evil", marker)
    assert "does not match" in str(error)


def test_a_signed_record_moved_to_another_key_is_refused(path: Path, tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    with objstore.open(path, secret=SECRET) as db:
        db["good"] = "fine"
        db["a"] = Planted(str(marker))  # signed by a holder of the secret, for key "a"
        db[LONG] = "long"
    records = raw_records(path)
    put_raw(path, b"b", records[b"a"])
    put_raw(path, b"c", next(r for k, r in records.items() if len(k) == 511))
    with objstore.open(path, secret=SECRET) as db:
        for key in ("b", "c"):
            with pytest.raises(objstore.SignatureError, match="moved here from another key"):
                db[key]
        assert db[LONG] == "long"
        assert sorted(db.verify()) == ["b", "c"]
    assert not marker.exists()


def test_every_altered_byte_of_a_signed_record_is_refused() -> None:
    codec = SignedCodec(Signer(SECRET, b"s" * 16))
    for key, keep in (("key", False), (LONG, True)):
        record = bytes(codec.encode({"x": [1, 2]}, key, keep_key=keep))
        assert codec.decode(record, key) == {"x": [1, 2]}
        for offset in range(len(record)):
            for mask in (0x01, 0x80):
                altered = bytearray(record)
                altered[offset] ^= mask
                if offset >= len(record) - 4:  # the CRC, outside the MAC: the MAC proves the rest
                    assert codec.decode(bytes(altered), key) == {"x": [1, 2]}
                    assert codec.intact(bytes(altered), key)
                    continue
                with pytest.raises((objstore.SignatureError, objstore.CorruptError)):
                    codec.decode(bytes(altered), key)
                if offset < len(record) - 4:  # the CRC made to match again: only the MAC can tell
                    forged = with_crc(bytes(altered[:-4]))
                    with pytest.raises(objstore.SignatureError):
                        codec.decode(forged, key)
                    assert not codec.intact(forged, key)


def test_every_truncation_of_a_signed_record_is_refused() -> None:
    codec = SignedCodec(Signer(SECRET, b"s" * 16))
    for key, keep in (("key", False), (LONG, True)):
        record = bytes(codec.encode("value", key, keep_key=keep))
        for size in range(len(record)):
            with pytest.raises((objstore.SignatureError, objstore.CorruptError)):
                codec.decode(record[:size], key)
            with pytest.raises((objstore.SignatureError, objstore.CorruptError)):
                codec.decode(with_crc(record[: max(0, size - 4)]), key)


def test_an_altered_record_in_a_store_is_refused(path: Path, tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    with objstore.open(path, secret=SECRET) as db:
        db["good"] = "fine"
        db["evil"] = Planted(str(marker))
    record = bytearray(raw_records(path)[b"evil"])
    record[3] ^= 0x20  # inside the pickle
    put_raw(path, b"evil", with_crc(bytes(record[:-4])))
    _assert_refused(path, "evil", marker)


def test_a_damaged_signed_record_is_reported_as_damage(path: Path) -> None:
    with objstore.open(path, secret=SECRET) as db:
        db["a"] = "value"
    record = bytearray(raw_records(path)[b"a"])
    record[2] ^= 0x01  # the CRC no longer matches: damage, not forgery
    put_raw(path, b"a", bytes(record))
    with objstore.open(path, secret=SECRET) as db:
        with pytest.raises(objstore.CorruptError):
            db["a"]
        assert db.verify() == ["a"]


def test_the_signature_error_pickles_with_its_key() -> None:
    error = objstore.SignatureError("message", "k")
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is objstore.SignatureError and copy.key == "k" and str(copy) == "message"
    assert isinstance(copy, objstore.StoreError) and not isinstance(copy, objstore.CorruptError)


# ------------------------------------------------------ the secret at open


def _assert_untouched(path: Path, before: dict[bytes, bytes]) -> None:
    assert raw_records(path) == before


@pytest.mark.parametrize("flag", ["r", "w", "c", "n"])
def test_a_signed_store_needs_its_secret(path: Path, flag: str) -> None:
    with objstore.open(path, secret=SECRET) as db:
        db["a"] = 1
    before = raw_records(path)
    with pytest.raises(objstore.SignatureError, match="is a signed store"):
        objstore.open(path, flag)
    with pytest.raises(objstore.SignatureError, match="wrong secret"):
        objstore.open(path, flag, secret=OTHER)
    _assert_untouched(path, before)  # "n" emptied nothing


def test_a_second_shelf_in_the_process_is_checked_too(signed: objstore.Shelf, path: Path) -> None:
    signed["a"] = 1
    with pytest.raises(objstore.SignatureError, match="is a signed store"):
        objstore.open(path, "n")
    with pytest.raises(objstore.SignatureError, match="wrong secret"):
        objstore.open(path, "n", secret=OTHER)
    assert signed["a"] == 1
    with objstore.open(path, secret=SECRET) as again:
        assert again["a"] == 1


def test_an_unsigned_store_refuses_a_secret(shelf: objstore.Shelf, path: Path) -> None:
    shelf["a"] = 1
    shelf.close()
    with pytest.raises(objstore.SignatureError, match="is not a signed store"):
        objstore.open(path, secret=SECRET)
    with objstore.open(path) as db:
        assert db["a"] == 1 and type(db._codec) is Codec


@pytest.mark.parametrize("secret", [b"", "", b"15 bytes only!!", "short"])
def test_short_secrets_are_refused(path: Path, secret: bytes | str) -> None:
    with pytest.raises(ValueError, match="at least 16 bytes"):
        objstore.open(path, secret=secret)
    assert not path.exists()


def test_a_secret_must_be_bytes_or_str(path: Path) -> None:
    with pytest.raises(TypeError, match="secret must be bytes or str"):
        objstore.open(path, secret=12345678901234567890)  # type: ignore[arg-type]


def test_an_unknown_signature_algorithm_is_refused(path: Path) -> None:
    with objstore.open(path, secret=SECRET):
        pass
    env = lmdb.open(str(path), max_dbs=4)
    with env.begin(write=True) as txn:
        meta = bytes(txn.get(METADATA_KEY))
        txn.put(METADATA_KEY, meta.replace(b"blake2b-256", b"future-mac"))
    env.close()
    with pytest.raises(objstore.UnsupportedFormatError, match="future-mac"):
        objstore.open(path, secret=SECRET)


# ------------------------------------------------------ other processes


def test_a_pickled_signed_shelf_carries_its_secret(signed: objstore.Shelf) -> None:
    signed["a"] = 1
    data = pickle.dumps(signed)
    assert SECRET in data  # documented: the pickle of a signed shelf holds its secret
    with pickle.loads(data) as copy:
        assert copy["a"] == 1
        copy["b"] = 2
    assert signed["b"] == 2


def _read_in_worker(db: objstore.Shelf, key: str) -> Any:
    value = db[key]
    db[key + "-worker"] = value
    return value


@pytest.mark.timeout(60)
@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_a_signed_shelf_works_in_a_worker(signed: objstore.Shelf, method: str) -> None:
    signed["a"] = [1, 2]
    with multiprocessing.get_context(method).Pool(1) as pool:
        assert pool.apply_async(_read_in_worker, (signed, "a")).get(timeout=45) == [1, 2]
    assert signed["a-worker"] == [1, 2]
    assert_signed(signed._source.get(b"a-worker"))


def test_large_values_are_signed(path: Path) -> None:
    value = bytes(range(256)) * 1024  # pickled into a buffer: encode's large path
    with objstore.open(path, secret=SECRET) as db:
        db["big"] = value
        db.update({"big2": value, LONG: value})
        assert db["big"] == db["big2"] == db[LONG] == value
    records = raw_records(path)
    for record in records.values():
        assert_signed(record)
    altered = bytearray(records[b"big"])
    altered[100_000] ^= 0x01
    put_raw(path, b"big", with_crc(bytes(altered[:-4])))
    with objstore.open(path, secret=SECRET) as db:
        with pytest.raises(objstore.SignatureError):
            db["big"]
        assert db["big2"] == value


def _rewrite_metadata(path: Path, change: Any) -> None:
    env = lmdb.open(str(path), max_dbs=4)
    try:
        with env.begin(write=True) as txn:
            meta = json.loads(bytes(txn.get(METADATA_KEY)))
            change(meta)
            txn.put(METADATA_KEY, json.dumps(meta, sort_keys=True).encode())
    finally:
        env.close()


def test_value_format_2_without_a_signature_is_refused(path: Path) -> None:
    with objstore.open(path, secret=SECRET):
        pass
    _rewrite_metadata(path, lambda meta: meta.pop("signature"))
    with pytest.raises(objstore.UnsupportedFormatError, match="upgrade objstore"):
        objstore.open(path)


def test_a_stripped_signature_is_refused_by_holders_of_the_secret(path: Path) -> None:
    with objstore.open(path, secret=SECRET) as db:
        db["a"] = 1
    _rewrite_metadata(path, lambda meta: (meta.pop("signature"), meta.update(value_format=1)))
    with pytest.raises(objstore.SignatureError, match="is not a signed store"):
        objstore.open(path, secret=SECRET)


def test_signing_keeps_the_sections_a_record_already_has() -> None:
    from objstore._records import _keep_key
    from objstore._signed import _signed

    signer = Signer(SECRET, b"s" * 16)
    plain = bytes(Codec().encode([1], LONG))
    with_key_section = _keep_key(plain, LONG)  # a kind 2 record, as other features make them
    assert _signed(with_key_section, LONG, False, signer) == _signed(plain, LONG, True, signer)
    assert SignedCodec(signer).decode(bytes(_signed(with_key_section, LONG, False, signer)), LONG) == [1]
