"""One run of one stream: replay queued writes, read what changed at the source, decide per record, write.

Decisions per record, in order: a person's review decision → the local link (update if the mapped payload
changed) → archived and never linked (not created) → an existing Stripe object naming this record in its
metadata → a single unambiguous email match (decided once the whole read is done, when it is known how many
records share the email) → create.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from peewee import chunked

from clinicsync import labels, money
from clinicsync.labels import plural
from clinicsync.mapping.apply import (
    MappedRecord,
    create_params,
    map_record,
    payload_hash,
    update_params,
    without_writeback_field,
)
from clinicsync.mapping.fields import FieldCatalogue, custom_field_entries
from clinicsync.mapping.spec import CUSTOM_FIELD_PREFIX, StreamMapping
from clinicsync.mapping.transforms import DEFAULT_TIME_ZONE, TransformContext
from clinicsync.outcomes import ACTIONS, NOTE, Outcome, StopKind
from clinicsync.retry import Cancelled, CancelToken, RetryPolicy
from clinicsync.sources import errors
from clinicsync.sources.errors import SourceError
from clinicsync.store import lookup
from clinicsync.store import mappings as mapping_store
from clinicsync.store.db import database_proxy, storage_problem
from clinicsync.store.models import (
    AccountPair,
    OutboxEntry,
    RecordLink,
    RetryRecord,
    ReviewItem,
    RoleLink,
    StreamState,
    StripeIndexEntry,
    SyncEvent,
    SyncPlan,
    SyncRun,
    utcnow,
)
from clinicsync.store.plan_file import IndexRow, PlanEntry, PlanFile, new_path, remove
from clinicsync.streams import identity
from clinicsync.streams.base import (
    CANDIDATES_LISTED,
    DUPLICATE_OF_KEY,
    FindRequest,
    ListedBelow,
    ListingMark,
    MatchDecision,
    Matcher,
    MatchSetup,
    NotYet,
    PlanRequest,
    Record,
    RoleLinkInfo,
    Stream,
    StreamNotReady,
    StreamSettings,
    WriteStep,
    observed_request,
)
from clinicsync.stripe_gateway import StripeFailure, StripeGateway
from clinicsync.sync import people, plans, twins
from clinicsync.sync.matching import (
    PERSON_OBJECTS,
    build_index,
    candidates_by_email,
    candidates_by_reference,
    is_unlinked,
    match_hash,
    owned_update,
    person_candidates,
    person_key,
    records_sharing_email,
    refresh_index,
    refresh_since,
)
from clinicsync.sync.outbox import ACTION_OF_OP, OutboxWriter, StripeStopped, open_review, revisit_later
from clinicsync.sync.pool import WritePool
from clinicsync.sync.references import AccountLinks
from clinicsync.sync.scope import ScopeFilter, parse_time
from clinicsync.sync.seen import SeenVersions
from clinicsync.sync.writeback import BackfillResult, backfill
from clinicsync.sync.writeback import progress as writeback_progress

log = logging.getLogger(__name__)

PLAN_SAMPLE_SIZE = 20
WRITE_BATCH = 50  # plans stored per transaction (each stored before any of them is sent)
# Stored per transaction while the write threads have twice that many queued (a first sync's reading outruns
# Stripe): each new record's link adds to two indexes of hashes, in no order, and a transaction writes again every
# page it touches; 50 links touched nearly a page of each per record at 20,000 patients. 200 wrote 12.5 KB a record
# there instead of 18.0; 500 wrote 9.5 KB but held 6 MiB more at the peak.
QUEUED_WRITE_BATCH = 200
UNSTORED_PER_COMMIT = 200  # the reading thread's own writes (links, history, reviews) stored per transaction
# Which outcome a record counts as when several happen to it in one run (the most telling one).
COUNT_RANK = {
    "unchanged": 0,
    "skipped": 1,
    "waiting": 2,
    "updated": 3,
    "linked": 4,
    "created": 5,
    "review": 6,
    "failed": 7,
}
Progress = Callable[[str, int, int | None, str], None]  # (stream, records done, total or None, step)


@dataclass(frozen=True)
class RunOptions:
    trigger: str = "cli"
    dry_run: bool = False
    overlap_s: int = 120
    email_match: str = "auto_link"  # or "review"
    search_settle_s: float = 90.0
    workers: int = 8  # at ~80 ms a request, 8 in flight reach Stripe's live limit of 100/s
    policy: RetryPolicy = field(default_factory=RetryPolicy)
    currency: str = ""  # blank: from the source's country
    stream_values: Mapping[str, Any] = field(default_factory=dict)  # settings stream declarations read
    # A plan a person must approve keeps every decision (store/plan_file.py), for the approved sync to carry out.
    keep_plan: bool = False


@dataclass
class RunResult:
    run_id: int
    stream: str
    outcome: str  # ok, attention, failed, cancelled
    counts: dict[str, int]
    message: str = ""
    stop_kind: str | None = None  # why a run stopped early: unavailable, auth, permission, source_*
    plan: dict[str, Any] | None = None


class RunRecorder:
    """Counts outcomes and writes history rows; safe to call from write threads."""

    def note(self, source_id: str, display_name: str, stripe_id: str | None, message: str) -> None:
        """A history row that is not one of the record's counted outcomes (e.g. a duplicate removed)."""
        self._event(NOTE, source_id, display_name, stripe_id, message)

    def _event(self, action: str, source_id: str, display_name: str, stripe_id: str | None, message: str) -> None:
        if self._dry_run:
            return
        event = SyncEvent(
            run=self._run,
            stream=self._run.stream,
            source_id=source_id,
            display_name=display_name,
            stripe_id=stripe_id,
            action=action,
            message=message,
        )
        if self._later is not None and threading.get_ident() == self._reader and not database_proxy.in_transaction():
            self._later(lambda: lookup.insert(event))  # stored with the reading thread's next batch of writes
        else:  # in the transaction that records what it says (a settled write), or a write thread's
            lookup.insert(event)

    def __init__(
        self, run: SyncRun, *, dry_run: bool, later: Callable[[Callable[[], None]], None] | None = None
    ) -> None:
        """`later`: where the reading thread's history rows wait to be stored with its other writes (None: now)."""
        self._run = run
        self._dry_run = dry_run
        self._later = later
        self._reader = threading.get_ident()
        self._lock = threading.Lock()
        self.counts = dict.fromkeys(ACTIONS, 0)
        self._by_record: dict[str, str] = {}
        self.samples: dict[str, list[dict[str, Any]]] = {action: [] for action in ACTIONS}
        # A plan that keeps its decisions: told every record's outcome, with what carrying it out needs (`detail`).
        self.sink: Callable[[PlanEntry], None] | None = None

    def forget_records(self) -> None:
        """The run is over: each record's counted outcome is no longer needed (the counts are kept)."""
        with self._lock:
            self._by_record.clear()

    def record(
        self,
        action: str,
        source_id: str,
        display_name: str,
        stripe_id: str | None,
        message: str = "",
        detail: dict[str, Any] | None = None,
    ) -> None:
        with self._lock:
            # One count per record: a write replayed at the start of a run and its record read again later is one
            # record, not two. It counts as what matters most of what happened to it (failed before created
            # before updated before unchanged).
            known = source_id not in ("", "?")
            previous = self._by_record.get(source_id) if known else None
            if previous is not None and COUNT_RANK[action] <= COUNT_RANK[previous]:
                counted = False
            else:
                if previous is not None:
                    self.counts[previous] -= 1
                if known:
                    self._by_record[source_id] = action
                self.counts[action] += 1
                counted = True
            if counted and len(self.samples[action]) < PLAN_SAMPLE_SIZE:
                self.samples[action].append(
                    {"source_id": source_id, "name": display_name, "stripe_id": stripe_id, "message": message}
                )
        if self.sink is not None and known:  # the record's latest decision: one read again is decided again
            self.sink(PlanEntry(source_id, action, stripe_id, display_name, message, detail or {}))
        if action != "unchanged":
            self._event(action, source_id, display_name, stripe_id, message)


