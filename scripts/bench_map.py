#!/usr/bin/env python3
"""Benchmark ``meca_node.api`` ``map`` over 3 providers against the same warm containers.

Five real node processes on 127.0.0.10-14 (``meca_node.sim.Cluster``): a developer, three
providers with the warm pool on, a client. The task (default: examples/primes, a CPU-bound
sieve) is built and published; every provider runs a few jobs first, ``--offer-cpu`` / cpu
at once, so each holds that many warm containers. Then, in the same run:

  map:    --jobs inputs through ``AsyncClient.map`` (what ``Client.map`` runs) with
          --concurrency jobs at once, the client node choosing providers; jobs/s over the
          whole call, each job's time as the client node measured it (request sent to checked
          output), and which provider ran it.
  direct: the same inputs, the same bodies, POSTed from this process straight to every
          warm container of the task the providers hold (found by their owner-pid label, as
          bench_job.py does), --concurrency at once from threads (keep-alive per container),
          input i to container i mod n, so round-robin over the providers.

Every output of ``map`` must equal the direct answer for the same input. Prints jobs/s for
both and the ratio, the spread over providers, p50/p99 per job and failures; writes JSON to
bench/results/map-[paid-]<UTC timestamp>.json.

Each provider offers ``--offer-cpu`` cores (default: this machine's, as if each were its
own host), so with a 1-CPU task three providers hold 3 x cores jobs at once; the
providers' default share (cores - 0.5) would hold one each here.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import platform
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import trio

from bench_job import figures, publish  # scripts/ is on sys.path (this script's folder)

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from meca_node.api import AsyncClient, JobError  # noqa: E402
from meca_node.runtime.executor import connect, remove_container  # noqa: E402
from meca_node.runtime.sandbox import APP_PORT, LABEL, NETWORK  # noqa: E402
from meca_node.sim import Cluster  # noqa: E402
from meca_node.sim.cluster import ClusterError, ClusterNode  # noqa: E402
from meca_node.store.taskdir import read_task_folder  # noqa: E402

PROVIDERS = 3


def inputs_for(args) -> list:
    """Distinct inputs of about the same cost (primes: limit, limit + step, ...), or the
    task's example input for every job when the folder is not primes."""
    if args.limit is None:
        return [None] * args.jobs
    return [{"limit": args.limit + 1000 * i} for i in range(args.jobs)]


def body_of(item, spec) -> bytes:
    """The bytes ``meca_node.api`` sends for ``item`` (JSON), or the example input."""
    return spec.example_input if item is None else json.dumps(item).encode()


async def warm_up(user: ClusterNode, offer_id: str, spec, providers: list[ClusterNode],
                  slots: int, rounds: int, max_price: int, slow: bytes) -> None:
    """``slots`` jobs at once on each provider, ``rounds`` times: each ends up holding
    ``slots`` warm containers. The jobs are ``slow`` (primes: 10 x the limit), so that they
    overlap on the provider instead of one reusing the other's container. A provider still
    busy with the last round answers ``busy``: such a job is tried again, a bounded number
    of times."""
    api = AsyncClient(user.data_dir)

    async def one(prov: ClusterNode, body: bytes) -> None:
        for attempt in range(50):
            try:
                r = await api.run(offer_id, body, provider=prov.peer_id,
                                  max_price=max_price, timeout=120)
            except JobError as exc:
                if exc.reason != "busy" or attempt == 49:
                    raise ClusterError(f"warm-up job on node{prov.index}: {exc}") from None
                await trio.sleep(0.2)
                continue
            if body == spec.example_input and r.output != spec.example_output:
                raise ClusterError(f"node{prov.index} answered {r.output[:200]!r}")
            return

    for prov in providers:  # first job alone: the provider loads the image (not measured)
        await one(prov, spec.example_input)
    for _ in range(rounds):
        async with trio.open_nursery() as nursery:
            for prov in providers:
                for _ in range(slots):
                    nursery.start_soon(one, prov, slow)


async def timed_map(user: ClusterNode, offer_id: str, bodies: list[bytes], args,
                    max_price: int) -> tuple[list, float]:
    """``AsyncClient.map`` over ``bodies`` (failed jobs as JobError in their place); the
    results and the call's seconds. The whole call is bounded by --budget."""
    api = AsyncClient(user.data_dir)
    with trio.fail_after(args.budget):
        t = time.monotonic()
        results = await api.map(offer_id, bodies, concurrency=args.concurrency,
                                return_exceptions=True, max_price=max_price,
                                timeout=args.job_timeout)
        return results, time.monotonic() - t


