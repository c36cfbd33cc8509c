"""Damaged stores and things that are not stores: a clear objstore error, and nothing modified.

- A flipped byte inside a stored value in the real ``data.mdb``: reading that
  key raises `CorruptError` naming it, every other key stays readable and
  ``verify()`` lists it.
- A truncated ``data.mdb``: `CorruptError`, and the file is left as it was.
- A regular file, a directory of unrelated files, a foreign LMDB environment,
  a garbage ``data.mdb``, and a store whose metadata says a future format (or
  is damaged): the documented `objstore.Error` subclass for every flag, and
  every file at the path keeps its bytes.

Everything that reads a damaged LMDB file runs in a fresh interpreter, since a
damaged LMDB file can crash the process that reads it; the test then checks
that the interpreter exited normally. ``lock.mdb`` is compared by presence
only: LMDB rewrites its reader table whenever any process opens the
environment, and it holds no data.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lmdb
import pytest

import objstore

FLAGS = ["r", "w", "c", "n"]
VICTIM = "the victim's value " * 20

PRELUDE = """
import json, sys
import objstore

def describe(exc):
    return {"error": type(exc).__name__, "message": str(exc), "key": getattr(exc, "key", None),
            "notes": getattr(exc, "__notes__", [])}

def attempt(fn):
    try:
        return {"ok": repr(fn())}
    except Exception as exc:
        return describe(exc)
