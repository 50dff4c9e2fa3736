"""The one rule for match keys (a customer's email, a product's name): compared trimmed and casefolded, and kept
locally only as a hash keyed by the account pair, so the database holds no contact details."""

from __future__ import annotations

import hashlib
import hmac


def match_hash(pair_uuid: str, value: str | None) -> str | None:
    if not value:
        return None
    digest = hmac.new(pair_uuid.encode(), value.strip().casefold().encode("utf-8"), hashlib.sha256)
    return digest.hexdigest()[:40]
