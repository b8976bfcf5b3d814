"""Jobs a user can manage, against real nodes (separate processes, a real engine): ``run
--detach`` then ``job get``; ``job list`` and ``job describe`` with the timeline, provider,
payment and receipt; ``job logs``; ``job cancel`` of a long job (nothing paid, the
provider's container stopped); a job the client node was running when it was killed is
``interrupted`` after its restart."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from conftest import docker_engine, wait_for
from test_busy_and_failover import network
from test_run_job import cli, published_echo
from meca_node.sim.cluster import child_env

pytestmark = [pytest.mark.integration, pytest.mark.docker]



def ok(r) -> bytes:
    assert r.returncode == 0, r.stderr.decode()
    return r.stdout


def describe(node, job: str) -> dict:
    return json.loads(ok(cli(node, "job", "describe", job, "--json")))


def stages(doc: dict) -> list[str]:
    return [e["stage"] for e in doc["timeline"]]


def test_detach_then_get_list_describe_and_logs(tmp_path):
    with published_echo(tmp_path, 1, "price = 1\n") as (cluster, _folder):
        dev, provider, user = cluster.nodes
        job = ok(cli(user, "run", "echo", "--input", '{"input": "hello"}', "--max-price",
                     "2", "--detach")).decode().strip()
        assert re.fullmatch(r"[0-9a-f]{16}", job), job
        r = cli(user, "job", "get", job[:6])  # waits for it; a prefix names it
        assert ok(r) == b"hello"
        assert provider.peer_id.encode() in r.stderr and job.encode() in r.stderr
        done = json.loads(ok(cli(user, "job", "get", job, "--json")))
        assert (done["job"], done["output"], done["provider"], done["paid"]) == \
            (job, "hello", provider.peer_id, 2)

        r = cli(user, "run", "echo", "--input", '{"input": "again"}', "--max-price", "2")
        assert ok(r) == b"again"  # a plain run is kept as well
        listed = json.loads(ok(cli(user, "job", "list", "--json")))["jobs"]
        plain, detached = listed[0], listed[1]  # newest first
        assert detached["id"] == job and detached["detached"] and not plain["detached"]
        for j in (plain, detached):
            assert (j["state"], j["provider"], j["paid"], j["price"], j["offer"]) == \
                ("done", provider.peer_id, 2, 1, j["offer"])
            assert j["offer"].startswith("echo")
        assert plain["id"].encode() in r.stderr  # `run` says which job it was
        table = ok(cli(user, "job", "list"))
        assert job.encode() in table and b"done" in table

        d = describe(user, job)
        seen = stages(d)
        assert seen[0] == "submitted" and seen[-1] == "answered", seen
        assert "running" in seen and "paid" in seen
        assert seen.index("running") < seen.index("answered")
        j = d["job"]
        assert (j["state"], j["provider"], j["paid"], j["output_size"]) == \
            ("done", provider.peer_id, 2, 5)
        assert re.fullmatch(r"[0-9a-f]{64}", j["receipt"]), j  # the hash of our receipt
        assert "matched" in seen and seen.index("matched") < seen.index("running")
        text = ok(cli(user, "job", "describe", job[:8]))
        assert b"timeline" in text and provider.peer_id.encode() in text

        # the app's log as the provider sent it (providers whose executor cannot cut the
        # log of one run send none yet: the command then says so)
        r = cli(user, "job", "logs", job)
        assert len(ok(r)) == j["log_size"]
        if not r.stdout:
            assert b"has no log" in r.stderr, r.stderr.decode()

        r = cli(user, "job", "describe", "0" * 16)
        assert r.returncode == 1 and b"meca-node job list" in r.stderr, r.stderr.decode()
        r = cli(user, "job", "cancel", job)
        assert r.returncode == 1 and b"nothing to cancel" in r.stderr, r.stderr.decode()

        r = cli(user, "run", "nope", "--input", "{}")  # a job that fails is kept too
        assert r.returncode == 1 and b"no live offer" in r.stderr
        failed = json.loads(ok(cli(user, "job", "list", "--limit", "1", "--json")))["jobs"][0]
        assert failed["state"] == "failed" and failed["error"].startswith("unknown_offer")
        r = cli(user, "job", "get", failed["id"])
        assert r.returncode == 1 and b"no live offer" in r.stderr


def start_detached_sleepy(user, seconds: int) -> str:
    payload = json.dumps({"input": "late", "sleep": seconds})
    return ok(cli(user, "run", "sleepy", "--input", payload, "--max-price", "5",
                  "--timeout", "300", "--detach")).decode().strip()


def wait_running(user, provider, job: str) -> None:
    """Until the job runs in the provider's container (bounded poll of two nodes)."""
    wait_for("the job to run", lambda: "running" in stages(describe(user, job)), 120)
    assert describe(user, job)["job"]["state"] == "running"
    wait_for("the provider to hold the job", lambda: provider.status()["jobs_running"] == 1,
             30)


