"""A profile made before write plans (schema v4) upgrades in place: its queued writes, links and open review
items carry on, and nothing is created twice."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from clinicsync.store import migrations
from clinicsync.sync.service import run_sync
from tests.reliability.helpers import mirror_report
from tests.support import admin, context, sync_once

V5_OUTBOX_COLUMNS = ("plan_key", "step", "last_step", "role", "refs", "effects", "plan_action")


def downgrade_to_v4(db_path: Path) -> None:
    """The database as ClinicSync before v5 left it: v5's columns, table and index gone, the v4 index back."""
    conn = sqlite3.connect(db_path)
    with conn:
        conn.execute("DROP INDEX outbox_one_pending_per_step")
        for column in V5_OUTBOX_COLUMNS:
            conn.execute(f"ALTER TABLE outbox_entry DROP COLUMN {column}")
        conn.execute("DROP TABLE role_link")
        conn.execute("ALTER TABLE stripe_index_entry DROP COLUMN created")
        conn.execute("ALTER TABLE account_pair DROP COLUMN other_installation_at")
        conn.execute(
            "CREATE UNIQUE INDEX outbox_one_pending_per_record ON outbox_entry (pair_id, stream, source_id) "
            "WHERE status = 'pending'"
        )
        conn.execute("DELETE FROM schema_version WHERE version > 4")
    conn.close()


def pending_rows(db_path: Path) -> int:
    conn = sqlite3.connect(db_path)
    try:
        return conn.execute("SELECT COUNT(*) FROM outbox_entry WHERE status = 'pending'").fetchone()[0]
    finally:
        conn.close()


def test_a_v4_profile_with_queued_writes_links_and_a_review_upgrades_and_finishes_without_a_duplicate(
    make_sandbox, env_for
):
    sandbox = make_sandbox(profile="hard", patients=40)
    env = env_for(sandbox, CLINICSYNC_STRIPE_WORKERS="1")
    first = sync_once(env)
    assert first.counts["review"] >= 1 and first.counts["created"] >= 20, first.counts
    edited = admin(sandbox.cliniko_url, "edit", count=10)["ids"]

    def stripe_goes_down(stream: str, done: int, total: int | None, step: str) -> None:
        if done == 1:  # connected and listed: from now on Stripe answers every request with a 5xx
            admin(sandbox.stripe_url, "faults", spec="before:5xx=1,seed=1")

    ctx = context(env)
    (stopped,) = run_sync(ctx.paths, ctx.settings, ctx.secrets, streams=["cliniko.patients"], progress=stripe_goes_down)
    assert stopped.outcome == "failed", "Stripe refused every write: the edits wait in the outbox"
    db_path = context(env).paths.db_path
    queued = pending_rows(db_path)
    assert queued >= 1

    downgrade_to_v4(db_path)
    admin(sandbox.stripe_url, "faults", spec="")
    upgraded = sync_once(env)

    conn = sqlite3.connect(db_path)
    try:
        version = conn.execute("SELECT MAX(version) FROM schema_version").fetchone()[0]
        open_reviews = conn.execute("SELECT COUNT(*) FROM review_item WHERE status = 'open'").fetchone()[0]
    finally:
        conn.close()
    assert version == migrations.LATEST_VERSION
    assert pending_rows(db_path) == 0, "the queued writes went out"
    assert upgraded.outcome in ("ok", "attention") and upgraded.counts["created"] == 0, upgraded.counts
    assert upgraded.counts["updated"] >= queued
    assert open_reviews == first.counts["review"], "the review items are still waiting for a person"
    report = mirror_report(sandbox.cliniko_url, sandbox.stripe_url)
    assert not report.duplicated, report.duplicated
    assert not any(pid in report.stale for pid in edited), {pid: report.stale[pid] for pid in report.stale}
