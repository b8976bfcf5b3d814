"""Two network namespaces joined by a veth pair, for tests that need multicast (mDNS).

``lo`` has no multicast here, so mDNS tests run each node in its own namespace, the two
joined by a veth pair with an address from a private subnet that exists only inside
those namespaces. The veth is created directly inside the namespaces, so nothing
appears in (or is routed from) the host's namespace. Needs root and iproute2 (``ip``).

Used by ``test_mdns_netns.py``, which loads it by path (tests/ has no packages)::

    pair = create_pair()            # meca-t-<pid>-<n>-a / -b, veth0 on both sides
    try:
        subprocess.Popen(pair.a.exec_argv([sys.executable, ...]))
    finally:
        delete_pair(pair)           # deleting a namespace deletes its veth end
"""

from __future__ import annotations

import itertools
import os
import random
import shutil
import subprocess
import time
from dataclasses import dataclass

#: iproute2 answers in milliseconds; a hung ``ip`` is a broken host, not a slow one
IP_TIMEOUT_S = 10.0
_counter = itertools.count()


class NetnsError(Exception):
    """An ``ip`` command failed; the message has the command and its stderr."""


def unavailable_reason() -> str | None:
    """Why namespaces cannot be made here (not root, no ``ip``), or None if they can."""
    reasons = []
    if os.geteuid() != 0:
        reasons.append(f"needs root to create network namespaces (euid {os.geteuid()})")
    if shutil.which("ip") is None:
        reasons.append("iproute2 `ip` command not found on PATH")
    return "; ".join(reasons) or None


def ip(*args: str, ns: str | None = None, check: bool = True) -> str:
    """Run ``ip [-n NS] ARGS``; its stdout, or :class:`NetnsError`."""
    argv = ["ip", *(["-n", ns] if ns else []), *args]
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=IP_TIMEOUT_S,
                           stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise NetnsError(f"`{' '.join(argv)}` did not answer in {IP_TIMEOUT_S} s") from None
    if check and r.returncode != 0:
        raise NetnsError(f"`{' '.join(argv)}` failed ({r.returncode}): {r.stderr.strip()}")
    return r.stdout


class InNamespace:
    """Something that lives in network namespace ``self.ns``."""

    ns: str

    def exec_argv(self, argv: list[str]) -> list[str]:
        """``argv`` run inside this namespace (``ip netns exec`` execs it: same pid)."""
        return ["ip", "netns", "exec", self.ns, *argv]


@dataclass(frozen=True)
class End(InNamespace):
    """One side: a namespace, its veth device and its address on the pair's subnet."""

    ns: str
    dev: str
    addr: str
    prefix_len: int

    def link_flags(self) -> set[str]:
        """The flags ``ip link`` shows for the veth, e.g. {'BROADCAST','MULTICAST','UP'}."""
        out = ip("-o", "link", "show", "dev", self.dev, ns=self.ns)
        start, end = out.index("<"), out.index(">")
        return set(out[start + 1:end].split(","))

    def multicast_groups(self) -> set[str]:
        """IPv4 multicast groups joined on the veth (``ip maddr``), e.g. {'224.0.0.251'}."""
        out = ip("maddr", "show", "dev", self.dev, ns=self.ns)
        return {line.split()[1] for line in out.splitlines()
                if line.strip().startswith("inet ")}


@dataclass(frozen=True)
class Pair:
    a: End
    b: End

    @property
    def namespaces(self) -> tuple[str, str]:
        return self.a.ns, self.b.ns


def existing_namespaces() -> set[str]:
    return {line.split()[0] for line in ip("netns", "list").splitlines() if line.strip()}


def create_pair(prefix: str = "meca-t", dev: str = "veth0", up_timeout_s: float = 5.0) -> Pair:
    """Two fresh namespaces ``<prefix>-<pid>-<n>-a/-b`` joined by a veth pair.

    Each has ``lo`` up, the veth up with MULTICAST on, an address 10.77.<random>.1/24 or
    .2/24, and a route 224.0.0.0/4 on the veth so multicast leaves through it. On any
    failure what was made is removed again and :class:`NetnsError` raised.
    """
    tag = f"{prefix}-{os.getpid()}-{next(_counter)}"
    net = f"10.77.{random.randint(1, 254)}"
    pair = Pair(End(f"{tag}-a", dev, f"{net}.1", 24), End(f"{tag}-b", dev, f"{net}.2", 24))
    taken = existing_namespaces() & set(pair.namespaces)
    if taken:
        raise NetnsError(f"namespaces {sorted(taken)} exist already (left by a killed run? "
                         f"remove with `ip netns del NAME`)")
    made: list[str] = []
    try:
        for end in (pair.a, pair.b):
            ip("netns", "add", end.ns)
            made.append(end.ns)
        ip("link", "add", pair.a.dev, "netns", pair.a.ns, "type", "veth",
           "peer", "name", pair.b.dev, "netns", pair.b.ns)
        for end in (pair.a, pair.b):
            ip("link", "set", "lo", "up", ns=end.ns)
            ip("addr", "add", f"{end.addr}/{end.prefix_len}", "dev", end.dev, ns=end.ns)
            ip("link", "set", end.dev, "multicast", "on", "up", ns=end.ns)
            ip("route", "add", "224.0.0.0/4", "dev", end.dev, ns=end.ns)
        _wait_up(pair, up_timeout_s)
    except BaseException:
        _delete(made)
        raise
    return pair


