"""The node's IPFS block store: verified blocks on disk, recursive pins, quota and gc.

Layout (kubo's flatfs ``next-to-last/2``, so a kubo user finds the same files)::

    <data_dir>/blocks/SHARDING            /repo/flatfs/shard/v1/next-to-last/2
    <data_dir>/blocks/<XY>/<KEY>.data     one block, its bytes as they are
    <data_dir>/blocks/pins.json           {"version": 1, "pins": [CID strings]}
    <data_dir>/blocks/<XY>/.tmp-*         a write in progress (removed when the store opens)

``KEY`` is the block's multihash in base32 (RFC 4648, upper case, no padding), as kubo
names it, and ``XY`` its next-to-last two characters. Keyed by multihash, the same bytes
under a CIDv0 and a CIDv1, or as raw and dag-pb, are one file.

Every block is checked against its CID when it is put and whenever it is read; a file that
no longer matches is removed and counted. Writes go to a temp file in the block's own
directory, are fsynced, renamed into place and the directory fsynced: a crash never leaves a
half block visible. Bulk writers (a Bitswap pull) may skip the per-block fsyncs and call
``sync()`` once at the end; the check on read covers what a power cut does in between. Synchronous and thread-safe: the node calls it from worker threads.
One store per directory (one node per data dir).
"""

from __future__ import annotations

import base64
import errno
import functools
import itertools
import json
import logging
import os
import threading
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from meca_node.ipfs import dagpb
from meca_node.ipfs.cid import CID, RAW, CidError

log = logging.getLogger("meca_node.store")

SHARDING = "/repo/flatfs/shard/v1/next-to-last/2"
PINS_FILE = "pins.json"
TMP_PREFIX = ".tmp-"
SUFFIX = ".data"
#: DESIGN.md: blocks up to 2 MiB are accepted from peers; nothing larger is stored
MAX_BLOCK = 2 * 1024 * 1024
#: deeper than any DAG our importer or kubo makes (see unixfs.MAX_DEPTH)
MAX_DEPTH = 64
MAX_PINS = 65536
#: how many missing CIDs an error names before it only counts
SHOW_MISSING = 5
_FULL = (errno.ENOSPC, errno.EDQUOT)


def _load_syncfs():
    """libc's syncfs(2) (flush one filesystem), or None where there is none."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        return libc.syncfs
    except (OSError, AttributeError):
        return None


_syncfs = _load_syncfs()


class BlockStoreError(Exception):
    """A block store operation failed; the message says why and what to do."""


class BlockNotFound(BlockStoreError):
    """The block is not in the store."""


class BlockCorrupt(BlockStoreError):
    """A stored block no longer matched its CID; it has been removed."""


class BlockMismatch(BlockStoreError):
    """Bytes offered to ``put`` do not hash to the CID they came with; nothing was written."""


class BlockTooLarge(BlockStoreError):
    """A block over the size cap; nothing was written."""


class QuotaExceeded(BlockStoreError):
    """Storing the block would take the store over its quota; nothing was written."""


class DiskFull(BlockStoreError):
    """The disk (or the user's disk quota) ran out during a write; nothing was left behind."""


class PinError(BlockStoreError):
    """A pin could not be added, removed or walked."""


class MissingBlocks(PinError):
    """A pinned DAG lacks blocks; ``missing`` holds their CIDs."""

    def __init__(self, message: str, missing: list[CID]):
        super().__init__(message)
        self.missing = missing


class BlockPinned(BlockStoreError):
    """``delete`` refused a block that is pinned or protected."""


def block_key(cid: CID) -> str:
    """The file name stem of a block: its multihash in kubo's base32 form."""
    return _key_of(cid.multihash)


@functools.lru_cache(maxsize=4096)
def _key_of(multihash: bytes) -> str:
    # cached: a pull asks has() and then put() for each block, and base64's base32 is
    # Python code (~8 us here)
    return base64.b32encode(multihash).decode().rstrip("=")


def _describe_missing(missing: list[CID]) -> str:
    shown = ", ".join(str(c) for c in missing[:SHOW_MISSING])
    more = len(missing) - SHOW_MISSING
    return f"{len(missing)} block(s) missing: {shown}" + (f" and {more} more" if more > 0 else "")


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems cannot fsync a directory; the rename is still atomic there
    finally:
        os.close(fd)


_TMP_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | getattr(os, "O_NOFOLLOW", 0)
#: temp files of this process get unique names from a counter (O_EXCL: a name left by a
#: crashed process with the same pid is skipped)
_tmp_names = itertools.count()
_TMP_TRIES = 100


def _write_file(shard: str, final: str, data: bytes | memoryview, durable: bool = True,
                what: str = "", cid: CID | None = None) -> None:
    """``data`` into ``final`` (in directory ``shard``): temp file beside it, write, rename
    over it; with ``durable``, fsync the file and the directory too. The fewest system
    calls a temp file and rename allow: open, write, close, rename (the directory is made
    only when the open finds it missing). Blocks, the pin list and the SHARDING file all
    go through here; ``what`` names the file in errors (a block: ``cid``, formatted only
    on an error).

    On any failure the temp file is removed; ENOSPC/EDQUOT become :class:`DiskFull`."""
    tmp: str | None = None
    try:
        for _ in range(_TMP_TRIES):
            name = f"{shard}/{TMP_PREFIX}{os.getpid()}-{next(_tmp_names)}"
            try:
                fd = os.open(name, _TMP_FLAGS, 0o600)
            except FileExistsError:
                continue
            except FileNotFoundError:  # the first block of this shard
                os.makedirs(shard, exist_ok=True)
                if durable:
                    _fsync_dir(Path(shard).parent)
                continue
            tmp = name
            break
        else:
            raise BlockStoreError(f"cannot make a temp file in {shard} ({_TMP_TRIES} names "
                                  "taken or the directory keeps vanishing)")
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, final)
        tmp = None
        if durable:
            _fsync_dir(Path(shard))
    except OSError as exc:
        name = what or f"block {cid}"
        if exc.errno in _FULL:
            raise DiskFull(f"the disk holding {shard} is full ({exc.strerror}) while "
                           f"writing {name}; nothing was stored. Free space there (or "
                           "run `meca-node ipfs gc`) and try again") from None
        raise BlockStoreError(f"cannot write {name} to {final}: {exc}") from exc
    finally:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass


