"""Scenario files: one TOML format for the cluster runner and the simulator.

A scenario names node groups (role, count, hardware, price, behaviour), the tasks
published, one job load and a schedule of faults. ``load_scenario`` reads a file,
``parse_scenario`` a text; both check every key and refuse what they do not know, with
an error that names the file and the key (``small.toml: faults[2].at_s: must be >= 0``).
The model is frozen plain data; ``to_json`` gives a dict that ``scenario_from_json``
(and ``parse_scenario`` of the same data written as TOML) turns back into an equal one.

See ``simulations/scenarios/small.toml`` for a commented example and
``simulations/README.md`` for the whole format.
"""

from __future__ import annotations

import math
import re
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath
from typing import Any, NamedTuple

MAX_NODES = 100_000
MAX_JOBS = 1_000_000
MAX_FAULTS = 1_000
MAX_GROUPS = 1_000
MAX_TASKS = 1_000
MAX_DURATION_S = 24 * 3600.0
MAX_RATE_PER_S = 100_000.0
MAX_REPLICAS = 16
MAX_TEXT = 1 << 20  # a scenario file larger than 1 MiB is refused unread

ROLES = ("provider", "client", "developer")
BEHAVIOURS = ("honest", "liar", "double_spender", "sybil")
FAULT_KINDS = ("kill", "restart", "partition", "heal", "delay", "drop", "flood")
# which role each behaviour other than honest belongs to
_BEHAVIOUR_ROLE = {"liar": "provider", "double_spender": "client", "sybil": "provider"}
# keys each fault kind takes besides at_s and kind
_FAULT_KEYS: dict[str, tuple[str, ...]] = {
    "kill": ("target",),
    "restart": ("target",),
    "partition": ("groups",),
    "heal": (),
    "delay": ("duration_s", "delay_ms"),
    "drop": ("duration_s", "share"),
    "flood": ("target", "duration_s", "rate_per_s"),
}
_PROVIDER_KEYS = ("cpu", "mem_mib", "gpus", "price")
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$")
_TARGET = re.compile(r"^([A-Za-z0-9_][A-Za-z0-9_.-]{0,63})\[(\d{1,6})\]$")
DEFAULT_FAULT_DURATION_S = 10.0


class ScenarioError(ValueError):
    """A scenario file is wrong; the message names the file and the key, and says what to fix."""


# ------------------------------------------------------------------ model ----

@dataclass(frozen=True)
class Network:
    """What the simulator models of the network; the cluster ignores latency and jitter."""

    latency_ms: float = 5.0     # one-way base latency
    jitter_ms: float = 1.0
    loss: float = 0.0           # share of messages lost, 0..1
    gossip_degree: int = 6      # gossipsub mesh degree D


@dataclass(frozen=True)
class NodeGroup:
    group: str
    role: str                   # provider | client | developer
    count: int
    cpu: float = 2.0            # providers only: what they offer
    mem_mib: int = 2048
    gpus: int = 0
    price: int = 1              # providers only: price per job
    behaviour: str = "honest"   # honest | liar | double_spender | sybil
    balance: int = 1_000_000    # each node's balance in genesis

    @property
    def works(self) -> bool:
        """True for nodes that take part in the load (every node but a sybil)."""
        return self.behaviour != "sybil"


@dataclass(frozen=True)
class Task:
    name: str
    folder: str                 # published by the cluster (relative to the repo root)
    fee: int = 0                # developer fee per job
    cpu: float = 0.5            # resources one job takes
    mem_mib: int = 128
    gpus: int = 0
    run_ms: float = 50.0        # simulator: mean service time of one job


