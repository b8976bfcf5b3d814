"""The job protocol ``/meca/job/1.0.0``: a provider runs offered tasks for clients.

On a stream the client opened, each message a signed envelope in a frame
(``protocols/stream-framing.md``)::

    client   -> JobRequest
    provider -> JobReject, or
    provider -> JobAccept, JobProgress*, ResultCommit, JobResult

(a job that answers within :data:`SLOW_START_S` gets its JobAccept, ResultCommit and
JobResult in one write; a slower one gets the JobAccept with its first progress)

then the client may send its next JobRequest on the same stream (one job at a time per
stream): a fresh libp2p stream costs a round trip of stream negotiation (~2.5 ms here),
so the client keeps a few idle streams per provider (:data:`CLIENT_IDLE_S`) and the
provider ends a stream idle for :data:`PROVIDER_IDLE_S`. Anything the client sends while a
job runs breaks the protocol and stops the job; a client that goes away stops it too.

Inputs and outputs up to the inline cap (the stream frame cap less room for the envelope)
travel in the messages; larger ones (up to :data:`MAX_DATA`) as the CID of a UnixFS file
that the other side fetches over Bitswap, checked block by block (the output also
against the signed ResultCommit). Time spent pulling the input and the image does not
count against the job's deadline: the provider sends ``pulling`` progress at least every
:data:`PULL_TICK_S` and the client's clock for the run starts after the pull, while a
pull that goes silent for :data:`PULL_STALL_S` fails.

The provider admits a request only when it knows the offer, runs the offer's architecture,
has the resources free and the price fits the client's maximum; it reserves the resources
for the job and releases them on every path (success, failure, cancel). It pulls the
offer's image when it is missing (``pulling``/``loading``), starts the container in the
sandbox (``starting``) and posts the input (``running``). The client checks the
provider's signatures and that the output matches the committed hash.

Talks to the world only through ports: the stream side of :class:`Network`, an
:class:`Executor` (``runtime.executor``, or its warm pool), an :class:`ImageSource` (IPFS +
Docker) and a :class:`DataSource` (IPFS) for large inputs and outputs.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from collections import Counter
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any, Protocol

import trio

from meca_node import wire
from meca_node.core import AmbiguousOffer, KnownOffer
from meca_node.core.matching import PARTS, Candidate, Need, Weights, choose, rank, summary
from meca_node.core.replicas import (
    Commitment, Verdict, check_refusal, decide, distinct_hosts,
)
from meca_node.core.reputation import Reputation
from meca_node.core.task import TaskResources
from meca_node.node.served_stream import ServedStream

log = logging.getLogger("meca_node.jobs")

PROTOCOL = "/meca/job/1.0.0"
#: the largest input or output a job carries (inline or as a CID)
MAX_DATA = 64 * 1024 * 1024
#: room for the envelope around inline data in a stream frame
ENVELOPE_ROOM = 4096
#: the provider ends a job stream with no request for this long
PROVIDER_IDLE_S = 60.0
#: the client reuses an idle stream only this long (well inside the provider's idle time)
CLIENT_IDLE_S = 20.0
#: the longest opening a job stream or sending the request may take (a stalled connection)
OPEN_STREAM_S = 10.0
#: idle streams the client keeps per provider
CLIENT_IDLE_STREAMS = 4
#: most jobs on one stream
MAX_JOBS_PER_STREAM = 100_000
#: the provider reports a running pull at least this often...
PULL_TICK_S = 1.0
#: ...and the client gives up on a pull silent for this long
PULL_STALL_S = 30.0
#: progress the provider sends only when starting takes longer than this (a warm start
#: sends none, so a warm job is four messages)
SLOW_START_S = 0.2
PULL_STAGES = ("pulling", "loading")
#: the longest a provider's progress message may take to send
SEND_WHOLE_S = 10.0
#: how long a provider waits for the client's receipt after its ResultCommit
PAY_TIMEOUT_S = 30.0
#: ...in a replicated job, where the client first waits for every replica's commitment (a
#: replica may be pulling the image): the client decides within REPLICA_DECIDE_S of the
#: first commitment, well inside this
REPLICA_PAY_WAIT_S = 600.0
REPLICA_DECIDE_S = 540.0
#: clients a provider remembers took a commitment without paying (refused after)
MAX_DEFAULTERS = 4096
#: answers a provider keeps for a repeated request (same client, same job id): it answers
#: from these instead of running the job again (at most this many, bytes, seconds)
KEEP_ANSWERS = 256
KEEP_ANSWER_BYTES = 64 * 1024 * 1024
KEEP_ANSWER_S = 600.0


class JobStream(Protocol):
    @property
    def remote_peer(self) -> str: ...
    async def send(self, data: bytes) -> None: ...
    async def send_many(self, frames: list[bytes]) -> None: ...
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


class DataSource(Protocol):
    async def fetch(self, cid: str, peer: str, max_bytes: int, progress) -> bytes:
        """The bytes of the UnixFS file ``cid`` from ``peer`` (refused over ``max_bytes``
        before it is pulled); ``progress(done_bytes, total)`` while pulling."""

    def hold(self, data: bytes) -> AbstractAsyncContextManager[str]:
        """Add ``data`` to the local store; its CID, kept while the context is open."""


#: provider-side failures after which the client tries the next provider (none is tried
#: again once we paid for an attempt)
#: bytes kept free in JobResult.log for the line that says how much of the log was cut
LOG_NOTE_ROOM = 64
RETRY_REASONS = frozenset({"busy", "no_fit", "internal", "unknown_offer", "arch",
                           "not_allowed", "refused_client"})
MAX_ATTEMPTS = 3  # providers tried for one job
#: a failed job's reason -> the outcome recorded in the provider's reputation
OUTCOME_OF = {"deadline": "timeout", "internal": "failure", "bad_output": "cheat",
              "minority": "minority"}
MAX_ROUNDS = 100_000  # choices and waits for an advert change, per job (a bound)
MAX_WAITING = 1024  # jobs of one client node waiting for a busy network at once
SAVE_SCORES_S = 2.0  # the reputation table is saved at most this often after successes


class JobFailed(Exception):
    """A job that did not produce a checked output; ``reason`` is typed."""

    def __init__(self, reason: str, detail: str, paid: int = 0,
                 paid_commit: bytes = b"") -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
        self.paid = paid  # what the client had paid for this attempt (a receipt signed)
        self.paid_commit = paid_commit  # the provider's ResultCommit that receipt is over


#: jobs a provider keeps waiting for resources, by default (config ``queue_max``)
QUEUE_MAX = 8


@dataclass
class Capacity:
    """What a provider offers, what running jobs hold of it, and the jobs waiting for it
    (first come, first served; at most ``queue_max``)."""

    offered: wire.Resources
    reserved: dict[bytes, wire.Resources] = field(default_factory=dict)
    queue_max: int = QUEUE_MAX
    waiting: list[bytes] = field(default_factory=list)  # job ids, oldest first
    #: the node is stopping: nothing is free for new jobs (adverts say so)
    draining: bool = False
    _changed: trio.Event = field(default_factory=trio.Event)

    @property
    def load(self) -> int:
        """Jobs running and waiting (the advert's ``queue``)."""
        return len(self.reserved) + len(self.waiting)

    def release(self, job_id: bytes) -> None:
        """The job's resources are free (or it stopped waiting): wake the waiting."""
        if self.reserved.pop(job_id, None) is not None or job_id in self.waiting:
            if job_id in self.waiting:
                self.waiting.remove(job_id)
            self._wake()

    def drain(self) -> None:
        """Offer nothing from now on; the jobs waiting wake up to leave the queue."""
        self.draining = True
        self._wake()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    def next_release(self) -> trio.Event:
        """An event set at the next release: take it *before* looking at the queue, so a
        release while the looker awaits something else is not missed."""
        return self._changed

    @property
    def free(self) -> wire.Resources:
        if self.draining:
            return wire.Resources(cpu_milli=0, mem_mib=0, gpu_count=0)
        used = list(self.reserved.values())
        return wire.Resources(
            cpu_milli=max(0, self.offered.cpu_milli - sum(r.cpu_milli for r in used)),
            mem_mib=max(0, self.offered.mem_mib - sum(r.mem_mib for r in used)),
            gpu_count=max(0, self.offered.gpu_count - sum(r.gpu_count for r in used)))

    def holds(self, need: wire.Resources) -> bool:
        """Whether ``need`` fits what is offered when no job runs."""
        o = self.offered
        return (need.cpu_milli <= o.cpu_milli and need.mem_mib <= o.mem_mib
                and need.gpu_count <= o.gpu_count)

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


async def while_reporting(report, work):
    """Await ``work()`` while ``report()`` (a loop sending progress) runs beside it; the
    work's result, or its exception as itself (not wrapped in a nursery's group)."""
    failure: Exception | None = None
    async with trio.open_nursery() as nursery:
        nursery.start_soon(report)
        try:  # caught in the body: raised from here it would come out in a group
            result = await work()
        except Exception as exc:
            failure = exc
        nursery.cancel_scope.cancel()
    if failure is not None:
        raise failure
    return result


def task_resources(r: wire.Resources) -> TaskResources:
    return TaskResources(cpu=r.cpu_milli / 1000, mem_mib=r.mem_mib, use_gpu=r.gpu_count > 0,
                         gpu_count=r.gpu_count)


class JobHost:
    """The provider side. ``node`` gives keys, clock, the offer book and the network."""

    def __init__(self, node, executor: Executor, images: ImageSource, capacity: Capacity,
                 price: int, allow: frozenset[bytes] = frozenset(),
                 data: DataSource | None = None) -> None:
        self.node = node
        self.executor = executor
        self.images = images
        self.capacity = capacity
        self.price = price
        self.allow = allow
        self.data = data
        self.done = 0
        self.failed = 0
        self.rejected: Counter[str] = Counter()  # requests refused unadmitted, by reason
        self.failures: Counter[str] = Counter()  # admitted jobs failed, by reason
        self._held: dict[int, list[bytes]] = {}  # per stream: sealed, not sent yet
        self._defaulters: dict[bytes, None] = {}  # clients that did not pay (oldest first)
        #: (client, job id) -> the answer, for a repeated request (oldest first)
        self._kept: dict[tuple[bytes, bytes], _Kept] = {}
        self._kept_bytes = 0
        self.draining = False
        #: jobs admitted and not answered yet (waiting, running, or waiting for payment)
        self.active = 0
        self._quiet = trio.Event()  # set when ``active`` falls to 0 (then replaced)

    async def drain(self, grace_s: float) -> int:
        """Stop taking jobs and let the admitted ones finish, for up to ``grace_s``.

        New requests and the jobs waiting in the queue are refused as ``busy`` (clients
        go to another provider); the advert, sent at once, offers nothing. Returns how
        many jobs were still unfinished at the end of the grace period (the caller then
        cancels them, which stops their containers)."""
        self.draining = True
        self.capacity.drain()
        try:
            await self.node.publish_advert()
        except Exception as exc:  # the network may be going too: the drain goes on
            log.debug("draining advert not sent: %s", exc)
        with trio.move_on_after(grace_s):
            while self.active:
                await self._quiet.wait()
        return self.active

    def install(self) -> None:
        self.node.net.set_stream_handler(PROTOCOL, self.handle)

    @property
    def inline_cap(self) -> int:
        return self.node.settings.caps.stream_frame - ENVELOPE_ROOM

    def _open(self, data: bytes) -> wire.Envelope:
        env = wire.open_envelope(data, max_size=self.node.settings.caps.stream_frame)
        if env.net != self.node.genesis.network_id:
            raise JobFailed("bad_request", "the request is for another network")
        return env

    async def _send(self, stream: JobStream, *bodies) -> None:
        """Send ``bodies`` (messages, or envelopes sealed already), after any message held
        for this stream, in one write."""
        frames = self._held.pop(id(stream), []) + [
            b if isinstance(b, bytes) else self.node.seal(b) for b in bodies]
        if len(frames) == 1:
            await stream.send(frames[0])
        else:
            await stream.send_many(frames)

    async def _send_whole(self, stream: JobStream, body) -> None:
        """``_send`` that a cancellation does not cut short: progress is sent beside the
        work, which cancels it when done, and a cut write would lose the held JobAccept
        (or half a frame). Bounded by SEND_WHOLE_S: a client that stops reading is gone."""
        with trio.CancelScope(shield=True, deadline=trio.current_time() + SEND_WHOLE_S) \
                as scope:
            await self._send(stream, body)
        if scope.cancelled_caught:
            raise JobFailed("gone", f"the client read nothing for {SEND_WHOLE_S:g} s")

    def _hold(self, stream: JobStream, body) -> None:
        """Send ``body`` with the stream's next message: a JobAccept waits for the result
        of a job that answers fast (one write instead of two), or for the first progress
        of a slow one."""
        self._held.setdefault(id(stream), []).append(self.node.seal(body))

    async def handle(self, stream: JobStream) -> None:
        """Serve jobs one after the other on ``stream`` until the client closes it, it
        idles for PROVIDER_IDLE_S, or a job ends it (client gone, protocol broken). One
        reader and one timer serve the stream's jobs (:class:`ServedStream`)."""
        served = ServedStream(stream)
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(served.serve)
                try:
                    for _ in range(MAX_JOBS_PER_STREAM):
                        data = None
                        with trio.move_on_after(PROVIDER_IDLE_S):
                            data = await served.receive()
                        if data is None or not await self._job(served, data):
                            break
                finally:
                    nursery.cancel_scope.cancel()
        except Exception as exc:  # the stream broke: the client is gone
            log.debug("job stream from %s ended: %s", stream.remote_peer, exc)
        finally:
            await stream.close()

    async def _job(self, stream: JobStream, data: bytes) -> bool:
        """Answer one JobRequest; whether the stream may carry another."""
        job_id = bytes(16)
        try:
            env = self._open(data)
            if not isinstance(env.body, wire.JobRequest):
                raise JobFailed("bad_request", f"expected a JobRequest, got {env.type}")
            req: wire.JobRequest = env.body
            job_id = req.job_id
            kept = self._kept_answer(env.signer, job_id)
            if kept is not None:  # a repeat: the same answer again, never the work again
                return await self._answer_again(stream, env.signer, req, kept)
            offer = self._admit(req, env.signer)
        except (JobFailed, wire.WireError) as exc:
            reason = exc.reason if isinstance(exc, JobFailed) else "bad_request"
            self.rejected[reason] += 1
            await self._send(stream, wire.JobReject(job_id=job_id, reason=reason,
                                                    detail=str(getattr(exc, "detail", exc))
                                                    [:1024]))
            return True
        self.active += 1
        try:
            return await self._admitted(stream, env, req, offer)
        finally:
            self.active -= 1
            if not self.active:
                self._quiet.set()
                self._quiet = trio.Event()

    async def _admitted(self, stream: JobStream, env: wire.Envelope, req: wire.JobRequest,
                        offer: KnownOffer) -> bool:
        """Queue, run, get paid for and answer one admitted job; whether the stream may
        carry another."""
        job_id = req.job_id
        cap = self.capacity
        try:
            if cap.waiting or cap.shortfall(offer.offer.resources):
                await self._wait_turn(stream, job_id, offer, req.deadline)
            else:
                self._hold(stream, wire.JobAccept(job_id=job_id, price=self.price,
                                                  queue_position=0))
            cap.reserved[job_id] = offer.offer.resources
            budget_s = max(0.0, (req.deadline - self.node.clock.now_ms()) / 1000)
            output, app_log = await self._run_watched(stream, job_id, offer, req, budget_s)
            # the work is done: its resources are free while we wait for the receipt
            self.capacity.release(job_id)
            digest = hashlib.sha256(output).digest()
            commit = self.node.seal(wire.ResultCommit(job_id=job_id, result_sha256=digest,
                                                      size=len(output)))
            kept = self._keep(env.signer, job_id, _Kept(commit, output, app_log, self.price,
                                                         paid=not self._paid(offer)))
            if not kept.paid:  # fair exchange: the commitment, the receipt, the output
                await self._send(stream, commit)
                await self._collect_payment(stream, env.signer, offer, req, commit)
                kept.paid = True
                commit = None
            reusable = await self._release(stream, job_id, kept, commit)
            self.done += 1
            return reusable
        except JobFailed as exc:
            self.failed += 1
            self.failures[exc.reason] += 1
            self._held.pop(id(stream), None)  # a reject says it all
            if exc.reason == "gone":
                log.info("job %s: %s", job_id.hex(), exc.detail)
                return False
            if exc.reason == "minority":  # the client said why it does not pay: no answer
                log.info("job %s: %s", job_id.hex(), exc.detail)
                return True
            try:
                await self._send(stream, wire.JobReject(job_id=job_id, reason=exc.reason,
                                                        detail=exc.detail[:1024]))
            except Exception:  # the client is gone: nobody to tell
                log.info("job %s: %s (client gone)", job_id.hex(), exc)
                return False
            return True
        except Exception as exc:  # the stream broke while sending: the client is gone
            self.failed += 1
            log.info("job %s ended: %s", job_id.hex(), exc)
            return False
        finally:
            self._held.pop(id(stream), None)
            self.capacity.release(job_id)  # released on every path (or no longer waiting)

    async def _wait_turn(self, stream: JobStream, job_id: bytes, offer: KnownOffer,
                         deadline_ms: int) -> None:
        """Wait in the queue until this job is first and its resources are free, telling
        the client its place (``queued``) whenever it changes. A client that goes away
        leaves the queue; the job's deadline passing fails it."""
        cap, need = self.capacity, offer.offer.resources
        cap.waiting.append(job_id)
        self._hold(stream, wire.JobAccept(job_id=job_id, price=self.price,
                                          queue_position=len(cap.waiting)))
        told = 0
        late = False
        with trio.CancelScope() as watched, stream.watching(watched):
            for _ in range(MAX_ROUNDS):  # bounded: each round follows a release
                released = cap.next_release()
                if self.draining:
                    break
                place = cap.waiting.index(job_id) + 1
                short = cap.shortfall(need)
                if place == 1 and short is None:
                    break
                if place != told:
                    told = place
                    await self._send_whole(stream, wire.JobProgress(
                        job_id=job_id, stage="queued", percent=0,
                        detail=f"place {place} of {len(cap.waiting)} in the queue"
                               + (f" ({short})" if short else "")))
                left_s = (deadline_ms - self.node.clock.now_ms()) / 1000
                if left_s <= 0:
                    late = True
                    break
                with trio.move_on_after(left_s):
                    await released.wait()
        cap.release(job_id)  # out of the queue: the next in line may go
        if self.draining:
            raise JobFailed("busy", "the provider is shutting down; it takes no more jobs")
        if stream.gone:
            raise JobFailed("gone", "the client went away while its job waited in the queue")
        if late:
            raise JobFailed("deadline", f"the job waited in the queue (place {told}) until "
                                        "its deadline")

    async def _release(self, stream: JobStream, job_id: bytes, kept: "_Kept",
                       commit: bytes | None) -> bool:
        """Send the output (after ``commit`` when it has not gone out yet): inline, or as a
        CID held until the client has fetched it. Whether the stream may carry another."""
        output = kept.output
        if len(output) <= self.inline_cap or self.data is None:
            await self._send(stream, *filter(None, [commit]),
                             wire.JobResult(job_id=job_id, output=output, output_cid="",
                                            log=kept.log))
            return True
        async with self.data.hold(output) as cid:
            await self._send(stream, *filter(None, [commit]), wire.JobResult(
                job_id=job_id, output=b"", output_cid=cid, log=kept.log))
            # kept until the client has fetched it and closed the stream
            with trio.move_on_after(PROVIDER_IDLE_S):
                await stream.receive()
        return False

    def _kept_answer(self, client: bytes, job_id: bytes) -> "_Kept | None":
        kept = self._kept.get((client, job_id))
        if kept is not None and time.monotonic() - kept.at > KEEP_ANSWER_S:
            self._forget((client, job_id))
            return None
        return kept

    def _keep(self, client: bytes, job_id: bytes, kept: "_Kept") -> "_Kept":
        """Remember the answer to (client, job id) for a repeated request (bounded)."""
        self._forget((client, job_id))
        self._kept[(client, job_id)] = kept
        self._kept_bytes += len(kept.output)
        while self._kept and (len(self._kept) > KEEP_ANSWERS
                              or self._kept_bytes > KEEP_ANSWER_BYTES):
            self._forget(next(iter(self._kept)))
        return kept

    def _forget(self, key: tuple[bytes, bytes]) -> None:
        old = self._kept.pop(key, None)
        if old is not None:
            self._kept_bytes -= len(old.output)

    async def _answer_again(self, stream: JobStream, client: bytes, req: wire.JobRequest,
                            kept: "_Kept") -> bool:
        """A request with the id of a job this client ran here already (its stream broke,
        say, after it paid): the same commitment and output, from what we kept; a receipt
        is asked for only if none over that commitment is known yet."""
        job_id = req.job_id
        accept = wire.JobAccept(job_id=job_id, price=kept.price, queue_position=0)
        if not kept.paid and self.node.ledger.paid_for(client, kept.commit):
            kept.paid = True
        if kept.paid:
            self.done += 1
            await self._send(stream, accept)
            return await self._release(stream, job_id, kept, kept.commit)
        offer = self.node.offers.get(req.offer_id, self.node.clock.now_ms())
        if offer is None:
            await self._send(stream, wire.JobReject(job_id=job_id, reason="unknown_offer",
                                                    detail="the job's offer is withdrawn"))
            return True
        await self._send(stream, accept, kept.commit)
        try:
            await self._collect_payment(stream, client, offer, req, kept.commit)
        except JobFailed as exc:
            log.info("job %s (repeated): %s", job_id.hex(), exc.detail)
            return False
        kept.paid = True
        self.done += 1
        return await self._release(stream, job_id, kept, None)

    def _admit(self, req: wire.JobRequest, client: bytes) -> KnownOffer:
        if self.draining:
            raise JobFailed("busy", "the provider is shutting down; it takes no more jobs")
        now = self.node.clock.now_ms()
        if req.deadline and req.deadline < now:
            raise JobFailed("deadline", "the job's deadline has passed")
        offer = self.node.offers.get(req.offer_id, now)
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
        if req.input_cid and self.data is None:
            raise JobFailed("bad_request", "this provider takes inline inputs only")
        if self._paid(offer):
            ledger = self.node.ledger
            if client in self._defaulters:
                raise JobFailed("refused_client", "this client took a result commitment "
                                                  "here before without paying for it")
            if ledger.is_refused(client):
                raise JobFailed("refused_client", "the client's account is refused network-"
                                                  "wide (a proven fork)")
            have = ledger.balance(client)
            if have < req.max_price:
                raise JobFailed("balance", f"the client's balance of {have} (as this provider "
                                           f"knows it) cannot cover its max price "
                                           f"{req.max_price}")
        cap = self.capacity
        if req.job_id in cap.reserved or req.job_id in cap.waiting:
            raise JobFailed("bad_request", "a job with this id is running")
        short = cap.shortfall(offer.offer.resources)
        if short and not cap.holds(offer.offer.resources):
            raise JobFailed("no_fit", short)
        if (short or cap.waiting) and len(cap.waiting) >= cap.queue_max:
            raise JobFailed("busy", f"{short or 'others wait first'}; the queue is full "
                                    f"({len(cap.waiting)} jobs wait)")
        return offer

    def _paid(self, offer: KnownOffer) -> bool:
        return self.price + offer.offer.fee > 0

    async def _collect_payment(self, stream: JobStream, client: bytes, offer: KnownOffer,
                               req: wire.JobRequest, commit: bytes) -> None:
        """Wait for the client's Receipt over ``commit``; check it names this job, offer,
        commitment, provider, developer and split, and take it into the ledger (stored
        before the output is released). A client that sends none is remembered and
        refused later; in a replicated job a PaymentRefusal that proves our result cannot
        be in the majority (``core.replicas``) is an answer, not a default."""
        job_id = req.job_id
        data = None
        with trio.move_on_after(PAY_TIMEOUT_S if req.replicas == 1 else REPLICA_PAY_WAIT_S):
            data = await stream.receive()
        if data is None and req.replicas > 1:
            # a replicated job's client may drop a replica it no longer needs (the vote was
            # decided without it, or it timed out): unpaid, but no default; the answer is
            # kept, and a client that comes back with this job id can still pay for it
            raise JobFailed("gone", f"the client left replicated job {job_id.hex()} "
                                    "unpaid (its vote was decided without us)")
        if data is None:
            self._default(client)
            raise JobFailed("gone", "the client did not pay for the result commitment; no "
                                    "output released, the client is refused from now on")
        try:
            env = wire.open_envelope(data, max_size=self.node.settings.caps.stream_frame)
        except wire.WireError as exc:
            raise JobFailed("bad_request", f"expected a Receipt: {exc}") from None
        r = env.body
        if isinstance(r, wire.PaymentRefusal) and env.signer == client:
            self._refused(r, req, commit, client)
        want = dict(job_id=job_id, offer_id=offer.offer_id, commit=commit,
                    provider=self.node.identity.public_key, developer=offer.signer,
                    price=self.price, fee=offer.offer.fee)
        if (env.net != self.node.genesis.network_id or env.signer != client
                or not isinstance(r, wire.Receipt)
                or any(getattr(r, k) != v for k, v in want.items())):
            raise JobFailed("bad_request", "expected the client's Receipt for this job, its "
                                           "offer, this commitment and the split "
                                           f"{self.price} + {offer.offer.fee}")
        why = await self.node.ledger.take_payment(env, peer=stream.remote_peer)
        if why is not None:
            raise JobFailed("balance", f"the receipt was not accepted: {why}")

    def _default(self, client: bytes) -> None:
        """Remember ``client`` took a commitment without paying (refused from now on)."""
        self._defaulters[client] = None
        while len(self._defaulters) > MAX_DEFAULTERS:
            del self._defaulters[next(iter(self._defaulters))]

    def _refused(self, refusal: wire.PaymentRefusal, req: wire.JobRequest,
                 commit: bytes, client: bytes) -> None:
        """A replicated job's client does not pay us: JobFailed("minority") when its proof
        holds (nothing is released, the client is not a defaulter), else a bad request."""
        cap = self.node.settings.caps.stream_frame
        own = wire.open_envelope(commit, max_size=cap).body
        providers = {_public_key(a.peer_id) for a in self.node.peerbook.all()
                     if "provider" in a.advert.roles}
        why = check_refusal(refusal, own, self.node.identity.public_key, req.replicas,
                            self.node.genesis.network_id, cap, providers.__contains__)
        if why is not None:  # a way not to pay: the client is a defaulter
            self._default(client)
            raise JobFailed("bad_request", f"a payment refusal that proves nothing: {why}; "
                                           "the client is refused from now on")
        raise JobFailed("minority", f"not paid: {len(refusal.commits)} other replica(s) of "
                                    f"{req.replicas} committed to another result (our "
                                    f"sha256 {own.result_sha256.hex()[:16]})")

    async def _run_watched(self, stream: ServedStream, job_id: bytes, offer: KnownOffer,
                           req: wire.JobRequest, budget_s: float) -> tuple[bytes, bytes]:
        """Run the job while watching the stream: a client that goes away (or breaks the
        protocol by sending during the job) cancels it; the container is removed (the
        executor's removal is shielded) and the reservation released. The output and the
        app's log of this run."""
        result: tuple[bytes, bytes] | None = None
        try:
            with trio.CancelScope() as watched, stream.watching(watched):
                result = await self._run(stream, job_id, offer, req, budget_s)
        except JobFailed:
            if not stream.gone:
                raise
        if result is None:  # only the watch cancels the scope
            raise JobFailed("gone", "the client went away (or sent during the job); the job "
                                    "was stopped")
        return result

    async def _run(self, stream: ServedStream, job_id: bytes, offer: KnownOffer,
                   req: wire.JobRequest, budget_s: float) -> tuple[bytes, bytes]:
        async def progress(stage: str, percent: int, detail: str = "") -> None:
            await self._send_whole(stream, wire.JobProgress(
                job_id=job_id, stage=stage, percent=max(0, min(100, percent)),
                detail=detail[:256]))

        resources = task_resources(offer.offer.resources)
        try:
            await self.executor.check_gpus(resources)
            body = req.input
            if req.input_cid:
                body = await self._fetch_input(req.input_cid, stream.remote_peer, progress)
            tag = await self.images.ensure(offer.offer.image_cid, progress)
            # the pulls are done: the job's own deadline runs from here
            with trio.move_on_after(budget_s) as scope:
                output = await self._start_and_post(stream, tag, resources, body,
                                                    progress)
            if scope.cancelled_caught:
                raise JobFailed("deadline", f"the task did not answer within the job's "
                                            f"{budget_s:.1f} s (image pull not counted)")
            return output
        except JobFailed:
            raise
        except Exception as exc:  # the executor's and the pull's errors carry their why
            stage = getattr(exc, "stage", "internal")
            raise JobFailed("internal", f"{stage}: {exc}") from None

    async def _start_and_post(self, stream: ServedStream, tag: str,
                              resources: TaskResources, body: bytes,
                              progress) -> tuple[bytes, bytes]:
        """Start (or take a warm container) and POST; the reply and what the app printed
        meanwhile (the tail, at most wire.MAX_JOB_LOG bytes). A job done within
        SLOW_START_S sends no progress (its JobAccept goes with the result); a slower one
        reports ``starting`` and/or ``running`` (which sends the JobAccept)."""
        stage = "starting"

        async def slow() -> None:  # in the stream's timer task, after SLOW_START_S
            nonlocal stage
            shown, stage = stage, "shown"
            await progress(shown, 0)

        async with stream.after(SLOW_START_S, slow):
            async with self.executor.run(tag, resources) as running:
                if stage == "shown":  # "starting" went out: now it runs
                    await progress("running", 0)
                stage = "running"
                mark = running.log_mark() if hasattr(running, "log_mark") else None
                output, _ = await self.executor.request(running, body)
                # the tail, with room for its "[... N bytes cut ...]" line under the cap
                app_log = (running.log_since(mark, wire.MAX_JOB_LOG - LOG_NOTE_ROOM)
                           if mark is not None else b"")
        return output, app_log

    async def _fetch_input(self, cid: str, peer: str, progress) -> bytes:
        percent = 0

        def on_bytes(done: int, total: int) -> None:
            nonlocal percent
            percent = done * 100 // total if total else 0

        async def report() -> None:
            while True:
                await progress("pulling", percent, f"input {cid}")
                await trio.sleep(PULL_TICK_S)

        try:
            return await while_reporting(
                report, lambda: self.data.fetch(cid, peer, MAX_DATA, on_bytes))
        except JobFailed:
            raise
        except Exception as exc:
            raise JobFailed("bad_request", f"the input {cid} could not be fetched from the "
                                           f"client: {exc}") from None


@dataclass(eq=False)
class _Kept:
    """A provider's answer to one job, kept for a repeated request."""

    commit: bytes  # our sealed ResultCommit
    output: bytes
    log: bytes
    price: int
    paid: bool
    at: float = field(default_factory=time.monotonic)


@dataclass
class JobOutcome:
    output: bytes
    provider: str
    price: int
    timings: dict[str, float]
    progress: list[tuple[str, int, str]]
    paid: int = 0  # price + fee signed over to the provider and developer
    job_id: bytes = b""
    receipt: str = ""  # hex SHA-256 of our Receipt entry ("" when the job was free)
    log: bytes = b""  # the tail of the app's log in this run, as the provider sent it
    #: a replicated run: each provider's part (peer id, sha256, size, paid, outcome)
    replicas: list[dict] = field(default_factory=list)


@dataclass
class _Idle:
    stream: JobStream
    since: float


class JobClient:
    """The client side: pick a provider for an offer, send the request, check the answer.
    ``data`` (IPFS) carries inputs and outputs over the inline cap."""

    def __init__(self, node, data: DataSource | None = None,
                 reputation: Reputation | None = None,
                 persist: Callable[[Reputation], None] | None = None) -> None:
        self.node = node
        self.data = data
        self._idle: dict[str, list[_Idle]] = {}
        self.streams_opened = 0
        self.weights = Weights()  # how providers are ranked (core.matching)
        #: our own scores of providers (core.reputation), used in the ranking; ``persist``
        #: (blocking, run in a thread) saves it after each outcome
        self.reputation = reputation if reputation is not None else Reputation()
        self._persist = persist
        #: jobs of this node waiting for a provider, in arrival order (bounded)
        self._waiting: dict[object, None] = {}
        self._saved_at = -math.inf  # when the reputation table was last saved
        #: our jobs at each provider right now (the ranking spreads them)
        self._pending: Counter[str] = Counter()
        #: simulations: called with each placement decision and what it was made of
        #: (``sim.replay.DecisionTrace``), so the simulator can replay it
        self.trace = None

    def _queue_of(self, peer_id: str) -> int:
        """The queue length ``peer_id`` last advertised (unknown: last)."""
        ad = self.node.peerbook.get(_public_key(peer_id))
        return ad.advert.queue if ad is not None else 1 << 30

    async def _outcome(self, provider: str, outcome: str) -> None:
        """Record ``outcome`` in the provider's score; the table is saved at most every
        SAVE_SCORES_S (a busy client finishes many jobs a second), and always for an
        outcome other than success."""
        self.reputation.record(_public_key(provider), outcome, self.node.clock.now_ms() / 1000)
        now = trio.current_time()
        if outcome == "success" and now - self._saved_at < SAVE_SCORES_S:
            return
        self._saved_at = now
        if self._persist is not None:
            try:
                await trio.to_thread.run_sync(self._persist, self.reputation)
            except OSError as exc:  # the score stays in memory
                log.warning("could not save the reputation table: %s", exc)

    @property
    def inline_cap(self) -> int:
        return self.node.settings.caps.stream_frame - ENVELOPE_ROOM

    def hosts(self) -> dict:
        """``meca-node hosts``: every provider advert we hold, with our score of it."""
        now = self.node.clock.now_ms()
        connected = {p.peer_id for p in self.node.net.connected_peers()}
        out = []
        for a in self.node.peerbook.all():
            if "provider" not in a.advert.roles:
                continue
            key = _public_key(a.peer_id)
            score = self.reputation.score(key, now / 1000)
            ad = a.advert
            out.append({
                "peer_id": a.peer_id, "connected": a.peer_id in connected,
                "advert_age_s": round(max(0, now - a.ts) / 1000, 1), "price": ad.price,
                "arch": ad.arch, "free": {"cpu": ad.free.cpu_milli / 1000,
                                          "mem_mib": ad.free.mem_mib,
                                          "gpus": ad.free.gpu_count},
                "environments": {e.name: e.score for e in ad.environments},
                "cached_images": len(ad.cached_images), "queue": ad.queue,
                "reputation": round(score.value, 4), "jobs": score.jobs,
                "refused": ("cheat" if self.node.ledger.is_cheat(key) else
                            "forked" if self.node.ledger.is_refused(key) else "")})
        out.sort(key=lambda h: (-h["reputation"], h["price"], h["peer_id"]))
        return {"hosts": out}

    def find_offer(self, ref: str) -> KnownOffer:
        """The live offer ``ref`` names (id, name or name@key-prefix)."""
        try:
            offer = self.node.offers.find(ref, self.node.clock.now_ms())
        except AmbiguousOffer as exc:
            raise JobFailed("bad_request", str(exc)) from None
        if offer is None:
            raise JobFailed("unknown_offer", f"no live offer matches {ref!r} (see "
                                             "`meca-node offers`)")
        return offer

    def dry_run(self, ref: str, max_price: int) -> dict:
        """``run --dry-run``: the ranking a job would use now, and every other provider's
        reasons, without running anything."""
        offer = self.find_offer(ref)
        ranked, unfits = self.match(offer, max_price)
        return {"offer": offer.label, "offer_id": offer.offer_id.hex(), "max_price": max_price,
                "weights": {k: getattr(self.weights, k) for k in PARTS},
                "ranked": [{"peer_id": r.peer_id, "score": round(r.score, 4),
                            "price": r.price, "parts": {k: round(v, 4)
                                                        for k, v in r.parts.items()}}
                           for r in ranked],
                "unfit": [{"peer_id": u.peer_id,
                           "reasons": [{"code": x.code, "text": x.text} for x in u.reasons]}
                          for u in unfits],
                "summary": summary(unfits, len(ranked) + len(unfits)) if not ranked else ""}

    def match(self, offer: KnownOffer, max_price: int):
        """``core.matching.rank`` over every provider whose advert we hold."""
        return rank(*self._candidates(offer, max_price), self.weights,
                    salt=self.node.identity.public_key)

    def _candidates(self, offer: KnownOffer, max_price: int) -> tuple[list[Candidate], Need]:
        """Every provider whose advert we hold, as ``rank`` takes it, and the job's need
        (a provider behind NAT counts as connected when a relay reaches it)."""
        now = self.node.clock.now_ms()
        connected = ({p.peer_id for p in self.node.net.connected_peers()}
                     | self.node.net.reachable_peers())
        settings = self.node.settings
        need = Need(offer.offer, max_price, 3 * int(settings.advert_interval_s * 1000)
                    + settings.skew_ms)
        candidates = []
        for a in self.node.peerbook.all():
            if "provider" not in a.advert.roles:
                continue
            key = _public_key(a.peer_id)
            refused = ("a proven cheat: its output did not match its signed commitment"
                       if self.node.ledger.is_cheat(key) else
                       "it forked its account chain" if self.node.ledger.is_refused(key)
                       else "")
            candidates.append(Candidate(a.peer_id, a.advert, max(0, now - a.ts),
                                        a.peer_id in connected, refused=refused,
                                        latency_ms=self.node.rtt_ms(a.peer_id),  # by ping
                                        pending=self._pending[a.peer_id],
                                        reputation=self.reputation.value(key, now / 1000)))
        return candidates, need

    async def run(self, ref: str, body: bytes, max_price: int, timeout_s: float,
                  on_progress=None, provider: str | None = None,
                  replicas: int = 1) -> JobOutcome:
        """Run the offer ``ref`` (id, name or name@key-prefix) on ``body``, on the best
        fitting provider or on ``provider`` (a peer id), or on ``replicas`` providers at
        once (:meth:`_replicated`); the job's ``timeout_s`` does not count time spent
        pulling the image and input. ``max_price`` bounds what one provider's run costs."""
        if not 1 <= replicas <= wire.MAX_REPLICAS:
            raise JobFailed("bad_request", f"replicas must be 1..{wire.MAX_REPLICAS}, got "
                                           f"{replicas}")
        if replicas > 1 and provider is not None:
            raise JobFailed("bad_request", "a replicated job picks its providers itself: give "
                                           "--provider or --replicas, not both")
        offer = self.find_offer(ref)
        if len(body) > MAX_DATA:
            raise JobFailed("bad_request", f"the input is {len(body)} bytes, over the cap of "
                                           f"{MAX_DATA} bytes ({MAX_DATA >> 20} MiB)")
        if len(body) > self.inline_cap and self.data is None:
            raise JobFailed("bad_request", f"the input is {len(body)} bytes, over the inline "
                                           f"cap of {self.inline_cap} bytes, and this node "
                                           "has no IPFS store to send it as a CID")
        have = self.node.ledger.balance(self.node.identity.public_key)
        if offer.offer.fee > 0 and have < max_price:  # what providers that charge check
            raise JobFailed("balance", f"our balance of {have} cannot cover the max price "
                                       f"{max_price} (providers refuse such a job); lower "
                                       "--max-price or receive funds first")
        if offer.offer.fee > 0 and have < replicas * max_price:
            raise JobFailed("balance", f"our balance of {have} cannot cover {replicas} "
                                       f"replicas at up to {max_price} each; lower --replicas "
                                       "or --max-price, or receive funds first")
        if provider is not None:
            ranked, unfits = self.match(offer, max_price)
            queue_ok = {u.peer_id for u in unfits if u.busy}  # busy: it queues the job
            if provider not in {r.peer_id for r in ranked} | queue_ok:
                why = next((", ".join(x.text for x in u.reasons) for u in unfits
                            if u.peer_id == provider), "has not advertised")
                raise JobFailed("no_fit", f"provider {provider} cannot run {offer.label} for "
                                          f"at most {max_price}: it {why}")
            return await self._attempt(provider, offer, body, max_price, timeout_s,
                                       on_progress)
        if replicas > 1:
            return await self._replicated(offer, body, max_price, timeout_s, on_progress,
                                          replicas)
        ticket = object()  # our place in this node's waiting room, while we wait
        try:
            return await self._placed(offer, body, max_price, timeout_s,
                                      _once(on_progress), ticket)
        finally:
            self._waiting.pop(ticket, None)

    async def _placed(self, offer: KnownOffer, body: bytes, max_price: int,
                      timeout_s: float, on_progress, ticket: object) -> JobOutcome:
        """Try the best provider with free resources; with none, the busy one with the
        shortest queue (its provider queues the job and tells its place); with every
        queue full, wait in this node's waiting room for the next advert."""
        deadline = trio.current_time() + timeout_s
        failed: list[str] = []  # providers that failed this job (not tried again)
        failures: list[str] = []
        full: set[str] = set()  # providers whose queue was full, until the next advert
        unfits: list = []
        for _ in range(MAX_ROUNDS):  # bounded: attempts, plus waits for busy providers
            left = deadline - trio.current_time()
            if left <= 0 or len(failed) >= MAX_ATTEMPTS:
                break
            candidates, need = self._candidates(offer, max_price)
            ranked, unfits = rank(candidates, need, self.weights,
                                  salt=self.node.identity.public_key)
            skip = set(failed) | full
            provider, busy = choose(ranked, unfits, skip, self._queue_of)
            if self.trace is not None:  # simulations: the decision and all it was made of
                self.trace(self.node, candidates, need, self.weights, sorted(skip), provider)
            if provider is not None:
                self._waiting.pop(ticket, None)
                if on_progress:
                    score = next((f"score {r.score:.3f}" for r in ranked
                                  if r.peer_id == provider), "busy: joining its queue")
                    on_progress("matched", 0, f"{provider} ({score})")
                try:
                    return await self._attempt(provider, offer, body, max_price, left,
                                               on_progress)
                except JobFailed as exc:
                    if exc.paid or exc.reason not in RETRY_REASONS:
                        raise
                    log.info("job on %s failed (%s); trying again", provider, exc)
                    if exc.reason == "busy":  # its queue is full: its next advert may differ
                        full.add(provider)
                    else:
                        failed.append(provider)
                        failures.append(f"{provider[-8:]} {exc.reason}: {exc.detail}")
                    if on_progress:
                        on_progress("queued", 0, f"{provider[-8:]} {exc.reason}; trying "
                                                 "again elsewhere")
                    continue
            if not any(u.busy for u in unfits) and not full:
                break  # nothing fits, and nothing will by waiting
            if ticket not in self._waiting:
                if len(self._waiting) >= MAX_WAITING:
                    raise JobFailed("busy", f"every provider that can run {offer.label} is "
                                            f"busy and {MAX_WAITING} jobs wait here already; "
                                            "try again later")
                self._waiting[ticket] = None
            if on_progress:
                place = list(self._waiting).index(ticket) + 1
                on_progress("queued", 0, f"place {place} of {len(self._waiting)} here: "
                                         f"{len(full) + len(busy)} provider(s) that fit "
                                         "are busy")
            with trio.move_on_at(deadline):  # until the next advert (free resources change)
                await self.node.advert_seen.wait()
            full.clear()
        if failures:
            raise JobFailed("no_fit", f"{offer.label} failed on {len(failed)} provider(s): "
                                      + "; ".join(failures))
        if trio.current_time() >= deadline:
            raise JobFailed("busy", f"every provider that can run {offer.label} stayed busy "
                                    f"for {timeout_s:g} s: {summary(unfits)}")
        raise JobFailed("no_fit", f"no connected provider can run {offer.label} for at "
                                  f"most {max_price}: {summary(unfits)}")

    async def _attempt(self, provider: str, offer: KnownOffer, body: bytes, max_price: int,
                       timeout_s: float, on_progress,
                       group: "_Replicas | None" = None) -> JobOutcome:
        """One try of the job on ``provider``; its outcome goes into the provider's score
        (a rejection does not: the provider said no before doing anything)."""
        self._pending[provider] += 1
        try:
            outcome = await self._try(provider, offer, body, max_price, timeout_s,
                                      on_progress, group)
        except JobFailed as exc:
            kind = OUTCOME_OF.get(exc.reason)
            if kind is not None:
                with trio.CancelScope(shield=True):
                    await self._outcome(provider, kind)
            raise
        except trio.TooSlowError:
            with trio.CancelScope(shield=True):
                await self._outcome(provider, "timeout")
            raise
        finally:
            self._pending[provider] -= 1
            if self._pending[provider] <= 0:
                del self._pending[provider]
        await self._outcome(provider, "success")
        return outcome

    async def _try(self, provider: str, offer: KnownOffer, body: bytes, max_price: int,
                   timeout_s: float, on_progress,
                   group: "_Replicas | None" = None) -> JobOutcome:
        if group is not None:  # one job id and one held input for every replica
            return await self._run_on(provider, offer, group.job_id, b"" if group.input_cid
                                      else body, group.input_cid, max_price, timeout_s,
                                      on_progress, group)
        job_id = self.node.rand.token_bytes(16)
        if len(body) <= self.inline_cap:
            return await self._recovering(provider, offer, job_id, body, "", max_price,
                                          timeout_s, on_progress)
        async with self.data.hold(body) as cid:  # the provider fetches it from us
            return await self._recovering(provider, offer, job_id, b"", cid, max_price,
                                          timeout_s, on_progress)

    async def _recovering(self, provider: str, offer: KnownOffer, job_id: bytes,
                          body: bytes, input_cid: str, max_price: int, timeout_s: float,
                          on_progress) -> JobOutcome:
        """``_run_on``; when the stream broke after we paid, ask the same provider once
        more with the same job id: it answers from what it kept (a job id is idempotent
        there), so the output we paid for arrives without a second run or payment."""
        try:
            return await self._run_on(provider, offer, job_id, body, input_cid, max_price,
                                      timeout_s, on_progress)
        except JobFailed as exc:
            if not (exc.paid and exc.paid_commit and exc.reason == "internal"):
                raise
            first = exc
        if on_progress:
            on_progress("recovering", 0, f"asking {provider} again for the output we paid "
                                         f"for (job {job_id.hex()})")
        try:
            return await self._run_on(provider, offer, job_id, body, input_cid, max_price,
                                      timeout_s, on_progress,
                                      prepaid=(first.paid, first.paid_commit))
        except JobFailed as exc:
            again = exc.detail.split(". We had paid")[0]  # said once, in first.detail
            raise JobFailed(exc.reason, f"{first.detail}; asked again: {again}",
                            first.paid, first.paid_commit) from None

    async def _stream(self, provider: str) -> tuple[JobStream, bool]:
        """An idle stream to ``provider`` (reused) or a new one; and whether reused."""
        now = time.monotonic()
        idle = self._idle.get(provider, [])
        while idle:
            entry = idle.pop()
            if now - entry.since < CLIENT_IDLE_S:
                return entry.stream, True
            await entry.stream.close()
        self.streams_opened += 1
        return await self.node.net.open_stream(provider, PROTOCOL), False

    async def _release(self, provider: str, stream: JobStream, reusable: bool) -> None:
        idle = self._idle.setdefault(provider, [])
        if reusable and len(idle) < CLIENT_IDLE_STREAMS:
            idle.append(_Idle(stream, time.monotonic()))
        else:
            await stream.close()

    async def _send_request(self, provider: str, request: bytes
                            ) -> tuple[JobStream, bytes | None]:
        """Send ``request`` on an idle stream, or a new one when the idle one turns out to
        be closed already; the stream and the provider's first answer."""
        for _ in range(CLIENT_IDLE_STREAMS + 1):  # the idle ones, then a new one
            try:
                with trio.fail_after(OPEN_STREAM_S):  # a stalled connection: fail over
                    stream, reused = await self._stream(provider)
            except Exception as exc:  # no connection, refused, stalled (TooSlowError)
                raise JobFailed("internal", f"cannot open a job stream to {provider} ({exc}); "
                                            "it stopped or went away") from None
            try:
                with trio.move_on_after(OPEN_STREAM_S) as sending:
                    await stream.send(request)
                if sending.cancelled_caught:
                    raise ConnectionError(f"sending stalled for {OPEN_STREAM_S:g} s")
                first = await stream.receive()
            except (trio.Cancelled, trio.TooSlowError):
                with trio.move_on_after(1):
                    await stream.close()
                raise
            except Exception as exc:
                with trio.move_on_after(1):
                    await stream.close()
                if reused:
                    continue  # the provider had ended the idle stream: take another
                raise JobFailed("internal", f"{provider} did not take the request ({exc}); "
                                            "it stopped or went away") from None
            if first is None and reused:
                await stream.close()
                continue
            return stream, first
        raise JobFailed("internal", f"{provider} closed the job streams; it stopped or went "
                                    "away")

    async def _run_on(self, provider: str, offer: KnownOffer, job_id: bytes, body: bytes,
                      input_cid: str, max_price: int, timeout_s: float,
                      on_progress, group: "_Replicas | None" = None,
                      prepaid: tuple[int, bytes] | None = None) -> JobOutcome:
        """The job ``job_id`` on ``provider``. ``prepaid``: (amount, commitment) we paid
        for this job id before (a repeat after a broken stream): that very commitment is
        expected and not paid again."""
        t0 = time.monotonic()
        now = self.node.clock.now_ms()
        request = self.node.seal(wire.JobRequest(
            job_id=job_id, offer_id=offer.offer_id, input=body, input_cid=input_cid,
            max_price=max_price, deadline=now + int(timeout_s * 1000),
            replicas=group.k if group is not None else 1))
        run_deadline = trio.current_time() + timeout_s
        state = _Exchange(provider, job_id, run_deadline, offer, max_price,
                          on_progress=on_progress, group=group)
        if prepaid is not None:
            state.prepaid, state.paid_commit = prepaid
        with trio.CancelScope(deadline=run_deadline) as scope:
            state.scope = scope
            stream, first = await self._send_request(provider, request)
            reusable = False
            try:
                out, price = await self._answer(stream, state, first, on_progress)
                reusable = not state.output_cid  # the provider holds a CID until we close
                return JobOutcome(out, provider, price, {"total": time.monotonic() - t0,
                                                         "pull": state.pulled},
                                  state.progress, paid=state.paid, job_id=job_id,
                                  receipt=state.receipt, log=state.log)
            except JobFailed as exc:
                reusable = exc.reason != "internal"  # a reject leaves the stream usable
                raise JobFailed(exc.reason, exc.detail + _paid_note(state),
                                state.paid, state.paid_commit) from None
            except (trio.Cancelled, trio.TooSlowError):
                raise
            except Exception as exc:  # the stream broke
                raise JobFailed("internal", f"{provider}: the job stream broke ({exc}); the "
                                            "provider stopped or went away"
                                + _paid_note(state), state.paid, state.paid_commit) from None
            finally:
                with trio.CancelScope(shield=True):
                    await self._release(provider, stream, reusable and not scope.cancel_called)
        raise JobFailed("deadline", f"no result from {provider} within {timeout_s:g} s"
                                    + (f" (+{state.pulled:.1f} s pulling)" if state.pulled
                                       else "") + _paid_note(state), state.paid,
                        state.paid_commit)

    async def _answer(self, stream: JobStream, st: "_Exchange", data: bytes | None,
                      on_progress) -> tuple[bytes, int]:
        """Read the provider's messages for this job up to the checked output."""
        cap = self.node.settings.caps.stream_frame
        key = _public_key(st.provider)
        commit = accepted = commit_env = None
        for _ in range(100_000):  # bounded: progress arrives at most every PULL_TICK_S
            if data is None:
                raise JobFailed("internal", f"{st.provider} ended the stream before the "
                                            "result (it stopped or went away)")
            env = wire.open_envelope(data, max_size=cap)
            if env.signer != key or getattr(env.body, "job_id", None) != st.job_id:
                raise JobFailed("internal", "a message not from the provider or not for "
                                            "this job")
            body_ = env.body
            if isinstance(body_, wire.JobReject):
                raise JobFailed(body_.reason, f"{st.provider}: {body_.detail}")
            if isinstance(body_, wire.JobAccept):
                accepted = body_
            elif isinstance(body_, wire.JobProgress):
                st.on_stage(body_.stage)
                st.progress.append((body_.stage, body_.percent, body_.detail))
                if on_progress:
                    on_progress(body_.stage, body_.percent, body_.detail)
            elif isinstance(body_, wire.ResultCommit):
                st.on_stage("result")
                commit, commit_env = body_, env
                if accepted is None:
                    raise JobFailed("internal", "a result commitment before the accept")
                if st.group is not None:  # every replica's commitment before any payment
                    await self._vote(stream, st, env, body_)
                if st.prepaid:  # a repeat of a job we paid: the same commitment, or nothing
                    if env.raw != st.paid_commit:
                        raise JobFailed("internal", f"{st.provider} answered the repeated "
                                                    "job with another commitment than the "
                                                    "one we paid for")
                    st.paid = st.prepaid
                elif accepted.price + st.offer.offer.fee > 0:
                    await self._pay(stream, st, env, accepted.price)
            elif isinstance(body_, wire.JobResult):
                if commit is None or accepted is None:
                    raise JobFailed("internal", "a result without accept and commit")
                out = body_.output
                if body_.output_cid:
                    out = await self._fetch_output(body_.output_cid, st, commit.size)
                if (hashlib.sha256(out).digest() != commit.result_sha256
                        or len(out) != commit.size):
                    told = await self.node.ledger.report_bad_output(commit_env, env)
                    raise JobFailed("bad_output", f"{st.provider}'s output does not match "
                                                  f"its signed commitment: {told}")
                st.log = body_.log
                return out, accepted.price
            data = await stream.receive()
        raise JobFailed("internal", f"{st.provider} sent too many messages")

    async def _replicated(self, offer: KnownOffer, body: bytes, max_price: int,
                          timeout_s: float, on_progress, k: int) -> JobOutcome:
        """Run one job (one job id) on ``k`` providers with distinct keys and addresses at
        once. Every provider's ResultCommit is collected before anyone is paid
        (:meth:`_vote`); the majority is paid, the others are refused with the other
        commitments as proof (``core.replicas``). A replica that fails before committing
        is replaced by the next candidate (at most MAX_ATTEMPTS replacements in all)."""
        candidates, need = self._candidates(offer, max_price)
        ranked, unfits = rank(candidates, need, self.weights,
                              salt=self.node.identity.public_key)
        group = _Replicas(self.node.rand.token_bytes(16), k, on_progress)
        addrs = {p.peer_id: _hosts_of(p.addrs) for p in self.node.net.connected_peers()}
        group.candidates = [r.peer_id for r in ranked]
        group.addrs = addrs
        distinct = group.distinct_candidates()
        if self.trace is not None:  # simulations: the first k slots' providers
            self.trace(self.node, candidates, need, self.weights, [], distinct[:k],
                       replicas=k, hosts={p: sorted(h) for p, h in addrs.items()})
        if len(distinct) < k:
            raise JobFailed("no_fit", f"--replicas {k} needs {k} providers with distinct keys "
                                      f"and addresses that can run {offer.label} now; "
                                      f"{len(distinct)} can"
                                      + (f" ({len(ranked)} fit, some share an address)"
                                         if len(ranked) > len(distinct) else "")
                                      + (f"; the others: {summary(unfits)}" if unfits else ""))
        t0 = time.monotonic()
        deadline = trio.current_time() + timeout_s
        if len(body) > self.inline_cap:
            async with self.data.hold(body) as cid:  # every replica fetches it from us
                group.input_cid = cid
                await self._replica_slots(group, offer, body, max_price, deadline)
        else:
            await self._replica_slots(group, offer, body, max_price, deadline)
        return group.outcome(time.monotonic() - t0, offer.label)

    async def _replica_slots(self, group: "_Replicas", offer: KnownOffer, body: bytes,
                             max_price: int, deadline: float) -> None:
        async def slot() -> None:
            with trio.CancelScope() as scope:
                for _ in range(MAX_ATTEMPTS + 1):  # bounded: one try, then replacements
                    provider = group.take_candidate()
                    left = deadline - trio.current_time()
                    if provider is None or left <= 0:
                        break
                    group.scopes[provider] = scope
                    if group.on_progress:
                        group.on_progress("matched", 0, f"{provider} (replica "
                                                        f"{len(group.tried)} of {group.k})")
                    try:
                        group.done[provider] = await self._attempt(
                            provider, offer, body, max_price, left, group.on_progress, group)
                        return
                    except JobFailed as exc:
                        group.failed[provider] = exc
                        if provider in group.committed or exc.paid:
                            return  # its commitment counts; no replacement
                        if exc.reason not in RETRY_REASONS:
                            break
                    except trio.TooSlowError:
                        group.failed[provider] = JobFailed("deadline", "no answer in time")
                        break
            group.slot_closed()  # gave up (or was cut off) without a commitment

        async with trio.open_nursery() as outer:
            outer.start_soon(group.decide_by, REPLICA_DECIDE_S)
            async with trio.open_nursery() as slots:
                for _ in range(group.k):
                    slots.start_soon(slot)
            outer.cancel_scope.cancel()  # every slot ended: nothing left to decide on time

    async def _vote(self, stream: JobStream, st: "_Exchange", env: wire.Envelope,
                    commit: wire.ResultCommit) -> None:
        """Put ``commit`` to the replicated job's vote and wait for the verdict; a provider
        the verdict refuses gets a PaymentRefusal with the proof, and the job on it fails
        as ``minority``."""
        group = st.group
        left = st.scope.deadline - trio.current_time()
        st.scope.deadline = math.inf  # the group's own bound applies while we wait
        verdict = await group.vote(Commitment(st.provider, env.signer, commit.result_sha256,
                                              commit.size, env.raw))
        st.scope.deadline = trio.current_time() + max(left, PAY_TIMEOUT_S)
        if st.provider in verdict.refused:
            proof = verdict.proof_for(st.provider, group.commits)
            await stream.send(self.node.seal(wire.PaymentRefusal(job_id=st.job_id,
                                                                 commits=proof)))
            raise JobFailed("minority", f"{st.provider} committed to sha256 "
                                        f"{commit.result_sha256.hex()[:16]}, not the "
                                        "majority's: refused payment with the other "
                                        "commitments as proof")

    async def _pay(self, stream: JobStream, st: "_Exchange", commit: wire.Envelope,
                   price: int) -> None:
        """Sign a Receipt over the provider's commitment into our chain (stored durably
        before it is sent, gossiped once sent) and hand it to the provider, which then
        releases the output; the output is checked against this very commitment."""
        from meca_node.node.ledger import LedgerRefused

        offer = st.offer
        if price + offer.offer.fee > st.max_price:
            raise JobFailed("price", f"{st.provider} asks {price} + fee {offer.offer.fee} > "
                                     f"max {st.max_price}")
        receipt = wire.Receipt(seq=0, prev=bytes(32), job_id=st.job_id,
                               offer_id=offer.offer_id, commit=commit.raw,
                               provider=_public_key(st.provider), developer=offer.signer,
                               price=price, fee=offer.offer.fee)
        try:  # gossiped once sent: the provider, which waits for it, gets it first
            env = await self.node.ledger.append_own(receipt, gossip=False)
        except LedgerRefused as exc:
            raise JobFailed("balance", f"cannot pay {price + offer.offer.fee}: {exc}") \
                from None
        st.paid = price + offer.offer.fee
        st.paid_commit = commit.raw
        st.receipt = hashlib.sha256(env.raw).hexdigest()
        try:
            await stream.send(env.raw)
        finally:
            await self.node.ledger.gossip_own(env.raw)
        if st.on_progress:
            st.on_progress("paid", 100, f"{st.paid} to {st.provider} (price {price} + fee "
                                        f"{offer.offer.fee}), receipt {st.receipt}")

    async def _fetch_output(self, cid: str, st: "_Exchange", size: int) -> bytes:
        if self.data is None:
            raise JobFailed("internal", "the output came as a CID and this node has no IPFS "
                                        "store to fetch it")
        if size > MAX_DATA:
            raise JobFailed("internal", f"the provider committed to {size} bytes of output, "
                                        f"over the cap of {MAX_DATA}")
        st.on_stage("pulling")
        st.output_cid = cid
        try:
            return await self.data.fetch(cid, st.provider, size, lambda done, total:
                                         st.on_stage("pulling"))
        except Exception as exc:
            raise JobFailed("internal", f"the output {cid} could not be fetched from "
                                        f"{st.provider}: {exc}") from None


def _once(on_progress, most: int = 256):
    """``on_progress`` that passes each (stage, detail) once: a job that waits for a busy
    network goes round the same choices at every advert."""
    if on_progress is None:
        return None
    said: set[tuple[str, str]] = set()

    def once(stage: str, percent: int, detail: str) -> None:
        if stage in PULL_STAGES or stage == "running":  # the provider's own progress
            on_progress(stage, percent, detail)
        elif (stage, detail) not in said and len(said) < most:
            said.add((stage, detail))
            on_progress(stage, percent, detail)

    return once


def _hosts_of(addrs) -> frozenset[str]:
    """The IP addresses in a peer's multiaddrs (``/ip4/127.0.0.2/tcp/4001`` -> 127.0.0.2)."""
    out = set()
    for a in addrs:
        parts = str(a).split("/")
        if len(parts) > 2 and parts[1] in ("ip4", "ip6"):
            out.add(parts[2])
    return frozenset(out)


class _Replicas:
    """A replicated job in flight: its candidates, the commitments, the verdict."""

    def __init__(self, job_id: bytes, k: int, on_progress) -> None:
        self.job_id = job_id
        self.k = k
        self.on_progress = on_progress
        self.input_cid = ""
        self.candidates: list[str] = []  # ranked peer ids
        self.addrs: dict[str, frozenset[str]] = {}
        self.tried: list[str] = []
        self.used_hosts: set[str] = set()
        self.commits: list[Commitment] = []
        self.committed: set[str] = set()
        self.closed = 0  # slots that gave up without a commitment
        self.scopes: dict[str, trio.CancelScope] = {}
        self.done: dict[str, JobOutcome] = {}
        self.failed: dict[str, JobFailed] = {}
        self.verdict: Verdict | None = None
        self.decided = trio.Event()
        self.first = trio.Event()

    def distinct_candidates(self) -> list[str]:
        return distinct_hosts(self.candidates, lambda p: self.addrs.get(p, frozenset()))

    def take_candidate(self) -> str | None:
        """The best untried candidate on an address no replica of this job used."""
        for peer in self.candidates:
            mine = self.addrs.get(peer, frozenset())
            if peer not in self.tried and not mine & self.used_hosts:
                self.tried.append(peer)
                self.used_hosts |= mine
                return peer
        return None

    async def vote(self, c: Commitment) -> Verdict:
        self.commits.append(c)
        self.committed.add(c.provider)
        self.first.set()
        if self.on_progress:
            self.on_progress("committed", 0, f"{c.provider}: sha256 {c.sha256.hex()[:16]}, "
                                             f"{c.size} bytes ({len(self.commits)} of "
                                             f"{self.k})")
        self._maybe_decide()
        await self.decided.wait()
        return self.verdict

    def slot_closed(self) -> None:
        self.closed += 1
        self._maybe_decide()

    def _maybe_decide(self, now: bool = False) -> None:
        if self.verdict is None and (now or len(self.commits) + self.closed >= self.k):
            self.verdict = decide(self.commits, self.k)
            for peer, scope in self.scopes.items():  # stragglers: too late to count
                if peer not in self.committed:
                    scope.cancel()
            self.decided.set()

    async def decide_by(self, wait_s: float) -> None:
        """Decide at the latest ``wait_s`` after the first commitment (the committed
        providers wait for our receipt only so long)."""
        await self.first.wait()
        with trio.move_on_after(wait_s):
            await self.decided.wait()
        self._maybe_decide(now=True)

    def outcome(self, seconds: float, label: str) -> JobOutcome:
        """The job's outcome once every slot has ended: the majority's output, or
        JobFailed saying how the replicas disagreed."""
        v = self.verdict
        parts = []
        for c in self.commits:
            exc = self.failed.get(c.provider)
            done = self.done.get(c.provider)
            parts.append({"provider": c.provider, "sha256": c.sha256.hex(), "size": c.size,
                          "paid": done.paid if done else (exc.paid if exc else 0),
                          "outcome": "refused" if v and c.provider in v.refused else
                          "paid" if done else f"failed: {exc.reason}" if exc else "?"})
        for peer, exc in self.failed.items():
            if peer not in self.committed:
                parts.append({"provider": peer, "sha256": "", "size": 0, "paid": exc.paid,
                              "outcome": f"failed: {exc.reason}"})
        paid = sum(p["paid"] for p in parts)
        agreed = v.agreed if v else None
        winner = next((self.done[c.provider] for c in self.commits
                       if agreed and c.result == agreed and c.provider in self.done), None)
        if winner is None:
            report = "; ".join(f"{p['provider']} " + (f"sha256 {p['sha256'][:16]}"
                                                      if p["sha256"] else p["outcome"])
                               for p in parts)
            need = self.k // 2 + 1
            raise JobFailed("disagreement", f"no {need} of {self.k} replicas of {label} agreed"
                                            f": {report or 'no provider answered'}", paid)
        return JobOutcome(winner.output, winner.provider, winner.price,
                          {"total": seconds, "pull": max(d.timings["pull"]
                                                         for d in self.done.values())},
                          winner.progress, paid=paid, job_id=self.job_id,
                          receipt=winner.receipt, log=winner.log, replicas=parts)


@dataclass
class _Exchange:
    """One job's client-side state: the deadline stretches over pulls."""

    provider: str
    job_id: bytes
    run_deadline: float
    offer: KnownOffer | None = None
    max_price: int = 0
    paid: int = 0
    scope: trio.CancelScope | None = None
    pull_since: float | None = None
    pulled: float = 0.0
    output_cid: str = ""
    progress: list[tuple[str, int, str]] = field(default_factory=list)
    on_progress: Callable | None = None
    group: "_Replicas | None" = None
    receipt: str = ""
    log: bytes = b""
    prepaid: int = 0  # a repeat: what we paid for this job id before
    paid_commit: bytes = b""  # the commitment our receipt is over

    def on_stage(self, stage: str) -> None:
        now = trio.current_time()
        if stage in PULL_STAGES:
            if self.pull_since is None:
                self.pull_since = now
            self.scope.deadline = now + PULL_STALL_S  # a pull that goes silent fails
        elif self.pull_since is not None:
            self.pulled += now - self.pull_since
            self.pull_since = None
            self.scope.deadline = self.run_deadline + self.pulled


def _paid_note(st: "_Exchange") -> str:
    """What a failure after our receipt means for our money (empty when we paid nothing)."""
    if not st.paid:
        return ""
    return (f". We had paid {st.paid} for job {st.job_id.hex()}: the receipt is in our "
            "chain (`meca-node wallet history`) and the provider holds it, as proof that it "
            "was paid for the output it committed to")


def _public_key(peer_id: str) -> bytes:
    from meca_node.core import public_key_of_peer_id

    return public_key_of_peer_id(peer_id)
