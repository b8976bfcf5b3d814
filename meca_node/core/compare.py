"""Compare a task's reply with its expected output, byte for byte, and show the difference."""

from __future__ import annotations

import difflib


def _is_text(data: bytes) -> bool:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return all(ch.isprintable() or ch in "\n\r\t" for ch in text)


def _hex(data: bytes, limit: int = 256) -> str:
    shown = data[:limit]
    rows = [f"{i:08x}  {shown[i:i + 16].hex(' ')}" for i in range(0, len(shown), 16)]
    if len(data) > limit:
        rows.append(f"... {len(data) - limit} more bytes")
    return "\n".join(rows) or "(empty)"


def explain_mismatch(expected: bytes, got: bytes, max_lines: int = 60) -> str:
    """A readable account of how ``got`` differs from ``expected`` (text diff, or hex)."""
    first = next((i for i, (a, b) in enumerate(zip(expected, got)) if a != b),
                 min(len(expected), len(got)))
    head = (f"expected {len(expected)} bytes, got {len(got)} bytes; first difference at "
            f"byte {first}")
    if _is_text(expected) and _is_text(got):
        diff = difflib.unified_diff(expected.decode().splitlines(keepends=True),
                                    got.decode().splitlines(keepends=True),
                                    "example_output.bin", "reply", n=2)
        lines = [ln if ln.endswith("\n") else ln + "\n\\ no newline at end\n" for ln in diff]
        body = "".join(lines[:max_lines])
        return f"{head}\n{body}".rstrip()
    return f"{head}\n--- example_output.bin (hex)\n{_hex(expected)}\n+++ reply (hex)\n{_hex(got)}"
