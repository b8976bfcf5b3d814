"""CIDs (multiformats/cid) and the protobuf varints under them (meca_node.ipfs.cid, .pb).

Vectors are the ones kubo and the CID spec give; the Bitswap prefix is the one the Bitswap
1.1+ spec defines (version, codec, multihash code, digest length, each a uvarint).
"""

from __future__ import annotations

import base64
import hashlib
import io

import base58
import pytest
from hypothesis import given
from hypothesis import strategies as st

from meca_node.ipfs.cid import CID, DAG_PB, RAW, SHA2_256, CidError
from meca_node.ipfs.pb import PbError, read_varint, varint
from meca_node.ipfs.unixfs import Settings, add_path, add_stream

EMPTY_RAW_V1 = "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku"
EMPTY_FILE_V0 = "QmbFMke1KXqnYyBBWxB74N4c5SBnJMVAiMNRcGu6x1AwQH"
EMPTY_DIR_V0 = "QmUNLLsPACCz1vLxQVkXqqLX5R1X345qqfHbsf67hvA3Nn"
EMPTY_DIR_V1 = "bafybeiczsscdsbs7ffqz55asqdf3smv6klcw3gofszvwlyarci47bgf354"
HELLO_V0 = "QmT78zSuBmuS4z925WZfrqQ1qHaJ56DQaTfyMUF7F8ff5o"  # `echo hello world | ipfs add`
HELLO_RAW_V1 = "bafkreifjjcie6lypi6ny7amxnfftagclbuxndqonfipmb64f2km2devei4"

digests = st.binary(min_size=32, max_size=32)


@st.composite
def cids(draw) -> CID:
    version = draw(st.sampled_from([0, 1]))
    codec = DAG_PB if version == 0 else draw(st.sampled_from([RAW, DAG_PB]))
    return CID(version, codec, draw(digests))


def b32(raw: bytes) -> str:
    return "b" + base64.b32encode(raw).decode().lower().rstrip("=")


def v1_bytes(codec: int, digest: bytes, hash_code: int = SHA2_256, length: int = 32) -> bytes:
    return varint(1) + varint(codec) + varint(hash_code) + varint(length) + digest


# -- round trips -------------------------------------------------------------------------------
@given(cids())
def test_string_and_binary_forms_round_trip(cid):
    assert CID.decode(bytes(cid)) == cid
    assert CID.parse(str(cid)) == cid
    assert CID.parse(f"  {cid}\n") == cid
    if cid.version == 0:
        assert str(cid).startswith("Qm") and len(str(cid)) == 46
        assert bytes(cid) == b"\x12\x20" + cid.digest == cid.multihash
    else:
        assert str(cid).startswith("b") and str(cid) == str(cid).lower()
        assert bytes(cid) == v1_bytes(cid.codec, cid.digest)
        assert CID.parse(str(cid).upper()) == cid  # multibase 'B': base32 upper
        assert CID.parse("z" + base58.b58encode(bytes(cid)).decode()) == cid


@given(cids(), st.binary(max_size=64))
def test_from_prefix_round_trip(cid, block):
    made = CID.from_prefix(cid.prefix, block)
    assert (made.version, made.codec) == (cid.version, cid.codec)
    assert made.digest == hashlib.sha256(block).digest() and made.verify(block)
    assert CID.from_prefix(made.prefix, block) == made


@pytest.mark.parametrize(("cid", "prefix"), [
    (CID.of(b"", DAG_PB, 0), bytes([0x00, 0x70, 0x12, 0x20])),
    (CID.of(b"", RAW, 1), bytes([0x01, 0x55, 0x12, 0x20])),
    (CID.of(b"", DAG_PB, 1), bytes([0x01, 0x70, 0x12, 0x20])),
])
def test_bitswap_prefix_bytes(cid, prefix):
    assert cid.prefix == prefix


