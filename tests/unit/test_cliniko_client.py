"""ClinikoClient against httpx.MockTransport: routing, headers, pagination, filters, retries and errors."""

from __future__ import annotations

import base64
import json
import socket
from datetime import UTC, datetime, timedelta, timezone
from email.utils import format_datetime

import httpx
import pytest

from clinicsync.retry import RetryPolicy
from clinicsync.sources.cliniko import ClinikoAccount, ClinikoClient, link_id, shard_for_key
from clinicsync.sources.errors import (
    SourceAuthError,
    SourceBadResponse,
    SourceConfigError,
    SourceError,
    SourcePermissionError,
    SourceRateLimited,
    SourceRequestRejected,
    SourceUnavailable,
)
from clinicsync.sources.ratelimit import RequestBudget
from clinicsync.sources.urls import validate_base_url

KEY = "fake_cliniko_key_for_tests-au2"
EMAIL = "manager@clinic.example"
BASE = "https://api.au2.cliniko.com/v1"
FAST = RetryPolicy(max_attempts=4, base_delay_s=0.001, max_delay_s=0.005)
NOW = datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC)


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
    """A MockTransport handler that replays scripted responses (or exceptions) and records requests."""

    def __init__(self, *responses):
        self.responses = list(responses)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        item = self.responses.pop(0) if len(self.responses) > 1 else self.responses[0]
        if isinstance(item, Exception):
            raise item
        if callable(item):
            return item(request)
        return item


def ok(body, **headers) -> httpx.Response:
    headers.setdefault("Date", format_datetime(NOW, usegmt=True))
    return httpx.Response(200, json=body, headers=headers)


def make_client(handler, *, key=KEY, fake: FakeTime | None = None, **kwargs) -> ClinikoClient:
    fake = fake or FakeTime()
    kwargs.setdefault("retry", FAST)
    kwargs.setdefault("requests_per_minute", None)
    return ClinikoClient(
        key,
        contact_email=EMAIL,
        transport=httpx.MockTransport(handler),
        clock=fake.clock,
        wall_clock=fake.wall,
        sleep=fake.sleep,
        **kwargs,
    )


def page(records, next_url=None, total=None):
    links = {"self": "x"}
    if next_url:
        links["next"] = next_url
    return ok({"patients": records, "total_entries": total if total is not None else len(records), "links": links})


# -- shard and base URL ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "shard", "expected"),
    [
        ("abcdef-uk2", None, "uk2"),
        ("abcdef-AU3", None, "au3"),
        ("abcdef-ca12", "au1", "ca12"),  # the key's own suffix wins
        ("abcdef", None, "au1"),
        ("abcdef", "eu1", "eu1"),
        ("abcdef", "UK1", "uk1"),
    ],
)
def test_shard_selection(key, shard, expected):
    assert shard_for_key(key, shard) == expected


@pytest.mark.parametrize("shard", ["zz", "au123", "a1", "au-1", "../x"])
def test_invalid_shard_is_refused(shard):
    with pytest.raises(SourceConfigError, match="region"):
        ClinikoClient("abcdef", contact_email=EMAIL, shard=shard)


def test_base_url_comes_from_the_key_shard():
    assert ClinikoClient(KEY, contact_email=EMAIL).base_url == BASE
    assert ClinikoClient("plainkey", contact_email=EMAIL).base_url == "https://api.au1.cliniko.com/v1"


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:9/v1",
        "http://localhost",
        "http://localhost:8000/v1/",
        "http://[::1]:80/v1",
        "https://cliniko.example/v1/",
    ],
)
def test_allowed_base_urls(url):
    assert validate_base_url(url, "Cliniko") == url.rstrip("/")
    assert ClinikoClient(KEY, contact_email=EMAIL, base_url=url).base_url == url.rstrip("/")


@pytest.mark.parametrize(
    "url",
    [
        "http://example.com",
        "http://127.0.0.1.evil.example/v1",
        "ftp://localhost/v1",
        "https://",
        "not a url",
        "https://user:pw@api.au1.cliniko.com/v1",
        "https://api.au1.cliniko.com/v1?x=1",
        "https://host:99999/v1",
    ],
)
def test_refused_base_urls(url):
    with pytest.raises(SourceConfigError) as raised:
        ClinikoClient(KEY, contact_email=EMAIL, base_url=url)
    assert "Cliniko" in str(raised.value)


