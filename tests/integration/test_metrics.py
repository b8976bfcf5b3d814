"""``GET /metrics`` of real node processes, read as Prometheus reads it: with the control
token as bearer token, parsed by prometheus-client's own parser; refused without it."""

from __future__ import annotations

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import wait_for
from meca_node.sim import Cluster

pytestmark = pytest.mark.integration

#: every family the node exposes, with its type
FAMILIES = {
    "meca_info": "gauge", "meca_uptime_seconds": "gauge", "meca_peers_connected": "gauge",
    "meca_hosts_known": "gauge", "meca_peers_cut_off": "gauge", "meca_reachability": "gauge",
    "meca_gossip_received": "counter", "meca_gossip_dropped": "counter",
    "meca_gossip_published": "counter", "meca_adverts_sent": "counter",
    "meca_jobs": "counter", "meca_provider_jobs_rejected": "counter",
    "meca_provider_jobs_failed": "counter", "meca_provider_queue_length": "gauge",
    "meca_provider_jobs_running": "gauge", "meca_client_jobs_live": "gauge",
    "meca_container_starts": "counter", "meca_warm_pool_idle_containers": "gauge",
    "meca_warm_pool_evicted": "counter", "meca_ipfs_pulled_bytes": "counter",
    "meca_ipfs_served_bytes": "counter", "meca_ipfs_store_bytes": "gauge",
    "meca_ipfs_store_quota_bytes": "gauge", "meca_balance": "gauge",
    "meca_ledger_accounts": "gauge", "meca_ledger_pending_entries": "gauge",
    "meca_ledger_unclaimed_payments": "gauge", "meca_ledger_intake": "counter",
    "meca_offered_cpu_cores": "gauge", "meca_offered_memory_bytes": "gauge",
    "meca_offered_gpus": "gauge", "meca_free_cpu_cores": "gauge",
    "meca_free_memory_bytes": "gauge", "meca_free_gpus": "gauge",
    "meca_process_cpu_seconds": "counter", "meca_process_resident_memory_bytes": "gauge",
    "meca_process_threads": "gauge",
}


def scrape(node, token: str | None) -> httpx.Response:
    client = node.client()
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    return httpx.get(client.url + "/metrics", headers=headers, timeout=5, trust_env=False)


def parse(text: str) -> dict:
    """{family name: family} as prometheus-client parses the exposition."""
    return {f.name: f for f in text_string_to_metric_families(text)}


def value(families: dict, family: str, sample: str | None = None, **labels) -> float:
    """The one sample of ``family`` named ``sample`` with ``labels``."""
    found = [s.value for s in families[family].samples
             if s.name == (sample or family) and all(s.labels.get(k) == v
                                                     for k, v in labels.items())]
    assert len(found) == 1, (family, labels, families[family].samples)
    return found[0]


