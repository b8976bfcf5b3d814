"""The job history (meca_node/store/jobs_db.py): states, the timeline and its bounds,
prefix resolution, crash -> interrupted, outputs written atomically and bounded."""

from __future__ import annotations

import os
import sqlite3

import pytest

from meca_node.store import jobs_db
from meca_node.store.jobs_db import JobNotFound, JobsDB


class Clock:
    def __init__(self) -> None:
        self.t = 1_700_000_000.0

    def __call__(self) -> float:
        self.t += 1
        return self.t


@pytest.fixture
def db(tmp_path):
    with JobsDB(tmp_path, clock=Clock()) as db:
        yield db


def test_a_job_goes_queued_running_done_with_its_output_log_and_payment(db, tmp_path):
    job = db.create("echo", "echo@3kJ9xQ2m", 17, max_price=5, detached=True)
    assert len(job.id) == 16 and int(job.id, 16) >= 0
    assert (job.state, job.task, job.offer, job.input_size, job.max_price, job.detached) == \
        ("queued", "echo", "echo@3kJ9xQ2m", 17, 5, True)
    assert [e.stage for e in db.timeline(job.id)] == ["submitted"]
    db.add_events(job.id, [(job.created + 1, "queued", 0, "waiting")])
    assert db.get(job.id).state == "queued"
    db.add_events(job.id, [(job.created + 2, "matched", 0, "12D3KooWx score 0.9"),
                           (job.created + 3, "running", 0, "")], state="running")
    assert db.get(job.id).state == "running"
    done = db.finish(job.id, "done", output=b"hello", log=b"app log\n", provider="12D3KooWx",
                     price=2, paid=3, receipt="ab" * 32, wire_job="cd" * 16, seconds=0.5,
                     pull_seconds=0.0, events=[(job.created + 4, "answered", 100, "5 bytes")])
    assert (done.state, done.provider, done.price, done.paid, done.receipt, done.output_size,
            done.output_kept, done.log_size) == ("done", "12D3KooWx", 2, 3, "ab" * 32, 5, True,
                                                 8)
    assert done.finished is not None and done.finished > done.created
    assert db.output(job.id) == b"hello" and db.log(job.id) == b"app log\n"
    assert (tmp_path / "jobs" / job.id / "output").read_bytes() == b"hello"
    assert [e.stage for e in db.timeline(job.id)] == ["submitted", "queued", "matched",
                                                      "running", "answered"]
    db.add_events(job.id, [], state="running")  # a late event cannot reopen a finished job
    assert db.get(job.id).state == "done"


def test_failed_and_cancelled_jobs_keep_their_error_and_have_no_output(db):
    failed = db.create("echo", "", 2)
    cancelled = db.create("echo", "", 2)
    db.finish(failed.id, "failed", error="no_fit: nothing fits", paid=0)
    db.finish(cancelled.id, "cancelled", error="cancelled: by the user")
    assert db.get(failed.id).error == "no_fit: nothing fits"
    assert db.get(cancelled.id).state == "cancelled"
    assert db.output(failed.id) is None and db.get(failed.id).output_size is None
    with pytest.raises(ValueError, match="not a final state"):
        db.finish(failed.id, "running")


def test_repeated_progress_of_a_stage_is_one_event_with_a_count(db):
    job = db.create("echo", "", 1)
    t = job.created
    db.add_events(job.id, [(t + i, "pulling", i * 10, f"{i}0%") for i in range(1, 10)])
    db.add_events(job.id, [(t + 20, "pulling", 99, "99%"), (t + 21, "running", 0, "")])
    pulling = db.timeline(job.id)[1]
    assert (pulling.stage, pulling.repeats, pulling.time, pulling.last, pulling.percent,
            pulling.detail) == ("pulling", 10, t + 1, t + 20, 99, "99%")
    assert [e.stage for e in db.timeline(job.id)] == ["submitted", "pulling", "running"]


