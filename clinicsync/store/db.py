"""The SQLite database: one file per profile, WAL, foreign keys, `BEGIN IMMEDIATE` for every write transaction.

peewee keeps one connection per thread (thread_safe=True), so worker threads and the GUI thread never share one.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from peewee import DatabaseError, DatabaseProxy, SqliteDatabase

from clinicsync.paths import ProfileFolderError

database_proxy = DatabaseProxy()

SNAPSHOT_NAME = "dry-run-snapshot.sqlite3"

PRAGMAS = (
    # Writers wait for each other instead of failing with "database is locked". First: switching a new file to
    # WAL takes a lock too, and a second ClinicSync starting at the same moment must wait for it as well.
    ("busy_timeout", 10_000),
    ("journal_mode", "wal"),
    ("foreign_keys", 1),
    ("synchronous", "normal"),
    # Copy the write-ahead log into the database once it holds ~40 MB (SQLite's default: 4 MB). A copy writes each
    # page the log holds once, however many commits wrote it: a first sync's commits keep writing the same index
    # pages, so at 20,000 patients checkpoints ten times further apart copy a quarter of the pages. The log's file
    # stays that size on disk while the database is open.
    ("wal_autocheckpoint", 10_000),
)


class ProfileDatabase(SqliteDatabase):
    """The profile's database, where one thread at a time may work on a private copy (see `private_snapshot`)."""

    def __init__(self, path: str, **kwargs: object) -> None:
        super().__init__(path, **kwargs)
        self._snapshot = threading.local()

    def _connect(self) -> sqlite3.Connection:
        snapshot = getattr(self._snapshot, "path", None)
        if snapshot is None:
            return super()._connect()
        conn = sqlite3.connect(snapshot, timeout=self._timeout, isolation_level=None, **self.connect_params)
        try:
            self._add_conn_hooks(conn)
            # A throw-away copy nobody else opens: no write-ahead log and no flush per commit. A plan commits once
            # per record it meets, and each commit to the log cost several pages written (~35 KB a record).
            conn.execute("PRAGMA journal_mode=MEMORY")
            conn.execute("PRAGMA synchronous=OFF")
        except Exception:
            conn.close()
            raise
        return conn

    @contextmanager
    def private_snapshot(self) -> Iterator[None]:
        """Point the calling thread at a throw-away copy of the database until the block ends.

        A dry run decides exactly as a real run (it records links, retries, the index) but must keep nothing.
        Rolling one long transaction back held SQLite's write lock for the whole read — minutes on a big
        clinic — so the window's own writes waited and then failed. On a copy, other threads write freely.
        Only one sync runs per profile (the profile lock), so one snapshot file name is enough.
        """
        target = Path(self.database).with_name(SNAPSHOT_NAME)
        _remove_database_files(target)  # left behind by a run that was killed
        self.execute_sql("VACUUM INTO ?", (str(target),))  # a consistent copy; a reader, so nobody waits
        self.close()  # this thread's connection; its next query opens the copy
        self._snapshot.path = str(target)
        try:
            yield
        finally:
            self.close()
            self._snapshot.path = None
            _remove_database_files(target)


class DatabaseRefused(Exception):
    """The profile's database exists but this ClinicSync must not use it (e.g. a newer version made it). The
    message names the file, says why and what to do; the file was not changed."""


# SQLite's words for "ClinicSync's own file would not take a write or cannot be read" (SQLITE_FULL; SQLITE_IOERR,
# SQLITE_READONLY, SQLITE_CANTOPEN; SQLITE_NOTADB, SQLITE_CORRUPT).
_DISK_FULL = ("database or disk is full",)
_WRITE_REFUSED = ("disk i/o error", "attempt to write a readonly database", "unable to open database file")
_DAMAGED = ("file is not a database", "database disk image is malformed")
_STORAGE_ERRORS = _DISK_FULL + _WRITE_REFUSED + _DAMAGED
NOTHING_LOST = "nothing was lost, and the next sync carries on where this one stopped"
CHANGE_NOT_SAVED = "the change you just made was not saved, so make it again afterwards"


def storage_problem(exc: BaseException, *, consequence: str = NOTHING_LOST) -> str | None:
    """A message a person can act on when `exc` means the profile's database could not be written or read
    (a full or read-only disk, a damaged file), else None.

    Nothing is lost when a write fails: a Stripe write is queued before it is sent and marked done after, and
    the cursor only moves at the end of a run, so the next sync redoes exactly what could not be recorded.
    """
    # On SQLITE_FULL SQLite rolls the transaction back itself, so peewee's own rollback then fails ("no
    # transaction is active") and that error hides the real one in its context: look along the chain.
    cause: BaseException | None = exc
    for _ in range(10):  # a chain is short; the bound only guards against a cycle
        if cause is None or _is_storage_error(cause):
            break
        cause = cause.__cause__ or cause.__context__
    if cause is None or not _is_storage_error(cause):
        return None
    if isinstance(cause, ProfileFolderError | DatabaseRefused):  # their messages already say what to do
        return str(cause)
    text = str(cause).casefold()
    file = Path(database_proxy.database) if database_proxy.obj is not None else None
    if any(words in text for words in _DAMAGED):
        return (
            f"ClinicSync's database{f' ({file})' if file else ''} is damaged ({cause}). Restore it from a backup, "
            "or move it aside and start ClinicSync again: that resets the sync history, the field mapping and "
            "the settings, and the existing Stripe customers are found again by the Cliniko id in their "
            "metadata, so none is created twice."
        )
    where = f" ({file.parent})" if file else ""
    if any(words in text for words in _DISK_FULL):
        return f"ClinicSync could not save its records{where}: the disk is full. Free some space; {consequence}."
    return (
        f"ClinicSync could not save its records{where}: the disk refused the write ({cause}). Check the "
        f"folder's permissions and the disk; {consequence}."
    )


def _is_storage_error(exc: BaseException) -> bool:
    if isinstance(exc, ProfileFolderError | DatabaseRefused):
        return True
    text = str(exc).casefold()
    return isinstance(exc, sqlite3.Error | DatabaseError) and any(e in text for e in _STORAGE_ERRORS)


def _remove_database_files(path: Path) -> None:
    for suffix in ("", "-wal", "-shm", "-journal"):
        path.with_name(path.name + suffix).unlink(missing_ok=True)


def open_database(path: Path) -> SqliteDatabase:
    """Open (creating if needed) and migrate the profile's database, and bind the models to it."""
    from clinicsync.store.migrations import migrate

    path.parent.mkdir(parents=True, exist_ok=True)
    db = ProfileDatabase(str(path), pragmas=PRAGMAS, lock_type="IMMEDIATE", thread_safe=True)
    database_proxy.initialize(db)
    db.connect(reuse_if_open=True)
    migrate(db, backup_dir=path.parent)
    return db


def backup_before_migration(db: SqliteDatabase, version: int) -> Path | None:
    """Copy the database aside before a schema change, so a failed migration can be undone by hand.

    SQLite's backup API, not a file copy: recent commits may still be in the -wal file beside it, and a copy of
    the main file alone would miss them."""
    db_file = Path(db.database)
    if not db_file.exists() or db_file.stat().st_size == 0:
        return None
    target = db_file.with_name(f"{db_file.name}.before-v{version}.bak")
    copy = sqlite3.connect(target)
    try:
        db.connection().backup(copy)
    finally:
        copy.close()
    return target
