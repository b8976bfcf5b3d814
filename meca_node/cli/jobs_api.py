"""Jobs through the running node: the provider's image source (IPFS + Docker) and the
client's ``POST /v1/jobs/run`` (JSON lines: progress, then the output)."""

from __future__ import annotations

import base64
import json
import logging
from pathlib import Path

import trio

from meca_node.cli.ipfs_api import _engine
from meca_node.control.server import HttpError, Request, Streamed
from meca_node.ipfs.cid import CID, CidError
from meca_node.net.ipfs_node import IpfsNode, Job
from meca_node.node.jobs import JobClient, JobFailed

log = logging.getLogger("meca_node.jobs")


class IpfsImages:
    """Images by CID: the local one if loaded already, else pulled over IPFS, every block
    verified, then ``docker load``ed. Pull progress goes to the job's JobProgress."""

    def __init__(self, ipfs: IpfsNode, client, work_dir: Path) -> None:
        self.ipfs = ipfs
        self.client = client
        self.work_dir = work_dir
        self.loaded: dict[str, str] = {}  # image CID -> tag
        self._lock = trio.Lock()

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
            if tag and await trio.to_thread.run_sync(self._present, tag):
                return tag
            tag = await self._already_here(cid)
            if tag:
                self.loaded[image_cid] = tag
                return tag
            await progress("pulling", 0, image_cid)
            job = Job("pull")
            try:
                stats = await self.ipfs.ensure(cid, job)
            except Exception as exc:
                raise JobFailed("internal", f"pulling the image {image_cid}: {exc}") from None
            await progress("loading", 100, f"{stats.bytes if stats else 0} bytes fetched")
            self.work_dir.mkdir(parents=True, exist_ok=True)
            names = await trio.to_thread.run_sync(images.dag_to_image, self.client, cid,
                                                  self.ipfs.store.get, self.work_dir)
            if not names:
                raise JobFailed("internal", f"image {image_cid} loaded without a tag")
            self.loaded[image_cid] = names[0]
            return names[0]


def job_routes(node, ipfs: IpfsNode) -> dict:
    jobs = JobClient(node)

    def run(request: Request) -> Streamed:
        body = request.json()
        ref = request.arg("task")
        try:
            data = base64.b64decode(body.get("input_b64", ""), validate=True)
            max_price = int(body.get("max_price", 0))
            timeout_s = float(body.get("timeout_s", 120))
        except (ValueError, TypeError) as exc:
            raise HttpError(400, f"bad job parameters: {exc}") from None
        send, receive = trio.open_memory_channel[dict](64)

        def on_progress(stage: str, percent: int, detail: str) -> None:
            try:
                send.send_nowait({"progress": {"stage": stage, "percent": percent,
                                               "detail": detail}})
            except trio.WouldBlock:
                pass  # progress lines are advice; the result is not dropped

        async def work(job: Job) -> dict:
            try:
                outcome = await jobs.run(ref, data, max_price, timeout_s, on_progress)
            except trio.TooSlowError:
                raise JobFailed("deadline", f"no result within {timeout_s:g} s") from None
            return {"provider": outcome.provider, "price": outcome.price,
                    "seconds": round(outcome.timings["total"], 3),
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

    return {"POST /v1/jobs/run": run}


def start_provider(node, ipfs: IpfsNode, data_dir: Path, values: dict):
    """A JobHost for a provider node with the share of the machine, price and allow-list
    of the config, or None (with a warning) when no engine answers. OfferError (a config
    value that cannot be used) propagates: the node must not start with it."""
    from meca_node.node.jobs import Capacity, JobHost
    from meca_node.runtime.environments import plan_offer
    from meca_node.runtime.executor import DockerExecutor

    offer = plan_offer(node.hardware, values)
    for warning in offer.warnings:
        log.warning("%s", warning)
    try:
        client = _engine()
    except HttpError as exc:
        log.warning("not running jobs: %s", exc)
        return None
    capacity = Capacity(offer.resources)
    host = JobHost(node, DockerExecutor(client), IpfsImages(ipfs, client, data_dir / "tmp"),
                   capacity, offer.price, offer.allow_developers)
    host.client, host.data_dir = client, data_dir
    host.benchmark = bool(values.get("startup_benchmark", True))
    node.capacity = capacity
    return host  # install() once environments are known and the sandbox is prepared


async def provider_up(host) -> None:
    """Decide the environments, benchmark them (cached per hardware), prepare the sandbox,
    then take jobs. Runs beside the node: it starts serving before this finishes."""
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
        await host.executor.prepare()
    except Exception as exc:
        log.error("not running jobs: the Docker sandbox could not be prepared (%s)", exc)
        return
    host.install()
    log.info("taking jobs: %s", ", ".join(f"{e.name} (score {e.score})"
                                         for e in host.node.environments))
    try:  # tell the network now rather than at the next advert round
        await host.node.publish_advert()
    except Exception as exc:
        log.debug("advert publish failed: %s", exc)
