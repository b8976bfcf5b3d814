"""``meca-node start``: compose the adapters around a :class:`~meca_node.node.Node` and run it."""

from __future__ import annotations

import logging
import signal

import trio

from meca_node import wire
from meca_node.cli.config import Config
from meca_node.cli.ipfs_api import ipfs_routes
from meca_node.cli.jobs_api import job_routes, provider_up, start_provider
from meca_node.cli.metrics_api import metrics_routes
from meca_node.cli.offers_api import offer_routes
from meca_node.cli.sim_api import sim_routes
from meca_node.cli.status_page import status_page_routes
from meca_node.cli.wallet_api import wallet_routes
from meca_node.control import serve_control
from meca_node.core import Identity
from meca_node.net import NetConfig, open_net
from meca_node.net.ipfs_node import IpfsNode
from meca_node.node import Node, NodeSettings, OsRandom, SystemClock, arm_exit_deadline
from meca_node.node.clock import ShiftedClock
from meca_node.runtime import detect_hardware, machine_arch
from meca_node.store import BlockStore
from meca_node.store.ledger_db import LedgerDB
from meca_node.store.own_offers import load_own_offers

log = logging.getLogger("meca_node.cli")



def net_config(cfg: Config) -> NetConfig:
    caps = cfg.caps
    return NetConfig(listen=tuple(cfg["listen"]), announce=tuple(cfg["announce"]),
                     bootstrap=tuple(cfg["bootstrap"]), mdns=cfg["mdns"],
                     max_rpc=max(4 * caps.gossip_message, 256 * 1024),
                     max_frame=caps.stream_frame, queue=caps.queue,
                     sim_faults=cfg["sim_faults"], relay_service=cfg["relay_service"],
                     relays=tuple(cfg["relays"]))


def node_settings(cfg: Config) -> NodeSettings:
    return NodeSettings(roles=tuple(cfg["roles"]), advert_interval_s=cfg["advert_interval_s"],
                        price=cfg["price"], skew_ms=cfg["skew_s"] * 1000,
                        rate_per_s=cfg["gossip_rate_per_s"], burst=cfg["gossip_burst"],
                        entry_rate_per_s=cfg["gossip_entry_rate_per_s"],
                        entry_burst=cfg["gossip_entry_burst"],
                        follow_peer_clock=cfg["clock_follow_peers"],
                        caps=cfg.caps)


class _Running:
    """What a stop request must know about the running node: its job host, once any."""

    host = None


async def run_node(cfg: Config, identity: Identity, genesis: wire.Genesis) -> None:
    """Run until SIGINT/SIGTERM (caught from the very start, so an early signal stops it too).

    A provider drains first: it takes no more jobs and lets the running ones finish for
    up to ``drain_grace_s``; a second signal stops it at once."""
    running = _Running()
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as outer:
            outer.start_soon(_stop_on_signal, signals, outer.cancel_scope, running,
                             cfg["drain_grace_s"])
            await _serve(cfg, identity, genesis, running)


async def _stop_on_signal(signals, scope: trio.CancelScope, running: _Running,
                          grace_s: float) -> None:
    received = signals.__aiter__()
    signum = await received.__anext__()
    host = running.host
    if host is not None and grace_s > 0 and host.active:
        log.warning("received %s: draining, taking no more jobs; %d running may finish "
                    "within %g s (signal again to stop now)", signal.Signals(signum).name,
                    host.active, grace_s)
        async with trio.open_nursery() as nursery:
            async def again() -> None:
                second = await received.__anext__()
                log.warning("received %s again: stopping now", signal.Signals(second).name)
                nursery.cancel_scope.cancel()

            nursery.start_soon(again)
            left = await host.drain(grace_s)
            if left:
                log.warning("grace period over: stopping %d unfinished job(s)", left)
            else:
                log.info("drained: every running job finished")
            nursery.cancel_scope.cancel()
    else:
        log.info("received %s, stopping", signal.Signals(signum).name)
    arm_exit_deadline("meca-node")
    scope.cancel()


async def _dump_on_usr1() -> None:
    """``kill -USR1 <pid>``: log what every task waits on (a node that seems stuck)."""
    import signal

    from meca_node.node.tasks_dump import dump_tasks

    with trio.open_signal_receiver(signal.SIGUSR1) as signals:
        async for _ in signals:
            log.warning("tasks (SIGUSR1):\n%s", dump_tasks())


async def _serve(cfg: Config, identity: Identity, genesis: wire.Genesis,
                 running: _Running) -> None:
    with LedgerDB(cfg.data_dir) as ledger_db:
        await _serve_with(cfg, identity, genesis, ledger_db, running)


async def _serve_with(cfg: Config, identity: Identity, genesis: wire.Genesis,
                      ledger_db: LedgerDB, running: _Running) -> None:
    async with open_net(identity.seed, net_config(cfg)) as net:
        clock = SystemClock()
        if cfg["sim_clock_offset_ms"]:
            clock = ShiftedClock(clock, cfg["sim_clock_offset_ms"])
        node = Node(node_settings(cfg), identity, genesis, net, clock, OsRandom(),
                    detect_hardware(cfg.data_dir), machine_arch(), ledger_store=ledger_db)
        store = BlockStore(cfg.data_dir / "blocks", cfg["ipfs_quota_mb"] * 1024 * 1024,
                           evict=cfg["ipfs_evict"])
        ipfs = IpfsNode(net, store, pull_timeout_s=cfg["ipfs_pull_timeout_s"])
        routes = {"GET /v1/status": lambda _: node.status(),
                  "GET /v1/peers": lambda _: {**node.peers(), "dialing": net.dial_state()},
                  "GET /v1/offers": lambda _: node.offers_view(),
                  **ipfs_routes(ipfs), **offer_routes(node, ipfs, cfg.data_dir),
                  **job_routes(node, ipfs, cfg.data_dir, cfg.weights, cfg["sim_trace"]),
                  **wallet_routes(node), **sim_routes(net)}
        routes |= metrics_routes(node, net, ipfs, routes) | status_page_routes(node, ipfs, routes)
        async with trio.open_nursery() as nursery:
            await nursery.start(node.run)
            await nursery.start(ipfs.run)
            node.restore_offers(load_own_offers(cfg.data_dir))  # published before a restart
            nursery.start_soon(_dump_on_usr1)
            port = await nursery.start(serve_control, cfg.data_dir, routes, cfg["control_port"])
            print(f"meca-node {identity.peer_id} on network {genesis.name!r} "
                  f"({genesis.network_id.hex()[:16]})", flush=True)
            for addr in net.listen_addrs():
                print(f"  listening on {addr}", flush=True)
            print(f"  control API http://127.0.0.1:{port} (token in "
                  f"{cfg.data_dir / 'control.token'})", flush=True)
            print("  ready; Ctrl-C to stop", flush=True)
            # a provider's engine and sandbox come up beside the running node: "ready"
            # does not wait for Docker (the share was checked before start)
            if "provider" in cfg["roles"]:
                host = start_provider(node, ipfs, cfg.data_dir, cfg.values)
                running.host = host
                if host is not None:  # environments, benchmark, sandbox; then jobs
                    nursery.start_soon(provider_up, host)


