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
