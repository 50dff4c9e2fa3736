"""Alerts, kind by kind: raised once when a person must act, cleared when resolved, repeated at most once a day
while they last, and never raised for a transient failure the next run fixes. Real outcomes and a real database;
the time comes from a ManualClock."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from peewee import SqliteDatabase

from clinicsync.outcomes import ACTIONS, Outcome, StopKind
from clinicsync.store.db import open_database
from clinicsync.store.models import AccountPair, Alert, ReviewItem
from clinicsync.store.settings import Settings
from clinicsync.sync import alerts
from clinicsync.sync.alerts import AlertBook
from clinicsync.sync.clock import ManualClock
from clinicsync.sync.engine import RunResult
from clinicsync.sync.runner import Job, JobOutcome

PATIENTS = "cliniko.patients"


@pytest.fixture
def db(tmp_path: Path) -> Iterator[SqliteDatabase]:
    database = open_database(tmp_path / "db.sqlite3")
    yield database
    database.close()


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(datetime(2026, 3, 2, 9, 0, tzinfo=UTC))


@pytest.fixture
def book(db: SqliteDatabase) -> AlertBook:
    return AlertBook(Settings({"CLINICSYNC_ALERTS_OUTAGE_MINUTES": "30"}))


_ids = iter(range(1, 10_000))


def result(
    outcome: str = Outcome.OK, stop_kind: str | None = None, stream: str = PATIENTS, message: str = ""
) -> RunResult:
    return RunResult(next(_ids), stream, outcome, dict.fromkeys(ACTIONS, 0), message, stop_kind)


def job_outcome(*results: RunResult, failure: str | None = None, service: str | None = None) -> JobOutcome:
    job = Job(next(_ids), "schedule", (PATIENTS,))
    return JobOutcome(job, tuple(results), failure, "the words the runner gave" if failure else "", service)


OK = job_outcome(result())


def states(key: str) -> list[str]:
    return [row.state for row in Alert.select().where(Alert.key == key).order_by(Alert.id)]


def raised(changes: list[alerts.Transition]) -> list[str]:
    return [change.alert.key for change in changes if change.change == "raised"]


def test_a_refused_key_is_raised_at_once_repeated_daily_and_cleared_when_a_sync_gets_through(book, clock) -> None:
    refused = job_outcome(failure="auth", service="stripe")
    assert raised(book.observe(refused, clock.now())) == ["auth:stripe"]
    assert [a.title for a in alerts.take_due_notices(clock.now())] == ["Stripe refused ClinicSync's key"]

    for _ in range(30):  # it lasts: every run sees it, nobody hears of it again the same day
        clock.advance(60)
        assert book.observe(refused, clock.now()) == []
        assert alerts.take_due_notices(clock.now()) == []
    clock.advance(24 * 3600)
    assert [a.key for a in alerts.take_due_notices(clock.now())] == ["auth:stripe"], "once a day while it lasts"
    assert alerts.take_due_notices(clock.now()) == []

    changes = book.observe(OK, clock.now())
    assert [(c.change, c.alert.key) for c in changes] == [("cleared", "auth:stripe")]
    assert states("auth:stripe") == ["cleared"] and alerts.active_alerts() == []


def test_a_source_key_refused_mid_run_is_an_alert_for_the_source(book, clock) -> None:
    changes = book.observe(job_outcome(result(Outcome.FAILED, StopKind.SOURCE_AUTH)), clock.now())
    assert raised(changes) == ["auth:cliniko"]
    assert [a.title for a in alerts.active_alerts()] == ["Cliniko refused ClinicSync's key"]


def test_an_outage_alerts_only_after_the_threshold_and_clears_when_the_service_answers(book, clock) -> None:
    down = job_outcome(result(Outcome.FAILED, StopKind.UNAVAILABLE, message="Stripe did not answer"))
    seen = []
    for _ in range(31):  # a failed run every minute for half an hour
        seen += raised(book.observe(down, clock.now()))
        clock.advance(60)
    assert seen == ["unreachable:stripe"], "raised once, when the outage passed 30 minutes"
    alert = alerts.active_alerts()[0]
    assert alert.raised_at is not None and alert.raised_at - alert.since >= timedelta(minutes=30)
    assert "Nothing is lost" in alert.message and "Stripe did not answer" in alert.message

    assert raised(book.observe(down, clock.now())) == []
    book.observe(OK, clock.now())
    assert states("unreachable:stripe") == ["cleared"]


def test_an_outage_the_next_run_outlives_never_alerts(book, clock) -> None:
    for _ in range(5):
        book.observe(job_outcome(failure="unreachable", service="cliniko"), clock.now())
        clock.advance(60)
        book.observe(OK, clock.now())
        clock.advance(60)
    assert Alert.select().count() == 0, "a blip leaves no trace"
    assert alerts.take_due_notices(clock.now()) == []


def test_records_waiting_for_review_raise_one_alert_cleared_when_none_are_left(book, clock) -> None:
    pair = AccountPair.create(
        uuid="u1", source_system="cliniko", source_account="1", stripe_account="acct_1", stripe_livemode=False
    )
    items = [ReviewItem.create(pair=pair, stream=PATIENTS, source_id="101", reason="ambiguous_email")]
    assert raised(book.observe(OK, clock.now())) == ["review"]
    assert "1 record could" in alerts.active_alerts()[0].message

    items.append(ReviewItem.create(pair=pair, stream=PATIENTS, source_id="102", reason="ambiguous_email"))
    assert raised(book.observe(OK, clock.now())) == [], "more items: the same alert says so, not a new one"
    assert "2 records" in alerts.active_alerts()[0].message
    assert len(alerts.take_due_notices(clock.now())) == 1

    ReviewItem.update(status="resolved").execute()  # a person decided, in the window, between syncs
    changes = book.refresh(clock.now())
    assert [(c.change, c.alert.key) for c in changes] == [("cleared", "review")]
    assert alerts.active_alerts() == []


def test_a_stream_failing_every_run_for_an_hour_alerts_once(book, clock) -> None:
    broken = job_outcome(result(Outcome.FAILED, StopKind.STRIPE_ERROR, message="Stripe refused the request"))
    seen = []
    for _ in range(61):
        seen += raised(book.observe(broken, clock.now()))
        clock.advance(60)
    assert seen == [f"failing:{PATIENTS}"]
    assert alerts.active_alerts()[0].title == "Syncing Cliniko patients keeps failing"
    book.observe(OK, clock.now())
    assert states(f"failing:{PATIENTS}") == ["cleared"]


def test_a_stream_failure_the_next_run_fixes_never_alerts(book, clock) -> None:
    broken = job_outcome(result(Outcome.FAILED, StopKind.SOURCE_ERROR))
    for _ in range(90):  # failing every other run for an hour and a half
        book.observe(broken, clock.now())
        clock.advance(30)
        book.observe(OK, clock.now())
        clock.advance(30)
    assert Alert.select().count() == 0


def test_a_stream_stopped_by_an_outage_is_the_outage_alert_not_a_second_one(book, clock) -> None:
    down = job_outcome(result(Outcome.FAILED, StopKind.SOURCE_UNAVAILABLE))
    for _ in range(70):
        book.observe(down, clock.now())
        clock.advance(60)
    assert [a.key for a in alerts.active_alerts()] == ["unreachable:cliniko"]


def test_reconciliation_findings_raise_once_and_clear_when_a_later_comparison_finds_none(book, clock) -> None:
    settings = Settings({})
    assert raised(alerts.report_reconciliation(settings, 3, "3 customers are missing in Stripe.", clock.now())) == [
        "reconcile"
    ]
    clock.advance(24 * 3600)
    assert raised(alerts.report_reconciliation(settings, 4, "4 differences.", clock.now())) == []
    assert alerts.active_alerts()[0].message == "4 differences."
    changes = alerts.report_reconciliation(settings, 0, "", clock.now())
    assert [(c.change, c.alert.key) for c in changes] == [("cleared", "reconcile")]


def test_a_locked_profile_or_a_cancelled_sync_says_nothing_about_anyone(book, clock) -> None:
    book.observe(job_outcome(failure="auth", service="stripe"), clock.now())
    for kind in ("locked", "cancelled"):
        assert book.observe(job_outcome(failure=kind), clock.now()) == []
    assert [a.key for a in alerts.active_alerts()] == ["auth:stripe"]


def test_a_missing_key_or_a_full_disk_is_raised_at_once_and_cleared_by_a_sync_that_gets_through(book, clock) -> None:
    missing = job_outcome(failure="config")
    full = job_outcome(result(Outcome.FAILED, StopKind.STORAGE, message="the disk is full"))
    assert raised(book.observe(missing, clock.now())) == ["config"]
    assert raised(book.observe(missing, clock.now())) == [], "raised once, not on every run"
    changes = book.observe(full, clock.now())  # the key is there now (it got as far as a stream); the disk is full
    assert sorted((c.change, c.alert.key) for c in changes) == [("cleared", "config"), ("raised", "storage")]
    for _ in range(70):  # still failing after an hour: the same alert, not a second "keeps failing" one
        clock.advance(60)
        assert book.observe(full, clock.now()) == []
    assert [a.key for a in alerts.active_alerts()] == ["storage"]
    assert [(c.change, c.alert.key) for c in book.observe(OK, clock.now())] == [("cleared", "storage")]


def test_a_live_sync_waiting_for_approval_is_raised_once_and_cleared_when_it_syncs(book, clock) -> None:
    waiting = job_outcome(result(Outcome.NEEDS_APPROVAL))
    assert raised(book.observe(waiting, clock.now())) == [f"approval:{PATIENTS}"]
    assert raised(book.observe(waiting, clock.now())) == []
    (alert,) = alerts.active_alerts()
    assert alert.kind == "approval" and "approve the plan for Cliniko patients" in alert.message
    changes = book.observe(OK, clock.now())
    assert [(c.change, c.alert.key) for c in changes] == [("cleared", f"approval:{PATIENTS}")]
