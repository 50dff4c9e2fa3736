"""The desktop app's composition root: QApplication → one instance per profile → bootstrap (paths, logging,
database) → runner + bridge → status, window, tray, notifications → event loop → clean shutdown.

`run_gui()` is what `clinicsync` (no command) runs. `build_app()` builds everything after the QApplication, so
tests, screenshots and benchmarks get the real app on a profile of their choosing.
"""

from __future__ import annotations

import gc
import importlib
import logging
import os
import signal
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType

from PySide6.QtCore import QTimer
from PySide6.QtWidgets import QApplication, QMessageBox, QSystemTrayIcon, QWidget

from clinicsync.app import AppContext, bootstrap
from clinicsync.paths import APP_NAME, AppPaths, ProfileFolderError
from clinicsync.sandbox.persist import SnapshotError
from clinicsync.secrets import STRIPE_API_KEY, SecretStoreError
from clinicsync.store.db import CHANGE_NOT_SAVED, storage_problem
from clinicsync.sync.clock import Clock
from clinicsync.sync.runner import SyncRunner
from clinicsync.ui import icons
from clinicsync.ui.background import wait_for_background
from clinicsync.ui.bridge import BridgeListener, RunnerBridge
from clinicsync.ui.context import UiContext
from clinicsync.ui.main_window import MainWindow, confirm_quit_dialog
from clinicsync.ui.notifications import Notice, Notifier
from clinicsync.ui.schedule import WindowSchedule
from clinicsync.ui.single_instance import InstanceServer, claim_instance
from clinicsync.ui.status import StatusTracker, request_sync
from clinicsync.ui.tray import TrayActions, TrayController

log = logging.getLogger(__name__)

SHUTDOWN_TIMEOUT_S = 30.0
BACKGROUND_WAIT_S = 5.0  # connection tests and previews time out on their own; don't hold Quit for long
# Closing the window changes nothing about when a sync runs, so the hint promises background syncing only when a
# schedule is on (this window's, or the background service's it is attached to).
TRAY_HINT = (
    "ClinicSync is still here, in the tray. It syncs when you press Sync now (in this icon's menu or in its "
    "window). Quit it from this icon's menu."
)
TRAY_HINT_SCHEDULED = (
    "ClinicSync is still here, in the tray, and keeps syncing on schedule; the icon's menu says when it last "
    "synced. Quit it from this icon's menu."
)


def tray_hint(schedule_on: bool) -> str:
    return TRAY_HINT_SCHEDULED if schedule_on else TRAY_HINT


