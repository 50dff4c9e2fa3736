"""Live and archived records are read in one pass or two, decided from what Cliniko returns, and nothing is lost
either way.

Cliniko does not say whether a listing with `q[]=archived_at:*` holds live records beside the archived ones. Every
test here runs in both worlds the sandbox can play (`archived_listing`): where it does, the `archived_at:*` pass is
read alone; where it does not, the live pass is read after it. Pages are counted per pass (a wrapper round
`ClinikoClient.iter_pages`) and checked against the sandbox's own count of list requests, so the tests show one pass
against two over the real HTTP.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from clinicsync.sources.cliniko import ClinikoClient
from clinicsync.sync.reconcile_run import run_reconcile
from tests.integration.test_products_stream import check_exact
from tests.support import admin, context, set_archived_listing, stats, sync_once

PATIENTS = 230  # three pages of live patients
ARCHIVED_FIRST = 12  # archived before the first sync: never created


class PassPages:
    """Pages read per (listing, pass): "archived" is the `archived_at:*` pass, "live" the default listing."""

    def __init__(self) -> None:
        self.pages: Counter[tuple[str, str]] = Counter()

    def of(self, path: str) -> dict[str, int]:
        return {kind: self.pages[(path, kind)] for kind in ("archived", "live")}

    def clear(self) -> None:
        self.pages.clear()


@pytest.fixture
def pass_pages(monkeypatch: pytest.MonkeyPatch) -> PassPages:
    counted = PassPages()
    original = ClinikoClient.iter_pages

    def counting(self: ClinikoClient, path: str, params: Any = None, *, records_key: str | None = None) -> Iterator:
        pairs = list(params or [])
        if any(name == "sort" for name, _ in pairs):  # the incremental listings only (keyset paging sorts)
            kind = "archived" if ("q[]", "archived_at:*") in pairs else "live"
            if not any(value.startswith("deleted_at") for _, value in pairs):
                for page in original(self, path, params, records_key=records_key):
                    counted.pages[(path, kind)] += 1
                    yield page
                return
        yield from original(self, path, params, records_key=records_key)

    monkeypatch.setattr(ClinikoClient, "iter_pages", counting)
    return counted


def later(sandbox: Any) -> None:
    """Move the sandbox's clock on a minute, so a run's cursor (minus its overlap) lies after the edits before the
    run before it, and each run lists only what changed since that one."""
    admin(sandbox.cliniko_url, "clock", advance_s=60)


def list_requests(sandbox: Any, endpoint: str) -> int:
    return int(stats(sandbox.cliniko_url)["by_endpoint"].get(endpoint, 0))


def expect_passes(counted: dict[str, int], listing: str, *, evidence: bool) -> None:
    """The live pass is skipped exactly when the archived_at:* pass listed a live record (only where it can)."""
    assert counted["archived"] >= 1, counted
    if listing == "lists_live" and evidence:
        assert counted["live"] == 0, f"the archived_at:* pass listed live records: no live pass needed {counted}"
    else:
        assert counted["live"] >= 1, f"no live record seen in the archived_at:* pass: the live pass is read {counted}"


def patients_of(sandbox: Any) -> dict[str, dict[str, Any]]:
    return {p["id"]: p for p in admin(sandbox.cliniko_url, "dump")["patients"]}


def customers_by_patient(sandbox: Any) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}
    for customer in admin(sandbox.stripe_url, "dump")["data"]:
        pid = (customer.get("metadata") or {}).get("cliniko_patient_id")
        if pid and not customer["deleted"]:
            assert pid not in found, f"two customers for patient {pid}"
            found[pid] = customer
    return found


def check_customers(sandbox: Any, never_created: set[str]) -> None:
    """Every patient but those archived before they were ever synced has one customer, marked archived exactly
    when the patient is."""
    custs = customers_by_patient(sandbox)
    for pid, patient in patients_of(sandbox).items():
        if pid in never_created:
            assert pid not in custs, pid
            continue
        assert pid in custs, f"patient {pid} was lost"
        marked = "cliniko_archived" in custs[pid]["metadata"]
        assert marked is (patient["archived_at"] is not None), (pid, patient["archived_at"], custs[pid]["metadata"])


@pytest.fixture
def clinic(make_sandbox: Callable[..., Any], env_for: Callable[..., dict[str, str]], archived_listing: str) -> Any:
    sandbox = make_sandbox(profile="clean", patients=PATIENTS + ARCHIVED_FIRST)
    set_archived_listing(sandbox, archived_listing)
    ids = sorted(patients_of(sandbox), key=int)
    admin(sandbox.cliniko_url, "archive", ids=ids[:ARCHIVED_FIRST])
    env = env_for(sandbox, CLINICSYNC_STREAMS_CLINIKO_PRODUCTS_ENABLED="false")
    return sandbox, env, ids


def test_patients_first_sync_archive_and_unarchive_lose_nothing(clinic: Any, archived_listing: str, pass_pages):
    sandbox, env, ids = clinic
    later(sandbox)
    before = list_requests(sandbox, "GET /v1/patients")
    first = sync_once(env)
    assert first.outcome == "ok", first.message
    assert first.counts["created"] == PATIENTS and first.counts["failed"] == 0, first.counts
    check_customers(sandbox, set(ids[:ARCHIVED_FIRST]))
    counted = pass_pages.of("/patients")
    expect_passes(counted, archived_listing, evidence=True)
    assert list_requests(sandbox, "GET /v1/patients") - before == counted["archived"] + counted["live"]
    if archived_listing == "lists_live":
        assert counted["archived"] == 3, "one pass over every patient: 242 at 100 a page"
    else:
        assert counted == {"archived": 1, "live": 3}, "the 12 archived, then the 230 live"

    # Staff archive 5 patients and unarchive 3 that were never synced: the next run's archived_at:* pass lists all 8.
    pass_pages.clear()
    archived, unarchived = ids[50:55], ids[:3]
    admin(sandbox.cliniko_url, "archive", ids=archived)
    admin(sandbox.cliniko_url, "unarchive", ids=unarchived)
    later(sandbox)
    second = sync_once(env)
    assert second.outcome == "ok", second.message
    assert (second.counts["created"], second.counts["updated"]) == (3, 5), second.counts
    check_customers(sandbox, set(ids[3:ARCHIVED_FIRST]))
    expect_passes(pass_pages.of("/patients"), archived_listing, evidence=True)
    assert sum(pass_pages.of("/patients").values()) == (1 if archived_listing == "lists_live" else 2)

    # Only archives since: the archived_at:* pass lists no live patient in either world, so the live pass is read
    # too, as before (two pages for an incremental run).
    pass_pages.clear()
    admin(sandbox.cliniko_url, "archive", ids=ids[60:62])
    later(sandbox)
    third = sync_once(env)
    assert third.counts["updated"] == 2, third.counts
    assert pass_pages.of("/patients") == {"archived": 1, "live": 1}
    check_customers(sandbox, set(ids[3:ARCHIVED_FIRST]))

    # Nothing changed: the same two pages as before, nothing written.
    pass_pages.clear()
    later(sandbox)
    idle = sync_once(env)
    assert idle.counts["created"] == idle.counts["updated"] == 0, idle.counts
    assert pass_pages.of("/patients") == {"archived": 1, "live": 1}


def test_reconciliation_compares_every_patient_in_either_world(clinic: Any, archived_listing: str, pass_pages):
    sandbox, env, ids = clinic
    assert sync_once(env).counts["created"] == PATIENTS
    admin(sandbox.cliniko_url, "archive", ids=ids[40:44])
    assert sync_once(env).counts["updated"] == 4
    pass_pages.clear()
    ctx = context(env)
    result = run_reconcile(ctx.paths, ctx.settings, ctx.secrets, streams=["cliniko.patients"])
    assert result.counts.total == 0, "a clean clinic reports nothing: no live patient went missing from the read"
    assert result.streams[0].source_records == PATIENTS + ARCHIVED_FIRST
    counted = pass_pages.of("/patients")
    expect_passes(counted, archived_listing, evidence=True)
    assert counted == ({"archived": 3, "live": 0} if archived_listing == "lists_live" else {"archived": 1, "live": 3})


def test_products_every_live_and_archived_product_in_either_world(
    make_sandbox, env_for, archived_listing: str, pass_pages
):
    sandbox = make_sandbox(profile="clean", patients=1, products=150)
    set_archived_listing(sandbox, archived_listing)
    env = env_for(sandbox)
    later(sandbox)
    first = sync_once(env, stream="cliniko.products")
    assert first.outcome == "ok" and first.counts["failed"] == 0, (first.counts, first.message)
    expect_passes(pass_pages.of("/products"), archived_listing, evidence=True)
    check_exact(sandbox)  # every live product once in Stripe (read through a client of its own: not counted)
    products = admin(sandbox.cliniko_url, "dump")["products"]
    live = sorted((p["id"] for p in products if p["archived_at"] is None), key=int)
    assert len(live) > 100 and len(live) < len(products), "the catalogue has live and archived products"

    pass_pages.clear()
    admin(sandbox.cliniko_url, "archive_products", ids=live[:2])
    admin(sandbox.cliniko_url, "edit_products", ids=live[5:7])
    later(sandbox)
    again = sync_once(env, stream="cliniko.products")
    assert again.counts["updated"] == 4 and again.counts["failed"] == 0, again.counts
    assert sum(pass_pages.of("/products").values()) == (1 if archived_listing == "lists_live" else 2)
    check_exact(sandbox)


def test_invoices_every_live_and_archived_invoice_in_either_world(make_sandbox, env_for, archived_listing, pass_pages):
    sandbox = make_sandbox(profile="clean", patients=60, invoices=200)
    set_archived_listing(sandbox, archived_listing)
    env = env_for(sandbox)
    assert sync_once(env).counts["linked"] == 60
    scenario = sandbox.seeded["invoice_scenario"]
    cases = Counter(scenario["cases"].values())
    before = list_requests(sandbox, "GET /v1/invoices")
    first = sync_once(env, stream="cliniko.invoices")
    assert first.outcome in ("ok", "attention") and first.counts["failed"] == 0, (first.counts, first.message)
    # Every certain invoice linked and every plausible one in review: none of the live ones was missed.
    assert first.counts["linked"] == cases["certain"] + cases["linked_metadata"], (first.counts, cases)
    plausible = cases["ambiguous"] + cases["split"] + cases["multi_invoice"] + cases["no_customer"]
    assert first.counts["review"] == plausible, (first.counts, cases)
    counted = pass_pages.of("/invoices")
    catch_up = 1  # the live invoices changed during the read by issue date, read once more: a page (none changed)
    expect_passes({**counted, "live": counted["live"] - catch_up}, archived_listing, evidence=True)
    deleted_pass = 1
    assert list_requests(sandbox, "GET /v1/invoices") - before == counted["archived"] + counted["live"] + deleted_pass
