"""Run reports: the summary's figures, the files written, the JSON round trip, empty runs."""

from __future__ import annotations

import json

import pytest

from meca_node.sim.report import (
    FaultRecord,
    JobRecord,
    RunRecord,
    percentile,
    read_record,
    summary,
    write_report,
)


def job(i: int, latency: float | None, outcome: str = "ok", paid: int = 1, best: int = 1,
        submitted: float = 0.0) -> JobRecord:
    return JobRecord(id=f"j{i}", task="echo", client="c0", submitted_s=submitted,
                     finished_s=None if latency is None else submitted + latency,
                     outcome=outcome, provider="p0", price_paid=paid, best_price=best,
                     replicas=1)


def record(**kw) -> RunRecord:
    base = dict(
        meta={"tool": "simulator", "scenario": "t", "seed": 1, "nodes": 4, "jobs": 104,
              "wall_s": 1.5, "peak_rss_mb": 80.0, "modelled": ["matching"],
              "not_modelled": ["docker"]},
        # latencies 1..100 s, submitted one a second
        jobs=[job(i, float(i), submitted=float(i)) for i in range(1, 101)]
        + [job(101, None, "lost", paid=0), job(102, 3.0, "timeout", paid=0),
           job(103, 2.0, "timeout", paid=0), job(104, 1.0, "ok", paid=4, best=2)],
        faults=[FaultRecord(10.0, "kill", "p[0]", 11.5, 30.0, "provider killed"),
                FaultRecord(40.0, "partition", "p|c", None, None, "")],
        balances_before={"a": 100, "b": 50, "c": 0},
        balances_after={"a": 90, "b": 55, "c": 5},
        reputation=[(0.0, "c0", "p0", 0.5, False), (0.0, "c0", "liar", 0.5, True),
                    (5.0, "c0", "p0", 0.8, False), (5.0, "c0", "liar", 0.1, True),
                    (5.0, "c1", "p0", 0.6, False), (5.0, "c1", "liar", 0.3, True),
                    (1.0, "c1", "p0", 0.0, False)],
        counters={"flood_sent": 1000.0, "flood_dropped": 990.0, "paid_twice": 0.0},
    )
    base.update(kw)
    return RunRecord(**base)


def test_percentile_is_nearest_rank():
    xs = [float(i) for i in range(1, 101)]
    assert [percentile(xs, p) for p in (0, 50, 95, 99, 100)] == [1.0, 50.0, 95.0, 99.0, 100.0]
    assert percentile([7.0], 99) == 7.0 and percentile([], 50) is None
    assert percentile([1.0, 2.0, 3.0], 50) == 2.0


def test_summary_figures():
    s = summary(record())
    assert (s["jobs"], s["ok"], s["failed"]) == (104, 101, 3)
    assert s["success_rate"] == pytest.approx(101 / 104)
    assert s["failures"] == {"timeout": 2, "lost": 1}
    # latencies: 1..100 and one more 1.0 -> 101 values
    assert s["latency_s"]["p50"] == 50.0 and s["latency_s"]["p95"] == 95.0
    assert s["latency_s"]["p99"] == 99.0 and s["latency_s"]["max"] == 100.0
    assert s["placement"]["jobs"] == 101 and s["placement"]["median_ratio"] == 1.0
    assert s["placement"]["at_best_share"] == pytest.approx(100 / 101)
    assert s["money"] == {"total_before": 150, "total_after": 150, "conserved": True,
                          "delta": 0, "accounts": 3}
    assert s["faults"][0]["detected_after_s"] == 1.5 and s["faults"][0]["healed_after_s"] == 20.0
    assert s["faults"][1]["detected_after_s"] is None
    # last score per (observer, provider), averaged over observers: p0 (0.8+0.6)/2, liar 0.2
    assert s["reputation"]["honest_min"] == pytest.approx(0.7)
    assert s["reputation"]["liar_max"] == pytest.approx(0.2)
    assert s["reputation"]["liars_below_honest"] is True
    assert s["counters"]["flood_dropped"] == 990.0
    assert s["modelled"] == ["matching"] and s["not_modelled"] == ["docker"]
    assert (s["tool"], s["scenario"], s["seed"], s["nodes"]) == ("simulator", "t", 1, 4)


def test_money_not_conserved_is_reported():
    s = summary(record(balances_after={"a": 90, "b": 55, "c": 6}))
    assert s["money"]["conserved"] is False and s["money"]["delta"] == 1
    # an account that appears only after the run counts too
    s = summary(record(balances_after={"a": 90, "b": 55, "c": 5, "new": 1}))
    assert s["money"]["conserved"] is False and s["money"]["total_after"] == 151


def test_liar_above_an_honest_provider_is_reported():
    rep = [(1.0, "c0", "p0", 0.4, False), (1.0, "c0", "p1", 0.9, False),
           (1.0, "c0", "liar", 0.5, True)]
    assert summary(record(reputation=rep))["reputation"]["liars_below_honest"] is False


def test_write_report_files_and_json_round_trip(tmp_path):
    rec = record()
    page = write_report(rec, tmp_path / "out")
    assert page == tmp_path / "out" / "index.html"
    text = page.read_text()
    assert "<html" in text and "data:image/png;base64," in text
    assert "provider killed" in text and "docker" in text and "matching" in text
    for name in ("jobs_over_time", "latency", "placement", "balances", "reputation"):
        data = (tmp_path / "out" / f"{name}.png").read_bytes()
        assert data.startswith(b"\x89PNG\r\n\x1a\n")
    again = read_record(tmp_path / "out" / "report.json")
    assert again == rec
    assert again.to_json() == json.loads(json.dumps(rec.to_json()))
    assert json.loads((tmp_path / "out" / "summary.json").read_text()) == \
        json.loads(json.dumps(summary(rec)))


def test_page_escapes_what_tools_write(tmp_path):
    rec = record(faults=[FaultRecord(1.0, "kill", "<b>x</b>", None, None, "a & b")])
    text = write_report(rec, tmp_path).read_text()
    assert "<b>x</b>" not in text and "&lt;b&gt;x&lt;/b&gt;" in text and "a &amp; b" in text


def test_empty_run_does_not_crash(tmp_path):
    rec = RunRecord()
    s = summary(rec)
    assert s["jobs"] == 0 and s["success_rate"] is None and s["latency_s"]["p50"] is None
    assert s["money"]["conserved"] is True and s["reputation"]["liars_below_honest"] is None
    page = write_report(rec, tmp_path)
    assert page.exists() and read_record(tmp_path / "report.json") == rec


def test_only_failed_jobs_and_no_reputation(tmp_path):
    rec = record(jobs=[job(1, None, "lost"), job(2, 5.0, "timeout")], reputation=[])
    s = summary(rec)
    assert s["success_rate"] == 0.0 and s["latency_s"]["p99"] is None
    assert write_report(rec, tmp_path).exists()


def test_other_record_version_is_refused():
    with pytest.raises(ValueError, match="version 2"):
        RunRecord.from_json({"version": 2})
