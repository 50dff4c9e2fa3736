"""calcom.bookings → one Stripe customer per person, shared with Cliniko, against the Cliniko, Cal.com and Stripe
sandboxes over real HTTP (about a third of the Cal.com attendees are Cliniko patients, their emails in other
letter case; customers Cal.com's own Stripe app made for bookers who paid are in the clinic's Stripe account).

- each person is exactly one customer: the patient's, carrying both cross-references, with Cliniko's name, email,
  phone and address; the booking summary in its metadata;
- connecting Cal.com first and Cliniko a week later ends in the same Stripe state as connecting both at once;
- a Cal.com-only clinic syncs with no Cliniko connection;
- a re-run writes nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from clinicsync.matchkey import normalized
from clinicsync.sandbox import calcom_seed
from clinicsync.streams.calcom_bookings import attendee_ref
from tests.integration.test_calcom_event_types import check_exact as check_exact_catalogue
from tests.support import (
    actual_customer_fields,
    admin,
    context,
    executed_writes,
    expected_customer_fields,
    stats,
)

PATIENTS = 40
CALCOM_STREAMS = ["calcom.event_types", "calcom.bookings", "calcom.booking_payments", "calcom.reference"]
BOOKINGS = 80


def sync_all(env: Mapping[str, str]) -> dict[str, Any]:
    from clinicsync.sync.service import run_sync

    ctx = context(env)
    results = run_sync(ctx.paths, ctx.settings, ctx.secrets, trigger="test")
    return {result.stream: result for result in results}


def start(make_sandbox: Any, patients: int = PATIENTS, bookings: int = BOOKINGS) -> Any:
    """Cliniko, Stripe and Cal.com; the customers and payments Cal.com's Stripe app made on the clinic's account
    loaded into the Stripe sandbox, as they would be there before ClinicSync is connected."""
    sandbox = make_sandbox(
        profile="clean", patients=patients, calcom=True, calcom_bookings=bookings, calcom_payments=True
    )
    made = [
        {"email": c["email"], "name": c["name"]}
        for c in sandbox.calcom_seeded["customers"]
        if c["sandbox"]["account"] == calcom_seed.CLINIC_ACCOUNT
    ]
    assert made, "the seed has customers made by Cal.com's Stripe app"
    sandbox.app_customer_ids = admin(sandbox.stripe_url, "seed", customers=made)["ids"]
    return sandbox


def without_cliniko(env: Mapping[str, str]) -> dict[str, str]:
    return {key: value for key, value in env.items() if key != "CLINICSYNC_CLINIKO_API_KEY"}


def people(sandbox: Any) -> dict[str, list[dict[str, Any]]]:
    """Every attendee (by casefolded email) → their bookings."""
    found: dict[str, list[dict[str, Any]]] = {}
    for booking in admin(sandbox.calcom_url, "dump")["bookings"]:
        for attendee in booking.get("attendees") or []:
            if attendee.get("email"):
                found.setdefault(normalized(attendee["email"]), []).append(booking)
    return found


def patients_by_email(sandbox: Any) -> dict[str, list[dict[str, Any]]]:
    from clinicsync.sources.cliniko import ClinikoClient

    env = sandbox.env()
    key, url = env["CLINICSYNC_CLINIKO_API_KEY"], env["CLINICSYNC_CLINIKO_BASE_URL"]
    client = ClinikoClient(key, contact_email="tests@example.com", base_url=url)
    try:
        found: dict[str, list[dict[str, Any]]] = {}
        for patient in client.iter_patients_changed_since(None):
            if patient.get("email"):
                found.setdefault(normalized(patient["email"]), []).append(patient)
        return found
    finally:
        client.close()


def customers(sandbox: Any) -> list[dict[str, Any]]:
    return [c for c in admin(sandbox.stripe_url, "dump")["data"] if not c.get("deleted")]


def state(sandbox: Any) -> dict[tuple[str, str], dict[str, Any]]:
    """The Stripe customers ClinicSync linked, by their two cross-references, without Stripe's own ids."""
    linked = {}
    for customer in customers(sandbox):
        metadata = customer.get("metadata") or {}
        key = (metadata.get("cliniko_patient_id", ""), metadata.get("calcom_attendee_ref", ""))
        if key == ("", ""):
            continue
        assert key not in linked, f"two customers carry the cross-references {key}"
        linked[key] = {**actual_customer_fields(customer), "metadata": metadata}
    return linked


