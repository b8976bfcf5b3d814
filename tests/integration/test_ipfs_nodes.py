"""IPFS between real node processes: add on one, fetch over Bitswap on others (CLI)."""

from __future__ import annotations

import random
import subprocess
from contextlib import contextmanager
import sys

import pytest

from conftest import run_cli
from meca_node.sim import Cluster
from meca_node.sim.cluster import child_env

pytestmark = pytest.mark.integration


def cli(node, *args, timeout=120):
    return run_cli(*args, "--data-dir", str(node.data_dir), timeout=timeout)


@contextmanager
def two_nodes_sharing(tmp_path, data: bytes):
    """Two node processes in a mesh; node a has added ``data``. Yields (a, b, cid)."""
    (tmp_path / "f.bin").write_bytes(data)
    with Cluster(tmp_path / "c", 2, advert_interval_s=1.0) as cluster:
        a, b = cluster.nodes
        cluster.wait_mesh(timeout_s=15)
        cid = cli(a, "ipfs", "add", "-q", str(tmp_path / "f.bin")).stdout.split()[-1]
        yield a, b, cid


def blob(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


def test_add_on_one_node_cat_and_get_on_another(tmp_path):
    data = blob(3 * 1024 * 1024 + 17, 1)
    (tmp_path / "f.bin").write_bytes(data)
    tree = tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    (tree / "a.txt").write_text("alpha\n")
    (tree / "sub" / "b.bin").write_bytes(blob(300_000, 2))
    with Cluster(tmp_path / "c", 2, advert_interval_s=1.0) as cluster:
        a, b = cluster.nodes
        cluster.wait_mesh(timeout_s=15)
        r = cli(a, "ipfs", "add", str(tmp_path / "f.bin"))
        assert r.returncode == 0, r.stderr
        cid = r.stdout.strip().splitlines()[-1]
        offline = cli(a, "ipfs", "add", "--only-hash", str(tmp_path / "f.bin"))
        assert offline.stdout.strip() == cid  # hashing alone gives the same CID
        assert cli(a, "ipfs", "pin", "ls").stdout.split() == [cid]
        assert run_cli_bytes(b, "ipfs", "cat", cid) == data  # over Bitswap from a
        r = cli(a, "ipfs", "add", "-r", str(tree))
        assert r.returncode == 0, r.stderr
        tree_cid = r.stdout.strip().splitlines()[-1]
        r = cli(b, "ipfs", "get", tree_cid, "-o", str(tmp_path / "out"))
        assert r.returncode == 0, r.stderr
        assert (tmp_path / "out" / "a.txt").read_text() == "alpha\n"
        assert (tmp_path / "out" / "sub" / "b.bin").read_bytes() == blob(300_000, 2)
        stat = cli(a, "ipfs", "stat", "--json")
        assert stat.returncode == 0
        # b keeps what it fetched only until gc: nothing there is pinned
        r = cli(b, "ipfs", "gc")
        assert r.returncode == 0 and "removed" in r.stdout
        r = cli(b, "ipfs", "cat", "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku",
                timeout=60)
        assert r.returncode == 1 and "no connected peer has block" in r.stderr  # no hang
        # a dag-cbor CID: well-formed, but not a codec this node stores
        r = cli(b, "ipfs", "cat", "bafyreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku")
        assert r.returncode == 1 and "codec 0x71 is not supported" in r.stderr, r.stderr
    assert cluster.exit_codes == {0: 0, 1: 0}


def run_cli_bytes(node, *args) -> bytes:
    r = subprocess.run([sys.executable, "-m", "meca_node", *args, "--data-dir",
                        str(node.data_dir)], capture_output=True, timeout=120, env=child_env())
    assert r.returncode == 0, r.stderr.decode()
    return r.stdout


def split_file_between(stores, data: bytes):
    """Import ``data`` and give the root and the first half of the leaves to stores[0],
    the second half to stores[1]; returns the root CID."""
    from meca_node.ipfs import dagpb
    from meca_node.ipfs.unixfs import add_bytes

    blocks = {}
    added = add_bytes(data, lambda cid, block: blocks.setdefault(cid, block))
    leaves = dagpb.link_cids(blocks[added.cid])
    stores[0].put(added.cid, blocks[added.cid])
    half = len(leaves) // 2
    for i, leaf in enumerate(leaves):
        stores[0 if i < half else 1].put(leaf, blocks[leaf])
    return added.cid, half, len(leaves) - half


def test_a_file_split_across_two_peers_is_fetched_from_both(tmp_path):
    from meca_node.ipfs.unixfs import CHUNK_SIZE
    from meca_node.store import BlockStore

    data = blob(16 * CHUNK_SIZE, 3)
    cluster = Cluster(tmp_path / "c", 3, advert_interval_s=1.0)
    cluster.prepare()
    a, b, c = cluster.nodes
    root, on_a, on_b = split_file_between(
        [BlockStore(a.data_dir / "blocks"), BlockStore(b.data_dir / "blocks")], data)
    with cluster:
        cluster.wait_mesh(timeout_s=15)
        r = cli(c, "ipfs", "get", str(root), "-o", str(tmp_path / "out.bin"), "--quiet")
        assert r.returncode == 0, r.stderr
        assert (tmp_path / "out.bin").read_bytes() == data
        got = {line.split()[1].rstrip(":"): int(line.split()[2])
               for line in r.stdout.splitlines() if line.strip().startswith("from ")}
        assert got[a.peer_id] >= on_a * CHUNK_SIZE  # its leaves and the root
        assert got[b.peer_id] == on_b * CHUNK_SIZE
        assert sum(got.values()) == len(data) + (got[a.peer_id] - on_a * CHUNK_SIZE)


def write_config(path, **values):
    path.write_text("".join(f"{k} = {v!r}\n" for k, v in values.items()))
    return path


def test_a_pull_over_quota_fails_clearly_and_resumes_after(tmp_path):
    data = blob(5 * 1024 * 1024, 4)
    (tmp_path / "f.bin").write_bytes(data)
    cluster = Cluster(tmp_path / "c", 2, advert_interval_s=1.0)
    cluster.prepare()
    a, b = cluster.nodes
    conf = write_config(tmp_path / "b.toml", ipfs_quota_mb=2)
    b.args += ["--config", str(conf)]
    with cluster:
        cluster.wait_mesh(timeout_s=15)
        cid = cli(a, "ipfs", "add", "-q", str(tmp_path / "f.bin")).stdout.split()[-1]
        r = cli(b, "ipfs", "get", cid, "-o", str(tmp_path / "out1"), "--quiet")
        assert r.returncode == 1
        assert "quota" in r.stderr and "ipfs gc" in r.stderr
        assert not (tmp_path / "out1").exists()
        held = cli(b, "ipfs", "stat", "--json")
        assert '"blocks": 0' not in held.stdout  # what fitted is kept, each block whole
        cluster.kill(b)
        write_config(conf, ipfs_quota_mb=64)
        cluster.restart(b)
        cluster.wait_mesh(timeout_s=15)
        r = cli(b, "ipfs", "get", cid, "-o", str(tmp_path / "out2"), "--quiet")
        assert r.returncode == 0, r.stderr
        assert (tmp_path / "out2").read_bytes() == data
        assert " 0 already here" not in r.stdout  # resumed from the blocks it had


async def test_a_peer_sending_garbage_is_cut_off_while_the_node_keeps_serving(tmp_path):
    import json
    import os
    import time

    import trio

    from meca_node.ipfs import bitswap
    from meca_node.net import NetConfig, open_net

    data = blob(1024 * 1024, 5)
    with two_nodes_sharing(tmp_path, data) as (a, b, cid):
        async with open_net(os.urandom(32), NetConfig(listen=("/ip4/127.0.0.1/tcp/0",))) as rogue:
            await rogue.connect(a.addr)
            stream = await rogue.open_stream(a.peer_id, bitswap.PROTOCOLS,
                                             max_frame=bitswap.MAX_MESSAGE)
            await stream.send(b"\x09" + bytes(8))  # a fixed64 field: not a Bitswap message
            deadline = time.monotonic() + 10
            while True:  # bounded poll of the other process's state
                stat = json.loads(cli(a, "ipfs", "stat", "--json").stdout)
                if (stat["bitswap"]["peers_cut_off"] == 1
                        and rogue.peer_id not in a.peers()["connected"]):
                    break
                assert time.monotonic() < deadline, stat
                await trio.sleep(0.1)
        assert run_cli_bytes(b, "ipfs", "cat", cid) == data  # everyone else is still served


def test_a_disk_that_fills_mid_pull_fails_clearly_and_the_pull_resumes(tmp_path):
    """Node b's data dir is a real 3 MiB tmpfs: an 8 MiB pull fills it. The error says
    so, no partial block is left, and after the disk grows the same pull finishes from
    the blocks already there."""
    import os

    from conftest import require

    require(os.geteuid() == 0, "mounting a tmpfs needs root")
    data = blob(8 * 1024 * 1024, 6)
    (tmp_path / "f.bin").write_bytes(data)
    cluster = Cluster(tmp_path / "c", 2, advert_interval_s=1.0)
    cluster.prepare()
    a, b = cluster.nodes
    key = (b.data_dir / "node.key").read_bytes()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m,mode=0700", "tmpfs",
                    str(b.data_dir)], check=True, timeout=30)
    try:
        (b.data_dir / "node.key").write_bytes(key)
        (b.data_dir / "node.key").chmod(0o600)
        with cluster:
            cluster.wait_mesh(timeout_s=15)
            cid = cli(a, "ipfs", "add", "-q", str(tmp_path / "f.bin")).stdout.split()[-1]
            r = cli(b, "ipfs", "get", cid, "-o", str(tmp_path / "out1"), "--quiet")
            assert r.returncode == 1
            assert "is full" in r.stderr and "Free space" in r.stderr, r.stderr
            leftovers = [p for p in (b.data_dir / "blocks").rglob(".tmp-*")]
            assert leftovers == []
            subprocess.run(["mount", "-o", "remount,size=64m", str(b.data_dir)], check=True,
                           timeout=30)
            r = cli(b, "ipfs", "get", cid, "-o", str(tmp_path / "out2"), "--quiet")
            assert r.returncode == 0, r.stderr
            assert (tmp_path / "out2").read_bytes() == data
            assert " 0 already here" not in r.stdout  # resumed
    finally:
        subprocess.run(["umount", str(b.data_dir)], timeout=30)


