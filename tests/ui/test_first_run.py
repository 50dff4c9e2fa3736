"""The first-run welcome: "Connect your accounts", or a sandbox clinic in its own profile that reaches a completed
first sync."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import httpx
import pytest
import stripe
from PySide6.QtWidgets import QDialog

from clinicsync.paths import AppPaths
from clinicsync.ui.first_run import (
    SANDBOX_DIR_NAME,
    SANDBOX_MARKER,
    FirstRunDialog,
    build_sandbox_ui,
    needs_first_run,
    outcome_summary,
    reset_sandbox_home,
    sandbox_home,
)
from tests.support import profile_env
from tests.ui.connections_support import build_ui, close_ui, memory_keyring


@pytest.fixture
def keyring_backend():
    with memory_keyring() as backend:
        yield backend


@pytest.fixture
def real_profile(tmp_path, keyring_backend):
    """A new user's profile: no keys anywhere."""
    env = profile_env(tmp_path / "clinic", {})
    ui = build_ui(env)
    yield ui
    close_ui(ui)


def test_a_new_user_sees_the_welcome_and_a_configured_one_does_not(real_profile, make_sandbox, env_for):
    assert needs_first_run(real_profile.app)
    configured = build_ui(env_for(make_sandbox(profile="clean", patients=1)))
    try:
        assert not needs_first_run(configured.app)
    finally:
        close_ui(configured)


def test_connect_your_accounts_returns_that_choice(qtbot, real_profile):
    dialog = FirstRunDialog(real_profile)
    qtbot.addWidget(dialog)
    with qtbot.waitSignal(dialog.connect_requested, timeout=1000):
        dialog.connect_button.click()
    assert dialog.action == "connect" and dialog.result() == QDialog.DialogCode.Accepted


def test_sandbox_trial_runs_in_its_own_profile_and_reaches_a_completed_first_sync(qtbot, real_profile, keyring_backend):
    real_home = Path(real_profile.app.env["CLINICSYNC_HOME"])
    finished_on_bridge = []
    contexts = []

    def switch(env, sandbox):
        new = build_sandbox_ui(real_profile, env, sandbox)
        new.bridge.job_finished.connect(finished_on_bridge.append)
        contexts.append(new)
        return new

    dialog = FirstRunDialog(
        real_profile,
        on_switch_profile=switch,
        sandbox_patients=60,  # enough for the hard profile's variety; few products keep the test quick
        sandbox_products=4,
        extra_env={"CLINICSYNC_RETRY_MAX_ATTEMPTS": "8"},
    )
    qtbot.addWidget(dialog)
    try:
        with qtbot.waitSignal(dialog.first_sync_finished, timeout=30_000) as finished:
            dialog.sandbox_button.click()
            assert not dialog.sandbox_button.isEnabled(), "one trial at a time"
        outcome = finished.args[0]
        assert outcome.failure_kind is None, outcome.message
        result = next(r for r in outcome.results if r.stream == "cliniko.patients")
        assert result.counts["created"] > 40 and result.counts["linked"] >= 1  # the hard profile's match
        assert finished_on_bridge == [outcome], "the sync ran on the new context's runner and bridge"
        assert "First sync finished" in dialog.status_label.text() and dialog.done_button.isVisibleTo(dialog)

        (sandbox_ui,) = contexts
        assert dialog.sandbox_ui is sandbox_ui and sandbox_ui.sandbox is dialog.sandbox
        assert sandbox_ui.app.paths.home == real_home.resolve() / SANDBOX_DIR_NAME
        assert sandbox_ui.app.env["CLINICSYNC_STRIPE_API_KEY"] == dialog.sandbox.stripe_key
        assert keyring_backend.passwords == {}, "sandbox keys travel in the profile's environment, never the keyring"
        with sqlite3.connect(real_profile.app.paths.db_path) as db:
            assert db.execute("SELECT COUNT(*) FROM sync_run").fetchone() == (0,), "the real profile is untouched"
        dialog.done_button.click()
        assert dialog.result() == QDialog.DialogCode.Accepted and dialog.action == "sandbox"
    finally:
        for context in contexts:
            close_ui(context)
        if dialog.sandbox is not None:
            dialog.sandbox.stop()


