#!/usr/bin/env python3
"""Benchmark Bitswap between two of our nodes against a raw stream and warm Helia, in one run.

For --size bytes (default 64 MiB) of seeded random data, on 127.0.0.1, each peer its own
process (``python -m meca_node.sim.ipfsbench``):
  ours:      a Bitswap pull of the file's DAG (CIDv1, kubo's layout) into a new, empty block
             store: every block verified and written as in a real pull;
  raw:       the same number of bytes over one py-libp2p stream between the same two
             processes (Noise + yamux, 256 KiB frames, no Bitswap, no hashing, no disk);
  helia:     a Helia client fetching the same bytes from a Helia server that has already
             served them once (warm), through tests/interop/helia_peer.mjs.
Each round is a raw copy then a Bitswap pull (into a new store), so both see the same
moment of a shared machine. Prints the MB/s (median of the rounds) with the ratios to the
goals (ours >= 70% of raw, ours > warm Helia), and the CPU seconds of both peers per
transfer, and writes JSON to bench/results/ipfs-<UTC timestamp>.json. Every process is
ours, ended by pid.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "interop"))

START_TIMEOUT_S = 120.0


def mb_s(size: int, seconds: float) -> float:
    return round(size / 1e6 / seconds, 1)


def write_seeded(path: Path, size: int, seed: int) -> None:
    rng = random.Random(seed)  # the same bytes the serving peer imports
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(left, 256 * 1024)
            f.write(rng.randbytes(n))
            left -= n


def ours_and_raw(work: Path, size: int, rounds: int) -> dict:
    serve = subprocess.Popen([sys.executable, "-m", "meca_node.sim.ipfsbench", "serve",
                              "--dir", str(work / "serve"), "--size", str(size)],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                             cwd=ROOT)
    try:
        line = _first_line(serve, START_TIMEOUT_S)
        target = json.loads(line)
        fetch = subprocess.run([sys.executable, "-m", "meca_node.sim.ipfsbench", "fetch",
                                "--dir", str(work / "fetch"), "--addr", target["addr"],
                                "--cid", target["cid"], "--size", str(size),
                                "--rounds", str(rounds), "--server-pid", str(serve.pid)],
                               capture_output=True, text=True, timeout=600, cwd=ROOT)
        if fetch.returncode != 0:
            raise SystemExit(f"fetch peer failed:\n{fetch.stderr[-2000:]}")
        result = json.loads(fetch.stdout.strip().splitlines()[-1])
    finally:
        serve.stdin.close()
        try:
            serve.wait(timeout=10)
        except subprocess.TimeoutExpired:
            serve.kill()
            serve.wait(timeout=10)
    assert all(b >= size for b in result["bitswap_bytes"]), result
    return {"cid": target["cid"], **result}


def _first_line(proc: subprocess.Popen, timeout: float) -> str:
    import select

    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    if not ready:
        raise SystemExit(f"serving peer printed nothing in {timeout} s")
    line = proc.stdout.readline()
    if not line:
        raise SystemExit(f"serving peer exited with {proc.wait()}")
    return line


def helia_warm(work: Path, size: int, rounds: int) -> dict | None:
    import peers

    reason = peers.unavailable_reason()
    if reason:
        print(f"skipping Helia: {reason}")
        return None
    path = work / "data.bin"
    write_seeded(path, size, 1)
    seconds = []
    with peers.serve_helia(path, 1) as (_peer, multiaddr, cid):
        peers.helia_fetch(cid, multiaddr, work / "warmup.bin", timeout=300)  # warms it
        for i in range(rounds):
            out = work / f"helia-{i}.bin"
            stats = peers.helia_fetch(cid, multiaddr, out, timeout=300)
            assert stats["bytes"] == size, stats
            seconds.append(stats["seconds"])
            out.unlink()
    return {"cid": cid, "seconds": seconds}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=64 * 1024 * 1024)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--no-helia", action="store_true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="meca-bench-ipfs-") as tmp:
        work = Path(tmp)
        t0 = time.time()
        pair = ours_and_raw(work, args.size, args.rounds)
        helia = None if args.no_helia else helia_warm(work, args.size, args.rounds)
    ours = statistics.median(mb_s(args.size, s) for s in pair["bitswap_s"])
    raw = statistics.median(mb_s(args.size, s) for s in pair["copy_s"])
    figures = {"ours_bitswap_mb_s": ours, "raw_stream_mb_s": raw,
               "ours_over_raw": round(ours / raw, 2)}
    for kind in ("copy", "bitswap"):  # CPU seconds per 64 MiB: steadier than MB/s here
        for side, key in (("client", f"{kind}_cpu_s"), ("server", f"{kind}_server_cpu_s")):
            if pair.get(key):
                figures[f"{kind}_{side}_cpu_s"] = round(statistics.median(pair[key]), 2)
    if helia:
        warm = statistics.median(mb_s(args.size, s) for s in helia["seconds"])
        figures |= {"helia_warm_mb_s": warm, "ours_over_helia": round(ours / warm, 2)}
    print(f"{args.size / 2**20:g} MiB, {args.rounds} rounds (median MB/s):")
    print(f"  ours (Bitswap, verified, stored) {ours:8.1f}")
    print(f"  raw py-libp2p stream             {raw:8.1f}   ours/raw {figures['ours_over_raw']}"
          f" (goal >= 0.70)")
    print("  CPU s per transfer (median), client/server: raw "
          f"{figures.get('copy_client_cpu_s')}/{figures.get('copy_server_cpu_s')}, ours "
          f"{figures.get('bitswap_client_cpu_s')}/{figures.get('bitswap_server_cpu_s')}")
    if helia:
        print(f"  Helia -> Helia, warm server      {figures['helia_warm_mb_s']:8.1f}   "
              f"ours/helia {figures['ours_over_helia']} (goal > 1)")
    out_dir = ROOT / "bench" / "results"
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(t0))
    path = out_dir / f"ipfs-{stamp}.json"
    path.write_text(json.dumps({
        "bench": "ipfs", "size_bytes": args.size, "rounds": args.rounds,
        "machine": {"python": platform.python_version(), "cpus": _cpus()},
        "figures": figures, "raw": {"ours_and_raw": pair, "helia_warm": helia}}, indent=1))
    print(f"wrote {path.relative_to(ROOT)}")


def _cpus() -> int:
    import os

    return len(os.sched_getaffinity(0))


if __name__ == "__main__":
    main()