def test_plain_http_refusal_explains_why():
    with pytest.raises(SourceConfigError, match=r"must start with https://.*unencrypted"):
        validate_base_url("http://example.com", "Stripe")


@pytest.mark.parametrize("email", ["", "   ", "manager", "manager@clinic", "a b@clinic.example"])
def test_client_needs_a_plausible_contact_email(email):
    with pytest.raises(SourceConfigError, match="contact email"):
        ClinikoClient(KEY, contact_email=email)


def test_empty_key_is_refused():
    with pytest.raises(SourceConfigError, match="No Cliniko API key"):
        ClinikoClient("  ", contact_email=EMAIL)


def test_repr_does_not_show_the_key():
    assert KEY not in repr(ClinikoClient(KEY, contact_email=EMAIL))


# -- headers ------------------------------------------------------------------------------------------------------


def test_headers_on_reads():
    rec = Recorder(ok({"account": {"id": "1", "name": "Clinic"}}))
    make_client(rec).get_account()
    headers = rec.requests[0].headers
    assert headers["Authorization"] == "Basic " + base64.b64encode(f"{KEY}:".encode()).decode()
    assert headers["User-Agent"] == f"ClinicSync ({EMAIL})"
    assert headers["Accept"] == "application/json"
    assert "Content-Type" not in headers
    assert str(rec.requests[0].url) == f"{BASE}/settings/public"


def test_patch_sends_json_with_content_type():
    rec = Recorder(ok({"id": 42, "old_reference_id": "cus_1"}))
    result = make_client(rec).update_patient("42", {"old_reference_id": "cus_1"})
    request = rec.requests[0]
    assert request.method == "PATCH"
    assert request.url.path == "/v1/patients/42"
    assert request.headers["Content-Type"] == "application/json"
    assert json.loads(request.content) == {"old_reference_id": "cus_1"}
    assert result["id"] == "42"  # ids always come back as strings


def test_ids_in_paths_must_be_digits():
    rec = Recorder(ok({}))
    with pytest.raises(ValueError):
        make_client(rec).get_patient("../settings")
    assert rec.requests == []


# -- pagination and filters ---------------------------------------------------------------------------------------


def test_pagination_follows_next_and_stops():
    rec = Recorder(
        page([{"id": "1"}, {"id": "2"}], f"{BASE}/patients?page=2&per_page=100", total=5),
        page([{"id": "3"}, {"id": "4"}], f"{BASE}/patients?page=3&per_page=100", total=5),
        page([{"id": "5"}], total=5),
    )
    pages = list(make_client(rec).iter_pages("/patients", {"sort": "id"}))
    assert [r["id"] for p in pages for r in p.records] == ["1", "2", "3", "4", "5"]
    assert [p.total_entries for p in pages] == [5, 5, 5]
    assert len(rec.requests) == 3
    first, second = rec.requests[0].url, rec.requests[1].url
    assert first.params["per_page"] == "100" and first.params["sort"] == "id"
    assert str(second) == f"{BASE}/patients?page=2&per_page=100"  # followed verbatim


def test_pages_are_fetched_lazily():
    rec = Recorder(page([{"id": "1"}], f"{BASE}/patients?page=2"), page([{"id": "2"}]))
    pages = make_client(rec).iter_pages("/patients")
    next(pages)
    assert len(rec.requests) == 1


@pytest.mark.parametrize(
    "next_url",
    [
        "https://evil.example/v1/patients?page=2",
        "http://api.au2.cliniko.com/v1/patients?page=2",
        "https://api.au2.cliniko.com:8443/v1/patients?page=2",
        "https://api.au1.cliniko.com/v1/patients?page=2",
    ],
)
def test_next_link_to_another_origin_is_refused(next_url):
    rec = Recorder(page([{"id": "1"}], next_url), page([{"id": "2"}]))
    with pytest.raises(SourceBadResponse, match="another server"):
        list(make_client(rec).iter_pages("/patients"))
    assert len(rec.requests) == 1  # the key never went there


def test_next_link_loop_is_refused():
    rec = Recorder(page([{"id": "1"}], f"{BASE}/patients?per_page=100"))
    with pytest.raises(SourceBadResponse, match="already read"):
        list(make_client(rec).iter_pages("/patients"))


def test_missing_records_key_is_a_bad_response():
    rec = Recorder(ok({"invoices": [], "links": {}}))
    with pytest.raises(SourceBadResponse, match="'patients'"):
        list(make_client(rec).iter_pages("/patients"))


