"""Content identifiers (CIDv0 and CIDv1) for the blocks we store and exchange.

Only what IPFS files use: the ``raw`` and ``dag-pb`` codecs and the sha2-256 hash. A CID
of any other codec or hash is a :class:`CidError` that names it, never a guess.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass

import base58

from meca_node.ipfs.pb import PbError, read_varint, varint

RAW = 0x55
DAG_PB = 0x70
SHA2_256 = 0x12
DIGEST_LEN = 32
CODECS = {RAW: "raw", DAG_PB: "dag-pb"}
_MULTIHASH_PREFIX = bytes([SHA2_256, DIGEST_LEN])


class CidError(ValueError):
    """Not a CID we can use: the message says which part and why."""


class CidUnsupported(CidError):
    """A well-formed CID of a version, codec or hash this node does not store."""


@dataclass(frozen=True, order=True)
class CID:
    version: int
    codec: int
    digest: bytes  # the sha2-256 of the block

    def __post_init__(self) -> None:
        if self.version not in (0, 1):
            raise CidUnsupported(f"CID version {self.version} is not 0 or 1")
        if self.codec not in CODECS:
            raise CidUnsupported(f"codec 0x{self.codec:x} is not supported (only raw 0x55 and "
                           "dag-pb 0x70)")
        if self.version == 0 and self.codec != DAG_PB:
            raise CidError("a CIDv0 is always dag-pb")
        if len(self.digest) != DIGEST_LEN:
            raise CidError(f"a sha2-256 digest has 32 bytes, not {len(self.digest)}")

    # -- making ---------------------------------------------------------------------------
    @classmethod
    def of(cls, block: bytes, codec: int, version: int = 1) -> CID:
        return cls(version, codec, hashlib.sha256(block).digest())

    @classmethod
    def decode(cls, data: bytes) -> CID:
        """A CID from its binary form."""
        data = bytes(data)
        if len(data) == 34 and data[:2] == _MULTIHASH_PREFIX:
            return cls(0, DAG_PB, data[2:])
        try:
            version, pos = read_varint(data)
            if version != 1:
                raise CidUnsupported(f"CID version {version} is not 0 or 1")
            codec, pos = read_varint(data, pos)
            digest, pos = _read_multihash(data, pos)
        except PbError as exc:
            raise CidError(f"malformed CID bytes: {exc}") from None
        if pos != len(data):
            raise CidError(f"{len(data) - pos} bytes after the CID")
        return cls(1, codec, digest)

    @classmethod
    def parse(cls, text: str) -> CID:
        """A CID from its string form: base58btc CIDv0 (Qm...) or base32 CIDv1 (b...)."""
        text = text.strip()
        if len(text) == 46 and text.startswith("Qm"):
            try:
                return cls.decode(base58.b58decode(text))
            except ValueError as exc:
                raise CidError(f"{text!r} is not a CIDv0: {exc}") from None
        if text[:1] in ("b", "B") and len(text) > 1:
            body = text[1:].upper()
            try:
                raw = base64.b32decode(body + "=" * (-len(body) % 8))
            except ValueError:
                raise CidError(f"{text!r} is not base32") from None
            return cls._decode_multibase(text, raw)
        if text[:1] == "z" and len(text) > 1:
            try:
                raw = base58.b58decode(text[1:])
            except ValueError:
                raise CidError(f"{text!r} is not base58btc") from None
            return cls._decode_multibase(text, raw)
        raise CidError(f"{text!r} is not a CID this node reads (Qm... or b..., "
                       "e.g. from `meca-node ipfs add`)")

    @classmethod
    def _decode_multibase(cls, text: str, raw: bytes) -> CID:
        if raw[:1] == bytes([SHA2_256]):  # the CID spec: a CIDv0 is never multibase
            raise CidError(f"{text!r} is a CIDv0 in multibase form; write it as Qm...")
        return cls.decode(raw)

    @classmethod
    def from_prefix(cls, prefix: bytes, block: bytes) -> CID:
        """The CID of ``block`` under a Bitswap block prefix (version, codec, hash, length)."""
        try:
            version, pos = read_varint(prefix)
            codec, pos = read_varint(prefix, pos)
            mh_code, pos = read_varint(prefix, pos)
            mh_len, pos = read_varint(prefix, pos)
        except PbError as exc:
            raise CidError(f"malformed block prefix: {exc}") from None
        if pos != len(prefix):
            raise CidError("bytes after the block prefix")
        if mh_code != SHA2_256 or mh_len != DIGEST_LEN:
            raise CidUnsupported(f"hash 0x{mh_code:x} length {mh_len} is not supported "
                           "(only sha2-256)")
        return cls.of(block, codec, version)

    # -- forms ----------------------------------------------------------------------------
    @property
    def multihash(self) -> bytes:
        return _MULTIHASH_PREFIX + self.digest

    def __bytes__(self) -> bytes:
        if self.version == 0:
            return self.multihash
        return varint(1) + varint(self.codec) + self.multihash

    @property
    def prefix(self) -> bytes:
        """The Bitswap 1.1+ block prefix: version, codec, hash code, digest length."""
        return varint(self.version) + varint(self.codec) + varint(SHA2_256) + varint(32)

    def __str__(self) -> str:
        if self.version == 0:
            return base58.b58encode(self.multihash).decode()
        return "b" + base64.b32encode(bytes(self)).decode().lower().rstrip("=")

    def __repr__(self) -> str:
        return f"CID({self})"

    def verify(self, block: bytes) -> bool:
        return hashlib.sha256(block).digest() == self.digest


def _read_multihash(data: bytes, pos: int) -> tuple[bytes, int]:
    code, pos = read_varint(data, pos)
    length, pos = read_varint(data, pos)
    if code != SHA2_256:
        raise CidUnsupported(f"hash function 0x{code:x} is not supported (only sha2-256 0x12)")
    if length != DIGEST_LEN:
        raise CidError(f"sha2-256 digest of {length} bytes (need 32)")
    if pos + length > len(data):
        raise CidError(f"CID truncated: its digest has {len(data) - pos} of 32 bytes")
    return data[pos:pos + length], pos + length
