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


async def read_frame(stream: _Stream, max_frame: int) -> bytes | None:
    """Read one frame; ``None`` at a clean end of stream before a frame starts."""
    length = 0
    for shift in range(0, 63, 7):  # unsigned-varint spec: at most 9 bytes, minimal
        b = await _read_exact(stream, 1, allow_eof=(shift == 0))
        if b is None:
            return None
        length |= (b[0] & 0x7F) << shift
        if length > max_frame:
            raise FrameError(f"peer announced a frame of more than {max_frame} bytes")
        if not b[0] & 0x80:
            if b[0] == 0 and shift:
                raise FrameError("length prefix is not minimally encoded")
            break
    else:
        raise FrameError("length prefix longer than 9 bytes")
    data = await _read_exact(stream, length, allow_eof=False)
    assert data is not None
    return data


async def _read_exact(stream: _Stream, n: int, allow_eof: bool) -> bytes | None:
    buf = bytearray()
    while len(buf) < n:
        try:
            chunk = await stream.read(n - len(buf))
        except Exception as exc:  # py-libp2p raises several EOF/reset types
            if not buf and allow_eof:
                return None
            raise FrameError(f"stream ended inside a frame ({type(exc).__name__})") from None
        if not chunk:
            if not buf and allow_eof:
                return None
            raise FrameError("stream ended inside a frame")
        buf += chunk
    return bytes(buf)
