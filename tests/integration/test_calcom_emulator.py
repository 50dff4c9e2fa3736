"""The Cal.com emulator over real HTTP: auth and versions, the bookings list, the seed's cases (identities, payments,
reschedules, seats, series), the admin actions, the rate limit with its block, faults, and the launcher."""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from clinicsync.sandbox.calcom_emu import DEFAULT_API_KEY, CalcomEmulator
from clinicsync.sandbox.calcom_seed import CLINIC_ACCOUNT, OTHER_ACCOUNT, seed_calcom
from clinicsync.sandbox.faults import FaultPlan
from clinicsync.sandbox.server import RunningServer, serve

AUTH = {"Authorization": f"Bearer {DEFAULT_API_KEY}"}
BOOKINGS = {**AUTH, "cal-api-version": "2024-08-13"}
EVENT_TYPES = {**AUTH, "cal-api-version": "2024-06-14"}


@pytest.fixture
def srv() -> Iterator[RunningServer]:
    with serve(CalcomEmulator()) as server:
        response = httpx.post(f"{server.url}/_sandbox/seed", json={"profile": "hard", "patients": 30, "seed": 3})
        assert response.status_code == 200
        server.seeded = response.json()  # type: ignore[attr-defined]
        yield server


def admin(srv: RunningServer, action: str, **params: Any) -> Any:
    response = httpx.post(f"{srv.url}/_sandbox/{action}", json=params, timeout=10)
    assert response.status_code == 200, response.text
    return response.json()


def bookings(srv: RunningServer, **params: Any) -> dict[str, Any]:
    response = httpx.get(f"{srv.url}/v2/bookings", params={"take": 250, **params}, headers=BOOKINGS)
    assert response.status_code == 200, response.text
    return response.json()


def booking(srv: RunningServer, uid: str) -> Any:
    response = httpx.get(f"{srv.url}/v2/bookings/{uid}", headers=BOOKINGS)
    assert response.status_code == 200, response.text
    return response.json()["data"]


def dump(srv: RunningServer) -> dict[str, Any]:
    return admin(srv, "dump")


def uids_with(srv: RunningServer, case: str) -> list[str]:
    return [uid for uid, c in srv.seeded["cases"].items() if c == case]  # type: ignore[attr-defined]


# -- auth, versions, errors ------------------------------------------------------------------------------------


def test_bearer_key_is_required_and_errors_use_the_envelope(srv: RunningServer) -> None:
    for headers in ({}, {"Authorization": "Bearer cal_test_wrong"}, {"Authorization": f"Basic {DEFAULT_API_KEY}"}):
        response = httpx.get(f"{srv.url}/v2/me", headers=headers)
        assert response.status_code == 401
        body = response.json()
        assert body["status"] == "error" and body["error"]["code"] == "UnauthorizedException"
        assert body["path"] == "/v2/me" and body["timestamp"].endswith("Z") and response.headers["X-Request-Id"]
    admin(srv, "revoke_key")
    assert httpx.get(f"{srv.url}/v2/me", headers=AUTH).status_code == 401
    admin(srv, "restore_key")
    me = httpx.get(f"{srv.url}/v2/me", headers=AUTH).json()["data"]
    assert me["id"] == 1001 and me["timeZone"] == "Australia/Melbourne"


def test_versioned_endpoints_refuse_a_missing_or_other_version(srv: RunningServer) -> None:
    for headers in (AUTH, {**AUTH, "cal-api-version": "2024-04-15"}, EVENT_TYPES):
        response = httpx.get(f"{srv.url}/v2/bookings", headers=headers)
        assert response.status_code == 400
        assert "cal-api-version: 2024-08-13" in json.dumps(response.json()["error"]["details"])
    assert httpx.get(f"{srv.url}/v2/event-types", headers=EVENT_TYPES).status_code == 200
    assert httpx.get(f"{srv.url}/v2/teams", headers=AUTH).status_code == 200  # declares no version


