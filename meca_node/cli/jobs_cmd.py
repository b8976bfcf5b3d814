"""``meca-node run``: run an offered task on a provider; the output bytes go to stdout
(or with ``--detach`` the job's id: ``meca-node job ...`` manages it)."""

from __future__ import annotations

import base64
import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from meca_node.cli import main as m
from meca_node.cli.ipfs_cmd import follow_job


#: a literal --input travels in the control request; a file is read by the node itself
MAX_LITERAL_INPUT = 32 * 1024


def _input_field(value: str) -> dict:
    """The job input for the control API: ``input_path`` for @FILE (the node reads it, up
    to the job data cap), ``input_b64`` for a literal."""
    if value.startswith("@"):
        path = Path(value[1:]).expanduser().resolve()
        if not path.is_file():
            raise m._fail(f"the input file {path} does not exist or is not a file")
        return {"input_path": str(path)}
    data = value.encode()
    if len(data) > MAX_LITERAL_INPUT:
        raise m._fail(f"the --input text is {len(data)} bytes; give inputs over "
                      f"{MAX_LITERAL_INPUT} bytes as a file: --input @FILE")
    return {"input_b64": base64.b64encode(data).decode()}


@m.app.command("run")
def run(task: Annotated[str, typer.Argument(help="offer id, task name, or name@key-prefix")],
        input: Annotated[str, typer.Option("--input", help="JSON input, or @FILE")] = "",
        max_price: Annotated[int, typer.Option("--max-price", min=0,
                                               help="most you pay (provider price + fee)")]
        = 100,
        timeout: Annotated[float, typer.Option(help="seconds for the job to answer, not counting the image and input pulls")] = 120.0,
        provider: Annotated[str, typer.Option(
            "--provider", help="run on this provider (peer id) only")] = "",
        replicas: Annotated[int, typer.Option(
            "--replicas", min=1, max=16,
            help="run on this many providers (distinct keys and addresses) at once; pay "
                 "only those whose result is in the majority")] = 1,
        dry_run: Annotated[bool, typer.Option(
            "--dry-run", help="show how the providers rank for this job; run nothing")] = False,
        detach: Annotated[bool, typer.Option(
            "--detach", "-d", help="print the job's id and return at once; the node runs "
                                   "it (meca-node job get ID for its output)")] = False,
        json_out: m.JsonOut = False,
        data_dir: m.DataDir = None, config: m.ConfigFile = None):
    """Run a task the network offers; its output goes to stdout, progress to stderr."""
    if dry_run:
        return _dry_run(m._client(data_dir, config), task, max_price, json_out)
    if not input:
        raise m._fail("give the job's input: --input JSON or --input @FILE")
    body = {"task": task, **_input_field(input), "max_price": max_price, "timeout_s": timeout,
            "provider": provider, "replicas": replicas}
    client = m._client(data_dir, config)
    client.timeout_s = max(client.timeout_s, 10.0)
    if detach:
        job = m._call(client.post, "/v1/jobs/run", {**body, "detach": True})["job"]
        print(json.dumps({"job": job}) if json_out else job)
        m.err.print(f"job {job} runs in the node; its output: meca-node job get {job}",
                    highlight=False)
        return
    write_done(follow_job(client, "/v1/jobs/run", body, progress_printer(),
                          failed="the job failed: "), json_out)


def progress_printer():
    """``on_progress`` for :func:`follow_job`: a job's progress lines on stderr."""
    last = {"stage": "", "percent": -100, "detail": ""}

    def show(p: dict) -> None:
        # the provider repeats progress every second (its keep-alive while it pulls and
        # loads): a line per new stage or news (a new place in a queue), and per 10
        # points of a pull
        same = p["stage"] == last["stage"]
        if same and (p["percent"] < last["percent"] + 10 if p["stage"] == "pulling"
                     else p["detail"] == last["detail"] or p["stage"] == "loading"):
            return
        last.update(stage=p["stage"], percent=p["percent"], detail=p["detail"])
        percent = f" {p['percent']}%" if p["stage"] == "pulling" else ""
        m.err.print(f"==> {p['stage']}{percent} {p['detail']}".rstrip(), highlight=False,
                    markup=False)

    return show


