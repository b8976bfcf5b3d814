"""How far our clock is from the network's, estimated from peers' signed timestamps.

Every gossiped message carries its signer's clock (``ts``). The latest
``their ts - our time`` per signer is one sample; the estimate is the median over the
distinct signers heard from recently, so a few wrong clocks (or a few liars) do not move
it. Network delay makes each sample slightly low (milliseconds to a second on gossip),
which is far below what matters here: the skew window is minutes.

Pure: callers pass their own clock readings. A signer counts once however much it sends,
and the table is bounded (the most recently heard signers are kept). A Sybil with many
keys can still shift the median; that is why following the peers' clock is opt-in and
the default is only a warning.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class OffsetEstimate:
    #: add this to our clock to get the peers' median clock (positive: ours is behind)
    offset_ms: int
    peers: int


class ClockOffset:
    """``observe`` each signed timestamp; ``estimate`` the median offset of our clock."""

    def __init__(self, max_signers: int = 256, window_ms: int = 10 * 60_000,
                 min_peers: int = 3) -> None:
        self.max_signers = max_signers
        self.window_ms = window_ms
        self.min_peers = min_peers
        self._samples: OrderedDict[bytes, tuple[int, int]] = OrderedDict()  # offset, when

    def observe(self, signer: bytes, their_ms: int, our_ms: int) -> None:
        """A message ``signer`` stamped ``their_ms`` arrived when our clock read ``our_ms``."""
        self._samples[signer] = (their_ms - our_ms, our_ms)
        self._samples.move_to_end(signer)
        while len(self._samples) > self.max_signers:
            self._samples.popitem(last=False)

    def estimate(self, now_ms: int) -> OffsetEstimate | None:
        """The median offset over signers heard within the window (our clock), or None
        with fewer than ``min_peers`` of them."""
        recent = sorted(off for off, when in self._samples.values()
                        if now_ms - when <= self.window_ms)
        if len(recent) < self.min_peers:
            return None
        mid = len(recent) // 2
        median = recent[mid] if len(recent) % 2 else (recent[mid - 1] + recent[mid]) // 2
        return OffsetEstimate(median, len(recent))