def test_bad_list_parameters_are_400s_with_every_problem(srv: RunningServer) -> None:
    params = {"take": 251, "skip": -1, "afterUpdatedAt": "yesterday", "sortCreated": "up", "status": "upcoming,soon"}
    response = httpx.get(f"{srv.url}/v2/bookings", params=params, headers=BOOKINGS)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "BadRequestException" and error["message"] == "Bad Request Exception"
    assert error["details"]["statusCode"] == 400
    assert error["details"]["message"] == [
        "each value in status must be one of the following values: upcoming, recurring, past, cancelled, unconfirmed",
        "take must not be greater than 250",
        "skip must not be less than 0",
        "afterUpdatedAt must be a valid ISO 8601 date string",
        "sortCreated must be one of the following values: asc, desc",
    ]
    missing = httpx.get(f"{srv.url}/v2/bookings/nope", headers=BOOKINGS)
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "NotFoundException"
    assert httpx.get(f"{srv.url}/v2/nothing", headers=AUTH).status_code == 404


# -- the bookings list -----------------------------------------------------------------------------------------


def test_paging_by_take_and_skip(srv: RunningServer) -> None:
    total = srv.seeded["bookings"]  # type: ignore[attr-defined]
    first = bookings(srv, take=10, sortCreated="asc")
    assert first["pagination"] == {
        "totalItems": total,
        "remainingItems": total - 10,
        "returnedItems": 10,
        "itemsPerPage": 10,
        "currentPage": 1,
        "totalPages": -(-total // 10),
        "hasNextPage": True,
        "hasPreviousPage": False,
    }
    seen = []
    for skip in range(0, total, 10):
        seen += [b["uid"] for b in bookings(srv, take=10, skip=skip, sortCreated="asc")["data"]]
    assert len(seen) == len(set(seen)) == total
    ids = [b["id"] for b in bookings(srv, sortCreated="asc")["data"]]
    assert ids == sorted(ids)  # ids are in creation order


def test_filters_by_update_and_creation_time(srv: RunningServer) -> None:
    everything = bookings(srv)["data"]
    empty = [b for b in everything if b["updatedAt"] is None]
    assert empty, "the seed has bookings whose updatedAt is empty"
    cut = sorted(b["updatedAt"] for b in everything if b["updatedAt"])[len(everything) // 2]
    after = bookings(srv, afterUpdatedAt=cut, sortUpdatedAt="asc")["data"]
    assert after and all(b["updatedAt"] >= cut for b in after)
    assert [b["updatedAt"] for b in after] == sorted(b["updatedAt"] for b in after)
    assert not {b["uid"] for b in empty} & {b["uid"] for b in after}  # an empty updatedAt matches no filter
    created = bookings(srv, afterCreatedAt=cut, sortCreated="desc")["data"]
    assert [b["createdAt"] for b in created] == sorted((b["createdAt"] for b in created), reverse=True)
    assert {b["uid"] for b in bookings(srv, beforeUpdatedAt=cut)["data"]} | {b["uid"] for b in after} | {
        b["uid"] for b in empty
    } == {b["uid"] for b in everything}


def test_status_filters(srv: RunningServer) -> None:
    now = datetime.now(UTC).isoformat()
    everything = bookings(srv)["data"]
    cancelled = bookings(srv, status="cancelled")["data"]
    assert {b["status"] for b in cancelled} == {"cancelled", "rejected"}
    upcoming = bookings(srv, status="upcoming")["data"]
    assert upcoming and all(b["end"] >= now[:19] and b["status"] in ("accepted", "pending") for b in upcoming)
    unconfirmed = bookings(srv, status="unconfirmed")["data"]
    assert unconfirmed and all(b["status"] == "pending" for b in unconfirmed)
    both = bookings(srv, status="past,cancelled")["data"]
    assert len(both) == len(bookings(srv, status="past")["data"]) + len(cancelled)
    assert len(both) == len(bookings(srv, status=["past", "cancelled"])["data"])
    assert len(everything) == srv.seeded["bookings"]  # type: ignore[attr-defined]


def test_attendee_and_event_type_filters(srv: RunningServer) -> None:
    some = next(b for b in bookings(srv)["data"] if b.get("bookingFieldsResponses"))
    email = some["attendees"][0]["email"]
    found = bookings(srv, attendeeEmail=email.upper())["data"]
    assert some["uid"] in {b["uid"] for b in found}
    assert all(any(a["email"].casefold() == email.casefold() for a in b["attendees"]) for b in found)
    massage = bookings(srv, eventTypeIds="4101")["data"]
    assert massage and {b["eventType"]["id"] for b in massage} == {4101}
    assert {b["eventType"]["id"] for b in bookings(srv, teamId=3001)["data"]} <= {4101, 4102}


# -- the seed's cases ------------------------------------------------------------------------------------------


def test_reschedule_chains_point_both_ways_and_the_payment_moves(srv: RunningServer) -> None:
    chain = {b["uid"]: b for b in bookings(srv)["data"] if b["uid"] in uids_with(srv, "reschedule_chain")}
    starts = [b for b in chain.values() if "rescheduledFromUid" not in b]
    assert len(starts) == 2
    state = dump(srv)
    for first in starts:
        links = [first]
        while "rescheduledToUid" in links[-1]:
            nxt = chain[links[-1]["rescheduledToUid"]]
            assert nxt["rescheduledFromUid"] == links[-1]["uid"] and nxt["id"] > links[-1]["id"]
            links.append(nxt)
        assert len(links) in (2, 3)
        assert all(b["status"] == "cancelled" for b in links[:-1]) and links[-1]["status"] == "accepted"
        assert links[-1]["reschedulingReason"] and links[-1]["rescheduledByEmail"]
        (intent,) = [i for i in state["payment_intents"] if i["sandbox"]["booking_uid"] == first["uid"]]
        assert intent["metadata"]["bookingId"] == str(first["id"])  # Stripe still names the first booking
        (payment,) = [p for p in state["payments"] if p["externalId"] == intent["id"]]
        assert payment["bookingId"] == links[-1]["id"] and payment["bookingUid"] == links[-1]["uid"]


def test_seated_bookings_show_seats_each_paid_for(srv: RunningServer) -> None:
    state = dump(srv)
    for uid in uids_with(srv, "seated"):
        seated = booking(srv, uid)
        assert "bookingFieldsResponses" not in seated and len(seated["attendees"]) >= 3
        assert all(a["seatUid"] and "email" not in a["bookingFieldsResponses"] for a in seated["attendees"])
        intents = [i for i in state["payment_intents"] if i["sandbox"]["booking_uid"] == uid]
        assert len(intents) == len(seated["attendees"]) and {i["metadata"]["bookingId"] for i in intents} == {
            str(seated["id"])
        }
        assert {i["metadata"]["bookerEmail"] for i in intents} == {a["email"] for a in seated["attendees"]}
        by_seat = httpx.get(f"{srv.url}/v2/bookings/by-seat/{seated['attendees'][0]['seatUid']}", headers=BOOKINGS)
        assert by_seat.json()["data"]["uid"] == uid


def test_a_recurring_series_uid_returns_every_occurrence(srv: RunningServer) -> None:
    occurrence = booking(srv, uids_with(srv, "recurring")[0])
    series = booking(srv, occurrence["recurringBookingUid"])
    assert isinstance(series, list) and len(series) == 4
    assert [b["start"] for b in series] == sorted(b["start"] for b in series)
    assert [b["status"] for b in series].count("cancelled") == 1
    assert {b["recurringBookingUid"] for b in series} == {occurrence["recurringBookingUid"]}
    recurring = bookings(srv, status="recurring")["data"]
    assert all("recurringBookingUid" in b for b in recurring)


def test_paid_bookings_carry_payment_intents_cal_coms_stripe_app_would_create(srv: RunningServer) -> None:
    state = dump(srv)
    by_id = {b["id"]: b for b in state["bookings"]}
    event_types = {et["id"]: et for et in state["event_types"]}
    intents = state["payment_intents"]
    assert intents and state["customers"]
    for intent in intents:
        metadata = intent["metadata"]
        assert metadata["identifier"] == "cal.com" and metadata["bookingId"].isdigit()
        paid_for = by_id[int(metadata["bookingId"])]
        assert metadata["bookerEmail"] in {a["email"] for a in paid_for["attendees"]}
        assert all(isinstance(v, str) and v for v in metadata.values())  # Stripe metadata: non-empty strings
        stripe = event_types[paid_for["eventTypeId"]]["metadata"]["apps"]["stripe"]
        assert (intent["amount"], intent["currency"]) == (stripe["price"], stripe["currency"])
        assert intent["id"].startswith("pi_") and intent["customer"].startswith("cus_")
        assert intent["sandbox"]["account"] in (CLINIC_ACCOUNT, OTHER_ACCOUNT)
    other = [i for i in intents if i["sandbox"]["account"] == OTHER_ACCOUNT]
    assert len(other) >= 2 and all(by_id[int(i["metadata"]["bookingId"])]["eventTypeId"] == 4101 for i in other)
    assert Counter(i["status"] for i in intents)["requires_payment_method"] >= 1
    assert any(i["sandbox"]["refunded"] for i in intents)
    assert {i["currency"] for i in intents} == {"aud", "usd"}
    # Each account has one customer per booker email, as the app looks the email up before creating one.
    keys = [(c["sandbox"]["account"], c["email"]) for c in state["customers"]]
    assert len(keys) == len(set(keys))
    (hold,) = [uid for uid in uids_with(srv, "hold_card_saved")]
    assert any(s["sandbox"]["booking_uid"] == hold for s in state["setup_intents"])
    assert state["stripe_credentials"]["43"]["stripe_account"] == OTHER_ACCOUNT


def test_event_types_keep_the_stripe_price_in_metadata(srv: RunningServer) -> None:
    listed = httpx.get(f"{srv.url}/v2/event-types", headers=EVENT_TYPES).json()["data"]
    by_slug = {et["slug"]: et for et in listed}
    assert "remedial-massage" not in by_slug  # team event types are listed under the team
    assert by_slug["telehealth-review"]["hidden"] is True  # hidden ones are shown to their owner
    follow_up = by_slug["follow-up"]
    assert follow_up["metadata"]["apps"]["stripe"]["price"] == 8500 and follow_up["price"] == 8000  # stale column
    assert by_slug["protected-session"]["metadata"]["apps"]["stripe"]["paymentOption"] == "HOLD"
    assert by_slug["discovery-call"]["metadata"] == {}
    assert by_slug["group-pilates"]["seats"]["seatsPerTimeSlot"] == 6
    assert by_slug["rehab-program"]["recurrence"] == {"interval": 1, "occurrences": 4, "frequency": "weekly"}
    team = httpx.get(f"{srv.url}/v2/teams/3001/event-types", headers=AUTH).json()["data"]
    massage = next(et for et in team if et["slug"] == "remedial-massage")
    assert massage["schedulingType"] == "roundRobin" and massage["hosts"][0]["userId"] == 1002
    assert massage["metadata"]["apps"]["stripe"]["credentialId"] == 43


def test_about_a_third_of_attendees_are_cliniko_patients_in_other_letter_case(make_sandbox) -> None:
    sb = make_sandbox(profile="hard", patients=30, calcom=True, seed=2)
    patients = httpx.post(sb.cliniko.url + "/_sandbox/dump").json()["patients"]
    emails = {}
    for patient in patients:
        if patient["email"]:
            emails.setdefault(patient["email"].strip().casefold(), []).append(patient["id"])
    exact = {p["email"] for p in patients if p["email"]}
    identities = sb.calcom_seeded["identities"]
    occurrences = sum(len(i["booking_uids"]) for i in identities)
    of_patients = sum(len(i["booking_uids"]) for i in identities if i["patient_ids"])
    assert 0.25 <= of_patients / occurrences <= 0.45
    for identity in identities:
        if identity["patient_ids"]:
            assert sorted(identity["patient_ids"]) == sorted(emails[identity["email"].casefold()])
            assert identity["email"] not in exact or len(identity["patient_ids"]) > 1  # other case (bar families)
        else:
            assert identity["email"].casefold() not in emails
    cases = {i["patient_case"] for i in identities}
    assert {"family_shared_email_2", "upper_case_email", "plus_addressed_email"} <= cases
    family = [i for i in identities if i["patient_case"] == "family_shared_email_2"]
    assert len(family[0]["patient_ids"]) == 3  # one email, three patients: never matched automatically


def test_the_seed_is_deterministic() -> None:
    now = datetime(2026, 3, 2, 1, 2, 3, 456000, tzinfo=UTC)
    one, two = (seed_calcom("hard", 25, 7, bookings=50, now=now) for _ in range(2))
    assert json.dumps(one.bookings, sort_keys=True) == json.dumps(two.bookings, sort_keys=True)
    assert one.payment_intents == two.payment_intents and one.identities() == two.identities()
    other = seed_calcom("hard", 25, 8, bookings=50, now=now)
    assert [b["uid"] for b in other.bookings] != [b["uid"] for b in one.bookings]
    assert len(one.bookings) == 50 and not seed_calcom("clean", 5, 1, bookings=0, now=now).bookings
    assert all(b["startTime"].endswith("Z") and b["createdAt"] <= one.now.isoformat() for b in one.bookings)


# -- admin actions ---------------------------------------------------------------------------------------------


def test_reschedule_makes_a_new_booking_and_moves_the_payment(srv: RunningServer) -> None:
    target = next(
        b
        for b in bookings(srv, status="upcoming")["data"]
        if b["eventType"]["id"] == 4001 and b["status"] == "accepted"
    )
    before = datetime.now(UTC).isoformat(timespec="milliseconds")[:23]
    moved = admin(srv, "reschedule", uid=target["uid"], start="2031-05-06T01:00:00Z")
    old, new = booking(srv, target["uid"]), booking(srv, moved["new_uid"])
    assert old["status"] == "cancelled" and old["rescheduledToUid"] == new["uid"]
    assert new["rescheduledFromUid"] == old["uid"] and new["start"] == "2031-05-06T01:00:00.000Z"
    assert new["id"] > max(b["id"] for b in bookings(srv)["data"] if b["uid"] != new["uid"])
    assert old["updatedAt"][:23] >= before and new["createdAt"] == new["updatedAt"]
    payments = [p for p in dump(srv)["payments"] if p["bookingUid"] == new["uid"]]
    assert payments and all(p["bookingId"] == new["id"] for p in payments)


def test_cancel_with_a_refund_and_edit_bump_updated_at(srv: RunningServer) -> None:
    target = next(b for b in bookings(srv, status="upcoming")["data"] if b["eventType"]["id"] in (4001, 4002))
    admin(srv, "cancel", uid=target["uid"], reason="Moved interstate", refund=True)
    cancelled = booking(srv, target["uid"])
    assert cancelled["status"] == "cancelled" and cancelled["cancellationReason"] == "Moved interstate"
    assert cancelled["updatedAt"] > (target["updatedAt"] or "")
    state = dump(srv)
    assert all(p["refunded"] for p in state["payments"] if p["bookingUid"] == target["uid"] and p["success"])
    other = next(b for b in bookings(srv)["data"] if b["updatedAt"] is None)
    edited = admin(srv, "edit", uids=[other["uid"]], fields={"title": "Renamed", "attendee_email": "new@example.org"})
    after = booking(srv, other["uid"])
    assert edited["uids"] == [other["uid"]] and after["title"] == "Renamed" and after["updatedAt"]
    assert after["attendees"][0]["email"] == "new@example.org"
    randomly = admin(srv, "edit", count=3)
    assert len(randomly["uids"]) == 3
    bad = httpx.post(f"{srv.url}/_sandbox/edit", json={"uids": [other["uid"]], "fields": {"price": 1}})
    assert bad.status_code == 400


def test_add_bookings_with_their_payments(srv: RunningServer) -> None:
    added = admin(srv, "add", count=2, event_type_id=4002, email="Olivia.NGUYEN@example.com", name="Olivia Nguyen")
    assert len(added["uids"]) == 2 and len(added["payment_intents"]) == 2
    for uid, intent in zip(added["uids"], added["payment_intents"], strict=True):
        made = booking(srv, uid)
        assert made["status"] == "accepted" and made["attendees"][0]["email"] == "Olivia.NGUYEN@example.com"
        assert intent["metadata"]["bookingId"] == str(made["id"]) and intent["status"] == "succeeded"
        assert intent["amount"] == 8500
    plain = admin(srv, "add", event_type_id=4003, null_updated_at=True, status="pending")
    made = booking(srv, plain["uids"][0])
    assert made["updatedAt"] is None and made["status"] == "pending" and plain["payment_intents"] == []
    identities = {i["email"]: i for i in dump(srv)["identities"]}
    assert identities["Olivia.NGUYEN@example.com"]["patient_case"] == "stripe_email_case_match"


def test_event_type_price_hide_and_delete(srv: RunningServer) -> None:
    admin(srv, "price", id=4001, price=13500, currency="AUD")
    listed = {et["id"]: et for et in httpx.get(f"{srv.url}/v2/event-types", headers=EVENT_TYPES).json()["data"]}
    assert listed[4001]["metadata"]["apps"]["stripe"]["price"] == 13500 and listed[4001]["price"] == 12000
    assert admin(srv, "add", event_type_id=4001)["payment_intents"][0]["amount"] == 13500
    admin(srv, "price", id=4003, price=2000)  # a free event type becomes paid
    assert httpx.get(f"{srv.url}/v2/event-types/4003", headers=EVENT_TYPES).json()["data"]["metadata"]["apps"]
    admin(srv, "hide", id=4002)
    assert httpx.get(f"{srv.url}/v2/event-types/4002", headers=EVENT_TYPES).json()["data"]["hidden"] is True
    with_4008 = [b["uid"] for b in bookings(srv, eventTypeId=4008)["data"]]
    admin(srv, "delete_event_type", id=4008)
    assert httpx.get(f"{srv.url}/v2/event-types/4008", headers=EVENT_TYPES).status_code == 404
    assert 4008 not in {et["id"] for et in httpx.get(f"{srv.url}/v2/event-types", headers=EVENT_TYPES).json()["data"]}
    orphan = booking(srv, with_4008[0])
    assert orphan["eventType"] is None and orphan["eventTypeId"] is None
    assert httpx.post(f"{srv.url}/_sandbox/price", json={"id": 4008, "price": 1}).status_code == 400


def test_webhooks_crud(srv: RunningServer) -> None:
    listed = httpx.get(f"{srv.url}/v2/webhooks", headers=AUTH).json()["data"]
    assert len(listed) == 1 and isinstance(listed[0]["id"], str) and "BOOKING_PAID" in listed[0]["triggers"]
    bad = httpx.post(f"{srv.url}/v2/webhooks", json={"subscriberUrl": 5, "triggers": ["NOPE"]}, headers=AUTH)
    assert bad.status_code == 400 and len(bad.json()["error"]["details"]["message"]) == 3
    made = httpx.post(
        f"{srv.url}/v2/webhooks",
        json={"subscriberUrl": "https://hooks.example.com/new", "triggers": ["BOOKING_CREATED"], "active": True},
        headers=AUTH,
    )
    assert made.status_code == 201
    hook = made.json()["data"]["id"]
    patched = httpx.patch(f"{srv.url}/v2/webhooks/{hook}", json={"active": False}, headers=AUTH).json()["data"]
    assert patched["active"] is False
    assert httpx.delete(f"{srv.url}/v2/webhooks/{hook}", headers=AUTH).status_code == 200
    assert httpx.get(f"{srv.url}/v2/webhooks/{hook}", headers=AUTH).status_code == 404
    assert httpx.get(f"{srv.url}/v2/webhooks", params={"take": 0}, headers=AUTH).status_code == 400


def test_clock_moves_new_timestamps(srv: RunningServer) -> None:
    moved = admin(srv, "clock", advance_s=3600)
    assert moved["offset_s"] == 3600
    added = admin(srv, "add", event_type_id=4003)
    created = booking(srv, added["uids"][0])["createdAt"]
    assert created > (datetime.now(UTC) + timedelta(minutes=59)).isoformat()[:19]


# -- rate limits, faults, stats --------------------------------------------------------------------------------


def test_the_rate_limit_blocks_the_key_and_says_so_in_its_headers(srv: RunningServer) -> None:
    admin(srv, "rate_limit", limit=3, window_s=30, block_s=1.5)
    httpx.post(f"{srv.url}/_sandbox/config", json={"rate_limits": True})
    with httpx.Client(base_url=srv.url, headers=AUTH) as client:
        remaining = [client.get("/v2/me").headers["X-RateLimit-Remaining-Default"] for _ in range(3)]
        assert remaining == ["2", "1", "0"]
        limited = client.get("/v2/me")
        assert limited.status_code == 429 and "Retry-After" not in limited.headers
        assert limited.json()["error"]["code"] == "ThrottlerException"
        assert limited.headers["X-RateLimit-Limit-Default"] == "3"
        assert limited.headers["X-RateLimit-Remaining-Default"] == "0"
        assert 1 <= int(limited.headers["X-RateLimit-Reset-Default"]) <= 2
        time.sleep(0.5)
        assert client.get("/v2/me").status_code == 429  # still blocked, although nothing was admitted
        time.sleep(1.2)
        assert client.get("/v2/me").status_code == 200  # the block ended
        assert client.get("/v2/me", headers={"Authorization": "Bearer cal_test_wrong"}).status_code == 401
    assert httpx.get(f"{srv.url}/_sandbox/stats").json()["rate_limited"] == 2


def test_faults_answer_like_cal_com_and_its_edge() -> None:
    with serve(CalcomEmulator(), faults=FaultPlan.parse("before:500=1")) as server:
        response = httpx.get(f"{server.url}/v2/me", headers=AUTH)
        assert response.status_code == 500 and response.json()["error"]["code"] == "INTERNAL_SERVER_ERROR"
    with serve(CalcomEmulator(), faults=FaultPlan.parse("before:503=1")) as server:
        response = httpx.get(f"{server.url}/v2/me", headers=AUTH)
        assert response.status_code == 503 and response.headers["Content-Type"].startswith("text/html")
    with serve(CalcomEmulator(), faults=FaultPlan.parse("before:429=1")) as server:
        response = httpx.get(f"{server.url}/v2/me", headers=AUTH)
        assert response.status_code == 429 and response.headers["X-RateLimit-Reset-Default"] in ("0", "1")


def test_stats_name_endpoints_without_ids(srv: RunningServer) -> None:
    uid = bookings(srv, take=1)["data"][0]["uid"]
    booking(srv, uid)
    httpx.get(f"{srv.url}/v2/event-types/4001", headers=EVENT_TYPES)
    stats = httpx.get(f"{srv.url}/_sandbox/stats").json()["by_endpoint"]
    assert {"GET /v2/bookings", "GET /v2/bookings/{uid}", "GET /v2/event-types/{id}"} <= set(stats)


# -- the launcher ----------------------------------------------------------------------------------------------


def test_the_launcher_starts_cal_com_only_when_asked(make_sandbox) -> None:
    plain = make_sandbox(patients=5)
    assert plain.calcom is None and "CLINICSYNC_CALCOM_BASE_URL" not in plain.env()
    sb = make_sandbox(patients=5, calcom=True, calcom_bookings=30)
    env = sb.env()
    assert env["CLINICSYNC_CALCOM_BASE_URL"] == sb.calcom_url and sb.calcom_url.endswith("/v2")
    assert env["CLINICSYNC_CALCOM_API_KEY"] == sb.calcom_key == "cal_test_sandbox_clinic_a"
    assert sb.calcom_url.startswith("http://127.0.0.1:")
    me = httpx.get(f"{sb.calcom_url}/me", headers={"Authorization": f"Bearer {sb.calcom_key}"})
    assert me.status_code == 200
    assert sb.calcom_seeded["bookings"] == 30 and sb.describe()["calcom_admin_url"].endswith("/_sandbox/")
