"""The job protocol ``/meca/job/1.0.0``: a provider runs offered tasks for clients.

On one stream the client opened, each message a signed envelope in a frame
(``protocols/stream-framing.md``)::

    client   -> JobRequest
    provider -> JobReject                                  (and the stream ends), or
    provider -> JobAccept, JobProgress*, ResultCommit, JobResult

The provider admits a request only when it knows the offer, runs the offer's architecture,
has the resources free and the price fits the client's maximum; it reserves the resources
for the job and releases them on every path (success, failure, cancel). It pulls the
offer's image when it is missing (``pulling``/``loading``), starts the container in the
sandbox (``starting``) and posts the input (``running``). The client checks the
provider's signatures and that the output matches the committed hash.

Talks to the world only through ports: the stream side of :class:`Network`, an
:class:`Executor` (``runtime.executor``) and an :class:`ImageSource` (IPFS + Docker).
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

import trio

from meca_node import wire
from meca_node.core import AmbiguousOffer, KnownOffer
from meca_node.core.task import TaskResources

log = logging.getLogger("meca_node.jobs")

PROTOCOL = "/meca/job/1.0.0"


class JobStream(Protocol):
    @property
    def remote_peer(self) -> str: ...
    async def send(self, data: bytes) -> None: ...
    async def receive(self) -> bytes | None: ...
    async def close(self) -> None: ...
    async def reset(self) -> None: ...


class ImageSource(Protocol):
    async def ensure(self, image_cid: str, progress) -> str:
        """The local image of ``image_cid`` (pulled and loaded if missing); its tag."""


class Executor(Protocol):
    async def check_gpus(self, resources: TaskResources) -> None: ...
    def run(self, image: str, resources: TaskResources) -> Any: ...
    async def request(self, running: Any, body: bytes) -> tuple[bytes, float]: ...


class JobFailed(Exception):
    """A job that did not produce a checked output; ``reason`` is typed."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass
class Capacity:
    """What a provider offers, and what running jobs hold of it."""

    offered: wire.Resources
    reserved: dict[bytes, wire.Resources] = field(default_factory=dict)

    @property
    def free(self) -> wire.Resources:
        used = list(self.reserved.values())
        return wire.Resources(
            cpu_milli=max(0, self.offered.cpu_milli - sum(r.cpu_milli for r in used)),
            mem_mib=max(0, self.offered.mem_mib - sum(r.mem_mib for r in used)),
            gpu_count=max(0, self.offered.gpu_count - sum(r.gpu_count for r in used)))

    def shortfall(self, need: wire.Resources) -> str | None:
        """What is missing for ``need`` (e.g. "96 MiB free < 128 MiB"), or None if it fits."""
        free = self.free
        if need.cpu_milli > free.cpu_milli:
            return f"{free.cpu_milli / 1000:g} CPU free < {need.cpu_milli / 1000:g} needed"
        if need.mem_mib > free.mem_mib:
            return f"{free.mem_mib} MiB free < {need.mem_mib} MiB needed"
        if need.gpu_count > free.gpu_count:
            return f"{free.gpu_count} GPU(s) free < {need.gpu_count} needed"
        return None


def task_resources(r: wire.Resources) -> TaskResources:
    return TaskResources(cpu=r.cpu_milli / 1000, mem_mib=r.mem_mib, use_gpu=r.gpu_count > 0,
                         gpu_count=r.gpu_count)


