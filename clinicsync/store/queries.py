"""Read (and small write) queries the CLI and the screens share, so neither builds its own SQL."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, NamedTuple

from peewee import fn

from clinicsync.outcomes import ACTIONS
from clinicsync.paths import AppPaths
from clinicsync.store.db import database_proxy
from clinicsync.store.models import (
    AccountPair,
    OutboxEntry,
    RecordLink,
    RetryRecord,
    ReviewItem,
    StreamState,
    SyncEvent,
    SyncPlan,
    SyncRun,
    utcnow,
)

COUNT_FIELDS = ACTIONS

# A run's outcome in plain words (the CLI's history and the window's Sync history both use these).
OUTCOME_WORDS = {
    "ok": "OK",
    "attention": "Needs attention",
    "failed": "Failed",
    "cancelled": "Cancelled",
    "running": "Running",
    "interrupted": "Interrupted",
    "needs_approval": "Waiting for approval",
}
INTERRUPTED_MESSAGE = (
    "ClinicSync stopped before it finished (it was closed or killed, or the computer shut down). Nothing queued is "
    "lost: the next sync carries on where this one stopped."
)


class ReviewError(ValueError):
    pass


def last_good_sync_at() -> datetime | None:
    """When the latest sync that finished well (nothing failed: ok, or waiting only for a person) ended, naive
    UTC; None when none has. Dry runs and full comparisons are not syncs."""
    row = (
        SyncRun.select(SyncRun.finished_at)
        .where(
            SyncRun.outcome.in_(("ok", "attention"))
            & (SyncRun.dry_run == False)  # noqa: E712
            & SyncRun.finished_at.is_null(False)
            & (SyncRun.stream != "reconcile")
        )
        .order_by(SyncRun.finished_at.desc())
        .first()
    )
    return None if row is None else row.finished_at


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


def close_interrupted_runs() -> int:
    """Close every run still marked running as "interrupted"; returns how many. Call only while holding the
    profile lock: then no sync is running, so a run still marked running is one whose process died.

    Its counts come from its own history rows, one per record (the last thing that happened to it), so they never
    exceed the records it read: a record replayed from the outbox and then read again counts once. Records that
    were unchanged leave no row and are not counted."""
    closed = 0
    for run in SyncRun.select().where(SyncRun.outcome == "running"):
        last_action: dict[str, str] = {}
        last_at = run.started_at
        for source_id, action, created_at in (
            SyncEvent.select(SyncEvent.source_id, SyncEvent.action, SyncEvent.created_at)
            .where(SyncEvent.run == run.id)
            .order_by(SyncEvent.id)
            .tuples()
        ):
            last_at = max(last_at, created_at)
            if action in COUNT_FIELDS:  # "note" rows are remarks, not outcomes
                last_action[source_id] = action
        counts = dict.fromkeys(COUNT_FIELDS, 0)
        for action in last_action.values():
            counts[action] += 1
        closed += (
            SyncRun.update(outcome="interrupted", message=INTERRUPTED_MESSAGE, finished_at=last_at, **counts)
            .where((SyncRun.id == run.id) & (SyncRun.outcome == "running"))
            .execute()
        )
    return closed


def close_interrupted_runs_if_idle(paths: AppPaths) -> int:
    """close_interrupted_runs() if no sync holds the profile lock now (for `status`, `doctor` and the like)."""
    from clinicsync.profile_lock import ProfileLock, SyncLocked

    if not SyncRun.select().where(SyncRun.outcome == "running").exists():
        return 0  # the common case: no lock file touched
    try:
        with ProfileLock(paths.lock_file):
            return close_interrupted_runs()
    except SyncLocked:
        return 0


def open_reviews(pair: AccountPair | None = None) -> list[ReviewItem]:
    query = ReviewItem.select().where(ReviewItem.status == "open")
    if pair is not None:
        query = query.where(ReviewItem.pair == pair)
    return list(query.order_by(ReviewItem.id))


def open_reviews_page(after_id: int | None = None, limit: int = 200) -> list[ReviewItem]:
    """One page of open items, oldest first, for a table that loads as it scrolls (a big first sync can leave
    tens of thousands waiting)."""
    query = ReviewItem.select().where(ReviewItem.status == "open")
    if after_id is not None:
        query = query.where(ReviewItem.id > after_id)
    return list(query.order_by(ReviewItem.id).limit(limit))


def decided_reviews() -> list[ReviewItem]:
    """Decisions a person has made (link, create) that the next sync carries out."""
    return list(ReviewItem.select().where(ReviewItem.status == "resolved").order_by(ReviewItem.id))


def decision_results(item_ids: list[int]) -> list[tuple[ReviewItem, str | None]]:
    """These review items as they are now, each with the Stripe id its record is linked to (None: not linked):
    what a screen needs to say whether a sync carried a decision out."""
    results = []
    for item in ReviewItem.select().where(ReviewItem.id.in_(item_ids)).order_by(ReviewItem.id):
        link = RecordLink.get_or_none(
            (RecordLink.pair == item.pair_id)
            & (RecordLink.stream == item.stream)
            & (RecordLink.source_id == item.source_id)
        )
        results.append((item, link.stripe_id if link is not None else None))
    return results


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
        chosen = ReviewItem.get_or_none(
            (ReviewItem.pair == item.pair)
            & (ReviewItem.stream == item.stream)
            & (ReviewItem.status == "resolved")
            & (ReviewItem.resolution_stripe_id == stripe_id)
        )
        if chosen is not None:
            raise ReviewError(
                f"{stripe_id} is already chosen for {chosen.display_name or chosen.source_id} (review item "
                f"#{chosen.id}); each Stripe customer belongs to one record."
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


def streams_with_plans() -> list[str]:
    """Streams with a saved plan on the account pair used most recently, oldest plan first."""
    pair = AccountPair.select().order_by(AccountPair.last_used_at.desc()).first()
    if pair is None:
        return []
    rows = SyncPlan.select(SyncPlan.stream).where(SyncPlan.pair == pair).order_by(SyncPlan.id)
    return list(dict.fromkeys(row.stream for row in rows))


def approve_latest_plan(stream: str) -> SyncPlan:
    plan = latest_plan(stream)
    if plan is None:
        raise PlanError(f"There is no plan for {stream} yet; run `clinicsync sync --once --dry-run` first.")
    if plan.approved_at is None:
        plan.approved_at = utcnow()
        plan.save()
    return plan


# --- Sync history screen ------------------------------------------------------------------------------
# Rows are plain named tuples, not peewee objects: the GUI keeps up to 100,000 of them and must never trigger a
# lazy query by touching an attribute. Tuples of plain values (str, int, datetime, None) drop out of the garbage
# collector's care once they survive a collection, so holding 100,000 of them costs no full collection passes
# while a table scrolls (as dataclass instances they made each pass 50-100 ms longer, and triggered more of them).

PINNED_ACTIONS = ("failed", "review")  # shown above every other row of a run, in this order
HISTORY_PAGE_SIZE = 200
NO_SOURCE_ID = "?"  # what the engine records when a record failed before its id could be read


class RunRow(NamedTuple):
    id: int
    stream: str
    trigger: str
    dry_run: bool
    started_at: datetime
    finished_at: datetime | None
    outcome: str
    created: int
    linked: int
    updated: int
    unchanged: int
    skipped: int
    failed: int
    review: int
    message: str
    pair_id: int | None
    waiting: int = 0  # last: rows built before the counter existed (and their tests) keep their positions


class EventRow(NamedTuple):
    id: int
    run_id: int
    stream: str
    source_id: str
    display_name: str
    stripe_id: str | None
    action: str
    message: str
    created_at: datetime


@dataclass(frozen=True, slots=True)
class EventCursor:
    """Where the next page of a run's history starts: the segment (failed, review, the rest) and the id below
    which to continue, newest first. Keyset paging: page 500 costs the same as page 1."""

    segment: int = 0
    before_id: int | None = None


@dataclass(frozen=True, slots=True)
class EventQuery:
    run_id: int | None  # None: every run (only sensible with a search)
    search: str = ""


def _run_row(run: SyncRun) -> RunRow:
    return RunRow(
        id=run.id,
        stream=run.stream,
        trigger=run.trigger,
        dry_run=run.dry_run,
        started_at=run.started_at,
        finished_at=run.finished_at,
        outcome=run.outcome,
        created=run.created,
        linked=run.linked,
        updated=run.updated,
        unchanged=run.unchanged,
        skipped=run.skipped,
        failed=run.failed,
        review=run.review,
        message=run.message,
        pair_id=run.pair_id,
        waiting=run.waiting,
    )


def history_runs(
    *, before_id: int | None = None, after_id: int | None = None, limit: int = HISTORY_PAGE_SIZE
) -> list[RunRow]:
    """Runs newest first (primary-key order). `before_id` pages back; `after_id` fetches only newer runs."""
    query = SyncRun.select()
    if before_id is not None:
        query = query.where(SyncRun.id < before_id)
    if after_id is not None:
        query = query.where(SyncRun.id > after_id)
    return [_run_row(run) for run in query.order_by(SyncRun.id.desc()).limit(limit)]


def real_runs_exist() -> bool:
    """Whether any sync other than a dry run has started (whatever became of it)."""
    return SyncRun.select().where(SyncRun.dry_run == False).exists()  # noqa: E712 - peewee builds SQL from ==


def history_run(run_id: int) -> RunRow | None:
    run = SyncRun.get_or_none(SyncRun.id == run_id)
    return None if run is None else _run_row(run)


def _run_id_range(run_id: int) -> tuple[int, int] | None:
    """The first and last event id of a run. One sync runs per profile at a time, so a run's events are one
    contiguous id range; scanning that slice of the table is far cheaper than an index lookup per row when
    most rows of the run are not wanted (its few failures among 100,000 events)."""
    first = SyncEvent.select(SyncEvent.id).where(SyncEvent.run == run_id).order_by(SyncEvent.id).limit(1).scalar()
    if first is None:
        return None
    last = SyncEvent.select(SyncEvent.id).where(SyncEvent.run == run_id).order_by(SyncEvent.id.desc()).limit(1)
    return first, last.scalar()


def _search_terms(search: str) -> tuple[str, list[str], list[str]]:
    """(LIKE pattern, source ids, Stripe ids) for a search. Emails are not stored, only keyed hashes of them, so a
    full address is found by hashing it per account pair and looking the hash up."""
    text = search.strip()
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    source_ids: list[str] = []
    stripe_ids: list[str] = []
    if "@" in text:
        from clinicsync.matchkey import match_hash  # the engine's own hash, so the two always agree
        from clinicsync.store.models import StripeIndexEntry

        for pair in AccountPair.select():
            hashed = match_hash(pair.uuid, text)
            source_ids += [
                row.source_id
                for row in RecordLink.select(RecordLink.source_id).where(
                    (RecordLink.pair == pair) & (RecordLink.email_hash == hashed)
                )
            ]
            stripe_ids += [
                row.stripe_id
                for row in StripeIndexEntry.select(StripeIndexEntry.stripe_id).where(
                    (StripeIndexEntry.pair == pair) & (StripeIndexEntry.email_hash == hashed)
                )
            ]
    return f"%{escaped}%", source_ids, stripe_ids


_SEGMENTS: tuple[str, ...] = ("action = 'failed'", "action = 'review'", "action NOT IN ('failed', 'review')")


def history_events(
    query: EventQuery, cursor: EventCursor | None = None, limit: int = HISTORY_PAGE_SIZE
) -> tuple[list[EventRow], EventCursor | None]:
    """One page of history rows: failed first, then review, then the rest, each newest first. Returns the rows and
    the cursor of the next page (None when there is no more)."""
    cursor = cursor or EventCursor()
    scope_sql, scope_args, rest_sql, rest_args = _event_scope(query)
    if scope_sql is None:
        return [], None
    match_sql, match_args = _event_match(query.search)
    empty = _empty_segments(query.run_id)
    rows: list[EventRow] = []
    segment, before = cursor.segment, cursor.before_id
    while segment < len(_SEGMENTS) and len(rows) < limit:
        if segment in empty:
            segment, before = segment + 1, None
            continue
        # Unfiltered "rest" rows come straight off the run_id index; everything else scans the run's id range.
        use_index = segment == len(_SEGMENTS) - 1 and not match_sql
        where = [rest_sql if use_index else scope_sql, _SEGMENTS[segment]]
        args = list(rest_args if use_index else scope_args)
        if match_sql:
            where.append(match_sql)
            args += match_args
        if before is not None:
            where.append("id < ?")
            args.append(before)
        sql = (
            "SELECT id, run_id, stream, source_id, display_name, stripe_id, action, message, created_at "
            f"FROM sync_event WHERE {' AND '.join(where)} ORDER BY id DESC LIMIT ?"
        )
        found = [_event_row(values) for values in database_proxy.execute_sql(sql, [*args, limit - len(rows)])]
        rows += found
        if len(rows) >= limit and found:
            return rows, EventCursor(segment, found[-1].id)
        segment, before = segment + 1, None
    return rows, None


def _empty_segments(run_id: int | None) -> set[int]:
    """Pinned segments a finished run's counts say are empty: each failed or review record wrote one row, so
    there is nothing to scan for (most runs have no failures)."""
    if run_id is None:
        return set()
    run = SyncRun.select(SyncRun.finished_at, SyncRun.failed, SyncRun.review).where(SyncRun.id == run_id).first()
    if run is None or run.finished_at is None:
        return set()
    return {segment for segment, count in enumerate((run.failed, run.review)) if count == 0}


def _event_scope(query: EventQuery) -> tuple[str | None, list[Any], str, list[Any]]:
    """SQL restricting rows to the run: (range scan form, its args, index form, its args); None if it has none."""
    if query.run_id is None:
        return "1", [], "1", []
    bounds = _run_id_range(query.run_id)
    if bounds is None:
        return None, [], "", []
    # "+run_id" keeps SQLite from choosing the run_id index here, so it walks the primary-key range instead.
    return "id BETWEEN ? AND ? AND +run_id = ?", [*bounds, query.run_id], "run_id = ?", [query.run_id]


def _event_match(search: str) -> tuple[str, list[Any]]:
    if not search.strip():
        return "", []
    pattern, source_ids, stripe_ids = _search_terms(search)
    clauses = ["display_name LIKE ? ESCAPE '\\'", "source_id LIKE ? ESCAPE '\\'", "stripe_id LIKE ? ESCAPE '\\'"]
    args: list[Any] = [pattern, pattern, pattern]
    if source_ids:
        clauses.append(f"source_id IN ({', '.join('?' * len(source_ids))})")
        args += source_ids
    if stripe_ids:
        clauses.append(f"stripe_id IN ({', '.join('?' * len(stripe_ids))})")
        args += stripe_ids
    return f"({' OR '.join(clauses)})", args


def _event_row(values: tuple[Any, ...]) -> EventRow:
    event_id, run_id, stream, source_id, name, stripe_id, action, message, created_at = values
    return EventRow(
        id=event_id,
        run_id=run_id,
        stream=stream,
        source_id=source_id,
        display_name=name,
        stripe_id=stripe_id,
        action=action,
        message=message,
        created_at=SyncEvent.created_at.python_value(created_at),
    )


def failed_events(run_id: int) -> list[EventRow]:
    """A run's failed records, oldest first, with their reasons."""
    query = SyncEvent.select().where((SyncEvent.run == run_id) & (SyncEvent.action == "failed")).order_by(SyncEvent.id)
    return [
        EventRow(e.id, run_id, e.stream, e.source_id, e.display_name, e.stripe_id, e.action, e.message, e.created_at)
        for e in query
    ]


