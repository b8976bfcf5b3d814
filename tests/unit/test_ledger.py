"""Account chains (core/ledger.py): each bad input's verdict, and properties over random
histories: money is conserved, order does not matter, every fork is detected."""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nacl.signing import SigningKey

from meca_node import wire
from meca_node.core import ledger
from meca_node.core.ledger import (
    Want,
    Accepted, Chains, Duplicate, Fork, Gap, Invalid, check_fork_proof, entry_hash,
)

TS = 1_700_000_000_000
KEYS = [SigningKey(bytes([i + 1]) * 32) for i in range(5)]
PUB = [bytes(k.verify_key) for k in KEYS]
ALICE, BOB, CAROL, DAVE, ERIN = range(5)  # dave and erin have no allocation
ALLOC = [1000, 500, 200]
FOUNDER = SigningKey(bytes([9]) * 32)
GENESIS = wire.make_genesis("ledger-test", FOUNDER, TS, list(zip(PUB, ALLOC)))
OTHER = wire.make_genesis("ledger-other", FOUNDER, TS, list(zip(PUB, ALLOC)))
NET = GENESIS.network_id
JOB = bytes(range(16))
OFFER = hashlib.sha256(b"offer").digest()


def sign(who: int, body: Any, net: bytes = NET) -> wire.Envelope:
    """``body`` signed by key ``who``; the nonce is derived from the content, so the same
    entry signed twice is the same envelope (and a run never depends on test order)."""
    nonce = hashlib.sha256(net + PUB[who] + wire.encode_body(body)).digest()[:16]
    raw = wire.seal(body, key=KEYS[who], net=net, ts=TS, nonce=nonce)
    return wire.open_envelope(raw, max_size=len(raw))


def transfer(seq: int, prev: bytes, to: int, amount: int, memo: str = "") -> wire.Transfer:
    return wire.Transfer(seq=seq, prev=prev, to=PUB[to], amount=amount, memo=memo)


def receipt(seq: int, prev: bytes, provider: int, developer: int, price: int,
            fee: int) -> wire.Receipt:
    return wire.Receipt(seq=seq, prev=prev, job_id=JOB, offer_id=OFFER, commit=b"",
                        provider=PUB[provider], developer=PUB[developer], price=price, fee=fee)


def receive(seq: int, prev: bytes, source: wire.Envelope, amount: int) -> wire.Receive:
    return wire.Receive(seq=seq, prev=prev, source=entry_hash(source), payer=source.signer,
                        payer_seq=source.body.seq, amount=amount)


class Book:
    """Signs the next entry of any account against its own view of the chains."""

    def __init__(self, chains: Chains) -> None:
        self.chains = chains

    def next(self, who: int, make: Any, *args: Any) -> wire.Envelope:
        seq, prev = self.chains.head(PUB[who])
        return sign(who, make(seq, prev, *args))

    def add(self, who: int, make: Any, *args: Any) -> tuple[wire.Envelope, Any]:
        env = self.next(who, make, *args)
        return env, self.chains.add(env)


def conserved(chains: Chains) -> bool:
    return sum(chains.balances().values()) + chains.outstanding() == GENESIS.total_supply


@pytest.fixture
def book() -> Book:
    return Book(Chains(GENESIS))


# -- each bad input, and the good ones ------------------------------------------------------
def test_transfer_then_receive_moves_money(book: Book) -> None:
    c = book.chains
    t, v = book.add(ALICE, transfer, BOB, 300, "hi")
    assert isinstance(v, Accepted) and v.entry is t and v.resolved == ()
    assert (c.balance(PUB[ALICE]), c.balance(PUB[BOB]), c.outstanding()) == (700, 500, 300)
    assert c.unclaimed(PUB[BOB]) == [ledger.Claim(entry_hash(t), PUB[ALICE], 0, 300)]
    r, v = book.add(BOB, receive, t, 300)
    assert isinstance(v, Accepted)
    assert (c.balance(PUB[BOB]), c.outstanding(), c.unclaimed(PUB[BOB])) == (800, 0, [])
    assert c.head(PUB[BOB]) == (1, entry_hash(r)) and c.entries(PUB[BOB]) == (r,)
    assert c.entry(entry_hash(t)) == t and conserved(c)