def check_one_customer_per_person(sandbox: Any) -> int:
    by_ref: dict[str, list[dict[str, Any]]] = {}
    for customer in customers(sandbox):
        ref = (customer.get("metadata") or {}).get("calcom_attendee_ref")
        if ref:
            by_ref.setdefault(ref, []).append(customer)
    patients = patients_by_email(sandbox)
    joined = 0
    for email, bookings in people(sandbox).items():
        (customer,) = by_ref.get(attendee_ref(email), [None])
        assert customer is not None, f"an attendee ({len(bookings)} bookings) has no customer"
        metadata = customer["metadata"]
        counted = {b["uid"] for b in bookings if b["status"] not in ("CANCELLED", "REJECTED")}
        assert metadata["calcom_booking_count"] == str(len(counted))
        if counted:
            last = max((b for b in bookings if b["uid"] in counted), key=lambda b: (b["startTime"], b["uid"]))
            assert metadata["calcom_last_booking_uid"] == last["uid"]
            assert metadata["calcom_last_booking_start"].endswith(("+10:00", "+11:00")), "in Melbourne's zone"
        matching = patients.get(email, [])
        if len(matching) == 1:  # the patient's customer, with both cross-references and Cliniko's details
            (patient,) = matching
            assert metadata.get("cliniko_patient_id") == patient["id"], "the attendee joined the patient's customer"
            assert actual_customer_fields(customer) == expected_customer_fields(patient)
            joined += 1
        else:
            assert not metadata.get("cliniko_patient_id")
    assert joined >= 5, f"only {joined} attendees were Cliniko patients"
    refs = [(c.get("metadata") or {}).get("cliniko_patient_id") for c in customers(sandbox)]
    refs = [ref for ref in refs if ref]
    assert len(refs) == len(set(refs)), "each patient is one customer"
    emails = [normalized(c["email"]) for c in customers(sandbox) if c.get("email")]
    assert len(emails) == len(set(emails)), "no person has two customers (Cal.com's own were adopted)"
    return joined


def test_both_at_once_each_person_is_one_customer_with_both_references_and_a_rerun_writes_nothing(
    make_sandbox, env_for
):
    sandbox = start(make_sandbox)
    env = env_for(sandbox)
    results = sync_all(env)
    assert list(results) == [
        "cliniko.patients",
        "cliniko.products",
        "cliniko.invoices",
        "calcom.event_types",
        "calcom.bookings",
        "calcom.booking_payments",
        "calcom.reference",
    ]
    assert all(r.outcome == "ok" for r in results.values()), {n: (r.counts, r.message) for n, r in results.items()}
    assert results["calcom.bookings"].counts["linked"] >= 5, results["calcom.bookings"].counts
    check_one_customer_per_person(sandbox)
    from tests.integration.test_calcom_payments import check_cross_referenced

    assert check_cross_referenced(sandbox) == results["calcom.booking_payments"].counts["linked"] >= 20
    before = executed_writes(sandbox.stripe_url)
    again = sync_all(env)
    assert all(r.counts["created"] == r.counts["updated"] == 0 for r in again.values())
    assert executed_writes(sandbox.stripe_url) == before, "a re-run writes nothing"


