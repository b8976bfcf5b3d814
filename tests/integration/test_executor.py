"""Task folders through the real Docker engine and the offline base images.

Every case checks the container is gone afterwards, whatever happened.
"""

from __future__ import annotations

import random
import signal
import textwrap
import threading
import time
from pathlib import Path

import pytest
import trio

from conftest import docker_engine, require, run_cli, start_cli
from meca_node.core.task import TaskResources
from meca_node.node.developer import test_task as run_task_test
from meca_node.runtime.executor import (
    INIT_LINE, AppLog, DockerExecutor, Running, TaskRunError,
)
from meca_node.runtime.warmpool import WarmPool
from meca_node.runtime.sandbox import LABEL
from meca_node.store.taskdir import folder_digest, read_task_folder

pytestmark = [pytest.mark.integration, pytest.mark.docker]

FLASK_HEAD = """\
from flask import Flask, request
app = Flask(__name__)
"""


@pytest.fixture(scope="module")
def client():
    return docker_engine("python:3.9-slim")


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
        assert followers() == [], "a log follower thread was left running"


def followers() -> list[threading.Thread]:
    """The app-log follower threads alive in this process."""
    return [t for t in threading.enumerate() if t.name.startswith("meca-log-")]


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
    return f"{ro} caps={caps} uid={os.getuid()}"
"""
    folder = make_task(tmp_path / "sandbox", app,
                       output=b"read-only caps=0000000000000000 uid=10001")
    (folder / "src" / "app.py").chmod(0o600)  # readable to the non-root user all the same
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
        assert not host.get("PortBindings") and c.attrs["Config"]["User"] == "10001:10001"
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


#: a task that tries a TCP connection to the host and port in its input
PROBE = FLASK_HEAD + """
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


async def probe(client, folder: Path, host: str, port: int) -> bytes:
    (folder / "example_input.bin").write_text(f'{{"host": "{host}", "port": {port}}}')
    return (await run(client, folder)).reply


async def test_sandboxed_task_cannot_reach_the_hosts_own_services(client, tmp_path):
    """A listener we open on all interfaces of this host is unreachable from the sandbox."""
    import socket

    from meca_node.runtime.executor import BRIDGE

    listener = socket.socket()
    listener.bind(("0.0.0.0", 0))
    listener.listen()
    port = listener.getsockname()[1]
    folder = make_task(tmp_path / "probe", PROBE, output=b"blocked")
    try:
        executor = DockerExecutor(client)
        await executor.prepare()
        gateway = client.networks.get(executor.network).attrs["IPAM"]["Config"][0]["Gateway"]
        assert await probe(client, folder, gateway, port) == b"blocked"
        assert client.networks.get(executor.network).attrs["Options"][
            "com.docker.network.bridge.name"] == BRIDGE
    finally:
        listener.close()


#: runs in the outside namespace: accept connections for at most 120 s, greet each
OUTSIDE_LISTENER = r"""
import socket, sys, time
s = socket.socket()
s.bind(("0.0.0.0", int(sys.argv[1])))
s.listen()
s.settimeout(1)
print("listening", flush=True)
end = time.monotonic() + 120
while time.monotonic() < end:
    try:
        c, _ = s.accept()
    except socket.timeout:
        continue
    c.sendall(b"hello from outside")
    c.close()
"""

OUTSIDE_PORT = 18080


def connect_from_docker_bridge(client, host: str, port: int) -> str:
    """What a plain container on Docker's default network gets from host:port."""
    code = (f"import socket; s = socket.create_connection(({host!r}, {port}), timeout=5); "
            "print(s.recv(100).decode())")
    c = client.containers.create("python:3.9-slim", ["python", "-c", code],
                                 network="bridge", labels={"meca-node-test": "1"})
    try:
        c.start()
        c.wait(timeout=60)
        return c.logs().decode().strip()
    finally:
        c.remove(force=True)


