"""Ping (/ipfs/ping/1.0.0) between real libp2p hosts on 127.0.0.1, and the RTT a node keeps."""

from __future__ import annotations

import pytest
import trio
from libp2p.host.ping import PingService
from libp2p.io.utils import read_exactly
from libp2p.peer.id import ID
from nacl.signing import SigningKey

from meca_node import wire
from meca_node.core import Identity
from meca_node.net import NetConfig, open_net
from meca_node.net.ping import PROTOCOL
from meca_node.node import Node, NodeSettings, OsRandom, SystemClock

pytestmark = pytest.mark.integration
HW = wire.Hardware(cpu_count=2, cpu_model="test", cpu_mhz=1000, mem_mib=2048, disk_mib=1)


def cfg() -> NetConfig:
    return NetConfig(listen=("/ip4/127.0.0.1/tcp/0",))


async def test_pings_reuse_one_stream_and_other_clients_are_answered():
    async with open_net(b"\x0a" * 32, cfg()) as a, open_net(b"\x0b" * 32, cfg()) as b:
        with trio.fail_after(10):
            await b.connect(a.listen_addrs()[0])
            rtts = [await b.ping(a.peer_id) for _ in range(5)]
        assert all(0 < r < 1000 for r in rtts)  # float ms, not whole ms
        assert b.pinger.stats["opened"] == 1 and b.pinger.stats["pings"] == 5
        assert a.pinger.stats["served"] == 5
        # py-libp2p's own client (a stream per call) is answered by our handler
        with trio.fail_after(10):
            assert len(await PingService(b._host).ping(ID.from_base58(a.peer_id), 2)) == 2
        assert a.pinger.stats["served"] == 7
        # and so is a ping from the other side
        with trio.fail_after(10):
            assert await a.ping(b.peer_id) > 0


async def test_a_closed_stream_is_replaced_and_a_silent_peer_times_out():
    async with open_net(b"\x0c" * 32, cfg()) as a, open_net(b"\x0d" * 32, cfg()) as b:
        async def one_pong_then_close(stream):  # as a peer that closes idle streams
            await stream.write(await read_exactly(stream, 32))
            await stream.close()

        a._host.set_stream_handler(PROTOCOL, one_pong_then_close)
        with trio.fail_after(10):
            await b.connect(a.listen_addrs()[0])
            for _ in range(3):
                assert await b.ping(a.peer_id) > 0
        assert b.pinger.stats["opened"] == 3 and b.pinger.stats["failed"] == 0

        async def silent(stream):
            await trio.sleep_forever()  # cancelled when the host stops

        a._host.set_stream_handler(PROTOCOL, silent)
        b.pinger.forget(set())  # the next ping opens a stream to the silent handler
        with trio.fail_after(10):
            with pytest.raises(TimeoutError):
                await b.ping(a.peer_id, timeout_s=0.5)
            with pytest.raises(ConnectionError):
                await b.ping(Identity(b"\x33" * 32).peer_id)  # not connected
            assert await a.ping(b.peer_id) > 0  # b still answers; nothing broke
        assert b.pinger.stats["failed"] == 1


async def test_a_client_node_measures_the_rtt_of_a_provider_node():
    genesis = wire.make_genesis("ping-test", SigningKey(b"\x01" * 32), 0, [])
    ids = [Identity(bytes([i]) * 32) for i in (0x21, 0x22)]
    async with open_net(ids[0].seed, cfg()) as net_c, open_net(ids[1].seed, cfg()) as net_p:
        client = Node(NodeSettings(roles=("client",)), ids[0], genesis, net_c, SystemClock(),
                      OsRandom(), HW, "amd64")
        provider = Node(NodeSettings(roles=("provider",)), ids[1], genesis, net_p,
                        SystemClock(), OsRandom(), HW, "amd64")
        async with trio.open_nursery() as nursery:
            await nursery.start(client.run)
            await nursery.start(provider.run)
            with trio.fail_after(20):
                await net_c.connect(net_p.listen_addrs()[0])
                while client.rtt_ms(net_p.peer_id) is None:  # after the provider's advert
                    await client.latency.changed.wait()
            rtt = client.rtt_ms(net_p.peer_id)
            assert rtt is not None and 0 < rtt < 1000
            assert provider.rtt_ms(net_c.peer_id) is None  # clients are not pinged
            assert client.status()["latency"]["measured"] == 1
            print(f"loopback RTT client -> provider: {rtt:.3f} ms")
            nursery.cancel_scope.cancel()
