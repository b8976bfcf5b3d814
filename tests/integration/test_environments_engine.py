"""The docker-cpu environment and its startup benchmark on the real engine: measured once,
cached for the same machine, repeatable when forced, and no container left behind."""

from __future__ import annotations

import os
import subprocess
import time

import pytest
from conftest import docker_engine

from meca_node.core.task import TaskResources
from meca_node.runtime import benchmark as bench
from meca_node.runtime.environments import DOCKER_CPU, DOCKER_GPU, gather_environments
from meca_node.runtime.hardware import detect_host

pytestmark = [pytest.mark.integration, pytest.mark.docker]


def _ours(client) -> list:
    return client.containers.list(all=True, filters={"label": f"meca-node.pid={os.getpid()}"})


def test_cpu_benchmark_cached_and_repeatable(tmp_path):
    client = docker_engine("busybox:latest")
    host = detect_host(tmp_path)
    envs = gather_environments(client, host.gpu)
    assert DOCKER_CPU in envs.enabled and envs.docker_version
    if not host.gpu.gpus:
        assert "no NVIDIA GPU found" in envs.state(DOCKER_GPU).reason

    first = bench.startup_benchmarks(client, host, envs, tmp_path)[DOCKER_CPU]
    assert not first.cached and first.score > 0, first.detail
    assert first.seconds < 5, f"the benchmark took {first.seconds:.1f} s"

    t0 = time.monotonic()
    again = bench.startup_benchmarks(client, host, envs, tmp_path)[DOCKER_CPU]
    assert again.cached and again.score == first.score
    assert time.monotonic() - t0 < 0.5

    # Forced runs measure again, and each measures the CPU as the host itself sees it: the
    # same loop run on the host (/bin/sh) right before and after is the control, and a
    # score must lie within 3x of it either way (timing the container's start or its
    # waiting instead of the loop's CPU time would be off by 10x or more). Scores are not
    # compared with each other: on this shared 2-vCPU VM the speed of a vCPU changes from
    # second to second, and forced runs 0.4 s apart scored 388 and 626 while the host
    # control stayed at 770 (runtime/benchmark.py); the benchmark takes the fastest of 10
    # rounds of CPU time and is cached, which is all the repeatability a host gives.
    seen: list[str] = []
    for _ in range(3):
        before = _host_control()
        run = bench.startup_benchmarks(client, host, envs, tmp_path, force=True)[DOCKER_CPU]
        after = _host_control()
        assert not run.cached and run.score > 0, run.detail
        seen.append(f"{run.score} (host {before} -> {after})")
        control = (before + after) / 2
        assert control / 3 <= run.score <= control * 3, (
            f"the container scored {run.score}, the same loop on the host {before} and "
            f"{after}: the benchmark does not measure the loop's CPU time")
    print("docker-cpu forced runs: " + ", ".join(seen))
    assert not _ours(client)


def _host_control() -> int:
    """The benchmark's loop run on the host by /bin/sh, scored the same way."""
    out = subprocess.run(["/bin/sh", "-c", bench.CPU_SCRIPT], capture_output=True, text=True,
                         timeout=60, check=True).stdout
    best, _ = bench.parse_cpu_output(out)
    return bench.cpu_score(best)


def test_failing_benchmark_container_is_removed():
    client = docker_engine("busybox:latest")
    with pytest.raises(bench.BenchmarkError, match="exited with code 3"):
        bench._run(client, "busybox:latest", ["sh", "-c", "echo broken; exit 3"],
                   TaskResources(cpu=0.5, mem_mib=16, use_gpu=False, gpu_count=0))
    with pytest.raises(bench.BenchmarkError, match="not on this host"):
        bench.run_cpu_benchmark(client, image="meca-node-absent:none")
    assert not _ours(client)
