"""A hypothesis state machine comparing a Shelf with a plain ``dict`` model.

Random sequences of set/get/delete/pop/setdefault/update/clear/iteration, range
scans and first/last, close-and-reopen, transactions that commit, transactions
that abort (an exception inside the block) and snapshots taken before further
writes. After every step the shelf and the model must agree.

The default run stays short; ``--stress`` runs a much longer one.
"""

from __future__ import annotations

import shutil
import tempfile
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

import objstore

# Few distinct keys, so operations often hit existing ones; non-ASCII included.
KEYS = st.text(alphabet="abé€😀\x00", min_size=1, max_size=3)
VALUES = st.one_of(
    st.none(),
    st.integers(),
    st.text(max_size=5),
    st.lists(st.integers(), max_size=3),
    st.tuples(st.booleans(), st.floats(allow_nan=False)),
)
BOUNDS = st.none() | KEYS
OPS = st.lists(
    st.tuples(st.sampled_from(["set", "del", "pop", "setdefault"]), KEYS, VALUES),
    max_size=6,
)


class Abort(Exception):
    """Raised inside a transaction to roll it back."""


def in_range(key: str, prefix: str | None, start: str | None, stop: str | None) -> bool:
    return (
        (prefix is None or key.startswith(prefix))
        and (start is None or key >= start)
        and (stop is None or key < stop)
    )


