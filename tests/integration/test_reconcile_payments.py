"""Reconciliation of the payment streams and the notes stream, over real HTTP to the Cliniko, Cal.com and Stripe
sandboxes (issue 12's invoice ↔ payment and booking findings, and the streams that came after it).

- cliniko.invoices and cliniko.invoice_mirror, on the seeded invoice mix: the first report lists exactly the paid
  invoices no payment is linked to (the seed's cases), nothing else; then five of each planted discrepancy — a
  linked payment refunded, of another amount, made outside the invoice's dates, failed; an invoice paid in Cliniko
  with no payment; a mirror paid in Stripe while Cliniko says open, a mirror whose total changed in Cliniko — are
  found with the right type, stream, record and field, and nothing else; the suggested fixes (or "mark as
  intended", with a note) and a sync leave a clean report, the marked ones accepted;
- within the sync's window (a scope from a date): only the invoices changed since are read, the payments and
  mirrors listed from then (a linked payment made earlier read by id); `clinicsync reconcile --stream
  cliniko.invoices --csv` writes one row per finding and exits 1;
- calcom.booking_payments and calcom.reference, on the seeded Cal.com world: paid bookings with no payment on this
  account (the seed's, and five booked since), payments of cancelled bookings not refunded (the seed's, and five
  cancelled since), payments that failed, and notes edited on the event types' products in Stripe; fixed the same
  way, the next report is clean and the marks stay accepted.
"""

from __future__ import annotations

import contextlib
import csv
from dataclasses import replace
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import stripe

from clinicsync.mapping.defaults import CLINIKO_INVOICE_MIRROR, CLINIKO_INVOICES
from clinicsync.mapping.fields import FieldCatalogue
from clinicsync.mapping.spec import SyncScope
from clinicsync.reconcile.findings import FindingType, FixKind, Reason
from clinicsync.store import mappings as mapping_store
from clinicsync.store import reconciliation
from clinicsync.store.models import RecordLink
from clinicsync.sync.reconcile_fix import FixRequest, apply_fixes
from clinicsync.sync.reconcile_run import run_reconcile
from clinicsync.sync.service import run_sync
from tests.integration.test_calcom_payments import load_payments
from tests.integration.test_calcom_people import without_cliniko
from tests.integration.test_cli import cli, expect
from tests.support import admin, context

INVOICES, MIRROR, PATIENTS = "cliniko.invoices", "cliniko.invoice_mirror", "cliniko.patients"
CLINIKO_STREAMS = [PATIENTS, INVOICES, MIRROR]
ON = {"CLINICSYNC_CLINIKO_INVOICES_MIRROR": "true", "CLINICSYNC_STREAMS_CLINIKO_INVOICES_ENABLED": "true"}
# Paid in Cliniko, and no payment is linked after the first sync (sandbox/invoice_seed.py's cases): not paid through
# Stripe, a refunded or out-of-window payment never linked, or a plausible one waiting in Review.
NOT_LINKED_PAID = (
    "paid_no_payment",
    "refunded",
    "outside_window",
    "ambiguous",
    "split",
    "multi_invoice",
    "no_customer",
    "reversed_paid",
)
PAYMENT, BOOKING = FindingType.PAYMENT_MISMATCH, FindingType.BOOKING_PAYMENT_MISMATCH
DRIFT = FindingType.FIELD_DRIFT
Key = tuple[str, str, str | None, str | None, str]


def sync(env: dict[str, str], streams: list[str]) -> None:
    ctx = context(env)
    for result in run_sync(ctx.paths, ctx.settings, ctx.secrets, streams=streams, trigger="test"):
        assert result.outcome in ("ok", "attention"), (result.stream, result.outcome, result.message)


def reconcile(env: dict[str, str], streams: list[str]) -> Any:
    ctx = context(env)
    result = run_reconcile(ctx.paths, ctx.settings, ctx.secrets, streams=streams)
    assert not result.failed, [(s.stream, s.message) for s in result.failed]
    return result


def found(result: Any) -> dict[Key, Any]:
    return {(f.stream, f.type, f.source_id, f.stripe_id, f.field): f for f in reconciliation.findings(result.report_id)}


def sdk_for(sandbox: Any) -> stripe.StripeClient:
    return stripe.StripeClient(sandbox.stripe_key, base_addresses={"api": sandbox.stripe_url}, max_network_retries=0)


