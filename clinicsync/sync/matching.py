"""Matching source records to existing Stripe objects: the local link, then the index of the Stripe account
(listed in full once, then topped up each run with the objects created since) by cross-reference, then by
casefolded email; never Search (it lags behind writes).

Emails are kept only as keyed hashes, so the local database holds no contact details.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC
from typing import Any

from peewee import chunked

from clinicsync import matchkey
from clinicsync.mapping.spec import StreamMapping
from clinicsync.store import lookup
from clinicsync.store.models import AccountPair, RecordLink, StreamState, StripeIndexEntry, utcnow

CLOCK_MARGIN_S = 600  # how far this PC's clock may be ahead of Stripe's without a refresh missing an object
# Stripe stamps `created` on many servers; re-listing the last minute costs little and forgives a late stamp.
REFRESH_OVERLAP_S = 60


def match_hash(pair: AccountPair, value: str | None) -> str | None:
    """A keyed hash of a match key (an email, a product name): see clinicsync/matchkey.py."""
    return matchkey.match_hash(pair.uuid, value)


def build_index(
    pair: AccountPair, mapping: StreamMapping, state: StreamState, objects: Iterable[dict[str, Any]]
) -> int:
    """Record every existing Stripe object of the mapping's kind, once per account pair and stream."""
    StripeIndexEntry.delete().where(
        (StripeIndexEntry.pair == pair) & (StripeIndexEntry.stripe_object == mapping.stripe_object)
    ).execute()
    count, newest = _add_to_index(pair, mapping, objects)
    state.stripe_index_built_at = utcnow()
    state.stripe_index_high_water = newest
    state.save()
    return count


def refresh_since(state: StreamState) -> int:
    """Stripe `created` time from which the next refresh lists objects (inclusive: several share a second).

    An index built before the high-water mark existed starts from its build time, less a margin for the
    difference between this PC's clock and Stripe's.
    """
    if state.stripe_index_high_water is not None:
        return state.stripe_index_high_water - REFRESH_OVERLAP_S
    assert state.stripe_index_built_at is not None, "refresh needs a built index"
    return int(state.stripe_index_built_at.replace(tzinfo=UTC).timestamp()) - CLOCK_MARGIN_S


def refresh_index(
    pair: AccountPair, mapping: StreamMapping, state: StreamState, objects: Iterable[dict[str, Any]]
) -> int:
    """Add objects made since the last build or refresh (e.g. by staff in the Stripe dashboard), so a patient
    with the same email links to them instead of getting a second customer. Known objects are left as they are."""
    count, newest = _add_to_index(pair, mapping, objects)
    if newest is not None:
        state.stripe_index_high_water = max(newest, state.stripe_index_high_water or newest)
        state.save()
    return count


def _add_to_index(
    pair: AccountPair, mapping: StreamMapping, objects: Iterable[dict[str, Any]]
) -> tuple[int, int | None]:
    """Insert index rows for `objects` (ignoring ones already there): how many were seen, and the newest `created`."""
    count = 0
    newest: int | None = None

    def rows() -> Iterable[dict[str, Any]]:
        nonlocal count, newest
        for obj in objects:
            count += 1
            created = obj.get("created")
            if isinstance(created, int):
                newest = created if newest is None else max(newest, created)
            metadata = obj.get("metadata") or {}
            yield {
                "pair": pair.id,
                "stripe_object": mapping.stripe_object,
                "stripe_id": obj["id"],
                "email_hash": match_hash(pair, _match_value(mapping, obj)),
                "source_ref": metadata.get(mapping.cross_ref_key),
                "display_name": (obj.get("name") or obj.get("email") or "")[:120],
                "created": created if isinstance(created, int) else None,
            }

    for batch in chunked(rows(), 200):
        StripeIndexEntry.insert_many(batch).on_conflict_ignore().execute()
    return count, newest


def _match_value(mapping: StreamMapping, obj: dict[str, Any]) -> str | None:
    """The Stripe object's value of the mapping's match key (a customer's email, a product's name)."""
    if not any(rule.role == "match_key" for rule in mapping.rules):
        return None
    value = obj.get(mapping.match_target)
    return value if isinstance(value, str) else None


def _unlinked(pair: AccountPair, mapping: StreamMapping, found: list[str]) -> list[str]:
    """The objects of `found` no record of this stream is linked to. An object that is not a person and that another
    stream or source is linked to (a Cliniko product, for Cal.com's event type of the same name) is not free
    either: two streams writing one product would undo each other's writes. People are shared on purpose."""
    if not found:  # asked for every record of a sync, and nearly always nothing to compare with the links
        return []
    mine = (RecordLink.pair == pair) & (RecordLink.stream == mapping.stream)
    if mapping.stripe_object not in PERSON_OBJECTS:
        mine = mine | (RecordLink.pair.in_(same_account(pair)) & (RecordLink.stripe_object == mapping.stripe_object))
    linked = {
        row.stripe_id for row in RecordLink.select(RecordLink.stripe_id).where(mine & RecordLink.stripe_id.in_(found))
    }
    return [stripe_id for stripe_id in found if stripe_id not in linked]


