"""Schema versions and migrations of the data dir and of its SQLite databases."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys

import pytest

from meca_node.store.jobs_db import JobsDB
from meca_node.store.ledger_db import LedgerDB
from meca_node.store.schema import (
    DATA_DIR_SCHEMA, VERSION_FILE, SchemaError, SchemaTooNew, migrate_sqlite, open_data_dir,
    read_data_dir_version,
)


def test_a_new_dir_is_stamped_with_the_current_schema(tmp_path):
    data = tmp_path / "new"
    assert open_data_dir(data) == []
    assert read_data_dir_version(data) == DATA_DIR_SCHEMA
    assert open_data_dir(data) == []  # again: nothing to do


def test_an_unversioned_dir_with_files_is_migrated_step_by_step_and_keeps_them(tmp_path):
    (tmp_path / "node.key").write_bytes(b"k" * 32)
    steps = []
    migrations = (lambda d: steps.append(("baseline", sorted(p.name for p in d.iterdir()))),
                  lambda d: (d / "moved").write_text("v2"))
    assert open_data_dir(tmp_path, migrations) == [0, 1]
    assert steps == [("baseline", ["node.key"])]
    assert (tmp_path / "node.key").read_bytes() == b"k" * 32
    assert (tmp_path / "moved").read_text() == "v2"
    assert read_data_dir_version(tmp_path) == 2


def test_a_crash_between_migrations_resumes_at_the_recorded_version(tmp_path):
    (tmp_path / "ledger.sqlite3").write_bytes(b"")

    def crash(_):
        raise RuntimeError("power cut")

    with pytest.raises(RuntimeError):
        open_data_dir(tmp_path, (lambda d: None, crash))
    assert read_data_dir_version(tmp_path) == 1  # the first step is recorded
    ran = []
    assert open_data_dir(tmp_path, (lambda d: ran.append(0), lambda d: ran.append(1))) == [1]
    assert ran == [1]


def test_a_dir_of_a_newer_meca_node_is_refused_untouched(tmp_path):
    (tmp_path / VERSION_FILE).write_text(json.dumps({"schema": DATA_DIR_SCHEMA + 1}))
    before = (tmp_path / VERSION_FILE).read_bytes()
    with pytest.raises(SchemaTooNew, match=r"newer meca-node .*Upgrade meca-node"):
        open_data_dir(tmp_path)
    assert (tmp_path / VERSION_FILE).read_bytes() == before


def test_an_unreadable_version_record_names_the_file(tmp_path):
    (tmp_path / VERSION_FILE).write_text("{not json")
    with pytest.raises(SchemaError, match=VERSION_FILE):
        open_data_dir(tmp_path)


def test_sqlite_migrations_run_once_each_in_order(tmp_path):
    path = tmp_path / "t.sqlite3"
    db = sqlite3.connect(path, isolation_level=None)
    steps = ("CREATE TABLE t (a INTEGER);", "ALTER TABLE t ADD COLUMN b TEXT DEFAULT 'x';")
    assert migrate_sqlite(db, path, steps[:1]) == 0
    db.execute("INSERT INTO t (a) VALUES (1)")
    assert migrate_sqlite(db, path, steps) == 1
    assert db.execute("SELECT a, b FROM t").fetchall() == [(1, "x")]
    assert db.execute("PRAGMA user_version").fetchone()[0] == 2
    assert migrate_sqlite(db, path, steps) == 2  # nothing left to do


def test_a_failed_sqlite_migration_changes_nothing(tmp_path):
    path = tmp_path / "t.sqlite3"
    db = sqlite3.connect(path, isolation_level=None)
    migrate_sqlite(db, path, ("CREATE TABLE t (a INTEGER);",))
    with pytest.raises(sqlite3.Error):
        migrate_sqlite(db, path, ("CREATE TABLE t (a INTEGER);",
                                  "CREATE TABLE u (a); INSERT INTO nowhere VALUES (1);"))
    assert not db.in_transaction
    assert db.execute("PRAGMA user_version").fetchone()[0] == 1
    assert db.execute("SELECT name FROM sqlite_master WHERE name = 'u'").fetchone() is None


@pytest.mark.parametrize("store", [LedgerDB, JobsDB])
def test_the_node_databases_take_an_unversioned_file_and_refuse_a_newer_one(tmp_path, store):
    with store(tmp_path) as s:  # as an older release left it: tables, no version
        path = s.path
    db = sqlite3.connect(path)
    db.execute("PRAGMA user_version = 0")
    db.close()
    with store(tmp_path):
        pass
    db = sqlite3.connect(path)
    current = len(sys.modules[store.__module__]._MIGRATIONS)  # baseline, then each step
    assert db.execute("PRAGMA user_version").fetchone()[0] == current
    db.execute("PRAGMA user_version = 99")
    db.close()
    with pytest.raises(SchemaTooNew, match=r"schema 99"):
        store(tmp_path)


def test_start_refuses_a_data_dir_of_a_newer_meca_node(tmp_path):
    (tmp_path / VERSION_FILE).write_text(json.dumps({"schema": DATA_DIR_SCHEMA + 5}))
    r = subprocess.run([sys.executable, "-m", "meca_node", "start", "--data-dir",
                        str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2, r.stderr
    assert "newer meca-node" in r.stderr and "Upgrade meca-node" in r.stderr, r.stderr
    assert not (tmp_path / "node.key").exists()  # nothing was written
