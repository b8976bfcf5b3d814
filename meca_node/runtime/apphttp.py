"""One HTTP/1.1 POST to a task's app, on trio sockets with h11.

The executor's path to the app on every job. A general client (httpx over anyio) took
about 0.9 ms more per request than this on our 2-vCPU VM, and more inside a busy node
process (each of its many checkpoints lets the node's other tasks run); a job answers with
one POST on a fresh connection (the dev servers tasks use close it anyway), so this is all
it needs: connect, send, read one response under a size cap.
"""

from __future__ import annotations

from urllib.parse import urlsplit

import h11
import trio

READ_CHUNK = 65536


class NoAnswer(Exception):
    """No byte of a reply came back: refused, not connected in time, or closed or reset
    before the status line. Nothing reached the app, or it died on it."""


class BadReply(Exception):
    """The app answered, but not with a whole HTTP 200 reply."""


class TooLarge(BadReply):
    """The reply is over the output cap."""


async def post(url: str, body: bytes, *, connect_timeout_s: float, timeout_s: float,
               max_output: int, content_type: str = "application/json") -> bytes:
    """POST ``body`` to ``url`` (``http://host:port/path``); the reply body of an HTTP 200.
    Raises :class:`NoAnswer` or :class:`BadReply` (both say why), or ``trio.TooSlowError``
    when the whole exchange takes longer than ``timeout_s``."""
    parts = urlsplit(url)
    host, port = parts.hostname or "", parts.port or 80
    with trio.fail_after(timeout_s):
        try:
            with trio.fail_after(connect_timeout_s):
                stream = await _connect(host, port)
        except (OSError, trio.TooSlowError) as exc:
            raise NoAnswer(f"cannot connect to {host}:{port} ({type(exc).__name__}: "
                           f"{exc})") from None
        async with stream:
            return await _exchange(stream, parts, body, max_output, content_type)


async def _connect(host: str, port: int) -> trio.SocketStream:
    """A TCP connection to a numeric address (a container's) without the resolver and
    happy-eyeballs machinery of ``trio.open_tcp_stream``; a name falls back to it."""
    import ipaddress

    try:
        family = (trio.socket.AF_INET6 if ipaddress.ip_address(host).version == 6
                  else trio.socket.AF_INET)
    except ValueError:
        return await trio.open_tcp_stream(host, port)
    sock = trio.socket.socket(family, trio.socket.SOCK_STREAM)
    try:
        await sock.connect((host, port))
    except BaseException:
        sock.close()
        raise
    return trio.SocketStream(sock)


async def _exchange(stream: trio.SocketStream, parts, body: bytes, max_output: int,
                    content_type: str) -> bytes:
    conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=64 * 1024)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    request = h11.Request(method="POST", target=target, headers=[
        ("Host", parts.netloc), ("Content-Type", content_type),
        ("Content-Length", str(len(body))), ("Connection", "close")])
    try:
        await stream.send_all(conn.send(request) + conn.send(h11.Data(data=body))
                              + conn.send(h11.EndOfMessage()))
    except (trio.BrokenResourceError, OSError) as exc:
        raise NoAnswer(f"the connection broke while sending ({exc})") from None
    status = None
    out = bytearray()
    while True:
        try:
            event = conn.next_event()
        except h11.RemoteProtocolError as exc:
            raise (BadReply if status else NoAnswer)(f"not an HTTP reply: {exc}") from None
        if event is h11.NEED_DATA:
            try:
                data = await stream.receive_some(READ_CHUNK)
            except (trio.BrokenResourceError, OSError) as exc:
                data = b""
                if status is None:
                    raise NoAnswer(f"the connection was reset before a reply ({exc})") \
                        from None
            if not data and status is None:
                raise NoAnswer("the app closed the connection before replying")
            conn.receive_data(data)
        elif isinstance(event, h11.Response):
            status = event.status_code
        elif isinstance(event, h11.Data):
            out += event.data
            if len(out) > max_output:
                raise TooLarge(f"the reply is larger than the cap of {max_output} bytes")
        elif isinstance(event, h11.EndOfMessage):
            break
        elif isinstance(event, h11.ConnectionClosed):
            raise (BadReply if status else NoAnswer)("the app closed the connection "
                                                     "mid-reply")
    if status != 200:
        raise BadReply(f"the app answered HTTP {status}: {bytes(out[:500])!r}")
    return bytes(out)
