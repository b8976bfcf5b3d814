"""``meca-node key export`` and ``key import``: back up and restore the node key, encrypted
under a passphrase (argon2id and secretbox; the format is in core/keybackup.py).

The passphrase is asked on the terminal (twice on export), or read from the environment
variable MECA_KEY_PASSPHRASE for scripts; never from the command line, where other users
could read it in the process list.
"""

from __future__ import annotations

import getpass
import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from meca_node.cli import main as m
from meca_node.control.client import running_pid
from meca_node.core import keybackup
from meca_node.store.files import write_private
from meca_node.store.keys import KEY_FILE, KeyFileError, install_key, load_key

PASSPHRASE_ENV = "MECA_KEY_PASSPHRASE"

key_app = typer.Typer(no_args_is_help=True, help="Back up and restore the node key, encrypted "
                      f"under a passphrase (asked on the terminal, or from {PASSPHRASE_ENV}).")
m.app.add_typer(key_app, name="key")


def _passphrase(confirm: bool) -> str:
    value = os.environ.get(PASSPHRASE_ENV)
    if value is not None:
        if not value:
            raise m._fail(f"{PASSPHRASE_ENV} is set but empty")
        return value
    if not sys.stdin.isatty():
        raise m._fail(f"no passphrase: run this in a terminal, or set {PASSPHRASE_ENV}")
    first = getpass.getpass("passphrase: ")
    if not first:
        raise m._fail("the passphrase is empty")
    if confirm and getpass.getpass("passphrase again: ") != first:
        raise m._fail("the two passphrases differ; nothing written")
    return first


@key_app.command("export")
def key_export(
        out_file: Annotated[Optional[Path], typer.Option(
            "--out", help="file to write (mode 0600; default: standard output)")] = None,
        force: Annotated[bool, typer.Option(
            "--force", help="replace an existing file")] = False,
        data_dir: m.DataDir = None, config: m.ConfigFile = None):
    """Write this node's key encrypted under a passphrase, with its peer id in clear."""
    cfg = m._config(config, data_dir=data_dir)
    try:
        identity = load_key(cfg.data_dir)
    except KeyFileError as exc:
        raise m._fail(str(exc)) from None
    if out_file is not None and (out_file.exists() or out_file.is_symlink()) and not force:
        raise m._fail(f"{out_file} exists; pass --force to replace it or --out elsewhere")
    passphrase = _passphrase(confirm=True)
    text = keybackup.seal(identity, passphrase, os.urandom(keybackup.SALT_BYTES),
                          os.urandom(keybackup.NONCE_BYTES)).to_json()
    if out_file is None:
        sys.stdout.write(text)
        return
    try:
        write_private(out_file, text.encode())
    except OSError as exc:
        raise m._fail(f"cannot write {out_file}: {exc}") from None
    print(f"wrote the key of {identity.peer_id}, encrypted, to {out_file}")


@key_app.command("import")
def key_import(
        file: Annotated[Path, typer.Argument(help="a file written by `meca-node key export`")],
        force: Annotated[bool, typer.Option(
            "--force", help="replace an existing node key (kept as node.key.bak-<time>)")]
            = False,
        data_dir: m.DataDir = None, config: m.ConfigFile = None, json_out: m.JsonOut = False):
    """Make the key in an exported FILE this node's key (the node must be stopped)."""
    cfg = m._config(config, data_dir=data_dir)
    try:
        backup = keybackup.parse(file.read_bytes())
    except OSError as exc:
        raise m._fail(f"cannot read {file}: {exc.strerror or exc}") from None
    except keybackup.BadKeyBackup as exc:
        raise m._fail(f"{file}: {exc}") from None
    pid = running_pid(cfg.data_dir)
    if pid is not None:
        raise m._fail(f"a node (pid {pid}) is running with data dir {cfg.data_dir}; stop it "
                      "before replacing its key")
    key_path = cfg.data_dir / KEY_FILE
    if (key_path.exists() or key_path.is_symlink()) and not force:
        try:
            current = f"peer id {load_key(cfg.data_dir).peer_id}"
        except KeyFileError:
            current = "unreadable"
        raise m._fail(f"{key_path} exists ({current}); pass --force to replace it with "
                      f"{backup.peer_id} (the old key is kept as {KEY_FILE}.bak-<time>)")
    passphrase = _passphrase(confirm=False)
    try:
        identity = keybackup.unseal(backup, passphrase)
    except keybackup.KeyBackupError as exc:
        raise m._fail(f"{file}: {exc}; nothing written") from None
    try:
        old = install_key(cfg.data_dir, identity, replace=force)
    except (KeyFileError, OSError) as exc:
        raise m._fail(f"cannot install the key: {exc}") from None
    if json_out:
        m.out.print_json(data={"peer_id": identity.peer_id, "key_file": str(key_path),
                               "backup": str(old) if old else None})
        return
    print(f"node key is now {identity.peer_id} ({key_path})")
    if old:
        print(f"the previous key is kept in {old}")
