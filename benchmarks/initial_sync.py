"""How long does a clinic's first sync take, and how close is that to what the APIs allow?

One `sync --once` (in-process, through the same service the CLI calls) of N patients (default 2,000) into an
empty Stripe account, against the loopback sandboxes with emulated latency on every request (default 80 ms)
and the services' rate limits enforced: Stripe LIVE mode (100 requests/s) and Cliniko (200 requests/min).
The app runs with its real defaults (retry policy, Stripe budget = 90% of the live limit, `stripe.workers`);
the Cliniko budget is set explicitly to its default, 150/min. The sync scope is set explicitly to "all" (saved
as a person would): a new live connection's default, recent activity, would leave a fifth of the sandbox's
patients out and read invoices and appointments too, and the figures would no longer compare with earlier runs.

Printed: the wall time, the requests each service received, the writes Stripe executed, a floor computed from
the minimal request count, and wall/floor. Then, for comparison, the same run with sequential writes
(`stripe.workers` = 1).

    .venv/bin/python benchmarks/initial_sync.py [--patients 2000] [--latency-ms 80] [--workers 4] [--no-baseline]

Not part of the test suite.
"""

from __future__ import annotations

import argparse
import math
import os
import tempfile
import time
from dataclasses import dataclass, replace

import httpx

from clinicsync import stripe_limits
from clinicsync.app import bootstrap
from clinicsync.logging_setup import teardown_logging
from clinicsync.mapping import store as mapping_store
from clinicsync.mapping.fields import FieldCatalogue
from clinicsync.mapping.spec import SyncScope
from clinicsync.sandbox.cliniko_emu import RATE_LIMIT_PER_MINUTE as CLINIKO_LIMIT_PER_MINUTE
from clinicsync.sandbox.launcher import start_sandbox
from clinicsync.sources.cliniko import PER_PAGE as CLINIKO_PER_PAGE
from clinicsync.store import queries
from clinicsync.store.settings import spec_for
from clinicsync.sync.service import STRIPE_BUDGET_FRACTION, run_sync

STRIPE_LIMIT_PER_SECOND = stripe_limits.RATE_LIMIT_PER_SECOND["live"]
CLINIKO_BUDGET_PER_MINUTE = spec_for("cliniko.requests_per_minute").default  # 150


@dataclass
class Measured:
    patients: int
    latency_s: float
    workers: int
    planning_s: float
    wall_s: float
    outcome: str
    created: int
    cliniko_requests: int
    cliniko_pages: int
    stripe_requests: int
    stripe_writes: int
    rate_limited: int


@dataclass
class Floor:
    cliniko_requests: int
    stripe_requests: int
    cliniko_rate_s: float
    cliniko_latency_s: float
    stripe_rate_s: float
    stripe_latency_s: float

    @property
    def cliniko_s(self) -> float:
        return max(self.cliniko_rate_s, self.cliniko_latency_s)

    @property
    def stripe_s(self) -> float:
        return max(self.stripe_rate_s, self.stripe_latency_s)

    @property
    def total_s(self) -> float:
        # The app writes to Stripe while it is still reading Cliniko pages, so the two services' times overlap:
        # the floor is the longer of the two, not their sum.
        return max(self.cliniko_s, self.stripe_s)


def window_time(requests: int, limit: int, window_s: float, latency_s: float) -> float:
    """Fixed windows of `limit` requests per `window_s`: the last request can go out when its window opens,
    (ceil(n / limit) - 1) windows after the first one, and is answered `latency_s` later."""
    return (math.ceil(requests / limit) - 1) * window_s + latency_s


