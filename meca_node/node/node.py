"""The node driver: gossip validation and intake, periodic adverts, pings to providers, status.

Everything long-lived runs under the nursery of :meth:`Node.run`, started with
``nursery.start`` so callers continue only once the node is subscribed.
"""

from __future__ import annotations

import logging
import time
from collections import Counter, OrderedDict
from dataclasses import dataclass, field

import trio

from meca_node import __version__, wire
from meca_node.core.clock_offset import ClockOffset
from meca_node.core import (
    GateConfig, GossipGate, Identity, KnownOffer, OfferBook, PeerBook, offer_id_of, peer_id_of,
)
from meca_node.node.clock import PeerClock
from meca_node.node.latency import Latency
from meca_node.node.ledger import NodeLedger
from meca_node.node.ledger_sync import LedgerSync
from meca_node.node.ports import Clock, LedgerStore, Network, Random

log = logging.getLogger("meca_node.node")

#: how often the clock is checked against the peers', and how often a warning repeats
CLOCK_CHECK_S = 5.0
CLOCK_WARN_EVERY_S = 600.0

#: drops that an honest peer never causes; enough of them from one origin cuts it off
_STRIKE_REASONS = frozenset({"malformed", "bad_signature", "wrong_topic", "stale", "future",
                             "replay", "wrong_network"})


@dataclass(frozen=True)
class NodeSettings:
    roles: tuple[str, ...] = ("client",)
    advert_interval_s: float = 30.0
    price: int = 0
    skew_ms: int = 120_000
    rate_per_s: float = 5.0
    burst: int = 20
    entry_rate_per_s: float = 20.0
    entry_burst: int = 100
    strikes_before_cutoff: int = 32
    #: use the peers' median clock for our own messages (no RTC, no NTP); off: only warn
    follow_peer_clock: bool = False
    caps: wire.Caps = field(default_factory=wire.Caps)


