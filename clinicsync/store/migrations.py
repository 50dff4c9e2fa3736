"""Numbered schema migrations. Each step runs once, inside a transaction, and records the new version.

Only one process migrates at a time: the steps run under SQLite's write lock (`BEGIN IMMEDIATE`), and the version
is read again once the lock is held, so a second ClinicSync started at the same moment waits and then finds the
work done.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from peewee import SqliteDatabase

from clinicsync.store import models
from clinicsync.store.db import DatabaseRefused, backup_before_migration


class NewerDatabase(DatabaseRefused):
    """The database was made by a newer ClinicSync: opening it with this one could lose what it added."""


def _v1_initial(db: SqliteDatabase) -> None:
    db.create_tables(models.ALL_MODELS)
    # At most one pending write per record: a second one could race the first and create a duplicate.
    db.execute_sql(
        "CREATE UNIQUE INDEX outbox_one_pending_per_record ON outbox_entry (pair_id, stream, source_id) "
        "WHERE status = 'pending'"
    )
    db.execute_sql(
        "CREATE UNIQUE INDEX review_one_open_per_record ON review_item (pair_id, stream, source_id) "
        "WHERE status IN ('open', 'resolved')"
    )


def _v2_mapping(db: SqliteDatabase) -> None:
    """Stored field mappings, clinical-field allowances, write-back progress, and the mapping version a link and
    an outbox row were written with. Idempotent: step 1 builds tables from the current models, so on a new
    database the new columns already exist."""
    db.create_tables(models.MAPPING_MODELS, safe=True)
    for table in ("record_link", "outbox_entry"):
        if "mapping_version" not in {column.name for column in db.get_columns(table)}:
            db.execute_sql(f"ALTER TABLE {table} ADD COLUMN mapping_version INTEGER")


def _v3_history_index(db: SqliteDatabase) -> None:
    # The history tab pins a run's failed and review rows on top: find them without scanning the whole run.
    db.execute_sql("CREATE INDEX IF NOT EXISTS sync_event_run_action ON sync_event (run_id, action)")


def _v4_index_high_water(db: SqliteDatabase) -> None:
    """The newest Stripe `created` the customer index has seen (idempotent, as step 1 uses the current models)."""
    if "stripe_index_high_water" not in {column.name for column in db.get_columns("stream_state")}:
        db.execute_sql("ALTER TABLE stream_state ADD COLUMN stripe_index_high_water INTEGER")


_V5_OUTBOX_COLUMNS = {
    "plan_key": "VARCHAR(255)",
    "step": "INTEGER NOT NULL DEFAULT 0",
    "last_step": "INTEGER NOT NULL DEFAULT 1",
    "role": "VARCHAR(255) NOT NULL DEFAULT ''",
    "refs": "TEXT",
    "effects": "TEXT",
    "plan_action": "VARCHAR(255)",
}


def _v5_write_plans(db: SqliteDatabase) -> None:
    """Outbox rows become steps of a plan, and records own Stripe objects per role. Rows already queued become
    one-step plans of the stream's primary object, so a profile upgraded with writes pending replays them as they
    were. Idempotent (step 1 builds tables from the current models)."""
    db.create_tables(models.PLAN_MODELS, safe=True)
    present = {column.name for column in db.get_columns("outbox_entry")}
    for name, ddl in _V5_OUTBOX_COLUMNS.items():
        if name not in present:
            db.execute_sql(f"ALTER TABLE outbox_entry ADD COLUMN {name} {ddl}")
    for table, column, ddl in (
        ("stripe_index_entry", "created", "INTEGER"),
        ("account_pair", "other_installation_at", "DATETIME"),
    ):
        if column not in {c.name for c in db.get_columns(table)}:
            db.execute_sql(f"ALTER TABLE {table} ADD COLUMN {column} {ddl}")
    # One pending row per record became one pending row per step of a record's plan.
    db.execute_sql("DROP INDEX IF EXISTS outbox_one_pending_per_record")
    db.execute_sql(
        "CREATE UNIQUE INDEX IF NOT EXISTS outbox_one_pending_per_step ON outbox_entry "
        "(pair_id, stream, source_id, step) WHERE status = 'pending'"
    )


def _v6_scheduling(db: SqliteDatabase) -> None:
    """Background syncs: service requests from an attached window, the scheduler's state, alerts, and folded
    idle polls. Idempotent (step 1 builds tables from the current models)."""
    db.create_tables(models.SCHEDULING_MODELS, safe=True)
    present = {column.name for column in db.get_columns("sync_run")}
    for column, ddl in (("checks", "INTEGER NOT NULL DEFAULT 1"), ("checks_since", "DATETIME")):
        if column not in present:
            db.execute_sql(f"ALTER TABLE sync_run ADD COLUMN {column} {ddl}")
    # At most one open occurrence per situation: raised once, not once per run that sees it.
    db.execute_sql(
        "CREATE UNIQUE INDEX IF NOT EXISTS alert_one_open_per_key ON alert (key) WHERE state IN ('pending', 'active')"
    )
    # The scheduler reads each stream's latest run at start and after every poll (next run, folding).
    db.execute_sql("CREATE INDEX IF NOT EXISTS sync_run_stream ON sync_run (stream, id)")
    db.execute_sql("CREATE INDEX IF NOT EXISTS service_request_status ON service_request (status, id)")


def _v7_reconciliation(db: SqliteDatabase) -> None:
    """Reconciliation reports, their findings, and the findings people marked as intended. Idempotent: tables
    and indexes are created only when missing."""
    db.create_tables(models.RECONCILE_MODELS, safe=True)


def _v8_people(db: SqliteDatabase) -> None:
    """One person, one customer across sources: each link keeps its email's key within the Stripe account
    (`record_link.person_key`). Old links have none, and ClinicSync keeps no emails to compute it from, so the
    cursors of streams that link customers are reset: their next run reads every record again (writing nothing
    that did not change) and fills the keys in. Idempotent."""
    if "person_key" not in {column.name for column in db.get_columns("record_link")}:
        db.execute_sql("ALTER TABLE record_link ADD COLUMN person_key VARCHAR(255)")
    db.execute_sql("CREATE INDEX IF NOT EXISTS record_link_person ON record_link (person_key, stripe_object)")
    db.execute_sql(
        "UPDATE stream_state SET cursor = NULL WHERE stream IN "
        "(SELECT DISTINCT stream FROM record_link WHERE stripe_object = 'customer' AND person_key IS NULL)"
    )


def _v9_webhook_deliveries(db: SqliteDatabase) -> None:
    """The Cal.com webhook deliveries already received, so a repeat is not acted on twice. Idempotent."""
    db.create_tables(models.WEBHOOK_MODELS, safe=True)


def _v10_waiting_count(db: SqliteDatabase) -> None:
    """A run counts the records it held back while an earlier change to them was still queued for Stripe
    (`sync_run.waiting`): they were counted as skipped before, which the invoice linker calls "not paid through
    Stripe". Old runs keep their counts as they were. Idempotent (step 1 builds tables from the current models)."""
    if "waiting" not in {column.name for column in db.get_columns("sync_run")}:
        db.execute_sql("ALTER TABLE sync_run ADD COLUMN waiting INTEGER NOT NULL DEFAULT 0")


