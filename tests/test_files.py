"""The store's files under hostile conditions: full disks, read-only mounts, a deleted lock.mdb,
other Unix users, umask and mode, and the errors a user gets for each.

Everything runs on real filesystems: small tmpfs mounts (filled with a file)
and read-only bind mounts, which need root; those tests skip where mounting is
not possible. Anything that could die of SIGBUS runs in a subprocess, so a
crash shows as a failed test with the signal, not as a dead test run.
"""

from __future__ import annotations

import contextlib
import os
import signal
import stat
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path

import lmdb
import pytest

import objstore
from objstore._storage._common import LOCK_FILE_SIZE, MAX_READERS

ROOT = str(Path(__file__).resolve().parent.parent)
# The user nobody, keeping only the right to read and search any file: the test
# interpreter and its libraries may sit in root's private home (a pyenv build
# with a shared libpython does not even start without it), while every write
# still needs the permissions these tests are about.
NOBODY = [
    "setpriv",
    "--reuid=65534",
    "--regid=65534",
    "--clear-groups",
    "--inh-caps=+dac_read_search",
    "--ambient-caps=+dac_read_search",
]


def run(script: str, *args: str, user: list[str] | None = None, timeout: float = 60) -> str:
    """Run `script` in a fresh Python (as `user`), fail on a non-zero exit or a signal; return stdout."""
    result = subprocess.run(
        [*(user or []), sys.executable, "-c", textwrap.dedent(script), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": ROOT},
    )
    if result.returncode < 0:
        pytest.fail(f"the process was killed by {signal.Signals(-result.returncode).name}: {result.stderr}")
    assert result.returncode == 0, result.stderr
    return result.stdout


# Prints the objstore error of opening argv[1] with flag argv[2], or "opened".
OPEN_AND_REPORT = """
    import sys, objstore
    try:
        with objstore.open(sys.argv[1], sys.argv[2]) as db:
            if sys.argv[2] != "r":
                db["k"] = "v"
        print("opened")
    except objstore.Error as exc:
        print(type(exc).__name__, exc)
"""

HOLD = """
    import sys, objstore
    with objstore.open(sys.argv[1], sys.argv[2]) as db:
        print("ready", flush=True)
        sys.stdin.readline()
"""


@contextlib.contextmanager
def holding(path: Path, flag: str = "c") -> Iterator[subprocess.Popen[str]]:
    """A process that has the store at `path` open while the block runs."""
    process = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(HOLD), str(path), flag],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": ROOT},
    )
    try:
        assert process.stdout is not None and process.stdout.readline().strip() == "ready"
        yield process
    finally:
        assert process.stdin is not None and process.stdout is not None
        process.stdin.close()
        process.wait(30)
        process.stdout.close()


def _mount(*args: str) -> None:
    subprocess.run(["mount", *args], check=True, capture_output=True, timeout=30)


