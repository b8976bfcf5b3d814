"""Measured round trips to providers (node.rtt_ms) over the in-memory network, MockClock."""

from __future__ import annotations

import pytest
import trio

from meca_node import wire
from meca_node.core import Identity
from meca_node.node import Node, NodeSettings, SeededRandom, TrioClock
from meca_node.node import latency
from meca_node.node.latency import Latency, ewma

from fakenet import FakeHub, FakeNet

# mock_clock and genesis come from tests/node/conftest.py
HW = wire.Hardware(cpu_count=2, cpu_model="test", cpu_mhz=1000, mem_mib=1024, disk_mib=1)


def make_node(hub, genesis, i, roles) -> Node:
    identity = Identity(bytes([i + 1]) * 32)
    return Node(NodeSettings(roles=roles, advert_interval_s=5.0), identity, genesis,
                FakeNet(hub, identity.peer_id), TrioClock(), SeededRandom(i), HW, "amd64")


async def measured(node: Node, peer_id: str, until=lambda v: v is not None) -> float | None:
    while not until(node.rtt_ms(peer_id)):
        await node.latency.changed.wait()
    return node.rtt_ms(peer_id)


async def start(nursery, nodes) -> None:
    for n in nodes:
        await nursery.start(n.run)


async def test_providers_are_measured_smoothed_and_clients_are_not_pinged(mock_clock, genesis):
    hub = FakeHub()
    client, p1, p2, other = nodes = [
        make_node(hub, genesis, 0, ("client",)), make_node(hub, genesis, 1, ("provider",)),
        make_node(hub, genesis, 2, ("provider", "developer")), make_node(hub, genesis, 3,
                                                                        ("client",))]
    hub.rtt_ms.update({p1.net.peer_id: 20.0, p2.net.peer_id: 80.0})
    async with trio.open_nursery() as nursery:
        await start(nursery, nodes)
        with trio.fail_after(5):  # as soon as the providers' adverts arrive
            assert await measured(client, p1.net.peer_id) == pytest.approx(20.0)
            assert await measured(client, p2.net.peer_id) == pytest.approx(80.0)
        first = trio.current_time()
        assert client.rtt_ms(other.net.peer_id) is None  # a client is not pinged
        assert p1.rtt_ms(client.net.peer_id) is None
        with trio.fail_after(5):
            assert await measured(p1, p2.net.peer_id) == pytest.approx(80.0)  # providers too
        assert client.rtt_ms("12D3KooWnobody") is None

        # the next round, an interval later, moves the estimate by alpha
        hub.rtt_ms[p1.net.peer_id] = 50.0
        with trio.fail_after(60):
            value = await measured(client, p1.net.peer_id, lambda v: v != pytest.approx(20.0))
        assert value == pytest.approx(0.3 * 50 + 0.7 * 20)
        assert trio.current_time() - first >= latency.INTERVAL_S - latency.TICK_S
        status = client.status()["latency"]
        assert status["measured"] == 2 and status["pings"] >= 3 and "failed" not in status
        nursery.cancel_scope.cancel()


async def test_a_disconnected_provider_is_forgotten_and_measured_afresh(mock_clock, genesis):
    hub = FakeHub()
    client, p1 = make_node(hub, genesis, 0, ("client",)), make_node(hub, genesis, 1,
                                                                   ("provider",))
    pid = p1.net.peer_id
    hub.rtt_ms[pid] = 30.0
    async with trio.open_nursery() as nursery:
        await start(nursery, [client, p1])
        with trio.fail_after(5):
            await measured(client, pid)
        client.net.blocked[pid] = "test: the connection dropped"
        with trio.fail_after(latency.TICK_S * 2):
            await measured(client, pid, lambda v: v is None)
        hub.rtt_ms[pid] = 90.0
        del client.net.blocked[pid]
        with trio.fail_after(latency.TICK_S * 2):  # due at once, not smoothed with the old
            assert await measured(client, pid) == pytest.approx(90.0)
        nursery.cancel_scope.cancel()


