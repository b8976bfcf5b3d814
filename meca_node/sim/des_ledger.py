"""The simulator's wire and ledger parts: real signed envelopes, real ``core.ledger.Chains``.

**Sealing and verifying** (:class:`Sealer`). Every envelope the simulator needs is made by
``wire.seal`` with the signer's Ed25519 key (nacl) and is verified exactly once by
``wire.open_envelope``: either right away in this process (``verify="inline"``), or in a
second process that receives every sealed envelope in batches and opens each one
(``verify="worker"``); then the simulation goes on with the ``Envelope`` the receiver would
have opened, built from what was sealed (``tests/unit/test_des.py`` checks the two modes
give the same run), and the run fails if the worker found any envelope that does not open.
What the simulator seals: job ResultCommits, Receipts, Receives, FraudProofs, task offers,
the junk adverts of a flood and the adverts of the providers sampled for the gossip gate.

**Ledger.** The simulator holds one real ``Chains``, the union of what the network holds:
an entry is added when its signer signs it (``append_own``: our own chain first), a payment
handed to a provider is added when the provider takes it, so balances come from chains
alone. A few sampled nodes are **ledger observers** (:class:`Observer`) with a ``Chains``
of their own, fed by the gossip model: entries arrive late, out of order, or not at all;
every ``SYNC_US`` an observer asks for what its held entries wait for and for chains seen
too far ahead (``ledger_sync``, ``NodeLedger._behind``), answered ``FETCH_US`` later. So
the report can show when each of them learnt of a fork, and that their balances agree
with the union once everything has arrived.
"""

from __future__ import annotations

import hashlib
import heapq
import multiprocessing
from collections import Counter
from typing import Any

from nacl.signing import SigningKey

from meca_node import wire
from meca_node.core.fraud import check_proof
from meca_node.core.ledger import MAX_PENDING_PER_ACCOUNT, Chains, Fork, Gap
from meca_node.wire import Envelope

MAX_OPEN = wire.Caps().stream_frame
BATCH = 512  # envelopes per message to the verifying process
FETCH_US = 200_000  # an observer's request for missing entries is answered this long after
SYNC_US = 5_000_000  # ledger_sync.TICK_S: how often an observer asks for what it lacks
_NAMES: dict[type, str] = {}  # a verdict's class -> its name in the observers' stats


def _no_digest(_cid: str) -> bytes | None:
    return None  # outputs travel inline in the simulator: no CID to look into


def _verify_worker(conn: Any, max_size: int) -> None:
    """Open every envelope sent (a batch is a list of bytes; None ends)."""
    opened = 0
    bad: list[str] = []
    while True:
        batch = conn.recv()
        if batch is None:
            break
        for raw in batch:
            try:
                wire.open_envelope(raw, max_size=max_size)
                opened += 1
            except wire.WireError as exc:
                bad.append(f"{hashlib.sha256(raw).hexdigest()[:16]}: {exc}")
    conn.send((opened, len(bad), bad[:20]))
    conn.close()


class Sealer:
    """``wire.seal`` for the simulated nodes; each envelope opened once (see the module)."""

    def __init__(self, network_id: bytes, verify: str = "inline") -> None:
        if verify not in ("inline", "worker"):
            raise ValueError(f"verify must be inline or worker, not {verify!r}")
        self.network_id = network_id
        self.verify = verify
        self.sealed = 0
        self.opened = 0
        self.failed: list[str] = []
        self._batch: list[bytes] = []
        self._type_ids: dict[type, str] = {}
        self._conn: Any = None
        self._proc: Any = None
        if verify == "worker":
            try:
                ctx = multiprocessing.get_context("fork")
                self._conn, child = ctx.Pipe()
                self._proc = ctx.Process(target=_verify_worker, args=(child, MAX_OPEN),
                                         daemon=True)
                self._proc.start()
                child.close()
            except (OSError, ValueError):  # no fork here: verify in this process
                self.verify = "inline"
                self._conn = self._proc = None

    def seal(self, body: Any, key: SigningKey, pub: bytes, ts_ms: int,
             nonce: bytes) -> Envelope:
        raw, sig = wire.seal_with_sig(body, key=key, net=self.network_id, ts=ts_ms, nonce=nonce)
        self.sealed += 1
        if self.verify == "inline":
            self.opened += 1
            return wire.open_envelope(raw, max_size=MAX_OPEN)
        self._batch.append(raw)
        if len(self._batch) >= BATCH:
            self._conn.send(self._batch)
            self._batch = []
        tid = self._type_ids.get(type(body))
        if tid is None:
            tid = self._type_ids[type(body)] = wire.type_id(type(body))
        return Envelope(v=wire.ENVELOPE_VERSION, net=self.network_id, type=tid, signer=pub,
                        ts=ts_ms, nonce=nonce, body=body, sig=sig, raw=raw)

    def finish(self) -> None:
        """Wait for the verifying process; ``failed`` lists envelopes that did not open."""
        if self._proc is None:
            return
        if self._batch:
            self._conn.send(self._batch)
            self._batch = []
        self._conn.send(None)
        opened, bad, examples = self._conn.recv()
        self._proc.join()
        self._conn.close()
        self._proc = self._conn = None
        self.opened += opened
        self.failed.extend(examples)
        if bad and not examples:
            self.failed.append(f"{bad} envelopes did not open")

    def close(self) -> None:
        """Stop the verifying process without waiting for its answer (on an error)."""
        if self._proc is not None:
            self._proc.kill()
            self._proc.join()
            self._proc = self._conn = None


