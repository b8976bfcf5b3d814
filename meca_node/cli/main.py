"""Command definitions. Each command parses, loads config, calls a layer, prints; no logic."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from meca_node import wire
from meca_node.cli.config import Config, ConfigError, env_name, load_config
from meca_node.cli.config_cmd import config_app, keys, with_config
from meca_node.cli.logs import setup_logging
from meca_node.control import ControlClient, ControlError
from meca_node.core import Identity, public_key_of_peer_id
from meca_node.store import KeyFileError, atomic_write, load_or_create_key
from meca_node.store.schema import SchemaError, SchemaTooNew, open_data_dir

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="meca-node: a peer-to-peer edge-compute node.")
network_app = typer.Typer(no_args_is_help=True, help="Create and inspect network genesis files.")
app.add_typer(network_app, name="network")
task_app = typer.Typer(no_args_is_help=True, help="Develop tasks: init and validate task folders.")
app.add_typer(task_app, name="task")
out = Console(width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True, soft_wrap=True)

DataDir = Annotated[Optional[Path], typer.Option("--data-dir", help="node data directory "
                                                 f"(env {env_name('data_dir')})")]
ConfigFile = Annotated[Optional[Path], typer.Option("--config", help="TOML config file")]
JsonOut = Annotated[bool, typer.Option("--json", help="print JSON")]


def _call(fn, *args, **kw) -> dict:
    """A control API call; its error becomes the command's error (exit 1)."""
    try:
        return fn(*args, **kw)
    except ControlError as exc:
        raise _fail(str(exc), 1) from None


def _fail(message: str, code: int = 2) -> typer.Exit:
    err.print(f"[bold red]error:[/] {message}", highlight=False)
    return typer.Exit(code)


def _config(config_file: Path | None, **flags):
    try:
        return load_config(config_file, os.environ, flags)
    except ConfigError as exc:
        raise _fail(str(exc)) from None


def _identity(data_dir: Path) -> tuple[Identity, bool]:
    try:
        return load_or_create_key(data_dir)
    except (KeyFileError, OSError) as exc:
        raise _fail(str(exc)) from None


def _load_genesis(path: Path) -> wire.Genesis:
    try:
        return wire.genesis_from_json(path.read_bytes())
    except FileNotFoundError:
        raise _fail(f"no network genesis at {path}. Create one with `meca-node network init "
                    "--name NAME` or pass `--genesis FILE` of the network to join.") from None
    except wire.WireError as exc:
        raise _fail(f"genesis file {path} is invalid: {exc}") from None


@app.command()
@with_config  # the config flags (--role, --data-dir, --listen, ...), shared with `config show`
def start(
    cfg: Config,
    json_logs: Annotated[Optional[bool], typer.Option(
        "--log-json/--log-pretty", "--json-logs/--pretty-logs",
        help="log format (default: JSON unless on a terminal)")] = None,
) -> None:
    """Start a node: join the network, gossip signed adverts, serve the control API."""
    import trio

    from meca_node.cli.runner import run_node

    log_file = cfg.data_dir / cfg["log_file"] if cfg["log_file"] else None
    try:
        setup_logging(cfg["log_level"], json_logs, log_file,
                      int(cfg["log_max_mb"] * 1024 * 1024), cfg["log_backups"])
    except OSError as exc:
        raise _fail(f"config key log_file (from {cfg.sources['log_file']}): cannot open "
                    f"{log_file}: {exc}; choose a writable path") from None
    _data_dir_schema(cfg.data_dir)  # before anything in the dir is touched
    identity, created = _identity(cfg.data_dir)
    if created:
        err.print(f"created node key {cfg.data_dir / 'node.key'}")
    genesis_file = _load_genesis(cfg.genesis_path)
    from meca_node.net import parse_addrs, parse_peer_addr

    try:
        parse_addrs(cfg["listen"] + cfg["announce"])
        for b in cfg["bootstrap"] + cfg["relays"]:
            parse_peer_addr(b)
    except ValueError as exc:
        raise _fail(str(exc)) from None
    if "provider" in cfg["roles"]:  # refuse an unusable share before anything starts
        from meca_node.runtime import detect_hardware
        from meca_node.runtime.environments import OfferError, plan_offer

        try:
            plan_offer(detect_hardware(cfg.data_dir), cfg.values)
        except OfferError as exc:
            raise _fail(str(exc)) from None
    try:
        trio.run(run_node, cfg, identity, genesis_file)
    except* SchemaTooNew as group:  # a database of a newer meca-node
        raise _fail(str(_first(group)), 1) from None
    except* OSError as group:
        raise _fail(f"the node could not start: {_first(group)}", 1) from None
    raise typer.Exit(0)


