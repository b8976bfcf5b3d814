"""The command line as a user runs it: identity, genesis, start/stop, control API auth."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from conftest import run_cli
from meca_node.sim.cluster import free_port

pytestmark = pytest.mark.integration
CLI = [sys.executable, "-m", "meca_node"]


def run(*args, check=True, timeout=60) -> subprocess.CompletedProcess:
    r = run_cli(*args, timeout=timeout)
    if check:
        assert r.returncode == 0, r.stdout + r.stderr
    return r


def test_id_creates_a_private_key_once(tmp_path):
    a = run("id", "--json", "--data-dir", str(tmp_path))
    b = run("id", "--json", "--data-dir", str(tmp_path))
    assert json.loads(a.stdout) == json.loads(b.stdout)
    assert json.loads(a.stdout)["peer_id"].startswith("12D3KooW")
    assert (tmp_path / "node.key").stat().st_mode & 0o777 == 0o600


def test_refuses_a_key_others_can_read(tmp_path):
    run("id", "--data-dir", str(tmp_path))
    (tmp_path / "node.key").chmod(0o644)
    r = run("id", "--data-dir", str(tmp_path), check=False)
    assert r.returncode == 2
    assert "readable by other users" in r.stderr and "chmod 600" in r.stderr


def test_network_init_and_show(tmp_path):
    other = json.loads(run("id", "--json", "--data-dir", str(tmp_path / "b")).stdout)
    r = run("network", "init", "--name", "testnet", "--data-dir", str(tmp_path / "a"),
            "--alloc", f"{other['peer_id']}=500", "--alloc", f"{other['public_key'][:0]}"
            f"{'ab' * 32}=7")
    assert "network 'testnet'" in r.stdout
    g = json.loads((tmp_path / "a" / "genesis.json").read_text())
    assert {a["amount"] for a in g["alloc"]} == {500, 7}
    shown = run("network", "show", str(tmp_path / "a" / "genesis.json"))
    assert g["network_id"] in shown.stdout
    # refuses to overwrite without --force
    again = run("network", "init", "--name", "x", "--data-dir", str(tmp_path / "a"), check=False)
    assert again.returncode == 2 and "--force" in again.stderr


def test_tampered_genesis_is_refused(tmp_path):
    run("network", "init", "--name", "t", "--data-dir", str(tmp_path))
    path = tmp_path / "genesis.json"
    doc = json.loads(path.read_text())
    doc["name"] = "evil"
    doc.pop("network_id")
    path.write_text(json.dumps(doc))
    r = run("start", "--data-dir", str(tmp_path), check=False)
    assert r.returncode == 2 and "bad_signature" in r.stderr


def test_start_without_genesis_says_how_to_make_one(tmp_path):
    r = run("start", "--data-dir", str(tmp_path), check=False)
    assert r.returncode == 2
    assert "network init" in r.stderr and "--genesis" in r.stderr


def test_bad_bootstrap_address_is_a_clear_error(tmp_path):
    run("network", "init", "--name", "t", "--data-dir", str(tmp_path))
    r = run("start", "--data-dir", str(tmp_path), "--bootstrap", "/ip4/127.0.0.1/tcp/1",
            check=False)
    assert r.returncode == 2 and "/p2p/<peer id>" in r.stderr


def _start(tmp_path: Path) -> subprocess.Popen:
    run("network", "init", "--name", "t", "--data-dir", str(tmp_path))
    port = free_port("127.0.0.1")
    return subprocess.Popen(
        [*CLI, "start", "--data-dir", str(tmp_path), "--listen",
         f"/ip4/127.0.0.1/tcp/{port}", "--json-logs"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_ready(proc: subprocess.Popen) -> list[str]:
    lines = []
    for line in proc.stdout:  # ends when the process exits; the node prints "ready" at start
        lines.append(line)
        if "ready" in line:
            return lines
    raise AssertionError(f"node exited before ready: {proc.wait()} {proc.stderr.read()}")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_idle_node_stops_on_signal_within_5s_with_exit_0(tmp_path, sig):
    proc = _start(tmp_path)
    try:
        lines = _wait_ready(proc)
        assert any("listening on /ip4/127.0.0.1/tcp/" in l and "/p2p/12D3KooW" in l
                   for l in lines)
        t0 = time.monotonic()
        proc.send_signal(sig)
        assert proc.wait(timeout=5) == 0
        assert time.monotonic() - t0 < 5
        assert not (tmp_path / "control.json").exists()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_control_api_needs_the_token_and_binds_loopback_only(tmp_path):
    proc = _start(tmp_path)
    try:
        _wait_ready(proc)
        info = json.loads((tmp_path / "control.json").read_text())
        assert info["host"] == "127.0.0.1"
        url = f"http://127.0.0.1:{info['port']}/v1/status"
        assert httpx.get(url, timeout=5).status_code == 401
        assert httpx.get(url, headers={"Authorization": "Bearer wrong"},
                         timeout=5).status_code == 401
        token = (tmp_path / "control.token").read_text().strip()
        assert (tmp_path / "control.token").stat().st_mode & 0o777 == 0o600
        r = httpx.get(url, headers={"Authorization": f"Bearer {token}"}, timeout=5)
        assert r.status_code == 200 and r.json()["peer_id"].startswith("12D3KooW")
        status = run("status", "--data-dir", str(tmp_path))
        assert "peers connected 0" in status.stdout
        peers = json.loads(run("peers", "--json", "--data-dir", str(tmp_path)).stdout)
        assert peers == {"connected": {}, "adverts": [], "dialing": []}
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=5) == 0


def test_status_without_a_running_node_says_so(tmp_path):
    r = run("status", "--data-dir", str(tmp_path), check=False)
    assert r.returncode == 1 and "no node is running" in r.stderr


def test_listen_address_in_use_fails_clearly(tmp_path):
    import socket

    run("network", "init", "--name", "t", "--data-dir", str(tmp_path))
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        r = run("start", "--data-dir", str(tmp_path), "--listen",
                f"/ip4/127.0.0.1/tcp/{port}", check=False, timeout=30)
    assert r.returncode == 1
    assert "could not listen" in r.stderr and "--listen" in r.stderr
