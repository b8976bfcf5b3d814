"""The placement rule (``core.matching.choose``) and replaying traced decisions into the
simulator's client model (``sim.replay``)."""

from __future__ import annotations

import json
from types import SimpleNamespace

from hypothesis import given, settings
from hypothesis import strategies as st

from meca_node import wire
from meca_node.core.matching import Weights, choose, rank
from meca_node.sim.replay import DecisionTrace, decide, replay_decisions
from test_matching import NEED, host

BUSY = wire.Resources(cpu_milli=0, mem_mib=1024, gpu_count=0)


def test_choose_takes_the_best_untried_then_the_shortest_busy_queue():
    cands = [host("a", price=3), host("b", price=2), host("c", free=BUSY, queue=4),
             host("d", free=BUSY, queue=1), host("e", roles=("client",))]
    ranked, unfits = rank(cands, NEED, Weights(), salt=b"k")
    queue = {c.peer_id: c.advert.queue for c in cands}
    assert choose(ranked, unfits, set(), queue.get) == ("b", [])
    assert choose(ranked, unfits, {"b"}, queue.get) == ("a", [])
    assert choose(ranked, unfits, {"a", "b"}, queue.get) == ("d", ["d", "c"])
    assert choose(ranked, unfits, {"a", "b", "d", "c"}, queue.get) == (None, [])


def _node(key: bytes):
    return SimpleNamespace(identity=SimpleNamespace(public_key=key))


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 6), st.integers(0, 3), st.booleans(),
                          st.floats(0, 1), st.one_of(st.none(), st.floats(0.1, 50))),
                min_size=1, max_size=8),
       st.binary(min_size=32, max_size=32))
def test_a_traced_decision_replays_to_the_same_choice(tmp_path_factory, hosts, salt):
    tmp = tmp_path_factory.mktemp("trace")
    cands = [host(f"p{i}", price=price, queue=queue, pending=i % 2,
                  free=BUSY if busy else wire.Resources(cpu_milli=4000, mem_mib=1024,
                                                        gpu_count=0),
                  reputation=rep, latency_ms=lat)
             for i, (price, queue, busy, rep, lat) in enumerate(hosts)]
    weights = Weights(latency=0.7)
    ranked, unfits = rank(cands, NEED, weights, salt=salt)
    queue = {c.peer_id: c.advert.queue for c in cands}
    chosen, _ = choose(ranked, unfits, {"p0"}, queue.get)
    trace = DecisionTrace(tmp)
    trace(_node(salt), cands, NEED, weights, ["p0"], chosen)
    trace.close()
    r = replay_decisions(tmp / "sim-trace.jsonl")
    assert (r.decisions, r.equal, r.differences) == (1, 1, [])


def test_a_different_choice_is_reported_and_a_torn_last_line_is_ignored(tmp_path):
    cands = [host("a", price=3), host("b", price=2)]
    trace = DecisionTrace(tmp_path)
    trace(_node(b"s" * 32), cands, NEED, Weights(), [], "a")  # the node "chose" a
    trace(_node(b"s" * 32), cands, NEED, Weights(), [], "b")
    trace.close()
    path = tmp_path / "sim-trace.jsonl"
    line = json.loads(path.read_text().splitlines()[0])
    assert decide(line) == "b"
    with path.open("a") as f:
        f.write('{"torn')  # a killed node's half line
    r = replay_decisions(path)
    assert (r.decisions, r.equal) == (2, 1) and r.differences == [(1, "a", "b")]