def test_without_a_hook_the_dialog_returns_the_sandbox_env_for_the_core(qtbot, tmp_path, keyring_backend):
    base = profile_env(tmp_path / "clinic", {}, CLINICSYNC_SYNC_EMAIL_MATCH="review")
    ui = build_ui(base)
    dialog = FirstRunDialog(ui.app, sandbox_patients=5, sandbox_products=2)
    qtbot.addWidget(dialog)
    try:
        with qtbot.waitSignal(dialog.accepted, timeout=20_000):
            dialog.sandbox_button.click()
        env = dialog.sandbox_env
        assert dialog.action == "sandbox" and env is not None and dialog.sandbox is not None
        assert env["CLINICSYNC_HOME"] == str((tmp_path / "clinic").resolve() / SANDBOX_DIR_NAME)
        assert env["CLINICSYNC_STRIPE_API_KEY"] == dialog.sandbox.stripe_key
        assert "CLINICSYNC_SYNC_EMAIL_MATCH" not in env, "the real profile's settings don't leak into the sandbox"
        assert (Path(env["CLINICSYNC_HOME"]) / SANDBOX_MARKER).is_file()
    finally:
        close_ui(ui)
        if dialog.sandbox is not None:
            dialog.sandbox.stop()


def test_the_first_sync_summary_names_what_each_stream_made():
    from clinicsync.sync.engine import RunResult
    from clinicsync.sync.runner import Job, JobOutcome

    results = (
        RunResult(1, "cliniko.patients", "ok", {"created": 180, "linked": 12}),
        RunResult(2, "cliniko.products", "ok", {"created": 1, "linked": 3}),
        RunResult(3, "cliniko.invoices", "ok", {"linked": 40, "skipped": 5}),
    )
    summary = outcome_summary(JobOutcome(Job(1, "first_run"), results=results))
    assert summary.startswith("First sync finished: 180 customers created, 1 product created, 55 linked")
    nothing = outcome_summary(JobOutcome(Job(2, "first_run"), results=(RunResult(4, "cliniko.patients", "ok", {}),)))
    assert "0 customers created" in nothing


def test_sandbox_home_location(tmp_path):
    assert sandbox_home({"CLINICSYNC_HOME": str(tmp_path)}) == tmp_path.resolve() / "sandbox-profile"
    assert sandbox_home({}) == AppPaths.resolve({}).data_dir / "sandbox-profile"


def test_reset_only_empties_a_marked_sandbox_profile(tmp_path):
    home = tmp_path / "sandbox-profile"
    reset_sandbox_home(home)
    (home / "data").mkdir()
    (home / "data" / "old.sqlite3").write_text("old trial")
    reset_sandbox_home(home)
    assert sorted(p.name for p in home.iterdir()) == [SANDBOX_MARKER]

    someone_elses = tmp_path / "other" / "sandbox-profile"
    someone_elses.mkdir(parents=True)
    (someone_elses / "precious.txt").write_text("keep me")
    with pytest.raises(RuntimeError, match="not a ClinicSync sandbox profile"):
        reset_sandbox_home(someone_elses)
    assert (someone_elses / "precious.txt").exists()


def test_the_app_core_hands_a_new_user_to_the_welcome_and_the_trial_syncs(qtbot, tmp_path, keyring_backend):
    """Through the real composition root: build_app → start_if_needed → sandbox → first sync (in-place switch)."""
    from clinicsync.ui.first_run import start_if_needed
    from clinicsync.ui.main import build_app

    gui = build_app(profile_env(tmp_path / "clinic", {}), tray_available=False)
    qtbot.addWidget(gui.window)
    real_db = gui.ui.app.paths.db_path
    dialog = start_if_needed(gui.ui, gui.window, sandbox_products=4)
    assert dialog is not None and dialog.isVisible()
    try:
        with qtbot.waitSignal(dialog.first_sync_finished, timeout=30_000) as finished:
            dialog.sandbox_button.click()
        assert finished.args[0].failure_kind is None
        assert gui.ui.sandbox is dialog.sandbox and gui.ui.app.paths.home.name == SANDBOX_DIR_NAME
        assert gui.ui.app.paths.db_path != real_db
        assert start_if_needed(gui.ui, gui.window) is None, "the sandbox profile has keys: no second welcome"
    finally:
        gui.shutdown()
        if dialog.sandbox is not None:
            dialog.sandbox.stop()