def is_unlinked(pair: AccountPair, mapping: StreamMapping, stripe_id: str) -> bool:
    """Whether a record of this stream may be linked to this Stripe object (see _unlinked)."""
    return bool(_unlinked(pair, mapping, [stripe_id]))


def candidates_by_reference(pair: AccountPair, mapping: StreamMapping, source_id: str) -> list[str]:
    """Unlinked Stripe objects whose metadata already names this source record (e.g. made by an earlier install)."""
    found = lookup.column(
        StripeIndexEntry, "stripe_id", pair=pair, stripe_object=mapping.stripe_object, source_ref=source_id
    )
    return _unlinked(pair, mapping, found)


def candidates_by_email(pair: AccountPair, mapping: StreamMapping, hashed_email: str | None) -> list[str]:
    """Unlinked Stripe objects with the same casefolded email. A linked one is never a candidate."""
    if hashed_email is None:
        return []
    found = lookup.column(
        StripeIndexEntry, "stripe_id", pair=pair, stripe_object=mapping.stripe_object, email_hash=hashed_email
    )
    return _unlinked(pair, mapping, found)


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


# --- people across sources (streams.md §3) -------------------------------------------------------------------
# Stripe objects that are people: a record of any source whose email is a person's finds the customer another
# source's record of that person is linked to, in the same Stripe account.
PERSON_OBJECTS = ("customer",)


def person_key(pair: AccountPair, stripe_object: str, value: str | None) -> str | None:
    """The record's person key within the pair's Stripe account (None for objects that are not people)."""
    if stripe_object not in PERSON_OBJECTS:
        return None
    return matchkey.person_hash(pair.stripe_account, pair.stripe_livemode, value)


def same_account(pair: AccountPair) -> Any:
    """The account pairs syncing into the pair's Stripe account and mode (a subquery of their ids)."""
    return AccountPair.select(AccountPair.id).where(
        (AccountPair.stripe_account == pair.stripe_account) & (AccountPair.stripe_livemode == pair.stripe_livemode)
    )


def person_candidates(pair: AccountPair, mapping: StreamMapping, key: str | None) -> list[str]:
    """Stripe objects that records of this person in *other* streams or sources are linked to (same Stripe account
    and mode), and that no record of this stream and pair is linked to yet: the person's customer to join."""
    if key is None:
        return []
    rows = (
        RecordLink.select(RecordLink.stripe_id)
        .distinct()
        .where(
            (RecordLink.person_key == key)
            & (RecordLink.stripe_object == mapping.stripe_object)
            & RecordLink.stripe_id.is_null(False)
            & RecordLink.pair.in_(same_account(pair))
            & ~((RecordLink.pair == pair) & (RecordLink.stream == mapping.stream))
        )
        .order_by(RecordLink.stripe_id)
    )
    found = [row.stripe_id for row in rows]
    if not found:
        return []
    # Those this stream's records are linked to, looked up by id: a `NOT IN` every link of the stream cost each
    # record a pass over all of them, which grew with the links a first sync makes.
    own = RecordLink.select(RecordLink.stripe_id).where(
        (RecordLink.pair == pair) & (RecordLink.stream == mapping.stream) & RecordLink.stripe_id.in_(found)
    )
    taken = {row.stripe_id for row in own}
    return [stripe_id for stripe_id in found if stripe_id not in taken]


def sources_linking(pair: AccountPair, stripe_object: str, stripe_id: str) -> set[str]:
    """The source systems ("cliniko", "calcom") whose records are linked to this Stripe object, in the pair's
    Stripe account and mode: who else owns a part of it."""
    rows = (
        AccountPair.select(AccountPair.source_system)
        .join(RecordLink, on=(RecordLink.pair == AccountPair.id))
        .where(
            (RecordLink.stripe_object == stripe_object)
            & (RecordLink.stripe_id == stripe_id)
            & AccountPair.id.in_(same_account(pair))
        )
        .distinct()
    )
    return {row.source_system for row in rows}


def owned_update(
    params: dict[str, Any], pair: AccountPair, stripe_object: str, stripe_id: str, source_system: str, primary: str
) -> dict[str, Any]:
    """An update's params less what another source owns on a person's object they share (the primary source keeps
    name, email, phone and address): the one rule for every path that updates a linked object."""
    from clinicsync.streams import identity

    if stripe_object not in PERSON_OBJECTS:
        return params
    return identity.owned_params(params, source_system, primary, sources_linking(pair, stripe_object, stripe_id))