class Observer:
    """A sampled node's own view of the ledger, fed by gossip."""

    def __init__(self, node: int, name: str, genesis: wire.Genesis) -> None:
        self.node = node
        self.name = name
        self.chains = Chains(genesis)
        self.network_id = genesis.network_id
        self.detected: dict[bytes, int] = {}  # account -> when this node learnt of its fork
        self.stats: Counter[str] = Counter()
        self._heap: list[tuple[int, int, int, Any]] = []
        #: accounts with an entry seen too far ahead to keep: account -> that seq (as
        #: NodeLedger._behind: fetched from the account's next seq on the next round)
        self._behind: dict[bytes, int] = {}

    def push(self, at: int, seq: int, kind: int, item: Any) -> None:
        """``kind`` 0: an entry envelope; 1: a FraudProof body."""
        heapq.heappush(self._heap, (at, seq, kind, item))

    def drain(self, until: int, union: Chains, seq_of) -> None:
        """Take everything that arrived by ``until``, in arrival order, then ask for what
        the held entries wait for (``ledger_sync``'s round): it arrives ``FETCH_US`` later."""
        heap = self._heap
        while heap and heap[0][0] <= until:
            at, _, kind, item = heapq.heappop(heap)
            if kind == 1:
                self._proof(at, item)
                continue
            verdict = self.chains.add(item)
            kind_of = type(verdict)
            name = _NAMES.get(kind_of)
            if name is None:
                name = _NAMES[kind_of] = kind_of.__name__.lower()
            self.stats[name] += 1
            if isinstance(verdict, Fork):
                self.detected.setdefault(verdict.account, at)
            elif isinstance(verdict, Gap) and not verdict.kept:
                key = item.signer
                self._behind[key] = max(item.body.seq, self._behind.get(key, 0))
        wants = [(w.account, w.from_seq, w.count) for w in self.chains.wants(limit=64)] \
            if self.chains.pending_count else []
        for key, seq in list(self._behind.items()):
            nxt = self.chains.head(key)[0]
            if nxt > seq or self.chains.fork(key) is not None:
                del self._behind[key]
            else:
                wants.append((key, nxt, min(seq - nxt + 1, MAX_PENDING_PER_ACCOUNT)))
        for key, start, count in wants:
            for env in union.entries_from(key, start, count):
                self.stats["fetched"] += 1
                heapq.heappush(heap, (until + FETCH_US, seq_of(), 0, env))

    def settle(self, union: Chains, seq_of) -> None:
        """Everything in flight arrives, and every gap that can be filled is."""
        until = max((at for at, *_ in self._heap), default=0)
        for _ in range(1000):  # bounded: each round fetches what the last one lacked
            before = self.stats["fetched"]
            self.drain(until, union, seq_of)
            if not self._heap and self.stats["fetched"] == before and not self._behind:
                break
            until += FETCH_US

    def _proof(self, at: int, proof: wire.FraudProof) -> None:
        try:
            fraud = check_proof(proof, self.network_id, _no_digest)
        except ValueError:
            self.stats["bad_proof"] += 1
            return
        if isinstance(fraud, Fork):
            self.chains.mark_forked(fraud)
            self.detected.setdefault(fraud.account, at)
            self.stats["proof_accepted"] += 1
