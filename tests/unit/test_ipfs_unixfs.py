"""dag-pb (ipld/specs dag-pb) and the UnixFS importer/exporter (ipfs/specs UNIXFS.md).

The importer's layout is checked against an independent model of kubo's balanced builder
(each node at height h over k chunks has ceil(k / L^(h-1)) children, all full but the
last; a lone last child is never lifted), and every node against the UnixFS invariants:
blocksizes are the children's content sizes, filesize is their sum, a link's Tsize is the
child block plus everything under it. Large inputs come from readers that allocate only
what each read asks for.
"""

from __future__ import annotations

import hashlib
import math
import os
import random
import tracemalloc
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meca_node.ipfs import dagpb
from meca_node.ipfs.cid import CID, DAG_PB, RAW
from meca_node.ipfs.pb import field_bytes, field_varint
from meca_node.ipfs.unixfs import (
    DIRECTORY, FILE, HAMT_SHARD, MAX_DEPTH, METADATA, RAW_T, SYMLINK, Data, Settings,
    UnixfsError, add_bytes, add_path, add_stream, cat, export, inspect,
)

CHUNK = 262144


# -- readers -----------------------------------------------------------------------------------
class Zeros:
    """``size`` zero bytes; each read allocates what it returns, at most ``most`` bytes."""

    def __init__(self, size: int, most: int | None = None):
        self.left, self.most = size, most

    def read(self, n: int = -1) -> bytes:
        n = self.left if n < 0 else n
        k = min(n, self.left, self.most or n)
        self.left -= k
        return bytes(k)


class Pattern:
    """``size`` seeded bytes cycling a 65521-byte buffer (prime: chunks differ)."""

    PERIOD = 65521

    def __init__(self, size: int, seed: int = 0, most: int | None = None):
        self.buf = random.Random(seed).randbytes(self.PERIOD)
        self.pos, self.size, self.most = 0, size, most

    def read(self, n: int = -1) -> bytes:
        n = self.size - self.pos if n < 0 else n
        n = min(n, self.size - self.pos, self.most or n)
        parts, end = [], self.pos + n
        while self.pos < end:
            off = self.pos % self.PERIOD
            take = min(end - self.pos, self.PERIOD - off)
            parts.append(self.buf[off:off + take])
            self.pos += take
        return b"".join(parts)


def digest_of(reader) -> tuple[str, int]:
    h, n = hashlib.sha256(), 0
    while part := reader.read(1 << 20):
        h.update(part)
        n += len(part)
    return h.hexdigest(), n


def digest_of_cat(cid: CID, store: dict) -> tuple[str, int]:
    h, n = hashlib.sha256(), 0
    for part in cat(cid, store.__getitem__):
        h.update(part)
        n += len(part)
    return h.hexdigest(), n


# -- a model of kubo's balanced layout, and a walk of what the importer made ------------------
LEAF = "leaf"


def expected_shape(n_chunks: int, max_links: int):
    if n_chunks <= 1:
        return LEAF
    height = 1
    while max_links ** height < n_chunks:
        height += 1

    def build(k: int, h: int):
        if h == 0:
            return LEAF
        cap = max_links ** (h - 1)
        return [build(min(cap, k - i * cap), h - 1) for i in range(math.ceil(k / cap))]

    return build(n_chunks, height)


def walk_file(cid: CID, store: dict, s: Settings, memo: dict | None = None):
    """(shape, content size, tsize) of a file DAG, asserting every UnixFS invariant."""
    memo = {} if memo is None else memo
    if cid in memo:
        return memo[cid]
    block = store[cid]
    assert cid.verify(block)
    if cid.codec == RAW:
        assert s.cid_version == 1 and cid.version == 1
        assert len(block) <= s.chunk_size  # empty only as the root of an empty file
        result = (LEAF, len(block), len(block))
    else:
        assert cid.version == s.cid_version and cid.codec == DAG_PB
        node = dagpb.decode(block)
        data = Data.decode(node.data)
        assert data.type == FILE
        if not node.links:  # a dag-pb leaf (CIDv0): the chunk inline
            assert s.cid_version == 0 and data.blocksizes == ()
            assert data.filesize == len(data.data or b"") <= s.chunk_size
            result = (LEAF, data.filesize, len(block))
        else:
            assert data.data is None and 1 <= len(node.links) <= s.max_links
            children = [walk_file(ln.cid, store, s, memo) for ln in node.links]
            assert all(ln.name == "" for ln in node.links)
            assert [ln.tsize for ln in node.links] == [c[2] for c in children]
            assert list(data.blocksizes) == [c[1] for c in children]
            assert data.filesize == sum(data.blocksizes)
            result = ([c[0] for c in children], data.filesize,
                      len(block) + sum(ln.tsize for ln in node.links))
    memo[cid] = result
    return result


