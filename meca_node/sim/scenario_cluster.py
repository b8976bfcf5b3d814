"""``meca-node sim cluster SCENARIO``: a scenario played by real node processes on 127.0.0.x.

Every node of the scenario is a ``meca-node start`` process (:class:`~meca_node.sim.Cluster`:
its own 127.0.0.x address, key, data dir and config, one genesis with the scenario's
balances, a full mesh of bootstrap links), with ``sim_faults = true``. Bad actors are
processes of :mod:`meca_node.sim.actors` (a liar provider, a sybil) and
:mod:`meca_node.sim.double_spender` (run against a double-spending client's key).

The run: start the nodes and wait until every working node holds every other's advert; the
developers publish the tasks (``meca-node task publish --no-test``) and every client sees
the offers and every provider ready; then, with the clock of the scenario starting at 0,
the load is submitted through the Python API (``meca_node.api.AsyncClient``, which the
command passes in: ``meca_node.sim`` sits below the CLI that API builds on; Poisson
arrivals, seeded, at most :data:`CONCURRENCY` jobs at once), the faults are applied on
schedule (kill/restart by pid, partition/heal/delay/drop through each node's fault switch,
floods by the sybils) and watched for their detection; after the load the nodes' ledgers
settle, every node's figures are collected into a :class:`~meca_node.sim.report.RunRecord`,
and every process started is stopped by pid (also on Ctrl-C or at the time limit). Before
the clock starts, one warm-up job of each task on each provider puts the image and a warm
container there (as a deployment would have them).

Times are seconds from the start of the load. What the cluster does not model: the
scenario's ``[network]`` latency, jitter and loss (nodes talk over loopback); a ``delay``
fault slows each node's own gossip publishes and stream writes, not the relaying of others'
gossip; a ``drop`` fault drops a share of each node's incoming gossip (the message is lost at
that node and not relayed by it), not stream traffic.
"""

from __future__ import annotations

import base64
import json
import logging
import random
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Protocol

import trio

from meca_node import wire
from meca_node.control import ControlClient, ControlError
from meca_node.sim.cluster import Cluster, ClusterNode, child_env
from meca_node.sim.report import FaultRecord, JobRecord, RunRecord
from meca_node.sim.scenario import Fault, NodeGroup, NodeSpec, Scenario, Task
from meca_node.store.taskdir import read_task_folder

log = logging.getLogger("meca_node.sim")

ADVERT_INTERVAL_S = 1.0
#: an advert not refreshed for this long is stale (three missed rounds and a margin)
STALE_S = 3 * ADVERT_INTERVAL_S + 1.0
MAX_NODES = 32
#: most jobs in flight at once (each holds a thread and a stream to its client node)
CONCURRENCY = 16
POLL_S = 0.5
SAMPLE_S = 3.0
#: the double-spending clients cheat at this share of the scenario's duration
DOUBLE_SPEND_AT = 0.4
READY_S = 90.0
SETUP_WAIT_S = 120.0
PUBLISH_S = 300.0
WARM_UP_S = 120.0
SETTLE_S = 30.0
COLLECT_S = 30.0
#: a job's answer may come this long after its own timeout before it counts as lost
JOB_MARGIN_S = 30.0
STOP_S = 15.0
ZERO_HASH = "00" * 32


class SimClusterError(Exception):
    """The cluster could not be set up as the scenario says; the message says why."""


class JobApi(Protocol):
    """What the run needs of ``meca_node.api.AsyncClient``: ``run`` returns a result with
    ``output``, ``provider``, ``paid`` and ``replicas``, or raises an error whose
    ``reason`` is the job's typed failure."""

    async def run(self, task: str, input: Any, *, max_price: int, timeout: float,
                  replicas: int) -> Any: ...


#: data dir -> a job API talking to that node
ApiFactory = Callable[[Path], JobApi]


def _say(text: str) -> None:
    print(f"sim cluster: {text}", file=sys.stderr, flush=True)


@dataclass
class SimNode:
    spec: NodeSpec
    group: NodeGroup
    node: ClusterNode
    key: str = ""  # public key, hex
    alive: bool = True
    side: int | None = None  # its side of a partition in force
    _control: ControlClient | None = None
    _api: JobApi | None = None

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def peer_id(self) -> str:
        return self.node.peer_id

    @property
    def working(self) -> bool:
        return self.group.works

    def control(self) -> ControlClient:
        """One pooled control client per node start (a restarted node has a new port)."""
        if self._control is None:
            self._control = ControlClient(self.node.data_dir, timeout_s=10.0)
        return self._control

    def api(self, factory: ApiFactory) -> JobApi:
        if self._api is None:
            self._api = factory(self.node.data_dir)
        return self._api

    def forget_clients(self) -> None:
        if self._control is not None:
            self._control.close()
        self._control = self._api = None


@dataclass
class TaskRun:
    task: Task
    folder: Path
    offer: str  # the offer's name (the folder's name.txt)
    input: bytes
    output: bytes
    developer: SimNode | None = None


@dataclass
class _Watch:
    """A fault record and the wall of its detection (for the report's detail)."""

    record: FaultRecord
    notes: list[str] = field(default_factory=list)


def find_folder(folder: str, scenario_path: Path | None) -> Path:
    """A task folder given relative to the repository root: looked up from the working
    directory, then from the scenario file's folder upward."""
    bases = [Path.cwd()]
    if scenario_path is not None:
        bases += list(Path(scenario_path).resolve().parents)
    for base in bases:
        candidate = base / folder
        if candidate.is_dir():
            return candidate
    raise SimClusterError(f"task folder {folder!r} not found from {Path.cwd()} or above "
                          "the scenario file; run from the repository root")


