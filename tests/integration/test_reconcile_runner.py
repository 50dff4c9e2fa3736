"""Reconciliations and their fixes as jobs of the Qt-free runner (what the Reconciliation tab submits): one at a
time with syncs, on the worker thread, with progress; a reconciliation only reads, so Pause does not hold it."""

from __future__ import annotations

import json
import threading

import pytest

from clinicsync.reconcile.findings import FindingStatus, FindingType, FixKind, ReportOutcome
from clinicsync.store import reconciliation
from clinicsync.stripe_gateway import StripeGateway
from clinicsync.sync.reconcile_fix import FixRequest, apply_fixes
from clinicsync.sync.reconcile_run import Scratch, run_reconcile
from clinicsync.sync.service import failure_of
from tests.integration.test_reconcile import stripe_call
from tests.integration.test_runner import start
from tests.support import admin, context, sync_once


def wait_for(listener, count: int) -> None:
    for _ in range(count):
        assert listener.done.wait(60)
        listener.done.clear()


def test_reconcile_and_fix_jobs_run_on_the_worker_and_report(make_sandbox, env_for):
    sandbox = make_sandbox(profile="clean", patients=40)
    ctx, runner, listener, credentials = start(
        env_for(
            sandbox,
            CLINICSYNC_STREAMS_CLINIKO_PRODUCTS_ENABLED="false",
            CLINICSYNC_STREAMS_CLINIKO_INVOICES_ENABLED="false",
        )
    )
    try:
        assert runner.submit(trigger="manual", credentials=credentials) is not None
        wait_for(listener, 1)
        customer = next(c for c in admin(sandbox.stripe_url, "dump")["data"] if not c["deleted"])
        stripe_call(sandbox, "POST", f"customers/{customer['id']}", {"phone": "0400 123 456"})

        ctx.settings.set("sync.paused", True)  # reading both sides sends nothing: it still runs
        job = runner.submit(trigger="manual", credentials=credentials, kind="reconcile")
        assert job is not None and job.kind == "reconcile"
        assert runner.submit(trigger="manual", credentials=credentials, kind="reconcile_fix") is None  # paused
        wait_for(listener, 1)
        outcome = listener.finished[-1]
        assert outcome.failure_kind is None and outcome.reconcile is not None
        assert outcome.reconcile.counts.by_type()[FindingType.FIELD_DRIFT] == 1
        assert any(step.startswith("Reading Stripe") for _, _, _, step in listener.progress)
        assert listener.threads == {"sync-runner"}

        ctx.settings.set("sync.paused", False)
        (finding,) = reconciliation.findings(outcome.reconcile.report_id)
        fix = FixRequest(finding.id or 0, FixKind.MARK_INTENDED, note="the patient asked for it")
        assert runner.submit(trigger="manual", credentials=credentials, kind="reconcile_fix", fixes=[fix])
        wait_for(listener, 1)
        (done,) = listener.finished[-1].fixes
        assert done.status == FindingStatus.ACCEPTED
    finally:
        assert runner.shutdown(10)


def test_the_scratch_store_keeps_groups_and_candidates_out_of_memory():
    scratch = Scratch()
    try:
        objects = [
            {"id": "cus_1", "created": 1, "metadata": {"ref": "a"}},
            {"id": "cus_2", "created": 2, "metadata": {"ref": "a"}},
            {"id": "cus_3", "created": 3, "metadata": {}},
            {"id": "cus_4", "created": 4, "metadata": {}},
            {"id": "cus_5", "created": 5, "metadata": {}},
            {"id": "cus_6", "created": 6, "metadata": {"other_ref": "x"}},  # another stream's: not in groups
        ]
        match = {"cus_3": "m", "cus_4": "m", "cus_5": "m", "cus_6": "m"}
        scratch.load(
            objects,
            lambda o: (
                o["id"],
                o["metadata"].get("ref"),
                match.get(o["id"]),
                o["created"],
                int("other_ref" in o["metadata"]),
                json.dumps({"id": o["id"]}),
            ),
        )
        scratch.mark_linked(["cus_5"])
        assert scratch.first_time("b") and not scratch.first_time("b")
        assert [ref for ref, _ in scratch.unseen_references()] == ["a"]
        assert [[o["id"] for o in group] for group in scratch.match_groups()] == [["cus_3", "cus_4"]]
        assert scratch.candidates("m") == ("cus_3", "cus_4", "cus_6")
        assert sorted(o["id"] for _, o in scratch.objects_for(["a"], ["cus_4"])) == ["cus_1", "cus_2", "cus_4"]
    finally:
        scratch.close()


