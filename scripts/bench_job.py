#!/usr/bin/env python3
"""Benchmark a job over the network against the same work done directly, in one run.

Three real node processes on 127.0.0.1 (``meca_node.sim.Cluster``): a developer, a provider
with a warm pool, a provider without one; the bench process drives a client node through
its control API. The task (default: examples/echo) is built and published first, so both
providers have its image cached in their engine.

  warm:  --jobs jobs client -> warm provider; the latency is the client node's own timing
         of each job (JobClient.run: request sent to checked output, signatures and hash
         included), next to --jobs direct HTTP POSTs from this process to the very same
         warm container's address (keep-alive, like the provider's own client).
  cold:  --cold jobs on the provider without a warm pool (image cached: create, start,
         meca-init-done, first answer; each starts once the provider has removed the
         previous one's container, as the baseline removes its own between runs), next
         to plain `docker run -d` of the same image on the same network with the task's
         declared cpu and memory (`--cpus`, `--memory`) + POST until it answers (the
         Docker CLI), as many times; and without limits, for scale (the limits alone
         slow a CPU-bound app start).

Prints p50/p99 for each with the difference and ratio to its baseline, and writes JSON to
bench/results/job-<UTC timestamp>.json. Goals (issue "network path"): warm p50 within 3 ms
of the direct POST's p50, p99 within 10 ms of its p99; cold within 10% of docker run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from meca_node.runtime.executor import connect  # noqa: E402
from meca_node.runtime.sandbox import APP_PORT, NETWORK  # noqa: E402
from meca_node.sim import Cluster  # noqa: E402
from meca_node.sim.baseline import docker_run_first_answer, limit_args, remove  # noqa: E402
from meca_node.sim.cluster import ClusterError, ClusterNode, child_env  # noqa: E402
from meca_node.sim.demo import _job  # noqa: E402
from meca_node.store.taskdir import read_task_folder  # noqa: E402


def publish(dev: ClusterNode, user: ClusterNode, folder: Path, paid: bool,
            providers) -> str:
    """Publish ``folder`` from ``dev`` (fee 1 when ``paid``, else 0); its offer id, once
    ``user`` holds the offer and an advert of each provider taking jobs, connected."""
    r = cli(dev, "task", "publish", str(folder), "--fee", "1" if paid else "0", "--quiet",
            "--no-test")
    if r.returncode != 0:
        raise ClusterError(f"publish failed: {r.stderr[-800:]}")
    offer_id = r.stdout.split("offer id ")[1].split()[0]
    wait_for("the offer at the client",
             lambda: offer_id in cli(user, "offers", "--json").stdout)
    for prov in providers:
        wait_for(f"node{prov.index} taking jobs, connected to the client",
                 lambda prov=prov: any(
                     a["peer_id"] == prov.peer_id and a.get("environments")
                     and a["connected"] for a in user.peers()["adverts"]))
    return offer_id


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(round(q / 100 * (len(s) - 1))))]


def figures(seconds: list[float]) -> dict:
    ms = [v * 1000 for v in seconds]
    return {"p50": round(pct(ms, 50), 3), "p99": round(pct(ms, 99), 3),
            "mean": round(statistics.mean(ms), 3), "n": len(ms)}


def cli(node: ClusterNode, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "meca_node", *args, "--data-dir",
                           str(node.data_dir)], capture_output=True, timeout=timeout,
                          env=child_env(), text=True)


def wait_for(what: str, ok, timeout_s: float = 60.0):
    deadline = time.monotonic() + timeout_s
    while True:  # bounded poll of other processes' state
        value = ok()
        if value:
            return value
        if time.monotonic() > deadline:
            raise ClusterError(f"timed out waiting for {what}")
        time.sleep(0.2)


def run_job(user: ClusterNode, offer_id: str, spec, provider: str) -> float:
    """One job through the client node's control API; the client node's own timing."""
    import base64

    done = _job(user, "/v1/jobs/run", {
        "task": offer_id, "input_b64": base64.b64encode(spec.example_input).decode(),
        "max_price": 10, "timeout_s": 60, "provider": provider})
    out = base64.b64decode(done["output_b64"])
    if out != spec.example_output:
        raise ClusterError(f"wrong output from {provider}: {out[:200]!r}")
    return float(done["seconds"])


def warm_container(client, provider: ClusterNode, image_prefix: str):
    """The provider's idle warm container of the task (found by its owner-pid label)."""
    for c in client.containers.list(filters={"label": f"meca-node.pid={provider.proc.pid}"}):
        if any(f"/{image_prefix}:" in t for t in c.image.tags):
            return c
    return None


