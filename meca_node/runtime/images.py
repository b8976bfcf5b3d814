"""Docker images as UnixFS DAGs, so that images sharing base layers share blocks.

An image is kept as the directory that ``docker save`` writes, one UnixFS file per member
of the archive. Docker 20.10 saves the legacy layout::

    manifest.json                 [{"Config": "<id>.json", "RepoTags": [...], "Layers": [...]}]
    repositories                  (only when the image was saved by a tag)
    <config digest>.json          the image config
    <layer id>/layer.tar          one uncompressed layer (its sha256 is the config's diff_id)
    <layer id>/json, VERSION      legacy metadata; the same for a base layer in every image

(newer engines write the OCI layout, ``index.json``, ``oci-layout`` and ``blobs/sha256/``
beside ``manifest.json``; it is imported the same way). Each file is imported on its own
with the same settings, so a layer shared by two images is the same blocks in both.

``image_to_dag`` streams the archive from the engine member by member into ``put``;
nothing is written to disk. ``dag_to_image`` reads every block of the DAG and checks it
against its CID, exports the tree into a temporary folder (which checks its structure),
and only then streams a tar of it to ``docker load``. Both block: call them from a worker
thread (``trio.to_thread.run_sync``) in async code.
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
import re
import shutil
import tarfile
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, NamedTuple

from meca_node.ipfs import dagpb
from meca_node.ipfs.cid import CID, DAG_PB
from meca_node.ipfs.unixfs import (
    DIRECTORY, SYMLINK, Added, Data, Get, Put, Settings, UnixfsError, add_bytes, add_stream,
    export, inspect,
)

MANIFEST = "manifest.json"
#: a manifest.json larger than this is not from ``docker save``
MAX_MANIFEST = 16 * 1024 * 1024
#: how much of the archive one read from the engine (or one write to it) moves
CHUNK = 1024 * 1024
#: how many unreadable blocks an error names before it only counts
SHOW_MISSING = 5


class ImageDagError(Exception):
    """An image could not be turned into a DAG or back; the message says why and what to do."""


class Layer(NamedTuple):
    digest: str  # "sha256:<hex>" of the layer file as saved (the config's diff_id)
    size: int


@dataclass(frozen=True)
class ImageDag:
    cid: CID     # the directory of the saved archive
    size: int    # bytes of all its files together
    layers: list[Layer] = field(default_factory=list)  # in the manifest's order


# -- image -> DAG ----------------------------------------------------------------------------
class _ChunkReader:
    """A read-only file over an iterator of byte chunks (what the SDK's ``save`` yields)."""

    def __init__(self, chunks: Iterable[bytes]):
        self._chunks = iter(chunks)
        self._buf, self._pos = b"", 0

    def read(self, n: int = -1) -> bytes:
        while self._pos >= len(self._buf):
            chunk = next(self._chunks, None)
            if chunk is None:
                return b""
            self._buf, self._pos = chunk, 0
        end = len(self._buf) if n is None or n < 0 else self._pos + n
        out = self._buf[self._pos:end]
        self._pos += len(out)
        return out


class _Hashing:
    """Passes reads through, counting and hashing them."""

    def __init__(self, f: BinaryIO):
        self.f, self.sha, self.count = f, hashlib.sha256(), 0

    def read(self, n: int = -1) -> bytes:
        data = self.f.read(n)
        self.sha.update(data)
        self.count += len(data)
        return data


def _parts(name: str) -> list[str]:
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if not parts or ".." in parts or any("\0" in p for p in parts):
        raise ImageDagError(f"the saved archive has an unsafe member name {name!r}")
    return parts


def _node(node: dagpb.Node, put: Put, s: Settings) -> Added:
    block = dagpb.encode(node)
    cid = CID.of(block, DAG_PB, s.cid_version)
    put(cid, block)
    return Added(cid, 0, len(block))


def _directory(tree: dict[str, Any], put: Put, s: Settings) -> Added:
    """The UnixFS directory of ``tree`` (name -> Added or subtree), as kubo makes it."""
    links, size, tsize = [], 0, 0
    for name in sorted(tree, key=str.encode):
        child = tree[name]
        if isinstance(child, dict):
            child = _directory(child, put, s)
        links.append(dagpb.Link(child.cid, name, child.tsize))
        size, tsize = size + child.size, tsize + child.tsize
    node = _node(dagpb.Node(tuple(links), Data(DIRECTORY).encode()), put, s)
    return Added(node.cid, size, tsize + node.tsize)


def image_to_dag(client, image_ref: str, put: Put, settings: Settings = Settings(),
                 chunk_size: int = CHUNK) -> ImageDag:
    """``docker save`` the image ``image_ref`` and import the archive as a UnixFS directory,
    every block to ``put``. The image keeps its tag ``image_ref`` (or its first tag)."""
    import docker.errors

    try:
        image = client.images.get(image_ref)
    except docker.errors.ImageNotFound:
        raise ImageDagError(f"image {image_ref} is not on this host: build or pull it "
                            "first") from None
    named = image_ref if image_ref in image.tags else bool(image.tags)
    tree: dict[str, Any] = {}
    files: dict[str, tuple[Added, str]] = {}  # path -> (file, sha256 hex)
    symlinks: dict[str, str] = {}
    manifest = None
    try:
        stream = _ChunkReader(image.save(chunk_size=chunk_size, named=named))
        with tarfile.open(fileobj=stream, mode="r|") as tar:  # type: ignore[call-overload]
            for member in tar:
                parts = _parts(member.name)
                path, parent = "/".join(parts), tree
                for part in parts[:-1]:
                    parent = parent.setdefault(part, {})
                    if not isinstance(parent, dict):
                        raise ImageDagError(f"the saved archive has {path} below a file")
                if member.isdir():
                    parent.setdefault(parts[-1], {})
                    continue
                if member.isfile():
                    reader = _Hashing(tar.extractfile(member))  # type: ignore[arg-type]
                    if path == MANIFEST:
                        raw = reader.read(MAX_MANIFEST + 1)
                        manifest = _parse_manifest(raw)
                        added = add_bytes(raw, put, settings)
                    else:
                        added = add_stream(reader, put, settings)  # type: ignore[arg-type]
                    if reader.count != member.size:
                        raise ImageDagError(f"{path}: the archive ended inside it")
                    files[path] = (added, reader.sha.hexdigest())
                elif member.islnk():  # a hard link: the same content as a member before it
                    target = "/".join(_parts(member.linkname))
                    if target not in files:
                        raise ImageDagError(f"{path} links to {target}, not a file before it")
                    added, files[path] = files[target][0], files[target]
                elif member.issym():
                    symlinks[path] = member.linkname
                    added = _node(dagpb.Node((), Data(SYMLINK, member.linkname.encode())
                                             .encode()), put, settings)
                else:
                    raise ImageDagError(f"the saved archive has {path}, which is neither a "
                                        "file, a directory nor a link")
                parent[parts[-1]] = added
    except docker.errors.APIError as exc:
        raise ImageDagError(f"docker save {image_ref} failed: {exc.explanation or exc}") \
            from None
    except tarfile.TarError as exc:
        raise ImageDagError(f"docker save {image_ref} gave no readable tar ({exc}); is the "
                            "engine healthy? try `docker save` by hand") from None
    if manifest is None:
        raise ImageDagError(f"docker save {image_ref} gave no {MANIFEST}: this engine's "
                            "archive layout is not supported")
    layers = []
    for entry in manifest:
        for name in entry["Layers"]:
            path = "/".join(_parts(name))
            if path in symlinks:  # newer engines link legacy paths to blobs/
                path = posixpath.normpath(posixpath.join(posixpath.dirname(path),
                                                         symlinks[path]))
            if path not in files:
                raise ImageDagError(f"{MANIFEST} names layer {name}, which the archive "
                                    "lacks")
            added, sha = files[path]
            layers.append(Layer(f"sha256:{sha}", added.size))
    root = _directory(tree, put, settings)
    return ImageDag(root.cid, root.size, layers)


def _parse_manifest(raw: bytes) -> list[dict]:
    """The entries of a ``docker save`` manifest, or ImageDagError."""
    if len(raw) > MAX_MANIFEST:
        raise ImageDagError(f"{MANIFEST} is larger than {MAX_MANIFEST} bytes")
    try:
        manifest = json.loads(raw)
    except ValueError as exc:
        raise ImageDagError(f"{MANIFEST} is not JSON: {exc}") from None
    if not isinstance(manifest, list) or not manifest or not all(
            isinstance(e, dict) and isinstance(e.get("Config"), str)
            and isinstance(e.get("Layers"), list)
            and all(isinstance(x, str) for x in e["Layers"]) for e in manifest):
        raise ImageDagError(f"{MANIFEST} is not a docker image manifest (a list of "
                            "{Config, Layers} entries)")
    return manifest


# -- DAG -> image ----------------------------------------------------------------------------
def dag_to_image(client, cid: CID, get: Get, work_dir: Path) -> list[str]:
    """``docker load`` the image DAG ``cid``; returns the tags (or ids) docker loaded.

    Every block is read and checked against its CID, and the tree is exported under
    ``work_dir`` (checking its structure; it needs room for the image's files) before
    anything is sent to the engine; the exported tree is removed whatever happens."""
    import docker.errors

    _check_image_root(cid, get)
    _verify_blocks(cid, get)
    tmp = Path(tempfile.mkdtemp(prefix="meca-image-", dir=work_dir))
    try:
        tree = tmp / "image"
        try:
            export(cid, get, tree)
        except UnixfsError as exc:
            raise ImageDagError(f"image DAG {cid} is malformed: {exc}") from None
        manifest = _parse_manifest((tree / MANIFEST).read_bytes()[:MAX_MANIFEST + 1])
        for entry in manifest:
            for name in [entry["Config"], *entry["Layers"]]:
                path = tree.joinpath(*_parts(name))
                if not path.resolve().is_relative_to(tree.resolve()) or not path.is_file():
                    raise ImageDagError(f"image DAG {cid}: {MANIFEST} names {name}, which "
                                        "is not a file in the DAG")
        loaded = []
        try:
            for line in client.api.load_image(_tar_chunks(tree), quiet=True):
                if "error" in line:
                    raise ImageDagError(f"docker load of {cid} failed: {line['error']}")
                found = re.match(r"Loaded image(?: ID)?: (.+)", line.get("stream", ""))
                if found:
                    loaded.append(found.group(1).strip())
        except docker.errors.APIError as exc:
            raise ImageDagError(f"docker load of {cid} failed: {exc.explanation or exc}") \
                from None
        return loaded
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _check_image_root(cid: CID, get: Get) -> None:
    try:
        root = inspect(cid, get)
    except UnixfsError as exc:
        raise ImageDagError(f"{cid} is not an image DAG: {exc}") from None
    except Exception as exc:
        raise ImageDagError(f"the root block {cid} of the image cannot be read "
                            f"({_reason(exc)}): "
                            "fetch the image's blocks first") from None
    if root.kind != "directory" or MANIFEST not in {ln.name for ln in root.links}:
        raise ImageDagError(f"{cid} is not an image DAG: a {root.kind} without "
                            f"{MANIFEST} (make one with image_to_dag)")


def _reason(exc: Exception) -> str:
    return "missing" if isinstance(exc, KeyError) else str(exc)  # a dict's KeyError: the key


def _verify_blocks(root: CID, get: Get) -> None:
    """Read every block under ``root`` and check its hash, or raise ImageDagError naming
    the blocks that are missing or do not match."""
    seen: set[CID] = set()
    stack, bad = [root], []
    while stack:
        cid = stack.pop()
        if cid in seen:
            continue
        seen.add(cid)
        try:
            block = get(cid)
        except Exception as exc:  # a store says missing or corrupt in its own words
            bad.append(f"{cid} ({_reason(exc)})")
            continue
        if not cid.verify(block):
            bad.append(f"{cid} (its bytes do not match)")
            continue
        if cid.codec == DAG_PB:
            try:
                stack.extend(dagpb.link_cids(block))
            except dagpb.DagPbError as exc:
                raise ImageDagError(f"image DAG {root}: block {cid}: {exc}") from None
    if bad:
        more = len(bad) - SHOW_MISSING
        raise ImageDagError(
            f"image DAG {root}: {len(bad)} block(s) missing or corrupt: "
            + ", ".join(bad[:SHOW_MISSING]) + (f" and {more} more" if more > 0 else "")
            + "; nothing was loaded. Fetch the image's blocks again")


def _tar_chunks(root: Path, rel: str = "") -> Iterator[bytes]:
    """A tar of the tree under ``root``, streamed (sorted, mtimes 0, no owners)."""
    for entry in sorted(os.scandir(root / rel), key=lambda e: e.name):
        info = tarfile.TarInfo(rel + entry.name)
        if entry.is_symlink():
            info.type, info.linkname = tarfile.SYMTYPE, os.readlink(entry.path)
        elif entry.is_dir():
            info.type, info.mode = tarfile.DIRTYPE, 0o755
        else:
            info.size, info.mode = entry.stat().st_size, 0o644
        yield info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")
        if info.isdir():
            yield from _tar_chunks(root, f"{info.name}/")
        elif info.isfile():
            with open(entry.path, "rb") as f:
                sent = 0
                while chunk := f.read(CHUNK):
                    sent += len(chunk)
                    yield chunk
            if sent != info.size:
                raise ImageDagError(f"{entry.path} changed while it was sent")
            yield b"\0" * (-info.size % tarfile.BLOCKSIZE)
    if not rel:
        yield b"\0" * (2 * tarfile.BLOCKSIZE)
