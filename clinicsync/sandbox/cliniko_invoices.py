"""Cliniko invoices and invoice items for the sandbox: their internal records, the arithmetic of a line, and the
staff actions the emulator's admin endpoint offers (make, mark paid, close, reverse, edit).

Cliniko documents fields, not formulas, so the sandbox's reading is (docs/sandbox.md):
- a line's gross is quantity × unit price; its discount (`discounted_amount`) is a percentage of the gross or, with
  `is_monetary_discount`, an amount; `net_price` is the line's total before tax after the discount;
- tax exclusive (calculation_method 2): tax = net × rate; total = net + tax. Tax inclusive (3): the discounted gross
  is the total and net = total / (1 + rate);
- line amounts keep up to four decimals (half up), like Cliniko's "18.1818"; an invoice's `total_amount` is the sum
  of its lines' totals to the cent (what the patient pays), its net, tax and discount the sums of its lines';
- a reversal is a new invoice whose lines are the original's negated, pointing at it by `original_invoice`;
  reversing an unpaid invoice closes both (status 30), reversing a paid one leaves it paid and makes the reversal
  "Open credit" (40), the credit the clinic owes the patient.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import date
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Any

OPEN, PAID, CLOSED, OPEN_CREDIT = 10, 20, 30, 40
STATUSES = {OPEN: "Open", PAID: "Paid", CLOSED: "Closed", OPEN_CREDIT: "Open credit"}
TAX_EXCLUSIVE, TAX_INCLUSIVE = 2, 3
_FOUR = Decimal("0.0001")
_CENT = Decimal("0.01")

# Invoice fields staff can change with the admin `edit_invoices` action (and `items`, which replaces the lines).
EDITABLE_FIELDS = (
    "issue_date",
    "invoice_to",
    "notes",
    "patient_extra_information",
    "practitioner_id",
    "appointment_id",
    "business_id",
    "status",
)


def decimal_text(value: Decimal) -> str:
    """As Cliniko's JSON has decimals (Rails' BigDecimal): no exponent, at least one decimal ("90.0")."""
    text = format(value.normalize(), "f")
    return text if "." in text else f"{text}.0"


def _decimal(value: Any, name: str) -> Decimal:
    try:
        number = Decimal(str(value).strip())
    except (InvalidOperation, AttributeError):
        raise ValueError(f"{name} must be a number, not {value!r}") from None
    if not number.is_finite():
        raise ValueError(f"{name} must be a number, not {value!r}")
    return number


def line_amounts(line: Mapping[str, Any], calculation_method: int) -> dict[str, str | None]:
    """The computed amounts of one invoice line given as quantity, unit_price, discount_percentage or
    discount_amount (monetary), and tax_rate (percent, or None for no tax)."""
    quantity = _decimal(line.get("quantity", 1), "quantity")
    unit_price = _decimal(line["unit_price"], "unit_price")
    gross = quantity * unit_price
    monetary = line.get("discount_amount") is not None
    if monetary:
        discount = _decimal(line["discount_amount"], "discount_amount")
        percentage = None
    else:
        percentage = _decimal(line.get("discount_percentage") or 0, "discount_percentage")
        if not 0 <= percentage <= 100:
            raise ValueError("discount_percentage must be between 0 and 100")
        discount = gross * percentage / 100
    rate = _decimal(line["tax_rate"], "tax_rate") if line.get("tax_rate") is not None else Decimal(0)
    after_discount = gross - discount
    if calculation_method == TAX_EXCLUSIVE:
        net = after_discount.quantize(_FOUR, ROUND_HALF_UP)
        tax = (after_discount * rate / 100).quantize(_FOUR, ROUND_HALF_UP)
        total = net + tax
    else:  # tax inclusive (and Legacy, which the sandbox treats alike)
        total = after_discount.quantize(_FOUR, ROUND_HALF_UP)
        net = (after_discount / (1 + rate / 100)).quantize(_FOUR, ROUND_HALF_UP)
        tax = total - net
    return {
        "quantity": decimal_text(quantity),
        "unit_price": decimal_text(unit_price),
        "discount_percentage": decimal_text(percentage) if percentage is not None else None,
        "is_monetary_discount": monetary,
        "discounted_amount": decimal_text(discount.quantize(_FOUR, ROUND_HALF_UP)),
        "tax_rate": decimal_text(rate) if line.get("tax_rate") is not None else None,
        "net_price": decimal_text(net),
        "tax_amount": decimal_text(tax),
        "total_including_tax": decimal_text(total),
    }


def invoice_totals(items: Iterable[Mapping[str, Any]]) -> dict[str, str]:
    """An invoice's amounts from its live lines: total to the cent, the rest as summed."""
    live = [i for i in items if i.get("deleted_at") is None]
    total = sum((Decimal(i["total_including_tax"]) for i in live), Decimal(0))
    return {
        "total_amount": decimal_text(total.quantize(_CENT, ROUND_HALF_UP)),
        "net_amount": decimal_text(sum((Decimal(i["net_price"]) for i in live), Decimal(0))),
        "tax_amount": decimal_text(sum((Decimal(i["tax_amount"]) for i in live), Decimal(0))),
        "discounted_amount": decimal_text(sum((Decimal(i["discounted_amount"]) for i in live), Decimal(0))),
    }