class ShelfModel(RuleBasedStateMachine):
    """The shelf under test and the dict it must behave like."""

    def __init__(self) -> None:
        super().__init__()
        self.directory = tempfile.mkdtemp(prefix="objstore-model-")
        self.path = f"{self.directory}/store"
        self.db = objstore.open(self.path)
        self.model: dict[str, Any] = {}

    def teardown(self) -> None:
        self.db.close()
        shutil.rmtree(self.directory, ignore_errors=True)

    # -- single operations

    @rule(key=KEYS, value=VALUES)
    def set(self, key: str, value: Any) -> None:
        self.db[key] = value
        self.model[key] = value

    @rule(key=KEYS)
    def get(self, key: str) -> None:
        assert self.db.get(key, "absent") == self.model.get(key, "absent")
        if key in self.model:
            assert self.db[key] == self.model[key]
        else:
            with pytest.raises(KeyError):
                self.db[key]

    @rule(key=KEYS)
    def delete(self, key: str) -> None:
        if key in self.model:
            del self.db[key]
            del self.model[key]
        else:
            with pytest.raises(KeyError):
                del self.db[key]

    @rule(key=KEYS, default=VALUES)
    def pop(self, key: str, default: Any) -> None:
        assert self.db.pop(key, default) == self.model.pop(key, default)

    @rule(key=KEYS)
    def pop_without_default(self, key: str) -> None:
        if key in self.model:
            assert self.db.pop(key) == self.model.pop(key)
        else:
            with pytest.raises(KeyError):
                self.db.pop(key)

    @rule()
    def popitem(self) -> None:
        if self.model:
            key = min(self.model)
            assert self.db.popitem() == (key, self.model.pop(key))
        else:
            with pytest.raises(KeyError):
                self.db.popitem()

    @rule(key=KEYS, default=VALUES)
    def setdefault(self, key: str, default: Any) -> None:
        assert self.db.setdefault(key, default) == self.model.setdefault(key, default)

    @rule(items=st.dictionaries(KEYS, VALUES, max_size=5))
    def update(self, items: dict[str, Any]) -> None:
        self.db.update(items)
        self.model.update(items)

    @rule()
    def clear(self) -> None:
        self.db.clear()
        self.model.clear()

    # -- iteration and ranges

    @rule()
    def iterate(self) -> None:
        assert list(self.db) == sorted(self.model)
        assert list(self.db.items()) == sorted(self.model.items())
        assert list(self.db.values()) == [self.model[k] for k in sorted(self.model)]

    @rule(prefix=BOUNDS, start=BOUNDS, stop=BOUNDS, reverse=st.booleans())
    def scan(self, prefix: str | None, start: str | None, stop: str | None, reverse: bool) -> None:
        keys = sorted(k for k in self.model if in_range(k, prefix, start, stop))
        if reverse:
            keys.reverse()
        assert list(self.db.iterkeys(prefix, start=start, stop=stop, reverse=reverse)) == keys
        assert list(self.db.iteritems(prefix, start=start, stop=stop, reverse=reverse)) == [
            (k, self.model[k]) for k in keys
        ]

    @rule(prefix=BOUNDS)
    def first_and_last(self, prefix: str | None) -> None:
        keys = sorted(k for k in self.model if in_range(k, prefix, None, None))
        if keys:
            assert self.db.first(prefix) == (keys[0], self.model[keys[0]])
            assert self.db.last(prefix) == (keys[-1], self.model[keys[-1]])
        else:
            with pytest.raises(KeyError):
                self.db.first(prefix)
            with pytest.raises(KeyError):
                self.db.last(prefix)

    # -- life cycle

    @rule(flag=st.sampled_from(["c", "w"]))
    def close_and_reopen(self, flag: str) -> None:
        self.db.close()
        self.db = objstore.open(self.path, flag)

    @rule()
    def reopen_read_only_and_compare(self) -> None:
        self.db.close()
        with objstore.open(self.path, "r") as ro:
            assert dict(ro) == self.model
        self.db = objstore.open(self.path)

    # -- transactions and snapshots

    def apply(self, mapping: Any, model: dict[str, Any], ops: list[tuple[str, str, Any]]) -> None:
        for op, key, value in ops:
            if op == "set":
                mapping[key] = value
                model[key] = value
            elif op == "del":
                if key in model:
                    del mapping[key]
                    del model[key]
            elif op == "pop":
                assert mapping.pop(key, None) == model.pop(key, None)
            else:
                assert mapping.setdefault(key, value) == model.setdefault(key, value)
            assert dict(mapping) == model

    @rule(ops=OPS)
    def transaction_commits(self, ops: list[tuple[str, str, Any]]) -> None:
        with self.db.transaction() as txn:
            self.apply(txn, self.model, ops)

    @rule(ops=OPS)
    def transaction_aborts(self, ops: list[tuple[str, str, Any]]) -> None:
        scratch = dict(self.model)
        with pytest.raises(Abort):
            with self.db.transaction() as txn:
                self.apply(txn, scratch, ops)
                raise Abort

    @rule(ops=OPS, inner=OPS, inner_aborts=st.booleans())
    def nested_transaction(
        self, ops: list[tuple[str, str, Any]], inner: list[tuple[str, str, Any]], inner_aborts: bool
    ) -> None:
        with self.db.transaction() as txn:
            self.apply(txn, self.model, ops)
            scratch = dict(self.model)
            try:
                with txn.transaction() as savepoint:
                    self.apply(savepoint, scratch, inner)
                    if inner_aborts:
                        raise Abort
            except Abort:
                pass
            else:
                self.model = scratch

    @rule(ops=OPS)
    def plain_operations_inside_a_transaction(self, ops: list[tuple[str, str, Any]]) -> None:
        with self.db.transaction():
            self.apply(self.db, self.model, ops)

    @rule(ops=OPS)
    def snapshot_ignores_later_writes(self, ops: list[tuple[str, str, Any]]) -> None:
        before = dict(self.model)
        with self.db.snapshot() as snap:
            self.apply(self.db, self.model, ops)
            assert dict(snap) == before
            assert len(snap) == len(before)
            assert list(snap) == sorted(before)

    @rule(key=KEYS)
    def modify_counter(self, key: str) -> None:
        if isinstance(self.model.get(key, 0), int) and not isinstance(self.model.get(key), bool):
            expected = self.model.get(key, 0) + 1
            assert self.db.modify(key, lambda n: n + 1, default=0) == expected
            self.model[key] = expected

    # -- after every step

    @invariant()
    def same_length(self) -> None:
        assert len(self.db) == len(self.model)

    @precondition(lambda self: len(self.model) <= 3)
    @invariant()
    def same_contents_when_small(self) -> None:
        assert dict(self.db) == self.model


def run(max_examples: int, steps: int) -> None:
    run_state_machine_as_test(
        ShelfModel,
        settings=settings(
            max_examples=max_examples,
            stateful_step_count=steps,
            deadline=None,
            database=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )


def test_shelf_behaves_like_a_dict() -> None:
    run(max_examples=150, steps=50)


@pytest.mark.stress
@pytest.mark.timeout(1800)
def test_shelf_behaves_like_a_dict_stress() -> None:
    run(max_examples=2000, steps=100)
