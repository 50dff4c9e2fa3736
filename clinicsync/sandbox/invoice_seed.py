"""The invoices ↔ payments scenario (issue 11) for the sandboxes: Cliniko invoices of every status for a set of
patients, and the Stripe customers and card payments that make linking interesting.

`seed_invoice_scenario` is deterministic by seed. With 1,000 invoices it makes exactly the acceptance mix: payments
for 600 invoices (450 certain, 50 already carrying `cliniko_invoice_id`, 20 ambiguous, 20 split in two, 10 payments
covering two invoices each, 20 without a customer but with the patient's email, 10 refunded, 10 just outside the
window), 20 paid in Cliniko with no payment, and the rest open, closed, reversed (before and after payment, with
their reversals), $0, archived and deleted. Other sizes scale each count (at least one of each).

Every invoice of a patient has a total no other payment or invoice of that patient shares (in cents), so the
only ambiguity is the designed one. Lines have three- and four-decimal prices, percentage and monetary discounts,
and tax-inclusive and tax-exclusive invoices. Payment times are inside the default window (7 days before to 30
days after the issue date, in the business's zone) except for `outside_window`, which is 8 days before.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import Any
from zoneinfo import ZoneInfo

from clinicsync.sandbox import cliniko_invoices as inv
from clinicsync.sandbox.seed import PRACTITIONER_IDS, _Gen, fmt_time

# Each case and what the invoices stream should do with it (keys are the values of `InvoiceScenario.cases`).
INVOICE_CASES: dict[str, str] = {
    "certain": "paid; one succeeded, unrefunded payment of exactly the total for the patient's customer inside the"
    " window: linked automatically",
    "linked_metadata": "paid; its payment already carries metadata cliniko_invoice_id = this invoice: linked by it",
    "ambiguous": "paid; two payments of the same exact amount for the customer in the window: review with both"
    " candidates, nothing linked",
    "split": "paid; a health-fund rebate and the gap, two payments that together make the total: review with both,"
    " nothing linked",
    "multi_invoice": "paid; one payment equals this invoice plus its partner (same patient, see `partners`): review,"
    " nothing linked",
    "no_customer": "paid; a payment without a customer whose billing email and name are the patient's: review,"
    " nothing linked",
    "refunded": "paid; the only exact payment was refunded in full: never linked automatically",
    "outside_window": "paid; the only exact payment is 8 days before the issue date: nothing linked",
    "paid_no_payment": "paid in Cliniko, no Stripe payment: not paid through Stripe, nothing written",
    "open": "open (unpaid): no payment",
    "closed": "closed unpaid (written off): no payment",
    "reversed_unpaid": "reversed before payment: closed, with a reversal invoice (see `reversals`)",
    "reversed_paid": "reversed after payment: stays paid, its reversal is Open credit",
    "reversal": "a reversal invoice: negative total, original_invoice set; never mirrored",
    "zero": "a $0 invoice (a free service): never mirrored, no payment",
    "archived": "archived: hidden from default lists",
    "deleted": "deleted: hidden from every list unless asked with deleted_at",
}
# The acceptance mix for 1,000 invoices; other sizes scale it.
BASE_COUNTS = {
    "certain": 450,
    "linked_metadata": 50,
    "ambiguous": 20,
    "split": 20,
    "multi_invoice": 10,  # payments; each covers two invoices
    "no_customer": 20,
    "refunded": 10,
    "outside_window": 10,
    "paid_no_payment": 20,
}
_SERVICES = (
    ("Initial consultation", "INIT", "120.5"),
    ("Standard consultation", "STD", "95.0"),
    ("Extended consultation", "EXT", "81.818"),
    ("Dry needling add-on", "DN", "18.1818"),
    ("Remedial massage 45 min", "RM45", "65.125"),
)
_PRODUCTS = (
    ("Resistance band medium", "24.95"),
    ("Foam roller 45 cm", "39.9545"),
    ("Kinesiology tape 5 cm", "14.955"),
)
_SERVICE_ITEM_IDS = ("700000000000000501", "700000000000000502", "700000000000000503", "700000000000000504")
_DISCOUNTS = ("5", "10", "12.5", "15")


@dataclass
class InvoiceScenario:
    invoices: list[dict[str, Any]] = field(default_factory=list)  # Cliniko invoices, emulator internal form
    items: list[dict[str, Any]] = field(default_factory=list)
    cases: dict[str, str] = field(default_factory=dict)  # invoice id -> INVOICE_CASES key
    partners: dict[str, str] = field(default_factory=dict)  # multi_invoice: each invoice -> the other one
    reversals: dict[str, str] = field(default_factory=dict)  # original invoice id -> its reversal
    # For the Stripe emulator's admin `seed`: customers carry `ref` = patient id; payments `ref` and `customer_ref`.
    stripe_customers: list[dict[str, Any]] = field(default_factory=list)
    stripe_payments: list[dict[str, Any]] = field(default_factory=list)
    payment_invoices: dict[str, list[str]] = field(default_factory=dict)  # payment ref -> the invoices it pays

    def as_dict(self) -> dict[str, Any]:
        return {
            "invoice_ids": [i["id"] for i in self.invoices],
            "cases": dict(self.cases),
            "partners": dict(self.partners),
            "reversals": dict(self.reversals),
            "payment_invoices": {k: list(v) for k, v in self.payment_invoices.items()},
            "stripe": {"customers": self.stripe_customers, "payments": self.stripe_payments},
        }


def scaled_counts(invoices: int) -> dict[str, int]:
    """BASE_COUNTS scaled to `invoices` (each at least one); ValueError when they would not fit."""
    counts = {case: max(1, round(base * invoices / 1000)) for case, base in BASE_COUNTS.items()}
    needed = sum(counts.values()) + counts["multi_invoice"] + 8  # multi covers two; room for the other statuses
    if invoices < needed:
        raise ValueError(f"the invoice scenario needs at least {needed} invoices, not {invoices}")
    return counts


def seed_invoice_scenario(
    patients: Sequence[dict[str, Any]],
    *,
    invoices: int = 1000,
    seed: int = 1,
    now: datetime,
    businesses: Sequence[tuple[str, str]],  # (business id, IANA zone); the first is the main clinic
    product_ids: Sequence[str] = (),
) -> InvoiceScenario:
    """`invoices` Cliniko invoices for `patients` (each gets a Stripe customer), with the payments of the mix."""
    if not patients:
        raise ValueError("the invoice scenario needs patients")
    builder = _Builder(patients, seed, now, businesses, product_ids)
    counts = scaled_counts(invoices)
    for case in ("linked_metadata", "certain", "refunded", "outside_window", "no_customer", "paid_no_payment"):
        for _ in range(counts[case]):
            builder.single(case)
    for _ in range(counts["ambiguous"]):
        builder.ambiguous()
    for _ in range(counts["split"]):
        builder.split()
    for _ in range(counts["multi_invoice"]):
        builder.multi()
    builder.others(invoices - len(builder.out.invoices))
    builder.finish()
    return builder.out


class _Builder:
    def __init__(
        self,
        patients: Sequence[dict[str, Any]],
        seed: int,
        now: datetime,
        businesses: Sequence[tuple[str, str]],
        product_ids: Sequence[str],
    ) -> None:
        self.rng = random.Random(seed * 48_611 + 11)
        self.ids = _Gen(seed * 2_750_159 + 29)
        self.now = now.astimezone(UTC).replace(microsecond=0)
        self.patients = list(patients)
        self.businesses = list(businesses)
        self.product_ids = list(product_ids)
        self.used: dict[str, set[int]] = {}  # patient id -> cents already in play
        self.number = 5000
        self.out = InvoiceScenario()
        for patient in self.patients:
            name = " ".join(p for p in (patient.get("first_name"), patient.get("last_name")) if p) or None
            entry: dict[str, Any] = {
                "ref": patient["id"],
                "name": name,
                "metadata": {"cliniko_patient_id": patient["id"]},
            }
            if patient.get("email"):
                entry["email"] = patient["email"]
            self.out.stripe_customers.append(entry)

    # -- invoices ---------------------------------------------------------------------------------------

    def invoice(
        self,
        case: str,
        status: int,
        patient: dict[str, Any] | None = None,
        lines: list[dict[str, Any]] | None = None,
        method: int | None = None,
    ) -> dict[str, Any]:
        """A new invoice whose total no other amount of its patient shares (unless `lines` are given)."""
        patient = patient or self.rng.choice(self.patients)
        business_id, zone = self.businesses[0] if self.rng.random() < 0.8 else self.rng.choice(self.businesses)
        issue = self.now.astimezone(ZoneInfo(zone)).date() - timedelta(days=self.rng.randint(12, 300))
        created = _local(issue, time(self.rng.randint(8, 17), self.rng.choice((0, 15, 30, 45))), zone)
        self.number += 1
        record = {
            **inv.blank_invoice(),
            "id": self.ids.new_id(),
            "number": self.number,
            "patient_id": patient["id"],
            "practitioner_id": self.rng.choice(PRACTITIONER_IDS),
            "business_id": business_id,
            "issue_date": issue.isoformat(),
            "status": status,
            "invoice_to": " ".join(p for p in (patient.get("first_name"), patient.get("last_name")) if p) or None,
            "calculation_method": method or (inv.TAX_EXCLUSIVE if self.rng.random() < 0.3 else inv.TAX_INCLUSIVE),
            "created_at": fmt_time(created),
            "updated_at": fmt_time(created),
        }
        stamp = record["created_at"]
        used = self.used.setdefault(patient["id"], set())
        for _ in range(50):
            items = [inv.make_item(self.ids.new_id(), record, line, stamp) for line in (lines or self.lines())]
            totals = inv.invoice_totals(items)
            cents = _cents(totals["total_amount"])
            if lines is not None or (cents not in used and cents > 100):
                break
        used.add(cents)
        record.update(totals)
        if status in (inv.PAID, inv.CLOSED):
            closed = created + timedelta(hours=self.rng.randint(0, 72))
            record["closed_at"] = fmt_time(min(closed, self.now))
            record["updated_at"] = record["closed_at"]
        self.out.invoices.append(record)
        self.out.items.extend(items)
        self.out.cases[record["id"]] = case
        return record

    def lines(self) -> list[dict[str, Any]]:
        rng = self.rng
        out = []
        for _ in range(rng.choice((1, 1, 1, 2, 2, 3))):
            if self.product_ids and rng.random() < 0.3:
                name, price = rng.choice(_PRODUCTS)
                line: dict[str, Any] = {
                    "name": name,
                    "unit_price": price,
                    "quantity": str(rng.choice((1, 1, 2, 3))),
                    "tax_name": "GST",
                    "tax_rate": "10.0",
                    "product_id": rng.choice(self.product_ids),
                }
            else:
                name, code, price = rng.choice(_SERVICES)
                line = {
                    "name": name,
                    "code": code,
                    "unit_price": price,
                    "billable_item_id": rng.choice(_SERVICE_ITEM_IDS),
                }
                if rng.random() < 0.15:  # some services carry GST (e.g. non-clinical massage)
                    line.update(tax_name="GST", tax_rate="10.0")
            roll = rng.random()
            if roll < 0.15:
                line["discount_percentage"] = rng.choice(_DISCOUNTS)
            elif roll < 0.2:
                line["discount_amount"] = rng.choice(("2.5", "5.0"))
            out.append(line)
        return out

    # -- payments ---------------------------------------------------------------------------------------

    def pay(
        self, invoice: dict[str, Any], cents: int, ref: str, *, inside: bool = True, customer: bool = True, **extra: Any
    ) -> None:
        zone = self._zone(invoice)
        issue = date.fromisoformat(invoice["issue_date"])
        if inside:
            day = issue + timedelta(days=self.rng.randint(0, 2))
            moment = _local(day, time(self.rng.randint(8, 18), self.rng.randint(0, 59)), zone)
        else:  # just outside the 7-day lead: the evening 8 days before the issue date
            moment = _local(issue - timedelta(days=8), time(20, self.rng.randint(0, 59)), zone)
        moment = min(moment, self.now - timedelta(minutes=5))
        payment: dict[str, Any] = {
            "ref": ref,
            "amount": cents,
            "currency": "aud",
            "created": int(moment.timestamp()),
            "description": "Clinic payment",
            **extra,
        }
        if customer:
            payment["customer_ref"] = invoice["patient_id"]
        self.out.stripe_payments.append(payment)
        self.out.payment_invoices.setdefault(ref, []).append(invoice["id"])

    def _zone(self, invoice: dict[str, Any]) -> str:
        return dict(self.businesses)[invoice["business_id"]]

    def _claim(self, patient_id: str, cents: int) -> int:
        """`cents`, moved by a cent at a time until no other amount of the patient has it."""
        used = self.used.setdefault(patient_id, set())
        while cents in used:
            cents += 1
        used.add(cents)
        return cents

    def single(self, case: str) -> None:
        record = self.invoice(case, inv.PAID)
        cents = _cents(record["total_amount"])
        ref = f"{case}:{record['id']}"
        if case in ("certain", "refunded"):
            self.pay(record, cents, ref, **({"refunded": cents} if case == "refunded" else {}))
        elif case == "linked_metadata":
            self.pay(record, cents, ref, metadata={"cliniko_invoice_id": record["id"]})
        elif case == "outside_window":
            self.pay(record, cents, ref, inside=False)
        elif case == "no_customer":
            patient = next(p for p in self.patients if p["id"] == record["patient_id"])
            name = " ".join(p for p in (patient.get("first_name"), patient.get("last_name")) if p) or None
            details = {"email": patient.get("email"), "name": name}
            self.pay(record, cents, ref, customer=False, billing_details=details, description="Payment link")

    def ambiguous(self) -> None:
        record = self.invoice("ambiguous", inv.PAID)
        cents = _cents(record["total_amount"])
        self.pay(record, cents, f"ambiguous:{record['id']}:1")
        self.pay(record, cents, f"ambiguous:{record['id']}:2")

    def split(self) -> None:
        record = self.invoice("split", inv.PAID)
        cents = _cents(record["total_amount"])
        rebate = self._claim(record["patient_id"], int(cents * self.rng.choice((0.55, 0.6, 0.65))))
        gap = cents - rebate
        if gap in self.used[record["patient_id"]] or gap <= 0:
            raise RuntimeError("split amounts collided")  # cannot happen with distinct totals and a claimed rebate
        self.used[record["patient_id"]].add(gap)
        self.pay(record, rebate, f"split:{record['id']}:rebate", description="Health fund rebate")
        self.pay(record, gap, f"split:{record['id']}:gap", description="Gap payment")

    def multi(self) -> None:
        patient = self.rng.choice(self.patients)
        first = self.invoice("multi_invoice", inv.PAID, patient)
        second = self.invoice("multi_invoice", inv.PAID, patient)
        second["issue_date"] = first["issue_date"]
        second["business_id"] = first["business_id"]
        total = _cents(first["total_amount"]) + _cents(second["total_amount"])
        if total in self.used[patient["id"]]:
            raise RuntimeError("multi-invoice sum collided")
        self.used[patient["id"]].add(total)
        ref = f"multi_invoice:{first['id']}+{second['id']}"
        self.pay(first, total, ref)
        self.out.payment_invoices[ref].append(second["id"])
        self.out.partners[first["id"]], self.out.partners[second["id"]] = second["id"], first["id"]

    def others(self, room: int) -> None:
        """Fill `room` invoices with the statuses no payment touches."""
        portion: Callable[[float], int] = lambda share: max(1, round(room * share))  # noqa: E731
        plan = {
            "zero": portion(0.05),
            "archived": portion(0.02),
            "deleted": portion(0.02),
            "reversed_paid": portion(0.05),
            "reversed_unpaid": portion(0.05),
            "closed": portion(0.1),
        }
        made = 0
        for case, count in plan.items():
            for _ in range(count):
                made += self.other(case)
        while made < room:
            made += self.other("open")

    def other(self, case: str) -> int:
        if case == "zero":
            free = {"name": "Review (no charge)", "code": "REV0", "unit_price": "0.0"}
            self.invoice("zero", inv.PAID, lines=[{**free, "billable_item_id": _SERVICE_ITEM_IDS[0]}])
            return 1
        if case in ("archived", "deleted"):
            record = self.invoice(case, inv.OPEN)
            stamp = fmt_time(self.now - timedelta(days=self.rng.randint(1, 9)))
            record[f"{case}_at"] = stamp
            record["updated_at"] = max(record["updated_at"], stamp)
            if case == "deleted":
                for item in self.out.items:
                    if item["invoice_id"] == record["id"]:
                        item["deleted_at"] = item["updated_at"] = max(item["updated_at"], stamp)
            return 1
        if case in ("reversed_paid", "reversed_unpaid"):
            paid = case == "reversed_paid"
            original = self.invoice(case, inv.PAID if paid else inv.CLOSED)
            originals = [i for i in self.out.items if i["invoice_id"] == original["id"]]
            patient = next(p for p in self.patients if p["id"] == original["patient_id"])
            lines = [inv.negated_line(i) for i in originals]
            status = inv.OPEN if paid else inv.CLOSED
            reversal = self.invoice("reversal", status, patient, lines, original["calculation_method"])
            # Staff reverse it a day or two after raising it, at the same location.
            made = datetime.fromisoformat(original["created_at"].replace("Z", "+00:00"))
            made = min(made + timedelta(days=self.rng.randint(1, 2)), self.now - timedelta(hours=1))
            stamp = fmt_time(made)
            zone = self._zone(original)
            reversal.update(
                original_invoice_id=original["id"],
                business_id=original["business_id"],
                issue_date=made.astimezone(ZoneInfo(zone)).date().isoformat(),
                created_at=stamp,
                updated_at=stamp,
                closed_at=None if paid else stamp,
            )
            for item in self.out.items:
                if item["invoice_id"] == reversal["id"]:
                    item["created_at"] = item["updated_at"] = stamp
            if paid:
                reversal["status"] = inv.OPEN_CREDIT
            original["updated_at"] = max(original["updated_at"], reversal["created_at"])
            self.out.reversals[original["id"]] = reversal["id"]
            return 2
        self.invoice(case, inv.CLOSED if case == "closed" else inv.OPEN)
        return 1

    def finish(self) -> None:
        """Invoices in creation order, as staff raised them; updated_at never after the clock."""
        self.out.invoices.sort(key=lambda i: (i["created_at"], i["number"]))
        for number, record in enumerate(self.out.invoices, start=5001):
            record["number"] = number
            record["updated_at"] = min(record["updated_at"], fmt_time(self.now))


def _local(day: date, clock: time, zone: str) -> datetime:
    return datetime.combine(day, clock, tzinfo=ZoneInfo(zone)).astimezone(UTC)


def _cents(amount: str) -> int:
    return int((Decimal(amount) * 100).quantize(Decimal(1), ROUND_HALF_UP))
