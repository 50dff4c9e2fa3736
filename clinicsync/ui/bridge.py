"""The one bridge from the Qt-free runner to the GUI: runner callbacks (on the worker thread) become Qt signals,
which Qt delivers to widgets on the GUI thread (queued connections across threads)."""

from __future__ import annotations

from PySide6.QtCore import QObject, Signal

from clinicsync.sync.runner import Job, JobOutcome


class RunnerBridge(QObject):
    job_started = Signal(object)  # Job
    job_progress = Signal(object, str, int, object, str)  # Job, stream, done, total (int | None), step
    job_finished = Signal(object)  # JobOutcome

    # RunnerListener protocol: called on the runner's worker thread; emitting is thread-safe.
    def job_started_cb(self, job: Job) -> None:
        self.job_started.emit(job)

    def job_progress_cb(self, job: Job, stream: str, done: int, total: int | None, step: str) -> None:
        self.job_progress.emit(job, stream, done, total, step)

    def job_finished_cb(self, outcome: JobOutcome) -> None:
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
