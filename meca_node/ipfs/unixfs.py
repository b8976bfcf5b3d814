"""UnixFS files and directories as blocks, with the CIDs kubo makes for the same bytes.

The importer follows kubo's balanced layout: fixed-size chunks, each interior node at most
``max_links`` children, filled depth-first; a file of one chunk is that chunk's leaf. With
``cid_version=1`` (our default, ``ipfs add --cid-version 1``) leaves are raw blocks; with
``cid_version=0`` (kubo's plain default) they are dag-pb UnixFS File nodes under CIDv0.
Files are read a chunk at a time, so memory stays constant for any size.

The exporter reads a DAG back through a ``get(cid) -> bytes`` that returns verified blocks
and checks every node: types, the sizes each parent claims for its children, depth and
width caps, and safe names in directories.
"""

from __future__ import annotations

import os
import stat as stat_module
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from meca_node.ipfs import dagpb
from meca_node.ipfs.cid import CID, DAG_PB, RAW
from meca_node.ipfs.pb import LEN, VARINT, PbError, field_bytes, field_varint, fields

RAW_T, DIRECTORY, FILE, METADATA, SYMLINK, HAMT_SHARD = range(6)
TYPE_NAMES = {RAW_T: "raw", DIRECTORY: "directory", FILE: "file", METADATA: "metadata",
              SYMLINK: "symlink", HAMT_SHARD: "HAMT shard"}

CHUNK_SIZE = 262144
MAX_LINKS = 174
#: kubo makes a HAMT-sharded directory once its links would take more than this
BASIC_DIRECTORY_LIMIT = 256 * 1024
#: deeper than any real file (174-ary and 32 deep is beyond any disk) or directory tree
MAX_DEPTH = 64

Put = Callable[[CID, bytes], None]
Get = Callable[[CID], bytes]


class UnixfsError(ValueError):
    """A file or DAG that cannot be imported or exported; the message says which and why."""


@dataclass(frozen=True)
class Data:
    """The UnixFS ``Data`` message inside a dag-pb node."""

    type: int
    data: bytes | None = None
    filesize: int | None = None
    blocksizes: tuple[int, ...] = ()

    def encode(self) -> bytes:
        out = field_varint(1, self.type)
        if self.data:
            out += field_bytes(2, self.data)
        if self.filesize is not None:
            out += field_varint(3, self.filesize)
        for size in self.blocksizes:  # proto2 `repeated uint64`: not packed
            out += field_varint(4, size)
        return out

    @classmethod
    def decode(cls, raw: bytes) -> Data:
        kind = data = filesize = None
        sizes: list[int] = []
        try:
            for number, wire_type, value in fields(raw):
                if number == 1 and wire_type == VARINT:
                    kind = value
                elif number == 2 and wire_type == LEN:
                    data = value
                elif number == 3 and wire_type == VARINT:
                    filesize = value
                elif number == 4 and wire_type == VARINT:
                    if len(sizes) >= dagpb.MAX_LINKS:
                        raise UnixfsError("too many blocksizes")
                    sizes.append(value)
                elif number == 4 and wire_type == LEN:  # packed, as some writers do
                    view, pos = value, 0
                    from meca_node.ipfs.pb import read_varint
                    while pos < len(view):
                        size, pos = read_varint(view, pos)
                        sizes.append(size)
                    if len(sizes) > dagpb.MAX_LINKS:
                        raise UnixfsError("too many blocksizes")
                elif number in (5, 6, 7, 8):
                    continue  # hashType, fanout, mode, mtime: not needed to read data
                else:
                    raise UnixfsError(f"unexpected UnixFS field {number}")
        except PbError as exc:
            raise UnixfsError(f"malformed UnixFS data: {exc}") from None
        if kind is None or kind not in TYPE_NAMES:
            raise UnixfsError(f"UnixFS type {kind} is not known")
        return cls(kind, data, filesize, tuple(sizes))


@dataclass(frozen=True)
class Settings:
    """Importer settings; the defaults are kubo's ``ipfs add --cid-version 1``."""

    cid_version: int = 1
    chunk_size: int = CHUNK_SIZE
    max_links: int = MAX_LINKS
    hidden: bool = False  # include dotfiles in directories (kubo's --hidden)

    def __post_init__(self) -> None:
        if self.cid_version not in (0, 1):
            raise UnixfsError(f"--cid-version must be 0 or 1, not {self.cid_version}")
        if not 1 <= self.chunk_size <= 1024 * 1024:
            raise UnixfsError("chunk size must be 1 byte .. 1 MiB")
        if not 2 <= self.max_links <= dagpb.MAX_LINKS:
            raise UnixfsError(f"max links must be 2 .. {dagpb.MAX_LINKS}")

    @property
    def raw_leaves(self) -> bool:
        return self.cid_version == 1


