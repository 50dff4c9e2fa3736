"""The Overview tab: the words of each stream card, the SANDBOX / TEST MODE badge, and real syncs against the
in-process sandbox: counts after Sync now, progress and Cancel, the broken-connection banner, and a GUI thread
that keeps answering during a 500-patient sync."""

from __future__ import annotations

import itertools
import time
from datetime import datetime, timedelta

from PySide6.QtCore import Qt, QTimer
from PySide6.QtGui import QTextDocument

from clinicsync import labels
from clinicsync.store import queries
from clinicsync.ui import status
from clinicsync.ui.overview_tab import OverviewTab, counts_text, finished_text, stream_view
from clinicsync.ui.status import (
    LIVE,
    SANDBOX,
    TEST_MODE,
    ConnectionProblem,
    Progress,
    current_mode,
    is_loopback,
    mode_label,
)
from tests.support import admin, executed_writes, profile_env
from tests.ui.conftest import WAIT_MS, wait_for_progress
from tests.ui.connections_support import memory_keyring

STREAM = "cliniko.patients"
# Noon today: "5 minutes ago" must still be today whenever the suite runs (it failed just after midnight).
NOW = datetime.now().astimezone().replace(hour=12, minute=0, second=0, microsecond=0)


def row(**fields: object) -> dict:
    values: dict = {
        "stream": STREAM,
        "last_outcome": "ok",
        "last_run_at": (NOW - timedelta(minutes=5)).astimezone(tz=None).replace(tzinfo=None),
        "last_counts": {"created": 3, "linked": 1, "updated": 0, "unchanged": 10, "failed": 0, "review": 0},
        "queued": 0,
        "review": 0,
    }
    values.update(fields)
    return values


def utc_naive(moment: datetime) -> datetime:
    from datetime import UTC

    return moment.astimezone(UTC).replace(tzinfo=None)


# --- pure ----------------------------------------------------------------------------------------------------
def test_stream_card_words() -> None:
    never = stream_view(STREAM, None, None, NOW)
    assert (never.state, never.last_run, never.next_run) == ("Never synced", "never", "manual (press Sync now)")

    done = stream_view(STREAM, row(last_run_at=utc_naive(NOW - timedelta(minutes=5))), None, NOW)
    assert done.state == "Up to date"
    assert done.counts == "3 created, 1 linked, 10 unchanged"
    assert done.last_run.endswith("today")
    assert (done.queued, done.review, done.errors) == ("none", "none", "none")

    busy = stream_view(
        STREAM,
        row(last_outcome="attention", queued=2, review=1, last_counts={"failed": 4}),
        Progress(STREAM, 1, 2, ""),
        NOW,
    )
    assert busy.state == "Syncing…"
    assert busy.queued == "2 changes waiting to be sent to Stripe"
    assert busy.review == "1 record needs your decision"
    assert busy.errors == "4 records failed in the last run"
    assert stream_view(STREAM, row(last_outcome="needs_approval"), None, NOW).state == "Waiting for your approval"
    assert counts_text({}) == "no changes"


def test_invoices_no_payment_paid_are_counted_in_a_practice_managers_words() -> None:
    """Invoice linking counts an invoice with no Stripe payment to link as skipped; the card, the history and the
    command line all say "not paid through Stripe" (labels.count_name), and other streams still say skipped."""
    from clinicsync.ui.models import RunsModel, action_label

    counts = {"linked": 4, "skipped": 3, "review": 1}
    card = stream_view("cliniko.invoices", row(last_outcome="attention", last_counts=counts), None, NOW)
    assert card.counts == "4 linked, 3 not paid through Stripe, 1 sent to review"
    assert counts_text({"skipped": 2}, STREAM) == "2 skipped"
    assert labels.counts_words(counts, "cliniko.invoices") == "4 linked, 3 not paid through Stripe, 1 review"
    assert action_label("skipped", "cliniko.invoices") == "Not paid through Stripe"
    assert action_label("skipped", STREAM) == "Skipped" and action_label("linked", "cliniko.invoices") == "Linked"
    assert labels.plan_action_label("skipped", "payment_intent", "cliniko.invoices") == (
        "Not paid through Stripe (nothing sent)"
    )
    at = utc_naive(NOW)
    run = queries.RunRow(7, "cliniko.invoices", "cli", False, at, at, "ok", 0, 4, 0, 0, 3, 0, 1, "", 1)
    skipped = next(column for column, name in RunsModel.COUNT_COLUMNS.items() if name == "skipped")
    tooltip = RunsModel().cell(run, skipped, Qt.ItemDataRole.ToolTipRole)
    assert tooltip.splitlines()[0] == "3 not paid through Stripe"


