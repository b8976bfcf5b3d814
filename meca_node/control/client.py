"""Client for a running node's control API (used by the CLI and the cluster tools)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from meca_node.control.server import CONTROL_FILE, TOKEN_FILE
from meca_node.store.files import PrivateFileError, read_private


class ControlError(Exception):
    """The node is not running, or the control API refused or failed the request."""


def running_pid(data_dir: Path) -> int | None:
    """The pid of a live node serving ``data_dir``, from its ``control.json``; None when there is
    no such file or its process is gone (a node killed with SIGKILL leaves a stale file)."""
    try:
        pid = int(json.loads((data_dir / CONTROL_FILE).read_text())["pid"])
        if pid <= 0:
            return None
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:  # alive, another user's
        return pid
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return pid


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
        self._http: httpx.Client | None = None

    @property
    def http(self) -> httpx.Client:
        """One connection pool for every call (thread-safe): a new ``httpx`` client per
        call costs ~45 ms of CPU loading the CA bundle, for a plain-http loopback API.
        Proxy settings of the environment are ignored: the node is on 127.0.0.1."""
        if self._http is None:
            self._http = httpx.Client(verify=False, trust_env=False,
                                      limits=httpx.Limits(max_connections=128,
                                                          max_keepalive_connections=16))
        return self._http

    def close(self) -> None:
        if self._http is not None:
            self._http.close()
            self._http = None

    @property
    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def get(self, path: str, **params) -> dict:
        return self._call("GET", path, params=params or None)

    def post(self, path: str, body: dict | None = None) -> dict:
        return self._call("POST", path, json=body or {})

    def _call(self, method: str, path: str, **kw) -> dict:
        try:
            r = self.http.request(method, self.url + path, headers=self._headers,
                                  timeout=self.timeout_s, **kw)
        except httpx.HTTPError as exc:
            raise ControlError(f"node at {self.url} did not answer ({exc}); is it running?") \
                from None
        if r.status_code != 200:
            raise ControlError(_error_text(path, r.status_code, r.text))
        return r.json()

    @contextmanager
    def stream(self, method: str, path: str, body: dict | None = None,
               params: dict | None = None) -> Iterator[httpx.Response]:
        """A streamed response (file bytes or JSON lines); no read timeout, since the
        node may be fetching from the network while it answers."""
        timeout = httpx.Timeout(self.timeout_s, read=None)
        try:
            with self.http.stream(method, self.url + path, headers=self._headers,
                                  json=body, params=params, timeout=timeout) as r:
                if r.status_code != 200:
                    r.read()
                    raise ControlError(_error_text(path, r.status_code, r.text))
                yield r
        except httpx.HTTPError as exc:
            raise ControlError(f"node at {self.url}: {path} failed ({exc})") from None


def _error_text(path: str, status: int, text: str) -> str:
    try:
        return f"{path}: {json.loads(text)['error']} (HTTP {status})"
    except (ValueError, KeyError, TypeError):
        return f"{path}: HTTP {status}: {text[:300]}"
