"""Reachability through a relay (circuit relay v2), and the ``reachability`` status.

``test_a_provider_reachable_only_through_a_relay_runs_a_job``: three network namespaces,

    client ns C ──veth── relay ns R ──veth── provider ns P ──veth── host (Docker only)

The relay node (``relay_service``; also the developer who publishes the task) is the only
thing both others reach: R does not forward, and P drops every inbound connection
(a NAT's behaviour: it may dial out, nobody dials in). The provider keeps a reservation on
the relay (``relays``) and so announces a ``/p2p-circuit`` address. The test shows the
client cannot reach the provider directly, then the client runs a real job (Docker) on
the provider and gets the exact output, over a connection that goes through the relay.

The provider's containers run on the host's Docker engine, whose sandbox bridge lives in
the host namespace: P gets a veth to the host with a route to the sandbox subnet only,
and two host firewall rules (in DOCKER-USER, plus a MASQUERADE so the containers answer
on their own subnet) let just P's address through. Everything the test makes (namespaces,
veths, rules) is removed afterwards, whatever happens.

The loopback tests (real hosts in this process on 127.0.0.x) check each reachability
value: unknown before any check, public after a dial-back, private when the dial-back
fails, relayed via <relay> while a reservation holds; the relay's bounds; renewal and
reserving again after a drop; ``meca-node status``'s lines; and our client against
py-libp2p's own hop.

Needs root, iproute2, iptables and Docker for the namespace test: skipped without them,
failed when CI=true.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import netns  # tests/integration/netns.py (conftest puts it on sys.path)
import pytest
import trio
from libp2p.peer.id import ID

from conftest import docker_engine, wait_for
from meca_node.net import NetConfig, open_net
from meca_node.net.relay import RelayLimits
from meca_node.node.developer import image_tag
from meca_node.sim import Cluster
from meca_node.sim.cluster import child_env
from meca_node.store.taskdir import folder_digest, read_task_folder

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
PORT = 4601  # each namespace is fresh: nothing else listens there
STOP_TIMEOUT_S = 10.0
SANDBOX_NETWORK = "meca-sandbox"  # meca_node.runtime.sandbox.NETWORK
SANDBOX_BRIDGE = "meca-sbx0"  # meca_node.runtime.executor.BRIDGE


def _unavailable(why: str) -> None:
    if IN_CI:
        pytest.fail(f"CI=true but the relay namespace test cannot run: {why}")
    pytest.skip(why)


# -- the topology ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Topology:
    relay_ns: str
    provider_ns: str
    client_ns: str
    relay_to_provider: str  # the relay's address on the provider's link
    provider_addr: str
    relay_to_client: str  # the relay's address on the client's link
    client_addr: str
    provider_host_addr: str  # the provider's address on its link to the host (Docker)


def _sh(*argv: str, ns: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
    full = (["ip", "netns", "exec", ns] if ns else []) + list(argv)
    r = subprocess.run(full, capture_output=True, text=True, timeout=30,
                       stdin=subprocess.DEVNULL)
    if check and r.returncode != 0:
        raise netns.NetnsError(f"`{' '.join(full)}` failed ({r.returncode}): {r.stderr}")
    return r


def _host_rules(provider_host_addr: str) -> list[tuple[str, list[str]]]:
    """(table, rule) pairs letting only the provider's address reach the sandbox bridge."""
    return [
        ("filter", ["DOCKER-USER", "-s", provider_host_addr, "-o", SANDBOX_BRIDGE,
                    "-j", "ACCEPT"]),
        ("filter", ["DOCKER-USER", "-d", provider_host_addr, "-i", SANDBOX_BRIDGE,
                    "-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED", "-j", "ACCEPT"]),
        ("nat", ["POSTROUTING", "-s", provider_host_addr, "-o", SANDBOX_BRIDGE,
                 "-j", "MASQUERADE"]),
    ]


