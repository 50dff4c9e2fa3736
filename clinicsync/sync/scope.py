"""Which source records a run sends to Stripe at all (data minimisation), from the mapping's sync scope:
every record; those changed since a date (local midnight in the clinic's zone); or those with an invoice or
appointment in the last N months."""

from __future__ import annotations

import calendar
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time
from typing import Any
from zoneinfo import ZoneInfo

from clinicsync.mapping.spec import SyncScope
from clinicsync.streams.base import Record, Stream, StreamNotReady


@dataclass
class ScopeFilter:
    active: set[str] | None = None  # "recent_activity": the source ids in scope this run
    since: datetime | None = None  # "since": records changed on or after this moment (UTC)
    changed_at: Callable[[Record], str | None] = lambda record: None
    left_out: set[str] = field(default_factory=set)  # ids, as the archived pass reads live records a second time

    @classmethod
    def for_run(cls, scope: SyncScope, stream: Stream, source: Any, time_zone: str) -> ScopeFilter:
        """Work out the scope for this run; "recent activity" asks the source which records had any."""
        if scope.kind == "since" and scope.since is not None:
            local_midnight = datetime.combine(scope.since, time(), tzinfo=ZoneInfo(time_zone))
            return cls(since=local_midnight.astimezone(UTC), changed_at=stream.changed_at)
        if scope.kind == "recent_activity":
            if stream.active_ids is None:
                raise StreamNotReady(f"{stream.name} cannot be limited to records with recent activity.")
            today = datetime.now(ZoneInfo(time_zone)).date()
            return cls(active=stream.active_ids(source, months_before(today, scope.months), time_zone))
        return cls()

    def admits(self, record: Record) -> bool:
        """Whether the record goes to Stripe; one that does not is remembered (the plan says how many)."""
        if self.active is not None:
            admitted = str(record.get("id") or "") in self.active
        elif self.since is not None:
            changed = parse_time(self.changed_at(record))
            admitted = changed is None or changed >= self.since
        else:
            admitted = True
        if not admitted:
            self.left_out.add(str(record.get("id") or ""))
        return admitted

    def first_cursor(self, cursor: datetime | None) -> datetime | None:
        """With "since", nothing changed before that moment needs reading at all."""
        if self.since is None:
            return cursor
        return max(cursor or self.since, self.since)


def months_before(day: date, months: int) -> date:
    """The same day `months` earlier, clamped to the month's end (31 May minus 3 months is 28/29 February)."""
    year, month0 = divmod(day.year * 12 + day.month - 1 - months, 12)
    return date(year, month0 + 1, min(day.day, calendar.monthrange(year, month0 + 1)[1]))


def parse_time(value: object) -> datetime | None:
    if not isinstance(value, str) or not value:  # a source may send anything; what is not a time is not one
        return None
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
