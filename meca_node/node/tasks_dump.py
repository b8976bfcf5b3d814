"""What every trio task of the node is waiting on, for an operator (``kill -USR1 PID``
writes it to the log): the task tree with each task's innermost frames."""

from __future__ import annotations

import trio

#: frames shown per task (innermost last), tasks listed at most
FRAMES = 6
MAX_TASKS = 2000


def _frames(coro) -> list[str]:
    out = []
    for _ in range(64):  # bounded: a chain of awaits
        frame = getattr(coro, "cr_frame", None) or getattr(coro, "gi_frame", None)
        if frame is None:
            break
        out.append(f"{frame.f_code.co_filename.rsplit('/', 2)[-1]}:{frame.f_lineno} "
                   f"{frame.f_code.co_name}")
        coro = getattr(coro, "cr_await", None) or getattr(coro, "gi_yieldfrom", None)
        if coro is None:
            break
    return out[-FRAMES:]


def dump_tasks() -> str:
    """The task tree of the current trio run, one task per line with where it waits."""
    lines: list[str] = []
    stack = [(trio.lowlevel.current_root_task(), 0)]
    while stack and len(lines) < MAX_TASKS:
        task, depth = stack.pop()
        if task is None:
            continue
        lines.append("  " * depth + f"{task.name}: " + " <- ".join(
            reversed(_frames(task.coro))))
        for nursery in task.child_nurseries:
            for child in sorted(nursery.child_tasks, key=lambda t: t.name, reverse=True):
                stack.append((child, depth + 1))
    return "\n".join(lines)
