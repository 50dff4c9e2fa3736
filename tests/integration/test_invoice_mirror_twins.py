"""Two installations mirroring the same Cliniko invoices at once (issue 8; found by the soak, seed 101: 3 to 37
invoices mirrored twice): the Stripe invoices a race made twice are repaired on the next run. The finalized one made
first is kept; each twin is closed the mirror's way (voided, or credited in full outside Stripe when paid; never
refunded, never emailed) and marked as the kept one's duplicate; an installation linked to a twin moves its link to
the one kept and sends its data there. A mirror voided and replaced on purpose (its lines edited in Cliniko) is no
twin: it stays as it is, and nobody is told of another computer.
"""

from __future__ import annotations

import time
from typing import Any

import stripe

from clinicsync.store.models import RecordLink
from clinicsync.streams.base import DUPLICATE_OF_KEY
from clinicsync.sync.service import run_sync
from clinicsync.sync.twins import OTHER_INSTALLATION_MESSAGE
from tests.integration.test_invoice_mirror import ON, STREAM, check_exact, mirrors
from tests.support import admin, context, sync_once


def _links(env: dict[str, str]) -> dict[str, str]:
    context(env)
    rows = RecordLink.select().where((RecordLink.stream == STREAM) & RecordLink.stripe_id.is_null(False))
    return {row.source_id: row.stripe_id for row in rows}


def _twin(sdk: stripe.StripeClient, mirror: dict[str, Any], state: str) -> str:
    """The mirror another computer made of the same invoice at the same moment: its one line the total, then
    finalized and paid as far as `state`."""
    invoice_id = mirror["metadata"]["cliniko_invoice_id"]
    made = sdk.v1.invoices.create(
        params={
            "customer": mirror["customer"],
            "currency": mirror["currency"],
            "collection_method": "send_invoice",
            "days_until_due": 30,
            "auto_advance": False,
            "metadata": {"cliniko_invoice_id": invoice_id},
        }
    )
    line = {"amount": mirror["total"], "currency": mirror["currency"], "description": "Consultation"}
    sdk.v1.invoice_items.create(params={"customer": mirror["customer"], "invoice": made.id, **line})
    if state in ("open", "paid"):
        sdk.v1.invoices.finalize_invoice(made.id, params={"auto_advance": False})
    if state == "paid":
        sdk.v1.invoices.pay(made.id, params={"paid_out_of_band": True})
    return made.id


def _closed(dump: dict[str, Any], twin_id: str) -> tuple[str, int, str | None]:
    (invoice,) = [i for i in dump["invoices"] if i["id"] == twin_id]
    credited = sum(n["out_of_band_amount"] for n in dump["credit_notes"] if n["invoice"] == twin_id)
    return invoice["status"], credited, invoice["metadata"].get(DUPLICATE_OF_KEY)


def test_twins_of_a_race_are_closed_and_marked_the_links_move_to_the_one_kept_and_a_replacement_stays(
    make_sandbox, env_for
) -> None:
    sandbox = make_sandbox(patients=30, products=2, invoices=40, invoice_customers=15, seed=7)
    a, b = env_for(sandbox, "a", **ON), env_for(sandbox, "b", **ON)
    for env in (a, b):  # A mirrors every invoice; B, after it, links A's mirrors
        ctx = context(env)
        assert all(r.outcome == "ok" for r in run_sync(ctx.paths, ctx.settings, ctx.secrets))
    checked = check_exact(sandbox)
    kept = {iid: found[0] for iid, found in mirrors(checked["dump"]).items()}
    assert _links(a) == _links(b) == {iid: m["id"] for iid, m in kept.items()}
    paid = sorted(iid for iid, m in kept.items() if m["status"] == "paid" and not m["post_payment_credit_notes_amount"])
    still_open = sorted(iid for iid, m in kept.items() if m["status"] == "open")
    assert len(paid) >= 1 and len(still_open) >= 3, checked["statuses"]

    # The race: another computer made its own mirror of four invoices a moment later (one still a draft); B is that
    # computer for one of them and is linked to its own.
    sdk = stripe.StripeClient(sandbox.stripe_key or "", base_addresses={"api": sandbox.stripe_url})
    sandbox.stripe.emulator.clock = lambda: time.time() + 30  # a moment later (never the same second: one order)
    wanted = {paid[0]: "paid", still_open[0]: "open", still_open[1]: "draft", still_open[2]: "open"}
    twins = {iid: _twin(sdk, kept[iid], state) for iid, state in wanted.items()}
    context(b)
    RecordLink.update(stripe_id=twins[still_open[2]]).where(
        (RecordLink.stream == STREAM) & (RecordLink.source_id == still_open[2])
    ).execute()

    repaired = sync_once(b, stream=STREAM)
    assert repaired.outcome == "ok" and repaired.counts["failed"] == 0, (repaired.counts, repaired.message)
    assert OTHER_INSTALLATION_MESSAGE in repaired.message, "the person is told another computer syncs"
    dump = admin(sandbox.stripe_url, "dump")
    closed = {iid: _closed(dump, twins[iid]) for iid in wanted}
    assert closed[paid[0]] == ("paid", kept[paid[0]]["total"], kept[paid[0]]["id"]), "credited outside Stripe"
    for iid in still_open[:3]:
        assert closed[iid] == ("void", 0, kept[iid]["id"]), iid
    assert _links(b) == {iid: m["id"] for iid, m in kept.items()}, "B's link moved to the mirror kept"
    assert sync_once(a, stream=STREAM).counts["failed"] == 0
    assert _links(a) == _links(b)
    check_exact(sandbox)  # the twins are marked duplicates: each invoice has one mirror, exact
    assert admin(sandbox.stripe_url, "emails")["count"] == 0
    assert admin(sandbox.stripe_url, "ledger")["balance_transactions"] == []

    # Lines edited in Cliniko: A voids the mirror and makes another. Neither installation takes that for a race.
    admin(
        sandbox.cliniko_url,
        "edit_invoices",
        ids=[still_open[3]],
        lines=[{"name": "Extended consultation", "unit_price": "81.818"}],
    )
    assert sync_once(a, stream=STREAM).counts["updated"] == 1
    for env in (b, a, b):
        again = sync_once(env, stream=STREAM)
        assert again.outcome == "ok" and OTHER_INSTALLATION_MESSAGE not in again.message, again.message
    check_exact(sandbox, replaced={still_open[3]})
    marked = [i["id"] for i in admin(sandbox.stripe_url, "dump")["invoices"] if i["metadata"].get(DUPLICATE_OF_KEY)]
    assert sorted(marked) == sorted(twins.values()), "only the race's twins are marked"
