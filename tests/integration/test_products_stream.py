"""cliniko.products → Stripe products and prices, against the sandboxes over real HTTP.

Every live product is one Stripe product with exactly one active ClinicSync price, its default, equal to its
Cliniko price in minor units; a price change is a new default price with the old one deactivated; going back
reactivates the earlier price; archive and unarchive follow; a stock adjustment reaches the metadata only; a
re-run writes nothing; hand-made products are linked by cross-reference or an unambiguous name, never guessed.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from clinicsync import money
from tests.support import admin, context, stats, sync_once

STREAM = "cliniko.products"


def cliniko_products(sandbox: Any) -> dict[str, dict[str, Any]]:
    """Every product as Cliniko's API renders it, live and archived."""
    from clinicsync.sources.cliniko import ClinikoClient

    env = sandbox.env()
    client = ClinikoClient(
        env["CLINICSYNC_CLINIKO_API_KEY"],
        contact_email="tests@example.com",
        base_url=env["CLINICSYNC_CLINIKO_BASE_URL"],
    )
    try:
        return {p["id"]: p for p in client.iter_live_and_archived("/products", None)}
    finally:
        client.close()


def stripe_catalogue(sandbox: Any) -> tuple[dict[str, dict[str, Any]], list[dict[str, Any]]]:
    dump = admin(sandbox.stripe_url, "dump")
    return {p["id"]: p for p in dump["products"]}, dump["prices"]