def import_and_check(reader, size: int, s: Settings):
    store: dict[CID, bytes] = {}
    added = add_stream(reader, store.__setitem__, s)
    shape, content, tsize = walk_file(added.cid, store, s)
    assert (added.size, content) == (size, size)
    assert added.tsize == tsize
    assert shape == expected_shape(math.ceil(size / s.chunk_size), s.max_links)
    return added, store


# -- dag-pb ------------------------------------------------------------------------------------
cids = st.builds(lambda b, v, c: CID.of(b, DAG_PB if v == 0 else c, v), st.binary(max_size=8),
                 st.sampled_from([0, 1]), st.sampled_from([RAW, DAG_PB]))
names = st.none() | st.text(st.characters(blacklist_categories=("Cs",)), max_size=12)
links = st.builds(dagpb.Link, cids, names, st.none() | st.integers(0, 2**64 - 1))
nodes = st.builds(dagpb.Node, st.lists(links, max_size=6).map(tuple),
                  st.none() | st.binary(max_size=40))


@given(nodes)
def test_dagpb_round_trip(node):
    block = dagpb.encode(node)
    assert dagpb.decode(block) == node
    assert dagpb.encode(dagpb.decode(block)) == block
    assert dagpb.link_cids(block) == [ln.cid for ln in node.links]


def test_dagpb_encoding_is_canonical_links_then_data_and_hash_name_tsize():
    cid = CID.of(b"a", RAW)
    block = dagpb.encode(dagpb.Node((dagpb.Link(cid, "n", 7),), b"D"))
    link = field_bytes(1, bytes(cid)) + field_bytes(2, b"n") + field_varint(3, 7)
    assert block == field_bytes(2, link) + field_bytes(1, b"D")
    assert dagpb.encode(dagpb.Node()) == b""
    assert dagpb.encode(dagpb.Node(data=b"")) == b"\x0a\x00"  # empty data is not absent
    assert dagpb.decode(b"") == dagpb.Node() and dagpb.decode(b"\x0a\x00").data == b""


HASH = field_bytes(1, bytes(CID.of(b"a", RAW)))
LINK = field_bytes(2, HASH + field_bytes(2, b"n") + field_varint(3, 1))


@pytest.mark.parametrize(("block", "match"), [
    (field_bytes(1, b"D") + LINK, "a link after the data field"),
    (field_bytes(1, b"D") + field_bytes(1, b"E"), "two data fields"),
    (field_bytes(3, b"x"), "unexpected field 3"),
    (field_varint(1, 5), "unexpected field 1"),              # data as a varint
    (field_varint(2, 5), "unexpected field 2"),              # a link as a varint
    (field_bytes(2, field_bytes(2, b"n")), "a link without a hash"),
    (field_bytes(2, field_varint(3, 1)), "a link without a hash"),
    (field_bytes(2, b""), "a link without a hash"),
    (field_bytes(2, field_bytes(2, b"n") + HASH), "out of order"),
    (field_bytes(2, HASH + field_varint(3, 1) + field_bytes(2, b"n")), "out of order"),
    (field_bytes(2, HASH + HASH), "out of order or repeated"),
    (field_bytes(2, HASH + field_bytes(4, b"")), "unexpected link field 4"),
    (field_bytes(2, HASH + field_bytes(3, b"")), "unexpected link field 3"),
    (field_bytes(2, field_bytes(1, b"\x01\x71\x12\x20" + bytes(32))), "link hash: codec 0x71"),
    (field_bytes(2, HASH + field_bytes(2, b"\xff")), "not UTF-8"),
    (LINK[:-1], "malformed dag-pb"),
    (b"\x0a\x05ab", "malformed dag-pb"),
    (b"\x0b\x00", "malformed dag-pb"),                       # wire type 3
])
def test_dagpb_decode_refuses(block, match):
    with pytest.raises(dagpb.DagPbError, match=match):
        dagpb.decode(block)


