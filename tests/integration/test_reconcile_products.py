"""Reconciliation covers the products stream, over real HTTP to the sandboxes: a synced catalogue reconciles
clean; a product renamed in Stripe is field drift (naming the field and both values); a product archived in
Cliniko with no sync since is orphaned in Stripe (its Stripe product still active); a default price set by hand in
Stripe is price drift (and our own price, still active, is left alone). The suggested fixes, and the sync for
those that wait for it, leave a clean report: a re-push sets our price back as the default."""

from __future__ import annotations

from typing import Any

import stripe

from clinicsync.reconcile.findings import FindingStatus, FindingType, FixKind, Reason
from clinicsync.store import reconciliation
from clinicsync.store.models import OutboxEntry, SyncRun
from clinicsync.sync.reconcile_fix import FixRequest, apply_fixes
from clinicsync.sync.reconcile_run import run_reconcile
from tests.integration.test_products_stream import by_cross_ref, check_exact, cliniko_products, stripe_catalogue
from tests.support import admin, context, sync_once

STREAM = "cliniko.products"
ARCHIVED_MARKER = "metadata.cliniko_archived"


def reconcile(env: dict[str, str]) -> Any:
    ctx = context(env)
    return run_reconcile(ctx.paths, ctx.settings, ctx.secrets, streams=[STREAM])


def found_by_key(report_id: int) -> dict[tuple[str, str | None, str | None, str], Any]:
    return {(f.type, f.source_id, f.stripe_id, f.field): f for f in reconciliation.findings(report_id)}


def synced_catalogue(make_sandbox, env_for) -> tuple[Any, dict[str, str], list[str]]:
    """20 products synced; a clean reconciliation first (no false positives); the live, priced product ids."""
    sandbox = make_sandbox(profile="clean", patients=1, products=20)
    env = env_for(sandbox)
    first = sync_once(env, stream=STREAM)
    assert first.outcome == "ok", (first.counts, first.message)
    clean = reconcile(env)
    assert clean.counts.total == 0, list(reconciliation.findings(clean.report_id))
    assert clean.streams[0].source_records >= 19 and clean.streams[0].stripe_objects >= 19
    products = cliniko_products(sandbox)
    live = sorted(pid for pid, p in products.items() if not p.get("archived_at") and float(p["price_including_tax"]))
    return sandbox, env, live


def sdk_for(sandbox: Any) -> stripe.StripeClient:
    """Staff change the catalogue in the Stripe Dashboard; here through the Stripe SDK."""
    return stripe.StripeClient(sandbox.stripe_key, base_addresses={"api": sandbox.stripe_url}, max_network_retries=0)


