"""Time for the scheduler, the service and alerts, behind one small seam so tests move it instead of waiting.

APScheduler 3 reads `datetime.now()` itself and waits on its own event (there is no clock option:
agronholm/apscheduler#293), so the scheduler here keeps APScheduler's jobs and triggers and owns the "now" and
the waiting. Everything that asks "what time is it" in clinicsync/sync/scheduler.py, alerts.py and the service
asks a Clock.

Two readings, because sleep shows as their difference: the wall clock (`now`) jumps over a suspend, while the
monotonic clock stops during it on Linux and macOS. A gap between them is how a sleeping laptop is noticed
without Qt or the OS's power events.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Protocol


class Clock(Protocol):
    def now(self) -> datetime:
        """The wall-clock time, aware, in UTC."""
        ...

    def monotonic(self) -> float:
        """Seconds on a clock that never goes back (and, on most systems, stops while the machine sleeps)."""
        ...

    def wait(self, event: threading.Event, seconds: float) -> bool:
        """Wait until `event` is set or `seconds` have passed; True if it was set."""
        ...


def naive_utc(moment: datetime) -> datetime:
    """The store keeps naive UTC times."""
    return moment.astimezone(UTC).replace(tzinfo=None)


def aware_utc(moment: datetime) -> datetime:
    """A stored (naive UTC) time as an aware one."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


class SystemClock:
    """The real clock."""

    def now(self) -> datetime:
        return datetime.now(UTC)

    def monotonic(self) -> float:
        return time.monotonic()

    def wait(self, event: threading.Event, seconds: float) -> bool:
        return event.wait(max(0.0, seconds))


class ManualClock:
    """A clock that moves only when told: `advance` (time passes while the machine is awake), `sleep_for` (the
    machine is suspended: the wall clock jumps, the monotonic clock does not) or `set` (someone changes the
    time). `wait` never blocks; the caller's loop is driven step by step instead."""

    def __init__(self, start: datetime | None = None) -> None:
        self._now = aware_utc(start) if start is not None else datetime.now(UTC).replace(microsecond=0)
        self._monotonic = 1000.0
        self._lock = threading.Lock()

    def now(self) -> datetime:
        with self._lock:
            return self._now

    def monotonic(self) -> float:
        with self._lock:
            return self._monotonic

    def wait(self, event: threading.Event, seconds: float) -> bool:
        return event.is_set()

    def advance(self, seconds: float) -> datetime:
        with self._lock:
            self._now += timedelta(seconds=seconds)
            self._monotonic += seconds
            return self._now

    def sleep_for(self, seconds: float) -> datetime:
        """A suspend of `seconds`: the wall clock moves on, the monotonic clock stands still."""
        with self._lock:
            self._now += timedelta(seconds=seconds)
            return self._now

    def set(self, moment: datetime) -> None:
        """Someone changes the computer's clock: the wall clock jumps, the monotonic clock does not follow."""
        with self._lock:
            self._now = aware_utc(moment)


class FileClock:
    """Simulated time for a `clinicsync serve` in another process, moved by a test through a small JSON file:
    `{"start": ISO time, "awake": seconds, "asleep": seconds, "seq": n}`. Only `serve` against the sandbox uses
    it (clinicsync/cli_serve.py); every other run has the SystemClock.

    Time moves only while the service's loop waits, by at most what each wait asked for, and only once a whole
    tick went by with nothing running or waiting to be reported (`watch`), as the in-process tests do with a
    ManualClock and `wait_idle`: so the loop sees every step a real one would, a run never straddles a step, and
    a finished run is re-armed at the moment it ended. `awake` is how far the test lets it go; `asleep` moves the
    wall clock alone (a suspend). Caught up and settled, the clock writes `{"seq", "awake", "asleep"}` to
    `<file>.reached`: everything due up to then has run and been recorded.
    """

    POLL_S = 0.05  # while caught up or busy: how often the file (and the service's requests) are looked at

    def __init__(self, path: Path) -> None:
        self._path = Path(path)
        self._reached = self._path.with_name(self._path.name + ".reached")
        self._lock = threading.Lock()
        data = json.loads(self._path.read_text(encoding="utf-8"))
        self._start = aware_utc(datetime.fromisoformat(data["start"]))
        self._target = (float(data.get("awake", 0)), float(data.get("asleep", 0)), int(data.get("seq", 0)))
        self._passed = 0.0
        self._busy: Callable[[], bool] = lambda: False
        self._quiet = False  # the previous wait found nothing running
        self._reported: tuple[float, float, int] | None = None

    def watch(self, busy: Callable[[], bool]) -> None:
        """Hold time still while `busy()` (a run in flight, or its report not yet taken in)."""
        self._busy = busy

    def now(self) -> datetime:
        with self._lock:
            return self._start + timedelta(seconds=self._passed + self._target[1])

    def monotonic(self) -> float:
        with self._lock:
            return 1000.0 + self._passed

    def wait(self, event: threading.Event, seconds: float) -> bool:
        if event.is_set():
            return True
        self._read()
        busy = self._busy()
        settled, self._quiet = self._quiet and not busy, not busy  # a whole tick ran with nothing in flight
        with self._lock:
            awake, asleep, seq = self._target
            step = min(max(0.0, seconds), max(0.0, awake - self._passed)) if settled else 0.0
            self._passed += step
            reached = (self._passed, asleep, seq) if settled and not step and self._passed >= awake else None
        if reached is not None:
            self._report(reached)
        if step:
            return event.is_set()
        return event.wait(min(max(0.0, seconds), self.POLL_S))

    def _read(self) -> None:
        try:
            data = json.loads(self._path.read_text(encoding="utf-8"))
            target = (float(data.get("awake", 0)), float(data.get("asleep", 0)), int(data.get("seq", 0)))
        except (OSError, ValueError, TypeError):
            return  # being replaced this instant: the next wait reads it
        with self._lock:
            self._target = target

    def _report(self, reached: tuple[float, float, int]) -> None:
        if reached == self._reported:
            return
        partial = self._reached.with_name(self._reached.name + ".part")
        awake, asleep, seq = reached
        partial.write_text(json.dumps({"seq": seq, "awake": awake, "asleep": asleep}), encoding="utf-8")
        os.replace(partial, self._reached)
        self._reported = reached


class WakeDetector:
    """Notices that the machine slept between two checks: the wall clock moved further than the monotonic one
    (which stops during a suspend on Linux and macOS). `check` returns how long the machine was away, else None.

    Where the monotonic clock counts through a suspend (some Windows machines), the loop that waits between
    checks sees instead that one wait lasted far longer than it asked for: see `overslept`.
    """

    def __init__(self, clock: Clock, *, threshold_s: float = 30.0) -> None:
        self._clock = clock
        self._threshold = threshold_s
        self._last_wall = clock.now()
        self._last_mono = clock.monotonic()
        self.went_back_s = 0.0  # set by `check` when the wall clock was turned back (by a person, or NTP)

    def check(self) -> float | None:
        wall, mono = self._clock.now(), self._clock.monotonic()
        wall_gap = (wall - self._last_wall).total_seconds()
        skew = wall_gap - (mono - self._last_mono)  # time the wall clock saw pass that this process did not
        self._last_wall, self._last_mono = wall, mono
        self.went_back_s = -skew if skew < -self._threshold else 0.0
        return wall_gap if skew > self._threshold else None

    def overslept(self, asked_s: float, waited_s: float) -> float | None:
        """How long the machine was away, if a wait of `asked_s` took `waited_s` (else None)."""
        return waited_s if waited_s > asked_s + self._threshold else None
