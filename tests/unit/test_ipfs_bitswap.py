"""Bitswap 1.2.0 (ipfs/specs bitswap-protocol.md): the message codec, Server and Session.

Wire numbers are the spec's: Message {wantlist 1, blocks 2 (1.0.0), payload 3,
blockPresences 4, pendingBytes 5}; Entry {block 1, priority 2, cancel 3, wantType 4
(Block 0, Have 1), sendDontHave 5}; Block {prefix 1, data 2}; BlockPresence {cid 1,
type 2 (Have 0, DontHave 1)}. Expected bytes below are built from those numbers directly.
"""

from __future__ import annotations

import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meca_node.ipfs import bitswap
from meca_node.ipfs.bitswap import (
    DONT_HAVE, HAVE, MAX_BLOCK, MAX_ENTRIES, MAX_MESSAGE, MAX_PEER_WANTS, REPLY_BYTES,
    WANT_BLOCK, WANT_HAVE, BitswapError, Entry, Message, Server, Session, decode,
)
from meca_node.ipfs.cid import CID, DAG_PB, RAW
from meca_node.ipfs.pb import field_bytes, field_varint, varint


def raw(data: bytes) -> CID:
    return CID.of(data, RAW)


# -- codec -------------------------------------------------------------------------------------
@st.composite
def blocks(draw) -> tuple[CID, bytes]:
    data = draw(st.binary(max_size=40))
    version = draw(st.sampled_from([0, 1]))
    codec = DAG_PB if version == 0 else draw(st.sampled_from([RAW, DAG_PB]))
    return CID.of(data, codec, version), data


cids = blocks().map(lambda b: b[0])
entries = st.builds(Entry, cids, st.sampled_from([WANT_BLOCK, WANT_HAVE]), st.booleans(),
                    st.booleans(), st.integers(0, 2**31 - 1))
messages = st.builds(Message, st.lists(entries, max_size=5), st.booleans(),
                     st.lists(blocks(), max_size=4),
                     st.lists(st.tuples(cids, st.sampled_from([HAVE, DONT_HAVE])), max_size=4))


@given(messages)
def test_codec_round_trip(msg):
    assert decode(msg.encode()) == msg


def test_encoding_uses_the_spec_field_numbers():
    v0, v1 = CID.of(b"p", DAG_PB, 0), raw(b"r")
    msg = Message(wants=[Entry(v1, WANT_HAVE, cancel=True, send_dont_have=True, priority=7)],
                  full=True, blocks=[(v0, b"p"), (v1, b"r")],
                  presences=[(v1, HAVE), (v0, DONT_HAVE)])
    entry = (field_bytes(1, bytes(v1)) + field_varint(2, 7) + field_varint(3, 1)
             + field_varint(4, 1) + field_varint(5, 1))
    assert msg.encode() == (
        field_bytes(1, field_bytes(1, entry) + field_varint(2, 1))
        + field_bytes(3, field_bytes(1, bytes([0x00, 0x70, 0x12, 0x20])) + field_bytes(2, b"p"))
        + field_bytes(3, field_bytes(1, bytes([0x01, 0x55, 0x12, 0x20])) + field_bytes(2, b"r"))
        + field_bytes(4, field_bytes(1, bytes(v1)) + field_varint(2, 0))
        + field_bytes(4, field_bytes(1, bytes(v0)) + field_varint(2, 1)))
    assert decode(msg.encode()) == msg


def test_proto3_defaults_decode_as_the_spec_says():
    cid = raw(b"x")
    bare = field_bytes(1, field_bytes(1, field_bytes(1, bytes(cid))))
    assert decode(bare).wants == [Entry(cid, WANT_BLOCK, False, False, 1)]
    presence = field_bytes(4, field_bytes(1, bytes(cid)))
    assert decode(presence).presences == [(cid, HAVE)]
    assert decode(b"") == Message() and not Message()
    assert decode(field_varint(5, 12345)) == Message()  # pendingBytes is informational


def test_bitswap_1_0_blocks_field_is_read_as_cidv0():
    msg = decode(field_bytes(2, b"old") + field_bytes(2, b""))
    assert msg.blocks == [(CID.of(b"old", DAG_PB, 0), b"old"), (CID.of(b"", DAG_PB, 0), b"")]
    assert all(cid.version == 0 for cid, _ in msg.blocks)


