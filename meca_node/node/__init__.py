"""The trio driver of a node; it reaches the world only through :mod:`meca_node.node.ports`."""

from meca_node.node.clock import OsRandom, SeededRandom, SystemClock, TrioClock
from meca_node.node.node import Node, NodeSettings
from meca_node.node.shutdown import SHUTDOWN_DEADLINE_S, arm_exit_deadline

__all__ = ["Node", "NodeSettings", "OsRandom", "SHUTDOWN_DEADLINE_S", "SeededRandom",
           "SystemClock", "TrioClock", "arm_exit_deadline"]
