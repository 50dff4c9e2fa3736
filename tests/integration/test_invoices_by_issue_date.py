"""The invoices' first read in issue-date order, over real HTTP to the Cliniko sandbox: every live, archived and
deleted invoice listed once, including the ones without an issue date (Cliniko sorts them last; they have a pass of
their own), through keyset restarts on dates many invoices share; and each ListedBelow(d) mark comes only once
every live invoice issued before d is listed, in both worlds of `q[]=archived_at:*` (with live invoices, or archived
ones only, the live pass then following)."""

from __future__ import annotations

from collections import Counter
from datetime import date
from typing import Any

import pytest

from clinicsync.sources import cliniko
from clinicsync.sources.cliniko import ClinikoClient
from clinicsync.streams.base import CANDIDATES_LISTED, ListedBelow
from clinicsync.streams.cliniko_invoices import CATCH_UP_OVERLAP, _invoices_changed
from tests.support import admin, set_archived_listing

PER_PAGE = 20  # small pages: many restarts, each on a date several invoices share


def _client(sandbox: Any) -> ClinikoClient:
    env = sandbox.env()
    return ClinikoClient(
        env["CLINICSYNC_CLINIKO_API_KEY"],
        contact_email="tests@example.com",
        base_url=env["CLINICSYNC_CLINIKO_BASE_URL"],
        requests_per_minute=None,
    )


def test_the_first_read_lists_each_invoice_once_and_marks_issue_dates_only_when_passed(
    make_sandbox, archived_listing: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cliniko, "PER_PAGE", PER_PAGE)
    sandbox = make_sandbox(profile="clean", patients=30, invoices=200)
    set_archived_listing(sandbox, archived_listing)
    client = _client(sandbox)
    try:
        every = {r["id"]: r for r in client.iter_changed("/invoices", None, archived=True)}
        every |= {r["id"]: r for r in client.iter_changed("/invoices", None)}
        ids = sorted(every)
        admin(sandbox.cliniko_url, "edit_invoices", ids=ids[:3], fields={"issue_date": None})
        admin(sandbox.cliniko_url, "archive_invoices", ids=ids[3:9])
        admin(sandbox.cliniko_url, "delete_invoices", ids=ids[9:12])
        live = {r["id"]: r for r in client.iter_changed("/invoices", None)}
        archived = {r["id"] for r in client.iter_changed("/invoices", None, archived=True) if r["archived_at"]}
        deleted = {r["id"] for r in client.iter_changed("/invoices", None, deleted=True)}
        assert set(ids[:3]) <= set(live) and set(ids[3:9]) <= archived and set(ids[9:12]) <= deleted
        shared = Counter(r["issue_date"] for r in live.values())
        assert max(shared.values()) > 1, "some dates are shared, so restarts meet them"

        # Past the catch-up's overlap: the invoices changed during the read are read once more before the mark
        # (tests/integration/test_invoice_linking.py), and none changes during this one.
        admin(sandbox.cliniko_url, "clock", advance_s=2 * CATCH_UP_OVERLAP.total_seconds())
        listing = list(_invoices_changed(client, None))
    finally:
        client.close()

    end = listing.index(CANDIDATES_LISTED)
    records = [r for r in listing[:end] if not isinstance(r, ListedBelow)]
    assert Counter(r["id"] for r in records) == Counter(set(live) | archived), "each live and archived one once"
    assert {r["id"] for r in listing[end + 1 :]} == deleted
    dated = [r["issue_date"] for r in records if r["id"] in live and r["issue_date"]]
    assert dated == sorted(dated) and [r["id"] for r in records if r["id"] in live][-3:] == ids[:3]

    marks = [(n, m.value) for n, m in enumerate(listing[:end]) if isinstance(m, ListedBelow)]
    assert len(marks) > 20 and [v for _, v in marks] == sorted({v for _, v in marks})
    for position, value in marks:
        before = {r["id"] for r in listing[:position] if not isinstance(r, ListedBelow)}
        issued_before = {i for i, r in live.items() if r["issue_date"] and date.fromisoformat(r["issue_date"]) < value}
        assert issued_before <= before, (value, sorted(issued_before - before))


def test_invoices_sharing_one_issue_date_and_change_time_are_each_read_once_when_ties_shuffle(make_sandbox) -> None:
    """250 invoices of one issue date and one change time, more than two pages, from a server that gives tied
    records in a fresh order on every page (the sandbox's `shuffle_ties`, as PostgreSQL may across LIMIT/OFFSET):
    the first read by issue date and a read by change time each list every one of them exactly once. (Sorted on
    the date alone and paged by offset within it, a shuffled page 2 repeats some and skips others.)"""
    seed = 20261205
    print(f"shuffle_ties seed={seed}")
    sandbox = make_sandbox(profile="clean", patients=3)
    client = _client(sandbox)
    try:
        patients = [r["id"] for r in client.iter_changed("/patients", None)]
        same = {"issue_date": "2025-03-04", "created_at": "2025-03-04T01:02:03Z"}
        line = [{"name": "Consult", "unit_price": "80"}]
        specs = [{"patient_id": patients[n % 3], "lines": line, **same} for n in range(250)]
        tied = admin(sandbox.cliniko_url, "add_invoices", invoices=specs)["ids"]
        others = [
            {**specs[0], "issue_date": day, "created_at": f"{day}T05:00:00Z"} for day in ("2025-03-01", "2025-04-01")
        ]
        admin(sandbox.cliniko_url, "add_invoices", invoices=others)
        every = {i["id"] for i in admin(sandbox.cliniko_url, "dump")["invoices"] if i["deleted_at"] is None}
        assert admin(sandbox.cliniko_url, "shuffle_ties", seed=seed) == {"shuffle_ties": True}

        by_issue_date = [r["id"] for r in client.iter_live_and_archived("/invoices", None, order="issue_date")]
        by_change = [r["id"] for r in client.iter_changed("/invoices", None)]
    finally:
        client.close()
    for listing in (by_issue_date, by_change):
        assert Counter(listing) == Counter(every), (len(listing), len(every), Counter(listing).most_common(3))
    assert set(tied) <= every
