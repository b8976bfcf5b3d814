"""Clock offsets between real node processes: a node whose clock is 90 s ahead is warned
(loudly, in its log and status) while its peers see nothing wrong with theirs; a node
200 s behind, beyond the 120 s skew window, that follows its peers' median clock
(``clock_follow_peers``) stamps its messages with their time and joins the mesh."""

from __future__ import annotations

import pytest

from conftest import wait_for
from meca_node.sim import Cluster

pytestmark = pytest.mark.integration

AHEAD_MS = 90_000  # over half the 120 s skew window, inside the window
BEHIND_MS = -200_000  # outside it: only following the peers makes this node heard


def test_a_wrong_clock_is_warned_about_and_a_following_node_uses_the_peers_time(tmp_path):
    cluster = Cluster(tmp_path, 4, advert_interval_s=1.0)
    cluster.prepare()
    ahead, behind = cluster.nodes[2], cluster.nodes[3]
    with open(ahead.data_dir / "config.toml", "a") as f:
        f.write(f"sim_clock_offset_ms = {AHEAD_MS}\n")
    with open(behind.data_dir / "config.toml", "a") as f:
        f.write(f"sim_clock_offset_ms = {BEHIND_MS}\nclock_follow_peers = true\n")
    with cluster:
        cluster.wait_mesh(timeout_s=30)  # the one 200 s behind is heard: it follows

        def clock(node) -> dict:
            return node.status()["clock"]

        wait_for("the node ahead sees its offset from 3 peers",
                 lambda: clock(ahead)["peers"] == 3, 15)
        c = clock(ahead)
        assert abs(c["offset_ms"] + AHEAD_MS) < 5_000, c
        assert c["warning"] and "ahead of" in c["warning"] and "clock_follow_peers" in \
            c["warning"], c
        assert not c["following_peers"]
        wait_for("the warning is in its log",
                 lambda: "CLOCK: this machine's clock is" in ahead.log_path.read_text(), 15)

        c = clock(behind)
        assert c["following_peers"] and abs(c["applied_ms"] + BEHIND_MS) < 5_000, c
        # the peers see its adverts stamped with their own time
        honest = cluster.nodes[0]
        age = next(a["age_s"] for a in honest.peers()["adverts"]
                   if a["peer_id"] == behind.peer_id)
        assert abs(age) < 10, age
        for node in cluster.nodes[:2]:  # the honest clocks: nothing to warn about
            wait_for("3 peers heard", lambda: clock(node)["peers"] == 3, 15)
            c = clock(node)
            assert abs(c["offset_ms"]) < 5_000 and c["warning"] is None, (node.index, c)
            assert "CLOCK:" not in node.log_path.read_text()
