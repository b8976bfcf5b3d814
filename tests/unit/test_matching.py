"""Matching (core/matching.py): hard filters with typed reasons, ranking, the summary;
table-driven and property-based, no sockets."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meca_node import wire
from meca_node.core.matching import (
    REASON_CODES, Candidate, Need, Weights, rank, summary, unfit,
)

IMAGE = "bafy-image"
OFFER = wire.TaskOffer(
    name="t", description="", image_cid=IMAGE, arch="amd64",
    resources=wire.Resources(cpu_milli=1000, mem_mib=128, gpu_count=0),
    environment="docker-cpu", fee=1, example_input_sha256=bytes(32),
    example_output_sha256=bytes(32))
NEED = Need(OFFER, max_price=5, max_age_ms=90_000)
HW = wire.Hardware(cpu_count=4, cpu_model="x", cpu_mhz=1, mem_mib=4096, disk_mib=1)


def advert(**kw) -> wire.HostAdvert:
    base = dict(roles=("provider",), arch="amd64", hardware=HW,
                free=wire.Resources(cpu_milli=4000, mem_mib=1024, gpu_count=0), price=2,
                environments=(wire.Environment(name="docker-cpu", score=100),),
                cached_images=(), queue=0, addrs=())
    return wire.HostAdvert(**{**base, **kw})


def host(pid="p1", age_ms=1000, **kw) -> Candidate:
    extra = {k: kw.pop(k) for k in ("connected", "latency_ms", "reputation", "refused",
                                    "pending") if k in kw}
    return Candidate(pid, advert(**kw), age_ms, **extra)


@pytest.mark.parametrize("cand, need, code, text", [
    (host(roles=("client",)), NEED, "role", "is not a provider"),
    (host(age_ms=100_000), NEED, "stale", "has not advertised for over 90 s"),
    (host(connected=False), NEED, "not_connected", "is not connected"),
    (host(refused="a bad_output proof"), NEED, "refused", "is refused (a bad_output proof)"),
    (host(), dataclasses.replace(NEED, allow=frozenset({"p2"})), "not_allowed",
     "is not in the allow-list"),
    (host(environments=()), NEED, "environment", "has no docker-cpu"),
    (host(arch="arm64"), NEED, "arch", "is arm64, the task is amd64"),
    (host(free=wire.Resources(cpu_milli=4000, mem_mib=1024, gpu_count=0)),
     dataclasses.replace(NEED, offer=dataclasses.replace(OFFER, resources=wire.Resources(
         cpu_milli=1000, mem_mib=128, gpu_count=1))), "gpu", "has 0 GPU(s) free < 1"),
    (host(free=wire.Resources(cpu_milli=500, mem_mib=1024, gpu_count=0)), NEED, "cpu",
     "has 0.5 CPU free < 1"),
    (host(free=wire.Resources(cpu_milli=4000, mem_mib=96, gpu_count=0)), NEED, "mem",
     "has 96 MiB free < 128 MiB"),
    (host(price=5), NEED, "price", "asks 5 + fee 1 > max 5"),
])
def test_each_hard_filter_names_its_field(cand, need, code, text) -> None:
    reasons = unfit(cand, need)
    assert [(r.code, r.text) for r in reasons] == [(code, text)]
    ranked, unfits = rank([cand], need)
    assert ranked == [] and unfits[0].reasons == reasons


def test_every_failing_filter_is_reported_not_only_the_first() -> None:
    c = host(arch="arm64", price=9, connected=False)
    assert [r.code for r in unfit(c, NEED)] == ["not_connected", "arch", "price"]


def test_the_summary_counts_reasons_over_every_host() -> None:
    offer = dataclasses.replace(OFFER, environment="docker-gpu", fee=0)
    need = Need(offer, max_price=3, max_age_ms=90_000)
    gpu_env = (wire.Environment(name="docker-gpu", score=1),)
    hosts = [host("a", environments=()), host("b", environments=()),
             host("c", environments=gpu_env,
                  free=wire.Resources(cpu_milli=4000, mem_mib=96, gpu_count=0)),
             host("d", environments=gpu_env, price=5)]
    ranked, unfits = rank(hosts, need)
    assert ranked == []
    assert summary(unfits) == ("4 hosts: 2 have no docker-gpu (needs a GPU and the NVIDIA "
                               "runtime), 1 has 96 MiB free < 128 MiB, 1 asks 5 + fee 0 > "
                               "max 3")
    assert summary([]) == "no provider has advertised yet"


def test_ranking_weighs_price_cache_queue_benchmark_latency_reputation() -> None:
    cheap = host("cheap", price=1)
    dear = host("dear", price=3)
    assert [r.peer_id for r in rank([dear, cheap], NEED)[0]] == ["cheap", "dear"]
    cached = host("cached", price=3, cached_images=(IMAGE,))
    # the cache outweighs the price when price has no weight, not otherwise
    assert rank([cheap, cached], NEED, Weights(price=0))[0][0].peer_id == "cached"
    assert rank([cheap, cached], NEED, Weights(cached=0))[0][0].peer_id == "cheap"
    busy = host("busy", queue=4)
    idle = host("idle", queue=0)
    assert rank([busy, idle], NEED)[0][0].peer_id == "idle"
    fast = host("fast", environments=(wire.Environment(name="docker-cpu", score=900),))
    slow = host("slow", environments=(wire.Environment(name="docker-cpu", score=100),))
    assert rank([slow, fast], NEED)[0][0].peer_id == "fast"
    near = host("near", latency_ms=2.0)
    far = host("far", latency_ms=20.0)
    assert rank([far, near], NEED)[0][0].peer_id == "near"
    trusted = host("trusted", reputation=0.9)
    doubtful = host("doubtful", reputation=0.1)
    assert rank([doubtful, trusted], NEED)[0][0].peer_id == "trusted"
    top = rank([cheap], NEED)[0][0]
    assert set(top.parts) == {"price", "benchmark", "cached", "queue", "latency",
                              "reputation"}
    with pytest.raises(ValueError, match="price"):
        Weights(price=-1)


def test_our_own_jobs_at_a_provider_count_in_its_queue() -> None:
    """A client that just sent jobs to a provider spreads the next ones, though the
    provider's advert does not show them yet (and a better score would keep choosing it)."""
    busy, idle = host("a", pending=2, reputation=0.9), host("b", reputation=0.8)
    ranked, _ = rank([busy, idle], NEED)
    assert [r.peer_id for r in ranked] == ["b", "a"]
    assert ranked[1].parts["queue"] == pytest.approx(1 / 3)
    assert [r.peer_id for r in rank([host("a", reputation=0.9), idle], NEED)[0]] == ["a", "b"]


