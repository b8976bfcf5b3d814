"""The golden vectors of ``protocols/vectors/`` against the current code.

The vectors are committed files (written by ``scripts/gen_vectors.py``); this test only
reads them, so a wire change that alters any byte or verdict fails here until the vectors
are regenerated on purpose and the diff reviewed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from pathlib import Path
from typing import Any

import pytest
from nacl.signing import SigningKey

from meca_node import wire
from meca_node.core.gate import DROP_REASONS, GateConfig, GossipGate

PROTOCOLS = Path(__file__).resolve().parents[2] / "protocols"
VECTORS = PROTOCOLS / "vectors"
FILES = ("cbor.json", "bodies.json", "envelopes.json", "gate.json", "genesis.json")
DOCS = {name: json.loads((VECTORS / name).read_text()) for name in FILES}
BY_TYPE = {cls.TYPE: cls for cls in wire.BODY_TYPES}  # type: ignore[attr-defined]


def _cases(fname: str) -> list[Any]:
    return [pytest.param(v, id=v["name"]) for v in DOCS[fname]["vectors"]]


def render(value: Any) -> Any:
    if dataclasses.is_dataclass(value):
        return {f.name: render(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, tuple):
        return [render(v) for v in value]
    return value


def diag(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, bytes):
        return f"h'{value.hex()}'"
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(diag(v) for v in value) + "]"
    assert isinstance(value, dict)
    return "{" + ", ".join(f"{diag(k)}: {diag(v)}" for k, v in value.items()) + "}"


def reencode(env: wire.Envelope) -> bytes:
    """The canonical bytes of an opened envelope, rebuilt from its fields."""
    return wire.cbor_encode({
        "v": env.v, "net": env.net, "type": env.type, "signer": env.signer, "ts": env.ts,
        "nonce": env.nonce, "body": wire.cbor_decode(wire.encode_body(env.body)), "sig": env.sig,
    })


def seed_of(fname: str, public_key: bytes) -> bytes | None:
    for k in DOCS[fname]["keys"].values():
        if k["public_key"] == public_key.hex():
            return bytes.fromhex(k["seed"])
    return None


def check_envelope(fname: str, data: bytes, env: wire.Envelope, expected: dict) -> None:
    assert env.raw == data
    assert env.type == expected["type"]
    assert type(env.body) is BY_TYPE[env.kind]
    assert render(env.body) == expected["body"]
    assert reencode(env) == data
    seed = seed_of(fname, env.signer)
    assert seed is not None, "every accepted vector is signed by a recorded key"
    if env.ts >= 2**63:  # receivers take any u64; seal itself writes only 0..2^63-1
        with pytest.raises(ValueError, match="ts must be"):
            wire.seal(env.body, key=SigningKey(seed), net=env.net, ts=env.ts, nonce=env.nonce)
        return
    # Ed25519 is deterministic: sealing the decoded body again gives the very same bytes
    assert wire.seal(env.body, key=SigningKey(seed), net=env.net, ts=env.ts,
                     nonce=env.nonce) == data


# -- the files themselves -------------------------------------------------------------------
@pytest.mark.parametrize("fname", FILES)
def test_vector_file_keys(fname: str) -> None:
    doc = DOCS[fname]
    assert doc["format"] == "meca-vectors/1"
    for key in doc["keys"].values():
        assert bytes(SigningKey(bytes.fromhex(key["seed"])).verify_key).hex() == key["public_key"]
    names = [v["name"] for v in doc["vectors"]]
    assert len(names) == len(set(names))


def test_every_body_type_has_accepted_vectors() -> None:
    for fname, key in (("bodies.json", "class"), ("envelopes.json", None)):
        seen = set()
        for v in DOCS[fname]["vectors"]:
            if v["expected"]["verdict"] == "accept":
                seen.add(v[key] if key else v["expected"]["type"].split("/")[0])
        assert seen == set(BY_TYPE), fname


def test_every_drop_reason_has_a_gate_vector() -> None:
    reasons = {v["expected"]["reason"] for v in DOCS["gate.json"]["vectors"]}
    assert set(DROP_REASONS) <= reasons
    assert reasons - set(DROP_REASONS) == {None}
    gossip = {t for types in wire.TOPIC_TYPES.values() for t in types}
    accepted = {v["expected"]["type"].split("/")[0] for v in DOCS["gate.json"]["vectors"]
                if v["expected"]["verdict"] == "accept"}
    assert gossip <= accepted


def _envelope_md_checks() -> list[tuple[int, str]]:
    """(number, drop reason) of each row of envelope.md's table of receiver checks."""
    text = (PROTOCOLS / "envelope.md").read_text()
    return [(int(n), reason) for n, reason in
            re.findall(r"^\| (\d+) \| .*? \| `(\w+)`[^|]*\|$", text, re.M)]


