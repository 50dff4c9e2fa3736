"""A v7 profile (links keyed by account pair only) upgrades to v8: the next run reads every patient again, fills
in each link's person key (so a Cal.com attendee can find the patient's customer) and writes nothing to Stripe."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from clinicsync.store import migrations
from tests.support import context, executed_writes, sync_once


def downgrade_to_v7(db_path: Path) -> None:
    conn = sqlite3.connect(db_path)
    with conn:
        conn.execute("DROP INDEX record_link_person")
        conn.execute("ALTER TABLE record_link DROP COLUMN person_key")
        conn.execute("DELETE FROM schema_version WHERE version > 7")
    conn.close()


def test_a_v7_profile_gets_person_keys_by_reading_again_and_writes_nothing(make_sandbox, env_for):
    sandbox = make_sandbox(profile="clean", patients=30)
    env = env_for(sandbox)
    first = sync_once(env)
    assert first.counts["created"] >= 25, first.counts
    db_path = context(env).paths.db_path
    downgrade_to_v7(db_path)
    writes = executed_writes(sandbox.stripe_url)

    upgraded = sync_once(env)

    conn = sqlite3.connect(db_path)
    try:
        version = conn.execute("SELECT MAX(version) FROM schema_version").fetchone()[0]
        linked, keyed = conn.execute(
            "SELECT COUNT(*), COUNT(person_key) FROM record_link WHERE stripe_id IS NOT NULL"
        ).fetchone()
    finally:
        conn.close()
    assert version == migrations.LATEST_VERSION
    assert upgraded.counts["unchanged"] >= 25 and upgraded.counts["created"] == upgraded.counts["updated"] == 0
    assert executed_writes(sandbox.stripe_url) == writes, "reading again wrote nothing to Stripe"
    assert linked >= 25 and keyed == linked, "every linked patient with an email has its person key"
