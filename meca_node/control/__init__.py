"""The local control API: HTTP on 127.0.0.1 only, every request with a bearer token."""

from meca_node.control.client import ControlClient, ControlError
from meca_node.control.server import CONTROL_FILE, TOKEN_FILE, serve_control

__all__ = ["CONTROL_FILE", "ControlClient", "ControlError", "TOKEN_FILE", "serve_control"]
