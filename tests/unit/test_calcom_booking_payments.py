"""The paid booking chains of calcom.booking_payments, from bookings as Cal.com's API lists them (pure: no HTTP)."""

from __future__ import annotations

from typing import Any

from clinicsync.mapping.apply import map_record
from clinicsync.mapping.defaults import CALCOM_BOOKING_PAYMENTS as MAPPING
from clinicsync.streams.calcom_booking_payments import _chain, _read_chain, _unmatched, chain_record

PAID = {
    "id": 4001,
    "title": "Initial consultation",
    "metadata": {"apps": {"stripe": {"enabled": True, "price": 12000}}},
}
FREE = {"id": 4003, "title": "Free discovery call", "metadata": {}}
EVENT_TYPES = {"4001": PAID, "4003": FREE}
# What Cal.com's Stripe app writes into a PaymentIntent's metadata (docs/calcom-api.md §8): read, never written.
CALCOM_KEYS = tuple(
    f"metadata.{key}"
    for key in (
        "identifier",
        "bookingId",
        "calAccountId",
        "calUsername",
        "bookerName",
        "bookerEmail",
        "bookerPhoneNumber",
        "eventTitle",
        "bookingTitle",
    )
)


def booking(number: int, *, after: int | None = None, before: int | None = None, **extra: Any) -> dict[str, Any]:
    made = {
        "id": 10_000 + number,
        "uid": f"uid{number}",
        "status": "cancelled" if before is not None else "accepted",
        "start": f"2026-03-0{number}T23:30:00.000Z",
        "eventType": {"id": 4001, "slug": "initial-consultation"},
        "hosts": [{"id": 1001, "email": "bookings@harbourside.example"}],
        "attendees": [{"name": "Ann Example", "email": "ann@example.org"}],
    }
    if after is not None:
        made["rescheduledFromUid"] = f"uid{after}"
    if before is not None:
        made["rescheduledToUid"] = f"uid{before}"
    return {**made, **extra}


def no_fetch(uid: str) -> list[dict[str, Any]]:
    raise AssertionError(f"{uid} was at hand")


def test_a_chain_runs_from_its_first_booking_to_its_latest_from_any_of_them() -> None:
    chain = [booking(1, before=2), booking(2, after=1, before=3), booking(3, after=2)]
    known = {b["uid"]: b for b in chain}
    for middle in chain:
        assert [b["uid"] for b in _chain(middle, dict(known), no_fetch)] == ["uid1", "uid2", "uid3"]
    record = chain_record(_chain(chain[1], known, no_fetch), EVENT_TYPES)
    assert record is not None
    # The first booking's id (what Cal.com's Stripe app wrote into bookingId), the latest booking's details.
    assert (record["id"], record["booking_uid"], record["status"], record["reschedules"]) == (
        10_001,
        "uid3",
        "accepted",
        2,
    )
    assert record["owner_email"] == "bookings@harbourside.example"
    assert record["event_type"] == "Initial consultation"


def test_bookings_of_a_chain_not_listed_are_read_by_uid_and_a_loop_in_bad_data_ends() -> None:
    first, second = booking(1, before=2), booking(2, after=1)
    asked: list[str] = []

    def fetch(uid: str) -> list[dict[str, Any]]:
        asked.append(uid)
        return [first] if uid == "uid1" else []

    assert [b["uid"] for b in _chain(second, {"uid2": second}, fetch)] == ["uid1", "uid2"]
    assert asked == ["uid1"]
    looped = [booking(1, after=2, before=2), booking(2, after=1, before=1)]
    known = {b["uid"]: b for b in looped}
    assert len(_chain(looped[0], known, no_fetch)) == 2


def test_free_and_seated_bookings_are_not_paid_booking_records() -> None:
    assert chain_record([booking(1, eventType={"id": 4003, "slug": "discovery-call"})], EVENT_TYPES) is None
    assert chain_record([booking(1, eventType={"id": 9999, "slug": "deleted"})], EVENT_TYPES) is None
    seated = booking(1, attendees=[{"name": "A", "email": "a@example.org", "seatUid": "seat-1"}])
    assert chain_record([seated], EVENT_TYPES) is None