def test_drop_reasons_are_listed_in_check_order() -> None:
    """DROP_REASONS is the order of envelope.md's checks (each reason at its first check),
    and envelope.md quotes that list as it is."""
    rows = _envelope_md_checks()
    assert [n for n, _ in rows] == list(range(1, 20))
    first_seen: list[str] = []
    for _, reason in rows:
        if reason not in first_seen:
            first_seen.append(reason)
    assert tuple(first_seen) == DROP_REASONS
    quoted = re.search(r"`meca_node\.core\.gate\.DROP_REASONS` lists them[^`]*`([^`]*)`",
                       (PROTOCOLS / "envelope.md").read_text())
    assert quoted is not None
    assert tuple(r.strip() for r in quoted.group(1).split(",")) == DROP_REASONS


def test_gate_vectors_pin_the_check_order() -> None:
    """Messages failing two checks at once get the reason of the earlier check."""
    by_name = {v["name"]: v["expected"]["reason"] for v in DOCS["gate.json"]["vectors"]}
    assert by_name["bad_signature_net_changed"] == "bad_signature"  # 11 before 14
    assert by_name["precedence_wrong_topic_before_network"] == "wrong_topic"  # 13 before 14
    assert by_name["precedence_network_before_clock"] == "wrong_network"  # 14 before 15
    order = [r for _, r in _envelope_md_checks()]
    for earlier, later in (("bad_signature", "wrong_network"), ("wrong_topic", "wrong_network"),
                           ("wrong_network", "stale")):
        assert order.index(earlier) < order.index(later)


def test_gate_vectors_use_the_genesis_network() -> None:
    valid = next(v for v in DOCS["genesis.json"]["vectors"] if v["name"] == "valid")
    assert DOCS["gate.json"]["network_id"] == valid["expected"]["network_id"]
    assert DOCS["envelopes.json"]["network_id"] == valid["expected"]["network_id"]


def test_gate_config_is_the_default() -> None:
    """The vectors pin the documented defaults (protocols/envelope.md)."""
    cfg = GateConfig(network_id=b"\0" * 32)
    assert DOCS["gate.json"]["gate_config"] == {
        f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg) if f.name != "network_id"}


# -- canonical CBOR -------------------------------------------------------------------------
@pytest.mark.parametrize("vector", _cases("cbor.json"))
def test_cbor_vector(vector: dict) -> None:
    data = bytes.fromhex(vector["hex"])
    expected = vector["expected"]
    if expected["verdict"] == "accept":
        value = wire.cbor_decode(data)
        assert diag(value) == expected["diag"]
        assert wire.cbor_encode(value) == data
    else:
        with pytest.raises(wire.WireError) as info:
            wire.cbor_decode(data)
        assert info.value.reason == expected["reason"]


# -- bare bodies ----------------------------------------------------------------------------
@pytest.mark.parametrize("vector", _cases("bodies.json"))
def test_body_vector(vector: dict) -> None:
    cls = BY_TYPE[vector["class"]]
    data = bytes.fromhex(vector["hex"])
    expected = vector["expected"]
    if expected["verdict"] == "accept":
        body = wire.decode_body(cls, data)
        assert type(body) is cls
        assert render(body) == expected["body"]
        assert wire.encode_body(body) == data
    else:
        with pytest.raises(wire.WireError) as info:
            wire.decode_body(cls, data)
        assert info.value.reason == expected["reason"]