@dataclass(eq=False)
class GuiApp:
    """Everything the running app owns; `shutdown()` stops it in order and joins the sync worker."""

    ui: UiContext
    window: MainWindow
    tray: TrayController | None
    notifier: Notifier
    instance: InstanceServer | None = None
    last_notice: Notice | None = None
    first_run_dialog: QWidget | None = None
    # The sandbox trial this app runs (resumed at start, or started from the welcome): stopped, and so saved, at
    # shutdown. A sandbox handed to build_app by its caller stays the caller's to stop.
    trial_sandbox: object | None = None
    trial_problem: str | None = None  # why the trial in use could not continue at start (the welcome says it)
    base_env: dict[str, str] = field(default_factory=dict)  # the person's own profile, to return to from the trial
    shut_down: bool = field(default=False, init=False)
    on_quit: Callable[[], None] | None = field(default=None, init=False, repr=False)  # leaves the event loop

    @property
    def tracker(self) -> StatusTracker:
        assert self.ui.status is not None
        return self.ui.status

    def sync_now(self) -> None:
        _, why_not = request_sync(self.ui, "manual")
        if why_not and self.tray is not None:
            self.tray.show_message("ClinicSync", why_not)

    def open_window(self) -> None:
        self.window.bring_to_front()

    def notify(self, notice: Notice) -> None:
        log.info("notification: %s: %s", notice.title, notice.message)
        self.last_notice = notice
        if self.tray is not None:
            self.tray.show_message(notice.title, notice.message, critical=notice.critical)
        else:
            QApplication.alert(self.window)  # no tray: at least flash the taskbar entry; the banner says why

    def went_to_tray(self, first_time: bool) -> None:
        if first_time and self.tray is not None:
            schedule = self.ui.schedule
            self.tray.show_message(APP_NAME, tray_hint(schedule is not None and schedule.schedule_on()))

    def notice_clicked(self) -> None:
        self.window.show_tab(self.last_notice.tab if self.last_notice is not None else "overview")

    def switch_profile(self, env: Mapping[str, str], sandbox: object) -> UiContext:
        """Move the running app onto another profile (the first-run sandbox trial): the same UiContext, bridge,
        window and tray, with a new runner and database; the status tracker and every tab follow."""
        from clinicsync.ui.first_run import switch_in_place

        ui = switch_in_place(self.ui, env, sandbox)  # type: ignore[arg-type]
        self.trial_sandbox = sandbox
        if ui.schedule is not None:  # the schedule follows the profile: stopped for the old, started for the new
            ui.runner.shutdown()
            ui.runner = ui.schedule.rebind(ui.app)
        self.tracker.rebind(ui.runner, ui.app.settings)
        self.window.refresh_all()
        return ui

    def leave_trial(self) -> None:
        """ "Connect your own accounts" from the sandbox trial: back to the person's own profile, on Connections.
        The trial is kept (and saved) but no longer where the app starts; the welcome offers to continue it."""
        from clinicsync.ui.first_run import set_trial_active

        set_trial_active(self.base_env, False)
        self.ui.runner.shutdown()
        self.ui.app = bootstrap(dict(self.base_env))
        if self.ui.schedule is not None:  # the schedule follows the profile: stopped for the trial's, started here
            self.ui.runner = self.ui.schedule.rebind(self.ui.app)
        else:
            self.ui.runner = SyncRunner(self.ui.app.paths, self.ui.app.settings, BridgeListener(self.ui.bridge))
        self.ui.sandbox = None
        stop_sandbox = getattr(self.trial_sandbox, "stop", None)
        self.trial_sandbox = None
        if callable(stop_sandbox):
            stop_sandbox()
        self.tracker.rebind(self.ui.runner, self.ui.app.settings)
        self.window.refresh_all()
        self.window.show_tab("connections")

    def quit(self) -> None:
        """Quit from the tray or a confirmed close: stop everything, then leave the event loop."""
        self.shutdown()
        if self.on_quit is not None:
            self.on_quit()

    def shutdown(self, timeout: float = SHUTDOWN_TIMEOUT_S) -> bool:
        """Idempotent. Cancels a running sync at its next safe point and joins the worker thread."""
        if self.shut_down:
            return True
        self.shut_down = True
        self.notifier.stop()
        self.window.prepare_quit()
        self.window.hide()
        if self.tray is not None:
            self.tray.hide()
        if self.instance is not None:
            self.instance.close()
        # The schedule's stop also stops the runner and lets go of the profile's schedule.
        schedule = self.ui.schedule
        joined = schedule.stop(timeout) if schedule is not None else True
        if schedule is None or self.ui.runner is not schedule.runner:  # replaced by a profile switch's own runner
            joined = self.ui.runner.shutdown(timeout) and joined
        if not joined:  # a request stuck past its timeout; the outbox makes an abandoned write safe to replay
            log.warning("the sync worker did not stop within %.0f s; exiting anyway", timeout)
        # Background calls (a connection test, a preview, starting the sandbox) must not outlive the app.
        if not wait_for_background(int(BACKGROUND_WAIT_S * 1000)):
            log.warning("a background call was still running after %.0f s; exiting anyway", BACKGROUND_WAIT_S)
        stop_sandbox = getattr(self.trial_sandbox, "stop", None)
        if callable(stop_sandbox):  # after the worker: the sandbox saves its data as the last sync left it
            stop_sandbox()
        self.window.close()
        log.info("ClinicSync stopped (worker joined: %s)", joined)
        return joined