def test_the_block_cid_comes_from_the_bytes_not_the_sender():
    cid = raw(b"claimed")
    msg = decode(Message(blocks=[(cid, b"actual")]).encode())
    assert msg.blocks == [(raw(b"actual"), b"actual")]


WANT = field_bytes(1, bytes(raw(b"w")))
BLOCK_V1 = bytes([0x01, 0x55, 0x12, 0x20])


def wantlist(*entry_bodies: bytes, extra: bytes = b"") -> bytes:
    return field_bytes(1, b"".join(field_bytes(1, e) for e in entry_bodies) + extra)


def payload(prefix: bytes, data: bytes = b"d") -> bytes:
    return field_bytes(3, field_bytes(1, prefix) + field_bytes(2, data))


@pytest.mark.parametrize(("data", "match"), [
    (b"\0" * (MAX_MESSAGE + 1), f"over {MAX_MESSAGE}"),
    (payload(BLOCK_V1, b"\0" * (MAX_BLOCK + 1)), f"is over {MAX_BLOCK}"),
    (field_bytes(2, b"\0" * (MAX_BLOCK + 1)), f"is over {MAX_BLOCK}"),
    (field_bytes(6, b""), "unexpected message field 6"),
    (field_varint(1, 1), "unexpected message field 1"),
    (wantlist(extra=field_bytes(3, b"")), "unexpected wantlist field 3"),
    (wantlist(WANT + field_varint(6, 1)), "unexpected wantlist entry field 6"),
    (wantlist(WANT + field_varint(4, 2)), "unexpected wantlist entry field 4"),  # WantType 2
    (wantlist(field_varint(2, 1)), "wantlist entry without a CID"),
    (field_bytes(3, field_bytes(1, BLOCK_V1) + field_bytes(2, b"") + field_varint(3, 1)),
     "unexpected block field 3"),
    (field_bytes(3, field_bytes(2, b"d")), "without prefix or data"),
    (field_bytes(3, field_bytes(1, BLOCK_V1)), "without prefix or data"),
    (payload(bytes([0x01, 0x55, 0x12, 0x20, 0x00])), "bytes after the block prefix"),
    (payload(bytes([0x00, 0x55, 0x12, 0x20])), "always dag-pb"),
    (field_bytes(4, field_bytes(1, bytes(raw(b"p"))) + field_varint(2, 2)),
     "unexpected presence field 2"),
    (field_bytes(4, field_varint(2, 1)), "presence without a CID"),
    (field_bytes(4, field_bytes(1, b"\x01\x55")), "malformed CID bytes"),
    (payload(BLOCK_V1, b"abc")[:-1], "malformed message"),
    (b"\x1a", "malformed message: truncated varint"),
    (b"\x09" + bytes(8), "wire type 1"),                                   # fixed64
])
def test_decode_refuses(data, match):
    with pytest.raises(BitswapError, match=match):
        decode(data)


@pytest.mark.parametrize("prefix", [
    bytes([0x01, 0x71, 0x12, 0x20]),              # dag-cbor
    bytes([0x01, 0x55, 0x13, 0x40]),              # sha2-512
    b"\x01\x55" + varint(0xB220) + b"\x20",        # blake2b-256
])
def test_a_block_we_cannot_store_is_skipped_not_a_protocol_error(prefix):
    msg = decode(payload(prefix))
    assert msg.blocks == [] and msg.skipped == 1


