"""The libp2p host of a node: TCP + Noise + yamux, gossipsub, dialing, mDNS, streams.

This is the only package that imports libp2p. It knows nothing of tasks: it moves
bytes, and hands gossip to a validator callback before anything is forwarded.
Traps of py-libp2p 0.8.1 handled here (see shared notes): one connection per peer
(else every dial waits 250 ms), a 1 s gossipsub heartbeat (default 120 s), its
per-peer publish limit raised (ours is per signer, in ``core``), subscription
queues sized to our queue cap (default 32), services entered before ``host.run``
so the host stops first, and ``/ipfs/ping/1.0.0`` answered and measured by our own
:mod:`meca_node.net.ping` (theirs measures whole milliseconds, a stream per ping).

Reachability: the addresses a node announces (identify, and the node's adverts through
:meth:`Libp2pNet.listen_addrs`) are config ``announce`` when set, else the listen
addresses with a wildcard (``0.0.0.0``) replaced by this machine's interface addresses;
plus ``<relay>/p2p-circuit`` for each relay reservation held (:mod:`meca_node.net.relay`).
A peer with no direct connection is dialed at its known addresses, then through the
relays we are connected to. :mod:`meca_node.net.reachability` says whether others can
dial us.
"""

from __future__ import annotations

import logging
import os
import random
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass

import multiaddr
import trio
from libp2p import new_host
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.crypto.x25519 import create_new_key_pair as create_x25519_key_pair
from libp2p.discovery.events.peerDiscovery import peerDiscovery
from libp2p.network.config import ConnectionConfig
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo, info_from_p2p_addr
import libp2p.pubsub.pubsub as _pubsub_module
from libp2p.pubsub.gossipsub import PROTOCOL_ID, PROTOCOL_ID_V11, GossipSub
from libp2p.pubsub.pubsub import Pubsub
from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_PROTOCOL_ID
from libp2p.security.noise.transport import Transport as NoiseTransport
from libp2p.tools.anyio_service import background_trio_service

from meca_node.net import fastpath, streamsafety
from meca_node.net.faults import FaultSpecError, FaultSwitch
from meca_node.net.framing import FrameError, FrameReader, write_frame, write_frames
from meca_node.net.ping import PROTOCOL as PING_PROTOCOL
from meca_node.net.ping import Pinger
from meca_node.net.reachability import (
    DIAL_TIMEOUT_S as _DIALBACK_TIMEOUT_S, MAX_FRAME as DIALBACK_FRAME, PROTOCOL as DIALBACK,
    Answer, DialbackLimiter, Prober,
    Reachability, decode_request, dialable, encode_request,
)
from meca_node.net.relay import HOP, STOP, RelayClient, RelayLimits, RelayService, relay_of

log = logging.getLogger("meca_node.net")

#: (topic, data, origin peer id) -> accept?
Validator = Callable[[str, bytes, str], bool]


class NetStartError(OSError):
    """The host could not start as configured (e.g. a listen address is in use)."""


@dataclass(frozen=True)
class NetConfig:
    listen: tuple[str, ...] = ("/ip4/0.0.0.0/tcp/4601",)
    announce: tuple[str, ...] = ()
    bootstrap: tuple[str, ...] = ()
    mdns: bool = False
    max_rpc: int = 1024 * 1024
    max_frame: int = 1024 * 1024
    queue: int = 1024
    heartbeat_s: int = 1
    dial_timeout_s: float = 5.0
    backoff_min_s: float = 1.0
    backoff_max_s: float = 30.0
    max_wanted_peers: int = 256
    #: simulations only: a settable fault switch (partition, delay, drop; net/faults.py)
    sim_faults: bool = False
    #: serve as a circuit relay v2 hop for others, within ``relay_limits``
    relay_service: bool = False
    relay_limits: RelayLimits = RelayLimits()
    #: relays (``/p2p/`` multiaddrs) to keep a reservation on, to be reachable through them
    relays: tuple[str, ...] = ()
    #: ask peers to dial us back, to say whether we are reachable (``reachability()``)
    dialback: bool = True


@dataclass(frozen=True, slots=True)
class GossipMessage:
    topic: str
    data: bytes
    origin: str


@dataclass(frozen=True, slots=True)
class PeerView:
    peer_id: str
    addrs: tuple[str, ...]


@dataclass
class _Wanted:
    info: PeerInfo
    source: str
    backoff_s: float
    next_try: float = 0.0
    failures: int = 0
    last_error: str = ""


