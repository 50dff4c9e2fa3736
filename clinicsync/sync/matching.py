"""Matching source records to existing Stripe objects: the local link, then the one-time index of the Stripe
account (by cross-reference, then by casefolded email), never Search (it lags behind writes).

Emails are kept only as keyed hashes, so the local database holds no contact details.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable
from typing import Any

from peewee import chunked

from clinicsync.mapping.spec import StreamMapping
from clinicsync.store.models import AccountPair, RecordLink, StreamState, StripeIndexEntry, utcnow


def email_hash(pair: AccountPair, email: str | None) -> str | None:
    if not email:
        return None
    digest = hmac.new(pair.uuid.encode(), email.strip().casefold().encode("utf-8"), hashlib.sha256)
    return digest.hexdigest()[:40]


def build_index(
    pair: AccountPair, mapping: StreamMapping, state: StreamState, objects: Iterable[dict[str, Any]]
) -> int:
    """Record every existing Stripe object of the mapping's kind, once per account pair and stream."""
    StripeIndexEntry.delete().where(
        (StripeIndexEntry.pair == pair) & (StripeIndexEntry.stripe_object == mapping.stripe_object)
    ).execute()
    count = 0

    def rows() -> Iterable[dict[str, Any]]:
        nonlocal count
        for obj in objects:
            count += 1
            metadata = obj.get("metadata") or {}
            yield {
                "pair": pair.id,
                "stripe_object": mapping.stripe_object,
                "stripe_id": obj["id"],
                "email_hash": email_hash(pair, obj.get("email")),
                "source_ref": metadata.get(mapping.cross_ref_key),
                "display_name": (obj.get("name") or obj.get("email") or "")[:120],
            }

    for batch in chunked(rows(), 200):
        StripeIndexEntry.insert_many(batch).on_conflict_ignore().execute()
    state.stripe_index_built_at = utcnow()
    state.save()
    return count


def _unlinked(pair: AccountPair, mapping: StreamMapping, query: Any) -> list[str]:
    linked = RecordLink.select(RecordLink.stripe_id).where(
        (RecordLink.pair == pair) & (RecordLink.stream == mapping.stream) & RecordLink.stripe_id.is_null(False)
    )
    rows = query.where(StripeIndexEntry.stripe_id.not_in(linked)).order_by(StripeIndexEntry.stripe_id)
    return [row.stripe_id for row in rows]


def candidates_by_reference(pair: AccountPair, mapping: StreamMapping, source_id: str) -> list[str]:
    """Unlinked Stripe objects whose metadata already names this source record (e.g. made by an earlier install)."""
    query = StripeIndexEntry.select(StripeIndexEntry.stripe_id).where(
        (StripeIndexEntry.pair == pair)
        & (StripeIndexEntry.stripe_object == mapping.stripe_object)
        & (StripeIndexEntry.source_ref == source_id)
    )
    return _unlinked(pair, mapping, query)


def candidates_by_email(pair: AccountPair, mapping: StreamMapping, hashed_email: str | None) -> list[str]:
    """Unlinked Stripe objects with the same casefolded email. A linked one is never a candidate."""
    if hashed_email is None:
        return []
    query = StripeIndexEntry.select(StripeIndexEntry.stripe_id).where(
        (StripeIndexEntry.pair == pair)
        & (StripeIndexEntry.stripe_object == mapping.stripe_object)
        & (StripeIndexEntry.email_hash == hashed_email)
    )
    return _unlinked(pair, mapping, query)


def records_sharing_email(pair: AccountPair, mapping: StreamMapping, hashed_email: str) -> int:
    """How many live source records of this stream have this email (family members often share one)."""
    return (
        RecordLink.select()
        .where(
            (RecordLink.pair == pair)
            & (RecordLink.stream == mapping.stream)
            & (RecordLink.email_hash == hashed_email)
            & (RecordLink.archived == False)  # noqa: E712 (peewee expression)
        )
        .count()
    )
