"""Is this node reachable from outside? A dial-back protocol (AutoNAT-style) and its state.

``/meca/dialback/1.0.0``: a node asks a connected peer to dial it back, on a *new*
connection, at its direct addresses. The peer dials only addresses with the IP it sees the
request come from (so it cannot be used to make connections to third parties), over TCP
with a Noise handshake that proves the peer id, then closes; it answers

- ``ok <addr>``: a fresh connection to ``addr`` reached us;
- ``failed <why>``: it tried and could not reach any address;
- ``refused <why>``: it did not try (rate limit, relayed connection, no address to try).

The server side is bounded (:class:`DialbackLimiter`: dial-backs per minute in all, one per
peer per interval, a few at a time), the client asks at most a few peers per check.

:class:`Reachability` turns answers into the node's status: ``public`` once a peer
confirmed a dial-back, ``relayed via <peer>`` while only a relay reservation makes us
reachable, ``private`` when peers tried and failed, ``unknown`` before any answer.

Why not py-libp2p 0.8.1's AutoNAT (``libp2p.host.autonat``): its server "dials back" with
``host.connect``, which returns at once when a connection to the peer exists, and the
requester is connected by definition: every request is answered OK. It also serves
without a rate limit.
"""

from __future__ import annotations

import logging
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import multiaddr
import trio

log = logging.getLogger("meca_node.net.reachability")

PROTOCOL = "/meca/dialback/1.0.0"
#: addresses one request may name (more are ignored)
MAX_ADDRS = 8
#: bytes of one request or answer
MAX_FRAME = 4096
#: seconds one dial-back attempt (TCP + Noise) may take
DIAL_TIMEOUT_S = 5.0
#: seconds a client waits for an answer (a server may try every address)
ASK_TIMEOUT_S = 4 * DIAL_TIMEOUT_S
#: peers asked per check
ASK_PEERS = 3
#: seconds between checks once the answer is known, and while it is not
RECHECK_S = 300.0
RETRY_S = 10.0


# -- server side --------------------------------------------------------------------------
class DialbackLimiter:
    """Bounds the dial-backs a node serves: ``per_minute`` in all (sliding window), one
    per peer every ``per_peer_s``, ``concurrent`` at a time. Pure; ``clock`` is seconds."""

    def __init__(self, per_minute: int = 30, per_peer_s: float = 30.0, concurrent: int = 2,
                 clock: Callable[[], float] = time.monotonic, max_peers: int = 4096) -> None:
        self.per_minute = per_minute
        self.per_peer_s = per_peer_s
        self.concurrent = concurrent
        self._clock = clock
        self._max_peers = max_peers
        self._recent: deque[float] = deque()
        self._last: dict[str, float] = {}
        self.active = 0

    def admit(self, peer: str) -> str | None:
        """None and a slot taken (give it back with :meth:`release`), or why not."""
        now = self._clock()
        while self._recent and now - self._recent[0] >= 60.0:
            self._recent.popleft()
        if self.active >= self.concurrent:
            return f"busy: {self.concurrent} dial-backs in progress"
        if len(self._recent) >= self.per_minute:
            return f"rate limit: {self.per_minute} dial-backs a minute"
        last = self._last.get(peer)
        if last is not None and now - last < self.per_peer_s:
            return f"rate limit: one dial-back per peer every {self.per_peer_s:g} s"
        if len(self._last) >= self._max_peers:  # forget the peers asked longest ago
            for old in [p for p, t in self._last.items() if now - t >= self.per_peer_s]:
                del self._last[old]
            if len(self._last) >= self._max_peers:
                return "busy: too many peers asked recently"
        self._recent.append(now)
        self._last[peer] = now
        self.active += 1
        return None

    def release(self) -> None:
        self.active = max(0, self.active - 1)


def dialable(addrs: list[str], observed_ip: str | None) -> list[str]:
    """The TCP addresses among ``addrs`` (at most :data:`MAX_ADDRS` looked at) whose IP is
    ``observed_ip``; relay (``/p2p-circuit``) addresses never."""
    if not observed_ip:
        return []
    out = []
    for a in addrs[:MAX_ADDRS]:
        if "/p2p-circuit" in a:
            continue
        try:
            ma = multiaddr.Multiaddr(a)
            ip = _value(ma, "ip4") or _value(ma, "ip6")
            _ = ma.value_for_protocol("tcp")
        except Exception:
            continue
        if ip == observed_ip:
            out.append(a)
    return out


def _value(ma, proto: str) -> str | None:
    try:
        return ma.value_for_protocol(proto)
    except Exception:
        return None


