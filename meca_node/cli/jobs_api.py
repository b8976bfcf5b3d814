"""Jobs through the running node: the provider's image source (IPFS + Docker) and the
client's ``POST /v1/jobs/run`` (JSON lines: progress, then the output)."""

from __future__ import annotations

import base64
import json
import logging
import os
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path

import trio

from meca_node.cli.ipfs_api import _engine
from meca_node.control.server import HttpError, Request, Streamed
from meca_node.core.matching import Weights
from meca_node.ipfs.cid import CID, CidError
from meca_node.net.ipfs_node import IpfsNode, Job
from meca_node.node.jobs import PULL_TICK_S, JobClient, JobFailed, while_reporting
from meca_node.store.reputation import load_reputation, save_reputation

log = logging.getLogger("meca_node.jobs")


#: how long an image the engine had is trusted to be there still (someone may `docker rmi`
#: it; the job then fails at start and the next one pulls it again)
RECHECK_S = 10.0


class IpfsImages:
    """Images by CID: the local one if loaded already, else pulled over IPFS, every block
    verified, then ``docker load``ed. Pull progress goes to the job's JobProgress."""

    def __init__(self, ipfs: IpfsNode, client, work_dir: Path, on_cached=None) -> None:
        self.ipfs = ipfs
        self.client = client
        self.work_dir = work_dir
        self.loaded: dict[str, str] = {}  # image CID -> tag
        self.on_cached = on_cached  # called with the image CIDs loaded, when they change
        self._checked: dict[str, float] = {}  # image CID -> when the engine last had it
        self._lock = trio.Lock()

    def _remember(self, image_cid: str, tag: str) -> None:
        self._checked[image_cid] = trio.current_time()
        if self.loaded.get(image_cid) != tag:
            self.loaded[image_cid] = tag
            if self.on_cached is not None:
                self.on_cached(tuple(self.loaded))

    async def scan(self, image_cids) -> None:
        """Remember which of ``image_cids`` the engine has already, from local blocks only
        (a provider's restart: its adverts show them as cached from the start)."""
        for image_cid in list(image_cids)[:256]:
            try:
                cid = CID.parse(image_cid)
            except CidError:
                continue
            if image_cid in self.loaded or not self.ipfs.store.has(cid):
                continue
            async with self._lock:
                tag = await self._already_here(cid)
            if tag:
                self._remember(image_cid, tag)

    async def _already_here(self, cid: CID) -> str | None:
        """The tag of the image this DAG holds if the engine has exactly that image (same
        config id) already: only the root and manifest.json blocks are fetched to tell."""
        from meca_node.ipfs import dagpb, unixfs

        bitswap = self.ipfs.bitswap
        try:
            await bitswap.pull(cid, timeout_s=30, recursive=False)
            root = dagpb.decode(self.ipfs.store.get(cid))
            link = next((ln for ln in root.links if ln.name == "manifest.json"), None)
            if link is None:
                return None
            await bitswap.pull(link.cid, timeout_s=30)
            manifest = json.loads(b"".join(unixfs.cat(link.cid, self.ipfs.store.get)))
            entry = manifest[0]
            config_id = Path(entry["Config"]).name.removesuffix(".json")
            config_id = config_id.removeprefix("sha256:")
            for tag in entry.get("RepoTags") or []:
                image = await trio.to_thread.run_sync(self._image, tag)
                if image is not None and image.id.removeprefix("sha256:") == config_id:
                    return tag
        except Exception as exc:  # any doubt: pull and load it as usual
            log.debug("image %s not found locally: %s", cid, exc)
        return None

    def _dag_size(self, cid: CID) -> int:
        """The image DAG's size from its root's links (0 when the root is not here)."""
        from meca_node.ipfs import dagpb

        try:
            root = dagpb.decode(self.ipfs.store.get(cid))
            return len(self.ipfs.store.get(cid)) + sum(ln.tsize or 0 for ln in root.links)
        except Exception:
            return 0

    def _image(self, tag: str):
        import docker.errors

        try:
            return self.client.images.get(tag)
        except docker.errors.ImageNotFound:
            return None

    def _present(self, tag: str) -> bool:
        import docker.errors

        try:
            self.client.images.get(tag)
            return True
        except docker.errors.ImageNotFound:
            return False

    async def ensure(self, image_cid: str, progress) -> str:
        from meca_node.runtime import images

        try:
            cid = CID.parse(image_cid)
        except CidError as exc:
            raise JobFailed("unknown_offer", f"the offer's image CID is unusable: {exc}") \
                from None
        async with self._lock:  # one pull of an image at a time
            tag = self.loaded.get(image_cid)
            now = trio.current_time()
            if tag and now - self._checked.get(image_cid, -1e9) < RECHECK_S:
                return tag  # a warm job makes no engine call here
            if tag and await trio.to_thread.run_sync(self._present, tag):
                self._checked[image_cid] = now
                return tag
            tag = await self._already_here(cid)
            if tag:
                self._remember(image_cid, tag)
                return tag
            job = Job("pull", total=self._dag_size(cid))
            try:
                stats = await while_reporting(
                    partial(_tick, progress, job, f"image {image_cid}"),
                    partial(self.ipfs.ensure, cid, job))
            except Exception as exc:
                raise JobFailed("internal", f"pulling the image {image_cid}: {exc}") from None
            fetched = f"{(stats.bytes if stats else 0) / 1e6:.1f} MB fetched"
            self.work_dir.mkdir(parents=True, exist_ok=True)
            try:  # a large image loads for a while: keep telling the client (its pull clock)
                names = await while_reporting(
                    partial(_repeat, progress, "loading", fetched),
                    partial(trio.to_thread.run_sync, images.dag_to_image, self.client, cid,
                            self.ipfs.store.get, self.work_dir))
            except Exception as exc:
                raise JobFailed("internal", f"loading the image {image_cid} into the engine: "
                                            f"{exc}") from None
            if not names:
                raise JobFailed("internal", f"image {image_cid} loaded without a tag")
            self._remember(image_cid, names[0])
            return names[0]


