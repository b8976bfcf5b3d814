"""Task folders through the real Docker engine and the offline base images.

Every case checks the container is gone afterwards, whatever happened.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from conftest import require, run_cli
from meca_node.node.developer import test_task as run_task_test
from meca_node.runtime.executor import (
    DockerExecutor, EngineUnavailable, TaskRunError, connect,
)
from meca_node.runtime.sandbox import LABEL
from meca_node.store.taskdir import folder_digest, read_task_folder

pytestmark = [pytest.mark.integration, pytest.mark.docker]

FLASK_HEAD = """\
from flask import Flask, request
app = Flask(__name__)
"""


@pytest.fixture(scope="module")
def client():
    try:
        c = connect()
    except EngineUnavailable as exc:
        require(False, str(exc))
    require(any("python:3.9-slim" in (i.tags or []) for i in c.images.list()),
            "the python:3.9-slim stand-in is missing: run scripts/base-images.sh")
    return c


def make_task(root: Path, app: str, *, output: bytes = b"hello", config: str = "{}",
              cmd: str = '["python", "-m", "flask", "--app", "app.py", "run", '
                         '"--host=0.0.0.0", "--port=8080"]') -> Path:
    (root / "src").mkdir(parents=True)
    (root / "src" / "app.py").write_text(textwrap.dedent(app))
    (root / "Dockerfile").write_text(f"FROM python:3.9-slim\nWORKDIR /app\nCOPY src/ /app/\n"
                                     f"EXPOSE 8080\nCMD {cmd}\n")
    (root / "name.txt").write_text(f"{root.name}\n")
    (root / "description.txt").write_text("test task\n")
    (root / "example_input.bin").write_bytes(b'{"input": "hello"}')
    (root / "example_output.bin").write_bytes(output)
    (root / "config.json").write_text(config)
    return root


def ours(client) -> list:
    import os

    return [c for c in client.containers.list(all=True, filters={"label": LABEL})
            if c.labels.get(f"{LABEL}.pid") == str(os.getpid())]


async def run(client, folder: Path, **kw):
    executor = DockerExecutor(client, **kw)
    spec = read_task_folder(folder)
    try:
        return await run_task_test(spec, folder, folder_digest(folder), executor,
                                   lambda kind, text: None)
    finally:
        assert ours(client) == [], "a container was left behind"


ECHO = FLASK_HEAD + """
print("meca-init-done", flush=True)

@app.route("/", methods=["POST"])
def entry():
    return request.json["input"]
"""


async def test_echo_passes_in_the_sandbox(client, tmp_path):
    report = await run(client, make_task(tmp_path / "echo", ECHO))
    assert report.ok and report.reply == b"hello"
    assert set(report.timings_s) == {"build", "start_to_init", "start_to_first_answer",
                                     "request"}


async def test_output_mismatch_is_reported_byte_for_byte(client, tmp_path):
    report = await run(client, make_task(tmp_path / "mismatch", ECHO, output=b"hello\n"))
    assert not report.ok
    assert "expected 6 bytes, got 5 bytes" in report.mismatch


async def test_app_that_never_prints_init_times_out_with_its_logs(client, tmp_path):
    app = FLASK_HEAD + 'print("starting but never ready", flush=True)\n'
    with pytest.raises(TaskRunError) as e:
        await run(client, make_task(tmp_path / "noinit", app), init_timeout_s=5)
    assert e.value.stage == "init" and "starting but never ready" in e.value.logs


async def test_app_that_prints_init_but_never_binds(client, tmp_path):
    app = 'import time\nprint("meca-init-done", flush=True)\ntime.sleep(600)\n'
    folder = make_task(tmp_path / "nobind", app, cmd='["python", "app.py"]')
    with pytest.raises(TaskRunError) as e:
        await run(client, folder, answer_timeout_s=3)
    assert e.value.stage == "request" and "nothing answered on port 8080" in str(e.value)


async def test_app_that_crashes_shows_exit_code_and_logs(client, tmp_path):
    app = 'raise SystemExit("boom: bad start")\n'
    folder = make_task(tmp_path / "crash", app, cmd='["python", "app.py"]')
    with pytest.raises(TaskRunError) as e:
        await run(client, folder)
    assert "exited with code 1" in str(e.value) and "boom: bad start" in e.value.logs


async def test_app_over_its_memory_limit_is_reported_as_out_of_memory(client, tmp_path):
    app = 'print("meca-init-done", flush=True)\nx = bytearray(400 * 1024 * 1024)\n'
    folder = make_task(tmp_path / "oom", app, cmd='["python", "app.py"]',
                       config='{"resource": {"mem": 64}}')
    with pytest.raises(TaskRunError) as e:
        await run(client, folder, answer_timeout_s=30)  # cgroup v1 OOM can take ~10 s
    assert "out of memory" in str(e.value)


async def test_reply_over_the_cap_is_refused(client, tmp_path):
    app = FLASK_HEAD + """