def test_incremental_pass_filters_and_sorts():
    rec = Recorder(page([{"id": 7}]))
    cursor = datetime(2024, 1, 2, 13, 4, 5, 999_000, tzinfo=timezone(timedelta(hours=10)))
    records = list(make_client(rec).iter_patients_changed_since(cursor))
    url = rec.requests[0].url
    assert records == [{"id": "7"}]
    assert url.params.get_list("q[]") == ["updated_at:>=2024-01-02T03:04:05Z"]
    assert url.params["sort"] == "updated_at:asc,id:asc"
    assert url.params["per_page"] == "100"
    assert b"q%5B%5D=updated_at%3A%3E%3D2024-01-02T03%3A04%3A05Z" in url.query


def test_full_read_without_a_cursor_is_still_sorted():
    rec = Recorder(page([]))
    assert list(make_client(rec).iter_patients_changed_since(None)) == []
    url = rec.requests[0].url
    assert url.params.get_list("q[]") == []
    assert url.params["sort"] == "updated_at:asc,id:asc"


def test_archived_pass_sends_two_repeated_q_params():
    rec = Recorder(page([{"id": "9", "archived_at": "2024-01-03T00:00:00Z"}]))
    list(make_client(rec).iter_archived_patients_changed_since(NOW))
    url = rec.requests[0].url
    assert url.params.get_list("q[]") == ["archived_at:*", "updated_at:>=2024-05-06T07:08:09Z"]
    assert url.query.count(b"q%5B%5D=") == 2


ARCHIVED = {"archived_at": "2024-01-03T00:00:00Z"}
LIVE = {"archived_at": None}


def test_live_and_archived_reads_the_archived_pass_first_and_skips_the_live_pass_when_it_listed_live_records():
    rec = Recorder(page([{"id": "9", **ARCHIVED}, {"id": "10", **LIVE}]), page([{"id": "99", **LIVE}]))
    records = list(make_client(rec).iter_live_and_archived("/patients", NOW))
    assert [r["id"] for r in records] == ["9", "10"]
    assert len(rec.requests) == 1, "the archived_at:* pass listed a live patient: it stands for the live pass"
    assert rec.requests[0].url.params.get_list("q[]") == ["archived_at:*", "updated_at:>=2024-05-06T07:08:09Z"]


@pytest.mark.parametrize(
    "first_pass",
    [
        [{"id": "9", **ARCHIVED}],  # archived records only: `*` may list nothing else
        [],  # nothing changed: no evidence either way
        [{"id": "9"}],  # no archived_at at all: proves nothing
    ],
)
def test_live_and_archived_reads_the_live_pass_too_unless_a_live_record_was_listed(first_pass):
    rec = Recorder(page(first_pass), page([{"id": "10", **LIVE}]))
    records = list(make_client(rec).iter_live_and_archived("/patients", None))
    assert [r["id"] for r in records] == [*(r["id"] for r in first_pass), "10"]
    assert [r.url.params.get_list("q[]") for r in rec.requests] == [["archived_at:*"], []]
    assert all(r.url.params["sort"] == "updated_at:asc,id:asc" for r in rec.requests)


def test_live_and_archived_keeps_the_callers_filters_in_both_passes():
    rec = Recorder(page([{"id": "9", **ARCHIVED}]), page([{"id": "10", **LIVE}]))
    records = list(make_client(rec).iter_live_and_archived("/patients", None, filters=[("q[]", "id:=9,10")]))
    assert [r["id"] for r in records] == ["9", "10"]
    assert [r.url.params.get_list("q[]") for r in rec.requests] == [["id:=9,10", "archived_at:*"], ["id:=9,10"]]


def test_naive_cursor_is_refused():
    with pytest.raises(ValueError, match="timezone-aware"):
        list(make_client(Recorder(page([]))).iter_patients_changed_since(datetime(2024, 1, 1)))


def test_get_patient_includes_archived_and_maps_404_to_none():
    rec = Recorder(httpx.Response(404, text="Not Found"))
    assert make_client(rec).get_patient("123") is None
    assert rec.requests[0].url.path == "/v1/patients/123"
    assert rec.requests[0].url.params.get_list("q[]") == ["archived_at:*"]


# -- rate limits and retries ---------------------------------------------------------------------------------------


