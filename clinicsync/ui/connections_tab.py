"""Connections: the API keys (OS keyring only, shown masked), the few connection settings, and a "Test
connection" per service that runs off the GUI thread and says exactly what is wrong.

A key typed here goes from the edit field straight to `secrets.set` (the keyring) and the field is cleared; it
is never written back into a widget, a setting or the log. Keys set in the environment are shown as such and
cannot be edited here. A keyring that can't be used is shown with its own message (what to install); there is
no plaintext fallback.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QShowEvent
from PySide6.QtWidgets import (
    QComboBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QMessageBox,
    QPushButton,
    QScrollArea,
    QVBoxLayout,
    QWidget,
)

from clinicsync import connections, labels
from clinicsync.connections import ConnectionReport
from clinicsync.secrets import (
    CALCOM_API_KEY,
    CLINIKO_API_KEY,
    STRIPE_API_KEY,
    SecretStoreError,
)
from clinicsync.store.settings import SettingError
from clinicsync.ui.background import Outcome, run_in_background
from clinicsync.ui.context import UiContext
from clinicsync.ui.first_run import TrialBox
from clinicsync.ui.status import is_loopback
from clinicsync.ui.webhook_box import WebhookBox

# Explicit (background, text) pairs: readable in the light and the dark Fusion palette alike.
BADGE_COLOURS = {"TEST": ("#f59e0b", "#1f2937"), "LIVE": ("#15803d", "#ffffff")}
OK_STYLE = "color: #15803d; font-weight: bold;"
ERROR_STYLE = "color: #b91c1c; font-weight: bold;"
CALCOM_REGION_LABELS = (("cloud", "Cal.com (cloud)"), ("eu", "Cal.com EU (cal.eu)"), ("self_hosted", "Self-hosted"))


ConfirmRemove = Callable[[QWidget, str], bool]  # (parent, service) → the person said yes


def confirm_remove_dialog(parent: QWidget, service: str) -> bool:
    """A key removed by a slip of the mouse stops every sync, and pasting it back means finding it again."""
    answer = QMessageBox.question(
        parent,
        f"Remove the {service} key?",
        f"Remove the {service} API key from this computer's keyring?\n\nClinicSync can't sync with {service} until "
        "a key is saved here again.",
        QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No,
        QMessageBox.StandardButton.No,
    )
    return answer == QMessageBox.StandardButton.Yes


@dataclass(frozen=True)
class KeyState:
    """Where a key comes from and how it may be shown; `error` when the keyring could not be asked."""

    source: str | None  # "environment", "keyring" or None
    masked: str = ""
    error: str = ""

    def describe(self, *, sandbox: bool = False) -> str:
        """In words; a key the process was given (not saved by ClinicSync) says where it came from: the sandbox
        clinic, or whoever started ClinicSync (never an environment variable's name)."""
        if self.error:
            return self.error
        if self.source == "environment" and sandbox:
            return f"Provided by the sandbox clinic: {self.masked}. It can't be changed here."
        if self.source == "environment":
            return f"Given to ClinicSync when it was started: {self.masked}. It can't be changed here."
        if self.source == "keyring":
            return f"Saved in the OS keyring: {self.masked}"
        return "No key saved yet."


def read_key_state(ui: UiContext, name: str) -> tuple[KeyState, str | None]:
    """The key's state and value, read on the GUI thread (some keyrings must not be used from workers)."""
    try:
        source = ui.app.secrets.source(name)
        value = ui.app.secrets.get(name) if source else None
    except SecretStoreError as exc:
        return KeyState(None, error=labels.for_gui(exc)), None
    return KeyState(source, connections.mask_key(value)), value


def report_text(report: ConnectionReport) -> str:
    lines = [("✓ " if report.ok else "✗ ") + report.message]
    lines += list(report.notes)
    return "\n".join(lines)


class ServiceBox(QGroupBox):
    """One service: its key (masked), its settings, Save, Test connection and the result."""

    saved = Signal(str)  # the secret name
    tested = Signal(object)  # ConnectionReport

    secret_name: str = ""
    title_text: str = ""
    key_hint: str = ""
    base_url_setting: str = ""  # the service's address setting: a loopback one is the sandbox's

    def __init__(self, ui: UiContext, parent: QWidget | None = None) -> None:
        super().__init__(self.title_text, parent)
        self.ui = ui
        self.confirm_remove: ConfirmRemove = confirm_remove_dialog  # injectable: tests answer without a dialog
        self._key_state = KeyState(None)
        self._stored_key: str | None = None
        self.form = QFormLayout()
        self.key_edit = QLineEdit()
        self.key_edit.setEchoMode(QLineEdit.EchoMode.Password)  # shoulder-surfing; also never shows a saved key
        self.key_edit.setClearButtonEnabled(True)
        self.key_state_label = QLabel(wordWrap=True, textFormat=Qt.TextFormat.PlainText)
        self.key_state_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.form.addRow("API key", self.key_edit)
        self.form.addRow("", self.key_state_label)
        self.add_fields()

        self.save_button = QPushButton("Save")
        self.remove_button = QPushButton("Remove key")
        self.test_button = QPushButton("Test connection")
        self.save_button.clicked.connect(self.save)
        self.remove_button.clicked.connect(self.remove_key)
        self.test_button.clicked.connect(self.test_connection)
        buttons = QHBoxLayout()
        buttons.addWidget(self.save_button)
        buttons.addWidget(self.remove_button)
        buttons.addStretch(1)
        buttons.addWidget(self.test_button)

        self.badge = QLabel()
        self.badge.setObjectName("mode-badge")
        self.badge.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.badge.hide()
        # Plain text: a test's report names the remote account and quotes the service's own error messages.
        self.result_label = QLabel(wordWrap=True, textFormat=Qt.TextFormat.PlainText)
        self.result_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        result_row = QHBoxLayout()
        result_row.addWidget(self.badge, 0, Qt.AlignmentFlag.AlignTop)
        result_row.addWidget(self.result_label, 1)

        layout = QVBoxLayout(self)
        layout.addLayout(self.form)
        layout.addLayout(buttons)
        layout.addLayout(result_row)
        self.refresh()

    # --- per service ----------------------------------------------------------------------------------
    def add_fields(self) -> None:
        """Add the service's settings rows to self.form."""

    def load_fields(self) -> None:
        """Show the stored settings."""

    def save_fields(self) -> None:
        """Store the settings (raises SettingError with a message for the person)."""

    def make_test(self, key: str) -> Callable[[], ConnectionReport]:
        """The test to run off the GUI thread; every value it needs is read here, on the GUI thread."""
        raise NotImplementedError

    # --- state ------------------------------------------------------------------------------------------
    def refresh(self, *, fields: bool = True) -> None:
        """Show the key's state; with `fields`, also reload the settings (discarding unsaved edits)."""
        self._key_state, self._stored_key = read_key_state(self.ui, self.secret_name)
        from_env = self._key_state.source == "environment"
        self.key_state_label.setText(self._key_state.describe(sandbox=self.is_sandbox()))
        self.key_state_label.setStyleSheet(ERROR_STYLE if self._key_state.error else "")
        self.key_edit.setEnabled(not from_env)
        self.key_edit.setPlaceholderText(
            labels.configured_outside(self.is_sandbox())
            if from_env
            else ("Paste a new key to replace the saved one" if self._stored_key else self.key_hint)
        )
        self.remove_button.setEnabled(self._key_state.source == "keyring")
        if fields:
            self.load_fields()

    def is_sandbox(self) -> bool:
        """Whether this service is the sandbox clinic's (the first-run trial, or a loopback address)."""
        address = self.ui.app.settings.get(self.base_url_setting) if self.base_url_setting else ""
        return self.ui.sandbox is not None or is_loopback(address or "")

    def setting_editable(self, key: str, widget: QWidget) -> bool:
        """Settings given in the environment win over stored ones, so editing them here would do nothing."""
        from_env = self.ui.app.settings.lookup(key).source == "environment"
        widget.setEnabled(not from_env)
        widget.setToolTip(
            f"{labels.configured_outside(self.is_sandbox())}; it can't be changed here" if from_env else ""
        )
        return not from_env

    def typed_key(self) -> str:
        return self.key_edit.text().strip()

    # --- actions ----------------------------------------------------------------------------------------
    def save(self) -> None:
        """Store a typed key in the keyring (and nowhere else) and the settings in the database."""
        try:
            self.save_fields()
        except SettingError as exc:
            self.show_error(labels.for_gui(exc))
            return
        key = self.typed_key()
        if key:
            try:
                self.ui.app.secrets.set(self.secret_name, key)
            except (SecretStoreError, ValueError) as exc:
                # It names the backend and what to install; the typed key stays in the field so the person can
                # try again after fixing the keyring.
                self.show_error(labels.for_gui(exc))
                return
            self.key_edit.clear()
        self.refresh()
        self.show_result("Saved." + (" Use Test connection to check it." if key else ""), ok=True)
        self.tell_status()
        self.saved.emit(self.secret_name)

    def remove_key(self) -> None:
        """Remove the saved key, once the person has said yes."""
        if not self.confirm_remove(self, self.title_text):
            return
        try:
            self.ui.app.secrets.delete(self.secret_name)
        except SecretStoreError as exc:
            self.show_error(labels.for_gui(exc))
            return
        self.refresh()
        self.show_result("The key was removed from the OS keyring.", ok=True)
        self.tell_status()
        self.saved.emit(self.secret_name)

    def tell_status(self) -> None:
        """After a save or a removal (and the refresh that read the key now in effect): the status tracker
        forgets a broken connection, so the banner and the tray stop blaming the old key."""
        if self.ui.status is not None:
            self.ui.status.connections_changed()

    def test_connection(self) -> None:
        """Test the typed key, or the saved one; the requests run on a worker thread."""
        key = self.typed_key() or self._stored_key or ""
        if self._key_state.error and not key:
            self.show_error(self._key_state.error)
            return
        try:
            test = self.make_test(key)
        except SettingError as exc:
            self.show_error(str(exc))
            return
        self.test_button.setEnabled(False)
        self.badge.hide()
        self.result_label.setStyleSheet("")
        self.result_label.setText("Testing the connection…")
        run_in_background(test, self._tested, owner=self)

    def _tested(self, outcome: Outcome) -> None:
        self.test_button.setEnabled(True)
        if not outcome.ok:  # a bug, not a connection problem: those come back as reports
            self.show_error(f"The test could not run: {type(outcome.error).__name__}: {labels.for_gui(outcome.error)}")
            return
        report: ConnectionReport = outcome.value
        self.show_report(report)
        self.tested.emit(report)

    # --- display ----------------------------------------------------------------------------------------
    def show_report(self, report: ConnectionReport) -> None:
        self.show_result(report_text(report), ok=report.ok)
        label = report.mode_label
        if label is None:
            self.badge.hide()
            return
        background, text = BADGE_COLOURS[label]
        self.badge.setText(f"{label} MODE" if label == "TEST" else label)
        self.badge.setStyleSheet(
            f"QLabel#mode-badge {{ background: {background}; color: {text}; font-weight: bold; "
            "padding: 3px 10px; border-radius: 4px; }"
        )
        self.badge.show()

    def show_result(self, text: str, *, ok: bool) -> None:
        self.result_label.setText(text)
        self.result_label.setStyleSheet(OK_STYLE if ok else ERROR_STYLE)

    def show_error(self, text: str) -> None:
        self.badge.hide()
        self.show_result("✗ " + text, ok=False)


class ClinikoBox(ServiceBox):
    secret_name = CLINIKO_API_KEY
    title_text = "Cliniko"
    base_url_setting = "cliniko.base_url"
    key_hint = "Cliniko: My Info → Manage API keys"

    def add_fields(self) -> None:
        self.shard_combo = QComboBox()
        self.shard_combo.setEditable(True)  # a new shard must not need a new ClinicSync
        self.shard_combo.addItems(connections.KNOWN_SHARDS)
        self.shard_note = QLabel(wordWrap=True, textFormat=Qt.TextFormat.PlainText)
        self.email_edit = QLineEdit()
        self.email_edit.setPlaceholderText("manager@yourclinic.com.au")
        self.address_label = QLabel(wordWrap=True, textFormat=Qt.TextFormat.PlainText)
        self.form.addRow("Shard", self.shard_combo)
        self.form.addRow("", self.shard_note)
        self.form.addRow("Contact email", self.email_edit)
        self.form.addRow("", QLabel("Cliniko asks every app for a contact email; it is sent with each request."))
        self.form.addRow("", self.address_label)
        self.key_edit.textChanged.connect(self._show_shard_source)

    def load_fields(self) -> None:
        settings = self.ui.app.settings
        # lookup().value: an unusable stored value shows as the default here; a sync refuses it, naming it.
        self.shard_combo.setCurrentText(settings.lookup("cliniko.shard").value)
        self.email_edit.setText(settings.lookup("contact_email").value)
        self.setting_editable("contact_email", self.email_edit)
        base_url = settings.lookup("cliniko.base_url").value
        self.address_label.setText(f"Address: {base_url}" if base_url else "")
        self.address_label.setVisible(bool(base_url))
        self._show_shard_source()

    def _show_shard_source(self) -> None:
        """Keys ending in -au2 etc. name their shard; the setting only matters for keys without one."""
        from_key = connections.key_shard(self.typed_key() or self._stored_key)
        editable = self.setting_editable("cliniko.shard", self.shard_combo)
        if from_key:
            self.shard_combo.setEnabled(False)
            self.shard_note.setText(f"The key's ending sets the shard: {from_key}.")
        else:
            self.shard_combo.setEnabled(editable)
            self.shard_note.setText("Only for keys without a region ending such as -au2.")

    def save_fields(self) -> None:
        settings = self.ui.app.settings
        if self.email_edit.isEnabled():
            settings.set("contact_email", self.email_edit.text().strip())
        if settings.lookup("cliniko.shard").source != "environment":
            settings.set("cliniko.shard", self.shard_combo.currentText().strip().lower())

    def make_test(self, key: str) -> Callable[[], ConnectionReport]:
        shard = self.shard_combo.currentText().strip().lower() or None
        email = self.email_edit.text().strip()
        base_url = self.ui.app.settings.lookup("cliniko.base_url").value or None
        return lambda: connections.test_cliniko(key, shard=shard, contact_email=email, base_url=base_url)


class StripeBox(ServiceBox):
    secret_name = STRIPE_API_KEY
    title_text = "Stripe"
    base_url_setting = "stripe.base_url"
    key_hint = "Secret key (sk_…) or restricted key (rk_…): Stripe Dashboard → Developers → API keys"

    def add_fields(self) -> None:
        self.address_label = QLabel(wordWrap=True, textFormat=Qt.TextFormat.PlainText)
        self.form.addRow(
            "", QLabel("A restricted key needs Customers: Write. The key's prefix decides TEST or LIVE mode.")
        )
        self.form.addRow("", self.address_label)

    def load_fields(self) -> None:
        base_url = self.ui.app.settings.lookup("stripe.base_url").value
        self.address_label.setText(f"Address: {base_url}" if base_url else "")
        self.address_label.setVisible(bool(base_url))

    def make_test(self, key: str) -> Callable[[], ConnectionReport]:
        base_url = self.ui.app.settings.lookup("stripe.base_url").value or None
        return lambda: connections.test_stripe(key, base_url=base_url)

    def tell_status(self) -> None:
        """The key's prefix decides TEST or LIVE: the Overview's badge follows the key now in effect (None when
        there is none) at once, not only after the next sync or a restart."""
        if self.ui.status is not None:
            self.ui.status.note_stripe_key(self._stored_key)
        super().tell_status()


class CalcomBox(ServiceBox):
    secret_name = CALCOM_API_KEY
    title_text = "Cal.com"
    base_url_setting = "calcom.base_url"
    key_hint = "Cal.com: Settings → Security → API keys (starts with cal_)"

    def add_fields(self) -> None:
        self.region_combo = QComboBox()
        for region, label in CALCOM_REGION_LABELS:
            self.region_combo.addItem(label, region)
        self.url_edit = QLineEdit()
        self.url_edit.setPlaceholderText("https://cal.yourclinic.com.au/api/v2")
        self.form.addRow("Where", self.region_combo)
        self.form.addRow("API address", self.url_edit)
        self.region_combo.currentIndexChanged.connect(self._region_changed)

    def load_fields(self) -> None:
        base_url = self.ui.app.settings.lookup("calcom.base_url").value
        region = connections.calcom_region(base_url)
        self.region_combo.setCurrentIndex(self.region_combo.findData(region))
        self.url_edit.setText(base_url if region == "self_hosted" else "")
        self._region_changed()

    def _region_changed(self) -> None:
        editable = self.setting_editable("calcom.base_url", self.region_combo)
        self_hosted = self.region_combo.currentData() == "self_hosted"
        self.url_edit.setEnabled(editable and self_hosted)
        if not self_hosted:
            self.url_edit.setText("")
            self.url_edit.setPlaceholderText(connections.CALCOM_REGIONS[self.region_combo.currentData()])

    def base_url(self) -> str:
        region = self.region_combo.currentData()
        if region == "self_hosted":
            return self.url_edit.text().strip()
        return "" if region == "cloud" else connections.CALCOM_REGIONS[region]

    def save_fields(self) -> None:
        if self.region_combo.isEnabled():
            if self.region_combo.currentData() == "self_hosted" and not self.base_url():
                raise SettingError("Enter the address of your Cal.com API (it ends in /v2).")
            self.ui.app.settings.set("calcom.base_url", self.base_url())

    def make_test(self, key: str) -> Callable[[], ConnectionReport]:
        base_url = self.base_url() or None
        return lambda: connections.test_calcom(key, base_url=base_url)


class ConnectionsTab(QWidget):
    """The Connections tab: Cliniko, Cal.com and Stripe, and Cal.com's booking notices."""

    keys_changed = Signal(str)  # a key was saved or removed (the secret name)
    connection_tested = Signal(object)  # ConnectionReport of any service

    def __init__(self, ui: UiContext, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.ui = ui
        self._loaded_app = ui.app  # whose settings the fields show (each box loaded them as it was built)
        self.cliniko = ClinikoBox(ui)
        self.calcom = CalcomBox(ui)
        self.stripe = StripeBox(ui)
        self.webhook = WebhookBox(ui)
        holder = QWidget()
        column = QVBoxLayout(holder)
        intro = QLabel(
            "API keys are kept in this computer's OS keyring (never in ClinicSync's files) and shown masked. "
            "Test connection checks a key without changing anything."
        )
        intro.setWordWrap(True)
        self.trial_box = TrialBox(ui)  # only while the app runs the sandbox trial
        self.leave_trial_requested = self.trial_box.leave_requested
        column.addWidget(self.trial_box)
        column.addWidget(intro)
        for box in self.boxes():
            column.addWidget(box)
            box.saved.connect(self.keys_changed)
            box.tested.connect(self.connection_tested)
        column.addWidget(self.webhook)
        column.addStretch(1)
        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setWidget(holder)
        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        outer.addWidget(scroll)

    def boxes(self) -> tuple[ServiceBox, ...]:
        return (self.cliniko, self.calcom, self.stripe)

    def refresh(self) -> None:
        """What the window calls when the tab comes to the front, and after a profile switch. Coming to the front
        only re-reads the keys' state (a key may have changed from the CLI meanwhile): settings being edited here
        are left alone, or switching tabs would throw the edits away. After a profile switch (the first-run
        sandbox trial) the fields are reloaded too: they belong to the other profile."""
        switched = self.ui.app is not self._loaded_app
        self._loaded_app = self.ui.app
        self.trial_box.refresh()
        for box in self.boxes():
            box.refresh(fields=switched)
        self.webhook.refresh(fields=switched)

    def showEvent(self, event: QShowEvent) -> None:
        # A key may have changed from the CLI meanwhile; settings being edited here are left alone.
        for box in self.boxes():
            box.refresh(fields=False)
        self.webhook.refresh(fields=False)
        super().showEvent(event)
