"""The node's status page: ``GET /`` (one self-contained HTML page, status_page.html) and
``GET /v1/overview`` (the JSON it polls every two seconds).

The page is served by the control server on 127.0.0.1; a browser gets in through the
one-time link of ``meca-node status --open`` (see :mod:`meca_node.control.sessions`).
It loads nothing from elsewhere: its script and style are inline, allowed by a per-response
nonce in its Content-Security-Policy, and it may only fetch from the node itself. What the
network says (offer names, descriptions, peer ids) is shown as text, never as markup.

The overview is put together from the node's other routes (status, peers, offers, hosts,
the job history, the wallet), so the page shows what the CLI shows.
"""

from __future__ import annotations

import secrets
from importlib import resources

from meca_node.control.server import HttpError, Page, Request, Routes
from meca_node.node.ledger import describe

#: newest wallet entries shown
RECEIPTS = 20
#: jobs shown per list
JOBS = 50


def _html() -> str:
    return resources.files("meca_node.cli").joinpath("status_page.html").read_text("utf-8")


def page(_: Request) -> Page:
    """The page, with a fresh CSP nonce for its inline script and style."""
    nonce = secrets.token_urlsafe(16)
    body = _html().replace("{{nonce}}", nonce).encode()
    csp = (f"default-src 'none'; script-src 'nonce-{nonce}'; style-src 'nonce-{nonce}'; "
           "connect-src 'self'; img-src 'none'; base-uri 'none'; form-action 'none'; "
           "frame-ancestors 'none'")
    return Page(body, "text/html; charset=utf-8", 200,
                (("content-security-policy", csp), ("cache-control", "no-store"),
                 ("referrer-policy", "no-referrer"), ("x-frame-options", "DENY")))


async def _call(routes: Routes, key: str, query: dict[str, str] | None = None):
    """Another route's answer, or ``{"error": ...}`` when it fails (one broken part must
    not blank the page)."""
    fn = routes.get(key)
    if fn is None:
        return {"error": f"{key} is not served by this node"}
    method, _, path = key.partition(" ")
    try:
        result = fn(Request(method, path, dict(query or {})))
        if hasattr(result, "__await__"):
            result = await result
        return result
    except HttpError as exc:
        return {"error": str(exc)}


def _process() -> dict:
    import psutil

    proc = psutil.Process()
    with proc.oneshot():
        times = proc.cpu_times()
        return {"rss_bytes": proc.memory_info().rss, "threads": proc.num_threads(),
                "cpu_seconds": round(times.user + times.system, 2),
                "system_cpu_percent": psutil.cpu_percent(interval=None),
                "system_memory_percent": psutil.virtual_memory().percent}


def _provider_jobs(node) -> dict:
    cap, host = node.capacity, node.job_host
    if cap is None:
        return {"provider": False, "running": [], "waiting": []}
    running = [{"job": job_id.hex(), "cpu": r.cpu_milli / 1000, "mem_mib": r.mem_mib,
                "gpus": r.gpu_count} for job_id, r in list(cap.reserved.items())[:JOBS]]
    return {"provider": True, "running": running,
            "waiting": [j.hex() for j in cap.waiting[:JOBS]],
            "queue_max": cap.queue_max,
            "done": host.done if host is not None else 0,
            "failed": host.failed if host is not None else 0,
            "rejected": sum(host.rejected.values()) if host is not None else 0}


def _receipts(node) -> list[dict]:
    """This node's newest wallet entries (receipts, transfers, receives), newest first."""
    entries = node.ledger.chains.entries(node.identity.public_key)
    return [describe(env) for env in reversed(entries[-RECEIPTS:])]


def status_page_routes(node, ipfs, routes: Routes) -> Routes:
    """``GET /`` and ``GET /v1/overview``; ``routes`` are the node's other routes."""

    async def overview(_: Request) -> dict:
        limit = {"limit": str(JOBS)}
        running = await _call(routes, "GET /v1/jobs", {**limit, "state": "running"})
        queued = await _call(routes, "GET /v1/jobs", {**limit, "state": "queued"})
        recent = await _call(routes, "GET /v1/jobs", {"limit": "10"})
        return {
            "status": node.status(),
            "peers": node.peers(),
            "offers": node.offers_view()["offers"],
            "hosts": (await _call(routes, "GET /v1/hosts")).get("hosts", []),
            "jobs": {"client": running.get("jobs", []) + queued.get("jobs", []),
                     "client_recent": recent.get("jobs", []),
                     "client_ended": running.get("ended", {}),
                     **_provider_jobs(node)},
            "receipts": _receipts(node),
            "ipfs": ipfs.stat(),
            "process": _process(),
        }

    return {"GET /": page, "GET /v1/overview": overview}
