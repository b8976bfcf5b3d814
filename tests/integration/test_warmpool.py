"""The warm container pool on the real Docker engine: reuse, bounds, expiry, dead containers.

Every test checks that no container of this process is left behind, whatever happened.
"""

from __future__ import annotations

import os
import statistics
import textwrap
import time
from contextlib import asynccontextmanager
from pathlib import Path

import docker.errors
import httpx
import pytest
import trio

from conftest import docker_engine
from meca_node.core.task import TaskResources
from meca_node.runtime import apphttp, warmpool
from meca_node.runtime.executor import DockerExecutor
from meca_node.runtime.sandbox import LABEL
from meca_node.runtime.warmpool import WarmPool
from meca_node.store.taskdir import folder_digest

pytestmark = [pytest.mark.integration, pytest.mark.docker]

ECHO = Path(__file__).resolve().parents[2] / "examples" / "echo"
ECHO_INPUT = b'{"input": "hello"}'
RES = TaskResources(cpu=0.5, mem_mib=128, use_gpu=False, gpu_count=0)
RES_BIG = TaskResources(cpu=0.5, mem_mib=192, use_gpu=False, gpu_count=0)

#: a stdlib HTTP app run under a shell that outlives it: killing the app leaves the
#: container (and its main process) running with nothing on the port
SHELL_APP = """\
import http.server

class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self):
        self.rfile.read(int(self.headers["content-length"]))
        self.send_response(200)
        self.send_header("content-length", "4")
        self.end_headers()
        self.wfile.write(b"pong")

    def log_message(self, *args):
        pass

print("meca-init-done", flush=True)
http.server.ThreadingHTTPServer(("0.0.0.0", 8080), Handler).serve_forever()
"""
#: the same app serving one connection at a time, closing a connection that sends nothing
#: for 0.3 s: the hard case for a connection opened ahead
ONE_AT_A_TIME_APP = SHELL_APP.replace(
    "ThreadingHTTPServer", "HTTPServer").replace(
    '"HTTP/1.1"\n', '"HTTP/1.1"\n    timeout = 0.3\n')
assert ONE_AT_A_TIME_APP.count("timeout = 0.3") == 1 and "Threading" not in ONE_AT_A_TIME_APP
KILL_APP = ("import os\n"
            "for p in filter(str.isdigit, os.listdir('/proc')):\n"
            "    if open(f'/proc/{p}/cmdline', 'rb').read() == b'python\\0/app/app.py\\0':\n"
            "        os.kill(int(p), 9)\n")


@pytest.fixture(scope="module")
def client():
    return docker_engine("python:3.9-slim")


@pytest.fixture(scope="module")
def images(client, tmp_path_factory) -> dict[str, str]:
    """The echo example and the shell-held app, built through the executor (as
    ``task test`` builds them), under tags of this module's own: other tests remove the
    echo example's usual tag to force a cold pull."""
    shell = tmp_path_factory.mktemp("shellapp")
    (shell / "app.py").write_text(SHELL_APP)
    (shell / "Dockerfile").write_text(textwrap.dedent("""\
        FROM python:3.9-slim
        COPY app.py /app/app.py
        CMD ["sh", "-c", "python /app/app.py; sleep 3600"]
        """))
    single = tmp_path_factory.mktemp("singleapp")
    (single / "app.py").write_text(ONE_AT_A_TIME_APP)
    (single / "Dockerfile").write_text(textwrap.dedent("""\
        FROM python:3.9-slim
        COPY app.py /app/app.py
        CMD ["python", "/app/app.py"]
        """))
    executor = DockerExecutor(client)
    echo_tag = "meca-task/warmpool-echo:" + folder_digest(ECHO)[:12]

    async def build() -> None:
        await executor.prepare()
        await executor.build(ECHO, echo_tag)
        await executor.build(shell, "meca-task/warmpool-shellapp:test")
        await executor.build(single, "meca-task/warmpool-single:test")

    trio.run(build)
    return {"echo": echo_tag, "shell": "meca-task/warmpool-shellapp:test",
            "single": "meca-task/warmpool-single:test"}


def ours(client) -> list[str]:
    """Ids of this process's task containers, running or not."""
    return [c.id for c in client.containers.list(
        all=True, filters={"label": f"{LABEL}.pid={os.getpid()}"})]


def exists(client, container_id: str) -> bool:
    try:
        client.containers.get(container_id)
        return True
    except docker.errors.NotFound:
        return False


