"""A short, repeatable startup benchmark per environment; its integer score goes into the
HostAdvert (``wire.Environment.score``, higher = faster).

``docker-cpu``: one container of :data:`CPU_IMAGE` (busybox, about 2 MB) with the sandbox's
limits (1 core, 32 MiB, no network) runs a fixed shell loop of :data:`CPU_ITERATIONS`
iterations :data:`CPU_ROUNDS` times (counting from 100000, so every step
parses numbers of the same length) and prints the CPU time of each round, read from
``/proc/self/schedstat`` (nanoseconds of CPU the shell got, so time spent waiting for a busy
CPU does not count). The score is computed from the fastest round::

    score = round(CPU_ITERATIONS * 1e6 / best_ns)   # thousands of loop iterations per CPU-second

i.e. single-core speed of an interpreter-style workload (600-670 on a 2-vCPU 2.4 GHz EPYC
VM). The minimum over many short rounds filters out preemption and short bursts of other
work; sustained contention for the physical core (a saturated host, SMT siblings, other VMs)
slows the CPU time itself, and then no benchmark repeats: on that VM two runs agree within
about 10% while it is quiet, but on a busy day the speed of a vCPU changed up to 2x from
one second to the next (the same loop run on the host as a control varied from 420 to
800), and scores with it; more or shorter rounds did not help (measured: 20 or 40 rounds
spread 1.4-1.8x), so the benchmark stays short. Where schedstat is missing the rounds are timed with ``/proc/uptime`` (10 ms
steps, coarser). It takes about 1-1.5 s, most of it the container's start.

``docker-gpu`` (only where the environment is on): one container with the offered GPUs runs
``nvidia-smi`` to prove they are usable through the NVIDIA runtime; its score is derived from
NVML's specs, not timed: the sum over GPUs of multiprocessors x max SM clock in GHz (an H100
SXM: 132 x 1.98 = 261). A timed kernel would need a CUDA image no provider is sure to hold.

Results are cached in ``<data_dir>/benchmark.json`` under a fingerprint of the hardware
(CPU model, count, MHz, memory, GPUs, arch), the Docker version, the images and
:data:`BENCH_VERSION`: a restart on the same machine reuses them, a changed fingerprint runs
them again. A failed benchmark scores 0, says why, and is not cached.

Blocking (Docker SDK): the node calls :func:`startup_benchmarks` from a worker thread.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from meca_node import wire
from meca_node.core.task import TaskResources
from meca_node.runtime.environments import DOCKER_CPU, DOCKER_GPU, HostEnvironments
from meca_node.runtime.hardware import GpuDetail, HostHardware
from meca_node.runtime.sandbox import LABEL, SandboxLimits, container_options, task_user

log = logging.getLogger("meca_node.runtime")

#: bump when a workload or formula changes: cached scores of older versions are re-measured
BENCH_VERSION = 1
CPU_IMAGE = "busybox:latest"
GPU_IMAGE = "python:3.9-slim"  # glibc, so the nvidia-smi the runtime mounts can run
CPU_ITERATIONS = 40_000
CPU_ROUNDS = 10
CACHE_FILE = "benchmark.json"
MAX_CACHE_BYTES = 64 * 1024
#: a benchmark container is removed if it has not finished by then
TIMEOUT_S = 30.0

CPU_SCRIPT = f"""\
if [ -r /proc/self/schedstat ]; then src=/proc/self/schedstat; kind=cpu_ns
else src=/proc/uptime; kind=wall_cs; fi
r=0
while [ $r -lt {CPU_ROUNDS} ]; do
  read a _ < $src
  i=100000; while [ $i -lt {100_000 + CPU_ITERATIONS} ]; do i=$((i+1)); done
  read b _ < $src
  if [ $kind = wall_cs ]; then a=${{a%.*}}${{a#*.}}; b=${{b%.*}}${{b#*.}}; fi
  echo "$kind $((b-a))"
  r=$((r+1))
done
"""


class BenchmarkError(Exception):
    """A benchmark could not run or its output made no sense; says why and what to do."""


@dataclass(frozen=True)
class BenchResult:
    env: str
    score: int
    cached: bool
    seconds: float  # time spent now (0 when cached)
    detail: str  # how it was measured, or why the score is 0


# -- pure parts ------------------------------------------------------------------------------
def fingerprint(hardware: wire.Hardware, arch: str, docker_version: str,
                images: tuple[str, ...] = (CPU_IMAGE, GPU_IMAGE),
                version: int = BENCH_VERSION) -> str:
    """What the scores depend on, hashed. MHz is rounded to 100 and memory to 256 MiB so
    that a drifting ``cpu_freq().current`` or a few MiB of kernel reservation do not force
    a re-run."""
    doc = {"v": version, "cpu_model": hardware.cpu_model, "cpu_count": hardware.cpu_count,
           "cpu_mhz": round(hardware.cpu_mhz / 100) * 100,
           "mem_mib": round(hardware.mem_mib / 256) * 256,
           "gpus": [[g.model, g.mem_mib] for g in hardware.gpus], "arch": arch,
           "docker": docker_version, "images": list(images)}
    text = json.dumps(doc, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def cpu_score(best_ns: int, iterations: int = CPU_ITERATIONS) -> int:
    """Thousands of loop iterations per CPU-second for the fastest round (higher = faster)."""
    if best_ns <= 0:
        raise BenchmarkError(f"a round took {best_ns} ns: the clock in the container is broken")
    return max(1, round(iterations * 1e6 / best_ns))


def parse_cpu_output(text: str) -> tuple[int, str]:
    """(fastest round in ns, clock used) from :data:`CPU_SCRIPT`'s output."""
    rounds: dict[str, list[int]] = {"cpu_ns": [], "wall_cs": []}
    for line in text.splitlines()[:1000]:
        kind, _, value = line.strip().partition(" ")
        if kind in rounds and value.lstrip("-").isdigit():
            rounds[kind].append(int(value))
    if rounds["cpu_ns"]:
        return min(rounds["cpu_ns"]), "cpu_ns"
    if rounds["wall_cs"]:
        return min(rounds["wall_cs"]) * 10_000_000, "wall_cs"
    raise BenchmarkError(f"the CPU benchmark printed no round times: {text[-300:]!r}")


def gpu_score(gpus: tuple[GpuDetail, ...]) -> int:
    """Sum over GPUs of multiprocessors x max SM clock (GHz); 1 for a GPU NVML does not
    describe; 0 without GPUs."""
    total = 0.0
    for g in gpus:
        total += g.sm_count * g.max_sm_mhz / 1000 if g.sm_count and g.max_sm_mhz else 1
    return round(total)


def plan_benchmarks(envs: HostEnvironments, cached: Mapping[str, int],
                    force: bool = False) -> tuple[tuple[str, ...], dict[str, str]]:
    """(environments to measure now, {environment: why it is not measured}): enabled ones
    without a cached score, or all enabled ones with ``force``; disabled ones never."""
    run, skipped = [], {}
    for state in envs.states:
        if not state.enabled:
            skipped[state.name] = state.reason
        elif state.name in cached and not force:
            skipped[state.name] = "cached"
        else:
            run.append(state.name)
    return tuple(run), skipped


# -- the cache -------------------------------------------------------------------------------
def load_cache(data_dir: Path, fp: str) -> dict[str, int]:
    """Cached scores for fingerprint ``fp``; {} when none, another fingerprint, or junk."""
    path = Path(data_dir) / CACHE_FILE
    try:
        if path.stat().st_size > MAX_CACHE_BYTES:
            raise ValueError(f"larger than {MAX_CACHE_BYTES} bytes")
        doc = json.loads(path.read_text())
        if doc.get("fingerprint") != fp:
            return {}
        return {str(k): int(v) for k, v in doc["scores"].items()
                if isinstance(v, int) and not isinstance(v, bool) and v >= 0}
    except FileNotFoundError:
        return {}
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
        log.warning("ignoring the benchmark cache %s (%s); measuring again", path, exc)
        return {}


def save_cache(data_dir: Path, fp: str, scores: Mapping[str, int]) -> None:
    """Store ``scores`` for ``fp``, keeping other cached scores of the same fingerprint."""
    path = Path(data_dir) / CACHE_FILE
    merged = {**load_cache(data_dir, fp), **{k: int(v) for k, v in scores.items()}}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps({"fingerprint": fp, "version": BENCH_VERSION,
                               "scores": merged}, sort_keys=True, indent=1))
    os.replace(tmp, path)


# -- containers ------------------------------------------------------------------------------
def _run(client: Any, image: str, command: list[str], resources: TaskResources,
         environment: dict[str, str] | None = None, timeout_s: float = TIMEOUT_S) -> str:
    """Run ``command`` in a sandboxed, labelled container to its end; return its output.
    The container is always removed."""
    import docker.errors
    from docker.types import DeviceRequest

    from meca_node.runtime.executor import remove_container

    limits = SandboxLimits()
    try:
        user = task_user(client.images.get(image).attrs["Config"].get("User") or "", limits)
    except docker.errors.ImageNotFound:
        raise BenchmarkError(f"the benchmark image {image} is not on this host: load it "
                             f"(scripts/base-images.sh, or `docker pull {image}` where a "
                             "registry is reachable); the score stays 0 until then") from None
    options = container_options(image, resources, limits, network="none", user=user,
                                labels={f"{LABEL}.pid": str(os.getpid()),
                                        f"{LABEL}.role": "benchmark"})
    options["command"] = command
    options["environment"] = {**options["environment"], **(environment or {})}
    if "device_requests" in options:
        options["device_requests"] = [DeviceRequest(**d) for d in options["device_requests"]]
    try:
        container = client.containers.create(**options)
    except docker.errors.APIError as exc:
        raise BenchmarkError(f"cannot create the benchmark container: "
                             f"{exc.explanation or exc}") from None
    try:
        container.start()
        try:
            status = container.wait(timeout=timeout_s)
        except Exception as exc:  # requests' ReadTimeout/ConnectionError
            raise BenchmarkError(f"the benchmark did not finish within {timeout_s:g} s "
                                 f"({type(exc).__name__})") from None
        out = container.logs(stdout=True, stderr=True, tail=200).decode("utf-8", "replace")
        if status.get("StatusCode") != 0:
            raise BenchmarkError(f"the benchmark exited with code {status.get('StatusCode')}: "
                                 f"{out[-300:]!r}")
        return out
    except docker.errors.APIError as exc:
        raise BenchmarkError(f"the benchmark container failed: {exc.explanation or exc}") \
            from None
    finally:
        remove_container(container)


def run_cpu_benchmark(client: Any, host: HostHardware | None = None,
                      image: str = CPU_IMAGE) -> tuple[int, str]:
    """(score, how it was measured) for ``docker-cpu``."""
    out = _run(client, image, ["sh", "-c", CPU_SCRIPT],
               TaskResources(cpu=1.0, mem_mib=32, use_gpu=False, gpu_count=0))
    best_ns, clock = parse_cpu_output(out)
    what = "CPU time" if clock == "cpu_ns" else "wall time (no schedstat)"
    return cpu_score(best_ns), (f"best of {CPU_ROUNDS} rounds of {CPU_ITERATIONS} shell loop "
                                f"iterations in {image}: {best_ns / 1e6:.1f} ms {what}")


def run_gpu_benchmark(client: Any, host: HostHardware, image: str = GPU_IMAGE) -> tuple[int, str]:
    """(score, how it was measured) for ``docker-gpu``: the GPUs must show in a container."""
    gpus = host.gpu.gpus
    if not gpus:
        raise BenchmarkError(f"no NVIDIA GPU found ({host.gpu.note or 'NVML'})")
    out = _run(client, image, ["nvidia-smi", "--query-gpu=index,name",
                               "--format=csv,noheader"],
               TaskResources(cpu=1.0, mem_mib=256, use_gpu=True, gpu_count=len(gpus)),
               environment={"NVIDIA_DRIVER_CAPABILITIES": "compute,utility"})
    seen = [ln for ln in out.splitlines() if ln.strip()]
    if len(seen) < len(gpus):
        raise BenchmarkError(f"NVML sees {len(gpus)} GPU(s) but a container sees {len(seen)}: "
                             f"check the NVIDIA container runtime ({out[-200:]!r})")
    return gpu_score(gpus), (f"{len(seen)} GPU(s) usable in a container; score from NVML "
                             "specs (multiprocessors x max SM GHz)")


RUNNERS: dict[str, Callable[[Any, HostHardware], tuple[int, str]]] = {
    DOCKER_CPU: run_cpu_benchmark, DOCKER_GPU: run_gpu_benchmark}


def startup_benchmarks(client: Any, host: HostHardware, envs: HostEnvironments,
                       data_dir: Path, force: bool = False,
                       runners: Mapping[str, Callable[[Any, HostHardware], tuple[int, str]]]
                       = RUNNERS) -> dict[str, BenchResult]:
    """Scores of the enabled environments: cached ones for this fingerprint, the others
    (or all, with ``force``) measured now and cached. Blocking."""
    fp = fingerprint(host.hardware, host.arch, envs.docker_version)
    cached = load_cache(data_dir, fp)
    to_run, skipped = plan_benchmarks(envs, cached, force)
    results = {name: BenchResult(name, cached[name], True, 0.0, f"cached ({fp[:12]})")
               for name, why in skipped.items() if why == "cached"}
    fresh: dict[str, int] = {}
    for name in to_run:
        t0 = time.monotonic()
        try:
            score, detail = runners[name](client, host)
            fresh[name] = score
        except BenchmarkError as exc:
            score, detail = 0, str(exc)
            log.warning("%s benchmark failed: %s", name, exc)
        results[name] = BenchResult(name, score, False, time.monotonic() - t0, detail)
        log.info("%s benchmark: score %d (%s)", name, score, detail)
    if fresh:
        try:
            save_cache(data_dir, fp, fresh)
        except OSError as exc:
            log.warning("could not cache the benchmark in %s (%s); it runs again at the "
                        "next start", data_dir, exc)
    return results


def scores(results: Mapping[str, BenchResult]) -> dict[str, int]:
    """{environment: score}, for :func:`meca_node.runtime.environments.advertised`."""
    return {name: r.score for name, r in results.items()}
