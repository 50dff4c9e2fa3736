"""A first live sync's plan, kept in its own file beside the profile's database until it is carried out.

The plan run decides every record on a private copy of the database (nothing it decides is kept there); what it
decided streams into this file as it goes: one entry per record (the action, the Stripe object, the mapped payload
the approved sync sends), the index of the Stripe account it listed, and the moment its read started. The approved
sync reads the entries back a page at a time and carries them out, instead of reading every source page again.

The file holds the payloads of records not yet sent (as a queued outbox row does), so it is deleted once the plan
is carried out, refused or replaced. Nothing here knows about syncing; the engine gives the file its meaning.
"""

from __future__ import annotations

import json
import sqlite3
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SCHEMA = (
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT)",
    "CREATE TABLE IF NOT EXISTS entry (id INTEGER PRIMARY KEY, source_id TEXT NOT NULL UNIQUE, action TEXT NOT NULL, "
    "stripe_id TEXT, display_name TEXT NOT NULL DEFAULT '', message TEXT NOT NULL DEFAULT '', detail TEXT)",
    "CREATE TABLE IF NOT EXISTS stripe_index (stripe_id TEXT NOT NULL, email_hash TEXT, source_ref TEXT, "
    "display_name TEXT NOT NULL DEFAULT '', created INTEGER)",
)
PAGE = 500  # entries read back per query: the plan is streamed, never held whole
PREFIX = "plan-"
SUFFIX = ".sqlite"


@dataclass(frozen=True)
class PlanEntry:
    """What the plan decided for one record."""

    source_id: str
    action: str  # created, linked, updated, review, skipped, waiting, failed, unchanged
    stripe_id: str | None
    display_name: str
    message: str
    detail: dict[str, Any]  # payload, notes, match_value, archived (when mapped); reason, candidates (a review)


@dataclass(frozen=True)
class IndexRow:
    stripe_id: str
    email_hash: str | None
    source_ref: str | None
    display_name: str
    created: int | None


def new_path(beside: Path) -> Path:
    """A fresh plan file's path in the folder of the profile's database."""
    return beside.with_name(f"{PREFIX}{uuid.uuid4().hex}{SUFFIX}")


def plan_files(folder: Path) -> list[Path]:
    return sorted(folder.glob(f"{PREFIX}*{SUFFIX}"))


def remove(path: Path) -> None:
    for candidate in (path, path.with_name(path.name + "-journal"), path.with_name(path.name + "-wal")):
        candidate.unlink(missing_ok=True)


class PlanFile:
    """One plan's file. Written by the plan run (one thread), read back by the approved sync."""

    def __init__(self, path: Path, *, create: bool = False) -> None:
        if not create and not path.exists():
            raise FileNotFoundError(path)
        self.path = path
        self._conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        if create:
            # Written once, then only read: a plan run that dies leaves a file nobody refers to (removed later).
            self._conn.execute("PRAGMA journal_mode=OFF")
            self._conn.execute("PRAGMA synchronous=OFF")
            for statement in SCHEMA:
                self._conn.execute(statement)
            self._conn.execute("BEGIN")
        self._pending = 0

    # --- writing (the plan run) -----------------------------------------------------------------------
    def put(self, entry: PlanEntry) -> None:
        """Record a record's decision; a later decision about the same record (read again) replaces it."""
        self._conn.execute(
            "INSERT INTO entry (source_id, action, stripe_id, display_name, message, detail) VALUES (?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (source_id) DO UPDATE SET action = excluded.action, stripe_id = excluded.stripe_id, "
            "display_name = excluded.display_name, message = excluded.message, detail = excluded.detail",
            (
                entry.source_id,
                entry.action,
                entry.stripe_id,
                entry.display_name,
                entry.message,
                json.dumps(entry.detail, ensure_ascii=False, separators=(",", ":")),
            ),
        )

    def put_index(self, rows: Iterable[IndexRow]) -> None:
        self._conn.executemany(
            "INSERT INTO stripe_index (stripe_id, email_hash, source_ref, display_name, created) "
            "VALUES (?, ?, ?, ?, ?)",
            ((r.stripe_id, r.email_hash, r.source_ref, r.display_name, r.created) for r in rows),
        )

    def set_meta(self, **values: Any) -> None:
        self._conn.executemany(
            "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
            ((key, json.dumps(value)) for key, value in values.items()),
        )

    def finish(self) -> None:
        """Commit and make the file durable: only then may a plan refer to it."""
        self._conn.execute("COMMIT")
        self._conn.execute("PRAGMA synchronous=FULL")
        self._conn.execute("PRAGMA journal_mode=DELETE")
        self.close()

    # --- reading (the approved sync) ------------------------------------------------------------------
    def meta(self) -> dict[str, Any]:
        return {key: json.loads(value) for key, value in self._conn.execute("SELECT key, value FROM meta")}

    def count(self) -> int:
        return int(self._conn.execute("SELECT COUNT(*) FROM entry").fetchone()[0])

    def entries(self) -> Iterator[PlanEntry]:
        """Every entry in the order of its record's source id, PAGE at a time.

        Not in the order the plan met the records: the approved sync stores each record's outbox row, link and
        history row in indexes keyed by its source id, and source ids come in no order (Cliniko's are no cursor).
        In their order each batch adds to the end of those indexes instead of to a page of each spread over the
        whole index, and every page a transaction touches is written again (at 20,000 patients, about a third
        of the bytes written per record)."""
        last = ""  # below every source id ("" is none)
        while True:
            rows = self._conn.execute(
                "SELECT source_id, action, stripe_id, display_name, message, detail FROM entry WHERE source_id > ? "
                "ORDER BY source_id LIMIT ?",
                (last, PAGE),
            ).fetchall()
            if not rows:
                return
            for row in rows:
                yield _entry(row)
            last = rows[-1][0]

    def entry(self, source_id: str) -> PlanEntry | None:
        row = self._conn.execute(
            "SELECT source_id, action, stripe_id, display_name, message, detail FROM entry WHERE source_id = ?",
            (source_id,),
        ).fetchone()
        return _entry(row) if row is not None else None

    def index_rows(self) -> Iterator[IndexRow]:
        cursor = self._conn.execute("SELECT stripe_id, email_hash, source_ref, display_name, created FROM stripe_index")
        while rows := cursor.fetchmany(PAGE):
            yield from (IndexRow(*row) for row in rows)

    def close(self) -> None:
        self._conn.close()


def _entry(row: tuple[Any, ...]) -> PlanEntry:
    source_id, action, stripe_id, display_name, message, detail = row
    return PlanEntry(source_id, action, stripe_id, display_name, message, json.loads(detail) if detail else {})
