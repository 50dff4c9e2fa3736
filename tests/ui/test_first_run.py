"""The first-run welcome: "Connect your accounts", or a sandbox clinic in its own profile that reaches a completed
first sync."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from PySide6.QtWidgets import QDialog

from clinicsync.paths import AppPaths
from clinicsync.ui.first_run import (
    SANDBOX_DIR_NAME,
    SANDBOX_MARKER,
    FirstRunDialog,
    build_sandbox_ui,
    needs_first_run,
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

    dialog = FirstRunDialog(real_profile, on_switch_profile=switch, extra_env={"CLINICSYNC_RETRY_MAX_ATTEMPTS": "8"})
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
    dialog = FirstRunDialog(ui.app, sandbox_patients=5)
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
    dialog = start_if_needed(gui.ui, gui.window)
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
