"""Five real node processes on 127.0.0.x find each other and verify each other's adverts."""

from __future__ import annotations

import time

import pytest

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
