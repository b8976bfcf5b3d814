"""The simulation fault switch (meca_node/net/faults.py) and the transport's hooks on it,
with a fake libp2p host and pubsub: no sockets."""

from __future__ import annotations

import pytest
import trio
import trio.testing
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.peer.id import ID

from meca_node.net import NetConfig
from meca_node.net.faults import (
    MAX_BLOCKED, FaultSpec, FaultSpecError, FaultsDisabled, FaultSwitch, parse_spec,
)
from meca_node.net.host import Libp2pNet


def peer(n: int) -> ID:
    return ID.from_pubkey(create_new_key_pair(bytes([n]) * 32).public_key)


A, B, C, ME = (peer(i) for i in (1, 2, 3, 9))


# -- the switch ------------------------------------------------------------------------
def test_a_switch_of_a_node_without_sim_faults_cannot_be_set():
    switch = FaultSwitch()
    with pytest.raises(FaultsDisabled, match="sim_faults = true"):
        switch.set({"block": [A.to_base58()]})
    with pytest.raises(FaultsDisabled):
        switch.apply(FaultSpec(delay_ms=5))
    assert switch.view() == {"enabled": False, "active": False, "block": [], "delay_ms": 0.0,
                             "drop": 0.0, "seed": 0, "changes": 0, "stats": {}}
    assert not switch.drop_incoming() and switch.delay_s == 0


def test_set_returns_what_changed_and_fields_left_out_keep_their_value():
    switch = FaultSwitch(enabled=True)
    added, removed = switch.set({"block": [A.to_base58(), B.to_base58()], "delay_ms": 50})
    assert added == {A.to_base58(), B.to_base58()} and removed == frozenset()
    assert switch.blocks(A.to_base58()) and not switch.blocks(C.to_base58())
    assert switch.delay_s == 0.05
    added, removed = switch.set({"block": [B.to_base58(), C.to_base58()]})
    assert added == {C.to_base58()} and removed == {A.to_base58()}
    assert switch.delay_s == 0.05  # kept
    added, removed = switch.set({"block": [], "delay_ms": 0})  # heal
    assert added == frozenset() and removed == {B.to_base58(), C.to_base58()}
    assert not switch.spec.active and switch.view()["changes"] == 3


@pytest.mark.parametrize("doc,field", [
    ({"block": "Qm"}, "block must be a list"),
    ({"block": [1]}, "block must be a list"),
    ({"block": ["not a peer id!"]}, "is not a peer id"),
    ({"block": ["x" * 10] * 1}, "is not a peer id"),
    ({"block": [A.to_base58()] * (MAX_BLOCKED + 1)}, "at most"),
    ({"delay_ms": -1}, "delay_ms must be a number from 0 to 30000"),
    ({"delay_ms": 40_000}, "delay_ms"),
    ({"delay_ms": True}, "delay_ms"),
    ({"drop": 1.5}, "drop must be a number from 0 to 1"),
    ({"drop": "half"}, "drop"),
    ({"seed": 1.5}, "seed must be an integer"),
    ({"partition": []}, "unknown field"),
])
def test_a_bad_setting_names_its_field_and_changes_nothing(doc, field):
    switch = FaultSwitch(enabled=True)
    switch.set({"drop": 0.25, "seed": 3})
    before = switch.view()
    with pytest.raises(FaultSpecError, match=field):
        switch.set(doc)
    assert switch.view() == before


def test_parse_spec_rejects_a_non_object():
    with pytest.raises(FaultSpecError, match="JSON object"):
        parse_spec([1, 2])  # type: ignore[arg-type]


def drops(switch: FaultSwitch, n: int) -> list[bool]:
    return [switch.drop_incoming() for _ in range(n)]