def limited(reset: float | str | None, *, date: datetime | None = NOW, **headers) -> httpx.Response:
    if reset is not None:
        headers["X-RateLimit-Reset"] = str(reset)
    if date is not None:
        headers["Date"] = format_datetime(date, usegmt=True)
    return httpx.Response(429, text="Too Many Requests", headers=headers)


def test_429_waits_until_the_reset_then_succeeds():
    fake = FakeTime()
    rec = Recorder(limited(NOW.timestamp() + 7), ok({"account": {"id": "1"}}))
    account = make_client(rec, fake=fake).get_account()
    assert account.id == "1"
    assert len(rec.requests) == 2
    assert sum(fake.sleeps) == pytest.approx(7.0, abs=0.05)


def test_429_reset_is_measured_against_the_server_date_not_the_pc_clock():
    fake = FakeTime(wall=NOW + timedelta(minutes=5))  # this PC's clock is five minutes fast
    rec = Recorder(limited(NOW.timestamp() + 4), ok({"account": {"id": "1"}}))
    make_client(rec, fake=fake).get_account()
    assert sum(fake.sleeps) == pytest.approx(4.0, abs=0.05)


def test_429_without_date_uses_the_local_clock():
    fake = FakeTime()
    rec = Recorder(limited(NOW.timestamp() + 3, date=None), ok({"account": {"id": "1"}}))
    make_client(rec, fake=fake).get_account()
    assert sum(fake.sleeps) == pytest.approx(3.0, abs=0.05)


def test_429_with_garbage_reset_falls_back_to_retry_after():
    fake = FakeTime()
    rec = Recorder(limited("soon", **{"Retry-After": "2"}), ok({"account": {"id": "1"}}))
    make_client(rec, fake=fake).get_account()
    assert sum(fake.sleeps) == pytest.approx(2.0, abs=0.05)


def test_429_with_millisecond_reset_falls_back_to_backoff():
    fake = FakeTime()
    rec = Recorder(limited(NOW.timestamp() * 1000), ok({"account": {"id": "1"}}))
    make_client(rec, fake=fake).get_account()
    assert 0 < sum(fake.sleeps) < 0.01


def test_429_pauses_every_user_of_a_shared_budget():
    fake = FakeTime()
    budget = RequestBudget(None, clock=fake.clock, sleep=fake.sleep, wall_clock=fake.wall)
    one_try = RetryPolicy(max_attempts=1, base_delay_s=0.001)
    first = make_client(Recorder(limited(NOW.timestamp() + 10)), fake=fake, budget=budget, retry=one_try)
    with pytest.raises(SourceRateLimited) as raised:
        first.get_account()
    assert KEY not in str(raised.value)
    assert budget.paused_for() == pytest.approx(10, abs=0.05)
    second = make_client(Recorder(ok({"account": {"id": "1"}})), fake=fake, budget=budget)
    second.get_account()
    assert sum(fake.sleeps) == pytest.approx(10, abs=0.05)  # the other client waited without being told


def test_server_error_then_success():
    fake = FakeTime()
    rec = Recorder(httpx.Response(503, text="<html>down</html>"), ok({"account": {"id": "1"}}))
    assert make_client(rec, fake=fake).get_account().id == "1"
    assert len(rec.requests) == 2 and len(fake.sleeps) == 1


@pytest.mark.parametrize(
    "error",
    [httpx.ReadTimeout("read timed out"), httpx.ConnectError("refused"), httpx.RemoteProtocolError("reset")],
)
def test_network_failure_then_success(error):
    rec = Recorder(error, ok({"account": {"id": "1"}}))
    assert make_client(rec).get_account().id == "1"
    assert len(rec.requests) == 2


def test_retries_exhausted_is_unavailable():
    rec = Recorder(httpx.Response(502, text="Bad Gateway"))
    with pytest.raises(SourceUnavailable) as raised:
        make_client(rec).get_account()
    assert len(rec.requests) == FAST.max_attempts
    assert str(raised.value).startswith("Cliniko could not be reached:")
    assert "HTTP 502" in str(raised.value)
    # The httpx request (with its auth header) is not attached anywhere.
    assert raised.value.__cause__ is None and raised.value.__context__ is None


def test_timeouts_exhausted_say_so():
    rec = Recorder(httpx.ConnectTimeout("timed out"))
    with pytest.raises(SourceUnavailable, match="internet connection") as raised:
        make_client(rec).get_account()
    assert raised.value.__cause__ is None and raised.value.__context__ is None


