"""The benchmarks' one floor function: a lower bound any client must respect, at each rate and latency."""

from __future__ import annotations

import pytest

from benchmarks import floors
from clinicsync import rate_limits


def test_a_paged_read_slower_than_its_latency_costs_one_token_a_page_after_the_burst():
    pages = 201  # 20,000 records at 100 a page, plus the account read
    result = floors.floors([floors.Load("cliniko", pages, dependent=pages)], latency_s=0.08)
    burst = rate_limits.budget_burst("cliniko")
    expected = burst * 0.08 + (pages - burst) / rate_limits.budget_per_second("cliniko")
    assert result.budget_s == pytest.approx(expected)
    # not a latency plus a token per page, which a real run beat by half
    assert result.budget_s < pages * (0.08 + 1 / rate_limits.budget_per_second("cliniko"))


def test_a_chain_faster_than_its_tokens_costs_one_latency_a_step_then_the_writes_go_at_the_rate():
    result = floors.floors([floors.Load("stripe_live", 2022, dependent=22)], latency_s=0.08)
    rate = rate_limits.budget_per_second("stripe_live")
    assert result.budget_s == pytest.approx(22 * 0.08 + 2000 / rate)
    assert result.published_s < result.budget_s  # the published limit is the faster one


def test_services_overlap_so_the_floor_is_the_slowest_service():
    loads = [floors.Load("cliniko", 21, dependent=21), floors.Load("stripe_live", 2022, dependent=22)]
    result = floors.floors(loads, latency_s=0.08)
    assert result.budget_s == max(b for _, b in result.per_service.values()) == result.per_service["stripe_live"][1]


def test_a_few_requests_within_the_burst_cost_only_their_latencies():
    result = floors.floors([floors.Load("calcom", 3, dependent=3)], latency_s=0.05)
    assert result.budget_s == pytest.approx(0.15)