def _first(group: BaseExceptionGroup) -> BaseException:
    first = group.exceptions[0]
    while isinstance(first, BaseExceptionGroup):
        first = first.exceptions[0]
    return first


def _data_dir_schema(data_dir: Path) -> None:
    """Create or upgrade the data dir's schema; refuse one of a newer meca-node."""
    try:
        for version in open_data_dir(data_dir):
            err.print(f"upgraded the data dir {data_dir} from schema {version} to "
                      f"{version + 1}")
    except (SchemaTooNew, SchemaError) as exc:
        raise _fail(str(exc)) from None


@app.command("id")
def show_id(data_dir: DataDir = None, config: ConfigFile = None, json_out: JsonOut = False):
    """Print this node's peer id and public key (creating the key on first use)."""
    cfg = _config(config, data_dir=data_dir)
    identity, _ = _identity(cfg.data_dir)
    if json_out:
        out.print_json(data={"peer_id": identity.peer_id,
                             "public_key": identity.public_key.hex()})
    else:
        print(f"peer id:    {identity.peer_id}")
        print(f"public key: {identity.public_key.hex()}")


def _parse_alloc(item: str) -> tuple[bytes, int]:
    key, sep, amount = item.partition("=")
    if not sep:
        raise ValueError(f"--alloc {item!r}: expected KEY=AMOUNT")
    key = key.strip()
    try:
        raw = bytes.fromhex(key) if len(key) == 64 else public_key_of_peer_id(key)
    except ValueError:
        raise ValueError(f"--alloc {item!r}: KEY must be a 64-hex public key or an Ed25519 "
                         "peer id (see `meca-node id`)") from None
    try:
        value = int(amount)
    except ValueError:
        raise ValueError(f"--alloc {item!r}: AMOUNT must be a whole number") from None
    return raw, value


