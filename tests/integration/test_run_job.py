"""The walking skeleton: a developer publishes, a provider pulls the image over IPFS and
runs it in Docker, a client gets the answer; separate processes, no server."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

from conftest import docker_engine
from test_publish import offers_on
from meca_node.node.developer import image_tag
from meca_node.sim import Cluster
from meca_node.sim.cluster import child_env
from meca_node.store.taskdir import folder_digest, read_task_folder

pytestmark = [pytest.mark.integration, pytest.mark.docker]

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def cli(node, *args, timeout=300):
    return subprocess.run([sys.executable, "-m", "meca_node", *args, "--data-dir",
                           str(node.data_dir)], capture_output=True, timeout=timeout,
                          env=child_env())


def wait_offer(node, name, timeout_s=15.0):
    offers_on(node, lambda offers: any(o["name"] == name for o in offers), timeout_s)


@contextmanager
def published(tmp_path, folder, name, fee=0, provider_config="", provider_script=None):
    """A developer, a provider and a client (separate processes, so the image travels);
    the developer has published ``folder`` (--no-test) and the client sees the offer.
    ``provider_config`` is appended to the provider's config.toml; ``provider_script``
    (a Python file that behaves as ``meca-node``) runs the provider instead."""
    roles = [("developer",), ("provider",), ("client",)]
    cluster = Cluster(tmp_path / "c", 3, advert_interval_s=1.0, roles=roles)
    cluster.prepare()
    with open(cluster.nodes[1].data_dir / "config.toml", "a") as f:
        f.write(provider_config)
    if provider_script is not None:  # [python, -m, meca_node, start, ...]
        args = cluster.nodes[1].args
        cluster.nodes[1].args = [args[0], str(provider_script), *args[3:]]
    with cluster:
        dev, provider, user = cluster.nodes
        cluster.wait_mesh(timeout_s=15)
        r = cli(dev, "task", "publish", str(folder), "--fee", str(fee), "--no-test", "--quiet")
        assert r.returncode == 0, r.stderr.decode()
        wait_offer(user, name)
        yield cluster


@contextmanager
def published_echo(tmp_path, fee, provider_config="", provider_script=None):
    """``published`` with a copy of examples/echo (the engine must be up); yields the
    cluster and the folder."""
    docker_engine("python:3.9-slim")
    folder = tmp_path / "echo"
    shutil.copytree(EXAMPLES / "echo", folder)
    with published(tmp_path, folder, "echo", fee, provider_config,
                   provider_script) as cluster:
        yield cluster, folder


def wait_advert(node, peer_id, ok, timeout_s=15.0):
    """``peer_id``'s advert as ``node`` sees it, once ``ok(advert)`` (bounded poll)."""
    deadline = time.monotonic() + timeout_s
    while True:
        ads = json.loads(cli(node, "peers", "--json").stdout)["adverts"]
        ad = next((a for a in ads if a["peer_id"] == peer_id), None)
        if ad is not None and ok(ad):
            return ad
        assert time.monotonic() < deadline, ad
        time.sleep(0.2)


def test_publish_then_run_cold_and_warm_with_the_exact_output(tmp_path):
    client = docker_engine("python:3.9-slim")
    folder = tmp_path / "echo"
    shutil.copytree(EXAMPLES / "echo", folder)
    spec = read_task_folder(folder)
    roles = [("developer",), ("provider",), ("client",)]  # the image must travel
    cluster = Cluster(tmp_path / "c", 3, advert_interval_s=1.0, roles=roles)
    cluster.prepare()
    with (cluster.nodes[0].data_dir / "config.toml").open("a") as f:
        f.write("sim_faults = true\n")  # to slow the developer's writes below
    with cluster:
        dev, provider, user = cluster.nodes
        cluster.wait_mesh(timeout_s=15)
        r = cli(dev, "task", "publish", str(folder), "--fee", "2", "--quiet")
        assert r.returncode == 0, r.stderr.decode()
        wait_offer(user, "echo")
        client.images.remove(image_tag(spec, folder_digest(folder)), force=True)  # cold
        # --timeout bounds the job, not the pull of the image. The image (~150 MB) leaves
        # the developer in several hundred Bitswap writes; 10 ms before each makes the
        # pull outlast --timeout on a machine of any speed.
        dev.client().post("/v1/sim/faults", {"delay_ms": 10})
        r = cli(user, "run", "echo", "--input", f"@{folder / 'example_input.bin'}",
                "--max-price", "5", "--timeout", "3", "--json")
        dev.client().post("/v1/sim/faults", {"delay_ms": 0})
        assert r.returncode == 0, r.stderr.decode()
        done = json.loads(r.stdout)
        assert done["output"].encode() == spec.example_output
        assert b"==> pulling" in r.stderr and b"running" in r.stderr, r.stderr.decode()
        assert done["provider"] == provider.peer_id  # ran there, on an image it pulled
        assert done["pull_seconds"] > 3
        assert done["seconds"] > 3  # longer than --timeout: the pull and load did not count
        print(f"cold run: {done['seconds']:.2f} s, {done['pull_seconds']:.2f} s of it pulling")
        r = cli(user, "run", "echo", "--input", f"@{folder / 'example_input.bin'}",
                "--max-price", "5")  # warm: the image is here now
        assert r.returncode == 0, r.stderr.decode()
        assert r.stdout == spec.example_output and b"pulling" not in r.stderr
        image_cid = next(o["image_cid"] for o in json.loads(
            cli(user, "offers", "--json").stdout)["offers"] if o["name"] == "echo")
        ad = wait_advert(user, provider.peer_id, lambda ad: image_cid in ad["cached_images"])
        assert ad["free"] == json.loads(cli(provider, "status", "--json").stdout)["offered"]
        r = cli(user, "run", "echo", "--input", "{}", "--max-price", "1")
        assert r.returncode == 1 and b"no connected provider" in r.stderr
        assert b"asks 0 + fee 2 > max 1" in r.stderr  # each provider's reason
        r = cli(user, "run", "nope", "--input", "{}")
        assert r.returncode == 1 and b"no live offer" in r.stderr


