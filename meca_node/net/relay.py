"""Circuit relay v2 (the libp2p spec, ``/libp2p/circuit/relay/0.2.0/{hop,stop}``): a node
behind NAT keeps a reservation on a public relay and is reached through it.

Three parts, each small:

- :class:`RelayService` (config ``relay_service``): the *hop*. It grants reservations and
  splices circuits between a dialer and a peer holding a reservation, everything bounded
  (:class:`RelayLimits`: reservations, circuits in all and per peer, time and bytes per
  circuit; a circuit over either cap is reset).
- :class:`RelayClient` (every node): keeps a reservation on each relay of config
  ``relays`` (renewed at half its lifetime, again after the connection to the relay came
  back), publishes ``<relay addr>/p2p-circuit`` addresses while one holds, answers *stop*
  streams from those relays only, and dials a peer through a relay
  (:meth:`RelayClient.dial_via`).
- A relayed connection is a hop stream wrapped as a raw connection and upgraded (Noise,
  yamux) by the swarm like a TCP one; the relay sees only ciphertext.

Why not py-libp2p 0.8.1's ``libp2p.relay.circuit_v2`` as is (read from its code):

1. its swarm never dials a ``/p2p-circuit`` address (``Swarm.dial_peer`` filters them
   out: "this node has no relay transport"), and ``CircuitV2Transport`` is not a transport
   the swarm consults; dialing through a relay needs code of ours either way;
2. ``CircuitV2Protocol`` keeps its live circuits in a dict keyed by peer id: a second
   circuit to the same peer overwrites the first's entry, and when either ends its clean-up
   closes the *other* circuit's streams (two clients of one provider behind a relay: one
   loses its job);
3. its hop limits (1 GiB, 1 h per circuit) are fixed module constants, reservations are
   granted to peers that then disconnect (kept until expiry), and circuits to a peer are
   not bounded per peer;
4. its *stop* handler accepts a circuit from any peer, also one we hold no reservation on;
5. its reservation refresher sleeps until 30 s before expiry and ends when the dict of
   reservations is empty; a reservation lost with the relay's connection is not made
   again.

We reuse its protobuf messages (``pb/circuit_pb2``) and py-libp2p's bounded varint reader,
so our relays and clients speak the spec (go/rust/js libp2p relays and clients interoperate
at the message level; we send no reservation voucher, which the spec makes optional).
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import multiaddr
import trio
from libp2p.connection_types import ConnectionType
from libp2p.network.connection.raw_connection import RawConnection
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo
from libp2p.relay.circuit_v2.pb.circuit_pb2 import HopMessage, Limit, StopMessage
from libp2p.relay.circuit_v2.pb.circuit_pb2 import PeerId as PbPeer
from libp2p.relay.circuit_v2.pb.circuit_pb2 import Reservation as PbReservation
from libp2p.utils.varint import encode_varint_prefixed, read_varint_prefixed_bytes_limited

log = logging.getLogger("meca_node.net.relay")

HOP = "/libp2p/circuit/relay/0.2.0/hop"
STOP = "/libp2p/circuit/relay/0.2.0/stop"

# status codes of the spec (pb Status)
OK = 100
RESERVATION_REFUSED = 200
RESOURCE_LIMIT_EXCEEDED = 201
PERMISSION_DENIED = 202
CONNECTION_FAILED = 203
NO_RESERVATION = 204
MALFORMED_MESSAGE = 400
UNEXPECTED_MESSAGE = 401
STATUS_NAMES = {OK: "OK", RESERVATION_REFUSED: "reservation refused",
                RESOURCE_LIMIT_EXCEEDED: "resource limit exceeded",
                PERMISSION_DENIED: "permission denied", CONNECTION_FAILED: "connection failed",
                NO_RESERVATION: "no reservation", MALFORMED_MESSAGE: "malformed message",
                UNEXPECTED_MESSAGE: "unexpected message"}

#: a hop/stop message is a peer id, a few addresses and numbers
MAX_MESSAGE = 4096
#: seconds for one exchange of messages (a reservation, a circuit's set-up)
EXCHANGE_TIMEOUT_S = 10.0
#: bytes read from one side of a circuit at a time
CHUNK = 64 * 1024


class RelayError(ConnectionError):
    """A relay refused or failed a reservation or circuit; ``status`` is the spec's code
    (0 when the relay could not be asked)."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class RelayLimits:
    """What a relay grants. go-libp2p's defaults (2 min, 128 KiB per circuit) only serve
    hole punching; ours carry jobs, so circuits get an hour and 1 GiB by default."""

    max_reservations: int = 128
    reservation_ttl_s: float = 3600.0
    max_circuits: int = 64
    #: as go-libp2p; each client connected to a relayed provider holds one of its circuits
    max_circuits_per_peer: int = 16
    circuit_duration_s: float = 3600.0
    circuit_bytes: int = 1 << 30


