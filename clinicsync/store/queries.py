"""Read (and small write) queries the CLI and the screens share, so neither builds its own SQL."""

from __future__ import annotations

from typing import Any

from peewee import fn

from clinicsync.store.db import database_proxy
from clinicsync.store.models import (
    AccountPair,
    OutboxEntry,
    RecordLink,
    ReviewItem,
    StreamState,
    SyncEvent,
    SyncPlan,
    SyncRun,
    utcnow,
)

COUNT_FIELDS = ("created", "linked", "updated", "unchanged", "skipped", "failed", "review")


class ReviewError(ValueError):
    pass


def stream_status() -> list[dict[str, Any]]:
    rows = []
    for state in (
        StreamState.select(StreamState, AccountPair).join(AccountPair).order_by(AccountPair.last_used_at.desc())
    ):
        last = (
            SyncRun.select()
            .where((SyncRun.pair == state.pair) & (SyncRun.stream == state.stream) & (SyncRun.dry_run == False))  # noqa: E712
            .order_by(SyncRun.id.desc())
            .first()
        )
        rows.append(
            {
                "stream": state.stream,
                "pair": state.pair.label,
                # For the window: the pair's identity and mode, and the raw (naive UTC) run times.
                "pair_id": state.pair.id,
                "stripe_livemode": state.pair.stripe_livemode,
                "source_name": state.pair.source_name,
                "stripe_name": state.pair.stripe_name,
                "last_run_at": last.started_at if last else None,
                "last_finished_at": last.finished_at if last else None,
                "last_message": last.message if last else "",
                "cursor": state.cursor,
                "last_run": last.started_at.strftime("%Y-%m-%d %H:%M:%S UTC") if last else None,
                "last_outcome": last.outcome if last else None,
                "last_counts": {name: getattr(last, name) for name in COUNT_FIELDS} if last else {},
                "queued": OutboxEntry.select()
                .where(
                    (OutboxEntry.pair == state.pair)
                    & (OutboxEntry.stream == state.stream)
                    & (OutboxEntry.status == "pending")
                )
                .count(),
                "review": ReviewItem.select()
                .where(
                    (ReviewItem.pair == state.pair)
                    & (ReviewItem.stream == state.stream)
                    & (ReviewItem.status == "open")
                )
                .count(),
            }
        )
    return rows


def open_reviews(pair: AccountPair | None = None) -> list[ReviewItem]:
    query = ReviewItem.select().where(ReviewItem.status == "open")
    if pair is not None:
        query = query.where(ReviewItem.pair == pair)
    return list(query.order_by(ReviewItem.id))


def resolve_review(item_id: int, action: str, stripe_id: str | None = None) -> ReviewItem:
    """Record a person's decision; the next sync carries it out (link, create) or leaves the record alone."""
    item = ReviewItem.get_or_none(ReviewItem.id == item_id)
    if item is None or item.status != "open":
        raise ReviewError(f"There is no open review item #{item_id}; `clinicsync review list` shows them.")
    if action == "link":
        if not stripe_id:
            raise ReviewError("Say which Stripe object to link, e.g. `clinicsync review link 3 cus_ABC`.")
        taken = RecordLink.get_or_none(
            (RecordLink.pair == item.pair) & (RecordLink.stream == item.stream) & (RecordLink.stripe_id == stripe_id)
        )
        if taken is not None:
            raise ReviewError(
                f"{stripe_id} is already linked to {taken.display_name or taken.source_id}; each Stripe customer "
                "belongs to one record."
            )
    with database_proxy.atomic():
        item.status = "ignored" if action == "ignore" else "resolved"
        item.resolution = action
        item.resolution_stripe_id = stripe_id if action == "link" else None
        item.resolved_at = utcnow()
        item.save()
    return item


def run_events(run_id: int) -> list[SyncEvent]:
    return list(SyncEvent.select().where(SyncEvent.run == run_id).order_by(SyncEvent.id))


def recent_runs(limit: int = 50) -> list[SyncRun]:
    return list(SyncRun.select().order_by(SyncRun.id.desc()).limit(limit))


def event_counts(run_id: int) -> dict[str, int]:
    query = SyncEvent.select(SyncEvent.action, fn.COUNT(SyncEvent.id).alias("n")).where(SyncEvent.run == run_id)
    return {row.action: row.n for row in query.group_by(SyncEvent.action)}


class PlanError(ValueError):
    pass


def latest_plan(stream: str) -> SyncPlan | None:
    """The newest saved plan for a stream, on the account pair used most recently."""
    return (
        SyncPlan.select(SyncPlan, AccountPair)
        .join(AccountPair)
        .where(SyncPlan.stream == stream)
        .order_by(AccountPair.last_used_at.desc(), SyncPlan.id.desc())
        .first()
    )


def approve_latest_plan(stream: str) -> SyncPlan:
    plan = latest_plan(stream)
    if plan is None:
        raise PlanError(f"There is no plan for {stream} yet; run `clinicsync sync --once --dry-run` first.")
    if plan.approved_at is None:
        plan.approved_at = utcnow()
        plan.save()
    return plan
