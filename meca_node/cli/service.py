"""``meca-node service install``: a systemd unit that runs this node as a hardened service
under a dedicated user (see docs/edge.md)."""

from __future__ import annotations

import grp
import math
import os
import pwd
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Optional

import typer

from meca_node.cli.config import ConfigError, load_config

service_app = typer.Typer(no_args_is_help=True,
                          help="Run the node as a system service (systemd).")

UNIT_NAME = "meca-node.service"
STOP_MARGIN_S = 15  # TimeoutStopSec is the drain grace plus this: time to stop containers
_USER_RE = re.compile(r"[a-z_][a-z0-9_-]{0,31}")
_MEMORY_RE = re.compile(r"(\d+(\.\d+)?[KMGT]?|\d+(\.\d+)?%|infinity)")
_BARE_ARG_RE = re.compile(r"[A-Za-z0-9_@%+=:,./$-]+")
# ProtectHome=yes hides these; an executable or socket below them is out of the service's reach
_HOME_DIRS = ("/home/", "/root/", "/run/user/")


class UnitError(ValueError):
    """An install option cannot go into a unit; the message names it and the fix."""


@dataclass(frozen=True)
class UnitSpec:
    """What the unit says; :func:`render_unit` writes it."""

    exec_start: tuple[str, ...]
    user: str
    group: str
    data_dir: Path
    config_file: Path
    roles: tuple[str, ...]
    memory_max: str
    drain_grace_s: float
    docker_host: str | None = None
    docker_uid: int | None = None  # for the commented rootless example
    extra_write_paths: tuple[Path, ...] = ()

    @property
    def stop_timeout_s(self) -> int:
        return math.ceil(self.drain_grace_s) + STOP_MARGIN_S


def _check_text(what: str, value: str) -> str:
    if not value or any(c.isspace() or c in "\"'\\" or ord(c) < 32 for c in value):
        raise UnitError(f"{what} {value!r}: a unit cannot hold an empty value, spaces, quotes "
                        "or backslashes here; choose another")
    return value.replace("%", "%%")  # systemd specifiers


def exec_arg(arg: str) -> str:
    """One ExecStart argument in systemd's syntax: ``%`` and ``$`` doubled (no specifier or
    variable expansion), double-quoted when it holds anything but plain characters."""
    if not arg or any(ord(c) < 32 for c in arg):
        raise UnitError(f"ExecStart argument {arg!r}: empty or holds control characters")
    arg = arg.replace("%", "%%").replace("$", "$$")
    if _BARE_ARG_RE.fullmatch(arg):
        return arg
    return '"' + arg.replace("\\", "\\\\").replace('"', '\\"') + '"'


