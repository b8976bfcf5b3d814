"""The node's IPFS block store: verified blocks in pack files under an SQLite index,
recursive pins, quota, eviction and gc.

Layout::

    <data_dir>/blocks/index.sqlite     block digest -> (pack, offset, size, last use); WAL
    <data_dir>/blocks/packs/<N>.pack   blocks end to end, their bytes as they are (N = 1, 2..)
    <data_dir>/blocks/pins.json        {"version": 1, "pins": [CID strings]}

Why packs and not kubo's file per block (flatfs): making a file per 256 KiB block, then
renaming it into place, cost 25-160 us per block on the machines measured (bench/README.md),
up to as much as hashing it; an append costs the write alone, and a read is one ``pread``
on an open file. A store an earlier version made in the flatfs layout (a ``SHARDING`` file beside
two-letter shard directories) is moved into packs when it opens, each block checked.

Blocks are keyed by their sha2-256 digest: the same bytes under a CIDv0 and a CIDv1, or as
raw and dag-pb, are one block.

- **Checked**: every block is checked against its CID when it is put and whenever it is
  read; one that no longer matches is removed and counted.
- **Atomic**: a put appends to the newest pack, then commits the block's index row. A block
  exists once its row is committed: a crash before that leaves bytes that no row names,
  which the next open cuts off the pack's end. A durable put syncs the pack before the row
  and commits the row with ``synchronous=FULL``. Bulk writers (a Bitswap pull) put with
  ``durable=False`` (row committed, nothing synced: safe against a killed process) and call
  :meth:`BlockStore.sync` now and then; a power cut in between can lose rows, or keep a
  row whose bytes never reached the disk, which the check on read catches.
- **Space**: delete, gc and eviction punch the block's bytes out of its pack (``fallocate``
  ``PUNCH_HOLE``: the space is freed at once on ext4, xfs, btrfs and tmpfs); a pack left
  with no block is removed.

Synchronous and thread-safe: the node calls it from worker threads. One store per
directory (one node per data dir).
"""

from __future__ import annotations

import base64
import ctypes
import ctypes.util
import errno
import functools
import itertools
import json
import logging
import os
import sqlite3
import threading
import time
import weakref
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from meca_node.ipfs import dagpb
from meca_node.ipfs.cid import CID, RAW, CidError

log = logging.getLogger("meca_node.store")

INDEX_FILE = "index.sqlite"
PACKS_DIR = "packs"
PACK_SUFFIX = ".pack"
PINS_FILE = "pins.json"
TMP_PREFIX = ".tmp-"
INDEX_VERSION = 1
#: a new pack is begun once the newest holds this much (few open files for a large store)
PACK_BYTES = 1 << 30
#: DESIGN.md: blocks up to 2 MiB are accepted from peers; nothing larger is stored
MAX_BLOCK = 2 * 1024 * 1024
#: deeper than any DAG our importer or kubo makes (see unixfs.MAX_DEPTH)
MAX_DEPTH = 64
MAX_PINS = 65536
#: how many missing CIDs an error names before it only counts
SHOW_MISSING = 5
_FULL = (errno.ENOSPC, errno.EDQUOT)
#: SQLite's result code for a full disk (``sqlite3.Error.sqlite_errorcode``)
_SQLITE_FULL = 13
#: the multihash prefix of a sha2-256 digest (code 0x12, 32 bytes)
_SHA2_256 = b"\x12\x20"
#: kubo's flatfs layout, which earlier versions of this store used (moved into packs)
_FLATFS_MARKER = "SHARDING"
_FLATFS_SUFFIX = ".data"


def _load_libc():
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    except OSError:
        return None


_libc = _load_libc()
_syncfs = getattr(_libc, "syncfs", None)
_fallocate = getattr(_libc, "fallocate", None)
if _fallocate is not None:
    _fallocate.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64)
_PUNCH_HOLE = 0x02 | 0x01  # FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE (linux/falloc.h)