class StreamRun:
    def __init__(
        self,
        stream: Stream,
        pair: AccountPair,
        source: Any,
        gateway: StripeGateway,
        options: RunOptions,
        *,
        cancel: CancelToken | None = None,
        progress: Progress | None = None,
        plan: plans.ApprovedPlan | None = None,
    ) -> None:
        self.stream = stream
        # The approved plan this run carries out instead of reading every record again (None: an ordinary run).
        self._plan = plan
        self._read_from: str | None = None  # the cursor the next read starts from, once this run's read began
        self._met: set[str] = set()  # carrying out a plan: records with a link before this run
        # The stored mapping (or the default, with the pair's default scope), read once per run.
        self.mapping, self.scope_is_default = mapping_store.load_for_pair(stream.name, livemode=pair.stripe_livemode)
        self.pair = pair
        self.source = source
        self.gateway = gateway
        self.options = options
        self.cancel = cancel or CancelToken()
        self._progress = progress or (lambda *_: None)
        # source id → the version handled this run (its payload hash and change time, packed: sync/seen.py)
        self._seen = SeenVersions()
        self._twice_noted: set[str] = set()
        # Records whose email matches an unlinked Stripe object, decided once every record is known. Keyed by
        # source id: a record read twice in one run (edited mid-sync) must be decided once, by its last version.
        self._deferred: dict[str, tuple[MappedRecord, str, str | None]] = {}
        self._claimed: set[str] = set()  # Stripe ids this run is linking, not yet committed
        self._reviews: dict[str, ReviewItem] = {}
        # The stream's own matcher (Stream.matcher), made when the first unlinked record is offered to it; the
        # records offered, by source id, to apply its decisions to.
        self._matcher: Matcher | None = None
        self._offered: dict[str, tuple[MappedRecord, str | None, RecordLink]] = {}
        self._done = 0
        self._target_diffs: dict[int | None, tuple[tuple[str, ...], tuple[str, ...]]] = {}
        self.writeback_result: BackfillResult | None = None
        self._topup = twins.Topup(lambda: None)
        # Whether to ask Stripe for a person's customer by email before creating one (see _made_elsewhere).
        self._look_before_create = False
        self._links = AccountLinks(pair)
        # Plans decided but not stored yet (stored WRITE_BATCH at a time, each batch before any of it is sent), and
        # records met for the first time whose link is stored with them.
        self._batch: list[tuple[MappedRecord, str, list[WriteStep], str | None]] = []
        self._new_links: dict[str, RecordLink] = {}
        self._current_links: dict[str, RecordLink] = {}  # unsaved links of records being decided now
        # The reading thread's own writes (a record's link met first with nothing to send, its history row, a review
        # opened), stored UNSTORED_PER_COMMIT records at a time and before any plan is sent: each transaction
        # rewrites every page it touches, and one per record wrote some 50 KB a record. A crash loses none that
        # matters: the cursor moves only after they are stored, so the next run reads those records again.
        self._unstored: list[Callable[[], None]] = []
        self._unstored_ids: set[str] = set()  # records whose new link waits there
        # Until _prepare has checked the mapping and asked the source: the default zone, no scope filter.
        self._prepared = PreparedStream(
            stream,
            self.mapping,
            TransformContext(),
            StreamSettings(time_zone=DEFAULT_TIME_ZONE, currency=options.currency or money.DEFAULT_CURRENCY),
            ScopeFilter(),
        )

    @property
    def _scope(self) -> ScopeFilter:
        return self._prepared.scope

    # --- the run --------------------------------------------------------------------------------------
    def run(self) -> RunResult:
        run = SyncRun.create(
            pair=self.pair, stream=self.stream.name, trigger=self.options.trigger, dry_run=self.options.dry_run
        )
        self.recorder = RunRecorder(run, dry_run=self.options.dry_run, later=self._store_later)
        result = RunResult(run_id=run.id, stream=self.stream.name, outcome="ok", counts=self.recorder.counts)
        try:
            self._prepare()
            if self.options.dry_run:
                result.plan = self._dry_run(run)
            else:
                self._execute()
                result.message = self._writeback_summary()
                if twins.newly_detected(self.pair, run.started_at):
                    result.message = "\n".join(filter(None, [twins.OTHER_INSTALLATION_MESSAGE, result.message]))
        except StreamNotReady as exc:
            result.outcome, result.stop_kind, result.message = Outcome.FAILED, StopKind.MAPPING, str(exc)
        except StripeStopped as stop:
            result.outcome, result.stop_kind, result.message = Outcome.FAILED, stop.kind, str(stop)
        except StripeFailure as failure:  # a read that kept failing, or a key rejected mid-run
            kind = {"transient": StopKind.UNAVAILABLE, "auth": StopKind.AUTH, "permission": StopKind.PERMISSION}.get(
                failure.kind
            )
            result.outcome, result.stop_kind, result.message = (
                Outcome.FAILED,
                kind or StopKind.STRIPE_ERROR,
                failure.message,
            )
        except Cancelled:
            result.outcome, result.message = Outcome.CANCELLED, "The sync was cancelled; nothing queued is lost."
        except SourceError as exc:
            result.outcome, result.stop_kind, result.message = Outcome.FAILED, _source_kind(exc), str(exc)
        except Exception as exc:
            if (storage := storage_problem(exc)) is not None:
                log.error("sync of %s stopped: %s", self.stream.name, exc)
                result.outcome, result.stop_kind, result.message = Outcome.FAILED, StopKind.STORAGE, storage
            else:
                log.exception("sync of %s failed", self.stream.name)
                result.outcome, result.stop_kind = Outcome.FAILED, StopKind.INTERNAL
                result.message = f"ClinicSync hit an unexpected problem ({type(exc).__name__}); see the log."
        if self._matcher is not None:  # the run stopped before its end: what its matcher still lists stops too
            self._matcher.stop()
            self._matcher = None  # nor does the run keep what it listed
        if result.outcome == "ok" and (result.counts["failed"] or result.counts["review"]):
            result.outcome = "attention"
        try:
            self._finish(run, result)
        except Exception as exc:  # the run's own history row may not fit on a full disk either
            if storage_problem(exc) is None:
                raise
            log.error("could not record the end of run %s: %s", run.id, exc)
        self._forget_records()
        return result

    def _forget_records(self) -> None:
        """Drop what the run kept per record. The run refers to itself (its recorder stores history through it,
        its top-up calls it), so only the cycle collector frees it, maybe long after: a 20,000-patient plan's were
        still held well into the approved sync that followed it."""
        self._seen = SeenVersions()
        self._twice_noted.clear()
        self._met, self._claimed, self._offered, self._reviews = set(), set(), {}, {}
        self.recorder.forget_records()

    def _finish(self, run: SyncRun, result: RunResult) -> None:
        try:
            self._store_unstored()  # what the read decided before it stopped, if it did (else nothing is left)
        except Exception as exc:  # the run's own row is written all the same; those records are read again
            log.error("run %s: the last records' links and history could not be stored: %s", run.id, exc)
        with database_proxy.atomic():
            for action in ACTIONS:
                setattr(run, action, result.counts[action])
            run.outcome = result.outcome
            run.message = result.message
            run.finished_at = utcnow()
            run.save()

    def _dry_run(self, run: SyncRun) -> dict[str, Any]:
        """Compute the plan on a private copy of the database: nothing but the plan is kept. A plan a person must
        approve also keeps, in its own file, every record's decision and the Stripe index it read (`_keep_index`)."""
        pending = len(self._writer().pending_steps())
        kept: PlanFile | None = None
        if self.options.keep_plan and plans.carried_out_by_plan(self.stream):
            kept = PlanFile(new_path(Path(database_proxy.database)), create=True)
            self.recorder.sink = kept.put
        try:
            with database_proxy.private_snapshot():
                self._read_and_decide(pool=WritePool(0), writer=None)
                if kept is not None:
                    self._keep_index(kept)
            if kept is not None:
                kept.finish()
        except BaseException:
            if kept is not None:
                kept.close()
                remove(kept.path)
            raise
        finally:
            self.recorder.sink = None
        plan = {
            "stream": self.stream.name,
            "counts": dict(self.recorder.counts),
            "samples": {action: rows for action, rows in self.recorder.samples.items() if rows},
            "fields": [rule.target for rule in self.mapping.rules],
            # What leaves the clinic, field by field, and which records at all: shown for approval.
            "sent": [{"target": rule.target, "sources": list(rule.sources)} for rule in self.mapping.rules],
            "scope": self.mapping.scope.describe(),
            "scope_note": mapping_store.LIVE_DEFAULT_NOTE if self.scope_is_default else "",
            "stream_note": self.stream.plan_note,  # what the stream makes in Stripe, before approval
            "out_of_scope": len(self._scope.left_out),
            "mapping_version": self.mapping.version,
            "writeback": self._writeback_plan(),
            "queued_writes": pending,
            "stripe_mode": "live" if self.pair.stripe_livemode else "test",
            "stripe_account": self.pair.stripe_account,
        }
        if kept is not None:
            plan[plans.KEPT] = {"file": kept.path.name, "carried_out_at": None}
        SyncPlan.create(pair=self.pair, stream=self.stream.name, summary=plan)
        plans.drop_superseded(self.pair, self.stream.name, keep=kept.path.name if kept is not None else None)
        run.message = "dry run: nothing was written"
        return plan

    def _keep_index(self, kept: PlanFile) -> None:
        """Keep the Stripe index this plan read, and where its source read began, for the approved sync: it tops
        the index up and reads only what changed since, instead of listing and reading everything again."""
        state = StreamState.get(pair=self.pair, stream=self.stream.name)
        rows = (
            StripeIndexEntry.select()
            .where(
                (StripeIndexEntry.pair == self.pair) & (StripeIndexEntry.stripe_object == self.mapping.stripe_object)
            )
            .iterator()
        )
        kept.put_index(IndexRow(r.stripe_id, r.email_hash, r.source_ref, r.display_name, r.created) for r in rows)
        built = state.stripe_index_built_at
        kept.set_meta(
            cursor=self._read_from,
            index_built_at=built.isoformat() if built is not None else None,
            index_high_water=state.stripe_index_high_water,
            mapping_version=self.mapping.version,
        )

    def _writer(self) -> OutboxWriter:
        return OutboxWriter(
            gateway=self.gateway,
            pair=self.pair,
            mapping=self.mapping,
            stream=self.stream,
            policy=self.options.policy,
            recorder=self.recorder,
            sleep=self.cancel.sleep,
            search_settle_s=self.options.search_settle_s,
        )

    def _execute(self) -> None:
        writer = self._writer()
        pool = WritePool(self.options.workers, stopped=lambda: self.cancel.cancelled)
        try:
            self._progress(self.stream.name, 0, None, "Sending queued changes")
            queued: dict[str, list[int]] = {}
            for source_id, row_id in writer.pending_steps():
                queued.setdefault(source_id, []).append(row_id)
            for source_id, ids in queued.items():  # each record's steps in order, records in parallel
                pool.submit(source_id, lambda ids=ids: writer.deliver_steps(ids))
            self._drain(pool, writer)
            if self._plan is not None:
                self._carry_out(self._plan, pool=pool, writer=writer)
            else:
                self._read_and_decide(pool=pool, writer=writer)
        finally:
            pool.close()
            writer.flush()  # what Stripe took before a stop is recorded, not replayed
        if self.mapping.writeback.enabled:
            self._write_back()

    # --- the mapping, the scope and write-back ---------------------------------------------------------
    def _prepare(self) -> None:
        self._prepared = prepare_stream(self.stream, self.mapping, self.source, self.options)

    def _target_changes(self, written_with: int | None) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """(retired, added) targets between the mapping a Stripe object was written with and the current one."""
        if written_with not in self._target_diffs:
            self._target_diffs[written_with] = (
                mapping_store.retired_targets(self.stream.name, written_with, self.mapping),
                mapping_store.added_targets(self.stream.name, written_with, self.mapping),
            )
        return self._target_diffs[written_with]

    def _write_back(self) -> None:
        step = "Writing Stripe ids back to the source"
        self._progress(self.stream.name, 0, None, step)
        try:
            self.writeback_result = backfill(
                self.source,
                self.pair,
                self.stream.name,
                self.mapping.writeback.field_token,
                check_cancel=self.cancel.raise_if_cancelled,
                report=lambda done, total: self._progress(self.stream.name, done, total, step),
            )
        except SourceError as exc:  # the sync itself is done; the backfill continues on the next one
            log.warning("write-back stopped: %s", exc)
            self.writeback_result = BackfillResult(message=f"write-back stopped: {exc}")

    def _writeback_summary(self) -> str:
        result = self.writeback_result
        if result is None:
            return ""
        if result.message:
            return result.message
        summary = f"write-back: {result.written} written, {result.total - result.remaining} of {result.total} done"
        return summary + (f", {result.failed} refused" if result.failed else "")

    def _writeback_plan(self) -> dict[str, Any]:
        config = self.mapping.writeback
        if not config.enabled:
            return {"enabled": False}
        done, total = writeback_progress(self.pair, self.stream.name, config.field_token)
        return {"enabled": True, "field_token": config.field_token, "done": done, "total": total}

    def _read_and_decide(self, *, pool: WritePool, writer: OutboxWriter | None) -> None:
        started = utcnow()
        state, _ = StreamState.get_or_create(pair=self.pair, stream=self.stream.name)
        stripe_object = self.mapping.stripe_object
        if self.stream.matcher is not None:  # it lists what it needs itself; the index would go unused
            self._start_matcher(state)
        elif state.stripe_index_built_at is None:
            self._progress(self.stream.name, 0, None, f"Reading existing Stripe {stripe_object}s")
            build_index(self.pair, self.mapping, state, self.gateway.iter_objects(stripe_object))
        else:
            since = refresh_since(state)
            refresh_index(self.pair, self.mapping, state, self.gateway.iter_objects(stripe_object, since))
        self._topup = twins.Topup(lambda: self._top_up(state))
        if self.stream.matcher is None:  # nothing is created by a stream that matches for itself: no twins
            twins.repair(self.pair, self.stream, self.mapping, self.gateway, self.recorder.note, dry_run=writer is None)
            self._look_before_create = twins.another_installation_evident(self.pair, self.mapping)
        self._reviews = _latest_reviews(self.pair, self.stream.name)
        server_now = self.source.probe()
        next_cursor = server_now - timedelta(seconds=self.options.overlap_s)
        self._read_from = _format_cursor(next_cursor)
        self._progress(self.stream.name, 0, None, f"Reading {self.mapping.source_type} records")
        cursor = _parse_cursor(state.cursor)
        for source_id in self._revisit_ids(full_read=cursor is None):
            record = self.stream.read_one(self.source, source_id)
            if record is not None:
                self._handle(record, pool, writer)
        if self._matcher is not None:  # unchanged records its matcher judges again (a payment came since)
            for record in self._matcher.recheck():
                self.cancel.raise_if_cancelled()
                self._handle(record, pool, writer)
        cursor = self._scope.first_cursor(cursor)
        for record in self.stream.read_changed(self.source, cursor):
            self.cancel.raise_if_cancelled()
            if isinstance(record, ListingMark):
                if record is CANDIDATES_LISTED:
                    self._decide_waiting(pool, writer)
                elif isinstance(record, ListedBelow):
                    self._decide_listed_below(record.value, pool, writer)
                continue
            self._handle(record, pool, writer)
        if self.stream.complete_listing:
            for source_id in self._linked_not_listed():
                self.cancel.raise_if_cancelled()
                record = self.stream.read_one(self.source, source_id)
                if record is not None:
                    self._handle(record, pool, writer)
        self._send_rest_and_move_cursor(pool, writer, state, next_cursor, started)

    def _send_rest_and_move_cursor(
        self, pool: WritePool, writer: OutboxWriter | None, state: StreamState, next_cursor: datetime, started: datetime
    ) -> None:
        """Send and record what is left, then move the cursor: only once every record read has been handled."""
        self._drain(pool, writer)
        self._resolve_deferred(pool, writer)
        self._drain(pool, writer)
        state.cursor = _format_cursor(next_cursor)
        # When this run began: a matcher listed Stripe early in it, so the next run looks for what happened in
        # Stripe (new payments, refunds) from then, not from when this run ended.
        state.last_run_at = started
        state.save()
        # Revisits this run has done; ones queued during it (records it had to skip) wait for the next run.
        RetryRecord.delete().where(
            (RetryRecord.pair == self.pair)
            & (RetryRecord.stream == self.stream.name)
            & (RetryRecord.created_at < started)
        ).execute()

    def _top_up(self, state: StreamState) -> None:
        """Add what is new in Stripe to the index (while creating); what it adds may show another installation."""
        since = refresh_since(state)
        refresh_index(self.pair, self.mapping, state, self.gateway.iter_objects(self.mapping.stripe_object, since))
        if not self._look_before_create:
            self._look_before_create = twins.another_installation_evident(self.pair, self.mapping)

    def _linked_not_listed(self) -> list[str]:
        """Linked records a complete listing left out this run (deleted at the source, or out of its reach). One
        already archived is not asked about again every run: were it back, the listing would show it."""
        rows = RecordLink.select(RecordLink.source_id).where(
            (RecordLink.pair == self.pair)
            & (RecordLink.stream == self.stream.name)
            & RecordLink.stripe_id.is_null(False)
            & (RecordLink.archived == False)  # noqa: E712 - peewee builds SQL from ==
        )
        return sorted(row.source_id for row in rows if row.source_id not in self._seen)

    # --- carrying out an approved plan ---------------------------------------------------------------
    def _carry_out(self, plan: plans.ApprovedPlan, *, pool: WritePool, writer: OutboxWriter) -> None:
        """Carry out the plan a person approved instead of reading every record again: the plan's Stripe index,
        topped up with what Stripe made since; the records changed at the source since the plan's read began,
        judged again (`_unapproved`); then every other record's planned decision, read back from the plan's file
        a page at a time."""
        started = utcnow()
        state, _ = StreamState.get_or_create(pair=self.pair, stream=self.stream.name)
        stripe_object = self.mapping.stripe_object
        if state.stripe_index_built_at is None:  # else adopted by a carry-out that stopped part-way
            self._adopt_index(plan, state)
        self._progress(self.stream.name, 0, None, f"Reading Stripe {stripe_object}s made since the plan")

        def top_up() -> None:
            refresh_index(
                self.pair, self.mapping, state, self.gateway.iter_objects(stripe_object, refresh_since(state))
            )

        top_up()
        self._topup = twins.Topup(top_up)
        # Records already met (a carry-out that stopped part-way); the others need no look-up of their link.
        self._met = {
            row.source_id
            for row in RecordLink.select(RecordLink.source_id).where(
                (RecordLink.pair == self.pair) & (RecordLink.stream == self.stream.name)
            )
        }
        twins.repair(self.pair, self.stream, self.mapping, self.gateway, self.recorder.note, dry_run=False)
        self._reviews = _latest_reviews(self.pair, self.stream.name)
        server_now = self.source.probe()
        next_cursor = server_now - timedelta(seconds=self.options.overlap_s)
        self._progress(self.stream.name, 0, None, f"Reading {self.mapping.source_type} records changed since the plan")
        for source_id in self._revisit_ids(full_read=True):  # the plan read every record in scope
            record = self.stream.read_one(self.source, source_id)
            if record is not None:
                self._handle(record, pool, writer)
        for record in self.stream.read_changed(self.source, self._scope.first_cursor(_parse_cursor(plan.cursor))):
            self.cancel.raise_if_cancelled()
            if not isinstance(record, ListingMark):  # marks are for matchers; a stream with one is judged afresh
                self._handle(record, pool, writer)
        total = plan.file.count()
        self._progress(self.stream.name, self._done, total, "Carrying out the approved plan")
        for entry in plan.file.entries():
            self.cancel.raise_if_cancelled()
            self._carry_out_entry(entry, pool, writer, total)
        self._send_rest_and_move_cursor(pool, writer, state, next_cursor, started)
        plans.mark_carried_out(plan.row)

    def _adopt_index(self, plan: plans.ApprovedPlan, state: StreamState) -> None:
        """The index of the Stripe account as the plan listed it (one transaction: all of it, or none)."""
        match = (StripeIndexEntry.pair == self.pair) & (StripeIndexEntry.stripe_object == self.mapping.stripe_object)
        with database_proxy.atomic():
            StripeIndexEntry.delete().where(match).execute()
            rows = (
                {
                    "pair": self.pair.id,
                    "stripe_object": self.mapping.stripe_object,
                    "stripe_id": row.stripe_id,
                    "email_hash": row.email_hash,
                    "source_ref": row.source_ref,
                    "display_name": row.display_name,
                    "created": row.created,
                }
                for row in plan.file.index_rows()
            )
            for batch in chunked(rows, 200):
                StripeIndexEntry.insert_many(batch).on_conflict_ignore().execute()
            built = plan.meta.get("index_built_at")
            state.stripe_index_built_at = datetime.fromisoformat(built) if built else plan.row.created_at
            state.stripe_index_high_water = plan.meta.get("index_high_water")
            state.save()

    def _carry_out_entry(self, entry: PlanEntry, pool: WritePool, writer: OutboxWriter, total: int) -> None:
        sid = entry.source_id
        if sid in self._seen:  # read again since the plan (changed, or a person decided about it): judged anew
            return
        self._done += 1
        self._progress(self.stream.name, self._done, total, "")
        detail = entry.detail
        # Not added to `_seen`: the plan has one entry per record, and nothing is read after them. Held for every
        # record, it grew with the clinic (issue 14: memory flat at any size).
        if "payload" not in detail:  # a record the mapping could not send: the same outcome, said again
            self.recorder.record(entry.action, sid, entry.display_name, entry.stripe_id, entry.message)
            return
        mapped = MappedRecord(
            source_id=sid,
            payload=detail["payload"],
            display_name=entry.display_name,
            match_value=detail.get("match_value"),
            archived=bool(detail.get("archived")),
            notes=list(detail.get("notes") or ()),
        )
        hashed = match_hash(self.pair, mapped.match_value)
        person = person_key(self.pair, self.mapping.stripe_object, mapped.match_value)
        link = self._remember(mapped, hashed, person) if sid in self._met else self._new_link(mapped, hashed, person)
        if link.id is None:
            self._current_links[sid] = link
        try:
            if link.id is not None or sid in self._reviews or entry.action == "updated":
                # Met by a carry-out that stopped part-way, or a person's decision waits: the ordinary rules, under
                # which a create or link still needs the plan's approval.
                self._decide(mapped, hashed, person, link, pool, writer)
            else:
                self._carry_out_decision(entry, mapped, hashed, pool, writer)
        finally:
            self._current_links.pop(sid, None)
            if link.id is None and sid not in self._new_links:
                link.save(force_insert=True)

    def _carry_out_decision(
        self, entry: PlanEntry, mapped: MappedRecord, hashed: str | None, pool: WritePool, writer: OutboxWriter
    ) -> None:
        sid, detail = mapped.source_id, entry.detail
        if entry.action == "created":
            # Another installation may have created it since the plan (the index was topped up at the start): the
            # object naming the record is linked, never created twice, as in any run. Asked of the index (one
            # indexed query): a set of every reference it holds grew with each top-up to every record created.
            found = [c for c in candidates_by_reference(self.pair, self.mapping, sid) if c not in self._claimed]
            if len(found) > 1:
                many = labels.stripe_objects_words(self.mapping.stripe_object)
                detail_text = f"{len(found)} Stripe {many} already name this record in their metadata"
                self._review(mapped, "ambiguous_reference", found, pool, writer, detail_text)
                return
            if found:
                self._submit("link", mapped, found[0], hashed, pool, writer, approved=True)
                return
        if entry.action in ("created", "linked"):
            target = entry.stripe_id if entry.action == "linked" else None
            owner = self._owner_of(target) if target else None
            if target and (target in self._claimed or owner not in (None, sid)):
                self._review(
                    mapped, "link_taken", [target], pool, writer, f"{target} is linked to another record already"
                )
                return
            op, retired = ("link" if target else "create"), tuple(detail.get("retired") or ())
            self._submit(op, mapped, target, hashed, pool, writer, retired=retired, approved=True)
        elif entry.action == "review":
            reason = str(detail.get("reason") or "plan_changed")
            self._review(mapped, reason, list(detail.get("candidates") or ()), pool, writer, entry.message)
        else:
            if entry.action in ("skipped", "waiting") and detail.get("revisit"):
                revisit_later(self.pair, self.stream.name, sid, entry.message)
            self.recorder.record(entry.action, sid, mapped.display_name, entry.stripe_id, entry.message)

    def _unapproved(self, op: str, mapped: MappedRecord, stripe_id: str | None) -> str | None:
        """Why a create or link of a record judged again while carrying out a plan was not approved (the plan
        decided otherwise, or did not know the record), in a person's words; None when the plan approved it."""
        assert self._plan is not None
        entry = self._plan.file.entry(mapped.source_id)
        if entry is not None and entry.action == ACTION_OF_OP[op] and (op == "create" or entry.stripe_id == stripe_id):
            return None
        one = labels.stripe_object_words(self.mapping.stripe_object)
        now = f"it would now create a new Stripe {one}" if op == "create" else f"it would now link to {stripe_id}"
        if entry is None:
            return f"added or brought into the sync after the plan you approved was made; {now}. Choose what to do"
        planned = {
            "created": f"create a new Stripe {one}",
            "linked": f"link to {entry.stripe_id}",
        }.get(entry.action, f"leave it as it was ({entry.action})")
        return f"changed after the plan you approved was made, which was to {planned}; {now}. Choose what to do"

    def _revisit_ids(self, *, full_read: bool = False) -> list[str]:
        """Records to read by id first: a person decided about them, or asked for a retry; with the
        "recent activity" scope, also records that came into scope without changing (a new appointment does not
        touch the patient) and were never synced — unless this run reads everything anyway."""
        resolved = [sid for sid, review in self._reviews.items() if review.status == "resolved"]
        retries = [
            row.source_id
            for row in RetryRecord.select().where(
                (RetryRecord.pair == self.pair) & (RetryRecord.stream == self.stream.name)
            )
        ]
        newly_active: list[str] = []
        if self._scope.active is not None and not full_read:
            newly_active = self._never_synced(sorted(self._scope.active))
        return list(dict.fromkeys(resolved + retries + newly_active))

    def _never_synced(self, source_ids: list[str]) -> list[str]:
        """Those of `source_ids` no Stripe object is linked to yet, in their order. Asked a chunk at a time: a set of
        every synced record, as before, grew with the clinic, while these are the recently active ones."""
        synced: set[str] = set()
        for chunk in chunked(source_ids, 500):
            rows = (
                RecordLink.select(RecordLink.source_id)
                .where(
                    (RecordLink.pair == self.pair)
                    & (RecordLink.stream == self.stream.name)
                    & RecordLink.stripe_id.is_null(False)
                    & RecordLink.source_id.in_(chunk)
                )
                .tuples()
            )
            synced.update(source_id for (source_id,) in rows)
        return [source_id for source_id in source_ids if source_id not in synced]

    # --- one record -----------------------------------------------------------------------------------
    def _handle(self, record: Record, pool: WritePool, writer: OutboxWriter | None) -> None:
        if not self._scope.admits(record):
            return
        mapped = self._prepared.map(record)
        sid = mapped.source_id
        if self._met_before(record, mapped):
            return
        self._done += 1
        self._progress(self.stream.name, self._done, getattr(self.source, "last_total_entries", None), "")
        if mapped.error:
            self.recorder.record("failed", sid or "?", mapped.display_name, None, mapped.error)
            return
        hashed = match_hash(self.pair, mapped.match_value)
        person = person_key(self.pair, self.mapping.stripe_object, mapped.match_value)
        if self._batched(sid):  # read again (edited mid-sync) before its first change was even stored
            self._flush_batch(pool, writer)
        if sid in self._unstored_ids:  # read again before its link was stored: store it, to find it
            self._store_unstored()
        pool.wait_for(sid)
        if writer is not None and writer.settler.holds(sid):
            writer.flush()
        link = self._remember(mapped, hashed, person)
        if link.id is None:
            self._current_links[sid] = link
        try:
            self._decide(mapped, hashed, person, link, pool, writer, record)
        finally:
            self._current_links.pop(sid, None)
            if link.id is None and sid not in self._new_links:
                # Met for the first time and no write planned: remembered with the next batch of the read's writes.
                self._unstored_ids.add(sid)
                self._store_later(lambda: lookup.insert(link))
        if len(self._unstored) >= UNSTORED_PER_COMMIT:
            self._store_unstored()

    def _met_before(self, record: Record, mapped: MappedRecord) -> bool:
        """Whether this run has handled the record already. The same version again (the archived pass, a page
        that shifted) is; so is another version whose change time is not later than the one handled (a source
        listing one record twice, on a page or across pages): handling both would write twice on every sync for
        ever. Only a later version, edited mid-sync, is handled again; one changed within the same second waits
        for the next sync, whose read overlaps this one."""
        # A record without an id is known by its contents only (the archived pass lists it a second time).
        version = mapped.payload_hash
        sid = mapped.source_id or f"(no id) {version}"
        changed = parse_time(self.stream.changed_at(record))
        handled = self._seen.handled(sid)
        if handled is not None:
            handled_at = handled.changed
            if handled.same_payload(version):
                return True
            if handled_at is not None and (changed is None or changed <= handled_at):
                if sid not in self._twice_noted:
                    self._twice_noted.add(sid)
                    self.recorder.note(
                        sid,
                        mapped.display_name,
                        None,
                        "the source listed this record twice in one sync, with different values and no later change "
                        "time; the first was used",
                    )
                return True
        self._seen.add(sid, version, changed)
        return False

    def _decide(
        self,
        mapped: MappedRecord,
        hashed: str | None,
        person: str | None,
        link: RecordLink,
        pool: WritePool,
        writer: OutboxWriter | None,
        record: Record | None = None,
    ) -> None:
        sid = mapped.source_id
        if self._has_pending_write(sid):
            # The cursor will move past this version: read the record again once Stripe has confirmed.
            revisit_later(self.pair, self.stream.name, sid, "an earlier write is waiting for Stripe's confirmation")
            # Counted as waiting, not skipped: a stream names what it skipped in its own words ("not paid through
            # Stripe" for an invoice), which a record held back is not.
            self.recorder.record(
                "waiting",
                sid,
                mapped.display_name,
                link.stripe_id,
                "an earlier change to this record is still waiting to be confirmed by Stripe",
                _kept(mapped, revisit=True),
            )
            return
        review = self._reviews.get(sid)
        if review is not None and self._follow_review(review, mapped, hashed, pool, writer):
            return
        if link.stripe_id:
            self._join_person(mapped, person, link.stripe_id, writer)
            retired, added = self._target_changes(link.mapping_version)
            if link.payload_hash == mapped.payload_hash and not added and not self._target_moved(sid, link):
                self.recorder.record("unchanged", sid, mapped.display_name, link.stripe_id, detail=_kept(mapped))
                if link.mapping_version != self.mapping.version:  # nothing to unset: now current
                    RecordLink.update(mapping_version=self.mapping.version).where(RecordLink.id == link.id).execute()
            else:
                self._submit("update", mapped, link.stripe_id, hashed, pool, writer, retired=retired)
            return
        if mapped.archived:
            reason = mapped.payload.get(f"metadata.{self.mapping.archived_marker}")
            self.recorder.record(
                "skipped",
                sid,
                mapped.display_name,
                None,
                f"not created in Stripe: {reason} at the source and never synced before",
                _kept(mapped),
            )
            return
        if self.stream.matcher is not None:  # decided now, or once every candidate is known
            self._offer(mapped, hashed, link, record if record is not None else {}, pool, writer)
            return
        by_reference = [c for c in candidates_by_reference(self.pair, self.mapping, sid) if c not in self._claimed]
        if len(by_reference) == 1:
            self._submit("link", mapped, by_reference[0], hashed, pool, writer)
        elif len(by_reference) > 1:
            self._review(
                mapped,
                "ambiguous_reference",
                by_reference,
                pool,
                writer,
                f"{len(by_reference)} Stripe {labels.stripe_objects_words(self.mapping.stripe_object)} already name "
                "this record in their metadata",
            )
        elif hashed and (
            candidates_by_email(self.pair, self.mapping, hashed) or person_candidates(self.pair, self.mapping, person)
        ):
            self._deferred[sid] = (mapped, hashed, person)
        elif self.stream.unmatched is not None:
            self._leave_unmatched(mapped, link, self.stream.unmatched(mapped))
        else:
            self._submit("create", mapped, None, hashed, pool, writer)

    def _target_moved(self, sid: str, link: RecordLink) -> bool:
        """Whether the object this record writes to, another stream's (Stream.follows), is no longer the one it last
        wrote: that stream linked its record to another object since, which gets this record's fields now."""
        if self.stream.follows is None:
            return False
        target = self._links.stripe_id(self.stream.follows, sid)
        return target is not None and target != link.stripe_id

    # --- the reading thread's writes, stored in batches ----------------------------------------------------
    def _store_later(self, write: Callable[[], None]) -> None:
        if self.options.dry_run:  # on the dry run's private copy: nothing to save
            write()
        else:
            self._unstored.append(write)

    def _store_unstored(self) -> None:
        """Store the reading thread's waiting writes, in one transaction (or the caller's)."""
        writes, self._unstored = self._unstored, []
        self._unstored_ids.clear()
        if writes:
            with database_proxy.atomic():
                for write in writes:
                    write()

    def _leave_unmatched(self, mapped: MappedRecord, link: RecordLink, why: str, *, store: bool = True) -> None:
        """A record of a stream that never creates (it links to objects made elsewhere) with nothing in Stripe to
        link to: why is said once in history, and again only if the reason changes (its link keeps a hash of the
        reason given). The record is matched again, locally, only when the source changes it (or, for a stream with
        its own matcher, when the matcher's recheck brings it back). A dry run (`store` False) stores nothing."""
        sid = mapped.source_id
        reported = payload_hash({"unmatched": why})
        if link.payload_hash == reported:
            self.recorder.record("unchanged", sid, mapped.display_name, None)
            return
        self.recorder.record("skipped", sid, mapped.display_name, None, why)
        if not store:  # a dry run: the real run says it too
            return
        if link.id is None:  # stored by _handle with the record
            link.payload_hash = reported
        else:
            self._store_later(
                lambda: (
                    RecordLink.update(payload_hash=reported, updated_at=utcnow())
                    .where(RecordLink.id == link.id)
                    .execute()
                )
            )

    def _follow_review(
        self,
        review: ReviewItem,
        mapped: MappedRecord,
        hashed: str | None,
        pool: WritePool,
        writer: OutboxWriter | None,
    ) -> bool:
        """Carry out a person's decision; True when the record needs nothing more this run."""
        sid = mapped.source_id
        if review.status == "open":
            self.recorder.record(
                "review", sid, mapped.display_name, None, f"waiting for review: {review.detail}", _kept(mapped)
            )
            return True
        if review.status == "ignored":
            ignored = "ignored by a person in review"
            self.recorder.record("skipped", sid, mapped.display_name, None, ignored, _kept(mapped))
            return True
        if review.status != "resolved" or review.resolution not in ("link", "create"):
            return False
        # Carried out once: a second version of the record in this run follows the link this one makes.
        del self._reviews[sid]
        target = review.resolution_stripe_id
        if review.resolution == "link" and target:
            owner = self._owner_of(target)
            if target in self._claimed or (owner is not None and owner != sid):
                self._reopen_review(review, mapped, target, writer)
                return True
            self._submit("link", mapped, target, hashed, pool, writer, approved=True)
            return True
        if review.resolution == "create" and not self.stream.creates:
            # Such a stream never makes its object: the decision means "nothing to link", kept like an ignore so
            # the record is neither read again every run nor asked about again.
            if writer is not None:
                ReviewItem.update(status="ignored").where(ReviewItem.id == review.id).execute()
            self.recorder.record("skipped", sid, mapped.display_name, None, "a person decided nothing is linked")
            return True
        if review.resolution == "create":
            self._submit("create", mapped, None, hashed, pool, writer, approved=True)
            return True
        return False

    def _owner_of(self, stripe_id: str) -> str | None:
        """The source record already linked to this Stripe object, if any."""
        link = RecordLink.get_or_none(
            (RecordLink.pair == self.pair)
            & (RecordLink.stream == self.stream.name)
            & (RecordLink.stripe_id == stripe_id)
        )
        return link.source_id if link is not None else None

    def _reopen_review(
        self, review: ReviewItem, mapped: MappedRecord, target: str, writer: OutboxWriter | None
    ) -> None:
        """A person chose a Stripe object that another record took meanwhile: ask again rather than overwrite it."""
        detail = f"{target} was chosen for this record, but another record is linked to it now; choose again."
        if writer is not None:
            with database_proxy.atomic():
                ReviewItem.update(status="done").where(ReviewItem.id == review.id).execute()
                candidates = [c for c in review.candidates if c != target]
                open_review(
                    self.pair, self.stream.name, mapped.source_id, mapped.display_name, "link_taken", detail, candidates
                )
        self.recorder.record("review", mapped.source_id, mapped.display_name, None, detail)

    def _start_matcher(self, state: StreamState) -> None:
        """The stream's matcher for this run, with what is linked already (read once, before any record)."""
        assert self.stream.matcher is not None
        linked = RecordLink.select(RecordLink.stripe_id, RecordLink.source_id).where(
            (RecordLink.pair == self.pair)
            & (RecordLink.stream == self.stream.name)
            & RecordLink.stripe_id.is_null(False)
        )
        since = (
            state.last_run_at.replace(tzinfo=UTC) - timedelta(seconds=self.options.overlap_s)
            if state.last_run_at
            else None
        )
        setup = MatchSetup(
            gateway=self.gateway,
            source=self.source,
            links=self._links,
            settings=self._prepared.settings,
            linked={row.stripe_id: row.source_id for row in linked},
            cross_ref_key=self.mapping.cross_ref_key,
            since=int(since.timestamp()) if since is not None else None,
            check=self.cancel.raise_if_cancelled,
        )
        self._matcher = self.stream.matcher(setup)

    def _offer(
        self,
        mapped: MappedRecord,
        hashed: str | None,
        link: RecordLink,
        record: Record,
        pool: WritePool,
        writer: OutboxWriter | None,
    ) -> None:
        assert self._matcher is not None
        decision = self._matcher.offer(mapped, record)
        if decision is None:  # waits until every candidate is known
            self._offered[mapped.source_id] = (mapped, hashed, link)
            return
        self._offered.pop(mapped.source_id, None)  # an earlier version of it waited: this one is decided
        self._apply_match(mapped, hashed, link, decision, pool, writer)

    def _decide_waiting(self, pool: WritePool, writer: OutboxWriter | None) -> None:
        """Every record that could be a candidate has been offered: apply the decisions that waited for that."""
        if self._matcher is None:
            return
        decisions = self._matcher.decide()
        offered, self._offered = self._offered, {}
        for sid, (mapped, hashed, link) in offered.items():
            decision = decisions.get(sid)
            if decision is not None:
                self._apply_match(mapped, hashed, link, decision, pool, writer)
        self._flush_batch(pool, writer)  # sent now, not when the rest of the read brings the next decision

    def _decide_listed_below(self, value: Any, pool: WritePool, writer: OutboxWriter | None) -> None:
        """The listing has passed `value` in its order: apply the waiting decisions no record still to come can
        change."""
        if self._matcher is None:
            return
        decisions = self._matcher.listed_below(value)
        for sid, decision in decisions.items():
            waiting = self._offered.pop(sid, None)
            if waiting is not None:
                mapped, hashed, link = waiting
                self._apply_match(mapped, hashed, link, decision, pool, writer)
        if decisions:
            self._flush_batch(pool, writer)

    def _apply_match(
        self,
        mapped: MappedRecord,
        hashed: str | None,
        link: RecordLink,
        decision: MatchDecision,
        pool: WritePool,
        writer: OutboxWriter | None,
    ) -> None:
        """Apply one of the stream's matcher's decisions: a link through the outbox (a metadata update of the
        existing object), a review, or nothing written (skipped, with the matcher's reason)."""
        sid = mapped.source_id
        target = decision.stripe_id
        if decision.kind == "link" and target:
            # Links made before the read are the matcher's `linked`; one made twice by racing runs is refused by the
            # link table and goes to review (outbox._link_taken).
            if target in self._claimed:
                self._review(
                    mapped, "link_taken", [target], pool, writer, f"{target} is linked to another record already"
                )
            else:
                self._submit("link", mapped, target, hashed, pool, writer)
        elif decision.kind == "review":
            self._review(mapped, decision.reason, list(decision.candidates), pool, writer, decision.message)
        else:
            if decision.revisit and not decision.when_paid and writer is not None:
                revisit_later(self.pair, self.stream.name, sid, decision.message)
            # Said once, again only if the reason changes: not a history row per waiting invoice per run.
            self._leave_unmatched(mapped, link, decision.message, store=writer is not None)

    def _resolve_matched(self, pool: WritePool, writer: OutboxWriter | None) -> None:
        """At the end of the read: the decisions still waiting (a listing that never marked its candidates
        complete), then what happened in Stripe to linked objects."""
        if self._matcher is None:
            return
        self._decide_waiting(pool, writer)
        for sid, stripe_id, message in self._matcher.linked_news():
            told = SyncEvent.select().where(
                (SyncEvent.stream == self.stream.name) & (SyncEvent.source_id == sid) & (SyncEvent.message == message)
            )
            if not told.exists():
                link = RecordLink.get_or_none(
                    (RecordLink.pair == self.pair)
                    & (RecordLink.stream == self.stream.name)
                    & (RecordLink.source_id == sid)
                )
                self.recorder.note(sid, link.display_name if link else sid, stripe_id, message)
        self._matcher, self._offered = None, {}

    def _resolve_deferred(self, pool: WritePool, writer: OutboxWriter | None) -> None:
        self._resolve_matched(pool, writer)
        for mapped, hashed, person in self._deferred.values():
            # The person's customer, linked by another source's record of them, comes first: joining it keeps one
            # customer per person even where Stripe has other customers with this email (streams.md §3).
            people = [c for c in person_candidates(self.pair, self.mapping, person) if c not in self._claimed]
            candidates = people or [
                c for c in candidates_by_email(self.pair, self.mapping, hashed) if c not in self._claimed
            ]
            sharing = records_sharing_email(self.pair, self.mapping, hashed)
            kind = self.mapping.stripe_object  # a customer found by email, a product by name: say which
            one, many, key = (
                labels.stripe_object_words(kind),
                labels.stripe_objects_words(kind),
                labels.matched_by(kind),
            )
            if not candidates:
                self._submit("create", mapped, None, hashed, pool, writer)
            elif len(candidates) == 1 and sharing == 1 and self.options.email_match == "auto_link":
                self._submit("link", mapped, candidates[0], hashed, pool, writer)
            elif len(candidates) == 1 and sharing == 1:
                self._review(
                    mapped,
                    "email_match",
                    candidates,
                    pool,
                    writer,
                    f"one Stripe {one} has this {key}; linking is set to need a person's approval",
                )
            else:
                self._review(
                    mapped,
                    "ambiguous_email",
                    candidates,
                    pool,
                    writer,
                    f"{plural(len(candidates), f'unlinked Stripe {one}', f'unlinked Stripe {many}')} and "
                    f"{plural(sharing, 'record')} share this {key}; choose which {one} this record is",
                )

    # --- effects --------------------------------------------------------------------------------------
    def _submit(
        self,
        op: str,
        mapped: MappedRecord,
        stripe_id: str | None,
        hashed: str | None,
        pool: WritePool,
        writer: OutboxWriter | None,
        *,
        retired: tuple[str, ...] = (),
        approved: bool = False,
    ) -> None:
        """Plan `op` for the record and queue it (a dry run records it). While an approved plan is carried out, a
        create or link the plan did not approve for this record (`approved`: carried out from the plan, or a
        person's decision in review) goes to review instead: nothing is written that nobody approved."""
        if self._plan is not None and not approved and op in ("create", "link") and writer is not None:
            unapproved = self._unapproved(op, mapped, stripe_id)
            if unapproved is not None:
                self._review(mapped, "plan_changed", [stripe_id] if stripe_id else [], pool, writer, unapproved)
                return
        if op == "create" and writer is not None:
            made = self._made_elsewhere(mapped)
            if made is not None:
                op, stripe_id = "link", made
        # `retired`: fields an earlier mapping wrote to this object and the current one no longer maps: unset.
        params = create_params(mapped.payload) if op == "create" else update_params(mapped.payload, retired)
        if stripe_id and op != "create" and self.mapping.stripe_object in PERSON_OBJECTS:
            # A person's customer other sources share: the primary source's fields are not ours to write.
            primary = self.options.stream_values.get(identity.PRIMARY_SOURCE_SETTING) or identity.DEFAULT_PRIMARY_SOURCE
            params = owned_update(
                params, self.pair, self.mapping.stripe_object, stripe_id, self.stream.source_system, primary
            )
        if stripe_id and op == "link":
            self._claimed.add(stripe_id)
            self._join_person(
                mapped, person_key(self.pair, self.mapping.stripe_object, mapped.match_value), stripe_id, writer
            )
        request = PlanRequest(
            op=op,
            mapped=mapped,
            stripe_id=stripe_id,
            params=params,
            cross_ref_key=self.mapping.cross_ref_key,
            roles=self._role_links(mapped.source_id) if op != "create" else (),
            links=self._links,
        )
        try:
            steps = self.stream.plan(observed_request(self.stream, self.gateway, request))
        except NotYet as waiting:
            if stripe_id and op == "link":
                self._claimed.discard(stripe_id)
            if writer is not None:
                revisit_later(self.pair, self.stream.name, mapped.source_id, str(waiting))
            self.recorder.record(
                "skipped", mapped.source_id, mapped.display_name, stripe_id, str(waiting), _kept(mapped, revisit=True)
            )
            return
        action = ACTION_OF_OP[op]
        if writer is None:  # dry run: the plan records what would be sent
            message = "\n".join([*mapped.notes, *(step.note for step in steps if step.note)])
            kept = _kept(mapped, retired=list(retired))
            self.recorder.record(action, mapped.source_id, mapped.display_name, stripe_id, message, kept)
            return
        link = self._unsaved_link(mapped.source_id)
        if link is not None:
            self._new_links[mapped.source_id] = link
        self._batch.append((mapped, action, steps, hashed))
        # A full batch is stored at once; so is a smaller one while the write threads run out of work.
        batch = QUEUED_WRITE_BATCH if pool.queued() >= 2 * QUEUED_WRITE_BATCH else WRITE_BATCH
        if len(self._batch) >= batch or pool.starving():
            self._flush_batch(pool, writer)

    def _join_person(
        self, mapped: MappedRecord, person: str | None, stripe_id: str, writer: OutboxWriter | None
    ) -> None:
        """Join the person's customers on this record's (sync/people.py) when this is the primary source's record
        of a person whose other sources' records another customer was made for."""
        if person is None:
            return
        primary = self.options.stream_values.get(identity.PRIMARY_SOURCE_SETTING) or identity.DEFAULT_PRIMARY_SOURCE
        plan = people.to_join(self.pair, self.stream, mapped.source_id, person, stripe_id, primary)
        if writer is None:  # a dry run, or the plan shown for approval: said, not done
            for other in plan.others:
                self.recorder.note(
                    mapped.source_id,
                    mapped.display_name,
                    other,
                    f"This person's other customer {other} would be joined to theirs (deleted, or marked as a "
                    "duplicate if it has payments, invoices or a saved card)",
                )
            return
        done = people.join(
            self.pair,
            self.stream,
            self.gateway,
            plan,
            lambda other, message: self.recorder.note(mapped.source_id, mapped.display_name, other, message),
        )
        if plan.later or not done:  # read again next run, which tries again
            revisit_later(self.pair, self.stream.name, mapped.source_id, "its person has a second customer to join")

    def _made_elsewhere(self, mapped: MappedRecord) -> str | None:
        """The record's object, if another installation made or adopted it since the index was read: one it made
        shows in a top-up of the index (a listing of objects created since); one it adopted does not (an old
        customer it gave this record's reference and, later, the record's new email), so a person's customer is
        also asked for by email, which does not lag as Search does.

        That costs a request per create, so it is asked only when it can matter: another installation syncs these
        accounts (twins were repaired here, or the index holds objects naming records this installation never met).
        One installation alone, on an empty Stripe account or not, makes every object naming its records itself
        and never asks; a first sync stays at one request per new customer. Not seen: another installation that
        only adopted (made nothing this one has not met) before the record's email changed; reconciliation reports
        such a duplicate."""
        if self._topup.before_create():
            found = [
                c for c in candidates_by_reference(self.pair, self.mapping, mapped.source_id) if c not in self._claimed
            ]
            if len(found) == 1:
                return found[0]
        if not self._look_before_create or self.mapping.stripe_object not in PERSON_OBJECTS:
            return None
        request = FindRequest(
            self.mapping.stripe_object, mapped.source_id, create_params(mapped.payload), self.mapping.cross_ref_key, 0
        )
        if not self.stream.absence_certain(request, 0.0, self.options.search_settle_s):
            return None  # only by email: Search lags, and would miss what was made a moment ago
        found_object = self.stream.find_created(self.gateway, request)
        if found_object is None or (found_object.get("metadata") or {}).get(DUPLICATE_OF_KEY):
            return None  # nothing, or a twin kept as a duplicate (it has payments): not the record's to adopt
        stripe_id = str(found_object["id"])
        if stripe_id in self._claimed or not is_unlinked(self.pair, self.mapping, stripe_id):
            return None
        return stripe_id

    def _flush_batch(self, pool: WritePool, writer: OutboxWriter | None) -> None:
        """Store the batch's plans (and its new records' links) in one transaction, then send them."""
        batch, self._batch = self._batch, []
        if writer is None or not batch:
            return
        new_links, self._new_links = self._new_links, {}

        def before() -> None:  # in the plans' transaction: every link a write's settling looks for is stored
            self._store_unstored()
            _insert_links(new_links.values())

        stored = writer.enqueue_plans(batch, before=before)
        for (mapped, *_), rows in zip(batch, stored, strict=True):
            # The rows' ids only: thousands of writes wait in the pool's queue while Stripe's budget sends them.
            ids = tuple(row.id for row in rows)
            pool.submit(mapped.source_id, lambda ids=ids: writer.deliver_steps(ids))

    def _drain(self, pool: WritePool, writer: OutboxWriter | None) -> None:
        """Send what is batched, wait for every write in flight, and record what Stripe took."""
        self._flush_batch(pool, writer)
        self._store_unstored()
        pool.drain()
        if writer is not None:
            writer.flush()
        self.cancel.raise_if_cancelled()  # writes skipped by the stop are still pending: the run did not finish

    def _batched(self, source_id: str) -> bool:
        return any(mapped.source_id == source_id for mapped, *_ in self._batch)

    def _role_links(self, source_id: str) -> tuple[RoleLinkInfo, ...]:
        rows = RoleLink.select().where(
            (RoleLink.pair == self.pair) & (RoleLink.stream == self.stream.name) & (RoleLink.source_id == source_id)
        )
        return tuple(RoleLinkInfo(row.role, row.stripe_id, row.fingerprint, row.current, row.active) for row in rows)

    def _review(
        self,
        mapped: MappedRecord,
        reason: str,
        candidates: list[str],
        pool: WritePool,
        writer: OutboxWriter | None,
        detail: str,
    ) -> None:
        if writer is not None:
            self._store_later(
                lambda: open_review(
                    self.pair, self.stream.name, mapped.source_id, mapped.display_name, reason, detail, candidates
                )
            )
        kept = _kept(mapped, reason=reason, candidates=list(candidates))
        self.recorder.record("review", mapped.source_id, mapped.display_name, None, detail, kept)

    def _remember(self, mapped: MappedRecord, hashed: str | None, person: str | None) -> RecordLink:
        """Keep the record's id, email hash, name and archived state (never its other fields). A record met for
        the first time gets an unsaved link: it is stored with the record's first write, or at once if none."""
        link = lookup.get_or_none(RecordLink, pair=self.pair, stream=self.stream.name, source_id=mapped.source_id)
        if link is None:
            return self._new_link(mapped, hashed, person)
        known = (link.email_hash, link.person_key, link.display_name, link.archived)
        if known != (hashed, person, mapped.display_name, mapped.archived):
            RecordLink.update(
                email_hash=hashed,
                person_key=person,
                display_name=mapped.display_name,
                archived=mapped.archived,
                updated_at=utcnow(),
            ).where(RecordLink.id == link.id).execute()
        return link

    def _new_link(self, mapped: MappedRecord, hashed: str | None, person: str | None) -> RecordLink:
        return RecordLink(
            pair=self.pair,
            stream=self.stream.name,
            source_id=mapped.source_id,
            stripe_object=self.mapping.stripe_object,
            email_hash=hashed,
            person_key=person,
            display_name=mapped.display_name,
            archived=mapped.archived,
        )

    def _unsaved_link(self, source_id: str) -> RecordLink | None:
        link = self._current_links.get(source_id)
        return link if link is not None and link.id is None else None

    def _has_pending_write(self, source_id: str) -> bool:
        return lookup.exists(
            OutboxEntry, pair=self.pair, stream=self.stream.name, source_id=source_id, status="pending"
        )


