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


def test_the_mapping_writes_cal_com_s_own_booking_id_and_the_latest_booking_s_details() -> None:
    record = chain_record([booking(1, before=2), booking(2, after=1)], EVENT_TYPES)
    assert record is not None
    mapped = map_record(MAPPING, record)
    assert mapped.error is None
    assert mapped.payload["metadata.bookingId"] == "10001", "Cal.com's key, with the value it holds already"
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