@network_app.command("init")
def network_init(
    name: Annotated[str, typer.Option(help="network name")],
    alloc: Annotated[Optional[list[str]], typer.Option(
        help="initial balance KEY=AMOUNT (public key hex or peer id; repeatable)")] = None,
    out_file: Annotated[Optional[Path], typer.Option(
        "--out", help="where to write the genesis (default: genesis.json in the data dir)")]
        = None,
    force: Annotated[bool, typer.Option(help="overwrite an existing file")] = False,
    data_dir: DataDir = None, config: ConfigFile = None,
):
    """Create a network: a genesis file signed by this node's key (the founder)."""
    cfg = _config(config, data_dir=data_dir)
    identity, _ = _identity(cfg.data_dir)
    try:
        allocs = [_parse_alloc(a) for a in alloc or []]
        g = wire.make_genesis(name, identity.signing_key, time.time_ns() // 1_000_000, allocs)
    except (ValueError, wire.WireError) as exc:
        raise _fail(str(exc)) from None
    path = out_file or cfg.data_dir / "genesis.json"
    if path.exists() and not force:
        raise _fail(f"{path} exists; pass --force to replace it or --out elsewhere")
    atomic_write(path, g.to_json().encode())
    print(f"network {name!r}: id {g.network_id.hex()}")
    print(f"genesis written to {path} (founder {identity.peer_id}, "
          f"{len(allocs)} allocation(s), supply {g.total_supply})")


@network_app.command("show")
def network_show(genesis: Annotated[Path, typer.Argument(help="genesis file")],
                 json_out: JsonOut = False):
    """Verify a genesis file and print its network id and allocations."""
    g = _load_genesis(genesis)
    if json_out:
        print(g.to_json(), end="")
        return
    print(f"network {g.name!r}  id {g.network_id.hex()}")
    print(f"founder {g.founder.hex()}  created {g.created}  supply {g.total_supply}")
    for a in g.alloc:
        print(f"  {a.key.hex()}  {a.amount}")


def _client(data_dir: Path | None, config: Path | None) -> ControlClient:
    cfg = _config(config, data_dir=data_dir)
    try:
        return ControlClient(cfg.data_dir)
    except ControlError as exc:
        raise _fail(str(exc), 1) from None


def _get(client: ControlClient, path: str) -> dict:
    try:
        return client.get(path)
    except ControlError as exc:
        raise _fail(str(exc), 1) from None


@app.command()
def status(data_dir: DataDir = None, config: ConfigFile = None, json_out: JsonOut = False,
           open_page: Annotated[bool, typer.Option(
               "--open", help="print a one-time login link to the node's status page "
                              "(and open it in the desktop's browser, if there is one)")]
           = False):
    """Show a running node's state: peers, adverts, gossip accepted and dropped by reason."""
    if open_page:
        _open_status_page(_client(data_dir, config))
        return
    s = _get(_client(data_dir, config), "/v1/status")
    if json_out:
        out.print_json(data=s)
        return
    out.print(f"[bold]{s['peer_id']}[/]  roles {', '.join(s['roles'])}  up {s['uptime_s']} s")
    out.print(f"network {s['network']['name']!r} ({s['network']['id'][:16]})")
    for a in s["addrs"]:
        out.print(f"  {a}", highlight=False)
    out.print(f"peers connected {s['peers_connected']}, adverts known {s['adverts_known']}, "
              f"adverts sent {s['adverts_sent']}")
    reach = s.get("reachability") or {}
    if reach:
        out.print(f"reachability: {reach['status']}" + (
            f" (peer {reach['confirmed_by']} dialed {reach['confirmed_addr']})"
            if reach.get("confirmed_by") else ""), highlight=False)
        for r in reach.get("reservations", []):
            if not r["reserved"]:
                out.print(f"[yellow]no reservation on relay[/] {r['relay']}: "
                          f"{r['last_error'] or 'not asked yet'}", highlight=False)
        if reach.get("relay_service"):
            rs = reach["relay_service"]
            out.print(f"relay service: {rs['reservations']} reservations, {rs['circuits']} "
                      "circuits open")
    table = Table("gossip", "count", title=None)
    for kind, n in sorted(s["gossip"]["accepted"].items()):
        table.add_row(f"accepted {kind}", str(n))
    for kind, n in sorted(s["gossip"].get("entries", {}).items()):
        table.add_row(f"  {kind} in Entries", str(n))
    for reason, n in sorted(s["gossip"]["dropped"].items()):
        table.add_row(f"[red]dropped {reason}[/]", str(n))
    if table.row_count:
        out.print(table)
    for peer, why in s.get("cut_off", {}).items():
        out.print(f"[red]cut off[/] {peer}: {why}")
    clock = s.get("clock") or {}
    if clock.get("offset_ms") is not None:
        out.print(f"clock: {clock['offset_ms'] / 1000:+.1f} s from the median of "
                  f"{clock['peers']} peers" + (" (following the peers)"
                                               if clock.get("following_peers") else ""))
    if clock.get("warning"):
        out.print(f"[bold red]clock warning:[/] {clock['warning']}")
    for peer, what in (s.get("protocol") or {}).get("peers_on_other_versions", {}).items():
        out.print(f"[yellow]other protocol version[/] {peer}: {what}; if it is newer, "
                  "upgrade meca-node")


def _open_status_page(client: ControlClient) -> None:
    """Print the status page's one-time login link (valid once, for 60 s); open it in a
    browser when there is a desktop to show one on."""
    login = _call(client.post, "/v1/login")
    url = client.url + login["path"]
    print(url, flush=True)
    desktop = sys.platform in ("darwin", "win32") or bool(
        os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))
    if sys.stdout.isatty() and desktop:
        import webbrowser

        if webbrowser.open(url):
            err.print("opened in your browser (the link works once)")
            return
    err.print(f"open this link in a browser on this machine within "
              f"{login['expires_in_s']:g} s; it works once and logs that browser in")


@app.command()
def peers(data_dir: DataDir = None, config: ConfigFile = None, json_out: JsonOut = False):
    """List connected peers and the signed adverts this node has seen."""
    p = _get(_client(data_dir, config), "/v1/peers")
    if json_out:
        out.print_json(data=p)
        return
    table = Table("peer id", "roles", "arch", "cpus", "mem MiB", "gpus", "price", "advert age",
                  "connected")
    for a in sorted(p["adverts"], key=lambda a: a["peer_id"]):
        table.add_row(a["peer_id"], ",".join(a["roles"]), a["arch"], str(a["cpu_count"]),
                      str(a["mem_mib"]), str(a["gpus"]), str(a["price"]), f"{a['age_s']} s",
                      "yes" if a["connected"] else "no")
    out.print(table)
    advertised = {a["peer_id"] for a in p["adverts"]}
    for pid in sorted(set(p["connected"]) - advertised):
        out.print(f"connected, no advert yet: {pid}")


