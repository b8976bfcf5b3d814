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
from meca_node.store import blocks as blocks_module
from meca_node.store.blocks import block_key

CHUNK = Settings(cid_version=1, chunk_size=1024, max_links=4)


def raw(data: bytes) -> CID:
    return CID.of(data, RAW, 1)


def packs(root: Path) -> list[Path]:
    return sorted((root / "packs").glob("*.pack"))


def pack_bytes(root: Path) -> int:
    """Bytes in the store's pack files: exactly the stored blocks' unless something was
    left behind."""
    return sum(p.stat().st_size for p in packs(root))


def damage(s: BlockStore, cid: CID, junk: bytes) -> None:
    """Overwrite a stored block's bytes in its pack, as a disk fault would."""
    path, offset, size = s.locate(cid)
    assert len(junk) <= size
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(junk)


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
    assert s.locate(cid) == (tmp_path / "blocks" / "packs" / "1.pack", 0, 5)
    assert block_key(cid).startswith("CIQ") and (tmp_path / "blocks" / "index.sqlite").is_file()
    assert s.size_of(cid) == 5 and s.size_of(raw(b"other")) is None
    assert s.delete(cid) is True and s.delete(cid) is False
    assert not s.has(cid) and (s.count, s.used_bytes) == (0, 0) and s.locate(cid) is None
    assert pack_bytes(tmp_path / "blocks") == 0  # the last block gone: the pack is empty
    with pytest.raises(BlockNotFound, match="not in the store"):
        s.get(cid)


def test_put_refuses_bytes_that_do_not_match_and_oversized_blocks(tmp_path):
    s = BlockStore(tmp_path, None, max_block=16)
    with pytest.raises(BlockMismatch, match="nothing was stored"):
        s.put(raw(b"right"), b"wrong")
    with pytest.raises(BlockTooLarge, match="16-byte cap"):
        s.put(raw(b"x" * 17), b"x" * 17)
    assert s.count == 0 and pack_bytes(tmp_path) == 0
    assert issubclass(BlockMismatch, BlockStoreError)


def test_v0_v1_raw_and_dag_pb_of_the_same_bytes_are_one_block(tmp_path):
    s = BlockStore(tmp_path, None)
    block = b"\x0a\x02\x08\x01"  # a dag-pb node: an empty UnixFS raw data field
    v0, v1, as_raw = CID.of(block, DAG_PB, 0), CID.of(block, DAG_PB, 1), CID.of(block, RAW, 1)
    s.put(v0, block)
    s.put(v1, block)
    assert s.has(as_raw) and s.get(as_raw) == block
    assert s.count == 1 and pack_bytes(tmp_path) == len(block)


def test_a_block_corrupted_on_disk_is_removed_counted_and_raised(tmp_path):
    s = BlockStore(tmp_path, None)
    cid = raw(b"precious")
    s.put(cid, b"precious")
    damage(s, cid, b"precioux")  # a disk fault, by hand
    with pytest.raises(BlockCorrupt, match="removed it|has been removed"):
        s.get(cid)
    assert not s.has(cid) and s.corrupt_removed == 1 and (s.count, s.used_bytes) == (0, 0)
    s.put(cid, b"precious")  # fetched again
    assert s.get(cid) == b"precious"


# -- atomicity --------------------------------------------------------------------------------
def test_a_failed_write_leaves_nothing_and_the_put_works_later(tmp_path, monkeypatch):
    s = BlockStore(tmp_path, None)
    kept = raw(b"kept")
    s.put(kept, b"kept")
    cid = raw(b"block")

    real = os.pwrite

    def broken(fd, data, offset):
        real(fd, b"bl", offset)  # part of it, then the disk fails
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "pwrite", broken)
    with pytest.raises(BlockStoreError, match="cannot write block"):
        s.put(cid, b"block")
    assert not s.has(cid) and s.count == 1 and pack_bytes(tmp_path) == len(b"kept")
    monkeypatch.undo()
    s.put(cid, b"block")
    assert s.get(cid) == b"block" and s.get(kept) == b"kept"


CRASH = """
import os, sys
from meca_node.ipfs.cid import CID, RAW
from meca_node.store import BlockStore
s = BlockStore(sys.argv[1], None)
s.put(CID.of(b"kept", RAW, 1), b"kept")
# the process dies after the block's bytes are in the pack, before its index row
BlockStore._insert = lambda *args: os._exit(3)
s.put(CID.of(b"half", RAW, 1), b"half")
"""