def test_entry_caps():
    one = field_bytes(1, WANT)
    assert len(decode(field_bytes(1, one * MAX_ENTRIES)).wants) == MAX_ENTRIES
    with pytest.raises(BitswapError, match=f"more than {MAX_ENTRIES} wantlist entries"):
        decode(field_bytes(1, one * (MAX_ENTRIES + 1)))
    with pytest.raises(BitswapError, match=f"more than {MAX_ENTRIES} wantlist entries"):
        decode(field_bytes(1, one * MAX_ENTRIES) + field_bytes(1, one))  # two wantlist fields
    presence = field_bytes(4, field_bytes(1, bytes(raw(b"p"))))
    assert len(decode(presence * MAX_ENTRIES).presences) == MAX_ENTRIES
    with pytest.raises(BitswapError, match=f"more than {MAX_ENTRIES} blocks and presences"):
        decode(presence * (MAX_ENTRIES // 2) + field_bytes(2, b"") * (MAX_ENTRIES // 2 + 1))


def test_the_largest_block_and_message_pass_and_one_byte_more_does_not():
    block = b"\0" * MAX_BLOCK
    data = Message(blocks=[(raw(block), block)] * 2).encode()
    room = MAX_MESSAGE - len(data)
    data += field_bytes(2, b"\0" * (room - 1 - len(varint(room))))  # a 1.0.0 block as filler
    assert len(data) == MAX_MESSAGE
    assert [d for _, d in decode(data).blocks][:2] == [block, block]
    with pytest.raises(BitswapError, match="over"):
        decode(data + b"\0")


def test_every_truncation_of_a_valid_message_decodes_or_raises_bitswap_error():
    msg = Message(wants=[Entry(raw(b"a"), WANT_HAVE, send_dont_have=True)], full=True,
                  blocks=[(raw(b"blk"), b"blk")], presences=[(raw(b"c"), DONT_HAVE)]).encode()
    for cut in range(len(msg)):
        try:
            decode(msg[:cut])
        except BitswapError:
            pass
    with pytest.raises(BitswapError):
        decode(msg[:-1])


@pytest.mark.parametrize("cid_bytes", [
    b"\x01\x71\x12\x20" + bytes(32),          # dag-cbor, sha2-256
    b"\x01\x55\x13\x40" + bytes(64),          # raw, sha2-512
], ids=["dag-cbor", "sha2-512"])
def test_a_want_for_a_foreign_cid_is_not_a_protocol_violation(cid_bytes):
    msg = wantlist(field_bytes(1, cid_bytes) + field_varint(5, 1), WANT)
    decode(msg)  # the entry may be dropped or kept; the message is valid Bitswap


def mutate(data: bytes, rnd: random.Random) -> bytes:
    b = bytearray(data)
    for _ in range(rnd.randint(1, 4)):
        op = rnd.randrange(5)
        if op == 0 and b:
            b[rnd.randrange(len(b))] ^= 1 << rnd.randrange(8)
        elif op == 1 and b:
            b[rnd.randrange(len(b))] = rnd.choice([0, 1, 0x7F, 0x80, 0xFF, rnd.randrange(256)])
        elif op == 2:
            b[rnd.randrange(len(b) + 1):0] = rnd.randbytes(rnd.randint(1, 4))
        elif op == 3 and b:
            i = rnd.randrange(len(b))
            del b[i:i + rnd.randint(1, 8)]
        elif op == 4:
            del b[rnd.randrange(len(b) + 1):]
    return bytes(b)


def decodes_or_bitswap_error(data: bytes) -> bool:
    try:
        decode(data)
    except BitswapError:
        return False
    return True


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=300))
def test_fuzz_random_bytes_only_raise_bitswap_error(data):
    decodes_or_bitswap_error(data)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(messages, st.integers(0, 2**32))
def test_fuzz_mutated_messages_only_raise_bitswap_error(msg, seed):
    rnd = random.Random(seed)
    data = msg.encode()
    for _ in range(20):
        decodes_or_bitswap_error(mutate(data, rnd))


# -- server ------------------------------------------------------------------------------------
class Blocks:
    def __init__(self, *data: bytes):
        self.blocks = {raw(d).multihash: d for d in data}

    def add(self, data: bytes) -> CID:
        self.blocks[raw(data).multihash] = data
        return raw(data)

    def lookup(self, cid: CID) -> bytes | None:
        return self.blocks.get(cid.multihash)

    def has(self, cid: CID) -> bool:
        return cid.multihash in self.blocks

    def server(self) -> Server:
        return Server(self.lookup, self.has)


def wants(*entries: Entry, full: bool = False) -> Message:
    return Message(wants=list(entries), full=full)


def one(replies: list[Message]) -> Message:
    assert len(replies) == 1
    return replies[0]


