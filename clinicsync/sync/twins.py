"""Two installations, one pair of accounts: no duplicate is left behind.

Two computers (or the tray app beside a scheduled headless run) syncing the same Cliniko account into the same
Stripe account each keep their own outbox and links. What can be prevented is: before a create, the index of the
Stripe account is topped up (a listing of objects created since, which does not lag as Search does) and an object
already naming the record is linked instead. What cannot (two first syncs creating the same record within a
second of each other) is repaired on the next run: of two objects naming one record, the older stays (every
installation picks the same one), links move to it, and the newer is retired the stream's way (deleted when
nothing refers to it, else marked). The person is told once, plainly, that another installation is syncing.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC

from peewee import fn

from clinicsync.mapping.spec import StreamMapping
from clinicsync.store.db import database_proxy
from clinicsync.store.models import AccountPair, RecordLink, RoleLink, StripeIndexEntry, utcnow
from clinicsync.streams.base import Stream
from clinicsync.stripe_gateway import StripeFailure
from clinicsync.sync.matching import same_account
from clinicsync.sync.outbox import revisit_later

log = logging.getLogger(__name__)

MOVED_REASON = "its Stripe object was a twin: moved to the one kept"

TOPUP_INTERVAL_S = 2.0  # at most one "what is new in Stripe" listing this often while creating
# ... and spaced so the listings take at most this share of the time: during a first sync each one re-lists the
# last minute's creates (its overlap), so a fixed 2 s made a third of the reading thread's time listing.
TOPUP_TIME_SHARE = 0.1
RACE_MARGIN_S = 600  # the other installation may have started a little earlier, and clocks differ
OTHER_INSTALLATION_MESSAGE = (
    "Another computer is syncing this Cliniko account into this Stripe account. ClinicSync removed the duplicates "
    "the two made at the same moment. Keep one computer syncing (turn syncing off on the other), or run one "
    "background service for the clinic."
)


@dataclass
class Twin:
    source_id: str
    survivor: str
    extras: list[str] = field(default_factory=list)


def find_twins(pair: AccountPair, mapping: StreamMapping) -> list[Twin]:
    """Records that more than one Stripe object made since these accounts were first synced here names in its
    cross-reference, oldest object first. Older namesakes (an earlier installation's, or made by hand) are not
    twins of a race: a person decides about them in review, as before."""
    since = int(pair.created_at.replace(tzinfo=UTC).timestamp()) - RACE_MARGIN_S
    mine = (
        (StripeIndexEntry.pair == pair)
        & (StripeIndexEntry.stripe_object == mapping.stripe_object)
        & (StripeIndexEntry.created >= since)
    )
    shared = (
        StripeIndexEntry.select(StripeIndexEntry.source_ref)
        .where(mine & StripeIndexEntry.source_ref.is_null(False))
        .group_by(StripeIndexEntry.source_ref)
        .having(fn.COUNT(StripeIndexEntry.id) > 1)
    )
    twins: dict[str, Twin] = {}
    rows = (
        StripeIndexEntry.select()
        .where(mine & StripeIndexEntry.source_ref.in_(shared))
        .order_by(StripeIndexEntry.source_ref, StripeIndexEntry.created, StripeIndexEntry.stripe_id)
    )
    for row in rows:
        twin = twins.get(row.source_ref)
        if twin is None:
            twins[row.source_ref] = Twin(row.source_ref, row.stripe_id)
        else:
            twin.extras.append(row.stripe_id)
    return list(twins.values())


def repair(
    pair: AccountPair,
    stream: Stream,
    mapping: StreamMapping,
    gateway: object,
    note: Callable[[str, str, str | None, str], None],
    *,
    dry_run: bool,
) -> int:
    """Keep the older of each pair of twins, move links to it and retire the rest; how many twins were found."""
    twins = find_twins(pair, mapping)
    if not twins or stream.retire_twin is None:
        return len(twins)
    if stream.choose_twins is not None:  # e.g. a mirror voided and replaced on purpose is no twin of its successor
        twins = [chosen for twin in twins if (chosen := _chosen(stream, gateway, twin)) is not None]
        if not twins:
            return 0
    for twin in twins:
        link = RecordLink.get_or_none(
            (RecordLink.pair == pair) & (RecordLink.stream == stream.name) & (RecordLink.source_id == twin.source_id)
        )
        name = link.display_name if link is not None else twin.source_id
        if dry_run:
            note(twin.source_id, name, twin.survivor, f"{len(twin.extras)} duplicate(s) in Stripe would be removed")
            continue
        if link is not None and link.stripe_id in twin.extras:
            move_link(link, twin.survivor)
        for other in _others_linked(pair, stream, mapping.stripe_object, twin.extras):
            if survivor_taken(other, twin.survivor):
                # Its stream has another record on the one kept (the twins were made under two emails): left on the
                # twin, it is read and sent again once the twin is gone, and reconciliation shows the pair.
                continue
            move_link(other, twin.survivor)  # e.g. a Cal.com booker joined to a patient's customer that goes
        for extra in twin.extras:
            try:
                done = stream.retire_twin(gateway, extra, twin.survivor)
            except StripeFailure as failure:  # the next run tries again; the duplicate is reported meanwhile
                log.warning("could not retire duplicate %s: %s", extra, failure.message)
                continue
            StripeIndexEntry.delete().where(
                (StripeIndexEntry.pair == pair)
                & (StripeIndexEntry.stripe_object == mapping.stripe_object)
                & (StripeIndexEntry.stripe_id == extra)
            ).execute()
            note(twin.source_id, name, extra, f"Duplicate made by another computer's sync at the same time: {done}")
    _remember_other_installation(pair)
    return len(twins)


def _chosen(stream: Stream, gateway: object, twin: Twin) -> Twin | None:
    """The stream's choice of which objects naming the record are twins, the one to keep first; None when there is
    nothing to do now (or Stripe could not be read: the next run looks again)."""
    assert stream.choose_twins is not None
    try:
        ids = stream.choose_twins(gateway, [twin.survivor, *twin.extras])
    except StripeFailure as failure:
        log.warning("could not read the duplicates of %s: %s", twin.source_id, failure.message)
        return None
    return Twin(twin.source_id, ids[0], ids[1:]) if len(ids) > 1 else None


def _others_linked(pair: AccountPair, stream: Stream, stripe_object: str, twins: list[str]) -> list[RecordLink]:
    """Records of other streams (this Stripe account's pairs) linked to the twins: they move with the record, or
    they would stay linked to an object that is deleted or retired, and never be sent again unless they change."""
    return list(
        RecordLink.select().where(
            RecordLink.pair.in_(same_account(pair))
            & (RecordLink.stream != stream.name)
            & (RecordLink.stripe_object == stripe_object)
            & RecordLink.stripe_id.in_(twins)
        )
    )


def survivor_taken(link: RecordLink, survivor: str) -> bool:
    """Whether the record's stream (in its pair) has a record on `survivor` already: two cannot share one object."""
    return (
        RecordLink.select()
        .where(
            (RecordLink.pair == link.pair_id) & (RecordLink.stream == link.stream) & (RecordLink.stripe_id == survivor)
        )
        .exists()
    )


def move_link(link: RecordLink, survivor: str, reason: str = MOVED_REASON) -> None:
    """Point the record at the object that stays; its data is sent to it again (it is read by id, as an unchanged
    record would not be read: the survivor may hold what another source or installation wrote), and the objects of
    other roles it owned on the one retired are forgotten (that one's, not the survivor's)."""
    with database_proxy.atomic():
        RecordLink.update(stripe_id=survivor, payload_hash=None, updated_at=utcnow()).where(
            RecordLink.id == link.id
        ).execute()
        RoleLink.delete().where(
            (RoleLink.pair == link.pair_id) & (RoleLink.stream == link.stream) & (RoleLink.source_id == link.source_id)
        ).execute()
        revisit_later(link.pair, link.stream, link.source_id, reason)


def _remember_other_installation(pair: AccountPair) -> None:
    AccountPair.update(other_installation_at=utcnow()).where(
        (AccountPair.id == pair.id) & AccountPair.other_installation_at.is_null()
    ).execute()


def another_installation_evident(pair: AccountPair, mapping: StreamMapping) -> bool:
    """Whether another installation syncs these accounts: twins were found before, or the index holds objects
    naming records of this stream, made since these accounts were first synced here, for records this installation
    has never met. This one made none of those: every record it writes for is remembered (its link stored) in the
    transaction that stores its first write, before anything is sent."""
    if AccountPair.get_by_id(pair.id).other_installation_at is not None:
        return True
    since = int(pair.created_at.replace(tzinfo=UTC).timestamp()) - RACE_MARGIN_S
    met = RecordLink.select(RecordLink.id).where(
        (RecordLink.pair == pair)
        & (RecordLink.stream == mapping.stream)
        & (RecordLink.source_id == StripeIndexEntry.source_ref)
    )
    return (
        StripeIndexEntry.select(StripeIndexEntry.id)
        .where(
            (StripeIndexEntry.pair == pair)
            & (StripeIndexEntry.stripe_object == mapping.stripe_object)
            & StripeIndexEntry.source_ref.is_null(False)
            & (StripeIndexEntry.created >= since)
            & ~fn.EXISTS(met)
        )
        .exists()
    )


def newly_detected(pair: AccountPair, since_started: object) -> bool:
    """Whether this run was the first to see another installation (the person is told once)."""
    fresh = AccountPair.get_by_id(pair.id)
    return fresh.other_installation_at is not None and fresh.other_installation_at >= since_started  # type: ignore[operator]


class Topup:
    """Throttled top-ups of the index while records are being created."""

    def __init__(self, refresh: Callable[[], None], clock: Callable[[], float] = time.monotonic) -> None:
        self._refresh = refresh
        self._clock = clock
        self._last = clock()
        self._interval = TOPUP_INTERVAL_S

    def before_create(self) -> bool:
        """Refresh if the last refresh is older than the interval (TOPUP_INTERVAL_S, or longer when a refresh
        costs more than TOPUP_TIME_SHARE of it); True if it refreshed. A twin a longer wait lets through is
        repaired by the next run."""
        now = self._clock()
        if now - self._last < self._interval:
            return False
        self._refresh()
        self._last = self._clock()
        self._interval = max(TOPUP_INTERVAL_S, (self._last - now) / TOPUP_TIME_SHARE)
        return True