def test_a_newcomer_receives_then_spends(book: Book) -> None:
    c = book.chains
    assert c.balance(PUB[DAVE]) == 0
    t, _ = book.add(ALICE, transfer, DAVE, 50)
    _, v = book.add(DAVE, transfer, BOB, 1)
    assert isinstance(v, Invalid) and v.reason == "overdraft"
    # the refused entry holds dave's seq 0: signing another one there is a fork
    assert isinstance(c.add(sign(DAVE, receive(0, bytes(32), t, 50))), Fork)


def test_receipt_pays_provider_price_and_developer_fee(book: Book) -> None:
    c = book.chains
    rc, _ = book.add(ALICE, receipt, BOB, CAROL, 100, 7)
    assert c.balance(PUB[ALICE]) == 893 and c.outstanding() == 107
    assert [x.amount for x in c.unclaimed(PUB[BOB])] == [100]
    assert [x.amount for x in c.unclaimed(PUB[CAROL])] == [7]
    _, v = book.add(BOB, receive, rc, 7)  # the developer's share is not the provider's
    assert isinstance(v, Invalid) and v.reason == "wrong_amount" and "100" in v.detail
    book.chains = c = Chains(GENESIS)
    c.add(rc)
    assert isinstance(book.add(BOB, receive, rc, 100)[1], Accepted)
    assert isinstance(book.add(CAROL, receive, rc, 7)[1], Accepted)
    assert (c.balance(PUB[BOB]), c.balance(PUB[CAROL]), c.outstanding()) == (600, 207, 0)
    _, v = book.add(BOB, receive, rc, 100)  # again, at bob's next seq
    assert isinstance(v, Invalid) and v.reason == "already_received"
    _, v = book.add(DAVE, receive, rc, 100)
    assert isinstance(v, Invalid) and v.reason == "not_paid"
    assert conserved(c)


def test_receipt_to_one_key_as_provider_and_developer_is_one_share(book: Book) -> None:
    rc, _ = book.add(ALICE, receipt, BOB, BOB, 100, 7)
    assert [x.amount for x in book.chains.unclaimed(PUB[BOB])] == [107]
    assert isinstance(book.add(BOB, receive, rc, 100)[1], Invalid)
    book.chains = Chains(GENESIS)
    book.chains.add(rc)
    assert isinstance(book.add(BOB, receive, rc, 107)[1], Accepted)


def test_zero_shares_are_not_payments(book: Book) -> None:
    rc, v = book.add(ALICE, receipt, BOB, CAROL, 5, 0)
    assert isinstance(v, Accepted) and book.chains.unclaimed(PUB[CAROL]) == []
    assert isinstance(book.add(ALICE, receipt, BOB, CAROL, 0, 0)[1], Accepted)
    with pytest.raises(ValueError, match="amount must be > 0"):
        receive(0, bytes(32), rc, 0)


def test_receive_with_wrong_payer_or_payer_seq(book: Book) -> None:
    t, _ = book.add(ALICE, transfer, BOB, 10)
    good = receive(0, bytes(32), t, 10)
    for bad in (dataclasses.replace(good, payer=PUB[CAROL]),
                dataclasses.replace(good, payer_seq=1)):
        c = Chains(GENESIS)
        c.add(t)
        v = c.add(sign(BOB, bad))
        assert isinstance(v, Invalid) and v.reason == "wrong_payer"


def test_forged_signature_is_refused_before_the_ledger() -> None:
    env = sign(ALICE, transfer(0, bytes(32), BOB, 10))
    forged = bytearray(env.raw)
    forged[-1] ^= 1
    with pytest.raises(wire.WireError) as info:
        wire.open_envelope(bytes(forged), max_size=len(forged))
    assert info.value.reason == "bad_signature"


def test_replay_is_a_duplicate(book: Book) -> None:
    t, _ = book.add(ALICE, transfer, BOB, 10)
    assert book.chains.add(t) == Duplicate(t)
    ahead = sign(ALICE, transfer(5, bytes(32), BOB, 1))
    assert isinstance(book.chains.add(ahead), Gap)
    assert book.chains.add(ahead) == Duplicate(ahead)  # pending counts as known
    assert book.chains.balance(PUB[ALICE]) == 990 and book.chains.pending_count == 1


