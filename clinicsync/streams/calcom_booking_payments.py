"""`calcom.booking_payments` → the PaymentIntents Cal.com's own Stripe app made for paid bookings, cross-referenced.

A record of this stream is a *paid booking chain*: a booking of an event type that takes payment through Cal.com's
Stripe app, followed through its reschedules (`rescheduledToUid`) to the latest booking. Its id is the numeric id
of the chain's first booking, because that is what Cal.com's Stripe app wrote into the PaymentIntent's metadata
(`bookingId`) when the booker paid, and what it still says after the payment moved to a rescheduled booking
(docs/calcom-api.md §8 and pitfall 4). A seated booking is one record per seat: every seat's booker pays for their
own seat, so several PaymentIntents name one booking, each with its seat's booker's email (`bookerEmail`).

The stream's own matcher (`PaymentMatcher`) finds the payment by Cal.com's `bookingId` (and `bookerEmail` for a
seat) in the account's PaymentIntents, listed page by page (never Stripe Search). The cross-reference ClinicSync
writes is its own key, `calcom_booking_id`: Cal.com's keys (`bookingId`, `identifier`, ...) are read, never written,
so a wrong link chosen in review cannot overwrite what Cal.com's app recorded.

ClinicSync never creates a payment: the record links to the PaymentIntent Cal.com made (a metadata update) and
updates that metadata when the booking changes — its latest uid, event type, clinic-local start, status (a
cancellation included) and owner's email. A cancelled booking whose charge was not refunded says so in the history
row of that write, for the manager to decide about a refund. A record with no PaymentIntent on this Stripe account
naming it was paid on another one (a practitioner's own connected account) or not at all: reported once, and again
only if the reason changes; it is looked for again when the booking changes or a new Cal.com payment appears.
"""

from __future__ import annotations

import weakref
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import replace
from datetime import datetime
from typing import Any

