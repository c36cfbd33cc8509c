"""Run the workloads over the systems, interleaved, and collect every sample."""

from __future__ import annotations

import dataclasses
import random
import sys
import time
from typing import Any

from .adapters import System
from .workloads import Config, Context, Workload, make_workloads

PSEUDO_SYSTEMS = {"memcpy", "cpu"}  # reference rows that are not stores


def selected_workloads(cfg: Config, only: list[str] | None) -> list[Workload]:
    """The workloads of `cfg`, restricted to the names in `only` (if given)."""
    workloads = make_workloads(cfg)
    if only:
        names = {w.name for w in workloads}
        unknown = set(only) - names
        if unknown:
            raise SystemExit(f"unknown workload(s) {sorted(unknown)}; choose from {sorted(names)}")
        workloads = [w for w in workloads if w.name in only]
    return workloads


def run_suite(
    cfg: Config,
    systems: dict[str, System],
    workloads: list[Workload],
    tmp: str,
    log: Any = sys.stderr,
) -> dict[str, Any]:
    """Run every workload; within each repeat, systems run in a fresh random order.

    Returns ``{"rows": {row: {system: [sample dicts]}}, "workloads": {...}}``.
    """
    ctx = Context(cfg, tmp, systems)
    rows: dict[str, dict[str, list[dict[str, Any]]]] = {}
    meta: dict[str, dict[str, Any]] = {}
    for workload in workloads:
        names = [s for s in workload.systems if s in systems or s in PSEUDO_SYSTEMS]
        started = time.perf_counter()
        print(f"[{workload.name}] {workload.title}: {', '.join(names)}", file=log, flush=True)
        workload.prepare(ctx, [s for s in names if s not in PSEUDO_SYSTEMS])
        for row in workload.rows:
            info = workload.row_info.get(row, {})
            title = f"{workload.title}: {info['subtitle']}" if "subtitle" in info else workload.title
            meta[row] = {"workload": workload.name, "title": title, "unit": workload.unit, **info}
            rows.setdefault(row, {})
        for rep in range(cfg.repeats):
            order = list(names)
            random.Random(cfg.seed + rep).shuffle(order)
            for system in order:
                for row, sample in workload.measure(ctx, system, rep).items():
                    rows[row].setdefault(system, []).append(dataclasses.asdict(sample))
        workload.finish(ctx)
        print(f"[{workload.name}] done in {time.perf_counter() - started:.1f} s", file=log, flush=True)
    return {"rows": rows, "workloads": meta}
