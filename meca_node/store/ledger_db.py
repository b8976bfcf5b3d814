"""The ledger's entries on disk: ``<data_dir>/ledger.sqlite3``, so balances survive restarts.

**What is kept.** One table, ``entries``, of the envelopes the node's account chains took
(applied, or pending until what they wait for arrives) and the fork evidence it saw: the
second entry of a fork (its first is in the table already) and every ``FraudProof`` body it
checked (``kind`` = ``"FraudProof"``, ``account`` and ``seq`` those of the fork, ``raw`` the
proof's canonical CBOR body). Rows are unique on ``(account, seq, sha256)``: two different
entries at one seq both stay (that *is* the evidence). ``id`` is the arrival order; replaying
the rows in that order into a fresh :class:`meca_node.core.ledger.Chains` gives the same
balances, pending set and forks the node had.

**Durability.** ``add`` commits before it returns: WAL journal with ``synchronous=FULL``,
so the WAL is fsynced on every commit and a returned ``add`` survives a killed process *and*
a power loss (``NORMAL`` with WAL would survive a killed process but could lose the last
commits on power loss; a receipt must not be lost, so FULL). Rows the node can fetch again
from peers (other accounts' entries seen on gossip or fetched) may be added with
``durable=False``: committed with ``NORMAL``, no fsync, safe against a killed process, and
made durable by the next FULL commit (the WAL is one file written in order, so a durable
row never survives without the rows committed before it). One small insert plus one fsync
takes 0.2-1 ms on an SSD, and seconds on a struggling SD card. Handing it to a worker thread
(``trio.to_thread``) keeps a slow fsync off the node's event loop, but the hand-off itself
(waking a thread, then the loop again, often on an idle CPU) costs about as much as a fast
fsync. So ``add_inline`` makes the durable commit on the caller's thread while the database
is free and the recent durable commits were fast (``commit_s``, a moving average of every
durable commit's time, below ``INLINE_COMMIT_S``), and does nothing otherwise (the caller
uses ``add`` in a worker thread); one slow commit raises the average and sends the next
ones to the thread until the disk is fast again. A row without an fsync takes about 40 us:
``add_nowait`` stores it on the caller's thread when the database is free, and does nothing
when another thread holds it. The connection is made with ``check_same_thread=False`` and
guarded by a lock, so any single thread may use it at a time.

**Bounds.** At most ``max_per_account`` rows per account (default 100,000: an honest
account signs one entry per paid job, so this is years of a busy node; a key that fills it
is refused further storage) and ``max_rows`` rows in all (default 2,000,000, about 1 GiB at
worst-case entry sizes). ``add`` returns ``False`` and stores nothing when a cap is
reached; the caller must then not use the entry either (so memory and disk agree).
"""

from __future__ import annotations

import hashlib
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from meca_node.store.schema import migrate_sqlite

FILE = "ledger.sqlite3"
MAX_PER_ACCOUNT = 100_000
MAX_ROWS = 2_000_000
#: commits between two WAL checkpoints; ``add`` runs them (in a worker thread), never
#: ``add_nowait``, which leaves the work to ``add`` until 4 times as many have gone by
CHECKPOINT_EVERY = 500
#: ``add_inline`` commits on the caller's thread while durable commits average less than
#: this (a fast disk); a stall of this long on an event loop is one slow gossip message
INLINE_COMMIT_S = 0.002
#: weight of the newest durable commit in ``commit_s``
_COMMIT_WEIGHT = 0.2

_SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,  -- arrival order: replay in this order
    account BLOB    NOT NULL,                   -- the signer (32-byte Ed25519 key)
    seq     INTEGER NOT NULL,
    sha256  BLOB    NOT NULL,                   -- of raw
    kind    TEXT    NOT NULL,                   -- Receipt, Transfer, Receive or FraudProof
    raw     BLOB    NOT NULL,                   -- the whole signed envelope (a proof: its body)
    UNIQUE (account, seq, sha256)
);
"""
#: schema migrations (``store.schema.migrate_sqlite``): entry i takes version i to i + 1;
#: version 1 is the baseline (an unversioned database of an older release already has it)
_MIGRATIONS = (_SCHEMA,)



@dataclass(frozen=True, slots=True)
class Row:
    id: int
    account: bytes
    seq: int
    sha256: bytes
    kind: str
    raw: bytes


class LedgerDB:
    """``LedgerDB(data_dir)``: open (or create) the ledger database; ``close()`` after."""

    def __init__(self, data_dir: Path, *, max_per_account: int = MAX_PER_ACCOUNT,
                 max_rows: int = MAX_ROWS) -> None:
        data_dir.mkdir(parents=True, exist_ok=True)
        self.path = data_dir / FILE
        self.max_per_account = max_per_account
        self.max_rows = max_rows
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        # a checkpoint copies the WAL into the database and fsyncs it: never on an event
        # loop (``add_nowait``), so SQLite's own automatic checkpoints are off
        self._db.execute("PRAGMA wal_autocheckpoint=0")
        self._since_checkpoint = 0
        #: moving average of a durable commit's seconds (None until one is measured)
        self.commit_s: float | None = None
        migrate_sqlite(self._db, self.path, _MIGRATIONS)
        self._counts: Counter[bytes] = Counter(dict(self._db.execute(
            "SELECT account, count(*) FROM entries GROUP BY account").fetchall()))
        self._total = sum(self._counts.values())

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> LedgerDB:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- writing ----------------------------------------------------------------------
    def room_for(self, account: bytes, n: int = 1) -> bool:
        """Whether ``n`` more rows of ``account`` fit under the caps."""
        return (self._counts[account] + n <= self.max_per_account
                and self._total + n <= self.max_rows)

    def add(self, account: bytes, seq: int, kind: str, raw: bytes, durable: bool = True
            ) -> bool:
        """Store one row and commit: durable when this returns (``durable``), or only safe
        against a killed process until the next durable commit makes it durable too (the
        WAL is flushed in order). ``True`` when stored or already there; ``False`` when a
        cap refused it."""
        with self._lock:
            added = self._add(account, seq, kind, raw, durable)
            self._checkpoint_if_due()
            return added

    def add_many(self, account: bytes, rows: Sequence[tuple[int, str, bytes]]) -> bool:
        """Store rows ``(seq, kind, raw)`` of ``account`` in one durable commit (one fsync
        for all: our own entries signed together). All or none: ``False``, and nothing
        stored, when the caps cannot take them all."""
        with self._lock:
            if not self.room_for(account, len(rows)):
                return False
            start = time.perf_counter()
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for seq, kind, raw in rows:
                    self._insert(account, seq, kind, raw)
            except BaseException:
                self._db.execute("ROLLBACK")
                self._recount(account)
                raise
            self._db.execute("COMMIT")
            self._timed(time.perf_counter() - start)
            self._checkpoint_if_due()
            return True

    def _checkpoint_if_due(self) -> None:
        if self._since_checkpoint >= CHECKPOINT_EVERY:
            self._db.execute("PRAGMA wal_checkpoint(PASSIVE)")
            self._since_checkpoint = 0

    def _recount(self, account: bytes) -> None:
        """The row counts again from the table (after a rolled-back transaction)."""
        self._counts[account] = self._db.execute(
            "SELECT count(*) FROM entries WHERE account = ?", (account,)).fetchone()[0]
        self._total = self._db.execute("SELECT count(*) FROM entries").fetchone()[0]

    def _add(self, account: bytes, seq: int, kind: str, raw: bytes, durable: bool) -> bool:
        """``add`` with the lock held."""
        if not self.room_for(account):
            return False
        if durable:
            start = time.perf_counter()
            self._insert(account, seq, kind, raw)
            self._timed(time.perf_counter() - start)
            return True
        self._db.execute("PRAGMA synchronous=NORMAL")
        try:
            self._insert(account, seq, kind, raw)
        finally:
            self._db.execute("PRAGMA synchronous=FULL")
        return True

    def _timed(self, seconds: float) -> None:
        """Fold one durable commit's time into ``commit_s``."""
        last = self.commit_s
        self.commit_s = (seconds if last is None
                         else last + _COMMIT_WEIGHT * (seconds - last))

    def add_inline(self, account: bytes, seq: int, kind: str, raw: bytes) -> bool | None:
        """``add(...)`` (durable) on the caller's thread when that is cheap: the database is
        free, no checkpoint is due, and durable commits have averaged under
        ``INLINE_COMMIT_S``. Else ``None`` and nothing done (the caller uses ``add`` from a
        worker thread, which also measures the disk again)."""
        if self.commit_s is None or self.commit_s >= INLINE_COMMIT_S:
            return None
        return self._add_here(account, seq, kind, raw, durable=True,
                              checkpoint_after=CHECKPOINT_EVERY)

    def _add_here(self, account: bytes, seq: int, kind: str, raw: bytes, durable: bool,
                  checkpoint_after: int) -> bool | None:
        """``_add`` on the caller's thread if no other thread uses the database and fewer
        than ``checkpoint_after`` commits went by since the last checkpoint (``add`` runs
        it, in a worker thread); else ``None`` and nothing done."""
        if not self._lock.acquire(blocking=False):
            return None
        try:
            if self._since_checkpoint >= checkpoint_after:
                return None
            return self._add(account, seq, kind, raw, durable)
        finally:
            self._lock.release()

    def _insert(self, account: bytes, seq: int, kind: str, raw: bytes) -> None:
        cur = self._db.execute(
            "INSERT OR IGNORE INTO entries (account, seq, sha256, kind, raw) "
            "VALUES (?, ?, ?, ?, ?)", (account, seq, hashlib.sha256(raw).digest(), kind, raw))
        if cur.rowcount:
            self._counts[account] += 1
            self._total += 1
            self._since_checkpoint += 1

    def add_nowait(self, account: bytes, seq: int, kind: str, raw: bytes) -> bool | None:
        """``add(..., durable=False)`` if no other thread uses the database right now (no
        fsync, no checkpoint, no waiting: about 40 us, cheap enough for an event loop),
        else ``None`` and nothing done (the caller uses ``add`` from a worker thread)."""
        # no fsync here, so the checkpoint may wait until it is overdue
        return self._add_here(account, seq, kind, raw, durable=False,
                              checkpoint_after=4 * CHECKPOINT_EVERY)

    # -- reading ----------------------------------------------------------------------
    def rows(self) -> list[Row]:
        """Every row, in arrival order."""
        with self._lock:
            return [Row(*r) for r in self._db.execute(
                "SELECT id, account, seq, sha256, kind, raw FROM entries ORDER BY id")]

    def count(self, account: bytes | None = None) -> int:
        return self._total if account is None else self._counts[account]

    def pragmas(self) -> dict[str, object]:
        with self._lock:
            return {"journal_mode": self._db.execute("PRAGMA journal_mode").fetchone()[0],
                    "synchronous": self._db.execute("PRAGMA synchronous").fetchone()[0]}
