"""Account chains and balances: every node computes the same balance from the same entries.

**Chains.** Each account (an Ed25519 key) has one hash chain of entries, envelopes it signs
whose body is a ``Receipt`` or a ``Transfer`` (sends) or a ``Receive``. Entry ``seq`` n of an
account has ``prev`` = SHA-256 of the whole envelope (``env.raw``) of its entry n-1; entry 0
has 32 zero bytes. An entry is *applied* only in chain order, after every earlier entry of
its account, and only once ``prev`` matches.

**Balance.** ``balance(key)`` = the genesis allocation of ``key`` + the amounts of its
applied ``Receive`` entries - the costs of its applied sends (a Receipt costs price + fee, a
Transfer its amount). It depends on the account's own chain alone, never on what others
say they sent it: a payee's balance grows only when it signs a ``Receive`` into its own chain
(so a Receive is spendable exactly when it precedes the spend in that chain). A send that
the balance at that point of the chain does not cover is refused (``overdraft``), so no
balance is ever negative.

**Who is paid by an entry.** A Transfer pays ``amount`` to ``to``. A Receipt pays ``price`` to
its provider and ``fee`` to its developer; when the two are one key it pays that key
price + fee. A Receive pays nobody. Zero shares are not payments. Each payee claims all that
one entry pays it with exactly one ``Receive`` (``source`` = SHA-256 of the entry's envelope,
``payer``/``payer_seq`` naming it, ``amount`` = the whole share): the pair (source, payee)
says which share unambiguously, and a second Receive of the same source by the same payee
is refused (``already_received``).

**Conservation.** Applying a send moves its cost out of the payer's balance into
*outstanding* payments, one per (source, payee); applying a Receive moves one outstanding
payment into the payee's balance. So at every moment, whatever was added in whatever order::

    sum(balances()) + outstanding() == genesis.total_supply

**Forks.** Two different envelopes signed by one account with the same ``seq`` are a fork,
whether the first was applied, is pending, or was refused at the head of the chain (each
account remembers the entry refused at its next seq: any other entry at that seq is a second
signature at the same position). ``add`` returns a ``Fork`` holding both envelopes (its
``proof()`` is the ``FraudProof`` every node can check with ``check_fork_proof``); the
account is marked forked, its pending entries are dropped and its later entries refused.
What it applied before stays applied (first seen wins, which can differ between nodes
that saw the two branches in different orders: the fork proof is what the network acts on).
Without forks the result does not depend on the order entries arrive in.

**Out of order, bounded.** An entry beyond its account's next seq, or a Receive whose source
entry is not applied yet, waits in a pending set and is applied (or refused) as soon as what
it waits for is applied; ``Accepted.resolved`` lists what that released, in order. Caps:
pending entries of one account must lie within ``max_pending_per_account`` (64) seqs of its
next seq (so at most 64 per account), at most ``max_pending`` (4096) in all, and at most
``max_rejected`` (4096) remembered head refusals (the oldest forgotten first). An entry over
a cap is not kept (``Gap(kept=False)``): the caller fetches it again later. Pure and
deterministic: no clock, no I/O, no randomness.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict, deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from meca_node import wire
from meca_node.wire import Envelope, Genesis, Receipt, Receive, Transfer, WireError

ZERO_HASH = bytes(32)
MAX_PENDING_PER_ACCOUNT = 64
MAX_PENDING = 4096
MAX_REJECTED = 4096
#: the largest entry envelope that fits a FraudProof's first/second
MAX_ENTRY = 16384


def open_entry(raw: bytes, network_id: bytes) -> Envelope:
    """An account chain entry of our network, opened with its signature checked; else
    ``WireError``: the envelope's own reasons, ``wrong_topic`` (not a Receipt, Transfer or
    Receive) or ``wrong_network``."""
    env = wire.open_envelope(raw, max_size=MAX_ENTRY)
    if type(env.body) not in wire.ENTRY_TYPES:
        raise WireError("wrong_topic", f"a {env.kind}, not an account chain entry")
    if env.net != network_id:
        raise WireError("wrong_network", "an entry of another network")
    return env


def entry_hash(env: Envelope) -> bytes:
    """SHA-256 of an entry's whole envelope: the next entry's ``prev``, a Receive's ``source``."""
    return hashlib.sha256(env.raw).digest()


