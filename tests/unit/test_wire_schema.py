"""The message schema: each dataclass's own rules, the decoders' caps, round trips, and
``protocols/messages.cddl`` kept in step with the dataclasses."""

from __future__ import annotations

import dataclasses
import re
import typing
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nacl.signing import SigningKey

from meca_node import wire
from meca_node.core.gate import GateConfig, GossipGate
from meca_node.wire import _schema

U64 = 2**64 - 1
JOB = bytes(range(16))
H32 = bytes(range(32))
KEY = SigningKey(bytes([7]) * 32)
NET = bytes([9]) * 32
TS = 1_700_000_000_000

# one valid instance of every message class, as keyword arguments
VALID: dict[type, dict[str, Any]] = {
    wire.Resources: dict(cpu_milli=1500, mem_mib=256, gpu_count=0),
    wire.Gpu: dict(model="H100", mem_mib=81559),
    wire.Hardware: dict(cpu_count=8, cpu_model="EPYC", cpu_mhz=3000, mem_mib=32768,
                        disk_mib=10**6, gpus=(wire.Gpu(model="H100", mem_mib=81559),)),
    wire.Environment: dict(name="docker", score=1000),
    wire.HostAdvert: dict(
        roles=("provider",), arch="amd64",
        hardware=wire.Hardware(cpu_count=8, cpu_model="EPYC",
                               gpus=(wire.Gpu(model="A", mem_mib=1),)),
        free=wire.Resources(cpu_milli=8000, mem_mib=30000, gpu_count=0), price=10,
        environments=(wire.Environment(name="docker", score=1),), cached_images=("bafy",),
        queue=0, addrs=("/ip4/127.0.0.1/tcp/4601",)),
    wire.TaskOffer: dict(name="t", description="d", image_cid="bafy", arch="amd64",
                         resources=wire.Resources(cpu_milli=500, mem_mib=64, gpu_count=0),
                         environment="docker", fee=1, example_input_sha256=H32,
                         example_output_sha256=H32),
    wire.TaskWithdraw: dict(name="t", offer_id=H32),
    wire.JobRequest: dict(job_id=JOB, offer_id=H32, input=b"{}", input_cid="", max_price=5,
                          deadline=TS, replicas=1),
    wire.JobAccept: dict(job_id=JOB, price=5, queue_position=0),
    wire.JobReject: dict(job_id=JOB, reason="busy", detail=""),
    wire.JobProgress: dict(job_id=JOB, stage="running", percent=50, detail=""),
    wire.ResultCommit: dict(job_id=JOB, result_sha256=H32, size=12),
    wire.JobResult: dict(job_id=JOB, output=b"out", output_cid="", log=b"log"),
    wire.Receipt: dict(seq=0, prev=H32, job_id=JOB, offer_id=H32, commit=b"c", provider=H32,
                       developer=H32, price=5, fee=1),
    wire.Transfer: dict(seq=1, prev=H32, to=H32, amount=5, memo="thanks"),
    wire.Receive: dict(seq=2, prev=H32, source=H32, payer=H32, payer_seq=0, amount=5),
    wire.FraudProof: dict(kind="fork", account=H32, first=b"a", second=b"b"),
    wire.EntryRequest: dict(account=H32, from_seq=3, count=64),
    wire.PaymentRefusal: dict(job_id=JOB, commits=(b"commit",)),
    wire.SignedEntry: dict(raw=b"entry"),
    wire.Entries: dict(entries=(wire.SignedEntry(raw=b"entry"),)),
}
CLASSES = tuple(VALID)
NESTED = (wire.Resources, wire.Gpu, wire.Hardware, wire.Environment, wire.SignedEntry)
assert set(CLASSES) == set(wire.BODY_TYPES) | set(NESTED)


def make(cls: type, **changes: Any) -> Any:
    return cls(**{**VALID[cls], **changes})


def obj_of(cls: type, **changes: Any) -> dict:
    """The decoded-CBOR map of a valid ``cls`` with ``changes`` applied to the map."""
    return {**wire.cbor_decode(wire.encode_body(make(cls))), **changes}


