"""Replaying a real cluster's messages into the simulator's decision and ledger code.

The check of issue "Multi-node simulations": on a shared scenario, the simulator's placement
decisions and final balances must equal the real cluster's when the cluster's message order
is replayed into it. Two traces come out of a ``meca-node sim cluster`` run:

* **Placements.** A client node started with ``sim_trace = true`` appends one JSON line per
  placement decision to ``sim-trace.jsonl`` in its data dir (:class:`DecisionTrace`, called
  by ``JobClient._placed``): the task offer and max price, the ranking weights, the
  providers to skip, and every candidate as the node held it at that moment: its signed
  advert's body in the wire encoding (canonical CBOR), the advert's age, whether it was
  connected, its measured round trip, the client's reputation of it and its jobs there.
  :func:`replay_decisions` decodes each line with ``wire.decode_body`` and decides again
  with ``core.matching.rank`` and ``core.matching.choose``: the functions the simulator's
  model of a client places jobs with (``des.Simulator._match`` and ``_place``).
* **Balances.** Every node's ledger database keeps each account entry in the order it
  arrived (gossip, jobs, fetches). :func:`replay_ledger` applies one node's entries in
  that order to a fresh ``core.ledger.Chains`` from the genesis, as the simulator's ledger
  does (``des_ledger``), and the balances must equal what that node reported while it
  ran (incrementally, with entries held back, fetched and forks found on the way).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from meca_node import wire
from meca_node.core.ledger import Chains
from meca_node.core.matching import Candidate, Need, Weights, choose, rank
from meca_node.core.replicas import distinct_hosts
from meca_node.node.ledger import replay as replay_rows
from meca_node.store.ledger_db import LedgerDB

TRACE_FILE = "sim-trace.jsonl"
#: most decisions one node traces (a line is a few KiB with 8 providers)
MAX_LINES = 20_000


class DecisionTrace:
    """Appends each placement decision of a client node to ``<data_dir>/sim-trace.jsonl``
    (line-buffered: a killed node loses at most the line being written)."""

    def __init__(self, data_dir: Path, max_lines: int = MAX_LINES) -> None:
        self.path = data_dir / TRACE_FILE
        self.max_lines = max_lines
        self.lines = 0
        self._file = None

    def __call__(self, node, candidates: list[Candidate], need: Need, weights: Weights,
                 skip: list[str], chosen: str | list[str] | None, replicas: int = 1,
                 hosts: dict[str, list[str]] | None = None) -> None:
        """One decision: ``chosen`` is the provider of a plain job (None: it waits), or
        the providers of a replicated job's ``replicas`` first slots, picked on distinct
        ``hosts`` (peer id -> IP addresses)."""
        if self.lines >= self.max_lines:
            return
        if self._file is None:
            self._file = self.path.open("a", buffering=1)
        self.lines += 1
        self._file.write(json.dumps({
            "salt": node.identity.public_key.hex(),
            "offer": wire.encode_body(need.offer).hex(), "max_price": need.max_price,
            "max_age_ms": need.max_age_ms,
            "weights": {k: getattr(weights, k) for k in Weights.__dataclass_fields__},
            "skip": skip, "chosen": chosen, "replicas": replicas, "hosts": hosts or {},
            "candidates": [{
                "peer_id": c.peer_id, "advert": wire.encode_body(c.advert).hex(),
                "age_ms": c.age_ms, "connected": c.connected, "latency_ms": c.latency_ms,
                "reputation": c.reputation, "refused": c.refused, "pending": c.pending}
                for c in candidates]}) + "\n")

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


@dataclass
class DecisionReplay:
    decisions: int = 0
    equal: int = 0
    #: the first differences: (line, the node's choice, the replay's)
    differences: list[tuple[int, str | None, str | None]] = field(default_factory=list)


def decide(line: dict[str, Any]) -> str | list[str] | None:
    """What the simulator's client model picks from one traced decision: the provider of
    a plain job, or the first slots' providers of a replicated one."""
    need = Need(wire.decode_body(wire.TaskOffer, bytes.fromhex(line["offer"])),
                line["max_price"], line["max_age_ms"])
    candidates = [Candidate(c["peer_id"],
                            wire.decode_body(wire.HostAdvert, bytes.fromhex(c["advert"])),
                            c["age_ms"], c["connected"], latency_ms=c["latency_ms"],
                            reputation=c["reputation"], refused=c["refused"],
                            pending=c["pending"])
                  for c in line["candidates"]]
    queue = {c.peer_id: c.advert.queue for c in candidates}
    ranked, unfits = rank(candidates, need, Weights(**line["weights"]),
                          salt=bytes.fromhex(line["salt"]))
    k = line.get("replicas", 1)
    if k > 1:  # one ranking; each slot takes the next candidate on another machine
        hosts = {peer: frozenset(ips) for peer, ips in line["hosts"].items()}
        return distinct_hosts([r.peer_id for r in ranked],
                              lambda peer: hosts.get(peer, frozenset()))[:k]
    chosen, _ = choose(ranked, unfits, set(line["skip"]),
                       lambda peer: queue.get(peer, 1 << 30))
    return chosen


def replay_decisions(path: Path) -> DecisionReplay:
    """Decide every traced decision again; how many equal the node's."""
    out = DecisionReplay()
    with path.open() as f:
        for number, text in enumerate(f, 1):
            if not text.endswith("\n"):
                break  # the line a killed node was writing
            line = json.loads(text)
            out.decisions += 1
            again = decide(line)
            if again == line["chosen"]:
                out.equal += 1
            elif len(out.differences) < 20:
                out.differences.append((number, line["chosen"], again))
    return out


def replay_ledger(data_dir: Path, genesis: wire.Genesis) -> dict[str, int]:
    """Balances (hex key -> amount) from one node's stored entries, applied in the order
    they reached it to fresh chains from ``genesis``."""
    chains = Chains(genesis)
    with LedgerDB(data_dir) as db:
        replay_rows(chains, db.rows())
    return {key.hex(): amount for key, amount in chains.balances().items()}
