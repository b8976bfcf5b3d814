"""``meca-node demo``: the mission on one machine. Real node processes find each other and
trade signed adverts; a file crosses the network over IPFS (Bitswap), checked by hash; the
developer publishes the guide's echo task, a client runs it on a provider and gets
example_output.bin back byte for byte."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from meca_node.control import ControlError
from meca_node.sim.cluster import Cluster, ClusterError, ClusterNode

DEMO_FILE_BYTES = 8 * 1024 * 1024


def _job(node: ClusterNode, path: str, body: dict) -> dict:
    """Run a long control-API operation on ``node`` to its end; its result."""
    with node.client().stream("POST", path, body) as response:
        for line in response.iter_lines():
            doc = json.loads(line) if line.strip() else {}
            if "error" in doc:
                raise ControlError(doc["error"])
            if "done" in doc:
                return doc["done"]
    raise ControlError(f"{path}: the node ended the answer without a result")


def _ipfs_step(cluster: Cluster, root: Path, console: Console) -> None:
    first, last = cluster.nodes[0], cluster.nodes[-1]
    data = os.urandom(DEMO_FILE_BYTES)
    (root / "demo.bin").write_bytes(data)
    added = _job(first, "/v1/ipfs/add", {"path": str((root / "demo.bin").resolve())})
    console.print(f"node{first.index} added {len(data) >> 20} MiB as {added['cid']}",
                  highlight=False)
    got = _job(last, "/v1/ipfs/get", {"cid": added["cid"],
                                      "out": str((root / "fetched.bin").resolve())})
    same = hashlib.sha256((root / "fetched.bin").read_bytes()).digest() == \
        hashlib.sha256(data).digest()
    rate = got["fetched_bytes"] / 1e6 / max(got["seconds"], 1e-9)
    console.print(f"node{last.index} fetched it over Bitswap in {got['seconds']:.2f} s "
                  f"({rate:.0f} MB/s, {got['fetched_blocks']} blocks, each checked against "
                  f"its CID); same bytes: {'yes' if same else 'NO'}", highlight=False)
    if not same:
        raise ClusterError("the fetched file differs from the one added")


ECHO = Path(__file__).resolve().parents[2] / "examples" / "echo"


def _cli(node: ClusterNode, *args: str, timeout: float = 300):
    import subprocess
    import sys

    from meca_node.sim.cluster import child_env

    return subprocess.run([sys.executable, "-m", "meca_node", *args, "--data-dir",
                           str(node.data_dir)], capture_output=True, timeout=timeout,
                          env=child_env())


def _job_step(cluster: Cluster, console: Console) -> bool:
    """The developer (first node) publishes the echo task; the client (last node) runs it.
    False (with the reason) when there is no Docker engine to run tasks."""
    from meca_node.runtime.executor import EngineUnavailable, connect

    try:
        connect()
    except EngineUnavailable as exc:
        console.print(f"[yellow]skipping the task run[/]: {exc}")
        return False
    dev, user = cluster.nodes[0], cluster.nodes[-1]
    t0 = time.monotonic()
    r = _cli(dev, "task", "publish", str(ECHO), "--fee", "1", "--quiet")
    if r.returncode != 0:
        raise ClusterError(f"task publish failed: {r.stderr.decode(errors='replace')[-800:]}")
    offer_id = r.stdout.decode().split("offer id ")[1].split()[0]
    console.print(f"node{dev.index} (developer) tested and published the echo task in "
                  f"{time.monotonic() - t0:.1f} s: offer {offer_id[:16]}", highlight=False)
    deadline = time.monotonic() + 30
    while offer_id not in _cli(user, "offers", "--json").stdout.decode():
        if time.monotonic() > deadline:  # bounded wait for the gossip to arrive
            raise ClusterError("the client never saw the offer")
        time.sleep(0.2)
    t1 = time.monotonic()
    r = _cli(user, "run", offer_id, "--input", f"@{ECHO / 'example_input.bin'}",
             "--max-price", "5")
    if r.returncode != 0:
        raise ClusterError(f"run failed: {r.stderr.decode(errors='replace')[-800:]}")
    expected = (ECHO / "example_output.bin").read_bytes()
    ran_on = r.stderr.decode().split("ran on ")[-1].split()[0]
    who = next((f"node{n.index}" for n in cluster.nodes if n.peer_id == ran_on), ran_on)
    console.print(f"node{user.index} (client) ran it on {who} (provider) in "
                  f"{time.monotonic() - t1:.1f} s: got {r.stdout!r}; equals "
                  f"example_output.bin: {'yes' if r.stdout == expected else 'NO'}",
                  highlight=False)
    if r.stdout != expected:
        raise ClusterError("the task's output differs from example_output.bin")
    r = _cli(user, "run", offer_id, "--input", f"@{ECHO / 'example_input.bin'}",
             "--max-price", "5", "--provider", ran_on, "--json")
    again = json.loads(r.stdout) if r.returncode == 0 else {}
    if again.get("output", "").encode() != expected:
        raise ClusterError(f"the second run failed: {r.stderr.decode(errors='replace')[-800:]}")
    console.print(f"node{user.index} ran it again on {who}: {again['seconds'] * 1000:.1f} ms "
                  "from request to checked answer (warm container, reused stream)",
                  highlight=False)
    return True


def _balances_step(cluster: Cluster, roles, before: dict, console: Console) -> None:
    """Every balance before and after the paid runs, once every node agrees on them."""
    deadline = time.monotonic() + 20
    while True:  # bounded wait for the receipts and receives to reach every node
        views = [n.client().get("/v1/wallet/balances") for n in cluster.nodes]
        if all(v["outstanding"] == 0 and v["balances"] == views[0]["balances"]
               for v in views):
            break
        if time.monotonic() > deadline:
            raise ClusterError("the nodes did not agree on the balances within 20 s")
        time.sleep(0.2)
    after = views[0]["balances"]
    table = Table("node", "role", "balance before", "after", "change")
    for node, node_roles in zip(cluster.nodes, roles):
        key = node.status()["public_key"]
        b, a = before["balances"].get(key, 0), after.get(key, 0)
        table.add_row(f"node{node.index}", ",".join(node_roles), str(b), str(a), f"{a - b:+d}")
    console.print(table)
    total_b, total_a = sum(before["balances"].values()), sum(after.values())
    console.print(f"every node reports these balances; total {total_b} before, {total_a} "
                  f"after: {'unchanged' if total_a == total_b else 'CHANGED'}", highlight=False)
    if total_a != total_b:
        raise ClusterError("the total of all balances changed")


def run_demo(n: int, timeout_s: float, keep: Path | None, console: Console) -> int:
    """Returns the process exit code: 0 when every node saw every other and stopped cleanly."""
    with tempfile.TemporaryDirectory(prefix="meca-demo-") as tmp:
        root = keep or Path(tmp)
        roles = [("developer",)] + [("provider",)] * max(0, n - 2) + [("client",)]
        cluster = Cluster(root, n, advert_interval_s=2.0, network_name="meca-demo",
                          roles=roles)
        console.print(f"[bold]meca-node demo[/]: {n} nodes on 127.0.0.x (1 developer, "
                      f"{n - 2} provider(s), 1 client), data in {root}")
        t0 = time.monotonic()
        try:
            cluster.prepare()
            for node, node_roles in zip(cluster.nodes, roles):
                if "provider" in node_roles:  # providers charge 1 per job
                    with open(node.data_dir / "config.toml", "a") as f:
                        f.write("price = 1\n")
            for node in cluster.nodes:
                console.print(f"  node{node.index}  {node.addr}", highlight=False)
            cluster.start()
            console.print(f"all {n} nodes up in {time.monotonic() - t0:.1f} s; waiting for "
                          "signed adverts to cross the mesh")
            times = cluster.wait_mesh(timeout_s)
            table = Table("node", "peer id", "peers connected", "adverts verified",
                          "saw all others after", "gossip dropped")
            for node in cluster.nodes:
                s = node.status()
                table.add_row(f"node{node.index}", node.peer_id[-12:],
                              str(s["peers_connected"]), str(s["adverts_known"]),
                              f"{times[node.index]:.1f} s",
                              str(sum(s["gossip"]["dropped"].values())))
            console.print(table)
            _ipfs_step(cluster, root, console)
            before = cluster.nodes[0].client().get("/v1/wallet/balances")
            ran = _job_step(cluster, console)
            if ran:
                _balances_step(cluster, roles, before, console)
        except (ClusterError, ControlError) as exc:
            console.print(f"[bold red]demo failed:[/] {exc}")
            cluster.stop()
            return 1
        codes = cluster.stop()
        bad = {i: c for i, c in codes.items() if c != 0}
        if bad:
            console.print(f"[bold red]nodes did not stop cleanly[/]: exit codes {bad}; logs in "
                          f"{root}")
            return 1
        job = ", a published task ran for a client" if ran else ""
        console.print(f"every node saw the other {n - 1} nodes' signed adverts, a file crossed "
                      f"the network intact{job}; all {n} stopped with exit 0 (total "
                      f"{time.monotonic() - t0:.1f} s)")
        return 0
