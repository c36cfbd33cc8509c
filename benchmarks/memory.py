"""Peak memory: resident set size read from ``/proc`` (Linux), and the 1,000,000-record probe.

In-process, `PeakRss` resets the kernel's high-water mark (``/proc/self/clear_refs``)
and reports how far resident memory rose above where it started.

The probe (``python -m benchmarks.memory PATH SYSTEM WHAT``) runs one
measurement in a fresh process: it opens a store, notes its idle resident
memory, iterates keys, values or items (or calls ``len()``), verifies what it
read and prints JSON. The parent samples the child's anonymous and
file-backed resident memory while it runs: LMDB reads through a memory map,
so pages of the data file a scan touches count in RSS as file-backed pages
(page cache shared with every process, reclaimable), apart from the
anonymous memory (Python objects, buffers) a "flat" iteration must keep small.
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import time
from collections.abc import Iterable
from typing import Any

from .records import VerificationError, key_of, make_record

PROC_STATUS = "/proc/self/status"


def status(pid: int | str = "self") -> dict[str, int]:
    """The memory lines (in KiB) of ``/proc/PID/status``; empty where there is no ``/proc``."""
    out: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(("Vm", "Rss")):
                    name, _, value = line.partition(":")
                    out[name] = int(value.split()[0])
    except OSError:
        pass
    return out


def reset_peak() -> bool:
    """Reset this process's peak RSS (VmHWM) to its current RSS; False if the kernel does not allow it."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class PeakRss:
    """Context manager: ``kb`` is the peak RSS inside the block over the RSS at its start (None: unknown)."""

    def __init__(self) -> None:
        self.kb: int | None = None
        self._start = 0
        self._ok = False

    def __enter__(self) -> PeakRss:
        self._ok = reset_peak()
        self._start = status().get("VmRSS", 0)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._ok:
            self.kb = max(0, status().get("VmHWM", 0) - self._start)


# --------------------------------------------------------------------- probe

PROBES = ("idle", "len", "keys", "values", "items")
OBJSTORE_META = b"\x00\xffobjstore"  # objstore's metadata record (docs/format.md)


def _probe(path: str, system: str, what: str, n: int) -> dict[str, Any]:
    """Run in the child: open the store at `path`, do `what`, verify it; return the figures."""
    if system == "floor":
        from .adapters import Floor

        floor = Floor("floor", os.path.dirname(path))
        floor.open_path(path, create=False, readonly=True)
        # The store was made by objstore: leave its metadata record out, as objstore does.
        loads = pickle.loads

        def count() -> int:
            return floor.count() - 1

        def keys() -> Iterable[str]:
            return (key.decode() for key in floor.raw_keys() if key != OBJSTORE_META)

        def values() -> Iterable[Any]:
            return (loads(record) for key, record in floor.raw_items() if key != OBJSTORE_META)

        def items() -> Iterable[tuple[str, Any]]:
            return (
                (key.decode(), loads(record)) for key, record in floor.raw_items() if key != OBJSTORE_META
            )
    else:
        import objstore

        db = objstore.open(path, "r")
        count, keys, values, items = db.__len__, db.keys, db.values, db.items
    idle = status()
    reset_peak()
    start = time.perf_counter()
    seen = 0
    if what == "len":
        seen = count()
    elif what == "keys":
        for key in keys():
            if key != key_of(seen):
                raise VerificationError(f"{system}: key #{seen} is {key!r}")
            seen += 1
    elif what == "values":
        for value in values():
            if value != make_record(seen):
                raise VerificationError(f"{system}: value #{seen} is {value!r}")
            seen += 1
    elif what == "items":
        for key, value in items():
            if key != key_of(seen) or value != make_record(seen):
                raise VerificationError(f"{system}: item #{seen} is {key!r}: {value!r}")
            seen += 1
    seconds = time.perf_counter() - start
    end = status()
    if what != "idle" and seen != n:
        raise VerificationError(f"{system}: {what} saw {seen} records, {n} were written")
    return {
        "idle_rss_kb": idle.get("VmRSS", 0),
        "idle_anon_kb": idle.get("RssAnon", 0),
        "peak_over_idle_kb": max(0, end.get("VmHWM", 0) - idle.get("VmRSS", 0)),
        "file_end_kb": end.get("RssFile", 0),
        "seconds": seconds,
        "count": seen,
    }


def run_probe(repo: str, path: str, system: str, what: str, n: int) -> dict[str, Any]:
    """Run one probe in a fresh interpreter; add the child's sampled peak anonymous memory."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.memory", path, system, what, str(n)],
        cwd=repo,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    peak_anon = 0
    while proc.poll() is None:
        peak_anon = max(peak_anon, status(proc.pid).get("RssAnon", 0))
        time.sleep(0.002)
    out, err = proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"memory probe {system} {what} failed:\n{err}")
    result: dict[str, Any] = json.loads(out)
    result["anon_peak_over_idle_kb"] = max(0, peak_anon - result["idle_anon_kb"])
    return result


def main(argv: list[str]) -> int:
    path, system, what, n = argv[0], argv[1], argv[2], int(argv[3])
    if what not in PROBES:
        raise SystemExit(f"what must be one of {PROBES}")
    print(json.dumps(_probe(path, system, what, n)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
