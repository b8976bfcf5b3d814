"""Missing ledger entries fetched from peers (node/ledger_sync.py) over the in-memory
network with MockClock: a node that missed gossip catches up by itself, a Receipt handed
over in a job pulls the payer's earlier entries, own entries are re-announced to peers that
are new, and bad answers are refused."""

from __future__ import annotations

from contextlib import asynccontextmanager

import pytest
import trio
from nacl.signing import SigningKey

from meca_node import wire
from meca_node.core import Identity
from meca_node.core.ledger import Want
from meca_node.node import Node, NodeSettings, SeededRandom, TrioClock
from meca_node.node.ledger import RECEIVE_AFTER_S, REGOSSIP_AFTER_S
from meca_node.node.ledger_sync import PROTOCOL, REANNOUNCE_MIN_S, TICK_S

from fakenet import FakeHub, FakeNet

HW = wire.Hardware(cpu_count=4, cpu_model="test", cpu_mhz=1000, mem_mib=2048, disk_mib=1)
IDS = [Identity(bytes([i + 1]) * 32) for i in range(4)]


@pytest.fixture
def genesis():
    return wire.make_genesis("sync", SigningKey(b"\x09" * 32), 0,
                             [(IDS[0].public_key, 1000)])


def make_node(hub, genesis, i) -> Node:
    net = FakeNet(hub, IDS[i].peer_id)
    return Node(NodeSettings(roles=("client",), advert_interval_s=5.0), IDS[i], genesis, net,
                TrioClock(), SeededRandom(i), HW, "amd64")


@asynccontextmanager
async def running(genesis, *which: int):
    """Nodes ``which`` (by identity) running on one in-memory hub; cancelled after."""
    hub = FakeHub()
    nodes = [make_node(hub, genesis, i) for i in which]
    async with trio.open_nursery() as nursery:
        hub.nursery = nursery
        for n in nodes:
            await nursery.start(n.run)
        yield hub, nursery, nodes
        nursery.cancel_scope.cancel()


async def until(node: Node, ok) -> None:
    while not ok():
        await node.ledger.changed.wait()


async def test_a_node_that_missed_gossip_fetches_the_entries_itself(mock_clock, genesis):
    async with running(genesis, 0, 1, 2) as (hub, nursery, (a, b, c)):
        c.net.blocked[a.net.peer_id] = "test: partitioned from a"  # c misses a's gossip
        for i in range(70):  # more than the pending window of 64; to a key with no node
            await a.ledger.send(IDS[3].public_key, 1, f"t{i}")
        with trio.fail_after(30):
            await until(b, lambda: b.ledger.next_entry(IDS[0].public_key)[0] == 70)
        assert c.ledger.next_entry(IDS[0].public_key)[0] == 0
        del c.net.blocked[a.net.peer_id]  # healed: the next entry shows what is missing
        await a.ledger.send(IDS[3].public_key, 1, "after")
        with trio.fail_after(30):
            await until(c, lambda: c.ledger.next_entry(IDS[0].public_key)[0] == 71)
        assert c.ledger.balance(IDS[0].public_key) == b.ledger.balance(IDS[0].public_key)
        assert c.ledger_sync.stats["fetched"] >= 70
        assert a.ledger_sync.stats["served_entries"] + b.ledger_sync.stats[
            "served_entries"] >= 70


async def test_receives_waiting_for_a_source_pull_the_payer_entry(mock_clock, genesis):
    async with running(genesis, 0, 1, 2) as (hub, nursery, (a, b, c)):
        c.net.blocked[a.net.peer_id] = "test"
        await a.ledger.send(IDS[1].public_key, 40)  # b receives it (auto-receive) and
        with trio.fail_after(30):                     # c sees only b's Receive
            await until(c, lambda: c.ledger.balance(IDS[1].public_key) == 40)
        assert c.ledger.balance(IDS[0].public_key) == 960


async def test_take_payment_fetches_the_payers_missing_entries_from_the_payer(
        mock_clock, genesis):
    async with running(genesis, 0, 1) as (hub, nursery, (a, b)):
        b.net.blocked[a.net.peer_id] = "test: gossip lost"
        for i in range(100):
            await a.ledger.send(IDS[2].public_key, 1)
        last = await a.ledger.send(IDS[1].public_key, 5)  # seq 100: far past the window
        # the direct path (no gossip) opens a stream to a; allow streams but no gossip
        b.net.blocked.pop(a.net.peer_id)
        a_gossip = a.net.publish

        async def no_gossip(topic, data):  # a's gossip still lost
            await trio.lowlevel.checkpoint()
        a.net.publish = no_gossip
        with trio.fail_after(30):
            why = await b.ledger.take_payment(last, peer=a.net.peer_id)
        assert why is None and b.ledger.next_entry(IDS[0].public_key)[0] == 101
        a.net.publish = a_gossip


async def test_own_entries_are_re_announced_to_a_peer_new_since_start(mock_clock, genesis):
    async with running(genesis, 0) as (hub, nursery, (a,)):
        env = await a.ledger.send(IDS[1].public_key, 7)  # stored; nobody to gossip to
        b = make_node(hub, genesis, 1)  # a peer that connects later
        await nursery.start(b.run)
        with trio.fail_after(60):
            await until(b, lambda: b.ledger.next_entry(IDS[0].public_key)[0] == 1)
        assert b.ledger.chains.entries(IDS[0].public_key)[0].raw == env.raw
        assert a.ledger_sync.stats["reannounced"] >= 1


