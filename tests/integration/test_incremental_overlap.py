"""Records edited while a sync pages through them.

Cliniko lists patients with page-offset paging sorted by `updated_at`, and pages are computed per request. A
record edited mid-run jumps to the end of the list, so with plain offset paging every record after it shifts one
place towards the start: the first record of the next page slides onto a page already read, and the run never
sees it (an unedited record keeps its old `updated_at`, so no later incremental read finds it either). The client
therefore pages by keyset on `updated_at`. These tests edit records between two
page requests of a real sync (in a background thread, over HTTP to the sandbox) and check that nothing is lost.

The edits are placed between page requests deterministically: a wrapper around `ClinikoClient.iter_pages`
pauses the sync after a given page has arrived until the test has made its edits. The HTTP stays real.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from clinicsync.sources.cliniko import ClinikoClient
from clinicsync.store.db import open_database
from clinicsync.store.models import AccountPair, StreamState
from clinicsync.store.settings import Settings
from clinicsync.streams import CLINIKO_PATIENTS as CLINIKO_PATIENTS_STREAM
from clinicsync.sync.engine import StreamRun
from clinicsync.sync.service import run_options
from tests.support import (
    actual_customer_fields,
    admin,
    context,
    executed_writes,
    expected_customer_fields,
    set_archived_listing,
    stats,
    sync_once,
)

PATIENTS = 400


# --- helpers ---------------------------------------------------------------------------------------------


class PageGate:
    """Pauses a sync after chosen pages (("active" | "archived", page number)) until the test lets it go on.

    "archived" is the `q[]=archived_at:*` pass, read first; "active" the live pass, read only when that one listed
    no live patient (sources/cliniko.py `iter_live_and_archived`)."""

    def __init__(self, stops: list[tuple[str, int]]) -> None:
        self.stops = stops
        self.reached = {stop: threading.Event() for stop in stops}
        self.resume = {stop: threading.Event() for stop in stops}
        self.pages: dict[tuple[str, int], list[str]] = {}

    def after_page(self, kind: str, number: int, ids: list[str]) -> None:
        self.pages[(kind, number)] = ids
        stop = (kind, number)
        if stop in self.reached and not self.reached[stop].is_set():
            self.reached[stop].set()
            if not self.resume[stop].wait(60):
                raise TimeoutError(f"the test never resumed the sync after {stop}")

    def wait(self, stop: tuple[str, int], running: Future[Any]) -> None:
        """Wait until the sync has paused at `stop`; if it ended (or crashed) first, say so at once."""
        deadline = time.monotonic() + 60
        while not self.reached[stop].wait(0.05):
            if running.done():
                running.result()  # raises what the sync raised
                raise AssertionError(f"the sync finished without reaching {stop}; pages seen: {sorted(self.pages)}")
            assert time.monotonic() < deadline, f"the sync never reached {stop}"

    def go_on(self, stop: tuple[str, int]) -> None:
        self.resume[stop].set()

    def release_all(self) -> None:
        for event in self.resume.values():
            event.set()


@pytest.fixture
def gate_pages(monkeypatch) -> Iterator[Any]:
    gates: list[PageGate] = []
    original = ClinikoClient.iter_pages
    # Pages are counted per pass, across calls: keyset paging starts a new listing call for each page.
    counters = {"active": 0, "archived": 0}

    def gated(self, path, params=None, *, records_key=None):
        kind = "archived" if any(value == "archived_at:*" for _, value in params or []) else "active"
        for page in original(self, path, params, records_key=records_key):
            counters[kind] += 1
            for gate in gates:
                gate.after_page(kind, counters[kind], [record["id"] for record in page.records])
            yield page

    monkeypatch.setattr(ClinikoClient, "iter_pages", gated)

    def make(stops: list[tuple[str, int]]) -> PageGate:
        gate = PageGate(stops)
        gates.append(gate)
        return gate

    yield make
    for gate in gates:
        gate.release_all()


def live_pass(sandbox: Any, listing: str) -> str:
    """The pass that lists the live patients of the clean profile (none archived): the `archived_at:*` pass when it
    lists live records too, else the live pass after it."""
    set_archived_listing(sandbox, listing)
    return "archived" if listing == "lists_live" else "active"


def listing_order(sandbox: Any, *, include_archived: bool) -> list[str]:
    """Patient ids in the order Cliniko lists them right now: updated_at, then id."""
    patients = admin(sandbox.cliniko_url, "dump")["patients"]
    listed = [p for p in patients if p["deleted_at"] is None and (include_archived or p["archived_at"] is None)]
    return [p["id"] for p in sorted(listed, key=lambda p: (p["updated_at"], int(p["id"])))]


def patients_by_id(sandbox: Any) -> dict[str, dict[str, Any]]:
    return {p["id"]: p for p in admin(sandbox.cliniko_url, "dump")["patients"]}


def customers_by_patient(sandbox: Any) -> dict[str, dict[str, Any]]:
    result: dict[str, dict[str, Any]] = {}
    for customer in admin(sandbox.stripe_url, "dump")["data"]:
        if customer["deleted"]:
            continue
        pid = customer["metadata"].get("cliniko_patient_id")
        assert pid, f"a customer without a patient: {customer['id']}"
        assert pid not in result, f"two customers for patient {pid}"
        result[pid] = customer
    return result


def stale_patients(sandbox: Any) -> set[str]:
    """Patients whose Stripe customer is missing or does not show their latest values."""
    source, custs = patients_by_id(sandbox), customers_by_patient(sandbox)
    assert set(custs) <= set(source)
    return {
        pid
        for pid, patient in source.items()
        if pid not in custs or actual_customer_fields(custs[pid]) != expected_customer_fields(patient)
    }


def sync_with_edits(sandbox: Any, env: dict[str, str], gate: PageGate, plan: dict[tuple[str, int], Any]) -> Any:
    """Run a sync in a background thread; at each gate stop call plan[stop]() to edit, then let it go on."""
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="sync-under-test") as pool:
        future = pool.submit(sync_once, env)
        try:
            for stop in gate.stops:
                gate.wait(stop, future)
                plan[stop]()
                gate.go_on(stop)
        finally:
            gate.release_all()
        return future.result(timeout=120)


def edit(sandbox: Any, ids: list[str]) -> list[str]:
    return admin(sandbox.cliniko_url, "edit", ids=ids)["ids"]


# --- edits while paging -----------------------------------------------------------------------------------


def test_edits_while_a_sync_pages_lose_nothing_and_the_next_run_writes_only_what_changed(
    make_sandbox, env_for, gate_pages, archived_listing
):
    sandbox = make_sandbox(profile="clean", patients=PATIENTS)
    admin(sandbox.cliniko_url, "config", latency_ms=5)
    env = env_for(sandbox)
    main = live_pass(sandbox, archived_listing)
    edited: list[str] = []

    def edits_after_page_2() -> None:
        order = listing_order(sandbox, include_archived=False)
        already_read, unread = order[:200], order[200:]
        edited.extend(edit(sandbox, already_read[10::24][:8] + unread[5::28][:7]))

    def edits_after_page_3() -> None:
        # The listing now: the 385 unedited, of which about 290 are read, then the 15 edited.
        order = [pid for pid in listing_order(sandbox, include_archived=True) if pid not in edited]
        already_read, unread = order[:280], order[300:]
        edited.extend(edit(sandbox, already_read[3::13][:8] + unread[5::11][:7]))

    gate = gate_pages([(main, 2), (main, 3)])
    first = sync_with_edits(sandbox, env, gate, {(main, 2): edits_after_page_2, (main, 3): edits_after_page_3})
    assert len(edited) == len(set(edited)) == 30
    assert first.outcome == "ok", first.message
    assert first.counts["created"] == PATIENTS and first.counts["failed"] == 0

    # Nothing lost in the run itself: every patient has exactly one customer, and every patient nobody edited
    # is exactly right. Only edited ones may still show an older version (the next run's job).
    assert len(customers_by_patient(sandbox)) == PATIENTS
    stale = stale_patients(sandbox)
    assert stale <= set(edited), f"patients lost or wrong though nobody edited them: {sorted(stale - set(edited))}"

    writes_before = executed_writes(sandbox.stripe_url)
    second = sync_once(env)
    assert second.outcome == "ok", second.message
    assert second.counts["created"] == 0
    assert second.counts["updated"] == len(stale), "the second run writes exactly the changes not yet in Stripe"
    assert executed_writes(sandbox.stripe_url) - writes_before == len(stale)
    # It read only what changed since the first run's start (the edits), not the whole list again.
    assert second.counts["updated"] + second.counts["unchanged"] == len(edited)
    assert stale_patients(sandbox) == set()
    assert len(customers_by_patient(sandbox)) == PATIENTS

    third = sync_once(env)
    assert third.counts["updated"] == third.counts["created"] == 0
    assert executed_writes(sandbox.stripe_url) - writes_before == len(stale)


def test_a_bulk_edit_larger_than_a_page_during_a_sync_loses_nothing(
    make_sandbox, env_for, gate_pages, archived_listing
):
    """Staff (or an import) change a page's worth of patients while the first sync pages.

    15 already-read patients are edited after the second page of the pass that lists them: with offset paging the
    15 patients at the head of the third page would slide onto page two and be skipped, and 100 more edits after
    the third page would slide more out of reach. Their `updated_at` is old, so no incremental run would read them
    again: they would never be created in Stripe. Keyset paging loses none.
    """
    sandbox = make_sandbox(profile="clean", patients=PATIENTS)
    admin(sandbox.cliniko_url, "config", latency_ms=5)
    env = env_for(sandbox)
    main = live_pass(sandbox, archived_listing)
    edited: list[str] = []

    def small_edit() -> None:
        edited.extend(edit(sandbox, listing_order(sandbox, include_archived=False)[:200][::13][:15]))

    def bulk_edit() -> None:
        edited.extend(edit(sandbox, listing_order(sandbox, include_archived=True)[:100]))

    gate = gate_pages([(main, 2), (main, 3)])
    first = sync_with_edits(sandbox, env, gate, {(main, 2): small_edit, (main, 3): bulk_edit})
    assert first.outcome == "ok", first.message
    second = sync_once(env)
    assert second.outcome == "ok", second.message

    custs = customers_by_patient(sandbox)
    missing = sorted(set(patients_by_id(sandbox)) - set(custs))
    unedited = [pid for pid in missing if pid not in edited]
    assert not missing, (
        f"{len(missing)} patients never reached Stripe, {len(unedited)} of them never edited: {missing[:5]}…"
    )
    assert stale_patients(sandbox) == set()


# --- the cursor -------------------------------------------------------------------------------------------


class FakeClinic:
    """A source whose clock (the Date of its responses) moves on by an hour with every request."""

    def __init__(self, start: datetime) -> None:
        self.now = start
        self.calls: list[tuple[str, Any]] = []
        self.last_total_entries = 0

    def _tick(self) -> None:
        self.now += timedelta(hours=1)

    def probe(self) -> datetime:
        self.calls.append(("probe", self.now))
        date = self.now
        self._tick()
        return date

    def iter_live_and_archived(self, path: str, cursor: datetime | None) -> Iterator[dict[str, Any]]:
        self.calls.append((path, cursor))
        self._tick()
        return iter(())

    def get_patient(self, patient_id: str) -> dict[str, Any] | None:
        raise AssertionError("no record should be read by id")


class EmptyStripe:
    def iter_objects(self, stripe_object: str, created_since: int | None = None) -> Iterator[dict[str, Any]]:
        return iter(())


@pytest.mark.parametrize("overlap_s", [0, 120, 3600])
def test_next_cursor_is_the_servers_date_at_the_start_of_the_run_minus_the_overlap(tmp_path: Path, overlap_s: int):
    db = open_database(tmp_path / "db.sqlite3")
    try:
        pair = AccountPair.create(
            uuid="p", source_system="cliniko", source_account="1", stripe_account="acct_1", stripe_livemode=False
        )
        options = run_options(
            Settings({"CLINICSYNC_SYNC_CURSOR_OVERLAP_SECONDS": str(overlap_s)}), trigger="test", dry_run=False
        )
        assert options.overlap_s == overlap_s
        # Far from this PC's clock, so a cursor taken from the local clock could not pass.
        server_start = datetime(2031, 5, 1, 10, 0, 0, tzinfo=UTC)
        clinic = FakeClinic(server_start)

        first = StreamRun(CLINIKO_PATIENTS_STREAM, pair, clinic, EmptyStripe(), options).run()
        assert first.outcome == "ok", first.message
        expected = server_start - timedelta(seconds=overlap_s)
        state = StreamState.get(StreamState.pair == pair)
        assert state.cursor == expected.strftime("%Y-%m-%dT%H:%M:%SZ")
        # The server was asked for its time once, before anything was read; the first run read everything.
        assert [name for name, _ in clinic.calls] == ["probe", "/patients"]
        assert clinic.calls[1][1] is None

        clinic.calls.clear()
        second_start = clinic.now
        StreamRun(CLINIKO_PATIENTS_STREAM, pair, clinic, EmptyStripe(), options).run()
        assert clinic.calls[1:] == [("/patients", expected)], "reads start at the cursor"
        state = StreamState.get(StreamState.pair == pair)
        assert state.cursor == (second_start - timedelta(seconds=overlap_s)).strftime("%Y-%m-%dT%H:%M:%SZ")
    finally:
        db.close()


def test_the_cursor_follows_clinikos_clock_not_this_computers(make_sandbox, env_for, gate_pages):
    """The sandbox's clock runs two hours behind this PC and jumps a day ahead in the middle of the run."""
    sandbox = make_sandbox(profile="clean", patients=150)
    env = env_for(sandbox, CLINICSYNC_SYNC_CURSOR_OVERLAP_SECONDS="300")
    start = datetime.strptime(admin(sandbox.cliniko_url, "clock", advance_s=-7200)["now"], "%Y-%m-%dT%H:%M:%SZ")
    start = start.replace(tzinfo=UTC)

    gate = gate_pages([("archived", 1)])  # the archived_at:* pass, always read first
    result = sync_with_edits(
        sandbox, env, gate, {("archived", 1): lambda: admin(sandbox.cliniko_url, "clock", advance_s=86400)}
    )
    assert result.outcome == "ok", result.message

    context(env)
    (state,) = StreamState.select()
    cursor = datetime.strptime(state.cursor, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    expected = start - timedelta(seconds=300)
    assert expected <= cursor <= expected + timedelta(seconds=3), (cursor, expected)
    assert abs(cursor - datetime.now(UTC)) > timedelta(hours=1), "the cursor came from this computer's clock"
    assert stats(sandbox.cliniko_url)["by_endpoint"].get("GET /v1/settings/public", 0) >= 1