def direct_posts(url: str, body: bytes, expected: bytes, n: int) -> list[float]:
    out = []
    with httpx.Client(timeout=30) as http:
        for _ in range(n):
            t = time.monotonic()
            r = http.post(url, content=body, headers={"content-type": "application/json"})
            out.append(time.monotonic() - t)
            if r.content != expected:
                raise ClusterError(f"the warm container answered {r.content[:200]!r}")
    return out


def cpu_s(node: ClusterNode) -> float:
    """CPU seconds (user + system) the node's process has used so far (/proc)."""
    fields = Path(f"/proc/{node.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def docker_run_once(client, tag: str, spec, limits: bool) -> float:
    extra = limit_args(spec.resources.cpu, spec.resources.mem_mib) if limits else []
    cid, _, seconds, reply = docker_run_first_answer(client, NETWORK, tag, spec.example_input,
                                                     extra_args=extra)
    remove(cid)
    if reply != spec.example_output:
        raise ClusterError(f"docker run answered {reply[:200]!r}")
    return seconds


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("folder", nargs="?", default=str(ROOT / "examples" / "echo"))
    p.add_argument("--jobs", type=int, default=200)
    p.add_argument("--cold", type=int, default=5)
    p.add_argument("--paid", action="store_true",
                   help="settlement on: the warm provider charges 1 and the task a fee of 1, "
                        "so every job is a fair exchange with a signed receipt")
    p.add_argument("--out", default=str(ROOT / "bench" / "results"))
    args = p.parse_args()
    folder = Path(args.folder).resolve()
    spec = read_task_folder(folder)
    client = connect()
    root = Path(tempfile.mkdtemp(prefix="meca-bench-job-"))
    roles = [("developer",), ("provider",), ("provider",), ("client",)]
    try:
        cluster = Cluster(root, 4, roles=roles, advert_interval_s=1.0)
        cluster.prepare()
        dev, warm, cold, user = cluster.nodes
        for node, pool in ((warm, 300), (cold, 0)):
            with open(node.data_dir / "config.toml", "a") as f:
                f.write(f"warm_pool_s = {pool}\n" + ("price = 1\n" if args.paid else ""))
        with cluster:
            cluster.wait_mesh(timeout_s=30)
            offer_id = publish(dev, user, folder, args.paid, (warm, cold))
            # first jobs: each provider pulls and loads the image once (not measured)
            run_job(user, offer_id, spec, warm.peer_id)
            run_job(user, offer_id, spec, cold.peer_id)
            container = warm_container(client, warm, spec.name)
            if container is None:
                raise ClusterError("the warm provider kept no warm container (warm pool off?)")
            tag = container.image.tags[0]
            ip = container.attrs["NetworkSettings"]["Networks"][NETWORK]["IPAddress"]
            url = f"http://{ip}:{APP_PORT}/"

            # cold first: the client's chain is still short then, so with --paid each
            # provider has seen (by gossip) every receipt the client paid the other one
            print(f"cold: {args.cold} jobs on a provider without a warm pool, {args.cold} "
                  f"docker run + first answer", flush=True)
            cold_ours = []
            for _ in range(args.cold):
                # like the docker run baseline, which removes its container before the
                # next run: the provider removes a job's container after answering
                wait_for("the cold provider's last container removed",
                         lambda: not (cold.status().get("warm_pool") or {}).get("removing"))
                cold_ours.append(run_job(user, offer_id, spec, cold.peer_id))
            print(f"warm: {args.jobs} jobs client -> provider, {args.jobs} direct POSTs to "
                  f"{url}", flush=True)
            cpu0 = {n.index: cpu_s(n) for n in (user, warm, dev)}
            ours = [run_job(user, offer_id, spec, warm.peer_id) for _ in range(args.jobs)]
            # CPU per job is steadier than latency on a shared machine: it says where
            # the time goes even when other work competes for the cores
            cpu_ms = {name: round((cpu_s(n) - cpu0[n.index]) * 1000 / args.jobs, 3)
                      for name, n in (("client", user), ("provider", warm),
                                      ("developer", dev))}
            pool_stats = warm.status().get("warm_pool") or {}
            direct = direct_posts(url, spec.example_input, spec.example_output, args.jobs)
            cold_base = [docker_run_once(client, tag, spec, True) for _ in range(args.cold)]
            cold_plain = [docker_run_once(client, tag, spec, False) for _ in range(args.cold)]
    finally:
        shutil.rmtree(root, ignore_errors=True)

    warm_fig, direct_fig = figures(ours), figures(direct)
    cold = bool(args.cold)  # --cold 0: warm figures only
    cold_fig, base_fig = (figures(cold_ours), figures(cold_base)) if cold else ({}, {})
    plain_fig = figures(cold_plain) if cold else {}
    result = {
        "warm_job_ms": warm_fig, "direct_post_ms": direct_fig,
        "warm_minus_direct_ms": {"p50": round(warm_fig["p50"] - direct_fig["p50"], 3),
                                 "p99": round(warm_fig["p99"] - direct_fig["p99"], 3)},
        "cold_job_ms": cold_fig, "docker_run_with_task_limits_ms": base_fig,
        "docker_run_without_limits_ms": plain_fig,
        "cold_over_docker_run": (round(cold_fig["p50"] / base_fig["p50"], 3) if cold
                                 else None),
        "warm_cpu_ms_per_job": cpu_ms, "warm_pool": pool_stats,
        "goals": {"warm_p50_within_3ms": warm_fig["p50"] - direct_fig["p50"] <= 3,
                  "paid_warm_p50_within_5ms": (warm_fig["p50"] - direct_fig["p50"] <= 5
                                               if args.paid else None),
                  "warm_p99_within_10ms": warm_fig["p99"] - direct_fig["p99"] <= 10,
                  "cold_within_10pct": (cold_fig["p50"] <= 1.1 * base_fig["p50"] if cold
                                        else None)},
    }
    print(f"warm job{' (paid)' if args.paid else ''} p50 {warm_fig['p50']:8.2f} ms  p99 {warm_fig['p99']:8.2f} ms")
    print(f"direct POST  p50 {direct_fig['p50']:8.2f} ms  p99 {direct_fig['p99']:8.2f} ms")
    print(f"  difference p50 {result['warm_minus_direct_ms']['p50']:+8.2f} ms  p99 "
          f"{result['warm_minus_direct_ms']['p99']:+8.2f} ms (goals: "
          f"{'paid p50 <= 5' if args.paid else '<= 3 and <= 10'})")
    print(f"CPU per warm job (ms): client {cpu_ms['client']:.2f} (its control API "
          f"included), provider {cpu_ms['provider']:.2f}, developer {cpu_ms['developer']:.2f}")
    print(f"warm pool of the provider: {pool_stats}")
    if cold:
        print(f"cold job (image cached)            p50 {cold_fig['p50']:8.1f} ms")
        print(f"docker run (task's cpu/mem limits) p50 {base_fig['p50']:8.1f} ms   ratio "
              f"{result['cold_over_docker_run']:.2f} (goal <= 1.10)")
        print(f"docker run without limits          p50 {plain_fig['p50']:8.1f} ms   (the "
              f"task declares {spec.resources.cpu:g} CPU: a CPU-bound app start is slower "
              "under it)")
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    out = Path(args.out) / f"job-{'paid-' if args.paid else ''}{stamp}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "benchmark": "job", "timestamp": stamp, "task": spec.name, "jobs": args.jobs,
        "paid": args.paid,
        "cold_runs": args.cold, "machine": {"python": platform.python_version(),
                                            "cpus": os.cpu_count()}, **result}, indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