def parse_peer_addr(addr: str) -> PeerInfo:
    """A multiaddr with ``/p2p/<peer id>``; ``ValueError`` saying what is missing otherwise."""
    try:
        ma = multiaddr.Multiaddr(addr)
    except Exception as exc:
        raise ValueError(f"{addr!r} is not a multiaddr ({exc})") from None
    try:
        return info_from_p2p_addr(ma)
    except Exception:
        raise ValueError(f"{addr!r} must end with /p2p/<peer id> (as printed by the node "
                         "at start)") from None


class Libp2pNet:
    """A running host. Create it with :func:`open_net`."""

    def __init__(self, host, pubsub: Pubsub, config: NetConfig) -> None:
        self._host = host
        self._pubsub = pubsub
        self._config = config
        self._wanted: dict[ID, _Wanted] = {}
        self._discovered_send, self._discovered_recv = trio.open_memory_channel[PeerInfo](64)
        self._blocked: set[ID] = set()
        #: simulations: the switch, and the peers it blocks now (empty when off: the hooks
        #: cost one set lookup or one ``None`` test)
        self.faults = FaultSwitch(enabled=config.sim_faults)
        self._fault_blocked: set[ID] = set()
        self._write_faults = self.faults if config.sim_faults else None
        #: our own gossip publishes, by topic (for metrics)
        self.published: Counter[str] = Counter()
        #: answers ``/ipfs/ping/1.0.0`` (in place of py-libp2p's handler) and measures RTTs
        self.pinger = Pinger(host, self._refuses)
        host.set_stream_handler(PING_PROTOCOL, self.pinger.serve)
        #: relays: reservations we hold (config ``relays``), the stop side, dialing via one
        self.relay_client = RelayClient(host, [parse_peer_addr(a) for a in config.relays],
                                        self._refuses, backoff_max_s=config.backoff_max_s)
        host.set_stream_handler(STOP, self.relay_client.handle_stop)
        for addr in config.relays:
            self.want(addr, "relay")
        #: the hop we serve for others (config ``relay_service``), or None
        self.relay_service = (RelayService(host, config.relay_limits, self._refuses)
                              if config.relay_service else None)
        if self.relay_service is not None:
            host.set_stream_handler(HOP, self.relay_service.handle)
        #: dial-backs: served (bounded), and asked for to learn our reachability
        self.dialback_limiter = DialbackLimiter()
        self.reach = Reachability()
        self.prober = Prober(self._ask_dialback, self._dialback_peers, self._direct_addrs,
                             self.reach)
        self.set_stream_handler(DIALBACK, self._serve_dialback, max_frame=DIALBACK_FRAME)
        self.dialback_stats: Counter[str] = Counter()
        #: addresses peers advertised (learn_addrs), most recent last
        self._learnt: dict[ID, list[str]] = {}

    # -- identity and peers -------------------------------------------------
    @property
    def peer_id(self) -> str:
        return self._host.get_id().to_base58()

    def listen_addrs(self) -> list[str]:
        """The addresses we announce (``/p2p/<id>`` included): see the module's doc."""
        return [str(a) for a in self._host.get_addrs()]

    def _direct_addrs(self) -> list[str]:
        return [a for a in self.listen_addrs() if "/p2p-circuit" not in a]

    # -- reachability ---------------------------------------------------------------------
    def reachability(self) -> dict:
        """``status`` (public / relayed via <peer> / private / unknown) and what it rests
        on: the dial-back answers, our reservations, and the relay we serve (if any)."""
        relays = [h.relay.peer_id.to_base58() for h in self.relay_client.held()]
        view = self.reach.view(relays)
        view["reservations"] = self.relay_client.view()
        connected = {p.to_base58() for p in self._host.get_connected_peers()}
        for r in view["reservations"]:
            wanted = self._wanted.get(ID.from_base58(r["relay"]))
            if r["relay"] not in connected and not r["reserved"]:
                r["last_error"] = "not connected" + (
                    f" ({wanted.last_error})" if wanted and wanted.last_error else "")
        view["dialbacks_served"] = dict(self.dialback_stats)
        if self.relay_service is not None:
            view["relay_service"] = self.relay_service.view()
        return view

    def _dialback_peers(self) -> list[str]:
        """Peers we may ask: connected over a direct (not relayed) connection."""
        out = []
        for pid in self._host.get_connected_peers():
            if self._refuses(pid) or self._relayed_only(pid):
                continue
            out.append(pid.to_base58())
        return out

    def _relayed_only(self, pid: ID) -> bool:
        try:
            conns = self._host.get_network().get_connections(pid)
        except Exception:
            return False
        return bool(conns) and all(
            "/p2p-circuit" in " ".join(str(a) for a in (c.get_transport_addresses() or []))
            for c in conns)

    async def _ask_dialback(self, peer_id: str, addrs: list[str]) -> Answer:
        stream = await self.open_stream(peer_id, DIALBACK, max_frame=DIALBACK_FRAME)
        try:
            await stream.send(encode_request(addrs))
            return Answer.parse(peer_id, await stream.receive())
        finally:
            await stream.close()

    async def _serve_dialback(self, stream: FramedStream) -> None:
        peer = stream.remote_peer
        request = None
        with trio.move_on_after(_DIALBACK_TIMEOUT_S):  # a request is one small frame
            request = await stream.receive()
        if request is None:
            return
        if self._relayed_only(ID.from_base58(peer)):
            self.dialback_stats["refused"] += 1
            await stream.send(b"refused dial-backs are not served over relayed connections")
            return
        addrs = dialable(decode_request(request), stream.remote_ip())
        if not addrs:
            self.dialback_stats["refused"] += 1
            await stream.send(b"refused no address with the IP your request came from "
                              + (stream.remote_ip() or "?").encode())
            return
        why = self.dialback_limiter.admit(peer)
        if why is not None:
            self.dialback_stats["refused"] += 1
            await stream.send(b"refused " + why.encode())
            return
        try:
            errors = []
            for addr in addrs:
                try:
                    with trio.fail_after(_DIALBACK_TIMEOUT_S):
                        await self._dial_back(ID.from_base58(peer), addr)
                    self.dialback_stats["ok"] += 1
                    await stream.send(b"ok " + addr.encode())
                    return
                except trio.TooSlowError:
                    errors.append(f"{addr}: no connection within {_DIALBACK_TIMEOUT_S:g} s")
                except Exception as exc:  # unreachable: many error types, all one answer
                    errors.append(f"{addr}: {type(exc).__name__} {exc}"[:150])
            self.dialback_stats["failed"] += 1
            await stream.send(("failed " + "; ".join(errors)).encode()[:DIALBACK_FRAME])
        finally:
            self.dialback_limiter.release()

    async def _dial_back(self, pid: ID, addr: str) -> None:
        """A new TCP connection to ``addr`` and a Noise handshake proving it is ``pid``;
        then closed (never handed to the swarm: the existing connection stays the one)."""
        swarm = self._host.get_network()
        ma = multiaddr.Multiaddr(addr)
        p2p = _value_for(ma, "p2p")
        if p2p:
            ma = ma.decapsulate(multiaddr.Multiaddr(f"/p2p/{p2p}"))
        transport = swarm.transport_manager.transport_for_dialing(ma)
        if transport is None:
            raise ConnectionError(f"no transport for {ma}")
        raw = await transport.dial(ma)
        try:
            secured = await swarm.upgrader.upgrade_security(raw, True, pid)
            await secured.close()
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(2):
                try:
                    await raw.close()
                except Exception:
                    pass

    def connected_peers(self) -> list[PeerView]:
        store = self._host.get_peerstore()
        out = []
        for pid in self._host.get_connected_peers():
            try:
                addrs = tuple(str(a) for a in store.addrs(pid))
            except Exception:
                addrs = ()
            out.append(PeerView(pid.to_base58(), addrs))
        return out

    def dial_state(self) -> list[dict]:
        now = time.monotonic()
        return [{"peer_id": pid.to_base58(), "source": w.source, "failures": w.failures,
                 "retry_in_s": round(max(0.0, w.next_try - now), 1), "last_error": w.last_error}
                for pid, w in self._wanted.items()]

    def want(self, addr: str, source: str = "bootstrap") -> None:
        """Keep a connection to ``addr`` (``/p2p/`` multiaddr), redialing with backoff."""
        self._want(parse_peer_addr(addr), source)

    def _want(self, info: PeerInfo, source: str) -> None:
        if info.peer_id == self._host.get_id() or info.peer_id in self._blocked:
            return
        if info.peer_id in self._wanted:
            return
        if len(self._wanted) >= self._config.max_wanted_peers:
            log.warning("not tracking more than %d peers; ignoring %s",
                        self._config.max_wanted_peers, info.peer_id)
            return
        self._wanted[info.peer_id] = _Wanted(info, source, self._config.backoff_min_s)

    async def block(self, peer_id: str, why: str) -> None:
        """Cut a misbehaving peer off: no more gossip from it, connection closed, no redial."""
        pid = ID.from_base58(peer_id)
        if pid in self._blocked:
            return
        self._blocked.add(pid)
        self._wanted.pop(pid, None)
        self._blacklist(pid)
        log.warning("cut off peer %s: %s", peer_id, why)
        with trio.move_on_after(2):
            try:
                await self._host.disconnect(pid)
            except Exception as exc:  # already gone is fine
                log.debug("disconnect %s: %s", peer_id, exc)

    def _blacklist(self, pid: ID) -> None:
        """No gossip from or through ``pid`` (pubsub checks the forwarder and the origin).
        Not ``Pubsub.add_to_blacklist``: its teardown task deletes the peer's entry after an
        await, and when the peer's connection drops meanwhile (we disconnect it next) that
        ``del`` raises KeyError and stops pubsub and the node. Disconnecting tears it down."""
        self._pubsub.blacklisted_peers.add(pid)

    def _refuses(self, pid: ID) -> bool:
        """Cut off for good, or blocked by the simulation's fault switch for now."""
        return pid in self._blocked or pid in self._fault_blocked

    # -- simulation faults ------------------------------------------------------------
    def faults_view(self) -> dict:
        return self.faults.view()

    async def set_faults(self, doc: dict) -> dict:
        """Set the fault switch (see :mod:`meca_node.net.faults`): blocked peers are cut off
        now (gossip blacklisted, connection closed) and not redialed until unblocked; the
        switch's view after. ``FaultsDisabled`` on a node without ``sim_faults``;
        ``FaultSpecError`` (nothing changed) on a bad setting."""
        spec = self.faults.parse(doc)
        try:
            ids = {ID.from_base58(p) for p in spec.block}
        except Exception as exc:
            raise FaultSpecError(f"block: not a peer id ({exc})") from None
        added, removed = self.faults.apply(spec)
        self._fault_blocked = ids
        connected = set(self._host.get_connected_peers())
        for peer in removed:
            pid = ID.from_base58(peer)
            if pid in self._blocked:  # a peer cut off for cause stays cut off
                continue
            self._pubsub.remove_from_blacklist(pid)
            if pid in connected:
                # it dialed us while we still blocked it: pubsub refused it on that
                # connection and would never gossip with it there; make it again
                self.faults.stats["redialed"] += 1
                with trio.move_on_after(2):
                    try:
                        await self._host.disconnect(pid)
                    except Exception as exc:
                        log.debug("disconnect %s: %s", peer, exc)
        for peer in added:
            self._blacklist(ID.from_base58(peer))
        await self._drop_fault_blocked()
        return self.faults.view()

    async def _drop_fault_blocked(self) -> None:
        """Close connections to peers the fault switch blocks (also ones they dialed)."""
        for pid in set(self._host.get_connected_peers()) & self._fault_blocked:
            self.faults.stats["disconnected"] += 1
            with trio.move_on_after(2):
                try:
                    await self._host.disconnect(pid)
                except Exception as exc:  # already gone is fine
                    log.debug("disconnect %s: %s", pid, exc)

    # -- gossip ---------------------------------------------------------------
    def set_validator(self, topic: str, fn: Validator) -> None:
        faults = self._write_faults
        me = self._host.get_id()

        def _validate(_forwarder: ID, msg) -> bool:
            try:
                origin = ID(msg.from_id)
            except Exception:
                return False
            if faults is not None and origin != me and faults.drop_incoming():
                return False  # simulated loss: this node never gets this message
            return fn(topic, bytes(msg.data), origin.to_base58())

        self._pubsub.set_topic_validator(topic, _validate, False)

    async def publish(self, topic: str, data: bytes) -> None:
        if self._write_faults is not None and self._write_faults.delay_s:
            self._write_faults.stats["writes_delayed"] += 1
            await trio.sleep(self._write_faults.delay_s)
        await self._pubsub.publish(topic, data)
        self.published[topic] += 1

    async def subscribe(self, topic: str) -> AsyncIterator[GossipMessage]:
        # py-libp2p reads this module constant when it opens the subscription queue
        _pubsub_module.SUBSCRIPTION_CHANNEL_SIZE = self._config.queue
        sub = await self._pubsub.subscribe(topic)
        return _iterate(sub, topic)

    # -- streams ----------------------------------------------------------------
    def set_stream_handler(self, protocols: str | Sequence[str],
                           handler: Callable[[FramedStream], Awaitable[None]],
                           max_frame: int | None = None) -> None:
        """Serve ``protocols`` (one id or several, e.g. versions) with ``handler``; frames
        over ``max_frame`` (default: the config's) reset the stream."""
        names = [protocols] if isinstance(protocols, str) else list(protocols)
        cap = max_frame or self._config.max_frame

        async def _handle(stream) -> None:
            framed = FramedStream(stream, cap, self._write_faults)
            if self.is_blocked(framed.remote_peer):
                if self.faults.blocks(framed.remote_peer):
                    self.faults.stats["streams_refused"] += 1
                await framed.reset()
                return
            try:
                await handler(framed)
            except FrameError as exc:
                log.info("peer %s broke %s framing: %s", framed.remote_peer, names[0], exc)
                await framed.reset()
            finally:
                await framed.close()

        for name in names:
            self._host.set_stream_handler(name, _handle)

    async def open_stream(self, peer_id: str, protocols: str | Sequence[str],
                          max_frame: int | None = None) -> FramedStream:
        """A new stream to a connected (or dialable) peer, speaking the first of
        ``protocols`` it supports."""
        names = [protocols] if isinstance(protocols, str) else list(protocols)
        pid = ID.from_base58(peer_id)
        if pid in self._fault_blocked:
            self.faults.stats["opens_refused"] += 1
            raise ConnectionError(f"peer {peer_id} is blocked by the simulation's fault "
                                  "switch (a partition)")
        if pid not in self._host.get_connected_peers():
            await self._reach_peer(pid)
        stream = await self._host.new_stream(pid, names)
        return FramedStream(stream, max_frame or self._config.max_frame, self._write_faults)

    def learn_addrs(self, peer_id: str, addrs: Sequence[str]) -> None:
        """Addresses a peer announced (its signed advert): where to dial it when no
        connection is open; circuit addresses name the relays it is reachable through."""
        try:
            pid = ID.from_base58(peer_id)
        except Exception:
            return
        if pid == self._host.get_id():
            return
        good = []
        for a in list(addrs)[:16]:
            try:
                ma = multiaddr.Multiaddr(a)
            except Exception:
                continue
            p2p = _value_for(ma, "p2p") if "/p2p-circuit" not in a else None
            if p2p and p2p != peer_id:
                continue
            good.append(ma)
        if good:
            # kept apart from the peerstore: py-libp2p's auto-connector dials every peer
            # the peerstore knows (up to 200), which would connect us to every advertiser
            self._learnt.pop(pid, None)
            self._learnt[pid] = [str(a) for a in good]
            while len(self._learnt) > _MAX_LEARNT:
                self._learnt.pop(next(iter(self._learnt)))

    def reachable_peers(self) -> set[str]:
        """Peers we are not connected to that announced a relay (``/p2p-circuit``)
        address: :meth:`open_stream` reaches them through that relay on first use."""
        connected = set(self._host.get_connected_peers())
        return {pid.to_base58() for pid, addrs in self._learnt.items()
                if pid not in connected and not self._refuses(pid)
                and any("/p2p-circuit" in a for a in addrs)}

    async def _reach_peer(self, pid: ID) -> None:
        """Open a connection to ``pid``: at its direct addresses, else through a relay
        (those its circuit addresses name, then the relays we are connected to; at most
        :data:`_MAX_RELAY_TRIES`). Raises ``ConnectionError`` saying what was tried."""
        store = self._host.get_peerstore()
        try:
            known = [str(a) for a in store.addrs(pid)]
        except Exception:
            known = []
        known += [a for a in self._learnt.get(pid, []) if a not in known]
        errors = []
        direct = [a for a in known if "/p2p-circuit" not in a]
        if direct:
            try:
                with trio.fail_after(self._config.dial_timeout_s):
                    await self._host.connect(PeerInfo(pid, [_strip_p2p(a) for a in direct]))
                return
            except Exception as exc:
                errors.append(f"direct ({', '.join(direct[:3])}): {type(exc).__name__} {exc}")
        relays: dict[ID, str | None] = {}  # relay -> its address, when a circuit names it
        for a in known:
            pair = relay_of(a)
            if pair is not None and pair[1] == pid and pair[0] not in relays:
                relays[pair[0]] = a.split("/p2p-circuit")[0]
        for peer in self._host.get_connected_peers():
            if peer not in relays and peer != pid and _speaks(store, peer, HOP):
                relays[peer] = None
        for relay, addr in list(relays.items())[:_MAX_RELAY_TRIES]:
            if self._refuses(relay):
                continue
            try:
                if relay not in self._host.get_connected_peers() and addr is not None:
                    with trio.fail_after(self._config.dial_timeout_s):
                        await self._host.connect(parse_peer_addr(addr))
                await self.relay_client.dial_via(relay, pid)
                return
            except Exception as exc:
                errors.append(f"via relay {relay.to_base58()}: {type(exc).__name__} {exc}")
        raise ConnectionError(
            f"cannot reach peer {pid.to_base58()}: "
            + ("; ".join(errors) if errors else "no address known and no relay connected")
            + ". A peer behind NAT is reachable through a relay it keeps a reservation on "
              "(its config `relays`) when this node is connected to that relay too")

    def is_blocked(self, peer_id: str) -> bool:
        try:
            return self._refuses(ID.from_base58(peer_id))
        except Exception:
            return False

    async def ping(self, peer_id: str, timeout_s: float = 5.0) -> float:
        """One ``/ipfs/ping/1.0.0`` round trip to a connected peer, in milliseconds, on a
        stream kept for the next ping; ``TimeoutError`` after ``timeout_s``, another
        ``Exception`` when the peer cannot be pinged."""
        pid = ID.from_base58(peer_id)
        if self._refuses(pid):
            raise ConnectionError(f"peer {peer_id} is cut off; not pinging it")
        connected = set(self._host.get_connected_peers())
        self.pinger.forget(connected)  # streams of peers gone since the last ping
        if pid not in connected:
            raise ConnectionError(f"not connected to {peer_id}")
        return await self.pinger.ping(pid, timeout_s)

    async def connect(self, addr: str, timeout_s: float | None = None) -> str:
        """Dial ``addr`` (a ``/p2p/`` multiaddr) now and keep it wanted; its peer id."""
        info = parse_peer_addr(addr)
        if self._refuses(info.peer_id):
            raise ConnectionError(f"peer {info.peer_id} is cut off; not dialing it")
        with trio.fail_after(timeout_s or self._config.dial_timeout_s):
            await self._host.connect(info)
        self._want(info, "dial")
        return info.peer_id.to_base58()

    # -- services -------------------------------------------------------------
    async def _dial_loop(self) -> None:
        """Connect to wanted peers and reconnect dropped ones, with capped exponential backoff."""
        while True:
            now = time.monotonic()
            connected = set(self._host.get_connected_peers())
            if self._fault_blocked:  # partitioned: no redial; drop what they dialed
                await self._drop_fault_blocked()
            for pid, w in list(self._wanted.items()):
                if pid in self._fault_blocked:
                    continue
                if pid in connected:
                    w.backoff_s, w.failures = self._config.backoff_min_s, 0
                    continue
                if w.next_try > now:
                    continue
                try:
                    with trio.fail_after(self._config.dial_timeout_s):
                        await self._host.connect(w.info)
                    log.info("connected to %s (%s)", pid.to_base58(), w.source)
                    w.failures, w.last_error = 0, ""
                    w.backoff_s = self._config.backoff_min_s
                except Exception as exc:  # dial errors are many types; we only retry
                    w.failures += 1
                    w.last_error = f"{type(exc).__name__}: {exc}"[:200]
                    w.next_try = now + w.backoff_s * random.uniform(0.8, 1.2)
                    w.backoff_s = min(w.backoff_s * 2, self._config.backoff_max_s)
                    log.debug("dial %s failed (%s); retry in %.1fs", pid, w.last_error,
                              w.next_try - now)
            await trio.sleep(0.5)

    async def _discovery_loop(self) -> None:
        async for info in self._discovered_recv:
            if info.peer_id not in self._wanted:
                log.info("mDNS found %s", info.peer_id.to_base58())
            self._want(info, "mdns")

    def _on_discovered(self, info: PeerInfo, token: trio.lowlevel.TrioToken) -> None:
        """Called by zeroconf from its own thread (or from the trio thread).

        Never waits for the trio thread: at shutdown that thread joins zeroconf's
        threads, and a blocking hand-over (``trio.from_thread.run_sync``) would deadlock.
        """
        try:
            token.run_sync_soon(self._deliver_discovered, info)
        except trio.RunFinishedError:
            pass

    def _deliver_discovered(self, info: PeerInfo) -> None:
        try:
            self._discovered_send.send_nowait(info)
        except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
            pass