async def test_failed_pings_change_nothing_then_forget_a_silent_provider(mock_clock, genesis):
    hub = FakeHub()
    client, p1, p2 = [make_node(hub, genesis, 0, ("client",))] + [
        make_node(hub, genesis, i, ("provider",)) for i in (1, 2)]
    silent, fine = p1.net.peer_id, p2.net.peer_id
    hub.rtt_ms.update({silent: 60_000.0, fine: 10.0})  # silent: every ping times out
    async with trio.open_nursery() as nursery:
        await start(nursery, [client, p1, p2])
        with trio.fail_after(5):
            await measured(client, fine)
        with trio.fail_after(latency.TIMEOUT_S + 2):
            while client.latency.stats["failed"] < 1:
                await client.latency.changed.wait()
        assert client.rtt_ms(silent) is None and client.rtt_ms(fine) == pytest.approx(10.0)

        hub.rtt_ms[silent] = 15.0  # answers again: measured at its next round
        with trio.fail_after(latency.INTERVAL_S + 2):
            assert await measured(client, silent) == pytest.approx(15.0)
        hub.rtt_ms[silent] = 60_000.0  # silent again: forgotten after FORGET_AFTER failures
        t0 = trio.current_time()
        with trio.fail_after(latency.INTERVAL_S * (latency.FORGET_AFTER + 1)):
            await measured(client, silent, lambda v: v is None)
        assert trio.current_time() - t0 >= latency.INTERVAL_S * (latency.FORGET_AFTER - 1)
        assert client.latency.stats["forgotten"] == 1
        assert client.rtt_ms(fine) == pytest.approx(10.0)
        nursery.cancel_scope.cancel()


class ManyPeers:
    """A network of ``n`` connected providers whose pings take 1 s; records concurrency."""

    peer_id = "self"

    def __init__(self, n: int) -> None:
        self.peers = [type("P", (), {"peer_id": f"p{i:02d}", "addrs": ()})() for i in range(n)]
        self.started: list[tuple[float, str]] = []
        self.in_flight = self.most_in_flight = 0

    def connected_peers(self):
        return self.peers

    async def ping(self, peer_id: str, timeout_s: float) -> float:
        self.started.append((trio.current_time(), peer_id))
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            if peer_id == "p07":
                raise ConnectionError("reset")  # a failure does not stop the round
            await trio.sleep(1.0)
            return 1000.0
        finally:
            self.in_flight -= 1


async def test_rounds_are_bounded_and_the_longest_waiting_go_first(mock_clock):
    net = ManyPeers(40)
    lat = Latency(net, lambda: [p.peer_id for p in net.peers] + ["self", "p99-not-connected"])
    async with trio.open_nursery() as nursery:
        await nursery.start(lat.run)
        with trio.fail_after(latency.INTERVAL_S):
            while lat.stats["pings"] + lat.stats["failed"] < 40:
                await lat.changed.wait()
        # a round: 16 peers, 4 at a time, 2 pings of 1 s each, then a tick before the next
        first_round = {p for t, p in net.started if t < 8.0 + latency.TICK_S}
        assert sorted(first_round) == [f"p{i:02d}" for i in range(latency.MAX_PER_ROUND)]
        assert net.most_in_flight == latency.CONCURRENT
        assert sorted({p for _, p in net.started}) == [f"p{i:02d}" for i in range(40)]
        assert len(net.started) == 2 * 40 - 1  # p07 failed its first ping: no second
        assert lat.rtt_ms("p07") is None and lat.stats["failed"] == 1
        assert lat.rtt_ms("p08") == 1000.0 and lat.rtt_ms("self") is None
        nursery.cancel_scope.cancel()


def test_due_orders_by_last_try_and_skips_self_and_recent():
    net = ManyPeers(0)
    lat = Latency(net, list)
    lat._tried.update({"a": 0.0, "b": 10.0, "c": 25.0})
    due = lat.due(40.0, {"a", "b", "c", "d", "self"}, ["a", "b", "c", "d", "self", "x"])
    assert due == ["d", "a", "b"]  # never tried first; c was tried under an interval ago


def test_ewma_takes_the_first_sample_as_is():
    assert ewma(None, 12.0) == 12.0
    assert ewma(10.0, 20.0) == pytest.approx(13.0)