def test_invoices_held_back_by_a_queued_change_are_waiting_not_unpaid() -> None:
    """An invoice held back because an earlier change to it is still queued for Stripe has its own counter: the
    card, the History column, its tooltip and a record's row say it waits for that change, not "not paid"."""
    from clinicsync.ui.models import RunsModel, action_label

    counts = {"linked": 4, "skipped": 0, "waiting": 2}
    card = stream_view("cliniko.invoices", row(last_outcome="ok", last_counts=counts), None, NOW)
    assert card.counts == "4 linked, 2 waiting for an earlier change to reach Stripe"
    assert action_label("waiting", "cliniko.invoices") == "Waiting for an earlier change to reach Stripe"
    at = utc_naive(NOW)
    run = queries.RunRow(8, "cliniko.invoices", "cli", False, at, at, "ok", 0, 4, 0, 0, 0, 0, 0, "", 1, waiting=2)
    waiting = next(column for column, name in RunsModel.COUNT_COLUMNS.items() if name == "waiting")
    model = RunsModel()
    assert RunsModel.columns[waiting] == "Waiting" and model.cell(run, waiting, Qt.ItemDataRole.DisplayRole) == "2"
    tooltip = model.cell(run, waiting, Qt.ItemDataRole.ToolTipRole)
    assert tooltip.splitlines()[0] == "2 waiting for an earlier change to reach Stripe"


def test_a_sync_that_never_started_says_why_in_plain_words() -> None:
    from clinicsync.sync.runner import PAUSED_MESSAGE, Job, JobOutcome

    assert finished_text(JobOutcome(Job(1, "manual"), failure_kind="cancelled", message=PAUSED_MESSAGE)) == (
        "Not started: syncing is paused."
    )
    unreachable = JobOutcome(Job(2, "manual"), failure_kind="unreachable", message="Stripe could not be reached.")
    assert finished_text(unreachable) == "The sync did not run: Stripe could not be reached."


def test_mode_label() -> None:
    assert mode_label(sandbox=True, livemode=True) == SANDBOX
    assert mode_label(sandbox=False, livemode=False) == TEST_MODE
    assert mode_label(sandbox=False, livemode=True) == LIVE
    assert mode_label(sandbox=False, livemode=None) is None
    assert is_loopback("http://127.0.0.1:5000") and is_loopback("http://localhost:1")
    assert not is_loopback("https://api.stripe.com") and not is_loopback("")


def test_test_mode_badge_from_the_key_before_any_sync(build_gui, offline_env) -> None:
    gui = build_gui(offline_env)
    assert current_mode(gui.ui, []) is None  # unknown until the key is read (run_gui reads it at start)
    gui.tracker.note_stripe_key("sk_test_abc")
    overview = gui.window.tab("overview")
    assert overview.mode_badge.text() == TEST_MODE and not overview.mode_badge.isHidden()
    gui.tracker.note_stripe_key("rk_live_abc")
    assert overview.mode_badge.text() == LIVE


