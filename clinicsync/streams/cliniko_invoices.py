"""`cliniko.invoices` → the Stripe payment that paid each invoice (issue 11, linking and status).

Cliniko has no payments API, so an invoice is linked to a payment found in Stripe (streams/payment_matching.py):
(1) the local link, (2) a payment whose metadata names the invoice, (3) exactly one succeeded, unrefunded payment of
exactly the total by the patient's customer (through the patients stream's links) within the window around the
issue date, in the clinic's zone. Plausible but uncertain ones go to review; none writes nothing. A link writes the
invoice's id, number and status into the payment's metadata (the PaymentIntent's, or a bare charge's); a status
change updates it. Nothing is ever created, and the invoice's notes never leave the clinic (the mapping's
clinical allow-list).
"""

from __future__ import annotations

import heapq
import itertools
import logging
from collections.abc import Iterator, Mapping
from datetime import date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from clinicsync import money
from clinicsync.mapping import invoice_status
from clinicsync.mapping.apply import MappedRecord
from clinicsync.readahead import ReadAhead
from clinicsync.reconcile.compare import CompareRequest, Comparison, Drift, StripeScope, compare_fields
from clinicsync.reconcile.findings import FindingType, FixKind, Reason, Severity
from clinicsync.streams import cliniko_common, payment_side
from clinicsync.streams import payment_matching as pm
from clinicsync.streams.base import (
    CANDIDATES_LISTED,
    ListedBelow,
    ListingMark,
    MatchDecision,
    MatchSetup,
    NotYet,
    PlanRequest,
    Record,
    Stream,
    StreamSettings,
    WriteStep,
)

log = logging.getLogger(__name__)

NAME = "cliniko.invoices"
PATIENTS = "cliniko.patients"
BOOKING_PAYMENTS = "calcom.booking_payments"  # its payments paid Cal.com bookings: never an invoice's by guess
DAYS_BEFORE_SETTING = "cliniko.invoices.match_days_before"
DAYS_AFTER_SETTING = "cliniko.invoices.match_days_after"
# Before Cliniko's clock as the first read began: a change stamped by another of its servers is not missed.
CATCH_UP_OVERLAP = timedelta(minutes=1)


def _invoices_changed(client: Any, cursor: datetime | None) -> Iterator[Record | ListingMark]:
    # Default lists hide archived and deleted invoices: the client reads live and archived ones (one pass or two),
    # deleted ones have a pass of their own (cliniko-api.md §3). Only live invoices are offered to the matcher (an
    # archived or deleted one is never linked), so once every live invoice is listed no payment can find another
    # candidate: the mark lets the invoices that waited be decided then, and their links sent while the deleted
    # pass is read. The first read lists them by issue date, so a payment's candidates are all known long before
    # that (`_issue_marks`); a later read is of the few changed since, oldest change first, decided at its end.
    if cursor is None:
        # An invoice made or re-dated during the read to an issue date it has passed is not listed by it: the live
        # invoices changed since it began are read once more before every candidate is said to be listed, so one
        # such invoice is judged beside those its payment fits (the engine skips a version it has handled).
        began = client.probe() - CATCH_UP_OVERLAP
        live: Iterator[Record | ListingMark] = itertools.chain(
            _issue_marks(client.iter_live_and_archived("/invoices", None, order="issue_date")),
            client.iter_changed("/invoices", began),
        )
    else:
        live = client.iter_live_and_archived("/invoices", cursor)
    return itertools.chain(live, (CANDIDATES_LISTED,), client.iter_changed("/invoices", cursor, deleted=True))


def _issue_marks(listing: Iterator[Record]) -> Iterator[Record | ListingMark]:
    """The listing, in ascending issue date, with a ListedBelow(date) mark before the first invoice of each later
    date: every live invoice issued before it has been listed. Only in a pass known to list live invoices (one
    listed already: the `archived_at:*` pass may list archived ones alone, the live pass then follows, from its
    earliest date again)."""
    live_seen, newest = False, None
    for record in listing:
        issued = _issue_date(record)
        if issued is not None and newest is not None and issued < newest:  # the live pass after an archived one
            live_seen, newest = False, None
        live_seen = live_seen or ("archived_at" in record and record["archived_at"] is None)
        if issued is not None and (newest is None or issued > newest):
            if live_seen:
                yield ListedBelow(issued)
            newest = issued
        yield record


