#!/usr/bin/env python3
"""Generate the golden test vectors of the meca wire protocol v1: ``protocols/vectors/*.json``.

Everything is fixed (keys from 32-byte seeds, times, nonces, bodies) and Ed25519 signatures
are deterministic, so running this twice writes byte-identical files. The unit tests read
the committed files and never regenerate them; re-run this only on purpose (a wire change),
review the diff, and commit it with the change.

    .venv/bin/python scripts/gen_vectors.py           # (re)write protocols/vectors/
    .venv/bin/python scripts/gen_vectors.py --check   # exit 1 if a file would change

Each vector states the verdict *intended* by the spec; the generator asserts that the
current code agrees before it writes anything, so a vector can never record a bug.
See ``protocols/README.md`` ("Test vectors") for the file format.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import struct
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from nacl.signing import SigningKey

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from meca_node import wire  # noqa: E402
from meca_node.core.gate import GateConfig, GossipGate  # noqa: E402

OUT = ROOT / "protocols" / "vectors"
FORMAT = "meca-vectors/1"

# -- fixed inputs ---------------------------------------------------------------------------
SEEDS = {
    "alice": bytes([1]) * 32,    # client / payer
    "bob": bytes([2]) * 32,      # provider
    "carol": bytes([3]) * 32,    # developer
    "founder": bytes([4]) * 32,  # signs the genesis
}
KEYS = {name: SigningKey(seed) for name, seed in SEEDS.items()}
PUB = {name: bytes(k.verify_key) for name, k in KEYS.items()}

NOW_MS = 1_700_000_000_000          # 2023-11-14T22:13:20Z, the gate's clock in every vector
GENESIS_CREATED = 1_699_999_000_000
GENESIS = wire.make_genesis("meca-vectors", KEYS["founder"], GENESIS_CREATED,
                            [(PUB["alice"], 1_000_000), (PUB["bob"], 250_000),
                             (PUB["carol"], 5_000)])
NET = GENESIS.network_id
OTHER_GENESIS = wire.make_genesis("meca-other", KEYS["founder"], GENESIS_CREATED,
                                  [(PUB["alice"], 1_000_000)])
OTHER_NET = OTHER_GENESIS.network_id
GATE = GateConfig(network_id=NET)
MAX_GOSSIP = GATE.max_message
SKEW = GATE.skew_ms


def nonce(label: str) -> bytes:
    """A fixed 16-byte nonce per vector: SHA-256("meca-vector-nonce:" + label)[:16]."""
    return hashlib.sha256(b"meca-vector-nonce:" + label.encode()).digest()[:16]


def fill(n: int, label: str) -> bytes:
    """``n`` fixed pseudo-random bytes (SHA-256 in counter mode over ``label``)."""
    out = bytearray()
    i = 0
    while len(out) < n:
        out += hashlib.sha256(f"{label}:{i}".encode()).digest()
        i += 1
    return bytes(out[:n])


def utf8_text(n: int) -> str:
    """A text of exactly ``n`` UTF-8 bytes, mostly three-byte characters (so its length in
    characters is far below ``n``)."""
    return "\u4e16" * (n // 3) + ("", "x", "\u00e9")[n % 3]


JOB_ID = bytes.fromhex("0123456789abcdef0123456789abcdef")
OFFER_ID = hashlib.sha256(b"vector task offer").digest()


def sample_bodies() -> dict[str, Any]:
    """One (or two) valid bodies of every message type, in ``wire.BODY_TYPES`` order."""
    commit_env = wire.seal(
        wire.ResultCommit(job_id=JOB_ID, result_sha256=hashlib.sha256(b"hello, world").digest(),
                          size=12),
        key=KEYS["bob"], net=NET, ts=NOW_MS - 2_000, nonce=nonce("commit"))

    def receipt(seq: int, price: int) -> wire.Receipt:
        return wire.Receipt(seq=seq, prev=hashlib.sha256(b"prev entry").digest(), job_id=JOB_ID,
                            offer_id=OFFER_ID, commit=commit_env, provider=PUB["bob"],
                            developer=PUB["carol"], price=price, fee=5)

    fork_a = wire.seal(receipt(7, 100), key=KEYS["alice"], net=NET, ts=NOW_MS - 60_000,
                       nonce=nonce("fork-a"))
    fork_b = wire.seal(receipt(7, 90), key=KEYS["alice"], net=NET, ts=NOW_MS - 59_000,
                       nonce=nonce("fork-b"))
    # alice's first entry pays bob; bob's first entry receives it (source: SHA-256 of the
    # envelope of envelopes.json's valid_Transfer)
    transfer = wire.Transfer(seq=0, prev=bytes(32), to=PUB["bob"], amount=1_500,
                             memo="for the GPU hours, danke schön")
    transfer_env = wire.seal(transfer, key=KEYS["alice"], net=NET, ts=NOW_MS,
                             nonce=nonce("Transfer"))
    return {
        "HostAdvert": wire.HostAdvert(
            roles=("provider", "client"), arch="amd64",
            hardware=wire.Hardware(cpu_count=16, cpu_model="AMD EPYC 7R13", cpu_mhz=3600,
                                   mem_mib=65536, disk_mib=512_000,
                                   gpus=(wire.Gpu(model="NVIDIA H100 80GB HBM3", mem_mib=81559),)),
            free=wire.Resources(cpu_milli=12_000, mem_mib=49152, gpu_count=1), price=25,
            environments=(wire.Environment(name="docker", score=1000),
                          wire.Environment(name="docker+gpu", score=2400)),
            cached_images=("bafybeigdyrzt5sfp7udm7hu76uh7y26nf3efuylqabf3oclgtqy55fbzdi",),
            queue=0, addrs=("/ip4/203.0.113.7/tcp/4601",)),
        "HostAdvert.minimal": wire.HostAdvert(
            roles=(), arch="arm64",
            hardware=wire.Hardware(cpu_count=4, cpu_model="", cpu_mhz=0, mem_mib=0, disk_mib=0),
            free=wire.Resources(cpu_milli=0, mem_mib=0, gpu_count=0), price=0, environments=(),
            cached_images=(), queue=3, addrs=()),
        "TaskOffer": wire.TaskOffer(
            name="hello-world", description="Echoes its input. Grüße, 世界!",
            image_cid="bafybeigdyrzt5sfp7udm7hu76uh7y26nf3efuylqabf3oclgtqy55fbzdi", arch="amd64",
            resources=wire.Resources(cpu_milli=1500, mem_mib=256, gpu_count=0),
            environment="docker", fee=5,
            example_input_sha256=hashlib.sha256(b'{"name": "meca"}').digest(),
            example_output_sha256=hashlib.sha256(b'{"hello": "meca"}').digest()),
        "TaskWithdraw": wire.TaskWithdraw(name="hello-world", offer_id=OFFER_ID),
        "JobRequest": wire.JobRequest(job_id=JOB_ID, offer_id=OFFER_ID,
                                      input=b'{"name": "meca"}', input_cid="", max_price=120,
                                      deadline=NOW_MS + 600_000, replicas=3),
        "JobAccept": wire.JobAccept(job_id=JOB_ID, price=100, queue_position=2),
        "JobReject": wire.JobReject(job_id=JOB_ID, reason="busy", detail="queue full (1024)"),
        "JobProgress": wire.JobProgress(job_id=JOB_ID, stage="running", percent=42,
                                        detail="step 42 of 100"),
        "ResultCommit": wire.decode_body(wire.ResultCommit, wire.encode_body(
            wire.open_envelope(commit_env, max_size=MAX_GOSSIP).body)),
        "JobResult": wire.JobResult(job_id=JOB_ID, output=b'{"hello": "meca"}', output_cid="",
                                    log=b"greeted meca\n"),
        "JobResult.cid": wire.JobResult(
            job_id=JOB_ID, output=b"",
            output_cid="bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku"),
        "Receipt": receipt(8, 100),
        "Transfer": transfer,
        "Receive": wire.Receive(seq=0, prev=bytes(32),
                                source=hashlib.sha256(transfer_env).digest(), payer=PUB["alice"],
                                payer_seq=0, amount=1_500),
        "FraudProof": wire.FraudProof(kind="fork", account=PUB["alice"], first=fork_a,
                                      second=fork_b),
        "EntryRequest": wire.EntryRequest(account=PUB["alice"], from_seq=3, count=64),
        "PaymentRefusal": wire.PaymentRefusal(job_id=JOB_ID, commits=(commit_env,)),
        # relayed by bob: alice's transfer and one of her entries at seq 7
        "Entries": wire.Entries(entries=(wire.SignedEntry(raw=transfer_env),
                                         wire.SignedEntry(raw=fork_a))),
    }


BODIES = sample_bodies()
assert {type(b) for b in BODIES.values()} == set(wire.BODY_TYPES)


# -- rendering ------------------------------------------------------------------------------
def render(value: Any) -> Any:
    """JSON rendering of a decoded body: field names as keys, bytes as lowercase hex."""
    if dataclasses.is_dataclass(value):
        return {f.name: render(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, tuple):
        return [render(v) for v in value]
    return value


def diag(value: Any) -> str:
    """CBOR diagnostic notation (RFC 8949 section 8) of a decoded value of our data model."""
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, bytes):
        return f"h'{value.hex()}'"
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(diag(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{diag(k)}: {diag(v)}" for k, v in value.items()) + "}"
    raise TypeError(type(value))


# -- a tiny CBOR writer that can also write what the canonical encoder never does -----------
def head(major: int, n: int, width: int | None = None) -> bytes:
    """A CBOR head; ``width`` forces the argument size (0 = in the initial byte, 1/2/4/8)."""
    if width is None:
        width = 0 if n < 24 else 1 if n < 2**8 else 2 if n < 2**16 else 4 if n < 2**32 else 8
    ib = major << 5
    if width == 0:
        return bytes([ib | n])
    code = {1: 24, 2: 25, 4: 26, 8: 27}[width]
    return bytes([ib | code]) + n.to_bytes(width, "big")


Tweak = Callable[[tuple, Any], "bytes | None"]


def enc(value: Any, tweak: Tweak | None = None, sort: bool = True, path: tuple = ()) -> bytes:
    """Encode like ``wire.cbor_encode`` unless ``tweak(path, value)`` returns other bytes for
    an item, or ``sort=False`` keeps map keys in insertion order."""
    if tweak is not None:
        out = tweak(path, value)
        if out is not None:
            return out
    if value is False:
        return b"\xf4"
    if value is True:
        return b"\xf5"
    if value is None:
        return b"\xf6"
    if isinstance(value, int):
        return head(0, value) if value >= 0 else head(1, -1 - value)
    if isinstance(value, bytes):
        return head(2, len(value)) + value
    if isinstance(value, str):
        raw = value.encode()
        return head(3, len(raw)) + raw
    if isinstance(value, (list, tuple)):
        return head(4, len(value)) + b"".join(
            enc(v, tweak, sort, path + (i,)) for i, v in enumerate(value))
    if isinstance(value, dict):
        items = [(enc(k), enc(v, tweak, sort, path + (k,))) for k, v in value.items()]
        if sort:
            items.sort(key=lambda kv: kv[0])  # RFC 8949 4.2.1: bytewise order of encoded keys
        return head(5, len(items)) + b"".join(k + v for k, v in items)
    if isinstance(value, float):
        return b"\xfb" + struct.pack(">d", value)
    raise TypeError(type(value))


def at(target: tuple, raw: bytes) -> Tweak:
    return lambda path, _value: raw if path == target else None


# -- envelopes built by hand (so they can be re-signed with anything in them) ---------------
def to_obj(body: Any) -> dict:
    return wire.cbor_decode(wire.encode_body(body))


def unsigned_env(body_obj: Any, type_: str, *, signer: str = "alice", net: bytes = NET,
                 ts: int = NOW_MS, label: str = "", v: Any = 1) -> dict:
    return {"v": v, "net": net, "type": type_, "signer": PUB[signer], "ts": ts,
            "nonce": nonce(label or type_), "body": body_obj}


def signed(unsigned: dict, key: str = "alice") -> dict:
    """``unsigned`` plus the signature by ``key`` over its canonical CBOR (RFC 8949 4.2.1)."""
    sig = KEYS[key].sign(enc(unsigned)).signature
    return {**unsigned, "sig": sig}


def sealed(body: Any, *, signer: str = "alice", net: bytes = NET, ts: int = NOW_MS,
           label: str = "") -> bytes:
    data = wire.seal(body, key=KEYS[signer], net=net, ts=ts,
                     nonce=nonce(label or wire.type_id(type(body))))
    # our hand-built form must equal the library's
    assert enc(signed(unsigned_env(to_obj(body), wire.type_id(type(body)), signer=signer,
                                   net=net, ts=ts, label=label), signer)) == data
    return data


def flip(data: bytes, index: int, mask: int = 1) -> bytes:
    b = bytearray(data)
    b[index] ^= mask
    return bytes(b)


# -- the vectors ----------------------------------------------------------------------------
def _outcome(fn: Callable[[], Any]) -> tuple[Any, str | None]:
    try:
        return fn(), None
    except wire.WireError as exc:
        return None, exc.reason


def cbor_vectors() -> list[dict]:
    vs: list[dict] = []

    def ok(name: str, value: Any, desc: str) -> None:
        data = wire.cbor_encode(value)
        assert enc(value) == data
        got, reason = _outcome(lambda: wire.cbor_decode(data))
        assert reason is None and got == value, (name, reason)
        vs.append({"name": name, "description": desc, "hex": data.hex(),
                   "expected": {"verdict": "accept", "reason": None, "diag": diag(got)}})

    def bad(name: str, data: bytes, desc: str) -> None:
        _, reason = _outcome(lambda: wire.cbor_decode(data))
        assert reason == "malformed", (name, reason)
        vs.append({"name": name, "description": desc, "hex": data.hex(),
                   "expected": {"verdict": "reject", "reason": "malformed", "diag": None}})

    for n in (0, 23, 24, 255, 256, 65535, 65536, 2**32 - 1, 2**32, 2**64 - 1):
        ok(f"uint_{n}", n, f"unsigned integer {n} in its shortest form")
    for n in (-1, -24, -25, -256, -257, -(2**63)):
        ok(f"nint_{-n}", n, f"negative integer {n} in its shortest form")
    ok("text_empty", "", "empty text string")
    utf8 = "Grüße, 世界"
    ok("text_utf8", utf8, f"UTF-8 text of {len(utf8)} characters in {len(utf8.encode())} bytes; "
       "the length in the head, and every text cap, counts the bytes")
    ok("bytes_empty", b"", "empty byte string")
    ok("bytes_4", b"\x00\x01\xfe\xff", "byte string")
    ok("bools_null", [True, False, None], "true, false and null")
    ok("map_order", {"b": 1, "aa": 2, "a": 3, "ab": 4},
       "map keys sorted bytewise by their encoding: shorter text keys first")
    ok("empty_containers", {"": [], "x": {}}, "empty array and map; the empty text key")
    nest16: Any = 0
    for _ in range(16):
        nest16 = [nest16]
    ok("depth_16", nest16, "16 nested arrays around an integer (the deepest item is at depth 16)")

    bad("depth_17", b"\x81" * 17 + b"\x00", "17 nested arrays: an item at depth 17")
    bad("uint_not_shortest_1", b"\x18\x17", "23 with a 1-byte argument")
    bad("uint_not_shortest_2", b"\x19\x00\xff", "255 with a 2-byte argument")
    bad("uint_not_shortest_8", b"\x1b" + (2**32 - 1).to_bytes(8, "big"), "2^32-1 in 8 bytes")
    bad("len_not_shortest", b"\x58\x01\x00", "1-byte string with its length in a 1-byte argument")
    bad("nint_below_int64", b"\x3b" + (2**63).to_bytes(8, "big"), "-2^63-1: outside 64-bit ints")
    bad("bignum_tag", b"\xc2\x49\x01" + bytes(8), "2^64 as a bignum (tag 2): tags are refused")
    bad("bignum_small", b"\xc2\x41\x01", "1 as a bignum: tags are refused")
    bad("tag_self_describe", b"\xd9\xd9\xf7\x00", "tag 55799 (self-described CBOR) around 0")
    bad("tag_epoch", b"\xc1\x1a\x65\x53\xf1\x00", "tag 1 (epoch time)")
    bad("float16", b"\xf9\x3c\x00", "half float 1.0: floats are refused")
    bad("float64", b"\xfb" + struct.pack(">d", 1.5), "double 1.5: floats are refused")
    bad("undefined", b"\xf7", "undefined")
    bad("simple_16", b"\xf0", "simple value 16")
    bad("indefinite_bytes", b"\x5f\x41\x00\xff", "indefinite-length byte string")
    bad("indefinite_text", b"\x7f\x61a\xff", "indefinite-length text string")
    bad("indefinite_array", b"\x9f\x00\xff", "indefinite-length array")
    bad("indefinite_map", b"\xbf\x61a\x00\xff", "indefinite-length map")
    bad("map_keys_unsorted", b"\xa2\x62aa\x01\x61b\x02", "map keys out of canonical order")
    bad("map_duplicate_key", b"\xa2\x61a\x01\x61a\x02", "duplicate map key")
    bad("map_int_key", b"\xa1\x01\x02", "integer map key: only text keys are allowed")
    bad("map_bytes_key", b"\xa1\x41a\x02", "byte-string map key")
    bad("trailing_byte", b"\x00\x00", "a second item after the first")
    bad("empty_input", b"", "no item at all")
    bad("truncated", b"\x62a", "text string shorter than its length")
    bad("lone_break", b"\xff", "a break code outside an indefinite-length item")
    bad("bad_utf8", b"\x62\xc3\x28", "text string that is not valid UTF-8")
    bad("reserved_ai_28", b"\x1c", "reserved additional information 28")
    # refused from the raw bytes, before any object is built from them (a generic decoder
    # would turn these into datetimes, sets, decimals, regexes, shared or cyclic objects)
    bad("tag_datetime_text", b"\xc0\x74" + b"2023-11-14T22:13:20Z",
        "tag 0 (date/time string)")
    bad("tag_decimal_fraction", b"\xc4\x82\x21\x19\x6a\xb3", "tag 4 (decimal fraction 273.15)")
    bad("tag_embedded_cbor", b"\xd8\x18\x41\x00", "tag 24 (embedded CBOR item)")
    bad("tag_shared_cycle", b"\xd8\x1c\x81\xd8\x1d\x00",
        "tags 28/29 (value sharing): an array that contains itself")
    bad("tag_regex", b"\xd8\x23\x62a*", "tag 35 (regular expression)")
    bad("tag_set", b"\xd9\x01\x02\x82\x01\x02", "tag 258 (set of 1, 2)")
    bad("tag_in_map_value", b"\xa1\x61a\xc1\x00", "a tagged value inside a map")
    bad("tag_on_map_key", b"\xa1\xc0\x61a\x00", "a map key wrapped in a tag")
    bad("float32", b"\xfa\x3f\x80\x00\x00", "single float 1.0")
    bad("float16_nan", b"\xf9\x7e\x00", "half float NaN")
    bad("float64_negative_zero", b"\xfb\x80" + bytes(7), "double -0.0")
    bad("float_in_array", b"\x82\x01\xf9\x3c\x00", "a half float as the second array item")
    bad("simple_false_long", b"\xf8\x14", "false written as a one-byte simple value (20)")
    bad("simple_32", b"\xf8\x20", "simple value 32")
    bad("indefinite_array_in_map", b"\xa1\x61a\x9f\x01\xff",
        "an indefinite-length array as a map value")
    bad("indefinite_text_key", b"\xa1\x7f\x61a\xff\x00", "an indefinite-length text map key")
    bad("indefinite_empty_bytes", b"\x5f\xff", "an indefinite-length byte string of no chunks")
    bad("array_len_not_shortest", b"\x98\x01\x00", "1-item array with its length in 1 byte")
    bad("map_len_not_shortest", b"\xb8\x01\x61a\x00", "1-entry map with its length in 1 byte")
    bad("array_longer_than_input", b"\x9b" + (2**63).to_bytes(8, "big"),
        "an array announcing 2^63 items in a 9-byte input")
    bad("break_in_array", b"\x82\x00\xff", "a break code as an item of a definite array")
    nest_map: Any = 0
    for _ in range(17):
        nest_map = {"a": nest_map}
    bad("depth_17_maps", enc(nest_map), "17 nested maps: a value at depth 17")
    return vs


def body_vectors() -> list[dict]:
    vs: list[dict] = []
    by_name = {cls.TYPE: cls for cls in wire.BODY_TYPES}

    def add(name: str, cls: type, data: bytes, desc: str, reason: str | None) -> None:
        got, why = _outcome(lambda: wire.decode_body(cls, data))
        assert why == reason, (name, why, reason)
        if reason is None:
            assert wire.encode_body(got) == data
        vs.append({"name": name, "description": desc, "class": cls.TYPE, "hex": data.hex(),
                   "expected": {"verdict": "accept" if reason is None else "reject",
                                "reason": reason,
                                "body": render(got) if reason is None else None}})

    for label, body in BODIES.items():
        add(f"valid_{label}", type(body), wire.encode_body(body),
            f"a valid {type(body).TYPE} body", None)

    def mutate(label: str, fn: Callable[[dict], None]) -> bytes:
        obj = to_obj(BODIES[label])
        fn(obj)
        return enc(obj)

    def setp(*path_value: Any) -> Callable[[dict], None]:
        *path, value = path_value

        def apply(obj: Any) -> None:
            for p in path[:-1]:
                obj = obj[p]
            obj[path[-1]] = value
        return apply

    def delete(key: str) -> Callable[[dict], None]:
        return lambda obj: obj.pop(key)

    R = "malformed"
    cases: list[tuple[str, str, Callable[[dict], None], str, str | None]] = [
        ("missing_field", "JobAccept", delete("price"), "a required field is missing", R),
        ("unknown_field", "JobAccept", setp("tip", 1), "a field this version does not know", R),
        ("job_id_15", "JobAccept", setp("job_id", bytes(15)), "job_id must be 16 bytes", R),
        ("job_id_17", "JobAccept", setp("job_id", bytes(17)), "job_id must be 16 bytes", R),
        ("negative_price", "JobAccept", setp("price", -1), "amounts are unsigned", R),
        ("price_as_text", "JobAccept", setp("price", "100"), "wrong type", R),
        ("price_as_bool", "JobAccept", setp("price", True), "a boolean is not an integer", R),
        ("price_u64_max", "JobAccept", setp("price", 2**64 - 1),
         "the largest unsigned integer is a valid amount", None),
        ("reject_reason_unknown", "JobReject", setp("reason", "because"),
         "reason is an enumeration", R),
        ("progress_percent_100", "JobProgress", setp("percent", 100), "percent is 0..100", None),
        ("progress_percent_101", "JobProgress", setp("percent", 101), "percent is 0..100", R),
        ("progress_stage_unknown", "JobProgress", setp("stage", "done"),
         "stage is an enumeration", R),
        ("result_both", "JobResult", setp("output_cid", "bafkreiabc"),
         "output inline and output_cid are exclusive", R),
        ("request_both", "JobRequest", setp("input_cid", "bafkreiabc"),
         "input inline and input_cid are exclusive", R),
        ("request_offer_id_31", "JobRequest", setp("offer_id", bytes(31)),
         "offer_id must be 32 bytes", R),
        ("commit_sha_33", "ResultCommit", setp("result_sha256", bytes(33)),
         "result_sha256 must be 32 bytes", R),
        ("offer_name_empty", "TaskOffer", setp("name", ""), "an offer needs a name", R),
        ("offer_name_128", "TaskOffer", setp("name", "n" * 128), "name cap is 128", None),
        ("offer_name_129", "TaskOffer", setp("name", "n" * 129), "name cap is 128", R),
        ("offer_name_128_bytes_multibyte", "TaskOffer", setp("name", utf8_text(128)),
         "text caps count UTF-8 bytes: 42 three-byte characters and one two-byte character, "
         "exactly 128 bytes, are within the cap of 128", None),
        ("offer_name_129_bytes_multibyte", "TaskOffer", setp("name", utf8_text(129)),
         "43 three-byte characters: 43 characters but 129 bytes, one over the cap of 128", R),
        ("offer_name_128_chars_256_bytes", "TaskOffer", setp("name", "é" * 128),
         "128 two-byte characters are 256 bytes: over the cap of 128", R),
        ("offer_description_8192_bytes_emoji", "TaskOffer",
         setp("description", "\U0001f642" * 2048),
         "2048 four-byte characters, exactly the cap of 8192 bytes", None),
        ("offer_description_8193_bytes_emoji", "TaskOffer",
         setp("description", "\U0001f642" * 2048 + "x"),
         "2048 four-byte characters and one ASCII character: 8193 bytes", R),
        ("advert_image_1024_bytes_multibyte", "HostAdvert",
         setp("cached_images", [utf8_text(1024)]),
         "a list item of text exactly at the default cap of 1024 bytes", None),
        ("advert_image_1025_bytes_multibyte", "HostAdvert",
         setp("cached_images", [utf8_text(1025)]),
         "a list item of text of 1025 bytes (342 characters)", R),
        ("offer_description_8193", "TaskOffer", setp("description", "d" * 8193),
         "description cap is 8192", R),
        ("offer_sha_31", "TaskOffer", setp("example_input_sha256", bytes(31)),
         "hashes are 32 bytes", R),
        ("advert_roles_3", "HostAdvert", setp("roles", ["provider", "client", "developer"]),
         "roles cap is 3", None),
        ("advert_roles_4", "HostAdvert", setp("roles", ["provider"] * 4), "roles cap is 3", R),
        ("advert_role_unknown", "HostAdvert", setp("roles", ["miner"]), "roles are an enum", R),
        ("advert_roles_not_list", "HostAdvert", setp("roles", "provider"),
         "a list is required", R),
        ("advert_gpu_mem_negative", "HostAdvert", setp("hardware", "gpus", 0, "mem_mib", -1),
         "nested fields are checked too", R),
        ("advert_gpu_unknown_field", "HostAdvert", setp("hardware", "gpus", 0, "vendor", "x"),
         "nested maps are closed too", R),
        ("advert_addrs_17", "HostAdvert", setp("addrs", ["/ip4/10.0.0.1/tcp/1"] * 17),
         "addrs cap is 16", R),
        ("advert_image_1025", "HostAdvert", setp("cached_images", ["x" * 1025]),
         "list items of text have the default cap of 1024", R),
        ("fraud_kind_unknown", "FraudProof", setp("kind", "theft"), "kind is an enum", R),
        ("fraud_first_16384", "FraudProof", setp("first", fill(16384, "fraud-first")),
         "first at its cap of 16384 bytes", None),
        ("fraud_first_16385", "FraudProof", setp("first", fill(16385, "fraud-first")),
         "first one byte over its cap of 16384", R),
        ("fraud_second_16385", "FraudProof", setp("second", fill(16385, "fraud-second")),
         "second one byte over its cap of 16384", R),
        ("receipt_commit_4097", "Receipt", setp("commit", bytes(4097)), "commit cap is 4096", R),
        ("receipt_prev_0", "Receipt", setp("prev", b""), "prev is exactly 32 bytes", R),
        ("transfer_amount_0", "Transfer", setp("amount", 0), "a transfer moves more than 0", R),
        ("transfer_amount_u64_max", "Transfer", setp("amount", 2**64 - 1),
         "the largest unsigned integer is a valid amount (a ledger refuses it as an overdraft)",
         None),
        ("transfer_to_31", "Transfer", setp("to", bytes(31)), "to is a 32-byte key", R),
        ("transfer_memo_256_bytes_multibyte", "Transfer", setp("memo", utf8_text(256)),
         "a memo of exactly 256 UTF-8 bytes", None),
        ("transfer_memo_257_bytes_multibyte", "Transfer", setp("memo", utf8_text(257)),
         "a memo of 257 UTF-8 bytes: one over the cap of 256", R),
        ("receive_amount_0", "Receive", setp("amount", 0), "a receive claims more than 0", R),
        ("receive_source_33", "Receive", setp("source", bytes(33)),
         "source is a 32-byte SHA-256", R),
        ("receive_payer_seq_negative", "Receive", setp("payer_seq", -1), "seq is unsigned", R),
        ("entry_request_count_0", "EntryRequest", setp("count", 0), "count is 1..64", R),
        ("entry_request_count_64", "EntryRequest", setp("count", 64), "count at its cap", None),
        ("entry_request_count_65", "EntryRequest", setp("count", 65), "count is 1..64", R),
    ]
    for name, label, fn, desc, reason in cases:
        add(name, by_name[label], mutate(label, fn), desc, reason)
    accept = wire.encode_body(BODIES["JobAccept"])
    add("not_a_map", wire.JobAccept, enc([JOB_ID, 100, 2]), "a body is a map, not an array", R)
    add("keys_unsorted", wire.JobAccept,
        enc({"job_id": JOB_ID, "price": 100, "queue_position": 2}, sort=False),
        "the same body with map keys out of canonical order", R)
    add("int_not_shortest", wire.JobAccept,
        enc(to_obj(BODIES["JobAccept"]), at(("price",), b"\x19\x00\x64")),
        "price 100 written with a 2-byte argument", R)
    add("trailing_garbage", wire.JobAccept, accept + b"\x00", "one byte after the body", R)
    add("other_type", wire.JobAccept, wire.encode_body(BODIES["JobReject"]),
        "a JobReject body is not a JobAccept", R)
    request = to_obj(BODIES["JobRequest"])
    add("tag_in_body", wire.JobRequest, enc(request, at(("deadline",), b"\xc1" + enc(
        request["deadline"] // 1000))), "deadline as tag 1 (epoch seconds) around an integer", R)
    add("float_in_body", wire.JobAccept,
        enc(to_obj(BODIES["JobAccept"]), at(("price",), b"\xf9\x56\x40")),
        "price 100 as a half float", R)
    add("indefinite_in_body", wire.JobReject,
        enc(to_obj(BODIES["JobReject"]), at(("detail",), b"\x7f\x65queue\x6c full (1024)\xff")),
        "detail as an indefinite-length text of two chunks", R)
    return vs


def envelope_vectors() -> list[dict]:
    vs: list[dict] = []

    def add(name: str, data: bytes, desc: str, reason: str | None,
            max_size: int = MAX_GOSSIP) -> None:
        got, why = _outcome(lambda: wire.open_envelope(data, max_size=max_size))
        assert why == reason, (name, why, reason)
        exp: dict[str, Any] = {"verdict": "accept" if reason is None else "reject",
                               "reason": reason, "type": None, "body": None}
        if got is not None:
            exp["type"] = got.type
            exp["body"] = render(got.body)
            exp["envelope"] = {"v": got.v, "net": got.net.hex(), "type": got.type,
                               "signer": got.signer.hex(), "ts": got.ts,
                               "nonce": got.nonce.hex(), "sig": got.sig.hex()}
        vs.append({"name": name, "description": desc, "max_size": max_size, "hex": data.hex(),
                   "expected": exp})

    signer_of = {"HostAdvert": "bob", "ResultCommit": "bob", "JobAccept": "bob", "Receive": "bob",
                 "JobReject": "bob", "JobProgress": "bob", "JobResult": "bob",
                 "TaskOffer": "carol", "TaskWithdraw": "carol"}
    for label, body in BODIES.items():
        add(f"valid_{label}", sealed(body, signer=signer_of.get(type(body).TYPE, "alice"),
                                     label=label),
            f"a valid {wire.type_id(type(body))} envelope", None)

    def resigned(label: str, fn: Callable[[dict], None], type_: str | None = None) -> bytes:
        body = BODIES[label]
        obj = to_obj(body)
        fn(obj)
        return enc(signed(unsigned_env(obj, type_ or wire.type_id(type(body)), label=label)))

    def setf(k: str, v: Any) -> Callable[[dict], None]:
        return lambda o: o.__setitem__(k, v)

    R = "malformed"
    add("job_request_job_id_15", resigned("JobRequest", setf("job_id", bytes(15))),
        "validly signed, but job_id is 15 bytes", R)
    add("job_progress_101", resigned("JobProgress", setf("percent", 101)),
        "validly signed, but percent is over 100", R)
    add("job_reject_reason", resigned("JobReject", setf("reason", "because")),
        "validly signed, but an unknown reject reason", R)
    add("job_result_both", resigned("JobResult", setf("output_cid", "bafkreiabc")),
        "validly signed, but output both inline and as a CID", R)
    add("job_accept_as_reject", resigned("JobAccept", lambda o: None, "JobReject/1"),
        "a JobAccept body under the type JobReject/1", R)
    # (a FraudProof with both at their cap of 16384 bytes: gate.json accept_FraudProof_at_caps)
    add("transfer_amount_0", resigned("Transfer", setf("amount", 0)),
        "validly signed, but a transfer of 0", R)
    add("fraud_first_16385", resigned("FraudProof",
                                      setf("first", fill(16385, "fraud-first"))),
        "validly signed, but first is 16385 bytes (cap 16384)", R)

    # not canonical CBOR, yet signed over exactly the bytes sent (minus sig): refused as
    # malformed by the decoder, whatever the signature says
    def raw_signed(label: str, tweak: Tweak, signer: str = "alice") -> bytes:
        body = BODIES[label]
        unsigned = unsigned_env(to_obj(body), wire.type_id(type(body)), signer=signer,
                                label=f"raw-{label}")
        sig = KEYS[signer].sign(enc(unsigned, tweak)).signature
        return enc({**unsigned, "sig": sig}, tweak)

    deadline = BODIES["JobRequest"].deadline
    add("tag_in_body", raw_signed("JobRequest", at(("body", "deadline"),
                                                   b"\xc1" + enc(deadline // 1000))),
        "body.deadline as tag 1 (epoch seconds), signed over these bytes", R)
    add("float_in_body", raw_signed("JobAccept", at(("body", "price"), b"\xf9\x56\x40"),
                                    "bob"),
        "body.price 100 as a half float, signed over these bytes", R)

    def indefinite_map(path: tuple, value: Any) -> bytes | None:
        if path != ("body",):
            return None
        return b"\xbf" + b"".join(enc(k) + enc(value[k]) for k in sorted(
            value, key=lambda k: enc(k))) + b"\xff"
    add("indefinite_body_map", raw_signed("JobAccept", indefinite_map, "bob"),
        "body as an indefinite-length map, signed over these bytes", R)
    add("tagged_envelope", b"\xd9\xd9\xf7" + sealed(BODIES["JobAccept"], signer="bob",
                                                    label="JobAccept"),
        "a valid envelope wrapped in tag 55799 (self-described CBOR)", R)

    accept = sealed(BODIES["JobAccept"], signer="bob", label="JobAccept")
    add("max_size_exact", accept, "an envelope of exactly max_size bytes", None,
        max_size=len(accept))
    add("max_size_exceeded", accept,
        "an envelope one byte over max_size is refused before it is decoded", "oversize",
        max_size=len(accept) - 1)
    return vs


def gate_vectors() -> list[dict]:
    vs: list[dict] = []
    topic_of = {"HostAdvert": wire.TOPIC_ADVERTS, "TaskOffer": wire.TOPIC_OFFERS,
                "TaskWithdraw": wire.TOPIC_OFFERS,
                "Receipt": wire.TOPIC_RECEIPTS, "Transfer": wire.TOPIC_RECEIPTS,
                "Receive": wire.TOPIC_RECEIPTS, "FraudProof": wire.TOPIC_RECEIPTS,
                "Entries": wire.TOPIC_RECEIPTS}

    def run(steps: list[tuple[bytes, str, int]]) -> list[Any]:
        gate = GossipGate(GateConfig(network_id=NET))
        return [gate.check(d, t, n) for d, t, n in steps]

    def expect(verdict: Any, data: bytes) -> dict:
        exp: dict[str, Any] = {"verdict": "accept" if verdict.ok else "drop",
                               "reason": verdict.reason, "type": None, "body": None}
        env, _ = _outcome(lambda: wire.open_envelope(data, max_size=MAX_GOSSIP))
        if env is not None:  # decodable and validly signed: say what it holds
            exp["type"] = env.type
            exp["body"] = render(env.body)
        return exp

    def add(name: str, data: bytes, desc: str, reason: str | None, *,
            topic: str = wire.TOPIC_RECEIPTS, now: int = NOW_MS,
            before: list[tuple[bytes, str, int, str | None]] = ()) -> None:
        verdicts = run([(d, t, n) for d, t, n, _ in before] + [(data, topic, now)])
        for (_d, _t, _n, want), got in zip(before, verdicts[:-1], strict=True):
            assert got.reason == want, (name, "before", got.reason, want)
        assert verdicts[-1].reason == reason, (name, verdicts[-1].reason, reason)
        if reason is None:
            assert verdicts[-1].envelope.raw == data
        v: dict[str, Any] = {"name": name, "description": desc, "topic": topic, "now_ms": now,
                             "network_id": NET.hex(), "hex": data.hex()}
        if before:
            v["before"] = [{"hex": d.hex(), "topic": t, "now_ms": n,
                            "expected": {"verdict": "accept" if w is None else "drop",
                                         "reason": w}}
                           for (d, t, n, w) in before]
        v["expected"] = expect(verdicts[-1], data)
        vs.append(v)

    for label in ("HostAdvert", "HostAdvert.minimal", "TaskOffer", "TaskWithdraw", "Receipt",
                  "Transfer", "Receive", "FraudProof", "Entries"):
        body = BODIES[label]
        signer = {"HostAdvert": "bob", "TaskOffer": "carol", "TaskWithdraw": "carol",
                  "Receive": "bob", "Entries": "bob"}.get(type(body).TYPE, "alice")
        add(f"accept_{label}", sealed(body, signer=signer, label=f"gate-{label}"),
            f"a valid {wire.type_id(type(body))} on {topic_of[type(body).TYPE]}", None,
            topic=topic_of[type(body).TYPE])

    receipt = BODIES["Receipt"]
    good = sealed(receipt, label="gate-receipt")

    # an Entries message: each entry is checked as if gossiped alone
    def entries(*raws: bytes) -> wire.Entries:
        return wire.Entries(entries=tuple(wire.SignedEntry(raw=r) for r in raws))

    good_env = wire.cbor_decode(good)
    add("entries_inner_bad_signature",
        sealed(entries(enc({**good_env, "sig": flip(good_env["sig"], 63)})), signer="bob",
               label="gate-entries-bad-sig"),
        "an Entries message signed by bob whose entry's signature is broken", "bad_signature")
    add("entries_inner_other_network",
        sealed(entries(good, sealed(receipt, net=OTHER_NET, label="gate-entries-net")),
               signer="bob", label="gate-entries-other-net"),
        "an Entries message whose second entry is signed for another network",
        "wrong_network")
    add("entries_inner_not_an_entry",
        sealed(entries(sealed(BODIES["TaskOffer"], signer="carol", label="gate-entries-offer")),
               signer="bob", label="gate-entries-offer-in"),
        "an Entries message that carries a TaskOffer, not an account chain entry",
        "wrong_topic")
    add("entries_inner_stale_is_fine",
        sealed(entries(sealed(receipt, ts=NOW_MS - 10 * SKEW, label="gate-entries-old")),
               signer="bob", label="gate-entries-old-in"),
        "an entry signed long ago, passed on in a fresh Entries message: entries carry no "
        "clock or replay check of their own", None)

    # signature
    env = wire.cbor_decode(good)
    add("bad_signature_sig_bit", enc({**env, "sig": flip(env["sig"], 63)}),
        "the lowest bit of the last sig byte flipped", "bad_signature")
    add("bad_signature_sig_zero", enc({**env, "sig": bytes(64)}), "sig all zero bytes",
        "bad_signature")
    add("bad_signature_signer_swapped", enc({**env, "signer": PUB["bob"]}),
        "signed by alice, but signer says bob", "bad_signature")
    add("bad_signature_body_changed", enc({**env, "body": {**env["body"], "price": 1}}),
        "price changed after signing", "bad_signature")
    add("bad_signature_ts_changed", enc({**env, "ts": NOW_MS - 1}),
        "ts changed after signing (ts is signed)", "bad_signature")
    add("bad_signature_net_changed", enc({**env, "net": OTHER_NET}),
        "net changed after signing: the signature fails before the network is compared",
        "bad_signature")

    # network, clock
    add("wrong_network", sealed(receipt, net=OTHER_NET, label="gate-other-net"),
        "validly signed for another network (another genesis)", "wrong_network")
    add("stale", sealed(receipt, ts=NOW_MS - SKEW - 1, label="gate-stale"),
        "ts one millisecond older than now - skew", "stale")
    add("stale_edge_accept", sealed(receipt, ts=NOW_MS - SKEW, label="gate-stale-edge"),
        "ts exactly now - skew is still accepted", None)
    add("future", sealed(receipt, ts=NOW_MS + SKEW + 1, label="gate-future"),
        "ts one millisecond beyond now + skew", "future")
    add("future_edge_accept", sealed(receipt, ts=NOW_MS + SKEW, label="gate-future-edge"),
        "ts exactly now + skew is still accepted", None)
    add("ts_zero", sealed(receipt, ts=0, label="gate-ts-0"), "ts 0 is long stale", "stale")
    add("ts_u64_max", enc(signed(unsigned_env(to_obj(receipt), "Receipt/1", ts=2**64 - 1,
                                              label="gate-ts-max"))),
        "ts = 2^64-1 (a valid u64; seal never writes ts >= 2^63): future, compared without "
        "overflow", "future")

    # replay
    add("replay", good, "the same envelope a second time", "replay",
        before=[(good, wire.TOPIC_RECEIPTS, NOW_MS, None)])
    add("replay_later", good, "the same envelope again 100 s later (within the window)",
        "replay", now=NOW_MS + 100_000, before=[(good, wire.TOPIC_RECEIPTS, NOW_MS, None)])
    same_nonce = sealed(dataclasses.replace(receipt, seq=9), label="gate-receipt")
    add("replay_same_nonce_other_body", same_nonce,
        "a different message by the same signer with a nonce already used", "replay",
        before=[(good, wire.TOPIC_RECEIPTS, NOW_MS, None)])
    add("same_nonce_other_signer", sealed(receipt, signer="bob", label="gate-receipt"),
        "the replay cache is keyed by (signer, nonce): another signer may use the same nonce",
        None, before=[(good, wire.TOPIC_RECEIPTS, NOW_MS, None)])

    # versions and types
    body_obj = to_obj(receipt)
    add("unsupported_envelope_version_2",
        enc(signed(unsigned_env(body_obj, "Receipt/1", v=2, label="gate-v2"))),
        "envelope v = 2, validly signed", "unsupported_version")
    add("unsupported_envelope_version_0",
        enc(signed(unsigned_env(body_obj, "Receipt/1", v=0, label="gate-v0"))),
        "envelope v = 0, validly signed", "unsupported_version")
    add("unsupported_envelope_version_true",
        enc(signed(unsigned_env(body_obj, "Receipt/1", v=True, label="gate-vtrue"))),
        "envelope v = true (not the integer 1), validly signed", "unsupported_version")
    add("unknown_type", enc(signed(unsigned_env(body_obj, "Invoice/1", label="gate-unk"))),
        "type Invoice/1 is not a message of this protocol", "unknown_type")
    add("unknown_type_case", enc(signed(unsigned_env(body_obj, "receipt/1", label="gate-case"))),
        "type names are case-sensitive", "unknown_type")
    advert_obj = to_obj(BODIES["HostAdvert"])
    add("unsupported_body_version", enc(signed(unsigned_env(
        advert_obj, "HostAdvert/2", signer="bob", label="gate-adv2"), "bob")),
        "type HostAdvert/2, validly signed", "unsupported_version", topic=wire.TOPIC_ADVERTS)
    add("unsupported_body_version_01", enc(signed(unsigned_env(
        advert_obj, "HostAdvert/01", signer="bob", label="gate-adv01"), "bob")),
        "versions are compared as text: 01 is not 1", "unsupported_version",
        topic=wire.TOPIC_ADVERTS)
    add("type_without_version", enc(signed(unsigned_env(body_obj, "Receipt", label="gate-nov"))),
        "type must look like Name/VERSION", "malformed")

    # canonical encoding (each is the canonical message re-written; its signature is valid
    # for the decoded value, so only the canonical-form check refuses it)
    field_order = ("v", "net", "type", "signer", "ts", "nonce", "body", "sig")
    add("non_canonical_keys_unsorted", enc({k: env[k] for k in field_order}, sort=False),
        "the envelope map written in field order v, net, type, ... instead of canonical order",
        "malformed")
    add("non_canonical_int_long_form", enc(env, at(("body", "price"), b"\x19\x00\x64")),
        "body.price 100 written with a 2-byte argument (0x19 0x0064 instead of 0x18 0x64)",
        "malformed")
    add("non_canonical_indefinite_bytes",
        enc(env, at(("nonce",), b"\x5f\x48" + env["nonce"][:8] + b"\x48" + env["nonce"][8:]
                    + b"\xff")),
        "nonce as an indefinite-length byte string of two chunks", "malformed")
    add("non_canonical_duplicate_key",
        head(5, 9) + enc(env)[1:] + enc("ts") + enc(env["ts"]),
        "the ts key twice (9 entries)", "malformed")
    add("non_canonical_tagged", b"\xd9\xd9\xf7" + good, "the envelope wrapped in tag 55799",
        "malformed")
    add("float_ts", enc(env, at(("ts",), b"\xfb" + struct.pack(">d", float(NOW_MS)))),
        "ts as a double float", "malformed")

    # sizes
    def advert_of_size(total: int) -> bytes:
        """A HostAdvert envelope of exactly ``total`` bytes: cached image names of 1000
        bytes, the last one cut to size."""
        images = [(f"image-{i:03d}/" * 100)[:1000] for i in range((total - 1500) // 1000)]
        last = "last-image/" * 100
        n = 500
        while True:
            assert 256 <= n <= 1024, n  # the head of the last name stays 3 bytes
            body = dataclasses.replace(BODIES["HostAdvert"],
                                       cached_images=(*images, last[:n]))
            data = sealed(body, signer="bob", label="gate-cap")
            if len(data) == total:
                return data
            n += total - len(data)
    add("at_gossip_cap", advert_of_size(MAX_GOSSIP),
        f"a HostAdvert envelope of exactly {MAX_GOSSIP} bytes (the default gossip cap)", None,
        topic=wire.TOPIC_ADVERTS)
    add("oversize", advert_of_size(MAX_GOSSIP + 1),
        f"a HostAdvert envelope of {MAX_GOSSIP + 1} bytes: one over the cap", "oversize",
        topic=wire.TOPIC_ADVERTS)
    fraud_at_caps = wire.FraudProof(kind="fork", account=PUB["alice"],
                                    first=fill(16384, "fraud-first"),
                                    second=fill(16384, "fraud-second"))
    add("accept_FraudProof_at_caps", sealed(fraud_at_caps, label="gate-fraud-at-caps"),
        "a FraudProof with first and second both at their cap of 16384 bytes fits the gossip "
        "cap", None)

    # topics
    add("wrong_topic_advert_on_offers", sealed(BODIES["HostAdvert"], signer="bob",
                                               label="gate-topic1"),
        "a HostAdvert on meca/offers/1", "wrong_topic", topic=wire.TOPIC_OFFERS)
    add("wrong_topic_offer_on_adverts", sealed(BODIES["TaskOffer"], signer="carol",
                                               label="gate-topic2"),
        "a TaskOffer on meca/adverts/1", "wrong_topic", topic=wire.TOPIC_ADVERTS)
    add("wrong_topic_stream_message", sealed(BODIES["JobAccept"], signer="bob",
                                             label="gate-topic3"),
        "JobAccept travels on job streams, never on gossip", "wrong_topic")
    add("wrong_topic_unknown_topic", good, "topic meca/receipts/2 is not ours", "wrong_topic",
        topic="meca/receipts/2")
    add("precedence_wrong_topic_before_network",
        sealed(BODIES["HostAdvert"], signer="bob", net=OTHER_NET, label="gate-prec1"),
        "wrong topic and wrong network: wrong_topic is reported", "wrong_topic",
        topic=wire.TOPIC_OFFERS)
    add("precedence_network_before_clock",
        sealed(receipt, net=OTHER_NET, ts=NOW_MS - SKEW - 1, label="gate-prec2"),
        "wrong network and stale: wrong_network is reported", "wrong_network")

    # framing of the envelope itself
    add("trailing_garbage", good + b"\x00", "one zero byte after the envelope", "malformed")
    add("two_envelopes", good + good, "two envelopes back to back", "malformed")
    add("truncated", good[:-1], "the last byte missing", "malformed")
    add("empty", b"", "zero bytes", "malformed")
    add("not_a_map", enc([1, 2, 3]), "an array, not a map", "malformed")
    unsigned = {k: v for k, v in env.items() if k != "sig"}
    add("missing_nonce", enc(signed({k: v for k, v in unsigned.items() if k != "nonce"})),
        "no nonce key (validly signed without it)", "malformed")
    add("extra_key", enc(signed({**unsigned, "memo": "hi"})),
        "an extra envelope key (validly signed with it)", "malformed")
    add("nonce_15", enc(signed({**unsigned, "nonce": nonce("short")[:15]})),
        "nonce of 15 bytes", "malformed")
    add("net_31", enc(signed({**unsigned, "net": NET[:31]})), "net of 31 bytes", "malformed")
    add("sig_63", enc({**env, "sig": env["sig"][:63]}), "sig of 63 bytes", "malformed")
    add("ts_negative", enc(signed({**unsigned, "ts": -1})), "ts = -1", "malformed")
    add("ts_text", enc(signed({**unsigned, "ts": str(NOW_MS)})), "ts as text", "malformed")
    add("signer_text", enc({**env, "signer": PUB["alice"].hex()}), "signer as hex text",
        "malformed")

    # bodies (validly signed, so these reach the body schema after the signature)
    def body_case(name: str, label: str, fn: Callable[[dict], None], desc: str,
                  signer: str = "alice") -> None:
        body = BODIES[label]
        obj = to_obj(body)
        fn(obj)
        data = enc(signed(unsigned_env(obj, wire.type_id(type(body)), signer=signer,
                                       label=f"gate-body-{name}"), signer))
        add(name, data, desc, "malformed", topic=topic_of[type(body).TYPE])

    body_case("body_missing_field", "HostAdvert", lambda o: o.pop("queue"),
              "HostAdvert without queue", "bob")
    body_case("body_unknown_field", "TaskOffer", lambda o: o.__setitem__("bonus", 1),
              "TaskOffer with an unknown field bonus", "carol")
    body_case("body_job_id_15", "Receipt", lambda o: o.__setitem__("job_id", JOB_ID[:15]),
              "Receipt with a 15-byte job_id")
    body_case("body_negative_price", "Receipt", lambda o: o.__setitem__("price", -5),
              "Receipt with price -5")
    body_case("body_roles_over_cap", "HostAdvert",
              lambda o: o.__setitem__("roles", ["provider", "client", "developer", "client"]),
              "HostAdvert with 4 roles (cap 3)", "bob")
    body_case("body_unknown_role", "HostAdvert", lambda o: o.__setitem__("roles", ["miner"]),
              "HostAdvert with role miner", "bob")
    body_case("body_fraud_kind", "FraudProof", lambda o: o.__setitem__("kind", "theft"),
              "FraudProof of kind theft")
    body_case("body_offer_empty_name", "TaskOffer", lambda o: o.__setitem__("name", ""),
              "TaskOffer with an empty name", "carol")
    body_case("body_price_text", "HostAdvert", lambda o: o.__setitem__("price", "25"),
              "HostAdvert with price as text", "bob")

    # per-signer rate limit, then the ban (gate defaults on meca/receipts/1: burst 100, 20/s,
    # ban after 50 refusals; other topics have their own buckets: burst 20, 5/s)
    def burst(n: int, tag: str) -> list[bytes]:
        return [sealed(dataclasses.replace(receipt, seq=i, commit=b""), label=f"gate-{tag}-{i}")
                for i in range(n)]
    b = GATE.entry_burst
    msgs = burst(b + 1, "rate")
    add("rate_limited", msgs[-1],
        f"the {b + 1}st message of one signer within the same millisecond (burst {b})",
        "rate_limited", before=[(m, wire.TOPIC_RECEIPTS, NOW_MS, None) for m in msgs[:-1]])
    n_ban = GATE.ban_after
    msgs = burst(b + n_ban + 1, "ban")
    before = [(m, wire.TOPIC_RECEIPTS, NOW_MS, None) for m in msgs[:b]]
    before += [(m, wire.TOPIC_RECEIPTS, NOW_MS, "rate_limited") for m in msgs[b:b + n_ban - 1]]
    before.append((msgs[b + n_ban - 1], wire.TOPIC_RECEIPTS, NOW_MS, "banned"))
    add("banned", msgs[-1],
        f"after {n_ban} refusals in a row the signer is banned for {GATE.ban_ms} ms; "
        "the refusal that triggers the ban already says banned", "banned",
        now=NOW_MS + 100, before=before)
    return vs


def genesis_vectors() -> list[dict]:
    vs: list[dict] = []
    doc = json.loads(GENESIS.to_json())

    def add(name: str, text: str, desc: str, reason: str | None) -> None:
        got, why = _outcome(lambda: wire.genesis_from_json(text))
        assert why == reason, (name, why, reason)
        exp: dict[str, Any] = {"verdict": "accept" if reason is None else "reject",
                               "reason": reason}
        if got is not None:
            exp.update({"network_id": got.network_id.hex(), "name": got.name,
                        "founder": got.founder.hex(), "created": got.created,
                        "alloc": [{"key": a.key.hex(), "amount": a.amount} for a in got.alloc],
                        "sig": got.sig.hex(), "total_supply": got.total_supply})
        vs.append({"name": name, "description": desc, "json": text, "expected": exp})

    def variant(**changes: Any) -> str:
        return json.dumps({**doc, **changes}, indent=2) + "\n"

    add("valid", GENESIS.to_json(), "the genesis of the gate vectors' network", None)
    compact = {k: v for k, v in doc.items() if k != "network_id"}
    add("valid_compact_no_id", json.dumps(compact, separators=(",", ":")),
        "the same genesis without whitespace and without the optional network_id: same id",
        None)
    add("valid_other", OTHER_GENESIS.to_json(), "the other network of wrong_network", None)
    alloc = [dict(a) for a in doc["alloc"]]
    alloc[0]["amount"] += 1
    add("tampered_allocation", variant(alloc=alloc, network_id=None),
        "an allocation amount changed after signing", "bad_signature")
    add("tampered_name", variant(name="meca-vectorz", network_id=None),
        "the name changed after signing", "bad_signature")
    add("tampered_created", variant(created=GENESIS_CREATED + 1, network_id=None),
        "created changed after signing", "bad_signature")
    add("founder_swapped", variant(founder=PUB["alice"].hex(), network_id=None),
        "founder replaced by another key", "bad_signature")
    add("reordered_allocation", variant(alloc=list(reversed(doc["alloc"])), network_id=None),
        "allocations are signed in file order", "bad_signature")
    add("wrong_network_id", variant(network_id=OTHER_NET.hex()),
        "network_id does not match the contents", "malformed")
    add("version_2", variant(v=2), "genesis v = 2", "unsupported_version")
    add("version_true", variant(v=True), "genesis v = true (not the integer 1)",
        "unsupported_version")
    add("version_missing", json.dumps(compact | {"v": None}), "genesis v = null",
        "unsupported_version")
    dup = [dict(a) for a in doc["alloc"]] + [dict(doc["alloc"][0])]
    add("duplicate_allocation", variant(alloc=dup), "one key allocated twice", "malformed")
    zero = [dict(a) for a in doc["alloc"]]
    zero[0]["amount"] = 0
    add("zero_amount", variant(alloc=zero), "amounts are positive", "malformed")
    big = [dict(a) for a in doc["alloc"]]
    big[0]["amount"] = 2**63
    add("amount_2_63", variant(alloc=big), "amounts are below 2^63", "malformed")
    fl = [dict(a) for a in doc["alloc"]]
    fl[0]["amount"] = 1000000.0
    add("amount_float", variant(alloc=fl), "amounts are integers", "malformed")
    short = [dict(a) for a in doc["alloc"]]
    short[0]["key"] = short[0]["key"][:62]
    add("alloc_key_31", variant(alloc=short), "keys are 32 bytes", "malformed")
    add("name_empty", variant(name=""), "names are 1..128 bytes", "malformed")

    def hand_signed(name: str, amounts: list[int]) -> str:
        """A genesis signed by the founder whatever its fields (make_genesis would refuse
        some of these); keys are those of seeds 01.., 02.., ... in order."""
        alloc = [{"key": SigningKey(bytes([i + 1]) * 32).verify_key.encode(), "amount": a}
                 for i, a in enumerate(amounts)]
        unsigned = {"v": 1, "name": name, "founder": PUB["founder"],
                    "created": GENESIS_CREATED, "alloc": alloc}
        sig = KEYS["founder"].sign(enc(unsigned)).signature
        return json.dumps({**unsigned, "founder": PUB["founder"].hex(),
                           "alloc": [{"key": a["key"].hex(), "amount": a["amount"]}
                                     for a in alloc], "sig": sig.hex()}, indent=2) + "\n"

    add("name_128_bytes_multibyte", wire.make_genesis(
        utf8_text(128), KEYS["founder"], GENESIS_CREATED, [(PUB["alice"], 1)]).to_json(),
        "a name of 43 characters in exactly 128 UTF-8 bytes (the cap counts bytes)", None)
    add("name_129_bytes_multibyte", hand_signed(utf8_text(129), [1]),
        "a name of 43 three-byte characters: 129 bytes, one over the cap (validly signed)",
        "malformed")
    add("name_128_chars_256_bytes", hand_signed("\u00e9" * 128, [1]),
        "128 two-byte characters are 256 bytes: over the cap (validly signed)", "malformed")
    add("name_lone_surrogate", variant(name="\ud800", network_id=None),
        "the name is the JSON escape \\ud800, a lone surrogate: not UTF-8 text",
        "malformed")
    add("supply_2_63_minus_1", hand_signed("meca-supply", [2**62, 2**62 - 1]),
        "two allocations summing to 2^63-1, the largest total supply", None)
    add("supply_2_63", hand_signed("meca-supply", [2**62, 2**62]),
        "two valid allocations summing to 2^63: the total supply must stay below 2^63 "
        "(validly signed)", "malformed")
    add("supply_wraps_u64", hand_signed("meca-supply", [2**63 - 1] * 3),
        "three allocations of 2^63-1: the sum is 2^64 + 2^63 - 3, which a wrapping 64-bit sum "
        "would see as 2^63 - 3 (validly signed)", "malformed")
    add("sig_short", variant(sig=doc["sig"][:126]), "sig is 64 bytes", "malformed")
    add("sig_not_hex", variant(sig="zz" * 64), "sig is hex", "malformed")
    add("missing_alloc", json.dumps({k: v for k, v in doc.items() if k != "alloc"}),
        "alloc is required", "malformed")
    add("not_an_object", "[]", "the top level is an object", "malformed")
    add("not_json", "{\"v\": 1,", "not JSON at all", "malformed")
    return vs


# -- files ----------------------------------------------------------------------------------
def keys_doc() -> dict:
    return {name: {"seed": SEEDS[name].hex(), "public_key": PUB[name].hex()} for name in SEEDS}


def build() -> dict[str, str]:
    common = {"format": FORMAT, "keys": keys_doc()}
    gate_cfg = {f.name: getattr(GATE, f.name) for f in dataclasses.fields(GATE)
                if f.name != "network_id"}
    files = {
        "cbor.json": {
            **common,
            "description": "Canonical CBOR (RFC 8949 4.2.1, our data model): decode each hex "
                           "with the strict decoder; accepted items re-encode to the same "
                           "bytes and print as `diag` (RFC 8949 section 8).",
            "vectors": cbor_vectors()},
        "bodies.json": {
            **common,
            "description": "Bare message bodies: decode hex as a body of `class`; accepted "
                           "bodies render as `expected.body` (bytes as hex) and re-encode to "
                           "the same bytes.",
            "vectors": body_vectors()},
        "envelopes.json": {
            **common,
            "network_id": NET.hex(),
            "description": "Signed envelopes of every message type, opened with "
                           "open_envelope(hex, max_size): decode, version, type, signature, "
                           "body. Accepted ones re-seal byte for byte with the signer's seed.",
            "vectors": envelope_vectors()},
        "gate.json": {
            **common,
            "network_id": NET.hex(),
            "gate_config": gate_cfg,
            "description": "The gossip gate: a fresh gate with gate_config and network_id per "
                           "vector; feed each `before` message in order, then hex on topic at "
                           "now_ms; expected.reason is the drop reason (null = accepted).",
            "vectors": gate_vectors()},
        "genesis.json": {
            **common,
            "description": "Genesis files (JSON text): accepted ones give network_id = "
                           "SHA-256 of the canonical CBOR of the signed document incl. sig.",
            "vectors": genesis_vectors()},
    }
    out = {}
    for fname, doc in files.items():
        names = [v["name"] for v in doc["vectors"]]
        assert len(names) == len(set(names)), f"duplicate vector names in {fname}"
        out[fname] = json.dumps(doc, indent=1, ensure_ascii=True) + "\n"
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true",
                    help="write nothing; exit 1 if any file differs from what would be written")
    args = ap.parse_args(argv)
    files = build()
    if args.check:
        stale = [n for n, text in files.items()
                 if not (OUT / n).exists() or (OUT / n).read_text() != text]
        for n in stale:
            print(f"protocols/vectors/{n} is out of date", file=sys.stderr)
        return 1 if stale else 0
    OUT.mkdir(parents=True, exist_ok=True)
    for n, text in files.items():
        (OUT / n).write_text(text)
        print(f"wrote protocols/vectors/{n} ({len(text)} bytes, "
              f"{len(json.loads(text)['vectors'])} vectors)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
