"""``python -m benchmarks``: run the suite, print and save the results, draw the chart, write the page."""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import os
import shutil
import sys
import tempfile
import time
from datetime import datetime, timezone
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
DEFAULT_OUT = os.path.join(HERE, "results")
WORKLOAD_NAMES = (
    "single",
    "bulk",
    "read",
    "iterate",
    "large",
    "modes",
    "readers",
    "open",
    "mixed",
    "disk",
    "memory",
)


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Benchmark objstore against the floor (raw lmdb + pickle) and its peers.",
    )
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="small sizes, under a minute (the default)")
    mode.add_argument("--full", action="store_true", help="the published sizes, under ten minutes on 2 cores")
    p.add_argument(
        "--only",
        action="append",
        metavar="WORKLOAD",
        choices=WORKLOAD_NAMES,
        help=f"run only this workload (repeatable): {', '.join(WORKLOAD_NAMES)}",
    )
    p.add_argument("--systems", metavar="A,B", help="run only these systems (floors are always added)")
    p.add_argument("--repeats", type=int, help="repeats per measurement (default: 3 quick, 5 full)")
    p.add_argument(
        "--out",
        default=DEFAULT_OUT,
        metavar="DIR",
        help="directory for results.json, results.md and chart.png (default: benchmarks/results)",
    )
    p.add_argument("--tmpdir", metavar="DIR", help="where the stores are made (default: the system temp dir)")
    p.add_argument(
        "--dbm-dir",
        metavar="DIR",
        help="a directory with _gdbm/_dbm extension modules for this Python version, for the shelve "
        "backends this interpreter lacks (e.g. the system Python's lib-dynload)",
    )
    p.add_argument("--page", metavar="FILE", help="also write the Markdown page (e.g. docs/benchmarks.md)")
    p.add_argument("--chart", metavar="FILE", help="also save the chart here (e.g. docs/benchmarks.png)")
    p.add_argument(
        "--from-json", metavar="FILE", help="redraw tables, chart and page from a saved results.json"
    )
    p.add_argument(
        "--profile",
        metavar="WORKLOAD",
        choices=WORKLOAD_NAMES[:-2],
        help="profile one system on one workload instead of benchmarking",
    )
    p.add_argument(
        "--profile-system", default="objstore", metavar="SYSTEM", help="system to profile (objstore)"
    )
    p.add_argument(
        "--profiler",
        choices=("pyinstrument", "cprofile"),
        help="default: pyinstrument if it is installed, else cProfile",
    )
    return p.parse_args(argv)


