"""What other streams' records are linked to, for streams that point at them (an invoice at its patient's customer
and its products' prices, a booking at its event type's product): streams.md §3, "resolve them through the links
other streams made; never look a customer up by email themselves".

Links of people belong to the Stripe account, so the lookup spans every account pair syncing into the same Stripe
account and mode (a Cal.com attendee's customer may have been made by a Cliniko patient's link).
"""

from __future__ import annotations

from collections.abc import Collection

from clinicsync import matchkey
from clinicsync.store.models import AccountPair, RecordLink, RoleLink
from clinicsync.sync.matching import same_account


class AccountLinks:
    """The `LinkLookup` of streams/base.py over this profile's database, for one account pair's run."""

    def __init__(self, pair: AccountPair) -> None:
        self._pair = pair

    def fingerprint(self, stream: str, source_id: str, role: str) -> str | None:
        """What the record's current object of `role` holds (a price's amount, currency and tax behaviour), as its
        stream recorded it; None when there is none."""
        row = self._current_role(stream, source_id, role)
        return row.fingerprint if row is not None else None

    def _current_role(self, stream: str, source_id: str, role: str) -> RoleLink | None:
        row: RoleLink | None = (
            RoleLink.select(RoleLink.stripe_id, RoleLink.fingerprint)
            .where(
                (RoleLink.stream == stream)
                & (RoleLink.source_id == source_id)
                & (RoleLink.role == role)
                & (RoleLink.current == True)  # noqa: E712 - peewee builds SQL from ==
                & RoleLink.pair.in_(same_account(self._pair))
            )
            .order_by(RoleLink.pair != self._pair.id)
            .first()
        )
        return row

    def stripe_id(self, stream: str, source_id: str, role: str | None = None) -> str | None:
        """The Stripe id the record of `stream` is linked to: its primary object, or the current one of `role`
        (e.g. a product's price). None while that record has not been synced (or was never linked)."""
        if role is None:
            row = (
                RecordLink.select(RecordLink.stripe_id)
                .where(
                    (RecordLink.stream == stream)
                    & (RecordLink.source_id == source_id)
                    & RecordLink.stripe_id.is_null(False)
                    & RecordLink.pair.in_(same_account(self._pair))
                )
                .order_by(RecordLink.pair != self._pair.id)  # this pair's own link first
                .first()
            )
        else:
            row = self._current_role(stream, source_id, role)
        return row.stripe_id if row is not None else None

    def all_stripe_ids(self, stream: str) -> dict[str, str]:
        """Every linked record of `stream` → the Stripe id of its primary object (this pair's own link first), in
        one query: for a stream that asks about many records of another (each invoice's patient's customer)."""
        rows = (
            RecordLink.select(RecordLink.source_id, RecordLink.stripe_id)
            .where(
                (RecordLink.stream == stream)
                & RecordLink.stripe_id.is_null(False)
                & RecordLink.pair.in_(same_account(self._pair))
            )
            .order_by(RecordLink.pair != self._pair.id)
        )
        found: dict[str, str] = {}
        for row in rows:
            found.setdefault(row.source_id, row.stripe_id)
        return found

    def linked_by(self, stream: str, stripe_ids: Collection[str]) -> dict[str, list[str]]:
        """Which of `stripe_ids` records of `stream` are linked to in this Stripe account, with those records'
        source ids (a page of ids per query: SQLite caps the parameters of one statement)."""
        wanted: list[str] = sorted(set(stripe_ids))
        found: dict[str, list[str]] = {}
        for start in range(0, len(wanted), 500):
            rows = RecordLink.select(RecordLink.stripe_id, RecordLink.source_id).where(
                (RecordLink.stream == stream)
                & RecordLink.stripe_id.in_(wanted[start : start + 500])
                & RecordLink.pair.in_(same_account(self._pair))
            )
            for row in rows:
                found.setdefault(row.stripe_id, []).append(row.source_id)
        return found

    def people(self, stream: str, email: str | None) -> list[str]:
        """The records of `stream` whose email is `email` (a payment's billing email), by the person keys the
        records keep (no email is stored or looked up in Stripe)."""
        key = matchkey.person_hash(self._pair.stripe_account, self._pair.stripe_livemode, email)
        if key is None:
            return []
        rows = RecordLink.select(RecordLink.source_id).where(
            (RecordLink.stream == stream)
            & (RecordLink.person_key == key)
            & RecordLink.pair.in_(same_account(self._pair))
        )
        return sorted({row.source_id for row in rows})

    def same_person(self, stream: str, source_id: str, email: str | None) -> bool:
        """Whether `email` is the email of the record of `stream` (e.g. a payment's billing email and an invoice's
        patient), compared as the person keys the records keep (no email is stored or looked up in Stripe)."""
        key = matchkey.person_hash(self._pair.stripe_account, self._pair.stripe_livemode, email)
        if key is None:
            return False
        return (
            RecordLink.select()
            .where(
                (RecordLink.stream == stream)
                & (RecordLink.source_id == source_id)
                & (RecordLink.person_key == key)
                & RecordLink.pair.in_(same_account(self._pair))
            )
            .exists()
        )
