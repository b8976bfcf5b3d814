"""The README's first command runs this demo: real nodes, adverts, a file over Bitswap."""

from __future__ import annotations

import pytest

from conftest import run_cli

pytestmark = pytest.mark.integration


def test_demo_meshes_moves_a_file_intact_and_stops_cleanly():
    r = run_cli("demo", timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "same bytes: yes" in r.stdout
    assert "all 3 stopped with exit 0" in r.stdout
