"""Pure, synchronous logic: identity, the gossip gate, replay and rate limits, peer book.

Nothing here does I/O or reads a clock: callers pass ``now_ms`` and random bytes.
"""

from meca_node.core.gate import DROP_REASONS, GateConfig, GateStats, GossipGate, Verdict
from meca_node.core.identity import Identity, peer_id_of, public_key_of_peer_id
from meca_node.core.offers import AmbiguousOffer, KnownOffer, OfferBook, offer_id_of
from meca_node.core.peerbook import AdvertSeen, PeerBook
from meca_node.core.ratelimit import SignerRateLimiter
from meca_node.core.replay import ReplayWindow

__all__ = [
    "AdvertSeen", "AmbiguousOffer", "DROP_REASONS", "GateConfig", "GateStats", "GossipGate", "Identity",
    "KnownOffer", "OfferBook", "PeerBook", "ReplayWindow", "SignerRateLimiter", "Verdict", "offer_id_of", "peer_id_of",
    "public_key_of_peer_id",
]
