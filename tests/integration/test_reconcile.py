"""Reconciliation end to end, over real HTTP to the sandbox: a synced clinic with discrepancies planted on both
sides (Stripe customers edited, deleted, twinned, made by hand sharing an email, naming patients that do not
exist; patients archived or deleted without a sync), and family members sharing an email correctly linked.

Every planted discrepancy is found with the right type, stream, record, Stripe object and field, and nothing else
is reported; the suggested fixes (and a sync for those it schedules) leave a clean report; findings marked as
intended stay accepted until a value changes.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from clinicsync.reconcile.findings import FindingStatus, FindingType, FixKind, Reason
from clinicsync.store import queries, reconciliation
from clinicsync.store.models import SyncRun
from clinicsync.sync.reconcile_fix import FixRequest, apply_fixes
from clinicsync.sync.reconcile_run import run_reconcile
from tests.support import admin, context, sync_once

STREAM = "cliniko.patients"
# The clinic's size: 2,000 as the issue asks; CLINICSYNC_TEST_RECONCILE_PATIENTS makes it smaller on a slow machine.
PATIENTS = int(os.environ.get("CLINICSYNC_TEST_RECONCILE_PATIENTS", "2000"))
PER_KIND = 5
REF = "cliniko_patient_id"


def stripe_call(sandbox: Any, method: str, path: str, data: dict[str, Any] | None = None) -> dict[str, Any]:
    """A Stripe API call as staff would make it from the dashboard (form-encoded, with the sandbox's key)."""
    response = httpx.request(
        method,
        f"{sandbox.stripe_url}/v1/{path}",
        data=_form(data or {}),
        headers={"Authorization": f"Bearer {sandbox.stripe_key}"},
        timeout=30,
    )
    response.raise_for_status()
    return response.json()


def _form(data: dict[str, Any], prefix: str = "") -> dict[str, str]:
    flat: dict[str, str] = {}
    for key, value in data.items():
        name = f"{prefix}[{key}]" if prefix else key
        if isinstance(value, dict):
            flat.update(_form(value, name))
        else:
            flat[name] = str(value)
    return flat


def customers_by_patient(sandbox: Any) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}
    for customer in admin(sandbox.stripe_url, "dump")["data"]:
        pid = customer["metadata"].get(REF)
        if pid and not customer["deleted"]:
            assert pid not in found, pid
            found[pid] = customer
    return found


def found_keys(report_id: int, *, include_accepted: bool = False) -> set[tuple[str, str, str | None, str | None, str]]:
    return {
        (f.type.value, f.stream, f.source_id, f.stripe_id, f.field)
        for f in reconciliation.findings(report_id, reported_only=not include_accepted)
    }


@pytest.fixture
def clinic(make_sandbox, env_for) -> Iterator[tuple[Any, dict[str, str], list[str]]]:
    """A clean clinic with three family members sharing one email, synced once."""
    sandbox = make_sandbox(profile="clean", patients=PATIENTS)
    env = env_for(sandbox, CLINICSYNC_STREAMS_CLINIKO_PRODUCTS_ENABLED="false")
    ids = sandbox.seeded["ids"]
    family = ids[10:13]
    for n, pid in enumerate(family):
        email = ("Family.Shared@example.com", "family.shared@example.com", "FAMILY.SHARED@example.com")[n]
        admin(sandbox.cliniko_url, "edit", ids=[pid], fields={"email": email})
    first = sync_once(env)
    assert first.counts["created"] == PATIENTS, first.message
    yield sandbox, env, ids


def reconcile(env: dict[str, str]) -> Any:
    ctx = context(env)
    return run_reconcile(ctx.paths, ctx.settings, ctx.secrets, streams=[STREAM])