def test_server_answers_each_kind_of_want():
    store = Blocks(b"have")
    srv = store.server()
    have, missing = raw(b"have"), raw(b"missing")
    assert one(srv.on_message("p", wants(Entry(have, WANT_HAVE)))) == \
        Message(presences=[(have, HAVE)])
    assert one(srv.on_message("p", wants(Entry(have, WANT_HAVE, send_dont_have=True)))) == \
        Message(presences=[(have, HAVE)])
    assert one(srv.on_message("p", wants(Entry(have)))) == Message(blocks=[(have, b"have")])
    assert one(srv.on_message("p", wants(Entry(missing, WANT_HAVE, send_dont_have=True)))) == \
        Message(presences=[(missing, DONT_HAVE)])
    assert one(srv.on_message("p", wants(Entry(missing, send_dont_have=True)))) == \
        Message(presences=[(missing, DONT_HAVE)])
    assert srv.on_message("p", wants(Entry(missing))) == []
    assert srv.on_message("p", wants(Entry(missing, WANT_HAVE))) == []


def test_server_answers_in_the_cid_form_the_peer_asked_for():
    data = b"\x0a\x02\x08\x01"
    store = Blocks()
    store.blocks[CID.of(data, DAG_PB, 0).multihash] = data
    v0 = CID.of(data, DAG_PB, 0)
    reply = one(store.server().on_message("p", wants(Entry(v0))))
    assert reply.blocks == [(v0, data)]
    assert decode(reply.encode()).blocks == [(v0, data)]  # sent under a CIDv0 prefix


def test_server_remembers_wants_and_answers_them_when_the_block_arrives():
    store = Blocks()
    srv = store.server()
    a, b, c = raw(b"a"), raw(b"b"), raw(b"c")
    srv.on_message("p", wants(Entry(a), Entry(b, WANT_HAVE), Entry(c)))
    srv.on_message("q", wants(Entry(a, WANT_HAVE, send_dont_have=True)))
    srv.on_message("p", wants(Entry(c, cancel=True)))
    assert srv.on_new_block(store.add(b"a"), b"a") == {
        "p": Message(blocks=[(a, b"a")]), "q": Message(presences=[(a, HAVE)])}
    assert srv.on_new_block(a, b"a") == {}  # answered once
    assert srv.on_new_block(store.add(b"b"), b"b") == {"p": Message(presences=[(b, HAVE)])}
    assert srv.on_new_block(store.add(b"c"), b"c") == {}  # cancelled
    srv.on_message("r", wants(Entry(raw(b"d"))))
    srv.forget("r")
    assert srv.on_new_block(store.add(b"d"), b"d") == {}


def test_a_block_served_at_once_is_not_remembered():
    store = Blocks(b"x")
    srv = store.server()
    srv.on_message("p", wants(Entry(raw(b"x"))))
    assert srv.on_new_block(raw(b"x"), b"x") == {}


def test_a_full_wantlist_replaces_the_ledger():
    store = Blocks()
    srv = store.server()
    a, b = raw(b"a"), raw(b"b")
    srv.on_message("p", wants(Entry(a)))
    srv.on_message("p", wants(Entry(b), full=True))
    assert srv.on_new_block(store.add(b"a"), b"a") == {}
    assert srv.on_new_block(store.add(b"b"), b"b") == {"p": Message(blocks=[(b, b"b")])}
    srv.on_message("p", wants(Entry(raw(b"c"))))
    srv.on_message("p", wants(full=True))  # an empty full wantlist: wants nothing
    assert srv.on_new_block(store.add(b"c"), b"c") == {}


def test_the_ledger_stays_bounded_and_drops_the_oldest():
    store = Blocks()
    srv = store.server()
    cids = [raw(i.to_bytes(4, "big")) for i in range(MAX_PEER_WANTS + 10)]
    for start in range(0, len(cids), MAX_ENTRIES):
        srv.on_message("p", wants(*(Entry(c) for c in cids[start:start + MAX_ENTRIES])))
    assert len(srv.ledgers["p"]) == MAX_PEER_WANTS
    oldest, newest = (0).to_bytes(4, "big"), (MAX_PEER_WANTS + 9).to_bytes(4, "big")
    assert srv.on_new_block(store.add(oldest), oldest) == {}  # dropped
    assert srv.on_new_block(store.add(newest), newest) == {"p": Message(blocks=[(cids[-1],
                                                                                newest)])}


