"""Where the scheduled reconciliation meets the reconciliation engine.

The scheduler's reconciliation job asks the runner for a job with trigger "reconcile"; the runner runs it as a job
of kind "reconcile": the real reconciliation (clinicsync.sync.reconcile_run.run_reconcile), the same as one started
from the Reconciliation tab or `clinicsync reconcile`. Whatever registers a reconciler with `register_reconciler`
replaces it for the schedule's job (tests that count calls; an embedding app): the runner then calls
`run_reconciliation`. Rows answered "not available yet" come from versions before the real one was wired in.

A reconciler receives a `ReconcileRequest` (paths, settings, keys, cancel token, progress) on the runner's worker
thread, while this process holds the profile's sync lock, and returns a `ReconcileReport`. To tell a person about
findings it calls `clinicsync.sync.alerts.report_reconciliation(...)`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from clinicsync.outcomes import Outcome
from clinicsync.paths import AppPaths
from clinicsync.profile_lock import ProfileLock
from clinicsync.retry import CancelToken
from clinicsync.secrets import SecretStore
from clinicsync.store.settings import Settings
from clinicsync.sync.engine import Progress, RunResult
from clinicsync.sync.history import record_not_run

log = logging.getLogger(__name__)

RECONCILE = "reconcile"  # the trigger of a reconciliation job, and the stream name of its history rows
NOT_AVAILABLE = "Reconciliation is not available yet."


@dataclass(frozen=True)
class ReconcileRequest:
    paths: AppPaths
    settings: Settings
    secrets: SecretStore
    cancel: CancelToken
    progress: Progress
    trigger: str = RECONCILE


@dataclass(frozen=True)
class ReconcileReport:
    run_id: int  # its history row (SyncRun, stream "reconcile")
    outcome: str  # an Outcome
    findings: int = 0
    message: str = ""


Reconciler = Callable[[ReconcileRequest], ReconcileReport]
_registered: list[Reconciler] = []


def register_reconciler(reconciler: Reconciler | None) -> None:
    """Install the reconciliation engine's entry point (None removes it)."""
    _registered.clear()
    if reconciler is not None:
        _registered.append(reconciler)


def reconciler_registered() -> bool:
    return bool(_registered)


def run_reconciliation(
    paths: AppPaths,
    settings: Settings,
    secrets: SecretStore,
    *,
    cancel: CancelToken,
    progress: Progress,
    trigger: str = RECONCILE,
) -> list[RunResult]:
    """Run the registered reconciler under the profile lock (one job per profile at a time, across processes),
    or record that there is none yet."""
    if not _registered:
        (run_id,) = record_not_run([RECONCILE], trigger, Outcome.SKIPPED, NOT_AVAILABLE)
        return [RunResult(run_id=run_id, stream=RECONCILE, outcome=Outcome.SKIPPED, counts={}, message=NOT_AVAILABLE)]
    with ProfileLock(paths.lock_file):
        report = _registered[0](ReconcileRequest(paths, settings, secrets, cancel, progress, trigger))
    return [
        RunResult(
            run_id=report.run_id,
            stream=RECONCILE,
            outcome=report.outcome,
            counts={"findings": report.findings},
            message=report.message,
        )
    ]
