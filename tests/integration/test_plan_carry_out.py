"""The first live sync carries out the plan a person approved, over real HTTP to the sandboxes.

The plan run reads every Cliniko page and lists the Stripe account; the approved sync does neither again: it tops
the index up, reads only what changed since the plan's read began, and carries out each record's planned decision.
A record that changed after the plan is judged again, and a create or link the plan did not approve goes to review.
"""

from __future__ import annotations

import math
from dataclasses import replace
from datetime import timedelta
from typing import Any

import httpx

from clinicsync.mapping.defaults import CLINIKO_PATIENTS
from clinicsync.mapping.fields import FieldCatalogue
from clinicsync.retry import CancelToken
from clinicsync.store import mappings as mapping_store
from clinicsync.store import queries
from clinicsync.store.models import AccountPair, ReviewItem, SyncEvent, SyncPlan
from clinicsync.sync import plans
from clinicsync.sync.service import run_sync
from tests.support import (
    actual_customer_fields,
    admin,
    context,
    executed_writes,
    expected_customer_fields,
    stats,
    sync_once,
)

STREAM = "cliniko.patients"
PATIENT_PAGES = "GET /v1/patients"
PASSES = 2  # nothing changed: the archived_at:* pass lists no live patient, so the live pass is read too (a page each)


def live_clinic(make_sandbox, env_for, *, patients: int, profile: str = "clean", scope_all: bool = True):
    sandbox = make_sandbox(profile=profile, patients=patients, stripe_mode="live")
    env = env_for(sandbox)
    if scope_all:  # every patient (a saved mapping), so no activity reads blur the page counts
        context(env)
        mapping_store.save(CLINIKO_PATIENTS, FieldCatalogue.for_source("cliniko", "patient"), who="test")
    return sandbox, env


def customers(sandbox) -> dict[str, dict[str, Any]]:
    """Live customers by the patient they name."""
    found: dict[str, dict[str, Any]] = {}
    for customer in admin(sandbox.stripe_url, "dump", livemode=True)["data"]:
        pid = customer["metadata"].get("cliniko_patient_id")
        if pid and not customer["deleted"]:
            assert pid not in found, f"two customers for patient {pid}"
            found[pid] = customer
    return found


def patients(sandbox) -> dict[str, dict[str, Any]]:
    return {p["id"]: p for p in admin(sandbox.cliniko_url, "dump")["patients"]}


def pages_read(sandbox) -> int:
    return int(stats(sandbox.cliniko_url)["by_endpoint"].get(PATIENT_PAGES, 0))


def run_events(run_id: int) -> dict[str, SyncEvent]:
    return {e.source_id: e for e in SyncEvent.select().where(SyncEvent.run == run_id) if e.action != "note"}


def kept_entries() -> dict[str, Any]:
    """The approved plan's decisions, by record, as the approved sync will read them."""
    pair = AccountPair.select().order_by(AccountPair.last_used_at.desc()).first()
    row = plans.to_carry_out(pair, STREAM)
    assert row is not None, "an approved plan keeps its decisions until it is carried out"
    plan = plans.open_plan(row)
    try:
        return {entry.source_id: entry for entry in plan.file.entries()}
    finally:
        plan.close()


def add_patient(sandbox, **fields: Any) -> str:
    response = httpx.post(
        f"{sandbox.cliniko_url}/patients",
        json=fields,
        auth=(sandbox.cliniko_key, ""),
        headers={"User-Agent": "ClinicSync tests (tests@example.com)", "Accept": "application/json"},
        timeout=30,
    )
    response.raise_for_status()
    return str(response.json()["id"])


def add_customer(sandbox, email: str) -> str:
    response = httpx.post(
        f"{sandbox.stripe_url}/v1/customers",
        data={"email": email, "name": "Added In Stripe"},
        headers={"Authorization": f"Bearer {sandbox.stripe_key}"},
        timeout=30,
    )
    response.raise_for_status()
    return str(response.json()["id"])