# -- __post_init__ rules, table-driven ------------------------------------------------------
NONNEG = {
    wire.Resources: ("cpu_milli", "mem_mib", "gpu_count"),
    wire.Gpu: ("mem_mib",),
    wire.Hardware: ("cpu_count", "cpu_mhz", "mem_mib", "disk_mib"),
    wire.Environment: ("score",),
    wire.HostAdvert: ("price", "queue"),
    wire.TaskOffer: ("fee",),
    wire.JobRequest: ("max_price", "deadline"),
    wire.JobAccept: ("price", "queue_position"),
    wire.ResultCommit: ("size",),
    wire.Receipt: ("seq", "price", "fee"),
    wire.Transfer: ("seq",),
    wire.Receive: ("seq", "payer_seq"),
    wire.EntryRequest: ("from_seq",),
}
#: integer fields that must be above zero (an amount that moves money)
POSITIVE = {wire.Transfer: ("amount",), wire.Receive: ("amount",)}
EXACT = {
    wire.TaskOffer: {"example_input_sha256": 32, "example_output_sha256": 32},
    wire.TaskWithdraw: {"offer_id": 32},
    wire.JobRequest: {"job_id": 16, "offer_id": 32},
    wire.JobAccept: {"job_id": 16},
    wire.JobReject: {"job_id": 16},
    wire.JobProgress: {"job_id": 16},
    wire.ResultCommit: {"job_id": 16, "result_sha256": 32},
    wire.JobResult: {"job_id": 16},
    wire.Receipt: {"prev": 32, "job_id": 16, "offer_id": 32, "provider": 32, "developer": 32},
    wire.Transfer: {"prev": 32, "to": 32},
    wire.Receive: {"prev": 32, "source": 32, "payer": 32},
    wire.FraudProof: {"account": 32},
    wire.EntryRequest: {"account": 32},
    wire.PaymentRefusal: {"job_id": 16},
}
ENUM_FIELDS = {
    (wire.HostAdvert, "roles"): wire.ROLES,
    (wire.JobReject, "reason"): wire.JOB_REJECT_REASONS,
    (wire.JobProgress, "stage"): wire.JOB_STAGES,
    (wire.FraudProof, "kind"): wire.FRAUD_KINDS,
}

REFUSED: list[Any] = []   # (cls, changes, message fragment)
ALLOWED: list[Any] = []   # (cls, changes)
for _cls, _fields in NONNEG.items():
    for _f in _fields:
        REFUSED.append(pytest.param(_cls, {_f: -1}, f"{_f} must be >= 0",
                                    id=f"{_cls.__name__}.{_f}=-1"))
        ALLOWED.append(pytest.param(_cls, {_f: 0}, id=f"{_cls.__name__}.{_f}=0"))
        ALLOWED.append(pytest.param(_cls, {_f: U64}, id=f"{_cls.__name__}.{_f}=2^64-1"))
for _cls, _fields in POSITIVE.items():
    for _f in _fields:
        for _bad in (0, -1):
            REFUSED.append(pytest.param(_cls, {_f: _bad}, f"{_f} must be > 0",
                                        id=f"{_cls.__name__}.{_f}={_bad}"))
        ALLOWED.append(pytest.param(_cls, {_f: 1}, id=f"{_cls.__name__}.{_f}=1"))
        ALLOWED.append(pytest.param(_cls, {_f: U64}, id=f"{_cls.__name__}.{_f}=2^64-1"))
for _cls, _lengths in EXACT.items():
    for _f, _n in _lengths.items():
        for _bad in (0, _n - 1, _n + 1):
            REFUSED.append(pytest.param(_cls, {_f: bytes(_bad)}, f"{_f} must be {_n} bytes",
                                        id=f"{_cls.__name__}.{_f}_len{_bad}"))
REFUSED += [
    pytest.param(wire.HostAdvert, {"roles": ("miner",)}, "unknown role", id="role_miner"),
    pytest.param(wire.HostAdvert, {"roles": ("provider", "Client")}, "unknown role",
                 id="role_case"),
    pytest.param(wire.JobReject, {"reason": "nope"}, "unknown reject reason", id="reason"),
    pytest.param(wire.JobProgress, {"stage": "done"}, "unknown stage", id="stage"),
    pytest.param(wire.JobProgress, {"percent": -1}, "percent must be 0..100", id="percent-1"),
    pytest.param(wire.JobProgress, {"percent": 101}, "percent must be 0..100", id="percent101"),
    pytest.param(wire.FraudProof, {"kind": "theft"}, "unknown fraud kind", id="kind"),
    pytest.param(wire.EntryRequest, {"count": 0}, "count must be 1..64", id="count0"),
    pytest.param(wire.EntryRequest, {"count": 65}, "count must be 1..64", id="count65"),
    pytest.param(wire.JobRequest, {"replicas": 0}, "replicas must be 1..16", id="replicas0"),
    pytest.param(wire.JobRequest, {"replicas": 17}, "replicas must be 1..16", id="replicas17"),
    pytest.param(wire.PaymentRefusal, {"commits": ()}, "carries the majority's commitments",
                 id="refusal_empty"),
    pytest.param(wire.Entries, {"entries": ()}, "at least one entry", id="entries_empty"),
    pytest.param(wire.TaskOffer, {"name": ""}, "name must not be empty", id="offer_name"),
    pytest.param(wire.TaskWithdraw, {"name": ""}, "name must not be empty", id="withdraw_name"),
    pytest.param(wire.JobResult, {"output": b"x", "output_cid": "bafy"}, "not both",
                 id="result_both"),
    pytest.param(wire.JobRequest, {"input": b"x", "input_cid": "bafy"}, "not both",
                 id="request_both"),
]
ALLOWED += [
    pytest.param(wire.HostAdvert, {"roles": ()}, id="no_roles"),
    pytest.param(wire.HostAdvert, {"roles": ("provider", "client", "developer")},
                 id="all_roles"),
    pytest.param(wire.JobProgress, {"percent": 0}, id="percent0"),
    pytest.param(wire.JobProgress, {"percent": 100}, id="percent100"),
    pytest.param(wire.JobResult, {"output": b"", "output_cid": "bafy"}, id="result_cid"),
    pytest.param(wire.JobResult, {"output": b"", "output_cid": ""}, id="result_empty"),
    pytest.param(wire.JobRequest, {"input": b"", "input_cid": "bafy"}, id="request_cid"),
    pytest.param(wire.TaskOffer, {"name": "x"}, id="offer_name_1"),
    pytest.param(wire.JobRequest, {"replicas": 16}, id="replicas16"),
    pytest.param(wire.PaymentRefusal, {"commits": (b"c",) * 15}, id="refusal_15"),
] + [pytest.param(c, {f: v}, id=f"{c.__name__}.{f}={v}")
     for (c, f), values in ENUM_FIELDS.items() for v in sorted(values) if f != "roles"]


