"""`calcom.bookings` → the attendees' Stripe customers: one customer per person per Stripe account (streams.md §3).

A record of this stream is a *person*: everyone who booked with one email (compared casefolded), summed up over
all their bookings. Cal.com has no id for an attendee, so the record's id is a key derived from the email
(`attendee_ref`): the same person always has the same id, and the database keeps no email.

Who the customer is, is decided by the engine's shared matching: the customer another source's record of this
person is linked to (a Cliniko patient's) is joined; else one customer with this email (e.g. one Cal.com's own
Stripe app made) is adopted; else a new one is made, which a later Cliniko patient with this email adopts;
several candidates go to review. On a customer the primary source also links, only this stream's metadata keys
are written (streams/identity.py).

The booking summary in the customer's metadata depends on the bookings only, never on today's date, so it does
not go stale: the latest-starting booking that is not cancelled or rejected, its start in the clinic's zone, and
how many such bookings the person has. (The bookings' payments are the payment part of this stream, to come.)

Reconciliation compares the person's customer with what a sync would send; on a customer the primary source is
linked to as well, only this stream's metadata (the rest is the primary source's). Duplicates by email are the
patients stream's to report: a customer without a Cal.com reference is usually a Cliniko patient's.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from clinicsync.mapping.apply import MappedRecord
from clinicsync.mapping.preview import stripe_value
from clinicsync.matchkey import normalized
from clinicsync.reconcile.compare import CompareRequest, Comparison, Drift, blank, compare_fields, same
from clinicsync.reconcile.findings import FixKind
from clinicsync.streams import calcom_common, customers
from clinicsync.streams.base import PlanRequest, Record, Stream, StreamSettings, WriteStep, single_write

REF_PREFIX = "att_"
LAST_START_KEY = "metadata.calcom_last_booking_start"  # added by `_enrich`, not by a mapping rule
NOT_COUNTED = frozenset({"cancelled", "rejected"})  # a booking that did not or will not happen


def attendee_ref(email: str) -> str:
    """The person's id: a digest of the casefolded email (the same for "Ann@X.org" and "ann@x.org")."""
    return REF_PREFIX + hashlib.sha256(normalized(email).encode("utf-8")).hexdigest()[:24]


def _attendees(booking: Record) -> Iterator[Record]:
    for attendee in booking.get("attendees") or []:
        if isinstance(attendee, dict) and isinstance(attendee.get("email"), str) and normalized(attendee["email"]):
            yield attendee


def _start(booking: Record) -> str:
    return str(booking.get("start") or "")


def person(email_key: str, bookings: Iterable[Record]) -> Record:
    """The person with this casefolded email, from every booking they attend: their details as given in their
    latest booking (a phone from the latest one that has one), and the booking summary."""
    theirs = sorted(bookings, key=lambda b: (_start(b), str(b.get("uid"))))
    entries = [(b, a) for b in theirs for a in _attendees(b) if normalized(a["email"]) == email_key]
    _, latest = entries[-1]
    counted = [b for b, _ in entries if str(b.get("status") or "").lower() not in NOT_COUNTED]
    last = counted[-1] if counted else None
    phone = next((a.get("phoneNumber") for _, a in reversed(entries) if a.get("phoneNumber")), None)
    return {
        "id": attendee_ref(email_key),
        "email": latest["email"],
        "name": latest.get("name") or "",
        "phoneNumber": phone,
        "timeZone": latest.get("timeZone"),
        "language": latest.get("language"),
        "last_booking_uid": last.get("uid") if last else None,
        "last_booking_start": _start(last) if last else None,
        "booking_count": len({b.get("uid") for b in counted}),
    }


def _by_person(bookings: Iterable[Record]) -> dict[str, list[Record]]:
    grouped: dict[str, list[Record]] = {}
    for booking in bookings:
        for key in dict.fromkeys(normalized(a["email"]) for a in _attendees(booking)):
            grouped.setdefault(key, []).append(booking)
    return grouped


def _people_changed(client: Any, cursor: datetime | None) -> Iterator[Record]:
    """The people of the bookings changed since `cursor`, each summed up over all their bookings. The first (full)
    read has every booking at hand; later ones read each changed person's bookings (`attendeeEmail`)."""
    if cursor is None:
        for key, bookings in _by_person(client.iter_bookings_changed_since(None)).items():
            yield person(key, bookings)
        return
    changed = _by_person(client.iter_bookings_changed_since(cursor))
    for key, bookings in changed.items():
        email = next(a["email"] for a in _attendees(bookings[0]) if normalized(a["email"]) == key)
        theirs = {b["uid"]: b for page in client.iter_booking_pages([("attendeeEmail", email)]) for b in page.bookings}
        theirs.update({b["uid"]: b for b in bookings})  # a listing that lags still has the changed ones
        yield person(key, theirs.values())


def _read_person(client: Any, source_id: str) -> Record | None:
    """A person by id, for a retry or a review decision: the id is a digest, so every booking is read to find
    whose it is (rare: only records a person decided about or that must be read again)."""
    grouped = _by_person(client.iter_bookings_changed_since(None))
    for key, bookings in grouped.items():
        if attendee_ref(key) == source_id:
            return person(key, bookings)
    return None


def local_start(value: str | None, time_zone: str) -> str | None:
    """A booking's UTC start as the clinic's wall-clock time with its offset ("2026-03-04T10:30+11:00")."""
    from clinicsync.sources.calcom import parse_instant

    moment = parse_instant(value)
    return moment.astimezone(ZoneInfo(time_zone)).isoformat(timespec="minutes") if moment else None


def _enrich(mapped: MappedRecord, record: Record, settings: StreamSettings) -> None:
    mapped.payload[LAST_START_KEY] = local_start(record.get("last_booking_start"), settings.time_zone)


def _compare(request: CompareRequest) -> list[Drift]:
    """The mapped fields (only the metadata on a customer the primary source owns) and the last booking's start."""
    drifts = compare_fields(request)
    expected, actual = request.mapped.payload.get(LAST_START_KEY), stripe_value(request.obj, LAST_START_KEY)
    if not same(expected, actual):
        drifts.append(Drift(LAST_START_KEY, blank(expected), blank(actual)))
    return drifts


def _plan(request: PlanRequest) -> list[WriteStep]:
    return single_write(request, "customer", "customer")


CALCOM_BOOKINGS = Stream(
    name="calcom.bookings",
    source_system="calcom",
    primary_role="customer",
    stripe_object="customer",
    read_changed=_people_changed,
    read_one=_read_person,
    archived_value=lambda record: None,  # a person who booked stays one, even when every booking is cancelled
    changed_at=lambda record: None,
    plan=_plan,
    find_created=customers.find_created,
    idle_poll={"calcom": 4, "stripe": 1},
    absence_certain=customers.absence_certain,
    retire_twin=customers.retire_twin,
    enrich=_enrich,
    time_zone=calcom_common.time_zone,
    compare=Comparison(compare=_compare, archive_fix=FixKind.ARCHIVE, can_delete=True),
    # The people Cliniko knows are joined, not duplicated, so Cliniko's patients go first when both are synced.
    depends_on=("cliniko.patients", "calcom.event_types"),
    needs_time_zone=True,
    # calcom.booking_payments reads every booking on a first run, through the same per-run listing (one read).
    carries_out_plan=False,
    # The first read lists every booking at Cal.com's pace: from the run's start, while the streams before it work.
    read_ahead=lambda request: [ahead] if (ahead := request.source.read_ahead_bookings()) else [],
)