async def test_sandboxed_task_has_no_egress_to_a_routed_outside(client, tmp_path):
    """An "outside" we build (a namespace the host routes to, with a listener) is reached
    from the host and from a plain container, but not from the sandbox."""
    import socket
    import subprocess
    import sys

    import netns

    require(netns.unavailable_reason() is None, str(netns.unavailable_reason()))
    outside = netns.create_outside()
    listener = None
    try:
        listener = subprocess.Popen(
            outside.exec_argv([sys.executable, "-c", OUTSIDE_LISTENER, str(OUTSIDE_PORT)]),
            stdout=subprocess.PIPE, text=True)
        assert listener.stdout.readline().strip() == "listening"
        with socket.create_connection((outside.addr, OUTSIDE_PORT), timeout=5) as s:
            assert s.recv(100) == b"hello from outside"  # the host routes there
        assert connect_from_docker_bridge(client, outside.addr, OUTSIDE_PORT) == \
            "hello from outside"  # and a container with egress reaches it
        folder = make_task(tmp_path / "egress", PROBE, output=b"blocked")
        assert await probe(client, folder, outside.addr, OUTSIDE_PORT) == b"blocked"
    finally:
        if listener is not None:
            listener.kill()
            listener.wait(timeout=10)
        netns.delete_outside(outside)


SLOW_REPLY = FLASK_HEAD + """
import time
print("meca-init-done", flush=True)

@app.route("/", methods=["POST"])
def entry():
    time.sleep(300)
    return "too late"
"""


def stop_cli_at(proc, marker: str, signum: int) -> str:
    """Read the CLI's progress (stderr) until a line has ``marker``, send ``signum``, and
    return all it wrote; the CLI must exit 130 within 30 s."""
    seen = []
    for line in proc.stderr:  # ends at EOF, so bounded by the CLI's own life
        seen.append(line)
        if marker in line:
            break
    else:
        proc.wait(timeout=30)
        raise AssertionError(f"the CLI ended before {marker!r}:\n{''.join(seen)}")
    proc.send_signal(signum)
    rest = proc.communicate(timeout=30)[1]
    assert proc.returncode == 130, "".join(seen) + rest
    return "".join(seen) + rest


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_interrupting_task_test_mid_request_removes_the_container(client, tmp_path, signum):
    folder = make_task(tmp_path / "slow", SLOW_REPLY)
    proc = start_cli("task", "test", str(folder), "--quiet")
    out = stop_cli_at(proc, "meca-init-done after", signum)
    assert "interrupted" in out and "no container is left running" in out
    left = client.containers.list(all=True, filters={"label": f"{LABEL}.pid={proc.pid}"})
    assert left == []


def test_interrupting_task_build_stops_it_and_leaves_no_container(client, tmp_path):
    folder = make_task(tmp_path / "slowbuild", ECHO)
    (folder / "Dockerfile").write_text(
        "FROM python:3.9-slim\nRUN echo step-started && sleep 120\n")
    def ids() -> set[str]:  # the low-level list: no per-container inspect to race with
        return {c["Id"] for c in client.api.containers(all=True)}

    before = ids()
    proc = start_cli("task", "build", str(folder))
    stop_cli_at(proc, "step-started", signal.SIGINT)
    # the engine stops the build once its client has gone; its intermediate container
    # goes with it (forcerm). Wait on the engine's own event for that, bounded.
    events = client.events(decode=True, filters={"type": "container", "event": "destroy"},
                           since=int(time.time()) - 60, until=int(time.time()) + 30)
    try:
        for _ in events:
            if ids() <= before:
                break
    finally:
        events.close()
    assert ids() <= before