def history_event_count(run_id: int) -> int:
    """How many history rows a run has (answered from the run_id index alone)."""
    return SyncEvent.select().where(SyncEvent.run == run_id).count()


def failed_source_ids(run_id: int) -> list[str]:
    """The distinct source ids that failed in a run, oldest failure first."""
    bounds = _run_id_range(run_id)
    if bounds is None:
        return []
    cursor = database_proxy.execute_sql(
        "SELECT source_id FROM sync_event WHERE id BETWEEN ? AND ? AND +run_id = ? AND action = 'failed' ORDER BY id",
        [*bounds, run_id],
    )
    return [sid for sid in dict.fromkeys(row[0] for row in cursor) if sid and sid != NO_SOURCE_ID]


def queue_retry_of_failed(run_id: int, reason: str = "retry requested from the sync history") -> int:
    """Ask the next sync to read this run's failed records again by id. Returns how many records were queued
    (already-queued ones count too: the request is idempotent)."""
    run = SyncRun.get_or_none(SyncRun.id == run_id)
    if run is None or run.pair_id is None:
        return 0
    ids = failed_source_ids(run_id)
    rows = [{"pair": run.pair_id, "stream": run.stream, "source_id": sid, "reason": reason} for sid in ids]
    with database_proxy.atomic():
        for start in range(0, len(rows), 200):
            RetryRecord.insert_many(rows[start : start + 200]).on_conflict_ignore().execute()
    return len(ids)
