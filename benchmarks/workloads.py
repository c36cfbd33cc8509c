"""The workloads: what each one does to a system and how it is timed and verified.

Each workload's `measure` runs once per system per repeat and returns one
`Sample` per row it reports (e.g. "large-write" and "large-read"). The runner
interleaves systems within each repeat; the report takes medians.

Timing excludes verification: reads are timed in chunks of `CHUNK` calls and
each chunk is checked against what was written before the next one starts, so
the harness holds no more than a chunk of results (peak memory reflects the
system, not the harness). Writes are verified by reading everything back after
the timed part.
"""

from __future__ import annotations

import dataclasses
import gc
import itertools
import multiprocessing
import os
import random
import resource
import shutil
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from .adapters import Adapter, Objstore, System
from .memory import PeakRss
from .records import (
    ARRAY_BYTES,
    ARRAY_ITEMS,
    VerificationError,
    check_array,
    check_items,
    check_values,
    check_versioned,
    dataset,
    key_of,
    make_array,
    make_record,
    shuffled,
)

CHUNK = 1000
perf_counter = time.perf_counter
perf_counter_ns = time.perf_counter_ns


@dataclass(frozen=True)
class Config:
    """Sizes of one run; `QUICK` and `FULL` are the two documented modes."""

    mode: str
    records: int  # N: records of read-side stores and bulk writes
    single_sync: int  # single writes per measurement for systems that fsync each commit
    single_nosync: int  # ... and for those that do not
    large_count: int  # 1 MiB arrays written and read per measurement
    reader_procs: tuple[int, ...]
    reader_ops: int  # reads per reader process
    open_cycles: int
    mixed_keys: int
    mixed_ops: int  # operations per mixed-workload process
    mixed_procs: tuple[int, ...]
    repeats: int
    memory_records: int  # 0: skip the 1,000,000-record memory probe
    modes_records: int  # records read, and single writes, per measurement of the "modes" workload
    seed: int = 20240601


QUICK = Config(
    mode="quick",
    records=20_000,
    single_sync=200,
    single_nosync=5_000,
    large_count=8,
    reader_procs=(1, 2),
    reader_ops=20_000,
    open_cycles=50,
    mixed_keys=2_000,
    mixed_ops=5_000,
    mixed_procs=(1, 2),
    repeats=3,
    memory_records=0,
    modes_records=5_000,
)

FULL = Config(
    mode="full",
    records=100_000,
    single_sync=1_000,
    single_nosync=20_000,
    large_count=32,
    reader_procs=(1, 2, 4),
    reader_ops=100_000,
    open_cycles=200,
    mixed_keys=10_000,
    mixed_ops=20_000,
    mixed_procs=(1, 4),
    repeats=5,
    memory_records=1_000_000,
    modes_records=20_000,
)


@dataclass
class Sample:
    """One timed measurement: `ops` operations (or `nbytes` bytes) in `seconds`."""

    seconds: float
    ops: int
    nbytes: int = 0
    peak_kb: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


@dataclass
class Context:
    """What workloads share within a run: the config, the temp root, prebuilt stores."""

    config: Config
    tmp: str
    systems: dict[str, System]
    stores: dict[str, tuple[str, int]] = field(default_factory=dict)  # system -> (root, records)
    cache: dict[Any, Any] = field(default_factory=dict)

    def data(self, n: int) -> dict[str, Any]:
        """Records 0..n-1 by key (built once per n)."""
        key = ("data", n)
        if key not in self.cache:
            self.cache[key] = dataset(n)
        return self.cache[key]  # type: ignore[no-any-return]

    def fresh(self, *parts: str) -> str:
        """A new empty directory under the temp root."""
        path = os.path.join(self.tmp, *parts)
        shutil.rmtree(path, ignore_errors=True)
        os.makedirs(path)
        return path

    def adapter(self, name: str, root: str) -> Adapter:
        return self.systems[name].make(root)


def scaled(n: int, factor: float, least: int = 10) -> int:
    return max(least, int(n * factor))


