"""cliniko.invoice_mirror → Stripe invoices, against the sandboxes over real HTTP (issue 11's mirror).

Off by default; turned on, 500 invoices (three- and four-decimal line amounts, percentage and monetary discounts,
tax-inclusive and exclusive lines) are mirrored: each positive, non-reversal invoice once, its total Cliniko's to
the cent, its status Cliniko's (open, paid out of band, void, credited out of band after a reversal), its notes
nowhere in Stripe; Stripe would have sent no email, made no refund and no balance credit; a re-run writes nothing;
status changes and reversals later reach the mirror.
"""

from __future__ import annotations

import json
from collections import Counter
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

import pytest

from clinicsync.sources.cliniko import ClinikoClient, link_id
from clinicsync.streams.invoice_lines import ROUNDING_DESCRIPTION
from clinicsync.sync.service import ConfigProblem, enabled_streams, run_sync
from tests.support import admin, context, set_archived_listing, stats, sync_once

STREAM = "cliniko.invoice_mirror"
ON = {"CLINICSYNC_CLINIKO_INVOICES_MIRROR": "true"}
NOTES = "Patient anxious about needles"  # invented; must never reach Stripe
EXTRA = "Bring previous scans"


def cents(amount: Any) -> int:
    return int((Decimal(str(amount)) * 100).quantize(Decimal(1), ROUND_HALF_UP))


def cliniko_invoices(sandbox: Any) -> dict[str, dict[str, Any]]:
    return cliniko_list(sandbox, "/invoices")


def cliniko_list(sandbox: Any, path: str) -> dict[str, dict[str, Any]]:
    """Every record of a listing as Cliniko's API renders it, live and archived."""
    env = sandbox.env()
    client = ClinikoClient(
        env["CLINICSYNC_CLINIKO_API_KEY"],
        contact_email="tests@example.com",
        base_url=env["CLINICSYNC_CLINIKO_BASE_URL"],
    )
    try:
        return {i["id"]: i for i in client.iter_live_and_archived(path, None)}
    finally:
        client.close()


