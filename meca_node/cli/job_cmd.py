"""``meca-node job ...``: the jobs this node ran (its history): list, describe, logs, get,
cancel. An id may be shortened to any unique prefix."""

from __future__ import annotations

import base64
import json
import sys
import time
from typing import Annotated, Optional

import typer
from rich.table import Table

from meca_node.cli import main as m
from meca_node.cli.ipfs_cmd import follow_job
from meca_node.cli.jobs_cmd import progress_printer, write_done

job_app = typer.Typer(no_args_is_help=True, help="The jobs this node ran: list, describe, "
                                                 "logs, get (the output), cancel.")
m.app.add_typer(job_app, name="job")

JobId = Annotated[str, typer.Argument(help="job id, or a unique start of it "
                                           "(see meca-node job list)")]


def _when(t: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)) if t else "-"


def _took(job: dict) -> str:
    if job["finished"] is None:
        return f"{time.time() - job['created']:.1f} s so far"
    return f"{job['finished'] - job['created']:.1f} s"


@job_app.command("list")
def job_list(limit: Annotated[int, typer.Option(min=1, max=10_000,
                                                help="how many, newest first")] = 20,
             state: Annotated[Optional[str], typer.Option(
                 help="only jobs in this state: queued, running, done, failed, cancelled, "
                      "interrupted")] = None,
             json_out: m.JsonOut = False, data_dir: m.DataDir = None,
             config: m.ConfigFile = None):
    """The jobs this node ran, newest first."""
    params = {"limit": limit, **({"state": state} if state else {})}
    r = m._call(m._client(data_dir, config).get, "/v1/jobs", **params)
    if json_out:
        print(json.dumps(r))
        return
    table = Table("job", "task", "state", "provider", "paid", "output", "created", "took")
    for j in r["jobs"]:
        table.add_row(j["id"], j["offer"] or j["task"], j["state"], j["provider"][-12:],
                      str(j["paid"]), "-" if j["output_size"] is None else
                      f"{j['output_size']} B", _when(j["created"]), _took(j))
    m.out.print(table)
    m.err.print(f"{len(r['jobs'])} of {r['total']} job(s) (the history keeps the newest "
                f"{r['kept']}); details: meca-node job describe ID", highlight=False)


@job_app.command("describe")
def job_describe(job: JobId, json_out: m.JsonOut = False, data_dir: m.DataDir = None,
                 config: m.ConfigFile = None):
    """A job's state, provider, payment and receipt, and its timeline."""
    r = m._call(m._client(data_dir, config).get, "/v1/jobs/describe", id=job)
    if json_out:
        print(json.dumps(r))
        return
    j = r["job"]
    rows = [("job", f"{j['id']}  {j['state']}"),
            ("task", j["task"] + (f" ({j['offer']})" if j["offer"] and j["offer"] != j["task"]
                                  else "")),
            ("input", f"{j['input_size']} bytes, max price {j['max_price']}"),
            ("provider", j["provider"] or "-"),
            ("paid", f"{j['paid']} (price {j['price']} + developer fee)" if j["paid"]
             else "nothing"),
            ("receipt", j["receipt"] or "-"),
            ("output", "-" if j["output_size"] is None else f"{j['output_size']} bytes"
             + ("" if j["output_kept"] else " (no longer kept)")),
            ("created", _when(j["created"])),
            ("finished", f"{_when(j['finished'])} (took {_took(j)})" if j["finished"]
             else "-")]
    if j["wire_job"]:
        rows.append(("wire job", j["wire_job"]))
    if j["error"]:
        rows.append(("error", j["error"]))
    for name, value in rows:
        m.out.print(f"{name:9} {value}", highlight=False, markup=False)
    table = Table("at", "stage", "detail", title="timeline")
    for e in r["timeline"]:
        repeats = (f" (x{e['repeats']} until +{e['last'] - j['created']:.1f} s)"
                   if e["repeats"] > 1 else "")
        percent = f" {e['percent']}%" if e["stage"] == "pulling" else ""
        table.add_row(f"+{e['time'] - j['created']:.3f} s", e["stage"] + percent,
                      e["detail"] + repeats)
    m.out.print(table)
    if j["events_dropped"]:
        m.out.print(f"({j['events_dropped']} older event(s) were dropped: a job keeps at "
                    "most 200)", highlight=False)


@job_app.command("logs")
def job_logs(job: JobId, data_dir: m.DataDir = None, config: m.ConfigFile = None):
    """The app's log of that run (its last 16 KiB), as the provider sent it."""
    r = m._call(m._client(data_dir, config).get, "/v1/jobs/logs", id=job)
    text = base64.b64decode(r["log_b64"])
    if not text:
        m.err.print(f"job {r['job']} ({r['state']}) has no log: it did not run to the end, "
                    "or its provider sent none", highlight=False)
        return
    sys.stdout.buffer.write(text)
    sys.stdout.buffer.flush()


@job_app.command("get")
def job_get(job: JobId, json_out: m.JsonOut = False, data_dir: m.DataDir = None,
            config: m.ConfigFile = None):
    """A job's output on stdout as `run` writes it, waiting for the job if it runs still;
    exit 1 if it failed, was cancelled or interrupted."""
    client = m._client(data_dir, config)
    client.timeout_s = max(client.timeout_s, 10.0)
    done = follow_job(client, "/v1/jobs/get", {"id": job}, progress_printer(),
                      failed=f"job {job}: ")
    write_done(done, json_out)


@job_app.command("cancel")
def job_cancel(job: JobId, json_out: m.JsonOut = False, data_dir: m.DataDir = None,
               config: m.ConfigFile = None):
    """Stop a running job: its stream to the provider closes, which stops the container."""
    client = m._client(data_dir, config)
    client.timeout_s = max(client.timeout_s, 15.0)  # the node waits up to 10 s for the end
    r = m._call(client.post, "/v1/jobs/cancel", {"id": job})
    if json_out:
        print(json.dumps(r))
        return
    if r["state"] in ("queued", "running"):
        raise m._fail(f"job {r['job']} was told to stop but had not ended yet; `meca-node job "
                      f"describe {r['job']}` shows when it does", 1)
    if r["state"] != "cancelled":  # it ended on its own first
        raise m._fail(f"job {r['job']} ended {r['state']} before it could be cancelled", 1)
    m.out.print(f"job {r['job']} cancelled; " + (f"{r['paid']} had been paid for it" if
                                                 r["paid"] else "nothing was paid"),
                highlight=False)
