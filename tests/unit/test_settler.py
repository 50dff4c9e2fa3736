"""The settler's hold on a record lasts until its finished write is recorded (committed), not just taken."""

from __future__ import annotations

import pytest

from clinicsync.sync.outbox import Settler


def test_a_record_stays_held_while_its_write_is_being_recorded() -> None:
    settler = Settler(batch=1)
    settler.add("r1", lambda: None)
    with settler.flushing() as items:
        assert [source_id for source_id, _ in items] == ["r1"]
        # A record read again now must wait for this recording, not find its outbox row still pending.
        assert settler.holds("r1")
    assert not settler.holds("r1")


def test_a_recording_that_fails_lets_go_of_its_records() -> None:
    settler = Settler(batch=1)
    settler.add("r2", lambda: None)
    settler.add("r3", lambda: None)
    with pytest.raises(RuntimeError), settler.flushing():
        raise RuntimeError("disk full")
    assert not settler.holds("r2") and not settler.holds("r3")