def warm_containers(client, providers: list[ClusterNode], image_prefix: str) -> list:
    """Every idle warm container of the task the providers hold, interleaved by provider
    (p0's first, p1's first, p2's first, p0's second, ...)."""
    per = []
    for prov in providers:
        found = [c for c in client.containers.list(
                     filters={"label": f"{LABEL}.pid={prov.proc.pid}"})
                 if any(f"/{image_prefix}:" in t for t in c.image.tags)]
        per.append([(prov, c) for c in found])
    out = []
    for i in range(max((len(p) for p in per), default=0)):
        out += [p[i] for p in per if i < len(p)]
    return out


def direct_posts(urls: list[str], bodies: list[bytes], concurrency: int
                 ) -> tuple[list[bytes | None], list[float], list[str], float]:
    """Body i to urls[i mod n], ``concurrency`` threads at once; answers (None: failed),
    per-POST seconds, failures, and the whole run's seconds."""
    answers: list[bytes | None] = [None] * len(bodies)
    seconds: list[float] = []
    failures: list[str] = []
    lock = threading.Lock()
    next_i = iter(range(len(bodies)))

    # keep-alive, one client per (thread, container), made before the clock starts: making
    # an httpx.Client loads the CA bundle, ~45 ms of CPU here
    clients = [{u: httpx.Client(timeout=30) for u in urls} for _ in range(concurrency)]

    def worker(http: dict[str, httpx.Client]) -> None:
        try:
            while True:
                with lock:
                    i = next(next_i, None)
                if i is None:
                    return
                url = urls[i % len(urls)]
                t = time.monotonic()
                try:
                    r = http[url].post(url, content=bodies[i],
                                       headers={"content-type": "application/json"})
                    took = time.monotonic() - t
                    ok = r.status_code == 200
                except httpx.HTTPError as exc:
                    took, ok, r = time.monotonic() - t, False, exc
                with lock:
                    if ok:
                        answers[i] = r.content
                        seconds.append(took)
                    else:
                        failures.append(f"input {i} to {url}: {str(r)[:200]}")
        finally:
            for c in http.values():
                c.close()

    threads = [threading.Thread(target=worker, args=(http,), daemon=True) for http in clients]
    t0 = time.monotonic()
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=600)  # every POST has a 30 s timeout, so this bound is never reached
    return answers, seconds, failures, time.monotonic() - t0


def cpu_seconds(nodes: list[ClusterNode]) -> dict[str, float]:
    """CPU seconds (user + system) used so far by the whole machine (task containers and
    other work included), this process, and each node."""
    import psutil

    m = psutil.cpu_times()
    out = {"machine": sum(m) - m.idle - getattr(m, "iowait", 0.0),
           "bench": time.process_time()}
    for node in nodes:
        try:
            t = psutil.Process(node.proc.pid).cpu_times()
        except psutil.Error:  # it exited: left out
            continue
        out[f"node{node.index}"] = t.user + t.system
    return out