def test_ties_go_to_the_lower_price_then_the_peer_id() -> None:
    a, b = host("b"), host("a")
    assert [r.peer_id for r in rank([a, b], NEED, Weights(price=0))[0]] == ["a", "b"]


def test_with_a_salt_equal_providers_are_ordered_per_client() -> None:
    """Clients that see the same idle providers spread over them instead of all taking
    the one with the lowest peer id; each client's own order stays the same."""
    hosts = [host(f"p{i}") for i in range(8)]
    firsts = {rank(hosts, NEED, salt=bytes([c]) * 32)[0][0].peer_id for c in range(32)}
    assert len(firsts) >= 4
    salt = b"\x07" * 32
    assert rank(hosts, NEED, salt=salt)[0] == rank(list(reversed(hosts)), NEED, salt=salt)[0]
    cheap = host("p9", price=1)  # the salt only orders equals: a better score still wins
    assert rank(hosts + [cheap], NEED, salt=salt)[0][0].peer_id == "p9"


# -- properties ------------------------------------------------------------------------
hosts_st = st.builds(
    lambda i, price, cpu, mem, gpu, arch, env, age, conn, queue, cached, rep, lat: Candidate(
        f"p{i}", advert(price=price, arch=arch, queue=queue,
                        free=wire.Resources(cpu_milli=cpu, mem_mib=mem, gpu_count=gpu),
                        environments=(wire.Environment(name=env, score=price * 7 % 13),),
                        cached_images=(IMAGE,) if cached else ()),
        age, conn, lat, rep),
    st.integers(0, 10**6), st.integers(0, 8), st.integers(0, 4000), st.integers(0, 512),
    st.integers(0, 2), st.sampled_from(["amd64", "arm64"]),
    st.sampled_from(["docker-cpu", "docker-gpu"]), st.integers(0, 200_000), st.booleans(),
    st.integers(0, 5), st.booleans(), st.floats(0, 1), st.none() | st.floats(0.1, 100))


