"""Five fixes to py-libp2p 0.8.1's hot path for small messages: go-yamux's window
updates, buffered TCP reads, signed peer records checked once per peer, not once per
pubsub RPC, no per-frame timeout scope or environment lookups in yamux's reader, and
stream locks that take no scheduler turn when they are free. :func:`install` applies
them, once per process.

**Window updates.** py-libp2p's yamux credits the sender with a WINDOW_UPDATE frame after
nearly every read of a stream: any read that leaves the window short of its target by less
than half of it goes down a "partial slack" branch that sends the shortfall at once. A
request/response protocol thus pays a third frame per message (encrypt, write lock, a
``send`` system call on each side): about 20% of a node's CPU in a job's exchange and one
frame in three on the wire. go-yamux (``sendWindowUpdate``) sends an update only when the
shortfall reaches half the target window, which is what :func:`_window_update` does; the
window's auto-tuning (doubling within 4 RTTs) is py-libp2p's own, kept.

**Buffered reads.** py-libp2p reads a Noise message in two ``read_exactly`` calls (its 2-byte length,
then its body), and yamux reads each frame's 12-byte header and its body apart; every
call goes down to ``TrioTCPStream.read`` and from there to one ``recv`` system call, one
trip through trio's scheduler and a lock. A small job message costs about eight of them
per direction. :func:`install` gives ``TrioTCPStream`` a read buffer instead: one
``recv`` of up to :data:`CHUNK` bytes serves every read that follows until it is used up,
so the bytes of several frames that arrived together cost one system call.

**Signed peer records.** py-libp2p attaches the sender's signed peer record to every pubsub
RPC it sends (looking up its own addresses and serializing the record each time) and, on
every RPC it receives, parses it, checks its Ed25519 signature and rewrites the sender's
addresses in the peerstore: about 15-20% of a node's CPU while paid jobs gossip their
receipts. The record changes only when the peer's addresses do, so
:func:`_consume_record` keeps the verdict for the same (peer, record bytes) for
:data:`RECORD_RECHECK_S` (then checks it again, which also refreshes the peerstore's
2-hour address TTL) and :func:`_record_to_send` reuses our own for :data:`RECORD_REUSE_S`.

**Yamux's reader.** For every DATA frame py-libp2p opens a ``trio.fail_after`` scope
around the read of its body (so a peer that announces a body and never sends it cannot
hold the connection), and reads its ``PY_YAMUX_*`` tuning variables from the environment
again (``os.getenv``) on every frame and every window check: about 10% of a node's CPU
while it echoes small messages. The body of a small frame is almost always in the Noise
layer's buffer already, decrypted with the frame's header; :func:`_read_data_body` reads
such a body without the scope (it cannot wait) and keeps the timeout for a body still on
its way. The tuning variables are read once, at :func:`install`.

**Locks that are free.** Every trio ``Lock`` and ``Semaphore`` acquire is a scheduler
turn, taken or not: the task is put back on the run queue and every other ready task of the
node runs first. One small message written through py-libp2p takes eight of them (the
NetStream's state lock, our whole-write lock, yamux's read-write lock and window lock, the
connection's frame lock, the TCP stream's write lock) and a read about as many, almost
always with every lock free. A node's other work (gossip, the warm pool, the control API)
then runs inside a job's exchange: traced, 9 task steps between a job request sealed and
written. :class:`~meca_node.node.quicklock.QuickLock` takes a free lock at once and waits
as trio's own does for one that is held; ``install`` puts it on the locks of each new
NetStream, yamux stream and connection, read-write lock and TCP stream, and on our
whole-write lock (``streamsafety``). The write or read that follows still checkpoints
(its socket call does).

The buffered reads keep the semantics of ``trio.SocketStream.receive_some``: up to ``n``
bytes, at least one, ``b""`` at the end of the stream; a read that has buffered bytes
returns at once. At most :data:`CHUNK` bytes per connection wait in the buffer, so memory
stays bounded; the reader above still takes only what it asked for.
"""

from __future__ import annotations

import importlib
import time
import weakref

