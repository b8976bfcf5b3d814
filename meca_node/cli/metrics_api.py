"""``GET /metrics``: the node's counters in the Prometheus text exposition format 0.0.4.

Scraped with the control token (Prometheus ``bearer_token_file`` pointing at the data dir's
``control.token``). Every metric is named ``meca_*`` and comes with ``# HELP`` and
``# TYPE``; every family is always there (zeros on a node without the role), so a
dashboard's series do not come and go. The values are read, at scrape time, from the
counters the node keeps anyway (gate, transport, bitswap, job host, job history, warm
pool, ledger); nothing is counted twice.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from meca_node import __version__
from meca_node.control.server import Page, Request, Routes

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
MIB = 1024 * 1024
#: the reachability statuses (the first word of ``status``'s: "relayed via <peer>")
REACHABILITY = ("public", "relayed", "private", "unknown")

Sample = tuple[dict[str, str], float]


class Exposition:
    """Metric families rendered as Prometheus text (format 0.0.4)."""

    def __init__(self) -> None:
        self._lines: list[str] = []
        self._names: set[str] = set()

    def add(self, name: str, kind: str, help_text: str,
            samples: Iterable[Sample] | float) -> None:
        """One family; ``samples`` is a value or (labels, value) pairs. A counter's samples
        are named ``<name>_total``."""
        if name in self._names:
            raise ValueError(f"metric family {name} added twice")
        self._names.add(name)
        if isinstance(samples, (int, float)):
            samples = [({}, samples)]
        sample_name = f"{name}_total" if kind == "counter" else name
        self._lines.append(f"# HELP {sample_name} {_escape_help(help_text)}")
        self._lines.append(f"# TYPE {sample_name} {kind}")
        for labels, value in samples:
            label_text = ",".join(f'{k}="{_escape_label(str(v))}"'
                                  for k, v in sorted(labels.items()))
            self._lines.append(f"{sample_name}{{{label_text}}} {_number(value)}"
                               if label_text else f"{sample_name} {_number(value)}")

    def render(self) -> bytes:
        return ("\n".join(self._lines) + "\n").encode()


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _escape_label(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


def _by(label: str, counts: dict, always: Iterable[str] = ()) -> list[Sample]:
    """(labels, value) pairs of a ``{label value: count}`` dict, with ``always`` at 0 when
    missing; sorted for a stable output."""
    merged = {key: 0 for key in always} | {str(k): v for k, v in counts.items()}
    return [({label: k}, v) for k, v in sorted(merged.items())]


def _resources(out: Exposition, prefix: str, what: str, r: dict | None) -> None:
    r = r or {"cpu": 0, "mem_mib": 0, "gpus": 0}
    out.add(f"meca_{prefix}_cpu_cores", "gauge", f"CPU cores {what}", float(r["cpu"]))
    out.add(f"meca_{prefix}_memory_bytes", "gauge", f"memory {what}, bytes",
            int(r["mem_mib"]) * MIB)
    out.add(f"meca_{prefix}_gpus", "gauge", f"GPUs {what}", int(r["gpus"]))


async def collect(node, net, ipfs, routes: Routes) -> bytes:
    """Every metric of the running node, rendered."""
    s = node.status()
    out = Exposition()
    out.add("meca_info", "gauge", "this node: peer id, network, roles and version (always 1)",
            [({"peer_id": s["peer_id"], "network": s["network"]["name"],
               "network_id": s["network"]["id"][:16], "roles": ",".join(s["roles"]),
               "version": __version__}, 1)])
    out.add("meca_uptime_seconds", "gauge", "seconds since the node started",
            float(s["uptime_s"]))
    out.add("meca_peers_connected", "gauge", "peers connected now", s["peers_connected"])
    out.add("meca_hosts_known", "gauge", "fresh signed host adverts held", s["adverts_known"])
    out.add("meca_peers_cut_off", "gauge", "peers cut off for invalid or oversized gossip",
            len(s["cut_off"]))
    reach = str((s.get("reachability") or {}).get("status") or "unknown").split()[0]
    out.add("meca_reachability", "gauge", "whether other peers can dial this node (1 for "
            "the current status: public, relayed (through a relay reservation), private, "
            "unknown)", [({"status": k}, int(k == reach)) for k in REACHABILITY])

    # gossip: in (validated from others), dropped (by reason), out (our publishes)
    out.add("meca_gossip_received", "counter",
            "gossip messages from other peers accepted, by message kind",
            _by("kind", s["gossip"]["accepted"]))
    out.add("meca_gossip_entries_received", "counter",
            "account chain entries in accepted Entries gossip messages, by entry kind",
            _by("kind", s["gossip"].get("entries", {})))
    dropped = dict(s["gossip"]["dropped"])
    faults = getattr(net, "faults", None)
    if faults is not None and faults.stats.get("gossip_dropped"):
        dropped["sim_fault"] = faults.stats["gossip_dropped"]
    out.add("meca_gossip_dropped", "counter",
            "gossip messages dropped, by reason (malformed, bad_signature, replay, stale, "
            "rate_limited, oversize, cut_off, ...)", _by("reason", dropped))
    out.add("meca_gossip_published", "counter", "gossip messages this node published, by "
            "topic", _by("topic", dict(getattr(net, "published", {}))))
    out.add("meca_adverts_sent", "counter", "host adverts this node published",
            s["adverts_sent"])

    # jobs, by role and outcome
    host = node.job_host
    provider = ({"done": host.done, "failed": host.failed,
                 "rejected": sum(host.rejected.values())} if host is not None else
                {"done": 0, "failed": 0, "rejected": 0})
    client = await _client_jobs(routes)
    samples = [({"role": "provider", "outcome": k}, v) for k, v in sorted(provider.items())]
    samples += [({"role": "client", "outcome": k}, v) for k, v in
                sorted(({"done": 0, "failed": 0} | client.get("ended", {})).items())]
    out.add("meca_jobs", "counter", "jobs ended since the node started, by role (provider: "
            "run for others; client: run for this node's user) and outcome", samples)
    out.add("meca_provider_jobs_rejected", "counter", "job requests this provider refused "
            "before admitting them, by reason",
            _by("reason", dict(host.rejected) if host is not None else {}))
    failures = dict(host.failures) if host is not None else {}
    if host is not None and host.failed > sum(failures.values()):
        failures["stream_broken"] = host.failed - sum(failures.values())
    out.add("meca_provider_jobs_failed", "counter", "admitted jobs that failed on this "
            "provider, by reason", _by("reason", failures))
    cap = node.capacity
    out.add("meca_provider_queue_length", "gauge", "jobs waiting for resources here",
            len(cap.waiting) if cap is not None else 0)
    out.add("meca_provider_jobs_running", "gauge", "jobs holding resources here now",
            len(cap.reserved) if cap is not None else 0)
    out.add("meca_client_jobs_live", "gauge", "this node's user's jobs queued or running",
            int(client.get("live", 0)))

    # containers (a provider's warm pool: a miss is a cold start)
    pool = s.get("warm_pool") or {"idle": 0, "hits": 0, "misses": 0, "evicted": 0}
    out.add("meca_container_starts", "counter", "task containers used for jobs: cold (a "
            "fresh container started) or warm (one kept from an earlier job of the task)",
            [({"start": "cold"}, pool["misses"]), ({"start": "warm"}, pool["hits"])])
    out.add("meca_warm_pool_idle_containers", "gauge", "started containers kept for the "
            "next job", pool["idle"])
    out.add("meca_warm_pool_evicted", "counter", "idle containers removed (idle too long "
            "or over the bound)", pool["evicted"])

    # IPFS
    stat = ipfs.stat()
    out.add("meca_ipfs_pulled_bytes", "counter", "block bytes pulled from peers over "
            "bitswap (images, job inputs and outputs, ipfs pull/get)",
            ipfs.bitswap.fetched_bytes)
    out.add("meca_ipfs_served_bytes", "counter", "block bytes served to peers over bitswap",
            stat["bitswap"]["served_bytes"])
    out.add("meca_ipfs_store_bytes", "gauge", "bytes in the block store", stat["bytes"])
    out.add("meca_ipfs_store_quota_bytes", "gauge", "the block store's quota, bytes",
            stat["quota_bytes"])

    # money
    ledger = s["ledger"]
    out.add("meca_balance", "gauge", "this node's account balance", ledger["balance"])
    out.add("meca_ledger_accounts", "gauge", "accounts with a known chain",
            ledger["accounts"])
    out.add("meca_ledger_pending_entries", "gauge", "ledger entries held until earlier "
            "ones arrive", ledger["pending"])
    out.add("meca_ledger_unclaimed_payments", "gauge", "payments to this node not yet "
            "received into its chain", ledger["unclaimed"])
    out.add("meca_ledger_intake", "counter", "ledger entries taken in, by how",
            _by("event", ledger.get("intake", {})))

    # resources
    _resources(out, "offered", "offered for jobs", s["offered"])
    _resources(out, "free", "free for jobs now", s["free"])
    _process(out)
    return out.render()


async def _client_jobs(routes: Routes) -> dict:
    """The job history's counts (live, ended by state) through its own route."""
    fn = routes.get("GET /v1/jobs")
    if fn is None:
        return {}
    return await fn(Request("GET", "/v1/jobs", {"limit": "0"}))


def _process(out: Exposition) -> None:
    import psutil

    proc = psutil.Process()
    with proc.oneshot():
        times = proc.cpu_times()
        rss = proc.memory_info().rss
        threads = proc.num_threads()
    out.add("meca_process_cpu_seconds", "counter", "CPU time of the node process (user + "
            "system), seconds", round(times.user + times.system, 3))
    out.add("meca_process_resident_memory_bytes", "gauge", "resident memory of the node "
            "process, bytes", rss)
    out.add("meca_process_threads", "gauge", "threads of the node process", threads)


def metrics_routes(node, net, ipfs, routes: Routes) -> Routes:
    """``GET /metrics``; ``routes`` are the node's other routes (the job history's is read)."""

    async def metrics(_: Request) -> Page:
        return Page(await collect(node, net, ipfs, routes), CONTENT_TYPE)

    return {"GET /metrics": metrics}