async def _write(stream, msg) -> None:
    await stream.write(encode_varint_prefixed(msg.SerializeToString()))


async def _read(stream, cls):
    """One length-prefixed message (reads exactly its bytes: what follows is the circuit's)."""
    data = await read_varint_prefixed_bytes_limited(stream, MAX_MESSAGE)
    msg = cls()
    msg.ParseFromString(data)
    return msg


def _is_relayed(stream) -> bool:
    try:
        addrs = stream.muxed_conn.get_transport_addresses() or []
    except Exception:
        return False
    return any("/p2p-circuit" in str(a) for a in addrs)


def _alive(host, pid: ID, muxed_conn) -> bool:
    """Is ``muxed_conn`` still one of the connections to ``pid``? (A reservation lives on
    the connection it was made on: a new connection after a drop needs a new one.)"""
    try:
        conns = host.get_network().get_connections(pid)
    except Exception:
        return False
    return any(getattr(c, "muxed_conn", None) is muxed_conn and not c.is_closed
               for c in conns)


def status_name(code: int) -> str:
    return STATUS_NAMES.get(code, f"status {code}")


# -- the hop (relay side) ---------------------------------------------------------------
class RelayService:
    """Serves :data:`HOP`: reservations and circuits within :class:`RelayLimits`."""

    def __init__(self, host, limits: RelayLimits | None = None,
                 refuses: Callable[[ID], bool] = lambda _pid: False) -> None:
        self._host = host
        self.limits = limits or RelayLimits()
        self._refuses = refuses
        #: peer -> (monotonic expiry of its reservation, the connection it holds it on)
        self.reservations: dict[ID, tuple[float, object]] = {}
        self.circuits = 0
        self._per_peer: Counter[ID] = Counter()
        self.stats: Counter[str] = Counter()

    def view(self) -> dict:
        self._prune()
        return {"reservations": len(self.reservations), "circuits": self.circuits,
                "limits": {"max_reservations": self.limits.max_reservations,
                           "reservation_ttl_s": self.limits.reservation_ttl_s,
                           "max_circuits": self.limits.max_circuits,
                           "max_circuits_per_peer": self.limits.max_circuits_per_peer,
                           "circuit_duration_s": self.limits.circuit_duration_s,
                           "circuit_bytes": self.limits.circuit_bytes},
                **dict(self.stats)}

    def _prune(self) -> None:
        """Drop expired reservations and those whose connection is gone (a relay reaches
        a peer only over the connection the peer keeps to it; the peer reserves again on
        a new one)."""
        now = time.monotonic()
        for pid, (expiry, conn) in list(self.reservations.items()):
            if expiry <= now or not _alive(self._host, pid, conn):
                del self.reservations[pid]

    async def handle(self, stream) -> None:
        """One hop stream: one RESERVE or CONNECT (as go-libp2p: one exchange a stream)."""
        peer = stream.muxed_conn.peer_id
        try:
            if self._refuses(peer) or _is_relayed(stream):
                # the spec: no reservations or circuits over relayed connections
                await self._status(stream, PERMISSION_DENIED)
                return
            with trio.fail_after(EXCHANGE_TIMEOUT_S):
                msg = await _read(stream, HopMessage)
            if msg.type == HopMessage.RESERVE:
                await self._reserve(stream, peer)
            elif msg.type == HopMessage.CONNECT:
                await self._connect(stream, peer, msg)  # returns when the circuit ends
            else:
                await self._status(stream, UNEXPECTED_MESSAGE)
        except Exception as exc:  # a peer's broken stream or message ends only its stream
            self.stats["errors"] += 1
            log.debug("hop stream from %s: %s: %s", peer, type(exc).__name__, exc)
            await _reset(stream)
            return
        await _close(stream)

    async def _status(self, stream, code: int, **fields) -> None:
        with trio.fail_after(EXCHANGE_TIMEOUT_S):
            await _write(stream, HopMessage(type=HopMessage.STATUS, status=code, **fields))

    def _limit(self) -> Limit:
        return Limit(duration=int(self.limits.circuit_duration_s),
                     data=int(self.limits.circuit_bytes))

    async def _reserve(self, stream, peer: ID) -> None:
        self._prune()
        if peer not in self.reservations and \
                len(self.reservations) >= self.limits.max_reservations:
            self.stats["reservations_refused"] += 1
            await self._status(stream, RESERVATION_REFUSED)
            return
        ttl = self.limits.reservation_ttl_s
        self.reservations[peer] = (time.monotonic() + ttl, stream.muxed_conn)
        self.stats["reservations_granted"] += 1
        addrs = [a.to_bytes() for a in self._host.get_addrs()
                 if "/p2p-circuit" not in str(a)]
        expire = int(time.time() + ttl)
        await self._status(stream, OK, limit=self._limit(),
                           reservation=PbReservation(expire=expire, addrs=addrs))
        log.info("relay: reservation for %s (%g s)", peer, ttl)

    async def _connect(self, stream, src: ID, msg) -> None:
        try:
            dst = ID(msg.peer.id)
        except Exception:
            await self._status(stream, MALFORMED_MESSAGE)
            return
        self._prune()
        if dst not in self.reservations or self._refuses(dst):
            self.stats["circuits_refused"] += 1
            await self._status(stream, NO_RESERVATION)
            return
        if self.circuits >= self.limits.max_circuits or \
                self._per_peer[dst] >= self.limits.max_circuits_per_peer or \
                self._per_peer[src] >= self.limits.max_circuits_per_peer:
            self.stats["circuits_refused"] += 1
            await self._status(stream, RESOURCE_LIMIT_EXCEEDED)
            return
        self.circuits += 1
        self._per_peer[dst] += 1
        self._per_peer[src] += 1
        dst_stream = None
        try:
            try:
                with trio.fail_after(EXCHANGE_TIMEOUT_S):
                    dst_stream = await self._host.new_stream(dst, [STOP])
                    await _write(dst_stream, StopMessage(
                        type=StopMessage.CONNECT, peer=PbPeer(id=src.to_bytes()),
                        limit=self._limit()))
                    answer = await _read(dst_stream, StopMessage)
                if answer.type != StopMessage.STATUS or answer.status != OK:
                    raise RelayError(f"{dst} refused the circuit: "
                                     f"{status_name(answer.status)}", answer.status)
            except Exception as exc:
                self.stats["circuits_failed"] += 1
                log.info("relay: circuit %s -> %s failed: %s", src, dst, exc)
                if dst_stream is not None:
                    await _reset(dst_stream)
                await self._status(stream, CONNECTION_FAILED)
                return
            await self._status(stream, OK, limit=self._limit())
            self.stats["circuits_opened"] += 1
            log.info("relay: circuit %s -> %s open", src, dst)
            await splice(stream, dst_stream, self.limits.circuit_duration_s,
                         self.limits.circuit_bytes, self.stats)
        finally:
            self.circuits -= 1
            for pid in (src, dst):
                self._per_peer[pid] -= 1
                if self._per_peer[pid] <= 0:
                    del self._per_peer[pid]
            if dst_stream is not None:
                await _reset(dst_stream)


