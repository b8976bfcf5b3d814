"""Run task containers on the local Docker engine, in the sandbox of ``sandbox.py``.

Docker SDK calls block, so each runs in a worker thread (``trio.to_thread``). A run
always removes its container, also when cancelled (the removal is shielded).
:meth:`DockerExecutor.start` and :meth:`DockerExecutor.stop` are the two halves of
:meth:`DockerExecutor.run`, for an owner that keeps a started container across jobs (the
warm pool, ``warmpool.py``).

The app's output is followed for the container's whole life by one daemon thread per
container (:class:`AppLog`): it sees ``meca-init-done`` the moment it is printed, then keeps
the last 64 KiB of what the app prints, so a job can take what its app printed for it
(:meth:`Running.log_mark` before its POST, :meth:`Running.log_since` after the reply)
without an engine API call. The thread ends when the engine ends the stream (the container
stopped) or when :meth:`DockerExecutor.stop` closes it.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker
import docker.errors
import trio
from docker.types import DeviceRequest

from meca_node.core.task import TaskResources
from meca_node.runtime import apphttp
from meca_node.runtime.sandbox import (
    APP_PORT, LABEL, NETWORK, SandboxLimits, container_options, image_volumes, task_user,
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


def remove_container(container) -> None:
    """Force-remove ``container``; already gone is fine, another failure is logged."""
    try:
        container.remove(force=True)
    except docker.errors.NotFound:
        pass
    except docker.errors.APIError as exc:
        log.warning("could not remove container %s: %s", container.short_id, exc)


class EngineUnavailable(Exception):
    """No Docker engine answers; the message says how to start one."""


class TaskRunError(Exception):
    """A task failed at ``stage`` (build, start, init, request, output); ``logs`` are its last lines."""

    def __init__(self, stage: str, message: str, logs: str = "") -> None:
        super().__init__(message)
        self.stage = stage
        self.logs = logs


class AppUnreachable(TaskRunError):
    """One POST (:meth:`DockerExecutor.request_once`) got no byte of an answer: the
    connection was refused, timed out or dropped before a reply began. For an app that
    answered before, this means it has died."""


class AppLog:
    """What a container's app prints (stdout and stderr as the engine multiplexes them,
    bytes), read from its followed log stream by one daemon thread for the container's
    whole life. Keeps the last ``keep`` bytes; positions count every byte ever seen.

    The thread (:meth:`follow`) ends when the stream ends: the engine ends it when the
    container stops, and :meth:`close` ends it at once. Thread-safe: the follower appends
    under a lock, readers copy under it."""

    KEEP = 64 * 1024

    def __init__(self, keep: int = KEEP) -> None:
        self.keep = keep
        self._lock = threading.Lock()
        self._grew = threading.Condition(self._lock)
        self._chunks: deque[bytes] = deque()
        self._kept = 0  # bytes in _chunks
        self._total = 0  # bytes seen, kept or not: the position after the last one
        self._ended = False
        self._stream = None
        self.thread: threading.Thread | None = None
        #: set once the app printed :data:`INIT_LINE` (init_found) or the output ended
        self.init_settled = threading.Event()
        self.init_found = False

    def follow(self, stream, name: str) -> None:
        """Start the daemon thread that reads ``stream`` (a followed, cancellable log
        stream of the docker SDK) into this log."""
        self._stream = stream
        self.thread = threading.Thread(target=self._read, name=name, daemon=True)
        self.thread.start()

    def close(self, join_s: float = 0.0) -> None:
        """Close the stream, ending the thread's read; wait up to ``join_s`` for it."""
        stream, self._stream = self._stream, None
        if stream is not None:
            try:
                stream.close()
            except Exception:  # already closed by the engine, or a transport without it
                pass
        if join_s > 0 and self.thread is not None and self.thread is not \
                threading.current_thread():
            self.thread.join(join_s)
            if self.thread.is_alive():
                log.warning("the log follower %s did not end within %g s",
                            self.thread.name, join_s)

    def mark(self) -> int:
        """The position now: bytes the app printed so far."""
        with self._lock:
            return self._total

    def since(self, mark: int, limit: int = 16384) -> bytes:
        """What the app printed after ``mark``: its last ``limit`` bytes when more, after a
        line ``[... N bytes cut ...]``; bytes no longer kept count as cut."""
        with self._lock:
            total, kept = self._total, self._kept
            start = max(mark, total - kept, total - max(limit, 0), 0)
            parts, need = [], total - start
            for chunk in reversed(self._chunks):
                if need <= 0:
                    break
                parts.append(chunk[-need:])
                need -= len(chunk)
        data = b"".join(reversed(parts))
        cut = start - max(mark, 0)
        return b"[... %d bytes cut ...]\n" % cut + data if cut > 0 else data

    def wait(self, position: int, timeout_s: float) -> bool:
        """Block until the app has printed past ``position`` (True), or its output ended
        or ``timeout_s`` passed (False). For tests and callers off the request path."""
        with self._grew:
            return self._grew.wait_for(lambda: self._total > position or self._ended,
                                       timeout_s) and self._total > position

    def _append(self, chunk: bytes) -> None:
        with self._grew:
            self._total += len(chunk)
            if len(chunk) >= self.keep:
                self._chunks.clear()
                self._kept = 0
                chunk = chunk[-self.keep:]
            self._chunks.append(chunk)
            self._kept += len(chunk)
            self._trim()
            self._grew.notify_all()

    def adopt(self, earlier: AppLog) -> None:
        """Continue ``earlier`` (the log of a container this one replaces): its kept bytes
        come first and positions go on from its, so a mark taken there still works here."""
        with earlier._lock:
            chunks, total = list(earlier._chunks), earlier._total
        with self._grew:
            self._chunks.extendleft(reversed(chunks))
            self._kept += sum(len(c) for c in chunks)
            self._total += total
            self._trim()

    def _trim(self) -> None:
        """Drop the oldest bytes over ``keep`` (whole chunks, then the front of one)."""
        while self._chunks and self._kept - len(self._chunks[0]) >= self.keep:
            self._kept -= len(self._chunks.popleft())
        if self._kept > self.keep:
            over = self._kept - self.keep
            self._chunks[0] = self._chunks[0][over:]
            self._kept -= over

    def _read(self) -> None:
        want = INIT_LINE.encode()
        pending = b""
        try:
            for chunk in self._stream or ():
                self._append(chunk)
                if self.init_settled.is_set():
                    continue
                pending += chunk
                *lines, pending = pending.split(b"\n")
                if any(line.strip() == want for line in lines):
                    self.init_found = True
                    self.init_settled.set()
                pending = pending[-65536:]
        except Exception:  # the stream was closed under us (stop, timeout, cancel) or broke
            pass
        finally:
            if not self.init_settled.is_set():
                self.init_found = pending.strip() == want
                self.init_settled.set()
            with self._grew:
                self._ended = True
                self._grew.notify_all()