@contextlib.contextmanager
def tmpfs(size: str) -> Iterator[Path]:
    """A fresh tmpfs of `size`, unmounted afterwards; skips where mounting is impossible."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    where = Path(tempfile.mkdtemp(prefix="objstore-tmpfs-"))
    try:
        try:
            _mount("-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where))
        except (OSError, subprocess.CalledProcessError) as exc:
            pytest.skip(f"cannot mount a tmpfs here: {exc}")
        try:
            yield where
        finally:
            subprocess.run(["umount", "-l", str(where)], check=True, timeout=30)
    finally:
        where.rmdir()


def fill(directory: Path) -> None:
    """Fill the filesystem holding `directory` until it has no byte left."""
    with open(directory / "filler", "wb") as out:
        chunk = b"\xaa" * (1 << 16)
        with contextlib.suppress(OSError):
            while True:
                out.write(chunk)
                out.flush()
        out.flush = lambda: None  # type: ignore[method-assign]
    for size in (4096, 512, 1):
        with contextlib.suppress(OSError), open(directory / f"filler{size}", "wb", buffering=0) as out:
            while True:
                out.write(b"\xaa" * size)
    assert os.statvfs(directory).f_bavail == 0


def test_the_lock_file_size_is_lmdbs(tmp_path: Path) -> None:
    env = lmdb.open(str(tmp_path), max_readers=MAX_READERS, max_dbs=4)
    try:
        assert os.path.getsize(tmp_path / "lock.mdb") == LOCK_FILE_SIZE
    finally:
        env.close()


def test_a_new_store_has_its_lock_file_allocated(path: Path) -> None:
    with objstore.open(path):
        st = os.stat(path / "lock.mdb")
        assert st.st_size == LOCK_FILE_SIZE
        assert st.st_blocks * 512 >= LOCK_FILE_SIZE


class TestFullDisk:
    def test_creating_a_store_on_a_full_disk_says_so(self) -> None:
        with tmpfs("1m") as disk:
            fill(disk)
            out = run(OPEN_AND_REPORT, str(disk / "store"), "c")
            assert out.startswith("StoreError") and "full" in out, out

    @pytest.mark.parametrize("flag", ["c", "w", "r"])
    def test_opening_with_lock_mdb_missing_on_a_full_disk_says_so(self, flag: str) -> None:
        with tmpfs("1m") as disk:
            store = disk / "store"
            with objstore.open(store) as db:
                db["k"] = "v"
            (store / "lock.mdb").unlink()
            fill(disk)
            out = run(OPEN_AND_REPORT, str(store), flag)
            assert out.startswith("StoreError") and "full" in out, out

    def test_a_hundred_readers_on_a_full_disk(self) -> None:
        with tmpfs("1m") as disk:
            store = disk / "store"
            with objstore.open(store) as db:
                db["k"] = "v"
            fill(disk)
            out = run(
                """
                import sys, threading, objstore
                with objstore.open(sys.argv[1], "r") as db:
                    snapshots = [db.snapshot() for _ in range(100)]
                    seen = [snap["k"] for snap in snapshots]
                    for snap in snapshots:
                        snap.close()
                    def read():
                        with objstore.open(sys.argv[1], "r") as other, other.snapshot() as snap:
                            seen.append(snap["k"])
                    threads = [threading.Thread(target=read) for _ in range(20)]
                    for t in threads: t.start()
                    for t in threads: t.join(30)
                print(len(seen), set(seen))
                """,
                str(store),
            )
            assert out.split()[0] == "120" and "'v'" in out, out

    def test_growing_data_on_a_full_disk_raises_and_keeps_the_data(self) -> None:
        with tmpfs("4m") as disk:
            out = run(
                """
                import sys, objstore
                with objstore.open(sys.argv[1]) as db:
                    db["first"] = "kept"
                    try:
                        for i in range(1000):
                            db[f"k{i}"] = bytes(256 << 10)
                        print("never full")
                    except objstore.StoreError as exc:
                        assert "full" in str(exc), exc
                        print("full", db["first"], len(db) < 1000)
                """,
                str(disk / "store"),
            )
            assert out.split() == ["full", "kept", "True"], out


@contextlib.contextmanager
def read_only_view(source: Path) -> Iterator[Path]:
    """A read-only bind mount of `source` (as a Docker ':ro' volume is)."""
    if os.geteuid() != 0:
        pytest.skip("bind mounts need root")
    where = Path(tempfile.mkdtemp(prefix="objstore-ro-"))
    try:
        try:
            _mount("--bind", str(source), str(where))
        except (OSError, subprocess.CalledProcessError) as exc:
            pytest.skip(f"cannot bind-mount here: {exc}")
        try:
            _mount("-o", "remount,ro,bind", str(where))
            yield where
        finally:
            subprocess.run(["umount", "-l", str(where)], check=True, timeout=30)
    finally:
        where.rmdir()


class TestReadOnlyMount:
    def test_lock_free_reading_is_refused_while_a_writer_has_the_store_open(self, tmp_path: Path) -> None:
        source = tmp_path / "volume"
        store = source / "store"
        with objstore.open(store) as db:
            db["k"] = "v"
        with read_only_view(source) as view, holding(store, "c") as writer:
            with pytest.raises(objstore.StoreError, match="read-only filesystem") as caught:
                objstore.open(view / "store", "r")
            assert str(writer.pid) in str(caught.value)
            with pytest.raises(objstore.ReadOnlyError):
                objstore.open(view / "store", "w")

    def test_lock_free_reading_works_when_nobody_has_the_store_open(self, tmp_path: Path) -> None:
        source = tmp_path / "volume"
        with objstore.open(source / "store") as db:
            db["k"] = "v"
        with read_only_view(source) as view:
            with objstore.open(view / "store", "r") as db:
                assert db["k"] == "v"
            # Another process reading lock-free beside it is fine too.
            with objstore.open(view / "store", "r") as db:
                assert run(OPEN_AND_REPORT, str(view / "store"), "r").strip() == "opened"

    def test_creating_on_a_read_only_filesystem_is_a_read_only_error(self, tmp_path: Path) -> None:
        (tmp_path / "volume").mkdir()
        with read_only_view(tmp_path / "volume") as view:
            with pytest.raises(objstore.ReadOnlyError, match="not writable"):
                objstore.open(view / "store", "c")


class TestDeletedLockFile:
    def test_a_deleted_lock_file_is_refused_while_the_store_is_open(self, path: Path) -> None:
        with objstore.open(path) as db:
            db["k"] = 1
        with holding(path) as other:
            (path / "lock.mdb").unlink()
            with pytest.raises(objstore.StoreError, match="lock.mdb was deleted") as caught:
                objstore.open(path)
            assert str(other.pid) in str(caught.value) and "Close every process" in str(caught.value)
            assert not (path / "lock.mdb").exists()  # not recreated beside the live openers
        with objstore.open(path) as db:  # once they are gone, it is recreated
            assert db["k"] == 1

    def test_a_replaced_lock_file_is_refused_while_the_store_is_open(self, path: Path) -> None:
        with objstore.open(path) as db:
            db["k"] = 1
        with holding(path, "r"):
            content = (path / "lock.mdb").read_bytes()
            (path / "lock.mdb").unlink()
            (path / "lock.mdb").write_bytes(content)
            out = run(OPEN_AND_REPORT, str(path), "r")
            assert out.startswith("StoreError") and "replaced" in out, out

    def test_openers_beside_a_live_opener_are_accepted(self, path: Path) -> None:
        with objstore.open(path) as db:
            db["k"] = 1
        with holding(path):
            assert run(OPEN_AND_REPORT, str(path), "w").strip() == "opened"
            with objstore.open(path, "r") as db:
                assert db["k"] == "v"


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory another user can reach (pytest's tmp_path is private to root)."""
    where = Path(tempfile.mkdtemp(prefix="objstore-users-"))
    os.chmod(where, 0o777)
    try:
        yield where
    finally:
        subprocess.run(["rm", "-rf", str(where)], check=True, timeout=30)


