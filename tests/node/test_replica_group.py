"""A replicated job's bookkeeping on the client (node.jobs._Replicas): the vote waits for
every slot, stragglers are cut off at the verdict, and a disagreement is reported with
each provider's hash."""

from __future__ import annotations

import hashlib

import pytest
import trio

from meca_node.core.replicas import Commitment
from meca_node.node.jobs import JobFailed, JobOutcome, _hosts_of, _Replicas


def commitment(peer: str, data: bytes) -> Commitment:
    return Commitment(peer, peer.encode().ljust(32, b"."), hashlib.sha256(data).digest(),
                      len(data), b"raw-" + peer.encode())


def outcome(peer: str, data: bytes, paid: int) -> JobOutcome:
    return JobOutcome(data, peer, 1, {"total": 0.1, "pull": 0.0}, [], paid=paid)


def test_the_vote_waits_for_every_slot_then_the_majority_is_paid() -> None:
    async def main():
        g = _Replicas(bytes(16), 3, None)
        verdicts = {}

        async def vote(peer, data):
            verdicts[peer] = await g.vote(commitment(peer, data))

        async with trio.open_nursery() as n:
            n.start_soon(vote, "a", b"x")
            n.start_soon(vote, "b", b"x")
            await trio.testing.wait_all_tasks_blocked()
            assert not g.decided.is_set()  # the third slot has not ended yet
            n.start_soon(vote, "c", b"lie")
        v = verdicts["a"]
        assert set(v.paid) == {"a", "b"} and v.refused == ("c",)
        g.done.update(a=outcome("a", b"x", 2), b=outcome("b", b"x", 2))
        g.failed["c"] = JobFailed("minority", "refused")
        out = g.outcome(1.0, "echo")
        assert out.output == b"x" and out.paid == 4
        assert {p["provider"]: p["outcome"] for p in out.replicas} == \
            {"a": "paid", "b": "paid", "c": "refused"}

    trio.run(main)


def test_a_slot_that_gives_up_lets_the_others_decide_and_stragglers_are_cut() -> None:
    async def main():
        g = _Replicas(bytes(16), 3, None)
        straggler = trio.CancelScope()
        g.scopes["slow"] = straggler
        async with trio.open_nursery() as n:
            n.start_soon(g.vote, commitment("a", b"x"))
            n.start_soon(g.vote, commitment("b", b"x"))
            await trio.testing.wait_all_tasks_blocked()
            g.slot_closed()  # a third slot found no provider
        assert g.verdict.agreed is not None and straggler.cancel_called

    trio.run(main)


def test_a_disagreement_names_every_hash_and_pays_only_the_unprovable() -> None:
    async def main():
        g = _Replicas(bytes(16), 3, None)
        async with trio.open_nursery() as n:
            for peer, data in (("a", b"x"), ("b", b"y"), ("c", b"z")):
                n.start_soon(g.vote, commitment(peer, data))
        assert set(g.verdict.refused) == {"a", "b", "c"}  # none can reach 2 of 3
        for peer in "abc":
            g.failed[peer] = JobFailed("minority", "refused")
        with pytest.raises(JobFailed) as info:
            g.outcome(1.0, "echo")
        assert info.value.reason == "disagreement" and info.value.paid == 0
        for data in (b"x", b"y", b"z"):
            assert hashlib.sha256(data).hexdigest()[:16] in info.value.detail

    trio.run(main)


def test_decide_by_bounds_the_wait_after_the_first_commitment() -> None:
    async def main():
        g = _Replicas(bytes(16), 3, None)
        async with trio.open_nursery() as n:
            n.start_soon(g.decide_by, 5.0)
            v = await g.vote(commitment("a", b"x"))  # nobody else ever commits
        assert trio.current_time() == pytest.approx(5.0)
        assert v.paid == ("a",) and v.agreed is None  # cannot be proven wrong: paid

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def test_distinct_addresses() -> None:
    g = _Replicas(bytes(16), 2, None)
    g.candidates = ["p1", "p2", "p3"]
    g.addrs = {"p1": _hosts_of(["/ip4/127.0.0.2/tcp/1"]),
               "p2": _hosts_of(["/ip4/127.0.0.2/tcp/2", "/ip6/::1/tcp/2"]),
               "p3": _hosts_of(["/ip4/127.0.0.3/tcp/3"])}
    assert g.distinct_candidates() == ["p1", "p3"]  # p2 shares p1's address
    assert [g.take_candidate(), g.take_candidate(), g.take_candidate()] == ["p1", "p3", None]