def _punch(fd: int, offset: int, length: int) -> bool:
    """Free ``length`` bytes at ``offset`` of a pack (they read as zeros after); False
    where the filesystem cannot (the space comes back when the whole pack is removed)."""
    if _fallocate is None or length <= 0:
        return False
    return _fallocate(fd, _PUNCH_HOLE, offset, length) == 0


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
    """A block's name as kubo gives it (its multihash in base32, upper case, no padding);
    blocks with the same key are one block here."""
    return _key_of(cid.multihash)


@functools.lru_cache(maxsize=4096)
def _key_of(multihash: bytes) -> str:
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


def _disk_full(where: object, what: str, strerror: str) -> DiskFull:
    return DiskFull(f"the disk holding {where} is full ({strerror}) while writing {what}; "
                    "nothing was stored. Free space there (or run `meca-node ipfs gc`) and "
                    "try again")


def _write_file(path: Path, data: bytes, what: str) -> None:
    """``data`` into ``path``, atomically and durably: a temp file beside it, written,
    fsynced, renamed over it, the directory fsynced. On any failure the temp file is
    removed; ENOSPC/EDQUOT become :class:`DiskFull`. For the pin list."""
    tmp: str | None = None
    try:
        for _ in range(_TMP_TRIES):
            name = f"{path.parent}/{TMP_PREFIX}{os.getpid()}-{next(_tmp_names)}"
            try:
                fd = os.open(name, _TMP_FLAGS, 0o600)
            except FileExistsError:
                continue
            tmp = name
            break
        else:
            raise BlockStoreError(f"cannot make a temp file in {path.parent} ({_TMP_TRIES} "
                                  "names taken)")
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        tmp = None
        _fsync_dir(path.parent)
    except OSError as exc:
        if exc.errno in _FULL:
            raise _disk_full(path.parent, what, exc.strerror) from None
        raise BlockStoreError(f"cannot write {what} to {path}: {exc}") from exc
    finally:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass


