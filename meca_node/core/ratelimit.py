"""Per-signer rate limits: a token bucket per key, and a ban for keys that keep flooding."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass


@dataclass
class _Bucket:
    tokens: float
    updated_ms: int
    strikes: int = 0
    banned_until_ms: int = 0


class SignerRateLimiter:
    """Allow ``rate_per_s`` messages per signer with bursts up to ``burst``.

    A signer that is refused ``ban_after`` times in a row (without a refill in
    between) is ignored for ``ban_ms``. At most ``max_signers`` buckets are kept
    (least recently seen dropped first), so memory stays bounded under Sybil floods.
    """

    def __init__(self, rate_per_s: float, burst: int, ban_after: int = 50,
                 ban_ms: int = 60_000, max_signers: int = 10_000) -> None:
        if rate_per_s <= 0 or burst < 1:
            raise ValueError("rate_per_s must be > 0 and burst >= 1")
        self.rate_per_ms = rate_per_s / 1000.0
        self.burst = burst
        self.ban_after = ban_after
        self.ban_ms = ban_ms
        self.max_signers = max_signers
        self._buckets: OrderedDict[bytes, _Bucket] = OrderedDict()

    def allow(self, signer: bytes, now_ms: int, cost: float = 1.0) -> str | None:
        """None when allowed (``cost`` tokens taken: a message that weighs more than one);
        otherwise the refusal reason ``rate_limited`` or ``banned``."""
        b = self._buckets.get(signer)
        if b is None:
            b = _Bucket(tokens=float(self.burst), updated_ms=now_ms)
            self._buckets[signer] = b
            if len(self._buckets) > self.max_signers:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(signer)
        if now_ms < b.banned_until_ms:
            return "banned"
        elapsed = max(0, now_ms - b.updated_ms)
        b.tokens = min(float(self.burst), b.tokens + elapsed * self.rate_per_ms)
        b.updated_ms = now_ms
        if b.tokens >= cost:
            b.tokens -= cost
            b.strikes = 0
            return None
        b.strikes += 1
        if b.strikes >= self.ban_after:
            b.banned_until_ms = now_ms + self.ban_ms
            b.strikes = 0
            return "banned"
        return "rate_limited"

    def is_banned(self, signer: bytes, now_ms: int) -> bool:
        b = self._buckets.get(signer)
        return b is not None and now_ms < b.banned_until_ms
