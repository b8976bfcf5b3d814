"""Settlement across 5 real node processes (1 developer, 2 providers at different prices,
2 clients) and the real Docker engine: 50 paid jobs after which every node agrees on every
balance; a provider killed with SIGKILL right after a receipt keeps it; a client that signs
two entries at one seq of its chain is refused by every node within 10 s."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import pytest

from conftest import docker_engine, wait_for
from test_run_job import EXAMPLES, cli, wait_offer
from meca_node.control import ControlError
from meca_node.sim import Cluster
from meca_node.sim.cluster import child_env
from meca_node.store.taskdir import read_task_folder

pytestmark = [pytest.mark.integration, pytest.mark.docker]

HERE = Path(__file__).resolve().parent
ROLES = [("developer",), ("provider",), ("provider",), ("client",), ("client",)]
GENESIS_EACH = 1_000_000  # Cluster gives every node this much in its genesis
FEE = 1
PRICES = (1, 2)  # provider A, provider B
JOBS_PER_CLIENT = 25


# -- set-up ------------------------------------------------------------------------------
def echo_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "echo"
    shutil.copytree(EXAMPLES / "echo", folder)
    return folder


def taking_jobs(client_node, provider_node) -> bool:
    """Whether ``client_node`` is connected to ``provider_node`` and holds an advert of it
    with the docker-cpu environment (the provider takes jobs)."""
    peers = client_node.peers()
    ad = next((a for a in peers["adverts"] if a["peer_id"] == provider_node.peer_id), None)
    return (provider_node.peer_id in peers["connected"] and ad is not None
            and any(e["name"] == "docker-cpu" for e in ad["environments"]))


@contextmanager
def settlement_net(tmp_path: Path, folder: Path, roles=ROLES, fee: int = FEE,
                   prices: tuple[int, ...] = PRICES):
    """A process per role (node 0, the genesis founder, is the developer; the providers
    charge ``prices`` in order); the developer has published ``folder`` with ``fee``, every
    client sees the offer and can reach every provider."""
    cluster = Cluster(tmp_path / "c", len(roles), advert_interval_s=1.0, roles=list(roles))
    cluster.prepare()
    providers = [n for n, r in zip(cluster.nodes, roles) if r == ("provider",)]
    clients = [n for n, r in zip(cluster.nodes, roles) if r == ("client",)]
    for node, price in zip(providers, prices):
        with open(node.data_dir / "config.toml", "a") as f:
            f.write(f"price = {price}\n")
    with cluster:
        cluster.wait_mesh(timeout_s=20)
        dev = cluster.nodes[0]
        r = cli(dev, "task", "publish", str(folder), "--fee", str(fee), "--no-test", "--quiet")
        assert r.returncode == 0, r.stderr.decode()
        for user in clients:
            wait_offer(user, "echo")
            for p in providers:
                wait_for(f"node{user.index} to see provider node{p.index} taking jobs",
                         lambda: taking_jobs(user, p), 30)
        yield cluster


def keys_of(cluster) -> list[str]:
    return [n.status()["public_key"] for n in cluster.nodes]


def views(cluster) -> list[dict]:
    return [n.client().get("/v1/wallet/balances") for n in cluster.nodes]


def diagnostics(cluster) -> str:
    """Each node's ledger and gossip counters (what a failed agreement is explained by)."""
    out = []
    for n in cluster.nodes:
        try:
            s = n.status()
            out.append(f"node{n.index}: ledger {json.dumps(s['ledger'])}; gossip dropped "
                       f"{json.dumps(s['gossip']['dropped'])}, accepted "
                       f"{json.dumps(s['gossip']['accepted'])}")
        except ControlError as exc:
            out.append(f"node{n.index}: {exc}")
    return "\n".join(out)


def wait_agreement(cluster, want: dict[str, int], timeout_s: float,
                   context: str = "") -> list[dict]:
    """Every node's wallet view once each shows ``want`` (pubkey hex -> balance), nothing
    outstanding or pending; on timeout, fail with every view, every node's counters and
    ``context``."""
    deadline = time.monotonic() + timeout_s
    while True:
        vs = views(cluster)
        if all(v["outstanding"] == 0 and v["pending"] == 0
               and all(v["balances"].get(k) == b for k, b in want.items()) for v in vs):
            return vs
        if time.monotonic() > deadline:
            lines = []
            for n, v in zip(cluster.nodes, vs):
                wrong = {k[:12]: f"{v['balances'].get(k)} (want {b})" for k, b in want.items()
                         if v["balances"].get(k) != b}
                lines.append(f"node{n.index}: outstanding {v['outstanding']}, pending "
                             f"{v['pending']}, forked {v['forked']}, wrong {wrong}")
            pytest.fail(f"the nodes do not agree after {timeout_s} s:\n" + "\n".join(lines)
                        + "\n" + diagnostics(cluster) + (f"\n{context}" if context else ""))
        time.sleep(0.2)


