"""The Connections tab: keys go to the keyring only and are shown masked; Test connection runs off the GUI thread
and shows the right message for a good key, a wrong key, a restricted key lacking a permission and an unreachable
host."""

from __future__ import annotations

import base64
import contextlib
import socket
from collections.abc import Iterator
from pathlib import Path

import keyring
import keyring.backends.null
import pytest

from clinicsync.connections import CALCOM_REGIONS
from clinicsync.secrets import CLINIKO_API_KEY, STRIPE_API_KEY, service_for
from clinicsync.ui.connections_tab import ConnectionsTab
from clinicsync.ui.context import UiContext
from tests.support import admin, profile_env
from tests.ui.connections_support import build_ui, close_ui, memory_keyring

KEY_VARS = ("CLINICSYNC_CLINIKO_API_KEY", "CLINICSYNC_STRIPE_API_KEY")
TEST_TIMEOUT_MS = 20_000


@pytest.fixture
def keyring_backend():
    with memory_keyring() as backend:
        yield backend


@pytest.fixture
def open_ui() -> Iterator:
    opened: list[UiContext] = []

    def make(env) -> UiContext:
        ui = build_ui(env)
        opened.append(ui)
        return ui

    yield make
    for ui in opened:
        close_ui(ui)


def keyless(env: dict[str, str]) -> dict[str, str]:
    """The sandbox profile without keys in the environment, so they must come from the keyring."""
    return {name: value for name, value in env.items() if name not in KEY_VARS}


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def encodings(secret: str) -> set[bytes]:
    """The key as it could appear in a file: plain, and base64 at each byte alignment (alone or inside a Basic
    auth header); the first and last block of each are dropped because they depend on the neighbours."""
    raw = secret.encode()
    forms = {raw}
    for payload in (raw, raw + b":"):
        for offset in range(3):
            encoded = base64.b64encode(b"\0" * offset + payload)
            forms.add(encoded[4:-4] if offset else encoded[:-4])
    return forms


def files_containing(home: Path, secret: str) -> list[str]:
    forms = encodings(secret)
    found = []
    for path in home.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            if any(form in data for form in forms):
                found.append(str(path.relative_to(home)))
    return found


def click_test(qtbot, box) -> object:
    with qtbot.waitSignal(box.tested, timeout=TEST_TIMEOUT_MS) as blocker:
        box.test_button.click()
    return blocker.args[0]


def test_saving_keys_writes_them_to_the_keyring_and_nowhere_else(
    qtbot, make_sandbox, env_for, keyring_backend, open_ui
):
    sandbox = make_sandbox(profile="clean", patients=5)
    env = keyless(env_for(sandbox))
    ui = open_ui(env)
    tab = ConnectionsTab(ui)
    qtbot.addWidget(tab)
    assert "No key saved" in tab.stripe.key_state_label.text()

    for box, key in ((tab.cliniko, sandbox.cliniko_key), (tab.stripe, sandbox.stripe_key)):
        qtbot.keyClicks(box.key_edit, key)
        box.save_button.click()
        assert box.key_edit.text() == "", "the key is never left in (or echoed back into) the field"
        assert key not in box.key_state_label.text() and "…" in box.key_state_label.text()
        assert "Saved in the OS keyring" in box.key_state_label.text()
        assert click_test(qtbot, box).ok

    service = service_for(ui.app.paths)
    assert keyring_backend.passwords == {
        (service, CLINIKO_API_KEY): sandbox.cliniko_key,
        (service, STRIPE_API_KEY): sandbox.stripe_key,
    }
    # Use the keys for a real sync too, so the database, the history and the log have had every chance to leak.
    with qtbot.waitSignal(ui.bridge.job_finished, timeout=30_000) as finished:
        assert ui.sync_now() is not None
    assert finished.args[0].failure_kind is None and finished.args[0].results[0].counts["created"] == 5
    close_ui(ui)
    home = Path(env["CLINICSYNC_HOME"])
    assert any(home.rglob("*.sqlite3")) and any(home.rglob("*.log")), "the profile's files exist to be checked"
    for key in (sandbox.cliniko_key, sandbox.stripe_key):
        assert files_containing(home, key) == [], f"{key[:8]}… leaked into the profile"