def test_seq_skip_waits_then_applies_in_order(book: Book) -> None:
    c = book.chains
    e0 = sign(ALICE, transfer(0, bytes(32), BOB, 1))
    e1 = sign(ALICE, transfer(1, entry_hash(e0), BOB, 2))
    e2 = sign(ALICE, transfer(2, entry_hash(e1), CAROL, 3))
    assert c.add(e2) == Gap(e2, next_seq=0, wants_source=None, kept=True)
    assert c.add(e1) == Gap(e1, next_seq=0, wants_source=None, kept=True)
    assert c.balance(PUB[ALICE]) == 1000 and c.pending_count == 2
    v = c.add(e0)
    assert v == Accepted(e0, resolved=((e1, Accepted(e1)), (e2, Accepted(e2))))
    assert c.balance(PUB[ALICE]) == 994 and c.pending_count == 0


def test_wants_name_what_held_entries_wait_for(book: Book) -> None:
    c = book.chains
    e0 = sign(ALICE, transfer(0, bytes(32), BOB, 1))
    e1 = sign(ALICE, transfer(1, entry_hash(e0), BOB, 2))
    e2 = sign(ALICE, transfer(2, entry_hash(e1), CAROL, 3))
    assert c.wants() == []
    c.add(e2)  # waits for seq 0 and 1
    assert c.wants() == [Want(PUB[ALICE], 0, 2)]
    r = sign(BOB, receive(0, bytes(32), e1, 2))  # waits for alice's seq 1 (its source)
    c.add(r)
    assert set(c.wants()) == {Want(PUB[ALICE], 0, 2)}  # the same range: asked once
    c.add(e0)  # applied; e1 still missing
    assert c.wants() == [Want(PUB[ALICE], 1, 1)]
    assert c.entries_from(PUB[ALICE], 0, 5) == (e0,) and c.entries_from(PUB[BOB], 0, 1) == ()
    c.add(e1)  # releases e2, then bob's receive
    assert c.wants() == [] and c.pending_count == 0 and c.balance(PUB[BOB]) == 502
    assert c.entries_from(PUB[ALICE], 1, 64) == (e1, e2)
    assert c.wants(batch=1) == [] and c.entries_from(PUB[ALICE], 3, 1) == ()


def test_wants_are_bounded_and_skip_forked_accounts(book: Book) -> None:
    c = book.chains
    far = [sign(who, transfer(100, bytes(32), BOB, 1)) for who in (ALICE, CAROL)]
    for env in far:  # 100 ahead: over the pending window, not kept, nothing to want
        assert not c.add(env).kept
    near = [sign(who, transfer(10, bytes(32), BOB, 1)) for who in (ALICE, CAROL)]
    for env in near:
        c.add(env)
    assert set(c.wants()) == {Want(PUB[ALICE], 0, 10), Want(PUB[CAROL], 0, 10)}
    assert len(c.wants(limit=1)) == 1 and c.wants(batch=4)[0].count == 4
    a = sign(ALICE, transfer(0, bytes(32), BOB, 1))
    b = sign(ALICE, transfer(0, bytes(32), CAROL, 1))
    c.add(a)
    assert isinstance(c.add(b), Fork)
    assert c.wants() == [Want(PUB[CAROL], 0, 10)]


def test_wrong_prev(book: Book) -> None:
    c = book.chains
    v = c.add(sign(ALICE, transfer(0, b"\1" * 32, BOB, 1)))
    assert isinstance(v, Invalid) and v.reason == "wrong_prev"
    c2 = Chains(GENESIS)
    e0 = sign(ALICE, transfer(0, bytes(32), BOB, 1))
    c2.add(e0)
    v = c2.add(sign(ALICE, transfer(1, bytes(32), BOB, 1)))
    assert isinstance(v, Invalid) and v.reason == "wrong_prev" and "entry 0" in v.detail
    # a pending entry whose prev turns out wrong is refused when its turn comes
    c3 = Chains(GENESIS)
    bad1 = sign(ALICE, transfer(1, b"\2" * 32, BOB, 1))
    assert isinstance(c3.add(bad1), Gap)
    v = c3.add(e0)
    assert isinstance(v, Accepted) and len(v.resolved) == 1
    assert v.resolved[0][0] == bad1 and v.resolved[0][1].reason == "wrong_prev"
    assert c3.head(PUB[ALICE])[0] == 1 and c3.pending_count == 0


