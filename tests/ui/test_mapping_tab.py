"""The Field mapping tab: edit in words (a form per row, no JSON), validate (on the row, in plain words), allow a
clinical field, preview against the sandbox, save, reload; every option of every transform round-trips."""

from __future__ import annotations

import json
from pathlib import Path

from PySide6.QtWidgets import QCheckBox, QComboBox, QLineEdit, QSpinBox, QTableWidget

from clinicsync.mapping.defaults import CLINIKO_PATIENTS
from clinicsync.mapping.preview import Preview
from clinicsync.mapping.spec import FieldRule, rule
from clinicsync.mapping.transforms import TRANSFORM_OPTIONS, TRANSFORMS
from clinicsync.sandbox import seed
from clinicsync.store import mappings as mapping_store
from clinicsync.store.models import FieldAllowance
from clinicsync.ui.mapping_tab import MappingTab
from clinicsync.ui.rule_form import OTHER, RuleForm
from tests.integration.test_patients_stream import patients
from tests.support import executed_writes, sync_once

WAIT_MS = 60_000


def mapping_tab(gui) -> MappingTab:
    tab = gui.window.show_tab("mapping")
    assert isinstance(tab, MappingTab)
    return tab


def choose(box: QComboBox, data: object) -> None:
    index = box.findData(data)
    assert index >= 0, f"{data!r} is not offered"
    box.setCurrentIndex(index)


def new_row(qtbot, tab: MappingTab, target: str, transform: str, *sources: str) -> RuleForm:
    """Add a row and fill it in through the form, as a person does."""
    row = tab.add_row()
    form = tab.select_row(row)
    if target.startswith("metadata."):
        qtbot.keyClicks(form.metadata_edit, target.removeprefix("metadata."))
    else:
        choose(form.target_box, target)
    choose(form.transform_box, transform)
    if transform == "join":
        for _ in sources[1:]:
            form.add_source_button.click()
    for box, source in zip(form.source_boxes, sources, strict=False):
        choose(box, source)
    return form


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
    assert tab.preview_changes() == {}, "the stored mapping changes nothing in Stripe"
    assert tab.diff_table.rowCount() > 0, "what Stripe holds is shown, field by field"
    assert tab.rules() == CLINIKO_PATIENTS.rules and tab.problems == []
    assert tab.row_status(0) == "✓"
    hint = tab.scope_hint.text()
    assert "LIVE Stripe account syncs only patients with an invoice or appointment in the last 24 months" in hint
    assert "until you save" in hint, "the unsaved default says what a live connection syncs"
    health_fund = f"custom_fields.{seed.CUSTOM_FIELD_HEALTH_FUND_TOKEN}"
    form = tab.select_row(0)
    assert form.source_boxes[0].findData(health_fund) >= 0, "custom fields from Cliniko's /settings"
    assert tab.writeback_field.findData(seed.CUSTOM_FIELD_STRIPE_ID_TOKEN) >= 0
    assert tab.table.item(0, 0).text() == "Name" and tab.table.item(0, 1).text() == "First name + last name"

    # Edit: name becomes a pattern (the sources follow the placeholders).
    choose(form.transform_box, "template")
    pattern = form.options["template"]
    assert isinstance(pattern, QLineEdit)
    pattern.setText("{last_name}, {first_name}")
    assert tab.rules()[0].sources == ("last_name", "first_name")
    assert tab.row_status(0) == "✓" and tab.dirty
    assert tab.table.item(0, 1).text() == "the pattern “{Last name}, {First name}”"

    # Validate on the row, in words: a bad metadata name and a clinical field.
    form = new_row(qtbot, tab, "metadata.bad[key]", "copy", "notes")
    row = len(tab.rules()) - 1
    assert "cannot contain [ or ]" in tab.row_status(row)
    assert "Notes is clinical information" in tab.row_status(row) and "Allow clinical field" in tab.row_status(row)
    assert "⚠" in form.problems_label.text() and "[metadata-key]" not in tab.row_status(row)
    assert tab.table.verticalHeaderItem(row).text().endswith("⚠")
    assert not tab.save(), "nothing invalid is saved"
    assert mapping_store.load("cliniko.patients").version == 0
    assert "2 problems to fix before saving" in tab.message.text()

    # The clinical field needs an explicit allowance, after the warning.
    form.metadata_edit.clear()
    qtbot.keyClicks(form.metadata_edit, "notes")
    assert tab.rules()[row].target == "metadata.notes"
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
    assert json.loads(tab.payload_view.toPlainText()) == preview.params  # under Advanced
    assert tab.preview_changes() == {"name": expected_name, "metadata.notes": patient["notes"]}
    assert "Nothing was written: this is a preview" in tab.preview_status.text()
    assert "2 fields would change" in tab.diff_label.text()
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
    assert "Saved version 1" in tab.version_label.text() and tab.scope_hint.isHidden()

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
    assert "is not a field ClinicSync can fill in Stripe customers" in tab.row_status(len(document["rules"]) - 1)
    assert not tab.save()
    (tmp_path / "broken.json").write_text("{")
    assert not tab.import_file(tmp_path / "broken.json")
    assert "Could not import broken.json" in tab.message.text()

    tab.import_file(exported)
    assert tab.save()
    stored = mapping_store.load("cliniko.patients")
    assert stored.scope.kind == "since" and stored.version == 1


