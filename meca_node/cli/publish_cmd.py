"""``meca-node task publish`` and ``task unpublish``: offer a tested task to the network."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Annotated

import typer

from meca_node.cli import main as m
from meca_node.cli.ipfs_cmd import stream_job
from meca_node.control import ControlError


@m.task_app.command("publish")
def task_publish(
        folder: Annotated[Path, typer.Argument(help="task folder")],
        fee: Annotated[int, typer.Option("--fee", min=0,
                                         help="your fee per job, in the smallest unit")],
        no_test: Annotated[bool, typer.Option(
            "--no-test", help="publish without running `task test` first")] = False,
        quiet: Annotated[bool, typer.Option(help="hide the build output")] = False,
        data_dir: m.DataDir = None, config: m.ConfigFile = None):
    """Test the task, store its image in the node's IPFS, gossip a signed offer."""
    from meca_node.node.developer import image_tag, test_task
    from meca_node.runtime import machine_arch
    from meca_node.runtime.executor import TaskRunError
    from meca_node.store.taskdir import folder_digest

    spec = m._spec_or_exit(folder)
    client = m._client(data_dir, config)  # the node must run: say so before a long test
    executor = m._executor()
    on_event = m._progress(quiet)
    tag = image_tag(spec, folder_digest(folder))
    try:
        if no_test:
            on_event("build", f"building {tag} (not tested: --no-test)")
            m._run_interruptible(executor.build, folder, tag,
                                 lambda line: on_event("build-log", line))
        else:
            report = m._run_interruptible(test_task, spec, folder, folder_digest(folder),
                                          executor, on_event)
            if not report.ok:
                m.err.print("[bold red]not published: the reply differs from "
                            "example_output.bin[/]", highlight=False)
                m.err.print(report.mismatch, highlight=False, markup=False)
                raise typer.Exit(1)
            on_event("test", "PASS: the reply equals example_output.bin")
    except TaskRunError as exc:
        raise m._run_failed(exc) from None
    r = spec.resources
    body = {"image": tag, "name": spec.name, "description": spec.description,
            "cpu_milli": r.cpu_milli, "mem_mib": r.mem_mib,
            "gpu_count": r.gpu_count if r.use_gpu else 0,
            "environment": "docker-gpu" if r.use_gpu else "docker-cpu",
            "arch": machine_arch(), "fee": fee,
            "example_input_sha256": hashlib.sha256(spec.example_input).hexdigest(),
            "example_output_sha256": hashlib.sha256(spec.example_output).hexdigest()}
    on_event("publish", "storing the image in the node's IPFS and gossiping the offer")
    done = stream_job(client, "/v1/offers/publish", body, quiet)
    print(f"published {done['label']} (fee {done['fee']}): image {done['image_cid']} "
          f"({done['image_bytes']} bytes, pinned)")
    print(f"offer id {done['offer_id']}")


@m.task_app.command("unpublish")
def task_unpublish(name: Annotated[str, typer.Argument(help="the task's name")],
                   data_dir: m.DataDir = None, config: m.ConfigFile = None):
    """Withdraw this node's offer of a task (a signed TaskWithdraw)."""
    try:
        r = m._client(data_dir, config).post("/v1/offers/withdraw", {"name": name})
    except ControlError as exc:
        raise m._fail(str(exc), 1) from None
    print(f"withdrew {r['withdrawn']} (offer {r['offer_id']})")
