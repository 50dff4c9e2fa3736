"""Settings (minimal for now): pause syncing, and where this profile keeps its files. Schedules, start at login
and notification choices come with the scheduler."""

from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtGui import QShowEvent
from PySide6.QtWidgets import QCheckBox, QFormLayout, QGroupBox, QLabel, QVBoxLayout, QWidget

from clinicsync.sync.runner import is_paused
from clinicsync.ui.context import UiContext
from clinicsync.ui.status import StatusTracker


class SettingsTab(QWidget):
    def __init__(self, ui: UiContext, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.ui = ui
        self.tracker = ui.status or StatusTracker(ui.runner, ui.bridge, ui.app.settings, self)
        layout = QVBoxLayout(self)

        sync_box = QGroupBox("Syncing")
        sync_form = QFormLayout(sync_box)
        self.pause_box = QCheckBox("Pause syncing (nothing is sent to Stripe until you untick this)")
        self.pause_box.toggled.connect(self._pause_toggled)
        sync_form.addRow(self.pause_box)
        self.env_note = QLabel(wordWrap=True)
        sync_form.addRow(self.env_note)
        login = QCheckBox("Start ClinicSync when I log in (coming with scheduled syncs)")
        login.setEnabled(False)
        sync_form.addRow(login)
        layout.addWidget(sync_box)

        where = QGroupBox("Where ClinicSync keeps its files")
        where_form = QFormLayout(where)
        self.path_labels: dict[str, QLabel] = {}
        for label in ("Database", "Logs"):
            value = self.path_labels[label] = QLabel()
            value.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
            where_form.addRow(label + ":", value)
        where_form.addRow(QLabel("API keys are kept in the system keyring, never in these files.", wordWrap=True))
        layout.addWidget(where)
        layout.addStretch(1)

        self.tracker.changed.connect(self.refresh)
        self.refresh()

    def refresh(self) -> None:
        paths = self.ui.app.paths  # read each time: the first-run sandbox trial switches profiles
        self.path_labels["Database"].setText(str(paths.db_path))
        self.path_labels["Logs"].setText(str(paths.log_file))
        item = self.ui.app.settings.lookup("sync.paused")
        self.pause_box.blockSignals(True)
        self.pause_box.setChecked(is_paused(self.ui.app.settings))
        self.pause_box.blockSignals(False)
        from_env = item.source == "environment"
        self.pause_box.setEnabled(not from_env)
        self.env_note.setVisible(from_env)
        self.env_note.setText(
            "Pausing was set when ClinicSync was started, so it can't be changed here; start it without that setting "
            "to change it."
        )

    def _pause_toggled(self, checked: bool) -> None:
        self.tracker.set_paused(checked)

    def showEvent(self, event: QShowEvent) -> None:
        super().showEvent(event)
        self.refresh()
