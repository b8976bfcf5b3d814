"""Scenario files: defaults, every error names the file and key, round trips, scaling."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meca_node.sim.scenario import (
    MAX_NODES,
    Fault,
    Mix,
    Scenario,
    ScenarioError,
    load_scenario,
    parse_scenario,
    scale_counts,
    scenario_from_json,
)

SCENARIOS = Path(__file__).resolve().parents[2] / "simulations" / "scenarios"

HEAD = 'name = "t"\nduration_s = 60\n'
NODES = """
[[nodes]]
group = "p"
role = "provider"
count = 3

[[nodes]]
group = "c"
role = "client"
count = 2

[[nodes]]
group = "s"
role = "provider"
count = 1
behaviour = "sybil"
"""
TASKS = '\n[[tasks]]\nname = "echo"\nfolder = "examples/echo"\n'
LOAD = "\n[load]\nrate_per_s = 2.0\n"
MINIMAL = HEAD + NODES + TASKS + LOAD


def parse(text: str) -> Scenario:
    return parse_scenario(text, "x.toml")


def test_minimal_scenario_takes_the_defaults():
    s = parse(MINIMAL)
    assert (s.name, s.seed, s.duration_s) == ("t", 1, 60.0)
    assert (s.network.latency_ms, s.network.jitter_ms, s.network.loss,
            s.network.gossip_degree) == (5.0, 1.0, 0.0, 6)
    p = s.group("p")
    assert (p.cpu, p.mem_mib, p.gpus, p.price, p.behaviour, p.balance) == \
        (2.0, 2048, 0, 1, "honest", 1_000_000)
    t = s.task("echo")
    assert (t.fee, t.cpu, t.mem_mib, t.gpus, t.run_ms) == (0, 0.5, 128, 0, 50.0)
    assert s.load.jobs == s.load_jobs() == 120  # rate * duration
    assert s.load.mix == {"echo": 1.0}
    assert (s.load.replicas, s.load.max_price, s.load.timeout_s) == (1, 10, 30.0)
    assert s.faults == ()
    assert s.source == "x.toml"


def test_node_list_is_groups_in_file_order_then_index():
    s = parse(MINIMAL)
    nodes = s.node_list()
    assert [tuple(n) for n in nodes] == [
        (0, "p", "provider", "honest", 0), (1, "p", "provider", "honest", 1),
        (2, "p", "provider", "honest", 2), (3, "c", "client", "honest", 0),
        (4, "c", "client", "honest", 1), (5, "s", "provider", "sybil", 0),
    ]
    assert nodes[4].name == "c[1]"
    assert s.node_index("c[1]") == 4 and s.node_count() == 6
    with pytest.raises(KeyError):
        s.node_index("c[2]")
    assert not s.group("s").works and s.group("p").works


def test_mix_defaults_to_every_task_equally_and_keeps_file_order():
    text = HEAD + NODES + TASKS + '\n[[tasks]]\nname = "b"\nfolder = "examples/b"\n' + LOAD
    assert list(parse(text).load.mix.items()) == [("echo", 1.0), ("b", 1.0)]
    text += 'mix = { b = 3, echo = 1.5 }\n'
    mix = parse(text).load.mix
    assert list(mix.items()) == [("b", 3.0), ("echo", 1.5)]
    assert mix == Mix({"b": 3.0, "echo": 1.5}) and hash(mix) == hash(Mix(mix))


def _replace(old: str, new: str) -> str:
    assert old in MINIMAL
    return MINIMAL.replace(old, new, 1)


FAULT_OK = '\n[[faults]]\nat_s = 1\nkind = "kill"\ntarget = "p[0]"\n'

BAD = [
    # (scenario text, what the error must say)
    ("not toml =", "x.toml: not valid TOML"),
    (MINIMAL + "\nbogus = 1\n[x]\n", "x.toml: x: unknown key"),
    (_replace('name = "t"', 'name = "t"\nbogus = 1'), "x.toml: bogus: unknown key"),
    (_replace('name = "t"\n', ""), "x.toml: name: is required"),
    (_replace('name = "t"', 'name = "a b"'), "x.toml: name: 'a b'"),
    (_replace("duration_s = 60", "duration_s = 0"), "x.toml: duration_s: must be > 0"),
    (_replace("duration_s = 60", "duration_s = 86401"), "duration_s: must be <= 86400"),
    (_replace("duration_s = 60", 'duration_s = "60"'), "duration_s: must be a number"),
    (_replace("duration_s = 60", "duration_s = nan"), "duration_s: must be a finite number"),
    (_replace("duration_s = 60", "duration_s = true"), "duration_s: must be a number"),
    (_replace('name = "t"', 'name = "t"\nseed = -1'), "seed: must be >= 0"),
    (_replace('name = "t"', 'name = "t"\nseed = 1.5'), "seed: must be a whole number"),
    (MINIMAL + "\n[network]\nloss = 1.5\n", "x.toml: network.loss: must be <= 1"),
    (MINIMAL + "\n[network]\nlatency = 1\n", "network.latency: unknown key"),
    (MINIMAL + "\n[network]\ngossip_degree = 0\n", "network.gossip_degree: must be >= 1"),
    (_replace('role = "provider"\ncount = 3', 'role = "provider"\ncount = 0'),
     "x.toml: nodes[0].count: must be >= 1"),
    (_replace('role = "provider"\ncount = 3', 'role = "provider"\ncount = 100001'),
     "nodes[0].count: must be <= 100000"),
    (_replace('role = "provider"\ncount = 3', 'role = "provider"\ncount = 99999'),
     "nodes[1].count: brings the scenario to 100001 nodes; at most 100000"),
    (_replace('role = "provider"\ncount = 3', 'role = "miner"\ncount = 3'),
     "nodes[0].role: 'miner' is not one of provider, client, developer"),
    (_replace('group = "c"', 'group = "p"'), "nodes[1].group: 'p' is used by another group"),
    (_replace('group = "c"\nrole = "client"\ncount = 2', 'group = "c"\nrole = "client"\n'
              'count = 2\nprice = 3'), "nodes[1].price: only providers take price"),
    (_replace('group = "c"\nrole = "client"\ncount = 2', 'group = "c"\nrole = "client"\n'
              'count = 2\nbehaviour = "liar"'), "nodes[1].behaviour: liar is for providers"),
    (_replace('role = "provider"\ncount = 3', 'role = "provider"\ncount = 3\n'
              'behaviour = "double_spender"'), "nodes[0].behaviour: double_spender is for clients"),
    (_replace('role = "provider"\ncount = 3', 'role = "provider"\ncount = 3\ncpu = 0'),
     "nodes[0].cpu: must be > 0"),
    (_replace('role = "provider"\ncount = 3', 'role = "provider"\ncount = 3\ncolour = 1'),
     "nodes[0].colour: unknown key"),
    (_replace('role = "client"', 'role = "developer"'), "nodes: needs at least one client"),
    (_replace('role = "provider"\ncount = 3', 'role = "developer"\ncount = 3'),
     "nodes: needs at least one provider group (sybils do not count)"),
    (HEAD + NODES + LOAD, "x.toml: tasks: needs at least one [[tasks]] entry"),
    (_replace('folder = "examples/echo"', 'folder = "/etc"'), "tasks[0].folder: '/etc'"),
    (_replace('folder = "examples/echo"', 'folder = "../x"'), "tasks[0].folder: '../x'"),
    (_replace('folder = "examples/echo"\n', ""), "tasks[0].folder: is required"),
    (_replace('folder = "examples/echo"', 'folder = "e"\ncpu = 4'),
     "tasks[0]: no provider group can run it (it needs cpu 4.0"),
    (_replace('folder = "examples/echo"', 'folder = "e"\ngpus = 1'), "no provider group"),
    (_replace('folder = "examples/echo"', 'folder = "e"\nrun_ms = -1'),
     "tasks[0].run_ms: must be > 0"),
    (TASKS.join([HEAD + NODES, "", LOAD]), "tasks[1].name: 'echo' is used by another task"),
    (HEAD + NODES + TASKS, "x.toml: load: is required"),
    (_replace("rate_per_s = 2.0", "rate_per_s = 0"), "load.rate_per_s: must be > 0"),
    (_replace("rate_per_s = 2.0", "rate_per_s = 20000"),
     "load.rate_per_s: rate_per_s * duration_s gives 1200000 jobs; at most 1000000"),
    (MINIMAL + "jobs = 1000001\n", "load.jobs: must be <= 1000000"),
    (MINIMAL + "jobs = 0\n", "load.jobs: must be >= 1"),
    (MINIMAL + "mix = { other = 1 }\n", "load.mix.other: unknown key; known keys here: echo"),
    (MINIMAL + "mix = { echo = -1 }\n", "load.mix.echo: must be >= 0"),
    (MINIMAL + "mix = { echo = 0 }\n", "load.mix: weights add up to 0"),
    (MINIMAL + "mix = {}\n", "load.mix: is empty"),
    (MINIMAL + "replicas = 17\n", "load.replicas: must be <= 16"),
    (MINIMAL + "replicas = 4\n", "load.replicas: 4 replicas need as many providers; "
                                 "the scenario has 3"),
    (MINIMAL + "timeout_s = 0\n", "load.timeout_s: must be > 0"),
    (MINIMAL + "\n[[faults]]\nat_s = -1\nkind = \"heal\"\n",
     "x.toml: faults[0].at_s: must be >= 0"),
    (MINIMAL + "\n[[faults]]\nat_s = 61\nkind = \"kill\"\ntarget = \"p[0]\"\n",
     "faults[0].at_s: must be <= 60"),
    (MINIMAL + "\n[[faults]]\nat_s = 1\nkind = \"melt\"\n", "faults[0].kind: 'melt' is not one of"),
    (MINIMAL + "\n[[faults]]\nat_s = 1\n", "faults[0].kind: is required"),
    (MINIMAL + FAULT_OK + "share = 0.5\n", "faults[0].share: unknown key; known keys here: "
                                           "at_s, kind, target"),
    (MINIMAL + FAULT_OK.replace("p[0]", "p[3]"), "faults[0].target: 'p[3]': group p has 3 nodes"),
    (MINIMAL + FAULT_OK.replace("p[0]", "q[0]"), "faults[0].target: 'q[0]': give one node"),
    (MINIMAL + FAULT_OK.replace("p[0]", "p"), "faults[0].target: 'p': give one node"),
    (MINIMAL + FAULT_OK + FAULT_OK, "faults[1].target: p[0] is already killed"),
    (MINIMAL + FAULT_OK.replace("kill", "restart"), "faults[0].target: p[0] is not killed"),
    (MINIMAL + FAULT_OK.replace("at_s = 1", "at_s = 5") + FAULT_OK.replace("kill", "restart"),
     "faults[1].at_s: 1 is before faults[0] (5); list faults in time order"),
    (MINIMAL + "\n[[faults]]\nat_s = 1\nkind = \"heal\"\n", "faults[0]: no partition to heal"),
    (MINIMAL + "\n[[faults]]\nat_s = 1\nkind = \"partition\"\n",
     "faults[0].groups: is required"),
    (MINIMAL + "\n[[faults]]\nat_s = 1\nkind = \"partition\"\ngroups = [[\"p\", \"c\", \"s\"]]\n",
     "faults[0].groups: give at least two sides"),
    (MINIMAL + "\n[[faults]]\nat_s = 1\nkind = \"partition\"\ngroups = [[\"p\"], [\"c\"]]\n",
     "faults[0].groups: every group must be on one side; missing: s"),
    (MINIMAL + "\n[[faults]]\nat_s = 1\nkind = \"partition\"\n"
               "groups = [[\"p\", \"s\"], [\"c\", \"p\"]]\n", "faults[0].groups[1]: 'p' is in two"),
    (MINIMAL + "\n[[faults]]\nat_s = 1\nkind = \"partition\"\n"
               "groups = [[\"p\", \"s\"], [\"c\", \"z\"]]\n", "faults[0].groups[1]: 'z' is not"),
    (MINIMAL + "\n[[faults]]\nat_s = 1\nkind = \"partition\"\n"
               "groups = [[\"p\", \"s\"], [\"c\"]]\n" * 2,
     "faults[1]: a partition is in force already"),
    (MINIMAL + "\n[[faults]]\nat_s = 1\nkind = \"drop\"\nshare = 1.5\n",
     "faults[0].share: must be <= 1"),
    (MINIMAL + "\n[[faults]]\nat_s = 1\nkind = \"drop\"\n", "faults[0].share: is required"),
    (MINIMAL + "\n[[faults]]\nat_s = 1\nkind = \"delay\"\ndelay_ms = 5\nduration_s = 0\n",
     "faults[0].duration_s: must be > 0"),
    (MINIMAL + "\n[[faults]]\nat_s = 1\nkind = \"flood\"\ntarget = \"p\"\nrate_per_s = 5\n",
     "faults[0].target: 'p': give the name of a group whose behaviour is sybil"),
    (MINIMAL + "\n[[faults]]\nat_s = 1\nkind = \"flood\"\ntarget = \"s\"\n",
     "faults[0].rate_per_s: is required"),
    (MINIMAL + "faults = 3\n", "x.toml: load.faults: unknown key"),
    (MINIMAL.replace("[load]", "[[load]]"), "x.toml: load: must be a table, not an array"),
    (MINIMAL + "\n[[faults]]\nat_s = 1\nkind = \"heal\"\n" * 1001,
     "x.toml: faults: 1001 entries; at most 1000"),
]


@pytest.mark.parametrize("text,needle", BAD, ids=[n[:40] for _, n in BAD])
def test_invalid_scenario_names_file_and_key(text, needle):
    with pytest.raises(ScenarioError) as e:
        parse(text)
    assert needle in str(e.value)


def test_load_scenario_file_errors(tmp_path):
    with pytest.raises(ScenarioError, match="nope.toml: no such scenario file"):
        load_scenario(tmp_path / "nope.toml")
    f = tmp_path / "bad.toml"
    f.write_text(MINIMAL + "replicas = 0\n")
    with pytest.raises(ScenarioError, match=r"bad\.toml: load\.replicas: must be >= 1"):
        load_scenario(f)


def test_faults_of_every_kind():
    text = MINIMAL + """
