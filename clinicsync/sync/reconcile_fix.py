"""Carry out a person's choice about reconciliation findings.

- re-push: the next sync sends the record again (its pushed hash is forgotten, its other objects are looked at
  in Stripe rather than taken from the links, and it is read by id); a record
  whose object was deleted in Stripe gets a new one — a person asked, so it is no longer "never silently"; a
  record whose linked payment does not agree with it (failed) forgets that link and is matched again.
- link: the record is linked to the chosen Stripe object now, through the outbox (the stream's own link plan).
- archive / deactivate: the record's own object gets the record's payload now (which carries the archived
  marker); an object the record does not own (a duplicate, an orphan) is marked — as a duplicate of the one kept,
  or as having no source record — and, for products and prices, made inactive. Through the outbox as a detached
  write: history only, the record's links stay as they are.
- delete: an unused duplicate customer, only when the person confirmed, never one linked to a record and never
  one with payments or invoices. Sent at once, not queued: whether it is safe is known only at the moment it is
  checked, and a delete is idempotent (gone stays gone), so a crash loses nothing but the attempt.
- mark as intended: remembered with the finding's fingerprint; no write anywhere else.

Everything that writes to Stripe is a history row of a run with trigger "reconcile_fix", under the profile's lock.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from clinicsync.mapping.apply import MappedRecord, update_params
from clinicsync.outcomes import ACTIONS, Outcome
from clinicsync.paths import AppPaths
from clinicsync.profile_lock import ProfileLock
from clinicsync.reconcile.findings import (
    PAYMENT_TYPES,
    Finding,
    FindingStatus,
    FindingType,
    FixKind,
    Reason,
    fix_words,
    source_name,
)
from clinicsync.retry import CancelToken
from clinicsync.secrets import SecretStore
from clinicsync.sources.errors import SourceError
from clinicsync.store import mappings as mapping_store
from clinicsync.store import queries
from clinicsync.store import reconciliation as report_store
from clinicsync.store.db import database_proxy
from clinicsync.store.models import (
    AccountPair,
    OutboxEntry,
    RecordLink,
    ReviewItem,
    RoleLink,
    StripeIndexEntry,
    SyncRun,
    utcnow,
)
from clinicsync.store.settings import Settings
from clinicsync.streams import STREAMS, PlanRequest, Stream, WriteStep, identity
from clinicsync.streams.base import DETACHED_ROLE, DUPLICATE_OF_KEY, NotYet, RoleLinkInfo, observed_request
from clinicsync.stripe_gateway import StripeFailure, StripeGateway
from clinicsync.sync.engine import PreparedStream, RunRecorder, prepare_stream
from clinicsync.sync.matching import match_hash, owned_update
from clinicsync.sync.outbox import OutboxWriter, StripeStopped, record_reviews, revisit_later
from clinicsync.sync.references import AccountLinks
from clinicsync.sync.service import SOURCES, retry_policy, run_options, stripe_gateway

log = logging.getLogger(__name__)

FIX_TRIGGER = "reconcile_fix"
PAYMENT_KINDS = ("payment_intent", "charge", "invoice")  # what makes a customer "used": never deleted


@dataclass(frozen=True)
class FixRequest:
    finding_id: int
    fix: FixKind | None = None  # None: the finding's suggested fix
    target: str | None = None  # link: the Stripe object (default: the finding's own, or its only candidate)
    note: str = ""  # mark as intended: why


@dataclass
class FixOutcome:
    finding_id: int
    fix: FixKind | None
    status: FindingStatus | None  # None: not carried out (refused; the message says why)
    message: str

    @property
    def done(self) -> bool:
        return self.status in (FindingStatus.FIXED, FindingStatus.SCHEDULED, FindingStatus.ACCEPTED)


class Refused(Exception):
    """A fix that must not (or cannot) be carried out as asked; the message says why and what to do."""


class _NotConnected(Exception):
    """Connecting failed: no fix that needs Stripe or the source can be carried out; raised as its cause."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(str(cause))
        self.cause = cause


@dataclass
class _Connection:
    source: Any  # the client of the finding's source (Cliniko's, Cal.com's)
    gateway: StripeGateway
    pair: AccountPair


