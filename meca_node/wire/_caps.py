"""Size and queue caps (DESIGN.md "Wire rules"); each is a config key under ``[caps]``."""

from __future__ import annotations

from dataclasses import dataclass

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB


@dataclass(frozen=True, slots=True)
class Caps:
    gossip_message: int = 64 * KiB
    stream_frame: int = 1 * MiB
    job_inline: int = 16 * MiB
    block_send: int = 1 * MiB
    block_accept: int = 2 * MiB
    wantlist: int = 1024
    image: int = 8 * GiB
    queue: int = 1024
