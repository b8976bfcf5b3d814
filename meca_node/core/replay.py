"""Replay window: each (signer, nonce) is accepted once while its timestamp is in the window."""

from __future__ import annotations

import heapq


class ReplayWindow:
    """Remembers nonces for ``window_ms``; holds at most ``capacity`` entries.

    Messages older than the skew window are refused before they get here, so a
    nonce only needs remembering for as long as its timestamp stays acceptable.
    When full, the oldest entries are forgotten first (and their timestamps, now
    the lower bound of what we still remember, are refused as too old).
    """

    def __init__(self, window_ms: int, capacity: int = 100_000) -> None:
        self.window_ms = window_ms
        self.capacity = capacity
        self._seen: set[tuple[bytes, bytes]] = set()
        self._expiry: list[tuple[int, bytes, bytes]] = []
        self.floor_ms = 0

    def __len__(self) -> int:
        return len(self._seen)

    def check_and_add(self, signer: bytes, nonce: bytes, ts: int, now_ms: int) -> bool:
        """True if new (and now remembered); False if a replay or below the floor."""
        self._expire(now_ms)
        key = (signer, nonce)
        if key in self._seen or ts < self.floor_ms:
            return False
        while len(self._seen) >= self.capacity:
            expires, s, n = heapq.heappop(self._expiry)
            self._seen.discard((s, n))
            self.floor_ms = max(self.floor_ms, expires - self.window_ms)
        self._seen.add(key)
        heapq.heappush(self._expiry, (max(ts, now_ms) + self.window_ms, signer, nonce))
        return True

    def _expire(self, now_ms: int) -> None:
        while self._expiry and self._expiry[0][0] <= now_ms:
            _, s, n = heapq.heappop(self._expiry)
            self._seen.discard((s, n))
