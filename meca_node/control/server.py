"""A small HTTP/1.1 server (h11 over trio) for ``meca-node status``, ``peers`` and tools.

Binds 127.0.0.1 only. Every request must carry ``Authorization: Bearer <token>``,
the token being the content of ``control.token`` (mode 0600) in the data dir, or, for
``GET`` only, the session cookie of a browser that logged in with a one-time code
(``POST /v1/login`` with the token gives one; ``GET /login?code=...`` spends it, sets the
cookie and redirects to ``/``; see :mod:`meca_node.control.sessions`).
Where the API listens is written to ``control.json`` once it is bound.

A route is ``"METHOD /path"`` -> ``fn(request)``, sync or async, returning JSON-able data,
a :class:`Streamed` body (sent chunked, e.g. file bytes or progress lines) or a
:class:`Page` (any other body: HTML, Prometheus text, a redirect). A route that raises
:class:`HttpError` answers with its status and message.

Bounded: request bodies (:data:`MAX_REQUEST`), header blocks (the same), connections
served at once (:data:`MAX_CONNECTIONS`; up to :data:`MAX_WAITING` more wait for a
turn, further ones are answered 503 at once), the time to read a request, login codes
and sessions.
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

from meca_node.control.sessions import COOKIE, Sessions, cookie_value
from meca_node.store.files import atomic_write, read_private, write_private

log = logging.getLogger("meca_node.control")

TOKEN_FILE = "control.token"
CONTROL_FILE = "control.json"
MAX_REQUEST = 64 * 1024
MAX_CONNECTIONS = 32
MAX_WAITING = 128
REQUEST_TIMEOUT_S = 10
LOGIN_PATH = "/login"


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)  # lower-case names

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


@dataclass
class Page:
    """A response body sent as it is, with its content type, status and extra headers."""

    body: bytes = b""
    content_type: str = "text/html; charset=utf-8"
    status: int = 200
    headers: tuple[tuple[str, str], ...] = ()


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
    sessions = Sessions()
    gate = _Gate(token, sessions, bound)

    def login_code(_: Request) -> dict:
        code = sessions.new_code()
        return {"code": code, "path": f"{LOGIN_PATH}?code={code}",
                "url": f"http://127.0.0.1:{bound}{LOGIN_PATH}?code={code}",
                "expires_in_s": sessions.code_ttl_s}

    routes = {**routes, "POST /v1/login": login_code}
    waiting = 0

    async def handler(stream: trio.SocketStream) -> None:
        nonlocal waiting
        if waiting >= MAX_WAITING:
            await _refuse_busy(stream)
            return
        waiting += 1
        try:
            await limit.acquire()
        finally:
            waiting -= 1
        try:
            await _serve_one(stream, routes, gate)
        finally:
            limit.release()

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
                        conn: h11.Connection) -> Request | None:
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
    target = request.target.decode("ascii", "replace")
    path, _, query = target.partition("?")
    headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in request.headers}
    return Request(request.method.decode("ascii", "replace"), path,
                   {k: v[-1] for k, v in parse_qs(query).items()}, bytes(body), headers)


async def _refuse_busy(stream: trio.SocketStream) -> None:
    """503 to a connection over the bound, without reading its request."""
    body = json.dumps({"error": f"busy: {MAX_CONNECTIONS} requests are being served and "
                                f"{MAX_WAITING} wait; try again shortly"}).encode()
    head = (f"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\nconnection: close\r\n\r\n").encode()
    try:
        with trio.move_on_after(REQUEST_TIMEOUT_S):
            await stream.send_all(head + body)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass
    finally:
        await stream.aclose()


class _Gate:
    """Who may make a request: the bearer token for anything; a live session cookie for a
    ``GET`` addressed to this server by its loopback name; nobody else."""

    def __init__(self, token: str, sessions: Sessions, port: int) -> None:
        self.token = token.encode()
        self.sessions = sessions
        self.hosts = {f"127.0.0.1:{port}", f"localhost:{port}"}

    def allows(self, request: Request) -> bool:
        auth = request.headers.get("authorization", "").encode("latin-1")
        if hmac.compare_digest(auth, b"Bearer " + self.token):
            return True
        return (request.method == "GET" and request.headers.get("host", "") in self.hosts
                and self.sessions.valid(cookie_value(request.headers.get("cookie", ""))))

    def login(self, request: Request) -> Page:
        """``GET /login?code=...``: spend the code, set the session cookie, go to ``/``."""
        session = self.sessions.redeem(request.query.get("code", ""))
        if session is None:
            return _login_page(401, "This login link is used up, expired (links work once, "
                                    "within 60 s) or wrong. Run <code>meca-node status "
                                    "--open</code> for a new one.")
        cookie = (f"{COOKIE}={session}; HttpOnly; SameSite=Strict; Path=/; "
                  f"Max-Age={int(self.sessions.session_ttl_s)}")
        return Page(b"", "text/plain", 303, (("location", "/"), ("set-cookie", cookie),
                                             ("cache-control", "no-store"),
                                             ("referrer-policy", "no-referrer")))


def _login_page(status: int, message: str) -> Page:
    html = ("<!doctype html><meta charset=utf-8><title>meca-node</title>"
            f"<p>{message}</p>").encode()
    return Page(html, "text/html; charset=utf-8", status,
                (("cache-control", "no-store"),
                 ("content-security-policy", "default-src 'none'")))


async def _serve_one(stream: trio.SocketStream, routes: Routes, gate: _Gate) -> None:
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_REQUEST)
    try:
        try:
            with trio.fail_after(REQUEST_TIMEOUT_S):  # reading it; the work may take longer
                request = await _read_request(stream, conn)
            if request is None:
                return
            if request.method == "GET" and request.path == LOGIN_PATH:
                body = gate.login(request)
            elif gate.allows(request):
                body = await _dispatch(request, routes)
            elif request.method == "GET" and request.path == "/":  # a browser, logged out
                body = _login_page(401, "Not logged in. Run <code>meca-node status --open"
                                        "</code> and open the link it prints (it works "
                                        "once, within 60 s).")
            else:
                raise HttpError(401, "missing or wrong bearer token (see control.token in "
                                     "the data dir); a browser logs in with the one-time "
                                     "link of `meca-node status --open`")
            status = 200
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
    if isinstance(body, Page):
        headers = [("content-type", body.content_type),
                   ("content-length", str(len(body.body))), ("connection", "close"),
                   ("x-content-type-options", "nosniff"), *body.headers]
        await stream.send_all(conn.send(h11.Response(status_code=body.status,
                                                     headers=headers)))
        if body.body:
            await stream.send_all(conn.send(h11.Data(data=body.body)))
    elif isinstance(body, Streamed):
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