def render_unit(spec: UnitSpec) -> str:
    """The text of ``meca-node.service`` for ``spec``."""
    data_dir = _check_text("data dir", str(spec.data_dir))
    write_paths = " ".join([data_dir] + [_check_text("log_file's folder", str(p))
                                         for p in spec.extra_write_paths])
    user, group = _check_text("user", spec.user), _check_text("group", spec.group)
    exec_start = " ".join(exec_arg(a) for a in spec.exec_start)
    uid = str(spec.docker_uid) if spec.docker_uid is not None else "UID"
    lines = [
        f"# {UNIT_NAME}, written by `meca-node service install`; docs/edge.md explains it.",
        f"# Enable it:  systemctl daemon-reload && systemctl enable --now {UNIT_NAME}",
        f"# Its log:    journalctl -u {UNIT_NAME} -f   (JSON lines)",
        "[Unit]",
        f"Description=meca-node edge-compute node ({', '.join(spec.roles)})",
        "Wants=network-online.target",
        "After=network-online.target" + ("" if spec.docker_host else " docker.service"),
        "",
        "[Service]",
        "Type=simple",
        f"ExecStart={exec_start}",
        "# a dedicated system user, created with:",
        f"#   useradd --system --user-group --home-dir {data_dir} --shell /usr/sbin/nologin "
        f"{user}",
        f"User={user}",
        f"Group={group}",
        "# Access to the Docker engine is root-equivalent: a member of the docker group, or "
        "anyone",
        "# who can reach its socket, can start a privileged container and so owns this host.",
    ]
    if spec.docker_host:
        lines += [
            "# This unit uses a rootless engine instead (docs/edge.md), so no docker group:",
            "#SupplementaryGroups=docker",
            f"Environment=DOCKER_HOST={_check_text('--docker-host', spec.docker_host)}",
        ]
    else:
        lines += [
            "# To avoid that, run a rootless engine as this user (docs/edge.md), drop this line",
            "# and uncomment the Environment= line below.",
            "SupplementaryGroups=docker",
            f"#Environment=DOCKER_HOST=unix:///run/user/{uid}/docker.sock",
        ]
    hidden_socket = bool(spec.docker_host) and any(
        spec.docker_host.startswith(f"unix://{d}") for d in _HOME_DIRS)
    lines += [
        "Restart=on-failure",
        "RestartSec=5",
        f"# SIGTERM: a provider takes no new jobs and lets the running ones finish within "
        f"drain_grace_s ({spec.drain_grace_s:g} s),",
        "# then exits; systemd kills whatever is left after TimeoutStopSec.",
        "KillSignal=SIGTERM",
        f"TimeoutStopSec={spec.stop_timeout_s}",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        f"ReadWritePaths={write_paths}",
        *(["# read-only, not yes: the rootless engine's socket is under /run/user",
           "ProtectHome=read-only"] if hidden_socket else ["ProtectHome=yes"]),
        "PrivateTmp=yes",
        "# the node's own memory; task containers run under the Docker engine, within "
        "offer_mem_mb",
        f"MemoryMax={spec.memory_max}",
        "",
        "[Install]",
        "WantedBy=multi-user.target",
    ]
    return "\n".join(lines) + "\n"


def meca_executable() -> list[str]:
    """The command that runs the ``meca-node`` in use, by absolute path: the script this
    process was started as, else the one beside this Python (a venv), else the one on PATH,
    else this Python with ``-m meca_node``."""
    argv0 = Path(sys.argv[0])
    if argv0.name == "meca-node" and argv0.is_file():
        return [str(argv0.absolute())]
    for candidate in (Path(sys.executable).parent / "meca-node", shutil.which("meca-node")):
        if candidate and os.access(candidate, os.X_OK):
            return [str(Path(candidate).absolute())]
    return [str(Path(sys.executable).absolute()), "-m", "meca_node"]


def closed_dir(path: Path, uid: int, gids: set[int]) -> Path | None:
    """The first directory on the way to ``path`` that user ``uid`` (in groups ``gids``)
    may not pass through (no search permission), or None."""
    for folder in [*reversed(path.parents)]:
        try:
            st = folder.stat()
        except OSError:
            return folder
        if uid == 0:
            continue
        bit = 0o100 if st.st_uid == uid else 0o010 if st.st_gid in gids else 0o001
        if not st.st_mode & bit:
            return folder
    return None


def install_problems(account: pwd.struct_passwd | None) -> list[str]:
    """Why the service could not run this meca-node: its script, its Python or its package
    under a folder that ProtectHome= hides, or closed to the service's user."""
    import meca_node

    parts = {"the meca-node command": Path(meca_executable()[0]),
             "the Python it runs on": Path(sys.executable).resolve(),
             "the meca_node package": Path(meca_node.__file__).resolve().parent}
    problems = []
    for what, path in parts.items():
        if str(path).startswith(_HOME_DIRS):
            problems.append(f"{what} is at {path}, under /home, /root or /run/user, which the "
                            "unit's ProtectHome= hides")
        elif account is not None:
            gids = set(os.getgrouplist(account.pw_name, account.pw_gid))
            closed = closed_dir(path, account.pw_uid, gids)
            if closed is not None:
                problems.append(f"{what} is at {path}, but user {account.pw_name} may not "
                                f"enter {closed}")
    return problems


