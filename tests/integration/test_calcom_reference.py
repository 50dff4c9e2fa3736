"""calcom.reference → schedule, team and owner notes on the event types' Stripe products, against the Cal.com and
Stripe sandboxes over real HTTP: only its own metadata keys are written, to the product calcom.event_types linked;
the event types' keys and anyone else's stay; free event types get nothing; a re-run writes nothing; each
cross-reference keeps when it was made and last written."""

from __future__ import annotations

from typing import Any

import pytest

from clinicsync.store.models import RecordLink
from clinicsync.streams.calcom_reference import OWN_KEYS
from clinicsync.sync.service import ConfigProblem
from tests.integration.test_calcom_event_types import calcom_event_types, check_exact, priced, stripe_state
from tests.integration.test_reconcile import stripe_call
from tests.support import admin, context, executed_writes, sync_once

EVENT_TYPES, REFERENCE = "calcom.event_types", "calcom.reference"


def test_schedules_teams_and_owners_are_noted_on_the_event_types_products_and_nothing_else_changes(
    make_sandbox, env_for
) -> None:
    sandbox = make_sandbox(patients=3, calcom=True, calcom_bookings=3)
    env = env_for(sandbox)
    with pytest.raises(ConfigProblem, match=r"needs calcom\.event_types"):  # nothing to write to before them
        sync_once(env, stream=REFERENCE)

    sync_once(env, stream=EVENT_TYPES)
    named, _ = stripe_state(sandbox)
    foreign = named["4001"][0]["id"]
    stripe_call(sandbox, "POST", f"products/{foreign}", {"metadata": {"bookkeeper_code": "CONS-1"}})
    noted = sync_once(env, stream=REFERENCE)
    assert noted.outcome == "ok", (noted.counts, noted.message)

    dump = admin(sandbox.calcom_url, "dump")
    users = {u["id"]: u for u in dump["users"]}
    schedules = {s["id"]: s for s in dump["schedules"]}
    default = next(s for s in schedules.values() if s["isDefault"])
    named, _ = stripe_state(sandbox)
    written = 0
    for eid, event_type in calcom_event_types(sandbox).items():
        products = named.get(eid, [])
        if not products:
            assert not priced(event_type) or event_type["hidden"] or event_type["deleted"]
            continue
        (product,) = products
        written += 1
        metadata = product["metadata"]
        if event_type.get("team"):
            assert metadata["calcom_team_id"] and metadata["calcom_team_slug"], eid
            assert "calcom_owner_name" not in metadata, "a team's event type has no owner of its own"
        else:
            owner = users[event_type["owner"]]
            assert metadata["calcom_owner_email"] == owner["email"], "the owner is the one the email names"
            assert metadata["calcom_owner_name"] == owner["name"]
            assert (metadata["calcom_schedule"], metadata["calcom_schedule_time_zone"]) == (
                default["name"],
                default["timeZone"],
            )
    assert noted.counts["created"] + noted.counts["updated"] == written >= 6, noted.counts
    assert named["4001"][0]["metadata"]["bookkeeper_code"] == "CONS-1", "another's key stays"
    check_exact(sandbox)  # the event types' own keys, names, prices and status are untouched

    before = executed_writes(sandbox.stripe_url)
    again = sync_once(env, stream=REFERENCE)
    assert again.counts["created"] == again.counts["updated"] == 0, again.counts
    assert executed_writes(sandbox.stripe_url) == before, "a re-run writes nothing"
    assert sync_once(env, stream=EVENT_TYPES).counts["updated"] == 0, "the event types see nothing of theirs changed"

    # The clinic renames its hours: the products that use them say so; nothing else is written.
    admin(sandbox.calcom_url, "schedule", id=default["id"], name="Clinic hours (winter)")
    renamed = sync_once(env, stream=REFERENCE)
    using = [
        eid for eid, products in named.items() if products[0]["metadata"].get("calcom_schedule") == default["name"]
    ]
    assert renamed.counts["updated"] == len(using) >= 5 and renamed.counts["created"] == 0, renamed.counts
    after, _ = stripe_state(sandbox)
    assert {after[eid][0]["metadata"]["calcom_schedule"] for eid in using} == {"Clinic hours (winter)"}
    assert after["4001"][0]["metadata"]["bookkeeper_code"] == "CONS-1"

    context(env)
    links = list(RecordLink.select().where(RecordLink.stream == REFERENCE, RecordLink.stripe_id.is_null(False)))
    assert len(links) == written and all(link.created_at <= link.updated_at for link in links)
    by_product = {link.stripe_id for link in RecordLink.select().where(RecordLink.stream == EVENT_TYPES)}
    assert {link.stripe_id for link in links} <= by_product, "only the event types' own products"
    assert set(OWN_KEYS) >= {key for key in _keys_written(named) if key.startswith("calcom_") and "owner" in key} - {
        "calcom_owner_email"
    }


def _keys_written(named: dict[str, list[dict[str, Any]]]) -> set[str]:
    return {key for products in named.values() for product in products for key in product["metadata"]}


def test_the_notes_follow_the_event_type_to_its_new_product_though_the_event_type_did_not_change(
    make_sandbox, env_for
) -> None:
    sandbox = make_sandbox(patients=3, calcom=True, calcom_bookings=3)
    env = env_for(sandbox)
    sync_once(env, stream=EVENT_TYPES)
    sync_once(env, stream=REFERENCE)
    named, _ = stripe_state(sandbox)
    old = named["4001"][0]
    assert old["metadata"]["calcom_schedule"], "noted on the event type's product"

    # The event type's product is another one now (as when a person, in Review, links the event type to another
    # product): the event types stream's link says so; nothing about the event type changed in Cal.com.
    new = stripe_call(sandbox, "POST", "products", {"name": "Initial consultation (clinic's own)"})
    context(env)
    RecordLink.update(stripe_id=new["id"]).where(
        (RecordLink.stream == EVENT_TYPES) & (RecordLink.source_id == "4001")
    ).execute()

    moved = sync_once(env, stream=REFERENCE)
    assert moved.counts["updated"] == 1 and moved.counts["created"] == 0, moved.counts
    products = {p["id"]: p for p in admin(sandbox.stripe_url, "dump")["products"]}
    assert {key: products[new["id"]]["metadata"].get(key) for key in OWN_KEYS if key in old["metadata"]} == {
        key: old["metadata"][key] for key in OWN_KEYS if key in old["metadata"]
    }, "the notes are on the event type's product now"
    before = executed_writes(sandbox.stripe_url)
    assert sync_once(env, stream=REFERENCE).counts["updated"] == 0
    assert executed_writes(sandbox.stripe_url) == before, "then a re-run writes nothing"
