"""Settings: pause; which records are checked on schedule and how often; the full comparison's schedule; start
at login; notifications; what to do with an email match; where this profile keeps its files.

Every change is stored at once and applies without a restart: the schedule reads the settings on its next tick
and rebuilds its jobs (clinicsync.sync.scheduler). The shortest interval offered is the scheduler's own rule
(`shortest_interval`), so the form never offers what the schedule would not do. A setting given to ClinicSync when
it was started cannot be changed here; its control is disabled and says so. A stream that cannot run in this setup
(its source not connected, the setting that switches it on off) keeps its schedule switch, disabled, with the
engine's reason under it (clinicsync.sync.service.why_not_running), until what it waits for is done.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from PySide6.QtCore import Qt, QTime
from PySide6.QtGui import QShowEvent
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFormLayout,
    QFrame,
    QGroupBox,
    QLabel,
    QScrollArea,
    QSpinBox,
    QStyle,
    QTimeEdit,
    QVBoxLayout,
    QWidget,
)

from clinicsync import autostart, labels
from clinicsync.mapping.transforms import DEFAULT_TIME_ZONE
from clinicsync.store import reconciliation
from clinicsync.store.settings import SPECS_BY_KEY, WEEKDAYS, SettingError
from clinicsync.streams import STREAMS
from clinicsync.streams.cliniko_invoice_mirror import MIRROR_SETTING
from clinicsync.sync.runner import is_paused
from clinicsync.sync.scheduler import scheduled_streams, shortest_interval
from clinicsync.sync.service import connected_sources, why_not_running
from clinicsync.ui.context import UiContext
from clinicsync.ui.status import StatusTracker

log = logging.getLogger(__name__)

FREQUENCIES = (("daily", "Every day"), ("weekly", "Once a week"), ("off", "Never (only when I start one)"))
EMAIL_MATCH = (("auto_link", "Link them automatically"), ("review", "Ask me first (Review)"))
USUAL_INTERVAL = "the usual interval"
LINKING = "streams.cliniko.invoices.enabled"  # invoices ↔ payments (on by default; a person may turn it off)
FROM_START = "Given to ClinicSync when it was started, so it can't be changed here."


def schedulable_streams() -> list[str]:
    """Streams that have an on/off schedule setting, in the order the window lists streams."""
    return [name for name in STREAMS if f"schedule.{name}.enabled" in SPECS_BY_KEY]


class SettingsTab(QWidget):
    def __init__(self, ui: UiContext, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.ui = ui
        self.tracker = ui.status or StatusTracker(ui.runner, ui.bridge, ui.app.settings, self)
        self._controls: dict[str, QWidget] = {}  # setting key → its control (disabled when the environment sets it)
        self._loading = False
        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setFrameShape(QFrame.Shape.NoFrame)
        page = QWidget()
        layout = QVBoxLayout(page)
        scroll.setWidget(page)
        outer.addWidget(scroll)

        self.message = QLabel(wordWrap=True, textFormat=Qt.TextFormat.PlainText)
        self.message.setObjectName("settings-message")
        self.message.setVisible(False)
        layout.addWidget(self.message)

        sync_box = QGroupBox("Syncing")
        sync_form = QFormLayout(sync_box)
        self.pause_box = QCheckBox("Pause syncing (nothing is sent to Stripe until you untick this)")
        self.pause_box.toggled.connect(self._pause_toggled)
        sync_form.addRow(self.pause_box)
        self.env_note = QLabel(wordWrap=True)
        sync_form.addRow(self.env_note)
        layout.addWidget(sync_box)

        layout.addWidget(self._schedule_box())
        layout.addWidget(self._reconcile_box())
        layout.addWidget(self._start_box())
        layout.addWidget(self._notify_box())
        layout.addWidget(self._matching_box())
        layout.addWidget(self._invoices_box())

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

    # --- building ---------------------------------------------------------------------------------------------
    def _schedule_box(self) -> QGroupBox:
        box = QGroupBox("Checking for changes")
        form = QFormLayout(box)
        self.stream_boxes: dict[str, QCheckBox] = {}
        self.stream_reasons: dict[str, QLabel] = {}  # why the stream cannot run, shown while it cannot
        self.stream_intervals: dict[str, QSpinBox] = {}
        for stream in schedulable_streams():
            check = QCheckBox(f"Check {labels.stream_source(stream)} for changes on a schedule")
            check.toggled.connect(lambda on, key=f"schedule.{stream}.enabled": self._store(key, on))
            self.stream_boxes[stream] = check
            self._controls[f"schedule.{stream}.enabled"] = check
            form.addRow(check)
            reason = QLabel(wordWrap=True, textFormat=Qt.TextFormat.PlainText)
            reason.setObjectName("stream-not-running")
            reason.setIndent(_box_text_indent(check))  # under the switch's words, not its box
            reason.setVisible(False)
            self.stream_reasons[stream] = reason
            form.addRow(reason)
            key = f"schedule.{stream}.interval_seconds"
            if key in SPECS_BY_KEY:
                own = QSpinBox()
                own.setSuffix(" seconds")
                own.setSpecialValueText(USUAL_INTERVAL)  # shown at the minimum: 0, the shared interval
                own.setMaximum(int(SPECS_BY_KEY[key].maximum or 86_400))
                own.setKeyboardTracking(False)
                own.valueChanged.connect(lambda value, k=key, box=own: self._store(k, _own_value(box, value)))
                self.stream_intervals[stream] = own
                self._controls[key] = own
                form.addRow(f"  {labels.stream_noun(stream).capitalize()} every:", own)
        self.interval_box = QSpinBox()
        self.interval_box.setSuffix(" seconds")
        self.interval_box.setMaximum(int(SPECS_BY_KEY["schedule.interval_seconds"].maximum or 86_400))
        self.interval_box.setKeyboardTracking(False)  # store the number typed, not every digit of it
        self.interval_box.valueChanged.connect(lambda value: self._store("schedule.interval_seconds", value))
        self._controls["schedule.interval_seconds"] = self.interval_box
        form.addRow("Usually every:", self.interval_box)
        self.interval_note = QLabel(wordWrap=True)
        form.addRow(self.interval_note)
        return box

    def _reconcile_box(self) -> QGroupBox:
        box = QGroupBox("Full comparison of Stripe with your clinic")
        form = QFormLayout(box)
        self.frequency_box = QComboBox()
        for value, text in FREQUENCIES:
            self.frequency_box.addItem(text, value)
        self.frequency_box.currentIndexChanged.connect(
            lambda _i: self._store("schedule.reconcile.frequency", self.frequency_box.currentData())
        )
        self._controls["schedule.reconcile.frequency"] = self.frequency_box
        form.addRow("Compare:", self.frequency_box)
        self.day_box = QComboBox()
        for day in WEEKDAYS:
            self.day_box.addItem(day.capitalize(), day)
        self.day_box.currentIndexChanged.connect(
            lambda _i: self._store("schedule.reconcile.day", self.day_box.currentData())
        )
        self._controls["schedule.reconcile.day"] = self.day_box
        form.addRow("On:", self.day_box)
        self.time_box = QTimeEdit()
        self.time_box.setDisplayFormat("HH:mm")
        self.time_box.setKeyboardTracking(False)
        self.time_box.timeChanged.connect(lambda t: self._store("schedule.reconcile.time", t.toString("HH:mm")))
        self._controls["schedule.reconcile.time"] = self.time_box
        form.addRow("At (this computer's clock):", self.time_box)
        form.addRow(
            QLabel(
                "It reads both sides in full and lists what disagrees; nothing is changed until you choose a fix. "
                "If the computer was off or asleep at that time, it runs once when ClinicSync next starts.",
                wordWrap=True,
            )
        )
        return box

    def _start_box(self) -> QGroupBox:
        box = QGroupBox("Starting")
        form = QFormLayout(box)
        self.login_box = QCheckBox("Start ClinicSync when I log in (it starts in the tray)")
        self.login_box.toggled.connect(self._login_toggled)
        form.addRow(self.login_box)
        return box

    def _notify_box(self) -> QGroupBox:
        box = QGroupBox("Notifications")
        form = QFormLayout(box)
        self.notify_box = QCheckBox("Show a notification when something needs me")
        self.notify_box.toggled.connect(lambda on: self._store("alerts.notify", on))
        self._controls["alerts.notify"] = self.notify_box
        form.addRow(self.notify_box)
        self.outage_box = QSpinBox()
        spec = SPECS_BY_KEY["alerts.outage_minutes"]
        self.outage_box.setRange(int(spec.minimum or 1), int(spec.maximum or 10_080))
        self.outage_box.setSuffix(" minutes")
        self.outage_box.setKeyboardTracking(False)
        self.outage_box.valueChanged.connect(lambda value: self._store("alerts.outage_minutes", value))
        self._controls["alerts.outage_minutes"] = self.outage_box
        form.addRow("Tell me when Cliniko or Stripe can't be reached for:", self.outage_box)
        form.addRow(
            QLabel(
                "Only what needs a person is announced: a refused key, records to review, a sync that keeps "
                "failing, differences found by the full comparison. A problem the next sync fixes is not.",
                wordWrap=True,
            )
        )
        return box

    def _matching_box(self) -> QGroupBox:
        box = QGroupBox("Matching patients to Stripe customers")
        form = QFormLayout(box)
        self.email_box = QComboBox()
        for value, text in EMAIL_MATCH:
            self.email_box.addItem(text, value)
        self.email_box.currentIndexChanged.connect(
            lambda _i: self._store("sync.email_match", self.email_box.currentData())
        )
        self._controls["sync.email_match"] = self.email_box
        form.addRow("When a patient's email matches one Stripe customer:", self.email_box)
        self.zone_label = QLabel(wordWrap=True, textFormat=Qt.TextFormat.PlainText)
        self.zone_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        form.addRow("The clinic's time zone:", self.zone_label)
        return box

    def _invoices_box(self) -> QGroupBox:
        box = QGroupBox("Cliniko invoices in Stripe")
        form = QFormLayout(box)
        self.linking_box = QCheckBox(labels.STREAM_SWITCHES[LINKING])
        self.linking_box.toggled.connect(lambda on: self._store(LINKING, on))
        self._controls[LINKING] = self.linking_box
        form.addRow(self.linking_box)
        form.addRow(
            QLabel(
                "The payment gets the invoice's number and status in Stripe; only payments that are certainly the "
                "invoice's are linked, the others wait for your decision in Review. Nothing else is changed.",
                wordWrap=True,
            )
        )
        self.mirror_box = QCheckBox(labels.STREAM_SWITCHES[MIRROR_SETTING])
        self.mirror_box.toggled.connect(lambda on: self._store(MIRROR_SETTING, on))
        self._controls[MIRROR_SETTING] = self.mirror_box
        form.addRow(self.mirror_box)
        form.addRow(
            QLabel(
                "Each invoice's lines, total and status are copied (never its notes); Stripe is told never to email "
                "patients about them. Before turning this on, check the customer email settings in the Stripe "
                "Dashboard (Settings → Customer emails). On a live Stripe account, the first sync shows what it "
                "will make for your approval before anything is written.",
                wordWrap=True,
            )
        )
        return box

    # --- showing ----------------------------------------------------------------------------------------------
    def refresh(self) -> None:
        self._loading = True
        try:
            self._refresh()
        finally:
            self._loading = False

    def _refresh(self) -> None:
        app = self.ui.app  # read each time: the first-run sandbox trial switches profiles
        settings = app.settings
        self.path_labels["Database"].setText(str(app.paths.db_path))
        self.path_labels["Logs"].setText(str(app.paths.log_file))
        item = settings.lookup("sync.paused")
        _quietly(self.pause_box, lambda: self.pause_box.setChecked(is_paused(settings)))
        from_env = item.source == "environment"
        self.pause_box.setEnabled(not from_env)
        self.env_note.setVisible(from_env)
        self.env_note.setText(
            "Pausing was set when ClinicSync was started, so it can't be changed here; start it without that setting "
            "to change it."
        )
        values = {key: settings.lookup(key) for key in self._controls}
        for stream, check in self.stream_boxes.items():
            _quietly(check, lambda c=check, s=stream: c.setChecked(bool(values[f"schedule.{s}.enabled"].value)))
        _quietly(self.frequency_box, lambda: _select(self.frequency_box, values["schedule.reconcile.frequency"].value))
        _quietly(self.day_box, lambda: _select(self.day_box, values["schedule.reconcile.day"].value))
        moment = QTime.fromString(values["schedule.reconcile.time"].value, "H:mm")
        _quietly(self.time_box, lambda: self.time_box.setTime(moment))
        _quietly(self.notify_box, lambda: self.notify_box.setChecked(bool(values["alerts.notify"].value)))
        _quietly(self.outage_box, lambda: self.outage_box.setValue(int(values["alerts.outage_minutes"].value)))
        _quietly(self.email_box, lambda: _select(self.email_box, values["sync.email_match"].value))
        _quietly(self.mirror_box, lambda: self.mirror_box.setChecked(bool(values[MIRROR_SETTING].value)))
        _quietly(self.linking_box, lambda: self.linking_box.setChecked(bool(values[LINKING].value)))
        for key, control in self._controls.items():
            given = values[key].source == "environment"
            if key != "schedule.reconcile.day" and key != "schedule.reconcile.time":
                control.setEnabled(not given)
            control.setToolTip(FROM_START if given else "")
        connected = connected_sources(app.secrets)
        self._show_not_running(connected)  # after the loop: a stream that cannot run has its switch off too
        self._show_interval(connected)  # with nothing on a schedule, the interval box is off too
        weekly = values["schedule.reconcile.frequency"].value == "weekly"
        off = values["schedule.reconcile.frequency"].value == "off"
        self.day_box.setEnabled(weekly and values["schedule.reconcile.day"].source != "environment")
        self.time_box.setEnabled(not off and values["schedule.reconcile.time"].source != "environment")
        try:
            enabled = autostart.is_enabled(app.paths)
        except Exception as exc:  # an unreadable entry: show it off, and say why
            log.warning("could not read the start-at-login entry: %s", exc)
            enabled = False
        _quietly(self.login_box, lambda: self.login_box.setChecked(enabled))
        self.zone_label.setText(clinic_zone_words())

    def _show_not_running(self, connected: tuple[str, ...]) -> None:
        """Each schedule switch of a stream that cannot run in this setup: disabled, with the engine's reason under
        it (the stored choice is kept and shown, and counts again once the stream can run)."""
        settings = self.ui.app.settings
        for stream, check in self.stream_boxes.items():
            try:
                why = why_not_running(settings, stream, connected)
            except SettingError:  # a damaged switch: the sync says so when it runs
                why = None
            words = ""
            if why is not None:
                words = labels.not_running_words(why.source, why.setting, given_at_start=why.given_at_start)
                check.setEnabled(False)
                check.setToolTip(words)
            self.stream_reasons[stream].setText(words)
            self.stream_reasons[stream].setVisible(bool(words))

    def _show_interval(self, connected: tuple[str, ...]) -> None:
        settings = self.ui.app.settings
        try:
            streams = scheduled_streams(settings, connected)
        except SettingError:
            streams = []
        floor = shortest_interval(streams)
        for stream, own in self.stream_intervals.items():
            key = f"schedule.{stream}.interval_seconds"
            seconds = int(settings.lookup(key).value)
            own.blockSignals(True)
            own.setMinimum(floor - 1)  # the minimum shows as "the usual interval"
            own.setValue(max(floor, seconds) if seconds else floor - 1)
            own.blockSignals(False)
            scheduled = stream in streams and settings.lookup(key).source != "environment"
            own.setEnabled(scheduled)
        value = settings.lookup("schedule.interval_seconds").value
        self.interval_box.blockSignals(True)
        self.interval_box.setMinimum(floor)
        self.interval_box.setValue(max(floor, int(value)))
        self.interval_box.blockSignals(False)
        self.interval_box.setEnabled(
            bool(streams) and settings.lookup("schedule.interval_seconds").source != "environment"
        )
        if not streams:
            self.interval_note.setText("Nothing is checked on a schedule: ClinicSync syncs when you press Sync now.")
        else:
            self.interval_note.setText(
                f"At least {floor} seconds, so checking stays well within what Cliniko and Stripe allow."
            )

    # --- changing ---------------------------------------------------------------------------------------------
    def _store(self, key: str, value: Any) -> None:
        if self._loading:
            return
        try:
            self.ui.app.settings.set(key, value)
        except SettingError as exc:
            self._say(labels.for_gui(exc))
            return
        self._say("")
        self._applied()

    def _applied(self) -> None:
        """The schedule reads the settings on its next tick; ask for that tick now, and let others re-read."""
        schedule = self.ui.schedule
        if schedule is not None:
            schedule.settings_changed()
        self.tracker.stored_changed()  # refreshes this tab too (and the Overview's next runs)

    def _pause_toggled(self, checked: bool) -> None:
        self.tracker.set_paused(checked)

    def _login_toggled(self, checked: bool) -> None:
        if self._loading:
            return
        paths = self.ui.app.paths
        try:
            if checked:
                autostart.enable(paths)
            else:
                autostart.disable(paths)
        except Exception as exc:  # a read-only folder, a policy: say so, leave the box as it really is
            log.warning("could not change the start-at-login entry: %s", exc)
            self._say(f"Starting at login could not be changed: {labels.for_gui(exc)}")
            self.refresh()
            return
        self._say("")

    def _say(self, text: str) -> None:
        self.message.setText(text)
        self.message.setVisible(bool(text))

    def showEvent(self, event: QShowEvent) -> None:
        super().showEvent(event)
        self.refresh()


def _quietly(widget: QWidget, change: Callable[[], None]) -> None:
    """Show a stored value without it counting as a person's change."""
    widget.blockSignals(True)
    try:
        change()
    finally:
        widget.blockSignals(False)


