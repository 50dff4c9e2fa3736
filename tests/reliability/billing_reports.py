"""End-state reports of the streams that write to what others made (payments) or to notes on what others made
(invoices mirrored, products noted), for the soak: Cliniko invoices linked to their payments, Cliniko invoices
mirrored as Stripe invoices, the payments Cal.com's Stripe app took cross-referenced to their bookings, and the
schedule, team and owner notes on the event types' products. Each report collects every problem (the soak shows
them all at once) and reads both sides through the sandbox admin API or the source's own API.
"""

from __future__ import annotations

import sqlite3
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal
from functools import partial
from pathlib import Path
from typing import Any

from clinicsync.mapping import invoice_status
from tests.reliability.helpers import (
    DUPLICATE_OF,
    EVENT_TYPE_REF,
    calcom_live_event_types,
    cliniko_listing,
    db_path,
    shown_head,
)
from tests.support import admin

INVOICE_REF = "cliniko_invoice_id"
BOOKING_KEYS = ("calcom_booking_uid", "calcom_status")


def cents(amount: Any) -> int:
    return int((Decimal(str(amount)) * 100).quantize(Decimal(1), ROUND_HALF_UP))


def cliniko_invoices(sandbox_env: Mapping[str, str]) -> dict[str, dict[str, Any]]:
    """Every invoice as Cliniko's API renders it, live and archived, by id."""
    return cliniko_listing(sandbox_env, "/invoices")


def _links(home: Path, stream: str) -> dict[str, str]:
    with sqlite3.connect(db_path(home), timeout=10) as con:
        rows = con.execute(
            "SELECT source_id, stripe_id FROM record_link WHERE stream = ? AND stripe_id IS NOT NULL", (stream,)
        )
        return dict(rows.fetchall())


# --- cliniko.invoices: each certain invoice linked to its payment, once -------------------------------------
@dataclass
class InvoiceLinkReport:
    unlinked: dict[str, str] = field(default_factory=dict)  # certain invoice → its payment, not naming it
    stale: dict[str, dict[str, tuple[Any, Any]]] = field(default_factory=dict)  # invoice → field → (want, have)
    named_twice: dict[str, list[str]] = field(default_factory=dict)  # invoice → the payments naming it
    guessed: dict[str, str] = field(default_factory=dict)  # payment → the uncertain invoice it names
    local: dict[str, list[Any]] = field(default_factory=dict)  # installation → its links that are wrong
    certain: int = 0

    @property
    def ok(self) -> bool:
        return not (self.unlinked or self.stale or self.named_twice or self.guessed or self.local)

    def describe(self, limit: int = 5) -> str:
        head = partial(shown_head, limit=limit)
        return (
            f"{self.certain} certain invoices; unlinked: {head(self.unlinked)}; stale: {head(self.stale)}; "
            f"named by two payments: {head(self.named_twice)}; guessed: {head(self.guessed)}; "
            f"wrong local links: {head(self.local)}"
        )