def test_a_crash_between_write_and_index_shows_no_block_and_reopen_cuts_it_off(tmp_path):
    r = subprocess.run([sys.executable, "-c", CRASH, str(tmp_path)], timeout=60)
    assert r.returncode == 3
    assert pack_bytes(tmp_path) == len(b"kepthalf")  # the crash left the bytes
    s = BlockStore(tmp_path, None)
    assert not s.has(raw(b"half")) and s.count == 1 and s.get(raw(b"kept")) == b"kept"
    assert pack_bytes(tmp_path) == len(b"kept")
    s.put(raw(b"half"), b"half")
    assert BlockStore(tmp_path, None).get(raw(b"half")) == b"half"


def test_packs_roll_over_and_an_emptied_pack_is_removed(tmp_path, monkeypatch):
    monkeypatch.setattr(blocks_module, "PACK_BYTES", 100)
    s = BlockStore(tmp_path, None)
    cids = [raw(bytes([i]) * 60) for i in range(3)]
    for cid, i in zip(cids, range(3)):
        s.put(cid, bytes([i]) * 60)
    assert [p.name for p in packs(tmp_path)] == ["1.pack", "2.pack", "3.pack"]
    assert s.delete(cids[0])
    assert [p.name for p in packs(tmp_path)] == ["2.pack", "3.pack"]
    assert s.delete(cids[2])  # the pack being appended to stays, emptied
    assert [p.stat().st_size for p in packs(tmp_path)] == [60, 0]
    again = BlockStore(tmp_path, None)
    assert again.get(cids[1]) == bytes([1]) * 60 and again.count == 1
    assert [p.name for p in packs(tmp_path)] == ["2.pack"]


def test_delete_gives_the_disk_space_back_at_once(tmp_path):
    s = BlockStore(tmp_path, None)
    big, other = os.urandom(1 << 20), os.urandom(1 << 20)
    s.put(raw(big), big)
    s.put(raw(other), other)
    pack = packs(tmp_path)[0]
    before = pack.stat().st_blocks * 512
    s.delete(raw(big))
    freed = before - pack.stat().st_blocks * 512
    assert freed >= (1 << 20) - 8192, f"only {freed} bytes freed"
    assert s.get(raw(other)) == other


def test_a_store_in_the_flatfs_layout_of_earlier_versions_is_moved_into_packs(tmp_path):
    good, bad = b"a block from before", b"a damaged block"
    (tmp_path / "SHARDING").write_text("/repo/flatfs/shard/v1/next-to-last/2\n")
    for data, content in ((good, good), (bad, b"rot")):
        key = block_key(raw(data))
        (tmp_path / key[-3:-1]).mkdir(exist_ok=True)
        (tmp_path / key[-3:-1] / f"{key}.data").write_bytes(content)
    s = BlockStore(tmp_path, None)
    assert s.get(raw(good)) == good and not s.has(raw(bad)) and s.count == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["index.sqlite", "index.sqlite-shm",
                                                          "index.sqlite-wal", "packs"]


# -- quota ------------------------------------------------------------------------------------
def test_quota_refuses_new_bytes_but_present_blocks_are_free(tmp_path):
    s = BlockStore(tmp_path, quota_bytes=10)
    s.put(raw(b"123456"), b"123456")
    s.put(raw(b"123456"), b"123456")
    with pytest.raises(QuotaExceeded, match=r"6 of 10 bytes used, 0 of them pinned.*ipfs gc"):
        s.put(raw(b"abcde"), b"abcde")
    s.put(raw(b"abcd"), b"abcd")  # exactly at the quota
    assert s.used_bytes == 10 and pack_bytes(tmp_path) == 10


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
    assert s.count == 0 and s.used_bytes == 0 and pack_bytes(tmp_path) == 0


def test_gc_refuses_while_a_pinned_dag_lost_a_block(tmp_path):
    s = BlockStore(tmp_path, None)
    root, blocks = add(s, os.urandom(5000))
    s.pin(root)
    leaf = next(c for c, _ in blocks if c.codec == RAW)
    damage(s, leaf, b"rot")
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
    assert pack_bytes(tmp_path) == 3000  # refused puts left no bytes behind
    again = BlockStore(tmp_path, None)
    assert (again.count, again.used_bytes) == (30, 3000)