def test_persistent_429_gives_up_as_rate_limited():
    rec = Recorder(limited(NOW.timestamp() + 1))
    with pytest.raises(SourceRateLimited, match="even after 4 tries"):
        make_client(rec).get_account()
    assert len(rec.requests) == FAST.max_attempts


# -- errors -----------------------------------------------------------------------------------------------------


def test_401_is_an_auth_error_without_the_key():
    rec = Recorder(httpx.Response(401, text=f"HTTP Basic: Access denied for {KEY}"))
    with pytest.raises(SourceAuthError) as raised:
        make_client(rec).get_account()
    message = str(raised.value)
    assert message == (
        "Cliniko rejected the API key (HTTP 401). Check the key in Connections; it may have been revoked."
    )
    assert KEY not in message
    assert len(rec.requests) == 1  # not retried


def test_403_names_what_was_refused():
    rec = Recorder(httpx.Response(403, json={"message": "Forbidden"}))
    with pytest.raises(SourcePermissionError, match="the clinic settings") as raised:
        make_client(rec).get_settings()
    assert raised.value.status == 403
    assert len(rec.requests) == 1


def test_422_body_is_surfaced():
    body = {"message": "Validation Failed", "errors": {"email": "is invalid", "first_name": ["can't be blank"]}}
    rec = Recorder(httpx.Response(422, json=body))
    with pytest.raises(SourceRequestRejected) as raised:
        make_client(rec).update_patient("5", {"email": "nope"})
    assert str(raised.value) == (
        "Cliniko rejected the request (HTTP 422): Validation Failed — email: is invalid, first name: can't be blank"
    )
    assert raised.value.field_errors == {"email": "is invalid", "first_name": "can't be blank"}
    assert len(rec.requests) == 1


def test_plain_text_4xx_is_surfaced_and_scrubbed():
    rec = Recorder(httpx.Response(400, text=f"This column is not searchable. key={KEY}"))
    with pytest.raises(SourceError) as raised:
        list(make_client(rec).iter_pages("/patients"))
    assert "This column is not searchable." in str(raised.value)
    assert KEY not in str(raised.value)
    assert KEY.rsplit("-", 1)[0] not in str(raised.value)


def test_malformed_json_is_a_bad_response_with_an_excerpt():
    rec = Recorder(httpx.Response(200, text="<html>Maintenance</html>"))
    with pytest.raises(SourceBadResponse, match=r"not valid JSON.*Maintenance"):
        make_client(rec).get_account()
    assert len(rec.requests) == 1


def test_redirects_are_not_followed():
    rec = Recorder(httpx.Response(301, headers={"Location": "https://elsewhere.example/v1/settings/public"}))
    with pytest.raises(SourceConfigError, match="redirected"):
        make_client(rec).get_account()
    assert len(rec.requests) == 1


# -- dates, account, links -------------------------------------------------------------------------------------


def test_date_header_is_parsed_and_probe_returns_it():
    rec = Recorder(ok({"account": {"id": "1"}}, Date="Mon, 06 May 2024 07:08:09 GMT"))
    client = make_client(rec)
    assert client.server_date() is None
    assert client.probe() == NOW
    assert client.last_response_date == NOW and client.last_response_date.tzinfo is not None
    assert rec.requests[0].url.path == "/v1/settings/public"


def test_a_sync_reads_the_account_and_its_clock_in_one_request_and_businesses_once():
    """The account read that starts a sync gives the first stream's probe its clock (a later probe, or one long
    after, asks again); the businesses are listed once for every stream that needs them."""
    businesses = {"businesses": [{"id": "1", "time_zone_identifier": "Australia/Perth"}], "links": {"self": "x"}}
    rec = Recorder(
        lambda request: ok(businesses) if request.url.path.endswith("/businesses") else ok({"account": {"id": "1"}})
    )
    fake = FakeTime()
    client = make_client(rec, fake=fake)
    client.get_account()
    assert client.probe() == NOW and len(rec.requests) == 1
    client.probe()
    assert len(rec.requests) == 2  # the account's clock is taken once
    client.get_account()
    fake.mono += 61
    client.probe()
    assert [r.url.path for r in rec.requests] == ["/v1/settings/public"] * 4  # too old to stand for the listing's
    assert client.get_businesses() == client.get_businesses() == businesses["businesses"]
    assert len(rec.requests) == 5


