"""Command line: ``python -m objstore demo | info PATH | check PATH [--unsafe-globals [--allow NAME ...]]``.

Exit status: 0 on success; 1 when ``check`` found damaged records, or records
naming globals outside the safe set (with ``--unsafe-globals``); 2 when the
store cannot be opened or used (the error is printed, without a traceback).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import tempfile
import time
from collections.abc import Iterator

from . import Allowlist, Error
from . import open as open_store


def demo(path: str | None) -> int:
    """Persist some application state, reopen the store and show what survived."""
    directory = path or os.path.join(tempfile.mkdtemp(prefix="objstore-demo-"), "state")
    print(f"objstore demo: store at {directory}")
    with open_store(directory) as db:
        runs = db.modify("runs", lambda n: n + 1, default=0)
        db["config"] = {"retries": 3, "endpoints": ["alpha", "beta"]}
        with db.edit("history", default=[]) as history:
            history.append({"run": runs, "at": time.strftime("%Y-%m-%d %H:%M:%S")})
        with db.transaction() as txn:
            for i in range(1000):
                txn[f"item:{i:04d}"] = {"id": i, "square": i * i}
        print(f"  wrote run {runs}, a config and a history entry (a transaction each),")
        print("  then 1000 items in one transaction")
    with open_store(directory, "r") as db:
        print(f"  reopened read-only: {len(db)} keys")
        print(f"  runs = {db['runs']}, config = {db['config']}")
        print(f"  history = {db['history']}")
        first, last = db.first("item:"), db.last("item:")
        print(f"  first item {first}, last item {last}")
        print(f"  items 0998 and later: {list(db.iterkeys('item:', start='item:0998'))}")
    print("  run the demo again with the same path to see the state carried over:")
    # This interpreter, which has objstore: a bare `python` on PATH may not.
    print(f"    {shlex.quote(sys.executable)} -m objstore demo {shlex.quote(directory)}")
    return 0


def info(path: str) -> int:
    """Print what the store records about itself."""
    with open_store(path, "r") as db:
        print(json.dumps(db.info(), indent=2, sort_keys=True))
    return 0


def check(path: str, unsafe_globals: bool = False, allow: list[str] | None = None) -> int:
    """Verify every entry (value records and keys); exit 1 if any is damaged."""
    unsafe = 0
    with open_store(path, "r") as db:
        damaged = db.verify()
        if unsafe_globals:
            unsafe = _check_globals(db.iterglobals(), Allowlist(allow or ()))
    for key in damaged:
        try:
            key.encode()
        except UnicodeEncodeError:  # a key that cannot be read: verify() names it by its bytes
            print(f"damaged key (stored as {key.encode('utf-8', 'surrogateescape')!r})")
        else:
            print(f"damaged: {key!r}")
    print(f"{len(damaged)} damaged record(s)")
    return 1 if damaged or unsafe else 0


def _check_globals(found: Iterator[tuple[str, list[tuple[str, str]]]], allowlist: Allowlist) -> int:
    """Print the globals each record would import, marking those not allowed; return how many have one."""
    unsafe = 0
    for key, names in found:
        if not names:
            continue
        marked = [f"{m}.{n}" + ("" if allowlist.allows(m, n) else " (NOT ALLOWED)") for m, n in names]
        unsafe += any(not allowlist.allows(m, n) for m, n in names)
        print(f"globals of {key!r}: {', '.join(marked)}")
    print(f"{unsafe} record(s) name globals outside the safe set and --allow")
    return unsafe


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m objstore", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    demo_parser = commands.add_parser("demo", help=demo.__doc__)
    demo_parser.add_argument("path", nargs="?", help="store directory (default: a new temporary one)")
    commands.add_parser("info", help=info.__doc__).add_argument("path")
    check_parser = commands.add_parser("check", help=check.__doc__)
    check_parser.add_argument("path")
    check_parser.add_argument(
        "--unsafe-globals",
        action="store_true",
        help="also list the globals each record would import, read without unpickling; "
        "exit 1 if any is outside the safe set (see docs/security.md)",
    )
    check_parser.add_argument(
        "--allow",
        nargs="+",
        metavar="NAME",
        help="with --unsafe-globals: dotted names (pkg.mod.Name, or pkg.mod for a whole module) "
        "to allow besides the safe set",
    )
    args = parser.parse_args(argv)
    if args.command == "check" and args.allow and not args.unsafe_globals:
        parser.error("--allow is used with --unsafe-globals")
    try:
        if args.command == "demo":
            return demo(args.path)
        if args.command == "info":
            return info(args.path)
        return check(args.path, args.unsafe_globals, args.allow)
    except (Error, OSError) as exc:
        print(f"objstore: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
