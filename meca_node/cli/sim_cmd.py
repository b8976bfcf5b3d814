"""``meca-node sim ...``: simulations of many nodes. ``sim run`` is the deterministic
discrete-event simulator (``meca_node.sim.des``)."""

from __future__ import annotations

import gc
import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from meca_node.cli import main as m

sim_app = typer.Typer(no_args_is_help=True, help="Simulate a network of many nodes from a "
                                                 "scenario file (simulations/scenarios/).")
m.app.add_typer(sim_app, name="sim")

REPORTS = Path("simulations") / "reports"


@sim_app.command("run")
def sim_run(
    scenario: Annotated[Path, typer.Argument(help="scenario file (TOML)")],
    nodes: Annotated[Optional[int], typer.Option(
        "--nodes", min=1, help="scale the node groups to about this many nodes")] = None,
    seed: Annotated[Optional[int], typer.Option(
        "--seed", min=0, help="random seed (default: the scenario's)")] = None,
    out: Annotated[Optional[Path], typer.Option(
        "--out", help="report folder (default: simulations/reports/<scenario>-sim-<seed>)")
    ] = None,
    sample: Annotated[int, typer.Option(
        "--sample", min=0, max=1000, help="clients with views of their own")] = 50,
    verify: Annotated[str, typer.Option(
        "--verify", help="where each signature is verified once: 'worker' (a second "
                         "process) or 'inline'")] = "worker",
    json_out: m.JsonOut = False,
) -> None:
    """Run the deterministic simulator: the same scenario and seed give the same report
    (all but the measured meta.wall_s, peak_rss_mb, jobs_per_wall_s, cpu_s and
    verifier_cpu_s; meta.digest hashes the rest). Writes index.html, the plots,
    report.json and summary.json; prints the figures (--json: summary.json's)."""
    from meca_node.sim.des import SimError, run_scenario
    from meca_node.sim.report import summary, write_report
    from meca_node.sim.scenario import ScenarioError, load_scenario

    if verify not in ("worker", "inline"):
        raise m._fail(f"--verify must be worker or inline, not {verify!r}")
    try:
        sc = load_scenario(scenario)
        if nodes is not None:
            sc = sc.with_nodes(nodes)
    except ScenarioError as exc:
        raise m._fail(str(exc)) from None
    used_seed = sc.seed if seed is None else seed
    folder = out or REPORTS / f"{sc.name}-sim-{used_seed}"
    if not json_out:
        m.err.print(f"simulating {sc.name}: {sc.node_count()} nodes, up to {sc.load.jobs} "
                    f"jobs, seed {used_seed} ...", highlight=False)
    try:
        result = run_scenario(sc, used_seed, sample=sample, verify=verify)
    except SimError as exc:
        raise m._fail(f"the simulation broke an invariant: {exc}", 1) from None
    # the run's millions of objects live until the process exits: frozen, the cyclic
    # collector stops re-scanning them while the report is made (at 10,000 nodes those
    # scans cost more than the report itself, ~2.5 s)
    gc.freeze()
    page = write_report(result.record, folder)
    figures = summary(result.record)
    if json_out:
        figures["report"] = str(page)
        figures["digest"] = result.record.meta["digest"]
        figures["jobs_per_wall_s"] = result.jobs_per_wall_s
        print(json.dumps(figures, indent=1))
        return
    lat = figures["latency_s"]
    money = figures["money"]
    rate = figures["success_rate"]
    m.out.print(
        f"{figures['jobs']} jobs on {figures['nodes']} nodes: {figures['ok']} completed "
        f"({(rate or 0):.2%}), {figures['failed']} failed "
        f"{dict(figures['failures']) or ''}".rstrip(), highlight=False)
    if lat["p50"] is not None:
        m.out.print(f"latency p50 {lat['p50']:.3f} s, p95 {lat['p95']:.3f} s, "
                    f"p99 {lat['p99']:.3f} s", highlight=False)
    m.out.print(f"money conserved: {'yes' if money['conserved'] else 'NO'} "
                f"(total {money['total_after']:,})", highlight=False)
    for f in figures["faults"]:
        seen, healed = f["detected_after_s"], f["healed_after_s"]
        m.out.print(f"fault {f['kind']} {f['target']} at {f['at_s']:g} s: detected "
                    + (f"after {seen:.3f} s" if seen is not None else "-") + ", healed "
                    + (f"after {healed:.3f} s" if healed is not None else "-")
                    + (f"; {f['detail']}" if f["detail"] else ""), highlight=False)
    m.out.print(f"simulated {result.record.meta['simulated_s']:.1f} s in "
                f"{result.wall_s:.1f} s wall ({result.cpu_s:.1f} s CPU here, "
                f"{result.verifier_cpu_s:.1f} s verifying signatures), "
                f"{result.jobs_per_wall_s:,.0f} jobs/s, peak RSS {result.peak_rss_mb:.0f} MiB, "
                f"{result.events:,} events", highlight=False)
    m.out.print(f"report: {page}", highlight=False)


