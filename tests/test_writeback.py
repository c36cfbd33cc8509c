"""Writeback as a property of every shelf, and the shelf's lifecycle around it.

Covers: writeback in subclasses of `Shelf`; `update()` pickling in chunks under
writeback; the constructor's signature; writeback caches and transactions; a
failed write-back (a real full tmpfs) keeping the cache and the shelf open, and
its report at interpreter exit; `transaction()` outside a ``with`` block; and
the `ResourceWarning` of shelves and snapshots collected unclosed.
"""

from __future__ import annotations

import gc
import inspect
import os
import pydoc
import subprocess
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import objstore
from objstore import _writeback

# ---------------------------------------------------------------- subclasses


class MyShelf(objstore.Shelf):
    """A user's subclass, as in ``class MyShelf(objstore.Shelf)``."""

    def __getitem__(self, key: str) -> Any:
        self.reads = getattr(self, "reads", 0) + 1
        return super().__getitem__(key)


class TestSubclasses:
    def test_subclass_keeps_in_place_changes(self, path: Path) -> None:
        with MyShelf(path, writeback=True) as db:
            db["list"] = []
            db["list"].append(1)
            assert db["list"] == [1]
            assert isinstance(db, MyShelf) and db.reads == 2  # the subclass's override still runs
        with objstore.open(path, "r") as db:
            assert db["list"] == [1]

    def test_subclass_without_writeback(self, path: Path) -> None:
        with MyShelf(path) as db:
            db["list"] = []
            db["list"].append(1)
            assert db["list"] == []
            assert type(db) is MyShelf

    def test_subclass_with_its_own_init(self, path: Path) -> None:
        class Named(objstore.Shelf):
            def __init__(self, path: Path, name: str) -> None:
                super().__init__(path, writeback=True)
                self.name = name

        with Named(path, "jobs") as db:
            db["list"] = []
            db["list"].append(1)
            assert db.name == "jobs" and isinstance(db, Named)
        with objstore.open(path, "r") as db:
            assert db["list"] == [1]

    def test_writeback_shelf_is_a_shelf(self, path: Path) -> None:
        with objstore.open(path, writeback=True) as db:
            assert type(db) is objstore.Shelf

    def test_subclass_keeps_its_type_and_its_overrides_under_writeback(self, path: Path) -> None:
        class Upper(objstore.Shelf):
            """Overrides a read, a write and a bulk write, each reaching the cache through super()."""

            def __getitem__(self, key: str) -> Any:
                self.reads = getattr(self, "reads", 0) + 1
                return super().__getitem__(key)

            def __setitem__(self, key: str, value: Any) -> None:
                super().__setitem__(key.upper(), value)

            def update(self, other: Any = (), /, **kwds: Any) -> None:
                super().update({key.upper(): value for key, value in dict(other, **kwds).items()})

        with Upper(path, writeback=True) as db:
            assert type(db) is Upper and type(db).__mro__[1] is objstore.Shelf
            db["a"] = []
            db.update(b=[])
            db["A"].append(1)
            db["B"].append(2)
            assert db["A"] == [1] and db["B"] == [2]  # cached: the same objects
            assert db.reads == 4 and "a" not in db
        with objstore.open(path, "r") as db:
            assert dict(db) == {"A": [1], "B": [2]}  # written back at close
        with Upper(path) as db:
            assert type(db) is Upper


class TestSignature:
    def test_constructor_shows_its_parameters(self) -> None:
        parameters = inspect.signature(objstore.Shelf).parameters
        assert list(parameters)[:4] == ["path", "flag", "protocol", "writeback"]
        assert parameters["flag"].default == "c" and parameters["writeback"].default is False
        assert parameters["durability"].kind is inspect.Parameter.KEYWORD_ONLY
        assert not any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in parameters.values())

    def test_help_shows_the_parameters(self) -> None:
        # Python 3.13's pydoc breaks long signatures over lines: compare without white space.
        rendered = pydoc.render_doc(objstore.Shelf, renderer=pydoc.plaintext)
        text = "".join("".join(line.lstrip(" |") for line in rendered.splitlines()).split())
        assert "Shelf(path:" in text
        assert "flag:'str'='c',protocol:'int|None'=None,writeback:'bool'=False,*," in text
        assert "*args" not in text

    def test_open_shows_the_shelve_parameters(self) -> None:
        text = "".join(pydoc.render_doc(objstore.open, renderer=pydoc.plaintext).split())
        assert "open(path:" in text
        assert "writeback:'bool'=False,**options:'Any')->'Shelf'" in text
        assert "durability" in text  # the docstring names the keyword-only options