def describe_systems(systems: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """What the report needs to know about each system, without opening anything."""
    from .adapters import Objstore

    out: dict[str, dict[str, Any]] = {}
    for name, system in systems.items():
        a = system.describe()
        out[name] = {
            "family": a.family,
            "durability": a.durability,
            "fsync": a.fsync,
            "floor": a.floor,
            "peer": a.family not in ("floor", "objstore"),
            "op_scale": a.op_scale,
            "store_scale": a.store_scale,
            "backend": getattr(a, "backend", None),
            "options": a.describe_options() if isinstance(a, Objstore) else None,
        }
    out["memcpy"] = {
        "family": "reference",
        "durability": "–",
        "fsync": False,
        "floor": "floor",
        "peer": False,
        "op_scale": 1.0,
        "store_scale": 1.0,
    }
    out["cpu"] = {
        "family": "reference",
        "durability": "–",
        "fsync": False,
        "floor": None,
        "peer": False,
        "op_scale": 1.0,
        "store_scale": 1.0,
    }
    return out


def choose_systems(spec: str | None) -> dict[str, Any]:
    from .adapters import all_systems

    systems = all_systems()
    if not spec:
        return systems
    wanted = {s.strip() for s in spec.split(",") if s.strip()}
    unknown = wanted - set(systems)
    if unknown:
        raise SystemExit(f"unknown or unavailable system(s) {sorted(unknown)}; available: {sorted(systems)}")
    wanted |= {"floor", "floor-off"} | ({"floor-normal"} if "objstore-normal" in wanted else set())
    return {name: s for name, s in systems.items() if name in wanted}


def run_memory(cfg: Any, tmp: str, log: Any) -> dict[str, Any]:
    """The 1,000,000-record memory probe: one fresh process per (system, operation)."""
    import objstore

    from .memory import PROBES, run_probe
    from .records import key_of, make_record

    n = cfg.memory_records
    path = os.path.join(tmp, "memory", "store")
    started = time.perf_counter()
    print(f"[memory] loading {n:,} records into objstore", file=log, flush=True)
    with objstore.open(path, "n", durability="off") as db:
        step = 100_000
        for start in range(0, n, step):
            db.update({key_of(i): make_record(i) for i in range(start, min(n, start + step))})
    probes: dict[str, dict[str, Any]] = {}
    for system in ("floor", "objstore"):
        probes[system] = {}
        for what in PROBES:
            probes[system][what] = run_probe(REPO, path, system, what, n)
    shutil.rmtree(os.path.dirname(path), ignore_errors=True)
    print(f"[memory] done in {time.perf_counter() - started:.1f} s", file=log, flush=True)
    return {"records": n, "probes": probes}


def save(results: dict[str, Any], out: str, page: str | None, chart_copy: str | None) -> None:
    """Write results.json, results.md, chart.png (and the page and chart copy if asked)."""
    from . import chart, report
    from . import page as page_module

    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "results.json"), "w", encoding="utf-8") as f:
        json.dump(results, f, indent=1)
    text = report.console_summary(results)
    with open(os.path.join(out, "results.md"), "w", encoding="utf-8") as f:
        f.write(text)
    chart_path = os.path.join(out, "chart.png")
    chart.render(results, chart_path)
    if chart_copy:
        shutil.copyfile(chart_path, chart_copy)
    if page:
        chart_name = os.path.basename(chart_copy) if chart_copy else "benchmarks.png"
        page_module.write(results, page, chart_name)
    print(text)
    print(
        f"Saved {out}/results.json, results.md, chart.png" + (f"; page {page}" if page else ""),
        file=sys.stderr,
    )


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.dbm_dir:
        from .adapters import add_dbm_dir

        add_dbm_dir(args.dbm_dir)
    if args.from_json:
        with open(args.from_json, encoding="utf-8") as f:
            save(json.load(f), args.out, args.page, args.chart)
        return 0

    from .machine import load_average, machine_info
    from .runner import run_suite, selected_workloads
    from .workloads import FULL, QUICK

    cfg = FULL if args.full else QUICK
    if args.repeats:
        cfg = dataclasses.replace(cfg, repeats=args.repeats)
    systems = choose_systems(args.systems)
    tmp = tempfile.mkdtemp(prefix="objstore-bench-", dir=args.tmpdir)
    try:
        if args.profile:
            from .profiling import profile

            (workload,) = selected_workloads(cfg, [args.profile])
            if args.profile_system not in systems:
                raise SystemExit(f"unknown system {args.profile_system!r}")
            os.makedirs(args.out, exist_ok=True)
            profiler = args.profiler or (
                "pyinstrument" if importlib.util.find_spec("pyinstrument") else "cprofile"
            )
            print(profile(cfg, systems, workload, args.profile_system, tmp, args.out, profiler))
            return 0
        only = [w for w in args.only or [] if w != "memory"]
        workloads = selected_workloads(cfg, only) if (only or not args.only) else []
        started = time.perf_counter()
        results: dict[str, Any] = {
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "machine": machine_info(tmp, REPO),
            "config": dataclasses.asdict(cfg),
            "systems": describe_systems(systems),
            "workload_names": list(WORKLOAD_NAMES),
        }
        results.update(run_suite(cfg, systems, workloads, tmp))
        asked = bool(args.only) and "memory" in args.only
        if asked and not cfg.memory_records:
            cfg = dataclasses.replace(cfg, memory_records=FULL.memory_records)
        want_memory = asked or (cfg.memory_records and not args.only)
        results["memory"] = run_memory(cfg, tmp, sys.stderr) if want_memory else None
        results["seconds"] = round(time.perf_counter() - started, 1)
        results["machine"]["load_average_at_end"] = load_average()
        print(f"Suite ran in {results['seconds']} s", file=sys.stderr)
        save(results, args.out, args.page, args.chart)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0