@pytest.mark.parametrize("change,needle", [
    ({"Dockerfile": None}, "Dockerfile: is missing"),
    ({"example_output.bin": None}, "example_output.bin: is missing"),
    ({"config.json": "{"}, "config.json: is not valid JSON"),
    ({"config.json": '{"resource": {"cpu": "2"}}'}, "resource.cpu: must be a number"),
    ({"config.json": '{"resources": {}}'}, "config.json: resources: unknown field"),
    ({"config.json": '{"resource": {"cpu": 0}}'}, "resource.cpu: must be > 0"),
    ({"config.json": '{"resource": {"mem": -1}}'}, "resource.mem: must be > 0"),
    ({"config.json": '{"resource": {"gpu_count": 2}}'}, "use_gpu: is false while gpu_count"),
])
def test_task_test_refuses_a_bad_folder_before_docker(client, tmp_path, change, needle):
    """The CLI exits 2 naming file, field and fix; nothing is built or started."""
    folder = make_task(tmp_path / "bad", ECHO)
    for name, text in change.items():
        if text is None:
            (folder / name).unlink()
        else:
            (folder / name).write_text(text)
    before = {c["Id"] for c in client.api.containers(all=True)}
    r = run_cli("task", "test", str(folder))
    assert r.returncode == 2, r.stderr
    assert needle in r.stderr and "(fix: " in r.stderr
    assert "building" not in r.stderr
    assert {c["Id"] for c in client.api.containers(all=True)} == before


# -- the app's log for each job ----------------------------------------------------------

#: a stdlib HTTP app that prints one line per request to stdout and one to stderr, with
#: the body, before it replies; a body "many N" prints N lines of 50 bytes instead. No
#: access log: nothing is printed after the reply, so a job's lines are all its own.
LOGGING_APP = r"""
import http.server, sys

class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self):
        body = self.rfile.read(int(self.headers["content-length"])).decode()
        if body.startswith("many "):
            sys.stdout.write("".join("line %05d %s\n" % (i, "x" * 38)
                                     for i in range(int(body.split()[1]))))
            sys.stdout.flush()
        else:
            print("out " + body, flush=True)
            print("err " + body, file=sys.stderr, flush=True)
        self.send_response(200)
        self.send_header("content-length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args):
        pass

print("starting", flush=True)
print("meca-init-done", flush=True)
http.server.ThreadingHTTPServer(("0.0.0.0", 8080), Handler).serve_forever()
"""
LOG_RES = TaskResources(cpu=0.5, mem_mib=128, use_gpu=False, gpu_count=0)


@pytest.fixture(scope="module")
def logging_image(client, tmp_path_factory) -> str:
    folder = make_task(tmp_path_factory.mktemp("logapp") / "logapp", LOGGING_APP,
                       cmd='["python", "app.py"]')
    tag = "meca-task/executor-logapp:test"

    async def build() -> None:
        await DockerExecutor(client).build(folder, tag)

    trio.run(build)
    return tag


async def printed(running: Running, mark: int, size: int) -> None:
    """Wait, bounded, until the app has printed ``size`` bytes after ``mark`` (the engine
    delivers its output a little after the app writes it)."""
    with trio.fail_after(20):
        while running.log_mark() < mark + size:
            assert await trio.to_thread.run_sync(
                running.app_log.wait, running.log_mark(), 20.0), "the app's output ended"


async def test_each_job_on_a_warm_container_gets_only_its_own_lines(client, logging_image):
    pool = WarmPool(DockerExecutor(client))
    logs, containers = [], set()
    async with trio.open_nursery() as nursery:
        await nursery.start(pool.serve)
        for body in (b"first", b"second job"):
            async with pool.run(logging_image, LOG_RES) as running:
                mark = running.log_mark()
                reply, _ = await pool.request(running, body)
                assert reply == b"ok"
                await printed(running, mark, 2 * (len(body) + 5))
                logs.append(running.log_since(mark))
                containers.add(running.container_id)
        nursery.cancel_scope.cancel()
    assert len(containers) == 1 and pool.stats()["hits"] == 1  # one warm container
    for body, log in zip((b"first", b"second job"), logs):
        # stdout and stderr both, in whichever order the engine interleaved them
        assert sorted(log.splitlines()) == [b"err " + body, b"out " + body]
    assert ours(client) == [] and followers() == []


