"""``meca-node run``: run an offered task on a provider; the output bytes go to stdout."""

from __future__ import annotations

import base64
import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from meca_node.cli import main as m
from meca_node.cli.ipfs_cmd import follow_job


def _input_bytes(value: str) -> bytes:
    if value.startswith("@"):
        path = Path(value[1:])
        try:
            return path.read_bytes()
        except OSError as exc:
            raise m._fail(f"cannot read the input file {path}: {exc.strerror}") from None
    return value.encode()


@m.app.command("run")
def run(task: Annotated[str, typer.Argument(help="offer id, task name, or name@key-prefix")],
        input: Annotated[str, typer.Option("--input", help="JSON input, or @FILE")],
        max_price: Annotated[int, typer.Option("--max-price", min=0,
                                               help="most you pay (provider price + fee)")]
        = 100,
        timeout: Annotated[float, typer.Option(help="seconds for the whole job")] = 120.0,
        json_out: m.JsonOut = False,
        data_dir: m.DataDir = None, config: m.ConfigFile = None):
    """Run a task the network offers; its output goes to stdout, progress to stderr."""
    body = {"task": task, "input_b64": base64.b64encode(_input_bytes(input)).decode(),
            "max_price": max_price, "timeout_s": timeout}
    client = m._client(data_dir, config)
    client.timeout_s = max(client.timeout_s, 10.0)

    def show(p: dict) -> None:
        m.err.print(f"==> {p['stage']} {p['detail']}".rstrip(), highlight=False, markup=False)

    done = follow_job(client, "/v1/jobs/run", body, show, failed="the job failed: ")
    output = base64.b64decode(done["output_b64"])
    if json_out:
        print(json.dumps({**{k: v for k, v in done.items() if k != "output_b64"},
                          "output": output.decode("utf-8", "replace")}))
        return
    m.err.print(f"ran on {done['provider']} for {done['price']} in {done['seconds']} s",
                highlight=False)
    sys.stdout.buffer.write(output)
    sys.stdout.buffer.flush()
