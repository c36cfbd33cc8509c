"""Shared fixtures: real stores in temporary directories."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

import objstore


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--stress", action="store_true", help="run the long stress tests too")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--stress"):
        return
    skip = pytest.mark.skip(reason="stress test: run with --stress")
    for item in items:
        if "stress" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def path(tmp_path: Path) -> Path:
    """Where a store may be created: a directory that does not exist yet."""
    return tmp_path / "store"


@pytest.fixture
def shelf(path: Path) -> Iterator[objstore.Shelf]:
    """An open, empty, writable shelf, closed after the test."""
    db = objstore.open(path)
    yield db
    db.close()