def test_cancel_a_long_job_nothing_paid_and_a_crash_leaves_it_interrupted(tmp_path):
    engine = docker_engine("python:3.9-slim")
    with network(tmp_path, ["price = 1\n"]) as cluster:
        dev, provider, user = cluster.nodes
        # the app's log of one run: what it printed while serving this job, and only that
        for word in ("first", "second"):  # the second run reuses the warm container
            # (it answers 0.3 s after printing: the engine delivers a line a few ms after
            # it is printed, so one printed just before the reply may miss this log)
            payload = json.dumps({"input": word, "sleep": 0.3})
            short = ok(cli(user, "run", "sleepy", "--input", payload, "--max-price", "5",
                           "--detach")).decode().strip()
            assert ok(cli(user, "job", "get", short)) == word.encode()
            # (the server's access line comes after the reply: in this log or the next)
            app_log = ok(cli(user, "job", "logs", short))
            # (a fresh container's start-up lines may still be arriving: they may show)
            assert f"sleepy got {word}\n".encode() in app_log, app_log
            assert app_log.count(b"sleepy got") == 1, app_log
        balance = user.client().get("/v1/wallet/balance")["balance"]
        job = start_detached_sleepy(user, 120)
        wait_running(user, provider, job)
        getter = subprocess.Popen(  # a follower: it ends when the job does
            [sys.executable, "-m", "meca_node", "job", "get", job, "--data-dir",
             str(user.data_dir)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            env=child_env())
        try:
            r = cli(user, "job", "cancel", job, timeout=60)
            assert b"cancelled" in ok(r) and b"nothing was paid" in r.stdout
            out, err = getter.communicate(timeout=60)
            assert getter.returncode == 1 and out == b"" and b"cancelled" in err, err
        finally:
            getter.kill()
            getter.wait(timeout=10)
        d = describe(user, job)
        assert (d["job"]["state"], d["job"]["paid"]) == ("cancelled", 0), d["job"]
        assert stages(d)[-1] == "cancelled"
        wait_for("the provider to stop the job", lambda:
                 provider.status()["jobs_running"] == 0, 30)
        label = f"meca-node.pid={provider.proc.pid}"  # the job's container is removed
        wait_for("the container to go", lambda: engine.containers.list(
            all=True, filters={"label": label}) == [], 30)
        assert user.client().get("/v1/wallet/balance")["balance"] == balance
        r = cli(user, "job", "cancel", job)
        assert r.returncode == 1 and b"not running" in r.stderr

        crashed = start_detached_sleepy(user, 120)
        wait_running(user, provider, crashed)
        cluster.kill(user)  # SIGKILL: no chance to write anything
        cluster.restart(user)
        j = describe(user, crashed)["job"]
        assert j["state"] == "interrupted" and "killed or crashed" in j["error"], j
        r = cli(user, "job", "get", crashed)
        assert r.returncode == 1 and b"interrupted" in r.stderr
        listed = json.loads(ok(cli(user, "job", "list", "--state", "interrupted", "--json")))
        assert [x["id"] for x in listed["jobs"]] == [crashed]

