"""The small interfaces the node drives; adapters (``net``, in-memory fakes) implement them."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Protocol, Sequence


class GossipMessageLike(Protocol):
    topic: str
    data: bytes
    origin: str


class PeerLike(Protocol):
    peer_id: str
    addrs: Sequence[str]


class Network(Protocol):
    """Gossip plus peer management, as :class:`meca_node.net.Libp2pNet` provides it."""

    @property
    def peer_id(self) -> str: ...
    def listen_addrs(self) -> list[str]: ...
    def connected_peers(self) -> Sequence[PeerLike]: ...
    def learn_addrs(self, peer_id: str, addrs: Sequence[str]) -> None:
        """Where ``peer_id`` says it can be dialed (its advert), relay addresses included."""
    def reachability(self) -> dict:
        """``status``: public, relayed via <peer>, private or unknown; and its grounds."""
    def reachable_peers(self) -> set[str]:
        """Peers not connected now that open_stream reaches through a relay."""
    def set_validator(self, topic: str, fn: Callable[[str, bytes, str], bool]) -> None: ...
    async def publish(self, topic: str, data: bytes) -> None: ...
    async def subscribe(self, topic: str) -> AsyncIterator[GossipMessageLike]: ...
    async def block(self, peer_id: str, why: str) -> None: ...
    def set_stream_handler(self, protocols, handler, max_frame: int | None = None) -> None: ...
    async def open_stream(self, peer_id: str, protocols, max_frame: int | None = None): ...
    async def ping(self, peer_id: str, timeout_s: float = 5.0) -> float:
        """Round trip to ``peer_id`` in ms (libp2p ping); TimeoutError or a refusal."""


class Clock(Protocol):
    def now_ms(self) -> int: ...


class Random(Protocol):
    def token_bytes(self, n: int) -> bytes: ...


class StoredEntry(Protocol):
    id: int
    kind: str
    raw: bytes


class LedgerStore(Protocol):
    """Durable ledger rows, as :class:`meca_node.store.ledger_db.LedgerDB` keeps them.
    Blocking: the node calls ``add`` and ``rows`` from a worker thread, and ``add_nowait``
    (a row it can fetch again, stored without an fsync) on its event loop."""

    def room_for(self, account: bytes, n: int = 1) -> bool: ...
    def add(self, account: bytes, seq: int, kind: str, raw: bytes, durable: bool = True
            ) -> bool: ...
    def add_many(self, account: bytes, rows: Sequence[tuple[int, str, bytes]]) -> bool: ...
    def add_nowait(self, account: bytes, seq: int, kind: str, raw: bytes) -> bool | None: ...
    def rows(self) -> Sequence[StoredEntry]: ...