class ClusterRun:
    """One run of ``scenario`` in ``work_dir`` (node data dirs and logs)."""

    def __init__(self, scenario: Scenario, work_dir: Path, api: ApiFactory, *,
                 time_limit_s: float | None = None, scenario_path: Path | None = None,
                 say: Callable[[str], None] = _say) -> None:
        n = scenario.node_count()
        if n > MAX_NODES:
            raise SimClusterError(f"{scenario.name}: {n} nodes; `sim cluster` runs at most "
                                  f"{MAX_NODES} processes here (use `sim run` for more)")
        self.scenario = scenario
        self.work_dir = Path(work_dir)
        self.api = api
        #: from the start of the load (set-up is bounded by its own waits)
        self.time_limit_s = time_limit_s or scenario.duration_s + 120.0
        self.say = say
        self.rng = random.Random(scenario.seed)
        self.tasks = [self._task(t, scenario_path) for t in scenario.tasks]
        self.cluster: Cluster | None = None
        self.nodes: list[SimNode] = []
        self.helpers: list[subprocess.Popen] = []
        #: every process this run started (nodes, restarts, helpers), stopped by the end
        self.pids: list[int] = []
        self.jobs: list[JobRecord] = []
        self.watches: list[_Watch] = []
        self.reputation: list[tuple[float, str, str, float, bool]] = []
        self.counters: Counter = Counter()
        #: the first few errors of each failure reason (what the report cannot show)
        self.failure_examples: dict[str, list[str]] = {}
        self.meta: dict = {}
        self.balances_before: dict[str, int] = {}
        self.balances_after: dict[str, int] = {}
        self.collected: dict = {}
        self.t0 = 0.0  # trio time at the start of the load
        self.t0_wall = 0.0
        self.started = False
        self.interrupted = ""
        self.timed_out = False
        self.fault_state: dict = {"delay_ms": 0.0, "drop": 0.0}
        self._scope: trio.CancelScope | None = None
        self._watchers: trio.Nursery | None = None  # detection watchers (end with the load)
        self._work: trio.Nursery | None = None  # load, faults and their timed ends
        self._heal_sides: dict[str, int | None] | None = None

    # -- set-up ------------------------------------------------------------------------
    @staticmethod
    def _task(task: Task, scenario_path: Path | None) -> TaskRun:
        folder = find_folder(task.folder, scenario_path)
        try:
            spec = read_task_folder(folder)
        except Exception as exc:
            raise SimClusterError(f"task {task.name}: {folder} is not a usable task folder: "
                                  f"{exc}") from None
        return TaskRun(task, folder, spec.name, spec.example_input, spec.example_output)

    def prepare(self) -> None:
        """Keys, genesis (the scenario's balances), configs and each node's command."""
        specs = self.scenario.node_list()
        groups = {g.group: g for g in self.scenario.nodes}
        roles = [(s.role,) for s in specs]
        balances = [groups[s.group].balance for s in specs]
        cluster = Cluster(self.work_dir / "nodes", len(specs),
                          advert_interval_s=ADVERT_INTERVAL_S,
                          chords=max(0, len(specs) - 2),  # every node dials every other
                          roles=roles, seed=self.scenario.seed,
                          network_name=f"sim-{self.scenario.name}"[:64], balances=balances)
        cluster.prepare()
        self.cluster = cluster
        for spec, node in zip(specs, cluster.nodes):
            group = groups[spec.group]
            lines = ["sim_faults = true", "sim_trace = true"]  # trace: for the replay
            if spec.role == "provider" and group.works:
                lines += [f"price = {group.price}", f"offer_cpu = {group.cpu}",
                          f"offer_mem_mb = {group.mem_mib}", f"offer_gpus = {group.gpus}"]
            with open(node.data_dir / "config.toml", "a") as f:
                f.write("\n".join(lines) + "\n")
            head = [sys.executable, "-m"]
            rest = node.args[4:]  # [python, -m, meca_node, start, ...]
            if group.behaviour == "liar":
                node.args = head + ["meca_node.sim.actors", "liar", "start", *rest]
            elif group.behaviour == "sybil":
                node.args = head + ["meca_node.sim.actors", "sybil", *rest]
            self.nodes.append(SimNode(spec, group, node))
        developers = [n for n in self.nodes if n.spec.role == "developer" and n.working]
        for i, t in enumerate(self.tasks):  # each task published by one developer
            t.developer = developers[i % len(developers)] if developers else None
        if self.tasks and not developers:
            raise SimClusterError(f"{self.scenario.name}: tasks to publish but no developer")

    # -- who is who ------------------------------------------------------------------------
    def working(self, role: str | None = None, alive: bool = True) -> list[SimNode]:
        return [n for n in self.nodes if n.working and (role is None or n.spec.role == role)
                and (n.alive or not alive)]

    def load_clients(self) -> list[SimNode]:
        """Clients that submit the load: honest ones (a double spender only cheats)."""
        return [n for n in self.working("client", alive=False)
                if n.group.behaviour == "honest"]

    def by_peer(self) -> dict[str, SimNode]:
        return {n.peer_id: n for n in self.nodes}

    def by_key(self) -> dict[str, SimNode]:
        return {n.key: n for n in self.nodes if n.key}

    def node_named(self, name: str) -> SimNode:
        return self.nodes[self.scenario.node_index(name)]

    def group_nodes(self, group: str) -> list[SimNode]:
        return [n for n in self.nodes if n.spec.group == group]

    def now(self) -> float:
        return trio.current_time() - self.t0

    # -- calls to nodes, off the trio thread ------------------------------------------------
    async def get(self, node: SimNode, path: str, **params) -> dict | None:
        """``GET path`` on a live node; None when it does not answer."""
        if not node.alive:
            return None
        try:
            return await trio.to_thread.run_sync(partial(node.control().get, path, **params))
        except ControlError:
            return None

    async def post(self, node: SimNode, path: str, body: dict) -> dict | None:
        if not node.alive:
            return None
        try:
            return await trio.to_thread.run_sync(node.control().post, path, body)
        except ControlError as exc:
            self.say(f"{node.name}: {path} failed: {exc}")
            return None

    async def cli(self, node: SimNode, *args: str, timeout: float = PUBLISH_S
                  ) -> subprocess.CompletedProcess:
        """``meca-node ARGS --data-dir <node's>``; killed if cancelled or after ``timeout``."""
        cmd = [sys.executable, "-m", "meca_node", *args, "--data-dir", str(node.node.data_dir)]
        with trio.fail_after(timeout):
            return await trio.run_process(cmd, capture_stdout=True, capture_stderr=True,
                                          check=False, env=child_env())

    async def wait_for(self, what: str, predicate, timeout_s: float,
                       interval_s: float = POLL_S):
        """``await predicate()``'s value once truthy (a bounded poll of other processes)."""
        deadline = trio.current_time() + timeout_s
        while True:
            value = await predicate()
            if value:
                return value
            if trio.current_time() > deadline:
                raise SimClusterError(f"timed out after {timeout_s:g} s waiting for {what}")
            await trio.sleep(interval_s)

    # -- the run -------------------------------------------------------------------------
    async def run(self) -> RunRecord:
        """Set up, drive, settle, collect; every process stopped in the end."""
        wall = time.monotonic()
        try:
            with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async with trio.open_nursery() as outer:
                    outer.start_soon(self._stop_on_signal, signals)
                    limit = None
                    with trio.CancelScope() as scope:  # a signal cancels it
                        self._scope = scope
                        await self._setup()  # each of its waits is bounded
                        with trio.move_on_after(self.time_limit_s) as limit:
                            await self._drive()
                            await self._settle()
                    self.timed_out = bool(limit and limit.cancelled_caught
                                          and not self.interrupted)
                    if self.timed_out:
                        self.say(f"time limit of {self.time_limit_s:g} s reached; stopping")
                    if not self.interrupted and self.started:
                        with trio.move_on_after(COLLECT_S):
                            await self._collect()
                    outer.cancel_scope.cancel()
        finally:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(self.stop)
        self.meta["wall_s"] = round(time.monotonic() - wall, 1)
        return self.record()

    async def _stop_on_signal(self, signals) -> None:
        async for signum in signals:
            self.interrupted = signal.Signals(signum).name
            self.say(f"{self.interrupted}: stopping every node")
            if self._scope is not None:
                self._scope.cancel()
            return

    def stop(self) -> None:
        """Stop every process this run started, by pid (SIGTERM, then SIGKILL)."""
        for proc in self.helpers:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
        for n in self.nodes:
            n.forget_clients()
        if self.cluster is not None:
            codes = self.cluster.stop(timeout_s=STOP_S)
            self.meta["exit_codes"] = {self.nodes[i].name: c for i, c in codes.items()}

    # -- 1. set-up -----------------------------------------------------------------------
    async def _setup(self) -> None:
        t = time.monotonic()
        if self.cluster is None:
            self.prepare()
        assert self.cluster is not None
        self.say(f"starting {len(self.nodes)} nodes in {self.work_dir}")
        self.started = True
        try:
            await trio.to_thread.run_sync(partial(self.cluster.start,
                                                  ready_timeout_s=READY_S))
        finally:
            self.pids += [n.node.proc.pid for n in self.nodes if n.node.proc is not None]
        for n in self.nodes:
            status = await self.get(n, "/v1/status")
            n.key = (status or {}).get("public_key", "")
        working = self.working()
        everyone = {n.peer_id for n in working}

        async def meshed() -> bool:
            for n in working:
                peers = await self.get(n, "/v1/peers")
                seen = {a["peer_id"] for a in (peers or {}).get("adverts", [])}
                if not seen >= everyone - {n.peer_id}:
                    return False
            return True

        await self.wait_for("every working node to hold every other's advert", meshed,
                            SETUP_WAIT_S)
        for t_run in self.tasks:
            assert t_run.developer is not None
            self.say(f"{t_run.developer.name} publishes {t_run.task.name} "
                     f"({t_run.folder}, fee {t_run.task.fee})")
            r = await self.cli(t_run.developer, "task", "publish", str(t_run.folder), "--fee",
                               str(t_run.task.fee), "--no-test", "--quiet")
            if r.returncode != 0:
                raise SimClusterError(f"publishing {t_run.folder} failed: "
                                      f"{r.stderr.decode(errors='replace')[-2000:]}")
        clients = self.working("client")
        providers = [p for p in self.working("provider")]

        async def ready() -> bool:
            for c in clients:
                offers = await self.get(c, "/v1/offers")
                names = {o["name"] for o in (offers or {}).get("offers", [])}
                if not {t.offer for t in self.tasks} <= names:
                    return False
                peers = await self.get(c, "/v1/peers") or {}
                ads = {a["peer_id"]: a for a in peers.get("adverts", [])}
                for p in providers:
                    ad = ads.get(p.peer_id)
                    if (p.peer_id not in peers.get("connected", {}) or ad is None
                            or not ad.get("environments")):
                        return False
            return True

        await self.wait_for("every client to see the offers and every provider ready", ready,
                            SETUP_WAIT_S)
        await self._warm_up(providers)
        views = [v for v in [await self.get(n, "/v1/wallet/balances") for n in working] if v]
        if views:
            self.balances_before = self.named_balances(views[0])
        self.meta["setup_s"] = round(time.monotonic() - t, 1)
        self.say(f"set up in {self.meta['setup_s']} s; load starts")

    async def _warm_up(self, providers: list[SimNode]) -> None:
        """One job of each task on each provider, before the load: every provider holds the
        image and a warm container when the clock starts (a set-up step, as the image's
        distribution is; not recorded). Run by a double spender when there is one (its
        chain then has a head to fork), else by the first client."""
        cheats = [n for n in self.working("client") if n.group.behaviour == "double_spender"]
        runner = (cheats or self.load_clients() or [None])[0]
        if runner is None:
            return
        failed: list[str] = []

        async def one(p: SimNode, t: TaskRun) -> None:
            body = {"task": t.offer, "input_b64": base64.b64encode(t.input).decode(),
                    "max_price": self.scenario.load.max_price, "timeout_s": WARM_UP_S,
                    "provider": p.peer_id}
            try:
                await trio.to_thread.run_sync(_run_job, runner.control(), body)
            except (ControlError, RuntimeError) as exc:
                failed.append(f"{p.name}: {exc}")

        with trio.move_on_after(WARM_UP_S + 10):
            async with trio.open_nursery() as nursery:
                for p in providers:
                    for t in self.tasks:
                        if _fits(t.task, p.group):
                            nursery.start_soon(one, p, t)
        if failed:
            self.say(f"warm-up: {len(failed)} job(s) failed: {'; '.join(failed)[:500]}")

    def named_balances(self, view: dict) -> dict[str, int]:
        """A wallet view's balances by node name; what is paid but not received yet (the
        view's ``outstanding``) as one more account, so the sum is the supply."""
        keys = self.by_key()
        out = {(keys[k].name if k in keys else k[:16]): v
               for k, v in view["balances"].items()}
        if view["outstanding"]:
            out["(outstanding)"] = view["outstanding"]
        return out

    # -- 2. load, faults, watchers --------------------------------------------------------------
    async def _drive(self) -> None:
        self.t0 = trio.current_time()
        self.t0_wall = time.time()
        async with trio.open_nursery() as watchers:
            watchers.start_soon(self._sample_reputation)
            self._watchers = watchers
            liars = [n for n in self.working("provider", alive=False)
                     if n.group.behaviour == "liar"]
            for liar in liars:
                watchers.start_soon(self._watch_liar, self._watch(0.0, "liar", liar.name))
            async with trio.open_nursery() as work:
                self._work = work
                work.start_soon(self._load)
                work.start_soon(self._faults)
                for cheat in [n for n in self.working("client", alive=False)
                              if n.group.behaviour == "double_spender"]:
                    work.start_soon(self._double_spend, cheat)
            await trio.sleep(2 * POLL_S)  # a last look for the watchers
            watchers.cancel_scope.cancel()

    def _watch(self, at_s: float, kind: str, target: str = "") -> _Watch:
        w = _Watch(FaultRecord(at_s=round(at_s, 3), kind=kind, target=target))
        self.watches.append(w)
        return w

    # -- the load
    async def _load(self) -> None:
        load = self.scenario.load
        clients = self.load_clients()
        if not clients:
            self.say("no honest client: no load")
            return
        names = list(load.mix)
        weights = [load.mix[k] for k in names]
        tasks = {t.task.name: t for t in self.tasks}
        limiter = trio.CapacityLimiter(CONCURRENCY)
        at = 0.0
        async with trio.open_nursery() as nursery:
            for i in range(load.jobs):
                at += self.rng.expovariate(load.rate_per_s)
                if at > self.scenario.duration_s:
                    break
                client = clients[self.rng.randrange(len(clients))]
                task = tasks[self.rng.choices(names, weights)[0]]
                await trio.sleep_until(self.t0 + at)
                nursery.start_soon(self._job, f"j{i:05d}", client, task, limiter)
        self.say(f"{len(self.jobs)} jobs ended")

    async def _job(self, job_id: str, client: SimNode, t: TaskRun,
                   limiter: trio.CapacityLimiter) -> None:
        load = self.scenario.load
        async with limiter:
            submitted = self.now()
            best = await self._best_price(client, t)
            rec = JobRecord(id=job_id, task=t.task.name, client=client.name,
                            submitted_s=round(submitted, 4), finished_s=None, outcome="lost",
                            best_price=best, replicas=load.replicas)
            self.jobs.append(rec)
            with trio.move_on_after(load.timeout_s + JOB_MARGIN_S):
                try:
                    r = await client.api(self.api).run(t.offer, t.input,
                                                       replicas=load.replicas,
                                                       max_price=load.max_price,
                                                       timeout=load.timeout_s)
                except Exception as exc:  # the API's JobError: its reason is typed
                    rec.outcome = str(getattr(exc, "reason", "") or
                                      f"error: {type(exc).__name__}")
                    examples = self.failure_examples.setdefault(rec.outcome, [])
                    if len(examples) < 3:
                        examples.append(f"{job_id} at {submitted:.1f} s: "
                                        f"{getattr(exc, 'detail', exc)}"[:600])
                else:
                    rec.outcome = "ok" if r.output == t.output else "wrong_output"
                    peers = self.by_peer()
                    fee = t.task.fee
                    if r.replicas:
                        paid = [p for p in r.replicas if p.get("outcome") == "paid"]
                        rec.provider = ",".join(
                            peers[p["provider"]].name if p["provider"] in peers
                            else p["provider"] for p in paid)
                        rec.price_paid = sum(max(0, int(p["paid"]) - fee) for p in paid)
                        self.counters["replica_refusals"] += sum(
                            1 for p in r.replicas if p.get("outcome") == "refused")
                    else:
                        rec.provider = (peers[r.provider].name if r.provider in peers
                                        else r.provider)
                        rec.price_paid = max(0, r.paid - fee)
                rec.finished_s = round(self.now(), 4)

    async def _best_price(self, client: SimNode, t: TaskRun) -> int:
        """The sum of the ``replicas`` cheapest prices among the providers that fit now."""
        if not client.alive:
            return 0
        try:
            m = await trio.to_thread.run_sync(client.control().post, "/v1/jobs/match",
                                              {"task": t.offer,
                                               "max_price": self.scenario.load.max_price})
        except ControlError:
            return 0
        prices = sorted(int(r["price"]) for r in m.get("ranked", []))
        k = self.scenario.load.replicas
        return sum(prices[:k]) if len(prices) >= k else 0

    # -- the faults
    async def _faults(self) -> None:
        """Each fault at its time, in its own task (a restart that takes a while does not
        hold back the next fault)."""
        for f in self.scenario.faults:
            await trio.sleep_until(self.t0 + f.at_s)
            self.say(f"t={self.now():.1f} s: {f.kind} {f.target or ''}".rstrip())
            self._work.start_soon(getattr(self, f"_fault_{f.kind}"), f)  # type: ignore

    async def _fault_kill(self, f: Fault) -> None:
        node = self.node_named(f.target)
        w = self._watch(f.at_s, "kill", f.target)
        assert self.cluster is not None
        node.alive = False
        node.forget_clients()
        await trio.to_thread.run_sync(self.cluster.kill, node.node)
        self._watchers.start_soon(self._watch_kill, w, node)  # type: ignore[union-attr]

    async def _fault_restart(self, f: Fault) -> None:
        node = self.node_named(f.target)
        w = self._watch(f.at_s, "restart", f.target)
        assert self.cluster is not None
        try:
            await trio.to_thread.run_sync(partial(self.cluster.restart, node.node,
                                                  ready_timeout_s=READY_S))
        except Exception as exc:
            w.notes.append(f"restart failed: {exc}")
            return
        finally:
            if node.node.proc is not None:
                self.pids.append(node.node.proc.pid)
        node.alive = True
        await self._reapply_faults(node)
        self._watchers.start_soon(self._watch_restart, w, node)  # type: ignore[union-attr]

    async def _fault_partition(self, f: Fault) -> None:
        side_of = {g: i for i, side in enumerate(f.groups) for g in side}
        for n in self.nodes:
            n.side = side_of.get(n.spec.group)
        w = self._watch(f.at_s, "partition", " | ".join(",".join(s) for s in f.groups))
        async with trio.open_nursery() as nursery:
            for n in self.nodes:
                nursery.start_soon(self._set_switch, n, {"block": self._blocks(n)})
        self._watchers.start_soon(self._watch_partition, w)  # type: ignore[union-attr]

    def _blocks(self, node: SimNode) -> list[str]:
        if node.side is None:
            return []
        return [m.peer_id for m in self.nodes if m.side is not None and m.side != node.side]

    async def _fault_heal(self, f: Fault) -> None:
        sides = {n.name: n.side for n in self.nodes}
        for n in self.nodes:
            n.side = None
        w = self._watch(f.at_s, "heal")
        async with trio.open_nursery() as nursery:
            for n in self.nodes:
                nursery.start_soon(self._set_switch, n, {"block": []})
        self._watchers.start_soon(self._watch_heal, w, sides)  # type: ignore[union-attr]

    async def _fault_delay(self, f: Fault) -> None:
        w = self._watch(f.at_s, "delay", f"{f.delay_ms:g} ms for {f.duration_s:g} s")
        await self._timed_switch(w, f, {"delay_ms": min(f.delay_ms, 30_000.0)},
                                 {"delay_ms": 0}, "delay_ms", "writes_delayed")

    async def _fault_drop(self, f: Fault) -> None:
        w = self._watch(f.at_s, "drop", f"{f.share:g} for {f.duration_s:g} s")
        await self._timed_switch(w, f, {"drop": f.share}, {"drop": 0}, "drop",
                                 "gossip_dropped")

    async def _timed_switch(self, w: _Watch, f: Fault, on: dict, off: dict, key: str,
                            stat: str) -> None:
        self.fault_state[key] = on[key]
        async with trio.open_nursery() as nursery:
            for n in self.nodes:
                doc = dict(on)
                if key == "drop":  # each node its own seeded draw
                    doc["seed"] = self.scenario.seed * 1000 + n.spec.index
                nursery.start_soon(self._set_switch, n, doc)

        async def end() -> None:
            await trio.sleep_until(self.t0 + f.end_s)
            self.fault_state[key] = 0.0
            async with trio.open_nursery() as nursery:
                for n in self.nodes:
                    nursery.start_soon(self._set_switch, n, dict(off))
            w.record.healed_s = round(self.now(), 3)

        self._work.start_soon(end)  # type: ignore[union-attr]
        self._watchers.start_soon(self._watch_switch_stat, w, stat)  # type: ignore[union-attr]

    async def _set_switch(self, node: SimNode, doc: dict) -> None:
        await self.post(node, "/v1/sim/faults", doc)

    async def _reapply_faults(self, node: SimNode) -> None:
        """A restarted node gets the switch settings in force."""
        doc: dict = {"block": self._blocks(node)}
        if self.fault_state["delay_ms"]:
            doc["delay_ms"] = self.fault_state["delay_ms"]
        if self.fault_state["drop"]:
            doc.update(drop=self.fault_state["drop"],
                       seed=self.scenario.seed * 1000 + node.spec.index)
        if doc["block"] or len(doc) > 1:
            await self._set_switch(node, doc)

    async def _fault_flood(self, f: Fault) -> None:
        w = self._watch(f.at_s, "flood", f.target)
        before = await self._flood_drops()
        self.counters.setdefault("flood_drops_before", before)
        for n in self.group_nodes(f.target):
            await self.post(n, "/v1/sim/flood", {"rate_per_s": f.rate_per_s,
                                                 "duration_s": f.duration_s})
        self._watchers.start_soon(self._watch_flood, w, before)  # type: ignore[union-attr]

    async def _flood_drops(self) -> int:
        """Gossip the working nodes dropped for rate (rate_limited + banned), in all."""
        total = 0
        for n in self.working():
            s = await self.get(n, "/v1/status")
            dropped = (s or {}).get("gossip", {}).get("dropped", {})
            total += dropped.get("rate_limited", 0) + dropped.get("banned", 0)
        return total

    # -- the double spender
    def _cheat_targets(self, cheat: SimNode) -> list[SimNode]:
        """Two live honest providers, those never partitioned from ``cheat`` first; none
        while a partition is in force (its detection is then a matter of the heal)."""
        if any(n.side is not None for n in self.nodes):
            return []
        apart = {g for f in self.scenario.faults if f.kind == "partition" for side in f.groups
                 if cheat.spec.group not in side for g in side}
        honest = [p for p in self.working("provider") if p.group.behaviour == "honest"]
        honest.sort(key=lambda p: p.spec.group in apart)
        return honest[:2] if len(honest) >= 2 else []

    async def _double_spend(self, cheat: SimNode) -> None:
        """At DOUBLE_SPEND_AT of the duration, or as soon after as two honest providers are
        up and no partition is in force, sign two receipts at one seq of the cheat's chain."""
        await trio.sleep_until(self.t0 + DOUBLE_SPEND_AT * self.scenario.duration_s)
        while not self._cheat_targets(cheat) and self.now() < self.scenario.duration_s:
            await trio.sleep(POLL_S)
        targets = self._cheat_targets(cheat)
        w = self._watch(round(self.now(), 3), "double_spend", cheat.name)
        t = next((t for t in self.tasks if self.scenario.load.mix.get(t.task.name, 0) > 0),
                 self.tasks[0])
        offers = (await self.get(cheat, "/v1/offers") or {}).get("offers", [])
        offer = next((o for o in offers if o["name"] == t.offer), None)
        history = (await self.get(cheat, "/v1/wallet/history") or {}).get("entries", [])
        if len(targets) < 2 or offer is None or t.developer is None:
            w.notes.append("skipped: it needs two live honest providers and the offer")
            return
        report = self.work_dir / f"double_spender-{cheat.spec.index}.json"
        args = [sys.executable, "-m", "meca_node.sim.double_spender",
                "--genesis", str(self.cluster.genesis_path),  # type: ignore[union-attr]
                "--key-dir", str(cheat.node.data_dir), "--seq", str(len(history)),
                "--prev", history[-1]["hash"] if history else ZERO_HASH,
                "--offer-id", offer["offer_id"], "--developer", t.developer.key,
                "--fee", str(t.task.fee), "--max-price", str(self.scenario.load.max_price),
                "--input", str(t.folder / "example_input.bin"), "--report", str(report),
                "--timeout", "60"]
        for p in targets:
            args += ["--target", p.node.addr]
        with open(self.work_dir / f"double_spender-{cheat.spec.index}.log", "wb") as err:
            proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=err,
                                    stdin=subprocess.DEVNULL, env=child_env())
        self.helpers.append(proc)
        self.pids.append(proc.pid)
        line = await trio.to_thread.run_sync(proc.stdout.readline)  # type: ignore[union-attr]
        try:
            sent = json.loads(line)["sent"] - self.t0_wall
        except (ValueError, KeyError, TypeError):
            w.notes.append(f"the cheat sent nothing (exit {proc.poll()}; see {err.name})")
            return
        w.record.at_s = round(sent, 3)
        w.notes.append(f"two receipts at seq {len(history)} paid "
                       f"{' and '.join(p.name for p in targets)}")
        self._watchers.start_soon(self._watch_fork, w, cheat)  # type: ignore[union-attr]
        await trio.to_thread.run_sync(partial(_wait_quietly, proc, 90))

    # -- watchers: each marks its fault detected (or healed) when the nodes show it
    async def _until(self, predicate, interval_s: float = POLL_S) -> None:
        while not await predicate():
            await trio.sleep(interval_s)

    def _mark(self, w: _Watch, attr: str = "detected_s") -> None:
        setattr(w.record, attr, round(self.now(), 3))

    async def _watch_kill(self, w: _Watch, node: SimNode) -> None:
        async def gone() -> bool:
            for c in self.load_clients():
                hosts = await self.get(c, "/v1/hosts")
                if hosts is None:
                    continue
                if any(h["peer_id"] == node.peer_id and h["connected"]
                       for h in hosts["hosts"]):
                    return False
            return True

        await self._until(gone)
        self._mark(w)
        w.notes.append("every client sees it disconnected (no longer chosen)")

    async def _watch_restart(self, w: _Watch, node: SimNode) -> None:
        async def back() -> bool:
            for c in self.load_clients():
                hosts = await self.get(c, "/v1/hosts") or {"hosts": []}
                h = next((h for h in hosts["hosts"] if h["peer_id"] == node.peer_id), None)
                if h is None or not h["connected"] or h["advert_age_s"] > STALE_S:
                    return False
            return True

        await self._until(back)
        self._mark(w)
        w.notes.append("every client sees it connected with a fresh advert")

    async def _watch_partition(self, w: _Watch) -> None:
        async def split() -> bool:
            for n in self.working():
                if n.side is None:
                    return True  # healed before it was seen
                peers = await self.get(n, "/v1/peers")
                if peers is None:
                    continue
                others = {m.peer_id for m in self.working(alive=False)
                          if m.side is not None and m.side != n.side}
                for a in peers["adverts"]:
                    if a["peer_id"] in others and a["age_s"] <= STALE_S:
                        return False
            return True

        await self._until(split)
        if any(n.side is not None for n in self.nodes):
            self._mark(w)
            w.notes.append(f"every node's adverts of the other side(s) older than "
                           f"{STALE_S:g} s")

    async def _watch_heal(self, w: _Watch, sides: dict[str, int | None]) -> None:
        """Detected when every node is connected to every node of the other side(s) and
        holds an advert of each signed since the heal; the time every client ranks the
        other side's providers for a job again goes in the detail. Healed (at the end, by
        :meth:`_jobs_cross`) when a job crosses the former sides again."""
        self._heal_sides = sides
        by_name = {n.name: n for n in self.nodes}
        healed_at = self.now()

        async def whole() -> bool:
            since = self.now() - healed_at
            for n in self.working():
                peers = await self.get(n, "/v1/peers")
                if peers is None:
                    continue
                ads = {a["peer_id"]: a for a in peers["adverts"]}
                for m in self.working():
                    if m is n or sides.get(m.name) == sides.get(n.name):
                        continue
                    a = ads.get(by_name[m.name].peer_id)
                    if a is None or a["age_s"] > since or not a["connected"]:
                        return False
            return True

        async def ranked() -> bool:
            for c in self.load_clients():
                others = {m.peer_id for m in self.working("provider")
                          if sides.get(m.name) != sides.get(c.name)}
                for t in self.tasks:
                    try:
                        m = await trio.to_thread.run_sync(
                            c.control().post, "/v1/jobs/match",
                            {"task": t.offer, "max_price": self.scenario.load.max_price})
                    except ControlError:
                        return False
                    if not others <= {r["peer_id"] for r in m.get("ranked", [])}:
                        return False
            return True

        await self._until(whole)
        self._mark(w)
        w.notes.append("every node reconnected to the other side(s), with an advert of each "
                       "signed since the heal")
        await self._until(ranked)
        self.counters["heal_ranked_after_s"] = round(self.now() - w.record.at_s, 3)
        w.notes.append(f"every client ranks the other side's providers again after "
                       f"{self.counters['heal_ranked_after_s']:g} s")

    async def _watch_switch_stat(self, w: _Watch, stat: str) -> None:
        async def acted() -> bool:
            for n in self.nodes:
                v = await self.get(n, "/v1/sim/faults")
                if v and v.get("stats", {}).get(stat, 0) > 0:
                    return True
            return False

        await self._until(acted)
        self._mark(w)
        w.notes.append(f"the nodes' switches count {stat}")

    async def _watch_flood(self, w: _Watch, before: int) -> None:
        await self._until(lambda: self._flood_rose(before))
        self._mark(w)
        w.notes.append("the nodes drop the sybils' adverts (rate_limited/banned)")

    async def _flood_rose(self, before: int) -> bool:
        return await self._flood_drops() > before

    async def _watch_fork(self, w: _Watch, cheat: SimNode) -> None:
        async def everyone() -> bool:
            for n in self.working():
                v = await self.get(n, "/v1/wallet/balances")
                if v is None or cheat.key not in v["forked"]:
                    return False
            return True

        await self._until(everyone, 0.2)
        self._mark(w)
        w.notes.append("every node lists the account as forked (refused)")

    async def _watch_liar(self, w: _Watch) -> None:
        """Detected when every load client scores the liar below every honest provider."""
        liar = self.node_named(w.record.target)
        honest = [p for p in self.working("provider", alive=False)
                  if p.group.behaviour == "honest"]

        async def below() -> bool:
            for c in self.load_clients():
                hosts = await self.get(c, "/v1/hosts")
                if hosts is None:
                    return False
                score = {h["peer_id"]: h for h in hosts["hosts"]}
                mine = score.get(liar.peer_id)
                others = [score[p.peer_id]["reputation"] for p in honest if p.peer_id in score]
                if mine is None or mine["jobs"] == 0 or not others \
                        or mine["reputation"] >= min(others):
                    return False
            return True

        await self._until(below, SAMPLE_S / 2)
        self._mark(w)
        w.notes.append("every client scores it below every honest provider")

    async def _sample_reputation(self) -> None:
        """Each client's score of each working provider, every few seconds."""
        peers = self.by_peer()
        while True:
            for c in self.load_clients():
                hosts = await self.get(c, "/v1/hosts")
                for h in (hosts or {}).get("hosts", []):
                    p = peers.get(h["peer_id"])
                    if p is None or not p.working:
                        continue
                    self.reputation.append((round(self.now(), 3), c.name, p.name,
                                            float(h["reputation"]),
                                            p.group.behaviour == "liar"))
            await trio.sleep(SAMPLE_S)

    # -- 3. settle and collect ---------------------------------------------------------------
    async def _settle(self) -> None:
        """Wait (bounded) until every live node's ledger has nothing outstanding or pending
        and all agree on every balance."""
        async def agreed() -> bool:
            views = [await self.get(n, "/v1/wallet/balances") for n in self.working()]
            views = [v for v in views if v is not None]
            # entries held after a fork stay pending: not waited for
            return bool(views) and all(
                v["outstanding"] == 0 and v["pending"] <= len(v["forked"])
                and v["balances"] == views[0]["balances"] for v in views)

        try:
            await self.wait_for("the ledgers to settle", agreed, SETTLE_S)
            self.counters["ledgers_agree"] = 1
        except SimClusterError as exc:
            self.say(str(exc))
            self.counters["ledgers_agree"] = 0

    async def _collect(self) -> None:
        nodes: dict[str, dict] = {}
        for n in self.nodes:
            entry: dict = {"peer_id": n.peer_id, "key": n.key, "group": n.spec.group,
                           "role": n.spec.role, "behaviour": n.group.behaviour,
                           "alive": n.alive, "addr": n.node.addr}
            entry["cpu_s"] = _cpu_s(n.node.proc)
            entry["status"] = await self.get(n, "/v1/status")
            entry["faults"] = await self.get(n, "/v1/sim/faults")
            if n.working:
                entry["wallet"] = await self.get(n, "/v1/wallet/balances")
            if n.working and n.spec.role == "client":
                entry["hosts"] = await self.get(n, "/v1/hosts")
                history = await self.get(n, "/v1/wallet/history")
                entry["receipts"] = [e for e in (history or {}).get("entries", [])
                                     if e["kind"] == "Receipt"]
                running = await self.get(n, "/v1/jobs", state="running", limit=1000)
                entry["jobs_running"] = len((running or {}).get("jobs", []))
            nodes[n.name] = entry
        self.collected = {"nodes": nodes}
        self._figures(nodes)
        await self._replay(nodes)

    async def _replay(self, nodes: dict[str, dict]) -> None:
        """The cluster's messages replayed into the simulator's decision and ledger code
        (``sim.replay``): every client's placement decisions decided again, and every
        working node's ledger entries applied in the order they reached it, against the
        balances it reports now (read before and after, so a late entry cannot slip in
        between: up to 3 tries)."""
        from meca_node.sim.replay import TRACE_FILE, replay_decisions, replay_ledger

        c = self.counters
        genesis = wire.genesis_from_json(self.cluster.genesis_path.read_bytes())
        c["replay_decisions"] = c["replay_decisions_equal"] = 0
        c["replay_ledgers"] = c["replay_ledgers_equal"] = 0
        differences = []
        for n in self.nodes:
            trace = n.node.data_dir / TRACE_FILE
            if trace.exists():
                r = await trio.to_thread.run_sync(replay_decisions, trace)
                c["replay_decisions"] += r.decisions
                c["replay_decisions_equal"] += r.equal
                differences += [{"node": n.name, "line": line, "node_chose": a,
                                 "simulator_chose": b} for line, a, b in r.differences]
            if not (n.working and n.alive and nodes[n.name].get("wallet")):
                continue
            for _ in range(3):
                before = await self.get(n, "/v1/wallet/balances")
                replayed = await trio.to_thread.run_sync(replay_ledger, n.node.data_dir,
                                                         genesis)
                after = await self.get(n, "/v1/wallet/balances")
                if before and after and before["balances"] == after["balances"]:
                    break
            else:
                continue
            c["replay_ledgers"] += 1
            if replayed == after["balances"]:
                c["replay_ledgers_equal"] += 1
            else:
                differences.append({"node": n.name, "ledger": {
                    k: (after["balances"].get(k), replayed.get(k))
                    for k in set(replayed) | set(after["balances"])
                    if after["balances"].get(k) != replayed.get(k)}})
        self.meta["replay_differences"] = differences[:20]
        self.say(f"replay into the simulator: {c['replay_decisions_equal']} of "
                 f"{c['replay_decisions']} placement decisions equal, "
                 f"{c['replay_ledgers_equal']} of {c['replay_ledgers']} ledgers' balances "
                 "equal")

    def _figures(self, nodes: dict[str, dict]) -> None:
        c = self.counters
        views = [e["wallet"] for e in nodes.values() if e.get("wallet")]
        c["views"] = len(views)
        supply = sum(g.balance * g.count for g in self.scenario.nodes)
        c["views_conserved"] = sum(
            1 for v in views
            if sum(v["balances"].values()) + v["outstanding"] == v["total_supply"] == supply)
        if views:
            self.balances_after = self.named_balances(views[0])
        twice = 0
        for e in nodes.values():
            seen = Counter((r["job_id"], r["provider"]) for r in e.get("receipts") or [])
            twice += sum(k - 1 for k in seen.values() if k > 1)
        c["paid_twice"] = twice
        c["jobs_running_at_clients"] = sum(e.get("jobs_running") or 0 for e in nodes.values())
        c["lost_jobs"] = sum(1 for j in self.jobs if j.finished_s is None)
        if "flood_drops_before" in c:  # what the nodes dropped for rate since the flood
            c["flood_dropped"] = sum(
                d.get("rate_limited", 0) + d.get("banned", 0)
                for e in nodes.values() if e.get("wallet")  # the working nodes
                for d in [((e.get("status") or {}).get("gossip") or {}).get("dropped", {})]
            ) - c["flood_drops_before"]
        c["flood_sent"] = sum(((e.get("status") or {}).get("flood") or {}).get("sent", 0)
                              for e in nodes.values())
        c["switch_gossip_dropped"] = sum(
            ((e.get("faults") or {}).get("stats") or {}).get("gossip_dropped", 0)
            for e in nodes.values())
        liars = [n for n in self.working("provider", alive=False) if n.group.behaviour == "liar"]
        honest = [n for n in self.working("provider", alive=False)
                  if n.group.behaviour == "honest"]
        below = 0
        clients = [n for n in self.load_clients() if nodes[n.name].get("hosts")]
        for cl in clients:
            score = {h["peer_id"]: h["reputation"] for h in nodes[cl.name]["hosts"]["hosts"]}
            lie = [score[p.peer_id] for p in liars if p.peer_id in score]
            good = [score[p.peer_id] for p in honest if p.peer_id in score]
            if lie and good and max(lie) < min(good):
                below += 1
            for p in liars + honest:  # the final sample
                if p.peer_id in score:
                    self.reputation.append((round(self.now(), 3), cl.name, p.name,
                                            float(score[p.peer_id]),
                                            p.group.behaviour == "liar"))
        c["clients"] = len(clients)
        c["liar_below_honest_clients"] = below
        self._jobs_cross()

    def _jobs_cross(self) -> None:
        """A heal is healed when a job crosses the former sides again; a restart when the
        restarted node is paid for a job again."""
        sides = self._heal_sides
        for w in self.watches:
            r = w.record
            if r.kind == "heal" and sides:
                cross = [j.finished_s for j in self.jobs
                         if j.outcome == "ok" and j.submitted_s >= r.at_s
                         and j.finished_s is not None
                         and any(sides.get(p) != sides.get(j.client)
                                 for p in j.provider.split(",") if p)]
                if cross:
                    r.healed_s = min(cross)
                    w.notes.append(f"{len(cross)} jobs crossed the former sides after it")
                else:
                    w.notes.append("no job crossed the former sides after it")
            elif r.kind in ("restart", "kill"):
                after = [j.finished_s for j in self.jobs
                         if j.outcome == "ok" and j.finished_s is not None
                         and j.submitted_s >= r.at_s and r.target in j.provider.split(",")]
                elsewhere = [j.finished_s for j in self.jobs
                             if j.outcome == "ok" and j.finished_s is not None
                             and j.finished_s >= r.at_s
                             and r.target not in j.provider.split(",")]
                if r.kind == "restart" and after:
                    r.healed_s = min(after)
                    w.notes.append(f"paid again for {len(after)} jobs")
                if r.kind == "kill" and elsewhere:
                    w.notes.append(f"first job done elsewhere {min(elsewhere) - r.at_s:.1f} s "
                                   "after the kill")

    # -- the record ----------------------------------------------------------------------
    def record(self) -> RunRecord:
        for w in self.watches:
            w.record.detail = "; ".join(w.notes)
        self.counters["lost_jobs"] = sum(1 for j in self.jobs if j.finished_s is None)
        usage = resource.getrusage(resource.RUSAGE_SELF)
        meta = {
            "tool": "cluster", "scenario": self.scenario.name, "seed": self.scenario.seed,
            "nodes": len(self.nodes), "jobs": len(self.jobs),
            "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),  # this process's
            "driver_cpu_s": round(usage.ru_utime + usage.ru_stime, 1),
            "duration_s": self.scenario.duration_s, "time_limit_s": self.time_limit_s,
            "work_dir": str(self.work_dir),
            "complete": not (self.timed_out or self.interrupted),
            "interrupted": self.interrupted, "timed_out": self.timed_out,
            "failure_examples": self.failure_examples,
            "load_started_unix": round(self.t0_wall, 3),
            "node_names": {n.name: n.peer_id for n in self.nodes},
            "pids": list(self.pids),
            "modelled": [
                "every node a real meca-node process on its own 127.0.0.x address",
                "real Docker jobs, real libp2p gossip and streams, real ledgers",
                "kill (SIGKILL) and restart by pid",
                "partitions, delays and drops in each node's own transport (fault switch)",
                "a liar provider, a double-spending client and sybil flooders as processes",
            ],
            "not_modelled": [
                "[network] latency, jitter and loss (loopback)",
                "delay: relayed gossip is not delayed (own publishes and stream writes are)",
                "drop: stream traffic is not dropped (incoming gossip is)",
            ],
            **self.meta,
        }
        return RunRecord(meta=meta, jobs=sorted(self.jobs, key=lambda j: j.submitted_s),
                         faults=[w.record for w in self.watches],
                         balances_before=dict(self.balances_before),
                         balances_after=dict(self.balances_after),
                         reputation=list(self.reputation),
                         counters={k: float(v) if isinstance(v, float) else int(v)
                                   for k, v in self.counters.items()})


