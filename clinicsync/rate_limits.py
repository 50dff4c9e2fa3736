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


def budget_per_second(service: str) -> float:
    """Requests per second ClinicSync's default budgets send to a service."""
    return {
        "stripe_live": STRIPE_PER_SECOND["live"] * STRIPE_BUDGET_FRACTION,
        "stripe_test": STRIPE_PER_SECOND["test"] * STRIPE_BUDGET_FRACTION,
        "cliniko": CLINIKO_BUDGET_PER_MINUTE / 60,
        "calcom": CALCOM_BUDGET_PER_MINUTE / 60,
    }[service]
