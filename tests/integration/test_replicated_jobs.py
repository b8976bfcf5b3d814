"""Replicated runs on real processes with distinct 127.0.0.x addresses: a provider that
computes wrong answers (and signs honest-looking commitments to them) is outvoted by
``--replicas 3``: the client returns the majority's answer, pays the two honest providers,
refuses the liar with their commitments as proof, and its score of the liar drops."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from conftest import docker_engine, wait_for
from test_run_job import EXAMPLES, cli, wait_offer
from test_wallet import wait_balances
from meca_node.sim import Cluster

pytestmark = [pytest.mark.integration, pytest.mark.docker]

WRONG = Path(__file__).with_name("wrong_provider.py")


def test_replicas_outvote_a_provider_with_wrong_answers(tmp_path):
    docker_engine("python:3.9-slim")
    folder = tmp_path / "echo"
    shutil.copytree(EXAMPLES / "echo", folder)
    roles = [("developer",), ("provider",), ("provider",), ("provider",), ("client",)]
    cluster = Cluster(tmp_path / "c", 5, advert_interval_s=1.0, roles=roles)
    cluster.prepare()
    for n in cluster.nodes[1:4]:
        with open(n.data_dir / "config.toml", "a") as f:
            f.write("price = 1\n")
    args = cluster.nodes[3].args  # [python, -m, meca_node, start, ...]
    cluster.nodes[3].args = [args[0], str(WRONG), *args[3:]]
    with cluster:
        dev, good1, good2, liar, user = cluster.nodes
        keys = [n.status()["public_key"] for n in cluster.nodes]
        assert len({n.addr.split("/")[2] for n in cluster.nodes}) == 5  # distinct 127.0.0.x
        cluster.wait_mesh(timeout_s=20)
        r = cli(dev, "task", "publish", str(folder), "--fee", "1", "--no-test", "--quiet")
        assert r.returncode == 0, r.stderr.decode()
        wait_offer(user, "echo")
        want = (folder / "example_output.bin").read_bytes()
        job = ("run", "echo", "--input", f"@{folder / 'example_input.bin'}",
               "--max-price", "2", "--timeout", "60")

        # a 3-way run is placed only on providers the client has adverts of
        wait_for("three connected providers", lambda: sum(
            h["connected"] for h in json.loads(cli(user, "hosts", "--json").stdout)["hosts"])
            >= 3, timeout_s=30)
        r = cli(user, *job, "--replicas", "3", "--json")
        assert r.returncode == 0, r.stderr.decode()
        done = json.loads(r.stdout)
        assert done["output"].encode() == want  # the majority's answer
        parts = {p["provider"]: p for p in done["replicas"]}
        assert set(parts) == {good1.peer_id, good2.peer_id, liar.peer_id}
        assert parts[liar.peer_id]["outcome"] == "refused" and parts[liar.peer_id]["paid"] == 0
        assert parts[good1.peer_id]["outcome"] == parts[good2.peer_id]["outcome"] == "paid"
        assert parts[good1.peer_id]["sha256"] == parts[good2.peer_id]["sha256"] \
            != parts[liar.peer_id]["sha256"]
        assert done["paid"] == 4  # two providers at price 1 + fee 1 each

        # money: two prices and two fees moved, the liar got nothing; every node agrees
        wait_balances(cluster, {keys[0]: 1_000_002, keys[1]: 1_000_001,
                                keys[2]: 1_000_001, keys[3]: 1_000_000,
                                keys[4]: 999_996}, timeout_s=30)
        # the client's score of the liar dropped below both honest providers
        hosts = {h["peer_id"]: h for h in json.loads(cli(user, "hosts", "--json").stdout)
                 ["hosts"]}
        assert hosts[liar.peer_id]["reputation"] < min(hosts[good1.peer_id]["reputation"],
                                                       hosts[good2.peer_id]["reputation"])
        # the liar took the refusal as a proof: the client is not refused there later
        r = cli(user, *job, "--provider", liar.peer_id, "--json")
        assert r.returncode == 0, r.stderr.decode()
        assert json.loads(r.stdout)["output"] == '{"wrong": true}'

        # more replicas than providers on distinct addresses: said so, nothing runs
        r = cli(user, *job, "--replicas", "4", "--json")
        assert r.returncode != 0 and b"needs 4 providers" in r.stderr, r.stderr.decode()
