"""Stripe's documented (and, where marked, reported) limits: the one place the app and its sandbox read them from."""

from __future__ import annotations

METADATA_MAX_KEYS = 50
METADATA_KEY_MAX_CHARS = 40
METADATA_VALUE_MAX_CHARS = 500
METADATA_KEY_FORBIDDEN_CHARS = "[]"
IDEMPOTENCY_KEY_MAX_CHARS = 255

# Per-field caps on customer strings. `name` 256 is third-party reported (stripe-notes.md); the rest follow
# Stripe's general 5000-character cap on short strings unless a tighter one is documented.
CUSTOMER_FIELD_MAX_CHARS: dict[str, int] = {
    "name": 256,
    "email": 512,
    "phone": 20,
    "description": 350,
    "address.line1": 200,
    "address.line2": 200,
    "address.city": 200,
    "address.state": 200,
    "address.postal_code": 20,
    "address.country": 2,
}

# Per-field caps on product strings (Stripe API reference, product create parameters: short strings 5000).
PRODUCT_FIELD_MAX_CHARS: dict[str, int] = {
    "name": 5000,
    "description": 40000,
    "statement_descriptor": 22,
    "unit_label": 12,
}
PRICE_FIELD_MAX_CHARS: dict[str, int] = {"nickname": 250, "lookup_key": 200}

# The largest `unit_amount` Stripe takes for a price (8 digits of minor units).
PRICE_MAX_UNIT_AMOUNT = 99_999_999

# Every object the gateway writes, with its own caps: the gateway checks a request against its object's.
FIELD_MAX_CHARS: dict[str, dict[str, int]] = {
    "customer": CUSTOMER_FIELD_MAX_CHARS,
    "product": PRODUCT_FIELD_MAX_CHARS,
    "price": PRICE_FIELD_MAX_CHARS,
}

# Requests per second Stripe allows per account (stripe-notes.md).
RATE_LIMIT_PER_SECOND = {"live": 100, "test": 25}
SEARCH_RATE_LIMIT_PER_SECOND = 20

LIST_MAX_LIMIT = 100
