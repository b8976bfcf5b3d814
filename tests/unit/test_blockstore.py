"""The block store on a real filesystem (tmp_path): verification, atomicity, quota, pins, gc."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from meca_node.ipfs.cid import CID, DAG_PB, RAW
from meca_node.ipfs.unixfs import Settings, add_bytes, cat
from meca_node.store import (BlockCorrupt, BlockMismatch, BlockNotFound, BlockPinned,
                             BlockStore, BlockStoreError, BlockTooLarge, MissingBlocks,
                             PinError, QuotaExceeded)
from meca_node.store.blocks import TMP_PREFIX, block_key

CHUNK = Settings(cid_version=1, chunk_size=1024, max_links=4)


def raw(data: bytes) -> CID:
    return CID.of(data, RAW, 1)


def files(root: Path, prefix: str = "") -> list[Path]:
    return sorted(p for p in root.rglob(prefix + "*") if p.is_file())


def add(store: BlockStore, data: bytes, settings: Settings = CHUNK):
    """Import ``data`` into ``store``; returns (root CID, every (cid, block) put)."""
    blocks: list[tuple[CID, bytes]] = []

    def put(cid: CID, block: bytes) -> None:
        blocks.append((cid, block))
        store.put(cid, block)

    return add_bytes(data, put, settings).cid, blocks


# -- blocks -----------------------------------------------------------------------------------
def test_put_get_has_delete_and_accounting(tmp_path):
    s = BlockStore(tmp_path / "blocks", None)
    cid = raw(b"hello")
    assert not s.has(cid) and s.count == 0 and s.used_bytes == 0
    s.put(cid, b"hello")
    s.put(cid, b"hello")  # idempotent
    assert s.has(cid) and s.get(cid) == b"hello"
    assert (s.count, s.used_bytes) == (1, 5)
    key = block_key(cid)
    assert s.path_of(cid) == tmp_path / "blocks" / key[-3:-1] / f"{key}.data"
    assert key.startswith("CIQ") and (tmp_path / "blocks" / "SHARDING").is_file()
    assert s.delete(cid) is True and s.delete(cid) is False
    assert not s.has(cid) and (s.count, s.used_bytes) == (0, 0)
    with pytest.raises(BlockNotFound, match="not in the store"):
        s.get(cid)


def test_put_refuses_bytes_that_do_not_match_and_oversized_blocks(tmp_path):
    s = BlockStore(tmp_path, None, max_block=16)
    with pytest.raises(BlockMismatch, match="nothing was stored"):
        s.put(raw(b"right"), b"wrong")
    with pytest.raises(BlockTooLarge, match="16-byte cap"):
        s.put(raw(b"x" * 17), b"x" * 17)
    assert s.count == 0 and files(tmp_path, "CIQ") == []
    assert issubclass(BlockMismatch, BlockStoreError)


def test_v0_v1_raw_and_dag_pb_of_the_same_bytes_share_one_file(tmp_path):
    s = BlockStore(tmp_path, None)
    block = b"\x0a\x02\x08\x01"  # a dag-pb node: an empty UnixFS raw data field
    v0, v1, as_raw = CID.of(block, DAG_PB, 0), CID.of(block, DAG_PB, 1), CID.of(block, RAW, 1)
    s.put(v0, block)
    s.put(v1, block)
    assert s.has(as_raw) and s.get(as_raw) == block
    assert s.count == 1 and len(files(tmp_path, "CIQ")) == 1


def test_a_block_corrupted_on_disk_is_removed_counted_and_raised(tmp_path):
    s = BlockStore(tmp_path, None)
    cid = raw(b"precious")
    s.put(cid, b"precious")
    s.path_of(cid).write_bytes(b"precioux")  # a disk fault, by hand
    with pytest.raises(BlockCorrupt, match="removed it|has been removed"):
        s.get(cid)
    assert not s.has(cid) and s.corrupt_removed == 1 and (s.count, s.used_bytes) == (0, 0)
    s.put(cid, b"precious")  # fetched again
    assert s.get(cid) == b"precious"


# -- atomicity --------------------------------------------------------------------------------
def test_a_failed_rename_leaves_nothing_and_the_put_works_later(tmp_path, monkeypatch):
    s = BlockStore(tmp_path, None)
    cid = raw(b"block")

    def broken(src, dst):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "replace", broken)
    with pytest.raises(BlockStoreError, match="cannot write block"):
        s.put(cid, b"block")
    assert not s.has(cid) and files(tmp_path, TMP_PREFIX) == [] and s.count == 0
    monkeypatch.undo()
    s.put(cid, b"block")
    assert s.get(cid) == b"block"


CRASH = """
import os, sys
from meca_node.ipfs.cid import CID, RAW
from meca_node.store import BlockStore
s = BlockStore(sys.argv[1], None)
os.replace = lambda src, dst: os._exit(3)  # the process dies after fsync, before rename
s.put(CID.of(b"half", RAW, 1), b"half")
"""


def test_a_crash_between_write_and_rename_shows_no_block_and_reopen_cleans_up(tmp_path):
    r = subprocess.run([sys.executable, "-c", CRASH, str(tmp_path)], timeout=60)
    assert r.returncode == 3
    assert len(files(tmp_path, TMP_PREFIX)) == 1  # the crash left its temp file
    s = BlockStore(tmp_path, None)
    assert not s.has(raw(b"half")) and s.count == 0
    assert files(tmp_path, TMP_PREFIX) == []


# -- quota ------------------------------------------------------------------------------------
def test_quota_refuses_new_bytes_but_present_blocks_are_free(tmp_path):
    s = BlockStore(tmp_path, quota_bytes=10)
    s.put(raw(b"123456"), b"123456")
    s.put(raw(b"123456"), b"123456")
    with pytest.raises(QuotaExceeded, match=r"6 of 10 bytes used, 0 of them pinned.*ipfs gc"):
        s.put(raw(b"abcde"), b"abcde")
    s.put(raw(b"abcd"), b"abcd")  # exactly at the quota
    assert s.used_bytes == 10 and files(tmp_path, TMP_PREFIX) == []


# -- pins and gc ------------------------------------------------------------------------------
def test_pin_walks_the_dag_once_per_block_and_survives_reopen(tmp_path):
    s = BlockStore(tmp_path, None)
    data = b"A" * 1024 * 6  # six identical chunks: one leaf shared six times
    root, blocks = add(s, data)
    assert len({c for c, _ in blocks}) < len(blocks)
    s.pin(root)
    s.pin(root)
    assert s.pins() == [root]
    distinct = {block_key(c): len(b) for c, b in blocks}
    assert s.pinned_bytes == sum(distinct.values())
    s2 = BlockStore(tmp_path, None)
    assert s2.pins() == [root] and s2.count == s.count and s2.used_bytes == s.used_bytes
    assert b"".join(cat(root, s2.get)) == data
    s2.unpin(root)
    assert BlockStore(tmp_path, None).pins() == []
    with pytest.raises(PinError, match="not pinned"):
        s2.unpin(root)


def test_pin_names_the_missing_blocks(tmp_path):
    s = BlockStore(tmp_path, None)
    root, blocks = add(s, os.urandom(1024 * 9))
    leaves = [c for c, _ in blocks if c.codec == RAW]
    for leaf in leaves:
        s.delete(leaf)
    with pytest.raises(MissingBlocks, match=rf"{len(leaves)} block\(s\) missing: .* and "
                                            rf"{len(leaves) - 5} more") as err:
        s.pin(root)
    assert sorted(err.value.missing) == sorted(leaves) and s.pins() == []


def test_pin_works_for_cidv0_dags_of_dag_pb_leaves(tmp_path):
    s = BlockStore(tmp_path, None)
    root, blocks = add(s, os.urandom(3000), Settings(cid_version=0, chunk_size=1024))
    assert root.version == 0 and all(c.codec == DAG_PB for c, _ in blocks)
    s.pin(root)
    assert s.gc() == (0, 0) and s.count == len(blocks)


def test_gc_keeps_pinned_and_protected_blocks_and_frees_the_rest(tmp_path):
    s = BlockStore(tmp_path, None)
    kept, kept_blocks = add(s, os.urandom(5000))
    pulling, pull_blocks = add(s, os.urandom(3000))
    loose = raw(b"garbage")
    s.put(loose, b"garbage")
    lone = raw(b"arrived before its parent")
    s.put(lone, b"arrived before its parent")
    s.pin(kept)
    with pytest.raises(BlockPinned, match="pinned"):
        s.delete(kept_blocks[0][0])
    with s.protect([pulling]) as guard:
        guard.add(lone)
        with pytest.raises(BlockPinned, match="pull in progress"):
            s.delete(lone)
        assert s.gc() == (1, len(b"garbage"))
        assert all(s.get(c) == b for c, b in kept_blocks + pull_blocks)
        assert s.has(lone)
    with pytest.raises(BlockStoreError, match="ended"):
        guard.add(lone)
    freed = s.gc()
    assert freed == (len(pull_blocks) + 1,
                     sum(len(b) for b in {block_key(c): b for c, b in pull_blocks}.values())
                     + len(b"arrived before its parent"))
    assert s.count == len(kept_blocks) and s.used_bytes == s.pinned_bytes
    s.unpin(kept)
    s.gc()
    assert s.count == 0 and s.used_bytes == 0 and files(tmp_path, "CIQ") == []


def test_gc_refuses_while_a_pinned_dag_lost_a_block(tmp_path):
    s = BlockStore(tmp_path, None)
    root, blocks = add(s, os.urandom(5000))
    s.pin(root)
    leaf = next(c for c, _ in blocks if c.codec == RAW)
    s.path_of(leaf).write_bytes(b"rot")
    with pytest.raises(BlockCorrupt):
        s.get(leaf)
    with pytest.raises(MissingBlocks, match="gc refused.*1 block"):
        s.gc()
    s.put(leaf, dict(blocks)[leaf])
    assert s.gc() == (0, 0)


def test_a_corrupt_pins_file_says_what_to_do(tmp_path):
    BlockStore(tmp_path, None)
    (tmp_path / "pins.json").write_text("{not json")
    with pytest.raises(BlockStoreError, match="move it away"):
        BlockStore(tmp_path, None)


# -- threads ----------------------------------------------------------------------------------
def test_many_threads_put_overlapping_blocks_under_a_quota(tmp_path):
    blocks = [os.urandom(100) for _ in range(40)]
    s = BlockStore(tmp_path, quota_bytes=100 * 30)
    errors: list[Exception] = []

    def worker(offset: int) -> None:
        for i in range(len(blocks)):
            data = blocks[(i + offset) % len(blocks)]
            try:
                s.put(raw(data), data)
            except QuotaExceeded:
                pass
            except Exception as exc:  # noqa: BLE001 - collected for the assertion
                errors.append(exc)

    threads = [threading.Thread(target=worker, args=(k * 5,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert errors == []
    stored = [b for b in blocks if s.has(raw(b))]
    assert len(stored) == s.count == 30 and s.used_bytes == 3000
    assert all(s.get(raw(b)) == b for b in stored)
    assert files(tmp_path, TMP_PREFIX) == []
    again = BlockStore(tmp_path, None)
    assert (again.count, again.used_bytes) == (30, 3000)


# -- eviction at the quota (a cache of pulled images) ---------------------------------------
def _aged(s: BlockStore, cid: CID, seconds_ago: int) -> None:
    path = s.path_of(cid)
    t = path.stat().st_mtime - seconds_ago
    os.utime(path, (t, t))


def test_eviction_removes_the_least_recently_used_unpinned_blocks_first(tmp_path):
    s = BlockStore(tmp_path, quota_bytes=30, evict=True)
    old, used, pinned = raw(b"o" * 10), raw(b"u" * 10), raw(b"p" * 10)
    s.put(old, b"o" * 10)
    s.put(used, b"u" * 10)
    s.put(pinned, b"p" * 10)
    s.pin(pinned)
    for cid, age in ((old, 300), (used, 200), (pinned, 400)):
        _aged(s, cid, age)
    s.get(used)  # a read makes it the most recently used
    s.put(raw(b"n" * 10), b"n" * 10)  # 10 bytes over: the oldest unpinned goes
    assert not s.has(old) and s.has(used) and s.has(pinned)
    assert (s.evicted_blocks, s.evicted_bytes) == (1, 10) and s.used_bytes == 30


def test_eviction_never_takes_pinned_or_protected_blocks_and_then_refuses(tmp_path):
    s = BlockStore(tmp_path, quota_bytes=20, evict=True)
    pinned, pulling = raw(b"p" * 10), raw(b"q" * 10)
    s.put(pinned, b"p" * 10)
    s.pin(pinned)
    s.put(pulling, b"q" * 10)
    with s.protect([pulling]):
        with pytest.raises(QuotaExceeded):
            s.put(raw(b"n" * 10), b"n" * 10)
        assert s.has(pinned) and s.has(pulling)
    s.put(raw(b"n" * 10), b"n" * 10)  # the pull ended: its block may go now
    assert not s.has(pulling) and s.has(pinned)


def test_without_eviction_the_quota_refuses(tmp_path):
    s = BlockStore(tmp_path, quota_bytes=10)
    s.put(raw(b"a" * 10), b"a" * 10)
    with pytest.raises(QuotaExceeded):
        s.put(raw(b"b" * 10), b"b" * 10)