def test_the_mapping_writes_its_own_cross_reference_and_the_latest_booking_s_details_never_cal_com_s_keys() -> None:
    record = chain_record([booking(1, before=2), booking(2, after=1)], EVENT_TYPES)
    assert record is not None
    mapped = map_record(MAPPING, record)
    assert mapped.error is None
    assert mapped.payload["metadata.calcom_booking_id"] == "10001", "ClinicSync's own key names the first booking"
    assert not any(key in mapped.payload for key in CALCOM_KEYS), "Cal.com's own keys are never written"
    assert mapped.payload["metadata.calcom_booking_uid"] == "uid2"
    assert mapped.payload["metadata.calcom_status"] == "accepted"


def test_why_a_paid_booking_has_no_payment_to_link_is_said_in_words() -> None:
    def why(status: str) -> str:
        record = chain_record([booking(1, status=status)], EVENT_TYPES)
        assert record is not None
        return _unmatched(map_record(MAPPING, record))

    assert "not paid yet" in why("pending")
    assert "declined" in why("rejected")
    assert "out of reach" in why("accepted") and "10001" in why("cancelled")


class ListingClient:
    """Cal.com's listings as the stream reads them."""

    def __init__(self, bookings: list[dict[str, Any]]) -> None:
        self.bookings = bookings

    def iter_bookings_changed_since(self, cursor: Any) -> list[dict[str, Any]]:
        return list(self.bookings)

    def list_event_types(self) -> list[dict[str, Any]]:
        return [PAID, FREE]

    def list_teams(self) -> list[dict[str, Any]]:
        return []

    def get_booking(self, uid: str) -> list[dict[str, Any]]:
        return [b for b in self.bookings if b["uid"] == uid]


def test_a_chain_is_read_by_its_first_booking_s_id() -> None:
    """(One run's reads by id share one listing of every booking: the client keeps it, test_calcom_client.py.)"""
    client = ListingClient([booking(1, before=2), booking(2, after=1), booking(3)])
    first, other = _read_chain(client, "10001"), _read_chain(client, "10003")
    assert first is not None and first["booking_uid"] == "uid2"
    assert other is not None and other["booking_uid"] == "uid3"
    assert _read_chain(client, "10002") is None, "a later booking's id is not a chain's"


class ChargeListings:
    """A Stripe gateway's charge listings, counted: one payment's, or the account's."""

    def __init__(self, charges: list[dict[str, Any]]) -> None:
        self.charges = charges
        self.by_payment = 0
        self.whole = 0

    def iter_objects(self, stripe_object: str, created_since: Any = None, filters: Any = None) -> list[dict[str, Any]]:
        assert stripe_object == "charge"
        if filters:
            self.by_payment += 1
            return [c for c in self.charges if c["payment_intent"] == filters["payment_intent"]]
        self.whole += 1
        return list(self.charges)


def test_cancelled_bookings_charges_are_listed_one_by_one_for_a_few_then_once_for_the_whole_run() -> None:
    from clinicsync.streams.base import PlanRequest
    from clinicsync.streams.calcom_booking_payments import NOT_REFUNDED, REFUNDED, _Charges, _observe

    charges = [
        {"id": f"ch_{n}", "payment_intent": f"pi_{n}", "status": "succeeded", "amount_refunded": 500 * (n % 2)}
        for n in range(30)
    ]
    gateway = ChargeListings(charges)
    mapped = map_record(MAPPING, chain_record([booking(1, status="cancelled")], EVENT_TYPES) or {})
    seen = []
    for n in range(30):
        request = PlanRequest("update", mapped, f"pi_{n}", {}, "metadata.bookingId")
        ((role,),) = [_observe(gateway, request)]
        seen.append((role.stripe_id, role.fingerprint))
    assert seen == [(f"ch_{n}", REFUNDED if n % 2 else NOT_REFUNDED) for n in range(30)]
    assert (gateway.by_payment, gateway.whole) == (_Charges.ONE_BY_ONE, 1), "not one listing per booking"
    accepted = map_record(MAPPING, chain_record([booking(2)], EVENT_TYPES) or {})
    assert _observe(gateway, PlanRequest("update", accepted, "pi_1", {}, "metadata.bookingId")) is None


