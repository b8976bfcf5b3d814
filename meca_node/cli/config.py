"""Configuration: defaults < TOML file < environment (MECA_*) < command-line flags.

Every option is listed in :data:`OPTIONS` with its default and meaning; the loader
records where each effective value came from.
"""

from __future__ import annotations

import json
import math
import textwrap
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import platformdirs

from meca_node import wire
from meca_node.core.matching import Weights


class ConfigError(Exception):
    """A config value is invalid; the message names the key, the source and the fix."""


@dataclass(frozen=True)
class Option:
    key: str
    kind: str  # str | int | float | bool | list | path
    default: Any
    doc: str
    zero_ok: bool = False  # float: 0 is allowed (it means "off")
    signed: bool = False  # int: negative values are allowed


_CAPS = wire.Caps()
_WEIGHTS = Weights()
OPTIONS: tuple[Option, ...] = (
    Option("data_dir", "path", None, "where the node keeps its key, token and state "
           "(default: the platform's user data dir)"),
    Option("roles", "list", ["client"], "roles this node plays: provider, client, developer"),
    Option("listen", "list", ["/ip4/0.0.0.0/tcp/4601"], "multiaddrs to listen on"),
    Option("announce", "list", [], "multiaddrs to announce instead of the listen addresses"),
    Option("bootstrap", "list", [], "peers to connect to at start, /p2p/<peer id> multiaddrs"),
    Option("relay_service", "bool", False,
           "serve as a circuit relay (libp2p circuit relay v2 hop) for peers behind NAT: "
           "at most 128 reservations (1 h each), 64 circuits (16 per peer), 1 h and 1 GiB "
           "per circuit; run it on a node others can dial"),
    Option("relays", "list", [],
           "relays (/p2p/<peer id> multiaddrs of nodes with relay_service) to keep a "
           "reservation on, renewed before it expires; the node then announces "
           "<relay>/p2p-circuit addresses and is reachable through them from behind NAT"),
    Option("genesis", "path", None, "network genesis file (default: genesis.json in data_dir)"),
    Option("mdns", "bool", False, "find peers on the local network with mDNS"),
    Option("control_port", "int", 0, "port of the control API on 127.0.0.1 (0: any free one)"),
    Option("advert_interval_s", "float", 30.0, "seconds between HostAdverts"),
    Option("price", "int", 0, "price per job in the smallest unit (providers)"),
    Option("offer_cpu", "float", None, "CPU cores offered to tasks, fractional ok (default: "
           "all cores minus 0.5 for the node, at least 1; more than the machine is clamped)"),
    Option("offer_mem_mb", "int", None, "MiB of memory offered to tasks (default: 75% of RAM; "
           "more than the machine is clamped)"),
    Option("offer_gpus", "int", None, "GPUs offered to tasks (default: all found; 0 keeps "
           "them and turns docker-gpu off)"),
    Option("allow_developers", "list", [], "developer keys (peer ids or hex Ed25519 public "
           "keys) whose task offers this provider runs (empty: any signed offer)"),
    Option("log_level", "str", "info", "debug, info, warning or error"),
    Option("ipfs_quota_mb", "int", 20480, "most MiB the IPFS block store may hold"),
    Option("ipfs_evict", "bool", True,
           "at the block store quota, remove the least recently used unpinned blocks (cached "
           "images and files) to make room; off: new blocks are refused until `ipfs gc`"),
    Option("startup_benchmark", "bool", True,
           "providers: measure each environment at start (cached per hardware); off: score 0"),
    Option("warm_pool_s", "float", 300.0,
           "providers: seconds a task container stays warm after its job for the next job "
           "of the same image and resources (0: no warm containers)", zero_ok=True),
    Option("warm_pool_max", "int", 4,
           "providers: most warm (idle) task containers kept; the oldest goes first "
           "(0: no warm containers)"),
    Option("queue_max", "int", 8,
           "providers: most jobs kept waiting for resources (first come, first served; the "
           "client sees its place); beyond it a job is refused as busy (0: no queue)"),
    Option("drain_grace_s", "float", 30.0,
           "providers: on SIGTERM/SIGINT, seconds the running jobs may take to finish while "
           "the node takes no new ones; then their containers are stopped and the node "
           "exits (0: stop at once; a second signal also stops at once)", zero_ok=True),
    Option("ipfs_pull_timeout_s", "float", 600.0,
           "seconds an IPFS pull (image or file) may take, apart from any job timeout"),
    Option("sim_faults", "bool", False,
           "simulations only: a fault switch in this node's transport that the control API "
           "(POST /v1/sim/faults) sets to block peers, delay writes and drop gossip; off: "
           "the switch cannot be set (`meca-node sim cluster` turns it on for its nodes)"),
    Option("skew_s", "int", 120, "accept message timestamps within this many seconds of ours"),
    Option("clock_follow_peers", "bool", False,
           "stamp this node's messages with the peers' median time instead of this machine's "
           "clock (for a box without a real-time clock or NTP); off: a clock off by more "
           "than half skew_s is only warned about, loudly"),
    Option("sim_trace", "bool", False,
           "simulations only: append each placement decision and what it was made of to "
           "sim-trace.jsonl in data_dir, for `meca-node sim` to replay into the simulator"),
    Option("sim_clock_offset_ms", "int", 0,
           "simulations only: shift this node's clock by this many ms (negative: behind), "
           "to simulate a machine whose clock is wrong", signed=True),
    Option("gossip_rate_per_s", "float", 5.0, "gossip messages per second allowed per signer"),
    Option("gossip_burst", "int", 20, "gossip burst allowed per signer"),
    Option("gossip_entry_rate_per_s", "float", 20.0,
           "account chain entries (meca/receipts/1) per second allowed per signer"),
    Option("gossip_entry_burst", "int", 100, "account chain entry burst allowed per signer"),
    *(Option(f"match.{part}", "float", getattr(_WEIGHTS, part),
             f"clients: weight of {what} in ranking providers (0: ignored)", zero_ok=True)
      for part, what in (("price", "a low price"), ("benchmark", "the benchmark score"),
                         ("cached", "the task's image already cached"),
                         ("queue", "a short queue"), ("latency", "a low measured latency"),
                         ("reputation", "our own reputation score"))),
    Option("caps.gossip_message", "int", _CAPS.gossip_message, "max gossip message bytes"),
    Option("caps.stream_frame", "int", _CAPS.stream_frame, "max stream frame bytes"),
    Option("caps.job_inline", "int", _CAPS.job_inline, "max inline job input/output bytes"),
    Option("caps.block_send", "int", _CAPS.block_send, "max block bytes we send"),
    Option("caps.block_accept", "int", _CAPS.block_accept, "max block bytes we accept"),
    Option("caps.wantlist", "int", _CAPS.wantlist, "max wantlist entries per peer"),
    Option("caps.image", "int", _CAPS.image, "max image bytes"),
    Option("caps.queue", "int", _CAPS.queue, "max entries in any queue"),
    Option("log_file", "path", None,
           "also write the log as JSON lines to this file, rotated by size (relative: inside "
           "data_dir); for machines without journald (default: stderr only)"),
    Option("log_max_mb", "float", 10.0, "log_file: MiB a log file may reach before it is "
           "rotated (renamed to .1, .2, ...)"),
    Option("log_backups", "int", 5, "log_file: rotated files kept, at least 1; the oldest "
           "is deleted"),
)
_BY_KEY = {o.key: o for o in OPTIONS}
_ROLES = ("provider", "client", "developer")


