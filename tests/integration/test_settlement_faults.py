"""Providers that fail the fair exchange, as separate processes: one that releases other
bytes than the output it signed a commitment to (the client proves the lie to every node
with a bad_output fraud proof, and no client chooses it again), and one killed with SIGKILL
between taking the receipt and releasing the output (nothing is lost)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from test_run_job import cli, published_echo
from test_wallet import views, wait_balances

pytestmark = [pytest.mark.integration, pytest.mark.docker]

LIAR = Path(__file__).with_name("lying_provider.py")


def test_a_lying_provider_is_proven_a_cheat_on_every_node(tmp_path):
    with published_echo(tmp_path, 1, "price = 1\n", LIAR) as (cluster, folder):
        dev, provider, user = cluster.nodes
        key = provider.status()["public_key"]
        job = ("run", "echo", "--input", f"@{folder / 'example_input.bin'}", "--max-price", "2")
        r = cli(user, *job)
        err = r.stderr.decode()
        assert r.returncode == 1, err
        assert "does not match its signed commitment" in err and "proof was gossiped" in err
        deadline = time.monotonic() + 10
        while not all(key in v.get("cheats", []) for v in views(cluster)):
            assert time.monotonic() < deadline, views(cluster)
            time.sleep(0.2)
        # never chosen again, with the reason said
        r = cli(user, *job)
        assert r.returncode != 0 and b"proven cheat" in r.stderr, r.stderr.decode()
        cluster.kill(user)
        cluster.restart(user)  # the proof is kept
        assert key in user.client().get("/v1/wallet/balances")["cheats"]
        liar = next(h for h in json.loads(cli(user, "hosts", "--json").stdout)["hosts"]
                    if h["peer_id"] == provider.peer_id)  # the client's score, kept on disk
        assert liar["reputation"] < 0.05 and liar["refused"] == "cheat"


CRASHER = Path(__file__).with_name("crashing_provider.py")


def test_a_provider_killed_between_receipt_and_output_loses_nothing(tmp_path):
    """kill -9 of the provider after it stored the client's receipt and before the output:
    the client is told it paid and what it holds; after the restart the provider still has
    the receipt, receives its price, and every node agrees on every balance."""
    with published_echo(tmp_path, 1, "price = 1\n", CRASHER) as (cluster, folder):
        dev, provider, user = cluster.nodes
        keys = [n.status()["public_key"] for n in cluster.nodes]
        r = cli(user, "run", "echo", "--input", f"@{folder / 'example_input.bin'}",
                "--max-price", "2")
        err = r.stderr.decode()
        assert r.returncode == 1 and "We had paid 2" in err, err
        assert (provider.data_dir / "crashed-after-receipt").exists()
        provider.proc.wait(timeout=10)
        assert provider.proc.returncode == -9
        cluster.restart(provider)
        history = json.loads(cli(provider, "wallet", "history", keys[2], "--json").stdout)
        assert [e["kind"] for e in history["entries"]] == ["Receipt"]
        wait_balances(cluster, {keys[0]: 1_000_001, keys[1]: 1_000_001, keys[2]: 999_998},
                      timeout_s=30)


FLAKY = Path(__file__).with_name("flaky_provider.py")


def test_a_stream_broken_after_payment_is_recovered_by_asking_again(tmp_path):
    """The provider resets the stream after taking the receipt, before the output: the
    client asks it again with the same job id and gets the very output it paid for, from
    what the provider kept (no second run, no second payment)."""
    with published_echo(tmp_path, 1, "price = 1\n", FLAKY) as (cluster, folder):
        dev, provider, user = cluster.nodes
        keys = [n.status()["public_key"] for n in cluster.nodes]
        r = cli(user, "run", "echo", "--input", f"@{folder / 'example_input.bin'}",
                "--max-price", "2", "--json")
        err = r.stderr.decode()
        assert r.returncode == 0, err
        assert "recovering" in err, err
        done = json.loads(r.stdout)
        assert done["output"].encode() == (folder / "example_output.bin").read_bytes()
        assert done["paid"] == 2 and done["provider"] == provider.peer_id
        history = json.loads(cli(user, "wallet", "history", "--json").stdout)
        assert [e["kind"] for e in history["entries"]] == ["Receipt"]  # paid once
        wait_balances(cluster, {keys[0]: 1_000_001, keys[1]: 1_000_001, keys[2]: 999_998},
                      timeout_s=30)