@contextmanager
def relay_topology(sandbox_subnet: str) -> Iterator[Topology]:
    """The three namespaces, veths and host rules of the module doc; removed on exit."""
    why = netns.unavailable_reason()
    if why is None and shutil.which("iptables") is None:
        why = "iptables not found on PATH"
    if why:
        _unavailable(why)
    tag = f"meca-r-{os.getpid()}-{random.randint(0, 9999)}"
    names = {"r": f"{tag}-r", "p": f"{tag}-p", "c": f"{tag}-c"}
    host_dev = f"mr{os.getpid() % 100000}h"[:15]
    for _ in range(20):  # bounded: subnets no route on this host uses yet
        third = random.randint(1, 254)
        if f"10.79.{third}." not in netns.ip("-4", "route", "show", "table", "all"):
            break
    net = f"10.79.{third}"
    topo = Topology(names["r"], names["p"], names["c"], f"{net}.1", f"{net}.2",
                    f"{net}.65", f"{net}.66", f"{net}.130")
    host_addr = f"{net}.129"
    made: list[str] = []
    rules: list[tuple[str, list[str]]] = []
    try:
        for ns in names.values():
            netns.ip("netns", "add", ns)
            made.append(ns)
            netns.ip("link", "set", "lo", "up", ns=ns)
            _sh("sysctl", "-qw", "net.ipv4.ip_forward=0", ns=ns)  # nobody routes for others
        # relay <-> provider, relay <-> client: /26s of one /24
        netns.ip("link", "add", "rp", "netns", names["r"], "type", "veth",
                 "peer", "name", "pr", "netns", names["p"])
        netns.ip("link", "add", "rc", "netns", names["r"], "type", "veth",
                 "peer", "name", "cr", "netns", names["c"])
        for ns, dev, addr in ((names["r"], "rp", topo.relay_to_provider),
                              (names["p"], "pr", topo.provider_addr),
                              (names["r"], "rc", topo.relay_to_client),
                              (names["c"], "cr", topo.client_addr)):
            netns.ip("addr", "add", f"{addr}/26", "dev", dev, ns=ns)
            netns.ip("link", "set", dev, "up", ns=ns)
        # provider <-> host: only the route to Docker's sandbox subnet
        netns.ip("link", "add", host_dev, "type", "veth", "peer", "name", "ph",
                 "netns", names["p"])
        netns.ip("addr", "add", f"{host_addr}/30", "dev", host_dev)
        netns.ip("link", "set", host_dev, "up")
        netns.ip("addr", "add", f"{topo.provider_host_addr}/30", "dev", "ph", ns=names["p"])
        netns.ip("link", "set", "ph", "up", ns=names["p"])
        netns.ip("route", "add", sandbox_subnet, "via", host_addr, ns=names["p"])
        # the provider is "behind NAT": it dials out, no connection comes in
        _sh("iptables", "-A", "INPUT", "!", "-i", "lo", "-p", "tcp", "-m", "conntrack",
            "--ctstate", "NEW", "-j", "DROP", ns=names["p"])
        for table, rule in _host_rules(topo.provider_host_addr):
            _sh("iptables", "-t", table, "-I", rule[0], "1", *rule[1:])
            rules.append((table, rule))
        yield topo
    finally:
        errors = []
        for table, rule in rules:
            r = _sh("iptables", "-t", table, "-D", *rule, check=False)
            if r.returncode != 0:
                errors.append(f"iptables -t {table} -D {' '.join(rule)}: {r.stderr}")
        netns.ip("link", "del", host_dev, check=False)  # usually gone with the namespace
        for ns in made:
            try:
                netns.ip("netns", "del", ns)
            except netns.NetnsError as exc:
                errors.append(str(exc))
        left = netns.existing_namespaces() & set(made)
        assert not errors and not left, f"could not clean up: {errors}, left {left}"


