"""Decisions about matching, carried out exactly once, even when a record changes while the sync reads it.

Each test reproduces a bug a review found (duplicates, a stream blocked for good, a decision that looped with
nobody able to change it). Staff edits during a sync are made through the Cliniko sandbox's admin API from a
wrapped stream reader, at the moment the bug needs, so the timing is deterministic.
"""

from __future__ import annotations

import dataclasses
import time

import pytest

from clinicsync.store.models import OutboxEntry, RecordLink, ReviewItem
from clinicsync.store.queries import ReviewError, resolve_review
from clinicsync.streams import STREAMS
from clinicsync.sync import engine, service
from tests.integration.test_patients_stream import customers
from tests.support import admin, context, sync_once

STREAM = "cliniko.patients"


def patients(sandbox) -> list[dict]:
    return admin(sandbox.cliniko_url, "dump")["patients"]


def naming(sandbox, patient_id: str) -> list[dict]:
    return [c for c in customers(sandbox) if c["metadata"].get("cliniko_patient_id") == patient_id]


def edit_while_reading(monkeypatch, sandbox, patient_id: str, *, when: str, fields: dict) -> None:
    """Staff change a patient once, right after the sync has read it (`when`: "listing", where the run then meets
    the edited version too, or "by id")."""
    original = STREAMS[STREAM]
    done: list[bool] = []

    def edit_once() -> None:
        if not done:
            done.append(True)
            admin(sandbox.cliniko_url, "edit", ids=[patient_id], fields=fields)

    def read_changed(client, cursor):
        for record in original.read_changed(client, cursor):
            yield record
            if str(record["id"]) == patient_id and not done:
                edit_once()
                # Met again in the same run, edited: as a second pass (live, then archived_at:*) lists it when
                # Cliniko's `*` listing does not hold live records too.
                yield original.read_one(client, patient_id)

    def read_one(client, source_id):
        record = original.read_one(client, source_id)
        if source_id == patient_id:
            edit_once()
        return record

    changed = {"read_changed": read_changed} if when == "listing" else {"read_one": read_one}
    monkeypatch.setitem(service.STREAMS, STREAM, dataclasses.replace(original, **changed))


@pytest.mark.parametrize("link_first", [False, True])
def test_a_record_read_twice_while_its_email_matches_a_customer_is_linked_once(
    make_sandbox, env_for, monkeypatch, link_first: bool
):
    """Before: the run crashed (IntegrityError, a second pending write) or, when the first link had finished,
    the second version found the customer taken and created a duplicate."""
    sandbox = make_sandbox(profile="clean", patients=5)
    env = env_for(sandbox)
    patient = patients(sandbox)[0]
    pid = str(patient["id"])
    (made_by_hand,) = admin(sandbox.stripe_url, "seed", customers=[{"email": patient["email"], "name": "By hand"}])[
        "ids"
    ]
    edit_while_reading(monkeypatch, sandbox, pid, when="listing", fields={"first_name": "Mia-Rose"})
    if link_first:  # the first link settles before the second version is decided (a busy PC)
        real = engine.records_sharing_email
        monkeypatch.setattr(engine, "records_sharing_email", lambda *a, **k: (time.sleep(0.3), real(*a, **k))[1])

    result = sync_once(env)
    assert result.outcome == "ok", (result.stop_kind, result.message)
    (customer,) = [c for c in customers(sandbox) if c["email"] == patient["email"]]
    assert customer["id"] == made_by_hand and customer["metadata"]["cliniko_patient_id"] == pid
    assert customer["name"].startswith("Mia-Rose"), "decided once, by the version read last"
    monkeypatch.undo()
    again = sync_once(env)
    assert again.counts["created"] == again.counts["updated"] == 0


def test_a_create_decided_in_review_creates_once_when_the_record_changes_during_the_sync(
    make_sandbox, env_for, monkeypatch
):
    sandbox = make_sandbox(profile="clean", patients=3)
    env = env_for(sandbox)
    patient = patients(sandbox)[0]
    pid = str(patient["id"])
    admin(sandbox.stripe_url, "seed", customers=[{"email": patient["email"], "name": n} for n in ("A", "B")])
    assert sync_once(env).counts["review"] == 1
    context(env)
    resolve_review(ReviewItem.get(ReviewItem.source_id == pid).id, "create")

    edit_while_reading(monkeypatch, sandbox, pid, when="by id", fields={"first_name": "Edited"})
    result = sync_once(env)
    assert result.counts["created"] == 1, result.counts
    (customer,) = naming(sandbox, pid)
    assert customer["name"].startswith("Edited"), "the second version updated the customer the first created"


