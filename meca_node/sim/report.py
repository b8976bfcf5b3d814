"""One run report for both simulation tools (``sim cluster`` and ``sim run``).

A tool fills a ``RunRecord`` (plain data: jobs, faults, balances, reputation samples,
counters); ``summary`` turns it into the figures (success rate, latency percentiles,
placement quality, money conserved, each fault's detection and heal time, liars against
honest providers), and ``write_report`` writes ``index.html`` (one self-contained page,
the plots inline as PNG) with the plots beside it as files and ``report.json`` (the record).

matplotlib (and numpy, which it brings) are imported only when plots are drawn, with the
Agg renderer and no pyplot state; the per-job work is done with numpy arrays, so a report
of 100,000 jobs takes about as long as one of 100.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

OK = "ok"
RECORD_VERSION = 1


@dataclass
class JobRecord:
    """One job as the client saw it. Times are seconds from the start of the load.

    ``outcome`` is ``"ok"`` or the reason it failed (``timeout``, ``no_provider``, ``lost``,
    ...). ``provider`` names who ran it (replicas: the paid ones, comma-separated);
    ``price_paid`` is what providers were paid for it in all (the developer fee excluded);
    ``best_price`` what the cheapest placement would have cost when it was placed: the sum of
    the ``replicas`` cheapest prices among the providers that fit (for one replica, the
    cheapest price). ``finished_s`` is None for a job that never ended.
    """

    id: str
    task: str
    client: str
    submitted_s: float
    finished_s: float | None
    outcome: str
    provider: str = ""
    price_paid: int = 0
    best_price: int = 0
    replicas: int = 1


@dataclass
class FaultRecord:
    """A fault as applied: when (seconds from the start of the load), and when the tool saw
    its effect detected (e.g. the first failover off a killed provider, the first throttled
    flood message) and healed (e.g. the restarted node's first job, the first cross-side
    message after a heal); None where that did not happen or does not apply."""

    at_s: float
    kind: str
    target: str = ""
    detected_s: float | None = None
    healed_s: float | None = None
    detail: str = ""


@dataclass
class RunRecord:
    """Everything a run produced, as plain data.

    ``meta``: tool ("cluster" | "simulator"), scenario, seed, nodes, jobs, wall_s,
    peak_rss_mb, modelled (list of str), not_modelled (list of str), and anything else the
    tool wants shown. ``reputation``: samples ``(t_s, observer, provider, score, liar)``.
    ``counters``: named figures (flood_sent, flood_dropped, paid_twice, lost_jobs, ...).
    """

    meta: dict[str, Any] = field(default_factory=dict)
    jobs: list[JobRecord] = field(default_factory=list)
    faults: list[FaultRecord] = field(default_factory=list)
    balances_before: dict[str, int] = field(default_factory=dict)
    balances_after: dict[str, int] = field(default_factory=dict)
    reputation: list[tuple[float, str, str, float, bool]] = field(default_factory=list)
    counters: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "version": RECORD_VERSION,
            "meta": dict(self.meta),
            "jobs": [dict(vars(j)) for j in self.jobs],  # vars, not asdict: 20x faster
            "faults": [dict(vars(f)) for f in self.faults],
            "balances_before": dict(self.balances_before),
            "balances_after": dict(self.balances_after),
            "reputation": [list(s) for s in self.reputation],
            "counters": dict(self.counters),
        }

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> RunRecord:
        if doc.get("version", RECORD_VERSION) != RECORD_VERSION:
            raise ValueError(f"report.json version {doc.get('version')!r}; "
                             f"this meca-node reads version {RECORD_VERSION}")
        return cls(
            meta=dict(doc.get("meta", {})),
            jobs=[JobRecord(**j) for j in doc.get("jobs", [])],
            faults=[FaultRecord(**f) for f in doc.get("faults", [])],
            balances_before={k: int(v) for k, v in doc.get("balances_before", {}).items()},
            balances_after={k: int(v) for k, v in doc.get("balances_after", {}).items()},
            reputation=[(float(t), str(o), str(p), float(s), bool(liar))
                        for t, o, p, s, liar in doc.get("reputation", [])],
            counters=dict(doc.get("counters", {})),
        )


def read_record(path: Path) -> RunRecord:
    """A record back from a ``report.json``."""
    return RunRecord.from_json(json.loads(Path(path).read_text()))


# ---------------------------------------------------------------- figures ----

def percentile(sorted_values: list[float], p: float) -> float | None:
    """Nearest-rank percentile of an ascending list (p in 0..100); None when empty."""
    if not sorted_values:
        return None
    rank = max(1, math.ceil(p / 100.0 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def _latencies(jobs: list[JobRecord]) -> list[float]:
    return sorted(j.finished_s - j.submitted_s for j in jobs
                  if j.outcome == OK and j.finished_s is not None)


def _ratios(jobs: list[JobRecord]) -> list[float]:
    return sorted(j.price_paid / j.best_price for j in jobs
                  if j.outcome == OK and j.best_price > 0)


def final_scores(record: RunRecord) -> tuple[dict[str, float], set[str]]:
    """Each provider's last score, averaged over the observers that rated it, and the set
    of providers marked liars."""
    last: dict[tuple[str, str], tuple[float, float]] = {}
    liars: set[str] = set()
    for t, observer, provider, score, liar in record.reputation:
        if liar:
            liars.add(provider)
        prev = last.get((observer, provider))
        if prev is None or t >= prev[0]:
            last[(observer, provider)] = (t, score)
    sums: dict[str, list[float]] = {}
    for (_, provider), (_, score) in last.items():
        sums.setdefault(provider, []).append(score)
    return {p: sum(v) / len(v) for p, v in sums.items()}, liars


def summary(record: RunRecord) -> dict[str, Any]:
    """The run's figures as plain data (what ``--json`` prints and the page shows)."""
    jobs = record.jobs
    ok = sum(1 for j in jobs if j.outcome == OK)
    failures: dict[str, int] = {}
    for j in jobs:
        if j.outcome != OK:
            failures[j.outcome] = failures.get(j.outcome, 0) + 1
    lat = _latencies(jobs)
    ratios = _ratios(jobs)
    before = sum(record.balances_before.values())
    after = sum(record.balances_after.values())
    scores, liars = final_scores(record)
    honest = [s for p, s in scores.items() if p not in liars]
    lying = [s for p, s in scores.items() if p in liars]
    meta = record.meta
    return {
        "tool": meta.get("tool"),
        "scenario": meta.get("scenario"),
        "seed": meta.get("seed"),
        "nodes": meta.get("nodes"),
        "wall_s": meta.get("wall_s"),
        "peak_rss_mb": meta.get("peak_rss_mb"),
        "jobs": len(jobs),
        "ok": ok,
        "failed": len(jobs) - ok,
        "success_rate": ok / len(jobs) if jobs else None,
        "failures": dict(sorted(failures.items(), key=lambda kv: (-kv[1], kv[0]))),
        "latency_s": {
            "p50": percentile(lat, 50), "p95": percentile(lat, 95),
            "p99": percentile(lat, 99), "max": lat[-1] if lat else None,
            "mean": sum(lat) / len(lat) if lat else None,
        },
        "placement": {
            "jobs": len(ratios),
            "median_ratio": percentile(ratios, 50),
            "p95_ratio": percentile(ratios, 95),
            "at_best_share": sum(1 for r in ratios if r <= 1.0) / len(ratios) if ratios else None,
        },
        "money": {
            "total_before": before, "total_after": after, "conserved": before == after,
            "delta": after - before, "accounts": len(record.balances_after),
        },
        "faults": [
            {"at_s": f.at_s, "kind": f.kind, "target": f.target,
             "detected_after_s": None if f.detected_s is None else f.detected_s - f.at_s,
             "healed_after_s": None if f.healed_s is None else f.healed_s - f.at_s,
             "detail": f.detail}
            for f in record.faults
        ],
        "reputation": {
            "honest_min": min(honest) if honest else None,
            "honest_mean": sum(honest) / len(honest) if honest else None,
            "liar_max": max(lying) if lying else None,
            "liar_mean": sum(lying) / len(lying) if lying else None,
            "liars_below_honest": (max(lying) < min(honest)) if honest and lying else None,
        },
        "counters": dict(record.counters),
        "modelled": list(meta.get("modelled", [])),
        "not_modelled": list(meta.get("not_modelled", [])),
    }


