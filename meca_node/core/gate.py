"""The gossip gate: what every gossiped message passes before it is used or forwarded.

Order matters: cheap structural checks first, then the signature, and only then
anything that changes state (replay cache, rate buckets), so forged messages can
neither fill the replay cache nor drain an honest signer's bucket.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from meca_node import wire
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


@dataclass(frozen=True, slots=True)
class Verdict:
    envelope: Envelope | None
    reason: str | None
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.reason is None


@dataclass
class GateStats:
    accepted: Counter = field(default_factory=Counter)  # by message kind
    dropped: Counter = field(default_factory=Counter)   # by reason


class GossipGate:
    """Checks raw gossip bytes against our network, clock, replay cache and rate limits."""

    def __init__(self, config: GateConfig) -> None:
        self.config = config
        self.stats = GateStats()
        #: ``(signer, ts)`` of each message signed for our network, before the skew check
        #: (a clock estimate needs exactly the timestamps that check refuses)
        self.on_timestamp: Callable[[bytes, int], None] | None = None
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
        refused = limits.allow(env.signer, now_ms)
        if refused is not None:
            return Verdict(None, refused, "signer exceeds its gossip rate")
        return Verdict(env, None)
