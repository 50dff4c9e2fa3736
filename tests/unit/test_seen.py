"""What a run keeps per record: the version of each it handled, packed into one int (sync/seen.py), and each
record's counted outcome, dropped when the run ends."""

from __future__ import annotations

import hashlib
import sys
from datetime import UTC, datetime, timedelta, timezone

from clinicsync.sync.seen import SeenVersions


def digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def test_the_handled_version_comes_back_exactly():
    seen = SeenVersions()
    moment = datetime(2026, 12, 4, 23, 59, 59, 123456, tzinfo=UTC)
    seen.add("1001", digest("a"), moment)
    handled = seen.handled("1001")
    assert handled is not None
    assert handled.changed == moment
    assert handled.same_payload(digest("a"))
    assert not handled.same_payload(digest("b"))


def test_a_change_time_in_another_zone_or_long_ago_and_none_survive():
    seen = SeenVersions()
    far_east = datetime(2026, 1, 1, 9, 30, tzinfo=timezone(timedelta(hours=10)))
    long_ago = datetime(1, 1, 1, tzinfo=UTC)
    seen.add("east", digest("x"), far_east)
    seen.add("old", digest("y"), long_ago)
    seen.add("none", digest("z"), None)
    assert seen.handled("east").changed == far_east
    assert seen.handled("old").changed == long_ago
    assert seen.handled("none").changed is None
    assert seen.handled("none").same_payload(digest("z"))


def test_a_later_version_replaces_the_earlier_and_unknown_records_are_not_seen():
    seen = SeenVersions()
    seen.add("7", digest("v1"), datetime(2026, 1, 1, tzinfo=UTC))
    seen.add("7", digest("v2"), datetime(2026, 1, 2, tzinfo=UTC))
    assert len(seen) == 1 and "7" in seen and "8" not in seen
    assert seen.handled("8") is None
    assert seen.handled("7").same_payload(digest("v2"))
    assert seen.handled("7").changed == datetime(2026, 1, 2, tzinfo=UTC)


def test_an_entry_is_one_small_int_not_a_tuple_of_text_and_datetime():
    seen = SeenVersions()
    seen.add("1", digest("p"), datetime(2026, 6, 1, tzinfo=UTC))
    value = seen._by_id["1"]
    assert isinstance(value, int)
    # The tuple it replaced: the hash's 64 hex characters and a datetime, some 220 bytes.
    assert sys.getsizeof(value) <= 48


def test_a_finished_run_forgets_each_records_outcome_but_keeps_the_counts():
    """A run refers to itself, so it lingers until the cycle collector runs: what it kept per record is dropped
    when it ends (a 20,000-patient plan's was still held during the approved sync after it)."""
    from clinicsync.sync.engine import RunRecorder

    recorder = RunRecorder(None, dry_run=True)  # type: ignore[arg-type]  # a dry run stores no history
    recorder.record("created", "1", "Ann", "cus_1")
    recorder.record("created", "1", "Ann", "cus_1")  # the same record again counts once
    recorder.record("updated", "2", "Bob", "cus_2")
    assert recorder.counts["created"] == 1 and recorder.counts["updated"] == 1
    recorder.forget_records()
    assert recorder._by_record == {}
    assert recorder.counts["created"] == 1 and recorder.counts["updated"] == 1