def test_cal_com_first_and_cliniko_a_week_later_ends_as_both_at_once(make_sandbox, env_for):
    together = start(make_sandbox)
    sync_all(env_for(together, "together"))

    staged = start(make_sandbox)
    env = env_for(staged, "staged")
    first = sync_all(without_cliniko(env))
    assert list(first) == CALCOM_STREAMS, "Cal.com alone: no Cliniko stream runs"
    counts = first["calcom.bookings"].counts
    assert counts["created"] >= 1 and counts["linked"] >= 10, "new people, and customers Cal.com's app made, adopted"
    admin(staged.calcom_url, "clock", advance_s=7 * 86400)  # a week later, Cliniko is connected too
    later = sync_all(env)
    assert later["cliniko.patients"].counts["linked"] >= 5, later["cliniko.patients"].counts
    assert all(r.outcome == "ok" for r in later.values()), {n: (r.counts, r.message) for n, r in later.items()}

    check_one_customer_per_person(staged)
    assert state(staged) == state(together), "the same customers with the same details and cross-references"
    assert len(customers(staged)) == len(customers(together))


def test_a_cal_com_only_clinic_syncs_without_a_cliniko_connection(make_sandbox, env_for):
    sandbox = start(make_sandbox)
    env = without_cliniko(env_for(sandbox))
    cliniko_requests = stats(sandbox.cliniko_url)
    results = sync_all(env)
    assert list(results) == CALCOM_STREAMS
    assert all(r.outcome == "ok" for r in results.values()), {n: (r.counts, r.message) for n, r in results.items()}
    assert stats(sandbox.cliniko_url)["requests"] == cliniko_requests["requests"], "Cliniko was not asked anything"
    by_ref: dict[str, int] = {}
    for customer in customers(sandbox):
        ref = (customer.get("metadata") or {}).get("calcom_attendee_ref")
        if ref:
            by_ref[ref] = by_ref.get(ref, 0) + 1
    assert set(by_ref) == {attendee_ref(email) for email in people(sandbox)}
    assert set(by_ref.values()) == {1}, "each person is one customer"
    adopted = {c["id"] for c in customers(sandbox) if (c.get("metadata") or {}).get("calcom_attendee_ref")}
    assert set(sandbox.app_customer_ids) <= adopted, "the customers Cal.com's Stripe app made were adopted"
    assert len(customers(sandbox)) == len(people(sandbox)), "and not duplicated: one customer per person"


def test_cal_com_never_overwrites_the_patients_details_and_keeps_its_summary_current(make_sandbox, env_for):
    sandbox = start(make_sandbox)
    env = env_for(sandbox)
    sync_all(env)
    patients = patients_by_email(sandbox)
    shared = sorted(email for email in people(sandbox) if len(patients.get(email, [])) == 1)
    email = shared[0]
    (patient,) = patients[email]
    latest = max(people(sandbox)[email], key=lambda b: (b["startTime"], b["uid"]))
    admin(sandbox.calcom_url, "edit", uid=latest["uid"], fields={"attendee_name": "Renamed When Booking"})
    added = admin(sandbox.calcom_url, "add", event_type_id=4003, email=email.upper(), name="Another Name")
    admin(sandbox.calcom_url, "clock", advance_s=60)

    results = sync_all(env)
    assert results["calcom.bookings"].counts["updated"] >= 1, results["calcom.bookings"].counts
    (customer,) = [c for c in customers(sandbox) if c["metadata"].get("calcom_attendee_ref") == attendee_ref(email)]
    assert customer["metadata"]["cliniko_patient_id"] == patient["id"], "the patient's reference is not cleared"
    assert actual_customer_fields(customer) == expected_customer_fields(patient), "Cliniko's details stay"
    bookings = people(sandbox)[email]
    counted = {b["uid"] for b in bookings if b["status"] not in ("CANCELLED", "REJECTED")}
    assert customer["metadata"]["calcom_booking_count"] == str(len(counted))
    assert added["uids"][0] in counted
    check_one_customer_per_person(sandbox)


def test_an_attendee_whose_email_two_patients_share_goes_to_review(make_sandbox, env_for):
    sandbox = make_sandbox(profile="hard", patients=PATIENTS, calcom=True, calcom_bookings=BOOKINGS)
    env = env_for(sandbox)
    results = sync_all(env)
    patients = patients_by_email(sandbox)
    family = [email for email in people(sandbox) if len(patients.get(email, [])) > 1]
    assert family, "the hard profile's family shares an email and books on Cal.com"
    assert results["calcom.bookings"].counts["review"] >= len(family), results["calcom.bookings"].counts
    refs = {(c.get("metadata") or {}).get("calcom_attendee_ref") for c in customers(sandbox)}
    assert not {attendee_ref(email) for email in family} & refs, "no guess: neither patient's customer is joined"


