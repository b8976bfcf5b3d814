"""``python -m meca_node`` is the same as the ``meca-node`` command."""

from meca_node.cli import main

main()
