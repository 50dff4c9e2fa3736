"""The tray icon: idle / syncing / needs attention / paused, and a menu rebuilt each time it opens (so its status
line is never stale): status, Sync now (Cancel sync while one runs), Pause syncing, Open ClinicSync, Quit.

The words come from `status_line(snapshot)`, a pure function; `TrayController` only wires Qt objects to it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from PySide6.QtCore import QObject, QTimer, Signal
from PySide6.QtGui import QAction
from PySide6.QtWidgets import QMenu, QSystemTrayIcon

from clinicsync.labels import plural
from clinicsync.ui import icons
from clinicsync.ui.status import StatusSnapshot, StatusTracker, stream_label

IDLE, SYNCING, ATTENTION, PAUSED = "idle", "syncing", "attention", "paused"
ICON_OF_STATE = {
    IDLE: icons.TRAY_IDLE,
    SYNCING: icons.TRAY_SYNCING,
    ATTENTION: icons.TRAY_ATTENTION,
    PAUSED: icons.TRAY_PAUSED,
}
_PROBLEM_WORDS = {
    "auth": "a key was refused",
    "config": "check Connections",
    "unreachable": "can't reach Cliniko or Stripe",
    "storage": "can't save its records",
}


def _clock(moment: datetime, now: datetime) -> str:
    if moment.date() == now.date():
        return moment.strftime("%H:%M")
    return f"{moment.day} {moment:%b %H:%M}"  # "3 Mar 10:42": no zero-padded day, on every platform


def status_line(snapshot: StatusSnapshot, now: datetime | None = None) -> str:
    """The one line at the top of the tray menu (and the icon's tooltip)."""
    if snapshot.syncing:
        progress = snapshot.progress
        if progress is None or not progress.stream:
            return "Syncing…"
        what = stream_label(progress.stream)
        if progress.total:
            return f"Syncing {what} {progress.done}/{progress.total}"
        if progress.done:
            return f"Syncing {what} {progress.done}"
        return f"Syncing {what}…"
    if snapshot.paused:
        return "Sync paused"
    if snapshot.problem is not None:
        return f"Needs attention: {_PROBLEM_WORDS.get(snapshot.problem.kind, snapshot.problem.kind)}"
    if snapshot.review_items:
        return f"Needs attention: {plural(snapshot.review_items, 'record')} to review"
    if snapshot.failed_records:
        return f"Needs attention: {plural(snapshot.failed_records, 'record')} failed"
    if snapshot.alerts:
        return f"Needs attention: {snapshot.alerts[0]}"
    if snapshot.last_sync is None:
        line = "Not synced yet" if snapshot.never_synced else "No sync has finished well yet"
    else:
        now = now or datetime.now(snapshot.last_sync.tzinfo)
        line = f"Last good sync finished {_clock(snapshot.last_sync, now)}"
    if snapshot.next_sync is not None:
        now = now or datetime.now(snapshot.next_sync.tzinfo)
        line += f", next check {_clock(snapshot.next_sync, now)}"
    return line


def icon_state(snapshot: StatusSnapshot) -> str:
    """The icon says what the status line says: a running sync first, then pause (a person chose it, and nothing
    syncs until they resume, whatever else waits), then attention."""
    if snapshot.syncing:
        return SYNCING
    if snapshot.paused:
        return PAUSED
    return ATTENTION if snapshot.needs_attention else IDLE


@dataclass(frozen=True)
class TrayActions:
    """What the menu items do; the composition root supplies them."""

    sync_now: Callable[[], None]
    cancel: Callable[[], None]
    set_paused: Callable[[bool], None]
    open_window: Callable[[], None]
    quit: Callable[[], None]


class TrayController(QObject):
    message_clicked = Signal()

    def __init__(self, tracker: StatusTracker, actions: TrayActions, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._tracker = tracker
        self._actions = actions
        self.icon = QSystemTrayIcon(icons.icon(icons.TRAY_IDLE), self)
        self.menu = QMenu()
        # Rebuilt when it opens: the status line then says what is true now, not at the last refresh.
        self.menu.aboutToShow.connect(self.rebuild_menu)
        self.icon.setContextMenu(self.menu)
        self.icon.activated.connect(self._activated)
        self.icon.messageClicked.connect(self.message_clicked)
        tracker.changed.connect(self.refresh)
        # While syncing, the tooltip follows the progress once a second (not per record: on Linux every
        # tooltip change is a D-Bus message to the panel).
        self._ticker = QTimer(self)
        self._ticker.setInterval(1000)
        self._ticker.timeout.connect(self.refresh)
        self.state = IDLE
        self.rebuild_menu()
        self.refresh()

    def show(self) -> None:
        self.icon.show()

    def hide(self) -> None:
        self._ticker.stop()
        self.icon.hide()

    def refresh(self) -> None:
        snapshot = self._tracker.snapshot()
        state = icon_state(snapshot)
        if state != self.state:
            self.state = state
            self.icon.setIcon(icons.icon(ICON_OF_STATE[state]))
        if state == SYNCING and not self._ticker.isActive():
            self._ticker.start()
        elif state != SYNCING:
            self._ticker.stop()
        self.icon.setToolTip(f"ClinicSync — {status_line(snapshot)}")

    def rebuild_menu(self) -> None:
        snapshot = self._tracker.snapshot()
        self.menu.clear()
        status = self.menu.addAction(status_line(snapshot))
        status.setEnabled(False)
        self.menu.addSeparator()
        if snapshot.syncing:
            self.menu.addAction("Cancel sync").triggered.connect(self._actions.cancel)
        else:
            sync = self.menu.addAction("Sync now")
            sync.setEnabled(not snapshot.paused)
            sync.triggered.connect(self._actions.sync_now)
        pause = self.menu.addAction("Pause syncing")
        pause.setCheckable(True)
        pause.setChecked(snapshot.paused)
        pause.toggled.connect(self._actions.set_paused)
        self.menu.addSeparator()
        self.menu.addAction("Open ClinicSync").triggered.connect(self._actions.open_window)
        self.menu.addAction("Quit").triggered.connect(self._actions.quit)

    def action(self, text: str) -> QAction:
        """The menu item with this text (tests and the screenshots use it)."""
        for action in self.menu.actions():
            if action.text() == text:
                return action
        raise KeyError(text)

    def menu_texts(self) -> list[str]:
        return [a.text() for a in self.menu.actions() if not a.isSeparator()]

    def show_message(self, title: str, message: str, *, critical: bool = False) -> None:
        kind = QSystemTrayIcon.MessageIcon.Warning if critical else QSystemTrayIcon.MessageIcon.Information
        self.icon.showMessage(title, message, kind, 15_000)

    def _activated(self, reason: QSystemTrayIcon.ActivationReason) -> None:
        # A left click (or double click on Windows) opens the window; the right click shows the menu itself.
        if reason in (QSystemTrayIcon.ActivationReason.Trigger, QSystemTrayIcon.ActivationReason.DoubleClick):
            self._actions.open_window()