[[faults]]
at_s = 1
kind = "kill"
target = "p[2]"
[[faults]]
at_s = 2
kind = "restart"
target = "p[2]"
[[faults]]
at_s = 3
kind = "partition"
groups = [["p", "s"], ["c"]]
[[faults]]
at_s = 4
kind = "heal"
[[faults]]
at_s = 5
kind = "delay"
delay_ms = 200
[[faults]]
at_s = 6
kind = "drop"
share = 0.2
duration_s = 3
[[faults]]
at_s = 7
kind = "flood"
target = "s"
rate_per_s = 100
"""
    f = parse(text).faults
    assert [x.kind for x in f] == ["kill", "restart", "partition", "heal", "delay", "drop",
                                   "flood"]
    assert f[0] == Fault(at_s=1.0, kind="kill", target="p[2]") and f[0].target_node() == ("p", 2)
    assert f[2].groups == (("p", "s"), ("c",))
    assert f[3] == Fault(at_s=4.0, kind="heal")
    assert (f[4].delay_ms, f[4].duration_s, f[4].end_s) == (200.0, 10.0, 15.0)
    assert (f[5].share, f[5].duration_s) == (0.2, 3.0)
    assert (f[6].target, f[6].rate_per_s, f[6].duration_s) == ("s", 100.0, 10.0)


@pytest.mark.parametrize("name", ["small", "large"])
def test_shipped_scenarios_load_and_round_trip(name):
    s = load_scenario(SCENARIOS / f"{name}.toml")
    assert s.name == name
    doc = s.to_json()
    again = scenario_from_json(json.loads(json.dumps(doc)), "copy")
    assert again == s and again.to_json() == doc


def test_small_scenario_shape():
    s = load_scenario(SCENARIOS / "small.toml")
    nodes = s.node_list()
    assert len(nodes) == 8

    def by(role: str, behaviour: str) -> int:
        return sum(1 for n in nodes if (n.role, n.behaviour) == (role, behaviour))

    assert by("developer", "honest") == 1
    assert by("provider", "honest") == 3 and by("provider", "liar") == 1
    assert by("client", "honest") == 1 and by("client", "double_spender") == 1
    assert by("provider", "sybil") == 1
    kinds = [f.kind for f in s.faults]
    assert kinds == ["kill", "restart", "partition", "heal", "flood"]
    assert s.duration_s <= 90


def test_large_scenario_shape():
    s = load_scenario(SCENARIOS / "large.toml")
    assert s.node_count() == 10_000 and s.load_jobs() == 100_000
    assert {f.kind for f in s.faults} >= {"partition", "flood"}


def test_with_nodes_scales_in_proportion():
    s = parse(MINIMAL)  # 3 p, 2 c, 1 s
    big = s.with_nodes(600)
    assert [g.count for g in big.nodes] == [300, 200, 100]
    assert big.node_count() == 600 and big.source == "x.toml (scaled to 600 nodes)"
    assert [g.count for g in s.with_nodes(2).nodes] == [1, 1, 1]  # at least one per group
    assert big.with_nodes(6) == s
    assert big.load == s.load and big.tasks == s.tasks


def test_with_nodes_refuses_what_no_longer_fits():
    text = MINIMAL.replace('role = "provider"\ncount = 3', 'role = "provider"\ncount = 30')
    s = parse(text + FAULT_OK.replace("p[0]", "p[20]"))
    with pytest.raises(ScenarioError, match=r"scaled to 10 nodes\): faults\[0\]\.target"):
        s.with_nodes(10)
    with pytest.raises(ScenarioError, match="give 1..100000 nodes"):
        s.with_nodes(0)
    with pytest.raises(ScenarioError, match="give 1..100000 nodes"):
        s.with_nodes(MAX_NODES + 1)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(1, 5000), min_size=1, max_size=20), st.integers(1, MAX_NODES))
def test_scale_counts_properties(counts, n):
    out = scale_counts(counts, n)
    assert len(out) == len(counts) and min(out) >= 1
    if n >= len(counts):
        assert sum(out) == n
        spare, total = n - len(counts), sum(counts)
        for c, o in zip(counts, out):
            assert abs((o - 1) - c * spare / total) < 1  # within one of the exact share
    else:
        assert out == [1] * len(counts)


_names = st.from_regex(r"[a-z][a-z0-9_]{0,7}", fullmatch=True)


@st.composite
def scenarios(draw):
    names = draw(st.lists(_names, min_size=3, max_size=6, unique=True))
    roles = ["provider", "client"] + [draw(st.sampled_from(["provider", "client", "developer"]))
                                      for _ in names[2:]]
    nodes = []
    for name, role in zip(names, roles):
        g = {"group": name, "role": role, "count": draw(st.integers(1, 50)),
             "balance": draw(st.integers(0, 10**9))}
        if role == "provider":
            g.update(cpu=draw(st.sampled_from([1.0, 2.0, 4.5])), price=draw(st.integers(0, 9)),
                     gpus=draw(st.integers(0, 2)), mem_mib=draw(st.integers(512, 8192)))
            if name != names[0]:
                g["behaviour"] = draw(st.sampled_from(["honest", "liar", "sybil"]))
        elif role == "client":
            g["behaviour"] = draw(st.sampled_from(["honest", "double_spender"]))
        nodes.append(g)
    duration = draw(st.floats(1.0, 3600.0, allow_nan=False))
    faults = []
    t = 0.0
    for _ in range(draw(st.integers(0, 5))):
        t = draw(st.floats(t, duration))
        kind = draw(st.sampled_from(["delay", "drop"]))
        f = {"at_s": t, "kind": kind, "duration_s": draw(st.floats(0.5, 100.0))}
        f["delay_ms" if kind == "delay" else "share"] = draw(st.floats(0.01, 1.0))
        faults.append(f)
    doc = {
        "name": draw(_names), "seed": draw(st.integers(0, 2**63 - 1)), "duration_s": duration,
        "network": {"loss": draw(st.floats(0.0, 1.0)), "gossip_degree": draw(st.integers(1, 12))},
        "nodes": nodes,
        "tasks": [{"name": "echo", "folder": "examples/echo", "cpu": 0.5, "mem_mib": 128,
                   "fee": draw(st.integers(0, 5))}],
        "load": {"rate_per_s": draw(st.floats(0.1, 100.0)), "replicas": 1},
        "faults": faults,
    }
    return doc


@settings(max_examples=100, deadline=None)
@given(scenarios())
def test_round_trip_through_json(doc):
    s = scenario_from_json(doc, "gen")
    again = scenario_from_json(json.loads(json.dumps(s.to_json())), "gen2")
    assert again == s
    assert again.to_json() == s.to_json()
    assert len(s.node_list()) == s.node_count()
