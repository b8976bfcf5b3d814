"""Hardware detection with psutil and NVML; no NVML or no GPU is normal, not an error.

:func:`detect_hardware` gives what the wire carries (``wire.Hardware``); :func:`detect_host`
adds what only this node shows (architecture, GPU driver, why no GPU was found).
"""

from __future__ import annotations

import logging
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from meca_node.wire import Gpu, Hardware

log = logging.getLogger("meca_node.runtime")

_ARCH = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64",
         "armv7l": "arm", "armv6l": "arm"}
#: as many GPUs as wire.Hardware may carry
MAX_GPUS = 64


def machine_arch() -> str:
    """The architecture in Docker's naming (amd64, arm64, arm, ...)."""
    m = platform.machine().lower()
    return _ARCH.get(m, m)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("model name", "Model")):
                return line.split(":", 1)[1].strip()[:256]
    except OSError:
        pass
    return (platform.processor() or platform.machine())[:256]


@dataclass(frozen=True)
class GpuDetail:
    """One NVIDIA GPU as NVML reports it; ``sm_count``/``max_sm_mhz`` are 0 when unknown."""

    index: int
    model: str
    mem_mib: int
    driver: str
    sm_count: int = 0
    max_sm_mhz: int = 0

    def to_wire(self) -> Gpu:
        return Gpu(model=self.model[:128], mem_mib=self.mem_mib)


@dataclass(frozen=True)
class GpuProbe:
    """What NVML found. ``note`` says why ``gpus`` is empty (no NVML, no driver, no GPU)."""

    gpus: tuple[GpuDetail, ...] = ()
    driver: str = ""
    cuda: str = ""
    note: str = ""

    @property
    def wire(self) -> tuple[Gpu, ...]:
        return tuple(g.to_wire() for g in self.gpus)


def _text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def _optional(call, *args) -> Any:
    """An NVML query some GPUs or drivers do not answer: None instead of an error."""
    try:
        return call(*args)
    except Exception:
        return None


#: the library pynvml loads on Linux
NVML_LIBRARY = "libnvidia-ml.so.1"


def nvml_library_missing(library: str = NVML_LIBRARY) -> bool:
    """Whether NVML's shared library cannot be loaded on this Linux host (no NVIDIA driver).

    Checked before importing ``pynvml``: the module costs ~1.8 MB of a node's memory for
    its life, and most hosts (every one without an NVIDIA driver) would import it only to
    learn that the library is missing. Elsewhere than Linux pynvml decides (False)."""
    import sys

    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    try:
        ctypes.CDLL(library)
    except OSError:
        return True
    return False


def probe_gpus(nvml: Any = None) -> GpuProbe:
    """Ask NVML for the NVIDIA GPUs; ``nvml`` is the ``pynvml`` module (tests pass a fake)."""
    if nvml is None:
        if nvml_library_missing():  # pynvml's own words for it
            return GpuProbe(note="NVML: NVML Shared Library Not Found")
        try:
            import pynvml as nvml
        except ImportError:
            return GpuProbe(note="nvidia-ml-py is not installed")
    try:
        nvml.nvmlInit()
    except Exception as exc:  # no driver / no GPU: normal
        log.debug("no NVML: %s", exc)
        return GpuProbe(note=f"NVML: {_text(exc) or type(exc).__name__}")
    try:
        driver = _text(_optional(nvml.nvmlSystemGetDriverVersion) or "")
        cuda_raw = _optional(nvml.nvmlSystemGetCudaDriverVersion)
        cuda = f"{cuda_raw // 1000}.{cuda_raw % 1000 // 10}" if isinstance(cuda_raw, int) else ""
        count = nvml.nvmlDeviceGetCount()
        gpus = []
        for i in range(min(count, MAX_GPUS)):
            h = nvml.nvmlDeviceGetHandleByIndex(i)
            attrs = _optional(nvml.nvmlDeviceGetAttributes, h)
            gpus.append(GpuDetail(
                index=i, model=_text(nvml.nvmlDeviceGetName(h))[:128],
                mem_mib=int(nvml.nvmlDeviceGetMemoryInfo(h).total // (1024 * 1024)),
                driver=driver,
                sm_count=int(getattr(attrs, "multiprocessorCount", 0) or 0),
                max_sm_mhz=int(_optional(nvml.nvmlDeviceGetMaxClockInfo, h,
                                         getattr(nvml, "NVML_CLOCK_SM", 1)) or 0)))
        if count > MAX_GPUS:
            log.warning("%d GPUs found; only the first %d are offered", count, MAX_GPUS)
        return GpuProbe(tuple(gpus), driver, cuda, "" if gpus else "NVML found no GPU")
    except Exception as exc:
        log.warning("NVML present but GPU query failed: %s", exc)
        return GpuProbe(note=f"NVML present but the GPU query failed: {_text(exc)}")
    finally:
        try:
            nvml.nvmlShutdown()
        except Exception:
            pass


def detect_gpus() -> tuple[Gpu, ...]:
    return probe_gpus().wire


@dataclass(frozen=True)
class HostHardware:
    """The node's own view: the wire's Hardware plus arch and NVML details (status view)."""

    hardware: Hardware
    arch: str
    gpu: GpuProbe


def _hardware(disk_path: Path | None, gpus: tuple[Gpu, ...]) -> Hardware:
    freq = psutil.cpu_freq()
    try:
        disk = psutil.disk_usage(str(disk_path or Path.home())).total // (1024 * 1024)
    except OSError:
        disk = 0
    return Hardware(
        cpu_count=psutil.cpu_count(logical=True) or 1,
        cpu_model=_cpu_model(),
        cpu_mhz=int(freq.max or freq.current) if freq else 0,
        mem_mib=psutil.virtual_memory().total // (1024 * 1024),
        disk_mib=int(disk),
        gpus=gpus,
    )


def detect_hardware(disk_path: Path | None = None) -> Hardware:
    return _hardware(disk_path, detect_gpus())


def detect_host(disk_path: Path | None = None, nvml: Any = None) -> HostHardware:
    probe = probe_gpus(nvml)
    return HostHardware(_hardware(disk_path, probe.wire), machine_arch(), probe)
