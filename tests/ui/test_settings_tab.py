"""The Settings tab: every change is stored at once and the window's schedule follows it without a restart (on a
ManualClock); the shortest interval offered is the scheduler's own rule; start at login writes and removes the
desktop's entry (in a redirected folder); a setting given at start cannot be changed here; a stream that cannot run
in this setup keeps its schedule switch, disabled, with the engine's reason under it until it can run."""

from __future__ import annotations

import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from PySide6.QtCore import QTime

from clinicsync import autostart
from clinicsync.secrets import CLINIKO_API_KEY
from clinicsync.sync.clock import ManualClock
from clinicsync.sync.scheduler import scheduled_streams, shortest_interval
from clinicsync.sync.service import NotRunning, connected_sources, why_not_running
from tests.support import profile_env
from tests.ui.conftest import DUMMY_KEYS, WAIT_MS
from tests.ui.connections_support import memory_keyring
from tests.ui.test_words import offences

STREAM = "cliniko.patients"


def test_schedule_changes_apply_at_once_without_a_restart(qtbot, make_sandbox, env_for, build_gui) -> None:
    sandbox = make_sandbox(profile="clean", patients=3)
    clock = ManualClock(datetime(2026, 3, 2, 9, 0, tzinfo=UTC))
    gui = build_gui(env_for(sandbox), schedule=True, clock=clock)
    schedule = gui.ui.schedule
    with qtbot.waitSignal(gui.ui.bridge.job_finished, timeout=WAIT_MS):
        schedule.tick()  # never synced: the first run is due at once
    qtbot.waitUntil(lambda: not schedule.host.busy(), timeout=WAIT_MS)
    schedule.tick()
    assert schedule.next_runs()[STREAM] == clock.now() + timedelta(seconds=60)

    tab = gui.window.show_tab("settings")
    tab.interval_box.setValue(300)
    assert gui.ui.app.settings.get("schedule.interval_seconds") == 300
    schedule.tick()  # the jobs are rebuilt from the settings: the next check counts from the last run
    assert schedule.next_runs()[STREAM] == clock.now() + timedelta(seconds=300)
    overview = gui.window.show_tab("overview")
    assert overview.cards[STREAM].labels["next_run"].text() == "next sync in 5 min"

    # A stream's own interval: stored, and the job follows; at the box's minimum it is the usual one again.
    gui.window.show_tab("settings")
    own = tab.stream_intervals[STREAM]
    assert own.text() == "the usual interval"
    own.setValue(120)
    assert gui.ui.app.settings.get(f"schedule.{STREAM}.interval_seconds") == 120
    schedule.tick()
    assert schedule.next_runs()[STREAM] == clock.now() + timedelta(seconds=120)
    own.setValue(own.minimum())
    assert gui.ui.app.settings.get(f"schedule.{STREAM}.interval_seconds") == 0
    schedule.tick()
    assert schedule.next_runs()[STREAM] == clock.now() + timedelta(seconds=300)

    tab.stream_boxes[STREAM].setChecked(False)
    assert gui.ui.app.settings.get(f"schedule.{STREAM}.enabled") is False
    schedule.tick()
    assert STREAM not in schedule.next_runs()
    assert gui.ui.schedule.schedule_on() is False
    assert not tab.interval_box.isEnabled()
    assert tab.interval_note.text().startswith("Nothing is checked on a schedule")

    tab.frequency_box.setCurrentIndex(tab.frequency_box.findData("weekly"))
    tab.day_box.setCurrentIndex(tab.day_box.findData("wednesday"))
    tab.time_box.setTime(QTime(3, 15))
    settings = gui.ui.app.settings
    assert [settings.get(f"schedule.reconcile.{k}") for k in ("frequency", "day", "time")] == [
        "weekly",
        "wednesday",
        "03:15",
    ]
    schedule.tick()
    config = schedule.host.scheduler.config
    assert (config.reconcile, config.reconcile_day, config.reconcile_time) == ("weekly", "wednesday", "03:15")
    following = schedule.next_runs()["reconcile"].astimezone(schedule.host.scheduler.zone)
    assert (following.strftime("%A %H:%M"), following > clock.now()) == ("Wednesday 03:15", True)


