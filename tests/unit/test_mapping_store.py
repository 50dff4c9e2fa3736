"""The mapping JSON document, the stored mapping and its revisions, allowances, and write-back's pure helpers."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import replace
from datetime import date
from pathlib import Path

import pytest
from peewee import SqliteDatabase

from clinicsync.mapping.apply import map_record, update_params, without_writeback_field
from clinicsync.mapping.defaults import CLINIKO_PATIENTS
from clinicsync.mapping.fields import FieldCatalogue
from clinicsync.mapping.spec import DocumentError, SyncScope, WritebackConfig, from_document, rule, to_document
from clinicsync.mapping.validate import MappingInvalid
from clinicsync.store import mappings as mapping_store
from clinicsync.store import migrations
from clinicsync.store.db import open_database
from clinicsync.store.models import AccountPair, FieldAllowance, MappingRevision, StreamState
from clinicsync.sync.writeback import custom_fields_with, section_token_for

CATALOGUE = FieldCatalogue.for_source("cliniko", "patient")
STREAM = "cliniko.patients"


@pytest.fixture
def db(tmp_path: Path) -> Iterator[SqliteDatabase]:
    database = open_database(tmp_path / "clinicsync.sqlite3")
    yield database
    database.close()


# --- the document ------------------------------------------------------------------------------------------
def test_the_default_round_trips_through_json():
    document = to_document(CLINIKO_PATIENTS)
    assert document["format"] == 1 and document["stream"] == STREAM
    assert document["rules"][0] == {
        "target": "name",
        "sources": ["first_name", "last_name"],
        "transform": "join",
        "options": {"separator": " "},
        "overflow": "truncate",
    }
    assert document["rules"][-1] == {
        "target": "metadata.cliniko_patient_id",
        "sources": ["id"],
        "transform": "copy",
        "role": "cross_ref",
    }
    again = from_document(json.loads(json.dumps(document)), CLINIKO_PATIENTS)
    assert again == CLINIKO_PATIENTS


def test_scope_and_writeback_round_trip():
    mapping = replace(
        CLINIKO_PATIENTS,
        scope=SyncScope(kind="since", since=date(2024, 7, 1)),
        writeback=WritebackConfig(enabled=True, field_token="abc"),
        time_zone="Australia/Perth",
    )
    document = to_document(mapping)
    assert document["scope"] == {"kind": "since", "since": "2024-07-01"}
    assert document["writeback"] == {"enabled": True, "field_token": "abc"}
    assert from_document(document, CLINIKO_PATIENTS) == mapping
    recent = to_document(replace(CLINIKO_PATIENTS, scope=SyncScope(kind="recent_activity", months=18)))
    assert recent["scope"] == {"kind": "recent_activity", "months": 18}


def test_a_hand_written_document_needs_only_rules_and_templates_imply_their_sources():
    mapping = from_document(
        {
            "rules": [
                {"target": "name", "transform": "template", "options": {"template": "{last_name}, {first_name}"}},
                {"target": "email", "sources": "email", "role": "match_key"},
                {"target": "metadata.cliniko_patient_id", "sources": ["id"], "role": "cross_ref"},
            ]
        },
        CLINIKO_PATIENTS,
    )
    assert mapping.rules[0].sources == ("last_name", "first_name")
    assert mapping.rules[1].sources == ("email",) and mapping.rules[1].transform == "copy"
    assert mapping.archived_marker == "cliniko_archived" and mapping.scope == SyncScope()


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ([], "must be a JSON object"),
        ({"colour": 1}, "unknown key(s) colour"),
        ({"format": 2}, "format 2"),
        ({"stream": "cliniko.invoices"}, "this mapping is for 'cliniko.patients'"),
        ({"stripe_object": "product"}, "stripe_object is 'product'"),
        ({"rules": {}}, "rules must be a list"),
        ({"rules": [{"sources": ["x"]}]}, "rule 1: target must be"),
        ({"rules": [{"target": "x", "sources": [1]}]}, "rule 1: sources must be"),
        ({"rules": [{"target": "x", "sources": ["x"], "role": "boss"}]}, "rule 1: role must be one of"),
        ({"rules": [{"target": "x", "sources": ["x"], "overflow": "wrap"}]}, "overflow must be one of"),
        ({"rules": [{"target": "x", "sources": ["x"], "options": []}]}, "options must be an object"),
        ({"rules": [{"target": "x", "sources": ["x"], "when": 1}]}, "rule 1: unknown key(s) when"),
        ({"scope": {"kind": "some"}}, "scope.kind must be one of"),
        ({"scope": {"kind": "since", "since": "last year"}}, "scope.since must be a date"),
        ({"scope": {"kind": "recent_activity", "months": 0}}, "scope.months"),
        ({"writeback": {"enabled": "yes"}}, "writeback needs enabled"),
    ],
)
def test_malformed_documents_say_where(document, message):
    with pytest.raises(DocumentError, match=None) as raised:
        from_document(document, CLINIKO_PATIENTS)
    assert message in str(raised.value)


# --- the store -----------------------------------------------------------------------------------------------
def test_schema_v2_adds_the_mapping_tables(db):
    assert migrations.current_version(db) == migrations.LATEST_VERSION >= 2
    tables = set(db.get_tables())
    assert {"stream_mapping", "mapping_revision", "field_allowance", "writeback_mark"} <= tables
    assert "mapping_version" in {c.name for c in db.get_columns("record_link")}
    assert "mapping_version" in {c.name for c in db.get_columns("outbox_entry")}


def test_a_v1_database_is_upgraded_in_place(tmp_path: Path):
    path = tmp_path / "old.sqlite3"
    old = SqliteDatabase(str(path))
    from clinicsync.store.db import database_proxy

    database_proxy.initialize(old)
    migrations._v1_initial(old)
    old.execute_sql("ALTER TABLE record_link DROP COLUMN mapping_version")  # as v1 of an older ClinicSync made it
    old.execute_sql("ALTER TABLE outbox_entry DROP COLUMN mapping_version")
    old.execute_sql("ALTER TABLE stream_state DROP COLUMN stripe_index_high_water")  # added by step 4
    old.execute_sql("INSERT INTO schema_version (version) VALUES (1)")
    old.close()
    db = open_database(path)
    try:
        assert migrations.current_version(db) == migrations.LATEST_VERSION
        assert "mapping_version" in {c.name for c in db.get_columns("record_link")}
        assert "stripe_index_high_water" in {c.name for c in db.get_columns("stream_state")}
    finally:
        db.close()
    assert any(p.name.endswith(".before-v1.bak") for p in tmp_path.iterdir()), "backed up before migrating"


def test_the_backup_before_a_migration_holds_what_was_still_in_the_wal_file(tmp_path: Path):
    import sqlite3

    path = tmp_path / "old.sqlite3"
    old = SqliteDatabase(str(path), pragmas={"journal_mode": "wal", "wal_autocheckpoint": 0})
    from clinicsync.store.db import database_proxy

    database_proxy.initialize(old)
    migrations._v1_initial(old)
    old.execute_sql("ALTER TABLE record_link DROP COLUMN mapping_version")
    old.execute_sql("ALTER TABLE outbox_entry DROP COLUMN mapping_version")
    old.execute_sql("ALTER TABLE stream_state DROP COLUMN stripe_index_high_water")
    old.execute_sql("INSERT INTO schema_version (version) VALUES (1)")
    reader = sqlite3.connect(path)  # an open reader keeps the closing connection from checkpointing the WAL
    reader.execute("SELECT 1 FROM schema_version").fetchall()
    old.close()
    assert (tmp_path / "old.sqlite3-wal").stat().st_size > 0, "the commits are still in the WAL file"
    db = open_database(path)
    db.close()
    reader.close()
    backup = sqlite3.connect(tmp_path / "old.sqlite3.before-v1.bak")
    try:
        assert backup.execute("SELECT version FROM schema_version").fetchall() == [(1,)]
    finally:
        backup.close()


def test_load_gives_the_default_until_a_mapping_is_saved(db):
    assert mapping_store.load(STREAM) == CLINIKO_PATIENTS and mapping_store.load(STREAM).version == 0
    with pytest.raises(mapping_store.UnknownStream):
        mapping_store.load("cliniko.nothing")


def test_save_validates_versions_and_resets_the_cursor_only_when_records_change(db):
    pair = AccountPair.create(
        uuid="u", source_system="cliniko", source_account="1", stripe_account="acct", stripe_livemode=False
    )
    StreamState.create(pair=pair, stream=STREAM, cursor="2026-01-01T00:00:00Z")
    with pytest.raises(MappingInvalid):
        mapping_store.save(CLINIKO_PATIENTS.with_rules(()), CATALOGUE)
    assert mapping_store.load(STREAM).version == 0

    templated = CLINIKO_PATIENTS.with_rules(
        (rule("name", transform="template", template="{first_name} {last_name}"), *CLINIKO_PATIENTS.rules[1:])
    )
    first = mapping_store.save(templated, CATALOGUE, who="ana")
    assert first.changed and first.cursor_reset and first.mapping.version == 1
    assert StreamState.get().cursor is None
    assert mapping_store.load(STREAM).rules[0].transform == "template"
    StreamState.update(cursor="2026-01-15T00:00:00Z").execute()
    same = mapping_store.save(templated, CATALOGUE, who="ana")
    assert not same.changed and not same.cursor_reset and same.mapping.version == 1

    StreamState.update(cursor="2026-02-01T00:00:00Z").execute()
    wb = mapping_store.save(replace(templated, writeback=WritebackConfig(True, "tok")), CATALOGUE)
    assert wb.changed and not wb.cursor_reset and wb.mapping.version == 2
    assert StreamState.get().cursor == "2026-02-01T00:00:00Z", "write-back settings alone change no payload"

    reset = mapping_store.reset_to_default(STREAM, CATALOGUE)
    assert reset.mapping.version == 3 and mapping_store.load(STREAM).rules == CLINIKO_PATIENTS.rules
    assert [r.version for r in MappingRevision.select().order_by(MappingRevision.version)] == [1, 2, 3]
    assert MappingRevision.get(MappingRevision.version == 1).saved_by == "ana"


def test_retired_and_added_targets_between_revisions(db):
    with_phone_type = CLINIKO_PATIENTS.with_rules((*CLINIKO_PATIENTS.rules, rule("metadata.city_copy", "city")))
    v1 = mapping_store.save(with_phone_type, CATALOGUE).mapping
    no_phone = mapping_store.save(
        CLINIKO_PATIENTS.with_rules(tuple(r for r in CLINIKO_PATIENTS.rules if r.target != "phone")), CATALOGUE
    ).mapping
    assert mapping_store.retired_targets(STREAM, 1, no_phone) == ("phone", "metadata.city_copy")
    assert mapping_store.retired_targets(STREAM, None, no_phone) == ("phone",)  # written with the default
    assert mapping_store.retired_targets(STREAM, 2, no_phone) == ()
    assert mapping_store.added_targets(STREAM, None, v1) == ("metadata.city_copy",)
    assert mapping_store.added_targets(STREAM, 1, no_phone) == ()

    mapped = map_record(no_phone, {"id": "7", "first_name": "A", "last_name": "B", "city": "Fitzroy"})
    params = update_params(mapped.payload, mapping_store.retired_targets(STREAM, 1, no_phone))
    assert params["phone"] == "" and params["metadata"]["city_copy"] == ""


def test_allowances_are_recorded_and_withdrawal_waits_until_unmapped(db):
    assert mapping_store.allowed_fields(STREAM) == set()
    with pytest.raises(ValueError, match="warning"):
        mapping_store.allow(STREAM, "notes", warning=" ")
    warning = mapping_store.warning_for(STREAM, "notes", CATALOGUE)
    mapping_store.allow(STREAM, "notes", warning=warning, who="ana", via="gui")
    assert mapping_store.allowed_fields(STREAM) == {"notes"}
    notes = CLINIKO_PATIENTS.with_rules((*CLINIKO_PATIENTS.rules, rule("metadata.notes", "notes")))
    mapping_store.save(notes, CATALOGUE)
    with pytest.raises(MappingInvalid, match="still mapped"):
        mapping_store.withdraw(STREAM, "notes")
    mapping_store.save(CLINIKO_PATIENTS, CATALOGUE)
    mapping_store.withdraw(STREAM, "notes", who="ben")
    assert mapping_store.allowed_fields(STREAM) == set()
    history = [(r.source_field, r.decision, r.decided_by, r.via) for r in FieldAllowance.select()]
    assert history == [("notes", "allowed", "ana", "gui"), ("notes", "withdrawn", "ben", "cli")]
    assert "Notes" in FieldAllowance.get().warning
    with pytest.raises(MappingInvalid, match="clinical"):
        mapping_store.save(notes, CATALOGUE)


# --- write-back helpers ----------------------------------------------------------------------------------------
def patient_with(fields: list[dict]) -> dict:
    return {
        "id": "9",
        "first_name": "A",
        "last_name": "B",
        "custom_fields": {"sections": [{"name": "Clinic sync", "token": "s1", "fields": fields}]},
    }


def test_the_echo_rule_removes_only_the_writeback_field():
    record = patient_with([{"token": "stripe", "value": "cus_1"}, {"token": "fund", "value": "Bupa"}])
    cleaned = without_writeback_field(record, "stripe")
    assert cleaned["custom_fields"] == {
        "sections": [{"name": "Clinic sync", "token": "s1", "fields": [{"token": "fund", "value": "Bupa"}]}]
    }
    assert record["custom_fields"]["sections"][0]["fields"][0]["value"] == "cus_1", "the input is not changed"
    assert without_writeback_field(patient_with([{"token": "stripe", "value": "x"}]), "stripe")["custom_fields"] is None
    assert without_writeback_field(record, "") is record


def test_the_echo_rule_keeps_the_payload_hash_of_a_mapping_that_reads_the_field():
    mapping = CLINIKO_PATIENTS.with_rules((*CLINIKO_PATIENTS.rules, rule("metadata.sid", "custom_fields.stripe")))
    before = patient_with([{"token": "fund", "value": "Bupa"}])
    after = patient_with([{"token": "fund", "value": "Bupa"}, {"token": "stripe", "value": "cus_1"}])
    assert map_record(mapping, before).payload_hash != map_record(mapping, after).payload_hash
    masked = map_record(mapping, without_writeback_field(after, "stripe"))
    assert masked.payload_hash == map_record(mapping, before).payload_hash


def test_read_modify_write_keeps_other_custom_fields():
    current = {"sections": [{"token": "s1", "fields": [{"token": "fund", "value": "Bupa", "name": "Health fund"}]}]}
    body = custom_fields_with(current, "stripe", "s1", "cus_9")
    assert body == {
        "sections": [
            {
                "token": "s1",
                "fields": [
                    {"token": "fund", "value": "Bupa", "name": "Health fund"},
                    {"token": "stripe", "value": "cus_9"},
                ],
            }
        ]
    }
    assert current["sections"][0]["fields"] == [{"token": "fund", "value": "Bupa", "name": "Health fund"}]
    replaced = custom_fields_with(body, "stripe", "s1", "cus_10")
    assert replaced["sections"][0]["fields"][1] == {"token": "stripe", "value": "cus_10"}
    assert custom_fields_with(None, "stripe", "s1", "cus_1") == {
        "sections": [{"token": "s1", "fields": [{"token": "stripe", "value": "cus_1"}]}]
    }
    settings = {"patient_custom_fields_definition": {"sections": [{"token": "s1", "fields": [{"token": "stripe"}]}]}}
    assert section_token_for(settings, "stripe") == "s1" and section_token_for(settings, "x") is None


def test_months_before_clamps_to_the_end_of_the_month():
    from clinicsync.sync.scope import months_before

    assert months_before(date(2026, 5, 31), 3) == date(2026, 2, 28)
    assert months_before(date(2024, 3, 31), 1) == date(2024, 2, 29)
    assert months_before(date(2026, 1, 15), 24) == date(2024, 1, 15)
    assert months_before(date(2026, 11, 22), 11) == date(2025, 12, 22)


def test_a_new_live_connection_defaults_to_recent_activity_until_a_person_saves_a_mapping(db):
    """The default scope is decided per account pair (one function), applied while the mapping is the built-in
    default, and never stored: saving any mapping, even the built-in one with scope "all", is a person's choice."""
    assert mapping_store.default_scope_for_pair(STREAM, livemode=True) == SyncScope(kind="recent_activity", months=24)
    assert mapping_store.default_scope_for_pair(STREAM, livemode=False) == SyncScope(kind="all")
    live, defaulted = mapping_store.load_for_pair(STREAM, livemode=True)
    assert defaulted and live.scope.kind == "recent_activity" and live.scope.months == 24 and live.version == 0
    test_mode, defaulted = mapping_store.load_for_pair(STREAM, livemode=False)
    assert not defaulted and test_mode.scope == SyncScope(kind="all")
    assert mapping_store.load(STREAM).scope == SyncScope(kind="all"), "nothing is stored"

    pair = AccountPair.create(
        uuid="u", source_system="cliniko", source_account="1", stripe_account="acct", stripe_livemode=True
    )
    StreamState.create(pair=pair, stream=STREAM, cursor="2026-01-01T00:00:00Z")
    chosen = mapping_store.save(CLINIKO_PATIENTS, CATALOGUE, who="ana")  # "all", chosen by a person
    assert chosen.changed and chosen.cursor_reset and chosen.mapping.version == 1
    assert StreamState.get().cursor is None, "the live pair's records in scope change: re-read everything"
    live, defaulted = mapping_store.load_for_pair(STREAM, livemode=True)
    assert not defaulted and live.scope == SyncScope(kind="all") and live.version == 1