async def test_wrong_answers_are_refused_and_bad_requests_reset(mock_clock, genesis):
    async with running(genesis, 0, 1, 2) as (hub, nursery, (a, b, liar)):
        env = await a.ledger.send(IDS[1].public_key, 3)

        async def lie(stream):  # answers with an entry of another account
            await stream.receive()
            await stream.send(env.raw)
            await stream.close()
        liar.net.set_stream_handler(PROTOCOL, lie)
        want = Want(IDS[2].public_key, 0, 1)
        with pytest.raises(wire.WireError):
            await b.ledger_sync.fetch(liar.net.peer_id, want)
        assert await b.ledger_sync.fetch(a.net.peer_id, Want(IDS[0].public_key, 0, 5)) == [env]
        assert await b.ledger_sync.fetch(a.net.peer_id, Want(IDS[0].public_key, 1, 5)) == []
        stream = await b.net.open_stream(a.net.peer_id, PROTOCOL)
        await stream.send(b"junk")
        assert await stream.receive() is None
        assert a.ledger_sync.stats["refused"] == 1


async def test_a_lost_tail_of_entries_is_healed_by_the_head_re_announce(mock_clock, genesis):
    async with running(genesis, 0, 2) as (hub, nursery, (a, c)):
        c.net.blocked[a.net.peer_id] = "test: partitioned"
        for _ in range(3):
            await a.ledger.send(IDS[3].public_key, 2)
        del c.net.blocked[a.net.peer_id]  # healed, and a sends nothing more
        t0 = trio.current_time()
        with trio.fail_after(60):
            await until(c, lambda: c.ledger.next_entry(IDS[0].public_key)[0] == 3)
        assert trio.current_time() - t0 <= REANNOUNCE_MIN_S + TICK_S + 1


async def test_a_peer_back_after_being_away_gets_what_was_signed_meanwhile(mock_clock,
                                                                           genesis):
    async with running(genesis, 0, 1) as (hub, nursery, (a, b)):
        await trio.sleep(2 * TICK_S)  # a's sync has seen b connected
        a.net.blocked[b.net.peer_id] = b.net.blocked[a.net.peer_id] = "test: b is away"
        await a.ledger.send(IDS[3].public_key, 4)
        await trio.sleep(3 * (REANNOUNCE_MIN_S + TICK_S))  # a's head re-announce: lost too
        assert b.ledger.next_entry(IDS[0].public_key)[0] == 0
        assert a.ledger_sync.stats["reannounced"] == 1
        del a.net.blocked[b.net.peer_id], b.net.blocked[a.net.peer_id]  # b is back
        t0 = trio.current_time()
        with trio.fail_after(60):
            await until(b, lambda: b.ledger.next_entry(IDS[0].public_key)[0] == 1)
        assert trio.current_time() - t0 <= REANNOUNCE_MIN_S + 2 * TICK_S + 1


async def test_a_payment_the_payer_did_not_gossip_is_gossiped_by_its_taker(mock_clock,
                                                                           genesis):
    async with running(genesis, 0, 1, 2) as (hub, nursery, (a, b, c)):
        quiet = a.ledger._publish

        async def no_gossip(topic, data):  # a payer that hides its entry
            await trio.lowlevel.checkpoint()
        a.ledger._publish = no_gossip
        hidden = await a.ledger.send(IDS[3].public_key, 6)
        assert await b.ledger.take_payment(hidden, peer=a.net.peer_id) is None
        with trio.fail_after(30):
            await until(c, lambda: c.ledger.next_entry(IDS[0].public_key)[0] == 1)
        assert b.ledger.stats["regossiped"] == 1
        a.ledger._publish = quiet
        shown = await a.ledger.send(IDS[3].public_key, 6)  # gossiped by the payer itself
        with trio.fail_after(30):
            await until(b, lambda: b.ledger.next_entry(IDS[0].public_key)[0] == 2)
        assert await b.ledger.take_payment(shown, peer=a.net.peer_id) is None
        await trio.sleep(2 * REGOSSIP_AFTER_S)
        assert b.ledger.stats["regossiped"] == 1  # not again: everyone has it


async def test_a_payment_is_received_after_a_delay_and_never_from_a_forked_payer(
        mock_clock, genesis):
    async with running(genesis, 0, 1) as (hub, nursery, (a, b)):
        t0 = trio.current_time()
        await a.ledger.send(IDS[1].public_key, 10)
        with trio.fail_after(60):
            await until(b, lambda: b.ledger.balance(IDS[1].public_key) == 10)
        assert trio.current_time() - t0 >= RECEIVE_AFTER_S
        # a double spend to b at one seq: b applies the first, sees the fork, receives none
        seq, prev = a.ledger.next_entry()
        x, y = (wire.open_envelope(a.seal(wire.Transfer(
            seq=seq, prev=prev, to=IDS[1].public_key, amount=amount, memo="")),
            max_size=10**5) for amount in (7, 8))
        await b.ledger.on_gossip(x)
        await b.ledger.on_gossip(y)
        assert b.ledger.is_refused(IDS[0].public_key)
        await trio.sleep(3 * RECEIVE_AFTER_S)
        assert b.ledger.balance(IDS[1].public_key) == 10
        assert b.ledger.stats["auto_received"] == 1 and b.ledger.view()["outstanding"] == 7