def build_app(
    env: Mapping[str, str] | None = None,
    *,
    tray_available: bool | None = None,
    sandbox: object | None = None,
    instance: InstanceServer | None = None,
    confirm_quit: Callable[[QWidget, bool], bool] = confirm_quit_dialog,
    schedule: bool = False,
    clock: Clock | None = None,
) -> GuiApp:
    """Build the whole app on the profile `env` names (default: this process's environment). A QApplication
    must exist. `tray_available` None asks the desktop; tests pass True or False.

    `schedule`: run the profile's schedule in this window (the app does; tests and screenshots ask for it when
    they are about it). Either way, when `clinicsync serve` runs the schedule the window attaches to it. `clock`:
    the schedule's clock (tests pass a clinicsync.sync.clock.ManualClock)."""
    if QApplication.instance() is None:
        raise RuntimeError("build_app needs a QApplication (run_gui creates one; tests get pytest-qt's)")
    ctx = bootstrap(env)
    trial_sandbox, trial_problem = None, None
    if sandbox is None:
        ctx, trial_sandbox, trial_problem = _resume_trial(ctx)
        sandbox = trial_sandbox
    bridge = RunnerBridge()
    # The schedule's runner (its own when hosting, else a plain one) is the app's runner: one worker either way.
    window_schedule = WindowSchedule(ctx, bridge, host=schedule, clock=clock, parent=bridge)
    runner = window_schedule.runner
    if tray_available is None:
        tray_available = QSystemTrayIcon.isSystemTrayAvailable()
    ui = UiContext(app=ctx, runner=runner, bridge=bridge, tray_available=tray_available, sandbox=sandbox)
    ui.schedule = window_schedule
    # The bridge and the tracker live as long as the app; parent them to the bridge so Qt owns them together.
    ui.status = StatusTracker(runner, bridge, ctx.settings, bridge)
    ui.status.schedule = window_schedule
    window_schedule.changed.connect(ui.status.stored_changed)

    def took_over(runner: SyncRunner) -> None:  # the service stopped; this window now runs the schedule
        ui.runner = runner
        if ui.status is not None:
            ui.status.rebind(runner, ui.app.settings)

    window_schedule.runner_changed.connect(took_over)
    window = MainWindow(ui, confirm_quit=confirm_quit)
    for name, method in (("history", "refresh"), ("review", "reload")):  # attached: the service's syncs show too
        reread = getattr(window.tabs.get(name), method, None)  # None: a placeholder stands in for the tab
        if callable(reread):
            window_schedule.service_finished.connect(reread)
    gui = GuiApp(ui=ui, window=window, tray=None, notifier=Notifier(ui, None, bridge), instance=instance)
    gui.trial_sandbox, gui.trial_problem = trial_sandbox, trial_problem
    gui.base_env = dict(os.environ if env is None else env)
    leave_trial = getattr(window.tabs.get("connections"), "leave_trial_requested", None)
    if leave_trial is not None:
        leave_trial.connect(gui.leave_trial)
    gui.notifier.sink = gui.notify
    if tray_available:
        gui.tray = TrayController(
            ui.status,
            TrayActions(
                sync_now=gui.sync_now,
                cancel=ui.cancel,  # through ui: the runner changes on a profile switch, the service when attached
                set_paused=ui.status.set_paused,
                open_window=gui.open_window,
                quit=gui.quit,
            ),
            bridge,
        )
        gui.tray.message_clicked.connect(gui.notice_clicked)
        gui.tray.show()
        window.went_to_tray.connect(gui.went_to_tray)
    window.quit_requested.connect(gui.quit)
    if instance is not None:
        instance.show_requested.connect(gui.open_window)
    return gui


def _resume_trial(ctx: AppContext) -> tuple[AppContext, object | None, str | None]:
    """A person who was trying the sandbox clinic when they quit comes back to it (until they connect their own
    accounts or leave the trial): the trial's context and running sandbox, or the given context and, when the
    trial's saved data can't be read, why (the welcome then offers a fresh start)."""
    from clinicsync.ui.first_run import resume_active_trial

    try:
        trial = resume_active_trial(ctx)
    except SnapshotError as exc:
        log.warning("the sandbox trial could not continue: %s", exc)
        return ctx, None, str(exc)
    if trial is None:
        return ctx, None, None
    log.info("continuing the sandbox trial the app was on when it quit")
    try:
        return bootstrap(trial.env), trial.sandbox, None
    except BaseException:
        trial.sandbox.stop()
        raise


# --- the process ----------------------------------------------------------------------------------------------
def _install_signal_handlers(quit_now: Callable[[], None]) -> QTimer:
    """SIGTERM/SIGINT (logout, Ctrl+C) quit cleanly. Python runs signal handlers only between bytecodes, so a
    cheap timer lets the interpreter in while Qt's loop waits."""

    def handle(signum: int, _frame: object) -> None:
        log.info("signal %s: quitting", signum)
        quit_now()

    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)
    timer = QTimer()
    timer.start(500)
    timer.timeout.connect(lambda: None)
    return timer


def _log_uncaught(kind: type[BaseException], value: BaseException, tb: TracebackType | None) -> None:
    # An exception in a slot must not kill the tray app silently; the log keeps the trace (keys redacted).
    message = storage_problem(value, consequence=CHANGE_NOT_SAVED)
    if message is None:
        log.critical("uncaught exception", exc_info=(kind, value, tb))
        return
    # A click whose change could not be stored (a full disk, a damaged database): the person must know.
    log.error("a change could not be saved: %s", value)
    if not _telling_storage_problem:
        _telling_storage_problem.append(message)
        try:
            show_storage_problem(message)
        finally:
            _telling_storage_problem.clear()