def test_overdraft_and_exact_balance(book: Book) -> None:
    _, v = book.add(CAROL, transfer, BOB, 201)
    assert isinstance(v, Invalid) and v.reason == "overdraft" and "balance of 200" in v.detail
    book.chains = Chains(GENESIS)
    assert isinstance(book.add(CAROL, receipt, BOB, ALICE, 150, 50)[1], Accepted)
    assert book.chains.balance(PUB[CAROL]) == 0
    _, v = book.add(CAROL, transfer, BOB, 1)
    assert isinstance(v, Invalid) and v.reason == "overdraft"
    # (another entry at carol's seq 1 now would be a fork: the refused one holds it)
    v = Chains(GENESIS).add(sign(ALICE, transfer(0, bytes(32), BOB, 2**64 - 1)))
    assert isinstance(v, Invalid) and v.reason == "overdraft"  # a u64 amount: an overdraft


def test_spending_a_receive_not_in_ones_chain(book: Book) -> None:
    c = book.chains
    t, _ = book.add(ALICE, transfer, CAROL, 300)
    assert c.balance(PUB[CAROL]) == 200  # paid, but carol has not received it
    _, v = book.add(CAROL, transfer, BOB, 450)
    assert isinstance(v, Invalid) and v.reason == "overdraft"
    book.chains = c = Chains(GENESIS)
    c.add(t)
    book.add(CAROL, receive, t, 300)
    assert isinstance(book.add(CAROL, transfer, BOB, 450)[1], Accepted)
    assert c.balance(PUB[CAROL]) == 50 and conserved(c)


def test_receive_before_its_source_waits_for_it(book: Book) -> None:
    c = book.chains
    t = sign(ALICE, transfer(0, bytes(32), BOB, 40))
    r = sign(BOB, receive(0, bytes(32), t, 40))
    spend = sign(BOB, transfer(1, entry_hash(r), CAROL, 540))  # needs the receive
    assert c.add(spend) == Gap(spend, 0, None, True)
    assert c.add(r) == Gap(r, 0, entry_hash(t), True)
    assert c.balance(PUB[BOB]) == 500
    v = c.add(t)
    assert v == Accepted(t, resolved=((r, Accepted(r)), (spend, Accepted(spend))))
    assert (c.balance(PUB[BOB]), c.balance(PUB[CAROL]), c.outstanding()) == (0, 200, 540)
    assert c.pending_count == 0 and conserved(c)


def test_double_spend_to_two_payees_at_one_seq_is_a_fork(book: Book) -> None:
    c = book.chains
    to_bob = sign(ALICE, transfer(0, bytes(32), BOB, 900))
    to_carol = sign(ALICE, transfer(0, bytes(32), CAROL, 900))
    assert isinstance(c.add(to_bob), Accepted)
    fork = c.add(to_carol)
    assert fork == Fork(to_bob, to_carol) and (fork.account, fork.seq) == (PUB[ALICE], 0)
    assert c.fork(PUB[ALICE]) == fork and c.forks() == {PUB[ALICE]: fork}
    proof = fork.proof()
    assert check_fork_proof(proof, NET) == fork
    sealed = wire.seal(proof, key=KEYS[BOB], net=NET, ts=TS, nonce=bytes(16))
    assert len(sealed) <= wire.Caps().gossip_message
    assert wire.open_envelope(sealed, max_size=len(sealed)).body == proof
    # later entries of a forked account are refused; the fork is still reported again
    later = sign(ALICE, transfer(1, entry_hash(to_bob), BOB, 1))
    v = c.add(later)
    assert isinstance(v, Invalid) and v.reason == "forked"
    assert c.add(sign(ALICE, transfer(0, bytes(32), DAVE, 1))).first == to_bob
    assert c.add(to_carol) == Fork(to_bob, to_carol)
    # what was applied stays, and bob may receive it
    assert c.balance(PUB[ALICE]) == 100
    assert isinstance(book.add(BOB, receive, to_bob, 900)[1], Accepted)
    assert conserved(c)


def test_fork_against_a_pending_entry_drops_the_accounts_pending(book: Book) -> None:
    c = book.chains
    a = sign(ALICE, transfer(3, bytes(32), BOB, 1))
    b = sign(ALICE, transfer(3, bytes(32), BOB, 2))
    other = sign(ALICE, transfer(4, bytes(32), BOB, 2))
    c.add(a)
    c.add(other)
    assert c.add(b) == Fork(a, b) and c.pending_count == 0
    # a Receive waiting for its source stops waiting when its account forks
    t = sign(BOB, transfer(0, bytes(32), CAROL, 5))
    r = sign(CAROL, receive(0, bytes(32), t, 5))
    assert c.add(r).wants_source == entry_hash(t) and c._waiting
    assert isinstance(c.add(sign(CAROL, receive(0, bytes(32), t, 4))), Fork)
    assert c._waiting == {} and c.pending_count == 0
    assert isinstance(c.add(t), Accepted)
    assert c.head(PUB[CAROL]) == (0, bytes(32)) and conserved(c)


