"""How long does a clinic's first products sync take, and how close is that to what the APIs allow?

One `sync --once --stream cliniko.products` (in-process, through the same service the CLI calls) of N Cliniko
products (default 2,000) into an empty Stripe account. The sandboxes run in their own process (see
benchmarks/app_figures.py: the app's CPU, disk and memory figures are its own), with latency on every request
(default 80 ms) and the services' rate limits enforced: Stripe LIVE mode (100 requests/s) and Cliniko (200
requests/min). The app runs with its real defaults (retry policy, Stripe budget = 90% of the live limit,
`stripe.workers`); the Cliniko budget is set explicitly to its default, 150/min. A first sync to a live account
only plans until a person approves the plan: that plan-only run and the approval come first, outside the
measurement.

Printed: the wall time and the app's own figures, the requests each service received (Cliniko product pages,
Stripe writes), both floors of benchmarks/floors.py (at the published limits and at the app's budgets) from the
minimal request count, and wall / floor against each. The target is wall <= 1.15 x the floor at the app's
budgets.

    .venv/bin/python benchmarks/products_sync.py [--products 2000] [--latency-ms 80] [--workers 8]

Not part of the test suite.
"""

from __future__ import annotations

import math
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import floors  # benchmarks/floors.py: the one floor function
import httpx
import medians
from app_figures import (
    Figures,
    first_sync_arguments,
    peak_rss_mib,
    reset_peak_rss,
    sandbox_process,
    sandbox_stats,
    stats_since,
)

from clinicsync import rate_limits
from clinicsync.app import bootstrap
from clinicsync.logging_setup import teardown_logging
from clinicsync.sources.cliniko import PER_PAGE as CLINIKO_PER_PAGE
from clinicsync.store import queries
from clinicsync.sync.service import run_sync

STREAM = "cliniko.products"


@dataclass
class Measured:
    products: int
    live: int  # products neither archived nor deleted: the ones a first sync creates
    latency_s: float
    workers: int
    planning_s: float
    wall_s: float
    outcome: str
    counts: dict[str, int]
    cliniko_requests: int
    cliniko_pages: int
    stripe_requests: int
    stripe_writes: int
    stripe_by_endpoint: dict[str, int]
    rate_limited: int
    app: Figures  # what the app itself cost: CPU, disk, memory


def _origin(url: str) -> str:
    parsed = httpx.URL(url)
    return f"{parsed.scheme}://{parsed.host}:{parsed.port}"


def minimal_loads(products: int, live: int, workers: int) -> list[floors.Load]:
    """The fewest requests a first sync of `products` products (`live` of them neither archived nor deleted)
    needs. Cliniko: the server's clock, the first business (the clinic's country, hence its currency) and
    ceil(N / 100) pages of the archived pass (q[]=archived_at:* lists live and archived products in one pass),
    each waiting for the one before. Stripe: the account, then one listing page of products (the account is
    empty), then one create per live product (a product and its price are one request, `default_price_data`),
    `workers` at a time (with one worker, each waits for the one before). An archived product never synced is
    not created."""
    cliniko = 2 + math.ceil(products / CLINIKO_PER_PAGE)
    stripe = live + 2
    waiting = 2 + (live if workers == 1 else 0)
    return [floors.Load("cliniko", cliniko, dependent=cliniko), floors.Load("stripe_live", stripe, dependent=waiting)]