@settings(max_examples=300, deadline=None, derandomize=True, database=None)
@given(st.lists(hosts_st, max_size=12, unique_by=lambda c: c.peer_id),
       st.integers(0, 12), st.integers(0, 2000), st.integers(0, 300), st.integers(0, 1))
def test_a_host_failing_a_hard_filter_is_never_chosen(hosts, max_price, cpu, mem, gpu):
    offer = dataclasses.replace(OFFER, resources=wire.Resources(
        cpu_milli=cpu, mem_mib=mem, gpu_count=gpu))
    need = Need(offer, max_price=max_price, max_age_ms=90_000)
    ranked, unfits = rank(hosts, need)
    assert len(ranked) + len(unfits) == len(hosts)
    by_id = {c.peer_id: c for c in hosts}
    for r in ranked:
        c = by_id[r.peer_id]
        assert unfit(c, need) == ()
        assert c.connected and c.age_ms <= need.max_age_ms
        assert c.advert.price + offer.fee <= max_price and c.advert.arch == offer.arch
        assert c.advert.free.cpu_milli >= cpu and c.advert.free.mem_mib >= mem
    for u in unfits:
        assert u.reasons and all(r.code in REASON_CODES and r.text for r in u.reasons)
    scores = [r.score for r in ranked]
    assert scores == sorted(scores, reverse=True)
    if unfits:
        assert summary(unfits).startswith(f"{len(unfits)} host")


def test_a_host_short_only_of_free_resources_is_busy_not_unfit() -> None:
    busy = host("busy", free=wire.Resources(cpu_milli=0, mem_mib=0, gpu_count=0))
    small = host("small", free=wire.Resources(cpu_milli=0, mem_mib=0, gpu_count=0),
                 hardware=dataclasses.replace(HW, mem_mib=64))
    dear = host("dear", price=9, free=wire.Resources(cpu_milli=0, mem_mib=0, gpu_count=0))
    _, unfits = rank([busy, small, dear], NEED)
    assert {u.peer_id: u.busy for u in unfits} == {"busy": True, "small": False,
                                                   "dear": False}


@settings(max_examples=60, deadline=None)
@given(prices=st.lists(st.integers(1, 3), min_size=1, max_size=12),
       salt=st.sampled_from([b"", b"\x01" * 32, b"\x02" * 32]))
def test_ties_are_broken_as_a_sort_on_score_price_and_salted_peer_id(prices, salt) -> None:
    """The hash that orders equal candidates is made only for ties: the order must be the
    one a sort on (score, price, SHA-256(salt + peer id)) gives."""
    import hashlib

    hosts = [host(f"p{i}", price=price) for i, price in enumerate(prices)]
    ranked, _ = rank(hosts, NEED, salt=salt)
    expect = sorted(ranked, key=lambda r: (
        -r.score, r.price,
        hashlib.sha256(salt + r.peer_id.encode()).digest() if salt else r.peer_id))
    assert [r.peer_id for r in ranked] == [r.peer_id for r in expect]