def run_job(user, provider_peer_id: str, input_file: Path, max_price: int) -> dict:
    """``meca-node run echo --provider ... --json`` on ``user``; its result."""
    r = cli(user, "run", "echo", "--input", f"@{input_file}", "--max-price", str(max_price),
            "--provider", provider_peer_id, "--json", timeout=120)
    assert r.returncode == 0, r.stderr.decode()
    return json.loads(r.stdout)


def run_job_api(user, provider_peer_id: str, data: bytes, max_price: int) -> dict:
    """A job through the client node's control API, as ``meca-node run`` sends it; its
    result the moment the node has the checked output (no CLI start-up in between)."""
    client = user.client()
    client.timeout_s = 10.0
    body = {"task": "echo", "input_b64": base64.b64encode(data).decode(),
            "max_price": max_price, "timeout_s": 60, "provider": provider_peer_id}
    with client.stream("POST", "/v1/jobs/run", body) as response:
        for line in response.iter_lines():  # ends with the node's answer (its job timeout)
            doc = json.loads(line) if line.strip() else {}
            assert "error" not in doc, doc["error"]
            if "done" in doc:
                return doc["done"]
    pytest.fail("the node ended the job's answer without a result")


def base64_output(done: dict) -> bytes:
    return base64.b64decode(done["output_b64"])


# -- 1. fifty paid jobs --------------------------------------------------------------------
def test_five_nodes_fifty_paid_jobs_every_node_agrees(tmp_path):
    docker_engine("python:3.9-slim")
    folder = echo_folder(tmp_path)
    spec = read_task_folder(folder)
    t0 = time.monotonic()
    with settlement_net(tmp_path, folder) as cluster:
        dev, pa, pb, c1, c2 = cluster.nodes
        keys = keys_of(cluster)
        supply = views(cluster)[0]["total_supply"]
        assert supply == 5 * GENESIS_EACH
        price = {pa.peer_id: PRICES[0], pb.peer_id: PRICES[1]}
        # each client alternates between the two providers, c2 starting with the other one
        plans = {3: [(pa, pb)[i % 2] for i in range(JOBS_PER_CLIENT)],
                 4: [(pb, pa)[i % 2] for i in range(JOBS_PER_CLIENT)]}
        t_setup = time.monotonic()

        def run_plan(i):
            return [run_job_api(cluster.nodes[i], p.peer_id, spec.example_input,
                                max(PRICES) + FEE) for p in plans[i]]

        # the two clients at once, each its jobs in sequence, through the client node's
        # control API as `meca-node run` sends them (50 CLI start-ups: ~20-30 s more here)
        with ThreadPoolExecutor(2) as pool:
            results = dict(zip(plans, pool.map(run_plan, plans)))
        t_jobs = time.monotonic()
        for i, done in results.items():
            for p, d in zip(plans[i], done):
                assert base64_output(d) == spec.example_output
                assert d["provider"] == p.peer_id
                assert d["paid"] == price[p.peer_id] + FEE and d["price"] == price[p.peer_id]

        jobs_on = [sum(1 for plan in plans.values() for p in plan if p is q) for q in (pa, pb)]
        assert jobs_on == [25, 25]
        want = {
            keys[0]: GENESIS_EACH + 2 * JOBS_PER_CLIENT * FEE,
            keys[1]: GENESIS_EACH + jobs_on[0] * PRICES[0],
            keys[2]: GENESIS_EACH + jobs_on[1] * PRICES[1],
            keys[3]: GENESIS_EACH - sum(price[p.peer_id] + FEE for p in plans[3]),
            keys[4]: GENESIS_EACH - sum(price[p.peer_id] + FEE for p in plans[4]),
        }
        vs = wait_agreement(cluster, want, timeout_s=20)
        t_agree = time.monotonic()
        for v in vs:
            assert v["balances"] == vs[0]["balances"]  # not just the five: every account
            assert sum(v["balances"].values()) + v["outstanding"] == supply
            assert v["forked"] == []
        for node in cluster.nodes:
            r = cli(node, "wallet", "verify")
            assert r.returncode == 0 and r.stdout.decode().strip().endswith("ok"), \
                (node.index, r.stdout.decode(), r.stderr.decode())
        # every client's chain holds its 25 receipts, and every node has all of them
        for k in keys[3:]:
            for node in cluster.nodes:
                h = node.client().get("/v1/wallet/history", key=k)
                assert [e["kind"] for e in h["entries"]] == ["Receipt"] * JOBS_PER_CLIENT
        print(f"\nset-up {t_setup - t0:.1f} s, 50 paid jobs {t_jobs - t_setup:.1f} s, "
              f"agreement {t_agree - t_jobs:.1f} s after the last job")
        print(diagnostics(cluster))


