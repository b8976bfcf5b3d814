"""Two correctness fixes to py-libp2p 0.8.1 streams, applied by ``open_net`` always.

**One write, one run of frames.** ``YamuxStream.write`` sends a long write as several
frames (at most 64 KiB each, fewer when the send window is short) and takes the stream's
write lock per frame, not per write. Two tasks writing to one stream at once can then
interleave their frames, and the reader gets a corrupt byte stream. py-libp2p's pubsub does
exactly that: its per-peer sending loop and gossipsub's flush of pending and recent
messages (after a connect, a graft) write to the same stream. :func:`_whole_write` holds a
per-stream lock across the whole write. Seen in the simulation cluster after a partition
healed during a Sybil flood: a node read a corrupt pubsub RPC (and crashed, see below).

**A malformed pubsub RPC ends that peer's stream, not the node.** ``Pubsub.stream_handler``
catches py-libp2p's own parse errors but not protobuf's ``DecodeError``, which then ends
the node's whole nursery: any peer could stop a node with one garbage frame on the pubsub
protocol. :func:`_guarded_stream_handler` resets that stream and drops the peer from
pubsub (as py-libp2p does for its own parse errors), logging why.
"""

from __future__ import annotations

import importlib
import logging

import trio
from libp2p.stream_muxer.yamux.yamux import YamuxStream

log = logging.getLogger("meca_node.net")

_installed = False
_originals: dict[str, object] = {}
#: makes each stream's whole-write lock (``fastpath`` puts in one that takes no scheduler
#: turn when free)
make_lock = trio.Lock


async def _whole_write(self: YamuxStream, data: bytes) -> None:
    """``YamuxStream.write`` with the stream held for the whole write."""
    lock = getattr(self, "_meca_write_lock", None)
    if lock is None:
        lock = self._meca_write_lock = make_lock()  # type: ignore[attr-defined]
    async with lock:
        await _originals["write"](self, data)  # type: ignore[operator]


async def _guarded_stream_handler(self, stream) -> None:
    """``Pubsub.stream_handler``; any error reading one peer's stream ends that stream."""
    try:
        await _originals["stream_handler"](self, stream)  # type: ignore[operator]
    except Exception as exc:  # a peer's garbage (or a bug on its path): not the node's end
        peer_id = stream.muxed_conn.peer_id
        log.warning("pubsub stream from %s ended: %s: %s", peer_id, type(exc).__name__, exc)
        try:
            await stream.reset()
        except Exception:  # already gone
            pass
        self._handle_dead_peer(peer_id)


def install() -> None:
    """Apply both fixes to this process (idempotent)."""
    global _installed
    if _installed:
        return
    pubsub = importlib.import_module("libp2p.pubsub.pubsub")
    _originals["write"] = YamuxStream.write
    _originals["stream_handler"] = pubsub.Pubsub.stream_handler
    YamuxStream.write = _whole_write  # type: ignore[method-assign]
    pubsub.Pubsub.stream_handler = _guarded_stream_handler  # type: ignore[method-assign]
    _installed = True
