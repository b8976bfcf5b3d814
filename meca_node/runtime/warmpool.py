"""Warm task containers for providers: repeat jobs of the same image skip the cold start.

A cold start (create, start, wait for ``meca-init-done``, wait for the app to bind) takes a
second or more; taking a warm container costs a list scan and a few microseconds of
``/proc``. :class:`WarmPool` keeps up to ``max_idle`` started containers after their job,
keyed by (image, resources), instead of removing them, and hands one to the next job with
the same key. :meth:`WarmPool.serve` removes containers idle longer than ``idle_s`` and,
when cancelled, every idle one. ``idle_s == 0`` or ``max_idle == 0`` turns pooling off:
:meth:`WarmPool.run` is then :meth:`DockerExecutor.run`.

Ownership. A container is in exactly one place: the idle list or one job's lease. Taking
one removes it from the idle list before any await, so no container is handed to two jobs
at once. A lease that ends cleanly, with every request made through
:meth:`WarmPool.request` answered, puts the container back, timestamped (when the pool is
full the oldest idle one is removed); an exception, a cancellation or a failed request
removes it, shielded from cancellation. Once ``serve`` has returned the pool is closed:
leases still running then remove their container at the end. A container that a job ended
cleanly but the pool does not keep (pooling off, the pool full, closed, or processes left
running) is removed in the background while ``serve`` runs: removal takes ~0.1 s here and
the job's answer does not wait for it (the container is killed at once; the rest is the
engine's cleanup, during which its memory may still be counted by the kernel). Pooled
containers keep the executor's labels (``meca-node=1``, ``meca-node.pid``), so the orphan
sweep of :meth:`DockerExecutor.prepare` removes them after a crash. Idle containers hold
memory that a provider's per-job reservations do not count; ``max_idle`` bounds it.

Privacy. Consecutive jobs of the same image may share a container, as with a Lambda warm
start: a job can see what an earlier job of the *same task* left in the container's
memory or tmpfs. That is why only the same image and resources reuse one; a job of another
task never gets it. The image is keyed by the reference given; providers and ``task test``
pass content-derived tags, so one reference names one image.

Dead warm containers. An idle container may have died (out of memory, app crash, killed).
Taking one makes no Docker API call, so a dead one is caught in two cheap ways:

1. When a warm container is taken, and again right before its first POST, the pool checks
   that the container's main process is still the one the engine started (its start time
   in ``/proc/<pid>/stat``, recorded at start). This is needed for correctness, not only
   speed: the engine gives a stopped container's address to the next container it starts,
   possibly another task's, so a POST to a dead container's address could reach a stranger
   with this job's input. A running container keeps its address, so a live main process
   means the POST reaches it. Where the engine's processes are not visible here (another
   pid namespace), one inspect call takes the place of the check.
2. The first POST on a warm container goes out once, with a short connect timeout
   (``warm_connect_timeout_s``) and none of the retry loop that waits for a fresh app's late
   bind (:meth:`DockerExecutor.request_once`): a warm app that refuses the connection, lets
   it time out, or drops it before any byte of an answer came back is dead.

A connection opened ahead (:class:`apphttp.Ahead`, held by ``Running.ahead``) to an app
that has died finds itself closed when its job takes it, and the POST connects as usual.

Either way the pool removes the dead container, starts a fresh one of the same key in its
place (the caller's :class:`Running` is updated in place, so the lease's end handles the
new one; its app log goes on from the dead one's, so the job's ``log_mark`` still holds)
and POSTs through :meth:`DockerExecutor.request`, which waits for the fresh app to bind.
It retries once only, so a job that itself kills its app runs at most twice. Pooled runs
must use :meth:`WarmPool.request`; ``executor.request`` on one still works but reports
a dead warm container as an error instead of replacing it.

The next connection, opened ahead. A container put back idle gets its next request's
connection opened :data:`AHEAD_AFTER_S` later (while ``serve`` runs; a job that takes it
before then connects itself), held for :data:`AHEAD_HOLD_S`: a repeat
job within that time finds it accepted, which saves about 0.8 ms of the app's waking up
here. The hold is short so that no app's idle-connection timeout ends it first (the
shortest common ones are seconds), and one connection at most is held per container, so
an app that serves one connection at a time is never kept from its job's: the job takes
that very connection, waiting out an open still in flight. After the hold, or when the
container stops, the connection is closed unused; the app sees a connection that sent
nothing. An app that closes idle connections after about AHEAD_HOLD_S may close ours just
as a job sends on it: that POST gets no answer, the pool takes the app for dead, and the
job runs on a fresh container (its answer is right, and later). Common servers wait
seconds or more for a first request, so this stays rare.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import docker.errors
import trio

from meca_node.core.task import TaskResources
from meca_node.runtime import apphttp
from meca_node.runtime.executor import AppUnreachable, DockerExecutor, Running

log = logging.getLogger("meca_node.runtime.warmpool")

#: processes (and threads) a job may leave in its container over those it had when ready
#: (a server's worker threads finishing) before the container is not kept warm
PIDS_SLACK = 16
#: how long a connection opened ahead to an idle container is held for its next job
AHEAD_HOLD_S = 1.0
#: how long after the container's return the connection is opened: the job that returned
#: it is still sending its answer, and a connect then would delay that
AHEAD_AFTER_S = 0.002

Key = tuple[str, TaskResources]


@dataclass
class _Idle:
    key: Key
    running: Running
    since: float  # trio.current_time() when it was put back


@dataclass
class _Lease:
    key: Key
    warm: bool  # taken from the pool and not yet answered in this lease
    failed: bool = False  # a request failed: the container does not go back


class WarmPool:
    """Started task containers kept for the next job of the same (image, resources)."""

    #: connect timeout of the first POST on a warm container: its kernel answers a
    #: connection at once, so a longer wait means the address is dead
    warm_connect_timeout_s = 1.0

    def __init__(self, executor: DockerExecutor, idle_s: float = 300.0,
                 max_idle: int = 4) -> None:
        if not idle_s >= 0:  # also refuses NaN
            raise ValueError(f"idle_s must be >= 0 seconds (0: no pooling); got {idle_s!r}")
        if max_idle < 0:
            raise ValueError(f"max_idle must be >= 0 (0: no pooling); got {max_idle!r}")
        self.executor = executor
        self.idle_s = float(idle_s)
        self.max_idle = int(max_idle)
        self._idle: list[_Idle] = []  # oldest first
        self._leases: dict[int, _Lease] = {}  # id(Running) -> its lease
        self._proc: dict[str, tuple[int, int] | None] = {}  # container id -> (pid, start)
        self._wake = trio.Event()
        self._nursery: trio.Nursery | None = None  # serve's: connections opened ahead
        self._serving = False
        self._closed = False
        self._hits = self._misses = self._evicted = 0
        self._ahead = 0  # warm runs whose POST used a connection opened ahead
        self._removing = 0  # containers being removed in the background
        self.dead = 0  # warm containers found dead and replaced or dropped
        #: container id -> its process count when it was ready (pids cgroup)
        self._pids_ready: dict[str, int | None] = {}
        #: container id -> its pids cgroup's pids.current file (None: not visible here)
        self._pids_file: dict[str, str | None] = {}
        #: containers not kept after their job because they went on running processes
        self.not_kept_busy = 0

    @property
    def enabled(self) -> bool:
        return self.idle_s > 0 and self.max_idle > 0

    def stats(self) -> dict:
        """Idle containers now; runs that took a warm one (hits) or started one (misses);
        idle ones removed for the bound or for idling longer than idle_s (evicted); hits
        whose POST found its connection opened ahead (ahead); containers being removed in
        the background (removing)."""
        return {"idle": len(self._idle), "hits": self._hits, "misses": self._misses,
                "evicted": self._evicted, "not_kept_busy": self.not_kept_busy,
                "ahead": self._ahead, "removing": self._removing}

    async def check_gpus(self, resources: TaskResources) -> None:
        """As :meth:`DockerExecutor.check_gpus` (so the pool can stand in for it)."""
        await self.executor.check_gpus(resources)

    # -- leases ---------------------------------------------------------------------------
    @asynccontextmanager
    async def run(self, image: str, resources: TaskResources) -> AsyncIterator[Running]:
        """Same contract as DockerExecutor.run: yields a ready Running.
        Takes an idle container of the same (image, resources) if one is there, else starts
        one through the executor. On a clean exit the container goes back to the pool (idle,
        timestamped) instead of being removed; on any exception or cancellation it is
        removed (removal shielded from cancellation). One not kept after a clean exit is
        removed in the background (:meth:`_discard`).

        ``running.init_s`` is the container's own start, so a warm run shows its first
        job's start time; POST with :meth:`request`."""
        if not self.enabled or self._closed:
            self._misses += 1
            running = await self.executor.start(image, resources)
            clean = False
            try:
                yield running
                clean = True
            finally:
                await (self._discard(running) if clean else self._stop(running))
            return
        key = (image, resources)
        running = await self._take(key)
        if running is None:
            self._misses += 1
            running = await self._start(key)
            lease = _Lease(key, warm=False)
        else:
            self._hits += 1
            lease = _Lease(key, warm=True)
        self._leases[id(running)] = lease
        clean = False
        try:
            yield running
            clean = True
        finally:
            del self._leases[id(running)]
            if not clean or lease.failed:
                await self._stop(running)
            elif self._closed or self._left_processes(running):
                await self._discard(running)
            else:
                await self._put(key, running)

    async def request(self, running: Running, body: bytes) -> tuple[bytes, float]:
        """POST ``body`` as :meth:`DockerExecutor.request` does; returns (reply, seconds).
        The first POST on a warm container is made once, and if the container turns out
        dead it is replaced by a fresh one (in ``running``, in place) and the POST is made
        there. A failed request keeps the container from going back to the pool."""
        lease = self._leases.get(id(running))
        if lease is None:  # pooling is off: a plain run
            return await self.executor.request(running, body)
        try:
            if not lease.warm:
                return await self.executor.request(running, body)
            lease.warm = False
            ahead = running.ahead
            try:  # _take saw its main process alive a moment ago (this job's own take)
                answer = await self.executor.request_once(running, body,
                                                          self.warm_connect_timeout_s)
            except AppUnreachable as exc:
                self.dead += 1
                log.info("warm container %s is dead (%s); starting a fresh one",
                         running.container_id[:12], exc)
            else:
                self._ahead += ahead is not None and ahead.used
                return answer
            await self._replace(running, lease.key)
            return await self.executor.request(running, body)
        except BaseException:
            lease.failed = True
            raise

    # -- the service ------------------------------------------------------------------------
    async def serve(self, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Service (run with nursery.start): removes containers idle longer than idle_s;
        on cancellation removes every idle container (shielded) before returning."""
        if self._serving or self._closed:
            raise RuntimeError("WarmPool.serve runs once per pool")
        self._serving = True
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                task_status.started()
                while True:
                    now = trio.current_time()
                    expired = [e for e in self._idle if now - e.since >= self.idle_s]
                    if expired:
                        self._idle = [e for e in self._idle if now - e.since < self.idle_s]
                        await self._stop_all([e.running for e in expired])
                        self._evicted += len(expired)  # counted once removed
                        continue
                    self._wake = trio.Event()
                    oldest = min((e.since for e in self._idle), default=math.inf)
                    with trio.move_on_at(oldest + self.idle_s):
                        await self._wake.wait()
        finally:
            self._nursery = None
            self._closed = True
            idle, self._idle = self._idle, []
            await self._stop_all([e.running for e in idle])

    # -- internals ------------------------------------------------------------------------
    async def _take(self, key: Key) -> Running | None:
        """The most recently returned live idle container of ``key``, now leased; dead ones
        met on the way are removed."""
        while True:
            entry = next((e for e in reversed(self._idle) if e.key == key), None)
            if entry is None:
                return None
            self._idle.remove(entry)  # leased before any await: no second taker
            alive = False
            try:
                alive = await self._alive(entry.running)
            finally:
                if not alive:
                    self.dead += 1
                    log.info("idle container %s has died; removing it",
                             entry.running.container_id[:12])
                    await self._stop(entry.running)
            if alive:
                return entry.running

    async def _put(self, key: Key, running: Running) -> None:
        """Back into the pool, idle from now; over max_idle the oldest idle one goes."""
        self._idle.append(_Idle(key, running, trio.current_time()))
        self._wake.set()
        if self._nursery is not None and running.ahead is None:
            running.ahead = apphttp.Ahead()
            self._nursery.start_soon(self._hold_ahead, running, running.ahead)
        if len(self._idle) > self.max_idle:
            oldest = self._idle.pop(0)
            self._evicted += 1
            await self._discard(oldest.running)

    async def _hold_ahead(self, running: Running, ahead: apphttp.Ahead) -> None:
        """Open ``running``'s next connection and hold it for AHEAD_HOLD_S; closed unused
        unless a job took it by then (the job owns it)."""
        try:
            await ahead.open(running.address, self.warm_connect_timeout_s, AHEAD_AFTER_S)
            with trio.move_on_after(AHEAD_HOLD_S):
                await ahead.taken.wait()
        finally:
            if running.ahead is ahead:
                running.ahead = None
            if not ahead.taken.is_set():
                ahead.close()

    async def _start(self, key: Key) -> Running:
        running = await self.executor.start(*key)
        ident = self._proc[running.container_id] = _identity(running)
        path = self._pids_file[running.container_id] = _pids_file(ident)
        self._pids_ready[running.container_id] = _pids_current(path)
        return running

    def _left_processes(self, running: Running) -> bool:
        """Whether the job left processes running in the container (a fork bomb, a
        daemon): over PIDS_SLACK more than when it was ready. Such a container is not
        kept warm: idle, it would go on using its share while the advert says it is free."""
        ready = self._pids_ready.get(running.container_id)
        now = _pids_current(self._pids_file.get(running.container_id))
        if ready is None or now is None or now <= ready + PIDS_SLACK:
            return False
        self.not_kept_busy += 1
        log.info("not keeping container %s warm: %d processes, %d when it was ready",
                 running.container_id[:12], now, ready)
        return True

    async def _replace(self, running: Running, key: Key) -> None:
        """Start a fresh container of ``key`` and make ``running`` it; remove the old one.
        If the start fails, ``running`` stays the old one, which the lease's end removes."""
        fresh = await self._start(key)
        old = dataclasses.replace(running)
        for f in dataclasses.fields(Running):
            setattr(running, f.name, getattr(fresh, f.name))
        running.app_log.adopt(old.app_log)  # a job's log_mark from before still holds
        await self._stop(old)

    async def _stop(self, running: Running) -> None:
        self._proc.pop(running.container_id, None)
        self._pids_ready.pop(running.container_id, None)
        self._pids_file.pop(running.container_id, None)
        await self.executor.stop(running)  # shielded

    async def _discard(self, running: Running) -> None:
        """Remove a container that no job needs any more, in the background while
        ``serve`` runs: removal takes ~0.1 s here, which a job's answer should not wait
        for (its container is killed at once; the rest is the engine's cleanup). When the
        pool is closed it is removed here. ``serve`` waits for background removals."""
        if self._nursery is None:
            await self._stop(running)
            return
        self._removing += 1

        async def remove() -> None:
            try:
                await self._stop(running)  # shielded
            finally:
                self._removing -= 1

        self._nursery.start_soon(remove)

    async def _stop_all(self, runs: list[Running]) -> None:
        with trio.CancelScope(shield=True):
            async with trio.open_nursery() as nursery:
                for running in runs:
                    nursery.start_soon(self._stop, running)

    async def _alive(self, running: Running) -> bool:
        """Whether the container's main process is still the one the engine started: from
        /proc when its pid is visible here, else from the engine (one inspect)."""
        ident = self._proc.get(running.container_id)
        if ident is not None:
            pid, start = ident
            return _proc_start_time(pid) == start
        return await trio.to_thread.run_sync(self._engine_says_running, running)

    def _engine_says_running(self, running: Running) -> bool:
        try:
            running.container.reload()
        except docker.errors.NotFound:
            return False
        return running.container.attrs["State"]["Status"] == "running"


def _identity(running: Running) -> tuple[int, int] | None:
    """(pid, start time) of the container's main process from the inspect data its start
    left (no API call), or None when that process is not visible in this pid namespace
    (its /proc entry missing or not in the container's cgroup)."""
    attrs = getattr(running.container, "attrs", None) or {}
    pid = (attrs.get("State") or {}).get("Pid") or 0
    if pid <= 0:
        return None
    cgroup = _read(f"/proc/{pid}/cgroup")
    if cgroup is None or running.container_id.encode() not in cgroup:
        return None  # gone, or another process in our namespace with that number
    start = _proc_start_time(pid)
    return None if start is None else (pid, start)


def _proc_start_time(pid: int) -> int | None:
    """The start time (clock ticks after boot) of process ``pid``; None if it is gone or
    has exited (a zombie not yet reaped)."""
    stat = _read(f"/proc/{pid}/stat")
    if stat is None:
        return None
    # the command name (field 2) may hold spaces and parentheses: split after its last ")"
    fields = stat[stat.rfind(b")") + 2:].split()
    try:
        if fields[0] in (b"Z", b"X"):  # field 3, the state: exited
            return None
        return int(fields[19])  # field 22, starttime
    except (IndexError, ValueError):
        return None


def _read(path: str) -> bytes | None:
    """A small /proc or /sys file whole (one open, read, close: a warm job reads two), or
    None when it cannot be read."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        return os.read(fd, 65536)
    except OSError:
        return None
    finally:
        os.close(fd)


def _pids_file(ident: tuple[int, int] | None) -> str | None:
    """The pids.current file of a container's pids cgroup (v1 or v2), found through its
    main process (``ident``: from :func:`_identity`); None when that is not visible."""
    if ident is None:
        return None
    data = _read(f"/proc/{ident[0]}/cgroup")
    if data is None:
        return None
    for line in data.decode(errors="replace").splitlines():
        _, controllers, path = line.split(":", 2)
        for candidate in ((f"/sys/fs/cgroup/pids{path}/pids.current",)
                          if "pids" in controllers.split(",") else
                          (f"/sys/fs/cgroup{path}/pids.current",) if controllers == ""
                          else ()):
            if os.path.exists(candidate):
                return candidate
    return None


def _pids_current(path: str | None) -> int | None:
    """How many processes (and threads) a container runs now (``path``: its
    :func:`_pids_file`); None when that is not visible here."""
    data = _read(path) if path is not None else None
    try:
        return int(data) if data is not None else None
    except ValueError:
        return None
