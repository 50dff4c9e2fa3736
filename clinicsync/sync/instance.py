"""One scheduler per profile, across processes: whoever runs it (`clinicsync serve` or the window) holds a lock
file next to the database, like the sync lock (clinicsync/sync/lock.py). The OS drops the lock when its process
dies, so a crashed service never blocks the next one. The SchedulerState row says who holds it and since when.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from datetime import datetime

from filelock import FileLock, Timeout

from clinicsync.paths import AppPaths
from clinicsync.store.models import SchedulerState, utcnow

SERVE, WINDOW = "serve", "window"


@dataclass(frozen=True)
class Holder:
    """Who runs this profile's scheduler, from the SchedulerState row (times naive UTC)."""

    kind: str  # serve, window
    pid: int
    host: str
    started_at: datetime
    heartbeat_at: datetime
    state: str  # idle, syncing, paused
    next_runs: dict[str, str]  # job id → naive UTC ISO time ("" while running or waiting for approval)


class SchedulerTaken(Exception):
    """Another process runs this profile's scheduler; the message says which and what to do."""

    def __init__(self, holder: Holder | None) -> None:
        self.holder = holder
        super().__init__(taken_message(holder))


def taken_message(holder: Holder | None) -> str:
    if holder is None:
        return "Another ClinicSync already runs the schedule for this profile."
    since = f"pid {holder.pid}, since {holder.started_at:%Y-%m-%d %H:%M} UTC"
    if holder.kind == WINDOW:
        return (
            f"ClinicSync's window is open for this profile and already syncs on schedule ({since}). Quit it from "
            "its tray icon first, or leave it running: it does what `clinicsync serve` would."
        )
    return f"`clinicsync serve` is already running for this profile ({since}); one is enough."


def lock_path(paths: AppPaths) -> str:
    return str(paths.data_dir / "scheduler.lock")


class SchedulerLock:
    """Held for as long as a process runs the profile's scheduler."""

    def __init__(self, paths: AppPaths) -> None:
        paths.data_dir.mkdir(parents=True, exist_ok=True)
        self._lock = FileLock(lock_path(paths), thread_local=False)

    @property
    def held(self) -> bool:
        return self._lock.is_locked

    def acquire(self, kind: str) -> None:
        """Take the lock (a short wait covers another process merely checking it) and say so in the database;
        raises SchedulerTaken if another process holds it."""
        try:
            self._lock.acquire(timeout=1.0)
        except Timeout:
            raise SchedulerTaken(current_holder()) from None
        now = utcnow()
        SchedulerState.insert(
            id=1,
            holder=kind,
            pid=os.getpid(),
            host=socket.gethostname(),
            started_at=now,
            heartbeat_at=now,
            state="idle",
            next_runs={},
        ).on_conflict_replace().execute()

    def release(self) -> None:
        if not self._lock.is_locked:
            return
        try:
            SchedulerState.update(state="stopped", heartbeat_at=utcnow()).where(
                (SchedulerState.id == 1) & (SchedulerState.pid == os.getpid())
            ).execute()
        finally:
            self._lock.release(force=True)


def scheduler_running(paths: AppPaths) -> bool:
    """True if some process holds this profile's scheduler lock (the lock, not the row, is the truth)."""
    probe = FileLock(lock_path(paths), thread_local=False)
    try:
        probe.acquire(timeout=0)
    except Timeout:
        return True
    probe.release(force=True)
    return False


def current_holder() -> Holder | None:
    """What the SchedulerState row says (it may describe a process that has stopped: check scheduler_running)."""
    row = SchedulerState.get_or_none(SchedulerState.id == 1)
    if row is None:
        return None
    return Holder(
        kind=row.holder,
        pid=row.pid,
        host=row.host,
        started_at=row.started_at,
        heartbeat_at=row.heartbeat_at,
        state=row.state,
        next_runs=dict(row.next_runs or {}),
    )
