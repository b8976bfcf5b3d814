"""The SIGUSR1 task dump names every task and where it waits."""

from __future__ import annotations

import trio
import trio.testing

from meca_node.node.tasks_dump import dump_tasks


async def parked(event: trio.Event) -> None:
    await event.wait()


def test_the_dump_shows_each_task_and_its_waiting_frame() -> None:
    async def main() -> str:
        event = trio.Event()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(parked, event, name="job-42")
            await trio.testing.wait_all_tasks_blocked()
            text = dump_tasks()
            event.set()
        return text

    text = trio.run(main)
    line = next(x for x in text.splitlines() if "job-42" in x)
    assert "parked" in line and "test_tasks_dump.py" in line
    assert line.startswith("  ")  # indented under its parent
