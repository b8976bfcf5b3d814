"""The sandbox options every task container gets, and the reply comparison (no engine)."""

from __future__ import annotations

from meca_node.core.compare import explain_mismatch
from meca_node.core.task import TaskResources
from meca_node.runtime.sandbox import (
    LABEL, NETWORK, SandboxLimits, container_options, gpu_device_requests, image_volumes,
    task_user,
)


def test_limits_and_hardening():
    o = container_options("img", TaskResources(0.25, 96, False, 0), SandboxLimits())
    assert o["nano_cpus"] == 250_000_000
    assert o["mem_limit"] == o["memswap_limit"] == "96m"  # no swap beyond the limit
    assert o["pids_limit"] == 256
    assert o["cap_drop"] == ["ALL"]
    assert o["security_opt"] == ["no-new-privileges:true"]
    assert o["read_only"] is True and o["tmpfs"] == {"/tmp": "rw,nosuid,nodev,size=64m"}
    assert o["shm_size"] == "64m"  # ours, not the engine's default-shm-size
    assert o["log_config"]["Config"] == {"max-size": "1048576", "max-file": "1"}
    assert o["network"] == NETWORK and o["labels"][LABEL] == "1"
    assert "ports" not in o and "volumes" not in o and "privileged" not in o
    assert "device_requests" not in o


def test_gpu_device_request():
    r = TaskResources(1, 128, True, 2)
    assert gpu_device_requests(r) == [{"driver": "nvidia", "count": 2,
                                       "capabilities": [["gpu"]]}]
    assert container_options("img", r, SandboxLimits())["device_requests"] == \
        gpu_device_requests(r)


def test_mismatch_text_diff_and_hex():
    text = explain_mismatch(b"hello\nworld\n", b"hello\nthere\n")
    assert "first difference at byte 6" in text and "-world" in text and "+there" in text
    binary = explain_mismatch(b"\x00\x01", b"\x00\x02\x03")
    assert "(hex)" in binary and "00 01" in binary and "00 02 03" in binary


def test_task_user_is_non_root_unless_the_image_names_a_user():
    limits = SandboxLimits()
    assert task_user("", limits) == "10001:10001"  # no USER: Docker would run it as root
    assert task_user("app", limits) is None        # the image's own user is kept
    assert task_user("root", limits) is None       # an explicit USER root is the developer's call
    assert task_user("", SandboxLimits(user="")) is None
    o = container_options("img", TaskResources(1, 128, False, 0), limits, user="10001:10001")
    assert o["user"] == "10001:10001"
    assert "user" not in container_options("img", TaskResources(1, 128, False, 0), limits)


def test_image_volumes_become_bounded_tmpfs_not_host_disk():
    """An image's VOLUME would be an anonymous volume on the host's disk (writable despite
    the read-only root, unbounded, and left behind by a plain remove): each gets a tmpfs
    of the sandbox's size instead, so no volume is made at all."""
    config = {"User": "", "Volumes": {"/var/data": {}, "/cache": {}}, "Cmd": ["x"]}
    assert image_volumes(config) == ["/cache", "/var/data"]
    assert image_volumes({"Volumes": None}) == [] and image_volumes({}) == []
    limits = SandboxLimits(tmpfs_mib=16, shm_mib=8)
    o = container_options("img", TaskResources(1, 128, False, 0), limits,
                          volumes=image_volumes(config))
    assert o["tmpfs"] == {p: "rw,nosuid,nodev,size=16m" for p in ("/cache", "/var/data", "/tmp")}
    assert o["shm_size"] == "8m"
    assert "volumes" not in o and "mounts" not in o
    # a VOLUME /tmp keeps the one /tmp tmpfs
    o = container_options("img", TaskResources(1, 128, False, 0), limits, volumes=["/tmp"])
    assert o["tmpfs"] == {"/tmp": "rw,nosuid,nodev,size=16m"}
