"""peewee models. Every piece of sync state belongs to one AccountPair (source account ↔ Stripe account + mode).

Only ids, hashes and display names of source records are stored; outbox rows hold a request's parameters only
while it is pending, and drop them once it is done or failed.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from peewee import (
    AutoField,
    BooleanField,
    CharField,
    DateTimeField,
    ForeignKeyField,
    IntegerField,
    Model,
    TextField,
)

from clinicsync.store.db import database_proxy


def utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


class JSONField(TextField):
    def db_value(self, value: Any) -> str | None:
        return None if value is None else json.dumps(value, sort_keys=True, ensure_ascii=False)

    def python_value(self, value: str | None) -> Any:
        return None if value is None else json.loads(value)


class BaseModel(Model):
    class Meta:
        database = database_proxy
        legacy_table_names = False


class SchemaVersion(BaseModel):
    version = IntegerField()


class Setting(BaseModel):
    key = CharField(primary_key=True)
    value = JSONField()


class AccountPair(BaseModel):
    """The pair of accounts a piece of state belongs to: a source account and a Stripe account in one mode."""

    id = AutoField()
    uuid = CharField(unique=True)
    source_system = CharField()  # "cliniko", "calcom"
    source_account = CharField()
    source_region = CharField(default="")  # Cliniko shard, Cal.com base URL host
    source_name = CharField(default="")
    stripe_account = CharField()
    stripe_livemode = BooleanField()
    stripe_name = CharField(default="")
    created_at = DateTimeField(default=utcnow)
    last_used_at = DateTimeField(default=utcnow)
    # When ClinicSync first saw that another installation syncs these same accounts (schema v5): told once.
    other_installation_at = DateTimeField(null=True)

    class Meta:
        indexes = ((("source_system", "source_account", "source_region", "stripe_account", "stripe_livemode"), True),)

    @property
    def label(self) -> str:
        mode = "live" if self.stripe_livemode else "test"
        return f"{self.source_system}:{self.source_region}:{self.source_account} → stripe:{self.stripe_account}:{mode}"


class StreamState(BaseModel):
    pair = ForeignKeyField(AccountPair, on_delete="CASCADE")
    stream = CharField()
    cursor = CharField(null=True)  # ISO-8601 UTC; the next incremental read starts here
    stripe_index_built_at = DateTimeField(null=True)
    # Stripe's own `created` (epoch s) of the newest object the index has seen: each run lists what is newer,
    # so customers staff add in Stripe later are matched by email too instead of being duplicated.
    stripe_index_high_water = IntegerField(null=True)
    last_run_at = DateTimeField(null=True)

    class Meta:
        indexes = ((("pair", "stream"), True),)


class RecordLink(BaseModel):
    """A source record seen by a stream and, once linked, the Stripe object it maps to."""

    pair = ForeignKeyField(AccountPair, on_delete="CASCADE")
    stream = CharField()
    source_id = CharField()
    stripe_object = CharField()
    stripe_id = CharField(null=True)
    # Of the last payload Stripe accepted for this record; with no Stripe object, of the reason last reported for
    # leaving it alone (a stream that never creates, with nothing to link to: Stream.unmatched).
    payload_hash = CharField(null=True)
    email_hash = CharField(null=True, index=True)
    # The email's key within the Stripe account (matchkey.person_hash; schema v8): the same from every source's
    # pair, so a person a Cliniko patient's link made is found by a Cal.com attendee with that email, and back.
    person_key = CharField(null=True)
    display_name = CharField(default="")
    archived = BooleanField(default=False)
    created_at = DateTimeField(default=utcnow)
    updated_at = DateTimeField(default=utcnow)
    # The stream mapping revision the object was last written with: its targets minus the current mapping's are
    # the fields to unset in Stripe (schema v2).
    mapping_version = IntegerField(null=True)

    class Meta:
        indexes = (
            (("pair", "stream", "source_id"), True),
            (("pair", "stream", "stripe_id"), True),
        )


class StripeIndexEntry(BaseModel):
    """An existing Stripe object (from the first listing or a later top-up), keyed by its casefolded email's hash."""

    pair = ForeignKeyField(AccountPair, on_delete="CASCADE")
    stripe_object = CharField()
    stripe_id = CharField()
    email_hash = CharField(null=True)
    source_ref = CharField(null=True)  # the cross-reference metadata, if an earlier install set it
    display_name = CharField(default="")
    created = IntegerField(null=True)  # Stripe's `created` (schema v5): of two twins, the older one stays

    class Meta:
        indexes = (
            (("pair", "stripe_object", "stripe_id"), True),
            (("pair", "stripe_object", "source_ref"), False),
            (("pair", "stripe_object", "email_hash"), False),
        )