class IntentListings:
    """The account's PaymentIntents, listed by `created` as the matcher asks; each listing counted."""

    def __init__(self, intents: list[dict[str, Any]]) -> None:
        self.intents = intents
        self.listings: list[Any] = []

    def iter_objects(self, stripe_object: str, created_since: Any = None, filters: Any = None) -> list[dict[str, Any]]:
        assert stripe_object == "payment_intent"
        self.listings.append(filters)
        bounds = (filters or {}).get("created", {})
        return [
            i
            for i in self.intents
            if i["created"] >= bounds.get("gte", 0) and i["created"] < bounds.get("lt", float("inf"))
        ]


class NoLinks:
    def stripe_id(self, stream: str, source_id: str, role: str | None = None) -> str | None:
        return None


def intent(number: int, booking_id: int, email: str, created: int = 1_000) -> dict[str, Any]:
    metadata = {"identifier": "cal.com", "bookingId": str(booking_id), "bookerEmail": email}
    return {"id": f"pi_{number}", "created": created, "metadata": metadata}


def test_each_seat_is_matched_to_its_booker_s_payment_and_a_booker_s_several_seats_share_theirs_out() -> None:
    from clinicsync.streams.base import MatchSetup, StreamSettings
    from clinicsync.streams.calcom_booking_payments import PaymentMatcher, seat_records

    seats = [
        {"name": "Ann", "email": "ann@example.org", "seatUid": "s1"},
        {"name": "Bo", "email": "BO@example.org", "seatUid": "s2"},
        {"name": "Bo's child", "email": "bo@example.org", "seatUid": "s3"},
        {"name": "Cy", "email": "cy@example.org", "seatUid": "s4"},
    ]
    seated = booking(1, attendees=seats, createdAt="2026-01-01T00:00:00.000Z")
    records = seat_records(seated, EVENT_TYPES)
    assert [r["id"] for r in records] == ["10001-s1", "10001-s2", "10001-s3", "10001-s4"]
    assert chain_record([seated], EVENT_TYPES) is None, "a seated booking is its seats"
    gateway = IntentListings(
        [
            intent(1, 10001, "ann@example.org"),
            intent(2, 10001, "bo@example.org"),
            intent(3, 10001, "bo@example.org"),
            intent(4, 10002, "cy@example.org"),  # another booking's
        ]
    )
    setup = MatchSetup(gateway, None, NoLinks(), StreamSettings("UTC", "aud"), {}, "metadata.calcom_booking_id")
    matcher = PaymentMatcher(setup)
    for record in records:
        matcher.offer(map_record(MAPPING, record), record)
    decisions = matcher.decide()
    assert decisions["10001-s1"].stripe_id == "pi_1"
    assert {decisions["10001-s2"].stripe_id, decisions["10001-s3"].stripe_id} == {"pi_2", "pi_3"}, "one each"
    assert decisions["10001-s4"].kind == "none" and decisions["10001-s4"].when_paid, "waits for its payment"
    assert len(gateway.listings) == 1


def test_a_waiting_booking_is_brought_back_when_a_cal_com_payment_for_it_appears_one_listing_per_run() -> None:
    from clinicsync.streams.base import MatchSetup, StreamSettings
    from clinicsync.streams.calcom_booking_payments import PaymentMatcher

    class Source(ListingClient):
        def __init__(self, bookings: list[dict[str, Any]]) -> None:
            super().__init__(bookings)
            self.by_email: list[str] = []

        def iter_booking_pages(self, params: Any) -> list[Any]:
            ((_, email),) = params
            self.by_email.append(email)
            found = [b for b in self.bookings if any(a["email"] == email for a in b["attendees"])]
            return [type("Page", (), {"bookings": found})()]

    source = Source([booking(1), booking(2)])
    gateway = IntentListings([intent(1, 10001, "ann@example.org", created=5_000), intent(2, 10002, "x@y.z", 10)])
    setup = MatchSetup(
        gateway, source, NoLinks(), StreamSettings("UTC", "aud"), {}, "metadata.calcom_booking_id", 4_000
    )
    matcher = PaymentMatcher(setup)
    assert [r["id"] for r in matcher.recheck()] == [10001], "only the booking with a payment made since"
    assert gateway.listings == [{"created": {"gte": 4_000}}] and source.by_email == ["ann@example.org"]
