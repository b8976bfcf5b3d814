"""The provider's side of one job stream: one reader and one timer for the stream's life.

A provider watches the stream while a job runs (a client that goes away, or sends anything
mid-job, stops it) and tells a client whose job is slow to start that it is starting. Done
with a watcher task and a timer task per job, that cost a warm job about 0.6 ms of the
provider's time (two task starts, a cancelled read through py-libp2p's stream stack, two
nursery exits; traced in bench/README.md). Here both tasks start once per stream, which a
client reuses for job after job, and a job only flips state:

* the **reader** reads every frame. Between jobs it hands them to :meth:`receive` (one at a
  time: the channel holds one frame, so a client that floods is not read ahead of); while a
  job is :meth:`watching`, anything that arrives, the end of the stream included, cancels
  that job's scope and marks the stream ``gone``.
* the **timer** runs one callback when a deadline set by :meth:`after` passes; setting and
  clearing the deadline wakes nobody.

Both end when :meth:`serve`'s scope is cancelled (the handler's end).
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, contextmanager
from typing import Any, Iterator

import trio


class ServedStream:
    """Wraps a job stream (send, send_many, receive, close, reset, remote_peer) for
    :class:`meca_node.node.jobs.JobHost`; start :meth:`serve` in a nursery first."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream
        self.gone = False  # a frame or the end arrived while a job was watching
        self._frames_in, self._frames = trio.open_memory_channel[bytes | None](1)
        self._watch: trio.CancelScope | None = None
        self._due = math.inf
        self._callback: Callable[[], Awaitable[None]] | None = None
        self._timer: trio.CancelScope | None = None
        self._firing: trio.Event | None = None  # while a callback runs: set when it returns

    @property
    def remote_peer(self) -> str:
        return self.stream.remote_peer

    async def send(self, data: bytes) -> None:
        await self.stream.send(data)

    async def send_many(self, frames: list[bytes]) -> None:
        await self.stream.send_many(frames)

    async def close(self) -> None:
        await self.stream.close()

    async def reset(self) -> None:
        await self.stream.reset()

    async def receive(self) -> bytes | None:
        """The next frame, or None once the stream has ended (or broke)."""
        try:
            return await self._frames.receive()
        except trio.EndOfChannel:
            return None

    # -- the tasks --------------------------------------------------------------------
    async def serve(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """The reader and the timer; runs until cancelled (or, for the reader, until the
        stream ends; the timer then goes on for a job still running)."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._read)
            nursery.start_soon(self._tick)
            task_status.started()

    async def _read(self) -> None:
        async with self._frames_in:
            while True:
                try:
                    frame = await self.stream.receive()
                except Exception:  # a broken stream ends like a closed one
                    frame = None
                if self._watch is not None:
                    self.gone = True
                    self._watch.cancel()
                    return  # mid-job input breaks the protocol: nothing more is read
                if frame is None:
                    return
                await self._frames_in.send(frame)

    async def _tick(self) -> None:
        while True:
            with trio.CancelScope(deadline=self._due) as self._timer:
                await trio.sleep_forever()
            self._timer = None
            callback, self._callback = self._callback, None
            if callback is None or trio.current_time() < self._due:
                continue
            self._due = math.inf
            firing = self._firing = trio.Event()
            try:
                await callback()
            except Exception:  # the client stopped reading: the job it waits for stops
                self.gone = True
                if self._watch is not None:
                    self._watch.cancel()
            finally:
                firing.set()
                if self._firing is firing:  # nobody is waiting for it: done with
                    self._firing = None

    # -- what a job uses ------------------------------------------------------------------
    @contextmanager
    def watching(self, scope: trio.CancelScope) -> Iterator[None]:
        """While inside, a frame or the end of the stream cancels ``scope`` and sets
        ``gone``; so does one that arrived after the last :meth:`receive`."""
        stats = self._frames.statistics()
        if stats.current_buffer_used or stats.tasks_waiting_send or \
                stats.open_send_channels == 0:
            self.gone = True
            scope.cancel()
        self._watch = scope
        try:
            yield
        finally:
            self._watch = None

    @asynccontextmanager
    async def after(self, delay_s: float,
                    callback: Callable[[], Awaitable[None]]) -> AsyncIterator[None]:
        """Run ``callback`` (once, in the timer task) if the body is still running after
        ``delay_s``; leaving waits for a callback under way, so what it sends goes out
        before what the body's caller sends next."""
        self._callback = callback
        self._due = trio.current_time() + delay_s
        if self._timer is not None:
            self._timer.deadline = self._due
        try:
            yield
        finally:
            self._callback = None
            self._due = math.inf
            if self._timer is not None:
                self._timer.deadline = math.inf
            firing, self._firing = self._firing, None
            if firing is not None:
                with trio.CancelScope(shield=True):
                    await firing.wait()