def _read_input(path: str) -> bytes:
    """A job input file the node reads itself (the CLI sends its path), up to the cap."""
    from meca_node.node.jobs import MAX_DATA

    try:
        with open(path, "rb") as f:
            data = f.read(MAX_DATA + 1)
            size = max(os.fstat(f.fileno()).st_size, len(data))
    except OSError as exc:
        raise HttpError(400, f"the node cannot read the input file {path}: {exc.strerror} "
                             "(the node reads it itself: give a path its user can read)") \
            from None
    if len(data) > MAX_DATA:
        raise HttpError(400, f"the input file {path} is {size} bytes, over the cap of "
                             f"{MAX_DATA} bytes ({MAX_DATA >> 20} MiB)")
    return data


async def _repeat(progress, stage: str, detail: str) -> None:
    """``stage`` at 100% every PULL_TICK_S until cancelled."""
    while True:
        await progress(stage, 100, detail)
        await trio.sleep(PULL_TICK_S)


async def _tick(progress, job: Job, what: str) -> None:
    """``pulling n%`` every PULL_TICK_S while ``job`` pulls (the client's pull clock)."""
    while True:
        percent = job.done_bytes * 100 // job.total if job.total else 0
        total = f"{job.total / 1e6:.1f} MB" if job.total else "?"
        await progress("pulling", min(99, percent),
                       f"{what}: {job.done_bytes / 1e6:.1f} of {total}")
        await trio.sleep(PULL_TICK_S)


class IpfsData:
    """Job inputs and outputs over the inline cap, as UnixFS files in the node's store."""

    def __init__(self, ipfs: IpfsNode) -> None:
        self.ipfs = ipfs

    @asynccontextmanager
    async def hold(self, data: bytes):
        from meca_node.ipfs import unixfs

        store = self.ipfs.store
        with store.protect() as guard:
            added = await trio.to_thread.run_sync(
                lambda: unixfs.add_bytes(data, lambda c, b: store.put(c, b, durable=False)))
            guard.add(added.cid)
            yield str(added.cid)

    async def fetch(self, cid: str, peer: str, max_bytes: int, progress) -> bytes:
        from meca_node.ipfs import unixfs

        try:
            root = CID.parse(cid)
        except CidError as exc:
            raise JobFailed("bad_request", f"unusable CID {cid!r}: {exc}") from None
        bitswap, store = self.ipfs.bitswap, self.ipfs.store
        with store.protect([root]):
            await bitswap.pull(root, timeout_s=30, peers=[peer], recursive=False)
            entry = await trio.to_thread.run_sync(unixfs.inspect, root, store.get)
            if entry.kind != "file":
                raise JobFailed("bad_request", f"{cid} is a {entry.kind}, not a file")
            if entry.size > max_bytes:
                raise JobFailed("bad_request", f"{cid} is {entry.size} bytes, over the cap of "
                                               f"{max_bytes} bytes")
            await bitswap.pull(root, timeout_s=self.ipfs.pull_timeout_s, peers=[peer],
                               progress=lambda stats, _n: progress(stats.bytes, entry.size))
            return await trio.to_thread.run_sync(
                lambda: b"".join(unixfs.cat(root, store.get)))