@dataclass
class Running:
    """A started task container that printed meca-init-done; whoever got it from
    :meth:`DockerExecutor.start` owns it and ends it with :meth:`DockerExecutor.stop`.

    A job takes what its app printed for it with ``mark = running.log_mark()`` before its
    POST and ``running.log_since(mark)`` after the reply: on a warm container reused by
    many jobs each gets only what was printed during its own request. Both read memory
    only (no engine call). The engine delivers output a little after the app writes it,
    so lines printed right before or after the reply (a web server's access log line)
    may arrive after ``log_since`` and go to the next job's log or to none."""

    container_id: str
    address: str
    started_mono: float
    init_s: float
    container: Any = None  # the docker SDK Container, for stop()
    app_log: AppLog = field(default_factory=AppLog, repr=False, compare=False)
    #: the next request's connection, opened ahead while the container idles in a warm
    #: pool (:class:`apphttp.Ahead`); the next POST takes it
    ahead: apphttp.Ahead | None = field(default=None, repr=False, compare=False)

    async def connection(self):
        """The connection opened ahead for this request, if any and still good (the
        caller owns it); None: connect as usual."""
        ahead, self.ahead = self.ahead, None
        return await ahead.take() if ahead is not None else None

    def drop_ahead(self) -> None:
        """Close a connection opened ahead and not used (before the container stops)."""
        ahead, self.ahead = self.ahead, None
        if ahead is not None:
            ahead.close()

    def log_mark(self) -> int:
        """The position in the app's output now (bytes printed so far)."""
        return self.app_log.mark()

    def log_since(self, mark: int, limit: int = 16384) -> bytes:
        """What the app printed after ``mark`` (of :meth:`log_mark`): the last ``limit``
        bytes when more, after a line ``[... N bytes cut ...]``. Only the last 64 KiB of
        the app's output are kept; older bytes after ``mark`` count as cut."""
        return self.app_log.since(mark, limit)


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
            try:
                self.client.networks.create(self.network, driver="bridge", internal=True,
                                            labels={LABEL: "1"}, check_duplicate=True,
                                            options={_BRIDGE_OPTION: BRIDGE})
            except docker.errors.APIError:  # another provider on this engine made it first
                if not any(n.name == self.network
                           for n in self.client.networks.list(names=[self.network])):
                    raise
        isolate_host_from_bridge(BRIDGE)
        for c in self.client.containers.list(all=True, filters={"label": LABEL}):
            owner = c.labels.get(f"{LABEL}.pid", "")
            if owner.isdigit() and int(owner) != os.getpid() and _alive(int(owner)):
                continue
            log.info("removing orphan container %s", c.short_id)
            # another provider on this engine may be removing it too (409): logged, not fatal
            remove_container(c)

    # -- images -------------------------------------------------------------------------
    async def build(self, folder: Path, tag: str,
                    on_line: Callable[[str], None] | None = None,
                    buildargs: dict[str, str] | None = None) -> str:
        """Build ``folder`` as ``tag``; live output goes to ``on_line``; returns the image id.

        Cancellable: the caller returns at once, and the worker thread stops reading the
        build stream at its next line (closing the connection makes the engine stop the
        build and remove its intermediate containers)."""
        stop = threading.Event()
        try:
            return await trio.to_thread.run_sync(self._build, folder, tag, on_line, buildargs,
                                                 stop, abandon_on_cancel=True)
        finally:
            stop.set()

    def _build(self, folder, tag, on_line, buildargs, stop: threading.Event) -> str:
        lines: list[str] = []
        image_id = None
        pip_config = _pip_config()
        args = {**package_index_args(os.environ, pip_config), **(buildargs or {})}
        ca = host_ca_bundle(os.environ, pip_config)
        if ca is not None:
            args["PIP_CERT"] = _CA_IN_BUILD
        context = build_context(Path(folder), sorted(args), ca)
        try:
            stream = self.client.api.build(fileobj=context, custom_context=True,
                                           dockerfile=_DOCKERFILE_IN_CONTEXT, tag=tag,
                                           rm=True, forcerm=True, decode=True, buildargs=args,
                                           labels={LABEL: "1"}, network_mode="host")
            for chunk in stream:
                if stop.is_set():
                    stream.close()
                    raise TaskRunError("build", "build cancelled")
                if "stream" in chunk:
                    for line in chunk["stream"].splitlines():
                        lines.append(line)
                        if on_line:
                            on_line(line)
                if "aux" in chunk and "ID" in chunk["aux"]:
                    image_id = chunk["aux"]["ID"]
                if "error" in chunk:
                    step = next((ln for ln in reversed(lines) if ln.startswith("Step ")), "")
                    # step numbers count the ARG/COPY lines we add after each FROM, so name
                    # the failing instruction of the task's own Dockerfile instead
                    instruction = step.partition(" : ")[2].strip()
                    message = (f"build failed at `{instruction}`" if instruction
                               else "build failed at an early step")
                    message += f": {chunk['error'].strip()}"
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
            context.close()
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
        running = await self.start(image, resources)
        try:
            yield running
        finally:
            await self.stop(running)

    async def start(self, image: str, resources: TaskResources) -> Running:
        """Create and start the task, wait until it prints meca-init-done; the caller owns
        the result (its container and HTTP client) and must :meth:`stop` it. On any error
        or cancellation here the container is removed before this raises."""
        await self.check_gpus(resources)
        config = await trio.to_thread.run_sync(self._image_config, image)
        user = task_user(config.get("User") or "", self.limits)
        options = container_options(image, resources, self.limits, self.network,
                                    labels={f"{LABEL}.pid": str(os.getpid())}, user=user,
                                    volumes=image_volumes(config))
        if "device_requests" in options:
            options["device_requests"] = [DeviceRequest(**d)
                                          for d in options["device_requests"]]
        container = await trio.to_thread.run_sync(self._create, options)
        app_log = AppLog()
        try:
            running = await self._start(container, app_log)
        except BaseException:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(self._remove, container, app_log)
            raise
        return running

    async def stop(self, running: Running) -> None:
        """Remove the run's container and end its log follower; shielded from
        cancellation, so it completes even in a cancelled scope."""
        running.drop_ahead()
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(self._remove, running.container, running.app_log)

    def _image_config(self, image: str) -> dict:
        """The image's ``Config`` (its User, its VOLUMEs, ...)."""
        try:
            return self.client.images.get(image).attrs["Config"] or {}
        except docker.errors.ImageNotFound:
            raise TaskRunError("start", f"image {image} is not on this host") from None

    def _create(self, options):
        try:
            return self.client.containers.create(**options)
        except docker.errors.ImageNotFound:
            raise TaskRunError("start", f"image {options['image']} is not on this host") \
                from None
        except docker.errors.APIError as exc:
            raise TaskRunError("start", f"cannot create the container: "
                               f"{exc.explanation or exc}") from None

    def _remove(self, container, app_log: AppLog | None = None) -> None:
        try:
            remove_container(container)
        finally:
            if app_log is not None:  # the engine ends the stream too; this is at once
                app_log.close(join_s=5.0)

    async def _start(self, container, app_log: AppLog) -> Running:
        t0 = time.monotonic()
        try:
            await trio.to_thread.run_sync(container.start)
        except docker.errors.APIError as exc:
            raise TaskRunError("start", f"cannot start the container: "
                               f"{exc.explanation or exc}") from None
        # the app's output, followed as it comes by the log's own thread for the container's
        # life: the line is seen the moment it is printed (polling the engine cost two API
        # calls per look and up to a poll interval late), and later jobs read its output
        stream = await trio.to_thread.run_sync(
            lambda: container.logs(stream=True, follow=True, stdout=True, stderr=True))
        app_log.follow(stream, f"meca-log-{container.short_id}")
        found = False
        with trio.move_on_after(self.init_timeout_s) as scope:
            try:  # the waiting thread, if abandoned, ends with the follower (bounded too)
                await trio.to_thread.run_sync(app_log.init_settled.wait,
                                              self.init_timeout_s + 5.0,
                                              abandon_on_cancel=True)
                found = app_log.init_found
            finally:
                if not found:
                    app_log.close()  # ends the follower's read if it is still waiting
        if not found and not scope.cancelled_caught:  # the output ended: it stopped
            state, logs = await trio.to_thread.run_sync(self._state_and_logs, container)
            if state["Status"] in ("exited", "dead"):
                raise self._died(state, logs, "before printing meca-init-done")
            raise TaskRunError("init", f"the app's output ended before {INIT_LINE!r}",
                               _tail(logs))
        if scope.cancelled_caught:
            _, logs = await trio.to_thread.run_sync(self._state_and_logs, container)
            raise TaskRunError("init", f"the app did not print {INIT_LINE!r} within "
                               f"{self.init_timeout_s:g} s", _tail(logs))
        address = await trio.to_thread.run_sync(self._address, container)
        if address is None:  # it died right after printing the line: no address any more
            state, logs = await trio.to_thread.run_sync(self._state_and_logs, container)
            raise self._died(state, logs, "right after printing meca-init-done")
        return Running(container.id, address, t0, time.monotonic() - t0,
                       container=container, app_log=app_log)

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

    def _address(self, container) -> str | None:
        """The app's URL on the sandbox network; None once the container has stopped."""
        container.reload()
        net = container.attrs["NetworkSettings"]["Networks"].get(self.network) or {}
        ip = net.get("IPAddress")
        return f"http://{ip}:{APP_PORT}/" if ip else None

    async def request(self, running: Running, body: bytes) -> tuple[bytes, float]:
        """POST ``body`` to the app; retries until the port answers (bounded). Returns
        (reply, seconds for this request)."""
        deadline = trio.current_time() + self.answer_timeout_s
        next_check = trio.current_time() + 0.5
        while True:
            t0 = time.monotonic()
            try:
                return (await self._post(running.address, body,
                                         stream=await running.connection()),
                        time.monotonic() - t0)
            except apphttp.NoAnswer as exc:
                late = trio.current_time() > deadline
                if not late and trio.current_time() < next_check:
                    await trio.sleep(0.01)  # the app may print the line before binding
                    continue
                # every 0.5 s, and at the deadline: a dead app (crash, out of memory) is
                # reported at once instead of waiting out the deadline
                container = await trio.to_thread.run_sync(
                    self.client.containers.get, running.container_id)
                state, logs = await trio.to_thread.run_sync(self._state_and_logs, container)
                if state["Status"] in ("exited", "dead"):
                    raise self._died(state, logs, "while serving") from None
                next_check = trio.current_time() + 0.5
                if late:
                    raise TaskRunError("request", f"the app printed {INIT_LINE!r} but "
                                       f"nothing answered on port {APP_PORT} within "
                                       f"{self.answer_timeout_s:g} s ({exc})",
                                       _tail(logs)) from None
                await trio.sleep(0.05)

    async def request_once(self, running: Running, body: bytes,
                           connect_timeout_s: float) -> tuple[bytes, float]:
        """POST ``body`` once, for an app that has answered before: no waiting for a late
        bind and no look at the engine. Raises :class:`AppUnreachable` when no byte of a
        reply came back (connection refused or not made within ``connect_timeout_s``, or
        closed or reset before the status line); a reply that breaks off later is a plain
        :class:`TaskRunError`. Returns (reply, seconds for this request)."""
        t0 = time.monotonic()
        try:
            return (await self._post(running.address, body, connect_timeout_s,
                                     await running.connection()),
                    time.monotonic() - t0)
        except apphttp.NoAnswer as exc:  # closed or reset before a reply
            raise AppUnreachable("request", f"the app at {running.address} gave no answer "
                                 f"({exc})") from None

    async def _post(self, url: str, body: bytes, connect_timeout_s: float = 5.0,
                    stream=None) -> bytes:
        """One POST (:mod:`apphttp`; ``stream``: a connection opened ahead); NoAnswer
        passes through for the callers' retries."""
        try:
            return await apphttp.post(url, body, connect_timeout_s=connect_timeout_s,
                                      timeout_s=self.request_timeout_s,
                                      max_output=self.max_output, stream=stream)
        except apphttp.BadReply as exc:
            stage = "output" if isinstance(exc, apphttp.TooLarge) else "request"
            raise TaskRunError(stage, str(exc)) from None
        except trio.TooSlowError:
            raise TaskRunError("request", f"the app did not reply within "
                               f"{self.request_timeout_s:g} s") from None




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