async def _iterate(sub, topic: str) -> AsyncIterator[GossipMessage]:
    while True:
        msg = await sub.get()
        try:
            origin = ID(msg.from_id).to_base58()
        except Exception:
            continue
        yield GossipMessage(topic, bytes(msg.data), origin)


class FramedStream:
    """A libp2p stream carrying length-prefixed frames under a size cap."""

    def __init__(self, stream, max_frame: int, faults: FaultSwitch | None = None) -> None:
        self._stream = stream
        self.max_frame = max_frame
        self._reader = FrameReader(stream, max_frame)
        self._faults = faults  # simulations: writes delayed by the switch

    async def _maybe_delay(self) -> None:
        if self._faults is not None and self._faults.delay_s:
            self._faults.stats["writes_delayed"] += 1
            await trio.sleep(self._faults.delay_s)

    @property
    def remote_peer(self) -> str:
        try:
            return self._stream.muxed_conn.peer_id.to_base58()
        except Exception:
            return "?"

    def remote_ip(self) -> str | None:
        """The IP address the peer's connection comes from (None when relayed/unknown)."""
        try:
            address = self._stream.get_remote_address()
        except Exception:
            return None
        return address[0] if address else None

    async def send(self, data: bytes) -> None:
        await self._maybe_delay()
        await write_frame(self._stream, data, self.max_frame)

    async def send_many(self, frames: list[bytes]) -> None:
        """Several frames in one write (one pass through the muxer and the encryption)."""
        await self._maybe_delay()
        await write_frames(self._stream, frames, self.max_frame)

    async def receive(self) -> bytes | None:
        return await self._reader.read()

    async def close(self) -> None:
        try:
            await self._stream.close()
        except Exception:
            pass

    async def reset(self) -> None:
        try:
            await self._stream.reset()
        except Exception:
            pass


