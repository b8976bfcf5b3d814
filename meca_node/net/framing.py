"""Length-prefixed frames on a libp2p stream: unsigned-varint length, then the bytes.

A frame over the cap is never buffered: the reader refuses it from its length
prefix alone and the caller resets the stream (the peer broke the protocol).
"""

from __future__ import annotations

from typing import Protocol

from meca_node.ipfs.pb import varint


class FrameError(Exception):
    """The peer sent a frame we refuse (too large, truncated, or a bad length prefix)."""


class _Stream(Protocol):
    async def read(self, n: int | None = None) -> bytes: ...
    async def write(self, data: bytes) -> None: ...


encode_uvarint = varint  # the multiformats unsigned varint (LEB128), minimal


async def write_frame(stream: _Stream, data: bytes, max_frame: int) -> None:
    """Write one frame; ``ValueError`` if ``data`` is over our own cap (our bug, not the peer's)."""
    if len(data) > max_frame:
        raise ValueError(f"frame of {len(data)} bytes exceeds the cap of {max_frame}")
    await stream.write(encode_uvarint(len(data)) + data)


async def write_frames(stream: _Stream, frames: list[bytes], max_frame: int) -> None:
    """Write several frames with one write."""
    out = bytearray()
    for data in frames:
        if len(data) > max_frame:
            raise ValueError(f"frame of {len(data)} bytes exceeds the cap of {max_frame}")
        out += encode_uvarint(len(data)) + data
    await stream.write(bytes(out))


class FrameReader:
    """Frames from a stream this reader owns, read in chunks: the frames that arrive
    together (a job's accept, commit and result; a run of Bitswap messages) cost one read
    through the muxer instead of one per varint byte and one per payload. Holds at most
    one frame plus 64 KiB; a cancelled read loses nothing (what was read stays here)."""

    CHUNK = 65536

    def __init__(self, stream: _Stream, max_frame: int) -> None:
        self._stream = stream
        self.max_frame = max_frame
        self._buf = bytearray()

    async def read(self) -> bytes | None:
        """The next frame; ``None`` at a clean end of stream between frames."""
        while True:
            need = self._parse()
            if isinstance(need, bytes):
                return need
            try:
                chunk = await self._stream.read(max(need, self.CHUNK))
            except Exception as exc:  # py-libp2p raises several EOF/reset types
                chunk = b""
                if self._buf:
                    raise FrameError(f"stream ended inside a frame ({type(exc).__name__})") \
                        from None
            if not chunk:
                if self._buf:
                    raise FrameError("stream ended inside a frame")
                return None
            self._buf += chunk

    def _parse(self) -> bytes | int:
        """A whole frame off the front of the buffer, or how many more bytes it needs."""
        buf = self._buf
        length = 0
        for i in range(min(len(buf), 10)):
            b = buf[i]
            length |= (b & 0x7F) << (7 * i)
            if length > self.max_frame:
                raise FrameError(f"peer announced a frame of more than {self.max_frame} bytes")
            if not b & 0x80:
                if b == 0 and i:
                    raise FrameError("length prefix is not minimally encoded")
                end = i + 1 + length
                if len(buf) < end:
                    return end - len(buf)
                frame = bytes(buf[i + 1:end])
                del buf[:end]
                return frame
            if i == 8:
                raise FrameError("length prefix longer than 9 bytes")
        return 1
