"""The Qt-free runner: one worker thread, jobs in order, listener callbacks, pause, cancel and clean shutdown."""

from __future__ import annotations

import threading
import time

from clinicsync.secrets import CLINIKO_API_KEY, STRIPE_API_KEY
from clinicsync.sync import runner as runner_module
from clinicsync.sync.runner import JobOutcome, SyncRunner, read_credentials
from tests.support import admin, context, profile_env


class Recorder:
    def __init__(self) -> None:
        self.started: list[int] = []
        self.progress: list[tuple[str, int, int | None, str]] = []
        self.finished: list[JobOutcome] = []
        self.threads: set[str] = set()
        self.done = threading.Event()

    def job_started(self, job):
        self.started.append(job.id)
        self.threads.add(threading.current_thread().name)

    def job_progress(self, job, stream, done, total, step):
        self.progress.append((stream, done, total, step))

    def job_finished(self, outcome):
        self.finished.append(outcome)
        self.done.set()


def start(env):
    ctx = context(env)
    listener = Recorder()
    runner = SyncRunner(ctx.paths, ctx.settings, listener)
    credentials = read_credentials(ctx.secrets, (CLINIKO_API_KEY, STRIPE_API_KEY))
    return ctx, runner, listener, credentials


def test_a_job_runs_on_the_worker_thread_and_reports_progress_and_counts(make_sandbox, env_for):
    sandbox = make_sandbox(profile="clean", patients=120)
    _, runner, listener, credentials = start(env_for(sandbox))
    try:
        job = runner.submit(trigger="manual", credentials=credentials)
        assert job is not None
        assert listener.done.wait(30)
        (outcome,) = listener.finished
        assert outcome.failure_kind is None and not outcome.needs_attention
        assert outcome.results[0].counts["created"] == 120
        assert listener.threads == {"sync-runner"}
        # The patients' progress (invoice linking, on by default, reports its own after it).
        patients = [(done, total) for stream, done, total, _ in listener.progress if stream == "cliniko.patients"]
        assert max(done for done, _ in patients) == 120
        assert any(total == 120 for _, total in patients)
    finally:
        assert runner.shutdown(10)


def test_pause_is_honoured_and_a_bad_key_needs_attention(make_sandbox, env_for):
    sandbox = make_sandbox(profile="clean", patients=3)
    ctx, runner, listener, credentials = start(env_for(sandbox))
    try:
        ctx.settings.set("sync.paused", True)
        assert runner.submit(trigger="schedule", credentials=credentials) is None
        ctx.settings.set("sync.paused", False)
        bad = dict(credentials, **{STRIPE_API_KEY: "sk_test_sandbox_wrong"})
        assert runner.submit(trigger="manual", credentials=bad) is not None
        assert listener.done.wait(30)
        (outcome,) = listener.finished
        assert outcome.failure_kind == "auth" and outcome.needs_attention
        assert "401" in outcome.message
    finally:
        assert runner.shutdown(10)


def test_cancel_stops_a_running_sync_and_shutdown_joins_the_worker(make_sandbox, env_for):
    sandbox = make_sandbox(profile="clean", patients=300)
    admin(sandbox.stripe_url, "config", latency_ms=20)
    _, runner, listener, credentials = start(env_for(sandbox, CLINICSYNC_STRIPE_WORKERS="1"))
    runner.submit(trigger="manual", credentials=credentials)
    while not listener.progress:
        threading.Event().wait(0.01)
    runner.cancel()
    assert listener.done.wait(30)
    (outcome,) = listener.finished
    assert outcome.results[0].outcome == "cancelled"
    assert outcome.results[0].counts["created"] < 300
    assert runner.shutdown(10)
    assert not runner.busy


def _one_running_one_waiting(tmp_path, monkeypatch):
    """A runner whose first sync keeps running until cancelled, and a second sync waiting behind it."""
    ran: list[str] = []
    first_started = threading.Event()

    def fake_run_sync(paths, settings, secrets, *, streams, trigger, dry_run, cancel, progress):
        ran.append(trigger)
        if len(ran) == 1:
            first_started.set()
            deadline = time.monotonic() + 10
            while not cancel.cancelled and time.monotonic() < deadline:
                time.sleep(0.005)
        return []

    monkeypatch.setattr(runner_module, "run_sync", fake_run_sync)
    ctx = context(profile_env(tmp_path / "home", {}))
    listener = Recorder()
    runner = SyncRunner(ctx.paths, ctx.settings, listener)
    running = runner.submit(trigger="manual", credentials={})
    assert running is not None and first_started.wait(10)
    waiting = runner.submit(trigger="retry", credentials={})
    assert waiting is not None
    return ctx, runner, listener, ran, waiting


def test_shutdown_drops_a_waiting_job_and_reports_it_cancelled(tmp_path, monkeypatch):
    """A sync waiting behind the running one must not start once shutdown began (it would get a fresh cancel
    token and run to the end, or be killed mid-write at exit): it is reported cancelled without running."""
    _, runner, listener, ran, waiting = _one_running_one_waiting(tmp_path, monkeypatch)
    running_id = listener.started[0]

    assert runner.shutdown(10)
    assert ran == ["manual"], "the waiting sync ran after shutdown cancelled the running one"
    assert listener.started == [running_id]
    assert [o.job.id for o in listener.finished] == [running_id, waiting.id]
    dropped = listener.finished[1]
    assert dropped.failure_kind == "cancelled" and not dropped.results and not dropped.needs_attention
    assert not runner.busy
    assert runner.submit(trigger="manual", credentials={}) is None, "a stopping runner accepted a new job"


def _wait_for_finished(listener: Recorder, count: int) -> None:
    deadline = time.monotonic() + 10
    while len(listener.finished) < count and time.monotonic() < deadline:
        time.sleep(0.005)


def test_cancel_also_stops_the_sync_waiting_behind_the_running_one(tmp_path, monkeypatch):
    """Cancel means "stop syncing now": before, the waiting sync started as soon as the running one stopped."""
    _, runner, listener, ran, waiting = _one_running_one_waiting(tmp_path, monkeypatch)
    try:
        runner.cancel()
        _wait_for_finished(listener, 2)
        assert ran == ["manual"]
        dropped = listener.finished[1]
        assert dropped.job.id == waiting.id and dropped.failure_kind == "cancelled"
        assert "cancelled" in dropped.message and not dropped.needs_attention
        assert runner.submit(trigger="manual", credentials={}) is not None, "a later Sync now runs again"
        _wait_for_finished(listener, 3)
        assert ran == ["manual", "manual"]
    finally:
        runner.shutdown(10)


def test_pausing_stops_a_sync_that_was_waiting_from_starting(tmp_path, monkeypatch):
    """The paused strip says nothing is sent to Stripe until you resume; a queued sync must honour it."""
    ctx, runner, listener, ran, waiting = _one_running_one_waiting(tmp_path, monkeypatch)
    try:
        ctx.settings.set("sync.paused", True)
        runner._cancel.cancel()  # the running sync reaches its end (as a real one would, later)
        _wait_for_finished(listener, 2)
        assert ran == ["manual"]
        dropped = listener.finished[1]
        assert dropped.job.id == waiting.id and dropped.failure_kind == "cancelled" and "paused" in dropped.message
    finally:
        runner.shutdown(10)
