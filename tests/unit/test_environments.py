"""Provider hardware and environments without an engine or a GPU: the environment decision
table, NVML probing with a fake NVML, the offered share, and the benchmark's pure parts
(fingerprint, cache, score formula, which environments are measured)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from meca_node import wire
from meca_node.cli.config import load_config
from meca_node.core.identity import Identity
from meca_node.runtime import benchmark as bench
from meca_node.runtime.environments import (
    DOCKER_CPU, DOCKER_GPU, EnvironmentState, HostEnvironments, OfferError, advertised,
    decide_environments, default_share, gather_environments, offered_resources, plan_offer,
)
from meca_node.runtime.hardware import GpuDetail, GpuProbe, HostHardware, probe_gpus

H100 = GpuDetail(0, "NVIDIA H100 80GB HBM3", 81559, "550.54.15", sm_count=132, max_sm_mhz=1980)
ENGINE = {"ServerVersion": "24.0.7", "OSType": "linux", "NCPU": 8,
          "Runtimes": {"runc": {"path": "runc"}}}
ENGINE_NVIDIA = {**ENGINE, "Runtimes": {"runc": {}, "nvidia": {"path": "nvidia-container-runtime"}}}


def hw(cores=8, mem=16384, gpus=0, mhz=2400, model="AMD EPYC"):
    return wire.Hardware(cpu_count=cores, cpu_model=model, cpu_mhz=mhz, mem_mib=mem,
                         disk_mib=1000, gpus=tuple(H100.to_wire() for _ in range(gpus)))


# -- environments ------------------------------------------------------------------------------
@pytest.mark.parametrize("info,gpus,offered,cpu_on,gpu_on,needle", [
    (None, (), None, False, False, "no Docker engine answers"),
    (None, (H100,), None, False, False, "DOCKER_HOST"),
    (ENGINE, (), None, True, False, "no NVIDIA GPU found (NVML: Driver Not Loaded)"),
    (ENGINE, (H100,), None, True, False, "no NVIDIA container runtime (runtimes: runc)"),
    (ENGINE_NVIDIA, (), None, True, False, "no NVIDIA GPU found"),
    (ENGINE_NVIDIA, (H100,), None, True, True, "1 GPU(s) (NVIDIA H100 80GB HBM3)"),
    (ENGINE_NVIDIA, (H100, H100), 0, True, False, "offer_gpus is 0"),
    ({**ENGINE_NVIDIA, "OSType": "windows"}, (H100,), None, False, False, "windows containers"),
])
def test_environment_decision_table(info, gpus, offered, cpu_on, gpu_on, needle):
    cpu, gpu = decide_environments(info, gpus, gpu_note="NVML: Driver Not Loaded",
                                   offered_gpus=offered)
    assert (cpu.name, gpu.name) == (DOCKER_CPU, DOCKER_GPU)
    assert (cpu.enabled, gpu.enabled) == (cpu_on, gpu_on)
    assert needle in gpu.reason
    assert gpu.reason.startswith(f"docker-gpu {'on' if gpu_on else 'off'}: ")
    assert cpu.reason.startswith(f"docker-cpu {'on' if cpu_on else 'off'}: ")


def test_gather_without_an_engine_says_why():
    from meca_node.runtime.executor import EngineUnavailable

    def no_engine():
        raise EngineUnavailable("no Docker engine answers (connection refused)")

    envs = gather_environments(gpu=GpuProbe(note="NVML: not found"), connect=no_engine)
    assert envs.enabled == () and envs.docker_version == ""
    assert "connection refused" in envs.state(DOCKER_CPU).reason


def test_gather_with_an_engine_and_advertised_scores():
    client = SimpleNamespace(info=lambda: ENGINE)
    envs = gather_environments(client, GpuProbe(note="NVML: not found"))
    assert envs.enabled == (DOCKER_CPU,) and envs.docker_version == "24.0.7"
    assert advertised(envs, {DOCKER_CPU: 700, DOCKER_GPU: 9}) == (
        wire.Environment(DOCKER_CPU, 700),)
    assert advertised(envs, {}) == (wire.Environment(DOCKER_CPU, 0),)


# -- NVML ---------------------------------------------------------------------------------------
class FakeNvml:
    NVML_CLOCK_SM = 1

    def __init__(self, gpus=(), fail_init=None, fail_query=None):
        self.gpus, self.fail_init, self.fail_query, self.shut = list(gpus), fail_init, fail_query, 0

    def nvmlInit(self):
        if self.fail_init:
            raise self.fail_init

    def nvmlShutdown(self):
        self.shut += 1

    def nvmlSystemGetDriverVersion(self):
        return b"550.54.15"

    def nvmlSystemGetCudaDriverVersion(self):
        return 12040

    def nvmlDeviceGetCount(self):
        if self.fail_query:
            raise self.fail_query
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, i):
        return self.gpus[i]

    def nvmlDeviceGetName(self, h):
        return h["name"]

    def nvmlDeviceGetMemoryInfo(self, h):
        return SimpleNamespace(total=h["mem"] * 1024 * 1024)

    def nvmlDeviceGetAttributes(self, h):
        if "sm" not in h:
            raise RuntimeError("Not Supported")
        return SimpleNamespace(multiprocessorCount=h["sm"])

    def nvmlDeviceGetMaxClockInfo(self, h, clock):
        assert clock == self.NVML_CLOCK_SM
        return h.get("mhz", 0)


def test_nvml_gpus_with_driver_and_specs():
    nvml = FakeNvml([{"name": b"NVIDIA H100", "mem": 81559, "sm": 132, "mhz": 1980},
                     {"name": "Tesla T4", "mem": 15360}])
    probe = probe_gpus(nvml)
    assert probe.driver == "550.54.15" and probe.cuda == "12.4" and probe.note == ""
    assert probe.gpus[0] == GpuDetail(0, "NVIDIA H100", 81559, "550.54.15", 132, 1980)
    assert probe.gpus[1] == GpuDetail(1, "Tesla T4", 15360, "550.54.15", 0, 0)
    assert probe.wire == (wire.Gpu("NVIDIA H100", 81559), wire.Gpu("Tesla T4", 15360))
    assert nvml.shut == 1


@pytest.mark.parametrize("nvml,note", [
    (FakeNvml(fail_init=RuntimeError("NVML Shared Library Not Found")),
     "NVML: NVML Shared Library Not Found"),
    (FakeNvml(), "NVML found no GPU"),
    (FakeNvml(fail_query=RuntimeError("GPU is lost")), "GPU query failed: GPU is lost"),
])
def test_no_gpu_is_normal_and_says_why(nvml, note):
    probe = probe_gpus(nvml)
    assert probe.gpus == () and note in probe.note


# -- the share offered --------------------------------------------------------------------------
@pytest.mark.parametrize("cores,cpu", [(1, 1.0), (2, 1.5), (16, 15.5)])
def test_default_share(cores, cpu):
    assert default_share(hw(cores=cores, mem=8000, gpus=2)) == (cpu, 6000, 2)
    r = offered_resources(hw(cores=cores, mem=8000, gpus=2), {})
    assert r == wire.Resources(cpu_milli=int(cpu * 1000), mem_mib=6000, gpu_count=2)


def test_explicit_share_and_price():
    offer = plan_offer(hw(gpus=2), {"offer_cpu": 2.25, "offer_mem_mb": 4096, "offer_gpus": 1,
                                    "price": 7})
    assert offer.resources == wire.Resources(2250, 4096, 1)
    assert offer.price == 7 and offer.warnings == () and offer.allows(b"\1" * 32)


def test_a_share_larger_than_the_machine_is_clamped_with_a_warning():
    offer = plan_offer(hw(cores=4, mem=8000, gpus=1),
                       {"offer_cpu": 6.0, "offer_mem_mb": 9000, "offer_gpus": 3})
    assert offer.resources == wire.Resources(4000, 8000, 1)
    assert len(offer.warnings) == 3
    assert "offer_cpu = 6.0 is more than this machine has (4.0 cores)" in offer.warnings[0]
    assert "set offer_gpus to at most 1" in offer.warnings[2]


@pytest.mark.parametrize("values,needle", [
    ({"offer_mem_mb": 0}, "offer_mem_mb = 0 leaves nothing"),
    ({"offer_cpu": 0.0}, "offer_cpu = 0.0 leaves nothing"),
    ({"offer_cpu": -1.0}, "expected a number >= 0"),
    ({"offer_gpus": True}, "offer_gpus"),
    ({"offer_gpus": 0.5}, "whole number"),
    ({"price": -3}, "price"),
    ({"allow_developers": ["alice"]}, "neither a peer id"),
    ({"allow_developers": ["ab" * 31]}, "neither a peer id"),
])
def test_an_unusable_share_is_refused(values, needle):
    with pytest.raises(OfferError) as e:
        plan_offer(hw(), values)
    assert needle in str(e.value)


def test_allow_list_takes_peer_ids_and_hex_keys():
    a, b, c = (Identity(bytes([i]) * 32) for i in (1, 2, 3))
    offer = plan_offer(hw(), {"allow_developers": [a.peer_id, b.public_key.hex().upper()]})
    assert offer.allows(a.public_key) and offer.allows(b.public_key)
    assert not offer.allows(c.public_key)
    assert offer.describe_allowed() == sorted([a.peer_id, b.peer_id])


def test_offer_keys_load_from_config(tmp_path):
    cfg = load_config(None, {"MECA_OFFER_CPU": "1.5", "MECA_ALLOW_DEVELOPERS": "x,y"},
                      {"data_dir": tmp_path})
    assert cfg["offer_cpu"] == 1.5 and cfg["allow_developers"] == ["x", "y"]
    assert cfg["offer_mem_mb"] is None and cfg["offer_gpus"] is None
    assert offered_resources(hw(cores=4, mem=1000), {**cfg.values, "allow_developers": []}) \
        == wire.Resources(1500, 750, 0)


# -- benchmark: pure parts ----------------------------------------------------------------------
def test_score_formula():
    assert bench.cpu_score(40_000_000) == 1000  # 40000 iterations in 40 ms
    assert bench.cpu_score(80_000_000) == 500
    assert bench.cpu_score(10**15) == 1  # never 0 for a working environment
    with pytest.raises(bench.BenchmarkError):
        bench.cpu_score(0)
    assert bench.gpu_score((H100, H100)) == 523
    assert bench.gpu_score((GpuDetail(0, "?", 1, ""),)) == 1 and bench.gpu_score(()) == 0


def test_parse_cpu_output():
    assert bench.parse_cpu_output("cpu_ns 70000000\ncpu_ns 60000000\nnoise\n") == (
        60_000_000, "cpu_ns")
    assert bench.parse_cpu_output("wall_cs 7\nwall_cs 6\n") == (60_000_000, "wall_cs")
    with pytest.raises(bench.BenchmarkError, match="no round times"):
        bench.parse_cpu_output("sh: read: not found\n")


def test_fingerprint_follows_what_the_score_depends_on():
    base = bench.fingerprint(hw(), "amd64", "24.0.7")
    assert base == bench.fingerprint(hw(), "amd64", "24.0.7")
    assert base == bench.fingerprint(hw(mhz=2420, mem=16400), "amd64", "24.0.7")  # rounding
    for other in (bench.fingerprint(hw(cores=4), "amd64", "24.0.7"),
                  bench.fingerprint(hw(model="Intel Xeon"), "amd64", "24.0.7"),
                  bench.fingerprint(hw(mhz=3000), "amd64", "24.0.7"),
                  bench.fingerprint(hw(mem=32768), "amd64", "24.0.7"),
                  bench.fingerprint(hw(gpus=1), "amd64", "24.0.7"),
                  bench.fingerprint(hw(), "arm64", "24.0.7"),
                  bench.fingerprint(hw(), "amd64", "25.0.0"),
                  bench.fingerprint(hw(), "amd64", "24.0.7", version=bench.BENCH_VERSION + 1)):
        assert other != base


def test_cache_is_keyed_by_fingerprint(tmp_path):
    assert bench.load_cache(tmp_path, "fp1") == {}
    bench.save_cache(tmp_path, "fp1", {DOCKER_CPU: 700})
    bench.save_cache(tmp_path, "fp1", {DOCKER_GPU: 261})
    assert bench.load_cache(tmp_path, "fp1") == {DOCKER_CPU: 700, DOCKER_GPU: 261}
    assert bench.load_cache(tmp_path, "fp2") == {}
    bench.save_cache(tmp_path, "fp2", {DOCKER_CPU: 500})  # a new machine replaces the old
    assert bench.load_cache(tmp_path, "fp1") == {}
    assert bench.load_cache(tmp_path, "fp2") == {DOCKER_CPU: 500}
    path = tmp_path / bench.CACHE_FILE
    for junk in ("{not json", json.dumps({"fingerprint": "fp2", "scores": [1]}),
                 " " * (bench.MAX_CACHE_BYTES + 1)):
        path.write_text(junk)
        assert bench.load_cache(tmp_path, "fp2") == {}


CPU_ONLY = HostEnvironments((EnvironmentState(DOCKER_CPU, True, "on"),
                             EnvironmentState(DOCKER_GPU, False, "docker-gpu off: no GPU")),
                            "24.0.7")


def test_gpu_benchmark_is_skipped_without_a_gpu():
    run, skipped = bench.plan_benchmarks(CPU_ONLY, {}, force=True)
    assert run == (DOCKER_CPU,) and skipped == {DOCKER_GPU: "docker-gpu off: no GPU"}
    run, skipped = bench.plan_benchmarks(CPU_ONLY, {DOCKER_CPU: 5})
    assert run == () and skipped == {DOCKER_CPU: "cached", DOCKER_GPU: "docker-gpu off: no GPU"}
    host = HostHardware(hw(), "amd64", GpuProbe(note="NVML: not found"))
    with pytest.raises(bench.BenchmarkError, match="no NVIDIA GPU found"):
        bench.run_gpu_benchmark(None, host)


def test_startup_benchmarks_cache_rerun_and_failure(tmp_path):
    calls = []

    def fake_cpu(client, host):
        calls.append(host.hardware.cpu_count)
        return 640, "fake"

    runners = {DOCKER_CPU: fake_cpu}
    host = HostHardware(hw(), "amd64", GpuProbe())
    first = bench.startup_benchmarks(None, host, CPU_ONLY, tmp_path, runners=runners)
    assert first[DOCKER_CPU].score == 640 and not first[DOCKER_CPU].cached
    again = bench.startup_benchmarks(None, host, CPU_ONLY, tmp_path, runners=runners)
    assert again[DOCKER_CPU].cached and again[DOCKER_CPU].score == 640 and calls == [8]
    bench.startup_benchmarks(None, host, CPU_ONLY, tmp_path, force=True, runners=runners)
    moved = HostHardware(hw(cores=4), "amd64", GpuProbe())  # another machine: measured anew
    bench.startup_benchmarks(None, moved, CPU_ONLY, tmp_path, runners=runners)
    assert calls == [8, 8, 4]
    assert bench.scores(again) == {DOCKER_CPU: 640} and DOCKER_GPU not in again

    def broken(client, host):
        raise bench.BenchmarkError("the benchmark image busybox:latest is not on this host")

    failed = bench.startup_benchmarks(None, host, CPU_ONLY, tmp_path / "other",
                                      runners={DOCKER_CPU: broken})
    assert failed[DOCKER_CPU].score == 0 and "not on this host" in failed[DOCKER_CPU].detail
    assert bench.load_cache(tmp_path / "other", "x") == {}
    assert not (tmp_path / "other" / bench.CACHE_FILE).exists()  # a failure is not cached
