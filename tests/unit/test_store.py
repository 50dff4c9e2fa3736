"""The SQLite store: numbered migrations, pragmas, and the constraints the sync's promises rest on."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from peewee import IntegrityError, OperationalError, SqliteDatabase

from clinicsync.store import migrations
from clinicsync.store.db import SNAPSHOT_NAME, open_database, storage_problem
from clinicsync.store.models import ALL_MODELS, AccountPair, OutboxEntry, ReviewItem, SchemaVersion, StreamState


@pytest.fixture
def db_file(tmp_path: Path) -> Path:
    return tmp_path / "data" / "db.sqlite3"


@pytest.fixture
def db(db_file: Path) -> Iterator[SqliteDatabase]:
    database = open_database(db_file)
    yield database
    database.close()


def make_pair(**overrides: object) -> AccountPair:
    values: dict[str, object] = {
        "uuid": f"uuid-{AccountPair.select().count()}",
        "source_system": "cliniko",
        "source_account": "700000000000000001",
        "source_region": "au1",
        "stripe_account": "acct_sandbox_clinic_a",
        "stripe_livemode": False,
    }
    values.update(overrides)
    return AccountPair.create(**values)


def outbox_row(pair: AccountPair, source_id: str = "1001", status: str = "pending", **overrides: object) -> OutboxEntry:
    values: dict[str, object] = {
        "pair": pair,
        "stream": "cliniko.patients",
        "source_id": source_id,
        "op": "create",
        "stripe_object": "customer",
        "params": {"name": "Ada Lovelace"},
        "payload_hash": "h1",
        "status": status,
    }
    values.update(overrides)
    return OutboxEntry.create(**values)


# --- migrations ------------------------------------------------------------------------------------------


ALL_VERSIONS = list(range(1, migrations.LATEST_VERSION + 1))


def versions() -> list[int]:
    return [row.version for row in SchemaVersion.select().order_by(SchemaVersion.id)]


def test_a_new_database_is_migrated_once_to_the_latest_version(db: SqliteDatabase) -> None:
    assert migrations.LATEST_VERSION == len(migrations.MIGRATIONS) >= 1
    assert versions() == ALL_VERSIONS, "each step is recorded once, in order, starting with version 1"
    assert versions()[0] == 1
    assert migrations.current_version(db) == migrations.LATEST_VERSION
    tables = set(db.get_tables())
    assert {model._meta.table_name for model in ALL_MODELS} <= tables
    indexes = {row[0] for row in db.execute_sql("SELECT name FROM sqlite_master WHERE type = 'index'")}
    assert {"outbox_one_pending_per_step", "review_one_open_per_record"} <= indexes


def test_reopening_is_a_no_op(db: SqliteDatabase, db_file: Path) -> None:
    pair = make_pair()
    db.close()

    again = open_database(db_file)
    try:
        assert versions() == ALL_VERSIONS, "a migration ran twice"
        assert AccountPair.get_by_id(pair.id).uuid == pair.uuid, "reopening lost data"
        assert migrations.migrate(again, backup_dir=db_file.parent) == migrations.LATEST_VERSION
        assert versions() == ALL_VERSIONS
        assert not list(db_file.parent.glob("*.bak")), "no backup is taken when nothing changes"
    finally:
        again.close()


def test_a_database_from_a_newer_version_is_refused_with_a_clear_message(db: SqliteDatabase, db_file: Path) -> None:
    SchemaVersion.create(version=99)
    db.close()

    with pytest.raises(migrations.NewerDatabase) as raised:
        open_database(db_file)
    message = str(raised.value)
    assert "made by a newer ClinicSync" in message and str(db_file) in message
    assert "schema 99" in message and f"up to schema {migrations.LATEST_VERSION}" in message
    assert "Update ClinicSync" in message
    # Refusing must not have changed the file: the newer version's rows are all still there.
    with sqlite3.connect(db_file) as raw:
        assert sorted(v for (v,) in raw.execute("SELECT version FROM schema_version")) == [*ALL_VERSIONS, 99]


# --- pragmas ---------------------------------------------------------------------------------------------


def test_wal_mode_and_foreign_keys_are_on(db: SqliteDatabase, db_file: Path) -> None:
    assert db.execute_sql("PRAGMA journal_mode").fetchone()[0].lower() == "wal"
    assert db.execute_sql("PRAGMA foreign_keys").fetchone()[0] == 1
    assert db.execute_sql("PRAGMA busy_timeout").fetchone()[0] >= 1000
    # WAL is a property of the file, so another connection sees it too.
    with sqlite3.connect(db_file) as raw:
        assert raw.execute("PRAGMA journal_mode").fetchone()[0].lower() == "wal"


def test_foreign_keys_are_enforced_and_cascade(db: SqliteDatabase) -> None:
    with pytest.raises(IntegrityError), db.atomic():
        StreamState.create(pair=12345, stream="cliniko.patients")

    pair = make_pair()
    StreamState.create(pair=pair, stream="cliniko.patients")
    outbox_row(pair)
    pair.delete_instance()
    assert StreamState.select().count() == 0
    assert OutboxEntry.select().count() == 0


# --- constraints -----------------------------------------------------------------------------------------


def test_only_one_pending_outbox_row_per_record(db: SqliteDatabase) -> None:
    pair = make_pair()
    outbox_row(pair, "1001")
    with pytest.raises(IntegrityError), db.atomic():
        outbox_row(pair, "1001", op="update", payload_hash="h2")
    assert OutboxEntry.select().where(OutboxEntry.status == "pending").count() == 1

    # Another record, another stream or another pair may each have their own pending row.
    outbox_row(pair, "1002")
    outbox_row(pair, "1001", stream="cliniko.other")
    outbox_row(make_pair(stripe_livemode=True), "1001")
    assert OutboxEntry.select().where(OutboxEntry.status == "pending").count() == 4


def test_any_number_of_finished_rows_per_record(db: SqliteDatabase) -> None:
    pair = make_pair()
    for status in ("done", "done", "done", "failed", "superseded", "superseded"):
        outbox_row(pair, "1001", status=status)
    outbox_row(pair, "1001")  # and still one pending beside them
    assert OutboxEntry.select().where(OutboxEntry.source_id == "1001").count() == 7

    # Once the pending row is settled, a new pending row for the same record is allowed again.
    OutboxEntry.update(status="done").where(OutboxEntry.status == "pending").execute()
    outbox_row(pair, "1001", op="update")
    with pytest.raises(IntegrityError), db.atomic():
        outbox_row(pair, "1001", op="update")


def test_idempotency_keys_are_unique(db: SqliteDatabase) -> None:
    pair = make_pair()
    outbox_row(pair, "1001", status="done", idempotency_key="cs:k:1")
    with pytest.raises(IntegrityError), db.atomic():
        outbox_row(pair, "1002", idempotency_key="cs:k:1")


def test_only_one_open_or_resolved_review_per_record(db: SqliteDatabase) -> None:
    pair = make_pair()
    review = {"pair": pair, "stream": "cliniko.patients", "source_id": "1001", "reason": "ambiguous_email"}
    ReviewItem.create(**review)
    with pytest.raises(IntegrityError), db.atomic():
        ReviewItem.create(**review, status="resolved")
    ReviewItem.create(**review, status="done")
    ReviewItem.create(**review, status="ignored")
    assert ReviewItem.select().count() == 3


def test_account_pair_is_unique_per_source_account_and_stripe_account_and_mode(db: SqliteDatabase) -> None:
    make_pair(uuid="a")
    with pytest.raises(IntegrityError), db.atomic():
        make_pair(uuid="b")
    with pytest.raises(IntegrityError), db.atomic():
        make_pair(uuid="a", stripe_livemode=True)  # the uuid is unique too

    # Each part of the key makes a different pair: live vs test, another Stripe account, clinic or region.
    make_pair(uuid="c", stripe_livemode=True)
    make_pair(uuid="d", stripe_account="acct_sandbox_clinic_b")
    make_pair(uuid="e", source_account="700000000000000002")
    make_pair(uuid="f", source_region="uk1")
    make_pair(uuid="g", source_system="calcom")
    assert AccountPair.select().count() == 6


def test_stream_state_is_unique_per_pair_and_stream(db: SqliteDatabase) -> None:
    pair = make_pair()
    StreamState.create(pair=pair, stream="cliniko.patients")
    with pytest.raises(IntegrityError), db.atomic():
        StreamState.create(pair=pair, stream="cliniko.patients")
    StreamState.create(pair=make_pair(stripe_livemode=True), stream="cliniko.patients")
    assert StreamState.select().count() == 2


def test_history_events_are_indexed_by_run_and_action(tmp_path):
    db = open_database(tmp_path / "db.sqlite3")
    indexes = {row[1] for row in db.execute_sql("PRAGMA index_list(sync_event)").fetchall()}
    assert "sync_event_run_action" in indexes


# --- the dry run's private snapshot --------------------------------------------------------------------------


def test_a_private_snapshot_keeps_the_threads_writes_to_itself_and_leaves_nothing_behind(db, db_file: Path) -> None:
    pair = make_pair()
    snapshot_file = db_file.with_name(SNAPSHOT_NAME)
    snapshot_file.write_bytes(b"left behind by a killed run")
    seen_elsewhere: list[int] = []
    with db.private_snapshot():
        StreamState.create(pair=pair, stream="cliniko.patients", cursor="2026-11-01T00:00:00Z")
        assert StreamState.select().count() == 1, "this thread sees its own writes"
        reader = threading.Thread(target=lambda: seen_elsewhere.append(StreamState.select().count()))
        reader.start()
        reader.join()
    assert seen_elsewhere == [0], "another thread reads the real database meanwhile"
    assert StreamState.select().count() == 0, "nothing written in the snapshot reaches the real database"
    assert not snapshot_file.exists()


# --- a disk that will not take a write -----------------------------------------------------------------------


def test_a_full_disk_is_named_with_the_folder_even_when_a_failed_rollback_hides_it(db, db_file: Path) -> None:
    try:
        try:
            raise sqlite3.OperationalError("database or disk is full")
        except sqlite3.OperationalError:
            raise OperationalError("cannot rollback - no transaction is active") from None
    except OperationalError as hidden:
        hidden.__context__ = sqlite3.OperationalError("database or disk is full")  # as peewee's atomic leaves it
        message = storage_problem(hidden)
    assert message is not None
    assert "the disk is full" in message and str(db_file.parent) in message and "nothing was lost" in message


def test_other_database_errors_are_not_called_a_full_disk(db) -> None:
    assert storage_problem(OperationalError("no such table: widget")) is None
    assert storage_problem(ValueError("database or disk is full")) is None, "only SQLite's own errors"
    readonly = storage_problem(sqlite3.OperationalError("attempt to write a readonly database"))
    assert readonly is not None and "refused the write" in readonly and "permissions" in readonly


def test_a_damaged_database_file_says_how_to_recover(db, db_file: Path) -> None:
    message = storage_problem(sqlite3.DatabaseError("file is not a database"))
    assert message is not None and f"({db_file})" in message and "is damaged" in message
    assert "Restore it from a backup" in message and "none is created twice" in message
