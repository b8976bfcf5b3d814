"""The node's ledger (node/ledger.py) over a real ledger database: send, auto-receive,
overdraft refused before signing, restart, fork proofs gossiped and honoured."""

from __future__ import annotations

import hashlib

import trio
import trio.testing
from nacl.signing import SigningKey

from meca_node import wire
from meca_node.core.ledger import entry_hash
from meca_node.node.ledger import LedgerRefused, NodeLedger, Overdraft
from meca_node.store.ledger_db import LedgerDB

TS = 1_700_000_000_000
KEYS = [SigningKey(bytes([i + 1]) * 32) for i in range(3)]
PUB = [bytes(k.verify_key) for k in KEYS]
GENESIS = wire.make_genesis("node-ledger-test", SigningKey(bytes([9]) * 32), TS,
                            [(PUB[0], 1000), (PUB[1], 500)])
NET = GENESIS.network_id
ZERO = bytes(32)


def sign(who: int, body) -> wire.Envelope:
    nonce = hashlib.sha256(PUB[who] + wire.encode_body(body)).digest()[:16]
    raw = wire.seal(body, key=KEYS[who], net=NET, ts=TS, nonce=nonce)
    return wire.open_envelope(raw, max_size=len(raw))


def _publish_to(sink: list):
    async def publish(topic: str, raw: bytes) -> None:
        sink.append((topic, raw))
    return publish


def _gossiped(raw: bytes) -> list[wire.Envelope]:
    """The entries of one ``Entries`` message we published, each opened."""
    env = wire.open_envelope(raw, max_size=10**5)
    assert isinstance(env.body, wire.Entries)
    return [wire.open_envelope(e.raw, max_size=10**5) for e in env.body.entries]


def _node_ledger(db, who: int, sink: list) -> NodeLedger:
    counter = iter(range(10**6))

    def seal(body) -> wire.Envelope:
        return wire.seal_envelope(body, key=KEYS[who], net=NET, ts=TS,
                                  nonce=next(counter).to_bytes(16, "big"))

    return NodeLedger(GENESIS, PUB[who], seal, _publish_to(sink), db, receive_after_s=0)


def test_node_ledger_sends_receives_refuses_overdraft_and_survives_restart(tmp_path):
    async def main():
        sent: list = []
        with LedgerDB(tmp_path / "a") as db_a, LedgerDB(tmp_path / "b") as db_b:
            a, b = _node_ledger(db_a, 0, sent), _node_ledger(db_b, 1, sent)
            await a.load()
            await b.load()
            try:
                await a.send(PUB[1], 2000)
                raise AssertionError("overdraft signed")
            except Overdraft:
                pass
            assert sent == [] and a.next_entry() == (0, ZERO)  # nothing signed
            env = await a.send(PUB[1], 300, "hello")
            assert a.balance(PUB[0]) == 700 and sent[-1][0] == wire.TOPIC_RECEIPTS
            async with trio.open_nursery() as nursery:
                nursery.start_soon(b.auto_receive)
                await b.on_gossip(env)
                while b.balance(PUB[1]) != 800:
                    await b.changed.wait()
                nursery.cancel_scope.cancel()
            receive_env, = _gossiped(sent[-1][1])
            assert isinstance(receive_env.body, wire.Receive)
            try:  # the same payment again is not ours to claim
                await b.append_own(receive_env.body)
                raise AssertionError("received twice")
            except LedgerRefused:
                pass
            await a.on_gossip(receive_env)
            assert a.balance(PUB[1]) == 800 and a.chains.outstanding() == 0
            assert (await a.verify())["ok"] and (await b.verify())["ok"]
        with LedgerDB(tmp_path / "b") as db_b:  # restart: replay gives the same state
            b2 = _node_ledger(db_b, 1, [])
            await b2.load()
            assert b2.balance(PUB[1]) == 800 and b2.next_entry() == (1, entry_hash(receive_env))
            assert [e["kind"] for e in b2.history()] == ["Receive"]

    trio.run(main)