def test_the_approved_sync_reads_no_cliniko_page_again_when_nothing_changed(make_sandbox, env_for):
    sandbox, env = live_clinic(make_sandbox, env_for, patients=250)
    planned = sync_once(env)
    assert planned.outcome == "needs_approval" and planned.plan is not None
    plan_pages = pages_read(sandbox)
    assert plan_pages >= math.ceil(250 / 100), "the plan reads every page"
    context(env)
    queries.approve_latest_plan(STREAM)

    before = pages_read(sandbox)
    reads_by_id = stats(sandbox.cliniko_url)["by_endpoint"].get("GET /v1/patients/{id}", 0)
    approved = sync_once(env)
    assert approved.outcome == "ok", approved.message
    assert pages_read(sandbox) - before <= PASSES, "only what changed since the plan is read: one page a pass"
    assert stats(sandbox.cliniko_url)["by_endpoint"].get("GET /v1/patients/{id}", 0) == reads_by_id
    assert approved.counts["created"] == planned.plan["counts"]["created"] == 250
    assert executed_writes(sandbox.stripe_url) == 250
    made, source = customers(sandbox), patients(sandbox)
    assert set(made) == set(source)
    for pid, patient in source.items():
        assert actual_customer_fields(made[pid]) == expected_customer_fields(patient), pid

    context(env)
    row = queries.latest_plan(STREAM)
    assert row.summary[plans.KEPT]["carried_out_at"], "carried out once"
    assert not (plans.folder() / row.summary[plans.KEPT]["file"]).exists(), "its payloads are not kept after"
    again = sync_once(env)
    assert again.outcome == "ok" and again.counts["created"] == 0
    assert executed_writes(sandbox.stripe_url) == 250


def test_the_plans_decisions_are_carried_out_exactly(make_sandbox, env_for):
    """The hard profile's plan links, creates, skips, fails and asks for review; each record gets exactly its
    planned outcome, with the Stripe object the plan named, and the approval dialog's counts are the sync's."""
    sandbox, env = live_clinic(make_sandbox, env_for, patients=40, profile="hard", scope_all=False)
    planned = sync_once(env)
    assert planned.outcome == "needs_approval"
    context(env)
    queries.approve_latest_plan(STREAM)
    entries = kept_entries()
    counts = planned.plan["counts"]
    assert len(entries) == sum(counts.values())
    assert counts["linked"] >= 1 and counts["review"] >= 1 and counts["created"] > 10

    approved = sync_once(env)
    for action in ("created", "linked", "updated", "review", "skipped", "failed"):
        assert approved.counts[action] == counts[action], action
    events = run_events(approved.run_id)
    made = customers(sandbox)
    for sid, entry in entries.items():
        if entry.action == "unchanged":
            continue
        assert events[sid].action == entry.action, (sid, entry.action, events[sid].action)
        if entry.action == "linked":
            assert events[sid].stripe_id == entry.stripe_id and made[sid]["id"] == entry.stripe_id, sid
        if entry.action == "created":
            assert made[sid]["id"] == events[sid].stripe_id, sid
        if entry.action in ("review", "skipped", "failed"):
            assert sid not in made, sid
    assert executed_writes(sandbox.stripe_url) == counts["created"] + counts["linked"]
    reviews = {item.source_id: item.reason for item in ReviewItem.select()}
    assert reviews == {sid: e.detail["reason"] for sid, e in entries.items() if e.action == "review"}


def test_records_changed_between_plan_and_approval_are_judged_again(make_sandbox, env_for):
    sandbox, env = live_clinic(make_sandbox, env_for, patients=60)
    planned = sync_once(env)
    assert planned.plan["counts"]["created"] == 60
    ids = sorted(patients(sandbox))
    renamed, archived, now_in_stripe = ids[0], ids[1], ids[2]
    admin(sandbox.cliniko_url, "edit", ids=[renamed], fields={"last_name": "Renamed-After-Plan"})
    admin(sandbox.cliniko_url, "archive", ids=[archived])
    shared_email = "found.in.stripe.later@example.com"
    staff_made = add_customer(sandbox, shared_email)
    admin(sandbox.cliniko_url, "edit", ids=[now_in_stripe], fields={"email": shared_email})
    newcomer = add_patient(sandbox, first_name="Nova", last_name="After-Plan", email="nova.after@example.com")
    writes_before = executed_writes(sandbox.stripe_url)  # the staff member's customer
    context(env)
    queries.approve_latest_plan(STREAM)

    approved = sync_once(env)
    assert approved.outcome == "attention", approved.message
    made = customers(sandbox)
    # Same action as approved, on what the record says now.
    assert made[renamed]["name"].endswith("Renamed-After-Plan")
    # Now archived and never synced: nothing is created (writing nothing needs no approval).
    assert archived not in made
    assert run_events(approved.run_id)[archived].action == "skipped"
    # Would now link to a customer staff made after the plan, and the new patient was never in it: neither was
    # approved, so both wait for a person and nothing is written for them.
    assert now_in_stripe not in made and newcomer not in made
    reviews = {item.source_id: item for item in ReviewItem.select()}
    assert set(reviews) == {now_in_stripe, newcomer}
    assert reviews[now_in_stripe].reason == "plan_changed" and reviews[now_in_stripe].candidates == [staff_made]
    assert "changed after the plan you approved" in reviews[now_in_stripe].detail
    assert reviews[newcomer].reason == "plan_changed" and "after the plan" in reviews[newcomer].detail
    assert approved.counts["created"] == 58 and approved.counts["review"] == 2
    assert executed_writes(sandbox.stripe_url) - writes_before == 58

    # A person's decision in review is carried out by the next sync, like any other.
    queries.resolve_review(reviews[newcomer].id, "create")
    after = sync_once(env)
    assert after.counts["created"] == 1 and newcomer in customers(sandbox)


