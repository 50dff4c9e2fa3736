"""Desktop notifications, only when a person must act: the alerts of clinicsync.sync.alerts, announced by the tray.

The alerts decide (raised once, cleared when resolved, repeated at most once a day while they last; a failure the
next run fixes never alerts); this module only announces them. Whoever runs the syncs records the alerts: the
window's schedule (its SchedulerHost, after every job), the background service the window is attached to, or,
when the window syncs only on a click, the `Notifier` itself. After every finished job and every half minute the
notifier takes the alerts due (`alerts.take_due_notices`) and passes each, as a `Notice`, to its sink.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from PySide6.QtCore import QObject, QTimer

from clinicsync.labels import for_gui
from clinicsync.sync import alerts
from clinicsync.sync.alerts import AlertBook, AlertView
from clinicsync.sync.runner import JobOutcome

if TYPE_CHECKING:
    from clinicsync.ui.context import UiContext

log = logging.getLogger(__name__)

ANNOUNCE_MS = 30_000  # alerts raised by the background service, and daily repeats, are looked for this often
# Where clicking a notice leads (MainWindow.show_tab), and which alerts are shown as warnings.
TAB_OF_KIND = {
    "auth": "connections",
    "config": "connections",
    "review": "review",
    "failing": "history",
    "reconcile": "reconciliation",
}
CRITICAL_KINDS = ("auth", "config", "storage", "unreachable", "failing")


@dataclass(frozen=True)
class Notice:
    key: str  # the alert's key: identifies the situation
    title: str
    message: str
    tab: str  # where clicking the notice leads (MainWindow.show_tab)
    critical: bool = False


def notice_of(alert: AlertView) -> Notice:
    """An alert as the tray announces it, in the window's words."""
    return Notice(
        alert.key,
        alert.title,
        for_gui(alert.message),
        TAB_OF_KIND.get(alert.kind, "overview"),
        critical=alert.kind in CRITICAL_KINDS,
    )


class Notifier(QObject):
    """Announces each alert that is due, through `sink` (the tray's balloon)."""

    def __init__(self, ui: UiContext, sink: Callable[[Notice], None] | None, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.ui = ui
        self.sink = sink
        self.shown: list[Notice] = []  # what was announced this session (tests and the log read it)
        # A bound method of a QObject: Qt queues the call onto this object's (the GUI) thread.
        ui.bridge.job_finished.connect(self.on_finished)
        self._timer = QTimer(self)
        self._timer.setInterval(ANNOUNCE_MS)
        self._timer.timeout.connect(self.announce)
        self._timer.start()
        self._stopped = False

    def stop(self) -> None:
        """The app is shutting down: announce nothing more (the window and the tray are going)."""
        self._stopped = True
        self._timer.stop()

    def _records_alerts_itself(self) -> bool:
        """Without a schedule in this window or a service to attach to, nobody else turns runs into alerts."""
        schedule = self.ui.schedule
        return schedule is None or (schedule.host is None and not schedule.attached)

    def now(self) -> datetime:
        schedule = self.ui.schedule
        return schedule.clock.now() if schedule is not None else datetime.now(UTC)

    def on_finished(self, outcome: JobOutcome) -> None:
        if self._stopped:
            return
        if self._records_alerts_itself():
            try:
                AlertBook(self.ui.app.settings).observe(outcome, self.now())
            except Exception:  # the database is busy or broken: the status says so; nothing to announce
                log.exception("could not update the alerts")
        self.announce()

    def announce(self) -> None:
        """Pass every alert due now to the sink (new ones once, lasting ones at most once a day). With
        notifications turned off nothing is taken, so they are still due when turned on again."""
        if self._stopped:
            return
        try:
            if self._records_alerts_itself():
                AlertBook(self.ui.app.settings).refresh(self.now())  # review items settled meanwhile
            if not self.ui.app.settings.get("alerts.notify"):
                return
            due = alerts.take_due_notices(self.now())
        except Exception:
            log.exception("could not read the alerts")
            return
        for alert in due:
            notice = notice_of(alert)
            self.shown.append(notice)
            if self.sink is not None:
                self.sink(notice)


def active_notices() -> list[Notice]:
    """Every alert that lasts, as the window lists them (oldest first)."""
    return [notice_of(alert) for alert in alerts.active_alerts()]
