"""Five real node processes on 127.0.0.x find each other and verify each other's adverts."""

from __future__ import annotations

import time

import pytest

from conftest import wait_for

from meca_node.sim import Cluster

pytestmark = pytest.mark.integration


def test_five_nodes_each_see_the_other_four_adverts_within_10s(tmp_path):
    cluster = Cluster(tmp_path, 5, advert_interval_s=2.0)
    t0 = time.monotonic()
    with cluster:
        times = cluster.wait_mesh(timeout_s=max(1.0, 10.0 - (time.monotonic() - t0)))
        assert time.monotonic() - t0 < 10.0, times
        for node in cluster.nodes:
            status = node.status()
            assert status["adverts_known"] == 4
            assert status["gossip"]["dropped"] == {}
            assert status["network"]["id"] == cluster.nodes[0].status()["network"]["id"]
    # SIGTERM: every node exits 0 within 5 s (Cluster.stop records None otherwise)
    assert cluster.exit_codes == {i: 0 for i in range(5)}, cluster.exit_codes



def test_a_crashed_peer_is_redialled_with_backoff_when_it_returns(tmp_path):
    with Cluster(tmp_path, 2, advert_interval_s=1.0) as cluster:
        a, b = cluster.nodes
        cluster.wait_mesh(timeout_s=15)
        cluster.kill(a)  # a crash: no goodbye
        dial = wait_for("b to fail redialing a", lambda: [
            d for d in b.peers()["dialing"] if d["peer_id"] == a.peer_id and d["failures"] >= 2],
            20, 0.1)
        assert dial[0]["last_error"]
        cluster.restart(a)
        wait_for("b to reconnect to a", lambda: a.peer_id in b.peers()["connected"], 20, 0.1)
        wait_for("the restarted node to see b's advert again",
                 lambda: b.peer_id in {x["peer_id"] for x in a.peers()["adverts"]}, 20, 0.1)
    assert cluster.exit_codes == {0: 0, 1: 0}
