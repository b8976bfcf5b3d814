"""The control API's ``/v1/ipfs/*`` endpoints, over the node's :class:`IpfsNode`.

Long operations (add, get, pin of remote content) answer with JSON lines: progress lines
``{"progress": {...}}`` while they run, then ``{"done": {...}}`` or ``{"error": "..."}``.
``cat`` answers with the file's bytes, once the whole DAG is here and checked.
"""

from __future__ import annotations

import json
from pathlib import Path

from meca_node.control.server import HttpError, Request, Streamed
from meca_node.ipfs import unixfs
from meca_node.ipfs.cid import CID, CidError
from meca_node.net.bitswap import PullError
from meca_node.net.ipfs_node import IpfsNode, Job
from meca_node.store.blocks import BlockStoreError


def _cid(request: Request, name: str = "cid") -> CID:
    try:
        return CID.parse(request.arg(name))
    except CidError as exc:
        raise HttpError(400, str(exc)) from None


def _lines(job: Job) -> Streamed:
    async def chunks():
        async for line in job.progress():
            yield json.dumps(line).encode() + b"\n"

    return Streamed(chunks(), "application/x-ndjson")


def _dial(request: Request) -> list[str]:
    """Peers to fetch from (``from``: a list in the body, or comma-separated in the query)."""
    value = request.json().get("from", request.query.get("from", []))
    addrs = value.split(",") if isinstance(value, str) else value
    if not isinstance(addrs, list) or not all(isinstance(a, str) for a in addrs):
        raise HttpError(400, "'from' must be a list of /p2p/ multiaddrs")
    return [a for a in addrs if a]


def _settings(body: dict) -> unixfs.Settings:
    try:
        return unixfs.Settings(cid_version=int(body.get("cid_version", 1)),
                               hidden=bool(body.get("hidden", False)))
    except (unixfs.UnixfsError, ValueError) as exc:
        raise HttpError(400, str(exc)) from None


def _engine():
    from meca_node.runtime.executor import EngineUnavailable, connect

    try:
        return connect()
    except EngineUnavailable as exc:
        raise HttpError(503, str(exc)) from None


async def add_image(ipfs: IpfsNode, client, ref: str, job: Job):
    """Store the local image ``ref`` as a DAG in the node's IPFS and pin it."""
    import trio

    from meca_node.runtime import images

    dag = await trio.to_thread.run_sync(images.image_to_dag, client, ref, ipfs.store.put)
    await trio.to_thread.run_sync(ipfs.store.pin, dag.cid)
    job.done_bytes = dag.size
    return dag


def image_routes(ipfs: IpfsNode) -> dict:
    """Docker images as DAGs: add one from the local engine, load one (pulled if needed)."""
    import trio

    from meca_node.runtime import images

    def add(request: Request) -> Streamed:
        ref = request.arg("image")
        client = _engine()

        async def work(job: Job) -> dict:
            dag = await add_image(ipfs, client, ref, job)
            return {"cid": str(dag.cid), "image": ref, "size": dag.size,
                    "layers": [{"digest": layer.digest, "size": layer.size}
                               for layer in dag.layers]}

        return _lines(ipfs.start_job(Job("image-add"), work))

    def load(request: Request) -> Streamed:
        cid, dial = _cid(request), _dial(request)
        client = _engine()
        work_dir = ipfs.store.root.parent / "tmp"

        async def work(job: Job) -> dict:
            stats = await ipfs.ensure(cid, job, dial)
            work_dir.mkdir(exist_ok=True)
            loaded = await trio.to_thread.run_sync(images.dag_to_image, client, cid,
                                                   ipfs.store.get, work_dir)
            return {"cid": str(cid), "loaded": loaded, "fetched_bytes": stats.bytes,
                    "fetched_blocks": stats.blocks, "local_blocks": stats.local_blocks,
                    "seconds": round(stats.seconds, 3), "by_peer": stats.by_peer}

        return _lines(ipfs.start_job(Job("image-load"), work))

    return {"POST /v1/ipfs/image/add": add, "POST /v1/ipfs/image/load": load}


def ipfs_routes(ipfs: IpfsNode) -> dict:
    def add(request: Request) -> Streamed:
        body = request.json()
        path = Path(request.arg("path"))
        if not path.is_absolute():
            raise HttpError(400, f"path {path} must be absolute (the node resolves it)")
        try:
            return _lines(ipfs.add(path, _settings(body), pin=bool(body.get("pin", True))))
        except OSError as exc:
            raise HttpError(400, str(exc)) from None

    def get(request: Request) -> Streamed:
        out = Path(request.arg("out"))
        if not out.is_absolute():
            raise HttpError(400, f"output path {out} must be absolute")
        try:
            return _lines(ipfs.get(_cid(request), out, _dial(request)))
        except OSError as exc:
            raise HttpError(400, str(exc)) from None

    async def cat(request: Request) -> Streamed:
        cid = _cid(request)
        chunks = ipfs.cat(cid, _dial(request))
        try:  # fetch and check before the first byte, so errors get a status
            first = await chunks.__anext__()
        except StopAsyncIteration:
            first = b""
        except PullError as exc:  # not to be had from any peer (or not in time)
            raise HttpError(404, str(exc)) from None
        except (ValueError, BlockStoreError) as exc:  # not a file, malformed, or damaged
            raise HttpError(400, str(exc)) from None

        async def rest():
            yield first
            async for chunk in chunks:
                yield chunk

        return Streamed(rest())

    def pin_add(request: Request) -> Streamed:
        return _lines(ipfs.pull(_cid(request), pin=True, dial=_dial(request)))

    async def pin_rm(request: Request) -> dict:
        cid = _cid(request)
        try:
            await ipfs.unpin(cid)
        except BlockStoreError as exc:
            raise HttpError(400, str(exc)) from None
        return {"unpinned": str(cid)}

    async def gc(_request: Request) -> dict:
        try:
            return await ipfs.gc()
        except BlockStoreError as exc:
            raise HttpError(409, str(exc)) from None

    return {
        "POST /v1/ipfs/add": add,
        "POST /v1/ipfs/get": get,
        "GET /v1/ipfs/cat": cat,
        "POST /v1/ipfs/pin/add": pin_add,
        "POST /v1/ipfs/pin/rm": pin_rm,
        "GET /v1/ipfs/pin/ls": lambda _r: {"pins": ipfs.pins()},
        "POST /v1/ipfs/gc": gc,
        "GET /v1/ipfs/stat": lambda _r: ipfs.stat(),
        **image_routes(ipfs),
    }
