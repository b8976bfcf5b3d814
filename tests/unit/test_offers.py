"""The offer book: supersede by (key, name), withdraw with a memory, expiry, lookups, caps."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nacl.signing import SigningKey

from meca_node import wire
from meca_node.core import AmbiguousOffer, OfferBook, offer_id_of, peer_id_of

NET = b"\x11" * 32
T0 = 1_800_000_000_000
ALICE, BOB = SigningKey(b"\x01" * 32), SigningKey(b"\x02" * 32)
_nonce = iter(range(1, 10**6))


def offer(name="echo", fee=1, cid="bafy1") -> wire.TaskOffer:
    return wire.TaskOffer(name=name, description="d", image_cid=cid, arch="amd64",
                          resources=wire.Resources(1000, 128, 0), environment="docker-cpu",
                          fee=fee, example_input_sha256=bytes(32),
                          example_output_sha256=bytes(32))


def env(body, key=ALICE, ts=T0) -> wire.Envelope:
    raw = wire.seal(body, key=key, net=NET, ts=ts, nonce=next(_nonce).to_bytes(16, "big"))
    return wire.open_envelope(raw, max_size=65536)


def names(book, now=T0):
    return [(o.offer.name, o.offer.fee) for o in book.live(now)]


def test_newer_offer_of_the_same_name_and_key_supersedes_older_never():
    book = OfferBook(ttl_ms=60_000)
    first = env(offer(fee=1), ts=T0)
    assert book.observe(first, T0)
    assert book.observe(env(offer(fee=2), ts=T0 + 10), T0)
    assert not book.observe(env(offer(fee=9), ts=T0 + 5), T0)  # older, arriving late
    assert names(book) == [("echo", 2)]
    assert book.observe(env(offer(fee=3), key=BOB), T0)  # another developer: its own
    assert sorted(names(book)) == [("echo", 2), ("echo", 3)]


def test_offer_id_is_the_hash_of_key_and_offer_stable_across_re_announcements():
    import hashlib

    e = env(offer())
    book = OfferBook(ttl_ms=60_000)
    book.observe(e, T0)
    assert book.live(T0)[0].offer_id == offer_id_of(e) == hashlib.sha256(
        e.signer + wire.encode_body(e.body)).digest()
    again = env(offer(), ts=T0 + 30_000)  # re-signed later: same offer, same id
    assert offer_id_of(again) == offer_id_of(e)
    assert offer_id_of(env(offer(fee=2))) != offer_id_of(e)
    assert offer_id_of(env(offer(), key=BOB)) != offer_id_of(e)


def test_withdraw_removes_and_a_late_copy_does_not_resurrect():
    book = OfferBook(ttl_ms=60_000)
    e = env(offer(), ts=T0)
    book.observe(e, T0)
    assert book.observe(env(wire.TaskWithdraw("echo", offer_id_of(e)), ts=T0 + 1), T0)
    assert book.live(T0) == []
    assert not book.observe(e, T0 + 5)  # gossip redelivers the withdrawn offer
    assert book.live(T0 + 5) == []
    assert book.observe(env(offer(fee=4), ts=T0 + 2), T0 + 5)  # published anew later
    assert names(book, T0 + 5) == [("echo", 4)]


def test_a_withdraw_by_another_key_touches_nothing():
    book = OfferBook(ttl_ms=60_000)
    e = env(offer(), key=ALICE)
    book.observe(e, T0)
    assert not book.observe(env(wire.TaskWithdraw("echo", offer_id_of(e)), key=BOB,
                                ts=T0 + 1), T0)
    assert names(book) == [("echo", 1)]


def test_offers_expire_unless_re_announced():
    book = OfferBook(ttl_ms=1000)
    e = env(offer())
    book.observe(e, T0)
    assert book.live(T0 + 1000) != []
    assert book.live(T0 + 1001) == []
    assert not book.observe(e, T0 + 900)  # the same offer again: refreshed, not "changed"
    assert book.live(T0 + 1800) != []


def test_find_by_id_prefix_name_and_name_at_key():
    book = OfferBook(ttl_ms=60_000)
    a, b = env(offer(), key=ALICE), env(offer(fee=5), key=BOB)
    book.observe(a, T0)
    assert book.find("echo", T0).offer_id == offer_id_of(a)
    book.observe(b, T0)
    with pytest.raises(AmbiguousOffer) as err:
        book.find("echo", T0)
    alice = peer_id_of(ALICE.verify_key.encode())
    assert f"echo@{alice[-8:]}" in err.value.candidates and "offer id" in str(err.value)
    assert book.find(f"echo@{alice[-8:]}", T0).offer_id == offer_id_of(a)
    assert book.find(offer_id_of(b).hex()[:10], T0).offer_id == offer_id_of(b)
    assert book.find("nothing", T0) is None


def test_bounded_per_developer_and_in_total():
    book = OfferBook(ttl_ms=60_000, capacity=5, per_developer=3)
    for i in range(5):
        book.observe(env(offer(name=f"t{i}"), key=ALICE), T0)
    assert len(book) == 3
    for i in range(5):
        book.observe(env(offer(name=f"u{i}"), key=BOB), T0)
    assert len(book) == 5


def test_only_offers_and_withdrawals():
    with pytest.raises(TypeError):
        OfferBook(ttl_ms=1).observe(env(wire.JobAccept(bytes(16), 1, 0)), T0)


def scan(book, offer_id, now):
    """What ``get`` must answer: the live offer of that id, found the slow way."""
    return next((o for o in book.live(now) if o.offer_id == offer_id), None)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["offer", "offer", "withdraw"]),
                          st.sampled_from([ALICE, BOB]), st.sampled_from(["a", "b", "c"]),
                          st.integers(0, 3), st.integers(-5, 40), st.integers(0, 700)),
                max_size=25))
def test_get_by_id_agrees_with_a_scan_of_the_live_offers(ops):
    """Supersedes, late copies, withdrawals, the caps and expiry keep the id index true."""
    book = OfferBook(ttl_ms=1000, capacity=4, per_developer=3)
    seen, now = set(), T0
    for kind, key, name, fee, dts, step in ops:
        now += step
        if kind == "offer":
            e = env(offer(name=name, fee=fee), key=key, ts=now + dts)
            seen.add(offer_id_of(e))
        else:
            ids = sorted(seen) or [bytes(32)]
            e = env(wire.TaskWithdraw(name, ids[fee % len(ids)]), key=key, ts=now + dts)
        book.observe(e, now)
        assert len(book._by_id) == len(book)  # the index holds no stale ids: bounded
        for offer_id in seen:
            assert book.get(offer_id, now) == scan(book, offer_id, now)
            if book.get(offer_id, now) is not None:  # and find() by the whole id
                assert book.find(offer_id.hex(), now).offer_id == offer_id
    assert book.get(bytes(32), now) is None