def _kept(mapped: MappedRecord, **extra: Any) -> dict[str, Any]:
    """What a kept plan needs to carry out its decision about the record without reading it again."""
    basics = {
        "payload": mapped.payload,
        "notes": list(mapped.notes),
        "match_value": mapped.match_value,
        "archived": mapped.archived,
    }
    return {**basics, **extra}


def _insert_links(links: Iterable[RecordLink]) -> None:
    for link in links:
        if link.id is None:
            lookup.insert(link)


@dataclass
class PreparedStream:
    """A stream ready to map records exactly as a run sends them: its checked mapping, the clinic's zone and
    currency, and its scope. Reconciliation compares Stripe with what this produces, so the two never differ."""

    stream: Stream
    mapping: StreamMapping
    context: TransformContext
    settings: StreamSettings
    scope: ScopeFilter

    def map(self, record: Record) -> MappedRecord:
        """The record as the mapping (and the stream's enrichment) turns it into a Stripe payload."""
        if self.mapping.writeback.enabled:  # the echo rule: what we wrote into the source never flows back
            record = without_writeback_field(record, self.mapping.writeback.field_token)
        archived_value = self.stream.archived_value(record)
        mapped = map_record(self.mapping, record, archived_value=archived_value, context=self.context)
        if mapped.error is None and self.stream.enrich is not None:
            self.stream.enrich(mapped, record, self.settings)
        return mapped


