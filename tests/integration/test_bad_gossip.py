"""A rogue process publishes every kind of invalid gossip into a real 3-node mesh.

Topology: the rogue connects to node0 and node1 only. Honest nodes connected to
it drop and count each kind by reason and cut it off after the oversized message;
node2 never sees an invalid message, because validators stop them before
forwarding; honest adverts keep flowing everywhere.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from meca_node.sim import Cluster

pytestmark = pytest.mark.integration


def test_rogue_messages_are_dropped_counted_and_not_forwarded(tmp_path):
    cluster = Cluster(tmp_path, 3, advert_interval_s=1.0, chords=0)
    with cluster:
        cluster.wait_mesh(timeout_s=15)
        report_path = tmp_path / "rogue.json"
        rogue = subprocess.run(
            [sys.executable, "-m", "meca_node.sim.rogue", "--genesis",
             str(cluster.genesis_path), "--bootstrap", cluster.nodes[0].addr,
             "--bootstrap", cluster.nodes[1].addr, "--listen", "/ip4/127.0.0.99/tcp/0",
             "--report", str(report_path)],
            capture_output=True, text=True, timeout=60)
        assert rogue.returncode == 0, rogue.stderr[-2000:]
        report = json.loads(report_path.read_text())
        attack_end = time.time()

        for node in cluster.nodes[:2]:
            s = node.status()
            dropped = s["gossip"]["dropped"]
            for reason in ("bad_signature", "stale", "future", "wrong_network",
                           "unsupported_version", "unknown_type", "wrong_topic", "malformed",
                           "replay", "oversize"):
                assert dropped.get(reason, 0) >= 1, (node.index, reason, dropped)
            assert dropped.get("replay") == 2, dropped
            assert dropped.get("rate_limited", 0) + dropped.get("banned", 0) >= 50, dropped
            # every invalid kind it sent was counted exactly (nothing counted twice)
            for kind, reason in (("forged", "bad_signature"), ("stale", "stale"),
                                 ("future", "future"), ("other_network", "wrong_network"),
                                 ("malformed", "malformed")):
                assert dropped[reason] == report["sent"][kind], (kind, dropped)
            assert report["peer_id"] in s["cut_off"], s["cut_off"]
            # the envelope of protocol version 2: said plainly, once, and kept in status
            other = s["protocol"]["peers_on_other_versions"]
            assert "version 2" in other.get(report["peer_id"], ""), other
            log = cluster.tail(node, lines=10_000)
            assert log.count("speaks another meca protocol version") == 1, log[-3000:]
            assert "upgrade meca-node" in log

        # node2 is not connected to the rogue: validators kept all invalid messages from
        # reaching it. Only rate drops can appear there: node0 and node1 each let through
        # the flooder's burst plus what refilled while it lasted, and the union of the two
        # can exceed node2's own bucket for that key.
        far = cluster.nodes[2].status()["gossip"]["dropped"]
        assert set(far) <= {"rate_limited", "banned"}, far

        # honest adverts still flow to every node after the attack
        deadline = time.monotonic() + 10
        for node in cluster.nodes:
            others = {m.peer_id for m in cluster.nodes if m is not node}
            while True:
                fresh = {a["peer_id"] for a in node.peers()["adverts"]
                         if a["peer_id"] in others and a["age_s"] < time.time() - attack_end + 1.0}
                if fresh >= others:
                    break
                assert time.monotonic() < deadline, (node.index, fresh)
                time.sleep(0.2)  # bounded poll of other processes' state
    assert cluster.exit_codes == {0: 0, 1: 0, 2: 0}
