"""A provider that releases other bytes than the output it signed a commitment to: the
client refuses the output, proves the lie to every node with the two provider-signed
messages (a bad_output fraud proof), and no client chooses that provider again."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest

from conftest import docker_engine
from test_run_job import EXAMPLES, cli, published
from test_wallet import views

pytestmark = [pytest.mark.integration, pytest.mark.docker]

LIAR = Path(__file__).with_name("lying_provider.py")


def test_a_lying_provider_is_proven_a_cheat_on_every_node(tmp_path):
    docker_engine("python:3.9-slim")
    folder = tmp_path / "echo"
    shutil.copytree(EXAMPLES / "echo", folder)
    with published(tmp_path, folder, "echo", fee=1, provider_config="price = 1\n",
                   provider_script=LIAR) as cluster:
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
