"""The GPU probe looks for NVML's library before importing pynvml (a node's memory)."""

from __future__ import annotations

import subprocess
import sys

from meca_node.runtime.hardware import NVML_LIBRARY, nvml_library_missing


def test_a_library_is_found_or_missing_by_loading_it():
    assert nvml_library_missing("libc.so.6") is False
    assert nvml_library_missing("libmeca-no-such-library.so.1") is True


def test_pynvml_is_imported_only_where_nvml_can_load():
    """In a fresh interpreter: without the library the probe says so as pynvml would, and
    pynvml stays unimported; with it, pynvml is what answered."""
    code = ("import sys; from meca_node.runtime.hardware import probe_gpus; "
            "p = probe_gpus(); print(repr(p.note)); print('pynvml' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, check=True).stdout.splitlines()
    if nvml_library_missing(NVML_LIBRARY):
        assert out == ["'NVML: NVML Shared Library Not Found'", "False"]
    else:
        assert out[1] == "True" and "Shared Library Not Found" not in out[0]
