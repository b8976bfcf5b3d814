"""ServedStream's reader and timer (the provider's side of a job stream), on an in-memory
stream: frames between jobs reach ``receive`` in order, anything during a watched job
stops it, and the slow-start callback runs once, only for a body still running."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from meca_node.node.served_stream import ServedStream


class _Pipe:
    """The client's end feeds frames (None: it closed); the provider's end reads them."""

    def __init__(self) -> None:
        self.feed, self._out = trio.open_memory_channel[bytes | None](16)
        self.sent: list[bytes] = []
        self.remote_peer = "peer"

    async def receive(self) -> bytes | None:
        return await self._out.receive()

    async def send(self, data: bytes) -> None:
        self.sent.append(data)

    async def send_many(self, frames: list[bytes]) -> None:
        self.sent.extend(frames)

    async def close(self) -> None:
        pass

    async def reset(self) -> None:
        pass


def run(test) -> None:
    trio.run(test, clock=trio.testing.MockClock(autojump_threshold=0))


async def _served(nursery) -> tuple[_Pipe, ServedStream]:
    pipe = _Pipe()
    served = ServedStream(pipe)
    await nursery.start(served.serve)
    return pipe, served


def test_frames_between_jobs_arrive_in_order_then_the_end():
    async def main():
        async with trio.open_nursery() as nursery:
            pipe, served = await _served(nursery)
            for frame in (b"one", b"two", None):
                await pipe.feed.send(frame)
            assert [await served.receive() for _ in range(3)] == [b"one", b"two", None]
            assert await served.receive() is None  # and it stays ended
            assert not served.gone
            await served.send(b"x")
            assert pipe.sent == [b"x"]
            nursery.cancel_scope.cancel()
    run(main)


@pytest.mark.parametrize("arrives", [b"mid-job", None], ids=["a frame", "the end"])
def test_anything_during_a_watched_job_stops_it(arrives):
    async def main():
        async with trio.open_nursery() as nursery:
            pipe, served = await _served(nursery)
            reached_end = False
            with trio.CancelScope() as scope, served.watching(scope):
                await pipe.feed.send(arrives)
                await trio.sleep(3600)
                reached_end = True
            assert scope.cancelled_caught and served.gone and not reached_end
            assert await served.receive() is None  # nothing more is read after that
            nursery.cancel_scope.cancel()
    run(main)


def test_a_frame_sent_before_the_job_began_watching_stops_it_at_once():
    async def main():
        async with trio.open_nursery() as nursery:
            pipe, served = await _served(nursery)
            await pipe.feed.send(b"request")
            assert await served.receive() == b"request"
            await pipe.feed.send(b"too early")  # read, waiting in the channel
            await trio.testing.wait_all_tasks_blocked()
            with trio.CancelScope() as scope, served.watching(scope):
                await trio.sleep(3600)
            assert scope.cancelled_caught and served.gone
            nursery.cancel_scope.cancel()
    run(main)


def test_a_quiet_job_is_not_stopped_and_the_next_request_still_arrives():
    async def main():
        async with trio.open_nursery() as nursery:
            pipe, served = await _served(nursery)
            with trio.CancelScope() as scope, served.watching(scope):
                await trio.sleep(5)
            assert not scope.cancelled_caught and not served.gone
            await pipe.feed.send(b"next")
            assert await served.receive() == b"next"
            nursery.cancel_scope.cancel()
    run(main)


def test_the_slow_callback_runs_once_only_for_a_slow_body():
    async def main():
        calls: list[float] = []

        async def slow() -> None:
            calls.append(trio.current_time())

        async with trio.open_nursery() as nursery:
            _pipe, served = await _served(nursery)
            start = trio.current_time()
            async with served.after(0.2, slow):
                await trio.sleep(0.1)  # fast: no callback
            await trio.sleep(1)
            assert calls == []
            start = trio.current_time()
            async with served.after(0.2, slow):
                await trio.sleep(5)  # slow: one callback, at 0.2 s
            await trio.sleep(1)
            assert len(calls) == 1 and abs(calls[0] - start - 0.2) < 1e-6
            nursery.cancel_scope.cancel()
    run(main)


def test_leaving_waits_for_a_callback_under_way():
    async def main():
        order: list[str] = []

        async def slow() -> None:
            order.append("callback starts")
            await trio.sleep(1)
            order.append("callback ends")

        async with trio.open_nursery() as nursery:
            _pipe, served = await _served(nursery)
            async with served.after(0.2, slow):
                await trio.sleep(0.5)  # ends while the callback is sending
            order.append("body left")
            assert order == ["callback starts", "callback ends", "body left"]
            nursery.cancel_scope.cancel()
    run(main)


def test_a_failing_callback_stops_the_watched_job_as_gone():
    async def main():
        async def slow() -> None:
            raise ConnectionError("the client reads nothing")

        async with trio.open_nursery() as nursery:
            _pipe, served = await _served(nursery)
            with trio.CancelScope() as scope, served.watching(scope):
                async with served.after(0.2, slow):
                    await trio.sleep(3600)
            assert scope.cancelled_caught and served.gone
            nursery.cancel_scope.cancel()
    run(main)
