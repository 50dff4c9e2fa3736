"""Connections → Cal.com booking notices: a Cal.com server of the clinic's own tells ClinicSync about each booking
as it happens (clinicsync.sync.webhook), instead of waiting for the next check.

The manager turns it on, chooses which of this computer's addresses Cal.com reaches it at, and pastes the address
and the secret shown here into Cal.com. The secret is made here, kept in the OS keyring like the API keys, and
shown only when asked. Test sends a signed test notice to ClinicSync itself, off the GUI thread.
"""

from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtGui import QGuiApplication
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from clinicsync import labels
from clinicsync.secrets import CALCOM_WEBHOOK_SECRET, SecretStoreError
from clinicsync.store.settings import SPECS_BY_KEY, SettingError
from clinicsync.sync import webhook
from clinicsync.ui.background import Outcome, run_in_background
from clinicsync.ui.context import UiContext

OK_STYLE = "color: #15803d; font-weight: bold;"
ERROR_STYLE = "color: #b91c1c; font-weight: bold;"
EXPLANATION = (
    "ClinicSync checks Cal.com for new bookings every minute or so. If your clinic runs its own Cal.com server, "
    "Cal.com can instead tell ClinicSync about each booking the moment it is made. In Cal.com, open Settings → "
    "Developer → Webhooks, add a new webhook, and paste the address and the secret below. The regular checks "
    "carry on as well, so nothing is missed if a notice does not arrive."
)
NETWORK_NOTE = (
    "“This computer only” works when Cal.com runs on this same computer. If Cal.com runs on another computer or "
    "server, choose one of this computer's network addresses instead; your IT support may also need to let that "
    "port through this computer's firewall."
)
SEND_KEYS = "ClinicSync listens only while it is open or running in the background."


def address_label(address: str) -> str:
    if address == webhook.LOOPBACK:
        return f"{address} (this computer only)"
    return f"{address} (this computer on your network)"