# -- eviction at the quota (a cache of pulled images) ---------------------------------------
def test_eviction_removes_the_least_recently_used_unpinned_blocks_first(tmp_path):
    now = [1000.0]
    s = BlockStore(tmp_path, quota_bytes=30, evict=True, clock=lambda: now[0])
    old, used, pinned = raw(b"o" * 10), raw(b"u" * 10), raw(b"p" * 10)
    for cid, byte, at in ((pinned, b"p", 600), (old, b"o", 700), (used, b"u", 800)):
        now[0] = at
        s.put(cid, byte * 10)
    s.pin(pinned)
    now[0] = 1000
    s.get(used)  # a read makes it the most recently used
    now[0] = 1050
    s.put(raw(b"n" * 10), b"n" * 10)  # 10 bytes over: the oldest unpinned goes
    assert not s.has(old) and s.has(used) and s.has(pinned)
    assert (s.evicted_blocks, s.evicted_bytes) == (1, 10) and s.used_bytes == 30
    now[0] = 1100
    s.get(pinned)
    s.put(raw(b"m" * 10), b"m" * 10)  # now `used` (read at 1000) is the oldest unpinned
    assert not s.has(used) and s.has(raw(b"n" * 10)) and s.has(pinned)


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


def test_threads_putting_reading_and_deleting_across_packs_never_see_a_wrong_block(
        tmp_path, monkeypatch):
    """Puts, reads and deletes at once over small packs, so packs fill, empty and go while
    other threads read them: a read gives the right bytes or says the block is not there,
    and what is left at the end is exactly what the index says."""
    monkeypatch.setattr(blocks_module, "PACK_BYTES", 4096)
    s = BlockStore(tmp_path, None)
    datas = [os.urandom(700 + i) for i in range(60)]
    errors: list[BaseException] = []
    stop = threading.Event()

    def writer(offset: int) -> None:
        for n in range(300):
            data = datas[(n * 7 + offset) % len(datas)]
            try:
                s.put(raw(data), data)
            except BaseException as exc:  # noqa: BLE001 - collected for the assertion
                errors.append(exc)

    def deleter() -> None:
        n = 0
        while not stop.is_set() and n < 5000:
            s.delete(raw(datas[n % len(datas)]))
            n += 1

    def reader() -> None:
        n = 0
        while not stop.is_set() and n < 5000:
            data = datas[(n * 3) % len(datas)]
            try:
                assert s.get(raw(data)) == data
            except BlockNotFound:
                pass
            except BaseException as exc:  # noqa: BLE001 - collected for the assertion
                errors.append(exc)
            n += 1

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(3)]
    others = [threading.Thread(target=deleter), threading.Thread(target=reader),
              threading.Thread(target=reader)]
    for t in threads + others:
        t.start()
    for t in threads:
        t.join(timeout=60)
    stop.set()
    for t in others:
        t.join(timeout=60)
    assert errors == [] and s.corrupt_removed == 0
    kept = [d for d in datas if s.has(raw(d))]
    assert all(s.get(raw(d)) == d for d in kept)
    assert (s.count, s.used_bytes) == (len(kept), sum(map(len, kept)))
    again = BlockStore(tmp_path, None)
    assert (again.count, again.used_bytes) == (len(kept), sum(map(len, kept)))
    assert all(again.get(raw(d)) == d for d in kept)


def test_a_pack_lost_while_the_node_was_down_drops_its_blocks_and_only_them(
        tmp_path, monkeypatch):
    monkeypatch.setattr(blocks_module, "PACK_BYTES", 100)
    s = BlockStore(tmp_path, None)
    first, second = b"1" * 60, b"2" * 60
    s.put(raw(first), first)
    s.put(raw(second), second)  # in the next pack
    s.close()
    (tmp_path / "packs" / "1.pack").unlink()
    again = BlockStore(tmp_path, None)
    assert not again.has(raw(first)) and again.get(raw(second)) == second
    assert (again.count, again.used_bytes) == (1, 60)
    with pytest.raises(BlockNotFound):
        again.get(raw(first))
