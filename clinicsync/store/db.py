"""The SQLite database: one file per profile, WAL, foreign keys, `BEGIN IMMEDIATE` for every write transaction.

peewee keeps one connection per thread (thread_safe=True), so worker threads and the GUI thread never share one.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from peewee import DatabaseProxy, SqliteDatabase

database_proxy = DatabaseProxy()

PRAGMAS = (
    ("journal_mode", "wal"),
    ("foreign_keys", 1),
    # Writers wait for each other instead of failing with "database is locked".
    ("busy_timeout", 10_000),
    ("synchronous", "normal"),
)


def open_database(path: Path) -> SqliteDatabase:
    """Open (creating if needed) and migrate the profile's database, and bind the models to it."""
    from clinicsync.store.migrations import migrate

    path.parent.mkdir(parents=True, exist_ok=True)
    db = SqliteDatabase(str(path), pragmas=PRAGMAS, lock_type="IMMEDIATE", thread_safe=True)
    database_proxy.initialize(db)
    db.connect(reuse_if_open=True)
    migrate(db, backup_dir=path.parent)
    return db


def backup_before_migration(db_file: Path, version: int) -> Path | None:
    """Copy the database aside before a schema change, so a failed migration can be undone by hand."""
    if not db_file.exists() or db_file.stat().st_size == 0:
        return None
    target = db_file.with_name(f"{db_file.name}.before-v{version}.bak")
    shutil.copy2(db_file, target)
    return target
