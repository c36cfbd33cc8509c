"""CPython's mapping-protocol conformance suite run against real objstore shelves.

``test.mapping_tests.BasicTestMappingProtocol`` is run over ``objstore.open()``
for every pickle protocol, with and without ``writeback=True``; the classes are
generated with ``type()``, as CPython's ``Lib/test/test_shelve.py`` does for
``shelve``. Every mapping the suite asks for is a fresh store in its own
directory, closed when the test ends.

No test of the suite is overridden: it only uses ``str`` keys, which is all a
shelf accepts.
"""

from __future__ import annotations

import pickle
import shutil
import tempfile
from typing import Any

import pytest

import objstore

mapping_tests = pytest.importorskip("test.mapping_tests", reason="this Python has no test package")


class ShelfMappingBase:
    """What BasicTestMappingProtocol needs to build the mappings it tests."""

    _args: dict[str, Any] = {}
    type2test = objstore.Shelf

    def setUp(self) -> None:
        self._directory = tempfile.mkdtemp(prefix="objstore-mapping-")
        self._shelves: list[objstore.Shelf] = []
        self._counter = 0

    def tearDown(self) -> None:
        for shelf in self._shelves:
            shelf.close()
        shutil.rmtree(self._directory, ignore_errors=True)

    def _reference(self) -> dict[str, Any]:
        # Values of several kinds, all invariant under pickling.
        return {"key1": "value1", "key2": 2, "key3": (1, 2, 3), "ключ": {"nested": [1.5, None]}}

    def _empty_mapping(self) -> objstore.Shelf:
        self._counter += 1
        shelf = objstore.open(f"{self._directory}/store{self._counter}", "n", **self._args)
        self._shelves.append(shelf)
        return shelf


def _generate() -> dict[str, type]:
    classes: dict[str, type] = {}
    for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
        for writeback in (False, True):
            suffix = "Writeback" if writeback else ""
            name = f"TestProto{protocol}{suffix}Shelf"
            classes[name] = type(
                name,
                (ShelfMappingBase, mapping_tests.BasicTestMappingProtocol),
                {"_args": {"protocol": protocol, "writeback": writeback}, "__module__": __name__},
            )
    return classes


globals().update(_generate())


def test_matrix_is_complete() -> None:
    generated = {name for name in globals() if name.startswith("TestProto")}
    assert len(generated) == 2 * (pickle.HIGHEST_PROTOCOL + 1)
