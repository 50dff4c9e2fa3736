"""The scheduler's small parts: the poll budget check, sleep detection, and folding idle polls (by their times)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from peewee import SqliteDatabase

from clinicsync import rate_limits
from clinicsync.outcomes import Outcome
from clinicsync.store.db import open_database
from clinicsync.store.models import SyncEvent, SyncRun
from clinicsync.store.settings import MIN_INTERVAL_SECONDS, SPECS_BY_KEY
from clinicsync.streams import STREAMS
from clinicsync.sync import scheduler
from clinicsync.sync.clock import ManualClock, WakeDetector
from clinicsync.sync.history import SCHEDULE, fold_quiet


def test_polling_the_default_cliniko_streams_at_the_shortest_interval_stays_well_inside_the_budget() -> None:
    # The Cliniko streams on by default: patients, products and invoice linking (the mirror is switched on by a
    # person). Their declared idle polls set the shortest interval offered; the default interval is above it.
    every = [name for name, stream in STREAMS.items() if stream.source_system == "cliniko"]
    assert scheduler.shortest_interval(every) >= scheduler.minimum_interval(every)
    switch = {name: SPECS_BY_KEY.get(f"streams.{name}.enabled") for name in every}
    cliniko = [
        name for name in every if (switch[name] is None or switch[name].default) and STREAMS[name].enabled_by is None
    ]
    assert cliniko == ["cliniko.patients", "cliniko.products", "cliniko.invoices"]
    shortest = scheduler.shortest_interval(cliniko)
    assert shortest <= SPECS_BY_KEY["schedule.interval_seconds"].default
    per_minute = scheduler.poll_cost("cliniko", cliniko) * 60 / shortest
    assert per_minute <= scheduler.POLL_SHARE * rate_limits.CLINIKO_BUDGET_PER_MINUTE
    assert per_minute <= 0.2 * rate_limits.CLINIKO_PER_MINUTE, "a fifth of Cliniko's own limit at most"


def test_the_poll_cost_sums_what_each_stream_declares_with_one_connect_per_service() -> None:
    invoices, patients = STREAMS["cliniko.invoices"], STREAMS["cliniko.patients"]
    both = ["cliniko.patients", "cliniko.invoices"]
    expected = scheduler.CONNECT_REQUESTS["cliniko"] + patients.idle_poll["cliniko"] + invoices.idle_poll["cliniko"]
    assert scheduler.poll_cost("cliniko", both) == expected
    assert scheduler.poll_cost("calcom", both) == 0, "no Cal.com stream: no Cal.com request"
    with_calcom = [*both, "calcom.bookings"]  # each source's accounts are resolved with Stripe on its own
    stripe = 2 * scheduler.CONNECT_REQUESTS["stripe"] + sum(STREAMS[n].idle_poll["stripe"] for n in with_calcom)
    assert scheduler.poll_cost("stripe", with_calcom) == stripe
    assert invoices.idle_poll["cliniko"] > patients.idle_poll["cliniko"], "its own cost, not a flat rate per source"


def test_every_stream_declares_its_idle_poll_for_its_source_and_stripe() -> None:
    for name, stream in STREAMS.items():
        assert set(stream.idle_poll) == {stream.source_system, "stripe"}, name
        assert all(count >= 1 for count in stream.idle_poll.values()), name


def test_more_streams_of_one_source_lengthen_the_interval_instead_of_overrunning_the_budget() -> None:
    many = [f"cliniko.s{n}" for n in range(12)]
    fake = dict.fromkeys(many, STREAMS["cliniko.patients"])
    original = scheduler.STREAMS
    scheduler.STREAMS = fake  # type: ignore[assignment]
    try:
        needed = scheduler.minimum_interval(many)
        cost = scheduler.poll_cost("cliniko", many)
    finally:
        scheduler.STREAMS = original  # type: ignore[assignment]
    assert needed > MIN_INTERVAL_SECONDS
    assert cost * 60 / needed == pytest.approx(scheduler.POLL_SHARE * rate_limits.CLINIKO_BUDGET_PER_MINUTE)


def test_every_stream_has_its_own_schedule_switch() -> None:
    for name in STREAMS:
        spec = SPECS_BY_KEY[f"schedule.{name}.enabled"]
        assert spec.type is bool and spec.default is True and spec.label


def test_a_suspend_shows_as_the_wall_clock_outrunning_the_monotonic_one() -> None:
    clock = ManualClock(datetime(2026, 3, 2, 9, 0, tzinfo=UTC))
    wake = WakeDetector(clock, threshold_s=30)
    clock.advance(60)
    assert wake.check() is None, "time passing while awake is not sleep"
    clock.sleep_for(3 * 3600)
    assert wake.check() == pytest.approx(3 * 3600)
    assert wake.check() is None
    assert wake.overslept(1.0, 2.0) is None
    assert wake.overslept(1.0, 600.0) == 600.0, "where the monotonic clock counts a suspend, the wait tells"


def test_a_clock_turned_back_is_noticed_too() -> None:
    clock = ManualClock(datetime(2026, 3, 2, 9, 0, tzinfo=UTC))
    wake = WakeDetector(clock, threshold_s=30)
    clock.set(datetime(2026, 3, 2, 8, 0, tzinfo=UTC))  # a person sets the clock back an hour
    assert wake.check() is None and wake.went_back_s == pytest.approx(3600)
    clock.advance(1)
    assert wake.check() is None and wake.went_back_s == 0.0


@pytest.fixture
def db(tmp_path: Path) -> Iterator[SqliteDatabase]:
    database = open_database(tmp_path / "db.sqlite3")
    yield database
    database.close()


def quiet(start: datetime, **values: object) -> SyncRun:
    fields = {
        "stream": "cliniko.patients",
        "trigger": SCHEDULE,
        "outcome": Outcome.OK,
        "started_at": start,
        "finished_at": start + timedelta(seconds=1),
    }
    fields.update(values)
    return SyncRun.create(**fields)


def test_idle_polls_fold_for_an_hour_then_a_new_row_starts(db: SqliteDatabase) -> None:
    t0 = datetime(2026, 3, 2, 14, 0)
    kept = []
    for minute in range(75):
        kept.append(fold_quiet(quiet(t0 + timedelta(minutes=minute)).id))
    rows = list(SyncRun.select().order_by(SyncRun.id))
    assert [(r.checks, r.checks_since, r.started_at) for r in rows] == [
        (60, t0, t0 + timedelta(minutes=59)),
        (15, t0 + timedelta(minutes=60), t0 + timedelta(minutes=74)),
    ]
    assert rows[0].message == "60 checks, nothing changed"


def test_only_quiet_scheduled_runs_fold(db: SqliteDatabase) -> None:
    t0 = datetime(2026, 3, 2, 14, 0)
    first = quiet(t0)
    cases = [
        quiet(t0 + timedelta(minutes=1), trigger="manual"),  # a person's sync: its own row
        quiet(t0 + timedelta(minutes=2), updated=1),  # wrote something
        quiet(t0 + timedelta(minutes=3), outcome=Outcome.FAILED, message="Stripe is down"),
        quiet(t0 + timedelta(minutes=4), outcome=Outcome.SKIPPED, message="Not started: paused."),
        quiet(t0 + timedelta(minutes=5), message="Wrote 3 Stripe ids back to Cliniko."),
    ]
    for run in [first, *cases]:
        fold_quiet(run.id)
    noted = quiet(t0 + timedelta(minutes=6))
    SyncEvent.create(run=noted, stream=noted.stream, source_id="7", action="note", message="a duplicate removed")
    fold_quiet(noted.id)
    assert SyncRun.select().count() == 7 and all(r.checks == 1 for r in SyncRun.select())
