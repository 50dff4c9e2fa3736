"""cliniko.invoices → the Stripe payments that paid them (issue 11, linking and status), over real HTTP.

The seeded 1,000-invoice mix (sandbox/invoice_seed.py): every certain invoice linked with its cross-reference,
every plausible one in review with exactly its candidates and nothing guessed, nothing linked outside the window or
twice, a re-run writes nothing, and 15 status changes are exactly 15 metadata updates. Then the dates: a payment's
time is a local date in the invoice's business's zone, across DST, and the issue date is never shifted.
"""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
import stripe

from clinicsync.sandbox.launcher import Sandbox, start_sandbox
from clinicsync.store.models import RecordLink, ReviewItem, SyncEvent
from tests.support import admin, context, profile_env, stats, sync_once

STREAM = "cliniko.invoices"
CERTAIN = ("certain", "linked_metadata")
PLAUSIBLE = ("ambiguous", "split", "multi_invoice", "no_customer")
NEVER = ("refunded", "outside_window", "paid_no_payment")


class Seeded:
    def __init__(self, sandbox: Sandbox, env: dict[str, str]) -> None:
        self.sandbox = sandbox
        self.env = env
        self.scenario: dict[str, Any] = sandbox.seeded["invoice_scenario"]
        self.first: Any = None

    def sdk(self) -> stripe.StripeClient:
        return stripe.StripeClient(self.sandbox.stripe_key or "", base_addresses={"api": self.sandbox.stripe_url})

    def payments(self) -> dict[str, dict[str, Any]]:
        """Every PaymentIntent and charge, by id."""
        sdk = self.sdk()
        found = {p.id: p.to_dict() for p in sdk.v1.payment_intents.list(params={"limit": 100}).auto_paging_iter()}
        found |= {c.id: c.to_dict() for c in sdk.v1.charges.list(params={"limit": 100}).auto_paging_iter()}
        return found

    def payment_id(self, ref: str) -> str:
        made = self.scenario["payments"][ref]
        return made["payment_intent"] or made["charge"]

    def invoices_of(self, case: str) -> list[str]:
        return sorted(i for i, c in self.scenario["cases"].items() if c == case)

    def payment_refs(self, invoice_id: str) -> list[str]:
        return sorted(ref for ref, ids in self.scenario["payment_invoices"].items() if invoice_id in ids)


def writes(sandbox: Sandbox) -> Counter[str]:
    return Counter(stats(sandbox.stripe_url)["mutations"])


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Seeded]:
    sandbox = start_sandbox(profile="clean", patients=300, invoices=1000, products=0)
    try:
        env = profile_env(tmp_path_factory.mktemp("invoices"), sandbox.env())
        patients = sync_once(env)
        assert patients.counts["linked"] == 300, patients.counts
        state = Seeded(sandbox, env)
        state.first = sync_once(env, stream=STREAM)
        yield state
    finally:
        sandbox.stop()


def test_certain_invoices_are_linked_plausible_ones_reviewed_and_nothing_guessed(seeded: Seeded) -> None:
    first = seeded.first
    assert first.counts["linked"] == 500 and first.counts["review"] == 80, (first.counts, first.message)
    assert first.counts["created"] == first.counts["failed"] == 0, first.counts
    payments = seeded.payments()
    numbers = {}
    context(seeded.env)
    links = {
        row.source_id: row.stripe_id
        for row in RecordLink.select().where((RecordLink.stream == STREAM) & RecordLink.stripe_id.is_null(False))
    }
    reviews = {row.source_id: row for row in ReviewItem.select().where(ReviewItem.stream == STREAM)}
    for case in CERTAIN:
        for invoice_id in seeded.invoices_of(case):
            (ref,) = seeded.payment_refs(invoice_id)
            pid = seeded.payment_id(ref)
            metadata = payments[pid]["metadata"]
            assert metadata["cliniko_invoice_id"] == invoice_id, (case, ref)
            assert metadata["cliniko_invoice_status"] == "paid"
            numbers[invoice_id] = metadata["cliniko_invoice_number"]
            assert links[invoice_id] == pid
    assert len(set(numbers.values())) == len(numbers) == 500
    for case in PLAUSIBLE:
        for invoice_id in seeded.invoices_of(case):
            expected = {seeded.payment_id(ref) for ref in seeded.payment_refs(invoice_id)}
            review = reviews[invoice_id]
            assert review.status == "open" and set(review.candidates) == expected, (case, review.detail)
            assert invoice_id not in links
            for pid in expected:
                assert "cliniko_invoice_id" not in payments[pid]["metadata"], (case, pid)
    for case in NEVER:
        for invoice_id in seeded.invoices_of(case):
            assert invoice_id not in links and invoice_id not in reviews, case
            for ref in seeded.payment_refs(invoice_id):
                assert "cliniko_invoice_id" not in payments[seeded.payment_id(ref)]["metadata"], case
    named = Counter(
        p["metadata"].get("cliniko_invoice_id") for p in payments.values() if p["object"] == "payment_intent"
    )
    named.pop(None, None)
    assert set(named.values()) == {1}, "no invoice named by two payments"
    assert len(set(links.values())) == len(links) == 500, "no payment linked twice"
    unpaid = {
        e.source_id
        for e in SyncEvent.select().where(
            (SyncEvent.stream == STREAM) & SyncEvent.message.contains("not paid through Stripe")
        )
    }
    assert set(seeded.invoices_of("paid_no_payment")) <= unpaid
    assert set(seeded.invoices_of("outside_window")) <= unpaid
    assert writes(seeded.sandbox)["POST /v1/payment_intents/{id}"] == 500


