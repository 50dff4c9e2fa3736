"""A person is one customer even when an installation's Cal.com stream meets them before its patients stream has
seen their patient's new email: here installation B's booking sync runs while the patient's new email is already
on the patient's customer (installation A sent it) but not yet in B's own view of Cliniko (its patients run comes
later, or failed this time). B then makes a second customer for the attendee, and nothing joins the two later:
a person with one email ends as two customers. Found by the soak (seed 5005: `unjoined` and an email on two
customers). Fixed: when the patients stream meets the patient's new email it joins the two (sync/people.py): the
attendee's customer is retired and the attendee is linked to the patient's customer, sent to it on its next run."""

from __future__ import annotations

from clinicsync.matchkey import normalized
from tests.integration.test_calcom_people import customers, start, sync_all
from tests.reliability.helpers import all_patients, is_live
from tests.support import admin, sync_once

NEW_EMAIL = "charlotte.new@example.net"


def test_an_attendee_met_before_this_installation_saw_the_patients_new_email_joins_the_patients_customer(
    make_sandbox, env_for
):
    sandbox = start(make_sandbox)
    env_a, env_b = env_for(sandbox, "a"), env_for(sandbox, "b")
    sync_all(env_a)
    sync_all(env_b)
    booked = {normalized(a["email"]) for b in admin(sandbox.calcom_url, "dump")["bookings"] for a in b["attendees"]}
    patients = sorted(all_patients(sandbox.cliniko_url).values(), key=lambda p: p["id"])
    patient = next(p for p in patients if is_live(p) and p["email"] and normalized(p["email"]) not in booked)
    admin(sandbox.cliniko_url, "edit", ids=[patient["id"]], fields={"email": NEW_EMAIL})
    sync_all(env_a)  # the patient's customer has the new email now
    admin(sandbox.calcom_url, "add", event_type_id=4001, email=NEW_EMAIL.title())  # and the patient books online
    assert sync_once(env_b, stream="calcom.bookings").outcome == "ok"
    for env in (env_b, env_a, env_b):
        assert all(result.outcome == "ok" for result in sync_all(env).values())
    theirs = [c for c in customers(sandbox) if normalized(c.get("email") or "") == NEW_EMAIL]
    assert len(theirs) == 1, [(c["id"], c["metadata"]) for c in theirs]
    assert theirs[0]["metadata"].get("cliniko_patient_id") == patient["id"]
    assert theirs[0]["metadata"].get("calcom_attendee_ref"), "the attendee joined the patient's customer"