def _payments(dump: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Every PaymentIntent, and every charge without one (a bare charge keeps metadata of its own), by id."""
    found = {p["id"]: p for p in dump["payment_intents"] if not p.get("deleted")}
    found |= {c["id"]: c for c in dump["charges"] if not c.get("payment_intent") and not c.get("deleted")}
    return found


def invoice_link_report(
    sandbox_env: Mapping[str, str], stripe_url: str, certain: Mapping[str, str], homes: list[Path]
) -> InvoiceLinkReport:
    """`certain`: invoice id → the one payment (PaymentIntent or bare charge id) that paid it. Each names its invoice
    with the invoice's current number and status; no invoice is named by two payments; no payment names an invoice
    that is not certain; each installation links each certain invoice to its payment and no payment twice."""
    invoices = cliniko_invoices(sandbox_env)
    payments = _payments(admin(stripe_url, "dump"))
    report = InvoiceLinkReport(certain=len(certain))
    naming: dict[str, list[str]] = {}
    for pid, payment in payments.items():
        ref = (payment.get("metadata") or {}).get(INVOICE_REF)
        if ref:
            naming.setdefault(ref, []).append(pid)
            if ref not in certain:
                report.guessed[pid] = ref
    report.named_twice = {ref: ids for ref, ids in naming.items() if len(ids) > 1}
    for invoice_id, payment_id in certain.items():
        metadata = payments[payment_id].get("metadata") or {}
        if metadata.get(INVOICE_REF) != invoice_id:
            report.unlinked[invoice_id] = payment_id
            continue
        invoice = invoices[invoice_id]
        want = {"number": str(invoice["number"]), "status": invoice_status.NAMES[invoice["status"]]}
        have = {"number": metadata.get("cliniko_invoice_number"), "status": metadata.get("cliniko_invoice_status")}
        diff = {key: (want[key], have[key]) for key in want if want[key] != have[key]}
        if diff:
            report.stale[invoice_id] = diff
    for home in homes:
        links = _links(home, "cliniko.invoices")
        wrong: list[Any] = [(i, p) for i, p in links.items() if certain.get(i) != p]
        wrong += [("payment linked twice", p) for p, n in Counter(links.values()).items() if n > 1]
        if wrong:
            report.local[home.name] = wrong
    return report


# --- cliniko.invoice_mirror: each positive invoice one Stripe invoice, its total and status Cliniko's -------
def mirror_status(invoice: Mapping[str, Any], reversed_ids: set[str]) -> str:
    """What the Stripe invoice should be: closed unpaid → void; paid, then reversed → credited; paid → paid."""
    if invoice["status"] == invoice_status.CLOSED:
        return "void"
    if invoice_status.is_paid(invoice["status"]):
        return "credited" if invoice["id"] in reversed_ids else "paid"
    return "open"


@dataclass
class MirrorInvoiceReport:
    duplicated: dict[str, list[str]] = field(default_factory=dict)  # invoice → its Stripe invoices
    missing: list[str] = field(default_factory=list)  # mirrorable invoices without a Stripe invoice
    unwanted: dict[str, list[str]] = field(default_factory=dict)  # $0, reversal or archived invoice → mirrors
    stale: dict[str, dict[str, tuple[Any, Any]]] = field(default_factory=dict)  # invoice → field → (want, have)
    open_twins: dict[str, str] = field(default_factory=dict)  # a race's twin marked but still counting → status
    retired_twins: int = 0
    statuses: Counter[str] = field(default_factory=Counter)
    mirrorable: set[str] = field(default_factory=set)  # positive, live, non-reversal invoices

    @property
    def mirrored(self) -> int:
        return len(self.mirrorable)

    @property
    def ok(self) -> bool:
        return not (self.duplicated or self.missing or self.unwanted or self.stale or self.open_twins)

    def describe(self, limit: int = 5) -> str:
        head = partial(shown_head, limit=limit)
        return (
            f"{self.mirrored} mirrorable invoices ({dict(self.statuses)}), {self.retired_twins} twins retired "
            f"(still counting: {head(self.open_twins)}); duplicated: {head(self.duplicated)}; "
            f"missing: {head(self.missing)}; mirrored but should not be: {head(self.unwanted)}; "
            f"stale: {head(self.stale)}"
        )


def mirror_invoice_report(sandbox_env: Mapping[str, str], stripe_url: str) -> MirrorInvoiceReport:
    """Every positive, live, non-reversal Cliniko invoice is exactly one Stripe invoice that is not void unless
    Cliniko's is closed, for the patient's customer, with Cliniko's total (its items adding up to it), status and
    number; at most one credit note, for a paid invoice reversed; nothing else is mirrored."""
    from clinicsync.sources.cliniko import link_id

    invoices = cliniko_invoices(sandbox_env)
    dump = admin(stripe_url, "dump")
    items: Counter[str] = Counter()
    for item in dump["invoiceitems"]:
        if not item.get("deleted"):
            items[item["invoice"]] += item["amount"]
    notes = Counter(note["invoice"] for note in dump["credit_notes"])
    credited: Counter[str] = Counter()
    for note in dump["credit_notes"]:
        credited[note["invoice"]] += note["out_of_band_amount"] or 0
    reversed_ids = {link_id(i["original_invoice"]) for i in invoices.values() if i.get("original_invoice")}
    report = MirrorInvoiceReport()
    found: dict[str, list[dict[str, Any]]] = {}
    for mirror in dump["invoices"]:
        metadata = mirror.get("metadata") or {}
        if not metadata.get(INVOICE_REF) or mirror.get("deleted"):
            continue
        if metadata.get(DUPLICATE_OF):  # retired: it must count for nothing (void, or credited in full)
            report.retired_twins += 1
            if mirror["status"] != "void" and credited[mirror["id"]] < mirror["total"]:
                report.open_twins[mirror["id"]] = mirror["status"]
            continue
        found.setdefault(metadata[INVOICE_REF], []).append(mirror)
    for iid, invoice in invoices.items():
        total = cents(invoice["total_amount"])
        named = found.get(iid, [])
        if total <= 0 or invoice.get("original_invoice") or invoice.get("archived_at"):
            if named:
                report.unwanted[iid] = [m["id"] for m in named]
            continue
        report.mirrorable.add(iid)
        want_status = mirror_status(invoice, reversed_ids)
        if len(named) > 1:  # no line is edited in the soak, so no mirror is ever replaced: two are a duplicate
            report.duplicated[iid] = [m["id"] for m in named]
        if not named:
            report.missing.append(iid)
            continue
        mirror = named[0]
        have_status = mirror["status"]
        if have_status == "paid" and notes[mirror["id"]]:
            have_status = "credited"
        report.statuses[have_status] += 1
        want = {"status": want_status, "total": total, "items": total, "number": str(invoice["number"])}
        want |= {"credit notes": int(want_status == "credited"), "never sent": ("send_invoice", False)}
        have = {
            "status": have_status,
            "total": mirror["total"],
            "items": items[mirror["id"]],
            "number": (mirror.get("metadata") or {}).get("cliniko_invoice_number"),
            "credit notes": notes[mirror["id"]],
            "never sent": (mirror["collection_method"], mirror["auto_advance"]),
        }
        diff = {key: (want[key], have[key]) for key in want if want[key] != have[key]}
        if diff:
            report.stale[iid] = diff
    return report


# --- calcom.booking_payments: each paid booking's payment names the booking's latest state --------------
@dataclass
class BookingPaymentReport:
    stale: dict[str, dict[str, tuple[Any, Any]]] = field(default_factory=dict)  # booking id → key → (want, have)
    paid: set[str] = field(default_factory=set)  # ids of the paid (first) bookings, one payment each
    rescheduled: int = 0  # of which moved since they were paid

    @property
    def ok(self) -> bool:
        return not self.stale

    def describe(self, limit: int = 5) -> str:
        return (
            f"{len(self.paid)} paid bookings ({self.rescheduled} rescheduled since); not cross-referenced or stale: "
            f"{shown_head(self.stale, limit)}"
        )


def booking_payment_report(calcom_url: str, stripe_url: str) -> BookingPaymentReport:
    """Every payment Cal.com's Stripe app took on the clinic's account for an unseated booking names the latest
    booking of its chain (reschedules followed) and that booking's status."""
    dump = admin(calcom_url, "dump")
    by_uid = {b["uid"]: b for b in dump["bookings"]}
    by_id = {str(b["id"]): b for b in dump["bookings"]}
    following = {b["fromReschedule"]: b for b in by_uid.values() if b.get("fromReschedule")}
    report = BookingPaymentReport()
    for intent in admin(stripe_url, "dump")["payment_intents"]:
        metadata = intent.get("metadata") or {}
        if metadata.get("identifier") != "cal.com":
            continue
        first = by_id[metadata["bookingId"]]
        if any(a.get("seat") for a in first["attendees"]):
            continue
        latest = first
        while latest["uid"] in following:
            latest = following[latest["uid"]]
        report.paid.add(metadata["bookingId"])
        report.rescheduled += latest is not first
        want = {"calcom_booking_uid": latest["uid"], "calcom_status": latest["status"].lower()}
        diff = {key: (want[key], metadata.get(key)) for key in BOOKING_KEYS if metadata.get(key) != want[key]}
        if diff:
            report.stale[metadata["bookingId"]] = diff
    return report


# --- calcom.reference: schedule, team and owner notes on each live event type's product ---------------
@dataclass
class ReferenceReport:
    stale: dict[str, dict[str, tuple[Any, Any]]] = field(default_factory=dict)  # event type → key → (want, have)
    noted: int = 0

    @property
    def ok(self) -> bool:
        return not self.stale

    def describe(self, limit: int = 5) -> str:
        return f"{self.noted} products noted; wrong notes: {shown_head(self.stale, limit)}"


def reference_report(calcom_url: str, stripe_url: str) -> ReferenceReport:
    """Each priced, visible event type's product (the one not retired) carries its schedule (its own, else its
    owner's default) and owner, or its team; a team's has no owner of its own."""
    dump = admin(calcom_url, "dump")
    users = {u["id"]: u for u in dump["users"]}
    schedules = {s["id"]: s for s in dump["schedules"]}
    teams = {t["id"]: t for t in dump["teams"]}
    products = {
        (p.get("metadata") or {}).get(EVENT_TYPE_REF): p
        for p in admin(stripe_url, "dump")["products"]
        if not p.get("deleted") and not (p.get("metadata") or {}).get(DUPLICATE_OF)
    }
    report = ReferenceReport()
    for eid, event_type in calcom_live_event_types(calcom_url).items():
        product = products.get(eid)
        if product is None:
            continue  # event_type_report says it is missing
        metadata = product.get("metadata") or {}
        team = teams.get(event_type.get("team"))
        if team is not None:
            want: dict[str, Any] = {"calcom_team_id": str(team["id"]), "calcom_team_slug": team["slug"]}
            want["calcom_owner_name"] = None
        else:
            owner = users[event_type["owner"]]
            schedule = schedules.get(event_type.get("scheduleId")) or next(
                s for s in schedules.values() if s["isDefault"] and s["ownerId"] == owner["id"]
            )
            want = {"calcom_owner_name": owner["name"], "calcom_schedule": schedule["name"]}
            want["calcom_schedule_time_zone"] = schedule["timeZone"]
        have = {key: metadata.get(key) or None for key in want}
        diff = {key: (want[key], have[key]) for key in want if want[key] != have[key]}
        report.noted += 1
        if diff:
            report.stale[eid] = diff
    return report