def _read_up_to(fd: int, n: int) -> bytes:
    """Up to ``n`` bytes from ``fd``, fewer only at the end of the file (one read of the
    right size, not a buffer of the largest block size)."""
    data = os.read(fd, n)
    if len(data) < n and data:
        parts = [data]
        got = len(data)
        while got < n:
            more = os.read(fd, n - got)
            if not more:
                break
            parts.append(more)
            got += len(more)
        data = b"".join(parts)
    return data


class Protection:
    """Blocks an in-progress pull holds against gc: every stored block reachable from the
    CIDs given (missing ones are skipped, the pull is not done). Add more with :meth:`add`."""

    def __init__(self, store: BlockStore):
        self._store = store
        self.cids: Counter[CID] = Counter()
        self._ended = False

    def add(self, *cids: CID) -> None:
        if self._ended:
            raise BlockStoreError("this protection has ended; open a new `protect()` block")
        with self._store._lock:
            for cid in cids:
                self.cids[cid] += 1
                self._store._protected[cid] += 1

    def _release(self) -> None:
        with self._store._lock:
            self._store._protected.subtract(self.cids)
            self._store._protected = +self._store._protected  # drop zero counts
            self.cids.clear()
            self._ended = True


class BlockStore:
    """Blocks under ``root`` (``<data_dir>/blocks``), at most ``quota_bytes`` of them
    (``None``: no quota)."""

    def __init__(self, root: Path, quota_bytes: int | None = None,
                 max_block: int = MAX_BLOCK, evict: bool = False):
        if quota_bytes is not None and quota_bytes < 0:
            raise ValueError(f"quota_bytes must be >= 0 or None, not {quota_bytes}")
        self.root = Path(root)
        self._root_s = str(self.root)
        self.quota_bytes = quota_bytes
        self.max_block = max_block
        #: at the quota, remove the least recently used unpinned, unprotected blocks to
        #: make room (a cache of pulled images); off: a put over the quota is refused
        self.evict = evict
        self.evicted_blocks = 0
        self.evicted_bytes = 0
        self._lock = threading.RLock()
        self._used = 0          # bytes of the block files on disk
        self._reserved = 0      # bytes of puts being written now
        self._count = 0
        self._corrupt = 0
        self._inflight: dict[str, threading.Event] = {}
        self._protected: Counter[CID] = Counter()
        self._pinned: dict[str, int] | None = None  # key -> size of every pinned block
        self.root.mkdir(parents=True, exist_ok=True)
        self._check_sharding()
        self._pins = self._load_pins()
        self._scan()

    # -- opening --------------------------------------------------------------------------
    def _check_sharding(self) -> None:
        marker = self.root / "SHARDING"
        try:
            found = marker.read_text().strip()
        except FileNotFoundError:
            _write_file(str(marker.parent), str(marker), (SHARDING + "\n").encode(),
                        what="the SHARDING file")
            return
        if found != SHARDING:
            raise BlockStoreError(f"{self.root} is sharded as {found!r}; this node reads only "
                                  f"{SHARDING!r}. Point the node at another data dir")

    def _load_pins(self) -> set[CID]:
        path = self.root / PINS_FILE
        try:
            doc = json.loads(path.read_bytes())
            if doc.get("version") != 1 or not isinstance(doc.get("pins"), list):
                raise ValueError("not a version 1 pin file")
            return {CID.parse(text) for text in doc["pins"]}
        except FileNotFoundError:
            return set()
        except (ValueError, AttributeError, TypeError, CidError) as exc:
            raise BlockStoreError(f"{path} is unreadable ({exc}); restore it from a backup or "
                                  "move it away (that drops every pin)") from None

    def _scan(self) -> None:
        """Count the blocks on disk and remove temp files a crash left behind."""
        for entry in self._shards():
            for name in os.listdir(entry):
                path = entry / name
                if name.startswith(TMP_PREFIX):
                    path.unlink(missing_ok=True)
                elif name.endswith(SUFFIX):
                    self._used += path.stat().st_size
                    self._count += 1
        for name in os.listdir(self.root):
            if name.startswith(TMP_PREFIX):
                (self.root / name).unlink(missing_ok=True)

    def _shards(self) -> Iterator[Path]:
        for name in sorted(os.listdir(self.root)):
            path = self.root / name
            if len(name) == 2 and path.is_dir():
                yield path

    # -- blocks ---------------------------------------------------------------------------
    def path_of(self, cid: CID) -> Path:
        key = block_key(cid)
        return self.root / key[-3:-1] / (key + SUFFIX)

    def _where(self, cid: CID) -> tuple[str, str, str]:
        """(key, shard directory, file) of a block, as strings (cheaper than ``Path``)."""
        key = block_key(cid)
        shard = f"{self._root_s}/{key[-3:-1]}"
        return key, shard, f"{shard}/{key}{SUFFIX}"

    def has(self, cid: CID) -> bool:
        return os.path.isfile(self._where(cid)[2])

    def size_of(self, cid: CID) -> int | None:
        """The stored block's size in bytes (from the file, unchecked), or None."""
        try:
            return os.stat(self._where(cid)[2]).st_size
        except FileNotFoundError:
            return None

    def put(self, cid: CID, data: bytes, *, durable: bool = True,
            hashed: bool = False) -> None:
        """Store ``data`` under ``cid`` after checking it; a block already present is free.

        ``durable=False`` skips the fsyncs (the write is still atomic: temp file, rename);
        a bulk writer such as a pull calls :meth:`sync` once at its end instead. Until
        then a power cut can leave such a block short or empty on disk, which the check
        on read catches (the block is removed and fetched again). ``hashed=True`` means
        the caller computed ``cid`` from these very bytes (Bitswap does, on receipt), so
        the hash is not computed twice."""
        if not hashed:
            data = bytes(data)  # a copy the caller cannot change between hash and write
        size = len(data)
        if size > self.max_block:
            raise BlockTooLarge(f"block {cid} has {size} bytes, over the "
                                f"{self.max_block}-byte cap; nothing was stored")
        if not hashed and not cid.verify(data):
            raise BlockMismatch(f"the bytes offered for {cid} hash to something else (a peer "
                                "sent the wrong block, or it was damaged); nothing was stored")
        key, shard, path = self._where(cid)
        done = self._reserve(key, path, cid, size)
        if done is None:
            return
        ok = False
        try:
            _write_file(shard, path, data, durable, cid=cid)
            ok = True
        finally:
            with self._lock:
                self._reserved -= size
                if ok:
                    self._used += size
                    self._count += 1
                del self._inflight[key]
            done.set()

    def _reserve(self, key: str, path: str, cid: CID, size: int) -> threading.Event | None:
        """Claim the write of ``key`` and its bytes under the quota; None if already there."""
        while True:
            with self._lock:
                waiting = self._inflight.get(key)
                if waiting is None:
                    if os.path.isfile(path):
                        return None
                    if self.quota_bytes is not None and self.evict and \
                            self._used + self._reserved + size > self.quota_bytes:
                        self._evict(self._used + self._reserved + size - self.quota_bytes)
                    if self.quota_bytes is not None and \
                            self._used + self._reserved + size > self.quota_bytes:
                        raise QuotaExceeded(
                            f"storing block {cid} ({size} bytes) would exceed the block store "
                            f"quota: {self._used} of {self.quota_bytes} bytes used, "
                            f"{self.pinned_bytes} of them pinned. Run `meca-node ipfs gc` to "
                            "remove unpinned blocks, or raise the quota")
                    self._reserved += size
                    done = self._inflight[key] = threading.Event()
                    return done
            waiting.wait()  # the same block is being written by another thread

    def sync(self) -> None:
        """Flush every write so far to disk (after puts with ``durable=False``): one
        ``syncfs`` of the store's filesystem where the C library has it, else ``sync``."""
        fd = os.open(self.root, os.O_RDONLY)
        try:
            if _syncfs is None or _syncfs(fd) != 0:
                os.sync()
        finally:
            os.close(fd)

    def get(self, cid: CID) -> bytes:
        """The block's bytes, checked against ``cid`` on every read."""
        path = self._where(cid)[2]
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise BlockNotFound(f"block {cid} is not in the store; fetch it first") from None
        try:
            st = os.fstat(fd)
            data = _read_up_to(fd, min(st.st_size, self.max_block) + 1)
        finally:
            os.close(fd)
        if len(data) <= self.max_block and cid.verify(data):
            if self.evict:  # a use: the block is younger for eviction
                try:
                    os.utime(path)
                except OSError:
                    pass
            return data
        with self._lock:
            try:
                same = os.stat(path)
                if (same.st_ino, same.st_dev) == (st.st_ino, st.st_dev):
                    self._remove(path, same.st_size)
                    self._corrupt += 1
                    self._pinned = None
            except FileNotFoundError:
                pass
        raise BlockCorrupt(f"block {cid} at {path} no longer matches its CID (a disk fault or "
                           "a hand edit); it has been removed, fetch it again")

    def delete(self, cid: CID) -> bool:
        """Remove the block; False if it was not there. A pinned block, or one named in a
        protection, stays (:class:`BlockPinned`): unpin it, or let the pull finish, first."""
        key, path = block_key(cid), self.path_of(cid)
        with self._lock:
            if key in self._pinned_keys():
                raise BlockPinned(f"block {cid} is pinned; unpin the DAG that holds it "
                                  "(`meca-node ipfs pin rm`) first")
            if any(block_key(c) == key for c in self._protected):
                raise BlockPinned(f"block {cid} is held by a pull in progress; try after it")
            try:
                size = path.stat().st_size
            except FileNotFoundError:
                return False
            self._remove(path, size)
            return True

    def _remove(self, path: Path | str, size: int) -> None:
        os.unlink(path)
        self._used = max(0, self._used - size)
        self._count = max(0, self._count - 1)

    # -- accounting (a read of one int attribute is atomic: no lock needed) ------------------
    @property
    def used_bytes(self) -> int:
        """Bytes of the block files on disk (writes in progress not counted)."""
        return self._used

    @property
    def count(self) -> int:
        return self._count

    @property
    def corrupt_removed(self) -> int:
        """How many blocks were removed since opening because they no longer matched."""
        return self._corrupt

    @property
    def pinned_bytes(self) -> int:
        """Bytes of the stored blocks reachable from a pin (each block counted once)."""
        with self._lock:
            return sum(self._pinned_keys().values())

    # -- pins -----------------------------------------------------------------------------
    def pins(self) -> list[CID]:
        with self._lock:
            return sorted(self._pins, key=str)

    def pin(self, cid: CID) -> None:
        """Pin the whole DAG under ``cid``: every block must be here (:class:`MissingBlocks`
        names the ones that are not)."""
        with self._lock:
            if cid in self._pins:
                return
            if len(self._pins) >= MAX_PINS:
                raise PinError(f"{MAX_PINS} pins already; unpin some before adding more")
            live, missing = self._walk([cid], strict=True)
            if missing:
                raise MissingBlocks(f"cannot pin {cid}: {_describe_missing(missing)}; fetch "
                                    "the whole DAG first", missing)
            self._save_pins(self._pins | {cid})
            if self._pinned is not None:
                self._pinned.update(live)

    def unpin(self, cid: CID) -> None:
        with self._lock:
            if cid not in self._pins:
                raise PinError(f"{cid} is not pinned (see `meca-node ipfs pin ls`)")
            self._save_pins(self._pins - {cid})
            self._pinned = None

    def _save_pins(self, pins: set[CID]) -> None:
        doc = {"version": 1, "pins": sorted(str(c) for c in pins)}
        _write_file(str(self.root), str(self.root / PINS_FILE),
                    json.dumps(doc, indent=1).encode(), what="the pin list")
        self._pins = pins

    @contextmanager
    def protect(self, cids: Iterable[CID] = ()) -> Iterator[Protection]:
        """Keep what is reachable from ``cids`` (and from CIDs added to the handle) out of
        :meth:`gc` while the block runs, e.g. the blocks of a pull still in progress."""
        guard = Protection(self)
        guard.add(*cids)
        try:
            yield guard
        finally:
            guard._release()

    def _pinned_keys(self) -> dict[str, int]:
        if self._pinned is None:
            live, _missing = self._walk(self._pins, strict=False)
            self._pinned = live
        return self._pinned

    def _walk(self, roots: Iterable[CID], strict: bool) -> tuple[dict[str, int], list[CID]]:
        """The stored blocks reachable from ``roots`` (key -> size) and the missing CIDs.
        ``strict``: a dag-pb block that does not decode is a :class:`PinError`."""
        live: dict[str, int] = {}
        missing: list[CID] = []
        seen: set[tuple[str, int]] = set()
        stack = [(cid, 0) for cid in roots]
        while stack:
            cid, depth = stack.pop()
            key = block_key(cid)
            if (key, cid.codec) in seen:
                continue
            seen.add((key, cid.codec))
            if depth > MAX_DEPTH:
                raise PinError(f"DAG deeper than {MAX_DEPTH} at {cid}; it is not one this "
                               "node pins")
            if cid.codec == RAW:
                try:
                    live[key] = self.path_of(cid).stat().st_size
                except FileNotFoundError:
                    missing.append(cid)
                continue
            try:
                block = self.get(cid)
            except (BlockNotFound, BlockCorrupt):
                missing.append(cid)
                continue
            live[key] = len(block)
            try:
                links = dagpb.link_cids(block)
            except dagpb.DagPbError as exc:
                if strict:
                    raise PinError(f"block {cid} is not valid dag-pb ({exc}); it cannot be "
                                   "pinned") from None
                continue
            stack.extend((link, depth + 1) for link in links)
        return live, missing

    # -- eviction -------------------------------------------------------------------------
    def _evict(self, need: int) -> int:
        """Remove unpinned, unprotected blocks, least recently used first (file mtime: set
        when written and on every read), until ``need`` bytes are free or none is left to
        remove; the bytes freed. Caller holds the lock."""
        pinned, _ = self._walk(self._pins, strict=False)
        candidates = []
        for path in self._unheld(pinned):
            try:
                st = path.stat()
            except FileNotFoundError:
                continue
            candidates.append((st.st_mtime_ns, st.st_size, path))
        candidates.sort()
        freed = 0
        for _, size, path in candidates:
            if freed >= need:
                break
            try:
                self._remove(path, size)
            except FileNotFoundError:
                continue
            freed += size
            self.evicted_blocks += 1
            self.evicted_bytes += size
        if freed:
            log.info("block store at its quota: evicted %d bytes of unpinned blocks "
                     "(least recently used first)", freed)
        return freed

    # -- gc -------------------------------------------------------------------------------
    def gc(self) -> tuple[int, int]:
        """Remove every block not reachable from a pin or a protection; returns (blocks
        removed, bytes freed). Refuses (:class:`MissingBlocks`) while a pinned DAG is
        incomplete, since its unreachable children could not be told from garbage."""
        with self._lock:
            pinned, missing = self._walk(self._pins, strict=False)
            if missing:
                raise MissingBlocks(f"gc refused: pinned DAGs lack {_describe_missing(missing)};"
                                    " fetch them again or unpin their DAGs", missing)
            self._pinned = pinned
            removed = freed = 0
            for path in self._unheld(pinned):
                size = path.stat().st_size
                self._remove(path, size)
                removed += 1
                freed += size
            return removed, freed

    def _unheld(self, pinned: dict[str, int]) -> list[Path]:
        """The stored blocks that neither a pin (``pinned``: its reachable keys), nor a
        protection, nor a write in progress holds. Caller holds the lock."""
        kept, _ = self._walk(list(self._protected), strict=False)
        kept.update(pinned)
        return [shard / name for shard in self._shards() for name in os.listdir(shard)
                if name.endswith(SUFFIX) and name[:-len(SUFFIX)] not in kept
                and name[:-len(SUFFIX)] not in self._inflight]
