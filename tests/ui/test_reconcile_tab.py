"""The Reconciliation tab: runs a reconciliation as a runner job and shows its findings (with the field and both
values), filters and searches them, applies a fix as a runner job, lists earlier reports, stays lazy with
thousands of findings, and exports CSV (every finding, round-tripped) and a PDF on A4 paper."""

from __future__ import annotations

import csv
import dataclasses
import gc
import random
import re
import threading
from dataclasses import replace
from pathlib import Path

import pytest
import stripe

from clinicsync.reconcile.findings import (
    Counts,
    Finding,
    FindingStatus,
    FindingType,
    FixKind,
    Reason,
    ReportOutcome,
    Severity,
)
from clinicsync.store import reconciliation as report_store
from clinicsync.store.models import AccountPair
from clinicsync.sync import reconcile_run
from clinicsync.ui import reconcile_tab
from clinicsync.ui.reconcile_tab import FindingsModel, ReconcileTab, confirm_text
from tests.support import admin
from tests.ui.conftest import WAIT_MS
from tests.ui.layout_support import fit_problems, shipped_font
from tests.ui.test_words import bad_words, widget_texts

STREAM = "cliniko.patients"
A4_POINTS = (595, 842)  # 210 × 297 mm in PDF points (1/72 inch), rounded


# --- a report written straight into the store (no network) ---------------------------------------------------
def planted_report(count: int, seed: int) -> int:
    """A finished report of `count` findings of every type, in random order of severity; its id."""
    print(f"seed {seed}")
    rng = random.Random(seed)
    pair = AccountPair.create(
        uuid=f"pair-{seed}",
        source_system="cliniko",
        source_account="700000000000000001",
        source_name="Sandy Bay Physio",
        stripe_account="acct_sandbox_clinic_a",
        stripe_name="Sandy Bay",
        stripe_livemode=False,
    )
    report = report_store.start_report(pair, [STREAM, "cliniko.products"], trigger="test")
    kinds = [FindingType.FIELD_DRIFT, FindingType.MISSING_IN_STRIPE, FindingType.DUPLICATE]
    findings = []
    counts = Counts()
    for n in range(count):
        kind = kinds[n % len(kinds)]
        drift = kind == FindingType.FIELD_DRIFT
        finding = Finding(
            type=kind,
            stream=STREAM if n % 5 else "cliniko.products",
            severity=rng.choice(list(Severity)),
            reason=Reason.VALUE_CHANGED if drift else Reason.NEVER_SYNCED,
            stripe_object="customer",
            source_id=str(1000 + n),
            stripe_id=f"cus_{n:06d}",
            explanation=f"Finding number {n}, planted.",
            suggested_fix=FixKind.REPUSH,
            fixes=(FixKind.REPUSH, FixKind.MARK_INTENDED),
            field="phone" if drift else "",
            source_value=f"+61 400 {n:06d}" if drift else None,
            stripe_value="0400 000 000" if drift else None,
            display_name=f"Patient {n:05d}",
            fingerprint=f"fp{n}",
        )
        findings.append(finding)
        counts.add(finding)
    report_store.add_findings(report, findings)
    report_store.finish_report(report, ReportOutcome.FINDINGS, counts, {STREAM: {"source": count, "stripe": count}})
    return report.id


def test_thousands_of_findings_load_a_page_at_a_time_and_filter(qtbot, build_gui, offline_env) -> None:
    gui = build_gui(offline_env)
    report_id = planted_report(3_000, seed=12)
    tab: ReconcileTab = gui.window.show_tab("reconciliation")
    tab.reload()
    model = tab.model
    assert tab.current_report() is not None and tab.current_report().id == report_id
    assert model.rowCount() == 200, "one page, not the whole report"
    assert "200 of 3,000 findings shown" in tab.status.text()
    tab.view.scrollToBottom()
    qtbot.waitUntil(lambda: model.rowCount() > 200)  # the view asked for the next page as it scrolled
    while model.canFetchMore():
        model.fetchMore()
    assert model.rowCount() == 3_000 and len({f.id for f in model.rows}) == 3_000
    assert tab.status.text() == "3,000 findings"

    tab.type_filter.setCurrentIndex(tab.type_filter.findText("Field drift"))
    assert tab.model.rowCount() == 200 and all(f.type == FindingType.FIELD_DRIFT for f in tab.model.rows)
    tab.stream_filter.setCurrentIndex(tab.stream_filter.findText("Cliniko products"))
    expected = report_store.finding_count(report_id, types=["field_drift"], streams=["cliniko.products"])
    while tab.model.canFetchMore():
        tab.model.fetchMore()
    assert 0 < tab.model.rowCount() == expected
    assert all(f.stream == "cliniko.products" for f in tab.model.rows)

    tab.search.setText("Patient 00015")
    tab.apply_filters()  # at once, not after the typing pause
    assert [f.display_name for f in tab.model.rows] == ["Patient 00015"]
    assert tab.status.text() == "1 finding matches"
    row = tab.model.rows[0]
    texts = [tab.model.index(0, c).data() for c in range(len(FindingsModel.columns))]
    assert texts[1:7] == ["Field drift", "Cliniko products", "Patient 00015", row.stripe_id, "Phone", "+61 400 000015"]
    tab.search.setText("nobody by this name")
    tab.apply_filters()
    assert tab.model.rowCount() == 0 and tab.status.text() == "No findings match."
    assert bad_words(widget_texts(tab)) == []


