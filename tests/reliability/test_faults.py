"""Faults on both sides: the sync may need more than one run, but it ends exactly right and never duplicates, for
every stream that exists (patients, and products with their prices).

In-process sandboxes (tests/conftest.py) with faults set through each server's admin API, so Stripe and Cliniko
get different fault plans. "writes" are executed mutations in the Stripe sandbox's stats.
Reproduce a run with CLINICSYNC_TEST_SEED=<the printed seed>.
"""

from __future__ import annotations

import os
import random
import time
from pathlib import Path

import pytest

from clinicsync.app import bootstrap
from clinicsync.stripe_gateway import StripeFailure
from clinicsync.sync.engine import RunResult
from clinicsync.sync.service import run_sync
from tests.reliability.helpers import (
    all_patients,
    cliniko_products,
    live_customers,
    mirror_report,
    outbox_status,
    pending_source_ids,
    product_report,
)
from tests.support import admin, stats, sync_once

STRIPE_FAULTS = "before:5xx=0.10,before:429=0.05,after:reset=0.02,stored500=0.01,max:stored500=4"
CLINIKO_FAULTS = "before:5xx=0.04,before:429=0.04,before:reset=0.04"
EVERY_STREAM = ["cliniko.patients", "cliniko.products"]


def _seed() -> int:
    seed = int(os.environ.get("CLINICSYNC_TEST_SEED") or random.SystemRandom().randrange(1, 1_000_000))
    print(f"seed={seed}")
    return seed


def _set_faults(url: str, spec: str) -> None:
    admin(url, "faults", spec=spec)


def _describe_run(number: int, results: list[RunResult]) -> str:
    return f"run {number}: " + "; ".join(
        f"{r.stream} {r.outcome} stop={r.stop_kind} {r.counts} {r.message[:200]}" for r in results
    )


def _sync_every_stream(env: dict[str, str]) -> list[RunResult]:
    """One `sync --once` of every stream, in dependency order, as the CLI runs it."""
    ctx = bootstrap(env)
    return run_sync(ctx.paths, ctx.settings, ctx.secrets, streams=EVERY_STREAM, trigger="test")


def test_faults_on_stripe_and_cliniko_converge_to_an_exact_mirror_without_duplicates(make_sandbox, env_for):
    seed = _seed()
    rng = random.Random(seed)
    sandbox = make_sandbox(profile="clean", patients=250, products=40, seed=seed % 10_000 + 1)
    # Three attempts per request (tests elsewhere use 8): with these rates a write now and then exhausts its
    # retries, so the run stops with "Stripe unreachable" and the next run must pick up where it stopped.
    env = env_for(sandbox, CLINICSYNC_RETRY_MAX_ATTEMPTS="3")
    home = Path(env["CLINICSYNC_HOME"])
    _set_faults(sandbox.stripe_url, f"{STRIPE_FAULTS},seed={seed}")
    _set_faults(sandbox.cliniko_url, f"{CLINIKO_FAULTS},seed={seed + 1}")

    history: list[str] = []
    edited: set[str] = set()
    archived: list[str] = []
    edited_products: set[str] = set()
    archived_products: list[str] = []
    max_runs = 10
    unretried_reads = 0  # runs ended because a Stripe read still failed after its retries
    for number in range(1, max_runs + 1):
        try:
            results = _sync_every_stream(env)
        except StripeFailure as exc:  # GET /v1/account in resolve_pair failed on every retry
            assert exc.kind == "transient", f"run {number}: {exc.kind}: {exc.message}"
            history.append(f"run {number}: raised StripeFailure({exc.kind}) before the streams ran")
            unretried_reads += 1
            converged = False
        else:
            history.append(_describe_run(number, results))
            for result in results:
                assert result.outcome in ("ok", "failed"), "\n".join(history)
                if result.outcome == "failed":
                    # Otherwise only a service that stayed unreachable may stop a run.
                    assert result.stop_kind in ("unavailable", "source_unavailable"), "\n".join(history)
            # A run Stripe stopped does not go on to the next stream: converged once every stream ran and ended ok.
            ran_ok = [r.stream for r in results if r.outcome == "ok"]
            converged = ran_ok == EVERY_STREAM and not pending_source_ids(home)
        if number == 1 or (number == 2 and not converged):
            # Staff keep working between runs, while the faults go on: these changes must arrive too.
            edited.update(admin(sandbox.cliniko_url, "edit", count=rng.randint(15, 30))["ids"])
            live = sorted(pid for pid, p in all_patients(sandbox.cliniko_url).items() if not p["archived_at"])
            archived += admin(sandbox.cliniko_url, "archive", ids=rng.sample(live, 2))["ids"]
            # New names and prices (a new Stripe price each, the old one deactivated) and an archived product.
            edited_products.update(admin(sandbox.cliniko_url, "edit_products", count=rng.randint(4, 8))["ids"])
            shelf = sorted(pid for pid, p in cliniko_products(sandbox.env()).items() if not p.get("archived_at"))
            archived_products += admin(sandbox.cliniko_url, "archive_products", ids=rng.sample(shelf, 1))["ids"]
            continue
        if converged:
            break
    else:
        pytest.fail(f"no convergence in {max_runs} runs (seed={seed}):\n" + "\n".join(history))
    runs_needed = number

    stripe_stats, cliniko_stats = stats(sandbox.stripe_url), stats(sandbox.cliniko_url)
    report = mirror_report(sandbox.cliniko_url, sandbox.stripe_url)
    context = (
        f"seed={seed}\n" + "\n".join(history) + f"\nStripe faults {stripe_stats['faults']['fired']}, "
        f"Cliniko faults {cliniko_stats['faults']['fired']}, outbox {dict(outbox_status(home))}"
    )
    assert not report.duplicated, f"DUPLICATES {report.duplicated}\n{context}"
    assert report.ok, f"{report.describe()}\n{context}"
    assert report.live_patients == 250 - len(archived)
    catalogue = product_report(sandbox.env(), sandbox.stripe_url)
    assert not (catalogue.duplicated or catalogue.duplicate_prices), f"DUPLICATES {catalogue.describe()}\n{context}"
    assert catalogue.ok, f"{catalogue.describe()}\n{context}"
    assert catalogue.retired_twins == 0, context
    assert outbox_status(home).get("failed", 0) == 0, context
    assert stripe_stats["faulted"].get("after:reset", 0) > 0, context  # executed-then-dropped writes happened
    assert stripe_stats["rejected_total"] == 0, f"Stripe refused requests: {stripe_stats['rejected']}\n{context}"

    # With the faults gone, one more run finds nothing left to do: no change was lost or left queued.
    _set_faults(sandbox.stripe_url, "")
    _set_faults(sandbox.cliniko_url, "")
    for calm in _sync_every_stream(env):
        assert calm.outcome == "ok" and calm.counts["created"] == calm.counts["updated"] == 0, (calm.stream, context)
    assert stats(sandbox.stripe_url)["mutations_total"] == stripe_stats["mutations_total"], context
    print(
        f"seed={seed}: converged after {runs_needed} run(s); "
        + "; ".join(history)
        + f"\nStripe faults {stripe_stats['faults']['fired']}, replays {stripe_stats['replays_total']}, writes "
        f"{stripe_stats['mutations']}; Cliniko faults {cliniko_stats['faults']['fired']}; "
        f"{len(edited)} edited, {len(archived)} archived; {len(edited_products)} products edited, "
        f"{len(archived_products)} archived, {catalogue.products} in Stripe; "
        f"{unretried_reads} run(s) ended by a read failing every retry"
    )


