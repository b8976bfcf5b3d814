"""An in-memory gossip network implementing the node's ``Network`` port (no sockets).

Every publish runs each receiver's validator first and delivers only what it
accepts, as gossipsub does; ``block`` stops delivery from a peer.
"""

from __future__ import annotations

import trio


class FakeHub:
    def __init__(self) -> None:
        self.nets: list[FakeNet] = []


class _Peer:
    def __init__(self, peer_id: str) -> None:
        self.peer_id = peer_id
        self.addrs = (f"/memory/{peer_id}",)


class _Msg:
    def __init__(self, topic: str, data: bytes, origin: str) -> None:
        self.topic, self.data, self.origin = topic, data, origin


class FakeNet:
    def __init__(self, hub: FakeHub, peer_id: str) -> None:
        self.hub = hub
        self._peer_id = peer_id
        self.validators: dict = {}
        self.subs: dict[str, trio.MemorySendChannel] = {}
        self.blocked: dict[str, str] = {}
        self.published = 0
        hub.nets.append(self)

    @property
    def peer_id(self) -> str:
        return self._peer_id

    def listen_addrs(self) -> list[str]:
        return [f"/memory/{self._peer_id}"]

    def connected_peers(self):
        return [_Peer(n.peer_id) for n in self.hub.nets
                if n is not self and n.peer_id not in self.blocked]

    def set_validator(self, topic, fn) -> None:
        self.validators[topic] = fn

    async def publish(self, topic: str, data: bytes) -> None:
        self.published += 1
        for net in self.hub.nets:
            if self.peer_id in net.blocked:
                continue
            fn = net.validators.get(topic)
            if fn is not None and not fn(topic, data, self.peer_id):
                continue
            send = net.subs.get(topic)
            if send is not None:
                send.send_nowait(_Msg(topic, data, self.peer_id))
        await trio.lowlevel.checkpoint()

    async def subscribe(self, topic: str):
        send, recv = trio.open_memory_channel(1024)
        self.subs[topic] = send
        return recv

    async def block(self, peer_id: str, why: str) -> None:
        self.blocked[peer_id] = why
        await trio.lowlevel.checkpoint()
