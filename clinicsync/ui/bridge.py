"""The one bridge from the Qt-free runner to the GUI: runner callbacks (on the worker thread) become Qt signals,
which Qt delivers to widgets on the GUI thread (queued connections across threads).

Progress is coalesced: a sync reports every record (20,000 ticks for a big clinic), and each tick delivered on its
own costs the GUI thread an event and the interpreter lock, so the worker keeps what it reports in a short queue
that the GUI thread empties at most every PROGRESS_INTERVAL_MS for progress, at once for a run's start and end. A
tick that only moves a count replaces the count before it; named steps ("Reading patient records") all arrive;
everything arrives in the order it was reported, so a run's last tick comes before its `job_finished`."""

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

    # From the worker thread to this object's (the GUI) thread, queued: deliver what waits, now or soon.
    _wake_now = Signal()
    _wake_soon = Signal()

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._lock = threading.Lock()
        # What the worker reported and the GUI thread has not yet been told, in order: ("started", job),
        # ("progress", tick), ("finished", outcome). Guarded by _lock, as is _posted (a wake-up is on its way).
        self._waiting: list[tuple[str, object]] = []
        self._posted = False
        self._timer = QTimer(self, singleShot=True, interval=PROGRESS_INTERVAL_MS)
        self._timer.timeout.connect(self.deliver)
        self._wake_now.connect(self.deliver)
        self._wake_soon.connect(self._timer.start)

    # RunnerListener protocol: called on the runner's worker thread; emitting is thread-safe.
    def job_started_cb(self, job: Job) -> None:
        with self._lock:
            self._waiting.append(("started", job))
        self._wake_now.emit()

    def job_progress_cb(self, job: Job, stream: str, done: int, total: int | None, step: str) -> None:
        tick: Tick = (job, stream, done, total, step)
        with self._lock:
            kind, last = self._waiting[-1] if self._waiting else ("", None)
            if kind == "progress" and not step and _same_count(last, tick):  # type: ignore[arg-type]
                self._waiting[-1] = ("progress", tick)  # a newer count: the older one need not be shown
            else:
                self._waiting.append(("progress", tick))
            if self._posted:
                return
            self._posted = True
        self._wake_soon.emit()

    def job_finished_cb(self, outcome: JobOutcome) -> None:
        with self._lock:
            self._waiting.append(("finished", outcome))
        self._wake_now.emit()

    # GUI thread.
    def deliver(self) -> None:
        """Emit what the worker reported and the GUI thread was not yet told, oldest first."""
        with self._lock:
            waiting, self._waiting, self._posted = self._waiting, [], False
        self._timer.stop()
        for kind, what in waiting:
            if kind == "progress":
                self.job_progress.emit(*what)  # type: ignore[misc]
            elif kind == "started":
                self.job_started.emit(what)
            else:
                self.job_finished.emit(what)


def _same_count(last: Tick, tick: Tick) -> bool:
    """`tick` only moves on the count of `last` (same run, same stream, no step named in `last`)."""
    return last[0] is tick[0] and last[1] == tick[1] and not last[4]


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
