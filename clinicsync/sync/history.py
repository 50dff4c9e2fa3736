"""History rows the engine does not write itself: runs that were asked for but not started (skipped, with the
reason), runs that failed before any stream began, and the folding of idle scheduled polls.

Every run is a row: a person reading the history sees each sync that wrote, failed or was skipped, and an idle
hour as one row ("60 checks, nothing changed") instead of sixty identical ones.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from typing import Any

from clinicsync.outcomes import ACTIONS, Action, Outcome
from clinicsync.store.db import database_proxy
from clinicsync.store.models import AccountPair, SyncEvent, SyncPlan, SyncRun, utcnow

log = logging.getLogger(__name__)

SCHEDULE = "schedule"  # the trigger of runs the scheduler asked for
WEBHOOK = "webhook"  # the trigger of runs a Cal.com webhook delivery asked for (clinicsync.sync.webhook)
FOLD_SPAN = timedelta(hours=1)  # one folded row covers at most an hour of idle checks
_QUIET_COUNTS = tuple(action for action in ACTIONS if action != Action.UNCHANGED)


def _current_pair_id(stream: str) -> int | None:
    """The account pair a row for this stream belongs to: that of its latest run, else the one used last."""
    last = SyncRun.select(SyncRun.pair).where(SyncRun.stream == stream).order_by(SyncRun.id.desc()).first()
    if last is not None and last.pair_id is not None:
        return int(last.pair_id)
    pair = AccountPair.select(AccountPair.id).order_by(AccountPair.last_used_at.desc()).first()
    return None if pair is None else int(pair.id)


def record_not_run(
    streams: Iterable[str], trigger: str, outcome: str, message: str, *, at: datetime | None = None
) -> list[int]:
    """One finished row per stream for a run that never reached the stream: skipped (paused, already running,
    waiting for approval) or failed before it began (a key refused while connecting). Returns the row ids."""
    at = at or utcnow()
    ids = []
    with database_proxy.atomic():
        for stream in streams:
            row = SyncRun.create(
                pair=_current_pair_id(stream),
                stream=stream,
                trigger=trigger,
                started_at=at,
                finished_at=at,
                outcome=outcome,
                message=message,
            )
            ids.append(row.id)
    return ids


def record_skipped(streams: Iterable[str], trigger: str, reason: str, *, at: datetime | None = None) -> list[int]:
    return record_not_run(streams, trigger, Outcome.SKIPPED, reason, at=at)


def is_quiet(run: SyncRun) -> bool:
    """A scheduled run that finished and changed nothing: nothing written, failed, skipped or waiting."""
    if run.trigger != SCHEDULE or run.dry_run or run.outcome != Outcome.OK or run.finished_at is None:
        return False
    if any(getattr(run, name) for name in _QUIET_COUNTS):
        return False
    if run.message and run.checks <= 1:  # a note from the run (write-back progress, another installation)
        return False
    return not SyncEvent.select().where(SyncEvent.run == run.id).exists()


def fold_message(checks: int) -> str:
    return f"{checks} checks, nothing changed"


def fold_quiet(run_id: int) -> int:
    """Fold a quiet scheduled run into the quiet row just before it (same stream and accounts), if that one
    started less than FOLD_SPAN ago. The newer row stays (it is the latest check: "last sync" reads it) and
    carries the count and the first check's start; the older one goes. Returns the id of the row that stays."""
    with database_proxy.atomic():
        run = SyncRun.get_or_none(SyncRun.id == run_id)
        if run is None or not is_quiet(run):
            return run_id
        previous = (
            SyncRun.select()
            .where((SyncRun.stream == run.stream) & (SyncRun.id < run.id) & (SyncRun.dry_run == False))  # noqa: E712
            .order_by(SyncRun.id.desc())
            .first()
        )
        if previous is None or previous.pair_id != run.pair_id or not is_quiet(previous):
            return run_id
        since = previous.checks_since or previous.started_at
        if run.finished_at - since > FOLD_SPAN:
            return run_id
        checks = previous.checks + run.checks
        SyncRun.update(
            checks=checks,
            checks_since=since,
            unchanged=max(previous.unchanged, run.unchanged),
            message=fold_message(checks),
        ).where(SyncRun.id == run.id).execute()
        previous.delete_instance()
    return run_id


def last_ran_at(stream: str) -> datetime | None:
    """When this stream last started a run that actually ran (any trigger; skipped ones did not run)."""
    row = SyncRun.select(SyncRun.started_at).where(_ran(stream)).order_by(SyncRun.id.desc()).first()
    return None if row is None else row.started_at


def _ran(stream: str) -> Any:
    """Runs of the stream that actually ran: not skipped, and not a person's dry run (a first live sync that
    only planned, waiting for approval, is a dry run the schedule made: it counts)."""
    really = (SyncRun.dry_run == False) | (SyncRun.outcome == Outcome.NEEDS_APPROVAL)  # noqa: E712
    return (SyncRun.stream == stream) & really & (SyncRun.outcome != Outcome.SKIPPED)


def awaiting_approval(streams: Sequence[str]) -> list[str]:
    """Streams whose last run planned a first live sync that no person has approved yet: syncing them again
    would only re-plan (reading everything), so the schedule waits for the approval instead."""
    waiting = []
    for stream in streams:
        last = SyncRun.select().where(_ran(stream)).order_by(SyncRun.id.desc()).first()
        if last is None or last.outcome != Outcome.NEEDS_APPROVAL:
            continue
        approved = SyncPlan.select().where(
            (SyncPlan.pair == last.pair_id) & (SyncPlan.stream == stream) & SyncPlan.approved_at.is_null(False)
        )
        if not approved.exists():
            waiting.append(stream)
    return waiting
