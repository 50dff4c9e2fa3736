"""The Sync history tab against a real sandbox sync: runs and records appear when a sync finishes, failures are
listed first, search filters, and Retry failed makes the next sync read those records again."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

import pytest
from PySide6.QtCore import Qt

from clinicsync.app import bootstrap
from clinicsync.labels import plural
from clinicsync.store.models import RetryRecord, SyncEvent, SyncRun
from clinicsync.sync.runner import SyncRunner
from clinicsync.ui.bridge import BridgeListener, RunnerBridge
from clinicsync.ui.context import UiContext
from clinicsync.ui.history_tab import HistoryTab
from clinicsync.ui.models import EventsModel, RunsModel
from tests.support import stats, sync_once

WAIT_MS = 30_000


@pytest.fixture
def make_ui() -> Iterator[Callable[[Mapping[str, str]], UiContext]]:
    """A UiContext like the app's (runner + bridge) for a profile; runners are shut down after the test."""
    made: list[UiContext] = []

    def make(env: Mapping[str, str]) -> UiContext:
        ctx = bootstrap(env)
        bridge = RunnerBridge()
        runner = SyncRunner(ctx.paths, ctx.settings, BridgeListener(bridge))
        ui = UiContext(app=ctx, runner=runner, bridge=bridge, tray_available=False)
        made.append(ui)
        return ui

    yield make
    for ui in made:
        assert ui.runner.shutdown(10)


def make_tab(qtbot, ui: UiContext, **kwargs) -> HistoryTab:
    tab = HistoryTab(ui, **kwargs)
    qtbot.addWidget(tab)
    tab.resize(1280, 800)
    tab.show()
    return tab


def sync(qtbot, ui: UiContext, trigger: str = "manual") -> None:
    with qtbot.waitSignal(ui.bridge.job_finished, timeout=WAIT_MS):
        assert ui.sync_now(trigger=trigger) is not None


def shown(tab: HistoryTab, column: int) -> list[str]:
    model = tab.events_view.model()
    return [model.index(row, column).data() for row in range(model.rowCount())]


def test_a_finished_sync_appears_with_its_counts_and_failures_first(qtbot, make_sandbox, env_for, make_ui):
    sandbox = make_sandbox(profile="hostile", patients=40)
    ui = make_ui(env_for(sandbox))
    tab = make_tab(qtbot, ui)
    assert tab.runs_model.rowCount() == 0
    assert "No syncs yet" in tab.summary.text()

    sync(qtbot, ui)

    assert tab.runs_model.rowCount() == 1
    run = tab.selected_run()
    # The hostile seed has records Stripe cannot take (invalid emails among them); the rest are created.
    assert run is not None and run.failed >= 3 and run.created + run.failed == 40
    failures = run.failed
    runs = tab.runs_model
    failed_column = RunsModel.columns.index("Failed")
    assert runs.index(0, failed_column).data() == str(failures)
    assert runs.index(0, RunsModel.OUTCOME_COLUMN).data() == "Needs attention"
    actions = shown(tab, EventsModel.ACTION)
    assert actions[:failures] == ["Failed"] * failures
    assert set(actions[failures:]) == {"Created"} and len(actions) == 40
    messages = shown(tab, EventsModel.MESSAGE)[:failures]
    assert sum("not a valid email" in m for m in messages) >= 3
    assert tab.retry_button.isEnabled() and tab.retry_button.text() == f"Retry failed ({failures})"
    assert f"{failures} failed" in tab.summary.text()


