"""The pure parts of reachability: status values from dial-back answers, the dial-back
server's bounds, which addresses it dials, what a host announces, circuit addresses."""

from __future__ import annotations

import multiaddr
import pytest

from meca_node.net.host import NetConfig, announced
from meca_node.net.reachability import (
    MAX_ADDRS, Answer, DialbackLimiter, Reachability, decode_request, dialable, encode_request,
)
from meca_node.net.relay import relay_of

RELAY = "12D3KooWK99VoVxNE7XzyBwXEzW7xhK7Gpv85r9F3V3fyKSUKPH5"
PEER = "12D3KooWJWoaqZhDaoEFshF7Rh1bpY9ohihFhzcW6d69Lr2NASuq"


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def ok(peer="a"):
    return Answer(peer, "ok", "/ip4/1.2.3.4/tcp/4601")


def failed(peer="b"):
    return Answer(peer, "failed", "/ip4/1.2.3.4/tcp/4601: no connection within 5 s")


def refused(peer="c"):
    return Answer(peer, "refused", "rate limit")


@pytest.mark.parametrize("rounds, relays, want", [
    ([], [], "unknown"),
    ([[refused()]], [], "unknown"),  # a refusal says nothing
    ([[]], [], "unknown"),
    ([[ok()]], [], "public"),
    ([[failed()]], [], "private"),
    ([[failed(), ok()]], [], "public"),  # one peer reached us: some can
    ([[failed(), refused()]], [], "private"),
    ([[ok()], [refused()]], [], "public"),  # refusals keep what we knew
    ([[ok()], [failed()]], [], "private"),  # the latest definite answer counts
    ([[failed()], [ok()]], [], "public"),
    ([], [RELAY], f"relayed via {RELAY}"),  # a reservation before any check
    ([[failed()]], [RELAY], f"relayed via {RELAY}"),
    ([[failed()]], [RELAY, PEER], f"relayed via {RELAY}, {PEER}"),
    ([[ok()]], [RELAY], "public"),  # dialable directly beats a relay
])
def test_status_from_answers(rounds, relays, want):
    r = Reachability(Clock())
    for answers in rounds:
        r.record(answers)
    assert r.status(relays) == want
    view = r.view(relays)
    assert view["status"] == want and view["relays"] == relays
    assert (view["confirmed_by"] is not None) == (want == "public")


def test_view_says_when_and_who():
    clock = Clock()
    r = Reachability(clock)
    assert r.view([])["checked_s_ago"] is None and r.view([])["checks"] == 0
    r.record([ok("peer-x")])
    clock.t += 12.5
    view = r.view([])
    assert view == {"status": "public", "confirmed_by": "peer-x",
                    "confirmed_addr": "/ip4/1.2.3.4/tcp/4601", "failed": None,
                    "checked_s_ago": 12.5, "checks": 1, "relays": []}
    r.record([refused()])
    assert r.view([])["checks"] == 1  # not a check that said anything


@pytest.mark.parametrize("data, kind, detail", [
    (b"ok /ip4/1.2.3.4/tcp/1", "ok", "/ip4/1.2.3.4/tcp/1"),
    (b"failed a: b", "failed", "a: b"),
    (b"refused rate limit", "refused", "rate limit"),
    (None, "refused", "no answer"),
    (b"", "refused", "no answer"),
    (b"yes please", "refused", "unknown answer 'yes'"),
    (b"\xff\xfe", "refused", "unknown answer '\ufffd\ufffd'"),
    (b"ok " + b"x" * 1000, "ok", "x" * 300),  # bounded
])
def test_answer_parse(data, kind, detail):
    a = Answer.parse("p", data)
    assert (a.kind, a.detail) == (kind, detail)


def test_limiter_per_peer_per_minute_and_at_once():
    clock = Clock()
    lim = DialbackLimiter(per_minute=3, per_peer_s=30.0, concurrent=2, clock=clock)
    assert lim.admit("a") is None
    assert "per peer" in lim.admit("a")  # again too soon
    assert lim.admit("b") is None
    assert "in progress" in lim.admit("c")  # two at once already
    lim.release()
    assert lim.admit("c") is None
    lim.release()
    lim.release()
    assert "a minute" in lim.admit("d")  # three in the last minute
    clock.t += 30.0
    assert "a minute" in lim.admit("a")  # per peer ok now, the minute not yet
    clock.t += 30.0
    assert lim.admit("a") is None  # the window slid past the first three
    assert lim.active == 1
    lim.release()
    lim.release()  # never below zero
    assert lim.active == 0


def test_limiter_forgets_old_peers_and_bounds_memory():
    clock = Clock()
    lim = DialbackLimiter(per_minute=10**6, per_peer_s=10.0, concurrent=10**6, clock=clock,
                          max_peers=3)
    for p in "abc":
        assert lim.admit(p) is None
    assert "too many peers" in lim.admit("d")
    clock.t += 10.0
    assert lim.admit("d") is None  # a, b, c forgotten
    assert len(lim._last) == 1


