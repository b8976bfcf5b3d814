"""Fuzzing every wire decoder with random and mutated input (hypothesis drives the seeds).

Property, for every decoder: the only exception is ``wire.WireError`` (the gossip gate
returns a ``Verdict`` and never raises), and whatever is accepted re-encodes canonically
to exactly the input bytes.

Each hypothesis example draws one seed and runs a batch of inputs from
``random.Random(seed)``: valid messages of every type, mutated byte-wise (bit flips, byte
changes, inserts, deletes, truncation, splices between messages, CBOR-significant bytes)
and structurally (a value anywhere in the decoded map replaced, dropped or added, then
re-encoded, and for envelopes often re-signed so the body schema is reached), random
CBOR items (canonical or not) and random bytes. ``derandomize=True`` makes every run feed
the same inputs. Each test asserts how many inputs it fed (``PER_DECODER``: 10^5 each to
``open_envelope``, ``GossipGate.check``, ``cbor_decode`` and ``genesis_from_json``;
``PER_BODY_CLASS``: 10^4 to ``decode_body`` per class, 10^5 in all) and that the decoder
was driven into each of its outcomes, so a fuzz that only bounces off the first check
fails. ``cbor_decode`` is also checked against an independent reference of canonical CBOR
written from RFC 8949 (accepts exactly what the reference accepts), and must refuse
everything the reference refuses, except an integer below -2^63, from the raw bytes before
``cbor2.loads`` runs (a spy counts its calls).

More inputs: ``MECA_FUZZ_INPUTS=1000000 MECA_FUZZ_BODY_INPUTS=100000 pytest ...``.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import random
import typing
from collections import Counter
from collections.abc import Callable
from typing import Any

import cbor2
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from nacl.signing import SigningKey

from meca_node import wire
from meca_node.core.gate import DROP_REASONS, GateConfig, GossipGate
from meca_node.wire import _cbor

#: inputs fed to open_envelope, GossipGate.check, cbor_decode and genesis_from_json each
PER_DECODER = int(os.environ.get("MECA_FUZZ_INPUTS", "100000"))
#: inputs fed to decode_body per body class (13 classes: 1.3 x 10^5 decode_body calls in all);
#: 10^5 per class takes about 80 s more CPU on a 2-core CI box, so it is opt-in
PER_BODY_CLASS = int(os.environ.get("MECA_FUZZ_BODY_INPUTS", "10000"))
BATCH = 250
EXAMPLES = max(1, -(-PER_DECODER // BATCH))
BODY_EXAMPLES = max(1, -(-PER_BODY_CLASS // BATCH))

NOW = 1_700_000_000_000
KEYS = [SigningKey(bytes([i]) * 32) for i in (1, 2, 3)]
KEY_BY_PUB = {bytes(k.verify_key): k for k in KEYS}
GENESIS = wire.make_genesis("fuzz", KEYS[2], NOW - 10**6,
                            [(bytes(k.verify_key), 10**6 + i) for i, k in enumerate(KEYS)])
NET = GENESIS.network_id
CFG = GateConfig(network_id=NET)
MAX = CFG.max_message
TOPICS = (*wire.TOPICS, "meca/adverts/2", "")
BODY_TYPES: tuple[type, ...] = wire.BODY_TYPES
TYPE_IDS = tuple(wire.type_id(c) for c in BODY_TYPES)
GOSSIP_TOPIC = {t: topic for topic, types in wire.TOPIC_TYPES.items() for t in types}
GOSSIP_TYPE_IDS = [(t, f"{t}/".encode()) for t in sorted(GOSSIP_TOPIC)]


def fuzz_settings(examples: int = EXAMPLES) -> settings:
    return settings(max_examples=examples, deadline=None, derandomize=True, database=None,
                    phases=[Phase.explicit, Phase.generate],
                    suppress_health_check=list(HealthCheck))


# -- random valid bodies (rng-driven, so a batch is cheap) ----------------------------------
EXACT = {"job_id": 16, "offer_id": 32, "example_input_sha256": 32, "example_output_sha256": 32,
         "result_sha256": 32, "prev": 32, "provider": 32, "developer": 32, "account": 32,
         "to": 32, "source": 32, "payer": 32}
ENUMS = {"reason": sorted(wire.JOB_REJECT_REASONS), "stage": sorted(wire.JOB_STAGES),
         "kind": sorted(wire.FRAUD_KINDS), "roles": sorted(wire.ROLES)}
CHARS = "aZ09 -_/.:é世🙂\x00\n\"\\"
INTS = (0, 1, 23, 24, 255, 256, 65535, 65536, 2**32 - 1, 2**32, 2**63 - 1, 2**63, 2**64 - 1)


def rand_text(rng: random.Random, cap: int) -> str:
    """Random text of at most ``cap`` UTF-8 bytes (text caps count bytes); one in ten is
    filled right up to the cap."""
    r = rng.random()
    n = 0 if r < 0.1 else rng.randrange(1, 12) if r < 0.6 else rng.randrange(
        0, min(cap, 64) + 1) if r < 0.9 else rng.randrange(0, min(cap, 300) + 1)
    text = "".join(rng.choices(CHARS, k=min(n, cap)))
    size = len(text.encode())
    while size > cap:
        size -= len(text[-1].encode())
        text = text[:-1]
    return text


def rand_int(rng: random.Random) -> int:
    return rng.choice(INTS) if rng.random() < 0.3 else rng.randrange(0, 10 ** rng.randrange(1, 12))


def rand_value(rng: random.Random, tp: Any, name: str, cap: int | None) -> Any:
    if typing.get_origin(tp) is tuple:
        item = typing.get_args(tp)[0]
        n = rng.randrange(0, min(cap or 256, 4) + 1)
        if name == "roles":
            return tuple(rng.sample(ENUMS["roles"], min(n, 3)))
        n = max(n, 1) if name in ("commits", "entries") else n  # never empty
        return tuple(rand_value(rng, item, "", None) for _ in range(n))
    if dataclasses.is_dataclass(tp):
        return rand_body(rng, tp)
    if tp is int:
        if name == "percent":
            return rng.randrange(0, 101)
        if name == "count":
            return rng.randrange(1, wire.MAX_ENTRY_REQUEST + 1)
        if name == "replicas":
            return rng.randrange(1, wire.MAX_REPLICAS + 1)
        return rand_int(rng)
    if tp is bytes:
        if name in EXACT:
            return rng.randbytes(EXACT[name])
        return rng.randbytes(rng.randrange(0, min(cap or 1024, 600) + 1) if rng.random() < .7
                             else rng.randrange(2))
    if tp is str:
        if name in ENUMS:
            return rng.choice(ENUMS[name])
        return rand_text(rng, cap or 1024)
    raise AssertionError(tp)


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def rand_body(rng: random.Random, cls: type) -> Any:
    hints = _hints(cls)
    kw = {f.name: rand_value(rng, hints[f.name], f.name, f.metadata.get("max"))
          for f in dataclasses.fields(cls)}
    if cls in (wire.TaskOffer, wire.TaskWithdraw) and not kw["name"]:
        kw["name"] = "t"
    if cls in (wire.Transfer, wire.Receive) and not kw["amount"]:
        kw["amount"] = 1
    for data, ref in (("output", "output_cid"), ("input", "input_cid")):
        if data in kw and kw[data] and kw[ref]:  # exclusive: keep one of them
            if rng.random() < 0.5:
                kw[data] = b""
            else:
                kw[ref] = ""
    return cls(**kw)


def seal(rng: random.Random, body: Any) -> bytes:
    ts = NOW + rng.choice((0, 0, 0, -1000, 1000, -CFG.skew_ms, CFG.skew_ms + 1,
                           rng.randrange(-10**6, 10**6)))
    return wire.seal(body, key=rng.choice(KEYS), net=NET if rng.random() < 0.95 else
                     rng.randbytes(32), ts=max(ts, 0), nonce=rng.randbytes(16))


_corpus_rng = random.Random(20240601)
CORPUS_BODIES = [rand_body(_corpus_rng, cls) for cls in BODY_TYPES for _ in range(6)]
BODY_BYTES = {cls: [wire.encode_body(b) for b in CORPUS_BODIES if type(b) is cls]
              for cls in BODY_TYPES}
ALL_BODY_BYTES = [b for bs in BODY_BYTES.values() for b in bs]
BODY_OBJS = {cls: [cbor2.loads(b) for b in bs] for cls, bs in BODY_BYTES.items()}
ALL_BODY_OBJS = [o for os_ in BODY_OBJS.values() for o in os_]
ENVELOPES = [seal(_corpus_rng, b) for b in CORPUS_BODIES]
ENVELOPES = [e for e in ENVELOPES if len(e) <= MAX]
ENV_OBJS = [wire.cbor_decode(e) for e in ENVELOPES]
POOL = ENVELOPES + ALL_BODY_BYTES


# -- byte-level mutation --------------------------------------------------------------------
INTERESTING = bytes([0x00, 0x17, 0x18, 0x19, 0x1a, 0x1b, 0x1c, 0x1f, 0x20, 0x38, 0x3b, 0x40,
                     0x58, 0x5b, 0x5f, 0x60, 0x78, 0x7b, 0x7f, 0x80, 0x98, 0x9b, 0x9f, 0xa0,
                     0xb8, 0xbb, 0xbf, 0xc0, 0xc1, 0xc2, 0xc3, 0xc4, 0xc5, 0xd8, 0xd9, 0xf4,
                     0xf5, 0xf6, 0xf7, 0xf8, 0xf9, 0xfa, 0xfb, 0xff])


def mutate_bytes(rng: random.Random, data: bytes, pool: list[bytes] = POOL) -> bytes:
    b = bytearray(data)
    for _ in range(rng.choice((1, 1, 1, 1, 2, 2, 3, 6))):
        n = len(b)
        op = rng.randrange(12)
        if op == 0 and n:                        # bit flip
            b[rng.randrange(n)] ^= 1 << rng.randrange(8)
        elif op == 1 and n:                      # random byte
            b[rng.randrange(n)] = rng.randrange(256)
        elif op == 2:                            # insert
            pos = rng.randrange(n + 1)
            b[pos:pos] = rng.randbytes(rng.randrange(1, 9))
        elif op == 3 and n:                      # delete
            pos = rng.randrange(n)
            del b[pos:pos + rng.randrange(1, 9)]
        elif op == 4:                            # truncate
            del b[rng.randrange(n + 1):]
        elif op == 5:                            # splice with another message
            other = rng.choice(pool)
            b = b[:rng.randrange(n + 1)] + other[rng.randrange(len(other) + 1):]
        elif op == 6 and n:                      # a CBOR-significant byte
            b[rng.randrange(n)] = rng.choice(INTERESTING)
        elif op == 7 and n:                      # duplicate a slice
            i = rng.randrange(n)
            j = min(n, i + rng.randrange(1, 64))
            b[j:j] = b[i:j]
        elif op == 8:                            # append
            r = rng.random()
            b += b"\x00" if r < .25 else b"\xff" if r < .5 else rng.choice(pool) if r < .75 \
                else rng.randbytes(rng.randrange(1, 16))
        elif op == 9 and n:                      # length/argument off by one
            i = rng.randrange(n)
            b[i] = (b[i] + rng.choice((-1, 1))) % 256
        elif op == 10 and n > 2:                 # reverse a short slice
            i = rng.randrange(n - 1)
            j = min(n, i + rng.randrange(2, 9))
            b[i:j] = b[i:j][::-1]
        elif op == 11:                           # concatenate two messages
            b = bytearray(rng.choice(pool)) + b if rng.random() < .5 else b + rng.choice(pool)
    return bytes(b)


# -- random CBOR: raw (any encoding, canonical or not) and as values ------------------------
def raw_head(rng: random.Random, major: int, n: int) -> bytes:
    shortest = 0 if n < 24 else 1 if n < 2**8 else 2 if n < 2**16 else 4 if n < 2**32 else 8
    width = shortest if rng.random() < 0.85 else rng.choice(
        [w for w in (0, 1, 2, 4, 8) if w >= shortest])
    if width == 0:
        return bytes([major << 5 | n])
    return bytes([major << 5 | {1: 24, 2: 25, 4: 26, 8: 27}[width]]) + n.to_bytes(width, "big")


def raw_item(rng: random.Random, depth: int = 0) -> bytes:
    r = rng.random()
    if depth > 18 or r < 0.25:
        n = rng.choice(INTS) if rng.random() < .5 else rng.randrange(0, 1000)
        return raw_head(rng, rng.choice((0, 1)), n)
    if r < 0.40:
        raw = rng.randbytes(rng.randrange(0, 40))
        if rng.random() < 0.05:
            return bytes([0x5f]) + raw_head(rng, 2, len(raw)) + raw + b"\xff"
        return raw_head(rng, 2, len(raw)) + raw
    if r < 0.55:
        raw = rand_text(rng, 20).encode() if rng.random() < .95 else rng.randbytes(5)
        if rng.random() < 0.05:
            return bytes([0x7f]) + raw_head(rng, 3, len(raw)) + raw + b"\xff"
        return raw_head(rng, 3, len(raw)) + raw
    if r < 0.70:
        items = [raw_item(rng, depth + 1) for _ in range(rng.randrange(0, 5))]
        if rng.random() < 0.05:
            return b"\x9f" + b"".join(items) + b"\xff"
        return raw_head(rng, 4, len(items)) + b"".join(items)
    if r < 0.85:
        keys = sorted({wire.cbor_encode(rand_text(rng, 6)) for _ in range(rng.randrange(0, 5))})
        if rng.random() < 0.15:
            rng.shuffle(keys)
        if rng.random() < 0.05:
            keys.append(raw_item(rng, depth + 1))  # any key type, maybe a duplicate
        body = b"".join(k + raw_item(rng, depth + 1) for k in keys)
        if rng.random() < 0.05:
            return b"\xbf" + body + b"\xff"
        return raw_head(rng, 5, len(keys)) + body
    if r < 0.90:
        return raw_head(rng, 6, rng.choice((0, 1, 2, 3, 4, 5, 24, 32, 258, 55799,
                                            rng.randrange(0, 2**16)))) + raw_item(rng, depth + 1)
    return rng.choice((b"\xf4", b"\xf5", b"\xf6", b"\xf7", b"\xf0", b"\xf8\x20",
                       b"\xf9\x3c\x00", b"\xfa\x3f\x80\x00\x00", b"\xfb" + rng.randbytes(8),
                       b"\xff", b"\x1c", b"\x5c"))


LEAVES: tuple[Callable[[random.Random], Any], ...] = (
    lambda r: r.choice(INTS), lambda r: -r.choice(INTS), lambda r: r.randrange(-5, 300),
    lambda r: r.choice((True, False, None)),
    lambda r: r.randbytes(r.choice((0, 15, 16, 17, 31, 32, 33, 64))),
    lambda r: rand_text(r, 40), lambda r: r.choice((2**64, -(2**63) - 1, 1.5)),
    lambda r: r.choice(ENUMS[r.choice(list(ENUMS))]), lambda r: r.choice(TYPE_IDS))


def rand_cbor_value(rng: random.Random, depth: int = 0) -> Any:
    r = rng.random()
    if depth > 2 or r < 0.65:
        return rng.choice(LEAVES)(rng)
    if r < 0.8:
        return [rand_cbor_value(rng, depth + 1) for _ in range(rng.randrange(0, 4))]
    out: dict = {rand_text(rng, 8): rand_cbor_value(rng, depth + 1)
                 for _ in range(rng.randrange(0, 4))}
    if rng.random() < 0.05:
        out[rng.choice((1, b"k"))] = 0
    return out


# -- structural mutation of decoded messages ------------------------------------------------
def mutate_obj(rng: random.Random, obj: Any) -> Any:
    """A copy of ``obj`` with one to three random edits somewhere inside it (the maps and
    lists along each edited path are copied; ``obj`` itself is never changed)."""
    for _ in range(rng.choice((1, 1, 2, 3))):
        obj = _edit(rng, obj, 0)
    return obj


# lengths at and just over the caps of messages.cddl (edits never grow without bound)
TEXT_LENS = (15, 16, 17, 31, 32, 33, 63, 64, 65, 127, 128, 129, 255, 256, 257, 1024, 1025,
             8192, 8193)
BYTES_LENS = (0, 15, 16, 17, 31, 32, 33, 63, 64, 65, 1024, 1025, 4096, 4097)
LIST_LENS = (3, 4, 16, 17, 64, 65, 256, 257)


EDITS: tuple[tuple[type, tuple[Callable[[random.Random, Any], Any], ...]], ...] = (
    (bool, (lambda r, n: not n, lambda r, n: 1, lambda r, n: 0, lambda r, n: None)),
    (int, (lambda r, n: n + 1, lambda r, n: n - 1, lambda r, n: -1, lambda r, n: -n,
           lambda r, n: 0, lambda r, n: 101, lambda r, n: 2**64 - 1, lambda r, n: 2**63,
           lambda r, n: 2**64, lambda r, n: str(n), lambda r, n: True,
           lambda r, n: n.to_bytes(8, "big", signed=True) if -2**63 <= n < 2**63 else b"")),
    (bytes, (lambda r, n: n[:-1], lambda r, n: n + b"\0", lambda r, n: b"",
             lambda r, n: n[: len(n) // 2], lambda r, n: n.hex(), lambda r, n: r.randbytes(len(n)),
             lambda r, n: bytes(r.choice(BYTES_LENS)))),
    (str, (lambda r, n: n + "x", lambda r, n: n[:-1], lambda r, n: "", lambda r, n: n.upper(),
           lambda r, n: n.encode(), lambda r, n: r.choice("xé世") * r.choice(TEXT_LENS),
           lambda r, n: r.choice(ENUMS[r.choice(list(ENUMS))]), lambda r, n: r.choice(TYPE_IDS),
           lambda r, n: n.replace("1", "2"))),
)


def _edit(rng: random.Random, node: Any, depth: int) -> Any:
    if isinstance(node, dict) and node and rng.random() < 0.7 and depth < 8:
        node = dict(node)
        key = rng.choice(list(node))
        r = rng.random()
        if r < 0.55:
            node[key] = _edit(rng, node[key], depth + 1)
        elif r < 0.7:
            del node[key]
        elif r < 0.8:
            new_key = rand_text(rng, 8) if rng.random() < .5 else rng.choice(
                (f"{key}_", "sig", "body", "v", "type", "job_id"))
            node[new_key] = rand_cbor_value(rng)
        else:
            node[key] = rand_cbor_value(rng)
        return node
    if isinstance(node, list) and node and rng.random() < 0.7 and depth < 8:
        node = list(node)
        i = rng.randrange(len(node))
        r = rng.random()
        if r < 0.6:
            node[i] = _edit(rng, node[i], depth + 1)
        elif r < 0.8:
            del node[i]
        elif len(node) < 300:  # to or over a list cap
            node.extend([node[0]] * max(0, rng.choice(LIST_LENS) - len(node)))
        return node
    for tp, edits in EDITS:
        if isinstance(node, tp):
            return rng.choice(edits)(rng, node)
    return rand_cbor_value(rng)


def resign(rng: random.Random, obj: Any) -> Any:
    """Sign a (mutated) envelope map again, so it gets past the signature check."""
    if not isinstance(obj, dict):
        return obj
    key = KEY_BY_PUB.get(obj.get("signer")) if isinstance(obj.get("signer"), bytes) else None
    if key is None or rng.random() < 0.1:
        key = rng.choice(KEYS)
        if "signer" in obj or rng.random() < 0.9:
            obj["signer"] = bytes(key.verify_key)
    unsigned = {k: v for k, v in obj.items() if k != "sig"}
    try:
        obj["sig"] = key.sign(cbor2.dumps(unsigned, canonical=True)).signature
    except Exception:  # noqa: BLE001 - values cbor2 itself cannot write; leave unsigned
        pass
    return obj


def dumps(rng: random.Random, obj: Any) -> bytes:
    try:
        return cbor2.dumps(obj, canonical=rng.random() < 0.9)
    except Exception:  # noqa: BLE001 - a value cbor2 cannot write: fall back to raw CBOR
        return raw_item(rng)


# -- input generators -----------------------------------------------------------------------
def envelope_input(rng: random.Random) -> bytes:
    r = rng.random()
    if r < 0.40:
        return mutate_bytes(rng, rng.choice(ENVELOPES))
    if r < 0.60:
        return dumps(rng, mutate_obj(rng, rng.choice(ENV_OBJS)))
    if r < 0.72:  # the mutated envelope signed again: reaches the body schema
        return dumps(rng, resign(rng, mutate_obj(rng, rng.choice(ENV_OBJS))))
    if r < 0.75:
        return seal(rng, rand_body(rng, rng.choice(BODY_TYPES)))  # valid (mostly)
    if r < 0.78:
        return rng.choice(ENVELOPES)  # valid (also replays, in the gate)
    if r < 0.85:
        return raw_item(rng)
    if r < 0.89:
        return rng.randbytes(rng.randrange(0, 300))
    if r < 0.92:  # a random body, envelope-wrapped and signed
        obj = dict(rng.choice(ENV_OBJS))
        obj["body"] = rand_cbor_value(rng) if rng.random() < .5 else \
            mutate_obj(rng, rng.choice(ALL_BODY_OBJS))
        obj["type"] = rng.choice(TYPE_IDS)
        return dumps(rng, resign(rng, obj))
    if r < 0.96:
        return mutate_bytes(rng, rng.choice(ENVELOPES), ENVELOPES)
    if r < 0.961:  # around the size cap: a validly signed HostAdvert of MAX-8 .. MAX+8 bytes
        return sized_envelope(rng, MAX + rng.randrange(-8, 9))
    return rng.choice(ENVELOPES) + rng.choice((b"", b"\x00", rng.choice(ENVELOPES)))


def sized_envelope(rng: random.Random, size: int) -> bytes:
    """A valid HostAdvert envelope of exactly ``size`` bytes: a random advert whose cached
    image names are 500 bytes each, the last one cut to fit (a FraudProof at its caps stays
    far below 64 KiB). The last name stays within 256..1024 bytes, where its head is 3 bytes
    whatever its length, so the loop always lands on ``size``."""
    key = rng.choice(KEYS)
    base = rand_body(rng, wire.HostAdvert)
    nonce = rng.randbytes(16)

    def sealed(images: tuple[str, ...]) -> bytes:
        return wire.seal(dataclasses.replace(base, cached_images=images), key=key, net=NET,
                         ts=NOW, nonce=nonce)

    images = ("i" * 500,) * ((size - len(sealed(("j" * 500,)))) // 503)
    n = 500
    while True:
        assert 256 <= n <= 1024, n
        data = sealed((*images, "j" * n))
        if len(data) == size:
            return data
        n += size - len(data)


def body_input(rng: random.Random, cls: type) -> bytes:
    r = rng.random()
    own = BODY_BYTES[cls]
    if r < 0.35:
        return mutate_bytes(rng, rng.choice(own), own + ALL_BODY_BYTES)
    if r < 0.70:
        return dumps(rng, mutate_obj(rng, rng.choice(BODY_OBJS[cls])))
    if r < 0.80:
        return wire.encode_body(rand_body(rng, cls))
    if r < 0.88:
        if rng.random() < .5:
            return rng.choice(ALL_BODY_BYTES)
        return dumps(rng, mutate_obj(rng, rng.choice(ALL_BODY_OBJS)))
    if r < 0.94:
        return raw_item(rng)
    if r < 0.97:
        return dumps(rng, rand_cbor_value(rng))
    return rng.randbytes(rng.randrange(0, 200))


def cbor_input(rng: random.Random) -> bytes:
    r = rng.random()
    if r < 0.45:
        return raw_item(rng)
    if r < 0.65:
        return mutate_bytes(rng, rng.choice(POOL))
    if r < 0.80:
        return dumps(rng, rand_cbor_value(rng))
    if r < 0.92:
        return mutate_bytes(rng, raw_item(rng), [raw_item(rng)])
    return rng.randbytes(rng.randrange(0, 64))


# -- checks: the property, per decoder ------------------------------------------------------
def _fail(decoder: str, data: Any, exc: BaseException) -> AssertionError:
    shown = data.hex() if isinstance(data, (bytes, bytearray)) else repr(data)
    return AssertionError(f"{decoder} raised {type(exc).__name__}: {exc} on input "
                          f"{shown[:2000]}{'...' if len(shown) > 2000 else ''}")


def reencode(env: wire.Envelope) -> bytes:
    """The envelope written again from its decoded fields by the canonical encoder."""
    return cbor2.dumps({
        "v": env.v, "net": env.net, "type": env.type, "signer": env.signer, "ts": env.ts,
        "nonce": env.nonce, "body": cbor2.loads(wire.encode_body(env.body)), "sig": env.sig,
    }, canonical=True)


def check_open(data: bytes, counts: Counter) -> None:
    counts["inputs"] += 1
    try:
        env = wire.open_envelope(data, max_size=MAX)
    except wire.WireError as exc:
        counts[exc.reason] += 1
        return
    except Exception as exc:  # noqa: BLE001
        raise _fail("open_envelope", data, exc) from exc
    counts["accepted"] += 1
    assert env.raw == data
    assert type(env.body) in BODY_TYPES and env.type == wire.type_id(type(env.body))
    assert reencode(env) == data


def check_body(cls: type, data: bytes, counts: Counter) -> None:
    counts["inputs"] += 1
    try:
        body = wire.decode_body(cls, data)
    except wire.WireError as exc:
        counts[exc.reason] += 1
        return
    except Exception as exc:  # noqa: BLE001
        raise _fail(f"decode_body({cls.__name__})", data, exc) from exc
    counts["accepted"] += 1
    assert type(body) is cls
    assert wire.encode_body(body) == data


def check_gate(gate: GossipGate, data: bytes, topic: str, now: int, counts: Counter) -> None:
    counts["inputs"] += 1
    try:
        verdict = gate.check(data, topic, now)
    except Exception as exc:  # noqa: BLE001 - the gate never raises
        raise _fail(f"GossipGate.check(topic={topic!r}, now={now})", data, exc) from exc
    if verdict.ok:
        counts["accepted"] += 1
        env = verdict.envelope
        assert env is not None and env.raw == data and reencode(env) == data
        assert env.kind in wire.TOPIC_TYPES[topic] and env.net == NET
        assert abs(env.ts - now) <= CFG.skew_ms
    else:
        counts[verdict.reason] += 1
        assert verdict.envelope is None and verdict.reason in DROP_REASONS


class LoadsSpy:
    """Stands in for the ``cbor2`` module inside ``meca_node.wire._cbor`` and counts the
    calls of ``cbor2.loads`` (everything else is cbor2's own)."""

    def __init__(self) -> None:
        self.calls = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(cbor2, name)

    def loads(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        return cbor2.loads(*args, **kwargs)


@pytest.fixture
def loads_spy(monkeypatch: pytest.MonkeyPatch) -> LoadsSpy:
    spy = LoadsSpy()
    monkeypatch.setattr(_cbor, "cbor2", spy)
    return spy


def check_cbor(data: bytes, counts: Counter, spy: LoadsSpy | None = None) -> None:
    """``spy`` (when given) checks that whatever the byte scan must refuse (everything but
    an integer below -2^63) is refused before cbor2 builds any object from it."""
    counts["inputs"] += 1
    why = reference_reason(data)
    expected = why is None
    calls = spy.calls if spy is not None else 0
    try:
        value = wire.cbor_decode(data)
    except wire.WireError as exc:
        counts[exc.reason] += 1
        assert not expected, f"cbor_decode refused canonical input {data.hex()}: {exc}"
        if spy is not None and why != "below -2^63":
            assert spy.calls == calls, f"cbor2.loads ran on {data.hex()} ({why})"
            counts["refused_by_scan"] += 1
        return
    except Exception as exc:  # noqa: BLE001
        raise _fail("cbor_decode", data, exc) from exc
    counts["accepted"] += 1
    assert expected, f"cbor_decode accepted non-canonical input {data.hex()}"
    assert wire.cbor_encode(value) == data


def check_genesis(text: str | bytes, counts: Counter) -> None:
    counts["inputs"] += 1
    try:
        g = wire.genesis_from_json(text)
    except wire.WireError as exc:
        counts[exc.reason] += 1
        return
    except Exception as exc:  # noqa: BLE001
        raise _fail("genesis_from_json", text, exc) from exc
    counts["accepted"] += 1
    signed = {"v": 1, "name": g.name, "founder": g.founder, "created": g.created,
              "alloc": [{"key": a.key, "amount": a.amount} for a in g.alloc], "sig": g.sig}
    network_id = hashlib.sha256(wire.cbor_encode(signed)).digest()
    assert g.network_id == network_id
    # written back, it is the same document (test_wire_vectors also re-reads it)
    doc = json.loads(g.to_json())
    assert doc == {"v": 1, "name": g.name, "founder": g.founder.hex(), "created": g.created,
                   "alloc": [{"key": a.key.hex(), "amount": a.amount} for a in g.alloc],
                   "sig": g.sig.hex(), "network_id": network_id.hex()}


# -- an independent reference for canonical CBOR (RFC 8949 4.2.1 in our data model) --------
class _NotCanonical(Exception):
    pass


def reference_canonical(data: bytes) -> bool:
    """True iff ``data`` is exactly one canonical item of our model (written from the spec,
    not from cbor2): shortest heads, definite lengths, text-keyed maps in bytewise key order,
    ints in [-2^63, 2^64), valid UTF-8, only false/true/null, no tags, depth <= 16."""
    return reference_reason(data) is None


def reference_reason(data: bytes) -> str | None:
    """``None`` if ``data`` is canonical (see ``reference_canonical``), else the first rule
    it breaks, reading from the start."""
    try:
        end = _ref_item(data, 0, 0)
    except _NotCanonical as exc:
        return str(exc)
    except IndexError:
        return "truncated"
    return None if end == len(data) else "trailing bytes"


def _ref_head(data: bytes, pos: int) -> tuple[int, int, int]:
    ib = data[pos]
    major, ai = ib >> 5, ib & 31
    if ai < 24:
        return major, ai, pos + 1
    if ai > 27:
        raise _NotCanonical("reserved or indefinite")
    width = 1 << (ai - 24)
    if pos + 1 + width > len(data):
        raise _NotCanonical("truncated")
    n = int.from_bytes(data[pos + 1:pos + 1 + width], "big")
    if n < (24 if width == 1 else 1 << (4 * width)):
        raise _NotCanonical("not the shortest head")
    return major, n, pos + 1 + width


def _ref_item(data: bytes, pos: int, depth: int) -> int:
    if depth > 16:
        raise _NotCanonical("too deep")
    ib = data[pos]
    if ib >> 5 == 7:
        if ib in (0xf4, 0xf5, 0xf6):
            return pos + 1
        raise _NotCanonical("float, simple value or break")
    major, n, pos = _ref_head(data, pos)
    if major == 0:
        return pos
    if major == 1:
        if n >= 2**63:
            raise _NotCanonical("below -2^63")
        return pos
    if major in (2, 3):
        if pos + n > len(data):
            raise _NotCanonical("truncated")
        if major == 3:
            try:
                data[pos:pos + n].decode("utf-8")
            except UnicodeDecodeError:
                raise _NotCanonical("bad UTF-8") from None
        return pos + n
    if major == 4:
        for _ in range(n):
            pos = _ref_item(data, pos, depth + 1)
        return pos
    if major == 5:
        last = None
        for _ in range(n):
            if data[pos] >> 5 != 3:
                raise _NotCanonical("non-text key")
            key_end = _ref_item(data, pos, depth + 1)
            key = data[pos:key_end]
            if last is not None and key <= last:
                raise _NotCanonical("keys out of order or duplicated")
            last = key
            pos = _ref_item(data, key_end, depth + 1)
        return pos
    raise _NotCanonical("tag")


# -- the fuzz tests -------------------------------------------------------------------------
def run_batches(batch: Callable[[random.Random, Counter], None],
                examples: int = EXAMPLES) -> Counter:
    counts: Counter = Counter()

    @fuzz_settings(examples)
    @given(seed=st.integers(0, 2**64 - 1))
    def run(seed: int) -> None:
        batch(random.Random(seed), counts)

    run()
    return counts


def test_fuzz_open_envelope() -> None:
    def batch(rng: random.Random, counts: Counter) -> None:
        for _ in range(BATCH):
            check_open(envelope_input(rng), counts)

    counts = run_batches(batch)
    assert counts["inputs"] >= PER_DECODER
    # driven into every outcome, not only the first check
    for outcome in ("accepted", "oversize", "malformed", "unsupported_version", "unknown_type",
                    "bad_signature"):
        assert counts[outcome] > 0, (outcome, counts)


@pytest.mark.parametrize("cls", BODY_TYPES, ids=lambda c: c.__name__)
def test_fuzz_decode_body(cls: type) -> None:
    def batch(rng: random.Random, counts: Counter) -> None:
        for _ in range(BATCH):
            check_body(cls, body_input(rng, cls), counts)

    counts = run_batches(batch, BODY_EXAMPLES)
    assert counts["inputs"] >= PER_BODY_CLASS
    assert counts["accepted"] > 0 and counts["malformed"] > 0, counts


def test_fuzz_cbor_decode(loads_spy: LoadsSpy) -> None:
    def batch(rng: random.Random, counts: Counter) -> None:
        for _ in range(BATCH):
            check_cbor(cbor_input(rng), counts, loads_spy)

    counts = run_batches(batch)
    assert counts["inputs"] >= PER_DECODER
    assert counts["accepted"] > PER_DECODER // 20 and counts["malformed"] > 0, counts
    assert counts["refused_by_scan"] > PER_DECODER // 20, counts


SCAN_REFUSES = {
    "tag 1 around an int": b"\xc1\x1a\x65\x53\xf1\x00",
    "tag 0 around a date text": b"\xc0\x74" + b"2023-11-14T22:13:20Z",
    "tag 2 bignum": b"\xc2\x49\x01" + bytes(8),
    "tag 4 decimal fraction": b"\xc4\x82\x21\x19\x6a\xb3",
    "tags 28/29: an array that contains itself": b"\xd8\x1c\x81\xd8\x1d\x00",
    "tag 35 regex": b"\xd8\x23\x62a*",
    "tag 258 set": b"\xd9\x01\x02\x82\x01\x02",
    "tag deep inside a map": b"\xa1\x61a\x81\xc1\x00",
    "half float": b"\xf9\x3c\x00",
    "single float": b"\xfa\x3f\x80\x00\x00",
    "double float": b"\xfb\x3f\xf8" + bytes(6),
    "undefined": b"\xf7",
    "simple value 16": b"\xf0",
    "false in two bytes": b"\xf8\x14",
    "indefinite bytes": b"\x5f\x41\x00\xff",
    "indefinite text": b"\x7f\x61a\xff",
    "indefinite array": b"\x9f\x00\xff",
    "indefinite map": b"\xbf\x61a\x00\xff",
    "lone break": b"\xff",
    "non-minimal int": b"\x18\x17",
    "non-minimal length": b"\x58\x01\x00",
    "integer map key": b"\xa1\x01\x02",
    "unsorted map keys": b"\xa2\x62aa\x01\x61b\x02",
    "duplicate map key": b"\xa2\x61a\x01\x61a\x02",
    "trailing byte": b"\x00\x00",
    "17 nested arrays": b"\x81" * 17 + b"\x00",
    "array of 2^63 items": b"\x9b" + (2**63).to_bytes(8, "big"),
    "bad UTF-8": b"\x62\xc3\x28",
    "empty input": b"",
}


@pytest.mark.parametrize("data", SCAN_REFUSES.values(), ids=SCAN_REFUSES.keys())
def test_scan_refuses_before_cbor2_builds_objects(data: bytes, loads_spy: LoadsSpy) -> None:
    assert reference_reason(data) not in (None, "below -2^63")
    with pytest.raises(wire.WireError) as info:
        wire.cbor_decode(data)
    assert info.value.reason == "malformed"
    assert loads_spy.calls == 0
    # nor as a body, nor as the body inside an envelope (every other key canonical)
    with pytest.raises(wire.WireError) as info:
        wire.decode_body(wire.JobAccept, data)
    assert info.value.reason == "malformed"
    env = ENV_OBJS[0]
    keys = sorted(env, key=lambda k: cbor2.dumps(k))
    raw = bytes([0xA0 | len(keys)]) + b"".join(
        cbor2.dumps(k) + (data if k == "body" else cbor2.dumps(env[k], canonical=True))
        for k in keys)
    with pytest.raises(wire.WireError) as info:
        wire.open_envelope(raw, max_size=MAX)
    assert info.value.reason == "malformed"
    assert loads_spy.calls == 0


def test_scan_lets_cbor2_refuse_only_ints_below_int64(loads_spy: LoadsSpy) -> None:
    """-2^63-1 is well-formed and canonical CBOR: the scan passes it, the value check
    after cbor2 refuses it."""
    data = b"\x3b" + (2**63).to_bytes(8, "big")
    assert reference_reason(data) == "below -2^63"
    with pytest.raises(wire.WireError, match="integer outside 64 bits"):
        wire.cbor_decode(data)
    assert loads_spy.calls == 1


def test_fuzz_gossip_gate() -> None:
    def batch(rng: random.Random, counts: Counter) -> None:
        gate = GossipGate(CFG)  # one gate per batch: replay and rate state build up in it
        for _ in range(BATCH):
            data = envelope_input(rng)
            if rng.random() < 0.75:  # mostly the right topic for what it claims to be
                claimed = next((t for t, tid in GOSSIP_TYPE_IDS if tid in data), None)
                topic = GOSSIP_TOPIC[claimed] if claimed else rng.choice(TOPICS)
            else:
                topic = rng.choice(TOPICS)
            now = NOW + rng.choice((0, 0, 0, 1, -1, CFG.skew_ms, -CFG.skew_ms, 10**6,
                                    rng.randrange(-10**7, 10**7)))
            check_gate(gate, data, topic, now, counts)
            if rng.random() < 0.05:  # the same bytes again: a replay when it was accepted
                check_gate(gate, data, topic, now, counts)
        if rng.random() < 0.05:  # one signer floods valid messages: rate limit, then ban
            key = rng.choice(KEYS)  # on one topic: each topic has its own buckets
            cls = rng.choice((wire.HostAdvert, wire.TaskOffer, wire.Receipt, wire.FraudProof))
            burst = CFG.entry_burst if cls in (wire.Receipt, wire.FraudProof) else CFG.burst
            for _ in range(rng.choice((burst + 5, burst + CFG.ban_after + 5))):
                body = rand_body(rng, cls)
                data = wire.seal(body, key=key, net=NET, ts=NOW, nonce=rng.randbytes(16))
                check_gate(gate, data, GOSSIP_TOPIC[body.TYPE], NOW, counts)

    counts = run_batches(batch)
    assert counts["inputs"] >= PER_DECODER
    seen = {r for r in DROP_REASONS if counts[r]}
    assert counts["accepted"] > 0, counts
    if PER_DECODER >= 100_000:  # smaller runs (MECA_FUZZ_INPUTS) may miss the rarest ones
        assert seen == set(DROP_REASONS), counts


# genesis: valid files (some made fresh), mutated as bytes, as text and as JSON documents
GENESIS_TEXTS = [GENESIS.to_json(), wire.make_genesis(  # total supply exactly 2^63 - 1
    "другая сеть 🙂", KEYS[0], 0,
    [(bytes([5]) * 32, 2**63 - 4)] + [(bytes([i]) * 32, 1) for i in range(6, 9)]).to_json()]
GENESIS_DOCS = [json.loads(t) for t in GENESIS_TEXTS]
GENESIS_BYTES = [t.encode() for t in GENESIS_TEXTS]


JSON_LEAVES = (0, 1, -1, 2**63 - 1, 2**63, 2**64, 10**400, 1.0, 1e308, float("nan"), True,
               False, None, "", "00" * 32, "zz", "ab" * 64, "0" * 63, "AB" * 32)


def rand_json(rng: random.Random, depth: int = 0) -> Any:
    r = rng.random()
    if depth > 3 or r < 0.6:
        return rand_text(rng, 20) if rng.random() < 0.15 else rng.choice(JSON_LEAVES)
    if r < 0.8:
        return [rand_json(rng, depth + 1) for _ in range(rng.randrange(0, 4))]
    return {rand_text(rng, 6): rand_json(rng, depth + 1) for _ in range(rng.randrange(0, 4))}


def mutate_json(rng: random.Random, doc: Any) -> Any:
    doc = dict(doc)
    doc["alloc"] = [dict(a) for a in doc["alloc"]]
    for _ in range(rng.choice((1, 1, 2))):
        key = rng.choice(list(doc) + ["alloc"])
        r = rng.random()
        if key == "alloc" and isinstance(doc.get("alloc"), list) and doc["alloc"] and r < 0.6:
            i = rng.randrange(len(doc["alloc"]))
            entry = doc["alloc"][i]
            if isinstance(entry, dict) and entry:
                entry[rng.choice(list(entry) + ["x"])] = rand_json(rng)
            else:
                doc["alloc"][i] = rand_json(rng)
            if rng.random() < 0.2:
                doc["alloc"].append(dict(doc["alloc"][0]) if isinstance(doc["alloc"][0], dict)
                                    else 0)
        elif r < 0.8:
            doc[key] = rand_json(rng)
        else:
            doc.pop(key, None)
    return doc


def genesis_input(rng: random.Random) -> str | bytes:
    r = rng.random()
    if r < 0.30:
        return mutate_bytes(rng, rng.choice(GENESIS_BYTES), GENESIS_BYTES)
    if r < 0.68:
        text = json.dumps(mutate_json(rng, rng.choice(GENESIS_DOCS)))
        return text if rng.random() < .5 else text.encode()
    if r < 0.70:  # a fresh valid genesis, maybe re-spaced
        n_alloc = rng.randrange(0, 4)  # each amount below 2^63 / 3: the supply stays < 2^63
        g = wire.make_genesis(rand_text(rng, 128) or "n", rng.choice(KEYS), rand_int(rng),
                              [(rng.randbytes(32), rng.randrange(1, 2**63 // 3))
                               for _ in range(n_alloc)])
        doc = json.loads(g.to_json())
        if rng.random() < 0.5:
            doc.pop("network_id")
        return json.dumps(doc, separators=(",", ":")) if rng.random() < .5 else g.to_json()
    if r < 0.85:
        text = rng.choice(GENESIS_TEXTS)
        i = rng.randrange(len(text) + 1)
        return text[:i] + rng.choice(('"', "{", "}", "[", ",", ":", "\\u0000", "\\ud800", "-",
                                      "1e999", "é", "", " ")) + text[i + rng.randrange(0, 3):]
    if r < 0.93:
        return json.dumps(rand_json(rng))
    return rng.randbytes(rng.randrange(0, 200))


def test_fuzz_genesis_from_json() -> None:
    def batch(rng: random.Random, counts: Counter) -> None:
        for _ in range(BATCH):
            check_genesis(genesis_input(rng), counts)

    counts = run_batches(batch)
    assert counts["inputs"] >= PER_DECODER
    for outcome in ("accepted", "malformed", "unsupported_version", "bad_signature"):
        assert counts[outcome] > 0, (outcome, counts)


# -- hypothesis-generated CBOR (a recursive strategy), fed to every decoder -----------------
def _cbor_containers(children: st.SearchStrategy) -> st.SearchStrategy:
    # a named function: hypothesis's check that a multi-line lambda uses its argument
    # misreads the lambda (HypothesisDeprecationWarning "can't actually recurse")
    return (st.lists(children, max_size=6)
            | st.dictionaries(st.text(max_size=10) | st.sampled_from(
                ["v", "net", "type", "signer", "ts", "nonce", "body", "sig", "job_id", "price"]),
                children, max_size=6)
            | st.dictionaries(st.integers(0, 5) | st.binary(max_size=3), children, max_size=3))


cbor_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats()
    | st.text(max_size=24) | st.binary(max_size=40)
    | st.sampled_from(TYPE_IDS) | st.binary(min_size=16, max_size=16)
    | st.binary(min_size=32, max_size=32),
    _cbor_containers, max_leaves=40)


@fuzz_settings(300)
@given(value=cbor_values, canonical=st.booleans(), seed=st.integers(0, 2**32))
def test_fuzz_hypothesis_cbor_everywhere(value: Any, canonical: bool, seed: int) -> None:
    try:
        data = cbor2.dumps(value, canonical=canonical)
    except Exception:  # noqa: BLE001 - e.g. unhashable keys cbor2 refuses to write
        return
    rng = random.Random(seed)
    counts: Counter = Counter()
    gate = GossipGate(CFG)
    obj = dict(rng.choice(ENV_OBJS))
    obj["body"] = value
    obj["type"] = rng.choice(TYPE_IDS)
    wrapped = dumps(rng, resign(rng, obj))
    for item in (data, mutate_bytes(rng, data), wrapped):
        check_cbor(item, counts)
        check_open(item, counts)
        for cls in BODY_TYPES:
            check_body(cls, item, counts)
        check_gate(gate, item, rng.choice(TOPICS), NOW, counts)
        check_genesis(item, counts)