# -- node processes in namespaces ---------------------------------------------------------
class Nodes:
    """Node processes started here; stopped here, by pid, whatever happens."""

    def __init__(self) -> None:
        self.procs: dict[str, tuple[subprocess.Popen, Path]] = {}

    def start(self, name: str, argv: list[str], log_path: Path) -> None:
        with log_path.open("ab") as log:
            self.procs[name] = (subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                                 stdin=subprocess.DEVNULL, env=child_env()),
                                log_path)

    def stop(self) -> dict[str, int | None]:
        return netns.stop_processes([(name, proc) for name, (proc, _) in self.procs.items()],
                                    STOP_TIMEOUT_S)

    def logs(self, lines: int = 30) -> str:
        out = []
        for name, (_, path) in self.procs.items():
            tail = path.read_text(errors="replace").splitlines()[-lines:]
            out.append(f"--- {name} ({path}) ---\n" + "\n".join(tail))
        return "\n".join(out)

    def __enter__(self) -> Nodes:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def in_ns(ns: str, data_dir: Path, *args: str, timeout: float = 300
          ) -> subprocess.CompletedProcess:
    """``meca-node ARGS --data-dir DATA_DIR`` run inside namespace ``ns`` (where the
    node's control API listens on that namespace's 127.0.0.1)."""
    return subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-m", "meca_node",
                           *args, "--data-dir", str(data_dir)], capture_output=True,
                          text=True, timeout=timeout, env=child_env(),
                          stdin=subprocess.DEVNULL)


def json_in_ns(ns: str, data_dir: Path, *args: str):
    r = in_ns(ns, data_dir, *args, "--json", timeout=60)
    return json.loads(r.stdout) if r.returncode == 0 else None


def can_connect(ns: str, addr: str, port: int, timeout_s: float = 3.0) -> str:
    """From namespace ``ns``: 'connected' or why a TCP connection to addr:port failed."""
    code = ("import socket,sys\n"
            "try:\n"
            f"    socket.create_connection(({addr!r}, {port}), timeout={timeout_s}).close()\n"
            "    print('connected')\n"
            "except OSError as exc:\n"
            "    print(type(exc).__name__, exc)\n")
    r = _sh(sys.executable, "-c", code, ns=ns)
    return r.stdout.strip()


def sandbox_subnet(engine) -> str:
    """The sandbox network's subnet (made as a provider makes it, if not there yet)."""
    from meca_node.runtime.executor import DockerExecutor

    DockerExecutor(engine)._prepare()
    net = engine.networks.get(SANDBOX_NETWORK)
    return net.attrs["IPAM"]["Config"][0]["Subnet"]


@pytest.mark.integration
@pytest.mark.netns
@pytest.mark.docker
def test_a_provider_reachable_only_through_a_relay_runs_a_job(tmp_path):
    engine = docker_engine("python:3.9-slim")
    folder = tmp_path / "echo"
    shutil.copytree(EXAMPLES / "echo", folder)
    spec = read_task_folder(folder)
    subnet = sandbox_subnet(engine)
    # keys, genesis and config of: 0 relay (+ developer), 1 provider, 2 client
    cluster = Cluster(tmp_path / "c", 3, advert_interval_s=1.0)
    cluster.prepare()
    relay, provider, client = cluster.nodes
    with relay_topology(subnet) as topo, Nodes() as nodes:
        relay_addr_p = f"/ip4/{topo.relay_to_provider}/tcp/{PORT}/p2p/{relay.peer_id}"
        relay_addr_c = f"/ip4/{topo.relay_to_client}/tcp/{PORT}/p2p/{relay.peer_id}"
        with open(relay.data_dir / "config.toml", "a") as f:
            f.write("relay_service = true\n")
        with open(provider.data_dir / "config.toml", "a") as f:
            f.write(f"relays = [{relay_addr_p!r}]\n".replace("'", '"'))
        py = sys.executable
        base = [py, "-m", "meca_node", "start", "--genesis", str(cluster.genesis_path),
                "--advert-interval", "1", "--json-logs"]
        plan = [("relay", relay, topo.relay_ns, "0.0.0.0", "developer", None),
                ("provider", provider, topo.provider_ns, topo.provider_addr, "provider",
                 relay_addr_p),
                ("client", client, topo.client_ns, topo.client_addr, "client", relay_addr_c)]
        for name, node, ns, listen, role, bootstrap in plan:
            argv = base + ["--data-dir", str(node.data_dir), "--listen",
                           f"/ip4/{listen}/tcp/{PORT}", "--role", role]
            if bootstrap:
                argv += ["--bootstrap", bootstrap]
            nodes.start(name, ["ip", "netns", "exec", ns, *argv], tmp_path / f"{name}.log")
        try:
            _run(tmp_path, topo, engine, relay, provider, client, folder, spec)
        except BaseException:
            print(nodes.logs())
            raise
        codes = nodes.stop()
        assert codes == {"relay": 0, "provider": 0, "client": 0}, (codes, nodes.logs())


