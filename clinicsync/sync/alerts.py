"""Alerts: raised only when a person must act, stored in the database, read by the window, the tray and
`clinicsync status`.

What raises one:
- a key refused by Stripe or the source (at once: no later run fixes it);
- Stripe or the source unreachable for longer than `alerts.outage_minutes` (an outage the next run outlives
  never alerts);
- records waiting for a review decision (raised when there are some, cleared when none are left);
- a stream failing on every run for an hour (one failure followed by a success never alerts);
- reconciliation findings (the reconciliation job calls `report_reconciliation`);
- a first sync to a live Stripe account waiting for a person to approve its plan;
- a key or setting missing, or ClinicSync unable to save its own records (a full disk): at once, as no later run
  fixes them.

Each situation is one row per occurrence: `pending` while seen but below its threshold, `active` once raised,
`cleared` when over. Whoever shows alerts to a person calls `take_due_notices`: a new alert once, then at most
once a day while it lasts. The time always comes from the caller's clock.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from clinicsync import labels
from clinicsync.outcomes import Outcome, StopKind
from clinicsync.store.db import database_proxy
from clinicsync.store.models import Alert, ReviewItem
from clinicsync.store.settings import Settings
from clinicsync.streams import STREAMS
from clinicsync.sync.clock import naive_utc
from clinicsync.sync.runner import JobOutcome
from clinicsync.sync.service import enabled_streams

log = logging.getLogger(__name__)

PENDING, ACTIVE, CLEARED = "pending", "active", "cleared"
OPEN = (PENDING, ACTIVE)
FAILING_FOR = timedelta(hours=1)  # a stream failing on every run this long needs a person
REPEAT_AFTER = timedelta(days=1)  # an alert that lasts is repeated at most this often

_AUTH_STOPS = {StopKind.AUTH: "stripe", StopKind.PERMISSION: "stripe"}
_SOURCE_AUTH_STOPS = (StopKind.SOURCE_AUTH, StopKind.SOURCE_PERMISSION)
_CONNECTION_STOPS = (
    StopKind.AUTH,
    StopKind.PERMISSION,
    StopKind.SOURCE_AUTH,
    StopKind.SOURCE_PERMISSION,
    StopKind.UNAVAILABLE,
    StopKind.SOURCE_UNAVAILABLE,
)
_NAMES = {"stripe": "Stripe", "cliniko": "Cliniko", "calcom": "Cal.com"}


@dataclass(frozen=True)
class AlertView:
    """An alert as plain data (times naive UTC, like every stored time)."""

    key: str
    kind: str
    state: str
    title: str
    message: str
    since: datetime
    raised_at: datetime | None
    notified_at: datetime | None
    cleared_at: datetime | None


def _view(row: Alert) -> AlertView:
    return AlertView(
        row.key,
        row.kind,
        row.state,
        row.title,
        row.message,
        row.since,
        row.raised_at,
        row.notified_at,
        row.cleared_at,
    )


def _service_name(service: str | None) -> str:
    return _NAMES.get(service or "", "Cliniko or Stripe")


def _source_of(stream: str) -> str:
    stream_def = STREAMS.get(stream)
    return stream_def.source_system if stream_def is not None else stream.split(".", 1)[0]


def _minutes(delta: timedelta) -> str:
    minutes = int(delta.total_seconds() // 60)
    if minutes < 120:
        return f"{minutes} minutes"
    return f"{minutes // 60} hours"


@dataclass(frozen=True)
class Transition:
    """What an observation changed, for the log: an alert raised or cleared."""

    change: str  # raised, cleared
    alert: AlertView


class AlertBook:
    """Turns finished jobs (and the review queue) into alerts. Call `observe` after every job, `refresh` now
    and then (a person may resolve review items between syncs)."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings

    # --- what the runner reported -------------------------------------------------------------------------
    def observe(self, outcome: JobOutcome, now: datetime) -> list[Transition]:
        if outcome.failure_kind in ("locked", "cancelled"):
            return []  # another process had the profile, or a person stopped it: nothing learnt
        at = naive_utc(now)
        changes: list[Transition] = []
        with database_proxy.atomic():
            self._observe_connections(outcome, at, changes)
            self._observe_setup(outcome, at, changes)
            self._observe_streams(outcome, at, changes)
            self._observe_approvals(outcome, at, changes)
            self._observe_reviews(at, changes)
        for change in changes:
            level = logging.WARNING if change.change == "raised" else logging.INFO
            log.log(level, "alert %s: %s — %s", change.change, change.alert.title, change.alert.message)
        return changes

    def refresh(self, now: datetime) -> list[Transition]:
        changes: list[Transition] = []
        with database_proxy.atomic():
            self._observe_reviews(naive_utc(now), changes)
        return changes

    def _observe_connections(self, outcome: JobOutcome, at: datetime, changes: list[Transition]) -> None:
        refused: dict[str, str] = {}  # service → message
        unreachable: dict[str, str] = {}
        if outcome.failure_kind == "auth":
            refused[outcome.service or ""] = outcome.message
        elif outcome.failure_kind == "unreachable":
            unreachable[outcome.service or ""] = outcome.message
        for result in outcome.results:
            if result.stop_kind in _AUTH_STOPS:
                refused["stripe"] = result.message
            elif result.stop_kind in _SOURCE_AUTH_STOPS:
                refused[_source_of(result.stream)] = result.message
            elif result.stop_kind == StopKind.UNAVAILABLE:
                unreachable["stripe"] = result.message
            elif result.stop_kind == StopKind.SOURCE_UNAVAILABLE:
                unreachable[_source_of(result.stream)] = result.message
        for service, message in refused.items():
            name = _service_name(service)
            self._raise(f"auth:{service}", "auth", f"{name} refused ClinicSync's key", message, at, changes)
        outage = timedelta(minutes=self._settings.get("alerts.outage_minutes"))
        for service, message in unreachable.items():
            self._outage(service, message, at, outage, changes)
        # Results at all mean both services answered with the keys (the account pair was resolved): every
        # service that did not fail this time is reachable and accepts its key.
        synced = [r for r in outcome.results if r.stream in STREAMS]  # a reconciliation job proves nothing here
        if synced:
            answered = {"stripe", *(_source_of(r.stream) for r in synced)}
            for service in answered - set(refused):
                self._clear(f"auth:{service}", at, changes)
            for service in answered - set(unreachable):
                self._clear(f"unreachable:{service}", at, changes)
            self._clear("auth:", at, changes)
            if not unreachable:
                self._clear("unreachable:", at, changes)

    def _observe_setup(self, outcome: JobOutcome, at: datetime, changes: list[Transition]) -> None:
        """What no later run fixes on its own: a key or setting missing, or ClinicSync unable to keep its own
        records (a full disk, a damaged database). Raised at once; cleared by a sync that gets through."""
        if outcome.job.kind != "sync":
            return
        storage = next((r.message for r in outcome.results if r.stop_kind == StopKind.STORAGE), None)
        if outcome.failure_kind == "storage" or storage:
            message = outcome.message or storage or ""
            self._raise("storage", "storage", "ClinicSync can't save its records", message, at, changes)
        elif outcome.results:
            self._clear("storage", at, changes)
        if outcome.failure_kind == "config":
            self._raise("config", "config", "ClinicSync needs a key or a setting", outcome.message, at, changes)
        elif outcome.results:
            self._clear("config", at, changes)

    def _observe_approvals(self, outcome: JobOutcome, at: datetime, changes: list[Transition]) -> None:
        """A first sync to a live Stripe account stops at a plan: nothing syncs until a person approves it."""
        for result in outcome.results:
            if result.stream not in STREAMS:
                continue
            key = f"approval:{result.stream}"
            if result.outcome == Outcome.NEEDS_APPROVAL:
                label = labels.stream_source(result.stream)
                message = (
                    f"Nothing was written to your live Stripe account yet: check and approve the plan for {label}."
                )
                self._raise(key, "approval", "Approve the first live sync", message, at, changes)
            elif result.outcome in (Outcome.OK, Outcome.ATTENTION):
                self._clear(key, at, changes)

    def _outage(self, service: str, message: str, at: datetime, outage: timedelta, changes: list[Transition]) -> None:
        name = _service_name(service)
        row = self._open(f"unreachable:{service}")
        if row is None:
            row = Alert.create(
                key=f"unreachable:{service}", kind="unreachable", state=PENDING, title=f"Can't reach {name}", since=at
            )
        row.message = (
            f"ClinicSync has not been able to reach {name} for {_minutes(at - row.since)}. Nothing is lost: "
            f"changes wait in the queue and go as soon as {name} answers. Last problem: {message}"
        )
        if row.state == PENDING and at - row.since >= outage:
            row.state, row.raised_at = ACTIVE, at
            changes.append(Transition("raised", _view(row)))
        row.save()

    def _observe_streams(self, outcome: JobOutcome, at: datetime, changes: list[Transition]) -> None:
        if outcome.job.kind != "sync":  # a reconciliation that failed says nothing about the syncs
            return
        failed: dict[str, str] = {}
        succeeded: set[str] = set()
        # A missing setting or a full disk is its own alert (at once): not also "keeps failing" an hour later.
        if not outcome.results and outcome.failure_kind in ("error", "internal"):
            for stream in outcome.job.streams or enabled_streams(self._settings):
                failed[stream] = outcome.message
        for result in outcome.results:
            if result.outcome == Outcome.FAILED and result.stop_kind not in (*_CONNECTION_STOPS, StopKind.STORAGE):
                failed[result.stream] = result.message
            elif result.outcome in (Outcome.OK, Outcome.ATTENTION, Outcome.NEEDS_APPROVAL):
                succeeded.add(result.stream)
        for stream in succeeded:
            self._clear(f"failing:{stream}", at, changes)
        for stream, message in failed.items():
            label = labels.stream_source(stream)
            row = self._open(f"failing:{stream}")
            if row is None:
                title = f"Syncing {label} keeps failing"
                row = Alert.create(key=f"failing:{stream}", kind="failing", state=PENDING, title=title, since=at)
            runs = int(row.detail.get("runs", 0)) + 1
            row.detail = {"runs": runs}
            row.message = f"Every sync of {label} for {_minutes(at - row.since)} failed ({runs} runs). {message}"
            if row.state == PENDING and runs > 1 and at - row.since >= FAILING_FOR:
                row.state, row.raised_at = ACTIVE, at
                changes.append(Transition("raised", _view(row)))
            row.save()

    def _observe_reviews(self, at: datetime, changes: list[Transition]) -> None:
        count = ReviewItem.select().where(ReviewItem.status == "open").count()
        if count == 0:
            self._clear("review", at, changes)
            return
        words = f"{count} record{'s' if count != 1 else ''}"
        message = f"{words} could not be matched safely and wait for your decision (Review)."
        row = self._open("review")
        if row is None:
            row = Alert.create(
                key="review", kind="review", state=ACTIVE, title="Records need your decision", since=at, raised_at=at
            )
            changes.append(Transition("raised", _view(row)))
        row.message, row.detail = message, {"count": count}
        row.save()

    # --- reconciliation (called by the reconciliation job) -------------------------------------------------
    def report_reconciliation(self, findings: int, summary: str, now: datetime) -> list[Transition]:
        at = naive_utc(now)
        changes: list[Transition] = []
        with database_proxy.atomic():
            if findings <= 0:
                self._clear("reconcile", at, changes)
                return changes
            row = self._open("reconcile")
            if row is None:
                row = Alert.create(
                    key="reconcile",
                    kind="reconcile",
                    state=ACTIVE,
                    title="Stripe and Cliniko disagree",
                    since=at,
                    raised_at=at,
                )
                changes.append(Transition("raised", _view(row)))
            row.message = summary or f"The full comparison found {findings} difference(s); see Reconciliation."
            row.detail = {"findings": findings}
            row.save()
        return changes

    # --- rows ------------------------------------------------------------------------------------------------
    @staticmethod
    def _open(key: str) -> Alert | None:
        return Alert.get_or_none((Alert.key == key) & Alert.state.in_(OPEN))

    def _raise(self, key: str, kind: str, title: str, message: str, at: datetime, changes: list[Transition]) -> None:
        row = self._open(key)
        if row is None:
            row = Alert.create(key=key, kind=kind, state=ACTIVE, title=title, message=message, since=at, raised_at=at)
            changes.append(Transition("raised", _view(row)))
        elif row.message != message:
            row.message = message
            row.save()

    def _clear(self, key: str, at: datetime, changes: list[Transition]) -> None:
        row = self._open(key)
        if row is None:
            return
        if row.state == PENDING:  # over before anyone needed to hear of it: leaves no trace
            row.delete_instance()
            return
        row.state, row.cleared_at = CLEARED, at
        row.save()
        changes.append(Transition("cleared", _view(row)))