MIGRATIONS: tuple[Callable[[SqliteDatabase], None], ...] = (
    _v1_initial,
    _v2_mapping,
    _v3_history_index,
    _v4_index_high_water,
    _v5_write_plans,
    _v6_scheduling,
    _v7_reconciliation,
    _v8_people,
    _v9_webhook_deliveries,
    _v10_waiting_count,
)
LATEST_VERSION = len(MIGRATIONS)


def current_version(db: SqliteDatabase) -> int:
    if "schema_version" not in db.get_tables():
        return 0
    row = models.SchemaVersion.select().order_by(models.SchemaVersion.version.desc()).first()
    return row.version if row else 0


def migrate(db: SqliteDatabase, backup_dir: Path | None = None) -> int:
    """Bring the schema to LATEST_VERSION; refuse a database made by a newer ClinicSync, leaving it untouched."""
    version = current_version(db)
    _refuse_newer(db, version)
    if version == LATEST_VERSION:
        return version
    if version and backup_dir is not None:
        # Before taking the write lock: SQLite's backup cannot read through a connection that is writing. The
        # backup is one consistent snapshot even if another process migrates meanwhile.
        backup_before_migration(db, version)
    with db.atomic():  # BEGIN IMMEDIATE (the database's lock type): one migrating process at a time
        version = current_version(db)  # another process may have done it while this one waited for the lock
        _refuse_newer(db, version)
        for number in range(version + 1, LATEST_VERSION + 1):
            with db.atomic():  # a savepoint per step
                MIGRATIONS[number - 1](db)
                models.SchemaVersion.create(version=number)
    return LATEST_VERSION


def _refuse_newer(db: SqliteDatabase, version: int) -> None:
    if version > LATEST_VERSION:
        raise NewerDatabase(
            f"ClinicSync's database ({db.database}) was made by a newer ClinicSync (schema {version}; this version "
            f"knows up to schema {LATEST_VERSION}), so this version will not use it and has not changed it. Update "
            "ClinicSync to the version that made it, or newer."
        )