@dataclass(frozen=True)
class Added:
    cid: CID
    size: int   # bytes of content (the file's length; a directory's files together)
    tsize: int  # bytes of every block under it, as parents record in their links


# -- import ----------------------------------------------------------------------------------
class _Chunks:
    """Fixed-size chunks of a stream, with one chunk of look-ahead (kubo's Done())."""

    def __init__(self, reader: BinaryIO, size: int, progress: Callable[[int], None] | None):
        self.reader, self.size, self.progress = reader, size, progress
        self.ahead = self._read()

    def _read(self) -> bytes | None:
        parts, left = [], self.size
        while left:
            part = self.reader.read(left)
            if not part:
                break
            parts.append(part)
            left -= len(part)
        chunk = b"".join(parts)
        if chunk and self.progress:
            self.progress(len(chunk))
        return chunk or None

    def done(self) -> bool:
        return self.ahead is None

    def take(self) -> bytes:
        chunk, self.ahead = self.ahead, self._read()
        assert chunk is not None
        return chunk


def _node(node: dagpb.Node, put: Put, s: Settings) -> tuple[CID, int]:
    block = dagpb.encode(node)
    cid = CID.of(block, DAG_PB, s.cid_version)
    put(cid, block)
    return cid, len(block)


def _leaf(chunk: bytes, put: Put, s: Settings) -> Added:
    if s.raw_leaves:
        cid = CID.of(chunk, RAW, 1)
        put(cid, chunk)
        return Added(cid, len(chunk), len(chunk))
    cid, n = _node(dagpb.Node((), Data(FILE, chunk, len(chunk)).encode()), put, s)
    return Added(cid, len(chunk), n)


def _interior(children: list[Added], put: Put, s: Settings) -> Added:
    size = sum(c.size for c in children)
    links = tuple(dagpb.Link(c.cid, "", c.tsize) for c in children)
    data = Data(FILE, None, size, tuple(c.size for c in children)).encode()
    cid, n = _node(dagpb.Node(links, data), put, s)
    return Added(cid, size, n + sum(c.tsize for c in children))


def _fill(chunks: _Chunks, children: list[Added], depth: int, put: Put, s: Settings) -> Added:
    while len(children) < s.max_links and not chunks.done():
        if depth == 1:
            children.append(_leaf(chunks.take(), put, s))
        else:
            children.append(_fill(chunks, [], depth - 1, put, s))
    return _interior(children, put, s)


def add_stream(reader: BinaryIO, put: Put, settings: Settings = Settings(),
               progress: Callable[[int], None] | None = None) -> Added:
    """Import one file's bytes from ``reader``; every block goes to ``put``."""
    chunks = _Chunks(reader, settings.chunk_size, progress)
    if chunks.done():
        return _leaf(b"", put, settings)
    root = _leaf(chunks.take(), put, settings)
    depth = 1
    while not chunks.done():
        root = _fill(chunks, [root], depth, put, settings)
        depth += 1
    return root


def add_bytes(data: bytes, put: Put, settings: Settings = Settings()) -> Added:
    import io

    return add_stream(io.BytesIO(data), put, settings)


def add_path(path: Path, put: Put, settings: Settings = Settings(),
             progress: Callable[[int], None] | None = None) -> Added:
    """Import a file, or a directory recursively (kubo's ``add -r``: the root is the
    directory itself; dotfiles only with ``settings.hidden``; symlinks as symlinks)."""
    return _add_entry(Path(path), put, settings, progress, 0)


def _add_entry(path: Path, put: Put, s: Settings, progress, depth: int) -> Added:
    if depth > MAX_DEPTH:
        raise UnixfsError(f"{path}: directories nested deeper than {MAX_DEPTH}")
    st = path.lstat()
    if stat_module.S_ISLNK(st.st_mode):
        target = os.readlink(path).encode()
        cid, n = _node(dagpb.Node((), Data(SYMLINK, target).encode()), put, s)
        return Added(cid, 0, n)
    if stat_module.S_ISREG(st.st_mode):
        with open(path, "rb") as f:
            return add_stream(f, put, s, progress)
    if not stat_module.S_ISDIR(st.st_mode):
        raise UnixfsError(f"{path}: not a file, directory or symlink; remove it or add "
                          "the files around it one by one")
    names = sorted((e.name for e in os.scandir(path)
                    if s.hidden or not e.name.startswith(".")), key=lambda n: n.encode())
    links, size, tsize, estimate = [], 0, 0, 0
    for name in names:
        child = _add_entry(path / name, put, s, progress, depth + 1)
        links.append(dagpb.Link(child.cid, name, child.tsize))
        size, tsize = size + child.size, tsize + child.tsize
        estimate += len(name.encode()) + len(bytes(child.cid))
    if estimate > BASIC_DIRECTORY_LIMIT:
        raise UnixfsError(f"{path}: {len(names)} entries are too many for a basic UnixFS "
                          "directory (kubo would shard it; sharded directories are not "
                          "supported yet): split it into subdirectories")
    cid, n = _node(dagpb.Node(tuple(links), Data(DIRECTORY).encode()), put, s)
    return Added(cid, size, tsize + n)