def test_the_shortest_interval_offered_is_the_schedulers_rule(build_gui, offline_env) -> None:
    gui = build_gui(offline_env)
    tab = gui.window.show_tab("settings")
    settings = gui.ui.app.settings
    floor = shortest_interval(scheduled_streams(settings))
    assert tab.interval_box.minimum() == floor
    assert f"At least {floor} seconds" in tab.interval_note.text()
    tab.interval_box.setValue(1)  # below the rule: the box holds the floor, and that is what is stored
    assert settings.get("schedule.interval_seconds") == floor


def test_notifications_and_email_matching_are_stored(build_gui, offline_env) -> None:
    gui = build_gui(offline_env)
    tab = gui.window.show_tab("settings")
    settings = gui.ui.app.settings
    tab.notify_box.setChecked(False)
    tab.outage_box.setValue(90)
    tab.email_box.setCurrentIndex(tab.email_box.findData("review"))
    assert (settings.get("alerts.notify"), settings.get("alerts.outage_minutes")) == (False, 90)
    assert settings.get("sync.email_match") == "review"
    tab.refresh()
    assert tab.email_box.currentText() == "Ask me first (Review)" and not tab.notify_box.isChecked()


def test_a_setting_given_at_start_cannot_be_changed_here(build_gui, home) -> None:
    env = profile_env(home, DUMMY_KEYS, CLINICSYNC_SCHEDULE_INTERVAL_SECONDS="120")
    gui = build_gui(env)
    tab = gui.window.show_tab("settings")
    assert tab.interval_box.value() == 120 and not tab.interval_box.isEnabled()
    assert "when it was started" in tab.interval_box.toolTip()
    assert tab.email_box.isEnabled()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the XDG autostart entry is Linux's")
def test_start_at_login_writes_and_removes_the_desktop_entry(build_gui, offline_env, tmp_path, monkeypatch) -> None:
    config_home = tmp_path / "xdg-config"
    monkeypatch.setenv("XDG_CONFIG_HOME", str(config_home))
    gui = build_gui(offline_env)
    tab = gui.window.show_tab("settings")
    assert not tab.login_box.isChecked()
    entry = Path(config_home / "autostart" / f"{autostart.entry_name(gui.ui.app.paths).lower()}.desktop")
    tab.login_box.setChecked(True)
    assert entry.exists() and "--minimized" in entry.read_text()
    tab.refresh()
    assert tab.login_box.isChecked()
    tab.login_box.setChecked(False)
    assert not entry.exists()


def test_the_clinics_time_zone_is_shown_as_last_read_from_cliniko(build_gui, offline_env) -> None:
    from clinicsync.store import reconciliation
    from clinicsync.store.models import AccountPair

    gui = build_gui(offline_env)
    tab = gui.window.show_tab("settings")
    assert tab.zone_label.text() == "Australia/Melbourne until ClinicSync has read the clinic's own from Cliniko"
    pair = AccountPair.create(
        uuid="pair-1", source_system="cliniko", source_account="1", stripe_account="acct_1", stripe_livemode=False
    )
    reconciliation.start_report(pair, [STREAM], trigger="manual", time_zone="Australia/Perth")
    tab.refresh()
    assert tab.zone_label.text() == "Australia/Perth (as ClinicSync last read it from Cliniko)"


def test_mirroring_invoices_is_off_until_ticked_and_then_polled_and_shown(qtbot, make_sandbox, env_for, build_gui):
    sandbox = make_sandbox(profile="clean", patients=3)
    gui = build_gui(env_for(sandbox))
    mirror = "cliniko.invoice_mirror"
    tab = gui.window.show_tab("settings")
    assert not tab.mirror_box.isChecked() and mirror not in scheduled_streams(gui.ui.app.settings)
    assert mirror not in {
        s for s, card in gui.window.show_tab("overview").cards.items() if card.isVisibleTo(gui.window)
    }
    gui.window.show_tab("settings")
    tab.mirror_box.setChecked(True)
    assert gui.ui.app.settings.get("cliniko.invoices.mirror") is True
    assert mirror in scheduled_streams(gui.ui.app.settings)
    overview = gui.window.show_tab("overview")
    overview.refresh()
    assert overview.cards[mirror].isVisibleTo(gui.window)


