"""The canary of fork handling: what ``objstore._storage._fork`` relies on in the installed py-lmdb.

A forked child drops the LMDB objects it inherited without calling them, and
opens its own environment past py-lmdb's "already open in this process" guard
by replacing py-lmdb's file identity function for one open. Both rest on
py-lmdb internals, not on its documented API. Each test here checks one of
them against the installed py-lmdb, with real environments and real forks,
and fails with a message saying what changed and what to check:

- the py-lmdb version is one the bypass was verified on (`VERIFIED_LMDB`);
- the identity function exists where the bypass replaces it, with the
  signature it is called with, and py-lmdb looks it up on every open;
- the guard refuses with an error `_errors.is_already_open` recognises, and
  the bypass passes it in a fork child while the inherited environment is
  alive, without disturbing the parent;
- py-lmdb objects dropped in a child leave the parent's reader slot alone;
- the keep-alive can take a reference CPython never gives back;
- the read transaction py-lmdb caches (``MAX_SPARE_TXNS``) stays the
  parent's when a child keeps the inherited environment alive and exits
  normally (freed instead, it takes the parent's reader slot with it).
"""

from __future__ import annotations

import gc
import importlib
import inspect
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import lmdb
import pytest
from _harness import fork_call

from objstore._storage import _common, _errors, _fork

pytestmark = pytest.mark.timeout(60)

CHANGED = (
    "py-lmdb changed what objstore's fork handling (objstore/_storage/_fork.py) relies on: {what}. "
    "Run tests/test_fork.py, check the bypass and the keep-alive against the new py-lmdb, then update "
    "_fork.py (and VERIFIED_LMDB) to match."
)


def changed(what: str) -> str:
    return CHANGED.format(what=what)


def _version() -> tuple[int, ...]:
    return tuple(int(part) for part in lmdb.__version__.split(".")[:2] if part.isdigit())


def _open(path: Path) -> lmdb.Environment:
    return lmdb.open(str(path), max_dbs=4, max_spare_txns=0, map_size=1 << 20)


def test_py_lmdb_version_is_one_the_bypass_was_verified_on() -> None:
    low, high = _fork.VERIFIED_LMDB
    assert low <= _version() < high, changed(
        f"the installed py-lmdb is {lmdb.__version__}, outside the versions from {low} up to {high} "
        "(excluded) the fork bypass was verified on"
    )


def test_identity_function_is_where_the_bypass_replaces_it(tmp_path: Path) -> None:
    try:
        module = importlib.import_module(_fork.ENV_KEYS_MODULE)
    except ImportError:
        pytest.fail(changed(f"the module {_fork.ENV_KEYS_MODULE} is gone"))
    function = getattr(module, _fork.ENV_KEYS_FUNCTION, None)
    assert callable(function), changed(f"{_fork.ENV_KEYS_MODULE}.{_fork.ENV_KEYS_FUNCTION} is gone")
    parameters = list(inspect.signature(function).parameters)
    assert parameters == ["path", "subdir"], changed(
        f"{_fork.ENV_KEYS_FUNCTION} now takes {parameters}, not (path, subdir)"
    )
    env = _open(tmp_path)
    try:
        keys = function(str(tmp_path), True)
    finally:
        env.close()
    assert isinstance(keys, tuple) and keys, changed(f"{_fork.ENV_KEYS_FUNCTION} returned {keys!r}")


def test_every_open_looks_the_identity_function_up(tmp_path: Path) -> None:
    module: Any = importlib.import_module(_fork.ENV_KEYS_MODULE)
    original = getattr(module, _fork.ENV_KEYS_FUNCTION)
    calls: list[tuple[Any, ...]] = []

    def counting(*args: Any) -> Any:
        calls.append(args)
        return original(*args)

    setattr(module, _fork.ENV_KEYS_FUNCTION, counting)
    try:
        _open(tmp_path).close()
    finally:
        setattr(module, _fork.ENV_KEYS_FUNCTION, original)
    assert calls, changed(
        f"lmdb.open no longer calls {_fork.ENV_KEYS_MODULE}.{_fork.ENV_KEYS_FUNCTION}, so replacing it "
        "cannot pass the 'already open' guard"
    )