@dataclass
class _StreamWork:
    stream: Stream
    prepared: PreparedStream | None = None
    run: SyncRun | None = None
    recorder: RunRecorder | None = None
    writer: OutboxWriter | None = None
    counts: dict[str, int] = field(default_factory=dict)


def apply_fixes(
    paths: AppPaths,
    settings: Settings,
    secrets: SecretStore,
    requests: Sequence[FixRequest],
    *,
    confirmed: bool = False,
    cancel: CancelToken | None = None,
    who: str | None = None,
) -> list[FixOutcome]:
    """Carry out each request (the suggested fix unless one is named), one finding at a time; a finding whose
    fix is refused or fails does not stop the others. `confirmed`: the person confirmed deletions."""
    return _Fixer(paths, settings, secrets, confirmed=confirmed, cancel=cancel, who=who).apply(requests)


class _Fixer:
    def __init__(
        self,
        paths: AppPaths,
        settings: Settings,
        secrets: SecretStore,
        *,
        confirmed: bool,
        cancel: CancelToken | None,
        who: str | None,
    ) -> None:
        self.paths = paths
        self.settings = settings
        self.secrets = secrets
        self.confirmed = confirmed
        self.cancel = cancel or CancelToken()
        self.who = who or mapping_store.current_user()
        self.connection: _Connection | None = None  # the current finding's source and accounts
        self.connections: dict[str, _Connection] = {}  # by source system
        self.gateway: StripeGateway | None = None
        self.work: dict[str, _StreamWork] = {}

    def apply(self, requests: Sequence[FixRequest]) -> list[FixOutcome]:
        findings = report_store.get_findings([request.finding_id for request in requests])
        outcomes: list[FixOutcome] = []
        with ProfileLock(self.paths.lock_file):
            try:
                for request, finding in zip(requests, findings, strict=True):
                    self.cancel.raise_if_cancelled()
                    outcomes.append(self._one(request, finding))
            except _NotConnected as failure:
                raise failure.cause from None
            finally:
                self._finish_runs()
                for connection in self.connections.values():
                    connection.source.close()
        return outcomes

    def _one(self, request: FixRequest, finding: Finding) -> FixOutcome:
        assert finding.id is not None
        kind = request.fix or finding.suggested_fix
        try:
            if kind is None or kind not in finding.fixes:
                choices = ", ".join(fix.value for fix in finding.fixes)
                raise Refused(f"{kind or 'no fix'} is not a fix for this finding; it can have: {choices}.")
            if finding.status == FindingStatus.FIXED:
                raise Refused("It was fixed already; reconcile again to see whether anything is left.")
            status, message = self._carry_out(kind, request, finding)
        except (Refused, queries.ReviewError) as refused:
            return FixOutcome(finding.id, kind, None, str(refused))
        except StripeFailure as failure:
            status, message = FindingStatus.FAILED, f"Stripe: {failure.message}"
        except SourceError as failure:
            status, message = FindingStatus.FAILED, str(failure)
        if status != FindingStatus.ACCEPTED:  # marks as intended store their own status
            report_store.set_status(finding.id, status, message)
        return FixOutcome(finding.id, kind, status, message)

    def _carry_out(self, kind: FixKind, request: FixRequest, finding: Finding) -> tuple[FindingStatus, str]:
        if kind == FixKind.MARK_INTENDED:
            if not request.note.strip():
                raise Refused("Say why it is intended (a note), so the next person knows.")
            report_store.mark_intended([finding.id or 0], request.note.strip(), who=self.who)
            return FindingStatus.ACCEPTED, f"marked as intended: {request.note.strip()}"
        if kind == FixKind.CORRECT_SOURCE:
            raise Refused(f"ClinicSync cannot fix this: {fix_words(kind, finding)}.")
        report_pair = report_store.pair_of_report(report_store.report_id_of(finding.id or 0))
        pair = report_store.stream_pair(report_pair, finding.stream)
        if kind == FixKind.REPUSH:
            return self._repush(pair, finding)
        self._connect(pair)
        if kind == FixKind.LINK:
            return self._link(finding, self._link_target(request, finding))
        if kind in (FixKind.ARCHIVE, FixKind.DEACTIVATE):
            return self._retire(finding, kind)
        if kind == FixKind.DELETE:
            return self._delete(finding)
        raise Refused(f"{kind} cannot be carried out here.")

    # --- connecting, once, to the accounts the finding belongs to ------------------------------------------
    def _connect(self, pair: AccountPair) -> _Connection:
        system = pair.source_system
        if system not in self.connections:
            kind = SOURCES[system]
            try:
                source = kind.client(self.settings, self.secrets, self.cancel)
            except Exception as exc:
                raise _NotConnected(exc) from None
            try:
                if self.gateway is None:
                    self.gateway = stripe_gateway(self.settings, self.secrets, self.cancel)
                self.connections[system] = _Connection(source, self.gateway, kind.resolve_pair(source, self.gateway))
            except Exception as exc:
                source.close()
                raise _NotConnected(exc) from None
        self.connection = self.connections[system]
        if self.connection.pair.id != pair.id:
            raise Refused(
                "This finding is about other accounts than the ones connected now; reconcile again with these."
            )
        return self.connection

    def _stream(self, name: str) -> _StreamWork:
        if name not in self.work:
            self.work[name] = _StreamWork(STREAMS[name])
        return self.work[name]

    def _writer(self, name: str) -> tuple[OutboxWriter, _StreamWork]:
        """The stream's outbox writer, recording into a history run of its own (made when first needed)."""
        work = self._stream(name)
        connection = self.connection
        assert connection is not None
        if work.writer is None:
            mapping, _ = mapping_store.load_for_pair(name, livemode=connection.pair.stripe_livemode)
            work.run = SyncRun.create(pair=connection.pair, stream=name, trigger=FIX_TRIGGER)
            work.recorder = RunRecorder(work.run, dry_run=False)
            work.writer = OutboxWriter(
                gateway=connection.gateway,
                pair=connection.pair,
                mapping=mapping,
                stream=work.stream,
                policy=retry_policy(self.settings),
                recorder=work.recorder,
                sleep=self.cancel.sleep,
                search_settle_s=self.settings.get("stripe.search_settle_seconds"),
            )
        return work.writer, work

    def _prepared(self, name: str) -> PreparedStream:
        work = self._stream(name)
        if work.prepared is None:
            assert self.connection is not None
            mapping, _ = mapping_store.load_for_pair(name, livemode=self.connection.pair.stripe_livemode)
            options = run_options(self.settings, trigger=FIX_TRIGGER, dry_run=False)
            work.prepared = prepare_stream(work.stream, mapping, self.connection.source, options)
        return work.prepared

    def _finish_runs(self) -> None:
        for work in self.work.values():
            if work.run is None or work.recorder is None:
                continue
            if work.writer is not None:
                work.writer.flush()  # nothing finished may stay unrecorded (a cancel between two fixes)
            counts = work.recorder.counts
            for action in ACTIONS:
                setattr(work.run, action, counts[action])
            work.run.outcome = Outcome.ATTENTION if counts["failed"] or counts["review"] else Outcome.OK
            work.run.message = "fixes chosen in reconciliation"
            work.run.finished_at = utcnow()
            work.run.save()

    # --- re-push ------------------------------------------------------------------------------------------------
    def _repush(self, pair: AccountPair, finding: Finding) -> tuple[FindingStatus, str]:
        sid = finding.source_id
        if not sid:
            raise Refused("There is no source record to send again.")
        links = (RecordLink.pair == pair) & (RecordLink.stream == finding.stream) & (RecordLink.source_id == sid)
        link = RecordLink.get_or_none(links)
        with database_proxy.atomic():
            if finding.reason == Reason.DELETED_IN_STRIPE and link is not None and link.stripe_id:
                # A person asked for a new object: forget the deleted one, here and in the index of the account.
                StripeIndexEntry.delete().where(
                    (StripeIndexEntry.pair == pair) & (StripeIndexEntry.stripe_id == link.stripe_id)
                ).execute()
                RecordLink.update(stripe_id=None, payload_hash=None, updated_at=utcnow()).where(links).execute()
                ReviewItem.update(status="done").where(
                    record_reviews(pair, finding.stream, sid, "open", "resolved")
                ).execute()
                message = "the next sync makes a new one (or links one that names the record)"
            elif finding.reason == Reason.PAYMENT_DIFFERS and link is not None and link.stripe_id:
                # The linked payment failed or is not the record's: forget it, so the stream's matching looks for
                # the payment again (a failed one is never matched again; one naming the record is).
                RecordLink.update(stripe_id=None, payload_hash=None, updated_at=utcnow()).where(links).execute()
                message = f"the link to {link.stripe_id} is forgotten; the next sync looks for the payment again"
            elif finding.reason == Reason.WAITING_FOR_REVIEW:
                stream = STREAMS.get(finding.stream)
                if stream is not None and not stream.creates:
                    raise Refused("ClinicSync never makes this kind of Stripe object; decide the record in Review.")
                review = ReviewItem.get_or_none(record_reviews(pair, finding.stream, sid, "open"))
                if review is not None:
                    queries.resolve_review(review.id, "create")
                message = "the next sync makes a new one (the review is decided: create)"
            else:
                if link is not None:
                    RecordLink.update(payload_hash=None, updated_at=utcnow()).where(links).execute()
                    # Nor is what the links say is in use trusted: the stream's plan looks at Stripe first (a
                    # default price a person changed is set back only once seen).
                    RoleLink.update(current=False).where(
                        (RoleLink.pair == pair) & (RoleLink.stream == finding.stream) & (RoleLink.source_id == sid)
                    ).execute()
                message = "the next sync sends it again"
            revisit_later(pair, finding.stream, sid, "reconciliation: send again")
        return FindingStatus.SCHEDULED, message

    # --- link -------------------------------------------------------------------------------------------------
    def _link_target(self, request: FixRequest, finding: Finding) -> str:
        if request.target:
            allowed = {finding.stripe_id, *finding.related} - {None}
            if finding.type in (FindingType.MISSING_IN_STRIPE, *PAYMENT_TYPES) and request.target not in allowed:
                raise Refused(
                    f"{request.target} is not one of this finding's candidates ({', '.join(sorted(allowed))})."
                )
            return request.target
        if finding.type == FindingType.ORPHANED_IN_STRIPE and finding.stripe_id:
            return finding.stripe_id
        if len(finding.related) == 1:
            return finding.related[0]
        raise Refused(f"Say which Stripe object to link it to: one of {', '.join(finding.related)}.")

    def _link(self, finding: Finding, target: str) -> tuple[FindingStatus, str]:
        connection = self.connection
        assert connection is not None and finding.source_id
        pair, name, sid = connection.pair, finding.stream, finding.source_id
        owner = RecordLink.get_or_none(
            (RecordLink.pair == pair) & (RecordLink.stream == name) & (RecordLink.stripe_id == target)
        )
        if owner is not None and owner.source_id != sid:
            raise Refused(f"{target} is linked to {owner.display_name or owner.source_id}; each belongs to one record.")
        review = ReviewItem.get_or_none(record_reviews(pair, name, sid, "open"))
        if review is not None:  # decided here: the link closes it once Stripe took it
            queries.resolve_review(review.id, "link", target)
        current = RecordLink.get_or_none(
            (RecordLink.pair == pair) & (RecordLink.stream == name) & (RecordLink.source_id == sid)
        )
        if current is not None and current.stripe_id and current.stripe_id != target:
            stripe_object = STREAMS[name].stripe_object
            if connection.gateway.retrieve(stripe_object, current.stripe_id) is None:
                # Gone from Stripe: out of the index too, or a twin repair would take it for the one to keep.
                StripeIndexEntry.delete().where(
                    (StripeIndexEntry.pair == pair) & (StripeIndexEntry.stripe_id == current.stripe_id)
                ).execute()
        return self._push(finding, "link", target)

    def _push(self, finding: Finding, op: str, target: str) -> tuple[FindingStatus, str]:
        """The record's own plan (link, or update of its linked object) with its current payload, sent now."""
        connection = self.connection
        assert connection is not None and finding.source_id
        name, sid = finding.stream, finding.source_id
        self._no_queued_write(name, sid)
        prepared = self._prepared(name)
        record = prepared.stream.read_one(connection.source, sid)
        if record is None:
            raise Refused(f"{source_name(name)} has no record {sid} any more; reconcile again.")
        mapped = prepared.map(record)
        if mapped.error is not None:
            raise Refused(f"The record cannot be sent: {mapped.error}")
        roles = RoleLink.select().where(
            (RoleLink.pair == connection.pair) & (RoleLink.stream == name) & (RoleLink.source_id == sid)
        )
        primary = self.settings.get(identity.PRIMARY_SOURCE_SETTING) or identity.DEFAULT_PRIMARY_SOURCE
        params = owned_update(
            update_params(mapped.payload),
            connection.pair,
            prepared.mapping.stripe_object,
            target,
            prepared.stream.source_system,
            primary,
        )
        request = PlanRequest(
            op=op,
            mapped=mapped,
            stripe_id=target,
            params=params,
            cross_ref_key=prepared.mapping.cross_ref_key,
            roles=tuple(RoleLinkInfo(r.role, r.stripe_id, r.fingerprint, r.current, r.active) for r in roles),
            links=AccountLinks(connection.pair),
        )
        writer, _ = self._writer(name)
        action = "linked" if op == "link" else "updated"
        try:
            steps = prepared.stream.plan(observed_request(prepared.stream, connection.gateway, request))
        except NotYet as waiting:  # e.g. the record's patient has no customer yet: the next sync sends it
            raise Refused(f"Not sent yet: {waiting}") from None
        rows = writer.enqueue_plan(mapped, action, steps, match_hash(connection.pair, mapped.match_value))
        return self._deliver(writer, rows, f"{action} {target}")

    def _deliver(self, writer: OutboxWriter, rows: list[OutboxEntry], done: str) -> tuple[FindingStatus, str]:
        try:
            writer.deliver_plan(rows)
        except StripeStopped as stop:
            writer.flush()  # the steps that did finish are recorded; the rest waits for the next sync
            return FindingStatus.SCHEDULED, f"queued: {stop}"
        writer.flush()  # the writer records finished steps in batches: record them before reading their status
        statuses = [OutboxEntry.get_by_id(row.id) for row in rows]
        failed = next((row for row in statuses if row.status == "failed"), None)
        if failed is not None:
            return FindingStatus.FAILED, failed.last_error or "Stripe refused the change"
        if any(row.status == "pending" for row in statuses):
            return FindingStatus.SCHEDULED, "queued: the next sync sends the rest"
        return FindingStatus.FIXED, done

    def _no_queued_write(self, stream: str, source_id: str) -> None:
        assert self.connection is not None
        queued = OutboxEntry.select().where(
            (OutboxEntry.pair == self.connection.pair)
            & (OutboxEntry.stream == stream)
            & (OutboxEntry.source_id == source_id)
            & (OutboxEntry.status == "pending")
        )
        if queued.exists():
            raise Refused("A change to this record is waiting to be sent; sync first, then reconcile again.")

    # --- archive, deactivate -----------------------------------------------------------------------------------
    def _retire(self, finding: Finding, kind: FixKind) -> tuple[FindingStatus, str]:
        connection = self.connection
        assert connection is not None
        target = finding.stripe_id
        if not target:
            raise Refused("There is no Stripe object to retire.")
        owner = RecordLink.get_or_none(
            (RecordLink.pair == connection.pair)
            & (RecordLink.stream == finding.stream)
            & (RecordLink.stripe_id == target)
        )
        own = owner is not None and owner.source_id == finding.source_id
        if finding.reason == Reason.SOURCE_ARCHIVED and own:
            return self._push(finding, "update", target)  # the record's own object: its payload carries the marker
        if owner is not None and not own:
            raise Refused(f"{target} is linked to {owner.display_name or owner.source_id} now; reconcile again first.")
        mapping, _ = mapping_store.load_for_pair(finding.stream, livemode=connection.pair.stripe_livemode)
        today = datetime.now(UTC).strftime("%Y-%m-%d")
        if finding.type == FindingType.DUPLICATE:
            metadata = {DUPLICATE_OF_KEY: finding.kept_id}
            note = f"marked as a duplicate of {finding.kept_id}"
        elif finding.type == FindingType.FIELD_DRIFT:
            metadata = {}
            note = "made inactive"
        else:
            source = source_name(finding.stream)
            why = finding.source_value or f"no {source} record"
            if finding.reason == Reason.LINKED_ELSEWHERE:
                why = f"not the {source} record's own (that is {', '.join(finding.related) or 'another'})"
            metadata = {mapping.archived_marker: f"{why} (reconciliation {today})"}
            note = "marked archived"
        params: dict[str, Any] = {"metadata": metadata} if metadata else {}
        if kind == FixKind.DEACTIVATE:
            params["active"] = False
            note = note if note == "made inactive" else f"made inactive and {note}"
        sid = finding.source_id or target  # the row's "record": a duplicate without one is named by its own id
        self._no_queued_write(finding.stream, sid)
        writer, _ = self._writer(finding.stream)
        mapped = MappedRecord(sid, {}, finding.display_name or target, None, archived=False)
        step = WriteStep(
            DETACHED_ROLE, "update", finding.stripe_object, params, stripe_id=target, note=f"{note} (reconciliation)"
        )
        rows = writer.enqueue_plan(mapped, "updated", [step], None)
        return self._deliver(writer, rows, f"{target} {note}")

    # --- delete -------------------------------------------------------------------------------------------------
    def _delete(self, finding: Finding) -> tuple[FindingStatus, str]:
        connection = self.connection
        assert connection is not None
        target = finding.stripe_id
        if not target:
            raise Refused("There is no Stripe object to delete.")
        if not self.confirmed:
            raise Refused(f"Deleting {target} cannot be undone; confirm it (the CLI's --yes).")
        stripe_object = finding.stripe_object
        # Any record linked to it, of any source in this Stripe account (a customer Cliniko and Cal.com share).
        same_account = AccountPair.select(AccountPair.id).where(
            (AccountPair.stripe_account == connection.pair.stripe_account)
            & (AccountPair.stripe_livemode == connection.pair.stripe_livemode)
        )
        owners = list(RecordLink.select().where(RecordLink.pair.in_(same_account) & (RecordLink.stripe_id == target)))
        # Only the object of a record the source no longer has may go with its link; never a live record's.
        own = (connection.pair.id, finding.stream, finding.source_id)
        others = [row for row in owners if (row.pair_id, row.stream, row.source_id) != own]
        owner = next((row for row in owners if row not in others), None)
        gone_with = owner is not None and finding.reason == Reason.SOURCE_ABSENT
        if others or (owner is not None and not gone_with):
            linked = (others or [owner])[0]
            raise Refused(f"{target} is linked to {linked.display_name or linked.source_id}; it is not deleted.")
        gateway = connection.gateway
        used = [kind for kind in PAYMENT_KINDS if gateway.any_of(kind, {stripe_object: target})]
        if used:
            raise Refused(
                f"{target} has {' and '.join(kind.replace('_', ' ') + 's' for kind in used)}, so it is kept; "
                f"mark it instead ({FixKind.ARCHIVE.value})."
            )
        deleted = gateway.delete(stripe_object, target)
        if gone_with and owner is not None:
            RecordLink.update(stripe_id=None, payload_hash=None, updated_at=utcnow()).where(
                RecordLink.id == owner.id
            ).execute()
        StripeIndexEntry.delete().where(
            (StripeIndexEntry.pair == connection.pair) & (StripeIndexEntry.stripe_id == target)
        ).execute()
        _, work = self._writer(finding.stream)
        assert work.recorder is not None
        message = (
            f"deleted {target} (reconciliation: {finding.type.value})" if deleted else f"{target} was gone already"
        )
        work.recorder.note(finding.source_id or target, finding.display_name or target, target, message)
        return FindingStatus.FIXED, message