def test_linking_invoices_to_payments_is_on_by_default_and_switched_off_here(qtbot, build_gui, offline_env):
    gui = build_gui(offline_env)  # the settings' own defaults
    tab = gui.window.show_tab("settings")
    assert tab.linking_box.isChecked()
    assert "cliniko.invoices" in scheduled_streams(gui.ui.app.settings)
    tab.linking_box.setChecked(False)
    assert gui.ui.app.settings.get("streams.cliniko.invoices.enabled") is False
    assert "cliniko.invoices" not in scheduled_streams(gui.ui.app.settings)
    tab.refresh()
    assert not tab.linking_box.isChecked(), "shown as stored"
    tab.linking_box.setChecked(True)
    assert "cliniko.invoices" in scheduled_streams(gui.ui.app.settings)


def shown_reason(tab, stream: str) -> str:
    """The words under a stream's schedule switch ("" when none show)."""
    reason = tab.stream_reasons[stream]
    return reason.text() if reason.isVisibleTo(tab) else ""


def test_calcom_switches_are_disabled_and_say_why_until_a_calcom_key_is_saved(qtbot, build_gui, home) -> None:
    calcom = ("calcom.event_types", "calcom.bookings", "calcom.booking_payments", "calcom.reference")
    with memory_keyring():  # keys from the keyring, as a clinic's are: saving one in Connections is what changes
        gui = build_gui(profile_env(home, {"CLINICSYNC_CONTACT_EMAIL": "tests@example.com"}))
        secrets = gui.ui.app.secrets
        secrets.set(CLINIKO_API_KEY, "dummy-cliniko-key")
        tab = gui.window.show_tab("settings")
        for stream in calcom:
            assert not tab.stream_boxes[stream].isEnabled(), f"{stream}'s switch can be ticked with no Cal.com key"
            assert why_not_running(gui.ui.app.settings, stream, connected_sources(secrets)) == NotRunning("calcom")
            assert shown_reason(tab, stream) == "Connect Cal.com first, in the Connections tab."
            assert tab.stream_boxes[stream].isChecked(), "the stored choice is still shown"
        assert offences(shown_reason(tab, "calcom.bookings")) == []
        assert tab.stream_boxes["cliniko.patients"].isEnabled() and shown_reason(tab, "cliniko.patients") == ""

        connections = gui.window.show_tab("connections")
        connections.calcom.key_edit.setText("cal_sandbox_dummy_key")
        connections.calcom.save_button.click()
        # No tab switch: the save's own signal reaches the Settings tab (showing it again would refresh it anyway).
        for stream in calcom:
            assert tab.stream_boxes[stream].isEnabled() and shown_reason(tab, stream) == ""
        assert tab.stream_boxes["cliniko.patients"].isEnabled()


def test_a_switch_waiting_for_another_setting_names_it_and_follows_it(qtbot, build_gui, offline_env) -> None:
    gui = build_gui(offline_env)
    tab = gui.window.show_tab("settings")
    mirror, linking = "cliniko.invoice_mirror", "cliniko.invoices"
    assert not tab.stream_boxes[mirror].isEnabled(), "the mirror's schedule switch works while mirroring is off"
    assert shown_reason(tab, mirror) == f"Turn on “{tab.mirror_box.text()}” first."
    assert tab.stream_boxes[linking].isEnabled() and shown_reason(tab, linking) == ""

    tab.mirror_box.setChecked(True)
    assert tab.stream_boxes[mirror].isEnabled() and shown_reason(tab, mirror) == ""
    tab.linking_box.setChecked(False)
    assert not tab.stream_boxes[linking].isEnabled()
    assert shown_reason(tab, linking) == f"Turn on “{tab.linking_box.text()}” first."
    tab.linking_box.setChecked(True)
    assert tab.stream_boxes[linking].isEnabled() and shown_reason(tab, linking) == ""


def test_a_stream_turned_off_when_clinicsync_was_started_says_so(qtbot, build_gui, home) -> None:
    env = profile_env(home, DUMMY_KEYS, CLINICSYNC_STREAMS_CLINIKO_PRODUCTS_ENABLED="false")
    gui = build_gui(env)
    tab = gui.window.show_tab("settings")
    products = "cliniko.products"
    assert not tab.stream_boxes[products].isEnabled()
    assert shown_reason(tab, products) == "Turned off when ClinicSync was started, so it can't be turned on here."
    assert offences(shown_reason(tab, products)) == []
