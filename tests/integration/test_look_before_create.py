"""Before creating a patient's customer, ClinicSync asks Stripe for it by email (a listing, which does not lag as
Search does) only when another installation syncs the same accounts: a customer it adopted for the patient and
then gave the patient's new email is not in this installation's index under that email, nor in its top-ups (they
list only objects created since). One installation alone never asks: a first sync stays at one request per new
customer (benchmarks/initial_sync.py). Against the Cliniko and Stripe sandboxes over real HTTP."""

from __future__ import annotations

from typing import Any

from tests.support import admin, sync_once


def _email_lookups(sandbox: Any) -> int:
    """Customer listings by email Stripe received since the request log was (re)started."""
    requests = admin(sandbox.stripe_url, "request_log", enabled=True)["requests"]
    return sum(
        1
        for r in requests
        if r["method"] == "GET" and r["path"] == "/v1/customers" and any(k == "email" for k, _ in r["query"])
    )


def _new_patients(sandbox: Any, count: int, seed: int) -> list[str]:
    ids = admin(sandbox.cliniko_url, "seed", profile="clean", patients=count, seed=seed, replace=False)["ids"]
    admin(sandbox.cliniko_url, "edit", ids=ids)  # seeded records carry old dates: a new patient is changed now
    return ids


def test_one_installation_never_asks_stripe_for_a_customer_by_email(make_sandbox, env_for):
    sandbox = make_sandbox(profile="clean", patients=60)
    admin(sandbox.stripe_url, "seed", customers=[{"email": "shop.buyer@example.com", "name": "A shop's buyer"}])
    env = env_for(sandbox)
    _email_lookups(sandbox)
    first = sync_once(env)
    assert first.outcome == "ok" and first.counts["created"] >= 50, first.counts
    _new_patients(sandbox, 5, seed=17)
    assert sync_once(env).counts["created"] == 5
    assert _email_lookups(sandbox) == 0, "no request beyond the creates"


def test_an_installation_that_sees_another_ones_customers_asks_by_email_before_each_create(make_sandbox, env_for):
    sandbox = make_sandbox(profile="clean", patients=30)
    env_a, env_b = env_for(sandbox, "a"), env_for(sandbox, "b")
    assert sync_once(env_a).outcome == "ok"
    assert sync_once(env_b).counts["linked"] >= 25, "b links a's customers"
    _new_patients(sandbox, 1, seed=23)
    assert sync_once(env_a).counts["created"] == 1  # a customer b has not met: another installation is at work
    _new_patients(sandbox, 2, seed=29)
    _email_lookups(sandbox)
    result = sync_once(env_b)
    assert (result.counts["linked"], result.counts["created"]) == (1, 2), result.counts
    assert _email_lookups(sandbox) == 2, "one listing by email before each of b's two creates, none for its link"
