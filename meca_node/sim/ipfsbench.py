"""One peer process of the IPFS benchmark (``scripts/bench_ipfs.py`` starts two).

``python -m meca_node.sim.ipfsbench serve --dir D --size N --seed S``
    our libp2p host with a block store and Bitswap, as ``meca-node start`` runs them;
    imports N seeded random bytes (CIDv1, kubo's layout), serves them over Bitswap and
    over a raw copy protocol (the baseline: the same bytes in 256 KiB frames on one
    stream, no Bitswap, no hashing, no disk); prints one JSON line {addr, cid}; runs until
    its stdin closes.
``python -m meca_node.sim.ipfsbench fetch --dir D --addr A --cid C --size N --rounds R``
    connects and, R rounds: copies N bytes over the raw protocol, then pulls the CID over
    Bitswap into a new, empty block store of its own, every block verified and written
    as in a real pull. Prints one JSON line with the seconds, CPU seconds and minor page
    faults of each (the serving peer's too, given ``--server-pid``).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path

import trio

from meca_node.ipfs.cid import CID
from meca_node.ipfs.unixfs import add_stream
from meca_node.net import NetConfig, open_net
from meca_node.net.bitswap import Bitswap
from meca_node.store import BlockStore

COPY = "/meca/bench/copy/1.0.0"
FRAME = 256 * 1024


class _Seeded:
    def __init__(self, size: int, seed: int) -> None:
        self.left, self.rng = size, random.Random(seed)

    def read(self, n: int) -> bytes:
        n = min(n, self.left)
        self.left -= n
        return self.rng.randbytes(n)


def _config() -> NetConfig:
    return NetConfig(listen=("/ip4/127.0.0.1/tcp/0",), max_frame=FRAME + 1024)


async def serve(args) -> None:
    store = BlockStore(Path(args.dir) / "blocks")
    added = add_stream(_Seeded(args.size, args.seed), store.put)
    async with open_net(os.urandom(32), _config()) as net:
        async def copy(stream) -> None:
            want = int.from_bytes(await stream.receive(), "big")
            chunk = bytes(FRAME)
            while want > 0:
                await stream.send(chunk[:min(FRAME, want)])
                want -= FRAME

        net.set_stream_handler(COPY, copy)
        async with trio.open_nursery() as nursery:
            await nursery.start(Bitswap(net, store).run)
            addr = next(a for a in net.listen_addrs() if "127.0.0.1" in a)
            if "/p2p/" not in addr:
                addr += f"/p2p/{net.peer_id}"
            print(json.dumps({"addr": addr, "cid": str(added.cid)}), flush=True)
            await trio.to_thread.run_sync(sys.stdin.read)  # until the harness closes it
            nursery.cancel_scope.cancel()


async def fetch(args) -> None:
    Path(args.dir).mkdir(parents=True, exist_ok=True)
    _spread_subdirs(Path(args.dir))
    store = BlockStore(Path(args.dir) / "blocks-0")
    cid = CID.parse(args.cid)
    kinds = [k for k in ("copy", "bitswap") if args.only in (None, k)]
    results: dict[str, list] = {f"{kind}_{what}": [] for kind in kinds for what in
                                ("s", "cpu_s", "page_faults", "server_cpu_s",
                                 "server_page_faults")}
    if "bitswap" in kinds:
        results["bitswap_bytes"] = []
    server = _OtherProcess(args.server_pid)
    async with open_net(os.urandom(32), _config()) as net:
        peer = await net.connect(args.addr)
        bitswap = Bitswap(net, store)
        async with trio.open_nursery() as nursery:
            await nursery.start(bitswap.run)
            # a raw copy then a pull, round after round: both see the same moment of a
            # shared machine whose speed drifts
            for n in range(args.rounds):
                for kind in kinds:
                    if kind == "bitswap":
                        # a new, empty store for each pull (the harness removes them all
                        # at the end), not the last pull's store emptied by gc: every
                        # pull then starts alike (with a file per block, stepping past
                        # the inodes the last gc freed cost a pull ~50 ms; packs make far
                        # fewer files). The last pull's page cache is dropped, so this pull
                        # writes into memory the VM has just freed, as after a gc (fresh
                        # guest memory cost ~100 ms more per 64 MiB here)
                        if n:
                            await trio.to_thread.run_sync(_drop_cache, store.root)
                        store = BlockStore(Path(args.dir) / f"blocks-{n}")
                        bitswap.blocks = store
                        await trio.to_thread.run_sync(store.sync)
                    else:  # opened before the clock starts, closed after it stops
                        stream = await net.open_stream(peer, COPY)
                    c0, f0, s0 = _cpu(), _faults(), server.read()
                    t0 = time.perf_counter()
                    if kind == "copy":
                        await _copy(stream, args.size)
                        seconds = time.perf_counter() - t0
                    else:
                        stats = await bitswap.pull(cid, timeout_s=300)
                        seconds = stats.seconds
                        results["bitswap_bytes"].append(stats.bytes)
                    results[f"{kind}_s"].append(seconds)
                    results[f"{kind}_cpu_s"].append(_cpu() - c0)
                    results[f"{kind}_page_faults"].append(_faults() - f0)
                    s1 = server.read()
                    if s0 is not None and s1 is not None:
                        results[f"{kind}_server_cpu_s"].append(round(s1[0] - s0[0], 2))
                        results[f"{kind}_server_page_faults"].append(s1[1] - s0[1])
                    if kind == "copy":
                        await stream.close()
            nursery.cancel_scope.cancel()
    print(json.dumps(results), flush=True)


async def _copy(stream, size: int) -> None:
    """The baseline: ``size`` bytes from the serving peer on one stream, nothing else."""
    await stream.send(size.to_bytes(8, "big"))
    got = 0
    while got < size:
        frame = await stream.receive()
        if frame is None:
            raise RuntimeError(f"copy stream ended after {got} bytes")
        got += len(frame)


def _cpu() -> float:
    """CPU seconds of this process (all threads, user + system)."""
    import resource

    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _spread_subdirs(path: Path) -> None:
    """ext4 only (best effort): mark ``path`` a top of a directory tree (``chattr +T``), so
    each store made in it lands in a block group of its own rather than the one where
    the last run's stores were just deleted. ext4 without a journal (as here) skips
    inodes freed in the last minute when it makes files; stepping past the ~1,000 the
    last run freed cost each pull ~85 ms (perf: recently_deleted, find_inode_bit)."""
    import array
    import fcntl

    get_flags, set_flags, topdir = 0x80086601, 0x40086602, 0x00020000  # linux/fs.h
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        flags = array.array("l", [0])
        fcntl.ioctl(fd, get_flags, flags, True)
        flags[0] |= topdir
        fcntl.ioctl(fd, set_flags, flags, True)
    except OSError:
        pass  # not ext4, or not allowed: the stores stay where the allocator puts them
    finally:
        os.close(fd)


def _drop_cache(root: Path) -> None:
    """Drop the page cache of a finished pull's (synced) pack files."""
    for path in root.rglob("*.pack"):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def _faults() -> int:
    """Minor page faults of this process so far (fresh memory touched: ~3 us each here)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


class _OtherProcess:
    """CPU seconds and minor page faults of another process on this machine (the serving
    peer), from /proc; None where there is no pid or no /proc."""

    def __init__(self, pid: int | None) -> None:
        self.pid = pid
        self.tick = os.sysconf("SC_CLK_TCK")

    def read(self) -> tuple[float, int] | None:
        if self.pid is None:
            return None
        try:
            with open(f"/proc/{self.pid}/stat") as f:
                stat = f.read()
        except OSError:
            return None
        fields = stat.rsplit(")", 1)[1].split()  # fields 3.. of proc(5)
        minflt, utime, stime = fields[7], fields[11], fields[12]
        return (int(utime) + int(stime)) / self.tick, int(minflt)


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m meca_node.sim.ipfsbench")
    p.add_argument("mode", choices=["serve", "fetch"])
    p.add_argument("--dir", required=True)
    p.add_argument("--size", type=int, default=64 * 1024 * 1024)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--addr")
    p.add_argument("--cid")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--only", choices=["copy", "bitswap"], help="run one kind only")
    p.add_argument("--server-pid", type=int, help="the serving peer's pid: its CPU "
                   "seconds per round are recorded too")
    args = p.parse_args()
    os.environ.setdefault("PY_YAMUX_RELEASE_ON_READ", "0")
    trio.run(serve if args.mode == "serve" else fetch, args)


if __name__ == "__main__":
    main()
