"""CalcomClient against httpx.MockTransport: headers and versions, paging, incremental reads, rate limits, errors."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import httpx
import pytest

from clinicsync.retry import RetryPolicy
from clinicsync.sources.calcom import (
    CalcomClient,
    api_version_for,
    format_cursor,
    parse_instant,
)
from clinicsync.sources.errors import (
    SourceAuthError,
    SourceBadResponse,
    SourceConfigError,
    SourceNotFound,
    SourceRateLimited,
    SourceRequestRejected,
    SourceUnavailable,
)
from clinicsync.sources.ratelimit import RequestBudget

KEY = "cal_test_fake_key_for_unit_tests"
BASE = "https://api.cal.com/v2"
FAST = RetryPolicy(max_attempts=4, base_delay_s=0.001, max_delay_s=0.005)
NOW = datetime(2025, 3, 7, 10, 0, 0, tzinfo=UTC)


class FakeTime:
    def __init__(self, wall: datetime = NOW) -> None:
        self.mono = 1000.0
        self.offset = wall.timestamp() - self.mono
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.mono

    def wall(self) -> float:
        return self.mono + self.offset

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.mono += seconds


class Recorder:
    """Replays scripted responses (the last one repeats) and records the requests."""

    def __init__(self, *responses):
        self.responses = list(responses)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        item = self.responses.pop(0) if len(self.responses) > 1 else self.responses[0]
        if isinstance(item, Exception):
            raise item
        return item(request) if callable(item) else item


def ok(data, **headers) -> httpx.Response:
    headers.setdefault("Date", format_datetime(NOW, usegmt=True))
    return httpx.Response(200, json={"status": "success", "data": data}, headers=headers)


def envelope_error(status: int, code: str, message: str, details=None, **headers) -> httpx.Response:
    error = {"code": code, "message": message}
    if details is not None:
        error["details"] = {"message": details, "error": "Bad Request", "statusCode": status}
    body = {"status": "error", "timestamp": "2025-03-07T10:00:00.000Z", "path": "/v2/bookings", "error": error}
    return httpx.Response(status, json=body, headers=headers)


def make_client(handler, *, fake: FakeTime | None = None, **kwargs) -> CalcomClient:
    fake = fake or FakeTime()
    kwargs.setdefault("retry", FAST)
    kwargs.setdefault("requests_per_minute", None)
    return CalcomClient(
        KEY,
        transport=httpx.MockTransport(handler),
        clock=fake.clock,
        wall_clock=fake.wall,
        sleep=fake.sleep,
        **kwargs,
    )


def stamp(minutes: float) -> str:
    return format_cursor(NOW + timedelta(minutes=minutes))


def booking(n: int, *, created: float, updated: float | None) -> dict:
    return {
        "id": n,
        "uid": f"uid{n:03d}",
        "status": "accepted",
        "createdAt": stamp(created),
        "updatedAt": stamp(updated) if updated is not None else None,
    }


class FakeBookings:
    """A tiny /v2/bookings: the filters, sorts and take/skip paging the client uses, over a mutable list.

    `after_request(n)` runs after the n-th request is answered, so a test can edit bookings mid-listing."""

    def __init__(self, bookings: list[dict], *, strict_after: bool = False, after_request=None) -> None:
        self.bookings = bookings
        self.strict_after = strict_after  # `>` instead of `>=`: the client must work either way
        self.after_request = after_request
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        assert request.headers["cal-api-version"] == "2024-08-13"
        q = dict(request.url.params)
        rows = list(self.bookings)
        for param, field in (("afterUpdatedAt", "updatedAt"), ("afterCreatedAt", "createdAt")):
            if param in q:
                bound = parse_instant(q[param])
                rows = [r for r in rows if r[field] is not None and self._after(parse_instant(r[field]), bound)]
        for param, field in (("sortUpdatedAt", "updatedAt"), ("sortCreated", "createdAt")):
            if param in q:
                rows.sort(key=lambda r, f=field: (r[f] is None, r[f] or "", r["id"]))
        take, skip = int(q.get("take", 100)), int(q.get("skip", 0))
        page = rows[skip : skip + take]
        pagination = {
            "totalItems": len(rows),
            "remainingItems": max(0, len(rows) - skip - len(page)),
            "returnedItems": len(page),
            "itemsPerPage": take,
            "currentPage": skip // take + 1,
            "totalPages": -(-len(rows) // take),
            "hasNextPage": skip + len(page) < len(rows),
            "hasPreviousPage": skip > 0,
        }
        response = httpx.Response(
            200, json={"status": "success", "data": [dict(r) for r in page], "pagination": pagination}
        )
        if self.after_request is not None:
            self.after_request(len(self.requests), self)
        return response

    def _after(self, value: datetime, bound: datetime) -> bool:
        return value > bound if self.strict_after else value >= bound

    def params(self) -> list[dict[str, str]]:
        return [dict(r.url.params) for r in self.requests]


# -- configuration ---------------------------------------------------------------------------------------------


def test_base_urls_and_key_handling():
    assert CalcomClient(KEY).base_url == BASE
    assert CalcomClient(KEY, base_url="https://api.cal.eu/v2/").base_url == "https://api.cal.eu/v2"
    assert CalcomClient(KEY, base_url="https://cal.clinic.example/api/v2").base_url.endswith("/api/v2")
    assert CalcomClient(KEY, base_url="http://127.0.0.1:5555/v2").base_url == "http://127.0.0.1:5555/v2"
    with pytest.raises(SourceConfigError, match="https://"):
        CalcomClient(KEY, base_url="http://cal.clinic.example/v2")
    with pytest.raises(SourceConfigError, match=r"No Cal\.com API key"):
        CalcomClient("  ")
    assert KEY not in repr(CalcomClient(KEY))


@pytest.mark.parametrize(
    ("path", "version"),
    [
        ("/bookings", "2024-08-13"),
        ("/bookings/abc123", "2024-08-13"),
        ("/bookings/by-seat/seat1", "2024-08-13"),
        ("/event-types", "2024-06-14"),
        ("/event-types/7", "2024-06-14"),
        ("/event-types/7/webhooks", None),
        ("/schedules", "2024-06-11"),
        ("/schedules/default", "2024-06-11"),
        ("/slots", "2024-09-04"),
        ("/me", None),
        ("/teams", None),
        ("/teams/5/event-types", None),
        ("/webhooks/abc", None),
        ("/bookingsx", None),
    ],
)
def test_api_version_per_endpoint(path, version):
    assert api_version_for(path) == version


def test_each_read_sends_bearer_and_its_own_version():
    rec = Recorder(ok([]))
    client = make_client(rec)
    client.list_event_types()
    client.list_schedules()
    client.list_teams()
    list(client.iter_webhooks())
    list(client.iter_booking_pages())
    sent = {r.url.path: (r.headers["Authorization"], r.headers.get("cal-api-version")) for r in rec.requests}
    assert sent == {
        "/v2/event-types": (f"Bearer {KEY}", "2024-06-14"),
        "/v2/schedules": (f"Bearer {KEY}", "2024-06-11"),
        "/v2/teams": (f"Bearer {KEY}", None),
        "/v2/webhooks": (f"Bearer {KEY}", None),
        "/v2/bookings": (f"Bearer {KEY}", "2024-08-13"),
    }


def test_format_cursor_is_utc_with_milliseconds():
    local = datetime(2025, 3, 7, 21, 0, 0, 123456, tzinfo=UTC).astimezone()
    assert format_cursor(local) == "2025-03-07T21:00:00.123Z"
    with pytest.raises(ValueError):
        format_cursor(datetime(2025, 3, 7))
    assert parse_instant("2025-03-07T10:00:00Z") == parse_instant("2025-03-07T10:00:00.000+00:00")
    assert parse_instant(None) is None and parse_instant("soon") is None


@pytest.mark.parametrize("take", [0, 251])
def test_take_is_bounded(take):
    with pytest.raises(ValueError):
        list(make_client(Recorder(ok([]))).iter_bookings_changed_since(None, take=take))


# -- reading ---------------------------------------------------------------------------------------------------


def test_get_me():
    rec = Recorder(ok({"id": 7, "username": "ava", "email": "ava@clinic.example", "name": "Ava", "timeZone": "UTC"}))
    me = make_client(rec).get_me()
    assert (me.id, me.display_name, me.time_zone) == ("7", "Ava", "UTC")
    assert "cal-api-version" not in rec.requests[0].headers


def test_get_booking_one_series_or_missing():
    single = {"id": 1, "uid": "abc"}
    series = [{"id": 2, "uid": "r1", "recurringBookingUid": "s"}, {"id": 3, "uid": "r2", "recurringBookingUid": "s"}]
    rec = Recorder(ok(single), ok(series), envelope_error(404, "NotFoundException", "Booking with uid=zz not found"))
    client = make_client(rec)
    assert client.get_booking("abc") == [single]
    assert [b["uid"] for b in client.get_booking("s")] == ["r1", "r2"]
    assert client.get_booking("zz") == []
    with pytest.raises(ValueError):
        client.get_booking("../me")


def test_event_type_missing_is_none_and_lists_need_the_envelope():
    rec = Recorder(envelope_error(404, "NotFoundException", "Event type with id=9 not found"))
    assert make_client(rec).get_event_type(9) is None
    rec = Recorder(httpx.Response(200, json=[{"id": 1}]))
    with pytest.raises(SourceBadResponse, match="'data' envelope"):
        make_client(rec).list_event_types()
    rec = Recorder(httpx.Response(200, json={"status": "error", "data": None, "error": {"message": "nope"}}))
    with pytest.raises(SourceBadResponse, match="nope"):
        make_client(rec).list_teams()


def test_webhooks_page_until_a_short_page_and_ids_are_strings():
    full = [{"id": n, "subscriberUrl": "https://hooks.example.com"} for n in range(2)]
    rec = Recorder(ok(full), ok([{"id": "w9"}]))
    hooks = list(make_client(rec).iter_webhooks(take=2))
    assert [h["id"] for h in hooks] == ["0", "1", "w9"]
    assert [dict(r.url.params) for r in rec.requests] == [{"take": "2", "skip": "0"}, {"take": "2", "skip": "2"}]


def test_booking_pages_follow_take_and_skip_to_the_end():
    fake = FakeBookings([booking(n, created=n, updated=n) for n in range(5)])
    pages = list(make_client(fake).iter_booking_pages([("status", "upcoming")], take=2))
    assert [len(p.bookings) for p in pages] == [2, 2, 1]
    assert [(p["skip"], p["status"]) for p in fake.params()] == [
        ("0", "upcoming"),
        ("2", "upcoming"),
        ("4", "upcoming"),
    ]


def test_backfill_lists_every_booking_by_creation_with_keyset_restarts():
    rows = [booking(n, created=n, updated=None if n % 3 == 0 else n + 0.5) for n in range(7)]
    fake = FakeBookings(rows)
    client = make_client(fake)
    got = [b["uid"] for b in client.iter_bookings_changed_since(None, take=3)]
    assert got == [f"uid{n:03d}" for n in range(7)]  # bookings with an empty updatedAt included
    params = fake.params()
    assert params[0] == {"sortCreated": "asc", "take": "3", "skip": "0"}
    # The next page starts a millisecond before the last booking read, not at an offset.
    assert params[1] == {"afterCreatedAt": "2025-03-07T10:01:59.999Z", "sortCreated": "asc", "take": "3", "skip": "0"}
    assert client.last_total_entries == 7


def test_one_run_s_client_reads_its_user_event_types_and_every_booking_once():
    """A client serves one sync run, whose four streams all ask for the key's user (zone, cursor clock), the event
    types and teams, and every booking: each is read once. A listing stopped half way is not kept."""
    rows = [booking(n, created=n, updated=n) for n in range(5)]
    fake = FakeBookings(rows)
    me = ok({"id": 7, "username": "ava", "email": "ava@clinic.example", "name": "Ava", "timeZone": "UTC"})

    def route(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v2/me":
            return me
        if request.url.path == "/v2/bookings":
            return fake(request)
        return ok([{"id": 1}])

    paths: list[str] = []
    client = make_client(lambda request: paths.append(request.url.path) or route(request))
    half = client.iter_bookings_changed_since(None, take=2)
    next(half)
    half.close()  # a listing stopped half way (a cancelled run) is not kept
    assert paths == ["/v2/bookings"]
    listings: list[int] = []
    for _ in range(3):
        assert client.get_me().time_zone == "UTC"
        assert client.probe() == NOW
        assert [b["uid"] for b in client.iter_bookings_changed_since(None, take=2)] == [b["uid"] for b in rows]
        client.list_event_types(), client.list_teams(), client.list_team_event_types(1)
        listings.append(paths.count("/v2/bookings"))
    assert client.last_total_entries == 5
    assert paths.count("/v2/me") == 1
    assert listings[0] > 2 and listings == [listings[0]] * 3, "the stopped listing was read again, then kept"
    assert paths.count("/v2/event-types") == paths.count("/v2/teams") == paths.count("/v2/teams/1/event-types") == 1
    list(client.iter_bookings_changed_since(NOW, take=2))
    assert paths.count("/v2/bookings") > listings[0], "another cursor is another listing"


@pytest.mark.parametrize("strict_after", [False, True])
def test_an_edit_during_the_listing_loses_nothing(strict_after):
    rows = [booking(n, created=-600 + n, updated=n) for n in range(8)]  # all created before the cursor

    def edit_first_booking(n: int, fake: FakeBookings) -> None:
        if n == 1:  # after the first page: the first booking moves to the end, as an offset listing would lose uid003
            fake.bookings[0] = {**fake.bookings[0], "updatedAt": stamp(100)}

    fake = FakeBookings(rows, strict_after=strict_after, after_request=edit_first_booking)
    got = [b["uid"] for b in make_client(fake).iter_bookings_changed_since(NOW - timedelta(hours=1), take=3)]
    assert sorted(set(got)) == [f"uid{n:03d}" for n in range(8)]
    assert got.count("uid000") == 2  # read again after its edit: a second version, which callers must dedupe


def test_incremental_reads_updated_then_created_and_yields_each_booking_once():
    rows = [
        booking(1, created=-600, updated=-600),  # old and untouched: not read
        booking(2, created=-600, updated=5),  # edited since the cursor
        booking(3, created=6, updated=None),  # created since, never updated: only the created pass finds it
        booking(4, created=7, updated=8),  # created and updated since: found by both, yielded once
    ]
    fake = FakeBookings(rows)
    got = [b["uid"] for b in make_client(fake).iter_bookings_changed_since(NOW)]
    assert got == ["uid002", "uid004", "uid003"]
    params = fake.params()
    assert params[0] == {
        "afterUpdatedAt": "2025-03-07T10:00:00.000Z",
        "sortUpdatedAt": "asc",
        "take": "250",
        "skip": "0",
    }
    assert params[1] == {"afterCreatedAt": "2025-03-07T10:00:00.000Z", "sortCreated": "asc", "take": "250", "skip": "0"}
    assert not any("status" in p for p in params)  # every status: cancelled and rejected bookings matter too


def test_a_page_all_within_one_millisecond_pages_by_offset():
    rows = [booking(n, created=0, updated=0) for n in range(5)] + [booking(9, created=1, updated=1)]
    fake = FakeBookings(rows)
    got = [b["uid"] for b in make_client(fake).iter_bookings_changed_since(NOW, take=2)]
    assert got == ["uid000", "uid001", "uid002", "uid003", "uid004", "uid009"]
    skips = [(p["afterUpdatedAt"], p["skip"]) for p in fake.params() if "afterUpdatedAt" in p]
    assert skips[:3] == [
        ("2025-03-07T10:00:00.000Z", "0"),
        ("2025-03-07T10:00:00.000Z", "2"),
        ("2025-03-07T10:00:00.000Z", "4"),
    ]


def test_bookings_without_a_uid_are_skipped():
    page = {"status": "success", "data": [{"id": 1}, {"id": 2, "uid": "b"}], "pagination": {"hasNextPage": False}}
    got = list(make_client(Recorder(httpx.Response(200, json=page))).iter_bookings_changed_since(None))
    assert [b["uid"] for b in got] == ["b"]


def test_an_empty_page_claiming_more_ends_the_listing():
    page = {"status": "success", "data": [], "pagination": {"hasNextPage": True}}
    rec = Recorder(httpx.Response(200, json=page))
    assert list(make_client(rec).iter_bookings_changed_since(None)) == []
    assert len(rec.requests) == 1


# -- rate limits -----------------------------------------------------------------------------------------------


def throttled(**headers) -> httpx.Response:
    headers.setdefault("Date", format_datetime(NOW, usegmt=True))
    body = {
        "status": "error",
        "error": {"code": "ThrottlerException", "message": "CustomThrottlerGuard - Too many requests."},
    }
    return httpx.Response(429, json=body, headers=headers)


def test_a_block_is_waited_out_from_the_suffixed_reset_header():
    fake = FakeTime()
    limited = throttled(**{"X-RateLimit-Remaining-Default": "0", "X-RateLimit-Reset-Default": "57"})
    rec = Recorder(limited, ok([]))
    assert make_client(rec, fake=fake).list_teams() == []
    assert len(rec.requests) == 2
    assert sum(fake.sleeps) == pytest.approx(57, abs=0.05)


def test_a_reset_given_as_a_unix_time_is_read_against_the_server_date():
    fake = FakeTime(wall=NOW + timedelta(minutes=5))  # this PC's clock is five minutes fast
    rec = Recorder(throttled(**{"X-RateLimit-Reset-Default": str(int(NOW.timestamp()) + 20)}), ok([]))
    make_client(rec, fake=fake).list_teams()
    assert sum(fake.sleeps) == pytest.approx(20, abs=0.05)


def test_a_429_without_headers_waits_out_the_documented_block():
    fake = FakeTime()
    rec = Recorder(throttled(), ok([]))
    make_client(rec, fake=fake).list_teams()
    assert sum(fake.sleeps) == pytest.approx(60, abs=0.05)


def test_a_used_up_allowance_pauses_before_the_request_that_would_block_the_key():
    fake = FakeTime()
    budget = RequestBudget(None, clock=fake.clock, sleep=fake.sleep, wall_clock=fake.wall)
    last = ok([], **{"X-RateLimit-Remaining-Default": "0", "X-RateLimit-Reset-Default": "12"})
    rec = Recorder(ok([], **{"X-RateLimit-Remaining-Default": "1", "X-RateLimit-Reset-Default": "13"}), last, ok([]))
    client = make_client(rec, fake=fake, budget=budget)
    client.list_schedules()
    assert budget.paused_for() == 0
    client.list_schedules()
    assert budget.paused_for() == pytest.approx(12, abs=0.05)
    client.list_schedules()
    assert sum(fake.sleeps) == pytest.approx(12, abs=0.05) and len(rec.requests) == 3


def test_one_tier_left_is_enough_to_go_on():
    rec = Recorder(ok([], **{"X-RateLimit-Remaining-Default": "0", "X-RateLimit-Remaining-Burst": "3"}))
    client = make_client(rec)
    client.list_teams()
    assert client.budget.paused_for() == 0


def test_persistent_429_gives_up_as_rate_limited():
    rec = Recorder(throttled(**{"X-RateLimit-Reset-Default": "1"}))
    with pytest.raises(SourceRateLimited, match="even after 4 tries"):
        make_client(rec).list_teams()


# -- errors ----------------------------------------------------------------------------------------------------


def test_the_error_envelope_becomes_a_clear_message():
    rec = Recorder(
        envelope_error(
            400,
            "BadRequestException",
            "take must not be greater than 250",
            ["take must not be greater than 250", "afterUpdatedAt must be a valid ISO 8601 date string"],
            **{"X-Request-Id": "req-123"},
        )
    )
    with pytest.raises(SourceRequestRejected) as raised:
        list(make_client(rec).iter_booking_pages())
    assert str(raised.value) == (
        "Cal.com rejected the request (HTTP 400, BadRequestException): take must not be greater than 250; "
        "afterUpdatedAt must be a valid ISO 8601 date string (Cal.com request id req-123)"
    )
    assert raised.value.status == 400 and len(rec.requests) == 1


def test_a_validation_failure_says_what_failed_not_bad_request_exception():
    details = ["take must not be greater than 250", "sortUpdatedAt must be one of the following values: asc, desc"]
    rec = Recorder(envelope_error(400, "BadRequestException", "Bad Request Exception", details))
    with pytest.raises(SourceRequestRejected) as raised:
        list(make_client(rec).iter_booking_pages())
    assert str(raised.value) == (
        "Cal.com rejected the request (HTTP 400, BadRequestException): take must not be greater than 250; "
        "sortUpdatedAt must be one of the following values: asc, desc"
    )


def test_a_bare_nestjs_error_body_is_read_too():
    body = {"statusCode": 400, "message": ["sortUpdatedAt must be one of: asc, desc"], "error": "Bad Request"}
    with pytest.raises(SourceRequestRejected, match="sortUpdatedAt must be one of"):
        make_client(Recorder(httpx.Response(400, json=body))).list_teams()


def test_the_key_is_scrubbed_from_cal_com_words():
    rec = Recorder(envelope_error(422, "UnprocessableEntityException", f"key {KEY} cannot do that"))
    with pytest.raises(SourceRequestRejected) as raised:
        make_client(rec).list_teams()
    assert KEY not in str(raised.value) and "[redacted]" in str(raised.value)


def test_not_found_quotes_cal_com():
    rec = Recorder(envelope_error(404, "NotFoundException", "Team with id=5 not found"))
    with pytest.raises(SourceNotFound, match="Team with id=5 not found"):
        make_client(rec).list_team_event_types(5)


@pytest.mark.parametrize("status", [401, 498])
def test_rejected_or_expired_key_is_an_auth_error_not_retried(status):
    rec = Recorder(envelope_error(status, "UnauthorizedException", "Invalid API Key"))
    with pytest.raises(SourceAuthError) as raised:
        make_client(rec).get_me()
    assert raised.value.status == status and len(rec.requests) == 1


def test_server_errors_are_retried_then_reported():
    rec = Recorder(httpx.Response(502, text="<html>Bad gateway</html>"))
    with pytest.raises(SourceUnavailable, match=r"Cal\.com could not be reached.*HTTP 502") as raised:
        make_client(rec).list_teams()
    assert len(rec.requests) == FAST.max_attempts
    assert raised.value.__cause__ is None and raised.value.__context__ is None
    rec = Recorder(httpx.Response(503), httpx.ConnectError("refused"), ok([]))
    assert make_client(rec).list_teams() == []


def test_connect_failures_name_the_address_to_check():
    with pytest.raises(SourceUnavailable, match=r"Cal\.com address"):
        make_client(Recorder(httpx.ConnectError("refused"))).list_teams()


def test_malformed_json_and_redirects():
    with pytest.raises(SourceBadResponse, match=r"not valid JSON.*Maintenance"):
        make_client(Recorder(httpx.Response(200, text="<html>Maintenance</html>"))).list_teams()
    redirect = httpx.Response(302, headers={"Location": "https://elsewhere.example/v2/teams"})
    with pytest.raises(SourceConfigError, match="ending in /v2"):
        make_client(Recorder(redirect)).list_teams()


def test_json_bodies_are_never_sent_on_reads():
    rec = Recorder(ok([]))
    make_client(rec).list_schedules()
    assert rec.requests[0].content == b"" and "content-type" not in rec.requests[0].headers
