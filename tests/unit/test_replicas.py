"""Replicated runs (core/replicas.py): who is paid, who is refused, and when a refusal is a
proof; table-driven and with hypothesis."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nacl.signing import SigningKey

from meca_node import wire
from meca_node.core.replicas import (Commitment, check_refusal, decide, needed,
                                     refusal_holds)

NET = bytes([4]) * 32
JOB = bytes(range(16))
KEYS = [SigningKey(bytes([i + 1]) * 32) for i in range(6)]
CAP = 64 * 1024


def rc(data: bytes, job: bytes = JOB) -> wire.ResultCommit:
    return wire.ResultCommit(job_id=job, result_sha256=hashlib.sha256(data).digest(),
                             size=len(data))


def sealed(body, key: SigningKey, net: bytes = NET) -> bytes:
    nonce = hashlib.sha256(wire.encode_body(body) + bytes(key.verify_key)).digest()[:16]
    return wire.seal(body, key=key, net=net, ts=1_700_000_000_000, nonce=nonce)


def commitment(i: int, data: bytes) -> Commitment:
    body = rc(data)
    return Commitment(f"peer{i}", bytes(KEYS[i].verify_key), body.result_sha256, body.size,
                      sealed(body, KEYS[i]))


@pytest.mark.parametrize(("answers", "k", "paid", "refused", "agreed"), [
    ("aaa", 3, "012", "", b"a"),
    ("aab", 3, "01", "2", b"a"),
    ("abb", 3, "12", "0", b"b"),
    ("abc", 3, "", "012", None),  # nobody can be in a majority: all refused
    ("ab", 3, "01", "", None),  # a replica did not answer: neither can be proven wrong
    ("aa", 3, "01", "", b"a"),  # two of three agree: a majority even with one missing
    ("aabb", 4, "", "0123", None),  # 2:2 of 4: neither can reach 3 votes: all refused
    ("aab", 4, "01", "2", None),  # the unseen replica could make "a" a majority; not "b"
    ("aaab", 4, "012", "3", b"a"),
    ("aabbc", 5, "", "01234", None),  # nobody reaches 3 of 5
    ("aabc", 5, "01", "23", None),  # "a" could reach 3 with the unseen one; b, c cannot
    ("a", 1, "0", "", b"a"),
])
def test_decide_table(answers: str, k: int, paid: str, refused: str, agreed) -> None:
    commits = [commitment(i, ch.encode()) for i, ch in enumerate(answers)]
    v = decide(commits, k)
    assert v.paid == tuple(f"peer{i}" for i in paid)
    assert v.refused == tuple(f"peer{i}" for i in refused)
    assert v.agreed == (None if agreed is None else (hashlib.sha256(agreed).digest(), 1))


def test_decide_refuses_bad_input() -> None:
    with pytest.raises(ValueError, match="one commitment per provider"):
        decide([commitment(0, b"a"), commitment(0, b"a")], 3)
    with pytest.raises(ValueError, match="replicas must be"):
        decide([], 0)


@settings(max_examples=300, deadline=None, derandomize=True, database=None)
@given(st.integers(1, 7).flatmap(lambda k: st.tuples(
    st.just(k), st.lists(st.sampled_from(b"abc"), max_size=k))))
def test_every_refusal_is_provable_and_majority_is_paid(case) -> None:
    """Whatever the answers: each refused provider's own check accepts its proof; the
    majority (if any) is paid; nobody is both paid and refused."""
    k, answers = case
    commits = [commitment(i % 6, bytes([a])) if i < 6 else None
               for i, a in enumerate(answers)]
    commits = [c for c in commits if c is not None]
    v = decide(commits, k)
    assert set(v.paid).isdisjoint(v.refused)
    assert set(v.paid) | set(v.refused) == {c.provider for c in commits}
    for c in commits:
        if v.agreed is not None and c.result == v.agreed:
            assert c.provider in v.paid
        if c.provider in v.refused:
            i = int(c.provider[4:])
            refusal = wire.PaymentRefusal(job_id=JOB, commits=v.proof_for(c.provider, commits))
            assert check_refusal(refusal, rc(bytes([answers[i]])), c.key, k, NET, CAP) is None


def _refusal(*pairs) -> wire.PaymentRefusal:
    return wire.PaymentRefusal(job_id=JOB, commits=tuple(sealed(b, key) for b, key in pairs))


OWN = rc(b"lie")
ME = bytes(KEYS[0].verify_key)


@pytest.mark.parametrize(("refusal", "replicas", "why"), [
    (_refusal((rc(b"x"), KEYS[1]), (rc(b"x"), KEYS[2])), 3, None),
    (_refusal((rc(b"x"), KEYS[1])), 3, "leave our result a possible majority"),
    (_refusal((rc(b"lie"), KEYS[1]), (rc(b"x"), KEYS[2])), 3, "possible majority"),
    (_refusal((rc(b"x"), KEYS[1]), (rc(b"x"), KEYS[1])), 3, "two commitments from one"),
    (_refusal((rc(b"x"), KEYS[0]), (rc(b"x"), KEYS[2])), 3, "or one from us"),
    (_refusal((rc(b"x", bytes(16)), KEYS[1]), (rc(b"x"), KEYS[2])), 3, "not a ResultCommit of"),
    (_refusal((wire.JobAccept(job_id=JOB, price=1, queue_position=0), KEYS[1]),
              (rc(b"x"), KEYS[2])), 3, "not a ResultCommit"),
    (_refusal((rc(b"x"), KEYS[1]), (rc(b"x"), KEYS[2])), 1, "not replicated"),
    (_refusal((rc(b"x"), KEYS[1]), (rc(b"y"), KEYS[2]), (rc(b"z"), KEYS[3])), 3,
     "possible majority"),  # more commitments than replicas
    (_refusal((rc(b"x"), KEYS[1]), (rc(b"x"), KEYS[2])), 5, "possible majority"),
])
def test_check_refusal_table(refusal, replicas: int, why) -> None:
    got = check_refusal(refusal, OWN, ME, replicas, NET, CAP)
    assert (got is None) if why is None else (why in got)


def test_check_refusal_other_network_and_unknown_signer() -> None:
    other = wire.PaymentRefusal(job_id=JOB, commits=(sealed(rc(b"x"), KEYS[1], bytes(32)),
                                                     sealed(rc(b"x"), KEYS[2])))
    assert "another network" in check_refusal(other, OWN, ME, 3, NET, CAP)
    good = _refusal((rc(b"x"), KEYS[1]), (rc(b"x"), KEYS[2]))
    known = {bytes(KEYS[1].verify_key)}
    assert "not known as a provider" in check_refusal(good, OWN, ME, 3, NET, CAP,
                                                      is_provider=known.__contains__)
    assert "another job" in check_refusal(
        wire.PaymentRefusal(job_id=bytes(16), commits=good.commits), OWN, ME, 3, NET, CAP)
    bad = wire.PaymentRefusal(job_id=JOB, commits=(b"junk", good.commits[1]))
    assert "does not open" in check_refusal(bad, OWN, ME, 3, NET, CAP)


def test_needed_and_holds() -> None:
    assert [needed(k) for k in range(1, 7)] == [1, 2, 2, 3, 3, 4]
    a, b = (b"a", 1), (b"b", 1)
    assert refusal_holds(a, [b, b], 3)
    assert not refusal_holds(a, [b], 3)
    assert not refusal_holds(a, [b, b, b], 3)
