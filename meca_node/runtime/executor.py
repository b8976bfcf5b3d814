"""Run task containers on the local Docker engine, in the sandbox of ``sandbox.py``.

Docker SDK calls block, so each runs in a worker thread (``trio.to_thread``). A run
always removes its container, also when cancelled (the removal is shielded).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import docker
import docker.errors
import httpx
import trio
from docker.types import DeviceRequest

from meca_node.core.task import TaskResources
from meca_node.runtime.sandbox import (
    APP_PORT, LABEL, NETWORK, SandboxLimits, container_options,
)

log = logging.getLogger("meca_node.runtime")
INIT_LINE = "meca-init-done"


BRIDGE = "meca-sbx0"
_BRIDGE_OPTION = "com.docker.network.bridge.name"


def isolate_host_from_bridge(bridge: str) -> bool:
    """Drop what sandboxed containers send to the host itself (an ``--internal`` network
    blocks forwarding only: the host's own 0.0.0.0 services, the node's libp2p port among
    them, stay reachable through the bridge). Replies to connections the host opened are
    let through. Needs root and a local engine; returns whether the rules are in place."""
    import shutil
    import subprocess

    host = os.environ.get("DOCKER_HOST", "")
    if host and not host.startswith("unix://"):
        return False  # the engine runs elsewhere; its host's firewall is not ours
    iptables = shutil.which("iptables") or "/usr/sbin/iptables"
    if os.geteuid() != 0 or not os.path.exists(iptables):
        log.warning("cannot isolate the host from sandboxed tasks (needs root and iptables); "
                    "tasks can reach services this host binds on all interfaces")
        return False
    rules = [["-i", bridge, "-j", "DROP"],
             ["-i", bridge, "-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED",
              "-j", "ACCEPT"]]
    for rule in rules:  # each inserted at the top, so ACCEPT ends up before DROP
        present = subprocess.run([iptables, "-C", "INPUT", *rule], capture_output=True,
                                 timeout=30).returncode == 0
        if not present:
            subprocess.run([iptables, "-I", "INPUT", "1", *rule], check=True,
                           capture_output=True, timeout=30)
    return True


class EngineUnavailable(Exception):
    """No Docker engine answers; the message says how to start one."""


class TaskRunError(Exception):
    """A task failed at ``stage`` (build, start, init, request, output); ``logs`` are its last lines."""

    def __init__(self, stage: str, message: str, logs: str = "") -> None:
        super().__init__(message)
        self.stage = stage
        self.logs = logs


@dataclass
class Running:
    container_id: str
    address: str
    started_mono: float
    init_s: float
    http: httpx.AsyncClient | None = None  # one keep-alive connection pool per run


def connect() -> docker.DockerClient:
    try:
        client = docker.from_env(timeout=60)
        client.ping()
        return client
    except Exception as exc:
        raise EngineUnavailable(
            f"no Docker engine answers ({exc}). Start one with scripts/setup.sh, or point "
            "DOCKER_HOST at a running (e.g. rootless) engine") from None


class DockerExecutor:
    def __init__(self, client: docker.DockerClient, limits: SandboxLimits | None = None,
                 network: str = NETWORK, init_timeout_s: float = 60.0,
                 answer_timeout_s: float = 30.0, request_timeout_s: float = 300.0,
                 max_output: int = 16 * 1024 * 1024) -> None:
        self.client = client
        self.limits = limits or SandboxLimits()
        self.network = network
        self.init_timeout_s = init_timeout_s
        self.answer_timeout_s = answer_timeout_s
        self.request_timeout_s = request_timeout_s
        self.max_output = max_output

    # -- set-up -----------------------------------------------------------------------
    async def prepare(self) -> None:
        """Create the internal (no egress) network and remove orphans of dead owners."""
        await trio.to_thread.run_sync(self._prepare)

    def _prepare(self) -> None:
        nets = [n for n in self.client.networks.list(names=[self.network])
                if n.name == self.network]
        if nets and nets[0].attrs.get("Options", {}).get(_BRIDGE_OPTION) != BRIDGE:
            try:  # made by an older version without a fixed bridge name: make it anew
                nets[0].remove()
                nets = []
            except docker.errors.APIError as exc:
                log.warning("could not recreate network %s: %s", self.network, exc)
        if not nets:
            self.client.networks.create(self.network, driver="bridge", internal=True,
                                        labels={LABEL: "1"}, check_duplicate=True,
                                        options={_BRIDGE_OPTION: BRIDGE})
        isolate_host_from_bridge(BRIDGE)
        for c in self.client.containers.list(all=True, filters={"label": LABEL}):
            owner = c.labels.get(f"{LABEL}.pid", "")
            if owner.isdigit() and int(owner) != os.getpid() and _alive(int(owner)):
                continue
            log.info("removing orphan container %s", c.short_id)
            try:
                c.remove(force=True)
            except docker.errors.NotFound:
                pass

    # -- images -------------------------------------------------------------------------
    async def build(self, folder: Path, tag: str,
                    on_line: Callable[[str], None] | None = None,
                    buildargs: dict[str, str] | None = None) -> str:
        """Build ``folder`` as ``tag``; live output goes to ``on_line``; returns the image id."""
        return await trio.to_thread.run_sync(self._build, folder, tag, on_line, buildargs)

    def _build(self, folder, tag, on_line, buildargs) -> str:
        lines: list[str] = []
        image_id = None
        args = {**package_index_args(os.environ, _pip_config()), **(buildargs or {})}
        dockerfile = _with_build_args(Path(folder) / "Dockerfile", sorted(args))
        try:
            stream = self.client.api.build(path=str(folder), dockerfile=dockerfile, tag=tag,
                                           rm=True, forcerm=True, decode=True, buildargs=args,
                                           labels={LABEL: "1"}, network_mode="host")
            for chunk in stream:
                if "stream" in chunk:
                    for line in chunk["stream"].splitlines():
                        lines.append(line)
                        if on_line:
                            on_line(line)
                if "aux" in chunk and "ID" in chunk["aux"]:
                    image_id = chunk["aux"]["ID"]
                if "error" in chunk:
                    step = next((ln for ln in reversed(lines) if ln.startswith("Step ")), "")
                    message = (f"build failed at {step or 'an early step'}: "
                               f"{chunk['error'].strip()}")
                    if any(hint in "\n".join(lines[-30:]) for hint in _NO_INDEX_HINTS):
                        message += (". The build could not reach a package index: check that "
                                    "this host can install the package itself (pip config list"
                                    ", proxies); its index settings are passed into the build")
                    base = missing_base_image(step)
                    if base:
                        message += (f". The base image {base} is not on this host and cannot "
                                    "be pulled here: build the local stand-ins with "
                                    "scripts/base-images.sh (python:3.9-slim, python:3.11-slim, "
                                    "busybox, ...), `docker load` it from a saved file, or pull "
                                    "it on a machine that reaches a registry")
                    raise TaskRunError("build", message, "\n".join(lines[-20:]))
        except docker.errors.APIError as exc:
            raise TaskRunError("build", f"build failed: {exc.explanation or exc}",
                               "\n".join(lines[-20:])) from None
        finally:
            if os.path.isabs(dockerfile):
                os.unlink(dockerfile)
        if image_id is None:
            image_id = self.client.images.get(tag).id
        return image_id

    # -- runs ---------------------------------------------------------------------------
    async def check_gpus(self, resources: TaskResources) -> None:
        """Refuse a GPU task unless this host has the GPUs and the NVIDIA container runtime."""
        if not resources.use_gpu:
            return
        from meca_node.runtime.hardware import detect_gpus

        gpus = await trio.to_thread.run_sync(detect_gpus)
        info = await trio.to_thread.run_sync(self.client.info)
        has_runtime = "nvidia" in (info.get("Runtimes") or {})
        if len(gpus) < resources.gpu_count or not has_runtime:
            raise TaskRunError(
                "start", f"the task needs {resources.gpu_count} GPU(s) (and the NVIDIA "
                f"container runtime); this host has {len(gpus)} GPU(s) and "
                f"{'the' if has_runtime else 'no'} NVIDIA runtime. Run it on a GPU provider, "
                "or set use_gpu to false in config.json if it can run on CPUs")

    @asynccontextmanager
    async def run(self, image: str, resources: TaskResources) -> AsyncIterator[Running]:
        """Start the task, wait until it is ready, yield it; always remove the container."""
        await self.check_gpus(resources)
        options = container_options(image, resources, self.limits, self.network,
                                    labels={f"{LABEL}.pid": str(os.getpid())})
        if "device_requests" in options:
            options["device_requests"] = [DeviceRequest(**d)
                                          for d in options["device_requests"]]
        container = await trio.to_thread.run_sync(self._create, options)
        try:
            running = await self._start(container)
            async with httpx.AsyncClient(timeout=self.request_timeout_s) as http:
                running.http = http
                yield running
        finally:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(self._remove, container)

    def _create(self, options):
        try:
            return self.client.containers.create(**options)
        except docker.errors.ImageNotFound:
            raise TaskRunError("start", f"image {options['image']} is not on this host") \
                from None
        except docker.errors.APIError as exc:
            raise TaskRunError("start", f"cannot create the container: "
                               f"{exc.explanation or exc}") from None

    def _remove(self, container) -> None:
        try:
            container.remove(force=True)
        except docker.errors.NotFound:
            pass
        except docker.errors.APIError as exc:
            log.warning("could not remove container %s: %s", container.short_id, exc)

    async def _start(self, container) -> Running:
        t0 = time.monotonic()
        try:
            await trio.to_thread.run_sync(container.start)
        except docker.errors.APIError as exc:
            raise TaskRunError("start", f"cannot start the container: "
                               f"{exc.explanation or exc}") from None
        with trio.move_on_after(self.init_timeout_s) as scope:
            while True:
                state, logs = await trio.to_thread.run_sync(self._state_and_logs, container)
                if any(line.strip() == INIT_LINE for line in logs.splitlines()):
                    break
                if state["Status"] in ("exited", "dead"):
                    raise self._died(state, logs, "before printing meca-init-done")
                await trio.sleep(0.05)  # poll the engine; bounded by init_timeout_s
        if scope.cancelled_caught:
            _, logs = await trio.to_thread.run_sync(self._state_and_logs, container)
            raise TaskRunError("init", f"the app did not print {INIT_LINE!r} within "
                               f"{self.init_timeout_s:g} s", _tail(logs))
        address = await trio.to_thread.run_sync(self._address, container)
        return Running(container.id, address, t0, time.monotonic() - t0)

    def _state_and_logs(self, container) -> tuple[dict, str]:
        container.reload()
        logs = container.logs(stdout=True, stderr=True, tail=2000).decode("utf-8", "replace")
        return container.attrs["State"], logs

    def _died(self, state: dict, logs: str, when: str) -> TaskRunError:
        if state.get("OOMKilled"):
            return TaskRunError("start", f"the app ran out of memory {when} (limit "
                                "from config.json resource.mem)", _tail(logs))
        return TaskRunError("start", f"the app exited with code {state.get('ExitCode')} {when}",
                            _tail(logs))

    def _address(self, container) -> str:
        container.reload()
        ip = container.attrs["NetworkSettings"]["Networks"][self.network]["IPAddress"]
        return f"http://{ip}:{APP_PORT}/"

    async def request(self, running: Running, body: bytes) -> tuple[bytes, float]:
        """POST ``body`` to the app; retries until the port answers (bounded). Returns
        (reply, seconds for this request)."""
        deadline = trio.current_time() + self.answer_timeout_s
        assert running.http is not None, "request() needs a Running from run()"
        http = running.http
        while True:
            t0 = time.monotonic()
            try:
                return await self._post(http, running.address, body), time.monotonic() - t0
            except (httpx.ConnectError, httpx.RemoteProtocolError) as exc:
                if trio.current_time() > deadline:
                    container = await trio.to_thread.run_sync(
                        self.client.containers.get, running.container_id)
                    state, logs = await trio.to_thread.run_sync(self._state_and_logs,
                                                                container)
                    if state["Status"] in ("exited", "dead"):
                        raise self._died(state, logs, "while serving") from None
                    raise TaskRunError("request", f"the app printed {INIT_LINE!r} but "
                                       f"nothing answered on port {APP_PORT} within "
                                       f"{self.answer_timeout_s:g} s ({exc})",
                                       _tail(logs)) from None
                await trio.sleep(0.05)  # the app may print the line before binding

    async def _post(self, http: httpx.AsyncClient, url: str, body: bytes) -> bytes:
        async with http.stream("POST", url, content=body,
                               headers={"content-type": "application/json"}) as resp:
            out = bytearray()
            async for chunk in resp.aiter_raw():
                out += chunk
                if len(out) > self.max_output:
                    raise TaskRunError("output", f"the reply is larger than the cap of "
                                       f"{self.max_output} bytes")
            if resp.status_code != 200:
                raise TaskRunError("request", f"the app answered HTTP {resp.status_code}: "
                                   f"{bytes(out[:500])!r}")
            return bytes(out)


_NO_INDEX_HINTS = ("Temporary failure in name resolution", "Network is unreachable",
                   "No matching distribution found", "Failed to establish a new connection",
                   "Could not find a version that satisfies")
_INDEX_ENV = ("PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_TRUSTED_HOST", "HTTP_PROXY",
              "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "no_proxy")


def _pip_config() -> dict[str, str]:
    """The host's pip settings (``pip config list``), e.g. {"global.index-url": "..."}."""
    import subprocess
    import sys

    try:
        out = subprocess.run([sys.executable, "-m", "pip", "config", "list"], text=True,
                             capture_output=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return {}
    config = {}
    for line in out.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            config[key.strip()] = value.strip().strip("'\"")
    return config


def package_index_args(env: dict[str, str] | os._Environ, pip_config: dict[str, str]) -> dict:
    """Build args that give a build the host's package index: its pip index URLs (network
    ones only: a file:// index on the host does not exist inside the build) and proxies."""
    args: dict[str, str] = {}

    def urls(value: str) -> str:
        return " ".join(u for u in value.split() if u.startswith(("http://", "https://")))

    for key, name in (("index-url", "PIP_INDEX_URL"), ("extra-index-url", "PIP_EXTRA_INDEX_URL"),
                      ("trusted-host", "PIP_TRUSTED_HOST")):
        value = env.get(name) or next((v for k, v in pip_config.items()
                                       if k.endswith("." + key)), "")
        value = value if name == "PIP_TRUSTED_HOST" else urls(value)
        if value:
            args[name] = value
    for name in _INDEX_ENV[3:]:
        if env.get(name):
            args[name] = env[name]
    return args


def _with_build_args(dockerfile: Path, names: list[str]) -> str:
    """The Dockerfile to build: the task's own, or, when there are index settings to pass, a
    copy that declares them as ARGs after every FROM (build args reach RUN only if declared;
    ARGs are not kept in the image's environment). The task folder is never modified; the
    caller removes a returned absolute path after the build."""
    if not names:
        return "Dockerfile"
    out = []
    for line in dockerfile.read_text().splitlines():
        out.append(line)
        if line.strip().upper().startswith("FROM "):
            out.extend(f"ARG {n}" for n in names)
    import tempfile

    # outside the build context: docker-py reads it and adds it to the context it sends
    fd, copy = tempfile.mkstemp(prefix="meca-build-", suffix=".Dockerfile")
    with os.fdopen(fd, "w") as f:
        f.write("\n".join(out) + "\n")
    return copy


def missing_base_image(step: str) -> str | None:
    """The image of a failed ``Step n/m : FROM image [AS name]`` line, else None."""
    _, _, instruction = step.partition(" : ")
    words = instruction.split()
    if len(words) >= 2 and words[0].upper() == "FROM":
        return words[1]
    return None


def _tail(logs: str, lines: int = 20) -> str:
    return "\n".join(logs.splitlines()[-lines:])


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