def blank_invoice() -> dict[str, Any]:
    """Every internal invoice field (related records as `*_id`)."""
    return {
        "id": "",
        "number": 0,
        "patient_id": None,
        "practitioner_id": None,
        "appointment_id": None,
        "business_id": None,
        "original_invoice_id": None,
        "issue_date": "",
        "status": OPEN,
        "invoice_to": None,
        "notes": None,
        "patient_extra_information": None,
        "calculation_method": TAX_INCLUSIVE,
        "net_amount": "0.0",
        "tax_amount": "0.0",
        "discounted_amount": "0.0",
        "total_amount": "0.0",
        "closed_at": None,
        "created_at": "",
        "updated_at": "",
        "archived_at": None,
        "deleted_at": None,
    }


def make_item(item_id: str, invoice: Mapping[str, Any], line: Mapping[str, Any], stamp: str) -> dict[str, Any]:
    """An invoice item record from a line spec: name, code, quantity, unit_price, discount_percentage or
    discount_amount, tax_name and tax_rate, and product_id or billable_item_id (a service)."""
    if line.get("product_id") and line.get("billable_item_id"):
        raise ValueError("a line is a product or a billable item, not both")
    name = line.get("name")
    if not isinstance(name, str) or not name.strip():
        raise ValueError("each line needs a name")
    return {
        "id": item_id,
        "invoice_id": invoice["id"],
        "name": name,
        "code": line.get("code"),
        **line_amounts(line, invoice["calculation_method"]),
        "tax_name": line.get("tax_name") if line.get("tax_rate") is not None else None,
        "concession_type_name": line.get("concession_type_name"),
        "product_id": line.get("product_id"),
        "billable_item_id": line.get("billable_item_id"),
        "source_item_id": line.get("product_id") or line.get("billable_item_id"),
        "created_at": stamp,
        "updated_at": stamp,
        "archived_at": None,
        "deleted_at": None,
    }


def negated_line(item: Mapping[str, Any]) -> dict[str, Any]:
    """The line spec that reverses `item`: the same line with a negative quantity (so every amount is negated)."""
    line: dict[str, Any] = {
        "name": item["name"],
        "code": item["code"],
        "quantity": str(-Decimal(item["quantity"])),
        "unit_price": item["unit_price"],
        "tax_rate": item["tax_rate"],
        "tax_name": item["tax_name"],
        "product_id": item["product_id"],
        "billable_item_id": item["billable_item_id"],
    }
    if item["is_monetary_discount"]:
        line["discount_amount"] = str(-Decimal(item["discounted_amount"]))
    else:
        line["discount_percentage"] = item["discount_percentage"]
    return line


def check_invoice_fields(fields: Mapping[str, Any]) -> dict[str, Any]:
    """Staff edits of an invoice's own fields, checked; ValueError names the first bad one."""
    unknown = sorted(set(fields) - set(EDITABLE_FIELDS))
    if unknown:
        raise ValueError(f"cannot edit {', '.join(unknown)} (editable: {', '.join(EDITABLE_FIELDS)})")
    changes = dict(fields)
    if changes.get("issue_date") is not None:  # the spec's issue_date is nullable: None clears it
        date.fromisoformat(str(changes["issue_date"]))
    if "status" in changes and changes["status"] not in STATUSES:
        raise ValueError(f"status must be one of {sorted(STATUSES)}")
    for name in ("practitioner_id", "appointment_id", "business_id"):
        if changes.get(name) is not None:
            changes[name] = str(changes[name])
    return changes
