"""The one error type every decoder in ``meca_node.wire`` raises."""

from __future__ import annotations


class WireError(ValueError):
    """Bytes from a peer (or a file) are not a valid message.

    ``reason`` is a short machine-readable code (used as a drop-counter label);
    the message says what is wrong. Decoders raise nothing else on bad input.
    """

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
