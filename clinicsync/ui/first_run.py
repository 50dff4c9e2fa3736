"""First run: with no keys set, a short welcome — connect your accounts, or try ClinicSync on a sandbox clinic.

The sandbox trial runs in its OWN profile (a separate CLINICSYNC_HOME), so invented patients never mix with a
real clinic's data, and its keys travel only in that profile's environment mapping (never the keyring).
Switching the running app to that profile means a new AppContext and runner; the UI core owns those, so the
dialog asks for the switch through a hook:

    on_switch_profile(env, sandbox) -> UiContext

`env` is the complete environment of the sandbox profile (pass it to `bootstrap`), `sandbox` the running
emulators (the core stops them at exit). The hook must shut down the old runner before bootstrapping (the
database binding is process-wide), rebuild its tabs on the new context and return it; `build_sandbox_ui`
does the context part. The dialog then starts the first sync on the returned context and shows it finishing.
Without a hook the dialog just returns the choice (`action == "sandbox"`, `sandbox_env`, `sandbox`) and the
core applies it and starts the sync itself. `start_if_needed(ui, window, on_switch_profile=...)` is the one call
the core makes at start; without a hook it falls back to `switch_in_place`.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from PySide6.QtCore import QCoreApplication, Qt, Signal
from PySide6.QtGui import QCloseEvent
from PySide6.QtWidgets import (
    QDialog,
    QHBoxLayout,
    QLabel,
    QLayout,
    QProgressBar,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from clinicsync import labels
from clinicsync.app import AppContext, bootstrap
from clinicsync.connections import has_any_key
from clinicsync.paths import HOME_ENV_VAR, AppPaths
from clinicsync.sandbox.launcher import Sandbox, start_sandbox
from clinicsync.sync.runner import Job, JobOutcome, SyncRunner
from clinicsync.ui.background import Outcome, run_in_background
from clinicsync.ui.bridge import BridgeListener, RunnerBridge
from clinicsync.ui.context import UiContext

SANDBOX_DIR_NAME = "sandbox-profile"
# Only a folder carrying this marker is ever emptied: a CLINICSYNC_HOME typo must not delete someone's files.
SANDBOX_MARKER = ".clinicsync-sandbox-profile"
DEFAULT_PROFILE = "hard"  # the interesting cases: shared emails, existing customers to link, a review item
DEFAULT_PATIENTS = 200

SwitchProfile = Callable[[Mapping[str, str], Sandbox], UiContext]


# --- the sandbox profile (no Qt widgets; unit-testable) -------------------------------------------------------


def sandbox_home(env: Mapping[str, str]) -> Path:
    """`<CLINICSYNC_HOME>/sandbox-profile` when a home is set, else `<user data dir>/sandbox-profile`."""
    home = env.get(HOME_ENV_VAR, "").strip()
    if home:
        return Path(home).expanduser().resolve() / SANDBOX_DIR_NAME
    return AppPaths.resolve(env).data_dir / SANDBOX_DIR_NAME


def reset_sandbox_home(home: Path) -> None:
    """Start every trial from an empty profile: the emulators start fresh too, and links from an earlier trial
    would point at customers that no longer exist."""
    if home.exists():
        if not (home / SANDBOX_MARKER).is_file():
            raise RuntimeError(
                f"{home} already exists and is not a ClinicSync sandbox profile, so ClinicSync will not empty it. "
                "Move it away and try again."
            )
        shutil.rmtree(home)
    home.mkdir(parents=True)
    (home / SANDBOX_MARKER).write_text("ClinicSync sandbox trial profile; deleted and recreated on each trial.\n")


def sandbox_env(
    base_env: Mapping[str, str], sandbox: Sandbox, home: Path, extra: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The sandbox profile's environment: the process environment without any ClinicSync variable (a real key or
    setting must not leak in), plus the sandbox's addresses and keys and the profile's own home."""
    env = {name: value for name, value in base_env.items() if not name.startswith("CLINICSYNC_")}
    env.update(sandbox.env())
    env[HOME_ENV_VAR] = str(home)
    env.update(extra or {})
    return env


