#!/usr/bin/env python3
"""Gossip latency/delivery benchmark: N real node processes on 127.0.0.x, one per process.

    .venv/bin/python scripts/bench_gossip.py --nodes 20 [--messages 200] [--rate 10]
        [--size 1024] [--out bench/results/]

Each peer is ``python -m meca_node.sim.benchpeer``: our libp2p host with the real node's
NetConfig and the real node's gossip validator (``GossipGate.check``: signature, replay,
rate). Keys and ports are chosen up front; peers bootstrap on a ring plus random chords.
The harness waits until every peer has received a warm-up message from every other peer,
then schedules ``--messages`` signed messages of ``--size`` bytes, published round-robin by
the peers at ``--rate`` messages per second in total (absolute wall-clock send times).
Every peer records when each message reached its application (after validation), so
latency = receive time - publish time written in the message (one machine, one clock).
A baseline follows in the same run: the same count, size and rate over one raw libp2p
stream between two of the peers (one hop, no gossip, no signature).

Writes ``<out>/gossip-N<nodes>-<timestamp>.json`` and prints the figures. Exit status:
0 when the run completed (whether or not the goal was met; ``--require-goal`` makes an
unmet goal exit 2), 1 when the benchmark itself failed (the message says why).
See bench/README.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as _dt
import importlib.metadata
import json
import math
import os
import platform
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from meca_node import wire  # noqa: E402
from meca_node.sim.cluster import free_port  # noqa: E402
from meca_node.store import atomic_write, load_or_create_key  # noqa: E402

GOAL_P99_MS = 100.0


class BenchError(Exception):
    """The benchmark could not run to the end; the message says where and why."""


# -- set-up -------------------------------------------------------------------------------
def parse_kv(items: list[str], what: str) -> dict:
    out = {}
    for item in items:
        if "=" not in item:
            raise SystemExit(f"{what} expects KEY=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def prepare(run_dir: Path, args) -> dict:
    """Keys, addresses, genesis and bootstrap lists of every peer, written to plan.json."""
    rng = random.Random(args.seed)
    peers, identities = [], []
    for i in range(args.nodes):
        data_dir = run_dir / f"peer{i}"
        identity, _ = load_or_create_key(data_dir)
        identities.append(identity)
        host = f"127.0.0.{10 + i}"
        peers.append({"index": i, "host": host, "port": free_port(host),
                      "peer_id": identity.peer_id, "data_dir": str(data_dir)})
    for p in peers:
        p["addr"] = f"/ip4/{p['host']}/tcp/{p['port']}/p2p/{p['peer_id']}"
    n = args.nodes
    for p in peers:  # ring + random chords, as sim/cluster.py
        i = p["index"]
        picks = {(i + 1) % n}
        others = [j for j in range(n) if j != i and j not in picks]
        picks.update(rng.sample(others, min(args.chords, len(others))))
        p["bootstrap"] = [peers[j]["addr"] for j in sorted(picks)]
        p["bootstrap_idx"] = sorted(picks)
    genesis = wire.make_genesis("bench-gossip", identities[0].signing_key,
                                time.time_ns() // 1_000_000,
                                [(ident.public_key, 1_000_000) for ident in identities])
    genesis_path = run_dir / "genesis.json"
    atomic_write(genesis_path, genesis.to_json().encode())
    # the gate's per-signer limit: high enough that even one signer sending the benchmark's
    # whole rate (and the warm-ups) is never throttled; the real default is 5/s, burst 20
    gate_rate = max(5.0, 2.0 * args.rate)
    plan = {
        "run_dir": str(run_dir), "n": n, "messages": args.messages, "rate": args.rate,
        "size": args.size, "genesis": str(genesis_path), "peers": peers,
        "baseline": {"sender": 0, "receiver": 1} if n >= 2 else None,
        "gate": {"rate_per_s": gate_rate, "burst": int(max(20, 2 * args.rate + 20))},
        "warmup_interval_s": args.warmup_interval, "mesh_timeout_s": args.mesh_timeout,
        "gossipsub_overrides": parse_kv(args.gossipsub, "--gossipsub"),
        "netconfig_overrides": parse_kv(args.netconfig, "--netconfig"),
        "peer_env": {k: str(v) for k, v in parse_kv(args.env, "--env").items()},
        "patches": list(args.patch),
    }
    atomic_write(run_dir / "plan.json", json.dumps(plan, indent=1).encode())
    return plan


def check_netconfig(plan: dict) -> dict:
    """Compare the benchpeer's NetConfig with the one ``meca-node start`` builds by default."""
    from meca_node.cli.config import load_config
    from meca_node.cli.runner import net_config
    from meca_node.sim.benchpeer import bench_net_config

    p = plan["peers"][0]
    listen = f"/ip4/{p['host']}/tcp/{p['port']}"
    cfg = load_config(None, {}, {"data_dir": p["data_dir"], "listen": [listen],
                                 "bootstrap": p["bootstrap"]})
    real = net_config(cfg)
    ours = bench_net_config(listen, p["bootstrap"], cfg.caps)
    used = bench_net_config(listen, p["bootstrap"], cfg.caps, plan["netconfig_overrides"])
    strip = ("listen", "bootstrap", "announce")
    used_d = {k: v for k, v in dataclasses.asdict(used).items() if k not in strip}
    return {"matches_real_node_defaults": ours == real, "used": used_d,
            "overrides": plan["netconfig_overrides"]}