def test_businesses_refused_are_asked_once():
    rec = Recorder(httpx.Response(403, json={}))
    client = make_client(rec)
    for _ in range(2):
        with pytest.raises(SourcePermissionError):
            client.get_businesses()
    assert len(rec.requests) == 1


def test_probe_without_a_date_is_a_bad_response():
    rec = Recorder(httpx.Response(200, json={"account": {"id": "1"}}))
    with pytest.raises(SourceBadResponse, match="Date"):
        make_client(rec).probe()


def test_get_account():
    body = {"account": {"id": "77", "name": "Good Health", "country_code": "AU", "currency_symbol": "$"}}
    account = make_client(Recorder(ok(body))).get_account()
    assert account == ClinikoAccount(id="77", name="Good Health", shard="au2", country_code="AU", currency_symbol="$")


@pytest.mark.parametrize(
    ("obj", "expected"),
    [
        ({"links": {"self": "https://api.au1.cliniko.com/v1/patients/836447129235883061"}}, "836447129235883061"),
        ({"links": {"self": "https://api.au1.cliniko.com/v1/patients/12/"}}, "12"),
        ({"links": {"self": "https://api.au1.cliniko.com/v1/patients/12?x=1"}}, "12"),
        ({"links": {}}, None),
        ({}, None),
        (None, None),
    ],
)
def test_link_id(obj, expected):
    assert link_id(obj) == expected


# -- keyset paging of changed records ------------------------------------------------------------------------


def patient(pid: str, updated: str) -> dict:
    return {"id": pid, "updated_at": updated}


def test_changed_records_page_by_keyset_and_skip_the_boundary_ids_already_read():
    rec = Recorder(
        page([patient("1", "2024-01-01T00:00:00Z"), patient("2", "2024-01-02T00:00:00Z")], f"{BASE}/patients?page=2"),
        page([patient("2", "2024-01-02T00:00:00Z"), patient("3", "2024-01-03T00:00:00Z")]),
    )
    client = make_client(rec)
    ids = [p["id"] for p in client.iter_patients_changed_since(NOW - timedelta(days=1000))]
    assert ids == ["1", "2", "3"], "the boundary record is not read twice"
    second = rec.requests[1].url
    # Not `page=2`: the next page is asked for as "updated at or after the last timestamp seen".
    assert second.params.get("page") is None
    assert second.params.get_list("q[]")[-1] == "updated_at:>=2024-01-02T00:00:00Z"
    assert second.params.get("sort") == "updated_at:asc,id:asc"


def test_a_page_all_at_one_timestamp_goes_on_by_id_within_it_then_past_it():
    """Records sharing a value have no fixed order across offset pages (the server may shuffle them): a page all
    at one value goes on by keyset on the id within that value, then lists what comes after it."""
    same = "2024-01-01T00:00:00Z"
    rec = Recorder(
        page([patient("1", same), patient("2", same)], f"{BASE}/patients?page=2&per_page=2"),
        page([patient("3", same), patient("5", same)], f"{BASE}/patients?page=2&per_page=2"),
        page([patient("7", same)]),  # the last at that timestamp
        page([patient("4", "2024-01-05T00:00:00Z")]),
    )
    client = make_client(rec)
    since = datetime(2024, 1, 1, tzinfo=UTC)  # the page's one timestamp is the cursor itself
    assert [p["id"] for p in client.iter_patients_changed_since(since)] == ["1", "2", "3", "5", "7", "4"]
    queries = [r.url.params for r in rec.requests]
    assert all(q.get("page") is None and q.get("sort") == "updated_at:asc,id:asc" for q in queries)
    assert [q.get_list("q[]") for q in queries] == [
        [f"updated_at:>={same}"],
        [f"updated_at:>={same}", f"updated_at:<={same}", "id:>2"],
        [f"updated_at:>={same}", f"updated_at:<={same}", "id:>5"],
        [f"updated_at:>{same}"],
    ]


def test_a_page_at_one_value_whose_ids_do_not_move_on_is_refused():
    same = "2024-01-01T00:00:00Z"
    rec = Recorder(page([patient("1", same), patient("2", same)], f"{BASE}/patients?page=2&per_page=2"))
    with pytest.raises(SourceBadResponse, match=r"not in the order asked for \(id\)"):
        list(make_client(rec).iter_patients_changed_since(None))
    assert len(rec.requests) == 2, "the id filter was ignored: the same page again is refused, not looped on"