@dataclass(frozen=True)
class SandboxTrial:
    sandbox: Sandbox
    env: dict[str, str]


def start_trial(
    base_env: Mapping[str, str],
    *,
    profile: str = DEFAULT_PROFILE,
    patients: int = DEFAULT_PATIENTS,
    extra_env: Mapping[str, str] | None = None,
) -> SandboxTrial:
    """Empty the sandbox profile and start the emulators (on a worker thread: seeding takes a moment)."""
    home = sandbox_home(base_env)
    reset_sandbox_home(home)
    sandbox = start_sandbox(profile=profile, patients=patients)
    return SandboxTrial(sandbox, sandbox_env(base_env, sandbox, home, extra_env))


def build_sandbox_ui(previous: UiContext | None, env: Mapping[str, str], sandbox: Sandbox) -> UiContext:
    """A new UiContext for the sandbox profile, replacing `previous` (whose runner is shut down first: the
    database binding is process-wide, and its worker must not outlive the switch). The caller rebuilds its
    tabs on the result (and sets `status` if it uses a StatusTracker)."""
    if previous is not None:
        previous.runner.shutdown()
    app = bootstrap(dict(env))
    bridge = RunnerBridge()
    runner = SyncRunner(app.paths, app.settings, BridgeListener(bridge))
    tray = previous.tray_available if previous is not None else False
    return UiContext(app=app, runner=runner, bridge=bridge, tray_available=tray, sandbox=sandbox)


def switch_in_place(ui: UiContext, env: Mapping[str, str], sandbox: Sandbox) -> UiContext:
    """The fallback switch when the core passes no hook: re-point the existing UiContext at the sandbox profile.

    Everything that holds `ui` (tabs, tray actions built on `ui.sync_now`) follows it, and the new runner reports
    through the SAME bridge, so every connected screen keeps receiving. Objects that cached the old runner or
    settings (e.g. a StatusTracker) do not follow; a core with its own `on_switch_profile` avoids that. The
    sandbox is stopped when the application quits.
    """
    ui.runner.shutdown()
    ui.app = bootstrap(dict(env))
    ui.runner = SyncRunner(ui.app.paths, ui.app.settings, BridgeListener(ui.bridge))
    ui.sandbox = sandbox
    application = QCoreApplication.instance()
    if application is not None:
        application.aboutToQuit.connect(sandbox.stop)
    return ui


def start_if_needed(
    ui: UiContext, window: QWidget | None = None, *, on_switch_profile: SwitchProfile | None = None
) -> FirstRunDialog | None:
    """What the UI core calls once the window shows: the welcome, when no key is set (else None).

    "Connect your accounts" opens the window's Connections tab; the sandbox trial switches profiles through
    `on_switch_profile` (default: `switch_in_place`) and runs its first sync while the dialog shows progress.
    The dialog is window-modal but does not block, so the bridge keeps delivering meanwhile.
    """
    if not needs_first_run(ui.app):
        return None

    def switch(env: Mapping[str, str], sandbox: Sandbox) -> UiContext:
        if on_switch_profile is not None:
            return on_switch_profile(env, sandbox)
        return switch_in_place(ui, env, sandbox)

    dialog = FirstRunDialog(ui, window, on_switch_profile=switch)
    show_tab = getattr(window, "show_tab", None)
    if callable(show_tab):
        dialog.connect_requested.connect(lambda: show_tab("connections"))
        dialog.first_sync_finished.connect(lambda _outcome: show_tab("overview"))
    dialog.open()
    return dialog


def needs_first_run(app: AppContext) -> bool:
    """Show the welcome when no key is set at all (environment or keyring)."""
    return not has_any_key(app.secrets)