def timed_reads(
    get: Callable[[str], Any], keys: list[str], check: Callable[[list[str], list[Any]], None]
) -> float:
    """Call `get` on every key, timing only the calls; `check` each chunk's results."""
    total = 0.0
    for start in range(0, len(keys), CHUNK):
        part = keys[start : start + CHUNK]
        t0 = perf_counter()
        values = list(map(get, part))
        total += perf_counter() - t0
        check(part, values)
    return total


def timed_writes(put: Callable[[str, Any], None], pairs: list[tuple[str, Any]]) -> float:
    """Call `put` on every pair, timing only the calls."""
    total = 0.0
    for start in range(0, len(pairs), CHUNK):
        part = pairs[start : start + CHUNK]
        t0 = perf_counter()
        for key, value in part:
            put(key, value)
        total += perf_counter() - t0
    return total


@contextmanager
def measured() -> Iterator[PeakRss]:
    """Around a measurement: a settled heap, and the peak RSS inside the block.

    The harness's own objects (the records to write and compare) are frozen out
    of the garbage collector, so the collections a system's allocations trigger
    while it is timed cost what they would in a small application, whatever the
    size of the harness's heap.
    """
    gc.collect()
    gc.freeze()
    try:
        with PeakRss() as peak:
            yield peak
    finally:
        gc.unfreeze()


def disk_usage(root: str) -> tuple[int, int]:
    """(apparent bytes, allocated bytes) of every file under `root`."""
    apparent = allocated = 0
    for folder, _, files in os.walk(root):
        for name in files:
            st = os.stat(os.path.join(folder, name))
            apparent += st.st_size
            allocated += st.st_blocks * 512
    return apparent, allocated


# ------------------------------------------------------------------ workloads


class Workload:
    """A workload: its rows, the systems it runs, how to prepare and measure it."""

    name = ""
    title = ""
    rows: tuple[str, ...] = ()
    unit = "ops/s"  # how the report shows a row: ops/s, MB/s, µs/op or bytes/record
    systems: tuple[str, ...] = ()
    #: Per row: "subtitle" (added to the title), "floor_row" (divide by the floor's figure in that
    #: row instead), "floor_system" (divide by this system instead of each system's floor).
    row_info: ClassVar[dict[str, dict[str, str]]] = {}

    def prepare(self, ctx: Context, systems: list[str]) -> None:
        """Build what the measurements need (untimed)."""

    def measure(self, ctx: Context, system: str, rep: int) -> dict[str, Sample]:
        raise NotImplementedError

    def finish(self, ctx: Context) -> None:
        """Remove what `prepare` built, unless other workloads use it."""


READ_SYSTEMS = (
    "floor",
    "objstore",
    "shelve-gnu",
    "shelve-ndbm",
    "shelve-dumb",
    "shelve-sqlite3",
    "sqlitedict",
    "diskcache-cache",
    "diskcache-index",
)
SHELVES = ("shelve-gnu", "shelve-ndbm", "shelve-dumb", "shelve-sqlite3")


class SingleWrites(Workload):
    name = "single"
    title = "Single-key writes, one transaction each"
    rows = ("single",)
    systems = (
        "floor",
        "floor-normal",
        "floor-off",
        "objstore",
        "objstore-normal",
        "objstore-off",
        *SHELVES,
        "sqlitedict",
        "sqlitedict-autocommit",
        "diskcache-cache",
        "diskcache-index",
    )

    def measure(self, ctx: Context, system: str, rep: int) -> dict[str, Sample]:
        root = ctx.fresh("single", system)
        adapter = ctx.adapter(system, root)
        cfg = ctx.config
        n = scaled(cfg.single_sync if adapter.fsync else cfg.single_nosync, adapter.op_scale)
        data = ctx.data(n)
        pairs = [(key, data[key]) for key in shuffled(data, cfg.seed + rep)]
        adapter.open(create=True)
        with measured() as peak:
            seconds = timed_writes(adapter.set, pairs)
        adapter.reopen()
        check_items(list(adapter.items()), data, system)
        adapter.close()
        shutil.rmtree(root)
        return {"single": Sample(seconds, n, peak_kb=peak.kb)}