class WebhookBox(QGroupBox):
    """Receiving Cal.com's booking notices: on/off, where, the address and secret to paste, and a test."""

    def __init__(self, ui: UiContext, parent: QWidget | None = None) -> None:
        super().__init__("Cal.com booking notices (your own Cal.com server)", parent)
        self.ui = ui
        self._secret: str | None = None
        self._secret_source: str | None = None
        explanation = QLabel(EXPLANATION, wordWrap=True)
        self.enabled_box = QCheckBox("Receive booking notices from Cal.com")
        self.address_combo = QComboBox()
        self.address_combo.setEditable(True)  # an address this list missed (a second network card) can be typed
        self.port_box = QSpinBox()
        spec = SPECS_BY_KEY["calcom.webhook.port"]
        self.port_box.setRange(int(spec.minimum or 1024), int(spec.maximum or 65535))
        self.port_box.setKeyboardTracking(False)
        network_note = QLabel(NETWORK_NOTE, wordWrap=True)
        self.url_edit = QLineEdit(readOnly=True)
        self.copy_url_button = QPushButton("Copy")
        self.secret_edit = QLineEdit(readOnly=True)
        self.secret_edit.setEchoMode(QLineEdit.EchoMode.Password)  # shown only when asked
        self.show_secret_box = QCheckBox("Show")
        self.copy_secret_button = QPushButton("Copy")
        self.new_secret_button = QPushButton("New secret")

        form = QFormLayout()
        form.addRow(self.enabled_box)
        form.addRow("Listen at", self.address_combo)
        form.addRow("Port", self.port_box)
        form.addRow("", network_note)
        form.addRow("Address for Cal.com", _row(self.url_edit, self.copy_url_button))
        form.addRow("Secret for Cal.com", _row(self.secret_edit, self.show_secret_box, self.copy_secret_button))
        form.addRow("", _row(self.new_secret_button, stretch=True))

        self.save_button = QPushButton("Save")
        self.test_button = QPushButton("Test")
        buttons = QHBoxLayout()
        buttons.addWidget(self.save_button)
        buttons.addStretch(1)
        buttons.addWidget(self.test_button)
        self.state_label = QLabel(wordWrap=True, textFormat=Qt.TextFormat.PlainText)
        self.result_label = QLabel(wordWrap=True, textFormat=Qt.TextFormat.PlainText)
        self.result_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)

        layout = QVBoxLayout(self)
        layout.addWidget(explanation)
        layout.addLayout(form)
        layout.addLayout(buttons)
        layout.addWidget(self.state_label)
        layout.addWidget(self.result_label)

        self.save_button.clicked.connect(self.save)
        self.test_button.clicked.connect(self.test)
        self.copy_url_button.clicked.connect(lambda: self._copy(self.url_edit.text(), "address"))
        self.copy_secret_button.clicked.connect(lambda: self._copy(self._secret or "", "secret"))
        self.new_secret_button.clicked.connect(self.make_new_secret)
        self.show_secret_box.toggled.connect(self._show_secret)
        self.address_combo.currentTextChanged.connect(self._show_url)
        self.port_box.valueChanged.connect(self._show_url)
        self.refresh()

    # --- state --------------------------------------------------------------------------------------------
    def refresh(self, *, fields: bool = True) -> None:
        """Show the secret's state; with `fields`, also reload the settings (discarding unsaved edits)."""
        self._read_secret()
        if fields:
            settings = self.ui.app.settings
            self.enabled_box.setChecked(bool(settings.lookup("calcom.webhook.enabled").value))
            self.address_combo.clear()
            for address in webhook.local_addresses():
                self.address_combo.addItem(address_label(address), address)
            chosen = str(settings.lookup("calcom.webhook.address").value)
            index = self.address_combo.findData(chosen)
            if index < 0:
                self.address_combo.addItem(address_label(chosen), chosen)
                index = self.address_combo.count() - 1
            self.address_combo.setCurrentIndex(index)
            self.port_box.setValue(int(settings.lookup("calcom.webhook.port").value))
            for key, widget in (
                ("calcom.webhook.enabled", self.enabled_box),
                ("calcom.webhook.address", self.address_combo),
                ("calcom.webhook.port", self.port_box),
            ):
                outside = settings.lookup(key).source == "environment"
                widget.setEnabled(not outside)
                widget.setToolTip(f"{labels.configured_outside(False)}; it can't be changed here" if outside else "")
        self._show_url()
        self._show_state()

    def _read_secret(self) -> None:
        """On the GUI thread, like the keys (some keyrings must not be used from workers)."""
        try:
            self._secret_source = self.ui.app.secrets.source(CALCOM_WEBHOOK_SECRET)
            self._secret = self.ui.app.secrets.get(CALCOM_WEBHOOK_SECRET) if self._secret_source else None
        except SecretStoreError as exc:
            self._secret, self._secret_source = None, None
            self.show_result("✗ " + labels.for_gui(exc), ok=False)
        self.secret_edit.setText(self._secret or "")
        self.secret_edit.setPlaceholderText("" if self._secret else "Made when you save with notices turned on")
        self.copy_secret_button.setEnabled(bool(self._secret))
        self.new_secret_button.setEnabled(self._secret_source != "environment")

    def chosen_address(self) -> str:
        text = self.address_combo.currentText().strip()
        index = self.address_combo.findText(text)
        data = self.address_combo.itemData(index) if index >= 0 else None
        return str(data) if data else text.split(" ", 1)[0]

    def _show_url(self) -> None:
        self.url_edit.setText(webhook.url_for(self.chosen_address(), self.port_box.value()))

    def _show_secret(self, shown: bool) -> None:
        self.secret_edit.setEchoMode(QLineEdit.EchoMode.Normal if shown else QLineEdit.EchoMode.Password)

    def _show_state(self) -> None:
        """Whether something listens now, as far as this window knows."""
        schedule = self.ui.schedule
        host = schedule.host if schedule is not None else None
        if not self.enabled_box.isChecked():
            text = "Notices are off: ClinicSync finds new bookings at its regular checks."
        elif host is not None and host.webhook.listener is not None:
            text = f"Listening at {host.webhook.listener.url}. {SEND_KEYS}"
        elif host is not None and host.webhook.problem:
            text = f"Not listening: {host.webhook.problem}"
        elif schedule is not None and schedule.mode == "attached":
            text = "ClinicSync's background service receives the notices."
        else:
            text = SEND_KEYS
        self.state_label.setText(text)

    # --- actions ------------------------------------------------------------------------------------------
    def save(self) -> None:
        settings = self.ui.app.settings
        try:
            if self.address_combo.isEnabled():
                settings.set("calcom.webhook.address", self.chosen_address())
            if self.port_box.isEnabled():
                settings.set("calcom.webhook.port", self.port_box.value())
            if self.enabled_box.isEnabled():
                settings.set("calcom.webhook.enabled", self.enabled_box.isChecked())
            if self.enabled_box.isChecked() and not self._secret:
                self.ui.app.secrets.set(CALCOM_WEBHOOK_SECRET, webhook.new_secret())
        except (SettingError, SecretStoreError, ValueError) as exc:
            self.show_result("✗ " + labels.for_gui(exc), ok=False)
            return
        self._apply()
        note = " Paste the address and the secret into Cal.com, then use Test." if self.enabled_box.isChecked() else ""
        self.show_result("Saved." + note, ok=True)

    def make_new_secret(self) -> None:
        """A secret that leaked is replaced; Cal.com then needs the new one too."""
        try:
            self.ui.app.secrets.set(CALCOM_WEBHOOK_SECRET, webhook.new_secret())
        except (SecretStoreError, ValueError) as exc:
            self.show_result("✗ " + labels.for_gui(exc), ok=False)
            return
        self._apply()
        self.show_result("A new secret was made. Paste it into the webhook in Cal.com as well.", ok=True)

    def _apply(self) -> None:
        """Start, move or stop the listener this window runs, now rather than at its next look at the settings."""
        schedule = self.ui.schedule
        host = schedule.host if schedule is not None else None
        if host is not None:
            host.webhook.update(host.credentials, force=True)
        self.refresh(fields=False)

    def test(self) -> None:
        if not self._secret:
            self.show_result("✗ Turn notices on and save first: that makes the secret.", ok=False)
            return
        address, port, secret = self.chosen_address(), self.port_box.value(), self._secret
        self.test_button.setEnabled(False)
        self.result_label.setStyleSheet("")
        self.result_label.setText("Sending a test notice…")
        run_in_background(lambda: webhook.send_test(address, port, secret), self._tested, owner=self)

    def _tested(self, outcome: Outcome) -> None:
        self.test_button.setEnabled(True)
        if not outcome.ok:
            self.show_result(f"✗ The test could not run: {labels.for_gui(outcome.error)}", ok=False)
            return
        worked, message = outcome.value
        self.show_result(("✓ " if worked else "✗ ") + message, ok=worked)

    def _copy(self, text: str, what: str) -> None:
        if not text:
            return
        QGuiApplication.clipboard().setText(text)
        self.show_result(f"The {what} is copied: paste it into Cal.com.", ok=True)

    def show_result(self, text: str, *, ok: bool) -> None:
        self.result_label.setText(text)
        self.result_label.setStyleSheet(OK_STYLE if ok else ERROR_STYLE)


def _row(*widgets: QWidget, stretch: bool = False) -> QWidget:
    holder = QWidget()
    row = QHBoxLayout(holder)
    row.setContentsMargins(0, 0, 0, 0)
    for widget in widgets:
        row.addWidget(widget, 1 if isinstance(widget, QLineEdit) else 0)
    if stretch:
        row.addStretch(1)
    return holder