print("meca-init-done", flush=True)

@app.route("/", methods=["POST"])
def entry():
    return "x" * 100000
"""
    with pytest.raises(TaskRunError) as e:
        await run(client, make_task(tmp_path / "big", app), max_output=10_000)
    assert e.value.stage == "output"


async def test_build_failure_names_the_step(client, tmp_path):
    folder = make_task(tmp_path / "badbuild", ECHO)
    (folder / "Dockerfile").write_text("FROM python:3.9-slim\nRUN exit 3\n")
    with pytest.raises(TaskRunError) as e:
        await run(client, folder)
    assert e.value.stage == "build" and "build failed at `RUN exit 3`" in str(e.value)


async def test_the_sandbox_is_applied(client, tmp_path):
    app = FLASK_HEAD + """
import os
print("meca-init-done", flush=True)

@app.route("/", methods=["POST"])
def entry():
    try:
        open("/app/written", "w")
        ro = "writable"
    except OSError:
        ro = "read-only"
    caps = [l for l in open("/proc/self/status") if l.startswith("CapEff")][0].split()[1]
    return f"{ro} caps={caps}"
"""
    folder = make_task(tmp_path / "sandbox", app, output=b"read-only caps=0000000000000000")
    report = await run(client, folder)
    assert report.ok, report.mismatch
    executor = DockerExecutor(client)
    spec = read_task_folder(folder)
    async with executor.run(report.tag, spec.resources) as running:
        c = client.containers.get(running.container_id)
        host = c.attrs["HostConfig"]
        assert host["NanoCpus"] == 1_000_000_000 and host["Memory"] == 128 * 1024 * 1024
        assert host["MemorySwap"] == host["Memory"] and host["PidsLimit"] == 256
        assert host["ReadonlyRootfs"] and host["CapDrop"] == ["ALL"]
        assert not host.get("PortBindings")
        net = client.networks.get(executor.network)
        assert net.attrs["Internal"] is True
    assert ours(client) == []



async def test_missing_base_image_says_how_to_provide_it(client, tmp_path):
    folder = make_task(tmp_path / "nobase", ECHO)
    (folder / "Dockerfile").write_text("FROM python:3.8-slim-not-here\nCOPY src/ /app/\n")
    with pytest.raises(TaskRunError) as e:
        await run(client, folder)
    assert "python:3.8-slim-not-here" in str(e.value)
    assert "scripts/base-images.sh" in str(e.value) and "docker load" in str(e.value)


def test_cli_init_build_and_test_pass_as_written(client, tmp_path):
    """The template (the guide's app with requirements.txt + pip install) passes unchanged."""
    def cli(*args):
        return run_cli(*args, timeout=300)

    folder = tmp_path / "echo"
    assert cli("task", "init", str(folder)).returncode == 0
    built = cli("task", "build", str(folder), "--quiet")
    assert built.returncode == 0, built.stderr
    assert "built meca-task/echo:" in built.stdout
    tested = cli("task", "test", str(folder), "--quiet")
    assert tested.returncode == 0, tested.stderr
    assert "PASS: the reply equals example_output.bin" in tested.stdout
    assert "start to meca-init-done" in tested.stdout
    (folder / "example_output.bin").write_bytes(b"something else")
    failed = cli("task", "test", str(folder), "--quiet")
    assert failed.returncode == 1
    assert "reply differs" in failed.stderr and "+hello meca" in failed.stderr
    # the CLI runs in other processes: no task container of any owner may remain
    assert client.containers.list(all=True, filters={"label": LABEL}) == []


async def test_sandboxed_task_cannot_reach_the_hosts_own_services(client, tmp_path):
    """A listener we open on all interfaces of this host is unreachable from the sandbox."""
    import socket

    from meca_node.runtime.executor import BRIDGE

    listener = socket.socket()
    listener.bind(("0.0.0.0", 0))
    listener.listen()
    port = listener.getsockname()[1]
    app = FLASK_HEAD + """
import socket
print("meca-init-done", flush=True)

@app.route("/", methods=["POST"])
def entry():
    s = socket.socket()
    s.settimeout(2)
    try:
        s.connect((request.json["host"], request.json["port"]))
        return "reachable"
    except OSError:
        return "blocked"
"""
    folder = make_task(tmp_path / "probe", app, output=b"blocked")
    try:
        executor = DockerExecutor(client)
        await executor.prepare()
        gateway = client.networks.get(executor.network).attrs["IPAM"]["Config"][0]["Gateway"]
        (folder / "example_input.bin").write_text(
            f'{{"host": "{gateway}", "port": {port}}}')
        report = await run(client, folder)
        assert report.reply == b"blocked", report.reply
        assert client.networks.get(executor.network).attrs["Options"][
            "com.docker.network.bridge.name"] == BRIDGE
    finally:
        listener.close()