def test_fork_against_a_refused_entry(book: Book) -> None:
    c = book.chains
    over = sign(ALICE, transfer(0, bytes(32), BOB, 5000))
    assert c.add(over).reason == "overdraft"
    assert c.add(over).reason == "overdraft"  # the same again: refused again, no fork
    fine = sign(ALICE, transfer(0, bytes(32), BOB, 5))
    assert c.add(fine) == Fork(over, fine)
    assert c.balance(PUB[ALICE]) == 1000


def test_other_network_and_non_entries(book: Book) -> None:
    c = book.chains
    v = c.add(sign(ALICE, transfer(0, bytes(32), BOB, 1), net=OTHER.network_id))
    assert isinstance(v, Invalid) and v.reason == "wrong_network"
    commit = sign(BOB, wire.ResultCommit(job_id=JOB, result_sha256=bytes(32), size=1))
    v = c.add(commit)
    assert isinstance(v, Invalid) and v.reason == "not_an_entry"
    assert c.balances() == dict(zip(PUB, ALLOC)) and c.head(PUB[ALICE]) == (0, bytes(32))
    assert {x.reason for x in (v,)} <= set(ledger.INVALID_REASONS)


def test_pending_caps() -> None:
    c = Chains(GENESIS, max_pending_per_account=3, max_pending=4)
    far = sign(ALICE, transfer(3, bytes(32), BOB, 1))
    assert c.add(far) == Gap(far, 0, None, kept=False)  # beyond seq 0 + 3
    kept = [sign(ALICE, transfer(s, bytes(32), BOB, 1)) for s in (1, 2)]
    kept += [sign(BOB, transfer(s, bytes(32), ALICE, 1)) for s in (1, 2)]
    assert all(c.add(e).kept for e in kept)
    late = sign(CAROL, transfer(1, bytes(32), BOB, 1))
    assert c.add(late) == Gap(late, 0, None, kept=False)
    assert c.pending_count == 4


def test_refusals_remembered_are_capped() -> None:
    c = Chains(GENESIS, max_rejected=1)
    bad_alice = sign(ALICE, transfer(0, b"\1" * 32, BOB, 1))
    bad_bob = sign(BOB, transfer(0, b"\1" * 32, ALICE, 1))
    c.add(bad_alice)
    c.add(bad_bob)  # alice's refusal is forgotten: her seq 0 is free again
    assert isinstance(c.add(sign(ALICE, transfer(0, bytes(32), BOB, 1))), Accepted)
    assert isinstance(c.add(sign(BOB, transfer(0, bytes(32), ALICE, 1))), Fork)


@pytest.mark.parametrize("case", ["kind", "same", "seq", "signer", "net", "not_entry", "junk"])
def test_check_fork_proof_refuses(case: str) -> None:
    a = sign(ALICE, transfer(0, bytes(32), BOB, 1))
    b = sign(ALICE, transfer(0, bytes(32), BOB, 2))
    proof = wire.FraudProof(kind="fork", account=PUB[ALICE], first=a.raw, second=b.raw)
    assert check_fork_proof(proof, NET) == Fork(a, b)
    second = {
        "kind": b.raw, "same": a.raw, "junk": b"\xa0",
        "seq": sign(ALICE, transfer(1, bytes(32), BOB, 2)).raw,
        "signer": sign(BOB, transfer(0, bytes(32), BOB, 2)).raw,
        "net": sign(ALICE, transfer(0, bytes(32), BOB, 2), net=OTHER.network_id).raw,
        "not_entry": sign(ALICE, wire.ResultCommit(job_id=JOB, result_sha256=bytes(32),
                                                   size=0)).raw,
    }[case]
    bad = dataclasses.replace(proof, second=second,
                              kind="bad_output" if case == "kind" else "fork")
    with pytest.raises(ValueError):
        check_fork_proof(bad, NET)


