"""One peer process of the gossip benchmark (``scripts/bench_gossip.py`` starts N of them).

``python -m meca_node.sim.benchpeer --plan RUN/plan.json --index I``

The peer is a real node as far as gossip goes: our libp2p host (:func:`meca_node.net.open_net`)
with the NetConfig the real node uses (see :func:`bench_net_config`), and a
:class:`meca_node.node.Node` whose own validator (``Node._validate`` -> ``GossipGate.check``:
envelope decode, Ed25519 signature, topic, network, clock skew, replay and per-signer rate
checks) runs on every message before gossipsub delivers or forwards it. What differs from
``meca-node start``: the node sends no HostAdverts (the benchmark controls all traffic), the
gate's per-signer rate limit comes from the plan (raised so that the benchmark's own rate is
never throttled), and the wall-clock time at which each benchmark message reaches the node's
intake (``Node._handle``, after validation) is recorded.

Experiments (``--gossipsub``, ``--netconfig``, ``--env``, ``--patch`` of the harness) change
gossipsub arguments, NetConfig fields, environment variables or py-libp2p functions in these
processes only, to measure candidate changes for ``meca_node/net/host.py``.

Coordination with the harness is by files in the run directory (all times are ``time.time()``,
every process is on the same machine):

1. the peer writes ``ready-I.json`` once it is subscribed and listening;
2. it publishes a signed warm-up ``TaskOffer`` every ``warmup_interval_s`` and writes
   ``mesh-I.json`` once it has received a warm-up from every other peer; it stops
   warming up when the harness writes ``warmup-stop.json`` (every peer heard every other);
3. the harness writes ``go.json`` (absolute send times); if the peer is the baseline sender it first runs the one-hop stream baseline (from ``tb0``); then every
   peer publishes its share of the messages (message k is sent by peer ``k % N`` at
   ``t0 + k / rate``);
4. at ``t_end`` it writes ``result-I.json`` and exits.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import resource
import signal
import struct
import sys
import time
from pathlib import Path

import trio

from meca_node import wire
from meca_node.core import peer_id_of
from meca_node.net import NetConfig, open_net
import meca_node.net.host as host_module
from meca_node.node import Node, NodeSettings, OsRandom, SystemClock, arm_exit_deadline
from meca_node.store import atomic_write, load_key

log = logging.getLogger("meca_node.benchpeer")

TOPIC = wire.TOPIC_OFFERS
BENCH_PREFIX = "bench:"
WARM_PREFIX = "warm:"
BASELINE_PROTOCOL = "/meca/bench-baseline/1"


def bench_net_config(listen: str, bootstrap: list[str], caps: wire.Caps,
                     overrides: dict | None = None) -> NetConfig:
    """The NetConfig of ``meca-node start`` (``cli.runner.net_config``) for default config.

    ``sim`` may not import ``cli`` (layer contract), so this repeats its formula; the harness
    checks that both agree and records the result.
    """
    cfg = NetConfig(listen=(listen,), announce=(), bootstrap=tuple(bootstrap), mdns=False,
                    max_rpc=max(4 * caps.gossip_message, 256 * 1024),
                    max_frame=caps.stream_frame, queue=caps.queue)
    if overrides:
        cfg = dataclasses.replace(cfg, **overrides)
    return cfg


def install_gossipsub_overrides(params: dict) -> None:
    """Override keyword arguments of the ``GossipSub`` router that ``open_net`` builds.

    Affects this process only; used to measure candidate settings for ``net/host.py``.
    """
    if not params:
        return
    original = host_module.GossipSub

    def patched(*args, **kwargs):
        kwargs.update(params)
        return original(*args, **kwargs)

    host_module.GossipSub = patched  # type: ignore[assignment]


def _libp2p_pubsub_modules():
    """py-libp2p's pubsub and gossipsub modules, as loaded by ``meca_node.net.host``."""
    return sys.modules["libp2p.pubsub.pubsub"], sys.modules["libp2p.pubsub.gossipsub"]


