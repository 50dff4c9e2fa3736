"""The Review tab for invoices: the invoice and each candidate payment side by side under payment headings (who
paid, email, amount, customer, date), nothing offered to create, and a person's link carried out by the next sync."""

from __future__ import annotations

from decimal import Decimal

import stripe
from PySide6.QtCore import Qt

from clinicsync.store.models import RecordLink
from clinicsync.ui.review_tab import ReviewTab
from tests.ui.connections_support import build_ui, close_ui
from tests.ui.test_review_tab import cell, sync, wait_for_candidates

TIMEOUT_MS = 30_000


def test_an_invoice_and_its_candidate_payments_side_by_side(qtbot, make_sandbox, env_for):
    sandbox = make_sandbox(profile="clean", patients=40, invoices=120, invoice_customers=40, seed=3)
    ui = build_ui(env_for(sandbox, CLINICSYNC_STREAMS_CLINIKO_INVOICES_ENABLED="true"))
    try:
        sync(qtbot, ui)
        scenario = sandbox.seeded["invoice_scenario"]
        split = next(i for i, case in sorted(scenario["cases"].items()) if case == "split")
        tab = ReviewTab(ui)
        qtbot.addWidget(tab)
        row = next(n for n, r in enumerate(tab.model.rows) if r.source_id == split)
        tab.items_view.selectRow(row)
        wait_for_candidates(qtbot, tab)
        qtbot.waitUntil(lambda: tab.candidate_model.record is not None and tab.candidate_model.record.loaded)
        view = tab.candidates_view
        headers = [view.model().headerData(c, Qt.Orientation.Horizontal) for c in range(7)]
        assert headers[1:5] == ["Paid by", "Email", "Amount", "Customer"]
        assert cell(view, 1, 0) == "Payment 1" and not tab.create_button.isEnabled()

        def amount(r: int) -> Decimal:
            return Decimal(cell(view, r, 3).split()[0].replace(",", ""))

        assert amount(1) + amount(2) == amount(0), "the rebate and the gap make the invoice's total"
        assert all(cell(view, r, 4).startswith("cus_") for r in (1, 2)), "both by the patient's customer"

        tab.select_candidate(0)
        chosen = tab.candidate_model.rows[0].stripe_id
        tab.link_button.click()
        sync(qtbot, ui)
        assert (
            RecordLink.get((RecordLink.stream == "cliniko.invoices") & (RecordLink.source_id == split)).stripe_id
            == chosen
        )
        sdk = stripe.StripeClient(sandbox.stripe_key or "", base_addresses={"api": sandbox.stripe_url})
        assert sdk.v1.payment_intents.retrieve(chosen).metadata["cliniko_invoice_id"] == split
    finally:
        close_ui(ui)
