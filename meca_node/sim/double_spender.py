"""A double-spending client, for tests (tests/integration/test_settlement_cluster.py) and
simulations (``meca-node sim cluster``, a ``double_spender`` node).

``python -m meca_node.sim.double_spender --genesis G --key-dir DIR --seq N --prev HEX
--offer-id HEX --developer HEX --fee F --input FILE --target ADDR_A --target ADDR_B
--report OUT.json``

Signs with the account key in ``DIR/node.key`` (a client's key: the cheat is that
account's) and runs two paid jobs of the offer at once, one on each target provider, each
from its own libp2p host (a fresh peer id) connected to that provider only. It speaks the
job protocol as an honest client does, up to the providers' result commitments; then it
signs *two* Receipts at the same ``seq`` and ``prev`` of the account's chain (one per
provider: different entries at one position, a fork) and, at the same moment on both
hosts, gossips each on ``meca/receipts/1`` (an honest client gossips its receipt too) and
hands it to its provider. With ``--no-gossip`` it only hands them over (a cheat that
gossips nothing: only the providers can tell the network).

It prints one line ``{"sent": <unix time>}`` on stdout when both receipts are out, then
waits for each provider's answer (the output, or a reject) and writes a report: per
provider its price, the receipt's hash, and the outcome. Every wait is bounded.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from contextlib import AsyncExitStack
from pathlib import Path

import trio

from meca_node import wire
from meca_node.core import public_key_of_peer_id
from meca_node.net import NetConfig, open_net, parse_peer_addr
from meca_node.node.jobs import PROTOCOL
from meca_node.store import load_or_create_key


def _seal(body, key, net_id: bytes) -> bytes:
    return wire.seal(body, key=key, net=net_id, ts=time.time_ns() // 1_000_000,
                     nonce=os.urandom(16))


class Side:
    """One job on one provider, over a host connected to that provider only."""

    def __init__(self, addr: str) -> None:
        self.addr = addr
        self.peer_id = parse_peer_addr(addr).peer_id.to_base58()
        self.provider_key = public_key_of_peer_id(self.peer_id)
        self.net = None
        self.stream = None
        self.job_id = os.urandom(16)
        self.price: int | None = None
        self.commit: bytes | None = None
        self.receipt: bytes | None = None
        self.outcome: dict = {}


async def run(args: argparse.Namespace) -> dict:
    genesis = wire.genesis_from_json(Path(args.genesis).read_bytes())
    net_id = genesis.network_id
    identity, created = load_or_create_key(Path(args.key_dir))
    assert not created, f"no key in {args.key_dir}"
    key = identity.signing_key
    offer_id, developer = bytes.fromhex(args.offer_id), bytes.fromhex(args.developer)
    prev = bytes.fromhex(args.prev)
    data = Path(args.input).read_bytes()
    sides = [Side(a) for a in args.target]
    committed = trio.Event()
    go = trio.Event()
    sent_at: list[float] = []

    async def job(side: Side) -> None:
        """Request, read up to the commitment; wait for ``go``; pay; read the answer."""
        side.stream = await side.net.open_stream(side.peer_id, PROTOCOL)
        await side.stream.send(_seal(wire.JobRequest(
            job_id=side.job_id, offer_id=offer_id, input=data, input_cid="",
            max_price=args.max_price, deadline=time.time_ns() // 1_000_000 + 60_000),
            key, net_id))
        for _ in range(1000):  # bounded: progress, then the commitment
            raw = await side.stream.receive()
            if raw is None:
                side.outcome = {"error": "stream ended before the commitment"}
                break
            env = wire.open_envelope(raw, max_size=1 << 20)
            body = env.body
            if isinstance(body, wire.JobReject):
                side.outcome = {"rejected": body.reason, "detail": body.detail}
                break
            if isinstance(body, wire.JobAccept):
                side.price = body.price
            elif isinstance(body, wire.ResultCommit):
                side.commit = raw
                break
        if all(s.commit or s.outcome for s in sides):
            committed.set()
        await go.wait()
        if side.commit is None:
            return
        receipt = _seal(wire.Receipt(
            seq=args.seq, prev=prev, job_id=side.job_id, offer_id=offer_id,
            commit=side.commit, provider=side.provider_key, developer=developer,
            price=side.price, fee=args.fee), key, net_id)
        side.receipt = receipt
        sent_at.append(time.time())
        if not args.no_gossip:
            await side.net.publish(wire.TOPIC_RECEIPTS, receipt)
        await side.stream.send(receipt)
        raw = await side.stream.receive()
        if raw is None:
            side.outcome = {"error": "stream ended after the receipt"}
            return
        body = wire.open_envelope(raw, max_size=1 << 20).body
        if isinstance(body, wire.JobResult):
            side.outcome = {"output": body.output.decode("utf-8", "replace")}
        elif isinstance(body, wire.JobReject):
            side.outcome = {"rejected": body.reason, "detail": body.detail}
        else:
            side.outcome = {"error": f"unexpected {type(body).__name__}"}

    with trio.fail_after(args.timeout):
        async with AsyncExitStack() as stack:
            for side in sides:
                side.net = await stack.enter_async_context(open_net(os.urandom(32), NetConfig(
                    listen=("/ip4/127.0.0.1/tcp/0",), bootstrap=(side.addr,))))
            while not all(s.peer_id in {p.peer_id for p in s.net.connected_peers()}
                          for s in sides):
                await trio.sleep(0.05)
            # gossipsub learns the provider's subscriptions and grafts (1 s heartbeat)
            await trio.sleep(2.5)
            async with trio.open_nursery() as nursery:
                for side in sides:
                    nursery.start_soon(job, side)
                await committed.wait()
                go.set()  # both commitments in hand: both receipts out at once
                while len(sent_at) < sum(1 for s in sides if s.commit):
                    await trio.sleep(0.001)
                await trio.sleep(0.01)  # the sends themselves
                print(json.dumps({"sent": min(sent_at, default=time.time())}), flush=True)
            for side in sides:
                await side.stream.close()
    return {"account": identity.public_key.hex(), "seq": args.seq,
            "sent": min(sent_at, default=None),
            "sides": [{"provider": s.peer_id, "price": s.price,
                       "receipt_sha256": (hashlib.sha256(s.receipt).hexdigest()
                                          if s.receipt else None),
                       **s.outcome} for s in sides]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--genesis", required=True)
    p.add_argument("--key-dir", required=True, help="a data dir whose node.key signs")
    p.add_argument("--seq", type=int, required=True, help="the account's next seq")
    p.add_argument("--prev", required=True, help="hex hash of the account's last entry")
    p.add_argument("--offer-id", required=True)
    p.add_argument("--developer", required=True, help="the offer's developer key (hex)")
    p.add_argument("--fee", type=int, required=True)
    p.add_argument("--max-price", type=int, default=100)
    p.add_argument("--input", required=True)
    p.add_argument("--target", action="append", required=True,
                   help="a provider's /p2p/ multiaddr (give two)")
    p.add_argument("--no-gossip", action="store_true")
    p.add_argument("--timeout", type=float, default=60.0)
    p.add_argument("--report", required=True)
    args = p.parse_args(argv)
    report = trio.run(run, args)
    Path(args.report).write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