def fix_all(
    env: dict[str, str], findings: dict[Key, Any], chosen: dict[Key, FixKind], targets: dict[Key, str] | None = None
) -> None:
    """Each finding's suggested fix, or the one `chosen` for it (a link to its `targets` entry); a note for every
    mark as intended."""
    targets = targets or {}
    requests = [
        FixRequest(f.id or 0, chosen.get(key), target=targets.get(key), note="checked with the clinic")
        for key, f in findings.items()
    ]
    ctx = context(env)
    outcomes = apply_fixes(ctx.paths, ctx.settings, ctx.secrets, requests)
    assert all(o.done for o in outcomes), [o for o in outcomes if not o.done]


def noon(day: str, zone: str, days: int = 0) -> int:
    moment = datetime.combine(date.fromisoformat(day) + timedelta(days=days), time(12), tzinfo=ZoneInfo(zone))
    return min(int(moment.timestamp()), int(datetime.now(UTC).timestamp()) - 3600)


def test_invoices_and_their_mirrors_reconcile_every_planted_payment_mismatch_then_clean(make_sandbox, env_for):
    sandbox = make_sandbox(patients=150, invoices=500, invoice_customers=150, seed=12)
    env = env_for(sandbox, **ON)
    sync(env, [PATIENTS, "cliniko.products", INVOICES, MIRROR])
    cases: dict[str, str] = sandbox.seeded["invoice_scenario"]["cases"]
    dump = admin(sandbox.cliniko_url, "dump")
    invoices = {i["id"]: i for i in dump["invoices"]}
    zone = "Australia/Sydney"  # the main clinic's; the planted dates are days from the window's edges

    first = reconcile(env, CLINIKO_STREAMS)
    unpaid_expected = {i for i, case in cases.items() if case in NOT_LINKED_PAID}
    first_found = found(first)
    assert {k for k in first_found if k[1] != PAYMENT or k[0] != INVOICES} == set(), sorted(first_found)[:10]
    assert {k[2] for k in first_found} == unpaid_expected, sorted({k[2] for k in first_found} ^ unpaid_expected)
    assert all(f.reason == Reason.NO_PAYMENT and f.stripe_id is None for f in first_found.values())
    assert first.counts.total == len(unpaid_expected) >= 40

    context(env)  # the profile's database, for the links
    links = {r.source_id: r.stripe_id for r in RecordLink.select().where(RecordLink.stream == INVOICES) if r.stripe_id}
    customers = {r.source_id: r.stripe_id for r in RecordLink.select().where(RecordLink.stream == PATIENTS)}
    mirrors = {r.source_id: r.stripe_id for r in RecordLink.select().where(RecordLink.stream == MIRROR) if r.stripe_id}
    sdk = sdk_for(sandbox)
    certain = sorted(i for i, case in cases.items() if case == "certain" and i in links)
    no_payment = sorted(i for i, case in cases.items() if case == "paid_no_payment")
    open_ones = sorted(i for i, case in cases.items() if case == "open" and i in mirrors)
    assert len(certain) >= 15 and len(no_payment) >= 10 and len(open_ones) >= 15, (len(no_payment), len(open_ones))

    # Payments that name an invoice (typed on a Payment Link) but are of another amount: linked by the next sync,
    # by their metadata. The invoices are touched in Cliniko so the sync reads them again.
    other_amount = no_payment[:5]
    planted_payments: dict[str, str] = {}
    for invoice_id in other_amount:
        invoice = invoices[invoice_id]
        made = admin(
            sandbox.stripe_url,
            "add_payment",
            amount=round(float(invoice["total_amount"]) * 100) + 500,
            currency="aud",
            customer=customers[str(invoice["patient_id"])],
            created=noon(invoice["issue_date"], zone, 1),
            metadata={"cliniko_invoice_id": invoice_id},
        )
        planted_payments[invoice_id] = made["payment_intent"]
    admin(sandbox.cliniko_url, "edit_invoices", ids=other_amount, fields={"notes": "Paid by Payment Link"})
    sync(env, [INVOICES])
    context(env)  # the profile's database, for the links
    links = {r.source_id: r.stripe_id for r in RecordLink.select().where(RecordLink.stream == INVOICES) if r.stripe_id}
    assert all(links.get(i) == planted_payments[i] for i in other_amount), "linked by their metadata"

    # Linked invoices whose issue date was moved in Cliniko two months back: the payment's date no longer agrees
    # (and their mirrors' issue date is Cliniko's old one until the next sync).
    early = certain[10:15]
    for invoice_id in early:
        moved = date.fromisoformat(invoices[invoice_id]["issue_date"]) - timedelta(days=60)
        admin(sandbox.cliniko_url, "edit_invoices", ids=[invoice_id], fields={"issue_date": moved.isoformat()})
    # Linked payments refunded in Stripe.
    refunded = certain[:5]
    for invoice_id in refunded:
        sdk.v1.refunds.create(params={"payment_intent": links[invoice_id]})
    # Linked payments that failed (a link a person chose, to an attempt that was declined; it names the invoice).
    failed = certain[5:10]
    failed_payments: dict[str, str] = {}
    for invoice_id in failed:
        invoice = invoices[invoice_id]
        intent = sdk.v1.payment_intents.create(
            params={
                "amount": round(float(invoice["total_amount"]) * 100),
                "currency": "aud",
                "customer": customers[str(invoice["patient_id"])],
                "payment_method": "pm_card_chargeDeclined",
                "metadata": {
                    "cliniko_invoice_id": invoice_id,
                    "cliniko_invoice_number": str(invoice["number"]),
                    "cliniko_invoice_status": "paid",
                },
            }
        )
        with contextlib.suppress(stripe.CardError):  # declined, as planted
            sdk.v1.payment_intents.confirm(intent.id)
        failed_payments[invoice_id] = intent.id
        RecordLink.update(stripe_id=failed_payments[invoice_id]).where(
            (RecordLink.stream == INVOICES) & (RecordLink.source_id == invoice_id)
        ).execute()
    # Invoices marked paid in Cliniko (cash), no sync since: no payment, and their mirrors not paid yet.
    paid_in_cliniko = open_ones[:5]
    admin(sandbox.cliniko_url, "pay_invoices", ids=paid_in_cliniko)
    # Mirrors marked paid in Stripe while Cliniko says open.
    paid_in_stripe = open_ones[5:10]
    for invoice_id in paid_in_stripe:
        sdk.v1.invoices.pay(mirrors[invoice_id], params={"paid_out_of_band": True})
    # Invoices whose lines (and total) changed in Cliniko, no sync since.
    new_total = open_ones[10:15]
    line = {"name": "Standard consultation", "code": "STD", "unit_price": "97.5", "quantity": 1}
    admin(sandbox.cliniko_url, "edit_invoices", ids=new_total, lines=[line])

    second = reconcile(env, CLINIKO_STREAMS)
    got = found(second)
    still_unpaid = unpaid_expected - set(other_amount)
    expected: set[Key] = {(INVOICES, PAYMENT, i, None, "") for i in still_unpaid | set(paid_in_cliniko)}
    expected |= {(INVOICES, PAYMENT, i, planted_payments[i], "amount") for i in other_amount}
    expected |= {(INVOICES, PAYMENT, i, links[i], "created") for i in early}
    expected |= {(MIRROR, DRIFT, i, mirrors[i], "metadata.cliniko_issue_date") for i in early}
    expected |= {(INVOICES, PAYMENT, i, links[i], "amount_refunded") for i in refunded}
    expected |= {(INVOICES, PAYMENT, i, failed_payments[i], "status") for i in failed}
    expected |= {(MIRROR, DRIFT, i, mirrors[i], "status") for i in paid_in_cliniko + paid_in_stripe}
    expected |= {(MIRROR, DRIFT, i, mirrors[i], "metadata.cliniko_invoice_status") for i in paid_in_cliniko}
    expected |= {(MIRROR, DRIFT, i, mirrors[i], "total") for i in new_total}
    assert set(got) == expected, (sorted(set(got) - expected), sorted(expected - set(got)))
    amount = got[(INVOICES, PAYMENT, other_amount[0], planted_payments[other_amount[0]], "amount")]
    assert amount.severity == "high" and amount.stripe_value and amount.source_value != amount.stripe_value
    assert "not the invoice's" in amount.explanation and str(invoices[other_amount[0]]["number"]) in amount.display_name
    assert got[(INVOICES, PAYMENT, failed[0], failed_payments[failed[0]], "status")].suggested_fix == FixKind.REPUSH
    stripe_paid = got[(MIRROR, DRIFT, paid_in_stripe[0], mirrors[paid_in_stripe[0]], "status")]
    assert (stripe_paid.source_value, stripe_paid.stripe_value) == ("open", "paid")
    assert stripe_paid.suggested_fix == FixKind.MARK_INTENDED, "Stripe cannot take a paid invoice back to open"

    # The fixes: the failed links forgotten and matched again, the mirrors sent again; the rest marked as intended
    # (paid another way, refunded or paid late on purpose).
    chosen = {key: FixKind.MARK_INTENDED for key in got if key[0] == INVOICES and key[4] != "status"}
    # Two invoices waiting in Review with two payments of their total each: a person links each to the first.
    targets = {}
    for invoice_id in sorted(i for i, case in cases.items() if case == "ambiguous")[:2]:
        key = (INVOICES, PAYMENT, invoice_id, None, "")
        waiting = got[key]
        assert len(waiting.related) == 2 and waiting.fixes[:2] == (FixKind.REPUSH, FixKind.LINK), waiting
        assert "waits in Review" in waiting.explanation and waiting.related[0] in waiting.explanation
        chosen[key], targets[key] = FixKind.LINK, waiting.related[0]
    fix_all(env, got, chosen, targets)
    sync(env, [INVOICES, MIRROR])
    third = reconcile(env, CLINIKO_STREAMS)
    assert third.counts.total == 0, sorted(found(third))
    marked = len(chosen) - len(targets) + len(paid_in_stripe)
    assert third.counts.accepted == marked, (third.counts.accepted, marked)
    context(env)  # the profile's database, for the links
    relinked = {r.source_id: r.stripe_id for r in RecordLink.select().where(RecordLink.stream == INVOICES)}
    assert all(relinked[i] not in (None, failed_payments[i]) for i in failed), "matched again to the real payment"
    assert all(relinked[key[2]] == target for key, target in targets.items()), "linked as the person chose"