@app.command()
def offers(data_dir: DataDir = None, config: ConfigFile = None, json_out: JsonOut = False,
           mine: Annotated[bool, typer.Option("--mine", help="only this node's offers")] = False):
    """List the task offers the network gossips (signed by their developers)."""
    o = _get(_client(data_dir, config), "/v1/offers")["offers"]
    if mine:
        o = [x for x in o if x["mine"]]
    if json_out:
        out.print_json(data={"offers": o})
        return
    table = Table("offer id", "task", "fee", "cpu", "mem MiB", "gpus", "arch", "environment",
                  "image", "age")
    for x in o:
        table.add_row(x["offer_id"][:12], x["label"], str(x["fee"]), f"{x['cpu']:g}",
                      str(x["mem_mib"]), str(x["gpus"]), x["arch"], x["environment"],
                      x["image_cid"][:20], f"{x['age_s']} s")
    out.print(table)
    if not o:
        out.print("no offers yet")


@app.command()
def demo(nodes: Annotated[int, typer.Option(
        min=3, max=8, help="how many nodes: 1 developer, N-2 providers, 1 client")] = 5,
         timeout: Annotated[float, typer.Option(help="seconds to wait for the mesh")] = 30.0,
         keep: Annotated[Optional[Path], typer.Option(
             help="keep node data dirs and logs in this folder")] = None):
    """Run a local network: nodes find each other and exchange signed adverts, a file
    crosses over IPFS, a published task runs for a client on a provider; then all stop."""
    from meca_node.sim.demo import run_demo

    raise typer.Exit(run_demo(nodes, timeout, keep, out))


@task_app.command("init")
def task_init(
    folder: Annotated[Path, typer.Argument(help="folder to create")],
    template: Annotated[str, typer.Option(help="template: python (the guide's Flask echo)")]
        = "python",
    name: Annotated[Optional[str], typer.Option(help="task name (default: the folder name)")]
        = None,
):
    """Write a working task folder (the guide's Flask echo app)."""
    from meca_node.cli.templates import TEMPLATES

    files = TEMPLATES.get(template)
    if files is None:
        raise _fail(f"unknown template {template!r}; choose from {', '.join(TEMPLATES)}")
    if folder.exists() and any(folder.iterdir()):
        raise _fail(f"{folder} exists and is not empty; choose a new folder")
    for rel, content in files.items():
        path = folder / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content.replace("{name}", name or folder.resolve().name))
    print(f"wrote task folder {folder} ({len(files)} files, template {template}); check it "
          f"with: meca-node task validate {folder}")


@task_app.command("validate")
def task_validate(folder: Annotated[Path, typer.Argument(help="task folder")],
                  json_out: JsonOut = False):
    """Check a task folder against the task format; exit 0 when valid, 2 when not."""
    spec = _spec_or_exit(folder, json_out)
    r = spec.resources
    if json_out:
        out.print_json(data={"valid": True, "name": spec.name, "resources": {
            "cpu": r.cpu, "mem": r.mem_mib, "use_gpu": r.use_gpu, "gpu_count": r.gpu_count},
            "warnings": [str(w) for w in spec.warnings]})
        return
    for w in spec.warnings:
        err.print(f"warning: {w}", highlight=False, markup=False)
    print(f"{folder}: valid task {spec.name!r}: cpu {r.cpu:g}, mem {r.mem_mib} MiB, "
          f"gpu {r.gpu_count if r.use_gpu else 'none'}; example input {len(spec.example_input)} "
          f"bytes, output {len(spec.example_output)} bytes")


def _spec_or_exit(folder: Path, json_out: bool = False):
    """The validated task, or exit 2 listing every problem (as JSON with ``json_out``)."""
    from meca_node.core.task import TaskInvalid
    from meca_node.store.taskdir import read_task_folder

    try:
        return read_task_folder(folder)
    except NotADirectoryError as exc:
        raise _fail(str(exc)) from None
    except TaskInvalid as exc:
        if json_out:
            out.print_json(data={"valid": False, "problems": [
                {"file": p.file, "field": p.field, "message": p.message, "fix": p.fix}
                for p in exc.problems]})
            raise typer.Exit(2) from None
        err.print(f"[bold red]{folder} is not a valid task[/] ({len(exc.problems)} problem(s)):",
                  highlight=False)
        for p in exc.problems:
            err.print(f"  - {p}", highlight=False, markup=False)
        raise typer.Exit(2) from None


def _executor():
    from meca_node.runtime.executor import DockerExecutor, EngineUnavailable, connect

    try:
        return DockerExecutor(connect())
    except EngineUnavailable as exc:
        raise _fail(str(exc), 1) from None


