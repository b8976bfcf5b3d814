"""The node's IPFS: its block store, Bitswap, and the add/cat/get/pin/gc operations that
the control API (and through it ``meca-node ipfs``) offers.

Disk work (importing, exporting, hashing) runs in worker threads; fetching runs on the
trio loop through :class:`~meca_node.net.bitswap.Bitswap`. Content that is not here is
pulled from connected peers first, protected from gc while it arrives.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import trio

from meca_node.ipfs import unixfs
from meca_node.ipfs.cid import CID
from meca_node.net.bitswap import Bitswap, PullError, PullStats
from meca_node.net.host import Libp2pNet
from meca_node.store.blocks import BlockStore

#: how often a long operation reports progress
PROGRESS_EVERY_S = 0.25


@dataclass
class Job:
    """A long operation: progress counters and its end (result or error)."""

    kind: str
    total: int = 0
    done_bytes: int = 0
    started: float = field(default_factory=time.monotonic)
    finished: trio.Event = field(default_factory=trio.Event)
    result: dict | None = None
    error: str | None = None
    peers: int = 0

    def line(self) -> dict:
        seconds = time.monotonic() - self.started
        out = {"op": self.kind, "bytes": self.done_bytes, "seconds": round(seconds, 3)}
        if self.total:
            out["total"] = self.total
        if self.peers:
            out["peers"] = self.peers
        if seconds > 0:
            out["mb_s"] = round(self.done_bytes / 1e6 / seconds, 2)
        return out

    async def progress(self) -> AsyncIterator[dict]:
        """Progress lines every PROGRESS_EVERY_S until the job ends, then its result line
        (``{"error": ...}`` if it failed)."""
        while not self.finished.is_set():
            with trio.move_on_after(PROGRESS_EVERY_S):
                await self.finished.wait()
            if not self.finished.is_set():
                yield {"progress": self.line()}
        yield {"error": self.error} if self.error else {"done": self.result or {}}


class IpfsNode:
    """Start with ``await nursery.start(ipfs.run)``."""

    def __init__(self, net: Libp2pNet, store: BlockStore, *,
                 pull_timeout_s: float = 600.0) -> None:
        self.net = net
        self.store = store
        self.bitswap = Bitswap(net, store)
        self.pull_timeout_s = pull_timeout_s
        self._nursery: trio.Nursery | None = None

    async def run(self, task_status=trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            await nursery.start(self.bitswap.run)
            task_status.started()
            await trio.sleep_forever()

    def start_job(self, job: Job, work: Callable) -> Job:
        """Run ``await work(job)`` in the node's nursery; ``job`` reports its progress."""
        async def runner() -> None:
            try:
                job.result = await work(job)
            except Exception as exc:
                job.error = str(exc) or type(exc).__name__
            finally:
                job.finished.set()

        assert self._nursery is not None, "IpfsNode.run has not started"
        self._nursery.start_soon(runner)
        return job

    # -- add ------------------------------------------------------------------------
    def add(self, path: Path, settings: unixfs.Settings, pin: bool = True) -> Job:
        """Import ``path`` (file or directory) into the store and pin it."""
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"{path} does not exist (the node reads it itself: give "
                                    "a path this node's user can read)")
        job = Job("add", total=_size_of(path, settings.hidden))

        def count(n: int) -> None:
            job.done_bytes += n

        async def work(job: Job) -> dict:
            added = await trio.to_thread.run_sync(unixfs.add_path, path, self.store.put,
                                                  settings, count)
            if pin:
                await trio.to_thread.run_sync(self.store.pin, added.cid)
            return {"cid": str(added.cid), "size": added.size, "tsize": added.tsize,
                    "pinned": pin}

        return self.start_job(job, work)

    # -- fetching -------------------------------------------------------------------
    async def connect(self, addrs: list[str]) -> None:
        """Dial each ``/p2p/`` multiaddr (peers to fetch from); PullError if none answers."""
        errors = []
        for addr in addrs:
            try:
                await self.net.connect(addr)
            except (OSError, ValueError, trio.TooSlowError, Exception) as exc:
                errors.append(f"{addr}: {exc or type(exc).__name__}")
        if addrs and len(errors) == len(addrs):
            raise PullError("could not connect to any peer given with --from: "
                            + "; ".join(errors))

    async def ensure(self, cid: CID, job: Job | None = None,
                     dial: list[str] = ()) -> PullStats | None:
        """Make the whole DAG of ``cid`` local (pulling what is missing), after dialing
        the peers in ``dial``."""
        def progress(stats: PullStats, peers: int) -> None:
            if job is not None:
                job.done_bytes, job.peers = stats.bytes, peers

        await self.connect(list(dial))

        with self.store.protect([cid]):
            stats = await self.bitswap.pull(cid, timeout_s=self.pull_timeout_s,
                                            progress=progress)
        return stats

    def pull(self, cid: CID, pin: bool = False, dial: list[str] = ()) -> Job:
        async def work(job: Job) -> dict:
            stats = await self.ensure(cid, job, dial)
            if pin:
                await trio.to_thread.run_sync(self.store.pin, cid)
            return _stats(stats) | {"cid": str(cid), "pinned": pin}

        return self.start_job(Job("pin" if pin else "pull"), work)

    def get(self, cid: CID, out: Path, dial: list[str] = ()) -> Job:
        """Fetch ``cid`` and write it to the new path ``out``."""
        out = Path(out)
        if out.exists() or out.is_symlink():
            raise FileExistsError(f"{out} exists already; choose a new path with -o")

        async def work(job: Job) -> dict:
            stats = await self.ensure(cid, job, dial)
            written = await trio.to_thread.run_sync(unixfs.export, cid, self.store.get, out)
            return _stats(stats) | {"cid": str(cid), "path": str(out), "written": written}

        return self.start_job(Job("get"), work)

    async def cat(self, cid: CID, dial: list[str] = ()) -> AsyncIterator[bytes]:
        """The file's bytes, after the whole DAG is here and checked block by block."""
        await self.ensure(cid, None, dial)
        entry = await trio.to_thread.run_sync(unixfs.inspect, cid, self.store.get)
        if entry.kind != "file":
            raise unixfs.UnixfsError(f"{cid} is a {entry.kind}: use `ipfs get` for it")
        parts = unixfs.cat(cid, self.store.get)
        while True:
            chunk = await trio.to_thread.run_sync(_next_many, parts)
            if not chunk:
                return
            yield chunk

    # -- bookkeeping ----------------------------------------------------------------
    async def unpin(self, cid: CID) -> None:
        await trio.to_thread.run_sync(self.store.unpin, cid)

    def pins(self) -> list[str]:
        return [str(c) for c in self.store.pins()]

    async def gc(self) -> dict:
        removed, freed = await trio.to_thread.run_sync(self.store.gc)
        return {"removed_blocks": removed, "freed_bytes": freed}

    def stat(self) -> dict:
        s = self.store
        return {"blocks": s.count, "bytes": s.used_bytes, "quota_bytes": s.quota_bytes,
                "pinned_bytes": s.pinned_bytes, "pins": len(s.pins()),
                "corrupt_removed": s.corrupt_removed,
                "bitswap": {"served_bytes": self.bitswap.served_bytes,
                            "peers_cut_off": self.bitswap.cut_off}}


def _stats(stats: PullStats | None) -> dict:
    if stats is None:
        return {}
    return {"fetched_blocks": stats.blocks, "fetched_bytes": stats.bytes,
            "local_blocks": stats.local_blocks, "seconds": round(stats.seconds, 3),
            "by_peer": stats.by_peer}


def _next_many(parts, limit: int = 1024 * 1024) -> bytes:
    """Up to about ``limit`` bytes from the exporter (one thread hop per MiB)."""
    out = []
    n = 0
    for part in parts:
        out.append(part)
        n += len(part)
        if n >= limit:
            break
    return b"".join(out)


def _size_of(path: Path, hidden: bool) -> int:
    """Bytes of the regular files an import of ``path`` reads (for progress)."""
    import os

    if path.is_file():
        return path.stat().st_size
    total = 0
    for root, dirs, files in os.walk(path):
        if not hidden:
            dirs[:] = [d for d in dirs if not d.startswith(".")]
            files = [f for f in files if not f.startswith(".")]
        for name in files:
            p = Path(root) / name
            if p.is_file() and not p.is_symlink():
                total += p.stat().st_size
    return total