def prepare_stream(stream: Stream, mapping: StreamMapping, source: Any, options: RunOptions) -> PreparedStream:
    """Check the stored mapping (validation and the clinical allow-list) and learn what its transforms and
    scope need from the source, before anything is read or sent. Raises StreamNotReady."""
    custom = any(name.startswith(CUSTOM_FIELD_PREFIX) for name in mapping.source_fields)
    source_settings = stream.source_settings(source) if custom or mapping.writeback.enabled else None
    catalogue = FieldCatalogue.for_source(
        mapping.source_system, mapping.source_type, custom_field_entries(source_settings)
    )
    problems = mapping_store.check(mapping, catalogue)
    if problems:
        raise StreamNotReady(
            f"The field mapping of {mapping.stream} cannot be used, so nothing was sent:\n"
            + "\n".join(f"  {problem}" for problem in problems)
            + "\nFix it in Field mapping, or with `clinicsync mapping`."
        )
    zone = mapping.time_zone or (stream.time_zone(source) if stream.needs_time_zone or _needs_zone(mapping) else None)
    context = TransformContext(time_zone=zone or DEFAULT_TIME_ZONE)
    currency = options.currency
    if not currency and stream.enrich is not None:
        currency = money.currency_for_country(stream.country(source))
    settings = StreamSettings(
        time_zone=context.time_zone,
        currency=currency or money.DEFAULT_CURRENCY,
        values=options.stream_values,
    )
    scope = ScopeFilter.for_run(mapping.scope, stream, source, context.time_zone)
    return PreparedStream(stream, mapping, context, settings, scope)