def by_cross_ref(products: dict[str, dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    found: dict[str, list[dict[str, Any]]] = {}
    for product in products.values():
        ref = (product.get("metadata") or {}).get("cliniko_product_id")
        if ref:
            found.setdefault(ref, []).append(product)
    return found


def active_prices(prices: list[dict[str, Any]], product_id: str) -> list[dict[str, Any]]:
    return [p for p in prices if p["product"] == product_id and p["active"]]


def writes(sandbox: Any) -> int:
    return sum(stats(sandbox.stripe_url)["mutations"].values())


def check_exact(sandbox: Any) -> None:
    """Every live Cliniko product once in Stripe, active, its one active price equal to Cliniko's incl. tax."""
    products = cliniko_products(sandbox)
    stripe_products, prices = stripe_catalogue(sandbox)
    named = by_cross_ref(stripe_products)
    for pid, product in products.items():
        twins = named.get(pid, [])
        live = not product.get("archived_at")
        if not live and not twins:
            continue  # archived before it was ever synced: not created
        assert len(twins) == 1, f"product {pid} ({product['name'][:30]}) has {len(twins)} Stripe products"
        (stripe,) = twins
        assert stripe["active"] is live, (pid, stripe["active"], product.get("archived_at"))
        assert stripe["name"] == product["name"]
        (price,) = active_prices(prices, stripe["id"])
        assert stripe["default_price"] == price["id"]
        assert price["unit_amount"] == money.to_minor_units(product["price_including_tax"], "aud")
        assert (price["currency"], price["tax_behavior"]) == ("aud", "inclusive")
        stock = product.get("stock_level")
        assert (stripe["metadata"].get("cliniko_stock_level") or None) == (stock or None)


def test_two_hundred_products_each_once_with_one_price_and_a_rerun_writes_nothing(make_sandbox, env_for):
    sandbox = make_sandbox(profile="clean", patients=1, products=200)
    env = env_for(sandbox)
    first = sync_once(env, stream=STREAM)
    assert first.outcome == "ok", (first.counts, first.message)
    assert first.counts["created"] >= 190 and first.counts["failed"] == 0, first.counts
    check_exact(sandbox)
    before = writes(sandbox)
    again = sync_once(env, stream=STREAM)
    assert again.counts["created"] == again.counts["updated"] == 0, again.counts
    assert writes(sandbox) == before, "a re-run writes nothing"


def test_price_changes_back_again_archive_unarchive_and_stock(make_sandbox, env_for):
    sandbox = make_sandbox(profile="clean", patients=1, products=30)
    env = env_for(sandbox)
    sync_once(env, stream=STREAM)
    products = cliniko_products(sandbox)
    live = sorted(pid for pid, p in products.items() if not p.get("archived_at") and float(p["price_including_tax"]))
    changed = live[:10]
    originals = {pid: products[pid]["price_including_tax"] for pid in changed}
    for n, pid in enumerate(changed):
        admin(sandbox.cliniko_url, "set_product_price", id=pid, price=f"{100 + n}.50", includes_tax=True)
    before_prices = len(stripe_catalogue(sandbox)[1])
    repriced = sync_once(env, stream=STREAM)
    assert repriced.counts["updated"] == 10, repriced.counts
    prices = stripe_catalogue(sandbox)[1]
    assert len(prices) == before_prices + 10, "ten new prices, nothing else"
    inactive = [p for p in prices if not p["active"]]
    assert len(inactive) == 10, "the ten old prices are deactivated, not deleted"
    check_exact(sandbox)

    back = changed[0]
    admin(sandbox.cliniko_url, "set_product_price", id=back, price=originals[back], includes_tax=True)
    sync_once(env, stream=STREAM)
    after_back = stripe_catalogue(sandbox)[1]
    assert len(after_back) == len(prices), "going back reactivates the earlier price: no new one"
    check_exact(sandbox)

    archived = changed[1]
    admin(sandbox.cliniko_url, "archive_products", ids=[archived])
    sync_once(env, stream=STREAM)
    check_exact(sandbox)
    (product,) = by_cross_ref(stripe_catalogue(sandbox)[0])[archived]
    assert product["active"] is False
    admin(sandbox.cliniko_url, "unarchive_products", ids=[archived])
    sync_once(env, stream=STREAM)
    check_exact(sandbox)

    stocked = changed[2]
    count_before = len(stripe_catalogue(sandbox)[1])
    admin(sandbox.cliniko_url, "adjust_stock", product_id=stocked, quantity=5)
    stock_run = sync_once(env, stream=STREAM)
    assert stock_run.counts["updated"] == 1, stock_run.counts
    assert len(stripe_catalogue(sandbox)[1]) == count_before, "a stock adjustment changes metadata only"
    check_exact(sandbox)


def test_stock_adjustments_arrive_even_when_cliniko_does_not_bump_the_product(make_sandbox, env_for):
    sandbox = make_sandbox(profile="clean", patients=1, products=10)
    env = env_for(sandbox)
    sync_once(env, stream=STREAM)
    admin(sandbox.cliniko_url, "stock_touches_product", enabled=False)
    pid = sorted(p for p, v in cliniko_products(sandbox).items() if not v.get("archived_at"))[0]
    admin(sandbox.cliniko_url, "adjust_stock", product_id=pid, quantity=3)
    sync_once(env, stream=STREAM)
    check_exact(sandbox)


def test_hand_made_products_link_by_reference_or_an_unambiguous_name_and_keep_their_own_prices(make_sandbox, env_for):
    sandbox = make_sandbox(profile="hard", patients=1, products=40)
    env = env_for(sandbox)
    before_products, before_prices = stripe_catalogue(sandbox)
    hand_prices = {p["id"]: (p["active"], p["unit_amount"]) for p in before_prices}
    result = sync_once(env, stream=STREAM)
    cases = {case: pid for pid, case in sandbox.seeded["product_cases"].items()}
    ctx = context(env)
    from clinicsync.store.models import ReviewItem

    reviewed = {item.source_id for item in ReviewItem.select().where(ReviewItem.stream == STREAM)}
    assert {cases["same_name_1"], cases["same_name_2"]} <= reviewed, "two of one name: a person decides"
    assert result.counts["review"] >= 2
    stripe_products, prices = stripe_catalogue(sandbox)
    named = by_cross_ref(stripe_products)
    assert cases["same_name_1"] not in named and cases["same_name_2"] not in named, "nothing guessed or created"
    for pid in (cases["stripe_name_match"], cases["stripe_linked_earlier"]):
        (linked,) = named[pid]
        assert linked["id"] in before_products, "the existing Stripe product was linked, not duplicated"
    for price in prices:
        if price["id"] in hand_prices:
            assert (price["active"], price["unit_amount"]) == hand_prices[price["id"]], "a hand-made price untouched"
    ctx.db.close()


def test_the_cli_runs_products_alone_and_its_dry_run_prints_the_products_plan(make_sandbox, env_for):
    import subprocess
    import sys

    sandbox = make_sandbox(profile="clean", patients=2, products=5)
    env = env_for(sandbox)
    command = [sys.executable, "-m", "clinicsync", "sync", "--once"]
    planned = subprocess.run([*command, "--dry-run"], env=env, capture_output=True, text=True, timeout=120)
    assert planned.returncode == 0, planned.stdout + planned.stderr
    assert "cliniko.products: ok" in planned.stdout and '"stream": "cliniko.products"' in planned.stdout
    assert writes(sandbox) == 0
    alone = subprocess.run([*command, "--stream", STREAM], env=env, capture_output=True, text=True, timeout=120)
    assert alone.returncode == 0, alone.stdout + alone.stderr
    assert "cliniko.patients" not in alone.stdout
    assert Counter(stats(sandbox.stripe_url)["mutations"])["POST /v1/customers"] == 0
    check_exact(sandbox)


def test_a_product_linked_by_its_cross_reference_adopts_its_equal_default_price(make_sandbox, env_for):
    """A second profile (a reinstall, another computer) meets products ClinicSync made: each is linked by its
    cross-reference and keeps the default price it has, as its own, with no new price; a price change it then
    syncs replaces that price, and the first profile adopts the new one rather than making another."""
    from clinicsync.store.models import RoleLink

    sandbox = make_sandbox(profile="clean", patients=1, products=12)
    first, second = env_for(sandbox, "first"), env_for(sandbox, "second")
    assert sync_once(first, stream=STREAM).counts["created"] > 0
    _, prices_before = stripe_catalogue(sandbox)

    linked = sync_once(second, stream=STREAM)
    assert linked.counts["linked"] > 0 and linked.counts["created"] == 0, linked.counts
    assert stripe_catalogue(sandbox)[1] == prices_before, "no price made, none changed"
    check_exact(sandbox)
    ctx = context(second)
    adopted = {row.stripe_id for row in RoleLink.select().where(RoleLink.current == True)}  # noqa: E712
    ctx.db.close()
    assert adopted == {price["id"] for price in prices_before if price["active"]}, "each default price is now its own"

    pid = sorted(p for p, v in cliniko_products(sandbox).items() if not v.get("archived_at"))[0]
    admin(sandbox.cliniko_url, "set_product_price", id=pid, price="77.70", includes_tax=True)
    assert sync_once(second, stream=STREAM).counts["updated"] == 1
    check_exact(sandbox)
    prices_now = stripe_catalogue(sandbox)[1]
    assert len(prices_now) == len(prices_before) + 1, "one new price; the adopted one deactivated, not deleted"
    followed = sync_once(first, stream=STREAM)
    assert followed.counts["updated"] == 1, followed.counts
    assert stripe_catalogue(sandbox)[1] == prices_now, "the first profile adopts the new price: nothing made"
    check_exact(sandbox)


def test_two_installations_making_one_new_price_at_once_leave_one(make_sandbox, env_for):
    """Installation B stores its plan for a price change and stops before sending it (killed); A makes the new
    price meanwhile. B's create is then refused over the price's lookup key, and B takes A's price as its own:
    one active price, no second one of the same amount."""
    import signal
    import subprocess
    import sys

    sandbox = make_sandbox(profile="clean", patients=1, products=6)
    first, second = env_for(sandbox, "first"), env_for(sandbox, "second")
    sync_once(first, stream=STREAM)
    sync_once(second, stream=STREAM)
    pid = sorted(p for p, v in cliniko_products(sandbox).items() if not v.get("archived_at"))[0]
    admin(sandbox.cliniko_url, "set_product_price", id=pid, price="64.20", includes_tax=True)
    command = [sys.executable, "-m", "clinicsync", "sync", "--once", "--stream", STREAM]
    stopped = subprocess.run(
        command, env={**second, "CLINICSYNC_CRASH_AT": "after_outbox_insert:1"}, capture_output=True, timeout=120
    )
    assert stopped.returncode == -signal.SIGKILL, stopped.stderr
    assert sync_once(first, stream=STREAM).counts["updated"] == 1
    prices = len(stripe_catalogue(sandbox)[1])
    finished = sync_once(second, stream=STREAM)
    assert finished.counts["updated"] == 1 and finished.counts["failed"] == 0, (finished.counts, finished.message)
    assert len(stripe_catalogue(sandbox)[1]) == prices, "B made no price of its own"
    check_exact(sandbox)
