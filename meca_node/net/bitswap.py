"""Bitswap 1.2.0 on the node's libp2p host: serve our blocks, pull DAGs from peers.

The protocol decisions are in :mod:`meca_node.ipfs.bitswap` (sans-IO); this module reads
and writes its messages on streams. As the spec says, each side sends on a stream it
opened itself: replies never go back on the stream a request came in on. A peer whose
message breaks the format is cut off (stream reset, connection closed, never redialed);
everyone else keeps being served.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import trio

from meca_node.ipfs import bitswap as bs
from meca_node.ipfs import dagpb
from meca_node.ipfs.cid import CID, DAG_PB
from meca_node.net.framing import FrameError
from meca_node.net.host import FramedStream, Libp2pNet

log = logging.getLogger("meca_node.bitswap")

#: blocks nobody asked for that a peer may send before it is cut off (a few arrive
#: legitimately: a block already on its way when we cancelled, or asked twice)
JUNK_BLOCKS = 4
#: frames read ahead of their processing, per incoming stream (each up to MAX_MESSAGE)
_READ_AHEAD = 4
#: how many recently asked CIDs we remember to tell wanted blocks from junk
ASKED_MEMORY = 65536


#: glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
#: freed heap a process that pulls keeps for the next messages instead of returning it
_HEAP_CUSHION = 16 * 1024 * 1024
_heap_tuned = False


def _keep_heap_for_transfers() -> None:
    """Once per process, on glibc: take buffers up to a Bitswap message from the heap and
    keep up to 16 MiB of freed heap, rather than glibc's default of giving the top of the
    heap back to the kernel as soon as 2 MiB of it is free. A pull's 1 MiB messages
    otherwise grow and shrink the heap message after message, and every page it takes
    back is a fresh page fault: 5,000-24,000 per 64 MiB pull here, ~3.5 us each
    (bench/README.md). No effect where the C library is not glibc."""
    global _heap_tuned
    if _heap_tuned:
        return
    _heap_tuned = True
    import ctypes
    import platform

    if platform.libc_ver()[0] != "glibc":
        return
    try:
        libc = ctypes.CDLL(None)
        libc.mallopt(_M_MMAP_THRESHOLD, bs.MAX_MESSAGE + 4096)
        libc.mallopt(_M_TRIM_THRESHOLD, _HEAP_CUSHION)
    except (OSError, AttributeError) as exc:
        log.debug("cannot tune malloc for transfers: %s", exc)


class Blocks(Protocol):
    """The block store, as Bitswap uses it (``meca_node.store.blocks.BlockStore``)."""

    def has(self, cid: CID) -> bool: ...
    def get(self, cid: CID) -> bytes: ...
    def size_of(self, cid: CID) -> int | None: ...
    def put(self, cid: CID, data: bytes, *, durable: bool = True,
            hashed: bool = False) -> None: ...
    def sync(self) -> None: ...


class PullError(Exception):
    """A pull that cannot finish: the message says which block and why."""


@dataclass
class PullStats:
    root: CID
    blocks: int = 0          # fetched over the network
    bytes: int = 0
    local_blocks: int = 0    # already here (a resumed pull)
    seconds: float = 0.0
    by_peer: dict[str, int] = field(default_factory=dict)

    @property
    def rate_mb_s(self) -> float:
        return self.bytes / 1e6 / self.seconds if self.seconds else 0.0


#: progress(stats, peers in the session): called after every stored block
Progress = Callable[[PullStats, int], None]


class _EarlyFlush:
    """Syncs the block store in a worker thread every ``EVERY`` bytes a pull writes, one
    sync at a time, so the disk writes overlap the transfer and the sync that ends the
    pull (which alone makes it durable) finds little left: it took 40-120 ms of a 64 MiB
    pull, and 0-8 ms after these (bench/README.md). The thread holds the GIL only to
    start and end the call."""

    EVERY = 16 * 1024 * 1024

    def __init__(self, blocks: Blocks, nursery: trio.Nursery) -> None:
        self.blocks = blocks
        self.nursery = nursery
        self.unsynced = 0
        self.running = False

    def wrote(self, n: int) -> None:
        self.unsynced += n
        if self.unsynced >= self.EVERY and not self.running:
            self.unsynced = 0
            self.running = True
            self.nursery.start_soon(self._sync)

    async def _sync(self) -> None:
        try:
            await trio.to_thread.run_sync(self.blocks.sync)
        except OSError as exc:  # the sync that ends the pull reports for real
            log.debug("early sync of the block store failed: %s", exc)
        finally:
            self.running = False


class _Pull:
    def __init__(self, session: bs.Session) -> None:
        self.session = session
        self.inbox: list[tuple[str, bs.Message]] = []
        self.wake = trio.Event()

    def deliver(self, peer: str, msg: bs.Message) -> None:
        self.inbox.append((peer, msg))
        self.wake.set()


class Bitswap:
    """Start with ``await nursery.start(bitswap.run)``."""

    def __init__(self, net: Libp2pNet, blocks: Blocks, *, outbox: int = 256,
                 window: int = 32, want_timeout_s: float = 10.0) -> None:
        self.net = net
        self.blocks = blocks
        self.server = bs.Server(self._lookup, self._has, self._size_of)
        self.outbox_size = outbox
        self.window = window
        self.want_timeout_s = want_timeout_s
        self._outboxes: dict[str, trio.MemorySendChannel] = {}
        self._pulls: set[_Pull] = set()
        self._nursery: trio.Nursery | None = None
        #: CIDs (multihash) we asked for lately: a block outside it was never wanted
        self._asked: OrderedDict[bytes, None] = OrderedDict()
        self._junk: dict[str, int] = {}
        self.served_bytes = 0
        self.fetched_bytes = 0  # block bytes pulled from peers, every pull together
        self.cut_off = 0  # peers cut off (each counted once, however many streams it had)
        self._cut: set[str] = set()

    # -- blocks ---------------------------------------------------------------------
    def _has(self, cid: CID) -> bool:
        return self.blocks.has(cid)

    def _size_of(self, cid: CID) -> int | None:
        try:
            return self.blocks.size_of(cid)
        except Exception:
            return None

    def _lookup(self, cid: CID) -> bytes | None:
        try:
            return self.blocks.get(cid)
        except Exception:  # missing, or corrupt on disk (the store removed it)
            return None

    # -- service --------------------------------------------------------------------
    async def run(self, task_status=trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            self.net.set_stream_handler(bs.PROTOCOLS, self._handle, max_frame=bs.MAX_MESSAGE)
            task_status.started()
            await trio.sleep_forever()

    async def _handle(self, stream: FramedStream) -> None:
        """Read a peer's messages and act on them in order. Reading runs ahead of the
        work (a few frames, bounded) so the peer's yamux window keeps moving while we
        hash and store what it sent."""
        peer = stream.remote_peer
        send, receive = trio.open_memory_channel[bytes | None](_READ_AHEAD)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._read_frames, stream, send, peer)
            async with receive:
                async for frame in receive:
                    if not await self._process(stream, peer, frame):
                        nursery.cancel_scope.cancel()
                        return

    async def _read_frames(self, stream: FramedStream, send: trio.MemorySendChannel,
                           peer: str) -> None:
        async with send:
            while True:
                try:
                    frame = await stream.receive()
                except FrameError as exc:
                    await stream.reset()
                    await self._cut_off(peer, f"broke Bitswap framing: {exc}")
                    return
                if frame is None:
                    return
                await send.send(frame)

    async def _process(self, stream: FramedStream, peer: str, frame: bytes) -> bool:
        """Decode and act on one message; False once the peer has been cut off."""
        try:
            msg = bs.decode(frame)  # hashes its blocks: ~3 ms per MiB, cheaper than a
            # worker thread fighting the loop for the GIL (measured, bench/README.md)
        except bs.BitswapError as exc:
            await stream.reset()
            await self._cut_off(peer, f"sent a malformed Bitswap message: {exc}")
            return False
        if not await self._on_message(peer, msg):
            await stream.reset()
            await self._cut_off(peer, f"sent more than {JUNK_BLOCKS} blocks nobody "
                                      "asked for (or blocks that do not match their CID)")
            return False
        return True

    async def _on_message(self, peer: str, msg: bs.Message) -> bool:
        """Hand a message to the pulls and the server; False if the peer is to be cut off
        for sending blocks nobody asked for (wrong bytes for a wanted CID look the same)."""
        junk = sum(1 for cid, _ in msg.blocks if cid.multihash not in self._asked)
        if junk:
            self._junk[peer] = self._junk.get(peer, 0) + junk
            if self._junk[peer] > JUNK_BLOCKS:
                return False
        for pull in list(self._pulls):
            if msg.blocks or msg.presences:
                pull.deliver(peer, msg)
        if msg.wants or msg.full:
            # reading and verifying the wanted blocks (page cache and ~3 ms of hashing per
            # MiB) inline: cheaper than a worker thread contending for the GIL
            replies = self.server.on_message(peer, msg)
            for reply in replies:
                self._send(peer, reply)
        return True

    async def _cut_off(self, peer: str, why: str) -> None:
        if peer in self._cut:  # a second stream of the same peer hit the limit too
            return
        self._cut.add(peer)
        self.cut_off += 1
        self.server.forget(peer)
        now = time.monotonic()
        for pull in list(self._pulls):  # what it was asked for goes to other peers now
            self._send_all(pull.session.remove_peer(peer, now))
            pull.wake.set()
        outbox = self._outboxes.pop(peer, None)
        if outbox is not None:
            outbox.close()
        await self.net.block(peer, why)

    # -- sending ----------------------------------------------------------------------
    def _send(self, peer: str, msg: bs.Message) -> None:
        """Queue ``msg`` for ``peer``'s outbound stream (opened on first use)."""
        if not msg:
            return
        outbox = self._outboxes.get(peer)
        if outbox is None:
            if self._nursery is None:
                raise RuntimeError("Bitswap.run has not started")
            outbox, inbox = trio.open_memory_channel[bs.Message](self.outbox_size)
            self._outboxes[peer] = outbox
            self._nursery.start_soon(self._sender, peer, outbox, inbox)
        try:
            outbox.send_nowait(msg)
        except trio.WouldBlock:
            log.info("outbox to %s full: dropping a message (it will be re-asked)", peer)
        except trio.ClosedResourceError:
            pass

    def _send_all(self, out: dict[str, bs.Message]) -> None:
        for peer, msg in out.items():
            for e in msg.wants:
                if not e.cancel:
                    self._asked[e.cid.multihash] = None
                    self._asked.move_to_end(e.cid.multihash)
            while len(self._asked) > ASKED_MEMORY:
                self._asked.popitem(last=False)
            self._send(peer, msg)

    def _resolve(self, msg: bs.Message) -> bs.Message:
        """Read the blocks a reply refers to (checked against their CIDs on the way);
        one that has gone since the want was answered becomes a DONT_HAVE."""
        for cid in msg.refs:
            data = self._lookup(cid)
            if data is None:
                msg.presences.append((cid, bs.DONT_HAVE))
            else:
                msg.blocks.append((cid, data))
        msg.refs = []
        return msg

    async def _sender(self, peer: str, outbox: trio.MemorySendChannel,
                      inbox: trio.MemoryReceiveChannel) -> None:
        """Write queued messages to ``peer`` on one outbound stream; a stream that fails
        is reopened once, and if that fails too the peer's queue is dropped."""
        stream: FramedStream | None = None
        try:
            async with inbox:
                async for msg in inbox:
                    data = self._resolve(msg).encode()
                    self.served_bytes += sum(len(d) for _, d in msg.blocks)
                    for attempt in range(2):
                        try:
                            if stream is None:
                                with trio.fail_after(10):
                                    stream = await self.net.open_stream(
                                        peer, bs.PROTOCOLS, max_frame=bs.MAX_MESSAGE)
                            await stream.send(data)
                            break
                        except Exception as exc:
                            if stream is not None:
                                await stream.reset()
                                stream = None
                            if attempt:
                                log.info("cannot send Bitswap messages to %s: %s", peer, exc)
                                return
        finally:
            if self._outboxes.get(peer) is outbox:
                del self._outboxes[peer]
            outbox.close()
            if stream is not None:
                with trio.CancelScope(shield=True):
                    await stream.close()

    # -- pulling ----------------------------------------------------------------------
    def connected(self) -> list[str]:
        return [p.peer_id for p in self.net.connected_peers()]

    async def pull(self, root: CID, *, timeout_s: float = 600.0,
                   peers: list[str] | None = None,
                   progress: Progress | None = None, recursive: bool = True) -> PullStats:
        """Fetch the whole DAG under ``root`` (only ``root``'s own block when not
        ``recursive``) into the block store from connected peers.

        Blocks already here are not fetched again, so an interrupted pull resumes. Each
        block is checked against its CID before it is stored. Fails with PullError when
        no peer has a block, or at ``timeout_s``.
        """
        _keep_heap_for_transfers()
        stats = PullStats(root)
        start = time.monotonic()
        session = bs.Session(peers if peers is not None else self.connected(),
                             self.want_timeout_s)
        pull = _Pull(session)
        self._pulls.add(pull)
        queue: deque[CID] = deque([root])
        try:
            # early syncs run in the service's nursery: one still running when the pull
            # ends overlaps the final sync, which is the one that counts
            flush = _EarlyFlush(self.blocks, self._nursery) if self._nursery else None
            with trio.fail_after(timeout_s):
                await self._pull_loop(pull, queue, stats, start, progress, peers is None,
                                      recursive, flush)
            if stats.blocks:  # what this pull wrote reaches the disk before it succeeds
                await trio.to_thread.run_sync(self.blocks.sync)
        except trio.TooSlowError:
            raise PullError(f"pull of {root} timed out after {timeout_s:g} s with "
                            f"{session.pending} block(s) outstanding; run it again to "
                            "resume from the blocks already fetched") from None
        finally:
            self._pulls.discard(pull)
            cancels: dict[str, bs.Message] = {}
            for w in session.wants.values():
                for peer in w.tried:
                    bs._msg(cancels, peer).wants.append(bs.Entry(w.cid, cancel=True))
            self._send_all(cancels)
            stats.seconds = time.monotonic() - start
            stats.by_peer = dict(session.received_from)
        return stats

    async def _pull_loop(self, pull: _Pull, queue: deque[CID], stats: PullStats,
                         start: float, progress: Progress | None, follow: bool,
                         recursive: bool = True, flush: _EarlyFlush | None = None) -> None:
        session = pull.session
        seen: set[bytes] = set()
        next_tick = time.monotonic() + 1.0
        while queue or session.pending:
            # ask for more while the window has room (one message per peer for all of
            # it); walk what is already here
            asks: dict[str, bs.Message] = {}
            while queue and session.pending < self.window:
                cid = queue.popleft()
                if cid.multihash in seen:
                    continue
                seen.add(cid.multihash)
                if self.blocks.has(cid):
                    stats.local_blocks += 1
                    if cid.codec == DAG_PB:
                        if recursive:
                            queue.extend(dagpb.link_cids(self.blocks.get(cid)))
                    continue
                if not session.peers:
                    raise PullError(f"no peer to fetch {cid} from: connect to one that has "
                                    "it (meca-node peers shows who is connected)")
                for peer, msg in session.want([cid], time.monotonic()).items():
                    bs._msg(asks, peer).wants.extend(msg.wants)
            self._send_all(asks)
            if session.failed is not None:
                raise PullError(f"no connected peer has block {session.failed} "
                                f"(asked {len(session.peers)} peer(s))")
            if not session.pending:
                continue
            with trio.move_on_after(max(0.0, next_tick - time.monotonic())):
                await pull.wake.wait()
            pull.wake = trio.Event()
            inbox, pull.inbox = pull.inbox, []
            now = time.monotonic()
            got: list[tuple[CID, bytes]] = []
            for peer, msg in inbox:
                blocks, out = session.on_message(peer, msg, now)
                self._send_all(out)
                got.extend(blocks)
            for cid, data in got:  # page-cache writes: the pull syncs at its end
                self.blocks.put(cid, data, durable=False, hashed=True)
                if flush is not None:
                    flush.wrote(len(data))
            for cid, data in got:  # peers that wanted these from us get them now
                self._send_all(self.server.on_new_block(cid, data))
            for cid, data in got:
                stats.blocks += 1
                stats.bytes += len(data)
                self.fetched_bytes += len(data)
                if cid.codec == DAG_PB:
                    if recursive:
                        queue.extend(dagpb.link_cids(data))
            if got and progress:
                stats.seconds = time.monotonic() - start
                progress(stats, len(session.peers))
            if now >= next_tick:
                next_tick = now + 1.0
                self._send_all(session.tick(now))
                if follow:
                    live = set(self.connected())
                    for peer in live - set(session.peers):
                        self._send_all(session.add_peer(peer, now))
                    for peer in set(session.peers) - live:
                        self._send_all(session.remove_peer(peer, now))


