"""Hostile tasks run as real jobs through a real provider process: each is stopped by the
sandbox (``meca_node/runtime/sandbox.py``) and leaves the provider healthy.

One provider process and one client (that is also the developer) serve every case (a
module fixture; they share this host's Docker engine, so the images need not travel). The
hostile tasks are small task folders written here: one reaches for an "outside" this test
builds (a network namespace routed from the host, with a listener) and for a service on the
host; one writes to ``/``, ``/usr``, ``/etc``; one is a fork bomb; one fills every place it
can write (``/tmp``, ``/dev/shm``, a ``VOLUME`` its image declares, its log) and tries the
read-only rest. After each the provider must be healthy: its control API answers, it runs a
plain echo task byte for byte, its free resources equal what it offers (also in its advert
as the client sees it), and none of its containers is left once the warm pool's idle time
(1 s here) has passed.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import docker.errors
import pytest

from conftest import docker_engine, require, wait_for
from meca_node.runtime.sandbox import NETWORK, SandboxLimits
from meca_node.sim import Cluster
from meca_node.sim.cluster import child_env
from test_executor import (
    ECHO, FLASK_HEAD, OUTSIDE_LISTENER, OUTSIDE_PORT, connect_from_docker_bridge, make_task,
)

pytestmark = [pytest.mark.integration, pytest.mark.docker, pytest.mark.netns]

LIMITS = SandboxLimits()
MIB = 1 << 20


def cli(node, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "meca_node", *args, "--data-dir",
                           str(node.data_dir)], capture_output=True, timeout=timeout,
                          env=child_env())


# -- the hostile apps ---------------------------------------------------------------------
#: tries a TCP connection to each [host, port] of the input; replies what happened to each
EGRESS = FLASK_HEAD + """
import json, socket
print("meca-init-done", flush=True)

@app.route("/", methods=["POST"])
def entry():
    seen = {}
    for host, port in request.json["targets"]:
        s = socket.socket()
        s.settimeout(3)
        try:
            s.connect((host, port))
        except OSError as exc:
            seen[f"{host}:{port}"] = f"blocked: {exc}"
            s.close()
            continue
        s.settimeout(0.5)
        try:  # connected: reached, whether or not the other side says something
            greeting = s.recv(100).decode(errors="replace")
        except OSError:
            greeting = ""
        finally:
            s.close()
        seen[f"{host}:{port}"] = "reached: " + greeting
    return json.dumps(seen, sort_keys=True)
"""

#: as root, tries to create, append to or overwrite each path of the input; /tmp is the
#: control (writable)
WRITE = FLASK_HEAD + """
import errno, json, os
print("meca-init-done", flush=True)

def attempt(path):
    try:
        if path.endswith("/"):
            os.mkdir(path + "meca-was-here")
        elif os.path.exists(path):
            with open(path, "r+b") as f:
                f.write(b"x")
        else:
            with open(path, "wb") as f:
                f.write(b"x")
        return "written"
    except OSError as exc:
        return errno.errorcode.get(exc.errno, str(exc.errno))

@app.route("/", methods=["POST"])
def entry():
    return json.dumps({p: attempt(p) for p in request.json["paths"]}, sort_keys=True)
"""

#: starts the classic shell fork bomb and watches its pids cgroup for a few seconds; the
#: bomb goes on until the provider removes the container
FORK_BOMB = FLASK_HEAD + """
import json, subprocess, time
print("meca-init-done", flush=True)

def cgroup(name):
    for path in (f"/sys/fs/cgroup/pids/{name}", f"/sys/fs/cgroup/{name}"):
        try:
            with open(path) as f:
                return f.read().strip()
        except OSError:
            pass
    return ""