# -- 2. a provider killed right after a receipt -----------------------------------------------
def stored_rows(data_dir: Path, tmp: Path) -> list:
    """The rows of a stopped node's ledger database, read from a copy (the node's own
    files are left exactly as the kill left them)."""
    from meca_node.store.ledger_db import FILE, LedgerDB

    tmp.mkdir()
    for f in data_dir.glob(FILE + "*"):  # the database and its WAL
        shutil.copy2(f, tmp / f.name)
    with LedgerDB(tmp) as db:
        return db.rows()


def test_a_provider_killed_right_after_a_receipt_keeps_it_after_restart(tmp_path):
    docker_engine("python:3.9-slim")
    folder = echo_folder(tmp_path)
    spec = read_task_folder(folder)
    price = PRICES[1]
    roles = [("developer",), ("provider",), ("client",)]
    with settlement_net(tmp_path, folder, roles=roles, prices=(price,)) as cluster:
        dev, provider, user = cluster.nodes
        keys = keys_of(cluster)
        done = run_job_api(user, provider.peer_id, spec.example_input, price + FEE)
        cluster.kill(provider)  # SIGKILL the moment the client holds the output
        assert done["provider"] == provider.peer_id and done["paid"] == price + FEE
        assert base64_output(done) == spec.example_output

        # the client's receipt, as the client signed it
        mine = user.client().get("/v1/wallet/history")["entries"]
        assert [e["kind"] for e in mine] == ["Receipt"]
        receipt = mine[0]
        assert (receipt["provider"], receipt["price"], receipt["fee"]) == (keys[1], price, FEE)

        # on the provider's disk as the kill left it: the receipt was stored (durably)
        # before the output was released
        rows = stored_rows(provider.data_dir, tmp_path / "copy")
        receipt_rows = [r for r in rows if r.account.hex() == keys[2]]
        assert [(r.kind, r.seq, r.sha256.hex()) for r in receipt_rows] == \
            [("Receipt", 0, receipt["hash"])]
        received_before_kill = any(r.kind == "Receive" and r.account.hex() == keys[1]
                                   for r in rows)
        when = ("the provider's Receive was stored before the kill" if received_before_kill
                else "the provider's Receive was not on its disk at the kill")

        cluster.restart(provider)
        # after the restart the provider's ledger holds the client's receipt...
        r = cli(provider, "wallet", "history", user.peer_id, "--json")
        assert r.returncode == 0, r.stderr.decode()
        theirs = json.loads(r.stdout)["entries"]
        assert theirs == mine, (theirs, mine)
        # ...and the provider's own chain receives its price for it (signed before the kill
        # or, if the kill came first, by itself after the restart)
        own = wait_for("the provider's Receive of the payment", lambda: [
            e for e in provider.client().get("/v1/wallet/history")["entries"]
            if e["kind"] == "Receive" and e["source"] == receipt["hash"]], 15)
        assert len(own) == 1 and own[0]["amount"] == price and own[0]["payer"] == keys[2]

        vs = wait_agreement(cluster, {keys[0]: GENESIS_EACH + FEE,
                                      keys[1]: GENESIS_EACH + price,
                                      keys[2]: GENESIS_EACH - price - FEE}, timeout_s=20,
                            context=when)
        for v in vs:
            assert sum(v["balances"].values()) + v["outstanding"] == v["total_supply"]
        for node in cluster.nodes:
            r = cli(node, "wallet", "verify")
            assert r.returncode == 0 and r.stdout.decode().strip().endswith("ok"), \
                (node.index, r.stdout.decode())

        # the restarted provider takes the client's next receipt (seq 1 follows seq 0 there)
        again = run_job_api(user, provider.peer_id, spec.example_input, price + FEE)
        assert base64_output(again) == spec.example_output
        wait_agreement(cluster, {keys[0]: GENESIS_EACH + 2 * FEE,
                                 keys[1]: GENESIS_EACH + 2 * price,
                                 keys[2]: GENESIS_EACH - 2 * (price + FEE)}, timeout_s=20)
        print(f"\n{when}")


# -- 3. a double-spending client -------------------------------------------------------------
def helper_log(proc, tmp_path: Path) -> str:
    proc.wait(timeout=60)  # bounded: the helper's own waits are
    return (tmp_path / "double_spender.log").read_text(errors="replace")[-4000:]


