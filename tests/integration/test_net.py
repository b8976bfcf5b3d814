"""Real libp2p hosts on 127.0.0.1 in one process: framed streams, caps, redial after a drop."""

from __future__ import annotations

import pytest
import trio

from meca_node.net import FrameError, FrameReader, NetConfig, open_net
from meca_node.net.framing import encode_uvarint

pytestmark = pytest.mark.integration
SEED_A, SEED_B = b"\x0a" * 32, b"\x0b" * 32


def cfg(port: int, **kw) -> NetConfig:
    return NetConfig(listen=(f"/ip4/127.0.0.1/tcp/{port}",), max_frame=1024, **kw)


async def wait_connected(net, peer_id: str) -> None:
    while peer_id not in {p.peer_id for p in net.connected_peers()}:
        await trio.sleep(0.05)  # real sockets: poll the host's state, bounded by fail_after


async def test_framed_echo_and_oversized_frame_is_refused():
    async with open_net(SEED_A, cfg(0)) as a, open_net(SEED_B, cfg(0)) as b:
        async def echo(stream):
            while (frame := await stream.receive()) is not None:
                await stream.send(frame[::-1])

        async def liar(stream):
            await stream._stream.write(encode_uvarint(10_000) + b"y" * 100)
            await trio.sleep_forever()  # hold the stream open; cancelled when the host stops

        a.set_stream_handler("/meca/test-echo/1.0.0", echo)
        a.set_stream_handler("/meca/test-liar/1.0.0", liar)
        b.want(a.listen_addrs()[0])
        with trio.fail_after(10):
            await wait_connected(b, a.peer_id)
            s = await b.open_stream(a.peer_id, "/meca/test-echo/1.0.0")
            await s.send(b"hello")
            assert await s.receive() == b"olleh"
            with pytest.raises(ValueError):
                await s.send(b"x" * 2000)  # over our own cap: refused before sending
            # a peer announcing an oversized frame is refused from the prefix alone ...
            liar = await b.open_stream(a.peer_id, "/meca/test-liar/1.0.0")
            with pytest.raises(FrameError):
                await liar.receive()
            await liar.reset()
            # ... and the serving side resets a stream that does it
            await s._stream.write(encode_uvarint(10_000) + b"y" * 100)
            assert await s.receive() is None
            # the host keeps serving
            s2 = await b.open_stream(a.peer_id, "/meca/test-echo/1.0.0")
            await s2.send(b"again")
            assert await s2.receive() == b"niaga"
            await s2.close()


class Bytes:
    """A stream that hands out at most ``step`` bytes per read."""

    def __init__(self, data, step=None):
        self.data = data
        self.step = step
        self.reads = 0

    async def read(self, n=None):
        self.reads += 1
        n = min(n, self.step) if self.step else n
        chunk, self.data = self.data[:n], self.data[n:]
        return chunk


async def read_frame(stream, max_frame):
    return await FrameReader(stream, max_frame).read()


async def test_read_frame_rejects_long_prefix_and_truncation():
    with pytest.raises(FrameError):
        await read_frame(Bytes(b"\xff" * 10), max_frame=2**62)
    with pytest.raises(FrameError):
        await read_frame(Bytes(encode_uvarint(5) + b"abc"), max_frame=10)
    with pytest.raises(FrameError):  # 5 as 0x85 0x00: not the shortest form
        await read_frame(Bytes(b"\x85\x00abcde"), max_frame=10)
    with pytest.raises(FrameError, match="more than 10"):  # refused from the prefix alone
        await read_frame(Bytes(encode_uvarint(11)), max_frame=10)
    assert await read_frame(Bytes(b""), max_frame=10) is None
    assert await read_frame(Bytes(encode_uvarint(0)), max_frame=10) == b""


@pytest.mark.parametrize("step", [None, 1, 3])
async def test_frame_reader_frames_in_one_chunk_or_byte_by_byte(step):
    frames = [b"", b"a", b"x" * 300, b"y" * 70000, b"z"]
    data = b"".join(encode_uvarint(len(f)) + f for f in frames)
    stream = Bytes(data, step)
    reader = FrameReader(stream, max_frame=100000)
    assert [await reader.read() for _ in frames] == frames
    assert await reader.read() is None
    if step is None:  # frames that came together cost one read each 64 KiB, not per byte
        assert stream.reads <= 4
