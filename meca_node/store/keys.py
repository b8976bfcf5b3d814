"""The node key file: a 32-byte Ed25519 seed, hex, mode 0600, created on first start (or
installed from a backup by ``meca-node key import``)."""

from __future__ import annotations

import os
import time
from pathlib import Path

from meca_node.core import Identity
from meca_node.store.files import PrivateFileError, read_private, write_private

KEY_FILE = "node.key"


class KeyFileError(Exception):
    """The node key is missing, unreadable, too open, or corrupt; the message says how to fix it."""


def load_key(data_dir: Path) -> Identity:
    path = data_dir / KEY_FILE
    try:
        text = read_private(path).decode("ascii").strip()
        seed = bytes.fromhex(text)
        return Identity(seed)
    except FileNotFoundError:
        raise KeyFileError(f"no node key at {path}; `meca-node start` creates one") from None
    except PrivateFileError as exc:
        raise KeyFileError(f"refusing to use the node key: {exc}") from None
    except (ValueError, UnicodeDecodeError):
        raise KeyFileError(f"{path} is not a node key (expected 64 hex characters); move it "
                           "away to create a new identity") from None


def load_or_create_key(data_dir: Path) -> tuple[Identity, bool]:
    """The node identity, creating the key on first use; returns (identity, created)."""
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = data_dir / KEY_FILE
    if path.exists() or path.is_symlink():
        return load_key(data_dir), False
    identity = Identity(os.urandom(32))
    install_key(data_dir, identity)
    return identity, True


def install_key(data_dir: Path, identity: Identity, *, replace: bool = False) -> Path | None:
    """Make ``identity`` the node key (atomic write, mode 0600). An existing key is refused
    unless ``replace``; then its bytes are first kept in ``node.key.bak-<UTC time>`` (mode
    0600), whose path is returned."""
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = data_dir / KEY_FILE
    backup = None
    if path.exists() or path.is_symlink():
        if not replace:
            raise KeyFileError(f"{path} exists")
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        backup = data_dir / f"{KEY_FILE}.bak-{stamp}"
        n = 1
        while backup.exists() or backup.is_symlink():
            backup = data_dir / f"{KEY_FILE}.bak-{stamp}-{n}"
            n += 1
        write_private(backup, path.read_bytes())
    write_private(path, identity.seed.hex().encode() + b"\n")
    return backup