def _add_patients_without_email(sandbox, count: int, seed: int) -> list[str]:
    """New Cliniko patients with no email (added after the first sync, so theirs are the only creates)."""
    before = set(all_patients(sandbox.cliniko_url))
    added = admin(sandbox.cliniko_url, "seed", profile="clean", patients=count, seed=seed, replace=False)["ids"]
    assert len(set(added) - before) == count, "the added patients must be new"
    admin(sandbox.cliniko_url, "edit", ids=added, fields={"email": None})  # also makes them "changed now"
    return added


SEARCH_DELAY_S = 2.0


def test_stored_500_on_creates_without_email_are_found_by_search_never_created_twice(make_sandbox, env_for):
    sandbox = make_sandbox(profile="clean", patients=20)
    env = env_for(sandbox, CLINICSYNC_STRIPE_SEARCH_SETTLE_SECONDS=str(SEARCH_DELAY_S))
    admin(sandbox.stripe_url, "set_search_delay", seconds=SEARCH_DELAY_S)
    first = sync_once(env)
    assert first.outcome == "ok" and first.counts["created"] == 20

    no_email = _add_patients_without_email(sandbox, 12, seed=77)
    # Every executed write now saves a 500 under its idempotency key; the only writes are these 12 creates.
    _set_faults(sandbox.stripe_url, "stored500=1.0")

    second = sync_once(env)
    created_at = time.monotonic()
    writes = stats(sandbox.stripe_url)
    assert writes["mutations"] == {"POST /v1/customers": 32}, writes["mutations"]
    assert writes["faults"]["fired"].get("stored500") == 12
    # Search cannot see them yet and they have no email to list by: the app must wait, not create again.
    assert sorted(pending_source_ids(Path(env["CLINICSYNC_HOME"]))) == sorted(no_email), second.counts
    assert not mirror_report(sandbox.cliniko_url, sandbox.stripe_url).duplicated

    third = sync_once(env)  # straight away, inside the search delay
    assert stats(sandbox.stripe_url)["mutations_total"] == 32, f"a create was repeated: {third.counts}"

    time.sleep(max(0.0, SEARCH_DELAY_S + 0.3 - (time.monotonic() - created_at)))
    fourth = sync_once(env)
    assert fourth.outcome == "ok", fourth.message
    assert third.counts["created"] + fourth.counts["created"] == 12, (third.counts, fourth.counts)
    assert stats(sandbox.stripe_url)["mutations_total"] == 32, "no create may be sent again"
    assert pending_source_ids(Path(env["CLINICSYNC_HOME"])) == []
    report = mirror_report(sandbox.cliniko_url, sandbox.stripe_url)
    assert report.ok, report.describe()
    customers = {c["metadata"]["cliniko_patient_id"]: c for c in live_customers(sandbox.stripe_url)}
    assert all(customers[pid]["email"] is None for pid in no_email)