def test_the_welcome_grows_to_show_its_progress_and_its_result(qtbot, real_profile):
    from PySide6.QtWidgets import QApplication

    from clinicsync.sync.engine import RunResult
    from clinicsync.sync.runner import Job, JobOutcome
    from tests.ui.layout_support import fit_problems, shipped_font

    with shipped_font(QApplication.instance()):
        dialog = FirstRunDialog(real_profile)
        qtbot.addWidget(dialog)
        dialog.show()
        qtbot.waitExposed(dialog)
        start = dialog.height()

        def fits() -> list[str]:
            for _ in range(3):
                QApplication.processEvents()
            return fit_problems(dialog)

        assert fits() == []
        long_step = "Reading existing Stripe customers, then the clinic's patients, a page at a time " * 3
        dialog._show_busy(long_step)  # what choosing the sandbox shows while it starts
        assert dialog.progress.isVisibleTo(dialog) and fits() == []
        assert dialog.height() > start, "it grew for the progress bar and the longer words"
        job = Job(1, "first_run")
        dialog._job = job
        result = RunResult(1, "cliniko.patients", "attention", {"created": 180, "linked": 12, "review": 3, "failed": 2})
        dialog._on_finished(JobOutcome(job, results=(result,)))
        assert "180 customers created" in dialog.status_label.text() and dialog.done_button.isVisibleTo(dialog)
        assert not dialog.progress.isVisibleTo(dialog) and fits() == []


# --- the trial stays --------------------------------------------------------------------------------------------


def stripe_customer_count(env) -> int:
    """Counted the way anyone would: the stripe SDK against the sandbox's Stripe, at the address the profile uses."""
    client = stripe.StripeClient(
        env["CLINICSYNC_STRIPE_API_KEY"], base_addresses={"api": env["CLINICSYNC_STRIPE_BASE_URL"]}
    )
    return sum(1 for _ in client.v1.customers.list({"limit": 100}).auto_paging_iter())


def created(outcome) -> int:
    return sum(result.counts.get("created", 0) for result in outcome.results)


def sync_runs(db_path: Path) -> int:
    with sqlite3.connect(db_path) as db:
        return db.execute("SELECT COUNT(*) FROM sync_run").fetchone()[0]


