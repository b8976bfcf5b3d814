"""Our IPFS against real outside implementations, in the same test:

- UnixFS: our importer's CIDs equal kubo's (CIDv0: the wheel's add takes no options) and
  Helia's set to kubo's settings (CIDv0 and CIDv1) at the chunk and link boundaries and for
  a directory;
- Bitswap: Helia and kubo each fetch a multi-MiB file from a running meca-node, and the
  node fetches one from each (kubo's peers have RSA keys).
"""

from __future__ import annotations

import random
import subprocess
import sys
from pathlib import Path

import peers
import pytest
from conftest import require

from meca_node.ipfs.unixfs import Settings, add_path
from meca_node.sim import Cluster
from meca_node.sim.cluster import child_env

pytestmark = [pytest.mark.integration, pytest.mark.interop]

CHUNK = 262144
FETCH_TIMEOUT_S = 60.0


@pytest.fixture(autouse=True)
def harness() -> None:
    reason = peers.unavailable_reason()
    require(reason is None, reason or "")


def write_random(path: Path, size: int, seed: int) -> Path:
    rng = random.Random(seed)
    with open(path, "wb") as f:
        left = size
        while left:  # in pieces: tens of MiB without holding them twice
            n = min(left, 4 * 1024 * 1024)
            f.write(rng.randbytes(n))
            left -= n
    return path


def ours(path: Path, cid_version: int) -> str:
    return str(add_path(path, lambda cid, block: None, Settings(cid_version=cid_version)).cid)


@pytest.mark.parametrize("size", [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 174 * CHUNK,
                                  174 * CHUNK + 1, 48 * 1024 * 1024 + 7])
def test_file_cids_equal_kubo_and_helia(tmp_path, size):
    path = write_random(tmp_path / "f", size, seed=size)
    v0, v1 = ours(path, 0), ours(path, 1)
    assert v0 == peers.kubo_add(path)
    assert v0 == peers.helia_add(path, 0)
    assert v1 == peers.helia_add(path, 1)


def test_directory_cids_equal_kubo_and_helia(tmp_path):
    root = tmp_path / "tree"
    (root / "sub" / "deeper").mkdir(parents=True)
    (root / "empty-dir").mkdir()
    write_random(root / "a.bin", 3 * CHUNK + 5, 1)
    write_random(root / "sub" / "b.bin", 10, 2)
    write_random(root / "sub" / "deeper" / "c.bin", CHUNK, 3)
    (root / "sub" / "empty.txt").write_bytes(b"")
    (root / "Zed.txt").write_text("capital names sort first\n")
    assert ours(root, 0) == peers.kubo_add(root)
    assert ours(root, 0) == peers.helia_add(root, 0)
    assert ours(root, 1) == peers.helia_add(root, 1)


def meca(node, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "meca_node", *args, "--data-dir",
                           str(node.data_dir)], capture_output=True, text=True,
                          timeout=timeout, env=child_env())


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    with Cluster(tmp_path_factory.mktemp("interop-node"), 1) as cluster:
        yield cluster.nodes[0]


@pytest.mark.parametrize("cid_version", [0, 1])
@pytest.mark.parametrize("outside", ["helia", "kubo"])
def test_outside_peer_fetches_from_our_node(node, tmp_path, outside, cid_version):
    path = write_random(tmp_path / "f.bin", 5 * 1024 * 1024 + 3, seed=10 + cid_version)
    r = meca(node, "ipfs", "add", "--cid-version", str(cid_version), str(path))
    assert r.returncode == 0, r.stderr
    cid = r.stdout.split()[-1]
    fetch = peers.helia_fetch if outside == "helia" else peers.kubo_fetch
    stats = fetch(cid, node.addr, tmp_path / "out.bin", timeout=FETCH_TIMEOUT_S)
    assert stats["bytes"] == path.stat().st_size
    assert (tmp_path / "out.bin").read_bytes() == path.read_bytes()


@pytest.mark.parametrize("outside", ["helia", "kubo"])
def test_our_node_fetches_from_outside_peer(node, tmp_path, outside):
    path = write_random(tmp_path / "f.bin", 5 * 1024 * 1024 + 3, seed=20)
    serve = peers.serve_kubo(path) if outside == "kubo" else peers.serve_helia(path, 1)
    with serve as (_peer_id, multiaddr, cid):
        out = tmp_path / "out.bin"
        r = meca(node, "ipfs", "get", cid, "-o", str(out), "--from", multiaddr, "--quiet")
        assert r.returncode == 0, r.stderr
        assert out.read_bytes() == path.read_bytes()
        assert "fetched" in r.stdout
