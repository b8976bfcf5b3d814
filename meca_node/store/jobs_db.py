"""The client's job history: ``<data_dir>/jobs.sqlite3`` and ``<data_dir>/jobs/<id>/``.

**What is kept.** One row per job this node ran for its user (``jobs``): a local id (16
random hex digits; any unique prefix names it, as in git), the task reference and offer
label, the input size and max price, the state, the provider, what was paid and the
receipt, the error, the times. ``events`` is each job's timeline: ``(time, stage, percent,
detail)``; a stage repeated back to back (a pull reports every second) is one event whose
``repeats`` counts it and whose ``last`` says when it was last seen. The output is the file
``jobs/<id>/output``, the app's log ``jobs/<id>/log``.

**States.** ``queued`` (stored, not on a provider yet) -> ``running`` -> ``done``,
``failed`` or ``cancelled``. A job the node was running when it stopped is ``interrupted``:
:meth:`JobsDB.recover` marks those at the next start (a crash), the node itself on a
clean stop.

**Nothing lost on a crash.** :meth:`JobsDB.create` commits (fsynced, WAL with
``synchronous=FULL``) before the job starts; :meth:`JobsDB.finish` writes the output and
log files atomically (temp file, fsync, rename) before the row says ``done``. Timeline
events are committed without fsync (``NORMAL``: safe against a killed process; the next
durable commit makes them durable too).

**Bounds.** The newest ``max_jobs`` jobs (default 10,000) are kept: older finished rows,
their events and files are deleted when a job is added. At most ``max_events`` events
per job (default 200; the first is kept, the oldest of the rest go, and the row counts
them in ``events_dropped``). Outputs take at most ``max_output_bytes`` (default 2 GiB) in
all: the oldest outputs are deleted past it (their rows stay, ``output_kept`` false).
Texts are cut to fixed lengths.

The class is synchronous and thread-safe (one connection behind a lock); the node calls it
from worker threads (``trio.to_thread``) so that no fsync blocks its event loop.
"""

from __future__ import annotations

import re
import secrets
import shutil
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from meca_node.store.files import atomic_write
from meca_node.store.schema import migrate_sqlite

FILE = "jobs.sqlite3"
DIR = "jobs"
MAX_JOBS = 10_000
MAX_EVENTS = 200
MAX_OUTPUT_BYTES = 2 << 30
MAX_LOG = 16 * 1024  # what a provider sends of the app's log; more is cut (the end kept)
MAX_TEXT = 512  # an event's detail, a task reference
MAX_ERROR = 4096

