"""Reading what a store holds without objstore: its raw records, and a record's sections.

Built from docs/format.md, not from objstore's code, so that the tests check
the format as documented.
"""

from __future__ import annotations

from pathlib import Path

import lmdb

METADATA_KEY = b"\x00\xffobjstore"


def raw_records(path: Path) -> dict[bytes, bytes]:
    """Every LMDB key and record of the closed store at `path` but the metadata, read with plain lmdb."""
    env = lmdb.open(str(path), readonly=True, lock=False, max_dbs=4)
    try:
        with env.begin() as txn:
            return {bytes(k): bytes(v) for k, v in txn.cursor() if k != METADATA_KEY}
    finally:
        env.close()


def section_tags(record: bytes) -> list[int]:
    """The section tags of a kind 2 record, last first (the order docs/format.md reads them in)."""
    assert record[-5] == 2
    end, found = len(record) - 6, []
    for _ in range(record[end]):
        found.append(record[end - 1])
        end -= 5 + int.from_bytes(record[end - 5 : end - 1], "little")
    return found
