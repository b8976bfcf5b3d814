"""`meca-node wallet` across 3 real node processes: a payment, its automatic receive, a
payment onward out of it; every node agrees on every balance; an overdraft is refused before
anything is signed; the supply never changes; a restart keeps the balances."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from meca_node.sim import Cluster
from meca_node.sim.cluster import child_env

pytestmark = pytest.mark.integration


def cli(node, *args, timeout=60):
    return subprocess.run([sys.executable, "-m", "meca_node", *args, "--data-dir",
                           str(node.data_dir)], capture_output=True, text=True,
                          timeout=timeout, env=child_env())


def views(cluster):
    return [n.client().get("/v1/wallet/balances") for n in cluster.nodes]


def wait_balances(cluster, want: dict[str, int], timeout_s: float = 15.0) -> list[dict]:
    """Every node's view once each shows ``want`` (pubkey hex -> balance) and nothing
    outstanding (a bounded poll of other processes)."""
    deadline = time.monotonic() + timeout_s
    while True:
        vs = views(cluster)
        if all(v["outstanding"] == 0 and all(v["balances"].get(k) == b
                                             for k, b in want.items()) for v in vs):
            return vs
        assert time.monotonic() < deadline, vs
        time.sleep(0.2)


def test_pay_receive_pay_on_and_every_node_agrees(tmp_path):
    with Cluster(tmp_path / "c", 3, advert_interval_s=1.0, roles=("client",)) as cluster:
        n0, n1, n2 = cluster.nodes
        keys = [n.status()["public_key"] for n in cluster.nodes]
        cluster.wait_mesh(timeout_s=20)
        supply = views(cluster)[0]["total_supply"]
        assert supply == 3_000_000

        r = cli(n0, "wallet", "send", n1.peer_id, "5000", "--memo", "welcome")
        assert r.returncode == 0, r.stderr
        assert "sent 5000" in r.stdout
        wait_balances(cluster, {keys[0]: 995_000, keys[1]: 1_005_000})
        # node1 received it by itself and can spend it: 1,005,000 > its genesis 1,000,000
        r = cli(n1, "wallet", "send", keys[2], "1004000")
        assert r.returncode == 0, r.stderr
        vs = wait_balances(cluster, {keys[0]: 995_000, keys[1]: 1000, keys[2]: 2_004_000})
        for v in vs:
            assert sum(v["balances"].values()) + v["outstanding"] == supply
            assert v["forked"] == []

        # an overdraft is refused with a clear error, and nothing was signed
        r = cli(n1, "wallet", "send", n2.peer_id, "1001")
        assert r.returncode == 1 and "overdraft" in r.stderr, (r.stdout, r.stderr)
        assert n1.client().get("/v1/wallet/balance")["next_seq"] == 2  # its receive and its send only
        r = cli(n1, "wallet", "balance", "--json")
        assert json.loads(r.stdout)["balance"] == 1000
        r = cli(n0, "wallet", "balance", n2.peer_id)
        assert r.returncode == 0 and "2004000" in r.stdout, r.stdout

        r = cli(n1, "wallet", "history", "--json")
        kinds = [e["kind"] for e in json.loads(r.stdout)["entries"]]
        assert kinds == ["Receive", "Transfer"]
        r = cli(n1, "wallet", "history")
        assert r.returncode == 0 and "+5000" in r.stdout and "-1004000" in r.stdout, r.stdout
        for node in cluster.nodes:
            r = cli(node, "wallet", "verify")
            assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stdout

        # a node killed with SIGKILL comes back with the same balances
        cluster.kill(n2)
        cluster.restart(n2)
        v = n2.client().get("/v1/wallet/balances")
        assert v["balances"][keys[2]] == 2_004_000 and v["balances"][keys[1]] == 1000
        assert sum(v["balances"].values()) + v["outstanding"] == supply