@pytest.fixture(autouse=True)
def no_container_left(client):
    yield
    assert ours(client) == [], "a container was left behind"


@asynccontextmanager
async def serving(client, **kw):
    """A pool whose serve() runs for the block and is cancelled after it."""
    pool = WarmPool(DockerExecutor(client), **kw)
    async with trio.open_nursery() as nursery:
        await nursery.start(pool.serve)
        yield pool
        nursery.cancel_scope.cancel()


async def wait_for(predicate, timeout_s: float = 20.0) -> None:
    """Poll ``predicate`` (the pool's own state) until true; fail after ``timeout_s``."""
    with trio.fail_after(timeout_s):
        while not predicate():
            await trio.sleep(0.02)


async def job(pool: WarmPool, image: str, body: bytes = ECHO_INPUT,
              resources: TaskResources = RES) -> tuple[str, bytes]:
    async with pool.run(image, resources) as running:
        reply, _ = await pool.request(running, body)
        return running.container_id, reply


async def test_second_run_of_the_same_image_takes_the_warm_container(client, images):
    async with serving(client) as pool:
        t0 = time.perf_counter()
        first, reply = await job(pool, images["echo"])
        cold_s = time.perf_counter() - t0
        assert reply == b"hello"
        assert pool.stats() == {"idle": 1, "hits": 0, "misses": 1,
                                "evicted": 0, "not_kept_busy": 0, "ahead": 0,
                                "removing": 0}
        assert ours(client) == [first]  # kept, not removed

        await wait_for(lambda: all(e.running.ahead.ready.is_set() for e in pool._idle))
        t0 = time.perf_counter()
        second, reply = await job(pool, images["echo"])
        warm_s = time.perf_counter() - t0
        assert reply == b"hello" and second == first
        # its POST used the connection the pool had opened ahead when the first one ended
        assert pool.stats() == {"idle": 1, "hits": 1, "misses": 1,
                                "evicted": 0, "not_kept_busy": 0, "ahead": 1,
                                "removing": 0}
        assert ours(client) == [first]  # no new container
        assert warm_s < cold_s / 10

        # a warm job against a plain POST on the same app: the pool adds next to nothing
        async with pool.run(images["echo"], RES) as running, httpx.AsyncClient() as http:
            direct = []
            for _ in range(20):
                t = time.perf_counter()
                await http.post(running.address, content=ECHO_INPUT,
                                headers={"content-type": "application/json"})
                direct.append(time.perf_counter() - t)
        warm = []
        for _ in range(20):
            t = time.perf_counter()
            assert (await job(pool, images["echo"]))[0] == first
            warm.append(time.perf_counter() - t)
        direct_ms = statistics.median(direct) * 1000
        warm_ms = statistics.median(warm) * 1000
        print(f"\ncold job {cold_s * 1000:.1f} ms; first warm job {warm_s * 1000:.1f} ms; "
              f"median warm job {warm_ms:.2f} ms vs direct POST {direct_ms:.2f} ms "
              f"(pool overhead {warm_ms - direct_ms:+.2f} ms)")
        assert warm_ms < direct_ms + 10  # generous for a loaded CI machine
        assert pool.stats()["misses"] == 1


