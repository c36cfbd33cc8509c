"""What the numbers were measured on: CPU, cores, memory, Python, library versions, filesystem."""

from __future__ import annotations

import os
import platform
import subprocess
from importlib import metadata
from typing import Any


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_gib() -> float | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return round(int(line.split()[1]) / 1024**2, 1)
    except OSError:
        pass
    return None


def filesystem(path: str) -> str:
    """The type of the filesystem `path` is on (from ``/proc/mounts``), or "unknown"."""
    path = os.path.realpath(path)
    best, kind = "", "unknown"
    try:
        with open("/proc/mounts") as f:
            for line in f:
                parts = line.split()
                if len(parts) < 3:
                    continue
                mount = parts[1].replace("\\040", " ")
                inside = path == mount or path.startswith(mount.rstrip("/") + "/")
                if inside and len(mount) >= len(best):
                    best, kind = mount, parts[2]
    except OSError:
        pass
    return kind


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _git_commit(repo: str) -> str | None:
    try:
        head = subprocess.run(
            ["git", "-C", repo, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", repo, "status", "--porcelain", "--", "objstore"], capture_output=True, text=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return head + ("+ (objstore/ modified)" if dirty else "")


def _dbm_backends() -> str:
    """The ``dbm`` modules this interpreter can import (with the library behind ``dbm.ndbm``)."""
    from .adapters import dbm_backends

    names = []
    for name in dbm_backends():
        if name == "dbm.ndbm":
            import dbm.ndbm

            name += f" ({dbm.ndbm.library})"
        names.append(name)
    return ", ".join(names) or "none"


def load_average() -> str | None:
    """The 1, 5 and 15 minute load averages: how busy the machine was around the run."""
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return None


def machine_info(tmp: str, repo: str) -> dict[str, Any]:
    """A dict describing this machine and software, for the report and the JSON."""
    import lmdb

    import objstore

    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "memory_gib": _memory_gib(),
        "os": f"{platform.system()} {platform.release()}",
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "py-lmdb": lmdb.__version__,
        "lmdb": ".".join(map(str, lmdb.version())),
        "objstore": objstore.__version__,
        "objstore_commit": _git_commit(repo),
        "sqlitedict": _version("sqlitedict"),
        "diskcache": _version("diskcache"),
        "numpy": _version("numpy"),
        "dbm_backends": _dbm_backends(),
        "tmp_filesystem": filesystem(tmp),
        "load_average_at_start": load_average(),
    }
