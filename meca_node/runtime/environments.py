"""What this host offers: its execution environments and the share of the machine.

Two pure decisions, tested without an engine or a GPU:

- :func:`decide_environments`: ``docker-cpu`` when a Docker engine answers; ``docker-gpu``
  only when at least one GPU is offered AND the engine has the NVIDIA container runtime.
  Each comes with the reason it is on or off.
- :func:`plan_offer` / :func:`offered_resources`: the share of the machine offered to tasks
  (config ``offer_cpu``, ``offer_mem_mb``, ``offer_gpus``), the price, and the developer
  allow-list (``allow_developers``).

Defaults of the share, when a key is not set:

- cpu: all logical cores minus 0.5 for the node itself (libp2p, IPFS, the control API),
  but at least one core (or all of them on a smaller machine): 2 cores -> 1.5, 16 -> 15.5.
- mem: 75% of RAM; the rest is left to the node, its IPFS store cache, Docker and the OS.
- gpus: every GPU NVML found.

A share larger than the machine is clamped to the machine with a warning (in
``Offer.warnings``): a config copied from a bigger host still starts, and the warning says
what to set. A share that leaves nothing to run a task with (``offer_cpu`` under 0.001 or
``offer_mem_mb`` under 6 MiB, Docker's smallest memory limit) is refused with
:class:`OfferError`, as are negative values and malformed developer keys.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from meca_node import wire
from meca_node.core.identity import peer_id_of, public_key_of_peer_id
from meca_node.runtime.hardware import GpuProbe, probe_gpus

log = logging.getLogger("meca_node.runtime")

DOCKER_CPU = "docker-cpu"
DOCKER_GPU = "docker-gpu"
#: the CPU share the node keeps for itself by default (cores)
NODE_CPU_RESERVE = 0.5
#: the share of RAM offered by default
DEFAULT_MEM_SHARE = 0.75
#: Docker refuses memory limits below this
MIN_MEM_MIB = 6
#: most entries in ``allow_developers``
MAX_ALLOWED_DEVELOPERS = 1024


# -- environments ----------------------------------------------------------------------------
@dataclass(frozen=True)
class EnvironmentState:
    """One environment, whether this host offers it, and why (or why not)."""

    name: str
    enabled: bool
    reason: str


@dataclass(frozen=True)
class HostEnvironments:
    states: tuple[EnvironmentState, ...]
    #: the engine's version ("" when none answers); part of the benchmark fingerprint
    docker_version: str = ""

    @property
    def enabled(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.states if s.enabled)

    def state(self, name: str) -> EnvironmentState | None:
        return next((s for s in self.states if s.name == name), None)


def decide_environments(engine_info: Mapping[str, Any] | None, gpus: Sequence[Any], *,
                        engine_error: str = "", gpu_note: str = "",
                        offered_gpus: int | None = None) -> tuple[EnvironmentState, ...]:
    """The environments this host offers, from Docker's ``client.info()`` (None when no
    engine answers; ``engine_error`` says why) and the GPUs found (``gpu_note`` says why
    none were). ``offered_gpus`` 0 means the config keeps the GPUs out of the offer."""
    if engine_info is None:
        why = engine_error or "no Docker engine answers"
        fix = ("start one with scripts/setup.sh, or point DOCKER_HOST at a running (e.g. "
               "rootless) engine")
        return (EnvironmentState(DOCKER_CPU, False, f"{DOCKER_CPU} off: {why}; {fix}"),
                EnvironmentState(DOCKER_GPU, False, f"{DOCKER_GPU} off: {why}; {fix}"))
    version = str(engine_info.get("ServerVersion") or "?")
    os_type = str(engine_info.get("OSType") or "linux")
    if os_type != "linux":
        why = (f"the Docker engine {version} runs {os_type} containers; tasks are Linux "
               "images: switch the engine to Linux containers")
        return (EnvironmentState(DOCKER_CPU, False, f"{DOCKER_CPU} off: {why}"),
                EnvironmentState(DOCKER_GPU, False, f"{DOCKER_GPU} off: {why}"))
    cpu = EnvironmentState(DOCKER_CPU, True, f"{DOCKER_CPU} on: Docker engine {version} "
                           f"answers ({engine_info.get('NCPU', '?')} CPUs)")
    runtimes = sorted((engine_info.get("Runtimes") or {}).keys())
    if not gpus:
        note = f" ({gpu_note})" if gpu_note else ""
        gpu = EnvironmentState(DOCKER_GPU, False, f"{DOCKER_GPU} off: no NVIDIA GPU found{note}")
    elif offered_gpus == 0:
        gpu = EnvironmentState(DOCKER_GPU, False, f"{DOCKER_GPU} off: {len(gpus)} GPU(s) found "
                               "but offer_gpus is 0; set it (or remove it) to offer them")
    elif "nvidia" not in runtimes:
        gpu = EnvironmentState(
            DOCKER_GPU, False,
            f"{DOCKER_GPU} off: {len(gpus)} GPU(s) found but the Docker engine has no NVIDIA "
            f"container runtime (runtimes: {', '.join(runtimes) or 'none'}); install the "
            "NVIDIA Container Toolkit, run `nvidia-ctk runtime configure --runtime=docker` "
            "and restart dockerd")
    else:
        models = sorted({str(getattr(g, "model", "?")) for g in gpus})
        gpu = EnvironmentState(DOCKER_GPU, True, f"{DOCKER_GPU} on: {len(gpus)} GPU(s) "
                               f"({', '.join(models)}) and the NVIDIA container runtime")
    return cpu, gpu


def gather_environments(client: Any = None, gpu: GpuProbe | None = None,
                        offered_gpus: int | None = None,
                        connect: Callable[[], Any] | None = None) -> HostEnvironments:
    """Ask the engine (``client``, else ``connect()``) and NVML, then decide. Blocking:
    call it from a worker thread in the node."""
    info, error = None, ""
    if client is None:
        from meca_node.runtime.executor import EngineUnavailable
        from meca_node.runtime.executor import connect as default_connect

        try:
            client = (connect or default_connect)()
        except EngineUnavailable as exc:
            error = str(exc)
    if client is not None:
        try:
            info = client.info()
        except Exception as exc:  # the engine went away between connect and info
            error = f"the Docker engine did not answer info ({exc})"
    gpu = gpu if gpu is not None else probe_gpus()
    states = decide_environments(info, gpu.gpus, engine_error=error, gpu_note=gpu.note,
                                 offered_gpus=offered_gpus)
    for s in states:
        log.info("%s", s.reason)
    return HostEnvironments(states, str((info or {}).get("ServerVersion") or ""))


def advertised(envs: HostEnvironments, scores: Mapping[str, int]) -> tuple[wire.Environment, ...]:
    """The enabled environments with their benchmark scores (0 while unmeasured), for the
    HostAdvert."""
    return tuple(wire.Environment(name=n, score=max(0, int(scores.get(n, 0))))
                 for n in envs.enabled)


# -- the share offered -----------------------------------------------------------------------
class OfferError(ValueError):
    """An offer_* or allow_developers config value cannot be used; says which and the fix."""


@dataclass(frozen=True)
class Offer:
    """What a provider offers: the share of its machine, its price, and whose task offers
    it runs (Ed25519 public keys; empty = any signed offer)."""

    resources: wire.Resources
    price: int = 0
    allow_developers: frozenset[bytes] = frozenset()
    warnings: tuple[str, ...] = ()

    def allows(self, developer_key: bytes) -> bool:
        """Whether a task offer signed by ``developer_key`` may run here."""
        return not self.allow_developers or bytes(developer_key) in self.allow_developers

    def describe_allowed(self) -> list[str]:
        """The allow-list as peer ids (status view)."""
        return sorted(peer_id_of(k) for k in self.allow_developers)


def default_share(hardware: wire.Hardware) -> tuple[float, int, int]:
    """(cpu cores, mem MiB, gpus) offered when the config sets none (module docstring)."""
    cores = max(1, hardware.cpu_count)
    cpu = max(min(1.0, cores), cores - NODE_CPU_RESERVE)
    return cpu, int(hardware.mem_mib * DEFAULT_MEM_SHARE), len(hardware.gpus)


def parse_developer_keys(entries: Iterable[str]) -> frozenset[bytes]:
    """``allow_developers`` entries (libp2p Ed25519 peer ids or 64-hex public keys) as keys."""
    entries = list(entries)
    if len(entries) > MAX_ALLOWED_DEVELOPERS:
        raise OfferError(f"config key allow_developers: {len(entries)} entries, the most is "
                         f"{MAX_ALLOWED_DEVELOPERS}")
    keys = set()
    for entry in entries:
        text = str(entry).strip()
        try:
            if len(text) == 64 and all(c in "0123456789abcdefABCDEF" for c in text):
                keys.add(bytes.fromhex(text))
            else:
                keys.add(public_key_of_peer_id(text))
        except ValueError:
            raise OfferError(
                f"config key allow_developers: {text[:80]!r} is neither a peer id "
                "(12D3KooW...) nor a 64-hex-digit Ed25519 public key; copy the developer's "
                "key from `meca-node id` on their node") from None
    return frozenset(keys)


def plan_offer(hardware: wire.Hardware, values: Mapping[str, Any]) -> Offer:
    """The offer from config ``values`` (a mapping such as ``Config.values``; missing keys
    take their defaults). Pure; over-large shares are clamped with a warning."""
    cpu_default, mem_default, gpu_default = default_share(hardware)
    cores = max(1, hardware.cpu_count)
    warnings: list[str] = []

    def pick(key: str, default, limit, unit: str, least, fix: str, whole: bool = False):
        value = values.get(key)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0 \
                or (isinstance(value, float) and not math.isfinite(value)):
            raise OfferError(f"config key {key}: expected a number >= 0; got {value!r}")
        if whole and value != int(value):
            raise OfferError(f"config key {key}: expected a whole number; got {value!r}")
        if value < least:
            raise OfferError(f"config key {key} = {value} leaves nothing to run a task with "
                             f"(at least {least} {unit}); {fix}")
        if value > limit:
            warnings.append(f"config key {key} = {value} is more than this machine has "
                            f"({limit} {unit}): offering {limit}; set {key} to at most {limit}")
            return limit
        return value

    default_note = "remove the key for the default"
    cpu = pick("offer_cpu", cpu_default, float(cores), "cores", 0.001,
               f"{default_note} ({cpu_default:g} cores)")
    mem = pick("offer_mem_mb", mem_default, hardware.mem_mib, "MiB", MIN_MEM_MIB,
               f"{default_note} ({mem_default} MiB)", whole=True)
    gpus = pick("offer_gpus", gpu_default, len(hardware.gpus), "GPUs", 0, default_note,
                whole=True)
    price = values.get("price", 0)
    if isinstance(price, bool) or not isinstance(price, int) or price < 0:
        raise OfferError(f"config key price: expected an integer >= 0; got {price!r}")
    resources = wire.Resources(cpu_milli=int(cpu * 1000 + 1e-6), mem_mib=int(mem),
                               gpu_count=int(gpus))
    allowed = parse_developer_keys(values.get("allow_developers") or ())
    for w in warnings:
        log.warning("%s", w)
    return Offer(resources, price, allowed, tuple(warnings))


def offered_resources(hardware: wire.Hardware, values: Mapping[str, Any]) -> wire.Resources:
    """The share of the machine offered to tasks (see :func:`plan_offer`)."""
    return plan_offer(hardware, values).resources
