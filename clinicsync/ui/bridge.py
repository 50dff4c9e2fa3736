"""The one bridge from the Qt-free runner to the GUI: runner callbacks (on the worker thread) become Qt signals,
which Qt delivers to widgets on the GUI thread (queued connections across threads).

Progress is coalesced: a sync reports every record (20,000 ticks for a big clinic), and each tick delivered on its
own costs the GUI thread an event and the interpreter lock, so the worker keeps the ticks in a short queue and the
GUI thread takes them in at most every PROGRESS_INTERVAL_MS. A tick that only moves a count replaces the count
before it; named steps ("Reading patient records") are all delivered, in order; the last tick of a run is always
delivered, before the run's `job_finished` (and `job_started` comes after the previous run's ticks)."""

from __future__ import annotations

import threading

from PySide6.QtCore import QObject, QTimer, Signal

from clinicsync.sync.runner import Job, JobOutcome

PROGRESS_INTERVAL_MS = 40  # the progress bar moves 25 times a second at most: smooth to the eye

Tick = tuple[Job, str, int, int | None, str]  # job, stream, done, total, step


class RunnerBridge(QObject):
    job_started = Signal(object)  # Job
    job_progress = Signal(object, str, int, object, str)  # Job, stream, done, total (int | None), step
    job_finished = Signal(object)  # JobOutcome

    # From the worker thread to this object's (the GUI) thread: queued, in the order they were emitted.
    _started_posted = Signal(object)
    _progress_posted = Signal()
    _finished_posted = Signal(object)

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._lock = threading.Lock()
        self._ticks: list[Tick] = []  # not yet delivered; guarded by _lock
        self._posted = False  # a _progress_posted is on its way or the timer runs; guarded by _lock
        self._timer = QTimer(self, singleShot=True, interval=PROGRESS_INTERVAL_MS)
        self._timer.timeout.connect(self.deliver_progress)
        self._started_posted.connect(self._deliver_started)
        self._progress_posted.connect(self._timer.start)
        self._finished_posted.connect(self._deliver_finished)

    # RunnerListener protocol: called on the runner's worker thread; emitting is thread-safe.
    def job_started_cb(self, job: Job) -> None:
        self._started_posted.emit(job)

    def job_progress_cb(self, job: Job, stream: str, done: int, total: int | None, step: str) -> None:
        tick: Tick = (job, stream, done, total, step)
        with self._lock:
            last = self._ticks[-1] if self._ticks else None
            if not step and last is not None and not last[4] and last[0] is job and last[1] == stream:
                self._ticks[-1] = tick  # a newer count of the same stream: the older one need not be shown
            else:
                self._ticks.append(tick)
            if self._posted:
                return
            self._posted = True
        self._progress_posted.emit()

    def job_finished_cb(self, outcome: JobOutcome) -> None:
        self._finished_posted.emit(outcome)

    # GUI thread.
    def deliver_progress(self) -> None:
        """Emit the ticks waiting, oldest first (also called before a run's start or end is delivered)."""
        with self._lock:
            ticks, self._ticks, self._posted = self._ticks, [], False
        self._timer.stop()
        for tick in ticks:
            self.job_progress.emit(*tick)

    def _deliver_started(self, job: Job) -> None:
        self.deliver_progress()
        self.job_started.emit(job)

    def _deliver_finished(self, outcome: JobOutcome) -> None:
        self.deliver_progress()
        self.job_finished.emit(outcome)


class BridgeListener:
    """Adapts RunnerBridge to the RunnerListener protocol (signal names and callback names can't coincide)."""

    def __init__(self, bridge: RunnerBridge) -> None:
        self._bridge = bridge

    def job_started(self, job: Job) -> None:
        self._bridge.job_started_cb(job)

    def job_progress(self, job: Job, stream: str, done: int, total: int | None, step: str) -> None:
        self._bridge.job_progress_cb(job, stream, done, total, step)

    def job_finished(self, outcome: JobOutcome) -> None:
        self._bridge.job_finished_cb(outcome)
