"""Matching a bill to the Stripe payment that paid it, by amount + customer + local date window (streams.md §1, a
shared matching strategy): certain only when exactly one payment fits; everything plausible goes to review with
its candidates; none means nothing is written.

Pure: the payments come from one paged listing per run (`list_payments`), the bills from the stream's read. Dates
are compared in the clinic's zone: a payment's `created` becomes a local date there (zoneinfo, DST-correct) and the
bill's issue date, a pure date, is never shifted.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from clinicsync import labels
from clinicsync.streams.base import MatchDecision

DEFAULT_DAYS_BEFORE = 7
DEFAULT_DAYS_AFTER = 30
SLACK_DAYS = 2  # the UTC listing reaches past the local window on both sides (zones are at most ±14 h off UTC)

# Review reasons (ReviewItem.reason) and the words shown with them.
SEVERAL_EQUAL = "several_payments"
OTHER_CUSTOMER = "payment_other_customer"
SPLIT = "split_payment"
SEVERAL_BILLS = "payment_covers_several"
NAMED_TWICE = "ambiguous_reference"
SHARED_CERTAIN = "payment_fits_several"
BOOKING_PAYMENT = "calcom_booking_payment"
NOT_PAID_THROUGH_STRIPE = labels.NOT_PAID_THROUGH_STRIPE  # the words a practice manager sees


@dataclass(frozen=True)
class Window:
    """Local dates a payment may fall on: `days_before` the issue date to `days_after` it, both included."""

    first: date
    last: date

    def holds(self, day: date) -> bool:
        return self.first <= day <= self.last


def payment_window(issue_date: date, days_before: int, days_after: int) -> Window:
    return Window(issue_date - timedelta(days=days_before), issue_date + timedelta(days=days_after))


@functools.lru_cache(maxsize=65536)  # asked for each payment in each bill's window: a few zones, many bills
def local_date(created: int, zone: str) -> date:
    """The date in `zone` of a Stripe `created` (epoch seconds, UTC)."""
    return datetime.fromtimestamp(created, UTC).astimezone(ZoneInfo(zone)).date()


def listing_range(windows: Iterable[Window]) -> tuple[int, int] | None:
    """The `created` range (epoch s, inclusive) one listing must cover for every window, with a day's slack for
    the zone; None for no windows."""
    spans = list(windows)
    if not spans:
        return None
    first = min(w.first for w in spans) - timedelta(days=SLACK_DAYS)
    last = max(w.last for w in spans) + timedelta(days=SLACK_DAYS)
    start = datetime.combine(first, datetime.min.time(), tzinfo=UTC)
    end = datetime.combine(last, datetime.max.time(), tzinfo=UTC)
    return int(start.timestamp()), int(end.timestamp())


@dataclass(frozen=True)
class Payment:
    """A succeeded card payment: its PaymentIntent, or the charge itself when it was made without one."""

    id: str
    stripe_object: str  # payment_intent | charge
    amount: int
    currency: str
    customer: str | None
    created: int
    refunded: bool  # refunded in full or in part: never "unrefunded"
    billing_email: str | None
    billing_name: str | None
    metadata: Mapping[str, str]

    @property
    def label(self) -> str:
        return f"{self.id} ({amount_text(self.amount, self.currency)})"


def amount_text(units: int, currency: str) -> str:
    """Minor units as money for messages, e.g. "95.50 AUD"."""
    from clinicsync import money

    code = currency or money.DEFAULT_CURRENCY
    return f"{money.from_minor_units(units, code):.{money.exponent(code)}f} {code.upper()}"


def payment_of_charge(charge: Mapping[str, Any]) -> Payment | None:
    """The payment a listed charge (with `payment_intent` expanded) stands for; None unless it succeeded."""
    if charge.get("status") != "succeeded":
        return None
    intent = charge.get("payment_intent")
    billing = charge.get("billing_details") or {}
    customer = charge.get("customer")
    if isinstance(customer, Mapping):
        customer = customer.get("id")
    refunded = bool(charge.get("refunded")) or int(charge.get("amount_refunded") or 0) > 0
    if isinstance(intent, Mapping):
        return Payment(
            id=str(intent["id"]),
            stripe_object="payment_intent",
            amount=int(intent.get("amount") or charge.get("amount") or 0),
            currency=str(intent.get("currency") or charge.get("currency") or ""),
            customer=customer,
            created=int(intent.get("created") or charge.get("created") or 0),
            refunded=refunded,
            billing_email=billing.get("email"),
            billing_name=billing.get("name"),
            metadata=dict(intent.get("metadata") or {}),
        )
    if isinstance(intent, str):  # not expanded: the charge's own fields, the intent's id
        return Payment(
            str(intent), "payment_intent", int(charge.get("amount") or 0), str(charge.get("currency") or ""), customer,
            int(charge.get("created") or 0), refunded, billing.get("email"), billing.get("name"), {},
        )  # fmt: skip
    return Payment(
        id=str(charge["id"]),
        stripe_object="charge",
        amount=int(charge.get("amount") or 0),
        currency=str(charge.get("currency") or ""),
        customer=customer,
        created=int(charge.get("created") or 0),
        refunded=refunded,
        billing_email=billing.get("email"),
        billing_name=billing.get("name"),
        metadata=dict(charge.get("metadata") or {}),
    )


def list_payments(gateway: Any, created: tuple[int, int | None]) -> Iterator[Payment]:
    """Every succeeded payment made in `created` (epoch s range, inclusive; no end: up to now): one paged listing of
    charges, 100 a page, with each charge's PaymentIntent expanded (its metadata and id), never one lookup per
    bill."""
    span = {"gte": created[0]} if created[1] is None else {"gte": created[0], "lte": created[1]}
    filters = {"created": span, "expand": ["data.payment_intent"]}
    for charge in gateway.iter_objects("charge", filters=filters):
        payment = payment_of_charge(charge)
        if payment is not None:
            yield payment


@dataclass
class Bill:
    """What matching needs of one bill (a Cliniko invoice)."""

    source_id: str
    number: str
    amount: int | None  # minor units; None when unreadable
    currency: str
    issue_date: date | None
    zone: str
    customer: str | None  # the patient's customer, through the patients stream's links
    person: str | None  # the patient's source id, to compare a billing email with
    name: str | None  # who the bill is to, to compare a billing name with
    paid: bool  # the source says it is paid
    status_words: str = ""
    window: Window | None = None
    candidates: list[str] = field(default_factory=list)


def name_key(name: Any) -> str:
    """A name as compared with another: letter case and spacing do not count ("" for none)."""
    return " ".join(str(name).casefold().split()) if name else ""


def _same_name(a: str | None, b: str | None) -> bool:
    return bool(a and b) and name_key(a) == name_key(b)


def made_by_calcom(payment: Payment) -> bool:
    """Cal.com's Stripe app took it for a booking: its PaymentIntent's metadata says so (calcom-api.md)."""
    return payment.metadata.get("identifier") == "cal.com" or "bookingId" in payment.metadata


class PaymentIndex:
    """The payments of one listing, by customer, with the ones already linked or naming another bill set aside.

    `bookings`: payments the Cal.com paid-bookings stream links to a booking. Those, and any Cal.com made, paid a
    booking: Cal.com finds the patient's customer by email, so one of the same price as a cash-paid invoice would
    otherwise look like that invoice's payment. They are never linked automatically, at most offered in review.
    """

    def __init__(
        self,
        payments: Iterable[Payment],
        linked: Mapping[str, str],
        cross_ref_key: str,
        bookings: Collection[str] = frozenset(),
    ) -> None:
        self.cross_ref_key = cross_ref_key
        self.bookings: set[str] = set()
        self.linked = linked
        self.by_id: dict[str, Payment] = {}
        self.by_customer: dict[str | None, list[Payment]] = {}
        self.by_amount: dict[int, list[Payment]] = {}  # in by_customer's order: customers as met, then listing order
        self.named: dict[str, list[Payment]] = {}
        self.add(payments, bookings)

    def add(self, payments: Iterable[Payment], bookings: Collection[str] = frozenset()) -> None:
        """More payments (a listing widened to an earlier window); one listed twice counts once."""
        self.bookings.update(bookings)
        for payment in payments:
            if payment.id in self.by_id:
                continue
            self.by_id[payment.id] = payment
            self.by_customer.setdefault(payment.customer, []).append(payment)
            self.by_amount.setdefault(payment.amount, []).append(payment)
            ref = payment.metadata.get(self.cross_ref_key)
            if ref:
                self.named.setdefault(ref, []).append(payment)
        rank = {customer: n for n, customer in enumerate(self.by_customer)}
        for same in self.by_amount.values():
            same.sort(key=lambda p: rank[p.customer])  # stable: listing order within a customer

    def booking_words(self, payment: Payment) -> str | None:
        """Why the payment paid a Cal.com booking, in words; None when nothing says it did."""
        if payment.id in self.bookings:
            return f"{payment.label} is linked to a Cal.com booking by the paid-bookings sync"
        if made_by_calcom(payment):
            booking = payment.metadata.get("bookingId")
            return f"{payment.label} was taken by Cal.com for " + (f"booking {booking}" if booking else "a booking")
        return None

    def free(self, payment: Payment, bill: Bill, *, bookings_too: bool = False) -> bool:
        """Not linked to a bill already, not naming another bill, not a Cal.com booking's (unless `bookings_too`),
        and a payment (not a refund) in the bill's currency made on a local date inside the bill's window."""
        ref = payment.metadata.get(self.cross_ref_key)
        return (
            payment.id not in self.linked
            and (bookings_too or self.booking_words(payment) is None)
            and (not ref or ref == bill.source_id)
            and payment.currency == bill.currency
            and bill.window is not None
            and bill.window.holds(local_date(payment.created, bill.zone))
        )


def decide_bills(
    bills: Sequence[Bill],
    index: PaymentIndex,
    same_person: Any,
    now: datetime | None = None,
    *,
    every: Sequence[Bill] | None = None,
) -> dict[str, MatchDecision]:
    """The decisions of `bills`, judged with every bill known (`every`, when more were read than are decided
    here: those `waits_for_every_bill` let through were decided as they came): `same_person(person, email)` says
    whether a billing email is the bill's person's. `now` (UTC; the clock when None) says whether a window is
    still open."""
    decisions: dict[str, MatchDecision] = {}
    certain: dict[str, str] = {}  # bill → its one exact payment
    now = now or datetime.now(UTC)
    known = bills if every is None else every
    for bill in bills:
        decision, exact = _decide_one(bill, known, index, same_person, now)
        if exact is not None:
            certain[bill.source_id] = exact
        elif decision is not None:
            decisions[bill.source_id] = decision
    fits: dict[str, list[str]] = {}
    for source_id, payment_id in certain.items():
        fits.setdefault(payment_id, []).append(source_id)
    for source_id, payment_id in certain.items():
        payment = index.by_id[payment_id]
        sharing = fits[payment_id]
        if len(sharing) > 1:
            decisions[source_id] = MatchDecision.review(
                [payment_id],
                SHARED_CERTAIN,
                f"payment {payment.label} fits {len(sharing)} invoices exactly; choose which one it paid",
            )
        else:
            decisions[source_id] = MatchDecision.link(
                payment_id, payment.stripe_object, "the payment of exactly the total by the patient's customer"
            )
    return decisions


def waits_for_every_bill(bill: Bill, index: PaymentIndex) -> bool:
    """Whether bills not read yet could change this bill's decision, so it must wait until every bill is known:
    its one exact payment may fit another bill of the customer exactly too (then neither is linked), or a larger
    payment of the customer may be this bill's and another's together. Every other decision (a payment naming it,
    several exact payments, none) depends on this bill and the payments alone, and is made as it is read."""
    if _named(bill, index):
        return False
    if bill.amount is None or bill.amount <= 0 or not bill.paid or bill.window is None:
        return False
    own = _own(bill, index)
    exact = [p for p in own if p.amount == bill.amount and not p.refunded]
    if exact:
        return len(exact) == 1
    return any(not p.refunded and p.amount > bill.amount for p in own)


def sole_exact_payment(bill: Bill, index: PaymentIndex) -> Payment | None:
    """The one exact payment of a bill `waits_for_every_bill` holds back (linked to it unless another bill fits it
    exactly too); None when the bill waits instead for another bill a larger payment may cover with it."""
    own = _own(bill, index)
    exact = [p for p in own if p.amount == bill.amount and not p.refunded]
    return exact[0] if len(exact) == 1 else None


def last_issue_date_fitting(payment: Payment, days_before: int) -> date:
    """The latest issue date of a bill whose window may hold the payment, in any zone: its local date is at most a
    day after its UTC date (zones are at most 14 h ahead of UTC), and a window starts `days_before` that date."""
    return datetime.fromtimestamp(payment.created, UTC).date() + timedelta(days=1 + days_before)


def decide_bill(bill: Bill, index: PaymentIndex, same_person: Any, now: datetime | None = None) -> MatchDecision:
    """The decision of a bill `waits_for_every_bill` lets through (no other bill can change it)."""
    decision, _ = _decide_one(bill, (), index, same_person, now or datetime.now(UTC))
    assert decision is not None, "a bill with one exact payment waits for every bill"
    return decision


def _named(bill: Bill, index: PaymentIndex) -> list[Payment]:
    return [p for p in index.named.get(bill.source_id, []) if p.id not in index.linked]


def _own(bill: Bill, index: PaymentIndex) -> list[Payment]:
    return [p for p in index.by_customer.get(bill.customer, []) if bill.customer and index.free(p, bill)]


def _decide_one(
    bill: Bill, bills: Sequence[Bill], index: PaymentIndex, same_person: Any, now: datetime
) -> tuple[MatchDecision | None, str | None]:
    named = _named(bill, index)
    booked_named = [p for p in named if index.booking_words(p) is not None]
    if booked_named:  # e.g. written on it by an earlier version that took it for the invoice's payment
        words = "; ".join(str(index.booking_words(p)) for p in booked_named)
        detail = f"its metadata names this invoice, but {words}: choose it only if it also paid this invoice"
        return MatchDecision.review([p.id for p in named], BOOKING_PAYMENT, detail), None
    if len(named) == 1:
        return MatchDecision.link(named[0].id, named[0].stripe_object, "its metadata names this invoice"), None
    if len(named) > 1:
        ids = [p.id for p in named]
        return MatchDecision.review(ids, NAMED_TWICE, f"{len(ids)} payments name this invoice in their metadata"), None
    if bill.amount is None or bill.amount <= 0:
        return MatchDecision.none("nothing to pay: no payment to link"), None
    if not bill.paid:
        return MatchDecision.none(f"{bill.status_words or 'not paid'} in Cliniko: no payment to link"), None
    if bill.window is None:
        return MatchDecision.none("the invoice has no issue date: no payment can be matched"), None
    own = _own(bill, index)
    exact = [p for p in own if p.amount == bill.amount and not p.refunded]
    if len(exact) == 1:
        return None, exact[0].id
    if len(exact) > 1:
        ids = [p.id for p in exact]
        detail = f"{len(ids)} payments of exactly the total by the patient's customer; choose the one that paid it"
        return MatchDecision.review(ids, SEVERAL_EQUAL, detail), None
    found: list[tuple[str, list[str], str]] = []
    others = [
        p
        for p in index.by_amount.get(bill.amount, [])
        if (p.customer != bill.customer or not bill.customer)
        and not p.refunded
        and index.free(p, bill)
        and ((bill.person and same_person(bill.person, p.billing_email)) or _same_name(p.billing_name, bill.name))
    ]
    if others:
        detail = "a payment of exactly the total whose billing email or name is the patient's, without their customer"
        found.append((OTHER_CUSTOMER, [p.id for p in others], detail))
    unrefunded = [p for p in own if not p.refunded and p.amount < bill.amount]
    for first, second in itertools.combinations(unrefunded, 2):
        if first.amount + second.amount == bill.amount:
            found.append((SPLIT, [first.id, second.id], "two payments by the patient's customer make the total"))
    larger = [p for p in own if not p.refunded and p.amount > bill.amount]
    partners = [
        b
        for b in (bills if larger else ())  # asked only when it matters: every bill read is a long list
        if b is not bill and b.paid and b.customer == bill.customer and b.amount and b.amount > 0 and b.window
    ]
    for payment in larger:
        if any(payment.amount == bill.amount + other.amount for other in partners):
            detail = "one payment by the patient's customer equals this invoice and another of theirs together"
            found.append((SEVERAL_BILLS, [payment.id], detail))
    booked = [
        p
        for p in index.by_customer.get(bill.customer, [])
        if bill.customer
        and p.amount == bill.amount
        and not p.refunded
        and index.booking_words(p) is not None
        and index.free(p, bill, bookings_too=True)
    ]
    if booked:
        words = "; ".join(str(index.booking_words(p)) for p in booked)
        detail = f"a payment of exactly the total by the patient's customer paid a Cal.com booking ({words})"
        found.append((BOOKING_PAYMENT, [p.id for p in booked], detail))
    if found:
        candidates = list(dict.fromkeys(c for _, ids, _ in found for c in ids))
        detail = "; ".join(dict.fromkeys(text for _, _, text in found)) + ": choose the payment, or none"
        return MatchDecision.review(candidates, found[0][0], detail), None
    return _why_none(bill, own, index, now), None


def _why_none(bill: Bill, own: Sequence[Payment], index: PaymentIndex, now: datetime) -> MatchDecision:
    # Every "not paid through Stripe" is judged again while a payment may still come: until the window's last
    # day has passed in the clinic's zone (the window is of local dates). With a customer, only once a payment
    # of theirs is new (the matcher's recheck); without one, next run (the patients stream may link one).
    today = now.astimezone(ZoneInfo(bill.zone)).date()
    still_open = bill.window is not None and bill.window.last >= today
    if bill.customer is None:
        return MatchDecision.none(
            f"{NOT_PAID_THROUGH_STRIPE}: the patient has no Stripe customer yet", revisit=still_open
        )
    if any(p.amount == bill.amount and p.refunded for p in own):
        return MatchDecision.none(
            f"{NOT_PAID_THROUGH_STRIPE}: the only payment of this amount was refunded",
            revisit=still_open,
            when_paid=True,
        )
    outside = [
        p
        for p in index.by_customer.get(bill.customer, [])
        if p.amount == bill.amount and not p.refunded and p.id not in index.linked and p not in own
    ]
    if outside:
        return MatchDecision.none(
            f"{NOT_PAID_THROUGH_STRIPE}: a payment of this amount was made outside the window",
            revisit=still_open,
            when_paid=True,
        )
    return MatchDecision.none(NOT_PAID_THROUGH_STRIPE, revisit=still_open, when_paid=True)