# ---------------------------------------------------------------- update


def test_update_pickles_in_chunks(path: Path) -> None:
    """Under writeback, update() pickles a chunk at a time while it writes, not everything first."""
    seen: list[bool] = []

    class Probe:
        def __init__(self, plain: objstore.Shelf) -> None:
            self.plain = plain

        def __reduce__(self) -> Any:
            # Pickled inside update's transaction, the plain shelf of this thread joins
            # it: the first chunk is already written when a later chunk is pickled.
            if not self.plain.closed:  # not again when the cache is written back at close
                seen.append("k0" in self.plain)
            return (int, (0,))

    n = _writeback.CHUNK + 1
    with objstore.open(path, writeback=True) as db, objstore.open(path) as plain:
        values: list[Any] = [0] * n
        values[-1] = Probe(plain)
        db.update({f"k{i}": value for i, value in enumerate(values)})
        assert seen == [True]
        assert db[f"k{n - 1}"] is values[-1]  # cached, as the values of a writeback update are
        assert len(plain) == n


def test_update_pickles_each_chunk_after_the_previous_one_is_written(path: Path) -> None:
    """Under writeback, update() of several chunks pickles chunk by chunk between writes.

    The first value of each chunk notes, when it is pickled, how many keys
    the store holds: a plain shelf of the same thread joins update's
    transaction, so it sees the chunks written so far. Pickling everything
    first would see none written.
    """
    chunks = 3
    seen: list[int] = []

    class Probe:
        def __init__(self, plain: objstore.Shelf) -> None:
            self.plain = plain

        def __reduce__(self) -> Any:
            if not self.plain.closed:  # not again when the cache is written back at close
                seen.append(len(self.plain))
            return (int, (0,))

    size = _writeback.CHUNK
    with objstore.open(path, writeback=True) as db, objstore.open(path) as plain:
        values: list[Any] = [0] * (chunks * size)
        for c in range(chunks):
            values[c * size] = Probe(plain)
        db.update({f"k{i:06d}": value for i, value in enumerate(values)})
        assert seen == [c * size for c in range(chunks)]
        assert len(plain) == chunks * size
        assert db["k000000"] is values[0]


# ---------------------------------------------------------------- transactions


