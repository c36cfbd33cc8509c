"""The chart: for each workload, every system's speed relative to its floor, on a log scale."""

from __future__ import annotations

from typing import Any

from .report import fmt_rate, summarize

FAMILY_COLOURS = {
    "floor": "#9e9e9e",
    "objstore": "#1565c0",
    "shelve": "#2e7d32",
    "sqlitedict": "#ef6c00",
    "diskcache": "#6a1b9a",
    "reference": "#bdbdbd",
}

CHART_ROWS = [
    ("single", "Single-key writes"),
    ("bulk", "Bulk writes, one transaction"),
    ("read", "Random reads"),
    ("iterate", "Iteration of items"),
    ("large-write", "Large values (1 MiB): write"),
    ("large-read", "Large values (1 MiB): read"),
    ("readers-2", "2 reader processes"),
    ("open", "Open, read one key, close"),
    ("mixed-1", "Mixed 90/9/1, 1 process"),
]


def _rows(results: dict[str, Any]) -> list[tuple[str, str]]:
    rows = [r for r in CHART_ROWS if r[0] in results["rows"]]
    mixed = sorted(
        (r for r in results["rows"] if r.startswith("mixed-") and r != "mixed-1"),
        key=lambda r: int(r.split("-")[1]),
    )
    rows += [(r, f"Mixed 90/9/1, {r.split('-')[1]} processes") for r in mixed[-1:]]
    return rows


def render(results: dict[str, Any], path: str) -> None:
    """Write the chart as a PNG to `path`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    summary = summarize(results)
    systems = results["systems"]
    order = list(systems)
    rows = _rows(results)
    cols = 2
    nrows = (len(rows) + cols - 1) // cols
    heights = []
    for row, _ in rows:
        heights.append(sum(1 for s in summary[row].values() if s.get("ratio")))
    fig, axes = plt.subplots(
        nrows, cols, figsize=(13, 1.2 + 0.33 * max(heights or [1]) * nrows), squeeze=False
    )
    for ax in axes.flat[len(rows) :]:
        ax.axis("off")
    for ax, (row, title) in zip(axes.flat, rows, strict=False):
        figures = summary[row]
        names = sorted(
            (n for n in figures if figures[n].get("ratio")),
            key=lambda n: order.index(n) if n in order else len(order),
        )
        speed = [1 / figures[n]["ratio"] for n in names]
        colours = [
            FAMILY_COLOURS.get(systems.get(n, {}).get("family", "reference"), "#bdbdbd") for n in names
        ]
        y = range(len(names))
        ax.barh(list(y), speed, color=colours, height=0.7)
        ax.set_xscale("log")
        ax.axvline(1.0, color="black", linewidth=0.8)
        ax.set_yticks(list(y))
        ax.set_yticklabels(names, fontsize=8)
        for label in ax.get_yticklabels():
            if label.get_text().startswith("objstore"):
                label.set_fontweight("bold")
        ax.invert_yaxis()
        unit = results["workloads"][row]["unit"]
        for i, n in enumerate(names):
            fig_ = figures[n]
            text = (
                f"{fig_['mbps']:,.0f} MB/s"
                if unit == "MB/s"
                else f"{fig_['per_op'] * 1e6:.0f} µs"
                if unit == "µs/op"
                else f"{fmt_rate(fig_['rate'])}/s"
            )
            ax.text(speed[i], i, f" {text}", va="center", fontsize=7)
        low, high = min(speed + [1.0]), max(speed + [1.0])
        ax.set_xlim(low / 1.6, high * 4)
        ax.set_title(title, fontsize=10, loc="left")
        ax.tick_params(axis="x", labelsize=7)
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}×"))
    fig.suptitle(
        "Speed relative to the floor: raw lmdb + pickle with the same durability (fsync systems: floor; "
        "others: floor-off)\nfloor = 1, longer is faster, log scale; labels: absolute figures",
        fontsize=11,
        y=0.995,
    )
    fig.tight_layout(rect=(0, 0, 1, 0.975))
    fig.savefig(path, dpi=110)
    plt.close(fig)
