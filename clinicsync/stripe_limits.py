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

# Requests per second Stripe allows per account (stripe-notes.md).
RATE_LIMIT_PER_SECOND = {"live": 100, "test": 25}
SEARCH_RATE_LIMIT_PER_SECOND = 20

LIST_MAX_LIMIT = 100