def _issue_date(record: Record) -> date | None:
    try:
        return date.fromisoformat(str(record.get("issue_date")))
    except ValueError:
        return None


def _total_and_issue_date(record: Record, currency: str) -> tuple[int | None, date | None]:
    """The invoice's total in minor units and its issue date; None for either that does not parse."""
    try:
        amount: int | None = money.to_minor_units(record.get("total_amount"), currency)
    except money.MoneyError:
        amount = None
    return amount, _issue_date(record)


def _invoice_archived(record: Record) -> str | None:
    return cliniko_common.archived_value(record, ("deleted_at", "archived_at"))


def _enrich(mapped: MappedRecord, record: Record, settings: StreamSettings) -> None:
    """The invoice is shown by its number (the payment's own description is never ours to change)."""
    number = record.get("number")
    mapped.display_name = f"Invoice {number}" if number not in (None, "") else mapped.display_name


def object_of(stripe_id: str) -> str:
    """Which Stripe object a linked payment is: a bare charge keeps its own metadata (Stripe copies none between a
    PaymentIntent and its charge)."""
    return "charge" if stripe_id.startswith(("ch_", "py_")) else "payment_intent"


def plan(request: PlanRequest) -> list[WriteStep]:
    if request.op == "create" or request.stripe_id is None:
        raise NotYet("an invoice is only ever linked to a payment that exists; nothing is created")
    kind = object_of(request.stripe_id)
    words = "PaymentIntent" if kind == "payment_intent" else "charge (made without a PaymentIntent)"
    verb = "cross-reference written to" if request.op == "link" else "status updated on"
    return [
        WriteStep(
            role="payment",
            op=request.op,
            stripe_object=kind,
            params=request.params,
            stripe_id=request.stripe_id,
            note=f"{verb} {words} {request.stripe_id}",
        )
    ]


# --- matching ------------------------------------------------------------------------------------------------
def _link(value: Any) -> str | None:
    from clinicsync.sources.cliniko import link_id

    return link_id(value) if isinstance(value, Mapping) else None


