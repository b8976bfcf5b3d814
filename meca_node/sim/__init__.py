"""Many nodes at once: real ``meca-node`` processes on loopback (and, later, the simulator)."""

from meca_node.sim.cluster import Cluster, ClusterNode

__all__ = ["Cluster", "ClusterNode"]