def measure(products: int, latency_ms: float, workers: int, seed: int) -> Measured:
    args = ["--profile", "clean", "--patients", "1", "--products", str(products), "--latency-ms", str(latency_ms)]
    args += ["--stripe-mode", "live", "--rate-limits", "--seed", str(seed)]
    with tempfile.TemporaryDirectory(prefix="clinicsync-bench-") as work, sandbox_process(args, Path(work)) as info:
        catalogue = httpx.post(f"{_origin(info['cliniko_url'])}/_sandbox/dump", json={}, timeout=60).json()
        live = sum(1 for p in catalogue["products"] if not (p.get("archived_at") or p.get("deleted_at")))
        # The app's real defaults: only the sandbox's addresses and keys, a fresh profile, and the settings this
        # benchmark is about. Nothing from the caller's CLINICSYNC_* environment is used.
        env = {key: value for key, value in os.environ.items() if not key.startswith("CLINICSYNC_")}
        env.update(info["env"])
        env["CLINICSYNC_HOME"] = str(Path(work) / "profile")
        env["CLINICSYNC_CLINIKO_REQUESTS_PER_MINUTE"] = str(rate_limits.CLINIKO_BUDGET_PER_MINUTE)
        env["CLINICSYNC_STRIPE_WORKERS"] = str(workers)
        ctx = bootstrap(env)
        try:
            # A first sync to a LIVE account only plans until a person approves the plan: that run reads
            # everything but writes nothing, and is not measured.
            started = time.perf_counter()
            (planned,) = run_sync(ctx.paths, ctx.settings, ctx.secrets, streams=[STREAM], trigger="benchmark")
            planning = time.perf_counter() - started
            if planned.outcome == "needs_approval":
                queries.approve_latest_plan(STREAM)
            urls = (info["cliniko_url"], info["stripe_url"])
            before = [sandbox_stats(url) for url in urls]
            app_before = Figures.now()
            started = time.perf_counter()
            (result,) = run_sync(ctx.paths, ctx.settings, ctx.secrets, streams=[STREAM], trigger="benchmark")
            wall = time.perf_counter() - started
            app = Figures.now().since(app_before)
            cliniko, stripe = (
                stats_since(sandbox_stats(url), earlier) for url, earlier in zip(urls, before, strict=True)
            )
        finally:
            ctx.db.close()
            teardown_logging()
    return Measured(
        products=products,
        live=live,
        latency_s=latency_ms / 1000,
        workers=workers,
        planning_s=planning,
        wall_s=wall,
        outcome=result.outcome,
        counts={action: count for action, count in result.counts.items() if count},
        cliniko_requests=cliniko["requests"],
        cliniko_pages=cliniko["by_endpoint"].get("GET /v1/products", 0),
        stripe_requests=stripe["requests"],
        stripe_writes=stripe["mutations_total"],
        stripe_by_endpoint=stripe["by_endpoint"],
        rate_limited=cliniko["rate_limited"] + stripe["rate_limited"],
        app=app,
    )


def report(run: Measured) -> float:
    """Print the run and its floors; return wall / the floor at the app's budgets."""
    ms = run.latency_s * 1000
    print(
        f"Products sync: {run.products} products ({run.live} live), {ms:.0f} ms latency per request, "
        f"stripe.workers = {run.workers}"
    )
    print(
        f"  limits enforced by the sandbox: Stripe live {rate_limits.STRIPE_PER_SECOND['live']}/s, "
        f"Cliniko {rate_limits.CLINIKO_PER_MINUTE}/min; app budgets: Stripe "
        f"{rate_limits.budget_per_second('stripe_live'):g}/s, Cliniko {rate_limits.CLINIKO_BUDGET_PER_MINUTE}/min"
    )
    print(f"  outcome: {run.outcome}, {run.counts}")
    print(f"  (before it, the plan-only first run a live account requires took {run.planning_s:.2f} s; not counted)")
    print(f"  wall time: {run.wall_s:.2f} s; {run.app.describe(run.live)}")
    print(
        f"  requests: Cliniko {run.cliniko_requests} ({run.cliniko_pages} product pages), Stripe {run.stripe_requests}"
        f" ({run.stripe_writes} writes); answered 429: {run.rate_limited}"
    )
    print(f"  Stripe requests by endpoint: {run.stripe_by_endpoint}")
    print("  floors (benchmarks/floors.py) from the minimal requests:")
    result = floors.report(run.wall_s, minimal_loads(run.products, run.live, run.workers), run.latency_s, indent="    ")
    return floors.print_target(run.wall_s, result)


def main(argv: list[str] | None = None) -> int:
    parser = first_sync_arguments(__doc__, "--products", 2000, "Cliniko products")
    medians.add_runs_option(parser)
    args = parser.parse_args(argv)

    def once(_: int) -> medians.RunFigures:
        reset_peak_rss()
        run = measure(args.products, args.latency_ms, args.workers, args.seed)
        ratio = report(run)
        requests = {"cliniko": run.cliniko_requests, "stripe": run.stripe_requests}
        return medians.RunFigures(
            run.wall_s, ratio, run.outcome == "ok", peak_rss_mib(), run.app.kb_per_record(run.live), requests
        )

    return medians.exit_status(medians.repeat(args.runs, once))


if __name__ == "__main__":
    raise SystemExit(main())
