"""The protobuf wire format, the small part of it that dag-pb, UnixFS and Bitswap use.

Varints and length-delimited fields only (wire types 0 and 2); every read is bounded by
the buffer it is given, and anything else is a :class:`PbError`.
"""

from __future__ import annotations

from collections.abc import Iterator

VARINT, LEN = 0, 2
_MAX_VARINT_BYTES = 10


class PbError(ValueError):
    """Bytes that are not the protobuf message they were read as."""


def varint(n: int) -> bytes:
    if n < 0:
        raise ValueError(f"varint of a negative number {n}")
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def read_varint(buf: bytes | memoryview, pos: int = 0) -> tuple[int, int]:
    """(value, position after it); minimal encodings only, at most 64 bits."""
    value = shift = 0
    for i in range(_MAX_VARINT_BYTES):
        if pos + i >= len(buf):
            raise PbError("truncated varint")
        byte = buf[pos + i]
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            if byte == 0 and i > 0:
                raise PbError("non-minimal varint")
            if value >= 1 << 64:
                raise PbError("varint over 64 bits")
            return value, pos + i + 1
        shift += 7
    raise PbError("varint longer than 10 bytes")


def field_varint(number: int, value: int) -> bytes:
    return varint(number << 3 | VARINT) + varint(value)


def field_bytes(number: int, value: bytes) -> bytes:
    return varint(number << 3 | LEN) + varint(len(value)) + value


def fields(buf: bytes | memoryview, *, views: bool = False,
           ) -> Iterator[tuple[int, int, int | bytes | memoryview]]:
    """Yield (field number, wire type, value): an int for varints, bytes for the rest
    (with ``views``: memoryviews into ``buf``, no copy; a parser of large messages copies
    only what it keeps)."""
    view = memoryview(buf)
    pos = 0
    while pos < len(view):
        key, pos = read_varint(view, pos)
        number, wire_type = key >> 3, key & 7
        if number == 0:
            raise PbError("field number 0")
        if wire_type == VARINT:
            value, pos = read_varint(view, pos)
            yield number, wire_type, value
        elif wire_type == LEN:
            length, pos = read_varint(view, pos)
            if pos + length > len(view):
                raise PbError(f"field {number}: {length} bytes announced, "
                              f"{len(view) - pos} left")
            part = view[pos:pos + length]
            yield number, wire_type, part if views else bytes(part)
            pos += length
        else:
            raise PbError(f"field {number}: wire type {wire_type} is not used here")