def test_invoices_and_payments_are_read_within_the_sync_window_not_all_time(make_sandbox, env_for, tmp_path):
    sandbox = make_sandbox(patients=60, invoices=200, invoice_customers=60, seed=5)
    env = env_for(sandbox, **ON)
    sync(env, [PATIENTS, "cliniko.products", INVOICES, MIRROR])
    cases: dict[str, str] = sandbox.seeded["invoice_scenario"]["cases"]
    unpaid = sorted(i for i, case in cases.items() if case == "paid_no_payment")
    context(env)  # the profile's database, for the links
    links = {r.source_id: r.stripe_id for r in RecordLink.select().where(RecordLink.stream == INVOICES) if r.stripe_id}
    invoices = {i["id"]: i for i in admin(sandbox.cliniko_url, "dump")["invoices"]}
    long_ago = (datetime.now(UTC) - timedelta(days=20)).date().isoformat()
    # A paid invoice linked to a payment made before the window: its payment is read by id, and agrees.
    old_link = next(i for i in sorted(links) if cases[i] == "certain" and invoices[i]["issue_date"] < long_ago)
    touched = [*unpaid[:2], old_link]
    assert len(unpaid) > 2, "the others stay outside the window"
    # Cliniko's clock moves three days on, then two invoices are edited: the window starts the day after tomorrow,
    # after every other invoice's last change whatever the time of day.
    admin(sandbox.cliniko_url, "clock", advance_s=3 * 86_400)
    admin(sandbox.cliniko_url, "edit_invoices", ids=touched, fields={"notes": "Checked today"})
    window_start = datetime.now(ZoneInfo("Australia/Sydney")).date() + timedelta(days=2)
    context(env)  # the profile's database, for the mappings
    catalogue = FieldCatalogue.for_source("cliniko", "invoice")
    for mapping in (CLINIKO_INVOICES, CLINIKO_INVOICE_MIRROR):
        mapping_store.save(replace(mapping, scope=SyncScope(kind="since", since=window_start)), catalogue, who="test")
    admin(sandbox.stripe_url, "request_log", enabled=True)

    result = reconcile(env, [INVOICES, MIRROR])
    assert set(found(result)) == {(INVOICES, PAYMENT, i, None, "") for i in unpaid[:2]}, sorted(found(result))
    read = {s.stream: s.source_records for s in result.streams}
    assert read == {INVOICES: len(touched), MIRROR: len(touched)}, "only the invoices changed in the window"
    requests = admin(sandbox.stripe_url, "request_log")["requests"]
    listings = [
        e
        for e in requests
        if e["method"] == "GET"
        and e["path"] in ("/v1/charges", "/v1/invoices")
        and not any(key == "payment_intent" for key, _ in e["query"])  # the charges of the payment read by id
    ]
    assert any(e["path"] == f"/v1/payment_intents/{links[old_link]}" for e in requests), "read by id"
    assert {entry["path"] for entry in listings} == {"/v1/charges", "/v1/invoices"}
    assert all(any(key.startswith("created") for key, _ in entry["query"]) for entry in listings), listings

    # The CLI: one CSV row per finding, in the words; findings exit 1.
    path = tmp_path / "invoices.csv"
    expect(cli(env, "reconcile", "--stream", INVOICES, "--csv", str(path)), 1)
    with path.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert sorted((r["type"], r["stream"], r["source_id"], r["stripe_id"]) for r in rows) == [
        ("payment_mismatch", INVOICES, i, "") for i in unpaid[:2]
    ]
    assert all(r["suggested_fix"] == "Look for its payment again (the next sync does it)" for r in rows), rows
    assert all("is paid in Cliniko" in r["explanation"] and r["source_value"].endswith(" AUD") for r in rows), rows