class Mix(Mapping[str, float]):
    """Task name -> weight, in file order; a read-only, hashable mapping."""

    __slots__ = ("_items",)

    def __init__(self, items: Mapping[str, float] | tuple[tuple[str, float], ...] = ()) -> None:
        pairs = tuple(items.items()) if isinstance(items, Mapping) else tuple(items)
        self._items = tuple((str(k), float(v)) for k, v in pairs)

    def __getitem__(self, key: str) -> float:
        for k, v in self._items:
            if k == key:
                return v
        raise KeyError(key)

    def __iter__(self) -> Iterator[str]:
        return (k for k, _ in self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __hash__(self) -> int:
        return hash(self._items)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Mix):
            return self._items == other._items
        return isinstance(other, Mapping) and dict(self._items) == dict(other)

    def __repr__(self) -> str:
        return f"Mix({dict(self._items)!r})"


@dataclass(frozen=True)
class Load:
    rate_per_s: float           # job arrivals per second (Poisson in the simulator)
    jobs: int                   # at most this many jobs (resolved: rate * duration if absent)
    mix: Mix                    # task name -> weight (resolved: every task 1.0 if absent)
    replicas: int = 1
    max_price: int = 10
    timeout_s: float = 30.0


@dataclass(frozen=True)
class Fault:
    """One timed fault. Only the fields of its kind are set; the rest keep their zero value.

    kill/restart: ``target`` is one node, ``"group[index]"``; partition: ``groups``, every
    node group in exactly one side; heal: ends the partition; delay: ``delay_ms`` added to
    every message for ``duration_s``; drop: ``share`` of messages dropped for ``duration_s``;
    flood: the sybil group ``target`` gossips junk adverts at ``rate_per_s`` for ``duration_s``.
    """

    at_s: float
    kind: str
    target: str = ""
    groups: tuple[tuple[str, ...], ...] = ()
    duration_s: float = 0.0
    delay_ms: float = 0.0
    share: float = 0.0
    rate_per_s: float = 0.0

    @property
    def end_s(self) -> float:
        return self.at_s + self.duration_s

    def target_node(self) -> tuple[str, int]:
        """(group, index) of a kill/restart target."""
        m = _TARGET.match(self.target)
        if m is None:
            raise ValueError(f"fault {self.kind} has no node target: {self.target!r}")
        return m.group(1), int(m.group(2))


class NodeSpec(NamedTuple):
    """One node of a scenario, as ``Scenario.node_list`` gives it."""

    index: int                  # 0.. in node_list order
    group: str
    role: str
    behaviour: str
    group_index: int            # 0..count-1 inside its group

    @property
    def name(self) -> str:
        """``group[group_index]``, the form fault targets use."""
        return f"{self.group}[{self.group_index}]"


