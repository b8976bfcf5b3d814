"""libp2p networking (the only package that imports libp2p)."""

from meca_node.net.framing import FrameError, FrameReader, write_frame
from meca_node.net.host import (
    FramedStream, GossipMessage, Libp2pNet, NetConfig, NetStartError, PeerView, open_net, parse_addrs,
    parse_peer_addr,
)

__all__ = [
    "FrameError", "FramedStream", "GossipMessage", "Libp2pNet", "NetConfig", "NetStartError", "PeerView",
    "open_net", "parse_addrs", "parse_peer_addr", "FrameReader", "write_frame",
]