def test_a_finding_held_by_the_table_reads_back_whole_and_costs_the_garbage_collector_nothing() -> None:
    """The findings table keeps each finding as a plain tuple (its enums by value): every field comes back with
    its own type, and the tuple is one the collector stops watching."""
    finding = Finding(
        type=FindingType.DUPLICATE,
        stream="cliniko.products",
        severity=Severity.MEDIUM,
        reason=Reason.SAME_REFERENCE,
        stripe_object="product",
        source_id="77",
        stripe_id="prod_sandboxB",
        explanation="Two products name the same record.",
        suggested_fix=FixKind.ARCHIVE,
        fixes=(FixKind.ARCHIVE, FixKind.MARK_INTENDED),
        field="name",
        source_value="Massage 60",
        stripe_value="Massage",
        display_name="Massage 60",
        related=("prod_sandboxA", "prod_sandboxB"),
        fingerprint="fp-77",
        id=9,
        status=FindingStatus.FIXED,
        note="archived",
    )
    model = FindingsModel()
    model.set_rows([finding, replace(finding, suggested_fix=None, fixes=(), id=10)])
    gc.collect()
    gc.collect()  # a tuple is let go once the tuples inside it have been
    assert not any(gc.is_tracked(model.rows.values(position)) for position in range(2))
    back = model.row_at(0)
    assert back == finding
    for field in dataclasses.fields(Finding):
        assert type(getattr(back, field.name)) is type(getattr(finding, field.name)), field.name
    assert model.row_at(1).suggested_fix is None and model.row_at(1).fixes == ()


def test_exports_every_finding_to_csv_and_the_report_to_a4_pdf(
    qtbot, build_gui, offline_env, tmp_path, monkeypatch
) -> None:
    gui = build_gui(offline_env)
    report_id = planted_report(250, seed=3)
    tab: ReconcileTab = gui.window.show_tab("reconciliation")
    tab.reload()
    chosen: list[str] = []

    def choose(_parent, _title, suggested, _filter):
        chosen.append(suggested)
        return str(tmp_path / Path(suggested).name)

    tab.choose_file = choose
    with qtbot.waitSignal(tab.exported, timeout=WAIT_MS) as saved:
        tab.export_buttons["csv"].click()
    assert saved.args == ["csv", str(tmp_path / f"reconciliation-{report_id}.csv")]
    with open(saved.args[1], encoding="utf-8", newline="") as file:
        rows = list(csv.DictReader(file))
    stored = list(report_store.findings(report_id))
    assert len(rows) == len(stored) == 250
    assert {(r["type"], r["stream"], r["source_id"], r["stripe_id"], r["field"]) for r in rows} == {
        (f.type.value, f.stream, f.source_id or "", f.stripe_id or "", f.field) for f in stored
    }
    drift = next(r for r in rows if r["source_id"] == "1000")
    assert (drift["source_value"], drift["stripe_value"]) == ("+61 400 000000", "0400 000 000")

    monkeypatch.setattr(reconcile_tab, "LONG_PDF_FINDINGS", 100)  # a long PDF keeps the window busy: asked first
    asked: list[str] = []
    tab.confirm = lambda _parent, _title, text, _action: asked.append(text) and False
    tab.export_buttons["pdf"].click()
    assert "250 findings" in asked[0] and len(chosen) == 1, "declined: no file is even asked for"
    tab.confirm = lambda *_: True
    with qtbot.waitSignal(tab.exported, timeout=WAIT_MS) as saved:
        tab.export_buttons["pdf"].click()
    pdf = Path(saved.args[1]).read_bytes()
    assert saved.args[0] == "pdf" and pdf.startswith(b"%PDF")
    boxes = {tuple(sorted(round(float(v)) for v in box)) for box in media_boxes(pdf)}
    assert boxes == {A4_POINTS}, boxes
    assert len(media_boxes(pdf)) > 1, "250 findings take more than one page"

    with qtbot.waitSignal(tab.exported, timeout=WAIT_MS) as saved:
        tab.export("html", tmp_path / "report.html")
    page = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert "Cliniko patients → Stripe customers" in page and "<td>Phone</td>" in page