#: counters filled by the ``trace`` patch (diagnostics; in the result file as "trace")
TRACE: dict = {}


def _patch_trace() -> None:
    """Count what py-libp2p's pubsub does with our messages (diagnostics only).

    Records the first arrival (before any check) of each bench message at this peer, the
    number of copies received, outbound RPCs dropped on full per-peer queues, and IWANT /
    IHAVE traffic.
    """
    pubsub_mod, gossipsub_mod = _libp2p_pubsub_modules()
    TRACE.update(copies=0, first_arrival={}, dropped_rpcs=0, dropped_publish=0,
                 iwant_received_ids=0, ihave_received_ids=0, rpcs_written=0,
                 max_write_ms=0.0)
    needle = BENCH_PREFIX.encode()
    push_msg = pubsub_mod.Pubsub.push_msg

    async def traced_push_msg(self, msg_forwarder, msg):
        data = msg.data
        at = data.find(needle)
        if at >= 0:
            TRACE["copies"] += 1
            k = int(data[at + len(needle):at + len(needle) + 7])
            TRACE["first_arrival"].setdefault(k, time.time())
        return await push_msg(self, msg_forwarder, msg)

    drop_rpc = gossipsub_mod.drop_rpc

    def traced_drop(peer_id, rpc):
        TRACE["dropped_rpcs"] += 1
        TRACE["dropped_publish"] += len(rpc.publish)
        return drop_rpc(peer_id, rpc)

    handle_iwant = gossipsub_mod.GossipSub.handle_iwant

    async def traced_iwant(self, iwant_msg, sender_peer_id):
        TRACE["iwant_received_ids"] += len(iwant_msg.messageIDs)
        return await handle_iwant(self, iwant_msg, sender_peer_id)

    handle_ihave = gossipsub_mod.GossipSub.handle_ihave

    async def traced_ihave(self, ihave_msg, sender_peer_id):
        TRACE["ihave_received_ids"] += len(ihave_msg.messageIDs)
        return await handle_ihave(self, ihave_msg, sender_peer_id)

    write_msg = pubsub_mod.Pubsub.write_msg

    async def traced_write(self, stream, rpc_msg):
        t = time.perf_counter()
        ok = await write_msg(self, stream, rpc_msg)
        TRACE["rpcs_written"] += 1
        TRACE["max_write_ms"] = max(TRACE["max_write_ms"], (time.perf_counter() - t) * 1e3)
        return ok

    pubsub_mod.Pubsub.push_msg = traced_push_msg
    gossipsub_mod.drop_rpc = traced_drop
    pubsub_mod.drop_rpc = traced_drop
    gossipsub_mod.GossipSub.handle_iwant = traced_iwant
    gossipsub_mod.GossipSub.handle_ihave = traced_ihave
    pubsub_mod.Pubsub.write_msg = traced_write


#: experimental py-libp2p patches a run may ask for (``--patch NAME``)
PATCHES = {"trace": _patch_trace}  # (the signed-record cache is in net/fastpath.py now)


def offer(name: str, description: str) -> wire.TaskOffer:
    return wire.TaskOffer(name=name, description=description, image_cid="", arch="",
                          resources=wire.Resources(0, 0, 0), environment="", fee=0,
                          example_input_sha256=bytes(32), example_output_sha256=bytes(32))


def bench_name(k: int) -> str:
    return f"{BENCH_PREFIX}{k:07d}"


def bench_description(t_pub_ns: int, pad: int) -> str:
    return f"{t_pub_ns:020d}:" + "x" * pad


