"""The shape of ``objstore._storage``, read from its source.

- its modules import each other in one direction only: no circle, counting
  imports made inside functions and under ``TYPE_CHECKING`` too;
- each imports only modules listed after it in the package docstring, so
  that list is the import order;
- only ``_storage/_errors.py`` (the seam for backend errors) names an
  exception class of ``lmdb``; the others catch what it exports.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import objstore._storage

PACKAGE = Path(__file__).resolve().parent.parent / "objstore" / "_storage"
SEAM = "_errors"


def _modules() -> dict[str, ast.Module]:
    return {path.stem: ast.parse(path.read_text(encoding="utf-8")) for path in sorted(PACKAGE.glob("*.py"))}


def _imports(tree: ast.Module, names: set[str]) -> set[str]:
    """The sibling modules `tree` imports, wherever the import statement is."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            if node.module is None:
                found.update(alias.name for alias in node.names if alias.name in names)
            else:
                found.add(node.module.split(".")[0])
        elif (
            isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("objstore._storage.")
        ):
            found.add(node.module.split(".")[2])
    return found & names


def test_modules_import_each_other_in_one_direction() -> None:
    modules = _modules()
    names = set(modules) - {"__init__"}
    graph = {name: _imports(modules[name], names) for name in names}
    seen: dict[str, str] = {}  # module -> "visiting" / "done"

    def visit(name: str, trail: list[str]) -> None:
        if seen.get(name) == "done":
            return
        if seen.get(name) == "visiting":
            circle = trail[trail.index(name) :] + [name]
            raise AssertionError(f"import circle in objstore/_storage: {' -> '.join(circle)}")
        seen[name] = "visiting"
        for other in sorted(graph[name]):
            visit(other, [*trail, name])
        seen[name] = "done"

    for name in sorted(graph):
        visit(name, [])
    assert graph["_common"] == set(), "_common is the bottom of the package and imports none of it"


def test_modules_import_only_those_listed_after_them() -> None:
    modules = _modules()
    order = re.findall(r"^- ``(_\w+)``:", objstore._storage.__doc__ or "", re.MULTILINE)
    assert sorted(order) == sorted(set(modules) - {"__init__"}), "the docstring lists every module once"
    for i, name in enumerate(order):
        above = set(order[: i + 1])
        wrong = _imports(modules[name], set(order)) & above
        assert not wrong, f"_storage/{name}.py imports {sorted(wrong)}, listed before it (or itself)"


def test_only_the_seam_names_lmdb_exceptions() -> None:
    offenders = []
    for name, tree in _modules().items():
        if name == SEAM:
            continue
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id == "lmdb"
                and node.attr.endswith("Error")
            ):
                offenders.append(f"{name}.py:{node.lineno}: lmdb.{node.attr}")
    assert not offenders, f"lmdb exception classes named outside _storage/{SEAM}.py: {offenders}"