class Node:
    """One meca-node: validates gossip, keeps a peer book, gossips its signed HostAdvert."""

    def __init__(self, settings: NodeSettings, identity: Identity, genesis: wire.Genesis,
                 net: Network, clock: Clock, rand: Random, hardware: wire.Hardware,
                 arch: str, ledger_store: LedgerStore | None = None) -> None:
        self.settings = settings
        self.identity = identity
        self.genesis = genesis
        self.net = net
        #: the machine's own clock; ``clock`` is what the node stamps and checks with
        self.system_clock = clock
        #: our clock's offset from the peers', from their signed timestamps
        self.clock_offset = ClockOffset()
        self.clock = PeerClock(clock, self.clock_offset) if settings.follow_peer_clock \
            else clock
        self._clock_warned_ms: int | None = None
        self.rand = rand
        self.hardware = hardware
        self.arch = arch
        self.gate = GossipGate(GateConfig(
            network_id=genesis.network_id, max_message=settings.caps.gossip_message,
            skew_ms=settings.skew_ms, rate_per_s=settings.rate_per_s, burst=settings.burst,
            entry_rate_per_s=settings.entry_rate_per_s, entry_burst=settings.entry_burst))
        self.gate.on_timestamp = self._observe_clock
        self.peerbook = PeerBook()
        #: offers live while re-announced within 3 intervals (plus the clock-skew allowance)
        self.offers = OfferBook(ttl_ms=3 * int(settings.advert_interval_s * 1000)
                                + settings.skew_ms)
        self.offer_seen = trio.Event()  # set whenever what is offered changes (then replaced)
        self._own_offers: dict[str, wire.TaskOffer] = {}  # ours, re-announced while we run
        self.capacity = None  # a provider's jobs.Capacity: its adverts show what is free
        self.environments: tuple[wire.Environment, ...] = ()  # a provider's, with scores
        self.cached_images: tuple[str, ...] = ()  # image CIDs a provider runs without a pull
        self.warm_pool = None  # a provider's warm container pool: stats() goes into status
        self.job_host = None  # a provider's jobs.JobHost: its counters go into metrics
        self.adverts_sent = 0
        self.advert_seen = trio.Event()  # set whenever a new advert arrives (then replaced)
        self._started_mono = time.monotonic()
        #: what the gate accepted, by message bytes, until consumed: the envelope, or an
        #: ``Entries`` message's checked entries
        self._accepted: OrderedDict[bytes, wire.Envelope | tuple[wire.Envelope, ...]] = (
            OrderedDict())
        self._logged: set[tuple[str, str]] = set()
        self._strikes: Counter[str] = Counter()
        self._cut_off: dict[str, str] = {}
        #: peers that sent messages of another protocol version: what they sent
        self._other_versions: OrderedDict[str, str] = OrderedDict()
        self._nursery: trio.Nursery | None = None
        #: account chains and balances; entries from meca/receipts/1 and our own, kept in
        #: ``ledger_store`` (memory only without one)
        self.ledger = NodeLedger(genesis, identity.public_key, self.seal_envelope, net.publish,
                                 ledger_store)
        #: missing entries fetched from peers, ours served (``/meca/ledger/1.0.0``)
        self.ledger_sync = LedgerSync(net, self.ledger, self.seal, genesis.network_id)
        self.gate.known_entry = lambda source: self.ledger.chains.entry(source)
        #: smoothed ping round trips to connected providers (``/ipfs/ping/1.0.0``)
        self.latency = Latency(net, self._provider_peers)

    # -- gossip intake ------------------------------------------------------------
    def _validate(self, topic: str, data: bytes, origin: str) -> bool:
        """Gossipsub validator: runs before a message is delivered or forwarded."""
        if origin == self.net.peer_id:
            return True  # our own publish; we signed it
        if origin in self._cut_off:
            self.gate.stats.dropped["cut_off"] += 1
            return False
        verdict = self.gate.check(data, topic, self.clock.now_ms())
        if verdict.ok and isinstance(verdict.envelope.body, wire.FraudProof):  # type: ignore
            try:  # a proof that proves nothing is not forwarded
                self.ledger.check_proof(verdict.envelope.body)  # type: ignore
            except ValueError as exc:
                self.ledger.stats["bad_proof"] += 1
                log.warning("dropped a fraud proof from %s: %s", origin, exc)
                return False
        if verdict.ok:
            self._accepted[data] = verdict.entries or verdict.envelope  # type: ignore
            while len(self._accepted) > self.settings.caps.queue:
                self._accepted.popitem(last=False)
            return True
        reason = verdict.reason or "?"
        if reason == "unsupported_version":
            self._other_version(origin, verdict.detail)
        elif (reason, origin) not in self._logged and len(self._logged) < 4096:
            self._logged.add((reason, origin))
            log.warning("dropped gossip on %s from %s: %s (%s); further drops of this kind "
                        "from this peer are only counted", topic, origin, reason, verdict.detail)
        if reason == "oversize":
            self._cut(origin, f"sent a {len(data)}-byte message over the "
                              f"{self.settings.caps.gossip_message}-byte cap")
        elif reason in _STRIKE_REASONS:
            self._strikes[origin] += 1
            if self._strikes[origin] >= self.settings.strikes_before_cutoff:
                self._cut(origin, f"{self._strikes[origin]} invalid messages")
        return False

    def _cut(self, origin: str, why: str) -> None:
        if origin in self._cut_off or self._nursery is None:
            return
        self._cut_off[origin] = why
        self._nursery.start_soon(self.net.block, origin, why)

    async def _consume(self, topic: str, messages) -> None:
        async for msg in messages:
            if msg.origin == self.net.peer_id:
                continue
            env = self._accepted.pop(msg.data, None)
            if env is None:
                continue  # evicted under load; it was counted when validated
            if isinstance(env, tuple):  # an Entries message
                await self.ledger.on_gossip_entries(env)
            elif topic == wire.TOPIC_RECEIPTS:
                await self.ledger.on_gossip(env)
            else:
                self._handle(env)

    def _handle(self, env: wire.Envelope) -> None:
        if isinstance(env.body, wire.HostAdvert):
            if self.peerbook.observe(env, self.clock.now_ms()):
                self.net.learn_addrs(peer_id_of(env.signer), env.body.addrs)
                self.advert_seen.set()
                self.advert_seen = trio.Event()
        elif isinstance(env.body, (wire.TaskOffer, wire.TaskWithdraw)):
            if self.offers.observe(env, self.clock.now_ms()):
                self.offer_seen.set()
                self.offer_seen = trio.Event()

    # -- offers -----------------------------------------------------------------
    async def publish_offer(self, offer: wire.TaskOffer) -> KnownOffer:
        """Gossip our signed ``offer`` now and with every advert while we run; a former
        offer of the same name is superseded. Returns it as the network will know it."""
        raw = self.seal(offer)
        env = wire.open_envelope(raw, max_size=self.settings.caps.gossip_message)
        self._own_offers[offer.name] = offer
        self.offers.observe(env, self.clock.now_ms())
        await self.net.publish(wire.TOPIC_OFFERS, raw)
        offer_id = offer_id_of(env)
        return next(o for o in self.offers.live(self.clock.now_ms()) if o.offer_id == offer_id)

    async def withdraw_offer(self, name: str) -> bytes:
        """Stop offering ``name``: gossip a signed TaskWithdraw; the withdrawn offer's id."""
        mine = [o for o in self.offers.live(self.clock.now_ms())
                if o.offer.name == name and o.signer == self.identity.public_key]
        if name not in self._own_offers or not mine:
            raise LookupError(f"this node offers no task named {name!r} (see `meca-node "
                              "offers --mine`)")
        del self._own_offers[name]
        raw = self.seal(wire.TaskWithdraw(name=name, offer_id=mine[0].offer_id))
        env = wire.open_envelope(raw, max_size=self.settings.caps.gossip_message)
        self.offers.observe(env, self.clock.now_ms())
        await self.net.publish(wire.TOPIC_OFFERS, raw)
        return mine[0].offer_id

    async def _reannounce_offers(self) -> None:
        for offer in list(self._own_offers.values()):
            try:
                await self.publish_offer(offer)
            except Exception as exc:  # no peers yet: not fatal, the next round retries
                log.debug("offer re-announce failed: %s", exc)

    def restore_offers(self, offers: list[wire.TaskOffer]) -> None:
        """Offers published before a restart: announced with the next advert round."""
        for offer in offers:
            self._own_offers[offer.name] = offer

    def own_offers(self) -> list[wire.TaskOffer]:
        """What this node publishes (to persist across restarts)."""
        return list(self._own_offers.values())

    def offers_view(self) -> dict:
        now = self.clock.now_ms()
        return {"offers": [{
            "offer_id": o.offer_id.hex(), "name": o.offer.name, "label": o.label,
            "developer": o.developer, "mine": o.signer == self.identity.public_key,
            "description": o.offer.description, "image_cid": o.offer.image_cid,
            "arch": o.offer.arch, "environment": o.offer.environment, "fee": o.offer.fee,
            "cpu": o.offer.resources.cpu_milli / 1000, "mem_mib": o.offer.resources.mem_mib,
            "gpus": o.offer.resources.gpu_count, "age_s": round((now - o.ts) / 1000, 1),
        } for o in self.offers.live(now)]}

    # -- adverts ----------------------------------------------------------------
    def make_advert(self) -> wire.HostAdvert:
        hw = self.hardware
        free = (self.capacity.free if self.capacity is not None else
                wire.Resources(cpu_milli=hw.cpu_count * 1000, mem_mib=hw.mem_mib,
                               gpu_count=len(hw.gpus)))
        return wire.HostAdvert(
            roles=self.settings.roles, arch=self.arch, hardware=hw,
            free=free,
            price=self.settings.price, environments=self.environments,
            cached_images=self.cached_images[:256],
            queue=self.capacity.load if self.capacity is not None else 0,
            addrs=tuple(self.net.listen_addrs()[:16]))

    def _advert_state(self) -> tuple:
        """What changes in an advert between rounds."""
        cap = self.capacity
        return (cap.free if cap is not None else None,
                cap.load if cap is not None else 0,
                self.cached_images, self.environments)

    def _other_version(self, origin: str, detail: str) -> None:
        """A peer speaks another protocol version: say so once, plainly, and keep it."""
        if origin not in self._other_versions:
            log.warning("peer %s speaks another meca protocol version (%s; this node speaks "
                        "%d, meca-node %s). Its messages are ignored. If its version is "
                        "newer, upgrade meca-node to exchange messages with it.", origin,
                        detail, wire.ENVELOPE_VERSION, __version__)
        self._other_versions[origin] = detail
        self._other_versions.move_to_end(origin)
        while len(self._other_versions) > 256:
            self._other_versions.popitem(last=False)

    # -- clock ----------------------------------------------------------------------
    def _observe_clock(self, signer: bytes, ts: int) -> None:
        if signer != self.identity.public_key:
            self.clock_offset.observe(signer, ts, self.system_clock.now_ms())

    def clock_status(self) -> dict:
        """Our clock against the peers' median: the offset, how many peers, and a warning
        when it is off by more than half the skew window."""
        estimate = self.clock_offset.estimate(self.system_clock.now_ms())
        following = isinstance(self.clock, PeerClock)
        out = {"offset_ms": estimate.offset_ms if estimate else None,
               "peers": estimate.peers if estimate else 0,
               "following_peers": following,
               "applied_ms": self.clock.applied_ms if following else 0,  # type: ignore
               "warning": None}
        if estimate is not None and abs(estimate.offset_ms) > self.settings.skew_ms // 2:
            ahead = "behind" if estimate.offset_ms > 0 else "ahead of"
            out["warning"] = (
                f"this machine's clock is {abs(estimate.offset_ms) / 1000:.0f} s {ahead} the "
                f"median of {estimate.peers} peers, more than half the "
                f"{self.settings.skew_ms / 1000:g} s skew window: "
                + ("its messages carry the peers' time (clock_follow_peers)." if following else
                   "peers may refuse its messages as stale or future. Fix the clock (NTP), or "
                   "set clock_follow_peers = true to use the peers' median time."))
        return out

    async def _clock_watch(self) -> None:
        """Warn loudly, at once and then every CLOCK_WARN_EVERY_S, while the clock is off."""
        while True:
            warning = self.clock_status()["warning"]
            now = self.system_clock.now_ms()
            if warning and (self._clock_warned_ms is None
                            or now - self._clock_warned_ms >= CLOCK_WARN_EVERY_S * 1000):
                self._clock_warned_ms = now
                log.warning("CLOCK: %s", warning)
            await trio.sleep(CLOCK_CHECK_S)

    def seal(self, body) -> bytes:
        return self.seal_envelope(body).raw

    def seal_envelope(self, body) -> wire.Envelope:
        return wire.seal_envelope(body, key=self.identity.signing_key,
                                  net=self.genesis.network_id, ts=self.clock.now_ms(),
                                  nonce=self.rand.token_bytes(16))

    async def publish_advert(self) -> None:
        await self.net.publish(wire.TOPIC_ADVERTS, self.seal(self.make_advert()))
        self.adverts_sent += 1

    async def _advert_loop(self) -> None:
        """Advertise at start, every interval, soon after new peers connect, and within a
        tick of a change in what the advert says (free resources, queue, cached images,
        environments): at most one advert per tick."""
        interval = self.settings.advert_interval_s
        tick = min(1.0, interval)
        last = -interval
        known: set[str] = set()
        said = None
        while True:
            now = trio.current_time()
            peers = {p.peer_id for p in self.net.connected_peers()}
            grew = bool(peers - known)
            known = peers
            state = self._advert_state()
            if now - last >= interval or grew or state != said:
                said = state
                if grew:
                    # let gossipsub graft the new peer into the mesh first (1 s heartbeat)
                    await trio.sleep(1.2)
                try:
                    await self.publish_advert()
                except Exception as exc:  # publishing with no peers yet is not fatal
                    log.debug("advert publish failed: %s", exc)
                await self._reannounce_offers()
                last = trio.current_time()
            await trio.sleep(tick)

    # -- lifecycle ----------------------------------------------------------------
    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        await self.ledger.load()  # balances from before a restart, before any intake
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            await nursery.start(self.ledger.announcer)
            await nursery.start(self.ledger.regossiper)
            nursery.start_soon(self.ledger.auto_receive)
            self.ledger_sync.install()
            await nursery.start(self.ledger_sync.run)
            for topic in wire.TOPICS:
                self.net.set_validator(topic, self._validate)
                messages = await self.net.subscribe(topic)
                nursery.start_soon(self._consume, topic, messages)
            nursery.start_soon(self._advert_loop)
            nursery.start_soon(self._clock_watch)
            await nursery.start(self.latency.run)
            task_status.started()

    # -- latency ------------------------------------------------------------------------
    def rtt_ms(self, peer_id: str) -> float | None:
        """The smoothed ping round trip to a connected provider in ms; ``None`` while it
        is not measured (not a provider, not connected, or not answering pings)."""
        return self.latency.rtt_ms(peer_id)

    def _provider_peers(self) -> list[str]:
        return [a.peer_id for a in self.peerbook.fresh(self.clock.now_ms(), self._advert_ttl_ms())
                if "provider" in a.advert.roles]

    def _advert_ttl_ms(self) -> int:
        return 3 * int(self.settings.advert_interval_s * 1000) + self.settings.skew_ms

    # -- views for the control API ---------------------------------------------------
    def status(self) -> dict:
        now = self.clock.now_ms()
        return {
            "peer_id": self.identity.peer_id,
            "public_key": self.identity.public_key.hex(),
            "network": {"name": self.genesis.name, "id": self.genesis.network_id.hex()},
            "roles": list(self.settings.roles),
            "addrs": self.net.listen_addrs(),
            "uptime_s": round(time.monotonic() - self._started_mono, 1),
            "peers_connected": len(self.net.connected_peers()),
            "adverts_known": len(self.peerbook.fresh(now, self._advert_ttl_ms())),
            "adverts_sent": self.adverts_sent,
            "gossip": {"accepted": dict(self.gate.stats.accepted),
                       "entries": dict(self.gate.stats.entries),
                       "dropped": dict(self.gate.stats.dropped)},
            "cut_off": dict(self._cut_off),
            "jobs_running": len(self.capacity.reserved) if self.capacity is not None else 0,
            "free": (_resources(self.capacity.free) if self.capacity is not None else None),
            "offered": (_resources(self.capacity.offered) if self.capacity is not None
                        else None),
            "warm_pool": self.warm_pool.stats() if self.warm_pool is not None else None,
            "ledger": {**self.ledger.status(), "sync": dict(self.ledger_sync.stats)},
            "latency": {"measured": len(self.latency.view()), **dict(self.latency.stats)},
            "reachability": self.net.reachability(),
            "clock": self.clock_status(),
            "protocol": {"version": wire.ENVELOPE_VERSION,
                         "peers_on_other_versions": dict(self._other_versions)},
        }

    def peers(self) -> dict:
        now = self.clock.now_ms()
        connected = {p.peer_id: list(p.addrs) for p in self.net.connected_peers()}
        adverts = []
        for a in self.peerbook.fresh(now, 10**12):
            adverts.append({
                "peer_id": a.peer_id, "roles": list(a.advert.roles), "arch": a.advert.arch,
                "cpu_count": a.advert.hardware.cpu_count, "mem_mib": a.advert.hardware.mem_mib,
                "gpus": len(a.advert.hardware.gpus), "price": a.advert.price,
                "age_s": round((now - a.ts) / 1000, 1), "connected": a.peer_id in connected,
                "addrs": list(a.advert.addrs), "free": _resources(a.advert.free),
                "cached_images": list(a.advert.cached_images),
                "environments": [{"name": e.name, "score": e.score}
                                 for e in a.advert.environments],
            })
        return {"connected": connected, "adverts": adverts}

    def advert_peer_ids(self) -> set[str]:
        return {peer_id_of(a.signer) for a in self.peerbook.fresh(self.clock.now_ms(), 10**12)}


def _resources(r: wire.Resources) -> dict:
    return {"cpu": r.cpu_milli / 1000, "mem_mib": r.mem_mib, "gpus": r.gpu_count}