_telling_storage_problem: list[str] = []  # one box at a time, however many clicks fail meanwhile


def show_storage_problem(message: str) -> None:
    QMessageBox.warning(None, "ClinicSync can't save its records", message)


def _read_key_mode(gui: GuiApp) -> None:
    """Read the Stripe key once (on the GUI thread, like every secret) so TEST MODE shows before a first sync."""
    try:
        gui.tracker.note_stripe_key(gui.ui.app.secrets.get(STRIPE_API_KEY))
    except SecretStoreError as exc:  # no usable keyring: Connections explains; the badge just stays unknown
        log.warning("could not read the Stripe key to show its mode: %s", exc)


def _start_first_run(gui: GuiApp) -> None:
    """Hand over to the welcome flow when nothing is connected yet (clinicsync.ui.first_run, if in this build)."""
    try:
        first_run = importlib.import_module("clinicsync.ui.first_run")
    except ModuleNotFoundError as exc:
        if exc.name != "clinicsync.ui.first_run":
            raise
        return
    start = getattr(first_run, "start_if_needed", None)
    if callable(start):
        gui.first_run_dialog = start(
            gui.ui, gui.window, on_switch_profile=gui.switch_profile, trial_problem=gui.trial_problem
        )


def run_gui(argv: Sequence[str] | None = None, *, minimized: bool = False) -> int:
    argv = list(sys.argv[:1] if argv is None else argv) or ["clinicsync"]
    QApplication.setApplicationName(APP_NAME)
    QApplication.setOrganizationName(APP_NAME)
    QApplication.setDesktopFileName("clinicsync")
    app = QApplication.instance() or QApplication(argv)
    assert isinstance(app, QApplication)
    app.setWindowIcon(icons.icon(icons.APP))

    env = dict(os.environ)
    try:
        paths = AppPaths.resolve(env).ensure()
    except ProfileFolderError as exc:  # nowhere to keep the clinic's data: say which folder and why
        show_startup_problem(str(exc))
        return 2
    instance = claim_instance(paths.instance_socket_name, paths.state_dir / "instance.lock")
    if instance is None:
        print("ClinicSync is already running for this profile; its window has been brought forward.")
        return 0

    try:
        gui = build_app(env, instance=instance, schedule=True)
    except Exception as exc:
        message = startup_problem(exc)
        if message is None:
            raise
        log.error("ClinicSync could not start: %s", exc)
        instance.close()
        show_startup_problem(message)
        return 2
    # With a tray, closing the last window keeps the app alive; quitting is explicit (tray menu, confirmed close).
    app.setQuitOnLastWindowClosed(False)
    # exit(), not quit(): Qt 6's quit() first asks every window to close, and the main window's close means
    # "hide to the tray" (or asks to confirm), which would veto quitting.
    gui.on_quit = lambda: app.exit(0)
    app.aboutToQuit.connect(gui.shutdown)
    sys.excepthook = _log_uncaught
    keepalive = _install_signal_handlers(gui.quit)
    if not (minimized and gui.tray is not None):  # started at login: the tray icon only, until opened
        gui.window.show()
    log.info("ClinicSync window shown (profile %s, tray %s)", paths.profile_id, gui.ui.tray_available)
    QTimer.singleShot(0, lambda: _read_key_mode(gui))
    QTimer.singleShot(0, lambda: _start_first_run(gui))
    freeze_startup_objects()
    code = app.exec()
    keepalive.stop()
    gui.shutdown()
    return code


def freeze_startup_objects() -> None:
    """Everything built by the time the window is up lives as long as the app: keep it out of the garbage
    collector's full passes, which otherwise walk it holding the interpreter lock and stall the window (on the GUI
    thread, or on a sync's worker thread). benchmarks/gui_stall.py and table_scroll.py call it too, to measure the
    app as it runs."""
    gc.freeze()


def startup_problem(exc: BaseException) -> str | None:
    """What to tell a person when the app cannot start for a reason they can fix (a damaged database, a full
    disk, a broken setting); None for a bug, which keeps its traceback."""
    from clinicsync.sync.service import failure_of

    failure = failure_of(exc)
    return None if failure is None else failure[1]


def show_startup_problem(message: str) -> None:
    """A modal box: there is no window yet to put a banner in."""
    QMessageBox.critical(None, "ClinicSync can't start", message)


def main() -> int:  # `python -m clinicsync.ui.main`
    return run_gui()


if __name__ == "__main__":
    raise SystemExit(main())


__all__ = ["GuiApp", "build_app", "run_gui"]