class BulkWrites(Workload):
    name = "bulk"
    title = "Bulk writes: N records in one transaction"
    rows = ("bulk",)
    systems = (
        "floor",
        "floor-off",
        "objstore",
        "objstore-off",
        *SHELVES,
        "sqlitedict",
        "diskcache-cache",
        "diskcache-index",
    )

    def measure(self, ctx: Context, system: str, rep: int) -> dict[str, Sample]:
        root = ctx.fresh("bulk", system)
        adapter = ctx.adapter(system, root)
        n = scaled(ctx.config.records, adapter.op_scale)
        data = ctx.data(n)
        items = {key: data[key] for key in shuffled(data, ctx.config.seed + rep)}
        adapter.open(create=True)
        with measured() as peak:
            t0 = perf_counter()
            adapter.set_many(items)
            seconds = perf_counter() - t0
        adapter.reopen()
        check_items(list(adapter.items()), data, system)
        adapter.close()
        shutil.rmtree(root)
        return {"bulk": Sample(seconds, n, peak_kb=peak.kb)}


def build_read_stores(ctx: Context, systems: list[str]) -> None:
    """Load N records (N/10 for dbm.dumb) into one store per system; note bytes on disk."""
    for system in systems:
        if system in ctx.stores:
            continue
        root = ctx.fresh("read", system)
        adapter = ctx.adapter(system, root)
        n = scaled(ctx.config.records, adapter.store_scale)
        data = ctx.data(n)
        adapter.open(create=True)
        for start in range(0, n, 100_000):
            adapter.set_many(dict(itertools.islice(data.items(), start, start + 100_000)))
        adapter.close()
        ctx.stores[system] = (root, n)
        apparent, allocated = disk_usage(root)
        ctx.cache[("disk", system)] = Sample(
            0.0, n, extra={"apparent": apparent, "allocated": allocated, "records": n}
        )


class RandomReads(Workload):
    name = "read"
    title = "Random reads after reopening"
    rows = ("read",)
    systems = READ_SYSTEMS

    def prepare(self, ctx: Context, systems: list[str]) -> None:
        build_read_stores(ctx, systems)

    def measure(self, ctx: Context, system: str, rep: int) -> dict[str, Sample]:
        root, n = ctx.stores[system]
        adapter = ctx.adapter(system, root)
        data = ctx.data(n)
        keys = shuffled(data, ctx.config.seed + rep)[: scaled(ctx.config.records, adapter.op_scale)]
        adapter.open()
        with measured() as peak:
            seconds = timed_reads(adapter.get, keys, lambda k, v: check_values(k, v, data, system))
        adapter.close()
        return {"read": Sample(seconds, len(keys), peak_kb=peak.kb)}


class Iteration(Workload):
    name = "iterate"
    title = "Full iteration of items"
    rows = ("iterate",)
    systems = READ_SYSTEMS

    def prepare(self, ctx: Context, systems: list[str]) -> None:
        build_read_stores(ctx, systems)

    def measure(self, ctx: Context, system: str, rep: int) -> dict[str, Sample]:
        root, n = ctx.stores[system]
        adapter = ctx.adapter(system, root)
        data = ctx.data(n)
        adapter.open()
        seen: set[str] = set()
        total = 0.0
        with measured() as peak:
            iterator = adapter.items()
            while True:
                t0 = perf_counter()
                chunk = list(itertools.islice(iterator, CHUNK))
                total += perf_counter() - t0
                if not chunk:
                    break
                for key, value in chunk:
                    if key in seen or data.get(key) != value:
                        raise VerificationError(f"{system}: iteration yielded {key!r}: {value!r}")
                    seen.add(key)
        adapter.close()
        if len(seen) != n:
            raise VerificationError(f"{system}: iteration yielded {len(seen)} items, {n} were written")
        return {"iterate": Sample(total, n, peak_kb=peak.kb)}