def test_metrics_are_prometheus_text_with_the_token_and_refused_without(tmp_path):
    with Cluster(tmp_path, 2, advert_interval_s=1.0) as cluster:
        a, b = cluster.nodes
        cluster.wait_mesh(timeout_s=20)
        token = a.client().token

        r = scrape(a, token)
        assert r.status_code == 200, r.text
        assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
        families = parse(r.text)
        for name, kind in FAMILIES.items():
            assert name in families, f"{name} missing from:\n{r.text}"
            assert families[name].type == kind, (name, families[name].type)
            assert families[name].documentation, name  # HELP text
        assert all(name.startswith("meca_") for name in families), sorted(families)
        assert "# HELP meca_jobs_total " in r.text and "# TYPE meca_jobs_total counter" in r.text

        status = a.status()
        info = families["meca_info"].samples[0]
        assert (info.labels["peer_id"], info.labels["network"], info.value) == \
            (a.peer_id, "local-cluster", 1.0)
        assert value(families, "meca_peers_connected") == status["peers_connected"] == 1
        assert value(families, "meca_hosts_known") == 1
        assert value(families, "meca_uptime_seconds") > 0
        reach = {s.labels["status"]: s.value for s in families["meca_reachability"].samples}
        assert sum(reach.values()) == 1 and set(reach) == {"public", "relayed", "private",
                                                           "unknown"}, reach
        assert reach[status["reachability"]["status"].split()[0]] == 1, status["reachability"]
        assert value(families, "meca_balance") == status["ledger"]["balance"] == 1_000_000
        # the peer's adverts came in; our own went out (on the adverts topic)
        assert value(families, "meca_gossip_received", "meca_gossip_received_total",
                     kind="HostAdvert") >= 1
        published = {s.labels["topic"]: s.value
                     for s in families["meca_gossip_published"].samples}
        assert sum(published.values()) >= value(families, "meca_adverts_sent",
                                                "meca_adverts_sent_total") >= 1, published
        dropped = {s.labels["reason"]: s.value for s in families["meca_gossip_dropped"].samples}
        assert dropped == {k: float(v) for k, v in status["gossip"]["dropped"].items()}
        for role in ("provider", "client"):
            for outcome in ("done", "failed"):
                assert value(families, "meca_jobs", "meca_jobs_total", role=role,
                             outcome=outcome) == 0
        assert value(families, "meca_container_starts", "meca_container_starts_total",
                     start="cold") == 0
        assert value(families, "meca_process_resident_memory_bytes") > 10 * 2**20
        if status["offered"] is not None:  # a provider with a Docker engine
            assert value(families, "meca_offered_cpu_cores") == status["offered"]["cpu"] > 0
            assert value(families, "meca_offered_memory_bytes") == \
                status["offered"]["mem_mib"] * 2**20

        # counters only grow: another advert round later, more adverts in and out
        sent = value(families, "meca_adverts_sent", "meca_adverts_sent_total")
        wait_for("another advert round", lambda: value(
            parse(scrape(a, token).text), "meca_adverts_sent", "meca_adverts_sent_total")
            > sent, 15)

        for bad in (None, "wrong", token + "x"):
            r = scrape(a, bad)
            assert r.status_code == 401, (bad, r.status_code, r.text)
            assert "control.token" in r.json()["error"]
            assert "meca_" not in r.text


@pytest.mark.docker
def test_a_job_moves_the_job_container_pull_and_balance_metrics(tmp_path):
    from test_run_job import cli, published_echo

    with published_echo(tmp_path, 1, "price = 1\n") as (cluster, _folder):
        dev, provider, user = cluster.nodes
        before = parse(scrape(user, user.client().token).text)
        r = cli(user, "run", "echo", "--input", '{"input": "hi"}', "--max-price", "2")
        assert r.returncode == 0 and r.stdout == b"hi", r.stderr.decode()
        r = cli(user, "run", "nope", "--input", "{}")
        assert r.returncode == 1  # no such offer: a failed client job

        def jobs(families, role, outcome):
            return value(families, "meca_jobs", "meca_jobs_total", role=role, outcome=outcome)

        mine = parse(scrape(user, user.client().token).text)
        assert jobs(mine, "client", "done") == 1 and jobs(mine, "client", "failed") == 1
        assert value(mine, "meca_balance") == value(before, "meca_balance") - 2  # price + fee
        assert value(mine, "meca_client_jobs_live") == 0
        theirs = parse(scrape(provider, provider.client().token).text)
        assert jobs(theirs, "provider", "done") == 1
        assert jobs(theirs, "provider", "failed") == 0
        assert value(theirs, "meca_container_starts", "meca_container_starts_total",
                     start="cold") == 1
        # the provider asked the developer for the image over bitswap (only its root and
        # manifest when the engine, shared by the processes here, has the image already)
        pulled = value(theirs, "meca_ipfs_pulled_bytes", "meca_ipfs_pulled_bytes_total")
        served = value(parse(scrape(dev, dev.client().token).text), "meca_ipfs_served_bytes",
                       "meca_ipfs_served_bytes_total")
        assert 0 < pulled <= served, (pulled, served)
        assert value(theirs, "meca_provider_jobs_running") == 0
        assert value(theirs, "meca_provider_queue_length") == 0
