"""Paid jobs across separate processes: the provider commits to a result, the client signs
a receipt over the commitment into its chain, the provider takes it into its ledger and
only then releases the output; the client checks the output against what it paid for.
Every node then agrees on every balance: the developer's fee and the provider's price
moved, the supply unchanged."""

from __future__ import annotations

import json
import shutil

import pytest

from conftest import docker_engine
from test_run_job import EXAMPLES, cli, published
from test_wallet import views, wait_balances

from meca_node.store.taskdir import read_task_folder

pytestmark = [pytest.mark.integration, pytest.mark.docker]

PRICE, FEE, JOBS = 3, 2, 3


def test_paid_jobs_move_the_fee_and_the_price_and_every_node_agrees(tmp_path):
    docker_engine("python:3.9-slim")
    folder = tmp_path / "echo"
    shutil.copytree(EXAMPLES / "echo", folder)
    spec = read_task_folder(folder)
    with published(tmp_path, folder, "echo", fee=FEE,
                   provider_config=f"price = {PRICE}\n") as cluster:
        dev, provider, user = cluster.nodes
        keys = [n.status()["public_key"] for n in cluster.nodes]
        supply = views(cluster)[0]["total_supply"]
        for _ in range(JOBS):
            r = cli(user, "run", "echo", "--input", f"@{folder / 'example_input.bin'}",
                    "--max-price", str(PRICE + FEE), "--json")
            assert r.returncode == 0, r.stderr.decode()
            done = json.loads(r.stdout)
            assert done["output"].encode() == spec.example_output
            assert done["paid"] == PRICE + FEE and done["provider"] == provider.peer_id
        vs = wait_balances(cluster, {keys[0]: 1_000_000 + JOBS * FEE,
                                     keys[1]: 1_000_000 + JOBS * PRICE,
                                     keys[2]: 1_000_000 - JOBS * (PRICE + FEE)})
        for v in vs:
            assert sum(v["balances"].values()) + v["outstanding"] == supply
        history = json.loads(cli(user, "wallet", "history", "--json").stdout.decode())
        kinds = [e["kind"] for e in history["entries"]]
        assert kinds.count("Receipt") == JOBS
        # --dry-run: the ranking a job would use, and why others cannot, running nothing
        r = cli(user, "run", "echo", "--dry-run", "--max-price", str(PRICE + FEE), "--json")
        assert r.returncode == 0, r.stderr.decode()
        plan = json.loads(r.stdout)
        assert [p["peer_id"] for p in plan["ranked"]] == [provider.peer_id]
        assert plan["ranked"][0]["price"] == PRICE and set(plan["ranked"][0]["parts"]) == set(
            plan["weights"])
        r = cli(user, "run", "echo", "--dry-run", "--max-price", "1")
        assert r.returncode == 1, r.stderr.decode()
        assert f"asks {PRICE} + fee {FEE} > max 1" in r.stdout.decode()
        assert f"no provider fits: 1 host: 1 asks {PRICE} + fee {FEE}".encode() in r.stderr
        # a max price the client's balance cannot cover is refused by the provider
        r = cli(user, "run", "echo", "--input", "{}", "--max-price", "2000000")
        assert r.returncode == 1 and b"balance" in r.stderr, r.stderr.decode()
