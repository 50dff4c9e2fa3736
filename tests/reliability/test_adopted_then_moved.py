"""Two installations, and a customer that was in Stripe before either: installation A adopts it for a patient
(same email), the patient's email then changes, and installation B, whose index of Stripe was read before A
adopted it, meets the patient for the first time. B's index still has that customer without a reference and under
the old email, and its top-up lists only objects created since, so B creates a second customer for the patient;
no twin repair sees it (the adopted customer is older than the race window and has no reference in either index).
Found by the soak (seed 649213 with kills 0.05-0.6 s after start). Fixed: an installation that sees another one's
customers in its index asks Stripe for the person's customer by email (which does not lag) before creating one,
and links the customer that names the patient."""

from __future__ import annotations

import sqlite3
import subprocess
from pathlib import Path

from clinicsync.matchkey import normalized
from tests.reliability.helpers import all_patients, db_path, live_customers, sync_command
from tests.support import admin, sync_once

ONLY_PATIENTS = {
    "CLINICSYNC_STREAMS_CLINIKO_PRODUCTS_ENABLED": "false",
    "CLINICSYNC_STREAMS_CLINIKO_INVOICES_ENABLED": "false",
}


def _touched(home: Path) -> set[str]:
    """The patients this installation queued or linked before it was killed."""
    with sqlite3.connect(db_path(home)) as con:
        queued = {row[0] for row in con.execute("SELECT source_id FROM outbox_entry")}
        return queued | {row[0] for row in con.execute("SELECT source_id FROM record_link")}


def test_a_customer_adopted_by_one_installation_is_not_duplicated_by_the_other_after_an_email_change(
    make_sandbox, env_for
):
    sandbox = make_sandbox(profile="clean", patients=30)
    patients = sorted((p for p in all_patients(sandbox.cliniko_url).values() if p["email"]), key=lambda p: p["id"])
    existing = [{"email": p["email"].upper(), "name": "Booked online"} for p in patients[:10]]
    admin(sandbox.stripe_url, "seed", customers=existing)  # made before ClinicSync, e.g. by a booking app
    env_a, env_b = env_for(sandbox, "a", **ONLY_PATIENTS), env_for(sandbox, "b", **ONLY_PATIENTS)
    # B reads Stripe (its index) and is killed after its first write, before it meets most patients.
    killed = subprocess.run(
        sync_command(), env={**env_b, "CLINICSYNC_CRASH_AT": "after_stripe_ok:1"}, capture_output=True, timeout=120
    )
    assert killed.returncode < 0, killed.stdout
    untouched = [p for p in patients[:10] if p["id"] not in _touched(Path(env_b["CLINICSYNC_HOME"]))]
    patient = untouched[0]
    assert sync_once(env_a).outcome == "ok"  # A adopts the existing customer of each of the ten
    admin(sandbox.cliniko_url, "edit", ids=[patient["id"]], fields={"email": "moved.elsewhere@example.org"})
    assert sync_once(env_a).counts["updated"] == 1
    for env in (env_b, env_a, env_b, env_a):  # B meets the patient; then each runs again (twin repair)
        assert sync_once(env).outcome == "ok"
    theirs = [c for c in live_customers(sandbox.stripe_url) if c["metadata"].get("cliniko_patient_id") == patient["id"]]
    assert [normalized(c["email"]) for c in theirs] == ["moved.elsewhere@example.org"], "one customer, not two"