class TestTransactions:
    def test_committed_transaction_replaces_the_cached_entry(self, path: Path) -> None:
        with objstore.open(path, writeback=True) as db:
            db["k"] = [1]
            stale = db["k"]
            with db.transaction() as txn:
                txn["k"] = [2]
            assert db["k"] == [2]
            stale.append(3)  # no longer cached: must not be written back
            db.sync()
            assert db["k"] == [2]
        with objstore.open(path, "r") as db:
            assert db["k"] == [2]

    def test_new_cached_object_after_transaction_is_written_back(self, path: Path) -> None:
        with objstore.open(path, writeback=True) as db:
            db["k"] = [1]
            with db.transaction() as txn:
                txn.update({"k": [2]})
            db["k"].append(3)
        with objstore.open(path, "r") as db:
            assert db["k"] == [2, 3]

    @pytest.mark.parametrize("how", ["setitem", "delete", "pop", "clear", "savepoint", "other shelf"])
    def test_every_way_of_writing_in_a_transaction(self, path: Path, how: str) -> None:
        with objstore.open(path, writeback=True) as db, objstore.open(path) as plain:
            db["k"] = [1]
            db["k"].append(2)  # a pending in-place change
            with db.transaction() as txn:
                if how == "setitem":
                    txn["k"] = ["t"]
                elif how == "delete":
                    del txn["k"]
                elif how == "pop":
                    txn.pop("k")
                elif how == "clear":
                    txn.clear()
                elif how == "savepoint":
                    with txn.transaction() as inner:
                        inner["k"] = ["t"]
                else:
                    plain["k"] = ["t"]  # joins the transaction of this thread
            expected = ["t"] if how in ("setitem", "savepoint", "other shelf") else None
            assert db.get("k") == expected
            db.sync()
            assert plain.get("k") == expected

    def test_writes_through_the_shelf_while_joined(self, path: Path) -> None:
        with objstore.open(path, writeback=True) as db:
            db["k"] = [1]
            db["k"]
            with db.transaction():
                db["k"] = [2]
            assert db["k"] == [2]
            db["k"].append(3)
        with objstore.open(path, "r") as db:
            assert db["k"] == [2, 3]

    def test_rolled_back_transaction(self, path: Path) -> None:
        with objstore.open(path, writeback=True) as db:
            db["k"] = [1]
            db["other"] = []
            db["other"].append(1)  # untouched by the transaction: stays cached
            with pytest.raises(RuntimeError), db.transaction() as txn:
                txn["k"] = [2]
                raise RuntimeError("roll back")
            assert db["k"] == [1]
        with objstore.open(path, "r") as db:
            assert db["k"] == [1] and db["other"] == [1]

    def test_modify_and_edit(self, path: Path) -> None:
        with objstore.open(path, writeback=True) as db:
            db["n"] = 0
            cached = db["n"]
            db.modify("n", lambda n: n + 1)
            assert db["n"] == 1 and cached == 0
            db["list"] = [0]
            with db.edit("list") as value:
                value.append(1)
            assert db["list"] == [0, 1]


# ---------------------------------------------------------------- transaction() outside with


class TestTransactionOutsideWith:
    def test_item_assignment_says_what_to_do(self, shelf: objstore.Shelf) -> None:
        block = shelf.transaction()
        with pytest.raises(TypeError, match=r"with db\.transaction\(\) as txn"):
            block["k"] = 1  # type: ignore[index]
        with pytest.raises(TypeError, match=r"with db\.transaction\(\) as txn"):
            block["k"]  # type: ignore[index]
        with pytest.raises(AttributeError, match=r"with db\.transaction\(\) as txn"):
            block.update  # type: ignore[attr-defined]  # noqa: B018
        assert "k" not in shelf
        assert not shelf._source.in_transaction()  # nothing was begun

    def test_still_a_context_manager_with_savepoints(self, shelf: objstore.Shelf) -> None:
        with shelf.transaction() as txn:
            txn["a"] = 1
            with pytest.raises(KeyError), txn.transaction() as inner:
                inner["b"] = 2
                raise KeyError("roll back the savepoint")
            with shelf.transaction() as inner:
                inner["c"] = 3
            assert isinstance(txn, objstore.Transaction)
        assert dict(shelf) == {"a": 1, "c": 3}


