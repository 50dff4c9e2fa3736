"""The process side of background syncing: the runner, the scheduler, service requests, history, alerts and the
heartbeat, put together once for `clinicsync serve` and for a window that runs the schedule itself.

Only one process per profile may host them (clinicsync.sync.instance.SchedulerLock). A window that finds the
lock taken attaches instead (clinicsync.sync.attach): it sends requests and reads the database.

Threads: `tick()` runs on one thread — the service's main thread, or the window's GUI thread through a timer —
and that is where keys are read (`credentials`), as some keyrings must not be used from worker threads. The
runner's worker thread reports finished jobs to `_HostListener`, which records history and alerts and hands the
rest to the next tick.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from datetime import datetime, tzinfo

from clinicsync.outcomes import Outcome
from clinicsync.paths import AppPaths
from clinicsync.reconcile.findings import ReportOutcome
from clinicsync.store.models import SchedulerState, utcnow
from clinicsync.store.settings import Settings
from clinicsync.sync import requests
from clinicsync.sync.alerts import AlertBook
from clinicsync.sync.clock import Clock, SystemClock, naive_utc
from clinicsync.sync.history import SCHEDULE, WEBHOOK, fold_quiet, record_not_run
from clinicsync.sync.reconcile_hook import RECONCILE
from clinicsync.sync.reconcile_run import ReconcileResult
from clinicsync.sync.runner import Job, JobOutcome, RunnerListener, SyncRunner
from clinicsync.sync.scheduler import SyncScheduler
from clinicsync.sync.service import enabled_streams, sources_with_keys
from clinicsync.sync.webhook import WebhookSwitch

log = logging.getLogger(__name__)

HEARTBEAT_S = 5.0
ALERT_REFRESH_S = 30.0
WEBHOOK_STREAM = "calcom.bookings"
LOCKED_MESSAGE = "Not started: another sync (`clinicsync sync`, or another ClinicSync) was running for this profile."


class FanOutListener:
    """Passes the runner's callbacks to several listeners; one failing never keeps the others from hearing."""

    def __init__(self, *listeners: RunnerListener | None) -> None:
        self._listeners = [listener for listener in listeners if listener is not None]

    def job_started(self, job: Job) -> None:
        for listener in self._listeners:
            _safely(listener.job_started, job)

    def job_progress(self, job: Job, stream: str, done: int, total: int | None, step: str) -> None:
        for listener in self._listeners:
            _safely(listener.job_progress, job, stream, done, total, step)

    def job_finished(self, outcome: JobOutcome) -> None:
        for listener in self._listeners:
            _safely(listener.job_finished, outcome)


def _safely(call: Callable[..., None], *args: object) -> None:
    try:
        call(*args)
    except Exception:
        log.exception("a runner listener failed")


def describe_outcome(outcome: JobOutcome) -> str:
    """A finished job in one line of plain words (the log, a request's answer)."""
    if outcome.failure_kind is not None and not outcome.results:
        return outcome.message or outcome.failure_kind
    if outcome.reconcile is not None:
        return _reconcile_row(outcome.reconcile)[1]
    parts = []
    for result in outcome.results:
        counts = ", ".join(f"{n} {action}" for action, n in result.counts.items() if n)
        line = f"{result.stream}: {result.outcome}" + (f" ({counts})" if counts else "")
        parts.append(line + (f" — {result.message}" if result.message and result.outcome != Outcome.OK else ""))
    return "; ".join(parts) or "nothing to do"