# -- known vectors -----------------------------------------------------------------------------
@pytest.mark.parametrize(("block", "codec", "version", "text"), [
    (b"", RAW, 1, EMPTY_RAW_V1),
    (b"hello world\n", RAW, 1, HELLO_RAW_V1),
    (b"\x0a\x04\x08\x02\x18\x00", DAG_PB, 0, EMPTY_FILE_V0),  # UnixFS File, filesize 0
    (b"\x0a\x02\x08\x01", DAG_PB, 0, EMPTY_DIR_V0),           # UnixFS Directory
    (b"\x0a\x02\x08\x01", DAG_PB, 1, EMPTY_DIR_V1),
])
def test_known_vectors(block, codec, version, text):
    cid = CID.of(block, codec, version)
    assert str(cid) == text and CID.parse(text) == cid and cid.verify(block)
    assert not cid.verify(block + b"\0")


@pytest.mark.parametrize(("version", "data", "expected"), [
    (1, b"", EMPTY_RAW_V1),
    (0, b"", EMPTY_FILE_V0),
    (0, b"hello world\n", HELLO_V0),
    (1, b"hello world\n", HELLO_RAW_V1),
])
def test_the_importer_makes_kubos_cids_for_small_files(version, data, expected):
    blocks: dict[CID, bytes] = {}
    added = add_stream(io.BytesIO(data), blocks.__setitem__, Settings(cid_version=version))
    assert str(added.cid) == expected and added.cid in blocks and added.size == len(data)


@pytest.mark.parametrize(("version", "expected"), [(0, EMPTY_DIR_V0), (1, EMPTY_DIR_V1)])
def test_the_importer_makes_kubos_empty_directory(tmp_path, version, expected):
    blocks: dict[CID, bytes] = {}
    added = add_path(tmp_path, blocks.__setitem__, Settings(cid_version=version))
    assert str(added.cid) == expected and added.size == 0 and added.tsize == 4


# -- refusals ----------------------------------------------------------------------------------
DIGEST = hashlib.sha256(b"x").digest()
V1_RAW = v1_bytes(RAW, DIGEST)


@pytest.mark.parametrize(("data", "match"), [
    (v1_bytes(0x71, DIGEST), r"codec 0x71 is not supported"),            # dag-cbor
    (v1_bytes(0x0129, DIGEST), r"codec 0x129 is not supported"),         # dag-json
    (v1_bytes(RAW, DIGEST, hash_code=0x13, length=32), r"hash function 0x13"),  # sha2-512
    (v1_bytes(RAW, DIGEST, hash_code=0xB220, length=32), r"hash function 0xb220"),
    (v1_bytes(RAW, DIGEST[:20], length=20), r"digest of 20 bytes"),
    (varint(2) + V1_RAW[1:], r"CID version 2 is not 0 or 1"),
    (varint(3) + V1_RAW[1:], r"CID version 3"),
    (b"", r"truncated varint"),
    (b"\x01", r"truncated varint"),
    (b"\x01\x55\x12", r"truncated varint"),
    (V1_RAW + b"\x00", r"1 bytes after the CID"),
    (V1_RAW + b"abc", r"3 bytes after the CID"),
    (b"\x01\x80\x00" + V1_RAW[2:], r"non-minimal varint"),
])
def test_decode_refuses_naming_the_problem(data, match):
    with pytest.raises(CidError, match=match):
        CID.decode(data)


def test_truncated_binary_forms_are_refused():
    v0 = bytes(CID.of(b"x", DAG_PB, 0))
    for cut in range(len(v0)):
        with pytest.raises(CidError):
            CID.decode(v0[:cut])
    for cut in range(len(V1_RAW)):
        with pytest.raises(CidError):
            CID.decode(V1_RAW[:cut])
    with pytest.raises(CidError, match="version 18"):
        CID.decode(v0 + b"\x00")  # 35 bytes: not a CIDv0, and there is no CIDv18


def test_truncated_v1_digest_message_names_the_truncation():
    with pytest.raises(CidError, match=r"truncat|31 bytes"):
        CID.decode(V1_RAW[:-1])


@pytest.mark.parametrize(("args", "match"), [
    ((2, RAW, DIGEST), r"version 2"),
    ((0, RAW, DIGEST), r"CIDv0 is always dag-pb"),
    ((1, 0x71, DIGEST), r"codec 0x71"),
    ((1, RAW, DIGEST[:31]), r"not 31"),
])
def test_constructor_refuses(args, match):
    with pytest.raises(CidError, match=match):
        CID(*args)