class JobHost:
    """The provider side. ``node`` gives keys, clock, the offer book and the network."""

    def __init__(self, node, executor: Executor, images: ImageSource, capacity: Capacity,
                 price: int, allow: frozenset[bytes] = frozenset()) -> None:
        self.node = node
        self.executor = executor
        self.images = images
        self.capacity = capacity
        self.price = price
        self.allow = allow
        self.done = 0
        self.failed = 0

    def install(self) -> None:
        self.node.net.set_stream_handler(PROTOCOL, self.handle)

    def _open(self, data: bytes | None) -> wire.Envelope:
        if data is None:
            raise JobFailed("bad_request", "the stream ended before a JobRequest")
        env = wire.open_envelope(data, max_size=self.node.settings.caps.stream_frame)
        if env.net != self.node.genesis.network_id:
            raise JobFailed("bad_request", "the request is for another network")
        return env

    async def _send(self, stream: JobStream, body) -> None:
        await stream.send(self.node.seal(body))

    async def handle(self, stream: JobStream) -> None:
        job_id = bytes(16)
        try:
            env = self._open(await stream.receive())
            if not isinstance(env.body, wire.JobRequest):
                raise JobFailed("bad_request", f"expected a JobRequest, got {env.type}")
            req: wire.JobRequest = env.body
            job_id = req.job_id
            offer = self._admit(req, env.signer)
        except JobFailed as exc:
            await self._send(stream, wire.JobReject(job_id=job_id, reason=exc.reason,
                                                    detail=exc.detail[:1024]))
            return
        except wire.WireError as exc:
            await self._send(stream, wire.JobReject(job_id=job_id, reason="bad_request",
                                                    detail=str(exc)[:1024]))
            return
        need = offer.offer.resources
        self.capacity.reserved[job_id] = need
        try:
            await self._send(stream, wire.JobAccept(job_id=job_id, price=self.price,
                                                    queue_position=0))
            output = await self._run_watched(stream, job_id, offer, req.input)
            digest = hashlib.sha256(output).digest()
            await self._send(stream, wire.ResultCommit(job_id=job_id, result_sha256=digest,
                                                       size=len(output)))
            await self._send(stream, wire.JobResult(job_id=job_id, output=output,
                                                    output_cid=""))
            self.done += 1
        except JobFailed as exc:
            self.failed += 1
            try:
                await self._send(stream, wire.JobReject(job_id=job_id, reason=exc.reason,
                                                        detail=exc.detail[:1024]))
            except Exception:  # the client is gone: nobody to tell
                log.info("job %s: %s (client gone)", job_id.hex(), exc)
        except Exception as exc:  # the stream broke while sending: the client is gone
            self.failed += 1
            log.info("job %s ended: %s", job_id.hex(), exc)
        finally:
            self.capacity.reserved.pop(job_id, None)  # released on every path

    def _admit(self, req: wire.JobRequest, client: bytes) -> KnownOffer:
        now = self.node.clock.now_ms()
        if req.deadline and req.deadline < now:
            raise JobFailed("deadline", "the job's deadline has passed")
        offer = next((o for o in self.node.offers.live(now) if o.offer_id == req.offer_id),
                     None)
        if offer is None:
            raise JobFailed("unknown_offer", f"this provider knows no live offer "
                                             f"{req.offer_id.hex()[:16]}")
        if self.allow and offer.signer not in self.allow:
            raise JobFailed("not_allowed", "this provider runs offers of chosen developers "
                                           "only")
        if offer.offer.arch and offer.offer.arch != self.node.arch:
            raise JobFailed("arch", f"the task's image is {offer.offer.arch}; this provider "
                                    f"is {self.node.arch}")
        total = self.price + offer.offer.fee
        if total > req.max_price:
            raise JobFailed("price", f"price {self.price} + fee {offer.offer.fee} = {total} "
                                     f"> max {req.max_price}")
        short = self.capacity.shortfall(offer.offer.resources)
        if short:
            raise JobFailed("no_fit", short)
        if req.job_id in self.capacity.reserved:
            raise JobFailed("bad_request", "a job with this id is running")
        return offer

    async def _run_watched(self, stream: JobStream, job_id: bytes, offer: KnownOffer,
                           body: bytes) -> bytes:
        """Run the job while watching the stream: a client that goes away (or breaks the
        protocol by sending more) cancels it; the container is removed (the executor's
        removal is shielded) and the reservation released."""
        result: list[bytes] = []
        gone = False

        async def watch(scope: trio.CancelScope) -> None:
            nonlocal gone
            try:
                await stream.receive()
            except Exception:
                pass
            gone = True
            scope.cancel()

        failure: list[JobFailed] = []
        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch, nursery.cancel_scope)
            try:  # kept out of the nursery, which would wrap it in a group
                result.append(await self._run(stream, job_id, offer, body))
            except JobFailed as exc:
                failure.append(exc)
            nursery.cancel_scope.cancel()
        if failure:
            raise failure[0]
        if gone and not result:
            raise JobFailed("bad_request", "the client went away; the job was stopped")
        return result[0]

    async def _run(self, stream: JobStream, job_id: bytes, offer: KnownOffer,
                   body: bytes) -> bytes:
        async def progress(stage: str, percent: int, detail: str = "") -> None:
            await self._send(stream, wire.JobProgress(job_id=job_id, stage=stage,
                                                      percent=max(0, min(100, percent)),
                                                      detail=detail[:256]))

        resources = task_resources(offer.offer.resources)
        try:
            await self.executor.check_gpus(resources)
            tag = await self.images.ensure(offer.offer.image_cid, progress)
            await progress("starting", 0)
            async with self.executor.run(tag, resources) as running:
                await progress("running", 0)
                output, _ = await self.executor.request(running, body)
            return output
        except JobFailed:
            raise
        except Exception as exc:  # the executor's and the pull's errors carry their why
            stage = getattr(exc, "stage", "internal")
            raise JobFailed("internal", f"{stage}: {exc}") from None


@dataclass
class JobOutcome:
    output: bytes
    provider: str
    price: int
    timings: dict[str, float]
    progress: list[tuple[str, int, str]]