async def splice(a, b, duration_s: float, max_bytes: int,
                 stats: Counter | None = None) -> int:
    """Copy both ways between streams ``a`` and ``b`` until one side ends, ``duration_s``
    passes or ``max_bytes`` (both directions together) would be passed; then both are
    reset. Returns the bytes copied (also counted as they pass in ``stats``
    ``bytes_relayed``)."""
    left = [max_bytes]
    moved = [0]

    async def copy(src, dst, scope: trio.CancelScope) -> None:
        try:
            while True:
                data = await src.read(CHUNK)
                if not data:
                    break
                if len(data) > left[0]:
                    log.info("relay: circuit over its %d bytes; reset", max_bytes)
                    break
                left[0] -= len(data)
                moved[0] += len(data)
                if stats is not None:
                    stats["bytes_relayed"] += len(data)
                await dst.write(data)
        except Exception as exc:  # a reset or closed side ends the circuit
            log.debug("relay: circuit side ended: %s", exc)
        finally:
            scope.cancel()

    with trio.move_on_after(duration_s):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(copy, a, b, nursery.cancel_scope)
            nursery.start_soon(copy, b, a, nursery.cancel_scope)
    await _reset(a)
    await _reset(b)
    return moved[0]


async def _reset(stream) -> None:
    with trio.CancelScope(shield=True), trio.move_on_after(2):
        try:
            await stream.reset()
        except Exception:
            pass


async def _close(stream) -> None:
    with trio.CancelScope(shield=True), trio.move_on_after(2):
        try:
            await stream.close()
        except Exception:
            pass


# -- the client (reservations, stop, dialing through a relay) ---------------------------
@dataclass
class Held:
    """A reservation this node holds on a relay."""

    relay: PeerInfo
    expires_mono: float
    renew_at: float
    circuit_addrs: tuple[str, ...]
    conn: object = None  # the connection to the relay it was made on