def test_bypass_passes_the_guard_in_a_child_and_leaves_the_parent_alone(tmp_path: Path) -> None:
    parent = _open(tmp_path)
    try:
        with parent.begin(write=True) as txn:
            txn.put(b"k", b"parent")
        snapshot = parent.begin()

        def child() -> dict[str, Any]:
            # `parent` and `snapshot` are inherited and alive here, never called.
            report: dict[str, Any] = {}
            try:
                lmdb.open(str(tmp_path), max_dbs=4, max_spare_txns=0, map_size=1 << 20)
                report["guard"] = "opened a second environment"
            except lmdb.Error as exc:
                report["guard"] = type(exc).__name__ + ": " + str(exc)
                report["recognised"] = _errors.is_already_open(exc)
            kwargs = {"max_dbs": 4, "max_spare_txns": 0, "map_size": 1 << 20}
            own = _fork.open_past_inherited(str(tmp_path), kwargs)
            with own.begin(write=True) as txn:
                txn.put(b"k", b"child")
            with own.begin() as txn:
                report["read"] = bytes(txn.get(b"k"))
            own.close()
            module: Any = importlib.import_module(_fork.ENV_KEYS_MODULE)
            report["restored"] = getattr(module, _fork.ENV_KEYS_FUNCTION).__module__ == module.__name__
            return report

        report = fork_call(child)
        assert report.get("recognised"), changed(
            f"a second open of open files gave {report['guard']!r}, which _errors.is_already_open does "
            "not recognise as py-lmdb's 'already open' guard"
        )
        assert report["read"] == b"child", changed("the environment opened past the guard does not work")
        assert report["restored"], changed("open_past_inherited left the identity function replaced")
        assert bytes(snapshot.get(b"k")) == b"parent", changed(
            "the child's open disturbed the parent's snapshot"
        )
        snapshot.abort()
        with parent.begin() as txn:
            assert bytes(txn.get(b"k")) == b"child"
    finally:
        parent.close()


def _slots_of(env: lmdb.Environment, pid: int) -> int:
    return sum(1 for line in env.readers().splitlines()[1:] if line.split()[:1] == [str(pid)])


def test_objects_dropped_in_a_child_leave_the_parents_reader_slot(tmp_path: Path) -> None:
    env = _open(tmp_path)
    try:
        with env.begin(write=True) as txn:
            txn.put(b"k", b"v")
        snapshot = env.begin()
        snapshot.get(b"k")
        assert _slots_of(env, os.getpid()) == 1

        def child() -> bool:
            nonlocal env, snapshot
            cursor = snapshot.cursor()
            del cursor, snapshot, env  # what ForkHandling.forget does: drop, never call
            gc.collect()
            return True

        assert fork_call(child)
        assert _slots_of(env, os.getpid()) == 1, changed(
            "freeing inherited objects in a fork child ended the parent's read transaction (its reader "
            "slot is gone): dropping them is no longer safe"
        )
        assert bytes(snapshot.get(b"k")) == b"v"
        snapshot.abort()
    finally:
        env.close()


@pytest.mark.skipif(sys.implementation.name != "cpython", reason="the keep-alive needs CPython")
def test_keep_forever_takes_a_reference_never_given_back() -> None:
    assert hasattr(__import__("ctypes").pythonapi, "Py_IncRef"), changed("ctypes.pythonapi.Py_IncRef is gone")
    kept = object()
    before = sys.getrefcount(kept)
    _fork.keep_forever(kept)
    # One reference from the list of kept objects, one taken with Py_IncRef.
    assert sys.getrefcount(kept) == before + 2


SPARE_IN_A_CHILD = """
    import os, sys, lmdb
    from objstore._storage._fork import keep_forever
    env = lmdb.open(sys.argv[1], max_spare_txns=1, map_size=1 << 20)
    with env.begin(write=True) as txn:
        txn.put(b"k", b"v")
    env.begin().get(b"k")  # ends by being reset and cached for the next read
    pid = os.fork()
    if pid == 0:
        keep_forever(env)  # what ForkHandling.forget does with the inherited environment
        del env
        sys.exit(0)  # a normal exit: the interpreter frees what it can
    os.waitpid(pid, 0)
    try:
        env.begin().get(b"k")
        print("reused")
    except lmdb.Error as exc:
        print(type(exc).__name__)
"""


def test_a_kept_environment_leaves_its_cached_read_transaction_to_the_parent(tmp_path: Path) -> None:
    assert _common.MAX_SPARE_TXNS == 1
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(SPARE_IN_A_CHILD), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=Path(__file__).resolve().parent.parent,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "reused", changed(
        f"after a forked child that kept the inherited environment alive exited, the parent's cached "
        f"read transaction gave {result.stdout.strip()!r}: the child freed it. Reusing read "
        "transactions is then not fork-safe: set MAX_SPARE_TXNS = 0 in objstore/_storage/_common.py"
    )
