"""``meca-node config``: write a commented config file, show the effective config and where
each value came from, list the keys; and the config flags ``start`` shares with ``config show``
(:func:`with_config`)."""

from __future__ import annotations

import functools
import inspect
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Optional

import platformdirs
import typer

from meca_node.cli.config import OPTIONS, Config, env_name, render_config_file, toml_value
from meca_node.store import atomic_write

config_app = typer.Typer(no_args_is_help=True,
                         help="Write, show and list the node's configuration.")


@dataclass(frozen=True)
class ConfigFlag:
    """A command-line flag that sets config key ``key`` (the ``flag`` layer)."""

    name: str  # the Python parameter; typer derives the flag from it unless given
    key: str
    annotation: Any


CONFIG_FLAGS: tuple[ConfigFlag, ...] = (
    ConfigFlag("role", "roles", Annotated[Optional[list[str]], typer.Option(
        "--role", help="provider, client or developer (repeatable)")]),
    ConfigFlag("data_dir", "data_dir", Annotated[Optional[Path], typer.Option(
        "--data-dir", help=f"node data directory (env {env_name('data_dir')})")]),
    ConfigFlag("listen", "listen", Annotated[Optional[list[str]], typer.Option(
        help="multiaddr to listen on (repeatable), e.g. /ip4/127.0.0.1/tcp/0")]),
    ConfigFlag("announce", "announce", Annotated[Optional[list[str]], typer.Option(
        help="multiaddr to announce")]),
    ConfigFlag("bootstrap", "bootstrap", Annotated[Optional[list[str]], typer.Option(
        help="peer to join, /ip4/../tcp/../p2p/<peer id> (repeatable)")]),
    ConfigFlag("genesis", "genesis", Annotated[Optional[Path], typer.Option(
        help="network genesis file")]),
    ConfigFlag("mdns", "mdns", Annotated[Optional[bool], typer.Option(
        "--mdns/--no-mdns", help="mDNS discovery on the LAN")]),
    ConfigFlag("control_port", "control_port", Annotated[Optional[int], typer.Option(
        help="control API port")]),
    ConfigFlag("advert_interval", "advert_interval_s", Annotated[Optional[float], typer.Option(
        help="seconds between adverts")]),
    ConfigFlag("log_level", "log_level", Annotated[Optional[str], typer.Option(
        help="debug|info|warning|error")]),
    ConfigFlag("log_file", "log_file", Annotated[Optional[Path], typer.Option(
        help="also log JSON lines to this file, rotated by size (log_max_mb, log_backups)")]),
)
ConfigFile = Annotated[Optional[Path], typer.Option(
    "--config", help="TOML config file (default: config.toml in the data dir, if there)")]


def with_config(fn):
    """Give a command ``start``'s config flags and ``--config``: the command is called as
    ``fn(cfg, **its other options)`` with the loaded :class:`Config` (an invalid config exits 2
    with a message naming the key and where the value came from)."""
    own = inspect.signature(fn, eval_str=True)
    params = list(own.parameters.values())
    if not params or params[0].name != "cfg":
        raise TypeError(f"{fn.__name__}: the first parameter must be cfg")
    added = [inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=None,
                               annotation=f.annotation) for f in CONFIG_FLAGS]
    added.append(inspect.Parameter("config", inspect.Parameter.KEYWORD_ONLY, default=None,
                                   annotation=ConfigFile))
    kept = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in params[1:]]
    clash = {p.name for p in kept} & {p.name for p in added}
    if clash:
        raise TypeError(f"{fn.__name__}: parameters {sorted(clash)} are config flags already")

    @functools.wraps(fn)
    def command(**kwargs):
        from meca_node.cli.main import _config  # main imports this module first

        config_file = kwargs.pop("config")
        flags = {f.key: kwargs.pop(f.name) for f in CONFIG_FLAGS}
        return fn(_config(config_file, **flags), **kwargs)

    signature = own.replace(parameters=kept + added)
    command.__signature__ = signature
    command.__annotations__ = {p.name: p.annotation for p in signature.parameters.values()}
    return command


def default_data_dir(data_dir: Path | None) -> Path:
    """The data dir as ``load_config`` settles it without reading any file: the flag, else
    ``MECA_DATA_DIR``, else the platform's user data dir."""
    chosen = data_dir or os.environ.get(env_name("data_dir")) or \
        platformdirs.user_data_dir("meca-node")
    return Path(chosen).expanduser()


def write_default_config(path: Path, force: bool = False) -> bool:
    """Write the commented default config file to ``path`` (mode 644); False, writing
    nothing, when it exists and ``force`` is not set."""
    if path.exists() and not force:
        return False
    atomic_write(path, render_config_file(
        "meca-node configuration, written by `meca-node config init`.\n"
        f"`meca-node config show --config {path}` prints the effective values and their "
        "sources.").encode())
    return True


@config_app.command("init")
def init(data_dir: Annotated[Optional[Path], typer.Option(
             "--data-dir", help=f"node data directory (env {env_name('data_dir')}); the file "
             "goes there as config.toml")] = None,
         config: Annotated[Optional[Path], typer.Option(
             "--config", help="write here instead of config.toml in the data dir")] = None,
         force: Annotated[bool, typer.Option(help="overwrite an existing file")] = False):
    """Write a commented config file: every option with its meaning and default, commented
    out, so the file changes nothing until you edit it."""
    from meca_node.cli.main import _fail

    path = config or default_data_dir(data_dir) / "config.toml"
    try:
        written = write_default_config(path, force)
    except OSError as exc:
        raise _fail(f"cannot write {path}: {exc}", 1) from None
    if not written:
        raise _fail(f"{path} exists; pass --force to replace it with the defaults (your "
                    "settings in it are lost) or --config FILE to write elsewhere")
    print(f"wrote {path}: {len(OPTIONS)} options, all at their defaults (commented out)")
    shown = f"--config {path}" if config else f"--data-dir {path.parent}"
    print(f"edit it, then check the effective values with: meca-node config show {shown}")


def _plain(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def describe(cfg: Config) -> dict:
    """The effective config as JSON: the file read and, per key, value, source and env var."""
    return {"file": str(cfg.file) if cfg.file else None,
            "options": {o.key: {"value": _plain(cfg[o.key]), "source": cfg.sources[o.key],
                                "env": env_name(o.key)} for o in OPTIONS}}


@config_app.command("show")
@with_config
def show(cfg: Config, json_out: Annotated[bool, typer.Option("--json", help="print JSON")]
         = False):
    """Print the effective config (the flags are those of `start`) and where each value
    came from: default, file PATH, env VAR or flag."""
    if json_out:
        print(json.dumps(describe(cfg), indent=2))
        return
    print(f"config file: {cfg.file or 'none'}")
    width = max(len(o.key) for o in OPTIONS)
    for o in OPTIONS:
        value = cfg[o.key]
        shown = "unset" if value is None else toml_value(_plain(value))
        print(f"{o.key:{width}}  {shown:34}  {cfg.sources[o.key]}")


@config_app.command("keys")
def keys():
    """List every config key, its environment variable, default and meaning."""
    for o in OPTIONS:
        print(f"{o.key:24} {env_name(o.key):30} default {json.dumps(o.default)!s:28} {o.doc}")