@app.route("/", methods=["POST"])
def entry():
    subprocess.Popen(["sh", "-c", "b() { b | b & }; b"], stdout=subprocess.DEVNULL,
                     stderr=subprocess.DEVNULL)
    peak, end = 0, time.monotonic() + request.json["seconds"]
    while time.monotonic() < end:
        peak = max(peak, int(cgroup("pids.current") or 0))
        time.sleep(0.05)
    refused = cgroup("pids.events").split()  # "max N": forks refused at the limit
    return json.dumps({"peak": peak, "max": cgroup("pids.max"),
                       "refused": int(refused[1]) if len(refused) == 2 else None})
"""

#: as root: writes 1 MiB blocks to each directory of the input until an error or
#: ``cap_mib`` (so a place that is not bounded shows as such instead of filling the host),
#: prints ``meca-hostile-held`` and keeps what it wrote for ``hold_s`` (for the test to look
#: at the container), then replies MiB written and the error per directory
FILL = FLASK_HEAD + """
import errno, json, os, time
print("meca-init-done", flush=True)

def fill(directory, cap_mib):
    block, written = b"x" * (1 << 20), 0
    try:
        with open(os.path.join(directory, "fill.bin"), "wb", buffering=0) as f:
            while written < cap_mib:
                f.write(block)
                written += 1
            os.fsync(f.fileno())
        return [written, "unbounded"]
    except OSError as exc:
        return [written, errno.errorcode.get(exc.errno, str(exc.errno))]

@app.route("/", methods=["POST"])
def entry():
    seen = {d: fill(d, request.json["cap_mib"]) for d in request.json["dirs"]}
    print("meca-hostile-held", flush=True)
    time.sleep(request.json["hold_s"])
    return json.dumps(seen, sort_keys=True)
"""


#: prints ``kib`` KiB to stdout during the job, then ``meca-hostile-held``, waits
#: ``hold_s`` and replies
FLOOD = FLASK_HEAD + """
import sys, time
print("meca-init-done", flush=True)

@app.route("/", methods=["POST"])
def entry():
    line = "y" * 1023 + "\\n"
    for _ in range(request.json["kib"]):
        sys.stdout.write(line)
    print("meca-hostile-held", flush=True)
    time.sleep(request.json["hold_s"])
    return f"printed {request.json['kib']} KiB"