async def test_wrong_blocks_are_dropped_the_liar_cut_off_and_blocks_fetched_elsewhere(
        tmp_path):
    """An in-process peer claims every block and answers each want with random bytes;
    the node drops them (they hash to CIDs nobody asked for), cuts the liar off and gets
    every block from the honest peer."""
    import json
    import os

    import trio

    from meca_node.net import NetConfig, open_net
    from meca_node.net.bitswap import Bitswap

    class Liar:
        def has(self, cid):
            return True

        def get(self, cid):
            return os.urandom(1024)

        def size_of(self, cid):
            return 1024

        def put(self, cid, data, **kw):
            pass

        def sync(self):
            pass

    data = blob(64 * 262144, 7)  # enough wants at the liar to pass the junk limit
    with two_nodes_sharing(tmp_path, data) as (a, b, cid):
        async with open_net(os.urandom(32), NetConfig(listen=("/ip4/127.0.0.1/tcp/0",))) as net:
            async with trio.open_nursery() as nursery:
                await nursery.start(Bitswap(net, Liar()).run)
                liar = f"{net.listen_addrs()[0]}/p2p/{net.peer_id}"
                r = await trio.to_thread.run_sync(
                    lambda: cli(b, "ipfs", "get", cid, "-o", str(tmp_path / "out"),
                                "--from", liar, "--quiet"))
                nursery.cancel_scope.cancel()
        assert r.returncode == 0, r.stderr
        assert (tmp_path / "out").read_bytes() == data
        got = {line.split()[1].rstrip(":"): int(line.split()[2])
               for line in r.stdout.splitlines() if line.strip().startswith("from ")}
        assert set(got) == {a.peer_id}  # nothing the liar sent was kept
        stat = json.loads(cli(b, "ipfs", "stat", "--json").stdout)
        assert stat["bitswap"]["peers_cut_off"] == 1
