"""One peer process of the IPFS benchmark (``scripts/bench_ipfs.py`` starts two).

``python -m meca_node.sim.ipfsbench serve --dir D --size N --seed S``
    our libp2p host with a block store and Bitswap, as ``meca-node start`` runs them;
    imports N seeded random bytes (CIDv1, kubo's layout), serves them over Bitswap and
    over a raw copy protocol (the baseline: the same bytes in 256 KiB frames on one
    stream, no Bitswap, no hashing, no disk); prints one JSON line {addr, cid}; runs until
    its stdin closes.
``python -m meca_node.sim.ipfsbench fetch --dir D --addr A --cid C --size N --rounds R``
    connects and, R times each: copies N bytes over the raw protocol, then pulls the CID
    over Bitswap into its own (emptied) block store, every block verified
    and written as in a real pull. Prints one JSON line with the seconds of each run.
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
    store = BlockStore(Path(args.dir) / "blocks")
    cid = CID.parse(args.cid)
    results = {"copy_s": [], "bitswap_s": [], "bitswap_bytes": [], "copy_cpu_s": [],
               "bitswap_cpu_s": []}
    async with open_net(os.urandom(32), _config()) as net:
        peer = await net.connect(args.addr)
        bitswap = Bitswap(net, store)
        async with trio.open_nursery() as nursery:
            await nursery.start(bitswap.run)
            for _ in range(args.rounds):
                if args.only == "bitswap":
                    break
                stream = await net.open_stream(peer, COPY)
                c0 = _cpu()
                t0 = time.perf_counter()
                await stream.send(args.size.to_bytes(8, "big"))
                got = 0
                while got < args.size:
                    frame = await stream.receive()
                    if frame is None:
                        raise RuntimeError(f"copy stream ended after {got} bytes")
                    got += len(frame)
                results["copy_s"].append(time.perf_counter() - t0)
                results["copy_cpu_s"].append(_cpu() - c0)
                await stream.close()
            for _ in range(args.rounds):
                if args.only == "copy":
                    break
                store.gc()  # nothing pinned: an empty store for each pull
                c0 = _cpu()
                stats = await bitswap.pull(cid, timeout_s=300)
                results["bitswap_cpu_s"].append(_cpu() - c0)
                results["bitswap_s"].append(stats.seconds)
                results["bitswap_bytes"].append(stats.bytes)
            nursery.cancel_scope.cancel()
    print(json.dumps(results), flush=True)


def _cpu() -> float:
    """CPU seconds of this process (all threads, user + system)."""
    import resource

    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


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
    args = p.parse_args()
    os.environ.setdefault("PY_YAMUX_RELEASE_ON_READ", "0")
    trio.run(serve if args.mode == "serve" else fetch, args)


if __name__ == "__main__":
    main()