def _latest_reviews(pair: AccountPair, stream: str) -> dict[str, ReviewItem]:
    rows = (
        ReviewItem.select()
        .where((ReviewItem.pair == pair) & (ReviewItem.stream == stream) & (ReviewItem.status != "done"))
        .order_by(ReviewItem.id)
    )
    return {row.source_id: row for row in rows}


def _needs_zone(mapping: StreamMapping) -> bool:
    """Whether the clinic's time zone matters: a local-date rule without its own zone, or the activity scope."""
    local = any(rule.transform == "local_date" and not rule.options.get("time_zone") for rule in mapping.rules)
    return local or mapping.scope.kind in ("recent_activity", "since")


def _format_cursor(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse_cursor(value: str | None) -> datetime | None:
    if not value:
        return None
    return datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)


def _source_kind(exc: SourceError) -> str:
    if isinstance(exc, errors.SourceAuthError):
        return StopKind.SOURCE_AUTH
    if isinstance(exc, errors.SourcePermissionError):
        return StopKind.SOURCE_PERMISSION
    # A 429 that outlasts the retries is as transient as an outage: the next sync carries on, nobody must act.
    if isinstance(exc, errors.SourceUnavailable | errors.SourceRateLimited):
        return StopKind.SOURCE_UNAVAILABLE
    return StopKind.SOURCE_ERROR