# --- Cal.com -------------------------------------------------------------------------------------------------
PAID_BOOKINGS, NOTES = "calcom.booking_payments", "calcom.reference"
CALCOM_STREAMS = [PAID_BOOKINGS, NOTES]
OTHER_ACCOUNT_EVENT_TYPE = 4101  # its Stripe app is the massage therapist's own account (sandbox/calcom_seed.py)


def calcom_sync(env: dict[str, str]) -> None:
    ctx = context(env)
    for result in run_sync(ctx.paths, ctx.settings, ctx.secrets, trigger="test"):
        assert result.outcome in ("ok", "attention"), (result.stream, result.outcome, result.message)


def chains(sandbox: Any) -> dict[str, dict[str, Any]]:
    """Each reschedule chain's first booking id → its latest booking."""
    bookings = admin(sandbox.calcom_url, "dump")["bookings"]
    following = {b["fromReschedule"]: b for b in bookings if b.get("fromReschedule")}
    latest = {}
    for booking in bookings:
        if booking.get("fromReschedule"):
            continue
        last = booking
        while last["uid"] in following:
            last = following[last["uid"]]
        latest[str(booking["id"])] = last
    return latest


def test_paid_bookings_and_event_type_notes_reconcile_every_planted_finding_then_clean(make_sandbox, env_for):
    sandbox = make_sandbox(profile="clean", patients=5, calcom=True, calcom_bookings=40, calcom_payments=True)
    env = without_cliniko(env_for(sandbox))
    calcom_sync(env)
    cases: dict[str, str] = sandbox.calcom_seeded["cases"]

    first = reconcile(env, CALCOM_STREAMS)
    latest = chains(sandbox)
    other_account = {
        first_id
        for first_id, last in latest.items()
        if last["eventTypeId"] == OTHER_ACCOUNT_EVENT_TYPE and last["status"] == "ACCEPTED"
    }
    not_refunded = {
        first_id for first_id, last in latest.items() if cases.get(last["uid"]) == "cancelled_paid_not_refunded"
    }
    baseline = found(first)
    assert {(k[1], k[2], k[4]) for k in baseline} == {(BOOKING, i, "") for i in other_account} | {
        (BOOKING, i, "amount_refunded") for i in not_refunded
    }, sorted(baseline)
    assert len(other_account) >= 2 and len(not_refunded) == 1

    # Twenty paid bookings made since: ten whose payments reach this Stripe account, five whose payments do not
    # (yet), five whose payment was declined (Cal.com's app left the PaymentIntent unpaid).
    added = admin(sandbox.calcom_url, "add", count=20, event_type_id=4001)
    ids = [str(i) for i in added["ids"]]
    loaded, unloaded, declined = ids[:10], ids[10:15], ids[15:20]
    intents = {p["metadata"]["bookingId"]: p for p in added["payment_intents"]}
    load_payments(sandbox, [intents[i] for i in loaded])
    sdk = sdk_for(sandbox)
    for booking_id in declined:
        intent = sdk.v1.payment_intents.create(
            params={
                "amount": 12000,
                "currency": "aud",
                "payment_method": "pm_card_chargeDeclined",
                "metadata": {"identifier": "cal.com", "bookingId": booking_id},
            }
        )
        with contextlib.suppress(stripe.CardError):  # declined, as planted
            sdk.v1.payment_intents.confirm(intent.id)
    calcom_sync(env)
    context(env)  # the profile's database, for the links
    links = {r.source_id: r.stripe_id for r in RecordLink.select().where(RecordLink.stream == PAID_BOOKINGS)}
    products = {r.source_id: r.stripe_id for r in RecordLink.select().where(RecordLink.stream == NOTES) if r.stripe_id}
    assert all(links.get(i) for i in loaded + declined), "cross-referenced by Cal.com's bookingId"

    # Five cancelled in Cal.com (the sync carries it to the payment), none refunded.
    by_id = {str(b["id"]): b for b in admin(sandbox.calcom_url, "dump")["bookings"]}
    cancelled = loaded[:5]
    admin(sandbox.calcom_url, "cancel", uids=[by_id[i]["uid"] for i in cancelled])
    calcom_sync(env)
    # Five payments' booking status edited in Stripe, and five event types' notes on their products.
    edited = loaded[5:10]
    for booking_id in edited:
        sdk.v1.payment_intents.update(links[booking_id], params={"metadata": {"calcom_status": "no_show"}})
    noted = sorted(products)[:5]
    assert len(noted) == 5, products
    for event_type_id in noted:
        sdk.v1.products.update(products[event_type_id], params={"metadata": {"calcom_schedule": "Edited in Stripe"}})

    second = reconcile(env, CALCOM_STREAMS)
    got = found(second)
    expected: set[Key] = set(baseline)
    expected |= {(PAID_BOOKINGS, BOOKING, i, None, "") for i in unloaded}
    expected |= {(PAID_BOOKINGS, BOOKING, i, links[i], "amount_refunded") for i in cancelled}
    expected |= {(PAID_BOOKINGS, BOOKING, i, links[i], "status") for i in declined}
    expected |= {(PAID_BOOKINGS, DRIFT, i, links[i], "metadata.calcom_status") for i in edited}
    expected |= {(NOTES, DRIFT, i, products[i], "metadata.calcom_schedule") for i in noted}
    assert set(got) == expected, (sorted(set(got) - expected), sorted(expected - set(got)))
    failed = got[(PAID_BOOKINGS, BOOKING, declined[0], links[declined[0]], "status")]
    assert failed.stripe_value == "requires_payment_method" and failed.suggested_fix == FixKind.CORRECT_SOURCE
    refund = got[(PAID_BOOKINGS, BOOKING, cancelled[0], links[cancelled[0]], "amount_refunded")]
    assert refund.reason == Reason.NOT_REFUNDED and refund.source_value == "120.00 AUD"
    assert refund.suggested_fix == FixKind.MARK_INTENDED
    note = got[(NOTES, DRIFT, noted[0], products[noted[0]], "metadata.calcom_schedule")]
    assert note.stripe_value == "Edited in Stripe" and note.suggested_fix == FixKind.REPUSH

    # The fixes: the late payments reach Stripe and are looked for again; the declined bookings are cancelled in
    # Cal.com (the source corrected); the edited ones sent again, but one note kept as it is; the rest (kept fees,
    # the therapist's own account) marked as intended.
    load_payments(sandbox, [intents[i] for i in unloaded])
    admin(sandbox.calcom_url, "cancel", uids=[by_id[i]["uid"] for i in declined])
    fixing = {key: finding for key, finding in got.items() if key[2] not in declined}
    kept_note = (NOTES, DRIFT, noted[0], products[noted[0]], "metadata.calcom_schedule")
    chosen = {key: FixKind.MARK_INTENDED for key in got if key[2] in other_account} | {kept_note: FixKind.MARK_INTENDED}
    fix_all(env, fixing, chosen)
    calcom_sync(env)
    third = reconcile(env, CALCOM_STREAMS)
    assert third.counts.total == 0, sorted(found(third))
    marked = [f for key, f in fixing.items() if key in chosen or f.suggested_fix == FixKind.MARK_INTENDED]
    assert third.counts.accepted == len(marked) == len(other_account) + len(not_refunded) + len(cancelled) + 1
