"""A queued create older than Stripe's 24 h idempotency window looks for its customer before it is replayed."""

from __future__ import annotations

from datetime import timedelta

import pytest

from clinicsync.store.models import OutboxEntry, utcnow
from clinicsync.sync.outbox import OutboxWriter
from tests.support import admin, context, executed_writes, sync_once


class Interrupted(Exception):
    pass


@pytest.mark.parametrize("with_email", [True, False])
def test_a_create_queued_for_over_a_day_is_not_replayed_into_a_duplicate(
    make_sandbox, env_for, monkeypatch, with_email
):
    sandbox = make_sandbox(profile="clean", patients=1)
    if not with_email:
        (pid,) = [p["id"] for p in admin(sandbox.cliniko_url, "dump")["patients"]]
        admin(sandbox.cliniko_url, "edit", ids=[pid], fields={"email": None})
        admin(sandbox.stripe_url, "set_search_delay", seconds=0)
    env = env_for(sandbox, CLINICSYNC_STRIPE_WORKERS="1")

    # Stripe executes the create, then the app stops before recording it (as if the laptop was shut).
    def stop_before_recording(self, row, obj, *, replayed):
        raise Interrupted()

    with monkeypatch.context() as patch:
        patch.setattr(OutboxWriter, "_complete", stop_before_recording)
        interrupted = sync_once(env)
    assert (interrupted.outcome, interrupted.stop_kind) == ("failed", "internal")
    assert executed_writes(sandbox.stripe_url) == 1

    # A day and more later: Stripe has forgotten the idempotency key, so a plain replay would create again.
    context(env)
    (row,) = OutboxEntry.select().where(OutboxEntry.status == "pending")
    OutboxEntry.update(created_at=utcnow() - timedelta(hours=25)).where(OutboxEntry.id == row.id).execute()
    admin(sandbox.stripe_url, "expire_idempotency")

    result = sync_once(env)
    assert result.outcome == "ok", result.message
    customers = [c for c in admin(sandbox.stripe_url, "dump")["data"] if not c["deleted"]]
    assert len(customers) == 1, "the old create found its customer instead of making a second one"
    assert executed_writes(sandbox.stripe_url) == 1