"""


def run_isolated(code: str, *args: str) -> Any:
    """Run `code` (after PRELUDE) in a fresh interpreter and return the JSON it printed last."""
    done = subprocess.run(
        [sys.executable, "-c", PRELUDE + textwrap.dedent(code), *args],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, f"the interpreter died (exit status {done.returncode}):\n{done.stderr}"
    return json.loads(done.stdout.splitlines()[-1])


def open_in_subprocess(path: Path, flag: str) -> dict[str, Any]:
    """Try to open `path` with `flag` in a fresh interpreter; describe what happened."""
    result: dict[str, Any] = run_isolated(
        """
        def use():
            with objstore.open(sys.argv[1], sys.argv[2]) as db:
                return len(db)
        print(json.dumps(attempt(use)))
        """,
        str(path),
        flag,
    )
    return result


def files(root: Path) -> dict[str, bytes | None]:
    """Every entry under `root` (or `root` itself if a file) with its bytes; lock.mdb by presence only."""
    if root.is_file():
        return {root.name: root.read_bytes()}
    out: dict[str, bytes | None] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames:
            out[os.path.relpath(os.path.join(dirpath, name), root) + "/"] = None
        for name in filenames:
            full = Path(dirpath, name)
            out[os.path.relpath(full, root)] = None if name == "lock.mdb" else full.read_bytes()
    return out


def assert_refused(path: Path, flag: str, expected: type[objstore.Error]) -> dict[str, Any]:
    """Opening `path` with `flag` raises `expected` (exactly) and leaves every file as it was."""
    before = files(path) if path.exists() else None
    outcome = open_in_subprocess(path, flag)
    assert "error" in outcome, f"flag {flag!r} opened it: {outcome}"
    raised = getattr(objstore, outcome["error"], None)
    assert raised is expected, f"flag {flag!r}: expected {expected.__name__}, got {outcome}"
    after = files(path) if path.exists() else None
    assert_unchanged(before, after, f"flag {flag!r}")
    return outcome


def assert_unchanged(
    before: dict[str, bytes | None] | None, after: dict[str, bytes | None] | None, what: str
) -> None:
    """Fail with the names of the entries that appeared, vanished or changed."""
    if before is None or after is None:
        assert before == after, f"{what}: the path {'vanished' if after is None else 'appeared'}"
        return
    changed = sorted(
        name for name in before.keys() | after.keys() if before.get(name, b"-") != after.get(name, b"-")
    )
    assert changed == [], f"{what} modified the path: {changed}"


def make_store(path: Path, extra: int = 100) -> dict[str, Any]:
    """A closed store whose values are all written in one transaction; returns its contents."""
    contents: dict[str, Any] = {f"key{i:03d}": {"n": i, "pad": "p" * 50} for i in range(extra)}
    contents["victim"] = VICTIM
    contents["é-neighbour"] = ["non-ascii", "key"]
    with objstore.open(path) as db:
        db.update(contents)
    return contents


# ------------------------------------------------------------ damaged value


class TestFlippedByteInAValue:
    CHECK = """
    path, expected = sys.argv[1], json.loads(sys.argv[2])
    out = {}
    with objstore.open(path, "w") as db:
        out["getitem"] = attempt(lambda: db["victim"])
        out["get"] = attempt(lambda: db.get("victim"))
        out["contains"] = attempt(lambda: "victim" in db)
        out["len"] = attempt(lambda: len(db))
        out["items"] = attempt(lambda: list(db.items()))
        out["others_wrong"] = [k for k, v in expected.items() if k != "victim" and db[k] != v]
        out["verify"] = db.verify()
        with db.snapshot() as snap:
            out["snapshot"] = attempt(lambda: snap["victim"])
            out["snapshot_verify"] = snap.verify()
        db["victim"] = "overwritten"
        out["after_overwrite"] = [db["victim"], db.verify()]
    print(json.dumps(out))
    """

    @pytest.mark.parametrize("offset", [0, 40, -6, -5, -4, -1], ids=lambda o: f"offset{o}")
    def test_corrupt_error_naming_the_key(
        self, path: Path, damage_record: Callable[[Path, object, int], int], offset: int
    ) -> None:
        contents = make_store(path)
        assert damage_record(path, VICTIM, offset) >= 1
        expected = {k: v for k, v in contents.items() if isinstance(v, (str, dict, list))}
        out = run_isolated(self.CHECK, str(path), json.dumps(expected))
        for read in ("getitem", "get", "items", "snapshot"):
            assert out[read]["error"] == "CorruptError", (read, out[read])
            assert out[read]["key"] == "victim"
            assert "'victim'" in out[read]["message"]
        assert out["contains"] == {"ok": "True"}
        assert out["len"] == {"ok": str(len(contents))}
        assert out["others_wrong"] == []
        assert out["verify"] == ["victim"]
        assert out["snapshot_verify"] == ["victim"]
        assert out["after_overwrite"] == ["overwritten", []]

    def test_in_process_reads_of_a_damaged_value(
        self, path: Path, damage_record: Callable[[Path, object, int], int]
    ) -> None:
        # A flipped byte inside a value leaves LMDB's structure intact, so this is safe in-process.
        make_store(path, extra=3)
        damage_record(path, VICTIM, 30)
        with objstore.open(path, "r") as db:
            with pytest.raises(objstore.CorruptError) as info:
                db["victim"]
            assert info.value.key == "victim"
            assert isinstance(info.value, OSError)
            assert db["key000"] == {"n": 0, "pad": "p" * 50}
            assert db.verify() == ["victim"]
            assert db.first() == ("key000", {"n": 0, "pad": "p" * 50})
            assert db.last() == ("é-neighbour", ["non-ascii", "key"])
            with pytest.raises(objstore.CorruptError):
                db.get("victim")

    def test_pop_of_a_damaged_value_removes_nothing(
        self, path: Path, damage_record: Callable[[Path, object, int], int]
    ) -> None:
        make_store(path, extra=3)
        damage_record(path, VICTIM, 30)
        with objstore.open(path) as db:
            with pytest.raises(objstore.CorruptError):
                db.pop("victim")
            assert "victim" in db
            del db["victim"]  # deleting it, as the error message suggests, works
            assert db.verify() == []


# ---------------------------------------------------------- truncated file


class TestTruncatedDataFile:
    @pytest.mark.parametrize("keep", ["half", "one-page-less"])
    @pytest.mark.parametrize("flag", FLAGS)
    def test_corrupt_error_and_untouched(self, path: Path, flag: str, keep: str) -> None:
        with objstore.open(path) as db:
            db.update({f"k{i:04d}": os.urandom(1000) for i in range(300)})
        data_file = path / "data.mdb"
        size = data_file.stat().st_size
        with open(data_file, "r+b") as f:
            f.truncate(size // 2 if keep == "half" else size - 4096)
        outcome = assert_refused(path, flag, objstore.CorruptError)
        assert "truncated" in outcome["message"]

    @pytest.mark.parametrize("flag", FLAGS)
    def test_truncated_to_almost_nothing(self, path: Path, flag: str) -> None:
        with objstore.open(path) as db:
            db["k"] = "v"
        with open(path / "data.mdb", "r+b") as f:
            f.truncate(100)
        assert_refused(path, flag, objstore.CorruptError)


# -------------------------------------------------------- not a store at all


class TestNotAStore:
    @pytest.mark.parametrize("flag", FLAGS)
    def test_regular_file(self, path: Path, flag: str) -> None:
        path.write_bytes(b"just a file\n")
        assert_refused(path, flag, objstore.NotAStoreError)

    @pytest.mark.parametrize("flag", ["c", "n"])
    def test_directory_of_unrelated_files_creating(self, path: Path, flag: str) -> None:
        (path / "sub").mkdir(parents=True)
        (path / "notes.txt").write_text("mine")
        (path / "sub" / "data.bin").write_bytes(b"\x00\x01")
        assert_refused(path, flag, objstore.NotAStoreError)

    @pytest.mark.parametrize("flag", ["r", "w"])
    def test_directory_of_unrelated_files_existing_only(self, path: Path, flag: str) -> None:
        path.mkdir()
        (path / "notes.txt").write_text("mine")
        # No store here: flags that need an existing store say it is missing.
        assert_refused(path, flag, objstore.StoreNotFoundError)

    @pytest.mark.parametrize("flag", FLAGS)
    def test_foreign_lmdb_environment(self, path: Path, flag: str) -> None:
        env = lmdb.open(str(path), max_dbs=2)
        with env.begin(write=True) as txn:
            txn.put(b"their-key", b"their value")
            txn.put(b"another", b"value")
        env.close()
        assert_refused(path, flag, objstore.NotAStoreError)
        env = lmdb.open(str(path), readonly=True)
        with env.begin() as txn:
            assert txn.get(b"their-key") == b"their value"
        env.close()

    @pytest.mark.parametrize("flag", FLAGS)
    def test_foreign_lmdb_environment_with_named_databases(self, path: Path, flag: str) -> None:
        env = lmdb.open(str(path), max_dbs=4)
        users = env.open_db(b"users")
        with env.begin(write=True) as txn:
            txn.put(b"alice", b"1", db=users)
        env.close()
        assert_refused(path, flag, objstore.NotAStoreError)

    @pytest.mark.parametrize("flag", FLAGS)
    def test_garbage_data_file(self, path: Path, flag: str) -> None:
        path.mkdir()
        (path / "data.mdb").write_bytes(bytes(range(256)) * 64)
        assert_refused(path, flag, objstore.NotAStoreError)

    @pytest.mark.parametrize("flag", FLAGS)
    def test_store_whose_data_file_became_garbage(self, path: Path, flag: str) -> None:
        make_store(path, extra=3)
        size = (path / "data.mdb").stat().st_size
        (path / "data.mdb").write_bytes((b"garbage!" * (size // 8 + 1))[:size])
        # A store (its lock files are there) with a damaged data file, not something else.
        assert_refused(path, flag, objstore.CorruptError)


# -------------------------------------------------------- future or bad meta


def rewrite_metadata(path: Path, change: Callable[[dict[str, Any]], Any]) -> None:
    """Rewrite the store's metadata record with plain lmdb, as another program would."""
    env = lmdb.open(str(path), max_dbs=4)
    with env.begin(write=True) as txn:
        record = json.loads(txn.get(b"\x00\xffobjstore"))
        replacement = change(record)
        txn.put(
            b"\x00\xffobjstore",
            replacement if isinstance(replacement, bytes) else json.dumps(record).encode(),
        )
    env.close()