def test_an_edit_made_while_a_create_is_unconfirmed_is_not_lost(make_sandbox, env_for):
    sandbox = make_sandbox(profile="clean", patients=5)
    settle = 5.0
    # Overlap 0 (a valid setting) keeps the test short: the loss needs the edit to be older than the overlap
    # when the skipping run starts; with the default overlap (120 s) it needs a write unconfirmed that long.
    env = env_for(
        sandbox, CLINICSYNC_STRIPE_SEARCH_SETTLE_SECONDS=str(settle), CLINICSYNC_SYNC_CURSOR_OVERLAP_SECONDS="0"
    )
    admin(sandbox.stripe_url, "set_search_delay", seconds=settle)
    assert sync_once(env).counts["created"] == 5
    (pid,) = _add_patients_without_email(sandbox, 1, seed=78)
    _set_faults(sandbox.stripe_url, "stored500=1.0")

    sync_once(env)  # creates it, gets a stored 500, cannot confirm it yet
    created_at = time.monotonic()
    assert pending_source_ids(Path(env["CLINICSYNC_HOME"])) == [pid]
    time.sleep(1.1)
    admin(sandbox.cliniko_url, "edit", ids=[pid], fields={"last_name": "Edited-While-Unconfirmed"})
    time.sleep(1.1)  # Cliniko stamps whole seconds: the next run's cursor is now past the edit
    skipping = sync_once(env)
    assert time.monotonic() - created_at < settle, "precondition: the create was still unconfirmed"
    assert skipping.counts["waiting"] == 1 and skipping.counts["skipped"] == 0, skipping.counts

    time.sleep(max(0.0, settle + 0.3 - (time.monotonic() - created_at)))
    sync_once(env)  # confirms the create through Search
    sync_once(env)
    assert stats(sandbox.stripe_url)["mutations"]["POST /v1/customers"] == 6
    customer = next(c for c in live_customers(sandbox.stripe_url) if c["metadata"]["cliniko_patient_id"] == pid)
    assert customer["name"].endswith("Edited-While-Unconfirmed"), f"the edit was lost: {customer['name']!r}"


def _seed_faulting_only(pattern: list[bool], rates: str, budget: int = 10_000) -> int:
    """A fault-plan seed whose first draws give exactly `pattern` (True = this request is faulted).

    The sandbox draws one number per request (plus one per executed write while stored500 is on), so with
    the app's request order known this points a single fault at one chosen request.
    """
    from clinicsync.sandbox.faults import FaultPlan

    for seed in range(1, budget):
        plan = FaultPlan.parse(f"{rates},seed={seed}")
        drawn = []
        for want in pattern:
            if want is None:  # a stored500 roll on an executed write
                plan.roll("stored500")
                continue
            drawn.append(plan.choose() is not None)
        if drawn == [want for want in pattern if want is not None]:
            return seed
    raise AssertionError("no seed gives that fault pattern")


@pytest.mark.parametrize("target", ["account", "index_listing", "lookup_after_stored_500"])
def test_one_transient_stripe_error_on_a_read_is_retried_not_fatal(make_sandbox, env_for, target):
    sandbox = make_sandbox(profile="clean", patients=5)
    env = env_for(sandbox, CLINICSYNC_STRIPE_WORKERS="1")
    expected_created = 5
    if target == "account":  # the first Stripe request of a run
        spec = "before:503=1.0,max=1"
    elif target == "index_listing":  # account, then the one-time listing of existing customers
        spec = f"before:503=0.5,max=1,seed={_seed_faulting_only([False, True], 'before:503=0.5')}"
    else:  # account, create (executed, stored 500), its retry (replays the 500), then the lookup by email
        assert sync_once(env).counts["created"] == 5
        (pid,) = admin(sandbox.cliniko_url, "seed", profile="clean", patients=1, seed=79, replace=False)["ids"]
        admin(sandbox.cliniko_url, "edit", ids=[pid], fields={"last_name": "Newcomer"})
        rates = "stored500=1.0,max:stored500=1,before:503=0.5,max:before:503=1"
        spec = f"{rates},seed={_seed_faulting_only([False, False, None, False, True], rates)}"
        expected_created = 1
    _set_faults(sandbox.stripe_url, spec)
    try:
        result = sync_once(env)
    except StripeFailure as exc:
        pytest.fail(f"one 503 on the {target} ended the sync with an exception: {exc.kind}: {exc.message}")
    fired = stats(sandbox.stripe_url)["faults"]["fired"]
    assert fired.get("before:503") == 1, f"precondition: exactly one 503 was injected, got {fired}"
    assert result.outcome == "ok", f"one 503 on the {target} stopped the run: {result.stop_kind}: {result.message}"
    assert result.counts["created"] == expected_created