def test_dagpb_link_cap():
    link = dagpb.Link(CID.of(b"a", RAW), "", 1)
    block = dagpb.encode(dagpb.Node((link,) * 5))
    assert len(dagpb.decode(block, max_links=5).links) == 5
    with pytest.raises(dagpb.DagPbError, match="more than 4 links"):
        dagpb.decode(block, max_links=4)
    over = dagpb.encode(dagpb.Node((link,) * (dagpb.MAX_LINKS + 1)))
    with pytest.raises(dagpb.DagPbError, match=f"more than {dagpb.MAX_LINKS} links"):
        dagpb.decode(over)


# -- UnixFS Data -------------------------------------------------------------------------------
@given(st.sampled_from([RAW_T, DIRECTORY, FILE, METADATA, SYMLINK, HAMT_SHARD]),
       st.none() | st.binary(min_size=1, max_size=20), st.none() | st.integers(0, 2**64 - 1),
       st.lists(st.integers(0, 2**64 - 1), max_size=8).map(tuple))
def test_unixfs_data_round_trip(kind, data, filesize, blocksizes):
    d = Data(kind, data, filesize, blocksizes)
    assert Data.decode(d.encode()) == d


def test_unixfs_data_reads_packed_blocksizes_and_skips_mode_and_mtime():
    packed = field_varint(1, FILE) + field_varint(3, 3) + field_bytes(4, b"\x01\x02")
    assert Data.decode(packed).blocksizes == (1, 2)
    extra = field_varint(1, FILE) + field_varint(7, 0o644) + field_bytes(8, b"\x08\x01")
    assert Data.decode(extra) == Data(FILE)


@pytest.mark.parametrize(("raw", "match"), [
    (field_varint(1, 6), "type 6 is not known"),
    (field_varint(1, 99), "type 99 is not known"),
    (field_varint(3, 5), "type None is not known"),
    (field_varint(1, FILE) + field_varint(9, 1), "unexpected UnixFS field 9"),
    (field_varint(1, FILE) + b"\x1a", "malformed UnixFS data"),
    (field_varint(1, FILE) + field_varint(4, 1) * (dagpb.MAX_LINKS + 1), "too many blocksizes"),
    (field_varint(1, FILE) + field_bytes(4, b"\x01" * (dagpb.MAX_LINKS + 1)),
     "too many blocksizes"),
])
def test_unixfs_data_refuses(raw, match):
    with pytest.raises(UnixfsError, match=match):
        Data.decode(raw)


# -- importer: layout --------------------------------------------------------------------------
SIZES = [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 174 * CHUNK, 174 * CHUNK + 1]


@pytest.mark.parametrize("version", [0, 1])
@pytest.mark.parametrize("size", SIZES)
def test_kubo_layout_at_the_chunk_and_fan_out_boundaries(version, size):
    s = Settings(cid_version=version)
    reader = Pattern(size, seed=size) if size <= 2 * CHUNK else Zeros(size)
    added, store = import_and_check(reader, size, s)
    root = store[added.cid]
    if size <= CHUNK:  # one chunk: the root is the leaf itself
        if version == 1:
            assert added.cid.codec == RAW and root == Pattern(size, seed=size).read()
        else:
            assert added.cid.codec == DAG_PB and added.cid.version == 0
            assert Data.decode(dagpb.decode(root).data) == Data(
                FILE, Pattern(size, seed=size).read() or None, size)
    else:
        node = dagpb.decode(root)
        if size == 174 * CHUNK:
            assert len(node.links) == 174
        elif size == 174 * CHUNK + 1:  # 175 chunks: [174 leaves], [1 leaf] and no lifting
            assert len(node.links) == 2
            lone = dagpb.decode(store[node.links[1].cid])
            assert len(lone.links) == 1
            assert Data.decode(lone.data).blocksizes == (1,)
            assert Data.decode(node.data).blocksizes == (174 * CHUNK, 1)
        else:
            assert len(node.links) == 2
        assert Data.decode(node.data).filesize == size
    source = Pattern(size, seed=size) if size <= 2 * CHUNK else Zeros(size)
    assert digest_of_cat(added.cid, store) == digest_of(source)


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 700), st.integers(1, 16), st.integers(2, 5), st.sampled_from([0, 1]),
       st.integers(1, 50), st.integers(0, 2**16))
def test_layout_matches_the_balanced_model_for_any_size(size, chunk, fan, version, most, seed):
    s = Settings(cid_version=version, chunk_size=chunk, max_links=fan)
    added, store = import_and_check(Pattern(size, seed, most=most), size, s)
    assert b"".join(cat(added.cid, store.__getitem__)) == Pattern(size, seed).read()


