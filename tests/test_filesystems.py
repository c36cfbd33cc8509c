"""Stores on network filesystems are refused (LMDB's locks are not coherent there).

This machine has no network filesystem to mount, so the refusal is tested on
the decision itself, fed the filesystem type, while reading the type is tested
on the real mounts that are here.
"""

from __future__ import annotations

from pathlib import Path

import pytest

import objstore
from objstore._storage import Options
from objstore._storage._open import NETWORK_FILESYSTEMS, check_filesystem, filesystem_type


def test_the_type_of_real_mounts_is_read() -> None:
    if not Path("/proc/self/mountinfo").exists():
        pytest.skip("the platform has no /proc/self/mountinfo: types are not read there")
    assert filesystem_type("/proc") == "proc"


def test_a_store_on_a_local_filesystem_opens(tmp_path: Path) -> None:
    kind = filesystem_type(str(tmp_path))
    assert kind not in NETWORK_FILESYSTEMS
    with objstore.open(tmp_path / "store") as db:
        db["k"] = 1


@pytest.mark.parametrize("kind", ["nfs", "nfs4", "cifs", "smb3", "9p", "fuse.sshfs", "ceph", "lustre"])
def test_network_filesystems_are_refused_with_a_clear_error(kind: str) -> None:
    with pytest.raises(objstore.StoreError) as caught:
        check_filesystem("/mnt/shared/store", kind, Options())
    assert kind in str(caught.value) and "allow_network_fs=True" in str(caught.value)


@pytest.mark.parametrize("kind", ["ext4", "xfs", "btrfs", "tmpfs", "overlay", "zfs", "apfs", ""])
def test_local_filesystems_are_accepted(kind: str) -> None:
    check_filesystem("/data/store", kind, Options())


def test_the_refusal_can_be_overridden() -> None:
    check_filesystem("/mnt/shared/store", "nfs4", Options(allow_network_fs=True))
