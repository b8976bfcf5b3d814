"""Jobs through the running node: the provider's image source (IPFS + Docker) and the
client's ``POST /v1/jobs/run`` (JSON lines: progress, then the output; or with ``detach``
the job's id at once), with every job kept in the history (``store.jobs_db``) that
``GET /v1/jobs``, ``/v1/jobs/describe``, ``/v1/jobs/logs``, ``/v1/jobs/get`` and
``POST /v1/jobs/cancel`` read."""

from __future__ import annotations

import base64
import json
import logging
import os
import re
import time
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import trio

from meca_node.cli.ipfs_api import _engine
from meca_node.control.server import HttpError, Request, Streamed
from meca_node.core.matching import Weights
from meca_node.ipfs.cid import CID, CidError
from meca_node.net.ipfs_node import IpfsNode, Job
from meca_node.node.jobs import PULL_TICK_S, JobClient, JobFailed, while_reporting
from meca_node.store.jobs_db import INTERRUPTED, JobNotFound, JobRecord, JobsDB
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

        tag = self.loaded.get(image_cid)
        if tag and trio.current_time() - self._checked.get(image_cid, -1e9) < RECHECK_S:
            return tag  # a warm job: no engine call, and no wait on the pull lock either
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


def _job_input(body: dict) -> bytes:
    """The job's input bytes: ``input_path`` (read by the node) or ``input_b64``."""
    path = body.get("input_path")
    if path is not None:
        return _read_input(str(path))
    try:
        return base64.b64decode(body.get("input_b64", ""), validate=True)
    except (ValueError, TypeError) as exc:
        raise HttpError(400, f"bad job input: {exc}") from None


def _job_params(body: dict) -> dict:
    """``JobClient.run``'s keyword arguments from a run request (all in this one place)."""
    try:
        return {"max_price": int(body.get("max_price", 0)),
                "timeout_s": float(body.get("timeout_s", 120)),
                "provider": str(body.get("provider") or "") or None,
                "replicas": int(body.get("replicas", 1))}
    except (ValueError, TypeError) as exc:
        raise HttpError(400, f"bad job parameters: {exc}") from None


#: jobs running in this node at once (each holds a task and its input in memory)
MAX_LIVE = 1024
#: timeline events waiting to be written, per job (progress arrives about once a second)
EVENT_QUEUE = 256
#: how long ``job cancel`` waits for the job to end before it answers
CANCEL_WAIT_S = 10.0
#: stages before a provider has the job: the state stays ``queued``
WAITING = ("submitted", "queued")
_PEER = re.compile(r"12D3KooW[1-9A-HJ-NP-Za-km-z]+")
_HASH = re.compile(r"\b[0-9a-f]{64}\b")


def _line(doc: dict) -> bytes:
    return json.dumps(doc).encode() + b"\n"


@dataclass(eq=False)
class _Live:
    """A job running in this node: what ``job cancel`` cancels, ``job get`` follows."""

    id: str
    events: trio.MemorySendChannel  # timeline events for the history
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    finished: trio.Event = field(default_factory=trio.Event)
    final: dict = field(default_factory=dict)  # the stream's last line
    watchers: set = field(default_factory=set)  # progress channels of followers
    last: dict | None = None  # the newest progress line (a new follower's first)
    running: bool = False  # a provider has it (the history's state says so)
    provider: str = ""  # from the newest "matched" event
    paid: str = ""  # the "paid" event's detail

    def note(self, stage: str, percent: int, detail: str) -> None:
        """A progress report: to the timeline and to every follower (both bounded: a
        follower that lags misses progress lines, never the result)."""
        if stage == "matched":
            found = _PEER.search(detail)
            self.provider = found.group(0) if found else self.provider
        elif stage == "paid":
            self.paid = detail
        try:
            self.events.send_nowait((time.time(), stage, percent, detail))
        except trio.WouldBlock:
            log.debug("job %s: timeline event %s dropped (queue full)", self.id, stage)
        except trio.ClosedResourceError:
            pass
        self.last = {"progress": {"stage": stage, "percent": percent, "detail": detail}}
        for send in list(self.watchers):
            try:
                send.send_nowait(self.last)
            except trio.WouldBlock:
                pass  # progress lines are advice; the result is not dropped
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self.watchers.discard(send)

    def follow(self) -> AsyncIterator[bytes]:
        """JSON lines: progress from now on, then the result (``done`` or ``error``)."""
        send, receive = trio.open_memory_channel[dict](64)
        if self.finished.is_set():
            send.close()
        else:
            if self.last is not None:
                send.send_nowait(self.last)
            self.watchers.add(send)

        async def lines():
            async with receive:
                async for doc in receive:
                    yield _line(doc)
            yield _line(self.final)

        return lines()

    def end(self, final: dict) -> None:
        self.final = final
        self.finished.set()
        for send in self.watchers:
            send.close()
        self.watchers.clear()


