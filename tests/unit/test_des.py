"""The deterministic simulator (``meca_node.sim.des``): reproducible, money conserved, and
each bad actor and fault does what the real system does to it. Small scenarios (tens of
nodes, a few hundred jobs): the whole file runs in seconds."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import pytest

from meca_node.node import jobs as node_jobs
from meca_node.node import ledger as node_ledger
from meca_node.sim import des
from meca_node.sim.des import Simulator, digest
from meca_node.sim.des_net import mix64, mix64_from
from meca_node.sim.report import summary
from meca_node.sim.scenario import load_scenario, parse_scenario

BASE = """
name = "{name}"
seed = 3
duration_s = {duration}

[network]
latency_ms = 5.0
jitter_ms = 1.0
loss = 0.0
gossip_degree = 6

[[nodes]]
group = "dev"
role = "developer"
count = 1

[[nodes]]
group = "honest"
role = "provider"
count = {honest}
cpu = 2.0
mem_mib = 2048
price = 1

{extra_nodes}

[[nodes]]
group = "clients"
role = "client"
count = 6

[[tasks]]
name = "echo"
folder = "examples/echo"
fee = 1
cpu = 0.5
mem_mib = 128
run_ms = {run_ms}

[load]
rate_per_s = {rate}
jobs = {jobs}
replicas = {replicas}
max_price = 10
timeout_s = 30.0

{faults}
"""

MIXED_NODES = """
[[nodes]]
group = "liar"
role = "provider"
count = 1
price = 1
behaviour = "liar"

[[nodes]]
group = "cheat"
role = "client"
count = 1
behaviour = "double_spender"