import trio
from libp2p.io.exceptions import ConnectionClosedError
from libp2p.io.trio import TrioTCPStream
from libp2p.io.utils import read_exactly
from libp2p.stream_muxer.yamux import yamux as _yamux
from libp2p.stream_muxer.yamux.yamux import Yamux, YamuxStream

from meca_node.net import streamsafety
from meca_node.node.quicklock import QuickLock

#: the most one recv reads, and so the most a connection buffers
CHUNK = 256 * 1024
#: seconds a peer's checked record (same bytes) is taken as checked
RECORD_RECHECK_S = 60.0
#: seconds our own record is reused before our addresses are looked at again
RECORD_REUSE_S = 5.0
#: (peer, record) verdicts kept at most
MAX_RECORDS = 4096

_installed = False


def _take(buf: bytearray, n: int | None) -> bytes:
    if n is None or n >= len(buf):
        out = bytes(buf)
        buf.clear()
        return out
    out = bytes(buf[:n])
    del buf[:n]
    return out


async def _buffered_read(self: TrioTCPStream, n: int | None = None) -> bytes:
    """``TrioTCPStream.read`` with a read buffer (see the module docstring)."""
    if n is not None and n <= 0:
        return b""
    buf: bytearray | None = getattr(self, "_meca_buf", None)
    if buf is None:
        buf = self._meca_buf = bytearray()  # type: ignore[attr-defined]
    if buf:
        return _take(buf, n)
    async with self.read_lock:
        if buf:  # filled by the reader we waited for
            return _take(buf, n)
        try:
            data = await self.stream.receive_some(CHUNK if n is None else max(n, CHUNK))
        except trio.BrokenResourceError as error:  # reset by the peer: as py-libp2p does
            raise ConnectionClosedError(f"TCP connection reset by remote peer: {error}",
                                        transport="tcp") from error
        except trio.ClosedResourceError:  # closed here: end of stream, as py-libp2p does
            return b""
        if n is None or len(data) <= n:
            return data
        buf += memoryview(data)[n:]
        return data[:n]


async def _window_update(self: YamuxStream, *, bytes_read: int = 0) -> None:
    """After a read of ``bytes_read`` bytes: send the peer a WINDOW_UPDATE once the
    receive window is short of its target by at least half the target (go-yamux)."""
    async with self.window_lock:
        buffered = len(self.conn.stream_buffers.get(self.stream_id, b""))
        shortfall = self.target_recv_window - (self.recv_window + buffered)
        if shortfall <= 0 or shortfall < self._grow_threshold():
            return
        increment = self._grow_to_delta(buffered) + self._apply_autotune_epoch(buffered)
        self._pending_recv_release = 0
    if increment > 0:  # never with window_lock held: the reader of updates takes it
        await self.send_window_update(increment, skip_lock=True)


def _quick_locks(cls, *names: str) -> None:
    """Wrap the locks ``names`` of every new ``cls`` object in :class:`QuickLock`."""
    original = cls.__init__

    def __init__(self, *args, **kwargs) -> None:
        original(self, *args, **kwargs)
        for name in names:
            lock = getattr(self, name, None)
            if lock is not None and not isinstance(lock, QuickLock):
                setattr(self, name, QuickLock(lock))
    __init__.__wrapped__ = original  # type: ignore[attr-defined]
    cls.__init__ = __init__


#: yamux's tuning variables, read from the environment once (:func:`install`)
_ENV_KNOBS = ("_yamux_disable_hysteresis", "_yamux_batch_threshold_divisor",
              "_yamux_release_on_read", "_yamux_data_read_timeout",
              "_perf_yamux_debug_enabled")
_data_read_timeout_s = 60.0


async def _read_data_body(self: Yamux, length: int) -> bytes:
    """``Yamux._read_data_body``: a DATA frame's body, from the Noise layer's buffer when
    it is all there (no waiting, so no timeout scope), else read within py-libp2p's
    data-read timeout."""
    conn = self.secured_conn
    buffered = getattr(conn, "high_watermark", 0) - getattr(conn, "low_watermark", 0)
    if buffered >= length:
        return await read_exactly(conn, length)
    with trio.fail_after(_data_read_timeout_s):
        return await read_exactly(conn, length)


