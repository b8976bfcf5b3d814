"""Per-provider reputation (core/reputation.py): outcomes, decay, bounds, persistence."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meca_node.core.reputation import HALF_LIFE_S, WEIGHTS, Reputation

A, B = bytes([1]) * 32, bytes([2]) * 32
DAY = 24 * 3600.0


def test_unknown_is_half_good_rises_bad_falls_cheat_sinks() -> None:
    r = Reputation()
    assert r.value(A, 0) == 0.5
    for i in range(10):
        r.record(A, "success", i)
    assert r.value(A, 10) == pytest.approx(11 / 12, rel=1e-3)
    r.record(B, "timeout", 0)
    assert r.value(B, 0) == pytest.approx(1 / 3)
    r.record(A, "cheat", 20)
    assert r.value(A, 20) < 0.1 < r.value(B, 20)
    assert r.score(A, 20).jobs == 11
    with pytest.raises(ValueError, match="unknown outcome"):
        r.record(A, "great", 0)


def test_counts_halve_every_half_life_and_trust_can_be_earned_back() -> None:
    r = Reputation()
    r.record(A, "minority", 0)
    s = r.score(A, HALF_LIFE_S)
    assert s.bad == pytest.approx(1.5) and s.good == 0
    for i in range(20):
        r.record(A, "success", 4 * HALF_LIFE_S + i)
    assert r.value(A, 4 * HALF_LIFE_S + 20) > 0.9


def test_bounded_and_persistent() -> None:
    r = Reputation(capacity=2)
    for i, key in enumerate((A, B, bytes([3]) * 32)):
        r.record(key, "success", i)
    assert len(r) == 2 and r.value(A, 5) == 0.5  # the least recently updated went first
    again = Reputation.from_json(r.to_json())
    assert again.to_json() == r.to_json()
    for bad in ({}, {"version": 2}, {"version": 1, "half_life_s": 1, "scores": {"zz": 1}},
                {"version": 1, "half_life_s": 1, "scores": {A.hex(): [-1, 0, 0, 0]}}):
        with pytest.raises(ValueError):
            Reputation.from_json(bad)


@settings(max_examples=200, deadline=None, derandomize=True, database=None)
@given(st.lists(st.tuples(st.sampled_from(sorted(WEIGHTS)), st.floats(0, 60 * DAY)),
                max_size=40))
def test_a_score_stays_in_0_1_and_a_bad_outcome_never_raises_it(events) -> None:
    r = Reputation()
    now = 0.0
    for outcome, dt in events:
        now += dt
        before = r.value(A, now)
        after = r.record(A, outcome, now).value
        assert 0.0 < after < 1.0
        if WEIGHTS[outcome][0] == 0:
            assert after <= before + 1e-12
        else:
            assert after >= before - 1e-12
