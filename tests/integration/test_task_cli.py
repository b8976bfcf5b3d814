"""`meca-node task init` writes a folder that `task validate` accepts; errors exit 2."""

from __future__ import annotations

import json

import pytest

from conftest import run_cli

pytestmark = pytest.mark.integration


cli = run_cli


def test_init_then_validate(tmp_path):
    r = cli("task", "init", str(tmp_path / "echo"))
    assert r.returncode == 0, r.stderr
    r = cli("task", "validate", str(tmp_path / "echo"), "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["valid"] and doc["name"] == "echo" and doc["resources"]["mem"] == 128
    # init refuses to write into a folder that has files
    assert cli("task", "init", str(tmp_path / "echo")).returncode == 2


def test_validate_lists_every_problem_and_exits_2(tmp_path):
    cli("task", "init", str(tmp_path / "t"))
    (tmp_path / "t" / "config.json").write_text('{"resource": {"cpu": -1, "mem": 0}}')
    (tmp_path / "t" / "name.txt").unlink()
    r = cli("task", "validate", str(tmp_path / "t"))
    assert r.returncode == 2
    assert "name.txt: is missing" in r.stderr
    assert "config.json: resource.cpu: must be > 0" in r.stderr
    assert "config.json: resource.mem: must be > 0" in r.stderr
    assert cli("task", "validate", str(tmp_path / "nowhere")).returncode == 2