class SchedulerHost:
    def __init__(
        self,
        paths: AppPaths,
        settings: Settings,
        *,
        credentials: Callable[[], Mapping[str, str]],
        listener: RunnerListener | None = None,
        clock: Clock | None = None,
        zone: tzinfo | None = None,
    ) -> None:
        self.paths = paths
        self.settings = settings
        self.clock = clock or SystemClock()
        self.credentials = credentials
        self.alerts = AlertBook(settings)
        self.runner = SyncRunner(paths, settings, FanOutListener(_HostListener(self), listener))
        self.scheduler = SyncScheduler(self.runner, settings, self.clock, credentials=credentials, zone=zone)
        self._asked: dict[int, int] = {}  # runner job id → the service request it carries out
        self._answers: list[JobOutcome] = []
        self._answers_lock = threading.Lock()
        self._reporting: set[int] = set()  # jobs started whose report is not fully taken in yet
        self._last_heartbeat = -HEARTBEAT_S
        self._last_alert_refresh = -ALERT_REFRESH_S
        # Cal.com's webhook deliveries (off unless turned on in Connections): the listener's thread notes a booking
        # here; the next tick asks the runner for its sync.
        self.webhook = WebhookSwitch(settings, self._booking_noticed, self.clock.monotonic)
        self._bookings_noticed = threading.Event()
        self.webhook_notices = 0  # accepted booking deliveries, for tests and support

    # --- life -------------------------------------------------------------------------------------------------
    def start(self) -> None:
        self.scheduler.start()
        self._heartbeat(force=True)

    def tick(self) -> float:
        """One step: the schedule, the window's requests, finished requests, alerts, the heartbeat. Returns how
        long the caller may wait before the next step (it may be woken earlier by `wake`)."""
        wait = self.scheduler.tick()
        self.webhook.update(self.credentials)
        self._sync_noticed_bookings()
        self._serve_requests()
        self._answer_finished()
        mono = self.clock.monotonic()
        if mono - self._last_alert_refresh >= ALERT_REFRESH_S:
            self._last_alert_refresh = mono
            self.alerts.refresh(self.clock.now())  # a person may have settled review items meanwhile
        self._heartbeat()
        return wait

    def run_forever(self, stop: threading.Event) -> None:
        """Tick until `stop` is set (call `wake` after setting it, to cut the wait short)."""
        woken = self.scheduler.aps.woken
        while not stop.is_set():
            wait = self.tick()
            started = self.clock.monotonic()
            self.clock.wait(woken, wait)
            woken.clear()
            away = self.scheduler.wake.overslept(wait, self.clock.monotonic() - started)
            if away is not None:
                self.scheduler.woke(away)

    def wake(self) -> None:
        self.scheduler.aps.wakeup()

    def stop(self, timeout: float = 60.0) -> bool:
        """Stop scheduling, let the sync in flight stop at its next safe point (the write being sent finishes;
        queued writes stay queued), and join the worker. True if it ended within `timeout`."""
        self.webhook.stop()
        self.scheduler.shutdown()
        joined = self.runner.shutdown(timeout)
        self._answer_finished()
        try:
            SchedulerState.update(state="stopped", heartbeat_at=utcnow()).where(
                (SchedulerState.id == 1) & (SchedulerState.pid == os.getpid())
            ).execute()
        except Exception:
            log.exception("could not record that the scheduler stopped")
        return joined

    # --- Cal.com's webhook deliveries ------------------------------------------------------------------------
    def _booking_noticed(self, uid: str, trigger: str) -> None:
        """The listener's thread: an accepted delivery about a booking. Only noted; several before the next tick
        make one run (the bookings stream reads every booking changed since its last run)."""
        log.info("Cal.com webhook: %s", trigger)
        self.webhook_notices += 1
        self._bookings_noticed.set()
        self.wake()

    def _sync_noticed_bookings(self) -> None:
        if not self._bookings_noticed.is_set() or self.runner.waiting:
            return  # nothing noticed, or a job waits already: asked once it has started
        self._bookings_noticed.clear()
        try:
            credentials = self.credentials()
        except Exception as exc:  # a locked keyring: the next poll brings the booking
            log.warning("a Cal.com booking notice could not start a sync: the keys could not be read (%s)", exc)
            return
        if WEBHOOK_STREAM not in enabled_streams(self.settings, sources_with_keys(credentials)):
            log.info("a Cal.com booking notice arrived, but Cal.com bookings are not synced (no key, or turned off)")
            return
        job, why_not = self.runner.request(
            trigger=WEBHOOK, credentials=credentials, streams=[WEBHOOK_STREAM], when_busy="queue"
        )
        if job is None:
            log.info("a Cal.com booking notice did not start a sync: %s", why_not)

    # --- the window's requests -------------------------------------------------------------------------------
    def _serve_requests(self) -> None:
        for row in requests.take_pending(utcnow()):
            log.info("request #%s from %s: %s", row.id, row.origin, row.kind)
            if row.kind == requests.SYNC:
                self._request_sync(row.id, row.streams)
            elif row.kind == requests.CANCEL:
                self.runner.cancel()
                requests.answer(row.id, requests.DONE, "Cancelled; queued changes stay queued.")
            elif row.kind in (requests.PAUSE, requests.RESUME):
                paused = row.kind == requests.PAUSE
                self.settings.set("sync.paused", paused)
                if paused:
                    self.runner.cancel()  # Pause means stop now, as in the window
                effective = bool(self.settings.get("sync.paused"))
                note = "" if effective == paused else " (the environment variable CLINICSYNC_SYNC_PAUSED overrides it)"
                requests.answer(row.id, requests.DONE, ("Paused." if paused else "Resumed.") + note)
            self.wake()

    def _request_sync(self, request_id: int, streams: list[str] | None) -> None:
        try:
            credentials = self.credentials()
        except Exception as exc:
            requests.answer(request_id, requests.REFUSED, f"Not started: the keys could not be read ({exc}).")
            return
        job, why_not = self.runner.request(
            trigger="manual", credentials=credentials, streams=streams, when_busy="queue"
        )
        if job is None:
            requests.answer(request_id, requests.REFUSED, why_not)
            return
        self._asked[job.id] = request_id
        requests.answer(request_id, requests.ACCEPTED, "Started." if not self.runner.busy else "Queued.", job_id=job.id)

    def _answer_finished(self) -> None:
        with self._answers_lock:
            finished, self._answers = self._answers, []
        for outcome in finished:
            request_id = self._asked.pop(outcome.job.id, None)
            if request_id is not None:
                requests.answer(request_id, requests.DONE, describe_outcome(outcome))

    # --- the heartbeat ------------------------------------------------------------------------------------------
    def _heartbeat(self, *, force: bool = False) -> None:
        mono = self.clock.monotonic()
        if not force and mono - self._last_heartbeat < HEARTBEAT_S:
            return
        self._last_heartbeat = mono
        if self._reporting or self.runner.busy:
            state = "syncing"
        elif self.scheduler.config is not None and self.scheduler.config.paused:
            state = "paused"
        else:
            state = "idle"
        next_runs = {key: _iso(value) for key, value in self.scheduler.next_runs().items()}
        SchedulerState.update(heartbeat_at=utcnow(), state=state, next_runs=next_runs).where(
            (SchedulerState.id == 1) & (SchedulerState.pid == os.getpid())
        ).execute()

    # --- the runner's reports (worker thread) ---------------------------------------------------------------
    def _finished(self, outcome: JobOutcome) -> None:
        log.info("%s job %s finished: %s", outcome.job.trigger, outcome.job.id, describe_outcome(outcome))
        try:
            self._record(outcome)
        except Exception:
            log.exception("could not record the end of job %s", outcome.job.id)
        try:
            self.alerts.observe(outcome, self.clock.now())
            self._report_findings(outcome)
        except Exception:
            log.exception("could not update the alerts after job %s", outcome.job.id)
        self.scheduler.job_finished(outcome)
        with self._answers_lock:
            self._answers.append(outcome)
            self._reporting.discard(outcome.job.id)
        self.wake()

    def busy(self) -> bool:
        """True while a job runs or waits, or the report of one is still being taken in."""
        with self._answers_lock:
            reporting = bool(self._reporting)
        return reporting or self.runner.busy

    def wait_idle(self, timeout: float = 60.0) -> bool:
        """Wait until every queued job has run and been reported, then take the reports in with a tick. For tests
        and the benchmark (the service never waits like this). False if `timeout` (real seconds) ran out."""
        deadline = time.monotonic() + timeout
        while self.busy():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.01)
        self.tick()
        return True

    def _record(self, outcome: JobOutcome) -> None:
        """Every run is a history row: fold idle scheduled polls; write rows for jobs that never reached a
        stream (the engine writes the others)."""
        job = outcome.job
        if outcome.reconcile is not None:  # the reconciliation's own report is stored; this row is its history line
            record_not_run([RECONCILE], job.trigger, *_reconcile_row(outcome.reconcile))
            return
        if outcome.results:
            if job.trigger == SCHEDULE:
                for result in outcome.results:
                    fold_quiet(result.run_id)
            return
        if outcome.failure_kind is None:
            return
        if job.kind == "reconcile" or job.trigger == RECONCILE:
            streams = [RECONCILE]
        else:
            streams = list(job.streams or enabled_streams(self.settings))
        if outcome.failure_kind == "locked":
            record_not_run(streams, job.trigger, Outcome.SKIPPED, LOCKED_MESSAGE)
        elif outcome.failure_kind == "cancelled":
            never_started = outcome.message.startswith("Not started")
            record_not_run(
                streams, job.trigger, Outcome.SKIPPED if never_started else Outcome.CANCELLED, outcome.message
            )
        else:
            record_not_run(streams, job.trigger, Outcome.FAILED, outcome.message)

    def _report_findings(self, outcome: JobOutcome) -> None:
        """A finished reconciliation raises (or updates) the findings alert, or clears it when nothing was found.
        One that stopped part-way says nothing either way: its findings are incomplete."""
        report = outcome.reconcile
        if report is None or report.outcome not in (ReportOutcome.CLEAN, ReportOutcome.FINDINGS):
            return
        total = report.counts.total
        summary = "" if not total else f"The full comparison found {_differences(total)}; see Reconciliation."
        self.alerts.report_reconciliation(total, summary, self.clock.now())


def _differences(count: int) -> str:
    return f"{count} difference{'s' if count != 1 else ''}"


def _reconcile_row(report: ReconcileResult) -> tuple[str, str]:
    """A reconciliation's history line: its outcome and a few words."""
    if report.outcome == ReportOutcome.CANCELLED:
        return Outcome.CANCELLED, "Full comparison cancelled."
    if report.outcome == ReportOutcome.FAILED:
        return Outcome.FAILED, f"Full comparison stopped: {report.message}"
    if report.counts.total:
        return Outcome.ATTENTION, f"Full comparison: {_differences(report.counts.total)} found."
    return Outcome.OK, "Full comparison: Stripe and the source agree."


class _HostListener:
    def __init__(self, host: SchedulerHost) -> None:
        self._host = host

    def job_started(self, job: Job) -> None:
        with self._host._answers_lock:
            self._host._reporting.add(job.id)

    def job_progress(self, job: Job, stream: str, done: int, total: int | None, step: str) -> None:
        pass

    def job_finished(self, outcome: JobOutcome) -> None:
        self._host._finished(outcome)


def _iso(moment: datetime | None) -> str:
    return "" if moment is None else naive_utc(moment).isoformat(timespec="seconds")