def test_short_reads_do_not_change_the_cid():
    whole = add_stream(Pattern(3 * CHUNK + 5), lambda c, b: None)
    trickle = add_stream(Pattern(3 * CHUNK + 5, most=1000), lambda c, b: None)
    assert whole == trickle
    assert add_bytes(Pattern(3 * CHUNK + 5).read(), lambda c, b: None) == whole


def test_zero_filled_files_repeat_one_leaf_and_export_correctly():
    store: dict[CID, bytes] = {}
    added = add_stream(Zeros(5 * CHUNK), store.__setitem__)
    root = dagpb.decode(store[added.cid])
    assert len(root.links) == 5 and len({ln.cid for ln in root.links}) == 1
    assert len(store) == 2
    assert digest_of_cat(added.cid, store) == digest_of(Zeros(5 * CHUNK))


def test_progress_reports_every_byte():
    seen: list[int] = []
    add_stream(Zeros(2 * CHUNK + 3), lambda c, b: None, Settings(), seen.append)
    assert seen == [CHUNK, CHUNK, 3]


def test_memory_stays_bounded_for_a_50_mib_stream():
    size = 50 * 1024 * 1024
    tracemalloc.start()
    try:
        added = add_stream(Zeros(size), lambda c, b: None)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert added.size == size
    assert peak < 4 * 1024 * 1024, f"peak {peak} bytes for a {size}-byte stream"


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"cid_version": 2}, "cid-version must be 0 or 1"),
    ({"chunk_size": 0}, "chunk size"),
    ({"chunk_size": 1024 * 1024 + 1}, "chunk size"),
    ({"max_links": 1}, "max links"),
    ({"max_links": dagpb.MAX_LINKS + 1}, "max links"),
])
def test_settings_refuse(kwargs, match):
    with pytest.raises(UnixfsError, match=match):
        Settings(**kwargs)


# -- importer: directories ---------------------------------------------------------------------
def make_tree(root: Path) -> None:
    (root / "sub" / "deeper").mkdir(parents=True)
    (root / "empty-dir").mkdir()
    (root / "empty").write_bytes(b"")
    (root / "a.txt").write_bytes(b"alpha\n")
    (root / "B.txt").write_bytes(b"beta")
    (root / "_u").write_bytes(b"u")
    (root / "é").write_bytes(b"e-acute")
    (root / "sub" / "big.bin").write_bytes(Pattern(CHUNK + 10, seed=7).read())
    (root / "sub" / "deeper" / "z").write_bytes(b"zz")
    (root / ".hidden").write_bytes(b"secret")
    (root / "sub" / ".dotdir").mkdir()
    (root / "sub" / ".dotdir" / "f").write_bytes(b"f")
    os.symlink("sub/deeper/z", root / "link")
    os.symlink("../nowhere", root / "sub" / "dangling")


def snapshot(root: Path) -> dict[str, object]:
    out: dict[str, object] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            rel = str(p.relative_to(root))
            if p.is_symlink():
                out[rel] = ("link", os.readlink(p))
            elif p.is_dir():
                out[rel] = ("dir",)
            else:
                out[rel] = ("file", p.read_bytes())
    return out


def check_dir_tsizes(cid: CID, store: dict) -> int:
    """The Tsize of ``cid``, asserting each link's Tsize is the child block plus its links."""
    block = store[cid]
    if cid.codec == RAW:
        return len(block)
    node = dagpb.decode(block)
    for ln in node.links:
        assert ln.tsize == check_dir_tsizes(ln.cid, store)
    return len(block) + sum(ln.tsize for ln in node.links)


@pytest.mark.parametrize("hidden", [False, True])
@pytest.mark.parametrize("version", [0, 1])
def test_directory_import_and_export(tmp_path, version, hidden):
    src = tmp_path / "src"
    src.mkdir()
    make_tree(src)
    store: dict[CID, bytes] = {}
    added = add_path(src, store.__setitem__, Settings(cid_version=version, hidden=hidden))
    assert added.cid.version == version and added.tsize == check_dir_tsizes(added.cid, store)
    root = dagpb.decode(store[added.cid])
    assert Data.decode(root.data) == Data(DIRECTORY)
    got = [ln.name for ln in root.links]
    assert got == sorted(got, key=str.encode)
    expected = ["B.txt", "_u", "a.txt", "empty", "empty-dir", "link", "sub", "é"]
    assert got == sorted(expected + [".hidden"] * hidden, key=str.encode)
    link = next(ln for ln in root.links if ln.name == "link")
    assert inspect(link.cid, store.__getitem__).target == b"sub/deeper/z"

    out = tmp_path / "out"
    written = export(added.cid, store.__getitem__, out)
    want = snapshot(src)
    if not hidden:
        want = {k: v for k, v in want.items()
                if not any(part.startswith(".") for part in Path(k).parts)}
    assert snapshot(out) == want
    assert written == added.size == sum(len(v[1]) for v in want.values() if v[0] == "file")
    assert inspect(added.cid, store.__getitem__).kind == "directory"


