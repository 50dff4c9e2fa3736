"""Each service's published rate limit, and the share of it ClinicSync's own budgets use: the one place these
numbers live (Stripe's sit with its other documented limits in stripe_limits.py)."""

from __future__ import annotations

from clinicsync.stripe_limits import RATE_LIMIT_PER_SECOND as STRIPE_PER_SECOND

CLINIKO_PER_MINUTE = 200  # per user (docs/cliniko-api.md)
CALCOM_PER_MINUTE = 120  # per API key; a burst over it blocks the key for 60 s (docs/calcom-api.md)
CALCOM_BLOCK_SECONDS = 60  # how long that block lasts

# What ClinicSync allows itself: headroom for the clinic's other integrations, the dashboards and clock skew.
STRIPE_BUDGET_FRACTION = 0.9
CLINIKO_BUDGET_PER_MINUTE = 150
CALCOM_BUDGET_PER_MINUTE = 100


def published_per_second(service: str) -> float:
    """Requests per second a service allows: "stripe_live", "stripe_test", "cliniko" or "calcom"."""
    return {
        "stripe_live": float(STRIPE_PER_SECOND["live"]),
        "stripe_test": float(STRIPE_PER_SECOND["test"]),
        "cliniko": CLINIKO_PER_MINUTE / 60,
        "calcom": CALCOM_PER_MINUTE / 60,
    }[service]


def window_burst(limit: float) -> int:
    """Requests a bucket of `limit` per window lets out at once by default (it starts full): a tenth of the
    window's allowance, at least 1 (Cliniko's and Cal.com's per-minute budgets)."""
    return max(1, int(limit * 0.1))


def per_second_burst(limit_per_second: float) -> int:
    """Requests Stripe's per-second bucket lets out at once. In any second the bucket lets out its rate plus its
    burst, and requests sent just before a second may arrive in it: a twentieth of the rate keeps that under
    Stripe's own limit (live 90 + 4 < 100, test 22.5 + 1 < 25) with room for such late arrivals; a fifth (18) let
    108 out in some seconds, and a tenth (9) still met the odd 429."""
    return max(1, int(limit_per_second / 20))


def budget_burst(service: str) -> int:
    """Requests ClinicSync's default budget for a service lets out at once, before its rate applies."""
    if service.startswith("stripe"):
        return per_second_burst(budget_per_second(service))
    return window_burst(budget_per_second(service) * 60)


def budget_per_second(service: str) -> float:
    """Requests per second ClinicSync's default budgets send to a service."""
    return {
        "stripe_live": STRIPE_PER_SECOND["live"] * STRIPE_BUDGET_FRACTION,
        "stripe_test": STRIPE_PER_SECOND["test"] * STRIPE_BUDGET_FRACTION,
        "cliniko": CLINIKO_BUDGET_PER_MINUTE / 60,
        "calcom": CALCOM_BUDGET_PER_MINUTE / 60,
    }[service]
