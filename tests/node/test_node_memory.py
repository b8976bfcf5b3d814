"""Node tests over an in-memory network with trio's MockClock: no sockets, no sleeps."""

from __future__ import annotations

import os

import pytest
import trio
from nacl.signing import SigningKey

from meca_node import wire
from meca_node.core import Identity
from meca_node.node import Node, NodeSettings, SeededRandom, TrioClock

from fakenet import FakeHub, FakeNet

HW = wire.Hardware(cpu_count=4, cpu_model="test", cpu_mhz=1000, mem_mib=2048, disk_mib=1)


def make_node(hub, genesis, i, **settings) -> Node:
    identity = Identity(bytes([i + 1]) * 32)
    net = FakeNet(hub, identity.peer_id)
    return Node(NodeSettings(roles=("provider",), advert_interval_s=5.0, **settings), identity,
                genesis, net, TrioClock(), SeededRandom(i), HW, "amd64")


async def wait_for_adverts(node: Node, count: int) -> None:
    while len(node.peerbook) < count:
        await node.advert_seen.wait()


async def test_three_nodes_see_each_others_signed_adverts(mock_clock, genesis):
    hub = FakeHub()
    nodes = [make_node(hub, genesis, i) for i in range(3)]
    async with trio.open_nursery() as nursery:
        for n in nodes:
            await nursery.start(n.run)
        t0 = trio.current_time()
        with trio.fail_after(10):
            for n in nodes:
                await wait_for_adverts(n, 2)
        assert trio.current_time() - t0 <= 5.0
        for n in nodes:
            others = {m.identity.peer_id for m in nodes if m is not n}
            assert n.advert_peer_ids() == others
            assert n.status()["gossip"]["dropped"] == {}
        nursery.cancel_scope.cancel()


async def test_adverts_repeat_every_interval(mock_clock, genesis):
    hub = FakeHub()
    node = make_node(hub, genesis, 0)
    async with trio.open_nursery() as nursery:
        await nursery.start(node.run)
        await trio.sleep(5.0 * 4 + 0.5)
        assert node.adverts_sent == 5  # at 0, 5, 10, 15, 20 s
        nursery.cancel_scope.cancel()


class Rogue:
    """Publishes raw bytes into the hub under its own peer id, with no validation."""

    def __init__(self, hub, peer_id="rogue"):
        self.net = FakeNet(hub, peer_id)

    async def send(self, data: bytes, topic=wire.TOPIC_ADVERTS):
        await self.net.publish(topic, data)


async def test_bad_messages_are_dropped_counted_and_an_oversized_sender_is_cut_off(
        mock_clock, genesis):
    hub = FakeHub()
    honest = make_node(hub, genesis, 0)
    friend = make_node(hub, genesis, 1)
    rogue = Rogue(hub)
    async with trio.open_nursery() as nursery:
        await nursery.start(honest.run)
        await nursery.start(friend.run)
        now = TrioClock().now_ms()
        key = SigningKey(b"\x07" * 32)
        good = wire.seal(friend.make_advert(), key=key, net=genesis.network_id, ts=now,
                         nonce=os.urandom(16))
        await rogue.send(good)
        await rogue.send(good)  # replay
        await rogue.send(wire.seal(friend.make_advert(), key=key, net=b"\0" * 32, ts=now,
                                   nonce=os.urandom(16)))
        await rogue.send(b"\x00garbage")
        dropped = honest.status()["gossip"]["dropped"]
        assert dropped == {"replay": 1, "wrong_network": 1, "malformed": 1}
        await rogue.send(b"\0" * (wire.Caps().gossip_message + 1))
        await trio.sleep(0.1)
        assert "rogue" in honest.net.blocked
        assert honest.status()["cut_off"]["rogue"].startswith("sent a")
        # the honest peer still gets through
        with trio.fail_after(10):
            await wait_for_adverts(honest, 2)  # friend + the key the rogue relayed once
        assert friend.identity.peer_id in honest.advert_peer_ids()
        nursery.cancel_scope.cancel()


async def test_repeated_invalid_messages_cut_the_origin_off(mock_clock, genesis):
    hub = FakeHub()
    node = make_node(hub, genesis, 0, strikes_before_cutoff=5)
    rogue = Rogue(hub)
    async with trio.open_nursery() as nursery:
        await nursery.start(node.run)
        for _ in range(5):
            await rogue.send(b"\x00not cbor")
        await trio.sleep(0.1)
        assert "rogue" in node.net.blocked
        assert node.status()["gossip"]["dropped"] == {"malformed": 5}
        nursery.cancel_scope.cancel()


def echo_offer(fee: int = 1) -> wire.TaskOffer:
    return wire.TaskOffer(name="echo", description="echo", image_cid="bafy", arch="amd64",
                          resources=wire.Resources(1000, 128, 0), environment="docker-cpu",
                          fee=fee, example_input_sha256=bytes(32),
                          example_output_sha256=bytes(32))


async def wait_for_offers(node: Node, count: int) -> None:
    while len(node.offers_view()["offers"]) != count:
        await node.offer_seen.wait()


async def test_offers_spread_stay_live_while_re_announced_and_withdraw(mock_clock, genesis):
    hub = FakeHub()
    dev, other = make_node(hub, genesis, 0), make_node(hub, genesis, 1)
    async with trio.open_nursery() as nursery:
        await nursery.start(dev.run)
        await nursery.start(other.run)
        published = await dev.publish_offer(echo_offer())
        with trio.fail_after(10):
            await wait_for_offers(other, 1)
        seen = other.offers_view()["offers"][0]
        assert seen["offer_id"] == published.offer_id.hex() and not seen["mine"]
        assert dev.offers_view()["offers"][0]["mine"]
        await trio.sleep(other.offers.ttl_ms / 1000 * 3)  # far past one TTL: re-announced
        assert [o["offer_id"] for o in other.offers_view()["offers"]] == [seen["offer_id"]]
        superseding = await dev.publish_offer(echo_offer(fee=2))
        with trio.fail_after(10):
            while other.offers_view()["offers"][0]["fee"] != 2:
                await other.offer_seen.wait()
        assert len(other.offers_view()["offers"]) == 1
        assert await dev.withdraw_offer("echo") == superseding.offer_id
        with trio.fail_after(10):
            await wait_for_offers(other, 0)
        with pytest.raises(LookupError):
            await dev.withdraw_offer("echo")
        nursery.cancel_scope.cancel()
