"""The Markdown page for ``docs/benchmarks.md``, rebuilt from a run's results.

Everything above `HAND_WRITTEN_MARK` is generated; whatever an existing page
has below it (analysis, profiles, history) is kept.
"""

from __future__ import annotations

import os
from typing import Any

from .report import HAND_WRITTEN_MARK, machine_markdown, results_markdown, summarize, targets, targets_table

WHAT = {
    "floor": "raw `lmdb` + `pickle` (protocol 5), objstore's LMDB settings",
    "objstore": "`objstore.open(path, durability=...{options})`",
    "shelve": "stdlib `shelve.Shelf` over `{backend}` (shelve's default protocol)",
    "sqlitedict": "`SqliteDict(path{args})`",
    "diskcache": "`diskcache.{kind}(directory)`, default settings",
}


def _systems_table(results: dict[str, Any]) -> str:
    lines = ["| System | What | Durability of a returned write | Divided by |", "|---|---|---|---|"]
    for name, info in results["systems"].items():
        if name == "memcpy":
            what, durability = "`ndarray.copy()` of each array: the memory-copy speed (reference)", "–"
        elif name == "cpu":
            what = "pure-Python work (building one record) instead of reads: how far the machine scales"
            durability = "–"
        else:
            what = WHAT.get(info["family"], "").format(
                options=info.get("options") or "",
                backend=info.get("backend", ""),
                args=", autocommit=True" if "autocommit" in name else "",
                kind="Index" if name.endswith("index") else "Cache",
            )
            durability = info["durability"]
        lines.append(f"| {name} | {what} | {durability} | {info['floor'] or '–'} |")
    return "\n".join(lines)


def _sizes(results: dict[str, Any]) -> str:
    c = results["config"]
    scaled = [
        f"{name} runs {info['op_scale']:.0%} of the operations"
        + (f" on a store of {info['store_scale']:.0%} of N" if info.get("store_scale", 1) < 1 else "")
        for name, info in results["systems"].items()
        if info.get("op_scale", 1) < 1
    ]
    return "\n".join(
        [
            f"- N = {c['records']:,} records (keys `user:000000`…, values a dict of 7 fields, about 127 "
            "bytes pickled) for bulk writes and the read-side stores (random reads, iteration, readers, "
            "open-read-close, bytes on disk).",
            f"- Single writes: {c['single_sync']:,} per measurement for systems that fsync each commit, "
            f"{c['single_nosync']:,} for the others.",
            f"- Large values: {c['large_count']} arrays of 1 MiB (131,072 float64), each written in its own "
            "transaction, then read once after reopening, again with the same handle and (objstore) in "
            "`snapshot(zero_copy=True)`; one 64 MiB array read 5 times in a zero-copy snapshot against "
            "`ndarray.copy()` of it. Each system's measurement runs in a forked child with glibc's allocator "
            "pinned (no `mmap` below 32 MiB, no trimming, 16 MiB of heap touched first), so that no system's "
            "1 MiB buffers pay page faults for new memory by accident of the heap's history.",
            f"- Serializer modes: {c.get('modes_records', 0):,} single writes (no fsync) of records with one "
            "more field, then as many random reads after reopening (5 passes, the fastest counts), for plain "
            "objstore, `allow=()`, "
            '`secret=`, `compression="zlib"` and values whose extra field is a `Ref`.',
            f"- Concurrent readers: {', '.join(map(str, c['reader_procs']))} processes, "
            f"{c['reader_ops']:,} random reads each (at most the store's N); throughput is all reads over "
            "the wall time from the common start (a barrier) to the last reader's end.",
            f"- Open-read-close: {c['open_cycles']} cycles on the N-record store.",
            f"- Mixed: {c['mixed_ops']:,} operations per process on a {c['mixed_keys']:,}-key store, "
            f"{', '.join(map(str, c['mixed_procs']))} processes; every operation timed on its own. The "
            "shelve backends run it in one process only: `dbm` files are not safe with concurrent writers.",
            f"- {c['repeats']} repeats of every measurement; "
            + ("; ".join(scaled) + " (rates are per operation, so they compare)." if scaled else ""),
        ]
    )