def write_done(done: dict, json_out: bool) -> None:
    """A job's result as ``run`` prints it: the output bytes on stdout (or JSON), who ran
    it and what it cost on stderr."""
    output = base64.b64decode(done["output_b64"])
    if json_out:
        print(json.dumps({**{k: v for k, v in done.items() if k != "output_b64"},
                          "output": output.decode("utf-8", "replace")}))
        return
    paid = (f"paid {done['paid']} (price {done['price']} + developer fee) with a signed "
            "receipt" if done.get("paid") else "free")
    parts = done.get("replicas") or []
    if parts:
        agreed = sum(p["outcome"] == "paid" for p in parts)
        paid = f"{agreed} of {len(parts)} replicas agreed; paid {done['paid']} in all"
        for p in parts:
            m.err.print(f"  {p['provider']} {p['outcome']}"
                        + (f", sha256 {p['sha256'][:16]}" if p["sha256"] else "")
                        + (f", paid {p['paid']}" if p["paid"] else ""), highlight=False)
    job = f"; job {done['job']}" if done.get("job") else ""
    m.err.print(f"ran on {done['provider']} in {done['seconds']:.3f} s; {paid}{job}",
                highlight=False)
    sys.stdout.buffer.write(output)
    sys.stdout.buffer.flush()


def _dry_run(client, task: str, max_price: int, json_out: bool) -> None:
    """``run --dry-run``: the providers in the order a job would try them, then the others
    with every reason; exit 1 when none fits."""
    r = m._call(client.post, "/v1/jobs/match", {"task": task, "max_price": max_price})
    if json_out:
        print(json.dumps(r))
    else:
        table = Table("rank", "peer id", "score", "price", *r["weights"], title=(
            f"{r['offer']} for at most {r['max_price']} (weights: " + ", ".join(
                f"{k} {v:g}" for k, v in r["weights"].items()) + ")"))
        for i, row in enumerate(r["ranked"], 1):
            table.add_row(str(i), row["peer_id"], f"{row['score']:.3f}", str(row["price"]),
                          *(f"{row['parts'][k]:.2f}" for k in r["weights"]))
        m.out.print(table)
        for u in r["unfit"]:
            m.out.print(f"cannot: {u['peer_id']} " + ", ".join(x["text"] for x in u["reasons"]),
                        highlight=False)
        if r["summary"]:
            m.err.print(f"no provider fits: {r['summary']}", highlight=False)
    if not r["ranked"]:
        raise typer.Exit(1)


@m.app.command("hosts")
def hosts(json_out: m.JsonOut = False, data_dir: m.DataDir = None,
          config: m.ConfigFile = None):
    """Providers this node knows, with its own reputation score of each (best first)."""
    r = m._call(m._client(data_dir, config).get, "/v1/hosts")
    if json_out:
        print(json.dumps(r))
        return
    table = Table("peer id", "score", "jobs", "price", "free cpu", "free MiB", "gpus",
                  "environments", "cached", "queue", "advert age", "note")
    for h in r["hosts"]:
        table.add_row(h["peer_id"], f"{h['reputation']:.2f}", str(h["jobs"]), str(h["price"]),
                      f"{h['free']['cpu']:g}", str(h["free"]["mem_mib"]),
                      str(h["free"]["gpus"]),
                      ", ".join(f"{k} {v}" for k, v in h["environments"].items()),
                      str(h["cached_images"]), str(h["queue"]), f"{h['advert_age_s']:g} s",
                      h["refused"] or ("" if h["connected"] else "not connected"))
    m.out.print(table)