class InvoiceMatcher:
    """The invoices offered in one run (streams/payment_matching.py). Stripe's payments are listed once, at the
    first invoice that needs them: from its window's start up to now, widened back only when a later invoice's
    window starts earlier. Each invoice is decided as it is offered, so its link goes out while Cliniko is still
    read, unless invoices still to come could change the decision (`pm.waits_for_every_bill`: one exact payment
    that may fit another invoice too, a larger payment that may pay two): those wait for `decide`, called once
    every invoice that could share a payment has been offered. On a read in issue-date order, one whose only wait
    is its one exact payment is decided as soon as the read has passed every issue date whose window could hold
    that payment (`listed_below`): no invoice still to come could fit it too."""

    def __init__(self, setup: MatchSetup) -> None:
        self.setup = setup
        self.settings = setup.settings
        self.before = _days(setup.settings, DAYS_BEFORE_SETTING, pm.DEFAULT_DAYS_BEFORE)
        self.after = _days(setup.settings, DAYS_AFTER_SETTING, pm.DEFAULT_DAYS_AFTER)
        self.bills: dict[str, pm.Bill] = {}  # by invoice id: one read twice in a run (edited mid-sync) counts once
        self._waiting: set[str] = set()  # invoices decided by `decide`
        # Waiting invoices offered before the payments were listed: not yet sorted into those below and those that
        # wait for every invoice.
        self._unsorted: set[str] = set()
        # A waiting invoice with one exact payment → the last issue date of an invoice that could fit it too
        # (decided once the read is past it), and those dates in order (entries of invoices read again go stale).
        self._fits_until: dict[str, date] = {}
        self._by_fits_until: list[tuple[date, str]] = []
        self._closed = False  # every invoice that could share a payment has been offered
        self._index = pm.PaymentIndex([], setup.linked, setup.cross_ref_key)
        self._listed_from: int | None = None  # the listing covers payments made from then (epoch s) up to now
        # The first listing (several seconds of pages) runs beside the Cliniko read, not in its way: the invoices
        # offered meanwhile wait with those that wait for every invoice. Stopped with the run (`stop`).
        self._first_listing: ReadAhead[pm.Payment] | None = None
        self._zones: dict[str, str] | None = None
        self._customers: dict[str, str] | None = None

    def _zone(self, business_id: str | int | None) -> str:
        if self._zones is None:
            self._zones = _business_zones(self.setup.source)
        return self._zones.get(str(business_id) if business_id is not None else "", self.settings.time_zone)

    def _customer(self, patient: str | None) -> str | None:
        """The patient's customer, through the patients stream's links (read once for every patient: asked for
        each invoice, one query each took longer than the invoice's own decision)."""
        if patient is None:
            return None
        if self._customers is None:
            self._customers = self.setup.links.all_stripe_ids(PATIENTS)
        return self._customers.get(patient)

    def _bill(self, mapped: MappedRecord, record: Record) -> pm.Bill:
        currency = self.settings.currency
        amount, issued = _total_and_issue_date(record, currency)
        patient = _patient_of(record)
        status = record.get("status")
        return pm.Bill(
            source_id=mapped.source_id,
            number=str(record.get("number") or ""),
            amount=amount,
            currency=currency,
            issue_date=issued,  # a pure date: never shifted
            zone=self._zone(_link(record.get("business")) or record.get("business_id")),
            customer=self._customer(patient),
            person=patient,
            name=record.get("invoice_to"),
            paid=invoice_status.is_paid(status),  # open credit too: paid beyond the total (invoice_status.py)
            status_words=invoice_status.words(status),
            window=pm.payment_window(issued, self.before, self.after) if issued else None,
        )

    def _list_payments(self, window: pm.Window | None) -> None:
        """Make the index hold every payment the window may see: the first listing runs up to now (later windows
        need the same payments; none is made in the future), on a thread of its own; later ones only fill in
        earlier days."""
        span = pm.listing_range([window]) if window is not None else None
        if span is None or (self._listed_from is not None and span[0] >= self._listed_from):
            return
        gateway, start = self.setup.gateway, span[0]
        if self._listed_from is None:
            self._first_listing = ReadAhead(
                lambda: pm.list_payments(gateway, (start, None)),
                name="Stripe payments for invoices",
                check=self.setup.check,
            )
        else:
            self._add(list(pm.list_payments(gateway, (start, self._listed_from - 1))))
        self._listed_from = start

    def _add(self, payments: list[pm.Payment]) -> None:
        ids = [p.id for p in payments]
        bookings = set(self.setup.links.linked_by(BOOKING_PAYMENTS, ids)) if ids else set()
        self._index.add(payments, bookings)

    def _listed(self, *, wait: bool) -> bool:
        """Whether the first listing's payments are in the index (waiting for them when `wait`); raises what the
        listing raised."""
        if self._first_listing is None:
            return True
        if not wait and not self._first_listing.ended:
            return False
        payments, self._first_listing = list(self._first_listing), None
        self._add(payments)
        return True

    def _same_person(self, person: str, email: str | None) -> bool:
        return self.setup.links.same_person(PATIENTS, person, email)

    def offer(self, mapped: MappedRecord, record: Record) -> MatchDecision | None:
        """The invoice's decision now, or None when it waits for `decide`."""
        bill = self._bill(mapped, record)
        self.bills[bill.source_id] = bill
        self._waiting.discard(bill.source_id)  # read again (edited mid-sync): this version is the one decided
        self._fits_until.pop(bill.source_id, None)
        self._unsorted.discard(bill.source_id)
        self._list_payments(bill.window)
        if not self._listed(wait=self._closed):  # the payments are still being listed
            self._waiting.add(bill.source_id)
            self._unsorted.add(bill.source_id)
            return None
        if self._closed:  # offered late (made or edited during the run): judged with every invoice read
            every = list(self.bills.values())
            return pm.decide_bills([bill], self._index, self._same_person, every=every)[bill.source_id]
        if pm.waits_for_every_bill(bill, self._index):
            self._wait(bill)
            return None
        return pm.decide_bill(bill, self._index, self._same_person)

    def _wait(self, bill: pm.Bill) -> None:
        self._waiting.add(bill.source_id)
        payment = pm.sole_exact_payment(bill, self._index)
        if payment is not None:  # else a larger payment may be its and another's: that waits for every invoice
            until = pm.last_issue_date_fitting(payment, self.before)
            self._fits_until[bill.source_id] = until
            heapq.heappush(self._by_fits_until, (until, bill.source_id))

    def listed_below(self, value: Any) -> dict[str, MatchDecision]:
        """The read (in issue-date order) has listed every live invoice issued before `value`: the decisions of the
        waiting invoices whose one exact payment no invoice issued from `value` on could fit, and of those offered
        before the payments were listed that need not wait at all. Never waits for the payment listing."""
        if self._closed or not isinstance(value, date) or not self._listed(wait=False):
            return {}
        ready: dict[str, pm.Bill] = {}
        for source_id in sorted(self._unsorted & self._waiting):
            bill = self.bills[source_id]
            self._waiting.discard(source_id)
            if pm.waits_for_every_bill(bill, self._index):
                self._wait(bill)
            else:
                ready[source_id] = bill  # decided alone: the same decision as with every invoice known
        self._unsorted = set()
        while self._by_fits_until and self._by_fits_until[0][0] < value:
            until, source_id = heapq.heappop(self._by_fits_until)
            if source_id in self._waiting and self._fits_until.get(source_id) == until:
                # Every invoice that could share its payment is read, and each such one waits beside it (one with
                # that payment as its one exact payment waits for the same date): decided together.
                self._waiting.discard(source_id)
                del self._fits_until[source_id]
                ready[source_id] = self.bills[source_id]
        if not ready:
            return {}
        return pm.decide_bills(list(ready.values()), self._index, self._same_person, every=list(self.bills.values()))

    def decide(self) -> dict[str, MatchDecision]:
        """The waiting invoices' decisions, with every invoice that could share their payments known."""
        self._closed = True
        self._listed(wait=True)
        waiting = [bill for source_id, bill in self.bills.items() if source_id in self._waiting]
        self._waiting, self._unsorted, self._fits_until, self._by_fits_until = set(), set(), {}, []
        if not waiting:
            return {}
        return pm.decide_bills(waiting, self._index, self._same_person, every=list(self.bills.values()))

    def recheck(self) -> Iterator[Record]:
        """The invoices still in their window of the patients with a payment made since the last run (by their
        customer, or with their email as its billing email): one listing of those payments, one invoice listing
        per such patient. An invoice not paid through Stripe is judged again only then, never read by id on every
        run while it waits. A payment that reaches no patient by customer or email but has a billing name may be
        theirs by name (matching offers it in review): names are not stored, so then one listing of every invoice
        still in its window brings back those made out to that name, and the patients' invoices with them."""
        since = self.setup.since
        if since is None:  # the first run reads every invoice anyway
            return
        links = self.setup.links
        paid: list[tuple[str | None, str | None, str]] = []  # (customer, billing email, billing name) of each
        for charge in self.setup.gateway.iter_objects("charge", filters={"created": {"gte": since}}):
            if charge.get("status") != "succeeded":
                continue
            billing = charge.get("billing_details") or {}
            customer, email = charge.get("customer"), billing.get("email")
            paid.append(
                (
                    customer if isinstance(customer, str) else None,
                    email if isinstance(email, str) and email else None,
                    pm.name_key(billing.get("name")),
                )
            )
        customers = {customer for customer, _, _ in paid if customer}
        by_customer = links.linked_by(PATIENTS, customers) if customers else {}
        by_email = {email: links.people(PATIENTS, email) for email in sorted({e for _, e, _ in paid if e})}
        patients = {p for ids in (*by_customer.values(), *by_email.values()) for p in ids}
        names = {
            name for customer, email, name in paid if name and customer not in by_customer and not by_email.get(email)
        }
        # A window still open ends on or after today (local; a business's zone may be a day behind the clinic's).
        today = datetime.now(ZoneInfo(self.settings.time_zone)).date()
        issued_from = ("q[]", f"issue_date:>={(today - timedelta(days=self.after + 1)).isoformat()}")
        if names:
            for page in self.setup.source.iter_pages("/invoices", [issued_from]):
                yield from (
                    r for r in page.records if _patient_of(r) in patients or pm.name_key(r.get("invoice_to")) in names
                )
            return
        for patient in sorted(patients):
            for page in self.setup.source.iter_pages("/invoices", [("q[]", f"patient_id:={patient}"), issued_from]):
                yield from page.records

    def stop(self) -> None:
        """The run ended before it took the first listing (cancelled, or stopped by a failure): it lists no more."""
        if self._first_listing is not None:
            self._first_listing.stop(0)

    def linked_news(self) -> list[tuple[str, str, str]]:
        """Refunds since the last run of payments linked to invoices (one listing of refunds), for history."""
        linked, since = self.setup.linked, self.setup.since
        if not linked or since is None:
            return []
        news = []
        for refund in self.setup.gateway.iter_objects("refund", filters={"created": {"gte": since}}):
            payment = refund.get("payment_intent") if refund.get("payment_intent") in linked else refund.get("charge")
            if payment in linked:
                amount = pm.amount_text(int(refund.get("amount") or 0), str(refund.get("currency") or ""))
                news.append(
                    (linked[payment], payment, f"the linked payment {payment} was refunded: {amount} ({refund['id']})")
                )
        return news


