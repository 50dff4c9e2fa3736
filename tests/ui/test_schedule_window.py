"""The window and the schedule: it attaches to a running `clinicsync serve` (no second scheduler; its Sync now and
Pause reach the service), and without one it runs the schedule itself, through the app's runner and bridge.

The service runs in its own process; these wait for it with deadlines (polling the database or the sandbox),
never sleeping to prove an order. The window's own schedule is driven by a ManualClock.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta

import pytest
from PySide6.QtCore import Qt

from clinicsync.store import queries
from clinicsync.sync import alerts, requests
from clinicsync.sync.clock import ManualClock
from clinicsync.sync.instance import scheduler_running
from clinicsync.ui.main import TRAY_HINT, TRAY_HINT_SCHEDULED, tray_hint
from clinicsync.ui.schedule import ATTACHED, HOSTING, next_run_text
from clinicsync.ui.status import local_time
from clinicsync.ui.tray import status_line
from tests.integration.test_serve import ONLY_PATIENTS, rows, wait_until
from tests.reliability.helpers import live_customers
from tests.support import profile_env
from tests.ui.conftest import DUMMY_KEYS, WAIT_MS

STREAM = "cliniko.patients"
NO_SCHEDULED_PATIENTS = {"CLINICSYNC_SCHEDULE_CLINIKO_PATIENTS_ENABLED": "false"}

if os.name == "nt":  # pragma: no cover - the service is stopped with SIGTERM
    pytestmark = pytest.mark.skip("SIGTERM is a POSIX signal")


def test_a_window_opened_while_serve_runs_attaches_and_its_sync_now_makes_the_service_sync(
    qtbot, make_sandbox, build_gui, tmp_path
) -> None:
    from tests.integration.test_serve import Service

    sandbox = make_sandbox(profile="clean", patients=10)
    home = tmp_path / "profile"
    # Nothing on schedule: whatever reaches Stripe was asked for by the window.
    env = profile_env(home, sandbox.env(), **ONLY_PATIENTS, **NO_SCHEDULED_PATIENTS)
    service = Service(env, tmp_path)
    try:
        wait_until(
            lambda: rows(home, "SELECT holder FROM scheduler_state WHERE state != 'stopped'") == [("serve",)],
            60,
            "the service taking the schedule",
            home,
        )
        gui = build_gui(env, schedule=True)
        assert gui.ui.schedule.mode == ATTACHED
        overview = gui.window.show_tab("overview")
        assert overview.schedule_line.isVisible()
        assert overview.schedule_line.text().startswith("Attached to ClinicSync's background service")
        assert live_customers(sandbox.stripe_url) == []

        qtbot.mouseClick(overview.sync_button, Qt.MouseButton.LeftButton)
        assert overview.status_line.text() == "Asked the background service to sync now."
        qtbot.waitUntil(lambda: len(live_customers(sandbox.stripe_url)) == 10, timeout=WAIT_MS)
        # The service answered, and the window shows its answer in words.
        qtbot.waitUntil(lambda: "answered" in overview.schedule_line.text(), timeout=WAIT_MS)
        assert "Cliniko patients: ok" in overview.schedule_line.text()
        assert "cliniko.patients" not in overview.schedule_line.text()
        # The service synced, not the window: one manual run, and the window's runner was never given a job.
        assert rows(home, "SELECT COUNT(*) FROM sync_run WHERE trigger = 'manual'") == [(1,)]
        assert gui.ui.runner._last_id == 0

        # The service's alerts are rows of the same database: the attached window lists and announces them.
        assert not gui.notifier._records_alerts_itself(), "the service records the alerts, not the window"
        alerts.report_reconciliation(gui.ui.app.settings, 1, "1 customer is missing in Stripe.", datetime.now(UTC))
        qtbot.waitUntil(overview.alerts_label.isVisible, timeout=WAIT_MS)  # at the service's next heartbeat
        assert "Stripe and Cliniko disagree" in overview.alerts_label.text()
        gui.notifier.announce()
        assert [notice.title for notice in gui.notifier.shown] == ["Stripe and Cliniko disagree"]

        # Pause from the window reaches the service (stored, and answered by it).
        gui.tracker.set_paused(True)
        paused = "SELECT result FROM service_request WHERE kind = 'pause' AND status = 'done'"
        assert wait_until(lambda: rows(home, paused), 30, "the service pausing", home) == [("Paused.",)]
        assert gui.tracker.paused()
        assert overview.sync_button.isEnabled() is False
    finally:
        assert service.stop() == 0, service.errors.read_text()
    # The service is gone: the window takes the schedule over, with its own runner as the app's.
    qtbot.waitUntil(lambda: gui.ui.schedule.mode == HOSTING, timeout=WAIT_MS)
    assert gui.ui.runner is gui.ui.schedule.host.runner and scheduler_running(gui.ui.app.paths)
    assert rows(home, "SELECT holder FROM scheduler_state WHERE state != 'stopped'") == [("window",)]
    overview.refresh()
    assert not overview.schedule_line.isVisibleTo(overview), "no longer attached; nothing is on a schedule here"


def test_review_decisions_in_an_attached_window_are_carried_out_by_the_service(
    qtbot, make_sandbox, build_gui, tmp_path
) -> None:
    from tests.integration.test_serve import Service

    sandbox = make_sandbox(profile="hard", patients=20)
    home = tmp_path / "profile"
    env = profile_env(
        home, sandbox.env(), CLINICSYNC_SYNC_EMAIL_MATCH="review", **ONLY_PATIENTS, **NO_SCHEDULED_PATIENTS
    )
    service = Service(env, tmp_path)
    try:
        serving = "SELECT holder FROM scheduler_state WHERE state != 'stopped'"
        wait_until(lambda: rows(home, serving) == [("serve",)], 60, "the service taking the schedule", home)
        gui = build_gui(env, schedule=True)
        assert gui.ui.attached
        review = gui.window.show_tab("review")
        assert review.model.rows == []
        review.sync_button.click()  # the service syncs; the tab re-reads when it has finished
        qtbot.waitUntil(lambda: len(review.model.rows) == 2, timeout=WAIT_MS)
        olivia = next(row for row in review.model.rows if row.display_name == "Olivia Nguyen")
        review.items_view.selectRow(review.model.rows.index(olivia))
        review.create_button.click()  # stored now; carried out by the sync it asks the service for
        review.sync_button.click()
        created = "SELECT COUNT(*) FROM record_link WHERE source_id = ? AND stripe_id IS NOT NULL"
        wait_until(lambda: rows(home, created, olivia.source_id) == [(1,)], 60, "the service creating Olivia", home)
        assert gui.ui.runner._last_id == 0, "the window synced nothing itself"
        manual = "SELECT COUNT(*) FROM sync_run WHERE trigger = 'manual' AND stream = 'cliniko.patients'"
        assert rows(home, manual) == [(2,)]
    finally:
        assert service.stop() == 0, service.errors.read_text()


def test_without_a_service_the_window_runs_the_schedule_through_its_own_runner(
    qtbot, make_sandbox, env_for, build_gui
) -> None:
    sandbox = make_sandbox(profile="clean", patients=5)
    clock = ManualClock(datetime(2026, 3, 2, 9, 0, tzinfo=UTC))
    gui = build_gui(env_for(sandbox, CLINICSYNC_SCHEDULE_INTERVAL_SECONDS="60"), schedule=True, clock=clock)
    schedule = gui.ui.schedule
    assert schedule.mode == HOSTING and scheduler_running(gui.ui.app.paths)
    assert schedule.runner is gui.ui.runner  # one worker: the schedule's runs report through the app's bridge

    # Never synced: the first scheduled run is due at once; it reaches the window through the bridge.
    with qtbot.waitSignal(gui.ui.bridge.job_finished, timeout=WAIT_MS) as first:
        schedule.tick()
    assert first.args[0].job.trigger == "schedule"
    assert len(live_customers(sandbox.stripe_url)) == 5
    qtbot.waitUntil(lambda: not schedule.host.busy(), timeout=WAIT_MS)
    schedule.tick()
    overview = gui.window.show_tab("overview")
    overview.refresh()
    # The next run is an interval after the last one ended, by the schedule's clock.
    assert schedule.next_runs()[STREAM] == clock.now() + timedelta(seconds=60)
    assert overview.cards[STREAM].labels["next_run"].text() == "next sync in 60 s"
    assert overview.schedule_line.text() == "Syncing on schedule from this window."

    # Nothing is due before the interval has passed; then exactly one run.
    clock.advance(30)
    schedule.tick()
    assert not schedule.host.busy()
    clock.advance(31)
    with qtbot.waitSignal(gui.ui.bridge.job_finished, timeout=WAIT_MS) as second:
        schedule.tick()
    assert second.args[0].job.trigger == "schedule"
    assert [f[1] for f in schedule.host.scheduler.fired] == ["schedule", "schedule"]

    # The tray says when the last good sync finished, and when the next check is.
    qtbot.waitUntil(lambda: not schedule.host.busy(), timeout=WAIT_MS)
    schedule.tick()
    snapshot = gui.tracker.snapshot()
    assert snapshot.next_sync == clock.now() + timedelta(seconds=60)
    finished = queries.last_good_sync_at()
    assert finished is not None and snapshot.last_sync == local_time(finished)
    # (The runs' own times are the real clock's; the schedule's are the test's: compare each with its own.)
    line = status_line(snapshot, snapshot.last_sync)
    assert line.startswith(f"Last good sync finished {snapshot.last_sync:%H:%M}, next check ")
    assert status_line(snapshot, snapshot.next_sync).endswith(f", next check {snapshot.next_sync:%H:%M}")


def test_closing_to_the_tray_says_it_keeps_syncing_only_when_a_schedule_is_on(qtbot, build_gui, home) -> None:
    # Paused from the start: the schedule is on (its jobs exist) but asks for no run (the keys are dummies).
    env = profile_env(home, DUMMY_KEYS, CLINICSYNC_SYNC_PAUSED="true")
    clock = ManualClock(datetime(2026, 3, 2, 9, 0, tzinfo=UTC))
    gui = build_gui(env, tray=True, schedule=True, clock=clock)
    said: list[str] = []
    gui.tray.show_message = lambda title, message, critical=False: said.append(message)
    assert gui.ui.schedule.schedule_on()
    gui.window.show()
    gui.window.close()
    assert said == [TRAY_HINT_SCHEDULED] and "keeps syncing on schedule" in said[0]

    # Nothing on a schedule any more: the hint (shown once ever) would say it syncs when asked.
    gui.ui.app.settings.set("schedule.cliniko.patients.enabled", False)
    gui.ui.app.settings.set("schedule.cliniko.products.enabled", False)
    gui.ui.app.settings.set("schedule.cliniko.invoices.enabled", False)
    assert not gui.ui.schedule.schedule_on()
    assert tray_hint(gui.ui.schedule.schedule_on()) == TRAY_HINT


def test_pausing_in_the_window_holds_the_schedule(qtbot, build_gui, offline_env) -> None:
    clock = ManualClock(datetime(2026, 3, 2, 9, 0, tzinfo=UTC))
    gui = build_gui(offline_env, schedule=True, clock=clock)
    gui.tracker.set_paused(True)
    gui.ui.schedule.tick()
    overview = gui.window.show_tab("overview")
    overview.refresh()
    assert overview.cards[STREAM].labels["next_run"].text() == "paused"
    assert requests.ServiceRequest.select().count() == 0  # hosting: nothing is asked of a service


def test_the_window_running_the_schedule_receives_cal_com_notices(qtbot, build_gui, offline_env) -> None:
    from tests.integration.test_calcom_webhook import free_port

    port, secret = free_port(), "sandbox-webhook-secret-not-real-0004"
    env = {
        **offline_env,
        "CLINICSYNC_CALCOM_WEBHOOK_ENABLED": "true",
        "CLINICSYNC_CALCOM_WEBHOOK_PORT": str(port),
        "CLINICSYNC_CALCOM_WEBHOOK_SECRET": secret,
    }
    gui = build_gui(env, schedule=True, clock=ManualClock(datetime(2026, 3, 2, 9, 0, tzinfo=UTC)))
    gui.tracker.set_paused(True)  # no sync with the dummy keys; the listener runs regardless
    gui.ui.schedule.tick()
    listener = gui.ui.schedule.host.webhook.listener
    assert listener is not None and listener.url == f"http://127.0.0.1:{port}/calcom/webhook"
    box = gui.window.show_tab("connections").webhook
    box.refresh()
    assert box.state_label.text().startswith(f"Listening at {listener.url}")
    assert box.secret_edit.text() == secret and not box.new_secret_button.isEnabled(), "given at start: kept"
    box.test_button.click()
    qtbot.waitUntil(box.test_button.isEnabled, timeout=WAIT_MS)
    assert box.result_label.text() == "✓ ClinicSync received the signed test notice."


def test_next_run_words() -> None:
    now = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
    runs = {STREAM: now + timedelta(seconds=40), "cliniko.products": None}
    assert next_run_text(STREAM, runs, now) == "next sync in 40 s"
    assert next_run_text(STREAM, {STREAM: now + timedelta(minutes=5)}, now) == "next sync in 5 min"
    assert next_run_text(STREAM, runs, now, paused=True) == "paused"
    assert next_run_text(STREAM, runs, now, waiting_for_approval=True) == "waiting for approval"
    assert next_run_text("cliniko.products", runs, now, syncing=True) == "syncing now"
    assert next_run_text("cliniko.products", runs, now) == "waiting for approval"
    assert next_run_text("cliniko.invoices", runs, now) == "not on a schedule (Settings)"
    assert next_run_text(STREAM, None, now) == "when you press Sync now"


def test_a_three_hour_sleep_gives_the_window_one_catch_up_run(qtbot, make_sandbox, env_for, build_gui) -> None:
    from clinicsync.sync.scheduler import WAKE_SETTLE_S

    sandbox = make_sandbox(profile="clean", patients=2)
    clock = ManualClock(datetime(2026, 3, 2, 9, 0, tzinfo=UTC))
    gui = build_gui(env_for(sandbox), schedule=True, clock=clock)
    schedule = gui.ui.schedule

    def step(seconds: float = 0) -> None:
        clock.advance(seconds)
        schedule.tick()
        qtbot.waitUntil(lambda: not schedule.host.busy(), timeout=WAIT_MS)
        schedule.tick()

    step()
    assert len(schedule.host.scheduler.fired) == 1
    clock.sleep_for(3 * 3600)  # the laptop's lid is closed: the wall clock jumps, the monotonic clock does not
    step()
    assert len(schedule.host.scheduler.fired) == 1, "the network gets a moment to come back first"
    step(WAKE_SETTLE_S)
    for _ in range(5):
        step(1)
    fired = schedule.host.scheduler.fired
    assert [(kind, streams) for _, kind, streams, _ in fired] == [("schedule", (STREAM,))] * 2, "one catch-up run"


def test_a_scheduled_reconciliations_history_row_is_named_in_words() -> None:
    from clinicsync.sync.reconcile_hook import RECONCILE
    from clinicsync.ui.models import stream_label

    assert stream_label(RECONCILE) == "Full comparison"  # not "Reconcile reconcile"
    assert stream_label(STREAM) == "Cliniko patients"
