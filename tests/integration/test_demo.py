"""The README's first command runs this demo: real nodes, adverts, a file over Bitswap."""

from __future__ import annotations

import pytest

from conftest import docker_engine, run_cli

pytestmark = [pytest.mark.integration, pytest.mark.docker]


def test_demo_meshes_moves_a_file_runs_a_task_and_stops_cleanly():
    docker_engine("python:3.9-slim")  # the task run needs the engine (fails in CI if not)
    r = run_cli("demo", timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "same bytes: yes" in r.stdout
    assert "equals example_output.bin: yes" in r.stdout
    assert "ran it again on" in r.stdout and "warm container" in r.stdout
    assert "every node reports these balances" in r.stdout and "after: unchanged" in r.stdout
    assert "all 5 stopped with exit 0" in r.stdout