def test_every_option_of_every_transform_is_edited_in_words_and_round_trips(qtbot, offline_env, build_gui):
    gui = build_gui(offline_env)
    tab = mapping_tab(gui)
    seen: dict[str, set[str]] = {}

    def options_of(form: RuleForm, transform: str) -> dict:
        seen[transform] = set(form.options)
        return form.options

    form = new_row(qtbot, tab, "description", "copy", "occupation")
    options_of(form, "copy")
    choose(form.overflow_box, "truncate")

    form = new_row(qtbot, tab, "metadata.where", "join", "address_1", "city")
    choose(options_of(form, "join")["separator"], OTHER)
    qtbot.keyClicks(form.separator_edit, " | ")

    form = new_row(qtbot, tab, "metadata.greeting", "template")
    pattern = options_of(form, "template")["template"]
    pattern.clear()
    qtbot.keyClicks(pattern, "Dear ")
    form.insert_box.activated.emit(form.insert_box.findData("first_name"))  # "Insert a field…"

    form = new_row(qtbot, tab, "metadata.email_lower", "email", "email")
    check = options_of(form, "email")["lowercase"]
    assert isinstance(check, QCheckBox)
    check.setChecked(True)

    form = new_row(qtbot, tab, "metadata.system", "constant")
    qtbot.keyClicks(options_of(form, "constant")["value"], "Cliniko")

    form = new_row(qtbot, tab, "metadata.job", "truncate", "occupation")
    spin = options_of(form, "truncate")["max_chars"]
    assert isinstance(spin, QSpinBox)
    spin.setValue(20)
    qtbot.keyClicks(form.options["marker"], "...")

    form = new_row(qtbot, tab, "shipping.phone", "phone_e164", "emergency_contact")
    choose(options_of(form, "phone_e164")["on_invalid"], "drop")

    form = new_row(qtbot, tab, "metadata.home_phone", "preferred_phone", "patient_phone_numbers")
    choose(options_of(form, "preferred_phone")["prefer"], "Home")
    choose(form.options["format"], "e164")

    form = new_row(qtbot, tab, "metadata.created_on", "local_date", "created_at")
    choose(options_of(form, "local_date")["time_zone"], "Australia/Perth")

    form = new_row(qtbot, tab, "metadata.amount", "minor_units", "old_reference_id")
    options_of(form, "minor_units")["exponent"].setValue(3)

    form = new_row(qtbot, tab, "metadata.reminders", "lookup", "reminder_type")
    table = options_of(form, "lookup")["table"]
    assert isinstance(table, QTableWidget)
    for key, value in (("SMS", "text"), ("Email", "mail")):
        form._add_lookup_row()
        table.item(table.rowCount() - 1, 0).setText(key)
        table.item(table.rowCount() - 1, 1).setText(value)
    form.default_check.setChecked(True)
    qtbot.keyClicks(form.options["default"], "other")

    form = new_row(qtbot, tab, "metadata.concession", "link_id", "concession_type")
    options_of(form, "link_id")

    # Every option of every transform has its own editor: nothing needs typing as JSON.
    assert seen == {name: set(TRANSFORM_OPTIONS[name]) for name in TRANSFORMS}
    expected = (
        *CLINIKO_PATIENTS.rules,
        FieldRule("description", ("occupation",), overflow="truncate"),
        rule("metadata.where", "address_1", "city", transform="join", separator=" | "),
        rule("metadata.greeting", transform="template", template="Dear {first_name}"),
        rule("metadata.email_lower", "email", transform="email", lowercase=True),
        rule("metadata.system", transform="constant", value="Cliniko"),
        rule("metadata.job", "occupation", transform="truncate", max_chars=20, marker="..."),
        rule("shipping.phone", "emergency_contact", transform="phone_e164", on_invalid="drop"),
        rule("metadata.home_phone", "patient_phone_numbers", transform="preferred_phone", prefer="Home", format="e164"),
        rule("metadata.created_on", "created_at", transform="local_date", time_zone="Australia/Perth"),
        rule("metadata.amount", "old_reference_id", transform="minor_units", exponent=3),
        rule(
            "metadata.reminders",
            "reminder_type",
            transform="lookup",
            table={"SMS": "text", "Email": "mail"},
            default="other",
        ),
        rule("metadata.concession", "concession_type", transform="link_id"),
    )
    assert tab.rules() == expected
    assert tab.problems == [], tab.message.text()
    assert tab.save()
    stored = mapping_store.load("cliniko.patients")
    assert stored.rules == expected and stored.version == 1

    # Opened again, each row shows what was stored, and saving it again changes nothing.
    tab.reload(force=True)
    assert tab.rules() == expected
    form = tab.select_row(len(expected) - 2)
    shown = {form.lookup_table.item(r, 0).text(): form.lookup_table.item(r, 1).text() for r in range(2)}
    assert shown == {"SMS": "text", "Email": "mail"}
    assert form.default_check.isChecked() and form.options["default"].text() == "other"
    form = tab.select_row(len(CLINIKO_PATIENTS.rules) + 1)
    assert form.options["separator"].currentData() == OTHER and form.separator_edit.text() == " | "
    assert tab.select_row(len(CLINIKO_PATIENTS.rules) + 8).options["time_zone"].currentText() == "Australia/Perth"
    assert tab.select_row(len(CLINIKO_PATIENTS.rules) + 5).options["max_chars"].value() == 20
    assert tab.save() and "Nothing to save" in tab.message.text()
    assert mapping_store.load("cliniko.patients").version == 1


