"""The block store on a REAL full disk: a 2 MiB tmpfs filled until the kernel says ENOSPC."""

from __future__ import annotations

import os
import subprocess

import pytest
from conftest import require

from meca_node.ipfs.cid import CID, RAW
from meca_node.store import BlockStore, DiskFull

pytestmark = pytest.mark.integration
BLOCK = 64 * 1024


@pytest.fixture
def small_disk(tmp_path):
    require(os.geteuid() == 0, "mounting a tmpfs needs root")
    mnt = tmp_path / "disk"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)], check=True,
                   timeout=30)
    try:
        yield mnt
    finally:
        # lazy: a store a failed test still holds open must not fail the unmount too
        subprocess.run(["umount", "--lazy", str(mnt)], check=True, timeout=30)


def fill(store: BlockStore, size: int, limit: int = 1000) -> tuple[list[CID], CID, bytes]:
    """Put ``size``-byte blocks until the disk is full: (stored, the failed CID, its bytes)."""
    stored: list[CID] = []
    for _ in range(limit):
        data = os.urandom(size)
        cid = CID.of(data, RAW, 1)
        try:
            store.put(cid, data)
        except DiskFull as exc:
            assert "full" in str(exc) and "try again" in str(exc)
            return stored, cid, data
        stored.append(cid)
    raise AssertionError(f"{limit} blocks of {size} bytes did not fill a 2 MiB disk")


def test_a_full_disk_leaves_no_partial_block_and_the_put_succeeds_once_freed(small_disk):
    store = BlockStore(small_disk / "blocks", None)
    stored, failed, data = fill(store, BLOCK)
    assert 10 < len(stored) < 32
    small, _, _ = fill(store, 1024)  # the last pages too
    stored += small
    with pytest.raises(OSError, match="No space"):  # and whatever a page could still hold
        with open(small_disk / "filler", "wb", buffering=0) as filler:
            for _ in range(1000):
                filler.write(b"\0" * 512)
    # no partial block left behind: the pack holds exactly the stored blocks
    assert sum(p.stat().st_size for p in (small_disk / "blocks" / "packs").iterdir()) \
        == store.used_bytes
    assert not store.has(failed) and store.count == len(stored)
    assert all(store.get(cid) for cid in stored)  # every block still verifies

    with pytest.raises(DiskFull):  # the pin list cannot be written either; nothing changes
        store.pin(stored[0])
    assert store.pins() == [] and BlockStore(small_disk / "blocks", None).pins() == []

    assert store.delete(stored[0]) and store.delete(stored[1])
    store.put(failed, data)
    assert store.get(failed) == data
    again = BlockStore(small_disk / "blocks", None)
    assert again.count == len(stored) - 1 and again.used_bytes == store.used_bytes
    store.close()
    again.close()
