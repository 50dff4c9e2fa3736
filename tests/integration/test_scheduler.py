"""The scheduler with the real runner, the real database and the sandbox, on a clock the test moves: jobs fire at
their intervals, a long sleep catches up once, pause and per-stream schedules survive a restart, streams of one
source never overlap, a collision is recorded as skipped, idle polls fold, reconciliation fires as configured.

Nothing here waits on the wall clock to prove an order: the test moves the clock and ticks; it only waits for the
runner's worker thread to finish what it was given (`wait_idle`).
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from clinicsync.app import bootstrap
from clinicsync.outcomes import Outcome
from clinicsync.secrets import SYNC_SECRETS
from clinicsync.store import queries
from clinicsync.store.models import SyncRun
from clinicsync.sync import reconcile_hook
from clinicsync.sync.clock import ManualClock, naive_utc
from clinicsync.sync.history import SCHEDULE
from clinicsync.sync.host import SchedulerHost
from clinicsync.sync.reconcile_hook import RECONCILE, ReconcileReport
from clinicsync.sync.runner import APPROVAL_MESSAGE, BUSY_MESSAGE, read_credentials
from clinicsync.sync.scheduler import WAKE_SETTLE_S
from tests.integration.test_reconcile import stripe_call
from tests.support import admin, profile_env

PATIENTS, PRODUCTS, INVOICES = "cliniko.patients", "cliniko.products", "cliniko.invoices"
ONLY_PATIENTS = {
    "CLINICSYNC_STREAMS_CLINIKO_PRODUCTS_ENABLED": "false",
    "CLINICSYNC_STREAMS_CLINIKO_INVOICES_ENABLED": "false",
}


class Harness:
    """A profile's SchedulerHost on a ManualClock; `restart()` builds a new one on the same database."""

    def __init__(self, env: dict[str, str], clock: ManualClock, zone: object = UTC, listener: object = None) -> None:
        self.env = env
        self.clock = clock
        self.zone = zone
        self.listener = listener
        self.host = self._build()

    def _build(self) -> SchedulerHost:
        self.ctx = bootstrap(self.env)
        ctx = self.ctx
        host = SchedulerHost(
            ctx.paths,
            ctx.settings,
            credentials=lambda: read_credentials(ctx.secrets, SYNC_SECRETS),
            clock=self.clock,
            zone=self.zone,  # type: ignore[arg-type]
            listener=self.listener,  # type: ignore[arg-type]
        )
        host.start()
        return host

    def step(self, seconds: float = 0.0) -> None:
        """Move the clock, tick, and let whatever was asked for run to its end."""
        if seconds:
            self.clock.advance(seconds)
        self.host.tick()
        assert self.host.wait_idle(60), "the runner did not finish"

    def asked(self, trigger: str = SCHEDULE) -> list[tuple[datetime, tuple[str, ...], str]]:
        return [(at, streams, answer) for at, kind, streams, answer in self.host.scheduler.fired if kind == trigger]

    def restart(self, clock: ManualClock | None = None) -> None:
        self.stop()
        self.clock = clock or self.clock
        self.host = self._build()

    def stop(self) -> None:
        assert self.host.stop(30)


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[Callable[..., Harness]]:
    made: list[Harness] = []

    def make(sandbox: object | None = None, *, clock: ManualClock | None = None, **kwargs: object) -> Harness:
        # The daily comparison (02:00 by default) stays off unless a test schedules it: the manual clock starts at
        # the real time, so a test stepping an hour through 02:00 met it as "another sync running" (flaky by hour).
        settings = {"CLINICSYNC_SCHEDULE_RECONCILE_FREQUENCY": "off"}
        settings.update({key: value for key, value in kwargs.items() if key.startswith("CLINICSYNC_")})
        options = {key: value for key, value in kwargs.items() if not key.startswith("CLINICSYNC_")}
        sandbox_env = sandbox.env() if sandbox is not None else {}  # type: ignore[attr-defined]
        overrides = {key: str(value) for key, value in settings.items() if value is not None}
        env = profile_env(tmp_path / "profile", sandbox_env, **overrides)
        for key in (key for key, value in settings.items() if value is None):  # None: not set at all
            env.pop(key, None)
        made.append(Harness(env, clock or ManualClock(), **options))  # type: ignore[arg-type]
        return made[-1]

    yield make
    for made_one in made:
        made_one.host.stop(30)
    reconcile_hook.register_reconciler(None)