def test_a_renamed_product_and_one_archived_in_cliniko_are_found_fixed_and_gone(make_sandbox, env_for):
    sandbox, env, live = synced_catalogue(make_sandbox, env_for)
    renamed, archived = live[:2]
    named = by_cross_ref(stripe_catalogue(sandbox)[0])
    (renamed_product,) = named[renamed]
    (archived_product,) = named[archived]
    original_name = renamed_product["name"]
    sdk_for(sandbox).v1.products.update(renamed_product["id"], params={"name": "Renamed In Stripe"})
    admin(sandbox.cliniko_url, "archive_products", ids=[archived])  # and no sync since

    found = found_by_key(reconcile(env).report_id)
    assert set(found) == {
        (FindingType.FIELD_DRIFT, renamed, renamed_product["id"], "name"),
        (FindingType.ORPHANED_IN_STRIPE, archived, archived_product["id"], ARCHIVED_MARKER),
    }, sorted(found)
    assert all(f.stream == STREAM for f in found.values())
    drift = found[(FindingType.FIELD_DRIFT, renamed, renamed_product["id"], "name")]
    assert (drift.source_value, drift.stripe_value) == (original_name, "Renamed In Stripe")
    orphan = found[(FindingType.ORPHANED_IN_STRIPE, archived, archived_product["id"], ARCHIVED_MARKER)]
    assert orphan.reason == Reason.SOURCE_ARCHIVED and orphan.suggested_fix == FixKind.DEACTIVATE
    assert FixKind.DELETE not in orphan.fixes, "Stripe keeps products that have prices: never deleted"

    ctx = context(env)
    outcomes = apply_fixes(ctx.paths, ctx.settings, ctx.secrets, [FixRequest(f.id or 0) for f in found.values()])
    status = {o.finding_id: o.status for o in outcomes}
    assert status[drift.id] == FindingStatus.SCHEDULED, outcomes  # a re-push: the next sync sends it
    assert status[orphan.id] == FindingStatus.FIXED, outcomes  # made inactive now, and recorded as done
    assert by_cross_ref(stripe_catalogue(sandbox)[0])[archived][0]["active"] is False
    (fix_run,) = SyncRun.select().where(SyncRun.trigger == "reconcile_fix")
    assert (fix_run.stream, fix_run.updated) == (STREAM, 1)
    assert not OutboxEntry.select().where(OutboxEntry.status == "pending").exists(), "nothing left unrecorded"
    sync_once(env, stream=STREAM)  # carries out the fixes that wait for it
    again = reconcile(env)
    assert again.counts.total == 0, list(reconciliation.findings(again.report_id))
    check_exact(sandbox)
    named = by_cross_ref(stripe_catalogue(sandbox)[0])
    assert named[renamed][0]["name"] == original_name and named[archived][0]["active"] is False


def hand_set_default_price(sandbox: Any, product: dict[str, Any]) -> str:
    """A new price of 1.23 made the product's default in Stripe (a price's amount itself cannot be edited)."""
    sdk = sdk_for(sandbox)
    hand_made = sdk.v1.prices.create(
        params={"product": product["id"], "unit_amount": 123, "currency": "aud", "tax_behavior": "inclusive"}
    )
    sdk.v1.products.update(product["id"], params={"default_price": hand_made.id})
    return hand_made.id


def test_a_default_price_set_by_hand_in_stripe_is_price_drift(make_sandbox, env_for):
    sandbox, env, live = synced_catalogue(make_sandbox, env_for)
    repriced = live[0]
    (product,) = by_cross_ref(stripe_catalogue(sandbox)[0])[repriced]
    ours = product["default_price"]
    hand_made = hand_set_default_price(sandbox, product)

    found = found_by_key(reconcile(env).report_id)
    # Ours, no longer the default yet still active, is the price the record wants: not one to deactivate.
    assert set(found) == {(FindingType.FIELD_DRIFT, repriced, hand_made, "price.unit_amount")}, sorted(found)
    amount = found[(FindingType.FIELD_DRIFT, repriced, hand_made, "price.unit_amount")]
    (ours_price,) = [p for p in stripe_catalogue(sandbox)[1] if p["id"] == ours]
    assert (amount.source_value, amount.stripe_value) == (str(ours_price["unit_amount"]), "123")
    assert amount.suggested_fix == FixKind.REPUSH


def test_the_suggested_fixes_for_a_hand_set_default_price_leave_a_clean_report(make_sandbox, env_for):
    sandbox, env, live = synced_catalogue(make_sandbox, env_for)
    (product,) = by_cross_ref(stripe_catalogue(sandbox)[0])[live[0]]
    ours = product["default_price"]
    hand_set_default_price(sandbox, product)
    found = found_by_key(reconcile(env).report_id)
    ctx = context(env)
    apply_fixes(ctx.paths, ctx.settings, ctx.secrets, [FixRequest(f.id or 0) for f in found.values()])
    sync_once(env, stream=STREAM)
    again = reconcile(env)
    assert again.counts.total == 0, [(f.field, f.stripe_value) for f in reconciliation.findings(again.report_id)]
    (fixed,) = by_cross_ref(stripe_catalogue(sandbox)[0])[live[0]]
    prices = {p["id"]: p for p in stripe_catalogue(sandbox)[1]}
    assert fixed["default_price"] == ours and prices[ours]["active"] is True
