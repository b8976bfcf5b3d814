"""The status page in a real browser (headless Chromium) against real node processes: a
provider runs a client's job for a while; the client's ``meca-node status --open`` prints a
one-time login link; Chromium opens it (login, redirect, the page's script polls the node)
and the page shows the running job on both sides. The link works once."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys

import httpx
import pytest

from conftest import docker_engine, require
from test_busy_and_failover import network
from test_job_manage import start_detached_sleepy, wait_running
from test_run_job import cli
from meca_node.sim.cluster import child_env

pytestmark = [pytest.mark.integration, pytest.mark.docker]

CHROMIUM = "/usr/bin/chromium"


def chromium() -> str:
    found = shutil.which("chromium") or (CHROMIUM if os.access(CHROMIUM, os.X_OK) else None)
    require(found is not None, "headless Chromium (Debian package chromium) is missing: run "
                               "scripts/setup.sh or apt-get install -y chromium")
    return found


def login_url(node) -> str:
    """The link ``meca-node status --open`` prints (stdout is not a terminal: no browser)."""
    r = subprocess.run([sys.executable, "-m", "meca_node", "status", "--open", "--data-dir",
                        str(node.data_dir)], capture_output=True, text=True, timeout=30,
                       env=child_env())
    assert r.returncode == 0, r.stderr
    assert "works once" in r.stderr, r.stderr
    url = r.stdout.strip()
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+/login\?code=[\w-]{20,}", url), url
    return url


def browse(browser: str, url: str, profile) -> str:
    """The DOM after Chromium loaded ``url`` and ran the page's script for a while (virtual
    time: the budget passes as fast as the page lets it)."""
    args = [browser, "--headless=new", "--disable-gpu", "--no-first-run",
            f"--user-data-dir={profile}", "--virtual-time-budget=10000", "--dump-dom", url]
    if os.geteuid() == 0:
        args.insert(1, "--no-sandbox")  # Chromium's sandbox refuses to run as root
    r = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    return r.stdout


def text_of(dom: str, element_id: str) -> str:
    """The text inside the element with ``element_id`` (up to its section's end)."""
    start = dom.index(f'id="{element_id}"')
    end = dom.find("<h2", start)
    return re.sub(r"<[^>]+>", " ", dom[start:end if end > 0 else None])


def test_the_status_page_shows_a_running_job_after_a_one_time_login(tmp_path):
    docker_engine("python:3.9-slim")
    browser = chromium()
    with network(tmp_path, ["price = 1\n"]) as cluster:
        dev, provider, user = cluster.nodes
        job = start_detached_sleepy(user, 120)
        wait_running(user, provider, job)

        url = login_url(user)
        dom = browse(browser, url, tmp_path / "profile-user")
        assert 'data-updates="' in dom, dom[-3000:]  # the script ran and polled
        assert user.peer_id in dom
        node = text_of(dom, "node")
        reach = user.status()["reachability"]["status"]
        assert "local-cluster" in node and f"reachability  {reach}" in node, node
        client_jobs = text_of(dom, "client-jobs")
        assert job in client_jobs and "sleepy" in client_jobs and "running" in client_jobs, \
            client_jobs
        assert provider.peer_id[:20] in client_jobs  # where it runs
        peers = text_of(dom, "peers")
        assert provider.peer_id in peers and dev.peer_id in peers
        assert "sleepy" in text_of(dom, "offers")
        assert provider.peer_id in text_of(dom, "hosts")

        r = httpx.get(url, follow_redirects=False, timeout=5, trust_env=False)
        assert r.status_code == 401 and "used up" in r.text  # the link worked once
        assert httpx.get(url.split("/login")[0] + "/v1/overview", timeout=5,
                         trust_env=False).status_code == 401  # no session, no token

        # the provider's page shows the job it runs (its wire id, from its own overview)
        overview = provider.client().get("/v1/overview")
        running = [j["job"] for j in overview["jobs"]["running"]]
        assert len(running) == 1, overview["jobs"]
        dom = browse(browser, login_url(provider), tmp_path / "profile-provider")
        provider_jobs = text_of(dom, "provider-jobs")
        assert running[0] in provider_jobs, provider_jobs
        assert "CPU" in text_of(dom, "resources")

        r = cli(user, "job", "cancel", job, timeout=60)
        assert r.returncode == 0, r.stderr.decode()
        assert json.loads(cli(user, "job", "describe", job, "--json").stdout)["job"][
            "state"] == "cancelled"