def test_a_rerun_writes_nothing(seeded: Seeded) -> None:
    """Nor reads each invoice waiting for a payment by id again, nor says again why it waits (no new payment)."""
    before = writes(seeded.sandbox)
    reads = Counter(stats(seeded.sandbox.cliniko_url)["by_endpoint"])
    context(seeded.env)
    told = SyncEvent.select().where(SyncEvent.stream == STREAM).count()
    again = sync_once(seeded.env, stream=STREAM)
    assert again.counts["linked"] == again.counts["updated"] == again.counts["created"] == 0, again.counts
    assert writes(seeded.sandbox) == before
    by_id = {k: n for k, n in (Counter(stats(seeded.sandbox.cliniko_url)["by_endpoint"]) - reads).items() if "{" in k}
    assert not by_id, by_id
    context(seeded.env)
    assert SyncEvent.select().where(SyncEvent.stream == STREAM).count() == told


def test_fifteen_status_changes_are_fifteen_metadata_updates(seeded: Seeded) -> None:
    changed = seeded.invoices_of("certain")[:15]
    admin(seeded.sandbox.cliniko_url, "edit_invoices", ids=changed, fields={"status": 30})
    before = writes(seeded.sandbox)
    result = sync_once(seeded.env, stream=STREAM)
    assert result.counts["updated"] == 15 and result.counts["linked"] == 0, result.counts
    delta = writes(seeded.sandbox) - before
    assert sum(delta.values()) == 15 and delta["POST /v1/payment_intents/{id}"] == 15, delta
    payments = seeded.payments()
    for invoice_id in changed:
        (ref,) = seeded.payment_refs(invoice_id)
        assert payments[seeded.payment_id(ref)]["metadata"]["cliniko_invoice_status"] == "closed"
    context(seeded.env)
    notes = [
        e.message for e in SyncEvent.select().where((SyncEvent.stream == STREAM) & (SyncEvent.action == "updated"))
    ]
    assert len(notes) == 15 and all("status updated on PaymentIntent pi_" in note for note in notes), notes[:2]
    shown = subprocess.run(
        [sys.executable, "-m", "clinicsync", "status"], env=seeded.env, capture_output=True, text=True, timeout=60
    )
    assert shown.returncode == 0 and "cliniko.invoices" in shown.stdout and "15 updated" in shown.stdout, shown.stdout


def test_a_refund_of_a_linked_payment_is_recorded_once(seeded: Seeded) -> None:
    invoice_id = seeded.invoices_of("certain")[20]
    (ref,) = seeded.payment_refs(invoice_id)
    payment = seeded.payment_id(ref)
    refund = seeded.sdk().v1.refunds.create(params={"payment_intent": payment, "amount": 500})
    before = writes(seeded.sandbox)
    for _ in range(2):
        result = sync_once(seeded.env, stream=STREAM)
        assert result.counts["updated"] == result.counts["linked"] == 0, result.counts
    assert writes(seeded.sandbox) == before, "a refund is recorded, nothing is written"
    context(seeded.env)
    notes = [
        e.message for e in SyncEvent.select().where((SyncEvent.stream == STREAM) & (SyncEvent.source_id == invoice_id))
    ]
    assert notes.count(f"the linked payment {payment} was refunded: 5.00 AUD ({refund.id})") == 1, notes


