"""The package as installed: a wheel built from the checkout holds every module and ``py.typed``.

Editable installs import straight from the checkout, so a package list that
leaves out a subpackage goes unnoticed there; a wheel does not.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# What is never part of a build's input: caches, environments, earlier builds.
NOT_SOURCES = shutil.ignore_patterns(
    ".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".*_cache", ".hypothesis"
)


def package_files() -> list[str]:
    """The package's source files, as paths relative to the checkout: git's list, else the tree's."""
    try:
        listed = subprocess.run(
            ["git", "ls-files", "objstore"], cwd=ROOT, capture_output=True, text=True, timeout=60, check=True
        ).stdout.split()
    except (OSError, subprocess.CalledProcessError):
        listed = []  # not a git checkout (an unpacked sdist): every file present is a source
    if not listed:
        listed = [str(p.relative_to(ROOT)) for p in (ROOT / "objstore").rglob("*") if p.is_file()]
    return sorted(name for name in listed if name.endswith((".py", "py.typed")) and "__pycache__" not in name)


def test_wheel_has_every_module(tmp_path: Path) -> None:
    source = tmp_path / "source"
    shutil.copytree(ROOT, source, ignore=NOT_SOURCES)  # never write build/ into the checkout
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q"]
        + ["-w", "out", "./source"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert built.returncode == 0, built.stdout + built.stderr
    (wheel,) = (tmp_path / "out").glob("objstore-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        shipped = set(archive.namelist())
    expected = package_files()
    assert "objstore/py.typed" in expected and "objstore/_storage/__init__.py" in expected
    missing = [name for name in expected if name not in shipped]
    assert missing == [], f"the wheel lacks {missing}"
