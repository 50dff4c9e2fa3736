"""Cliniko's invoice status codes (cliniko-api.md §5.2): the one definition the mapping's status table, the invoice
linker (streams/cliniko_invoices.py) and the invoice mirror (streams/cliniko_invoice_mirror.py) all use."""

from __future__ import annotations

from typing import Any

OPEN, PAID, CLOSED, OPEN_CREDIT = 10, 20, 30, 40

# Each code as written to Stripe metadata (the mapping's lookup table, keyed by the code as text).
NAMES = {OPEN: "open", PAID: "paid", CLOSED: "closed", OPEN_CREDIT: "open_credit"}

# "Open credit" is an invoice paid beyond its total (a credit balance is left after payment): it was paid, so both
# the mirror (paid outside Stripe) and the linker (a payment to find) treat it as paid.
PAID_CODES = frozenset({PAID, OPEN_CREDIT})


def is_paid(status: Any) -> bool:
    return status in PAID_CODES


def words(status: Any) -> str:
    """The status in words for messages ("open credit"); "not paid" for a code Cliniko does not document."""
    name = NAMES.get(status) if isinstance(status, int) else None
    return name.replace("_", " ") if name else "not paid"