def test_replies_are_split_at_about_reply_bytes():
    size = 300 * 1024
    data = [bytes([i]) * size for i in range(7)]
    store = Blocks(*data)
    replies = store.server().on_message("p", wants(*(Entry(raw(d)) for d in data)))
    assert REPLY_BYTES // size == 3 and [len(r.blocks) for r in replies] == [3, 3, 1]
    assert [d for r in replies for _, d in r.blocks] == data
    for r in replies:
        assert sum(len(d) for _, d in r.blocks) <= REPLY_BYTES
        assert decode(r.encode()) == r  # each fits a message the peer will take


def test_a_block_bigger_than_reply_bytes_goes_alone():
    big, small = b"\1" * (REPLY_BYTES + 1), b"small"
    store = Blocks(big, small)
    replies = store.server().on_message(
        "p", wants(Entry(raw(small)), Entry(raw(big)), Entry(raw(small), WANT_HAVE)))
    assert [[d for _, d in r.blocks] for r in replies] == [[small], [big], []]
    assert replies[2].presences == [(raw(small), HAVE)]


# -- session -----------------------------------------------------------------------------------
def kinds(out: dict[str, Message]) -> dict[str, list[tuple]]:
    """peer -> [(cid, want type, cancel, send_dont_have)]"""
    return {p: [(e.cid, e.want_type, e.cancel, e.send_dont_have) for e in m.wants]
            for p, m in out.items()}


def block_msg(data: bytes) -> Message:
    return decode(Message(blocks=[(raw(data), data)]).encode())


def presence(cid: CID, kind: int) -> Message:
    return Message(presences=[(cid, kind)])


X = raw(b"x")


def test_want_sends_want_block_to_one_peer_and_want_have_to_the_rest():
    s = Session(["A", "B", "C"])
    assert kinds(s.want([X], 0)) == {"A": [(X, WANT_BLOCK, False, True)],
                                     "B": [(X, WANT_HAVE, False, True)],
                                     "C": [(X, WANT_HAVE, False, True)]}
    assert s.want([X], 1) == {} and s.pending == 1


def test_want_blocks_are_spread_over_peers():
    s = Session(["A", "B"])
    y = raw(b"y")
    s.want([X], 0)
    assert kinds(s.want([y], 0)) == {"B": [(y, WANT_BLOCK, False, True)],
                                     "A": [(y, WANT_HAVE, False, True)]}


def test_dont_have_from_the_asked_peer_moves_the_want_block_to_a_have():
    s = Session(["A", "B"])
    s.want([X], 0)
    assert s.on_message("B", presence(X, HAVE), 1) == ([], {})
    got, out = s.on_message("A", presence(X, DONT_HAVE), 2)
    assert got == [] and kinds(out) == {"B": [(X, WANT_BLOCK, False, True)]}
    assert s.failed is None


def test_dont_have_first_then_a_have_asks_the_have():
    s = Session(["A", "B"])
    s.want([X], 0)
    assert s.on_message("A", presence(X, DONT_HAVE), 1) == ([], {})
    _, out = s.on_message("B", presence(X, HAVE), 2)
    assert kinds(out) == {"B": [(X, WANT_BLOCK, False, True)]}


def test_dont_have_from_every_peer_fails_the_session():
    s = Session(["A", "B"])
    s.want([X], 0)
    s.on_message("B", presence(X, DONT_HAVE), 1)
    assert s.failed is None
    s.on_message("A", presence(X, DONT_HAVE), 2)
    assert s.failed == X


def test_dont_have_from_every_peer_fails_the_session_in_any_order():
    s = Session(["A", "B"])
    s.want([X], 0)
    s.on_message("A", presence(X, DONT_HAVE), 1)  # the want-block peer answers first
    s.on_message("B", presence(X, DONT_HAVE), 2)
    assert s.failed == X


def test_removing_the_last_undecided_peer_fails_the_session():
    s = Session(["A", "B"])
    s.want([X], 0)
    s.on_message("A", presence(X, DONT_HAVE), 1)
    s.remove_peer("B", 2)
    assert s.failed == X


