"""QuickLock (node/quicklock.py): a free Lock or Semaphore is taken without a scheduler
turn; a held one is waited for, in order, as trio's own."""

from __future__ import annotations

import trio
import trio.testing

from meca_node.node.quicklock import QuickLock


async def test_a_free_lock_is_taken_without_a_checkpoint():
    lock = QuickLock(trio.Lock())
    with trio.testing.assert_no_checkpoints():
        async with lock:
            assert lock.locked()
    assert not lock.locked()
    sem = QuickLock(trio.Semaphore(1))
    with trio.testing.assert_no_checkpoints():
        await sem.acquire()
    assert sem.locked() and sem.value == 0
    sem.release()
    assert not sem.locked()


async def test_a_held_lock_is_waited_for_in_order():
    lock = QuickLock(trio.Lock())
    order: list[str] = []

    async def take(name: str) -> None:
        async with lock:
            order.append(name)
            await trio.lowlevel.checkpoint()  # held across one: the next still waits

    with trio.fail_after(5):
        await lock.acquire()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(take, "first")
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(take, "second")
            await trio.testing.wait_all_tasks_blocked()
            assert order == [] and lock.statistics().tasks_waiting == 2
            lock.release()
    assert order == ["first", "second"]
