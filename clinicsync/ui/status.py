"""What the app is doing right now, in one place the tray, the Overview and the notifications all read.

`StatusTracker` listens to the runner bridge (so it only ever runs on the GUI thread) and remembers the live parts
(current progress, the last outcome, a broken connection). `snapshot()` adds the stored parts (last sync, review
items, errors) from small queries. `StatusSnapshot` is plain data, so the words and icons derived from it are
pure functions that tests check state by state.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from PySide6.QtCore import QObject, Signal

from clinicsync import labels
from clinicsync.secrets import STRIPE_API_KEY, SecretStoreError
from clinicsync.store import queries
from clinicsync.store.settings import Settings
from clinicsync.streams import STREAMS
from clinicsync.stripe_gateway import livemode_of_key
from clinicsync.sync import alerts
from clinicsync.sync.runner import Job, JobOutcome, SyncRunner, is_paused
from clinicsync.ui.bridge import RunnerBridge

if TYPE_CHECKING:
    from clinicsync.ui.context import UiContext
    from clinicsync.ui.schedule import WindowSchedule

log = logging.getLogger(__name__)

# Failures that mean a connection itself is broken (a key, a setting, a host) or ClinicSync cannot keep its own
# records (a full disk, a damaged database), as opposed to a bad record.
BROKEN_KINDS = ("auth", "config", "unreachable", "storage")
# A run that stopped part-way because Stripe or the source refused the key.
BROKEN_STOPS = {"auth": "auth", "permission": "auth", "source_auth": "auth", "source_permission": "auth"}


@dataclass(frozen=True)
class Progress:
    stream: str
    done: int
    total: int | None
    step: str


@dataclass(frozen=True)
class ConnectionProblem:
    kind: str  # auth, config, unreachable
    message: str


@dataclass(frozen=True)
class StatusSnapshot:
    syncing: bool = False
    progress: Progress | None = None
    paused: bool = False
    review_items: int = 0
    failed_records: int = 0
    problem: ConnectionProblem | None = None
    last_sync: datetime | None = None  # when the last good sync finished; aware, local time
    next_sync: datetime | None = None  # the next scheduled check; None: none (manual only, or paused)
    never_synced: bool = True
    # Titles of the lasting alerts other than records to review (counted above), oldest first: recorded by whoever
    # runs the syncs, this window or the background service it is attached to.
    alerts: tuple[str, ...] = ()

    @property
    def needs_attention(self) -> bool:
        return self.problem is not None or self.review_items > 0 or self.failed_records > 0 or bool(self.alerts)


def stream_label(stream: str) -> str:
    """'cliniko.patients' → 'patients' (the short word people say; clinicsync.labels has the table)."""
    return labels.stream_noun(stream)


def local_time(naive_utc: datetime | None) -> datetime | None:
    """The store keeps naive UTC; people read their own clock."""
    return None if naive_utc is None else naive_utc.replace(tzinfo=UTC).astimezone()


def current_pair_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """stream_status() lists every account pair, most recently used first; the window shows the current one."""
    if not rows:
        return []
    pair_id = rows[0].get("pair_id")
    return [row for row in rows if row.get("pair_id") == pair_id]


def problem_of(outcome: JobOutcome) -> ConnectionProblem | None:
    if outcome.failure_kind in BROKEN_KINDS:
        return ConnectionProblem(outcome.failure_kind, outcome.message)
    for result in outcome.results:
        if result.stop_kind in BROKEN_STOPS:
            return ConnectionProblem(BROKEN_STOPS[result.stop_kind], result.message)
        if result.stop_kind == "storage":
            return ConnectionProblem("storage", result.message)
    return None


class StatusTracker(QObject):
    """Live sync state for the GUI thread. `changed` fires when a sync starts or ends, or pause flips (not on
    every progress step: screens that show progress listen to the bridge's progress signal themselves)."""

    changed = Signal()

    def __init__(self, runner: SyncRunner, bridge: RunnerBridge, settings: Settings, parent: QObject | None = None):
        super().__init__(parent)
        self._runner = runner
        self._settings = settings
        self.progress: Progress | None = None
        self.current_job: Job | None = None
        self.last_outcome: JobOutcome | None = None
        self.problem: ConnectionProblem | None = None
        # Stripe mode of the key the latest sync used (None until one ran): fresher than the stored pair when
        # someone has just swapped a test key for a live one.
        self.key_livemode: bool | None = None
        # Set by build_app: while attached, pausing reaches the service and its syncing shows here.
        self.schedule: WindowSchedule | None = None
        bridge.job_started.connect(self._started)
        bridge.job_progress.connect(self._progress)
        bridge.job_finished.connect(self._finished)

    # --- pause (persisted; the runner refuses jobs while it is set) -----------------------------------
    def paused(self) -> bool:
        return is_paused(self._settings)

    def set_paused(self, paused: bool) -> bool:
        """Store the choice; returns the effective value (an environment variable can override it)."""
        self._settings.set("sync.paused", paused)
        if self.schedule is not None and self.schedule.attached:
            self.schedule.set_paused(paused)  # the service also stops its running sync at a safe point
        self.changed.emit()
        return self.paused()

    def note_stripe_key(self, key: str | None) -> None:
        """Tell the tracker which Stripe key is configured (its prefix says test or live) without a sync."""
        mode = livemode_of_key(key) if key else None
        if mode != self.key_livemode:
            self.key_livemode = mode
            self.changed.emit()

    def rebind(self, runner: SyncRunner, settings: Settings) -> None:
        """Follow a switch to another profile (the sandbox trial): new runner and settings, nothing carried over."""
        self._runner = runner
        self._settings = settings
        self.progress = None
        self.current_job = None
        self.last_outcome = None
        self.problem = None
        self.key_livemode = None
        self.changed.emit()

    def connections_changed(self) -> None:
        """Call after keys or addresses change: forget the broken-connection state. The Stripe key's mode is
        not guessed here: whoever changes that key tells its new mode (`note_stripe_key`)."""
        self.problem = None
        if self.schedule is not None:
            self.schedule.keys_changed()  # a schedule waiting for its keys looks again now
        self.changed.emit()

    def stored_changed(self) -> None:
        """Call after the window changed what the database holds (a review decision, failed records queued for a
        retry): everything following `changed` re-reads the stored parts (`snapshot()` queries them afresh), so
        the tray and the Overview stop reporting what was just dealt with instead of waiting for the next sync."""
        self.changed.emit()

    # --- bridge slots (GUI thread) ---------------------------------------------------------------------
    def _started(self, job: Job) -> None:
        self.current_job = job
        key = job.credentials.get(STRIPE_API_KEY)
        if key:
            self.key_livemode = livemode_of_key(key)
        self.progress = Progress("", 0, None, "Starting")
        self.changed.emit()

    def _progress(self, job: Job, stream: str, done: int, total: int | None, step: str) -> None:
        previous = self.progress
        # Steps with no text (per-record ticks) keep the last named step, so "Reading patients" stays visible.
        self.progress = Progress(stream, done, total, step or (previous.step if previous else ""))

    def _finished(self, outcome: JobOutcome) -> None:
        self.current_job = None
        self.progress = None
        self.last_outcome = outcome
        # "locked": another sync (the CLI) holds the profile; "cancelled": a person stopped it. Neither says
        # anything about the connections.
        if outcome.failure_kind not in ("locked", "cancelled"):
            self.problem = problem_of(outcome)
        self.changed.emit()

    # --- reading ---------------------------------------------------------------------------------------
    @property
    def syncing(self) -> bool:
        if self.schedule is not None and self.schedule.service_syncing:
            return True
        return self.current_job is not None or self._runner.busy

    def snapshot(self) -> StatusSnapshot:
        """Live state plus a few small queries; called on the GUI thread when a screen or menu is shown."""
        try:
            rows = current_pair_rows(queries.stream_status())
        except Exception:  # the database is busy or broken: show live state rather than nothing
            log.exception("could not read the sync status")
            rows = []
        finished = [row["last_run_at"] for row in rows if row.get("last_run_at")]
        snapshot = StatusSnapshot(
            syncing=self.syncing,
            progress=self.progress,
            paused=self.paused(),
            review_items=sum(row["review"] for row in rows),
            failed_records=sum(row["last_counts"].get("failed", 0) for row in rows),
            problem=self.problem,
            last_sync=self._last_good_sync(),
            next_sync=self._next_sync(),
            alerts=self._alert_titles(),
            never_synced=not finished,
        )
        return replace(snapshot, progress=self.progress if snapshot.syncing else None)

    def _last_good_sync(self) -> datetime | None:
        try:
            return local_time(queries.last_good_sync_at())
        except Exception:  # the database is busy or broken: say nothing rather than something wrong
            log.exception("could not read the last sync")
            return None

    def _alert_titles(self) -> tuple[str, ...]:
        try:
            return tuple(alert.title for alert in alerts.active_alerts() if alert.kind != "review")
        except Exception:
            log.exception("could not read the alerts")
            return ()

    def _next_sync(self) -> datetime | None:
        """The next scheduled check of any stream, local time; None without a schedule or while paused."""
        if self.schedule is None or self.paused():
            return None
        times = [at for key, at in self.schedule.next_runs().items() if key in STREAMS and at is not None]
        return min(times).astimezone() if times else None


# --- starting a sync from any button ------------------------------------------------------------------------
PAUSED_MESSAGE = "Syncing is paused. Resume it (tray menu or Overview) to sync."
QUEUED_MESSAGE = "A sync is already waiting to start."


def request_sync(ui: UiContext, trigger: str = "manual") -> tuple[Job | None, str]:
    """Queue a sync for a button or menu item: (job, "") or (None, why not), never an exception."""
    if ui.runner.paused():
        return None, PAUSED_MESSAGE
    if ui.schedule is not None and ui.schedule.attached:  # the background service syncs, not this window
        return None, ui.schedule.sync_now()
    try:
        job = ui.sync_now(trigger)
    except SecretStoreError as exc:  # the keyring is locked or missing: say so instead of failing the click
        return None, labels.for_gui(exc)
    return (job, "") if job is not None else (None, QUEUED_MESSAGE)


# --- test mode / sandbox label -------------------------------------------------------------------------------
SANDBOX = "SANDBOX"
TEST_MODE = "TEST MODE"
LIVE = "LIVE"


def is_loopback(url: str) -> bool:
    """The sandbox listens on 127.0.0.1; real Cliniko and Stripe never do."""
    host = (urlsplit(url).hostname or "").lower() if url else ""
    return host in ("localhost", "::1") or host.startswith("127.")


def mode_label(*, sandbox: bool, livemode: bool | None) -> str | None:
    """SANDBOX or TEST MODE whenever the accounts are not live ones; LIVE when they are; None when unknown."""
    if sandbox:
        return SANDBOX
    if livemode is None:
        return None
    return LIVE if livemode else TEST_MODE


def current_mode(ui: UiContext, rows: list[dict[str, Any]]) -> str | None:
    settings = ui.app.settings
    sandbox = ui.sandbox is not None or any(
        is_loopback(settings.lookup(key).value) for key in ("stripe.base_url", "cliniko.base_url")
    )
    livemode = ui.status.key_livemode if ui.status is not None else None
    if livemode is None and rows:
        livemode = bool(rows[0].get("stripe_livemode"))
    return mode_label(sandbox=sandbox, livemode=livemode)
