"""`meca-node service install`: the unit passes `systemd-analyze verify`, and its ExecStart,
run by hand, starts a node that prints "ready" and exits 0 on SIGTERM."""

from __future__ import annotations

import json
import os
import pwd
import shlex
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from conftest import docker_engine, require, run_cli
from meca_node.sim.cluster import child_env

pytestmark = pytest.mark.integration
ME = pwd.getpwuid(os.getuid()).pw_name  # a user that exists, so verify and the run agree
VENV_EXE = str(Path(sys.executable).parent / "meca-node")


def verify(unit: Path) -> str:
    """Everything `systemd-analyze verify` says about ``unit`` (an empty string: clean).
    Its exit status is 0 even for an unknown key or a bad value (they are ignored with a
    warning), so the output is what counts. systemd need not be PID 1 for this."""
    require(shutil.which("systemd-analyze") is not None,
            "systemd-analyze is missing: install the Debian package systemd (scripts/setup.sh)")
    r = subprocess.run(["systemd-analyze", "verify", "--man=no", "--generators=no", str(unit)],
                       capture_output=True, text=True, timeout=60,
                       env={**os.environ, "SYSTEMD_LOG_LEVEL": "notice",
                            "SYSTEMD_LOG_COLOR": "0"})
    said = (r.stdout + r.stderr).strip()
    return said if said or r.returncode == 0 else f"exit {r.returncode}"


def install(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess, Path]:
    units = tmp_path / "units"
    r = run_cli("service", "install", "--user", ME, "--unit-dir", str(units), *args)
    assert r.returncode == 0, r.stdout + r.stderr
    return r, units / "meca-node.service"


def directives(unit_text: str) -> dict[str, str]:
    out = {}
    for line in unit_text.splitlines():
        if line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            out[key] = value
    return out


@pytest.mark.parametrize("extra", [
    [],
    ["--docker-host", "unix:///run/user/1001/docker.sock", "--memory-max", "2G"],
    ["--role", "provider", "--role", "client", "--memory-max", "25%"],
])
def test_unit_passes_systemd_analyze_verify(tmp_path, extra):
    data = tmp_path / "var" / "meca-node%1"  # '%' would be a specifier: doubled
    r, unit = install(tmp_path, "--data-dir", str(data), *extra)
    assert verify(unit) == ""
    text = unit.read_text()
    assert text in r.stdout  # it prints what it wrote
    d = directives(text)
    argv = shlex.split(d["ExecStart"].replace("%%", "%"))
    assert argv[:2] == [VENV_EXE, "start"]
    assert argv[argv.index("--data-dir") + 1] == str(data)
    assert argv[argv.index("--config") + 1] == str(data / "config.toml")
    assert argv.count("--role") == max(1, extra.count("--role"))
    assert (d["User"], d["Group"]) == (ME, ME)
    assert (d["Restart"], d["RestartSec"]) == ("on-failure", "5")
    assert (d["NoNewPrivileges"], d["ProtectSystem"], d["PrivateTmp"]) == ("yes", "strict", "yes")
    assert d["ReadWritePaths"] == str(data).replace("%", "%%")
    assert (d["KillSignal"], d["TimeoutStopSec"]) == ("SIGTERM", "45")  # drain_grace_s 30 + 15
    assert "root-equivalent" in text
    if "--docker-host" in extra:
        assert d["Environment"] == "DOCKER_HOST=unix:///run/user/1001/docker.sock"
        assert "SupplementaryGroups" not in d and d["ProtectHome"] == "read-only"
        assert d["MemoryMax"] == "2G"
    else:
        assert d["SupplementaryGroups"] == "docker" and d["ProtectHome"] == "yes"
        assert "#Environment=DOCKER_HOST=unix:///run/user/" in text
        assert d["MemoryMax"] in ("512M", "25%")
    for step in ("systemctl daemon-reload", "systemctl enable --now meca-node.service",
                 "journalctl -u meca-node.service"):
        assert step in r.stdout


@pytest.mark.parametrize("change", [
    ("Restart=on-failure", "Restart=sometimes"),
    ("ProtectHome=yes", "ProtectHom=yes"),
    ("MemoryMax=512M", "MemoryMax=lots"),
    (f"ExecStart={VENV_EXE}", "ExecStart=/nonexistent/meca-node"),
])
def test_the_verify_check_catches_a_broken_unit(tmp_path, change):
    _, unit = install(tmp_path, "--data-dir", str(tmp_path / "data"))
    text = unit.read_text()
    assert change[0] in text
    unit.write_text(text.replace(change[0], change[1]))
    assert verify(unit) != ""


def _read_lines(stream, lines: list[str], seen: threading.Event, text: str) -> None:
    for line in stream:
        lines.append(line)
        if text in line:
            seen.set()