# -- export ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Entry:
    """What a CID is: ``kind`` file/directory/symlink; ``size`` the content length."""

    cid: CID
    kind: str
    size: int
    links: tuple[dagpb.Link, ...] = field(default=())
    target: bytes = b""


def _read_node(cid: CID, block: bytes) -> tuple[dagpb.Node, Data]:
    try:
        node = dagpb.decode(block)
    except dagpb.DagPbError as exc:
        raise UnixfsError(f"{cid}: {exc}") from None
    if node.data is None:
        raise UnixfsError(f"{cid}: a dag-pb node without UnixFS data")
    return node, Data.decode(node.data)


def inspect(cid: CID, get: Get) -> Entry:
    """The kind and size of ``cid`` from its root block alone."""
    block = get(cid)
    if cid.codec == RAW:
        return Entry(cid, "file", len(block))
    node, data = _read_node(cid, block)
    if data.type in (FILE, RAW_T):
        size = data.filesize if data.filesize is not None else len(data.data or b"")
        return Entry(cid, "file", size, node.links)
    if data.type == DIRECTORY:
        return Entry(cid, "directory", sum(ln.tsize or 0 for ln in node.links), node.links)
    if data.type == SYMLINK:
        return Entry(cid, "symlink", 0, (), data.data or b"")
    raise UnixfsError(f"{cid} is a UnixFS {TYPE_NAMES[data.type]}, which this node does "
                      "not read")


def cat(cid: CID, get: Get) -> Iterator[bytes]:
    """The bytes of the file ``cid``, checked against every size its nodes declare."""
    yield from _cat(cid, get, None, 0)


def _cat(cid: CID, get: Get, expect: int | None, depth: int) -> Iterator[bytes]:
    if depth > MAX_DEPTH:
        raise UnixfsError(f"{cid}: file DAG deeper than {MAX_DEPTH}")
    block = get(cid)
    if cid.codec == RAW:
        if expect is not None and len(block) != expect:
            raise UnixfsError(f"{cid}: parent says {expect} bytes, block has {len(block)}")
        yield block
        return
    node, data = _read_node(cid, block)
    if data.type == DIRECTORY:
        raise UnixfsError(f"{cid} is a directory: use `ipfs get` for directories")
    if data.type not in (FILE, RAW_T):
        raise UnixfsError(f"{cid} is a UnixFS {TYPE_NAMES[data.type]}, not a file")
    own = data.data or b""
    total = data.filesize if data.filesize is not None else len(own)
    if expect is not None and total != expect:
        raise UnixfsError(f"{cid}: parent says {expect} bytes, node says {total}")
    if len(data.blocksizes) != len(node.links):
        raise UnixfsError(f"{cid}: {len(node.links)} links but {len(data.blocksizes)} sizes")
    if len(own) + sum(data.blocksizes) != total:
        raise UnixfsError(f"{cid}: sizes of its parts do not add up to {total}")
    if own:
        yield own
    for link, size in zip(node.links, data.blocksizes):
        yield from _cat(link.cid, get, size, depth + 1)


def check_name(name: str | None, parent: CID) -> str:
    """A directory entry name that is safe to create on disk, or UnixfsError."""
    if not name or name in (".", "..") or "/" in name or "\0" in name:
        raise UnixfsError(f"{parent}: unsafe entry name {name!r}")
    return name


def export(cid: CID, get: Get, out: Path, depth: int = 0) -> int:
    """Write ``cid`` (file, directory or symlink) to the new path ``out``; returns bytes
    written. Directory names are checked; nothing is written outside ``out``."""
    if depth > MAX_DEPTH:
        raise UnixfsError(f"{cid}: directories nested deeper than {MAX_DEPTH}")
    entry = inspect(cid, get)
    if entry.kind == "symlink":
        if not entry.target or b"\0" in entry.target:
            raise UnixfsError(f"{cid}: symlink target {entry.target!r} is not a path")
        os.symlink(entry.target, out)
        return 0
    if entry.kind == "file":
        written = 0
        with open(out, "xb") as f:
            for part in cat(cid, get):
                f.write(part)
                written += len(part)
        return written
    out.mkdir()
    seen: set[str] = set()
    written = 0
    for link in entry.links:
        name = check_name(link.name, cid)
        if name in seen:
            raise UnixfsError(f"{cid}: entry {name!r} appears twice")
        seen.add(name)
        written += export(link.cid, get, out / name, depth + 1)
    return written