def _run(tmp_path, topo: Topology, engine, relay, provider, client, folder, spec) -> None:
    t0 = time.monotonic()

    # the provider holds a reservation and says it is reachable only through the relay
    def provider_relayed():
        s = json_in_ns(topo.provider_ns, provider.data_dir, "status")
        return s if s and s["reachability"]["status"] == f"relayed via {relay.peer_id}" \
            else None

    status = wait_for("the provider's reservation on the relay", provider_relayed, 60)
    circuit = [a for a in status["addrs"] if "/p2p-circuit" in a]
    assert circuit == [f"/ip4/{topo.relay_to_provider}/tcp/{PORT}/p2p/{relay.peer_id}"
                       f"/p2p-circuit/p2p/{provider.peer_id}"], status["addrs"]
    reserved_s = time.monotonic() - t0
    text = in_ns(topo.provider_ns, provider.data_dir, "status").stdout
    assert f"reachability: relayed via {relay.peer_id}" in text, text

    # nothing reaches the provider directly: the client has no route, the relay is refused
    assert can_connect(topo.client_ns, topo.provider_addr, PORT).startswith("OSError"), \
        "the client reached the provider directly"
    assert not can_connect(topo.relay_ns, topo.provider_addr, PORT).startswith("connected")
    assert can_connect(topo.client_ns, topo.relay_to_client, PORT) == "connected"

    # the relay (developer) publishes; the client sees the offer and the provider's advert
    r = in_ns(topo.relay_ns, relay.data_dir, "task", "publish", str(folder), "--fee", "1",
              "--no-test", "--quiet")
    assert r.returncode == 0, r.stderr

    def client_sees_both():
        offers = json_in_ns(topo.client_ns, client.data_dir, "offers")
        peers = json_in_ns(topo.client_ns, client.data_dir, "peers")
        return (offers and peers and any(o["name"] == "echo" for o in offers["offers"])
                and any(a["peer_id"] == provider.peer_id for a in peers["adverts"]))

    wait_for("the offer and the provider's advert at the client", client_sees_both, 60)
    peers = json_in_ns(topo.client_ns, client.data_dir, "peers")
    assert provider.peer_id not in peers["connected"], peers["connected"]  # not yet

    # the job: the client reaches the provider through the relay, the provider pulls the
    # image from the developer (the relay node) and runs it in Docker (cold: no image yet)
    engine.images.remove(image_tag(spec, folder_digest(folder)), force=True)
    r = in_ns(topo.client_ns, client.data_dir, "run", "echo", "--input",
              f"@{folder / 'example_input.bin'}", "--max-price", "5", "--json")
    assert r.returncode == 0, r.stderr
    done = json.loads(r.stdout)
    assert done["output"].encode() == spec.example_output
    assert done["provider"] == provider.peer_id
    assert done["pull_seconds"] > 0  # it pulled the image, from the developer
    # over a relayed connection (the only kind there can be: see above), as both say
    peers = json_in_ns(topo.client_ns, client.data_dir, "peers")
    assert provider.peer_id in peers["connected"], peers["connected"]
    assert f"connected to {provider.peer_id} through relay {relay.peer_id}" in \
        (tmp_path / "client.log").read_text()
    assert f"relayed connection from {client.peer_id} via {relay.peer_id}" in \
        (tmp_path / "provider.log").read_text()
    relay_status = json_in_ns(topo.relay_ns, relay.data_dir, "status")
    service = relay_status["reachability"]["relay_service"]
    assert service["circuits_opened"] >= 1 and service["bytes_relayed"] > 0, service
    print(f"reservation after {reserved_s:.1f} s; job through the relay in "
          f"{done['seconds']:.2f} s ({done.get('pull_seconds', 0):.2f} s pulling); relay: "
          f"{service}")

    # the client was dialed back by the relay: public; the provider still relayed
    def client_public():
        s = json_in_ns(topo.client_ns, client.data_dir, "status")
        return s and s["reachability"]["status"] == "public" and s

    s = wait_for("the client's dial-back", client_public, 30)
    assert s["reachability"]["confirmed_by"] == relay.peer_id
    assert provider_relayed()


