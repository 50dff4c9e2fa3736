"""Approval before the first live sync: the dialog lists the plan and the records behind each number; Cancel writes
nothing; Approve leads to a sync that writes exactly the plan."""

from __future__ import annotations

import pytest

from clinicsync.store import queries
from clinicsync.store.models import SyncEvent
from clinicsync.ui.approval import ACTION_ROLE, ApprovalDialog, plan_model, streams_needing_approval
from tests.support import executed_writes
from tests.ui.connections_support import build_ui, close_ui

TIMEOUT_MS = 30_000
STREAM = "cliniko.patients"


@pytest.fixture
def live(make_sandbox, env_for):
    sandbox = make_sandbox(profile="hard", patients=30, stripe_mode="live")
    ui = build_ui(env_for(sandbox))
    yield sandbox, ui
    close_ui(ui)


def sync(qtbot, ui, *, start=None):
    with qtbot.waitSignal(ui.bridge.job_finished, timeout=TIMEOUT_MS) as finished:
        job = start() if start else ui.sync_now()
        assert job is not None
    return finished.args[0]


def action_rows(dialog: ApprovalDialog) -> dict[str, tuple[str, list[tuple[str, str, str]]]]:
    """action -> (the row's text, [(name, Cliniko id, Stripe id) of each record under it])."""
    model = dialog.model
    rows = {}
    for row in range(model.rowCount()):
        parent = model.item(row, 0)
        children = [tuple(parent.child(i, column).text() for column in range(3)) for i in range(parent.rowCount())]
        rows[parent.data(ACTION_ROLE)] = (parent.text(), children)
    return rows


def test_a_live_sync_stops_at_the_plan_and_approving_writes_exactly_it(qtbot, live):
    sandbox, ui = live
    first = sync(qtbot, ui)
    assert streams_needing_approval(first) == [STREAM]
    assert executed_writes(sandbox.stripe_url) == 0
    plan = queries.latest_plan(STREAM)
    assert plan is not None and plan.approved_at is None
    counts, samples = plan.summary["counts"], plan.summary["samples"]

    dialog = ApprovalDialog(ui, plan)
    qtbot.addWidget(dialog)
    rows = action_rows(dialog)
    for action in ("created", "linked", "review"):
        text, records = rows[action]
        assert text.startswith(f"{counts[action]} "), (action, text)
        listed = {source_id for _, source_id, _ in records if source_id}
        assert listed == {s["source_id"] for s in samples.get(action, [])}, action
    assert counts["created"] > 15 and counts["linked"] >= 1 and counts["review"] >= 1
    # The new live connection's default scope, and what it leaves out, are part of what is approved.
    inactive = sandbox.seeded["inactive_ids"]
    assert plan.summary["out_of_scope"] == len(inactive) > 0
    scope_text = dialog.scope_label.text()
    assert "invoice or appointment in the last 24 months" in scope_text and f"{len(inactive)} other" in scope_text
    assert "default for a new live connection" in scope_text and "Field mapping" in scope_text
    linked_record = rows["linked"][1][0]
    assert linked_record[2].startswith("cus_"), "a link shows the existing customer it links to"
    assert any("more" in name for name, _, _ in rows["created"][1]), "records beyond the samples are counted"
    for target in ("Name", "Email", "Metadata: cliniko_patient_id"):
        assert target in dialog.fields_label.text()
    assert "LIVE" in dialog.heading.text() and "Nothing has been written yet" in dialog.heading.text()
    assert dialog.cancel_button.isDefault(), "Enter must not approve a live write"

    dialog.cancel_button.click()
    assert queries.latest_plan(STREAM).approved_at is None and dialog.job is None
    assert executed_writes(sandbox.stripe_url) == 0, "Cancel writes nothing"

    dialog = ApprovalDialog(ui, plan)
    qtbot.addWidget(dialog)
    outcome = sync(qtbot, ui, start=lambda: (dialog.approve_button.click(), dialog.job)[1])
    assert queries.latest_plan(STREAM).approved_at is not None
    (result,) = outcome.results
    for action in ("created", "linked", "updated", "review", "skipped", "failed"):
        assert result.counts[action] == counts[action], action
    assert executed_writes(sandbox.stripe_url) == counts["created"] + counts["linked"]
    for action in ("created", "linked"):
        written = {
            e.source_id for e in SyncEvent.select().where(SyncEvent.run == result.run_id, SyncEvent.action == action)
        }
        assert {s["source_id"] for s in samples[action]} <= written, action


