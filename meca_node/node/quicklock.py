"""A trio lock that costs no scheduler turn when it is free.

Every ``trio.Lock.acquire`` and ``trio.Semaphore.acquire`` is a checkpoint, taken or not:
the task goes back on the run queue and every other ready task of the node runs first. On
a hot path where the lock is almost always free (a stream's write, the ledger's entry
lock), that lets a node's other work (gossip, the warm pool, the control API) run inside a
job's exchange. :class:`QuickLock` wraps a Lock or Semaphore: a free one is taken at once
(``acquire_nowait``), a held one is waited for exactly as trio does (in order, with a
checkpoint). What follows the lock usually checkpoints anyway (a socket call, a store).
"""

from __future__ import annotations

import trio


class QuickLock:
    """``QuickLock(trio.Lock())`` or ``QuickLock(trio.Semaphore(n))``: the same object,
    except that a free one is taken without a scheduler turn."""

    __slots__ = ("_inner",)

    def __init__(self, inner) -> None:
        self._inner = inner

    async def acquire(self) -> None:
        try:
            self._inner.acquire_nowait()
        except trio.WouldBlock:
            await self._inner.acquire()

    def acquire_nowait(self) -> None:
        self._inner.acquire_nowait()

    def release(self) -> None:
        self._inner.release()

    def locked(self) -> bool:
        """Held (a Lock), or no unit left (a Semaphore)."""
        inner = self._inner
        return inner.locked() if hasattr(inner, "locked") else inner.value == 0

    def __getattr__(self, name: str):  # value, statistics(), ...
        return getattr(self._inner, name)

    async def __aenter__(self) -> None:
        await self.acquire()

    async def __aexit__(self, *exc) -> None:
        self.release()
