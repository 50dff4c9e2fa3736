"""What stops a sync before its streams run, as the CLI's exit code and the window's message see it."""

from __future__ import annotations

import sqlite3

from clinicsync.profile_lock import SyncLocked
from clinicsync.retry import Cancelled
from clinicsync.sync.service import failure_of


def test_cancelling_while_connecting_is_a_cancellation_not_an_unexpected_problem() -> None:
    """Before: Cancel, Pause or Quit during a retry wait while connecting showed "ClinicSync hit a problem"."""
    assert failure_of(Cancelled()) == ("cancelled", "The sync was cancelled; nothing queued is lost.")


def test_other_kinds_keep_their_meaning() -> None:
    assert failure_of(SyncLocked())[0] == "locked"
    assert failure_of(sqlite3.OperationalError("database or disk is full"))[0] == "storage"
    assert failure_of(KeyError("a bug")) is None, "a bug keeps its traceback"
