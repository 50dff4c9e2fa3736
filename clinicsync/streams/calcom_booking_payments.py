"""`calcom.booking_payments` → the PaymentIntents Cal.com's own Stripe app made for paid bookings, cross-referenced.

A record of this stream is a *paid booking chain*: a booking of an event type that takes payment through Cal.com's
Stripe app, followed through its reschedules (`rescheduledToUid`) to the latest booking. Its id is the numeric id
of the chain's first booking, because that is what Cal.com's Stripe app wrote into the PaymentIntent's metadata
(`bookingId`) when the booker paid, and what it still says after the payment moved to a rescheduled booking
(docs/calcom-api.md §8 and pitfall 4). So the mapping's cross-reference is Cal.com's own key, and the engine's
shared matching (an index of the account's PaymentIntents, listed page by page, never Stripe Search) finds the
payment by it; the write sends the same value back, which changes nothing.

ClinicSync never creates a payment: the record links to the PaymentIntent Cal.com made (a metadata update) and
updates that metadata when the booking changes — its latest uid, event type, clinic-local start, status (a
cancellation included) and owner's email. A cancelled booking whose charge was not refunded says so in the history
row of that write, for the manager to decide about a refund. A chain with no PaymentIntent on this Stripe account
naming it was paid on another one (a practitioner's own connected account) or not at all: reported once
(Stream.unmatched), and again only if the reason changes.

Seated bookings are left out: every seat's booker pays separately, so several PaymentIntents name one booking and
the booking id alone cannot say which payment is whose.
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import replace
from datetime import datetime
from typing import Any

from clinicsync.mapping.apply import MappedRecord
from clinicsync.streams import calcom_common
from clinicsync.streams.base import (
    FindRequest,
    PlanRequest,
    Record,
    RoleLinkInfo,
    Stream,
    StreamSettings,
    WriteStep,
    single_write,
)
from clinicsync.streams.calcom_bookings import local_start
from clinicsync.streams.calcom_event_types import stripe_app

MAX_CHAIN = 50  # reschedules followed from one booking; a longer chain (or a loop in bad data) stops there
NOT_PAID_YET = "pending"  # a paid event type's booking is pending until the booker pays (docs/calcom-api.md §8)
DECLINED = "rejected"
CANCELLED = "cancelled"
CHARGE_ROLE, REFUNDED, NOT_REFUNDED = "charge", "refunded", "not_refunded"
CANCELLED_NOT_REFUNDED = (
    "Cancelled in Cal.com after paying, and the payment was not refunded: check whether a refund is due"
)


def _event_types(client: Any) -> dict[str, Mapping[str, Any]]:
    """Every event type the key sees (its user's and their teams'), by id."""
    found = {str(et.get("id")): et for et in client.list_event_types()}
    for team in client.list_teams():
        found.update({str(et.get("id")): et for et in client.list_team_event_types(team["id"])})
    return found


def _takes_payment(event_type: Mapping[str, Any] | None) -> bool:
    app = stripe_app(event_type) if event_type is not None else None
    return app is not None and bool(app.get("price"))


def _seated(booking: Record) -> bool:
    return any(isinstance(a, dict) and a.get("seatUid") for a in booking.get("attendees") or [])


def _event_type_id(booking: Record) -> str:
    event_type = booking.get("eventType") or {}
    return str(event_type.get("id") or booking.get("eventTypeId") or "")


def _chain(booking: Record, known: dict[str, Record], fetch: Any) -> list[Record]:
    """The reschedule chain `booking` is part of, first booking first; bookings not at hand are read by uid."""

    def get(uid: str) -> Record | None:
        if uid not in known:
            found = fetch(uid)
            if len(found) != 1:
                return None
            known[uid] = found[0]
        return known[uid]

    first, seen = booking, {booking.get("uid")}
    for _ in range(MAX_CHAIN):
        previous_uid = first.get("rescheduledFromUid")
        previous = get(previous_uid) if isinstance(previous_uid, str) and previous_uid not in seen else None
        if previous is None:
            break
        first = previous
        seen.add(previous_uid)
    chain, seen = [first], {first.get("uid")}
    for _ in range(MAX_CHAIN):
        next_uid = chain[-1].get("rescheduledToUid")
        following = get(next_uid) if isinstance(next_uid, str) and next_uid not in seen else None
        if following is None:
            break
        chain.append(following)
        seen.add(next_uid)
    return chain


def chain_record(chain: list[Record], event_types: Mapping[str, Mapping[str, Any]]) -> Record | None:
    """The record of a reschedule chain, or None when it takes no payment through Cal.com's Stripe app."""
    first, latest = chain[0], chain[-1]
    event_type = event_types.get(_event_type_id(latest)) or event_types.get(_event_type_id(first))
    if not _takes_payment(event_type) or any(_seated(b) for b in chain):
        return None
    assert event_type is not None
    hosts = latest.get("hosts") or []
    owner = hosts[0].get("email") if hosts and isinstance(hosts[0], dict) else None
    return {
        "id": first.get("id"),
        "booking_uid": latest.get("uid"),
        "event_type": event_type.get("title") or event_type.get("slug") or "",
        "start": latest.get("start"),
        "status": str(latest.get("status") or "").lower(),
        "owner_email": owner or "",
        "reschedules": len(chain) - 1,
    }


