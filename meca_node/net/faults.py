"""A fault switch in a node's own transport, for simulations only.

``meca-node sim cluster`` partitions nodes, delays their writes and drops a share of their
incoming gossip through this switch (the kernel here has no netem). The switch is pure state:
:class:`~meca_node.net.host.Libp2pNet` consults it at its few hook points (gossip validator
and publish, stream handler, stream open and writes, dial loop, ping) and acts on it.

A node started without ``sim_faults = true`` has a disabled switch: it cannot be set
(:class:`FaultsDisabled`), and every hook tests one empty set or ``None`` and moves on.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field

#: most peers one node may block (a partition names every node of the other groups)
MAX_BLOCKED = 1024
#: longest delay of a write, in ms (a simulation's "slow link", not a dead one)
MAX_DELAY_MS = 30_000.0
_PEER_ID = re.compile(r"[1-9A-HJ-NP-Za-km-z]{20,128}")  # base58btc, as peer ids print


class FaultsDisabled(Exception):
    """The node was not started with ``sim_faults = true``; its switch cannot be set."""


class FaultSpecError(ValueError):
    """A fault setting is malformed; the message names the field and what it takes."""


@dataclass(frozen=True, slots=True)
class FaultSpec:
    """What the switch does: ``block`` these peer ids (both ways: no connection, stream or
    gossip with them, no redial until unblocked), delay each outgoing gossip publish and
    stream write by ``delay_ms``, drop a ``drop`` share of incoming gossip, chosen by a
    random source seeded with ``seed``."""

    block: frozenset[str] = frozenset()
    delay_ms: float = 0.0
    drop: float = 0.0
    seed: int = 0

    @property
    def active(self) -> bool:
        return bool(self.block) or self.delay_ms > 0 or self.drop > 0

    def to_json(self) -> dict:
        return {"block": sorted(self.block), "delay_ms": self.delay_ms, "drop": self.drop,
                "seed": self.seed}


def parse_spec(doc: Mapping, current: FaultSpec = FaultSpec()) -> FaultSpec:
    """``doc`` (the control route's JSON) over ``current``: a field left out keeps its value;
    ``{"block": []}`` heals. :class:`FaultSpecError` naming the bad field."""
    if not isinstance(doc, Mapping):
        raise FaultSpecError("expected a JSON object with block, delay_ms, drop and/or seed")
    unknown = set(doc) - {"block", "delay_ms", "drop", "seed"}
    if unknown:
        raise FaultSpecError(f"unknown field(s) {sorted(unknown)}; use block (a list of peer "
                             "ids), delay_ms (0..30000), drop (a share 0..1), seed (an integer)")
    block = current.block
    if "block" in doc:
        raw = doc["block"]
        if not isinstance(raw, (list, tuple)) or not all(isinstance(p, str) for p in raw):
            raise FaultSpecError("block must be a list of peer ids (strings)")
        if len(raw) > MAX_BLOCKED:
            raise FaultSpecError(f"block names {len(raw)} peers; at most {MAX_BLOCKED}")
        bad = [p for p in raw if not _PEER_ID.fullmatch(p)]
        if bad:
            raise FaultSpecError(f"block: {bad[0]!r} is not a peer id (base58, as "
                                 "`meca-node id` prints it)")
        block = frozenset(raw)
    delay_ms = _number(doc, "delay_ms", current.delay_ms, 0.0, MAX_DELAY_MS)
    drop = _number(doc, "drop", current.drop, 0.0, 1.0)
    seed = current.seed
    if "seed" in doc:
        if isinstance(doc["seed"], bool) or not isinstance(doc["seed"], int):
            raise FaultSpecError("seed must be an integer")
        seed = doc["seed"]
    return FaultSpec(block, delay_ms, drop, seed)


def _number(doc: Mapping, key: str, default: float, lo: float, hi: float) -> float:
    if key not in doc:
        return default
    value = doc[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not lo <= value <= hi:
        raise FaultSpecError(f"{key} must be a number from {lo:g} to {hi:g}; got {value!r}")
    return float(value)


@dataclass
class FaultSwitch:
    """The switch of one node. ``enabled`` is fixed at start (config ``sim_faults``)."""

    enabled: bool = False
    spec: FaultSpec = FaultSpec()
    #: what the hooks did: gossip_dropped, gossip_refused, streams_refused, opens_refused,
    #: dials_skipped, disconnected, writes_delayed
    stats: Counter = field(default_factory=Counter)
    #: the hooks' one cheap test: ``delay_s`` (0 when none) and a drop share
    delay_s: float = 0.0
    drop: float = 0.0
    _rng: random.Random = field(default_factory=lambda: random.Random(FaultSpec().seed))
    _changes: int = 0

    def parse(self, doc: Mapping) -> FaultSpec:
        """``doc`` over the current setting (see :func:`parse_spec`), not applied yet.
        :class:`FaultsDisabled` on a node without ``sim_faults``."""
        if not self.enabled:
            raise FaultsDisabled("fault injection is off on this node: it is for simulations "
                                 "only (start the node with sim_faults = true in its "
                                 "config.toml, as `meca-node sim cluster` does)")
        return parse_spec(doc, self.spec)

    def set(self, doc: Mapping) -> tuple[frozenset[str], frozenset[str]]:
        """Parse and apply ``doc``: (peers newly blocked, peers unblocked). A
        :class:`FaultSpecError` leaves the switch as it was."""
        return self.apply(self.parse(doc))

    def apply(self, new: FaultSpec) -> tuple[frozenset[str], frozenset[str]]:
        """Install a parsed spec; (peers newly blocked, peers unblocked)."""
        if not self.enabled:
            raise FaultsDisabled("fault injection is off on this node")
        old = self.spec
        if new.seed != old.seed:
            self._rng = random.Random(new.seed)
        self.spec = new
        self.delay_s = new.delay_ms / 1000.0
        self.drop = new.drop
        self._changes += 1
        return new.block - old.block, old.block - new.block

    # -- the hooks' questions ------------------------------------------------------------
    def blocks(self, peer_id: str) -> bool:
        return peer_id in self.spec.block

    def drop_incoming(self) -> bool:
        """Whether to drop the incoming gossip message at hand (a seeded draw; counted)."""
        if self.drop <= 0.0:
            return False
        if self._rng.random() < self.drop:
            self.stats["gossip_dropped"] += 1
            return True
        return False

    def view(self) -> dict:
        return {"enabled": self.enabled, "active": self.spec.active, **self.spec.to_json(),
                "changes": self._changes,
                "stats": dict(sorted(self.stats.items()))}
