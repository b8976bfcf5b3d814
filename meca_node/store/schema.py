"""Schema versions of what a node keeps on disk, and the migrations between them.

Two levels:

* the data dir as a whole: ``data-version.json`` (``{"schema": N, "written_by": ...}``),
  checked before the node touches anything else in the dir;
* each SQLite database: its ``PRAGMA user_version``.

A migration takes version ``i`` to ``i + 1``. Version 1 is the baseline: the layout of the
first versioned release, reached from an unversioned (older) dir or database by creating
what is missing and stamping the version. A dir or database written by a *newer* meca-node
is never touched: opening it fails with :class:`SchemaTooNew`, naming both versions and
what to do, so an older binary cannot damage what a newer one wrote.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Sequence
from pathlib import Path

from meca_node import __version__
from meca_node.store.files import atomic_write

VERSION_FILE = "data-version.json"

#: migrations of the data dir: entry i takes schema i to i + 1 (a no-op baseline first)
DataDirMigration = Callable[[Path], None]


class SchemaTooNew(Exception):
    """What is on disk was written by a newer meca-node than this one."""


class SchemaError(Exception):
    """The version record on disk cannot be read; the message says which file."""


def _baseline(_: Path) -> None:
    """Version 0 -> 1: the dir of a release before versioning is already the v1 layout."""


DATA_DIR_MIGRATIONS: tuple[DataDirMigration, ...] = (_baseline,)
DATA_DIR_SCHEMA = len(DATA_DIR_MIGRATIONS)


def read_data_dir_version(data_dir: Path) -> int | None:
    """The data dir's schema version; None when it has no version record."""
    path = data_dir / VERSION_FILE
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise SchemaError(f"{path} cannot be read ({exc}); restore it from a backup, or "
                          f"write {{\"schema\": {DATA_DIR_SCHEMA}}} if this meca-node wrote "
                          "the dir") from None
    version = doc.get("schema") if isinstance(doc, dict) else None
    if type(version) is not int or version < 0:
        raise SchemaError(f"{path} holds no schema version (got {doc!r})")
    return version


def open_data_dir(data_dir: Path,
                  migrations: Sequence[DataDirMigration] = DATA_DIR_MIGRATIONS) -> list[int]:
    """Create or upgrade ``data_dir`` to the current schema; the versions migrated from.

    A new (missing or empty) dir is stamped at once. A dir with files but no record is
    from before versioning (version 0). Each migration is applied and recorded in turn,
    so a crash between two leaves the dir at a known version and the next start goes on.
    """
    target = len(migrations)
    data_dir.mkdir(parents=True, exist_ok=True)
    have = read_data_dir_version(data_dir)
    if have is None:
        have = 0 if any(data_dir.iterdir()) else target
        if have == target:
            _stamp(data_dir, target)
    if have > target:
        raise SchemaTooNew(
            f"the data dir {data_dir} was written by a newer meca-node (data schema {have}; "
            f"this meca-node {__version__} knows up to {target}). Upgrade meca-node, or "
            "start with another --data-dir; nothing in this dir was changed.")
    done = []
    for version in range(have, target):
        migrations[version](data_dir)
        _stamp(data_dir, version + 1)
        done.append(version)
    return done


def _stamp(data_dir: Path, version: int) -> None:
    atomic_write(data_dir / VERSION_FILE, json.dumps(
        {"schema": version, "written_by": f"meca-node {__version__}"}).encode() + b"\n")


def migrate_sqlite(db: sqlite3.Connection, path: Path, migrations: Sequence[str]) -> int:
    """Bring the database ``db`` (at ``path``) to version ``len(migrations)``.

    Migration i is a SQL script taking ``user_version`` i to i + 1, run in one
    transaction with the version bump, so it is applied wholly or not at all. Returns the
    version found. A database of a newer meca-node raises :class:`SchemaTooNew`.
    """
    have = db.execute("PRAGMA user_version").fetchone()[0]
    target = len(migrations)
    if have > target:
        raise SchemaTooNew(
            f"{path} was written by a newer meca-node (schema {have}; this meca-node "
            f"{__version__} knows up to {target}). Upgrade meca-node; the file was not "
            "changed.")
    for version in range(have, target):
        try:
            db.executescript(f"BEGIN IMMEDIATE;\n{migrations[version]}\n"
                             f"PRAGMA user_version = {version + 1};\nCOMMIT;")
        except sqlite3.Error:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
    return have