# -- loopback: every reachability value, the relay's bounds ---------------------------------
def _cfg(host: str, **kw) -> NetConfig:
    return NetConfig(listen=(f"/ip4/{host}/tcp/0",), **kw)


async def _until(what: str, predicate, timeout_s: float = 20.0):
    with trio.fail_after(timeout_s):
        while not (value := predicate()):
            await trio.sleep(0.05)  # real sockets: poll the host's state, bounded
    return value


@pytest.mark.integration
async def test_reachability_values_on_loopback():
    """unknown with no peer; public once a peer dialed us back; private when the dial-back
    fails (we announce a port nobody listens on); relayed via <relay> with a reservation."""
    async with open_net(b"\x51" * 32, _cfg("127.0.0.1", relay_service=True)) as relay:
        assert relay.reachability()["status"] == "unknown"  # nobody to ask yet
        relay_addr = relay.listen_addrs()[0]
        async with open_net(b"\x52" * 32, _cfg("127.0.0.1", bootstrap=(relay_addr,))) as pub:
            await _until("public", lambda: pub.reach.known)
            view = pub.reachability()
            assert view["status"] == "public", view
            assert view["confirmed_by"] == relay.peer_id
            assert view["confirmed_addr"] in pub.listen_addrs()
            # a port nobody listens on: the dial-back fails
            dead = socket.socket()
            dead.bind(("127.0.0.1", 0))
            port = dead.getsockname()[1]
            dead.close()
            hidden = _cfg("127.0.0.1", bootstrap=(relay_addr,),
                          announce=(f"/ip4/127.0.0.1/tcp/{port}",))
            async with open_net(b"\x53" * 32, hidden) as private:
                await _until("private", lambda: private.reach.known)
                view = private.reachability()
                assert view["status"] == "private", view
                assert "failed" not in (view["failed"] or {}).get("peer", "")
                # the same, keeping a reservation on the relay
                behind = _cfg("127.0.0.1", relays=(relay_addr,),
                              announce=(f"/ip4/127.0.0.1/tcp/{port}",))
                async with open_net(b"\x54" * 32, behind) as relayed:
                    await _until("relayed", lambda: relayed.reach.known
                                 and relayed.relay_client.held())
                    view = relayed.reachability()
                    assert view["status"] == f"relayed via {relay.peer_id}", view
                    circuit = [a for a in relayed.listen_addrs() if "/p2p-circuit" in a]
                    assert circuit == [f"{relay_addr}/p2p-circuit/p2p/{relayed.peer_id}"]
                    # the dial-back server is rate-limited per peer
                    answer = await relayed._ask_dialback(relay.peer_id,
                                                         relayed._direct_addrs())
                    assert answer.kind == "refused" and "rate limit" in answer.detail, answer
            served = relay.reachability()["dialbacks_served"]
            assert served.get("ok", 0) >= 1 and served.get("failed", 0) >= 2, served