def test_a_single_file_path_is_the_file_itself(tmp_path):
    f = tmp_path / "f"
    f.write_bytes(b"hello world\n")
    store: dict[CID, bytes] = {}
    assert add_path(f, store.__setitem__) == add_bytes(b"hello world\n", lambda c, b: None)


def test_a_symlink_to_a_directory_is_not_followed(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "f").write_bytes(b"x" * 100)
    os.symlink("d", tmp_path / "l")
    store: dict[CID, bytes] = {}
    added = add_path(tmp_path / "l", store.__setitem__)
    assert Data.decode(dagpb.decode(store[added.cid]).data) == Data(SYMLINK, b"d")
    assert added.size == 0


def test_directories_nested_beyond_max_depth_are_refused(tmp_path):
    deep = tmp_path.joinpath(*["d"] * (MAX_DEPTH + 2))
    deep.mkdir(parents=True)
    with pytest.raises(UnixfsError, match=f"deeper than {MAX_DEPTH}"):
        add_path(tmp_path, lambda c, b: None)


def test_a_fifo_is_refused(tmp_path):
    os.mkfifo(tmp_path / "pipe")
    with pytest.raises(UnixfsError, match="not a file, directory or symlink"):
        add_path(tmp_path, lambda c, b: None)


# -- exporter on hostile DAGs ------------------------------------------------------------------
class Dag:
    """Blocks made by hand; ``get`` raises KeyError for anything not put."""

    def __init__(self):
        self.blocks: dict[CID, bytes] = {}

    def raw(self, data: bytes) -> CID:
        cid = CID.of(data, RAW)
        self.blocks[cid] = data
        return cid

    def node(self, data: Data | bytes | None, links=()) -> CID:
        raw = data.encode() if isinstance(data, Data) else data
        block = dagpb.encode(dagpb.Node(tuple(links), raw))
        cid = CID.of(block, DAG_PB)
        self.blocks[cid] = block
        return cid

    def file(self, children: list[tuple[CID, int]], filesize: int | None = None) -> CID:
        sizes = tuple(n for _, n in children)
        total = sum(sizes) if filesize is None else filesize
        return self.node(Data(FILE, None, total, sizes),
                         [dagpb.Link(c, "", n) for c, n in children])

    def dir(self, entries: list[tuple[str | None, CID]]) -> CID:
        return self.node(Data(DIRECTORY), [dagpb.Link(c, name, 1) for name, c in entries])

    def get(self, cid: CID) -> bytes:
        return self.blocks[cid]


