"""The tray: the status line and icon in every state (pure functions), the menu rebuilt when it opens, pause from
the menu, and the notifications (the alerts: a message only when a person must act, never twice for one
situation)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from clinicsync.sync.engine import RunResult
from clinicsync.sync.runner import Job, JobOutcome
from clinicsync.ui import icons
from clinicsync.ui.background import wait_for_background
from clinicsync.ui.notifications import Notice
from clinicsync.ui.status import ConnectionProblem, Progress, StatusSnapshot
from clinicsync.ui.tray import ATTENTION, ICON_OF_STATE, IDLE, PAUSED, SYNCING, icon_state, status_line
from tests.ui.conftest import WAIT_MS

AEST = timezone(timedelta(hours=10))
NOW = datetime(2026, 11, 22, 15, 0, tzinfo=AEST)
STREAM = "cliniko.patients"


@pytest.mark.parametrize(
    ("snapshot", "line", "icon"),
    [
        (StatusSnapshot(), "Not synced yet", IDLE),
        (
            StatusSnapshot(last_sync=NOW.replace(hour=10, minute=42), never_synced=False),
            "Last good sync finished 10:42",
            IDLE,
        ),
        (
            StatusSnapshot(last_sync=datetime(2026, 3, 3, 9, 5, tzinfo=AEST), never_synced=False),
            "Last good sync finished 3 Mar 09:05",
            IDLE,
        ),
        (
            StatusSnapshot(
                last_sync=NOW.replace(hour=10, minute=42), next_sync=NOW.replace(hour=10, minute=57), never_synced=False
            ),
            "Last good sync finished 10:42, next check 10:57",
            IDLE,
        ),
        (StatusSnapshot(next_sync=NOW.replace(hour=10, minute=57)), "Not synced yet, next check 10:57", IDLE),
        (StatusSnapshot(never_synced=False), "No sync has finished well yet", IDLE),
        (StatusSnapshot(syncing=True, progress=Progress(STREAM, 140, 500, "")), "Syncing patients 140/500", SYNCING),
        (StatusSnapshot(syncing=True, progress=Progress(STREAM, 140, None, "")), "Syncing patients 140", SYNCING),
        (StatusSnapshot(syncing=True, progress=Progress(STREAM, 0, None, "Reading")), "Syncing patients…", SYNCING),
        (StatusSnapshot(syncing=True), "Syncing…", SYNCING),
        # A sync running outranks everything; pause outranks attention (the person chose it and knows).
        (
            StatusSnapshot(syncing=True, paused=True, review_items=2, progress=Progress(STREAM, 1, 2, "")),
            "Syncing patients 1/2",
            SYNCING,
        ),
        (StatusSnapshot(paused=True), "Sync paused", PAUSED),
        (StatusSnapshot(paused=True, review_items=2), "Sync paused", PAUSED),
        (StatusSnapshot(review_items=2), "Needs attention: 2 records to review", ATTENTION),
        (StatusSnapshot(review_items=1), "Needs attention: 1 record to review", ATTENTION),
        (StatusSnapshot(failed_records=3), "Needs attention: 3 records failed", ATTENTION),
        (StatusSnapshot(problem=ConnectionProblem("auth", "401")), "Needs attention: a key was refused", ATTENTION),
        (
            StatusSnapshot(problem=ConnectionProblem("unreachable", "timeout"), review_items=4),
            "Needs attention: can't reach Cliniko or Stripe",
            ATTENTION,
        ),
    ],
)
def test_status_line_and_icon_in_each_state(snapshot: StatusSnapshot, line: str, icon: str) -> None:
    assert status_line(snapshot, NOW) == line
    assert icon_state(snapshot) == icon


# --- the real tray controller -------------------------------------------------------------------------------
def test_menu_is_rebuilt_when_it_opens_and_pause_from_the_menu_persists(build_gui, offline_env) -> None:
    gui = build_gui(offline_env, tray=True)
    tray = gui.tray
    assert tray is not None
    assert tray.menu_texts() == ["Not synced yet", "Sync now", "Pause syncing", "Open ClinicSync", "Quit"]
    assert not tray.menu.actions()[0].isEnabled()  # the status line is information, not a button
    assert tray.state == IDLE

    tray.action("Pause syncing").trigger()
    assert gui.ui.app.settings.lookup("sync.paused").source == "stored"
    assert gui.ui.app.settings.get("sync.paused") is True
    tray.menu.aboutToShow.emit()  # what Qt does each time the menu opens
    assert tray.menu_texts()[0] == "Sync paused"
    assert tray.state == PAUSED and tray.icon.icon().cacheKey() == icons.icon(icons.TRAY_PAUSED).cacheKey()
    assert tray.action("Pause syncing").isChecked()
    assert not tray.action("Sync now").isEnabled()
    # Every trigger honours it: the runner refuses the job too.
    assert gui.ui.sync_now() is None

    tray.action("Pause syncing").trigger()
    tray.menu.aboutToShow.emit()
    assert tray.action("Sync now").isEnabled() and tray.state == IDLE


def test_every_tray_state_has_an_icon_of_its_own() -> None:
    assert len(set(ICON_OF_STATE.values())) == len(ICON_OF_STATE) == 4
    for name in ICON_OF_STATE.values():
        assert not icons.icon(name).isNull()


def test_menu_while_syncing_offers_cancel_and_shows_progress(build_gui, offline_env) -> None:
    gui = build_gui(offline_env, tray=True)
    job = Job(1, "manual")
    gui.ui.bridge.job_started.emit(job)  # as the runner's bridge would, without a sync
    gui.ui.bridge.job_progress.emit(job, STREAM, 140, 500, "")
    gui.tray.menu.aboutToShow.emit()
    assert gui.tray.menu_texts()[:2] == ["Syncing patients 140/500", "Cancel sync"]
    assert gui.tray.state == SYNCING
    gui.tray.refresh()  # a timer does this every second while syncing
    assert gui.tray.icon.toolTip() == "ClinicSync — Syncing patients 140/500"
    gui.ui.bridge.job_finished.emit(JobOutcome(job, failure_kind="auth", message="Stripe said 401"))
    gui.tray.menu.aboutToShow.emit()
    assert gui.tray.menu_texts()[:2] == ["Needs attention: a key was refused", "Sync now"]
    assert gui.tray.state == ATTENTION


def test_open_from_the_tray_brings_the_window_back(build_gui, offline_env, qtbot) -> None:
    gui = build_gui(offline_env, tray=True)
    gui.window.hide()
    gui.tray.action("Open ClinicSync").trigger()
    assert gui.window.isVisible()


def test_the_tray_stops_asking_for_attention_once_every_review_item_is_resolved(qtbot, sandbox_gui) -> None:
    gui, _ = sandbox_gui(tray=True, env={"CLINICSYNC_SYNC_EMAIL_MATCH": "review"}, profile="hard", patients=20)
    with qtbot.waitSignal(gui.ui.bridge.job_finished, timeout=WAIT_MS):
        gui.sync_now()
    qtbot.waitUntil(lambda: gui.tray.icon.toolTip() == "ClinicSync — Needs attention: 2 records to review")
    assert gui.tray.state == ATTENTION
    review = gui.window.show_tab("review")
    try:
        while review.model.rows:
            review.items_view.selectRow(0)
            review.resolve("ignore")
        # No sync ran since: the decisions alone must clear the tray (icon and tooltip), not the next sync.
        assert gui.tray.state == IDLE
        assert gui.tray.icon.toolTip().startswith("ClinicSync — Last good sync finished ")
    finally:
        assert wait_for_background(), "a candidate look-up outlived the test"


def test_retry_failed_in_history_refreshes_the_status(qtbot, build_gui, offline_env) -> None:
    gui = build_gui(offline_env, tray=True)
    with qtbot.waitSignal(gui.tracker.changed, timeout=1_000):
        gui.window.tab("history").retry_requested.emit(1, 3)  # as HistoryTab.retry_failed does after queueing


# --- notifications: the alerts, announced -----------------------------------------------------------------------
def outcome(*results: RunResult, failure: str | None = None, message: str = "", trigger: str = "manual"):
    return JobOutcome(Job(1, trigger), results=results, failure_kind=failure, message=message)


def run(outcome_: str = "ok", stop: str | None = None, message: str = "", **counts: int) -> RunResult:
    return RunResult(1, STREAM, outcome_, counts, message=message, stop_kind=stop)


def finish(gui, *outcomes: JobOutcome) -> list[Notice]:
    """Report these jobs as finished (as the runner's bridge does); returns what was announced meanwhile."""
    before = len(gui.notifier.shown)
    for finished in outcomes:
        gui.ui.bridge.job_finished.emit(finished)
    return gui.notifier.shown[before:]


def test_routine_success_and_a_blip_are_never_announced(build_gui, offline_env) -> None:
    gui = build_gui(offline_env)
    assert finish(gui, outcome(run(created=500)), outcome(run(unchanged=500))) == []
    assert finish(gui, outcome(run("cancelled", created=3)), outcome(failure="locked", message="another")) == []
    down = outcome(failure="unreachable", message="Cliniko could not be reached")
    assert finish(gui, down, down, outcome(run())) == [], "an outage shorter than the threshold is not news"
    failed = outcome(run("failed", message="Stripe 500s"))
    assert finish(gui, failed, failed, outcome(run())) == [], "a stream failing twice is not an hour of failures"


def test_a_refused_key_is_announced_once_and_again_only_after_it_was_fixed(build_gui, offline_env) -> None:
    gui = build_gui(offline_env)
    refused = outcome(failure="auth", message="Stripe refused the key (401)")
    (notice,) = finish(gui, refused, refused, refused)  # a key that stays broken: once, not on every run
    assert notice.tab == "connections" and notice.critical and "401" in notice.message
    assert finish(gui, outcome(run())) == []  # fixed: the alert clears, silently
    assert [n.key for n in finish(gui, refused)] == [notice.key], "broken again: news again"


def test_a_live_sync_waiting_for_approval_is_announced(build_gui, offline_env) -> None:
    gui = build_gui(offline_env)
    (notice,) = finish(gui, outcome(run("needs_approval", created=40)))
    assert notice.title == "Approve the first live sync" and "approve" in notice.message


def test_a_full_disk_is_announced_at_once_and_shown_in_the_tray(qtbot, build_gui, offline_env) -> None:
    message = "ClinicSync could not save its records (/home/pm/data): the disk is full. Free some space…"
    gui = build_gui(offline_env, tray=True)
    (notice,) = finish(gui, outcome(run("failed", stop="storage", message=message)))
    assert notice.critical and notice.key == "storage" and notice.tab == "overview"
    assert "disk is full" in notice.message
    gui.tray.menu.aboutToShow.emit()
    assert gui.tray.menu_texts()[0] == "Needs attention: can't save its records"
    assert gui.tray.state == ATTENTION


def test_alerts_recorded_elsewhere_are_announced_and_listed_and_turning_notifications_off_holds_them(
    build_gui, offline_env
) -> None:
    from clinicsync.sync import alerts

    gui = build_gui(offline_env, tray=True)
    # As the background service records them: straight into the database, no job finishing in this window.
    gui.ui.app.settings.set("alerts.notify", False)
    alerts.report_reconciliation(gui.ui.app.settings, 2, "2 customers are missing in Stripe.", datetime.now(AEST))
    gui.notifier.announce()
    assert gui.notifier.shown == []
    gui.ui.app.settings.set("alerts.notify", True)
    gui.notifier.announce()
    (notice,) = gui.notifier.shown
    assert (notice.title, notice.tab) == ("Stripe and Cliniko disagree", "reconciliation")
    gui.notifier.announce()
    assert len(gui.notifier.shown) == 1, "at most once a day while it lasts"
    overview = gui.window.show_tab("overview")
    overview.refresh()
    assert overview.alerts_label.isVisible()
    assert "Stripe and Cliniko disagree: 2 customers are missing in Stripe." in overview.alerts_label.text()
    gui.tray.menu.aboutToShow.emit()
    assert gui.tray.menu_texts()[0] == "Needs attention: Stripe and Cliniko disagree"


def test_a_reconciliation_in_between_does_not_make_a_lasting_alert_news_again(build_gui, offline_env) -> None:
    gui = build_gui(offline_env)
    refused = outcome(failure="auth", message="401")
    assert len(finish(gui, refused)) == 1
    for kind in ("reconcile", "reconcile_fix"):  # jobs of the Reconciliation tab: no sync results
        assert finish(gui, JobOutcome(Job(2, "manual", kind=kind)), refused) == []


def test_after_shutdown_nothing_is_announced(build_gui, offline_env) -> None:
    from clinicsync.sync import alerts

    gui = build_gui(offline_env)
    assert gui.shutdown(15)
    alerts.report_reconciliation(gui.ui.app.settings, 1, "1 difference.", datetime.now(AEST))
    gui.notifier.announce()  # as its timer would, after the window is gone
    gui.ui.bridge.job_finished.emit(outcome(failure="auth", message="401"))
    assert gui.notifier.shown == []
