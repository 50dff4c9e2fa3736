"""The Field mapping tab: edit, validate (inline), allow a clinical field, preview against the sandbox, save, reload."""

from __future__ import annotations

import json
from pathlib import Path

from PySide6.QtWidgets import QComboBox, QLineEdit

from clinicsync.mapping import store as mapping_store
from clinicsync.mapping.defaults import CLINIKO_PATIENTS
from clinicsync.mapping.preview import Preview
from clinicsync.sandbox import seed
from clinicsync.store.models import FieldAllowance
from clinicsync.ui.mapping_tab import COL_OPTIONS, COL_SOURCES, COL_TARGET, COL_TRANSFORM, MappingTab
from tests.integration.test_patients_stream import patients
from tests.support import executed_writes, sync_once

WAIT_MS = 60_000


def mapping_tab(gui) -> MappingTab:
    tab = gui.window.show_tab("mapping")
    assert isinstance(tab, MappingTab)
    return tab


def combo(tab: MappingTab, row: int, column: int) -> QComboBox:
    widget = tab.editor(row, column)
    assert isinstance(widget, QComboBox)
    return widget


def test_edit_validate_preview_save_and_reload_against_the_sandbox(qtbot, make_sandbox, env_for, build_gui):
    sandbox = make_sandbox(profile="clean", patients=8)
    env = env_for(sandbox)
    sync_once(env)  # linked customers, so the preview has a diff to show
    gui = build_gui(env)
    gui.window.show()
    tab = mapping_tab(gui)
    # The real field list and some records arrive off the GUI thread, and the first record is previewed.
    qtbot.waitUntil(lambda: tab.last_preview is not None, timeout=WAIT_MS)
    assert tab.record_box.count() == 8 and tab.last_preview.found and tab.last_preview.op == "update"
    assert tab.diff_table.rowCount() == 0, "the stored mapping changes nothing in Stripe"
    assert tab.rules() == CLINIKO_PATIENTS.rules and tab.problems == []
    assert tab.row_status(0) == "✓"
    hint = tab.scope_hint.text()
    assert "LIVE Stripe account syncs only patients with an invoice or appointment in the last 24 months" in hint
    assert "until you save" in hint, "the unsaved default says what a live connection syncs"
    health_fund = f"custom_fields.{seed.CUSTOM_FIELD_HEALTH_FUND_TOKEN}"
    assert combo(tab, 0, COL_SOURCES).findData(health_fund) >= 0, "custom fields from Cliniko's /settings"
    assert tab.writeback_field.findData(seed.CUSTOM_FIELD_STRIPE_ID_TOKEN) >= 0

    # Edit: name becomes a template (the sources follow the placeholders).
    combo(tab, 0, COL_TRANSFORM).setCurrentText("template")
    options = tab.editor(0, COL_OPTIONS)
    assert isinstance(options, QLineEdit)
    options.setText('{"template": "{last_name}, {first_name}"}')
    assert tab.rules()[0].sources == ("last_name", "first_name")
    assert tab.row_status(0) == "✓" and tab.dirty

    # Validate inline: a bad metadata key and a clinical field, each marked on its row with the reason.
    row = tab.add_row()
    combo(tab, row, COL_TARGET).setEditText("metadata.bad[key]")
    combo(tab, row, COL_SOURCES).setEditText("notes")
    assert "[metadata-key]" in tab.row_status(row) and "[clinical-field]" in tab.row_status(row)
    assert tab.table.verticalHeaderItem(row).text().endswith("⚠")
    assert not tab.save(), "nothing invalid is saved"
    assert mapping_store.load("cliniko.patients").version == 0
    options.setText("{not json")
    assert "options are not valid JSON" in tab.row_status(0)
    options.setText('{"template": "{last_name}, {first_name}"}')

    # The clinical field needs an explicit allowance, after the warning.
    combo(tab, row, COL_TARGET).setEditText("metadata.notes")
    tab.table.selectRow(row)
    assert tab.allow_button.isEnabled()
    shown: list[str] = []
    tab.confirm_allow = lambda parent, field, warning: shown.append(warning) or False
    assert not tab.allow_selected()
    assert mapping_store.allowed_fields("cliniko.patients") == set()
    tab.confirm_allow = lambda parent, field, warning: shown.append(warning) or True
    assert tab.allow_selected()
    assert "metadata.notes" in shown[-1] and "clinical" in shown[-1]
    (decision,) = FieldAllowance.select()
    assert (decision.source_field, decision.via) == ("notes", "gui")
    assert tab.row_status(row) == "✓" and tab.problems == []

    # Preview against the sandbox: the exact request and the diff, and nothing written.
    pid = sorted(patients(sandbox))[0]
    patient = patients(sandbox)[pid]
    writes = executed_writes(sandbox.stripe_url), executed_writes(sandbox.cliniko_url)
    tab.record_box.setEditText(pid)
    with qtbot.waitSignal(tab.preview_ready, timeout=WAIT_MS) as ready:
        tab.preview_button.click()
    preview = ready.args[0]
    assert isinstance(preview, Preview) and preview.found and preview.op == "update"
    expected_name = f"{patient['last_name']}, {patient['first_name']}"
    assert preview.params["name"] == expected_name
    assert preview.params["metadata"]["notes"] == patient["notes"]
    assert json.loads(tab.payload_view.toPlainText()) == preview.params
    diff = {
        tab.diff_table.item(r, 0).text(): tab.diff_table.item(r, 2).text() for r in range(tab.diff_table.rowCount())
    }
    assert diff == {"name": expected_name, "metadata.notes": patient["notes"]}
    assert "Dry run: nothing written" in tab.preview_status.text()
    assert (executed_writes(sandbox.stripe_url), executed_writes(sandbox.cliniko_url)) == writes

    # Reorder, save, reload.
    tab.move_row(row, -1)
    assert tab.rules()[row - 1].target == "metadata.notes"
    with qtbot.waitSignal(tab.saved, timeout=WAIT_MS):
        assert tab.save()
    assert "Saved as version 1" in tab.message.text() and not tab.dirty
    stored = mapping_store.load("cliniko.patients")
    assert stored.version == 1 and stored.rules == tab.rules()

    tab.remove_row(0)
    assert tab.dirty
    tab.refresh()  # unsaved edits survive a tab switch...
    assert len(tab.rules()) == len(stored.rules) - 1
    tab.reload(force=True)  # ...and Revert brings back the stored mapping
    assert tab.rules() == stored.rules and not tab.dirty
    assert "version 1" in tab.version_label.text() and tab.scope_hint.isHidden()

    run = sync_once(env)
    assert run.counts["updated"] == 8


