"""Files in the node's data dir: the node key, the control token, atomic writes."""

from meca_node.store.blocks import (BlockCorrupt, BlockMismatch, BlockNotFound, BlockPinned,
                                    BlockStore, BlockStoreError, BlockTooLarge, DiskFull,
                                    MissingBlocks, PinError, Protection, QuotaExceeded)
from meca_node.store.files import atomic_write, read_private, write_private
from meca_node.store.keys import KeyFileError, load_or_create_key, load_key

__all__ = ["KeyFileError", "atomic_write", "load_key", "load_or_create_key", "read_private",
           "write_private"]
__all__ += ["BlockCorrupt", "BlockMismatch", "BlockNotFound", "BlockPinned", "BlockStore",
            "BlockStoreError", "BlockTooLarge", "DiskFull", "MissingBlocks", "PinError",
            "Protection", "QuotaExceeded"]
