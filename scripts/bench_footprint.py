#!/usr/bin/env python3
"""Footprint of an idle provider node next to a bare py-libp2p host, measured in one run.

    .venv/bin/python scripts/bench_footprint.py [--seconds 60] [--starts 3]
        [--startup-benchmark cached|off] [--out bench/results/] [--tag NAME]

Two real processes are compared:

* **provider**: ``python -m meca_node start --role provider`` with its own key, a genesis
  made here (one account), ``--listen /ip4/127.0.0.1/tcp/PORT``, no bootstrap peers, in a
  fresh data directory. Its startup benchmark is ``cached`` by default: one start before the
  measured ones runs it and stores the score in the data directory (as on any restart of a
  provider), so the measured starts read the cache; ``off`` sets ``startup_benchmark =
  false`` instead. The Docker engine is used as found (the figures say whether one answered).
* **bare host**: a small script that imports libp2p, creates a host with the choices of
  ``meca_node/net/host.py`` (Ed25519 key, Noise, yamux, one connection per peer), listens on
  127.0.0.1 and idles.

Before anything starts, the ``meca_node`` package is byte-compiled (``compileall``), as a
``pip install`` does (libp2p is installed, so compiled): run from a checkout with
``PYTHONDONTWRITEBYTECODE=1`` (set in some environments) every start would compile ~100
modules again, which cost about 11 MB of RSS and most of a second when measured.

For each, ``--starts`` times: spawn the process and time its first "ready" line on stdout,
the moment its listening port accepts a TCP connection and, for the provider, the moment its
control API answers ``GET /v1/status``; then stop it (SIGTERM). Then both run at once for
``--seconds``: every second the harness reads VmRSS from ``/proc/PID/status`` and utime +
stime from ``/proc/PID/stat``.

Prints a table (provider, bare host, difference, ratio) and writes
``<out>/footprint-<UTC timestamp>[-<tag>].json``. Goals (issue "headless node on edge
devices"): provider idle RSS within 15 MB of the bare host, spawn to ready under 1.5 s,
idle CPU near 0 (here: at most 1 % of one core). Exit status: 0 when the run completed (goals
met or not; ``--require-goal`` makes an unmet goal exit 2), 1 when the benchmark itself
failed (the message says why). Every process started here is stopped here, by pid.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

GOAL_RSS_DIFF_MB = 15.0
GOAL_READY_S = 1.5
GOAL_IDLE_CPU_PCT = 1.0
READY_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 15.0
MB = 1024 * 1024

#: the bare host: libp2p with host.py's choices, listening on argv[1], idle until killed
BARE_HOST = r"""
import sys
import multiaddr, trio
from libp2p import new_host
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.crypto.x25519 import create_new_key_pair as create_x25519_key_pair
from libp2p.network.config import ConnectionConfig
from libp2p.security.noise.transport import PROTOCOL_ID as NOISE, Transport as Noise

async def main():
    key_pair = create_new_key_pair(b"\x07" * 32)
    listen = [multiaddr.Multiaddr(sys.argv[1])]
    host = new_host(key_pair=key_pair,
                    sec_opt={NOISE: Noise(key_pair,
                                          noise_privkey=create_x25519_key_pair().private_key)},
                    muxer_preference="YAMUX", listen_addrs=listen,
                    connection_config=ConnectionConfig(max_connections_per_peer=1))
    async with host.run(listen):
        print(f"bare host {host.get_id()} listening on {sys.argv[1]}", flush=True)
        print("ready", flush=True)
        await trio.sleep_forever()

try:
    trio.run(main)
except KeyboardInterrupt:
    pass
"""


class BenchError(Exception):
    """The benchmark could not run to the end; the message says where and why."""


# -- /proc ---------------------------------------------------------------------------------
CLK_TCK = os.sysconf("SC_CLK_TCK")


def rss_bytes(pid: int) -> int:
    """VmRSS of ``pid`` from /proc/PID/status."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise BenchError(f"no VmRSS for pid {pid}")


def cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` from /proc/PID/stat, in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # fields 14 and 15 of stat(5)


# -- one process under test -------------------------------------------------------------------
class Spawned:
    """A process whose stdout lines are timestamped as they come, by a reader thread."""

    def __init__(self, name: str, argv: list[str], log_path: Path,
                 env: dict[str, str]) -> None:
        self.name = name
        self.log_path = log_path
        self.lines: list[tuple[float, str]] = []
        self._grew = threading.Condition()
        self._log = log_path.open("ab")
        self.t0 = time.monotonic()
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=self._log,
                                     stdin=subprocess.DEVNULL, env=env, text=True)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:  # ends with the process
            with self._grew:
                self.lines.append((time.monotonic(), line.rstrip("\n")))
                self._grew.notify_all()
        with self._grew:
            self._grew.notify_all()

    def wait_line(self, needle: str, timeout_s: float) -> float:
        """Seconds from spawn to the first stdout line that starts with ``needle``
        (leading blanks aside)."""
        deadline = time.monotonic() + timeout_s
        with self._grew:
            while True:
                for t, line in self.lines:
                    if line.strip().startswith(needle):
                        return t - self.t0
                if self.proc.poll() is not None and not self._reader.is_alive():
                    raise BenchError(f"{self.name} exited with {self.proc.returncode} before "
                                     f"{needle!r}; log {self.log_path}:\n{self.tail()}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise BenchError(f"{self.name}: no {needle!r} line within {timeout_s} s; "
                                     f"log {self.log_path}:\n{self.tail()}")
                self._grew.wait(min(left, 0.5))

    def wait_until(self, what: str, ok, timeout_s: float) -> float:
        """Seconds from spawn until ``ok()`` (polled every 5 ms, bounded)."""
        deadline = time.monotonic() + timeout_s
        while not ok():
            if self.proc.poll() is not None:
                raise BenchError(f"{self.name} exited with {self.proc.returncode} before "
                                 f"{what}; log {self.log_path}:\n{self.tail()}")
            if time.monotonic() > deadline:
                raise BenchError(f"{self.name}: not {what} within {timeout_s} s")
            time.sleep(0.005)
        return time.monotonic() - self.t0

    def tail(self, n: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"

    def stop(self) -> int | None:
        """SIGTERM, then SIGKILL after STOP_TIMEOUT_S; the exit code (None: killed)."""
        try:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    return self.proc.wait(timeout=STOP_TIMEOUT_S)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(timeout=STOP_TIMEOUT_S)
                    return None
            return self.proc.returncode
        finally:
            self._reader.join(5)
            self._log.close()


def accepts(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


# -- the two subjects --------------------------------------------------------------------------
def child_env() -> dict[str, str]:
    """Our environment without MECA_* settings: the node is configured by its flags only."""
    return {k: v for k, v in os.environ.items() if not k.startswith("MECA_")}


class Provider:
    """A provider's data directory, key and genesis; ``spawn`` starts it."""

    name = "provider"

    def __init__(self, root: Path, benchmark: str) -> None:
        from meca_node import wire
        from meca_node.store import atomic_write, load_or_create_key

        self.data_dir = root / "provider"
        identity, _ = load_or_create_key(self.data_dir)
        self.genesis = root / "genesis.json"
        g = wire.make_genesis("footprint", identity.signing_key, time.time_ns() // 1_000_000,
                              [(identity.public_key, 1_000_000)])
        atomic_write(self.genesis, g.to_json().encode())
        (self.data_dir / "config.toml").write_text(
            f"startup_benchmark = {'true' if benchmark == 'cached' else 'false'}\n")
        self.port = free_port()
        self.log = root / "provider.log"

    def spawn(self) -> Spawned:
        argv = [sys.executable, "-m", "meca_node", "start", "--data-dir", str(self.data_dir),
                "--genesis", str(self.genesis), "--listen", f"/ip4/127.0.0.1/tcp/{self.port}",
                "--role", "provider"]
        return Spawned(self.name, argv, self.log, child_env())

    def control_answers(self) -> bool:
        from meca_node.control import ControlClient, ControlError

        try:
            ControlClient(self.data_dir, timeout_s=1.0).get("/v1/status")
            return True
        except ControlError:
            return False

    def status(self) -> dict:
        from meca_node.control import ControlClient

        return ControlClient(self.data_dir, timeout_s=5.0).get("/v1/status")


class BareHost:
    """The bare py-libp2p host script."""

    name = "bare host"

    def __init__(self, root: Path) -> None:
        self.port = free_port()
        self.log = root / "bare-host.log"

    def spawn(self) -> Spawned:
        argv = [sys.executable, "-c", BARE_HOST, f"/ip4/127.0.0.1/tcp/{self.port}"]
        return Spawned(self.name, argv, self.log, child_env())


# -- measuring ---------------------------------------------------------------------------------
def time_start(subject) -> dict:
    """Spawn, time ready line / port accepting / control API, stop."""
    p = subject.spawn()
    try:
        times = {"ready_line_s": p.wait_line("ready", READY_TIMEOUT_S),
                 "port_accepts_s": p.wait_until("accepting on its port",
                                                lambda: accepts("127.0.0.1", subject.port),
                                                READY_TIMEOUT_S)}
        if isinstance(subject, Provider):
            times["control_api_s"] = p.wait_until("answering on its control API",
                                                  subject.control_answers, READY_TIMEOUT_S)
        times["rss_at_ready_mb"] = rss_bytes(p.proc.pid) / MB
    finally:
        code = p.stop()
    if code not in (0, -signal.SIGTERM, 128 + signal.SIGTERM):
        raise BenchError(f"{subject.name} stopped with exit code {code}; log {subject.log}:\n"
                         f"{p.tail()}")
    return times


def sample_idle(spawned: list[Spawned], seconds: int) -> dict[str, list[dict]]:
    """Every second for ``seconds``: RSS and cumulative CPU of each process."""
    samples: dict[str, list[dict]] = {p.name: [] for p in spawned}
    t0 = time.monotonic()
    for i in range(seconds + 1):
        time.sleep(max(0.0, t0 + i - time.monotonic()))
        for p in spawned:
            if p.proc.poll() is not None:
                raise BenchError(f"{p.name} exited with {p.proc.returncode} while idle; log "
                                 f"{p.log_path}:\n{p.tail()}")
            samples[p.name].append({"t_s": round(time.monotonic() - t0, 3),
                                    "rss_mb": round(rss_bytes(p.proc.pid) / MB, 2),
                                    "cpu_s": round(cpu_seconds(p.proc.pid), 3)})
    return samples


def idle_figures(samples: list[dict]) -> dict:
    rss = [s["rss_mb"] for s in samples]
    span = samples[-1]["t_s"] - samples[0]["t_s"]
    cpu = samples[-1]["cpu_s"] - samples[0]["cpu_s"]
    per_s = [b["cpu_s"] - a["cpu_s"] for a, b in zip(samples, samples[1:])]
    return {"rss_mb_median": round(statistics.median(rss), 2), "rss_mb_max": max(rss),
            "rss_mb_first": rss[0], "rss_mb_last": rss[-1],
            "cpu_s": round(cpu, 3), "cpu_pct_of_a_core": round(100 * cpu / span, 3),
            "cpu_pct_max_second": round(100 * max(per_s), 1) if per_s else 0.0}


def start_figures(runs: list[dict]) -> dict:
    keys = sorted({k for r in runs for k in r})
    return {k: {"median": round(statistics.median(r[k] for r in runs), 3),
                "min": round(min(r[k] for r in runs), 3),
                "max": round(max(r[k] for r in runs), 3)} for k in keys}


def loadavg() -> list[float]:
    return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]


def machine() -> dict:
    def version(name: str) -> str:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            return "?"

    commit = subprocess.run(["git", "-C", str(REPO_ROOT), "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True, timeout=30).stdout.strip()
    return {"python": platform.python_version(), "platform": platform.platform(),
            "cpus": os.cpu_count(), "libp2p": version("libp2p"), "commit": commit}


def docker_answers() -> bool:
    try:
        return subprocess.run(["docker", "info"], capture_output=True,
                              timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def row(label: str, a: float, b: float, unit: str, ratio: bool = True) -> str:
    r = f"{a / b:7.2f}" if ratio and b else "      -"
    return f"{label:<34} {a:10.3f} {b:10.3f} {a - b:+11.3f} {r}  {unit}"


def run(args) -> dict:
    importlib.import_module("meca_node.control")  # now: the first poll must not pay for it

    import compileall

    if not compileall.compile_dir(str(REPO_ROOT / "meca_node"), quiet=1):
        raise BenchError("byte-compiling meca_node failed (see above)")
    root = Path(tempfile.mkdtemp(prefix="meca-footprint-"))
    provider, bare = Provider(root, args.startup_benchmark), BareHost(root)
    result: dict = {"benchmark": "footprint", "seconds": args.seconds, "starts": args.starts,
                    "startup_benchmark": args.startup_benchmark,
                    "byte_compiled": True,
                    "docker_engine": docker_answers(), "machine": machine(),
                    "loadavg_before": loadavg(), "run_dir": str(root)}
    if args.startup_benchmark == "cached":  # one start that runs and caches the benchmark
        t0 = time.monotonic()
        p = provider.spawn()
        try:
            p.wait_line("ready", READY_TIMEOUT_S)
            # "taking jobs: ..." or "not running jobs: ..." once environments are scored
            p.wait_until("done with its startup benchmark", lambda: any(
                "taking jobs" in line or "not running jobs" in line
                for line in provider.log.read_text(errors="replace").splitlines()),
                READY_TIMEOUT_S + 120)
        finally:
            p.stop()
        result["benchmark_warmup_s"] = round(time.monotonic() - t0, 2)
        result["benchmark_cached"] = (provider.data_dir / "benchmark.json").exists()
    starts = {"provider": [], "bare host": []}
    for _ in range(args.starts):  # alternate, so both see the same machine
        for subject in (provider, bare):
            starts[subject.name].append(time_start(subject))
    spawned = [provider.spawn(), bare.spawn()]
    try:
        for p in spawned:
            p.wait_line("ready", READY_TIMEOUT_S)
        provider_ready = spawned[0]
        provider_ready.wait_until("answering on its control API", provider.control_answers,
                                  READY_TIMEOUT_S)
        status = provider.status()
        time.sleep(args.settle)  # the provider's own start-up work (engine, sandbox) ends
        samples = sample_idle(spawned, args.seconds)
    finally:
        for p in spawned:
            p.stop()
    result["loadavg_after"] = loadavg()
    result["provider_status"] = {k: status.get(k) for k in ("roles", "offered", "free",
                                                            "environments", "benchmark")
                                 if k in status}
    result["start"] = {name: start_figures(runs) for name, runs in starts.items()}
    result["start_runs"] = starts
    result["idle"] = {name: idle_figures(s) for name, s in samples.items()}
    result["idle_samples"] = samples
    pi, bi = result["idle"]["provider"], result["idle"]["bare host"]
    ps, bs = result["start"]["provider"], result["start"]["bare host"]
    result["difference"] = {
        "rss_mb_median": round(pi["rss_mb_median"] - bi["rss_mb_median"], 2),
        "cpu_pct_of_a_core": round(pi["cpu_pct_of_a_core"] - bi["cpu_pct_of_a_core"], 3),
        "ready_line_s": round(ps["ready_line_s"]["median"] - bs["ready_line_s"]["median"], 3)}
    result["goals"] = {
        "rss_within_15mb_of_bare_host": result["difference"]["rss_mb_median"] <= GOAL_RSS_DIFF_MB,
        "ready_under_1_5s": ps["ready_line_s"]["median"] < GOAL_READY_S,
        "idle_cpu_at_most_1pct": pi["cpu_pct_of_a_core"] <= GOAL_IDLE_CPU_PCT}
    return result


def print_table(r: dict) -> None:
    pi, bi = r["idle"]["provider"], r["idle"]["bare host"]
    ps, bs = r["start"]["provider"], r["start"]["bare host"]
    print(f"{'':<34} {'provider':>10} {'bare host':>10} {'difference':>11} {'ratio':>7}")
    print(row("idle RSS, median of the seconds", pi["rss_mb_median"], bi["rss_mb_median"], "MB"))
    print(row("idle RSS, max", pi["rss_mb_max"], bi["rss_mb_max"], "MB"))
    print(row("idle CPU", pi["cpu_pct_of_a_core"], bi["cpu_pct_of_a_core"],
              "% of one core", ratio=False))
    print(row("spawn -> ready line (median)", ps["ready_line_s"]["median"],
              bs["ready_line_s"]["median"], "s"))
    print(row("spawn -> ready line (min)", ps["ready_line_s"]["min"],
              bs["ready_line_s"]["min"], "s"))
    print(row("spawn -> port accepts (median)", ps["port_accepts_s"]["median"],
              bs["port_accepts_s"]["median"], "s"))
    print(f"{'spawn -> control API answers':<34} {ps['control_api_s']['median']:10.3f} "
          f"{'':>10} {'':>11} {'':>7}  s")
    print(row("RSS at ready (median)", ps["rss_at_ready_mb"]["median"],
              bs["rss_at_ready_mb"]["median"], "MB"))
    print(f"startup benchmark: {r['startup_benchmark']}; meca_node byte-compiled: "
          f"{r['byte_compiled']}; Docker engine answers: "
          f"{r['docker_engine']}; load average before {r['loadavg_before']}, after "
          f"{r['loadavg_after']}")
    goals = r["goals"]
    print(f"goals: RSS within {GOAL_RSS_DIFF_MB:g} MB of the bare host "
          f"{'met' if goals['rss_within_15mb_of_bare_host'] else 'NOT met'}; spawn to ready "
          f"< {GOAL_READY_S:g} s {'met' if goals['ready_under_1_5s'] else 'NOT met'}; idle CPU "
          f"<= {GOAL_IDLE_CPU_PCT:g} % {'met' if goals['idle_cpu_at_most_1pct'] else 'NOT met'}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=int, default=60, help="idle seconds sampled (default 60)")
    p.add_argument("--starts", type=int, default=3, help="timed starts of each (default 3)")
    p.add_argument("--settle", type=float, default=3.0,
                   help="seconds after ready before sampling (default 3)")
    p.add_argument("--startup-benchmark", choices=("cached", "off"), default="cached",
                   help="the provider's startup benchmark: run once before the measured "
                        "starts and cached (default), or off")
    p.add_argument("--out", default=str(REPO_ROOT / "bench" / "results"))
    p.add_argument("--tag", default="", help="suffix of the result file's name")
    p.add_argument("--require-goal", action="store_true",
                   help="exit 2 when a goal is not met")
    args = p.parse_args()
    if args.seconds < 2 or args.starts < 1:
        p.error("--seconds must be >= 2 and --starts >= 1")
    try:
        result = run(args)
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    shutil.rmtree(result.pop("run_dir"), ignore_errors=True)  # kept (with logs) on failure
    print_table(result)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    result["timestamp"] = stamp
    out = Path(args.out) / f"footprint-{stamp}{'-' + args.tag if args.tag else ''}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=1))
    tmp.replace(out)
    print(f"wrote {out}")
    if args.require_goal and not all(result["goals"].values()):
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
