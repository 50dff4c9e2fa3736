"""A person who became one only later: a Cal.com attendee got a customer of their own (no patient had their email),
then a patient's email changes to the attendee's. The next sync joins the two on the patient's customer (streams.md
§3: one person, one customer): the attendee's customer, which nothing refers to, is deleted, the attendee's
Cal.com details go to the patient's customer, history says what was done, and a re-run writes nothing. Against the
Cliniko, Cal.com and Stripe sandboxes over real HTTP."""

from __future__ import annotations

from clinicsync.matchkey import normalized
from clinicsync.store.models import SyncEvent
from clinicsync.streams.calcom_bookings import attendee_ref
from tests.integration.test_calcom_people import (
    check_one_customer_per_person,
    customers,
    patients_by_email,
    people,
    start,
    sync_all,
)
from tests.support import admin, context, executed_writes


def test_a_patient_whose_email_becomes_an_attendees_joins_the_attendees_customer_on_the_next_sync(
    make_sandbox, env_for
):
    sandbox = start(make_sandbox)
    env = env_for(sandbox)
    sync_all(env)
    patients = patients_by_email(sandbox)
    app_made = {normalized(c["email"]) for c in customers(sandbox) if c["id"] in set(sandbox.app_customer_ids)}
    email = sorted(e for e in people(sandbox) if e not in patients and e not in app_made)[0]  # Cal.com's only
    (theirs,) = [c for c in customers(sandbox) if c["metadata"].get("calcom_attendee_ref") == attendee_ref(email)]
    assert not theirs["metadata"].get("cliniko_patient_id")
    patient = sorted((ps[0] for e, ps in patients.items() if len(ps) == 1 and e not in people(sandbox)), key=str)[0]
    admin(sandbox.cliniko_url, "edit", ids=[patient["id"]], fields={"email": email.upper()})

    results = sync_all(env)
    assert all(r.outcome == "ok" for r in results.values()), {n: (r.counts, r.message) for n, r in results.items()}
    (joined,) = [c for c in customers(sandbox) if normalized(c.get("email") or "") == email]
    assert joined["id"] != theirs["id"], "the patient's customer stays"
    assert joined["metadata"]["cliniko_patient_id"] == patient["id"]
    assert joined["metadata"]["calcom_attendee_ref"] == attendee_ref(email), "the attendee joined it"
    assert theirs["id"] not in {c["id"] for c in customers(sandbox)}, "the attendee's own customer was deleted"
    check_one_customer_per_person(sandbox)
    context(env)  # the profile's database, to read its history
    said = SyncEvent.select().where((SyncEvent.stripe_id == theirs["id"]) & (SyncEvent.action == "note"))
    assert [event.source_id for event in said] == [patient["id"]], "history says what was done, once"

    before = executed_writes(sandbox.stripe_url)
    again = sync_all(env)
    assert all(r.counts["created"] == r.counts["updated"] == 0 for r in again.values()), again
    assert executed_writes(sandbox.stripe_url) == before, "a re-run writes nothing"
