"""The record CRC: ISA-L's when the optional ``isal`` package is installed, zlib's otherwise, same bytes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zlib
from pathlib import Path

import pytest

import objstore
from objstore import _records

WRITE_AND_DUMP = """
import json, sys
{block}
import objstore, objstore._records as s
with objstore.open(sys.argv[1]) as db:
    if sys.argv[2] == "write":
        db.update({{"a": [1, 2.5, "x"], "b": {{"nested": (None, True)}}, "c": b"\\x00" * 100_000}})
    print(json.dumps({{"crc": s.CRC_IMPLEMENTATION, "values": repr(sorted(db.items()))}}))
"""
BLOCK_ISAL = "sys.modules['isal'] = None; sys.modules['isal.isal_zlib'] = None"


def run(path: Path, mode: str, block_isal: bool) -> dict[str, str]:
    code = WRITE_AND_DUMP.format(block=BLOCK_ISAL if block_isal else "")
    out = subprocess.run(
        [sys.executable, "-c", code, str(path), mode], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    return json.loads(out)  # type: ignore[no-any-return]


def test_the_accelerated_crc_is_zlibs_crc() -> None:
    for size in (0, 1, 7, 100, 4096, 1 << 20):
        data = os.urandom(size)
        assert _records.crc32(data) == zlib.crc32(data)
        assert _records.crc32(data, 12345) == zlib.crc32(data, 12345)


def test_isal_is_used_when_installed() -> None:
    pytest.importorskip("isal")
    assert _records.CRC_IMPLEMENTATION == "isal"
    assert objstore.open  # the package imported with it


def test_stores_written_with_either_implementation_read_with_the_other(tmp_path: Path) -> None:
    pytest.importorskip("isal")
    without = run(tmp_path / "one", "write", block_isal=True)
    assert without["crc"] == "zlib"
    assert run(tmp_path / "one", "read", block_isal=False) == {**without, "crc": "isal"}
    with_isal = run(tmp_path / "two", "write", block_isal=False)
    assert run(tmp_path / "two", "read", block_isal=True) == {**with_isal, "crc": "zlib"}
    data_one = (tmp_path / "one" / "data.mdb").read_bytes()
    data_two = (tmp_path / "two" / "data.mdb").read_bytes()
    with objstore.open(tmp_path / "two", "r") as db:
        record = db._codec.encode([1, 2.5, "x"], "a")
    assert record in data_one and record in data_two
