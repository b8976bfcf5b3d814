"""Read a task folder from disk for :func:`meca_node.core.task.check_task`."""

from __future__ import annotations

from pathlib import Path

from meca_node.core.task import MAX_EXAMPLE, REQUIRED_DIRS, REQUIRED_FILES, TaskSpec, check_task


def read_task_folder(folder: Path) -> TaskSpec:
    """Validate ``folder``; raises ``TaskInvalid`` (every problem) or ``NotADirectoryError``."""
    if not folder.is_dir():
        raise NotADirectoryError(f"{folder} is not a directory; give the task folder's path")
    files: dict[str, bytes | None] = {}
    for name in REQUIRED_FILES:
        path = folder / name
        if path.is_file():
            with path.open("rb") as f:
                files[name] = f.read(MAX_EXAMPLE + 1)  # over the cap is reported, not read whole
        else:
            files[name] = None
    dirs = {name: (folder / name).is_dir() and any((folder / name).iterdir())
            for name in REQUIRED_DIRS}
    return check_task(files, dirs)


def folder_digest(folder: Path, max_files: int = 10_000) -> str:
    """SHA-256 over every file's relative path and bytes (sorted): the task's content id."""
    import hashlib

    h = hashlib.sha256()
    paths = sorted(p for p in folder.rglob("*") if p.is_file())
    if len(paths) > max_files:
        raise ValueError(f"{folder} holds more than {max_files} files")
    for path in paths:
        rel = path.relative_to(folder).as_posix().encode()
        h.update(len(rel).to_bytes(4, "big") + rel)
        with path.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        h.update(b"\0")
    return h.hexdigest()
