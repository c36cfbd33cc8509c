"""The command line: ``python -m objstore demo [path]``, ``info PATH`` and ``check PATH``.

Each command runs in a fresh interpreter, as a user would run it.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import objstore


def cli(
    *args: str, cwd: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m objstore ARGS`` and return what it did."""
    return subprocess.run(
        [sys.executable, "-m", "objstore", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
        env=env,
    )


class TestDemo:
    def test_state_carries_over(self, path: Path) -> None:
        first = cli("demo", str(path))
        assert first.returncode == 0, first.stderr
        assert str(path) in first.stdout
        assert "run 1" in first.stdout
        second = cli("demo", str(path))
        assert second.returncode == 0, second.stderr
        assert "run 2" in second.stdout
        assert "runs = 2" in second.stdout
        with objstore.open(path, "r") as db:
            assert db["runs"] == 2
            assert [entry["run"] for entry in db["history"]] == [1, 2]
            assert len(list(db.iterkeys("item:"))) == 1000
            assert db["item:0999"] == {"id": 999, "square": 999 * 999}
            assert db.verify() == []

    def test_without_a_path(self, tmp_path: Path) -> None:
        env = dict(os.environ, TMPDIR=str(tmp_path))
        done = cli("demo", env=env)
        assert done.returncode == 0, done.stderr
        created = [p for p in tmp_path.rglob("data.mdb")]
        assert len(created) == 1
        assert str(created[0].parent) in done.stdout
        with objstore.open(created[0].parent, "r") as db:
            assert db["runs"] == 1

    def test_says_what_it_wrote(self, path: Path) -> None:
        done = cli("demo", str(path))
        assert done.returncode == 0, done.stderr
        said = "a config and a history entry (a transaction each),\n  then 1000 items in one transaction"
        assert said in done.stdout

    def test_rerun_hint_runs(self, path: Path) -> None:
        """The printed command names this interpreter (one that has objstore) and works as printed."""
        first = cli("demo", str(path))
        assert first.returncode == 0, first.stderr
        hint = first.stdout.splitlines()[-1].strip()
        assert hint == f"{shlex.quote(sys.executable)} -m objstore demo {shlex.quote(str(path))}"
        again = subprocess.run(shlex.split(hint), capture_output=True, text=True, timeout=120)
        assert again.returncode == 0, again.stderr
        assert "run 2" in again.stdout

    def test_quiet_on_stderr(self, path: Path) -> None:
        done = cli("demo", str(path))
        assert done.returncode == 0
        assert done.stderr == ""


class TestInfo:
    def test_prints_json(self, path: Path) -> None:
        with objstore.open(path) as db:
            db.update({f"k{i}": i for i in range(7)})
        done = cli("info", str(path))
        assert done.returncode == 0, done.stderr
        info = json.loads(done.stdout)
        assert info["entries"] == 7
        assert info["path"] == os.path.realpath(path)
        assert info["settings"]["format"] == 1

    def test_does_not_modify_the_store(self, path: Path) -> None:
        with objstore.open(path) as db:
            db["k"] = 1
        before = (path / "data.mdb").read_bytes()
        assert cli("info", str(path)).returncode == 0
        assert (path / "data.mdb").read_bytes() == before

    def test_missing_store(self, path: Path) -> None:
        done = cli("info", str(path))
        assert done.returncode != 0
        assert not path.exists()


class TestCheck:
    def test_intact(self, path: Path) -> None:
        with objstore.open(path) as db:
            db.update({f"k{i}": i for i in range(50)})
        done = cli("check", str(path))
        assert done.returncode == 0, done.stderr
        assert "0 damaged" in done.stdout

    def test_damaged_record(self, path: Path, damage_record: Callable[[Path, object, int], int]) -> None:
        value = "the damaged value " * 10
        with objstore.open(path) as db:
            db.update({"before": 1, "damaged key": value, "after": 2})
        damage_record(path, value, 25)
        done = cli("check", str(path))
        assert done.returncode == 1, done.stderr
        assert "'damaged key'" in done.stdout
        assert "1 damaged" in done.stdout
        assert "'before'" not in done.stdout and "'after'" not in done.stdout

    def test_missing_store(self, path: Path) -> None:
        done = cli("check", str(path))
        assert done.returncode not in (0, 1), "a missing store must not look like a checked one"
        assert not path.exists()


class TestUsage:
    def test_no_command(self) -> None:
        done = cli()
        assert done.returncode == 2
        assert "demo" in done.stderr

    def test_help(self) -> None:
        done = cli("--help")
        assert done.returncode == 0
        for command in ("demo", "info", "check"):
            assert command in done.stdout