class DiskBytes(Workload):
    name = "disk"
    title = "Bytes on disk after loading N records"
    rows = ("disk",)
    unit = "bytes/record"
    systems = READ_SYSTEMS

    def prepare(self, ctx: Context, systems: list[str]) -> None:
        build_read_stores(ctx, systems)

    def measure(self, ctx: Context, system: str, rep: int) -> dict[str, Sample]:
        sample: Sample = ctx.cache[("disk", system)]
        return {"disk": sample} if rep == 0 else {}


HUGE_ITEMS = 64 * ARRAY_ITEMS  # the 64 MiB array of the zero-copy row
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters


def pin_allocator() -> bool:
    """Make glibc's malloc reuse freed memory for every buffer below 32 MiB; False if not glibc.

    By default glibc decides from the process's history whether a 1 MiB
    buffer is new memory from the kernel (256 page faults, ~0.5-1 ms) or
    reused heap: the same read measured 0.2 ms or 0.9 ms depending on what
    ran before. Pinned (no mmap below 32 MiB, no trimming) and with 16 MiB of
    heap touched once, no system's 1 MiB buffers fault. Buffers of 32 MiB and
    more are always new memory (glibc's ceiling), for every system alike.
    """
    import ctypes

    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    pinned = bool(mallopt(M_MMAP_THRESHOLD, 32 << 20) and mallopt(M_TRIM_THRESHOLD, 1 << 30))
    warm = bytearray(b"\x01") * (16 << 20)
    del warm
    return pinned