"""


def hostile_task(root: Path, name: str, app: str, *, root_user: bool = False,
                 volume: str | None = None, config: str = "{}") -> Path:
    """A task folder ``root/name`` with the Flask ``app`` (the offline base image has
    Flask), optionally run as root (the sandbox keeps an explicit ``USER root``) and with
    a ``VOLUME``."""
    folder = make_task(root / name, app, config=config)
    extra = ("USER root\n" if root_user else "") + (f"VOLUME {volume}\n" if volume else "")
    dockerfile = folder / "Dockerfile"
    dockerfile.write_text(dockerfile.read_text().replace("EXPOSE 8080\n",
                                                         "EXPOSE 8080\n" + extra))
    return folder


# -- the shared provider and client ---------------------------------------------------------
class Net:
    """The running cluster (``user`` is client and developer, ``provider`` runs the jobs),
    the Docker engine and the outside namespace with its listener."""

    def __init__(self, cluster: Cluster, engine, outside, folders: dict[str, Path]) -> None:
        self.cluster = cluster
        self.user, self.provider = cluster.nodes
        self.engine = engine
        self.outside = outside
        self.folders = folders
        self.offered = self.provider.status()["offered"]

    def run(self, task: str, body: dict, timeout: float = 120) -> subprocess.CompletedProcess:
        """``meca-node run TASK --input BODY --json`` on the client."""
        return cli(self.user, "run", task, "--input", json.dumps(body), "--json",
                   "--timeout", "60", timeout=timeout)

    def reply(self, task: str, body: dict) -> dict:
        """The JSON reply of a job that ran on the provider."""
        r = self.run(task, body)
        assert r.returncode == 0, r.stderr.decode()
        done = json.loads(r.stdout)
        assert done["provider"] == self.provider.peer_id
        return json.loads(done["output"])

    def held(self, task: str, body: dict) -> tuple[subprocess.CompletedProcess, dict]:
        """Run a job whose app prints ``meca-hostile-held`` and then waits; meanwhile, look
        at its container: the bytes it has on this host's disk, outside of memory. Returns
        the job's CLI result and that look."""
        runner = subprocess.Popen(
            [sys.executable, "-m", "meca_node", "run", task, "--input", json.dumps(body),
             "--json", "--timeout", "60", "--data-dir", str(self.user.data_dir)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=child_env())
        try:
            def holding():
                for c in self.containers():
                    try:
                        if b"meca-hostile-held" in self.engine.api.logs(c["Id"], tail=3):
                            return c["Id"]
                    except docker.errors.NotFound:  # removed meanwhile: not the one
                        pass
                assert runner.poll() is None, runner.communicate()[1].decode()
                return None

            container_id = wait_for(f"{task}'s app to hold", holding, 60)
            look = on_disk(self.engine, container_id)
            out, err = runner.communicate(timeout=90)
        finally:
            if runner.poll() is None:
                runner.kill()
                runner.wait(timeout=30)
        return subprocess.CompletedProcess(runner.args, runner.returncode, out, err), look

    def containers(self) -> list[dict]:
        """The provider's containers, from the engine's low-level list (no inspect per
        container to race with their removal)."""
        return self.engine.api.containers(
            all=True, filters={"label": f"meca-node.pid={self.provider.proc.pid}"})

    def assert_healthy(self) -> None:
        """The provider answers, runs a plain job exactly, is whole again, and keeps no
        container past the warm pool's idle time."""
        assert self.provider.proc.poll() is None, self.cluster.tail(self.provider)
        assert self.provider.status()["peer_id"] == self.provider.peer_id  # control API
        r = self.run("plain-echo", {"input": "still here"})
        assert r.returncode == 0, r.stderr.decode()
        assert json.loads(r.stdout)["output"] == "still here"

        def whole():
            s = self.provider.status()
            advert = next((a for a in self.user.peers()["adverts"]
                           if a["peer_id"] == self.provider.peer_id), None)
            return (s["jobs_running"] == 0 and s["free"] == s["offered"] == self.offered
                    and advert is not None and advert["free"] == self.offered)

        wait_for("the provider's free resources to equal what it offers", whole, 15)
        wait_for("the provider's containers to be gone after the warm pool's idle time",
                 lambda: self.containers() == [], 15)


@pytest.fixture(scope="module")
def net(tmp_path_factory):
    import netns

    engine = docker_engine("python:3.9-slim")
    require(netns.unavailable_reason() is None, str(netns.unavailable_reason()))
    root = tmp_path_factory.mktemp("hostile")
    tasks = root / "tasks"
    folders = {
        "plain-echo": make_task(tasks / "plain-echo", ECHO),
        "hostile-egress": hostile_task(tasks, "hostile-egress", EGRESS),
        "hostile-write": hostile_task(tasks, "hostile-write", WRITE, root_user=True),
        "hostile-fork-bomb": hostile_task(tasks, "hostile-fork-bomb", FORK_BOMB,
                                          config='{"resource": {"cpu": 0.25}}'),
        "hostile-flood": hostile_task(tasks, "hostile-flood", FLOOD),
        "hostile-fill": hostile_task(tasks, "hostile-fill", FILL, root_user=True,
                                     volume="/data", config='{"resource": {"mem": 320}}'),
    }
    outside = netns.create_outside()
    listener = None
    cluster = Cluster(root / "c", 2, advert_interval_s=1.0,
                      roles=[("developer", "client"), ("provider",)])
    try:
        listener = subprocess.Popen(
            outside.exec_argv([sys.executable, "-c", OUTSIDE_LISTENER, str(OUTSIDE_PORT)]),
            stdout=subprocess.PIPE, text=True)
        assert listener.stdout.readline().strip() == "listening"
        cluster.prepare()
        with open(cluster.nodes[1].data_dir / "config.toml", "a") as f:
            f.write("warm_pool_s = 1.0\n")  # containers stay warm 1 s, then go
        with cluster:
            user, provider = cluster.nodes
            cluster.wait_mesh(timeout_s=20)
            for folder in folders.values():
                r = cli(user, "task", "publish", str(folder), "--fee", "0", "--no-test",
                        "--quiet")
                assert r.returncode == 0, r.stderr.decode()
            wait_for("the offers at the provider", lambda: {
                o["name"] for o in provider.client().get("/v1/offers")["offers"]
            } >= set(folders), 20)
            yield Net(cluster, engine, outside, folders)
    finally:
        if listener is not None:
            listener.kill()
            listener.wait(timeout=10)
        netns.delete_outside(outside)


# -- sampling the host while a job runs -------------------------------------------------------
class Sampler:
    """Samples ``measure()`` every 20 ms in a thread while the ``with`` block runs."""

    def __init__(self, measure: Callable[[], int]) -> None:
        self.measure = measure
        self.values: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        deadline = time.monotonic() + 300  # bounded even if the block never ends
        while not self._stop.is_set() and time.monotonic() < deadline:
            self.values.append(self.measure())
            self._stop.wait(0.02)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(10)


def host_pids() -> int:
    """Processes (not threads) on this host now."""
    return sum(1 for name in os.listdir("/proc") if name.isdigit())


def tree_bytes(path: str) -> int:
    """Bytes in the files under ``path`` (0 when it is missing)."""
    total = 0
    for folder, _, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(folder, name)).st_size
            except OSError:  # gone meanwhile
                pass
    return total