def test_node_ledger_gossips_a_fork_proof_and_honours_one(tmp_path):
    async def main():
        sent: list = []
        with LedgerDB(tmp_path / "a") as db_a, LedgerDB(tmp_path / "b") as db_b:
            a, c = _node_ledger(db_a, 0, sent), _node_ledger(db_b, 2, [])
            x = sign(1, wire.Transfer(seq=0, prev=ZERO, to=PUB[0], amount=10, memo=""))
            y = sign(1, wire.Transfer(seq=0, prev=ZERO, to=PUB[2], amount=10, memo=""))
            await a.on_gossip(x)
            await a.on_gossip(y)
            assert a.is_refused(PUB[1])
            (topic, raw), = sent
            proof_env = wire.open_envelope(raw, max_size=10**5)
            assert isinstance(proof_env.body, wire.FraudProof)
            await c.on_gossip(proof_env)
            assert c.is_refused(PUB[1]) and c.balance(PUB[1]) == 500  # nothing applied
            bogus = wire.FraudProof(kind="fork", account=PUB[1], first=x.raw, second=x.raw)
            assert not await c.on_proof(bogus)
            v = await a.verify()
            assert not v["ok"] and v["forks"][0]["seq"] == 0
        with LedgerDB(tmp_path / "b") as db_b:
            c2 = _node_ledger(db_b, 2, [])
            await c2.load()
            assert c2.is_refused(PUB[1])

    trio.run(main)


def test_a_bad_output_is_proven_gossiped_honoured_and_kept(tmp_path):
    async def main():
        sent: list = []
        out = b'{"ok": true}'
        commit = sign(1, wire.ResultCommit(job_id=bytes(16), size=len(out),
                                           result_sha256=hashlib.sha256(out).digest()))
        lie = sign(1, wire.JobResult(job_id=bytes(16), output=b'{"ok": false}', output_cid=""))
        with LedgerDB(tmp_path / "a") as db_a, LedgerDB(tmp_path / "b") as db_b:
            a, c = _node_ledger(db_a, 0, sent), _node_ledger(db_b, 2, [])
            gossiped = trio.Event()

            async def publish(topic: str, raw: bytes) -> None:
                sent.append((topic, raw))
                gossiped.set()
            a._publish = publish
            async with trio.open_nursery() as nursery:  # gossip runs in the background
                await nursery.start(a.announcer)
                told = await a.report_bad_output(commit, lie)
                assert told == "the fraud proof was gossiped" and a.is_cheat(PUB[1])
                with trio.fail_after(5):
                    await gossiped.wait()
                nursery.cancel_scope.cancel()
            (topic, raw), = sent
            proof_env = wire.open_envelope(raw, max_size=10**5)
            assert proof_env.body.kind == "bad_output" and topic == wire.TOPIC_RECEIPTS
            await c.on_gossip(proof_env)
            assert c.is_cheat(PUB[1]) and not c.is_refused(PUB[1])  # its chain is fine
            assert c.view()["cheats"] == [PUB[1].hex()]
            honest = sign(1, wire.JobResult(job_id=bytes(16), output=out, output_cid=""))
            assert not await c.on_proof(wire.FraudProof(
                kind="bad_output", account=PUB[1], first=commit.raw, second=honest.raw))
            assert (await c.verify())["ok"]  # a provider's lie is no fault of any chain
        with LedgerDB(tmp_path / "b") as db_b:
            c2 = _node_ledger(db_b, 2, [])
            await c2.load()
            assert c2.is_cheat(PUB[1])

    trio.run(main)


