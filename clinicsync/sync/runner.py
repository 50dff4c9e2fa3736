"""The Qt-free sync runner: owns the one worker thread that runs syncs, one at a time, in request order.

Callers (the window, the tray, the scheduler) only submit jobs. Secrets are read by the caller, on its own thread,
before a job is queued (some keyrings must not be used from worker threads). Results and progress go to a
listener, called on the worker thread; the desktop app's bridge turns those calls into Qt signals.
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from clinicsync.paths import AppPaths
from clinicsync.retry import CancelToken
from clinicsync.secrets import MemorySecretStore, SecretStore
from clinicsync.store.settings import Settings
from clinicsync.sync.collector import full_collections_deferred
from clinicsync.sync.engine import RunResult
from clinicsync.sync.history import SCHEDULE, WEBHOOK, awaiting_approval, record_skipped
from clinicsync.sync.reconcile_fix import FixOutcome, FixRequest, apply_fixes
from clinicsync.sync.reconcile_hook import RECONCILE, reconciler_registered, run_reconciliation
from clinicsync.sync.reconcile_run import ReconcileResult, run_reconcile
from clinicsync.sync.service import enabled_streams, failure_of, run_sync

log = logging.getLogger(__name__)


JOB_KINDS = ("sync", "reconcile", "reconcile_fix")


@dataclass(frozen=True)
class Job:
    id: int
    trigger: str  # manual, schedule, retry, first_run; reconcile: a reconciliation instead of a sync
    streams: tuple[str, ...] | None = None
    dry_run: bool = False
    credentials: Mapping[str, str] = field(default_factory=dict, repr=False)
    # sync; reconcile (reads both sides, stores a report); reconcile_fix (carries out `fixes`; `confirmed`: the
    # person confirmed deletions). All hold the profile's lock, so none overlaps another's work on the profile.
    kind: str = "sync"
    fixes: tuple[FixRequest, ...] = ()
    confirmed: bool = False


@dataclass(frozen=True)
class JobOutcome:
    job: Job
    results: tuple[RunResult, ...] = ()
    # config, auth, locked, unreachable, error, storage, internal; cancelled: dropped unrun at shutdown
    failure_kind: str | None = None
    message: str = ""
    service: str | None = None  # which service a failure before the streams concerns: "stripe", "cliniko"
    reconcile: ReconcileResult | None = None  # a reconcile job's report
    fixes: tuple[FixOutcome, ...] = ()  # a reconcile_fix job's outcomes, one per request

    @property
    def needs_attention(self) -> bool:
        """True when a person must act: a key, a review item, failed records, an approval."""
        if self.failure_kind in ("config", "auth", "storage", "internal"):
            return True
        return any(r.outcome in ("attention", "needs_approval") or r.stop_kind for r in self.results)


class RunnerListener(Protocol):
    def job_started(self, job: Job) -> None: ...

    def job_progress(self, job: Job, stream: str, done: int, total: int | None, step: str) -> None: ...

    def job_finished(self, outcome: JobOutcome) -> None: ...


def read_credentials(secrets: SecretStore, names: Sequence[str]) -> dict[str, str]:
    """Read the keys a sync needs, on the calling thread; a key not set is left out. When Stripe's key comes
    from the environment (a headless run), the others are looked for there only: a server without a keyring
    must not fail over a key it never meant to set (Cal.com's, for a clinic on Cliniko alone)."""
    from clinicsync.secrets import environment_only

    read = environment_only(secrets) or secrets.get
    return {name: value for name in names if (value := read(name))}


_STOP = object()
SHUTDOWN_MESSAGE = "Not started: ClinicSync was shutting down."
CANCELLED_MESSAGE = "Not started: the sync before it was cancelled."
PAUSED_MESSAGE = "Not started: syncing is paused."
BUSY_MESSAGE = "Not started: another sync was already running."
APPROVAL_MESSAGE = (
    "Not started: the first sync to the LIVE Stripe account waits for a person to approve its plan "
    "(Overview, or `clinicsync plan show`)."
)


def is_paused(settings: Settings) -> bool:
    """Whether syncing is paused. A pause setting that cannot be read counts as paused: "nothing is sent" must
    hold until a person sets it again (the CLI and `doctor` say which value is unusable)."""
    item = settings.lookup("sync.paused")
    return bool(item.problem) or bool(item.value)


class SyncRunner:
    def __init__(self, paths: AppPaths, settings: Settings, listener: RunnerListener) -> None:
        self._paths = paths
        self._settings = settings
        self._listener = listener
        self._queue: queue.Queue[object] = queue.Queue()
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._queued = 0
        self._stopping = False  # set once by shutdown(): nothing new starts after it
        self._cancelled_through = 0  # jobs with ids up to this one were waiting when Cancel was pressed
        self._last_id = 0
        self._current: Job | None = None
        self._cancel = CancelToken()
        self._thread = threading.Thread(target=self._work, name="sync-runner", daemon=True)
        self._thread.start()

    # --- what callers use -----------------------------------------------------------------------------
    @property
    def busy(self) -> bool:
        with self._lock:
            return self._current is not None or self._queued > 0

    @property
    def waiting(self) -> bool:
        """True while a job waits behind the running one (another request would be refused as busy)."""
        with self._lock:
            return self._queued > 0

    @property
    def current(self) -> Job | None:
        with self._lock:
            return self._current

    def paused(self) -> bool:
        return is_paused(self._settings)

    def submit(
        self,
        *,
        trigger: str,
        credentials: Mapping[str, str],
        streams: Sequence[str] | None = None,
        dry_run: bool = False,
        kind: str = "sync",
        fixes: Sequence[FixRequest] = (),
        confirmed: bool = False,
    ) -> Job | None:
        """Queue a sync (or a reconciliation, or fixes chosen in one). Returns None (and queues nothing) while
        syncing is paused (a reconciliation only reads, so it still runs), a job is already waiting (two waiting
        syncs would do the same work twice) or the runner is shutting down."""
        if kind not in JOB_KINDS:
            raise ValueError(f"unknown job kind {kind!r}")
        if self.paused() and kind != "reconcile":
            return None
        with self._lock:
            if self._stopping or self._queued:
                return None
            self._queued += 1
            job = Job(
                next(self._ids),
                trigger,
                tuple(streams) if streams else None,
                dry_run,
                dict(credentials),
                kind,
                tuple(fixes),
                confirmed,
            )
            self._last_id = job.id
            # Queued under the lock, so a job accepted before shutdown() is always ahead of its stop marker.
            self._queue.put(job)
        return job

    def request(
        self,
        *,
        trigger: str,
        credentials: Mapping[str, str],
        streams: Sequence[str] | None = None,
        when_busy: str = "skip",
    ) -> tuple[Job | None, str]:
        """Ask for a run on behalf of the schedule or a window's request; the runner decides. Returns (job, "")
        when queued, else (None, why not), and then records the refusal as a skipped run of each stream asked
        for, so the history shows every run that was asked for.

        Refused: while paused or shutting down; while another sync runs or waits (`when_busy="skip"`, the
        schedule's choice; "queue" lets it wait behind the running one, as Sync now does); and, for scheduled runs
        and webhook deliveries' runs, while a first live sync's plan waits for approval (another run would only
        plan again).
        """
        names = [RECONCILE] if trigger == RECONCILE else list(streams or enabled_streams(self._settings))
        why_not = self._why_refused(trigger, names, when_busy)
        if why_not is None:
            # The schedule's reconciliation is a reconciliation job, like one started from its tab.
            kind = "reconcile" if trigger == RECONCILE else "sync"
            job = self.submit(trigger=trigger, credentials=credentials, streams=streams, kind=kind)
            if job is not None:
                return job, ""
            why_not = self._why_refused(trigger, names, "skip") or BUSY_MESSAGE
        try:
            record_skipped(names, trigger, why_not)
        except Exception:  # a full disk must not turn a refusal into a crash of the caller's loop
            log.exception("could not record a skipped run")
        return None, why_not

    def _why_refused(self, trigger: str, names: Sequence[str], when_busy: str) -> str | None:
        if self.paused():
            return PAUSED_MESSAGE
        with self._lock:
            if self._stopping:
                return SHUTDOWN_MESSAGE
            busy = self._current is not None or self._queued > 0
            queued = self._queued > 0
        if (busy and when_busy == "skip") or queued:
            return BUSY_MESSAGE
        if trigger in (SCHEDULE, WEBHOOK) and awaiting_approval(names):
            return APPROVAL_MESSAGE
        return None

    def cancel(self) -> None:
        """Stop the running sync at its next safe point, and the one waiting behind it (reported cancelled,
        never started): Cancel means "stop syncing now". Queued Stripe writes stay queued."""
        with self._lock:
            self._cancel.cancel()
            self._cancelled_through = self._last_id

    def shutdown(self, timeout: float = 30.0) -> bool:
        """Cancel the running sync, drop the waiting one (reported cancelled, never started), stop the worker
        and wait for it; True if it ended within `timeout`. Refuses new jobs from then on."""
        with self._lock:
            self._stopping = True
            self._cancel.cancel()  # under the lock: the token of whichever job the worker has just taken
        self._queue.put(_STOP)
        self._thread.join(timeout)
        return not self._thread.is_alive()

    # --- the worker thread ----------------------------------------------------------------------------
    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            assert isinstance(item, Job)
            with self._lock:
                self._queued -= 1
                why_not = self._why_not_start(item)
                if why_not is None:
                    self._current = item
                    self._cancel = CancelToken()
                    cancel = self._cancel
            if why_not is not None:  # it waited behind a sync that was stopped: it must not start afresh
                self._listener.job_finished(JobOutcome(item, failure_kind="cancelled", message=why_not))
                continue
            try:
                self._listener.job_started(item)
                with full_collections_deferred():  # a full pass would hold the interpreter from the GUI thread
                    outcome = self._run(item, cancel)
            finally:
                with self._lock:
                    self._current = None
            self._listener.job_finished(outcome)

    def _why_not_start(self, job: Job) -> str | None:
        """Why a job taken off the queue must not run (called under the lock), or None."""
        if self._stopping:
            return SHUTDOWN_MESSAGE
        if job.id <= self._cancelled_through:
            return CANCELLED_MESSAGE
        if self.paused() and job.kind != "reconcile":  # paused after it was queued: "nothing is sent to Stripe"
            return PAUSED_MESSAGE
        return None

    def _run(self, job: Job, cancel: CancelToken) -> JobOutcome:
        def progress(stream: str, done: int, total: int | None, step: str) -> None:
            self._listener.job_progress(job, stream, done, total, step)

        secrets = MemorySecretStore(job.credentials)
        try:
            if job.kind == "reconcile" and job.trigger == RECONCILE and reconciler_registered():
                # Something registered its own reconciler for the schedule's job (tests, an embedding app).
                results = run_reconciliation(self._paths, self._settings, secrets, cancel=cancel, progress=progress)
                return JobOutcome(job, results=tuple(results))
            if job.kind == "reconcile":
                report = run_reconcile(
                    self._paths,
                    self._settings,
                    secrets,
                    streams=job.streams,
                    trigger=job.trigger,
                    cancel=cancel,
                    progress=progress,
                )
                return JobOutcome(job, reconcile=report)
            if job.kind == "reconcile_fix":
                outcomes = apply_fixes(
                    self._paths, self._settings, secrets, job.fixes, confirmed=job.confirmed, cancel=cancel
                )
                return JobOutcome(job, fixes=tuple(outcomes))
            results = run_sync(
                self._paths,
                self._settings,
                secrets,
                streams=job.streams,
                trigger=job.trigger,
                dry_run=job.dry_run,
                cancel=cancel,
                progress=progress,
            )
        except Exception as exc:
            failure = failure_of(exc)
            if failure is None:
                log.exception("sync job %s failed unexpectedly", job.id)
                return JobOutcome(job, failure_kind="internal", message=f"Unexpected problem: {type(exc).__name__}")
            return JobOutcome(job, failure_kind=failure[0], message=failure[1], service=_service_of(exc))
        return JobOutcome(job, results=tuple(results))


def _service_of(exc: BaseException) -> str | None:
    """Which service an error came from ("stripe", or the source: "cliniko"), for alerts that name it."""
    from clinicsync.sources.errors import SourceError
    from clinicsync.stripe_gateway import StripeFailure

    if isinstance(exc, StripeFailure):
        return "stripe"
    if isinstance(exc, SourceError):
        return exc.service.casefold()
    return None
