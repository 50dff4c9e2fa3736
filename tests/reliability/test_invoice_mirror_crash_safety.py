"""Crash safety across the steps of a mirrored invoice (invoice created, items added, finalized, paid, credited):
SIGKILL at named crash points (counted per write) and at random moments, with Cliniko's statuses changing between
runs; and each step interrupted after Stripe took it, then replayed after Stripe forgot its idempotency keys. The
end state is exact: each mirrored invoice once, its lines once, its status Cliniko's, at most one credit note.
Reproduce with CLINICSYNC_TEST_SEED=<printed seed>."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from datetime import timedelta

from clinicsync.store.models import OutboxEntry, utcnow
from clinicsync.sync.outbox import OutboxWriter
from tests.integration.test_invoice_mirror import ON, STREAM, check_exact
from tests.support import admin, context, stats, sync_once

COMMAND = [sys.executable, "-m", "clinicsync", "sync", "--once", "--stream", STREAM]


def _mirrorable(sandbox, status: int) -> list[str]:
    from tests.integration.test_invoice_mirror import cents, cliniko_invoices, link_id

    invoices = cliniko_invoices(sandbox)
    reversed_ids = {link_id(v["original_invoice"]) for v in invoices.values() if v.get("original_invoice")}
    return sorted(
        iid
        for iid, v in invoices.items()
        if v["status"] == status
        and cents(v["total_amount"]) > 0
        and not v.get("original_invoice")
        and not v.get("archived_at")
        and iid not in reversed_ids
    )


def test_kills_between_the_steps_of_mirrored_invoices_leave_each_once_and_exact(make_sandbox, env_for):
    seed = int(os.environ.get("CLINICSYNC_TEST_SEED") or random.SystemRandom().randrange(1, 10**6))
    print(f"invoice mirror crash safety: seed {seed} (CLINICSYNC_TEST_SEED={seed} reproduces it)")
    rng = random.Random(seed)
    sandbox = make_sandbox(patients=50, products=4, invoices=100, invoice_customers=30, seed=seed % 1000 + 1)
    env = env_for(sandbox, CLINICSYNC_STRIPE_WORKERS="2", **ON)
    for stream in ("cliniko.patients", "cliniko.products"):
        assert sync_once(env, stream=stream).outcome == "ok"
    kills = 0
    # A plan is an invoice, its lines, finalize and pay or void: kills land after each kind of step.
    points = [f"after_stripe_ok:{n}" for n in (1, 2, 3, 4, 5, 7, 12)] + ["after_link_saved:2", "after_outbox_insert:1"]
    for number, point in enumerate(points + ["random"] * 2):
        if number % 3 == 2:  # staff take payments, write off and reverse invoices between runs
            admin(sandbox.cliniko_url, "clock", advance_s=5)
            open_ids, paid_ids = _mirrorable(sandbox, 10), _mirrorable(sandbox, 20)
            admin(sandbox.cliniko_url, "pay_invoices", ids=rng.sample(open_ids, 2))
            admin(sandbox.cliniko_url, "reverse_invoices", ids=[*rng.sample(paid_ids, 2), open_ids[0]])
        if point == "random":
            process = subprocess.Popen(COMMAND, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(rng.uniform(0.05, 0.5))  # a random moment of the sync, not an order to prove
            if process.poll() is None:
                process.send_signal(signal.SIGKILL)
                kills += 1
            process.wait(timeout=60)
        else:
            ran = subprocess.run(COMMAND, env={**env, "CLINICSYNC_CRASH_AT": point}, capture_output=True, timeout=120)
            kills += ran.returncode == -signal.SIGKILL
    assert kills >= 7, f"only {kills} kills"
    for _ in range(2):
        final = subprocess.run(COMMAND, env=env, capture_output=True, text=True, timeout=120)
        assert final.returncode == 0, final.stdout + final.stderr
    checked = check_exact(sandbox)
    assert checked["statuses"]["credited"] >= 1 and checked["statuses"]["paid"] >= 1, checked["statuses"]
    assert admin(sandbox.stripe_url, "emails")["count"] == 0


class Interrupted(Exception):
    pass


def test_each_step_replayed_after_stripe_forgot_its_key_is_found_or_done_never_repeated(
    make_sandbox, env_for, monkeypatch
):
    sandbox = make_sandbox(patients=8, products=0)
    env = env_for(sandbox, CLINICSYNC_STRIPE_WORKERS="1", **ON)
    for stream in ("cliniko.patients", "cliniko.products"):
        assert sync_once(env, stream=stream).outcome == "ok"
    patient = admin(sandbox.cliniko_url, "dump")["patients"][0]["id"]
    lines = [
        {"name": "Standard consultation", "unit_price": "81.818", "discount_percentage": "12.5"},
        {"name": "Dry needling add-on", "unit_price": "18.1818", "tax_name": "GST", "tax_rate": "10.0"},
    ]
    # Invoice, two lines, finalize, pay, credit note: six steps, each interrupted once after Stripe took it.
    for step in range(1, 7):
        (invoice,) = admin(
            sandbox.cliniko_url, "add_invoices", invoices=[{"patient_id": patient, "lines": lines, "status": 20}]
        )["invoices"]
        admin(sandbox.cliniko_url, "reverse_invoices", ids=[invoice["id"]])
        taken = 0

        def stop_at_step(self, row, obj, *, replayed, _original=OutboxWriter._complete, _step=step):
            nonlocal taken
            taken += 1
            if taken == _step:
                raise Interrupted()
            _original(self, row, obj, replayed=replayed)

        with monkeypatch.context() as patch:
            patch.setattr(OutboxWriter, "_complete", stop_at_step)
            interrupted = sync_once(env, stream=STREAM)
        assert (interrupted.outcome, interrupted.stop_kind) == ("failed", "internal"), step
        # A day and more later: Stripe has forgotten the keys, so a plain replay of a create would make another.
        context(env)
        OutboxEntry.update(created_at=utcnow() - timedelta(hours=25)).where(OutboxEntry.status == "pending").execute()
        admin(sandbox.stripe_url, "expire_idempotency")
        resumed = sync_once(env, stream=STREAM)
        assert resumed.outcome == "ok" and resumed.counts["failed"] == 0, (step, resumed.counts, resumed.message)
        checked = check_exact(sandbox)
        assert checked["statuses"]["credited"] == step, (step, checked["statuses"])


STRIPE_FAULTS = "before:5xx=0.08,before:429=0.05,after:reset=0.03,after:html=0.02,stored500=0.03,max:stored500=10"
CLINIKO_FAULTS = "before:5xx=0.04,before:429=0.04,before:reset=0.03"


def test_the_fault_mix_on_both_sides_converges_to_exact_mirrors_without_duplicates(make_sandbox, env_for):
    seed = int(os.environ.get("CLINICSYNC_TEST_SEED") or random.SystemRandom().randrange(1, 10**6))
    print(f"invoice mirror faults: seed {seed} (CLINICSYNC_TEST_SEED={seed} reproduces it)")
    sandbox = make_sandbox(patients=50, products=4, invoices=100, invoice_customers=30, seed=seed % 1000 + 1)
    env = env_for(sandbox, **ON)
    for stream in ("cliniko.patients", "cliniko.products"):
        assert sync_once(env, stream=stream).outcome == "ok"
    admin(sandbox.stripe_url, "faults", spec=f"{STRIPE_FAULTS},seed={seed}")
    admin(sandbox.cliniko_url, "faults", spec=f"{CLINIKO_FAULTS},seed={seed + 1}")
    runs = []
    for number in range(8):
        if number == 2:  # staff take payments and reverse invoices while Stripe and Cliniko misbehave
            admin(sandbox.cliniko_url, "faults", spec="")
            open_ids, paid_ids = _mirrorable(sandbox, 10), _mirrorable(sandbox, 20)
            admin(sandbox.cliniko_url, "pay_invoices", ids=open_ids[:3])
            admin(sandbox.cliniko_url, "reverse_invoices", ids=[*paid_ids[:3], open_ids[3]])
            admin(sandbox.cliniko_url, "faults", spec=f"{CLINIKO_FAULTS},seed={seed + 2}")
        result = sync_once(env, stream=STREAM)
        runs.append((result.outcome, result.stop_kind, dict(result.counts)))
        if number >= 2 and result.outcome == "ok":
            break
    assert runs[-1][0] == "ok", runs
    faulted = stats(sandbox.stripe_url)["faulted"]
    context(env)
    superseded = Counter(row.op for row in OutboxEntry.select().where(OutboxEntry.status == "superseded"))
    print(runs, faulted, superseded)
    assert sum(faulted.values()) >= 20, faulted  # the mix really hit the mirror's writes
    assert superseded, "some writes were answered with a saved 500 and settled by looking"
    admin(sandbox.stripe_url, "faults", spec="")
    admin(sandbox.cliniko_url, "faults", spec="")
    final = sync_once(env, stream=STREAM)
    assert final.outcome == "ok" and final.counts["failed"] == 0, (final.counts, final.message)
    checked = check_exact(sandbox)
    assert checked["statuses"]["credited"] >= 3, checked["statuses"]
    assert admin(sandbox.stripe_url, "emails")["count"] == 0
    assert admin(sandbox.stripe_url, "ledger")["balance_transactions"] == []