_DOCKERFILE_IN_CONTEXT = ".meca-build.Dockerfile"
_CA_FILE_IN_CONTEXT = ".meca-build-ca.pem"
# under /tmp, which the sandbox covers with a tmpfs at run time: the task never sees it
_CA_IN_BUILD = "/tmp/.meca-build-ca.pem"
_MAX_CA_BYTES = 4 * 1024 * 1024


def host_ca_bundle(env, pip_config: dict[str, str]) -> str | None:
    """The CA bundle the host's pip trusts (``PIP_CERT`` or pip's ``cert``), as PEM text.
    Networks that re-sign TLS need it inside builds for ``pip install`` to work."""
    path = env.get("PIP_CERT") or next((v for k, v in pip_config.items()
                                        if k.endswith(".cert")), "")
    if not path or not os.path.isfile(path) or os.path.getsize(path) > _MAX_CA_BYTES:
        return None
    try:
        return Path(path).read_text()
    except (OSError, UnicodeDecodeError):
        return None


def build_context(folder: Path, arg_names: list[str], ca_pem: str | None):
    """The build context sent to the engine: the task folder as Docker would send it
    (``.dockerignore`` honoured), plus a copy of its Dockerfile that declares the package
    index settings as ARGs after every FROM (build args reach RUN only if declared, and
    ARGs do not stay in the image's environment) and, with ``ca_pem``, copies the host's CA
    bundle to where PIP_CERT points. The task folder itself is never modified."""
    from docker.utils.build import exclude_paths

    lines = []
    for line in (folder / "Dockerfile").read_text().splitlines():
        lines.append(line)
        if line.strip().upper().startswith("FROM "):
            lines.extend(f"ARG {n}" for n in arg_names)
            if ca_pem is not None:
                lines.append(f"COPY {_CA_FILE_IN_CONTEXT} {_CA_IN_BUILD}")
    exclude: list[str] = []
    ignore = folder / ".dockerignore"
    if ignore.is_file():
        exclude = [ln.strip() for ln in ignore.read_text().splitlines()
                   if ln.strip() and not ln.strip().startswith("#")]
    extra = [(_DOCKERFILE_IN_CONTEXT, "\n".join(lines) + "\n")]
    if ca_pem is not None:
        extra.append((_CA_FILE_IN_CONTEXT, ca_pem))
    files = sorted(exclude_paths(str(folder), exclude, dockerfile=_DOCKERFILE_IN_CONTEXT))
    return _archive(folder, [f for f in files if f not in dict(extra)], extra)


def _archive(root: Path, files: list[str], extra: list[tuple[str, str]]):
    """A tar of ``files`` under ``root`` plus ``extra`` (name, text) entries, owned by
    root and readable by all (directories searchable, executables kept executable): tasks
    run as a non-root user, so what COPY puts in the image must be readable to it."""
    import io
    import tarfile
    import tempfile

    out = tempfile.NamedTemporaryFile()
    with tarfile.open(mode="w", fileobj=out) as tar:
        for name in files:
            info = tar.gettarinfo(str(root / name), arcname=name)
            if info is None:  # a socket: not content
                continue
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            info.mtime = int(min(max(info.mtime, 0), 8**11 - 1))
            if info.isdir() or info.mode & 0o111:
                info.mode |= 0o555
            else:
                info.mode |= 0o444
            if info.isfile():
                with open(root / name, "rb") as f:
                    tar.addfile(info, f)
            else:
                tar.addfile(info)
        for name, text in extra:
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
    out.seek(0)
    return out


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
