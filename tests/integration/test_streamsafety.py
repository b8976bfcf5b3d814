"""Correctness fixes to py-libp2p streams (meca_node/net/streamsafety.py) on real hosts:
concurrent long writes to one stream arrive whole, and a peer that sends a malformed
pubsub RPC loses its stream while the node keeps running and gossiping."""

from __future__ import annotations

import pytest
import trio
from libp2p.pubsub.gossipsub import PROTOCOL_ID_V11

from meca_node.net import NetConfig, open_net
from meca_node.net.framing import encode_uvarint

pytestmark = pytest.mark.integration
SEED_A, SEED_B, SEED_C = b"\x2a" * 32, b"\x2b" * 32, b"\x2c" * 32
SINK = "/meca/test-sink/1.0.0"


def cfg() -> NetConfig:
    return NetConfig(listen=("/ip4/127.0.0.1/tcp/0",), max_frame=1 << 20, dialback=False)


async def _connected(a, b) -> None:
    b.want(a.listen_addrs()[0])
    while a.peer_id not in {p.peer_id for p in b.connected_peers()}:
        await trio.sleep(0.05)  # real sockets: poll the host's state, bounded by fail_after


async def test_concurrent_long_writes_to_one_stream_arrive_whole():
    """Two tasks write 300 KiB messages (several yamux frames each, more than the window)
    to one stream at once, as py-libp2p's pubsub does; each arrives as one piece."""
    size, each = 300 * 1024, 6
    async with open_net(SEED_A, cfg()) as a, open_net(SEED_B, cfg()) as b:
        got: list[bytes] = []
        done = trio.Event()

        async def sink(stream):
            for _ in range(2 * each):
                frame = await stream.receive()
                if frame is None:
                    break
                got.append(frame)
            done.set()

        a.set_stream_handler(SINK, sink)
        with trio.fail_after(60):
            await _connected(a, b)
            s = await b.open_stream(a.peer_id, SINK)

            async def writer(byte: int) -> None:
                for _ in range(each):
                    await s.send(bytes([byte]) * size)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(writer, 0x41)
                nursery.start_soon(writer, 0x42)
            await done.wait()
        assert len(got) == 2 * each
        for frame in got:  # not two writers' frames mixed into one message
            assert len(frame) == size and frame in (b"A" * size, b"B" * size)


async def test_a_malformed_pubsub_rpc_ends_that_stream_not_the_node():
    async with open_net(SEED_A, cfg()) as a, open_net(SEED_B, cfg()) as b, \
            open_net(SEED_C, cfg()) as c:
        with trio.fail_after(60):
            sub = await a.subscribe("meca/test-safety")
            await b.subscribe("meca/test-safety")
            await _connected(a, b)
            await _connected(a, c)
            # c speaks gossipsub's protocol to a and sends a frame that is no RPC
            raw = await c._host.new_stream(a._host.get_id(), [PROTOCOL_ID_V11])
            garbage = b"\xff" * 64
            await raw.write(encode_uvarint(len(garbage)) + garbage)
            # a is still up and still gets b's gossip
            for i in range(300):  # until the mesh has formed (heartbeat 1 s)
                await b.publish("meca/test-safety", b"after %d" % i)
                with trio.move_on_after(0.2):
                    message = await sub.__anext__()
                    assert message.data.startswith(b"after")
                    break
            else:
                raise AssertionError("no gossip reached the node after the garbage")
