"""Bitswap 1.2.0 without I/O: the message codec, what a server answers, what a client asks.

Sans-IO in the manner of h11: :class:`Server` turns a peer's wantlist into replies from a
block lookup; :class:`Session` decides which peer to ask for which block and reacts to
HAVE / DONT_HAVE / blocks / timeouts / departures. ``net/bitswap.py`` moves the bytes.

Wire format (spec: ipfs/specs BITSWAP.md), each message a uvarint-length-prefixed
protobuf, replies always on the sender's own outbound stream::

    Message { Wantlist wantlist = 1; repeated bytes blocks = 2 (1.0.0, CIDv0 only);
              repeated Block payload = 3; repeated BlockPresence blockPresences = 4;
              int32 pendingBytes = 5; }
    Wantlist { repeated Entry entries = 1; bool full = 2; }
    Entry { bytes block = 1 (a CID); int32 priority = 2; bool cancel = 3;
            WantType wantType = 4 (Block 0, Have 1); bool sendDontHave = 5; }
    Block { bytes prefix = 1 (version, codec, hash, length); bytes data = 2; }
    BlockPresence { bytes cid = 1; Type type = 2 (Have 0, DontHave 1); }
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from meca_node.ipfs.cid import CID, DAG_PB, CidError, CidUnsupported
from meca_node.ipfs.pb import LEN, VARINT, PbError, field_bytes, field_varint, fields, varint

PROTOCOLS = ("/ipfs/bitswap/1.2.0", "/ipfs/bitswap/1.1.0", "/ipfs/bitswap/1.0.0",
             "/ipfs/bitswap")
WANT_BLOCK, WANT_HAVE = 0, 1
HAVE, DONT_HAVE = 0, 1

MAX_MESSAGE = 4 * 1024 * 1024 + 64 * 1024   # go-bitswap's 4 MiB plus framing slack
MAX_BLOCK = 2 * 1024 * 1024                 # the largest block IPFS implementations send
MAX_ENTRIES = 4096                          # wantlist entries in one message
MAX_PEER_WANTS = 8192                       # wants we remember for one peer
REPLY_BYTES = 1024 * 1024                   # block bytes we pack into one reply


_BLOCK_TAG = varint(3 << 3 | LEN)       # Message.payload
_BLOCK_DATA_TAG = varint(2 << 3 | LEN)  # Block.data


class BitswapError(ValueError):
    """A message that breaks the protocol: the peer that sent it gets cut off."""


@dataclass(frozen=True)
class Entry:
    cid: CID
    want_type: int = WANT_BLOCK
    cancel: bool = False
    send_dont_have: bool = False
    priority: int = 1


@dataclass
class Message:
    wants: list[Entry] = field(default_factory=list)
    full: bool = False
    #: (CID, bytes); a decoded message's blocks are memoryviews into its frame
    blocks: list[tuple[CID, bytes | memoryview]] = field(default_factory=list)
    presences: list[tuple[CID, int]] = field(default_factory=list)
    skipped: int = 0  # entries for CIDs we cannot store (read, then left out)
    #: blocks to read from the store just before sending (see Server); never encoded
    refs: list[CID] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.wants or self.blocks or self.presences or self.full or self.refs)

    def encode(self) -> bytes:
        if self.refs:
            raise ValueError("resolve Message.refs into blocks before encoding")
        out = bytearray()
        if self.wants or self.full:
            wl = bytearray()
            for e in self.wants:
                body = field_bytes(1, bytes(e.cid)) + field_varint(2, e.priority)
                if e.cancel:
                    body += field_varint(3, 1)
                if e.want_type:
                    body += field_varint(4, e.want_type)
                if e.send_dont_have:
                    body += field_varint(5, 1)
                wl += field_bytes(1, body)
            if self.full:
                wl += field_varint(2, 1)
            out += field_bytes(1, bytes(wl))
        parts = [out]
        for cid, data in self.blocks:  # the block's bytes copied once, by the join
            head = field_bytes(1, cid.prefix) + _BLOCK_DATA_TAG + varint(len(data))
            parts += (_BLOCK_TAG, varint(len(head) + len(data)), head, data)
        tail = bytearray()
        for cid, kind in self.presences:
            tail += field_bytes(4, field_bytes(1, bytes(cid)) + field_varint(2, kind))
        parts.append(tail)
        return b"".join(parts)

    @property
    def size(self) -> int:
        return sum(len(d) for _, d in self.blocks) + 48 * (len(self.wants) +
                                                          len(self.presences))


def decode(data: bytes) -> Message:
    """Parse one message; any breach of the format or of our caps is a BitswapError.

    Blocks come back with the CID computed from their own bytes: a block is trusted only
    after the caller checks that CID is one it asked for. Their bytes are read-only views
    into ``data`` (copied first unless it is ``bytes``): no copy of a block is made, and a
    copy into fresh memory costs as much as its hash (page faults; bench/README.md)."""
    if len(data) > MAX_MESSAGE:
        raise BitswapError(f"message of {len(data)} bytes is over {MAX_MESSAGE}")
    if not isinstance(data, bytes):
        data = bytes(data)  # nobody can change the bytes behind a view once hashed
    msg = Message()
    try:
        for number, wire_type, value in fields(data, views=True):
            if number == 1 and wire_type == LEN:
                _wantlist(value, msg)
            elif number == 2 and wire_type == LEN:  # 1.0.0: bare blocks, CIDv0
                msg.blocks.append((_block_cid(_V0_PREFIX, value), value))
            elif number == 3 and wire_type == LEN:
                prefix = payload = None
                for n, w, v in fields(value, views=True):
                    if n == 1 and w == LEN:
                        prefix = v
                    elif n == 2 and w == LEN:
                        payload = v
                    else:
                        raise BitswapError(f"unexpected block field {n}")
                if prefix is None or payload is None:
                    raise BitswapError("a block without prefix or data")
                cid = _block_cid(bytes(prefix), payload)
                if cid is _UNSUPPORTED:
                    msg.skipped += 1  # cannot be one we asked for
                    continue
                msg.blocks.append((cid, payload))
            elif number == 4 and wire_type == LEN:
                cid, kind = None, HAVE
                for n, w, v in fields(value):
                    if n == 1 and w == LEN:
                        cid = _cid(v)
                    elif n == 2 and w == VARINT and v in (HAVE, DONT_HAVE):
                        kind = v
                    else:
                        raise BitswapError(f"unexpected presence field {n}")
                if cid is _UNSUPPORTED:
                    msg.skipped += 1
                    continue
                if cid is None:
                    raise BitswapError("a block presence without a CID")
                msg.presences.append((cid, kind))
            elif number == 5 and wire_type == VARINT:
                continue  # pendingBytes: informational
            else:
                raise BitswapError(f"unexpected message field {number}")
            if len(msg.blocks) + len(msg.presences) > MAX_ENTRIES:
                raise BitswapError(f"more than {MAX_ENTRIES} blocks and presences")
    except PbError as exc:
        raise BitswapError(f"malformed message: {exc}") from None
    return msg


def _wantlist(raw: bytes, msg: Message) -> None:
    for number, wire_type, value in fields(raw):
        if number == 1 and wire_type == LEN:
            if len(msg.wants) >= MAX_ENTRIES:
                raise BitswapError(f"more than {MAX_ENTRIES} wantlist entries")
            cid, kind, cancel, dont_have, priority = None, WANT_BLOCK, False, False, 1
            for n, w, v in fields(value):
                if n == 1 and w == LEN:
                    cid = _cid(v)
                elif n == 2 and w == VARINT:
                    priority = v
                elif n == 3 and w == VARINT:
                    cancel = bool(v)
                elif n == 4 and w == VARINT and v in (WANT_BLOCK, WANT_HAVE):
                    kind = v
                elif n == 5 and w == VARINT:
                    dont_have = bool(v)
                else:
                    raise BitswapError(f"unexpected wantlist entry field {n}")
            if cid is _UNSUPPORTED:
                msg.skipped += 1  # a valid CID of a codec or hash we do not store
                continue
            if cid is None:
                raise BitswapError("a wantlist entry without a CID")
            msg.wants.append(Entry(cid, kind, cancel, dont_have, priority))
        elif number == 2 and wire_type == VARINT:
            msg.full = bool(value)
        else:
            raise BitswapError(f"unexpected wantlist field {number}")


_V0_PREFIX = bytes([0, DAG_PB, 0x12, 32])
#: a well-formed CID (or block prefix) of a codec, hash or version we do not store: the
#: entry is skipped, not a protocol error (kubo asks every peer for all kinds of blocks)
_UNSUPPORTED = CID(0, DAG_PB, bytes(32))


def _cid(raw: bytes) -> CID:
    try:
        return CID.decode(raw)
    except CidUnsupported:
        return _UNSUPPORTED
    except CidError as exc:
        raise BitswapError(str(exc)) from None


def _block_cid(prefix: bytes, data: bytes) -> CID:
    if len(data) > MAX_BLOCK:
        raise BitswapError(f"block of {len(data)} bytes is over {MAX_BLOCK}")
    try:
        return CID.from_prefix(prefix, data)
    except CidUnsupported:
        return _UNSUPPORTED
    except CidError as exc:
        raise BitswapError(str(exc)) from None


# -- server ------------------------------------------------------------------------------
class Server:
    """What we owe each peer: answers to its wants from our blocks.

    ``lookup(cid)`` returns the block or None. With ``size_of(cid)`` (the block's size or
    None) the replies carry references instead (``Message.refs``) that the sender reads
    just before it sends each message, so what a peer asks for at once never sits in
    memory at once (a wantlist of 4096 entries could name 8 GiB). Wants we cannot answer
    yet stay in the peer's (bounded) ledger and are answered when :meth:`on_new_block`
    sees the block.
    """

    def __init__(self, lookup: Callable[[CID], bytes | None],
                 has: Callable[[CID], bool],
                 size_of: Callable[[CID], int | None] | None = None) -> None:
        self.lookup = lookup
        self.has = has
        self.size_of = size_of
        self.ledgers: dict[str, OrderedDict[bytes, Entry]] = {}

    def on_message(self, peer: str, msg: Message) -> list[Message]:
        """Replies (already split to about REPLY_BYTES each) to a peer's message."""
        ledger = self.ledgers.setdefault(peer, OrderedDict())
        if msg.full:
            ledger.clear()
        replies = _Replies()
        for e in msg.wants:
            key = e.cid.multihash
            if e.cancel:
                ledger.pop(key, None)
                continue
            if e.want_type == WANT_HAVE:
                if self.has(e.cid):
                    replies.presence(e.cid, HAVE)
                    continue
            elif self.size_of is not None:
                size = self.size_of(e.cid)
                if size is not None:
                    replies.ref(e.cid, size)
                    ledger.pop(key, None)
                    continue
            else:
                block = self.lookup(e.cid)
                if block is not None:
                    replies.block(e.cid, block)
                    ledger.pop(key, None)
                    continue
            if e.send_dont_have:
                replies.presence(e.cid, DONT_HAVE)
            ledger[key] = e  # answer later if the block arrives
            while len(ledger) > MAX_PEER_WANTS:
                ledger.popitem(last=False)
        return replies.done()

    def on_new_block(self, cid: CID, block: bytes) -> dict[str, Message]:
        """Peers that wanted ``cid`` and what to send them now that we have it."""
        out = {}
        for peer, ledger in self.ledgers.items():
            e = ledger.pop(cid.multihash, None)
            if e is None:
                continue
            if e.want_type == WANT_HAVE:
                out[peer] = Message(presences=[(e.cid, HAVE)])
            else:  # a copy: a view would keep the whole frame it came in alive
                out[peer] = Message(blocks=[(e.cid, bytes(block))])
        return out

    def forget(self, peer: str) -> None:
        self.ledgers.pop(peer, None)