def cost(body: Any) -> int:
    """What an entry takes from its signer's balance."""
    if isinstance(body, Receipt):
        return body.price + body.fee
    if isinstance(body, Transfer):
        return body.amount
    return 0


def payouts(body: Any) -> dict[bytes, int]:
    """What an entry pays to whom (shares of 0 left out; a Receive pays nobody)."""
    out: dict[bytes, int] = {}
    if isinstance(body, Transfer):
        out[body.to] = body.amount
    elif isinstance(body, Receipt):
        for key, amount in ((body.provider, body.price), (body.developer, body.fee)):
            if amount:
                out[key] = out.get(key, 0) + amount
    return out


# -- verdicts -------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Accepted:
    """Applied to its account's chain. ``resolved``: pending entries that this one released,
    each applied (``Accepted``) or refused (``Invalid``), in the order it happened."""

    entry: Envelope
    resolved: tuple[tuple[Envelope, Accepted | Invalid], ...] = ()


@dataclass(frozen=True, slots=True)
class Duplicate:
    """The very same envelope is already applied or pending."""

    entry: Envelope


@dataclass(frozen=True, slots=True)
class Gap:
    """Not applicable yet. ``next_seq``: the account's next seq (its entries before it are
    applied); an entry beyond it waits for entries next_seq .. seq-1. ``wants_source``: this
    Receive, the next entry, waits for the payer entry it claims. ``kept``: it waits in the
    pending set; False when a cap refused it (fetch it again later)."""

    entry: Envelope
    next_seq: int
    wants_source: bytes | None
    kept: bool


@dataclass(frozen=True, slots=True)
class Fork:
    """Two different entries of ``account`` at the same ``seq``: ``first`` (known before),
    ``second`` (this one). Both are signed by the account: a fraud proof."""

    first: Envelope
    second: Envelope

    @property
    def account(self) -> bytes:
        return self.first.signer

    @property
    def seq(self) -> int:
        return int(self.first.body.seq)

    def proof(self) -> wire.FraudProof:
        return wire.FraudProof(kind="fork", account=self.account, first=self.first.raw,
                               second=self.second.raw)


@dataclass(frozen=True, slots=True)
class Invalid:
    """Refused. ``reason`` is a short code (below), ``detail`` says what is wrong."""

    entry: Envelope
    reason: str
    detail: str = ""


#: every ``Invalid.reason``
INVALID_REASONS = (
    "wrong_network", "not_an_entry", "forked", "wrong_prev", "overdraft", "wrong_payer",
    "not_paid", "already_received", "wrong_amount",
)

Verdict = Accepted | Duplicate | Gap | Fork | Invalid


def check_fork_proof(proof: wire.FraudProof, network_id: bytes) -> Fork:
    """Verify a fork proof on its own (no ledger needed); raises ``ValueError`` if it does
    not prove that ``proof.account`` signed two different entries at one seq of this network."""
    if proof.kind != "fork":
        raise ValueError(f"not a fork proof: kind {proof.kind!r}")
    if proof.first == proof.second:
        raise ValueError("first and second are the same envelope")
    try:
        first, second = (wire.open_envelope(raw, max_size=MAX_ENTRY)
                         for raw in (proof.first, proof.second))
    except WireError as exc:
        raise ValueError(f"an envelope of the proof is not valid: {exc}") from None
    for env in (first, second):
        if env.net != network_id:
            raise ValueError("an envelope of the proof belongs to another network")
        if type(env.body) not in wire.ENTRY_TYPES:
            raise ValueError(f"{env.type} is not an account chain entry")
        if env.signer != proof.account:
            raise ValueError("an envelope of the proof is not signed by the account")
    if first.body.seq != second.body.seq:
        raise ValueError(f"different seqs {first.body.seq} and {second.body.seq}")
    return Fork(first, second)