class SyncRun(BaseModel):
    id = AutoField()
    pair = ForeignKeyField(AccountPair, null=True, on_delete="CASCADE")
    stream = CharField()
    trigger = CharField(default="manual")  # manual, schedule, cli, retry
    dry_run = BooleanField(default=False)
    started_at = DateTimeField(default=utcnow)
    finished_at = DateTimeField(null=True)
    # running, ok, attention, failed, cancelled, needs_approval; interrupted: its process died while running
    outcome = CharField(default="running")
    created = IntegerField(default=0)
    linked = IntegerField(default=0)
    updated = IntegerField(default=0)
    unchanged = IntegerField(default=0)
    skipped = IntegerField(default=0)
    failed = IntegerField(default=0)
    review = IntegerField(default=0)
    waiting = IntegerField(default=0)  # held back by an earlier change still queued for Stripe (schema v10)
    message = TextField(default="")
    # Scheduled polls that found nothing to do, folded into one row (schema v6): an idle hour is one row ("60
    # checks, nothing changed"), not sixty. The row is the latest check (its times, its id); `checks_since` is
    # when the first of them started. Every other run has its own row, 1 check and no `checks_since`.
    checks = IntegerField(default=1)
    checks_since = DateTimeField(null=True)


class SyncEvent(BaseModel):
    """One history row: what happened to one record in one run."""

    run = ForeignKeyField(SyncRun, backref="events", on_delete="CASCADE")
    stream = CharField()
    source_id = CharField(index=True)
    display_name = CharField(default="")
    stripe_id = CharField(null=True, index=True)
    action = CharField()  # created, linked, updated, unchanged, skipped, waiting, failed, review, note
    message = TextField(default="")
    created_at = DateTimeField(default=utcnow)


class OutboxEntry(BaseModel):
    """A Stripe write, stored with its exact request before it is sent, so a crash replays the same request."""

    id = AutoField()
    pair = ForeignKeyField(AccountPair, on_delete="CASCADE")
    stream = CharField()
    source_id = CharField()
    op = CharField()  # create, update
    stripe_object = CharField()
    stripe_id = CharField(null=True)
    params = JSONField(null=True)  # dropped once the row is done or failed
    payload_hash = CharField()
    email_hash = CharField(null=True)
    display_name = CharField(default="")
    archived = BooleanField(default=False)
    notes = TextField(default="")  # what mapping changed to fit Stripe, for the history row
    idempotency_key = CharField(null=True, unique=True)
    status = CharField(default="pending")  # pending, done, failed, superseded
    mapping_version = IntegerField(null=True)  # the mapping revision the params were built with (schema v2)
    # A row is one step of a record's write plan (schema v5): steps share `plan_key`, run in `step` order, and a
    # step waits for the one before it. `refs` names request parameters ("" = the object to update) that take an
    # earlier step's Stripe id; `effects` says what a finished step means for the record's role links. Only the
    # last step writes the record's history row, with `plan_action`.
    plan_key = CharField(null=True)
    step = IntegerField(default=0)
    last_step = BooleanField(default=True)
    role = CharField(default="")  # "" (a row from before v5): the stream's primary object
    refs = JSONField(null=True)
    effects = JSONField(null=True)
    plan_action = CharField(null=True)  # created, linked, updated; None: from `op` (rows from before v5)
    attempts = IntegerField(default=0)
    last_error = TextField(default="")
    created_at = DateTimeField(default=utcnow)
    finished_at = DateTimeField(null=True)


class RoleLink(BaseModel):
    """A Stripe object of a secondary role that a source record owns (schema v5): e.g. every price ClinicSync made
    for a product, with the one in use marked current. The record's primary object stays in RecordLink."""

    pair = ForeignKeyField(AccountPair, on_delete="CASCADE")
    stream = CharField()
    source_id = CharField()
    role = CharField()  # "price"
    stripe_object = CharField()
    stripe_id = CharField()
    fingerprint = CharField(null=True)  # what the immutable object holds (a price: amount, currency, tax behaviour)
    current = BooleanField(default=False)
    active = BooleanField(default=True)
    created_at = DateTimeField(default=utcnow)
    updated_at = DateTimeField(default=utcnow)

    class Meta:
        indexes = (
            (("pair", "stream", "role", "stripe_id"), True),
            (("pair", "stream", "source_id"), False),
        )


