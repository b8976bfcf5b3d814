"""Baselines for benchmarks: the same task started with plain `docker run` (the Docker CLI)."""

from __future__ import annotations

import subprocess
import time

import httpx

from meca_node.runtime.sandbox import APP_PORT


def limit_args(cpu: float, mem_mib: int) -> list[str]:
    """`docker run` options for a task's declared CPU and memory (no extra swap)."""
    return ["--cpus", f"{cpu:g}", "--memory", f"{mem_mib}m", "--memory-swap", f"{mem_mib}m"]


def docker_run_first_answer(client, network: str, tag: str, body: bytes,
                            timeout_s: float = 60.0, extra_args: list[str] = ()
                            ) -> tuple[str, str, float, bytes]:
    """`docker run -d [extra_args]` of ``tag`` on ``network``, then POST ``body`` to the container's
    address until it answers (bounded by ``timeout_s``). Returns (container id, URL,
    seconds from the run to the first answer, that answer); the caller removes the
    container (``docker rm -f``) when done."""
    t0 = time.monotonic()
    cid = subprocess.run(["docker", "run", "-d", "--network", network, *extra_args, tag],
                         check=True,
                         capture_output=True, text=True, timeout=120).stdout.strip()
    try:
        ip = client.containers.get(cid).attrs["NetworkSettings"]["Networks"][network][
            "IPAddress"]
        url = f"http://{ip}:{APP_PORT}/"
        with httpx.Client(timeout=30) as http:
            while True:
                try:
                    r = http.post(url, content=body,
                                  headers={"content-type": "application/json"})
                    return cid, url, time.monotonic() - t0, r.content
                except httpx.TransportError:
                    if time.monotonic() - t0 > timeout_s:
                        raise TimeoutError(f"the docker run container never answered within "
                                           f"{timeout_s:g} s") from None
                    time.sleep(0.02)  # bounded poll until the port answers
    except BaseException:
        remove(cid)
        raise


def remove(container_id: str) -> None:
    subprocess.run(["docker", "rm", "-f", container_id], capture_output=True, timeout=60)