# -- envelopes ------------------------------------------------------------------------------
@pytest.mark.parametrize("vector", _cases("envelopes.json"))
def test_envelope_vector(vector: dict) -> None:
    data = bytes.fromhex(vector["hex"])
    expected = vector["expected"]
    if expected["verdict"] == "accept":
        env = wire.open_envelope(data, max_size=vector["max_size"])
        check_envelope("envelopes.json", data, env, expected)
        fields = expected["envelope"]
        assert (env.v, env.net.hex(), env.type, env.signer.hex(), env.ts, env.nonce.hex(),
                env.sig.hex()) == (fields["v"], fields["net"], fields["type"], fields["signer"],
                                   fields["ts"], fields["nonce"], fields["sig"])
    else:
        with pytest.raises(wire.WireError) as info:
            wire.open_envelope(data, max_size=vector["max_size"])
        assert info.value.reason == expected["reason"]


# -- the gossip gate ------------------------------------------------------------------------
@pytest.mark.parametrize("vector", _cases("gate.json"))
def test_gate_vector(vector: dict) -> None:
    cfg = DOCS["gate.json"]["gate_config"]
    gate = GossipGate(GateConfig(network_id=bytes.fromhex(vector["network_id"]), **cfg))
    for i, step in enumerate(vector.get("before", ())):
        got = gate.check(bytes.fromhex(step["hex"]), step["topic"], step["now_ms"])
        assert got.reason == step["expected"]["reason"], f"before[{i}]"
        assert ("accept" if got.ok else "drop") == step["expected"]["verdict"]
    data = bytes.fromhex(vector["hex"])
    expected = vector["expected"]
    verdict = gate.check(data, vector["topic"], vector["now_ms"])
    assert verdict.reason == expected["reason"], verdict.detail
    assert ("accept" if verdict.ok else "drop") == expected["verdict"]
    if verdict.ok:
        assert verdict.envelope is not None
        check_envelope("gate.json", data, verdict.envelope, expected)
    else:
        assert verdict.envelope is None
        assert verdict.reason in DROP_REASONS
        if expected["body"] is not None:
            # dropped for a reason outside the envelope itself (topic, network, clock,
            # replay, rate): the envelope still opens to what the vector says
            env = wire.open_envelope(data, max_size=cfg["max_message"])
            check_envelope("gate.json", data, env, expected)
    assert sum(gate.stats.accepted.values()) + sum(gate.stats.dropped.values()) == \
        len(vector.get("before", ())) + 1


# -- genesis --------------------------------------------------------------------------------
@pytest.mark.parametrize("vector", _cases("genesis.json"))
def test_genesis_vector(vector: dict) -> None:
    text = vector["json"]
    expected = vector["expected"]
    if expected["verdict"] == "accept":
        for form in (text, text.encode()):
            g = wire.genesis_from_json(form)
            assert g.network_id.hex() == expected["network_id"]
        assert (g.name, g.founder.hex(), g.created, g.sig.hex(), g.total_supply) == (
            expected["name"], expected["founder"], expected["created"], expected["sig"],
            expected["total_supply"])
        assert [{"key": a.key.hex(), "amount": a.amount} for a in g.alloc] == expected["alloc"]
        assert 0 < len(g.name.encode()) <= 128 and g.total_supply < 2**63
        # the id is SHA-256 of the canonical CBOR of the signed document, sig included
        signed = {"v": 1, "name": g.name, "founder": g.founder, "created": g.created,
                  "alloc": [{"key": a.key, "amount": a.amount} for a in g.alloc], "sig": g.sig}
        assert hashlib.sha256(wire.cbor_encode(signed)).hexdigest() == expected["network_id"]
        assert wire.genesis_from_json(g.to_json()) == g
    else:
        with pytest.raises(wire.WireError) as info:
            wire.genesis_from_json(text)
        assert info.value.reason == expected["reason"]