class ReviewItem(BaseModel):
    """A record a person must decide about; the next sync carries out the decision."""

    id = AutoField()
    pair = ForeignKeyField(AccountPair, on_delete="CASCADE")
    stream = CharField()
    source_id = CharField()
    display_name = CharField(default="")
    reason = CharField()  # ambiguous_email, email_match, stripe_object_deleted
    detail = TextField(default="")
    candidates = JSONField(default=list)  # Stripe ids
    status = CharField(default="open")  # open, resolved, done, ignored
    resolution = CharField(null=True)  # link, create, ignore
    resolution_stripe_id = CharField(null=True)
    created_at = DateTimeField(default=utcnow)
    resolved_at = DateTimeField(null=True)


class RetryRecord(BaseModel):
    """A source record to read again by id at the start of the next run (a change must never be lost)."""

    pair = ForeignKeyField(AccountPair, on_delete="CASCADE")
    stream = CharField()
    source_id = CharField()
    reason = TextField(default="")
    created_at = DateTimeField(default=utcnow)

    class Meta:
        indexes = ((("pair", "stream", "source_id"), True),)


class SyncPlan(BaseModel):
    """The saved result of a dry run: what a sync would do, for review and approval."""

    id = AutoField()
    pair = ForeignKeyField(AccountPair, on_delete="CASCADE")
    stream = CharField()
    created_at = DateTimeField(default=utcnow)
    summary = JSONField()
    approved_at = DateTimeField(null=True)


class StreamMappingRow(BaseModel):
    """The current field mapping of one stream (schema v2): the JSON document of mapping/spec.py."""

    stream = CharField(primary_key=True)
    version = IntegerField()  # increases with every save; RecordLink.mapping_version refers to it
    body = JSONField()
    saved_at = DateTimeField(default=utcnow)
    saved_by = CharField(default="")

    class Meta:
        table_name = "stream_mapping"


class MappingRevision(BaseModel):
    """Every saved version of a stream's mapping, so the fields an earlier version wrote can be unset."""

    stream = CharField()
    version = IntegerField()
    body = JSONField()
    saved_at = DateTimeField(default=utcnow)
    saved_by = CharField(default="")

    class Meta:
        indexes = ((("stream", "version"), True),)


class FieldAllowance(BaseModel):
    """A person's decision to allow (or withdraw) one clinical source field for one stream, with the warning they
    were shown. Append-only: the newest row per (stream, field) is in force."""

    id = AutoField()
    stream = CharField()
    source_field = CharField()
    decision = CharField()  # allowed, withdrawn
    decided_by = CharField()  # the OS user
    via = CharField(default="cli")  # cli, gui
    warning = TextField(default="")
    decided_at = DateTimeField(default=utcnow)

    class Meta:
        indexes = ((("stream", "source_field"), False),)


class WritebackMark(BaseModel):
    """A source record that carries its Stripe id in the write-back field: the backfill's persisted progress."""

    pair = ForeignKeyField(AccountPair, on_delete="CASCADE")
    stream = CharField()
    source_id = CharField()
    stripe_id = CharField()
    field_token = CharField()
    written_at = DateTimeField(default=utcnow)

    class Meta:
        indexes = ((("pair", "stream", "source_id"), True),)


class ServiceRequest(BaseModel):
    """Something a window asks of the process that runs this profile's scheduler (schema v6): `clinicsync serve`
    polls this table, so a window attached to it never starts a second scheduler."""

    id = AutoField()
    kind = CharField()  # sync, cancel, pause, resume
    streams = JSONField(null=True)  # for sync: the streams asked for; None: every enabled stream
    origin = CharField(default="")  # who asked, for the log ("window pid 4242")
    status = CharField(default="pending")  # pending, accepted, refused, done
    result = TextField(default="")  # what came of it, in words
    job_id = IntegerField(null=True)  # the runner's job, once accepted
    created_at = DateTimeField(default=utcnow)
    handled_at = DateTimeField(null=True)


class SchedulerState(BaseModel):
    """What the process running this profile's scheduler is doing (one row, id 1; schema v6). The scheduler lock
    file says whether one runs at all; this row says which one, since when, and when each job runs next."""

    id = IntegerField(primary_key=True)
    holder = CharField()  # serve, window
    pid = IntegerField()
    host = CharField(default="")
    started_at = DateTimeField(default=utcnow)
    heartbeat_at = DateTimeField(default=utcnow)
    state = CharField(default="idle")  # idle, syncing, paused, stopped
    next_runs = JSONField(default=dict)  # job id ("cliniko.patients", "reconcile") → naive UTC ISO time