@pytest.mark.integration
async def test_a_peer_with_no_direct_address_is_reached_through_the_relay_within_bounds():
    """A client dials a peer known only by its circuit address (a learnt advert); the
    relay refuses a peer with no reservation and circuits beyond its per-peer bound, and
    resets a circuit over its byte cap."""
    limits = RelayLimits(max_circuits_per_peer=1, circuit_bytes=64 * 1024)
    async with open_net(b"\x61" * 32, _cfg("127.0.0.1", relay_service=True,
                                           relay_limits=limits, dialback=False)) as relay:
        relay_addr = relay.listen_addrs()[0]
        behind = _cfg("127.0.0.2", relays=(relay_addr,), dialback=False,
                      announce=("/ip4/127.0.0.2/tcp/9",))
        async with open_net(b"\x62" * 32, behind) as provider, \
                open_net(b"\x63" * 32, _cfg("127.0.0.3", dialback=False)) as stranger, \
                open_net(b"\x64" * 32, _cfg("127.0.0.4", dialback=False)) as client:
            got = []

            async def echo(stream):
                while (frame := await stream.receive()) is not None:
                    got.append(len(frame))
                    await stream.send(frame)

            provider.set_stream_handler("/t/echo/1", echo)
            await _until("reservation", lambda: provider.relay_client.held())
            # the client learns the provider's addresses as a node does from its advert,
            # and is not connected to the relay: it dials the relay the address names
            client.learn_addrs(provider.peer_id, provider.listen_addrs())
            stream = await client.open_stream(provider.peer_id, "/t/echo/1")
            await stream.send(b"x" * 1000)
            assert await stream.receive() == b"x" * 1000
            conns = client._host.get_network().get_connections(ID.from_base58(provider.peer_id))
            assert conns and client._relayed_only(conns[0].muxed_conn.peer_id)
            # both ends know the connection is relayed (no dial-backs asked or served on it)
            assert provider._relayed_only(ID.from_base58(client.peer_id))
            assert client.peer_id not in provider._dialback_peers()
            # no reservation: refused with the relay's reason
            stranger.learn_addrs(client.peer_id,
                                 [f"{relay_addr}/p2p-circuit/p2p/{client.peer_id}"])
            with pytest.raises(ConnectionError, match="no reservation"):
                await stranger.open_stream(client.peer_id, "/t/echo/1")
            # one circuit per peer: a second client is refused while the first holds one
            stranger.learn_addrs(provider.peer_id, provider.listen_addrs())
            with pytest.raises(ConnectionError, match="resource limit exceeded"):
                await stranger.open_stream(provider.peer_id, "/t/echo/1")
            # over 64 KiB through the circuit: the relay resets it
            with pytest.raises(Exception):
                with trio.fail_after(10):
                    for _ in range(40):
                        await stream.send(b"y" * 4000)
                        assert await stream.receive() == b"y" * 4000
            await _until("circuit closed", lambda: relay.relay_service.circuits == 0)
            view = relay.reachability()["relay_service"]
            assert view["circuits_refused"] == 2 and view["circuits_opened"] == 1, view
            assert 1000 < view["bytes_relayed"] <= 64 * 1024, view


@pytest.mark.integration
async def test_a_reservation_is_renewed_before_it_expires_and_made_again_after_a_drop():
    limits = RelayLimits(reservation_ttl_s=3.0)
    async with open_net(b"\x71" * 32, _cfg("127.0.0.1", relay_service=True,
                                           relay_limits=limits, dialback=False)) as relay:
        relay_addr = relay.listen_addrs()[0]
        async with open_net(b"\x72" * 32, _cfg("127.0.0.2", relays=(relay_addr,),
                                               dialback=False)) as provider:
            client = provider.relay_client
            await _until("reserved", lambda: client.held())
            # renewed at half its lifetime, so it never lapses: two renewals in ~3 s
            await _until("renewed twice", lambda: client.stats["renewed"] >= 2, 10)
            assert client.held() and client.stats["reserved"] == 1
            assert client.view()[0]["expires_in_s"] > 0
            assert relay.relay_service.stats["reservations_granted"] >= 3
            # the relay drops the connection: the reservation is gone with it (the relay
            # could not reach us any more) and made again once the dial loop reconnects
            await relay._host.disconnect(ID.from_base58(provider.peer_id))
            await _until("reserved again", lambda: client.stats["reserved"] == 2, 15)
            assert client.held()
            assert relay.reachability()["relay_service"]["reservations"] == 1
            assert [a for a in provider.listen_addrs() if "/p2p-circuit" in a] == \
                [f"{relay_addr}/p2p-circuit/p2p/{provider.peer_id}"]


