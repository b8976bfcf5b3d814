"""The libp2p ping protocol (``/ipfs/ping/1.0.0``): answer pings and measure round trips.

A ping is 32 random bytes that the other side writes back; several may follow on one
stream. py-libp2p 0.8.1 ships it (``libp2p.host.ping``, served by every host) with traps:

- its round trip is ``int()`` milliseconds: loopback and LAN peers measure 0 or 1 ms, and
  our ranking takes 0 for "not measured";
- ``PingService.ping`` closes its stream after every call, so each ping pays a stream
  negotiation (~2.5 ms of CPU here), and it holds one lock over ``new_stream``: a slow dial
  to one peer holds every other ping;
- its handler closes a stream idle for 10 s (as go-libp2p does).

So we keep one outbound stream per peer between pings (the spec allows repeated pings on
a stream and one outbound stream per peer), time with ``perf_counter`` in float ms, and
serve with a handler that keeps an idle stream :data:`IDLE_S` (longer than the node's
ping interval, so our nodes reuse streams with each other) and at most two streams per
peer (the spec's limit). A peer that closed our stream while idle costs one failed write
and a fresh stream.
"""

from __future__ import annotations

import logging
import os
import time
from collections import Counter
from collections.abc import Callable

import trio
from libp2p.io.exceptions import IncompleteReadError
from libp2p.io.utils import read_exactly
from libp2p.network.stream.exceptions import StreamEOF
from libp2p.peer.id import ID

log = logging.getLogger("meca_node.net.ping")

PROTOCOL = "/ipfs/ping/1.0.0"
SIZE = 32
#: an inbound ping stream with no ping for this long is closed (go-libp2p: 10 s)
IDLE_S = 120.0
#: a pong that takes longer to write than this resets the stream
WRITE_TIMEOUT_S = 10.0
#: inbound ping streams one peer may hold open at once (the spec's "at most two")
MAX_INBOUND_PER_PEER = 2


class PingError(ConnectionError):
    """A ping got no (or a wrong) answer; the peer's stream is dropped."""


class Pinger:
    """Both sides of ping for one host: :meth:`ping` measures, :meth:`serve` answers."""

    def __init__(self, host, is_blocked: Callable[[ID], bool] = lambda _pid: False) -> None:
        self._host = host
        self._is_blocked = is_blocked
        self._out: dict[ID, object] = {}  # the one outbound stream per peer, kept
        self._busy: set[ID] = set()  # peers with a ping in flight
        self._inbound: Counter[ID] = Counter()
        #: opened (outbound streams), pings (answered), failed, served (pongs written)
        self.stats: Counter[str] = Counter()

    async def ping(self, peer: ID, timeout_s: float) -> float:
        """One round trip to a connected ``peer`` in milliseconds, within ``timeout_s``
        (``TimeoutError``); ``PingError`` or another ``Exception`` when it fails."""
        if peer in self._busy:
            raise PingError(f"a ping to {peer} is already in flight")
        self._busy.add(peer)
        try:
            with trio.fail_after(timeout_s):
                rtt = await self._ping(peer)
            self.stats["pings"] += 1
            return rtt
        except trio.TooSlowError:
            self.stats["failed"] += 1
            raise TimeoutError(f"no answer to a ping from {peer} within {timeout_s} s") from None
        except Exception:
            self.stats["failed"] += 1
            raise
        finally:
            self._busy.discard(peer)

    async def _ping(self, peer: ID) -> float:
        stream = self._out.pop(peer, None)
        if stream is not None:
            try:
                rtt = await _round_trip(stream)
            except Exception as exc:  # most often: the peer closed it while idle
                log.debug("ping stream to %s is gone (%s); opening another", peer, exc)
                await _reset(stream)
            else:
                self._out[peer] = stream
                return rtt
        stream = await self._host.new_stream(peer, [PROTOCOL])
        self.stats["opened"] += 1
        try:
            rtt = await _round_trip(stream)
        except BaseException:
            await _reset(stream)
            raise
        self._out[peer] = stream
        return rtt

    def forget(self, keep: set[ID]) -> None:
        """Drop the kept streams of peers not in ``keep`` (disconnected ones)."""
        for peer in [p for p in self._out if p not in keep]:
            del self._out[peer]

    async def serve(self, stream) -> None:
        """Stream handler: write back every 32 bytes read until the peer closes the stream,
        stops pinging for :data:`IDLE_S`, or breaks the protocol."""
        peer = stream.muxed_conn.peer_id
        if self._is_blocked(peer) or self._inbound[peer] >= MAX_INBOUND_PER_PEER:
            await _reset(stream)
            return
        self._inbound[peer] += 1
        try:
            while True:
                with trio.move_on_after(IDLE_S):
                    payload = await read_exactly(stream, SIZE)
                    with trio.fail_after(WRITE_TIMEOUT_S):
                        await stream.write(payload)
                    self.stats["served"] += 1
                    continue
                await _close(stream)  # idle
                return
        except (StreamEOF, IncompleteReadError) as exc:
            if isinstance(exc, IncompleteReadError) and not exc.is_clean_close:
                await _reset(stream)  # a truncated ping
            else:
                await _close(stream)
        except Exception as exc:  # reset, slow reader, closed connection: drop the stream
            log.debug("ping stream from %s ended: %s", peer, exc)
            await _reset(stream)
        finally:
            self._inbound[peer] -= 1
            if self._inbound[peer] <= 0:
                del self._inbound[peer]


async def _round_trip(stream) -> float:
    payload = os.urandom(SIZE)
    t0 = time.perf_counter()
    await stream.write(payload)
    echo = await read_exactly(stream, SIZE)
    rtt_ms = (time.perf_counter() - t0) * 1000
    if echo != payload:
        raise PingError("the peer answered a ping with other bytes")
    return rtt_ms


async def _reset(stream) -> None:
    with trio.CancelScope(shield=True), trio.move_on_after(1):
        try:
            await stream.reset()
        except Exception:
            pass


async def _close(stream) -> None:
    with trio.move_on_after(1):
        try:
            await stream.close()
        except Exception:
            pass
