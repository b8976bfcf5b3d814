"""`task publish` on a developer node reaches another node as a signed offer whose image it
can pull; republishing supersedes, `task unpublish` withdraws (real processes, real Docker)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import docker_engine
from meca_node.node.developer import image_tag
from meca_node.sim import Cluster
from meca_node.sim.cluster import child_env
from meca_node.store.taskdir import folder_digest, read_task_folder

pytestmark = [pytest.mark.integration, pytest.mark.docker]

ECHO = Path(__file__).resolve().parents[2] / "examples" / "echo"


def cli(node, *args, timeout=300):
    return subprocess.run([sys.executable, "-m", "meca_node", *args, "--data-dir",
                           str(node.data_dir)], capture_output=True, text=True,
                          timeout=timeout, env=child_env())


def offers_on(node, want, timeout_s=15.0):
    """The node's offers once ``want(offers)`` holds (bounded poll of another process)."""
    deadline = time.monotonic() + timeout_s
    while True:
        offers = json.loads(cli(node, "offers", "--json").stdout)["offers"]
        if want(offers):
            return offers
        assert time.monotonic() < deadline, offers
        time.sleep(0.2)


def test_publish_reaches_another_node_supersede_and_unpublish(tmp_path):
    client = docker_engine("python:3.9-slim")
    folder = tmp_path / "echo"
    shutil.copytree(ECHO, folder)
    with Cluster(tmp_path / "c", 2, advert_interval_s=1.0) as cluster:
        dev, other = cluster.nodes
        cluster.wait_mesh(timeout_s=15)
        r = cli(dev, "task", "publish", str(folder), "--fee", "3", "--quiet")
        assert r.returncode == 0, r.stderr
        assert "PASS" in r.stderr and "offer id" in r.stdout
        first = r.stdout.split("offer id ")[1].split()[0]
        (seen,) = offers_on(other, lambda o: len(o) == 1)
        assert seen["offer_id"] == first and seen["name"] == "echo" and seen["fee"] == 3
        assert seen["environment"] == "docker-cpu" and seen["mem_mib"] == 128
        # the image is there for the taking: the other node loads it over Bitswap
        tag = image_tag(read_task_folder(folder), folder_digest(folder))
        client.images.remove(tag, force=True)
        r = cli(other, "ipfs", "image", "load", seen["image_cid"], "--quiet")
        assert r.returncode == 0, r.stderr
        assert tag in r.stdout
        # a restarted developer node goes on offering what it published
        cluster.kill(dev)
        cluster.restart(dev)
        (again,) = offers_on(dev, lambda o: len(o) == 1)
        assert again["offer_id"] == first and again["mine"]
        # the same name again from the same key supersedes
        r = cli(dev, "task", "publish", str(folder), "--fee", "4", "--no-test", "--quiet")
        assert r.returncode == 0, r.stderr
        (seen,) = offers_on(other, lambda o: len(o) == 1 and o[0]["fee"] == 4)
        assert seen["offer_id"] != first
        r = cli(dev, "task", "unpublish", "echo")
        assert r.returncode == 0 and "withdrew echo" in r.stdout, r.stderr
        offers_on(other, lambda o: o == [])
        r = cli(dev, "task", "unpublish", "echo")
        assert r.returncode == 1 and "offers no task named" in r.stderr


def test_publish_needs_a_running_node_and_says_so(tmp_path):
    r = subprocess.run([sys.executable, "-m", "meca_node", "task", "publish", str(ECHO),
                        "--fee", "1", "--data-dir", str(tmp_path / "nowhere")],
                       capture_output=True, text=True, timeout=60, env=child_env())
    assert r.returncode == 1 and "meca-node start" in r.stderr