def gossipsub_params(plan: dict) -> dict:
    """The router parameters the peers run with (open_net's, plus this run's overrides)."""
    try:
        import meca_node.net.host as host_module
        from meca_node.net import NetConfig
        cfg = dataclasses.replace(NetConfig(), **plan["netconfig_overrides"])
        router = host_module._gossipsub(cfg)
        out = {k: getattr(router, k) for k in (
            "degree", "degree_low", "degree_high", "heartbeat_interval", "time_to_live",
            "max_messages_per_topic_per_second", "spam_protection_enabled",
            "eclipse_protection_enabled", "adaptive_gossip_enabled", "do_px")
            if hasattr(router, k)}
        out["protocols"] = [str(p) for p in router.protocols]
        out.update(plan["gossipsub_overrides"])
        return out
    except Exception as exc:  # informative only
        return {"error": f"{type(exc).__name__}: {exc}", **plan["gossipsub_overrides"]}


def machine_info() -> dict:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass

    def version(pkg: str) -> str:
        try:
            return importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            return "?"

    return {
        "cpu_count": os.cpu_count(), "cpu_affinity": len(os.sched_getaffinity(0)),
        "cpu_model": model, "platform": platform.platform(),
        "python": platform.python_version(), "libp2p": version("libp2p"),
        "trio": version("trio"), "pynacl": version("pynacl"),
        "loadavg_before": list(os.getloadavg()),
    }