def media_boxes(pdf: bytes) -> list[tuple[bytes, bytes]]:
    return re.findall(rb"/MediaBox\s*\[\s*0\s+0\s+([\d.]+)\s+([\d.]+)\s*\]", pdf)


# --- against the sandbox ---------------------------------------------------------------------------------------
def test_drift_made_in_stripe_is_found_filtered_fixed_and_gone(qtbot, sandbox_gui) -> None:
    gui, sandbox = sandbox_gui(profile="clean", patients=12)
    with qtbot.waitSignal(gui.ui.bridge.job_finished, timeout=WAIT_MS):
        gui.sync_now()
    customer = next(c for c in admin(sandbox.stripe_url, "dump")["data"] if c["metadata"].get("cliniko_patient_id"))
    patient_id, original = customer["metadata"]["cliniko_patient_id"], customer["name"]
    # Staff edit the customer in Stripe (here through the Stripe SDK, as any integration would).
    sdk = stripe.StripeClient(sandbox.stripe_key, base_addresses={"api": sandbox.stripe_url}, max_network_retries=0)
    sdk.v1.customers.update(customer["id"], params={"name": "Edited In Stripe"})

    tab: ReconcileTab = gui.window.show_tab("reconciliation")
    assert "No reconciliation yet" in tab.summary.text()
    shown: list[str] = []  # the progress line as each step arrived (the tab's slot runs first)
    gui.ui.bridge.job_progress.connect(lambda *_: shown.append(tab.progress.text()))
    with qtbot.waitSignal(tab.report_shown, timeout=WAIT_MS, check_params_cb=bool):
        tab.run_button.click()
        assert not tab.run_button.isEnabled(), "one reconciliation at a time"
    assert tab.run_button.isEnabled() and "1 finding" in tab.progress.text()
    assert "Reading Stripe customers and patient records — Cliniko patients" in shown, shown
    (finding,) = tab.model.rows
    assert (finding.type, finding.source_id, finding.stripe_id) == (FindingType.FIELD_DRIFT, patient_id, customer["id"])
    cells = [tab.model.index(0, column).data() for column in range(len(FindingsModel.columns))]
    assert cells[1] == "Field drift" and cells[5] == "Name"
    assert (cells[6], cells[7]) == (original, "Edited In Stripe"), "the field's two values, as each side has it"
    assert "Field drift: 1" in tab.summary.text()

    # Filters: another kind of finding shows none; the record's name finds it again.
    tab.type_filter.setCurrentIndex(tab.type_filter.findText("Missing in Stripe"))
    assert tab.model.rowCount() == 0 and tab.status.text() == "No findings match."
    tab.type_filter.setCurrentIndex(0)
    tab.search.setText(original.split()[0])
    tab.apply_filters()
    assert [f.id for f in tab.model.rows] == [finding.id]
    assert bad_words(widget_texts(tab)) == []

    # The suggested fix, confirmed in plain words, runs as a runner job.
    tab.select_finding(0)
    tab.fix_menu.aboutToShow.emit()
    assert next(a.text() for a in tab.fix_menu.actions()).endswith("(suggested)")
    assert bad_words([("fix menu", a.text()) for a in tab.fix_menu.actions()]) == []
    words, kind, _ = tab.fix_choices()[0]
    assert kind == finding.suggested_fix and words.endswith("(suggested)")
    asked: list[str] = []
    tab.confirm = lambda _parent, _title, text, _action: asked.append(text) or True
    with qtbot.waitSignal(tab.fixes_done, timeout=WAIT_MS) as fixed:
        job = tab.request_fix(kind)
    assert job is not None and job.kind == "reconcile_fix"
    assert "Edited In Stripe" in asked[0] and "cliniko." not in asked[0]
    (done,) = fixed.args[0]
    assert done.status in (FindingStatus.SCHEDULED, FindingStatus.FIXED), done.message
    assert tab.model.rows[0].status == done.status
    if done.status == FindingStatus.SCHEDULED:  # a re-push: the next sync sends the record again
        with qtbot.waitSignal(gui.ui.bridge.job_finished, timeout=WAIT_MS):
            gui.sync_now()

    first = tab.current_report()
    with qtbot.waitSignal(tab.report_shown, timeout=WAIT_MS, check_params_cb=lambda rid: rid != first.id):
        tab.run_now()
    assert tab.model.rowCount() == 0
    assert tab.current_report().outcome == ReportOutcome.CLEAN
    assert "Both sides agree" in tab.summary.text()
    assert customer_name(sandbox, customer["id"]) == original
    # The earlier report is still listed, with its finding.
    assert tab.report_picker.count() == 2
    tab.report_picker.setCurrentIndex(1)
    assert [f.id for f in tab.model.rows] == [finding.id]


