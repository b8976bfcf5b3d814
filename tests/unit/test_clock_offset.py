"""The clock offset estimate (median over signers) and the clock that follows it."""

from __future__ import annotations

from meca_node.core.clock_offset import ClockOffset
from meca_node.node.clock import PeerClock, ShiftedClock


class _Fixed:
    def __init__(self, ms: int) -> None:
        self.ms = ms

    def now_ms(self) -> int:
        return self.ms


def test_needs_min_peers_then_gives_the_median_over_signers():
    c = ClockOffset(min_peers=3)
    c.observe(b"a", 10_000, 0)
    c.observe(b"b", 12_000, 0)
    assert c.estimate(0) is None
    c.observe(b"c", -500_000, 0)  # one wild clock does not move the median
    e = c.estimate(0)
    assert e is not None and e.offset_ms == 10_000 and e.peers == 3
    c.observe(b"d", 11_000, 0)  # even count: mean of the middle two
    assert c.estimate(0).offset_ms == 10_500


def test_a_signer_counts_once_however_much_it_sends():
    c = ClockOffset(min_peers=3)
    for i in range(100):
        c.observe(b"liar", 900_000, i)
    c.observe(b"a", 0, 100)
    c.observe(b"b", 100, 100)
    assert c.estimate(100).offset_ms == 0  # median of (-100, 0, 899_901)


def test_old_samples_leave_the_window_and_the_table_is_bounded():
    c = ClockOffset(max_signers=4, window_ms=1000, min_peers=1)
    for i in range(10):
        c.observe(bytes([i]), 5, 0)
    assert len(c._samples) == 4
    assert c.estimate(1000) is not None and c.estimate(1001) is None


def test_peer_clock_applies_the_estimate_and_keeps_it_when_peers_go_quiet():
    base = _Fixed(1_000_000)
    offsets = ClockOffset(window_ms=10_000, min_peers=2)
    clock = PeerClock(base, offsets)
    assert clock.now_ms() == 1_000_000  # nothing heard: our own time
    offsets.observe(b"a", 1_200_000, 1_000_000)
    offsets.observe(b"b", 1_200_400, 1_000_000)
    base.ms += PeerClock.RECHECK_MS
    assert clock.now_ms() == base.ms + 200_200
    base.ms += 60_000  # the samples are out of the window: the last correction stays
    assert clock.now_ms() == base.ms + 200_200


def test_shifted_clock():
    assert ShiftedClock(_Fixed(5000), -2000).now_ms() == 3000
