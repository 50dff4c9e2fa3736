"""What every stream whose record is a person's Stripe customer shares (Cliniko patients, Cal.com attendees):
finding the customer a lost create made, and retiring a twin."""

from __future__ import annotations

from typing import Any

from clinicsync.streams.base import DUPLICATE_OF_KEY, FindRequest, oldest_naming


def find_created(gateway: Any, request: FindRequest) -> dict[str, Any] | None:
    """The customer an earlier attempt made, if any: by exact email (read-after-write safe), else by Search on the
    cross-reference (only trusted once its index has caught up: see `absence_certain`)."""
    email = request.params.get("email")
    if email:
        found = gateway.list_by_email(request.stripe_object, email)
    else:
        found = gateway.search(request.stripe_object, f"metadata['{request.cross_ref_key}']:'{request.source_id}'")
    return oldest_naming(found, request)


def absence_certain(request: FindRequest, age_s: float, settle_s: float) -> bool:
    # Listing by email is read-after-write safe; Search only once it has had time to index the object.
    return bool(request.params.get("email")) or age_s >= settle_s


# What makes a customer more than a duplicate: money moved or owed through it, or a card or plan saved on it (Cal.com's
# "no-show fee" option saves a card with a SetupIntent and charges nothing). Listings a Stripe does not serve (the
# sandbox's) count as empty.
_REFERRING = (
    ("payment_intent", {}),
    ("charge", {}),
    ("invoice", {}),
    ("setup_intent", {}),
    ("payment_method", {}),
    ("subscription", {"status": "all"}),
)


def _kept_for(customer: dict[str, Any] | None) -> bool:
    """Whether the customer object itself holds something a deletion would lose: a balance, or a default card."""
    if not customer:
        return False
    settings = customer.get("invoice_settings") or {}
    return bool(customer.get("balance") or customer.get("default_source") or settings.get("default_payment_method"))


def referenced(gateway: Any, customer_id: str) -> bool:
    """Whether anything refers to the customer, so that deleting it would lose a payment, a saved card or credit."""
    if _kept_for(gateway.retrieve("customer", customer_id)):
        return True
    return any(gateway.any_of(kind, {"customer": customer_id, **extra}) for kind, extra in _REFERRING)


def retire_twin(gateway: Any, twin_id: str, survivor_id: str) -> str:
    """Delete the twin customer unless something refers to it (a payment, an invoice, a saved card, credit): then
    mark it."""
    if referenced(gateway, twin_id):
        gateway.write("update", "customer", twin_id, {"metadata": {DUPLICATE_OF_KEY: survivor_id}}, f"twin:{twin_id}")
        return f"marked as a duplicate of {survivor_id} (it has payments, invoices or a saved card, so it was kept)"
    gateway.delete("customer", twin_id)
    return f"deleted: a duplicate of {survivor_id} that nothing referred to"
