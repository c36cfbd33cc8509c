"""The data every workload writes, and the checks that what is read back is what was written."""

from __future__ import annotations

import random
from collections.abc import Iterable
from typing import Any

import numpy as np

ARRAY_ITEMS = 131072  # float64 items: 1 MiB
ARRAY_BYTES = ARRAY_ITEMS * 8


class VerificationError(AssertionError):
    """A system returned something other than what was written: the run is invalid."""


def key_of(i: int) -> str:
    """The key of record `i`, e.g. ``"user:000123"``."""
    return f"user:{i:06d}"


def index_of(key: str) -> int:
    """The record number in a key made by `key_of`."""
    return int(key[5:])


def make_record(i: int, version: int = 0) -> dict[str, Any]:
    """A realistic small value: a user record of a few fields, about 127 bytes pickled (protocol 5)."""
    return {
        "id": i,
        "name": f"User {i:06d}",
        "email": f"user{i:06d}@example.org",
        "age": 18 + i % 70,
        "active": i % 3 != 0,
        "score": round(i * 0.37 % 100, 2),
        "version": version,
    }


def dataset(n: int) -> dict[str, dict[str, Any]]:
    """Records 0..n-1 by key, in key order."""
    return {key_of(i): make_record(i) for i in range(n)}


def shuffled(keys: Iterable[str], seed: int) -> list[str]:
    """The keys in a random order that is the same for every system of a run."""
    out = list(keys)
    random.Random(seed).shuffle(out)
    return out


def check_values(keys: list[str], values: list[Any], expected: dict[str, Any], system: str) -> None:
    """Raise `VerificationError` unless ``values[i] == expected[keys[i]]`` for every i."""
    if len(values) != len(keys):
        raise VerificationError(f"{system}: read {len(values)} values for {len(keys)} keys")
    for key, value in zip(keys, values, strict=True):
        if value != expected[key]:
            raise VerificationError(f"{system}: key {key!r} read back {value!r}, expected {expected[key]!r}")


def check_items(items: list[tuple[str, Any]], expected: dict[str, Any], system: str) -> None:
    """Raise `VerificationError` unless `items` are exactly the pairs of `expected`, in any order."""
    seen = set()
    for key, value in items:
        if key in seen:
            raise VerificationError(f"{system}: iteration yielded {key!r} twice")
        seen.add(key)
        if key not in expected or value != expected[key]:
            raise VerificationError(
                f"{system}: iteration yielded {key!r}: {value!r}, which was never written"
            )
    if len(seen) != len(expected):
        raise VerificationError(
            f"{system}: iteration yielded {len(seen)} items, {len(expected)} were written"
        )


def check_versioned(key: str, value: Any, system: str) -> None:
    """Raise unless `value` is a record written for `key` by the mixed workload (any version)."""
    if not isinstance(value, dict) or value != make_record(index_of(key), value.get("version", -1)):
        raise VerificationError(f"{system}: key {key!r} read back {value!r}, which no writer wrote")


def make_array(i: int) -> np.ndarray:
    """Large value `i`: a 1 MiB float64 array of seeded random numbers."""
    return np.random.default_rng(i).random(ARRAY_ITEMS)


def check_array(key: str, value: Any, expected: np.ndarray, system: str) -> None:
    """Raise unless `value` is an array equal to `expected` in dtype, shape and content.

    Works as well on a read-only view of a shared buffer (zero-copy reads) as on a copy.
    """
    if not isinstance(value, np.ndarray):
        raise VerificationError(f"{system}: key {key!r} read back a {type(value).__name__}, not an ndarray")
    if value.dtype != expected.dtype or value.shape != expected.shape or not np.array_equal(value, expected):
        raise VerificationError(f"{system}: key {key!r} read back an array different from the one written")