def test_with_cal_com_as_the_primary_source_the_attendees_details_win(make_sandbox, env_for):
    sandbox = start(make_sandbox)
    env = env_for(sandbox, CLINICSYNC_IDENTITY_PRIMARY_SOURCE="calcom")
    sync_all(env)
    sync_all(env)  # Cliniko's next run must not take the fields back
    patients = patients_by_email(sandbox)
    by_ref = {(c.get("metadata") or {}).get("calcom_attendee_ref"): c for c in customers(sandbox)}
    checked = 0
    for email, bookings in people(sandbox).items():
        if len(patients.get(email, [])) != 1:
            continue
        customer = by_ref[attendee_ref(email)]
        latest = max(bookings, key=lambda b: (b["startTime"], b["uid"]))
        (attendee,) = [a for a in latest["attendees"] if normalized(a["email"]) == email]
        assert (customer["name"], customer["email"]) == (attendee["name"], attendee["email"])
        assert customer["metadata"]["cliniko_patient_id"] == patients[email][0]["id"], "both references"
        checked += 1
    assert checked >= 5


def test_three_hundred_bookings_and_three_hundred_patients_each_person_once(make_sandbox, env_for):
    sandbox = start(make_sandbox, patients=300, bookings=300)
    env = env_for(sandbox)
    results = sync_all(env)
    assert all(r.outcome == "ok" for r in results.values()), {n: (r.counts, r.message) for n, r in results.items()}
    assert len(admin(sandbox.calcom_url, "dump")["bookings"]) >= 300
    joined = check_one_customer_per_person(sandbox)
    assert joined >= 50, f"{joined} attendees are Cliniko patients sharing their customer"
    check_exact_catalogue(sandbox)
    before = executed_writes(sandbox.stripe_url)
    again = sync_all(env)
    assert all(r.counts["created"] == r.counts["updated"] == 0 for r in again.values())
    assert executed_writes(sandbox.stripe_url) == before, "a re-run writes nothing"


def test_a_cal_com_only_clinic_from_the_command_line_sync_status_and_doctor(make_sandbox, env_for):
    import subprocess
    import sys

    sandbox = make_sandbox(patients=5, calcom=True, calcom_bookings=10)
    env = {**without_cliniko(env_for(sandbox)), "PYTHON_KEYRING_BACKEND": "keyring.backends.fail.Keyring"}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "clinicsync", *args]
        return subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)

    synced = cli("sync", "--once")
    assert synced.returncode == 0, synced.stdout + synced.stderr
    assert "calcom.event_types: ok" in synced.stdout and "calcom.bookings: ok" in synced.stdout
    assert "cliniko" not in synced.stdout
    status = cli("status")
    assert status.returncode == 0 and "calcom.bookings" in status.stdout, status.stdout + status.stderr
    doctor = cli("doctor")
    assert doctor.returncode == 0, doctor.stdout + doctor.stderr
    assert "✓ Cliniko key: not set (this clinic syncs from Cal.com only)" in doctor.stdout
    assert "✓ Cal.com connection:" in doctor.stdout


