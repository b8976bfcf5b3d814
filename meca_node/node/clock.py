"""Clocks and random sources for the node (real ones here; tests pass their own)."""

from __future__ import annotations

import os
import random
import time

import trio


class SystemClock:
    """Wall-clock milliseconds since the Unix epoch."""

    def now_ms(self) -> int:
        return time.time_ns() // 1_000_000


class ShiftedClock:
    """Another clock plus a fixed offset: a machine whose clock is wrong (simulations)."""

    def __init__(self, base, offset_ms: int) -> None:
        self.base = base
        self.offset_ms = offset_ms

    def now_ms(self) -> int:
        return self.base.now_ms() + self.offset_ms


class PeerClock:
    """``base`` corrected by the peers' median offset (``core.clock_offset``), for a node
    told to trust its peers' clocks over its own (no RTC, no NTP). Re-estimated at most
    once a second; the last correction is kept while too few peers are heard."""

    RECHECK_MS = 1000

    def __init__(self, base, offsets) -> None:
        self.base = base
        self.offsets = offsets
        self.applied_ms = 0
        self._checked = None

    def now_ms(self) -> int:
        own = self.base.now_ms()
        if self._checked is None or abs(own - self._checked) >= self.RECHECK_MS:
            self._checked = own
            estimate = self.offsets.estimate(own)
            if estimate is not None:
                self.applied_ms = estimate.offset_ms
        return own + self.applied_ms


class TrioClock:
    """Milliseconds from trio's clock plus a fixed epoch: follows ``MockClock`` in tests."""

    def __init__(self, epoch_ms: int = 1_700_000_000_000) -> None:
        self.epoch_ms = epoch_ms

    def now_ms(self) -> int:
        return self.epoch_ms + int(trio.current_time() * 1000)


class OsRandom:
    def token_bytes(self, n: int) -> bytes:
        return os.urandom(n)


class SeededRandom:
    """Reproducible bytes for tests and simulations."""

    def __init__(self, seed: int) -> None:
        self._rng = random.Random(seed)

    def token_bytes(self, n: int) -> bytes:
        return self._rng.randbytes(n)