async def test_a_long_log_is_cut_to_the_limit_with_a_note(client, logging_image):
    lines = 2000  # 100,000 bytes: more than the 64 KiB kept
    expected = b"".join(b"line %05d %s\n" % (i, b"x" * 38) for i in range(lines))
    executor = DockerExecutor(client)
    async with executor.run(logging_image, LOG_RES) as running:
        assert b"meca-init-done" in running.log_since(0)  # the start's own output is kept
        mark = running.log_mark()
        await executor.request(running, b"many %d" % lines)
        await printed(running, mark, len(expected))
        assert running.log_mark() == mark + len(expected)
        short = running.log_since(mark, limit=1000)
        assert short == b"[... %d bytes cut ...]\n" % (len(expected) - 1000) + \
            expected[-1000:]
        default = running.log_since(mark)
        assert default == b"[... %d bytes cut ...]\n" % (len(expected) - 16384) + \
            expected[-16384:]
        everything = running.log_since(mark, limit=1 << 20)  # only what is still kept
        assert everything == b"[... %d bytes cut ...]\n" % (len(expected) - 65536) + \
            expected[-65536:]
        assert running.log_since(running.log_mark()) == b""


async def test_stop_ends_the_log_follower(client, logging_image):
    executor = DockerExecutor(client)
    running = await executor.start(logging_image, LOG_RES)
    follower = running.app_log.thread
    try:
        assert follower is not None and follower.is_alive() and follower.daemon
    finally:
        await executor.stop(running)
    follower.join(10)
    assert not follower.is_alive()
    assert ours(client) == [] and followers() == []


async def test_init_timeout_ends_the_log_follower(client, logging_image, tmp_path):
    app = 'import time\nprint("starting but never ready", flush=True)\ntime.sleep(600)\n'
    folder = make_task(tmp_path / "noinit", app, cmd='["python", "app.py"]')
    with pytest.raises(TaskRunError) as e:
        await run(client, folder, init_timeout_s=3)  # checks no follower is left
    assert e.value.stage == "init" and "starting but never ready" in e.value.logs


class FakeStream:
    """A finished log stream: its chunks, then the end."""

    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = iter(chunks)

    def __iter__(self):
        return self.chunks

    def close(self) -> None:
        pass


def follow(chunks: list[bytes], keep: int = AppLog.KEEP) -> AppLog:
    app_log = AppLog(keep)
    app_log.follow(FakeStream(chunks), "meca-log-fake")
    app_log.thread.join(10)
    assert not app_log.thread.is_alive()
    return app_log


def test_log_since_keeps_the_last_bytes_and_counts_the_rest_as_cut():
    rng = random.Random(7)
    chunks = [bytes([97 + i % 26]) * rng.choice([1, 5, 40, 150, 400]) for i in range(300)]
    everything = b"".join(chunks)
    app_log = follow(chunks, keep=1000)
    assert app_log.mark() == len(everything)
    for _ in range(500):
        mark = rng.randrange(-5, len(everything) + 5)
        limit = rng.choice([0, 1, 10, 999, 1000, 5000])
        after = everything[max(mark, 0):]
        shown = after[len(after) - min(limit, 1000, len(after)):]
        cut = len(after) - len(shown)
        note = b"[... %d bytes cut ...]\n" % cut if cut else b""
        assert app_log.since(mark, limit) == note + shown, (mark, limit)


@pytest.mark.parametrize("chunks,found", [
    ([b"a\nmeca-in", b"it-done\nmore"], True),
    ([b"x\n", b"  meca-init-done  \r\n"], True),
    ([b"x\n", INIT_LINE.encode()], True),  # the last line, without a newline
    ([b"meca-init-done-not\n", b"meca-init-"], False),
    ([], False),
])
def test_init_line_is_found_as_before(chunks, found):
    app_log = follow(chunks)
    assert app_log.init_settled.is_set() and app_log.init_found is found
    assert app_log.since(0) == b"".join(chunks)


def test_a_replacing_containers_log_goes_on_from_the_dead_ones():
    dead = follow([b"job one\n", b"dying words\n"], keep=30)
    mark = len(b"job one\n")
    fresh = follow([b"starting\nmeca-init-done\n"], keep=30)
    fresh.adopt(dead)
    assert fresh.mark() == len(b"job one\ndying words\nstarting\nmeca-init-done\n")
    assert fresh.since(mark, limit=100) == \
        b"[... 6 bytes cut ...]\nwords\nstarting\nmeca-init-done\n"

