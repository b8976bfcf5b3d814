"""The one sandbox every task runs in (DESIGN.md "Tasks in containers"), as Docker options.

Pure: it turns a task's resources and the node's limits into the keyword arguments of
``docker.containers.create``. Tested without an engine.

Where a task can write, and what bounds it: the root file system is read-only (so the
container's writable layer on the host's disk stays empty); ``/tmp``, ``/dev/shm`` and every
``VOLUME`` the image declares are size-limited tmpfs (memory, charged to the task's memory
limit, gone with the container: an image's VOLUME would otherwise be an anonymous volume
on the host's disk, unbounded, and left behind when the container is removed); the app's
output is a json-file log of at most ``log_bytes``; processes are capped by ``pids``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from meca_node.core.task import TaskResources

LABEL = "meca-node"
NETWORK = "meca-sandbox"
APP_PORT = 8080


@dataclass(frozen=True)
class SandboxLimits:
    pids: int = 256
    #: size of each writable tmpfs: /tmp and every VOLUME the image declares
    tmpfs_mib: int = 64
    #: size of /dev/shm, set here so the engine's default-shm-size does not decide it
    shm_mib: int = 64
    log_bytes: int = 1024 * 1024
    #: who a task runs as when its image names no user (or names none explicitly); an
    #: image's own non-root USER is kept, and an explicit ``USER root`` is honoured
    user: str = "10001:10001"


def task_user(image_user: str, limits: SandboxLimits) -> str | None:
    """The user to run a task as, from its image's ``Config.User``.

    No user in the image (Docker's default: root) -> ``limits.user``, a non-root uid: a
    task's files are world-readable (the build context makes them so) and its root is
    read-only, so an app needs no more. The image's own non-root user is kept. An explicit
    ``USER root`` is the developer saying the app needs root: kept (None means "the image's
    user"), and still without capabilities or new privileges.
    """
    image_user = (image_user or "").strip()
    if not image_user:
        return limits.user or None
    return None


def image_volumes(image_config: dict) -> list[str]:
    """The paths an image declares with ``VOLUME`` (its ``Config.Volumes``), sorted.

    Given to :func:`container_options`, each gets a size-limited tmpfs instead of the
    anonymous volume the engine would make on the host's disk."""
    return sorted((image_config or {}).get("Volumes") or {})


class GpuUnavailable(Exception):
    """The task needs a GPU this host cannot give it."""


def gpu_device_requests(resources: TaskResources) -> list[dict]:
    """The Docker device request for the task's GPUs (empty when it needs none)."""
    if not resources.use_gpu:
        return []
    return [{"driver": "nvidia", "count": resources.gpu_count, "capabilities": [["gpu"]]}]


def container_options(image: str, resources: TaskResources, limits: SandboxLimits,
                      network: str = NETWORK, name: str | None = None,
                      labels: dict[str, str] | None = None,
                      user: str | None = None, volumes: Iterable[str] = ()) -> dict:
    """Keyword arguments for ``client.containers.create`` for one task run; ``user``
    (from :func:`task_user`) overrides the image's user; ``volumes`` (from
    :func:`image_volumes`) are the image's VOLUME paths, each mounted as a tmpfs of
    ``limits.tmpfs_mib``."""
    mem = f"{resources.mem_mib}m"
    tmpfs_options = f"rw,nosuid,nodev,size={limits.tmpfs_mib}m"
    options = {
        "image": image,
        "detach": True,
        "network": network,
        "nano_cpus": resources.nano_cpus,
        "mem_limit": mem,
        "memswap_limit": mem,  # no swap beyond the memory limit
        "pids_limit": limits.pids,
        "cap_drop": ["ALL"],
        "security_opt": ["no-new-privileges:true"],
        "read_only": True,
        "tmpfs": {**{path: tmpfs_options for path in volumes}, "/tmp": tmpfs_options},
        "shm_size": f"{limits.shm_mib}m",
        "log_config": {"Type": "json-file",
                       "Config": {"max-size": str(limits.log_bytes), "max-file": "1"}},
        "labels": {LABEL: "1", **(labels or {})},
        "environment": {"PYTHONUNBUFFERED": "1", "HOME": "/tmp"},
    }
    if name:
        options["name"] = name
    if user:
        options["user"] = user
    requests = gpu_device_requests(resources)
    if requests:
        options["device_requests"] = requests
    return options