def test_test_connection_messages_for_stripe(qtbot, make_sandbox, env_for, keyring_backend, open_ui):
    sandbox = make_sandbox(profile="clean", patients=1)
    ui = open_ui(keyless(env_for(sandbox)))
    tab = ConnectionsTab(ui)
    qtbot.addWidget(tab)
    box = tab.stripe

    qtbot.keyClicks(box.key_edit, sandbox.stripe_key)
    good = click_test(qtbot, box)
    assert good.ok and good.account_name in box.result_label.text()
    assert box.badge.isVisibleTo(tab) and box.badge.text() == "TEST MODE"

    box.key_edit.setText("sk_live_sandbox_clinic_a")
    assert click_test(qtbot, box).ok and box.badge.text() == "LIVE"

    box.key_edit.setText("sk_test_sandbox_not_a_key")
    bad = click_test(qtbot, box)
    assert not bad.ok and "401" in box.result_label.text() and "rejected" in box.result_label.text()
    assert not box.badge.isVisibleTo(tab) or box.badge.text() == "TEST MODE"

    box.key_edit.setText("rk_test_sandbox_readonly_a")
    restricted = click_test(qtbot, box)
    assert not restricted.ok and "rak_customer_write" in box.result_label.text()
    assert "403" in box.result_label.text()
    assert keyring_backend.passwords == {}, "testing a typed key does not save it"


def test_test_connection_for_an_unreachable_host(qtbot, make_sandbox, env_for, keyring_backend, open_ui):
    sandbox = make_sandbox(profile="clean", patients=1)
    port = closed_port()
    env = env_for(
        sandbox,
        CLINICSYNC_STRIPE_BASE_URL=f"http://127.0.0.1:{port}",
        CLINICSYNC_CLINIKO_BASE_URL=f"http://127.0.0.1:{port}/v1",
    )
    ui = open_ui(env)
    tab = ConnectionsTab(ui)
    qtbot.addWidget(tab)
    for box in (tab.stripe, tab.cliniko):
        report = click_test(qtbot, box)
        assert not report.ok and report.problem == "unreachable"
        assert "could not be reached" in box.result_label.text() and f"127.0.0.1:{port}" in box.result_label.text()


def test_cliniko_good_and_wrong_key(qtbot, make_sandbox, env_for, keyring_backend, open_ui):
    sandbox = make_sandbox(profile="clean", patients=1)
    ui = open_ui(keyless(env_for(sandbox)))
    tab = ConnectionsTab(ui)
    qtbot.addWidget(tab)
    box = tab.cliniko
    qtbot.keyClicks(box.key_edit, sandbox.cliniko_key)
    good = click_test(qtbot, box)
    assert good.ok and "au1" in box.result_label.text() and good.account_name in box.result_label.text()
    assert not box.badge.isVisibleTo(tab), "the TEST/LIVE badge is Stripe's"
    box.key_edit.setText("wrong_key-au1")
    assert not click_test(qtbot, box).ok and "401" in box.result_label.text()


def test_a_slow_host_does_not_freeze_the_window(qtbot, make_sandbox, env_for, keyring_backend, open_ui):
    sandbox = make_sandbox(profile="clean", patients=1)
    admin(sandbox.stripe_url, "config", latency_ms=700)
    ui = open_ui(env_for(sandbox))
    tab = ConnectionsTab(ui)
    qtbot.addWidget(tab)
    with qtbot.waitSignal(tab.stripe.tested, timeout=TEST_TIMEOUT_MS):
        tab.stripe.test_button.click()
        # Had the click waited for the 700 ms answers, the result would be showing by now.
        assert "Testing" in tab.stripe.result_label.text() and not tab.stripe.test_button.isEnabled()
    assert tab.stripe.test_button.isEnabled()


def test_keys_from_the_environment_are_shown_but_not_editable(qtbot, make_sandbox, env_for, keyring_backend, open_ui):
    sandbox = make_sandbox(profile="clean", patients=1)
    ui = open_ui(env_for(sandbox))
    tab = ConnectionsTab(ui)
    qtbot.addWidget(tab)
    text = tab.stripe.key_state_label.text()
    assert text.startswith("Provided by the sandbox clinic: ") and sandbox.stripe_key not in text
    assert "CLINICSYNC_" not in text and "environment" not in text
    assert not tab.stripe.key_edit.isEnabled() and not tab.stripe.remove_button.isEnabled()
    assert not tab.cliniko.key_edit.isEnabled()
    assert "The key's ending sets the shard: au1" in tab.cliniko.shard_note.text()
    assert not tab.cliniko.email_edit.isEnabled(), "CLINICSYNC_CONTACT_EMAIL wins over a stored value"
    assert keyring_backend.passwords == {}


