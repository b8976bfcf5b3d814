"""Canonical CBOR (RFC 8949 section 4.2.1, core deterministic encoding).

Only a small data model travels on our wire: unsigned/negative integers that fit
in 64 bits, byte strings, text strings, arrays, maps with text keys, booleans and
null. Floats, tags and undefined are refused, so every value has exactly one
encoding. Decoding is strict: the input must be the canonical encoding of what it
decodes to (checked by re-encoding), so a signature always covers the one and
only byte form of a message.
"""

from __future__ import annotations

from typing import Any

import cbor2

from ._errors import WireError

MAX_DEPTH = 16
_INT_MIN = -(2**63)
_INT_MAX = 2**64 - 1


def encode(value: Any) -> bytes:
    """Encode ``value`` canonically; raises ``WireError`` for values outside our model."""
    _check(value, 0)
    return cbor2.dumps(value, canonical=True)


def decode(data: bytes) -> Any:
    """Decode canonical CBOR; any problem raises ``WireError("malformed", ...)``."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise WireError("malformed", "expected bytes")
    data = bytes(data)
    # Walk the bytes first: tags, floats, indefinite lengths and non-minimal or unsorted
    # encodings are refused before cbor2 builds any object from them (it would otherwise
    # turn tagged input into datetimes, regexes, decimals ... before we could look).
    _scan(data)
    try:
        value = cbor2.loads(data)
    except (cbor2.CBORDecodeError, RecursionError, ValueError, TypeError, OverflowError,
            MemoryError, IndexError, KeyError, UnicodeError) as exc:
        raise WireError("malformed", f"not CBOR ({type(exc).__name__})") from None
    _check(value, 0)
    try:
        again = cbor2.dumps(value, canonical=True)
    except Exception:  # pragma: no cover - _check admits only encodable values
        raise WireError("malformed", "value cannot be re-encoded") from None
    if again != data:
        raise WireError("malformed", "not the canonical CBOR encoding")
    return value


def _check(value: Any, depth: int) -> None:
    if depth > MAX_DEPTH:
        raise WireError("malformed", f"nested deeper than {MAX_DEPTH}")
    if value is None or isinstance(value, (bool, str, bytes)):
        return
    if isinstance(value, int):
        if not _INT_MIN <= value <= _INT_MAX:
            raise WireError("malformed", "integer outside 64 bits")
        return
    if isinstance(value, (list, tuple)):
        for item in value:
            _check(item, depth + 1)
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise WireError("malformed", "map keys must be text strings")
            _check(item, depth + 1)
        return
    raise WireError("malformed", f"type {type(value).__name__} is not allowed on the wire")


def _head(data: bytes, pos: int) -> tuple[int, int, int]:
    """(major type, argument, position after the head); minimal encoding enforced."""
    if pos >= len(data):
        raise WireError("malformed", "truncated CBOR")
    initial = data[pos]
    major, info = initial >> 5, initial & 0x1F
    pos += 1
    if info < 24:
        return major, info, pos
    if info > 27:
        raise WireError("malformed", "indefinite lengths and reserved heads are not allowed")
    size = 1 << (info - 24)
    if pos + size > len(data):
        raise WireError("malformed", "truncated CBOR")
    arg = int.from_bytes(data[pos:pos + size], "big")
    if arg < (24 if size == 1 else 1 << (4 * size)):
        raise WireError("malformed", "integer or length not in its shortest form")
    return major, arg, pos + size


def _item(data: bytes, pos: int, depth: int) -> int:
    if depth > MAX_DEPTH:
        raise WireError("malformed", f"nested deeper than {MAX_DEPTH}")
    major, arg, pos = _head(data, pos)
    if major in (0, 1):
        return pos
    if major in (2, 3):
        end = pos + arg
        if end > len(data):
            raise WireError("malformed", "truncated CBOR string")
        if major == 3:
            try:
                data[pos:end].decode("utf-8")
            except UnicodeDecodeError:
                raise WireError("malformed", "text string is not UTF-8") from None
        return end
    if major == 4:
        if arg > len(data) - pos:
            raise WireError("malformed", "array longer than the input")
        for _ in range(arg):
            pos = _item(data, pos, depth + 1)
        return pos
    if major == 5:
        if 2 * arg > len(data) - pos:
            raise WireError("malformed", "map longer than the input")
        previous = b""
        for i in range(arg):
            start = pos
            if pos >= len(data) or data[pos] >> 5 != 3:
                raise WireError("malformed", "map keys must be text strings")
            pos = _item(data, pos, depth + 1)
            key = data[start:pos]
            if i and key <= previous:
                raise WireError("malformed", "map keys duplicated or not in canonical order")
            previous = key
            pos = _item(data, pos, depth + 1)
        return pos
    if major == 6:
        raise WireError("malformed", "CBOR tags are not allowed")
    if arg in (20, 21, 22) and data[pos - 1] == 0xE0 | arg:
        return pos  # false, true, null
    raise WireError("malformed", "floats, undefined and simple values are not allowed")


def _scan(data: bytes) -> None:
    if _item(data, 0, 0) != len(data):
        raise WireError("malformed", "trailing bytes after the CBOR item")
