"""A local cluster of real ``meca-node start`` processes on 127.0.0.x.

Keys and ports are chosen before any process starts, so every node is started at
once with its bootstrap list already known (a ring plus random chords); nodes
redial with backoff until their peers are up. Every wait is bounded, every process
started here is stopped here, by pid, and its exit code checked.
"""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from meca_node import wire
from meca_node.control import ControlClient, ControlError
from meca_node.store import atomic_write, load_or_create_key


class ClusterError(Exception):
    """A cluster node failed to start, answer, or stop in time; the message names it and its log."""


def child_env() -> dict[str, str]:
    """This process's environment without MECA_* settings, so a child node is configured
    by its own flags only."""
    return {k: v for k, v in os.environ.items() if not k.startswith("MECA_")}


def free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


@dataclass
class ClusterNode:
    index: int
    data_dir: Path
    host: str
    port: int
    peer_id: str
    log_path: Path
    args: list[str] = field(default_factory=list)
    proc: subprocess.Popen | None = None

    @property
    def addr(self) -> str:
        return f"/ip4/{self.host}/tcp/{self.port}/p2p/{self.peer_id}"

    def client(self) -> ControlClient:
        return ControlClient(self.data_dir, timeout_s=3.0)

    def status(self) -> dict:
        return self.client().get("/v1/status")

    def peers(self) -> dict:
        return self.client().get("/v1/peers")