def test_retry_failed_queues_the_records_and_the_next_sync_reads_them_again(qtbot, make_sandbox, env_for, make_ui):
    sandbox = make_sandbox(profile="hostile", patients=40)
    ui = make_ui(env_for(sandbox))
    tab = make_tab(qtbot, ui)
    sync(qtbot, ui)
    failed_ids = {e.source_id for e in SyncEvent.select().where(SyncEvent.action == "failed")}
    assert len(failed_ids) >= 3

    # Paused first, so the queued records can be inspected before a sync consumes them.
    ui.app.settings.set("sync.paused", True)
    qtbot.mouseClick(tab.retry_button, Qt.MouseButton.LeftButton)
    assert {r.source_id for r in RetryRecord.select()} == failed_ids
    assert "paused" in tab.events_status.text()
    assert not tab.retry_button.isEnabled()

    ui.app.settings.set("sync.paused", False)
    reads_before = stats(sandbox.cliniko_url)["by_endpoint"]
    sync(qtbot, ui, trigger="retry")

    retry_run = SyncRun.select().order_by(SyncRun.id.desc()).first()
    assert retry_run.trigger == "retry"
    retried = {e.source_id: e.action for e in SyncEvent.select().where(SyncEvent.run == retry_run.id)}
    assert retried == dict.fromkeys(failed_ids, "failed")  # read again by id; still invalid at the source
    reads_after = stats(sandbox.cliniko_url)["by_endpoint"]
    by_id = sum(n for endpoint, n in reads_after.items() if endpoint.startswith("GET /v1/patients/"))
    by_id -= sum(n for endpoint, n in reads_before.items() if endpoint.startswith("GET /v1/patients/"))
    assert by_id >= len(failed_ids)
    assert RetryRecord.select().count() == 0  # consumed by the run that read them
    # The tab followed the new run and shows its rows.
    assert tab.selected_run().id == retry_run.id
    assert shown(tab, EventsModel.ACTION) == ["Failed"] * len(failed_ids)
    assert tab.runs_model.index(0, 2).data() == "Retry failed"


def test_clicking_retry_starts_a_sync_that_the_tab_then_shows(qtbot, make_sandbox, env_for, make_ui):
    sandbox = make_sandbox(profile="hostile", patients=30)
    ui = make_ui(env_for(sandbox))
    tab = make_tab(qtbot, ui)
    sync(qtbot, ui)
    failures = tab.selected_run().failed
    with qtbot.waitSignal(ui.bridge.job_finished, timeout=WAIT_MS):
        qtbot.mouseClick(tab.retry_button, Qt.MouseButton.LeftButton)
        assert f"Retrying {plural(failures, 'record')}…" in tab.events_status.text()
    assert tab.runs_model.rowCount() == 2
    assert tab.selected_run().trigger == "retry" and tab.selected_run().failed == failures


def test_the_tab_keeps_an_older_selected_run_when_a_new_one_lands(qtbot, make_sandbox, env_for, make_ui):
    sandbox = make_sandbox(profile="clean", patients=12)
    ui = make_ui(env_for(sandbox))
    tab = make_tab(qtbot, ui)
    sync(qtbot, ui)
    sync(qtbot, ui)
    assert tab.runs_model.rowCount() == 2 and tab.selected_run().id == 2  # followed the newest
    tab.runs_view.selectRow(1)
    assert tab.selected_run().id == 1 and len(shown(tab, EventsModel.NAME)) == 12

    sync(qtbot, ui)

    assert tab.runs_model.rowCount() == 3
    assert tab.selected_run().id == 1 and len(shown(tab, EventsModel.NAME)) == 12
    assert "Latest:" in tab.summary.text()


def test_refresh_picks_up_a_sync_run_outside_the_window(qtbot, make_sandbox, env_for, make_ui):
    sandbox = make_sandbox(profile="clean", patients=5)
    env = env_for(sandbox)
    ui = make_ui(env)
    tab = make_tab(qtbot, ui)
    sync_once(env, trigger="cli")  # e.g. `clinicsync sync --once` in a terminal
    tab.refresh()
    assert tab.runs_model.rowCount() == 1 and tab.selected_run().trigger == "cli"
    assert tab.runs_model.index(0, 2).data() == "Command line"
    assert len(shown(tab, EventsModel.NAME)) == 5


