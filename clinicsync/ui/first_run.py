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

The trial stays: the emulators keep their data in the trial's folder (`sandbox-clinic/`, see sandbox/persist.py)
and a small `trial.json` says whether the trial is the profile the person is using. While it is (and the real
profile has no keys), starting the app goes straight back to it (`resume_active_trial`, called by the core), on
new ports: the sandbox's addresses live only in the trial's environment mapping, rebuilt from the running
sandbox each time. Choosing the sandbox again when a trial exists offers Continue or Start over (today's wipe).
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from PySide6.QtCore import QCoreApplication, Qt, Signal
from PySide6.QtGui import QCloseEvent
from PySide6.QtWidgets import (
    QDialog,
    QFrame,
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
from clinicsync.mapping.defaults import stripe_object_of_stream
from clinicsync.paths import HOME_ENV_VAR, AppPaths
from clinicsync.sandbox.launcher import Sandbox, has_saved_sandbox, start_sandbox
from clinicsync.sandbox.persist import SnapshotError, write_atomically
from clinicsync.sandbox.seed import DEFAULT_PRODUCTS
from clinicsync.sync.runner import Job, JobOutcome, SyncRunner
from clinicsync.ui.background import Outcome, run_in_background
from clinicsync.ui.bridge import BridgeListener, RunnerBridge
from clinicsync.ui.context import UiContext

log = logging.getLogger(__name__)

SANDBOX_DIR_NAME = "sandbox-profile"
SANDBOX_DATA_DIR = "sandbox-clinic"  # inside the trial's folder: the emulators' saved data
TRIAL_FILE = "trial.json"  # inside the trial's folder: whether the person is using the trial (no keys in it)
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
    """Start a trial (over) from an empty profile: the emulators' saved data goes too, and links from an earlier
    trial would point at customers that no longer exist."""
    if home.exists():
        if not (home / SANDBOX_MARKER).is_file():
            raise RuntimeError(
                f"{home} already exists and is not a ClinicSync sandbox profile, so ClinicSync will not empty it. "
                "Move it away and try again."
            )
        shutil.rmtree(home)
    home.mkdir(parents=True)
    (home / SANDBOX_MARKER).write_text("ClinicSync sandbox trial profile; deleted when the trial starts over.\n")


def trial_exists(base_env: Mapping[str, str]) -> bool:
    """Whether an earlier trial left a sandbox clinic to continue with."""
    home = sandbox_home(base_env)
    return (home / SANDBOX_MARKER).is_file() and has_saved_sandbox(home / SANDBOX_DATA_DIR)


def trial_is_active(base_env: Mapping[str, str]) -> bool:
    """Whether the person was using the trial when the app last ran (until they leave it or connect accounts)."""
    if not trial_exists(base_env):
        return False
    try:
        state = json.loads((sandbox_home(base_env) / TRIAL_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False  # no readable record: the welcome then offers to continue
    return isinstance(state, dict) and state.get("active") is True


def is_trial_profile(app: AppContext) -> bool:
    """Whether `app` runs on the sandbox trial's profile (its folder carries the marker)."""
    return (app.paths.home / SANDBOX_MARKER).is_file()


def set_trial_active(base_env: Mapping[str, str], active: bool) -> None:
    home = sandbox_home(base_env)
    if (home / SANDBOX_MARKER).is_file():
        write_atomically(home / TRIAL_FILE, json.dumps({"active": active}).encode("utf-8"))


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
    resumed: bool = False  # True: an earlier trial continued, its first sync long done


def start_trial(
    base_env: Mapping[str, str],
    *,
    profile: str = DEFAULT_PROFILE,
    patients: int = DEFAULT_PATIENTS,
    products: int = DEFAULT_PRODUCTS,
    extra_env: Mapping[str, str] | None = None,
    start_over: bool = True,
) -> SandboxTrial:
    """Start the trial's emulators (on a worker thread: seeding takes a moment). `start_over` empties the sandbox
    profile first; otherwise the earlier trial continues with its saved sandbox data (SnapshotError when that
    can't be read: offer to start over)."""
    home = sandbox_home(base_env)
    resume = not start_over and trial_exists(base_env)
    if not resume:
        reset_sandbox_home(home)
    sandbox = start_sandbox(profile=profile, patients=patients, products=products, state_dir=home / SANDBOX_DATA_DIR)
    set_trial_active(base_env, True)
    return SandboxTrial(sandbox, sandbox_env(base_env, sandbox, home, extra_env), resumed=resume)


def resume_active_trial(app: AppContext, extra_env: Mapping[str, str] | None = None) -> SandboxTrial | None:
    """At start: the trial the person was using, running again, or None (no active trial, or the real profile
    has keys now). SnapshotError when its saved data can't be read."""
    if not needs_first_run(app) or not trial_is_active(app.env):
        return None
    return start_trial(app.env, extra_env=extra_env, start_over=False)


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
    ui: UiContext,
    window: QWidget | None = None,
    *,
    on_switch_profile: SwitchProfile | None = None,
    trial_problem: str | None = None,
    sandbox_products: int = DEFAULT_PRODUCTS,
) -> FirstRunDialog | None:
    """What the UI core calls once the window shows: the welcome, when no key is set (else None).

    "Connect your accounts" opens the window's Connections tab; the sandbox trial switches profiles through
    `on_switch_profile` (default: `switch_in_place`) and runs its first sync while the dialog shows progress.
    The dialog is window-modal but does not block, so the bridge keeps delivering meanwhile. `trial_problem`:
    why the trial in use could not continue at start; the welcome says it and offers to start over.
    """
    if not needs_first_run(ui.app):
        return None

    def switch(env: Mapping[str, str], sandbox: Sandbox) -> UiContext:
        if on_switch_profile is not None:
            return on_switch_profile(env, sandbox)
        return switch_in_place(ui, env, sandbox)

    dialog = FirstRunDialog(ui, window, on_switch_profile=switch, sandbox_products=sandbox_products)
    show_tab = getattr(window, "show_tab", None)
    if callable(show_tab):
        dialog.connect_requested.connect(lambda: show_tab("connections"))
        dialog.first_sync_finished.connect(lambda _outcome: show_tab("overview"))
    if trial_problem:
        dialog.show_trial_problem(trial_problem)
    dialog.open()
    return dialog


def needs_first_run(app: AppContext) -> bool:
    """Show the welcome when no key is set at all (environment or keyring)."""
    return not has_any_key(app.secrets)


def outcome_summary(outcome: JobOutcome) -> str:
    if outcome.failure_kind:
        return f"The first sync did not finish: {labels.for_gui(outcome.message)}"
    totals: dict[str, int] = {}
    created: dict[str, int] = {}  # by the Stripe object made: a products stream's creations are not customers
    for result in outcome.results:
        kind = stripe_object_of_stream(result.stream)
        created[kind] = created.get(kind, 0) + result.counts.get("created", 0)
        for action, count in result.counts.items():
            totals[action] = totals.get(action, 0) + count
    made = [f"{labels.stripe_object_words(kind, count)} created" for kind, count in created.items() if count]
    parts = [
        *(made or [f"{labels.stripe_object_words('customer', 0)} created"]),
        f"{totals.get('linked', 0):,} linked to existing ones",
    ]
    if totals.get("review"):
        parts.append(f"{totals['review']:,} left for you to review")
    if totals.get("failed"):
        parts.append(f"{totals['failed']} failed")
    return "First sync finished: " + ", ".join(parts) + "."


# --- leaving the trial ----------------------------------------------------------------------------------------


class TrialBox(QFrame):
    """Shown (on the Connections tab) while the app runs the sandbox trial: the way back to connecting one's own
    accounts. Leaving keeps the trial, so choosing the sandbox clinic later offers to continue it."""

    leave_requested = Signal()

    def __init__(self, ui: UiContext, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.ui = ui
        self.setObjectName("trialBox")
        self.setFrameShape(QFrame.Shape.StyledPanel)
        text = QLabel(
            "You are trying ClinicSync on an invented sandbox clinic, and it stays as you leave it. When you are "
            "ready, connect your own accounts; you can come back to the sandbox clinic from the welcome."
        )
        text.setWordWrap(True)
        self.leave_button = QPushButton("Connect your own accounts")
        self.leave_button.clicked.connect(self.leave_requested)
        row = QHBoxLayout(self)
        row.addWidget(text, 1)
        row.addWidget(self.leave_button, 0, Qt.AlignmentFlag.AlignVCenter)
        self.refresh()

    def refresh(self) -> None:
        self.setVisible(is_trial_profile(self.ui.app))


# --- the dialog -----------------------------------------------------------------------------------------------


TRIAL_CHOICE_TEXT = (
    "You have tried ClinicSync on the sandbox clinic before. Continue where you left off, or start over with a "
    "fresh sandbox clinic (what you did in the earlier trial is then deleted)."
)
START_OVER_HINT = "Start over to try ClinicSync on a fresh sandbox clinic."


class FirstRunDialog(QDialog):
    """The welcome. `action` says what the person chose: "connect", "sandbox" or None (closed); with "sandbox",
    `resumed` says whether an earlier trial continued (its first sync long done: none is started)."""

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
        sandbox_products: int = DEFAULT_PRODUCTS,
        extra_env: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(parent)
        self._app: AppContext = getattr(ui_or_app_context, "app", ui_or_app_context)  # type: ignore[assignment]
        self._switch = on_switch_profile
        self._profile = sandbox_profile
        self._patients = sandbox_patients
        self._products = sandbox_products
        self._extra_env = dict(extra_env or {})
        self.action: str | None = None
        self.sandbox: Sandbox | None = None
        self.sandbox_env: dict[str, str] | None = None
        self.sandbox_ui: UiContext | None = None
        self.last_outcome: JobOutcome | None = None
        self.resumed = False
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

        # Shown when an earlier trial exists: continue it, or wipe it and start a new one.
        self.continue_button = QPushButton("Continue the trial")
        self.start_over_button = QPushButton("Start over")
        self.continue_button.clicked.connect(self.choose_continue)
        self.start_over_button.clicked.connect(self.choose_start_over)
        self.trial_choices = QWidget()
        trial_row = QHBoxLayout(self.trial_choices)
        trial_row.setContentsMargins(0, 0, 0, 0)
        trial_row.addStretch(1)
        trial_row.addWidget(self.continue_button)
        trial_row.addWidget(self.start_over_button)
        self.trial_choices.hide()

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
        layout.addWidget(self.trial_choices)
        layout.addWidget(self.progress)
        layout.addWidget(self.done_button, 0, Qt.AlignmentFlag.AlignRight)

    # --- choices ------------------------------------------------------------------------------------------
    def choose_connect(self) -> None:
        self.action = "connect"
        self.connect_requested.emit()
        self.accept()

    def choose_sandbox(self) -> None:
        """A new trial, or (when an earlier one exists) the choice to continue it or start over."""
        if trial_exists(self._app.env):
            self.status_label.setText(TRIAL_CHOICE_TEXT)
            self.continue_button.show()
            self.trial_choices.show()
            self.continue_button.setDefault(True)
            self._fit()
            return
        self._start_trial(start_over=True)

    def choose_continue(self) -> None:
        self._start_trial(start_over=False)

    def choose_start_over(self) -> None:
        self._start_trial(start_over=True)

    def show_trial_problem(self, message: str) -> None:
        """The earlier trial can't continue (its saved sandbox data is damaged): say why, offer a fresh one."""
        self.status_label.setText(f"{labels.for_gui(message)} {START_OVER_HINT}")
        self.continue_button.hide()
        self.trial_choices.show()
        self.start_over_button.setDefault(True)
        self._fit()

    def _start_trial(self, *, start_over: bool) -> None:
        self.action = "sandbox"
        self._set_choices_enabled(False)
        self.trial_choices.hide()
        if start_over:
            self._show_busy(f"Starting the sandbox clinic ({self._patients} invented patients)…")
        else:
            self._show_busy("Opening the sandbox clinic where you left off…")
        base_env, profile, extra = dict(self._app.env), self._profile, self._extra_env
        patients, products = self._patients, self._products
        run_in_background(
            lambda: start_trial(
                base_env, profile=profile, patients=patients, products=products, extra_env=extra, start_over=start_over
            ),
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
            if isinstance(outcome.error, SnapshotError):
                self.show_trial_problem(str(outcome.error))
                return
            self.status_label.setText(f"The sandbox could not start: {labels.for_gui(outcome.error)}")
            self._fit()
            return
        trial: SandboxTrial = outcome.value
        self.sandbox, self.sandbox_env, self.resumed = trial.sandbox, trial.env, trial.resumed
        self.sandbox_ready.emit(trial)
        if self._switch is None:
            self.accept()  # the core switches profiles (and, for a new trial, starts the first sync) itself
            return
        self.sandbox_ui = self._switch(trial.env, trial.sandbox)
        if trial.resumed:
            self.accept()  # back where they left off: the window shows the trial as it was
            return
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
        for button in (self.connect_button, self.sandbox_button, self.continue_button, self.start_over_button):
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
