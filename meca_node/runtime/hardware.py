"""Hardware detection with psutil and NVML; no NVML or no GPU is normal, not an error."""

from __future__ import annotations

import logging
import platform
from pathlib import Path

import psutil

from meca_node.wire import Gpu, Hardware

log = logging.getLogger("meca_node.runtime")

_ARCH = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64",
         "armv7l": "arm", "armv6l": "arm"}


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


def detect_gpus() -> tuple[Gpu, ...]:
    try:
        import pynvml
    except ImportError:
        return ()
    try:
        pynvml.nvmlInit()
    except Exception as exc:  # no driver / no GPU: normal
        log.debug("no NVML: %s", exc)
        return ()
    try:
        gpus = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            h = pynvml.nvmlDeviceGetHandleByIndex(i)
            name = pynvml.nvmlDeviceGetName(h)
            if isinstance(name, bytes):
                name = name.decode(errors="replace")
            mem = pynvml.nvmlDeviceGetMemoryInfo(h).total // (1024 * 1024)
            gpus.append(Gpu(model=str(name)[:128], mem_mib=int(mem)))
        return tuple(gpus)
    except Exception as exc:
        log.warning("NVML present but GPU query failed: %s", exc)
        return ()
    finally:
        try:
            pynvml.nvmlShutdown()
        except Exception:
            pass


def detect_hardware(disk_path: Path | None = None) -> Hardware:
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
        gpus=detect_gpus(),
    )
