#!/usr/bin/env python3
"""Benchmark the task executor against plain `docker run` + direct HTTP, in one run.

For one task folder (default: examples/echo): build the image once, then
  ours:     DockerExecutor.run (sandbox, meca-init-done wait, first-POST retries) and
            --requests POSTs through DockerExecutor.request;
  baseline: `docker run -d` of the same image on the same internal network (Docker CLI),
            POSTs with a plain HTTP client to the container's address until it answers,
            then --requests POSTs.
Prints start-to-first-answer and request p50/p99 for both with ratios; writes JSON to
bench/results/task-test-<UTC timestamp>.json. Every wait is bounded; containers removed.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import httpx
import trio

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from meca_node.node.developer import image_tag  # noqa: E402
from meca_node.runtime.executor import DockerExecutor, connect  # noqa: E402
from meca_node.sim.baseline import docker_run_first_answer, remove  # noqa: E402
from meca_node.store.taskdir import folder_digest, read_task_folder  # noqa: E402


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(round(q / 100 * (len(s) - 1))))]


def summary(first_answer_s: float, latencies_s: list[float]) -> dict:
    ms = [v * 1000 for v in latencies_s]
    return {"start_to_first_answer_ms": round(first_answer_s * 1000, 1),
            "request_ms": {"p50": round(pct(ms, 50), 2), "p99": round(pct(ms, 99), 2),
                           "mean": round(statistics.mean(ms), 2), "n": len(ms)}}


async def ours(executor: DockerExecutor, tag: str, spec, n: int) -> dict:
    t0 = time.monotonic()
    async with executor.run(tag, spec.resources) as running:
        reply, _ = await executor.request(running, spec.example_input)
        first = time.monotonic() - t0
        assert reply == spec.example_output, reply
        lat = []
        for _ in range(n):
            reply, seconds = await executor.request(running, spec.example_input)
            lat.append(seconds)
    return summary(first, lat)


def baseline(client, network: str, tag: str, spec, n: int, timeout_s: float = 60) -> dict:
    cid, url, first, reply = docker_run_first_answer(client, network, tag, spec.example_input,
                                                     timeout_s)
    try:
        assert reply == spec.example_output, reply
        lat = []
        with httpx.Client(timeout=30) as http:
            for _ in range(n):
                t = time.monotonic()
                http.post(url, content=spec.example_input,
                          headers={"content-type": "application/json"})
                lat.append(time.monotonic() - t)
    finally:
        remove(cid)
    return summary(first, lat)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("folder", nargs="?", default=str(ROOT / "examples" / "echo"))
    p.add_argument("--requests", type=int, default=200)
    p.add_argument("--out", default=str(ROOT / "bench" / "results"))
    args = p.parse_args()
    folder = Path(args.folder)
    spec = read_task_folder(folder)
    client = connect()
    executor = DockerExecutor(client)
    tag = image_tag(spec, folder_digest(folder))
    trio.run(executor.prepare)
    trio.run(executor.build, folder, tag, None)
    ours_fig = trio.run(ours, executor, tag, spec, args.requests)
    base_fig = baseline(client, executor.network, tag, spec, args.requests)
    ratios = {
        "start_to_first_answer": round(ours_fig["start_to_first_answer_ms"]
                                       / base_fig["start_to_first_answer_ms"], 2),
        "request_p50": round(ours_fig["request_ms"]["p50"] / base_fig["request_ms"]["p50"], 2),
        "request_p99": round(ours_fig["request_ms"]["p99"] / base_fig["request_ms"]["p99"], 2),
    }
    for name, fig in (("executor", ours_fig), ("docker run + POST", base_fig)):
        r = fig["request_ms"]
        print(f"{name:18} start to first answer {fig['start_to_first_answer_ms']:8.1f} ms   "
              f"request p50 {r['p50']:6.2f} ms  p99 {r['p99']:6.2f} ms")
    print(f"ratios (executor / baseline): {ratios}")
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    out = Path(args.out) / f"task-test-{stamp}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "benchmark": "task-test", "timestamp": stamp, "task": spec.name, "image": tag,
        "requests": args.requests, "machine": {"python": platform.python_version(),
                                               "cpus": __import__("os").cpu_count()},
        "executor": ours_fig, "baseline": base_fig, "ratios": ratios}, indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