def on_disk(engine, container_id: str) -> dict:
    """Where a running container can hold bytes on this host's disk: its writable layer
    (the overlay upper directory itself), its log files, and the volumes mounted in it."""
    attrs = engine.api.inspect_container(container_id)
    upper = attrs["GraphDriver"]["Data"].get("UpperDir", "")
    log_dir = os.path.dirname(attrs["LogPath"])
    return {"upper_dir": tree_bytes(upper),
            "logs": sum(os.path.getsize(os.path.join(log_dir, f))
                        for f in os.listdir(log_dir) if "-json.log" in f),
            "volumes": [m for m in attrs["Mounts"] if m["Type"] != "tmpfs"],
            "tmpfs": sorted(attrs["HostConfig"].get("Tmpfs") or {})}


# -- the cases ---------------------------------------------------------------------------------
def test_a_task_reaching_for_an_outside_is_blocked(net):
    """The outside is reached from this host and from a plain container, and a listener on
    all of this host's interfaces exists; from the sandboxed job, neither answers."""
    with socket.create_connection((net.outside.addr, OUTSIDE_PORT), timeout=5) as s:
        assert s.recv(100) == b"hello from outside"
    assert connect_from_docker_bridge(net.engine, net.outside.addr, OUTSIDE_PORT) == \
        "hello from outside"
    service = socket.socket()
    service.bind(("0.0.0.0", 0))
    service.listen()
    try:
        gateway = net.engine.networks.get(NETWORK).attrs["IPAM"]["Config"][0]["Gateway"]
        targets = [[net.outside.addr, OUTSIDE_PORT], [gateway, service.getsockname()[1]],
                   ["127.0.0.1", 8080]]  # the app's own server: the probe does see a reach
        seen = net.reply("hostile-egress", {"targets": targets})
    finally:
        service.close()
    assert set(seen) == {f"{h}:{p}" for h, p in targets}
    print("egress:", seen)
    assert seen.pop("127.0.0.1:8080").startswith("reached"), seen
    assert all(v.startswith("blocked: ") for v in seen.values()), seen
    net.assert_healthy()


def test_a_task_writing_to_its_root_gets_read_only_errors(net):
    """Run as root (its image says USER root), so only the read-only root stops it."""
    paths = ["/", "/usr/", "/usr/local/bin/python3", "/app/app.py", "/etc/passwd",
             "/etc/hosts", "/etc/resolv.conf", "/root/", "/var/tmp/", "/tmp/control"]
    seen = net.reply("hostile-write", {"paths": paths})
    assert seen.pop("/tmp/control") == "written"  # it can write where it may
    assert seen == {p: "EROFS" for p in paths[:-1]}, seen
    net.assert_healthy()