def customer_name(sandbox, customer_id: str) -> str:
    return next(c["name"] for c in admin(sandbox.stripe_url, "dump")["data"] if c["id"] == customer_id)


def test_mark_as_intended_asks_for_a_note_and_a_cancelled_dialog_changes_nothing(qtbot, sandbox_gui) -> None:
    gui, sandbox = sandbox_gui(profile="clean", patients=5)
    with qtbot.waitSignal(gui.ui.bridge.job_finished, timeout=WAIT_MS):
        gui.sync_now()
    customer = next(c for c in admin(sandbox.stripe_url, "dump")["data"] if c["metadata"].get("cliniko_patient_id"))
    sdk = stripe.StripeClient(sandbox.stripe_key, base_addresses={"api": sandbox.stripe_url}, max_network_retries=0)
    sdk.v1.customers.update(customer["id"], params={"phone": "0400 123 456"})
    tab: ReconcileTab = gui.window.show_tab("reconciliation")
    with qtbot.waitSignal(tab.report_shown, timeout=WAIT_MS, check_params_cb=bool):
        tab.run_now()
    tab.select_finding(0)
    assert tab.intended_button.isEnabled()

    tab.ask_note = lambda _parent, _text: None  # the person closed the dialog
    assert tab.request_fix(FixKind.MARK_INTENDED) is None
    tab.confirm = lambda *_: False
    assert tab.request_fix(FixKind.REPUSH) is None
    assert tab.model.rows[0].status == FindingStatus.OPEN

    tab.ask_note = lambda _parent, _text: "The patient gave the front desk a new number"
    with qtbot.waitSignal(tab.fixes_done, timeout=WAIT_MS):
        tab.intended_button.click()
    assert tab.model.rowCount() == 0 and "Both sides agree" in tab.status.text()
    tab.accepted_box.setChecked(True)
    (accepted,) = tab.model.rows
    assert accepted.status == FindingStatus.ACCEPTED
    assert tab.model.index(0, FindingsModel.STATUS).data() == "Marked as intended"
    assert not tab.fix_button.isEnabled() and not tab.intended_button.isEnabled()


@pytest.mark.parametrize("kind", [FixKind.DELETE, FixKind.REPUSH])
def test_the_confirmation_says_what_happens_in_words(kind: FixKind) -> None:
    finding = Finding(
        type=FindingType.DUPLICATE,
        stream=STREAM,
        severity=Severity.MEDIUM,
        reason=Reason.SAME_EMAIL,
        stripe_object="customer",
        source_id=None,
        stripe_id="cus_extra",
        explanation="Two customers share walk.in@example.org.",
        suggested_fix=FixKind.ARCHIVE,
        fixes=(FixKind.ARCHIVE, FixKind.DELETE, FixKind.MARK_INTENDED),
        related=("cus_keep", "cus_extra"),
    )
    text = confirm_text(finding, kind)
    assert "Duplicate: Stripe object cus_extra" in text and "_" not in text.replace("cus_", "")
    assert ("cannot be undone" in text) == (kind == FixKind.DELETE)


@pytest.mark.parametrize("size", [(1100, 720), (1024, 700)], ids=lambda s: f"{s[0]}x{s[1]}")
def test_a_report_with_findings_fits(qtbot, qapp, build_gui, offline_env, size) -> None:
    gui = build_gui(offline_env)
    planted_report(60, seed=7)
    with shipped_font(qapp):
        gui.window.resize(*size)
        gui.window.show()
        qtbot.waitExposed(gui.window)
        tab: ReconcileTab = gui.window.show_tab("reconciliation")
        tab.reload()
        tab.select_finding(0)
        qtbot.wait(50)
        assert tab.detail.text() and tab.fix_button.isEnabled()
        assert fit_problems(tab) == []