def test_relaunch_after_quitting_a_sandbox_trial_returns_to_it_with_history_intact(
    qtbot, tmp_path, keyring_backend, build_gui
):
    from clinicsync.ui.first_run import start_if_needed

    base = profile_env(tmp_path / "clinic", {})
    gui = build_gui(base)
    dialog = start_if_needed(gui.ui, gui.window, on_switch_profile=gui.switch_profile, sandbox_products=4)
    assert dialog is not None
    qtbot.addWidget(dialog)
    with qtbot.waitSignal(dialog.first_sync_finished, timeout=60_000) as finished:
        dialog.sandbox_button.click()
    first = finished.args[0]
    assert first.failure_kind is None and created(first) > 40, first.message
    trial_env = dict(gui.ui.app.env)
    customers = stripe_customer_count(trial_env)
    patients = next(result for result in first.results if result.stream == "cliniko.patients")
    assert customers >= patients.counts["created"]
    dialog.done_button.click()
    review = gui.window.show_tab("review")  # a review decision made before quitting
    qtbot.waitUntil(lambda: len(review.model.rows) >= 2, timeout=30_000)
    waiting = len(review.model.rows)
    review.items_view.selectRow(0)
    decided = review.current_item()
    review.ignore_button.click()
    assert gui.shutdown(15)
    with pytest.raises(httpx.TransportError):  # quitting stopped (and saved) the sandbox
        httpx.get(trial_env["CLINICSYNC_STRIPE_BASE_URL"] + "/v1/customers", timeout=2)

    again = build_gui(base)  # the app started again, from the same place
    assert again.ui.app.paths.home.name == SANDBOX_DIR_NAME and again.ui.sandbox is not None
    assert again.trial_problem is None
    assert start_if_needed(again.ui, again.window, on_switch_profile=again.switch_profile) is None, "no welcome"
    env = again.ui.app.env
    assert env["CLINICSYNC_STRIPE_BASE_URL"] == again.ui.sandbox.stripe_url, "the profile follows the new ports"
    assert env["CLINICSYNC_CLINIKO_BASE_URL"] == again.ui.sandbox.cliniko_url
    assert env["CLINICSYNC_STRIPE_API_KEY"].startswith("sk_test_sandbox")
    history = again.window.show_tab("history")
    assert history.runs_model.rowCount() == len(first.results), "one row per stream the first sync ran"
    assert history.selected_run().trigger == "first_run"
    assert stripe_customer_count(env) == customers, "the sandbox's Stripe kept its customers"
    review = again.window.show_tab("review")
    qtbot.waitUntil(lambda: len(review.model.rows) == waiting - 1, timeout=30_000)
    assert decided.id not in {row.id for row in review.model.rows}, "the decision was kept"

    with qtbot.waitSignal(again.ui.bridge.job_finished, timeout=60_000) as second:
        again.sync_now()
    assert second.args[0].failure_kind is None, second.args[0].message
    assert created(second.args[0]) == 0 and stripe_customer_count(env) == customers, "nothing new was created"
    assert keyring_backend.passwords == {}, "sandbox keys are never stored"


def finish_a_trial(qtbot, ui, switch, **options) -> FirstRunDialog:
    dialog = FirstRunDialog(ui, on_switch_profile=switch, sandbox_patients=6, sandbox_products=3, **options)
    qtbot.addWidget(dialog)
    with qtbot.waitSignal(dialog.first_sync_finished, timeout=30_000) as finished:
        dialog.sandbox_button.click()
    assert finished.args[0].failure_kind is None, finished.args[0].message
    return dialog


def test_choosing_the_sandbox_again_offers_to_continue_or_start_over(qtbot, real_profile):
    from tests.ui.test_words import offences

    contexts = []

    def switch(env, sandbox):
        contexts.append(build_sandbox_ui(None, env, sandbox))
        return contexts[-1]

    sandboxes = []
    try:
        first = finish_a_trial(qtbot, real_profile, switch)
        sandboxes.append(first.sandbox)
        trial_db = contexts[-1].app.paths.db_path
        runs, customers = sync_runs(trial_db), stripe_customer_count(first.sandbox_env)
        first.sandbox.stop()
        assert runs >= 1 and customers >= 6

        again = FirstRunDialog(real_profile, on_switch_profile=switch, sandbox_patients=6, sandbox_products=3)
        qtbot.addWidget(again)
        again.sandbox_button.click()
        assert again.sandbox is None, "nothing starts before the person chooses"
        assert again.continue_button.isVisibleTo(again) and again.start_over_button.isVisibleTo(again)
        words = again.status_label.text()
        assert "Continue where you left off" in words and "start over" in words and offences(words) == []
        with qtbot.waitSignal(again.accepted, timeout=30_000):
            again.continue_button.click()
        sandboxes.append(again.sandbox)
        assert again.resumed and again.action == "sandbox" and again._job is None, "no second first sync"
        assert contexts[-1].app.paths.db_path == trial_db and sync_runs(trial_db) == runs, "its history is kept"
        assert stripe_customer_count(again.sandbox_env) == customers, "and its sandbox's data"
        again.sandbox.stop()

        over = FirstRunDialog(real_profile, on_switch_profile=switch, sandbox_patients=6, sandbox_products=3)
        qtbot.addWidget(over)
        over.sandbox_button.click()
        with qtbot.waitSignal(over.first_sync_finished, timeout=30_000):
            over.start_over_button.click()
        sandboxes.append(over.sandbox)
        assert not over.resumed and sync_runs(trial_db) == runs, "started over: only the new trial's first sync"
        with sqlite3.connect(trial_db) as db:
            assert {row[0] for row in db.execute("SELECT trigger FROM sync_run")} == {"first_run"}
    finally:
        for context in contexts:
            close_ui(context)
        for sandbox in sandboxes:
            if sandbox is not None:
                sandbox.stop()