async def test_the_connection_opened_ahead_serves_an_app_of_one_connection_at_a_time(
        client, images, monkeypatch):
    """The next job's connection is opened AHEAD_AFTER_S after a container goes back idle.
    An app that serves one connection at a time gets its job on that very connection (a
    second one would wait behind it); a job that comes before the connect began, one the
    app has closed, or one held past AHEAD_HOLD_S is not used: the job connects itself."""
    monkeypatch.setattr(warmpool, "AHEAD_HOLD_S", 2.0)
    monkeypatch.setattr(warmpool, "AHEAD_AFTER_S", 0.0)

    async def timed_job() -> float:
        t0 = time.perf_counter()
        async with pool.run(images["single"], RES) as again:
            assert again is running
            assert (await pool.request(running, b"{}"))[0] == b"pong"
        return time.perf_counter() - t0

    async with serving(client) as pool:
        async with pool.run(images["single"], RES) as running:
            assert (await pool.request(running, b"{}"))[0] == b"pong"  # cold
        ahead = running.ahead
        assert ahead is not None  # made as the container went back
        await wait_for(ahead.ready.is_set)
        monkeypatch.setattr(warmpool, "AHEAD_AFTER_S", 30.0)
        # not held up by the app's 0.3 s wait on an idle connection
        assert await timed_job() < 0.3
        assert ahead.used and pool.stats()["ahead"] == 1

        # taken before its connect began (30 s): the job connects itself at once
        ahead = running.ahead
        assert not ahead.opening
        assert await timed_job() < 0.3
        assert not ahead.used and ahead.stream is None and pool.stats()["ahead"] == 1

        # the app closes an idle connection after 0.3 s: the pool still holds it (2 s),
        # the next job finds it closed and connects anew
        monkeypatch.setattr(warmpool, "AHEAD_AFTER_S", 0.0)
        assert await timed_job() < 0.3
        ahead = running.ahead
        await wait_for(lambda: ahead.ready.is_set() and ahead.stream is not None
                       and not apphttp._quiet(ahead.stream))
        monkeypatch.setattr(warmpool, "AHEAD_HOLD_S", 0.05)
        assert await timed_job() < 0.3
        assert not ahead.used and pool.stats()["ahead"] == 1

        # held past AHEAD_HOLD_S: closed by the pool, not used
        ahead = running.ahead
        await wait_for(lambda: running.ahead is None)
        assert ahead.stream is None and not ahead.used
        assert await timed_job() < 0.3
        assert pool.stats() == {"idle": 1, "hits": 5, "misses": 1,
                                "evicted": 0, "not_kept_busy": 0, "ahead": 1,
                                "removing": 0}
        assert pool.dead == 0


async def test_other_resources_do_not_share_a_container(client, images):
    async with serving(client) as pool:
        small, _ = await job(pool, images["echo"], resources=RES)
        big, reply = await job(pool, images["echo"], resources=RES_BIG)
        assert reply == b"hello" and big != small
        assert pool.stats() == {"idle": 2, "hits": 0, "misses": 2,
                                "evicted": 0, "not_kept_busy": 0, "ahead": 0,
                                "removing": 0}
        assert set(ours(client)) == {small, big}


async def test_concurrent_jobs_get_their_own_containers_and_the_bound_evicts_the_oldest(
        client, images):
    async with serving(client, max_idle=2) as pool:
        async with pool.run(images["echo"], RES) as a:
            async with pool.run(images["echo"], RES) as b:
                async with pool.run(images["echo"], RES) as c:
                    assert len({a.container_id, b.container_id, c.container_id}) == 3
                    for running in (a, b, c):
                        assert (await pool.request(running, ECHO_INPUT))[0] == b"hello"
                assert pool.stats()["idle"] == 1  # c went back first
            assert pool.stats()["idle"] == 2  # then b: the pool is full
        # a's return pushes out the oldest idle one, c: removed in the background
        assert pool.stats()["evicted"] == 1
        await wait_for(lambda: pool.stats()["removing"] == 0)
        assert pool.stats() == {"idle": 2, "hits": 0, "misses": 3,
                                "evicted": 1, "not_kept_busy": 0, "ahead": 0,
                                "removing": 0}
        assert not exists(client, c.container_id)
        assert set(ours(client)) == {a.container_id, b.container_id}
        # the next job takes the most recently returned one
        assert (await job(pool, images["echo"]))[0] == a.container_id


async def test_a_container_idle_longer_than_idle_s_is_removed(client, images):
    async with serving(client, idle_s=0.5) as pool:
        first, _ = await job(pool, images["echo"])
        assert pool.stats()["idle"] == 1
        await wait_for(lambda: pool.stats()["evicted"] == 1)
        assert pool.stats()["idle"] == 0 and not exists(client, first)
        second, reply = await job(pool, images["echo"])  # a cold start again
        assert reply == b"hello" and second != first
        assert pool.stats()["misses"] == 2


async def test_an_exception_or_cancellation_in_the_job_removes_its_container(client, images):
    async with serving(client) as pool:
        with pytest.raises(RuntimeError, match="the job failed"):
            async with pool.run(images["echo"], RES) as running:
                failed = running.container_id
                raise RuntimeError("the job failed")
        assert not exists(client, failed) and pool.stats()["idle"] == 0

        warm, _ = await job(pool, images["echo"])
        with trio.CancelScope() as scope:
            async with pool.run(images["echo"], RES) as running:
                assert running.container_id == warm  # a warm one is removed all the same
                scope.cancel()
                await trio.sleep_forever()
        assert scope.cancelled_caught
        assert not exists(client, warm) and pool.stats()["idle"] == 0


