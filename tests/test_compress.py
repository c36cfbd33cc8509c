"""Compression (``compression=``, ``compress_above=``) and shelve 3.15's ``serializer=``/``deserializer=``.

- Compressed records follow docs/format.md (a kind 2 record whose section of
  tag 3 holds the codec id): checked on the raw records in ``data.mdb``.
- One store mixes settings: records written with zlib, zstd and none all read
  whatever the current setting; incompressible values are stored raw.
- Every write path compresses: single writes, bulk writes, large values,
  long keys, writeback; compression really shrinks ``data.mdb``.
- A damaged compressed record raises `CorruptError`, an unknown codec id
  `UnsupportedFormatError`, a zstd record without zstd installed says what to
  install.
- A serializer's bytes reach the deserializer exactly as it made them; bad
  combinations of options raise `TypeError`/`ValueError` and create nothing.
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import textwrap
import threading
import zlib
from pathlib import Path
from typing import Any

import lmdb
import pytest
from _stored import raw_records

import objstore
from objstore import _serialize

CODECS = {"zlib": 1, "zstd": 2}  # docs/format.md
COMPRESSIBLE = {"rows": [{"name": f"user{i}", "email": f"user{i}@example.com"} for i in range(300)]}


def sections(record: bytes) -> dict[int, bytes]:
    """The sections of a kind 2 record, by tag, read as docs/format.md says."""
    assert zlib.crc32(record) == 0x2144DF1C and record[-5] == 2
    end = len(record) - 6
    found = {}
    for _ in range(record[end]):
        tag, length = record[end - 1], int.from_bytes(record[end - 5 : end - 1], "little")
        found[tag] = record[end - 5 - length : end - 5]
        end -= 5 + length
    return found


def codec_of(record: bytes) -> str | None:
    """The codec that compressed `record`, or None if it is not compressed."""
    if record[-5] == 1:
        return None
    codec = sections(record).get(3)
    return None if codec is None else {1: "zlib", 2: "zstd"}[codec[0]]


def handmade(body: bytes, codec_id: int) -> bytes:
    """A compressed record built from docs/format.md, not from objstore."""
    head = body + bytes([codec_id]) + (1).to_bytes(4, "little") + bytes([3, 1, 2])
    return head + zlib.crc32(head).to_bytes(4, "little")


@pytest.fixture(params=sorted(CODECS))
def codec(request: pytest.FixtureRequest) -> str:
    return str(request.param)


class TestFormat:
    def test_compressed_record_is_as_documented(self, path: Path, codec: str) -> None:
        with objstore.open(path, compression=codec) as db:
            db["k"] = COMPRESSIBLE
        record = raw_records(path)[b"k"]
        assert sections(record) == {3: bytes([CODECS[codec]])}
        body = record[: -5 - 1 - 5 - 1]
        if codec == "zlib":
            assert pickle.loads(zlib.decompress(body)) == COMPRESSIBLE
        assert len(record) < len(pickle.dumps(COMPRESSIBLE, pickle.HIGHEST_PROTOCOL)) // 3

    def test_off_by_default_and_small_values_stay_plain(self, path: Path) -> None:
        with objstore.open(path) as db:
            db["big"] = COMPRESSIBLE
        with objstore.open(path, compression="zlib") as db:
            db["small"] = {"a": 1}
            db["edge"] = b"x" * 2000  # a pickle of at most compress_above (2048) bytes
        records = raw_records(path)
        assert [codec_of(records[k]) for k in (b"big", b"small", b"edge")] == [None, None, None]

    def test_compress_above(self, path: Path) -> None:
        with objstore.open(path, compression="zlib", compress_above=0) as db:
            db["small"] = "ab" * 20
            db["tiny"] = 1  # compressing cannot make it smaller
        records = raw_records(path)
        assert codec_of(records[b"small"]) == "zlib"
        assert records[b"tiny"] == pickle.dumps(1, pickle.HIGHEST_PROTOCOL) + bytes([1]) + zlib.crc32(
            pickle.dumps(1, pickle.HIGHEST_PROTOCOL) + bytes([1])
        ).to_bytes(4, "little")

    def test_incompressible_values_are_stored_raw(self, path: Path, codec: str) -> None:
        noise = os.urandom(50_000)
        with objstore.open(path, compression=codec) as db:
            db["noise"] = noise
            db.update({"noise2": noise})
            assert db["noise"] == db["noise2"] == noise
        records = raw_records(path)
        assert records[b"noise"][-5] == records[b"noise2"][-5] == 1  # kind 1: the pickle itself
        assert pickle.loads(records[b"noise"]) == noise

    def test_unknown_codec_id(self, path: Path) -> None:
        body = zlib.compress(pickle.dumps("v"))
        with objstore.open(path) as db:
            db["other"] = 1
        env = lmdb.open(str(path), max_dbs=4)
        with env.begin(write=True) as txn:
            txn.put(b"k", handmade(body, 200))
        env.close()
        with objstore.open(path, compression="zlib") as db:
            with pytest.raises(objstore.UnsupportedFormatError, match="upgrade objstore"):
                db["k"]
            assert db["other"] == 1
            assert db.verify() == []  # the record is intact: only its codec is unknown
        assert _serialize.Codec().decode(handmade(body, 1), "k") == "v"
        with pytest.raises(objstore.UnsupportedFormatError, match="id 00"):
            _serialize.Codec().decode(handmade(body, 0), "k")

    def test_intact_record_that_does_not_decompress(self) -> None:
        record = handmade(b"not zlib at all", 1)
        with pytest.raises(objstore.CorruptError, match="does not decompress") as caught:
            _serialize.Codec().decode(record, "k")
        assert caught.value.key == "k"


class TestMixedSettings:
    def test_every_setting_reads_every_record(self, path: Path) -> None:
        values = {name: {**COMPRESSIBLE, "by": name} for name in ("zlib", "zstd", "none")}
        for name, value in values.items():
            with objstore.open(path, compression=None if name == "none" else name) as db:
                db[name] = value
                db[name + "-bulk"] = value
                db.update({name + "-update": value})
        records = raw_records(path)
        assert {k.decode(): codec_of(r) for k, r in records.items()} == {
            f"{name}{suffix}": (None if name == "none" else name)
            for name in values
            for suffix in ("", "-bulk", "-update")
        }
        for setting in (None, "zlib", "zstd"):
            with objstore.open(path, "r", compression=setting) as db:
                for name, value in values.items():
                    assert db[name] == db[name + "-update"] == value
                assert dict(db.items()) == {
                    f"{name}{suffix}": value
                    for name, value in values.items()
                    for suffix in ("", "-bulk", "-update")
                }

    def test_zstd_record_without_zstd(self, path: Path) -> None:
        with objstore.open(path, compression="zstd") as db:
            db["z"] = COMPRESSIBLE
            db["plain"] = 1
        script = textwrap.dedent(
            f"""
            import sys
            sys.modules["zstandard"] = None  # neither zstd backend can be imported
            sys.modules["compression.zstd"] = None
            import objstore
            with objstore.open({str(path)!r}) as db:
                assert db["plain"] == 1
                try:
                    db["z"]
                except objstore.UnsupportedFormatError as exc:
                    print(exc)
                try:
                    objstore.open({str(path)!r}, compression="zstd")
                except ImportError as exc:
                    print(exc)
            """
        )
        out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        lines = out.stdout.splitlines()
        assert len(lines) == 2
        assert "'z'" in lines[0] and "pip install 'objstore[zstd]'" in lines[0]
        assert "pip install 'objstore[zstd]'" in lines[1]


class TestWritePaths:
    def test_every_write_path_compresses(self, path: Path, codec: str) -> None:
        large = b"0123456789" * 20_000  # pickled into a buffer (objstore._serialize.LARGE)
        long_key = "long" * 200
        with objstore.open(path, compression=codec) as db:
            db["set"] = COMPRESSIBLE
            db["large"] = large
            db.update({"update": COMPRESSIBLE, "update-large": large, long_key: COMPRESSIBLE})
            db.setdefault("setdefault", COMPRESSIBLE)
            db.modify("modify", lambda v: v, default=COMPRESSIBLE)
            with db.transaction() as txn:
                txn["txn"] = COMPRESSIBLE
        with objstore.open(path, compression=codec, writeback=True) as db:
            db["writeback"] = COMPRESSIBLE
        records = raw_records(path)
        assert {codec_of(r) for r in records.values()} == {codec}
        long_record = next(r for k, r in records.items() if len(k) == 511)
        assert sections(long_record)[1] == long_key.encode()
        with objstore.open(path, "r") as db:
            assert db["large"] == db["update-large"] == large
            assert db[long_key] == db["writeback"] == db["txn"] == COMPRESSIBLE
            assert dict(db.iteritems(prefix="long")) == {long_key: COMPRESSIBLE}

    def test_threads_share_a_shelf(self, path: Path, codec: str) -> None:
        def work(n: int) -> None:
            for i in range(30):
                db[f"{n}-{i}"] = {**COMPRESSIBLE, "n": n, "i": i}
                assert db[f"{n}-{i}"]["i"] == i

        with objstore.open(path, compression=codec) as db:
            threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(60)
            assert not any(thread.is_alive() for thread in threads)
            assert len(db) == 120 and all(value["rows"] == COMPRESSIBLE["rows"] for value in db.values())
        assert {codec_of(r) for r in raw_records(path).values()} == {codec}

    def test_compression_shrinks_the_data_file(self, tmp_path: Path, codec: str) -> None:
        values = {f"k{i:04}": {**COMPRESSIBLE, "i": i} for i in range(200)}
        sizes = {}
        for setting in (None, codec):
            store = tmp_path / str(setting)
            with objstore.open(store, compression=setting) as db:
                db.update(values)
                assert dict(db) == values
            sizes[setting] = (store / "data.mdb").stat().st_size
        assert sizes[codec] * 2 < sizes[None], sizes  # about 3x (zlib) to 5x (zstd) here

    def test_records_are_deterministic(self, codec: str) -> None:
        # edit() and writeback store a value only if its record changed.
        first, second = (_serialize.Codec(compression=codec) for _ in range(2))
        assert first.encode(COMPRESSIBLE, "k") == second.encode(COMPRESSIBLE, "k")

    def test_damaged_compressed_record(self, path: Path, codec: str) -> None:
        with objstore.open(path, compression=codec) as db:
            db["victim"] = {**COMPRESSIBLE, "victim": True}
            db["other"] = COMPRESSIBLE
        record = raw_records(path)[b"victim"]
        data_file = path / "data.mdb"
        content = bytearray(data_file.read_bytes())
        where = content.find(record)
        assert where >= 0
        while where >= 0:  # every copy LMDB left in the file
            content[where + len(record) // 2] ^= 0x5A  # inside the compressed bytes
            where = content.find(record, where + 1)
        data_file.write_bytes(bytes(content))
        # A damaged data file is read in a fresh interpreter (see tests/test_damage.py).
        script = textwrap.dedent(
            f"""
            import objstore
            with objstore.open({str(path)!r}, "r") as db:
                assert db["other"]["rows"][0]["name"] == "user0"
                try:
                    db["victim"]
                except objstore.CorruptError as exc:
                    print(exc.key, db.verify())
            """
        )
        out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        assert out.stdout.split(None, 1) == ["victim", "['victim']\n"]


class TestOptions:
    @pytest.mark.parametrize(
        "options, error",
        [
            ({"compression": "lz4"}, ValueError),
            ({"compression": "zlib", "compress_above": -1}, ValueError),
            ({"compression": "zlib", "compress_above": "4k"}, TypeError),
            ({"compress_above": 1.5}, TypeError),
            ({"serializer": json.dumps}, TypeError),
            ({"deserializer": json.loads}, TypeError),
            ({"serializer": json.dumps, "deserializer": json.loads, "pickler": objstore.Pickler}, TypeError),
            (
                {"serializer": json.dumps, "deserializer": json.loads, "unpickler": objstore.Unpickler},
                TypeError,
            ),
            ({"serializer": "json", "deserializer": json.loads}, TypeError),
        ],
    )
    def test_bad_options_create_nothing(self, path: Path, options: dict[str, Any], error: type) -> None:
        with pytest.raises(error):
            objstore.open(path, **options)
        assert not path.exists()

    def test_pickled_shelf_keeps_the_settings(self, path: Path) -> None:
        with objstore.open(path, compression="zlib", compress_above=10) as db:
            with pickle.loads(pickle.dumps(db)) as copy:
                copy["k"] = "x" * 100
        assert codec_of(raw_records(path)[b"k"]) == "zlib"


class TestSerializer:
    @pytest.fixture
    def calls(self) -> tuple[list[Any], list[bytes]]:
        """What the serializer made ((obj, protocol, bytes) each) and what the deserializer was given."""
        return [], []

    def open(self, path: Path, calls: tuple[list[Any], list[bytes]], **options: Any) -> objstore.Shelf:
        made, given = calls

        def serializer(obj: Any, protocol: int) -> bytes:
            data = json.dumps(obj, sort_keys=True).encode()
            made.append((obj, protocol, data))
            return data

        def deserializer(data: bytes) -> Any:
            given.append(data)
            return json.loads(data)

        return objstore.open(path, serializer=serializer, deserializer=deserializer, **options)

    def test_round_trip_and_exact_bytes(self, path: Path, calls: tuple[list[Any], list[bytes]]) -> None:
        made, given = calls
        long_key = "k" * 600
        with self.open(path, calls, protocol=3) as db:
            db["a"] = {"x": [1, 2]}
            db[long_key] = ["long"]
            db.update({"b": 2, "c": "three"})
            assert db["a"] == {"x": [1, 2]} and db[long_key] == ["long"]
            assert dict(db.items()) == {"a": {"x": [1, 2]}, "b": 2, "c": "three", long_key: ["long"]}
        assert {protocol for _, protocol, _ in made} == {3}  # passed on, as shelve does
        assert all(type(data) is bytes for data in given)
        assert set(given) == {data for _, _, data in made}
        records = raw_records(path)
        assert records[b"a"][:-5] == b'{"x": [1, 2]}'  # the serializer's bytes, framed as a record

    def test_default_protocol(self, path: Path, calls: tuple[list[Any], list[bytes]]) -> None:
        with self.open(path, calls) as db:
            db["a"] = 1
        assert calls[0][0][1] == pickle.HIGHEST_PROTOCOL

    def test_with_compression(self, path: Path, calls: tuple[list[Any], list[bytes]]) -> None:
        made, given = calls
        with self.open(path, calls, compression="zlib") as db:
            db["a"] = COMPRESSIBLE
            db["b"] = 1
            assert db["a"] == COMPRESSIBLE and db["b"] == 1
        assert codec_of(raw_records(path)[b"a"]) == "zlib"
        assert given == [data for _, _, data in made]

    def test_bytes_like_results(self, path: Path) -> None:
        with objstore.open(
            path, serializer=lambda obj, _: bytearray(obj, "utf-8"), deserializer=lambda data: data.decode()
        ) as db:
            db["s"] = "héllo"
            assert db["s"] == "héllo"
            with pytest.raises(TypeError) as caught:
                db["n"] = 5  # bytearray(5, "utf-8") fails: nothing stored
            assert "n" not in db
        assert any("'n'" in note for note in getattr(caught.value, "__notes__", []))

    def test_serializer_errors_store_nothing(self, path: Path) -> None:
        with objstore.open(path, serializer=lambda obj, _: obj, deserializer=bytes) as db:
            with pytest.raises(TypeError):
                db["k"] = "a str is not bytes"
            assert "k" not in db
            db["k"] = b"raw"
            assert db["k"] == b"raw"