def test_the_first_read_of_the_bookings_overlaps_the_stripe_writes_before_it(make_sandbox, env_for, monkeypatch):
    """The run's first, full read of the bookings begins with the run (Stream.read_ahead), so Cal.com's pages come
    while the event types' products are written to Stripe, not after them. Shown by order, not by time: the two
    sandboxes note what they handle in one list, and each product create is held until the bookings listing was
    asked for (bounded only so that a run that reads after writing fails instead of hanging)."""
    import threading

    sandbox = start(make_sandbox)
    order: list[str] = []
    lock, bookings_asked = threading.Lock(), threading.Event()
    calcom_handle, stripe_handle = sandbox.calcom.emulator.handle, sandbox.stripe.emulator.handle

    def calcom(request: Any) -> Any:
        if request.method == "GET" and request.path.rstrip("/").endswith("/bookings"):
            with lock:
                order.append("Cal.com bookings page")
            bookings_asked.set()
        return calcom_handle(request)

    def stripe(request: Any) -> Any:
        if request.method == "POST" and request.path.startswith("/v1/"):
            if request.path == "/v1/products":
                bookings_asked.wait(10)
            with lock:
                order.append(f"Stripe write {request.path}")
        return stripe_handle(request)

    monkeypatch.setattr(sandbox.calcom.emulator, "handle", calcom)
    monkeypatch.setattr(sandbox.stripe.emulator, "handle", stripe)
    results = sync_all(without_cliniko(env_for(sandbox)))
    first_write = next(i for i, event in enumerate(order) if event.startswith("Stripe write"))
    assert order[first_write] == "Stripe write /v1/products", order[:5]
    assert "Cal.com bookings page" in order[:first_write], "the bookings were being read before Stripe's first write"
    assert all(r.outcome == "ok" for r in results.values()), {n: (r.counts, r.message) for n, r in results.items()}
    assert order.count("Cal.com bookings page") == 1, "one read of the bookings, shared by the run's streams"
    assert len(customers(sandbox)) == len(people(sandbox)), "one customer per person"
    assert executed_writes(sandbox.stripe_url) > 0
    before = executed_writes(sandbox.stripe_url)
    sync_all(without_cliniko(env_for(sandbox)))
    assert executed_writes(sandbox.stripe_url) == before, "a re-run writes nothing"


def test_a_run_stopped_by_a_failure_does_not_wait_out_the_bookings_read_aheads_rate_limit_pause(
    make_sandbox, env_for, monkeypatch
):
    """The bookings read ahead are refused by Cal.com's rate limit (a block of 60 s) just as the run fails (the key
    is revoked when the event types stream asks for the teams): the run ends with that failure and its own message,
    and by then the reading thread has ended, its pause cut short, neither waited out nor waited for (up to Stripe's
    timeout). Ordered by the sandbox's handling: the refusal is answered once the teams are asked for, and they are
    refused once it was answered (each wait bounded)."""
    import threading
    import time

    from clinicsync.sync.service import run_sync
    from tests.support import CutPauses

    sandbox = start(make_sandbox)
    ctx = context(without_cliniko(env_for(sandbox)))
    emulator, failing, refused = sandbox.calcom.emulator, threading.Event(), threading.Event()
    handle = emulator.handle

    def calcom(request: Any) -> Any:
        path = request.path.rstrip("/")
        if request.method == "GET" and path.endswith("/bookings") and not refused.is_set():
            failing.wait(10)
            refused.set()
            return emulator.rate_limited_response(request, time.time() + 60)
        if request.method == "GET" and path.endswith("/teams"):
            failing.set()
            refused.wait(10)
            emulator.admin("revoke_key", {})
        return handle(request)

    monkeypatch.setattr(emulator, "handle", calcom)
    token, before = CutPauses(), set(threading.enumerate())
    results = run_sync(ctx.paths, ctx.settings, ctx.secrets, trigger="test", cancel=token)
    going = [t.name for t in set(threading.enumerate()) - before if t.name.startswith("read-ahead")]
    assert refused.is_set() and failing.is_set()
    (failed,) = results
    assert (failed.stream, failed.outcome, failed.stop_kind) == ("calcom.event_types", "failed", "source_auth")
    assert "rejected the API key" in failed.message, failed.message
    assert going == [], "the run ended before its reading thread"
    pauses = [seconds for name, seconds in token.cut if name == "read-ahead Cal.com bookings"]
    assert pauses and pauses[0] > 30, f"the read ahead's pause of a minute was cut short: {token.cut}"
    assert not token.cancelled, "the run failed: nobody cancelled it"