def runs(stream: str, **where: object) -> list[SyncRun]:
    query = SyncRun.select().where(SyncRun.stream == stream)
    for name, value in where.items():
        query = query.where(getattr(SyncRun, name) == value)
    return list(query.order_by(SyncRun.id))


def test_jobs_fire_at_their_interval_and_a_new_interval_applies_at_once(make_sandbox, harness) -> None:
    sandbox = make_sandbox(profile="clean", patients=12)
    h = harness(sandbox, **ONLY_PATIENTS)
    start = h.clock.now()
    h.step()  # never synced: the first run is due at start
    assert [streams for _, streams, _ in h.asked()] == [(PATIENTS,)]
    assert runs(PATIENTS)[0].created == 12, (runs(PATIENTS)[0].outcome, runs(PATIENTS)[0].message)

    for _ in range(3):
        h.step(30)  # half an interval: nothing
        h.step(30)  # the interval: one poll
    times = [at for at, _, _ in h.asked()]
    assert times == [start + timedelta(seconds=60 * n) for n in range(4)]

    h.ctx.settings.set("schedule.interval_seconds", 120)  # the jobs are rebuilt from the settings
    h.step(60)
    assert len(h.asked()) == 4, "the new interval counts from the last run"
    h.step(60)
    assert len(h.asked()) == 5
    assert all(answer == "queued" for _, _, answer in h.asked())


def test_a_stream_with_its_own_interval_is_checked_at_it_and_joins_its_source_when_both_are_due(
    make_sandbox, harness
) -> None:
    sandbox = make_sandbox(profile="clean", patients=4)
    h = harness(sandbox, CLINICSYNC_SCHEDULE_CLINIKO_PRODUCTS_INTERVAL_SECONDS="180")
    start = h.clock.now()
    h.step()
    for _ in range(10):
        h.step(30)
    asked = [(int((at - start).total_seconds()), streams) for at, streams, _ in h.asked()]
    assert asked == [  # the Cliniko streams on by default: invoice linking follows the usual interval too
        (0, (PATIENTS, PRODUCTS, INVOICES)),
        (60, (PATIENTS, INVOICES)),
        (120, (PATIENTS, INVOICES)),
        (180, (PATIENTS, PRODUCTS, INVOICES)),  # one run, in dependency order, never one on top of the other
        (240, (PATIENTS, INVOICES)),
        (300, (PATIENTS, INVOICES)),
    ]
    next_runs = h.host.scheduler.next_runs()
    assert next_runs[PRODUCTS] == next_runs[PATIENTS] == next_runs[INVOICES] == start + timedelta(seconds=360)


def test_a_three_hour_sleep_gives_exactly_one_catch_up_run_per_stream(make_sandbox, harness) -> None:
    sandbox = make_sandbox(profile="clean", patients=5)
    h = harness(sandbox)  # the three Cliniko streams on by default
    h.step()
    before = {stream: sum(run.checks for run in runs(stream)) for stream in (PATIENTS, PRODUCTS, INVOICES)}
    assert len(h.asked()) == 1

    h.clock.sleep_for(3 * 3600)  # the laptop is closed: the wall clock jumps, the monotonic clock does not
    h.step()
    assert len(h.asked()) == 1, "right after waking, the network gets a moment before catching up"
    h.step(WAKE_SETTLE_S)
    for _ in range(5):
        h.step(1)
    caught_up = h.asked()[1:]
    assert [streams for _, streams, _ in caught_up] == [(PATIENTS, PRODUCTS, INVOICES)], "180 missed polls, one run"
    after = {stream: sum(run.checks for run in runs(stream)) for stream in before}
    assert {stream: after[stream] - before[stream] for stream in before} == {PATIENTS: 1, PRODUCTS: 1, INVOICES: 1}