class JobClient:
    """The client side: pick a provider for an offer, send the request, check the answer."""

    def __init__(self, node) -> None:
        self.node = node

    def choose(self, offer: KnownOffer, max_price: int) -> tuple[list[str], list[str]]:
        """Providers (peer ids) that may run ``offer`` (connected, fresh advert, provider
        role, the offer's environment and arch, enough free resources, price + fee within
        ``max_price``), cheapest first; and why each other provider cannot."""
        now = self.node.clock.now_ms()
        connected = {p.peer_id for p in self.node.net.connected_peers()}
        need = offer.offer.resources
        fits, reasons = [], []
        for a in self.node.peerbook.fresh(now, 3 * int(self.node.settings.advert_interval_s
                                                        * 1000) + self.node.settings.skew_ms):
            ad = a.advert
            if "provider" not in ad.roles:
                continue
            why = _unfit(ad, offer.offer, need, max_price, a.peer_id in connected)
            if why:
                reasons.append(f"{a.peer_id[-8:]} {why}")
            else:
                fits.append((ad.price, a.peer_id))
        return [pid for _, pid in sorted(fits)], reasons

    async def run(self, ref: str, body: bytes, max_price: int, timeout_s: float,
                  on_progress=None) -> JobOutcome:
        now = self.node.clock.now_ms()
        try:
            offer = self.node.offers.find(ref, now)
        except AmbiguousOffer as exc:
            raise JobFailed("bad_request", str(exc)) from None
        if offer is None:
            raise JobFailed("unknown_offer", f"no live offer matches {ref!r} (see "
                                             "`meca-node offers`)")
        if len(body) > self.node.settings.caps.stream_frame - 4096:
            raise JobFailed("bad_request", f"input of {len(body)} bytes is over the inline "
                                           "cap; inputs as IPFS CIDs are not supported yet")
        providers, reasons = self.choose(offer, max_price)
        if not providers:
            detail = "; ".join(reasons) if reasons else "no provider has advertised yet"
            raise JobFailed("no_fit", f"no connected provider can run {offer.label} for at "
                                      f"most {max_price}: {detail}")
        provider = providers[0]
        job_id = self.node.rand.token_bytes(16)
        t0 = time.monotonic()
        progress: list[tuple[str, int, str]] = []
        request = wire.JobRequest(job_id=job_id, offer_id=offer.offer_id, input=body,
                                  max_price=max_price,
                                  deadline=now + int(timeout_s * 1000))
        cap = self.node.settings.caps.stream_frame
        with trio.fail_after(timeout_s):
            stream = await self.node.net.open_stream(provider, PROTOCOL)
            try:
                await stream.send(self.node.seal(request))
                commit = None
                accepted = None
                while True:
                    data = await stream.receive()
                    if data is None:
                        raise JobFailed("internal", "the provider ended the stream early")
                    env = wire.open_envelope(data, max_size=cap)
                    if env.signer != _public_key(provider) or env.body.job_id != job_id:
                        raise JobFailed("internal", "a message not from the provider or "
                                                    "not for this job")
                    body_ = env.body
                    if isinstance(body_, wire.JobReject):
                        raise JobFailed(body_.reason, f"{provider}: {body_.detail}")
                    if isinstance(body_, wire.JobAccept):
                        accepted = body_
                    elif isinstance(body_, wire.JobProgress):
                        progress.append((body_.stage, body_.percent, body_.detail))
                        if on_progress:
                            on_progress(body_.stage, body_.percent, body_.detail)
                    elif isinstance(body_, wire.ResultCommit):
                        commit = body_
                    elif isinstance(body_, wire.JobResult):
                        if commit is None or accepted is None:
                            raise JobFailed("internal", "a result without accept and commit")
                        out = body_.output
                        if (hashlib.sha256(out).digest() != commit.result_sha256
                                or len(out) != commit.size):
                            raise JobFailed("internal", f"{provider}'s output does not match "
                                                        "its signed commitment")
                        return JobOutcome(out, provider, accepted.price,
                                          {"total": time.monotonic() - t0}, progress)
            finally:
                await stream.close()


def _unfit(ad: wire.HostAdvert, offer: wire.TaskOffer, need: wire.Resources,
           max_price: int, connected: bool) -> str | None:
    """Why a provider's advert cannot take the offer, or None."""
    if not connected:
        return "is not connected"
    if offer.environment and offer.environment not in {e.name for e in ad.environments}:
        return f"has no {offer.environment}" + (" (needs a GPU and the NVIDIA runtime)"
                                                if offer.environment == "docker-gpu" else "")
    if offer.arch and ad.arch != offer.arch:
        return f"is {ad.arch}, the task is {offer.arch}"
    if ad.free.gpu_count < need.gpu_count:
        return f"has {ad.free.gpu_count} GPU(s) free < {need.gpu_count}"
    if ad.free.cpu_milli < need.cpu_milli:
        return f"has {ad.free.cpu_milli / 1000:g} CPU free < {need.cpu_milli / 1000:g}"
    if ad.free.mem_mib < need.mem_mib:
        return f"has {ad.free.mem_mib} MiB free < {need.mem_mib} MiB"
    if ad.price + offer.fee > max_price:
        return f"asks {ad.price} + fee {offer.fee} > max {max_price}"
    return None


def _public_key(peer_id: str) -> bytes:
    from meca_node.core import public_key_of_peer_id

    return public_key_of_peer_id(peer_id)
