"""Node identity: one Ed25519 key signs our messages and is our libp2p peer id.

The peer id is computed here (pure) the way libp2p does for Ed25519 keys: the
identity multihash of the protobuf-encoded public key, in base58btc.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property, lru_cache

from nacl.signing import SigningKey

_B58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
# protobuf PublicKey{Type: Ed25519 (1), Data: <32 bytes>}
_ED25519_PB_PREFIX = b"\x08\x01\x12\x20"
# multihash: identity (0x00), length 36
_IDENTITY_MH_PREFIX = b"\x00\x24"


def b58encode(data: bytes) -> str:
    """Bitcoin-alphabet base58 (as used by libp2p peer ids)."""
    n = int.from_bytes(data, "big")
    out = []
    while n:
        n, r = divmod(n, 58)
        out.append(_B58[r])
    pad = len(data) - len(data.lstrip(b"\0"))
    return "1" * pad + "".join(reversed(out))


def b58decode(text: str) -> bytes:
    n = 0
    for ch in text:
        idx = _B58.find(ch)
        if idx < 0:
            raise ValueError(f"not base58: {ch!r}")
        n = n * 58 + idx
    pad = len(text) - len(text.lstrip("1"))
    body = n.to_bytes((n.bit_length() + 7) // 8, "big") if n else b""
    return b"\0" * pad + body


def peer_id_of(public_key: bytes) -> str:
    """The libp2p peer id (base58) of a 32-byte Ed25519 public key."""
    return _peer_id_of(bytes(public_key))


@lru_cache(maxsize=4096)  # per job and per message: base58 is slow in Python
def _peer_id_of(public_key: bytes) -> str:
    if len(public_key) != 32:
        raise ValueError("an Ed25519 public key is 32 bytes")
    return b58encode(_IDENTITY_MH_PREFIX + _ED25519_PB_PREFIX + public_key)


@lru_cache(maxsize=4096)
def public_key_of_peer_id(peer_id: str) -> bytes:
    """The Ed25519 key inside a peer id; ``ValueError`` if it is not an Ed25519 peer id."""
    raw = b58decode(peer_id)
    prefix = _IDENTITY_MH_PREFIX + _ED25519_PB_PREFIX
    if len(raw) != len(prefix) + 32 or not raw.startswith(prefix):
        raise ValueError(f"{peer_id} is not an Ed25519 peer id")
    return raw[len(prefix):]


@dataclass(frozen=True)
class Identity:
    """The node's key. ``seed`` is the 32-byte Ed25519 private seed."""

    seed: bytes

    def __post_init__(self) -> None:
        if len(self.seed) != 32:
            raise ValueError("an Ed25519 seed is 32 bytes")

    # cached: every message the node sends is signed (deriving the key from the seed cost
    # about 20 us each time) and the public key and peer id are looked up per job
    @cached_property
    def signing_key(self) -> SigningKey:
        return SigningKey(self.seed)

    @cached_property
    def public_key(self) -> bytes:
        return bytes(self.signing_key.verify_key)

    @cached_property
    def peer_id(self) -> str:
        return peer_id_of(self.public_key)
