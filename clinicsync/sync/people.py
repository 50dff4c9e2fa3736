"""One person, one customer (streams.md §3), also when two customers were made for a person before anything
showed they are one: a Cal.com attendee met before this installation saw the patient's new email (another
installation sent it to the patient's customer), or a patient whose email changes to one an attendee booked with.

When the primary source's record of a person (a patient, by default) is linked to its customer and other sources'
records of the same person (same email, in the same Stripe account) are linked to another customer that no record
of the primary source is linked to, the person's records are joined on the primary source's customer: the other
customer is retired as a duplicate (deleted when nothing refers to it, else marked), the records that were linked
to it are linked to the one that stays and sent to it again on their next run, and history says so.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from peewee import fn

from clinicsync.labels import plural
from clinicsync.store.db import database_proxy
from clinicsync.store.models import AccountPair, OutboxEntry, RecordLink, StripeIndexEntry
from clinicsync.streams.base import Stream
from clinicsync.stripe_gateway import StripeFailure
from clinicsync.sync.matching import PERSON_OBJECTS, same_account, sources_linking
from clinicsync.sync.twins import move_link, survivor_taken

log = logging.getLogger(__name__)

JOINED_REASON = "its person's customer was joined with the patient's"


@dataclass(frozen=True)
class Join:
    """What joining found to do: retire `others` in favour of `survivor`; `later`: not now, try again next run."""

    survivor: str
    others: tuple[str, ...] = ()
    later: bool = False


def to_join(pair: AccountPair, stream: Stream, source_id: str, key: str | None, survivor: str, primary: str) -> Join:
    """The person's other customers to join on `survivor`, the customer of the record `source_id` of `stream`.

    Only the primary source's record decides (its customer carries the person's identity, and its invoices point
    at it), and only when it is the one record of its stream with this email (family members sharing an email
    are each their own customer, and an attendee among them is a person's decision, in review)."""
    if key is None or stream.stripe_object not in PERSON_OBJECTS or stream.source_system != primary:
        return Join(survivor)
    mine = (RecordLink.pair == pair) & (RecordLink.stream == stream.name)
    sharing = (
        RecordLink.select()
        .where(
            mine & (RecordLink.person_key == key) & (RecordLink.source_id != source_id) & (RecordLink.archived == False)  # noqa: E712 (peewee expression)
        )
        .exists()
    )
    if sharing or _family_elsewhere(pair, stream, key):
        return Join(survivor)
    rows = (
        RecordLink.select(RecordLink.stripe_id)
        .distinct()
        .where(
            (RecordLink.person_key == key)
            & (RecordLink.stripe_object == stream.stripe_object)
            & RecordLink.stripe_id.is_null(False)
            & (RecordLink.stripe_id != survivor)
            & RecordLink.pair.in_(same_account(pair))
            & ~mine
        )
        .order_by(RecordLink.stripe_id)
    )
    others: list[str] = []
    moving: set[tuple[int, str]] = set()  # (pair, stream) of the records this join moves onto the survivor
    later = False
    for row in rows:
        if primary in sources_linking(pair, stream.stripe_object, row.stripe_id):
            continue  # another patient's customer (a person decides, in reconciliation), not this person's twin
        movers = _links_to(pair, stream.stripe_object, row.stripe_id)
        streams = [(link.pair_id, link.stream) for link in movers]
        if moving.intersection(streams):
            continue  # two records of one stream cannot share one customer
        if any(survivor_taken(link, survivor) for link in movers):
            continue  # that stream has its own record on the survivor already: two records cannot share it
        if any(_pending(link) for link in movers):
            later = True  # a write to it is still on its way: joined once it has been confirmed
            continue
        others.append(row.stripe_id)
        moving.update(streams)
    return Join(survivor, tuple(others), later)


def join(
    pair: AccountPair,
    stream: Stream,
    gateway: object,
    plan: Join,
    note: Callable[[str, str | None, str], None],
) -> bool:
    """Retire each of `plan.others` and move the links to it onto `plan.survivor`; False if one could not be
    retired now (the caller reads its record again next run, which tries again). Retired first, links moved
    after: a run stopped in between finds the same links next time (its record's change is read again, as the
    cursor only moves at the end of a run), never a customer nothing links to any more."""
    if stream.retire_twin is None:
        return True
    complete = True
    for other in plan.others:
        try:
            done = stream.retire_twin(gateway, other, plan.survivor)
        except StripeFailure as failure:
            log.warning("could not retire duplicate %s: %s", other, failure.message)
            complete = False
            continue
        with database_proxy.atomic():
            moved = _links_to(pair, stream.stripe_object, other)
            for link in moved:
                move_link(link, plan.survivor, JOINED_REASON)
            note(
                other,
                f"Joined {plural(len(moved), 'record')} of this person from another source to this record's customer "
                f"(same email); the customer made for them before was {done}",
            )
            StripeIndexEntry.delete().where(
                StripeIndexEntry.pair.in_(same_account(pair))
                & (StripeIndexEntry.stripe_object == stream.stripe_object)
                & (StripeIndexEntry.stripe_id == other)
            ).execute()
    return complete


def _family_elsewhere(pair: AccountPair, stream: Stream, key: str) -> bool:
    """Whether another stream holds several live records with this email (a family sharing one, seen from the side
    that is not primary): which of them is this person is a person's call, so nothing is joined."""
    counted = fn.COUNT(RecordLink.id)
    return (
        RecordLink.select(RecordLink.pair, RecordLink.stream, counted)
        .where(
            (RecordLink.person_key == key)
            & (RecordLink.stripe_object == stream.stripe_object)
            & RecordLink.pair.in_(same_account(pair))
            & (RecordLink.stream != stream.name)
            & (RecordLink.archived == False)  # noqa: E712 (peewee expression)
        )
        .group_by(RecordLink.pair, RecordLink.stream)
        .having(counted > 1)
        .exists()
    )


def _links_to(pair: AccountPair, stripe_object: str, stripe_id: str) -> list[RecordLink]:
    return list(
        RecordLink.select().where(
            (RecordLink.stripe_object == stripe_object)
            & (RecordLink.stripe_id == stripe_id)
            & RecordLink.pair.in_(same_account(pair))
        )
    )


def _pending(link: RecordLink) -> bool:
    return (
        OutboxEntry.select()
        .where(
            (OutboxEntry.pair == link.pair_id)
            & (OutboxEntry.stream == link.stream)
            & (OutboxEntry.source_id == link.source_id)
            & (OutboxEntry.status == "pending")
        )
        .exists()
    )
