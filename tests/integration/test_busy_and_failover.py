"""The client side when providers are busy or die, on separate processes: a job whose only
provider is busy waits (showing that it waits) and completes; a provider killed mid-job
makes the client finish the job on another provider, paying once."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from contextlib import contextmanager
from types import SimpleNamespace

import pytest

from conftest import docker_engine, wait_for
from test_run_job import EXAMPLES, cli, wait_advert, wait_offer
from test_wallet import wait_balances
from meca_node.sim import Cluster
from meca_node.sim.cluster import child_env

pytestmark = [pytest.mark.integration, pytest.mark.docker]

SLEEPY_APP = '''import time

from flask import Flask, request

app = Flask(__name__)
print("meca-init-done", flush=True)


@app.route("/", methods=["POST"])
def entry():
    print("sleepy got", request.json["input"], flush=True)  # before the reply: in its log
    time.sleep(float(request.json.get("sleep", 0)))
    return request.json["input"]
'''


def sleepy_task(tmp_path):
    """examples/echo, but its app sleeps ``sleep`` seconds before answering."""
    folder = tmp_path / "sleepy"
    shutil.copytree(EXAMPLES / "echo", folder)
    (folder / "src" / "flask_app.py").write_text(SLEEPY_APP)
    (folder / "name.txt").write_text("sleepy\n")
    return folder


@contextmanager
def network(tmp_path, providers: list[str]):
    """A developer, providers (each with its config.toml text) and a client; ``sleepy``
    published with fee 1 and seen by the client."""
    roles = [("developer",)] + [("provider",)] * len(providers) + [("client",)]
    cluster = Cluster(tmp_path / "c", len(roles), advert_interval_s=1.0, roles=roles)
    cluster.prepare()
    for node, config in zip(cluster.nodes[1:], providers):
        with open(node.data_dir / "config.toml", "a") as f:
            f.write(config)
    with cluster:
        cluster.wait_mesh(timeout_s=20)
        r = cli(cluster.nodes[0], "task", "publish", str(sleepy_task(tmp_path)), "--fee", "1",
                "--no-test", "--quiet")
        assert r.returncode == 0, r.stderr.decode()
        wait_offer(cluster.nodes[-1], "sleepy")
        yield cluster


def start_run(node, payload: dict, *args) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "meca_node", "run", "sleepy", "--input", json.dumps(payload),
         "--max-price", "5", "--data-dir", str(node.data_dir), *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=child_env())


def wait_line(proc: subprocess.Popen, needle: bytes, timeout_s: float) -> list[bytes]:
    """stderr lines of ``proc`` up to the one holding ``needle`` (bounded)."""
    lines: list[bytes] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        lines.append(line)
        if needle in line:
            return lines
    raise AssertionError(f"no {needle!r} in {lines}")


@pytest.mark.parametrize(("queue", "told"), [
    ("", [b"busy: joining its queue", b"==> queued place 1 of 1 in the queue"]),
    # no queue at the provider: the job waits in the client node's own waiting room
    ("queue_max = 0\n", [b"busy; trying again elsewhere", b"==> queued place 1 of 1 here"]),
], ids=["provider-queue", "client-waiting-room"])
def test_a_job_whose_only_provider_is_busy_waits_and_completes(tmp_path, queue, told):
    docker_engine("python:3.9-slim")
    # the provider offers half a CPU: one sleepy job (0.5 CPU) at a time
    with network(tmp_path, ["price = 1\noffer_cpu = 0.5\n" + queue]) as cluster:
        user = cluster.nodes[-1]
        first = start_run(user, {"input": "first", "sleep": 6})
        try:
            wait_line(first, b"==> running", 120)  # the provider is busy from here
            # and the client knows it from the provider's advert (sent within a second
            # of the change): the second job then joins a busy provider's queue
            wait_advert(user, cluster.nodes[1].peer_id, lambda ad: ad["free"]["cpu"] < 0.5)
            t0 = time.monotonic()
            second = start_run(user, {"input": "second"}, "--timeout", "60")
            out, err = second.communicate(timeout=120)
            assert second.returncode == 0, err.decode()
            assert out == b"second"
            for line in told:  # where it waited, and its place there
                assert line in err, err.decode()
            assert first.wait(timeout=60) == 0 and first.stdout.read() == b"first"
            assert time.monotonic() - t0 > 2  # it waited for the first job
        finally:
            first.kill()
            first.wait(timeout=10)


def test_a_provider_killed_mid_job_the_job_completes_on_another_paid_once(tmp_path):
    docker_engine("python:3.9-slim")
    with network(tmp_path, ["price = 1\n", "price = 2\n"]) as cluster:
        dev, cheap, dear, user = cluster.nodes
        keys = {n.index: n.status()["public_key"] for n in cluster.nodes}
        for p in (cheap, dear):  # both advertise before the run: the cheap one is first
            wait_for(f"{p.peer_id}'s advert", lambda p=p: any(
                a["peer_id"] == p.peer_id and a.get("environments")
                for a in user.peers()["adverts"]), timeout_s=30)
        run = start_run(user, {"input": "done", "sleep": 3}, "--json")
        try:
            wait_line(run, b"==> running", 120)
            cluster.kill(cheap)  # SIGKILL mid-job, before any commitment or receipt
            out, err = run.communicate(timeout=180)
        finally:
            run.kill()
            run.wait(timeout=10)
        assert run.returncode == 0, err.decode()
        done = json.loads(out)
        assert done["output"] == "done" and done["provider"] == dear.peer_id
        assert done["paid"] == 3  # the dear provider's 2 + fee 1, once
        assert b"trying again elsewhere" in err, err.decode()
        scores = {h["peer_id"]: h for h in json.loads(cli(user, "hosts", "--json").stdout)[
            "hosts"]}  # the failure and the success went into the client's scores
        assert scores[cheap.peer_id]["reputation"] < 0.5 < scores[dear.peer_id]["reputation"]
        assert scores[cheap.peer_id]["jobs"] == scores[dear.peer_id]["jobs"] == 1
        live = [n for n in cluster.nodes if n is not cheap]
        wait_balances(SimpleNamespace(nodes=live),
                      {keys[0]: 1_000_001, keys[2]: 1_000_002, keys[3]: 999_997},
                      timeout_s=30)