def env_name(key: str) -> str:
    return "MECA_" + key.replace(".", "_").upper()


@dataclass
class Config:
    values: dict[str, Any]
    sources: dict[str, str] = field(default_factory=dict)
    file: Path | None = None  # the TOML file read, if any

    def __getitem__(self, key: str) -> Any:
        return self.values[key]

    @property
    def data_dir(self) -> Path:
        return self.values["data_dir"]

    @property
    def genesis_path(self) -> Path:
        return self.values["genesis"] or self.data_dir / "genesis.json"

    @property
    def weights(self) -> Weights:
        """How a client ranks providers (``[match]`` in the config file)."""
        return Weights(**{k.split(".", 1)[1]: v for k, v in self.values.items()
                          if k.startswith("match.")})

    @property
    def caps(self) -> wire.Caps:
        return wire.Caps(**{k.split(".", 1)[1]: v for k, v in self.values.items()
                            if k.startswith("caps.")})


def _coerce(opt: Option, value: Any, source: str) -> Any:
    where = f"{opt.key} (from {source})"
    try:
        if opt.kind == "list":
            if isinstance(value, str):
                value = [v.strip() for v in value.split(",") if v.strip()]
            if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
                raise ValueError("expected a list of strings")
            return list(value)
        if opt.kind == "bool":
            if isinstance(value, str):
                low = value.strip().lower()
                if low in ("1", "true", "yes", "on"):
                    return True
                if low in ("0", "false", "no", "off"):
                    return False
                raise ValueError("expected true or false")
            if not isinstance(value, bool):
                raise ValueError("expected true or false")
            return value
        if opt.kind == "int":
            if isinstance(value, bool):
                raise ValueError("expected an integer")
            out = int(value)
            if isinstance(value, float) and value != out:
                raise ValueError("expected an integer")
            if out < 0 and not opt.signed:
                raise ValueError("must be >= 0")
            return out
        if opt.kind == "float":
            if isinstance(value, bool):
                raise ValueError("expected a number")
            out = float(value)
            if opt.zero_ok and not out >= 0:  # NaN too
                raise ValueError("must be >= 0 (0: off)")
            if not opt.zero_ok and not out > 0:
                raise ValueError("must be > 0")
            return out
        if opt.kind == "path":
            if value is not None and not isinstance(value, (str, Path)):
                raise ValueError("expected a path (a string)")
            return None if value in (None, "") else Path(str(value)).expanduser()
        if not isinstance(value, str):
            raise ValueError("expected a string")
        return value
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"config key {where}: {exc}; got {value!r}") from None


