"""The control API's ``/v1/offers/*`` endpoints: publish a built task image as a signed
offer (its image stored as a pinned DAG first) and withdraw one."""

from __future__ import annotations

from pathlib import Path

import trio

from meca_node import wire
from meca_node.cli.ipfs_api import _engine, _lines, add_image
from meca_node.control.server import HttpError, Request, Streamed
from meca_node.net.ipfs_node import IpfsNode, Job
from meca_node.node import Node
from meca_node.store.own_offers import save_own_offers


def _offer(body: dict, image_cid: str) -> wire.TaskOffer:
    try:
        return wire.TaskOffer(
            name=str(body["name"]), description=str(body.get("description", "")),
            image_cid=image_cid, arch=str(body["arch"]),
            resources=wire.Resources(cpu_milli=int(body["cpu_milli"]),
                                     mem_mib=int(body["mem_mib"]),
                                     gpu_count=int(body.get("gpu_count", 0))),
            environment=str(body["environment"]), fee=int(body["fee"]),
            example_input_sha256=bytes.fromhex(body["example_input_sha256"]),
            example_output_sha256=bytes.fromhex(body["example_output_sha256"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise HttpError(400, f"not a valid offer: {exc}") from None


def offer_routes(node: Node, ipfs: IpfsNode, data_dir: Path) -> dict:
    """Routes; what is published is saved in the data dir after every change."""

    def save() -> None:
        save_own_offers(data_dir, node.own_offers())

    def publish(request: Request) -> Streamed:
        body = request.json()
        image = request.arg("image")
        _offer(body, "bafy-check")  # refuse a bad offer before any work
        client = _engine()

        async def work(job: Job) -> dict:
            dag = await add_image(ipfs, client, image, job)
            known = await node.publish_offer(_offer(body, str(dag.cid)))
            await trio.to_thread.run_sync(save)
            return {"offer_id": known.offer_id.hex(), "name": known.offer.name,
                    "label": known.label, "image": image, "image_cid": str(dag.cid),
                    "image_bytes": dag.size, "fee": known.offer.fee}

        return _lines(ipfs.start_job(Job("publish"), work))

    async def withdraw(request: Request) -> dict:
        name = request.arg("name")
        try:
            offer_id = await node.withdraw_offer(name)
        except LookupError as exc:
            raise HttpError(404, str(exc)) from None
        await trio.to_thread.run_sync(save)
        return {"withdrawn": name, "offer_id": offer_id.hex()}

    return {"POST /v1/offers/publish": publish, "POST /v1/offers/withdraw": withdraw}
