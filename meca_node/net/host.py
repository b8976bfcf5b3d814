"""The libp2p host of a node: TCP + Noise + yamux, gossipsub, dialing, mDNS, streams.

This is the only package that imports libp2p. It knows nothing of tasks: it moves
bytes, and hands gossip to a validator callback before anything is forwarded.
Traps of py-libp2p 0.8.1 handled here (see shared notes): one connection per peer
(else every dial waits 250 ms), a 1 s gossipsub heartbeat (default 120 s), its
per-peer publish limit raised (ours is per signer, in ``core``), subscription
queues sized to our queue cap (default 32), services entered before ``host.run``
so the host stops first, and ``/ipfs/ping/1.0.0`` answered and measured by our own
:mod:`meca_node.net.ping` (theirs measures whole milliseconds, a stream per ping).
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

from meca_node.net.faults import FaultSpecError, FaultSwitch
from meca_node.net.framing import FrameError, FrameReader, write_frame, write_frames
from meca_node.net.ping import PROTOCOL as PING_PROTOCOL
from meca_node.net.ping import Pinger

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

    # -- identity and peers -------------------------------------------------
    @property
    def peer_id(self) -> str:
        return self._host.get_id().to_base58()

    def listen_addrs(self) -> list[str]:
        return [str(a) for a in self._host.get_addrs()]

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
        stream = await self._host.new_stream(pid, names)
        return FramedStream(stream, max_frame or self._config.max_frame, self._write_faults)

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
    key_pair = create_new_key_pair(seed)
    listen = [multiaddr.Multiaddr(a) for a in config.listen]
    announce = [multiaddr.Multiaddr(a) for a in config.announce] or None
    host = new_host(
        key_pair=key_pair,
        sec_opt={NOISE_PROTOCOL_ID: NoiseTransport(
            key_pair, noise_privkey=create_x25519_key_pair().private_key)},
        muxer_preference="YAMUX",
        listen_addrs=listen,
        announce_addrs=announce,
        enable_mDNS=config.mdns,
        connection_config=ConnectionConfig(max_connections_per_peer=1),
    )
    router = _gossipsub(config)
    pubsub = Pubsub(host, router, max_inbound_rpc_size=config.max_rpc)
    token = trio.lowlevel.current_trio_token()
    net = Libp2pNet(host, pubsub, config)
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
