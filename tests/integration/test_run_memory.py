"""What a sync leaves in memory when it ends: nothing of the run. `serve` syncs every few minutes for days in one
process, so a run that keeps its Stripe gateway (and with it what the gateway listed: every payment of the account)
grows the app by that much each run (issue 14: flat memory; measured 45 MiB a run at 5,000 bookings)."""

from __future__ import annotations

import gc
import weakref
from typing import Any

from clinicsync.app import bootstrap
from clinicsync.logging_setup import teardown_logging
from clinicsync.readahead import ReadAhead
from clinicsync.sources.calcom import CalcomClient
from clinicsync.sources.cliniko import ClinikoClient
from clinicsync.stripe_gateway import StripeGateway
from clinicsync.sync.service import run_sync

EVERY_STREAM_SETTINGS = {"CLINICSYNC_CLINIKO_INVOICES_MIRROR": "true"}
RUN_OBJECTS = (StripeGateway, ClinikoClient, CalcomClient, ReadAhead)


def _alive(kinds: tuple[type, ...]) -> weakref.WeakSet[Any]:
    gc.collect()
    return weakref.WeakSet(obj for obj in gc.get_objects() if isinstance(obj, kinds))


def _made_since(before: weakref.WeakSet[Any], kinds: tuple[type, ...]) -> list[str]:
    """Those alive now that were not before (another test's left on this worker may be freed meanwhile)."""
    return sorted(type(obj).__name__ for obj in _alive(kinds) if obj not in before)


def test_a_finished_sync_of_every_stream_leaves_no_gateway_client_or_listing_in_memory(make_sandbox, env_for):
    sandbox = make_sandbox(
        profile="clean",
        patients=30,
        products=10,
        invoices=40,
        invoice_customers=10,
        calcom=True,
        calcom_bookings=40,
        calcom_payments=True,
    )
    env = env_for(sandbox, **EVERY_STREAM_SETTINGS)
    before = _alive(RUN_OBJECTS)
    for _ in range(2):  # the first run (full reads, read-aheads, payment listings) and an incremental one
        ctx = bootstrap(env)
        try:
            results = run_sync(ctx.paths, ctx.settings, ctx.secrets, trigger="test")
        finally:
            ctx.db.close()
            teardown_logging()
        assert results and {r.outcome for r in results} <= {"ok", "attention"}, [(r.stream, r.outcome) for r in results]
        assert {r.stream for r in results} >= {"calcom.booking_payments", "cliniko.invoices"}
        del results
        assert _made_since(before, RUN_OBJECTS) == [], "what the run made is still held after it ended"
