"""The window's side of background syncing: it runs the profile's schedule itself, or attaches to the
`clinicsync serve` that runs it.

One scheduler per profile (clinicsync.sync.instance.SchedulerLock). At start the window takes the lock and hosts a
SchedulerHost, ticked from a QTimer on the GUI thread (where keys may be read); the host's runner is the app's
runner, reporting through the app's bridge, so every screen follows scheduled runs as it follows a Sync now. When
the service holds the lock instead, the window attaches: no second scheduler; its Sync now, Cancel and Pause
become requests the service carries out (clinicsync.sync.attach), and what it shows comes from the database.

`next_run_text` and `schedule_words` are the words, pure functions the tests check state by state.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import UTC, datetime

from PySide6.QtCore import QObject, QTimer, Signal

from clinicsync import labels
from clinicsync.app import AppContext
from clinicsync.secrets import SYNC_SECRETS, missing_for_sync
from clinicsync.sync import attach
from clinicsync.sync.clock import Clock, SystemClock, aware_utc
from clinicsync.sync.host import SchedulerHost
from clinicsync.sync.instance import SERVE, WINDOW, Holder, SchedulerLock, SchedulerTaken
from clinicsync.sync.runner import SyncRunner, read_credentials
from clinicsync.sync.scheduler import ScheduleConfig
from clinicsync.sync.service import connected_sources
from clinicsync.ui.bridge import BridgeListener, RunnerBridge

log = logging.getLogger(__name__)

HOSTING, ATTACHED, MANUAL = "hosting", "attached", "manual"
ATTACHED_POLL_MS = 1000  # how often an attached window reads the service's state and its answers
KEYS_RECHECK_S = 30.0  # without keys the schedule waits; they are looked for again this often
SENT_MESSAGE = "Asked the background service to sync now."
SERVICE_GONE = "The background service has stopped; Sync now syncs from this window."


class WindowSchedule(QObject):
    """Hosts the schedule (HOSTING), attaches to the service's (ATTACHED), or neither (MANUAL: syncs only on a
    click; what tests and screenshots build unless they ask for a schedule)."""

    changed = Signal()  # the mode, the service's state, or an answer to a request changed
    # Attached: the service finished a sync (one this window asked for, or its own): screens that list what syncs
    # did (history, review) re-read the database, as they do when this window's own runner finishes a job.
    service_finished = Signal()
    # The service stopped and this window took the schedule over: its runner is now the app's runner.
    runner_changed = Signal(object)  # SyncRunner

    def __init__(
        self,
        app: AppContext,
        bridge: RunnerBridge,
        *,
        host: bool,
        clock: Clock | None = None,
        parent: QObject | None = None,
    ) -> None:
        super().__init__(parent)
        self.app = app
        self.bridge = bridge
        self.clock = clock or SystemClock()
        self.mode = MANUAL
        self.host: SchedulerHost | None = None
        self.holder: Holder | None = None
        self.last_answer = ""  # the service's answer to this window's latest request, in words
        self._lock: SchedulerLock | None = None
        self._pending: list[int] = []  # request ids the service has not finished yet
        self._keys_ready = False
        self._keys_checked = -KEYS_RECHECK_S
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.timeout.connect(self.tick)
        self.wants_host = host
        self.runner = self._start(host)
        bridge.job_finished.connect(self._soon)  # a run's end re-arms its streams: tick now, not in a second

    # --- life -------------------------------------------------------------------------------------------------
    def _start(self, host: bool) -> SyncRunner:
        paths, settings = self.app.paths, self.app.settings
        holder = attach.scheduler_holder(paths)
        if holder is not None:
            self.mode, self.holder = ATTACHED, holder
            log.info("attached to the schedule run by %s (pid %s)", holder.kind, holder.pid)
            self._timer.start(ATTACHED_POLL_MS)
        elif host:
            lock = SchedulerLock(paths)
            try:
                lock.acquire(WINDOW)
            except SchedulerTaken as taken:  # the service started a moment ago: attach to it instead
                self.mode, self.holder = ATTACHED, taken.holder
                self._timer.start(ATTACHED_POLL_MS)
            else:
                self._lock = lock
                self.host = SchedulerHost(
                    paths,
                    settings,
                    credentials=self._credentials,
                    listener=BridgeListener(self.bridge),
                    clock=self.clock,
                )
                self.host.start()
                self.mode = HOSTING
                self._timer.start(0)
                return self.host.runner
        return SyncRunner(paths, settings, BridgeListener(self.bridge))

    def _take_over(self) -> None:
        previous = self.runner
        self.runner = self._start(True)
        if self.mode == HOSTING:
            self.last_answer = ""
            log.info("this window now runs the schedule")
            self.runner_changed.emit(self.runner)
            previous.shutdown(5.0)  # idle: an attached window's runner syncs nothing
        elif self.runner is not previous:  # another process took the schedule first: attached to it instead
            self.runner.shutdown(5.0)
            self.runner = previous

    def stop(self, timeout: float = 30.0) -> bool:
        """Stop scheduling and the runner (the write in flight finishes); release the lock. True if joined."""
        self._timer.stop()
        joined = self.host.stop(timeout) if self.host is not None else self.runner.shutdown(timeout)
        if self._lock is not None:
            self._lock.release()
            self._lock = None
        return joined

    def rebind(self, app: AppContext) -> SyncRunner:
        """Follow a switch to another profile: stop what ran for the old one, start for the new one."""
        self.stop()
        self.app, self.host, self.holder, self.mode = app, None, None, MANUAL
        self._pending.clear()
        self._keys_ready, self._keys_checked = False, -KEYS_RECHECK_S
        self.runner = self._start(self.wants_host)
        self.changed.emit()
        return self.runner

    # --- the timer --------------------------------------------------------------------------------------------
    def tick(self) -> None:
        if self.mode == HOSTING:
            self._tick_host()
        elif self.mode == ATTACHED:
            self._poll_service()

    def settings_changed(self) -> None:
        """A setting changed in the window: hosting, the next tick rebuilds the jobs now, not in a second."""
        self._soon()

    def _soon(self) -> None:
        if self.mode == HOSTING:
            self._timer.start(0)

    def _tick_host(self) -> None:
        assert self.host is not None
        wait = 1.0
        try:
            if self._has_keys():
                wait = self.host.tick()
        except Exception:  # a broken tick must not stop the timer: the next one tries again
            log.exception("the schedule's tick failed")
        self._timer.start(max(0, int(wait * 1000)))

    def _has_keys(self) -> bool:
        """The schedule waits until both keys are set (a first run): polling without them would only fill the
        history with failures. Looked for now and then, not every second (a keyring read may be slow)."""
        if self._keys_ready:
            return True
        now = self.clock.monotonic()
        if now - self._keys_checked < KEYS_RECHECK_S:
            return False
        self._keys_checked = now
        try:
            found = read_credentials(self.app.secrets, SYNC_SECRETS)
        except Exception:
            return False
        self._keys_ready = not missing_for_sync(found)
        return self._keys_ready

    def keys_changed(self) -> None:
        """Connections stored or removed a key: look again at the next tick."""
        self._keys_ready, self._keys_checked = False, -KEYS_RECHECK_S

    def _credentials(self) -> Mapping[str, str]:
        return read_credentials(self.app.secrets, SYNC_SECRETS)

    def _poll_service(self) -> None:
        before = (self.holder, self.last_answer, tuple(self._pending))
        holder = attach.scheduler_holder(self.app.paths)
        if holder is None:  # the service stopped: this window runs the schedule from now on (or syncs on a click)
            log.info("the background service stopped; this window no longer attached")
            self.mode, self.holder, self._pending = MANUAL, None, []
            self.last_answer = SERVICE_GONE
            if self.wants_host:
                self._take_over()
            self.changed.emit()
            return
        finished = self.holder is not None and self.holder.state == "syncing" and holder.state != "syncing"
        self.holder = holder
        for request_id in list(self._pending):
            state = attach.request_state(request_id)
            if state is None or state.finished:
                finished = True
                self._pending.remove(request_id)
                if state is not None and state.result:
                    self.last_answer = f"The background service answered: {labels.for_gui(state.result)}"
        if finished:
            self.service_finished.emit()
        if (self.holder, self.last_answer, tuple(self._pending)) != before:
            self.changed.emit()
        self._timer.start(ATTACHED_POLL_MS)

    # --- what the window asks -------------------------------------------------------------------------------
    @property
    def attached(self) -> bool:
        return self.mode == ATTACHED

    def sync_now(self) -> str:
        """Attached: ask the service to sync; returns the words to show."""
        self._pending.append(attach.sync_now())
        self.last_answer = SENT_MESSAGE
        self.changed.emit()
        return SENT_MESSAGE

    def cancel(self) -> None:
        self._pending.append(attach.cancel())

    def set_paused(self, paused: bool) -> None:
        """Attached: the service stores it and (pausing) stops its running sync at the next safe point."""
        self._pending.append(attach.pause() if paused else attach.resume())

    @property
    def service_syncing(self) -> bool:
        return self.attached and self.holder is not None and self.holder.state == "syncing"

    def schedule_on(self) -> bool:
        """Whether some stream syncs on schedule (the settings say so, whoever runs the schedule)."""
        if self.mode == MANUAL:
            return False
        try:
            return bool(ScheduleConfig.from_settings(self.app.settings, connected_sources(self.app.secrets)).streams)
        except Exception:  # an unusable setting: Settings says which; nothing promises background syncs
            return False

    def next_runs(self) -> dict[str, datetime | None]:
        """Stream (or "reconcile") → its next run, aware UTC; None: running now or waiting for approval. Empty when
        nothing runs a schedule."""
        if self.mode == HOSTING and self.host is not None:
            return dict(self.host.scheduler.next_runs())
        if self.mode == ATTACHED and self.holder is not None:
            return {key: _parse(value) for key, value in self.holder.next_runs.items()}
        return {}


def _parse(value: str) -> datetime | None:
    return aware_utc(datetime.fromisoformat(value)) if value else None


# --- words ----------------------------------------------------------------------------------------------------
def _in(seconds: float) -> str:
    if seconds < 1:
        return "now"
    if seconds < 90:
        return f"in {int(seconds)} s"
    if seconds < 90 * 60:
        return f"in {round(seconds / 60)} min"
    return f"in {seconds / 3600:.0f} h"


def next_run_text(
    stream: str,
    next_runs: Mapping[str, datetime | None] | None,
    now: datetime,
    *,
    paused: bool = False,
    waiting_for_approval: bool = False,
    syncing: bool = False,
) -> str:
    """The Overview's "Next run" of one stream: "next sync in 40 s", "paused", "waiting for approval"…
    `next_runs` None: nothing runs a schedule (a click syncs)."""
    if next_runs is None:
        return "when you press Sync now"
    if stream not in next_runs:
        return "not on a schedule (Settings)"
    if paused:
        return "paused"
    if waiting_for_approval:
        return "waiting for approval"
    at = next_runs[stream]
    if at is None:
        return "syncing now" if syncing else "waiting for approval"
    return f"next sync {_in((at - now.astimezone(UTC)).total_seconds())}"


def schedule_words(schedule: WindowSchedule | None, now: datetime | None = None) -> str:
    """One line for the Overview: who runs the schedule."""
    if schedule is None or schedule.mode == MANUAL:
        if schedule is not None and schedule.last_answer == SERVICE_GONE:
            return SERVICE_GONE
        return ""
    if schedule.mode == ATTACHED:
        holder = schedule.holder
        who = "ClinicSync's background service" if holder is None or holder.kind == SERVE else "another ClinicSync"
        since = ""
        if holder is not None:
            started = aware_utc(holder.started_at).astimezone()
            since = f" (since {started:%H:%M})"
        line = f"Attached to {who}{since}: it syncs on schedule, and this window shows what it does."
        if schedule.last_answer:
            line += f" {schedule.last_answer}"
        return line
    return "Syncing on schedule from this window." if schedule.schedule_on() else ""
