"""The wire's fast paths against the generic, checked ways they stand in for.

``encode_msg`` (behind ``seal`` and ``encode_body``) must write exactly what cbor2 writes
for ``to_obj(body)`` in canonical mode; ``seal`` exactly what the envelope map encoded by
cbor2 and signed gives, and ``seal_envelope`` what opening those bytes gives; ``from_obj``'s compiled plan must build what the field-by-field
check builds; ``open_envelope`` must verify the same bytes as re-encoding the envelope
without its ``sig``; and ``decode`` no longer re-encodes what it accepts, so here every
accepted input (canonical values, and their every one-byte change) is re-encoded by cbor2
and must come out the same.
"""

from __future__ import annotations

import random
from typing import Any

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_wire_schema import KEY, NET, STRATEGIES, exact, make

from meca_node import wire
from meca_node.wire import _cbor, _envelope, _schema


def reference_seal(body: Any, ts: int, nonce: bytes) -> bytes:
    """``seal`` as it was written before the fast path: the maps encoded by cbor2."""
    unsigned = {"v": wire.ENVELOPE_VERSION, "net": NET, "type": wire.type_id(type(body)),
                "signer": bytes(KEY.verify_key), "ts": ts, "nonce": nonce,
                "body": _schema.to_obj(body)}
    sig = KEY.sign(cbor2.dumps(unsigned, canonical=True)).signature
    return cbor2.dumps({**unsigned, "sig": sig}, canonical=True)


@pytest.mark.parametrize("cls", wire.BODY_TYPES, ids=lambda c: c.__name__)
def test_fast_paths_equal_the_checked_ways(cls: type) -> None:
    @settings(max_examples=40, deadline=None, derandomize=True, database=None)
    @given(body=STRATEGIES[cls], ts=st.integers(0, 2**63 - 1), nonce=exact(16))
    def run(body: Any, ts: int, nonce: bytes) -> None:
        obj = _schema.to_obj(body)
        data = wire.encode_body(body)
        assert data == _schema.encode_msg(body) == cbor2.dumps(obj, canonical=True)
        decoded = wire.cbor_decode(data)
        assert _schema.from_obj(cls, decoded) == _schema._from_obj_checked(cls, decoded) == body
        sealed, sig = wire.seal_with_sig(body, key=KEY, net=NET, ts=ts, nonce=nonce)
        assert sealed == wire.seal(body, key=KEY, net=NET, ts=ts, nonce=nonce) \
            == reference_seal(body, ts, nonce)
        env_obj = cbor2.loads(sealed)
        assert env_obj["sig"] == sig
        unsigned = {k: v for k, v in env_obj.items() if k != "sig"}
        assert _envelope._signed_part(sealed, env_obj) == cbor2.dumps(unsigned, canonical=True)
        # what a sealer acts on at once is what any receiver opens
        assert wire.seal_envelope(body, key=KEY, net=NET, ts=ts, nonce=nonce) == \
            wire.open_envelope(sealed, max_size=len(sealed))

    run()


def test_fast_path_leaves_the_unusual_to_the_checked_way() -> None:
    """A list where a tuple is declared, a subclass of int: the generic way decides, as
    before (encode_body encodes what to_obj gives; seal checks it as a receiver would)."""
    body = make(wire.PaymentRefusal)
    object.__setattr__(body, "commits", [b"commit"])
    assert wire.encode_body(body) == cbor2.dumps(_schema.to_obj(body), canonical=True)
    sealed = wire.seal(body, key=KEY, net=NET, ts=1, nonce=bytes(16))
    assert wire.open_envelope(sealed, max_size=len(sealed)).body == make(wire.PaymentRefusal)

    class Price(int):
        pass

    accept = make(wire.JobAccept, price=Price(5))
    assert wire.encode_body(accept) == wire.encode_body(make(wire.JobAccept, price=5))
    # an int the model refuses: encode_body and seal refuse it as the generic encoder does
    big = make(wire.JobAccept)
    object.__setattr__(big, "price", 2**64)
    for call in (lambda: wire.encode_body(big),
                 lambda: wire.seal(big, key=KEY, net=NET, ts=1, nonce=bytes(16))):
        with pytest.raises(wire.WireError, match="integer outside 64 bits"):
            call()


def test_from_obj_errors_keep_their_path() -> None:
    obj = wire.cbor_decode(wire.encode_body(make(wire.HostAdvert)))
    obj["hardware"]["gpus"][0]["model"] = "x" * 129
    with pytest.raises(wire.WireError) as info:
        _schema.from_obj(wire.HostAdvert, obj)
    assert info.value.detail.startswith("HostAdvert.hardware.gpus[0].model: text of 129 bytes")


# -- decode: what the scan accepts is canonical --------------------------------------------
values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.binary(max_size=40)
    | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=5)
    | st.dictionaries(st.text(max_size=30), inner, max_size=5),
    max_leaves=30)


def _accepted_reencodes(data: bytes) -> bool:
    try:
        value = wire.cbor_decode(data)
    except wire.WireError:
        return False
    assert cbor2.dumps(value, canonical=True) == data, data.hex()
    return True


@settings(max_examples=300, deadline=None, derandomize=True, database=None)
@given(value=values, seed=st.integers(0, 2**32))
def test_decode_accepts_only_what_reencodes_the_same(value: Any, seed: int) -> None:
    data = cbor2.dumps(value, canonical=True)
    assert _accepted_reencodes(data)
    assert wire.cbor_decode(data) == value
    rng = random.Random(seed)
    for _ in range(40):  # one byte changed, one inserted, one dropped
        at = rng.randrange(len(data))
        for changed in (data[:at] + bytes([rng.randrange(256)]) + data[at + 1:],
                        data[:at] + bytes([rng.randrange(256)]) + data[at:],
                        data[:at] + data[at + 1:]):
            _accepted_reencodes(changed)


def test_decode_flags_only_ints_below_int64() -> None:
    assert not _cbor._scan(cbor2.dumps(-(2**63)))
    assert _cbor._scan(b"\x3b" + (2**63).to_bytes(8, "big"))
    assert _cbor._scan(b"\x82\x00\x3b" + (2**64 - 1).to_bytes(8, "big"))