def outcome_summary(outcome: JobOutcome) -> str:
    if outcome.failure_kind:
        return f"The first sync did not finish: {labels.for_gui(outcome.message)}"
    totals: dict[str, int] = {}
    for result in outcome.results:
        for action, count in result.counts.items():
            totals[action] = totals.get(action, 0) + count
    parts = [
        f"{labels.plural(totals.get('created', 0), 'customer')} created",
        f"{totals.get('linked', 0):,} linked to existing ones",
    ]
    if totals.get("review"):
        parts.append(f"{totals['review']:,} left for you to review")
    if totals.get("failed"):
        parts.append(f"{totals['failed']} failed")
    return "First sync finished: " + ", ".join(parts) + "."


# --- the dialog -----------------------------------------------------------------------------------------------


class FirstRunDialog(QDialog):
    """The welcome. `action` says what the person chose: "connect", "sandbox" or None (closed)."""

    connect_requested = Signal()
    sandbox_ready = Signal(object)  # SandboxTrial, once the emulators run (before any profile switch)
    first_sync_finished = Signal(object)  # JobOutcome of the sandbox's first sync

    def __init__(
        self,
        ui_or_app_context: UiContext | AppContext,
        parent: QWidget | None = None,
        *,
        on_switch_profile: SwitchProfile | None = None,
        sandbox_profile: str = DEFAULT_PROFILE,
        sandbox_patients: int = DEFAULT_PATIENTS,
        extra_env: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(parent)
        self._app: AppContext = getattr(ui_or_app_context, "app", ui_or_app_context)  # type: ignore[assignment]
        self._switch = on_switch_profile
        self._profile = sandbox_profile
        self._patients = sandbox_patients
        self._extra_env = dict(extra_env or {})
        self.action: str | None = None
        self.sandbox: Sandbox | None = None
        self.sandbox_env: dict[str, str] | None = None
        self.sandbox_ui: UiContext | None = None
        self.last_outcome: JobOutcome | None = None
        self._job: Job | None = None
        self._started_at = 0.0
        self._closed = False
        self.setWindowTitle("Welcome to ClinicSync")
        self.setMinimumWidth(520)
        self._build()

    def _build(self) -> None:
        title = QLabel("<h2>Welcome to ClinicSync</h2>")
        intro = QLabel(
            "ClinicSync copies your Cliniko patients into Stripe as customers and keeps the two in agreement, "
            "from this computer.\n\nConnect your own accounts, or first try it on an invented sandbox clinic: "
            "it runs on this computer only, in a separate profile, and never touches real data."
        )
        intro.setWordWrap(True)
        self.connect_button = QPushButton("Connect your accounts")
        self.connect_button.setDefault(True)
        self.sandbox_button = QPushButton("Try it with a sandbox clinic")
        self.later_button = QPushButton("Not now")
        self.connect_button.clicked.connect(self.choose_connect)
        self.sandbox_button.clicked.connect(self.choose_sandbox)
        self.later_button.clicked.connect(self.reject)
        choices = QHBoxLayout()
        choices.addWidget(self.connect_button)
        choices.addWidget(self.sandbox_button)
        choices.addStretch(1)
        choices.addWidget(self.later_button)

        self.status_label = QLabel(wordWrap=True, textFormat=Qt.TextFormat.PlainText)
        self.status_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.progress = QProgressBar()
        self.progress.hide()
        self.done_button = QPushButton("Open ClinicSync")
        self.done_button.hide()
        self.done_button.clicked.connect(self.accept)

        layout = QVBoxLayout(self)
        # Never smaller than the content: the words and the progress bar below the buttons come and go.
        layout.setSizeConstraint(QLayout.SizeConstraint.SetMinimumSize)
        layout.addWidget(title)
        layout.addWidget(intro)
        layout.addLayout(choices)
        layout.addWidget(self.status_label)
        layout.addWidget(self.progress)
        layout.addWidget(self.done_button, 0, Qt.AlignmentFlag.AlignRight)

    # --- choices ------------------------------------------------------------------------------------------
    def choose_connect(self) -> None:
        self.action = "connect"
        self.connect_requested.emit()
        self.accept()

    def choose_sandbox(self) -> None:
        self.action = "sandbox"
        self._set_choices_enabled(False)
        self._show_busy(f"Starting the sandbox clinic ({self._patients} invented patients)…")
        base_env, profile, patients, extra = dict(self._app.env), self._profile, self._patients, self._extra_env
        run_in_background(
            lambda: start_trial(base_env, profile=profile, patients=patients, extra_env=extra),
            self._trial_started,
            owner=self,
        )

    def _trial_started(self, outcome: Outcome) -> None:
        if self._closed:  # closed while the sandbox was starting: nobody wants it any more
            if outcome.ok:
                outcome.value.sandbox.stop()
            return
        if not outcome.ok:
            self.action = None
            self._set_choices_enabled(True)
            self.progress.hide()
            self.status_label.setText(f"The sandbox could not start: {labels.for_gui(outcome.error)}")
            self._fit()
            return
        trial: SandboxTrial = outcome.value
        self.sandbox, self.sandbox_env = trial.sandbox, trial.env
        self.sandbox_ready.emit(trial)
        if self._switch is None:
            self.accept()  # the core switches profiles and starts the first sync itself
            return
        self.sandbox_ui = self._switch(trial.env, trial.sandbox)
        self._start_first_sync(self.sandbox_ui)

    def _start_first_sync(self, ui: UiContext) -> None:
        ui.bridge.job_progress.connect(self._on_progress)
        ui.bridge.job_finished.connect(self._on_finished)
        self._started_at = time.monotonic()
        self._job = ui.sync_now("first_run")
        if self._job is None:
            self.status_label.setText("The first sync could not start (syncing is paused, or one is waiting).")
            self.done_button.show()
            self._fit()
            return
        self._show_busy("Syncing the sandbox clinic's patients to its sandbox Stripe account…")

    # --- progress (bridge signals, GUI thread) ----------------------------------------------------------------
    def _on_progress(self, job: Job, stream: str, done: int, total: int | None, step: str) -> None:
        if self._job is None or job.id != self._job.id:
            return
        if total:
            self.progress.setRange(0, total)
            self.progress.setValue(min(done, total))
        if step and self.status_label.text() != f"{step}…":
            self.status_label.setText(f"{step}…")
            self._fit()

    def _on_finished(self, outcome: JobOutcome) -> None:
        if self._job is None or outcome.job.id != self._job.id:
            return
        self.last_outcome = outcome
        seconds = time.monotonic() - self._started_at
        self.progress.hide()
        self.status_label.setText(f"{outcome_summary(outcome)} ({seconds:.0f} s)")
        self.done_button.show()
        self.done_button.setDefault(True)
        self._fit()
        self.first_sync_finished.emit(outcome)

    # --- helpers ------------------------------------------------------------------------------------------------
    def _set_choices_enabled(self, enabled: bool) -> None:
        for button in (self.connect_button, self.sandbox_button):
            button.setEnabled(enabled)

    def _show_busy(self, text: str) -> None:
        self.status_label.setText(text)
        self.progress.setRange(0, 0)  # busy until a total is known
        self.progress.show()
        self._fit()

    def _fit(self) -> None:
        """Take the height the content needs at this width, growing or shrinking, so a longer message, the
        progress bar or the Open button is never cut off (a word-wrapped label's height depends on its width)."""
        layout = self.layout()
        layout.invalidate()
        layout.activate()
        needed = self.heightForWidth(self.width()) if layout.hasHeightForWidth() else self.sizeHint().height()
        height = max(needed, layout.minimumSize().height())
        if height != self.height():
            self.resize(self.width(), height)

    def reject(self) -> None:
        self._closed = True
        super().reject()

    def closeEvent(self, event: QCloseEvent) -> None:
        # Closing while the first sync runs is fine: the sync belongs to the app's runner and carries on.
        self._closed = True
        super().closeEvent(event)
