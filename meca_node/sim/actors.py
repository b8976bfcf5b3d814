"""Bad actors for simulations and tests, each its own process.

``python -m meca_node.sim.actors liar start ARGS...`` is ``meca-node start ARGS...`` except
that every job's output is replaced by other bytes *before* the provider signs its
ResultCommit: an honest-looking commitment to a wrong result, which no fraud proof can catch;
only a replicated run outvotes it (tests/integration/wrong_provider.py is this provider).

``python -m meca_node.sim.actors sybil --data-dir D --genesis G --listen ADDR --bootstrap
ADDR...`` joins the mesh with the key in ``D`` and serves a small control API in ``D`` (as a
node does): ``GET /v1/status`` (what it sent), ``POST /v1/sim/flood`` (``{"rate_per_s": r,
"duration_s": d}``: gossip validly signed junk host adverts, one per 1/r s, for d s) and the
fault switch (``/v1/sim/faults``). Its adverts ask a price no client pays and offer nothing,
so no job is ever placed on it; honest nodes' per-signer rate limit is what stops them.
It runs until SIGINT/SIGTERM.
"""

from __future__ import annotations

import argparse
import os
import runpy
import signal
import sys
import time
from pathlib import Path

import trio

from meca_node import wire
from meca_node.control.server import HttpError, Request, serve_control
from meca_node.net import NetConfig, open_net
from meca_node.net.faults import FaultsDisabled, FaultSpecError
from meca_node.node import arm_exit_deadline
from meca_node.runtime import detect_hardware, machine_arch
from meca_node.store import load_or_create_key

#: a price above any client's max_price: a junk advert is never matched
JUNK_PRICE = 1 << 60
MAX_FLOOD_RATE = 1000.0
MAX_FLOOD_S = 600.0


# -- the liar ----------------------------------------------------------------------------------
WRONG_OUTPUT = b'{"wrong": true}'


def install_wrong_answers() -> None:
    """Patch this process's provider to answer every job with :data:`WRONG_OUTPUT` (and to
    commit to it, so its commitment looks honest)."""
    from meca_node.node import jobs

    honest = jobs.JobHost._start_and_post
    if getattr(honest, "wrong_answers", False):
        return

    async def wrong(self, *args, **kwargs) -> tuple[bytes, bytes]:
        _output, app_log = await honest(self, *args, **kwargs)
        return WRONG_OUTPUT, app_log

    wrong.wrong_answers = True  # type: ignore[attr-defined]
    jobs.JobHost._start_and_post = wrong  # type: ignore[method-assign]


def run_meca_node(argv: list[str]) -> None:
    """Run the ``meca-node`` program in this process with ``argv`` (after patches)."""
    sys.argv = ["meca-node", *argv]
    runpy.run_module("meca_node", run_name="__main__", alter_sys=True)


# -- the sybil -----------------------------------------------------------------------------
def junk_advert(addrs: list[str]) -> wire.HostAdvert:
    return wire.HostAdvert(
        roles=("provider",), arch=machine_arch(), hardware=detect_hardware(),
        free=wire.Resources(0, 0, 0), price=JUNK_PRICE, environments=(), cached_images=(),
        queue=0, addrs=tuple(addrs[:4]))