SLOW = """\
import time
from flask import Flask, request
app = Flask(__name__)
print("meca-init-done", flush=True)

@app.route("/", methods=["POST"])
def entry():
    time.sleep(120)
    return "too late"
"""


def test_a_client_that_goes_away_mid_job_stops_the_container_and_frees_the_provider(
        tmp_path):
    client = docker_engine("python:3.9-slim")
    folder = tmp_path / "slow"
    shutil.copytree(EXAMPLES / "echo", folder)
    (folder / "name.txt").write_text("slow\n")
    app = next((folder / "src").glob("*.py"))
    app.write_text(SLOW)
    with published(tmp_path, folder, "slow") as cluster:
        dev, provider, user = cluster.nodes
        runner = subprocess.Popen([sys.executable, "-m", "meca_node", "run", "slow",
                                   "--input", "{}", "--timeout", "300", "--data-dir",
                                   str(user.data_dir)], stdout=subprocess.DEVNULL,
                                  stderr=subprocess.PIPE, env=child_env())
        try:
            for line in runner.stderr:  # ends with the CLI: bounded by its own life
                if b"running" in line:
                    break
            hosts = [n for n in cluster.nodes[:2]]
            busy = [n for n in hosts if n.status()["jobs_running"] == 1]
            assert len(busy) == 1
            host = busy[0]
            assert client.containers.list(filters={"label": f"meca-node.pid={host.proc.pid}"})
            cluster.kill(user)  # the client node dies mid-job
            deadline = time.monotonic() + 30
            while host.status()["jobs_running"]:  # bounded poll of the provider
                assert time.monotonic() < deadline, "the provider kept the job"
                time.sleep(0.2)
            assert client.containers.list(
                all=True, filters={"label": f"meca-node.pid={host.proc.pid}"}) == []
            assert host.status()["free"]["mem_mib"] > 0
        finally:
            runner.kill()
            runner.wait(timeout=30)


DOUBLE = """\
from flask import Flask, request
app = Flask(__name__)
print("meca-init-done", flush=True)

@app.route("/", methods=["POST"])
def entry():
    return request.get_data() * 2
"""


def test_input_and_output_over_the_inline_cap_travel_as_cids(tmp_path):
    """1.5 MiB in, 3 MiB out: both over the ~1 MiB inline cap, so the provider fetches the
    input from the client over Bitswap and the client the output from the provider; the
    bytes arrive exactly, and a file over the 64 MiB cap is refused before anything is
    sent."""
    import os

    docker_engine("python:3.9-slim")
    folder = tmp_path / "double"
    shutil.copytree(EXAMPLES / "echo", folder)
    (folder / "name.txt").write_text("double\n")
    next((folder / "src").glob("*.py")).write_text(DOUBLE)
    data = os.urandom(1536 * 1024)
    (tmp_path / "in.bin").write_bytes(data)
    with published(tmp_path, folder, "double") as cluster:
        dev, provider, user = cluster.nodes
        r = cli(user, "run", "double", "--input", f"@{tmp_path / 'in.bin'}", "--max-price",
                "0")
        assert r.returncode == 0, r.stderr.decode()
        assert r.stdout == data * 2
        assert b"% input baf" in r.stderr, r.stderr.decode()  # fetched by CID
        with open(tmp_path / "huge.bin", "wb") as f:
            f.truncate(64 * 1024 * 1024 + 1)
        r = cli(user, "run", "double", "--input", f"@{tmp_path / 'huge.bin'}")
        assert r.returncode == 1 and b"over the cap" in r.stderr, r.stderr.decode()
        assert provider.status()["jobs_running"] == 0