def test_reset_to_defaults_never_widens_a_live_accounts_scope(qtbot, offline_env, build_gui):
    gui = build_gui(offline_env)
    tab = mapping_tab(gui)
    for key, kind in (("sk_live_sandbox_reset", "recent_activity"), (None, "recent_activity"), ("sk_test_x", "all")):
        gui.ui.status.note_stripe_key(key)
        tab.scope_box.setCurrentIndex(tab.scope_box.findData("since"))
        tab.reset_to_defaults()
        assert tab.current_mapping().scope.kind == kind, key
        assert tab.scope_box.currentData() == kind
    gui.ui.status.note_stripe_key("sk_live_sandbox_reset")
    tab.reset_to_defaults()
    assert tab.current_mapping().scope.months == 24 and tab.rules() == CLINIKO_PATIENTS.rules


def test_reset_import_export_and_scope(qtbot, tmp_path: Path, offline_env, build_gui):
    gui = build_gui(offline_env)
    tab = mapping_tab(gui)
    tab.remove_row(3)
    tab.remove_row(3)
    assert len(tab.rules()) == len(CLINIKO_PATIENTS.rules) - 2
    tab.reset_to_defaults()
    assert tab.rules() == CLINIKO_PATIENTS.rules and tab.dirty

    tab.scope_box.setCurrentIndex(tab.scope_box.findData("since"))
    assert tab.since_edit.isVisibleTo(tab) and not tab.months_spin.isVisibleTo(tab)
    tab.export_file(tmp_path / "missing-folder" / "out.json")
    assert "Could not export to out.json" in tab.message.text()
    exported = tmp_path / "out.json"
    tab.export_file(exported)
    document = json.loads(exported.read_text())
    assert document["scope"]["kind"] == "since" and document["rules"][0]["target"] == "name"

    document["rules"].append({"target": "nickname", "sources": ["first_name"]})
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(document))
    assert tab.import_file(bad)
    assert "[unknown-target]" in tab.row_status(len(document["rules"]) - 1)
    assert not tab.save()
    (tmp_path / "broken.json").write_text("{")
    assert not tab.import_file(tmp_path / "broken.json")
    assert "Could not import broken.json" in tab.message.text()

    tab.import_file(exported)
    assert tab.save()
    stored = mapping_store.load("cliniko.patients")
    assert stored.scope.kind == "since" and stored.version == 1


def test_a_damaged_stored_mapping_is_named_in_the_tab_and_saving_replaces_it(qtbot, offline_env, build_gui):
    from clinicsync.store.db import database_proxy

    gui = build_gui(offline_env)
    database_proxy.execute_sql(
        "INSERT INTO stream_mapping (stream, version, body, saved_at, saved_by) "
        "VALUES ('cliniko.patients', 4, '{not json', '2025-01-01 00:00:00', 'someone')"
    )
    tab = mapping_tab(gui)
    tab.reload(force=True)
    assert "stored field mapping of cliniko.patients (version 4) cannot be read" in tab.message.text()
    assert tab.rules() == CLINIKO_PATIENTS.rules, "the built-in default stands in, for editing"
    assert tab.save(), "saving is how a person replaces the damaged row"
    saved = mapping_store.load("cliniko.patients")
    assert not saved.unreadable and saved.rules == CLINIKO_PATIENTS.rules
