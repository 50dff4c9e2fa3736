"""The one floor function every benchmark uses: the shortest time any client could take for a given number of
requests to each service, at the services' published limits and at ClinicSync's own budgets.

Per service, the requests sent as early as a token bucket at the service's rate allows (it starts full with the
app's burst, `rate_limits.budget_burst`, and refills continuously): first the requests that must wait for the
answer to the one before them (a listing's next page, a plan's next step, the account read before the listing),
then the rest at once, as tokens come; the wait for an answer and the wait for a token overlap. Services are used
at the same time (Stripe writes go out while Cliniko pages are read), so the floor is the longest service's, not
their sum. (Until 2026-12-04 each dependent request was charged a latency plus a token, which overstated a paged
read by a quarter or more: a reconciliation at 2,000 patients measured 0.47 of that "floor".)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from clinicsync import rate_limits

SERVICES = ("stripe_live", "stripe_test", "cliniko", "calcom")


@dataclass(frozen=True)
class Load:
    service: str  # one of SERVICES
    requests: int
    dependent: int = 0  # requests that wait for the answer to the one before them


@dataclass(frozen=True)
class Floors:
    published_s: float
    budget_s: float
    per_service: dict[str, tuple[float, float]]  # service → (published floor, budget floor)


def _service_floor(load: Load, latency_s: float, per_second: float, burst: int) -> float:
    """The earliest the last answer can come: the requests sent one after another, each as soon as both allow it —
    a dependent one (the first `load.dependent`, then the first of the rest) once the answer before it is in, any
    other at once — and a token is in the bucket (it starts full with `burst`, refills at `per_second`, never
    holding more than `burst`). The wait for an answer and the wait for a token overlap."""
    tokens, refilled_at, sent_at = float(burst), 0.0, 0.0
    for number in range(load.requests):
        ready = sent_at + latency_s if 0 < number <= load.dependent else sent_at
        tokens = min(float(burst), tokens + (ready - refilled_at) * per_second)
        if tokens < 1.0:
            ready += (1.0 - tokens) / per_second
            tokens = 1.0
        tokens, refilled_at, sent_at = tokens - 1.0, ready, ready
    return sent_at + latency_s if load.requests else 0.0


def floors(loads: Sequence[Load], latency_s: float) -> Floors:
    per_service: dict[str, tuple[float, float]] = {}
    for load in loads:
        burst = rate_limits.budget_burst(load.service)
        published = _service_floor(load, latency_s, rate_limits.published_per_second(load.service), burst)
        budget = _service_floor(load, latency_s, rate_limits.budget_per_second(load.service), burst)
        before = per_service.get(load.service, (0.0, 0.0))
        per_service[load.service] = (before[0] + published, before[1] + budget)
    return Floors(
        published_s=max((p for p, _ in per_service.values()), default=0.0),
        budget_s=max((b for _, b in per_service.values()), default=0.0),
        per_service=per_service,
    )


def report(wall_s: float, loads: Sequence[Load], latency_s: float, indent: str = "  ") -> Floors:
    """Print both floors, what they are made of, and wall / floor against each; return them."""
    result = floors(loads, latency_s)
    for load in loads:
        published, budget = result.per_service[load.service]
        print(
            f"{indent}{load.service}: {load.requests} requests ({load.dependent} dependent x {latency_s * 1000:.0f} ms)"
            f" → floor {published:.2f} s at the published limit "
            f"({rate_limits.published_per_second(load.service):g}/s), {budget:.2f} s at the app's budget "
            f"({rate_limits.budget_per_second(load.service):g}/s)"
        )
    for name, floor_s in (("the published limits", result.published_s), ("the app's budgets", result.budget_s)):
        print(f"{indent}floor at {name}: {floor_s:.2f} s → wall / floor {ratio(wall_s, floor_s):.2f}")
    return result


TARGET_RATIO = 1.15  # the issues' target for a first sync: wall <= 1.15 x the floor at the app's budgets


def ratio(wall_s: float, floor_s: float) -> float:
    """wall / floor; infinite when the floor is 0 (no latency and every request within the burst: a smoke run)."""
    return wall_s / floor_s if floor_s > 0 else math.inf


def exit_status(finished: bool, ratio: float) -> int:
    """A benchmark's exit status, which `make bench` lists misses by: 0 when the run finished as it should and met
    TARGET_RATIO, else 1."""
    return 0 if finished and ratio <= TARGET_RATIO else 1


def print_target(wall_s: float, result: Floors, indent: str = "  ") -> float:
    """Print whether wall meets TARGET_RATIO x the floor at the app's budgets; return wall / that floor."""
    measured = ratio(wall_s, result.budget_s)
    verdict = "meets" if measured <= TARGET_RATIO else "misses"
    print(f"{indent}target wall <= {TARGET_RATIO} x the floor at the app's budgets: {measured:.2f} ({verdict} it)")
    return measured
