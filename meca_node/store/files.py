"""Atomic and private file writes: a crash never leaves a half-written file."""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path


class PrivateFileError(Exception):
    """A secret file can be read by other users, or is not a regular file."""


def atomic_write(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Write ``data`` to ``path`` via a temp file, fsync and rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # unique per writer: two threads of one process may write the same file at once
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.fchmod(fd, mode)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    try:
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass


def write_private(path: Path, data: bytes) -> None:
    """Atomic write readable by the owner only (mode 0600)."""
    atomic_write(path, data, 0o600)


def read_private(path: Path) -> bytes:
    """Read a secret file, refusing one that group or others can read."""
    st = path.lstat()
    if not stat.S_ISREG(st.st_mode):
        raise PrivateFileError(f"{path} is not a regular file")
    if st.st_mode & 0o077:
        raise PrivateFileError(
            f"{path} is readable by other users (mode {stat.S_IMODE(st.st_mode):04o}); "
            f"fix it with: chmod 600 {path}")
    return path.read_bytes()