def _user(name: str) -> pwd.struct_passwd | None:
    try:
        return pwd.getpwnam(name)
    except KeyError:
        return None


def _group_exists(name: str) -> bool:
    try:
        grp.getgrnam(name)
        return True
    except KeyError:
        return False


def _useradd(user: str, data_dir: Path) -> list[str]:
    return ["useradd", "--system", "--user-group", "--home-dir", str(data_dir),
            "--no-create-home", "--shell", "/usr/sbin/nologin", user]


@service_app.command("install")
def install(
    user: Annotated[str, typer.Option(help="the dedicated system user the node runs as")]
        = "meca",
    data_dir: Annotated[Path, typer.Option(help="the node's data dir (created if absent)")]
        = Path("/var/lib/meca-node"),
    config: Annotated[Optional[Path], typer.Option(
        "--config", help="config file (default: config.toml in the data dir; written with "
        "the defaults if absent)")] = None,
    role: Annotated[Optional[list[str]], typer.Option(
        "--role", help="provider, client or developer (repeatable; default provider)")] = None,
    memory_max: Annotated[str, typer.Option(
        help="MemoryMax= of the node process (K/M/G/T suffix, a %, or infinity)")] = "512M",
    unit_dir: Annotated[Path, typer.Option(help="where the unit goes")]
        = Path("/etc/systemd/system"),
    docker_host: Annotated[Optional[str], typer.Option(
        help="a rootless Docker engine's socket, e.g. unix:///run/user/1001/docker.sock "
        "(then no docker group)")] = None,
    create_user: Annotated[bool, typer.Option(
        help="create the user with useradd --system if missing (needs root)")] = False,
    print_only: Annotated[bool, typer.Option(
        "--print", help="write the unit to stdout only; change nothing")] = False,
):
    """Write the systemd unit meca-node.service running this meca-node as USER."""
    from meca_node.cli.main import _fail, err

    if not _USER_RE.fullmatch(user):
        raise _fail(f"--user {user!r}: use a system user name (lower case letters, digits, "
                    "'_' or '-', at most 32)")
    if not _MEMORY_RE.fullmatch(memory_max):
        raise _fail(f"--memory-max {memory_max!r}: use bytes with an optional K, M, G or T "
                    "suffix (512M), a percentage of RAM (25%), or infinity")
    data_dir = data_dir.expanduser().absolute()
    config_file = (config.expanduser().absolute() if config else data_dir / "config.toml")
    roles = role or ["provider"]
    try:  # this shell's MECA_* variables do not reach the service, so they are left out
        cfg = load_config(config_file if config_file.exists() else None, {},
                          {"data_dir": data_dir, "roles": roles})
    except ConfigError as exc:
        raise _fail(str(exc)) from None
    extra: list[Path] = []
    if cfg["log_file"]:
        log_dir = (data_dir / cfg["log_file"]).parent.absolute()
        if not log_dir.is_relative_to(data_dir):
            extra.append(log_dir)
    if docker_host and not re.fullmatch(r"(unix|tcp|ssh)://\S+", docker_host):
        raise _fail(f"--docker-host {docker_host!r}: expected unix:///run/user/UID/docker.sock "
                    "(a rootless engine) or tcp://HOST:PORT")
    exe = meca_executable()

    def unit_for(account: pwd.struct_passwd | None) -> str:
        try:
            return render_unit(UnitSpec(
                exec_start=(*exe, "start", "--data-dir", str(data_dir), "--config",
                            str(config_file), *[a for r in cfg["roles"] for a in ("--role", r)]),
                user=user, group=user, data_dir=data_dir, config_file=config_file,
                roles=tuple(cfg["roles"]), memory_max=memory_max,
                drain_grace_s=cfg["drain_grace_s"], docker_host=docker_host,
                docker_uid=account.pw_uid if account else None, extra_write_paths=tuple(extra)))
        except UnitError as exc:
            raise _fail(str(exc)) from None

    account = _user(user)
    unit = unit_for(account)  # refuses what cannot go into a unit before anything changes
    for problem in install_problems(account):
        err.print(f"warning: {problem}. The service would not start: install meca-node where "
                  "its user can reach it (e.g. python3 -m venv /opt/meca-node && "
                  "/opt/meca-node/bin/pip install meca-node) and run that one's `service "
                  "install`.", highlight=False)
    if print_only:
        sys.stdout.write(unit)
        return
    if not docker_host and not _group_exists("docker"):
        err.print("warning: there is no docker group here, so SupplementaryGroups=docker would "
                  "stop the service from starting: install the Docker engine, or use a "
                  "rootless one with --docker-host (docs/edge.md)", highlight=False)
    if account is None and create_user:
        account = _create_user(user, data_dir)
        unit = unit_for(account)  # its uid in the rootless example
    todo = [] if account else [" ".join(_useradd(user, data_dir)) + "   # no such user yet"]
    todo += _prepare_data_dir(data_dir, config_file, user, account, exe[0])
    todo += [f"install -d -o {user} -g {user} -m 0750 {d}   # log_file's folder (it must "
             "exist: ReadWritePaths=)" for d in extra if not d.exists()]
    if not cfg.genesis_path.exists():
        todo.append(f"cp GENESIS.json {cfg.genesis_path}   # the network's genesis file "
                    "(`meca-node network init` makes a new network's)")
    unit_path = unit_dir / UNIT_NAME
    existed = unit_path.exists()
    try:
        unit_dir.mkdir(parents=True, exist_ok=True)
        unit_path.write_text(unit)
    except OSError as exc:
        raise _fail(f"cannot write {unit_path}: {exc}; run as root, or pass --print and "
                    "put the unit there yourself", 1) from None
    print(f"{'replaced' if existed else 'wrote'} {unit_path}:\n")
    print(unit)
    print("next:")
    for step in [*todo, "systemctl daemon-reload", f"systemctl enable --now {UNIT_NAME}",
                 f"systemctl status {UNIT_NAME}", f"journalctl -u {UNIT_NAME} -f"]:
        print(f"  {step}")