# ------------------------------------------------------------------ plots ----

def _plots(record: RunRecord) -> dict[str, bytes]:
    """name -> PNG bytes."""
    import numpy as np
    from matplotlib.figure import Figure

    def png(fig: Any) -> bytes:
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=90)
        return buf.getvalue()

    jobs = record.jobs
    n = len(jobs)
    submitted = np.fromiter((j.submitted_s for j in jobs), float, n)
    finished = np.fromiter((math.nan if j.finished_s is None else j.finished_s for j in jobs),
                           float, n)
    ok = np.fromiter((j.outcome == OK for j in jobs), bool, n)
    paid = np.fromiter((j.price_paid for j in jobs), float, n)
    best = np.fromiter((j.best_price for j in jobs), float, n)
    ended = np.where(np.isnan(finished), submitted, finished)
    out: dict[str, bytes] = {}

    # jobs completed and failed per second, faults marked
    fig = Figure(figsize=(9, 3.6))
    ax = fig.add_subplot()
    if n:
        # one-second bins, wider (whole seconds) when the run is longer than 600 s
        width = max(1, math.ceil(float(ended.max()) / 600))
        bins = int(float(ended.max()) // width) + 1
        slot = (np.clip(ended, 0, None) // width).astype(np.int64)
        edges = np.arange(bins + 1) * width
        for mask, label, colour in ((ok, "completed", "tab:green"), (~ok, "failed", "tab:red")):
            ax.stairs(np.bincount(slot[mask], minlength=bins)[:bins] / width, edges,
                      label=label, color=colour)
    for f in record.faults:
        ax.axvline(f.at_s, color="0.4", linestyle="--", linewidth=0.8)
        ax.annotate(f.kind, (f.at_s, 1.0), xycoords=("data", "axes fraction"), rotation=90,
                    xytext=(-2, -4), textcoords="offset points", va="top", ha="right",
                    fontsize=8, color="0.3")
    ax.set_xlabel("time since the load started (s)")
    ax.set_ylabel("jobs per second")
    ax.set_title("Jobs completed and failed over time")
    if n:
        ax.set_ylim(0, ax.get_ylim()[1] * 1.15)  # room for the fault labels
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    fig.tight_layout()
    out["jobs_over_time"] = png(fig)

    # latency: histogram and CDF
    lat = np.sort((finished - submitted)[ok & ~np.isnan(finished)])
    fig = Figure(figsize=(9, 3.4))
    ax1, ax2 = fig.subplots(1, 2)
    if lat.size:
        ax1.hist(lat, bins=min(60, max(5, lat.size // 20)), color="tab:blue")
        q = np.linspace(0, 1, min(lat.size, 2000))
        ax2.plot(np.quantile(lat, q), q, color="tab:blue")
        for p in (50, 95, 99):
            ax2.axhline(p / 100, color="0.7", linewidth=0.6)
    else:
        ax1.text(0.5, 0.5, "no completed jobs", ha="center", transform=ax1.transAxes)
    ax1.set_xlabel("latency (s)")
    ax1.set_ylabel("jobs")
    ax1.set_title("Job latency")
    ax2.set_xlabel("latency (s)")
    ax2.set_ylabel("share of completed jobs")
    ax2.set_title("Latency CDF")
    fig.tight_layout()
    out["latency"] = png(fig)

    # placement quality
    sel = ok & (best > 0)
    ratio = paid[sel] / best[sel]
    fig = Figure(figsize=(6, 3.4))
    ax = fig.add_subplot()
    if ratio.size:
        ax.hist(ratio, bins=40, color="tab:purple")
        ax.axvline(1.0, color="0.3", linestyle="--", linewidth=0.8)
    else:
        ax.text(0.5, 0.5, "no paid jobs", ha="center", transform=ax.transAxes)
    ax.set_xlabel("price paid / best price available")
    ax.set_ylabel("jobs")
    ax.set_title("Placement quality")
    fig.tight_layout()
    out["placement"] = png(fig)

    # balances
    before = record.balances_before
    after = record.balances_after
    fig = Figure(figsize=(9, 3.4))
    ax1, ax2 = fig.subplots(1, 2)
    totals = [sum(before.values()), sum(after.values())]
    bars = ax1.bar(["before", "after"], totals, color=["0.6", "tab:green" if totals[0] ==
                                                        totals[1] else "tab:red"])
    ax1.bar_label(bars, labels=[f"{t:,}" for t in totals], fontsize=8)
    ax1.set_title("Sum of all balances: " + ("conserved" if totals[0] == totals[1] else
                                              f"changed by {totals[1] - totals[0]:+,}"))
    accounts = sorted(set(before) | set(after))
    delta = np.fromiter((after.get(a, 0) - before.get(a, 0) for a in accounts), float,
                        len(accounts))
    if delta.size:
        ax2.hist(delta, bins=40, color="tab:orange")
    ax2.set_xlabel("balance after - before")
    ax2.set_ylabel("accounts")
    ax2.set_title("Change per account")
    fig.tight_layout()
    out["balances"] = png(fig)

    # reputation: liars against honest providers over time
    fig = Figure(figsize=(9, 3.6))
    ax = fig.add_subplot()
    if record.reputation:
        t_s, _, prov, score, liar = zip(*record.reputation)
        t = np.asarray(t_s, float)
        s = np.asarray(score, float)
        names, code = np.unique(np.asarray(prov, dtype=object).astype(str), return_inverse=True)
        is_liar = np.zeros(len(names), bool)
        is_liar[code[np.asarray(liar, bool)]] = True
        nb = 100
        lo, hi = float(t.min()), float(t.max())
        b = np.minimum(((t - lo) / ((hi - lo) or 1.0) * nb).astype(np.int64), nb - 1)
        key = b * len(names) + code
        sums = np.bincount(key, s, minlength=nb * len(names)).reshape(nb, len(names))
        cnts = np.bincount(key, minlength=nb * len(names)).reshape(nb, len(names))
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = np.where(cnts > 0, sums / np.maximum(cnts, 1), np.nan)
        centres = lo + (np.arange(nb) + 0.5) * ((hi - lo) or 1.0) / nb
        for mask, label, colour in ((~is_liar, "honest", "tab:blue"),
                                    (is_liar, "liars", "tab:red")):
            if not mask.any():
                continue
            cols = mean[:, mask]
            has = ~np.isnan(cols).all(axis=1)
            if not has.any():
                continue
            with np.errstate(invalid="ignore"):
                ax.plot(centres[has], np.nanmean(cols[has], axis=1), color=colour,
                        label=f"{label} (mean)")
                ax.fill_between(centres[has], np.nanmin(cols[has], axis=1),
                                np.nanmax(cols[has], axis=1), color=colour, alpha=0.2,
                                label=f"{label} (min..max)")
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    else:
        ax.text(0.5, 0.5, "no reputation samples", ha="center", transform=ax.transAxes)
    for f in record.faults:
        ax.axvline(f.at_s, color="0.6", linestyle=":", linewidth=0.8)
    ax.set_xlabel("time since the load started (s)")
    ax.set_ylabel("score (mean over observers)")
    ax.set_title("Reputation of liars and honest providers")
    fig.tight_layout()
    out["reputation"] = png(fig)
    return out


# ------------------------------------------------------------------- page ----

_CAPTIONS = {
    "jobs_over_time": "Jobs completed and failed per second; dashed lines mark the faults.",
    "latency": "Latency of completed jobs (submitted to result), histogram and CDF.",
    "placement": "Price paid over the best price available when the job was placed "
                 "(1 = the cheapest fitting providers).",
    "balances": "The sum of all balances before and after the run (green when equal), and "
                "each account's change.",
    "reputation": "Providers' scores over time (mean over observers per provider, then "
                  "mean and range over liars and over honest providers).",
}


def _fmt(v: Any) -> str:
    if v is None:
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "NO"
    if isinstance(v, float):
        if v.is_integer():
            return f"{int(v):,}"
        return f"{v:.3f}" if abs(v) < 1000 else f"{v:,.0f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def _rows(pairs: list[tuple[str, Any]]) -> str:
    return "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(_fmt(v))}</td></tr>"
                   for k, v in pairs)


def render_html(record: RunRecord, figures: dict[str, Any], pngs: dict[str, bytes]) -> str:
    s = figures
    lat, money, rep, pl = s["latency_s"], s["money"], s["reputation"], s["placement"]
    title = f"meca-node {s['tool'] or 'run'}: {s['scenario'] or 'scenario'}"
    main = _rows([
        ("tool", s["tool"]), ("scenario", s["scenario"]), ("seed", s["seed"]),
        ("nodes", s["nodes"]), ("jobs", s["jobs"]), ("completed", s["ok"]),
        ("failed", s["failed"]),
        ("success rate", None if s["success_rate"] is None else f"{s['success_rate']:.2%}"),
        ("latency p50 (s)", lat["p50"]), ("latency p95 (s)", lat["p95"]),
        ("latency p99 (s)", lat["p99"]), ("latency max (s)", lat["max"]),
        ("placement: median paid/best", pl["median_ratio"]),
        ("placement: share at the best price", pl["at_best_share"]),
        ("money conserved", money["conserved"]),
        ("total before", money["total_before"]), ("total after", money["total_after"]),
        ("liars below every honest provider", rep["liars_below_honest"]),
        ("wall time (s)", s["wall_s"]), ("peak RSS (MiB)", s["peak_rss_mb"]),
    ])
    failures = _rows(list(s["failures"].items())) or "<tr><td>none</td></tr>"
    counters = _rows(list(s["counters"].items())) or "<tr><td>none</td></tr>"
    fault_rows = "".join(
        "<tr>" + "".join(f"<td>{html.escape(_fmt(v))}</td>" for v in (
            f["at_s"], f["kind"], f["target"], f["detected_after_s"], f["healed_after_s"],
            f["detail"])) + "</tr>"
        for f in s["faults"]) or "<tr><td colspan=6>no faults</td></tr>"

    def items(xs: list[str]) -> str:
        return "".join(f"<li>{html.escape(str(x))}</li>" for x in xs) or "<li>–</li>"

    plots = "".join(
        f'<figure><img alt="{name}" src="data:image/png;base64,'
        f'{base64.b64encode(data).decode()}"><figcaption>{html.escape(_CAPTIONS[name])}'
        f"</figcaption></figure>"
        for name, data in pngs.items())
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font: 14px/1.4 system-ui, sans-serif; margin: 2em auto; max-width: 960px; color: #222 }}
table {{ border-collapse: collapse; margin: .5em 0 1.5em }}
th, td {{ border: 1px solid #ccc; padding: .2em .6em; text-align: left }}
th {{ background: #f4f4f4; font-weight: 600 }}
figure {{ margin: 1em 0 }} img {{ max-width: 100% }} figcaption {{ color: #555 }}
.cols {{ display: flex; gap: 3em }}
</style></head><body>
<h1>{html.escape(title)}</h1>
<h2>Summary</h2><table>{main}</table>
<div class="cols"><div><h2>Failures</h2><table>{failures}</table></div>
<div><h2>Counters</h2><table>{counters}</table></div></div>
<h2>Faults</h2>
<table><tr><th>at (s)</th><th>kind</th><th>target</th><th>detected after (s)</th>
<th>healed after (s)</th><th>detail</th></tr>{fault_rows}</table>
<div class="cols"><div><h2>Modelled</h2><ul>{items(s["modelled"])}</ul></div>
<div><h2>Not modelled</h2><ul>{items(s["not_modelled"])}</ul></div></div>
<h2>Plots</h2>{plots}
<p>Raw figures: <a href="report.json">report.json</a>.</p>
</body></html>
"""


def write_report(record: RunRecord, out_dir: Path) -> Path:
    """Write ``index.html``, one PNG per plot and ``report.json`` into ``out_dir`` (made if
    missing); returns the page's path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    figures = summary(record)
    pngs = _plots(record)
    for name, data in pngs.items():
        (out_dir / f"{name}.png").write_bytes(data)
    # dumps, not dump: dump streams through the slow pure-Python encoder
    (out_dir / "report.json").write_text(json.dumps(record.to_json(), separators=(",", ":")))
    (out_dir / "summary.json").write_text(json.dumps(figures, indent=1) + "\n")
    page = out_dir / "index.html"
    page.write_text(render_html(record, figures, pngs), encoding="utf-8")
    return page