def test_search_filters_the_selected_run_and_optionally_every_run(qtbot, make_sandbox, env_for, make_ui):
    sandbox = make_sandbox(profile="hostile", patients=30)
    ui = make_ui(env_for(sandbox))
    tab = make_tab(qtbot, ui)
    sync(qtbot, ui)
    failures = tab.selected_run().failed
    with qtbot.waitSignal(ui.bridge.job_finished, timeout=WAIT_MS):  # a second run holding the failures again
        assert tab.retry_failed() == failures
    first = SyncEvent.select().where(SyncEvent.action == "failed").order_by(SyncEvent.id).first()
    created = SyncEvent.select().where(SyncEvent.action == "created").first()

    qtbot.keyClicks(tab.search, first.source_id)
    qtbot.waitUntil(lambda: shown(tab, EventsModel.SOURCE) == [first.source_id])
    assert tab.events_view.isColumnHidden(EventsModel.RUN)
    assert tab.events_status.text() == f"1 record matches “{first.source_id}” in run #{tab.selected_run().id}"

    tab.all_runs.setChecked(True)
    qtbot.waitUntil(lambda: len(shown(tab, EventsModel.SOURCE)) == 2)  # the first run's row and the retry's
    assert not tab.events_view.isColumnHidden(EventsModel.RUN)

    tab.search.setText(created.stripe_id)
    qtbot.waitUntil(lambda: shown(tab, EventsModel.STRIPE) == [created.stripe_id])

    tab.search.setText("Nobody Byte-This-Name")  # nothing matches: it says so, rather than an empty table
    qtbot.waitUntil(lambda: shown(tab, EventsModel.NAME) == [])
    assert tab.events_status.text() == "No records match “Nobody Byte-This-Name” in every run."

    tab.search.clear()
    tab.all_runs.setChecked(False)
    qtbot.waitUntil(lambda: len(shown(tab, EventsModel.SOURCE)) == failures)


def test_the_tab_pages_through_a_long_run(qtbot, make_sandbox, env_for, make_ui):
    sandbox = make_sandbox(profile="clean", patients=130)
    ui = make_ui(env_for(sandbox))
    tab = make_tab(qtbot, ui, page_size=50)
    sync(qtbot, ui)
    assert tab.events_model.loaded == 50 and "50 of 130 records shown" in tab.events_status.text()
    tab.events_view.scrollToBottom()
    qtbot.waitUntil(lambda: tab.events_model.loaded > 50)
    assert f"{tab.events_model.loaded} of 130 records shown" in tab.events_status.text() or (
        tab.events_model.loaded == 130 and "130 records" in tab.events_status.text()
    )


def test_in_the_real_window_sync_now_updates_the_history_tab(qtbot, make_sandbox, env_for):
    from clinicsync.ui.main import build_app

    sandbox = make_sandbox(profile="hard", patients=30)
    gui = build_app(env_for(sandbox), tray_available=False, confirm_quit=lambda *_: True)
    try:
        tab = gui.window.tab("history")
        assert isinstance(tab, HistoryTab)
        with qtbot.waitSignal(gui.ui.bridge.job_finished, timeout=WAIT_MS):
            gui.sync_now()
        gui.window.show_tab("history")
        run = tab.selected_run()
        assert run is not None and run.trigger == "manual" and run.outcome in ("ok", "attention")
        assert tab.runs_model.index(0, 4).data() == (f"{run.created:,}" if run.created else "–")
        written = (run.created, run.linked, run.updated, run.skipped, run.waiting, run.failed, run.review)
        assert len(shown(tab, EventsModel.NAME)) == sum(written)
    finally:
        assert gui.shutdown(15)


def test_after_a_profile_switch_refresh_shows_the_new_profiles_history(qtbot, make_sandbox, env_for, make_ui):
    from clinicsync.ui.first_run import switch_in_place

    first, second = make_sandbox(profile="clean", patients=3), make_sandbox(profile="clean", patients=7)
    ui = make_ui(env_for(first, "first"))
    tab = make_tab(qtbot, ui)
    sync(qtbot, ui)
    sync(qtbot, ui)
    assert tab.runs_model.rowCount() == 2
    second_env = env_for(second, "second")
    switch_in_place(ui, second_env, second)  # what the first-run sandbox trial does to the running app
    sync(qtbot, ui)

    tab.refresh()

    assert tab.runs_model.rowCount() == 1  # only the new profile's run, not the old profile's two
    assert tab.selected_run().created == 7 and len(shown(tab, EventsModel.NAME)) == 7
