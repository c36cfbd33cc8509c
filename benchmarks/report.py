"""Turn the samples of a run into figures, ratios to the floor, targets and Markdown."""

from __future__ import annotations

import statistics
from typing import Any

MIB = 1024 * 1024
HAND_WRITTEN_MARK = (
    "<!-- Everything below this line is written by hand and kept when the page is regenerated. -->"
)


# ------------------------------------------------------------------ figures


def summarize(results: dict[str, Any]) -> dict[str, dict[str, dict[str, Any]]]:
    """For every row and system: the median figures over repeats and the ratio to the floor.

    ``per_op`` is the median of seconds per operation; ``rate`` its inverse;
    ``ratio`` is ``per_op`` divided by that of the system's floor (the floor
    with the same durability class) measured in the same run: 1.00 is the
    floor, 1.20 is 20% more time per operation.
    """
    systems = results["systems"]
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for row, by_system in results["rows"].items():
        unit = results["workloads"][row]["unit"]
        figures: dict[str, dict[str, Any]] = {}
        for system, samples in by_system.items():
            good = [s for s in samples if not s.get("error") and s["ops"]]
            errors = [s["error"] for s in samples if s.get("error")]
            fig: dict[str, Any] = {"repeats": len(good), "error": errors[0] if errors and not good else None}
            if good:
                if unit == "bytes/record":
                    extra = good[0]["extra"]
                    fig.update(extra)
                    fig["per_op"] = extra["apparent"] / extra["records"]
                else:
                    per_op = [s["seconds"] / s["ops"] for s in good]
                    fig["per_op"] = statistics.median(per_op)
                    fig["rate"] = 1 / fig["per_op"] if fig["per_op"] else float("inf")
                    fig["spread"] = (max(per_op) - min(per_op)) / fig["per_op"] if fig["per_op"] else 0.0
                    if good[0]["nbytes"]:
                        fig["mbps"] = statistics.median(s["nbytes"] / s["seconds"] / 1e6 for s in good)
                    peaks = [s["peak_kb"] for s in good if s.get("peak_kb") is not None]
                    fig["peak_mib"] = max(peaks) / 1024 if peaks else None
                    if good[0]["extra"]:
                        fig["extra"] = _median_extra([s["extra"] for s in good])
            figures[system] = fig
        info = results["workloads"][row]
        floors = out.get(info.get("floor_row", ""), figures)  # e.g. zero-copy reads over plain ones
        for system, fig in figures.items():
            # Rows without the system's own floor (reads: durability plays no part) use "floor".
            own = info.get("floor_system") or systems.get(system, {}).get("floor", "floor")
            if own is None:
                continue
            floor = floors.get(own) or floors.get("floor", {})
            if "per_op" in fig and floor.get("per_op"):
                fig["ratio"] = fig["per_op"] / floor["per_op"]
        out[row] = figures
    return out


def _median_extra(extras: list[dict[str, Any]]) -> dict[str, Any]:
    """Median of each numeric leaf over repeats (latency percentiles, miss counts)."""
    merged: dict[str, Any] = {}
    for key, value in extras[0].items():
        if isinstance(value, dict):
            merged[key] = _median_extra([e[key] for e in extras if e.get(key)]) if value else {}
        elif isinstance(value, (int, float)):
            merged[key] = statistics.median(e[key] for e in extras)
        else:
            merged[key] = value
    return merged


# --------------------------------------------------------------- formatting


def fmt_rate(x: float | None) -> str:
    """A throughput with three significant figures: 312k, 4.71k, 980."""
    if x is None:
        return "–"
    if x >= 1e6:
        return f"{x / 1e6:.2f}M"
    if x >= 1e5:
        return f"{x / 1e3:.0f}k"
    if x >= 1e4:
        return f"{x / 1e3:.1f}k"
    if x >= 1e3:
        return f"{x / 1e3:.2f}k"
    return f"{x:.0f}"


