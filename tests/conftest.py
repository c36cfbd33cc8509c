"""Shared fixtures: real stores in temporary directories."""

from __future__ import annotations

import gc
import pickle
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import objstore


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--stress", action="store_true", help="run the long stress tests too")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--stress"):
        return
    skip = pytest.mark.skip(reason="stress test: run with --stress")
    for item in items:
        if "stress" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def path(tmp_path: Path) -> Path:
    """Where a store may be created: a directory that does not exist yet."""
    return tmp_path / "store"


@pytest.fixture
def shelf(path: Path) -> Iterator[objstore.Shelf]:
    """An open, empty, writable shelf, closed after the test."""
    db = objstore.open(path)
    yield db
    db.close()


def value_record(value: object, protocol: int = pickle.HIGHEST_PROTOCOL) -> bytes:
    """The value record objstore stores for `value`, built from docs/format.md, not from objstore."""
    body = pickle.dumps(value, protocol) + b"\x01"
    return body + zlib.crc32(body).to_bytes(4, "little")


@pytest.fixture
def damage_record() -> Callable[[Path, object, int], int]:
    """Flip one byte of a stored value's record inside a closed store's ``data.mdb``, like disk damage.

    Call it as ``damage_record(store, value, offset)``: `value` is what was stored
    (with the default protocol) and `offset` the byte of its record to flip;
    negative offsets count from the end (-5 is the kind byte, -1 the last CRC
    byte). Every copy of the record in the file is flipped; returns how many.
    """

    def damage(store: Path, value: object, offset: int) -> int:
        data_file = store / "data.mdb"
        record = value_record(value)
        content = bytearray(data_file.read_bytes())
        where = offset % len(record)
        found = 0
        start = content.find(record)
        while start >= 0:
            content[start + where] ^= 0x5A
            found += 1
            start = content.find(record, start + 1)
        assert found, "the record was not found in data.mdb"
        data_file.write_bytes(bytes(content))
        return found

    return damage


@pytest.hookimpl(trylast=True)
def pytest_runtest_teardown(item: pytest.Item) -> None:
    """Collect each test's cyclic garbage when the test ends, at a known point.

    A `multiprocessing` barrier or pool leaves its semaphores in reference
    cycles (four for the barrier of one growth test, six for each pool). If a
    later, random collection finds them while other code is inside
    multiprocessing's resource tracker, their finalizers call into the tracker
    reentrantly; Python 3.12 refuses that with an unraisable
    ``ReentrantCallError``, which pytest then blames on whatever test is running.
    """
    gc.collect()