def test_drops_are_a_seeded_share_counted():
    a, b = FaultSwitch(enabled=True), FaultSwitch(enabled=True)
    a.set({"drop": 0.3, "seed": 42})
    b.set({"drop": 0.3, "seed": 42})
    first = drops(a, 2000)
    assert first == drops(b, 2000)  # the same seed, the same messages dropped
    assert 0.25 < sum(first) / 2000 < 0.35
    assert a.view()["stats"]["gossip_dropped"] == sum(first)
    a.set({"seed": 7})  # a new seed restarts the draw
    c = FaultSwitch(enabled=True)
    c.set({"drop": 0.3, "seed": 7})
    assert drops(a, 100) == drops(c, 100)
    a.set({"drop": 0})
    assert not any(drops(a, 100))
    a.set({"drop": 1})
    assert all(drops(a, 100))


# -- the hooks in the transport, over fakes ----------------------------------------------------
class FakeStream:
    def __init__(self, remote: ID) -> None:
        self.muxed_conn = type("Conn", (), {"peer_id": remote})()
        self.written: list[bytes] = []
        self.was_reset = False

    async def write(self, data: bytes) -> None:
        self.written.append(data)

    async def reset(self) -> None:
        self.was_reset = True

    async def close(self) -> None:
        pass


class FakeHost:
    def __init__(self) -> None:
        self.handlers: dict[str, object] = {}
        self.connected: set[ID] = {A, B, C}
        self.disconnected: list[ID] = []
        self.opened: list[ID] = []

    def get_id(self) -> ID:
        return ME

    def set_stream_handler(self, name, handler) -> None:
        self.handlers[name] = handler

    def get_connected_peers(self) -> list[ID]:
        return sorted(self.connected, key=str)

    async def disconnect(self, pid: ID) -> None:
        self.connected.discard(pid)
        self.disconnected.append(pid)

    async def new_stream(self, pid: ID, names) -> FakeStream:
        self.opened.append(pid)
        return FakeStream(pid)

    def get_peerstore(self) -> "FakePeerstore":
        return FakePeerstore()

    async def connect(self, info) -> None:
        """A dial (``open_stream`` to a peer not connected): it answers."""
        self.connected.add(info.peer_id)


class FakePeerstore:
    def addrs(self, pid: ID) -> list[str]:
        return ["/ip4/127.0.0.1/tcp/4001"]


class FakePubsub:
    def __init__(self) -> None:
        self.blacklist: set[ID] = set()
        self.validators: dict[str, object] = {}
        self.published: list[tuple[str, bytes, float]] = []

    @property
    def blacklisted_peers(self) -> set[ID]:
        return self.blacklist

    def remove_from_blacklist(self, pid: ID) -> None:
        self.blacklist.discard(pid)

    def set_topic_validator(self, topic, fn, is_async) -> None:
        self.validators[topic] = fn

    async def publish(self, topic: str, data: bytes) -> None:
        self.published.append((topic, data, trio.current_time()))


class Msg:
    def __init__(self, origin: ID, data: bytes = b"x") -> None:
        self.from_id = origin.to_bytes()
        self.data = data


def make_net(sim_faults: bool = True) -> tuple[Libp2pNet, FakeHost, FakePubsub]:
    host, pubsub = FakeHost(), FakePubsub()
    return Libp2pNet(host, pubsub, NetConfig(sim_faults=sim_faults)), host, pubsub