def _patient_of(record: Record) -> str | None:
    return _link(record.get("patient")) or (str(record["patient_id"]) if record.get("patient_id") else None)


def _days(settings: StreamSettings, key: str, default: int) -> int:
    value = settings.get(key)
    return default if value is None else int(value)  # 0 is a window edge on the issue date itself


def _business_zones(client: Any) -> dict[str, str]:
    """Each business's IANA zone (one listing); invoices take their business's zone, else the clinic's. A zone
    this computer does not know is left out (its invoices take the clinic's), never a stop for the whole run."""
    from clinicsync.sources.errors import SourceNotFound, SourcePermissionError

    zones: dict[str, str] = {}
    try:
        businesses = client.get_businesses()  # one listing per sync, shared with the clinic's zone and country
    except (SourceNotFound, SourcePermissionError):
        log.info("businesses not readable: invoices use the clinic's zone")
        return zones
    for business in businesses:
        zone = business.get("time_zone_identifier")
        if _known_zone(zone):
            zones[str(business.get("id"))] = zone
        elif zone:
            log.warning("business %s: unknown time zone %r, the clinic's is used", business.get("id"), zone)
    return zones


def _known_zone(zone: Any) -> bool:
    if not isinstance(zone, str) or not zone:
        return False
    try:
        ZoneInfo(zone)
    except (ZoneInfoNotFoundError, ValueError):  # ValueError: not even shaped like a zone key
        return False
    return True


