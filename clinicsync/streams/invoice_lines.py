"""The lines of a Stripe invoice that mirrors a Cliniko invoice: pure arithmetic, no network, no database.

Each Cliniko line becomes one Stripe line of what the patient pays for it (its total including tax) in minor units,
by the one money rule (clinicsync/money.py). Cliniko keeps line amounts to four decimals and rounds only the
invoice's total, so the rounded lines may miss the total by a cent or two: one labelled rounding line makes the
mirror's total Cliniko's `total_amount` exactly (streams.md §4: never a silent cent).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from decimal import Decimal
from typing import Any

from clinicsync import money

TAX_EXCLUSIVE = 2  # Cliniko's calculation_method; 3 is tax inclusive, 1 legacy (treated as inclusive)
ROUNDING_ID = "rounding"
ROUNDING_DESCRIPTION = "Rounding to the Cliniko invoice total"


@dataclass(frozen=True)
class MirrorLine:
    """One Stripe invoice line: `amount` in minor units; `product_id` and a whole `quantity` when it is a product
    line that a product's Stripe price may carry instead (when the price times the quantity is the amount)."""

    item_id: str
    description: str
    amount: int
    product_id: str | None = None
    quantity: int | None = None


class LineError(ValueError):
    """A Cliniko line whose amounts cannot be read, or lines that do not add up to the total; the message says
    which and why."""


def line_total(item: Mapping[str, Any], calculation_method: int) -> Decimal:
    """What the patient pays for one Cliniko line: its `total_including_tax` when Cliniko gives it, else computed
    as Cliniko documents the fields: quantity × unit price, less the discount (a percentage of that, or with
    `is_monetary_discount` the `discounted_amount`), plus tax at `tax_rate` percent on tax-exclusive invoices."""
    given = item.get("total_including_tax")
    if given not in (None, ""):
        return money.parse_amount(given)
    quantity = money.parse_amount(item.get("quantity") or 1)
    gross = quantity * money.parse_amount(item.get("unit_price") or 0)
    if item.get("is_monetary_discount"):
        discount = money.parse_amount(item.get("discounted_amount") or 0)
    else:
        discount = gross * money.parse_amount(item.get("discount_percentage") or 0) / 100
    total = gross - discount
    if calculation_method == TAX_EXCLUSIVE and item.get("tax_rate") not in (None, ""):
        total += total * money.parse_amount(item["tax_rate"]) / 100
    return total


def _whole(value: object) -> int | None:
    try:
        number = money.parse_amount(value)
    except money.MoneyError:
        return None
    return int(number) if number == number.to_integral_value() and number > 0 else None


def _description(item: Mapping[str, Any], quantity: int | None) -> str:
    name = " ".join(str(item.get("name") or "Invoice line").split())
    return f"{name} × {quantity}" if quantity not in (None, 1) else name


def mirror_lines(
    items: Iterable[Mapping[str, Any]],
    *,
    calculation_method: int,
    total_amount: object,
    currency: str,
    product_of: Mapping[str, str] | None = None,
) -> list[MirrorLine]:
    """The Stripe lines of a Cliniko invoice: one per live item (in the order given), then a rounding line when
    the rounded lines do not add up to `total_amount`. `product_of`: item id → Cliniko product id, for product
    lines. Raises LineError on an amount that is not a number, or when the lines miss the total by more than
    rounding each line to the minor unit can (half a minor unit per line, rounded up)."""
    lines: list[MirrorLine] = []
    for item in items:
        if item.get("deleted_at") or item.get("archived_at"):
            continue
        item_id = str(item.get("id") or "")
        try:
            units = money.to_minor_units(line_total(item, calculation_method), currency)
        except money.MoneyError as exc:
            raise LineError(f"line {item_id or '?'} ({item.get('name') or 'no name'}): {exc}") from None
        product = (product_of or {}).get(item_id)
        quantity = _whole(item.get("quantity") or 1)
        lines.append(MirrorLine(item_id, _description(item, quantity), units, product, quantity if product else None))
    try:
        wanted = money.to_minor_units(total_amount, currency)
    except money.MoneyError as exc:
        raise LineError(f"the invoice total: {exc}") from None
    difference = wanted - sum(line.amount for line in lines)
    # Each rounded line is off by at most half a minor unit: anything more is a misread line or discount, never a
    # silent "rounding" line (streams.md §4).
    if abs(difference) > (len(lines) + 1) // 2:
        raise LineError(
            f"the lines add up to {money.display(wanted - difference, currency)} but the invoice total is "
            f"{money.display(wanted, currency)}: a difference of {money.display(abs(difference), currency)} is more "
            "than rounding each line can explain (a line or discount that was not read as Cliniko counts it?)"
        )
    if difference:
        lines.append(MirrorLine(ROUNDING_ID, ROUNDING_DESCRIPTION, difference))
    return lines


def price_fits(line: MirrorLine, unit_amount: int) -> bool:
    """Whether a product's Stripe price, times the line's quantity, is exactly the line's amount."""
    return line.product_id is not None and line.quantity is not None and unit_amount * line.quantity == line.amount


def to_text(lines: Iterable[MirrorLine]) -> str:
    """The lines as one payload value (so a changed line is a changed record)."""
    return json.dumps([asdict(line) for line in lines], separators=(",", ":"), sort_keys=True)


def from_text(text: str) -> list[MirrorLine]:
    return [MirrorLine(**entry) for entry in json.loads(text)]