def cpu_used(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {k: round(after[k] - before[k], 2) for k in before if k in after}


def named(text: str, name: dict[str, str]) -> str:
    """``text`` with each node's peer id replaced by its name (node1, ...)."""
    for peer_id, who in name.items():
        text = text.replace(peer_id, who)
    return text


def retries_since(node: ClusterNode, offset: int) -> tuple[collections.Counter, list[str]]:
    """The client node's "job on <provider> failed (<reason>: <detail>); trying again" log
    lines after byte ``offset`` of its log: counted by reason (busy: the provider had no
    free slot, and the job waited for a later advert), and the distinct texts (at most 5)."""
    with node.log_path.open("rb") as f:
        f.seek(offset)
        text = f.read().decode(errors="replace")
    out: collections.Counter = collections.Counter()
    texts: list[str] = []
    for line in text.splitlines():
        if "trying again" in line and "failed (" in line:
            what = line.split("failed (", 1)[1].rsplit("); trying again", 1)[0]
            out[what.split(":", 1)[0].split(")", 1)[0]] += 1
            if what not in texts and len(texts) < 5:
                texts.append(what)
    return out, texts


def sweep(client, providers: list[ClusterNode]) -> int:
    """Remove any task container still labelled with a provider's pid (a provider that had
    to be killed leaves its warm ones behind)."""
    n = 0
    for prov in providers:
        if prov.proc is None:
            continue
        for c in client.containers.list(all=True,
                                        filters={"label": f"{LABEL}.pid={prov.proc.pid}"}):
            remove_container(c)
            n += 1
    return n


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("folder", nargs="?", default=str(ROOT / "examples" / "primes"))
    p.add_argument("--jobs", type=int, default=200)
    p.add_argument("--concurrency", type=int, default=6)
    p.add_argument("--limit", type=int, default=5_000_000,
                   help="primes: input i is {\"limit\": LIMIT + 1000 i} (about 40 ms of CPU "
                        "each here); ignored for another task folder")
    p.add_argument("--offer-cpu", type=float, default=float(os.cpu_count() or 1),
                   help="cores each provider offers (default: this machine's)")
    p.add_argument("--warm-rounds", type=int, default=2)
    p.add_argument("--paid", action="store_true",
                   help="settlement on: providers charge 1 and the task a fee of 1")
    p.add_argument("--job-timeout", type=float, default=120.0)
    p.add_argument("--budget", type=float, default=600.0,
                   help="seconds the whole map may take before it is cancelled")
    p.add_argument("--keep", action="store_true",
                   help="keep the run directory with the nodes' logs (kept anyway when the "
                        "run fails or a job fails)")
    p.add_argument("--out", default=str(ROOT / "bench" / "results"))
    args = p.parse_args()
    folder = Path(args.folder).resolve()
    spec = read_task_folder(folder)
    if spec.name != "primes":
        args.limit = None
    max_price = 10  # price + fee is at most 2
    slots = max(1, int(args.offer_cpu * 1000 + 1e-6) // int(spec.resources.cpu * 1000))
    bodies = [body_of(item, spec) for item in inputs_for(args)]
    client = connect()
    root = Path(tempfile.mkdtemp(prefix="meca-bench-map-"))
    roles = [("developer",)] + [("provider",)] * PROVIDERS + [("client",)]
    cluster = Cluster(root, len(roles), roles=roles, advert_interval_s=1.0)
    keep = True  # until the run ends without an exception or a failed job
    mode = "paid: providers charge 1, the task's fee is 1" if args.paid else "free: price 0, fee 0"
    try:
        cluster.prepare()
        dev, *provs, user = cluster.nodes
        for node in provs:
            with open(node.data_dir / "config.toml", "a") as f:
                f.write(f"warm_pool_s = 300\nwarm_pool_max = {max(4, slots)}\n"
                        f"offer_cpu = {args.offer_cpu}\n" + ("price = 1\n" if args.paid else ""))
        name = {n.peer_id: f"node{n.index}" for n in cluster.nodes}
        with cluster:
            cluster.wait_mesh(timeout_s=60)
            offer_id = publish(dev, user, folder, args.paid, provs)
            print(f"{spec.name}: {PROVIDERS} providers x {slots} job(s) at once "
                  f"({args.offer_cpu:g} cores offered, the task takes "
                  f"{spec.resources.cpu:g}); {mode}; warming up", flush=True)
            slow = (spec.example_input if args.limit is None else
                    body_of({"limit": 10 * args.limit}, spec))
            trio.run(warm_up, user, offer_id, spec, provs, slots, args.warm_rounds, max_price,
                     slow)
            held = collections.Counter(name[prov.peer_id]
                                       for prov, _ in warm_containers(client, provs, spec.name))
            print(f"warm containers per provider: {dict(sorted(held.items()))}", flush=True)

            print(f"map: {args.jobs} jobs, concurrency {args.concurrency}", flush=True)
            cpu0 = cpu_seconds(cluster.nodes)
            log_at = user.log_path.stat().st_size
            results, map_s = trio.run(timed_map, user, offer_id, bodies, args, max_price)
            map_cpu = cpu_used(cpu0, cpu_seconds(cluster.nodes))
            retries, retry_texts = retries_since(user, log_at)
            # the containers map left idle, the ones the direct POSTs go to
            found = warm_containers(client, provs, spec.name)
            if not found:
                raise ClusterError("the providers hold no warm container (warm pool off?)")
            urls = [f"http://{c.attrs['NetworkSettings']['Networks'][NETWORK]['IPAddress']}"
                    f":{APP_PORT}/" for _, c in found]
            per_prov = collections.Counter(name[prov.peer_id] for prov, _ in found)
            print(f"direct: {args.jobs} POSTs, concurrency {args.concurrency}, round-robin "
                  f"over {len(urls)} warm containers {dict(sorted(per_prov.items()))}",
                  flush=True)
            cpu0 = cpu_seconds(cluster.nodes)
            answers, direct_s, direct_fail, direct_wall = direct_posts(
                urls, bodies, args.concurrency)
            direct_cpu = cpu_used(cpu0, cpu_seconds(cluster.nodes))
        keep = args.keep or any(isinstance(r, BaseException) for r in results)
    finally:
        try:
            swept = sweep(client, cluster.nodes[1:1 + PROVIDERS]) if cluster.nodes else 0
            if swept:
                print(f"removed {swept} container(s) the providers left behind")
        finally:
            if keep:
                print(f"the run directory (each node's log: node<i>.log) is kept: {root}")
            else:
                shutil.rmtree(root, ignore_errors=True)

    ok = [r for r in results if not isinstance(r, BaseException) and r is not None]
    failed = [f"input {i}: {named(str(r), name)}" for i, r in enumerate(results)
              if isinstance(r, BaseException)]
    mismatched = [i for i, r in enumerate(results)
                  if not isinstance(r, BaseException) and r is not None
                  and answers[i] is not None and r.output != answers[i]]
    spread = collections.Counter(name.get(r.provider, r.provider[-8:]) for r in ok)
    map_fig = figures([r.seconds for r in ok]) if ok else None
    direct_fig = figures(direct_s) if direct_s else None
    map_rate = len(ok) / map_s
    direct_rate = len(direct_s) / direct_wall
    result = {
        "map": {"jobs_per_s": round(map_rate, 3), "seconds": round(map_s, 3),
                "ok": len(ok), "failed": len(failed), "failures": failed[:20],
                "job_ms": map_fig, "providers": dict(sorted(spread.items())),
                "paid_total": sum(r.paid for r in ok), "cpu_s": map_cpu,
                "client_retries": dict(retries),
                "client_retry_examples": [named(t, name) for t in retry_texts]},
        "direct": {"jobs_per_s": round(direct_rate, 3), "seconds": round(direct_wall, 3),
                   "ok": len(direct_s), "failed": len(direct_fail),
                   "failures": direct_fail[:20], "post_ms": direct_fig,
                   "containers": dict(sorted(per_prov.items())), "cpu_s": direct_cpu},
        "map_over_direct_jobs_per_s": round(map_rate / direct_rate, 3),
        "outputs_differing_from_direct": mismatched[:20],
        "warm_containers_before_map": dict(sorted(held.items())),
    }
    print(f"\n{spec.name}, {args.jobs} jobs, concurrency {args.concurrency}, {mode}")
    print(f"map (meca_node.api)  {map_rate:7.2f} jobs/s  ({len(ok)} ok, {len(failed)} failed, "
          f"{map_s:.2f} s)")
    print(f"direct POSTs         {direct_rate:7.2f} jobs/s  ({len(direct_s)} ok, "
          f"{len(direct_fail)} failed, {direct_wall:.2f} s)")
    print(f"  map / direct       {result['map_over_direct_jobs_per_s']:7.3f}")
    if map_fig:
        print(f"map job (client node's timing) p50 {map_fig['p50']:8.2f} ms  p99 "
              f"{map_fig['p99']:8.2f} ms")
    if direct_fig:
        print(f"direct POST                    p50 {direct_fig['p50']:8.2f} ms  p99 "
              f"{direct_fig['p99']:8.2f} ms")
    print(f"map jobs per provider: {dict(sorted(spread.items()))}; the client node tried "
          f"again {sum(retries.values())} time(s) {dict(retries)}")
    roles = {"machine": "all, others' work included", "bench": "this process",
             f"node{dev.index}": "developer", f"node{user.index}": "client",
             **{f"node{q.index}": "provider" for q in provs}}
    for what, used in (("map", map_cpu), ("direct", direct_cpu)):
        print(f"CPU s during {what:6s} " + ", ".join(f"{k} ({roles[k]}) {v:.1f}"
                                                    for k, v in used.items()))
    for text in retry_texts[:3]:
        print(f"  tried again after: {named(text, name)[:300]}")
    for line in (failed + direct_fail)[:5]:
        print(f"  failure: {line}")
    if mismatched:
        print(f"  {len(mismatched)} map output(s) differ from the direct answer, "
              f"e.g. input {mismatched[0]}")
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    out = Path(args.out) / f"map-{'paid-' if args.paid else ''}{stamp}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "benchmark": "map", "timestamp": stamp, "task": spec.name, "jobs": args.jobs,
        "concurrency": args.concurrency, "limit": args.limit, "paid": args.paid,
        "providers": PROVIDERS, "offer_cpu": args.offer_cpu, "slots_per_provider": slots,
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count()},
        **result}, indent=1))
    print(f"wrote {out}")
    return 1 if failed or direct_fail or mismatched else 0


if __name__ == "__main__":
    sys.exit(main())