def job_routes(node, ipfs: IpfsNode, data_dir: Path, weights: Weights | None = None) -> dict:
    jobs = JobClient(node, IpfsData(ipfs), load_reputation(data_dir),
                     lambda rep: save_reputation(data_dir, rep))
    if weights is not None:
        jobs.weights = weights

    def run(request: Request) -> Streamed:
        body = request.json()
        ref = request.arg("task")
        try:
            data = base64.b64decode(body.get("input_b64", ""), validate=True)
            max_price = int(body.get("max_price", 0))
            timeout_s = float(body.get("timeout_s", 120))
        except (ValueError, TypeError) as exc:
            raise HttpError(400, f"bad job parameters: {exc}") from None
        path = body.get("input_path")
        if path is not None:
            data = _read_input(str(path))
        send, receive = trio.open_memory_channel[dict](64)

        def on_progress(stage: str, percent: int, detail: str) -> None:
            try:
                send.send_nowait({"progress": {"stage": stage, "percent": percent,
                                               "detail": detail}})
            except trio.WouldBlock:
                pass  # progress lines are advice; the result is not dropped

        async def work(job: Job) -> dict:
            try:
                outcome = await jobs.run(ref, data, max_price, timeout_s, on_progress,
                                         provider=body.get("provider") or None)
            except trio.TooSlowError:
                raise JobFailed("deadline", f"no result within {timeout_s:g} s") from None
            return {"provider": outcome.provider, "price": outcome.price,
                    "seconds": round(outcome.timings["total"], 6),
                    "pull_seconds": round(outcome.timings["pull"], 3),
                    "paid": outcome.paid,
                    "output_b64": base64.b64encode(outcome.output).decode()}

        job = ipfs.start_job(Job("run"), work)

        async def lines():
            async with receive:
                while not job.finished.is_set():
                    with trio.move_on_after(0.25):
                        await job.finished.wait()
                    while True:
                        try:
                            yield json.dumps(receive.receive_nowait()).encode() + b"\n"
                        except (trio.WouldBlock, trio.EndOfChannel):
                            break
                last = {"error": job.error} if job.error else {"done": job.result}
                yield json.dumps(last).encode() + b"\n"

        return Streamed(lines(), "application/x-ndjson")

    def match(request: Request) -> dict:
        body = request.json()
        try:
            max_price = int(body.get("max_price", 0))
        except (ValueError, TypeError) as exc:
            raise HttpError(400, f"bad max_price: {exc}") from None
        try:
            return jobs.dry_run(str(body.get("task", "")), max_price)
        except JobFailed as exc:
            raise HttpError(404 if exc.reason == "unknown_offer" else 400, exc.detail) from None

    return {"POST /v1/jobs/run": run, "POST /v1/jobs/match": match,
            "GET /v1/hosts": lambda _: jobs.hosts()}


def start_provider(node, ipfs: IpfsNode, data_dir: Path, values: dict):
    """A JobHost for a provider node with the share of the machine, price and allow-list
    of the config, or None (with a warning) when no engine answers. OfferError (a config
    value that cannot be used) propagates: the node must not start with it."""
    from meca_node.node.jobs import Capacity, JobHost
    from meca_node.runtime.environments import plan_offer
    from meca_node.runtime.executor import DockerExecutor
    from meca_node.runtime.warmpool import WarmPool

    offer = plan_offer(node.hardware, values)
    for warning in offer.warnings:
        log.warning("%s", warning)
    try:
        client = _engine()
    except HttpError as exc:
        log.warning("not running jobs: %s", exc)
        return None
    capacity = Capacity(offer.resources)
    docker = DockerExecutor(client)
    pool = WarmPool(docker, idle_s=float(values.get("warm_pool_s", 300)),
                    max_idle=int(values.get("warm_pool_max", 4)))
    def on_cached(cids: tuple[str, ...]) -> None:
        node.cached_images = cids[-256:]

    host = JobHost(node, pool,
                   IpfsImages(ipfs, client, data_dir / "tmp", on_cached),
                   capacity, offer.price, offer.allow_developers, data=IpfsData(ipfs))
    host.client, host.data_dir, host.docker = client, data_dir, docker
    host.benchmark = bool(values.get("startup_benchmark", True))
    node.capacity = capacity
    node.warm_pool = pool
    return host  # install() once environments are known and the sandbox is prepared


async def provider_up(host) -> None:
    """Decide the environments, benchmark them (cached per hardware), prepare the sandbox,
    then take jobs, and run the warm pool until the node stops. Runs beside the node: it
    starts serving before the jobs are taken."""
    from meca_node.runtime.benchmark import scores, startup_benchmarks
    from meca_node.runtime.environments import advertised, gather_environments
    from meca_node.runtime.hardware import detect_host

    try:
        envs = await trio.to_thread.run_sync(gather_environments, host.client)
        if "docker-cpu" not in envs.enabled:
            log.warning("not running jobs: %s", envs.state("docker-cpu").reason)
            return
        results = {}
        if host.benchmark:
            machine = await trio.to_thread.run_sync(detect_host, host.data_dir)
            results = await trio.to_thread.run_sync(startup_benchmarks, host.client, machine,
                                                    envs, host.data_dir)
        host.node.environments = advertised(envs, scores(results))
        await host.docker.prepare()  # before the pool holds any container
    except Exception as exc:
        log.error("not running jobs: the Docker sandbox could not be prepared (%s)", exc)
        return
    host.install()
    await host.images.scan(o.offer.image_cid for o in
                           host.node.offers.live(host.node.clock.now_ms()))
    log.info("taking jobs: %s", ", ".join(f"{e.name} (score {e.score})"
                                         for e in host.node.environments))
    try:  # tell the network now rather than at the next advert round
        await host.node.publish_advert()
    except Exception as exc:
        log.debug("advert publish failed: %s", exc)
    await host.executor.serve()  # the warm pool: idle containers expire; removed at exit