@pytest.mark.parametrize("addrs, observed, want", [
    (["/ip4/1.2.3.4/tcp/4601"], "1.2.3.4", ["/ip4/1.2.3.4/tcp/4601"]),
    (["/ip4/1.2.3.4/tcp/4601/p2p/" + PEER], "1.2.3.4", ["/ip4/1.2.3.4/tcp/4601/p2p/" + PEER]),
    (["/ip4/1.2.3.4/tcp/4601"], "5.6.7.8", []),  # never a third party
    (["/ip4/1.2.3.4/tcp/4601"], None, []),  # relayed: no observed IP
    (["/ip4/1.2.3.4/udp/4601/quic-v1"], "1.2.3.4", []),  # TCP only
    ([f"/ip4/1.2.3.4/tcp/4601/p2p/{RELAY}/p2p-circuit/p2p/{PEER}"], "1.2.3.4", []),
    (["garbage", "/ip4/1.2.3.4/tcp/1"], "1.2.3.4", ["/ip4/1.2.3.4/tcp/1"]),
    (["/ip6/::1/tcp/4601"], "::1", ["/ip6/::1/tcp/4601"]),
    ([f"/ip4/1.2.3.4/tcp/{p}" for p in range(1, 20)], "1.2.3.4",
     [f"/ip4/1.2.3.4/tcp/{p}" for p in range(1, MAX_ADDRS + 1)]),  # bounded
])
def test_dialable_only_the_requesters_own_ip(addrs, observed, want):
    assert dialable(addrs, observed) == want


def test_request_round_trip_is_bounded():
    addrs = [f"/ip4/1.2.3.4/tcp/{p}" for p in range(20)]
    assert decode_request(encode_request(addrs)) == addrs[:MAX_ADDRS]
    assert decode_request(b"") == []
    assert decode_request(b"\n\n/ip4/1.2.3.4/tcp/1\n") == ["/ip4/1.2.3.4/tcp/1"]


@pytest.mark.parametrize("addr, want", [
    (f"/ip4/1.2.3.4/tcp/4601/p2p/{RELAY}/p2p-circuit/p2p/{PEER}", (RELAY, PEER)),
    (f"/p2p/{RELAY}/p2p-circuit/p2p/{PEER}", (RELAY, PEER)),
    (f"/ip4/1.2.3.4/tcp/4601/p2p/{PEER}", None),
    (f"/ip4/1.2.3.4/tcp/4601/p2p-circuit/p2p/{PEER}", None),  # no relay named
    (f"/ip4/1.2.3.4/tcp/4601/p2p/{RELAY}/p2p-circuit", None),  # no destination
    (f"/p2p/nonsense/p2p-circuit/p2p/{PEER}", None),
])
def test_relay_of(addr, want):
    got = relay_of(addr)
    assert (None if got is None else (got[0].to_base58(), got[1].to_base58())) == want


def _ma(addrs):
    return [multiaddr.Multiaddr(a) for a in addrs]


def test_announce_is_honoured_and_wildcards_become_interface_addresses():
    listen = _ma(["/ip4/0.0.0.0/tcp/4601"])
    got = [str(a) for a in announced(NetConfig(), listen)]
    assert got and all(a.startswith("/ip4/") and a.endswith("/tcp/4601") for a in got)
    assert "/ip4/0.0.0.0/tcp/4601" not in got
    assert got[-1] == "/ip4/127.0.0.1/tcp/4601"  # loopback last
    cfg = NetConfig(announce=("/dns4/node.example/tcp/4601", "/ip4/203.0.113.5/tcp/4601"))
    assert [str(a) for a in announced(cfg, listen)] == list(cfg.announce)
    specific = _ma(["/ip4/10.0.0.2/tcp/4601", "/ip4/10.0.0.2/tcp/4601"])
    assert [str(a) for a in announced(NetConfig(), specific)] == ["/ip4/10.0.0.2/tcp/4601"]
    many = _ma([f"/ip4/10.0.0.{i}/tcp/1" for i in range(1, 40)])
    assert len(announced(NetConfig(), many)) == 12  # room for relay addresses in 16


async def test_prober_asks_soon_backs_off_on_refusals_and_rechecks_rarely(mock_clock):
    """Virtual time: a check as soon as a peer is connected; while peers only refuse,
    again after 10, 20, 40 ... s (at most 300 s); once one answered, every 300 s."""
    import trio

    from meca_node.net.reachability import RECHECK_S, Prober

    asked: list[tuple[float, str]] = []
    answer = {"kind": "refused"}

    async def ask(peer, addrs):
        asked.append((trio.current_time(), peer))
        return Answer(peer, answer["kind"], "x")

    peers: list[str] = []
    prober = Prober(ask, lambda: list(peers), lambda: ["/ip4/1.2.3.4/tcp/1"], Reachability())
    async with trio.open_nursery() as nursery:
        await nursery.start(prober.run)
        await trio.sleep(30)
        assert asked == []  # nobody to ask
        peers.extend(["a", "b", "c", "d"])
        await trio.sleep(1.5)
        assert len(asked) == 3  # three of the four at once
        start = asked[0][0]
        await trio.sleep(10 + 20 + 40 + 1)
        times = sorted({round(t - start) for t, _ in asked})
        assert times == [0, 10, 30, 70], times  # backing off
        assert prober.state.status([]) == "unknown"
        answer["kind"] = "ok"
        await trio.sleep(80 + 1)
        assert prober.state.status([]) == "public"
        first_ok = asked[-1][0]
        n = len(asked)
        await trio.sleep(RECHECK_S - 5)
        assert len(asked) == n  # nothing until the recheck
        await trio.sleep(10)
        assert len(asked) == n + 3 and asked[-1][0] - first_ok == pytest.approx(RECHECK_S, abs=1)
        nursery.cancel_scope.cancel()