@dataclass(frozen=True)
class Scenario:
    name: str
    duration_s: float
    nodes: tuple[NodeGroup, ...]
    tasks: tuple[Task, ...]
    load: Load
    faults: tuple[Fault, ...] = ()
    seed: int = 1
    network: Network = Network()
    source: str = field(default="<scenario>", compare=False)

    def node_list(self) -> list[NodeSpec]:
        """Every node, groups in file order, then by index inside the group."""
        out: list[NodeSpec] = []
        for g in self.nodes:
            for i in range(g.count):
                out.append(NodeSpec(len(out), g.group, g.role, g.behaviour, i))
        return out

    def node_count(self) -> int:
        return sum(g.count for g in self.nodes)

    def group(self, name: str) -> NodeGroup:
        for g in self.nodes:
            if g.group == name:
                return g
        raise KeyError(name)

    def task(self, name: str) -> Task:
        for t in self.tasks:
            if t.name == name:
                return t
        raise KeyError(name)

    def node_index(self, target: str) -> int:
        """Index in ``node_list`` of ``"group[i]"``."""
        m = _TARGET.match(target)
        if m is None:
            raise KeyError(target)
        start = 0
        for g in self.nodes:
            if g.group == m.group(1):
                i = int(m.group(2))
                if i >= g.count:
                    raise KeyError(target)
                return start + i
            start += g.count
        raise KeyError(target)

    def load_jobs(self) -> int:
        """How many jobs the load submits at most."""
        return self.load.jobs

    def with_nodes(self, n: int) -> Scenario:
        """The same scenario with the node groups scaled to about ``n`` nodes in all,
        in proportion, at least one per group (exactly ``n`` when ``n`` >= the number of
        groups). Raises ScenarioError when the result is invalid (a fault target beyond
        its shrunk group, fewer providers than replicas)."""
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_NODES:
            raise ScenarioError(f"{self.source}: with_nodes({n!r}): give 1..{MAX_NODES} nodes")
        counts = scale_counts([g.count for g in self.nodes], n)
        doc = self.to_json()
        for g, c in zip(doc["nodes"], counts):
            g["count"] = c
        return scenario_from_json(doc, f"{self.source} (scaled to {sum(counts)} nodes)")

    def to_json(self) -> dict[str, Any]:
        """Plain data (every default filled in); ``scenario_from_json`` gives it back."""
        return {
            "name": self.name,
            "seed": self.seed,
            "duration_s": self.duration_s,
            "network": {
                "latency_ms": self.network.latency_ms,
                "jitter_ms": self.network.jitter_ms,
                "loss": self.network.loss,
                "gossip_degree": self.network.gossip_degree,
            },
            "nodes": [_group_json(g) for g in self.nodes],
            "tasks": [
                {"name": t.name, "folder": t.folder, "fee": t.fee, "cpu": t.cpu,
                 "mem_mib": t.mem_mib, "gpus": t.gpus, "run_ms": t.run_ms}
                for t in self.tasks
            ],
            "load": {
                "rate_per_s": self.load.rate_per_s,
                "jobs": self.load.jobs,
                "mix": dict(self.load.mix),
                "replicas": self.load.replicas,
                "max_price": self.load.max_price,
                "timeout_s": self.load.timeout_s,
            },
            "faults": [_fault_json(f) for f in self.faults],
        }


def _group_json(g: NodeGroup) -> dict[str, Any]:
    out: dict[str, Any] = {"group": g.group, "role": g.role, "count": g.count}
    if g.role == "provider":
        out.update(cpu=g.cpu, mem_mib=g.mem_mib, gpus=g.gpus, price=g.price)
    out.update(behaviour=g.behaviour, balance=g.balance)
    return out


def _fault_json(f: Fault) -> dict[str, Any]:
    out: dict[str, Any] = {"at_s": f.at_s, "kind": f.kind}
    for key in _FAULT_KEYS[f.kind]:
        value = getattr(f, key)
        out[key] = [list(side) for side in value] if key == "groups" else value
    return out


def scale_counts(counts: list[int], n: int) -> list[int]:
    """Split ``n`` over groups in proportion to ``counts`` (largest remainder), >= 1 each."""
    total = sum(counts)
    if n <= len(counts):
        return [1] * len(counts)
    # every group gets 1, the rest is shared in proportion
    spare = n - len(counts)
    shares = [c * spare / total for c in counts]
    out = [1 + math.floor(s) for s in shares]
    left = n - sum(out)
    order = sorted(range(len(counts)), key=lambda i: (-(shares[i] - math.floor(shares[i])), i))
    for i in order[:left]:
        out[i] += 1
    return out


# ---------------------------------------------------------------- loading ----

