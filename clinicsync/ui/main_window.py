"""The main window: one tab per screen, built from a registry so each screen lives in its own module.

Every tab class takes ``(ui: UiContext, parent=None)``. A tab whose module is not part of this build yet shows a
placeholder; a tab that fails to build shows the error (and it is logged) instead of taking the app down. A tab
may define ``refresh()``; it is called whenever the tab is brought to the front.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable
from dataclasses import dataclass

from PySide6.QtCore import QSettings, Qt, Signal
from PySide6.QtGui import QCloseEvent
from PySide6.QtWidgets import QDialog, QLabel, QMainWindow, QMessageBox, QTabWidget, QVBoxLayout, QWidget

from clinicsync.store import queries
from clinicsync.sync.runner import JobOutcome
from clinicsync.ui import icons
from clinicsync.ui.context import UiContext
from clinicsync.ui.status import request_sync, stream_label
from clinicsync.ui.wheel import guard_wheel

log = logging.getLogger(__name__)

DEFAULT_SIZE = (1100, 720)  # the first window; every tab is tested to fit it, and 1024×700 (tests/ui/test_fits.py)

# Syncs a person started and is watching: an approval they need is asked for at once (scheduled ones notify).
INTERACTIVE_TRIGGERS = ("manual", "first_run")


@dataclass(frozen=True)
class TabSpec:
    name: str  # for show_tab(); stable, lower case
    title: str
    module: str | None  # None: a placeholder until the screen is built
    class_name: str = ""
    placeholder: str = ""


TABS: tuple[TabSpec, ...] = (
    TabSpec("overview", "Overview", "clinicsync.ui.overview_tab", "OverviewTab"),
    TabSpec("connections", "Connections", "clinicsync.ui.connections_tab", "ConnectionsTab"),
    TabSpec("mapping", "Field mapping", "clinicsync.ui.mapping_tab", "MappingTab"),
    TabSpec("history", "Sync history", "clinicsync.ui.history_tab", "HistoryTab"),
    TabSpec("review", "Review", "clinicsync.ui.review_tab", "ReviewTab"),
    TabSpec("reconciliation", "Reconciliation", "clinicsync.ui.reconcile_tab", "ReconcileTab"),
    TabSpec("settings", "Settings", "clinicsync.ui.settings_tab", "SettingsTab"),
)
TAB_NAMES = tuple(spec.name for spec in TABS)


class PlaceholderTab(QWidget):
    def __init__(self, text: str, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        layout = QVBoxLayout(self)
        label = QLabel(text, wordWrap=True)
        label.setAlignment(Qt.AlignmentFlag.AlignCenter)
        label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        layout.addWidget(label)


def load_tab_class(spec: TabSpec) -> type[QWidget] | None:
    """The tab's class, or None when its module is not in this build. Other import errors propagate."""
    if spec.module is None:
        return None
    try:
        module = importlib.import_module(spec.module)
    except ModuleNotFoundError as exc:
        if exc.name == spec.module:
            return None
        raise
    cls = getattr(module, spec.class_name, None)
    if cls is None:
        raise ImportError(f"{spec.module} has no {spec.class_name}")
    return cls


def confirm_quit_dialog(parent: QWidget, syncing: bool) -> bool:
    """Without a tray there is nowhere to keep running, so closing means quitting: ask first."""
    text = "Quit ClinicSync? Nothing syncs until you open it again."
    if syncing:
        text += "\n\nThe sync in progress stops at a safe point; queued changes are sent next time."
    answer = QMessageBox.question(parent, "Quit ClinicSync", text, defaultButton=QMessageBox.StandardButton.No)
    return answer == QMessageBox.StandardButton.Yes


