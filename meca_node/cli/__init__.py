"""The ``meca-node`` command line: parse, load config, wire adapters, ``trio.run``."""

from meca_node.cli.main import app, main

__all__ = ["app", "main"]