def fmt_us(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    us = seconds * 1e6
    return f"{us:.0f}" if us >= 100 else f"{us:.1f}" if us >= 10 else f"{us:.2f}"


def fmt_ratio(r: float | None) -> str:
    return "–" if r is None else f"{r:.2f}×"


def fmt_mib(m: float | None) -> str:
    return "–" if m is None else f"{m:.1f}"


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _order(results: dict[str, Any], names: list[str]) -> list[str]:
    order = list(results["systems"])
    return sorted(names, key=lambda n: order.index(n) if n in order else len(order))


def _short_durability(results: dict[str, Any], system: str) -> str:
    info = results["systems"].get(system, {})
    if system in ("memcpy", "cpu"):
        return "(reference)"
    return "fsync" if info.get("fsync") else "no fsync"


WRITE_ROWS = ("single", "bulk", "large-write", "modes-write")


def ops_table(
    results: dict[str, Any], summary: dict[str, Any], row: str, unit: str, versus: str | None = None
) -> str:
    """A table of one row: throughput, time per op, ratio to the floor (and to `versus`), peak RSS."""
    figures = summary[row]
    base = figures.get(versus or "", {}).get("per_op")
    faults = any("faults_per_op" in fig.get("extra", {}) for fig in figures.values())
    writes = row in WRITE_ROWS
    body = []
    for system in _order(results, list(figures)):
        fig = figures[system]
        if fig.get("error"):
            cells = [system, f"failed: {fig['error'][:80]}", "", "", "", ""]
        else:
            rate = fig.get("mbps") if unit == "MB/s" else fig.get("rate")
            cells = [
                f"**{system}**" if system.startswith("objstore") else system,
                fmt_rate(rate) if unit != "MB/s" else f"{rate:,.0f}",
                fmt_us(fig.get("per_op")),
                fmt_ratio(fig.get("ratio")),
                f"{fig['spread']:.0%}" if fig.get("repeats", 0) > 1 else "–",
                fmt_mib(fig.get("peak_mib")),
            ]
            if versus:
                cells.insert(4, fmt_ratio(fig["per_op"] / base) if base and fig.get("per_op") else "–")
            if faults:
                cells.append(f"{fig.get('extra', {}).get('faults_per_op', 0):.0f}")
        body.append(cells[:1] + [_short_durability(results, system)] + cells[1:] if writes else cells)
    head = [
        "System",
        "MB/s" if unit == "MB/s" else "ops/s",
        "µs/op",
        "× floor time",
        *([f"× {versus} time"] if versus else []),
        "Spread",
        "Peak RSS MiB",
        *(["Page faults/op"] if faults else []),
    ]
    return _table(head[:1] + ["Durability"] + head[1:] if writes else head, body)


def readers_table(results: dict[str, Any], summary: dict[str, Any], rows: list[str]) -> str:
    """Reads/s at each number of processes, the scaling over one process, and the ratio to the floor."""
    procs = [int(r.split("-")[1]) for r in rows]
    systems = _order(results, sorted({s for r in rows for s in summary[r]}))
    body = []
    for system in systems:
        one = summary[rows[0]].get(system, {}).get("rate")
        label = "cpu (reference: pure-Python work)" if system == "cpu" else system
        cells = [f"**{label}**" if system.startswith("objstore") else label]
        ratios = []
        for row in rows:
            fig = summary[row].get(system, {})
            if fig.get("error"):
                cells.append("failed")
                ratios.append("–")
                continue
            rate = fig.get("rate")
            scale = f" ({rate / one:.2f}×)" if rate and one and row != rows[0] else ""
            cells.append(fmt_rate(rate) + scale)
            ratios.append(f"{fig['ratio']:.2f}" if fig.get("ratio") else "–")
        body.append(cells + [" / ".join(ratios) + ("×" if any(r != "–" for r in ratios) else "")])
    head = (
        ["System"]
        + [f"{p} process{'es' if p > 1 else ''}: ops/s (× one)" for p in procs]
        + [f"× floor time ({' / '.join(map(str, procs))})"]
    )
    return _table(head, body)


def _latencies(p: dict[str, float] | None) -> str:
    if not p:
        return "–"
    return f"{p['p50']:.1f} / {p['p99']:.0f} / {p['max']:,.0f}"


def mixed_table(results: dict[str, Any], summary: dict[str, Any], row: str) -> str:
    figures = summary[row]
    body = []
    for system in _order(results, list(figures)):
        fig = figures[system]
        if fig.get("error"):
            body.append(
                [system, _short_durability(results, system), f"failed: {fig['error'][:80]}"] + [""] * 5
            )
            continue
        extra = fig.get("extra", {})
        lat = {op: _latencies(extra.get(op)) for op in ("get", "set", "delete")}

        body.append(
            [
                f"**{system}**" if system.startswith("objstore") else system,
                _short_durability(results, system),
                fmt_rate(fig.get("rate")),
                fmt_ratio(fig.get("ratio")),
                lat["get"],
                lat["set"],
                lat["delete"],
                f"{extra.get('misses', 0):.0f}",
            ]
        )
    head = [
        "System",
        "Durability",
        "ops/s",
        "× floor time",
        "get µs p50 / p99 / max",
        "set µs p50 / p99 / max",
        "delete µs p50 / p99 / max",
        "misses",
    ]
    return _table(head, body)


def disk_table(results: dict[str, Any], summary: dict[str, Any]) -> str:
    figures = summary["disk"]
    body = []
    for system in _order(results, list(figures)):
        fig = figures[system]
        body.append(
            [
                f"**{system}**" if system.startswith("objstore") else system,
                f"{fig['records']:,}",
                f"{fig['apparent'] / MIB:.1f}",
                f"{fig['allocated'] / MIB:.1f}",
                f"{fig['per_op']:.0f}",
                fmt_ratio(fig.get("ratio")),
            ]
        )
    head = ["System", "Records", "MiB (apparent)", "MiB (allocated)", "bytes/record", "× floor"]
    return _table(head, body)


def memory_table(results: dict[str, Any]) -> str:
    memory = results.get("memory") or {}
    body = []
    for system, probes in memory.get("probes", {}).items():
        for what, r in probes.items():
            rate = r["count"] / r["seconds"] if r["seconds"] and what not in ("idle", "len") else None
            body.append(
                [
                    f"**{system}**" if system.startswith("objstore") else system,
                    what + ("()" if what == "len" else ""),
                    f"{r['seconds']:.2f}" if what != "idle" else "–",
                    fmt_rate(rate),
                    f"{r['idle_rss_kb'] / 1024:.1f}",
                    f"{r['anon_peak_over_idle_kb'] / 1024:.1f}",
                    f"{r['peak_over_idle_kb'] / 1024:.1f}",
                    f"{r['file_end_kb'] / 1024:.1f}",
                ]
            )
    head = [
        "System",
        "Operation",
        "Seconds",
        "items/s",
        "Idle RSS MiB",
        "Peak anonymous over idle MiB",
        "Peak RSS over idle MiB",
        "File-backed RSS at end MiB",
    ]
    return _table(head, body)


# ------------------------------------------------------------------- targets


def _get(summary: dict[str, Any], row: str, system: str, key: str = "per_op") -> float | None:
    value = summary.get(row, {}).get(system, {}).get(key)
    return value if isinstance(value, (int, float)) else None


def targets(results: dict[str, Any], summary: dict[str, Any]) -> list[dict[str, Any]]:
    """Each target of issue 4 with its measured figure and whether it is met (None: not measured)."""
    out: list[dict[str, Any]] = []

    def ratio_at_most(label: str, row: str, system: str, limit: float) -> None:
        r = _get(summary, row, system, "ratio")
        out.append(
            {
                "target": label,
                "measured": None if r is None else f"{r:.2f}× floor time",
                "met": None if r is None else r <= limit,
            }
        )

    def faster(label: str, row: str, system: str, peers: list[str], factor: float) -> None:
        mine = _get(summary, row, system, "rate")
        rates: dict[str, float] = {}
        for peer in peers:
            rate = _get(summary, row, peer, "rate")
            if rate:
                rates[peer] = rate
        if mine is None or not rates:
            out.append({"target": label, "measured": None, "met": None})
            return
        worst = min(mine / r for r in rates.values())
        measured = ", ".join(f"{mine / r:.2f}× {p}" for p, r in rates.items())
        out.append({"target": label, "measured": measured, "met": worst >= factor})

    ratio_at_most("Random reads ≤ 1.25× the floor's time", "read", "objstore", 1.25)
    ratio_at_most("Single writes (durability full) ≤ 1.25× the floor's time", "single", "objstore", 1.25)
    ratio_at_most("Single writes (durability off) ≤ 1.25× the floor's time", "single", "objstore-off", 1.25)
    ratio_at_most("Bulk writes (durability full) ≤ 1.15× the floor's time", "bulk", "objstore", 1.15)
    ratio_at_most("Bulk writes (durability off) ≤ 1.15× the floor's time", "bulk", "objstore-off", 1.15)
    ratio_at_most("Iteration of items ≤ 1.15× the floor's time", "iterate", "objstore", 1.15)
    faster("Random reads ≥ 2.5× diskcache", "read", "objstore", ["diskcache-cache", "diskcache-index"], 2.5)
    faster("Random reads ≥ 25× sqlitedict", "read", "objstore", ["sqlitedict"], 25)
    if "shelve-gnu" in summary.get("read", {}):
        faster("Stretch: random reads as fast as shelve over gdbm", "read", "objstore", ["shelve-gnu"], 1.0)
    else:
        out.append(
            {
                "target": "Stretch: random reads as fast as shelve over gdbm",
                "measured": "not measured: no dbm.gnu in this interpreter (see --dbm-dir)",
                "met": None,
            }
        )
    faster(
        "Bulk writes ≥ 5× diskcache and sqlitedict",
        "bulk",
        "objstore",
        ["diskcache-cache", "diskcache-index", "sqlitedict"],
        5,
    )
    faster(
        "Single writes, fast mode (off), ≥ 5× diskcache and sqlitedict",
        "single",
        "objstore-off",
        ["diskcache-cache", "diskcache-index", "sqlitedict", "sqlitedict-autocommit"],
        5,
    )
    nofsync = [
        s
        for s in summary.get("single", {})
        if not results["systems"].get(s, {}).get("fsync") and results["systems"].get(s, {}).get("peer")
    ]
    best = max(nofsync, key=lambda s: _get(summary, "single", s, "rate") or 0, default=None)
    mine = _get(summary, "single", "objstore-off")
    if best and mine:
        theirs = _get(summary, "single", best)
        assert theirs is not None
        out.append(
            {
                "target": "Single writes, fast mode, within 1.5× of the fastest non-fsync peer's time",
                "measured": f"{mine / theirs:.2f}× the time of {best}",
                "met": mine <= 1.5 * theirs,
            }
        )
    else:
        out.append(
            {
                "target": "Single writes, fast mode, within 1.5× of the fastest non-fsync peer's time",
                "measured": None,
                "met": None,
            }
        )
    one = _get(summary, "readers-1", "objstore", "rate")
    two = _get(summary, "readers-2", "objstore", "rate")
    cpu1 = _get(summary, "readers-1", "cpu", "rate")
    cpu2 = _get(summary, "readers-2", "cpu", "rate")
    machine = f" (pure-Python CPU work in the same run: {cpu2 / cpu1:.2f}×)" if cpu1 and cpu2 else ""
    out.append(
        {
            "target": "2 reader processes deliver ≥ 1.85× one",
            "measured": None if not (one and two) else f"{two / one:.2f}× one{machine}",
            "met": None if not (one and two) else two / one >= 1.85,
        }
    )
    ratio_at_most(
        "Large values (write, full): no slower than the floor (≤ 1.05×, noise)",
        "large-write",
        "objstore",
        1.05,
    )
    ratio_at_most(
        "Large values (write, off): no slower than the floor (≤ 1.05×, noise)",
        "large-write",
        "objstore-off",
        1.05,
    )
    ratio_at_most(
        "Large values (read): no slower than the floor (≤ 1.05×, noise)", "large-read", "objstore", 1.05
    )
    ratio_at_most("Open a store, read one key, close: ≤ 2× the floor's time", "open", "objstore", 2.0)
    out += issue9_targets(summary)
    probes = (results.get("memory") or {}).get("probes", {}).get("objstore")
    if probes:
        worst = max((r["anon_peak_over_idle_kb"] for w, r in probes.items() if w != "idle"), default=0) / 1024
        total = max((r["peak_over_idle_kb"] for w, r in probes.items() if w != "idle"), default=0) / 1024
        n = (results.get("memory") or {}).get("records", 0)
        out.append(
            {
                "target": f"Memory flat: keys/values/items/len() of {n:,} records within 64 MiB of idle",
                "measured": f"{worst:.1f} MiB anonymous at most ({total:.0f} MiB RSS with mapped file pages)",
                "met": worst <= 64,
            }
        )
    else:
        out.append(
            {
                "target": "Memory flat: keys/values/items/len() of 1,000,000 records within 64 MiB of idle",
                "measured": "not measured (full mode only)",
                "met": None,
            }
        )
    return out


def issue9_targets(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """The targets of issue 9: signed reads, one-copy large reads, zero-copy reads (None: not measured)."""

    def versus(label: str, row: str, system: str, base: str, limit: float, unit: str) -> dict[str, Any]:
        mine, theirs = _get(summary, row, system), _get(summary, row, base)
        if mine is None or not theirs:
            return {"target": label, "measured": None, "met": None}
        return {"target": label, "measured": f"{mine / theirs:.2f}× {unit}", "met": mine <= limit * theirs}

    return [
        versus(
            "Signed reads ≤ 1.3× plain objstore reads (small values)",
            "modes-read",
            "objstore-signed",
            "objstore-off",
            1.3,
            "plain objstore's time",
        ),
        versus(
            "1 MiB reads ≤ 0.5× the floor's time (read after reopening)",
            "large-read",
            "objstore",
            "floor",
            0.5,
            "floor time",
        ),
        versus(
            "1 MiB reads ≤ 0.5× the floor's time (read again)",
            "large-reread",
            "objstore",
            "floor",
            0.5,
            "floor time",
        ),
        versus(
            "64 MiB array in a zero-copy snapshot ≤ 5% of NumPy copying it",
            "large-64mib",
            "objstore",
            "memcpy",
            0.05,
            "the copy's time",
        ),
    ]


def targets_table(rows: list[dict[str, Any]]) -> str:
    body = [
        [t["target"], t["measured"] or "–", {True: "met", False: "**not met**", None: "–"}[t["met"]]]
        for t in rows
    ]
    return _table(["Target", "Measured", ""], body)


# --------------------------------------------------------------------- text


def results_markdown(results: dict[str, Any]) -> str:
    """Every table of a run, as Markdown (the part of the page that changes with each run)."""
    summary = summarize(results)
    rows = results["rows"]
    meta = results["workloads"]
    parts = []
    done: set[str] = set()
    for row in rows:
        if row in done:
            continue
        info = meta[row]
        name = info["workload"]
        if name == "readers":
            group = [r for r in rows if meta[r]["workload"] == "readers"]
            parts.append(f"### {info['title']}\n\n{readers_table(results, summary, group)}")
            done.update(group)
        elif name == "mixed":
            for r in [r for r in rows if meta[r]["workload"] == "mixed"]:
                procs = r.split("-")[1]
                parts.append(
                    f"### {info['title'].replace('P processes', procs + ' process(es)')}\n\n"
                    + mixed_table(results, summary, r)
                )
                done.add(r)
        elif name == "disk":
            parts.append(f"### {info['title']}\n\n{disk_table(results, summary)}")
        elif name == "modes":
            table = ops_table(results, summary, row, info["unit"], versus="objstore-off")
            parts.append(f"### {info['title']}: {row.split('-')[1]}\n\n{table}")
        else:
            parts.append(f"### {info['title']}\n\n{ops_table(results, summary, row, info['unit'])}")
        done.add(row)
    if results.get("memory"):
        parts.append(
            f"### Peak memory over {results['memory']['records']:,} records, each in a fresh process"
            f"\n\n{memory_table(results)}"
        )
    return "\n\n".join(parts)


def machine_markdown(machine: dict[str, Any]) -> str:
    body = [[k, str(v)] for k, v in machine.items() if v is not None]
    return _table(["", ""], body)


def console_summary(results: dict[str, Any]) -> str:
    """What the command prints: machine, tables, targets."""
    summary = summarize(results)
    return (
        "\n\n".join(
            [
                f"## Machine\n\n{machine_markdown(results['machine'])}",
                f"## Results ({results['config']['mode']} mode)\n\n{results_markdown(results)}",
                f"## Targets\n\n{targets_table(targets(results, summary))}",
            ]
        )
        + "\n"
    )
