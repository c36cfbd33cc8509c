"""Profile one system (objstore by default) on one workload, to see where its time goes.

The workload's measurement runs repeatedly (at least about two seconds of it)
under pyinstrument (a sampling profiler: low overhead, call tree) or
cProfile (exact call counts, but its per-call overhead inflates small
functions). Multi-process workloads are profiled in this process: one
reader, or one mixed-workload client.
"""

from __future__ import annotations

import io
import os
import time
from typing import Any

from .adapters import System
from .workloads import ConcurrentReaders, Config, Context, LargeValues, Mixed, Workload


class _NoBarrier:
    def wait(self) -> None:
        pass

    def abort(self) -> None:
        pass


def _run_once(workload: Workload, ctx: Context, system: str, rep: int) -> None:
    if isinstance(workload, ConcurrentReaders):
        ConcurrentReaders._reader(_NoBarrier(), 0, (ctx, system, rep))
    elif isinstance(workload, Mixed):
        Mixed._mixer(_NoBarrier(), 0, (ctx, system, rep))
    elif isinstance(workload, LargeValues):
        workload.measure_here(ctx, system, rep)  # not in a forked child, which the profiler cannot see
    else:
        workload.measure(ctx, system, rep)


def profile(
    cfg: Config,
    systems: dict[str, System],
    workload: Workload,
    system: str,
    tmp: str,
    out_dir: str,
    profiler: str = "pyinstrument",
    seconds: float = 2.0,
) -> str:
    """Profile `system` on `workload`; return the report text (also saved under `out_dir`)."""
    if system not in workload.systems:
        raise SystemExit(f"workload {workload.name!r} does not run {system!r}; it runs {workload.systems}")
    ctx = Context(cfg, tmp, systems)
    workload.prepare(ctx, [system])
    _run_once(workload, ctx, system, 0)  # warm up: imports, page cache
    base = os.path.join(out_dir, f"profile-{workload.name}-{system}")
    if profiler == "pyinstrument":
        from pyinstrument import Profiler

        prof = Profiler(interval=0.0002)
        prof.start()
        _repeat(workload, ctx, system, seconds)
        prof.stop()
        text = prof.output_text(unicode=True, color=False)
        with open(base + ".html", "w", encoding="utf-8") as f:
            f.write(prof.output_html())
    else:
        import cProfile
        import pstats

        cprof = cProfile.Profile()
        cprof.enable()
        _repeat(workload, ctx, system, seconds)
        cprof.disable()
        buffer = io.StringIO()
        stats = pstats.Stats(cprof, stream=buffer)
        stats.sort_stats("tottime").print_stats(30)
        stats.dump_stats(base + ".prof")
        text = buffer.getvalue()
    with open(base + ".txt", "w", encoding="utf-8") as f:
        f.write(text)
    return text


def _repeat(workload: Workload, ctx: Context, system: str, seconds: float) -> Any:
    start = time.perf_counter()
    rep = 1
    while time.perf_counter() - start < seconds and rep <= 50:
        _run_once(workload, ctx, system, rep)
        rep += 1
