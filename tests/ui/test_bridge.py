"""The runner bridge coalesces a sync's per-record progress on its way to the GUI thread, without losing a named
step, the last count, or the order of a run's start, progress and end."""

from __future__ import annotations

import threading

from clinicsync.sync.runner import Job, JobOutcome
from clinicsync.ui.bridge import BridgeListener, RunnerBridge

WAIT_MS = 10_000
TICKS = 5_000


def test_progress_from_the_worker_is_coalesced_but_named_steps_and_the_last_count_arrive_in_order(qtbot) -> None:
    bridge = RunnerBridge()
    listener = BridgeListener(bridge)
    seen: list[tuple[str, object, ...]] = []
    bridge.job_started.connect(lambda job: seen.append(("started", job.id)))
    bridge.job_progress.connect(lambda job, stream, done, total, step: seen.append(("progress", stream, done, step)))
    bridge.job_finished.connect(lambda outcome: seen.append(("finished", outcome.job.id)))
    job, next_job = Job(7, "manual"), Job(8, "schedule")
    events: list[tuple[str, int]] = []  # (what, job id) in the order the GUI thread was told
    bridge.job_started.connect(lambda job: events.append(("started", job.id)))
    bridge.job_progress.connect(lambda job, *_: events.append(("progress", job.id)))
    bridge.job_finished.connect(lambda outcome: events.append(("finished", outcome.job.id)))

    def worker() -> None:  # a sync on the runner's thread: one tick per record, named steps between passes
        listener.job_started(job)
        listener.job_progress(job, "cliniko.patients", 0, None, "Reading patient records")
        for done in range(1, TICKS + 1):
            listener.job_progress(job, "cliniko.patients", done, TICKS, "")
        listener.job_progress(job, "cliniko.products", 0, None, "Reading product records")
        listener.job_progress(job, "cliniko.products", 1, 1, "")
        listener.job_finished(JobOutcome(job))
        listener.job_started(next_job)  # the next run starts at once: its ticks must not overtake its start
        listener.job_progress(next_job, "cliniko.patients", 1, 2, "")
        listener.job_finished(JobOutcome(next_job))

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join()  # everything is reported before the GUI thread hears any of it: the hardest case for the order
    qtbot.waitUntil(lambda: ("finished", 8) in events, timeout=WAIT_MS)

    run_events = [what for what, job_id in events if job_id == 7]
    assert run_events[0] == "started" and run_events[-1] == "finished" and "progress" in run_events
    assert events[len(run_events) :] == [("started", 8), ("progress", 8), ("finished", 8)], "runs in order"
    seen = seen[: len(run_events)]
    progress = [entry for entry in seen if entry[0] == "progress"]
    assert seen[0] == ("started", 7) and seen[-1] == ("finished", 7)
    assert len(progress) < TICKS // 10, f"{len(progress)} progress signals for {TICKS} ticks: not coalesced"
    steps = [entry[3] for entry in progress if entry[3]]
    assert steps == ["Reading patient records", "Reading product records"], "every named step, in order"
    patients = [entry[2] for entry in progress if entry[1] == "cliniko.patients" and not entry[3]]
    assert patients == sorted(patients) and patients[-1] == TICKS, "counts only move forward, up to the last one"
    assert progress[-1] == ("progress", "cliniko.products", 1, ""), "the run's last tick comes before its end"


def test_a_single_tick_arrives_without_a_run_ending(qtbot) -> None:
    bridge = RunnerBridge()
    job = Job(1, "manual")
    with qtbot.waitSignal(bridge.job_progress, timeout=WAIT_MS) as delivered:
        threading.Thread(target=bridge.job_progress_cb, args=(job, "cliniko.patients", 3, 10, "")).start()
    assert delivered.args == [job, "cliniko.patients", 3, 10, ""], "a pause after a tick does not hold it back"
