"""One HTTP/1.1 POST to a task's app, on trio sockets with h11.

The executor's path to the app on every job. A general client (httpx over anyio) took
about 0.9 ms more per request than this on our 2-vCPU VM, and more inside a busy node
process (each of its many checkpoints lets the node's other tasks run); a job answers with
one POST on a fresh connection (the dev servers tasks use close it anyway), so this is all
it needs: connect, send, read one response under a size cap.

A warm container's next connection may be opened ahead (:class:`Ahead`): an app that has
been idle for a few milliseconds answers a fresh connection about 0.8 ms slower on this
2-vCPU VM (its accept, its new handler thread, cold caches), and with the connection
already accepted that part is done before the job arrives.
"""

from __future__ import annotations

from urllib.parse import urlsplit

import select

import h11
import trio

READ_CHUNK = 65536
#: what poll() reports on a connection the app closed or reset, or wrote to unasked
_GONE = select.POLLIN | select.POLLPRI | select.POLLERR | select.POLLHUP | getattr(
    select, "POLLRDHUP", 0)


class NoAnswer(Exception):
    """No byte of a reply came back: refused, not connected in time, or closed or reset
    before the status line. Nothing reached the app, or it died on it."""


class BadReply(Exception):
    """The app answered, but not with a whole HTTP 200 reply."""


class TooLarge(BadReply):
    """The reply is over the output cap."""


class Ahead:
    """A connection to an app opened before its next request (see the module's doc). Its
    opener sets ``stream`` (None when the connect failed) and then ``ready``; whoever
    :meth:`take` s it owns the stream, else :meth:`close` ends it unused."""

    __slots__ = ("stream", "ready", "taken", "used", "opening")

    def __init__(self) -> None:
        self.stream: trio.SocketStream | None = None
        self.ready = trio.Event()
        self.taken = trio.Event()
        self.used = False  # taken, and still good then
        self.opening = False  # the connect has begun

    async def open(self, url: str, connect_timeout_s: float, after_s: float = 0.0) -> None:
        """Connect to ``url``'s host and port ``after_s`` from now, unless taken first (a
        failure leaves ``stream`` None: the request then connects itself and finds out);
        sets ``ready`` on every path."""
        parts = urlsplit(url)
        try:
            with trio.move_on_after(after_s):
                await self.taken.wait()
            if self.taken.is_set():
                return
            self.opening = True
            with trio.move_on_after(connect_timeout_s):
                self.stream = await _connect(parts.hostname or "", parts.port or 80)
        except OSError:
            pass
        finally:
            self.ready.set()

    async def take(self) -> trio.SocketStream | None:
        """The open connection, now the caller's, if the app has neither closed it nor
        written to it; else None (and it is closed). Taken before the connect began:
        None at once."""
        self.taken.set()
        if not self.opening:
            return None
        await self.ready.wait()  # the opener's connect is bounded by its timeout
        if self.stream is not None and not _quiet(self.stream):
            self.close()
        stream, self.stream = self.stream, None
        self.used = stream is not None
        return stream

    def close(self) -> None:
        """End the connection unused (the app sees it closed before any request)."""
        stream, self.stream = self.stream, None
        if stream is not None:
            stream.socket.close()


def _quiet(stream: trio.SocketStream) -> bool:
    """Whether nothing has happened on the connection: not closed, reset or written to."""
    poller = select.poll()
    poller.register(stream.socket.fileno(), _GONE)
    return not poller.poll(0)


async def post(url: str, body: bytes, *, connect_timeout_s: float, timeout_s: float,
               max_output: int, content_type: str = "application/json",
               stream: trio.SocketStream | None = None) -> bytes:
    """POST ``body`` to ``url`` (``http://host:port/path``); the reply body of an HTTP 200.
    ``stream``: a connection to it opened ahead (:meth:`Ahead.take`), used and closed.
    Raises :class:`NoAnswer` or :class:`BadReply` (both say why), or ``trio.TooSlowError``
    when the whole exchange takes longer than ``timeout_s``."""
    parts = urlsplit(url)
    host, port = parts.hostname or "", parts.port or 80
    with trio.fail_after(timeout_s):
        if stream is None:
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