#: direct addresses announced at most
MAX_DIRECT_ADDRS = 12
#: peers whose advertised addresses we keep (the most recently advertised)
_MAX_LEARNT = 4096
#: relays tried for one peer before giving up
_MAX_RELAY_TRIES = 4


def _value_for(ma, proto: str) -> str | None:
    try:
        return ma.value_for_protocol(proto)
    except Exception:
        return None


def _strip_p2p(addr: str) -> multiaddr.Multiaddr:
    """``addr`` without its trailing ``/p2p/<id>`` (the peerstore keeps transport addrs)."""
    ma = multiaddr.Multiaddr(addr)
    p2p = _value_for(ma, "p2p")
    return ma.decapsulate(multiaddr.Multiaddr(f"/p2p/{p2p}")) if p2p else ma


def _speaks(store, pid: ID, protocol: str) -> bool:
    """Did identify tell us ``pid`` serves ``protocol``?"""
    try:
        return protocol in (store.get_protocols(pid) or [])
    except Exception:
        return False


def _interface_ips(version: int) -> list[str]:
    """This machine's addresses of interfaces that are up, loopback last."""
    import ipaddress
    import socket

    import psutil

    family = socket.AF_INET if version == 4 else socket.AF_INET6
    try:
        stats = psutil.net_if_stats()
        found = []
        for name, addrs in psutil.net_if_addrs().items():
            if name in stats and not stats[name].isup:
                continue
            for a in addrs:
                if a.family == family and "%" not in a.address:
                    found.append(a.address)
    except Exception:
        return []
    return sorted(set(found), key=lambda ip: (ipaddress.ip_address(ip).is_loopback, ip))