def test_an_outdated_plan_is_not_approved(qtbot, live):
    _, ui = live
    sync(qtbot, ui)
    old = queries.latest_plan(STREAM)
    sync(qtbot, ui)  # still unapproved: another plan is made
    assert queries.latest_plan(STREAM).id != old.id
    dialog = ApprovalDialog(ui, old)
    qtbot.addWidget(dialog)
    dialog.approve_button.click()
    assert "newer plan" in dialog.message_label.text() and dialog.job is None
    assert queries.latest_plan(STREAM).approved_at is None


def test_the_plans_records_are_cleaned_like_every_other_table(qtbot):
    sample = {"name": "\u202eAnn\u2028Lee", "source_id": "\u200f42", "stripe_id": "cus_1", "message": "x" * 5000}
    model = plan_model({"counts": {"created": 1}, "samples": {"created": [sample]}})
    created = next(model.item(r, 0) for r in range(model.rowCount()) if model.item(r, 0).data(ACTION_ROLE) == "created")
    name, source_id, _, message = (created.child(0, column).text() for column in range(4))
    assert (name, source_id) == ("Ann · Lee", "42")
    assert len(message) <= 1_000 and message.endswith("…")


def test_a_products_plan_speaks_of_products_and_prices(qtbot):
    summary = {
        "stream": "cliniko.products",
        "counts": {"created": 3, "linked": 1, "updated": 2, "skipped": 1},
        "samples": {"created": [{"name": "Foam roller", "source_id": "77", "stripe_id": None, "message": ""}]},
    }
    model = plan_model(summary)
    headers = [model.horizontalHeaderItem(column).text() for column in range(model.columnCount())]
    assert headers == ["What", "Cliniko id", "Stripe product", "Note"]
    lines = {model.item(r, 0).data(ACTION_ROLE): model.item(r, 0).text() for r in range(model.rowCount())}
    assert lines["created"] == "3  New Stripe products will be created, each with its price"
    assert lines["linked"] == "1  Linked to existing Stripe products"
    assert lines["updated"].startswith("2  Linked products will be updated (")
    assert lines["skipped"] == "1  Skipped: archived or not syncable"
    text = " ".join([*headers, *lines.values()])
    assert "customer" not in text and "cliniko.products" not in text and "merged" not in text
    patients = plan_model({"stream": "cliniko.patients", "counts": {"created": 1}})
    assert patients.horizontalHeaderItem(2).text() == "Stripe customer"
    assert patients.item(0, 0).text() == "1  New Stripe customers will be created"


def test_turning_the_invoice_mirror_on_shows_what_stripe_will_hold_and_the_email_settings_reminder(qtbot):
    from clinicsync.store.models import AccountPair, SyncPlan
    from clinicsync.streams.cliniko_invoice_mirror import PLAN_NOTE

    pair = AccountPair(source_name="Sandbox Clinic", stripe_name="Sandbox Stripe", stripe_account="acct_sandbox")
    summary = {"stream": "cliniko.invoice_mirror", "counts": {"created": 12}, "stream_note": PLAN_NOTE}
    dialog = ApprovalDialog(None, SyncPlan(stream="cliniko.invoice_mirror", summary=summary, pair=pair))  # type: ignore[arg-type]
    qtbot.addWidget(dialog)
    assert "customer email settings in the Stripe Dashboard" in dialog.stream_note_label.text()
    assert not dialog.stream_note_label.isHidden()
    assert action_rows(dialog)["created"][0] == "12  New Stripe invoices will be created"
    patients = ApprovalDialog(None, SyncPlan(stream=STREAM, summary={"counts": {}}, pair=pair))  # type: ignore[arg-type]
    qtbot.addWidget(patients)
    assert patients.stream_note_label.isHidden()