class JobHistory:
    """Every job this node runs for its user, recorded in the history (``JobsDB``) before
    it starts and until it ends; the running ones followed and cancelled through here."""

    def __init__(self, jobs: JobClient, ipfs: IpfsNode, db: JobsDB) -> None:
        self.jobs = jobs
        self.ipfs = ipfs
        self.db = db
        self.live: dict[str, _Live] = {}
        self.ended: Counter[str] = Counter()  # jobs ended since the node started, by state

    async def submit(self, ref: str, data: bytes, params: dict, detach: bool) -> _Live:
        """Record the job, then run it in the node's nursery."""
        if len(self.live) >= MAX_LIVE:
            raise HttpError(429, f"{len(self.live)} jobs are running in this node, the most "
                                 "it runs at once; wait for some to end or cancel some "
                                 "(`meca-node job list --state running`, "
                                 "`meca-node job cancel ID`)")
        try:
            label = self.jobs.find_offer(ref).label
        except JobFailed:
            label = ""  # the run fails and says why; the history keeps that too
        record = await trio.to_thread.run_sync(partial(
            self.db.create, ref, label, len(data), params["max_price"], detach))
        send, receive = trio.open_memory_channel[tuple](EVENT_QUEUE)
        live = self.live[record.id] = _Live(record.id, send)
        self.ipfs.start_job(Job("run"), partial(self._work, live, receive, ref, data,
                                                params))
        return live

    async def _work(self, live: _Live, receive, ref: str, data: bytes, params: dict,
                    _job: Job) -> dict:
        ended: dict = {}
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._record, live, receive)
                try:
                    ended = await self._run(live, ref, data, params)
                finally:
                    live.events.close()
        finally:  # on every path, a node that stops included: the history says how it ended
            with trio.CancelScope(shield=True):
                await self._finish(live, receive, ended or {
                    "state": "interrupted",
                    "error": INTERRUPTED.format(how="", state="running")})
        return {}

    async def _run(self, live: _Live, ref: str, data: bytes, params: dict) -> dict:
        """The job until it ends: how to finish its history row."""
        failure = None
        with live.scope:
            try:
                outcome = await self.jobs.run(ref, data, on_progress=live.note, **params)
            except trio.TooSlowError:
                failure = JobFailed("deadline", f"no result within {params['timeout_s']:g} s")
            except JobFailed as exc:
                failure = exc
            except Exception as exc:  # a bug: the job fails, the node stays up
                log.exception("job %s failed", live.id)
                failure = JobFailed("internal", f"{type(exc).__name__}: {exc}")
            else:
                return {"state": "done", "outcome": outcome}
        if live.scope.cancel_called:  # `job cancel`
            paid = (failure.paid if failure else 0) or _paid(live.paid)[0]
            return {"state": "cancelled", "paid": paid,
                    "error": "cancelled: the job was cancelled (`meca-node job cancel`)"
                             + (f" after {paid} was paid for it (the receipt is in "
                                "`meca-node wallet history`)" if paid else
                                "; nothing was paid")}
        return {"state": "failed", "error": str(failure), "paid": failure.paid}

    async def _record(self, live: _Live, receive) -> None:
        """Timeline events into the history, in batches (a worker thread writes them)."""
        async for first in receive:
            batch = [first, *_drain(receive)]
            state = None
            if not live.running and any(e[1] not in WAITING for e in batch):
                live.running, state = True, "running"
            try:
                await trio.to_thread.run_sync(self.db.add_events, live.id, batch, state)
            except Exception as exc:  # the history is advice; the job goes on
                log.warning("job %s: timeline not saved: %s", live.id, exc)

    async def _finish(self, live: _Live, receive, ended: dict) -> None:
        state, outcome = ended["state"], ended.get("outcome")
        self.ended[state] += 1
        now = time.time()
        events = _drain(receive)
        paid, receipt = _paid(live.paid)  # what the timeline says, when it ended early
        fields = {"error": ended.get("error", ""), "paid": ended.get("paid") or paid,
                  "receipt": receipt, "provider": live.provider}
        if outcome is not None:
            receipt = outcome.receipt
            fields = {"output": outcome.output, "log": outcome.log,
                      "provider": outcome.provider, "price": outcome.price,
                      "paid": outcome.paid, "receipt": receipt,
                      "wire_job": outcome.job_id.hex(),
                      "seconds": round(outcome.timings["total"], 6),
                      "pull_seconds": round(outcome.timings["pull"], 3)}
            if outcome.paid and not live.paid:  # a node that does not report "paid" itself
                events.append((now, "paid", 100, f"{outcome.paid} to {outcome.provider}"
                                                 + (f" receipt {receipt}" if receipt else "")))
            events.append((now, "answered", 100, f"{len(outcome.output)} bytes from "
                                                 f"{outcome.provider} in "
                                                 f"{fields['seconds']:.3f} s"))
            final = {"done": {"job": live.id, **_done(fields), "replicas": outcome.replicas,
                              "output_b64": base64.b64encode(outcome.output).decode()}}
        else:
            events.append((now, state, 0, fields["error"]))
            final = {"error": fields["error"]}
        try:
            await trio.to_thread.run_sync(partial(self.db.finish, live.id, state,
                                                  events=events, **fields))
        except Exception as exc:  # the follower still gets the result
            log.error("job %s ended %s, but the history could not record it: %s", live.id,
                      state, exc)
        self.live.pop(live.id, None)
        live.end(final)

    # -- the routes ---------------------------------------------------------------------
    async def lookup(self, request: Request) -> JobRecord:
        try:
            return await trio.to_thread.run_sync(self.db.get, request.arg("id"))
        except JobNotFound as exc:
            raise HttpError(404, str(exc)) from None

    async def list_jobs(self, request: Request) -> dict:
        state = request.query.get("state") or None
        try:
            limit = int(request.query.get("limit", 20))
            rows = await trio.to_thread.run_sync(self.db.recent, limit, state)
        except ValueError as exc:
            raise HttpError(400, f"bad job list parameters: {exc}") from None
        total = await trio.to_thread.run_sync(self.db.count)
        jobs = [r.to_json() for r in rows]
        for j in jobs:  # a running job's provider, before its history row has it
            live = self.live.get(j["id"])
            if live is not None and not j["provider"]:
                j["provider"] = live.provider
        return {"jobs": jobs, "total": total,
                "kept": self.db.max_jobs, "live": len(self.live),
                "ended": dict(self.ended)}

    async def describe(self, request: Request) -> dict:
        record = await self.lookup(request)
        events = await trio.to_thread.run_sync(self.db.timeline, record.id)
        return {"job": record.to_json(), "timeline": [e.to_json() for e in events]}

    async def logs(self, request: Request) -> dict:
        record = await self.lookup(request)
        text = await trio.to_thread.run_sync(self.db.log, record.id)
        return {"job": record.id, "state": record.state,
                "log_b64": base64.b64encode(text).decode()}

    async def cancel(self, request: Request) -> dict:
        record = await self.lookup(request)
        live = self.live.get(record.id)
        if live is None:
            raise HttpError(409, f"job {record.id} is {record.state}, not running: nothing "
                                 "to cancel")
        live.scope.cancel()
        with trio.move_on_after(CANCEL_WAIT_S):
            await live.finished.wait()
        record = await trio.to_thread.run_sync(self.db.get, record.id)
        return {"job": record.id, "state": record.state, "paid": record.paid,
                "error": record.error}

    async def get(self, request: Request) -> Streamed:
        """The job's result as ``run`` streams it: followed while it runs."""
        record = await self.lookup(request)
        live = self.live.get(record.id)
        if live is not None:
            return Streamed(live.follow(), "application/x-ndjson")
        final = await trio.to_thread.run_sync(self._final, record)

        async def one():
            yield _line(final)
        return Streamed(one(), "application/x-ndjson")

    def _final(self, record: JobRecord) -> dict:
        """A finished job's result line, from the history."""
        if record.state != "done":
            return {"error": record.error or f"internal: job {record.id} is {record.state} "
                                              "in the history, but not running in this node"}
        output = self.db.output(record.id) if record.output_kept else None
        if output is None:
            return {"error": f"gone: the output of job {record.id} is no longer kept (the "
                             f"history keeps the newest outputs, up to "
                             f"{self.db.max_output_bytes >> 20} MiB in all); "
                             "`meca-node job describe` shows the rest"}
        return {"done": {"job": record.id, **_done(record.to_json()),
                         "output_b64": base64.b64encode(output).decode()}}