def load_scenario(path: str | Path) -> Scenario:
    """Read and check a scenario file."""
    p = Path(path)
    try:
        size = p.stat().st_size
        if size > MAX_TEXT:
            raise ScenarioError(f"{p}: {size} bytes; a scenario file is at most {MAX_TEXT}")
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ScenarioError(f"{p}: no such scenario file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ScenarioError(f"{p}: cannot read it: {exc}") from None
    return parse_scenario(text, str(p))


def parse_scenario(text: str, source: str = "<scenario>") -> Scenario:
    """Parse and check a scenario given as TOML text; ``source`` names it in errors."""
    if len(text) > MAX_TEXT:
        raise ScenarioError(f"{source}: {len(text)} characters; a scenario is at most {MAX_TEXT}")
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(f"{source}: not valid TOML: {exc}") from None
    return scenario_from_json(doc, source)


def scenario_from_json(doc: Mapping[str, Any], source: str = "<scenario>") -> Scenario:
    """Check a scenario given as plain data (parsed TOML, or ``Scenario.to_json()``)."""
    return _Checker(source).scenario(doc)


class _Checker:
    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, key: str, msg: str) -> ScenarioError:
        return ScenarioError(f"{self.source}: {key}: {msg}" if key else f"{self.source}: {msg}")

    # -- plain values
    def table(self, value: Any, key: str, known: tuple[str, ...]) -> Mapping[str, Any]:
        if not isinstance(value, Mapping):
            raise self.fail(key, f"must be a table, not {_kind(value)}")
        for k in value:
            if k not in known:
                where = f"{key}.{k}" if key else str(k)
                raise self.fail(where, f"unknown key; known keys here: {', '.join(known)}")
        return value

    def get(self, t: Mapping, k: str, key: str, default: Any) -> tuple[str, Any, bool]:
        """(the full key, the value or the default, whether the file gave it)."""
        key = f"{key}.{k}" if key else k
        if k in t:
            return key, t[k], True
        if default is None:
            raise self.fail(key, "is required")
        return key, default, False

    def integer(self, t: Mapping, k: str, key: str, default: int | None = None, *,
                lo: int | None = None, hi: int | None = None) -> int:
        key, v, given = self.get(t, k, key, default)
        if not given:
            return v
        if isinstance(v, float) and v.is_integer():
            v = int(v)
        if isinstance(v, bool) or not isinstance(v, int):
            raise self.fail(key, f"must be a whole number, not {_kind(v)}")
        self.bounds(v, key, lo, hi)
        return v

    def number(self, t: Mapping, k: str, key: str, default: float | None = None, *,
               lo: float | None = None, hi: float | None = None, above: float | None = None,
               ) -> float:
        key, v, given = self.get(t, k, key, default)
        if not given:
            return float(v)
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise self.fail(key, f"must be a number, not {_kind(v)}")
        v = float(v)
        if not math.isfinite(v):
            raise self.fail(key, "must be a finite number")
        if above is not None and not v > above:
            raise self.fail(key, f"must be > {_num(above)}")
        self.bounds(v, key, lo, hi)
        return v

    def bounds(self, v: float, key: str, lo: float | None, hi: float | None) -> None:
        if lo is not None and v < lo:
            raise self.fail(key, f"must be >= {_num(lo)}")
        if hi is not None and v > hi:
            raise self.fail(key, f"must be <= {_num(hi)}")

    def string(self, t: Mapping, k: str, key: str, default: str | None = None, *,
               choices: tuple[str, ...] | None = None, name: bool = False) -> str:
        key, v, given = self.get(t, k, key, default)
        if not given:
            return v
        if not isinstance(v, str):
            raise self.fail(key, f"must be a string, not {_kind(v)}")
        if choices is not None and v not in choices:
            raise self.fail(key, f"{v!r} is not one of {', '.join(choices)}")
        if name and not _NAME.match(v):
            raise self.fail(key, f"{v!r}: use 1-64 letters, digits, '_', '-' or '.' "
                                 "(not starting with '-' or '.')")
        return v

    def array(self, t: Mapping, k: str, key: str, limit: int) -> list:
        v = t.get(k, [])
        if not isinstance(v, list):
            raise self.fail(k, f"must be an array of tables ([[{k}]]), not {_kind(v)}")
        if len(v) > limit:
            raise self.fail(k, f"{len(v)} entries; at most {limit}")
        return v

    # -- sections
    def scenario(self, doc: Mapping[str, Any]) -> Scenario:
        doc = self.table(doc, "", ("name", "seed", "duration_s", "network", "nodes", "tasks",
                                   "load", "faults"))
        name = self.string(doc, "name", "", name=True)
        seed = self.integer(doc, "seed", "", 1, lo=0, hi=2**63 - 1)
        duration = self.number(doc, "duration_s", "", above=0.0, hi=MAX_DURATION_S)
        network = self.network(doc.get("network", {}))
        nodes = self.nodes(self.array(doc, "nodes", "", MAX_GROUPS))
        tasks = self.tasks(self.array(doc, "tasks", "", MAX_TASKS), nodes)
        if "load" not in doc:
            raise self.fail("load", "is required: a [load] table with rate_per_s")
        load = self.load(doc["load"], duration, nodes, tasks)
        faults = self.faults(self.array(doc, "faults", "", MAX_FAULTS), duration, nodes)
        return Scenario(name=name, seed=seed, duration_s=duration, network=network,
                        nodes=nodes, tasks=tasks, load=load, faults=faults, source=self.source)

    def network(self, value: Any) -> Network:
        t = self.table(value, "network", ("latency_ms", "jitter_ms", "loss", "gossip_degree"))
        return Network(
            latency_ms=self.number(t, "latency_ms", "network", 5.0, lo=0.0, hi=60_000.0),
            jitter_ms=self.number(t, "jitter_ms", "network", 1.0, lo=0.0, hi=60_000.0),
            loss=self.number(t, "loss", "network", 0.0, lo=0.0, hi=1.0),
            gossip_degree=self.integer(t, "gossip_degree", "network", 6, lo=1, hi=64),
        )

    def nodes(self, items: list) -> tuple[NodeGroup, ...]:
        out: list[NodeGroup] = []
        seen: set[str] = set()
        total = 0
        for i, value in enumerate(items):
            key = f"nodes[{i}]"
            t = self.table(value, key, ("group", "role", "count", "cpu", "mem_mib", "gpus",
                                        "price", "behaviour", "balance"))
            group = self.string(t, "group", key, name=True)
            if group in seen:
                raise self.fail(f"{key}.group", f"{group!r} is used by another group already")
            seen.add(group)
            role = self.string(t, "role", key, choices=ROLES)
            count = self.integer(t, "count", key, lo=1, hi=MAX_NODES)
            total += count
            if total > MAX_NODES:
                raise self.fail(f"{key}.count", f"brings the scenario to {total} nodes; "
                                                f"at most {MAX_NODES}")
            if role != "provider":
                for k in _PROVIDER_KEYS:
                    if k in t:
                        raise self.fail(f"{key}.{k}", f"only providers take {k} "
                                                      f"(this group's role is {role})")
            behaviour = self.string(t, "behaviour", key, "honest", choices=BEHAVIOURS)
            need = _BEHAVIOUR_ROLE.get(behaviour)
            if need is not None and role != need:
                raise self.fail(f"{key}.behaviour", f"{behaviour} is for {need}s, "
                                                    f"this group's role is {role}")
            out.append(NodeGroup(
                group=group, role=role, count=count,
                cpu=self.number(t, "cpu", key, 2.0, above=0.0, hi=4096.0),
                mem_mib=self.integer(t, "mem_mib", key, 2048, lo=1, hi=1 << 30),
                gpus=self.integer(t, "gpus", key, 0, lo=0, hi=1024),
                price=self.integer(t, "price", key, 1, lo=0, hi=2**62),
                behaviour=behaviour,
                balance=self.integer(t, "balance", key, 1_000_000, lo=0, hi=2**62),
            ))
        roles = {g.role for g in out if g.works}
        for role in ("provider", "client"):
            if role not in roles:
                raise self.fail("nodes", f"needs at least one {role} group (sybils do not count)")
        return tuple(out)

    def tasks(self, items: list, nodes: tuple[NodeGroup, ...]) -> tuple[Task, ...]:
        if not items:
            raise self.fail("tasks", "needs at least one [[tasks]] entry")
        out: list[Task] = []
        providers = [g for g in nodes if g.role == "provider" and g.works]
        for i, value in enumerate(items):
            key = f"tasks[{i}]"
            t = self.table(value, key, ("name", "folder", "fee", "cpu", "mem_mib", "gpus",
                                        "run_ms"))
            name = self.string(t, "name", key, name=True)
            if any(o.name == name for o in out):
                raise self.fail(f"{key}.name", f"{name!r} is used by another task already")
            folder = self.string(t, "folder", key)
            fp = PurePosixPath(folder)
            if not folder or fp.is_absolute() or ".." in fp.parts or "\\" in folder:
                raise self.fail(f"{key}.folder", f"{folder!r}: give a folder relative to the "
                                                 "repository root, without '..'")
            task = Task(
                name=name, folder=folder,
                fee=self.integer(t, "fee", key, 0, lo=0, hi=2**62),
                cpu=self.number(t, "cpu", key, 0.5, above=0.0, hi=4096.0),
                mem_mib=self.integer(t, "mem_mib", key, 128, lo=1, hi=1 << 30),
                gpus=self.integer(t, "gpus", key, 0, lo=0, hi=1024),
                run_ms=self.number(t, "run_ms", key, 50.0, above=0.0, hi=MAX_DURATION_S * 1000),
            )
            if not any(_fits(task, g) for g in providers):
                raise self.fail(key, f"no provider group can run it (it needs cpu {task.cpu}, "
                                     f"mem_mib {task.mem_mib}, gpus {task.gpus})")
            out.append(task)
        return tuple(out)

    def load(self, value: Any, duration: float, nodes: tuple[NodeGroup, ...],
             tasks: tuple[Task, ...]) -> Load:
        t = self.table(value, "load", ("rate_per_s", "jobs", "mix", "replicas", "max_price",
                                       "timeout_s"))
        rate = self.number(t, "rate_per_s", "load", above=0.0, hi=MAX_RATE_PER_S)
        if "jobs" in t:
            jobs = self.integer(t, "jobs", "load", lo=1, hi=MAX_JOBS)
        else:
            jobs = max(1, round(rate * duration))
            if jobs > MAX_JOBS:
                raise self.fail("load.rate_per_s", f"rate_per_s * duration_s gives {jobs} jobs; "
                                                   f"at most {MAX_JOBS} (or set load.jobs)")
        names = [task.name for task in tasks]
        if "mix" in t:
            raw = self.table(t["mix"], "load.mix", tuple(names))
            if not raw:
                raise self.fail("load.mix", "is empty; leave it out to run every task equally")
            mix = Mix(tuple((k, self.number(raw, k, "load.mix", lo=0.0)) for k in raw))
            if sum(mix.values()) <= 0:
                raise self.fail("load.mix", "weights add up to 0; give one weight > 0")
        else:
            mix = Mix(tuple((n, 1.0) for n in names))
        replicas = self.integer(t, "replicas", "load", 1, lo=1, hi=MAX_REPLICAS)
        providers = sum(g.count for g in nodes if g.role == "provider" and g.works)
        if replicas > providers:
            raise self.fail("load.replicas", f"{replicas} replicas need as many providers; "
                                             f"the scenario has {providers}")
        return Load(
            rate_per_s=rate, jobs=jobs, mix=mix, replicas=replicas,
            max_price=self.integer(t, "max_price", "load", 10, lo=0, hi=2**62),
            timeout_s=self.number(t, "timeout_s", "load", 30.0, above=0.0, hi=MAX_DURATION_S),
        )

    def faults(self, items: list, duration: float,
               nodes: tuple[NodeGroup, ...]) -> tuple[Fault, ...]:
        out: list[Fault] = []
        groups = {g.group: g for g in nodes}
        killed: set[str] = set()
        partitioned = False
        for i, value in enumerate(items):
            key = f"faults[{i}]"
            if not isinstance(value, Mapping):
                raise self.fail(key, f"must be a table, not {_kind(value)}")
            kind = self.string(value, "kind", key, choices=FAULT_KINDS)
            t = self.table(value, key, ("at_s", "kind") + _FAULT_KEYS[kind])
            at = self.number(t, "at_s", key, lo=0.0, hi=duration)
            if out and at < out[-1].at_s:
                raise self.fail(f"{key}.at_s", f"{_num(at)} is before faults[{i - 1}] "
                                               f"({_num(out[-1].at_s)}); list faults in time order")
            f = Fault(at_s=at, kind=kind)
            if kind in ("kill", "restart"):
                target = self.string(t, "target", key)
                m = _TARGET.match(target)
                if m is None or m.group(1) not in groups:
                    raise self.fail(f"{key}.target", f"{target!r}: give one node as "
                                                     f"'group[index]' of a group in nodes")
                if int(m.group(2)) >= groups[m.group(1)].count:
                    raise self.fail(f"{key}.target", f"{target!r}: group {m.group(1)} has "
                                                     f"{groups[m.group(1)].count} nodes (0-based)")
                if kind == "kill" and target in killed:
                    raise self.fail(f"{key}.target", f"{target} is already killed")
                if kind == "restart" and target not in killed:
                    raise self.fail(f"{key}.target", f"{target} is not killed at that time")
                (killed.add if kind == "kill" else killed.discard)(target)
                f = replace(f, target=target)
            elif kind == "partition":
                if partitioned:
                    raise self.fail(key, "a partition is in force already; heal it first")
                f = replace(f, groups=self.sides(t, key, groups))
                partitioned = True
            elif kind == "heal":
                if not partitioned:
                    raise self.fail(key, "no partition to heal at that time")
                partitioned = False
            else:
                span = self.number(t, "duration_s", key, DEFAULT_FAULT_DURATION_S, above=0.0,
                                   hi=MAX_DURATION_S)
                f = replace(f, duration_s=span)
                if kind == "delay":
                    f = replace(f, delay_ms=self.number(t, "delay_ms", key, above=0.0,
                                                        hi=600_000.0))
                elif kind == "drop":
                    f = replace(f, share=self.number(t, "share", key, above=0.0, hi=1.0))
                else:
                    target = self.string(t, "target", key)
                    g = groups.get(target)
                    if g is None or g.behaviour != "sybil":
                        raise self.fail(f"{key}.target", f"{target!r}: give the name of a group "
                                                         "whose behaviour is sybil")
                    f = replace(f, target=target, rate_per_s=self.number(
                        t, "rate_per_s", key, above=0.0, hi=MAX_RATE_PER_S))
            out.append(f)
        return tuple(out)

    def sides(self, t: Mapping, key: str,
              groups: Mapping[str, NodeGroup]) -> tuple[tuple[str, ...], ...]:
        key = f"{key}.groups"
        if "groups" not in t:
            raise self.fail(key, "is required: lists of group names, one list per side")
        v = t["groups"]
        if not isinstance(v, list) or len(v) < 2:
            raise self.fail(key, "give at least two sides, each a list of group names")
        seen: set[str] = set()
        sides: list[tuple[str, ...]] = []
        for j, side in enumerate(v):
            if not isinstance(side, list) or not side:
                raise self.fail(f"{key}[{j}]", "must be a non-empty list of group names")
            for name in side:
                if not isinstance(name, str) or name not in groups:
                    raise self.fail(f"{key}[{j}]", f"{name!r} is not a group in nodes")
                if name in seen:
                    raise self.fail(f"{key}[{j}]", f"{name!r} is in two sides")
                seen.add(name)
            sides.append(tuple(side))
        missing = [g for g in groups if g not in seen]
        if missing:
            raise self.fail(key, f"every group must be on one side; missing: {', '.join(missing)}")
        return tuple(sides)


def _fits(task: Task, g: NodeGroup) -> bool:
    return task.cpu <= g.cpu and task.mem_mib <= g.mem_mib and task.gpus <= g.gpus


def _kind(v: Any) -> str:
    return {bool: "a boolean", int: "a whole number", float: "a number", str: "a string",
            list: "an array", dict: "a table"}.get(type(v), type(v).__name__)


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)