def test_two_decisions_for_one_customer_never_overwrite_it_nor_block_the_stream(make_sandbox, env_for):
    sandbox = make_sandbox(profile="clean", patients=4)
    env = env_for(sandbox)
    first, second = (str(p["id"]) for p in patients(sandbox)[:2])
    email = patients(sandbox)[0]["email"]
    admin(sandbox.cliniko_url, "edit", ids=[second], fields={"email": email})  # family members share it
    (family,) = admin(sandbox.stripe_url, "seed", customers=[{"email": email, "name": "Family account"}])["ids"]
    assert sync_once(env).counts["review"] == 2
    context(env)
    reviews = {r.source_id: r for r in ReviewItem.select().where(ReviewItem.status == "open")}
    resolve_review(reviews[first].id, "link", family)
    with pytest.raises(ReviewError, match="already chosen for"):
        resolve_review(reviews[second].id, "link", family)
    # As an older ClinicSync could leave it: both decisions point at the same customer.
    ReviewItem.update(status="resolved", resolution="link", resolution_stripe_id=family).where(
        ReviewItem.id == reviews[second].id
    ).execute()

    result = sync_once(env)
    assert result.outcome == "attention" and result.counts["linked"] == 1, (result.stop_kind, result.counts)
    context(env)
    (owner,) = RecordLink.select().where(RecordLink.stripe_id == family)
    assert owner.source_id == first
    assert naming(sandbox, first)[0]["id"] == family and naming(sandbox, second) == []
    (asked_again,) = ReviewItem.select().where((ReviewItem.source_id == second) & (ReviewItem.status == "open"))
    assert asked_again.reason == "link_taken" and family not in asked_again.candidates
    assert OutboxEntry.select().where(OutboxEntry.status == "pending").count() == 0, "nothing left to block the queue"

    resolve_review(asked_again.id, "create")
    after = sync_once(env)
    assert after.outcome == "ok" and after.counts["created"] == 1
    assert naming(sandbox, first)[0]["id"] == family and len(naming(sandbox, second)) == 1


def test_a_decision_to_link_a_customer_that_is_then_deleted_goes_back_to_a_person(make_sandbox, env_for):
    """Before: the resolved decision was reused, so every sync re-sent the link to the deleted customer and
    nobody could change it."""
    sandbox = make_sandbox(profile="clean", patients=3)
    env = env_for(sandbox)
    patient = patients(sandbox)[0]
    pid = str(patient["id"])
    chosen, _other = admin(
        sandbox.stripe_url, "seed", customers=[{"email": patient["email"], "name": n} for n in ("A", "B")]
    )["ids"]
    sync_once(env)
    context(env)
    resolve_review(ReviewItem.get(ReviewItem.source_id == pid).id, "link", chosen)
    admin(sandbox.stripe_url, "delete", ids=[chosen])

    assert sync_once(env).counts["review"] == 1
    context(env)
    (again,) = ReviewItem.select().where((ReviewItem.source_id == pid) & (ReviewItem.status == "open"))
    assert again.reason == "stripe_object_deleted"
    sent = OutboxEntry.select().where(OutboxEntry.source_id == pid).count()
    sync_once(env)
    context(env)
    assert OutboxEntry.select().where(OutboxEntry.source_id == pid).count() == sent, "the link is not sent again"
    assert ReviewItem.get_by_id(again.id).status == "open", "still waiting for the person"

    resolve_review(again.id, "create")
    assert sync_once(env).counts["created"] == 1
    assert len(naming(sandbox, pid)) == 1


def test_a_write_whose_customer_turns_out_linked_elsewhere_goes_to_review_and_the_queue_moves_on(tmp_path):
    """The backstop under the engine's own check: the link is refused by the one-record-per-customer rule at
    the moment it is saved. Before, that IntegrityError left the row pending and replayed first in every run."""
    from clinicsync.mapping.defaults import CLINIKO_PATIENTS
    from clinicsync.retry import RetryPolicy
    from clinicsync.store.db import open_database
    from clinicsync.store.models import AccountPair
    from clinicsync.sync.outbox import OutboxWriter

    open_database(tmp_path / "db.sqlite3")
    pair = AccountPair.create(
        uuid="p", source_system="cliniko", source_account="1", stripe_account="acct_1", stripe_livemode=False
    )
    RecordLink.create(
        pair=pair, stream=STREAM, source_id="A", stripe_object="customer", stripe_id="cus_X", payload_hash="a1"
    )
    row = OutboxEntry.create(
        pair=pair,
        stream=STREAM,
        source_id="B",
        op="link",
        stripe_object="customer",
        stripe_id="cus_X",
        params={},
        payload_hash="b1",
    )
    recorded: list[tuple[str, str]] = []

    class Recorder:
        def record(self, action, source_id, display_name, stripe_id, message=""):
            recorded.append((action, source_id))

    writer = OutboxWriter(
        gateway=None,  # type: ignore[arg-type]  # nothing is sent: Stripe already answered
        pair=pair,
        mapping=CLINIKO_PATIENTS,
        stream=STREAMS[STREAM],
        policy=RetryPolicy(),
        recorder=Recorder(),
        sleep=lambda s: None,
        search_settle_s=0,
    )
    writer._complete(row, {"id": "cus_X"}, replayed=False)
    writer.flush()

    assert OutboxEntry.get_by_id(row.id).status == "failed"
    (review,) = ReviewItem.select().where(ReviewItem.source_id == "B")
    assert (review.status, review.reason) == ("open", "link_taken") and "already linked to A" in review.detail
    assert RecordLink.get(RecordLink.source_id == "A").payload_hash is None, "A's data is sent to cus_X again"
    assert recorded == [("review", "B")]