class TestMetadata:
    @pytest.mark.parametrize("flag", FLAGS)
    def test_future_store_format(self, path: Path, flag: str) -> None:
        make_store(path, extra=3)
        rewrite_metadata(path, lambda m: m.update(format=2, something_new=True))
        outcome = assert_refused(path, flag, objstore.UnsupportedFormatError)
        assert "upgrade" in outcome["message"]

    @pytest.mark.parametrize("flag", FLAGS)
    def test_future_value_format(self, path: Path, flag: str) -> None:
        make_store(path, extra=3)
        rewrite_metadata(path, lambda m: m.update(value_format=2))
        assert_refused(path, flag, objstore.UnsupportedFormatError)

    @pytest.mark.parametrize("flag", FLAGS)
    def test_unknown_key_encoding(self, path: Path, flag: str) -> None:
        make_store(path, extra=3)
        rewrite_metadata(path, lambda m: m.update(key_encoding="utf-16-le"))
        assert_refused(path, flag, objstore.UnsupportedFormatError)

    @pytest.mark.parametrize("flag", FLAGS)
    def test_damaged_metadata(self, path: Path, flag: str) -> None:
        make_store(path, extra=3)
        rewrite_metadata(path, lambda m: b"{not json")
        assert_refused(path, flag, objstore.CorruptError)

    def test_future_format_message_is_in_process_too(self, path: Path) -> None:
        make_store(path, extra=3)
        rewrite_metadata(path, lambda m: m.update(format=99))
        with pytest.raises(objstore.UnsupportedFormatError, match="99"):
            objstore.open(path, "r")