def test_a_timeline_keeps_its_first_and_newest_events_up_to_the_cap(tmp_path):
    with JobsDB(tmp_path, max_events=5) as db:
        job = db.create("echo", "", 1)
        stages = [("queued", "matched")[i % 2] for i in range(10)]
        db.add_events(job.id, [(job.created + i, s, 0, str(i)) for i, s in enumerate(stages)])
        events = db.timeline(job.id)
        assert len(events) == 5
        assert events[0].stage == "submitted"  # the first stays
        assert [e.detail for e in events[1:]] == ["6", "7", "8", "9"]  # the newest
        assert db.get(job.id).events_dropped == 6


def test_long_texts_are_cut(db):
    job = db.create("x" * 5000, "", 1)
    assert len(job.task) == jobs_db.MAX_TEXT
    db.add_events(job.id, [(0.0, "running", 0, "d" * 5000)])
    assert len(db.timeline(job.id)[-1].detail) == jobs_db.MAX_TEXT
    done = db.finish(job.id, "failed", error="e" * 10_000, log=b"L" * 100_000)
    assert len(done.error) == jobs_db.MAX_ERROR
    assert done.log_size == jobs_db.MAX_LOG and db.log(job.id) == b"L" * jobs_db.MAX_LOG


def test_an_id_prefix_names_a_job_like_git(db):
    jobs = [db.create("echo", "", 1) for _ in range(40)]
    target = jobs[7]
    assert db.get(target.id).id == target.id
    assert db.get(target.id.upper()).id == target.id  # ids are hex: any case
    # the shortest prefix that only this id has
    for n in range(1, 17):
        if sum(j.id.startswith(target.id[:n]) for j in jobs) == 1:
            break
    assert db.get(target.id[:n]).id == target.id
    with pytest.raises(JobNotFound, match="several job ids.*give more"):
        db.get(_shared_prefix(jobs))
    unknown = next(c * 16 for c in "0123456789abcdef" if all(j.id != c * 16 for j in jobs))
    with pytest.raises(JobNotFound, match="no job .*meca-node job list"):
        db.get(unknown)
    with pytest.raises(JobNotFound, match="not a job id"):
        db.get("xyz%")  # no SQL wildcard gets through


def _shared_prefix(jobs) -> str:
    """A one-digit prefix that at least two of the ids start with."""
    firsts = [j.id[0] for j in jobs]
    return next(c for c in firsts if firsts.count(c) > 1)


def test_the_list_is_newest_first_bounded_and_filters_by_state(db):
    ids = [db.create("echo", "", i).id for i in range(5)]
    db.finish(ids[1], "done", output=b"")
    assert [j.id for j in db.recent(3)] == ids[::-1][:3]
    assert [j.id for j in db.recent(100, "done")] == [ids[1]]
    assert [j.id for j in db.recent(100, "queued")] == [i for i in ids[::-1] if i != ids[1]]
    with pytest.raises(ValueError, match="unknown state"):
        db.recent(10, "nope")


def test_the_history_keeps_the_newest_jobs_and_deletes_the_older_files(tmp_path):
    with JobsDB(tmp_path, max_jobs=3) as db:
        running = db.create("echo", "", 1)  # never deleted while it runs
        old = []
        for i in range(4):
            job = db.create("echo", "", 1)
            db.finish(job.id, "done", output=b"out %d" % i)
            old.append(job.id)
        kept = [j.id for j in db.recent(100)]
        assert running.id in kept and len(kept) == 3
        gone = [i for i in old if i not in kept]
        assert len(gone) == 2
        for job_id in gone:
            assert not (tmp_path / "jobs" / job_id).exists()
            assert db.timeline(job_id) == []
            with pytest.raises(JobNotFound):
                db.get(job_id)
        assert db.count() == 3


def test_outputs_past_the_byte_cap_are_deleted_oldest_first_the_rows_stay(tmp_path):
    with JobsDB(tmp_path, max_output_bytes=25) as db:
        ids = []
        for i in range(4):
            job = db.create("echo", "", 1)
            db.finish(job.id, "done", output=bytes([65 + i]) * 10)
            ids.append(job.id)
        kept = [db.get(i).output_kept for i in ids]
        assert kept == [False, False, True, True]
        assert db.output(ids[0]) is None and db.output(ids[3]) == b"D" * 10
        assert db.get(ids[0]).output_size == 10  # what there was is still told
        big = db.create("echo", "", 1)  # one output over the cap is still kept
        db.finish(big.id, "done", output=b"x" * 100)
        assert db.output(big.id) == b"x" * 100 and db.output(ids[3]) is None