def _flatten(doc: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in doc.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def load_config(config_file: Path | None, env: Mapping[str, str],
                flags: Mapping[str, Any]) -> Config:
    """Build the effective config; ``flags`` holds only options given on the command line."""
    values: dict[str, Any] = {o.key: o.default for o in OPTIONS}
    sources = {o.key: "default" for o in OPTIONS}

    def apply(layer: Mapping[str, Any], source: str) -> None:
        for key, value in layer.items():
            opt = _BY_KEY.get(key)
            if opt is None:
                raise ConfigError(f"unknown config key {key!r} (from {source}); known keys: "
                                  f"{', '.join(sorted(_BY_KEY))}")
            values[key] = _coerce(opt, value, source)
            sources[key] = source

    env_layer = {o.key: env[env_name(o.key)] for o in OPTIONS if env_name(o.key) in env}
    data_dir_hint = flags.get("data_dir") or env_layer.get("data_dir")
    if config_file is None and data_dir_hint:
        candidate = Path(str(data_dir_hint)).expanduser() / "config.toml"
        config_file = candidate if candidate.exists() else None
    if config_file is not None:
        try:
            doc = tomllib.loads(Path(config_file).read_text())
        except FileNotFoundError:
            raise ConfigError(f"config file {config_file} does not exist") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {config_file} is not valid TOML: {exc}") from None
        apply(_flatten(doc), f"file {config_file}")
    for key, value in env_layer.items():
        apply({key: value}, f"env {env_name(key)}")
    apply({k: v for k, v in flags.items() if v is not None}, "flag")
    if values["data_dir"] is None:
        values["data_dir"] = Path(platformdirs.user_data_dir("meca-node"))
    bad = [r for r in values["roles"] if r not in _ROLES]
    if bad or not values["roles"]:
        raise ConfigError(f"config key roles (from {sources['roles']}): unknown role(s) {bad}; "
                          f"use {', '.join(_ROLES)}")
    values["roles"] = list(dict.fromkeys(values["roles"]))
    if values["log_level"].lower() not in ("debug", "info", "warning", "error"):
        raise ConfigError(f"config key log_level (from {sources['log_level']}): use debug, "
                          "info, warning or error")
    if values["log_backups"] < 1:
        raise ConfigError(f"config key log_backups (from {sources['log_backups']}): keep at "
                          "least 1 rotated file (with 0 the log would never be rotated)")
    return Config(values, sources, Path(config_file) if config_file is not None else None)


def toml_value(value: Any) -> str:
    """``value`` (str, path, bool, int, float or list of str) written as a TOML value."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, (str, Path)):
        return json.dumps(str(value))  # JSON's escapes are TOML basic-string escapes
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    raise TypeError(f"no TOML form for {value!r}")


def _option_lines(opt: Option, name: str) -> list[str]:
    lines = [""] + ["# " + line for line in textwrap.wrap(
        opt.doc, 86, break_on_hyphens=False, break_long_words=False)]  # words stay whole
    lines.append(f"# ({opt.kind}; env {env_name(opt.key)})")
    if opt.default is None:
        lines.append(f"# {name}: unset by default")
    else:
        lines.append(f"#{name} = {toml_value(opt.default)}")
    return lines


def render_config_file(title: str) -> str:
    """A TOML config file naming every option with its doc, environment variable and default,
    each setting commented out (``#key = default``) so the file loads to exactly the
    defaults; dotted keys (``match.*``, ``caps.*``) are grouped under their tables."""
    lines = [f"# {line}" if line else "#" for line in title.splitlines()]
    lines += ["#",
              "# Every option is listed with its default, commented out: remove the '#' in "
              "front of",
              "# a setting to change it. An option unset by default shows no value: write "
              "`key = value`.",
              "# Precedence: command-line flags > environment (MECA_*) > this file > defaults."]
    tables: dict[str, list[Option]] = {}
    for opt in OPTIONS:
        if "." in opt.key:
            tables.setdefault(opt.key.split(".", 1)[0], []).append(opt)
        else:
            lines += _option_lines(opt, opt.key)
    for table, opts in tables.items():
        lines += ["", f"[{table}]"]
        for opt in opts:
            lines += _option_lines(opt, opt.key.split(".", 1)[1])
    return "\n".join(lines) + "\n"