def floor_for(patients: int, latency_s: float, workers: int) -> Floor:
    # Cliniko: ceil(N / 100) pages (100 a page is the maximum) + 1 request for the account and the server's clock
    # (GET /settings/public). A listing with q[]=archived_at:* returns live and archived patients in one pass.
    # Pages are read one after another (each page's `next` link comes from the previous one).
    pages = math.ceil(patients / CLINIKO_PER_PAGE)
    cliniko_requests = pages + 1
    # Stripe: the account, one listing page (the account is empty, so one request), one create per patient.
    stripe_requests = patients + 2
    # The account and the listing come one after another before the first create; then `workers` creates are in
    # flight at a time, each taking at least one latency.
    stripe_latency = 2 * latency_s + math.ceil(patients / workers) * latency_s
    return Floor(
        cliniko_requests=cliniko_requests,
        stripe_requests=stripe_requests,
        cliniko_rate_s=window_time(cliniko_requests, CLINIKO_LIMIT_PER_MINUTE, 60.0, latency_s),
        cliniko_latency_s=cliniko_requests * latency_s,
        stripe_rate_s=window_time(stripe_requests, STRIPE_LIMIT_PER_SECOND, 1.0, latency_s),
        stripe_latency_s=stripe_latency,
    )


def _stats(url: str) -> dict:
    origin = httpx.URL(url)
    response = httpx.get(f"{origin.scheme}://{origin.host}:{origin.port}/_sandbox/stats", timeout=30)
    response.raise_for_status()
    return response.json()


def urls(sandbox: object) -> tuple[str, str]:
    return sandbox.cliniko_url, sandbox.stripe_url  # type: ignore[attr-defined]


def _minus(after: dict, before: dict) -> dict:
    """The counters of the measured run alone."""
    return {
        "requests": after["requests"] - before["requests"],
        "mutations_total": after["mutations_total"] - before["mutations_total"],
        "rate_limited": after["rate_limited"] - before["rate_limited"],
        "by_endpoint": {
            name: count - before["by_endpoint"].get(name, 0) for name, count in after["by_endpoint"].items()
        },
    }


def measure(patients: int, latency_ms: float, workers: int, seed: int) -> Measured:
    sandbox = start_sandbox(
        profile="clean",
        patients=patients,
        latency_ms=latency_ms,
        stripe_mode="live",
        rate_limits=True,
        seed=seed,
    )
    try:
        with tempfile.TemporaryDirectory(prefix="clinicsync-bench-") as home:
            # The app's real defaults: only the sandbox's addresses and keys, a fresh profile, and the two settings
            # this benchmark is about. Nothing from the caller's CLINICSYNC_* environment is used.
            env = {key: value for key, value in os.environ.items() if not key.startswith("CLINICSYNC_")}
            env.update(sandbox.env())
            env["CLINICSYNC_HOME"] = home
            env["CLINICSYNC_CLINIKO_REQUESTS_PER_MINUTE"] = str(CLINIKO_BUDGET_PER_MINUTE)
            env["CLINICSYNC_STRIPE_WORKERS"] = str(workers)
            ctx = bootstrap(env)
            try:
                every_patient = replace(mapping_store.default_mapping("cliniko.patients"), scope=SyncScope(kind="all"))
                mapping_store.save(every_patient, FieldCatalogue.for_source("cliniko", "patient"), who="benchmark")
                # A first sync to a LIVE account only plans until a person approves the plan: do that first
                # (it reads everything but writes nothing), outside the measurement.
                started = time.perf_counter()
                (planned,) = run_sync(ctx.paths, ctx.settings, ctx.secrets, trigger="benchmark")
                planning = time.perf_counter() - started
                if planned.outcome == "needs_approval":
                    queries.approve_latest_plan(planned.stream)
                before = _stats(sandbox.cliniko_url), _stats(sandbox.stripe_url)
                started = time.perf_counter()
                (result,) = run_sync(ctx.paths, ctx.settings, ctx.secrets, trigger="benchmark")
                wall = time.perf_counter() - started
            finally:
                ctx.db.close()
                teardown_logging()
        cliniko, stripe = (_minus(_stats(url), earlier) for url, earlier in zip(urls(sandbox), before, strict=True))
    finally:
        sandbox.stop()
    return Measured(
        patients=patients,
        latency_s=latency_ms / 1000,
        workers=workers,
        planning_s=planning,
        wall_s=wall,
        outcome=result.outcome,
        created=result.counts["created"],
        cliniko_requests=cliniko["requests"],
        cliniko_pages=cliniko["by_endpoint"].get("GET /v1/patients", 0),
        stripe_requests=stripe["requests"],
        stripe_writes=stripe["mutations_total"],
        rate_limited=cliniko["rate_limited"] + stripe["rate_limited"],
    )