class LargeValues(Workload):
    """1 MiB float64 arrays, each written in its own transaction, then read back after reopening.

    Each measurement runs in a forked child whose allocator is pinned
    (`pin_allocator`): every system starts from the same heap and none pays
    page faults for its buffers, so the rows compare copies and checks.
    Rows: "large-read" reads each array once after reopening (LMDB's map is
    new, the page cache warm; objstore's first large read of a handle copies
    twice, then it reads in place); "large-reread" reads them all again with
    the same handle; "large-read-zc" reads them in `snapshot(zero_copy=True)`
    (divided by the floor's "large-read"); "large-64mib" reads one 64 MiB
    array in a zero-copy snapshot, against the "memcpy" row's
    ``ndarray.copy()`` of it. Arrays are checked with `check_array`, which
    accepts read-only views. The "memcpy" row is one copy of each array.
    """

    name = "large"
    title = "Large values: 1 MiB NumPy float64 arrays"
    rows = ("large-write", "large-read", "large-reread", "large-read-zc", "large-64mib")
    row_info: ClassVar[dict[str, dict[str, str]]] = {
        "large-write": {"subtitle": "write"},
        "large-read": {"subtitle": "read once after reopening"},
        "large-reread": {"subtitle": "read again, same handle"},
        "large-read-zc": {"subtitle": "read in snapshot(zero_copy=True)", "floor_row": "large-read"},
        "large-64mib": {"subtitle": "one 64 MiB array, zero-copy snapshot vs copy", "floor_system": "memcpy"},
    }
    unit = "MB/s"
    systems = (
        "memcpy",
        "floor",
        "floor-off",
        "objstore",
        "objstore-off",
        *SHELVES,
        "sqlitedict",
        "diskcache-cache",
        "diskcache-index",
    )

    def arrays(self, ctx: Context) -> dict[str, np.ndarray]:
        if "arrays" not in ctx.cache:
            ctx.cache["arrays"] = {f"array:{i:04d}": make_array(i) for i in range(ctx.config.large_count)}
            ctx.cache["huge"] = np.random.default_rng(64).random(HUGE_ITEMS)
        return ctx.cache["arrays"]  # type: ignore[no-any-return]

    def measure(self, ctx: Context, system: str, rep: int) -> dict[str, Sample]:
        self.arrays(ctx)  # built here, shared with the child
        (result,) = _fork_run(1, self._child, (self, ctx, system, rep))
        if "error" in result:
            raise RuntimeError(f"{system}: {result['error']}\n{result['trace']}")
        return {row: Sample(**sample) for row, sample in result["rows"].items()}

    @staticmethod
    def _child(barrier: Any, index: int, arg: Any) -> dict[str, Any]:
        workload, ctx, system, rep = arg
        pinned = pin_allocator()
        rows = workload.measure_here(ctx, system, rep)
        for sample in rows.values():
            sample.extra["allocator_pinned"] = pinned
        return {"rows": {row: dataclasses.asdict(sample) for row, sample in rows.items()}}

    def measure_here(self, ctx: Context, system: str, rep: int) -> dict[str, Sample]:
        """The measurement itself, in this process."""
        arrays = self.arrays(ctx)
        huge: np.ndarray = ctx.cache["huge"]
        keys = shuffled(arrays, ctx.config.seed + rep)
        if system == "memcpy":
            sample = _timed_copies([arrays[key] for key in keys], system).sample(ARRAY_BYTES)
            copies = _timed_copies([huge] * HUGE_READS, system).sample(huge.nbytes)
            return {
                "large-write": sample,
                "large-read": sample,
                "large-reread": sample,
                "large-64mib": copies,
            }
        root = ctx.fresh("large", system)
        adapter = ctx.adapter(system, root)
        adapter.open(create=True)
        with measured() as peak_write:
            write = timed_writes(adapter.set, [(key, arrays[key]) for key in keys])
        adapter.reopen()
        with measured() as peak_read:
            read = _timed_array_reads(adapter.get, keys, arrays, system)
        out = {
            "large-write": Sample(write, len(keys), len(keys) * ARRAY_BYTES, peak_kb=peak_write.kb),
            "large-read": read.sample(ARRAY_BYTES, peak_read.kb),
            "large-reread": _timed_array_reads(adapter.get, keys, arrays, system).sample(ARRAY_BYTES),
        }
        db = adapter.db if isinstance(adapter, Objstore) else None
        if db is not None:
            with db.snapshot(zero_copy=True) as snap:
                out["large-read-zc"] = _timed_array_reads(snap.__getitem__, keys, arrays, system).sample(
                    ARRAY_BYTES
                )
            if system == "objstore":
                db["huge"] = huge
                with db.snapshot(zero_copy=True) as snap:
                    big = _timed_array_reads(snap.__getitem__, ["huge"] * HUGE_READS, {"huge": huge}, system)
                out["large-64mib"] = big.sample(huge.nbytes)
        adapter.close()
        shutil.rmtree(root)
        return out


HUGE_READS = 5  # reads (or copies) of the 64 MiB array per measurement


def _minor_faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def _timed_copies(sources: list[np.ndarray], system: str) -> Timed:
    """Time ``ndarray.copy()`` of each array (new memory, as a user's copy gets); check each copy."""
    timed = Timed()
    for source in sources:
        f0, t0 = _minor_faults(), perf_counter()
        copy = source.copy()
        timed.add(perf_counter() - t0, _minor_faults() - f0)
        check_array("copy", copy, source, system)
        del copy
    return timed


def _timed_array_reads(
    get: Callable[[str], Any], keys: list[str], arrays: dict[str, np.ndarray], system: str
) -> Timed:
    """Time ``get(key)`` for each key, one at a time; check each array and drop it before the next."""
    timed = Timed()
    for key in keys:
        f0, t0 = _minor_faults(), perf_counter()
        value = get(key)
        timed.add(perf_counter() - t0, _minor_faults() - f0)
        check_array(key, value, arrays[key], system)
        del value
    return timed


@dataclass
class Timed:
    """Seconds and minor page faults summed over the timed calls of a large-value measurement."""

    seconds: float = 0.0
    faults: int = 0
    count: int = 0

    def add(self, seconds: float, faults: int) -> None:
        self.seconds += seconds
        self.faults += faults
        self.count += 1

    def sample(self, nbytes: int, peak_kb: int | None = None) -> Sample:
        extra = {"faults_per_op": self.faults / self.count}
        return Sample(self.seconds, self.count, self.count * nbytes, peak_kb=peak_kb, extra=extra)