def test_a_plan_too_old_or_for_another_mapping_is_refused_and_made_again(make_sandbox, env_for):
    sandbox, env = live_clinic(make_sandbox, env_for, patients=15)
    sync_once(env)
    context(env)
    old = queries.approve_latest_plan(STREAM)
    SyncPlan.update(created_at=old.created_at - timedelta(hours=25)).where(SyncPlan.id == old.id).execute()

    refused = sync_once(env)
    assert refused.outcome == "needs_approval"
    assert "more than 24 hours ago" in refused.message and "new plan" in refused.message
    assert executed_writes(sandbox.stripe_url) == 0
    context(env)
    newer = queries.latest_plan(STREAM)
    assert newer.id != old.id and newer.approved_at is None
    assert SyncPlan.get_by_id(old.id).approved_at is None, "the old approval no longer counts"

    queries.approve_latest_plan(STREAM)
    without_phone = replace(CLINIKO_PATIENTS, rules=[rule for rule in CLINIKO_PATIENTS.rules if rule.target != "phone"])
    assert len(without_phone.rules) < len(CLINIKO_PATIENTS.rules)
    mapping_store.save(without_phone, FieldCatalogue.for_source("cliniko", "patient"), who="test")
    changed = sync_once(env)
    assert changed.outcome == "needs_approval" and "field mapping was changed" in changed.message
    assert executed_writes(sandbox.stripe_url) == 0

    context(env)
    queries.approve_latest_plan(STREAM)
    done = sync_once(env)
    assert done.outcome == "ok" and done.counts["created"] == 15
    assert executed_writes(sandbox.stripe_url) == 15
    files = [p.name for p in plans.folder().iterdir() if p.name.startswith("plan-")]
    assert files == [], "refused and replaced plans leave no file behind"


def test_a_carry_out_stopped_part_way_is_finished_by_the_next_sync_without_a_duplicate(make_sandbox, env_for):
    sandbox, env = live_clinic(make_sandbox, env_for, patients=120)
    sync_once(env)
    ctx = context(env)
    queries.approve_latest_plan(STREAM)
    token = CancelToken()

    def stop_midway(stream: str, done: int, total: int | None, step: str) -> None:
        if done >= 50 and not step:
            token.cancel()

    (stopped,) = run_sync(ctx.paths, ctx.settings, ctx.secrets, streams=[STREAM], cancel=token, progress=stop_midway)
    assert stopped.outcome == "cancelled", stopped.message
    assert 0 < executed_writes(sandbox.stripe_url) < 120
    finished = sync_once(env)
    assert finished.outcome == "ok", finished.message
    assert set(customers(sandbox)) == set(patients(sandbox))
    assert executed_writes(sandbox.stripe_url) == 120, "every patient created once"
    context(env)
    assert queries.latest_plan(STREAM).summary[plans.KEPT]["carried_out_at"]


def test_two_installations_carrying_out_their_plans_make_one_customer_per_patient(make_sandbox, env_for):
    """Both computers planned before either wrote: the second carries out its plan after the first, and links
    every customer the first made (it names the patient) instead of creating another."""
    sandbox = make_sandbox(profile="clean", patients=30, stripe_mode="live")
    first, second = env_for(sandbox, "first"), env_for(sandbox, "second")
    for env in (first, second):
        context(env)
        mapping_store.save(CLINIKO_PATIENTS, FieldCatalogue.for_source("cliniko", "patient"), who="test")
        assert sync_once(env).outcome == "needs_approval"
    for env in (first, second):
        context(env)
        queries.approve_latest_plan(STREAM)
        assert sync_once(env).outcome == "ok"
    assert len(customers(sandbox)) == 30
    assert set(customers(sandbox)) == set(patients(sandbox))
    assert len(admin(sandbox.stripe_url, "dump", livemode=True)["data"]) == 30, "no second customer anywhere"