def _freeze_env_knobs() -> None:
    """Replace yamux's per-call environment lookups with the values they give now."""
    global _data_read_timeout_s
    for name in _ENV_KNOBS:
        read = getattr(_yamux, name, None)
        if callable(read):
            value = read()
            setattr(_yamux, name, lambda value=value: value)
    _data_read_timeout_s = _yamux._yamux_data_read_timeout()


async def _write_frame(self: Yamux, data: bytes) -> None:
    """``Yamux._write_frame`` without what py-libp2p adds around the write on every frame:
    a debug line formatted whether or not debug logging is on, and an extra checkpoint
    (the socket write is one already: trio's socket calls always are)."""
    async with self._write_lock:
        await self.secured_conn.write(data)


_verdicts: dict[tuple[bytes, bytes], tuple[float, bool]] = {}
#: per live host (a weak key: a later host of the process never gets a dead one's record,
#: also not one restarted from the same key on other addresses)
_own: "weakref.WeakKeyDictionary[object, tuple[float, tuple[bytes, bool]]]" = \
    weakref.WeakKeyDictionary()
_originals: dict[str, object] = {}


def _consume_record(msg, host, peer_id) -> bool:
    """py-libp2p's ``maybe_consume_signed_record``, its verdict kept per (peer, bytes)."""
    if not msg.HasField("senderRecord"):
        return True
    key = (peer_id.to_bytes(), bytes(msg.senderRecord))
    now = time.monotonic()
    hit = _verdicts.get(key)
    if hit is not None and now - hit[0] < RECORD_RECHECK_S:
        return hit[1]
    verdict = _originals["consume"](msg, host, peer_id)  # type: ignore[operator]
    if len(_verdicts) >= MAX_RECORDS:
        _verdicts.clear()
    _verdicts[key] = (now, verdict)
    return verdict


def _record_to_send(host) -> tuple[bytes, bool]:
    """py-libp2p's ``env_to_send_in_RPC``, reused for RECORD_REUSE_S per host."""
    now = time.monotonic()
    hit = _own.get(host)
    if hit is None or now - hit[0] >= RECORD_REUSE_S:
        hit = _own[host] = (now, _originals["env"](host))  # type: ignore[operator]
    return hit[1]


def install() -> None:
    """Apply the fixes to every connection and pubsub of this process (idempotent)."""
    global _installed
    if _installed:
        return
    TrioTCPStream.read = _buffered_read  # type: ignore[method-assign]
    YamuxStream._auto_tune_and_send_window_update = _window_update  # type: ignore
    Yamux._write_frame = _write_frame  # type: ignore[method-assign]
    Yamux._read_data_body = _read_data_body  # type: ignore[method-assign]
    _freeze_env_knobs()
    net_stream = importlib.import_module("libp2p.network.stream.net_stream")
    rw_lock = importlib.import_module("libp2p.stream_muxer.rw_lock")
    _quick_locks(net_stream.NetStream, "_state_lock")
    _quick_locks(YamuxStream, "window_lock")
    _quick_locks(Yamux, "_write_lock", "streams_lock")
    _quick_locks(TrioTCPStream, "read_lock", "write_lock")
    _quick_locks(rw_lock.ReadWriteLock, "_readers_lock", "_writer_lock")
    streamsafety.make_lock = lambda: QuickLock(trio.Lock())
    # the modules themselves: each holds its own reference to the two functions
    pubsub = importlib.import_module("libp2p.pubsub.pubsub")
    gossipsub = importlib.import_module("libp2p.pubsub.gossipsub")
    _originals["consume"] = pubsub.maybe_consume_signed_record
    _originals["env"] = pubsub.env_to_send_in_RPC
    for module in (pubsub, gossipsub):
        module.maybe_consume_signed_record = _consume_record  # type: ignore[attr-defined]
        module.env_to_send_in_RPC = _record_to_send  # type: ignore[attr-defined]
    _installed = True
