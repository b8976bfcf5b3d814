"""Canonical CBOR (RFC 8949 section 4.2.1, core deterministic encoding).

Only a small data model travels on our wire: unsigned/negative integers that fit
in 64 bits, byte strings, text strings, arrays, maps with text keys, booleans and
null. Floats, tags and undefined are refused, so every value has exactly one
encoding. Decoding is strict: the input must be the canonical encoding of what it
decodes to, so a signature always covers the one and only byte form of a message.

**Why decoding needs no re-encoding.** ``_scan`` walks the bytes before cbor2 sees them
and refuses everything outside the canonical form of our model: heads that are not the
shortest, indefinite lengths, tags, floats and simple values other than false/true/null,
non-text map keys, keys not in strictly increasing bytewise order (which also refuses
duplicates), bad UTF-8, depth over ``MAX_DEPTH``, trailing bytes. What passes is the
canonical encoding of what cbor2 decodes it to: each head is the shortest one for its
argument, as the encoder writes it; strings are their bytes; bytewise order of the
encoded text keys is the encoder's order (shorter keys first, then bytewise, since a
text key's head grows with its length). The one value the scan passes that the model
refuses is an integer below -2^63 (well-formed, canonical CBOR): the scan flags it and
the value check refuses it after decoding. ``tests/unit/test_wire_fuzz.py`` re-encodes
every input ``decode`` accepts and compares.

**Encoding.** ``encode`` checks a value (``_check``) and lets cbor2 write it; ``head``
and the ``enc_*`` helpers write single items, for the message encoder in ``_schema``
and the envelope in ``_envelope``, which write the same bytes without a generic walk.
"""

from __future__ import annotations

from typing import Any

import cbor2

from ._errors import WireError

MAX_DEPTH = 16
INT_MIN = -(2**63)
INT_MAX = 2**64 - 1


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
    low = _scan(data)
    try:
        value = cbor2.loads(data)
    except (cbor2.CBORDecodeError, RecursionError, ValueError, TypeError, OverflowError,
            MemoryError, IndexError, KeyError, UnicodeError) as exc:
        raise WireError("malformed", f"not CBOR ({type(exc).__name__})") from None
    if low:  # an integer below -2^63: canonical CBOR, outside our model
        _check(value, 0)
    return value


# -- writing single items (the same bytes cbor2 writes in canonical mode) ----------------
_SMALL = tuple(tuple(bytes((major << 5 | n,)) for n in range(24)) for major in range(8))


def head(major: int, arg: int) -> bytes:
    """The shortest head of ``major`` type with argument ``arg`` (0 <= arg < 2^64)."""
    if arg < 24:
        return _SMALL[major][arg]
    if arg < 0x100:
        return bytes((major << 5 | 24, arg))
    if arg < 0x10000:
        return bytes((major << 5 | 25,)) + arg.to_bytes(2, "big")
    if arg < 0x100000000:
        return bytes((major << 5 | 26,)) + arg.to_bytes(4, "big")
    return bytes((major << 5 | 27,)) + arg.to_bytes(8, "big")


def enc_int(value: int) -> bytes:
    """An integer in [-2^63, 2^64); the caller checks the range."""
    return head(0, value) if value >= 0 else head(1, -1 - value)


def enc_text(value: str) -> bytes:
    """A text string."""
    raw = value.encode("utf-8")
    return head(3, len(raw)) + raw


def _check(value: Any, depth: int) -> None:
    if depth > MAX_DEPTH:
        raise WireError("malformed", f"nested deeper than {MAX_DEPTH}")
    if value is None or isinstance(value, (bool, str, bytes)):
        return
    if isinstance(value, int):
        if not INT_MIN <= value <= INT_MAX:
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


def _scan(data: bytes) -> bool:
    """Refuse ``data`` unless it is one canonical item of our model (see the module);
    True when it holds an integer below -2^63 (for the value check to refuse).

    One loop over the items in order, no call per item: ``left`` items (in a map: entries,
    each a key then a value) are still to come in the innermost open array or map;
    ``stack`` holds the enclosing ones' state."""
    size = len(data)
    pos = 0
    depth = 0
    low = False
    stack: list[tuple[int, bool, bytes | None]] = []
    left, in_map, previous = 1, False, None  # the top level: one item
    while True:
        if not left:
            if not stack:
                break
            left, in_map, previous = stack.pop()
            depth -= 1
            continue
        left -= 1
        if in_map:  # the key: a text string after the previous key (bytewise)
            if pos >= size or data[pos] >> 5 != 3:
                raise WireError("malformed", "map keys must be text strings")
            if depth > MAX_DEPTH:
                raise WireError("malformed", f"nested deeper than {MAX_DEPTH}")
            start = pos
            arg = data[pos] & 0x1F
            pos += 1
            if arg >= 24:
                pos, arg = _long_head(data, pos, arg, size)
            end = pos + arg
            if end > size:
                raise WireError("malformed", "truncated CBOR string")
            try:
                data[pos:end].decode("utf-8")
            except UnicodeDecodeError:
                raise WireError("malformed", "text string is not UTF-8") from None
            pos = end
            key = data[start:end]
            if previous is not None and key <= previous:
                raise WireError("malformed", "map keys duplicated or not in canonical order")
            previous = key
        elif depth > MAX_DEPTH:
            raise WireError("malformed", f"nested deeper than {MAX_DEPTH}")
        if pos >= size:
            raise WireError("malformed", "truncated CBOR")
        initial = data[pos]
        major, arg = initial >> 5, initial & 0x1F
        pos += 1
        if arg >= 24:
            pos, arg = _long_head(data, pos, arg, size)
        if major == 2:
            pos += arg
            if pos > size:
                raise WireError("malformed", "truncated CBOR string")
        elif major == 0:
            pass
        elif major == 3:
            end = pos + arg
            if end > size:
                raise WireError("malformed", "truncated CBOR string")
            try:
                data[pos:end].decode("utf-8")
            except UnicodeDecodeError:
                raise WireError("malformed", "text string is not UTF-8") from None
            pos = end
        elif major == 5:
            if 2 * arg > size - pos:
                raise WireError("malformed", "map longer than the input")
            if arg:
                stack.append((left, in_map, previous))
                left, in_map, previous = arg, True, None
                depth += 1
        elif major == 4:
            if arg > size - pos:
                raise WireError("malformed", "array longer than the input")
            if arg:
                stack.append((left, in_map, previous))
                left, in_map = arg, False
                depth += 1
        elif major == 1:
            if arg >= 1 << 63:
                low = True
        elif major == 6:
            raise WireError("malformed", "CBOR tags are not allowed")
        elif not (arg in (20, 21, 22) and data[pos - 1] == 0xE0 | arg):
            raise WireError("malformed", "floats, undefined and simple values are not allowed")
    if pos != size:
        raise WireError("malformed", "trailing bytes after the CBOR item")
    return low


def _long_head(data: bytes, pos: int, info: int, size: int) -> tuple[int, int]:
    """(position after, argument) of a head whose argument follows in 1, 2, 4 or 8
    bytes (``info`` 24..27), in its shortest form."""
    if info > 27:
        raise WireError("malformed", "indefinite lengths and reserved heads are not allowed")
    width = 1 << (info - 24)
    if pos + width > size:
        raise WireError("malformed", "truncated CBOR")
    arg = int.from_bytes(data[pos:pos + width], "big")
    if arg < (24 if width == 1 else 1 << (4 * width)):
        raise WireError("malformed", "integer or length not in its shortest form")
    return pos + width, arg