@pytest.mark.parametrize(("prefix", "match"), [
    (bytes([0x01, 0x71, 0x12, 0x20]), r"codec 0x71"),
    (bytes([0x01, 0x55, 0x13, 0x40]), r"hash 0x13 length 64"),
    (bytes([0x01, 0x55, 0x12, 0x14]), r"hash 0x12 length 20"),
    (bytes([0x00, 0x55, 0x12, 0x20]), r"CIDv0 is always dag-pb"),
    (bytes([0x02, 0x55, 0x12, 0x20]), r"version 2"),
    (bytes([0x01, 0x55, 0x12]), r"malformed block prefix: truncated"),
    (bytes([0x01, 0x55, 0x12, 0x20, 0x00]), r"bytes after the block prefix"),
    (b"", r"malformed block prefix"),
])
def test_from_prefix_refuses(prefix, match):
    with pytest.raises(CidError, match=match):
        CID.from_prefix(prefix, b"block")


@pytest.mark.parametrize(("text", "match"), [
    ("", r"is not a CID"),
    ("hello", r"is not a CID"),
    ("Qm" + "0" * 44, r"is not a CIDv0"),   # '0' is not in the base58 alphabet
    ("b1", r"is not base32"),
    ("b" + "a" * 3, r"not base32|truncated|malformed"),
    (b32(v1_bytes(0x71, DIGEST)), r"codec 0x71"),
    (b32(v1_bytes(RAW, DIGEST, hash_code=0x13)), r"hash function 0x13"),
    ("f01551220" + DIGEST.hex(), r"is not a CID"),  # base16 multibase: not read here
])
def test_parse_refuses_naming_the_problem(text, match):
    with pytest.raises(CidError, match=match):
        CID.parse(text)


def test_parse_of_bad_base58btc_multibase_is_a_cid_error():
    with pytest.raises(CidError):
        CID.parse("z0OIl")


def test_parse_refuses_a_multibase_encoded_cidv0():
    with pytest.raises(CidError):
        CID.parse(b32(bytes(CID.of(b"x", DAG_PB, 0))))


@given(st.binary(max_size=80))
def test_decode_of_any_bytes_is_a_cid_or_a_cid_error(data):
    try:
        cid = CID.decode(data)
    except CidError:
        return
    assert bytes(cid) == data


@given(st.text(max_size=80).filter(lambda t: not t.strip().startswith("z")))
def test_parse_of_any_text_is_a_cid_or_a_cid_error(text):
    try:
        CID.parse(text)
    except CidError:
        pass


# -- varints -----------------------------------------------------------------------------------
@given(st.integers(0, 2**64 - 1), st.binary(max_size=3))
def test_varint_round_trip(n, tail):
    enc = varint(n)
    assert read_varint(enc + tail) == (n, len(enc))
    assert read_varint(b"\xff" + enc, 1) == (n, len(enc) + 1)
    assert 1 <= len(enc) <= 10 and enc[-1] < 0x80


@pytest.mark.parametrize(("n", "enc"), [
    (0, b"\x00"), (1, b"\x01"), (127, b"\x7f"), (128, b"\x80\x01"), (300, b"\xac\x02"),
    (2**64 - 1, b"\xff" * 9 + b"\x01"),
])
def test_varint_vectors(n, enc):
    assert varint(n) == enc and read_varint(enc) == (n, len(enc))


@pytest.mark.parametrize(("data", "match"), [
    (b"\x80\x00", "non-minimal"),
    (b"\x81\x80\x00", "non-minimal"),
    (b"\xff" * 9 + b"\x02", "over 64 bits"),        # 2**64: ten bytes, one bit too many
    (b"\xff" * 9 + b"\x7f", "over 64 bits"),
    (b"\x80" * 10 + b"\x01", "longer than 10 bytes"),
    (b"\xff" * 11, "longer than 10 bytes"),
    (b"", "truncated"),
    (b"\x80", "truncated"),
    (b"\xff" * 5, "truncated"),
])
def test_read_varint_refuses(data, match):
    with pytest.raises(PbError, match=match):
        read_varint(data)


def test_varint_of_a_negative_number_is_refused():
    with pytest.raises(ValueError, match="negative"):
        varint(-1)