def test_the_announcer_gossips_what_waits_in_one_signed_message():
    """Entries announced while the announcer pauses go out together, once each, in one
    Entries message that we sign; an entry announced when idle goes out at once."""
    async def main():
        sent: list = []
        published = trio.Event()
        # no database: nothing runs in a thread, so the mock clock jumps only when every
        # task waits (here: on the announcer's pause)
        a = _node_ledger(None, 0, sent)
        a.announce_gap_s = 10.0

        async def publish(topic: str, raw: bytes) -> None:
            nonlocal published
            sent.append((topic, raw))
            published.set()
            published = trio.Event()
        a._publish = publish
        async with trio.open_nursery() as nursery:
            await nursery.start(a.announcer)
            first = await a.send(PUB[1], 1)
            with trio.fail_after(5):
                await published.wait()  # alone: at once, not after the gap
            assert [e.raw for e in _gossiped(sent[0][1])] == [first.raw]
            envs = [await a.send(PUB[1], 1) for _ in range(5)]
            a.announce(envs[0].raw)  # announced twice: gossiped once
            passed_on = sign(1, wire.Transfer(seq=0, prev=ZERO, to=PUB[0], amount=3,
                                              memo=""))
            a.announce(passed_on.raw)  # another's entry we pass on
            assert len(sent) == 1  # the announcer still pauses
            with trio.fail_after(15):
                await published.wait()
            nursery.cancel_scope.cancel()
        topic, raw = sent[1]
        outer = wire.open_envelope(raw, max_size=10**5)
        assert topic == wire.TOPIC_RECEIPTS and outer.signer == PUB[0]
        assert [e.raw for e in _gossiped(raw)] == [e.raw for e in envs] + [passed_on.raw]
        assert a.stats["gossip_messages"] == 2 and a.stats["gossip_entries"] == 7

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def test_payments_due_together_are_received_in_one_durable_commit(tmp_path):
    """Auto-receive signs a Receive for each payment due and stores them in one commit
    (one fsync), then gossips them; a restart replays the same chain."""
    class CountingDB(LedgerDB):
        def __init__(self, *a, **kw) -> None:
            super().__init__(*a, **kw)
            self.commits: list[int] = []

        def add_many(self, account, rows):
            self.commits.append(len(rows))
            return super().add_many(account, rows)

    async def main():
        sent: list = []
        with LedgerDB(tmp_path / "a") as db_a, CountingDB(tmp_path / "b") as db_b:
            a, b = _node_ledger(db_a, 0, sent), _node_ledger(db_b, 1, sent)
            pays = [await a.send(PUB[1], 10 + i) for i in range(7)]
            for env in pays:  # applied at b before its auto-receive runs: all due at once
                await b.on_gossip(env)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(b.auto_receive)
                with trio.fail_after(10):
                    while b.balance(PUB[1]) != 500 + sum(range(10, 17)):
                        await b.changed.wait()
                nursery.cancel_scope.cancel()
            assert db_b.commits == [7] and b.stats["auto_received"] == 7
            assert b.next_entry()[0] == 7 and not b.chains.unclaimed(PUB[1])
        with LedgerDB(tmp_path / "b") as db_b:
            b2 = _node_ledger(db_b, 1, [])
            await b2.load()
            assert b2.balance(PUB[1]) == 500 + sum(range(10, 17))
            assert [e["kind"] for e in b2.history()] == ["Receive"] * 7

    trio.run(main)


def test_the_announcer_does_not_pause_after_a_full_message():
    """A full Entries message (MAX_GOSSIP_ENTRIES entries) is followed at once by the next
    one: the pause only bounds the message rate of a node whose entries all fit, so no
    backlog builds up however fast it signs."""
    async def main():
        sent: list = []
        a = _node_ledger(None, 0, sent)
        a.announce_gap_s = 10.0

        two = trio.Event()

        async def publish(topic: str, raw: bytes) -> None:
            sent.append((topic, raw))
            if len(sent) == 2:
                two.set()
        a._publish = publish
        n = wire.MAX_GOSSIP_ENTRIES + 5
        envs = [sign(1, wire.Transfer(seq=i, prev=ZERO, to=PUB[0], amount=1, memo=""))
                for i in range(n)]
        for env in envs:  # queued before the announcer runs: they wait together
            a.announce(env.raw)
        async with trio.open_nursery() as nursery:
            await nursery.start(a.announcer)
            start = trio.current_time()
            with trio.fail_after(30):
                await two.wait()
            assert trio.current_time() - start < 1.0  # not after the 10 s pause
            nursery.cancel_scope.cancel()
        got = [[e.raw for e in _gossiped(raw)] for _, raw in sent]
        assert [len(g) for g in got] == [wire.MAX_GOSSIP_ENTRIES, 5]
        assert got[0] + got[1] == [e.raw for e in envs]

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
