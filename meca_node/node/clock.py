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