def invoice_page(dates, next_url=None, first_id=1):
    invoices = [
        {"id": str(n), "issue_date": d, "updated_at": "2024-01-01T00:00:00Z"} for n, d in enumerate(dates, first_id)
    ]
    links = {"self": "x", **({"next": next_url} if next_url else {})}
    return ok({"invoices": invoices, "total_entries": len(invoices), "links": links})


def test_a_listing_in_another_order_restarts_on_its_value_and_reads_those_without_one_by_their_own_pass():
    rec = Recorder(
        invoice_page(["2024-01-01", "2024-01-02"], f"{BASE}/invoices?page=2"),
        invoice_page(["2024-01-02", "2024-01-02", "2024-01-03"], first_id=2),  # 2 again: read already
        invoice_page([]),  # none without an issue date
    )
    listed = list(make_client(rec)._changed_records("/invoices", [], None, "issue_date"))
    assert [r["id"] for r in listed] == ["1", "2", "3", "4"]
    first, second, nulls = (r.url.params for r in rec.requests)
    assert first.get_list("q[]") == ["issue_date:?"] and first.get("sort") == "issue_date:asc,id:asc"
    assert second.get_list("q[]") == ["issue_date:?", "issue_date:>=2024-01-02"]
    assert nulls.get_list("q[]") == ["issue_date:!?"] and nulls.get("sort") == "updated_at:asc,id:asc"


@pytest.mark.parametrize(
    "dates", [["2024-01-03", "2024-01-02"], ["2024-01-01", None]], ids=["out_of_order", "a_null_among_dates"]
)
def test_a_page_not_in_the_order_asked_for_is_refused_before_any_record_is_given(dates):
    rec = Recorder(invoice_page(dates, f"{BASE}/invoices?page=2"))
    listed = []
    with pytest.raises(SourceBadResponse, match="not in the order asked for"):
        listed.extend(make_client(rec)._changed_records("/invoices", [], None, "issue_date"))
    assert listed == []


# -- what a server says never carries the key, and never floods a message -----------------------------------


@pytest.mark.parametrize("at", [180, 980])  # where a 200-character excerpt and the 1,000-character message cut
def test_a_key_echoed_where_the_excerpt_is_cut_is_still_redacted_whole(at: int):
    bare = KEY.rsplit("-", 1)[0]
    for echoed in (KEY, bare):
        body = "x" * at + f" {echoed} " + "and more words after it " * 60
        rec = Recorder(httpx.Response(400, text=body))
        with pytest.raises(SourceRequestRejected) as raised:
            list(make_client(rec).iter_pages("/patients"))
        message = str(raised.value)
        assert echoed[:12] not in message and "[redacted]" in message, message[-80:]


def test_a_page_echoing_the_basic_auth_header_does_not_leak_the_encoded_key():
    encoded = base64.b64encode(f"{KEY}:".encode()).decode()
    rec = Recorder(httpx.Response(400, text=f"Bad request. Request headers: Authorization: Basic {encoded}"))
    with pytest.raises(SourceError) as raised:
        list(make_client(rec).iter_pages("/patients"))
    assert encoded.rstrip("=") not in str(raised.value) and "Bad request" in str(raised.value)


def test_a_huge_422_message_is_shortened_for_people_and_logs():
    body = {"message": "Validation Failed " + "y" * 5_000_000, "errors": {"email": ["z" * 1_000_000]}}
    rec = Recorder(httpx.Response(422, json=body))
    with pytest.raises(SourceRequestRejected) as raised:
        make_client(rec).update_patient("5", {"email": "nope"})
    assert len(str(raised.value)) <= 1_100 and str(raised.value).endswith("…")
    assert len(raised.value.field_errors["email"]) <= 300


def test_records_without_a_usable_id_reach_the_sync_to_be_rejected_and_paging_goes_on():
    later = "2024-05-06T07:00:00Z"
    first = page(
        [{"id": "1", "updated_at": "2024-05-06T06:00:00Z"}, {"name": "no id"}, {"id": ["x"], "updated_at": later}],
        f"{BASE}/patients?page=2",
    )
    rec = Recorder(first, page([{"id": "2", "updated_at": "2024-05-06T08:00:00Z"}]))
    ids = [record.get("id") for record in make_client(rec).iter_patients_changed_since(None)]
    # Passed on as they came (the sync rejects each with a message in history), never a crash on an unhashable id.
    assert ids == ["1", None, ["x"], "2"], "the next page is still read"
    assert "updated_at%3A%3E%3D2024-05-06T07%3A00%3A00Z" in str(rec.requests[1].url), "keyset resumes after them"