def test_create_is_no_decision_for_an_invoice_and_a_stored_one_means_nothing_is_linked(seeded: Seeded) -> None:
    """Payments are only ever linked: the CLI refuses "create"; one stored anyway (an older version, a script) is
    taken as "nothing to link", closed like an ignore, and never sends a write or comes back each run."""
    context(seeded.env)
    review = ReviewItem.select().where((ReviewItem.stream == STREAM) & (ReviewItem.status == "open")).first()
    assert review is not None
    refused = subprocess.run(
        [sys.executable, "-m", "clinicsync", "review", "create", str(review.id)],
        env=seeded.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert refused.returncode == 2 and "never creates a Stripe payment for" in refused.stderr, refused.stderr
    assert ReviewItem.get_by_id(review.id).status == "open"
    ReviewItem.update(status="resolved", resolution="create").where(ReviewItem.id == review.id).execute()
    before = writes(seeded.sandbox)
    for _ in range(2):
        result = sync_once(seeded.env, stream=STREAM)
        assert result.counts["linked"] == result.counts["created"] == 0, result.counts
    assert writes(seeded.sandbox) == before
    context(seeded.env)
    assert ReviewItem.get_by_id(review.id).status == "ignored"


# -- dates: local dates in each business's zone, across DST; issue dates never shifted ------------------------------
# 13:30Z on 4 April 2026 is 00:30 on the 5th in Melbourne (AEDT until 16:00Z) and 23:30 on the 4th in Brisbane.
# 13:30Z on 3 October is 23:30 on the 3rd in Melbourne (AEST); 13:30Z on 4 October, after the switch, is 00:30 on
# the 5th there (AEDT) and 23:30 on the 4th in Brisbane (no DST).
DATE_CASES = (
    # (business, issue date, payment time, linked with the window starting on the issue date)
    ("melbourne", "2026-04-05", "2026-04-04T13:30:00Z", True),
    ("brisbane", "2026-04-05", "2026-04-04T13:30:00Z", False),
    ("brisbane", "2026-04-04", "2026-04-04T13:30:00Z", True),
    ("melbourne", "2026-10-04", "2026-10-03T13:30:00Z", False),
    ("melbourne", "2026-10-05", "2026-10-04T13:30:00Z", True),
    ("brisbane", "2026-10-05", "2026-10-04T13:30:00Z", False),
)

BARE_CHARGE = ("melbourne", "2026-06-10", "2026-06-11T02:00:00Z", True)  # an old Charges API payment


def test_payment_times_are_local_dates_in_each_business_zone_across_dst(make_sandbox, env_for) -> None:
    """Also: a dry run plans the links and writes nothing; history names the object written; a charge made
    without a PaymentIntent carries the cross-reference itself."""
    from datetime import datetime

    sandbox = make_sandbox(profile="clean", patients=len(DATE_CASES) + 1)
    env = env_for(sandbox, CLINICSYNC_CLINIKO_INVOICES_MATCH_DAYS_BEFORE="0")
    sync_once(env)
    context(env)
    customers = {
        row.source_id: row.stripe_id for row in RecordLink.select().where(RecordLink.stream == "cliniko.patients")
    }
    patients = sorted(customers)
    zones = {
        "melbourne": None,  # the main business (the sandbox's default zone, Australia/Melbourne)
        "brisbane": admin(sandbox.cliniko_url, "add_business", time_zone_identifier="Australia/Brisbane")["id"],
    }
    specs = []
    for n, (business, issue, _, _) in enumerate((*DATE_CASES, BARE_CHARGE)):
        spec = {
            "patient_id": patients[n],
            "status": 20,
            "issue_date": issue,
            "lines": [{"name": "Standard consultation", "unit_price": f"{90 + n}.5"}],
        }
        if zones[business]:
            spec["business_id"] = zones[business]
        specs.append(spec)
    made = admin(sandbox.cliniko_url, "add_invoices", invoices=specs)["invoices"]
    assert [i["issue_date"] for i in made] == [c[1] for c in (*DATE_CASES, BARE_CHARGE)], "issue dates kept as given"
    bare = ""
    for n, (_, _, paid_at, _) in enumerate((*DATE_CASES, BARE_CHARGE)):
        created = int(datetime.fromisoformat(paid_at.replace("Z", "+00:00")).timestamp())
        paid = admin(
            sandbox.stripe_url,
            "add_payment",
            amount=(90 + n) * 100 + 50,
            currency="aud",
            customer=customers[patients[n]],
            created=created,
            without_intent=n == len(DATE_CASES),
        )
        bare = paid["charge"]
    before = writes(sandbox)
    plan = sync_once(env, stream=STREAM, dry_run=True)
    assert plan.counts["linked"] == 4 and writes(sandbox) == before, plan.counts
    result = sync_once(env, stream=STREAM)
    context(env)
    linked = {row.source_id: row.stripe_id for row in RecordLink.select().where(RecordLink.stream == STREAM)}
    got = [bool(linked.get(invoice["id"])) for invoice in made[:-1]]
    assert got == [case[3] for case in DATE_CASES], (result.counts, result.message)
    assert linked[made[-1]["id"]] == bare
    sdk = stripe.StripeClient(sandbox.stripe_key or "", base_addresses={"api": sandbox.stripe_url})
    assert sdk.v1.charges.retrieve(bare).metadata["cliniko_invoice_id"] == made[-1]["id"]
    notes = {e.source_id: e.message for e in SyncEvent.select().where(SyncEvent.action == "linked")}
    assert f"charge (made without a PaymentIntent) {bare}" in notes[made[-1]["id"]]
    assert "PaymentIntent pi_" in notes[made[0]["id"]]


def _synced_patient_with_an_invoice(sandbox: Any, env: dict[str, str], unit_price: str) -> tuple[str, dict[str, Any]]:
    """The sandbox's one patient synced to a customer, then given an invoice issued yesterday (clinic time) of one
    line at `unit_price`: (the customer's id, the invoice)."""
    from datetime import datetime, timedelta
    from zoneinfo import ZoneInfo

    sync_once(env)
    context(env)
    patient, customer = next(
        (row.source_id, row.stripe_id) for row in RecordLink.select().where(RecordLink.stream == "cliniko.patients")
    )
    issued = (datetime.now(ZoneInfo("Australia/Melbourne")) - timedelta(days=1)).date().isoformat()
    spec = {
        "patient_id": patient,
        "status": 20,
        "issue_date": issued,
        "lines": [{"name": "Consult", "unit_price": unit_price}],
    }
    (invoice,) = admin(sandbox.cliniko_url, "add_invoices", invoices=[spec])["invoices"]
    return customer, invoice


def test_an_invoice_waiting_for_a_payment_is_judged_again_only_when_its_customer_pays(make_sandbox, env_for) -> None:
    """Said once, not read by id on every run while it waits; linked on the run after its patient pays."""

    sandbox = make_sandbox(profile="clean", patients=1)
    env = env_for(sandbox)
    customer, invoice = _synced_patient_with_an_invoice(sandbox, env, "95.5")
    first = sync_once(env, stream=STREAM)
    assert first.counts["skipped"] == 1, first.counts
    reads = Counter(stats(sandbox.cliniko_url)["by_endpoint"])
    second = sync_once(env, stream=STREAM)
    assert second.counts["skipped"] == 0 and second.counts["linked"] == 0, second.counts
    assert not (Counter(stats(sandbox.cliniko_url)["by_endpoint"]) - reads)["GET /v1/invoices/{id}"]
    context(env)
    told = [e.message for e in SyncEvent.select().where(SyncEvent.source_id == invoice["id"])]
    assert told == ["not paid through Stripe"], told
    paid = admin(sandbox.stripe_url, "add_payment", amount=9550, currency="aud", customer=customer)
    third = sync_once(env, stream=STREAM)
    assert third.counts["linked"] == 1, (third.counts, third.message)
    context(env)
    link = RecordLink.get((RecordLink.stream == STREAM) & (RecordLink.source_id == invoice["id"]))
    assert link.stripe_id == paid["payment_intent"]


def test_a_payment_that_fits_a_waiting_invoice_by_billing_name_or_email_brings_it_back(make_sandbox, env_for) -> None:
    """Payments without the patient's customer: one with only the invoice's billing name, one with only the
    patient's email. Each invoice, reported not paid through Stripe, is judged again on the next run and goes to
    review with that payment; a payment whose name fits no invoice brings nothing back."""
    from datetime import datetime, timedelta
    from zoneinfo import ZoneInfo

    sandbox = make_sandbox(profile="clean", patients=3)
    env = env_for(sandbox)
    sync_once(env)
    people = {p["id"]: p for p in admin(sandbox.cliniko_url, "dump")["patients"]}
    by_name, by_email, untouched = sorted(people)
    issued = (datetime.now(ZoneInfo("Australia/Melbourne")) - timedelta(days=1)).date().isoformat()
    specs = [
        {"patient_id": patient, "status": 20, "issue_date": issued, "lines": [{"name": "Consult", "unit_price": price}]}
        for patient, price in ((by_name, "95.5"), (by_email, "120"), (untouched, "95.5"))
    ]
    made = admin(sandbox.cliniko_url, "add_invoices", invoices=specs)["invoices"]
    invoices = dict(zip((by_name, by_email, untouched), made, strict=True))
    admin(sandbox.cliniko_url, "clock", advance_s=60)  # past the read overlap: the next run's listing leaves them out
    sync_once(env, stream=STREAM)
    context(env)
    for invoice in made:
        told = [e.message for e in SyncEvent.select().where(SyncEvent.source_id == invoice["id"])]
        assert told == ["not paid through Stripe"], told
    named = admin(
        sandbox.stripe_url,
        "add_payment",
        amount=9550,
        currency="aud",
        # The invoice is made out to the patient (Cliniko's default); letter case and spacing differ.
        billing_details={"name": f"  {people[by_name]['first_name'].upper()}   {people[by_name]['last_name']} "},
    )
    emailed = admin(
        sandbox.stripe_url,
        "add_payment",
        amount=12000,
        currency="aud",
        billing_details={"email": people[by_email]["email"]},
    )
    admin(sandbox.stripe_url, "add_payment", amount=9550, currency="aud", billing_details={"name": "Nobody Known"})
    second = sync_once(env, stream=STREAM)
    assert second.counts["review"] == 2, (second.counts, second.message)
    context(env)
    reviews = {r.source_id: r for r in ReviewItem.select().where(ReviewItem.stream == STREAM)}
    assert set(reviews) == {invoices[by_name]["id"], invoices[by_email]["id"]}
    assert named["payment_intent"] in reviews[invoices[by_name]["id"]].candidates
    assert emailed["payment_intent"] in reviews[invoices[by_email]["id"]].candidates
    assert invoices[untouched]["id"] not in reviews, "the same amount, but neither its name nor its patient's email"


def test_a_run_stopped_by_a_failure_cuts_short_the_pause_of_its_payment_listing(make_sandbox, env_for, monkeypatch):
    """The first invoice offered starts the listing of Stripe's payments on a thread of its own; Stripe asks it to
    come back in a minute (a 429 with Retry-After: 60). The run then fails (Cliniko revokes the key at the next read):
    the listing's pause is cut short as the run ends, not waited out with nobody to take what it lists. Shown by the
    pause ending early (the sleep raised), not by time; ordered by the sandboxes' handling (each wait bounded)."""
    import threading
    from datetime import datetime, timedelta
    from zoneinfo import ZoneInfo

    from clinicsync.sync.service import run_sync
    from tests.support import CutPauses, paused_once

    sandbox = make_sandbox(profile="clean", patients=1)
    env = env_for(sandbox)
    sync_once(env)
    context(env)
    patient = RecordLink.get(RecordLink.stream == "cliniko.patients").source_id
    issued = (datetime.now(ZoneInfo("Australia/Melbourne")) - timedelta(days=1)).date().isoformat()
    spec = {
        "patient_id": patient,
        "status": 20,
        "issue_date": issued,
        "lines": [{"name": "Consult", "unit_price": "95"}],
    }
    (invoice,) = admin(sandbox.cliniko_url, "add_invoices", invoices=[spec])["invoices"]
    served, paused = threading.Event(), threading.Event()
    cliniko, stripe_emulator = sandbox.cliniko.emulator, sandbox.stripe.emulator
    cliniko_handle = cliniko.handle

    def cliniko_api(request: Any) -> Any:
        if request.method == "GET" and request.path.rstrip("/").endswith("/invoices"):
            if served.is_set():  # the invoice was read and offered: its payments are being listed
                paused.wait(10)
                cliniko.admin("revoke_key", {})
            response = cliniko_handle(request)
            listed = response.body.get("invoices") if isinstance(response.body, dict) else None
            if any(str(i.get("id")) == str(invoice["id"]) for i in listed or []):
                served.set()
            return response
        return cliniko_handle(request)

    monkeypatch.setattr(cliniko, "handle", cliniko_api)
    monkeypatch.setattr(stripe_emulator, "handle", paused_once(stripe_emulator, "/v1/charges", paused))
    ctx, token = context(env), CutPauses()
    (failed,) = run_sync(ctx.paths, ctx.settings, ctx.secrets, streams=[STREAM], trigger="test", cancel=token)
    assert served.is_set() and paused.is_set()
    assert (failed.outcome, failed.stop_kind) == ("failed", "source_auth"), (failed.outcome, failed.message)
    listing = "read-ahead Stripe payments for invoices"
    for thread in threading.enumerate():
        if thread.name == listing:
            thread.join(10)  # a bound for a listing that is not stopped, not the proof
    pauses = [seconds for name, seconds in token.cut if name == listing]
    assert pauses and pauses[0] > 30, f"the listing's pause of a minute was cut short: {token.cut}"
    assert not token.cancelled, "the run failed: nobody cancelled it"


def test_links_are_stored_and_sent_before_the_deleted_pass_is_read(make_sandbox, env_for, monkeypatch) -> None:
    """An invoice is decided as it is read when no invoice still to come can change that, and the ones that wait
    (an exact payment another invoice may fit too) are decided when the live and archived invoices, every invoice
    that could be offered, are listed: by then every link's write is stored and handed to the write threads,
    before the deleted pass is asked for. (Before, nothing was decided until the last pass ended.)"""
    import dataclasses

    from clinicsync.store.models import OutboxEntry
    from clinicsync.streams.base import CANDIDATES_LISTED
    from clinicsync.sync import service

    sandbox = make_sandbox(profile="clean", patients=30, invoices=100)
    env = env_for(sandbox)
    sync_once(env)
    cases = Counter(sandbox.seeded["invoice_scenario"]["cases"].values())
    links = sum(cases[case] for case in CERTAIN)
    original = service.STREAMS[STREAM]
    stored_at_mark: list[int] = []

    def read_changed(client, cursor):
        for record in original.read_changed(client, cursor):
            yield record
            if record is CANDIDATES_LISTED:  # the engine has acted on the mark and asks for the deleted pass
                stored_at_mark.append(OutboxEntry.select().where(OutboxEntry.stream == STREAM).count())

    monkeypatch.setitem(service.STREAMS, STREAM, dataclasses.replace(original, read_changed=read_changed))
    result = sync_once(env, stream=STREAM)
    assert result.counts["linked"] == links and result.counts["failed"] == 0, result.counts
    assert stored_at_mark == [links]
    assert writes(sandbox)["POST /v1/payment_intents/{id}"] == links  # each once (these have PaymentIntents)


def test_links_are_sent_while_the_invoices_are_still_read(make_sandbox, env_for, monkeypatch) -> None:
    """The first read lists invoices by issue date, so an invoice whose one exact payment no later-issued invoice
    could fit is decided, stored and sent while Cliniko is still read: the Stripe sandbox has carried out metadata
    writes before the last page of the live and archived invoices is asked for. Order of events, not time: before
    asking for each page, the read waits until Stripe has carried out every link stored so far (were links only
    decided once the read ended, few would be stored before the last page). The decisions are the acceptance
    mix's: every certain one linked to its own payment, every plausible one in review."""
    import dataclasses
    import time

    from clinicsync.store.models import OutboxEntry
    from clinicsync.sync import service

    sandbox = make_sandbox(profile="clean", patients=300, invoices=1000)
    env = env_for(sandbox)
    assert sync_once(env).counts["linked"] == 300
    scenario = sandbox.seeded["invoice_scenario"]
    cases = Counter(scenario["cases"].values())
    links = sum(cases[case] for case in CERTAIN)
    original = service.STREAMS[STREAM]
    asked: list[tuple[int, int]] = []  # per live invoice page asked for: (links stored, metadata writes carried out)

    def metadata_writes() -> int:
        done = writes(sandbox)
        return done["POST /v1/payment_intents/{id}"] + done["POST /v1/charges/{id}"]

    def read_changed(client, cursor):
        pages_of = client.iter_pages

        def iter_pages(path, params=None, **kwargs):
            pages = pages_of(path, params, **kwargs)
            live = path == "/invoices" and ("q[]", "deleted_at:?") not in list(params or [])
            while True:
                if live:
                    stored = OutboxEntry.select().where(OutboxEntry.stream == STREAM).count()
                    deadline = time.monotonic() + 30  # a bound for a failing run, not the proof
                    while metadata_writes() < stored and time.monotonic() < deadline:
                        time.sleep(0.01)
                    asked.append((stored, metadata_writes()))
                try:
                    page = next(pages)
                except StopIteration:
                    return
                yield page

        client.iter_pages = iter_pages
        yield from original.read_changed(client, cursor)

    monkeypatch.setitem(service.STREAMS, STREAM, dataclasses.replace(original, read_changed=read_changed))
    result = sync_once(env, stream=STREAM)
    assert result.counts["linked"] == links == 500 and result.counts["review"] == 80, result.counts
    assert result.counts["failed"] == 0, result.counts
    assert len(asked) >= 10, asked  # the live and archived invoices' pages (and a last, empty restart if any)
    # Stripe had carried out most links before the last invoice page was asked for (when links waited for the
    # read's end, only the few decided alone were: 41 of 500).
    assert asked[-1][1] >= links // 2, asked
    assert metadata_writes() == links  # each link written once

    context(env)
    linked = {
        r.source_id: r.stripe_id
        for r in RecordLink.select().where((RecordLink.stream == STREAM) & RecordLink.stripe_id.is_null(False))
    }
    certain = {i for case in CERTAIN for i in scenario["cases"] if scenario["cases"][i] == case}
    assert set(linked) == certain
    for invoice_id, stripe_id in linked.items():
        refs = [ref for ref, ids in scenario["payment_invoices"].items() if invoice_id in ids]
        made = [scenario["payments"][ref]["payment_intent"] or scenario["payments"][ref]["charge"] for ref in refs]
        assert stripe_id in made, (invoice_id, stripe_id, made)
    reviewed = {r.source_id for r in ReviewItem.select().where(ReviewItem.stream == STREAM)}
    plausible = {i for i, case in scenario["cases"].items() if case in PLAUSIBLE}
    assert plausible <= reviewed and not reviewed & certain, (len(plausible), len(reviewed))


def test_a_payment_two_invoices_fit_goes_to_review_though_the_read_passes_the_first(
    make_sandbox, env_for, monkeypatch
) -> None:
    """Read by issue date, the first invoice an exact payment fits is not decided when the read passes it, nor
    when it passes the payment's date: an invoice issued up to `match_days_before` (7) days after the payment can
    still fit it, so both go to review together; one issued a day later cannot, and is not paid through Stripe. A
    later invoice's date moves the read past them all before the live pass ends. (The payments are listed before
    the first invoice is judged, as on a long read: else these few would all wait for the listing.)"""
    from datetime import UTC, datetime, time, timedelta

    from clinicsync.streams.cliniko_invoices import InvoiceMatcher

    listed = InvoiceMatcher._listed
    monkeypatch.setattr(InvoiceMatcher, "_listed", lambda self, *, wait: listed(self, wait=True))
    decided_at_marks: list[str] = []
    below = InvoiceMatcher.listed_below

    def listed_below(self, value):
        decisions = below(self, value)
        decided_at_marks.extend(decisions)
        return decisions

    monkeypatch.setattr(InvoiceMatcher, "listed_below", listed_below)

    sandbox = make_sandbox(profile="clean", patients=1)
    env = env_for(sandbox)
    sync_once(env)
    context(env)
    patient, customer = next(
        (row.source_id, row.stripe_id) for row in RecordLink.select().where(RecordLink.stream == "cliniko.patients")
    )
    paid_on = datetime.now(UTC).date() - timedelta(days=60)  # 03:00Z: the same date in Melbourne, DST or not
    specs = [
        {
            "patient_id": patient,
            "status": 20,
            "issue_date": (paid_on + timedelta(days=days)).isoformat(),
            "lines": [{"name": "Consult", "unit_price": price}],
        }
        for days, price in ((-1, "95.5"), (7, "95.5"), (8, "95.5"), (20, "40"))
    ]
    first, last_fitting, too_late, later = admin(sandbox.cliniko_url, "add_invoices", invoices=specs)["invoices"]
    created = int(datetime.combine(paid_on, time(3), tzinfo=UTC).timestamp())
    paid = admin(sandbox.stripe_url, "add_payment", amount=9550, currency="aud", customer=customer, created=created)
    result = sync_once(env, stream=STREAM)
    assert result.counts["linked"] == 0 and result.counts["review"] == 2, (result.counts, result.message)
    context(env)
    reviews = {r.source_id: r for r in ReviewItem.select().where(ReviewItem.stream == STREAM)}
    assert set(reviews) == {first["id"], last_fitting["id"]}
    assert all(
        r.candidates == [paid["payment_intent"]] and r.reason == "payment_fits_several" for r in reviews.values()
    )
    assert writes(sandbox)["POST /v1/payment_intents/{id}"] == 0
    assert too_late["id"] not in reviews and later["id"] not in reviews
    assert sorted(decided_at_marks) == sorted([first["id"], last_fitting["id"]]), "decided at a mark past both"


def test_an_invoice_backdated_during_the_first_read_is_judged_beside_the_one_its_payment_was_linked_to(
    make_sandbox, env_for, monkeypatch
) -> None:
    """The first read lists invoices by issue date, so one raised while it runs, dated before where the read has
    got to, is not listed by it. The live invoices changed since the read began are read once more before every
    candidate is said to be listed: invoice X, linked to its one exact payment once the read passed every date
    that could fit it, keeps the link, and Y (the same patient and amount, issued the payment's day, raised after
    X was decided) goes to review as a payment linked already, not left unread until it is next edited. Order of
    events: Y is raised once the read has handed over an invoice issued after X's decision."""
    import dataclasses
    from datetime import UTC, datetime, time, timedelta

    from clinicsync.streams.cliniko_invoices import InvoiceMatcher
    from clinicsync.sync import service

    listed = InvoiceMatcher._listed
    monkeypatch.setattr(InvoiceMatcher, "_listed", lambda self, *, wait: listed(self, wait=True))
    decided_at_marks: list[str] = []
    below = InvoiceMatcher.listed_below

    def listed_below(self, value):
        decisions = below(self, value)
        decided_at_marks.extend(decisions)
        return decisions

    monkeypatch.setattr(InvoiceMatcher, "listed_below", listed_below)

    sandbox = make_sandbox(profile="clean", patients=1)
    env = env_for(sandbox)
    sync_once(env)
    context(env)
    patient, customer = next(
        (row.source_id, row.stripe_id) for row in RecordLink.select().where(RecordLink.stream == "cliniko.patients")
    )
    paid_on = datetime.now(UTC).date() - timedelta(days=60)  # 03:00Z: the same date in Melbourne, DST or not

    def spec(days: int, price: str) -> dict[str, Any]:
        issued = (paid_on + timedelta(days=days)).isoformat()
        return {
            "patient_id": patient,
            "status": 20,
            "issue_date": issued,
            "lines": [{"name": "Consult", "unit_price": price}],
        }

    x, later = admin(sandbox.cliniko_url, "add_invoices", invoices=[spec(-1, "95.5"), spec(20, "40")])["invoices"]
    created = int(datetime.combine(paid_on, time(3), tzinfo=UTC).timestamp())
    paid = admin(sandbox.stripe_url, "add_payment", amount=9550, currency="aud", customer=customer, created=created)
    original = service.STREAMS[STREAM]
    raised: list[dict[str, Any]] = []

    def read_changed(client, cursor):
        for record in original.read_changed(client, cursor):
            yield record
            if isinstance(record, dict) and record.get("id") == later["id"] and not raised:
                assert decided_at_marks == [x["id"]], "X was decided before Y is raised"
                raised.extend(admin(sandbox.cliniko_url, "add_invoices", invoices=[spec(0, "95.5")])["invoices"])

    monkeypatch.setitem(service.STREAMS, STREAM, dataclasses.replace(original, read_changed=read_changed))
    result = sync_once(env, stream=STREAM)
    assert len(raised) == 1, "the read handed over the later invoice"
    assert result.counts["linked"] == 1 and result.counts["review"] == 1, (result.counts, result.message)
    context(env)
    links = {r.source_id: r.stripe_id for r in RecordLink.select().where(RecordLink.stream == STREAM)}
    assert links.get(x["id"]) == paid["payment_intent"]
    reviews = {r.source_id: r for r in ReviewItem.select().where(ReviewItem.stream == STREAM)}
    assert set(reviews) == {raised[0]["id"]}, "Y, raised during the read and dated before it, was judged in it"
    assert reviews[raised[0]["id"]].reason == "link_taken"
    assert reviews[raised[0]["id"]].candidates == [paid["payment_intent"]]
    assert writes(sandbox)["POST /v1/payment_intents/{id}"] == 1


def test_a_linked_invoice_held_back_by_its_queued_change_is_waiting_not_unpaid(make_sandbox, env_for) -> None:
    """A linked invoice whose status change was queued for Stripe and not sent yet (the sync was killed just after
    storing it) is held back by the plan made meanwhile: it is counted, and said, as waiting for that change to
    reach Stripe, never as "not paid through Stripe" (before, the engine counted it skipped, which this stream
    calls not paid through Stripe). The next sync sends the queued change exactly once and loses nothing."""

    from clinicsync import labels
    from clinicsync.store import queries
    from clinicsync.store.models import OutboxEntry

    sandbox = make_sandbox(profile="clean", patients=1)
    env = env_for(sandbox)
    customer, invoice = _synced_patient_with_an_invoice(sandbox, env, "80")
    paid = admin(sandbox.stripe_url, "add_payment", amount=8000, currency="aud", customer=customer)
    assert sync_once(env, stream=STREAM).counts["linked"] == 1
    sent = writes(sandbox)["POST /v1/payment_intents/{id}"]

    admin(sandbox.cliniko_url, "edit_invoices", ids=[invoice["id"]], fields={"status": 30})  # closed in Cliniko
    command = [sys.executable, "-m", "clinicsync", "sync", "--once", "--stream", STREAM]
    crash = {**env, "CLINICSYNC_CRASH_AT": "after_outbox_insert"}
    killed = subprocess.run(command, env=crash, capture_output=True, timeout=180)
    assert killed.returncode != 0, killed.stdout
    context(env)
    assert OutboxEntry.select().where((OutboxEntry.stream == STREAM) & (OutboxEntry.status == "pending")).count() == 1

    plan = sync_once(env, stream=STREAM, dry_run=True)
    words = labels.counts_words(plan.counts, STREAM)
    assert plan.counts["skipped"] == 0, words
    assert plan.counts["waiting"] == 1, words
    assert f"0 {labels.NOT_PAID_THROUGH_STRIPE}" in words and "1 waiting for an earlier change to reach Stripe" in words
    assert [row["source_id"] for row in plan.plan["samples"]["waiting"]] == [invoice["id"]]
    assert labels.plan_action_label("waiting", "payment_intent", STREAM).startswith(
        "Waiting for an earlier change to reach Stripe"
    )
    context(env)
    (latest,) = queries.history_runs(limit=1)  # the plan's own row in History
    assert (latest.dry_run, latest.skipped, latest.waiting) == (True, 0, 1), latest

    again = sync_once(env, stream=STREAM)  # the queued change goes first, once; nothing is held back any more
    assert again.counts["updated"] == 1 and again.counts["skipped"] == again.counts["waiting"] == 0, again.counts
    assert writes(sandbox)["POST /v1/payment_intents/{id}"] == sent + 1
    sdk = stripe.StripeClient(sandbox.stripe_key or "", base_addresses={"api": sandbox.stripe_url})
    metadata = sdk.v1.payment_intents.retrieve(paid["payment_intent"]).metadata
    assert metadata["cliniko_invoice_id"] == invoice["id"] and metadata["cliniko_invoice_status"] == "closed"
    assert sync_once(env, stream=STREAM).counts["updated"] == 0
    assert writes(sandbox)["POST /v1/payment_intents/{id}"] == sent + 1, "no duplicate"
