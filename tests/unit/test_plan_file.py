"""A plan's file: entries stream back in the order of their source ids, a page at a time; a record decided
again keeps its place with its latest decision; a file is only readable once finished."""

from __future__ import annotations

from pathlib import Path

import pytest

from clinicsync.store import plan_file
from clinicsync.store.plan_file import IndexRow, PlanEntry, PlanFile


def entry(sid: str, action: str = "created", **detail: object) -> PlanEntry:
    return PlanEntry(sid, action, None, f"Patient {sid}", "", {"payload": {"name": f"Patient {sid}"}, **detail})


def test_entries_come_back_in_source_id_order_a_page_at_a_time_with_each_records_latest_decision(
    tmp_path: Path,
) -> None:
    path = plan_file.new_path(tmp_path / "clinicsync.sqlite3")
    kept = PlanFile(path, create=True)
    count = plan_file.PAGE * 2 + 7  # more than one page
    for number in range(count):
        kept.put(entry(str(number)))
    kept.put(entry("3", "review", reason="ambiguous_email", candidates=["cus_a", "cus_b"]))  # read again later
    kept.put_index([IndexRow("cus_a", "h1", None, "A", 1), IndexRow("cus_b", "h1", "3", "B", 2)])
    kept.set_meta(cursor="2026-12-04T10:00:00Z", index_high_water=2)
    kept.finish()

    read = PlanFile(path)
    try:
        entries = list(read.entries())
        # By source id, not as met: the approved sync then adds to the end of every index keyed by it.
        assert [e.source_id for e in entries] == sorted(str(n) for n in range(count))
        assert read.count() == count
        third = read.entry("3")
        assert third is not None and third.action == "review" and third.detail["candidates"] == ["cus_a", "cus_b"]
        assert entries[[e.source_id for e in entries].index("3")] == third
        assert read.entry("missing") is None
        assert [row.stripe_id for row in read.index_rows()] == ["cus_a", "cus_b"]
        assert read.meta() == {"cursor": "2026-12-04T10:00:00Z", "index_high_water": 2}
    finally:
        read.close()
    assert plan_file.plan_files(tmp_path) == [path]
    plan_file.remove(path)
    assert plan_file.plan_files(tmp_path) == []


def test_a_plan_file_that_is_not_there_is_said_so(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        PlanFile(tmp_path / "plan-gone.sqlite")


def test_which_streams_carry_out_an_approved_plan() -> None:
    """Patients and products carry out their plans; Cal.com's bookings do not: the run reads every booking for the
    paid bookings anyway (one listing shared per run), so carrying out would add a read (54 booking pages instead of
    21 in the 5,000-booking benchmark); streams that match for themselves are judged afresh."""
    from clinicsync.streams import STREAMS
    from clinicsync.sync.plans import carried_out_by_plan

    carried = {name for name, stream in STREAMS.items() if carried_out_by_plan(stream)}
    assert {"cliniko.patients", "cliniko.products"} <= carried
    assert not carried & {"calcom.bookings", "calcom.booking_payments", "cliniko.invoices"}