def _progress(quiet: bool):
    def on_event(kind: str, text: str) -> None:
        if kind == "build-log":
            if not quiet:
                err.print(f"  {text}", highlight=False, markup=False)
        else:
            err.print(f"==> {text}", highlight=False, markup=False)

    return on_event


def _run_interruptible(fn, *args):
    """``trio.run(fn, *args)``, cancelled by SIGINT or SIGTERM. Cancellation unwinds
    through the executor, whose container removal is shielded, so nothing is left running;
    then exit 130 (the shell's code for an interrupted command)."""
    import signal

    import trio

    received: list[int] = []
    outcome: dict = {}

    async def main():
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async with trio.open_nursery() as nursery:
                async def stop_on_signal():
                    async for signum in signals:
                        received.append(signum)
                        nursery.cancel_scope.cancel()
                        return

                nursery.start_soon(stop_on_signal)
                try:  # carried out of the nursery, which would wrap it in a group
                    outcome["result"] = await fn(*args)
                except Exception as exc:
                    outcome["error"] = exc
                nursery.cancel_scope.cancel()

    trio.run(main)
    if "error" in outcome:
        raise outcome["error"]
    if received:
        name = signal.Signals(received[0]).name
        err.print(f"[bold red]interrupted[/] ({name}): stopped; no container is left running",
                  highlight=False)
        raise typer.Exit(130)
    return outcome["result"]


def _run_failed(exc) -> typer.Exit:
    err.print(f"[bold red]task {exc.stage} failed:[/] {exc}", highlight=False)
    if exc.logs:
        err.print("last lines of its output:", highlight=False)
        err.print(exc.logs, highlight=False, markup=False)
    return typer.Exit(1)


@task_app.command("build")
def task_build(folder: Annotated[Path, typer.Argument(help="task folder")],
               quiet: Annotated[bool, typer.Option(help="hide the build output")] = False):
    """Validate and build the task's image, tagged with its name and content digest."""
    from meca_node.node.developer import image_tag
    from meca_node.runtime.executor import TaskRunError
    from meca_node.store.taskdir import folder_digest

    spec = _spec_or_exit(folder)
    executor = _executor()
    tag = image_tag(spec, folder_digest(folder))
    on_event = _progress(quiet)
    on_event("build", f"building {tag}")
    try:
        image_id = _run_interruptible(executor.build, folder, tag,
                                      lambda line: on_event("build-log", line))
    except TaskRunError as exc:
        raise _run_failed(exc) from None
    print(f"built {tag}\nimage id {image_id}")


@task_app.command("test")
def task_test(folder: Annotated[Path, typer.Argument(help="task folder")],
              quiet: Annotated[bool, typer.Option(help="hide the build output")] = False):
    """Validate, build, run in the sandbox, POST example_input.bin, compare the reply."""
    from meca_node.node.developer import test_task
    from meca_node.runtime.executor import TaskRunError
    from meca_node.store.taskdir import folder_digest

    spec = _spec_or_exit(folder)
    executor = _executor()
    on_event = _progress(quiet)

    try:
        report = _run_interruptible(test_task, spec, folder, folder_digest(folder), executor,
                                    on_event)
    except TaskRunError as exc:
        raise _run_failed(exc) from None
    t = report.timings_s
    print(f"image {report.tag} ({report.image_id[:19]})")
    print(f"timings: build {t['build']:.2f} s, start to meca-init-done "
          f"{t['start_to_init']:.2f} s, start to first answer {t['start_to_first_answer']:.2f} s,"
          f" request {t['request'] * 1000:.1f} ms")
    if not report.ok:
        err.print("[bold red]reply differs from example_output.bin[/]", highlight=False)
        err.print(report.mismatch, highlight=False, markup=False)
        raise typer.Exit(1)
    print(f"PASS: the reply equals example_output.bin ({len(report.reply)} bytes)")


app.add_typer(config_app, name="config")
app.command("config-keys", hidden=True)(keys)  # the older name of `config keys`


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)


from meca_node.cli import jobs_cmd, key_cmd, publish_cmd  # noqa: E402,F401  (they add commands)
from meca_node.cli import wallet_cmd  # noqa: E402,F401  (it adds the wallet commands)
from meca_node.cli import job_cmd  # noqa: E402,F401  (it adds the job commands)
from meca_node.cli import sim_cmd  # noqa: E402,F401  (it adds the sim commands)
from meca_node.cli.ipfs_cmd import ipfs_app  # noqa: E402  (it uses the helpers above)
from meca_node.cli.service import service_app  # noqa: E402  (it uses the helpers above)

app.add_typer(ipfs_app, name="ipfs")
app.add_typer(service_app, name="service")