def test_planted_discrepancies_are_found_exactly_fixed_and_accepted(clinic):
    sandbox, env, ids = clinic
    clean = reconcile(env)
    assert clean.counts.total == 0, list(reconciliation.findings(clean.report_id))
    assert clean.streams[0].source_records == PATIENTS and clean.streams[0].stripe_objects == PATIENTS
    customers = customers_by_patient(sandbox)
    expected: set[tuple[str, str, str | None, str | None, str]] = set()
    pick = iter(ids[100:])

    # Field drift: staff edit mapped fields in Stripe.
    edits = [
        ({"name": "Edited In Stripe"}, "name", "Edited In Stripe"),
        ({"email": "someone.else@example.net"}, "email", "someone.else@example.net"),
        ({"phone": "0400 000 000"}, "phone", "0400 000 000"),
        ({"address": {"city": "Elsewhere"}}, "address.city", "Elsewhere"),  # sent with the rest of the address
        ({"name": "Another Edit"}, "name", "Another Edit"),
    ]
    drifted: dict[str, tuple[str, str]] = {}
    for change, target, value in edits:
        pid = next(pick)
        if "address" in change:  # Stripe replaces the whole address: the other parts are sent as they are
            change = {"address": {**{k: v or "" for k, v in customers[pid]["address"].items()}, "city": value}}
        stripe_call(sandbox, "POST", f"customers/{customers[pid]['id']}", change)
        expected.add((FindingType.FIELD_DRIFT, STREAM, pid, customers[pid]["id"], target))
        drifted[pid] = (target, value)

    # Missing in Stripe: customers deleted in Stripe.
    for _ in range(PER_KIND):
        pid = next(pick)
        admin(sandbox.stripe_url, "delete", ids=[customers[pid]["id"]])
        expected.add((FindingType.MISSING_IN_STRIPE, STREAM, pid, customers[pid]["id"], ""))

    # Duplicates: twins naming a patient beside its linked customer.
    for _ in range(PER_KIND):
        pid = next(pick)
        original = customers[pid]
        twin = stripe_call(
            sandbox,
            "POST",
            "customers",
            {"name": original["name"], "email": original["email"] or "", "metadata": {REF: pid}},
        )
        expected.add((FindingType.DUPLICATE, STREAM, pid, twin["id"], ""))

    # Duplicates: customers made by hand, two with one email, none from Cliniko (one row per extra object).
    for n in range(PER_KIND):
        pair = [
            stripe_call(sandbox, "POST", "customers", {"name": f"Walk In {n}", "email": f"walk.in.{n}@example.org"}),
            stripe_call(sandbox, "POST", "customers", {"name": f"Walk-in {n}", "email": f"Walk.In.{n}@example.org"}),
        ]
        extra = max(pair, key=lambda c: (c["created"], c["id"]))  # the oldest is kept (ties: the smaller id)
        expected.add((FindingType.DUPLICATE, STREAM, None, extra["id"], ""))

    # Orphaned: patients archived in Cliniko without a sync since.
    archived = [next(pick) for _ in range(PER_KIND)]
    admin(sandbox.cliniko_url, "archive", ids=archived)
    for pid in archived:
        expected.add((FindingType.ORPHANED_IN_STRIPE, STREAM, pid, customers[pid]["id"], "metadata.cliniko_archived"))

    # Orphaned: patients deleted in Cliniko, and customers naming patients Cliniko never had.
    gone = [next(pick) for _ in range(3)]
    admin(sandbox.cliniko_url, "delete", ids=gone)
    for pid in gone:
        expected.add((FindingType.ORPHANED_IN_STRIPE, STREAM, pid, customers[pid]["id"], ""))
    for n in range(2):
        foreign = stripe_call(sandbox, "POST", "customers", {"name": f"Other Clinic {n}", "metadata": {REF: f"99{n}"}})
        expected.add((FindingType.ORPHANED_IN_STRIPE, STREAM, f"99{n}", foreign["id"], ""))

    # Orphaned: a linked customer deleted, and another made that names the patient (the link points elsewhere).
    for _ in range(2):
        pid = next(pick)
        admin(sandbox.stripe_url, "delete", ids=[customers[pid]["id"]])
        remade = stripe_call(sandbox, "POST", "customers", {"name": "Remade", "metadata": {REF: pid}})
        expected.add((FindingType.ORPHANED_IN_STRIPE, STREAM, pid, remade["id"], ""))

    report = reconcile(env)
    found = found_keys(report.report_id)
    assert found - expected == set(), "false positives"
    assert expected - found == set(), "missed"
    assert report.counts.total == len(expected)
    by_key = {(f.source_id, f.stripe_id, f.field): f for f in reconciliation.findings(report.report_id)}
    for pid, (target, value) in drifted.items():
        finding = by_key[(pid, customers[pid]["id"], target)]
        assert finding.stripe_value == value and finding.source_value not in (None, value), finding
    deleted = [f for f in by_key.values() if f.type == FindingType.MISSING_IN_STRIPE]
    assert {f.reason for f in deleted} == {Reason.DELETED_IN_STRIPE}
    assert all(f.explanation and f.suggested_fix and f.severity for f in by_key.values())

    # The two name edits and one hand-made duplicate are intended; everything else gets its suggested fix.
    names = [f for f in by_key.values() if f.type == FindingType.FIELD_DRIFT and f.field == "name"]
    intended = [*names, next(f for f in by_key.values() if f.reason == Reason.SAME_EMAIL)]
    ctx = context(env)
    marked = apply_fixes(
        ctx.paths,
        ctx.settings,
        ctx.secrets,
        [FixRequest(f.id, FixKind.MARK_INTENDED, note="agreed with the clinic") for f in intended],
    )
    assert all(outcome.status == FindingStatus.ACCEPTED for outcome in marked)
    # The customer of a patient deleted in Cliniko is deleted too (confirmed; it has no payments).
    unwanted = next(f for f in by_key.values() if f.reason == Reason.SOURCE_ABSENT and f.source_id == gone[0])
    (deleted,) = apply_fixes(
        ctx.paths, ctx.settings, ctx.secrets, [FixRequest(unwanted.id, FixKind.DELETE)], confirmed=True
    )
    assert deleted.status == FindingStatus.FIXED, deleted
    assert unwanted.stripe_id not in {c["id"] for c in admin(sandbox.stripe_url, "dump")["data"] if not c["deleted"]}
    rest = [f for f in by_key.values() if f not in intended and f is not unwanted]
    outcomes = apply_fixes(ctx.paths, ctx.settings, ctx.secrets, [FixRequest(f.id) for f in rest])
    assert all(outcome.done for outcome in outcomes), [o for o in outcomes if not o.done]
    # What was written to Stripe is history, in a run of its own.
    fix_runs = list(SyncRun.select().where(SyncRun.trigger == "reconcile_fix"))
    fixed = [o for o in [*outcomes, deleted] if o.status == FindingStatus.FIXED]
    assert len(fix_runs) == 2 and {run.outcome for run in fix_runs} == {"ok"}
    assert sum(len(queries.run_events(run.id)) for run in fix_runs) == len(fixed)
    after_sync = sync_once(env)
    assert after_sync.outcome == "ok", after_sync.message

    again = reconcile(env)
    assert found_keys(again.report_id) == set(), list(reconciliation.findings(again.report_id))
    assert again.counts.accepted == len(intended)
    assert {f.status for f in reconciliation.findings(again.report_id)} == {FindingStatus.ACCEPTED}

    # An intended finding whose value changes is reported again.
    drift = intended[0]
    stripe_call(sandbox, "POST", f"customers/{drift.stripe_id}", {"name": "Changed Again"})
    changed = reconcile(env)
    assert found_keys(changed.report_id) == {
        (FindingType.FIELD_DRIFT, STREAM, drift.source_id, drift.stripe_id, "name")
    }
    assert changed.counts.accepted == len(intended) - 1