class MainWindow(QMainWindow):
    quit_requested = Signal()
    went_to_tray = Signal(bool)  # True the first time ever, so the app can say it keeps running there

    def __init__(
        self,
        ui: UiContext,
        *,
        confirm_quit: Callable[[QWidget, bool], bool] = confirm_quit_dialog,
        parent: QWidget | None = None,
    ) -> None:
        super().__init__(parent)
        self.ui = ui
        self.confirm_quit = confirm_quit  # injectable: tests answer without a modal dialog
        self.state = QSettings(str(ui.app.paths.config_dir / "window.ini"), QSettings.Format.IniFormat)
        self.setWindowTitle("ClinicSync")
        self.setWindowIcon(icons.icon(icons.APP))
        self.setMinimumSize(820, 560)
        self.tab_widget = QTabWidget(documentMode=True)
        self.setCentralWidget(self.tab_widget)
        self.tabs: dict[str, QWidget] = {}
        self.tab_errors: dict[str, str] = {}
        for spec in TABS:
            self._add_tab(spec)
        self.tab_widget.currentChanged.connect(self._tab_changed)
        overview = self.tabs["overview"]
        if hasattr(overview, "open_connections_requested"):
            overview.open_connections_requested.connect(lambda: self.show_tab("connections"))
        self._follow_stored_changes()
        ui.bridge.job_finished.connect(self._on_finished)
        self.approval_dialog: QDialog | None = None
        self._quitting = False
        if not self.restoreGeometry(self.state.value("geometry", b"")):
            self.resize(*DEFAULT_SIZE)

    # --- tabs -----------------------------------------------------------------------------------------
    def _add_tab(self, spec: TabSpec) -> None:
        try:
            cls = load_tab_class(spec)
            widget = cls(self.ui, self.tab_widget) if cls is not None else PlaceholderTab(spec.placeholder or "")
            if cls is None and not spec.placeholder:
                widget = PlaceholderTab(f"{spec.title} is coming soon.")
        except Exception as exc:  # one broken screen must not stop the app (and the sync) from running
            log.exception("the %s tab could not be built", spec.name)
            self.tab_errors[spec.name] = f"{type(exc).__name__}: {exc}"
            widget = PlaceholderTab(f"The {spec.title} screen could not be opened ({type(exc).__name__}). See the log.")
        widget.setObjectName(f"tab-{spec.name}")
        guard_wheel(widget)
        self.tabs[spec.name] = widget
        self.tab_widget.addTab(widget, spec.title)

    def tab(self, name: str) -> QWidget:
        if name not in self.tabs:
            raise KeyError(f"no tab {name!r}; tabs: {', '.join(TAB_NAMES)}")
        return self.tabs[name]

    def show_tab(self, name: str) -> QWidget:
        """Bring the window forward on this tab (from the tray, a notification, a banner or another tab)."""
        widget = self.tab(name)
        self.tab_widget.setCurrentWidget(widget)
        self.bring_to_front()
        return widget

    def current_tab_name(self) -> str:
        current = self.tab_widget.currentWidget()
        return next(name for name, widget in self.tabs.items() if widget is current)

    def refresh_all(self) -> None:
        """After a profile switch: every tab that can, re-reads what it shows."""
        for widget in self.tabs.values():
            refresh = getattr(widget, "refresh", None)
            if callable(refresh):
                refresh()

    def _tab_changed(self, index: int) -> None:
        refresh = getattr(self.tab_widget.widget(index), "refresh", None)
        if callable(refresh):
            refresh()

    def _follow_stored_changes(self) -> None:
        """Tabs that change stored state (a review decision, a retry queued) tell the status tracker, so the tray
        and the Overview re-read it at once; the tracker otherwise refreshes only when a sync starts or ends."""
        status = self.ui.status
        if status is None:
            return
        for name, signal_name in (("review", "resolved"), ("history", "retry_requested")):
            signal = getattr(self.tabs[name], signal_name, None)  # None: a placeholder stands in for the tab
            if signal is not None:
                signal.connect(status.stored_changed)

    def bring_to_front(self) -> None:
        if self.isMinimized():
            self.showNormal()
        self.show()
        self.raise_()
        self.activateWindow()

    # --- approval before the first live sync ----------------------------------------------------------
    def _on_finished(self, outcome: JobOutcome) -> None:
        waiting = [r.stream for r in outcome.results if r.outcome == "needs_approval"]
        if waiting and outcome.job.trigger in INTERACTIVE_TRIGGERS and self.approval_dialog is None:
            self.open_approval(waiting[0])

    def open_approval(self, stream: str) -> None:
        plan = queries.latest_plan(stream)
        if plan is None:
            return
        self.show_tab("overview")
        try:
            from clinicsync.ui.approval import ApprovalDialog
        except ModuleNotFoundError as exc:
            if exc.name != "clinicsync.ui.approval":
                raise
            dialog: QDialog = self._fallback_approval(stream, plan)
        else:
            dialog = ApprovalDialog(self.ui, plan, self)
            if not getattr(dialog, "STARTS_SYNC", False):  # a dialog that syncs itself must not get a second sync
                dialog.accepted.connect(lambda: self._approved(stream))
        dialog.finished.connect(self._approval_closed)
        self.approval_dialog = dialog
        dialog.open()  # window-modal but not blocking: the bridge keeps delivering meanwhile

    def _fallback_approval(self, stream: str, plan: object) -> QMessageBox:
        counts = ", ".join(f"{n} {action}" for action, n in getattr(plan, "summary", {}).get("counts", {}).items())
        box = QMessageBox(
            QMessageBox.Icon.Question,
            "Approve the first live sync",
            f"This is the first sync of {stream_label(stream)} to a LIVE Stripe account, so nothing was written "
            f"yet.\n\nThe plan: {counts or 'no changes'}.\n\nApprove it and sync now?",
            QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No,
            self,
        )
        box.button(QMessageBox.StandardButton.Yes).setText("Approve and sync")
        box.button(QMessageBox.StandardButton.No).setText("Not now")
        box.accepted.connect(lambda: self._approved(stream))
        return box

    def _approved(self, stream: str) -> None:
        # The dialog may already have recorded the approval; approving the latest plan again is harmless.
        queries.approve_latest_plan(stream)
        request_sync(self.ui, "manual")

    def _approval_closed(self) -> None:
        if self.approval_dialog is not None:
            self.approval_dialog.deleteLater()
        self.approval_dialog = None

    # --- closing --------------------------------------------------------------------------------------
    def prepare_quit(self) -> None:
        """The app is quitting: the next close really closes."""
        self._quitting = True
        self.state.setValue("geometry", self.saveGeometry())
        self.state.sync()

    def closeEvent(self, event: QCloseEvent) -> None:
        if self._quitting:
            event.accept()
            return
        self.state.setValue("geometry", self.saveGeometry())
        if self.ui.tray_available:
            # Stay in the tray (a sync already running carries on); say so the first time only, ever.
            event.ignore()
            self.hide()
            first_time = not self.state.value("tray_hint_shown", False, type=bool)
            if first_time:
                self.state.setValue("tray_hint_shown", True)
                self.state.sync()
            self.went_to_tray.emit(first_time)
            return
        syncing = self.ui.status.syncing if self.ui.status is not None else self.ui.runner.busy
        if self.confirm_quit(self, syncing):
            event.ignore()  # the app closes the window itself once it has shut down cleanly
            self.quit_requested.emit()
        else:
            event.ignore()