[[nodes]]
group = "sybil"
role = "provider"
count = 2
behaviour = "sybil"
"""

FLOOD = """
[[faults]]
at_s = 10.0
kind = "flood"
target = "sybil"
duration_s = 4.0
rate_per_s = 60.0
"""


def scenario(name: str, *, honest: int = 6, extra_nodes: str = "", run_ms: float = 50.0,
             rate: float = 5.0, jobs: int = 150, replicas: int = 1, faults: str = "",
             duration: float = 40.0):
    return parse_scenario(BASE.format(name=name, honest=honest, extra_nodes=extra_nodes,
                                      run_ms=run_ms, rate=rate, jobs=jobs, replicas=replicas,
                                      faults=faults, duration=duration), f"{name}.toml")


@functools.lru_cache(maxsize=None)
def mixed(seed: int = 3, verify: str = "inline") -> Simulator:
    """A liar outvoted by replicas, a double spender, a Sybil flood."""
    sim = Simulator(scenario("mixed", extra_nodes=MIXED_NODES, replicas=3, faults=FLOOD),
                    seed, verify=verify)
    sim.result = sim.run()
    return sim


def plain(record) -> str:
    doc = record.to_json()
    for k in des.MEASURED:
        doc["meta"].pop(k)
    return json.dumps(doc, sort_keys=True)


def test_the_node_figures_are_the_nodes():
    assert des.MAX_ATTEMPTS == node_jobs.MAX_ATTEMPTS
    assert des.QUEUE_MAX == node_jobs.QUEUE_MAX
    assert des.RETRY_REASONS == node_jobs.RETRY_REASONS
    assert des.OUTCOME_OF == node_jobs.OUTCOME_OF
    assert des.RECEIVE_AFTER_US == node_ledger.RECEIVE_AFTER_S * 1_000_000
    assert des.REGOSSIP_AFTER_US == node_ledger.REGOSSIP_AFTER_S * 1_000_000


def test_same_seed_same_record_other_seed_another():
    first = mixed().result.record
    again = Simulator(scenario("mixed", extra_nodes=MIXED_NODES, replicas=3, faults=FLOOD),
                      3).run().record
    assert plain(first) == plain(again)
    assert first.meta["digest"] == again.meta["digest"] == digest(again)
    other = mixed(4).result.record
    assert other.meta["digest"] != first.meta["digest"]
    assert plain(other) != plain(first)


def test_verifying_in_a_second_process_changes_nothing():
    inline, worker = mixed().result.record, mixed(verify="worker").result.record
    assert worker.meta["digest"] == inline.meta["digest"]
    assert worker.counters["signatures_verified"] == worker.counters["signatures"] > 0


def test_money_is_conserved_and_comes_from_chains():
    sim = mixed()
    record = sim.result.record
    assert sum(record.balances_before.values()) == sum(record.balances_after.values())
    assert summary(record)["money"]["conserved"]
    chains = sim.chains
    assert sum(chains.balances().values()) + chains.outstanding() == chains.total_supply
    for n in sim.nodes:  # every balance is the chains' own
        assert record.balances_after[n.name] == chains.balance(n.pub)
    paid = sum(j.price_paid for j in record.jobs)
    assert paid > 0 and record.counters["receipts"] > 0
    # the observers, fed by gossip, agree with the union once everything arrived
    assert record.counters["observer_balance_mismatches"] == 0


def test_a_liar_is_outvoted_by_three_replicas_and_ranked_below_every_honest_provider():
    sim = mixed()
    record = sim.result.record
    assert record.counters["minority_refusals"] > 0
    assert record.counters["refusals_accepted"] == record.counters["minority_refusals"]
    assert record.counters.get("wrong_answers_accepted", 0) == 0
    assert summary(record)["reputation"]["liars_below_honest"] is True
    last: dict[tuple[str, str], float] = {}
    for _t, observer, provider, score, _liar in record.reputation:
        last[(observer, provider)] = score
    observers = {o for o, _ in last}
    assert observers
    for o in observers:
        liar = [s for (ob, p), s in last.items() if ob == o and p.startswith("liar")]
        honest = [s for (ob, p), s in last.items() if ob == o and p.startswith("honest")]
        if liar and honest:
            assert max(liar) < min(honest), o


def test_a_double_spend_is_detected_and_the_account_refused():
    sim = mixed()
    record = sim.result.record
    assert record.counters["double_spends"] == 1
    assert record.counters["forks_detected"] == 1
    cheat = next(c for c in sim.clients if c.cheat)
    assert sim.chains.fork(cheat.node.pub) is not None
    (fault,) = [f for f in record.faults if f.kind == "double_spend"]
    assert fault.target == cheat.node.name
    assert fault.detected_s is not None and fault.detected_s - fault.at_s < 1.0
    known = fault.healed_s
    later = [j for j in record.jobs if j.client == cheat.node.name and j.submitted_s > known]
    assert later and all(j.outcome != "ok" for j in later)
    assert {j.outcome for j in later} <= {"refused_client", "balance", "no_fit"}
    # nothing paid twice: the second receipt is never applied, so never received
    second = sim.attacks[cheat.node.pub]
    assert second["second_at"] >= second["first_at"]
    for o in sim.observers:
        assert cheat.node.pub in o.detected


def test_a_killed_providers_jobs_fail_over():
    faults = """
[[faults]]
at_s = 8.0
kind = "kill"
target = "honest[0]"

[[faults]]
at_s = 20.0
kind = "restart"
target = "honest[0]"
"""
    sim = Simulator(scenario("kill", honest=3, run_ms=3000.0, rate=3.0, jobs=80,
                             faults=faults), 5)
    record = sim.run().record
    killed = sim.providers[0]
    assert killed.node.name == "honest[0]"
    kill = next(f for f in record.faults if f.kind == "kill")
    assert kill.detected_s is not None and 8.0 <= kill.detected_s < 9.0
    moved = [j for j in sim.jobs if j.outcome == "ok" and len(j.atts) > 1
             and j.atts[0].p is killed and j.atts[0].sent_at < 8_000_000]
    assert moved, "a job running on the killed provider finished elsewhere"
    assert all(j.paid_to[-1] != "honest[0]" for j in moved)
    restart = next(f for f in record.faults if f.kind == "restart")
    assert restart.healed_s is not None and restart.healed_s > 20.0
    assert summary(record)["money"]["conserved"]


def test_a_partition_stops_cross_side_jobs_until_the_heal():
    nodes = """
