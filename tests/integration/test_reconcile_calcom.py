"""Reconciliation covers the Cal.com streams, over real HTTP to the Cliniko, Cal.com and Stripe sandboxes.

- Cliniko and Cal.com synced together reconcile clean, every stream at once (no false positives: the customers
  the two share carry Cliniko's name, email and phone, which Cal.com's side never reports as drift);
- planted discrepancies of each kind are found with the right type, stream, record and field, and nothing else:
  event types (a product renamed in Stripe, a priced event type never synced, a product of a deleted event type,
  a second product naming an event type) and attendees (a Cal.com key edited on a shared customer, a customer of
  a Cal.com-only person deleted in Stripe, one naming nobody, a second one naming a person; a name edited on a
  shared customer is the patients stream's drift only);
- the suggested fixes, then a sync, leave a clean report, and a finding marked as intended stays accepted;
  `clinicsync reconcile --stream calcom.bookings` exits 0.

Paid bookings ↔ payments and the event types' notes: tests/integration/test_reconcile_payments.py.
"""

from __future__ import annotations

from typing import Any

import stripe

from clinicsync.reconcile.findings import FindingType, FixKind, Reason
from clinicsync.store import reconciliation
from clinicsync.streams.calcom_bookings import attendee_ref
from clinicsync.sync.reconcile_fix import FixRequest, apply_fixes
from clinicsync.sync.reconcile_run import run_reconcile
from tests.integration.test_calcom_event_types import stripe_state
from tests.integration.test_calcom_people import customers, start, sync_all
from tests.integration.test_cli import cli, expect
from tests.support import admin, context

EVENT_TYPES, BOOKINGS, PATIENTS = "calcom.event_types", "calcom.bookings", "cliniko.patients"
NOBODY = "att_" + "0" * 24
# The seed's paid bookings include real discrepancies (a cancelled one not refunded, payments on another account):
# the payments stream is tested on its own (tests/integration/test_reconcile_payments.py); here the others are.
COMPARED = [PATIENTS, "cliniko.products", EVENT_TYPES, BOOKINGS, "calcom.reference"]


def reconcile(env: dict[str, str], streams: list[str] | None = None) -> Any:
    ctx = context(env)
    return run_reconcile(ctx.paths, ctx.settings, ctx.secrets, streams=streams)


def found_by_key(report_id: int) -> dict[tuple[str, str, str | None, str | None, str], Any]:
    return {(f.stream, f.type, f.source_id, f.stripe_id, f.field): f for f in reconciliation.findings(report_id)}


def sdk_for(sandbox: Any) -> stripe.StripeClient:
    return stripe.StripeClient(sandbox.stripe_key, base_addresses={"api": sandbox.stripe_url}, max_network_retries=0)