def _cpu_s(proc: subprocess.Popen | None) -> float | None:
    """CPU seconds (user + system) a running process has used."""
    import psutil

    if proc is None or proc.poll() is not None:
        return None
    try:
        t = psutil.Process(proc.pid).cpu_times()
    except psutil.Error:
        return None
    return round(t.user + t.system, 1)


def _fits(task: Task, group: NodeGroup) -> bool:
    return task.cpu <= group.cpu and task.mem_mib <= group.mem_mib and task.gpus <= group.gpus


def _run_job(control: ControlClient, body: dict) -> dict:
    """One job through a node's control API (blocking); its ``done`` line, or
    RuntimeError with its error."""
    with control.stream("POST", "/v1/jobs/run", body) as response:
        for line in response.iter_lines():
            doc = json.loads(line) if line.strip() else {}
            if "error" in doc:
                raise RuntimeError(doc["error"])
            if "done" in doc:
                return doc["done"]
    raise RuntimeError("the node ended the answer without a result")


def _wait_quietly(proc: subprocess.Popen, timeout_s: float) -> None:
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


def run_cluster(scenario: Scenario, out_dir: Path, api: ApiFactory, *,
                time_limit_s: float | None = None, work_dir: Path | None = None,
                keep_work: bool = False, scenario_path: Path | None = None,
                say: Callable[[str], None] = _say) -> tuple[RunRecord, dict]:
    """Run ``scenario`` as a cluster (blocking), its jobs through ``api(data_dir)``; (the
    record, the raw per-node figures, also written to ``out_dir/cluster.json``, with each
    node's log under ``out_dir/logs``). The nodes' data dirs (keys, ledgers, block stores
    holding the task images) go in ``work_dir``: by default a temporary folder, removed
    after the run unless ``keep_work``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    temporary = work_dir is None
    work = Path(tempfile.mkdtemp(prefix="meca-sim-")) if work_dir is None else Path(work_dir)
    work.mkdir(parents=True, exist_ok=True)
    run = ClusterRun(scenario, work, api, time_limit_s=time_limit_s,
                     scenario_path=scenario_path, say=say)
    try:
        record = trio.run(run.run)
    finally:
        logs = out_dir / "logs"
        logs.mkdir(exist_ok=True)
        for f in [*work.glob("nodes/node*.log"), *work.glob("double_spender-*")]:
            shutil.copy2(f, logs / f.name)
        if temporary and not keep_work:
            shutil.rmtree(work, ignore_errors=True)
        elif temporary:
            say(f"node data dirs kept in {work}")
    raw = {**run.collected, "meta": record.meta}
    (out_dir / "cluster.json").write_text(json.dumps(raw, indent=1))
    return record, raw


__all__ = ["ClusterRun", "SimClusterError", "find_folder", "run_cluster"]
