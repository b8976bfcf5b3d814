"""The network genesis: name, founder, creation time, initial allocations, signed.

On disk it is JSON (readable, hex for bytes). Its identity is canonical: the
network id is SHA-256 of the canonical CBOR of the signed document, so the same
genesis gives the same id on every node, whatever JSON spacing the file uses.
"""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import dataclass

from nacl.exceptions import BadSignatureError, CryptoError
from nacl.signing import SigningKey, VerifyKey

from . import _cbor
from ._errors import WireError

GENESIS_VERSION = 1
MAX_GENESIS_BYTES = 1024 * 1024
MAX_ALLOCS = 10_000


@dataclass(frozen=True, slots=True)
class Alloc:
    key: bytes
    amount: int


@functools.lru_cache(maxsize=64)
def _network_id(genesis: Genesis) -> bytes:
    return hashlib.sha256(_cbor.encode({**genesis._unsigned(), "sig": genesis.sig})).digest()


@dataclass(frozen=True, slots=True)
class Genesis:
    """A signed genesis document. ``network_id`` is what every envelope's ``net`` must equal."""

    name: str
    founder: bytes
    created: int
    alloc: tuple[Alloc, ...]
    sig: bytes

    def _unsigned(self) -> dict:
        return {
            "v": GENESIS_VERSION,
            "name": self.name,
            "founder": self.founder,
            "created": self.created,
            "alloc": [{"key": a.key, "amount": a.amount} for a in self.alloc],
        }

    @property
    def network_id(self) -> bytes:
        """SHA-256 of the signed document's canonical CBOR (computed once per document:
        every envelope check asks for it)."""
        return _network_id(self)

    @property
    def total_supply(self) -> int:
        return sum(a.amount for a in self.alloc)

    def to_json(self) -> str:
        return json.dumps({
            "v": GENESIS_VERSION,
            "name": self.name,
            "founder": self.founder.hex(),
            "created": self.created,
            "alloc": [{"key": a.key.hex(), "amount": a.amount} for a in self.alloc],
            "sig": self.sig.hex(),
            "network_id": self.network_id.hex(),
        }, indent=2) + "\n"


def make_genesis(name: str, founder: SigningKey, created: int,
                 alloc: list[tuple[bytes, int]]) -> Genesis:
    """Create and sign a genesis; the same key may appear only once in ``alloc``."""
    _check_fields(name, created, alloc)
    draft = Genesis(name=name, founder=bytes(founder.verify_key), created=created,
                    alloc=tuple(Alloc(k, a) for k, a in alloc), sig=b"\0" * 64)
    sig = founder.sign(_cbor.encode(draft._unsigned())).signature
    return Genesis(draft.name, draft.founder, draft.created, draft.alloc, sig)


def _check_fields(name: str, created: int, alloc: list[tuple[bytes, int]]) -> None:
    try:  # the cap counts UTF-8 bytes, as every text cap (CDDL .size) does
        name_size = len(name.encode("utf-8")) if isinstance(name, str) else 0
    except UnicodeEncodeError:  # a lone surrogate (JSON "\ud800"): not text CBOR can carry
        name_size = 0
    if not 0 < name_size <= 128:
        raise WireError("malformed", "genesis name must be 1..128 bytes of UTF-8 text")
    if isinstance(created, bool) or not isinstance(created, int) or created < 0:
        raise WireError("malformed", "genesis created must be a non-negative integer (ms)")
    if len(alloc) > MAX_ALLOCS:
        raise WireError("malformed", f"genesis has more than {MAX_ALLOCS} allocations")
    seen: set[bytes] = set()
    for key, amount in alloc:
        if not isinstance(key, bytes) or len(key) != 32:
            raise WireError("malformed", "genesis alloc key must be a 32-byte Ed25519 key")
        if isinstance(amount, bool) or not isinstance(amount, int) or not 0 < amount < 2**63:
            raise WireError("malformed", "genesis alloc amount must be a positive 63-bit integer")
        if key in seen:
            raise WireError("malformed", f"genesis allocates to key {key.hex()} twice")
        seen.add(key)
    if sum(amount for _key, amount in alloc) >= 2**63:
        raise WireError("malformed", "genesis total supply must stay below 2**63")


def genesis_from_json(text: str | bytes) -> Genesis:
    """Parse and verify a genesis file; raises ``WireError`` saying what is wrong."""
    if len(text) > MAX_GENESIS_BYTES:
        raise WireError("oversize", f"genesis file larger than {MAX_GENESIS_BYTES} bytes")
    try:
        doc = json.loads(text)
        if not isinstance(doc, dict):
            raise ValueError("top level must be an object")
        if type(doc.get("v")) is not int or doc["v"] != GENESIS_VERSION:  # not true, not 1.0
            raise WireError("unsupported_version", f"genesis version {doc.get('v')!r}")
        alloc = [(bytes.fromhex(a["key"]), a["amount"]) for a in doc["alloc"]]
        name, created = doc["name"], doc["created"]
        founder, sig = bytes.fromhex(doc["founder"]), bytes.fromhex(doc["sig"])
    except WireError:
        raise
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as exc:
        raise WireError("malformed", f"genesis file is not valid: {exc}") from None
    _check_fields(name, created, alloc)
    if len(founder) != 32 or len(sig) != 64:
        raise WireError("malformed", "genesis founder must be 32 bytes and sig 64 bytes")
    g = Genesis(name, founder, created, tuple(Alloc(k, a) for k, a in alloc), sig)
    try:
        VerifyKey(founder).verify(_cbor.encode(g._unsigned()), sig)
    except (BadSignatureError, CryptoError, ValueError):
        raise WireError("bad_signature", "genesis signature does not match its founder") from None
    claimed = doc.get("network_id")
    if claimed is not None and claimed != g.network_id.hex():
        raise WireError("malformed", "genesis network_id does not match its contents")
    return g