def encode_request(addrs: list[str]) -> bytes:
    return "\n".join(addrs[:MAX_ADDRS]).encode()


def decode_request(data: bytes) -> list[str]:
    return [line for line in data.decode("utf-8", "replace").split("\n") if line][:MAX_ADDRS]


# -- client side --------------------------------------------------------------------------
@dataclass(frozen=True)
class Answer:
    """One peer's answer: ``kind`` is ok, failed or refused; ``detail`` the address
    reached (ok) or the reason."""

    peer: str
    kind: str
    detail: str

    @classmethod
    def parse(cls, peer: str, data: bytes | None) -> Answer:
        if not data:
            return cls(peer, "refused", "no answer")
        kind, _, detail = data.decode("utf-8", "replace").partition(" ")
        if kind not in ("ok", "failed", "refused"):
            return cls(peer, "refused", f"unknown answer {kind[:40]!r}")
        return cls(peer, kind, detail[:300])


class Reachability:
    """What the answers say (pure; ``clock`` in seconds)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self.confirmed: Answer | None = None  # the latest ok
        self.failed: Answer | None = None  # the latest failed, since the last ok
        self.checked_at: float | None = None
        self.checks = 0

    def record(self, answers: list[Answer]) -> None:
        """The answers of one check: one ok makes us public; failures without any ok
        make us private; refusals alone change nothing."""
        ok = next((a for a in answers if a.kind == "ok"), None)
        failed = next((a for a in answers if a.kind == "failed"), None)
        if ok is not None or failed is not None:
            self.checked_at = self._clock()
            self.checks += 1
        if ok is not None:
            self.confirmed, self.failed = ok, None
        elif failed is not None:
            self.confirmed, self.failed = None, failed

    @property
    def known(self) -> bool:
        return self.confirmed is not None or self.failed is not None

    def status(self, relays: list[str]) -> str:
        """public / relayed via <peer> / private / unknown (``relays``: the relays we
        hold a reservation on now)."""
        if self.confirmed is not None:
            return "public"
        if relays:
            return "relayed via " + ", ".join(relays)
        if self.failed is not None:
            return "private"
        return "unknown"

    def view(self, relays: list[str]) -> dict:
        now = self._clock()
        return {"status": self.status(relays),
                "confirmed_by": self.confirmed.peer if self.confirmed else None,
                "confirmed_addr": self.confirmed.detail if self.confirmed else None,
                "failed": ({"peer": self.failed.peer, "why": self.failed.detail}
                           if self.failed else None),
                "checked_s_ago": (round(now - self.checked_at, 1)
                                  if self.checked_at is not None else None),
                "checks": self.checks, "relays": relays}


class Prober:
    """Asks connected peers to dial us back: soon after the first peers connect, again
    after :data:`RETRY_S` (doubling up to :data:`RECHECK_S`) while no peer could say,
    every :data:`RECHECK_S` once one did."""

    def __init__(self, ask: Callable[[str, list[str]], Awaitable[Answer]],
                 peers: Callable[[], list[str]], addrs: Callable[[], list[str]],
                 state: Reachability) -> None:
        self._ask = ask
        self._peers = peers
        self._addrs = addrs
        self.state = state
        self.next_check = 0.0

    async def check(self) -> list[Answer]:
        """Ask up to :data:`ASK_PEERS` connected peers at once; their answers, recorded."""
        peers = self._peers()
        addrs = self._addrs()
        if not peers or not addrs:
            return []
        chosen = random.sample(peers, min(ASK_PEERS, len(peers)))
        answers: list[Answer] = []

        async def one(peer: str) -> None:
            try:
                with trio.fail_after(ASK_TIMEOUT_S):
                    answers.append(await self._ask(peer, addrs))
            except Exception as exc:
                answers.append(Answer(peer, "refused", f"{type(exc).__name__}: {exc}"[:200]))

        async with trio.open_nursery() as nursery:
            for peer in chosen:
                nursery.start_soon(one, peer)
        before = self.state.status([])
        self.state.record(answers)
        after = self.state.status([])
        (log.info if after != before else log.debug)(
            "reachability %s: %s", after,
            "; ".join(f"{a.peer} {a.kind} {a.detail}" for a in answers))
        return answers

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        retry = RETRY_S
        while True:
            if trio.current_time() >= self.next_check and self._peers():
                await self.check()
                if self.state.known:
                    wait, retry = RECHECK_S, RETRY_S
                else:  # only refusals (rate limits, no address they may dial): back off
                    wait, retry = retry, min(retry * 2, RECHECK_S)
                self.next_check = trio.current_time() + wait
            await trio.sleep(1.0)
