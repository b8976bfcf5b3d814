"""The developer's local loop: build a task folder and check it answers its example.

Talks to the container engine only through the :class:`Executor` port.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from meca_node.core.compare import explain_mismatch
from meca_node.core.task import TaskSpec


class Executor(Protocol):
    async def prepare(self) -> None: ...
    async def check_gpus(self, resources) -> None: ...
    async def build(self, folder: Path, tag: str, on_line: Callable[[str], None] | None = None,
                    buildargs: dict[str, str] | None = None) -> str: ...
    def run(self, image: str, resources) -> AbstractAsyncContextManager[Any]: ...
    async def request(self, running: Any, body: bytes) -> tuple[bytes, float]: ...


@dataclass
class TaskTestReport:
    name: str
    image_id: str
    tag: str
    ok: bool
    timings_s: dict[str, float] = field(default_factory=dict)
    reply: bytes = b""
    mismatch: str = ""


def image_tag(spec: TaskSpec, digest: str) -> str:
    """``meca-task/<slug of name>:<first 12 hex of the folder's content digest>``."""
    slug = "".join(c if c.isalnum() or c in "._-" else "-" for c in spec.name.lower())
    slug = slug.strip("._-")[:64] or "task"
    return f"meca-task/{slug}:{digest[:12]}"


async def test_task(spec: TaskSpec, folder: Path, digest: str, executor: Executor,
                    on_event: Callable[[str, str], None],
                    buildargs: dict[str, str] | None = None) -> TaskTestReport:
    """Build, start in the sandbox, POST the example input, compare with the example output."""
    timings: dict[str, float] = {}
    tag = image_tag(spec, digest)
    await executor.check_gpus(spec.resources)  # refuse before a long build
    await executor.prepare()
    t0 = time.monotonic()
    on_event("build", f"building {tag}")
    image_id = await executor.build(folder, tag, lambda line: on_event("build-log", line),
                                    buildargs)
    timings["build"] = time.monotonic() - t0
    on_event("start", "starting the container in the sandbox")
    t1 = time.monotonic()
    async with executor.run(tag, spec.resources) as running:
        timings["start_to_init"] = running.init_s
        on_event("ready", f"meca-init-done after {running.init_s:.2f} s; POSTing "
                          f"example_input.bin ({len(spec.example_input)} bytes)")
        reply, request_s = await executor.request(running, spec.example_input)
        timings["start_to_first_answer"] = time.monotonic() - t1
        timings["request"] = request_s
    report = TaskTestReport(spec.name, image_id, tag, reply == spec.example_output, timings,
                            reply)
    if not report.ok:
        report.mismatch = explain_mismatch(spec.example_output, reply)
    return report
