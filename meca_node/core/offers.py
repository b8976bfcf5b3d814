"""The task offers a node knows: one live offer per (developer key, task name).

Pure state, clock passed in. An offer's id is the sha256 of the developer's key and the
offer's canonical body: what the developer signed, without the envelope's timestamp and
nonce, so re-announcing the same offer keeps its id and any change gives a new one.
A newer ``TaskOffer`` of the same name from the same key supersedes the older one; a
``TaskWithdraw`` removes the offer of that name signed at or before it, and is remembered so
that a late copy of the withdrawn offer (gossip can deliver it after) does not bring it back.
Offers that are not re-announced within ``ttl_ms`` are no longer offered. Bounded in total
and per developer.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass

from meca_node.core.identity import peer_id_of
from meca_node.wire import Envelope, TaskOffer, TaskWithdraw, encode_body


def offer_id_of(env: Envelope) -> bytes:
    """The id of an offer: sha256(signer public key || canonical CBOR of the TaskOffer)."""
    return hashlib.sha256(env.signer + encode_body(env.body)).digest()


@dataclass(frozen=True, slots=True)
class KnownOffer:
    offer_id: bytes
    signer: bytes
    ts: int            # the developer's signing time
    offer: TaskOffer
    seen_ms: int       # when we last saw it announced (for expiry)

    @property
    def developer(self) -> str:
        return peer_id_of(self.signer)

    @property
    def label(self) -> str:
        """``name@key-prefix``: what users type when a name alone is ambiguous."""
        return f"{self.offer.name}@{self.developer[-8:]}"


class AmbiguousOffer(LookupError):
    """A name that several developers offer; ``candidates`` are their labels."""

    def __init__(self, name: str, candidates: list[str]) -> None:
        super().__init__(f"{len(candidates)} offers are named {name!r}: "
                         f"{', '.join(candidates)}; give one of these, or an offer id")
        self.candidates = candidates


class OfferBook:
    def __init__(self, ttl_ms: int, capacity: int = 4096, per_developer: int = 64) -> None:
        self.ttl_ms = ttl_ms
        self.capacity = capacity
        self.per_developer = per_developer
        self._offers: OrderedDict[tuple[bytes, str], KnownOffer] = OrderedDict()
        #: offer id -> its key in ``_offers``: a job's admission finds its offer at once
        self._by_id: dict[bytes, tuple[bytes, str]] = {}
        self._withdrawn: OrderedDict[tuple[bytes, str], int] = OrderedDict()

    def observe(self, env: Envelope, now_ms: int) -> bool:
        """Take a TaskOffer or TaskWithdraw envelope; True when what is offered changed."""
        body = env.body
        if isinstance(body, TaskWithdraw):
            return self._withdraw(env.signer, body.name, env.ts)
        if not isinstance(body, TaskOffer):
            raise TypeError("OfferBook.observe takes TaskOffer and TaskWithdraw envelopes")
        key = (env.signer, body.name)
        if self._withdrawn.get(key, -1) >= env.ts:
            return False  # withdrawn after it was signed
        old = self._offers.get(key)
        offer_id = offer_id_of(env)
        if old is not None:
            if old.ts > env.ts:
                return False  # an older announcement arriving late
            if old.offer_id == offer_id:
                self._offers[key] = KnownOffer(old.offer_id, old.signer, env.ts, old.offer,
                                               now_ms)
                self._offers.move_to_end(key)
                return False  # the same offer re-announced: still live
        elif sum(1 for s, _ in self._offers if s == env.signer) >= self.per_developer:
            return False
        if old is not None:
            self._by_id.pop(old.offer_id, None)  # superseded
        self._offers[key] = KnownOffer(offer_id, env.signer, env.ts, body, now_ms)
        self._by_id[offer_id] = key
        self._offers.move_to_end(key)
        while len(self._offers) > self.capacity:
            _, dropped = self._offers.popitem(last=False)
            self._by_id.pop(dropped.offer_id, None)
        return True

    def _withdraw(self, signer: bytes, name: str, ts: int) -> bool:
        key = (signer, name)
        self._withdrawn[key] = max(ts, self._withdrawn.get(key, -1))
        self._withdrawn.move_to_end(key)
        while len(self._withdrawn) > self.capacity:
            self._withdrawn.popitem(last=False)
        old = self._offers.get(key)
        if old is not None and old.ts <= ts:
            del self._offers[key]
            self._by_id.pop(old.offer_id, None)
            return True
        return False

    def get(self, offer_id: bytes, now_ms: int) -> KnownOffer | None:
        """The live offer with this id, or None (without a look at the others)."""
        key = self._by_id.get(offer_id)
        offer = self._offers.get(key) if key is not None else None
        if offer is None or offer.offer_id != offer_id or now_ms - offer.seen_ms > self.ttl_ms:
            return None
        return offer

    def live(self, now_ms: int) -> list[KnownOffer]:
        """Offers announced within the last ``ttl_ms``, newest first."""
        return sorted((o for o in self._offers.values() if now_ms - o.seen_ms <= self.ttl_ms),
                      key=lambda o: o.ts, reverse=True)

    def find(self, ref: str, now_ms: int) -> KnownOffer | None:
        """An offer by id (hex, or a unique prefix of at least 8 hex digits), by
        ``name@key-prefix``, or by a name only one developer offers. AmbiguousOffer when
        the name is offered by several; None when nothing matches."""
        ref = ref.strip()
        if len(ref) == 64:  # a whole offer id: no need to look at the others
            try:
                offer = self.get(bytes.fromhex(ref), now_ms)
            except ValueError:
                offer = None
            if offer is not None:
                return offer
        live = self.live(now_ms)
        if len(ref) >= 8 and all(c in "0123456789abcdef" for c in ref.lower()):
            hits = [o for o in live if o.offer_id.hex().startswith(ref.lower())]
            if len(hits) == 1:
                return hits[0]
        name, _, key_prefix = ref.partition("@")
        hits = [o for o in live if o.offer.name == name
                and (not key_prefix or o.developer.endswith(key_prefix)
                     or o.developer.startswith(key_prefix))]
        if len(hits) > 1:
            raise AmbiguousOffer(name, sorted(o.label for o in hits))
        return hits[0] if hits else None

    def __len__(self) -> int:
        return len(self._offers)
