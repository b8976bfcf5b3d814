"""``meca-node ipfs ...``: the node's IPFS through its control API (hashing also offline)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from meca_node.cli import main as m
from meca_node.control import ControlClient, ControlError

ipfs_app = typer.Typer(no_args_is_help=True,
                       help="The node's IPFS: add, cat, get, pin, gc, stat (kubo-identical CIDs).")
pin_app = typer.Typer(no_args_is_help=True, help="Keep DAGs from gc: add, rm, ls.")
ipfs_app.add_typer(pin_app, name="pin")
image_app = typer.Typer(no_args_is_help=True,
                        help="Docker images as DAGs: images sharing layers share blocks.")
ipfs_app.add_typer(image_app, name="image")

CidArg = Annotated[str, typer.Argument(help="a CID (Qm... or b...)")]
FromPeers = Annotated[list[str], typer.Option(
    "--from", help="a peer to fetch from, /ip4/.../tcp/.../p2p/<id> (repeatable); "
                   "connected peers are always asked")]


def follow_job(client: ControlClient, path: str, body: dict, on_progress,
               failed: str = "") -> dict:
    """POST a long operation and follow its JSON lines: ``on_progress(dict)`` for each
    progress line; its result, or exit 1 with its error (prefixed by ``failed``)."""
    result = None
    try:
        with client.stream("POST", path, body) as response:
            for line in response.iter_lines():
                if not line.strip():
                    continue
                doc = json.loads(line)
                if "progress" in doc:
                    on_progress(doc["progress"])
                elif "error" in doc:
                    raise m._fail(failed + doc["error"], 1)
                elif "done" in doc:
                    result = doc["done"]
    except ControlError as exc:
        raise m._fail(str(exc), 1) from None
    if result is None:
        raise m._fail("the node ended the answer without a result (did it stop?)", 1)
    return result


def stream_job(client: ControlClient, path: str, body: dict, quiet: bool) -> dict:
    """A long operation with a progress bar on a terminal (bytes, rate, peers)."""
    from rich.progress import (BarColumn, DownloadColumn, Progress, TextColumn,
                               TransferSpeedColumn)

    show = not quiet and sys.stderr.isatty()
    bar = Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                   TransferSpeedColumn(), TextColumn("{task.fields[peers]}"),
                   console=m.err, transient=True, disable=not show)
    with bar:
        task = bar.add_task(path.rsplit("/", 1)[-1], total=None, peers="")

        def update(p: dict) -> None:
            if "bytes" in p:
                bar.update(task, completed=p["bytes"], total=p.get("total"),
                           peers=f"{p['peers']} peer(s)" if p.get("peers") else "")

        return follow_job(client, path, body, update)


@ipfs_app.command("add")
def add(path: Annotated[Path, typer.Argument(help="file or directory to add")],
        recursive: Annotated[bool, typer.Option("-r", "--recursive",
                                                help="add a directory and all it holds")] = False,
        only_hash: Annotated[bool, typer.Option("--only-hash", "-n",
                                                help="print the CID, store nothing "
                                                     "(no node needed)")] = False,
        cid_version: Annotated[int, typer.Option("--cid-version",
                                                 help="1: raw leaves (default); 0: kubo's "
                                                      "plain defaults")] = 1,
        hidden: Annotated[bool, typer.Option("--hidden", "-H",
                                             help="include files whose names start with "
                                                  "a dot")] = False,
        pin: Annotated[bool, typer.Option(help="pin what is added")] = True,
        quiet: Annotated[bool, typer.Option("--quiet", "-q", help="no progress")] = False,
        data_dir: m.DataDir = None, config: m.ConfigFile = None):
    """Add a file (or with -r a directory); the CID is the last line of stdout."""
    from meca_node.ipfs import unixfs

    if not path.exists():
        raise m._fail(f"{path} does not exist")
    if path.is_dir() and not recursive:
        raise m._fail(f"{path} is a directory: add it with -r")
    try:
        settings = unixfs.Settings(cid_version=cid_version, hidden=hidden)
    except unixfs.UnixfsError as exc:
        raise m._fail(str(exc)) from None
    if only_hash:
        try:
            added = unixfs.add_path(path, lambda cid, block: None, settings)
        except (unixfs.UnixfsError, OSError) as exc:
            raise m._fail(str(exc), 1) from None
        print(added.cid)
        return
    client = m._client(data_dir, config)
    done = stream_job(client, "/v1/ipfs/add",
                       {"path": str(path.resolve()), "cid_version": cid_version,
                        "hidden": hidden, "pin": pin}, quiet)
    m.err.print(f"added {path} ({done['size']} bytes{', pinned' if done['pinned'] else ''})",
                highlight=False)
    print(done["cid"])


@ipfs_app.command("cat")
def cat(cid: CidArg, peers: FromPeers = [], data_dir: m.DataDir = None,
        config: m.ConfigFile = None):
    """Write a file's bytes to stdout (fetched from peers if it is not here)."""
    client = m._client(data_dir, config)
    try:
        with client.stream("GET", "/v1/ipfs/cat",
                           params={"cid": cid, "from": ",".join(peers)}) as response:
            for chunk in response.iter_bytes():
                sys.stdout.buffer.write(chunk)
        sys.stdout.buffer.flush()
    except ControlError as exc:
        raise m._fail(str(exc), 1) from None


