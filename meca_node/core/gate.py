"""The gossip gate: what every gossiped message passes before it is used or forwarded.

Order matters: cheap structural checks first, then the signature, and only then
anything that changes state (replay cache, rate buckets), so forged messages can
neither fill the replay cache nor drain an honest signer's bucket.

An ``Entries`` message (account chain entries gossiped together) costs its signer one rate
token per ``ENTRIES_PER_TOKEN`` entries; then each entry is opened and checked as a message
of its own would be (structure, signature, network, an entry type), and one bad entry drops
the whole message, whose signer vouched for it. Entries carry no replay or clock check of
their own: a chain entry passed on again is a duplicate to the ledger, not a new payment.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from meca_node import wire
from meca_node.core.ledger import open_entry
from meca_node.core.ratelimit import SignerRateLimiter
from meca_node.core.replay import ReplayWindow
from meca_node.wire import Envelope, WireError

#: every reason a message can be dropped, in the order the gate checks them
DROP_REASONS = (
    "oversize", "malformed", "unsupported_version", "unknown_type", "bad_signature",
    "wrong_topic", "wrong_network", "stale", "future", "banned", "replay", "rate_limited",
)


@dataclass(frozen=True, slots=True)
class GateConfig:
    network_id: bytes
    max_message: int = wire.Caps().gossip_message
    skew_ms: int = 120_000
    rate_per_s: float = 5.0
    burst: int = 20
    #: account chain entries (meca/receipts/1) come faster: one or two per paid job
    entry_rate_per_s: float = 20.0
    entry_burst: int = 100
    ban_after: int = 50
    ban_ms: int = 60_000
    replay_capacity: int = 100_000


#: an ``Entries`` message costs one rate token per this many entries it carries (rounded up)
ENTRIES_PER_TOKEN = 8


@dataclass(frozen=True, slots=True)
class Verdict:
    envelope: Envelope | None
    reason: str | None
    detail: str = ""
    #: for an ``Entries`` message: its entries, each opened and checked
    entries: tuple[Envelope, ...] = ()

    @property
    def ok(self) -> bool:
        return self.reason is None


@dataclass
class GateStats:
    accepted: Counter = field(default_factory=Counter)  # by message kind
    dropped: Counter = field(default_factory=Counter)   # by reason
    entries: Counter = field(default_factory=Counter)   # in accepted Entries, by kind


class GossipGate:
    """Checks raw gossip bytes against our network, clock, replay cache and rate limits."""

    def __init__(self, config: GateConfig) -> None:
        self.config = config
        self.stats = GateStats()
        #: ``(signer, ts)`` of each message signed for our network, before the skew check
        #: (a clock estimate needs exactly the timestamps that check refuses)
        self.on_timestamp: Callable[[bytes, int], None] | None = None
        #: the checked entry whose envelope's SHA-256 is this, if the node has one: an
        #: entry of an ``Entries`` message with the very bytes of one is taken as it is,
        #: without a second signature check (a provider gets each of its clients'
        #: Receipts in the job first, then again in the payer's gossip)
        self.known_entry: Callable[[bytes], Envelope | None] | None = None
        # a nonce must be remembered while its ts can still pass the skew check
        self._replay = ReplayWindow(2 * config.skew_ms, config.replay_capacity)
        # one bucket per (topic, signer): a busy payer's entries never silence its adverts
        self._limits = {topic: SignerRateLimiter(
            *((config.entry_rate_per_s, config.entry_burst) if topic == wire.TOPIC_RECEIPTS
              else (config.rate_per_s, config.burst)), config.ban_after, config.ban_ms)
            for topic in wire.TOPICS}

    def check(self, data: bytes, topic: str, now_ms: int) -> Verdict:
        verdict = self._check(data, topic, now_ms)
        if verdict.ok:
            assert verdict.envelope is not None
            self.stats.accepted[verdict.envelope.kind] += 1
            for entry in verdict.entries:
                self.stats.entries[entry.kind] += 1
        else:
            self.stats.dropped[verdict.reason] += 1
        return verdict

    def _check(self, data: bytes, topic: str, now_ms: int) -> Verdict:
        cfg = self.config
        try:
            env = wire.open_envelope(data, max_size=cfg.max_message)
        except WireError as exc:
            return Verdict(None, exc.reason, exc.detail)
        allowed = wire.TOPIC_TYPES.get(topic)
        if allowed is None or env.kind not in allowed:
            return Verdict(None, "wrong_topic", f"{env.kind} does not belong on {topic}")
        if env.net != cfg.network_id:
            return Verdict(None, "wrong_network", f"network {env.net.hex()[:16]}...")
        if self.on_timestamp is not None:
            self.on_timestamp(env.signer, env.ts)
        if env.ts < now_ms - cfg.skew_ms:
            return Verdict(None, "stale", f"timestamp {now_ms - env.ts} ms old")
        if env.ts > now_ms + cfg.skew_ms:
            return Verdict(None, "future", f"timestamp {env.ts - now_ms} ms ahead")
        limits = self._limits[topic]
        if limits.is_banned(env.signer, now_ms):
            return Verdict(None, "banned", "signer is banned for flooding")
        if not self._replay.check_and_add(env.signer, env.nonce, env.ts, now_ms):
            return Verdict(None, "replay", "nonce already seen")
        batch = env.body.entries if isinstance(env.body, wire.Entries) else ()
        refused = limits.allow(env.signer, now_ms,
                               cost=1 + (len(batch) - 1) // ENTRIES_PER_TOKEN if batch else 1)
        if refused is not None:
            return Verdict(None, refused, "signer exceeds its gossip rate")
        if not batch:
            return Verdict(env, None)
        entries = []
        known = self.known_entry
        for i, item in enumerate(batch):
            have = known(hashlib.sha256(item.raw).digest()) if known is not None else None
            if have is not None and have.raw == item.raw:
                entries.append(have)
                continue
            try:
                entries.append(open_entry(item.raw, cfg.network_id))
            except WireError as exc:
                return Verdict(None, exc.reason, f"entry {i}: {exc.detail}")
        return Verdict(env, None, entries=tuple(entries))