def report_reconciliation(settings: Settings, findings: int, summary: str, now: datetime) -> list[Transition]:
    """For the reconciliation job: raise (or update) the findings alert, or clear it when nothing was found."""
    return AlertBook(settings).report_reconciliation(findings, summary, now)


def active_alerts() -> list[AlertView]:
    """Alerts a person should see now, oldest first."""
    return [_view(row) for row in Alert.select().where(Alert.state == ACTIVE).order_by(Alert.id)]


def take_due_notices(now: datetime) -> list[AlertView]:
    """The alerts to announce now (a desktop notification, a log line): each new one once, then at most once a
    day while it lasts. Marks them announced."""
    at = naive_utc(now)
    due = []
    with database_proxy.atomic():
        for row in Alert.select().where(Alert.state == ACTIVE).order_by(Alert.id):
            if row.notified_at is not None and at - row.notified_at < REPEAT_AFTER:
                continue
            row.notified_at = at
            row.notified_count += 1
            row.save()
            due.append(_view(row))
    return due


def history(keys: Iterable[str] | None = None, limit: int = 100) -> list[AlertView]:
    """Past and present alerts, newest first (for a history view or a support report)."""
    query = Alert.select().where(Alert.raised_at.is_null(False))
    if keys is not None:
        query = query.where(Alert.key.in_(list(keys)))
    return [_view(row) for row in query.order_by(Alert.id.desc()).limit(limit)]
