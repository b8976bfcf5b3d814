"""The node's ledger: the core account chains fed from gossip and our own entries, kept on
disk through the :class:`~meca_node.node.ports.LedgerStore` port.

**Intake** (``on_gossip``, one task: the ``meca/receipts/1`` consumer). Every entry envelope
(Receipt, Transfer, Receive) goes through :meth:`Chains.add`; what the chains keep (applied,
pending, or the two entries of a fork) is stored, and committed, *before* anything else
depends on it. A ``Fork`` found here marks the account refused and we gossip its
``FraudProof`` once; a ``FraudProof`` received is checked on its own (``core.fraud``; bad
ones are counted and dropped): a fork refuses the account too, a ``bad_output`` proof marks
the provider a proven cheat (``is_cheat``; clients stop choosing it). Proofs are stored, so
both survive a restart.

**Our own account** (``append_own``). Entries are sealed one at a time under a lock, at our
chain's head, after checks that make the core accept them (no overdraft, a Receive claims
a payment we have not received): a refused own entry would hold our seq and the next one
there would be a fork of ourselves. Order: seal, apply, store (durable), gossip (in the
background, ``announcer``); a crash before the store loses an entry nobody saw, so no fork
either, and one after it is gossiped again after the restart (``ledger_sync``). Entries
that cannot be applied yet set ``missing``: ``ledger_sync`` fetches what they wait for.

**Auto-receive.** One task waits on an event that intake sets when an applied entry pays
us, then signs one Receive per payment still unclaimed (``Chains.unclaimed``) until none is
left, each once it has been applied here for ``RECEIVE_AFTER_S`` and never one from a
forked payer (so a double spend that surfaces within seconds never enters our chain). It
works from the chains' own state, so it is idempotent (a claimed payment is no
longer unclaimed, also after a restart: the Receive is stored before it is gossiped) and
bounded (one task, no queue; the set of unclaimed payments is bounded by the chains). The
Receives of all payments due at one time (up to ``RECEIVE_BATCH``) are signed together and
stored in one durable commit; the task wakes ``RECEIVE_LINGER_S`` after the next payment is
due, so a busy provider makes about one such commit a second, not one per payment.
"""

from __future__ import annotations

import dataclasses
import logging
from collections import Counter, OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from meca_node import wire
from meca_node.core.fraud import BadOutput, NotProvable, check_proof
from meca_node.core.identity import peer_id_of
from meca_node.core.ledger import (
    MAX_ENTRY, MAX_PENDING_PER_ACCOUNT, Accepted, Chains, Duplicate, Fork, Gap, Invalid, Want,
    cost, entry_hash, payouts,
)
from meca_node.ipfs.cid import RAW, CID, CidError
from meca_node.node.ports import LedgerStore
from meca_node.node.quicklock import QuickLock

log = logging.getLogger("meca_node.ledger")

MAX_CHEATS = 4096  # proven cheats remembered (the oldest forgotten first)
MAX_SEEN = 8192  # entry hashes remembered as seen on gossip
REGOSSIP_AFTER_S = 2.0  # a payment taken in a job is gossiped by us if not seen by then
RECEIVE_AFTER_S = 5.0  # a payment is received into our chain this long after it applied
RECEIVE_LINGER_S = 0.5  # auto-receive waits this much past a due time: more come due with it
RECEIVE_BATCH = 64  # Receives signed together and stored in one durable commit
OUTBOX = 1024  # entries waiting to be gossiped; over it they are dropped (peers fetch them)
BATCH_BYTES = 48 * 1024  # entries in one Entries message: room for its envelope in 64 KiB
#: between two of our Entries messages (what waits meanwhile goes in one); not after a
#: full one. Each message costs every node of the mesh its reading, forwarding and
#: checks: at 0.1 s a bystander node spent 1.8-2.4 ms of CPU per paid job, at 0.5 s
#: 0.9-1.3 ms (bench_job.py --paid, alternating runs)
ANNOUNCE_GAP_S = 0.5
MAX_BEHIND = 1024  # accounts remembered as having entries too far ahead to keep