class OpenReadClose(Workload):
    name = "open"
    title = "Open, read one key, close (N-record store)"
    rows = ("open",)
    unit = "µs/op"
    systems = READ_SYSTEMS

    def prepare(self, ctx: Context, systems: list[str]) -> None:
        build_read_stores(ctx, systems)

    def measure(self, ctx: Context, system: str, rep: int) -> dict[str, Sample]:
        root, n = ctx.stores[system]
        adapter = ctx.adapter(system, root)
        data = ctx.data(n)
        rng = random.Random(ctx.config.seed + rep)
        cycles = scaled(ctx.config.open_cycles, adapter.op_scale)
        keys = [key_of(rng.randrange(n)) for _ in range(cycles)]
        values = []
        with measured() as peak:
            t0 = perf_counter()
            for key in keys:
                adapter.open()
                values.append(adapter.get(key))
                adapter.close()
            seconds = perf_counter() - t0
        check_values(keys, values, data, system)
        return {"open": Sample(seconds, cycles, peak_kb=peak.kb)}


MODES_PASSES = 5  # passes of random reads per "modes" measurement; the fastest counts


class Modes(Workload):
    """The serializer modes of issue 9 on small values, side by side: single writes, then random reads.

    Every system runs without fsync (durability "off"; the floor: "floor-off"),
    so a write's cost is objstore's own work, not the disk's. Each value is a
    record with one more field, "link": the key itself as a ``str``, or, for
    "objstore-ref", a `Ref` to it (stored as the key's name too). Small values
    stay below `compress_above`, so "objstore-zlib" only decides not to
    compress. Reads follow a reopen, as in the "read" workload, in
    `MODES_PASSES` passes over every key; the fastest pass counts (the one
    least disturbed by other work on the machine: the differences between
    modes are a few µs, less than the noise of a shared machine).
    """

    name = "modes"
    title = "Serializer modes on small values (no fsync)"
    rows = ("modes-write", "modes-read")
    systems = (
        "floor-off",
        "objstore-off",
        "objstore-allow",
        "objstore-signed",
        "objstore-zlib",
        "objstore-ref",
    )

    def measure(self, ctx: Context, system: str, rep: int) -> dict[str, Sample]:
        root = ctx.fresh("modes", system)
        adapter = ctx.adapter(system, root)
        n = ctx.config.modes_records
        adapter.open(create=True)
        db = adapter.db if isinstance(adapter, Objstore) else None
        link = db.ref if db is not None and system == "objstore-ref" else None
        expected = {key: {**value, "link": link(key) if link else key} for key, value in ctx.data(n).items()}
        pairs = [(key, expected[key]) for key in shuffled(expected, ctx.config.seed + rep)]
        with measured() as peak_write:
            write = timed_writes(adapter.set, pairs)
        adapter.reopen()
        keys = shuffled(expected, ctx.config.seed + rep + 1)
        with measured() as peak_read:
            read = min(
                timed_reads(adapter.get, keys, lambda k, v: check_values(k, v, expected, system))
                for _ in range(MODES_PASSES)
            )
        adapter.close()
        shutil.rmtree(root)
        return {
            "modes-write": Sample(write, n, peak_kb=peak_write.kb),
            "modes-read": Sample(read, n, peak_kb=peak_read.kb),
        }


# ----------------------------------------------------------- multi-process