def test_a_duplicate_with_payments_is_never_deleted(make_sandbox, env_for, monkeypatch):
    sandbox = make_sandbox(profile="clean", patients=5)
    env = env_for(
        sandbox,
        CLINICSYNC_STREAMS_CLINIKO_PRODUCTS_ENABLED="false",
        CLINICSYNC_STREAMS_CLINIKO_INVOICES_ENABLED="false",
    )
    sync_once(env)
    for name in ("Walk In", "Walk-in"):
        stripe_call(sandbox, "POST", "customers", {"name": name, "email": "walk.in@example.org"})
    ctx = context(env)
    report = run_reconcile(ctx.paths, ctx.settings, ctx.secrets, streams=["cliniko.patients"])
    (duplicate,) = reconciliation.findings(report.report_id)
    assert duplicate.type == FindingType.DUPLICATE and FixKind.DELETE in duplicate.fixes

    def paid(self, stripe_object, filters):
        return stripe_object == "payment_intent"

    monkeypatch.setattr(StripeGateway, "any_of", paid)
    request = FixRequest(duplicate.id or 0, FixKind.DELETE)
    (kept,) = apply_fixes(ctx.paths, ctx.settings, ctx.secrets, [request], confirmed=True)
    assert kept.status is None and "payment intents" in kept.message
    assert any(c["id"] == duplicate.stripe_id and not c["deleted"] for c in admin(sandbox.stripe_url, "dump")["data"])
    monkeypatch.undo()
    (deleted,) = apply_fixes(ctx.paths, ctx.settings, ctx.secrets, [request], confirmed=True)
    assert deleted.status == FindingStatus.FIXED
    assert any(c["id"] == duplicate.stripe_id and c["deleted"] for c in admin(sandbox.stripe_url, "dump")["data"])


def test_a_side_that_fails_stops_the_other_and_the_report_says_failed(make_sandbox, env_for):
    """Stripe and the source are read at the same time: when one fails, the other stops reading, the failure is
    the one raised (as a sync's would be), and the report says it failed."""
    sandbox = make_sandbox(profile="clean", patients=250)
    env = env_for(
        sandbox,
        CLINICSYNC_STREAMS_CLINIKO_PRODUCTS_ENABLED="false",
        CLINICSYNC_STREAMS_CLINIKO_INVOICES_ENABLED="false",
    )
    ctx = context(env)
    for url, spec in ((sandbox.stripe_url, "before:500=1,skip=1"), (sandbox.cliniko_url, "before:500=1,skip=2")):
        admin(url, "faults", spec=spec)  # the account reads pass; the listings fail from then on
        with pytest.raises(Exception) as raised:
            run_reconcile(ctx.paths, ctx.settings, ctx.secrets, trigger="test")
        assert failure_of(raised.value) is not None, repr(raised.value)
        latest = reconciliation.report()
        assert latest is not None and latest.outcome == ReportOutcome.FAILED, latest
        assert not [t for t in threading.enumerate() if t.name.startswith("reconcile-stripe")], (
            "Stripe's reader stopped"
        )
        admin(url, "faults", spec="")


def test_a_failing_source_cuts_short_the_pause_stripes_reader_is_in(make_sandbox, env_for, monkeypatch):
    """Stripe asks its reader to come back in a minute (a 429 with Retry-After: 60), then the source fails (Cliniko
    revokes the key at its listing): the reconciliation raises the source's failure at once, Stripe's reader (which it
    waits for) having had its pause cut short, not waited out. Shown by the pause ending early (the sleep raised), not
    by time; ordered by the sandboxes' handling (bounded)."""
    from tests.support import CutPauses, paused_once, revoked_once_paused

    sandbox = make_sandbox(profile="clean", patients=30)
    env = env_for(
        sandbox,
        CLINICSYNC_STREAMS_CLINIKO_PRODUCTS_ENABLED="false",
        CLINICSYNC_STREAMS_CLINIKO_INVOICES_ENABLED="false",
    )
    ctx = context(env)
    cliniko, stripe = sandbox.cliniko.emulator, sandbox.stripe.emulator
    paused = threading.Event()
    monkeypatch.setattr(cliniko, "handle", revoked_once_paused(cliniko, "/patients", paused))
    monkeypatch.setattr(stripe, "handle", paused_once(stripe, "/v1/customers", paused))
    token = CutPauses()
    with pytest.raises(Exception) as raised:
        run_reconcile(ctx.paths, ctx.settings, ctx.secrets, trigger="test", cancel=token)
    assert paused.is_set()
    assert (failure_of(raised.value) or ("",))[0] == "auth", repr(raised.value)
    assert not [t for t in threading.enumerate() if t.name.startswith("reconcile-stripe")], "Stripe's reader stopped"
    pauses = [seconds for name, seconds in token.cut if name.startswith("reconcile-stripe")]
    assert pauses and pauses[0] > 30, f"the reader's pause of a minute was cut short: {token.cut}"
    assert not token.cancelled, "the source failed: nobody cancelled it"