def test_advanced_shows_the_mapping_as_json_and_takes_it_back(qtbot, offline_env, build_gui):
    gui = build_gui(offline_env)
    tab = mapping_tab(gui)
    assert tab.advanced.isHidden()
    tab.advanced_button.click()
    assert tab.advanced.isVisibleTo(tab)
    document = json.loads(tab.json_edit.toPlainText())
    assert document["rules"][0]["target"] == "name"
    assert not tab.apply_json("{not json")
    assert "not valid JSON (line 1" in tab.message.text()
    document["rules"][0]["options"] = {"separator": "-"}
    assert tab.apply_json(json.dumps(document))
    assert tab.rules()[0].options["separator"] == "-" and tab.dirty
    assert tab.select_row(0).options["separator"].currentData() == OTHER


def test_a_damaged_stored_mapping_is_named_in_the_tab_and_saving_replaces_it(qtbot, offline_env, build_gui):
    from clinicsync.store.db import database_proxy

    gui = build_gui(offline_env)
    database_proxy.execute_sql(
        "INSERT INTO stream_mapping (stream, version, body, saved_at, saved_by) "
        "VALUES ('cliniko.patients', 4, '{not json', '2025-01-01 00:00:00', 'someone')"
    )
    tab = mapping_tab(gui)
    tab.reload(force=True)
    assert "(version 4) cannot be read" in tab.message.text()
    assert tab.rules() == CLINIKO_PATIENTS.rules, "the built-in default stands in, for editing"
    assert tab.save(), "saving is how a person replaces the damaged row"
    saved = mapping_store.load("cliniko.patients")
    assert not saved.unreadable and saved.rules == CLINIKO_PATIENTS.rules


def test_the_products_mapping_is_worded_for_products(qtbot, offline_env, build_gui):
    gui = build_gui(offline_env)
    tab = mapping_tab(gui)
    choose(tab.stream_box, "cliniko.products")
    assert tab.stream_box.currentText() == "Cliniko products → Stripe products and prices"
    row = next(n for n, r in enumerate(tab.rules()) if r.role == "match_key")
    form = tab.select_row(row)
    assert form.role_box.currentText() == "Finds existing Stripe products (by name)"
    offered = [form.role_box.itemText(i) for i in range(form.role_box.count())]
    assert not any("customer" in text or "match_key" in text or "cross_ref" in text for text in offered), offered
    choose(tab.stream_box, "cliniko.patients")  # and back: the patients' words again
    row = next(n for n, r in enumerate(tab.rules()) if r.role == "match_key")
    assert tab.select_row(row).role_box.currentText() == "Finds existing Stripe customers (by email)"