def _fork_run(
    nprocs: int, target: Callable[[Any, int, Any], dict[str, Any]], arg: Any
) -> list[dict[str, Any]]:
    """Run ``target(barrier, index, arg)`` in `nprocs` forked processes; return their results.

    A `VerificationError` in a child is raised again here; any other error
    comes back as a result with an "error" entry.
    """
    mp = multiprocessing.get_context("fork")
    barrier = mp.Barrier(nprocs)
    queue = mp.Queue()

    def child(index: int) -> None:
        try:
            result = target(barrier, index, arg)
        except VerificationError as exc:
            result = {"verification": str(exc)}
        except BaseException as exc:  # reported, not raised: e.g. "database is locked"
            result = {"error": f"{type(exc).__name__}: {exc}", "trace": traceback.format_exc()}
            barrier.abort()
        queue.put(result)

    procs = [mp.Process(target=child, args=(i,)) for i in range(nprocs)]
    # Children share the parent's heap copy-on-write; a garbage collection in a
    # child would write to every object's header and copy the whole heap while
    # it is timed. Frozen objects are never collected.
    gc.collect()
    gc.freeze()
    try:
        for proc in procs:
            proc.start()
    finally:
        gc.unfreeze()
    results = [queue.get(timeout=600) for _ in procs]
    for proc in procs:
        proc.join()
    for result in results:
        if "verification" in result:
            raise VerificationError(result["verification"])
    return results


def _wall(results: list[dict[str, Any]]) -> float:
    return float(max(r["end"] for r in results) - min(r["start"] for r in results))


class ConcurrentReaders(Workload):
    """Random reads in P processes at once, each opening its own handle after fork.

    The "cpu" row runs the same number of pure-Python operations (building a
    record) instead of reads: how far this machine scales at that moment,
    whatever else it is running.
    """

    name = "readers"
    title = "Concurrent readers: random reads in P processes, each with its own handle"
    systems = (
        "cpu",
        "floor",
        "objstore",
        "shelve-gnu",
        "shelve-ndbm",
        "shelve-dumb",
        "sqlitedict",
        "diskcache-cache",
    )

    def __init__(self, procs: tuple[int, ...]) -> None:
        self.procs = procs
        self.rows = tuple(f"readers-{p}" for p in procs)

    def prepare(self, ctx: Context, systems: list[str]) -> None:
        build_read_stores(ctx, systems)

    def measure(self, ctx: Context, system: str, rep: int) -> dict[str, Sample]:
        out = {}
        for nprocs in self.procs:
            target = self._spinner if system == "cpu" else self._reader
            results = _fork_run(nprocs, target, (ctx, system, rep))
            errors = [r["error"] for r in results if "error" in r]
            if errors:
                out[f"readers-{nprocs}"] = Sample(0.0, 0, error=errors[0])
                continue
            ops = sum(r["ops"] for r in results)
            out[f"readers-{nprocs}"] = Sample(_wall(results), ops)
        return out

    @staticmethod
    def _spinner(barrier: Any, index: int, arg: Any) -> dict[str, Any]:
        ctx = arg[0]
        count = ctx.config.reader_ops
        barrier.wait()
        start = perf_counter()
        for i in range(count):
            make_record(i)
        return {"start": start, "end": perf_counter(), "ops": count}

    @staticmethod
    def _reader(barrier: Any, index: int, arg: Any) -> dict[str, Any]:
        ctx, system, rep = arg
        root, n = ctx.stores[system]
        adapter = ctx.adapter(system, root)
        data = ctx.data(n)
        count = scaled(ctx.config.reader_ops, adapter.op_scale)
        keys = shuffled(data, ctx.config.seed + 1000 * rep + index)[:count]
        adapter.open(readonly=adapter.readonly_open)
        get = adapter.get
        barrier.wait()
        start = perf_counter()
        values = list(map(get, keys))
        end = perf_counter()
        adapter.close()
        check_values(keys, values, data, system)
        return {"start": start, "end": end, "ops": len(keys)}


