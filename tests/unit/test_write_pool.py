"""WritePool: writes for one record stay in order, different records run in parallel, errors surface."""

from __future__ import annotations

import threading
import time

import pytest

from clinicsync.sync.pool import WritePool


def test_writes_for_the_same_record_run_in_submission_order():
    pool = WritePool(4)
    order: list[int] = []
    lock = threading.Lock()

    def write(n: int, delay: float):
        def work():
            time.sleep(delay)
            with lock:
                order.append(n)

        return work

    pool.submit("patient-1", write(1, 0.05))
    pool.submit("patient-1", write(2, 0.0))
    pool.drain()
    pool.close()
    assert order == [1, 2]


def test_different_records_overlap():
    pool = WritePool(4)
    running = 0
    peak = 0
    lock = threading.Lock()

    def work():
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        time.sleep(0.05)
        with lock:
            running -= 1

    for n in range(8):
        pool.submit(f"patient-{n}", work)
    pool.drain()
    pool.close()
    assert peak > 1


def test_a_failed_write_is_raised_on_drain_and_stops_new_submissions():
    pool = WritePool(2)

    def boom():
        raise RuntimeError("stripe is down")

    pool.submit("a", boom)
    with pytest.raises(RuntimeError, match="stripe is down"):
        pool.drain()
    with pytest.raises(RuntimeError):
        pool.submit("b", lambda: None)
    pool.close()


def test_inline_pool_runs_on_the_callers_thread():
    pool = WritePool(0)
    seen: list[str] = []
    pool.submit("a", lambda: seen.append(threading.current_thread().name))
    assert seen == [threading.current_thread().name]


def test_writes_queued_behind_a_failed_one_are_not_sent():
    pool = WritePool(1)
    release = threading.Event()
    sent: list[str] = []

    def boom():
        release.wait(5)
        raise RuntimeError("stripe is down")

    pool.submit("a", boom)
    pool.submit("b", lambda: sent.append("b"))  # queued behind "a" on the one worker
    release.set()
    with pytest.raises(RuntimeError, match="stripe is down"):
        pool.drain()
    pool.close()
    assert sent == []