def test_jobs_left_unfinished_by_a_crash_become_interrupted_at_the_next_start(tmp_path):
    db = JobsDB(tmp_path)
    queued = db.create("echo", "", 1)
    running = db.create("echo", "", 1)
    db.add_events(running.id, [(running.created, "running", 0, "")], state="running")
    done = db.create("echo", "", 1)
    db.finish(done.id, "done", output=b"ok")
    # a crash: the process ends without closing anything
    db2 = JobsDB(tmp_path)
    assert sorted(db2.recover()) == sorted([queued.id, running.id])
    for job_id, was in ((queued.id, "queued"), (running.id, "running")):
        job = db2.get(job_id)
        assert job.state == "interrupted" and job.finished is not None
        assert f"while the job was {was}" in job.error and "meca-node run" in job.error
        assert db2.timeline(job_id)[-1].stage == "interrupted"
    assert db2.get(done.id).state == "done" and db2.output(done.id) == b"ok"
    assert db2.recover() == []
    db.close()
    db2.close()


def test_the_output_is_written_atomically_before_the_row_says_done(tmp_path, monkeypatch):
    db = JobsDB(tmp_path)
    job = db.create("echo", "", 1)
    db.finish(job.id, "done", output=b"first")

    again = db.create("echo", "", 1)
    real_replace = os.replace

    def crash(src, dst):  # the process dies before the rename
        raise OSError("killed")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="killed"):
        db.finish(again.id, "done", output=b"x" * (1 << 20))
    monkeypatch.setattr(os, "replace", real_replace)
    assert db.get(again.id).state == "queued"  # the row never said done
    assert db.output(again.id) is None  # no half-written output under the real name
    assert db.output(job.id) == b"first"
    db.close()
    assert JobsDB(tmp_path).recover() == [again.id]


def test_the_database_is_a_plain_sqlite_file_in_wal_mode(tmp_path):
    with JobsDB(tmp_path) as db:
        db.create("echo", "", 1)
    con = sqlite3.connect(tmp_path / jobs_db.FILE)
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert con.execute("SELECT count(*) FROM jobs").fetchone()[0] == 1
    con.close()


def test_finishing_a_job_reads_no_other_job_while_outputs_are_under_the_cap(tmp_path):
    """The work per job does not grow with the history: a whole id is looked up through
    the index, and the kept outputs are read only once they pass the byte cap (then only
    those that go)."""
    with JobsDB(tmp_path, max_output_bytes=1000) as db:
        for _ in range(20):
            db.finish(db.create("echo", "", 1).id, "done", output=b"x" * 10)
        statements: list[str] = []
        db._db.set_trace_callback(statements.append)
        job = db.create("echo", "", 1)
        db.finish(job.id, "done", output=b"y" * 10)
        db._db.set_trace_callback(None)
        reads = [q for q in statements if q.startswith("SELECT")]
        assert not [q for q in reads if "LIKE" in q or "output_kept = 1" in q], reads
        plan = db._db.execute(f"EXPLAIN QUERY PLAN SELECT id FROM jobs WHERE id = '{job.id}'"
                              ).fetchall()
        assert "INDEX" in str(plan)


def test_the_output_cap_holds_across_deleted_jobs_and_a_restart(tmp_path):
    with JobsDB(tmp_path, max_jobs=3, max_output_bytes=25) as db:
        ids = []
        for i in range(6):  # the oldest jobs go, their kept outputs with them
            job = db.create("echo", "", 1)
            db.finish(job.id, "done", output=bytes([65 + i]) * 10)
            ids.append(job.id)
        assert db.count() == 3
        assert [db.get(i).output_kept for i in ids[3:]] == [False, True, True]
    with JobsDB(tmp_path, max_jobs=3, max_output_bytes=25) as db:  # counted again at start
        job = db.create("echo", "", 1)
        db.finish(job.id, "done", output=b"z" * 10)
        assert [db.get(i).output_kept for i in ids[4:]] == [False, True]
        assert db.get(job.id).output_kept and db.output(ids[4]) is None
