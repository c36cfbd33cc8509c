"""The documentation runs: doctests of the getting-started page, and every example of the README and
docs/ as written, twice (blocks marked ``<!-- not run: reason -->`` are fragments)."""

from __future__ import annotations

import doctest
import os
import pickle
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def python_blocks(markdown: Path) -> list[str]:
    """The ```python fenced blocks of a Markdown file."""
    return re.findall(r"```python\n(.*?)```", markdown.read_text(encoding="utf-8"), flags=re.DOTALL)


def test_getting_started_doctests(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = doctest.testfile(
        str(ROOT / "docs" / "index.md"), module_relative=False, optionflags=doctest.ELLIPSIS
    )
    assert result.attempted > 15
    assert result.failed == 0


def test_readme_example_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    example = python_blocks(ROOT / "README.md")[0]  # "In a minute"
    exec(compile(example, "README.md", "exec"), {})
    import objstore

    with objstore.open(tmp_path / "state", "r") as db:
        assert db["config"] == {"retries": 3}
        assert db["seen"] == {"alice"}
        assert db["runs"] == 1
        assert (db["a"], db["b"]) == (-10, 10)


def test_reading_a_store_without_objstore(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    """The recipe of docs/format.md reads what objstore wrote with plain lmdb and pickle."""
    import objstore

    monkeypatch.chdir(tmp_path)
    with objstore.open(tmp_path / "path" / "to" / "store") as db:
        db["answer"] = {"value": 42}
    (recipe,) = python_blocks(ROOT / "docs" / "format.md")
    exec(compile(recipe, "format.md", "exec"), {})
    assert capsys.readouterr().out == "answer {'value': 42}\n"


# A block preceded by this comment (invisible to readers) is not run on its own; it must say why.
NOT_RUN = re.compile(r"<!-- not run[^>]*: (?P<reason>[^>]+?) -->\n$")
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def runnable_blocks() -> list[tuple[str, str]]:
    """(where, code) of every ```python block of the README and docs/ not marked as not run."""
    found = []
    for document in DOCUMENTS:
        text = document.read_text(encoding="utf-8")
        for n, match in enumerate(re.finditer(r"```python\n(.*?)```", text, flags=re.DOTALL), 1):
            if NOT_RUN.search(text[: match.start()][-300:]):
                continue
            found.append((f"{document.relative_to(ROOT)} block {n}", match.group(1)))
    return found


def run_example(code: str, directory: Path, start_method: str | None = None) -> None:
    """Run `code` as a script in `directory`, in a fresh interpreter, optionally with a start method."""
    script = directory / "example.py"
    script.write_text(code, encoding="utf-8")
    if start_method is None:
        command = [sys.executable, str(script)]
    else:
        # runpy makes the script __main__ with its file, as `python example.py` would, so that
        # spawn and forkserver workers can import its functions.
        command = [
            sys.executable,
            "-c",
            "import multiprocessing, runpy, sys;"
            f"multiprocessing.set_start_method({start_method!r});"
            "runpy.run_path(sys.argv[1], run_name='__main__')",
            str(script),
        ]
    done = subprocess.run(command, cwd=directory, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr


def test_not_run_blocks_say_why() -> None:
    for document in DOCUMENTS:
        for marker in re.findall(r"<!-- not run.*?-->", document.read_text(encoding="utf-8")):
            assert NOT_RUN.search(marker + "\n"), f"{document.name}: {marker} gives no reason"


@pytest.mark.parametrize(("where", "code"), runnable_blocks(), ids=[w for w, _ in runnable_blocks()])
def test_example_runs_twice(where: str, code: str, tmp_path: Path) -> None:
    """Every example runs as written, in a fresh directory, and again over what the first run left."""
    run_example(code, tmp_path)
    run_example(code, tmp_path)


@pytest.mark.parametrize("start_method", ["spawn", "forkserver"])
def test_process_pool_example_under(start_method: str, tmp_path: Path) -> None:
    (code,) = [code for _, code in runnable_blocks() if "ProcessPoolExecutor" in code]
    run_example(code, tmp_path, start_method)
    run_example(code, tmp_path, start_method)


class EvalPayload:
    """A stored value that calls eval when unpickled."""

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return eval, ("__import__('pathlib').Path('eval-ran').touch()",)


class SystemPayload:
    """A stored value that calls os.system when unpickled."""

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return os.system, ("touch system-ran",)


def test_safe_unpickler_refuses_code(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The SafeUnpickler of docs/api.md, as written, loads data and refuses values that run code."""
    import datetime

    import objstore

    monkeypatch.chdir(tmp_path)
    (example,) = [code for _, code in runnable_blocks() if "class SafeUnpickler" in code]
    namespace: dict[str, object] = {}
    exec(compile(example, "api.md", "exec"), namespace)
    data = {"a": [1, 2.5, (3, "x")], "s": {1, 2}, "f": frozenset({b"b"}), "when": datetime.date(2024, 1, 2)}
    with objstore.open("state") as db:
        db.update(data=data, eval=EvalPayload(), system=SystemPayload())
    with objstore.open("state", "r", unpickler=namespace["SafeUnpickler"]) as db:
        assert db["data"] == data
        for key in ("eval", "system"):
            with pytest.raises(pickle.UnpicklingError, match="is not allowed"):
                db[key]
    assert not (tmp_path / "eval-ran").exists() and not (tmp_path / "system-ran").exists()
