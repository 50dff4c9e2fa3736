"""The one rule for match keys (a customer's email, a product's name): compared trimmed and casefolded, and kept
locally only as a keyed hash, so the database holds no contact details.

Two scopes: `match_hash` is keyed by the account pair (one source account's records against its Stripe account);
`person_hash` is keyed by the Stripe account alone, so every source syncing into that account computes the same
key for the same email and finds the customer another source linked (one person, one customer).
"""

from __future__ import annotations

import hashlib
import hmac


def normalized(value: str) -> str:
    return value.strip().casefold()


def _hash(key: str, value: str | None) -> str | None:
    if not value or not normalized(value):
        return None
    digest = hmac.new(key.encode(), normalized(value).encode("utf-8"), hashlib.sha256)
    return digest.hexdigest()[:40]


def match_hash(pair_uuid: str, value: str | None) -> str | None:
    if not value:
        return None
    digest = hmac.new(pair_uuid.encode(), normalized(value).encode("utf-8"), hashlib.sha256)
    return digest.hexdigest()[:40]


def person_hash(stripe_account: str, livemode: bool, value: str | None) -> str | None:
    """The key of a person (by email) within one Stripe account and mode, the same from every source."""
    return _hash(f"person:{stripe_account}:{'live' if livemode else 'test'}", value)
