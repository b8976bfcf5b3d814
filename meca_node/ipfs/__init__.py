"""The node's own IPFS: CIDs, dag-pb, UnixFS and the Bitswap protocol, without I/O.

Pure and synchronous like ``core``: the block store lives in ``store``, the libp2p glue for
Bitswap in ``net``. See README.md for what we wrote ourselves and why.
"""