class BenchNode(Node):
    """The real node with adverts off and receive times recorded."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        #: data -> (validator entered, validator returned), for accepted bench messages
        self._val_times: dict[bytes, tuple[float, float]] = {}
        #: k -> [t_pub, t_validate_in, t_validate_out, t_delivered]
        self.received: dict[int, list[float]] = {}
        self.warm_from: set[str] = set()
        self.mesh_event = trio.Event()
        self.expected_warm: set[str] = set()
        self.duplicates = 0
        self.other_offers = 0

    def _validate(self, topic: str, data: bytes, origin: str) -> bool:
        t_in = time.time()
        ok = super()._validate(topic, data, origin)
        if ok and topic == TOPIC and origin != self.net.peer_id:
            self._val_times[data] = (t_in, time.time())
            if len(self._val_times) > 4 * self.settings.caps.queue:
                self._val_times.pop(next(iter(self._val_times)))
        return ok

    def _handle(self, env: wire.Envelope) -> None:
        t_recv = time.time()
        body = env.body
        if isinstance(body, wire.TaskOffer):
            t_in, t_out = self._val_times.pop(env.raw, (float("nan"), float("nan")))
            if body.name.startswith(BENCH_PREFIX):
                k = int(body.name[len(BENCH_PREFIX):])
                t_pub = int(body.description.split(":", 1)[0]) / 1e9
                if k in self.received:
                    self.duplicates += 1
                else:
                    self.received[k] = [t_pub, t_in, t_out, t_recv]
                return
            if body.name.startswith(WARM_PREFIX):
                self.warm_from.add(wire_signer_peer(env))
                if self.expected_warm and self.warm_from >= self.expected_warm:
                    self.mesh_event.set()
                return
            self.other_offers += 1
            return
        super()._handle(env)

    async def _advert_loop(self) -> None:
        """No HostAdverts: the benchmark controls all gossip traffic."""
        return


def wire_signer_peer(env: wire.Envelope) -> str:
    return peer_id_of(env.signer)




async def _sleep_until(t_wall: float) -> None:
    await trio.sleep(max(0.0, t_wall - time.time()))


class Peer:
    def __init__(self, plan: dict, index: int) -> None:
        self.plan = plan
        self.index = index
        self.run_dir = Path(plan["run_dir"])
        self.me = plan["peers"][index]
        self.n = plan["n"]
        self.rate = float(plan["rate"])
        self.messages = int(plan["messages"])
        self.size = int(plan["size"])
        self.sent: dict[int, list[float]] = {}
        self.baseline_sent: dict[int, float] = {}
        self.baseline_recv: dict[int, list[float]] = {}
        self.baseline_errors: list[str] = []
        self.warmups_sent = 0
        self.events: dict[str, float] = {"start": time.time()}
        self.node: BenchNode | None = None
        self.pad = 0
        self.cpu_marks: dict[str, list[float]] = {}

    def _write(self, name: str, doc: dict) -> None:
        atomic_write(self.run_dir / name, json.dumps(doc).encode())

    def _calibrate(self, node: BenchNode) -> None:
        """Pad the description so that every sealed bench message is exactly ``size`` bytes."""
        probe = len(node.seal(offer(bench_name(0), bench_description(time.time_ns(), 0))))
        pad = self.size - probe
        if pad < 0:
            raise SystemExit(f"--size {self.size} is below the {probe}-byte minimum of a "
                             "signed bench message")
        for _ in range(4):  # CBOR length headers grow at 24/256/65536 bytes
            got = len(node.seal(offer(bench_name(0), bench_description(time.time_ns(), pad))))
            if got == self.size:
                break
            pad += self.size - got
        self.pad = pad

    async def run(self) -> None:
        plan = self.plan
        identity = load_key(Path(self.me["data_dir"]))
        genesis = wire.genesis_from_json(Path(plan["genesis"]).read_text())
        caps = wire.Caps()
        install_gossipsub_overrides(plan.get("gossipsub_overrides") or {})
        for name in plan.get("patches") or []:
            PATCHES[name]()
        net_cfg = bench_net_config(f"/ip4/{self.me['host']}/tcp/{self.me['port']}",
                                   self.me["bootstrap"], caps,
                                   plan.get("netconfig_overrides") or {})
        settings = NodeSettings(roles=("provider",), advert_interval_s=3600.0,
                                rate_per_s=float(plan["gate"]["rate_per_s"]),
                                burst=int(plan["gate"]["burst"]), caps=caps)
        hardware = wire.Hardware(cpu_count=os.cpu_count() or 1, cpu_model="bench")
        async with open_net(identity.seed, net_cfg) as net:
            node = BenchNode(settings, identity, genesis, net, SystemClock(), OsRandom(),
                             hardware, "bench")
            self.node = node
            node.expected_warm = {p["peer_id"] for p in plan["peers"]} - {identity.peer_id}
            self._calibrate(node)
            baseline = plan["baseline"]
            if baseline and self.index == baseline["receiver"]:
                net.set_stream_handler(BASELINE_PROTOCOL, self._baseline_handler)
            async with trio.open_nursery() as nursery:
                await nursery.start(node.run)
                self.events["ready"] = time.time()
                self._write(f"ready-{self.index}.json", {
                    "index": self.index, "pid": os.getpid(), "peer_id": net.peer_id,
                    "addrs": net.listen_addrs(), "t": time.time()})
                go = await self._warm_up(node, net)
                self.events["go_seen"] = time.time()
                nursery.start_soon(self._cpu_marks, go)
                if baseline and self.index == baseline["sender"]:  # first, on a quiet system
                    await self._baseline_send(net, go, plan["peers"][baseline["receiver"]])
                await self._publish_share(node, net, go)
                await _sleep_until(go["t_end"])
                self._write(f"result-{self.index}.json", self._result(node, net))
                arm_exit_deadline("benchpeer")  # py-libp2p can hang in its own shutdown
                nursery.cancel_scope.cancel()

    async def _cpu_marks(self, go: dict) -> None:
        """CPU seconds used by this process at each phase boundary (for the harness)."""
        span = self.messages / self.rate
        for name, t in (("baseline_start", go["tb0"]), ("baseline_end", go["tb0"] + span),
                        ("gossip_start", go["t0"]), ("gossip_end", go["t0"] + span)):
            await _sleep_until(t)
            ru = resource.getrusage(resource.RUSAGE_SELF)
            self.cpu_marks[name] = [time.time(), ru.ru_utime + ru.ru_stime]

    async def _warm_up(self, node: BenchNode, net) -> dict:
        """Publish warm-ups until the harness says go; report once we heard every peer."""
        deadline = time.time() + float(self.plan["mesh_timeout_s"]) + 120.0
        warming = True
        go_path = self.run_dir / "go.json"
        reported = False
        next_warm = time.time()
        k = 0
        while True:
            if not reported and (node.mesh_event.is_set() or self.n == 1):
                reported = True
                self.events["mesh"] = time.time()
                self._write(f"mesh-{self.index}.json", {
                    "index": self.index, "t": time.time(), "warmups_sent": self.warmups_sent,
                    "peers_connected": len(net.connected_peers())})
            try:
                return json.loads(go_path.read_text())
            except (FileNotFoundError, json.JSONDecodeError):
                pass
            now = time.time()
            if now > deadline:
                raise TimeoutError("no go.json from the harness in time")
            if not warming or (self.run_dir / "warmup-stop.json").exists():
                warming = False  # every peer heard every other; let the system go quiet
            elif now >= next_warm:
                next_warm = now + float(self.plan["warmup_interval_s"])
                if net.connected_peers():
                    name = f"{WARM_PREFIX}{self.index}:{k}"
                    k += 1
                    try:
                        await net.publish(TOPIC, node.seal(offer(name, "")))
                        self.warmups_sent += 1
                    except Exception as exc:  # no peers in the topic yet is not fatal
                        log.debug("warm-up publish failed: %s", exc)
            await trio.sleep(0.05)

    async def _publish_share(self, node: BenchNode, net, go: dict) -> None:
        t0 = float(go["t0"])
        for k in range(self.index, self.messages, self.n):
            t_target = t0 + k / self.rate
            await _sleep_until(t_target)
            t_pub_ns = time.time_ns()
            data = node.seal(offer(bench_name(k), bench_description(t_pub_ns, self.pad)))
            if len(data) != self.size:
                log.warning("message %d is %d bytes, not %d", k, len(data), self.size)
            await net.publish(TOPIC, data)
            self.sent[k] = [t_target, t_pub_ns / 1e9, time.time(), len(data)]

    async def _baseline_send(self, net, go: dict, receiver: dict) -> None:
        tb0 = float(go["tb0"])
        await _sleep_until(tb0 - 2.5)
        stream = None
        while stream is None:  # the connection may be between redials; retry a while
            try:
                with trio.fail_after(5):
                    stream = await net.open_stream(receiver["peer_id"], BASELINE_PROTOCOL)
            except Exception as exc:
                connected = receiver["peer_id"] in {p.peer_id for p in net.connected_peers()}
                self.baseline_errors.append(f"open_stream at {time.time() - tb0:+.1f} s "
                                            f"(connected={connected}): "
                                            f"{type(exc).__name__}: {exc}")
                if time.time() > tb0 + 5.0:
                    return
                await trio.sleep(0.5)
        try:
            pad = b"\0" * max(0, self.size - 16)
            for k in range(self.messages):
                await _sleep_until(tb0 + k / self.rate)
                t_pub = time.time()
                await stream.send(struct.pack(">qd", k, t_pub) + pad)
                self.baseline_sent[k] = t_pub
        except Exception as exc:
            self.baseline_errors.append(f"send: {type(exc).__name__}: {exc}")
        finally:
            await stream.close()

    async def _baseline_handler(self, stream) -> None:
        while True:
            frame = await stream.receive()
            t_recv = time.time()
            if frame is None:
                return
            k, t_pub = struct.unpack(">qd", frame[:16])
            self.baseline_recv[k] = [t_pub, t_recv, len(frame)]

    def _result(self, node: BenchNode, net) -> dict:
        ru = resource.getrusage(resource.RUSAGE_SELF)
        mesh: dict[str, int] = {}
        try:
            router = net._pubsub.router  # diagnostics only
            mesh = {t: len(p) for t, p in router.mesh.items()}
        except Exception:
            pass
        return {
            "index": self.index, "peer_id": net.peer_id, "pid": os.getpid(),
            "received": {str(k): v for k, v in node.received.items()},
            "sent": {str(k): v for k, v in self.sent.items()},
            "duplicates": node.duplicates, "other_offers": node.other_offers,
            "warmups_sent": self.warmups_sent, "warm_from": len(node.warm_from),
            "baseline_sent": {str(k): v for k, v in self.baseline_sent.items()},
            "baseline_recv": {str(k): v for k, v in self.baseline_recv.items()},
            "baseline_errors": self.baseline_errors,
            "gate": {"accepted": dict(node.gate.stats.accepted),
                     "dropped": dict(node.gate.stats.dropped)},
            "peers_connected": len(net.connected_peers()),
            "mesh_sizes": mesh,
            "cpu_s": {"user": ru.ru_utime, "system": ru.ru_stime},
            "cpu_marks": self.cpu_marks,
            "max_rss_mib": round(ru.ru_maxrss / 1024, 1),
            "events": self.events,
            "pad": self.pad,
            "trace": {k: ({str(i): t for i, t in v.items()} if isinstance(v, dict) else v)
                      for k, v in TRACE.items()},
        }


async def _main(plan: dict, index: int) -> None:
    peer = Peer(plan, index)
    async with trio.open_nursery() as nursery:
        async def _signals() -> None:
            with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async for _ in signals:
                    arm_exit_deadline("benchpeer")
                    nursery.cancel_scope.cancel()
                    return

        nursery.start_soon(_signals)
        await peer.run()
        nursery.cancel_scope.cancel()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--plan", required=True, type=Path)
    ap.add_argument("--index", required=True, type=int)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    plan = json.loads(args.plan.read_text())
    try:
        trio.run(_main, plan, args.index)
    except BaseException as exc:  # noqa: BLE001 - report any failure, then exit non-zero
        if isinstance(exc, KeyboardInterrupt):
            return 130
        sys.stderr.write(f"benchpeer {args.index} failed: {type(exc).__name__}: {exc}\n")
        import traceback
        traceback.print_exception(exc, file=sys.stderr)
        arm_exit_deadline("benchpeer")
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
