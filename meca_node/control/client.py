"""Client for a running node's control API (used by the CLI and the cluster tools)."""

from __future__ import annotations

import json
from pathlib import Path

import httpx

from meca_node.control.server import CONTROL_FILE, TOKEN_FILE
from meca_node.store.files import PrivateFileError, read_private


class ControlError(Exception):
    """The node is not running, or the control API refused or failed the request."""


class ControlClient:
    def __init__(self, data_dir: Path, timeout_s: float = 5.0) -> None:
        self.data_dir = data_dir
        info_path = data_dir / CONTROL_FILE
        try:
            info = json.loads(info_path.read_text())
            self.url = f"http://{info['host']}:{int(info['port'])}"
        except FileNotFoundError:
            raise ControlError(f"no node is running with data dir {data_dir} (no "
                               f"{CONTROL_FILE}); start one with `meca-node start`") from None
        except (ValueError, KeyError) as exc:
            raise ControlError(f"{info_path} is corrupt ({exc}); restart the node") from None
        try:
            self.token = read_private(data_dir / TOKEN_FILE).decode().strip()
        except (OSError, PrivateFileError) as exc:
            raise ControlError(f"cannot read the control token: {exc}") from None
        self.timeout_s = timeout_s

    def get(self, path: str) -> dict:
        try:
            r = httpx.get(self.url + path, headers={"Authorization": f"Bearer {self.token}"},
                          timeout=self.timeout_s)
        except httpx.HTTPError as exc:
            raise ControlError(f"node at {self.url} did not answer ({exc}); is it running?") \
                from None
        if r.status_code != 200:
            raise ControlError(f"{path}: HTTP {r.status_code}: {r.text[:300]}")
        return r.json()