class Sybil:
    """A flooding peer: the control API's state and the flood itself."""

    def __init__(self, net, key, network_id: bytes) -> None:
        self.net = net
        self.key = key
        self.network_id = network_id
        self.sent = 0
        self.errors = 0
        self.floods = 0
        self.flooding = False
        self._nursery: trio.Nursery | None = None
        self._advert = junk_advert(net.listen_addrs())

    def status(self, _request: Request | None = None) -> dict:
        return {"peer_id": self.net.peer_id, "public_key": bytes(self.key.verify_key).hex(),
                "behaviour": "sybil", "roles": ["provider"],
                "peers_connected": len(self.net.connected_peers()),
                "flood": {"sent": self.sent, "errors": self.errors, "floods": self.floods,
                          "running": self.flooding}}

    def start_flood(self, request: Request) -> dict:
        body = request.json()
        try:
            rate = float(body["rate_per_s"])
            duration = float(body["duration_s"])
        except (KeyError, TypeError, ValueError):
            raise HttpError(400, "give rate_per_s and duration_s (numbers)") from None
        if not 0 < rate <= MAX_FLOOD_RATE or not 0 < duration <= MAX_FLOOD_S:
            raise HttpError(400, f"rate_per_s must be in (0, {MAX_FLOOD_RATE:g}] and "
                                 f"duration_s in (0, {MAX_FLOOD_S:g}]")
        if self.flooding:
            raise HttpError(409, "a flood is running already")
        assert self._nursery is not None
        self.flooding = True
        self.floods += 1
        self._nursery.start_soon(self._flood, rate, duration)
        return self.status()

    async def _flood(self, rate: float, duration: float) -> None:
        try:
            start = trio.current_time()
            n = 0
            while trio.current_time() - start < duration:
                raw = wire.seal(self._advert, key=self.key, net=self.network_id,
                                ts=time.time_ns() // 1_000_000, nonce=os.urandom(16))
                try:
                    await self.net.publish(wire.TOPIC_ADVERTS, raw)
                    self.sent += 1
                except Exception:  # no peer to send to right now
                    self.errors += 1
                n += 1
                await trio.sleep_until(start + n / rate)
        finally:
            self.flooding = False

    async def set_faults(self, request: Request) -> dict:
        try:
            return await self.net.set_faults(request.json())
        except (FaultsDisabled, FaultSpecError) as exc:
            raise HttpError(400, str(exc)) from None

    def routes(self) -> dict:
        return {"GET /v1/status": self.status, "POST /v1/sim/flood": self.start_flood,
                "GET /v1/sim/faults": lambda _: self.net.faults_view(),
                "POST /v1/sim/faults": self.set_faults}

    async def run(self, data_dir: Path) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            await nursery.start(serve_control, data_dir, self.routes(), 0)
            print(f"sybil {self.net.peer_id} ready", flush=True)
            await trio.sleep_forever()


async def run_sybil(args: argparse.Namespace) -> None:
    data_dir = Path(args.data_dir)
    identity, _ = load_or_create_key(data_dir)
    genesis = wire.genesis_from_json(Path(args.genesis).read_bytes())
    config = NetConfig(listen=(args.listen,), bootstrap=tuple(args.bootstrap or ()),
                       sim_faults=True)
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as outer:
            async def stop_on_signal() -> None:
                async for _ in signals:
                    arm_exit_deadline("sybil")
                    outer.cancel_scope.cancel()
                    return

            outer.start_soon(stop_on_signal)
            async with open_net(identity.seed, config) as net:
                await Sybil(net, identity.signing_key, genesis.network_id).run(data_dir)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["liar"]:
        install_wrong_answers()
        run_meca_node(argv[1:])
        return 0
    if argv[:1] == ["sybil"]:
        p = argparse.ArgumentParser(prog="python -m meca_node.sim.actors sybil",
                                    description="a peer that floods junk adverts on demand")
        p.add_argument("--data-dir", required=True)
        p.add_argument("--genesis", required=True)
        p.add_argument("--listen", default="/ip4/127.0.0.1/tcp/0")
        p.add_argument("--bootstrap", action="append")
        # `meca-node start` flags a cluster passes to every node; a sybil ignores them
        p.add_argument("--advert-interval")
        p.add_argument("--role", action="append")
        p.add_argument("--json-logs", action="store_true")
        trio.run(run_sybil, p.parse_args(argv[1:]))
        return 0
    print("usage: python -m meca_node.sim.actors liar start ARGS... | sybil --data-dir D "
          "--genesis G [--listen ADDR] [--bootstrap ADDR]...", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
