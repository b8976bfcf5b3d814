"""What a node knows of other nodes from their signed adverts (pure state, clock passed in)."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from meca_node.core.identity import peer_id_of
from meca_node.wire import Envelope, HostAdvert


@dataclass(frozen=True, slots=True)
class AdvertSeen:
    peer_id: str
    signer: bytes
    advert: HostAdvert
    ts: int
    received_ms: int


class PeerBook:
    """The newest advert per signer; older or equal timestamps never replace newer ones."""

    def __init__(self, capacity: int = 10_000) -> None:
        self.capacity = capacity
        self._adverts: OrderedDict[bytes, AdvertSeen] = OrderedDict()

    def observe(self, env: Envelope, now_ms: int) -> bool:
        """Record an advert envelope; True when it is newer than what we had."""
        if not isinstance(env.body, HostAdvert):
            raise TypeError("PeerBook.observe takes HostAdvert envelopes")
        old = self._adverts.get(env.signer)
        if old is not None and old.ts >= env.ts:
            return False
        self._adverts[env.signer] = AdvertSeen(peer_id_of(env.signer), env.signer, env.body,
                                               env.ts, now_ms)
        self._adverts.move_to_end(env.signer)
        while len(self._adverts) > self.capacity:
            self._adverts.popitem(last=False)
        return True

    def all(self) -> list[AdvertSeen]:
        """Every advert held (the newest per signer), fresh or not."""
        return list(self._adverts.values())

    def fresh(self, now_ms: int, max_age_ms: int) -> list[AdvertSeen]:
        return [a for a in self._adverts.values() if now_ms - a.ts <= max_age_ms]

    def __len__(self) -> int:
        return len(self._adverts)

    def get(self, signer: bytes) -> AdvertSeen | None:
        return self._adverts.get(signer)
