#!/usr/bin/env python3
"""Benchmark small messages on one py-libp2p stream, with our fixes to py-libp2p's hot path
(meca_node/net/fastpath.py) against py-libp2p as shipped, in one run.

Two processes on 127.0.0.1 (an echo server and a client, each a real host from
``meca_node.net.open_net``): --echoes round trips of --size bytes on one stream, timed by
the client, with the CPU time of both processes and the yamux frames each wrote by type.
Rounds alternate between the fixes off (``MECA_NET_FASTPATH=0``, the baseline) and on, so
both see the same moments of a shared machine. Prints the medians over the rounds of echo
p50/p99, CPU per echo and window updates per echo, with the ratios, and writes JSON to
bench/results/stream-<UTC timestamp>.json. Every process is ours, ended by pid.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PROTOCOL = "/meca/bench-echo/1.0.0"
START_TIMEOUT_S = 60.0


def _count_frames(counter: dict) -> None:
    """Count the yamux frames this process writes, by type (0 data, 1 window update)."""
    import struct

    from libp2p.stream_muxer.yamux import yamux

    from meca_node.net import fastpath

    if os.environ.get("MECA_NET_FASTPATH", "1") != "0":
        fastpath.install()  # first: it replaces _write_frame, which this wraps
    original = yamux.Yamux._write_frame

    async def counting(self, data: bytes) -> None:
        typ = struct.unpack(yamux.YAMUX_HEADER_FORMAT, data[:yamux.HEADER_SIZE])[1]
        counter[typ] = counter.get(typ, 0) + 1
        await original(self, data)

    yamux.Yamux._write_frame = counting


def serve(port: int, n: int) -> None:
    import trio

    from meca_node.net import NetConfig, open_net

    frames: dict = {}
    _count_frames(frames)

    async def main() -> None:
        config = NetConfig(listen=(f"/ip4/127.0.0.1/tcp/{port}",), dialback=False)
        async with open_net(os.urandom(32), config) as net:
            done = trio.Event()

            async def echo(stream) -> None:
                cpu0, seen0 = time.process_time(), dict(frames)
                for _ in range(n):
                    data = await stream.receive()
                    if data is None:
                        break
                    await stream.send(data)
                print(json.dumps({"cpu_us_per_echo": (time.process_time() - cpu0) / n * 1e6,
                                  "window_updates": frames.get(1, 0) - seen0.get(1, 0),
                                  "data_frames": frames.get(0, 0) - seen0.get(0, 0)}),
                      flush=True)
                done.set()

            net.set_stream_handler(PROTOCOL, echo)
            print(net.listen_addrs()[0] + "/p2p/" + net.peer_id, flush=True)
            with trio.move_on_after(START_TIMEOUT_S + 600):
                await done.wait()

    trio.run(main)


def client(addr: str, n: int, size: int) -> None:
    import trio

    from meca_node.net import NetConfig, open_net

    frames: dict = {}
    _count_frames(frames)

    async def main() -> None:
        config = NetConfig(listen=("/ip4/127.0.0.1/tcp/0",), dialback=False)
        async with open_net(os.urandom(32), config) as net:
            with trio.fail_after(START_TIMEOUT_S):
                peer = await net.connect(addr)
                stream = await net.open_stream(peer, PROTOCOL)
            msg = os.urandom(size)
            times = []
            cpu0, seen0 = time.process_time(), dict(frames)
            with trio.fail_after(600):
                for _ in range(n):
                    t = time.perf_counter()
                    await stream.send(msg)
                    if await stream.receive() != msg:
                        raise SystemExit("the echo differs from what was sent")
                    times.append((time.perf_counter() - t) * 1000)
            cpu = (time.process_time() - cpu0) / n * 1e6
            times.sort()
            print(json.dumps({"p50_ms": times[len(times) // 2],
                              "p99_ms": times[int(len(times) * 0.99)],
                              "cpu_us_per_echo": cpu,
                              "window_updates": frames.get(1, 0) - seen0.get(1, 0),
                              "data_frames": frames.get(0, 0) - seen0.get(0, 0)}), flush=True)
            await stream.close()

    trio.run(main)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def one_round(fastpath: bool, n: int, size: int) -> dict:
    env = {**os.environ, "MECA_NET_FASTPATH": "1" if fastpath else "0"}
    me = [sys.executable, str(Path(__file__).resolve())]
    server = subprocess.Popen(me + ["--serve", str(free_port()), "--echoes", str(n)],
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                              env=env)
    try:
        addr = server.stdout.readline().strip()
        if not addr:
            raise SystemExit("the echo server did not start")
        out = subprocess.run(me + ["--client", addr, "--echoes", str(n), "--size", str(size)],
                             capture_output=True, text=True, env=env, timeout=900)
        if out.returncode != 0:
            raise SystemExit(f"the client failed: {out.stderr[-1500:]}")
        result = json.loads(out.stdout.strip().splitlines()[-1])
        served = json.loads(server.stdout.readline())
        result["server_cpu_us_per_echo"] = served["cpu_us_per_echo"]
        result["server_window_updates"] = served["window_updates"]
        return result
    finally:
        server.kill()  # ours, by pid
        server.wait(timeout=30)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--echoes", type=int, default=2000)
    p.add_argument("--size", type=int, default=1024)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--out", default=str(ROOT / "bench" / "results"))
    p.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    p.add_argument("--client", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.serve:
        serve(args.serve, args.echoes)
        return 0
    if args.client:
        client(args.client, args.echoes, args.size)
        return 0
    rounds: dict[str, list[dict]] = {"shipped": [], "fastpath": []}
    for i in range(args.rounds):
        for name in ("shipped", "fastpath"):
            r = one_round(name == "fastpath", args.echoes, args.size)
            rounds[name].append(r)
            print(f"round {i + 1} {name:9s} p50 {r['p50_ms']:.3f} ms  p99 {r['p99_ms']:.3f} ms"
                  f"  CPU/echo client {r['cpu_us_per_echo']:.0f} us server "
                  f"{r['server_cpu_us_per_echo']:.0f} us  window updates "
                  f"{r['window_updates'] + r['server_window_updates']}", flush=True)

    def med(name: str, key: str) -> float:
        return round(statistics.median(r[key] for r in rounds[name]), 3)

    summary = {name: {k: med(name, k) for k in ("p50_ms", "p99_ms", "cpu_us_per_echo",
                                                "server_cpu_us_per_echo")}
               for name in rounds}
    for name in rounds:
        summary[name]["window_updates_per_echo"] = round(statistics.median(
            (r["window_updates"] + r["server_window_updates"]) / args.echoes
            for r in rounds[name]), 4)
    ratio = {k: round(summary["fastpath"][k] / summary["shipped"][k], 3)
             for k in ("p50_ms", "p99_ms", "cpu_us_per_echo", "server_cpu_us_per_echo")}
    print(f"median of {args.rounds} rounds, {args.echoes} echoes of {args.size} bytes:")
    for name in rounds:
        s = summary[name]
        print(f"  {name:9s} p50 {s['p50_ms']:.3f} ms  p99 {s['p99_ms']:.3f} ms  CPU/echo "
              f"{s['cpu_us_per_echo']:.0f} + {s['server_cpu_us_per_echo']:.0f} us  window "
              f"updates/echo {s['window_updates_per_echo']:.3f}")
    print(f"  fastpath / shipped: p50 {ratio['p50_ms']:.2f}  p99 {ratio['p99_ms']:.2f}  CPU "
          f"{ratio['cpu_us_per_echo']:.2f} (client) {ratio['server_cpu_us_per_echo']:.2f} "
          "(server)")
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    out = Path(args.out) / f"stream-{stamp}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "benchmark": "stream", "timestamp": stamp, "echoes": args.echoes, "size": args.size,
        "rounds": rounds, "summary": summary, "fastpath_over_shipped": ratio,
        "load_avg": os.getloadavg(),
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count()}}, indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