# ---------------------------------------------------------------- write-back failures


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A real 4 MiB tmpfs, unmounted after the test."""
    mount_point = tmp_path / "small"
    mount_point.mkdir()
    try:
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount_point)],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        pytest.skip(f"cannot mount a tmpfs here: {exc}")
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {done.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], capture_output=True, timeout=30)


def _fill(fs: Path) -> Path:
    """Fill `fs` up to its last few KiB with a file that can be removed to free space."""
    filler = fs / "filler"
    with open(filler, "wb") as out:
        try:
            while True:
                out.write(b"\0" * 65536)
                out.flush()
        except OSError:
            pass
    return filler


class TestWriteBackFailure:
    def test_sync_and_close_keep_the_cache_until_written(self, small_fs: Path) -> None:
        store = small_fs / "store"
        db = objstore.open(store, writeback=True)
        try:
            db["big"] = bytearray(b"a")
            db["small"] = 1
            big = db["big"]
            big.extend(b"x" * (1 << 20))
            filler = _fill(small_fs)
            with pytest.raises(objstore.StoreError, match="full") as caught:
                db.sync()
            assert db["big"] is big, "a failed write-back must keep the cache"
            with pytest.raises(objstore.StoreError) as caught:
                db.close()
            assert not db.closed, "a failed write-back at close must leave the shelf open"
            assert "close() again" in "\n".join(getattr(caught.value, "__notes__", []))
            assert db["big"] is big
            filler.unlink()  # the user frees space and tries again
            db.close()
            assert db.closed
        finally:
            if not db.closed:
                db._cache.entries.clear()
                db.close()
        with objstore.open(store, "r") as again:
            assert again["big"] == bytearray(b"a" + b"x" * (1 << 20))

    def test_failure_at_exit_is_reported(self, small_fs: Path) -> None:
        store = small_fs / "store"
        code = (
            "import sys, objstore\n"
            "db = objstore.open(sys.argv[1], writeback=True)\n"
            "db['big'] = bytearray(b'a')\n"
            "db['big'].extend(b'x' * (1 << 20))\n"
            "with open(sys.argv[2], 'wb') as filler:  # fill the disk up\n"
            "    try:\n"
            "        while True:\n"
            "            filler.write(bytes(65536))\n"
            "            filler.flush()\n"
            "    except OSError:\n"
            "        pass\n"
            "keep = db  # never closed: the exit hook writes back, and fails\n"
        )
        done = subprocess.run(
            [sys.executable, "-c", code, str(store), str(small_fs / "filler")],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        assert "objstore:" in done.stderr
        assert repr(os.path.realpath(store)) in done.stderr
        assert "1 cached entry was not written back" in done.stderr
        assert "Traceback" not in done.stderr


# ---------------------------------------------------------------- ResourceWarning


class TestResourceWarning:
    def test_unclosed_shelf(self, path: Path) -> None:
        db = objstore.open(path)
        db["k"] = 1
        with pytest.warns(ResourceWarning, match=f"unclosed.*{os.path.realpath(path)}"):
            del db
            gc.collect()
        with objstore.open(path, "r") as again:
            assert again["k"] == 1  # closed by the finaliser all the same

    def test_unclosed_writeback_shelf_is_written_back(self, path: Path) -> None:
        db = objstore.open(path, writeback=True)
        db["k"] = []
        db["k"].append(1)
        with pytest.warns(ResourceWarning, match="unclosed"):
            del db
            gc.collect()
        with objstore.open(path, "r") as again:
            assert again["k"] == [1]

    def test_unclosed_snapshot(self, shelf: objstore.Shelf) -> None:
        snap = shelf.snapshot()
        with pytest.warns(ResourceWarning, match="unclosed objstore snapshot of"):
            del snap
            gc.collect()

    def test_closed_ones_do_not_warn(self, path: Path) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            db = objstore.open(path)
            snap = db.snapshot()
            snap.close()
            db.close()
            del snap, db
            with objstore.open(path) as db, db.snapshot():
                pass
            del db
            gc.collect()

    def test_shelf_closed_at_exit_does_not_warn(self, path: Path) -> None:
        code = "import sys, objstore\ndb = objstore.open(sys.argv[1])\nsnap = db.snapshot()\ndb['k'] = 1\n"
        done = subprocess.run(
            [sys.executable, "-X", "dev", "-W", "error::ResourceWarning", "-c", code, str(path)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        assert done.stderr == ""


def test_long_keys_under_writeback(path: Path) -> None:
    """Keys longer than LMDB's limit are cached, written back and dropped by transactions by their text."""
    long = "k" * 2000
    with objstore.open(path, writeback=True) as db:
        db[long] = [1]
        db[long].append(2)
        db.update({long + "x": [3], "short": [4]})
        db[long + "x"].append(5)
        with db.transaction() as txn:
            txn[long] = [9]
        assert db[long] == [9]
    with objstore.open(path) as db:
        assert db[long] == [9]
        assert db[long + "x"] == [3, 5]
        assert sorted(db) == sorted([long, long + "x", "short"])