def report(run: Measured, floor: Floor) -> None:
    ms = run.latency_s * 1000
    print(f"Initial sync: {run.patients} patients, {ms:.0f} ms latency per request, stripe.workers = {run.workers}")
    print(
        f"  limits enforced by the sandbox: Stripe live {STRIPE_LIMIT_PER_SECOND}/s, "
        f"Cliniko {CLINIKO_LIMIT_PER_MINUTE}/min"
    )
    print(
        f"  app budgets (defaults): Stripe {STRIPE_LIMIT_PER_SECOND * STRIPE_BUDGET_FRACTION:g}/s, "
        f"Cliniko {CLINIKO_BUDGET_PER_MINUTE}/min"
    )
    print(f"  outcome: {run.outcome}, {run.created} created")
    print(f"  (before it, the plan-only first run a live account requires took {run.planning_s:.2f} s; not counted)")
    print(f"  wall time: {run.wall_s:.2f} s")
    print(f"  Stripe writes executed: {run.stripe_writes}")
    print(
        f"  requests sent: Cliniko {run.cliniko_requests} ({run.cliniko_pages} patient pages), "
        f"Stripe {run.stripe_requests}; answered 429: {run.rate_limited}"
    )
    print(
        f"  minimal requests: Cliniko {floor.cliniko_requests} "
        f"(ceil({run.patients}/{CLINIKO_PER_PAGE}) = {floor.cliniko_requests - 1} pages + 1 account/clock read), "
        f"Stripe {floor.stripe_requests} (1 account + 1 listing page + {run.patients} creates)"
    )
    print(
        f"  Cliniko floor: {floor.cliniko_s:.2f} s = max(rate {floor.cliniko_rate_s:.2f} s, "
        f"sequential pages {floor.cliniko_requests} x {ms:.0f} ms = {floor.cliniko_latency_s:.2f} s)"
    )
    print(
        f"  Stripe floor:  {floor.stripe_s:.2f} s = max(rate {floor.stripe_requests} at "
        f"{STRIPE_LIMIT_PER_SECOND}/s = {floor.stripe_rate_s:.2f} s, latency 2 x {ms:.0f} ms + "
        f"ceil({run.patients}/{run.workers}) x {ms:.0f} ms = {floor.stripe_latency_s:.2f} s)"
    )
    print(f"  floor: {floor.total_s:.2f} s = max(Cliniko, Stripe) - the app writes while it reads, so the two overlap")
    print(f"  wall / floor: {run.wall_s / floor.total_s:.2f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--patients", type=int, default=2000)
    parser.add_argument("--latency-ms", type=float, default=80.0)
    parser.add_argument(
        "--workers",
        type=int,
        default=spec_for("stripe.workers").default,
        help="stripe.workers (default: the app's default)",
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--baseline",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also run with sequential writes (stripe.workers = 1) for comparison",
    )
    args = parser.parse_args(argv)

    run = measure(args.patients, args.latency_ms, args.workers, args.seed)
    report(run, floor_for(args.patients, run.latency_s, args.workers))
    if args.baseline and args.workers != 1:
        print()
        base = measure(args.patients, args.latency_ms, 1, args.seed)
        print(f"Baseline, sequential writes (stripe.workers = 1): {base.wall_s:.2f} s, {base.stripe_writes} writes")
        print(f"  floor with 1 worker: {floor_for(args.patients, base.latency_s, 1).total_s:.2f} s")
        print(f"  speed-up of stripe.workers = {args.workers} over sequential: {base.wall_s / run.wall_s:.2f}x")
    return 0 if run.outcome == "ok" else 1


if __name__ == "__main__":
    raise SystemExit(main())