@dataclass
class _Relay:
    info: PeerInfo
    held: Held | None = None
    next_try: float = 0.0
    backoff_s: float = 1.0
    failures: int = 0
    last_error: str = ""
    tried: bool = False


@dataclass
class RelayClient:
    """Reservations on the relays of config ``relays``, the stop side, and dialing via a
    relay. ``relays`` are ``PeerInfo`` of ``/p2p/`` multiaddrs; the node's dial loop keeps
    the connections to them; :meth:`run` keeps a reservation on each connected one."""

    host: object
    relays: list[PeerInfo]
    refuses: Callable[[ID], bool] = lambda _pid: False
    backoff_max_s: float = 60.0
    stats: Counter = field(default_factory=Counter)

    def __post_init__(self) -> None:
        self._relays = {info.peer_id: _Relay(info) for info in self.relays}
        self.changed = trio.Event()  # set (and replaced) when a reservation comes or goes

    # -- state ------------------------------------------------------------------------
    def held(self) -> list[Held]:
        now = time.monotonic()
        return [r.held for r in self._relays.values()
                if r.held is not None and r.held.expires_mono > now]

    def circuit_addrs(self) -> list[multiaddr.Multiaddr]:
        """``<relay addr>/p2p-circuit`` for each live reservation (the host appends our
        ``/p2p/<id>``)."""
        return [multiaddr.Multiaddr(a) for h in self.held() for a in h.circuit_addrs]

    def view(self) -> list[dict]:
        now = time.monotonic()
        out = []
        for pid, r in self._relays.items():
            live = r.held is not None and r.held.expires_mono > now
            out.append({"relay": pid.to_base58(), "reserved": live,
                        "expires_in_s": round(r.held.expires_mono - now, 1) if live else None,
                        "renew_in_s": round(max(0.0, r.held.renew_at - now), 1) if live
                        else None,
                        "failures": r.failures, "last_error": r.last_error})
        return out

    def _signal(self) -> None:
        self.changed.set()
        self.changed = trio.Event()

    # -- reservations -----------------------------------------------------------------
    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Keep one reservation on each connected relay: reserve when connected, renew at
        half the granted lifetime, forget it when the connection to the relay is gone
        (reserve again once it is back)."""
        task_status.started()
        while True:
            now = time.monotonic()
            connected = set(self.host.get_connected_peers())
            for pid, r in self._relays.items():
                if r.held is not None and (r.held.expires_mono <= now
                                           or not _alive(self.host, pid, r.held.conn)):
                    log.info("reservation on relay %s lost (%s)", pid,
                             "expired" if r.held.expires_mono <= now else "disconnected")
                    r.held = None
                    self._signal()
                if pid not in connected or self.refuses(pid) or r.next_try > now:
                    continue
                if r.held is not None and r.held.renew_at > now:
                    continue
                await self._reserve(r)
            await trio.sleep(0.5)

    async def _reserve(self, r: _Relay) -> None:
        pid = r.info.peer_id
        r.tried = True
        stream = None
        try:
            with trio.fail_after(EXCHANGE_TIMEOUT_S):
                stream = await self.host.new_stream(pid, [HOP])
                await _write(stream, HopMessage(type=HopMessage.RESERVE))
                answer = await _read(stream, HopMessage)
            if answer.type != HopMessage.STATUS or answer.status != OK:
                raise RelayError(f"relay {pid} refused a reservation: "
                                 f"{status_name(answer.status)}", answer.status)
            now, wall = time.monotonic(), time.time()
            ttl = max(1.0, float(answer.reservation.expire) - wall) \
                if answer.HasField("reservation") else 60.0
            renewal = r.held is not None
            r.held = Held(r.info, now + ttl, now + ttl / 2, self._circuit_addrs(r.info),
                          stream.muxed_conn)
            r.failures, r.last_error, r.backoff_s = 0, "", 1.0
            self.stats["renewed" if renewal else "reserved"] += 1
            if not renewal:
                log.info("reservation on relay %s for %.0f s; reachable at %s", pid, ttl,
                         ", ".join(r.held.circuit_addrs))
                self._signal()
        except Exception as exc:
            r.failures += 1
            r.last_error = f"{type(exc).__name__}: {exc}"[:200]
            r.next_try = time.monotonic() + r.backoff_s
            r.backoff_s = min(r.backoff_s * 2, self.backoff_max_s)
            self.stats["failed"] += 1
            log.warning("no reservation on relay %s (%s); retry in %.0f s", pid,
                        r.last_error, r.next_try - time.monotonic())
        finally:
            if stream is not None:
                await _close(stream)

    def _circuit_addrs(self, info: PeerInfo) -> tuple[str, ...]:
        """The relay addresses we were told to use (config ``relays``), as circuit
        addresses: those are the ones known to be reachable from outside."""
        out = []
        for a in info.addrs:
            out.append(f"{a}/p2p/{info.peer_id.to_base58()}/p2p-circuit")
        return tuple(out)

    # -- stop (the side a circuit ends at) --------------------------------------------
    async def handle_stop(self, stream) -> None:
        """A relay we hold a reservation on brings a circuit: accept it as an inbound
        connection. Circuits from any other peer are refused."""
        relay = stream.muxed_conn.peer_id
        entry = self._relays.get(relay)
        try:
            with trio.fail_after(EXCHANGE_TIMEOUT_S):
                msg = await _read(stream, StopMessage)
                if entry is None or entry.held is None or self.refuses(relay):
                    self.stats["stop_refused"] += 1
                    await _write(stream, StopMessage(type=StopMessage.STATUS,
                                                     status=PERMISSION_DENIED))
                    await _close(stream)
                    return
                if msg.type != StopMessage.CONNECT:
                    await _write(stream, StopMessage(type=StopMessage.STATUS,
                                                     status=UNEXPECTED_MESSAGE))
                    await _close(stream)
                    return
                src = ID(msg.peer.id)
                if self.refuses(src):
                    await _write(stream, StopMessage(type=StopMessage.STATUS,
                                                     status=PERMISSION_DENIED))
                    await _close(stream)
                    return
                await _write(stream, StopMessage(type=StopMessage.STATUS, status=OK))
            addr = multiaddr.Multiaddr(f"/p2p/{relay.to_base58()}/p2p-circuit/p2p/"
                                       f"{src.to_base58()}")
            raw = RawConnection(stream=stream, initiator=False,
                                connection_type=ConnectionType.RELAYED, addresses=[addr])
            # the swarm keeps ``addr`` as the connection's transport address: both ends
            # see it is relayed (dial-backs are neither asked nor served over it)
            await self.host.upgrade_inbound_connection(raw, addr)
            self.stats["circuits_in"] += 1
            log.info("relayed connection from %s via %s", src, relay)
        except Exception as exc:
            self.stats["stop_failed"] += 1
            log.info("circuit via %s failed: %s: %s", relay, type(exc).__name__, exc)
            await _reset(stream)

    # -- dialing through a relay ------------------------------------------------------
    async def dial_via(self, relay: ID, dest: ID) -> None:
        """Connect to ``dest`` through ``relay`` (connected already); the swarm holds the
        connection afterwards. :class:`RelayError` saying why when it cannot."""
        try:
            with trio.fail_after(EXCHANGE_TIMEOUT_S):
                stream = await self.host.new_stream(relay, [HOP])
        except Exception as exc:
            raise RelayError(f"{relay} is not a relay we can use ({type(exc).__name__}: "
                             f"{exc})") from None
        try:
            with trio.fail_after(EXCHANGE_TIMEOUT_S):
                await _write(stream, HopMessage(type=HopMessage.CONNECT,
                                                peer=PbPeer(id=dest.to_bytes())))
                answer = await _read(stream, HopMessage)
            if answer.type != HopMessage.STATUS or answer.status != OK:
                raise RelayError(f"relay {relay} could not connect us to {dest}: "
                                 f"{status_name(answer.status)}", answer.status)
            addr = multiaddr.Multiaddr(f"/p2p/{relay.to_base58()}/p2p-circuit/p2p/"
                                       f"{dest.to_base58()}")
            raw = RawConnection(stream=stream, initiator=True,
                                connection_type=ConnectionType.RELAYED, addresses=[addr])
            with trio.fail_after(EXCHANGE_TIMEOUT_S):
                await self.host.upgrade_outbound_connection(raw, dest)
        except BaseException:
            await _reset(stream)
            raise
        self.stats["circuits_out"] += 1
        log.info("connected to %s through relay %s", dest, relay)


def relay_of(addr: str) -> tuple[ID, ID] | None:
    """(relay, destination) of a ``.../p2p/<relay>/p2p-circuit/p2p/<dest>`` address; None
    for any other address."""
    if "/p2p-circuit" not in addr:
        return None
    head, _, tail = addr.partition("/p2p-circuit")
    try:
        multiaddr.Multiaddr(addr)  # refuses peer ids that are not multihashes
        relay = head.rsplit("/p2p/", 1)[1]
        dest = tail.rsplit("/p2p/", 1)[1]
        return ID.from_base58(relay), ID.from_base58(dest)
    except Exception:
        return None
