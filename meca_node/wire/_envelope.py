"""The signed envelope every message travels in.

``{v, net, type, signer, ts, nonce, body, sig}`` in canonical CBOR; ``sig`` is the
Ed25519 signature by ``signer`` over the canonical CBOR of the same map without
``sig``. ``type`` is a versioned id such as ``"HostAdvert/1"``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from nacl.exceptions import BadSignatureError, CryptoError
from nacl.signing import SigningKey, VerifyKey

from . import _cbor
from ._errors import WireError
from ._messages import BODY_TYPES
from ._schema import from_obj, to_obj

ENVELOPE_VERSION = 1
BODY_VERSION = 1
_KEYS = frozenset({"v", "net", "type", "signer", "ts", "nonce", "body", "sig"})
_BY_NAME: dict[str, type] = {cls.TYPE: cls for cls in BODY_TYPES}  # type: ignore[attr-defined]


def type_id(body_cls: type) -> str:
    """The versioned type id of a message class, e.g. ``"HostAdvert/1"``."""
    return f"{body_cls.TYPE}/{BODY_VERSION}"  # type: ignore[attr-defined]


@dataclass(frozen=True, slots=True)
class Envelope:
    """A decoded, signature-checked envelope. ``raw`` is the exact bytes received."""

    v: int
    net: bytes
    type: str
    signer: bytes
    ts: int
    nonce: bytes
    body: Any
    sig: bytes
    raw: bytes

    @property
    def kind(self) -> str:
        """The message name without its version, e.g. ``"HostAdvert"``."""
        return self.type.split("/", 1)[0]


def seal(body: Any, *, key: SigningKey, net: bytes, ts: int, nonce: bytes) -> bytes:
    """Sign ``body`` into an envelope and return its canonical bytes."""
    if len(net) != 32 or len(nonce) != 16:
        raise ValueError("net must be 32 bytes and nonce 16 bytes")
    if isinstance(ts, bool) or not isinstance(ts, int) or not 0 <= ts < 2**63:
        raise ValueError("ts must be a non-negative integer (ms since the epoch)")
    # what every receiver would refuse (over a cap, say) is refused here, before signing
    from_obj(type(body), to_obj(body))
    unsigned = {
        "v": ENVELOPE_VERSION,
        "net": net,
        "type": type_id(type(body)),
        "signer": bytes(key.verify_key),
        "ts": ts,
        "nonce": nonce,
        "body": to_obj(body),
    }
    sig = key.sign(_cbor.encode(unsigned)).signature
    return _cbor.encode({**unsigned, "sig": sig})


def open_envelope(data: bytes, *, max_size: int) -> Envelope:
    """Decode and verify an envelope; raises ``WireError`` whose ``reason`` is one of
    ``oversize``, ``malformed``, ``unsupported_version``, ``unknown_type``, ``bad_signature``.
    """
    if len(data) > max_size:
        raise WireError("oversize", f"{len(data)} bytes > cap {max_size}")
    obj = _cbor.decode(data)
    if not isinstance(obj, dict):
        raise WireError("malformed", "envelope must be a map")
    # ``type(...) is not int``: CBOR true decodes to Python True, which equals 1
    if "v" in obj and (type(obj["v"]) is not int or obj["v"] != ENVELOPE_VERSION):
        raise WireError("unsupported_version",
                        f"envelope version {obj['v']!r}; this node speaks {ENVELOPE_VERSION}")
    if set(obj) != _KEYS:
        raise WireError("malformed", f"envelope keys must be {sorted(_KEYS)}")
    net, signer, nonce, sig, ts, tid = (obj["net"], obj["signer"], obj["nonce"], obj["sig"],
                                        obj["ts"], obj["type"])
    for name, value, size in (("net", net, 32), ("signer", signer, 32), ("nonce", nonce, 16),
                              ("sig", sig, 64)):
        if not isinstance(value, bytes) or len(value) != size:
            raise WireError("malformed", f"envelope.{name} must be {size} bytes")
    if isinstance(ts, bool) or not isinstance(ts, int) or ts < 0:
        raise WireError("malformed", "envelope.ts must be a non-negative integer")
    if not isinstance(tid, str) or tid.count("/") != 1:
        raise WireError("malformed", "envelope.type must look like 'Name/VERSION'")
    name, version = tid.split("/")
    body_cls = _BY_NAME.get(name)
    if body_cls is None:
        raise WireError("unknown_type", f"message type {name!r} is not known to this node")
    if version != str(BODY_VERSION):
        raise WireError("unsupported_version",
                        f"{name} version {version!r}; this node speaks {BODY_VERSION}")
    unsigned = {k: v for k, v in obj.items() if k != "sig"}
    try:
        VerifyKey(signer).verify(_cbor.encode(unsigned), sig)
    except (BadSignatureError, CryptoError, ValueError):
        raise WireError("bad_signature", "signature does not match signer") from None
    body = from_obj(body_cls, obj["body"])
    return Envelope(v=ENVELOPE_VERSION, net=net, type=tid, signer=signer, ts=ts, nonce=nonce,
                    body=body, sig=sig, raw=bytes(data))


def decode_body(body_cls: type, data: bytes) -> Any:
    """Decode a bare body (no envelope) of ``body_cls`` from canonical CBOR."""
    return from_obj(body_cls, _cbor.decode(data))


def encode_body(body: Any) -> bytes:
    """Canonical CBOR of a bare body."""
    return _cbor.encode(to_obj(body))