def announced(config: NetConfig, candidates: Sequence[multiaddr.Multiaddr]
              ) -> list[multiaddr.Multiaddr]:
    """The direct addresses the host announces: ``announce`` when set, else
    ``candidates`` (listen and observed addresses) with wildcards replaced by interface
    addresses; at most :data:`MAX_DIRECT_ADDRS` (an advert holds 16 addresses: the rest
    is for relay addresses)."""
    if config.announce:
        direct = [multiaddr.Multiaddr(a) for a in config.announce]
    else:
        direct = []
        for ma in candidates:
            text = str(ma)
            for wildcard, version in (("/ip4/0.0.0.0/", 4), ("/ip6/::/", 6)):
                if text.startswith(wildcard):
                    rest = text[len(wildcard) - 1:]
                    direct.extend(multiaddr.Multiaddr(f"/ip{version}/{ip}{rest}")
                                  for ip in _interface_ips(version))
                    break
            else:
                direct.append(ma)
    seen, out = set(), []
    for ma in direct:
        if str(ma) not in seen:
            seen.add(str(ma))
            out.append(ma)
    return out[:MAX_DIRECT_ADDRS]


def _announce_circuits(host, relays: RelayClient) -> None:
    """Make ``host.get_addrs()`` (identify, our adverts) end with a
    ``<relay addr>/p2p-circuit/p2p/<us>`` address per reservation held. Not through its
    ``addrs_factory``: ``BasicHost.get_addrs`` cuts every address at its first ``/p2p/``
    to append ours, which turns ``<relay>/p2p/<relay id>/p2p-circuit`` into the relay's
    own address under our id."""
    base = host.get_addrs
    me = host.get_id().to_base58()

    def get_addrs() -> list[multiaddr.Multiaddr]:
        return list(base()) + [multiaddr.Multiaddr(f"{c}/p2p/{me}")
                               for c in relays.circuit_addrs()]

    host.get_addrs = get_addrs