def _wait_up(pair: Pair, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        flags = {end.ns: end.link_flags() for end in (pair.a, pair.b)}
        if all({"UP", "LOWER_UP", "MULTICAST"} <= f for f in flags.values()):
            return
        if time.monotonic() > deadline:
            raise NetnsError(f"veth not up with MULTICAST after {timeout_s} s: {flags}")
        time.sleep(0.05)  # bounded poll of the kernel's link state


def _delete(namespaces: list[str]) -> list[str]:
    errors = []
    for ns in namespaces:
        try:
            ip("netns", "del", ns)
        except NetnsError as exc:
            errors.append(str(exc))
    return errors


def delete_pair(pair: Pair) -> None:
    """Delete both namespaces (and with them the veth); NetnsError if one is left."""
    errors = _delete([ns for ns in pair.namespaces if ns in existing_namespaces()])
    left = existing_namespaces() & set(pair.namespaces)
    if errors or left:
        raise NetnsError(f"could not delete namespaces {sorted(left)}: {errors}")


@dataclass(frozen=True)
class Outside(InNamespace):
    """A namespace standing for "the rest of the world", routed from the host.

    ``host_dev`` (in the host's namespace, address ``host_addr``) is a veth whose peer sits
    in namespace ``ns`` with address ``addr``; the namespace's default route points back at
    the host. With IPv4 forwarding on, anything the host forwards (a container's egress)
    can reach ``addr``, so a listener there is a real outside that a sandbox must not reach.
    """

    ns: str
    host_dev: str
    host_addr: str
    addr: str
    forwarding_was: str


_FORWARD = "/proc/sys/net/ipv4/ip_forward"


def _routed(subnet_prefix: str) -> bool:
    return subnet_prefix in ip("-4", "route", "show", "table", "all")


def create_outside(prefix: str = "meca-o") -> Outside:
    """A fresh namespace ``<prefix>-<pid>-<n>`` on a /30 from 10.78.0.0/16 that no route on
    this host uses yet, joined to the host by a veth. Turns IPv4 forwarding on if it was off
    (:func:`delete_outside` puts it back). On failure what was made is removed."""
    n = next(_counter)
    tag = f"{prefix}-{os.getpid()}-{n}"
    host_dev = f"mo{os.getpid() % 100000}x{n}"[:15]
    for _ in range(20):  # bounded: pick a /30 nothing on this host routes
        third, fourth = random.randint(1, 254), random.randrange(0, 252, 4)
        if not _routed(f"10.78.{third}."):
            break
    else:
        raise NetnsError("no free 10.78.x.y/30 found for the outside namespace")
    host_addr, addr = f"10.78.{third}.{fourth + 1}", f"10.78.{third}.{fourth + 2}"
    if tag in existing_namespaces():
        raise NetnsError(f"namespace {tag} exists already (remove with `ip netns del {tag}`)")
    with open(_FORWARD) as f:
        forwarding_was = f.read().strip()
    outside = Outside(tag, host_dev, host_addr, addr, forwarding_was)
    made_ns = made_link = False
    try:
        ip("netns", "add", tag)
        made_ns = True
        ip("link", "add", host_dev, "type", "veth", "peer", "name", "veth0", "netns", tag)
        made_link = True
        ip("addr", "add", f"{host_addr}/30", "dev", host_dev)
        ip("link", "set", host_dev, "up")
        ip("link", "set", "lo", "up", ns=tag)
        ip("addr", "add", f"{addr}/30", "dev", "veth0", ns=tag)
        ip("link", "set", "veth0", "up", ns=tag)
        ip("route", "add", "default", "via", host_addr, ns=tag)
        if forwarding_was != "1":
            with open(_FORWARD, "w") as f:
                f.write("1\n")
    except BaseException:
        if made_link:
            ip("link", "del", host_dev, check=False)
        if made_ns:
            _delete([tag])
        raise
    return outside


def delete_outside(outside: Outside) -> None:
    """Remove the namespace and veth and restore IPv4 forwarding as it was."""
    with open(_FORWARD, "w") as f:
        f.write(outside.forwarding_was + "\n")
    ip("link", "del", outside.host_dev, check=False)  # usually gone with the namespace
    errors = _delete([outside.ns] if outside.ns in existing_namespaces() else [])
    if errors or outside.ns in existing_namespaces():
        raise NetnsError(f"could not delete namespace {outside.ns}: {errors}")


def stop_processes(procs: list[tuple[str, subprocess.Popen]], timeout_s: float
                   ) -> dict[str, int | None]:
    """SIGTERM each process we started; each one's exit code, or None for one still
    running ``timeout_s`` after the signals (then killed)."""
    for _, proc in procs:
        if proc.poll() is None:
            proc.terminate()
    deadline = time.monotonic() + timeout_s
    codes: dict[str, int | None] = {}
    for name, proc in procs:
        try:
            codes[name] = proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            codes[name] = None
    return codes