def percentiles(latencies_ns: list[int]) -> dict[str, float]:
    """p50, p99 and max of latencies, in µs."""
    if not latencies_ns:
        return {}
    ordered = sorted(latencies_ns)
    n = len(ordered)
    return {
        "p50": ordered[n // 2] / 1000,
        "p99": ordered[min(n - 1, (n * 99) // 100)] / 1000,
        "max": ordered[-1] / 1000,
        "count": n,
    }


class Mixed(Workload):
    """90% reads, 9% writes, 1% deletes of random keys, in P processes at once.

    Every read is checked to be a record some writer wrote for that key; a
    read of a deleted key is a miss.
    """

    name = "mixed"
    title = "Mixed 90% get / 9% set / 1% delete, P processes"
    systems = (
        "floor",
        "floor-off",
        "objstore",
        "objstore-off",
        *SHELVES,
        "sqlitedict-autocommit",
        "diskcache-cache",
    )

    def __init__(self, procs: tuple[int, ...]) -> None:
        self.procs = procs
        self.rows = tuple(f"mixed-{p}" for p in procs)

    def prepare(self, ctx: Context, systems: list[str]) -> None:
        n = ctx.config.mixed_keys
        data = ctx.data(n)
        for system in systems:
            root = ctx.fresh("mixed", system)
            adapter = ctx.adapter(system, root)
            adapter.open(create=True)
            adapter.set_many(data)
            adapter.close()
            ctx.stores["mixed:" + system] = (root, n)

    def measure(self, ctx: Context, system: str, rep: int) -> dict[str, Sample]:
        out = {}
        multi_writer = ctx.systems[system].describe().multi_writer
        for nprocs in self.procs:
            if nprocs > 1 and not multi_writer:
                continue
            results = _fork_run(nprocs, self._mixer, (ctx, system, rep))
            errors = [r["error"] for r in results if "error" in r]
            if errors:
                out[f"mixed-{nprocs}"] = Sample(0.0, 0, error=errors[0])
                continue
            extra: dict[str, Any] = {"misses": sum(r["misses"] for r in results)}
            for op in ("get", "set", "delete"):
                extra[op] = percentiles([ns for r in results for ns in r[op]])
            out[f"mixed-{nprocs}"] = Sample(_wall(results), sum(r["ops"] for r in results), extra=extra)
        return out

    @staticmethod
    def _mixer(barrier: Any, index: int, arg: Any) -> dict[str, Any]:
        ctx, system, rep = arg
        root, n = ctx.stores["mixed:" + system]
        adapter = ctx.adapter(system, root)
        count = scaled(ctx.config.mixed_ops, adapter.op_scale)
        rng = random.Random(ctx.config.seed + 7919 * rep + index)
        plan = []
        for _ in range(count):
            roll = rng.random()
            i = rng.randrange(n)
            op = 0 if roll < 0.90 else (1 if roll < 0.99 else 2)
            plan.append((op, key_of(i), make_record(i, rng.randrange(1, 1 << 30)) if op == 1 else None))
        adapter.open()
        get, put, delete = adapter.get, adapter.set, adapter.delete
        lat: tuple[list[int], list[int], list[int]] = ([], [], [])
        reads: list[tuple[str, Any]] = []
        misses = 0
        barrier.wait()
        start = perf_counter()
        for op, key, value in plan:
            t0 = perf_counter_ns()
            if op == 0:
                try:
                    got = get(key)
                except KeyError:
                    got = None
            elif op == 1:
                put(key, value)
            else:
                try:
                    delete(key)
                except KeyError:
                    pass
            lat[op].append(perf_counter_ns() - t0)
            if op == 0:
                reads.append((key, got))
        end = perf_counter()
        adapter.close()
        for key, got in reads:
            if got is None:
                misses += 1
            else:
                check_versioned(key, got, system)
        return {
            "start": start,
            "end": end,
            "ops": count,
            "get": lat[0],
            "set": lat[1],
            "delete": lat[2],
            "misses": misses,
        }


def make_workloads(cfg: Config) -> list[Workload]:
    """Every workload of a run, in the order they run and are reported."""
    return [
        SingleWrites(),
        BulkWrites(),
        RandomReads(),
        Iteration(),
        LargeValues(),
        Modes(),
        ConcurrentReaders(cfg.reader_procs),
        OpenReadClose(),
        Mixed(cfg.mixed_procs),
        DiskBytes(),
    ]
