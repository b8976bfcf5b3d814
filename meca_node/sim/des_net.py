"""The simulator's network model: latency, loss, partitions, timed faults and gossip.

Times are integer microseconds. Draws that happen in the simulation's order come from the
run's one ``random.Random``; draws that are made lazily (the delay with which one gossip
message reaches one sampled node, looked up only when that node needs it) come from
:func:`mix64`, a hash of the run's seed, the message and the node, so the order in which
they are looked up cannot change them.

**Direct messages** (a job's stream) take ``latency + U(0, jitter)`` plus any ``delay``
fault; a message lost with the loss rate (plus any ``drop`` fault's share) is sent again
after one retransmission timeout (``RTO_US``), as TCP does. Between the two sides of a
partition nothing passes: an open stream stalls until the heal (or the job's deadline);
opening one fails after ``OPEN_STREAM_US``.

**Gossip** (adverts, ledger entries, fraud proofs) reaches every node on the sender's side
of a partition after ``hops`` relays, ``hops = max(1, round(log_D N))`` for a mesh of degree
``D`` and ``N`` nodes; each hop costs one direct-message latency and loses the message with
the loss rate, so a receiver misses it with probability ``1 - (1 - loss) ** hops``
(gossipsub's redundant paths and IHAVE/IWANT repair are not modelled: this is the
pessimistic case). The shared view of the network (every node but the sampled ones) takes
one draw per message: the typical node's delay, and whether the typical node missed it.
"""

from __future__ import annotations

import math
import random

MASK64 = (1 << 64) - 1
RTO_US = 200_000  # TCP retransmission timeout for a lost stream message
OPEN_STREAM_US = 10_000_000  # a job stream that cannot be opened fails after this (jobs.py)
#: how long after a partition starts a node still believes it is connected to the other side
DISCONNECT_US = 10_000_000
#: how long after a heal the two sides are connected again (redial, mesh graft)
RECONNECT_US = 2_000_000


def mix64(*values: int) -> int:
    """A 64-bit hash of integers (splitmix64 steps): deterministic, order independent of
    when it is called."""
    return mix64_from(0x9E3779B97F4A7C15, *values)


def mix64_from(h: int, *values: int) -> int:
    """``mix64`` going on from ``h``: ``mix64(a, b) == mix64_from(mix64(a), b)``."""
    for v in values:
        h = (h ^ (v & MASK64)) * 0xBF58476D1CE4E5B9 & MASK64
        h = (h ^ (h >> 27)) * 0x94D049BB133111EB & MASK64
        h ^= h >> 31
    return h


def unit(h: int) -> float:
    """A hash as a float in [0, 1)."""
    return (h >> 11) * (1.0 / (1 << 53))


class Net:
    """Latency, loss, partitions and timed delay/drop faults over ``n`` nodes."""

    def __init__(self, *, nodes: int, latency_ms: float, jitter_ms: float, loss: float,
                 degree: int, seed: int) -> None:
        self.base_us = int(round(latency_ms * 1000))
        self.jitter_us = int(round(jitter_ms * 1000))
        self.loss = loss
        self.seed = seed
        self._seed_h = mix64(seed)  # mix64(seed, ...) goes on from here
        d = max(2, degree)
        self.hops = max(1, round(math.log(max(2, nodes)) / math.log(d)))
        #: the side of each node while a partition is in force, else None
        self.side: list[int] | None = None
        self.partition_since = -1
        self.healed_at = -(1 << 62)
        self._last_side: list[int] | None = None
        self._delays: list[tuple[int, int, int]] = []  # (start, end, extra_us)
        self._drops: list[tuple[int, int, float]] = []  # (start, end, share)

    # -- faults --------------------------------------------------------------------------
    def partition(self, side: list[int], now: int) -> None:
        self.side = side
        self.partition_since = now

    def heal(self, now: int) -> None:
        self._last_side = self.side
        self.side = None
        self.healed_at = now

    def add_delay(self, start: int, end: int, extra_us: int) -> None:
        self._delays.append((start, end, extra_us))

    def add_drop(self, start: int, end: int, share: float) -> None:
        self._drops.append((start, end, share))

    def extra_us(self, now: int) -> int:
        extra = 0
        for start, end, x in self._delays:
            if start <= now < end:
                extra += x
        return extra

    def loss_at(self, now: int) -> float:
        keep = 1.0 - self.loss
        for s, e, share in self._drops:
            if s <= now < e:
                keep *= 1.0 - share
        return 1.0 - keep

    # -- reachability --------------------------------------------------------------------
    def reachable(self, a: int, b: int) -> bool:
        side = self.side
        return side is None or side[a] == side[b]

    def connected(self, a: int, b: int, now: int) -> bool:
        """Whether ``a`` believes it holds a connection to ``b``: across a partition until
        the broken connection is noticed, and not until the redial after a heal."""
        side = self.side
        if side is not None:
            return side[a] == side[b] or now - self.partition_since < DISCONNECT_US
        last = self._last_side
        return last is None or last[a] == last[b] or now - self.healed_at >= RECONNECT_US

    # -- delays --------------------------------------------------------------------------
    def rtt_ms(self, a: int, b: int) -> float:
        """The ping round trip between two nodes as ``node.latency`` would measure it:
        twice the base latency plus a fixed share of the jitter for the pair."""
        lo, hi = min(a, b), max(a, b)
        share = unit(mix64_from(self._seed_h, lo, hi, 3))  # mix64(seed, lo, hi, 3)
        return 2 * (self.base_us + self.jitter_us * share) / 1000

    def latency(self, rng: random.Random, now: int) -> int:
        """One direct message's one-way delay (retransmissions included)."""
        us = self.base_us + (rng.randrange(self.jitter_us + 1) if self.jitter_us else 0)
        us += self.extra_us(now) if self._delays else 0
        loss = self.loss_at(now) if self._drops else self.loss
        if loss > 0.0:
            while rng.random() < loss:
                us += RTO_US
        return us

    def gossip(self, rng: random.Random, now: int) -> int | None:
        """The typical node's delay for one gossip message; None if it missed it."""
        loss = self.loss_at(now) if self._drops else self.loss
        if loss > 0.0 and rng.random() >= (1.0 - loss) ** self.hops:
            return None
        extra = self.extra_us(now) if self._delays else 0
        jitter = rng.randrange(self.hops * self.jitter_us + 1) if self.jitter_us else 0
        return self.hops * (self.base_us + extra) + jitter

    def gossip_to(self, msg: int, node: int, now: int) -> int | None:
        """The delay with which gossip message ``msg`` sent at ``now`` reaches ``node`` (a
        sampled node, drawn by hash); None if it missed it. Partitions are the caller's."""
        h = mix64_from(self._seed_h, msg, node)
        loss = self.loss_at(now) if self._drops else self.loss
        if loss > 0.0 and unit(h) >= (1.0 - loss) ** self.hops:
            return None
        extra = self.extra_us(now) if self._delays else 0
        jitter = (mix64(h, 1) % (self.hops * self.jitter_us + 1)) if self.jitter_us else 0
        return self.hops * (self.base_us + extra) + jitter
