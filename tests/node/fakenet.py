"""An in-memory gossip network implementing the node's ``Network`` port (no sockets).

Every publish runs each receiver's validator first and delivers only what it
accepts, as gossipsub does; ``block`` stops delivery from a peer. Streams are pairs of
bounded memory channels carrying frames; the handler runs in the hub's nursery
(``FakeHub.nursery``, set by the test).
"""

from __future__ import annotations

import trio


class FakeHub:
    def __init__(self) -> None:
        self.nets: list[FakeNet] = []
        self.nursery: trio.Nursery | None = None  # where stream handlers run
        self.rtt_ms: dict[str, float] = {}  # a ping's round trip to a peer id (default 1 ms)


class FakeStream:
    """One side of an in-memory stream of frames."""

    def __init__(self, send: trio.MemorySendChannel, recv: trio.MemoryReceiveChannel,
                 remote: str, max_frame: int) -> None:
        self._send, self._recv = send, recv
        self.remote_peer = remote
        self.max_frame = max_frame

    async def send(self, data: bytes) -> None:
        if len(data) > self.max_frame:
            raise ValueError(f"a frame of {len(data)} bytes is over {self.max_frame}")
        await self._send.send(data)

    async def send_many(self, frames: list[bytes]) -> None:
        for frame in frames:
            await self.send(frame)

    async def receive(self) -> bytes | None:
        try:
            return await self._recv.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError, trio.BrokenResourceError):
            return None

    async def close(self) -> None:
        await self._send.aclose()

    reset = close


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
        self.handlers: dict[str, tuple] = {}
        hub.nets.append(self)

    @property
    def peer_id(self) -> str:
        return self._peer_id

    def listen_addrs(self) -> list[str]:
        return [f"/memory/{self._peer_id}"]

    def connected_peers(self):
        return [_Peer(n.peer_id) for n in self.hub.nets
                if n is not self and n.peer_id not in self.blocked]

    def learn_addrs(self, peer_id: str, addrs) -> None:
        """Every net on the hub reaches every other: nothing to learn."""

    def reachability(self) -> dict:
        return {"status": "unknown"}

    def reachable_peers(self) -> set[str]:
        return set()

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

    def set_stream_handler(self, protocols, handler, max_frame: int | None = None) -> None:
        names = [protocols] if isinstance(protocols, str) else list(protocols)
        for name in names:
            self.handlers[name] = (handler, max_frame or 1 << 20)

    async def ping(self, peer_id: str, timeout_s: float) -> float:
        """A round trip of ``hub.rtt_ms[peer_id]`` on trio's clock (MockClock in tests)."""
        if peer_id in self.blocked or peer_id not in {p.peer_id for p in self.connected_peers()}:
            raise ConnectionError(f"no connection to {peer_id}")
        t0 = trio.current_time()
        with trio.move_on_after(timeout_s) as scope:
            await trio.sleep(self.hub.rtt_ms.get(peer_id, 1.0) / 1000)
        if scope.cancelled_caught:
            raise TimeoutError(f"no answer to a ping from {peer_id} within {timeout_s} s")
        return (trio.current_time() - t0) * 1000

    async def open_stream(self, peer_id: str, protocols, max_frame: int | None = None):
        names = [protocols] if isinstance(protocols, str) else list(protocols)
        net = next((n for n in self.hub.nets if n.peer_id == peer_id), None)
        if net is None or self.peer_id in net.blocked or peer_id in self.blocked:
            raise ConnectionError(f"no connection to {peer_id}")
        name = next((n for n in names if n in net.handlers), None)
        if name is None:
            raise ConnectionError(f"{peer_id} speaks none of {names}")
        handler, their_max = net.handlers[name]
        a_send, b_recv = trio.open_memory_channel(64)
        b_send, a_recv = trio.open_memory_channel(64)
        assert self.hub.nursery is not None, "set hub.nursery to serve streams"
        self.hub.nursery.start_soon(handler, FakeStream(b_send, b_recv, self.peer_id,
                                                        their_max))
        await trio.lowlevel.checkpoint()
        return FakeStream(a_send, a_recv, peer_id, max_frame or 1 << 20)
