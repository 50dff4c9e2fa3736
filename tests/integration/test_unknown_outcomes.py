"""An answer whose outcome is unknown — a 2xx that is not Stripe's JSON (a proxy or captive portal answering for
Stripe), a connection dropped after Stripe executed the write — is replayed with the same idempotency key, never
recorded as a refusal; the objects Stripe made are linked, not made twice."""

from __future__ import annotations

from clinicsync.store.models import SyncEvent
from tests.reliability.helpers import mirror_report
from tests.support import admin, context, sync_once
from tests.support import stats as support_stats


def test_html_2xx_answers_are_replayed_and_every_object_is_linked(make_sandbox, env_for):
    sandbox = make_sandbox(profile="clean", patients=60)
    env = env_for(sandbox, CLINICSYNC_RETRY_MAX_ATTEMPTS="2")
    admin(sandbox.stripe_url, "faults", spec="after:html=0.5,seed=5")
    sync_once(env)
    context(env)
    refused = SyncEvent.select().where(SyncEvent.message.contains("Stripe refused")).count()
    assert refused == 0, "an unreadable success is not a refusal"
    admin(sandbox.stripe_url, "faults", spec="")
    sync_once(env)
    stats = support_stats(sandbox.stripe_url)
    assert stats["faulted"].get("after:html", 0) > 0, "the fault happened"
    report = mirror_report(sandbox.cliniko_url, sandbox.stripe_url)
    assert report.ok, (report.duplicated, report.missing[:5], report.orphans[:3])
    assert report.customers == 60