def _create_user(user: str, data_dir: Path) -> pwd.struct_passwd:
    """``useradd --system`` the service's user (root only); exit 2 or 1 saying why not."""
    from meca_node.cli.main import _fail

    if os.geteuid() != 0:
        raise _fail(f"--create-user: creating user {user!r} needs root; run this as root or "
                    f"create it yourself: {' '.join(_useradd(user, data_dir))}")
    made = subprocess.run(_useradd(user, data_dir), capture_output=True, text=True, timeout=60)
    account = _user(user)
    if made.returncode != 0 or account is None:
        raise _fail(f"useradd {user} failed: {made.stderr.strip() or 'no such user after it'}",
                    1)
    print(f"created system user {user} (uid {account.pw_uid})")
    return account


def _prepare_data_dir(data_dir: Path, config_file: Path, user: str,
                      account: pwd.struct_passwd | None, exe: str) -> list[str]:
    """Create the data dir (0750) and a default config file where absent, owned by the
    service's user when we are root; the commands still to run by hand."""
    def own(path: Path) -> None:
        if os.geteuid() == 0 and account is not None:
            os.chown(path, account.pw_uid, account.pw_gid)

    todo = []
    try:
        if not data_dir.exists():
            data_dir.mkdir(parents=True, mode=0o750)
            own(data_dir)
            print(f"created data dir {data_dir}")
        from meca_node.cli.config_cmd import write_default_config

        if write_default_config(config_file):
            own(config_file)
            print(f"wrote {config_file} (every option at its default; edit it to set them)")
    except OSError as exc:
        todo.append(f"install -d -m 0750 {data_dir} && {exe} config init --config "
                    f"{config_file}   # (here: {exc})")
    if data_dir.exists() and (account is None or data_dir.stat().st_uid != account.pw_uid):
        todo.append(f"chown -R {user}:{user} {data_dir}   # the service writes there")
    return todo
