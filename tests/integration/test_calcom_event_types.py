"""calcom.event_types → Stripe products and prices, against the Cal.com and Stripe sandboxes over real HTTP.

Every priced, visible event type (the key's user's and their team's) is one Stripe product with one active
ClinicSync price, its default, equal to Cal.com's Stripe app price (metadata.apps.stripe, minor units) in its
currency; a price change is a new default price with the old one deactivated; hidden and deleted event types
make their product inactive; a re-run writes nothing."""

from __future__ import annotations

from typing import Any

from tests.support import admin, executed_writes, sync_once

STREAM = "calcom.event_types"
CROSS_REF = "calcom_event_type_id"


def calcom_event_types(sandbox: Any) -> dict[str, dict[str, Any]]:
    return {str(et["id"]): et for et in admin(sandbox.calcom_url, "dump")["event_types"]}


def stripe_state(sandbox: Any) -> tuple[dict[str, list[dict[str, Any]]], list[dict[str, Any]]]:
    dump = admin(sandbox.stripe_url, "dump")
    named: dict[str, list[dict[str, Any]]] = {}
    for product in dump["products"]:
        ref = (product.get("metadata") or {}).get(CROSS_REF)
        if ref:
            named.setdefault(ref, []).append(product)
    return named, dump["prices"]


def priced(event_type: dict[str, Any]) -> dict[str, Any] | None:
    app = (event_type.get("metadata") or {}).get("apps", {}).get("stripe")
    return app if app and app.get("enabled") and app.get("price") else None


def check_exact(sandbox: Any) -> None:
    named, prices = stripe_state(sandbox)
    users = {u["id"]: u for u in admin(sandbox.calcom_url, "dump")["users"]}
    for eid, event_type in calcom_event_types(sandbox).items():
        app = priced(event_type)
        live = app is not None and not event_type["hidden"] and not event_type["deleted"]
        products = named.get(eid, [])
        if not products:
            assert not live, f"priced event type {eid} ({event_type['title']}) has no Stripe product"
            continue
        (product,) = products
        assert product["active"] is live, (eid, product["active"], event_type["hidden"], event_type["deleted"])
        active = [p for p in prices if p["product"] == product["id"] and p["active"]]
        (price,) = active
        assert product["default_price"] == price["id"]
        if live:
            assert (price["unit_amount"], price["currency"]) == (app["price"], app["currency"]), eid
            assert product["name"] == event_type["title"]
            metadata = product["metadata"]
            assert metadata["calcom_slug"] == event_type["slug"]
            assert metadata["calcom_length_minutes"] == str(event_type["length"])
            if event_type.get("team"):
                assert metadata["calcom_team"] == "Harbourside Allied Health"
                assert not metadata.get("calcom_owner_email")
            else:
                assert metadata["calcom_owner_email"] == users[event_type["owner"]]["email"]
                assert not metadata.get("calcom_team")


def test_priced_event_types_become_products_with_one_price_and_a_rerun_writes_nothing(make_sandbox, env_for):
    sandbox = make_sandbox(patients=5, calcom=True, calcom_bookings=5)
    env = env_for(sandbox)
    first = sync_once(env, stream=STREAM)
    assert first.outcome == "ok", (first.counts, first.message)
    visible_priced = [
        et for et in calcom_event_types(sandbox).values() if priced(et) and not et["hidden"] and not et["deleted"]
    ]
    assert first.counts["created"] == len(visible_priced) >= 6, first.counts
    check_exact(sandbox)
    named, _ = stripe_state(sandbox)
    assert "4003" not in named and "4007" not in named, "free and hidden event types are not created"
    follow_up = named["4002"][0]
    assert follow_up["metadata"][CROSS_REF] == "4002"
    before = executed_writes(sandbox.stripe_url)
    again = sync_once(env, stream=STREAM)
    assert again.counts["created"] == again.counts["updated"] == 0, again.counts
    assert executed_writes(sandbox.stripe_url) == before, "a re-run writes nothing"


def test_a_price_change_hiding_and_deleting(make_sandbox, env_for):
    sandbox = make_sandbox(patients=5, calcom=True, calcom_bookings=5)
    env = env_for(sandbox)
    sync_once(env, stream=STREAM)
    _, prices_before = stripe_state(sandbox)
    admin(sandbox.calcom_url, "price", id=4001, price=13500)
    admin(sandbox.calcom_url, "hide", id=4002)
    admin(sandbox.calcom_url, "delete_event_type", id=4004)
    changed = sync_once(env, stream=STREAM)
    assert changed.counts["updated"] == 3 and changed.counts["created"] == 0, changed.counts
    named, prices = stripe_state(sandbox)
    assert len(prices) == len(prices_before) + 1, "one new price, nothing else"
    consult = named["4001"][0]
    old = [p for p in prices if p["product"] == consult["id"] and p["unit_amount"] == 12000]
    assert len(old) == 1 and old[0]["active"] is False, "the old price is deactivated, not deleted"
    assert named["4002"][0]["active"] is False and named["4004"][0]["active"] is False
    assert named["4004"][0]["name"] == "Group pilates class", "a deleted event type's product keeps its name"
    check_exact(sandbox)
    before = executed_writes(sandbox.stripe_url)
    again = sync_once(env, stream=STREAM)
    assert again.counts["updated"] == again.counts["created"] == 0, again.counts
    assert executed_writes(sandbox.stripe_url) == before

    admin(sandbox.calcom_url, "hide", id=4002, hidden=False)
    shown = sync_once(env, stream=STREAM)
    assert shown.counts["updated"] == 1, shown.counts
    check_exact(sandbox)


def test_a_dry_run_of_the_cal_com_streams_plans_and_writes_nothing(make_sandbox, env_for):
    from clinicsync.sync.service import run_sync
    from tests.support import context

    sandbox = make_sandbox(patients=5, calcom=True, calcom_bookings=20)
    env = {k: v for k, v in env_for(sandbox).items() if k != "CLINICSYNC_CLINIKO_API_KEY"}
    ctx = context(env)
    before = executed_writes(sandbox.stripe_url)
    results = run_sync(ctx.paths, ctx.settings, ctx.secrets, dry_run=True)
    assert [r.stream for r in results] == [
        "calcom.event_types",
        "calcom.bookings",
        "calcom.booking_payments",
        "calcom.reference",
    ]
    assert executed_writes(sandbox.stripe_url) == before, "a dry run writes nothing"
    event_types, bookings, payments, _ = results
    assert payments.plan is not None and payments.plan["counts"]["created"] == 0, "no payment is ever made"
    assert event_types.plan is not None and event_types.plan["counts"]["created"] >= 6, event_types.plan
    assert bookings.plan is not None and bookings.plan["counts"]["created"] >= 5, bookings.plan
    named, _ = stripe_state(sandbox)
    assert not named, "nothing was created"