from clinicsync.mapping.apply import MappedRecord
from clinicsync.mapping.preview import stripe_value
from clinicsync.matchkey import normalized
from clinicsync.readahead import ReadAhead
from clinicsync.reconcile.compare import CompareRequest, Comparison, Drift, Related, blank, compare_fields, same
from clinicsync.reconcile.findings import FindingType, FixKind, Reason, Severity
from clinicsync.streams import calcom_common
from clinicsync.streams.base import (
    FindRequest,
    MatchDecision,
    MatchSetup,
    PlanRequest,
    ReadAheadRequest,
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
STREAM_NAME = "calcom.booking_payments"
CALCOM_BOOKING_ID = "calcom_booking_id"  # ClinicSync's own cross-reference key on the payment (the mapping's)
SEAT_SEPARATOR = "-"  # a seat's id: its booking's numeric id, this, the seat's uid
RECHECK_BY_EMAIL = 10  # new payments' bookers read by email; more, and every booking is read once
CREATED_SLACK_S = 3600  # a payment made "before" its booking by clocks that differ
NAMED_TWICE, SEVERAL_SEATS = "ambiguous_reference", "calcom_seats_one_payment"
CANCELLED_NOT_REFUNDED = (
    "Cancelled in Cal.com after paying, and the payment was not refunded: check whether a refund is due"
)


# The first run's listing of every PaymentIntent, begun with the run (_read_ahead), by the run's Stripe gateway; the
# run stops it when it ends, taken or not.
_PAYMENTS_AHEAD: weakref.WeakKeyDictionary[Any, ReadAhead[dict[str, Any]]] = weakref.WeakKeyDictionary()


def _read_ahead(request: ReadAheadRequest) -> list[ReadAhead[Any]]:
    """The first read of every booking (as calcom.bookings does: one shared read) and, on the stream's first run
    (when its matcher lists every payment), the listing of every payment: both begin with the run, so they overlap
    the streams before this one. A later run, its cursor reset by a mapping's change, lists payments from the
    previous run on, itself."""
    started: list[ReadAhead[Any]] = []
    bookings = request.source.read_ahead_bookings()
    if bookings is not None:
        started.append(bookings)
    gateway = request.gateway
    if request.first_run and gateway not in _PAYMENTS_AHEAD:
        _PAYMENTS_AHEAD[gateway] = ReadAhead(
            lambda: gateway.iter_objects("payment_intent"), name="Stripe payments", check=request.check
        )
        started.append(_PAYMENTS_AHEAD[gateway])
    return started


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


def _owner_email(booking: Record) -> str:
    hosts = booking.get("hosts") or []
    owner = hosts[0].get("email") if hosts and isinstance(hosts[0], dict) else None
    return owner or ""


def _event_type_of(chain: list[Record], event_types: Mapping[str, Mapping[str, Any]]) -> Mapping[str, Any] | None:
    """The chain's event type when it takes payment through Cal.com's Stripe app, else None."""
    event_type = event_types.get(_event_type_id(chain[-1])) or event_types.get(_event_type_id(chain[0]))
    return event_type if _takes_payment(event_type) else None


def _details(booking: Record, event_type: Mapping[str, Any]) -> Record:
    """What a payment's metadata says of the booking it paid for (the latest one of a reschedule chain)."""
    return {
        "booking_uid": booking.get("uid"),
        "event_type": event_type.get("title") or event_type.get("slug") or "",
        "start": booking.get("start"),
        "status": str(booking.get("status") or "").lower(),
        "owner_email": _owner_email(booking),
    }


def chain_record(chain: list[Record], event_types: Mapping[str, Mapping[str, Any]]) -> Record | None:
    """The record of an unseated reschedule chain, or None when it takes no payment through Cal.com's Stripe app
    (or is seated: see `seat_records`)."""
    first, latest = chain[0], chain[-1]
    event_type = _event_type_of(chain, event_types)
    if event_type is None or any(_seated(b) for b in chain):
        return None
    return {
        "id": first.get("id"),
        "booking_id": str(first.get("id")),
        "booker_email": None,
        "created": first.get("createdAt"),
        **_details(latest, event_type),
        "reschedules": len(chain) - 1,
        "payment_option": (stripe_app(event_type) or {}).get("paymentOption"),  # for reconciliation (HOLD)
    }


def seat_records(booking: Record, event_types: Mapping[str, Mapping[str, Any]]) -> list[Record]:
    """One record per seat of a paid seated booking: every seat's booker paid for their own seat, so Cal.com's
    Stripe app made one PaymentIntent per seat, each naming the booking's id (`bookingId`) and that seat's booker
    (`bookerEmail`). A seat's id is the booking's id and the seat's uid."""
    event_type = _event_type_of([booking], event_types)
    if event_type is None:
        return []
    seats = [a for a in booking.get("attendees") or [] if isinstance(a, dict) and a.get("seatUid") and a.get("email")]
    return [
        {
            "id": f"{booking.get('id')}{SEAT_SEPARATOR}{seat['seatUid']}",
            "booking_id": str(booking.get("id")),
            "booker_email": seat["email"],
            "seat_uid": seat["seatUid"],
            "created": booking.get("createdAt"),
            **_details(booking, event_type),
            "reschedules": 0,
            "payment_option": (stripe_app(event_type) or {}).get("paymentOption"),
        }
        for seat in seats
    ]


def _records(
    bookings: Iterable[Record], known: dict[str, Record], client: Any, event_types: Mapping[str, Any]
) -> Iterator[Record]:
    done: set[str] = set()
    for booking in bookings:
        if _seated(booking):  # a seat is rescheduled seat by seat: each seat stays with the booking it paid for
            yield from seat_records(booking, event_types)
            continue
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


def _read_chain(client: Any, source_id: str) -> Record | None:
    """A chain by its first booking's id (a seat by its booking's id and its seat's uid), for a retry or a review
    decision. Cal.com reads bookings by uid only, so every booking is listed to find it; the client keeps that
    listing for the rest of its run, so one run's reads by id (and its streams) share it."""
    booking_id = source_id.partition(SEAT_SEPARATOR)[0]
    bookings = list(client.iter_bookings_changed_since(None))
    first = next((b for b in bookings if str(b.get("id")) == booking_id), None)
    if first is None:
        return None
    known = {str(b["uid"]): b for b in bookings}
    # A rescheduled booking's id names no chain: its chain is known by the first booking's.
    return next((r for r in _records([first], known, client, _event_types(client)) if str(r["id"]) == source_id), None)


def _enrich(mapped: MappedRecord, record: Record, settings: StreamSettings) -> None:
    mapped.payload["metadata.calcom_start_local"] = local_start(record.get("start"), settings.time_zone)


class _Charges:
    """The charges of the payments a run asks about, and whether money went back. A payment the run's matcher listed
    (a first sync lists them all) names its charge (`latest_charge`) and says whether it succeeded, and one listing
    of the account's refunds says which were refunded. Those of other payments (linked on an earlier run) are listed
    one payment at a time for the first few; past that, the account's charges are listed once and indexed, rather
    than one listing per booking while planning."""

    ONE_BY_ONE = 10

    def __init__(self) -> None:
        self.listed: dict[str, Mapping[str, Any]] = {}  # PaymentIntents the matcher listed, by id
        self._refunded: set[str] | None = None  # ids of payments and charges with money back
        self._asked = 0
        self._by_intent: dict[str, list[dict[str, Any]]] | None = None

    def of(self, gateway: Any, intent_id: str) -> list[dict[str, Any]]:
        intent = self.listed.get(intent_id)
        if intent is not None:
            return self._from_listing(gateway, intent_id, intent)
        if self._by_intent is None and self._asked < self.ONE_BY_ONE:
            self._asked += 1
            return list(gateway.iter_objects("charge", None, {"payment_intent": intent_id}))
        if self._by_intent is None:
            self._by_intent = {}
            for charge in gateway.iter_objects("charge"):
                if charge.get("payment_intent"):
                    self._by_intent.setdefault(str(charge["payment_intent"]), []).append(charge)
        return self._by_intent.get(intent_id, [])

    def _from_listing(self, gateway: Any, intent_id: str, intent: Mapping[str, Any]) -> list[dict[str, Any]]:
        charge = intent.get("latest_charge")
        charge = charge.get("id") if isinstance(charge, Mapping) else charge
        if not charge:  # never paid: no money to give back
            return []
        if self._refunded is None:
            self._refunded = set()
            for refund in gateway.iter_objects("refund"):
                if refund.get("status") in ("succeeded", "pending"):
                    self._refunded.update(
                        str(ref) for ref in (refund.get("payment_intent"), refund.get("charge")) if ref
                    )
        refunded = intent_id in self._refunded or str(charge) in self._refunded
        status = "succeeded" if intent.get("status") == "succeeded" else str(intent.get("status") or "")
        return [{"id": str(charge), "status": status, "amount_refunded": 1 if refunded else 0}]


# One per Stripe gateway: the sync service makes a gateway per run, so the index lives as long as the run. It must
# not refer to its gateway (its key): a value holding its key keeps both for ever, a run's listing of every payment
# with them (tests/integration/test_run_memory.py).
_CHARGES: weakref.WeakKeyDictionary[Any, _Charges] = weakref.WeakKeyDictionary()


def _charges_of_run(gateway: Any) -> _Charges:
    charges = _CHARGES.get(gateway)
    if charges is None:
        charges = _CHARGES[gateway] = _Charges()
    return charges


def _observe(gateway: Any, request: PlanRequest) -> tuple[RoleLinkInfo, ...] | None:
    """For a cancelled booking only: its payment's charges, and whether any of the money went back. Cal.com refunds
    only when a refund policy fires (docs/calcom-api.md pitfall 5), so a cancelled booking's charge often stands."""
    if request.mapped.payload.get("metadata.calcom_status") != CANCELLED or request.stripe_id is None:
        return None
    charges = _charges_of_run(gateway)
    return tuple(
        RoleLinkInfo(
            CHARGE_ROLE,
            str(charge["id"]),
            REFUNDED if charge.get("amount_refunded") else NOT_REFUNDED,
            current=True,
            active=charge.get("status") == "succeeded",
        )
        for charge in charges.of(gateway, request.stripe_id)
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
    """Why a paid booking (or one seat of it) has no payment to cross-reference, in words."""
    booking_id, _, seat = mapped.source_id.partition(SEAT_SEPARATOR)
    booking, status = booking_id + (", one seat," if seat else ""), mapped.payload.get("metadata.calcom_status")
    if status == NOT_PAID_YET:
        return f"Cal.com booking {booking} is not paid yet; its payment is cross-referenced once the booker pays"
    if status == DECLINED:
        return f"Cal.com booking {booking} was declined by the clinic; no payment was taken"
    return (
        f"No payment on this Stripe account names Cal.com booking {booking}: it is out of reach, taken on another "
        "Stripe account (a practitioner's own, connected to Cal.com), or never taken (a card only saved for a "
        "no-show fee). It is looked for again when the booking changes or a new Cal.com payment appears in Stripe."
    )


def _is_calcom(intent: Mapping[str, Any]) -> bool:
    metadata = intent.get("metadata") or {}
    return metadata.get("identifier") == "cal.com" or bool(metadata.get(CALCOM_BOOKING_ID))


def _created(record: Record) -> int | None:
    from clinicsync.sources.calcom import parse_instant

    moment = parse_instant(record.get("created"))
    return int(moment.timestamp()) if moment is not None else None


class PaymentMatcher:
    """The paid bookings (and seats) offered in one run, each matched to the PaymentIntent Cal.com's Stripe app made
    for it: one naming this record in ClinicSync's own key (`calcom_booking_id`, linked before, e.g. by an earlier
    installation), else one whose Cal.com `bookingId` names the chain's first booking (and, for a seat, whose
    `bookerEmail` is the seat's booker's). Exactly one links; several go to review; none leaves the record waiting:
    it is judged again when a new Cal.com payment appears (`recheck`), not read by id on every run.

    The PaymentIntents come from the account's listing: all of them on the first run; on later runs those made since
    the previous run (for `recheck`), and those made since the oldest offered booking was created (a payment is
    made with its booking or after it), each part listed once."""

    def __init__(self, setup: MatchSetup) -> None:
        self.setup = setup
        self.offered: dict[str, tuple[MappedRecord, Record]] = {}
        self._intents: dict[str, Mapping[str, Any]] = {}
        self._listed_from: int | None = None  # `created` from which every PaymentIntent is listed
        self._listed_all = False
        # The first run's listing of every payment, read on a thread of its own from the run's start (_read_ahead).
        self._ahead: ReadAhead[dict[str, Any]] | None = None

    def offer(self, mapped: MappedRecord, record: Record) -> None:
        if self._ahead is None and self.setup.since is None and not self._listed_all:
            ahead = _PAYMENTS_AHEAD.pop(self.setup.gateway, None)
            self._ahead = ahead if ahead is not None and not ahead.stopped else None
        self.offered[mapped.source_id] = (mapped, record)

    def _list_from(self, since: int | None) -> None:
        """List the PaymentIntents made at or after `since` (None: all) that are not listed yet."""
        if self._listed_all or (since is not None and self._listed_from is not None and since >= self._listed_from):
            return
        created: dict[str, int] = {} if since is None else {"gte": since}
        if self._listed_from is not None:
            created["lt"] = self._listed_from
        filters = {"created": created} if created else None
        ahead = self._ahead if since is None and self._listed_from is None else None
        if ahead is None:
            self._keep(self.setup.gateway.iter_objects("payment_intent", None, filters))
        else:
            self._keep(ahead, early=True)
            # Read from the run's start, before this stream's own start (from which the next run looks for new
            # payments): those made since are listed now, as newer than the listing's newest (newest first, so it
            # came first); when it found none, every payment there is now was made since.
            newest = next(iter(self._intents), None)
            if newest is None:
                self._keep(self.setup.gateway.iter_objects("payment_intent"))
            else:
                self._keep(self.setup.gateway.iter_newer("payment_intent", newest))
        self._listed_from, self._listed_all = since, since is None

    def _keep(self, intents: Iterable[Mapping[str, Any]], *, early: bool = False) -> None:
        """Keep the listed PaymentIntents for matching, and for planning a cancelled booking's write (whether its
        payment went through and was refunded). One listed `early` (at the run's start, minutes ago maybe) that had
        not succeeded may have since: its charges are asked of Stripe when needed, not taken from the listing."""
        listed = _charges_of_run(self.setup.gateway).listed
        for intent in intents:
            self._intents[str(intent["id"])] = intent
            if not early or intent.get("status") == "succeeded":
                listed[str(intent["id"])] = intent

    def recheck(self) -> Iterator[Record]:
        """The waiting paid bookings with a Cal.com payment made since the last run: one listing of those payments;
        the bookings of each such payment's booker read by email (at most a few; more and every booking is read,
        once for the run). A record already linked comes back unchanged and writes nothing."""
        since = self.setup.since
        if since is None:  # the first run reads every booking anyway
            return
        self._list_from(since)
        wanted: dict[str, set[str]] = {}  # Cal.com booking id -> bookers' emails
        for intent in self._intents.values():
            metadata = intent.get("metadata") or {}
            booking_id = str(metadata.get("bookingId") or "")
            if intent["id"] in self.setup.linked or not _is_calcom(intent) or not booking_id:
                continue
            if self.setup.links.stripe_id(STREAM_NAME, booking_id) is not None:
                continue  # an unseated booking linked already (to another payment: a second one is no news here)
            wanted.setdefault(booking_id, set()).add(normalized(str(metadata.get("bookerEmail") or "")))
        if not wanted:
            return
        client = self.setup.source
        emails = {email for found in wanted.values() for email in found if email}
        if len(emails) > RECHECK_BY_EMAIL or any(not (found - {""}) for found in wanted.values()):
            bookings = list(client.iter_bookings_changed_since(None))
        else:
            bookings = [
                b
                for email in sorted(emails)
                for page in client.iter_booking_pages([("attendeeEmail", email)])
                for b in page.bookings
            ]
        known = {str(b["uid"]): b for b in bookings}
        firsts = [b for b in {str(b["uid"]): b for b in bookings}.values() if str(b.get("id")) in wanted]
        yield from _records(firsts, known, client, _event_types(client))

    def listed_below(self, value: Any) -> dict[str, MatchDecision]:
        return {}  # the bookings' listing has no order a payment's candidates could be known complete by

    def decide(self) -> dict[str, MatchDecision]:
        if not self.offered:
            return {}
        created = [_created(record) for _, record in self.offered.values()]
        if self.setup.since is None or any(c is None for c in created):
            self._list_from(None)
        else:
            self._list_from(min(min(c for c in created if c is not None) - CREATED_SLACK_S, self.setup.since))
        by_own: dict[str, list[str]] = {}
        by_booking: dict[str, list[str]] = {}
        for intent in self._intents.values():
            if intent["id"] in self.setup.linked or not _is_calcom(intent):
                continue
            metadata = intent.get("metadata") or {}
            if metadata.get(CALCOM_BOOKING_ID):
                by_own.setdefault(str(metadata[CALCOM_BOOKING_ID]), []).append(str(intent["id"]))
            if metadata.get("bookingId"):
                by_booking.setdefault(str(metadata["bookingId"]), []).append(str(intent["id"]))
        found = {sid: self._candidates(sid, record, by_own, by_booking) for sid, (_, record) in self.offered.items()}
        self._pair_seats(found, by_own)
        wanted = Counter(ids[0] for ids in found.values() if len(ids) == 1)
        decisions: dict[str, MatchDecision] = {}
        for sid, ids in found.items():
            mapped, _ = self.offered[sid]
            if len(ids) == 1 and wanted[ids[0]] == 1:
                decisions[sid] = MatchDecision.link(ids[0], "payment_intent")
            elif len(ids) == 1:
                decisions[sid] = MatchDecision.review(
                    ids, SEVERAL_SEATS, f"{ids[0]} is the only payment for several seats of this booking's booker"
                )
            elif ids and SEAT_SEPARATOR in sid:
                decisions[sid] = MatchDecision.review(
                    ids, NAMED_TWICE, f"{len(ids)} Stripe payments are this seat's booker's for this booking"
                )
            elif ids:
                decisions[sid] = MatchDecision.review(
                    ids, NAMED_TWICE, f"{len(ids)} Stripe payments already name this record in their metadata"
                )
            else:
                decisions[sid] = MatchDecision.none(_unmatched(mapped), revisit=True, when_paid=True)
        return decisions

    def _pair_seats(self, found: dict[str, list[str]], by_own: Mapping[str, list[str]]) -> None:
        """Several seats one booker booked (a parent for their children), and as many payments of theirs for that
        booking: each seat gets one, in a fixed order (seat uid, payment time). The payments are alike (one
        booker, one booking, one price), so which seat is whose matters to nobody, and asking would be noise."""
        groups: dict[tuple[str, str], list[str]] = {}
        for sid, (_, record) in self.offered.items():
            if record.get("seat_uid") and not by_own.get(sid):
                key = (str(record.get("booking_id")), normalized(str(record.get("booker_email") or "")))
                groups.setdefault(key, []).append(sid)
        for sids in groups.values():
            pool = sorted(found[sids[0]], key=lambda i: (self._intents[i].get("created") or 0, i))
            if len(sids) > 1 and len(pool) == len(sids):
                for sid, intent_id in zip(sorted(sids), pool, strict=True):
                    found[sid] = [intent_id]

    def _candidates(
        self, sid: str, record: Record, by_own: Mapping[str, list[str]], by_booking: Mapping[str, list[str]]
    ) -> list[str]:
        if by_own.get(sid):
            return list(by_own[sid])
        ids = by_booking.get(str(record.get("booking_id")), [])
        if record.get("seat_uid"):  # a seat's payment is its booker's
            email = normalized(str(record.get("booker_email") or ""))
            ids = [
                i
                for i in ids
                if normalized(str((self._intents[i].get("metadata") or {}).get("bookerEmail") or "")) == email
            ]
        # One naming another record in ClinicSync's own key is that record's (found by its own key), not this one's.
        return [i for i in ids if not (self._intents[i].get("metadata") or {}).get(CALCOM_BOOKING_ID)]

    def linked_news(self) -> list[tuple[str, str, str]]:
        return []

    def stop(self) -> None:
        """The run ended: the listing it took lists no more (the run stops every listing it read ahead, too)."""
        if self._ahead is not None:
            self._ahead.stop(0)


# --- reconciliation (issue 12): each paid booking against its payment ------------------------------------------
HOLD = "HOLD"  # the Stripe app's option that only saves the card (for a no-show fee): nothing is paid on booking
START_KEY = "metadata.calcom_start_local"


def reconcile_facts(record: Record, settings: Any) -> dict[str, Any]:
    return {"payment_option": record.get("payment_option")}


def _amount(units: int, currency: str) -> str:
    from clinicsync.streams.payment_matching import amount_text

    return amount_text(units, currency)


def reconcile_unmatched(mapped: MappedRecord, facts: Mapping[str, Any]) -> Drift | None:
    """A booking Cal.com says is paid (accepted, or rescheduled on) with no payment on this account naming it.
    Not paid yet, declined, cancelled before paying, or a card only saved for a no-show fee: nothing is owed."""
    status = mapped.payload.get("metadata.calcom_status")
    if status in (NOT_PAID_YET, DECLINED, CANCELLED) or facts.get("payment_option") == HOLD:
        return None
    return Drift(
        "",
        status,
        None,
        kind=FindingType.BOOKING_PAYMENT_MISMATCH,
        reason=Reason.NO_PAYMENT,
        severity=Severity.MEDIUM,
        explanation=(
            f"Cal.com booking {{record}} is paid ({status}), but no payment on this Stripe account names it: it was "
            "taken on another Stripe account (a practitioner's own, connected to Cal.com), or never taken."
        ),
        fixes=(FixKind.REPUSH, FixKind.MARK_INTENDED),
    )


def reconcile_compare(request: CompareRequest) -> list[Drift]:
    """The metadata the sync writes (and the clinic-local start), then the money: a booking Cal.com counts as paid
    whose payment did not go through, and a cancelled one whose payment was not refunded at all."""
    drifts = compare_fields(request)
    expected, actual = request.mapped.payload.get(START_KEY), stripe_value(request.obj, START_KEY)
    if not same(expected, actual):
        drifts.append(Drift(START_KEY, blank(expected), blank(actual)))
    intent = request.obj
    status, paid = request.mapped.payload.get("metadata.calcom_status"), str(intent.get("status") or "")
    held = request.facts.get("payment_option") == HOLD
    pid, amount = intent.get("id"), _amount(int(intent.get("amount") or 0), str(intent.get("currency") or ""))
    if status == CANCELLED and paid == "succeeded":
        if not any(int(charge.get("amount_refunded") or 0) > 0 for charge in request.related):
            drifts.append(
                Drift(
                    "amount_refunded",
                    amount,
                    None,
                    kind=FindingType.BOOKING_PAYMENT_MISMATCH,
                    reason=Reason.NOT_REFUNDED,
                    severity=Severity.MEDIUM,
                    explanation=(
                        f"Cal.com booking {{record}} was cancelled, but its payment {pid} ({amount}) was not refunded: "
                        "refund it in Stripe if it is due, or mark it as intended (a late-cancellation fee)."
                    ),
                    fixes=(FixKind.MARK_INTENDED,),
                )
            )
    elif status not in (NOT_PAID_YET, DECLINED, CANCELLED) and paid != "succeeded" and not held:
        drifts.append(
            Drift(
                "status",
                "succeeded",
                paid,
                kind=FindingType.BOOKING_PAYMENT_MISMATCH,
                reason=Reason.PAYMENT_DIFFERS,
                severity=Severity.HIGH,
                explanation=(
                    f"Cal.com booking {{record}} is {status}, but its payment {pid} ({amount}) is "
                    f"{paid.replace('_', ' ')}: it was not paid."
                ),
                fixes=(FixKind.CORRECT_SOURCE, FixKind.MARK_INTENDED),
            )
        )
    return drifts


COMPARISON = Comparison(
    compare=reconcile_compare,
    archive_fix=FixKind.ARCHIVE,
    # The payments are Cal.com's: ClinicSync never retires one, and a payment naming a booking it does not compare
    # (a seat's, one made on another Cal.com account) is not its to report.
    reports=frozenset({FindingType.BOOKING_PAYMENT_MISMATCH, FindingType.FIELD_DRIFT}),
    related=(Related("charge", "payment_intent"),),
    facts=reconcile_facts,
    unmatched=reconcile_unmatched,
)


CALCOM_BOOKING_PAYMENTS = Stream(
    name=STREAM_NAME,
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
    matcher=PaymentMatcher,
    enrich=_enrich,
    time_zone=calcom_common.time_zone,
    depends_on=("calcom.bookings",),
    compare=COMPARISON,
    needs_time_zone=True,
    read_ahead=_read_ahead,
)