@pytest.mark.parametrize(("cls", "changes", "fragment"), REFUSED)
def test_post_init_refuses(cls: type, changes: dict, fragment: str) -> None:
    with pytest.raises(ValueError, match=re.escape(fragment)):
        make(cls, **changes)
    # and the decoder reports the same rule as malformed, naming where
    with pytest.raises(wire.WireError) as info:
        wire.decode_body(cls, wire.cbor_encode(_schema_obj(cls, changes)))
    assert info.value.reason == "malformed"
    assert fragment in info.value.detail and info.value.detail.startswith(cls.__name__)


def _schema_obj(cls: type, changes: dict) -> dict:
    """The wire map of ``VALID[cls]`` with ``changes`` written in (bypassing __post_init__)."""
    base = wire.cbor_decode(wire.encode_body(make(cls)))
    return {**base, **{k: list(v) if isinstance(v, tuple) else v for k, v in changes.items()}}


@pytest.mark.parametrize(("cls", "changes"), ALLOWED)
def test_post_init_allows(cls: type, changes: dict) -> None:
    msg = make(cls, **changes)
    data = wire.encode_body(msg)
    assert wire.decode_body(cls, data) == msg
    assert wire.encode_body(wire.decode_body(cls, data)) == data


def test_rule_tables_cover_every_field() -> None:
    """Every integer field is non-negative-checked and every unbounded bytes field is either
    exact-length or capped: the tables above miss nothing."""
    for cls in CLASSES:
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if hints[f.name] is int and (cls, f.name) not in (
                    (wire.JobProgress, "percent"), (wire.EntryRequest, "count"),
                    (wire.JobRequest, "replicas")):  # ranges
                assert f.name in NONNEG.get(cls, ()) + POSITIVE.get(cls, ()), \
                    f"{cls.__name__}.{f.name}"
            if hints[f.name] is bytes:
                assert f.name in EXACT.get(cls, {}) or "max" in f.metadata, \
                    f"{cls.__name__}.{f.name}"


# -- caps (checked by the decoder and by seal; text caps count UTF-8 bytes) -----------------
CAPS: list[tuple[type, str, str, int]] = [
    (wire.Gpu, "model", "text", 128),
    (wire.Hardware, "cpu_model", "text", 256),
    (wire.Hardware, "gpus", "list", 64),
    (wire.Environment, "name", "text", 64),
    (wire.HostAdvert, "roles", "list", 3),
    (wire.HostAdvert, "arch", "text", 32),
    (wire.HostAdvert, "environments", "list", 16),
    (wire.HostAdvert, "cached_images", "list", 256),
    (wire.HostAdvert, "cached_images", "item_text", 1024),
    (wire.HostAdvert, "addrs", "list", 16),
    (wire.HostAdvert, "addrs", "item_text", 1024),
    (wire.TaskOffer, "name", "text", 128),
    (wire.TaskWithdraw, "name", "text", 128),
    (wire.TaskOffer, "description", "text", 8192),
    (wire.TaskOffer, "image_cid", "text", 128),
    (wire.TaskOffer, "arch", "text", 32),
    (wire.TaskOffer, "environment", "text", 64),
    (wire.JobRequest, "input", "bytes", 16 * wire.MiB),
    (wire.JobRequest, "input_cid", "text", 128),
    (wire.JobReject, "detail", "text", 1024),
    (wire.JobProgress, "detail", "text", 256),
    (wire.JobResult, "output", "bytes", 16 * wire.MiB),
    (wire.JobResult, "output_cid", "text", 128),
    (wire.JobResult, "log", "bytes", 16384),
    (wire.PaymentRefusal, "commits", "list", 15),
    (wire.Receipt, "commit", "bytes", 4096),
    (wire.Transfer, "memo", "text", 256),
    (wire.FraudProof, "first", "bytes", 16384),
    (wire.FraudProof, "second", "bytes", 16384),
    (wire.SignedEntry, "raw", "bytes", 16384),
    (wire.Entries, "entries", "list", wire.MAX_GOSSIP_ENTRIES),
]


