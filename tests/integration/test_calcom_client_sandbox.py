"""The Cal.com client against the Cal.com emulator over real HTTP: every read, paging, incremental reads (also while
bookings change mid-listing), the rate limit and its block without losing work, faults, and error messages."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import httpx
import pytest

from clinicsync.retry import RetryPolicy
from clinicsync.sandbox.calcom_emu import DEFAULT_API_KEY, CalcomEmulator
from clinicsync.sandbox.faults import FaultPlan
from clinicsync.sandbox.server import RunningServer, serve
from clinicsync.sources.calcom import CalcomClient
from clinicsync.sources.errors import SourceAuthError, SourceNotFound, SourceRequestRejected

FAST = RetryPolicy(max_attempts=6, base_delay_s=0.02, max_delay_s=0.2)


@pytest.fixture
def srv() -> Iterator[RunningServer]:
    with serve(CalcomEmulator()) as server:
        response = httpx.post(f"{server.url}/_sandbox/seed", json={"profile": "hard", "patients": 25, "seed": 6})
        assert response.status_code == 200
        yield server


def admin(srv: RunningServer, action: str, **params: Any) -> Any:
    response = httpx.post(f"{srv.url}/_sandbox/{action}", json=params, timeout=10)
    assert response.status_code == 200, response.text
    return response.json()


class Hooked(httpx.HTTPTransport):
    """A real transport that runs `after(n)` once the n-th bookings page has been answered: a change made
    by someone else between two pages of the same listing."""

    def __init__(self, after: Callable[[int], None]) -> None:
        super().__init__()
        self.after = after
        self.pages = 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = super().handle_request(request)
        if request.url.path == "/v2/bookings":
            response.read()
            self.pages += 1
            self.after(self.pages)
        return response


def client_for(srv: RunningServer, **kwargs: Any) -> CalcomClient:
    kwargs.setdefault("requests_per_minute", None)
    kwargs.setdefault("retry", FAST)
    return CalcomClient(DEFAULT_API_KEY, base_url=f"{srv.url}/v2", **kwargs)


def all_uids(srv: RunningServer) -> set[str]:
    return {b["uid"] for b in admin(srv, "dump")["bookings"]}


def test_every_read(srv: RunningServer) -> None:
    with client_for(srv) as client:
        me = client.get_me()
        assert (me.id, me.username, me.time_zone) == ("1001", "harbourside-physio", "Australia/Melbourne")
        event_types = client.list_event_types()
        assert {et["slug"] for et in event_types} >= {"initial-consultation", "telehealth-review"}
        assert client.get_event_type(4001)["metadata"]["apps"]["stripe"]["price"] == 12000
        assert client.get_event_type(999) is None
        (team,) = client.list_teams()
        assert client.get_team(team["id"])["slug"] == "harbourside-allied-health"
        assert {et["schedulingType"] for et in client.list_team_event_types(team["id"])} == {"roundRobin", "collective"}
        assert client.get_team(999) is None
        assert len(client.list_schedules()) == 2 and client.get_default_schedule()["isDefault"] is True
        assert client.get_schedule(2002)["name"] == "Telehealth evenings"
        (hook,) = client.iter_webhooks()
        assert client.get_webhook(hook["id"])["subscriberUrl"] == hook["subscriberUrl"]
        some = next(iter(client.iter_bookings_changed_since(None)))
        assert client.get_booking(some["uid"]) == [some]
        assert client.get_booking("NoSuchBooking") == []
        with pytest.raises(SourceNotFound, match="Team with id=999 not found"):
            client.list_team_event_types(999)
        assert client.server_date() is not None


def test_a_backfill_reads_every_booking_once_across_pages(srv: RunningServer) -> None:
    with client_for(srv) as client:
        got = [b["uid"] for b in client.iter_bookings_changed_since(None, take=7)]
        assert client.last_total_entries == len(all_uids(srv))
    assert len(got) == len(set(got)) and set(got) == all_uids(srv)
    assert any(b["updatedAt"] is None for b in admin(srv, "dump")["bookings"])  # and those were read too
    stats = httpx.get(f"{srv.url}/_sandbox/stats").json()
    assert stats["by_endpoint"]["GET /v2/bookings"] >= len(got) // 7


def test_incremental_reads_return_exactly_what_changed(srv: RunningServer) -> None:
    admin(srv, "clock", advance_s=3600)  # everything seeded is now at least an hour old
    with client_for(srv) as client:
        client.get_me()
        cursor = client.server_date() - timedelta(seconds=2)  # the previous run's start, less an overlap
        edited = admin(srv, "edit", count=3)["uids"]
        added = admin(srv, "add", count=1, event_type_id=4002)["uids"]
        added += admin(srv, "add", event_type_id=4003, null_updated_at=True)["uids"]  # only the created pass sees it
        live = [uid for uid in all_uids(srv) if uid not in edited + added]
        state = {b["uid"]: b for b in admin(srv, "dump")["bookings"]}
        movable = [
            uid
            for uid in live
            if state[uid]["status"] == "ACCEPTED"
            and state[uid]["attendees"]
            and not any(a.get("seat") for a in state[uid]["attendees"])  # seats move one by one: not emulated
        ]
        moved = admin(srv, "reschedule", uid=movable[0])
        admin(srv, "cancel", uid=movable[1])
        got = [b["uid"] for b in client.iter_bookings_changed_since(cursor, take=3)]
    expected = {*edited, *added, movable[0], moved["new_uid"], movable[1]}
    assert len(got) == len(set(got)) and set(got) == expected


def test_bookings_edited_mid_listing_are_not_lost(srv: RunningServer) -> None:
    admin(srv, "clock", advance_s=3600)
    with client_for(srv) as probe:
        probe.get_me()
        cursor = probe.server_date() - timedelta(seconds=1)
    changed = []
    for _ in range(12):  # one at a time, so each has its own updatedAt
        changed += admin(srv, "edit", count=1)["uids"]
        time.sleep(0.003)
    first_page: list[str] = []

    def edit_the_first_booking_read(pages: int) -> None:
        if pages == 1:  # it moves to the end: offset paging would now skip a booking
            order = sorted(admin(srv, "dump")["bookings"], key=lambda b: (b["updatedAt"] or "", b["id"]))
            first_page.append(next(b["uid"] for b in order if b["uid"] in changed))
            admin(srv, "edit", uids=first_page)

    with client_for(srv, transport=Hooked(edit_the_first_booking_read)) as client:
        got = [b["uid"] for b in client.iter_bookings_changed_since(cursor, take=4)]
    assert set(got) == set(changed)
    assert Counter(got)[first_page[0]] == 2  # once as first read, once after its edit


def test_a_used_up_allowance_is_waited_out_without_a_block(srv: RunningServer) -> None:
    admin(srv, "rate_limit", limit=5, window_s=1, block_s=30)
    admin(srv, "config", rate_limits=True)
    with client_for(srv) as client:
        got = [b["uid"] for b in client.iter_bookings_changed_since(None, take=10)]
    assert sorted(got) == sorted(all_uids(srv))
    stats = httpx.get(f"{srv.url}/_sandbox/stats").json()
    assert stats["rate_limited"] == 0 and stats["by_endpoint"]["GET /v2/bookings"] > 5


def test_a_block_mid_listing_is_waited_out_without_losing_work(srv: RunningServer) -> None:
    admin(srv, "rate_limit", limit=5, window_s=1.5, block_s=2)
    admin(srv, "config", rate_limits=True)
    other_app = httpx.Client(headers={"Authorization": f"Bearer {DEFAULT_API_KEY}"})

    def another_app_uses_the_key(pages: int) -> None:
        if pages == 2:  # someone else spends the rest of the allowance, and one more: the key is blocked
            statuses = [other_app.get(f"{srv.url}/v2/me").status_code for _ in range(4)]
            assert statuses[-1] == 429

    started = time.monotonic()
    with other_app, client_for(srv, transport=Hooked(another_app_uses_the_key)) as client:
        got = [b["uid"] for b in client.iter_bookings_changed_since(None, take=10)]
    assert len(got) == len(set(got)) and set(got) == all_uids(srv)
    assert (
        time.monotonic() - started >= 1.5
    )  # it waited for the block (from the Reset header) rather than retry blindly
    stats = httpx.get(f"{srv.url}/_sandbox/stats").json()
    assert stats["rate_limited"] >= 2  # the other app's request and ours


def test_server_faults_are_retried_without_losing_or_repeating_bookings() -> None:
    with serve(CalcomEmulator(), faults=FaultPlan.parse("before:5xx=0.3,before:reset=0.1,seed=5")) as server:
        httpx.post(f"{server.url}/_sandbox/seed", json={"patients": 10, "bookings": 40})
        with client_for(server) as client:
            got = [b["uid"] for b in client.iter_bookings_changed_since(None, take=5)]
        assert len(got) == len(set(got)) == 40
        assert httpx.get(f"{server.url}/_sandbox/stats").json()["faulted_total"] > 0


def test_error_envelopes_become_clear_messages(srv: RunningServer) -> None:
    with client_for(srv) as client:
        with pytest.raises(SourceRequestRejected) as raised:
            list(client.iter_booking_pages([("afterUpdatedAt", "last tuesday"), ("sortStart", "sideways")]))
        message = str(raised.value)
        assert message.startswith("Cal.com rejected the request (HTTP 400, BadRequestException): ")
        assert "afterUpdatedAt must be a valid ISO 8601 date string" in message
        assert "sortStart must be one of the following values: asc, desc" in message
        assert "Cal.com request id sandbox-" in message and DEFAULT_API_KEY not in message
        admin(srv, "revoke_key")
        with pytest.raises(SourceAuthError, match="rejected the API key"):
            client.get_me()


def test_closing_while_a_listing_read_ahead_waits_to_retry_never_closes_the_connection_under_it(
    srv: RunningServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The bookings read ahead is in a pause before retrying a refused page when the run closes the client: it sends
    no request to a closed connection (an error nobody sees); the connection is closed once it has ended. The
    pause is held until close returned (bounded), so the order does not depend on time."""
    import threading

    from clinicsync.sandbox.http import Response

    pausing, released = threading.Event(), threading.Event()
    handle, refused = srv.emulator.handle, []

    def calcom(request: Any) -> Any:
        if request.path.rstrip("/").endswith("/bookings") and not refused:
            refused.append(request.path)
            return Response(503, {"status": "error", "error": {"message": "busy"}})
        return handle(request)

    def sleep(seconds: float) -> None:
        if seconds > 0 and threading.current_thread().name.startswith("read-ahead"):
            pausing.set()
            released.wait(10)

    monkeypatch.setattr(srv.emulator, "handle", calcom)
    client = client_for(srv, sleep=sleep)
    ahead = client.read_ahead_bookings()
    assert ahead is not None
    assert pausing.wait(10), "the listing was refused once and waits to retry"
    client.close()
    released.set()
    reader = next(t for t in threading.enumerate() if t.name == "read-ahead Cal.com bookings")
    reader.join(10)
    assert refused and not reader.is_alive()
    assert ahead.stopped and ahead.error is None, f"the thread met {ahead.error!r}"
    assert client._http.is_closed, "the connection is closed once the thread has ended"


def test_a_listing_read_ahead_shows_its_size_only_once_its_reader_takes_it(srv: RunningServer) -> None:
    """Progress shows the size of the listing being read: the bookings read ahead do not put theirs in place of
    another listing's while that one is read; their reader gets it."""
    import threading

    client = client_for(srv)
    client.last_total_entries = 7  # another listing's, being read
    ahead = client.read_ahead_bookings()
    assert ahead is not None
    next(t for t in threading.enumerate() if t.name == "read-ahead Cal.com bookings").join(10)
    assert ahead.complete
    assert client.last_total_entries == 7, "the other listing's size stays shown"
    listed = list(client.iter_bookings_changed_since(None))
    assert client.last_total_entries == len(listed) > 7
    client.close()
