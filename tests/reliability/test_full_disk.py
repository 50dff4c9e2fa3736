"""A full disk stops the sync with a message a person can act on, and loses nothing.

The disk "fills up" through SQLite's own limit on the database's size (`max_page_count`), which fails a write
exactly as a full disk does (SQLITE_FULL, "database or disk is full").
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from clinicsync.store import db as store_db
from clinicsync.sync.service import failure_of
from tests.reliability.helpers import db_path, mirror_report, pending_source_ids
from tests.support import admin, stats, sync_once


def _pages(path: Path) -> int:
    conn = sqlite3.connect(path)
    try:
        return conn.execute("PRAGMA page_count").fetchone()[0]
    finally:
        conn.close()


def test_a_full_disk_stops_the_sync_with_a_clear_message_and_the_next_sync_loses_nothing(
    make_sandbox, env_for, monkeypatch: pytest.MonkeyPatch
):
    sandbox = make_sandbox(profile="clean", patients=40)
    env = env_for(sandbox)
    home = Path(env["CLINICSYNC_HOME"])
    assert sync_once(env).counts["created"] == 40
    admin(sandbox.cliniko_url, "edit", count=25)
    added = admin(sandbox.cliniko_url, "seed", profile="clean", patients=60, seed=5, replace=False)["ids"]
    admin(sandbox.cliniko_url, "edit", ids=added)  # seeded records carry old dates; new ones are changed now

    # The disk fills up: the database may grow by only a few more pages.
    limit = _pages(db_path(home)) + 6
    monkeypatch.setattr(store_db, "PRAGMAS", (*store_db.PRAGMAS, ("max_page_count", limit)))
    try:
        full = sync_once(env)
    except Exception as exc:  # the disk may refuse even the run's first history row
        failure = failure_of(exc)
        assert failure is not None and failure[0] == "storage", repr(exc)
        message = failure[1]
    else:
        assert (full.outcome, full.stop_kind) == ("failed", "storage"), full
        message = full.message
    assert "could not save its records" in message and "the disk is full" in message
    assert str(db_path(home).parent) in message, "the message says which folder needs room"
    assert "nothing was lost" in message

    monkeypatch.undo()  # space was freed
    for _ in range(2):
        again = sync_once(env)
        if again.outcome == "ok" and not pending_source_ids(home):
            break
    assert again.outcome == "ok", again
    report = mirror_report(sandbox.cliniko_url, sandbox.stripe_url)
    assert not report.duplicated, report.describe()
    assert report.ok, report.describe()
    assert report.live_patients == 100
    assert stats(sandbox.stripe_url)["rejected_total"] == 0
