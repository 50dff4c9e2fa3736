"""Twin repair sends the record's data to the object it keeps (issue 8; found by the soak, seed 404 with every
stream joined). When a run moves a record's link from its twin to the older object, that object may hold what
another source or installation wrote meanwhile (there: a Cal.com booker's email in other letter case, written while
the other installation took the customer for a Cal.com-only person's). The record is read again by id and sent in
the same run, though it did not change in Cliniko; before, it was sent only when it next changed, so the patient's
customer kept the other email for good.
"""

from __future__ import annotations

import time

import stripe

from clinicsync.store.models import RecordLink
from clinicsync.sync.service import run_sync
from tests.reliability.helpers import all_patients, is_live
from tests.support import context, sync_once

STREAM = "cliniko.patients"


def test_a_link_moved_to_the_object_kept_sends_the_patients_details_to_it_in_the_same_run(make_sandbox, env_for):
    sandbox = make_sandbox(patients=10)
    env = env_for(sandbox)
    assert sync_once(env).outcome == "ok"
    patient = next(p for p in all_patients(sandbox.cliniko_url).values() if is_live(p) and p["email"])
    context(env)
    link = RecordLink.get((RecordLink.stream == STREAM) & (RecordLink.source_id == patient["id"]))
    kept = link.stripe_id
    # Another computer's first sync made the patient's customer too, a moment later, and this installation ended up
    # linked to that one (its twin); the older one got a booker's email in other letter case meanwhile.
    sdk = stripe.StripeClient(sandbox.stripe_key or "", base_addresses={"api": sandbox.stripe_url})
    sandbox.stripe.emulator.clock = lambda: time.time() + 30  # a moment later (never the same second: one order)
    params = {"email": patient["email"], "name": "Same patient", "metadata": {"cliniko_patient_id": patient["id"]}}
    twin = sdk.v1.customers.create(params=params).id
    RecordLink.update(stripe_id=twin).where(RecordLink.id == link.id).execute()
    sdk.v1.customers.update(kept, params={"email": patient["email"].upper()})

    repaired = sync_once(env)
    assert repaired.outcome == "ok", repaired.message
    customer = sdk.v1.customers.retrieve(kept).to_dict()
    assert customer["email"] == patient["email"], "the patient's details were sent to the customer kept"
    assert repaired.counts["updated"] == 1, repaired.counts
    context(env)
    assert RecordLink.get_by_id(link.id).stripe_id == kept
    assert sdk.v1.customers.retrieve(twin).to_dict().get("deleted"), "the twin nothing referred to is deleted"


def test_records_of_other_streams_linked_to_a_twin_move_with_it_and_are_sent_to_the_object_kept(make_sandbox, env_for):
    """The soak, seed 404: a Cal.com booker had joined the patient's customer that a race's repair then deleted; the
    booker stayed linked to the deleted customer, and the one kept never carried their bookings."""
    sandbox = make_sandbox(patients=30, calcom=True, calcom_bookings=30)
    env = env_for(sandbox)
    ctx = context(env)
    assert all(r.outcome in ("ok", "attention") for r in run_sync(ctx.paths, ctx.settings, ctx.secrets))
    context(env)
    patients = {row.stripe_id: row for row in RecordLink.select().where(RecordLink.stream == STREAM)}
    person = next(
        row
        for row in RecordLink.select().where(RecordLink.stream == "calcom.bookings").order_by(RecordLink.source_id)
        if row.stripe_id in patients
    )
    patient_link = patients[person.stripe_id]
    kept = person.stripe_id
    patient = all_patients(sandbox.cliniko_url)[patient_link.source_id]
    # This installation's first sync had made the patient's customer a moment after another computer's, and the
    # booker joined that one; the one kept has no booking details yet.
    sdk = stripe.StripeClient(sandbox.stripe_key or "", base_addresses={"api": sandbox.stripe_url})
    sandbox.stripe.emulator.clock = lambda: time.time() + 30
    params = {"email": patient["email"], "name": "Same patient", "metadata": {"cliniko_patient_id": patient["id"]}}
    twin = sdk.v1.customers.create(params=params).id
    RecordLink.update(stripe_id=twin).where(RecordLink.id.in_([patient_link.id, person.id])).execute()
    sdk.v1.customers.update(kept, params={"metadata": {"calcom_attendee_ref": "", "calcom_booking_count": ""}})

    repaired = run_sync(ctx.paths, ctx.settings, ctx.secrets)
    assert all(r.outcome in ("ok", "attention") for r in repaired), [(r.stream, r.message) for r in repaired]
    metadata = sdk.v1.customers.retrieve(kept).to_dict()["metadata"]
    assert metadata.get("calcom_attendee_ref") == person.source_id, "the booker's details reached the one kept"
    assert metadata.get("calcom_booking_count"), metadata
    context(env)
    assert {RecordLink.get_by_id(row.id).stripe_id for row in (patient_link, person)} == {kept}