def test_a_block_resolves_the_want_counts_bytes_and_cancels_elsewhere():
    s = Session(["A", "B", "C"])
    s.want([X], 0)
    got, out = s.on_message("B", block_msg(b"x"), 1)
    assert got == [(X, b"x")] and s.pending == 0
    assert s.received_from == {"B": 1}
    assert kinds(out) == {"A": [(X, WANT_BLOCK, True, False)],
                          "C": [(X, WANT_BLOCK, True, False)]}
    assert s.outstanding.get("A", 0) == 0
    assert s.on_message("A", block_msg(b"x"), 2) == ([], {})  # a duplicate: dropped
    assert s.received_from == {"B": 1}


def test_the_wanted_cid_form_is_returned():
    v0 = CID.of(b"v0 block", DAG_PB, 0)
    s = Session(["A"])
    s.want([v0], 0)
    got, _ = s.on_message("A", block_msg(b"v0 block"), 1)  # arrives under a raw prefix
    assert got == [(v0, b"v0 block")]


def test_unsolicited_blocks_and_presences_are_ignored():
    s = Session(["A", "B"])
    s.want([X], 0)
    assert s.on_message("A", block_msg(b"other"), 1) == ([], {})
    assert s.on_message("A", presence(raw(b"other"), HAVE), 1) == ([], {})
    assert s.received_from == {} and s.pending == 1


def test_tick_moves_a_slow_want_block_to_another_have():
    s = Session(["A", "B"], want_timeout_s=10)
    s.want([X], 0)
    s.on_message("B", presence(X, HAVE), 1)
    assert s.tick(10) == {}
    assert kinds(s.tick(10.5)) == {"A": [(X, WANT_BLOCK, True, False)],
                                   "B": [(X, WANT_BLOCK, False, True)]}
    assert s.tick(15) == {}
    assert kinds(s.tick(21)) == {"B": [(X, WANT_BLOCK, True, False)]}
    assert s.failed == X  # both timed out: nobody left


def test_remove_peer_reassigns_the_want_block():
    s = Session(["A", "B"])
    s.want([X], 0)
    s.on_message("B", presence(X, HAVE), 1)
    assert kinds(s.remove_peer("A", 2)) == {"B": [(X, WANT_BLOCK, False, True)]}
    assert "A" not in s.peers and "A" not in s.outstanding
    assert s.remove_peer("B", 3) == {} and s.failed == X


def test_add_peer_sends_want_have_for_pending_wants():
    s = Session(["A"])
    y = raw(b"y")
    s.want([X, y], 0)
    assert kinds(s.add_peer("B", 1)) == {"B": [(X, WANT_HAVE, False, True),
                                               (y, WANT_HAVE, False, True)]}
    assert s.add_peer("B", 1) == {} and s.peers == ["A", "B"]
    s.on_message("A", presence(X, DONT_HAVE), 2)
    _, out = s.on_message("B", presence(X, HAVE), 3)
    assert kinds(out) == {"B": [(X, WANT_BLOCK, False, True)]}
    got, out = s.on_message("B", block_msg(b"x"), 4)
    assert got == [(X, b"x")] and kinds(out) == {"A": [(X, WANT_BLOCK, True, False)]}


def test_a_server_with_size_of_answers_with_references_read_only_when_sent():
    """Replies name the blocks (split by their sizes); nothing is read until the sender
    resolves them, so a huge wantlist never sits in memory."""
    sizes = {raw(bytes([i]) * 10).multihash: 400_000 for i in range(5)}
    reads = []

    def lookup(cid):
        reads.append(cid)
        return None

    server = Server(lookup, lambda cid: cid.multihash in sizes,
                    lambda cid: sizes.get(cid.multihash))
    cids = [raw(bytes([i]) * 10) for i in range(5)]
    replies = server.on_message("A", wants(*[Entry(c) for c in cids]))
    assert reads == []
    assert [r.refs for r in replies] == [cids[0:2], cids[2:4], cids[4:5]]
    assert all(r.blocks == [] for r in replies)
    with pytest.raises(ValueError, match="resolve"):
        replies[0].encode()
