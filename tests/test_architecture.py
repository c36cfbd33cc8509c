"""docs/architecture.md against the code: the module order it states is the import order.

- every module of the package (and `_storage` as one) is listed once, and
  every module of `_storage/` in its own table;
- each top-level module imports only modules listed after it, counting
  imports made inside functions and under ``TYPE_CHECKING``; the package
  itself (``from . import x``) counts as `__init__`.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "objstore"
PAGE = ROOT / "docs" / "architecture.md"


def _tables() -> list[list[str]]:
    """The first column (module names) of each table after the module order marker."""
    text = PAGE.read_text(encoding="utf-8")
    text = text[text.index("<!-- module order") :]
    tables: list[list[str]] = []
    current: list[str] | None = None
    for line in text.splitlines():
        match = re.match(r"\| `([\w.]+)` \|", line)
        if match:
            if current is None:
                current = []
                tables.append(current)
            current.append(match.group(1))
        elif not line.startswith("|"):
            current = None
    return tables


def _imports(path: Path) -> set[str]:
    """The top-level objstore modules `path` imports, wherever the import statement is.

    Imports of a module of `_storage/` from its siblings are left out.
    """
    depth = len(path.relative_to(PACKAGE).parts)  # 1 for objstore/x.py, 2 inside _storage/
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.level == depth:
            if node.module:
                found.add(node.module.split(".")[0])
            else:  # `from . import x`: the module x, or a name of the package itself
                modules = {p.stem for p in PACKAGE.glob("*.py")} | {"_storage"}
                found.update(a.name if a.name in modules else "__init__" for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("objstore"):
            parts = node.module.split(".")
            if parts[:2] != ["objstore", "_storage"] or depth == 1:
                found.add(parts[1] if len(parts) > 1 else "__init__")
    return found


def test_every_module_is_listed_once() -> None:
    top, storage = _tables()[:2]
    modules = {path.stem for path in PACKAGE.glob("*.py")} | {"_storage"}
    assert sorted(top) == sorted(modules)
    assert sorted(storage) == sorted(path.stem for path in (PACKAGE / "_storage").glob("*.py"))


def test_each_module_imports_only_those_listed_after_it() -> None:
    order = _tables()[0]
    wrong = {}
    for position, module in enumerate(order):
        if module == "_storage":
            paths = list((PACKAGE / "_storage").glob("*.py"))
        else:
            paths = [PACKAGE / f"{module}.py"]
        allowed = set(order[position + 1 :])
        for path in paths:
            # _storage's modules import each other (tests/test_storage_layers.py checks their order).
            bad = _imports(path) - allowed - {module}
            if bad:
                wrong[str(path.relative_to(ROOT))] = sorted(bad)
    assert wrong == {}
