"""IPFS between real node processes: add on one, fetch over Bitswap on others (CLI)."""

from __future__ import annotations

import random
import subprocess
import sys

import pytest

from conftest import run_cli
from meca_node.sim import Cluster
from meca_node.sim.cluster import child_env

pytestmark = pytest.mark.integration


def cli(node, *args, timeout=120):
    return run_cli(*args, "--data-dir", str(node.data_dir), timeout=timeout)


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
        assert cli(b, "ipfs", "cat", "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku",
                   timeout=60).returncode == 1  # nobody has it: a clear error, not a hang
    assert cluster.exit_codes == {0: 0, 1: 0}


def run_cli_bytes(node, *args) -> bytes:
    r = subprocess.run([sys.executable, "-m", "meca_node", *args, "--data-dir",
                        str(node.data_dir)], capture_output=True, timeout=120, env=child_env())
    assert r.returncode == 0, r.stderr.decode()
    return r.stdout