# -- properties over random histories -------------------------------------------------------
class Model:
    """An honest network: signs only valid entries and knows what every balance must be."""

    def __init__(self, n_keys: int = 5) -> None:
        self.n = n_keys
        self.bal = [dict(zip(range(3), ALLOC)).get(i, 0) for i in range(n_keys)]
        self.head = [(0, bytes(32))] * n_keys
        self.unclaimed: dict[tuple[bytes, int], wire.Envelope] = {}  # (source, payee) -> entry
        self.shares: dict[tuple[bytes, int], int] = {}
        self.received: list[tuple[int, wire.Envelope]] = []  # (payee, source entry)
        self.entries: list[wire.Envelope] = []

    def sign(self, who: int, make: Any, *args: Any) -> wire.Envelope:
        seq, prev = self.head[who]
        env = sign(who, make(seq, prev, *args))
        self.head[who] = (seq + 1, entry_hash(env))
        self.entries.append(env)
        return env

    def _paid(self, env: wire.Envelope) -> None:
        for payee, amount in ledger.payouts(env.body).items():
            self.unclaimed[(entry_hash(env), PUB.index(payee))] = env
            self.shares[(entry_hash(env), PUB.index(payee))] = amount

    def step(self, op: tuple[int, int, int, int, int]) -> None:
        kind, a, b, c, x = op
        a, b, c = a % self.n, b % self.n, c % self.n
        if kind == 0 and self.bal[a] > 0:
            amount = 1 + x % self.bal[a]
            self.bal[a] -= amount
            self._paid(self.sign(a, transfer, b, amount))
        elif kind == 1:
            price = x % (self.bal[a] + 1)
            fee = (x // 7) % (self.bal[a] - price + 1)
            self.bal[a] -= price + fee
            self._paid(self.sign(a, receipt, b, c, price, fee))
        elif kind == 2:
            mine = [k for k in self.unclaimed if k[1] == b]
            if mine:
                key = mine[x % len(mine)]
                source = self.unclaimed.pop(key)
                amount = self.shares.pop(key)
                self.bal[b] += amount
                self.sign(b, receive, source, amount)
                self.received.append((b, source))

    def balances(self) -> dict[bytes, int]:
        return {PUB[i]: self.bal[i] for i in range(self.n)
                if i < len(ALLOC) or self.head[i][0] > 0}

    def outstanding(self) -> int:
        return sum(self.shares.values())

    def bad_tail(self, who: int, kind: int) -> wire.Envelope | None:
        """A refused entry at ``who``'s next seq (the only seq free of valid entries)."""
        seq, prev = self.head[who]
        if kind == 0:
            return sign(who, transfer(seq, prev, (who + 1) % self.n, self.bal[who] + 1))
        if kind == 1:
            return sign(who, transfer(seq, hashlib.sha256(prev).digest(), 0, 1))
        if kind == 2:
            return sign(who, receipt(seq, prev, 0, 1, self.bal[who], 1))
        if kind == 3:  # a second receive of a source
            got = [s for payee, s in self.received if payee == who]
            if got:
                share = ledger.payouts(got[0].body)[PUB[who]]
                return sign(who, receive(seq, prev, got[0], share))
        if kind == 4:  # a receive of more than the source pays
            mine = [k for k in self.unclaimed if k[1] == who]
            if mine:
                return sign(who, receive(seq, prev, self.unclaimed[mine[0]],
                                         self.shares[mine[0]] + 1))
        if kind == 5:  # a receive of an entry that pays someone else
            other = [s for s in self.unclaimed.values()
                     if PUB[who] not in ledger.payouts(s.body)]
            if other:
                return sign(who, receive(seq, prev, other[0], 1))
        if kind == 6:  # a receive of an entry nobody has (waits for ever)
            ghost = sign((who + 1) % self.n, transfer(0, bytes(32), who, 1), net=OTHER.network_id)
            return sign(who, receive(seq, prev, ghost, 1))
        return None

    def skipped(self, who: int, k: int) -> wire.Envelope:
        """A valid-looking entry at seq next + k (k >= 1): its predecessor never comes."""
        seq, _prev = self.head[who]
        return sign(who, transfer(seq + k, b"\7" * 32, 0, 1))


ops = st.lists(st.tuples(st.integers(0, 2), st.integers(0, 4), st.integers(0, 4),
                         st.integers(0, 4), st.integers(0, 10**4)), max_size=30)
tails = st.lists(st.tuples(st.integers(0, 7), st.integers(0, 2)), min_size=5, max_size=5)
PROPERTY = settings(max_examples=150, deadline=None, derandomize=True, database=None)


def history(op_list: list, tail_spec: list, replays: list[int], other_net: list[int],
            at_least_one: bool = False) -> tuple[Model, list[wire.Envelope]]:
    """A valid history, then refused tails, skipped seqs, replays and other-network copies:
    no two different entries at one (account, seq) of this network."""
    m = Model()
    for op in op_list:
        m.step(op)
    if at_least_one and not m.entries:
        m.step((0, ALICE, BOB, 0, 5))
    extra: list[wire.Envelope] = []
    for who, (kind, skips) in enumerate(tail_spec):
        bad = m.bad_tail(who, kind)
        extra += [bad] if bad is not None else []
        extra += [m.skipped(who, k) for k in range(1, skips + 1)]
    if m.entries:
        extra += [m.entries[i % len(m.entries)] for i in replays]
        for i in other_net:
            e = m.entries[i % len(m.entries)]
            extra.append(sign(PUB.index(e.signer), e.body, net=OTHER.network_id))
    return m, m.entries + extra


def state(c: Chains) -> tuple:
    return (c.balances(), c.outstanding(), c.pending_count,
            {PUB[i]: c.head(PUB[i]) for i in range(5)}, c.forks())


@PROPERTY
@given(op_list=ops, tail_spec=tails, replays=st.lists(st.integers(0, 99), max_size=4),
       other_net=st.lists(st.integers(0, 99), max_size=3), data=st.data())
def test_any_order_gives_the_same_balances(op_list: list, tail_spec: list, replays: list,
                                           other_net: list, data: st.DataObject) -> None:
    model, entries = history(op_list, tail_spec, replays, other_net)
    order = data.draw(st.permutations(range(len(entries))))
    results = []
    for seq in (range(len(entries)), order):
        c = Chains(GENESIS)
        for i in seq:
            v = c.add(entries[i])
            assert not isinstance(v, Fork)
            assert conserved(c)
        results.append(state(c))
    assert results[0] == results[1]
    balances, outstanding, *_ = results[0]
    assert balances == model.balances() and outstanding == model.outstanding()
    assert results[0][4] == {}


@PROPERTY
@given(op_list=ops, forks=st.lists(st.tuples(st.integers(0, 99), st.integers(0, 3)),
                                   min_size=1, max_size=4),
       tail_spec=tails, data=st.data())
def test_money_is_conserved_and_every_fork_is_detected(op_list: list, forks: list,
                                                       tail_spec: list,
                                                       data: st.DataObject) -> None:
    model, entries = history(op_list, tail_spec, [], [], at_least_one=True)
    # a second entry at the (account, seq) of some valid entry: another payee, amount, type
    alternatives = []
    for i, how in forks:
        orig = model.entries[i % len(model.entries)]
        seq, prev = orig.body.seq, orig.body.prev
        body = [transfer(seq, prev, DAVE, 1, "double"), receipt(seq, prev, ERIN, DAVE, 1, 0),
                transfer(seq, b"\5" * 32, ERIN, 10**6), transfer(seq, prev, ERIN, 1, "twice")
                ][how]
        alternatives.append(sign(PUB.index(orig.signer), body))
    everything = entries + alternatives
    order = data.draw(st.permutations(range(len(everything))))
    c = Chains(GENESIS)
    first_at: dict[tuple[bytes, int], wire.Envelope] = {}
    pairs = {(e.signer, e.body.seq) for e in alternatives}
    one_pair = {k for k in pairs if sum((a.signer, a.body.seq) == k for a in alternatives) == 1}
    one_pair = {k for k in one_pair if all(a.signer != k[0] for a in alternatives
                                           if (a.signer, a.body.seq) != k)}
    for i in order:
        env = everything[i]
        where = (env.signer, env.body.seq)
        v = c.add(env)
        assert conserved(c), v
        if isinstance(v, Fork):
            assert check_fork_proof(v.proof(), NET) == v
            assert v.second is env and v.first.raw != env.raw
            assert (v.account, v.seq) == where and where in pairs
        earlier = first_at.setdefault(where, env)
        if where in one_pair and earlier.raw != env.raw:
            # the account's only fork: its second entry always gets both envelopes
            assert v == Fork(earlier, env)
    for account, _seq in pairs:
        assert c.fork(account) is not None
    assert set(c.forks()) == {a for a, _s in pairs}
    assert all(b >= 0 for b in c.balances().values())