@pytest.mark.integration
def test_status_prints_reachability_and_a_missing_reservation(tmp_path):
    """``meca-node status`` of a real node: unknown with no peer, and says which relay it
    holds no reservation on and why (here: nobody listens there)."""
    from conftest import run_cli

    dead = socket.socket()
    dead.bind(("127.0.0.1", 0))
    port = dead.getsockname()[1]
    dead.close()
    relay = f"/ip4/127.0.0.1/tcp/{port}/p2p/12D3KooWK99VoVxNE7XzyBwXEzW7xhK7Gpv85r9F3V3fyKSUKPH5"
    cluster = Cluster(tmp_path / "c", 1, advert_interval_s=1.0, roles=("client",))
    cluster.prepare()
    with open(cluster.nodes[0].data_dir / "config.toml", "a") as f:
        f.write(f'relays = ["{relay}"]\n')
    with cluster:
        node = cluster.nodes[0]
        # the dial loop has tried the relay once
        view = wait_for("a failed dial", lambda: (v := node.status()["reachability"])
                        ["reservations"][0]["last_error"] != "not connected" and v, 15)
        assert view["status"] == "unknown" and view["relays"] == [], view
        assert view["reservations"][0]["relay"] == relay.rsplit("/", 1)[1]
        r = run_cli("status", "--data-dir", str(node.data_dir))
        assert r.returncode == 0, r.stderr
        assert "reachability: unknown" in r.stdout
        assert f"no reservation on relay {relay.rsplit('/', 1)[1]}: not connected (" \
            in r.stdout, r.stdout


@pytest.mark.integration
async def test_our_relay_client_works_with_py_libp2ps_own_hop():
    """Message-level interop: a reservation on, and a circuit through, py-libp2p's
    ``CircuitV2Protocol`` hop (an implementation of the spec that is not ours)."""
    import multiaddr
    from libp2p import new_host
    from libp2p.crypto.ed25519 import create_new_key_pair
    from libp2p.network.config import ConnectionConfig
    from libp2p.relay.circuit_v2.protocol import CircuitV2Protocol
    from libp2p.tools.anyio_service import background_trio_service

    host = new_host(key_pair=create_new_key_pair(b"\x81" * 32),
                    connection_config=ConnectionConfig(max_connections_per_peer=1))
    async with host.run([multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")]):
        hop = CircuitV2Protocol(host, allow_hop=True)
        async with background_trio_service(hop):
            await hop.event_started.wait()
            relay_addr = str(host.get_addrs()[0])
            behind = _cfg("127.0.0.2", relays=(relay_addr,), dialback=False,
                          announce=("/ip4/127.0.0.2/tcp/9",))  # nothing listens there
            async with open_net(b"\x82" * 32, behind) as provider, \
                    open_net(b"\x83" * 32, _cfg("127.0.0.3", dialback=False)) as client:
                async def echo(stream):
                    while (frame := await stream.receive()) is not None:
                        await stream.send(frame[::-1])

                provider.set_stream_handler("/t/echo/1", echo)
                await _until("reserved", lambda: provider.relay_client.held())
                assert provider.reachability()["reservations"][0]["expires_in_s"] > 3000
                client.learn_addrs(provider.peer_id, provider.listen_addrs())
                with trio.fail_after(20):
                    stream = await client.open_stream(provider.peer_id, "/t/echo/1")
                    await stream.send(b"through their relay")
                    assert await stream.receive() == b"yaler rieht hguorht"
                assert client._relayed_only(ID.from_base58(provider.peer_id))
