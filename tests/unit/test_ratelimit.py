"""RequestBudget: pacing, bursts, unlimited mode, and pauses that hold back every user."""

from __future__ import annotations

import threading
import time

import pytest

from clinicsync.sources.ratelimit import RequestBudget


class FakeTime:
    """A monotonic and a wall clock that only move when someone sleeps."""

    def __init__(self, wall: float = 1_700_000_000.0) -> None:
        self.now = 100.0
        self.wall_offset = wall - self.now
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def wall(self) -> float:
        return self.now + self.wall_offset

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def budget_for(fake: FakeTime, *args, **kwargs) -> RequestBudget:
    return RequestBudget(*args, clock=fake.clock, sleep=fake.sleep, wall_clock=fake.wall, **kwargs)


@pytest.mark.parametrize("rpm", [None, 0])
def test_unlimited_budget_never_waits(rpm):
    fake = FakeTime()
    budget = budget_for(fake, rpm)
    for _ in range(1000):
        budget.acquire()
    assert budget.unlimited
    assert fake.sleeps == []


def test_burst_then_paced_at_the_budget():
    fake = FakeTime()
    budget = budget_for(fake, 60)  # one a second, burst 6
    for _ in range(6):
        budget.acquire()
    assert fake.sleeps == []
    budget.acquire()
    assert sum(fake.sleeps) == pytest.approx(1.0)


def test_n_plus_one_requests_at_n_per_minute_must_wait():
    fake = FakeTime()
    budget = budget_for(fake, 60)
    for _ in range(61):
        budget.acquire()
    # 6 from the burst, the other 55 one second apart.
    assert fake.now - 100.0 == pytest.approx(55.0)
    assert all(s <= 1.0 + 1e-9 for s in fake.sleeps)


def test_default_burst_is_ten_percent_with_a_minimum_of_one():
    assert RequestBudget(150).capacity == 15
    assert RequestBudget(5).capacity == 1


def test_per_seconds_budgets_for_stripe():
    fake = FakeTime()
    budget = budget_for(fake, limit=10, per_seconds=1, burst=1)
    for _ in range(11):
        budget.acquire()
    assert fake.now - 100.0 == pytest.approx(1.0)


def test_idle_time_refills_only_up_to_the_burst():
    fake = FakeTime()
    budget = budget_for(fake, 60, burst=2)
    budget.acquire()
    budget.acquire()
    fake.now += 3600  # an hour idle
    budget.acquire()
    budget.acquire()
    assert fake.sleeps == []
    budget.acquire()
    assert sum(fake.sleeps) == pytest.approx(1.0)


def test_pause_until_holds_back_the_next_acquire():
    fake = FakeTime()
    budget = budget_for(fake, None)
    budget.pause_until(fake.wall() + 5)
    assert budget.paused_for() == pytest.approx(5)
    budget.acquire()
    assert sum(fake.sleeps) == pytest.approx(5)
    budget.acquire()  # the pause is over
    assert sum(fake.sleeps) == pytest.approx(5)


def test_pause_in_the_past_is_ignored_and_pauses_never_shorten():
    fake = FakeTime()
    budget = budget_for(fake, None)
    budget.pause_until(fake.wall() - 30)
    assert budget.paused_for() == 0
    budget.pause_for(10)
    budget.pause_for(2)
    assert budget.paused_for() == pytest.approx(10)


def test_pause_blocks_every_thread():
    budget = RequestBudget(None)
    budget.pause_for(0.3)
    started = time.monotonic()
    finished: list[float] = []
    threads = [threading.Thread(target=lambda: (budget.acquire(), finished.append(time.monotonic()))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(5)
    assert len(finished) == 4
    assert all(f - started >= 0.25 for f in finished)


def test_a_thread_already_waiting_for_a_slot_also_honours_a_new_pause():
    budget = RequestBudget(limit=2, per_seconds=1, burst=1)  # the second request waits 0.5 s
    budget.acquire()
    started = time.monotonic()
    done: list[float] = []
    waiter = threading.Thread(target=lambda: (budget.acquire(), done.append(time.monotonic())))
    waiter.start()
    time.sleep(0.1)
    budget.pause_for(0.9)  # set while the waiter sleeps for its slot
    waiter.join(5)
    assert done and done[0] - started >= 0.9


def test_concurrent_acquires_are_paced():
    budget = RequestBudget(limit=100, per_seconds=1, burst=1)
    started = time.monotonic()

    def worker():
        for _ in range(5):
            budget.acquire()

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(5)
    assert time.monotonic() - started >= 0.18  # 20 requests, 1 from the burst, 19 × 10 ms


def test_ambiguous_construction_is_refused():
    with pytest.raises(ValueError):
        RequestBudget(60, limit=1)
    with pytest.raises(ValueError):
        RequestBudget(60, per_seconds=1)
    with pytest.raises(ValueError):
        RequestBudget(limit=10, per_seconds=0)
