"""A sync with nothing changed, over real HTTP to the sandboxes: every stream (Cliniko patients, products, invoices
and their links, the invoice mirror; Cal.com event types, bookings, booking payments, the reference notes) writes
nothing to Stripe and reads no more than its passes, one page each, and its fixed reads (issue 14's acceptance).

The passes each stream needs are benchmarks/quiet_sync.py's PASSES (the benchmark prints the same at a larger size).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.append(str(Path(__file__).resolve().parents[2] / "benchmarks"))  # its modules import each other
import quiet_sync


def test_a_sync_with_nothing_changed_writes_nothing_and_reads_one_page_a_pass(make_sandbox, env_for):
    sandbox = make_sandbox(
        profile="clean",
        patients=250,  # three pages on a full read, against the quiet sync's two passes of a page
        products=110,
        invoices=120,
        invoice_customers=40,
        calcom=True,
        calcom_bookings=60,
        calcom_payments=True,
    )
    env = env_for(sandbox, **quiet_sync.QUIET_SETTINGS)
    urls = {"cliniko": sandbox.cliniko_url, "calcom": sandbox.calcom_url, "stripe": sandbox.stripe_url}

    first, alone, together = quiet_sync.quiet_syncs(env, urls)

    assert first.stripe_writes > 0 and first.source.get("GET /v1/patients", 0) > 2, "the first sync read and wrote"
    assert [row.streams for row in alone] == [(name,) for name in quiet_sync.STREAMS], "every stream, alone"
    for row in [*alone, together]:
        assert row.outcomes and set(row.outcomes) == {"ok"}, (row.streams, row.outcomes)
        assert row.stripe_writes == 0, (row.streams, row.stripe_writes)
        assert row.over() == [], (row.streams, row.over())
        assert row.source_requests <= row.passes
    for row in alone:  # each stream did read its passes: nothing was skipped by mistake either
        for endpoint in quiet_sync.PASSES[row.streams[0]]:
            assert row.source.get(endpoint, 0) >= 1, (row.streams, endpoint)


def test_a_stream_that_reads_more_than_its_passes_or_writes_is_named():
    needed = quiet_sync.needed_reads("calcom.event_types", teams=2)
    assert needed == {
        "GET /v2/me": 1,
        "GET /v2/event-types": 1,
        "GET /v2/teams": 1,
        quiet_sync.TEAM_EVENT_TYPES: 2,
    }
    row = quiet_sync.Quiet(
        streams=("calcom.event_types",),
        outcomes=["ok"],
        stripe_writes=1,
        stripe_reads=3,
        source={**needed, "GET /v2/event-types": 2},
        needed=needed,
    )
    assert row.over() == ["1 Stripe writes", "GET /v2/event-types 2x (needs 1)"]
