"""The serializer's features together: each pair that shares a record or a load path.

Signing, compression, references, restricted loading and serializer functions
are each tested on their own in their files; here, in one store at once, so
that a record carrying several sections, or a load going through several
features, is read back right (and refused where it must be).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from _stored import raw_records, section_tags

import objstore

SECRET = b"a combined-test secret, 32 bytes"
BIG = {"rows": [{"name": f"user{i}", "email": f"user{i}@example.com"} for i in range(300)]}


def test_signed_and_compressed(path: Path) -> None:
    with objstore.open(path, secret=SECRET, compression="zlib") as db:
        db["big"] = BIG
        db.update({"bulk": BIG})
        assert db["big"] == BIG and db["bulk"] == BIG
    for key in ("big", "bulk"):
        assert section_tags(raw_records(path)[key.encode()]) == [
            4,
            3,
        ]  # the MAC last, over the compressed body
    with objstore.open(path, secret=SECRET) as db:  # read whatever the current setting
        assert db["big"] == BIG
        assert db.verify() == []
    with pytest.raises(objstore.SignatureError):
        objstore.open(path)


def test_signed_with_a_serializer(path: Path) -> None:
    options: dict[str, Any] = {
        "serializer": lambda obj, protocol: json.dumps(obj).encode(),
        "deserializer": json.loads,
    }
    with objstore.open(path, secret=SECRET, **options) as db:
        db["a"] = {"x": [1, 2]}
        db.update({"b": [3]})
        db["c" * 600] = "long"  # a long key: key section and MAC
        assert db["a"] == {"x": [1, 2]} and db["b"] == [3] and db["c" * 600] == "long"
        with db.snapshot() as snap:
            assert dict(snap.items()) == {"a": {"x": [1, 2]}, "b": [3], "c" * 600: "long"}


def test_references_compressed(path: Path) -> None:
    with objstore.open(path, compression="zlib", compress_above=0) as db:
        db["target"] = BIG
        db["holder"] = {"to": db.ref("target"), "padding": BIG}
        assert db["holder"]["to"]() == BIG
        with db.transaction() as txn:
            assert txn["holder"]["to"]() == BIG
    assert section_tags(raw_records(path)[b"holder"]) == [5, 3]


def test_references_signed_and_compressed(path: Path) -> None:
    with objstore.open(path, secret=SECRET, compression="zlib") as db:
        db["target"] = 1
        db["holder"] = [db.ref("target"), BIG]
        assert db["holder"][0]() == 1 and db["holder"][1] == BIG
    assert section_tags(raw_records(path)[b"holder"]) == [4, 5, 3]


class Payload:
    """A value that creates the file named when unpickled."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return os.makedirs, (self.marker,)


def test_restricted_loading_of_compressed_records(path: Path, tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    with objstore.open(path, compression="zlib", compress_above=0) as db:
        db["evil"] = [Payload(str(marker)), "x" * 100]
        db["good"] = {"ok": "y" * 100}
    with objstore.open(path, "r", allow=()) as db:
        assert db["good"] == {"ok": "y" * 100}
        with pytest.raises(objstore.ForbiddenGlobalError):
            db["evil"]
        assert dict(db.iterglobals())["evil"] == [("os", "makedirs")]
    assert not marker.exists()
    check = subprocess.run(
        [sys.executable, "-m", "objstore", "check", str(path), "--unsafe-globals"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert check.returncode == 1 and "os.makedirs" in check.stdout


def test_swapping_the_module_unpickler_cannot_lift_a_restriction(
    path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    marker = tmp_path / "ran"
    with objstore.open(path) as db:
        db["evil"] = Payload(str(marker))
    with objstore.open(path, "r", allow=()) as db:
        monkeypatch.setattr(objstore, "Unpickler", type("Anything", (objstore.Unpickler,), {}))
        with pytest.raises(objstore.ForbiddenGlobalError):
            db["evil"]
    assert not marker.exists()


def test_allow_with_a_deserializer_is_refused(path: Path) -> None:
    with pytest.raises(TypeError, match="deserializer"):
        objstore.open(path, serializer=lambda o, p: b"", deserializer=lambda b: None, allow=())
    assert not path.exists()