def _drain(receive) -> list:
    out = []
    while True:
        try:
            out.append(receive.receive_nowait())
        except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
            return out


def _done(fields: dict) -> dict:
    """The ``done`` line's fields but the output (as ``meca-node run`` prints them)."""
    return {"provider": fields["provider"], "price": fields["price"],
            "seconds": fields["seconds"], "pull_seconds": fields["pull_seconds"],
            "paid": fields["paid"], "receipt": fields["receipt"]}


def _paid(detail: str) -> tuple[int, str]:
    """The amount and receipt hash a ``paid`` event names (0, "" when none)."""
    if not detail:
        return 0, ""
    amount = re.search(r"\d+", detail)
    receipt = _HASH.search(detail)
    return (int(amount.group(0)) if amount else 0), (receipt.group(0) if receipt else "")


def job_routes(node, ipfs: IpfsNode, data_dir: Path, weights: Weights | None = None,
               trace: bool = False) -> dict:
    jobs = JobClient(node, IpfsData(ipfs), load_reputation(data_dir),
                     lambda rep: save_reputation(data_dir, rep))
    if weights is not None:
        jobs.weights = weights
    if trace:  # simulations: each placement decision, for the simulator to replay
        from meca_node.sim.replay import DecisionTrace

        jobs.trace = DecisionTrace(data_dir)
    db = JobsDB(data_dir)
    lost = db.recover()
    if lost:
        log.warning("%d job(s) were left unfinished when the node last stopped; they are "
                    "interrupted (`meca-node job list --state interrupted`)", len(lost))
    history = JobHistory(jobs, ipfs, db)

    async def run(request: Request) -> Streamed | dict:
        body = request.json()
        ref = request.arg("task")
        data, params = _job_input(body), _job_params(body)
        live = await history.submit(ref, data, params, bool(body.get("detach")))
        if body.get("detach"):
            return {"job": live.id}
        return Streamed(live.follow(), "application/x-ndjson")

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
            "GET /v1/hosts": lambda _: jobs.hosts(),
            "GET /v1/jobs": history.list_jobs, "GET /v1/jobs/describe": history.describe,
            "GET /v1/jobs/logs": history.logs, "POST /v1/jobs/cancel": history.cancel,
            "GET /v1/jobs/get": history.get, "POST /v1/jobs/get": history.get}


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
    capacity = Capacity(offer.resources, queue_max=int(values.get("queue_max", 8)))
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
    node.job_host = host
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
