"""A small HTTP/1.1 server (h11 over trio) for ``meca-node status``, ``peers`` and tools.

Binds 127.0.0.1 only. Every request must carry ``Authorization: Bearer <token>``,
the token being the content of ``control.token`` (mode 0600) in the data dir.
Where the API listens is written to ``control.json`` once it is bound.

A route is ``"METHOD /path"`` -> ``fn(request)``, sync or async, returning JSON-able data
or a :class:`Streamed` body (sent chunked, e.g. file bytes or progress lines). A route
that raises :class:`HttpError` answers with its status and message.
"""

from __future__ import annotations

import hmac
import inspect
import json
import logging
import os
import secrets
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs

import h11
import trio

from meca_node.store.files import atomic_write, read_private, write_private

log = logging.getLogger("meca_node.control")

TOKEN_FILE = "control.token"
CONTROL_FILE = "control.json"
MAX_REQUEST = 64 * 1024
MAX_CONNECTIONS = 32
REQUEST_TIMEOUT_S = 10



@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str] = field(default_factory=dict)
    body: bytes = b""

    def json(self) -> dict:
        """The JSON object body; HttpError 400 if it is not one."""
        if not self.body:
            return {}
        try:
            doc = json.loads(self.body)
        except ValueError as exc:
            raise HttpError(400, f"body is not JSON: {exc}") from None
        if not isinstance(doc, dict):
            raise HttpError(400, "body must be a JSON object")
        return doc

    def arg(self, name: str) -> str:
        """A required parameter, from the JSON body or the query string."""
        value = self.json().get(name, self.query.get(name))
        if value is None or value == "":
            raise HttpError(400, f"missing parameter {name!r}")
        return str(value)


class HttpError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class Streamed:
    """A response body produced piece by piece (sent with chunked transfer encoding)."""

    chunks: AsyncIterator[bytes]
    content_type: str = "application/octet-stream"


Routes = dict[str, Callable[[Request], object]]


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


async def _read_request(stream: trio.SocketStream,
                        conn: h11.Connection) -> tuple[Request, h11.Request] | None:
    request, body = None, bytearray()
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(await stream.receive_some(16384))
            continue
        if isinstance(event, h11.Request):
            request = event
        elif isinstance(event, h11.Data):
            body += event.data
            if len(body) > MAX_REQUEST:
                raise HttpError(413, f"request body over {MAX_REQUEST} bytes")
        elif isinstance(event, h11.EndOfMessage) or event is h11.PAUSED:
            break
        elif isinstance(event, h11.ConnectionClosed):
            return None
    assert request is not None
    target = request.target.decode()
    path, _, query = target.partition("?")
    return Request(request.method.decode(), path,
                   {k: v[-1] for k, v in parse_qs(query).items()}, bytes(body)), request


async def _serve_one(stream: trio.SocketStream, routes: Routes, token: str) -> None:
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_REQUEST)
    try:
        try:
            with trio.fail_after(REQUEST_TIMEOUT_S):  # reading it; the work may take longer
                got = await _read_request(stream, conn)
            if got is None:
                return
            request, raw = got
            _authorize(raw, token)
            status, body = 200, await _dispatch(request, routes)
        except trio.TooSlowError:
            return
        except h11.RemoteProtocolError as exc:
            status, body = 400, {"error": f"bad request: {exc}"}
            if conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
                return
        except HttpError as exc:
            status, body = exc.status, {"error": str(exc)}
        await _respond(stream, conn, status, body)
    except (trio.BrokenResourceError, trio.ClosedResourceError, h11.LocalProtocolError):
        pass
    finally:
        await stream.aclose()


async def _respond(stream, conn: h11.Connection, status: int, body: object) -> None:
    if isinstance(body, Streamed):
        headers = [("content-type", body.content_type), ("transfer-encoding", "chunked"),
                   ("connection", "close")]
        await stream.send_all(conn.send(h11.Response(status_code=status, headers=headers)))
        async for chunk in body.chunks:
            if chunk:
                await stream.send_all(conn.send(h11.Data(data=chunk)))
    else:
        payload = json.dumps(body, indent=1).encode()
        headers = [("content-type", "application/json"),
                   ("content-length", str(len(payload))), ("connection", "close")]
        await stream.send_all(conn.send(h11.Response(status_code=status, headers=headers)))
        await stream.send_all(conn.send(h11.Data(data=payload)))
    await stream.send_all(conn.send(h11.EndOfMessage()))


def _authorize(request: h11.Request, token: str) -> None:
    auth = dict((k.lower(), v) for k, v in request.headers).get(b"authorization", b"")
    if not hmac.compare_digest(auth, b"Bearer " + token.encode()):
        raise HttpError(401, "missing or wrong bearer token (see control.token in the "
                             "data dir)")


async def _dispatch(request: Request, routes: Routes) -> object:
    key = f"{request.method} {request.path}"
    fn = routes.get(key)
    if fn is None:
        raise HttpError(404, f"no such endpoint: {key} (endpoints: "
                             f"{', '.join(sorted(routes))})")
    try:
        result = fn(request)
        if inspect.isawaitable(result):
            result = await result
        return result
    except HttpError:
        raise
    except Exception as exc:  # a bug in a view must not take the node down
        log.exception("control endpoint %s failed", key)
        raise HttpError(500, f"{type(exc).__name__}: {exc}") from None