@pytest.mark.parametrize("gossip", [True, False], ids=["gossiped", "not-gossiped"])
def test_a_double_spending_client_is_caught_by_every_node_within_10s(tmp_path, gossip):
    """Client c2's key signs two Receipts at one seq of its chain, each for a real paid job
    on a different provider, and hands them over at the same moment (double_spender.py,
    its own process with its own libp2p hosts, one per provider). ``gossiped``: it also
    gossips each receipt to the provider it pays, as an honest client gossips its receipts;
    ``not-gossiped``: it gossips nothing, so only the providers, which re-gossip the receipts
    they take, can tell the network."""
    docker_engine("python:3.9-slim")
    folder = echo_folder(tmp_path)
    spec = read_task_folder(folder)
    with settlement_net(tmp_path, folder) as cluster:
        dev, pa, pb, c1, c2 = cluster.nodes
        keys = keys_of(cluster)
        supply = views(cluster)[0]["total_supply"]
        # an honest paid job first, so the cheat forks seq 1 (prev: a real hash)
        run_job(c2, pa.peer_id, folder / "example_input.bin", max(PRICES) + FEE)
        wait_agreement(cluster, {keys[4]: GENESIS_EACH - PRICES[0] - FEE}, timeout_s=15)
        head = c2.client().get("/v1/wallet/history")["entries"]
        seq, prev = len(head), head[-1]["hash"]
        offer = next(o for o in json.loads(cli(c2, "offers", "--json").stdout)["offers"]
                     if o["name"] == "echo")

        report = tmp_path / "double_spender.json"
        log = (tmp_path / "double_spender.log").open("wb")
        proc = subprocess.Popen(
            [sys.executable, str(HERE / "double_spender.py"), "--genesis",
             str(cluster.genesis_path), "--key-dir", str(c2.data_dir), "--seq", str(seq),
             "--prev", prev, "--offer-id", offer["offer_id"], "--developer", keys[0],
             "--fee", str(FEE), "--max-price", str(max(PRICES) + FEE),
             "--input", str(folder / "example_input.bin"),
             "--target", pa.addr, "--target", pb.addr, "--report", str(report),
             *([] if gossip else ["--no-gossip"])],
            stdout=subprocess.PIPE, stderr=log, env=child_env())
        try:
            sent = None
            for line in proc.stdout:  # ends with the helper, whose every wait is bounded
                if line.startswith(b'{"sent"'):
                    sent = json.loads(line)["sent"]
                    break
            assert sent is not None, helper_log(proc, tmp_path)
            # every node refuses the account within 10 s of the two receipts going out
            caught: dict[int, float] = {}
            while len(caught) < len(cluster.nodes):
                for n in cluster.nodes:
                    if n.index not in caught and \
                            keys[4] in n.client().get("/v1/wallet/balances")["forked"]:
                        caught[n.index] = time.time() - sent
                if len(caught) < len(cluster.nodes):
                    assert time.time() < sent + 10, \
                        f"after 10 s only nodes {sorted(caught)} refuse the account\n" \
                        + diagnostics(cluster)
                    time.sleep(0.05)
            proc.communicate(timeout=60)
            assert proc.returncode == 0, helper_log(proc, tmp_path)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
            log.close()
        cheat = json.loads(report.read_text())
        times = ", ".join(f"node{i} {t:.2f} s" for i, t in sorted(caught.items()))
        print(f"\nthe account refused by {times} after the receipts went out\n"
              f"the two jobs: {json.dumps(cheat['sides'])}")
        assert all(s["receipt_sha256"] for s in cheat["sides"]), cheat  # both were signed
        assert len({s["receipt_sha256"] for s in cheat["sides"]}) == 2
        for side in cheat["sides"]:  # a provider that took its receipt released the output
            assert side.get("output", spec.example_output.decode()) == \
                spec.example_output.decode(), side

        for n in cluster.nodes:
            b = n.client().get("/v1/wallet/balance", key=c2.peer_id)
            assert b["refused"] is True, (n.index, b)
            v = n.client().get("/v1/wallet/balances")
            assert sum(v["balances"].values()) + v["outstanding"] == supply, (n.index, v)
            # the fork is on disk: a recomputation from the stored rows finds it too
            r = cli(n, "wallet", "verify", "--json")
            assert r.returncode == 1, r.stdout.decode()
            verified = json.loads(r.stdout)
            assert [f["peer_id"] for f in verified["forks"]] == [c2.peer_id], verified
            assert verified["conserved"] and verified["differs_from_live"] == {}, verified
        # the refused account can neither pay nor be paid, nor run a job
        r = cli(c2, "wallet", "send", c1.peer_id, "5")
        assert r.returncode == 1 and b"forked" in r.stderr, r.stderr.decode()
        r = cli(dev, "wallet", "send", c2.peer_id, "5")
        assert r.returncode == 1 and b"forked" in r.stderr, r.stderr.decode()
        for p in (pa, pb):
            r = cli(c2, "run", "echo", "--input", "{}", "--max-price", str(max(PRICES) + FEE),
                    "--provider", p.peer_id)
            assert r.returncode == 1 and b"refused" in r.stderr, r.stderr.decode()