def _as_nobody() -> list[str]:
    if os.geteuid() != 0:
        pytest.skip("running as another user needs root")
    try:
        subprocess.run([*NOBODY, "true"], check=True, capture_output=True, timeout=30)
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.skip(f"setpriv cannot switch users here: {exc}")
    return NOBODY


@contextlib.contextmanager
def umask(mask: int) -> Iterator[None]:
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def _modes(store: Path) -> dict[str, int]:
    return {
        name: stat.S_IMODE(os.stat(store / name).st_mode)
        for name in ("data.mdb", "lock.mdb", "objstore.lock", "objstore.openers")
    }


class TestUsersAndModes:
    def test_a_user_who_cannot_write_is_told_that_reading_needs_lock_mdb(self, shared_dir: Path) -> None:
        user = _as_nobody()
        with umask(0o022), objstore.open(shared_dir / "store") as db:
            db["k"] = 1
        out = run(OPEN_AND_REPORT, str(shared_dir / "store"), "r", user=user)
        assert out.startswith("ReadOnlyError") and "lock.mdb" in out and "flag 'r'" not in out, out

    def test_creating_in_a_directory_one_cannot_write_is_a_read_only_error(self, shared_dir: Path) -> None:
        user = _as_nobody()
        os.chmod(shared_dir, 0o755)
        out = run(OPEN_AND_REPORT, str(shared_dir / "store"), "c", user=user)
        assert out.startswith("ReadOnlyError"), out

    def test_umask_000_makes_no_lock_file_more_permissive_than_the_data(self, path: Path) -> None:
        with umask(0), objstore.open(path) as db:
            db["k"] = 1
        assert set(_modes(path).values()) == {0o666}
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o777

    def test_mode_sets_every_file_and_the_directory(self, path: Path) -> None:
        with umask(0o022), objstore.open(path, mode=0o640) as db:
            db["k"] = 1
        assert set(_modes(path).values()) == {0o640}
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o750

    def test_the_default_mode_follows_the_umask(self, path: Path) -> None:
        with umask(0o027), objstore.open(path) as db:
            db["k"] = 1
        assert set(_modes(path).values()) == {0o640}

    def test_a_store_shared_with_another_user(self, shared_dir: Path) -> None:
        user = _as_nobody()
        with umask(0), objstore.open(shared_dir / "store", mode=0o666) as db:
            db["k"] = 1
            assert run(OPEN_AND_REPORT, str(shared_dir / "store"), "w", user=user).strip() == "opened"
            assert db["k"] == "v"

    def test_mode_travels_with_a_pickled_shelf(self, path: Path) -> None:
        import pickle

        with objstore.open(path, mode=0o600) as db, pickle.loads(pickle.dumps(db)) as copy:
            assert copy._options.mode == 0o600

    @pytest.mark.parametrize("bad", [0o1000, -1, "0o666", 1.5, True])
    def test_bad_modes_are_refused(self, path: Path, bad: object) -> None:
        with pytest.raises(ValueError, match="mode"):
            objstore.open(path, mode=bad)
        assert not path.exists()