async def test_a_container_killed_while_idle_is_replaced(client, images):
    async with serving(client) as pool:
        dead, _ = await job(pool, images["echo"])
        await trio.to_thread.run_sync(lambda: client.containers.get(dead).kill())
        fresh, reply = await job(pool, images["echo"])
        assert reply == b"hello" and fresh != dead
        assert pool.dead == 1 and not exists(client, dead)
        assert pool.stats() == {"idle": 1, "hits": 0, "misses": 2,
                                "evicted": 0, "not_kept_busy": 0, "ahead": 0,
                                "removing": 0}


async def test_a_warm_container_killed_before_its_request_is_replaced_in_place(client, images):
    async with serving(client) as pool:
        dead, _ = await job(pool, images["echo"])
        async with pool.run(images["echo"], RES) as running:
            assert running.container_id == dead  # taken warm, alive
            await trio.to_thread.run_sync(lambda: client.containers.get(dead).kill())
            reply, _ = await pool.request(running, ECHO_INPUT)
            assert reply == b"hello" and running.container_id != dead
            fresh = running.container_id
        assert pool.dead == 1 and not exists(client, dead)
        assert ours(client) == [fresh]
        assert pool.stats() == {"idle": 1, "hits": 1, "misses": 1,
                                "evicted": 0, "not_kept_busy": 0, "ahead": 0,
                                "removing": 0}


async def test_a_warm_container_whose_app_died_is_replaced_at_once(client, images):
    """The container runs on (its shell), but nothing answers: the first POST is not
    retried against it, the pool falls back to a fresh container at once."""
    async with serving(client) as pool:
        hollow, reply = await job(pool, images["shell"], b"{}")
        assert reply == b"pong"
        container = client.containers.get(hollow)
        result = await trio.to_thread.run_sync(
            lambda: container.exec_run(["python", "-c", KILL_APP]))
        assert result.exit_code == 0, result.output
        t0 = time.perf_counter()
        async with pool.run(images["shell"], RES) as running:
            assert running.container_id == hollow
            reply, _ = await pool.request(running, b"{}")
            assert reply == b"pong" and running.container_id != hollow
        fallback_s = time.perf_counter() - t0
        print(f"\nfallback from a dead warm app to a fresh container: {fallback_s:.2f} s")
        assert pool.dead == 1 and not exists(client, hollow)
        assert fallback_s < pool.executor.answer_timeout_s  # no waiting out the bind loop


async def test_cancelling_serve_removes_every_idle_container_and_closes_the_pool(
        client, images):
    pool = WarmPool(DockerExecutor(client))
    async with trio.open_nursery() as outer:
        async with trio.open_nursery() as service:
            await service.start(pool.serve)
            await job(pool, images["echo"], resources=RES)
            await job(pool, images["echo"], resources=RES_BIG)
            assert pool.stats()["idle"] == 2

            leased = trio.Event()
            release = trio.Event()

            async def long_job() -> None:
                async with pool.run(images["echo"], RES) as running:
                    assert (await pool.request(running, ECHO_INPUT))[0] == b"hello"
                    leased.set()
                    await release.wait()

            outer.start_soon(long_job)
            await leased.wait()
            service.cancel_scope.cancel()
        assert pool.stats()["idle"] == 0 and len(ours(client)) == 1  # the leased one
        release.set()
    # returned after the pool closed: removed, not kept
    assert pool.stats()["idle"] == 0 and ours(client) == []


async def test_zero_idle_s_or_max_idle_turns_pooling_off(client, images):
    for kw in ({"idle_s": 0}, {"max_idle": 0}):
        async with serving(client, **kw) as pool:
            t0 = time.perf_counter()
            first, reply = await job(pool, images["echo"])
            answered = time.perf_counter() - t0
            assert reply == b"hello"
            # removed after the job, in the background: the job did not wait for it
            assert pool.stats()["removing"] == 1 and exists(client, first)
            t0 = time.perf_counter()
            await wait_for(lambda: pool.stats()["removing"] == 0)
            assert ours(client) == [] and not exists(client, first)
            print(f"\njob without a pool {answered:.3f} s, then its container's removal "
                  f"{time.perf_counter() - t0:.3f} s more")
            second, _ = await job(pool, images["echo"])
            assert second != first and pool.stats()["idle"] == 0
            assert pool.stats()["hits"] == 0
