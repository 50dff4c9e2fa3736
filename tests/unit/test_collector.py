"""Full garbage collections wait while a job runs (they would hold the interpreter from the GUI thread); the young
generations are still collected, and the process's own thresholds come back when the last job ends."""

from __future__ import annotations

import gc
import threading

from clinicsync.sync.collector import DEFERRED_THRESHOLD, full_collections_deferred


def test_full_collections_wait_until_the_last_overlapping_job_ends() -> None:
    before = gc.get_threshold()
    first_in, second_out = threading.Event(), threading.Event()
    seen: list[tuple[int, int, int]] = []

    def other_job() -> None:  # a second runner's job (the sandbox trial's) overlapping the first
        with full_collections_deferred():
            first_in.wait(5)
        seen.append(gc.get_threshold())
        second_out.set()

    with full_collections_deferred():
        assert gc.get_threshold() == (before[0], before[1], DEFERRED_THRESHOLD), "young passes as before"
        thread = threading.Thread(target=other_job)
        thread.start()
        first_in.set()
        assert second_out.wait(5)
        assert seen == [(before[0], before[1], DEFERRED_THRESHOLD)], "still deferred: this job still runs"
    thread.join(5)
    assert gc.get_threshold() == before


def test_the_threshold_comes_back_when_a_job_fails() -> None:
    before = gc.get_threshold()
    try:
        with full_collections_deferred():
            raise RuntimeError("a sync that failed")
    except RuntimeError:
        pass
    assert gc.get_threshold() == before