def clinic_zone_words() -> str:
    """The clinic's time zone as ClinicSync last read it from Cliniko (the latest full comparison records it);
    Cliniko's default market's until then. Shown, not set here: Cliniko's own setting is the one source."""
    try:
        latest = reconciliation.reports(limit=1)
    except Exception:  # the database is busy: say what is certain
        latest = []
    if latest and latest[0].time_zone:
        return f"{latest[0].time_zone} (as ClinicSync last read it from Cliniko)"
    return f"{DEFAULT_TIME_ZONE} until ClinicSync has read the clinic's own from Cliniko"


def _box_text_indent(check: QCheckBox) -> int:
    """How far a tick box's words start from its left edge (its box and the gap after it), in this style."""
    style = check.style()
    return style.pixelMetric(QStyle.PixelMetric.PM_IndicatorWidth, None, check) + style.pixelMetric(
        QStyle.PixelMetric.PM_CheckBoxLabelSpacing, None, check
    )


def _own_value(box: QSpinBox, value: int) -> int:
    """A stream's own interval as stored: its box at the minimum (shown as the usual interval) is 0."""
    return 0 if value == box.minimum() else value


def _select(combo: QComboBox, value: object) -> None:
    index = combo.findData(value)
    if index >= 0:
        combo.setCurrentIndex(index)