def mirrors(dump: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """The Stripe invoices naming each Cliniko invoice, but a race's twins retired as duplicates."""
    found: dict[str, list[dict[str, Any]]] = {}
    for invoice in dump["invoices"]:
        metadata = invoice.get("metadata") or {}
        ref = metadata.get("cliniko_invoice_id")
        if ref and not invoice.get("deleted") and not metadata.get("clinicsync_duplicate_of"):
            found.setdefault(ref, []).append(invoice)
    return found


def expected_status(invoice: dict[str, Any]) -> str:
    if invoice["status"] == 30:
        return "void"
    if invoice["status"] in (20, 40):
        return "paid"
    return "open"


def check_exact(sandbox: Any, replaced: set[str] = frozenset()) -> dict[str, Any]:  # type: ignore[assignment]
    """Every positive, live, non-reversal Cliniko invoice mirrored once with the right total, lines and status
    (`replaced`: invoices whose lines were edited after mirroring, whose first mirror is void beside it)."""
    invoices = cliniko_invoices(sandbox)
    dump = admin(sandbox.stripe_url, "dump")
    found = mirrors(dump)
    reversed_ids = {link_id(i["original_invoice"]) for i in invoices.values() if i.get("original_invoice")}
    items_of: dict[str, list[dict[str, Any]]] = {}
    for item in dump["invoiceitems"]:
        items_of.setdefault(item["invoice"], []).append(item)
    notes_of: dict[str, list[dict[str, Any]]] = {}
    for note in dump["credit_notes"]:
        notes_of.setdefault(note["invoice"], []).append(note)
    statuses: Counter[str] = Counter()
    for iid, invoice in invoices.items():
        total = cents(invoice["total_amount"])
        mirrorable = total > 0 and not invoice.get("original_invoice")
        if not mirrorable or invoice.get("archived_at"):
            assert iid not in found, f"invoice {iid} ({invoice['total_amount']}) must not be mirrored"
            continue
        named = found.get(iid, [])
        if iid in replaced:
            old, *named = sorted(named, key=lambda m: m["created"])
            assert old["status"] == "void", (iid, old["status"])
        assert len(named) == 1, f"invoice {iid} has {len(named)} mirrors"
        (mirror,) = named
        assert mirror["total"] == total, (iid, mirror["total"], invoice["total_amount"])
        assert sum(i["amount"] for i in items_of[mirror["id"]]) == total
        assert (mirror["collection_method"], mirror["auto_advance"]) == ("send_invoice", False)
        assert mirror["status"] == expected_status(invoice), (iid, invoice["status"], mirror["status"])
        metadata = mirror["metadata"]
        assert metadata["cliniko_invoice_number"] == str(invoice["number"])
        assert metadata["cliniko_issue_date"] == invoice["issue_date"]  # a pure date, never shifted
        assert (
            metadata["cliniko_invoice_status"]
            == {10: "open", 20: "paid", 30: "closed", 40: "open_credit"}[invoice["status"]]
        )
        credit = notes_of.get(mirror["id"], [])
        if iid in reversed_ids and invoice["status"] == 20:
            (note,) = credit
            assert (note["amount"], note["out_of_band_amount"], note["post_payment_amount"]) == (total,) * 3
            assert note["customer_balance_transaction"] is None and note["refunds"] == []
            statuses["credited"] += 1
        else:
            assert credit == [], iid
            statuses[mirror["status"]] += 1
    return {"dump": dump, "statuses": statuses, "invoices": invoices}


def test_mirroring_is_off_unless_the_setting_turns_it_on(make_sandbox, env_for) -> None:
    sandbox = make_sandbox(patients=5)
    assert STREAM not in enabled_streams(context(env_for(sandbox)).settings)
    with pytest.raises(ConfigProblem, match="turned off"):  # not even when asked for by name
        sync_once(env_for(sandbox), stream=STREAM)
    assert STREAM in enabled_streams(context(env_for(sandbox, "on", **ON)).settings)


def test_a_plan_says_what_stripe_will_hold_and_to_check_the_email_settings_before_anything_is_written(
    make_sandbox, env_for
) -> None:
    from clinicsync.store import queries

    sandbox = make_sandbox(patients=60, invoices=100, invoice_customers=40, seed=5, stripe_mode="live")
    env = env_for(sandbox)
    for stream in ("cliniko.patients", "cliniko.products"):  # synced and approved before mirroring is turned on
        assert sync_once(env, stream=stream).outcome == "needs_approval"
        queries.approve_latest_plan(stream)
        assert sync_once(env, stream=stream).outcome == "ok"
    ctx = context(env_for(sandbox, **ON))
    turned_on = run_sync(ctx.paths, ctx.settings, ctx.secrets)
    assert [(r.stream, r.outcome) for r in turned_on][-1] == (STREAM, "needs_approval")
    plan = turned_on[-1].plan
    assert "customer email settings" in plan["stream_note"] and "never sent" in plan["stream_note"]
    assert plan["counts"]["created"] >= 60, plan["counts"]
    assert not any("invoice" in endpoint for endpoint in stats(sandbox.stripe_url)["mutations"]), "nothing written"


def test_five_hundred_invoices_mirrored_exactly_with_no_email_refund_or_credit(make_sandbox, env_for) -> None:
    sandbox = make_sandbox(patients=160, products=6, invoices=500, invoice_customers=120, seed=11)
    scenario = sandbox.seeded["invoice_scenario"]
    env = env_for(sandbox, **ON)
    # Notes and extra information on some invoices: they must never leave the clinic.
    some = [iid for iid, case in scenario["cases"].items() if case in ("open", "certain")][:20]
    admin(
        sandbox.cliniko_url,
        "edit_invoices",
        ids=some,
        fields={"notes": NOTES, "patient_extra_information": EXTRA},
    )
    # A product line at the product's own price: the mirror uses the products stream's price for it.
    products = cliniko_list(sandbox, "/products").values()
    product = next(p for p in products if not p.get("archived_at") and Decimal(p["price_including_tax"] or 0) > 0)
    patient = next(iter(scenario["customer_ids"]))
    line = {"name": product["name"], "quantity": "2", "unit_price": product["price_including_tax"]}
    (at_price,) = admin(
        sandbox.cliniko_url,
        "add_invoices",
        invoices=[{"patient_id": patient, "lines": [{**line, "product_id": product["id"]}]}],
    )["invoices"]
    ledger_before = admin(sandbox.stripe_url, "ledger")

    ctx = context(env)
    plan = run_sync(ctx.paths, ctx.settings, ctx.secrets, streams=["cliniko.patients", "cliniko.products"])
    assert all(r.outcome == "ok" for r in plan), [(r.stream, r.message) for r in plan]

    results = run_sync(ctx.paths, ctx.settings, ctx.secrets)  # every enabled stream, the mirror last
    assert [r.stream for r in results][-1] == STREAM
    first = results[-1]
    assert first.outcome == "ok" and first.counts["failed"] == 0, (first.counts, first.message)
    checked = check_exact(sandbox)
    assert set(checked["statuses"]) == {"open", "paid", "void", "credited"}, checked["statuses"]
    dump = checked["dump"]
    lines = dump["invoiceitems"]
    assert any(i["description"] == ROUNDING_DESCRIPTION for i in lines), "some totals need a rounding line"
    (at_price_mirror,) = mirrors(dump)[at_price["id"]]
    (item,) = [i for i in lines if i["invoice"] == at_price_mirror["id"]]
    assert item["quantity"] == 2 and item["pricing"]["price_details"], "the product line took the product's price"
    text = json.dumps(dump)
    assert NOTES not in text and EXTRA not in text
    assert admin(sandbox.stripe_url, "emails")["count"] == 0
    ledger = admin(sandbox.stripe_url, "ledger")
    assert len(ledger["refunds"]) == len(ledger_before["refunds"]) and ledger["balance_transactions"] == []

    before = sum(stats(sandbox.stripe_url)["mutations"].values())
    again = sync_once(env, stream=STREAM)
    assert again.counts["created"] == again.counts["updated"] == 0, again.counts
    assert sum(stats(sandbox.stripe_url)["mutations"].values()) == before, "a re-run writes nothing"

    # Later in Cliniko: payments, a write-off, reversals before and after payment.
    invoices = checked["invoices"]
    reversed_before = {link_id(v["original_invoice"]) for v in invoices.values() if v.get("original_invoice")}
    mirrored = [
        (iid, v)
        for iid, v in sorted(invoices.items())
        if cents(v["total_amount"]) > 0 and not v.get("original_invoice") and not v.get("archived_at")
    ]
    open_ids = [iid for iid, v in mirrored if v["status"] == 10]
    paid_ids = [iid for iid, v in mirrored if v["status"] == 20 and iid not in reversed_before]
    admin(sandbox.cliniko_url, "clock", advance_s=5)
    admin(sandbox.cliniko_url, "pay_invoices", ids=open_ids[:5])
    admin(sandbox.cliniko_url, "close_invoices", ids=open_ids[5:8])
    admin(sandbox.cliniko_url, "reverse_invoices", ids=[*open_ids[8:11], *paid_ids[:4]])
    # Lines edited after mirroring (the items' own listing shows it): Stripe's finalized invoice is replaced.
    edited = open_ids[11:13]
    admin(
        sandbox.cliniko_url,
        "edit_invoices",
        ids=edited,
        lines=[{"name": "Extended consultation", "unit_price": "81.818"}],
    )
    later = sync_once(env, stream=STREAM)
    assert later.counts["updated"] == 17 and later.counts["failed"] == 0, (later.counts, later.message)
    after = check_exact(sandbox, replaced=set(edited))
    assert after["statuses"]["credited"] == checked["statuses"]["credited"] + 4
    assert admin(sandbox.stripe_url, "emails")["count"] == 0
    assert admin(sandbox.stripe_url, "ledger")["balance_transactions"] == []


def test_a_mirrored_invoice_deleted_archived_or_brought_to_zero_closes_its_mirror(
    make_sandbox, env_for, archived_listing
) -> None:
    sandbox = make_sandbox(patients=40, invoices=60, invoice_customers=30, seed=7)
    set_archived_listing(sandbox, archived_listing)  # in both worlds: archived_at:* lists live invoices too, or not
    env = env_for(sandbox, **ON)
    ctx = context(env)
    run_sync(ctx.paths, ctx.settings, ctx.secrets)  # patients, products, then the mirror
    checked = check_exact(sandbox)
    reversed_ids = {link_id(v["original_invoice"]) for v in checked["invoices"].values() if v.get("original_invoice")}
    mirrored = [
        (iid, v)
        for iid, v in sorted(checked["invoices"].items())
        if cents(v["total_amount"]) > 0 and not v.get("original_invoice") and not v.get("archived_at")
    ]
    deleted, zeroed = [iid for iid, v in mirrored if v["status"] == 10][:2]
    archived = next(iid for iid, v in mirrored if v["status"] == 20 and iid not in reversed_ids)
    ledger_before = admin(sandbox.stripe_url, "ledger")
    admin(sandbox.cliniko_url, "clock", advance_s=5)
    admin(sandbox.cliniko_url, "delete_invoices", ids=[deleted])
    admin(sandbox.cliniko_url, "archive_invoices", ids=[archived])
    admin(sandbox.cliniko_url, "edit_invoices", ids=[zeroed], lines=[{"name": "Waived", "unit_price": "0"}])

    later = sync_once(env, stream=STREAM)
    assert later.counts["failed"] == 0 and later.counts["created"] == 0, (later.counts, later.message)
    dump = admin(sandbox.stripe_url, "dump")
    found = mirrors(dump)
    assert all(len(found[iid]) == 1 for iid in (deleted, zeroed, archived)), "closed, never replaced"
    assert found[deleted][0]["status"] == found[zeroed][0]["status"] == "void"
    paid = found[archived][0]
    (note,) = [n for n in dump["credit_notes"] if n["invoice"] == paid["id"]]
    assert (note["amount"], note["out_of_band_amount"]) == (paid["total"],) * 2
    assert note["customer_balance_transaction"] is None and note["refunds"] == []
    assert admin(sandbox.stripe_url, "emails")["count"] == 0
    ledger = admin(sandbox.stripe_url, "ledger")
    assert len(ledger["refunds"]) == len(ledger_before["refunds"]) and ledger["balance_transactions"] == []
    again = sync_once(env, stream=STREAM)
    assert again.counts["created"] == again.counts["updated"] == 0, again.counts


def test_an_invoice_whose_patient_has_no_customer_yet_waits_and_is_mirrored_once_it_has(make_sandbox, env_for) -> None:
    """The engine's NotYet path: the plan needs the patient's customer, which the patients stream has not linked;
    nothing is written for that invoice, it is read again next run (though unchanged in Cliniko), and sent then."""
    from clinicsync.store.models import RecordLink, RetryRecord

    sandbox = make_sandbox(patients=20, invoices=40, invoice_customers=10, seed=11)
    env = env_for(sandbox, **ON)
    for stream in ("cliniko.patients", "cliniko.products"):
        assert sync_once(env, stream=stream).outcome in ("ok", "attention")
    invoices = cliniko_invoices(sandbox)
    patient = next(
        link_id(v["patient"])
        for v in invoices.values()
        if cents(v["total_amount"]) > 0 and not v.get("original_invoice") and not v.get("archived_at")
    )
    waiting = {
        iid
        for iid, v in invoices.items()
        if link_id(v["patient"]) == patient and cents(v["total_amount"]) > 0 and not v.get("original_invoice")
    }
    context(env)
    RecordLink.delete().where((RecordLink.stream == "cliniko.patients") & (RecordLink.source_id == patient)).execute()

    first = sync_once(env, stream=STREAM)
    assert first.counts["failed"] == 0, (first.counts, first.message)
    assert not waiting & set(mirrors(admin(sandbox.stripe_url, "dump"))), "nothing written for the waiting invoices"
    context(env)
    assert {r.source_id for r in RetryRecord.select().where(RetryRecord.stream == STREAM)} >= waiting

    admin(sandbox.cliniko_url, "clock", advance_s=5)
    admin(sandbox.cliniko_url, "edit", ids=[patient], fields={"first_name": "Ada"})  # read again, and relinked:
    sync_once(env, stream="cliniko.patients")  # its customer names the patient
    context(env)
    assert RecordLink.get((RecordLink.stream == "cliniko.patients") & (RecordLink.source_id == patient)).stripe_id
    second = sync_once(env, stream=STREAM)
    assert second.counts["failed"] == 0, (second.counts, second.message)
    made = mirrors(admin(sandbox.stripe_url, "dump"))
    assert all(len(made.get(iid, [])) == 1 for iid in waiting), {iid: len(made.get(iid, [])) for iid in waiting}