@contextlib.contextmanager
def null_keyring() -> Iterator[None]:
    previous = keyring.get_keyring()
    keyring.set_keyring(keyring.backends.null.Keyring())
    try:
        yield
    finally:
        keyring.set_keyring(previous)


def test_an_unusable_keyring_is_shown_with_what_to_install_and_nothing_is_written(
    qtbot, make_sandbox, env_for, open_ui
):
    sandbox = make_sandbox(profile="clean", patients=1)
    env = keyless(env_for(sandbox))
    with null_keyring():
        ui = open_ui(env)
        tab = ConnectionsTab(ui)
        qtbot.addWidget(tab)
        assert "will not store API keys" in tab.stripe.key_state_label.text()
        qtbot.keyClicks(tab.stripe.key_edit, sandbox.stripe_key)
        tab.stripe.save_button.click()
        shown = tab.stripe.result_label.text()
        assert "null backend" in shown and "install" in shown.lower()
    close_ui(ui)
    assert files_containing(Path(env["CLINICSYNC_HOME"]), sandbox.stripe_key) == []


def test_cliniko_settings_are_saved_and_the_shard_is_only_for_keys_without_one(
    qtbot, make_sandbox, env_for, keyring_backend, open_ui
):
    sandbox = make_sandbox(profile="clean", patients=1)
    env = {k: v for k, v in keyless(env_for(sandbox)).items() if k != "CLINICSYNC_CONTACT_EMAIL"}
    ui = open_ui(env)
    tab = ConnectionsTab(ui)
    qtbot.addWidget(tab)
    box = tab.cliniko
    assert box.shard_combo.isEnabled() and box.email_edit.isEnabled()
    qtbot.keyClicks(box.key_edit, "some_key-uk2")
    assert not box.shard_combo.isEnabled() and "uk2" in box.shard_note.text()
    box.key_edit.clear()
    box.shard_combo.setCurrentText("au3")
    box.email_edit.setText("manager@example.com")
    box.save_button.click()
    assert ui.app.settings.get("cliniko.shard") == "au3"
    assert ui.app.settings.get("contact_email") == "manager@example.com"
    box.email_edit.setText("not an email")
    box.save_button.click()
    assert "not an email address" in box.result_label.text()
    assert ui.app.settings.get("contact_email") == "manager@example.com"


def test_calcom_region_and_self_hosted_address(qtbot, make_sandbox, env_for, keyring_backend, open_ui):
    sandbox = make_sandbox(profile="clean", patients=1)
    ui = open_ui(keyless(env_for(sandbox)))
    tab = ConnectionsTab(ui)
    qtbot.addWidget(tab)
    box = tab.calcom
    assert box.region_combo.currentData() == "cloud" and not box.url_edit.isEnabled()
    box.region_combo.setCurrentIndex(box.region_combo.findData("eu"))
    box.save_button.click()
    assert ui.app.settings.get("calcom.base_url") == CALCOM_REGIONS["eu"]

    box.region_combo.setCurrentIndex(box.region_combo.findData("self_hosted"))
    assert box.url_edit.isEnabled()
    box.save_button.click()
    assert "/v2" in box.result_label.text(), "a self-hosted choice needs an address"
    port = closed_port()
    box.url_edit.setText(f"http://127.0.0.1:{port}/v2")
    qtbot.keyClicks(box.key_edit, "cal_sandbox_example_key")
    box.save_button.click()
    assert ui.app.settings.get("calcom.base_url") == f"http://127.0.0.1:{port}/v2"
    report = click_test(qtbot, box)
    assert report.problem == "unreachable" and "Cal.com could not be reached" in box.result_label.text()


def test_unsaved_edits_survive_a_tab_switch_and_a_profile_switch_reloads_them(
    qtbot, build_gui, home, make_sandbox, env_for, keyring_backend
):
    env = profile_env(
        home, {"CLINICSYNC_CLINIKO_API_KEY": "dummy-cliniko-key", "CLINICSYNC_STRIPE_API_KEY": "sk_test_x"}
    )
    gui = build_gui(env)
    tab = gui.window.show_tab("connections")
    tab.cliniko.email_edit.setText("new-manager@clinic.example")
    tab.calcom.region_combo.setCurrentIndex(tab.calcom.region_combo.findData("self_hosted"))
    tab.calcom.url_edit.setText("https://cal.clinic.example/api/v2")
    tab.calcom.key_edit.setText("cal_typed_not_saved_yet")

    gui.window.show_tab("overview")
    gui.window.show_tab("connections")  # the window refreshes the tab it brings to the front
    assert tab.cliniko.email_edit.text() == "new-manager@clinic.example", "an unsaved edit was thrown away"
    assert tab.calcom.region_combo.currentData() == "self_hosted"
    assert tab.calcom.url_edit.text() == "https://cal.clinic.example/api/v2"
    assert tab.calcom.key_edit.text() == "cal_typed_not_saved_yet"
    assert "No key saved" in tab.calcom.key_state_label.text()  # the key state itself is read afresh

    # After a profile switch (the sandbox trial) the fields show the new profile's settings.
    sandbox = make_sandbox(profile="clean", patients=1)
    gui.switch_profile(env_for(sandbox, "sandbox-profile"), sandbox)
    assert tab.cliniko.email_edit.text() == sandbox.env()["CLINICSYNC_CONTACT_EMAIL"]
    assert tab.cliniko.address_label.text() == f"Address: {sandbox.cliniko_url}"
    assert tab.calcom.region_combo.currentData() == "cloud" and tab.calcom.url_edit.text() == ""