def test_saving_or_removing_the_stripe_key_updates_the_badge_at_once(build_gui, home, monkeypatch) -> None:
    """The badge follows a key saved in Connections without a restart or a sync, even over a stored TEST pair."""
    stored_test_pair = row(pair_id=1, stripe_livemode=False, source_name="Clinic", stripe_name="Acct")
    monkeypatch.setattr(queries, "stream_status", lambda: [dict(stored_test_pair)])
    env = profile_env(home, {"CLINICSYNC_CONTACT_EMAIL": "t@example.com", "CLINICSYNC_CLINIKO_API_KEY": "dummy"})
    with memory_keyring():
        gui = build_gui(env)
        overview = gui.window.tab("overview")
        stripe = gui.window.tab("connections").stripe
        assert overview.mode_badge.text() == TEST_MODE  # from the stored pair: no key read yet

        stripe.key_edit.setText("sk_live_sandbox_" + "b" * 24)
        stripe.save()
        assert overview.mode_badge.text() == LIVE and not overview.mode_badge.isHidden()

        stripe.key_edit.setText("sk_test_sandbox_" + "a" * 24)
        stripe.save()
        assert overview.mode_badge.text() == TEST_MODE

        stripe.key_edit.setText("rk_live_sandbox_" + "c" * 24)
        stripe.save()
        assert overview.mode_badge.text() == LIVE
        gui.window.tab("connections").cliniko.save()  # another service's settings: the Stripe mode stands
        assert overview.mode_badge.text() == LIVE

        stripe.confirm_remove = lambda _parent, _service: True
        stripe.remove_key()
        assert gui.tracker.key_livemode is None  # no key: the stored pair says
        assert overview.mode_badge.text() == TEST_MODE


def shown(label) -> str:
    """What a label displays, whichever text format it renders in."""
    if label.textFormat() == Qt.TextFormat.PlainText:
        return label.text()
    document = QTextDocument()
    document.setHtml(label.text())
    return document.toPlainText()


def test_account_names_and_problem_messages_show_as_written_not_as_markup(build_gui, offline_env, monkeypatch) -> None:
    names = row(
        pair_id=1, stripe_livemode=False, source_name="Smith <Allied> & Sons <h1>Physio</h1>", stripe_name="<i>Acct"
    )
    monkeypatch.setattr(queries, "stream_status", lambda: [dict(names)])
    gui = build_gui(offline_env)
    overview = gui.window.tab("overview")
    gui.tracker.problem = ConnectionProblem("auth", "Stripe said <b>no</b> & <h1>go away</h1>")
    overview.refresh()
    assert shown(overview.accounts_label) == "Smith <Allied> & Sons <h1>Physio</h1> → <i>Acct"
    assert "<b>Smith &lt;Allied&gt; &amp; Sons" in overview.accounts_label.text()  # still bold, escaped inside
    assert shown(overview.banner_text) == "A key was refused. Stripe said <b>no</b> & <h1>go away</h1>"


# --- against the sandbox -------------------------------------------------------------------------------------
def test_sync_now_updates_the_cards_and_says_sandbox(qtbot, sandbox_gui) -> None:
    gui, _ = sandbox_gui(profile="clean", patients=40)
    overview: OverviewTab = gui.window.tab("overview")
    gui.window.show()
    assert overview.mode_badge.text() == SANDBOX  # loopback addresses: never a real account
    assert overview.cards[STREAM].labels["state"].text() == "Never synced"
    with qtbot.waitSignal(gui.ui.bridge.job_finished, timeout=WAIT_MS):
        qtbot.mouseClick(overview.sync_button, Qt.MouseButton.LeftButton)
        assert not overview.sync_button.isEnabled()  # one click, one sync
    qtbot.waitUntil(lambda: overview.cards[STREAM].labels["counts"].text() == "40 created")
    card = overview.cards[STREAM].labels
    assert card["state"].text() == "Up to date"
    assert card["last_run"].text().endswith("today")
    assert overview.message_label.text() == "Patients done: 40 created"
    assert "→" in overview.accounts_label.text()  # the clinic and the Stripe account it syncs to
    assert overview.sync_button.isEnabled() and overview.progress_bar.isHidden()