def _records(
    bookings: Iterable[Record], known: dict[str, Record], client: Any, event_types: Mapping[str, Any]
) -> Iterator[Record]:
    done: set[str] = set()
    for booking in bookings:
        chain = _chain(booking, known, client.get_booking)
        if str(chain[0].get("uid")) in done:
            continue
        done.add(str(chain[0].get("uid")))
        record = chain_record(chain, event_types)
        if record is not None:
            yield record


def _chains_changed(client: Any, cursor: datetime | None) -> Iterator[Record]:
    """The paid booking chains with a booking changed since `cursor` (every chain on the first, full read). A
    reschedule changes the old booking and makes a new one, so a chain's other bookings are read by uid only when
    the listing did not bring them."""
    event_types = _event_types(client)
    changed = list(client.iter_bookings_changed_since(cursor))
    known = {str(b["uid"]): b for b in changed}
    yield from _records(changed, known, client, event_types)


# Chains read by id at the start of a run (retries, review decisions) share one listing of every booking.
_LISTINGS: weakref.WeakKeyDictionary[Any, tuple[float, list[Record], dict[str, Mapping[str, Any]]]] = (
    weakref.WeakKeyDictionary()
)
LISTING_REUSE_S = 60.0


def _read_chain(client: Any, source_id: str) -> Record | None:
    """A chain by its first booking's id, for a retry or a review decision. Cal.com reads bookings by uid only, so
    every booking is listed to find it; several such reads within a minute (one run's retries) share the listing."""
    kept = _LISTINGS.get(client)
    if kept is None or time.monotonic() - kept[0] > LISTING_REUSE_S:
        kept = (time.monotonic(), list(client.iter_bookings_changed_since(None)), _event_types(client))
        _LISTINGS[client] = kept
    _, bookings, event_types = kept
    first = next((b for b in bookings if str(b.get("id")) == source_id), None)
    if first is None:
        return None
    known = {str(b["uid"]): b for b in bookings}
    record = next(_records([first], known, client, event_types), None)
    # A rescheduled booking's id names no chain: its chain is known by the first booking's.
    return record if record is not None and str(record["id"]) == source_id else None


def _enrich(mapped: MappedRecord, record: Record, settings: StreamSettings) -> None:
    mapped.payload["metadata.calcom_start_local"] = local_start(record.get("start"), settings.time_zone)


def _observe(gateway: Any, request: PlanRequest) -> tuple[RoleLinkInfo, ...] | None:
    """For a cancelled booking only: its payment's charges, and whether any of the money went back (one listing).
    Cal.com refunds only when a refund policy fires (docs/calcom-api.md pitfall 5), so a cancelled booking's
    charge often stands."""
    if request.mapped.payload.get("metadata.calcom_status") != CANCELLED or request.stripe_id is None:
        return None
    return tuple(
        RoleLinkInfo(
            CHARGE_ROLE,
            str(charge["id"]),
            REFUNDED if charge.get("amount_refunded") else NOT_REFUNDED,
            current=True,
            active=charge.get("status") == "succeeded",
        )
        for charge in gateway.iter_objects("charge", None, {"payment_intent": request.stripe_id})
    )


def _plan(request: PlanRequest) -> list[WriteStep]:
    (step,) = single_write(request, "payment_intent", "payment")
    standing = [c.stripe_id for c in request.observed or () if c.active and c.fingerprint == NOT_REFUNDED]
    if standing:  # said in the history row of this write, for the manager to decide about a refund
        step = replace(step, note=f"{CANCELLED_NOT_REFUNDED} ({', '.join(standing)})")
    return [step]


def _never_created(gateway: Any, request: FindRequest) -> dict[str, Any] | None:
    return None  # ClinicSync only links to the PaymentIntents Cal.com made; it never makes one


def _unmatched(mapped: MappedRecord) -> str:
    """Why a paid booking has no payment to cross-reference, in words."""
    booking, status = mapped.source_id, mapped.payload.get("metadata.calcom_status")
    if status == NOT_PAID_YET:
        return f"Cal.com booking {booking} is not paid yet; its payment is cross-referenced once the booker pays"
    if status == DECLINED:
        return f"Cal.com booking {booking} was declined by the clinic; no payment was taken"
    return (
        f"No payment on this Stripe account names Cal.com booking {booking}: it is out of reach, taken on another "
        "Stripe account (a practitioner's own, connected to Cal.com), or never taken (a card only saved for a "
        "no-show fee). It is not looked for again unless the booking changes."
    )


CALCOM_BOOKING_PAYMENTS = Stream(
    name="calcom.booking_payments",
    source_system="calcom",
    primary_role="payment",
    stripe_object="payment_intent",
    read_changed=_chains_changed,
    read_one=_read_chain,
    archived_value=lambda record: None,  # a cancelled booking's payment keeps its cross-reference (status says so)
    changed_at=lambda record: None,
    plan=_plan,
    find_created=_never_created,
    idle_poll={"calcom": 7, "stripe": 1},
    observe=_observe,
    unmatched=_unmatched,
    enrich=_enrich,
    time_zone=calcom_common.time_zone,
    depends_on=("calcom.bookings",),
    needs_time_zone=True,
)
