"""A small HTTP/1.1 server (h11 over trio) for ``meca-node status``, ``peers`` and tools.

Binds 127.0.0.1 only. Every request must carry ``Authorization: Bearer <token>``,
the token being the content of ``control.token`` (mode 0600) in the data dir.
Where the API listens is written to ``control.json`` once it is bound.
"""

from __future__ import annotations

import hmac
import json
import logging
import os
import secrets
from collections.abc import Callable
from pathlib import Path

import h11
import trio

from meca_node.store.files import atomic_write, read_private, write_private

log = logging.getLogger("meca_node.control")

TOKEN_FILE = "control.token"
CONTROL_FILE = "control.json"
MAX_REQUEST = 64 * 1024
MAX_CONNECTIONS = 32
REQUEST_TIMEOUT_S = 10

Routes = dict[str, Callable[[], object]]


def load_or_create_token(data_dir: Path) -> str:
    path = data_dir / TOKEN_FILE
    if path.exists():
        return read_private(path).decode().strip()
    token = secrets.token_urlsafe(32)
    write_private(path, token.encode() + b"\n")
    return token


async def serve_control(data_dir: Path, routes: Routes, port: int = 0, *,
                        task_status=trio.TASK_STATUS_IGNORED) -> None:
    """Serve ``routes`` (``"GET /v1/status"`` -> function returning JSON-able data)."""
    token = load_or_create_token(data_dir)
    listeners = await trio.open_tcp_listeners(port, host="127.0.0.1")
    bound = listeners[0].socket.getsockname()[1]
    info = data_dir / CONTROL_FILE
    atomic_write(info, json.dumps({"host": "127.0.0.1", "port": bound,
                                   "pid": os.getpid()}).encode())
    limit = trio.CapacityLimiter(MAX_CONNECTIONS)

    async def handler(stream: trio.SocketStream) -> None:
        async with limit:
            with trio.move_on_after(REQUEST_TIMEOUT_S):
                await _serve_one(stream, routes, token)

    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(trio.serve_listeners, handler, listeners)
            task_status.started(bound)
    finally:
        try:
            if json.loads(info.read_text()).get("pid") == os.getpid():
                info.unlink()
        except (OSError, ValueError):
            pass


async def _serve_one(stream: trio.SocketStream, routes: Routes, token: str) -> None:
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_REQUEST)
    try:
        request = None
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                data = await stream.receive_some(16384)
                conn.receive_data(data)
                continue
            if isinstance(event, h11.Request):
                request = event
            elif isinstance(event, h11.EndOfMessage) or event is h11.PAUSED:
                break
            elif isinstance(event, h11.ConnectionClosed):
                return
        assert request is not None
        status, body = _dispatch(request, routes, token)
    except h11.RemoteProtocolError as exc:
        status, body = 400, {"error": f"bad request: {exc}"}
        if conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            return
    payload = json.dumps(body, indent=1).encode()
    headers = [("content-type", "application/json"), ("content-length", str(len(payload))),
               ("connection", "close")]
    try:
        await stream.send_all(conn.send(h11.Response(status_code=status, headers=headers)))
        await stream.send_all(conn.send(h11.Data(data=payload)))
        await stream.send_all(conn.send(h11.EndOfMessage()))
    except (trio.BrokenResourceError, h11.LocalProtocolError):
        pass
    finally:
        await stream.aclose()


def _dispatch(request: h11.Request, routes: Routes, token: str) -> tuple[int, object]:
    auth = dict((k.lower(), v) for k, v in request.headers).get(b"authorization", b"")
    expected = b"Bearer " + token.encode()
    if not hmac.compare_digest(auth, expected):
        return 401, {"error": "missing or wrong bearer token (see control.token in the data dir)"}
    key = f"{request.method.decode()} {request.target.decode().split('?', 1)[0]}"
    fn = routes.get(key)
    if fn is None:
        return 404, {"error": f"no such endpoint: {key}", "endpoints": sorted(routes)}
    try:
        return 200, fn()
    except Exception as exc:  # a bug in a view must not take the node down
        log.exception("control endpoint %s failed", key)
        return 500, {"error": f"{type(exc).__name__}: {exc}"}
