"""A provider stopping for good and a provider crashing, with separate node processes and
real containers: SIGTERM drains (no new jobs, the running one finishes, exit 0); a second
SIGTERM stops at once and its container goes with it; after kill -9 of the provider and
the client mid-job, the next start removes the orphaned container, frees the reservation
and keeps every receipt, pin and job record; the same after kill -9 of the provider and of
the Docker engine (the one set-up started, restarted the way set-up starts it)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

from conftest import docker_engine, require, wait_for
from meca_node.sim import Cluster
from meca_node.sim.cluster import child_env
from test_job_faults import containers_of, status_json, task_folder, wait_running, wait_whole
from test_run_job import cli, wait_offer

pytestmark = [pytest.mark.integration, pytest.mark.docker]

#: answers after ``seconds`` from the input (default 4)
NAPPER = """\
import time
from flask import Flask, request
app = Flask(__name__)
print("meca-init-done", flush=True)

@app.route("/", methods=["POST"])
def entry():
    seconds = float((request.get_json(force=True) or {}).get("seconds", 4))
    time.sleep(seconds)
    return {"slept": seconds}
"""
GRACE_S = 30
ROOT = Path(__file__).resolve().parents[2]


def start_job(node, task: str, seconds: float, timeout_s: float) -> subprocess.Popen:
    """``meca-node run TASK`` in the background: output on stdout, progress on stderr."""
    return subprocess.Popen([sys.executable, "-m", "meca_node", "run", task, "--input",
                             json.dumps({"seconds": seconds}), "--timeout", str(timeout_s),
                             "--max-price", "10", "--data-dir", str(node.data_dir)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=child_env())


def ledger_view(node, of: str) -> tuple[list, int]:
    """(the account chain of peer ``of``, its balance) as ``node`` knows them."""
    r = cli(node, "wallet", "history", of, "--json")
    assert r.returncode == 0, r.stderr.decode()
    hist = json.loads(r.stdout)
    return hist["entries"], hist["balance"]


def kept(before: tuple[list, int], after: tuple[list, int]) -> bool:
    """Every entry is still there (more may have come: receives signed since) and the
    balance is the same (the crashed job was never paid)."""
    return all(e in after[0] for e in before[0]) and before[1] == after[1]


def pins(node) -> set[str]:
    r = cli(node, "ipfs", "pin", "ls")
    assert r.returncode == 0, r.stderr.decode()
    return set(r.stdout.decode().split())


@contextmanager
def napper_on_a_provider(tmp_path, name: str, drain_grace_s: float = 0.0):
    """A developer, a provider and a client; ``name`` (the NAPPER app, fee 1) published
    and run once, so its image is on the provider. Yields the cluster and what the
    provider offers."""
    folder = task_folder(tmp_path, "wordcount", name, NAPPER)
    roles = [("developer",), ("provider",), ("client",)]
    with Cluster(tmp_path / "c", 3, advert_interval_s=1.0, roles=roles,
                 drain_grace_s=drain_grace_s) as cluster:
        dev, provider, user = cluster.nodes
        cluster.wait_mesh(timeout_s=20)
        r = cli(dev, "task", "publish", str(folder), "--fee", "1", "--no-test", "--quiet")
        assert r.returncode == 0, r.stderr.decode()
        wait_offer(user, name)
        r = cli(user, "run", name, "--input", '{"seconds": 0}', "--max-price", "10")
        assert r.returncode == 0, r.stderr.decode()  # the image is on the provider now
        yield cluster, status_json(provider)["offered"]


def test_sigterm_drains_then_a_second_stops_at_once_and_kill_9_recovers(tmp_path):
    engine = docker_engine("python:3.9-slim")
    with napper_on_a_provider(tmp_path, "napper", GRACE_S) as (cluster, offered):
        dev, provider, user = cluster.nodes

        # 1. SIGTERM while a job runs: no new jobs, the job finishes, exit 0 in the grace
        runner = start_job(user, "napper", 6, 120)
        try:
            assert b"running" in wait_running(runner)
            t0 = time.monotonic()
            provider.proc.send_signal(signal.SIGTERM)
            # it offers nothing any more: the advert others see says so
            wait_for("the draining provider's advert offers nothing",
                     lambda: any(a["peer_id"] == provider.peer_id and a["free"]["cpu"] == 0
                                 and a["free"]["mem_mib"] == 0
                                 for a in user.peers()["adverts"]), 10)
            assert provider.proc.poll() is None  # still finishing the job
            out, err = runner.communicate(timeout=60)
        finally:
            runner.kill()
            runner.wait(timeout=30)
        assert runner.returncode == 0, err.decode()
        assert json.loads(out) == {"slept": 6}
        rc = provider.proc.wait(timeout=GRACE_S)
        elapsed = time.monotonic() - t0
        assert rc == 0, cluster.tail(provider)
        assert elapsed < GRACE_S, elapsed
        log = provider.log_path.read_text()
        assert "draining" in log and "every running job finished" in log, log[-2000:]
        assert not containers_of(engine, provider), "a container outlived its provider"

        # 2. SIGTERM, then SIGTERM again: the running job's container stops at once
        cluster.restart(provider)
        wait_whole(provider, user)
        runner = start_job(user, "napper", 300, 60)
        try:
            assert b"running" in wait_running(runner)
            assert containers_of(engine, provider, all_=False)
            provider.proc.send_signal(signal.SIGTERM)
            wait_for("the provider says it drains (again: its log goes on from part 1)",
                     lambda: provider.log_path.read_text().count("signal again to stop") == 2,
                     10)
            t0 = time.monotonic()
            provider.proc.send_signal(signal.SIGTERM)
            rc = provider.proc.wait(timeout=15)
            assert rc == 0, cluster.tail(provider)
            assert time.monotonic() - t0 < 10
            assert not containers_of(engine, provider), "the stopped job's container is left"
        finally:
            runner.kill()
            runner.wait(timeout=30)

        # 3. kill -9 of the provider and the client mid-job: the next start cleans up and
        # loses nothing
        cluster.restart(provider)
        wait_whole(provider, user)
        # the receipts the client signed (two paid jobs), as the provider and the client
        # keep them
        before_p, before_u = ledger_view(provider, user.peer_id), ledger_view(user, user.peer_id)
        (tmp_path / "keep.txt").write_bytes(b"pinned before the crash\n")
        r = cli(provider, "ipfs", "add", str(tmp_path / "keep.txt"))  # adding pins it
        assert r.returncode == 0, r.stderr.decode()
        pins_before = pins(provider)
        assert len(before_p[0]) == 2 and before_p == before_u and pins_before
        jobs_before = json.loads(cli(user, "job", "list", "--json").stdout)["jobs"]
        runner = start_job(user, "napper", 300, 120)
        try:
            assert b"running" in wait_running(runner)
            orphans = containers_of(engine, provider, all_=False)
            assert orphans
            # one crash for both: killed one after the other, the client could see the
            # provider go and record the job as failed before its own end
            cluster.kill_together(user, provider)
        finally:
            runner.kill()
            runner.wait(timeout=30)
        for c in orphans:  # the crash left it running, owned by nobody
            c.reload()
            assert c.status == "running"
        cluster.restart(provider)
        cluster.restart(user)
        wait_for("the orphaned container is removed",
                 lambda: not [c for c in engine.containers.list(all=True)
                              if c.id in {o.id for o in orphans}], 30)
        status = status_json(provider)
        assert status["jobs_running"] == 0 and status["free"] == offered, status
        wait_whole(provider, user)
        assert kept(before_p, ledger_view(provider, user.peer_id))
        assert kept(before_u, ledger_view(user, user.peer_id))
        assert pins(provider) >= pins_before
        jobs_after = json.loads(cli(user, "job", "list", "--json").stdout)["jobs"]
        old = {j["id"]: j["state"] for j in jobs_before}
        assert {j["id"]: j["state"] for j in jobs_after if j["id"] in old} == old
        new = [j for j in jobs_after if j["id"] not in old]
        assert len(new) == 1 and new[0]["state"] == "interrupted", new
        # and it works again
        r = cli(user, "run", "napper", "--input", '{"seconds": 0}', "--max-price", "10")
        assert r.returncode == 0, r.stderr.decode()
        assert json.loads(r.stdout) == {"slept": 0}


def dockerd_pid_we_started() -> int | None:
    """The pid of the Docker engine scripts/setup.sh started (its log is meca-dockerd.log),
    or None: an engine someone else runs (systemd's, say) is not ours to kill."""
    r = subprocess.run(["pgrep", "-x", "dockerd"], capture_output=True, text=True)
    for pid in r.stdout.split():
        try:
            if Path(f"/proc/{pid}/fd/1").resolve().name == "meca-dockerd.log":
                return int(pid)
        except OSError:
            continue
    return None


def start_engine_again() -> None:
    """The engine back up, the way set-up starts it (bounded by set-up's own wait)."""
    r = subprocess.run(["bash", str(ROOT / "scripts" / "setup.sh")], capture_output=True,
                       text=True, timeout=300, env={**child_env(), "MECA_SKIP_INTEROP": "1"})
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]


