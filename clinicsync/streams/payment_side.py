"""The Stripe side of the payment streams' reconciliation (cliniko.invoices, calcom.booking_payments): each payment
as one plain object, whether it is a PaymentIntent or a bare charge, with what reconciliation compares — amount,
status, how much was refunded, when it was made, its metadata.

Read as one paged listing of charges (100 a page, each with its PaymentIntent expanded), never one lookup per
record; a linked payment the listing did not bring is read by id (`payment_by_id`).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any

SUCCEEDED = "succeeded"


def _id(value: Any) -> str | None:
    if isinstance(value, Mapping):
        value = value.get("id")
    return str(value) if value else None


def payment_of(charge: Mapping[str, Any], intent: Mapping[str, Any] | None) -> dict[str, Any]:
    """One payment: the PaymentIntent (its status, amount and metadata) with the refunds of `charge`, or the
    bare charge itself when it was made without one."""
    refunded = int(charge.get("amount_refunded") or 0)
    base = {
        "charge": str(charge.get("id") or ""),
        "amount_refunded": refunded,
        "refunded": bool(charge.get("refunded")) or refunded > 0,
        "customer": _id(charge.get("customer")),
    }
    if intent is not None:
        return {
            **base,
            "id": str(intent["id"]),
            "object": "payment_intent",
            "amount": int(intent.get("amount") or charge.get("amount") or 0),
            "currency": str(intent.get("currency") or charge.get("currency") or ""),
            "status": str(intent.get("status") or ""),
            "created": int(intent.get("created") or charge.get("created") or 0),
            "metadata": dict(intent.get("metadata") or {}),
            "customer": _id(intent.get("customer")) or base["customer"],
        }
    return {
        **base,
        "id": str(charge["id"]),
        "object": "charge",
        "amount": int(charge.get("amount") or 0),
        "currency": str(charge.get("currency") or ""),
        "status": str(charge.get("status") or ""),
        "created": int(charge.get("created") or 0),
        "metadata": dict(charge.get("metadata") or {}),
    }


def payments_of_charges(charges: Iterable[Mapping[str, Any]]) -> Iterator[dict[str, Any]]:
    """One payment per PaymentIntent (or bare charge): a succeeded PaymentIntent by its succeeded charge (its
    earlier declined attempts say nothing about it); one that never succeeded by its attempts (each the same)."""
    for charge in charges:
        intent = charge.get("payment_intent")
        intent = intent if isinstance(intent, Mapping) else None
        if intent is not None and intent.get("status") == SUCCEEDED and charge.get("status") != SUCCEEDED:
            continue
        yield payment_of(charge, intent)


def list_payments(gateway: Any, created_from: int | None) -> Iterator[dict[str, Any]]:
    """Every payment made from `created_from` (epoch s; None: all time), whatever its status."""
    filters: dict[str, Any] = {"expand": ["data.payment_intent"]}
    yield from payments_of_charges(gateway.iter_objects("charge", created_from, filters))


def payment_by_id(gateway: Any, stripe_id: str) -> dict[str, Any] | None:
    """A payment by its PaymentIntent's or bare charge's id; None when Stripe has no such object."""
    if stripe_id.startswith(("ch_", "py_")):
        charge = gateway.retrieve("charge", stripe_id)
        return payment_of(charge, None) if charge is not None else None
    intent = gateway.retrieve("payment_intent", stripe_id)
    if intent is None:
        return None
    charges = list(gateway.iter_objects("charge", None, {"payment_intent": stripe_id}))
    charge = next((c for c in charges if c.get("status") == SUCCEEDED), charges[0] if charges else {"id": ""})
    return payment_of(charge, intent)