def test_progress_cancel_and_a_responsive_gui_during_a_500_patient_sync(qtbot, sandbox_gui) -> None:
    gui, sandbox = sandbox_gui(profile="clean", patients=500)
    overview: OverviewTab = gui.window.tab("overview")
    gui.window.show()
    # The GUI thread's heartbeat: a 20 ms timer; the longest gap between its ticks is the longest stall.
    ticks: list[float] = []
    heartbeat = QTimer()
    heartbeat.setInterval(20)
    heartbeat.timeout.connect(lambda: ticks.append(time.monotonic()))
    heartbeat.start()
    steps: list[str] = []
    gui.ui.bridge.job_progress.connect(lambda *_: steps.append(overview.step_label.text()))
    with qtbot.waitSignal(gui.ui.bridge.job_finished, timeout=WAIT_MS) as finished:
        overview.sync_now()
    heartbeat.stop()
    outcome = finished.args[0]
    assert outcome.results[0].counts["created"] == 500
    gaps = [b - a for a, b in itertools.pairwise(ticks)]
    assert len(ticks) > 10 and max(gaps) < 1.0, f"GUI thread stalled {max(gaps):.3f} s"
    assert "Patients: 500 of 500" in steps  # the progress text followed the records
    assert any(step.startswith("Patients: Reading") for step in steps)

    # Cancel: slow Stripe down, change every patient, start, cancel after the first progress.
    admin(sandbox.stripe_url, "config", latency_ms=20)
    admin(sandbox.cliniko_url, "edit", count=500)
    gui.ui.app.settings.set("stripe.workers", 1)
    overview.sync_now()
    wait_for_progress(qtbot, gui)
    assert overview.cancel_button.isVisible() and overview.progress_bar.isVisible()
    assert overview.sync_button.text() == "Syncing…" and not overview.sync_button.isEnabled()
    assert overview.cards[STREAM].labels["state"].text() == "Syncing…"
    with qtbot.waitSignal(gui.ui.bridge.job_finished, timeout=WAIT_MS) as finished:
        qtbot.mouseClick(overview.cancel_button, Qt.MouseButton.LeftButton)
    assert finished.args[0].results[0].outcome == "cancelled"
    assert overview.cards[STREAM].labels["state"].text() == "Cancelled"
    assert overview.cancel_button.isHidden()


def test_a_refused_key_shows_the_banner_which_opens_connections(qtbot, sandbox_gui) -> None:
    gui, sandbox = sandbox_gui(profile="clean", patients=3, env={"CLINICSYNC_STRIPE_API_KEY": "sk_test_sandbox_wrong"})
    overview: OverviewTab = gui.window.tab("overview")
    gui.window.show()
    assert overview.banner.isHidden()
    with qtbot.waitSignal(gui.ui.bridge.job_finished, timeout=WAIT_MS):
        overview.sync_now()
    assert overview.banner.isVisible()
    assert "A key was refused." in overview.banner_text.text() and "401" in overview.banner_text.text()
    assert executed_writes(sandbox.stripe_url) == 0
    qtbot.mouseClick(overview.connections_button, Qt.MouseButton.LeftButton)
    assert gui.window.current_tab_name() == "connections"


# --- state that tells the truth ------------------------------------------------------------------------------
def test_up_to_date_only_when_nothing_waits_for_a_person_or_for_stripe() -> None:
    assert stream_view(STREAM, row(), None, NOW).state == "Up to date"
    assert stream_view(STREAM, row(review=2), None, NOW).state == "2 records need your decision"
    assert stream_view(STREAM, row(review=1), None, NOW).state == "1 record needs your decision"
    assert stream_view(STREAM, row(queued=3), None, NOW).state == "3 changes waiting to be sent"
    failed = row(last_outcome="attention", last_counts={"failed": 1})
    assert stream_view(STREAM, failed, None, NOW).state == "1 record could not be sent"
    assert stream_view(STREAM, row(last_outcome="failed", review=2), None, NOW).state == "Failed"


def test_the_card_of_a_running_sync_shows_no_result_yet() -> None:
    running = row(last_outcome="running", last_counts={"created": 0})
    view = stream_view(STREAM, running, Progress(STREAM, 5, 10, ""), NOW)
    assert view.state == "Syncing…" and view.counts == "in progress…" and view.last_run.endswith("(in progress)")