class Cluster:
    """``with Cluster(root, n) as c: c.wait_mesh(10)`` starts n nodes and stops them after."""

    def __init__(self, root: Path, n: int, *, advert_interval_s: float = 1.0,
                 chords: int = 2,
                 roles: tuple[str, ...] | list[tuple[str, ...]] = ("provider",),
                 extra_args: tuple[str, ...] = (), seed: int = 7,
                 network_name: str = "local-cluster",
                 startup_benchmark: bool = False,
                 balances: list[int] | None = None,
                 drain_grace_s: float = 0.0) -> None:
        if not 1 <= n <= 64:
            raise ValueError("a local cluster has 1..64 nodes")
        if balances is not None and len(balances) != n:
            raise ValueError(f"balances gives {len(balances)} amounts for {n} nodes")
        self.root = root
        self.n = n
        self.advert_interval_s = advert_interval_s
        self.chords = chords
        self.roles = roles
        self.extra_args = extra_args
        self.rng = random.Random(seed)
        self.network_name = network_name
        #: off by default: n providers benchmarking at once on a small machine only
        #: slow each other down, and tests do not need the scores
        self.startup_benchmark = startup_benchmark
        #: 0 by default: a stopped provider ends its jobs at once (tests stop clusters
        #: with jobs still running); a drain test sets it
        self.drain_grace_s = drain_grace_s
        self.nodes: list[ClusterNode] = []
        self.genesis_path = root / "genesis.json"
        #: each node's genesis balance (default: 1,000,000 each)
        self.balances = list(balances) if balances is not None else [1_000_000] * n
        self.exit_codes: dict[int, int | None] = {}

    # -- set-up -------------------------------------------------------------------
    def prepare(self) -> None:
        """Create keys, the genesis (founded by node 0) and each node's address."""
        self.root.mkdir(parents=True, exist_ok=True)
        identities = []
        for i in range(self.n):
            data_dir = self.root / f"node{i}"
            identity, _ = load_or_create_key(data_dir)
            identities.append(identity)
            config = data_dir / "config.toml"
            if not config.exists():
                config.write_text(f"startup_benchmark = {str(self.startup_benchmark).lower()}\n"
                                  f"drain_grace_s = {float(self.drain_grace_s)!r}\n")
            host = f"127.0.0.{10 + i}"
            self.nodes.append(ClusterNode(i, data_dir, host, free_port(host), identity.peer_id,
                                          self.root / f"node{i}.log"))
        g = wire.make_genesis(self.network_name, identities[0].signing_key,
                              time.time_ns() // 1_000_000,
                              [(ident.public_key, amount)
                               for ident, amount in zip(identities, self.balances)])
        atomic_write(self.genesis_path, g.to_json().encode())
        for node in self.nodes:
            node.args = self._args(node)

    def _bootstrap_for(self, node: ClusterNode) -> list[ClusterNode]:
        if self.n == 1:
            return []
        picks = {(node.index + 1) % self.n}
        others = [i for i in range(self.n) if i != node.index and i not in picks]
        picks.update(self.rng.sample(others, min(self.chords, len(others))))
        return [self.nodes[i] for i in sorted(picks)]

    def _args(self, node: ClusterNode) -> list[str]:
        args = [sys.executable, "-m", "meca_node", "start",
                "--data-dir", str(node.data_dir), "--genesis", str(self.genesis_path),
                "--listen", f"/ip4/{node.host}/tcp/{node.port}",
                "--advert-interval", str(self.advert_interval_s), "--json-logs"]
        roles = self.roles[node.index] if isinstance(self.roles, list) else self.roles
        for role in roles:  # one tuple for every node, or a list: a tuple per node
            args += ["--role", role]
        for peer in self._bootstrap_for(node):
            args += ["--bootstrap", peer.addr]
        return args + list(self.extra_args)

    def start(self, ready_timeout_s: float = 30.0) -> None:
        if not self.nodes:
            self.prepare()
        for node in self.nodes:
            self._spawn(node)
        deadline = time.monotonic() + ready_timeout_s
        for node in self.nodes:
            self._wait_ready(node, deadline)

    def _wait_ready(self, node: ClusterNode, deadline: float) -> None:
        while True:
            assert node.proc is not None
            if node.proc.poll() is not None:
                raise ClusterError(f"node{node.index} exited with {node.proc.returncode} at "
                                   f"start; log: {node.log_path}\n{self.tail(node)}")
            try:
                node.status()
                return
            except ControlError:
                pass
            if time.monotonic() > deadline:
                raise ClusterError(f"node{node.index} not ready in time; log {node.log_path}\n"
                                   f"{self.tail(node)}")
            time.sleep(0.1)  # bounded poll of another process's readiness

    def kill(self, node: ClusterNode) -> None:
        """SIGKILL one node (a crash: no goodbye to its peers) and reap it."""
        assert node.proc is not None
        node.proc.kill()
        node.proc.wait(timeout=10)

    def kill_together(self, *nodes: ClusterNode) -> None:
        """SIGKILL several nodes as one crash (a power cut): each is frozen with SIGSTOP
        first, so none of them sees another one die and acts on it before its own end."""
        for node in nodes:
            assert node.proc is not None
            node.proc.send_signal(signal.SIGSTOP)
        for node in nodes:
            self.kill(node)

    def restart(self, node: ClusterNode, ready_timeout_s: float = 30.0) -> None:
        """Start a stopped node again with the same key, address and data dir."""
        assert node.proc is not None and node.proc.poll() is not None
        self._spawn(node)
        self._wait_ready(node, time.monotonic() + ready_timeout_s)

    def _spawn(self, node: ClusterNode) -> None:
        with node.log_path.open("ab") as log:
            node.proc = subprocess.Popen(node.args, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, env=child_env())

    # -- observation ------------------------------------------------------------------
    def seen_by(self, node: ClusterNode) -> set[str]:
        """Peer ids whose adverts ``node`` holds."""
        return {a["peer_id"] for a in node.peers()["adverts"]}

    def wait_mesh(self, timeout_s: float) -> dict[int, float]:
        """Wait until every node holds every other node's advert; seconds per node."""
        start = time.monotonic()
        deadline = start + timeout_s
        done: dict[int, float] = {}
        everyone = {m.peer_id for m in self.nodes}
        while len(done) < self.n:
            for node in self.nodes:
                if node.index in done:
                    continue
                try:
                    if self.seen_by(node) >= everyone - {node.peer_id}:
                        done[node.index] = time.monotonic() - start
                except ControlError:
                    pass
            if len(done) < self.n:
                if time.monotonic() > deadline:
                    missing = {m.index: sorted(everyone - {m.peer_id} - self.seen_by(m))
                               for m in self.nodes if m.index not in done}
                    raise ClusterError(f"mesh incomplete after {timeout_s} s; missing adverts: "
                                       f"{missing}")
                time.sleep(0.1)  # bounded poll of other processes' state
        return done

    def tail(self, node: ClusterNode, lines: int = 15) -> str:
        try:
            return "\n".join(node.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    # -- teardown ---------------------------------------------------------------------
    def stop(self, timeout_s: float = 5.0) -> dict[int, int | None]:
        """SIGTERM every node we started; SIGKILL those still alive after ``timeout_s``."""
        for node in self.nodes:
            if node.proc is not None and node.proc.poll() is None:
                node.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        for node in self.nodes:
            if node.proc is None:
                continue
            try:
                node.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                node.proc.kill()
                node.proc.wait()
                self.exit_codes[node.index] = None  # did not stop in time
                continue
            self.exit_codes[node.index] = node.proc.returncode
        return self.exit_codes

    def __enter__(self) -> Cluster:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
