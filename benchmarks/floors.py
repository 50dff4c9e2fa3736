"""The one floor function every benchmark uses: the shortest time any client could take for a given number of
requests to each service, at the services' published limits and at ClinicSync's own budgets.

Per service: its requests at its rate, as a continuous rate (requests / rate), plus one latency for each request
that must wait for the one before it (a listing's next page, a plan's next step, the account read before the
listing). Services are used at the same time (Stripe writes go out while Cliniko pages are read), so the floor is
the longest service's, not their sum.
"""

from __future__ import annotations

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


def floors(loads: Sequence[Load], latency_s: float) -> Floors:
    per_service: dict[str, tuple[float, float]] = {}
    for load in loads:
        chain = load.dependent * latency_s
        published = load.requests / rate_limits.published_per_second(load.service) + chain
        budget = load.requests / rate_limits.budget_per_second(load.service) + chain
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
        print(f"{indent}floor at {name}: {floor_s:.2f} s → wall / floor {wall_s / floor_s:.2f}")
    return result


TARGET_RATIO = 1.15  # the issues' target for a first sync: wall <= 1.15 x the floor at the app's budgets


def print_target(wall_s: float, result: Floors, indent: str = "  ") -> float:
    """Print whether wall meets TARGET_RATIO x the floor at the app's budgets; return wall / that floor."""
    ratio = wall_s / result.budget_s
    verdict = "meets" if ratio <= TARGET_RATIO else "misses"
    print(f"{indent}target wall <= {TARGET_RATIO} x the floor at the app's budgets: {ratio:.2f} ({verdict} it)")
    return ratio