def test_one_status_line_is_replaced_while_a_sync_runs(build_gui, offline_env) -> None:
    from PySide6.QtWidgets import QLabel

    from clinicsync.sync.engine import RunResult
    from clinicsync.sync.runner import Job, JobOutcome

    gui = build_gui(offline_env)
    overview: OverviewTab = gui.window.show_tab("overview")

    def lines() -> list[str]:
        """The visible words between the Sync now button and the stream cards."""
        cards = set(overview.cards.values())
        shown = []
        for label in overview.findChildren(QLabel):
            inside_card = any(card.isAncestorOf(label) for card in cards)
            strips = (overview.banner, overview.paused_strip)
            in_header = label in (overview.accounts_label, overview.mode_badge) or any(
                strip.isAncestorOf(label) for strip in strips
            )
            if label.isVisible() and label.text() and not inside_card and not in_header:
                shown.append(label.text())
        return shown

    gui.tracker.set_paused(True)
    overview.sync_now()
    assert lines() == [status.PAUSED_MESSAGE]
    gui.tracker.set_paused(False)
    bridge, job = gui.ui.bridge, Job(1, "manual")
    bridge.job_started.emit(job)
    assert lines() == ["Starting…"], "the new sync's words replace the old message"
    bridge.job_progress.emit(job, STREAM, 10, 100, "")
    assert lines() == ["Patients: 10 of 100"]
    overview.cancel()
    bridge.job_progress.emit(job, STREAM, 11, 100, "")
    assert lines() == ["Cancelling at the next safe point…"], "a later progress step does not hide that it stops"
    assert not overview.cancel_button.isEnabled()
    overview.refresh()  # the tracker refreshes the cards on any change: Cancel stays pressed
    assert not overview.cancel_button.isEnabled()
    bridge.job_finished.emit(JobOutcome(job, results=(RunResult(1, STREAM, "cancelled", {"created": 11}),)))
    assert lines() == ["Patients cancelled: 11 created"]
    second = Job(2, "manual")
    bridge.job_started.emit(second)
    bridge.job_progress.emit(second, STREAM, 1, 100, "Reading patient records")
    assert lines() == ["Patients: Reading patient records"]
    assert overview.cancel_button.isEnabled(), "a new sync can be cancelled again"
    bridge.job_finished.emit(JobOutcome(second))


def test_an_interrupted_run_is_told_in_plain_words_in_overview_and_history() -> None:
    from clinicsync.store.queries import RunRow
    from clinicsync.ui.models import outcome_label, severity_color

    card = stream_view(STREAM, row(last_outcome="interrupted"), None, NOW)
    assert card.state == "Interrupted (resumes on the next sync)"
    run = RunRow(1, STREAM, "cli", False, utc_naive(NOW), utc_naive(NOW), "interrupted", 3, 0, 0, 0, 0, 0, 0, "", 1)
    assert outcome_label(run) == "Interrupted"
    assert severity_color("interrupted") == severity_color("cancelled"), "nobody must act: the next sync resumes"


def test_a_sync_with_invoice_linking_says_which_invoices_were_not_paid_through_stripe(qtbot, sandbox_gui) -> None:
    # Invoice linking is on by default; the sandbox's invoices have no Stripe payments to link.
    invoices = "cliniko.invoices"
    gui, sandbox = sandbox_gui(profile="clean", patients=5, env={"CLINICSYNC_STREAMS_CLINIKO_INVOICES_ENABLED": "true"})
    count = len(admin(sandbox.cliniko_url, "dump")["invoices"])
    assert count > 0
    overview: OverviewTab = gui.window.tab("overview")
    gui.window.show()
    with qtbot.waitSignal(gui.ui.bridge.job_finished, timeout=WAIT_MS):
        qtbot.mouseClick(overview.sync_button, Qt.MouseButton.LeftButton)
    words = f"{count} not paid through Stripe"
    qtbot.waitUntil(lambda: overview.cards[invoices].labels["counts"].text() == words)
    assert overview.message_label.text() == f"Patients done: 5 created; Invoices done: {words}"
    history = gui.window.show_tab("history")
    qtbot.waitUntil(lambda: history.selected_run() is not None and history.selected_run().stream == invoices)
    assert history.summary.text().endswith(f"({words})")


def test_a_clinic_without_cal_com_sees_no_cal_com_cards(build_gui, offline_env) -> None:
    def shown(env: dict[str, str]) -> set[str]:
        overview = build_gui(env).window.show_tab("overview")
        return {stream for stream, card in overview.cards.items() if not card.isHidden()}

    assert shown(offline_env) == {"cliniko.patients", "cliniko.products", "cliniko.invoices"}
    with_calcom = {**offline_env, "CLINICSYNC_CALCOM_API_KEY": "cal_sandbox_not_a_real_key"}
    assert shown(with_calcom) == {
        "cliniko.patients",
        "cliniko.products",
        "cliniko.invoices",
        "calcom.event_types",
        "calcom.bookings",
        "calcom.booking_payments",
        "calcom.reference",
    }
