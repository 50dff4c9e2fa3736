"""A run the OS killed is closed as "interrupted" by whoever next finds the profile lock free, with counts that come
from its own history rows (one per record) and so never exceed the records it read."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from peewee import SqliteDatabase

from clinicsync.paths import AppPaths
from clinicsync.profile_lock import ProfileLock
from clinicsync.store import queries
from clinicsync.store.db import open_database
from clinicsync.store.models import AccountPair, SyncEvent, SyncRun, utcnow


@pytest.fixture
def paths(tmp_path: Path) -> AppPaths:
    return AppPaths.under(tmp_path / "profile").ensure()


@pytest.fixture
def db(paths: AppPaths) -> Iterator[SqliteDatabase]:
    database = open_database(paths.db_path)
    yield database
    database.close()


def killed_run(events: list[tuple[str, str]]) -> SyncRun:
    pair = AccountPair.create(
        uuid="u1", source_system="cliniko", source_account="1", stripe_account="acct_1", stripe_livemode=False
    )
    run = SyncRun.create(pair=pair, stream="cliniko.patients", trigger="cli")  # outcome "running", 0 counts
    for n, (source_id, action) in enumerate(events):
        SyncEvent.create(
            run=run, stream=run.stream, source_id=source_id, action=action, created_at=utcnow() + timedelta(seconds=n)
        )
    return run


def test_a_killed_run_is_closed_as_interrupted_with_one_count_per_record(db: SqliteDatabase, paths: AppPaths) -> None:
    # Record 1 was replayed from the outbox and then read again: one record, counted once, by its last word.
    run = killed_run([("1", "created"), ("1", "updated"), ("2", "failed"), ("3", "review"), ("3", "note")])
    assert queries.close_interrupted_runs_if_idle(paths) == 1
    closed = SyncRun.get_by_id(run.id)
    assert closed.outcome == "interrupted" and closed.finished_at is not None
    counts = {name: getattr(closed, name) for name in queries.COUNT_FIELDS}
    assert counts == {
        "created": 0,
        "linked": 0,
        "updated": 1,
        "unchanged": 0,
        "skipped": 0,
        "failed": 1,
        "review": 1,
        "waiting": 0,
    }
    assert sum(counts.values()) <= 3, "never more than the records it read"
    assert "stopped before it finished" in closed.message
    assert queries.close_interrupted_runs_if_idle(paths) == 0, "closed once"


def test_a_run_is_left_alone_while_a_sync_holds_the_profile_lock(db: SqliteDatabase, paths: AppPaths) -> None:
    run = killed_run([("1", "created")])
    with ProfileLock(paths.lock_file):  # a sync in this or another process is running it right now
        assert queries.close_interrupted_runs_if_idle(paths) == 0
    assert SyncRun.get_by_id(run.id).outcome == "running"
    assert queries.close_interrupted_runs_if_idle(paths) == 1
