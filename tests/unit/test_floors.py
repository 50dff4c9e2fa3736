"""The benchmarks' one floor function: the earliest any client could finish, at each rate, burst and latency."""

from __future__ import annotations

import pytest

from benchmarks import floors
from clinicsync import rate_limits

LATENCY = 0.08


def test_a_paged_read_slower_than_its_latency_is_held_by_the_tokens_after_the_burst():
    pages = 201  # 20,000 records at 100 a page, plus the account read
    result = floors.floors([floors.Load("cliniko", pages, dependent=pages)], latency_s=LATENCY)
    rate, burst = rate_limits.budget_per_second("cliniko"), rate_limits.budget_burst("cliniko")
    tokens_alone = (pages - burst) / rate
    assert tokens_alone < result.budget_s < tokens_alone + 2 * LATENCY
    # not a latency plus a token per page (the floor before 2026-12-04), which real runs beat
    assert result.budget_s < pages * (LATENCY + 1 / rate) * 0.8


def test_a_chain_faster_than_its_tokens_costs_one_latency_a_step_then_the_writes_go_at_the_rate():
    result = floors.floors([floors.Load("stripe_live", 2022, dependent=22)], latency_s=LATENCY)
    rate, burst = rate_limits.budget_per_second("stripe_live"), rate_limits.budget_burst("stripe_live")
    assert result.budget_s == pytest.approx(22 * LATENCY + (2000 - burst) / rate + LATENCY, abs=0.05)
    assert result.published_s < result.budget_s  # the published limit is the faster one


def test_services_overlap_so_the_floor_is_the_slowest_service():
    loads = [floors.Load("cliniko", 21, dependent=21), floors.Load("stripe_live", 2022, dependent=22)]
    result = floors.floors(loads, latency_s=LATENCY)
    assert result.budget_s == max(b for _, b in result.per_service.values()) == result.per_service["stripe_live"][1]


def test_a_few_requests_within_the_burst_cost_only_their_latencies():
    result = floors.floors([floors.Load("calcom", 3, dependent=3)], latency_s=0.05)
    assert result.budget_s == pytest.approx(0.15)


def test_requests_that_wait_for_nothing_go_out_as_fast_as_the_tokens_come():
    result = floors.floors([floors.Load("stripe_live", 904)], latency_s=LATENCY)
    assert result.budget_s == pytest.approx(900 / rate_limits.budget_per_second("stripe_live") + LATENCY)


def test_a_benchmark_fails_when_it_missed_its_target_or_did_not_finish_as_it_should():
    assert floors.exit_status(True, floors.TARGET_RATIO) == 0
    assert floors.exit_status(True, floors.TARGET_RATIO + 0.01) == 1
    assert floors.exit_status(False, 1.0) == 1


def test_a_floor_of_nothing_gives_no_ratio_to_divide_by():
    """No latency and every request within the burst (a smoke run): the floor is 0, the ratio infinite, no crash."""
    result = floors.floors([floors.Load("cliniko", 4, dependent=4)], latency_s=0.0)
    assert result.budget_s == 0.0
    assert floors.ratio(1.0, result.budget_s) == float("inf")
    assert floors.exit_status(True, floors.ratio(1.0, result.budget_s)) == 1