[[nodes]]
group = "far"
role = "provider"
count = 3
cpu = 2.0
mem_mib = 2048
price = 0
"""
    faults = """
[[faults]]
at_s = 10.0
kind = "partition"
groups = [["dev", "honest", "clients"], ["far"]]

[[faults]]
at_s = 25.0
kind = "heal"
"""
    sim = Simulator(scenario("cut", honest=3, extra_nodes=nodes, rate=4.0, jobs=150,
                             faults=faults), 6)
    record = sim.run().record
    far = [j for j in record.jobs if j.outcome == "ok" and j.provider.startswith("far")]
    assert any(j.finished_s < 10.0 for j in far)  # the cheaper side is used before
    assert any(j.submitted_s > 28.0 for j in far)  # and after the heal
    # no job placed across the cut after the nodes noticed it completes before the heal
    assert not any(10.0 + des.DISCONNECT_US / 1e6 <= j.submitted_s and j.finished_s < 25.0
                   for j in far)
    assert record.counters.get("cross_side_jobs_in_partition", 0) == 0
    near = [j for j in record.jobs if j.outcome == "ok" and j.provider.startswith("honest")
            and 10.0 <= j.submitted_s < 25.0]
    assert near  # the client's own side takes the load meanwhile
    part = next(f for f in record.faults if f.kind == "partition")
    heal = next(f for f in record.faults if f.kind == "heal")
    assert heal.healed_s is not None and 25.0 < heal.healed_s < 35.0
    assert part.detail.endswith("far")
    assert summary(record)["money"]["conserved"]


def test_a_flood_is_throttled_by_the_gate_and_honest_adverts_are_not():
    record = mixed().result.record
    c = record.counters
    assert c["flood_sealed"] == 240  # 2 signers x 30/s x 4 s
    assert c["flood_rate_limited"] > 0
    gated = c["flood_accepted"] + c["flood_dropped"]
    assert 0 < c["flood_accepted"] < gated / 2
    assert c["honest_adverts_accepted"] > 0
    assert c.get("honest_adverts_dropped", 0) == 0
    flood = next(f for f in record.faults if f.kind == "flood")
    assert flood.detected_s is not None and 10.0 <= flood.detected_s < 12.0


def test_scaling_a_scenario_keeps_its_shape():
    sc = scenario("scaled", extra_nodes=MIXED_NODES, jobs=40).with_nodes(40)
    sim = Simulator(sc, 1)
    record = sim.run().record
    assert record.meta["nodes"] == 40
    assert len(record.jobs) >= 40
    assert summary(record)["success_rate"] > 0.5


@pytest.mark.parametrize("verify", ["nope"])
def test_bad_verify_mode_is_refused(verify):
    with pytest.raises(ValueError):
        des.Sealer(b"\0" * 32, verify)


# the digest of simulations/scenarios/small.toml with its own seed: a change made only for
# speed (wire fast paths, the matching, the simulator's own loops) must leave it as it is;
# a change of the model changes it, and this pin with it (say why in the commit)
SMALL_DIGEST = "9f63547a502f7ed0b1b512074c6d70cc1d0ddd65b09fbb14e4c058a1347d7f82"


def test_small_scenario_digest_is_pinned():
    path = Path(__file__).resolve().parents[2] / "simulations" / "scenarios" / "small.toml"
    record = Simulator(load_scenario(path)).run().record
    assert record.meta["digest"] == SMALL_DIGEST


def test_mix64_goes_on_from_a_prefix():
    for values in ((1,), (1, 2), (7, 2**64 - 1, 3, 0), (2**70, 5)):
        assert mix64(*values) == mix64_from(mix64(values[0]), *values[1:])