@ipfs_app.command("get")
def get(cid: CidArg,
        output: Annotated[Path, typer.Option("-o", "--output", help="new path to write")],
        quiet: Annotated[bool, typer.Option("--quiet", "-q", help="no progress")] = False,
        peers: FromPeers = [], data_dir: m.DataDir = None, config: m.ConfigFile = None):
    """Fetch a file or directory and write it to a new path."""
    if output.exists() or output.is_symlink():
        raise m._fail(f"{output} exists already; choose a new path")
    client = m._client(data_dir, config)
    done = stream_job(client, "/v1/ipfs/get", {"cid": cid, "out": str(output.resolve()),
                                                 "from": peers}, quiet)
    print(f"wrote {done['path']} ({done['written']} bytes; fetched {done['fetched_bytes']} "
          f"bytes in {done['fetched_blocks']} blocks, {done['local_blocks']} already here)")
    for peer, n in sorted(done.get("by_peer", {}).items()):
        print(f"  from {peer}: {n} bytes")


@pin_app.command("add")
def pin_add(cid: CidArg, quiet: Annotated[bool, typer.Option("--quiet", "-q")] = False,
            peers: FromPeers = [], data_dir: m.DataDir = None, config: m.ConfigFile = None):
    """Pin a DAG (fetching what is missing)."""
    done = stream_job(m._client(data_dir, config), "/v1/ipfs/pin/add",
                       {"cid": cid, "from": peers}, quiet)
    print(f"pinned {done['cid']}")


@pin_app.command("rm")
def pin_rm(cid: CidArg, data_dir: m.DataDir = None, config: m.ConfigFile = None):
    """Unpin a DAG (its blocks go at the next gc unless pinned elsewhere)."""
    try:
        print(f"unpinned {m._client(data_dir, config).post('/v1/ipfs/pin/rm', {'cid': cid})['unpinned']}")
    except ControlError as exc:
        raise m._fail(str(exc), 1) from None


@pin_app.command("ls")
def pin_ls(data_dir: m.DataDir = None, config: m.ConfigFile = None):
    """List pinned roots."""
    for cid in m._get(m._client(data_dir, config), "/v1/ipfs/pin/ls")["pins"]:
        print(cid)


@ipfs_app.command("gc")
def gc(data_dir: m.DataDir = None, config: m.ConfigFile = None):
    """Remove every block that no pin (and no pull in progress) holds."""
    try:
        r = m._client(data_dir, config).post("/v1/ipfs/gc")
    except ControlError as exc:
        raise m._fail(str(exc), 1) from None
    print(f"removed {r['removed_blocks']} blocks, freed {r['freed_bytes']} bytes")


@ipfs_app.command("stat")
def stat(data_dir: m.DataDir = None, config: m.ConfigFile = None, json_out: m.JsonOut = False):
    """Block store and Bitswap figures."""
    s = m._get(m._client(data_dir, config), "/v1/ipfs/stat")
    if json_out:
        m.out.print_json(data=s)
        return
    quota = f"{s['quota_bytes']} bytes" if s["quota_bytes"] is not None else "none"
    print(f"blocks {s['blocks']}, {s['bytes']} bytes (quota {quota}); pinned {s['pins']} "
          f"root(s), {s['pinned_bytes']} bytes")
    print(f"bitswap: served {s['bitswap']['served_bytes']} bytes, peers cut off "
          f"{s['bitswap']['peers_cut_off']}; corrupt blocks removed {s['corrupt_removed']}")


@image_app.command("add")
def image_add(image: Annotated[str, typer.Argument(help="a local image, e.g. meca-task/echo:TAG")],
              quiet: Annotated[bool, typer.Option("--quiet", "-q")] = False,
              data_dir: m.DataDir = None, config: m.ConfigFile = None):
    """Store a local Docker image as a DAG and pin it; the CID is the last line."""
    done = stream_job(m._client(data_dir, config), "/v1/ipfs/image/add", {"image": image},
                       quiet)
    m.err.print(f"added image {done['image']} ({done['size']} bytes, "
                f"{len(done['layers'])} layer(s))", highlight=False)
    print(done["cid"])


@image_app.command("load")
def image_load(cid: CidArg, peers: FromPeers = [],
               quiet: Annotated[bool, typer.Option("--quiet", "-q")] = False,
               data_dir: m.DataDir = None, config: m.ConfigFile = None):
    """Fetch an image DAG (what is missing), verify every block, `docker load` it."""
    done = stream_job(m._client(data_dir, config), "/v1/ipfs/image/load",
                       {"cid": cid, "from": peers}, quiet)
    print(f"loaded {', '.join(done['loaded']) or '(no tags)'}: fetched {done['fetched_bytes']} "
          f"bytes in {done['fetched_blocks']} blocks, {done['local_blocks']} already here")