def _gossipsub(config: NetConfig) -> GossipSub:
    return GossipSub(
        protocols=[PROTOCOL_ID_V11, PROTOCOL_ID],
        # every extra mesh link is one more full copy of each message through noise, yamux
        # and protobuf; 6/4/12 let the mesh take every connection (~4.9 copies per node)
        # and 20 nodes on 2 cores queued for seconds (bench/README.md). 4/3/6 halves that.
        degree=4, degree_low=3, degree_high=6,
        heartbeat_interval=config.heartbeat_s,
        heartbeat_initial_delay=0.1,
        time_to_live=60,
        # py-libp2p counts every relayed message per peer and silently stops relaying
        # above 10/s; flood control is ours, per signer, in the gossip gate.
        max_messages_per_topic_per_second=10_000.0,
        # all peers of a loopback test share one IP; diversity grafting only adds churn
        eclipse_protection_enabled=False,
    )


@asynccontextmanager
async def open_net(seed: bytes, config: NetConfig) -> AsyncIterator[Libp2pNet]:
    """Start the host from the node's 32-byte Ed25519 seed; stop it on exit."""
    # py-libp2p's yamux sends a window update after every read unless told otherwise: one
    # gossip RPC then costs 4 encrypted frames instead of 1 (~20% of a node's CPU, and it
    # takes the connection's write lock). "0" makes it update per half window, as go-yamux.
    os.environ.setdefault("PY_YAMUX_RELEASE_ON_READ", "0")
    # and go-yamux's window updates (one per half window, not one per read), buffered TCP
    # reads, signed peer records checked once: see fastpath.py. MECA_NET_FASTPATH=0 leaves
    # py-libp2p as shipped (scripts/bench_stream.py measures both)
    if os.environ.get("MECA_NET_FASTPATH", "1") != "0":
        fastpath.install()
    streamsafety.install()  # whole writes; a peer's malformed pubsub RPC ends its stream only
    key_pair = create_new_key_pair(seed)
    listen = [multiaddr.Multiaddr(a) for a in config.listen]
    parse_addrs(config.announce)
    for addr in config.relays:
        parse_peer_addr(addr)  # ValueError naming a bad one before anything starts

    def addrs_factory(candidates):
        return announced(config, candidates)

    host = new_host(
        key_pair=key_pair,
        sec_opt={NOISE_PROTOCOL_ID: NoiseTransport(
            key_pair, noise_privkey=create_x25519_key_pair().private_key)},
        muxer_preference="YAMUX",
        listen_addrs=listen,
        addrs_factory=addrs_factory,
        enable_mDNS=config.mdns,
        connection_config=ConnectionConfig(max_connections_per_peer=1),
    )
    router = _gossipsub(config)
    pubsub = Pubsub(host, router, max_inbound_rpc_size=config.max_rpc)
    token = trio.lowlevel.current_trio_token()
    net = Libp2pNet(host, pubsub, config)
    _announce_circuits(host, net.relay_client)
    for addr in config.bootstrap:
        net.want(addr)

    def handler(info: PeerInfo) -> None:
        net._on_discovered(info, token)

    # py-libp2p starts mDNS inside host.run and reports each peer once, when first seen:
    # a handler registered after host.run has started misses the peers already on the LAN.
    if config.mdns:
        peerDiscovery.register_peer_discovered_handler(handler)
    try:
        async with background_trio_service(pubsub), background_trio_service(router):
            async with host.run(listen):
                bound = host.get_transport_addrs()
                if len(bound) < len(listen):
                    # py-libp2p logs a failed listen and carries on; a node nobody can
                    # reach is worse than one that does not start
                    raise NetStartError(
                        f"could not listen on all of {', '.join(config.listen)} (bound: "
                        f"{', '.join(map(str, bound)) or 'none'}); is the port in use or the "
                        "address not on this machine? Choose another with --listen")
                async with trio.open_nursery() as nursery:
                    try:
                        nursery.start_soon(net._dial_loop)
                        nursery.start_soon(net._discovery_loop)
                        if config.relays:
                            await nursery.start(net.relay_client.run)
                        if config.dialback:
                            await nursery.start(net.prober.run)
                        yield net
                    finally:
                        nursery.cancel_scope.cancel()
    finally:
        if config.mdns:
            peerDiscovery.unregister_peer_discovered_handler(handler)


def parse_addrs(addrs: Sequence[str]) -> list[multiaddr.Multiaddr]:
    """Parse listen/announce multiaddrs; ``ValueError`` naming the bad one."""
    out = []
    for a in addrs:
        try:
            out.append(multiaddr.Multiaddr(a))
        except Exception as exc:
            raise ValueError(f"{a!r} is not a multiaddr ({exc})") from None
    return out