def _close_all(db: sqlite3.Connection, fds: dict[int, int]) -> None:
    """Close a store's index and pack files (when it is closed or collected)."""
    for fd in fds.values():
        try:
            os.close(fd)
        except OSError:
            pass
    fds.clear()
    db.close()


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
    (``None``: no quota). ``clock`` gives the seconds that order eviction (last use)."""

    def __init__(self, root: Path, quota_bytes: int | None = None,
                 max_block: int = MAX_BLOCK, evict: bool = False,
                 clock: Callable[[], float] = time.time):
        if quota_bytes is not None and quota_bytes < 0:
            raise ValueError(f"quota_bytes must be >= 0 or None, not {quota_bytes}")
        self.root = Path(root)
        self.quota_bytes = quota_bytes
        self.max_block = max_block
        #: at the quota, remove the least recently used unpinned, unprotected blocks to
        #: make room (a cache of pulled images); off: a put over the quota is refused
        self.evict = evict
        self.evicted_blocks = 0
        self.evicted_bytes = 0
        self._clock = clock
        self._lock = threading.RLock()
        self._used = 0          # bytes of the indexed blocks
        self._reserved = 0      # bytes of puts being written now
        self._count = 0
        self._corrupt = 0
        self._inflight: dict[bytes, threading.Event] = {}
        self._protected: Counter[CID] = Counter()
        self._pinned: dict[bytes, int] | None = None  # digest -> size of every pinned block
        self._packs = self.root / PACKS_DIR
        self._packs_s = str(self._packs)
        self._fds: dict[int, int] = {}
        #: per pack: its indexed blocks plus the reads and writes in progress; a pack is
        #: removed when this reaches 0, unless it is the one being appended to
        self._refs: Counter[int] = Counter()
        self._pack = 0          # the pack being appended to (0: none yet)
        self._end = 0           # its length, writes in progress included
        self._packs.mkdir(parents=True, exist_ok=True)
        self._db = self._open_index()
        self._closer = weakref.finalize(self, _close_all, self._db, self._fds)
        self._pins = self._load_pins()
        self._recover()
        self._move_flatfs()

    def close(self) -> None:
        """Close the index and the pack files (also done when the store is collected)."""
        with self._lock:
            self._closer()

    # -- opening --------------------------------------------------------------------------
    def _open_index(self) -> sqlite3.Connection:
        path = self.root / INDEX_FILE
        try:
            db = sqlite3.connect(path, isolation_level=None, check_same_thread=False,
                                 timeout=30)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version == 0:
                db.execute("CREATE TABLE IF NOT EXISTS blocks (digest BLOB PRIMARY KEY, "
                           "pack INTEGER NOT NULL, off INTEGER NOT NULL, "
                           "size INTEGER NOT NULL, used INTEGER NOT NULL) WITHOUT ROWID")
                db.execute(f"PRAGMA user_version={INDEX_VERSION}")
            elif version != INDEX_VERSION:
                db.close()
                raise BlockStoreError(f"the block index {path} is version {version}; this "
                                      f"node reads version {INDEX_VERSION}. Upgrade the "
                                      "node or point it at another data dir")
            return db
        except sqlite3.Error as exc:
            raise BlockStoreError(f"the block index {path} is unreadable ({exc}); move "
                                  f"{self.root} away (that drops every stored block) and "
                                  "start again") from None

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

    def _recover(self) -> None:
        """Count the indexed blocks; cut off what a crash left after a pack's last indexed
        block, remove packs no block is in, and drop the rows of packs that are gone."""
        packs = {pack: (n, size, end) for pack, n, size, end in self._db.execute(
            "SELECT pack, COUNT(*), SUM(size), MAX(off + size) FROM blocks GROUP BY pack")}
        on_disk = {int(name[:-len(PACK_SUFFIX)]) for name in os.listdir(self._packs)
                   if name.endswith(PACK_SUFFIX) and name[:-len(PACK_SUFFIX)].isdigit()}
        for pack in sorted(set(packs) - on_disk):
            n, size, _ = packs.pop(pack)
            log.warning("pack %s is gone from %s: its %d block(s) (%d bytes) are dropped and "
                        "will be fetched again when needed", pack, self._packs, n, size)
            self._db.execute("DELETE FROM blocks WHERE pack=?", (pack,))
        ends: dict[int, int] = {}
        for pack, (n, size, end) in packs.items():
            self._refs[pack], ends[pack] = n, end
            self._count += n
            self._used += size
        for pack in on_disk:
            if pack not in ends:
                os.unlink(self._pack_path(pack))
            elif os.stat(self._pack_path(pack)).st_size > ends[pack]:
                os.truncate(self._pack_path(pack), ends[pack])
        self._pack = max(ends, default=0)
        self._end = ends.get(self._pack, 0)
        for name in os.listdir(self.root):
            if name.startswith(TMP_PREFIX):  # a pin list write a crash cut short
                (self.root / name).unlink(missing_ok=True)

    def _move_flatfs(self) -> None:
        """Move the blocks of an earlier version's flatfs layout into packs, each checked
        (one that does not match its name is dropped); a crash midway resumes on the next
        open, since the marker file goes last."""
        marker = self.root / _FLATFS_MARKER
        if not marker.exists():
            return
        moved = dropped = 0
        for shard in sorted(self.root.iterdir()):
            if len(shard.name) != 2 or not shard.is_dir():
                continue
            paths = sorted(shard.iterdir())
            for path in paths:
                if not path.name.endswith(_FLATFS_SUFFIX):
                    continue
                try:
                    body = path.name[:-len(_FLATFS_SUFFIX)]
                    multihash = base64.b32decode(body + "=" * (-len(body) % 8))
                    if multihash[:2] != _SHA2_256:
                        raise ValueError("not a sha2-256 multihash")
                    cid = CID(1, RAW, multihash[2:])
                    self.put(cid, path.read_bytes(), durable=False)
                    moved += 1
                except (ValueError, CidError, OSError, BlockMismatch, BlockTooLarge,
                        QuotaExceeded):
                    dropped += 1
            self.sync()  # the moved blocks are on disk before their files go
            for path in paths:
                path.unlink(missing_ok=True)
            shard.rmdir()
        marker.unlink()
        _fsync_dir(self.root)
        log.info("block store %s moved from the flatfs layout into packs: %d block(s) moved, "
                 "%d dropped (damaged, or over the quota)", self.root, moved, dropped)

    # -- packs ----------------------------------------------------------------------------
    def _pack_path(self, pack: int) -> str:
        return f"{self._packs_s}/{pack}{PACK_SUFFIX}"

    def _fd(self, pack: int, create: bool = False) -> int:
        """The open file of ``pack``. With ``create`` (writes only) a missing pack is made,
        its name synced into the directory so a durable put in it survives a power cut;
        without, a missing pack raises FileNotFoundError. Caller holds the lock."""
        fd = self._fds.get(pack)
        if fd is None:
            path = self._pack_path(pack)
            try:
                fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
            except FileNotFoundError:
                if not create:
                    raise
                fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
                _fsync_dir(self._packs)
            self._fds[pack] = fd
        return fd

    def _release(self, pack: int) -> None:
        """One reference to ``pack`` fewer; the last one removes it, or empties it if it is
        the pack being appended to. Caller holds the lock."""
        self._refs[pack] -= 1
        if self._refs[pack] > 0:
            return
        del self._refs[pack]
        if pack == self._pack:
            self._end = 0
            fd = self._fds.get(pack)
            if fd is not None:
                try:
                    os.ftruncate(fd, 0)
                except OSError:
                    pass  # cut off on the next open
        else:
            fd = self._fds.pop(pack, None)
            if fd is not None:
                os.close(fd)
            try:
                os.unlink(self._pack_path(pack))
            except FileNotFoundError:
                pass

    # -- blocks ---------------------------------------------------------------------------
    def _row(self, key: bytes) -> tuple[int, int, int, int] | None:
        """(pack, offset, size, last use) of an indexed block. Caller holds the lock."""
        return self._db.execute("SELECT pack, off, size, used FROM blocks WHERE digest=?",
                                (key,)).fetchone()

    def has(self, cid: CID) -> bool:
        with self._lock:
            return self._row(cid.digest) is not None

    def size_of(self, cid: CID) -> int | None:
        """The stored block's size in bytes (from the index, unchecked), or None."""
        with self._lock:
            row = self._row(cid.digest)
        return None if row is None else row[2]

    def locate(self, cid: CID) -> tuple[Path, int, int] | None:
        """Where a block's bytes are: (pack file, offset, size), or None."""
        with self._lock:
            row = self._row(cid.digest)
        return None if row is None else (Path(self._pack_path(row[0])), row[1], row[2])

    def put(self, cid: CID, data: bytes, *, durable: bool = True,
            hashed: bool = False) -> None:
        """Store ``data`` under ``cid`` after checking it; a block already present is free.

        ``durable=False`` skips the syncs (the put is still atomic); a bulk writer such as
        a pull calls :meth:`sync` now and then instead. Until then a power cut can lose the
        block, or leave its bytes unwritten, which the check on read catches (the block is
        removed and fetched again). ``hashed=True`` means the caller computed ``cid`` from
        these very bytes (Bitswap does, on receipt), so the hash is not computed twice."""
        if not hashed:
            data = bytes(data)  # a copy the caller cannot change between hash and write
        size = len(data)
        if size > self.max_block:
            raise BlockTooLarge(f"block {cid} has {size} bytes, over the "
                                f"{self.max_block}-byte cap; nothing was stored")
        if not hashed and not cid.verify(data):
            raise BlockMismatch(f"the bytes offered for {cid} hash to something else (a peer "
                                "sent the wrong block, or it was damaged); nothing was stored")
        key = cid.digest
        claim = self._reserve(key, cid, size)
        if claim is None:
            return
        done, fd, pack, off = claim
        ok = False
        try:
            try:
                view = memoryview(data)
                at = off
                while view:
                    n = os.pwrite(fd, view, at)
                    view, at = view[n:], at + n
                if durable:
                    os.fdatasync(fd)
            except OSError as exc:
                if exc.errno in _FULL:
                    raise _disk_full(self.root, f"block {cid}", exc.strerror) from None
                raise BlockStoreError(f"cannot write block {cid} to "
                                      f"{self._pack_path(pack)}: {exc}") from exc
            with self._lock:
                self._insert(key, pack, off, size, durable, cid)
                self._used += size
                self._count += 1
                ok = True
        finally:
            with self._lock:
                self._reserved -= size
                if not ok:
                    self._unwrite(pack, off, size)
                del self._inflight[key]
            done.set()

    def _reserve(self, key: bytes, cid: CID,
                 size: int) -> tuple[threading.Event, int, int, int] | None:
        """Claim the write of ``key``: its bytes under the quota and its place at the end
        of the newest pack; (done event, pack file, pack, offset), or None if already
        stored."""
        while True:
            with self._lock:
                waiting = self._inflight.get(key)
                if waiting is None:
                    if self._row(key) is not None:
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
                    if self._pack == 0 or (self._end and self._end + size > PACK_BYTES):
                        self._begin_pack()
                    try:
                        fd = self._fd(self._pack, create=True)
                    except OSError as exc:
                        if exc.errno in _FULL:
                            raise _disk_full(self.root, f"block {cid}", exc.strerror) from None
                        raise BlockStoreError(f"cannot open {self._pack_path(self._pack)}: "
                                              f"{exc}") from exc
                    off = self._end
                    self._end += size
                    self._refs[self._pack] += 1
                    self._reserved += size
                    done = self._inflight[key] = threading.Event()
                    return done, fd, self._pack, off
            waiting.wait()  # the same block is being written by another thread

    def _begin_pack(self) -> None:
        """Append to a new pack from now on. Caller holds the lock."""
        old = self._pack
        self._pack, self._end = old + 1, 0
        if old and self._refs[old] <= 0:
            self._refs[old] = 1
            self._release(old)

    def _insert(self, key: bytes, pack: int, off: int, size: int, durable: bool,
                cid: CID) -> None:
        """Commit a written block's index row (with ``durable``, synced). Caller holds
        the lock."""
        try:
            if durable:
                self._db.execute("PRAGMA synchronous=FULL")
            try:
                self._db.execute("INSERT INTO blocks VALUES (?, ?, ?, ?, ?)",
                                 (key, pack, off, size, int(self._clock())))
            finally:
                if durable:
                    self._db.execute("PRAGMA synchronous=NORMAL")
        except sqlite3.Error as exc:
            raise self._index_error(exc, f"block {cid}") from None

    def _index_error(self, exc: sqlite3.Error, what: str) -> BlockStoreError:
        if getattr(exc, "sqlite_errorcode", None) == _SQLITE_FULL:
            return _disk_full(self.root, what, "the block index could not grow")
        return BlockStoreError(f"the block index {self.root / INDEX_FILE} failed while "
                               f"writing {what}: {exc}")

    def _unwrite(self, pack: int, off: int, size: int) -> None:
        """Undo a failed write's place: cut it off the pack if it is the last, else punch
        it out. Caller holds the lock."""
        fd = self._fds.get(pack)
        if pack == self._pack and self._end == off + size:
            self._end = off
            if fd is not None:
                try:
                    os.ftruncate(fd, off)
                except OSError:
                    pass  # cut off on the next open
        elif fd is not None:
            _punch(fd, off, size)
        self._release(pack)

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
        key = cid.digest
        with self._lock:
            row = self._row(key)
            if row is None:
                raise BlockNotFound(f"block {cid} is not in the store; fetch it first")
            pack, off, size, used = row
            try:
                fd = self._fd(pack)
            except FileNotFoundError:  # the pack went behind our back: the check below
                fd = -1
            self._refs[pack] += 1  # the pack stays while it is read
        try:
            data = os.pread(fd, size, off)
        except OSError:
            data = b""
        finally:
            with self._lock:
                self._release(pack)
        if len(data) == size and cid.verify(data):
            if self.evict:  # a use: the block is younger for eviction
                now = int(self._clock())
                if now > used:
                    with self._lock:
                        self._db.execute("UPDATE blocks SET used=? WHERE digest=?", (now, key))
            return data
        with self._lock:
            changed = self._row(key) != row
            if not changed:
                self._remove(key, pack, off, size)
                self._corrupt += 1
                self._pinned = None
        if changed:  # removed (or removed and stored again) while it was read
            return self.get(cid)
        raise BlockCorrupt(f"block {cid} at offset {off} of {self._pack_path(pack)} no longer "
                           "matches its CID (a disk fault or a hand edit); it has been "
                           "removed, fetch it again")

    def delete(self, cid: CID) -> bool:
        """Remove the block; False if it was not there. A pinned block, or one named in a
        protection, stays (:class:`BlockPinned`): unpin it, or let the pull finish, first."""
        key = cid.digest
        with self._lock:
            if key in self._pinned_keys():
                raise BlockPinned(f"block {cid} is pinned; unpin the DAG that holds it "
                                  "(`meca-node ipfs pin rm`) first")
            if any(c.digest == key for c in self._protected):
                raise BlockPinned(f"block {cid} is held by a pull in progress; try after it")
            row = self._row(key)
            if row is None:
                return False
            self._remove(key, *row[:3])
            return True

    def _remove(self, key: bytes, pack: int, off: int, size: int) -> None:
        """Drop a block: its bytes punched out first (the space is back even if the disk is
        too full for the index to change; a row left naming zeros fails its check on read
        and goes then), then its row. Caller holds the lock."""
        try:
            _punch(self._fd(pack), off, size)
        except FileNotFoundError:
            pass  # the pack is gone already
        try:
            self._db.execute("DELETE FROM blocks WHERE digest=?", (key,))
        except sqlite3.Error as exc:
            raise self._index_error(exc, "the removal of a block") from None
        self._used = max(0, self._used - size)
        self._count = max(0, self._count - 1)
        self._release(pack)

    # -- accounting (a read of one int attribute is atomic: no lock needed) ------------------
    @property
    def used_bytes(self) -> int:
        """Bytes of the stored blocks (writes in progress not counted)."""
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
        _write_file(self.root / PINS_FILE, json.dumps(doc, indent=1).encode(), "the pin list")
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

    def _pinned_keys(self) -> dict[bytes, int]:
        if self._pinned is None:
            live, _missing = self._walk(self._pins, strict=False)
            self._pinned = live
        return self._pinned

    def _walk(self, roots: Iterable[CID], strict: bool) -> tuple[dict[bytes, int], list[CID]]:
        """The stored blocks reachable from ``roots`` (digest -> size) and the missing CIDs.
        ``strict``: a dag-pb block that does not decode is a :class:`PinError`."""
        live: dict[bytes, int] = {}
        missing: list[CID] = []
        seen: set[tuple[bytes, int]] = set()
        stack = [(cid, 0) for cid in roots]
        while stack:
            cid, depth = stack.pop()
            key = cid.digest
            if (key, cid.codec) in seen:
                continue
            seen.add((key, cid.codec))
            if depth > MAX_DEPTH:
                raise PinError(f"DAG deeper than {MAX_DEPTH} at {cid}; it is not one this "
                               "node pins")
            if cid.codec == RAW:
                size = self.size_of(cid)
                if size is None:
                    missing.append(cid)
                else:
                    live[key] = size
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
        """Remove unpinned, unprotected blocks, least recently used first (last use: when
        written, and each read), until ``need`` bytes are free or none is left to remove;
        the bytes freed. Caller holds the lock."""
        pinned, _ = self._walk(self._pins, strict=False)
        freed = 0
        for key, pack, off, size in self._unheld(pinned):
            if freed >= need:
                break
            self._remove(key, pack, off, size)
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
            for key, pack, off, size in self._unheld(pinned):
                self._remove(key, pack, off, size)
                removed += 1
                freed += size
            return removed, freed

    def _unheld(self, pinned: dict[bytes, int]) -> list[tuple[bytes, int, int, int]]:
        """(digest, pack, offset, size) of the stored blocks that neither a pin
        (``pinned``: its reachable digests) nor a protection holds, least recently used
        first (then in the order they were written). Caller holds the lock."""
        kept, _ = self._walk(list(self._protected), strict=False)
        kept.update(pinned)
        rows = self._db.execute("SELECT digest, pack, off, size FROM blocks "
                                "ORDER BY used, pack, off").fetchall()
        return [row for row in rows if row[0] not in kept]
