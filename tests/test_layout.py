"""The shelf side's imports: what each module may know (see the module docstrings).

Covers: the shelf-side modules (`_shelf`, `_reader`, `_writer`, `_writeback`,
`_keys`) never import the record format's names (only `_records` and the
codecs built on it know them), never import ``lmdb`` or a module inside
`_storage/` (only the package's exports, i.e. the `Storage` protocol and its
declared limits), and import one another without a circle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "objstore"
SHELF_SIDE = ["_shelf", "_reader", "_writer", "_writeback", "_keys"]
RECORD_FORMAT = {"CRC_RESIDUE", "KIND_PICKLE", "KIND_SECTIONS", "SECTION_KEY", "TRAILER_SIZE", "crc32"}


def _imports(module: str) -> list[tuple[str, set[str]]]:
    """(module imported from, names) of every import in `module`, type-only ones included."""
    tree = ast.parse((PACKAGE / f"{module}.py").read_text())
    found: list[tuple[str, set[str]]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            found.append(("." * node.level + (node.module or ""), {alias.name for alias in node.names}))
        elif isinstance(node, ast.Import):
            found.extend((alias.name, set()) for alias in node.names)
    return found


@pytest.mark.parametrize("module", SHELF_SIDE)
def test_no_record_format_names(module: str) -> None:
    for source, names in _imports(module):
        if source in ("._serialize", "._records", "._signed"):
            assert not names & RECORD_FORMAT, f"{module} imports {names & RECORD_FORMAT}"


@pytest.mark.parametrize("module", SHELF_SIDE)
def test_only_the_storage_package_exports(module: str) -> None:
    for source, _ in _imports(module):
        assert source.split(".")[0] != "lmdb", f"{module} imports lmdb"
        assert not source.startswith("._storage."), f"{module} imports {source}"


def test_no_import_circle() -> None:
    graph = {
        module: {source[1:] for source, _ in _imports(module) if source[1:] in SHELF_SIDE}
        for module in SHELF_SIDE
    }

    def reaches(start: str, goal: str, seen: set[str]) -> bool:
        for nxt in graph[start] - seen:
            if nxt == goal or reaches(nxt, goal, seen | {nxt}):
                return True
        return False

    assert [module for module in SHELF_SIDE if reaches(module, module, set())] == []