class TestErrors:
    def test_an_empty_path_is_refused(self) -> None:
        with pytest.raises(ValueError, match="must not be empty"):
            objstore.open("")

    @pytest.mark.parametrize("bad", ["5", b"5", [5], True])
    def test_a_timeout_of_the_wrong_type_is_a_clear_type_error(self, path: Path, bad: object) -> None:
        with pytest.raises(TypeError, match="timeout must be a number"):
            objstore.open(path, timeout=bad)
        assert not path.exists()

    @pytest.mark.parametrize("bad", [-1, float("nan")])
    def test_a_bad_timeout_value_is_a_value_error(self, path: Path, bad: float) -> None:
        with pytest.raises(ValueError, match="timeout"):
            objstore.open(path, timeout=bad)

    def test_flag_n_inside_ones_own_transaction_joins_it(self, path: Path) -> None:
        with objstore.open(path) as db:
            db["k"] = 1
            with pytest.raises(RuntimeError, match="undo"), db.transaction():
                with objstore.open(path, "n") as again:
                    assert len(again) == 0 and "k" not in db
                raise RuntimeError("undo")
            assert db["k"] == 1  # the rollback undid the emptying
            with db.transaction():
                objstore.open(path, "n").close()
            assert len(db) == 0


class TestReaders:
    def test_running_out_of_reader_slots_says_close_your_snapshots(self, path: Path) -> None:
        with objstore.open(path) as db:
            db["k"] = 1
            snapshots = []
            try:
                with pytest.raises(objstore.StoreError) as caught:
                    for _ in range(MAX_READERS + 1):
                        snapshots.append(db.snapshot())
            finally:
                for snap in snapshots:
                    snap.close()
            message = str(caught.value)
            assert "close your snapshots" in message and str(MAX_READERS) in message
            assert "max_readers" not in message
            assert db["k"] == 1

    def test_info_counts_live_and_stale_readers(self, path: Path) -> None:
        with objstore.open(path) as db:
            db["k"] = 1
            snapshots = [db.snapshot() for _ in range(5)]
            assert db.info()["readers_live"] >= 5
            for snap in snapshots:
                snap.close()
            info = db.info()
            assert info["readers_live"] == 0 and info["readers_stale"] == 0
            assert info["reader_slots_touched"] >= 5
            # A process killed while holding snapshots leaves stale slots.
            process = subprocess.Popen(
                [sys.executable, "-c", textwrap.dedent("""
                    import sys, objstore
                    db = objstore.open(sys.argv[1], "r")
                    snaps = [db.snapshot() for _ in range(3)]
                    print("ready", flush=True)
                    sys.stdin.readline()
                """), str(path)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT,
                env={**os.environ, "PYTHONPATH": ROOT},
            )  # fmt: skip
            try:
                assert process.stdout is not None and process.stdout.readline().strip() == "ready"
                assert db.info()["readers_live"] == 3
                process.kill()
            finally:
                process.wait(30)
                assert process.stdin is not None and process.stdout is not None
                process.stdin.close()
                process.stdout.close()
            info = db.info()
            assert info["readers_live"] == 0 and info["readers_stale"] == 3


def test_one_store_under_two_paths_in_one_process_is_refused(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    with read_only_view(tmp_path / "a") as view, objstore.open(tmp_path / "a" / "store") as db:
        db["k"] = 1
        with pytest.raises(objstore.StoreError, match="already has open"):
            objstore.open(view / "store", "r")
        db["k"] = 2  # its locks are intact
        assert run(OPEN_AND_REPORT, str(tmp_path / "a" / "store"), "w").strip() == "opened"
