"""The ledger database (store/ledger_db.py): round trip, replay after a restart, durability
against SIGKILL, fork evidence, caps (the node's use of it: tests/node/test_node_ledger.py)."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import textwrap

import pytest
from typing import Any

from nacl.signing import SigningKey

from meca_node import wire
from meca_node.core.ledger import Chains, Fork, entry_hash
from meca_node.node.ledger import replay
from meca_node.store import ledger_db
from meca_node.store.ledger_db import LedgerDB

TS = 1_700_000_000_000
KEYS = [SigningKey(bytes([i + 1]) * 32) for i in range(3)]
PUB = [bytes(k.verify_key) for k in KEYS]
GENESIS = wire.make_genesis("db-test", SigningKey(bytes([9]) * 32), TS,
                            [(PUB[0], 1000), (PUB[1], 500)])
NET = GENESIS.network_id
ZERO = bytes(32)


def sign(who: int, body: Any) -> wire.Envelope:
    nonce = hashlib.sha256(PUB[who] + wire.encode_body(body)).digest()[:16]
    raw = wire.seal(body, key=KEYS[who], net=NET, ts=TS, nonce=nonce)
    return wire.open_envelope(raw, max_size=len(raw))


def store(db: LedgerDB, env: wire.Envelope) -> bool:
    return db.add(env.signer, env.body.seq, env.kind, env.raw)


def history() -> list[wire.Envelope]:
    """0 pays 1 300, 1 receives it, 1 pays 2 600 (spending the receive)."""
    t = sign(0, wire.Transfer(seq=0, prev=ZERO, to=PUB[1], amount=300, memo=""))
    r = sign(1, wire.Receive(seq=0, prev=ZERO, source=entry_hash(t), payer=PUB[0],
                             payer_seq=0, amount=300))
    t2 = sign(1, wire.Transfer(seq=1, prev=entry_hash(r), to=PUB[2], amount=600, memo=""))
    return [t, r, t2]


def test_round_trip_and_settings(tmp_path):
    with LedgerDB(tmp_path) as db:
        assert db.pragmas() == {"journal_mode": "wal", "synchronous": 2}  # 2 = FULL
        envs = history()
        for env in envs:
            assert store(db, env)
        assert store(db, envs[0])  # the same again: stored once
        rows = db.rows()
        assert [r.raw for r in rows] == [e.raw for e in envs]
        assert [(r.account, r.seq, r.kind) for r in rows] == [
            (PUB[0], 0, "Transfer"), (PUB[1], 0, "Receive"), (PUB[1], 1, "Transfer")]
        assert all(r.sha256 == hashlib.sha256(r.raw).digest() for r in rows)
        assert db.count() == 3 and db.count(PUB[1]) == 2


def test_restart_replays_the_same_balances(tmp_path):
    with LedgerDB(tmp_path) as db:
        for env in history():
            store(db, env)
    with LedgerDB(tmp_path) as db:  # a new process would do just this
        chains = Chains(GENESIS)
        assert replay(chains, db.rows()) == []
        assert db.count() == 3
    assert chains.balance(PUB[0]) == 700 and chains.balance(PUB[1]) == 200
    assert chains.balance(PUB[2]) == 0 and chains.outstanding() == 600
    assert sum(chains.balances().values()) + chains.outstanding() == GENESIS.total_supply


@pytest.mark.parametrize("durable", [True, False])
def test_an_entry_survives_sigkill_right_after_add_returns(tmp_path, durable):
    env = history()[0]
    child = textwrap.dedent(f"""
        import os, sys, time
        from pathlib import Path
        from meca_node.store.ledger_db import LedgerDB
        db = LedgerDB(Path({str(tmp_path)!r}))
        db.add(bytes.fromhex({env.signer.hex()!r}), 0, "Transfer", bytes.fromhex({env.raw.hex()!r}),
               durable={durable})
        assert db.pragmas()["synchronous"] == 2  # FULL again after a NORMAL commit
        sys.stdout.write("added\\n"); sys.stdout.flush()
        time.sleep(60)
    """)
    proc = subprocess.Popen([sys.executable, "-c", child], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline() == "added\n"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=10)
    assert proc.returncode == -signal.SIGKILL
    with LedgerDB(tmp_path) as db:
        assert [r.raw for r in db.rows()] == [env.raw]


def test_fork_evidence_is_kept_and_found_again(tmp_path):
    a = sign(0, wire.Transfer(seq=0, prev=ZERO, to=PUB[1], amount=10, memo=""))
    b = sign(0, wire.Transfer(seq=0, prev=ZERO, to=PUB[2], amount=10, memo=""))
    with LedgerDB(tmp_path) as db:
        assert store(db, a) and store(db, b)  # same (account, seq), different entries
        rows = db.rows()
    assert len(rows) == 2 and rows[0].seq == rows[1].seq
    chains = Chains(GENESIS)
    faults = replay(chains, rows)
    assert chains.fork(PUB[0]) is not None
    assert any("fork" in f for f in faults)


def test_caps_refuse_rows_beyond_them(tmp_path):
    envs = history()
    with LedgerDB(tmp_path, max_per_account=1, max_rows=10) as db:
        assert store(db, envs[0]) and store(db, envs[1])
        assert not store(db, envs[2])  # account 1 has its one row
        assert not db.room_for(PUB[1]) and db.room_for(PUB[2])
    with LedgerDB(tmp_path, max_rows=2) as db:
        assert not db.room_for(PUB[2])  # counts come back from the file


def test_a_proof_of_a_fork_is_checkable_alone():
    x = sign(1, wire.Transfer(seq=0, prev=ZERO, to=PUB[0], amount=10, memo=""))
    y = sign(1, wire.Transfer(seq=0, prev=ZERO, to=PUB[2], amount=10, memo=""))
    chains = Chains(GENESIS)
    chains.add(x)
    fork = chains.add(y)
    assert isinstance(fork, Fork)
    fresh = Chains(GENESIS)
    assert fresh.mark_forked(fork) and not fresh.mark_forked(fork)
    assert fresh.fork(PUB[1]) is not None and fresh.balance(PUB[1]) == 500


def test_add_nowait_never_checkpoints_and_add_does(tmp_path, monkeypatch):
    """A checkpoint (the WAL copied into the database file, then an fsync) never runs in
    ``add_nowait``, which the node calls on its event loop, not even past SQLite's own
    automatic checkpoint (1000 pages); ``add`` runs it when due, and ``add_nowait`` hands
    over to ``add`` once one is overdue."""
    monkeypatch.setattr(ledger_db, "CHECKPOINT_EVERY", 300)
    with LedgerDB(tmp_path) as db:
        size = os.path.getsize(db.path)
        for seq in range(1200):  # a page each at least: past 1000 pages of WAL
            assert db.add_nowait(PUB[0], seq, "Transfer", os.urandom(3000)) is True
        assert os.path.getsize(db.path) == size  # all still in the WAL only
        assert db.add_nowait(PUB[0], 1200, "Transfer", os.urandom(3000)) is None
        assert db.count() == 1200
        assert db.add(PUB[0], 1200, "Transfer", os.urandom(3000), durable=False)
        assert os.path.getsize(db.path) > size + 1200 * 3000  # checkpointed into the file
        assert db.add_nowait(PUB[0], 1201, "Transfer", os.urandom(3000)) is True
        assert db.count() == 1202


def test_add_many_stores_all_rows_in_one_commit_or_none(tmp_path):
    rows = [(seq, "Receive", os.urandom(200)) for seq in range(3)]
    with LedgerDB(tmp_path, max_per_account=4) as db:
        assert db.room_for(PUB[0], 4) and not db.room_for(PUB[0], 5)
        assert db.add_many(PUB[0], rows)
        assert [r.raw for r in db.rows()] == [raw for _, _, raw in rows]
        more = [(seq, "Receive", os.urandom(200)) for seq in range(3, 5)]
        assert not db.add_many(PUB[0], more)  # 5 > 4: none of them
        assert db.count(PUB[0]) == 3 and db.add_many(PUB[0], more[:1])
    with LedgerDB(tmp_path, max_per_account=4) as db:  # durable: back after a restart
        assert db.count(PUB[0]) == 4 and not db.room_for(PUB[0])


def test_add_inline_commits_durably_only_while_commits_are_fast(tmp_path, monkeypatch):
    """``add_inline`` (a durable commit on the event loop) runs only once a durable commit
    was measured and they average under ``INLINE_COMMIT_S``; a slow average sends commits
    to ``add`` (a worker thread), whose fast commits bring the average down again. It never
    runs a due checkpoint, nor waits for another thread's use of the database."""
    monkeypatch.setattr(ledger_db, "INLINE_COMMIT_S", 1.0)
    raws = [os.urandom(300) for _ in range(40)]
    with LedgerDB(tmp_path) as db:
        assert db.commit_s is None
        assert db.add_inline(PUB[0], 0, "Transfer", raws[0]) is None  # nothing measured yet
        assert db.add(PUB[0], 0, "Transfer", raws[0]) and db.commit_s < 1.0
        assert db.add_inline(PUB[0], 1, "Transfer", raws[1]) is True
        db.commit_s = 3.0  # as after a stall of the disk
        assert db.add_inline(PUB[0], 2, "Transfer", raws[2]) is None
        seq = 2
        while db.commit_s >= 1.0 and seq < 30:  # each fast commit pulls the average down
            assert db.add(PUB[0], seq, "Transfer", raws[seq])
            seq += 1
        assert db.commit_s < 1.0 and db.add_inline(PUB[0], seq, "Transfer", raws[seq])
        seq += 1
        db._lock.acquire()  # another thread is using the database
        try:
            assert db.add_inline(PUB[0], seq, "Transfer", raws[seq]) is None
        finally:
            db._lock.release()
        monkeypatch.setattr(ledger_db, "CHECKPOINT_EVERY", db._since_checkpoint)
        assert db.add_inline(PUB[0], seq, "Transfer", raws[seq]) is None  # add() runs it
        stored = db.count()
    with LedgerDB(tmp_path) as db:  # what add_inline stored is there after a reopen
        assert db.count() == stored == seq
        assert {r.raw for r in db.rows()} == set(raws[:seq])