def test_a_key_given_at_start_outside_the_sandbox_names_no_environment_variable(qtbot, offline_env, open_ui):
    ui = open_ui(offline_env)
    tab = ConnectionsTab(ui)
    qtbot.addWidget(tab)
    text = tab.stripe.key_state_label.text()
    assert text.startswith("Given to ClinicSync when it was started: ") and "can't be changed here" in text
    assert "CLINICSYNC_" not in text and "CLINICSYNC_" not in tab.cliniko.email_edit.toolTip()
    assert tab.cliniko.email_edit.toolTip().startswith("Given to ClinicSync when it was started")


def test_remove_key_asks_first_and_no_keeps_it(qtbot, offline_env, keyring_backend, open_ui):
    env = {name: value for name, value in offline_env.items() if name != "CLINICSYNC_STRIPE_API_KEY"}
    ui = open_ui(env)
    tab = ConnectionsTab(ui)
    qtbot.addWidget(tab)
    box = tab.stripe
    box.key_edit.setText("sk_test_sandbox_" + "k" * 24)
    box.save()
    assert box.remove_button.isEnabled()
    asked: list[str] = []
    box.confirm_remove = lambda _parent, service: asked.append(service) or False
    box.remove_button.click()
    assert asked == ["Stripe"] and ui.app.secrets.get(STRIPE_API_KEY), "No keeps the key"
    box.confirm_remove = lambda _parent, service: asked.append(service) or True
    box.remove_button.click()
    assert asked == ["Stripe", "Stripe"] and ui.app.secrets.get(STRIPE_API_KEY) is None
    assert "removed" in box.result_label.text()


def test_booking_notices_make_a_secret_show_the_address_and_a_signed_test_reaches_the_listener(
    qtbot, offline_env, keyring_backend, open_ui
):
    from PySide6.QtGui import QGuiApplication
    from PySide6.QtWidgets import QLineEdit

    from clinicsync.secrets import CALCOM_WEBHOOK_SECRET
    from clinicsync.sync.webhook import WebhookListener

    port = closed_port()
    ui = open_ui(offline_env)
    tab = ConnectionsTab(ui)
    qtbot.addWidget(tab)
    box = tab.webhook
    assert not box.enabled_box.isChecked() and box.address_combo.currentData() == "127.0.0.1"
    assert "this computer only" in box.address_combo.currentText()

    box.enabled_box.setChecked(True)
    box.port_box.setValue(port)
    box.save()
    secret = keyring_backend.passwords[(service_for(ui.app.paths), CALCOM_WEBHOOK_SECRET)]
    assert len(secret) == 64 and ui.app.settings.get("calcom.webhook.enabled") is True
    assert box.url_edit.text() == f"http://127.0.0.1:{port}/calcom/webhook"
    assert box.secret_edit.echoMode() == QLineEdit.EchoMode.Password, "shown only when asked"
    box.copy_secret_button.click()
    assert QGuiApplication.clipboard().text() == secret

    def click_webhook_test() -> str:
        box.test_button.click()
        qtbot.waitUntil(box.test_button.isEnabled, timeout=TEST_TIMEOUT_MS)
        return box.result_label.text()

    assert click_webhook_test().startswith("✗ Nothing answered")  # this window runs no schedule: nothing listens
    listener = WebhookListener("127.0.0.1", port, secret, lambda uid, trigger: None)
    listener.start()
    try:
        assert click_webhook_test() == "✓ ClinicSync received the signed test notice."
        listener.secret = "another-secret"
        assert "another secret" in click_webhook_test()
    finally:
        listener.stop()