def test_a_trial_whose_saved_sandbox_is_damaged_says_so_and_offers_a_fresh_start(
    qtbot, tmp_path, keyring_backend, build_gui
):
    from clinicsync.ui.first_run import SANDBOX_DATA_DIR, set_trial_active, start_if_needed, start_trial
    from tests.ui.test_words import offences

    base = profile_env(tmp_path / "clinic", {})
    trial = start_trial(base, patients=3, products=2)
    trial.sandbox.stop()
    set_trial_active(base, True)
    (sandbox_home(base) / SANDBOX_DATA_DIR / "cliniko.snapshot").write_bytes(b"\x80\x05not really")

    gui = build_gui(base)
    assert gui.ui.sandbox is None and gui.ui.app.paths.home.name != SANDBOX_DIR_NAME, "stayed on the real profile"
    assert gui.trial_problem and "damaged" in gui.trial_problem
    dialog = start_if_needed(
        gui.ui,
        gui.window,
        on_switch_profile=gui.switch_profile,
        trial_problem=gui.trial_problem,
        sandbox_products=2,
    )
    assert dialog is not None
    qtbot.addWidget(dialog)
    words = dialog.status_label.text()
    assert "Cliniko data" in words and "Start over" in words and offences(words) == []
    assert dialog.start_over_button.isVisibleTo(dialog) and not dialog.continue_button.isVisibleTo(dialog)
    with qtbot.waitSignal(dialog.first_sync_finished, timeout=60_000) as finished:
        dialog.start_over_button.click()
    assert finished.args[0].failure_kind is None and gui.ui.app.paths.home.name == SANDBOX_DIR_NAME


def test_connect_your_own_accounts_leaves_the_trial_and_keeps_it_for_later(qtbot, tmp_path, keyring_backend, build_gui):
    from clinicsync.ui.first_run import start_if_needed, start_trial, trial_exists, trial_is_active

    base = profile_env(tmp_path / "clinic", {})
    start_trial(base, patients=3, products=2).sandbox.stop()  # a trial the person was using when the app last quit
    gui = build_gui(base)
    assert gui.ui.app.paths.home.name == SANDBOX_DIR_NAME
    connections = gui.window.show_tab("connections")
    assert connections.trial_box.isVisibleTo(connections)
    sandbox = gui.ui.sandbox

    connections.trial_box.leave_button.click()

    assert gui.ui.sandbox is None and gui.ui.app.paths.home == (tmp_path / "clinic").resolve()
    assert gui.window.current_tab_name() == "connections" and not connections.trial_box.isVisibleTo(connections)
    with pytest.raises(httpx.TransportError):
        httpx.get(sandbox.stripe_url + "/v1/customers", timeout=2)
    assert trial_exists(base) and not trial_is_active(base), "kept, but no longer where the app starts"
    assert gui.shutdown(15)

    again = build_gui(base)
    assert again.ui.sandbox is None and again.ui.app.paths.home.name != SANDBOX_DIR_NAME
    dialog = start_if_needed(again.ui, again.window, on_switch_profile=again.switch_profile)
    assert dialog is not None
    qtbot.addWidget(dialog)
    dialog.sandbox_button.click()
    assert dialog.continue_button.isVisibleTo(dialog), "the welcome offers to continue the kept trial"