def refuse_export(tmp_path: Path, dag: Dag, cid: CID, match: str) -> None:
    box = tmp_path / "box"
    box.mkdir()
    with pytest.raises(UnixfsError, match=match):
        export(cid, dag.get, box / "out")
    assert [p.name for p in box.iterdir()] in ([], ["out"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["box"]


def hostile(kind: str) -> tuple[Dag, CID, str]:
    d = Dag()
    leaf = d.raw(b"0123456789")
    f = d.file([(leaf, 10)])
    if kind == "blocksize bigger than raw child":
        return d, d.file([(leaf, 11)]), "parent says 11 bytes, block has 10"
    if kind == "blocksize smaller than dag-pb child":
        return d, d.file([(f, 9)]), "parent says 9 bytes, node says 10"
    if kind == "filesize bigger than parts":
        return d, d.file([(leaf, 10), (leaf, 10)], filesize=21), "do not add up to 21"
    if kind == "filesize smaller than parts":
        return d, d.file([(leaf, 10)], filesize=3), "do not add up to 3"
    if kind == "fewer blocksizes than links":
        return d, d.node(Data(FILE, None, 10, (10,)), [dagpb.Link(leaf, "", 10)] * 2), \
            "2 links but 1 sizes"
    if kind == "too deep":
        cid = leaf
        for _ in range(MAX_DEPTH + 1):
            cid = d.file([(cid, 10)])
        return d, cid, f"deeper than {MAX_DEPTH}"
    if kind == "directories too deep":
        cid = d.dir([])
        for _ in range(MAX_DEPTH + 1):
            cid = d.dir([("d", cid)])
        return d, cid, f"deeper than {MAX_DEPTH}"
    if kind == "unknown type":
        return d, d.node(field_varint(1, 7)), "type 7 is not known"
    if kind == "HAMT shard":
        return d, d.node(Data(HAMT_SHARD)), "HAMT shard, which this node does not read"
    if kind == "HAMT shard inside a directory":
        return d, d.dir([("ok", leaf), ("shard", d.node(Data(HAMT_SHARD)))]), "HAMT shard"
    if kind == "metadata":
        return d, d.node(Data(METADATA)), "metadata"
    if kind == "no UnixFS data":
        return d, d.node(None, [dagpb.Link(leaf, "", 10)]), "without UnixFS data"
    if kind == "not dag-pb":
        bad = b"\x0a\x05ab"
        cid = CID.of(bad, DAG_PB)
        d.blocks[cid] = bad
        return d, cid, "malformed dag-pb"
    if kind == "directory as a file part":
        return d, d.file([(d.dir([]), 0)]), "is a directory"
    if kind == "symlink as a file part":
        return d, d.file([(d.node(Data(SYMLINK, b"x")), 0)]), "symlink, not a file"
    if kind == "duplicate name":
        return d, d.dir([("a", leaf), ("a", f)]), "'a' appears twice"
    for name in ("..", ".", "a/b", "/etc", "", "nul\0", None):
        if kind == f"name {name!r}":
            return d, d.dir([("fine", leaf), (name, leaf)]), "unsafe entry name"
    raise AssertionError(kind)


HOSTILE = [
    "blocksize bigger than raw child", "blocksize smaller than dag-pb child",
    "filesize bigger than parts", "filesize smaller than parts", "fewer blocksizes than links",
    "too deep", "directories too deep", "unknown type", "HAMT shard",
    "HAMT shard inside a directory", "metadata", "no UnixFS data", "not dag-pb",
    "directory as a file part", "symlink as a file part", "duplicate name",
    *(f"name {n!r}" for n in ("..", ".", "a/b", "/etc", "", "nul\0", None)),
]


@pytest.mark.parametrize("kind", HOSTILE)
def test_export_refuses_hostile_dags_and_writes_nothing_outside(tmp_path, kind):
    dag, cid, match = hostile(kind)
    refuse_export(tmp_path, dag, cid, match)


def test_cat_refuses_the_same_dags():
    for kind in HOSTILE[:8]:
        dag, cid, match = hostile(kind)
        if kind == "directories too deep":
            continue
        with pytest.raises(UnixfsError, match=match):
            b"".join(cat(cid, dag.get))


def test_a_file_chain_exactly_max_depth_deep_is_read():
    d = Dag()
    cid = d.raw(b"x")
    for _ in range(MAX_DEPTH):
        cid = d.file([(cid, 1)])
    assert b"".join(cat(cid, d.get)) == b"x"


def test_a_file_repeating_one_child_with_consistent_sizes_is_valid(tmp_path):
    d = Dag()
    leaf = d.raw(b"ab")
    mid = d.file([(leaf, 2)] * 100)
    root = d.file([(mid, 200)] * 30)
    assert b"".join(cat(root, d.get)) == b"ab" * 3000
    assert export(root, d.get, tmp_path / "f") == 6000
    assert (tmp_path / "f").read_bytes() == b"ab" * 3000


def test_a_file_node_with_inline_data_and_children_reads_data_first():
    d = Dag()
    leaf = d.raw(b"tail")
    cid = d.node(Data(FILE, b"head-", 9, (4,)), [dagpb.Link(leaf, "", 4)])
    assert b"".join(cat(cid, d.get)) == b"head-tail"


def test_blocksizes_without_links_are_refused():
    d = Dag()
    cid = d.node(Data(FILE, None, 5, (5,)))
    with pytest.raises(UnixfsError):
        b"".join(cat(cid, d.get))


@pytest.mark.parametrize("target", [b"", b"a\0b"])
def test_export_refuses_unusable_symlink_targets(tmp_path, target):
    d = Dag()
    refuse_export(tmp_path, d, d.node(Data(SYMLINK, target)), "symlink")
