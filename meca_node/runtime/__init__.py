"""The host machine: hardware detection (and, with later issues, the Docker executor)."""

from meca_node.runtime.hardware import detect_hardware, machine_arch

__all__ = ["detect_hardware", "machine_arch"]