def render(results: dict[str, Any], existing: str | None, chart_name: str = "benchmarks.png") -> str:
    """The whole page for `results`, keeping the hand-written part of `existing`."""
    summary = summarize(results)
    c = results["config"]
    tail = ""
    if existing and HAND_WRITTEN_MARK in existing:
        tail = existing.split(HAND_WRITTEN_MARK, 1)[1].lstrip("\n")
    return f"""# Benchmarks

objstore measured against the physical floor (raw `lmdb` + `pickle` doing the same work) and against
the other shelve-like stores for Python. The figures below are from the latest {c["mode"]} run on the
machine described below; every run prints the same tables and saves them as JSON.

## Running the suite

    pip install -e '.[bench]'
    python -m benchmarks --quick      # every workload at small sizes: under a minute
    python -m benchmarks --full       # the figures on this page: under ten minutes on 2 cores
    python -m benchmarks --full --page docs/benchmarks.md --chart docs/benchmarks.png

`--only WORKLOAD` (repeatable: {", ".join(results.get("workload_names", []))}) runs some
workloads, `--systems a,b` some systems, `--out DIR` chooses where results go (JSON, Markdown,
PNG), `--from-json FILE` redraws tables, chart and page from a saved run, `--profile WORKLOAD`
profiles objstore (or `--profile-system`) on one workload, `--dbm-dir DIR` lets stdlib `dbm` find
`_gdbm`/`_dbm` modules built for this Python when the interpreter lacks them.

## Machine

{machine_markdown(results["machine"])}

## Method

- **The floor** is the straightforward raw code a user would write with `lmdb` and `pickle`, with
  objstore's own LMDB settings (keys in the main database, `max_dbs=4`, `max_readers=1024`,
  same map size and sync flags, but `max_spare_txns=0`, where objstore reuses a read transaction):
  a read is `pickle.loads(env.begin().get(key.encode()))`, whose read transaction is freed as soon
  as the call returns; a single write is `begin(write=True)`, `put`, `commit`; a bulk write is one
  transaction of `put`s; iteration is one cursor in one read transaction. It is what objstore would
  cost if its own work (key checks, record framing and CRC, transactions that never stay open across
  user code, map growth, locks) were free. Each figure is divided by the floor **with the same
  durability class, measured in the same run**: systems that fsync each commit by `floor`, the
  others by `floor-off` (no fsync); `objstore-normal` by `floor-normal`. "× floor time" is time per
  operation over the floor's: 1.00 is the floor, 1.20 is 20% slower, 0.50 twice as fast.
- **Systems and their durability** (each with its own defaults; objstore also in its fast modes, so
  that like is compared with like):

{_systems_table(results)}

- **Interleaving and medians.** The machine is small and noisy. Within each repeat every system runs
  once, in a fresh random order; each figure is the median over the repeats, and "Spread" is
  (slowest − fastest) / median of the repeats. Reads and writes are timed in chunks of 1,000 calls,
  with nothing else inside the timed part.
- **Warm cache.** Stores live in the temp directory named above and are read with the OS page
  cache warm (each repeat reopens its handle, but the files stay cached): the figures measure the
  CPU cost of each system and its fsyncs, not the speed of a cold disk.
- **Verification.** Every run checks that what it reads is what was written: every value of every
  read, every item of every iteration, every array (dtype, shape, content), every record seen by the
  mixed workload (it must be one some writer wrote for that key), and, after each write workload,
  the whole store read back. A mismatch stops the run with an error.
- **Peak memory** of a single-process measurement is the peak resident set size during it over the
  RSS at its start (the kernel's high-water mark, reset before each measurement); for LMDB-based
  systems it includes the pages of the memory-mapped data file that the measurement touched. It is
  not reported for the multi-process workloads. The memory probe
  runs each operation on a 1,000,000-record store in a fresh process and reports the peak over that
  process's idle RSS after opening the store, split into anonymous memory (Python objects, buffers:
  what must stay flat) and the pages of the memory-mapped data file a scan touches (file-backed page
  cache, shared and reclaimable; the floor touches the same pages).
Sizes of this run:

{_sizes(results)}

## Results

![Speed of each system relative to the floor, per workload]({chart_name})

{results_markdown(results)}

## Targets

The targets of issues 4 and 9, measured by this run:

{targets_table(targets(results, summary))}

{HAND_WRITTEN_MARK}

{tail}"""


def write(results: dict[str, Any], path: str, chart_name: str = "benchmarks.png") -> None:
    """Write the page to `path`, keeping the hand-written tail of the page already there."""
    existing = None
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            existing = f.read()
    text = render(results, existing, chart_name).rstrip() + "\n"
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
