"""`meca-node key export|import` as a user runs them: the key survives a round trip through
an encrypted file, and every refusal leaves the node key as it was."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from meca_node.sim.cluster import child_env

pytestmark = pytest.mark.integration
PASS = "correct horse battery staple"


def key(*args: str, passphrase: str | None = PASS, check: bool = True):
    """``meca-node key ARGS`` with the passphrase in MECA_KEY_PASSPHRASE (None: unset) and
    stdin not a terminal."""
    env = child_env()
    if passphrase is not None:
        env["MECA_KEY_PASSPHRASE"] = passphrase
    r = subprocess.run([sys.executable, "-m", "meca_node", "key", *args], capture_output=True,
                       text=True, timeout=60, env=env, stdin=subprocess.DEVNULL)
    if check:
        assert r.returncode == 0, r.stdout + r.stderr
    return r


def peer_id(data_dir: Path) -> str:
    r = subprocess.run([sys.executable, "-m", "meca_node", "id", "--json", "--data-dir",
                        str(data_dir)], capture_output=True, text=True, timeout=60,
                       env=child_env())
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)["peer_id"]


@pytest.fixture
def exported(tmp_path) -> tuple[str, Path, Path]:
    """(peer id, data dir, backup file) of a node whose key was exported."""
    a = tmp_path / "a"
    pid = peer_id(a)
    backup = tmp_path / "backup.json"
    key("export", "--out", str(backup), "--data-dir", str(a))
    return pid, a, backup


def test_export_then_import_into_a_fresh_data_dir_gives_the_same_peer_id(exported, tmp_path):
    pid, a, backup = exported
    assert backup.stat().st_mode & 0o777 == 0o600
    doc = json.loads(backup.read_text())
    assert doc["format"] == "meca-node-key" and doc["peer_id"] == pid
    assert (a / "node.key").read_text().strip() not in backup.read_text()
    b = tmp_path / "b"
    r = key("import", str(backup), "--data-dir", str(b))
    assert pid in r.stdout
    assert (b / "node.key").stat().st_mode & 0o777 == 0o600
    assert peer_id(b) == pid


def test_export_to_stdout(exported, tmp_path):
    pid, a, _ = exported
    r = key("export", "--data-dir", str(a))
    assert json.loads(r.stdout)["peer_id"] == pid


def test_wrong_passphrase_exits_2_and_writes_nothing(exported, tmp_path):
    _, _, backup = exported
    b = tmp_path / "b"
    r = key("import", str(backup), "--data-dir", str(b), passphrase="wrong", check=False)
    assert r.returncode == 2 and "wrong passphrase" in r.stderr and "nothing written" in r.stderr
    assert not (b / "node.key").exists()


def test_import_refuses_to_overwrite_without_force(exported, tmp_path):
    pid, _, backup = exported
    b = tmp_path / "b"
    other = peer_id(b)
    before = (b / "node.key").read_bytes()
    r = key("import", str(backup), "--data-dir", str(b), check=False)
    assert r.returncode == 2 and "--force" in r.stderr and other in r.stderr
    assert (b / "node.key").read_bytes() == before


def test_force_keeps_a_backup_of_the_old_key(exported, tmp_path):
    pid, _, backup = exported
    b = tmp_path / "b"
    other = peer_id(b)
    before = (b / "node.key").read_bytes()
    r = key("import", str(backup), "--force", "--json", "--data-dir", str(b))
    kept = Path(json.loads(r.stdout)["backup"])
    assert kept.parent == b and kept.name.startswith("node.key.bak-")
    assert kept.read_bytes() == before and kept.stat().st_mode & 0o777 == 0o600
    assert peer_id(b) == pid != other


def test_export_refuses_to_overwrite_without_force(exported):
    _, a, backup = exported
    before = backup.read_bytes()
    r = key("export", "--out", str(backup), "--data-dir", str(a), check=False)
    assert r.returncode == 2 and "--force" in r.stderr
    assert backup.read_bytes() == before
    key("export", "--out", str(backup), "--force", "--data-dir", str(a))
    assert backup.read_bytes() != before  # a fresh salt and nonce


@pytest.mark.parametrize("damage", [
    lambda doc: "not json",
    lambda doc: json.dumps({**doc, "version": 9}),
    lambda doc: json.dumps({**doc, "cipher": {**doc["cipher"], "nonce": "00"}}),
])
def test_a_damaged_file_is_refused(exported, tmp_path, damage):
    _, _, backup = exported
    bad = tmp_path / "bad.json"
    bad.write_text(damage(json.loads(backup.read_text())))
    r = key("import", str(bad), "--data-dir", str(tmp_path / "b"), check=False)
    assert r.returncode == 2 and str(bad) in r.stderr
    assert not (tmp_path / "b" / "node.key").exists()


def test_import_refuses_while_a_node_runs_on_the_data_dir(exported, tmp_path):
    _, _, backup = exported
    b = tmp_path / "b"
    b.mkdir()
    # what a running node's control API writes; this test process stands for the node
    (b / "control.json").write_text(json.dumps({"host": "127.0.0.1", "port": 1,
                                                "pid": os.getpid()}))
    r = key("import", str(backup), "--data-dir", str(b), check=False)
    assert r.returncode == 2 and "is running" in r.stderr
    assert not (b / "node.key").exists()


def test_no_passphrase_without_a_terminal_or_the_variable(exported, tmp_path):
    _, a, _ = exported
    r = key("export", "--out", str(tmp_path / "x.json"), "--data-dir", str(a), passphrase=None,
            check=False)
    assert r.returncode == 2 and "MECA_KEY_PASSPHRASE" in r.stderr
    assert not (tmp_path / "x.json").exists()