STATES = ("queued", "running", "done", "failed", "cancelled", "interrupted")
FINAL = frozenset(("done", "failed", "cancelled", "interrupted"))
#: a recovered job's error: why, and what the user can do
INTERRUPTED = ("interrupted: the node stopped{how} while the job was {state}; its outcome is "
               "unknown. If it was paid, the receipt is in `meca-node wallet history`; run "
               "it again with `meca-node run`")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    seq            INTEGER PRIMARY KEY AUTOINCREMENT,  -- creation order
    id             TEXT    NOT NULL UNIQUE,            -- 16 hex digits
    task           TEXT    NOT NULL,                   -- as the user named it
    offer          TEXT    NOT NULL DEFAULT '',        -- the offer's label, when it was known
    input_size     INTEGER NOT NULL,
    max_price      INTEGER NOT NULL DEFAULT 0,
    detached       INTEGER NOT NULL DEFAULT 0,
    state          TEXT    NOT NULL,
    provider       TEXT    NOT NULL DEFAULT '',
    price          INTEGER NOT NULL DEFAULT 0,
    paid           INTEGER NOT NULL DEFAULT 0,         -- price + fee signed over
    receipt        TEXT    NOT NULL DEFAULT '',        -- hex hash of our receipt entry
    wire_job       TEXT    NOT NULL DEFAULT '',        -- the job id on the wire (hex)
    error          TEXT    NOT NULL DEFAULT '',        -- "reason: detail"
    output_size    INTEGER,                            -- NULL: no output
    output_kept    INTEGER NOT NULL DEFAULT 0,
    log_size       INTEGER NOT NULL DEFAULT 0,
    seconds        REAL,
    pull_seconds   REAL,
    events_dropped INTEGER NOT NULL DEFAULT 0,
    created        REAL    NOT NULL,                   -- unix seconds
    finished       REAL
);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs (state);
CREATE TABLE IF NOT EXISTS events (
    job     TEXT    NOT NULL,
    n       INTEGER NOT NULL,                          -- order within the job
    time    REAL    NOT NULL,                          -- first seen
    last    REAL    NOT NULL,                          -- last seen (repeats)
    stage   TEXT    NOT NULL,
    percent INTEGER NOT NULL,
    detail  TEXT    NOT NULL,
    repeats INTEGER NOT NULL DEFAULT 1,
    PRIMARY KEY (job, n)
) WITHOUT ROWID;
"""
#: schema migrations (``store.schema.migrate_sqlite``): entry i takes version i to i + 1;
#: version 1 is the baseline (an unversioned database of an older release already has it)
_MIGRATIONS = (
    _SCHEMA,
    # version 2: the kept outputs in age order, so pruning them reads only what goes
    "CREATE INDEX IF NOT EXISTS jobs_kept ON jobs (output_kept, seq);",
)


_COLUMNS = ("id", "task", "offer", "input_size", "max_price", "detached", "state", "provider",
            "price", "paid", "receipt", "wire_job", "error", "output_size", "output_kept",
            "log_size", "seconds", "pull_seconds", "events_dropped", "created", "finished")
#: hex digits of a job id
ID_DIGITS = 16
_ID = re.compile(r"[0-9a-f]{1,%d}" % ID_DIGITS)


class JobNotFound(LookupError):
    """No job, or more than one, matches the id or prefix given; the message says which
    and how to find ids."""


@dataclass(frozen=True, slots=True)
class JobRecord:
    id: str
    task: str
    offer: str
    input_size: int
    max_price: int
    detached: bool
    state: str
    provider: str
    price: int
    paid: int
    receipt: str
    wire_job: str
    error: str
    output_size: int | None
    output_kept: bool
    log_size: int
    seconds: float | None
    pull_seconds: float | None
    events_dropped: int
    created: float
    finished: float | None

    def to_json(self) -> dict:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class Event:
    time: float
    last: float
    stage: str
    percent: int
    detail: str
    repeats: int

    def to_json(self) -> dict:
        return asdict(self)


#: one timeline event as the node notes it: (time, stage, percent, detail)
NewEvent = tuple[float, str, int, str]


class JobsDB:
    """``JobsDB(data_dir)``: open (or create) the history; ``close()`` after."""

    def __init__(self, data_dir: Path, *, max_jobs: int = MAX_JOBS,
                 max_events: int = MAX_EVENTS, max_output_bytes: int = MAX_OUTPUT_BYTES,
                 clock: Callable[[], float] = time.time) -> None:
        data_dir.mkdir(parents=True, exist_ok=True)
        self.path = data_dir / FILE
        self.dir = data_dir / DIR
        self.max_jobs = max_jobs
        self.max_events = max(2, max_events)
        self.max_output_bytes = max_output_bytes
        self.clock = clock
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        migrate_sqlite(self._db, self.path, _MIGRATIONS)
        #: bytes of the outputs kept: pruning them is needed only once this passes the cap
        self._kept_bytes = self._sum_kept()

    def _sum_kept(self) -> int:
        return self._db.execute("SELECT COALESCE(SUM(output_size), 0) FROM jobs "
                                "WHERE output_kept = 1").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> JobsDB:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- writing ----------------------------------------------------------------------
    @contextmanager
    def _write(self, durable: bool = True) -> Iterator[sqlite3.Connection]:
        """One write transaction under the lock: committed (fsynced when ``durable``) at
        the end, rolled back on any error."""
        with self._lock:
            if not durable:
                self._db.execute("PRAGMA synchronous=NORMAL")
            try:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    yield self._db
                except BaseException:
                    self._db.execute("ROLLBACK")
                    self._kept_bytes = self._sum_kept()  # as the table says again
                    raise
                self._db.execute("COMMIT")
            finally:
                if not durable:
                    self._db.execute("PRAGMA synchronous=FULL")

    def create(self, task: str, offer: str, input_size: int, max_price: int = 0,
               detached: bool = False) -> JobRecord:
        """A new ``queued`` job with its first event (``submitted``), committed durably
        before this returns; the oldest finished jobs past ``max_jobs`` are deleted."""
        now = self.clock()
        detail = f"{task[:MAX_TEXT]}: {input_size} bytes of input, max price {max_price}"
        with self._write() as db:
            job_id = self._fresh_id()
            db.execute("INSERT INTO jobs (id, task, offer, input_size, max_price, detached, "
                       "state, created) VALUES (?, ?, ?, ?, ?, ?, 'queued', ?)",
                       (job_id, task[:MAX_TEXT], offer[:MAX_TEXT], input_size, max_price,
                        int(detached), now))
            self._append(job_id, [(now, "submitted", 0, detail)])
            gone = self._prune_jobs()
        for old in gone:
            shutil.rmtree(self.dir / old, ignore_errors=True)
        return self.get(job_id)

    def add_events(self, job_id: str, events: Iterable[NewEvent], state: str | None = None
                   ) -> None:
        """Append timeline events (a stage repeated back to back is counted on its event)
        and, with ``state``, move a job that is not finished yet to it. Committed without
        fsync (see the module doc)."""
        with self._write(durable=False) as db:
            self._append(job_id, events)
            if state is not None:
                db.execute("UPDATE jobs SET state = ? WHERE id = ? AND state IN "
                           "('queued', 'running')", (state, job_id))

    def finish(self, job_id: str, state: str, *, output: bytes | None = None,
               log: bytes = b"", error: str = "", provider: str = "", price: int = 0,
               paid: int = 0, receipt: str = "", wire_job: str = "",
               seconds: float | None = None, pull_seconds: float | None = None,
               events: Iterable[NewEvent] = ()) -> JobRecord:
        """End a job: its output and log files first (atomically), then its row and last
        events in one durable commit. The oldest outputs past ``max_output_bytes`` go."""
        if state not in FINAL:
            raise ValueError(f"{state!r} is not a final state ({', '.join(sorted(FINAL))})")
        folder = self.dir / job_id
        if output is not None:
            atomic_write(folder / "output", output)
        log = log[-MAX_LOG:]
        if log:
            atomic_write(folder / "log", log)
        with self._write() as db:
            self._append(job_id, events)
            cur = db.execute(
                "UPDATE jobs SET state = ?, error = ?, provider = ?, price = ?, paid = ?, "
                "receipt = ?, wire_job = ?, output_size = ?, output_kept = ?, log_size = ?, "
                "seconds = ?, pull_seconds = ?, finished = ? WHERE id = ?",
                (state, error[:MAX_ERROR], provider[:MAX_TEXT], price, paid,
                 receipt[:MAX_TEXT], wire_job[:MAX_TEXT],
                 None if output is None else len(output), int(output is not None), len(log),
                 seconds, pull_seconds, self.clock(), job_id))
            if not cur.rowcount:
                raise JobNotFound(f"no job {job_id} in the history to finish")
            self._kept_bytes += 0 if output is None else len(output)
            dropped = self._prune_outputs()
        for old in dropped:
            (self.dir / old / "output").unlink(missing_ok=True)
        return self.get(job_id)

    def recover(self) -> list[str]:
        """At the node's start: every job left ``queued`` or ``running`` (the node was
        killed or crashed) becomes ``interrupted``, with an error that says so and what to
        do, and an event. Their ids."""
        now = self.clock()
        with self._write() as db:
            rows = db.execute("SELECT id, state FROM jobs WHERE state IN "
                              "('queued', 'running') ORDER BY seq").fetchall()
            for job_id, state in rows:
                error = INTERRUPTED.format(how=" (it was killed or crashed)", state=state)
                db.execute("UPDATE jobs SET state = 'interrupted', error = ?, finished = ? "
                           "WHERE id = ?", (error, now, job_id))
                self._append(job_id, [(now, "interrupted", 0,
                                       "found unfinished at the node's start")])
        return [job_id for job_id, _ in rows]

    def _fresh_id(self) -> str:
        for _ in range(8):  # a clash of 64 random bits is not expected even once
            job_id = secrets.token_hex(ID_DIGITS // 2)
            if self._db.execute("SELECT 1 FROM jobs WHERE id = ?", (job_id,)).fetchone() is None:
                return job_id
        raise RuntimeError("could not draw a job id that is not taken")

    def _append(self, job_id: str, events: Iterable[NewEvent]) -> None:
        """Events into the open transaction, coalesced and bounded per job."""
        db = self._db
        for t, stage, percent, detail in events:
            stage, detail = stage[:64], detail[:MAX_TEXT]
            last = db.execute("SELECT n, stage FROM events WHERE job = ? ORDER BY n DESC "
                              "LIMIT 1", (job_id,)).fetchone()
            if last is not None and last[1] == stage:
                db.execute("UPDATE events SET last = ?, percent = ?, detail = ?, "
                           "repeats = repeats + 1 WHERE job = ? AND n = ?",
                           (t, percent, detail, job_id, last[0]))
                continue
            n = 0 if last is None else last[0] + 1
            db.execute("INSERT INTO events VALUES (?, ?, ?, ?, ?, ?, ?, 1)",
                       (job_id, n, t, t, stage, percent, detail))
            count = db.execute("SELECT count(*) FROM events WHERE job = ?",
                               (job_id,)).fetchone()[0]
            if count > self.max_events:  # keep the first; drop the oldest of the rest
                db.execute("DELETE FROM events WHERE job = ? AND n = (SELECT n FROM events "
                           "WHERE job = ? AND n > (SELECT min(n) FROM events WHERE job = ?) "
                           "ORDER BY n LIMIT 1)", (job_id, job_id, job_id))
                db.execute("UPDATE jobs SET events_dropped = events_dropped + 1 WHERE id = ?",
                           (job_id,))

    def _prune_jobs(self) -> list[str]:
        """Delete the oldest finished jobs past ``max_jobs`` (in the open transaction);
        their ids, whose folders the caller removes after the commit."""
        total = self._db.execute("SELECT count(*) FROM jobs").fetchone()[0]
        if total <= self.max_jobs:
            return []
        old = self._db.execute(
            "SELECT id, output_kept, output_size FROM jobs WHERE state NOT IN "
            "('queued', 'running') ORDER BY seq LIMIT ?", (total - self.max_jobs,)).fetchall()
        for job_id, kept, size in old:
            self._db.execute("DELETE FROM events WHERE job = ?", (job_id,))
            self._db.execute("DELETE FROM jobs WHERE id = ?", (job_id,))
            if kept:
                self._kept_bytes -= size or 0
        return [job_id for job_id, _, _ in old]

    def _prune_outputs(self) -> list[str]:
        """Mark the oldest kept outputs as gone while they take more than
        ``max_output_bytes`` in all (the newest is always kept); their ids, whose output
        files the caller deletes after the commit. Reads nothing while under the cap, and
        only the outputs that go when over it."""
        if self._kept_bytes <= self.max_output_bytes:
            return []
        newest = self._db.execute(
            "SELECT max(seq) FROM jobs WHERE output_kept = 1").fetchone()[0]
        gone = []
        for seq, job_id, size in self._db.execute(
                "SELECT seq, id, output_size FROM jobs WHERE output_kept = 1 ORDER BY seq"):
            if self._kept_bytes <= self.max_output_bytes or seq == newest:
                break
            gone.append(job_id)
            self._kept_bytes -= size or 0
        for job_id in gone:
            self._db.execute("UPDATE jobs SET output_kept = 0 WHERE id = ?", (job_id,))
        return gone

    # -- reading ----------------------------------------------------------------------
    def get(self, ref: str) -> JobRecord:
        """The job whose id is ``ref`` or starts with it; JobNotFound when none or several
        do (the message lists them and says how to find ids)."""
        ref = ref.strip().lower()
        if not _ID.fullmatch(ref):
            raise JobNotFound(f"{ref!r} is not a job id: ids are 16 hex digits (a unique "
                              "prefix will do); `meca-node job list` shows them")
        exact = len(ref) == ID_DIGITS  # a whole id: the index, not a scan of the history
        with self._lock:
            rows = self._db.execute(
                f"SELECT {', '.join(_COLUMNS)} FROM jobs WHERE "
                + ("id = ?" if exact else "id LIKE ? ORDER BY seq DESC LIMIT 6"),
                (ref if exact else ref + "%",)).fetchall()
        if not rows:
            raise JobNotFound(f"no job {ref} in this node's history (`meca-node job list` "
                              f"shows the ids; the history keeps the newest {self.max_jobs} "
                              "jobs)")
        if len(rows) > 1:
            names = ", ".join(r[0] for r in rows[:5]) + (", ..." if len(rows) > 5 else "")
            raise JobNotFound(f"{ref} is the start of several job ids ({names}); give more "
                              "of the id")
        return _record(rows[0])

    def recent(self, limit: int = 20, state: str | None = None) -> list[JobRecord]:
        """The newest ``limit`` jobs (of ``state``), newest first."""
        if state is not None and state not in STATES:
            raise ValueError(f"unknown state {state!r}; states: {', '.join(STATES)}")
        where, args = ("WHERE state = ?", (state,)) if state else ("", ())
        with self._lock:
            rows = self._db.execute(
                f"SELECT {', '.join(_COLUMNS)} FROM jobs {where} ORDER BY seq DESC LIMIT ?",
                (*args, max(0, min(limit, self.max_jobs)))).fetchall()
        return [_record(r) for r in rows]

    def count(self) -> int:
        with self._lock:
            return self._db.execute("SELECT count(*) FROM jobs").fetchone()[0]

    def timeline(self, job_id: str) -> list[Event]:
        with self._lock:
            return [Event(*r) for r in self._db.execute(
                "SELECT time, last, stage, percent, detail, repeats FROM events WHERE job = ? "
                "ORDER BY n", (job_id,))]

    def output(self, job_id: str) -> bytes | None:
        """The stored output, or None when the job has none or it was deleted."""
        try:
            return (self.dir / job_id / "output").read_bytes()
        except FileNotFoundError:
            return None

    def log(self, job_id: str) -> bytes:
        try:
            return (self.dir / job_id / "log").read_bytes()
        except FileNotFoundError:
            return b""


def _record(row: tuple) -> JobRecord:
    values = dict(zip(_COLUMNS, row))
    values["detached"] = bool(values["detached"])
    values["output_kept"] = bool(values["output_kept"])
    return JobRecord(**values)