async def test_a_partition_cuts_peers_off_both_ways_and_a_heal_lets_them_back():
    net, host, pubsub = make_net()
    net.want(f"/ip4/127.0.0.2/tcp/1/p2p/{A.to_base58()}")
    await net.set_faults({"block": [A.to_base58(), B.to_base58()]})
    assert pubsub.blacklist == {A, B}  # no gossip from or through them
    assert host.connected == {C} and set(host.disconnected) == {A, B}
    assert net.is_blocked(A.to_base58()) and not net.is_blocked(C.to_base58())
    with pytest.raises(ConnectionError, match="fault switch"):
        await net.open_stream(A.to_base58(), "/meca/job/1.0.0")
    assert host.opened == []
    with pytest.raises(ConnectionError):
        await net.ping(B.to_base58())
    # their streams are refused
    handled: list[str] = []

    async def handler(stream) -> None:
        handled.append(stream.remote_peer)

    net.set_stream_handler("/meca/job/1.0.0", handler)
    refused, welcome = FakeStream(A), FakeStream(C)
    await host.handlers["/meca/job/1.0.0"](refused)
    await host.handlers["/meca/job/1.0.0"](welcome)
    assert refused.was_reset and handled == [C.to_base58()]
    # a blocked peer that dials in is dropped again by the dial loop, which does not redial it
    host.connected.add(A)
    with trio.move_on_after(0.1):
        await net._dial_loop()
    assert A not in host.connected
    assert net.dial_state()[0]["failures"] == 0  # not even tried
    stats = net.faults_view()["stats"]
    assert stats["disconnected"] == 3 and stats["streams_refused"] == 1
    assert stats["opens_refused"] == 1

    host.connected.add(B)  # B dialed in just before we heal: pubsub had refused it
    await net.set_faults({"block": []})  # heal
    assert pubsub.blacklist == set() and not net.is_blocked(A.to_base58())
    assert B not in host.connected and net.faults_view()["stats"]["redialed"] == 1
    await net.open_stream(A.to_base58(), "/meca/job/1.0.0")
    assert host.opened == [A]


async def test_a_heal_keeps_peers_cut_off_for_cause():
    net, _host, pubsub = make_net()
    await net.block(A.to_base58(), "sent junk")
    await net.set_faults({"block": [A.to_base58(), B.to_base58()]})
    await net.set_faults({"block": []})
    assert pubsub.blacklist == {A} and net.is_blocked(A.to_base58())


async def test_delays_slow_publishes_and_stream_writes(mock_clock):
    net, host, pubsub = make_net()
    await net.set_faults({"delay_ms": 250})
    t0 = trio.current_time()
    await net.publish("meca/adverts/1", b"hi")
    assert pubsub.published[0][2] - t0 == pytest.approx(0.25)
    stream = await net.open_stream(C.to_base58(), "/meca/job/1.0.0")
    t1 = trio.current_time()
    await stream.send(b"frame")
    await stream.send_many([b"a", b"b"])
    assert trio.current_time() - t1 == pytest.approx(0.5)
    assert net.faults_view()["stats"]["writes_delayed"] == 3
    await net.set_faults({"delay_ms": 0})
    t2 = trio.current_time()
    await stream.send(b"frame")
    assert trio.current_time() == t2


async def test_drops_reject_a_share_of_incoming_gossip_never_our_own():
    net, _host, pubsub = make_net()
    seen: list[str] = []
    net.set_validator("t", lambda topic, data, origin: seen.append(origin) or True)
    validate = pubsub.validators["t"]
    await net.set_faults({"drop": 0.5, "seed": 1})
    kept = sum(validate(A, Msg(A)) for _ in range(1000))
    assert 400 < kept < 600 and len(seen) == kept
    assert net.faults_view()["stats"]["gossip_dropped"] == 1000 - kept
    assert all(validate(ME, Msg(ME)) for _ in range(100))  # our own publishes pass


async def test_without_sim_faults_nothing_can_be_set_and_the_hooks_are_idle():
    net, host, pubsub = make_net(sim_faults=False)
    with pytest.raises(FaultsDisabled):
        await net.set_faults({"block": [A.to_base58()]})
    assert net.faults_view()["enabled"] is False and pubsub.blacklist == set()
    assert host.disconnected == []
    stream = await net.open_stream(A.to_base58(), "/meca/job/1.0.0")
    assert stream._faults is None  # writes are not even tested for a delay
    net.set_validator("t", lambda *_: True)
    assert pubsub.validators["t"](A, Msg(A))


@pytest.fixture
def mock_clock():
    return trio.testing.MockClock(autojump_threshold=0)
