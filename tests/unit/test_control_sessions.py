"""Browser sessions of the control API (pure logic, a hand-driven clock) and the control
server's gate (a real server on 127.0.0.1): one-time codes, session cookies for GET only,
the bounds."""

from __future__ import annotations

import httpx
import pytest
import trio

from meca_node.control.server import MAX_WAITING, Page, serve_control
from meca_node.control.sessions import Sessions, cookie_value


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_code_works_once_and_within_its_time():
    clock = Clock()
    s = Sessions(clock, code_ttl_s=60, session_ttl_s=3600)
    code = s.new_code()
    token = s.redeem(code)
    assert token and s.valid(token)
    assert s.redeem(code) is None  # spent
    late = s.new_code()
    clock.now += 60.0
    assert s.redeem(late) is None  # expired
    assert s.redeem("") is None and s.redeem("not-a-code") is None
    assert s.valid(token)
    clock.now += 3600.0
    assert not s.valid(token)  # the session expired too
    assert s.counts() == {"codes": 0, "sessions": 0}


def test_codes_and_sessions_are_bounded_oldest_first():
    s = Sessions(Clock(), max_codes=3, max_sessions=2)
    codes = [s.new_code() for _ in range(5)]
    assert s.counts()["codes"] == 3
    assert s.redeem(codes[0]) is None and s.redeem(codes[1]) is None
    tokens = [s.redeem(c) for c in codes[2:]]
    assert all(tokens) and s.counts()["sessions"] == 2
    assert not s.valid(tokens[0]) and s.valid(tokens[1]) and s.valid(tokens[2])
    s.end(tokens[1])
    assert not s.valid(tokens[1]) and not s.valid(None) and not s.valid("")


def test_cookie_value():
    assert cookie_value("a=1; meca_session=xyz; b=2") == "xyz"
    assert cookie_value('meca_session="q"') == "q"
    assert cookie_value("meca_sessionx=1; other=2") is None
    assert cookie_value("") is None


async def test_the_server_lets_a_session_read_but_not_write(tmp_path):
    calls = []
    routes = {"GET /v1/thing": lambda _: {"ok": 1},
              "POST /v1/thing": lambda _: calls.append(1) or {"ok": 2},
              "GET /": lambda _: Page(b"<p>page</p>")}
    async with trio.open_nursery() as nursery:
        port = await nursery.start(serve_control, tmp_path, routes, 0)
        token = (tmp_path / "control.token").read_text().strip()
        base = f"http://127.0.0.1:{port}"
        bearer = {"Authorization": f"Bearer {token}"}
        async with httpx.AsyncClient(base_url=base, trust_env=False) as http:
            assert (await http.get("/v1/thing")).status_code == 401
            r = await http.get("/")
            assert r.status_code == 401 and "meca-node status --open" in r.text
            assert r.headers["content-type"].startswith("text/html")
            assert (await http.get("/v1/thing", headers=bearer)).json() == {"ok": 1}
            login = (await http.post("/v1/login", headers=bearer)).json()
            assert login["url"] == base + login["path"] and login["expires_in_s"] == 60
            assert (await http.post("/v1/login")).status_code == 401  # codes need the token

            r = await http.get(login["path"])
            assert r.status_code == 303 and r.headers["location"] == "/"
            cookie = r.headers["set-cookie"]
            assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
            session = {"Cookie": cookie.split(";")[0]}
            again = await http.get(login["path"])
            assert again.status_code == 401 and "used up" in again.text

            assert (await http.get("/", headers=session)).text == "<p>page</p>"
            assert (await http.get("/v1/thing", headers=session)).json() == {"ok": 1}
            r = await http.post("/v1/thing", headers=session)
            assert r.status_code == 401 and not calls  # a session only reads
            r = await http.get("/v1/thing", headers={**session, "Host": "evil.example:80"})
            assert r.status_code == 401  # a rebound name does not get in
            r = await http.get("/v1/thing", headers={"Cookie": "meca_session=guess"})
            assert r.status_code == 401
            r = await http.post("/v1/thing", headers=bearer, content=b"x" * (70 * 1024))
            assert r.status_code == 413 and not calls
        nursery.cancel_scope.cancel()


async def test_connections_over_the_bound_are_answered_busy(tmp_path):
    gate = trio.Event()

    async def slow(_):
        await gate.wait()
        return {"ok": 1}

    async with trio.open_nursery() as nursery:
        port = await nursery.start(serve_control, tmp_path, {"GET /slow": slow}, 0)
        token = (tmp_path / "control.token").read_text().strip()
        streams = []
        request = (f"GET /slow HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                   f"Authorization: Bearer {token}\r\n\r\n").encode()
        for _ in range(32 + MAX_WAITING):  # 32 served (stuck in the route), the rest wait
            s = await trio.open_tcp_stream("127.0.0.1", port)
            await s.send_all(request)
            streams.append(s)
        extra = await trio.open_tcp_stream("127.0.0.1", port)
        with trio.fail_after(10):
            head = await extra.receive_some(4096)
        assert head.startswith(b"HTTP/1.1 503") and b"busy" in head
        await extra.aclose()
        gate.set()
        with trio.fail_after(20):
            for s in streams:  # every waiting one is served once the others finish
                got = b""
                while b'"ok"' not in got:
                    chunk = await s.receive_some(4096)
                    assert chunk, got
                    got += chunk
                assert got.startswith(b"HTTP/1.1 200")
                await s.aclose()
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize("header", ["", "Bearer", "Bearer wrong"])
async def test_wrong_tokens_are_refused(tmp_path, header):
    async with trio.open_nursery() as nursery:
        port = await nursery.start(serve_control, tmp_path, {"GET /x": lambda _: {}}, 0)
        async with httpx.AsyncClient(trust_env=False) as http:
            r = await http.get(f"http://127.0.0.1:{port}/x", headers={"Authorization": header})
            assert r.status_code == 401 and "control.token" in r.json()["error"]
        nursery.cancel_scope.cancel()
