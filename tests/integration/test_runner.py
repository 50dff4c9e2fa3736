"""The Qt-free runner: one worker thread, jobs in order, listener callbacks, pause, cancel and clean shutdown."""

from __future__ import annotations

import threading

from clinicsync.secrets import CLINIKO_API_KEY, STRIPE_API_KEY
from clinicsync.sync.runner import JobOutcome, SyncRunner, read_credentials
from tests.support import admin, context


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
        assert max(done for _, done, _, _ in listener.progress) == 120
        assert any(total == 120 for _, _, total, _ in listener.progress)
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