def gate_check_cost_us(size: int) -> float:
    """Median cost of one ``GossipGate.check`` on a fresh signed message of ``size`` bytes."""
    from meca_node.core import GateConfig, GossipGate
    from meca_node.sim.benchpeer import bench_description, bench_name, offer
    from nacl.signing import SigningKey

    key = SigningKey.generate()
    net = bytes(32)
    gate = GossipGate(GateConfig(network_id=net, rate_per_s=1e9, burst=10**9))

    def seal(pad: int) -> bytes:
        return wire.seal(offer(bench_name(1), bench_description(time.time_ns(), pad)),
                         key=key, net=net, ts=time.time_ns() // 1_000_000, nonce=os.urandom(16))

    pad = max(0, size - len(seal(0)))
    msgs = [seal(pad) for _ in range(300)]
    costs = []
    for m in msgs:
        t = time.perf_counter()
        assert gate.check(m, wire.TOPIC_OFFERS, time.time_ns() // 1_000_000).ok
        costs.append(time.perf_counter() - t)
    costs.sort()
    return round(costs[len(costs) // 2] * 1e6, 1)


def wait_quiet(timeout_s: float, below: float) -> float | None:
    """Wait (bounded) until the machine's busy CPUs over 1 s fall below ``below``."""
    deadline = time.monotonic() + timeout_s
    while True:
        busy = CpuSampler.measure(1.0)
        if busy is None or busy < below or time.monotonic() > deadline:
            return busy


class CpuSampler:
    """Samples machine-wide CPU use from /proc/stat once a second (a daemon thread)."""

    def __init__(self) -> None:
        self.samples: list[tuple[float, int, int]] = []  # (time, busy jiffies, total jiffies)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def _read() -> tuple[int, int] | None:
        try:
            fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0]
                      .split()[1:]]
        except (OSError, ValueError):
            return None
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
        return sum(fields) - idle, sum(fields)

    def _run(self) -> None:
        while not self._stop.is_set():
            r = self._read()
            if r is not None:
                self.samples.append((time.time(), *r))
            self._stop.wait(1.0)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    @classmethod
    def measure(cls, seconds: float) -> float | None:
        """Busy CPUs of the whole machine over the next ``seconds`` (blocking)."""
        a = cls._read()
        time.sleep(seconds)
        b = cls._read()
        if a is None or b is None or b[1] == a[1]:
            return None
        return round((b[0] - a[0]) / (b[1] - a[1]) * (os.cpu_count() or 1), 2)

    def busy_cores(self, t_from: float, t_to: float) -> float | None:
        """Average number of busy CPUs between two times (nearest samples inside)."""
        inside = [s for s in self.samples if t_from <= s[0] <= t_to]
        if len(inside) < 2:
            return None
        (_, b0, t0), (_, b1, t1) = inside[0], inside[-1]
        return round((b1 - b0) / (t1 - t0) * (os.cpu_count() or 1), 2) if t1 > t0 else None


# -- processes ------------------------------------------------------------------------------
class Peers:
    """The peer processes; stops every one it started, by pid."""

    def __init__(self, plan: dict, run_dir: Path) -> None:
        self.plan = plan
        self.run_dir = run_dir
        self.procs: list[subprocess.Popen] = []
        self.exit_codes: dict[int, int | None] = {}

    def log_path(self, i: int) -> Path:
        return self.run_dir / f"peer{i}.log"

    def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MECA_")}
        env.update(self.plan["peer_env"])
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT),
                                                          env.get("PYTHONPATH", "")]))
        for p in self.plan["peers"]:
            with self.log_path(p["index"]).open("ab") as log:
                self.procs.append(subprocess.Popen(
                    [sys.executable, "-m", "meca_node.sim.benchpeer",
                     "--plan", str(self.run_dir / "plan.json"), "--index", str(p["index"])],
                    stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                    env=env, cwd=REPO_ROOT))

    def tail(self, i: int, lines: int = 20) -> str:
        try:
            text = self.log_path(i).read_text(errors="replace").splitlines()[-lines:]
            return "\n".join("    " + t for t in text)
        except OSError:
            return "    (no log)"

    def wait_files(self, prefix: str, deadline: float, what: str,
                   expect_exit: bool = False) -> None:
        """Wait until every peer wrote ``<prefix>-<i>.json``; BenchError naming the laggards."""
        pending = set(range(len(self.procs)))
        while pending:
            for i in sorted(pending):
                if (self.run_dir / f"{prefix}-{i}.json").exists():
                    pending.discard(i)
                    continue
                rc = self.procs[i].poll()
                if rc is not None:
                    raise BenchError(f"peer {i} exited with {rc} before {what}; log "
                                     f"{self.log_path(i)}:\n{self.tail(i)}")
            if not pending:
                return
            if time.time() > deadline:
                first = min(pending)
                raise BenchError(f"{len(pending)} of {len(self.procs)} peers not {what} in "
                                 f"time: {sorted(pending)}; log of peer {first} "
                                 f"({self.log_path(first)}):\n{self.tail(first)}")
            time.sleep(0.1)  # bounded poll of the peers' progress files

    def wait_exit(self, timeout_s: float) -> None:
        """Give peers that finished ``timeout_s`` to exit by themselves (bounded)."""
        deadline = time.monotonic() + timeout_s
        for proc in self.procs:
            try:
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass

    def stop(self, timeout_s: float = 8.0) -> dict[int, int | None]:
        """SIGTERM every peer still running; SIGKILL those alive after ``timeout_s``."""
        for proc in self.procs:
            if proc.poll() is None:
                try:
                    proc.send_signal(signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + timeout_s
        for i, proc in enumerate(self.procs):
            try:
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
                self.exit_codes[i] = proc.returncode
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
                self.exit_codes[i] = None  # did not stop in time
        return self.exit_codes


def start_profiler(peers: Peers, index: int, t0: float, span: float,
                   run_dir: Path) -> subprocess.Popen:
    """py-spy on one peer for the gossip phase (a Popen of ours, waited for at the end)."""
    spy = Path(sys.executable).parent / "py-spy"
    if not spy.exists():
        raise BenchError(f"--profile needs py-spy in the venv ({spy}): "
                         f"{sys.executable} -m pip install py-spy")
    # it samples the gossip phase only (from t0, for the sending span)
    delay = max(0.0, t0 - time.time())
    duration = max(1, int(span + 1))
    out = run_dir / f"profile-{index}.txt"
    return subprocess.Popen(
        ["sh", "-c", f'sleep {delay:.2f}; exec "$0" "$@"', str(spy), "record", "--pid", str(peers.procs[index].pid), "--rate", "100",
         "--nonblocking", "--duration", str(duration), "--format", "raw", "--output",
         str(out)], stdout=subprocess.DEVNULL, stderr=(run_dir / "py-spy.log").open("wb"))


# -- figures ----------------------------------------------------------------------------------
def percentile(sorted_values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    if not sorted_values:
        return float("nan")
    pos = (len(sorted_values) - 1) * q
    lo, hi = math.floor(pos), math.ceil(pos)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def summary_ms(values_s: list[float]) -> dict:
    v = sorted(x * 1000.0 for x in values_s if not math.isnan(x))
    if not v:
        return {"count": 0}
    return {"count": len(v), "p50": round(percentile(v, 0.5), 2),
            "p90": round(percentile(v, 0.9), 2), "p99": round(percentile(v, 0.99), 2),
            "max": round(v[-1], 2), "mean": round(sum(v) / len(v), 2),
            "min": round(v[0], 2)}


def analyse(plan: dict, results: list[dict], run_s: float) -> dict:
    n, m = plan["n"], plan["messages"]
    lat, to_val, val, queue = [], [], [], []
    per_node = []
    missing: list[list[int]] = []
    last_arrival: dict[int, float] = {}
    for r in results:
        i = r["index"]
        rec = r["received"]
        mine = []
        expected = 0
        for k in range(m):
            if k % n == i:
                continue
            expected += 1
            got = rec.get(str(k))
            if got is None:
                missing.append([k, i])
                continue
            t_pub, t_in, t_out, t_recv = got
            mine.append(t_recv - t_pub)
            to_val.append(t_in - t_pub)
            val.append(t_out - t_in)
            queue.append(t_recv - t_out)
            last_arrival[k] = max(last_arrival.get(k, 0.0), t_recv - t_pub)
        lat.extend(mine)
        sent = r["sent"].values()
        cpu = r["cpu_s"]["user"] + r["cpu_s"]["system"]
        per_node.append({
            "index": i, "received": len(mine), "expected": expected,
            "delivery": round(len(mine) / expected, 4) if expected else None,
            "latency_ms": {k: v for k, v in summary_ms(mine).items()
                           if k in ("p50", "p99", "max")},
            "sent": len(r["sent"]),
            "send_lag_ms_max": round(max((s[1] - s[0] for s in sent), default=0) * 1000, 2),
            "publish_call_ms_max": round(max((s[2] - s[1] for s in sent), default=0) * 1000,
                                         2),
            "duplicates": r["duplicates"], "gate_dropped": r["gate"]["dropped"],
            "peers_connected": r["peers_connected"], "mesh_sizes": r["mesh_sizes"],
            "cpu_s": round(cpu, 2), "max_rss_mib": r["max_rss_mib"],
        })
    phase_cpu = {}
    for a, b in (("baseline_start", "baseline_end"), ("gossip_start", "gossip_end")):
        used, spans = 0.0, []
        for r in results:
            marks = r.get("cpu_marks", {})
            if a in marks and b in marks:
                used += marks[b][1] - marks[a][1]
                spans.append(marks[b][0] - marks[a][0])
        if spans:
            phase_cpu[a.split("_")[0]] = round(used / (sum(spans) / len(spans)), 2)
    # CPU of all peers from the first gossip send to the end (sending + drain)
    gossip_cpu = sum(r["cpu_s"]["user"] + r["cpu_s"]["system"] - r["cpu_marks"]["gossip_start"][1]
                     for r in results if "gossip_start" in r.get("cpu_marks", {}))
    total_expected = m * (n - 1)
    total_cpu = sum(p["cpu_s"] for p in per_node)
    gossip = {
        "deliveries": len(lat), "expected": total_expected,
        "delivery_ratio": round(len(lat) / total_expected, 6) if total_expected else None,
        "latency_ms": summary_ms(lat),
        "breakdown_ms": {
            "publish_to_validator": summary_ms(to_val),
            "validator": summary_ms(val),
            "validator_to_application": summary_ms(queue),
        },
        "time_to_reach_all_ms": summary_ms(list(last_arrival.values())),
        "missing_count": len(missing), "missing_sample": missing[:50],
        "send_lag_ms": summary_ms([s[1] - s[0] for r in results for s in r["sent"].values()]),
        "gate_dropped_total": sum(sum(p["gate_dropped"].values()) for p in per_node),
        "cpu_s_all_peers": round(total_cpu, 1),
        "peers_busy_cpus": phase_cpu,
        "peers_cpu_s_gossip_to_end": round(gossip_cpu, 2),
        "cpu_ms_per_delivery": round(1000 * gossip_cpu / len(lat), 2) if lat else None,
        "per_node": per_node,
    }
    # baseline
    baseline = None
    if plan["baseline"]:
        recv = results[plan["baseline"]["receiver"]]["baseline_recv"]
        sender = results[plan["baseline"]["sender"]]
        b_lat = [v[1] - v[0] for v in recv.values()]
        baseline = {
            "kind": "one raw libp2p stream, one hop, length-prefixed frames, no signature",
            "sender": plan["baseline"]["sender"], "receiver": plan["baseline"]["receiver"],
            "sent": len(sender["baseline_sent"]), "received": len(recv),
            "delivery_ratio": round(len(recv) / m, 6) if m else None,
            "latency_ms": summary_ms(b_lat),
            "errors": sender["baseline_errors"] + results[plan["baseline"]["receiver"]][
                "baseline_errors"],
        }
    ratios = {}
    if baseline and baseline["latency_ms"].get("count") and gossip["latency_ms"].get("count"):
        for q in ("p50", "p90", "p99", "max"):
            b = baseline["latency_ms"][q]
            ratios[f"gossip_{q}/stream_{q}"] = round(gossip["latency_ms"][q] / b, 1) if b else None
    # latency by second of publish time, to tell a steady backlog from a transient stall
    bins: dict[int, list[float]] = {}
    t0 = min((v[0] for r in results for v in r["received"].values()), default=0.0)
    for r in results:
        for v in r["received"].values():
            bins.setdefault(int(v[0] - t0), []).append(v[3] - v[0])
    gossip["by_second"] = [
        {"s": sec, **{k: v for k, v in summary_ms(bins[sec]).items()
                      if k in ("count", "p50", "p99", "max")}}
        for sec in sorted(bins)]
    traces = [r["trace"] for r in results if r.get("trace")]
    if traces:
        gossip["trace"] = {
            "copies_received": sum(t["copies"] for t in traces),
            "copies_per_delivery": round(sum(t["copies"] for t in traces) / len(lat), 2)
            if lat else None,
            "dropped_outbound_rpcs": sum(t["dropped_rpcs"] for t in traces),
            "iwant_ids_served": sum(t["iwant_received_ids"] for t in traces),
            "ihave_ids_received": sum(t["ihave_received_ids"] for t in traces),
            "rpcs_written": sum(t["rpcs_written"] for t in traces),
            "max_rpc_write_ms": round(max(t["max_write_ms"] for t in traces), 1),
        }
    return {"gossip": gossip, "baseline": baseline, "ratios": ratios,
            "run_s": round(run_s, 1)}


def count_log_warnings(run_dir: Path, n: int) -> dict:
    needles = {"rate_limit_exceeded": "Rate limit exceeded",
               "subscription_full": "fail to deliver message to subscription",
               "graft_flood": "GRAFT flood detected",
               "traceback": "Traceback", "shutdown_forced": "shutdown took too long"}
    counts = {k: 0 for k in needles}
    for i in range(n):
        try:
            text = (run_dir / f"peer{i}.log").read_text(errors="replace")
        except OSError:
            continue
        for k, s in needles.items():
            counts[k] += text.count(s)
    return counts


def print_report(doc: dict) -> None:
    g, b, p = doc["figures"]["gossip"], doc["figures"]["baseline"], doc["parameters"]
    gl = g["latency_ms"]
    print(f"\n== gossip: {p['nodes']} nodes (one process each), {p['messages']} x {p['size']} B "
          f"at {p['rate']} msg/s, {os.cpu_count()} CPUs ==")
    print(f"delivery      {g['deliveries']}/{g['expected']} = {100 * g['delivery_ratio']:.2f}%"
          f"  (missing {g['missing_count']}, gate drops {g['gate_dropped_total']})")
    if gl.get("count"):
        print(f"latency ms    p50 {gl['p50']:.2f}  p90 {gl['p90']:.2f}  p99 {gl['p99']:.2f}  "
              f"max {gl['max']:.2f}  mean {gl['mean']:.2f}")
        br = g["breakdown_ms"]
        print(f"  publish->validator p50 {br['publish_to_validator']['p50']:.2f} "
              f"p99 {br['publish_to_validator']['p99']:.2f}; validator p50 "
              f"{br['validator']['p50']:.3f} p99 {br['validator']['p99']:.3f}; "
              f"validator->app p50 {br['validator_to_application']['p50']:.2f} "
              f"p99 {br['validator_to_application']['p99']:.2f}")
        ta = g["time_to_reach_all_ms"]
        print(f"  time to reach all nodes: p50 {ta['p50']:.2f}  p99 {ta['p99']:.2f}  "
              f"max {ta['max']:.2f}")
    sl = g["send_lag_ms"]
    if sl.get("count"):
        print(f"send lag ms   p50 {sl['p50']:.2f}  p99 {sl['p99']:.2f}  max {sl['max']:.2f} "
              "(publisher behind its schedule)")
    busy, mine = doc["machine_busy_cpus"], g["peers_busy_cpus"]
    print(f"busy CPUs     (of {os.cpu_count()}) before start: machine "
          f"{doc['machine']['busy_cpus_before']}; baseline phase: machine {busy['baseline']}, "
          f"peers {mine.get('baseline')}; gossip phase: machine {busy['gossip']}, peers "
          f"{mine.get('gossip')}")
    print(f"cost          {g['cpu_ms_per_delivery']} ms of peer CPU per delivery "
          f"({g['peers_cpu_s_gossip_to_end']} CPU-s from the first send to the end)")
    rows = g.get("by_second", [])
    if rows:
        print("p99 by second  " + " ".join(f"{r['p99']:.0f}" for r in rows) + "  (ms)")
        print("machine busy   " + " ".join(
            "-" if r.get("machine_busy_cpus") is None else f"{r['machine_busy_cpus']:.1f}"
            for r in rows) + "  (CPUs)")
    if g.get("trace"):
        print(f"trace         {g['trace']}")
    if doc["contended"]:
        print("WARNING       other processes used CPU during the run: these figures measure a "
              "shared machine, not the stack alone")
    worst = sorted(g["per_node"], key=lambda x: (x["delivery"] or 0, -x["latency_ms"].get(
        "p99", 0)))[:3]
    for w in worst:
        print(f"  node {w['index']}: {w['received']}/{w['expected']} p99 "
              f"{w['latency_ms'].get('p99', float('nan'))} ms, mesh {w['mesh_sizes']}, "
              f"peers {w['peers_connected']}")
    if b:
        bl = b["latency_ms"]
        if bl.get("count"):
            print(f"\n== baseline: {b['kind']} ==")
            print(f"delivery      {b['received']}/{p['messages']}")
            print(f"latency ms    p50 {bl['p50']:.2f}  p90 {bl['p90']:.2f}  p99 {bl['p99']:.2f}"
                  f"  max {bl['max']:.2f}")
            print("ratios        " + "  ".join(f"{k} = {v}" for k, v in
                                               doc["figures"]["ratios"].items()))
        else:
            print(f"\nbaseline: no frames received ({b['errors']})")
        if b["errors"] and bl.get("count"):
            print(f"baseline notes: {b['errors']}")
    goal = doc["goal"]
    print(f"\ngoal (100% delivery, p99 < {GOAL_P99_MS:.0f} ms): "
          f"{'MET' if goal['met'] else 'NOT MET'}"
          f" (delivery {100 * g['delivery_ratio']:.2f}%, p99 {gl.get('p99', 'n/a')} ms)")


# -- main -----------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description="Gossip delivery/latency over N real node processes on loopback.")
    ap.add_argument("--nodes", type=int, required=True, help="peer processes (2..200)")
    ap.add_argument("--messages", type=int, default=200)
    ap.add_argument("--rate", type=float, default=10.0, help="messages per second, in total")
    ap.add_argument("--size", type=int, default=1024, help="bytes per signed message")
    ap.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "results")
    ap.add_argument("--chords", type=int, default=2, help="random bootstrap chords per peer")
    ap.add_argument("--seed", type=int, default=7, help="seed of the chord choice")
    ap.add_argument("--ready-timeout", type=float, default=0.0,
                    help="seconds for all peers to start (default 30 + 3 per node)")
    ap.add_argument("--mesh-timeout", type=float, default=60.0,
                    help="seconds for every peer to hear every other peer's warm-up")
    ap.add_argument("--warmup-interval", type=float, default=0.0,
                    help="seconds between one peer's warm-up messages (default: 2 * nodes / "
                         "rate, at least 1, so warm-ups total half the benchmark rate)")
    ap.add_argument("--quiet-timeout", type=float, default=30.0,
                    help="after the warm-up, wait up to this long for the CPUs to go idle")
    ap.add_argument("--settle", type=float, default=3.0,
                    help="seconds from the go signal to the baseline, and from the baseline "
                         "to the first gossip message")
    ap.add_argument("--drain", type=float, default=10.0,
                    help="seconds to wait for late deliveries after the last send")
    ap.add_argument("--gossipsub", action="append", default=[], metavar="KEY=VALUE",
                    help="override a GossipSub() argument in the peers (experiments)")
    ap.add_argument("--netconfig", action="append", default=[], metavar="KEY=VALUE",
                    help="override a NetConfig field in the peers (experiments)")
    ap.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                    help="environment variable for the peers, e.g. PY_YAMUX_RELEASE_ON_READ=0")
    ap.add_argument("--patch", action="append", default=[],
                    choices=["trace"],
                    help="experimental py-libp2p patch in the peers (see benchpeer.PATCHES)")
    ap.add_argument("--profile", type=int, default=None, metavar="INDEX",
                    help="sample peer INDEX with py-spy during the gossip phase (needs py-spy "
                         "in the venv); raw stacks land in the run dir (implies --keep)")
    ap.add_argument("--wait-idle", type=float, default=0.0, metavar="SECONDS",
                    help="first wait up to SECONDS for other processes to leave the CPUs idle")
    ap.add_argument("--idle-below", type=float, default=0.3, metavar="CPUS",
                    help="busy CPUs of other processes that count as a contended machine")
    ap.add_argument("--tag", default="", help="suffix of the result file name")
    ap.add_argument("--keep", action="store_true", help="keep the run directory (logs)")
    ap.add_argument("--require-goal", action="store_true",
                    help="exit 2 when delivery < 100%% or p99 >= 100 ms")
    args = ap.parse_args(argv)
    if not 2 <= args.nodes <= 200:
        ap.error("--nodes must be 2..200 (addresses 127.0.0.10 .. 127.0.0.209)")
    if args.messages < 1 or args.rate <= 0 or args.size < 256:
        ap.error("--messages >= 1, --rate > 0 and --size >= 256 please")
    if args.warmup_interval <= 0:
        args.warmup_interval = max(1.0, 2.0 * args.nodes / args.rate)

    ts = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    run_dir = Path(tempfile.mkdtemp(prefix=f"bench-gossip-N{args.nodes}-"))
    started = time.time()
    peers: Peers | None = None
    profiler: subprocess.Popen | None = None
    info = machine_info()
    failed: str | None = None
    if args.wait_idle > 0:
        idle_deadline = time.monotonic() + args.wait_idle
        while True:
            busy = CpuSampler.measure(2.0)
            if busy is not None and busy < args.idle_below:
                break
            if time.monotonic() > idle_deadline:
                print(f"warning: machine still busy ({busy} CPUs) after --wait-idle "
                      f"{args.wait_idle} s; running anyway", file=sys.stderr)
                break
    info["busy_cpus_before"] = CpuSampler.measure(2.0)
    if (info["busy_cpus_before"] or 0) >= args.idle_below:
        print(f"warning: the machine is already busy ({info['busy_cpus_before']} of "
              f"{os.cpu_count()} CPUs in use by other processes); figures will be "
              "pessimistic", file=sys.stderr)
    sampler = CpuSampler()
    sampler.start()
    go: dict = {}
    try:
        plan = prepare(run_dir, args)
        netcfg = check_netconfig(plan)
        if not netcfg["matches_real_node_defaults"]:
            raise BenchError("benchpeer's NetConfig differs from cli.runner.net_config(); "
                             "update meca_node/sim/benchpeer.py:bench_net_config")
        info["gate_check_us"] = gate_check_cost_us(args.size)
        peers = Peers(plan, run_dir)
        print(f"starting {args.nodes} peer processes (run dir {run_dir})", flush=True)
        peers.start()
        ready_timeout = args.ready_timeout or 30.0 + 3.0 * args.nodes
        peers.wait_files("ready", time.time() + ready_timeout, "ready")
        t_ready = time.time()
        print(f"  all ready after {t_ready - started:.1f} s; waiting for warm-ups to cross "
              "the mesh", flush=True)
        peers.wait_files("mesh", time.time() + args.mesh_timeout,
                         "hearing every other peer's warm-up")
        t_mesh = time.time()
        atomic_write(run_dir / "warmup-stop.json", b"{}")
        quiet = wait_quiet(args.quiet_timeout, args.idle_below + 0.2)
        print(f"  mesh formed after {t_mesh - t_ready:.1f} s more; quiet after "
              f"{time.time() - t_mesh:.1f} s ({quiet} CPUs busy); baseline, then "
              f"{args.messages} gossip messages at {args.rate}/s", flush=True)
        # the baseline runs first, on a quiet system (only gossipsub heartbeats); the
        # gossip phase follows, then a drain for late deliveries
        span = args.messages / args.rate
        tb0 = time.time() + args.settle
        t0 = tb0 + span + args.settle
        t_end = t0 + span + args.drain
        go = {"t0": t0, "tb0": tb0, "t_end": t_end}
        atomic_write(run_dir / "go.json", json.dumps(go).encode())
        if args.profile is not None:
            profiler = start_profiler(peers, args.profile, t0, span, run_dir)
        peers.wait_files("result", t_end + 30.0, "done")
        peers.wait_exit(10.0)  # they exit on their own (4 s shutdown deadline)
        results = [json.loads((run_dir / f"result-{i}.json").read_text())
                   for i in range(args.nodes)]
    except BenchError as exc:
        failed = str(exc)
    except KeyboardInterrupt:
        failed = "interrupted"
    except Exception as exc:  # noqa: BLE001 - report, stop the peers, exit 1
        failed = f"unexpected {type(exc).__name__}: {exc}"
    finally:
        sampler.stop()
        codes = peers.stop() if peers is not None else {}
        if profiler is not None:
            try:
                profiler.wait(timeout=15)
            except subprocess.TimeoutExpired:
                profiler.kill()
                profiler.wait(timeout=5)
    if failed:
        print(f"bench_gossip: FAILED: {failed}\n(run dir kept: {run_dir})", file=sys.stderr)
        return 1

    figures = analyse(plan, results, time.time() - started)
    g = figures["gossip"]
    m_busy = sampler.busy_cores(go["t0"], go["t0"] + args.messages / args.rate)
    p_busy = g["peers_busy_cpus"].get("gossip")
    contended = ((info["busy_cpus_before"] or 0) >= args.idle_below or
                 (m_busy is not None and p_busy is not None and
                  m_busy - p_busy >= args.idle_below))
    t_first = go["t0"]
    for row in g["by_second"]:
        row["machine_busy_cpus"] = sampler.busy_cores(t_first + row["s"] - 0.5,
                                                      t_first + row["s"] + 1.6)
    goal_met = g["delivery_ratio"] == 1.0 and g["latency_ms"].get("p99", 1e9) < GOAL_P99_MS
    doc = {
        "benchmark": "gossip", "timestamp": ts,
        "parameters": {"nodes": args.nodes, "messages": args.messages, "rate": args.rate,
                       "size": args.size, "chords": args.chords, "seed": args.seed,
                       "settle_s": args.settle, "drain_s": args.drain,
                       "warmup_interval_s": args.warmup_interval,
                       "topology": "ring + random chords (bootstrap lists)",
                       "bootstrap": {p["index"]: p["bootstrap_idx"] for p in plan["peers"]},
                       "topic": wire.TOPIC_OFFERS,
                       "message": "signed TaskOffer envelope, padded to size",
                       "gate": plan["gate"], "netconfig": netcfg,
                       "gossipsub": gossipsub_params(plan), "peer_env": plan["peer_env"],
                       "patches": plan["patches"], "tag": args.tag},
        "machine": info,
        "timeline_s": {"ready": round(t_ready - started, 2),
                       "mesh": round(t_mesh - t_ready, 2),
                       "quiet": round(go["tb0"] - args.settle - t_mesh, 2)},
        "machine_busy_cpus": {
            "baseline": sampler.busy_cores(go["tb0"], go["tb0"] + args.messages / args.rate),
            "gossip": sampler.busy_cores(go["t0"], go["t0"] + args.messages / args.rate),
            "drain": sampler.busy_cores(go["t0"] + args.messages / args.rate, go["t_end"]),
        },
        "figures": figures,
        "contended": contended,
        "goal": {"delivery_ratio": 1.0, "p99_ms_below": GOAL_P99_MS, "met": goal_met},
        "log_warnings": count_log_warnings(run_dir, args.nodes),
        "exit_codes": codes,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    suffix = f"-{args.tag}" if args.tag else ""
    out = args.out / f"gossip-N{args.nodes}-{ts}{suffix}.json"
    atomic_write(out, json.dumps(doc, indent=1).encode())
    print_report(doc)
    bad_exit = {i: c for i, c in codes.items() if c != 0}
    if bad_exit:
        print(f"note: peers with non-zero exit: {bad_exit} (logs in {run_dir})")
    print(f"\nwrote {out}")
    if args.keep or bad_exit or args.profile is not None:
        print(f"run dir kept: {run_dir}")
    else:
        shutil.rmtree(run_dir, ignore_errors=True)
    return 2 if (args.require_goal and not goal_met) else 0


if __name__ == "__main__":
    sys.exit(main())