def test_cancel_stops_the_reconciliation_and_its_report_says_incomplete(qtbot, sandbox_gui, monkeypatch) -> None:
    gui, _ = sandbox_gui(profile="clean", patients=8)
    with qtbot.waitSignal(gui.ui.bridge.job_finished, timeout=WAIT_MS):
        gui.sync_now()
    # The worker waits at its first step until the test has pressed Cancel: no race with a fast sandbox.
    go = threading.Event()
    read_stripe = reconcile_run._StreamReconciler._read_stripe

    def held(self, scratch, stop):
        assert go.wait(WAIT_MS / 1000)
        return read_stripe(self, scratch, stop)

    monkeypatch.setattr(reconcile_run._StreamReconciler, "_read_stripe", held)
    tab: ReconcileTab = gui.window.show_tab("reconciliation")
    assert not tab.cancel_button.isEnabled()
    tab.run_now()
    qtbot.waitUntil(tab.cancel_button.isEnabled, timeout=WAIT_MS)
    with qtbot.waitSignal(tab.report_shown, timeout=WAIT_MS, check_params_cb=bool):
        tab.cancel_button.click()
        go.set()
    assert "cancelled" in tab.progress.text() and tab.run_button.isEnabled()
    assert tab.current_report().outcome == ReportOutcome.CANCELLED
    assert "Incomplete (cancelled)" in tab.summary.text()


def test_fix_outcomes_in_words() -> None:
    from clinicsync.sync.reconcile_fix import FixOutcome
    from clinicsync.ui.reconcile_tab import fix_outcome_text

    scheduled = FixOutcome(1, FixKind.REPUSH, FindingStatus.SCHEDULED, "the next sync sends it again")
    assert fix_outcome_text(scheduled) == "Scheduled: the next sync sends it again."
    queued = FixOutcome(1, FixKind.ARCHIVE, FindingStatus.SCHEDULED, "queued: the next sync sends the rest")
    assert fix_outcome_text(queued) == "Scheduled: the next sync sends the rest."
    refused = FixOutcome(1, FixKind.LINK, None, "cus_1 is linked to Ada Lovelace; each belongs to one record.")
    assert fix_outcome_text(refused) == "Not done: cus_1 is linked to Ada Lovelace; each belongs to one record."


def test_a_fix_that_writes_to_stripe_is_done_at_once(qtbot, sandbox_gui) -> None:
    gui, sandbox = sandbox_gui(profile="clean", patients=4)
    with qtbot.waitSignal(gui.ui.bridge.job_finished, timeout=WAIT_MS):
        gui.sync_now()
    sdk = stripe.StripeClient(sandbox.stripe_key, base_addresses={"api": sandbox.stripe_url}, max_network_retries=0)
    for name in ("Walk In", "Walk-in"):  # one person entered twice at the front desk, by hand
        sdk.v1.customers.create(params={"name": name, "email": "walk.in@example.org"})
    tab: ReconcileTab = gui.window.show_tab("reconciliation")
    with qtbot.waitSignal(tab.report_shown, timeout=WAIT_MS, check_params_cb=bool):
        tab.run_now()
    (duplicate,) = tab.model.rows
    assert duplicate.type == FindingType.DUPLICATE and duplicate.suggested_fix == FixKind.ARCHIVE
    tab.select_finding(0)
    tab.confirm = lambda _parent, _title, text, _action: "right away" in text
    with qtbot.waitSignal(tab.fixes_done, timeout=WAIT_MS) as fixed:
        tab.request_fix(FixKind.ARCHIVE)
    (done,) = fixed.args[0]
    assert done.status == FindingStatus.FIXED, done.message
    assert tab.progress.text().startswith("Done: ") and tab.model.rows[0].status == FindingStatus.FIXED
    assert not tab.fix_button.isEnabled(), "fixed: nothing left to do here"
    marked = sdk.v1.customers.retrieve(duplicate.stripe_id)
    assert marked.metadata.to_dict().get("clinicsync_duplicate_of") == duplicate.kept_id
    first_id = tab.reports[0].id
    with qtbot.waitSignal(tab.report_shown, timeout=WAIT_MS, check_params_cb=lambda rid: rid != first_id):
        tab.run_now()
    assert tab.model.rowCount() == 0 and "Both sides agree" in tab.summary.text()
