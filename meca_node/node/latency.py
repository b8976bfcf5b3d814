"""Measured round trips to providers: a smoothed RTT per connected provider.

Every :data:`TICK_S` the service drops what it knows of peers that are no longer connected
and pings the connected peers that advertise the provider role and are due: never tried,
or last tried :data:`INTERVAL_S` ago. At most :data:`MAX_PER_ROUND` peers per tick (the
longest-waiting first), :data:`CONCURRENT` at once, each bounded by :data:`TIMEOUT_S`.
A round's sample is the least of :data:`SAMPLES` pings back to back on one stream: on a
busy trio loop one ping can wait for other work (10 ms instead of 1 on loopback when the
peer's identify runs), and the least is the one that waited least. The sample moves the
peer's estimate by ``ALPHA`` (an EWMA; the first sample is taken as is);
a failed ping changes nothing but a counter, and :data:`FORGET_AFTER` failures in a row
forget the estimate (a peer that stopped answering is "not measured", not "fast").
The job client ranks providers with :meth:`Latency.rtt_ms` (``None``: not measured).
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Protocol, Sequence

import trio

from meca_node.node.ports import PeerLike

log = logging.getLogger("meca_node.node.latency")

INTERVAL_S = 30.0
TICK_S = 1.0
TIMEOUT_S = 5.0  # for all of a peer's SAMPLES pings
SAMPLES = 2
MAX_PER_ROUND = 16
CONCURRENT = 4  # 16 peers that all time out take 4 x 5 s, within one interval
ALPHA = 0.3
FORGET_AFTER = 3


class Pinging(Protocol):
    """What the service needs of the network (``Libp2pNet`` and the test fake have it)."""

    @property
    def peer_id(self) -> str: ...
    def connected_peers(self) -> Sequence[PeerLike]: ...
    async def ping(self, peer_id: str, timeout_s: float) -> float: ...


def ewma(old: float | None, sample: float, alpha: float = ALPHA) -> float:
    return sample if old is None else alpha * sample + (1 - alpha) * old


class Latency:
    """Smoothed round trips (ms) to connected providers, kept up to date by :meth:`run`."""

    def __init__(self, net: Pinging, providers: Callable[[], Iterable[str]]) -> None:
        self.net = net
        self.providers = providers  # peer ids that advertise the provider role
        self._rtt: dict[str, float] = {}
        self._tried: dict[str, float] = {}  # trio time of the last ping sent
        self._failures: Counter[str] = Counter()  # in a row
        self.stats: Counter[str] = Counter()  # pings, failed, forgotten
        #: set after every ping (answered or not) and when an estimate is dropped; replaced
        self.changed = trio.Event()

    def rtt_ms(self, peer_id: str) -> float | None:
        """The smoothed round trip to ``peer_id`` in ms; ``None`` while not measured."""
        return self._rtt.get(peer_id)

    def view(self) -> dict[str, float]:
        return {p: round(v, 3) for p, v in self._rtt.items()}

    # -- bookkeeping (synchronous; the loop below drives it) -----------------------
    def observe(self, peer_id: str, sample_ms: float) -> None:
        self._rtt[peer_id] = ewma(self._rtt.get(peer_id), sample_ms)
        self._failures.pop(peer_id, None)
        self.stats["pings"] += 1
        self._changed()

    def failed(self, peer_id: str) -> None:
        self.stats["failed"] += 1
        self._failures[peer_id] += 1
        if self._failures[peer_id] >= FORGET_AFTER and self._rtt.pop(peer_id, None) is not None:
            self.stats["forgotten"] += 1
        self._changed()

    def prune(self, connected: set[str]) -> None:
        """Forget every peer that is not connected (it is measured afresh on return)."""
        gone = [p for p in self._tried if p not in connected]
        gone += [p for p in self._rtt if p not in connected and p not in self._tried]
        dropped = False
        for p in gone:
            self._tried.pop(p, None)
            self._failures.pop(p, None)
            dropped = self._rtt.pop(p, None) is not None or dropped
        if dropped:
            self._changed()

    def due(self, now: float, connected: set[str], providers: Iterable[str]) -> list[str]:
        """Connected providers to ping now: the longest-waiting first, at most
        :data:`MAX_PER_ROUND`."""
        never = -math.inf
        ready = [p for p in set(providers) & connected
                 if p != self.net.peer_id and now - self._tried.get(p, never) >= INTERVAL_S]
        ready.sort(key=lambda p: (self._tried.get(p, never), p))
        return ready[:MAX_PER_ROUND]

    def _changed(self) -> None:
        self.changed.set()
        self.changed = trio.Event()

    # -- the service -------------------------------------------------------------------
    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        limit = trio.CapacityLimiter(CONCURRENT)
        task_status.started()
        while True:
            connected = {p.peer_id for p in self.net.connected_peers()}
            self.prune(connected)
            now = trio.current_time()
            peers = self.due(now, connected, self.providers())
            if peers:
                async with trio.open_nursery() as nursery:
                    for peer in peers:
                        self._tried[peer] = now
                        nursery.start_soon(self._ping, peer, limit)
            await trio.sleep(TICK_S)

    async def _ping(self, peer_id: str, limit: trio.CapacityLimiter) -> None:
        samples: list[float] = []
        async with limit:
            try:
                with trio.move_on_after(TIMEOUT_S):
                    for _ in range(SAMPLES):
                        samples.append(await self.net.ping(peer_id, TIMEOUT_S))
            except Exception as exc:  # timeouts, resets, peers without ping: all just fail
                log.debug("ping %s failed: %s", peer_id, exc)
        if peer_id not in self._tried:  # pruned (disconnected) meanwhile
            return
        if samples:
            self.observe(peer_id, min(samples))
        else:
            self.failed(peer_id)