def test_an_app_closed_for_hours_catches_up_once_at_start(make_sandbox, harness) -> None:
    sandbox = make_sandbox(profile="clean", patients=5)
    h = harness(sandbox, **ONLY_PATIENTS)
    h.step()
    h.step(60)

    def polls() -> int:  # idle polls fold into one row; each still counts as a check
        return sum(run.checks for run in runs(PATIENTS))

    assert polls() == 2
    later = ManualClock(h.clock.now() + timedelta(hours=3))  # closed for three hours, then started again
    h.restart(later)
    for _ in range(5):
        h.step(1)
    assert len(h.asked()) == 1 and polls() == 3
    h.step(60)
    assert len(h.asked()) == 2


def test_pause_and_per_stream_schedules_survive_a_restart(make_sandbox, harness) -> None:
    sandbox = make_sandbox(profile="clean", patients=5)
    h = harness(sandbox)
    h.ctx.settings.set("schedule.cliniko.products.enabled", False)
    h.ctx.settings.set("sync.paused", True)
    h.step()
    assert h.asked() == [] and runs(PATIENTS) == []

    h.restart(ManualClock(h.clock.now() + timedelta(hours=1)))
    assert h.host.scheduler.config is not None
    assert h.host.scheduler.config.paused and h.host.scheduler.config.streams == (PATIENTS, INVOICES)
    h.step(600)
    assert h.asked() == [], "paused is remembered: nothing runs, nothing is recorded as skipped every minute"

    h.ctx.settings.set("sync.paused", False)
    h.step()
    assert [streams for _, streams, _ in h.asked()] == [(PATIENTS, INVOICES)], "what came due while paused runs once"
    assert runs(PRODUCTS) == []


def test_two_streams_of_one_source_run_one_after_another_in_dependency_order(make_sandbox, harness) -> None:
    sandbox = make_sandbox(profile="clean", patients=5)
    h = harness(sandbox)
    h.ctx.settings.set("schedule.cliniko.products.enabled", False)
    h.step()  # patients (and invoice linking) first: products is now out of step
    h.step(35)
    h.ctx.settings.set("schedule.cliniko.products.enabled", True)
    h.step()  # products has never run: due now; the others are due 25 s later (within half an interval): they join
    for _ in range(6):
        h.step(30)
    together = [streams for _, streams, _ in h.asked()][1:]
    assert together and all(streams == (PATIENTS, PRODUCTS, INVOICES) for streams in together), together
    spans = sorted(
        (run.started_at, run.finished_at, run.stream) for run in SyncRun.select() if run.finished_at is not None
    )
    for (_, finished, stream), (started, _, other) in itertools.pairwise(spans):
        assert finished <= started, f"{stream} and {other} overlapped"