def test_kill_9_of_the_node_and_of_dockerd_mid_job_recovers(tmp_path):
    engine = docker_engine("python:3.9-slim")
    pid = dockerd_pid_we_started()
    if pid is None:
        require(False, "the Docker engine was not started by scripts/setup.sh (its log is "
                       "not /var/log/meca-dockerd.log): this test kills it, so it runs only "
                       "on an engine set-up started")
    with napper_on_a_provider(tmp_path, "napper-d") as (cluster, offered):
        dev, provider, user = cluster.nodes
        before = ledger_view(provider, user.peer_id)
        runner = start_job(user, "napper-d", 300, 120)
        try:
            assert b"running" in wait_running(runner)
            orphans = {c.id for c in containers_of(engine, provider, all_=False)}
            assert orphans
            cluster.kill(provider)
            os.kill(pid, signal.SIGKILL)  # the engine we started, by its pid
            wait_for("dockerd is gone", lambda: not Path(f"/proc/{pid}").exists(), 10)
        finally:
            runner.kill()
            runner.wait(timeout=30)
        start_engine_again()
        engine = docker_engine("python:3.9-slim")  # a new client for the new engine
        cluster.restart(provider)
        wait_for("the orphaned container is removed",
                 lambda: not orphans & {c.id for c in engine.containers.list(all=True)}, 60)
        wait_whole(provider, user)
        assert status_json(provider)["free"] == offered
        assert kept(before, ledger_view(provider, user.peer_id))
        r = cli(user, "run", "napper-d", "--input", '{"seconds": 0}', "--max-price", "10")
        assert r.returncode == 0, r.stderr.decode()
        assert json.loads(r.stdout) == {"slept": 0}
