"""The gossip gate: each drop reason, the order of checks, and state that forgeries cannot touch."""

from __future__ import annotations

import pytest
from nacl.signing import SigningKey

from meca_node import wire
from meca_node.core import DROP_REASONS, GateConfig, GossipGate, ReplayWindow, SignerRateLimiter

NET = b"\x11" * 32
NOW = 1_800_000_000_000
KEY = SigningKey(b"\x01" * 32)
ADVERT = wire.HostAdvert(
    roles=("provider",), arch="amd64",
    hardware=wire.Hardware(cpu_count=2, cpu_model="x", cpu_mhz=1, mem_mib=1, disk_mib=1),
    free=wire.Resources(1000, 128, 0), price=1, environments=(), cached_images=(), queue=0,
    addrs=())


def seal(body=ADVERT, *, key=KEY, net=NET, ts=NOW, nonce=b"\x02" * 16) -> bytes:
    return wire.seal(body, key=key, net=net, ts=ts, nonce=nonce)


def gate(**kw) -> GossipGate:
    return GossipGate(GateConfig(network_id=NET, **kw))


def forged() -> bytes:
    obj = wire.cbor_decode(seal())
    obj["signer"] = bytes(SigningKey(b"\x09" * 32).verify_key)
    return wire.cbor_encode(obj)


@pytest.mark.parametrize("name,data,topic,reason", [
    ("valid", seal(), wire.TOPIC_ADVERTS, None),
    ("oversize", b"\xa0" + b"\0" * 70_000, wire.TOPIC_ADVERTS, "oversize"),
    ("malformed", b"\xff\x00junk", wire.TOPIC_ADVERTS, "malformed"),
    ("forged", forged(), wire.TOPIC_ADVERTS, "bad_signature"),
    ("other network", seal(net=b"\x22" * 32), wire.TOPIC_ADVERTS, "wrong_network"),
    ("stale", seal(ts=NOW - 121_000), wire.TOPIC_ADVERTS, "stale"),
    ("future", seal(ts=NOW + 121_000), wire.TOPIC_ADVERTS, "future"),
    ("edge of window", seal(ts=NOW - 120_000), wire.TOPIC_ADVERTS, None),
    ("wrong topic", seal(), wire.TOPIC_OFFERS, "wrong_topic"),
    ("unknown topic", seal(), "meca/other/1", "wrong_topic"),
])
def test_single_message_verdicts(name, data, topic, reason):
    g = gate()
    v = g.check(data, topic, NOW)
    assert v.reason == reason, (name, v)
    if reason is None:
        assert v.ok and v.envelope.body == ADVERT
        assert g.stats.accepted == {"HostAdvert": 1}
    else:
        assert g.stats.dropped == {reason: 1}
        assert reason in DROP_REASONS


def test_replay_is_dropped_but_forgeries_do_not_poison_the_cache():
    g = gate()
    honest = seal(nonce=b"\x07" * 16)
    # a forgery that reuses the honest signer's nonce must not block the honest message
    obj = wire.cbor_decode(seal(key=SigningKey(b"\x05" * 32), nonce=b"\x07" * 16))
    obj["signer"] = bytes(KEY.verify_key)
    assert g.check(wire.cbor_encode(obj), wire.TOPIC_ADVERTS, NOW).reason == "bad_signature"
    assert g.check(honest, wire.TOPIC_ADVERTS, NOW).ok
    assert g.check(honest, wire.TOPIC_ADVERTS, NOW + 1).reason == "replay"


def test_flood_from_one_key_is_throttled_then_banned_while_others_pass():
    g = gate(rate_per_s=5, burst=10, ban_after=20, ban_ms=60_000)
    reasons = [g.check(seal(nonce=i.to_bytes(16, "big")), wire.TOPIC_ADVERTS, NOW).reason
               for i in range(40)]
    assert reasons[:10] == [None] * 10
    assert set(reasons[10:]) <= {"rate_limited", "banned"}
    assert "banned" in reasons
    other = SigningKey(b"\x03" * 32)
    assert g.check(seal(key=other), wire.TOPIC_ADVERTS, NOW).ok
    # banned for ban_ms even though tokens have refilled
    assert g.check(seal(nonce=b"\xaa" * 16), wire.TOPIC_ADVERTS, NOW + 30_000).reason == "banned"
    assert g.check(seal(nonce=b"\xab" * 16, ts=NOW + 61_000), wire.TOPIC_ADVERTS,
                   NOW + 61_000).ok


def test_rate_limiter_refills_over_time():
    rl = SignerRateLimiter(rate_per_s=2, burst=2, ban_after=100)
    assert rl.allow(b"k", 0) is None and rl.allow(b"k", 0) is None
    assert rl.allow(b"k", 0) == "rate_limited"
    assert rl.allow(b"k", 500) is None  # 0.5 s at 2/s = one token
    assert rl.allow(b"k", 500) == "rate_limited"


def test_rate_limiter_memory_is_bounded():
    rl = SignerRateLimiter(rate_per_s=1, burst=1, max_signers=100)
    for i in range(1000):
        rl.allow(i.to_bytes(4, "big"), 0)
    assert len(rl._buckets) == 100