# --- reconciliation (issue 12): each invoice against the payment linked to it ---------------------------------
def reconcile_facts(record: Record, settings: StreamSettings) -> dict[str, Any]:
    """What reconciliation compares of an invoice beyond the metadata the sync writes: its total (minor units),
    whether Cliniko says it is paid, and the local dates its payment may fall on (the matching window, in the
    clinic's zone; the matcher uses the business's, which differs by hours at most)."""
    amount, issued = _total_and_issue_date(record, settings.currency)
    before = _days(settings, DAYS_BEFORE_SETTING, pm.DEFAULT_DAYS_BEFORE)
    after = _days(settings, DAYS_AFTER_SETTING, pm.DEFAULT_DAYS_AFTER)
    window = pm.payment_window(issued, before, after) if issued else None
    return {
        "amount": amount,
        "currency": settings.currency,
        "paid": invoice_status.is_paid(record.get("status")) and _invoice_archived(record) is None,
        "status_words": invoice_status.words(record.get("status")),
        "first_day": window.first.isoformat() if window else None,
        "last_day": window.last.isoformat() if window else None,
        "zone": settings.time_zone,
    }


def _money(units: int | None, currency: str) -> str | None:
    return None if units is None else pm.amount_text(units, currency)


def reconcile_unmatched(mapped: MappedRecord, facts: Mapping[str, Any]) -> Drift | None:
    """A paid invoice no payment is linked to; an unpaid, $0, archived or deleted one owes nothing."""
    amount = facts.get("amount")
    if not facts.get("paid") or amount is None or amount <= 0:
        return None
    total = _money(amount, str(facts.get("currency")))
    return Drift(
        "",
        total,
        None,
        kind=FindingType.PAYMENT_MISMATCH,
        reason=Reason.NO_PAYMENT,
        severity=Severity.LOW,  # usually paid by cash or a terminal outside Stripe: worth a look, rarely wrong
        explanation=(
            f"{{record}} is {facts.get('status_words')} in Cliniko ({total}), but no Stripe payment is linked to "
            "it: it was paid another way (cash, a terminal outside Stripe), or its payment was not found."
        ),
        fixes=(FixKind.REPUSH, FixKind.MARK_INTENDED),
    )