class Gate:
    """A runner listener that holds the worker inside a job until the test opens it."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.open = threading.Event()
        self.armed = False

    def job_started(self, job) -> None:
        if self.armed:
            self.entered.set()
            assert self.open.wait(30)

    def job_progress(self, *args) -> None:
        pass

    def job_finished(self, outcome) -> None:
        pass


def test_a_scheduled_run_that_would_collide_with_a_running_one_is_recorded_as_skipped(make_sandbox, harness) -> None:
    sandbox = make_sandbox(profile="clean", patients=5)
    gate = Gate()
    h = harness(sandbox, listener=gate, **ONLY_PATIENTS)
    h.step()
    gate.armed = True
    assert h.host.runner.submit(trigger="manual", credentials=h.host.credentials()) is not None
    assert gate.entered.wait(30)  # a manual sync is running now
    h.clock.advance(60)
    h.host.tick()  # the poll comes due while it runs
    gate.armed = False
    gate.open.set()
    assert h.host.wait_idle(60)

    skipped = runs(PATIENTS, outcome=Outcome.SKIPPED)
    assert [(run.trigger, run.message) for run in skipped] == [(SCHEDULE, BUSY_MESSAGE)]
    h.step(60)
    assert h.asked()[-1][2] == "queued", "the next poll runs as usual"


def test_sixty_polls_that_change_nothing_fold_into_one_history_row(make_sandbox, harness) -> None:
    sandbox = make_sandbox(profile="clean", patients=8)
    h = harness(sandbox, **ONLY_PATIENTS)
    h.step()
    for _ in range(60):
        h.step(60)
    rows = runs(PATIENTS)
    assert len(rows) == 2, [(r.outcome, r.checks, r.message) for r in rows]
    first, idle = rows
    assert first.created == 8 and first.checks == 1
    assert idle.checks == 60 and idle.message == "60 checks, nothing changed"
    assert idle.checks_since is not None and idle.checks_since <= idle.started_at

    admin(sandbox.cliniko_url, "edit", count=2)  # a change: its own row, then the next idle stretch starts afresh
    h.step(60)
    h.step(60)
    h.step(60)
    rows = runs(PATIENTS)
    assert [(r.updated, r.checks) for r in rows[2:]] == [(2, 1), (0, 2)]


def test_a_first_live_sync_waiting_for_approval_is_skipped_once_then_waits(make_sandbox, harness) -> None:
    sandbox = make_sandbox(profile="clean", patients=4, stripe_mode="live")
    h = harness(sandbox, **ONLY_PATIENTS)
    h.step()
    assert runs(PATIENTS)[-1].outcome == Outcome.NEEDS_APPROVAL
    for _ in range(10):
        h.step(60)
    skipped = runs(PATIENTS, outcome=Outcome.SKIPPED)
    assert [run.message for run in skipped] == [APPROVAL_MESSAGE], "one row, not one a minute"

    plan = queries.approve_latest_plan(PATIENTS)
    h.step(60)
    last = runs(PATIENTS)[-1]
    assert last.outcome == Outcome.OK and last.created == plan.summary["counts"]["created"] > 0


MELBOURNE = ZoneInfo("Australia/Melbourne")


def _reconcile_harness(
    harness, frequency: str, *, start: datetime, day: str = "monday", sandbox: object | None = None
) -> Harness:
    """Only the reconciliation on schedule. With a sandbox it really reconciles (the patients); without one a test
    registers its own reconciler, so nothing ever connects."""
    keys = {
        # Keys a reconciliation would be given (it never connects here): fakes, read from the environment.
        "CLINICSYNC_CLINIKO_API_KEY": "sandbox-reconcile-au1",
        "CLINICSYNC_STRIPE_API_KEY": "sk_test_sandbox_reconcile",
    }
    h = harness(
        sandbox,
        clock=ManualClock(start),
        zone=MELBOURNE,
        CLINICSYNC_SCHEDULE_CLINIKO_PATIENTS_ENABLED="false",
        CLINICSYNC_SCHEDULE_CLINIKO_PRODUCTS_ENABLED="false",
        CLINICSYNC_SCHEDULE_RECONCILE_FREQUENCY=frequency,
        CLINICSYNC_SCHEDULE_RECONCILE_TIME="02:30",
        CLINICSYNC_SCHEDULE_RECONCILE_DAY=day,
        **ONLY_PATIENTS,
        **({} if sandbox is not None else keys),
    )
    return h


def _counting_reconciler() -> list[str]:
    """Register a reconciler that only records that it was called (and a history row, as the real one does)."""
    called: list[str] = []

    def reconciler(request: reconcile_hook.ReconcileRequest) -> ReconcileReport:
        called.append(request.trigger)
        run = SyncRun.create(stream=RECONCILE, trigger=request.trigger, outcome=Outcome.OK, finished_at=None)
        return ReconcileReport(run_id=run.id, outcome=Outcome.OK, findings=0)

    reconcile_hook.register_reconciler(reconciler)
    return called


def _local(moment: datetime) -> tuple[str, str]:
    local = moment.astimezone(MELBOURNE)
    return local.strftime("%a"), local.strftime("%H:%M")


def test_the_reconciliation_job_fires_daily_at_the_chosen_time(harness) -> None:
    called = _counting_reconciler()
    start = datetime(2026, 3, 2, 0, 0, tzinfo=MELBOURNE)  # a Monday, midnight in Melbourne
    h = _reconcile_harness(harness, "daily", start=start)
    for _ in range(3 * 24 * 4):  # three days in quarter hours
        h.step(900)
    fired = [_local(at) for at, _, _ in h.asked(RECONCILE)]
    assert fired == [("Mon", "02:30"), ("Tue", "02:30"), ("Wed", "02:30")]
    assert called == [RECONCILE] * 3


def test_the_scheduled_reconciliation_really_reconciles_and_reports_what_it_found(make_sandbox, harness) -> None:
    from clinicsync.store import reconciliation
    from clinicsync.sync import alerts

    sandbox = make_sandbox(profile="clean", patients=6)
    start = datetime(2026, 3, 2, 2, 0, tzinfo=MELBOURNE)
    h = _reconcile_harness(harness, "daily", start=start, sandbox=sandbox)
    assert h.host.runner.submit(trigger="manual", credentials=h.host.credentials()) is not None
    assert h.host.wait_idle(60)
    customer = next(c for c in admin(sandbox.stripe_url, "dump")["data"] if not c["deleted"])
    stripe_call(sandbox, "POST", f"customers/{customer['id']}", {"phone": "0400 123 456"})  # drift, made in Stripe

    for _ in range(2):
        h.step(900)  # 02:15, 02:30: the reconciliation's slot
    assert [_local(at) for at, _, _ in h.asked(RECONCILE)] == [("Mon", "02:30")]
    (report,) = reconciliation.reports()
    assert report.outcome == "findings" and report.counts.total == 1
    (row,) = runs(RECONCILE)
    assert (row.outcome, row.message) == (Outcome.ATTENTION, "Full comparison: 1 difference found.")
    (alert,) = alerts.active_alerts()
    assert alert.kind == "reconcile" and "1 difference" in alert.message

    # Put right in Stripe: the next day's comparison is clean, and the alert clears.
    stripe_call(sandbox, "POST", f"customers/{customer['id']}", {"phone": customer["phone"] or ""})
    for _ in range(24 * 4):
        h.step(900)
    assert [_local(at) for at, _, _ in h.asked(RECONCILE)] == [("Mon", "02:30"), ("Tue", "02:30")]
    assert [r.outcome for r in runs(RECONCILE)] == [Outcome.ATTENTION, Outcome.OK]
    assert alerts.active_alerts() == []


def test_the_reconciliation_job_fires_weekly_on_the_chosen_day(harness) -> None:
    _counting_reconciler()
    start = datetime(2026, 3, 2, 0, 30, tzinfo=MELBOURNE)  # hourly steps land on the half hour
    h = _reconcile_harness(harness, "weekly", start=start, day="wednesday")
    for _ in range(15 * 24):  # fifteen days in hours
        h.step(3600)
    fired = [(_local(at), at.astimezone(MELBOURNE).day) for at, _, _ in h.asked(RECONCILE)]
    assert fired == [(("Wed", "02:30"), 4), (("Wed", "02:30"), 11)]


def test_a_missed_reconciliation_runs_once_at_start_and_calls_the_registered_reconciler(harness) -> None:
    called = _counting_reconciler()
    start = datetime(2026, 3, 5, 9, 0, tzinfo=MELBOURNE)  # Thursday morning
    h = _reconcile_harness(harness, "daily", start=start)
    h.host.stop(30)
    # The last reconciliation ran on Monday night; the app was closed since: Tuesday's and Wednesday's are missed.
    SyncRun.create(
        stream=RECONCILE, trigger=RECONCILE, outcome=Outcome.OK, started_at=naive_utc(start - timedelta(days=3))
    )
    h.restart()
    for _ in range(8):
        h.step(60)
    assert called == [RECONCILE], "two missed slots, one run"
    for _ in range(24):
        h.step(3600)
    assert called == [RECONCILE, RECONCILE]
    day, time = _local(h.asked(RECONCILE)[-1][0])
    assert day == "Fri" and "02:30" <= time < "03:30", "the next one at Friday's slot (within this test's hour step)"


def test_a_refused_key_raises_one_alert_and_a_working_one_clears_it(make_sandbox, harness) -> None:
    from clinicsync.secrets import STRIPE_API_KEY
    from clinicsync.sync import alerts

    sandbox = make_sandbox(profile="clean", patients=3)
    h = harness(sandbox, **ONLY_PATIENTS)
    good = h.host.credentials
    wrong = {**good(), STRIPE_API_KEY: "sk_test_sandbox_revoked"}
    h.host.scheduler.credentials = lambda: wrong
    h.step()
    for _ in range(5):
        h.step(60)
    assert [a.key for a in alerts.active_alerts()] == ["auth:stripe"]
    assert len(alerts.take_due_notices(h.clock.now())) == 1 and alerts.take_due_notices(h.clock.now()) == []
    assert len(runs(PATIENTS, outcome=Outcome.FAILED)) == 6, "every refused run is in the history"

    h.host.scheduler.credentials = good  # the key was fixed in Connections
    h.step(60)
    assert alerts.active_alerts() == []


def test_requests_from_a_window_reach_the_host_through_the_database(make_sandbox, harness) -> None:
    from clinicsync.sync import attach, requests

    sandbox = make_sandbox(profile="clean", patients=3)
    h = harness(sandbox, **ONLY_PATIENTS)
    h.step()
    request_id = attach.sync_now(origin="test window")
    h.step()  # the service's next tick (a second or so later) carries it out
    state = attach.request_state(request_id)
    assert state is not None and state.status == requests.DONE and state.job_id is not None
    assert "cliniko.patients: ok" in state.result
    assert runs(PATIENTS, trigger="manual")

    paused = attach.pause()
    h.step()
    assert attach.request_state(paused).status == requests.DONE and h.ctx.settings.get("sync.paused") is True
    refused = attach.sync_now()
    h.step()
    state = attach.request_state(refused)
    assert state.status == requests.REFUSED and "paused" in state.result
    assert runs(PATIENTS, outcome=Outcome.SKIPPED, trigger="manual"), "the refusal is in the history too"
    attach.resume()
    h.step()
    assert h.ctx.settings.get("sync.paused") is False


def test_a_request_nobody_answered_in_time_is_not_carried_out_later(make_sandbox, harness) -> None:
    from clinicsync.store.models import ServiceRequest
    from clinicsync.sync import attach, requests

    sandbox = make_sandbox(profile="clean", patients=1)
    h = harness(sandbox, **ONLY_PATIENTS)
    h.step()
    stale = attach.sync_now()
    row = ServiceRequest.get_by_id(stale)
    ServiceRequest.update(created_at=row.created_at - timedelta(minutes=10)).where(ServiceRequest.id == stale).execute()
    h.step()
    state = attach.request_state(stale)
    assert state.status == requests.REFUSED and state.result == requests.STALE_MESSAGE
    assert runs(PATIENTS, trigger="manual") == []


def test_an_idle_poll_of_each_stream_costs_no_more_requests_than_it_declares(make_sandbox, harness) -> None:
    # Every stream on (the invoice mirror too), both sources, invoices with payments: after the first sync, each
    # stream polled alone, and then all of them on schedule, send no more requests to any service than the
    # scheduler's budget check counts (connecting plus each stream's Stream.idle_poll).
    from clinicsync.streams import STREAMS
    from clinicsync.sync.scheduler import poll_cost
    from tests.support import stats

    sandbox = make_sandbox(
        profile="clean", patients=20, products=5, invoices=40, invoice_customers=20, calcom=True, calcom_payments=True
    )
    urls = {"cliniko": sandbox.cliniko_url, "calcom": sandbox.calcom_url, "stripe": sandbox.stripe_url}

    def sent() -> dict[str, int]:
        return {service: stats(url)["requests"] for service, url in urls.items()}

    h = harness(sandbox, CLINICSYNC_STREAMS_CLINIKO_INVOICES_ENABLED="true", CLINICSYNC_CLINIKO_INVOICES_MIRROR="true")
    h.step()  # the first sync of everything
    streams = list(h.host.scheduler.config.streams)
    assert streams == list(STREAMS), "every stream is scheduled"
    assert all(run.outcome in (Outcome.OK, Outcome.ATTENTION) for name in streams for run in runs(name))
    for name in streams:
        before = sent()
        assert h.host.runner.submit(trigger="manual", credentials=h.host.credentials(), streams=[name]) is not None
        assert h.host.wait_idle(60)
        after = sent()
        for service in urls:
            measured, declared = after[service] - before[service], poll_cost(service, [name])
            print(f"{name}: {measured} {service} requests per idle poll, {declared} counted")
            assert measured <= declared, f"{name} sends {measured} {service} requests per idle poll, {declared} counted"
    before = sent()
    h.step(600)  # every stream due: one scheduled poll of them all
    after = sent()
    for service in urls:
        measured = after[service] - before[service]
        assert measured <= poll_cost(service, streams), f"{measured} {service} requests per idle poll of every stream"


def test_a_reconciliation_that_meets_a_running_sync_is_asked_again_shortly_not_dropped(make_sandbox, harness) -> None:
    from clinicsync.sync.scheduler import RECONCILE_RETRY

    sandbox = make_sandbox(profile="clean", patients=2)
    gate = Gate()
    h = harness(
        sandbox,
        clock=ManualClock(datetime(2026, 3, 2, 1, 59, tzinfo=UTC)),
        listener=gate,
        CLINICSYNC_SCHEDULE_RECONCILE_FREQUENCY="daily",
        CLINICSYNC_SCHEDULE_RECONCILE_TIME="02:00",
        **ONLY_PATIENTS,
    )
    h.step()
    gate.armed = True
    assert h.host.runner.submit(trigger="manual", credentials=h.host.credentials()) is not None
    assert gate.entered.wait(30)
    h.clock.advance(60)
    h.host.tick()  # 02:00: the reconciliation comes due while a sync runs
    gate.armed = False
    gate.open.set()
    assert h.host.wait_idle(60)
    h.step(RECONCILE_RETRY.total_seconds())
    assert [(r.outcome, r.message) for r in runs(RECONCILE)] == [
        (Outcome.SKIPPED, BUSY_MESSAGE),
        (Outcome.OK, "Full comparison: Stripe and the source agree."),
    ]


def test_a_clock_turned_back_does_not_stop_the_polls(make_sandbox, harness) -> None:
    sandbox = make_sandbox(profile="clean", patients=2)
    h = harness(sandbox, **ONLY_PATIENTS)
    h.step()
    h.clock.set(h.clock.now() - timedelta(hours=1))  # someone sets the computer's clock back an hour
    h.step()
    h.step(60)
    assert len(h.asked()) == 2, "the next poll came an interval later, not an hour and an interval later"


def test_a_clinic_on_cal_com_alone_has_its_streams_on_the_schedule(make_sandbox, harness) -> None:
    sandbox = make_sandbox(profile="clean", patients=3, calcom=True, calcom_bookings=12)
    h = harness(sandbox, CLINICSYNC_CLINIKO_API_KEY=None)  # no Cliniko key: Cal.com is the only source
    h.step()
    assert [streams for _, streams, _ in h.asked()] == [
        ("calcom.event_types", "calcom.bookings", "calcom.booking_payments", "calcom.reference")
    ]
    assert runs("calcom.bookings")[0].outcome == "ok" and not runs(PATIENTS)
    h.step(60)
    assert len(h.asked()) == 2, "polled again at the interval"


def test_ten_edits_at_random_moments_each_reach_stripe_within_one_interval(make_sandbox, harness) -> None:
    import random

    seed = random.randrange(1_000_000)
    print(f"seed {seed}")
    rng = random.Random(seed)
    sandbox = make_sandbox(profile="clean", patients=15)
    h = harness(sandbox, **ONLY_PATIENTS)
    h.step()  # the first sync
    ids = sorted(p["id"] for p in admin(sandbox.cliniko_url, "dump")["patients"])
    for n in range(10):
        patient = rng.choice(ids)
        admin(sandbox.cliniko_url, "edit", ids=[patient], fields={"last_name": f"Edited{n}"})
        before = h.clock.now()
        h.step(rng.uniform(1, 59))  # the edit lands anywhere in the poll cycle
        while not _customer_named(sandbox, patient, f"Edited{n}"):
            assert h.clock.now() - before <= timedelta(seconds=60), f"edit {n} not in Stripe after one interval"
            h.step(5)


def _customer_named(sandbox: object, patient: str, last_name: str) -> bool:
    dump = admin(sandbox.stripe_url, "dump")["data"]  # type: ignore[attr-defined]
    found = [c for c in dump if not c["deleted"] and c["metadata"].get("cliniko_patient_id") == patient]
    return len(found) == 1 and found[0]["name"].endswith(last_name)