def test_cal_com_streams_reconcile_clean_then_every_planted_finding_is_found_and_fixed(make_sandbox, env_for):
    sandbox = start(make_sandbox, patients=20, bookings=30)
    env = env_for(sandbox)
    sync_all(env)
    clean = reconcile(env, COMPARED)
    assert [s.stream for s in clean.streams] == COMPARED
    assert clean.counts.total == 0, [
        (f.stream, f.field, f.stripe_value) for f in reconciliation.findings(clean.report_id)
    ]
    by_stream = {s.stream: s for s in clean.streams}
    assert by_stream[EVENT_TYPES].source_records >= 7 and by_stream[BOOKINGS].source_records >= 20

    sdk = sdk_for(sandbox)
    named, _ = stripe_state(sandbox)
    everyone = customers(sandbox)
    shared = [c for c in everyone if {"cliniko_patient_id", "calcom_attendee_ref"} <= set(c["metadata"])]
    cal_only = [
        c for c in everyone if "calcom_attendee_ref" in c["metadata"] and "cliniko_patient_id" not in c["metadata"]
    ]
    assert len(shared) >= 2 and len(cal_only) >= 2, (len(shared), len(cal_only))

    # Event types.
    renamed = named["4001"][0]
    sdk.v1.products.update(renamed["id"], params={"name": "Renamed In Stripe"})
    admin(sandbox.calcom_url, "price", id=4003, price=4500)  # a free one now priced, and no sync since
    gone = named["4004"][0]
    admin(sandbox.calcom_url, "delete_event_type", id=4004)
    twin = sdk.v1.products.create(params={"name": "A copy", "metadata": {"calcom_event_type_id": "4002"}})
    # Attendees.
    edited_shared, renamed_shared = shared[:2]
    sdk.v1.customers.update(edited_shared["id"], params={"metadata": {"calcom_booking_count": "99"}})
    sdk.v1.customers.update(renamed_shared["id"], params={"name": "Renamed In Stripe"})
    deleted = cal_only[0]
    sdk.v1.customers.delete(deleted["id"])
    stray = sdk.v1.customers.create(params={"email": "nobody@example.org", "metadata": {"calcom_attendee_ref": NOBODY}})
    copy_of = cal_only[1]
    copy_ref = copy_of["metadata"]["calcom_attendee_ref"]
    copy = sdk.v1.customers.create(params={"email": copy_of["email"], "metadata": {"calcom_attendee_ref": copy_ref}})

    found = found_by_key(reconcile(env, COMPARED).report_id)
    shared_ref, deleted_ref = (
        edited_shared["metadata"]["calcom_attendee_ref"],
        deleted["metadata"]["calcom_attendee_ref"],
    )
    assert set(found) == {
        (EVENT_TYPES, FindingType.FIELD_DRIFT, "4001", renamed["id"], "name"),
        (EVENT_TYPES, FindingType.MISSING_IN_STRIPE, "4003", None, ""),
        (EVENT_TYPES, FindingType.ORPHANED_IN_STRIPE, "4004", gone["id"], ""),
        (EVENT_TYPES, FindingType.DUPLICATE, "4002", twin.id, ""),
        (BOOKINGS, FindingType.FIELD_DRIFT, shared_ref, edited_shared["id"], "metadata.calcom_booking_count"),
        (BOOKINGS, FindingType.MISSING_IN_STRIPE, deleted_ref, deleted["id"], ""),
        (BOOKINGS, FindingType.ORPHANED_IN_STRIPE, NOBODY, stray.id, ""),
        (BOOKINGS, FindingType.DUPLICATE, copy_ref, copy.id, ""),
        # The name is Cliniko's on a shared customer: the patients stream's drift, never Cal.com's.
        (
            PATIENTS,
            FindingType.FIELD_DRIFT,
            renamed_shared["metadata"]["cliniko_patient_id"],
            renamed_shared["id"],
            "name",
        ),
    }, sorted(found)
    drift = found[(BOOKINGS, FindingType.FIELD_DRIFT, shared_ref, edited_shared["id"], "metadata.calcom_booking_count")]
    assert drift.stripe_value == "99" and drift.source_value == edited_shared["metadata"]["calcom_booking_count"]
    assert (
        found[(BOOKINGS, FindingType.MISSING_IN_STRIPE, deleted_ref, deleted["id"], "")].reason
        == Reason.DELETED_IN_STRIPE
    )
    orphan = found[(EVENT_TYPES, FindingType.ORPHANED_IN_STRIPE, "4004", gone["id"], "")]
    assert orphan.suggested_fix == FixKind.DEACTIVATE and FixKind.DELETE not in orphan.fixes

    ctx = context(env)
    kept_name = found[(EVENT_TYPES, FindingType.FIELD_DRIFT, "4001", renamed["id"], "name")]
    requests = [
        FixRequest(f.id or 0, FixKind.MARK_INTENDED, note="named so on purpose")
        if f is kept_name
        else FixRequest(f.id or 0)
        for f in found.values()
    ]
    outcomes = apply_fixes(ctx.paths, ctx.settings, ctx.secrets, requests)
    assert all(o.done for o in outcomes), outcomes
    sync_all(env)
    again = reconcile(env, COMPARED)
    assert again.counts.accepted == 1, "marked as intended: accepted in the next report (the stream's own pair)"
    assert again.counts.total == 0, [
        (f.stream, f.type, f.field, f.stripe_value) for f in reconciliation.findings(again.report_id)
    ]
    by_ref = {}
    for customer in customers(sandbox):
        by_ref.setdefault(customer["metadata"].get("calcom_attendee_ref"), []).append(customer)
    assert len(by_ref[deleted_ref]) == 1 and by_ref[deleted_ref][0]["id"] != deleted["id"], "made again"
    assert attendee_ref(deleted["email"]) == deleted_ref

    # The CLI takes a Cal.com stream alone, and a clean one exits 0.
    listed = expect(cli(env, "reconcile", "--stream", BOOKINGS), 0)
    assert BOOKINGS in listed.out and PATIENTS not in listed.out, listed.out