@pytest.mark.parametrize("role", ["client", pytest.param("provider", marks=pytest.mark.docker)])
def test_exec_start_runs_by_hand_and_stops_on_sigterm(tmp_path, role):
    if role == "provider":
        docker_engine()  # skipped here, failed in CI, without an engine
    data = tmp_path / "data"
    r = run_cli("network", "init", "--name", "svc", "--data-dir", str(data))
    assert r.returncode == 0, r.stderr
    (data / "config.toml").write_text(
        'listen = ["/ip4/127.0.0.1/tcp/0"]\ndrain_grace_s = 50\nlog_file = "logs/node.log"\n'
        "log_max_mb = 1\nstartup_benchmark = false\n")
    r, unit = install(tmp_path, "--data-dir", str(data), "--role", role)
    assert f"wrote {data / 'config.toml'}" not in r.stdout  # the config is kept
    assert verify(unit) == ""
    d = directives(unit.read_text())
    assert d["TimeoutStopSec"] == "65"  # drain_grace_s from the config + 15
    argv = shlex.split(d["ExecStart"])
    assert Path(argv[0]).is_absolute()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=child_env())
    out: list[str] = []
    errs: list[str] = []
    ready, taking_jobs = threading.Event(), threading.Event()
    readers = [threading.Thread(target=_read_lines, args=(proc.stdout, out, ready, "ready")),
               threading.Thread(target=_read_lines,
                                args=(proc.stderr, errs, taking_jobs, "taking jobs"))]
    for t in readers:
        t.start()
    try:
        assert ready.wait(60), f"no 'ready' within 60 s: {''.join(out)}{''.join(errs)}"
        assert any("listening on /ip4/127.0.0.1/tcp/" in line for line in out)
        if role == "provider":  # its environments are up: it would run jobs now
            assert taking_jobs.wait(60), "".join(errs)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, "".join(errs)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        for t in readers:
            t.join(timeout=10)
    stopping = [json.loads(line) for line in errs if "received SIGTERM" in line]
    assert stopping and stopping[0]["level"] == "info"  # stderr is no terminal: JSON lines
    logged = [json.loads(line) for line in (data / "logs" / "node.log").read_text().splitlines()]
    assert any(e["event"] == "received SIGTERM, stopping" for e in logged)


def test_install_creates_data_dir_and_config_and_print_changes_nothing(tmp_path):
    data = tmp_path / "data"
    printed = run_cli("service", "install", "--print", "--user", ME, "--data-dir", str(data),
                      "--unit-dir", str(tmp_path / "units"))
    assert printed.returncode == 0, printed.stderr
    assert printed.stdout.startswith("# meca-node.service") and "[Install]" in printed.stdout
    assert not data.exists() and not (tmp_path / "units").exists()
    r, unit = install(tmp_path, "--data-dir", str(data))
    assert unit.read_text() == printed.stdout
    assert f"created data dir {data}" in r.stdout and (data / "config.toml").exists()
    assert data.stat().st_mode & 0o777 == 0o750
    assert f"cp GENESIS.json {data / 'genesis.json'}" in r.stdout
    again, _ = install(tmp_path, "--data-dir", str(data))
    assert f"replaced {unit}" in again.stdout and "created data dir" not in again.stdout


@pytest.mark.parametrize("args,needle", [
    (["--memory-max", "lots"], "--memory-max"),
    (["--user", "Not A User"], "--user"),
    (["--docker-host", "/run/docker.sock"], "--docker-host"),
    (["--role", "miner"], "roles"),
    (["--data-dir", "/tmp/with\"quote"], "data dir"),
    (["--data-dir", "/tmp/with space"], "data dir"),
])
def test_install_refuses_bad_options(tmp_path, args, needle):
    r = run_cli("service", "install", "--print", "--user", ME, *args)
    assert r.returncode == 2 and needle in r.stderr, r.stderr


def test_install_refuses_an_invalid_config_naming_the_key(tmp_path):
    (tmp_path / "config.toml").write_text("drain_grace_s = -1\n")
    r = run_cli("service", "install", "--print", "--user", ME, "--data-dir", str(tmp_path))
    assert r.returncode == 2 and "drain_grace_s" in r.stderr and "config.toml" in r.stderr


def test_closed_dir_finds_a_folder_the_service_user_cannot_enter():
    import tempfile

    from meca_node.cli.service import closed_dir

    base = Path(tempfile.mkdtemp(prefix="meca-closed-", dir="/tmp"))  # /tmp: anyone enters
    try:
        inner = base / "a" / "b"
        inner.mkdir(parents=True)
        exe = inner / "meca-node"
        exe.write_text("")
        for folder in (base, base / "a", inner):
            folder.chmod(0o755)
        st = (base / "a").stat()
        other_uid, other_gid = st.st_uid + 4242, st.st_gid + 4242
        assert closed_dir(exe, other_uid, {other_gid}) is None
        (base / "a").chmod(0o750)
        assert closed_dir(exe, other_uid, {other_gid}) == base / "a"
        assert closed_dir(exe, other_uid, {st.st_gid}) is None  # its group may enter
        (base / "a").chmod(0o700)
        assert closed_dir(exe, other_uid, {st.st_gid}) == base / "a"
        assert closed_dir(exe, st.st_uid, set()) is None  # its owner may
        assert closed_dir(exe, 0, set()) is None  # root may
    finally:
        shutil.rmtree(base)


def test_a_log_file_outside_the_data_dir_is_writable_too(tmp_path):
    data, logs = tmp_path / "data", tmp_path / "logs"
    data.mkdir()
    (data / "config.toml").write_text(f'log_file = "{logs}/node.log"\n')
    r, unit = install(tmp_path, "--data-dir", str(data))
    assert directives(unit.read_text())["ReadWritePaths"] == f"{data} {logs}"
    assert f"install -d -o {ME} -g {ME} -m 0750 {logs}" in r.stdout  # it must exist
    assert verify(unit) == ""
    (data / "config.toml").write_text('log_file = "logs/node.log"\n')  # inside: nothing more
    _, unit = install(tmp_path, "--data-dir", str(data))
    assert directives(unit.read_text())["ReadWritePaths"] == str(data)
