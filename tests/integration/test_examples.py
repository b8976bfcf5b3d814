"""Every example task passes `meca-node task test` on real Docker; the GPU one is refused here."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from conftest import require, run_cli

pytestmark = [pytest.mark.integration, pytest.mark.docker]
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def cli(*args):
    return run_cli(*args, timeout=300)


@pytest.fixture(scope="module", autouse=True)
def engine():
    r = subprocess.run(["docker", "image", "inspect", "python:3.9-slim"], capture_output=True,
                       timeout=60)
    require(r.returncode == 0, "Docker engine or the python:3.9-slim stand-in is missing "
                               "(run scripts/setup.sh)")


@pytest.mark.parametrize("name", ["echo", "primes", "wordcount", "humanize-size"])
def test_example_passes_task_test(name):
    r = cli("task", "test", str(EXAMPLES / name), "--quiet")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "PASS" in r.stdout


def test_gpu_example_is_refused_without_a_gpu_before_building():
    from meca_node.runtime.hardware import detect_gpus

    require(not detect_gpus(), "this host has a GPU; the refusal case needs one without")
    r = cli("task", "test", str(EXAMPLES / "gpu-info"))
    assert r.returncode == 1
    assert "needs 1 GPU(s) (and the NVIDIA container runtime)" in r.stderr
    assert "building" not in r.stderr  # refused before a long build
