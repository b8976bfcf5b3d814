"""A bad actor for tests and simulations: publishes every kind of invalid gossip.

``python -m meca_node.sim.rogue --genesis G --bootstrap ADDR ... --report OUT.json``
joins the mesh with no validators of its own, publishes forged, replayed, stale,
future-dated, other-network, unknown-version, unknown-type, wrong-topic, malformed
and flooding messages, then one oversized message, and writes what it sent (per
category, with the drop reason an honest node should count) to the report.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import trio
from nacl.signing import SigningKey

from meca_node import wire
from meca_node.core import Identity
from meca_node.net import NetConfig, open_net
from meca_node.runtime import detect_hardware, machine_arch

PER_KIND = 3
FLOOD = 100


def _advert(addrs: list[str]) -> wire.HostAdvert:
    return wire.HostAdvert(
        roles=("provider",), arch=machine_arch(), hardware=detect_hardware(),
        free=wire.Resources(1000, 512, 0), price=1, environments=(), cached_images=(),
        queue=0, addrs=tuple(addrs[:4]))


def _offer() -> wire.TaskOffer:
    return wire.TaskOffer(name="rogue", description="", image_cid="bafy", arch="amd64",
                          resources=wire.Resources(1000, 128, 0), environment="docker-cpu",
                          fee=1, example_input_sha256=b"\0" * 32,
                          example_output_sha256=b"\0" * 32)


def _resign(obj: dict, key: SigningKey) -> bytes:
    """Sign an arbitrary envelope map (for versions/types our encoder would refuse)."""
    unsigned = {k: v for k, v in obj.items() if k != "sig"}
    unsigned["signer"] = bytes(key.verify_key)
    sig = key.sign(wire.cbor_encode(unsigned)).signature
    return wire.cbor_encode({**unsigned, "sig": sig})


def build_plan(net_id: bytes, now_ms: int, addrs: list[str]) -> list[tuple[str, str, str, bytes]]:
    """(category, expected drop reason, topic, bytes) in publish order; oversize last."""
    adverts = wire.TOPIC_ADVERTS
    plan: list[tuple[str, str, str, bytes]] = []
    advert = _advert(addrs)

    def sealed(key: SigningKey, ts: int = now_ms, net: bytes = net_id, body=advert) -> bytes:
        return wire.seal(body, key=key, net=net, ts=ts, nonce=os.urandom(16))

    for _ in range(PER_KIND):
        victim, forger = SigningKey.generate(), SigningKey.generate()
        obj = wire.cbor_decode(sealed(forger))
        obj["signer"] = bytes(victim.verify_key)  # claims to be the victim
        plan.append(("forged", "bad_signature", adverts, wire.cbor_encode(obj)))
        key = SigningKey.generate()
        plan.append(("stale", "stale", adverts, sealed(key, ts=now_ms - 600_000)))
        plan.append(("future", "future", adverts, sealed(key, ts=now_ms + 600_000)))
        plan.append(("other_network", "wrong_network", adverts,
                     sealed(key, net=bytes(32))))
        obj = wire.cbor_decode(sealed(key))
        plan.append(("unknown_version", "unsupported_version", adverts,
                     _resign({**obj, "v": 2}, key)))
        plan.append(("unknown_type", "unknown_type", adverts,
                     _resign({**obj, "type": "Bogus/1"}, key)))
        plan.append(("wrong_topic", "wrong_topic", adverts, sealed(key, body=_offer())))
        plan.append(("malformed", "malformed", adverts, os.urandom(200)))
    replayed = sealed(SigningKey.generate())
    plan.append(("replay_original", "", adverts, replayed))
    for _ in range(PER_KIND - 1):
        plan.append(("replay", "replay", adverts, replayed))
    flooder = SigningKey.generate()
    for _ in range(FLOOD):
        plan.append(("flood", "rate_limited|banned", adverts, sealed(flooder)))
    plan.append(("oversize", "oversize", adverts, os.urandom(wire.Caps().gossip_message + 4096)))
    return plan


async def run(args: argparse.Namespace) -> dict:
    genesis = wire.genesis_from_json(Path(args.genesis).read_bytes())
    identity = Identity(os.urandom(32))
    config = NetConfig(listen=(args.listen,), bootstrap=tuple(args.bootstrap))
    sent: dict[str, int] = {}
    async with open_net(identity.seed, config) as net:
        with trio.fail_after(args.connect_timeout):
            while len(net.connected_peers()) < len(args.bootstrap):
                await trio.sleep(0.1)
        await trio.sleep(2.5)  # let gossipsub graft us into the mesh (1 s heartbeat)
        plan = build_plan(genesis.network_id, time.time_ns() // 1_000_000, net.listen_addrs())
        for category, _reason, topic, data in plan:
            if category == "oversize":
                await trio.sleep(1.0)  # everything else first: oversize gets us cut off
            await net.publish(topic, data)
            sent[category] = sent.get(category, 0) + 1
            await trio.sleep(0.005)
        await trio.sleep(1.0)
        connected_after = [p.peer_id for p in net.connected_peers()]
    expected = {c: r for c, r, _t, _d in plan}
    return {"peer_id": identity.peer_id, "sent": sent, "expected_reason": expected,
            "connected_after": connected_after}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--genesis", required=True)
    p.add_argument("--bootstrap", action="append", required=True)
    p.add_argument("--listen", default="/ip4/127.0.0.1/tcp/0")
    p.add_argument("--report", required=True)
    p.add_argument("--connect-timeout", type=float, default=20.0)
    args = p.parse_args(argv)
    report = trio.run(run, args)
    Path(args.report).write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
