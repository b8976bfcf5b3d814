"""The one sandbox every task runs in (DESIGN.md "Tasks in containers"), as Docker options.

Pure: it turns a task's resources and the node's limits into the keyword arguments of
``docker.containers.create``. Tested without an engine.
"""

from __future__ import annotations

from dataclasses import dataclass

from meca_node.core.task import TaskResources

LABEL = "meca-node"
NETWORK = "meca-sandbox"
APP_PORT = 8080


@dataclass(frozen=True)
class SandboxLimits:
    pids: int = 256
    tmpfs_mib: int = 64
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
                      user: str | None = None) -> dict:
    """Keyword arguments for ``client.containers.create`` for one task run; ``user``
    (from :func:`task_user`) overrides the image's user."""
    mem = f"{resources.mem_mib}m"
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
        "tmpfs": {"/tmp": f"rw,nosuid,nodev,size={limits.tmpfs_mib}m"},
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