# -- the chains -----------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Claim:
    """A payment to an account that it has not received yet (what a Receive would claim)."""

    source: bytes
    payer: bytes
    payer_seq: int
    amount: int


@dataclass(frozen=True, slots=True)
class Want:
    """Entries a node lacks to apply what it holds: ``count`` entries of ``account``'s chain
    from ``from_seq`` (what to ask peers for)."""

    account: bytes
    from_seq: int
    count: int


@dataclass(slots=True)
class _Account:
    balance: int
    entries: list[Envelope] = field(default_factory=list)
    hashes: list[bytes] = field(default_factory=list)
    pending: dict[int, Envelope] = field(default_factory=dict)  # seq -> entry
    fork: Fork | None = None


class Chains:
    """Every account chain we know of one network, and the balances they give."""

    def __init__(self, genesis: Genesis, *,
                 max_pending_per_account: int = MAX_PENDING_PER_ACCOUNT,
                 max_pending: int = MAX_PENDING, max_rejected: int = MAX_REJECTED) -> None:
        self.network_id = genesis.network_id
        self.total_supply = genesis.total_supply
        self.max_pending_per_account = max_pending_per_account
        self.max_pending = max_pending
        self.max_rejected = max_rejected
        self._alloc = {a.key: a.amount for a in genesis.alloc}
        self._accounts: dict[bytes, _Account] = {}
        self._applied: dict[bytes, tuple[bytes, int]] = {}       # entry hash -> (key, seq)
        # payee -> {source: amount}, each payee's in the order applied
        self._unclaimed: dict[bytes, dict[bytes, int]] = {}
        self._outstanding = 0
        self._waiting: dict[bytes, list[bytes]] = {}             # source -> accounts waiting
        self._rejected: OrderedDict[tuple[bytes, int], Envelope] = OrderedDict()
        self._pending_total = 0

    # -- queries --------------------------------------------------------------------------
    def balance(self, key: bytes) -> int:
        acct = self._accounts.get(key)
        return acct.balance if acct is not None else self._alloc.get(key, 0)

    def balances(self) -> dict[bytes, int]:
        """The balance of every account in the genesis or with an applied entry."""
        keys = dict.fromkeys(self._alloc) | dict.fromkeys(
            k for k, a in self._accounts.items() if a.entries)
        return {k: self.balance(k) for k in keys}

    def outstanding(self) -> int:
        """Sent but not yet received: the sum of every payment no Receive has claimed."""
        return self._outstanding

    def unclaimed(self, key: bytes) -> list[Claim]:
        """Payments to ``key`` it has not received, in the order they were applied."""
        return list(self.iter_unclaimed(key))

    def iter_unclaimed(self, key: bytes) -> Iterator[Claim]:
        """``unclaimed(key)`` one at a time (do not change the chains while iterating)."""
        for source, amount in self._unclaimed.get(key, {}).items():
            yield self._claim(source, amount)

    def unclaimed_count(self, key: bytes) -> int:
        return len(self._unclaimed.get(key, {}))

    def claim(self, key: bytes, source: bytes) -> Claim | None:
        """The payment of entry ``source`` to ``key`` if ``key`` has not received it."""
        amount = self._unclaimed.get(key, {}).get(source)
        return None if amount is None else self._claim(source, amount)

    def _claim(self, source: bytes, amount: int) -> Claim:
        payer, payer_seq = self._applied[source]
        return Claim(source, payer, payer_seq, amount)

    def head(self, key: bytes) -> tuple[int, bytes]:
        """(seq, prev) of the next entry ``key`` would sign."""
        acct = self._accounts.get(key)
        if acct is None or not acct.entries:
            return 0, ZERO_HASH
        return len(acct.entries), acct.hashes[-1]

    def entries(self, key: bytes) -> tuple[Envelope, ...]:
        acct = self._accounts.get(key)
        return tuple(acct.entries) if acct is not None else ()

    def entries_from(self, key: bytes, from_seq: int, count: int) -> tuple[Envelope, ...]:
        """Applied entries ``from_seq`` .. ``from_seq+count-1`` of ``key`` (those we have)."""
        acct = self._accounts.get(key)
        if acct is None or from_seq >= len(acct.entries) or count < 1:
            return ()
        return tuple(acct.entries[from_seq:from_seq + count])

    def wants(self, limit: int = 64, batch: int = MAX_PENDING_PER_ACCOUNT) -> list[Want]:
        """What held entries wait for, at most ``limit`` wants of at most ``batch`` entries:
        for an account with entries beyond its next seq, the entries before the first of
        them; for a Receive waiting for its source, the payer's entries up to that source."""
        out: dict[tuple[bytes, int], Want] = {}

        def want(key: bytes, upto: int) -> None:  # entries next .. upto of key
            acct = self._accounts.get(key)
            nxt = len(acct.entries) if acct is not None else 0
            if (acct is None or acct.fork is None) and upto >= nxt:
                out.setdefault((key, nxt), Want(key, nxt, min(upto - nxt + 1, batch)))

        for key, acct in self._accounts.items():
            if len(out) >= limit:
                break
            if acct.pending and acct.fork is None:
                nxt = len(acct.entries)
                head = acct.pending.get(nxt)
                if head is None:
                    want(key, min(acct.pending) - 1)
                elif isinstance(head.body, Receive):  # waits for its source
                    want(head.body.payer, head.body.payer_seq)
        return list(out.values())[:limit]

    def entry(self, source: bytes) -> Envelope | None:
        """The applied entry whose envelope hashes to ``source``."""
        where = self._applied.get(source)
        return self._accounts[where[0]].entries[where[1]] if where else None

    def fork(self, key: bytes) -> Fork | None:
        acct = self._accounts.get(key)
        return acct.fork if acct is not None else None

    def forks(self) -> dict[bytes, Fork]:
        return {k: a.fork for k, a in self._accounts.items() if a.fork is not None}

    @property
    def pending_count(self) -> int:
        return self._pending_total

    # -- adding ---------------------------------------------------------------------------
    def add(self, env: Envelope) -> Verdict:
        """Take one opened (signature-checked) envelope; say what became of it."""
        if env.net != self.network_id:
            return Invalid(env, "wrong_network", "signed for another network")
        if type(env.body) not in wire.ENTRY_TYPES:
            return Invalid(env, "not_an_entry", f"{env.type} is not an account chain entry")
        key, seq = env.signer, env.body.seq
        acct = self._accounts.get(key)
        known = None
        if acct is not None:
            known = acct.entries[seq] if seq < len(acct.entries) else acct.pending.get(seq)
        if known is None:
            known = self._rejected.get((key, seq))
            if known is not None and known.raw == env.raw:
                known = None  # a refused entry again: evaluated again, refused again
        if known is not None:
            if known.raw == env.raw:
                return Duplicate(env)
            return self._forked(key, Fork(known, env))
        if acct is not None and acct.fork is not None:
            return Invalid(env, "forked", "the account is forked; its entries are refused")
        nxt = len(acct.entries) if acct is not None else 0
        if seq > nxt:
            return self._hold(key, env, nxt, None)
        verdict = self._evaluate(key, env)
        if isinstance(verdict, Accepted):  # its hash is the chain's newest
            return Accepted(env, self._release(key, self._accounts[key].hashes[-1]))
        return verdict

    def mark_forked(self, fork: Fork) -> bool:
        """Refuse ``fork.account`` on a checked proof (``check_fork_proof``) without applying
        either of its entries: its pending entries are dropped and later ones refused, as
        when ``add`` finds the fork itself. ``False`` if the account was forked already."""
        if self.fork(fork.account) is not None:
            return False
        self._forked(fork.account, fork)
        return True

    def _account(self, key: bytes) -> _Account:
        acct = self._accounts.get(key)
        if acct is None:
            acct = self._accounts[key] = _Account(balance=self._alloc.get(key, 0))
        return acct

    def _hold(self, key: bytes, env: Envelope, nxt: int, source: bytes | None) -> Gap:
        seq = env.body.seq
        kept = (seq - nxt < self.max_pending_per_account
                and self._pending_total < self.max_pending)
        if kept:
            self._account(key).pending[seq] = env
            self._pending_total += 1
            if source is not None:
                self._waiting.setdefault(source, []).append(key)
        return Gap(env, nxt, source, kept)

    def _forked(self, key: bytes, fork: Fork) -> Fork:
        acct = self._account(key)
        if acct.fork is None:
            acct.fork = fork
            head = acct.pending.get(len(acct.entries))
            if head is not None and isinstance(head.body, Receive):  # no longer waiting
                waiters = self._waiting.get(head.body.source, [])
                if key in waiters:
                    waiters.remove(key)
                    if not waiters:
                        del self._waiting[head.body.source]
            self._pending_total -= len(acct.pending)
            acct.pending.clear()
        return fork

    def _refuse(self, key: bytes, env: Envelope, reason: str, detail: str) -> Invalid:
        self._rejected[(key, env.body.seq)] = env
        self._rejected.move_to_end((key, env.body.seq))
        while len(self._rejected) > self.max_rejected:
            self._rejected.popitem(last=False)
        return Invalid(env, reason, detail)

    def _evaluate(self, key: bytes, env: Envelope) -> Accepted | Gap | Invalid:
        """Apply ``env``, the next entry of ``key``'s chain, if it is valid there."""
        acct = self._accounts.get(key)
        body = env.body
        prev = acct.hashes[-1] if acct is not None and acct.entries else ZERO_HASH
        if body.prev != prev:
            return self._refuse(key, env, "wrong_prev",
                                f"prev is not the hash of entry {body.seq - 1}" if body.seq
                                else "the prev of seq 0 is 32 zero bytes")
        h = entry_hash(env)
        if isinstance(body, Receive):
            where = self._applied.get(body.source)
            if where is None:
                return self._hold(key, env, body.seq, body.source)
            if where != (body.payer, body.payer_seq):
                return self._refuse(key, env, "wrong_payer",
                                    "payer and payer_seq do not name the source entry")
            owed = self._unclaimed.get(key, {}).get(body.source)
            if owed is None:
                paid = key in payouts(self.entry(body.source).body)  # type: ignore[union-attr]
                return self._refuse(key, env, "already_received" if paid else "not_paid",
                                    "this account received that entry before" if paid
                                    else "the source entry pays this account nothing")
            if owed != body.amount:
                return self._refuse(key, env, "wrong_amount",
                                    f"the source entry pays this account {owed}, "
                                    f"not {body.amount}")
            mine = self._unclaimed[key]
            del mine[body.source]
            if not mine:
                del self._unclaimed[key]
            self._outstanding -= owed
            acct = self._account(key)
            acct.balance += owed
        else:
            spend = cost(body)
            have = self.balance(key)
            if spend > have:
                return self._refuse(key, env, "overdraft",
                                    f"sends {spend} with a balance of {have}")
            acct = self._account(key)
            acct.balance -= spend
            for payee, amount in payouts(body).items():
                self._unclaimed.setdefault(payee, {})[h] = amount
                self._outstanding += amount
        acct.entries.append(env)
        acct.hashes.append(h)
        self._applied[h] = (key, body.seq)
        return Accepted(env)

    def _release(self, key: bytes, applied: bytes) -> tuple[tuple[Envelope, Any], ...]:
        """Apply what waited for the entry ``applied`` of ``key`` (and so on, in order)."""
        resolved: list[tuple[Envelope, Any]] = []
        work = deque([(key, applied)])
        while work:
            key, h = work.popleft()
            for acct_key in [key, *self._waiting.pop(h, [])]:
                acct = self._accounts[acct_key]
                env = acct.pending.get(len(acct.entries))
                if env is None or acct.fork is not None:
                    continue
                del acct.pending[env.body.seq]
                self._pending_total -= 1
                verdict = self._evaluate(acct_key, env)
                if isinstance(verdict, Gap):
                    continue  # a Receive held again, now waiting for its source
                resolved.append((env, verdict))
                if isinstance(verdict, Accepted):
                    work.append((acct_key, entry_hash(env)))
        return tuple(resolved)