def utf8_text(n: int) -> str:
    """A text of exactly ``n`` UTF-8 bytes, mostly of three-byte characters."""
    text = "世" * (n // 3) + ("", "x", "é")[n % 3]
    assert len(text.encode()) == n
    return text


def _sized(cls: type, field: str, kind: str, n: int) -> Any:
    if kind == "text":
        return utf8_text(n)  # the cap counts bytes: n bytes in about n/3 characters
    if kind == "bytes":
        return bytes(n)
    if kind == "item_text":
        return [utf8_text(n)]
    item = _schema_obj(cls, {})[field][0]
    return [item] * n


#: a field that excludes another: the other is emptied when the field is set
_EXCLUSIVE = {(wire.JobResult, "output_cid"): {"output": b""},
              (wire.JobRequest, "input_cid"): {"input": b""}}


def _as_body(cls: type, field: str, value: Any) -> Any:
    """A valid message (of a body type) whose ``cls.field`` is ``value``, built without any
    cap check (dataclasses check no caps; the decoder and seal do)."""
    if isinstance(value, list):
        value = tuple(_schema_value(cls, field, v) for v in value)
    other = _EXCLUSIVE.get((cls, field), {})
    return _wrap_nested(make(cls, **other, **{field: value}))


def _schema_value(cls: type, field: str, item: Any) -> Any:
    """A list item of the wire map turned back into its dataclass (for list caps)."""
    if not isinstance(item, dict):
        return item
    item_tp = typing.get_args(typing.get_type_hints(cls)[field])[0]
    return wire.decode_body(item_tp, wire.cbor_encode(item))


@pytest.mark.parametrize(("cls", "field", "kind", "cap"), CAPS,
                         ids=[f"{c.__name__}.{f}.{k}" for c, f, k, _ in CAPS])
def test_cap(cls: type, field: str, kind: str, cap: int) -> None:
    other = _EXCLUSIVE.get((cls, field), {})
    at_cap = wire.cbor_encode(_schema_obj(cls, {**other, field: _sized(cls, field, kind, cap)}))
    body = wire.decode_body(cls, at_cap)
    assert wire.encode_body(body) == at_cap
    over = wire.cbor_encode(_schema_obj(cls, {**other,
                                              field: _sized(cls, field, kind, cap + 1)}))
    with pytest.raises(wire.WireError) as info:
        wire.decode_body(cls, over)
    assert info.value.reason == "malformed" and "cap" in info.value.detail
    # seal signs the body at the cap and refuses, before signing, the one over it
    at_cap_body = _as_body(cls, field, _sized(cls, field, kind, cap))
    sealed = wire.seal(at_cap_body, key=KEY, net=NET, ts=TS, nonce=bytes(16))
    assert wire.open_envelope(sealed, max_size=len(sealed)).body == at_cap_body
    with pytest.raises(wire.WireError) as info:
        wire.seal(_as_body(cls, field, _sized(cls, field, kind, cap + 1)), key=KEY, net=NET,
                  ts=TS, nonce=bytes(16))
    assert info.value.reason == "malformed" and "cap" in info.value.detail


TEXT_CAPS = [(c, f, k, cap) for c, f, k, cap in CAPS if k in ("text", "item_text")]


@pytest.mark.parametrize(("cls", "field", "kind", "cap"), TEXT_CAPS,
                         ids=[f"{c.__name__}.{f}.{k}" for c, f, k, _ in TEXT_CAPS])
def test_text_caps_count_bytes_not_characters(cls: type, field: str, kind: str,
                                              cap: int) -> None:
    """``cap`` characters of two bytes each are over the cap; ``cap`` bytes of four-byte
    characters (plus ASCII to fill) are within it."""
    other = _EXCLUSIVE.get((cls, field), {})
    wrap = (lambda t: [t]) if kind == "item_text" else (lambda t: t)
    emoji = "🙂" * (cap // 4) + "x" * (cap % 4)
    assert len(emoji.encode()) == cap
    ok = wire.cbor_encode(_schema_obj(cls, {**other, field: wrap(emoji)}))
    assert wire.encode_body(wire.decode_body(cls, ok)) == ok
    for text in ("é" * cap, emoji + "x", "é" * (cap // 2) + "\x00"):
        assert len(text) <= cap < len(text.encode())
        over = wire.cbor_encode(_schema_obj(cls, {**other, field: wrap(text)}))
        with pytest.raises(wire.WireError) as info:
            wire.decode_body(cls, over)
        assert info.value.reason == "malformed"
        assert f"text of {len(text.encode())} bytes > cap {cap}" in info.value.detail


def test_fraud_proof_at_its_caps_fits_a_gossip_message() -> None:
    """Why first/second are capped at 16384: the largest FraudProof, sealed with the
    longest kind and the largest ts seal writes, is one gossip message."""
    first_cap, second_cap = (f.metadata["max"] for f in dataclasses.fields(wire.FraudProof)
                             if f.name in ("first", "second"))
    body = wire.FraudProof(kind=max(wire.FRAUD_KINDS, key=len), account=H32,
                           first=bytes(first_cap), second=bytes(second_cap))
    sealed = wire.seal(body, key=KEY, net=NET, ts=2**63 - 1, nonce=bytes(16))
    assert len(sealed) <= wire.Caps().gossip_message
    verdict = GossipGate(GateConfig(network_id=NET)).check(
        wire.seal(body, key=KEY, net=NET, ts=TS, nonce=bytes(16)), wire.TOPIC_RECEIPTS, TS)
    assert verdict.ok, verdict


# -- seal refuses what a receiver would refuse ----------------------------------------------
@pytest.mark.parametrize("ts", [-1, 2**63, 2**64 - 1, True, False, 1.0, "1", None])
def test_seal_refuses_ts_outside_0_to_2_63(ts: Any) -> None:
    with pytest.raises(ValueError, match="ts must be"):
        wire.seal(make(wire.JobAccept), key=KEY, net=NET, ts=ts, nonce=bytes(16))


@pytest.mark.parametrize("ts", [0, 1, 2**63 - 1])
def test_seal_accepts_ts_at_the_edges(ts: int) -> None:
    sealed = wire.seal(make(wire.JobAccept), key=KEY, net=NET, ts=ts, nonce=bytes(16))
    assert wire.open_envelope(sealed, max_size=len(sealed)).ts == ts


@pytest.mark.parametrize(("cls", "changes", "fragment"), REFUSED)
def test_seal_refuses_a_body_broken_after_construction(cls: type, changes: dict,
                                                       fragment: str) -> None:
    """A frozen body changed behind __post_init__'s back (object.__setattr__) is still
    refused by seal, with the receiver's reason, and nothing is signed."""
    body = make(cls)
    for name, value in changes.items():
        object.__setattr__(body, name, value)
    with pytest.raises(wire.WireError) as info:
        wire.seal(_wrap_nested(body), key=KEY, net=NET, ts=TS, nonce=bytes(16))
    assert info.value.reason == "malformed" and fragment in info.value.detail


def _wrap_nested(inner: Any) -> Any:
    """``inner`` itself if it is a body; else a valid HostAdvert that holds it."""
    if type(inner) is wire.Gpu:
        return make(wire.HostAdvert, hardware=make(wire.Hardware, gpus=(inner,)))
    if type(inner) is wire.Hardware:
        return make(wire.HostAdvert, hardware=inner)
    if type(inner) is wire.Environment:
        return make(wire.HostAdvert, environments=(inner,))
    if type(inner) is wire.Resources:
        return make(wire.HostAdvert, free=inner)
    if type(inner) is wire.SignedEntry:
        return make(wire.Entries, entries=(inner,))
    return inner


@pytest.mark.parametrize("value", [1.5, "5", b"5", None, [5], True])
def test_seal_refuses_a_mistyped_field(value: Any) -> None:
    body = make(wire.JobAccept)
    object.__setattr__(body, "price", value)
    with pytest.raises(wire.WireError, match="expected an integer"):
        wire.seal(body, key=KEY, net=NET, ts=TS, nonce=bytes(16))


def test_caps_table_matches_field_metadata() -> None:
    declared = {(c.__name__, f, cap) for c, f, k, cap in CAPS if k != "item_text"}
    # enum fields carry a cap too, but their enumeration is the tighter rule
    in_code = {(c.__name__, f.name, f.metadata["max"]) for c in CLASSES
               for f in dataclasses.fields(c)
               if "max" in f.metadata and ((c, f.name) not in ENUM_FIELDS or f.name == "roles")}
    assert declared == in_code


def test_default_caps() -> None:
    assert (_schema.MAX_STR, _schema.MAX_BYTES, _schema.MAX_ITEMS) == (1024, 1024, 256)


# -- decoder strictness ---------------------------------------------------------------------
@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_missing_unknown_and_mistyped_fields(cls: type) -> None:
    base = _schema_obj(cls, {})
    for name in base:
        with pytest.raises(wire.WireError, match="missing field"):
            wire.decode_body(cls, wire.cbor_encode({k: v for k, v in base.items() if k != name}))
        wrong = {**base, name: [[]]}  # wrong for every field type, also inside lists
        with pytest.raises(wire.WireError, match="expected"):
            wire.decode_body(cls, wire.cbor_encode(wrong))
    with pytest.raises(wire.WireError, match="unknown field"):
        wire.decode_body(cls, wire.cbor_encode({**base, "zz_extra": 0}))
    with pytest.raises(wire.WireError, match="expected a map"):
        wire.decode_body(cls, wire.cbor_encode(list(base.values())))


@pytest.mark.parametrize(("value", "fragment"), [
    (True, "expected an integer"), ("5", "expected an integer"), (b"\x05", "expected an integer"),
    (None, "expected an integer"), ([5], "expected an integer"),
])
def test_integer_fields_refuse_other_types(value: Any, fragment: str) -> None:
    with pytest.raises(wire.WireError, match=fragment):
        wire.decode_body(wire.JobAccept, wire.cbor_encode(obj_of(wire.JobAccept, price=value)))


def test_nested_error_names_its_path() -> None:
    obj = _schema_obj(wire.HostAdvert, {})
    obj["hardware"]["gpus"][0]["mem_mib"] = -1
    with pytest.raises(wire.WireError) as info:
        wire.decode_body(wire.HostAdvert, wire.cbor_encode(obj))
    assert info.value.detail.startswith("HostAdvert.hardware.gpus[0]")
    obj = _schema_obj(wire.HostAdvert, {})
    obj["addrs"] = ["ok", 5]
    with pytest.raises(wire.WireError, match=re.escape("HostAdvert.addrs[1]")):
        wire.decode_body(wire.HostAdvert, wire.cbor_encode(obj))


# -- messages.cddl in step with the dataclasses ---------------------------------------------
CDDL = (Path(__file__).resolve().parents[2] / "protocols" / "messages.cddl").read_text()


def _cddl_rules() -> dict[str, dict[str, str]]:
    rules = {}
    for m in re.finditer(r"^([A-Za-z][\w-]*) = \{\n(.*?)^\}", CDDL, re.M | re.S):
        fields = {}
        for line in m.group(2).splitlines():
            line = line.split(";")[0].strip().rstrip(",").strip()
            if not line:
                continue
            fm = re.fullmatch(r"(\w+): (.+)", line)
            if fm:
                fields[fm.group(1)] = fm.group(2)
            else:
                fields[line] = ""  # a group reference
        rules[m.group(1)] = fields
    return rules


def _cddl_enums() -> dict[str, set[str]]:
    out = {}
    for m in re.finditer(r'^([a-z][\w-]*) =\s*("[^"]*"(?:\s*/\s*"[^"]*")*)', CDDL, re.M):
        out[m.group(1)] = set(re.findall(r'"([^"]*)"', m.group(2)))
    return out


RULES = _cddl_rules()
ENUMS = _cddl_enums()
ENUM_RULE = {(wire.HostAdvert, "roles"): "role", (wire.JobReject, "reason"): "reject-reason",
             (wire.JobProgress, "stage"): "job-stage", (wire.FraudProof, "kind"): "fraud-kind"}


def _expected_cddl(cls: type, name: str, tp: Any, cap: int | None) -> str:
    if (cls, name) in ENUM_RULE:
        rule = ENUM_RULE[(cls, name)]
        return f"[0*{cap} {rule}]" if typing.get_origin(tp) is tuple else rule
    if typing.get_origin(tp) is tuple:
        item = typing.get_args(tp)[0]
        low = 1 if (cls, name) == (wire.PaymentRefusal, "commits") else 0
        return f"[{low}*{cap or _schema.MAX_ITEMS} {_expected_cddl(cls, '', item, None)}]"
    if dataclasses.is_dataclass(tp):
        return tp.__name__
    if tp is int:
        if name in POSITIVE.get(cls, ()):
            return "u64-pos"
        return {(wire.JobProgress, "percent"): "0..100",
                (wire.EntryRequest, "count"): f"1..{wire.MAX_ENTRY_REQUEST}",
                (wire.JobRequest, "replicas"): f"1..{wire.MAX_REPLICAS}"}.get((cls, name), "u64")
    if tp is str:
        low = 1 if (cls, name) in ((wire.TaskOffer, "name"), (wire.TaskWithdraw, "name")) else 0
        return f"tstr .size ({low}..{cap or _schema.MAX_STR})"
    if tp is bytes:
        exact = EXACT.get(cls, {}).get(name)
        return f"bstr .size {exact}" if exact else f"bstr .size (0..{cap or _schema.MAX_BYTES})"
    raise AssertionError(tp)


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_cddl_rule_matches_dataclass(cls: type) -> None:
    assert cls.__name__ in RULES, f"messages.cddl has no rule {cls.__name__}"
    rule = RULES[cls.__name__]
    hints = typing.get_type_hints(cls)
    fields = dataclasses.fields(cls)
    assert list(rule) == [f.name for f in fields], "same fields, in declaration order"
    for f in fields:
        want = _expected_cddl(cls, f.name, hints[f.name], f.metadata.get("max"))
        assert rule[f.name] == want, f"{cls.__name__}.{f.name}"


def test_cddl_enums_match() -> None:
    for (cls, name), rule in ENUM_RULE.items():
        assert ENUMS[rule] == set(ENUM_FIELDS[(cls, name)]), rule


def test_cddl_envelope_lists_every_type() -> None:
    pairs = re.findall(r'type: "(\w+)/(\d+)", body: (\w+)', CDDL)
    assert {(n, int(v), b) for n, v, b in pairs} == {
        (c.TYPE, wire.BODY_VERSION, c.__name__) for c in wire.BODY_TYPES}
    assert set(RULES["envelope"]) == {"envelope-fields", "sig"}
    assert RULES["envelope"]["sig"] == "bstr .size 64"
    assert re.search(r"^signed-envelope = \{ envelope-fields \}$", CDDL, re.M)
    envelope_fields = re.search(r"^envelope-fields = \((.*?)^\)", CDDL, re.M | re.S)
    assert envelope_fields is not None
    keys = re.findall(r"^\s+(\w+):", envelope_fields.group(1), re.M)
    assert keys == ["v", "net", "signer", "ts", "nonce"]


# -- hypothesis: valid instances of every type round-trip through seal and open -------------
u64 = st.integers(0, U64)


def clip(text: str, cap: int) -> str:
    """``text`` cut to at most ``cap`` UTF-8 bytes, at a character boundary."""
    while len(text.encode()) > cap:
        text = text[:-1]
    return text


def text(cap: int, min_size: int = 0) -> st.SearchStrategy[str]:
    """Any text (multi-byte characters included) within a cap of ``cap`` UTF-8 bytes."""
    return st.text(min_size=min_size, max_size=min(cap, 48)).map(lambda t: clip(t, cap))


def exact(n: int) -> st.SearchStrategy[bytes]:
    return st.binary(min_size=n, max_size=n)


def tuples(strategy: st.SearchStrategy, cap: int) -> st.SearchStrategy[tuple]:
    return st.lists(strategy, max_size=min(cap, 4)).map(tuple)


resources = st.builds(wire.Resources, cpu_milli=u64, mem_mib=u64, gpu_count=u64)
gpus = st.builds(wire.Gpu, model=text(128), mem_mib=u64)
hardware = st.builds(wire.Hardware, cpu_count=u64, cpu_model=text(256), cpu_mhz=u64,
                     mem_mib=u64, disk_mib=u64, gpus=tuples(gpus, 64))
environments = st.builds(wire.Environment, name=text(64), score=u64)
STRATEGIES: dict[type, st.SearchStrategy] = {
    wire.HostAdvert: st.builds(
        wire.HostAdvert, roles=tuples(st.sampled_from(sorted(wire.ROLES)), 3), arch=text(32),
        hardware=hardware, free=resources, price=u64, environments=tuples(environments, 16),
        cached_images=tuples(text(1024), 256), queue=u64, addrs=tuples(text(1024), 16)),
    wire.TaskOffer: st.builds(
        wire.TaskOffer, name=text(128, 1), description=text(8192), image_cid=text(128),
        arch=text(32), resources=resources, environment=text(64), fee=u64,
        example_input_sha256=exact(32), example_output_sha256=exact(32)),
    wire.TaskWithdraw: st.builds(wire.TaskWithdraw, name=text(128, 1), offer_id=exact(32)),
    wire.JobRequest: st.builds(wire.JobRequest, job_id=exact(16), offer_id=exact(32),
                               input=st.binary(max_size=512), input_cid=st.just(""),
                               max_price=u64, deadline=u64,
                               replicas=st.integers(1, wire.MAX_REPLICAS)),
    wire.JobAccept: st.builds(wire.JobAccept, job_id=exact(16), price=u64, queue_position=u64),
    wire.JobReject: st.builds(wire.JobReject, job_id=exact(16),
                              reason=st.sampled_from(sorted(wire.JOB_REJECT_REASONS)),
                              detail=text(1024)),
    wire.JobProgress: st.builds(wire.JobProgress, job_id=exact(16),
                                stage=st.sampled_from(sorted(wire.JOB_STAGES)),
                                percent=st.integers(0, 100), detail=text(256)),
    wire.ResultCommit: st.builds(wire.ResultCommit, job_id=exact(16), result_sha256=exact(32),
                                 size=u64),
    wire.JobResult: st.one_of(
        st.builds(wire.JobResult, job_id=exact(16), output=st.binary(max_size=512),
                  output_cid=st.just(""), log=st.binary(max_size=256)),
        st.builds(wire.JobResult, job_id=exact(16), output=st.just(b""),
                  output_cid=text(128), log=st.binary(max_size=256))),
    wire.Receipt: st.builds(wire.Receipt, seq=u64, prev=exact(32), job_id=exact(16),
                            offer_id=exact(32), commit=st.binary(max_size=512),
                            provider=exact(32), developer=exact(32), price=u64, fee=u64),
    wire.Transfer: st.builds(wire.Transfer, seq=u64, prev=exact(32), to=exact(32),
                             amount=st.integers(1, U64), memo=text(256)),
    wire.Receive: st.builds(wire.Receive, seq=u64, prev=exact(32), source=exact(32),
                            payer=exact(32), payer_seq=u64, amount=st.integers(1, U64)),
    wire.FraudProof: st.builds(wire.FraudProof, kind=st.sampled_from(sorted(wire.FRAUD_KINDS)),
                               account=exact(32), first=st.binary(max_size=512),
                               second=st.binary(max_size=512)),
    wire.EntryRequest: st.builds(wire.EntryRequest, account=exact(32), from_seq=u64,
                                 count=st.integers(1, wire.MAX_ENTRY_REQUEST)),
    wire.PaymentRefusal: st.builds(wire.PaymentRefusal, job_id=exact(16), commits=st.lists(
        st.binary(max_size=512), min_size=1, max_size=wire.MAX_REPLICAS - 1).map(tuple)),
}
# an Entries message carries signed chain entries (the gate opens each one)
STRATEGIES[wire.Entries] = st.builds(wire.Entries, entries=st.lists(
    st.one_of(STRATEGIES[wire.Transfer], STRATEGIES[wire.Receive]).map(
        lambda b: wire.SignedEntry(raw=wire.seal(b, key=KEY, net=NET, ts=TS, nonce=H32[:16]))),
    min_size=1, max_size=8).map(tuple))
assert set(STRATEGIES) == set(wire.BODY_TYPES)
GOSSIP_TOPIC = {t: topic for topic, types in wire.TOPIC_TYPES.items() for t in types}


@pytest.mark.parametrize("cls", wire.BODY_TYPES, ids=lambda c: c.__name__)
def test_round_trip_property(cls: type) -> None:
    @settings(max_examples=60, deadline=None, derandomize=True, database=None)
    @given(body=STRATEGIES[cls], ts=st.integers(0, 2**63 - 1), nonce=exact(16))
    def run(body: Any, ts: int, nonce: bytes) -> None:
        data = wire.encode_body(body)
        assert wire.decode_body(cls, data) == body
        sealed = wire.seal(body, key=KEY, net=NET, ts=ts, nonce=nonce)
        env = wire.open_envelope(sealed, max_size=len(sealed))
        assert (env.body, env.type, env.signer, env.ts, env.nonce, env.net, env.raw) == (
            body, wire.type_id(cls), bytes(KEY.verify_key), ts, nonce, NET, sealed)
        assert wire.seal(env.body, key=KEY, net=NET, ts=ts, nonce=nonce) == sealed
        if cls.TYPE in GOSSIP_TOPIC and len(sealed) <= wire.Caps().gossip_message:
            verdict = GossipGate(GateConfig(network_id=NET)).check(
                sealed, GOSSIP_TOPIC[cls.TYPE], ts)
            assert verdict.ok and verdict.envelope is not None
            assert verdict.envelope.body == body

    run()


# -- genesis: the same byte cap on its name, and a total supply below 2^63 ------------------
FOUNDER = SigningKey(bytes([4]) * 32)
ALLOC_KEYS = [bytes([i]) * 32 for i in range(1, 4)]


@pytest.mark.parametrize(("name", "ok"), [
    ("n", True), ("n" * 128, True), (utf8_text(128), True), ("🙂" * 32, True),
    ("", False), ("n" * 129, False), (utf8_text(129), False), ("é" * 128, False),
    ("\ud800", False),
])
def test_genesis_name_is_1_to_128_bytes(name: str, ok: bool) -> None:
    if ok:
        g = wire.make_genesis(name, FOUNDER, 0, [(ALLOC_KEYS[0], 1)])
        assert wire.genesis_from_json(g.to_json()) == g
    else:
        with pytest.raises(wire.WireError, match="genesis name must be 1..128 bytes") as info:
            wire.make_genesis(name, FOUNDER, 0, [(ALLOC_KEYS[0], 1)])
        assert info.value.reason == "malformed"


@pytest.mark.parametrize(("amounts", "ok"), [
    ([2**63 - 1], True), ([2**62, 2**62 - 1], True), ([1, 2**63 - 2], True),
    ([2**62, 2**62], False), ([1, 2**63 - 1], False), ([2**63 - 1] * 3, False),
])
def test_genesis_total_supply_stays_below_2_63(amounts: list[int], ok: bool) -> None:
    alloc = list(zip(ALLOC_KEYS, amounts))
    if ok:
        g = wire.make_genesis("supply", FOUNDER, 0, alloc)
        assert g.total_supply == sum(amounts) < 2**63
        assert wire.genesis_from_json(g.to_json()) == g
    else:
        with pytest.raises(wire.WireError, match="total supply") as info:
            wire.make_genesis("supply", FOUNDER, 0, alloc)
        assert info.value.reason == "malformed"
