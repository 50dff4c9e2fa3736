"""The sync scope as a filter: which records go to Stripe, and where a "since" scope lets reading start."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, date, datetime

from clinicsync.mapping.spec import SyncScope
from clinicsync.streams import CLINIKO_PATIENTS as STREAM
from clinicsync.sync.scope import ScopeFilter, parse_time


def test_since_starts_at_local_midnight_and_leaves_older_records_out() -> None:
    scope = ScopeFilter.for_run(SyncScope(kind="since", since=date(2026, 7, 1)), STREAM, None, "Australia/Melbourne")
    assert scope.since == datetime(2026, 6, 30, 14, 0, tzinfo=UTC), "midnight AEST is 14:00 UTC the day before"
    assert scope.admits({"id": "1", "updated_at": "2026-06-30T14:00:00Z"})
    assert not scope.admits({"id": "2", "updated_at": "2026-06-30T13:59:59Z"})
    assert scope.admits({"id": "3", "updated_at": None}), "no change time: kept rather than silently dropped"
    assert scope.left_out == {"2"}
    assert scope.first_cursor(None) == scope.since
    later = datetime(2026, 8, 1, tzinfo=UTC)
    assert scope.first_cursor(later) == later


def test_recent_activity_admits_exactly_the_ids_the_source_names() -> None:
    class Source:
        asked: tuple[date, str] | None = None

    source = Source()

    def active_ids(client: Source, since: date, zone: str) -> set[str]:
        client.asked = (since, zone)
        return {"7", "9"}

    stream = replace(STREAM, active_ids=active_ids)
    scope = ScopeFilter.for_run(SyncScope(kind="recent_activity", months=24), stream, source, "Australia/Sydney")
    assert source.asked is not None and source.asked[1] == "Australia/Sydney"
    assert [scope.admits({"id": i}) for i in ("7", "8", "9")] == [True, False, True]
    assert scope.left_out == {"8"} and scope.first_cursor(None) is None


def test_all_admits_everything() -> None:
    scope = ScopeFilter.for_run(SyncScope(kind="all"), STREAM, None, "Australia/Melbourne")
    assert scope.admits({"id": "1", "updated_at": "2001-01-01T00:00:00Z"}) and not scope.left_out


def test_a_change_time_that_is_not_text_is_no_time_rather_than_a_crash():
    assert parse_time({"evil": "object"}) is None and parse_time(True) is None and parse_time(12.5) is None
    assert parse_time("2024-01-02T03:04:05Z") is not None