class Alert(BaseModel):
    """A situation a person must act on (schema v6). One row per occurrence: `pending` while it is seen but not
    yet worth anyone's time (an outage shorter than the threshold), `active` once raised, `cleared` when over."""

    id = AutoField()
    key = CharField()  # identifies the situation: "auth", "unreachable:stripe", "failing:cliniko.patients"
    kind = CharField()  # auth, unreachable, review, failing, reconcile
    state = CharField(default="pending")
    title = CharField(default="")
    message = TextField(default="")
    since = DateTimeField(default=utcnow)  # when the situation was first seen
    raised_at = DateTimeField(null=True)
    notified_at = DateTimeField(null=True)  # last time a person was told (at most once a day)
    notified_count = IntegerField(default=0)
    cleared_at = DateTimeField(null=True)
    detail = JSONField(default=dict)


class ReconcileReport(BaseModel):
    """One reconciliation: both sides of the chosen streams read in full and compared (schema v7)."""

    id = AutoField()
    pair = ForeignKeyField(AccountPair, on_delete="CASCADE")
    streams = JSONField()  # the stream names compared
    trigger = CharField(default="cli")  # cli, manual, schedule
    started_at = DateTimeField(default=utcnow)
    finished_at = DateTimeField(null=True)
    outcome = CharField(default="running")  # reconcile.findings.ReportOutcome
    counts = JSONField(null=True)  # reconcile.findings.Counts: reported by stream and type, and accepted
    compared = JSONField(null=True)  # stream → {"source": records read, "stripe": objects read}
    time_zone = CharField(default="")  # the clinic's, for showing the report's times
    message = TextField(default="")


class ReconcileFinding(BaseModel):
    """One finding of a report. Field drift keeps both values: the report must show them (kept reports are few)."""

    id = AutoField()
    report = ForeignKeyField(ReconcileReport, backref="findings", on_delete="CASCADE")
    stream = CharField()
    type = CharField()  # reconcile.findings.FindingType
    severity = CharField()
    reason = CharField()
    stripe_object = CharField()
    source_id = CharField(null=True, index=True)
    stripe_id = CharField(null=True, index=True)
    field = CharField(default="")
    source_value = TextField(null=True)
    stripe_value = TextField(null=True)
    display_name = CharField(default="")
    explanation = TextField(default="")
    suggested_fix = CharField(null=True)
    fixes = JSONField(default=list)
    related = JSONField(default=list)
    fingerprint = CharField(default="")
    status = CharField(default="open")  # reconcile.findings.FindingStatus
    note = TextField(default="")
    updated_at = DateTimeField(default=utcnow)

    class Meta:
        indexes = ((("report", "type", "stream"), False),)


class ReconcileIntent(BaseModel):
    """A finding a person marked as intended: not reported again while its compared values hash the same."""

    pair = ForeignKeyField(AccountPair, on_delete="CASCADE")
    stream = CharField()
    key = CharField()  # reconcile.findings.finding_key: type, source id, Stripe id and field
    fingerprint = CharField()
    note = TextField(default="")
    marked_by = CharField(default="")
    marked_at = DateTimeField(default=utcnow)

    class Meta:
        indexes = ((("pair", "stream", "key"), True),)


class WebhookDelivery(BaseModel):
    """A Cal.com webhook delivery already received (schema v9): Cal.com sends no delivery id and its signature has
    no timestamp, so a repeat is known by its trigger, booking uid and `createdAt` (hashed into `key`). Rows whose
    `created_at` is older than the receiver's freshness window are pruned: such a delivery is refused as stale."""

    key = CharField(primary_key=True)
    created_at = DateTimeField(index=True)  # the delivery's own `createdAt` (UTC)
    received_at = DateTimeField(default=utcnow)


# Tables added by schema v2 (migrations._v2_mapping); kept out of ALL_MODELS, which step 1 creates.
MAPPING_MODELS: tuple[type[BaseModel], ...] = (StreamMappingRow, MappingRevision, FieldAllowance, WritebackMark)
# Added by schema v5 (migrations._v5_write_plans).
PLAN_MODELS: tuple[type[BaseModel], ...] = (RoleLink,)
# Added by schema v6 (migrations._v6_scheduling).
SCHEDULING_MODELS: tuple[type[BaseModel], ...] = (ServiceRequest, SchedulerState, Alert)


# Added by schema v6 (migrations._v6_reconciliation).
RECONCILE_MODELS: tuple[type[BaseModel], ...] = (ReconcileReport, ReconcileFinding, ReconcileIntent)
# Added by schema v9 (migrations._v9_webhook_deliveries).
WEBHOOK_MODELS: tuple[type[BaseModel], ...] = (WebhookDelivery,)


ALL_MODELS: tuple[type[BaseModel], ...] = (
    SchemaVersion,
    Setting,
    AccountPair,
    StreamState,
    RecordLink,
    StripeIndexEntry,
    SyncRun,
    SyncEvent,
    OutboxEntry,
    ReviewItem,
    RetryRecord,
    SyncPlan,
)
