"""The documentation runs: doctests of the getting-started page, and the README example."""

from __future__ import annotations

import doctest
import re
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
    (example,) = python_blocks(ROOT / "README.md")
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