# -- a host that does not exist: say which, and do not blame the internet for a wrong shard -------------------------


def _no_such_host(code: int = socket.EAI_NONAME, text: str = "Name or service not known"):
    def handler(request: httpx.Request) -> httpx.Response:
        try:
            raise socket.gaierror(code, text)  # what the resolver says, chained as httpx chains it
        except socket.gaierror as exc:
            raise httpx.ConnectError(f"[Errno {code}] {text}", request=request) from exc

    return handler


def test_a_shard_whose_host_does_not_exist_is_named_once_as_a_setting_not_the_internet():
    recorder = Recorder(_no_such_host())
    client = make_client(recorder, key="fake_cliniko_key_for_tests-zz9")
    with pytest.raises(SourceConfigError) as raised:
        client.get_account()
    message = str(raised.value)
    assert "shard 'zz9'" in message and "api.zz9.cliniko.com" in message and "Check the shard" in message, message
    assert not message.startswith("Cliniko could not be reached"), message
    assert len(recorder.requests) == 1, "a host that does not exist is not retried"


def test_a_known_shard_whose_host_cannot_be_found_names_the_host():
    client = make_client(Recorder(_no_such_host()))  # au2: a real shard, so most likely this computer is offline
    with pytest.raises(SourceUnavailable) as raised:
        client.get_account()
    message = str(raised.value)
    assert "api.au2.cliniko.com could not be found" in message and "internet connection" in message, message


def test_a_custom_address_that_cannot_be_found_names_its_host():
    client = make_client(Recorder(_no_such_host()), base_url="https://cliniko-proxy.clinic.example/v1")
    with pytest.raises(SourceUnavailable) as raised:
        client.get_account()
    assert "cliniko-proxy.clinic.example could not be found" in str(raised.value)


def test_one_attempt_is_not_called_times():
    client = make_client(Recorder(httpx.ConnectError("refused")), retry=RetryPolicy(max_attempts=1))
    with pytest.raises(SourceUnavailable) as raised:
        client.get_account()
    assert "tried 1 times" not in str(raised.value) and "tried once" in str(raised.value)


def test_the_contact_email_message_names_the_tab_in_the_app_and_the_command_on_the_command_line():
    from clinicsync.wording import use_cli_wording

    with pytest.raises(SourceConfigError) as in_app:
        ClinikoClient(KEY, contact_email="")
    assert "in Connections" in str(in_app.value) and "clinicsync" not in str(in_app.value)
    with use_cli_wording(), pytest.raises(SourceConfigError) as on_cli:
        ClinikoClient(KEY, contact_email="not an email")
    assert "`clinicsync config set contact_email " in str(on_cli.value) and "Connections" not in str(on_cli.value)
    assert str(in_app.value).split(".")[0] == str(on_cli.value).split(".")[0], "the same problem, in the same words"


def test_progress_counts_against_the_dated_and_undated_passes_together():
    dated = ok({"invoices": [{"id": "1", "issue_date": "2024-01-01"}], "total_entries": 5000, "links": {}})
    undated = ok({"invoices": [{"id": "2", "issue_date": None}], "total_entries": 12, "links": {}})
    client = make_client(Recorder(dated, undated))
    totals = [client.last_total_entries for _ in client._changed_records("/invoices", [], None, "issue_date")]
    assert totals == [5000, 5012], "not '5,001 of 12' once the undated pass begins"


def test_a_listing_past_a_value_that_lists_that_value_again_is_refused():
    same = "2024-01-01T00:00:00Z"
    at_same = page([patient("1", same), patient("2", same)], f"{BASE}/patients?page=2&per_page=2")
    rec = Recorder(at_same, page([patient("3", same)]), at_same)  # `updated_at:>same` ignored: the same page
    with pytest.raises(SourceBadResponse, match="not in the order asked for"):
        list(make_client(rec).iter_patients_changed_since(None))
    assert rec.requests[-1].url.params.get_list("q[]") == [f"updated_at:>{same}"]
