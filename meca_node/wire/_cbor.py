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
