"""The trio driver of a node; it reaches the world only through :mod:`meca_node.node.ports`."""

from meca_node.node.clock import OsRandom, SeededRandom, SystemClock, TrioClock
from meca_node.node.node import Node, NodeSettings

__all__ = ["Node", "NodeSettings", "OsRandom", "SeededRandom", "SystemClock", "TrioClock"]