def test_replay_window_expires_and_bounds_memory():
    w = ReplayWindow(window_ms=1000, capacity=3)
    assert w.check_and_add(b"s", b"1", ts=0, now_ms=0)
    assert not w.check_and_add(b"s", b"1", ts=0, now_ms=10)
    assert w.check_and_add(b"s", b"1", ts=2000, now_ms=2000)  # expired, seen anew
    for n in (b"2", b"3", b"4"):
        assert w.check_and_add(b"s", n, ts=2000, now_ms=2000)
    assert len(w) == 3
    # evicted entries raise the floor: anything older than what we forgot is refused
    assert not w.check_and_add(b"s", b"old", ts=1000, now_ms=2000)


def test_each_topic_has_its_own_buckets_and_entries_a_larger_one():
    g = gate(rate_per_s=1.0, burst=2, entry_rate_per_s=1.0, entry_burst=5, ban_after=3)
    transfer = wire.Transfer(seq=0, prev=bytes(32), to=bytes(32), amount=1, memo="")
    verdicts = [g.check(seal(transfer, nonce=bytes([i]) * 16), wire.TOPIC_RECEIPTS, NOW).reason
                for i in range(9)]
    assert verdicts == [None] * 5 + ["rate_limited", "rate_limited", "banned", "banned"]
    # banned for flooding entries, the same key's advert still passes (its own bucket)
    assert g.check(seal(nonce=b"\x77" * 16), wire.TOPIC_ADVERTS, NOW).ok


def _entries(n: int, *, key=KEY, net=NET) -> wire.Entries:
    return wire.Entries(entries=tuple(
        wire.SignedEntry(raw=seal(wire.Transfer(seq=i, prev=bytes(32), to=bytes(32), amount=1,
                                                memo=""), key=key, net=net,
                                  ts=NOW - 10**9, nonce=bytes([i]) * 16))
        for i in range(n)))


def test_an_entries_message_opens_each_entry_and_costs_a_token_per_eight():
    g = gate(entry_rate_per_s=0.001, entry_burst=10, ban_after=100)
    relay = SigningKey(b"\x05" * 32)
    body = _entries(wire.MAX_GOSSIP_ENTRIES)  # signed by KEY long ago, passed on by relay
    first = g.check(seal(body, key=relay, nonce=b"\x31" * 16), wire.TOPIC_RECEIPTS, NOW)
    assert first.ok and [e.raw for e in first.entries] == [e.raw for e in body.entries]
    assert {e.signer for e in first.entries} == {bytes(KEY.verify_key)}
    assert g.stats.accepted["Entries"] == 1 and g.stats.entries["Transfer"] == 64
    # 64 entries cost 8 of the relay's 10 tokens: a second full message is refused,
    # one of up to 8 entries still passes
    assert g.check(seal(body, key=relay, nonce=b"\x32" * 16), wire.TOPIC_RECEIPTS,
                   NOW).reason == "rate_limited"
    assert g.check(seal(_entries(8), key=relay, nonce=b"\x33" * 16), wire.TOPIC_RECEIPTS,
                   NOW).ok


@pytest.mark.parametrize("inner,reason", [
    (lambda: seal(ADVERT, nonce=b"\x41" * 16), "wrong_topic"),
    (lambda: _entries(1, net=b"\x22" * 32).entries[0].raw, "wrong_network"),
    (lambda: forged(), "bad_signature"),
    (lambda: b"\xff\x00junk", "malformed"),
])
def test_one_bad_entry_drops_the_whole_entries_message(inner, reason):
    good = _entries(2).entries
    body = wire.Entries(entries=(*good, wire.SignedEntry(raw=inner())))
    v = gate().check(seal(body, key=SigningKey(b"\x05" * 32)), wire.TOPIC_RECEIPTS, NOW)
    assert v.reason == reason and v.envelope is None and v.entries == ()
    assert "entry 2" in v.detail


def test_entries_the_node_has_are_not_checked_again(monkeypatch):
    """An entry whose exact bytes the node holds (``known_entry`` by SHA-256) is taken as
    the node's checked envelope; only the others are opened and checked."""
    import hashlib

    from meca_node.core import gate as gate_module

    body = _entries(4)
    held = {hashlib.sha256(e.raw).digest(): wire.open_envelope(e.raw, max_size=10**5)
            for e in body.entries[:3]}
    opened: list[bytes] = []
    real = gate_module.open_entry

    def counting(raw: bytes, network_id: bytes):
        opened.append(raw)
        return real(raw, network_id)
    monkeypatch.setattr(gate_module, "open_entry", counting)
    g = gate()
    g.known_entry = held.get
    v = g.check(seal(body, key=SigningKey(b"\x05" * 32)), wire.TOPIC_RECEIPTS, NOW)
    assert v.ok and [e.raw for e in v.entries] == [e.raw for e in body.entries]
    assert opened == [body.entries[3].raw]
    assert v.entries[0] is held[hashlib.sha256(body.entries[0].raw).digest()]
    # a bad entry among known ones still drops the message
    bad = wire.Entries(entries=(*body.entries[:3], wire.SignedEntry(raw=forged())))
    v = g.check(seal(bad, key=SigningKey(b"\x05" * 32), nonce=b"\x61" * 16),
                wire.TOPIC_RECEIPTS, NOW)
    assert v.reason == "bad_signature" and "entry 3" in v.detail