@sim_app.command("cluster")
def sim_cluster(
    scenario: Annotated[Path, typer.Argument(help="scenario file (TOML)")],
    out: Annotated[Optional[Path], typer.Option(
        "--out", help="report folder (default: simulations/reports/<scenario>-cluster)")
    ] = None,
    time_limit: Annotated[Optional[float], typer.Option(
        "--time-limit", min=1, help="stop everything this many seconds after the load "
                                    "starts (set-up has bounds of its own; default: the "
                                    "scenario's duration + 120)")
    ] = None,
    work_dir: Annotated[Optional[Path], typer.Option(
        "--work-dir", help="the nodes' data dirs (default: a temporary folder)")] = None,
    keep_work: Annotated[bool, typer.Option(
        "--keep-work", help="keep the nodes' data dirs after the run")] = False,
    json_out: m.JsonOut = False,
) -> None:
    """Run a scenario as real node processes on 127.0.0.x (a Docker engine runs the jobs):
    the load through the Python API, the faults on schedule, every node stopped at the end
    (also on Ctrl-C). Writes index.html, the plots, report.json and cluster.json."""
    from meca_node.api import AsyncClient
    from meca_node.sim.report import summary, write_report
    from meca_node.sim.scenario import ScenarioError, load_scenario
    from meca_node.sim.scenario_cluster import SimClusterError, run_cluster

    try:
        sc = load_scenario(scenario)
    except ScenarioError as exc:
        raise m._fail(str(exc)) from None
    folder = out or REPORTS / f"{sc.name}-cluster"
    try:
        record, _ = run_cluster(sc, folder, AsyncClient, time_limit_s=time_limit,
                                work_dir=work_dir, keep_work=keep_work,
                                scenario_path=scenario)
    except SimClusterError as exc:
        raise m._fail(str(exc), 1) from None
    page = write_report(record, folder)
    figures = summary(record)
    if json_out:
        print(json.dumps({**figures, "report": str(page)}, indent=1))
    else:
        lat, rate = figures["latency_s"], figures["success_rate"]
        m.out.print(f"{figures['jobs']} jobs on {figures['nodes']} nodes: {figures['ok']} "
                    f"completed ({(rate or 0):.2%}) {dict(figures['failures']) or ''}".rstrip()
                    + (f"; latency p50 {lat['p50']:.2f} s, p99 {lat['p99']:.2f} s"
                       if lat["p50"] is not None else ""), highlight=False)
        for f in figures["faults"]:
            m.out.print(f"fault {f['kind']} {f['target']} at {f['at_s']:g} s: detected after "
                        f"{f['detected_after_s']} s, healed after {f['healed_after_s']} s"
                        + (f"; {f['detail']}" if f["detail"] else ""), highlight=False)
        m.out.print(f"report: {page}", highlight=False)
    if record.meta["interrupted"]:
        raise typer.Exit(130)
    if not record.meta["complete"]:
        raise m._fail(f"stopped at the time limit ({record.meta['time_limit_s']:g} s); the "
                      f"report in {folder} is partial", 1)