def reconcile_compare(request: CompareRequest) -> list[Drift]:
    """The metadata the sync writes on the payment, and, for an invoice Cliniko says is paid, the payment itself:
    that it went through, was not refunded, is of the invoice's total, and was made on a date of its window."""
    drifts = compare_fields(request)
    facts, payment = request.facts, request.obj
    if not facts.get("paid"):
        return drifts
    pid, status = payment.get("id"), str(payment.get("status") or "")
    currency = str(facts.get("currency"))
    amount, paid_amount = facts.get("amount"), int(payment.get("amount") or 0)
    paid_currency = str(payment.get("currency") or currency)
    what = f"{{record}} is {facts.get('status_words')} in Cliniko, but its linked Stripe payment {pid}"
    if status != "succeeded":
        drifts.append(
            _mismatch(
                "status",
                "succeeded",
                status,
                f"{what} is {status.replace('_', ' ')}: it did not go through.",
                (FixKind.REPUSH, FixKind.MARK_INTENDED),
            )
        )
        return drifts
    if payment.get("refunded"):
        refunded = _money(int(payment.get("amount_refunded") or 0), paid_currency)
        drifts.append(
            _mismatch(
                "amount_refunded",
                None,
                refunded,
                f"{what} was refunded ({refunded}).",
                (FixKind.CORRECT_SOURCE, FixKind.MARK_INTENDED),
            )
        )
    if amount is not None and (paid_amount, paid_currency) != (amount, currency):
        expected, actual = _money(amount, currency), _money(paid_amount, paid_currency)
        drifts.append(
            _mismatch(
                "amount",
                expected,
                actual,
                f"{what} is of {actual}, not the invoice's {expected}.",
                (FixKind.CORRECT_SOURCE, FixKind.MARK_INTENDED),
            )
        )
    first, last = facts.get("first_day"), facts.get("last_day")
    if first and last and payment.get("created"):
        day = pm.local_date(int(payment["created"]), str(facts.get("zone"))).isoformat()
        if not first <= day <= last:
            window = f"{first} to {last}"
            drifts.append(
                _mismatch(
                    "created",
                    window,
                    day,
                    f"{what} was made on {day}, outside the invoice's dates ({window}).",
                    (FixKind.MARK_INTENDED, FixKind.REPUSH),
                    severity=Severity.LOW,
                )
            )
    return drifts


def _mismatch(
    field: str,
    expected: Any,
    actual: Any,
    explanation: str,
    fixes: tuple[FixKind, ...],
    severity: Severity = Severity.HIGH,
) -> Drift:
    return Drift(
        field,
        expected,
        actual,
        kind=FindingType.PAYMENT_MISMATCH,
        reason=Reason.PAYMENT_DIFFERS,
        severity=severity,
        explanation=explanation,
        fixes=fixes,
    )


def reconcile_listing(gateway: Any, scope: StripeScope) -> Iterator[dict[str, Any]]:
    """The payments that can belong to the invoices in the sync's scope: made from the scope's date less the
    days a payment may come before its invoice (all time when the scope is every invoice)."""
    created_from = None
    if scope.since is not None:
        before = _days(scope.settings, DAYS_BEFORE_SETTING, pm.DEFAULT_DAYS_BEFORE) + pm.SLACK_DAYS
        created_from = scope.since - before * 86_400
    return payment_side.list_payments(gateway, created_from)


COMPARISON = Comparison(
    compare=reconcile_compare,
    archive_fix=FixKind.ARCHIVE,
    # A payment is never the invoices stream's to retire or delete: what is owed is the invoice's matter.
    reports=frozenset({FindingType.PAYMENT_MISMATCH, FindingType.FIELD_DRIFT}),
    facts=reconcile_facts,
    unmatched=reconcile_unmatched,
    listing=reconcile_listing,
    fetch=payment_side.payment_by_id,
)


CLINIKO_INVOICES = Stream(
    name=NAME,
    source_system="cliniko",
    primary_role="payment",
    stripe_object="payment_intent",
    read_changed=_invoices_changed,
    read_one=lambda client, source_id: client.get_record("/invoices", source_id, "invoice"),
    archived_value=_invoice_archived,
    changed_at=lambda record: record.get("updated_at"),
    plan=plan,
    find_created=lambda gateway, request: None,  # nothing is ever created
    idle_poll={"cliniko": 6, "stripe": 2},
    depends_on=(PATIENTS,),
    compare=COMPARISON,
    enrich=_enrich,
    source_settings=cliniko_common.settings,
    time_zone=cliniko_common.time_zone,
    country=cliniko_common.country,
    needs_time_zone=True,
    matcher=InvoiceMatcher,
)