class LedgerRefused(ValueError):
    """Our node will not sign this entry (the reason is the message)."""


class Overdraft(LedgerRefused):
    """A send our balance does not cover."""


def _kind(env_or_body: Any) -> str:
    body = getattr(env_or_body, "body", env_or_body)
    return type(body).TYPE


class NodeLedger:
    def __init__(self, genesis: wire.Genesis, public_key: bytes,
                 seal: Callable[[Any], wire.Envelope],
                 publish: Callable[[str, bytes], Awaitable[None]],
                 store: LedgerStore | None = None,
                 receive_after_s: float = RECEIVE_AFTER_S) -> None:
        self.genesis = genesis
        #: a payment to us is received once it has been applied here this long
        self.receive_after_s = receive_after_s
        self._paid_at: dict[bytes, float] = {}  # unreceived payment source -> applied at
        self.public_key = public_key
        self.chains = Chains(genesis)
        self.store = store
        self._seal = seal
        self._publish = publish
        # taken on every payment in a job: no scheduler turn when free (node.quicklock)
        self._lock = QuickLock(trio.Lock())
        self._db_limiter = trio.CapacityLimiter(1)
        self._paid_us = trio.Event()
        self.changed = trio.Event()  # set whenever an entry is applied (then replaced)
        self.stats: Counter[str] = Counter()
        self.faults: list[str] = []  # what replay found wrong in the stored rows (bounded)
        #: set when an entry arrives that cannot be applied yet (the sync service replaces it)
        self.missing = trio.Event()
        #: the sync service (``ledger_sync.LedgerSync``) once installed: fetches entries
        self.sync: Any = None
        # accounts with an entry seen too far ahead to keep: account -> that seq (bounded)
        self._behind: OrderedDict[bytes, int] = OrderedDict()
        # entries to gossip in the background (``announcer``); stored before they are queued
        self._outbox_send, self._outbox = trio.open_memory_channel[bytes](OUTBOX)
        # payments taken in jobs, gossiped by us if the payer's gossip does not arrive
        self._watch_send, self._watch = trio.open_memory_channel[tuple](OUTBOX)
        self._on_gossip: OrderedDict[bytes, None] = OrderedDict()  # entry hashes seen there
        self._announcing = False
        #: the announcer's pause between two gossip messages (``ANNOUNCE_GAP_S``)
        self.announce_gap_s = ANNOUNCE_GAP_S
        #: providers proven to have lied about an output (bad_output proofs), oldest first
        self.cheats: OrderedDict[bytes, BadOutput] = OrderedDict()

    # -- queries ----------------------------------------------------------------------
    def balance(self, key: bytes) -> int:
        return self.chains.balance(key)

    def next_entry(self, key: bytes | None = None) -> tuple[int, bytes]:
        """(seq, prev) of the next entry ``key`` (default: ours) would sign."""
        return self.chains.head(self.public_key if key is None else key)

    def paid_for(self, payer: bytes, commit: bytes, newest: int = 4096) -> bool:
        """Whether ``payer``'s chain (its ``newest`` entries) holds a Receipt over the
        commitment ``commit`` (a signed ResultCommit envelope, byte for byte)."""
        for env in reversed(self.chains.entries(payer)[-newest:]):
            if isinstance(env.body, wire.Receipt) and env.body.commit == commit:
                return True
        return False

    def is_refused(self, key: bytes) -> bool:
        """Whether ``key`` is proven to have forked its chain."""
        return self.chains.fork(key) is not None

    def history(self, key: bytes | None = None) -> list[dict]:
        """The applied entries of ``key``'s chain (default: ours), oldest first."""
        key = self.public_key if key is None else key
        return [describe(env) for env in self.chains.entries(key)]

    def wants(self, limit: int) -> list[Want]:
        """Entry ranges to fetch from peers: what held entries wait for, and the start of
        chains whose entries arrived too far ahead to be kept."""
        out = self.chains.wants(limit)
        for key, seq in list(self._behind.items()):
            nxt, _ = self.chains.head(key)
            if nxt > seq or self.chains.fork(key) is not None:
                del self._behind[key]
            elif len(out) < limit:
                out.append(Want(key, nxt, min(seq - nxt + 1, MAX_PENDING_PER_ACCOUNT)))
        return out

    def view(self) -> dict:
        """Every balance, outstanding payments, supply and forks (for the control API)."""
        balances = self.chains.balances()
        return {
            "balances": {k.hex(): v for k, v in balances.items()},
            "outstanding": self.chains.outstanding(),
            "total_supply": self.chains.total_supply,
            "forked": sorted(k.hex() for k in self.chains.forks()),
            "cheats": sorted(k.hex() for k in self.cheats),
            "pending": self.chains.pending_count,
        }

    def status(self) -> dict:
        return {"balance": self.balance(self.public_key),
                "next_seq": self.next_entry()[0],
                "accounts": len(self.chains.balances()),
                "pending": self.chains.pending_count,
                "forked": len(self.chains.forks()),
                "cheats": len(self.cheats),
                "unclaimed": self.chains.unclaimed_count(self.public_key),
                "intake": dict(self.stats)}

    # -- start: replay what is stored -----------------------------------------------------
    async def load(self) -> int:
        """Replay the stored rows into the chains; how many there were."""
        if self.store is None:
            return 0
        rows = await trio.to_thread.run_sync(self.store.rows, limiter=self._db_limiter)
        self.faults = replay(self.chains, rows, self.cheats)[:1000]
        for fault in self.faults[:20]:
            log.warning("ledger replay: %s", fault)
        now = trio.current_time()  # payments applied but not received before a restart
        for c in self.chains.iter_unclaimed(self.public_key):
            self._paid_at.setdefault(c.source, now)
        self._paid_us.set()
        return len(rows)

    # -- intake -----------------------------------------------------------------------
    async def on_gossip(self, env: wire.Envelope) -> None:
        """An envelope from ``meca/receipts/1`` (already through the gossip gate)."""
        if isinstance(env.body, wire.FraudProof):
            await self.on_proof(env.body)
        elif type(env.body) in wire.ENTRY_TYPES:
            if len(env.raw) > MAX_ENTRY:
                self.stats["dropped_oversize"] += 1
                return
            self._on_gossip[entry_hash(env)] = None
            while len(self._on_gossip) > MAX_SEEN:
                self._on_gossip.popitem(last=False)
            async with self._lock:
                await self._take(env)

    async def on_gossip_entries(self, envs: tuple[wire.Envelope, ...]) -> None:
        """The entries of one ``Entries`` message from ``meca/receipts/1`` (each already
        checked by the gossip gate), in their order."""
        for env in envs:
            await self.on_gossip(env)

    async def take_payment(self, env: wire.Envelope, wait_s: float = 5.0,
                           peer: str | None = None) -> str | None:
        """A payer's entry handed to us directly (a Receipt in a job, from ``peer``): add it
        durably; if it waits on earlier entries of the payer's chain, fetch them (from the
        payer first) for up to ``wait_s``. None once it is applied (stored before this
        returns; gossiped by us too unless the payer's gossip of it reaches us within
        ``REGOSSIP_AFTER_S``, so a second entry at its seq is seen as a fork by all), else
        why it is not."""
        if type(env.body) not in wire.ENTRY_TYPES or len(env.raw) > MAX_ENTRY:
            return "not an account entry"
        async with self._lock:
            verdict = await self._take(env, durable=True)
        if isinstance(verdict, Invalid):
            return f"{verdict.reason}: {verdict.detail}"
        if isinstance(verdict, Fork):
            return "the payer forked its chain"
        with trio.move_on_after(wait_s):
            if isinstance(verdict, Gap) and self.sync is not None:
                if verdict.wants_source is not None:
                    await self.sync.catch_up(env.body.payer, env.body.payer_seq, peer)
                await self.sync.catch_up(env.signer, env.body.seq - 1, peer)
                if not verdict.kept:
                    async with self._lock:
                        verdict = await self._take(env, durable=True)
            while not self._applied_here(env) and not self.is_refused(env.signer):
                await self.changed.wait()
        if self.is_refused(env.signer):
            return "the payer forked its chain"
        if not self._applied_here(env):
            return ("the payer's earlier entries did not reach this node in time"
                    if not isinstance(verdict, Gap) or verdict.kept
                    else "the payer's chain has too many entries missing here")
        try:  # gossiped by us unless the payer's own gossip reaches us soon
            self._watch_send.send_nowait((trio.current_time() + REGOSSIP_AFTER_S, env))
        except trio.WouldBlock:
            self.announce(env.raw)
        return None

    async def regossiper(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Run forever: gossip a payment handed to us in a job when the payer's own gossip
        of it has not reached us within ``REGOSSIP_AFTER_S`` (an honest payer gossips its
        entries; one that does not, to hide a second entry at the same seq, is exposed)."""
        task_status.started()
        async for due, env in self._watch:
            await trio.sleep_until(due)
            if entry_hash(env) not in self._on_gossip:
                self.stats["regossiped"] += 1
                self.announce(env.raw)

    def _applied_here(self, env: wire.Envelope) -> bool:
        key, seq = env.signer, env.body.seq
        entries = self.chains.entries_from(key, seq, 1)
        return bool(entries) and entries[0].raw == env.raw and self.chains.fork(key) is None

    async def add_fetched(self, envs: list[wire.Envelope]) -> int:
        """Entries a peer sent us on request (checked by the caller to be the ones asked
        for); how many of them were new here."""
        new = 0
        async with self._lock:
            for env in envs:
                if len(env.raw) <= MAX_ENTRY:
                    verdict = await self._take(env)
                    new += verdict is not None and not isinstance(verdict, (Duplicate, Invalid))
        self.stats["fetched"] += new
        return new

    def check_proof(self, proof: wire.FraudProof) -> Fork | BadOutput:
        """What ``proof`` proves (``ValueError`` if nothing), from the proof alone."""
        return check_proof(proof, self.genesis.network_id, raw_cid_digest)

    async def on_proof(self, proof: wire.FraudProof) -> bool:
        """Check a fraud proof: a fork refuses its account, a bad output marks its provider
        a proven cheat; ``False`` if it proves nothing."""
        try:
            fraud = self.check_proof(proof)
        except ValueError as exc:
            self.stats["bad_proof"] += 1
            log.warning("dropped a fraud proof: %s", exc)
            return False
        async with self._lock:
            if isinstance(fraud, BadOutput):
                if fraud.account in self.cheats:
                    self.stats["proof_known"] += 1
                    return True
                await self._store(fraud.account, 0, "FraudProof", wire.encode_body(proof))
                self._cheat(fraud)
                self.stats["proof_accepted"] += 1
                return True
            if self.chains.fork(fraud.account) is not None:
                self.stats["proof_known"] += 1
                return True
            await self._store(fraud.account, fraud.seq, "FraudProof", wire.encode_body(proof))
            self.chains.mark_forked(fraud)
            self._notify()
            self.stats["proof_accepted"] += 1
            log.warning("account %s is refused: fraud proof of a fork at seq %d",
                        peer_id_of(fraud.account), fraud.seq)
        return True

    def _cheat(self, fraud: BadOutput) -> None:
        self.cheats[fraud.account] = fraud
        while len(self.cheats) > MAX_CHEATS:
            self.cheats.popitem(last=False)
        self._notify()
        log.warning("provider %s is a proven cheat: its output for job %s is not the one it "
                    "signed a commitment to", peer_id_of(fraud.account), fraud.job_id.hex())

    async def report_bad_output(self, commit: wire.Envelope, result: wire.Envelope) -> str:
        """A provider's output did not match its signed commitment (we paid for it): prove
        it to every node when the two envelopes can (store, then gossip the proof); what
        became of it, as a sentence."""
        fraud = BadOutput(commit, result)
        proof = fraud.proof()
        try:
            if max(len(commit.raw), len(result.raw)) > MAX_ENTRY:
                raise NotProvable(f"the result is over the {MAX_ENTRY}-byte proof cap")
            self.check_proof(proof)
        except NotProvable as exc:
            return f"not provable to others ({exc})"
        if not await self.on_proof(proof):
            return "not provable to others"
        try:  # a proof travels alone (an Entries message carries only chain entries)
            await self._publish(wire.TOPIC_RECEIPTS, self._seal(proof).raw)
        except Exception as exc:  # stored: this node avoids the cheat whatever the network does
            log.warning("a fraud proof was not gossiped: %s", exc)
            return f"the fraud proof is stored here but was not gossiped ({exc})"
        return "the fraud proof was gossiped"

    def is_cheat(self, key: bytes) -> bool:
        """Whether ``key`` is proven to have delivered output other than it committed to."""
        return key in self.cheats

    async def _take(self, env: wire.Envelope, durable: bool = False) -> Any:
        """Add one entry (lock held): chains, then the store, then what follows. Entries of
        others are stored without an fsync of their own (``durable``: for a payment we act
        on): peers hold them too, and our next durable commit flushes them."""
        key = env.signer
        if self.store is not None and not self.store.room_for(key):
            self.stats["dropped_full"] += 1
            return None
        was_forked = self.chains.fork(key) is not None
        verdict = self.chains.add(env)
        self.stats[type(verdict).__name__.lower()] += 1
        if isinstance(verdict, Accepted) or (isinstance(verdict, Gap) and verdict.kept):
            await self._store(key, env.body.seq, env.kind, env.raw, durable)
        if isinstance(verdict, Gap):
            if not verdict.kept:
                self._behind[key] = max(env.body.seq, self._behind.pop(key, 0))
                while len(self._behind) > MAX_BEHIND:
                    self._behind.popitem(last=False)
            self.missing.set()
        if isinstance(verdict, Accepted):
            self._applied([env, *(e for e, v in verdict.resolved if isinstance(v, Accepted))])
        elif isinstance(verdict, Fork):
            # both entries: replay then finds the same fork (the first may have been refused)
            await self._store(key, verdict.seq, verdict.first.kind, verdict.first.raw)
            await self._store(key, verdict.seq, env.kind, env.raw)
            self._notify()
            if not was_forked:
                log.warning("account %s forked its chain at seq %d; refused, proof gossiped",
                            peer_id_of(key), verdict.seq)
                try:
                    await self._publish(wire.TOPIC_RECEIPTS,
                                        self._seal(verdict.proof()).raw)
                except Exception as exc:  # no peers: others find the fork themselves
                    log.debug("fraud proof publish failed: %s", exc)
        return verdict

    async def _store(self, key: bytes, seq: int, kind: str, raw: bytes,
                     durable: bool = True) -> None:
        if self.store is None:
            return
        if not durable and self.store.add_nowait(key, seq, kind, raw) is not None:
            return  # no fsync to wait for: cheaper here than handing it to a thread
        if durable and self.store.add_inline(key, seq, kind, raw) is not None:
            return  # a fast disk: the fsync costs less than the hand-off to a thread
        await trio.to_thread.run_sync(self.store.add, key, seq, kind, raw, durable,
                                      limiter=self._db_limiter)

    def _applied(self, envs: list[wire.Envelope]) -> None:
        ours = [e for e in envs if self.public_key in payouts(e.body)]
        if ours:
            now = trio.current_time()
            for e in ours:
                self._paid_at.setdefault(entry_hash(e), now)
            self._paid_us.set()
        self._notify()

    def _notify(self) -> None:
        self.changed.set()
        self.changed = trio.Event()

    # -- our own account --------------------------------------------------------------------
    async def append_own(self, body: Any, gossip: bool = True) -> wire.Envelope:
        """Seal ``body`` (a Transfer, Receipt or Receive; its seq and prev are replaced by our
        head's) as our next entry, store it durably, gossip it (``gossip=False``: the
        caller calls :meth:`gossip_own` once it has sent the entry where it is awaited).
        ``Overdraft`` or ``LedgerRefused`` before anything is signed when the core would
        refuse it."""
        async with self._lock:
            return await self._append(body, gossip)

    async def gossip_own(self, raw: bytes) -> None:
        """Gossip one of our stored entries: in the background once the announcer runs."""
        if self._announcing:
            self.announce(raw)
        else:
            await self._gossip([raw])

    async def _append(self, body: Any, gossip: bool = True) -> wire.Envelope:
        env, applied = self._sign_own(body)
        await self._store(self.public_key, env.body.seq, env.kind, env.raw)
        self._applied(applied)
        self.stats["own"] += 1
        if gossip:
            await self.gossip_own(env.raw)
        return env

    def _sign_own(self, body: Any, unstored: int = 0) -> tuple[wire.Envelope, list]:
        """Seal ``body`` as our next entry and apply it (lock held); the entries it applied
        (itself first). The caller stores it durably before anyone sees it; ``unstored``:
        our entries signed before it and not stored yet (the store's caps count them)."""
        if type(body) not in wire.ENTRY_TYPES:
            raise LedgerRefused(f"{type(body).__name__} is not an account chain entry")
        me = self.public_key
        if self.chains.fork(me) is not None:
            raise LedgerRefused("our own account is forked: it can sign no entry")
        if self.store is not None and not self.store.room_for(me, unstored + 1):
            raise LedgerRefused("our account has as many stored entries as the ledger keeps")
        seq, prev = self.chains.head(me)
        body = dataclasses.replace(body, seq=seq, prev=prev)
        if isinstance(body, wire.Receive):
            claim = self.chains.claim(me, body.source)
            if claim is None or (claim.payer, claim.payer_seq, claim.amount) != (
                    body.payer, body.payer_seq, body.amount):
                raise LedgerRefused("no unclaimed payment to us matches this Receive")
        else:
            have, spend = self.chains.balance(me), cost(body)
            if spend > have:
                raise Overdraft(f"sending {spend} needs more than the balance of {have}")
        env = self._seal(body)
        raw = env.raw
        if len(raw) > MAX_ENTRY:  # what every peer would refuse: not stored, not sent
            raise LedgerRefused(f"the entry is {len(raw)} bytes, over the cap of {MAX_ENTRY}")
        verdict = self.chains.add(env)
        if not isinstance(verdict, Accepted):  # the checks above make this a bug
            raise RuntimeError(f"our own entry was not accepted: {verdict}")
        return env, [env, *(e for e, v in verdict.resolved if isinstance(v, Accepted))]

    def announce(self, raw: bytes) -> None:
        """Gossip a stored entry in the background (``announcer``); dropped, and counted,
        when the outbox is full: peers that see later entries fetch it."""
        try:
            self._outbox_send.send_nowait(raw)
        except trio.WouldBlock:
            self.stats["announce_dropped"] += 1

    async def announcer(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Run forever: gossip what ``announce`` queued (our own entries once stored, the
        payments handed to us in jobs once applied), all that waits in one ``Entries``
        message (up to ``MAX_GOSSIP_ENTRIES`` entries, ``BATCH_BYTES`` bytes), then
        pause ``announce_gap_s`` unless the message was full (more wait: they go at once):
        an entry alone goes out at once, a busy node's entries in a few messages a
        second whatever its job rate, and no backlog builds up at any rate."""
        self._announcing = True
        task_status.started()
        carry: bytes | None = None
        try:
            while True:
                first = carry if carry is not None else await self._outbox.receive()
                carry = None
                batch, size = {first: None}, len(first)
                while len(batch) < wire.MAX_GOSSIP_ENTRIES:
                    try:
                        raw = self._outbox.receive_nowait()
                    except trio.WouldBlock:
                        break
                    if size + len(raw) > BATCH_BYTES:
                        carry = raw
                        break
                    if raw not in batch:
                        batch[raw] = None
                        size += len(raw)
                await self._gossip(list(batch))
                if carry is None and len(batch) < wire.MAX_GOSSIP_ENTRIES:
                    await trio.sleep(self.announce_gap_s)
        finally:
            self._announcing = False

    async def _gossip(self, raws: list[bytes]) -> None:
        """Publish stored entries (ours, or others' we pass on) in one ``Entries`` message
        that we sign: passing an entry on is then never a replay of its own envelope."""
        body = wire.Entries(entries=tuple(wire.SignedEntry(raw=r) for r in raws))
        try:
            await self._publish(wire.TOPIC_RECEIPTS, self._seal(body).raw)
        except Exception as exc:  # stored: it is ours whatever the network does
            log.warning("%d stored entries were not gossiped: %s", len(raws), exc)
            return
        self.stats["gossip_messages"] += 1
        self.stats["gossip_entries"] += len(raws)

    async def send(self, to: bytes, amount: int, memo: str = "") -> wire.Envelope:
        """``wallet send``: a Transfer from our account."""
        return await self.append_own(wire.Transfer(seq=0, prev=bytes(32), to=to,
                                                   amount=amount, memo=memo))

    async def auto_receive(self) -> None:
        """Run forever: sign a Receive for every payment to us not received yet, once it
        has been applied here for ``receive_after_s`` and its payer is not forked. A payment
        from an account that forked its chain is never received: nodes that applied the
        other branch first would never apply that Receive, and our own chain would stall
        on those nodes; waiting a few seconds lets a double spend surface first."""
        while True:
            await self._paid_us.wait()
            self._paid_us = trio.Event()
            while True:
                async with self._lock:
                    if self.chains.fork(self.public_key) is not None:
                        break
                    signed, wake, full = await self._receive_due(trio.current_time())
                if full:
                    break
                if signed == RECEIVE_BATCH:
                    continue  # more may be due already
                if wake is None:
                    break
                await trio.sleep_until(wake + RECEIVE_LINGER_S)

    async def _receive_due(self, now: float) -> tuple[int, float | None, bool]:
        """Sign a Receive for each payment due now (at most ``RECEIVE_BATCH``; lock held),
        store them in one durable commit, then gossip them: how many, when the next one
        is due, and whether our store refused more."""
        signed: list[wire.Envelope] = []
        applied: list[wire.Envelope] = []
        wake, full = None, False
        while len(signed) < RECEIVE_BATCH:
            claim, wake = self._next_claim(now)
            if claim is None:
                break
            try:
                env, done = self._sign_own(wire.Receive(
                    seq=0, prev=bytes(32), source=claim.source, payer=claim.payer,
                    payer_seq=claim.payer_seq, amount=claim.amount), len(signed))
            except LedgerRefused as exc:  # our store is full: nothing more
                log.error("cannot receive a payment of %d: %s", claim.amount, exc)
                full = True
                break
            signed.append(env)
            applied += done
            self._paid_at.pop(claim.source, None)
        if signed:
            if self.store is not None and not await trio.to_thread.run_sync(
                    self.store.add_many, self.public_key,
                    [(e.body.seq, e.kind, e.raw) for e in signed], limiter=self._db_limiter):
                raise RuntimeError("the store refused Receives that room_for let us sign")
            self._applied(applied)
            self.stats["own"] += len(signed)
            self.stats["auto_received"] += len(signed)
            for env in signed:
                await self.gossip_own(env.raw)
        return len(signed), wake, full

    def _next_claim(self, now: float) -> tuple[Any, float | None]:
        """The oldest payment due to be received now, else when the next one is due.
        Payments are applied, and so come due, in the order ``iter_unclaimed`` gives: the
        first one not due yet is the next to come due."""
        for c in self.chains.iter_unclaimed(self.public_key):
            if self.chains.fork(c.payer) is not None:
                continue
            due = self._paid_at.setdefault(c.source, now) + self.receive_after_s
            return (c, None) if due <= now else (None, due)
        return None, None

    # -- verify -------------------------------------------------------------------------
    async def verify(self) -> dict:
        """Recompute every chain from genesis out of the stored rows; report every fault and
        whether the result matches what the node holds now."""
        if self.store is None:
            return {"ok": False, "faults": ["this node keeps no ledger database"]}
        rows = await trio.to_thread.run_sync(self.store.rows, limiter=self._db_limiter)
        fresh = Chains(self.genesis)
        faults = replay(fresh, rows)
        live = self.chains.balances()
        again = fresh.balances()
        differ = {k.hex(): {"now": live.get(k, 0), "recomputed": again.get(k, 0)}
                  for k in set(live) | set(again) if live.get(k, 0) != again.get(k, 0)}
        conserved = sum(again.values()) + fresh.outstanding() == fresh.total_supply
        forks = [{"account": k.hex(), "peer_id": peer_id_of(k), "seq": f.seq}
                 for k, f in fresh.forks().items()]
        return {"ok": not faults and not differ and conserved, "rows": len(rows),
                "accounts": len(again), "entries": sum(len(fresh.entries(k)) for k in again),
                "pending": fresh.pending_count, "forks": forks, "faults": faults,
                "differs_from_live": differ, "conserved": conserved,
                "total_supply": fresh.total_supply}


def raw_cid_digest(text: str) -> bytes | None:
    """The SHA-256 of the whole data a CID names when it is one raw block, else None."""
    try:
        cid = CID.parse(text)
    except CidError:
        return None
    return cid.digest if cid.codec == RAW else None


def replay(chains: Chains, rows, cheats: dict | None = None) -> list[str]:
    """Add stored rows, in order, to ``chains`` (and proven cheats to ``cheats``); the
    faults found (each a sentence). A fork or a refused entry is a fault of the account
    that signed it, not of this node."""
    faults: list[str] = []
    for row in rows:
        if row.kind == "FraudProof":
            try:
                proof = wire.decode_body(wire.FraudProof, row.raw)
                fraud = check_proof(proof, chains.network_id, raw_cid_digest)
            except (ValueError, wire.WireError) as exc:
                faults.append(f"row {row.id}: a stored fraud proof does not hold: {exc}")
                continue
            if isinstance(fraud, BadOutput):
                if cheats is not None:
                    cheats[fraud.account] = fraud
                continue  # a provider's lie about an output: no fault of any chain
            chains.mark_forked(fraud)
            faults.append(f"fork: account {peer_id_of(fraud.account)} signed two entries at "
                          f"seq {fraud.seq} (fraud proof)")
            continue
        try:
            env = wire.open_envelope(row.raw, max_size=MAX_ENTRY)
        except wire.WireError as exc:
            faults.append(f"row {row.id}: stored entry does not open: {exc}")
            continue
        verdict = chains.add(env)
        refused = [(env, verdict)] if isinstance(verdict, Invalid) else []
        if isinstance(verdict, Accepted):
            refused = [(e, v) for e, v in verdict.resolved if isinstance(v, Invalid)]
        for e, v in refused:
            faults.append(f"invalid entry: account {peer_id_of(e.signer)} seq {e.body.seq}: "
                          f"{v.reason} ({v.detail})")
        if isinstance(verdict, Fork):
            faults.append(f"fork: account {peer_id_of(verdict.account)} signed two entries "
                          f"at seq {verdict.seq}")
    return faults


def describe(env: wire.Envelope) -> dict:
    """One entry as JSON-able fields."""
    b = env.body
    out: dict[str, Any] = {"seq": b.seq, "kind": _kind(b), "hash": entry_hash(env).hex(),
                           "ts": env.ts, "cost": cost(b),
                           "pays": {k.hex(): v for k, v in payouts(b).items()}}
    if isinstance(b, wire.Transfer):
        out.update(to=b.to.hex(), amount=b.amount, memo=b.memo)
    elif isinstance(b, wire.Receive):
        out.update(source=b.source.hex(), payer=b.payer.hex(), payer_seq=b.payer_seq,
                   amount=b.amount)
    elif isinstance(b, wire.Receipt):
        out.update(job_id=b.job_id.hex(), offer_id=b.offer_id.hex(),
                   provider=b.provider.hex(), developer=b.developer.hex(), price=b.price,
                   fee=b.fee)
    return out