def test_an_automatic_match_to_a_customer_deleted_since_the_listing_is_decided_again_without_asking(
    make_sandbox, env_for
):
    """Nobody chose that customer, so nobody needs asking: it is dropped from the index and the next sync
    decides again (here: a new customer). A customer a person chose, or one linked before, still goes to review."""
    sandbox = make_sandbox(profile="clean", patients=3)
    env = env_for(sandbox)
    (gone,) = admin(sandbox.stripe_url, "seed", customers=[{"email": "ada.new@example.org", "name": "Ada"}])["ids"]
    sync_once(env)  # the index now lists `gone`
    (newcomer,) = admin(sandbox.cliniko_url, "seed", profile="clean", patients=1, seed=91, replace=False)["ids"]
    admin(sandbox.cliniko_url, "edit", ids=[newcomer], fields={"email": "Ada.New@example.org"})
    admin(sandbox.stripe_url, "delete", ids=[gone])

    matched = sync_once(env)
    assert matched.counts["review"] == 0 and matched.counts["skipped"] == 1, matched.counts
    context(env)
    assert ReviewItem.select().where(ReviewItem.status == "open").count() == 0
    again = sync_once(env)
    assert again.counts["created"] == 1, again.counts
    (customer,) = naming(sandbox, newcomer)
    assert customer["id"] != gone


def test_a_persons_customer_found_deleted_makes_the_records_linked_to_it_read_and_written_again(tmp_path):
    """A Cal.com attendee joining the customer a patient is linked to, which the other installation had deleted as
    a race's twin: the patient's link is read and sent again next run (which finds the twin that stayed), instead
    of offering the deleted customer to the attendee on every run (a soak seed lost track of such people)."""
    from clinicsync.mapping.defaults import CALCOM_ATTENDEES
    from clinicsync.retry import RetryPolicy
    from clinicsync.store.db import open_database
    from clinicsync.store.models import AccountPair, RetryRecord
    from clinicsync.sync.outbox import OutboxWriter

    open_database(tmp_path / "db.sqlite3")
    cliniko = AccountPair.create(
        uuid="p", source_system="cliniko", source_account="1", stripe_account="acct_1", stripe_livemode=False
    )
    calcom = AccountPair.create(
        uuid="c", source_system="calcom", source_account="9", stripe_account="acct_1", stripe_livemode=False
    )
    RecordLink.create(
        pair=cliniko, stream=STREAM, source_id="7", stripe_object="customer", stripe_id="cus_gone", payload_hash="h"
    )
    row = OutboxEntry.create(
        pair=calcom,
        stream="calcom.bookings",
        source_id="att_1",
        op="link",
        stripe_object="customer",
        stripe_id="cus_gone",
        params={},
        payload_hash="b1",
    )

    class Gateway:  # Stripe has nothing naming the attendee: no twin of its own to carry on with
        def search(self, *_args):
            return []

        def list_by_email(self, *_args):
            return []

    class Recorder:
        def record(self, *_args, **_kwargs):
            pass

    writer = OutboxWriter(
        gateway=Gateway(),  # type: ignore[arg-type]
        pair=calcom,
        mapping=CALCOM_ATTENDEES,
        stream=STREAMS["calcom.bookings"],
        policy=RetryPolicy(),
        recorder=Recorder(),
        sleep=lambda s: None,
        search_settle_s=0,
    )
    assert writer._object_gone(row, {}, 0) is False
    assert OutboxEntry.get_by_id(row.id).status == "failed"
    assert RecordLink.get(RecordLink.source_id == "7").payload_hash is None, "the patient is sent again"
    revisits = {(r.pair_id, r.stream, r.source_id) for r in RetryRecord.select()}
    assert (cliniko.id, STREAM, "7") in revisits, "and read again, though it did not change in Cliniko"
    assert (calcom.id, "calcom.bookings", "att_1") in revisits
