"""meca-node: a peer-to-peer edge-compute node.

Layers import only leftward (see DESIGN.md):
``wire <- core <- node <- adapters (net, store, control, runtime, sim) <- cli``.
"""

__version__ = "0.1.0"