class _Replies:
    def __init__(self) -> None:
        self.messages = [Message()]
        self.bytes = 0

    def _room(self, n: int) -> Message:
        if self.bytes + n > REPLY_BYTES and self.messages[-1]:
            self.messages.append(Message())
            self.bytes = 0
        self.bytes += n
        return self.messages[-1]

    def block(self, cid: CID, data: bytes) -> None:
        self._room(len(data)).blocks.append((cid, data))

    def ref(self, cid: CID, size: int) -> None:
        self._room(size).refs.append(cid)

    def presence(self, cid: CID, kind: int) -> None:
        self._room(48).presences.append((cid, kind))

    def done(self) -> list[Message]:
        return [m for m in self.messages if m]


# -- client ------------------------------------------------------------------------------
@dataclass
class _Want:
    cid: CID
    asked: str | None = None     # the peer we sent want-block to
    asked_at: float = 0.0
    haves: set[str] = field(default_factory=set)
    dont_haves: set[str] = field(default_factory=set)
    tried: set[str] = field(default_factory=set)


class NoProvider(Exception):
    """No peer of the session has a block."""


class Session:
    """The client side of one pull: which peer to ask for each wanted block.

    Each wanted block is asked of one peer with want-block and of the session's other
    peers with want-have (both with send-dont-have), as go-bitswap does. A HAVE makes a
    peer a candidate, a DONT_HAVE rules it out for that block, a timeout or a departure
    moves the want-block on. A block nobody has fails the pull at once.
    """

    def __init__(self, peers: Iterable[str], want_timeout_s: float = 10.0) -> None:
        self.peers: list[str] = list(dict.fromkeys(peers))
        self.want_timeout_s = want_timeout_s
        self.wants: dict[bytes, _Want] = {}
        self.outstanding: dict[str, int] = {}
        self.received_from: dict[str, int] = {}
        self.failed: CID | None = None

    # -- inputs -----------------------------------------------------------------------
    def want(self, cids: Iterable[CID], now: float) -> dict[str, Message]:
        out: dict[str, Message] = {}
        for cid in cids:
            if cid.multihash in self.wants:
                continue
            w = self.wants[cid.multihash] = _Want(cid)
            self._ask(w, now, out, broadcast=True)
        return out

    def on_message(self, peer: str, msg: Message, now: float) -> tuple[list[tuple[CID, bytes]],
                                                                        dict[str, Message]]:
        """(blocks we wanted, verified by CID; messages to send)."""
        out: dict[str, Message] = {}
        got = []
        for cid, data in msg.blocks:
            w = self.wants.pop(cid.multihash, None)
            if w is None:
                continue  # unsolicited or a duplicate: dropped
            self._done_asking(w)
            self.received_from[peer] = self.received_from.get(peer, 0) + len(data)
            got.append((w.cid, data))
            for other in w.tried - {peer}:  # everyone else we asked: no longer wanted
                _msg(out, other).wants.append(Entry(w.cid, cancel=True))
        for cid, kind in msg.presences:
            w = self.wants.get(cid.multihash)
            if w is None:
                continue
            if kind == HAVE:
                w.haves.add(peer)
                if w.asked is None:
                    self._ask(w, now, out)
            else:
                w.dont_haves.add(peer)
                w.haves.discard(peer)
                if w.asked == peer:
                    self._done_asking(w)
                if w.asked is None:  # move it on, or fail it once nobody is left
                    self._ask(w, now, out)
        return got, out

    def add_peer(self, peer: str, now: float) -> dict[str, Message]:
        if peer in self.peers:
            return {}
        self.peers.append(peer)
        out: dict[str, Message] = {}
        for w in self.wants.values():
            _msg(out, peer).wants.append(Entry(w.cid, WANT_HAVE, send_dont_have=True))
            w.tried.add(peer)
        return out

    def remove_peer(self, peer: str, now: float) -> dict[str, Message]:
        if peer in self.peers:
            self.peers.remove(peer)
        out: dict[str, Message] = {}
        for w in self.wants.values():
            w.haves.discard(peer)
            w.tried.discard(peer)
            if w.asked == peer:
                self._done_asking(w)
            if w.asked is None:
                self._ask(w, now, out)
        self.outstanding.pop(peer, None)
        return out

    def tick(self, now: float) -> dict[str, Message]:
        """Move want-blocks that have waited too long to another peer."""
        out: dict[str, Message] = {}
        for w in list(self.wants.values()):
            if now - w.asked_at <= self.want_timeout_s:
                continue
            if w.asked is not None:
                slow = w.asked
                self._done_asking(w)
                w.haves.discard(slow)
                w.dont_haves.add(slow)
                _msg(out, slow).wants.append(Entry(w.cid, cancel=True))
                self._ask(w, now, out)
            else:  # no HAVE came (a peer that ignores send-dont-have): ask outright
                self._ask(w, now, out, broadcast=True)
        return out

    # -- choosing ---------------------------------------------------------------------
    def _done_asking(self, w: _Want) -> None:
        if w.asked is not None:
            self.outstanding[w.asked] = max(0, self.outstanding.get(w.asked, 0) - 1)
            w.asked = None

    def _ask(self, w: _Want, now: float, out: dict[str, Message],
             broadcast: bool = False) -> None:
        able = [p for p in self.peers if p not in w.dont_haves]
        if not able:
            self.failed = w.cid
            return
        preferred = [p for p in able if p in w.haves] or (able if broadcast else [])
        if not preferred:
            w.asked_at = now  # wait (bounded by tick) for a HAVE from the peers asked
            return
        peer = min(preferred, key=lambda p: (self.outstanding.get(p, 0), p in w.tried))
        w.asked, w.asked_at = peer, now
        w.tried.add(peer)
        self.outstanding[peer] = self.outstanding.get(peer, 0) + 1
        _msg(out, peer).wants.append(Entry(w.cid, WANT_BLOCK, send_dont_have=True))
        if broadcast:
            for other in able:
                if other != peer:
                    w.tried.add(other)
                    _msg(out, other).wants.append(Entry(w.cid, WANT_HAVE,
                                                        send_dont_have=True))

    @property
    def pending(self) -> int:
        return len(self.wants)


def _msg(out: dict[str, Message], peer: str) -> Message:
    return out.setdefault(peer, Message())