def test_a_fork_bomb_is_held_at_the_pids_limit(net):
    """The bomb reaches the pids limit and has forks refused there; this host's process
    count grows by no more than the limit, the job ends with the bomb's own report, and
    the provider removes the container with the bomb still going."""
    before = host_pids()
    with Sampler(host_pids) as pids:
        seen = net.reply("hostile-fork-bomb", {"seconds": 3})
    assert seen["max"] == str(LIMITS.pids), seen
    assert LIMITS.pids * 0.8 <= seen["peak"] <= LIMITS.pids, seen
    assert seen["refused"] is None or seen["refused"] > 0, seen  # None: no pids.events
    grew = max(pids.values) - before
    print(f"fork bomb: {seen}; host processes {before} -> at most {max(pids.values)}")
    # an unbounded bomb would grow by thousands within the 3 s; other work on this host
    # accounts for the slack
    assert grew < LIMITS.pids + 150, (before, max(pids.values))
    # its container was not kept warm with the bomb still going
    assert net.provider.status()["warm_pool"]["not_kept_busy"] >= 1
    net.assert_healthy()
    assert host_pids() < before + 100  # the bomb's processes went with the container


def test_a_task_filling_its_disk_is_bounded_in_memory_not_on_the_host(net):
    """/tmp, /dev/shm and the image's VOLUME fill to their size and then say ENOSPC (or
    ENOMEM: tmpfs is charged to the task's memory), the read-only rest refuses at once;
    while it holds what it wrote, its container has nothing on this host's disk (empty
    writable layer, no volume), and no volume is left after."""
    volumes_before = {v.name for v in net.engine.volumes.list()}
    cap = 4 * LIMITS.tmpfs_mib  # an unbounded place stops here, not at a full host disk
    body = {"dirs": ["/tmp", "/dev/shm", "/data", "/", "/app", "/var/tmp"], "cap_mib": cap,
            "hold_s": 3}
    r, look = net.held("hostile-fill", body)
    assert r.returncode == 0, r.stderr.decode()
    seen = json.loads(json.loads(r.stdout)["output"])
    print(f"fill: {seen}; its container on this host's disk: {look}")
    for d, size in (("/tmp", LIMITS.tmpfs_mib), ("/dev/shm", LIMITS.shm_mib),
                    ("/data", LIMITS.tmpfs_mib)):
        written, error = seen[d]
        assert error in ("ENOSPC", "ENOMEM") and written <= size, seen
    assert seen["/tmp"] == [LIMITS.tmpfs_mib, "ENOSPC"], seen  # the first to fill: all of it
    for d in ("/", "/app", "/var/tmp"):
        assert seen[d] == [0, "EROFS"], seen
    # the ~192 MiB it holds are in memory: nothing in its writable layer, no volume
    assert look["upper_dir"] < MIB, look
    assert look["volumes"] == [] and look["tmpfs"] == ["/data", "/tmp"], look
    assert {v.name for v in net.engine.volumes.list()} == volumes_before
    net.assert_healthy()


def test_a_task_flooding_its_output_gets_its_reply_and_a_cut_log(net):
    """32 MiB printed during one job: the engine keeps at most its json-file bound of it
    (the current file and one rotated, each at most ``log_bytes``), and the job still
    answers."""
    r, look = net.held("hostile-flood", {"kib": 32 * 1024, "hold_s": 2})
    print(f"flood: its container on this host's disk: {look}")
    assert look["logs"] <= 2 * LIMITS.log_bytes + 64 * 1024, look
    assert r.returncode == 0, r.stderr.decode() + net.cluster.tail(net.provider, 3)
    assert json.loads(r.stdout)["output"] == f"printed {32 * 1024} KiB"
    net.assert_healthy()
